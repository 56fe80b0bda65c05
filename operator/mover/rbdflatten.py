"""``rbd-flatten``: flatten a clone so it no longer depends on its parent, reporting progress.

ImageSnapshot's direct path (seed 002): the clone of the source snapshot in
the image pool gets the parent's data copied into it by librbd (object by
object, only where the parent has data, so a thin source gives a thin image).
A single librbd call, but one that moves every allocated byte of the source:
it runs in a Job so the operator stays responsive and the progress shows in
``kubectl get isnap``.  Flattening is resumable: a Job that is restarted (or
a second Job for the same image) carries on with the objects still missing,
and an image without a parent is simply reported done.
"""

from __future__ import annotations

from typing import Any

from savepoint.mover.rbdcopy import credentials
from savepoint.mover.registry import ActionContext, ActionFailed, action
from savepoint.storage import ceph, rbd
from savepoint.storage.errors import StorageError


def _ref(params: dict[str, Any]) -> rbd.ImageRef:
    return rbd.ImageRef(pool=params["pool"], image=params["image"], namespace=params.get("namespace") or None)


def expected_parent_mismatch(actual: rbd.ParentInfo, expected: dict[str, Any] | None) -> str | None:
    """Why ``actual`` is not the parent the operator expects (None: it is, or nothing was expected)."""
    if not expected:
        return None
    want = (expected["pool"], expected.get("namespace") or None, expected["image"], expected.get("snapshot"))
    have = (actual.pool, actual.namespace, actual.image, actual.snapshot)
    if want[3] is None:
        have = (*have[:3], None)
    if want == have:
        return None
    return f"it is a clone of {actual.ref}@{actual.snapshot}, not of {_ref(expected)}@{expected.get('snapshot')}"


@action("rbd-flatten")
def rbd_flatten(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: ``image`` {pool, image, namespace}; optional ``parent`` {pool, image, namespace, snapshot}
    that the image must be a clone of (a safety net against flattening someone else's clone)."""
    ref = _ref(params["image"])
    try:
        with ceph.connect(credentials(ctx)) as cluster, ceph.open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, \
                rbd.open_image(ioctx, ref.image) as image:
            info = rbd.image_info(image)
            if info.parent is None:
                return {"bytes": 0, "size": info.size, "flattened": False}
            mismatch = expected_parent_mismatch(info.parent, params.get("parent"))
            if mismatch:
                raise ActionFailed("InvalidArgument", f"refusing to flatten {ref}: {mismatch}")
            objects = max(1, -(-info.size // info.object_size))
            own = rbd.allocated_bytes(image, whole_object=True, include_parent=False)
            # The first report sets up the API client (imports, token): done here, not inside librbd's
            # progress callback, which stalls the flatten while it runs. Later reports are throttled.
            ctx.progress(0, info.size)

            def progress(done: int, total: int) -> None:
                # librbd counts objects of the parent overlap; report bytes of the image
                total = total or objects
                ctx.progress(min(done * info.object_size, info.size), min(total * info.object_size, info.size))

            rbd.flatten(image, on_progress=progress)
            # librbd copies every parent object into the clone through this client ("copy-up"): read from
            # the parent, written to the clone -- what the clone then holds beyond what it held itself
            # (counted while the image is still open).
            copied = max(0, rbd.allocated_bytes(image, whole_object=True) - own)
            ctx.progress(info.size, info.size)  # the last report: never throttled
    except StorageError as exc:
        raise ActionFailed(exc.reason, str(exc)) from exc
    return {"bytes": info.size, "size": info.size, "flattened": True, "bytesRead": copied, "bytesWritten": copied,
            "parent": f"{info.parent.ref}@{info.parent.snapshot}"}
