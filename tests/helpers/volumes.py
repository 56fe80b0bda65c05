"""Volumes and snapshots as a ceph-csi install would leave them, for e2e tests.

No CSI driver or snapshot controller can run here, so these helpers do their
part: create the RBD image and a static PV with ceph-csi's attributes bound to
a PVC (the real controller manager binds them), and for a CSI VolumeSnapshot
make ceph-csi's separate ``csi-snap-<uuid>`` image the way ceph-csi does (a v2
clone of a trashed snapshot of the volume, with an RBD snapshot of the same
name; ``csi_snapshot``) and the VolumeSnapshotContent/VolumeSnapshot pair with
the status external-snapshotter would write.  Everything reads back through the real API
server and the real Ceph.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import rbd as librbd
from kubernetes import client, watch

from sandboxlib import ceph as sandbox_ceph
from savepoint.storage import ceph, rbd, sparse

DRIVER = "rbd.csi.ceph.com"
SNAPSHOT_CLASS = "csi-rbdplugin-snapclass"
MiB = 1 << 20


def credentials(cfg: Any) -> ceph.CephCredentials:
    user_id, key = sandbox_ceph.csi_credentials(cfg)
    return ceph.CephCredentials(monitors=sandbox_ceph.monitors(cfg), user_id=user_id, key=key)


@contextmanager
def cluster(cfg: Any) -> Iterator[Any]:
    with ceph.connect(credentials(cfg)) as handle:
        yield handle


@dataclass
class RbdVolume:
    namespace: str
    pvc: str
    pv: str
    ref: rbd.ImageRef
    size: int


def _wait_bound(core: client.CoreV1Api, namespace: str, name: str, timeout: int = 60) -> None:
    pvc = core.read_namespaced_persistent_volume_claim(name, namespace)
    if pvc.status.phase == "Bound":
        return
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_persistent_volume_claim, namespace,
                          field_selector=f"metadata.name={name}", timeout_seconds=timeout):
        if event["object"].status.phase == "Bound":
            w.stop()
            return
    raise AssertionError(f"PVC {namespace}/{name} not Bound after {timeout}s")


def rbd_pvc(cfg: Any, namespace: str, name: str, size: int = 16 * MiB, pool: str = "rbd",
            data: dict[int, bytes] | None = None, claims: client.CoreV1Api | None = None) -> RbdVolume:
    """An RBD image plus a static ceph-csi PV and a PVC bound to it; ``data`` written at offsets.

    The image and the PV are the administrator's (what ceph-csi's provisioner would make); the claim is
    created with ``claims`` -- the namespace's tenant, as its user would -- or else as admin."""
    fsid = sandbox_ceph.fsid(cfg)
    ref = rbd.ImageRef(pool, f"csi-vol-{uuid.uuid4()}")
    with cluster(cfg) as c:
        rbd.create_image(c, ref, size)
        if data:
            write(c, ref, data)
    pv = f"pv-{namespace}-{name}"[:63]
    core = client.CoreV1Api()
    quantity = f"{size // MiB}Mi"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": quantity}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "csi-rbd-sc",
                 "claimRef": {"namespace": namespace, "name": name},
                 "csi": {"driver": DRIVER, "volumeHandle": f"0001-0024-{fsid}-0000000000000001-{ref.image[8:]}",
                         "fsType": "ext4",
                         "volumeAttributes": {"clusterID": fsid, "pool": pool, "imageName": ref.image}}}})
    (claims or core).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi-rbd-sc", "volumeName": pv,
                 "resources": {"requests": {"storage": quantity}}}})
    _wait_bound(core, namespace, name)
    return RbdVolume(namespace, name, pv, ref, size)


def write(c: Any, ref: rbd.ImageRef, data: dict[int, bytes]) -> None:
    with rbd.open_ref(c, ref) as image:
        for offset, chunk in data.items():
            image.write(chunk, offset)


def read(c: Any, ref: rbd.ImageRef, offset: int, length: int, snapshot: str | None = None) -> bytes:
    with rbd.open_ref(c, ref, snapshot=snapshot, read_only=True) as image:
        return image.read(offset, length)


def checksum(c: Any, ref: rbd.ImageRef, snapshot: str | None = None) -> str:
    with ceph.open_ioctx(c, ref.pool, ref.namespace) as ioctx:
        return sparse.image_checksum(ioctx, ref.image, snapshot)


def snapshots(c: Any, ref: rbd.ImageRef) -> list[str]:
    with rbd.open_ref(c, ref, read_only=True) as image:
        return [s.name for s in rbd.list_snapshots(image)]


def evict_stale_watchers(cfg: Any, ref: rbd.ImageRef) -> None:
    """A killed operator's image handle stays a watcher until the OSD times it out (30 s); evict it at once,
    as ceph-csi does with a dead node's client (``ceph osd blocklist``), so the volume can be removed."""
    with cluster(cfg) as c:
        if not rbd.image_exists(c, ref):
            return
        with rbd.open_ref(c, ref, read_only=True) as image:
            stale = [w.address for w in rbd.watchers(image)]
    env = {**os.environ, **sandbox_ceph.admin_env(cfg)}
    for address in stale:
        subprocess.run(["ceph", "osd", "blocklist", "add", address, "60"], env=env, check=True,
                       capture_output=True, timeout=60)


def delete_rbd_volume(cfg: Any, vol: RbdVolume) -> None:
    """Remove the PV and the image (with snapshots); the PVC goes with its namespace."""
    try:
        client.CoreV1Api().delete_persistent_volume(vol.pv)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    with cluster(cfg) as c:
        rbd.remove_image(c, vol.ref, purge_snapshots=True)


@dataclass
class CsiSnapshot:
    name: str
    content: str
    image: rbd.ImageRef


def csi_snapshot_image(c: Any, volume: rbd.ImageRef, snap_uuid: str | None = None, *,
                       flatten: bool = False) -> rbd.ImageRef:
    """ceph-csi's ``CreateSnapshot`` on Ceph (see ``csi_snapshot``): the image ``csi-snap-<uuid>`` holding
    ``volume``'s data at its snapshot of the same name; ``c`` is any connected cluster handle."""
    image = rbd.ImageRef(volume.pool, f"csi-snap-{snap_uuid or uuid.uuid4()}", volume.namespace)
    with ceph.open_ioctx(c, volume.pool, volume.namespace) as ioctx:
        with rbd.open_image(ioctx, volume.image) as source:
            source.create_snap(image.image)
        # ceph-csi passes --rbd-default-clone-format 2; python-rbd's clone() takes it from the client's
        # config, which is the caller's: set for this call only.
        before = c.conf_get("rbd_default_clone_format")
        c.conf_set("rbd_default_clone_format", "2")
        try:
            librbd.RBD().clone(ioctx, volume.image, image.image, ioctx, image.image,
                               features=librbd.RBD_FEATURE_LAYERING | librbd.RBD_FEATURE_DEEP_FLATTEN)
        finally:
            c.conf_set("rbd_default_clone_format", before)
        with rbd.open_image(ioctx, volume.image) as source:
            source.remove_snap(image.image)  # to the trash: the clone depends on it
        with rbd.open_image(ioctx, image.image) as clone:
            clone.create_snap(image.image)
            if flatten:
                clone.flatten()
    return image


def csi_snapshot(cfg: Any, vol: RbdVolume, name: str, *, exists: bool = False, flatten: bool = False) -> CsiSnapshot:
    """What ceph-csi + external-snapshotter make of a VolumeSnapshot of ``vol``, and a bound, ready
    VolumeSnapshot/VolumeSnapshotContent pair for it.

    The image is made by ceph-csi's procedure (design doc "Steps and RBD CLI commands for RBD snapshot and
    clone operations"; ``doSnapshotClone``/``createRBDClone`` in its internal/rbd): a snapshot
    ``csi-snap-<uuid>`` of the volume, cloned (clone format 2, features layering and deep-flatten) into the
    image ``csi-snap-<uuid>``; the volume's snapshot removed again -- with a v2 clone depending on it,
    librbd moves it to the volume's snapshot trash, where it stays until the clone is gone or flattened --
    and a snapshot ``csi-snap-<uuid>`` of the clone.  ``flatten`` flattens the clone afterwards, as
    ceph-csi does once a chain passes its depth limits: the image then shares nothing with the volume.
    ``exists``: the VolumeSnapshot was created already (e.g. by ``kubectl apply``); bind that one."""
    fsid = sandbox_ceph.fsid(cfg)
    snap_uuid = str(uuid.uuid4())
    with cluster(cfg) as c:
        image = csi_snapshot_image(c, vol.ref, snap_uuid, flatten=flatten)
        pool_id = c.pool_lookup(vol.ref.pool)
    handle = f"0001-{len(fsid):04x}-{fsid}-{pool_id:016x}-{snap_uuid}"
    content = f"snapcontent-{uuid.uuid4()}"
    api = client.CustomObjectsApi()
    group, version = "snapshot.storage.k8s.io", "v1"
    if exists:
        vs = api.get_namespaced_custom_object(group, version, vol.namespace, "volumesnapshots", name)
    else:
        vs = api.create_namespaced_custom_object(group, version, vol.namespace, "volumesnapshots", {
            "apiVersion": f"{group}/{version}", "kind": "VolumeSnapshot", "metadata": {"name": name},
            "spec": {"volumeSnapshotClassName": SNAPSHOT_CLASS, "source": {"persistentVolumeClaimName": vol.pvc}}})
    api.create_cluster_custom_object(group, version, "volumesnapshotcontents", {
        "apiVersion": f"{group}/{version}", "kind": "VolumeSnapshotContent", "metadata": {"name": content},
        "spec": {"driver": DRIVER, "deletionPolicy": "Retain", "volumeSnapshotClassName": SNAPSHOT_CLASS,
                 "source": {"volumeHandle": f"0001-0024-{fsid}-0000000000000001-{vol.ref.image[8:]}"},
                 "volumeSnapshotRef": {"apiVersion": f"{group}/{version}", "kind": "VolumeSnapshot",
                                       "name": name, "namespace": vol.namespace, "uid": vs["metadata"]["uid"]}}})
    now_ns = int(datetime.datetime.now(datetime.UTC).timestamp() * 1e9)
    api.patch_cluster_custom_object_status(group, version, "volumesnapshotcontents", content, {
        "status": {"snapshotHandle": handle, "readyToUse": True, "creationTime": now_ns, "restoreSize": vol.size}})
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.patch_namespaced_custom_object_status(group, version, vol.namespace, "volumesnapshots", name, {
        "status": {"boundVolumeSnapshotContentName": content, "readyToUse": True, "creationTime": created,
                   "restoreSize": str(vol.size)}})
    return CsiSnapshot(name, content, image)


def delete_csi_snapshot(cfg: Any, snap: CsiSnapshot) -> None:
    try:
        client.CustomObjectsApi().delete_cluster_custom_object("snapshot.storage.k8s.io", "v1",
                                                               "volumesnapshotcontents", snap.content)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    with cluster(cfg) as c:
        rbd.remove_image(c, snap.image, purge_snapshots=True)
