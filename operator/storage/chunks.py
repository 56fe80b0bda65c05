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
import re
import shutil
import stat
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
from savepoint.storage.repository import BadBackupManifest, BadPath, Limits, parse_json, read_bounded

MiB = 1 << 20
DEFAULT_CHUNK_SIZE = 4 * MiB  # the RBD object size: one chunk is one RADOS object
ALLOWED_CHUNK_SIZES = frozenset(1 << n for n in range(20, 27))  # 1, 2, 4, ... 64 MiB: nothing else is read
MAX_CHUNK_INDEXES = 1 << 24  # size / chunkSize (64 TiB in 4 MiB chunks): bounds every loop over chunk positions
MAX_SNAPSHOT_ID = (1 << 64) - 1
MAX_SNAPSHOT_NAME = 512
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


class BadChunkMap(BadBackupManifest):
    """A chunk map (in ``backup.json`` or ``chunkmap.json``) is malformed, inconsistent or out of bounds.

    A ``BadBackupManifest`` (reason ``BadBackupManifest``) naming the file and the field."""

    reason = "BadBackupManifest"


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
        def bad(field: str, message: str) -> None:
            raise BadChunkMap("chunk map", field, message)

        if type(self.size) is not int or self.size < 0:
            bad("size", f"bad volume size {self.size!r}")
        if self.chunk_size not in ALLOWED_CHUNK_SIZES:
            bad("chunkSize", f"chunk size {self.chunk_size!r} is not one of {_allowed()}")
        if -(-self.size // self.chunk_size) > MAX_CHUNK_INDEXES:
            bad("size", f"{self.size} bytes in chunks of {self.chunk_size} is more than {MAX_CHUNK_INDEXES} chunks")
        previous = -1
        for i, ref in enumerate(self.chunks):
            if ref.offset % self.chunk_size or ref.offset <= previous:
                bad(f"chunks[{i}][0]", f"offset {ref.offset} is not a chunk boundary or not in order")
            if ref.offset >= self.size or ref.length != chunk_length(ref.offset, self.size, self.chunk_size):
                bad(f"chunks[{i}][1]", f"chunk at {ref.offset} has length {ref.length}, "
                    f"expected {chunk_length(ref.offset, self.size, self.chunk_size)} "
                    f"(volume size {self.size}, chunk size {self.chunk_size})")
            if not _is_hex_digest(ref.digest):
                bad(f"chunks[{i}][2]", f"chunk at {ref.offset} has no sha256 hex digest: {str(ref.digest)[:80]!r}")
            previous = ref.offset

    @classmethod
    def _checked(cls, size: int, chunk_size: int, chunks: tuple[ChunkRef, ...]) -> ChunkMap:
        """A map ``parse_section`` has validated already (no second pass over millions of chunks)."""
        made = object.__new__(cls)
        object.__setattr__(made, "size", size)
        object.__setattr__(made, "chunk_size", chunk_size)
        object.__setattr__(made, "chunks", chunks)
        return made

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
        """The image checksum (``sparse.ContentHasher`` format with block = chunk size), from the map alone.

        Runs of chunk positions without data are fed as repeated zero digests in bulk, so a map costs
        about one sha256 pass over 32 bytes per chunk position (``MAX_CHUNK_INDEXES`` at most), not a
        Python loop over them.
        """
        outer = hashlib.sha256(f"{CHECKSUM_FORMAT} size={self.size} block={self.chunk_size}\n".encode())
        count = -(-self.size // self.chunk_size)
        short = self.size - (count - 1) * self.chunk_size if count else 0  # length of the last chunk
        full_zero = zero_digest(self.chunk_size)
        bulk = full_zero * 4096

        def zeros(first: int, end: int) -> None:  # the zero digests of chunk positions first..end-1
            if end <= first:
                return
            last_is_short = end == count and short != self.chunk_size
            n = end - first - (1 if last_is_short else 0)
            while n > 0:
                k = min(n, 4096)
                outer.update(bulk if k == 4096 else full_zero * k)
                n -= k
            if last_is_short:
                outer.update(zero_digest(short))

        position = 0
        for ref in self.chunks:
            index = ref.offset // self.chunk_size
            zeros(position, index)
            outer.update(bytes.fromhex(ref.digest))
            position = index + 1
        zeros(position, count)
        return f"{CHECKSUM_FORMAT}:{outer.hexdigest()}"

    def checksum_naive(self) -> str:
        """``checksum`` position by position (the definition; tests compare the two)."""
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
    def from_dict(cls, data: Mapping[str, Any], *, check_checksum: bool = True, limits: Limits | None = None,
                  where: str = "chunk map", prefix: str = "") -> ChunkMap:
        """Parse the ``blocks`` section (``parse_section``); with ``check_checksum`` the recorded image checksum
        must match the map."""
        return parse_section(data, where=where, limits=limits, prefix=prefix, check_checksum=check_checksum)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKSUM_PREFIX = f"{CHECKSUM_FORMAT}:"


def _is_hex_digest(value: object) -> bool:
    return type(value) is str and _HEX64.fullmatch(value) is not None


def _allowed() -> str:
    return ", ".join(str(n) for n in sorted(ALLOWED_CHUNK_SIZES))


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float: JSON 1.0 or true is no size


def parse_section(data: Any, *, where: str = "chunk map", limits: Limits | None = None, prefix: str = "blocks",
                  check_checksum: bool = True) -> ChunkMap:
    """A chunk map read from the repository (``backup.json``'s ``blocks``, or ``chunkmap.json``), validated with
    bounds before any loop uses it; ``BadChunkMap(where, field, message)`` otherwise.

    Checks: format and hash known; ``size`` an integer in 0..``maxVolumeBytes``; ``chunkSize`` one of
    ``ALLOWED_CHUNK_SIZES``; at most ``MAX_CHUNK_INDEXES`` chunk positions; ``chunks`` a list of at most
    ceil(size/chunkSize) ``[offset, length, sha256]`` with integer offsets on chunk boundaries inside the
    volume, strictly increasing (no duplicates), each length the chunk's (the last may be short), 64
    lower-case hex digits; ``chunkCount`` and ``dataBytes`` (when there) equal to what the list says;
    ``checksum`` (when there) of the form ``sp1-sha256:<hex>`` and equal to the map's; the other known
    fields of the right type and size. The work is linear in the length of the list, which the file's
    size bounds (``maxManifestBytes``).
    """
    limits = limits or Limits()

    def name(field: str) -> str:
        return f"{prefix}.{field}" if prefix else field

    def bad(field: str, message: str) -> None:
        raise BadChunkMap(where, name(field), message)

    if not isinstance(data, Mapping):
        raise BadChunkMap(where, prefix or "(file)", "is not a JSON object")
    if data.get("format") != FORMAT:
        bad("format", f"chunk map format {str(data.get('format'))[:80]!r} is not {FORMAT!r}")
    if data.get("hash", HASH_NAME) != HASH_NAME:
        bad("hash", f"chunk map hash {str(data.get('hash'))[:80]!r} is not {HASH_NAME}")
    size = data.get("size")
    if not _is_int(size):
        bad("size", f"must be an integer number of bytes, not {type(size).__name__}")
    if size < 0:
        bad("size", f"{size} is negative")
    if size > limits.max_volume_bytes:
        bad("size", f"{size} bytes is more than the volume-size limit {limits.max_volume_bytes} (maxVolumeBytes)")
    chunk_size = data.get("chunkSize")
    if not _is_int(chunk_size) or chunk_size not in ALLOWED_CHUNK_SIZES:
        bad("chunkSize", f"{str(chunk_size)[:40]} is not one of the chunk sizes {_allowed()}")
    positions = -(-size // chunk_size)
    if positions > MAX_CHUNK_INDEXES:
        bad("size", f"{size} bytes in chunks of {chunk_size} is {positions} chunk positions, more than "
            f"{MAX_CHUNK_INDEXES}")
    entries = data.get("chunks", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        bad("chunks", f"must be a list, not {type(entries).__name__}")
    if len(entries) > positions:
        bad("chunks", f"lists {len(entries)} chunks; a volume of {size} bytes in chunks of {chunk_size} has "
            f"at most {positions}")
    refs: list[ChunkRef] = []
    previous = -1
    last = (positions - 1) * chunk_size if positions else 0
    short = size - last
    total = 0
    for i, entry in enumerate(entries):
        if type(entry) is not list or len(entry) != 3:
            bad(f"chunks[{i}]", "must be [offset, length, sha256]")
        offset, length, digest = entry
        if not _is_int(offset):
            bad(f"chunks[{i}][0]", f"offset must be an integer, not {type(offset).__name__}")
        if offset < 0 or offset >= size:
            bad(f"chunks[{i}][0]", f"offset {offset} is outside the volume (0..{size - 1})")
        if offset % chunk_size:
            bad(f"chunks[{i}][0]", f"offset {offset} is not a multiple of the chunk size {chunk_size}")
        if offset <= previous:
            bad(f"chunks[{i}][0]", f"offset {offset} does not follow {previous}: offsets must be strictly increasing "
                "(no duplicates)")
        expected = short if offset == last else chunk_size
        if not _is_int(length) or length != expected:
            bad(f"chunks[{i}][1]", f"length {str(length)[:40]} of the chunk at {offset} is not {expected}")
        if not _is_hex_digest(digest):
            bad(f"chunks[{i}][2]", f"{str(digest)[:80]!r} is not a sha256 digest (64 lower-case hex digits)")
        refs.append(ChunkRef(offset, length, digest))
        previous = offset
        total += length
    count = data.get("chunkCount")
    if count is not None and (not _is_int(count) or count != len(refs)):
        bad("chunkCount", f"{str(count)[:40]} is not the {len(refs)} chunks the map lists")
    data_bytes = data.get("dataBytes")
    if data_bytes is not None and (not _is_int(data_bytes) or data_bytes != total):
        bad("dataBytes", f"{str(data_bytes)[:40]} is not the {total} bytes the map's chunks cover")
    for key in ("baseSnapshot", "readSnapshot"):
        value = data.get(key)
        if value is not None and (type(value) is not str or len(value) > MAX_SNAPSHOT_NAME):
            bad(key, f"must be a snapshot name of at most {MAX_SNAPSHOT_NAME} characters")
    snapshot_id = data.get("snapshotId")
    if snapshot_id is not None and (not _is_int(snapshot_id) or not 0 <= snapshot_id <= MAX_SNAPSHOT_ID):
        bad("snapshotId", f"{str(snapshot_id)[:40]} is not an RBD snapshot id")
    image = data.get("image")
    if image is not None:
        if not isinstance(image, dict) or any(v is not None and (type(v) is not str or len(v) > MAX_SNAPSHOT_NAME)
                                              for v in image.values()) or len(image) > 8:
            bad("image", "must be {pool, namespace, image} of short strings")
    read_repo = data.get("bytesReadRepository")
    if read_repo is not None and (not _is_int(read_repo) or not 0 <= read_repo < 1 << 63):
        bad("bytesReadRepository", f"{str(read_repo)[:40]} is not a byte count")
    result = ChunkMap._checked(size, chunk_size, tuple(refs))
    recorded = data.get("checksum")
    if recorded is not None:
        if type(recorded) is not str or not recorded.startswith(_CHECKSUM_PREFIX) \
                or not _is_hex_digest(recorded[len(_CHECKSUM_PREFIX):]):
            bad("checksum", f"{str(recorded)[:100]!r} is not {CHECKSUM_FORMAT}:<64 hex digits>")
        if check_checksum and recorded != result.checksum():
            bad("checksum", f"the chunk map does not match its recorded checksum {recorded}")
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


def _real_dir(path: Path, what: str) -> bool:
    """True for a real directory, False when absent; ``BadPath`` for a symlink or anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise BadPath(f"{what} {path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'}; "
                      "the chunk store never follows one")
    return True


@contextlib.contextmanager
def _dir_fd(name: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    """A directory opened without following a symlink in its last component (``ELOOP``/``ENOTDIR``)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


class ChunkStore:
    """The chunks of one source: ``<source_dir>/.chunks``; ``source_dir`` also holds that source's backups.

    No symlink is ever followed inside the store: ``.chunks``, its two-hex-digit subdirectories and the
    chunk files are opened with ``O_NOFOLLOW`` (or ``lstat``-checked), and garbage collection works
    through directory file descriptors, so a link planted there can neither redirect a sweep nor
    make a restore read a file outside the store.
    """

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
            except OSError as exc:
                if exclusive or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
            _real_dir(self.root, "the chunk store")
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # a GC removed the emptied store between the mkdir and the open: make it again
            except OSError as exc:
                if exclusive or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # a read-only mount (restore, verify): reading may share
                fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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

    def _stat(self, digest: str) -> os.stat_result | None:
        """The chunk file's own stat (never a symlink's target); None when there is no regular file."""
        if not _real_dir(self.root / digest[:2], "chunk directory"):  # BadPath for a planted symlink
            return None
        try:
            st = os.lstat(self.path_of(digest))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def has(self, digest: str, length: int) -> bool:
        st = self._stat(digest)
        return st is not None and st.st_size == length

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
        _real_dir(self.root, "the chunk store")
        _real_dir(final.parent, "chunk directory")
        tmp = final.with_name(f".{digest}.{uuid.uuid4().hex[:8]}.tmp")
        view = memoryview(data)
        runs = data_runs(view)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
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
            if not _real_dir(path.parent, "chunk directory"):
                raise FileNotFoundError(path)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, BadPath):
            raise CorruptChunk(digest, offset, "missing from the repository", path) from None
        except OSError as exc:
            problem = "is a symlink, not a chunk file" if exc.errno == errno.ELOOP else f"cannot be read: {exc}"
            raise CorruptChunk(digest, offset, problem, path) from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CorruptChunk(digest, offset, "is not a regular file", path)
            data = f.read(length + 1)
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
        """(digests of stored chunks, leftover temp files); symlinks are neither (and never followed)."""
        digests: set[str] = set()
        temps: list[Path] = []
        if not _real_dir(self.root, "the chunk store"):
            return digests, temps
        with _dir_fd(self.root) as root_fd:
            for sub, names in _scan_store(root_fd):
                for entry_name, is_file in names:
                    if entry_name.endswith(".tmp") and is_file:
                        temps.append(self.root / sub / entry_name)
                    elif is_file and len(entry_name) == 64 and entry_name.startswith(sub) \
                            and _is_hex_digest(entry_name):
                        digests.add(entry_name)
        return digests, temps

    def stored_bytes(self) -> int:
        """Bytes the chunk files occupy on disk (holes not counted)."""
        total = 0
        digests, _ = self.list()
        for digest in digests:
            st = self._stat(digest)
            total += st.st_blocks * 512 if st else 0
        return total


def _scan_store(root_fd: int) -> list[tuple[str, list[tuple[str, bool]]]]:
    """``[(sub, [(name, is regular file)])]`` of the store's two-hex-digit directories, through fds only."""
    found: list[tuple[str, list[tuple[str, bool]]]] = []
    with os.scandir(root_fd) as it:
        subs = sorted(e.name for e in it if len(e.name) == 2 and e.is_dir(follow_symlinks=False))
    for sub in subs:
        try:
            with _dir_fd(sub, root_fd) as sub_fd, os.scandir(sub_fd) as it:
                found.append((sub, [(e.name, e.is_file(follow_symlinks=False)) for e in it]))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # replaced by a symlink since the scan: not ours to look into
                raise
    return found


# ---- chunk maps on disk ------------------------------------------------------------------


def write_chunk_map(backup_dir: Path, chunk_map: ChunkMap, extra: Mapping[str, Any] | None = None) -> None:
    """``<backup_dir>/chunkmap.json``, atomically: what GC counts as live while backup.json is not there yet."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    body = {**chunk_map.to_dict(), **(extra or {})}
    write_atomic(backup_dir / CHUNK_MAP_FILE, json.dumps(body, separators=(",", ":")).encode())


def read_chunk_map(backup_dir: Path, *, limits: Limits | None = None, where: str | None = None) -> ChunkMap | None:
    """The chunk map of a backup directory, validated (``parse_section``): ``backup.json``'s ``blocks`` section,
    else ``chunkmap.json``, else None (not a block backup yet).

    Both files are read bounded (``maxManifestBytes``; no symlink, no FIFO) and refused with
    ``BadChunkMap`` (a ``BadBackupManifest``) naming the file and field when anything is wrong.
    """
    limits = limits or Limits()
    where = where or str(backup_dir)
    for name, prefix in ((MANIFEST_FILE, "blocks"), (CHUNK_MAP_FILE, "")):
        file = f"{where}/{name}"
        try:
            data = read_bounded(backup_dir / name, limits.max_manifest_bytes, file)
            raw = parse_json(data, file, skip_depth=("blocks.chunks", "chunks"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except BadChunkMap:
            raise
        except BadBackupManifest as exc:
            raise BadChunkMap(exc.file, exc.field, exc.problem) from None
        if not isinstance(raw, dict):
            raise BadChunkMap(file, "(file)", "is not a JSON object")
        section = raw.get("blocks") if prefix else raw
        if prefix and not section:
            continue  # a files backup, or one whose map is still only in chunkmap.json
        return parse_section(section, where=file, limits=limits, prefix=prefix)
    return None


def load_chunk_map(backup_dir: Path, *, limits: Limits | None = None) -> ChunkMap:
    found = read_chunk_map(backup_dir, limits=limits)
    if found is None:
        raise BadChunkMap(str(backup_dir), "(file)",
                          f"holds no chunk map (no {MANIFEST_FILE} blocks section, no {CHUNK_MAP_FILE})")
    return found


def references(source_dir: Path, *, skip: Iterable[str] = (), limits: Limits | None = None) -> dict[str, set[str]]:
    """backup name -> digests it uses, for every backup directory of the source (but ``skip``).

    A manifest that cannot be read, or is out of bounds, stops the collection (``BadChunkMap``):
    deleting chunks on a guess could break a backup. Symlinks are not backups and are not followed.
    """
    skipped = set(skip)
    found: dict[str, set[str]] = {}
    if not _real_dir(source_dir, "the source directory"):
        return found
    with os.scandir(source_dir) as it:
        entries = sorted((e for e in it if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    for entry in entries:
        if entry.name == CHUNKS_DIR or entry.name in skipped or entry.name.startswith("."):
            continue
        where = f"{source_dir.parent.name}/{source_dir.name}/{entry.name}"  # NAMESPACE/SOURCE-UID/NAME, as listed
        chunk_map = read_chunk_map(Path(entry.path), limits=limits, where=where)
        if chunk_map is not None:
            found[entry.name] = chunk_map.digests()
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


def collect_garbage(source_dir: str | os.PathLike[str], *, skip: Iterable[str] = (), wait: bool = False,
                    limits: Limits | None = None) -> GcResult:
    """Remove every chunk of the source that no remaining backup references (idempotent, crash-safe).

    ``skip`` names backup directories to ignore (the one being deleted, when
    its directory is removed after the sweep).  Without ``wait`` a store in
    use raises ``RepositoryBusy`` at once, for the caller to retry.

    Mark: every backup directory's chunk map, validated (``references``; one that cannot be read stops
    the sweep). Sweep: through directory file descriptors opened with ``O_NOFOLLOW``, so only regular
    files named by a digest inside the store itself are unlinked; a symlink there is never followed
    (``.chunks`` itself being one raises ``BadPath``).
    """
    source = Path(source_dir)
    store = ChunkStore(source)
    if not _real_dir(store.root, "the chunk store"):
        return GcResult(0, 0, 0, 0, 0, 0)
    with store.locked(exclusive=True, wait=wait):
        refs = references(source, skip=skip, limits=limits)
        freed = 0
        removed_subs: set[str] = set()
        with _dir_fd(store.root) as root_fd:
            listing = _scan_store(root_fd)
            stored = {name for sub, names in listing for name, is_file in names
                      if is_file and len(name) == 64 and name.startswith(sub) and _is_hex_digest(name)}
            temps = [(sub, name) for sub, names in listing for name, is_file in names
                     if is_file and name.endswith(".tmp")]
            plan = gc_plan(stored, refs)
            doomed: dict[str, list[str]] = {}
            for digest in plan.remove:
                doomed.setdefault(digest[:2], []).append(digest)
            for sub, name in temps:  # no writer runs while we hold the lock: every temp file is a crashed writer's
                doomed.setdefault(sub, []).append(name)
            for sub in sorted(doomed):
                try:
                    with _dir_fd(sub, root_fd) as sub_fd:
                        for name in sorted(doomed[sub]):
                            with contextlib.suppress(FileNotFoundError):
                                st = os.stat(name, dir_fd=sub_fd, follow_symlinks=False)
                                if not stat.S_ISREG(st.st_mode):
                                    continue
                                if not name.endswith(".tmp"):
                                    freed += st.st_blocks * 512
                                os.unlink(name, dir_fd=sub_fd)
                    removed_subs.add(sub)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
            for sub in sorted(removed_subs):
                with contextlib.suppress(OSError):  # not empty: fine
                    os.rmdir(sub, dir_fd=root_fd)
        if not plan.keep and not _other_entries(source):
            # the source's last backup is gone: the store goes too (still under its lock, see ``locked``);
            # rmtree is fd-based and never follows a symlink inside it
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
        st = store._stat(ref.digest)
        if st is None:
            missing.append(CorruptChunk(ref.digest, ref.offset, "missing from the repository", path))
            continue
        size = st.st_size
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
