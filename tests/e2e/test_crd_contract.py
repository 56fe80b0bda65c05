"""The API contract holds on a real kube-apiserver: the generated CRDs apply,
every example is accepted, and bad objects are refused with a message a user
understands (the API server's own words, or our CEL messages).

No operator is needed: this is what the API server enforces by itself.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from savepoint.api import API_VERSION, KINDS, GROUP

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DELETE = object()  # marks a field to remove in `edit`


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path
    namespace: str

    def run(self, *args: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args]
        result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def create(self, obj: dict[str, Any], *, dry_run: bool) -> subprocess.CompletedProcess[str]:
        extra = ["--dry-run=server"] if dry_run else []
        return self.run("create", *extra, "-o", "name", "-f", "-", stdin=json.dumps(obj))


@pytest.fixture(scope="module")
def kubectl(apiserver: Any) -> Iterator[Kubectl]:
    """CRDs applied and Established, and a namespace of our own for the objects."""
    k = Kubectl(apiserver.bin / "kubectl", apiserver.kubeconfig, f"crd-contract-{uuid.uuid4().hex[:6]}")
    k.run("apply", "--server-side", "--force-conflicts", "--field-manager=crd-contract-test", "-f", str(ROOT / "crds"), check=True)
    crds = [f"crd/{kind.crd.plural}.{GROUP}" for kind in KINDS]
    k.run("wait", "--for=condition=Established", "--timeout=60s", *crds, check=True)
    k.run("create", "namespace", k.namespace, check=True)
    yield k
    k.run("delete", "namespace", k.namespace, "--wait=false")


# --- valid bases, one per kind; each bad case changes one thing ---------------------------------

VREV = {
    "apiVersion": API_VERSION,
    "kind": "VolumeRevert",
    "metadata": {"name": "revert"},
    "spec": {"volume": {"persistentVolumeClaim": {"name": "app-data"}}, "snapshot": {"rbdSnapshot": "before-upgrade"}},
}
SBAK = {
    "apiVersion": API_VERSION,
    "kind": "ShareBackup",
    "metadata": {"name": "backup"},
    "spec": {"source": {"persistentVolumeClaim": {"name": "shared-files"}}},
}
SRST = {
    "apiVersion": API_VERSION,
    "kind": "ShareRestore",
    "metadata": {"name": "restore"},
    "spec": {"backup": {"name": "shared-files-monday"}, "target": {"newClaim": {"name": "restored", "size": "10Gi"}}},
}
ISNAP = {
    "apiVersion": API_VERSION,
    "kind": "ImageSnapshot",
    "metadata": {"name": "image"},
    "spec": {"source": {"persistentVolumeClaim": {"name": "app-data"}}, "destination": {"pool": "images"}},
}
RBD = {"clusterID": "ceph", "pool": "rbd", "image": "disk"}
NFS = {"server": "nfs.example.com", "path": "/exports/share"}


def edit(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with dotted paths (``spec__volume__rbd``) set, or removed with DELETE."""
    obj = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = obj
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


BAD = [
    # two references, none, missing
    ("vrev-two-volumes", edit(VREV, spec__volume__rbd=RBD), "exactly one of persistentVolumeClaim or rbd must be set"),
    ("vrev-no-volume", edit(VREV, spec__volume={}), "exactly one of persistentVolumeClaim or rbd must be set"),
    ("vrev-missing-volume", edit(VREV, spec__volume=DELETE), "spec.volume: Required value"),
    ("vrev-missing-spec", edit(VREV, spec=DELETE), "spec: Required value"),
    ("vrev-two-snapshots", edit(VREV, spec__snapshot__volumeSnapshot={"name": "snap"}), "exactly one of rbdSnapshot or volumeSnapshot must be set"),
    ("vrev-no-snapshot", edit(VREV, spec__snapshot={}), "exactly one of rbdSnapshot or volumeSnapshot must be set"),
    ("sbak-three-sources", edit(SBAK, spec__source__nfs=NFS, spec__source__rbd=RBD), "exactly one of persistentVolumeClaim, nfs or rbd must be set"),
    ("sbak-no-source", edit(SBAK, spec__source={}), "exactly one of persistentVolumeClaim, nfs or rbd must be set"),
    ("sbak-two-repositories", edit(SBAK, spec__repository={"persistentVolumeClaim": {"name": "repo"}, "nfs": NFS}), "exactly one of persistentVolumeClaim or nfs must be set"),
    ("sbak-empty-repository", edit(SBAK, spec__repository={}), "exactly one of persistentVolumeClaim or nfs must be set"),
    ("srst-two-targets", edit(SRST, spec__target__persistentVolumeClaim={"name": "other"}), "exactly one of persistentVolumeClaim or newClaim must be set"),
    ("srst-missing-backup", edit(SRST, spec__backup=DELETE), "spec.backup: Required value"),
    ("srst-new-claim-without-name", edit(SRST, spec__target__newClaim__name=DELETE), "spec.target.newClaim.name: Required value"),
    ("isnap-missing-source", edit(ISNAP, spec__source=DELETE), "spec.source: Required value"),
    ("vrev-rbd-without-pool", edit(VREV, spec__volume={"rbd": {"clusterID": "ceph", "image": "disk"}}), "spec.volume.rbd.pool: Required value"),
    # unknown fields
    ("vrev-unknown-field", edit(VREV, spec__revertHarder=True), 'unknown field "spec.revertHarder"'),
    ("isnap-nfs-source", edit(ISNAP, spec__source={"nfs": NFS}), 'unknown field "spec.source.nfs"'),
    ("isnap-unknown-destination-field", edit(ISNAP, spec__destination__clusterID="other"), 'unknown field "spec.destination.clusterID"'),
    # numbers and sizes
    ("vrev-negative-deadline", edit(VREV, spec__deadlineSeconds=-5), "spec.deadlineSeconds in body should be greater than or equal to 1"),
    ("vrev-zero-deadline", edit(VREV, spec__deadlineSeconds=0), "spec.deadlineSeconds in body should be greater than or equal to 1"),
    ("sbak-deadline-as-text", edit(SBAK, spec__deadlineSeconds="1h"), "spec.deadlineSeconds in body must be of type integer"),
    ("vrev-deadline-of-a-century", edit(VREV, spec__deadlineSeconds=100 * 365 * 86400),
     "spec.deadlineSeconds in body should be less than or equal to 2592000"),
    ("srst-zero-size", edit(SRST, spec__target__newClaim__size="0"), "spec.target.newClaim.size: Invalid value: \"0\": size must be greater than zero"),
    ("srst-zero-size-with-unit", edit(SRST, spec__target__newClaim__size="0Gi"), "size must be greater than zero"),
    ("srst-negative-size", edit(SRST, spec__target__newClaim__size="-1Gi"), "spec.target.newClaim.size in body should match"),
    ("srst-size-not-a-quantity", edit(SRST, spec__target__newClaim__size="ten gigs"), "spec.target.newClaim.size in body should match"),
    ("srst-size-in-millibytes", edit(SRST, spec__target__newClaim__size="100m"), "spec.target.newClaim.size in body should match"),
    # names
    ("vrev-bad-pvc-name", edit(VREV, spec__volume__persistentVolumeClaim__name="Bad_Name"), "spec.volume.persistentVolumeClaim.name in body should match"),
    ("vrev-pvc-name-too-long", edit(VREV, spec__volume__persistentVolumeClaim__name="a" * 254), "spec.volume.persistentVolumeClaim.name: Too long"),
    ("vrev-rbd-image-with-slash", edit(VREV, spec__volume={"rbd": {**RBD, "image": "rbd/disk"}}), "spec.volume.rbd.image in body should match"),
    ("vrev-rbd-snapshot-with-at", edit(VREV, spec__snapshot__rbdSnapshot="disk@snap"), "spec.snapshot.rbdSnapshot in body should match"),
    ("isnap-pool-like-an-option", edit(ISNAP, spec__destination__pool="-images"), "spec.destination.pool in body should match"),
    ("sbak-nfs-relative-path", edit(SBAK, spec__source={"nfs": {**NFS, "path": "exports/share"}}), "spec.source.nfs.path in body should match"),
    ("sbak-nfs-path-escapes", edit(SBAK, spec__source={"nfs": {**NFS, "path": "/exports/../etc"}}), "spec.source.nfs.path in body should match"),
    ("sbak-nfs-bad-server", edit(SBAK, spec__source={"nfs": {**NFS, "server": "nfs server"}}), "spec.source.nfs.server in body should match"),
    ("vrev-name-not-a-label", edit(VREV, metadata__name="app.data"), "metadata.name in body should match"),
    ("vrev-name-too-long", edit(VREV, metadata__name="a" * 64), "metadata.name: Too long"),
    # types and enums
    ("vrev-safety-snapshot-not-bool", edit(VREV, spec__safetySnapshot="yes please"), "spec.safetySnapshot in body must be of type boolean"),
    ("isnap-bad-method", edit(ISNAP, spec__method="Fast"), 'spec.method: Unsupported value: "Fast": supported values: "Auto", "Clone", "Copy"'),
    ("isnap-bad-deletion-policy", edit(ISNAP, spec__deletionPolicy="Keep"), 'spec.deletionPolicy: Unsupported value: "Keep"'),
]


@pytest.mark.parametrize(("manifest", "expected"), [pytest.param(m, e, id=i) for i, m, e in BAD])
def test_bad_object_is_refused(kubectl: Kubectl, manifest: dict[str, Any], expected: str) -> None:
    result = kubectl.create(manifest, dry_run=True)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert expected in result.stderr, result.stderr


def test_the_table_is_large_enough() -> None:
    assert len(BAD) >= 20
    assert len({i for i, _, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(kubectl: Kubectl, path: Path) -> None:
    result = kubectl.run("apply", "--server-side", "--dry-run=server", "-f", str(path))
    assert result.returncode == 0, result.stderr


def test_defaults_are_applied_by_the_api_server(kubectl: Kubectl) -> None:
    result = kubectl.run("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(ISNAP), check=True)
    spec = json.loads(result.stdout)["spec"]
    assert spec["method"] == "Auto"
    assert spec["deletionPolicy"] == "Delete"
    assert "deadlineSeconds" not in spec


@pytest.mark.parametrize(
    ("base", "spec_patch"),
    [
        pytest.param(VREV, {"safetySnapshot": False}, id="VolumeRevert"),
        pytest.param(SBAK, {"verify": True}, id="ShareBackup"),
        pytest.param(SRST, {"backup": {"name": "another-backup"}}, id="ShareRestore"),
        pytest.param(ISNAP, {"method": "Copy"}, id="ImageSnapshot"),
    ],
)
def test_spec_is_immutable_but_metadata_and_status_are_not(
    kubectl: Kubectl, base: dict[str, Any], spec_patch: dict[str, Any]
) -> None:
    kind = base["kind"]
    obj = edit(base, metadata__name=f"immutable-{kind.lower()}")
    kubectl.create(obj, dry_run=False).check_returncode()
    ref = f"{kind.lower()}.{GROUP}/{obj['metadata']['name']}"

    edited = kubectl.run("patch", ref, "--type=merge", "-p", json.dumps({"spec": spec_patch}))
    assert edited.returncode != 0
    assert f"spec is immutable: create a new {kind} instead" in edited.stderr

    kubectl.run("label", ref, "team=storage", check=True)
    status = {"status": {"phase": "Pending", "message": "waiting", "conditions": [
        {"type": "Ready", "status": "False", "reason": "VolumeBusy", "message": "waiting", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}
    kubectl.run("patch", ref, "--subresource=status", "--type=merge", "-p", json.dumps(status), check=True)


def test_status_has_a_schema_and_feeds_the_columns(kubectl: Kubectl) -> None:
    obj = edit(VREV, metadata__name="columns")
    kubectl.create(obj, dry_run=False).check_returncode()
    ref = f"volumerevert.{GROUP}/columns"
    status = {
        "phase": "Reverting",
        "source": "pvc/app-data",
        "snapshot": "rbd:rbd/csi-vol-1@before-upgrade",
        "method": "Copy",
        "progress": {"percent": 42, "bytesDone": 42, "bytesTotal": 100},
        "safetySnapshot": "savepoint-safety-1",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "InProgress", "message": "copying", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            {"type": "Succeeded", "status": "Unknown", "reason": "InProgress", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ],
    }
    kubectl.run("patch", ref, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}), check=True)

    bad_phase = kubectl.run("patch", ref, "--subresource=status", "--type=merge", "-p", '{"status": {"phase": "Done"}}')
    assert bad_phase.returncode != 0 and 'status.phase: Unsupported value: "Done"' in bad_phase.stderr
    bad_percent = kubectl.run("patch", ref, "--subresource=status", "--type=merge", "-p", '{"status": {"progress": {"percent": 140}}}')
    assert bad_percent.returncode != 0 and "status.progress.percent: Invalid value: 140" in bad_percent.stderr

    wide = kubectl.run("get", "vrev", "columns", "-o", "wide", check=True).stdout
    header, row = wide.splitlines()[:2]
    for column in ("NAME", "PHASE", "PROGRESS", "SOURCE", "REASON", "AGE", "SNAPSHOT", "METHOD", "MESSAGE"):
        assert column in header
    for value in ("Reverting", "42", "pvc/app-data", "InProgress", "Copy"):
        assert value in row

    listed = kubectl.run("get", "savepoint", "-o", "name", check=True).stdout
    assert f"volumerevert.{GROUP}/columns" in listed
