"""The chunk store against the sandbox's real Ceph: full and incremental backups read through librbd at
a snapshot, garbage collection, verification and sparse restores.  The repository is a local directory."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import rados
from savepoint.storage import chunks, rbd, sparse
from savepoint.storage.ceph import open_ioctx
from savepoint.storage.chunks import ChunkMap, ChunkStore, CorruptChunk
from savepoint.storage.errors import SizeMismatch

pytestmark = pytest.mark.storage

MiB = 1 << 20
GiB = 1 << 30
C = chunks.DEFAULT_CHUNK_SIZE


def write_at(cluster: rados.Rados, ref: rbd.ImageRef, data: dict[int, bytes]) -> None:
    with rbd.open_ref(cluster, ref) as image:
        for offset, blob in data.items():
            image.write(blob, offset)


def snapshot(cluster: rados.Rados, ref: rbd.ImageRef, name: str) -> None:
    with rbd.open_ref(cluster, ref) as image:
        rbd.create_snapshot(image, name)


def checksum(cluster: rados.Rados, ref: rbd.ImageRef, snap: str | None = None, length: int | None = None) -> str:
    with open_ioctx(cluster, ref.pool, ref.namespace) as ioctx:
        return sparse.image_checksum(ioctx, ref.image, snap, length=length)


def read_all(cluster: rados.Rados, ref: rbd.ImageRef, snap: str | None = None, length: int | None = None) -> bytes:
    with rbd.open_ref(cluster, ref, snapshot=snap, read_only=True) as image:
        return image.read(0, length or image.size())


def backup(cluster: rados.Rados, ref: rbd.ImageRef, snap: str, source: Path, name: str, *,
           base: str | None = None, parent: ChunkMap | None = None) -> chunks.BackupResult:
    store = ChunkStore(source)
    with store.locked(exclusive=False), open_ioctx(cluster, ref.pool) as ioctx, \
            rbd.open_image(ioctx, ref.image, snapshot=snap, read_only=True) as image:
        result = chunks.backup_image(image, store, base_snapshot=base, parent=parent)
        chunks.write_chunk_map(source / name, result.chunk_map)
    return result


def restore(cluster: rados.Rados, source: Path, name: str, target: rbd.ImageRef,
            **kwargs: object) -> chunks.RestoreResult:
    store = ChunkStore(source)
    with store.locked(exclusive=False), open_ioctx(cluster, target.pool) as ioctx, \
            rbd.exclusive_lock(ioctx, target.image) as image:
        return chunks.restore_image(store, chunks.load_chunk_map(source / name), image, **kwargs)  # type: ignore[arg-type]


def allocated(cluster: rados.Rados, ref: rbd.ImageRef) -> int:
    with rbd.open_ref(cluster, ref, read_only=True) as image:
        return rbd.allocated_bytes(image)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo" / "ns" / "source-uid"


@pytest.fixture
def thin_gib(cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef]) -> tuple[rbd.ImageRef, dict[int, bytes]]:
    """A 1 GiB thin image with 64 MiB of data: one random 4 MiB chunk every 64 MiB, plus a short tail."""
    ref = make_image(size=GiB)
    rnd = random.Random(1)
    data = {i * 64 * MiB: rnd.randbytes(C) for i in range(16)}
    data[GiB - 3 * MiB] = rnd.randbytes(MiB)  # a partly written chunk at the end
    write_at(cluster, ref, data)
    return ref, data


def test_full_backup_reads_and_stores_only_allocated_data(cluster: rados.Rados, thin_gib, repo: Path) -> None:
    ref, data = thin_gib
    snapshot(cluster, ref, "s1")
    result = backup(cluster, ref, "s1", repo, "full")
    written = sum(len(v) for v in data.values())
    assert result.full_read_reason and "no earlier backup" in result.full_read_reason
    assert written <= result.bytes_read <= written * 1.10
    assert result.bytes_stored == written  # zero runs stay holes
    assert len(result.chunk_map.chunks) == 17 and result.chunks_new == 17
    assert result.chunk_map.checksum() == checksum(cluster, ref, "s1")
    assert ChunkStore(repo).stored_bytes() <= written * 1.05


def test_incremental_reads_and_stores_only_what_changed_and_survives_deleting_the_full_backup(
        cluster: rados.Rados, thin_gib, repo: Path, make_image: Callable[..., rbd.ImageRef]) -> None:
    ref, _ = thin_gib
    snapshot(cluster, ref, "s1")
    full = backup(cluster, ref, "s1", repo, "full")
    rnd = random.Random(2)
    changes = {
        64 * MiB: rnd.randbytes(C),  # rewrite a chunk that had data
        128 * MiB: rnd.randbytes(C),
        300 * MiB: rnd.randbytes(MiB),  # new data where there was none (starts an object)
    }
    write_at(cluster, ref, changes)
    with rbd.open_ref(cluster, ref) as image:
        image.discard(192 * MiB, C)  # a chunk that goes back to zeros
    snapshot(cluster, ref, "s2")
    changed = sum(len(v) for v in changes.values())
    incr = backup(cluster, ref, "s2", repo, "incr", base="s1", parent=full.chunk_map)

    assert incr.full_read_reason is None
    assert changed <= incr.bytes_read <= changed * 1.10, incr.summary()
    assert changed * 0.90 <= incr.bytes_stored <= changed * 1.10, incr.summary()
    assert incr.chunks_inherited == 17 - 3  # two rewritten, one zeroed
    assert incr.chunks_zero == 1 and incr.chunks_new == 3
    assert incr.chunk_map.checksum() == checksum(cluster, ref, "s2")

    shutil.rmtree(repo / "full")
    gc = chunks.collect_garbage(repo)
    assert gc.removed == 3 and gc.backups == 1 and gc.missing == 0  # the three chunks only the full one had
    target = make_image(size=GiB)
    result = restore(cluster, repo, "incr", target)
    assert result.checksum == incr.chunk_map.checksum()
    assert read_all(cluster, target) == read_all(cluster, ref, "s2")  # byte for byte


def test_a_partly_changed_chunk_reads_only_the_change_and_completes_it_from_the_parent(
        cluster: rados.Rados, thin_gib, repo: Path) -> None:
    ref, _ = thin_gib
    snapshot(cluster, ref, "s1")
    full = backup(cluster, ref, "s1", repo, "full")
    write_at(cluster, ref, {64 * MiB + 1000: b"\x5a" * 5000})
    snapshot(cluster, ref, "s2")
    incr = backup(cluster, ref, "s2", repo, "incr", base="s1", parent=full.chunk_map)
    assert incr.bytes_read <= 64 * 1024  # the changed bytes, rounded to what the OSD tracks
    assert incr.bytes_read_repository == C and incr.chunks_changed == 1
    assert incr.chunk_map.checksum() == checksum(cluster, ref, "s2")


def test_missing_base_snapshot_means_a_full_read(cluster: rados.Rados, thin_gib, repo: Path) -> None:
    ref, data = thin_gib
    snapshot(cluster, ref, "s1")
    full = backup(cluster, ref, "s1", repo, "full")
    snapshot(cluster, ref, "s2")
    store = ChunkStore(repo)
    with store.locked(exclusive=False), open_ioctx(cluster, ref.pool) as ioctx, \
            rbd.open_image(ioctx, ref.image, snapshot="s2", read_only=True) as image:
        result = chunks.backup_image(image, store, base_snapshot=None, parent=full.chunk_map)
    assert result.full_read_reason and "base snapshot" in result.full_read_reason
    assert result.bytes_read >= sum(len(v) for v in data.values())
    assert result.bytes_stored == 0 and result.chunks_reused == 17  # same content: nothing new stored


def test_verify_names_a_corrupted_chunk_and_restore_refuses_it(
        cluster: rados.Rados, thin_gib, repo: Path, make_image: Callable[..., rbd.ImageRef]) -> None:
    ref, _ = thin_gib
    snapshot(cluster, ref, "s1")
    full = backup(cluster, ref, "s1", repo, "full")
    store = ChunkStore(repo)
    assert chunks.verify_chunks(store, full.chunk_map).ok
    victim = full.chunk_map.chunks[5]
    path = store.path_of(victim.digest)
    with open(path, "r+b") as f:  # flip one byte in the middle
        f.seek(C // 2)
        byte = f.read(1)
        f.seek(C // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = chunks.verify_chunks(store, full.chunk_map)
    assert not result.ok and result.chunks == 17 and len(result.bad) == 1
    assert result.bad[0].digest == victim.digest and result.bad[0].offset == victim.offset
    assert victim.digest in result.message() and str(victim.offset) in result.message()
    target = make_image(size=GiB)
    with pytest.raises(CorruptChunk, match=victim.digest):
        restore(cluster, repo, "full", target)


def test_restore_is_sparse_and_discards_what_the_backup_does_not_have(
        cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef], repo: Path) -> None:
    source = make_image(size=64 * MiB)
    block = b"\x11" * (256 * 1024)
    # one chunk with a little data and a long zero run that librbd reports as allocated
    write_at(cluster, source, {0: block, 3 * MiB: block, 40 * MiB: bytes(C)})
    snapshot(cluster, source, "s1")
    result = backup(cluster, source, "s1", repo, "b")
    assert result.bytes_stored == 2 * len(block) and result.chunks_zero == 1
    # into a fresh image: only the data is written
    fresh = make_image(size=64 * MiB)
    r1 = restore(cluster, repo, "b", fresh)
    assert r1.bytes_written == 2 * len(block) and r1.bytes_discarded == 0
    assert allocated(cluster, fresh) <= 4 * MiB
    # into a used, larger image: its other data is discarded (not overwritten with zeros), content equal
    used = make_image(size=80 * MiB)
    write_at(cluster, used, {MiB: b"\x22" * MiB, 20 * MiB: b"\x33" * C, 70 * MiB: b"\x44" * MiB})
    r2 = restore(cluster, repo, "b", used, readback=True)
    assert r2.bytes_discarded >= MiB + C + MiB
    assert read_all(cluster, used, length=64 * MiB) == read_all(cluster, source, "s1")
    assert read_all(cluster, used)[64 * MiB:] == bytes(16 * MiB)
    assert allocated(cluster, used) < 8 * MiB
    # a smaller target is refused before anything is written
    small = make_image(size=32 * MiB)
    with pytest.raises(SizeMismatch):
        restore(cluster, repo, "b", small)


def test_equal_chunks_are_stored_once(cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef],
                                      repo: Path) -> None:
    ref = make_image(size=32 * MiB)
    blob = random.Random(3).randbytes(C)
    write_at(cluster, ref, {0: blob, C: blob, 3 * C: blob})
    snapshot(cluster, ref, "s1")
    result = backup(cluster, ref, "s1", repo, "b")
    assert len(result.chunk_map.chunks) == 3 and len(result.chunk_map.digests()) == 1
    assert result.chunks_new == 1 and result.chunks_reused == 2 and result.bytes_stored == C


def test_backup_of_a_snapshot_is_consistent_while_the_head_is_written(
        cluster: rados.Rados, other_cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef],
        repo: Path) -> None:
    """A writer keeps writing the head through its own client; the backup equals the snapshot exactly."""
    ref = make_image(size=128 * MiB)
    rnd = random.Random(4)
    write_at(cluster, ref, {i * 8 * MiB: rnd.randbytes(2 * MiB) for i in range(16)})
    snapshot(cluster, ref, "s1")
    expected = hashlib.sha256(read_all(cluster, ref, "s1")).hexdigest()
    stop = threading.Event()

    def writer() -> None:
        with rbd.open_ref(other_cluster, ref) as image:
            i = 0
            while not stop.is_set():
                image.write(bytes([i % 251 + 1]) * 65536, (i * 65536 * 7) % (128 * MiB - 65536))
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        backup(cluster, ref, "s1", repo, "b")
    finally:
        stop.set()
        thread.join()
    target = make_image(size=128 * MiB)
    restore(cluster, repo, "b", target)
    assert hashlib.sha256(read_all(cluster, target)).hexdigest() == expected


def test_a_damaged_parent_chunk_is_read_from_the_snapshot_instead_and_does_not_spread(
        cluster: rados.Rados, thin_gib, repo: Path) -> None:
    ref, _ = thin_gib
    snapshot(cluster, ref, "s1")
    full = backup(cluster, ref, "s1", repo, "full")
    victim = full.chunk_map.by_offset()[64 * MiB]
    path = ChunkStore(repo).path_of(victim.digest)
    path.write_bytes(b"\xff" + path.read_bytes()[1:])  # the parent's copy of the chunk is damaged
    write_at(cluster, ref, {64 * MiB + 4096: b"\x5a" * 4096})  # a small change inside that chunk
    snapshot(cluster, ref, "s2")
    incr = backup(cluster, ref, "s2", repo, "incr", base="s1", parent=full.chunk_map)
    assert incr.chunks_reread == 1 and incr.bytes_read <= C + 64 * 1024
    assert incr.chunk_map.checksum() == checksum(cluster, ref, "s2")  # sound, though its parent is not
    assert chunks.verify_chunks(ChunkStore(repo), incr.chunk_map).ok
    assert not chunks.verify_chunks(ChunkStore(repo), full.chunk_map).ok
