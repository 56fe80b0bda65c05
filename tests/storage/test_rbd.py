"""savepoint.storage (ceph, rbd, sparse) against the sandbox's real single-node Ceph.

Small images (a few MiB) with data at known offsets; every image is removed
after its test.  No mocks: a second client is a second real connection, a
user without write caps is a real cephx user.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time

import pytest
import rados
from savepoint.storage import errors, extents, rbd, sparse
from savepoint.storage.ceph import CephCredentials, client_id, cluster_fsid, connect, open_ioctx
from savepoint.storage.extents import Extent

pytestmark = pytest.mark.storage

MiB = 1 << 20
KiB = 1 << 10


def write_at(cluster: rados.Rados, ref: rbd.ImageRef, chunks: dict[int, bytes]) -> None:
    with rbd.open_ref(cluster, ref) as image:
        for offset, data in chunks.items():
            image.write(data, offset)


def read_all(cluster: rados.Rados, ref: rbd.ImageRef, snap: str | None = None) -> bytes:
    with rbd.open_ref(cluster, ref, snapshot=snap, read_only=True) as image:
        return image.read(0, image.size())


def checksum(cluster: rados.Rados, ref: rbd.ImageRef, snap: str | None = None) -> str:
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
        return sparse.image_checksum(ioctx, ref.image, snap)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- connection -------------------------------------------------------------


def test_connect_reports_fsid_of_the_cluster(cluster: rados.Rados, ceph) -> None:
    from sandboxlib import ceph as sandbox_ceph

    assert cluster_fsid(cluster) == sandbox_ceph.fsid(ceph)
    assert client_id(cluster) > 0


def test_connect_to_nothing_fails_fast_and_says_so(ceph_creds: CephCredentials) -> None:
    dead = CephCredentials([f"127.0.0.1:{_free_port()}"], ceph_creds.user_id, ceph_creds.key)
    start = time.monotonic()
    with pytest.raises(errors.Unreachable, match="no monitor reachable"), connect(dead, timeout=1):
        pass
    assert time.monotonic() - start < 4


def test_connect_with_wrong_key_names_the_user(ceph_creds: CephCredentials) -> None:
    wrong = CephCredentials(ceph_creds.monitors, ceph_creds.user_id, "AQBrZmVnAAAAABAAR2sdIjsW9eJpLsBb7RmiFQ==")
    # msgr1 monitors refuse a wrong key at once (PermissionDenied); msgr2 ones let the connection time out.
    with pytest.raises((errors.PermissionDenied, errors.Unreachable), match=f"client.{ceph_creds.user_id}.*userKey"), \
            connect(wrong, timeout=1):
        pass


def test_missing_pool_image_and_namespace_are_not_found(cluster: rados.Rados) -> None:
    with pytest.raises(errors.NotFound, match="no-such-pool"), open_ioctx(cluster, "no-such-pool"):
        pass
    with pytest.raises(errors.NotFound, match="namespace"), open_ioctx(cluster, "rbd", "no-such-namespace"):
        pass
    missing = rbd.ImageRef("rbd", "no-such-image")
    assert not rbd.image_exists(cluster, missing)
    assert rbd.remove_image(cluster, missing) is False
    with pytest.raises(errors.NotFound, match="no-such-image"), rbd.open_ref(cluster, missing):
        pass


# ---- facts and snapshots ------------------------------------------------------


def test_image_info_and_latest_snapshot_ignores_savepoint_snapshots(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=4 * MiB)
    with rbd.open_ref(cluster, ref) as image:
        for name in ("first", "savepoint-safety-1", "second", "savepoint-backup-base"):
            rbd.create_snapshot(image, name)
        info = rbd.image_info(image)

    assert info.size == 4 * MiB and info.parent is None
    assert {"layering", "exclusive-lock", "object-map", "fast-diff"} <= set(info.features)
    assert [s.name for s in info.snapshots] == ["first", "savepoint-safety-1", "second", "savepoint-backup-base"]
    assert [s.id for s in info.snapshots] == sorted(s.id for s in info.snapshots)
    assert rbd.latest_snapshot(info).name == "second"
    assert rbd.latest_snapshot(info, ignore_prefixes=()).name == "savepoint-backup-base"
    assert rbd.latest_snapshot(info.snapshots[:1]).name == "first"
    assert rbd.latest_snapshot([s for s in info.snapshots if s.name.startswith("savepoint-")]) is None


def test_snapshot_timestamps_are_utc_and_follow_creation_order(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=1 * MiB)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with rbd.open_ref(cluster, ref) as image:
        a = rbd.create_snapshot(image, "a")
        b = rbd.create_snapshot(image, "b")  # same second as a: timestamps have 1 s resolution
        time.sleep(1.1)
        c = rbd.create_snapshot(image, "c")
    for snap in (a, b, c):
        assert snap.timestamp.tzinfo == dt.UTC
        assert before <= snap.timestamp <= dt.datetime.now(dt.UTC)
    assert a.id < b.id < c.id
    assert a.timestamp <= b.timestamp < c.timestamp


def test_snapshot_create_and_remove_are_idempotent(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=1 * MiB)
    with rbd.open_ref(cluster, ref) as image:
        snap = rbd.create_snapshot(image, "s")
        with pytest.raises(errors.AlreadyExists):
            rbd.create_snapshot(image, "s")
        assert rbd.create_snapshot(image, "s", exist_ok=True) == snap
        rbd.protect_snapshot(image, "s")
        rbd.protect_snapshot(image, "s")
        assert rbd.image_info(image).snapshot("s").protected
        assert rbd.remove_snapshot(image, "s") is True  # unprotects first
        assert rbd.remove_snapshot(image, "s") is False
        assert rbd.image_info(image).snapshots == ()


def test_rollback_restores_data_byte_for_byte(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=8 * MiB)
    original = {0: os.urandom(64 * KiB), 3 * MiB + 17: os.urandom(200 * KiB), 8 * MiB - 4096: os.urandom(4096)}
    write_at(cluster, ref, original)
    with rbd.open_ref(cluster, ref) as image:
        rbd.create_snapshot(image, "before")
    expected = read_all(cluster, ref, "before")
    write_at(cluster, ref, {0: os.urandom(1 * MiB), 6 * MiB: os.urandom(4096)})
    assert read_all(cluster, ref) != expected

    progress: list[tuple[int, int]] = []
    with open_ioctx(cluster, ref.pool) as ioctx, rbd.exclusive_lock(ioctx, ref.image) as image:
        rbd.rollback(image, "before", on_progress=lambda done, total: progress.append((done, total)))
    assert read_all(cluster, ref) == expected
    assert checksum(cluster, ref) == checksum(cluster, ref, "before")
    assert progress[-1] == (8 * MiB, 8 * MiB)
    with rbd.open_ref(cluster, ref) as image, pytest.raises(errors.NotFound, match="no-such-snap"):
        rbd.rollback(image, "no-such-snap")


def test_resize_grows_and_refuses_to_shrink_by_default(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=2 * MiB)
    with rbd.open_ref(cluster, ref) as image:
        rbd.resize(image, 4 * MiB)
        assert rbd.image_info(image).size == 4 * MiB
        with pytest.raises(errors.InvalidArgument, match="shrink"):
            rbd.resize(image, 1 * MiB)
        rbd.resize(image, 1 * MiB, allow_shrink=True)
        assert image.size() == 1 * MiB


# ---- watchers and locks ---------------------------------------------------------


def test_watchers_show_another_client_holding_the_image_open(
    cluster: rados.Rados, other_cluster: rados.Rados, make_image
) -> None:
    ref = make_image(size=1 * MiB)
    with rbd.open_ref(cluster, ref, read_only=True) as mine:
        assert rbd.watchers(mine) == []  # read-only handles do not watch
        with rbd.open_ref(other_cluster, ref):
            seen = rbd.watchers(mine)
            assert [w.client_id for w in seen] == [client_id(other_cluster)]
            assert seen[0].address.startswith("127.0.0.1:")
        assert rbd.watchers(mine) == []
    with rbd.open_ref(cluster, ref) as own:  # a read-write handle watches, and can leave itself out
        assert [w.client_id for w in rbd.watchers(own)] == [client_id(cluster)]
        assert rbd.watchers(own, exclude_client=client_id(cluster)) == []


def test_exclusive_lock_makes_a_second_client_fail_with_busy(
    cluster: rados.Rados, other_cluster: rados.Rados, make_image
) -> None:
    ref = make_image(size=1 * MiB)
    with open_ioctx(cluster, ref.pool) as mine, open_ioctx(other_cluster, ref.pool) as theirs:
        with rbd.exclusive_lock(mine, ref.image) as locked:
            owners = rbd.lock_owners(locked)
            assert len(owners) == 1
            start = time.monotonic()
            with pytest.raises(errors.Busy, match=owners[0]) as caught, rbd.exclusive_lock(theirs, ref.image):
                pass
            assert caught.value.reason == "VolumeBusy"
            assert time.monotonic() - start < 5  # refused at once, not after a wait
            with rbd.open_image(theirs, ref.image) as other, pytest.raises(errors.Busy):
                with errors.ceph_errors("writing"):
                    other.write(b"x", 0)  # librbd: EROFS while someone holds the lock explicitly
            locked.write(b"mine", 0)
        with rbd.exclusive_lock(theirs, ref.image) as now_theirs:  # released on exit
            assert now_theirs.read(0, 4) == b"mine"


def test_exclusive_lock_takes_over_from_a_plain_writer(
    cluster: rados.Rados, other_cluster: rados.Rados, make_image
) -> None:
    """A writer's automatic lock is handed over on request: only watchers tell that the image is in use."""
    ref = make_image(size=1 * MiB)
    with open_ioctx(cluster, ref.pool) as mine, rbd.open_ref(other_cluster, ref) as writer:
        writer.write(b"app", 0)
        assert writer.is_exclusive_lock_owner()
        with rbd.exclusive_lock(mine, ref.image) as locked:
            assert not writer.is_exclusive_lock_owner()
            others = rbd.watchers(locked, exclude_client=client_id(cluster))
            assert [w.client_id for w in others] == [client_id(other_cluster)]


def test_exclusive_lock_needs_the_feature(cluster: rados.Rados, make_image) -> None:
    ref = make_image(size=1 * MiB, features=["layering"])
    with open_ioctx(cluster, ref.pool) as ioctx, pytest.raises(errors.Unsupported, match="exclusive-lock"):
        with rbd.exclusive_lock(ioctx, ref.image):
            pass


# ---- clone, flatten, allocation ---------------------------------------------------------


def test_clone_and_flatten_give_an_independent_identical_image(cluster: rados.Rados, make_image) -> None:
    src = make_image(size=12 * MiB)
    write_at(cluster, src, {100: os.urandom(5000), 9 * MiB: os.urandom(1 * MiB)})
    with rbd.open_ref(cluster, src) as image:
        rbd.create_snapshot(image, "savepoint-isnap")
        source_info = rbd.image_info(image)
    dst = make_image(pool="images", create=False)

    rbd.clone(cluster, src, "savepoint-isnap", dst, features=source_info.features)
    with rbd.open_ref(cluster, src) as image, pytest.raises(errors.HasDependents, match=dst.image):
        rbd.remove_snapshot(image, "savepoint-isnap")  # the clone still needs it
    progress: list[tuple[int, int]] = []
    with rbd.open_ref(cluster, dst) as image:
        assert rbd.image_info(image).parent == rbd.ParentInfo("rbd", None, src.image, "savepoint-isnap")
        assert rbd.flatten(image, on_progress=lambda d, t: progress.append((d, t))) is True
        assert rbd.flatten(image) is False  # nothing left to do
        info = rbd.image_info(image)
        allocated = rbd.allocated_bytes(image)
    assert info.parent is None and info.features == source_info.features
    assert progress and progress[-1][1] == 3  # librbd counts objects: 12 MiB / 4 MiB
    assert checksum(cluster, dst) == checksum(cluster, src, "savepoint-isnap")
    assert read_all(cluster, dst) == read_all(cluster, src, "savepoint-isnap")
    with rbd.open_ref(cluster, src) as image:
        assert allocated == rbd.allocated_bytes(image, "savepoint-isnap")  # flatten keeps it thin
        assert rbd.remove_snapshot(image, "savepoint-isnap")  # protected by clone(), unprotected here
        assert rbd.image_info(image).snapshots == ()


def test_clone_of_missing_snapshot_is_not_found(cluster: rados.Rados, make_image) -> None:
    src = make_image(size=1 * MiB)
    with pytest.raises(errors.NotFound, match="nope"):
        rbd.clone(cluster, src, "nope", make_image(pool="images", create=False))


def test_allocated_and_changed_extents(cluster: rados.Rados, make_image) -> None:
    """librbd's allocation map: per RADOS object, from the object's start to its last written byte."""
    ref = make_image(size=16 * MiB)
    write_at(cluster, ref, {0: b"a" * 4096, 4096: b"b" * 4096, 5 * MiB: b"c" * 100, 12 * MiB: b"d" * MiB})
    with rbd.open_ref(cluster, ref) as image:
        rbd.create_snapshot(image, "base")
        at_base = [Extent(0, 8192), Extent(4 * MiB, MiB + 100), Extent(12 * MiB, MiB)]
        assert rbd.allocated_extents(image) == at_base
        assert rbd.allocated_bytes(image) == 8192 + MiB + 100 + MiB
        assert rbd.allocated_extents(image, whole_object=True) == [Extent(0, 8 * MiB), Extent(12 * MiB, 4 * MiB)]

        image.write(b"e" * 4096, 8 * MiB)
        image.discard(12 * MiB, MiB)
        data, zeroed = rbd.changed_extents(image, "base")
        assert data == [Extent(8 * MiB, 4096)]
        assert zeroed == [Extent(12 * MiB, MiB)]
        assert rbd.allocated_extents(image, from_snap="base") == [Extent(8 * MiB, 4096)]
        assert rbd.allocated_extents(image, snap="base") == at_base
        # the head map may keep a discarded object whose data lives on in a snapshot: a superset
        head = rbd.allocated_extents(image)
        assert extents.subtract([Extent(0, 8192), Extent(4 * MiB, MiB + 100), Extent(8 * MiB, 4096)], head) == []
        content = image.read(0, image.size())
    # what copies and backups rely on: no byte of data outside the reported extents
    outside = bytearray(content)
    for offset, length in head:
        outside[offset : offset + length] = bytes(length)
    assert outside == bytes(len(content))


# ---- sparse copy and checksum ---------------------------------------------------------


SOURCE_DATA = {
    0: os.urandom(4096),
    1 * MiB + 123: os.urandom(300 * KiB),
    4 * MiB - 512: os.urandom(8 * KiB),  # crosses an object boundary
    9 * MiB: bytes(64 * KiB),  # allocated but all zeros: must not be written
    13 * MiB: os.urandom(2 * MiB),
}
JUNK = {
    512 * KiB: b"J" * (64 * KiB),  # in a hole of the source
    6 * MiB + 1: b"J" * (300 * KiB + 7),  # unaligned, in a hole
    9 * MiB + 4096: b"J" * 4096,  # where the source has written zeros
    13 * MiB + MiB: b"J" * (4 * MiB),  # overlaps source data and runs past it
}


def ext_total_nonzero(chunks: dict[int, bytes]) -> int:
    return sum(len(data) for data in chunks.values() if any(data))


def _source_with_snapshot(cluster: rados.Rados, make_image) -> rbd.ImageRef:
    src = make_image(size=20 * MiB)
    write_at(cluster, src, SOURCE_DATA)
    with rbd.open_ref(cluster, src) as image:
        rbd.create_snapshot(image, "snap")
    write_at(cluster, src, {2 * MiB: os.urandom(MiB)})  # after the snapshot: must not be copied
    return src


def test_sparse_copy_onto_a_used_image_matches_the_snapshot_and_stays_thin(cluster: rados.Rados, make_image) -> None:
    src = _source_with_snapshot(cluster, make_image)
    dst = make_image(size=20 * MiB)
    write_at(cluster, dst, JUNK)
    with rbd.open_ref(cluster, src, snapshot="snap", read_only=True) as image:
        src_allocated = rbd.allocated_bytes(image)

    progress: list[tuple[int, int]] = []
    with open_ioctx(cluster, "rbd") as ioctx:
        result = sparse.copy_image(ioctx, src.image, "snap", ioctx, dst.image,
                                   on_progress=lambda done, total: progress.append((done, total)))

    expected = read_all(cluster, src, "snap")
    assert read_all(cluster, dst) == expected
    assert result.checksum == checksum(cluster, src, "snap") == checksum(cluster, dst)
    assert result.verified
    assert result.bytes_copied + result.bytes_skipped == src_allocated
    assert result.bytes_copied < ext_total_nonzero(SOURCE_DATA) + 4 * 64 * KiB  # zero runs were not written
    assert result.bytes_discarded > 0
    assert progress[0] == (0, src_allocated) and progress[-1] == (src_allocated, src_allocated)
    with rbd.open_ref(cluster, dst) as image:
        dst_allocated = rbd.allocated_bytes(image)
    # thin stays thin: zeroing releases the junk (librbd may keep a partial edge block allocated)
    assert dst_allocated <= src_allocated + 64 * KiB


def test_sparse_copy_into_a_new_image_writes_only_data(cluster: rados.Rados, make_image) -> None:
    src = _source_with_snapshot(cluster, make_image)
    dst = make_image(pool="images", size=24 * MiB)  # larger: the tail reads as zeros
    with open_ioctx(cluster, "rbd") as src_io, open_ioctx(cluster, "images") as dst_io:
        result = sparse.copy_image(src_io, src.image, "snap", dst_io, dst.image, chunk=1 * MiB)
        assert sparse.image_checksum(dst_io, dst.image, length=20 * MiB) == result.checksum
    assert result.bytes_discarded == 0
    expected = read_all(cluster, src, "snap")
    # data only: at most the non-zero 64 KiB grains, at least the bytes written
    assert ext_total_nonzero(SOURCE_DATA) <= result.bytes_copied <= extents.total(sparse.data_runs(expected, 0))
    with rbd.open_ref(cluster, src, snapshot="snap", read_only=True) as image:
        src_allocated = rbd.allocated_bytes(image)
    with rbd.open_ref(cluster, dst) as image:
        # the all-zero object at 9 MiB was not written, so the copy is even thinner than the source
        assert rbd.allocated_bytes(image) == src_allocated - (MiB + 64 * KiB)
    assert read_all(cluster, dst) == expected + bytes(4 * MiB)


def test_sparse_copy_refuses_a_smaller_destination(cluster: rados.Rados, make_image) -> None:
    src = _source_with_snapshot(cluster, make_image)
    dst = make_image(size=8 * MiB)
    with open_ioctx(cluster, "rbd") as ioctx, pytest.raises(errors.SizeMismatch, match=str(20 * MiB)):
        sparse.copy_image(ioctx, src.image, "snap", ioctx, dst.image)


def test_sparse_copy_waits_for_no_one_holding_the_destination(
    cluster: rados.Rados, other_cluster: rados.Rados, make_image
) -> None:
    src = _source_with_snapshot(cluster, make_image)
    dst = make_image(size=20 * MiB)
    with open_ioctx(other_cluster, "rbd") as theirs, rbd.exclusive_lock(theirs, dst.image):
        with open_ioctx(cluster, "rbd") as ioctx, pytest.raises(errors.Busy):
            sparse.copy_image(ioctx, src.image, "snap", ioctx, dst.image)


def test_checksum_depends_on_content_not_on_allocation(cluster: rados.Rados, make_image) -> None:
    sparse_ref = make_image(size=6 * MiB)
    dense_ref = make_image(size=6 * MiB)
    data = os.urandom(100 * KiB)
    write_at(cluster, sparse_ref, {5 * MiB: data})
    dense = bytearray(6 * MiB)
    dense[5 * MiB : 5 * MiB + len(data)] = data
    write_at(cluster, dense_ref, {0: bytes(dense)})  # every byte written, zeros included
    with rbd.open_ref(cluster, dense_ref) as image:
        assert rbd.allocated_bytes(image) == 6 * MiB
    assert checksum(cluster, sparse_ref) == checksum(cluster, dense_ref)
    assert checksum(cluster, sparse_ref).startswith("sp1-sha256:")

    write_at(cluster, dense_ref, {1: b"\x01"})
    assert checksum(cluster, sparse_ref) != checksum(cluster, dense_ref)


# ---- permissions ---------------------------------------------------------


def test_missing_write_caps_map_to_permission_denied(
    cluster: rados.Rados, readonly_creds: CephCredentials, make_image
) -> None:
    existing = make_image(pool="images", size=1 * MiB)
    write_at(cluster, existing, {0: b"readable"})
    with connect(readonly_creds) as ro:
        with pytest.raises(errors.PermissionDenied) as caught:
            rbd.create_image(ro, rbd.ImageRef("images", existing.image + "-new"), MiB)
        assert caught.value.reason == "PermissionDenied"
        assert "images" in caught.value.message
        with pytest.raises(errors.PermissionDenied), rbd.open_ref(ro, existing):
            pass  # a read-write open registers a watch: a write
        with pytest.raises(errors.PermissionDenied):
            rbd.remove_image(ro, existing)
        with rbd.open_ref(ro, existing, read_only=True) as image:
            assert image.read(0, 8) == b"readable"
        src = make_image(pool="rbd", size=1 * MiB)
        with rbd.open_ref(ro, src) as image:
            rbd.create_snapshot(image, "s")  # `profile rbd` on pool rbd: allowed
        with pytest.raises(errors.PermissionDenied):
            rbd.clone(ro, src, "s", rbd.ImageRef("images", existing.image + "-clone"))
