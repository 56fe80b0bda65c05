"""The kustomize install (manifests/), rendered with the sandbox's kubectl and applied to its API server.

- manifests/base/ is exactly what ``hack/render-manifests`` makes from the Helm
  chart (``helm template`` with default values): the RBAC, settings and
  Deployment cannot drift from the chart's.
- Every overlay renders with ``kubectl kustomize``; the ceph-csi overlay changes
  only the ceph-csi references (settings and the two Roles), nothing else.
- Server-side dry run of each overlay: the API server (with its strict field
  validation and admission) accepts every object.
- A real ``kubectl apply --server-side -k`` of the ceph-csi overlay, pointed at
  the sandbox's ceph-csi ConfigMap/Secret, into a throwaway namespace with a
  name prefix (so nothing the chart's release owns is touched; the CRDs are
  left out of the real apply, other sessions use them): the Deployment's pod
  passes Pod Security "restricted", the pod runner starts the operator from
  the manifest's command with the manifest's ServiceAccount, and that operator
  reconciles a VolumeRevert in its namespace (status, conditions, Event); the
  API server's authorizer lets that ServiceAccount read exactly ceph-csi's
  ConfigMap and Secret through the overlay's Roles. Everything is deleted
  afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.kube import wait_custom  # noqa: E402
from helpers.operator_proc import free_port  # noqa: E402

MANIFESTS = ROOT / "manifests"
OVERLAYS = ("default", "ceph-csi")
KINDS = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots", "savepointschedules")

pytestmark = pytest.mark.e2e


def _run(argv: list[str | Path], *, check: bool = True, input: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input, timeout=300,
                         env=env, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def kubectl(cfg: Any, *args: str | Path, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run([cfg.bin / "kubectl", f"--kubeconfig={cfg.kubeconfig}", *args], check=check, input=input)


def kustomize(cfg: Any, path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kubectl(cfg, "kustomize", path).stdout) if d]


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# --- rendering ---------------------------------------------------------------------------------


def test_base_is_rendered_from_the_chart(apiserver: Any) -> None:
    out = _run([sys.executable, ROOT / "hack" / "render-manifests", "--check"], check=False,
               env=dict(os.environ, HELM=str(apiserver.bin / "helm")))
    assert out.returncode == 0, out.stderr


def test_base_carries_the_generated_crds_and_the_charts_objects(apiserver: Any) -> None:
    docs = kustomize(apiserver, MANIFESTS / "base")
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert sorted(crds) == sorted(f"{k}.savepoint.dev" for k in KINDS)
    for name, crd in crds.items():
        assert crd == yaml.safe_load((ROOT / "crds" / f"{name}.yaml").read_text())
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "Deployment", "Service"} <= kinds
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        assert "helm.sh/chart" not in labels and labels.get("app.kubernetes.io/managed-by") != "Helm", d["metadata"]
    namespaced = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                                                        "ClusterRoleBinding")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"savepoint-system", "ceph-csi"}


def test_ceph_csi_overlay_changes_only_the_ceph_csi_references(apiserver: Any) -> None:
    default = by_key(kustomize(apiserver, MANIFESTS / "overlays" / "default"))
    ceph = by_key(kustomize(apiserver, MANIFESTS / "overlays" / "ceph-csi"))
    ref = yaml.safe_load((MANIFESTS / "overlays" / "ceph-csi" / "ceph-csi.yaml").read_text())["data"]
    cm = f"{ref['configMapNamespace']}/{ref['configMapName']}"
    secret = f"{ref['secretNamespace']}/{ref['secretName']}"
    assert cm != "ceph-csi/ceph-csi-config", "the example should differ from the default to show the overlay works"

    deployment = ceph[("Deployment", "savepoint-system", "savepoint-operator")]
    env = env_of(deployment)
    assert env["SAVEPOINT_CEPH_CONFIG_MAP"] == cm and env["SAVEPOINT_CEPH_SECRET"] == secret
    cm_role = ceph[("Role", ref["configMapNamespace"], "savepoint-ceph-configmap")]
    assert cm_role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                 "resourceNames": [ref["configMapName"]], "verbs": ["get", "list", "watch"]}]
    secret_role = ceph[("Role", ref["secretNamespace"], "savepoint-ceph-secret")]
    assert secret_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                     "resourceNames": [ref["secretName"]], "verbs": ["get"]}]
    for name, ns in (("savepoint-ceph-configmap", ref["configMapNamespace"]),
                     ("savepoint-ceph-secret", ref["secretNamespace"])):
        binding = ceph[("RoleBinding", ns, name)]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "savepoint-operator",
                                        "namespace": "savepoint-system"}]
    assert not any(k[2] == "ceph-csi-reference" for k in ceph), "the local-config object must not be applied"

    # Everything else is the default overlay, unchanged.
    moved = {(kind, "ceph-csi", name) for kind in ("Role", "RoleBinding")
             for name in ("savepoint-ceph-configmap", "savepoint-ceph-secret")}
    assert moved <= set(default)
    for key, doc in default.items():
        if key in moved or key[0] == "Deployment":
            continue
        assert ceph[key] == doc, key
    env_default = env_of(default[("Deployment", "savepoint-system", "savepoint-operator")])
    def others(e: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in e.items() if "CEPH" not in k}

    assert others(env) == others(env_default)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_server_side_dry_run(kube: Any, chart: dict[str, str], overlay: str, tmp_path: Path) -> None:
    # Needs the namespaces a real install has: ceph-csi's (published by the sandbox) and the chart's.
    apiserver = kube
    path = MANIFESTS / "overlays" / overlay
    if overlay == "ceph-csi":
        # Its example namespace does not exist in the sandbox: point it at the sandbox's ceph-csi.
        path = sandbox_ceph_csi_overlay(tmp_path, namespace=None, prefix=None)
    out = kubectl(apiserver, "apply", "--server-side", "--force-conflicts", "--dry-run=server",
                  "--field-manager=savepoint-manifests-test", "-k", path)
    created = [line for line in out.stdout.splitlines() if line]
    assert len(created) == len(kustomize(apiserver, path)), out.stdout
    assert all("(server dry run)" in line for line in created), out.stdout


# --- a real apply --------------------------------------------------------------------------


def sandbox_ceph_csi_overlay(tmp: Path, namespace: str | None, prefix: str | None,
                             extra: dict[str, Any] | None = None) -> Path:
    """A copy of overlays/ceph-csi (as a user makes one) naming the sandbox's ceph-csi objects."""
    src = MANIFESTS / "overlays" / "ceph-csi"
    dst = tmp / "ceph-csi"
    dst.mkdir()
    ref = yaml.safe_load((src / "ceph-csi.yaml").read_text())
    ref["data"] = {"configMapNamespace": "ceph-csi", "configMapName": "ceph-csi-config",
                   "secretNamespace": "ceph-csi", "secretName": "csi-rbd-secret"}
    (dst / "ceph-csi.yaml").write_text(yaml.safe_dump(ref))
    kust = yaml.safe_load((src / "kustomization.yaml").read_text())
    kust["resources"] = [os.path.relpath(MANIFESTS / "overlays" / "default", dst) if r == "../default" else r
                         for r in kust["resources"]]
    if namespace:
        kust["namespace"] = namespace
    if prefix:
        kust["namePrefix"] = prefix
    for key, value in (extra or {}).items():
        kust[key] = [*kust.get(key, []), *value]
    (dst / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return dst


@pytest.fixture
def installed(kube: Any, crds: None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The ceph-csi overlay applied for real under a prefix into a fresh namespace; deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    namespace, prefix = f"sp-kust-{tag}", f"kust-{tag}-"
    deployment = f"{prefix}savepoint-operator"
    metrics, health = free_port(), free_port()
    extra = {
        "patches": [
            # The CRDs are shared by every session on this sandbox: dry run only (test above).
            {"target": {"kind": "CustomResourceDefinition"},
             "patch": "$patch: delete\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
                      "metadata:\n  name: any\n"},
        ],
        "replacements": [
            # A name prefix renames the movers' ServiceAccount; the settings name it in a plain string.
            {"source": {"kind": "ServiceAccount", "name": f"{prefix}savepoint-mover"},
             "targets": [{"select": {"kind": "Deployment"}, "fieldPaths": [
                 "spec.template.spec.containers.[name=operator].env.[name=SAVEPOINT_MOVER_SERVICE_ACCOUNT].value"]}]},
        ],
    }
    overlay = sandbox_ceph_csi_overlay(tmp_path, namespace, prefix, extra)
    dep = next(d for d in kustomize(kube, overlay) if d["kind"] == "Deployment")
    names = [e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]]
    env = "/spec/template/spec/containers/0/env"
    # Serve only this namespace (other sessions' operators serve theirs), on free ports
    # (the pod runner runs pods on this machine's network).
    settings = {"SAVEPOINT_WATCH_NAMESPACES": namespace, "SAVEPOINT_METRICS_PORT": str(metrics),
                "SAVEPOINT_HEALTH_PORT": str(health)}
    env_patch = [{"op": "replace", "path": f"{env}/{names.index(k)}/value", "value": v} if k in names else
                 {"op": "add", "path": f"{env}/-", "value": {"name": k, "value": v}} for k, v in settings.items()]
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kust["patches"].append({"target": {"kind": "Deployment"}, "patch": json.dumps(env_patch)})
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    rendered = kustomize(kube, overlay)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered))
    info = {"namespace": namespace, "prefix": prefix, "deployment": deployment, "docs": rendered,
            "metrics_port": metrics, "health_port": health, "overlay": overlay}
    try:
        yield info
    finally:
        # The CR first, while the operator still runs to remove its finalizer; then the rest.
        kubectl(kube, "-n", namespace, "delete", "volumereverts", "--all", "--wait=true", "--timeout=60s", check=False)
        kubectl(kube, "delete", "-f", manifest, "--ignore-not-found", "--wait=false", check=False)


def test_apply_runs_the_operator_with_the_manifests_rbac(kube: Any, installed: dict[str, Any]) -> None:
    from kubernetes import client, config

    ns, prefix = installed["namespace"], installed["prefix"]
    docs = installed["docs"]
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert all(d["metadata"]["name"].startswith(prefix) or d["kind"] == "Namespace" for d in docs)
    cluster_scoped = [d["metadata"]["name"] for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert cluster_scoped and all(n.startswith(prefix) for n in cluster_scoped)

    out = kubectl(kube, "apply", "--server-side", "--field-manager=savepoint-manifests-test",
                  "-k", installed["overlay"])
    assert "serverside-applied" in out.stdout, out.stdout

    config.load_kube_config(str(kube.kubeconfig))
    core, apps = client.CoreV1Api(), client.AppsV1Api()
    labels = core.read_namespace(ns).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The overlay's Roles stay in ceph-csi's namespace, bound to this install's ServiceAccount.
    role = client.RbacAuthorizationV1Api().read_namespaced_role(f"{prefix}savepoint-ceph-configmap", "ceph-csi")
    assert role.rules[0].resource_names == ["ceph-csi-config"]
    sa = f"system:serviceaccount:{ns}:{prefix}savepoint-operator"
    for verb, what, allowed in (("get", "configmap/ceph-csi-config", True), ("get", "secret/csi-rbd-secret", True),
                                ("get", "secret/other", False), ("list", "secrets", False)):
        out = kubectl(kube, "auth", "can-i", verb, what, "-n", "ceph-csi", f"--as={sa}", check=False)
        assert out.stdout.strip() == ("yes" if allowed else "no"), (verb, what, out.stdout, out.stderr)

    # The operator pod: admitted under "restricted", started by the pod runner from the manifest's command.
    deadline = time.monotonic() + 120
    pod = None
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=operator").items
        running = [p for p in pods if p.status.phase == "Running"]
        if running:
            pod = running[0]
            break
        failed = [p for p in pods if p.status.phase == "Failed"]
        assert not failed, failed[0].status
        time.sleep(1)
    if pod is None:
        rs = apps.list_namespaced_replica_set(ns).items
        raise AssertionError(f"no operator pod Running in {ns}; replicasets: {[r.status for r in rs]}")
    assert pod.spec.service_account_name == f"{prefix}savepoint-operator"
    assert pod.spec.containers[0].command == ["savepoint-operator"]

    # It serves its namespace with its own RBAC: a VolumeRevert of a missing claim fails with PvcNotFound.
    vrev = {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "probe"},
            "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "any"}}}
    custom = client.CustomObjectsApi()
    try:
        custom.create_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "volumereverts", vrev)
    except client.ApiException as exc:
        pytest.fail(f"VolumeRevert rejected (is the example spec current?): {exc.body}")
    obj = wait_custom(custom, ns, "volumereverts", "probe",
                      lambda o: (o.get("status") or {}).get("phase") == "Failed", timeout=120)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PvcNotFound", obj["status"]
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=probe").items
    assert any(e.reason == "RevertFailed" and e.source.component == "savepoint-operator" for e in events), \
        [(e.reason, e.message) for e in events]


# --- Argo CD -------------------------------------------------------------------------------


WAVES = {"CustomResourceDefinition": -3, "Namespace": -2, "ServiceAccount": -1, "ClusterRole": -1,
         "ClusterRoleBinding": -1, "Role": -1, "RoleBinding": -1, "Deployment": 0, "Service": 0}


def test_argocd_sync_waves_put_crds_first(apiserver: Any, tmp_path: Path) -> None:
    """The sync-waves component on each overlay, as application.yaml uses it."""
    app = yaml.safe_load((MANIFESTS / "argocd" / "application.yaml").read_text())
    source = app["spec"]["source"]
    assert (MANIFESTS.parent / source["path"]).is_dir()
    for component in source["kustomize"]["components"]:
        assert (MANIFESTS.parent / source["path"] / component / "kustomization.yaml").is_file()
    for overlay in OVERLAYS:
        root = tmp_path / overlay
        root.mkdir()
        (root / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, root)],
            "components": [os.path.relpath(MANIFESTS / "argocd" / "sync-waves", root)]}))
        docs = kustomize(apiserver, root)
        assert {d["kind"] for d in docs} <= set(WAVES), "a new kind: give it a wave"
        for d in docs:
            annotations = d["metadata"].get("annotations") or {}
            assert int(annotations.get("argocd.argoproj.io/sync-wave", "0")) == WAVES[d["kind"]], d["metadata"]
            if d["kind"] == "CustomResourceDefinition":
                assert annotations["argocd.argoproj.io/sync-options"] == "ServerSideApply=true"
        # Only annotations were added: the same objects as without the component.
        plain = by_key(kustomize(apiserver, MANIFESTS / "overlays" / overlay))
        for key, doc in by_key(docs).items():
            stripped = copy.deepcopy(doc)
            anns = stripped["metadata"].get("annotations") or {}
            for a in ("argocd.argoproj.io/sync-wave", "argocd.argoproj.io/sync-options"):
                anns.pop(a, None)
            if not anns:
                stripped["metadata"].pop("annotations", None)
            assert stripped == plain[key], key


def test_install_guides_settings_patch_renders(apiserver: Any, tmp_path: Path) -> None:
    """The env patch docs/install.md shows, on the base: the settings change, nothing else breaks."""
    import re

    doc = (ROOT / "docs" / "install.md").read_text()
    block = re.search(r"```yaml\n(# kustomization.yaml of your overlay\n.*?)```", doc, re.DOTALL)
    assert block, "docs/install.md lost its kustomize settings example"
    kust = yaml.safe_load(block.group(1))
    kust["resources"] = [os.path.relpath(MANIFESTS / "base", tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    docs = kustomize(apiserver, tmp_path)
    env = env_of(next(d for d in docs if d["kind"] == "Deployment"))
    assert env["SAVEPOINT_RAW_REFERENCE_NAMESPACES"] == "storage-admin"
    assert json.loads(env["SAVEPOINT_DEFAULT_REPOSITORY"])["nfs"]["path"] == "/exports/savepoint"
    names = [e["name"] for e in next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
             ["containers"][0]["env"]]
    assert len(names) == len(set(names))
    kubectl(apiserver, "apply", "--server-side", "--force-conflicts", "--dry-run=server",
            "--field-manager=savepoint-manifests-test", "-k", tmp_path)


def test_grafana_dashboard_configmap_applies(apiserver: Any, tmp_path: Path) -> None:
    docs = kustomize(apiserver, MANIFESTS / "grafana")
    assert [d["kind"] for d in docs] == ["ConfigMap"]
    cm = docs[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["savepoint-dashboard.json"]) == json.loads(
        (MANIFESTS / "grafana" / "savepoint-dashboard.json").read_text())
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "default",
        "resources": [os.path.relpath(MANIFESTS / "grafana", tmp_path)]}))
    out = kubectl(apiserver, "apply", "--server-side", "--dry-run=server",
                  "--field-manager=savepoint-manifests-test", "-k", tmp_path)
    assert "configmap/savepoint-dashboard serverside-applied (server dry run)" in out.stdout, out.stdout
