"""After an action took its lock, the world changes under it; it must still end clean.

Once a revert holds its lock it works from what it recorded: a newer snapshot
appearing (an hourly schedule) while the operator restarts mid-copy does not
end it Failed with the lock held, and a deadline passing while it waits for a
mover slot ends it through its undo (lock released, nothing written, no
safety snapshot left).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest
from kubernetes import client

from helpers import volumes
from helpers.kube import phase_in, ready_reason, reason_is, wait_custom
from helpers.movers import OPERATOR_NAMESPACE, free_mover_slot, live_mover_objects, occupy_mover_slot
from helpers.tenant import tenant_of
from savepoint.storage import rbd

MiB = 1 << 20
ORIGINAL = {0: b"A" * 4096, 3 * MiB: b"original" * 512}
CHANGED = {0: b"B" * 4096, 5 * MiB: b"changed later" * 300}


@pytest.fixture
def volume(kube: Any, crash_harness: Any) -> Iterator[volumes.RbdVolume]:
    vol = volumes.rbd_pvc(kube, crash_harness.namespace, "data", data=ORIGINAL, claims=crash_harness.tenant.core)
    yield vol
    volumes.delete_rbd_volume(kube, vol)


def revert(namespace: str, snapshot: str, **spec: Any) -> str:
    name = f"revert-{uuid.uuid4().hex[:6]}"
    api = tenant_of(namespace).custom  # the namespace's user
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "volumereverts", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}},
                 "snapshot": {"volumeSnapshot": {"name": snapshot}}, **spec}})
    return name


def revert_to_rbd_snapshot(namespace: str, snapshot: str, **spec: Any) -> str:
    """A VolumeRevert to an RBD snapshot by name, as the cluster's admin writes it (a raw Ceph reference)."""
    name = f"revert-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
            "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": {"rbdSnapshot": snapshot},
                     **spec}}
    client.CustomObjectsApi().create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace,
                                                              "volumereverts", body)
    return name


def assert_released(kube: Any, vol: volumes.RbdVolume, namespace: str) -> None:
    pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim(vol.pvc, namespace)
    assert not {k for k in (pvc.metadata.annotations or {}) if k.startswith("savepoint.dev/")}, \
        pvc.metadata.annotations
    with volumes.cluster(kube) as c:
        assert not [s for s in volumes.snapshots(c, vol.ref) if s.startswith("savepoint-")]
    assert not live_mover_objects(namespace)


def test_a_newer_snapshot_and_a_restart_mid_copy_do_not_strand_the_lock(kube: Any, crash_harness: Any,
                                                                       volume: volumes.RbdVolume) -> None:
    ns = crash_harness.namespace
    snap = volumes.csi_snapshot(kube, volume, "nightly")
    with volumes.cluster(kube) as c:
        volumes.write(c, volume.ref, CHANGED)
    newer = None
    try:
        proc = crash_harness.start(crash_at="mover-created")
        name = revert(ns, snap.name)
        crash_harness.wait_crashed(proc)
        newer = volumes.csi_snapshot(kube, volume, "hourly")  # made while the copy runs
        crash_harness.start()
        done = wait_custom(client.CustomObjectsApi(), ns, "volumereverts", name, phase_in("Succeeded", "Failed"),
                           timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        with volumes.cluster(kube) as c:
            for offset, data in ORIGINAL.items():
                assert volumes.read(c, volume.ref, offset, len(data)) == data
            assert volumes.read(c, volume.ref, 5 * MiB, 64) == bytes(64)
        assert_released(kube, volume, ns)
    finally:
        for s in (snap, newer):
            if s is not None:
                volumes.delete_csi_snapshot(kube, s)


def test_a_deadline_passing_in_the_mover_queue_ends_through_the_undo(kube: Any, crash_harness: Any,
                                                                     volume: volumes.RbdVolume) -> None:
    ns = crash_harness.namespace
    snap = volumes.csi_snapshot(kube, volume, "nightly")
    occupant = occupy_mover_slot(f"occupant-{ns}")  # a mover of another namespace that never gets a node
    try:
        crash_harness.start(SAVEPOINT_MOVER_CONCURRENCY="1")
        name = revert(ns, snap.name, deadlineSeconds=25)
        api = client.CustomObjectsApi()
        waiting = wait_custom(api, ns, "volumereverts", name, reason_is("MoverLimit"), timeout=60)
        assert "number 1 of" in waiting["status"]["message"], waiting["status"]["message"]
        done = wait_custom(api, ns, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout=90)
        assert ready_reason(done) == "DeadlineExceeded", done["status"]
        assert "nothing was written" in done["status"]["message"]
        assert_released(kube, volume, ns)
        with volumes.cluster(kube) as c:
            assert volumes.read(c, volume.ref, 0, 4096) == ORIGINAL[0]
    finally:
        free_mover_slot(occupant)
        volumes.delete_csi_snapshot(kube, snap)


def test_a_mover_pod_that_cannot_start_says_why_and_fails_fast(kube: Any, crash_harness: Any,
                                                              volume: volumes.RbdVolume) -> None:
    """A nodeSelector no node matches: the scheduler's reason within seconds, then the failure."""
    assert_start_refused(kube, crash_harness, volume, "MoverUnschedulable", "node",
                         SAVEPOINT_MOVER_POD='{"nodeSelector": {"savepoint.dev/test": "no-such-node"}}')


def test_an_image_without_exclusive_lock_is_refused_before_anything_is_locked(kube: Any, crash_harness: Any,
                                                                             volume: volumes.RbdVolume) -> None:
    import rbd as librbd

    ns = crash_harness.namespace
    with volumes.cluster(kube) as c:
        with rbd.open_ref(c, volume.ref) as image:
            # object-map and fast-diff depend on exclusive-lock: they go first.
            image.update_features(librbd.RBD_FEATURE_FAST_DIFF | librbd.RBD_FEATURE_OBJECT_MAP, False)
            image.update_features(librbd.RBD_FEATURE_EXCLUSIVE_LOCK, False)
            rbd.create_snapshot(image, "before")
        before = volumes.checksum(c, volume.ref)
    crash_harness.start()
    name = revert_to_rbd_snapshot(ns, "before")
    done = wait_custom(client.CustomObjectsApi(), ns, "volumereverts", name, phase_in("Succeeded", "Failed"))
    assert ready_reason(done) == "UnsupportedImageFeatures", done["status"]
    assert "rbd feature enable" in done["status"]["message"]
    assert_released(kube, volume, ns)  # no lock, no error state, no safety snapshot
    with volumes.cluster(kube) as c:
        assert volumes.checksum(c, volume.ref) == before


def test_a_safety_snapshot_that_cannot_be_removed_is_kept_and_the_revert_stands(kube: Any, crash_harness: Any,
                                                                                 volume: volumes.RbdVolume) -> None:
    """After the rollback, someone clones the safety snapshot (the operator is down): removing it fails, and
    that cleanup must not fail the revert, whose undo would put the pre-revert data back."""
    ns = crash_harness.namespace
    with volumes.cluster(kube) as c:
        with rbd.open_ref(c, volume.ref) as image:
            rbd.create_snapshot(image, "before")
        volumes.write(c, volume.ref, CHANGED)
    proc = crash_harness.start(crash_at="VolumeRevert:Finished:begin")
    name = revert_to_rbd_snapshot(ns, "before", deadlineSeconds=30)
    api = client.CustomObjectsApi()
    crash_harness.wait_crashed(proc)
    safety = api.get_namespaced_custom_object_status("savepoint.dev", "v1alpha1", ns, "volumereverts",
                                                     name)["status"]["safetySnapshot"]
    inspection = rbd.ImageRef(volume.ref.pool, f"inspect-{uuid.uuid4().hex[:6]}")
    with volumes.cluster(kube) as c:
        rbd.clone(c, volume.ref, safety, inspection)  # e.g. an admin looking at the pre-revert data
    try:
        crash_harness.start()
        done = wait_custom(api, ns, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout=60)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert f"safety snapshot {safety}" in done["status"]["message"] and "is kept" in done["status"]["message"]
        reasons = {e.reason for e in client.CoreV1Api().list_namespaced_event(
            ns, field_selector=f"involvedObject.name={name}").items}
        assert "SafetySnapshotKept" in reasons, reasons
        pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim(volume.pvc, ns)
        assert not {k for k in (pvc.metadata.annotations or {}) if k.startswith("savepoint.dev/")}, \
            pvc.metadata.annotations  # the lock is released, no error state
        with volumes.cluster(kube) as c:
            for offset, data in ORIGINAL.items():  # the revert stands
                assert volumes.read(c, volume.ref, offset, len(data)) == data
            assert volumes.read(c, volume.ref, 5 * MiB, 64) == bytes(64)
            assert safety in volumes.snapshots(c, volume.ref)
    finally:
        with volumes.cluster(kube) as c:
            rbd.remove_image(c, inspection)
            with rbd.open_ref(c, volume.ref) as image:
                rbd.remove_snapshot(image, safety)


@pytest.fixture
def mover_class(kube: Any, crash_harness: Any) -> Iterator[str]:
    """A PriorityClass only this test's movers use, so that admission and quota rules aimed at it touch no
    other mover of the shared operator namespace."""
    name = f"sp-test-{crash_harness.namespace}"
    client.SchedulingV1Api().create_priority_class({"metadata": {"name": name}, "value": 10})
    yield name
    client.SchedulingV1Api().delete_priority_class(name)


def test_a_mover_pod_refused_by_a_quota_says_so(kube: Any, crash_harness: Any, volume: volumes.RbdVolume,
                                                 mover_class: str) -> None:
    """A ResourceQuota that requires requests.cpu (scoped to this test's movers by their PriorityClass): the
    Job controller cannot create the pod, the CR shows MoverQuotaExceeded with the quota's words, and the
    step fails with it after the start timeout, through the undo."""
    ns = crash_harness.namespace
    quota = f"q-{ns}"
    client.CoreV1Api().create_namespaced_resource_quota(OPERATOR_NAMESPACE, {
        "metadata": {"name": quota},
        "spec": {"hard": {"requests.cpu": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": [mover_class]}]}}})
    try:
        assert_start_refused(kube, crash_harness, volume, "MoverQuotaExceeded", "requests.cpu",
                             SAVEPOINT_MOVER_POD=f'{{"priorityClassName": "{mover_class}"}}')
    finally:
        client.CoreV1Api().delete_namespaced_resource_quota(quota, OPERATOR_NAMESPACE)


def test_a_mover_pod_refused_by_admission_says_so(kube: Any, crash_harness: Any, volume: volumes.RbdVolume,
                                                   mover_class: str) -> None:
    """A ValidatingAdmissionPolicy refusing this test's mover pods: MoverPodRefused with the policy's message."""
    ns = crash_harness.namespace
    policy = f"refuse-{ns}"
    admission = client.AdmissionregistrationV1Api()
    admission.create_validating_admission_policy({
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["pods"]}]},
                 "validations": [{"expression": f"object.spec.priorityClassName != '{mover_class}'",
                                  "message": "movers of this class are not admitted here"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}}})
    try:
        assert_start_refused(kube, crash_harness, volume, "MoverPodRefused", "not admitted here",
                             SAVEPOINT_MOVER_POD=f'{{"priorityClassName": "{mover_class}"}}')
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)


def assert_start_refused(kube: Any, crash_harness: Any, volume: volumes.RbdVolume, reason: str, words: str,
                         **settings: str) -> None:
    """A copy revert whose mover pod cannot start: the CR shows ``reason`` with the cluster's ``words`` while
    it waits, then fails with it after the start timeout through the undo -- nothing written, no lock left."""
    ns = crash_harness.namespace
    snap = volumes.csi_snapshot(kube, volume, "nightly")
    try:
        crash_harness.start(SAVEPOINT_MOVER_START_TIMEOUT="15", **settings)
        name = revert(ns, snap.name)
        api = client.CustomObjectsApi()
        waiting = wait_custom(api, ns, "volumereverts", name, reason_is(reason), timeout=60)
        assert words in waiting["status"]["message"], waiting["status"]["message"]
        done = wait_custom(api, ns, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout=90)
        assert ready_reason(done) == reason, done["status"]
        assert "nothing was written" in done["status"]["message"], done["status"]["message"]
        assert_released(kube, volume, ns)
    finally:
        volumes.delete_csi_snapshot(kube, snap)
