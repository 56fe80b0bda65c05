"""VolumeRevert end to end (seed 000): real API server, real Ceph, the operator
running with the chart's ServiceAccount, mover Jobs run by the pod runner."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from helpers.movers import OPERATOR_NAMESPACE, live_mover_objects
from helpers import volumes
from helpers.kube import phase_in, ready_reason, reason_is, wait_custom, wait_gone
from savepoint.storage import rbd

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
ORIGINAL = {0: b"A" * 4096, 5 * MiB: b"original data" * 100, 12 * MiB: b"\x01" * 8192}
CHANGED = {0: b"B" * 4096, 7 * MiB: b"written after the snapshot" * 50, 12 * MiB: b"\x02" * 8192}


def revert(api: client.CustomObjectsApi, namespace: str, snapshot: dict[str, Any], *, pvc: str = "data",
           volume: dict[str, Any] | None = None, name: str | None = None, **spec: Any) -> str:
    name = name or f"revert-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
            "spec": {"volume": volume or {"persistentVolumeClaim": {"name": pvc}}, "snapshot": snapshot, **spec}}
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "volumereverts", body)
    return name


def finished(api: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    return wait_custom(api, namespace, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout)


def snapshot_and_change(kube: Any, vol: volumes.RbdVolume, snap: str = "before") -> None:
    with volumes.cluster(kube) as c:
        with rbd.open_ref(c, vol.ref) as image:
            rbd.create_snapshot(image, snap)
        volumes.write(c, vol.ref, CHANGED)


def assert_original(kube: Any, vol: volumes.RbdVolume) -> None:
    with volumes.cluster(kube) as c:
        for offset, data in ORIGINAL.items():
            assert volumes.read(c, vol.ref, offset, len(data)) == data, f"offset {offset}"
        assert volumes.read(c, vol.ref, 7 * MiB, 100) == bytes(100), "data written after the snapshot survived"


def pvc_annotations(namespace: str, name: str = "data") -> dict[str, str]:
    return client.CoreV1Api().read_namespaced_persistent_volume_claim(name, namespace).metadata.annotations or {}


def event_reasons(namespace: str, kind: str, name: str) -> set[str]:
    events = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    return {e.reason for e in events.items}


def assert_clean(kube: Any, vol: volumes.RbdVolume, namespace: str) -> None:
    """No safety snapshot, no lock, no state, no mover Job left."""
    with volumes.cluster(kube) as c:
        leftovers = [s for s in volumes.snapshots(c, vol.ref) if s.startswith("savepoint-")]
    assert not leftovers, f"leaked snapshots {leftovers}"
    annotations = pvc_annotations(namespace, vol.pvc)
    assert not {k for k in annotations if k.startswith("savepoint.dev/")}, annotations
    assert not live_mover_objects(namespace)


# --- the seed's scenario, both paths -------------------------------------------------------

def test_fast_path_rolls_back_to_the_latest_rbd_snapshot(kube: Any, operator: Any, namespace: str,
                                                         api: Any, make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    name = revert(api, namespace, {"rbdSnapshot": "before"})
    obj = finished(api, namespace, name)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["method"] == "Rollback"
    assert obj["status"]["safetySnapshot"].startswith("savepoint-safety-")
    assert_original(kube, vol)
    assert_clean(kube, vol, namespace)
    with volumes.cluster(kube) as c:
        assert "before" in volumes.snapshots(c, vol.ref), "a revert never deletes snapshots"
    assert {"RevertStarted", "RevertSucceeded"} <= event_reasons(namespace, "VolumeRevert", name)
    assert {"RevertStarted", "RevertSucceeded"} <= event_reasons(namespace, "PersistentVolumeClaim", "data")
    ready = {c["type"]: c for c in obj["status"]["conditions"]}
    assert ready["Ready"]["status"] == "True" and ready["Succeeded"]["status"] == "True"


def test_generic_path_copies_a_csi_volume_snapshot_sparsely(kube: Any, operator: Any, namespace: str,
                                                            api: Any, make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snap = volumes.csi_snapshot(kube, vol, "nightly")
    try:
        with volumes.cluster(kube) as c:
            volumes.write(c, vol.ref, CHANGED)
            expected = volumes.checksum(c, snap.image, snap.image.image)
        name = revert(api, namespace, {"volumeSnapshot": {"name": "nightly"}})
        obj = finished(api, namespace, name, timeout=180)
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        assert obj["status"]["method"] == "Copy"
        assert_original(kube, vol)
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, vol.ref) == expected
        assert_clean(kube, vol, namespace)
        vs = client.CustomObjectsApi().get_namespaced_custom_object("snapshot.storage.k8s.io", "v1", namespace,
                                                                    "volumesnapshots", "nightly")
        assert not {k for k in (vs["metadata"].get("annotations") or {}) if k.startswith("savepoint.dev/")}
    finally:
        volumes.delete_csi_snapshot(kube, snap)


# --- refusals: the seed's 400/404/409 ------------------------------------------------------

def test_only_the_latest_snapshot(kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol, "first")
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
        rbd.create_snapshot(image, "second")
    obj = finished(api, namespace, revert(api, namespace, {"rbdSnapshot": "first"}))
    assert obj["status"]["phase"] == "Failed"
    assert reason_is("SnapshotNotLatest")(obj) and "second" in obj["status"]["message"]
    with volumes.cluster(kube) as c:
        assert volumes.read(c, vol.ref, 0, 4096) == CHANGED[0], "a refused revert touched the data"
        assert {"first", "second"} <= set(volumes.snapshots(c, vol.ref))
    assert_clean(kube, vol, namespace)


@pytest.mark.parametrize("case", ["snapshot-missing", "pvc-missing", "size-mismatch"])
def test_refusals(kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any, case: str) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    if case == "size-mismatch":
        with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
            rbd.resize(image, vol.size * 2)
    snapshot = {"rbdSnapshot": "nope" if case == "snapshot-missing" else "before"}
    obj = finished(api, namespace, revert(api, namespace, snapshot, pvc="missing" if case == "pvc-missing" else "data"))
    expected = {"snapshot-missing": "SnapshotNotFound", "pvc-missing": "PvcNotFound", "size-mismatch": "SizeMismatch"}
    assert obj["status"]["phase"] == "Failed" and reason_is(expected[case])(obj), obj["status"]
    if case == "size-mismatch":
        assert str(vol.size) in obj["status"]["message"] and str(vol.size * 2) in obj["status"]["message"]
    assert "Traceback" not in obj["status"]["message"]
    assert "RevertFailed" in event_reasons(namespace, "VolumeRevert", obj["metadata"]["name"])


def test_snapshot_of_another_volume_is_refused(kube: Any, operator: Any, namespace: str, api: Any,
                                              make_volume: Any) -> None:
    make_volume(namespace, "data", data=ORIGINAL)
    other = make_volume(namespace, "other")
    snap = volumes.csi_snapshot(kube, other, "of-other")
    try:
        obj = finished(api, namespace, revert(api, namespace, {"volumeSnapshot": {"name": "of-other"}}))
        assert obj["status"]["phase"] == "Failed" and reason_is("SnapshotNotOfVolume")(obj), obj["status"]
    finally:
        volumes.delete_csi_snapshot(kube, snap)


def test_raw_reference_only_where_allowed(kube: Any, operator: Any, namespace: str, admin_namespace: str,
                                          api: Any, admin_api: Any, make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    from sandboxlib import ceph as sandbox_ceph

    raw = {"rbd": {"clusterID": sandbox_ceph.fsid(kube), "pool": vol.ref.pool, "image": vol.ref.image}}
    refused = finished(api, namespace, revert(api, namespace, {"rbdSnapshot": "before"}, volume=raw))
    assert refused["status"]["phase"] == "Failed" and reason_is("ReferenceNotAllowed")(refused)
    # Raw references are for administrators, in the namespaces the operator's settings name.
    allowed = finished(admin_api, admin_namespace,
                       revert(admin_api, admin_namespace, {"rbdSnapshot": "before"}, volume=raw))
    assert allowed["status"]["phase"] == "Succeeded", allowed["status"]
    assert_original(kube, vol)


# --- waiting: in use, busy -------------------------------------------------------------------

def test_in_use_waits_then_goes_on_when_the_pod_is_gone(kube: Any, operator: Any, tenant: Any, namespace: str,
                                                        api: Any, make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    core = tenant.core
    # A pod nobody schedules (no such scheduler): it stays Pending and holds the claim, as a workload would.
    core.create_namespaced_pod(namespace, {"metadata": {"name": "app"}, "spec": {
        "schedulerName": "not-running", "containers": [{"name": "app", "image": "app", "command": ["true"],
                                                         "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}})
    name = revert(api, namespace, {"rbdSnapshot": "before"})
    waiting = wait_custom(api, namespace, "volumereverts", name, reason_is("VolumeInUse"))
    assert waiting["status"]["phase"] == "Pending" and "Pod/app" in waiting["status"]["message"]
    with volumes.cluster(kube) as c:
        assert volumes.read(c, vol.ref, 0, 4096) == CHANGED[0]
    core.delete_namespaced_pod("app", namespace, grace_period_seconds=0)
    obj = finished(api, namespace, name)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert_original(kube, vol)


def test_in_use_until_the_deadline_fails(kube: Any, operator: Any, namespace: str, api: Any,
                                         make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref):  # an RBD watcher: a client has it open
        obj = finished(api, namespace, revert(api, namespace, {"rbdSnapshot": "before"}, deadlineSeconds=3))
    assert obj["status"]["phase"] == "Failed" and "gave up" in obj["status"]["message"], obj["status"]
    assert "watcher" in obj["status"]["message"]


def test_a_busy_volume_waits_for_the_other_action(kube: Any, operator: Any, tenant: Any, namespace: str, api: Any,
                                                  make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    # Another Savepoint action holds the PVC: a live ShareBackup named in the lock annotation.
    holder = api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "sharebackups", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "ShareBackup", "metadata": {"name": "holder"},
        "spec": {"source": {"persistentVolumeClaim": {"name": "elsewhere"}},
                 "repository": {"persistentVolumeClaim": {"name": "repo"}}}})
    tenant.core.patch_namespaced_persistent_volume_claim("data", namespace, {"metadata": {"annotations": {
        "savepoint.dev/lock": "ShareBackup/holder", "savepoint.dev/lock-uid": holder["metadata"]["uid"],
        "savepoint.dev/state": "backup-creating"}}})
    name = revert(api, namespace, {"rbdSnapshot": "before"})
    waiting = wait_custom(api, namespace, "volumereverts", name, reason_is("VolumeBusy"))
    assert "ShareBackup/holder" in waiting["status"]["message"]
    tenant.core.patch_namespaced_persistent_volume_claim("data", namespace, {"metadata": {"annotations": {
        "savepoint.dev/lock": None, "savepoint.dev/lock-uid": None, "savepoint.dev/state": None}}})
    assert finished(api, namespace, name)["status"]["phase"] == "Succeeded"
    assert_original(kube, vol)


def test_two_reverts_on_one_volume_one_runs_the_other_waits(kube: Any, crash_harness: Any,
                                                            make_volume: Any) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, data=ORIGINAL)
    snap = volumes.csi_snapshot(kube, vol, "nightly")
    # One mover slot, taken by a Job that never runs: the first revert holds the
    # volume while it waits for a slot, so the second one must wait for the volume.
    crash_harness.start(SAVEPOINT_MOVER_CONCURRENCY="1")
    # (Movers run in the operator's namespace: only a Job there takes a slot.)
    batch = client.BatchV1Api()
    occupant = f"occupant-{namespace}"
    batch.create_namespaced_job(OPERATOR_NAMESPACE, {
        "metadata": {"name": occupant, "labels": {"savepoint.dev/mover": "true",
                                                  "savepoint.dev/owner-namespace": "other"}},
        "spec": {"template": {"spec": {"schedulerName": "not-running", "restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}})
    try:
        with volumes.cluster(kube) as c:
            volumes.write(c, vol.ref, CHANGED)
        first = revert(api, namespace, {"volumeSnapshot": {"name": "nightly"}})
        wait_custom(api, namespace, "volumereverts", first, lambda o: ready_reason(o) == "MoverLimit")
        second = revert(api, namespace, {"volumeSnapshot": {"name": "nightly"}})
        waiting = wait_custom(api, namespace, "volumereverts", second, reason_is("VolumeBusy"))
        assert f"VolumeRevert/{first}" in waiting["status"]["message"]
        batch.delete_namespaced_job(occupant, OPERATOR_NAMESPACE, propagation_policy="Background")
        assert finished(api, namespace, first, 180)["status"]["phase"] == "Succeeded"
        assert finished(api, namespace, second, 180)["status"]["phase"] == "Succeeded"
        assert_original(kube, vol)
        assert_clean(kube, vol, namespace)
    finally:
        try:
            batch.delete_namespaced_job(occupant, OPERATOR_NAMESPACE, propagation_policy="Background")
        except client.ApiException:
            pass  # deleted above
        volumes.delete_csi_snapshot(kube, snap)


# --- failure: error state, safety snapshot kept, reset -----------------------------------------

def test_a_failed_copy_puts_the_old_data_back_and_leaves_an_error_state(kube: Any, crash_harness: Any,
                                                                         make_volume: Any) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, data=ORIGINAL)
    snap = volumes.csi_snapshot(kube, vol, "nightly")
    with volumes.cluster(kube) as c:
        volumes.write(c, vol.ref, CHANGED)
    try:
        # Stop the operator right after the safety snapshot, make the snapshot's
        # data vanish, and let a new operator run the copy: it fails after the lock.
        crashing = crash_harness.start(crash_at="revert:safety-snapshot")
        name = revert(api, namespace, {"volumeSnapshot": {"name": "nightly"}})
        crash_harness.wait_crashed(crashing)
        with volumes.cluster(kube) as c, rbd.open_ref(c, snap.image) as image:
            rbd.remove_snapshot(image, snap.image.image)
        crash_harness.start()
        obj = finished(api, namespace, name, 180)
        assert obj["status"]["phase"] == "Failed", obj["status"]
        safety = obj["status"]["safetySnapshot"]
        assert safety in obj["status"]["message"] and "reset-state" in obj["status"]["message"]
        with volumes.cluster(kube) as c:
            assert safety in volumes.snapshots(c, vol.ref), "the safety snapshot must be kept after a failure"
            assert volumes.read(c, vol.ref, 0, 4096) == CHANGED[0], "the pre-revert data must be back"
        assert pvc_annotations(namespace)["savepoint.dev/state"] == "error"
        assert "savepoint.dev/lock" not in pvc_annotations(namespace)
        vs = client.CustomObjectsApi().get_namespaced_custom_object("snapshot.storage.k8s.io", "v1", namespace,
                                                                    "volumesnapshots", "nightly")
        assert not {k for k in (vs["metadata"].get("annotations") or {}) if k.startswith("savepoint.dev/")}
        # A new action waits on the error state until the documented reset.
        blocked = revert(api, namespace, {"rbdSnapshot": safety})
        wait_custom(api, namespace, "volumereverts", blocked, reason_is("VolumeInErrorState"))
        subprocess.run([str(kube.venv / "bin" / "kubectl-savepoint"), "--kubeconfig",
                        str(crash_harness.tenant.kubeconfig), "-n", namespace, "reset-state", "pvc/data"], check=True)
        assert "savepoint.dev/state" not in pvc_annotations(namespace)
    finally:
        volumes.delete_csi_snapshot(kube, snap)


# --- deleting a running revert ---------------------------------------------------------------

def test_deleting_a_running_revert_finishes_the_copy_first(kube: Any, operator: Any, namespace: str, api: Any,
                                                           make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snap = volumes.csi_snapshot(kube, vol, "nightly")
    try:
        with volumes.cluster(kube) as c:
            volumes.write(c, vol.ref, CHANGED)
        name = revert(api, namespace, {"volumeSnapshot": {"name": "nightly"}})
        wait_custom(api, namespace, "volumereverts", name, lambda o: (o.get("status") or {}).get("moverJob"))
        api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "volumereverts", name)
        wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace,
                                                           "volumereverts", name), timeout=180)
        assert_original(kube, vol)  # the copy finished before the object went
        assert_clean(kube, vol, namespace)
    finally:
        volumes.delete_csi_snapshot(kube, snap)


# --- killed at every step ---------------------------------------------------------------------

@pytest.mark.parametrize("point,path", [
    ("revert:locked", "rollback"),
    ("revert:safety-snapshot", "rollback"),
    ("revert:mid-rollback@0.01", "rollback"),
    ("revert:data-reverted", "rollback"),
    ("mover-created", "copy"),
    ("revert:data-reverted", "copy"),
])
def test_killed_at_each_step_finishes_cleanly_after_restart(kube: Any, crash_harness: Any,
                                                            make_volume: Any, point: str, path: str) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, data=ORIGINAL)
    snap = None
    if path == "copy":
        snap = volumes.csi_snapshot(kube, vol, "nightly")
        with volumes.cluster(kube) as c:
            volumes.write(c, vol.ref, CHANGED)
        snapshot = {"volumeSnapshot": {"name": "nightly"}}
    else:
        snapshot_and_change(kube, vol)
        snapshot = {"rbdSnapshot": "before"}
    try:
        crashing = crash_harness.start(crash_at=point)
        name = revert(api, namespace, snapshot)
        crash_harness.wait_crashed(crashing)
        crash_harness.start()
        obj = finished(api, namespace, name, timeout=180)
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        assert_original(kube, vol)
        assert_clean(kube, vol, namespace)
    finally:
        if snap:
            volumes.delete_csi_snapshot(kube, snap)


def test_plugin_reverts_and_follows_to_the_end(kube: Any, operator: Any, tenant: Any, namespace: str,
                                              make_volume: Any) -> None:
    vol = make_volume(namespace, data=ORIGINAL)
    snapshot_and_change(kube, vol)
    out = subprocess.run([str(kube.venv / "bin" / "kubectl-savepoint"), "--kubeconfig", str(tenant.kubeconfig),
                          "-n", namespace, "revert", "data", "--to", "before", "--wait", "--timeout", "120"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "phase=Succeeded" in out.stdout
    assert_original(kube, vol)
