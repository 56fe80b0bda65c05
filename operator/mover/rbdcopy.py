"""``rbd-copy``: sparse, verified copy of an RBD image (at a snapshot) onto another.

When the source and the destination share a snapshot of the destination (a
ceph-csi VolumeSnapshot image is a clone of one), only what differs is copied
(``sparse.copy_changes``); otherwise everything the source holds.

VolumeRevert's generic path (a ceph-csi VolumeSnapshot image onto the volume)
and ImageSnapshot's fallback (a source snapshot into a new image in the image
pool) both run this.  The destination is held under librbd's exclusive lock for
the whole copy, and checked for watchers while holding it: a volume that is in
use is never written.
"""

from __future__ import annotations

from typing import Any

from savepoint.mover.registry import ActionContext, ActionFailed, action
from savepoint.storage import ceph, rbd, sparse
from savepoint.storage.errors import StorageError


def credentials(ctx: ActionContext) -> ceph.CephCredentials:
    if not ctx.ceph:
        raise ActionFailed("CephCredentialsMissing", "the mover was started without Ceph credentials")
    return ceph.CephCredentials(monitors=[m for m in ctx.ceph["monitors"].split(",") if m],
                                user_id=ctx.ceph["user_id"], key=ctx.ceph["key"])


def _ref(params: dict[str, Any]) -> rbd.ImageRef:
    return rbd.ImageRef(pool=params["pool"], image=params["image"], namespace=params.get("namespace") or None)


@action("rbd-copy")
def rbd_copy(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    src = _ref(params["source"])
    snap = params["source"].get("snapshot")
    dst = _ref(params["destination"])
    try:
        with ceph.connect(credentials(ctx)) as cluster:
            me = ceph.client_id(cluster)
            with ceph.open_ioctx(cluster, src.pool, src.namespace) as src_io, \
                    ceph.open_ioctx(cluster, dst.pool, dst.namespace) as dst_io:
                if params.get("create_destination") and not rbd.image_exists(cluster, dst):
                    with rbd.open_image(src_io, src.image, snapshot=snap, read_only=True) as source:
                        info = rbd.image_info(source)
                    rbd.create_image(cluster, dst, info.size, features=params.get("features") or None)
                with rbd.open_image(src_io, src.image, snapshot=snap, read_only=True) as source, \
                        rbd.exclusive_lock(dst_io, dst.image) as target:
                    users = rbd.watchers(target, exclude_client=me)
                    if users:
                        raise ActionFailed("VolumeInUse", f"{dst} has watchers: "
                                           + ", ".join(w.address for w in users))
                    result = sparse.copy_changes(source, src, snap, target, cluster, dst, on_progress=ctx.progress,
                                                 verify=bool(params.get("verify", True)))
    except StorageError as exc:
        raise ActionFailed(exc.reason, str(exc)) from exc
    out: dict[str, Any] = {
        "bytes": result.bytes_copied, "bytesDiscarded": result.bytes_discarded,
        "bytesSkipped": result.bytes_skipped, "extents": result.extents, "checksum": result.checksum,
        "verified": result.verified, "bytesRead": result.bytes_read, "bytesWritten": result.bytes_copied,
        "method": result.method}
    if result.base:
        out["base"] = result.base[:300]
    if result.full_copy_reason:
        out["fullCopyReason"] = result.full_copy_reason[:300]
    return out
