"""Run the operator in tests exactly as the Helm chart would: with the chart's
ServiceAccount (its RBAC, not admin) and the chart's settings.

- ``service_account_kubeconfig`` mints a token for a ServiceAccount through
  the TokenRequest API (``kubectl create token``) and writes a kubeconfig
  that uses only that token, so a missing RBAC rule fails a test;
  ``operator_kubeconfig`` is that for the operator's ServiceAccount (the e2e
  tenants, tests/e2e/conftest.py, are the same for a namespace's ``edit`` one).
- ``chart_operator_env`` reads the ``SAVEPOINT_*`` settings of an installed
  release's Deployment (what the operator pod would get).

The chart is installed with ``replicas=0`` in the sandbox: no operator pod
runs; the test's operator process is the only one.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import yaml


def _kubectl(sandbox_cfg: Any, *args: str) -> str:
    out = subprocess.run([str(sandbox_cfg.bin / "kubectl"), f"--kubeconfig={sandbox_cfg.kubeconfig}", *args],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def service_account_kubeconfig(sandbox_cfg: Any, namespace: str, sa: str, duration: str = "2h",
                               path: Path | None = None) -> Path:
    """A kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<sa>``.

    The token is a fresh TokenRequest token valid for ``duration`` (not bound
    to a pod), written to ``path`` (default
    ``<sandbox>/kube/sa-<namespace>-<sa>.kubeconfig``) with mode 0600; the
    context's default namespace is the ServiceAccount's. The ServiceAccount
    must exist.
    """
    token = _kubectl(sandbox_cfg, "create", "token", sa, "--namespace", namespace, f"--duration={duration}").strip()
    if not token:
        raise RuntimeError(f"kubectl create token {namespace}/{sa} returned no token")
    ca = sandbox_cfg.state / "kube" / "pki" / "ca.crt"
    server = f"https://{sandbox_cfg.host}:{sandbox_cfg.apiserver_port}"
    user = f"{namespace}-{sa}"
    path = path or sandbox_cfg.state / "kube" / f"sa-{namespace}-{sa}.kubeconfig"
    text = textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters:
        - name: sandbox
          cluster:
            server: {server}
            certificate-authority: {ca}
        users:
        - name: {user}
          user:
            token: {token}
        contexts:
        - name: {user}
          context: {{cluster: sandbox, user: {user}, namespace: {namespace}}}
        current-context: {user}
        """)
    # Written to a temporary file then renamed, so a reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return path


def operator_kubeconfig(sandbox_cfg: Any, namespace: str = "savepoint-system", sa: str = "savepoint-operator",
                        duration: str = "2h") -> Path:
    """``service_account_kubeconfig`` of the chart's operator ServiceAccount (install the chart first)."""
    return service_account_kubeconfig(sandbox_cfg, namespace, sa, duration)


def operator_env(manifest: str, namespace: str) -> dict[str, str]:
    """The operator container's settings (``SAVEPOINT_*``) from a rendered chart.

    ``manifest`` is ``helm template``/``helm get manifest`` output; the one
    variable the pod gets from the downward API (its namespace) is filled in.
    """
    deployment = next(d for d in yaml.safe_load_all(manifest)
                      if d and d.get("kind") == "Deployment"
                      and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if not var["name"].startswith("SAVEPOINT_"):
            continue
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            raise ValueError(f"cannot resolve {var['name']} outside a pod: {var}")
    return env


def chart_operator_env(sandbox_cfg: Any, release: str = "savepoint", namespace: str = "savepoint-system") -> dict[str, str]:
    """``operator_env`` of an installed release (``helm get manifest``)."""
    out = subprocess.run([str(sandbox_cfg.bin / "helm"), "get", "manifest", release, "--namespace", namespace,
                          "--kubeconfig", str(sandbox_cfg.kubeconfig)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"helm get manifest {release} failed: {out.stderr.strip()}")
    return operator_env(out.stdout, namespace)
