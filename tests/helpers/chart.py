"""Install the Helm chart into the sandbox the way the e2e tests and benchmarks run it:
CRDs, RBAC and settings, but no operator pod (``replicas=0``): the operator runs
from the checkout with the chart's ServiceAccount token.

``apply_user_roles`` puts a copy of the chart's user ClusterRoles (rbac-user.yaml,
aggregated into Kubernetes' view/edit/admin) under a name of the session's own:
the sandbox is shared, and another session's ``helm upgrade`` of release
"savepoint" from an older checkout would remove the release's copy while this
session's tenants still act through ``edit``."""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "savepoint"
OPERATOR_NAMESPACE = "savepoint-system"
KINDS = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots")


def run(*argv: str | Path, input: str | None = None) -> str:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def apply_crds(cfg: Any) -> None:
    kubectl = cfg.bin / "kubectl"
    run(kubectl, "--kubeconfig", cfg.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", ROOT / "crds")
    run(kubectl, "--kubeconfig", cfg.kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
        *[f"crd/{plural}.savepoint.dev" for plural in KINDS])


def install(cfg: Any, *values: str) -> dict[str, str]:
    """``helm upgrade --install`` (retried while another session upgrades the same
    release); returns the SAVEPOINT_* env the chart gives the operator."""
    helm = cfg.bin / "helm"
    # Sessions on one sandbox share the release: one helm at a time (a lock file of the sandbox's), and
    # still retried while a helm that does not take the lock (an older checkout) upgrades it.
    with open(cfg.state / ".helm-release.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(30):
            try:
                run(helm, "upgrade", "--install", RELEASE, ROOT / "charts" / "savepoint", "--namespace",
                    OPERATOR_NAMESPACE, "--create-namespace", "--kubeconfig", cfg.kubeconfig, "--set", "replicas=0",
                    # The CRDs are applied (and upgraded) with kubectl first, from crds/:
                    # every session's release shares them, so none may own them.
                    "--skip-crds", "--set", "crds.install=false", *values)
                break
            except RuntimeError as exc:
                if not any(m in str(exc) for m in ("another operation", "already exists")) or attempt == 29:
                    raise
                time.sleep(1)
    manifest = run(helm, "get", "manifest", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--kubeconfig", cfg.kubeconfig)
    deployment = next(d for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = OPERATOR_NAMESPACE
    return env


USER_ROLES_TEMPLATE = "templates/rbac-user.yaml"


def apply_user_roles(cfg: Any, release: str) -> list[str]:
    """The chart's user ClusterRoles rendered as release ``release`` and applied with kubectl (not part of
    any Helm release); returns their names for ``delete_user_roles``."""
    helm, kubectl = cfg.bin / "helm", cfg.bin / "kubectl"
    rendered = run(helm, "template", release, ROOT / "charts" / "savepoint", "--namespace", OPERATOR_NAMESPACE,
                   "--show-only", USER_ROLES_TEMPLATE)
    roles = [d for d in yaml.safe_load_all(rendered) if d]
    if not roles:
        raise RuntimeError(f"the chart rendered no user roles from {USER_ROLES_TEMPLATE}")
    run(kubectl, "--kubeconfig", cfg.kubeconfig, "apply", "-f", "-", input=rendered)
    return [d["metadata"]["name"] for d in roles]


def delete_user_roles(cfg: Any, names: list[str]) -> None:
    run(cfg.bin / "kubectl", "--kubeconfig", cfg.kubeconfig, "delete", "--ignore-not-found",
        *[f"clusterrole/{n}" for n in names])
