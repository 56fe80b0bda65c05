"""The fault matrix: every step of a flow × each way the world changes there (VolumeRevert in full;
ImageSnapshot deleted at every step; ShareRestore's undo in test_sharerestore_undo.py).

Generated from the flow's declared steps (``FLOW.steps``): the operator is killed at the
start of each step (the runner's fault point ``<Flow>:<Step>:begin``); while it is down the
world changes; a new operator picks the CR up.  Once the CR is final (or gone, when it was
deleted), whatever the outcome:

- no lock is left on the claim or the snapshot, and no mover Job, Secret or ConfigMap;
- no temporary snapshot is left, except a safety snapshot that a Failed revert names and
  keeps, with the claim marked ``error`` -- and then that snapshot holds the pre-revert data;
- the volume holds the result (Succeeded) or its untouched pre-revert data.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest
from kubernetes import client

from helpers import volumes
from helpers.kube import phase_in, reason_is, wait_custom, wait_gone
from helpers.movers import live_mover_objects
from savepoint.flows import imagesnapshot, revert
from savepoint.kube import locks
from savepoint.storage import ceph

pytestmark = pytest.mark.e2e

MiB = 1 << 20
SNAPSHOT_DATA = {0: b"A" * 4096, 3 * MiB: b"original" * 512}
LATER_DATA = {0: b"B" * 4096, 5 * MiB: b"changed later" * 300}
CONFIG_BROKEN_SECONDS = 12
DEADLINE_SECONDS = 12
FAULTS = ("killed", "newer-snapshot", "snapshot-deleted", "ceph-config-broken", "pod-uses-volume", "deadline",
          "deleted")
CEPH_NS = "ceph-csi"
OPERATOR_SA = ("savepoint-system", "savepoint-operator")


@pytest.fixture
def private_ceph_config(kube: Any) -> Iterator[str]:
    """A copy of ceph-csi's ConfigMap for one operator, so breaking it breaks no other test; the admin grants
    the operator's ServiceAccount read access to it by name, as the chart does for the real one."""
    core, rbac = client.CoreV1Api(), client.RbacAuthorizationV1Api()
    name = f"ceph-csi-config-{uuid.uuid4().hex[:6]}"
    real = core.read_namespaced_config_map("ceph-csi-config", CEPH_NS)
    core.create_namespaced_config_map(CEPH_NS, {"metadata": {"name": name}, "data": dict(real.data)})
    rbac.create_namespaced_role(CEPH_NS, {"metadata": {"name": name}, "rules": [{
        "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding(CEPH_NS, {
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "namespace": OPERATOR_SA[0], "name": OPERATOR_SA[1]}]})
    yield name
    for delete in (lambda: rbac.delete_namespaced_role_binding(name, CEPH_NS),
                   lambda: rbac.delete_namespaced_role(name, CEPH_NS),
                   lambda: core.delete_namespaced_config_map(name, CEPH_NS)):
        delete()


class RevertWorld:
    """One claim with data, its VolumeSnapshot, and the ways its world changes while the operator is down."""

    def __init__(self, kube: Any, harness: Any, config_map: str) -> None:
        self.kube, self.harness, self.config_map = kube, harness, config_map
        self.ns = harness.namespace
        self.volume = volumes.rbd_pvc(kube, self.ns, "data", data=SNAPSHOT_DATA, claims=harness.tenant.core)
        self.snapshots = [volumes.csi_snapshot(kube, self.volume, "nightly")]
        with volumes.cluster(kube) as c:
            volumes.write(c, self.volume.ref, LATER_DATA)  # written after the snapshot: what the revert undoes
            self.before = volumes.checksum(c, self.volume.ref)
        self.pods: list[str] = []

    def create(self, **spec: Any) -> str:
        name = f"revert-{uuid.uuid4().hex[:6]}"
        self.harness.api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", self.ns, "volumereverts", {
            "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
            "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}},
                     "snapshot": {"volumeSnapshot": {"name": "nightly"}}, **spec}})
        return name

    # --- the faults ---------------------------------------------------------------------

    def newer_snapshot(self) -> None:
        self.snapshots.append(volumes.csi_snapshot(self.kube, self.volume, "hourly"))

    def delete_snapshot(self) -> None:
        snap = self.snapshots.pop(0)
        client.CustomObjectsApi().delete_namespaced_custom_object("snapshot.storage.k8s.io", "v1", self.ns,
                                                                  "volumesnapshots", snap.name)
        volumes.delete_csi_snapshot(self.kube, snap)

    def break_config(self) -> Callable[[], None]:
        core = client.CoreV1Api()
        good = core.read_namespaced_config_map(self.config_map, CEPH_NS).data
        core.patch_namespaced_config_map(self.config_map, CEPH_NS, {"data": {"config.json": json.dumps([])}})
        return lambda: core.patch_namespaced_config_map(self.config_map, CEPH_NS, {"data": good})

    def start_pod(self) -> None:
        name = f"user-{uuid.uuid4().hex[:5]}"
        self.harness.tenant.core.create_namespaced_pod(self.ns, {
            "metadata": {"name": name},
            "spec": {"schedulerName": "not-running", "restartPolicy": "Never",
                     "containers": [{"name": "app", "image": "x", "command": ["true"]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}})
        self.pods.append(name)

    def stop_pods(self) -> None:
        for pod in self.pods:
            client.CoreV1Api().delete_namespaced_pod(pod, self.ns, grace_period_seconds=0)
        self.pods.clear()

    def cleanup(self) -> None:
        self.stop_pods()
        for snap in self.snapshots:
            volumes.delete_csi_snapshot(self.kube, snap)
        volumes.delete_rbd_volume(self.kube, self.volume)

    # --- what must hold at the end ------------------------------------------------------

    def assert_clean(self, final: dict[str, Any] | None) -> None:
        core = client.CoreV1Api()
        annotations = core.read_namespaced_persistent_volume_claim("data", self.ns).metadata.annotations or {}
        assert locks.LOCK not in annotations and locks.LOCK_UID not in annotations, annotations
        for snap in self.snapshots:
            vs = client.CustomObjectsApi().get_namespaced_custom_object("snapshot.storage.k8s.io", "v1", self.ns,
                                                                        "volumesnapshots", snap.name)
            assert locks.LOCK not in (vs["metadata"].get("annotations") or {}), vs["metadata"]
        assert not live_mover_objects(self.ns)
        errored = annotations.get(locks.STATE) == revert.ERROR_STATE
        phase = final["status"]["phase"] if final is not None else None  # None: deleted, either end is right
        with volumes.cluster(self.kube) as c:
            leftovers = [s for s in volumes.snapshots(c, self.volume.ref) if s.startswith("savepoint-")]
            now = volumes.checksum(c, self.volume.ref)
            reverted = all(volumes.read(c, self.volume.ref, offset, len(data)) == data
                           for offset, data in SNAPSHOT_DATA.items()) \
                and volumes.read(c, self.volume.ref, 5 * MiB, 64) == bytes(64)
            if phase == "Succeeded" or (phase is None and reverted):
                assert reverted, "a Succeeded revert leaves the snapshot's data"
                assert not leftovers and not errored, (leftovers, annotations)
                return
            assert now == self.before, "a failed or deleted revert leaves the pre-revert data"
            if errored:  # data may have been touched: the safety snapshot is kept, named, and intact
                assert len(leftovers) == 1, leftovers
                assert volumes.checksum(c, self.volume.ref, snapshot=leftovers[0]) == self.before
                if final is not None:
                    assert leftovers[0] in final["status"]["message"], final["status"]["message"]
            else:
                assert not leftovers, leftovers


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("step", [s.name for s in revert.FLOW.steps])
def test_revert(kube: Any, crash_harness: Any, private_ceph_config: str, step: str, fault: str) -> None:
    world = RevertWorld(kube, crash_harness, private_ceph_config)
    settings = {"SAVEPOINT_CEPH_CONFIG_MAP": f"{CEPH_NS}/{private_ceph_config}"}
    try:
        crashing = crash_harness.start(crash_at=f"{revert.FLOW.name}:{step}:begin", **settings)
        name = world.create(**({"deadlineSeconds": DEADLINE_SECONDS} if fault == "deadline" else {}))
        crash_harness.wait_crashed(crashing)
        fix: Callable[[], None] | None = None
        if fault == "newer-snapshot":
            world.newer_snapshot()
        elif fault == "snapshot-deleted":
            world.delete_snapshot()
        elif fault == "ceph-config-broken":
            fix = world.break_config()
        elif fault == "pod-uses-volume":
            world.start_pod()
        elif fault == "deadline":
            created = crash_harness.api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", world.ns,
                                                                     "volumereverts", name)
            # The operator's clock starts with its first status write; killed before it, the clock starts anew
            # with the next operator, and the creation is the earliest it can be.
            started = (created.get("status") or {}).get("startTime") or created["metadata"]["creationTimestamp"]
            begun = time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            time.sleep(max(0.0, begun + DEADLINE_SECONDS + 1 - time.time()))  # the deadline is a time: wait for it
        elif fault == "deleted":
            crash_harness.api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", world.ns,
                                                              "volumereverts", name)
        crash_harness.start(**settings)
        timer = threading.Timer(CONFIG_BROKEN_SECONDS, fix) if fix else None
        if timer:
            timer.start()
        try:
            final = _wait_final_or_gone(world, name, gone=fault == "deleted")
        finally:
            if timer:
                timer.join()
        if fault == "killed" or (fault == "ceph-config-broken" and step != "Locked"):
            assert final is not None and final["status"]["phase"] == "Succeeded", final and final["status"]
        if fault == "newer-snapshot":  # before the lock the seed's rule refuses it; after, the lock holds
            want = "Failed" if step == "Locked" else "Succeeded"
            assert final is not None and final["status"]["phase"] == want, final and final["status"]
        world.assert_clean(final)
    finally:
        world.cleanup()


def _wait_final_or_gone(world: RevertWorld, name: str, *, gone: bool, timeout: float = 150) -> dict[str, Any] | None:
    api = client.CustomObjectsApi()
    if gone:
        wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", world.ns, "volumereverts",
                                                           name), timeout=timeout)
        return None
    settled = phase_in("Succeeded", "Failed")
    obj = wait_custom(api, world.ns, "volumereverts", name, lambda o: settled(o) or reason_is("VolumeInUse")(o),
                      timeout=timeout)
    if not settled(obj):  # the user's pod came before the lock: the revert waits for it, as the seed says
        assert world.pods, obj["status"]
        world.stop_pods()
        obj = wait_custom(api, world.ns, "volumereverts", name, settled, timeout=timeout)
    return obj


# --- ImageSnapshot: deleted at every step (killed at every step: tests/e2e/test_imagesnapshot.py) ---------

@pytest.mark.parametrize("step", [s.name for s in imagesnapshot.FLOW.steps])
def test_imagesnapshot_deleted(kube: Any, crash_harness: Any, make_volume: Any, step: str) -> None:
    """Deleted while the operator is down at the start of each step: the new operator undoes what was done (or
    finishes and applies the deletion policy, Delete): no image, snapshot, lock or mover is left."""
    import rbd as librbd

    ns, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(ns, name="disk", size=16 * MiB, data=SNAPSHOT_DATA)
    name = f"isnap-{uuid.uuid4().hex[:6]}"
    crashing = crash_harness.start(crash_at=f"{imagesnapshot.FLOW.name}:{step}:begin")
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "imagesnapshots", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "ImageSnapshot", "metadata": {"name": name},
        "spec": {"source": {"persistentVolumeClaim": {"name": "disk"}}}})
    crash_harness.wait_crashed(crashing)
    uid = api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "imagesnapshots", name)["metadata"]["uid"]
    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "imagesnapshots", name)
    crash_harness.start()
    wait_gone(lambda: api.get_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "imagesnapshots", name),
              timeout=150)
    annotations = client.CoreV1Api().read_namespaced_persistent_volume_claim("disk", ns).metadata.annotations or {}
    assert not {k for k in annotations if k.startswith("savepoint.dev/")}, annotations
    assert not live_mover_objects(ns)
    with volumes.cluster(kube) as c:
        assert volumes.snapshots(c, vol.ref) == [], "a snapshot was left on the source"
        with ceph.open_ioctx(c, "images") as ioctx:
            left = [n for n in librbd.RBD().list(ioctx)
                    if n.startswith(ns) or n.startswith(f"{imagesnapshot.STAGING_PREFIX}{uid[:13]}")]
    assert left == [], left
