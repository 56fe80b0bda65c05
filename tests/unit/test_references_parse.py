"""Reference resolution, the pure part: PV dicts → targets, quantities, ceph-csi ids, snapshots, users."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from savepoint.api import NfsRef, RbdRef, Reason
from savepoint.kube.references import (
    CEPH_CLUSTER_UNKNOWN,
    CephFsTarget,
    CsiId,
    NfsTarget,
    RbdTarget,
    RefusedError,
    SnapshotImage,
    claim_bound_to,
    cluster_for_monitors,
    join_path,
    latest_ready,
    newest_first,
    parse_csi_id,
    quantity_bytes,
    resolve_raw,
    resolved_from,
    snapshot_from,
    snapshot_image,
    snapshot_info,
    target_from_pv,
    users_of,
)
from savepoint.settings import Settings
from savepoint.storage.ceph import CsiCluster

pytestmark = pytest.mark.unit

FSID = "91e6a353-736f-4b17-bff3-d9b15007227c"
CLUSTERS = {
    FSID: CsiCluster(FSID, ["127.0.0.1:13301"]),
    "other": CsiCluster("other", ["[v2:10.0.0.5:3300,v1:10.0.0.5:6789]"], rbd_namespace="tenant-a"),
}


def pv(name: str = "pv-1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], **spec}}


def csi(driver: str, handle: str = "h", **attrs: str) -> dict[str, Any]:
    return {"csi": {"driver": driver, "volumeHandle": handle, "volumeAttributes": attrs}}


def no_clusters() -> dict[str, CsiCluster]:
    raise AssertionError("config.json must not be read for this volume type")


# ---- PV → target --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (csi("rbd.csi.ceph.com", clusterID=FSID, pool="rbd", imageName="csi-vol-1"),
         RbdTarget(FSID, "rbd", "csi-vol-1")),
        (csi("rbd.csi.ceph.com", clusterID=FSID, pool="rbd", imageName="csi-vol-1", radosNamespace="ns1"),
         RbdTarget(FSID, "rbd", "csi-vol-1", "ns1")),
        (csi("rook-ceph.rbd.csi.ceph.com", clusterID="rook-ceph", pool="replicapool", imageName="csi-vol-2"),
         RbdTarget("rook-ceph", "replicapool", "csi-vol-2")),
        (csi("cephfs.csi.ceph.com", clusterID=FSID, fsName="myfs", subvolumeName="csi-vol-3",
             subvolumePath="/volumes/csi/csi-vol-3/abc"),
         CephFsTarget(FSID, "myfs", "/volumes/csi/csi-vol-3/abc", subvolume_name="csi-vol-3")),
        (csi("rook-ceph.cephfs.csi.ceph.com", clusterID="c", fsName="fs", staticVolume="true",
             rootPath="/volumes/g/sv", subvolumeGroup="g"),
         CephFsTarget("c", "fs", "/volumes/g/sv", subvolume_group="g")),
        (csi("nfs.csi.k8s.io", server="nfs.example", share="/exports", subdir="pvc-123"),
         NfsTarget("nfs.example", "/exports/pvc-123")),
        (csi("nfs.csi.k8s.io", server="nfs.example", share="/exports/", subDir="/a/b/"),
         NfsTarget("nfs.example", "/exports/a/b")),
        (csi("nfs.csi.k8s.io", server="10.1.1.1", share="/"), NfsTarget("10.1.1.1", "/")),
        ({"nfs": {"server": "filer", "path": "/vol/share/"}}, NfsTarget("filer", "/vol/share")),
    ],
    ids=["rbd", "rbd-radosns", "rbd-rook", "cephfs", "cephfs-static", "nfs-csi", "nfs-csi-subDir", "nfs-csi-root",
         "nfs-in-tree"],
)
def test_pv_targets(spec: dict[str, Any], expected: Any) -> None:
    assert target_from_pv(pv(**spec), no_clusters) == expected


def test_static_ceph_csi_rbd_pv_uses_volume_handle_and_config_namespace() -> None:
    spec = csi("rbd.csi.ceph.com", handle="static-image", clusterID="other", pool="rbd", staticVolume="true")
    assert target_from_pv(pv(**spec), lambda: CLUSTERS) == RbdTarget("other", "rbd", "static-image", "tenant-a")


@pytest.mark.parametrize(
    ("monitors", "cluster"),
    [
        (["127.0.0.1:13301"], FSID),
        (["10.0.0.5:6789", "10.0.0.6:6789"], "other"),
        (["10.0.0.5"], "other"),  # no port: both default ports are tried
        (["v2:10.0.0.5:3300"], "other"),
        (["10.9.9.9:6789"], None),
    ],
)
def test_cluster_for_monitors(monitors: list[str], cluster: str | None) -> None:
    assert cluster_for_monitors(monitors, CLUSTERS) == cluster


def test_in_tree_rbd_pv_finds_cluster_by_monitors() -> None:
    spec = {"rbd": {"monitors": ["10.0.0.5:6789"], "image": "kube-img", "user": "admin"}}
    assert target_from_pv(pv(**spec), lambda: CLUSTERS) == RbdTarget("other", "rbd", "kube-img")
    spec["rbd"]["pool"] = "kube"
    assert target_from_pv(pv(**spec), lambda: CLUSTERS).pool == "kube"


def test_in_tree_rbd_pv_with_unknown_monitors_is_refused_finally() -> None:
    spec = {"rbd": {"monitors": ["192.0.2.1:6789"], "image": "x"}}
    with pytest.raises(RefusedError) as err:
        target_from_pv(pv("old-pv", **spec), lambda: CLUSTERS, "ceph-csi/ceph-csi-config")
    assert err.value.reason == CEPH_CLUSTER_UNKNOWN and err.value.final
    assert "old-pv" in err.value.message and "ceph-csi/ceph-csi-config" in err.value.message


@pytest.mark.parametrize(
    "spec",
    [
        {"hostPath": {"path": "/data"}},
        {"local": {"path": "/mnt/disk"}},
        csi("ebs.csi.aws.com", handle="vol-1"),
        csi("rbd.csi.ceph.com", clusterID=FSID, pool="rbd"),  # no imageName, not static
        csi("cephfs.csi.ceph.com", clusterID=FSID),
        csi("nfs.csi.k8s.io", share="/x"),
        {"rbd": {"monitors": [], "image": "x"}},
        {},
    ],
    ids=["hostPath", "local", "other-csi", "rbd-no-image", "cephfs-no-fs", "nfs-csi-no-server", "in-tree-no-mons",
         "empty"],
)
def test_unsupported_pvs_are_refused_finally(spec: dict[str, Any]) -> None:
    with pytest.raises(RefusedError) as err:
        target_from_pv(pv("weird", **spec), dict)
    assert err.value.reason == Reason.UNSUPPORTED_VOLUME
    assert err.value.final and "weird" in err.value.message


def test_join_path() -> None:
    assert join_path("/a/", "b/c/") == "/a/b/c"
    assert join_path("a", None) == "/a"
    assert join_path("/", "") == "/"


# ---- PVC + PV ----------------------------------------------------------------------------------


def pvc(name: str = "data", namespace: str = "app", uid: str = "u1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1", "storageClassName": "csi-rbd-sc"},
            "status": {"phase": "Bound", **status}}


def test_claim_binding_must_be_mutual() -> None:
    bound = pv(claimRef={"namespace": "app", "name": "data", "uid": "u1"})
    assert claim_bound_to(pvc(), bound)
    assert claim_bound_to(pvc(), pv(claimRef={"namespace": "app", "name": "data"}))  # pre-bound, no uid yet
    assert not claim_bound_to(pvc(uid="u2"), bound)  # a recreated claim of the same name
    assert not claim_bound_to(pvc(namespace="other"), bound)
    assert not claim_bound_to(pvc(), pv())


def test_resolved_volume_sizes_and_modes() -> None:
    volume = pv(volumeMode="Block", storageClassName="csi-rbd-sc",
                **csi("rbd.csi.ceph.com", handle="0001-abc", clusterID=FSID, pool="rbd", imageName="img"))
    volume["spec"]["capacity"]["storage"] = "10Gi"
    target = target_from_pv(volume, no_clusters)
    resolved = resolved_from(pvc(capacity={"storage": "8Gi"}), volume, target)
    assert resolved.size_bytes == 10 * 2**30  # the PV's size wins over a lagging PVC status
    assert resolved.is_block and not resolved.is_raw
    assert resolved.access_modes == ("ReadWriteOnce",)
    assert (resolved.driver, resolved.volume_handle, resolved.storage_class) == ("rbd.csi.ceph.com", "0001-abc", "csi-rbd-sc")
    assert resolved.describe() == "pvc/data"
    del volume["spec"]["capacity"]
    assert resolved_from(pvc(capacity={"storage": "8Gi"}), volume, target).size_bytes == 8 * 2**30


@pytest.mark.parametrize(
    ("quantity", "size"),
    [("1Ki", 1024), ("5Mi", 5 * 2**20), ("10Gi", 10 * 2**30), ("2Ti", 2 * 2**40), ("1k", 1000), ("3M", 3_000_000),
     ("1G", 10**9), ("1073741824", 2**30), (4096, 4096), ("1.5Gi", 3 * 2**29), ("1e3", 1000), ("0.5", 1), (None, None)],
)
def test_quantities(quantity: Any, size: int | None) -> None:
    assert quantity_bytes(quantity) == size


# ---- raw references ------------------------------------------------------------------------------


def test_raw_references_only_where_allowed() -> None:
    settings = Settings(raw_reference_namespaces=["admin"])
    rbd = RbdRef.model_validate({"clusterID": FSID, "pool": "rbd", "image": "img", "radosNamespace": "ns"})
    nfs = NfsRef(server="filer", path="/exports/x")
    assert resolve_raw("admin", rbd, settings) == RbdTarget(FSID, "rbd", "img", "ns")
    assert resolve_raw("admin", nfs, settings) == NfsTarget("filer", "/exports/x")
    with pytest.raises(RefusedError) as err:
        resolve_raw("team-a", nfs, settings)
    assert err.value.reason == Reason.REFERENCE_NOT_ALLOWED and err.value.final
    assert "team-a" in err.value.message and "rawReferenceNamespaces" in err.value.message
    assert resolve_raw("anything", rbd, Settings(raw_reference_namespaces=["*"])).image == "img"


def test_refused_error_finality_follows_the_reason() -> None:
    assert RefusedError(Reason.PVC_NOT_BOUND, "x").waiting
    assert RefusedError(Reason.PVC_NOT_FOUND, "x").final
    assert RefusedError(Reason.VOLUME_IN_ERROR_STATE, "x", final=False).waiting
    with pytest.raises(TypeError):
        RefusedError("SomethingNew", "x")


# ---- ceph-csi ids -------------------------------------------------------------------------------

UUID = "6e696bba-064f-11ec-a251-0242ac110002"


def test_parse_csi_id_of_a_real_handle() -> None:
    handle = f"0001-0024-7635de36-ab1f-4a70-98a2-a1bd80ba77c4-0000000000000006-{UUID}"
    assert parse_csi_id(handle) == CsiId(1, "7635de36-ab1f-4a70-98a2-a1bd80ba77c4", 6, UUID)


@pytest.mark.parametrize("cluster_id", ["rook-ceph", "a", FSID, "x" * 64, "dash-at-end-"])
def test_csi_id_round_trips(cluster_id: str) -> None:
    ident = CsiId(1, cluster_id, 0x1234, UUID)
    assert parse_csi_id(ident.compose()) == ident


@pytest.mark.parametrize(
    "handle",
    [
        "", "csi-snap-1234", f"0001-0024-short-0000000000000006-{UUID}",
        f"zzzz-0009-rook-ceph-0000000000000006-{UUID}",
        f"0001-0009-rook-ceph-00000000000000zz-{UUID}",
        f"0001-0009-rook-ceph-0000000000000006-{UUID}x",
        f"0001-0009-rook-ceph-ffffffffffffffff-{UUID}",  # ceph-csi's InvalidPoolID (-1)
        f"0001-0009-rook-ceph+0000000000000006-{UUID}",
    ],
)
def test_parse_csi_id_refuses_other_strings(handle: str) -> None:
    with pytest.raises(ValueError):
        parse_csi_id(handle)


# ---- VolumeSnapshots ----------------------------------------------------------------------------


def vs(name: str, *, pvc_name: str | None = "data", ready: bool = True, created: str | None = "2026-01-01T10:00:00Z",
       content: str | None = "snapcontent-1", **status: Any) -> dict[str, Any]:
    source = {"persistentVolumeClaimName": pvc_name} if pvc_name else {"volumeSnapshotContentName": content}
    st: dict[str, Any] = {"readyToUse": ready, "restoreSize": "1Gi", **status}
    if created:
        st["creationTime"] = created
    if content:
        st["boundVolumeSnapshotContentName"] = content
    return {"metadata": {"name": name, "namespace": "app", "creationTimestamp": "2026-01-01T09:59:59Z"},
            "spec": {"source": source, "volumeSnapshotClassName": "csi-rbdplugin-snapclass"}, "status": st}


def content(name: str = "snapcontent-1", *, handle: str | None = None, driver: str = "rbd.csi.ceph.com",
            ref: tuple[str, str] = ("app", "snap-1")) -> dict[str, Any]:
    handle = handle or CsiId(1, FSID, 2, UUID).compose()
    return {"metadata": {"name": name},
            "spec": {"driver": driver, "deletionPolicy": "Delete", "source": {"volumeHandle": "0001-vol"},
                     "volumeSnapshotRef": {"namespace": ref[0], "name": ref[1]},
                     "volumeSnapshotClassName": "csi-rbdplugin-snapclass"},
            "status": {"snapshotHandle": handle, "readyToUse": True, "restoreSize": 2**30,
                       "creationTime": 1767261600000000000}}


def test_snapshot_info() -> None:
    info = snapshot_info(vs("snap-1"))
    assert (info.name, info.namespace, info.source_pvc, info.ready, info.content_name) == ("snap-1", "app", "data", True, "snapcontent-1")
    assert info.creation_time == datetime.datetime(2026, 1, 1, 10, tzinfo=datetime.UTC)
    assert info.restore_size == 2**30
    broken = snapshot_info(vs("snap-2", ready=False, created=None, content=None, error={"message": "no space"}))
    assert not broken.ready and broken.content_name is None and broken.error == "no space"


def test_latest_ready_is_newest_by_creation_time() -> None:
    infos = [snapshot_info(vs("old", created="2026-01-01T10:00:00Z")),
             snapshot_info(vs("new", created="2026-01-03T10:00:00Z")),
             snapshot_info(vs("newest-not-ready", ready=False, created="2026-01-04T10:00:00Z")),
             snapshot_info(vs("uncut", ready=False, created=None))]
    assert latest_ready(infos).name == "new"  # type: ignore[union-attr]
    assert [s.name for s in newest_first(infos)] == ["uncut", "newest-not-ready", "new", "old"]
    assert latest_ready([]) is None


def test_snapshot_from_content_decodes_the_ceph_csi_image() -> None:
    snap = snapshot_from(snapshot_info(vs("snap-1")), content(), "csi-snap-")
    assert snap.handle == CsiId(1, FSID, 2, UUID) and snap.image == f"csi-snap-{UUID}"
    assert snap.content_name == "snapcontent-1" and snap.source_volume_handle == "0001-vol"
    image = snapshot_image(snap, {2: "rbd"}.__getitem__, rados_namespace="ns")
    assert image == SnapshotImage(FSID, "rbd", f"csi-snap-{UUID}", f"csi-snap-{UUID}", "ns")
    assert image.target == RbdTarget(FSID, "rbd", f"csi-snap-{UUID}", "ns")
    assert str(image) == f"rbd:rbd/ns/csi-snap-{UUID}@csi-snap-{UUID}"
    assert snapshot_from(snapshot_info(vs("snap-1")), content(), "team-").image == f"team-{UUID}"


def test_snapshot_from_content_bound_elsewhere_is_not_followed() -> None:
    with pytest.raises(RefusedError) as err:
        snapshot_from(snapshot_info(vs("snap-1")), content(ref=("other-ns", "snap-1")), "csi-snap-")
    assert err.value.reason == Reason.REFERENCE_NOT_ALLOWED and err.value.final


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"driver": "ebs.csi.aws.com"}, Reason.UNSUPPORTED_VOLUME),
    ({"handle": "snap-0123"}, Reason.UNSUPPORTED_VOLUME),
])
def test_snapshot_from_other_drivers_is_refused(kwargs: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RefusedError) as err:
        snapshot_from(snapshot_info(vs("snap-1")), content(**kwargs), "csi-snap-")
    assert err.value.reason == reason and err.value.final


def test_snapshot_without_handle_yet_waits() -> None:
    c = content()
    del c["status"]["snapshotHandle"]
    with pytest.raises(RefusedError) as err:
        snapshot_from(snapshot_info(vs("snap-1")), c, "csi-snap-")
    assert err.value.reason == Reason.SNAPSHOT_NOT_READY and err.value.waiting


# ---- users of a volume --------------------------------------------------------------------------


def pod(name: str, phase: str, *volumes: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"volumes": list(volumes)}, "status": {"phase": phase}}


def test_users_of_a_claim() -> None:
    claim = {"name": "v", "persistentVolumeClaim": {"claimName": "data"}}
    pods = [pod("web", "Running", claim), pod("init", "Pending", claim), pod("done", "Succeeded", claim),
            pod("crashed", "Failed", claim), pod("other", "Running", {"name": "v", "persistentVolumeClaim": {"claimName": "x"}}),
            pod("cfg", "Running", {"name": "c", "configMap": {"name": "data"}}),
            pod("eph", "Running", {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}})]
    attachments = [{"metadata": {"name": "csi-abc"}, "spec": {"source": {"persistentVolumeName": "pv-1"}}},
                   {"metadata": {"name": "csi-def"}, "spec": {"source": {"persistentVolumeName": "pv-2"}}},
                   {"metadata": {"name": "inline"}, "spec": {"source": {"inlineVolumeSpec": {}}}}]
    assert users_of("data", "pv-1", pods, attachments) == ["Pod/init", "Pod/web", "VolumeAttachment/csi-abc"]
    assert users_of("eph-scratch", None, pods, attachments) == ["Pod/eph"]
    assert users_of("unused", "pv-9", pods, attachments) == []


def test_the_operators_usage_index_agrees_with_listing() -> None:
    """handlers/usage.py keeps kopf indexes of pods and VolumeAttachments; looked up, they answer as a list would."""
    from savepoint.handlers import usage
    from savepoint.kube.references import Usage

    claim = {"name": "v", "persistentVolumeClaim": {"claimName": "data"}}
    pods = [pod("web", "Running", claim), pod("init", "Pending", claim), pod("done", "Succeeded", claim),
            pod("eph", "Running", {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}),
            pod("cfg", "Running", {"name": "c", "configMap": {"name": "data"}})]
    attachments = [{"metadata": {"name": "csi-abc"}, "spec": {"source": {"persistentVolumeName": "pv-1"}}},
                   {"metadata": {"name": "inline"}, "spec": {"source": {"inlineVolumeSpec": {}}}}]
    by_claim: dict[Any, list[str]] = {}
    for p in pods:  # what kopf does with each object's answer: one store of values per key
        for key, value in (usage.claim_users(name=p["metadata"]["name"], namespace="ns", body=p) or {}).items():
            by_claim.setdefault(key, []).append(value)
    by_pv: dict[Any, list[str]] = {}
    for a in attachments:
        for key, value in (usage.pv_attachments(name=a["metadata"]["name"], spec=a["spec"]) or {}).items():
            by_pv.setdefault(key, []).append(value)
    looked_up = Usage(pods=by_claim, attachments=by_pv)
    for claim_name, pv in [("data", "pv-1"), ("eph-scratch", None), ("unused", "pv-9")]:
        assert looked_up.users("ns", claim_name, pv) == users_of(claim_name, pv, pods, attachments)
    assert looked_up.users("other-namespace", "data", None) == []
