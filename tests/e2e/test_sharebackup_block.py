"""ShareBackup/ShareRestore of RBD block volumes end to end (seed 001, non-disruptive backup): the real API
server, the real Ceph, the operator with the chart's ServiceAccount, mover Jobs run by the pod runner.

RBD-backed claims are static PVs with ceph-csi's attributes (``helpers.volumes``); the repository is a
claim on an NFS export of the sandbox's nfs-ganesha (the pod runner maps it to the export's directory, which
the tests also read directly to corrupt a chunk).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.movers import live_mover_objects
from helpers import volumes
from helpers.kube import phase_in, reason_is, wait_custom, wait_gone
from helpers.tenant import tenant_of
from kubernetes import client
from sandboxlib import ceph as sandbox_ceph
from sandboxlib import nfs as sandbox_nfs
from savepoint.storage import rbd

pytestmark = pytest.mark.e2e

MiB = 1 << 20
GiB = 1 << 30
REPO_EXPORT = "test-blocks-repo"
SLOT = 64 * 1024  # the writer's block
SLOTS = 256  # ... over 16 MiB
WRITE_REGION = 8 * MiB


# ---- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def make_volume(make_volume: Any) -> Any:
    """conftest's, evicting a killed operator's stale watchers before it removes the images."""
    make_volume.evict_stale_watchers = True
    return make_volume


@pytest.fixture(scope="session")
def repo_export(kube: Any) -> sandbox_nfs.Export:
    return sandbox_nfs.add_export(kube, REPO_EXPORT)


def repository_claim(namespace: str, export: sandbox_nfs.Export) -> str:
    """Claim ``repo`` in the namespace (made by its tenant), bound to a static NFS PV of the sandbox's export
    (the admin's); returns the PV's name."""
    core = client.CoreV1Api()
    pv = f"repo-{namespace}"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "claimRef": {"namespace": namespace, "name": "repo"},
                 "nfs": {"server": export.server, "path": export.path}}})
    tenant_of(namespace).core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "repo"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "10Gi"}}}})
    volumes._wait_bound(core, namespace, "repo")
    return pv


def _delete_pv(name: str) -> None:
    try:
        client.CoreV1Api().delete_persistent_volume(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def repository(kube: Any, namespace: str, repo_export: sandbox_nfs.Export) -> Iterator[Path]:
    """The namespace's repository claim; yields the export's local directory."""
    pv = repository_claim(namespace, repo_export)
    yield repo_export.dir
    _delete_pv(pv)


@pytest.fixture
def crash_repository(kube: Any, crash_harness: Any, repo_export: sandbox_nfs.Export) -> Iterator[Path]:
    pv = repository_claim(crash_harness.namespace, repo_export)
    yield repo_export.dir
    _delete_pv(pv)


def backup(api: Any, namespace: str, name: str | None = None, *, pvc: str = "data", **spec: Any) -> str:
    name = name or f"bak-{uuid.uuid4().hex[:6]}"
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "ShareBackup", "metadata": {"name": name},
        "spec": {"source": {"persistentVolumeClaim": {"name": pvc}},
                 "repository": {"persistentVolumeClaim": {"name": "repo"}}, **spec}})
    return name


def restore(api: Any, namespace: str, backup_name: str, name: str | None = None, **spec: Any) -> str:
    name = name or f"rst-{uuid.uuid4().hex[:6]}"
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharerestores", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "ShareRestore", "metadata": {"name": name},
        "spec": {"backup": {"name": backup_name}, **spec}})
    return name


def settled(api: Any, namespace: str, plural: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_custom(api, namespace, plural, name, phase_in("Available", "Succeeded", "Failed"), timeout)


def savepoint_snapshots(kube: Any, ref: rbd.ImageRef) -> list[str]:
    with volumes.cluster(kube) as c:
        return [s for s in volumes.snapshots(c, ref) if s.startswith("savepoint-")]


def assert_clean(kube: Any, namespace: str, vol: volumes.RbdVolume, *, bases: int = 1) -> None:
    """No temporary snapshot, ``bases`` base snapshots, no lock or state on the claim, no mover Job."""
    snaps = savepoint_snapshots(kube, vol.ref)
    assert not [s for s in snaps if s.startswith("savepoint-backup-")], f"leaked temporary snapshots: {snaps}"
    assert len([s for s in snaps if s.startswith("savepoint-base-")]) == bases, snaps
    annotations = client.CoreV1Api().read_namespaced_persistent_volume_claim(vol.pvc, namespace).metadata.annotations
    assert not {k for k in (annotations or {}) if k.startswith("savepoint.dev/")}, annotations
    assert not live_mover_objects(namespace)


def event_reasons(namespace: str, kind: str, name: str) -> set[str]:
    events = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    return {e.reason for e in events.items}


def claim_image(namespace: str, claim: str) -> rbd.ImageRef:
    core = client.CoreV1Api()
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    attrs = core.read_persistent_volume(pvc.spec.volume_name).spec.csi.volume_attributes
    return rbd.ImageRef(attrs["pool"], attrs["imageName"])


def drop_created_claim(kube: Any, namespace: str, claim: str) -> None:
    """A claim a successful restore created is the user's: the test removes its PV and image itself."""
    core = client.CoreV1Api()
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    ref = claim_image(namespace, claim)
    core.delete_namespaced_persistent_volume_claim(claim, namespace)
    core.delete_persistent_volume(pvc.spec.volume_name)
    with volumes.cluster(kube) as c:
        rbd.remove_image(c, ref, purge_snapshots=True)


def read_image(kube: Any, ref: rbd.ImageRef, length: int) -> bytes:
    with volumes.cluster(kube) as c:
        return volumes.read(c, ref, 0, length)


# ---- a writer that keeps the volume open and busy ---------------------------------------------------

WRITER = r"""
import random, select, sys, rados, rbd
mon, user, key, pool, image = sys.argv[1:6]
region, slot, slots = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
cluster = rados.Rados(rados_id=user, conf={"mon_host": mon, "key": key})
cluster.connect(timeout=10)
img = rbd.Image(cluster.open_ioctx(pool), image)   # read-write: a watcher, as a mounted volume has
img.write(b"x", 0); img.flush()                     # take the exclusive lock, as a writing workload does
print("open", flush=True)
i = 0
while not select.select([sys.stdin], [], [], 0)[0]:    # until the test says stop (or goes away)
    i += 1
    data = i.to_bytes(8, "big") + random.Random(i).randbytes(slot - 8)
    img.write(data, region + (i * 7919 % slots) * slot)   # synchronous: one write at a time, in order
img.close()                                               # the watch goes at once, not after a timeout
cluster.shutdown()
"""


def block(i: int) -> bytes:
    return i.to_bytes(8, "big") + random.Random(i).randbytes(SLOT - 8)


def expected_after(base: bytes, k: int) -> bytes:
    """The image after the writer's first ``k`` writes over ``base``."""
    image = bytearray(base)
    last: dict[int, int] = {}
    for i in range(1, k + 1):
        last[i * 7919 % SLOTS] = i
    for slot, i in last.items():
        offset = WRITE_REGION + slot * SLOT
        image[offset:offset + SLOT] = block(i)
    return bytes(image)


def writes_in(image: bytes) -> int:
    return max(int.from_bytes(image[WRITE_REGION + s * SLOT:WRITE_REGION + s * SLOT + 8], "big") for s in range(SLOTS))


class Writer:
    """A process that keeps an image open read-write (an RBD watcher) and writes to it until stopped."""

    def __init__(self, kube: Any, vol: volumes.RbdVolume) -> None:
        assert vol.size >= WRITE_REGION + SLOTS * SLOT, "the writer's region does not fit the volume"
        user, key = sandbox_ceph.csi_credentials(kube)
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, ",".join(sandbox_ceph.monitors(kube)), user, key,
                                      vol.ref.pool, vol.ref.image, str(WRITE_REGION), str(SLOT), str(SLOTS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "open"  # it holds the image

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, f"the writer failed ({self.proc.returncode})"


@pytest.fixture
def writer(kube: Any) -> Iterator[Any]:
    started: list[Writer] = []

    def start(vol: volumes.RbdVolume) -> Writer:
        started.append(Writer(kube, vol))
        return started[-1]

    yield start
    for w in started:
        w.stop()


# ---- the seed's scenario ----------------------------------------------------------------------------


def test_in_use_volume_backed_up_with_force_restores_byte_for_byte(kube: Any, operator: Any, namespace: str,
                                                                    api: Any, make_volume: Any, repository: Path,
                                                                    writer: Any) -> None:
    rnd = random.Random(5)
    size = 32 * MiB
    vol = make_volume(namespace, size=size, data={0: rnd.randbytes(4 * MiB), 20 * MiB: rnd.randbytes(3 * MiB)})
    proc = writer(vol)
    base = b"x" + read_image(kube, vol.ref, size)[1:]  # the writer's first write (it takes the lock with it)

    name = backup(api, namespace, force=True)
    obj = settled(api, namespace, "sharebackups", name)
    proc.stop()  # it ran all along: still alive, still writing
    status = obj["status"]
    assert status["phase"] == "Available", status["message"]
    assert status["format"] == "Chunks" and status["chunkCount"] > 0
    assert status["baseSnapshot"] == f"savepoint-base-{obj['metadata']['uid']}"
    assert not status.get("temporarySnapshot")
    assert_clean(kube, namespace, vol)
    assert {"BackingUpInUseVolume", "BackupStarted", "BackupSucceeded"} <= event_reasons(namespace, "ShareBackup", name)
    manifest = json.loads((repository / status["repositoryPath"] / "backup.json").read_text())
    assert manifest["format"] == "blocks" and manifest["blocks"]["size"] == size

    rst = restore(api, namespace, name, target={"newClaim": {"name": "restored", "storageClassName": "csi-rbd-sc"}})
    done = settled(api, namespace, "sharerestores", rst)
    assert done["status"]["phase"] == "Succeeded", done["status"]["message"]
    try:
        restored = read_image(kube, claim_image(namespace, "restored"), size)
        k = writes_in(restored)
        assert k > 0, "the writer wrote nothing before the snapshot"
        assert restored == expected_after(base, k), "the restore is not the snapshot's data"
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, claim_image(namespace, "restored")) == manifest["blocks"]["checksum"]
        pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim("restored", namespace)
        assert not pvc.metadata.owner_references  # handed over to the user
    finally:
        drop_created_claim(kube, namespace, "restored")


def test_incremental_reads_only_the_change_and_survives_deleting_the_full_backup(
        kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any, repository: Path) -> None:
    rnd = random.Random(6)
    vol = make_volume(namespace, size=GiB, data={i * 64 * MiB: rnd.randbytes(4 * MiB) for i in range(8)})
    full = backup(api, namespace, "full")
    obj = settled(api, namespace, "sharebackups", full)
    assert obj["status"]["phase"] == "Available", obj["status"]["message"]
    assert obj["status"]["bytesStored"] == 32 * MiB
    assert "no earlier backup" in obj["status"]["fullReadReason"]

    changed = {64 * MiB: rnd.randbytes(4 * MiB), 300 * MiB: rnd.randbytes(4 * MiB)}  # one rewritten, one new
    with volumes.cluster(kube) as c:
        volumes.write(c, vol.ref, changed)
        expected = volumes.checksum(c, vol.ref)
    incr = backup(api, namespace, "incr")
    obj = settled(api, namespace, "sharebackups", incr)
    status = obj["status"]
    assert status["phase"] == "Available", status["message"]
    assert status["parentBackup"] == "full" and not status.get("fullReadReason")
    n = sum(len(v) for v in changed.values())
    assert n <= status["bytesRead"] <= n * 1.10, status
    assert n * 0.90 <= status["bytesStored"] <= n * 1.10, status
    assert_clean(kube, namespace, vol)  # one base: the incremental's, the full one's replaced
    assert savepoint_snapshots(kube, vol.ref) == [f"savepoint-base-{obj['metadata']['uid']}"]

    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", full)
    wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", full),
              timeout=120)
    assert not (repository / namespace / status["sourceUID"] / "full").exists()

    with volumes.cluster(kube) as c:  # damage the volume, then put the incremental back in place
        volumes.write(c, vol.ref, {0: b"\xee" * MiB, 500 * MiB: b"\xdd" * MiB})
    rst = restore(api, namespace, incr)
    done = settled(api, namespace, "sharerestores", rst)
    assert done["status"]["phase"] == "Succeeded", done["status"]["message"]
    with volumes.cluster(kube) as c:
        assert volumes.checksum(c, vol.ref) == expected
    assert {"RestoreStarted", "RestoreSucceeded"} <= event_reasons(namespace, "ShareRestore", rst)

    # the last backup goes: its base snapshot and the source's directory go with it
    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", incr)
    wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", incr),
              timeout=120)
    assert savepoint_snapshots(kube, vol.ref) == []
    assert not (repository / namespace / status["sourceUID"]).exists()


def test_a_missing_base_snapshot_means_a_full_read_said_in_status(kube: Any, operator: Any, namespace: str,
                                                                  api: Any, make_volume: Any,
                                                                  repository: Path) -> None:
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB})
    first = settled(api, namespace, "sharebackups", backup(api, namespace, "first"))
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
        rbd.remove_snapshot(image, first["status"]["baseSnapshot"])
    second = settled(api, namespace, "sharebackups", backup(api, namespace, "second"))
    assert second["status"]["phase"] == "Available", second["status"]
    assert "gone" in second["status"]["fullReadReason"]
    assert second["status"]["bytesStored"] == 0  # the same data: every chunk was in the store already
    assert "FullRead" in event_reasons(namespace, "ShareBackup", "second")
    assert_clean(kube, namespace, vol)


def test_an_old_base_snapshot_that_cannot_go_leaves_the_new_backup_available(kube: Any, operator: Any,
                                                                              namespace: str, api: Any,
                                                                              make_volume: Any,
                                                                              repository: Path) -> None:
    """Someone cloned the first backup's base snapshot: the second backup cannot remove it when it takes over
    as the base.  That tidying is retried, and past the deadline given up with an Event: the backup, complete
    in the repository, is never discarded for it."""
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB})
    first = settled(api, namespace, "sharebackups", backup(api, namespace, "first"))
    old_base = first["status"]["baseSnapshot"]
    inspection = rbd.ImageRef(vol.ref.pool, f"inspect-{uuid.uuid4().hex[:6]}")
    with volumes.cluster(kube) as c:
        volumes.write(c, vol.ref, {4 * MiB: b"\x02" * MiB})
        rbd.clone(c, vol.ref, old_base, inspection)
    try:
        second = settled(api, namespace, "sharebackups", backup(api, namespace, "second", deadlineSeconds=20))
        assert second["status"]["phase"] == "Available", second["status"]
        assert "SnapshotCleanupFailed" in event_reasons(namespace, "ShareBackup", "second")
        assert (repository / second["status"]["repositoryPath"] / "backup.json").is_file()
        snaps = savepoint_snapshots(kube, vol.ref)
        assert old_base in snaps and second["status"]["baseSnapshot"] in snaps, snaps
    finally:
        with volumes.cluster(kube) as c:
            rbd.remove_image(c, inspection)
            with rbd.open_ref(c, vol.ref) as image:
                rbd.remove_snapshot(image, old_base)


# ---- refusals --------------------------------------------------------------------------------------


def test_an_in_use_volume_without_force_waits_then_fails_at_the_deadline(kube: Any, operator: Any, namespace: str,
                                                                          api: Any, make_volume: Any,
                                                                          repository: Path, writer: Any) -> None:
    vol = make_volume(namespace, size=32 * MiB)
    writer(vol)
    name = backup(api, namespace, deadlineSeconds=5)
    waiting = wait_custom(api, namespace, "sharebackups", name, reason_is("VolumeInUse"))
    assert waiting["status"]["phase"] == "Pending" and "force" in waiting["status"]["message"]
    failed = settled(api, namespace, "sharebackups", name)
    assert failed["status"]["phase"] == "Failed" and "watcher" in failed["status"]["message"], failed["status"]
    assert savepoint_snapshots(kube, vol.ref) == []


def test_restore_refusals(kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any,
                          repository: Path, writer: Any) -> None:
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB})
    name = backup(api, namespace, "b")
    assert settled(api, namespace, "sharebackups", name)["status"]["phase"] == "Available"

    small = make_volume(namespace, "small", size=8 * MiB)
    obj = settled(api, namespace, "sharerestores", restore(api, namespace, name,
                                                           target={"persistentVolumeClaim": {"name": small.pvc}}))
    assert obj["status"]["phase"] == "Failed" and "TargetTooSmall" == _reason(obj), obj["status"]

    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
        rbd.resize(image, 32 * MiB)  # the image grew behind the claim's back
    obj = settled(api, namespace, "sharerestores", restore(api, namespace, name))
    assert obj["status"]["phase"] == "Failed" and _reason(obj) == "SizeMismatch", obj["status"]
    assert "bytes" in obj["status"]["message"]

    busy = make_volume(namespace, "busy", size=32 * MiB)
    writer(busy)
    obj = settled(api, namespace, "sharerestores", restore(api, namespace, name, deadlineSeconds=5,
                                                           target={"persistentVolumeClaim": {"name": busy.pvc}}))
    assert obj["status"]["phase"] == "Failed" and "watcher" in obj["status"]["message"], obj["status"]
    for v in (vol, small, busy):
        annotations = client.CoreV1Api().read_namespaced_persistent_volume_claim(v.pvc, namespace).metadata.annotations
        assert not {k for k in (annotations or {}) if k.startswith("savepoint.dev/")}, annotations


def _reason(obj: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in obj["status"]["conditions"] if c["type"] == "Ready"), None)


def test_verify_catches_a_corrupted_chunk_and_names_it(kube: Any, operator: Any, namespace: str, api: Any,
                                                      make_volume: Any, repository: Path) -> None:
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * (4 * MiB), 8 * MiB: b"\x02" * (4 * MiB)})
    first = settled(api, namespace, "sharebackups", backup(api, namespace, "first", verify=True))
    assert first["status"]["phase"] == "Available", first["status"]
    source_dir = repository / namespace / first["status"]["sourceUID"]
    manifest = json.loads((source_dir / "first" / "backup.json").read_text())
    offset, _, digest = manifest["blocks"]["chunks"][1]
    chunk = source_dir / ".chunks" / digest[:2] / digest
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0xFF
    chunk.write_bytes(bytes(data))
    # the next backup inherits that chunk (nothing changed), and its verification reads it back
    second = settled(api, namespace, "sharebackups", backup(api, namespace, "second", verify=True))
    assert second["status"]["phase"] == "Failed", second["status"]
    assert _reason(second) == "VerificationFailed"
    assert digest in second["status"]["message"] and str(offset) in second["status"]["message"]
    assert not (source_dir / "second").exists()  # the failed backup left nothing behind
    assert_clean(kube, namespace, vol)  # the first backup's base stays; no temporary snapshot


# ---- kill and restart -----------------------------------------------------------------------------


@pytest.mark.parametrize("point", [
    "sbak-blocks:snapshot-named",  # status names the snapshot, it does not exist yet
    "sbak-blocks:snapshot-taken",
    "sbak:prepared@1.5",  # killed 1.5 s after the snapshot: while the mover Job runs
    "sbak:copied",
    "sbak-blocks:base-renamed",  # cleanup: the temporary snapshot is the base now, status not yet updated
    "sbak-blocks:cleaned-up",
])
def test_killed_at_each_step_ends_available_with_no_leftover_snapshot(kube: Any, crash_harness: Any,
                                                                      make_volume: Any, crash_repository: Path,
                                                                      point: str) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB, 9 * MiB: b"\x02" * MiB})
    crashing = crash_harness.start(crash_at=point)
    name = backup(api, namespace, "b")
    crash_harness.wait_crashed(crashing)
    crash_harness.start()
    obj = settled(api, namespace, "sharebackups", name)
    assert obj["status"]["phase"] == "Available", obj["status"]["message"]
    assert_clean(kube, namespace, vol)


def test_killed_during_the_copy_and_deleted_leaves_nothing(kube: Any, crash_harness: Any,
                                                           make_volume: Any, crash_repository: Path) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB})
    crashing = crash_harness.start(crash_at="sbak:prepared@1.5")  # while the mover Job runs
    name = backup(api, namespace, "b")
    crash_harness.wait_crashed(crashing)
    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", name)
    crash_harness.start()
    wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", name),
              timeout=120)
    assert savepoint_snapshots(kube, vol.ref) == []
    assert not list((crash_repository / namespace).glob("*/b"))


def test_the_repository_claim_gone_after_the_lock_ends_through_the_undo(kube: Any, crash_harness: Any,
                                                                       make_volume: Any,
                                                                       crash_repository: Path) -> None:
    """Locked, the temporary snapshot taken, then the repository's claim is deleted (while the operator is
    down): the copy cannot mount it, so the backup is undone -- temporary snapshot removed, lock released,
    Failed PvcNotFound with "nothing was written".  Before the step runner this retried forever as an
    InternalError, holding the lock and the snapshot."""
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=16 * MiB, data={0: b"\x01" * MiB})
    crashing = crash_harness.start(crash_at="sbak-blocks:snapshot-taken")
    name = backup(api, namespace, "b")
    crash_harness.wait_crashed(crashing)
    assert [s for s in savepoint_snapshots(kube, vol.ref) if s.startswith("savepoint-backup-")]
    crash_harness.tenant.core.delete_namespaced_persistent_volume_claim("repo", namespace)
    wait_gone(lambda: client.CoreV1Api().read_namespaced_persistent_volume_claim("repo", namespace))
    crash_harness.start()
    obj = settled(api, namespace, "sharebackups", name)
    assert obj["status"]["phase"] == "Failed" and _reason(obj) == "PvcNotFound", obj["status"]
    assert "nothing was written" in obj["status"]["message"], obj["status"]["message"]
    assert not obj["status"].get("temporarySnapshot") and not obj["status"].get("repositoryPath"), obj["status"]
    assert {"Aborting", "BackupFailed"} <= event_reasons(namespace, "ShareBackup", name)
    assert_clean(kube, namespace, vol, bases=0)
    assert not list((crash_repository / namespace).glob("*/b"))


def test_a_damaged_backup_never_restores_and_its_new_claim_goes_with_the_restore(
        kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any, repository: Path) -> None:
    make_volume(namespace, size=16 * MiB, data={0: b"\x01" * (4 * MiB), 8 * MiB: b"\x02" * (4 * MiB)})
    name = backup(api, namespace, "b")
    status = settled(api, namespace, "sharebackups", name)["status"]
    source_dir = repository / namespace / status["sourceUID"]
    chunks = json.loads((source_dir / "b" / "backup.json").read_text())["blocks"]["chunks"]
    first, second = (source_dir / ".chunks" / c[2][:2] / c[2] for c in chunks)

    # a missing chunk: refused before anything is written
    target = make_volume(namespace, "target", size=16 * MiB)
    held = second.read_bytes()
    second.unlink()
    obj = settled(api, namespace, "sharerestores", restore(api, namespace, name,
                                                           target={"persistentVolumeClaim": {"name": "target"}}))
    assert obj["status"]["phase"] == "Failed" and chunks[1][2] in obj["status"]["message"], obj["status"]
    assert "nothing was written" in obj["status"]["message"]
    second.write_bytes(held)
    annotations = client.CoreV1Api().read_namespaced_persistent_volume_claim(target.pvc, namespace).metadata.annotations
    assert not {k for k in (annotations or {}) if k.startswith("savepoint.dev/")}, annotations

    # a corrupted chunk, into a new claim: caught while writing, never Succeeded
    data = bytearray(first.read_bytes())
    data[123] ^= 0x55
    first.write_bytes(bytes(data))
    rst = restore(api, namespace, name, target={"newClaim": {"name": "fresh", "storageClassName": "csi-rbd-sc"}})
    obj = settled(api, namespace, "sharerestores", rst)
    assert obj["status"]["phase"] == "Failed" and _reason(obj) == "VerificationFailed", obj["status"]
    assert chunks[0][2] in obj["status"]["message"]
    uid = obj["metadata"]["uid"]
    core = client.CoreV1Api()
    assert core.read_persistent_volume(f"savepoint-restore-{uid}")  # kept for inspection while the restore is there
    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharerestores", rst)
    wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharerestores", rst))
    wait_gone(lambda: core.read_persistent_volume(f"savepoint-restore-{uid}"))
    with volumes.cluster(kube) as c:
        assert not rbd.image_exists(c, rbd.ImageRef("rbd", f"csi-vol-{uid}"))
