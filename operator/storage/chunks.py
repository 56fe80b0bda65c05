"""Content-addressed, sparse chunk store for block-volume backups; no Kubernetes in here.

Layout inside a backup repository (see ``docs/repository.md``, "Block volumes")::

    <repo>/<namespace>/<source-uid>/
        .chunks/.lock                flock: backups/restores share it, garbage collection takes it alone
        .chunks/ab/abcdef0123...     one file per distinct chunk content, named by its sha256
        <backup-name>/chunkmap.json  the chunk map, written (atomically) before backup.json
        <backup-name>/backup.json    the manifest (written last); its ``blocks`` section holds the same map

(``storage.repository`` owns the rest of the layout; the chunk store is
dot-named so no backup name can collide with it.)

A volume is cut into fixed chunks (4 MiB by default, aligned to the volume's
start; the last one may be shorter).  A chunk's name is the sha256 of its
*logical* content (holes read as zeros), so equal chunks of any backup of the
same source are stored once.  Chunks that read as all zeros are not stored at
all, and the zero runs inside a stored chunk are left as holes in its file, so
the repository holds about as many bytes as the volume has data.

The chunk map of a backup (``ChunkMap``) lists ``[offset, length, sha256]`` for
every chunk with data; everything else reads as zeros.  Because a chunk's digest
is exactly the block digest of ``sparse.ContentHasher`` (same block size), the
image checksum (``sp1-sha256:...``) follows from the map alone, without reading
anything: an incremental backup has one as well.

Backups read an RBD image at a snapshot through librbd: everything allocated
(full), or only the extents changed since a base snapshot (``rbd diff``;
incremental), inheriting the parent backup's chunks for everything else.  A
chunk written partly by the change is completed from the parent's chunk in the
store, so bytes read from the volume equal the changed bytes.

Garbage collection is mark and sweep under the store's exclusive lock: the live
set is every chunk any ``backup.json`` or ``chunkmap.json`` of the source names;
everything else goes.  A crash mid-sweep leaves only garbage for the next run,
never a missing chunk, because writers hold the shared lock from the moment they
decide to reuse a chunk until their chunk map is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from savepoint.storage import extents as ext
from savepoint.storage.errors import SizeMismatch, StorageError, VerifyFailed, from_errno
from savepoint.storage.extents import Extent

MiB = 1 << 20
DEFAULT_CHUNK_SIZE = 4 * MiB  # the RBD object size: one chunk is one RADOS object
FORMAT = "savepoint-chunks/1"  # the chunk map's format: bump when the layout or hashing changes
HASH_NAME = "sha256"
CHECKSUM_FORMAT = "sp1-sha256"  # image checksum, the format of sparse.ContentHasher
HOLE_GRAIN = 4096  # zero runs this long (aligned) stay holes in chunk files and are not written on restore
CHUNKS_DIR = ".chunks"  # = repository.CHUNKS_DIR
LOCK_FILE = ".lock"
CHUNK_MAP_FILE = "chunkmap.json"  # = repository.CHUNK_MAP_FILE
MANIFEST_FILE = "backup.json"  # = repository.MANIFEST_FILE
DEFAULT_DEPTH = 8  # aio reads/writes in flight
DEFAULT_WORKERS = 2  # threads hashing and writing chunk files (hashlib and file I/O release the GIL)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


# ---- errors -----------------------------------------------------------------------------


class RepositoryBusy(StorageError):
    """Another mover holds the chunk store's lock (garbage collection waits for backups and restores)."""

    reason = "RepositoryBusy"


class CorruptChunk(VerifyFailed):
    """A chunk file is missing, has the wrong size, or its content does not match its name."""

    reason = "VerificationFailed"

    def __init__(self, digest: str, offset: int | None, problem: str, path: Path | None = None) -> None:
        where = f" (volume offset {offset})" if offset is not None else ""
        super().__init__(f"chunk {digest}{where}: {problem}" + (f" [{path}]" if path else ""))
        self.digest = digest
        self.offset = offset
        self.problem = problem


class BadChunkMap(StorageError):
    """A chunk map (in ``backup.json`` or ``chunkmap.json``) is malformed or inconsistent."""

    reason = "BackupDataMissing"


# ---- the chunk map (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class ChunkRef:
    """One stored chunk of a volume: ``length`` bytes at ``offset`` with content ``digest`` (hex sha256)."""

    offset: int
    length: int
    digest: str

    @property
    def end(self) -> int:
        return self.offset + self.length


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


@functools.lru_cache(maxsize=4)
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(_zeros(length)).digest()


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    # memcmp against cached zeros; ``startswith`` takes any buffer at C speed, where ``memoryview ==``
    # compares element by element (60x slower)
    return _zeros(len(data)).startswith(data)


def chunk_length(offset: int, size: int, chunk_size: int) -> int:
    return min(chunk_size, size - offset)


def chunk_offsets(extents: Iterable[tuple[int, int]], chunk_size: int, size: int) -> list[int]:
    """Start offsets of the chunks that ``extents`` touch (sorted, unique, inside ``size``)."""
    found: set[int] = set()
    for offset, length in ext.clip(extents, size):
        first = offset // chunk_size
        last = (offset + length - 1) // chunk_size
        found.update(i * chunk_size for i in range(first, last + 1))
    return sorted(found)


def pieces_by_chunk(extents: Iterable[tuple[int, int]], chunk_size: int, size: int) -> dict[int, list[Extent]]:
    """``extents`` cut at chunk boundaries, grouped by chunk start (each list sorted)."""
    grouped: dict[int, list[Extent]] = {}
    for piece in ext.split(ext.clip(extents, size), chunk_size):
        grouped.setdefault(piece.offset - piece.offset % chunk_size, []).append(piece)
    return grouped


@dataclass(frozen=True)
class ChunkMap:
    """Which chunks make up one backup of a volume of ``size`` bytes; everything not listed reads as zeros."""

    size: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunks: tuple[ChunkRef, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.size < 0 or self.chunk_size <= 0:
            raise BadChunkMap(f"chunk map: bad size {self.size} or chunk size {self.chunk_size}")
        previous = -1
        for ref in self.chunks:
            if ref.offset % self.chunk_size or ref.offset <= previous:
                raise BadChunkMap(f"chunk map: offset {ref.offset} is not a chunk boundary or not in order")
            if ref.offset >= self.size or ref.length != chunk_length(ref.offset, self.size, self.chunk_size):
                raise BadChunkMap(f"chunk map: chunk at {ref.offset} has length {ref.length}, "
                                  f"expected {chunk_length(ref.offset, self.size, self.chunk_size)} "
                                  f"(volume size {self.size}, chunk size {self.chunk_size})")
            if len(ref.digest) != 64 or any(c not in "0123456789abcdef" for c in ref.digest):
                raise BadChunkMap(f"chunk map: chunk at {ref.offset} has no sha256 hex digest: {ref.digest!r}")
            previous = ref.offset

    # --- facts ---

    def by_offset(self) -> dict[int, ChunkRef]:
        return {ref.offset: ref for ref in self.chunks}

    @property
    def data_bytes(self) -> int:
        """Logical bytes covered by stored chunks (the rest of the volume is zeros)."""
        return sum(ref.length for ref in self.chunks)

    def digests(self) -> set[str]:
        return {ref.digest for ref in self.chunks}

    def checksum(self) -> str:
        """The image checksum (``sparse.ContentHasher`` format with block = chunk size), from the map alone."""
        outer = hashlib.sha256(f"{CHECKSUM_FORMAT} size={self.size} block={self.chunk_size}\n".encode())
        stored = self.by_offset()
        for offset in range(0, self.size, self.chunk_size):
            ref = stored.get(offset)
            outer.update(bytes.fromhex(ref.digest) if ref else zero_digest(chunk_length(offset, self.size,
                                                                                         self.chunk_size)))
        return f"{CHECKSUM_FORMAT}:{outer.hexdigest()}"

    # --- serialisation: the ``blocks`` section of backup.json ---

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "hash": HASH_NAME, "size": self.size, "chunkSize": self.chunk_size,
                "checksum": self.checksum(), "dataBytes": self.data_bytes, "chunkCount": len(self.chunks),
                "chunks": [[ref.offset, ref.length, ref.digest] for ref in self.chunks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, check_checksum: bool = True) -> ChunkMap:
        """Parse the ``blocks`` section; with ``check_checksum`` the recorded image checksum must match the map."""
        if data.get("format") != FORMAT:
            raise BadChunkMap(f"chunk map format {data.get('format')!r} is not {FORMAT!r}")
        if data.get("hash", HASH_NAME) != HASH_NAME:
            raise BadChunkMap(f"chunk map hash {data.get('hash')!r} is not {HASH_NAME}")
        try:
            refs = tuple(ChunkRef(int(o), int(n), str(d)) for o, n, d in data.get("chunks") or [])
            result = cls(size=int(data["size"]), chunk_size=int(data["chunkSize"]), chunks=refs)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadChunkMap(f"chunk map is malformed: {exc}") from exc
        recorded = data.get("checksum")
        if check_checksum and recorded and recorded != result.checksum():
            raise BadChunkMap(f"chunk map does not match its recorded checksum {recorded}")
        return result


def merge_maps(parent: ChunkMap, changed: Iterable[int], new: Iterable[ChunkRef]) -> ChunkMap:
    """A child map: the parent's chunks, except at the ``changed`` chunk offsets, where ``new`` (or a hole) is."""
    changed_set = set(changed)
    new_by_offset = {ref.offset: ref for ref in new}
    stray = set(new_by_offset) - changed_set
    if stray:
        raise ValueError(f"new chunks at offsets not marked changed: {sorted(stray)[:5]}")
    kept = {ref.offset: ref for ref in parent.chunks if ref.offset not in changed_set}
    kept.update(new_by_offset)
    return ChunkMap(parent.size, parent.chunk_size, tuple(kept[o] for o in sorted(kept)))


# ---- garbage collection decisions (pure) ------------------------------------------------


@dataclass(frozen=True)
class GcPlan:
    """What a sweep removes and keeps; ``refcounts`` counts the backups naming each live chunk."""

    remove: frozenset[str]
    keep: frozenset[str]
    refcounts: Mapping[str, int]
    missing: frozenset[str]  # referenced but not in the store: those backups are damaged


def gc_plan(stored: Iterable[str], references: Mapping[str, Iterable[str]]) -> GcPlan:
    """Which ``stored`` chunks no backup in ``references`` (backup -> digests) uses any more."""
    counts: dict[str, int] = {}
    for digests in references.values():
        for digest in set(digests):
            counts[digest] = counts.get(digest, 0) + 1
    stored_set = set(stored)
    return GcPlan(remove=frozenset(stored_set - counts.keys()), keep=frozenset(stored_set & counts.keys()),
                  refcounts=counts, missing=frozenset(counts.keys() - stored_set))


# ---- the store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingChunk:
    """A chunk written to its temp file, waiting for ``ChunkStore.commit``."""

    tmp: Path
    final: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems refuse fsync on directories; the rename is durable there
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def data_runs(data: bytes | bytearray | memoryview, grain: int = HOLE_GRAIN) -> list[Extent]:
    """Runs of ``data`` that are not all zeros, at ``grain`` alignment (relative offsets)."""
    view = memoryview(data)
    coarse = grain * 16  # zero regions are skipped 16 blocks at a time: a mostly empty chunk costs little
    zero = _zeros(coarse)  # zero.startswith(x): x is all zeros (memcmp; see is_zero)
    runs: list[Extent] = []
    start = -1
    length = len(view)
    for outer in range(0, length, coarse):
        span = view[outer:outer + coarse]
        if len(span) == coarse and zero.startswith(span):
            if start >= 0:
                runs.append(Extent(start, outer - start))
                start = -1
            continue
        for pos in range(outer, min(outer + coarse, length), grain):
            nonzero = not zero.startswith(view[pos:pos + grain])
            if nonzero and start < 0:
                start = pos
            elif not nonzero and start >= 0:
                runs.append(Extent(start, pos - start))
                start = -1
    if start >= 0:
        runs.append(Extent(start, length - start))
    return runs


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` appears whole or not at all: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ChunkStore:
    """The chunks of one source: ``<source_dir>/chunks``; ``source_dir`` also holds that source's backups."""

    def __init__(self, source_dir: str | os.PathLike[str]) -> None:
        self.source_dir = Path(source_dir)
        self.root = self.source_dir / CHUNKS_DIR
        self._lock_fd: int | None = None

    def path_of(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    # --- locking ---

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """flock on ``.chunks/.lock``: shared for backups, restores and verification, exclusive for GC.

        On NFS the kernel maps flock to NFSv4 byte-range locks, released when
        the holder dies (lease expiry), so a killed mover never wedges the store.
        GC removes an emptied store, lock file included, while holding the
        lock: whoever waited on the old file notices and locks the new one.
        """
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        lock_path = self.root / LOCK_FILE
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exclusive or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                fd = os.open(lock_path, os.O_RDONLY)  # a read-only mount (restore, verify): reading may share
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                raise RepositoryBusy(
                    f"the chunk store {self.root} is in use by "
                    + ("a running backup, restore or verification" if exclusive else "a garbage collection"),
                    errno=errno.EWOULDBLOCK) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                mine, current = os.fstat(fd), os.stat(lock_path)
                if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the store was removed while we waited: lock the new one
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- chunks ---

    def has(self, digest: str, length: int) -> bool:
        try:
            return self.path_of(digest).stat().st_size == length
        except FileNotFoundError:
            return False

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> int:
        """Store ``data`` under ``digest`` (already computed by the caller), durably; returns the data bytes written.

        Zero runs stay holes (``HOLE_GRAIN``), so a chunk with little data takes
        little space.  Atomic: temp file, fsync, rename; the directory is
        fsynced by ``sync``.  Many chunks at once: ``write_pending`` + ``commit``.
        """
        stored, pending = self.write_pending(digest, data)
        self.commit([pending])
        return stored

    def write_pending(self, digest: str, data: bytes | bytearray | memoryview) -> tuple[int, PendingChunk]:
        """Write a chunk's temp file (not yet durable, not yet named); ``commit`` makes it a chunk."""
        final = self.path_of(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{digest}.{uuid.uuid4().hex[:8]}.tmp")
        view = memoryview(data)
        runs = data_runs(view)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for run in runs:
                os.pwrite(fd, view[run.offset:run.end], run.offset)
            os.ftruncate(fd, len(view))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return ext.total(runs), PendingChunk(tmp, final)

    def commit(self, pending: list[PendingChunk], workers: int = 4) -> None:
        """fsync every temp file (in parallel: the filesystem commits them together), then rename each into
        place.  A chunk file is named only once its data is on disk, so a crash never leaves a named chunk
        with missing data; unnamed temp files are garbage for ``collect_garbage``."""
        if not pending:
            return

        def flush(item: PendingChunk) -> None:
            fd = os.open(item.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        if len(pending) == 1:
            flush(pending[0])
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(pending)), thread_name_prefix="fsync") as pool:
                list(pool.map(flush, pending))
        for item in pending:
            os.replace(item.tmp, item.final)

    def get(self, digest: str, length: int, *, offset: int | None = None, verify: bool = True) -> bytes:
        """A chunk's content; ``CorruptChunk`` (naming it and ``offset``) if missing, short or not matching."""
        path = self.path_of(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(length + 1)
        except FileNotFoundError:
            raise CorruptChunk(digest, offset, "missing from the repository", path) from None
        if len(data) != length:
            raise CorruptChunk(digest, offset, f"has {len(data)} bytes, expected {length}", path)
        if verify and hashlib.sha256(data).hexdigest() != digest:
            raise CorruptChunk(digest, offset, "content does not match its sha256 (corrupted)", path)
        return data

    def sync(self, digests: Iterable[str] = ()) -> None:
        """fsync the directories of ``digests`` (their renames) and ``chunks/`` itself."""
        for sub in sorted({d[:2] for d in digests}):
            if (self.root / sub).is_dir():
                _fsync_dir(self.root / sub)
        if self.root.is_dir():
            _fsync_dir(self.root)

    def list(self) -> tuple[set[str], list[Path]]:
        """(digests of stored chunks, leftover temp files)."""
        digests: set[str] = set()
        temps: list[Path] = []
        if not self.root.is_dir():
            return digests, temps
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for entry in sub.iterdir():
                if entry.name.endswith(".tmp"):
                    temps.append(entry)
                elif len(entry.name) == 64 and entry.name.startswith(sub.name):
                    digests.add(entry.name)
        return digests, temps

    def stored_bytes(self) -> int:
        """Bytes the chunk files occupy on disk (holes not counted)."""
        total = 0
        digests, _ = self.list()
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                total += self.path_of(digest).stat().st_blocks * 512
        return total


# ---- chunk maps on disk ------------------------------------------------------------------


def write_chunk_map(backup_dir: Path, chunk_map: ChunkMap, extra: Mapping[str, Any] | None = None) -> None:
    """``<backup_dir>/chunkmap.json``, atomically: what GC counts as live while backup.json is not there yet."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    body = {**chunk_map.to_dict(), **(extra or {})}
    write_atomic(backup_dir / CHUNK_MAP_FILE, json.dumps(body, separators=(",", ":")).encode())


def read_chunk_map(backup_dir: Path) -> dict[str, Any] | None:
    """The ``blocks`` section of ``backup.json``, else ``chunkmap.json``, else None (not a block backup yet)."""
    manifest = backup_dir / MANIFEST_FILE
    if manifest.is_file():
        try:
            blocks = json.loads(manifest.read_text()).get("blocks")
        except (OSError, ValueError) as exc:
            raise BadChunkMap(f"{manifest} is unreadable: {exc}") from exc
        if blocks:
            return dict(blocks)
    partial = backup_dir / CHUNK_MAP_FILE
    if partial.is_file():
        try:
            return dict(json.loads(partial.read_text()))
        except (OSError, ValueError) as exc:
            raise BadChunkMap(f"{partial} is unreadable: {exc}") from exc
    return None


def load_chunk_map(backup_dir: Path) -> ChunkMap:
    data = read_chunk_map(backup_dir)
    if data is None:
        raise BadChunkMap(f"{backup_dir} holds no chunk map (no backup.json blocks section, no {CHUNK_MAP_FILE})")
    return ChunkMap.from_dict(data)


def references(source_dir: Path, *, skip: Iterable[str] = ()) -> dict[str, set[str]]:
    """backup name -> digests it uses, for every backup directory of the source (but ``skip``).

    A manifest that cannot be read stops the collection (``BadChunkMap``):
    deleting chunks on a guess could break a backup.
    """
    skipped = set(skip)
    found: dict[str, set[str]] = {}
    if not source_dir.is_dir():
        return found
    for entry in sorted(source_dir.iterdir()):
        if not entry.is_dir() or entry.name == CHUNKS_DIR or entry.name in skipped or entry.name.startswith("."):
            continue
        data = read_chunk_map(entry)
        if data is None:
            continue
        try:
            found[entry.name] = {str(c[2]) for c in data.get("chunks") or []}
        except (IndexError, TypeError) as exc:
            raise BadChunkMap(f"{entry}: chunk list is malformed: {exc}") from exc
    return found


def _other_entries(source: Path) -> list[str]:
    return [e.name for e in source.iterdir() if e.name != CHUNKS_DIR]


@dataclass(frozen=True)
class GcResult:
    removed: int
    kept: int
    bytes_freed: int
    temp_files_removed: int
    backups: int  # backups of the source still referencing chunks
    missing: int  # chunks referenced by some backup but not stored (damaged backups)


def collect_garbage(source_dir: str | os.PathLike[str], *, skip: Iterable[str] = (), wait: bool = False) -> GcResult:
    """Remove every chunk of the source that no remaining backup references (idempotent, crash-safe).

    ``skip`` names backup directories to ignore (the one being deleted, when
    its directory is removed after the sweep).  Without ``wait`` a store in
    use raises ``RepositoryBusy`` at once, for the caller to retry.
    """
    source = Path(source_dir)
    store = ChunkStore(source)
    if not store.root.is_dir():
        return GcResult(0, 0, 0, 0, 0, 0)
    with store.locked(exclusive=True, wait=wait):
        refs = references(source, skip=skip)
        stored, temps = store.list()
        plan = gc_plan(stored, refs)
        freed = 0
        for digest in sorted(plan.remove):
            path = store.path_of(digest)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_blocks * 512
                path.unlink()
        for tmp in temps:  # no writer runs while we hold the lock: every temp file is a crashed writer's
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        touched = {d[:2] for d in plan.remove} | {t.parent.name for t in temps}
        for sub in sorted(touched):
            subdir = store.root / sub
            with contextlib.suppress(OSError):  # not empty: fine
                subdir.rmdir()
        if not plan.keep and not _other_entries(source):
            # the source's last backup is gone: the store goes too (still under its lock, see ``locked``)
            shutil.rmtree(store.root, ignore_errors=True)
            with contextlib.suppress(OSError):
                _fsync_dir(source)
        else:
            store.sync()
        return GcResult(removed=len(plan.remove), kept=len(plan.keep), bytes_freed=freed,
                        temp_files_removed=len(temps), backups=len(refs), missing=len(plan.missing))


# ---- backing up an RBD image --------------------------------------------------------------


@dataclass
class BackupResult:
    """What one backup read, stored and produced."""

    chunk_map: ChunkMap
    bytes_read: int = 0  # from the volume (librbd)
    bytes_read_repository: int = 0  # parent chunks read to complete partly changed chunks
    bytes_stored: int = 0  # data bytes written into new chunk files
    chunks_changed: int = 0  # chunks this backup computed (the rest are inherited)
    chunks_new: int = 0  # ... of which were written to the store
    chunks_reused: int = 0  # ... of which the store already had (dedup)
    chunks_inherited: int = 0  # taken from the parent map unread
    chunks_zero: int = 0  # changed chunks that read as zeros (holes, not stored)
    chunks_reread: int = 0  # partly changed chunks read whole from the volume: the parent's copy was bad
    extents: int = 0  # data extents read
    full_read_reason: str | None = None  # why this was not incremental (None: it was)
    new_digests: set[str] = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)  # plan (rbd diff), copy, sync

    def summary(self) -> dict[str, Any]:
        """Small and JSON-friendly (the mover's termination message)."""
        return {"bytesRead": self.bytes_read, "bytesReadRepository": self.bytes_read_repository,
                "bytesStored": self.bytes_stored, "chunkCount": len(self.chunk_map.chunks),
                "chunksChanged": self.chunks_changed, "chunksNew": self.chunks_new,
                "chunksReused": self.chunks_reused, "chunksInherited": self.chunks_inherited,
                "chunksZero": self.chunks_zero, "chunksReread": self.chunks_reread, "extents": self.extents,
                "size": self.chunk_map.size,
                "dataBytes": self.chunk_map.data_bytes, "checksum": self.chunk_map.checksum(),
                "incremental": self.full_read_reason is None, "fullReadReason": self.full_read_reason,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


@dataclass(frozen=True)
class _Plan:
    """The chunks one backup computes, and the pieces of the volume it reads for them."""

    changed: list[int]  # chunk offsets computed by this backup
    pieces: dict[int, list[Extent]]  # chunk offset -> extents to read from the volume
    zeroed: dict[int, list[Extent]]  # chunk offset -> extents that became zero (incremental)
    parent: ChunkMap | None


def plan_backup(size: int, chunk_size: int, data: list[Extent], zeroed: list[Extent],
                parent: ChunkMap | None) -> _Plan:
    """Pure: which chunks to compute and which bytes to read (``data``/``zeroed`` from ``rbd diff``)."""
    pieces = pieces_by_chunk(data, chunk_size, size)
    zero_pieces = pieces_by_chunk(zeroed, chunk_size, size) if parent is not None else {}
    changed = sorted(set(pieces) | set(zero_pieces))
    return _Plan(changed=changed, pieces=pieces, zeroed=zero_pieces, parent=parent)


def full_read_reason(size: int, chunk_size: int, parent: ChunkMap | None, base_snapshot: str | None) -> str | None:
    """Why a backup cannot be incremental to ``parent`` (None: it can); pure."""
    if parent is None:
        return "no earlier backup of this source to build on"
    if base_snapshot is None:
        return "the earlier backup's base snapshot is gone from the volume"
    if parent.size != size:
        return f"the volume's size changed from {parent.size} to {size} bytes since the earlier backup"
    if parent.chunk_size != chunk_size:
        return f"the chunk size changed from {parent.chunk_size} to {chunk_size} bytes"
    return None


def _read_pieces(image: Any, pieces: Iterable[Extent], depth: int) -> Generator[tuple[Extent, bytes], None, None]:
    from savepoint.storage.sparse import read_ahead  # needs librbd; imported late so this module stays pure

    return read_ahead(image, pieces, depth)


@dataclass(frozen=True)
class _Finished:
    """One computed chunk, from a worker thread: ``ref`` None for zeros, ``written`` None when reused."""

    ref: ChunkRef | None
    stored: int = 0  # data bytes written to the new chunk file
    parent_bytes: int = 0  # parent chunk bytes read from the repository
    written: PendingChunk | None = None
    reread: int = 0  # bytes read from the volume beyond the change, because the parent's chunk was bad


COMMIT_BATCH = 32  # new chunks made durable together (parallel fsyncs share the filesystem's commits)


def backup_image(
    image: Any,
    store: ChunkStore,
    *,
    base_snapshot: str | None = None,
    parent: ChunkMap | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Progress | None = None,
    depth: int = DEFAULT_DEPTH,
    workers: int = DEFAULT_WORKERS,
    known_reason: str | None = None,
) -> BackupResult:
    """Back up the open librbd ``image`` (a handle at the snapshot to back up) into ``store``.

    Incremental when ``parent`` (the previous backup's map) and
    ``base_snapshot`` (the snapshot of the volume that map was made from) are
    given and fit: only extents changed since ``base_snapshot`` are read.
    Otherwise everything allocated is read and ``full_read_reason`` says why
    (``known_reason`` overrides the message, e.g. "the base snapshot is gone").
    The caller holds ``store.locked(exclusive=False)`` until the map is written.
    """
    from savepoint.storage import rbd  # librbd, late: see _read_pieces

    started = time.monotonic()
    size = int(image.size())
    reason = known_reason or full_read_reason(size, chunk_size, parent, base_snapshot)
    if reason is None:
        data, zeroed = rbd.changed_extents(image, base_snapshot)
        work = plan_backup(size, chunk_size, data, zeroed, parent)
    else:
        data = rbd.allocated_extents(image)
        work = plan_backup(size, chunk_size, data, [], None)
    result = BackupResult(chunk_map=ChunkMap(size, chunk_size), full_read_reason=reason, extents=len(data))
    result.seconds["plan"] = time.monotonic() - started
    total = sum(ext.total(p) for p in work.pieces.values())
    parent_refs = work.parent.by_offset() if work.parent else {}
    new_refs: list[ChunkRef] = []
    done = 0
    if on_progress:
        on_progress(0, total)

    def finish_chunk(offset: int, got: list[tuple[Extent, bytes]]) -> _Finished:
        """Assemble, hash and (if new) write one chunk -- runs in a worker thread."""
        length = chunk_length(offset, size, chunk_size)
        parent_bytes = reread = 0
        if len(got) == 1 and got[0][0] == Extent(offset, length):
            buf: bytes | bytearray = got[0][1]  # the whole chunk in one read: no copy
        else:
            base = parent_refs.get(offset)
            covered = ext.total(piece for piece, _ in got)
            if base is not None and covered < length:
                try:
                    buf = bytearray(store.get(base.digest, base.length, offset=offset))
                    parent_bytes = length
                    for z in work.zeroed.get(offset, []):
                        buf[z.offset - offset:z.end - offset] = _zeros(z.length)
                except CorruptChunk:
                    # the parent's copy is damaged or gone: the snapshot has the whole chunk (holes read as
                    # zeros), so this backup is sound and the damage does not spread into it
                    buf = bytearray(image.read(offset, length))
                    reread = length
            else:
                buf = bytearray(length)
            for piece, chunk in got:
                buf[piece.offset - offset:piece.end - offset] = chunk
        if is_zero(buf):
            return _Finished(None, parent_bytes=parent_bytes, reread=reread)
        digest = hashlib.sha256(buf).hexdigest()
        with claims:  # two equal chunks in flight at once: one writes, the other counts as reused
            reused = digest in claimed or store.has(digest, length)
            claimed.add(digest)
        if reused:
            return _Finished(ChunkRef(offset, length, digest), parent_bytes=parent_bytes, reread=reread)
        stored, written = store.write_pending(digest, buf)
        return _Finished(ChunkRef(offset, length, digest), stored, parent_bytes, written, reread)

    claims = threading.Lock()
    claimed: set[str] = set()
    pending: deque[Future[_Finished]] = deque()
    uncommitted: list[PendingChunk] = []

    def collect(future: Future[_Finished]) -> None:
        done_chunk = future.result()
        ref, stored, written = done_chunk.ref, done_chunk.stored, done_chunk.written
        result.bytes_read_repository += done_chunk.parent_bytes
        result.bytes_read += done_chunk.reread
        result.chunks_reread += 1 if done_chunk.reread else 0
        if ref is None:
            result.chunks_zero += 1
            return
        new_refs.append(ref)
        if written is None:
            result.chunks_reused += 1
        else:
            result.chunks_new += 1
            result.bytes_stored += stored
            result.new_digests.add(ref.digest)
            uncommitted.append(written)
            if len(uncommitted) >= COMMIT_BATCH:
                store.commit(uncommitted)
                uncommitted.clear()

    all_pieces = (piece for offset in work.changed for piece in work.pieces.get(offset, []))
    reads = _read_pieces(image, all_pieces, depth)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunk") as pool:
        try:
            for offset in work.changed:
                got: list[tuple[Extent, bytes]] = []
                for _ in work.pieces.get(offset, []):
                    piece, chunk = next(reads)
                    got.append((piece, chunk))
                    done += piece.length
                result.bytes_read += sum(p.length for p, _ in got)
                pending.append(pool.submit(finish_chunk, offset, got))
                while len(pending) > workers * 2:
                    collect(pending.popleft())
                if on_progress:
                    on_progress(done, total)
            while pending:
                collect(pending.popleft())
            store.commit(uncommitted)
        finally:
            reads.close()
            for future in pending:
                future.cancel()
    result.seconds["copy"] = time.monotonic() - started - result.seconds["plan"]
    result.chunks_changed = len(work.changed)
    new_refs.sort(key=lambda r: r.offset)
    if work.parent is not None:
        result.chunk_map = merge_maps(work.parent, work.changed, new_refs)
        result.chunks_inherited = len(result.chunk_map.chunks) - len(new_refs)
    else:
        result.chunk_map = ChunkMap(size, chunk_size, tuple(new_refs))
    synced = time.monotonic()
    store.sync(result.new_digests)
    result.seconds["sync"] = time.monotonic() - synced
    return result


# ---- verifying --------------------------------------------------------------------------


@dataclass
class VerifyResult:
    chunks: int = 0
    bytes: int = 0
    bad: list[CorruptChunk] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self, limit: int = 8) -> dict[str, Any]:
        return {"chunksVerified": self.chunks, "bytesVerified": self.bytes, "badChunks": len(self.bad),
                "bad": [{"digest": b.digest, "offset": b.offset, "problem": b.problem} for b in self.bad[:limit]]}

    def message(self, limit: int = 5) -> str:
        named = "; ".join(str(b) for b in self.bad[:limit])
        more = f" (and {len(self.bad) - limit} more)" if len(self.bad) > limit else ""
        return f"{len(self.bad)} of {self.chunks} chunks are bad: {named}{more}"


def _prefetch(store: ChunkStore, refs: Iterable[ChunkRef], workers: int,
              verify: bool = True) -> Iterator[tuple[ChunkRef, bytes | CorruptChunk]]:
    """Chunks read (and hash-checked) by worker threads, in order, a few ahead."""
    def load(ref: ChunkRef) -> bytes | CorruptChunk:
        try:
            return store.get(ref.digest, ref.length, offset=ref.offset, verify=verify)
        except CorruptChunk as bad:
            return bad

    window: deque[tuple[ChunkRef, Future[bytes | CorruptChunk]]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunk-read") as pool:
        for ref in refs:
            window.append((ref, pool.submit(load, ref)))
            if len(window) > workers * 2:
                first, future = window.popleft()
                yield first, future.result()
        while window:
            first, future = window.popleft()
            yield first, future.result()


def verify_readable(store: ChunkStore, chunk_map: ChunkMap) -> None:
    """Cheap pre-flight of a restore: every chunk file exists with its size (``stat`` only, no reading).

    A backup whose chunks are gone then fails before the target is touched;
    the content is still checked chunk by chunk while restoring.
    """
    missing: list[CorruptChunk] = []
    for ref in chunk_map.chunks:
        path = store.path_of(ref.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            missing.append(CorruptChunk(ref.digest, ref.offset, "missing from the repository", path))
            continue
        if size != ref.length:
            missing.append(CorruptChunk(ref.digest, ref.offset, f"has {size} bytes, expected {ref.length}", path))
    if missing:
        first = missing[0]
        if len(missing) > 1:
            first.args = (f"{first} (and {len(missing) - 1} more chunks of {len(chunk_map.chunks)})",)
        raise first


def verify_chunks(store: ChunkStore, chunk_map: ChunkMap, *, on_progress: Progress | None = None,
                  workers: int = DEFAULT_WORKERS) -> VerifyResult:
    """Re-read every chunk of the map and check size and sha256; bad chunks are collected, not raised."""
    result = VerifyResult()
    total = chunk_map.data_bytes
    for ref, data in _prefetch(store, chunk_map.chunks, workers):
        result.chunks += 1
        if isinstance(data, CorruptChunk):
            result.bad.append(data)
        else:
            result.bytes += len(data)
        if on_progress:
            on_progress(result.bytes, total)
    return result


# ---- restoring into an RBD image ---------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    bytes_written: int  # data bytes written to the image
    bytes_discarded: int  # image bytes zeroed because the backup has none there
    chunks: int
    checksum: str  # of the backup's content (from the verified chunks)


def restore_image(
    store: ChunkStore,
    chunk_map: ChunkMap,
    image: Any,
    *,
    on_progress: Progress | None = None,
    depth: int = DEFAULT_DEPTH,
    workers: int = DEFAULT_WORKERS,
    readback: bool = False,
) -> RestoreResult:
    """Make the open, writable librbd ``image`` read exactly like the backup (zeros beyond its size).

    Sparse: only non-zero runs are written; the image's existing data where
    the backup has none is discarded (``write_zeroes``), never overwritten
    with a buffer of zeros.  Every chunk's sha256 is checked as it is read
    from the repository, before anything of it is written; a bad chunk stops
    the restore with ``CorruptChunk`` naming it.  With ``readback`` the image
    is read back at the end and compared with the backup's checksum.
    """
    from savepoint.storage import rbd
    from savepoint.storage.errors import ceph_errors
    from savepoint.storage.sparse import _Writer, content_checksum

    with ceph_errors("restoring a chunked backup"):
        dst_size = int(image.size())
        if dst_size < chunk_map.size:
            raise SizeMismatch(f"the target image has {dst_size} bytes, smaller than the backup's {chunk_map.size}")
        existing = rbd.allocated_extents(image)  # before writing: what must be discarded
        total = chunk_map.data_bytes
        written: list[Extent] = []
        done = 0
        if on_progress:
            on_progress(0, total)
        writer = _Writer(image, depth)
        try:
            for ref, data in _prefetch(store, chunk_map.chunks, workers):
                if isinstance(data, CorruptChunk):
                    raise data
                for run in data_runs(data):
                    part = data if run.length == len(data) else data[run.offset:run.end]
                    writer.write(part, ref.offset + run.offset)
                    written.append(Extent(ref.offset + run.offset, run.length))
                done += ref.length
                if on_progress:
                    on_progress(done, total)
            writer.drain()
        finally:
            writer.abandon()
        holes = ext.subtract(existing, written)
        for piece in ext.split(holes, chunk_map.chunk_size):
            image.write_zeroes(piece.offset, piece.length)
        image.flush()
        checksum = chunk_map.checksum()
        if readback:
            image.invalidate_cache()
            if chunk_map.chunk_size == DEFAULT_CHUNK_SIZE:
                got = content_checksum(image, length=chunk_map.size)
                if got != checksum:
                    raise VerifyFailed(f"read back after restore: the image's checksum {got} is not the backup's "
                                       f"{checksum}")
        return RestoreResult(bytes_written=ext.total(written), bytes_discarded=ext.total(holes),
                             chunks=len(chunk_map.chunks), checksum=checksum)


def errno_error(exc: OSError, what: str) -> StorageError:
    """An OSError from the repository as a StorageError (ENOSPC -> QuotaExceeded, ...)."""
    return from_errno(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}")
