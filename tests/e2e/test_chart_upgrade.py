"""Upgrading the chart from its previous version, on a private API server.

The previous version is the chart as committed at 0.1.0 (``git archive 558db0b
charts/savepoint``): CRDs in the chart's ``crds/`` directory, which Helm
installs once and never upgrades. This chart templates them. The test runs on
a private control plane of its own (``hack/sandbox up kube`` with its own
state directory and ports), because CRDs are cluster-wide and the shared
sandbox's belong to every session.

1. install 0.1.0, create CRs (one with a status as the operator writes it);
2. upgrade to this chart, with a CRD changed (a new printer column): a plain
   upgrade is refused (the old CRDs belong to no release), ``--take-ownership``
   adopts and upgrades them, as the chart's README says;
3. the new CRD is served and the CRs are untouched;
4. ``helm uninstall`` keeps the CRDs and the CRs (``helm.sh/resource-policy: keep``);
5. a new install over the kept CRDs needs nothing special.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "558db0b"  # main at chart 0.1.0
PORTS = {"SAVEPOINT_ETCD_PORT": "23990", "SAVEPOINT_ETCD_PEER_PORT": "24000", "SAVEPOINT_APISERVER_PORT": "16643",
         "SAVEPOINT_KCM_PORT": "20457"}
RELEASE, NAMESPACE = "savepoint", "savepoint-system"


def _run(argv: list[Any], *, env: dict[str, str] | None = None, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, input=input, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def private(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private control plane (etcd, kube-apiserver, kube-controller-manager) from the cached builds."""
    state = tmp_path_factory.mktemp("upgrade-sandbox")
    env = dict(os.environ, SAVEPOINT_SANDBOX_DIR=str(state), **PORTS)
    sandbox = str(ROOT / "hack" / "sandbox")
    _run([sandbox, "up", "kube"], env=env)
    try:
        yield {"kubeconfig": state / "kube" / "admin.kubeconfig", "helm": kube.bin / "helm",
               "kubectl": kube.bin / "kubectl"}
    finally:
        subprocess.run([sandbox, "down"], env=env, capture_output=True, timeout=120)


def _charts(tmp: Path) -> tuple[Path, Path]:
    """(the previous chart from git, this chart with one CRD changed)."""
    raw = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS, "charts/savepoint"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(tmp / "previous")  # our own repository's files
    previous = tmp / "previous" / "charts" / "savepoint"
    assert yaml.safe_load((previous / "Chart.yaml").read_text())["version"] == "0.1.0"
    assert (previous / "crds" / "volumereverts.savepoint.dev.yaml").exists()
    current = tmp / "current" / "savepoint"
    shutil.copytree(ROOT / "charts" / "savepoint", current)
    crd = current / "templates" / "crds" / "volumereverts.savepoint.dev.yaml"
    text = crd.read_text()
    column = ("  - additionalPrinterColumns:\n    - description: Added by the upgrade test\n"
              "      jsonPath: .spec.snapshot.rbdSnapshot\n      name: UpgradeTest\n      priority: 1\n"
              "      type: string\n")
    assert text.count("  - additionalPrinterColumns:\n") == 1
    crd.write_text(text.replace("  - additionalPrinterColumns:\n", column))
    return previous, current


def test_upgrade_from_the_previous_chart_and_uninstall_keep_crds_and_crs(private: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    kc = private["kubeconfig"]

    def helm(*args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([private["helm"], *args, "--kubeconfig", kc], check=check)

    def kubectl(*args: Any, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([private["kubectl"], f"--kubeconfig={kc}", *args], input=input, check=check)

    def crd(name: str) -> dict[str, Any]:
        return json.loads(kubectl("get", "crd", f"{name}.savepoint.dev", "-o", "json").stdout)

    previous, current = _charts(tmp_path)
    base = ["--namespace", NAMESPACE, "--set", "replicas=0"]

    # 1. The previous chart, and CRs made under it. (ceph-csi's namespace: the chart's Roles go there.)
    kubectl("create", "namespace", "ceph-csi")
    helm("install", RELEASE, previous, "--create-namespace", *base)
    kubectl("wait", "--for=condition=Established", "crd/volumereverts.savepoint.dev", "--timeout=60s")
    assert "helm.sh/resource-policy" not in (crd("volumereverts")["metadata"].get("annotations") or {})
    kubectl("create", "namespace", "team-a")
    kubectl("apply", "-n", "team-a", "-f", ROOT / "examples" / "volumerevert.yaml")
    kubectl("apply", "-n", "team-a", "-f", ROOT / "examples" / "sharebackup.yaml")
    # The status the operator would have written for a finished backup (no operator runs here).
    status = {"status": {"phase": "Available", "repositoryPath": "team-a/shared-files/20261201T000000Z-abc",
                         "fileCount": 3, "message": "backed up"}}
    kubectl("patch", "sharebackup", "shared-files-monday", "-n", "team-a", "--subresource=status", "--type=merge",
            "-p", json.dumps(status))
    before = {k: json.loads(kubectl("get", k, "-n", "team-a", "-o", "json").stdout)["items"]
              for k in ("volumereverts", "sharebackups")}

    # 2. A plain upgrade cannot adopt CRDs no release owns; --take-ownership does, as documented.
    refused = helm("upgrade", RELEASE, current, *base, check=False)
    assert refused.returncode != 0 and "cannot be imported into the current release" in refused.stderr, refused.stderr
    assert ".savepoint.dev" in refused.stderr
    helm("upgrade", RELEASE, current, *base, "--take-ownership")
    status_json = json.loads(helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status_json["info"]["status"] == "deployed" and status_json["version"] >= 2
    listed = json.loads(helm("list", "-n", NAMESPACE, "-o", "json").stdout)
    assert [r["chart"] for r in listed] == [f"savepoint-{yaml.safe_load((current / 'Chart.yaml').read_text())['version']}"]

    # 3. The changed CRD is served; it is the release's and kept; the CRs are untouched.
    upgraded = crd("volumereverts")
    columns = [c["name"] for c in upgraded["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "UpgradeTest" in columns
    meta = upgraded["metadata"]
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert meta["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    wide = kubectl("get", "vrev", "-n", "team-a", "-o", "wide").stdout
    assert "UPGRADETEST" in wide and "before-upgrade" in wide  # the new column, on the old CR
    after = {k: json.loads(kubectl("get", k, "-n", "team-a", "-o", "json").stdout)["items"]
             for k in ("volumereverts", "sharebackups")}
    assert _essence(after) == _essence(before)

    # 4. Uninstall: the release's objects go, the CRDs and the CRs (with their status) stay.
    out = helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    assert "kept due to the resource policy" in out.stdout + out.stderr
    assert kubectl("get", "clusterrole", f"{RELEASE}-operator", check=False).returncode != 0
    for name in ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots"):
        assert crd(name)["metadata"]["name"] == f"{name}.savepoint.dev"
    kept = {k: json.loads(kubectl("get", k, "-n", "team-a", "-o", "json").stdout)["items"]
            for k in ("volumereverts", "sharebackups")}
    assert _essence(kept) == _essence(before)
    assert kept["sharebackups"][0]["status"]["repositoryPath"] == status["status"]["repositoryPath"]

    # 5. Installing again adopts the kept CRDs without any flag.
    helm("install", RELEASE, current, *base)
    assert crd("volumereverts")["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE


def _essence(items: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[Any, ...]]]:
    """What a user owns in a CR: name, uid, spec and status (not managedFields or resourceVersion)."""
    return {kind: sorted((o["metadata"]["name"], o["metadata"]["uid"], json.dumps(o["spec"], sort_keys=True),
                          json.dumps(o.get("status"), sort_keys=True)) for o in objs)
            for kind, objs in items.items()}
