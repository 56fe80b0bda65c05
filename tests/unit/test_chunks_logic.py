"""Chunk store logic without Ceph: chunk map arithmetic, incremental planning, GC decisions, the store on disk."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from savepoint.storage import chunks
from savepoint.storage.chunks import (
    BadChunkMap,
    ChunkMap,
    ChunkRef,
    ChunkStore,
    CorruptChunk,
    RepositoryBusy,
    chunk_offsets,
    collect_garbage,
    full_read_reason,
    gc_plan,
    merge_maps,
    pieces_by_chunk,
    plan_backup,
)
from savepoint.storage.extents import Extent
from savepoint.storage.sparse import ContentHasher

pytestmark = pytest.mark.unit

MiB = 1 << 20
C = 4 * MiB


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ref(offset: int, data: bytes) -> ChunkRef:
    return ChunkRef(offset, len(data), digest(data))


# ---- arithmetic -------------------------------------------------------------------------------


def test_chunk_offsets_cover_every_touched_chunk_and_stay_inside_the_volume() -> None:
    size = 10 * MiB  # chunks at 0, 4 and 8 MiB (the last 2 MiB long)
    assert chunk_offsets([(0, 1)], C, size) == [0]
    assert chunk_offsets([(C - 1, 2)], C, size) == [0, C]  # crosses a boundary
    assert chunk_offsets([(C, C)], C, size) == [C]  # exactly one chunk
    assert chunk_offsets([(9 * MiB, 5 * MiB)], C, size) == [2 * C]  # clipped at the end
    assert chunk_offsets([(11 * MiB, MiB)], C, size) == []  # beyond the end
    assert chunk_offsets([(0, 1), (1, 1), (3 * MiB, 2 * MiB)], C, size) == [0, C]


def test_pieces_are_cut_at_chunk_boundaries_and_grouped() -> None:
    grouped = pieces_by_chunk([(3 * MiB, 2 * MiB), (9 * MiB, MiB)], C, 10 * MiB)
    assert grouped == {0: [Extent(3 * MiB, MiB)], C: [Extent(C, MiB)], 2 * C: [Extent(9 * MiB, MiB)]}


def test_chunk_map_validates_offsets_lengths_and_digests() -> None:
    good = "a" * 64
    ChunkMap(10 * MiB, C, (ChunkRef(0, C, good), ChunkRef(2 * C, 2 * MiB, good)))
    with pytest.raises(BadChunkMap, match="length"):
        ChunkMap(10 * MiB, C, (ChunkRef(2 * C, C, good),))  # the last chunk is short
    with pytest.raises(BadChunkMap, match="boundary"):
        ChunkMap(10 * MiB, C, (ChunkRef(MiB, C, good),))
    with pytest.raises(BadChunkMap, match="order"):
        ChunkMap(10 * MiB, C, (ChunkRef(C, C, good), ChunkRef(0, C, good)))
    with pytest.raises(BadChunkMap, match="sha256"):
        ChunkMap(10 * MiB, C, (ChunkRef(0, C, "xyz"),))


def test_checksum_from_the_map_equals_the_content_checksum_of_the_image() -> None:
    """The map alone gives sparse.ContentHasher's checksum: incrementals need no re-read for it."""
    rnd = random.Random(7)
    size = 3 * C + 12345
    image = bytearray(size)
    refs = []
    for offset in (0, 2 * C, 3 * C):  # chunk 1 is a hole; the last chunk is short
        length = min(C, size - offset)
        data = rnd.randbytes(length)
        image[offset:offset + length] = data
        refs.append(ref(offset, data))
    hasher = ContentHasher(size, block=C)
    hasher.update(0, bytes(image))
    assert ChunkMap(size, C, tuple(refs)).checksum() == hasher.hexdigest()
    assert ChunkMap(size, C, ()).checksum() == ContentHasher(size, block=C).hexdigest()


def test_chunk_map_round_trips_and_detects_a_tampered_map() -> None:
    m = ChunkMap(2 * C, C, (ref(C, b"x" * C),))
    data = m.to_dict()
    assert data["format"] == chunks.FORMAT and data["chunkCount"] == 1 and data["dataBytes"] == C
    assert ChunkMap.from_dict(json.loads(json.dumps(data))) == m
    data["chunks"][0][2] = digest(b"y" * C)
    with pytest.raises(BadChunkMap, match="checksum"):
        ChunkMap.from_dict(data)
    with pytest.raises(BadChunkMap, match="format"):
        ChunkMap.from_dict({**m.to_dict(), "format": "other/9"})


def test_merge_keeps_unchanged_chunks_replaces_changed_ones_and_drops_zeroed_ones() -> None:
    a, b, c = ref(0, b"a" * C), ref(C, b"b" * C), ref(2 * C, b"c" * C)
    parent = ChunkMap(4 * C, C, (a, b, c))
    b2, d = ref(C, b"B" * C), ref(3 * C, b"d" * C)
    child = merge_maps(parent, changed=[C, 2 * C, 3 * C], new=[b2, d])  # chunk 2 became zeros
    assert child.chunks == (a, b2, d)
    with pytest.raises(ValueError):
        merge_maps(parent, changed=[0], new=[b2])


def test_incremental_plan_reads_only_changed_extents() -> None:
    size = 4 * C
    parent = ChunkMap(size, C, (ref(0, b"a" * C), ref(C, b"b" * C)))
    plan = plan_backup(size, C, data=[Extent(C + 10, 100)], zeroed=[Extent(0, C)], parent=parent)
    assert plan.changed == [0, C]
    assert plan.pieces == {C: [Extent(C + 10, 100)]}
    assert plan.zeroed == {0: [Extent(0, C)]}
    full = plan_backup(size, C, data=[Extent(0, 2 * C)], zeroed=[], parent=None)
    assert full.changed == [0, C] and full.zeroed == {}


def test_full_read_reasons() -> None:
    parent = ChunkMap(4 * C, C)
    assert full_read_reason(4 * C, C, parent, "savepoint-base-x") is None
    assert "no earlier backup" in (full_read_reason(4 * C, C, None, None) or "")
    assert "base snapshot" in (full_read_reason(4 * C, C, parent, None) or "")
    assert "size changed" in (full_read_reason(5 * C, C, parent, "b") or "")
    assert "chunk size" in (full_read_reason(4 * C, C // 2, parent, "b") or "")


# ---- GC decisions -----------------------------------------------------------------------------


def test_gc_plan_removes_only_chunks_no_backup_uses() -> None:
    plan = gc_plan(stored={"a", "b", "c", "d"}, references={"full": {"a", "b"}, "incr": {"b", "c", "e"}})
    assert plan.remove == {"d"}
    assert plan.keep == {"a", "b", "c"}
    assert plan.refcounts == {"a": 1, "b": 2, "c": 1, "e": 1}
    assert plan.missing == {"e"}
    # deleting the full backup: its exclusive chunk goes, the shared one stays
    assert gc_plan({"a", "b", "c"}, {"incr": {"b", "c"}}).remove == {"a"}
    assert gc_plan({"a"}, {}).remove == {"a"}


# ---- the store on a local directory ------------------------------------------------------------


def test_put_is_atomic_sparse_and_get_checks_the_hash(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ns" / "uid")
    data = bytearray(C)
    data[MiB:MiB + 8192] = os.urandom(8192)
    d = digest(bytes(data))
    assert store.put(d, data) == 8192  # only the non-zero run is written
    path = store.path_of(d)
    assert path.parent.name == d[:2] and path.stat().st_size == C
    assert path.stat().st_blocks * 512 < 256 * 1024  # a hole, not 4 MiB of zeros
    assert store.get(d, C) == bytes(data)
    assert not list(path.parent.glob("*.tmp"))
    path.write_bytes(b"\1" + bytes(data)[1:])
    with pytest.raises(CorruptChunk, match=d) as bad:
        store.get(d, C, offset=3 * C)
    assert bad.value.offset == 3 * C and "does not match" in bad.value.problem
    with pytest.raises(CorruptChunk, match="missing"):
        store.get("0" * 64, C)


def _backup(source: Path, name: str, refs: list[ChunkRef], *, final: bool) -> None:
    m = ChunkMap(8 * C, C, tuple(refs))
    if final:
        (source / name).mkdir(parents=True, exist_ok=True)
        (source / name / "backup.json").write_text(json.dumps({"name": name, "blocks": m.to_dict()}))
    else:
        chunks.write_chunk_map(source / name, m)


def test_collect_garbage_after_deleting_a_backup_keeps_shared_chunks(tmp_path: Path) -> None:
    source = tmp_path / "ns" / "uid"
    store = ChunkStore(source)
    blobs = [bytes([i]) * C for i in range(1, 5)]
    for blob in blobs:
        store.put(digest(blob), blob)
    r = [ref(i * C, b) for i, b in enumerate(blobs)]
    _backup(source, "full", [r[0], r[1], r[2]], final=True)
    _backup(source, "incr", [r[0], r[1], ChunkRef(2 * C, C, digest(blobs[3]))], final=True)
    # an orphan temp file from a killed writer
    (store.root / "ff").mkdir()
    (store.root / "ff" / ".ff00.deadbeef.tmp").write_bytes(b"partial")
    first = collect_garbage(source)
    assert (first.removed, first.temp_files_removed) == (0, 1)  # everything still used; the temp file goes
    import shutil

    shutil.rmtree(source / "full")
    result = collect_garbage(source)
    assert (result.removed, result.kept, result.temp_files_removed, result.backups) == (1, 3, 0, 1)
    assert not store.path_of(digest(blobs[2])).exists()
    assert all(store.path_of(digest(b)).exists() for b in (blobs[0], blobs[1], blobs[3]))
    assert collect_garbage(source).removed == 0  # idempotent: a rerun after a crash finds nothing more


def test_gc_counts_an_unfinished_backup_chunk_map_as_live(tmp_path: Path) -> None:
    source = tmp_path / "s"
    store = ChunkStore(source)
    blob = b"\7" * C
    store.put(digest(blob), blob)
    _backup(source, "running", [ref(0, blob)], final=False)  # chunkmap.json, no backup.json yet
    assert collect_garbage(source).removed == 0
    (source / "running" / "chunkmap.json").unlink()  # the backup failed and was cleaned up
    assert collect_garbage(source).removed == 1


def test_gc_refuses_to_guess_when_a_manifest_is_unreadable(tmp_path: Path) -> None:
    source = tmp_path / "s"
    store = ChunkStore(source)
    blob = b"\3" * C
    store.put(digest(blob), blob)
    (source / "broken").mkdir()
    (source / "broken" / "backup.json").write_text("{not json")
    with pytest.raises(BadChunkMap, match="broken"):
        collect_garbage(source)
    assert store.path_of(digest(blob)).exists()


def test_gc_waits_for_running_backups_through_the_lock(tmp_path: Path) -> None:
    source = tmp_path / "s"
    store = ChunkStore(source)
    with store.locked(exclusive=False):
        with pytest.raises(RepositoryBusy):
            collect_garbage(source)
        with ChunkStore(source).locked(exclusive=False, wait=False):
            pass  # readers share
    collect_garbage(source)


def test_data_runs_find_non_zero_blocks() -> None:
    data = bytearray(64 * 1024)
    data[5000] = 1
    data[20000:30000] = b"\1" * 10000
    runs = chunks.data_runs(data)
    assert runs == [Extent(4096, 4096), Extent(16384, 16384)]
    assert chunks.data_runs(bytes(10)) == []
    assert chunks.data_runs(b"\1" * 5000) == [Extent(0, 5000)]


def test_gc_of_the_last_backup_removes_the_store_and_waiters_lock_the_new_one(tmp_path: Path) -> None:
    source = tmp_path / "s"
    store = ChunkStore(source)
    blob = b"\5" * C
    store.put(digest(blob), blob)
    _backup(source, "only", [ref(0, blob)], final=True)
    import shutil

    shutil.rmtree(source / "only")
    assert collect_garbage(source).removed == 1
    assert not store.root.exists()
    source.rmdir()  # nothing of the source is left
    import threading

    held, release = threading.Event(), threading.Event()

    def later_backup() -> None:
        with ChunkStore(source).locked(exclusive=False):  # waits on the GC's lock file, then finds it gone
            held.set()
            release.wait(30)

    with store.locked(exclusive=True):
        waiter = threading.Thread(target=later_backup)
        waiter.start()
        shutil.rmtree(store.root)  # what a GC does to an emptied store while holding the lock
    assert held.wait(30)
    try:
        with pytest.raises(RepositoryBusy), ChunkStore(source).locked(exclusive=True, wait=False):
            pass  # the waiter holds the *new* lock file
    finally:
        release.set()
        waiter.join()
