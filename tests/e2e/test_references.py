"""Reference resolution against the sandbox's real API server (and, for pool ids, its real Ceph).

Static PV/PVC pairs are bound by the real kube-controller-manager (PVs are
created with claimRef pre-set so binding takes one sync); VolumeSnapshots and
their contents are created statically with the status a snapshot controller
would write, since no CSI driver runs here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.config import kube_config
from savepoint.kube import cephconfig, k8s
from savepoint.api import Reason, ShareSource, VolumeSource
from savepoint.kube.references import (
    CEPH_CLUSTER_UNKNOWN,
    CEPH_CREDENTIALS_MISSING,
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    CephFsTarget,
    CsiId,
    NfsTarget,
    RbdTarget,
    RefusedError,
    latest_ready,
    list_volume_snapshots_of,
    resolve_pvc,
    resolve_source,
    resolve_volume_snapshot,
    snapshot_image,
    volume_in_use,
)
from savepoint.settings import Settings
from savepoint.storage.ceph import connect

pytestmark = pytest.mark.e2e

BIND_TIMEOUT = 60
SNAP_UUID = "6e696bba-064f-11ec-a251-0242ac110002"


@pytest.fixture(scope="module")
def api(kube: Any) -> Any:
    """The sandbox, with savepoint.kube.k8s pointed at its kubeconfig.

    The kubernetes package reads KUBECONFIG when it is imported, before the
    ``kube`` fixture sets it; ``k8s.api_client()`` loads that default.
    """
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kube.kubeconfig)
    return kube


@pytest.fixture(scope="module")
def settings(api: Any) -> Settings:
    return Settings()  # the sandbox publishes ceph-csi's objects where the defaults point


@pytest.fixture(scope="module")
def fsid(settings: Settings) -> str:
    clusters = cephconfig.csi_clusters(settings)
    assert len(clusters) == 1
    return next(iter(clusters))


_PVS: dict[str, list[str]] = {}  # namespace -> PVs its test made (cluster-scoped: deleted by hand)


@pytest.fixture
def ns(api: Any) -> Iterator[str]:
    yield from _namespace("refs")


def _namespace(prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    k8s.core().create_namespace({"metadata": {"name": name}})
    pvs: list[str] = []
    _PVS[name] = pvs
    try:
        yield name
    finally:
        k8s.core().delete_namespace(name)
        for pv in pvs:
            try:
                k8s.core().delete_persistent_volume(pv)
            except Exception as exc:
                if not k8s.is_not_found(exc):
                    raise


@pytest.fixture
def other_ns(api: Any) -> Iterator[str]:
    yield from _namespace("refs-other")


def make_claim(namespace: str, name: str, volume_spec: dict[str, Any], *, size: str = "1Gi",
               access: str = "ReadWriteOnce", mode: str = "Filesystem") -> str:
    """A PV (claimRef pre-set) and its PVC; returns the PV's name."""
    pv_name = f"{namespace}-{name}"
    k8s.core().create_persistent_volume({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": size}, "accessModes": [access], "volumeMode": mode,
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "claimRef": {"namespace": namespace, "name": name}, **volume_spec},
    })
    _PVS[namespace].append(pv_name)
    k8s.core().create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": [access], "volumeMode": mode, "storageClassName": "", "volumeName": pv_name,
                 "resources": {"requests": {"storage": size}}},
    })
    return pv_name


def wait_bound(namespace: str, name: str) -> None:
    """Watch the PVC until the controller manager has bound it."""
    stream = watch.Watch()
    for event in stream.stream(k8s.core().list_namespaced_persistent_volume_claim, namespace,
                               field_selector=f"metadata.name={name}", timeout_seconds=BIND_TIMEOUT):
        pvc = event["object"]
        if pvc.status and pvc.status.phase == "Bound":
            stream.stop()
            return
    raise AssertionError(f"PVC {namespace}/{name} not Bound within {BIND_TIMEOUT}s")


def refused(fn: Any, *args: Any) -> RefusedError:
    with pytest.raises(RefusedError) as err:
        fn(*args)
    return err.value


# ---- PVC → PV → target -----------------------------------------------------------------------


def _volume_types(fsid: str, v1_monitor: str) -> list[tuple[str, dict[str, Any], Any]]:
    return [
        ("ceph-csi-rbd", {"csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": f"0001-0024-{fsid}-0000000000000001-{SNAP_UUID}",
                                  "volumeAttributes": {"clusterID": fsid, "pool": "rbd", "imageName": "csi-vol-abc",
                                                       "radosNamespace": "tenant"}}},
         RbdTarget(fsid, "rbd", "csi-vol-abc", "tenant")),
        ("rook-rbd-static", {"csi": {"driver": "rook-ceph.rbd.csi.ceph.com", "volumeHandle": "static-image",
                                     "volumeAttributes": {"clusterID": fsid, "pool": "rbd", "staticVolume": "true"}}},
         RbdTarget(fsid, "rbd", "static-image")),
        ("in-tree-rbd", {"rbd": {"monitors": [v1_monitor], "image": "legacy", "pool": "kube"}},
         RbdTarget(fsid, "kube", "legacy")),
        ("in-tree-nfs", {"nfs": {"server": "127.0.0.1", "path": "/exports/team"}}, NfsTarget("127.0.0.1", "/exports/team")),
        ("nfs-csi", {"csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "127.0.0.1#/exports#pvc-1##",
                             "volumeAttributes": {"server": "127.0.0.1", "share": "/exports", "subdir": "pvc-1"}}},
         NfsTarget("127.0.0.1", "/exports/pvc-1")),
        ("ceph-csi-cephfs", {"csi": {"driver": "cephfs.csi.ceph.com", "volumeHandle": "0001-cephfs",
                                     "volumeAttributes": {"clusterID": fsid, "fsName": "myfs", "subvolumeName": "csi-vol-1",
                                                          "subvolumePath": "/volumes/csi/csi-vol-1/xyz"}}},
         CephFsTarget(fsid, "myfs", "/volumes/csi/csi-vol-1/xyz", subvolume_name="csi-vol-1")),
    ]


def test_each_pv_type_resolves(kube: Any, ns: str, fsid: str, settings: Settings) -> None:
    # In-tree rbd PVs name the monitors (msgr1 address), not a clusterID.
    cases = _volume_types(fsid, f"{kube.host}:{kube.ceph_mon_port + 1}")
    pv_names = {claim: make_claim(ns, claim, spec, size="2Gi", access="ReadWriteMany" if "fs" in claim else "ReadWriteOnce")
                for claim, spec, _ in cases}
    for claim, _, expected in cases:
        wait_bound(ns, claim)
        resolved = resolve_pvc(ns, claim, settings)
        assert resolved.target == expected, claim
        assert (resolved.pvc_name, resolved.pv_name, resolved.namespace) == (claim, pv_names[claim], ns)
        assert resolved.size_bytes == 2 * 2**30 and resolved.pvc_uid and not resolved.is_raw


def test_block_mode_and_size(ns: str, fsid: str, settings: Settings) -> None:
    spec = {"csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "h",
                    "volumeAttributes": {"clusterID": fsid, "pool": "rbd", "imageName": "blk"}}}
    make_claim(ns, "raw-block", spec, size="1536Mi", mode="Block")
    wait_bound(ns, "raw-block")
    resolved = resolve_pvc(ns, "raw-block", settings)
    assert resolved.is_block and resolved.size_bytes == 1536 * 2**20 and resolved.volume_handle == "h"


def test_unsupported_pv_is_refused_finally(ns: str, settings: Settings) -> None:
    make_claim(ns, "host", {"hostPath": {"path": "/tmp/host-data"}})
    wait_bound(ns, "host")
    err = refused(resolve_pvc, ns, "host", settings)
    assert err.reason == Reason.UNSUPPORTED_VOLUME and err.final and "hostPath" in err.message


def test_in_tree_rbd_of_an_unknown_cluster_is_refused(ns: str, settings: Settings) -> None:
    make_claim(ns, "old", {"rbd": {"monitors": ["192.0.2.10:6789"], "image": "legacy"}})
    wait_bound(ns, "old")
    err = refused(resolve_pvc, ns, "old", settings)
    assert err.reason == CEPH_CLUSTER_UNKNOWN and err.final


def test_missing_pvc_is_final_and_unbound_pvc_waits(ns: str, settings: Settings) -> None:
    err = refused(resolve_pvc, ns, "nothing-here", settings)
    assert err.reason == Reason.PVC_NOT_FOUND and err.final and ns in err.message
    k8s.core().create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": "pending"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}},
    })
    err = refused(resolve_pvc, ns, "pending", settings)
    assert err.reason == Reason.PVC_NOT_BOUND and err.waiting


def test_another_namespace_is_never_followed(ns: str, other_ns: str, fsid: str, settings: Settings) -> None:
    spec = {"csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "h",
                    "volumeAttributes": {"clusterID": fsid, "pool": "rbd", "imageName": "secret-data"}}}
    theirs = make_claim(other_ns, "data", spec)
    wait_bound(other_ns, "data")
    # The same claim name here is a different (missing) claim, not theirs.
    assert refused(resolve_pvc, ns, "data", settings).reason == Reason.PVC_NOT_FOUND
    # A claim here naming their PV never binds to it, and is never resolved through it.
    k8s.core().create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": "grab"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": theirs,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    err = refused(resolve_pvc, ns, "grab", settings)
    assert err.reason == Reason.PVC_NOT_BOUND and err.waiting
    assert resolve_pvc(other_ns, "data", settings).target.image == "secret-data"  # type: ignore[union-attr]


def test_raw_references_only_in_allowed_namespaces(ns: str, fsid: str) -> None:
    source = VolumeSource.model_validate({"rbd": {"clusterID": fsid, "pool": "rbd", "image": "img"}})
    share = ShareSource.model_validate({"nfs": {"server": "127.0.0.1", "path": "/exports/x"}})
    closed = Settings(raw_reference_namespaces=["kube-system"])
    for ref in (source, share):
        err = refused(resolve_source, ns, ref, closed)
        assert err.reason == Reason.REFERENCE_NOT_ALLOWED and err.final and ns in err.message
    opened = Settings(raw_reference_namespaces=["kube-system", ns])
    resolved = resolve_source(ns, source, opened)
    assert resolved.is_raw and resolved.target == RbdTarget(fsid, "rbd", "img")
    assert resolve_source(ns, share, opened).target == NfsTarget("127.0.0.1", "/exports/x")


def test_volume_in_use_lists_pods_and_attachments(ns: str, fsid: str, settings: Settings) -> None:
    spec = {"csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "h",
                    "volumeAttributes": {"clusterID": fsid, "pool": "rbd", "imageName": "busy"}}}
    pv_name = make_claim(ns, "busy", spec)
    wait_bound(ns, "busy")
    resolved = resolve_pvc(ns, "busy", settings)
    assert volume_in_use(ns, resolved) == []
    wait_default_service_account(ns)
    # nodeName of a node that does not exist: the sandbox's pod runner leaves the pod Pending, still a user.
    k8s.core().create_namespaced_pod(ns, {
        "metadata": {"name": "app"},
        "spec": {"nodeName": "nowhere", "automountServiceAccountToken": False,
                 "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1d"],
                                 "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "busy"}}]},
    })
    attachment = f"csi-{uuid.uuid4().hex}"
    k8s.storage().create_volume_attachment({
        "metadata": {"name": attachment},
        "spec": {"attacher": "rbd.csi.ceph.com", "nodeName": "nowhere", "source": {"persistentVolumeName": pv_name}},
    })
    try:
        assert volume_in_use(ns, resolved) == ["Pod/app", f"VolumeAttachment/{attachment}"]
    finally:
        k8s.storage().delete_volume_attachment(attachment)
        # No kubelet confirms the deletion of a pod bound to "nowhere": delete it at once.
        k8s.core().delete_namespaced_pod("app", ns, grace_period_seconds=0)


def wait_default_service_account(namespace: str) -> None:
    stream = watch.Watch()
    for event in stream.stream(k8s.core().list_namespaced_service_account, namespace,
                               field_selector="metadata.name=default", timeout_seconds=30):
        if event["type"] in ("ADDED", "MODIFIED"):
            stream.stop()
            return
    raise AssertionError(f"no default ServiceAccount in {namespace}")


# ---- Ceph configuration -------------------------------------------------------------------------


def test_credentials_from_ceph_csi_objects_connect(fsid: str, settings: Settings) -> None:
    creds = cephconfig.credentials(fsid, settings)
    with connect(creds) as cluster:
        assert cluster.get_fsid() == fsid
    err = refused(cephconfig.credentials, "no-such-cluster", settings)
    assert err.reason == CEPH_CLUSTER_UNKNOWN and fsid in err.message


def test_missing_ceph_objects_are_named(ns: str, fsid: str) -> None:
    k8s.core().create_namespaced_secret(ns, {"metadata": {"name": "half"}, "stringData": {"userID": "x"}})
    err = refused(cephconfig.credentials, fsid, Settings(ceph_secret=f"{ns}/half"))
    assert err.reason == CEPH_CREDENTIALS_MISSING and "userKey" in err.message
    err = refused(cephconfig.credentials, fsid, Settings(ceph_secret=f"{ns}/gone"))
    assert err.reason == CEPH_CREDENTIALS_MISSING and f"{ns}/gone" in err.message
    err = refused(cephconfig.csi_clusters, Settings(ceph_config_map=f"{ns}/gone"))
    assert err.reason == CEPH_CLUSTER_UNKNOWN and f"{ns}/gone" in err.message


# ---- VolumeSnapshot → content → handle ----------------------------------------------------------


def create_snapshot(namespace: str, name: str, handle: str, *, pvc: str = "data", ready: bool = True,
                    created: str = "2026-01-01T10:00:00Z", snapshot_class: str = "csi-rbdplugin-snapclass",
                    bound_to: tuple[str, str] | None = None) -> str:
    """A VolumeSnapshot and its VolumeSnapshotContent as ceph-csi + the snapshot controller leave them."""
    api = k8s.custom()
    content = f"snapcontent-{uuid.uuid4().hex}"
    ref_ns, ref_name = bound_to or (namespace, name)
    api.create_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content},
        "spec": {"driver": "rbd.csi.ceph.com", "deletionPolicy": "Retain", "volumeSnapshotClassName": snapshot_class,
                 "source": {"volumeHandle": "0001-source-volume"},
                 "volumeSnapshotRef": {"namespace": ref_ns, "name": ref_name}},
    })
    api.patch_cluster_custom_object_status(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", content, {
        "status": {"snapshotHandle": handle, "readyToUse": ready, "restoreSize": 2**30}})
    api.create_namespaced_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots", {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}", "kind": "VolumeSnapshot",
        "metadata": {"name": name},
        "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": pvc}},
    })
    api.patch_namespaced_custom_object_status(SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots", name, {
        "status": {"boundVolumeSnapshotContentName": content, "readyToUse": ready, "creationTime": created,
                   "restoreSize": "1Gi"}})
    _CONTENTS.append(content)
    return content


_CONTENTS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _delete_contents(api: Any) -> Iterator[None]:
    yield
    for content in _CONTENTS:
        try:
            k8s.custom().delete_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", content)
        except Exception as exc:
            if not k8s.is_not_found(exc):
                raise


def test_volume_snapshot_resolves_to_the_ceph_csi_image(ns: str, fsid: str, settings: Settings) -> None:
    with connect(cephconfig.credentials(fsid, settings)) as cluster:
        pool_id = cluster.pool_lookup("rbd")
        handle = CsiId(1, fsid, pool_id, SNAP_UUID).compose()
        content = create_snapshot(ns, "before-upgrade", handle)
        snap = resolve_volume_snapshot(ns, "before-upgrade")
        assert (snap.name, snap.source_pvc, snap.ready, snap.content_name) == ("before-upgrade", "data", True, content)
        assert snap.handle == CsiId(1, fsid, pool_id, SNAP_UUID) and snap.restore_size == 2**30
        assert snap.source_volume_handle == "0001-source-volume"
        # The pool id → name step is a rados call, done here the way storage code will do it.
        image = snapshot_image(snap, cluster.pool_reverse_lookup, cephconfig.rados_namespace(fsid, settings))
    assert image.target == RbdTarget(fsid, "rbd", f"csi-snap-{SNAP_UUID}") and image.snapshot == f"csi-snap-{SNAP_UUID}"


def test_snapshot_name_prefix_comes_from_the_class(ns: str, fsid: str) -> None:
    klass = f"prefixed-{uuid.uuid4().hex[:8]}"
    k8s.custom().create_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotclasses", {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}", "kind": "VolumeSnapshotClass",
        "metadata": {"name": klass}, "driver": "rbd.csi.ceph.com", "deletionPolicy": "Delete",
        "parameters": {"clusterID": fsid, "snapshotNamePrefix": "team-snap-"}})
    try:
        create_snapshot(ns, "s", CsiId(1, fsid, 1, SNAP_UUID).compose(), snapshot_class=klass)
        assert resolve_volume_snapshot(ns, "s").image == f"team-snap-{SNAP_UUID}"
    finally:
        k8s.custom().delete_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotclasses", klass)


def test_volume_snapshot_refusals(ns: str, other_ns: str, fsid: str) -> None:
    handle = CsiId(1, fsid, 1, SNAP_UUID).compose()
    err = refused(resolve_volume_snapshot, ns, "missing")
    assert err.reason == Reason.SNAPSHOT_NOT_FOUND and err.final
    create_snapshot(ns, "cutting", handle, ready=False)
    err = refused(resolve_volume_snapshot, ns, "cutting")
    assert err.reason == Reason.SNAPSHOT_NOT_READY and err.waiting
    # A snapshot here bound to a content that belongs to a snapshot in another namespace is not followed.
    create_snapshot(ns, "borrowed", handle, bound_to=(other_ns, "theirs"))
    err = refused(resolve_volume_snapshot, ns, "borrowed")
    assert err.reason == Reason.REFERENCE_NOT_ALLOWED and err.final
    # Their snapshot of the same name is not ours.
    create_snapshot(other_ns, "theirs", handle)
    assert refused(resolve_volume_snapshot, ns, "theirs").reason == Reason.SNAPSHOT_NOT_FOUND


def test_snapshots_of_a_claim_newest_first(ns: str, fsid: str) -> None:
    handle = CsiId(1, fsid, 1, SNAP_UUID).compose()
    create_snapshot(ns, "monday", handle, created="2026-01-05T10:00:00Z")
    create_snapshot(ns, "wednesday", handle, created="2026-01-07T10:00:00Z")
    create_snapshot(ns, "tuesday", handle, created="2026-01-06T10:00:00Z")
    create_snapshot(ns, "thursday-cutting", handle, created="2026-01-08T10:00:00Z", ready=False)
    create_snapshot(ns, "of-another-claim", handle, pvc="logs", created="2026-01-09T10:00:00Z")
    snaps = list_volume_snapshots_of(ns, "data")
    assert [s.name for s in snaps] == ["thursday-cutting", "wednesday", "tuesday", "monday"]
    assert latest_ready(snaps).name == "wednesday"  # type: ignore[union-attr]
    assert list_volume_snapshots_of(ns, "nothing") == []
