"""Ceph RBD primitives: image facts, snapshots, locks, clones, allocation maps.

Thin, typed wrappers over python-rbd (Ceph 16.2 pacific) that
 - turn librbd's exceptions into ``StorageError`` subclasses naming the image,
 - make the operations a restartable flow repeats idempotent (removing what
   is gone, protecting what is protected, flattening what has no parent),
 - return small dataclasses instead of librbd's dicts and iterators.

Two kinds of functions:
 - on an open ``rbd.Image`` (``image_info``, snapshots, ``rollback``,
   ``watchers``, ``flatten``, extents ...): the caller decides which handle
   does the work.  That matters under ``exclusive_lock``: while one handle
   holds librbd's managed lock, writes and maintenance operations from any
   other handle (even in the same process) are refused, so the data step
   must run on the handle the lock context yields.
 - on a pool (``create_image``, ``remove_image``, ``clone``, ``image_exists``):
   they take the connected cluster and ``ImageRef``s.

Open handles with ``open_image``/``open_ref`` (plain) or ``exclusive_lock``.
"""

from __future__ import annotations

import datetime as dt
import errno
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import rados
import rbd as librbd
from savepoint.storage import extents as ext
from savepoint.storage.ceph import open_ioctx
from savepoint.storage.errors import (
    AlreadyExists,
    Busy,
    HasDependents,
    InvalidArgument,
    NotFound,
    Unsupported,
    ceph_errors,
    from_ceph,
)
from savepoint.storage.extents import Extent

SAVEPOINT_SNAPSHOT_PREFIX = "savepoint-"  # Savepoint's own temporary snapshots: never "the latest" for users

Progress = Callable[[int, int], None]  # (done, total)

FEATURE_NAMES: dict[int, str] = {
    librbd.RBD_FEATURE_LAYERING: "layering",
    librbd.RBD_FEATURE_STRIPINGV2: "striping",
    librbd.RBD_FEATURE_EXCLUSIVE_LOCK: "exclusive-lock",
    librbd.RBD_FEATURE_OBJECT_MAP: "object-map",
    librbd.RBD_FEATURE_FAST_DIFF: "fast-diff",
    librbd.RBD_FEATURE_DEEP_FLATTEN: "deep-flatten",
    librbd.RBD_FEATURE_JOURNALING: "journaling",
    librbd.RBD_FEATURE_DATA_POOL: "data-pool",
    librbd.RBD_FEATURE_OPERATIONS: "operations",
    librbd.RBD_FEATURE_MIGRATING: "migrating",
    librbd.RBD_FEATURE_NON_PRIMARY: "non-primary",
}
_FEATURE_BITS = {name: bit for bit, name in FEATURE_NAMES.items()}

Features = int | Iterable[str] | None  # bitmask, names as `rbd info` prints them, or None: cluster default


# ---- references and facts ------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image by location: pool, optional RADOS namespace, name."""

    pool: str
    image: str
    namespace: str | None = None

    @property
    def spec(self) -> str:
        """``pool/[namespace/]image``, the form the ``rbd`` CLI takes."""
        return "/".join(p for p in (self.pool, self.namespace, self.image) if p)

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class SnapshotInfo:
    """A user snapshot.  ``id`` grows with creation order; ``timestamp`` is UTC."""

    id: int
    name: str
    size: int
    timestamp: dt.datetime
    protected: bool


@dataclass(frozen=True)
class ParentInfo:
    """The snapshot a clone still depends on (until it is flattened)."""

    pool: str
    namespace: str | None
    image: str
    snapshot: str

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.pool, self.image, self.namespace)


@dataclass(frozen=True)
class ImageInfo:
    """What decisions about an image need: size, features, parent, snapshots (oldest first)."""

    name: str
    id: str
    size: int
    object_size: int
    features: tuple[str, ...]
    parent: ParentInfo | None
    snapshots: tuple[SnapshotInfo, ...]

    def snapshot(self, name: str) -> SnapshotInfo | None:
        return next((s for s in self.snapshots if s.name == name), None)

    def has_feature(self, name: str) -> bool:
        return name in self.features


@dataclass(frozen=True)
class Watcher:
    """A client watching the image header: it has the image open read-write.

    ``client_id`` is the RADOS global id; compare it with ``ceph.client_id``
    to skip our own handles.
    """

    address: str
    client_id: int
    cookie: int


def location_url(fsid: str, ref: ImageRef, snap: str) -> str:
    """Nova's direct_url for an image snapshot: ``rbd://<fsid>/<pool>/<image>/<snap>``.

    The four-part form has no place for a RADOS namespace, so such images
    have no location URL (``InvalidArgument``).
    """
    if ref.namespace:
        raise InvalidArgument(f"image {ref} is in RADOS namespace {ref.namespace}: no rbd:// location for it")
    return f"rbd://{fsid}/{ref.pool}/{ref.image}/{snap}"


def parse_location_url(url: str) -> tuple[str, ImageRef, str]:
    """``rbd://<fsid>/<pool>/<image>/<snap>`` -> (fsid, ref, snap)."""
    parts = url.removeprefix("rbd://").split("/") if url.startswith("rbd://") else []
    if len(parts) != 4 or not all(parts):
        raise InvalidArgument(f"not an rbd://<fsid>/<pool>/<image>/<snap> location: {url!r}")
    fsid, pool, image, snap = parts
    return fsid, ImageRef(pool, image), snap


def feature_names(mask: int) -> tuple[str, ...]:
    """Feature bitmask -> names, in bit order (unknown bits as ``0x..``)."""
    names = [FEATURE_NAMES.get(1 << b, hex(1 << b)) for b in range(64) if mask & (1 << b)]
    return tuple(names)


def feature_mask(features: Iterable[str] | int) -> int:
    """Names (as ``rbd info`` prints them) or a bitmask -> bitmask."""
    if isinstance(features, int):
        return features
    mask = 0
    for name in features:
        if name not in _FEATURE_BITS:
            raise InvalidArgument(f"unknown RBD feature {name!r}; known: {', '.join(_FEATURE_BITS)}")
        mask |= _FEATURE_BITS[name]
    return mask


def latest_snapshot(
    snapshots: ImageInfo | Iterable[SnapshotInfo],
    ignore_prefixes: tuple[str, ...] = (SAVEPOINT_SNAPSHOT_PREFIX,),
) -> SnapshotInfo | None:
    """The newest user snapshot, by creation order (snapshot id), or None.

    Creation order and not the timestamp: ids are assigned by the image
    header in order, while timestamps come from client clocks and have
    one-second resolution on older images.  Savepoint's own temporary
    snapshots (safety, backup base) are skipped so they never make a user's
    snapshot "not the latest".
    """
    snaps = snapshots.snapshots if isinstance(snapshots, ImageInfo) else snapshots
    candidates = [s for s in snaps if not s.name.startswith(ignore_prefixes)]
    return max(candidates, key=lambda s: s.id, default=None)


# ---- opening ---------------------------------------------------------------


def _name(image: librbd.Image) -> str:
    try:
        return f"image {image.get_name()}"
    except Exception:  # noqa: BLE001 - only for messages
        return "image"


@contextmanager
def open_image(
    ioctx: rados.Ioctx, name: str, *, snapshot: str | None = None, read_only: bool = False
) -> Iterator[librbd.Image]:
    """An open image (at ``snapshot`` if given, then read-only), closed on exit.

    Read-only handles register no watch, so reading never shows up in
    ``watchers`` or delays someone else's exclusive lock.
    """
    where = f"image {name}" + (f"@{snapshot}" if snapshot else "")
    with ceph_errors(f"opening {where} in pool {ioctx.get_pool_name()}"):
        image = librbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
    try:
        yield image
    finally:
        image.close()


@contextmanager
def open_ref(
    cluster: rados.Rados, ref: ImageRef, *, snapshot: str | None = None, read_only: bool = False
) -> Iterator[librbd.Image]:
    """``open_image`` for an ``ImageRef``: opens the pool's I/O context too."""
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, open_image(
        ioctx, ref.image, snapshot=snapshot, read_only=read_only
    ) as image:
        yield image


def lock_owners(image: librbd.Image) -> list[str]:
    """Clients holding librbd's managed (exclusive) lock, e.g. ``client.4123``."""
    with ceph_errors(f"listing lock owners of {_name(image)}"):
        try:
            return [str(o["owner"]) for o in image.lock_get_owners()]
        except librbd.ImageNotFound:  # no lock owner: librbd reports ENOENT
            return []


@contextmanager
def exclusive_lock(ioctx: rados.Ioctx, name: str) -> Iterator[librbd.Image]:
    """Open ``name`` and hold librbd's managed exclusive lock until exit.

    Unlike the automatic lock a writer takes (which librbd hands over to any
    other client asking for it), an explicitly acquired lock is refused to
    others: no one else can write or run maintenance operations on the image
    while we revert or copy it.  If another client holds it explicitly, this
    fails at once with ``Busy`` naming the owners.  Needs the image feature
    ``exclusive-lock``.
    """
    where = f"image {name} in pool {ioctx.get_pool_name()}"
    with open_image(ioctx, name) as image:
        with ceph_errors(f"checking features of {where}"):
            if not image.features() & librbd.RBD_FEATURE_EXCLUSIVE_LOCK:
                raise Unsupported(f"{where}: feature exclusive-lock is not enabled, cannot lock it")
        try:
            image.lock_acquire(librbd.RBD_LOCK_MODE_EXCLUSIVE)
        except (librbd.Error, rados.Error) as exc:
            err = from_ceph(exc, f"locking {where}")
            if isinstance(err, Busy):
                owners = ", ".join(lock_owners(image)) or "another client"
                raise Busy(f"{where} is locked by {owners}", errno=err.errno) from exc
            raise err from exc
        try:
            yield image
        finally:
            with suppress(librbd.Error, rados.Error):  # closing the handle releases the lock as well
                image.lock_release()


# ---- facts -----------------------------------------------------------------


def _parent(image: librbd.Image) -> ParentInfo | None:
    try:
        spec = image.get_parent_image_spec()
    except librbd.ImageNotFound:
        return None
    return ParentInfo(
        pool=spec["pool_name"],
        namespace=spec.get("pool_namespace") or None,
        image=spec["image_name"],
        snapshot=spec["snap_name"],
    )


def _as_utc(stamp: dt.datetime) -> dt.datetime:
    # python-rbd builds a naive datetime with fromtimestamp(): local time
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()
    return stamp.astimezone(dt.UTC)


def list_snapshots(image: librbd.Image) -> list[SnapshotInfo]:
    """User snapshots, oldest first (by id).  Trash/group/mirror snapshots are not listed."""
    with ceph_errors(f"listing snapshots of {_name(image)}"):
        result = []
        for snap in image.list_snaps():
            if snap.get("namespace", librbd.RBD_SNAP_NAMESPACE_TYPE_USER) != librbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                continue
            result.append(
                SnapshotInfo(
                    id=int(snap["id"]),
                    name=snap["name"],
                    size=int(snap["size"]),
                    timestamp=_as_utc(image.get_snap_timestamp(snap["id"])),
                    protected=bool(image.is_protected_snap(snap["name"])),
                )
            )
        return sorted(result, key=lambda s: s.id)


def image_info(image: librbd.Image) -> ImageInfo:
    """Size, features, parent and snapshots of an open image (at its current snapshot/head)."""
    with ceph_errors(f"reading {_name(image)}"):
        stat = image.stat()
        return ImageInfo(
            name=image.get_name(),
            id=image.id(),
            size=int(stat["size"]),
            object_size=int(stat["obj_size"]),
            features=feature_names(image.features()),
            parent=_parent(image),
            snapshots=tuple(list_snapshots(image)),
        )


def watchers(image: librbd.Image, *, exclude_client: int | None = None) -> list[Watcher]:
    """Clients that have the image open read-write (what ``rbd status`` shows).

    A handle of our own counts too; pass ``exclude_client=ceph.client_id(cluster)``
    to leave out the handles of this connection (e.g. the one holding the lock).
    """
    with ceph_errors(f"listing watchers of {_name(image)}"):
        found = [Watcher(str(w["addr"]), int(w["id"]), int(w["cookie"])) for w in image.watchers_list()]
    return [w for w in found if w.client_id != exclude_client]


# ---- snapshots -------------------------------------------------------------


def create_snapshot(image: librbd.Image, name: str, *, exist_ok: bool = False) -> SnapshotInfo:
    """Take snapshot ``name`` of the image's head; with ``exist_ok`` an existing one is returned.

    ``exist_ok`` is for restartable flows that record the name first and
    create second: after a restart the snapshot may already be there.
    """
    where = f"creating snapshot {name} of {_name(image)}"
    try:
        image.create_snap(name)
    except librbd.ImageExists:
        if not exist_ok:
            raise AlreadyExists(f"{where}: it exists already", errno=errno.EEXIST) from None
    except (librbd.Error, rados.Error) as exc:
        raise from_ceph(exc, where) from exc
    snap = next((s for s in list_snapshots(image) if s.name == name), None)
    if snap is None:
        raise NotFound(f"{where}: snapshot vanished right after creation")
    return snap


def protect_snapshot(image: librbd.Image, name: str) -> None:
    """Protect ``name`` against removal (idempotent); clone format 1 needs it before cloning."""
    with ceph_errors(f"protecting snapshot {name} of {_name(image)}"):
        if not image.is_protected_snap(name):
            image.protect_snap(name)


def children(image: librbd.Image, snap: str) -> list[ImageRef]:
    """Clones of ``snap`` that still depend on it (not yet flattened)."""
    with ceph_errors(f"listing clones of snapshot {snap} of {_name(image)}"), _at_snapshot(image, snap):
        return [
            ImageRef(c["pool"], c["image"], c.get("pool_namespace") or None)
            for c in image.list_children2()
            if not c.get("trash")
        ]


def _unprotect(image: librbd.Image, name: str, where: str) -> None:
    try:
        image.unprotect_snap(name)
    except librbd.ImageBusy as exc:  # EBUSY: clones depend on it, which "Busy" would not say
        clones = ", ".join(str(c) for c in children(image, name)) or "clones"
        raise HasDependents(f"{where}: still the parent of {clones}", errno=errno.EBUSY) from exc


def unprotect_snapshot(image: librbd.Image, name: str) -> None:
    """Undo ``protect_snapshot`` (idempotent); ``HasDependents`` while unflattened clones use it."""
    where = f"unprotecting snapshot {name} of {_name(image)}"
    with ceph_errors(where):
        if image.is_protected_snap(name):
            _unprotect(image, name, where)


def remove_snapshot(image: librbd.Image, name: str) -> bool:
    """Remove snapshot ``name``, unprotecting it first; False if it did not exist.

    Idempotent so cleanup after a restart can call it blindly.  A snapshot
    that unflattened clones depend on raises ``HasDependents`` naming them.
    """
    where = f"removing snapshot {name} of {_name(image)}"
    try:
        if not image.snap_exists(name):
            return False
        if image.is_protected_snap(name):
            _unprotect(image, name, where)
        image.remove_snap(name)
    except librbd.ImageNotFound:
        return False
    except (librbd.Error, rados.Error) as exc:
        raise from_ceph(exc, where) from exc
    return True


def rollback(image: librbd.Image, snap: str, on_progress: Progress | None = None) -> None:
    """Roll the image's head back to snapshot ``snap``, in place.

    With object-map + fast-diff librbd rewrites only the objects that changed
    since the snapshot.  python-rbd 16.2 offers no progress callback for
    rollback, so ``on_progress`` only hears (0, size) and (size, size).
    """
    where = f"rolling {_name(image)} back to snapshot {snap}"
    with ceph_errors(where):
        if not image.snap_exists(snap):
            raise NotFound(f"{where}: no such snapshot")
        size = image.size()
        if on_progress:
            on_progress(0, size)
        image.rollback_to_snap(snap)
        if on_progress:
            on_progress(size, size)


# ---- images in a pool -------------------------------------------------------


def image_exists(cluster: rados.Rados, ref: ImageRef) -> bool:
    """True if the image exists; a missing pool or namespace raises ``NotFound``."""
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
        try:
            librbd.Image(ioctx, ref.image, read_only=True).close()
        except librbd.ImageNotFound:
            return False
        except (librbd.Error, rados.Error) as exc:
            raise from_ceph(exc, f"opening image {ref}") from exc
    return True


def create_image(cluster: rados.Rados, ref: ImageRef, size: int, *, features: Features = None) -> ImageRef:
    """Create a thin image of ``size`` bytes; ``features`` None takes the cluster's ``rbd_default_features``."""
    mask = None if features is None else feature_mask(features)
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, ceph_errors(f"creating image {ref}"):
        librbd.RBD().create(ioctx, ref.image, size, old_format=False, features=mask)
    return ref


def remove_image(cluster: rados.Rados, ref: ImageRef, *, purge_snapshots: bool = False) -> bool:
    """Remove the image; False if it did not exist (idempotent).

    With ``purge_snapshots`` its snapshots go first (unprotected as needed):
    for images Savepoint made itself.  Without it, an image with snapshots
    raises ``HasDependents``; an image still open elsewhere raises ``Busy``.
    """
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
        if purge_snapshots:
            try:
                with open_image(ioctx, ref.image) as image:
                    for snap in list_snapshots(image):
                        remove_snapshot(image, snap.name)
            except NotFound:
                return False
        try:
            librbd.RBD().remove(ioctx, ref.image)
        except librbd.ImageNotFound:
            return False
        except (librbd.Error, rados.Error) as exc:
            raise from_ceph(exc, f"removing image {ref}") from exc
    return True


def rename_image(cluster: rados.Rados, ref: ImageRef, new_name: str) -> ImageRef:
    """Rename ``ref`` to ``new_name`` in its pool, only if that name is free (``AlreadyExists`` else):
    librbd refuses an existing name atomically, so this is how an image appears under a name that
    someone else may want too, already marked as its maker's."""
    where = f"renaming image {ref} to {new_name}"
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
        try:
            librbd.RBD().rename(ioctx, ref.image, new_name)
        except librbd.ImageExists:
            raise AlreadyExists(f"{where}: {new_name} exists already", errno=errno.EEXIST) from None
        except (librbd.Error, rados.Error) as exc:
            raise from_ceph(exc, where) from exc
    return ImageRef(ref.pool, new_name, ref.namespace)


def resize(image: librbd.Image, size: int, *, allow_shrink: bool = False) -> None:
    """Grow the image to ``size`` bytes; shrinking (which drops data) only with ``allow_shrink``."""
    where = f"resizing {_name(image)} to {size} bytes"
    with ceph_errors(where):
        current = image.size()
        if size < current and not allow_shrink:
            raise InvalidArgument(f"{where}: would shrink it from {current} bytes")
        if size != current:
            image.resize(size, allow_shrink=allow_shrink)


def clone(
    cluster: rados.Rados, src: ImageRef, snap: str, dst: ImageRef, *, features: Features = None
) -> ImageRef:
    """Copy-on-write clone of ``src@snap`` as ``dst`` (any pool the user may write).

    The source snapshot is protected first when it is not: clone format 1
    (the default while the cluster's ``require_min_compat_client`` is below
    mimic) requires it, and for format 2 it is harmless.  ``remove_snapshot``
    unprotects again.
    """
    mask = None if features is None else feature_mask(features)
    with open_ioctx(cluster, src.pool, src.namespace) as src_ioctx:
        with open_image(src_ioctx, src.image) as parent:
            with ceph_errors(f"reading snapshot {snap} of {src}"):
                if not parent.snap_exists(snap):
                    raise NotFound(f"image {src}: no snapshot {snap} to clone")
            protect_snapshot(parent, snap)
        with open_ioctx(cluster, dst.pool, dst.namespace) as dst_ioctx, ceph_errors(
            f"cloning {src}@{snap} to {dst}"
        ):
            librbd.RBD().clone(src_ioctx, src.image, snap, dst_ioctx, dst.image, features=mask)
    return dst


def flatten(image: librbd.Image, on_progress: Progress | None = None) -> bool:
    """Copy the parent's data into a clone so it stands alone; False if it had no parent (idempotent)."""
    where = f"flattening {_name(image)}"
    with ceph_errors(where):
        if _parent(image) is None:
            return False
        if on_progress is None:
            image.flatten()
        else:
            def progress(done: int, total: int) -> int:
                on_progress(done, total)
                return 0  # librbd's callback must return an int; non-zero would cancel

            image.flatten(on_progress=progress)
    return True


# ---- allocation -------------------------------------------------------------


@contextmanager
def _at_snapshot(image: librbd.Image, snap: str | None) -> Iterator[None]:
    """Point the handle at ``snap`` for the block, then back at the head."""
    if snap is None:
        yield
        return
    with ceph_errors(f"selecting snapshot {snap} of {_name(image)}"):
        image.set_snap(snap)
    try:
        yield
    finally:
        image.set_snap(None)


def _diff(image: librbd.Image, from_snap: str | None, whole_object: bool,
          include_parent: bool = True) -> list[tuple[int, int, bool]]:
    found: list[tuple[int, int, bool]] = []

    def collect(offset: int, length: int, exists: bool) -> int:
        found.append((offset, length, bool(exists)))
        return 0

    image.diff_iterate(0, image.size(), from_snap, collect, include_parent=include_parent, whole_object=whole_object)
    return found


def changed_extents(
    image: librbd.Image, from_snap: str | None, snap: str | None = None, *, whole_object: bool = False,
    include_parent: bool = True,
) -> tuple[list[Extent], list[Extent]]:
    """(data, zeroed): what changed between ``from_snap`` and ``snap`` (None: the current head).

    ``data`` holds extents with new data, ``zeroed`` extents that became
    zero (discarded).  With ``from_snap`` None, ``data`` is everything
    allocated and ``zeroed`` is empty.  This is ``rbd diff``: the base of
    incremental backups.
    """
    with _at_snapshot(image, snap), ceph_errors(
        f"diffing {_name(image)}" + (f" from {from_snap}" if from_snap else "")
    ):
        found = _diff(image, from_snap, whole_object, include_parent)
    data = ext.merge((o, n) for o, n, exists in found if exists)
    zeroed = ext.merge((o, n) for o, n, exists in found if not exists)
    return data, zeroed


def allocated_extents(
    image: librbd.Image, snap: str | None = None, from_snap: str | None = None, *, whole_object: bool = False,
    include_parent: bool = True,
) -> list[Extent]:
    """Extents holding data at ``snap`` (or the handle's current snapshot/head), merged and sorted.

    With ``from_snap``, only those written since it.  ``whole_object`` rounds
    to RADOS objects and, on images with fast-diff, answers from the object
    map alone (no per-object query): fast for huge images, coarse for
    allocation accounting.  Parent data of clones counts as allocated, unless ``include_parent`` is False
    (then only what the clone holds itself: written, or copied up from its parent).
    """
    data, _ = changed_extents(image, from_snap, snap, whole_object=whole_object, include_parent=include_parent)
    return data


def allocated_bytes(image: librbd.Image, snap: str | None = None, *, whole_object: bool = False,
                    include_parent: bool = True) -> int:
    """Bytes of data at ``snap`` (or the head): what a thin copy must read and store."""
    return ext.total(allocated_extents(image, snap, whole_object=whole_object, include_parent=include_parent))


# ---- what two images share ----------------------------------------------------

_OBJECT_MAP_INVALID = 1  # RBD_FLAG_OBJECT_MAP_INVALID


@dataclass(frozen=True)
class SharedBase:
    """How ``src@snap`` relates to a destination image: a snapshot of the destination (any namespace,
    e.g. the trash) from which both derive, and the extents where ``src`` has data of its own."""

    snap_id: int  # on the destination
    snap_name: str  # its name there (a trashed snapshot's is a UUID; see ``original``)
    original: str  # the name it had when it was taken
    own: list[Extent]  # where src@snap does not read the destination's data at snap_id


def _snapshot_names(image: librbd.Image) -> dict[int, tuple[str, str]]:
    """Every snapshot id -> (name, name when taken), all namespaces (user, trash, ...)."""
    found: dict[int, tuple[str, str]] = {}
    for snap in image.list_snaps():
        name = snap["name"]
        found[int(snap["id"])] = (name, (snap.get("trash") or {}).get("original_name") or name)
    return found


def shared_base(src: librbd.Image, src_pool: ImageRef, src_snap: str | None, dst: librbd.Image,
                dst_ref: ImageRef) -> tuple[SharedBase | None, str]:
    """(the snapshot of ``dst`` that ``src`` at ``src_snap`` derives from, or None; why not).

    Two layouts share one: ``src`` *is* ``dst`` (an RBD snapshot of the volume itself), or ``src`` is a
    clone of a snapshot of ``dst`` -- ceph-csi's VolumeSnapshot image, a v2 clone of a snapshot that went
    to the volume's trash.  ``src`` must be the handle opened at ``src_snap``; ``src_pool`` is its
    location (pool and namespace).  A clone of a clone, or a clone whose parent overlap is smaller than
    its size, is not handled (None).
    """
    with ceph_errors("comparing the source and destination images"):
        if src.id() == dst.id() and (src_pool.pool, src_pool.namespace) == (dst_ref.pool, dst_ref.namespace):
            if src_snap is None:
                return None, "the source is the destination's head"
            sid = int(src.snap_get_id(src_snap))
            return SharedBase(sid, src_snap, src_snap, []), ""
        parent = _parent(src)
        if parent is None:
            return None, "the source image is not a clone (it was flattened, or copied)"
        if (parent.pool, parent.namespace) != (dst_ref.pool, dst_ref.namespace) or src.parent_id() != dst.id():
            return None, f"the source image is a clone of {parent.ref}@{parent.snapshot}, not of a snapshot of {dst_ref}"
        names = _snapshot_names(dst)
        sid = next((i for i, (name, _) in names.items() if name == parent.snapshot), None)
        if sid is None:
            return None, f"the source's parent snapshot {parent.snapshot} is gone from {dst_ref}"
        size = int(src.size())
        if int(src.overlap()) != size:
            return None, "the source's parent overlap is not its size (it was resized)"
        # objects the clone holds itself (written, discarded or copied up): not the parent's data there
        found = _diff(src, None, whole_object=True, include_parent=False)
        return SharedBase(sid, names[sid][0], names[sid][1], ext.merge((o, n) for o, n, _ in found)), ""


def changed_since(cluster: rados.Rados, ref: ImageRef, image: librbd.Image,
                  snap_id: int) -> tuple[list[Extent] | None, str]:
    """(whole-object extents of ``image``'s head whose data differs from snapshot ``snap_id``, or None; why not).

    ``snap_id`` may be in any namespace (a trashed snapshot too, which ``diff_iterate`` cannot name).
    Exact per object: RADOS keeps a clone of an object for a snapshot once the object is written (or
    removed, or rolled back) after it, so the object's version read at the snapshot equals its head
    version exactly when it was not touched since.  Only objects that exist at the snapshot or at the
    head (librbd's object maps, ``savepoint.storage.objectmap``) are asked, two ``stat`` calls each.
    ``image`` is a handle of its own (pointed at the snapshot for a moment); ``ref`` its location.
    None when the maps cannot be used: no object-map, a map flagged invalid, a separate data pool, the
    size or the parent overlap changed since the snapshot.
    """
    from savepoint.storage import objectmap

    where = f"finding what changed in {_name(image)} since snapshot id {snap_id}"
    with ceph_errors(where):
        features = image.features()
        if not features & librbd.RBD_FEATURE_OBJECT_MAP:
            return None, "the volume lacks the feature object-map"
        if features & librbd.RBD_FEATURE_DATA_POOL:
            return None, "the volume keeps its data in a separate data pool"
        image_id, prefix = image.id(), image.block_name_prefix()
        size, obj = int(image.size()), int(image.stat()["obj_size"])
        has_parent = _parent(image) is not None
        overlap = int(image.overlap()) if has_parent else 0
        if image.flags() & _OBJECT_MAP_INVALID:
            return None, "the volume's object map is flagged invalid"
        try:
            image.set_snap_by_id(snap_id)
            if image.flags() & _OBJECT_MAP_INVALID:
                return None, f"the object map of snapshot id {snap_id} is flagged invalid"
            if int(image.size()) != size or (has_parent and int(image.overlap()) != overlap):
                return None, f"the volume was resized since snapshot id {snap_id}"
        except librbd.ImageNotFound:
            return None, f"snapshot id {snap_id} is gone"
        finally:
            image.set_snap(None)
        count = -(-size // obj)
        with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
            maps = []
            for sid in (snap_id, None):
                raw = ioctx.read(objectmap.object_map_name(image_id, sid), objectmap.encoded_size(count))
                try:
                    states = objectmap.decode(raw)
                except objectmap.BadObjectMap as exc:
                    return None, f"the object map of snapshot id {sid} cannot be read: {exc}"
                if len(states) != count:
                    return None, f"the object map of snapshot id {sid} has {len(states)} objects, not {count}"
                maps.append(states)
            candidates = objectmap.existing(*maps)
            head = _versions(ioctx, prefix, candidates, rados.LIBRADOS_SNAP_HEAD)
            then = _versions(ioctx, prefix, candidates, snap_id)
        objects = [i for i in candidates if head[i] != then[i]]
    return ext.merge((i * obj, min(obj, size - i * obj)) for i in objects), ""


def _versions(ioctx: rados.Ioctx, prefix: str, objects: Iterable[int], snap_id: int) -> dict[int, int | None]:
    """RADOS version of each data object as read at ``snap_id`` (None: it does not exist there)."""
    found: dict[int, int | None] = {}
    ioctx.set_read(snap_id)
    try:
        for i in objects:
            try:
                ioctx.stat(f"{prefix}.{i:016x}")
                found[i] = int(ioctx.get_last_version())
            except rados.ObjectNotFound:
                found[i] = None
    finally:
        ioctx.set_read(rados.LIBRADOS_SNAP_HEAD)
    return found
