"""The backup repository: where every ShareBackup's data lives, for file shares and block volumes alike.

No Kubernetes in here: the repository is a directory (a PVC or an NFS export
mounted into a mover Job), and this module is all a mover needs to find, write,
list and remove backups in it.  The layout (``docs/repository.md``)::

    <root>/
      <namespace>/                       the ShareBackup's namespace
        <source-uid>/                    one source: a PVC's uid, or raw-<hash> of a raw reference
          .chunks/                       block volumes only: the source's content-addressed chunk store
          <backup-name>/                 one backup (a ShareBackup's name: DNS-1123, never starts with '.')
            backup.json                  the manifest, written LAST (temp file + rename)
            data/                        file shares: the browsable tree, incremental by hard links
            checksums.jsonl              file shares, when verified: one {path,size,sha256} per file
            chunkmap.json                block volumes: the chunk map, written before backup.json

A directory without ``backup.json`` is a backup being written (or one a crash
left half-written): it is never listed, restored or imported, and the next
attempt of the same backup completes it or its deletion removes it.  Names
starting with ``.`` are reserved (ShareBackup names cannot start with one).

Public names are a contract with the movers of both formats; keep them stable.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

MANIFEST_FILE = "backup.json"
DATA_DIR = "data"  # files: the browsable tree of one backup
CHECKSUMS_FILE = "checksums.jsonl"  # files: the checksum manifest (verified backups)
CHUNK_MAP_FILE = "chunkmap.json"  # blocks: the chunk map, before backup.json exists
CHUNKS_DIR = ".chunks"  # blocks: per-source chunk store; dot-named so no backup name can collide with it
RESERVED_PREFIX = "."  # temp files, the chunk store: never a backup

FORMAT_FILES = "files"
FORMAT_BLOCKS = "blocks"
FormatName = Literal["files", "blocks"]
FORMAT_VERSION = 1  # of backup.json and the layout; readers refuse newer major versions
MANIFEST_KIND = "savepoint.dev/backup"

# DNS-1123 subdomain (namespaces are labels, a subset): what a namespace or backup name may be.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# A PVC uid (RFC 4122) or raw-<hex> for raw references.
_SOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


class RepositoryError(Exception):
    """A repository problem a user can act on; ``reason`` is a condition reason."""

    reason = "RepositoryError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadPath(RepositoryError):
    """A name or path that would leave the repository or break its layout."""

    reason = "InvalidSpec"


class ManifestMissing(RepositoryError):
    """No backup.json: the backup is incomplete, or its data is gone."""

    reason = "BackupDataMissing"


class ManifestInvalid(RepositoryError):
    """backup.json exists but cannot be read, or describes another backup."""

    reason = "BackupDataMissing"


class NotThisBackup(RepositoryError):
    """The directory holds a complete backup with another identity (uid): never overwrite or delete it."""

    reason = "InvalidSpec"


# ---- the manifest (backup.json) ----------------------------------------------------------------


class _Model(BaseModel):
    """camelCase on disk, snake_case in Python; unknown fields kept (newer writers, the blocks engineer's extras)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SourceInfo(_Model):
    """What was backed up."""

    namespace: str
    uid: str  # the source id: PVC uid, or raw-<hash> (``raw_source_id``)
    pvc_name: str | None = None  # None for a raw reference
    description: str = ""  # for people: pvc/NAME, nfs:SERVER:/PATH, rbd:POOL/IMAGE
    reference: dict[str, Any] | None = None  # the ShareBackup's spec.source, as the API writes it (for re-import)
    size_bytes: int | None = None  # capacity of the source (PVC/PV); an in-place restore needs the same size
    storage_class: str | None = None
    access_modes: list[str] = Field(default_factory=list)


class BackupIdentity(_Model):
    """Which ShareBackup wrote it."""

    name: str
    uid: str  # the ShareBackup's uid when it was created (an imported object keeps this one)
    namespace: str


class ChecksumInfo(_Model):
    """The checksum manifest of a file-share backup (written when the backup was verified)."""

    algorithm: Literal["sha256"] = "sha256"
    file: str = CHECKSUMS_FILE
    digest: str  # sha256 of the checksums file itself
    files: int


class BlocksSection(_Model):
    """Block volumes: the chunk map (``savepoint.storage.chunks.ChunkMap.to_dict``); extra keys are kept."""

    format: str
    hash: str = "sha256"
    size: int  # volume size in bytes
    chunk_size: int
    checksum: str | None = None
    data_bytes: int | None = None
    chunk_count: int | None = None
    chunks: list[list[Any]] = Field(default_factory=list)  # [offset, length, sha256]


class BackupManifest(_Model):
    """``backup.json``: everything needed to list, restore and re-import a backup without the cluster."""

    kind: Literal["savepoint.dev/backup"] = "savepoint.dev/backup"
    format: FormatName
    format_version: int = FORMAT_VERSION
    backup: BackupIdentity
    source: SourceInfo
    created: datetime.datetime  # when the ShareBackup started (UTC)
    completed: datetime.datetime  # when the data was complete (UTC)
    parent: str | None = None  # name of the backup this one is incremental to (same source directory)
    parent_uid: str | None = None
    incremental: bool = False  # True when data is shared with ``parent``
    full_read_reason: str | None = None  # why an incremental backup had to read everything
    file_count: int | None = None  # files: non-directory entries in the tree
    entries: int | None = None  # files: every entry (directories included, the top one too); restore checks it
    bytes_total: int = 0  # logical bytes of data the backup holds (files: regular file sizes; blocks: data bytes)
    bytes_read: int = 0  # read from the source by this backup
    bytes_stored: int = 0  # new bytes written to the repository by this backup (the rest is shared)
    checksums: ChecksumInfo | None = None  # files, verified backups
    metadata_dropped: list[str] = Field(default_factory=list)  # e.g. ["acls"] when the repository cannot keep them
    tool_version: str
    labels: dict[str, str] = Field(default_factory=dict)  # the ShareBackup's labels when it was made
    blocks: BlocksSection | None = None  # block volumes: filled by the blocks format

    @property
    def source_size_bytes(self) -> int | None:
        return self.source.size_bytes

    def rel_path(self) -> PurePosixPath:
        return backup_rel_path(self.backup.namespace, self.source.uid, self.backup.name)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n").encode()


def tool_version(extra: str = "") -> str:
    """``savepoint-operator 0.1.0`` (plus e.g. ``rsync 3.2.7``): recorded in every manifest."""
    try:
        from importlib.metadata import version

        ours = version("savepoint-operator")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        ours = "unknown"
    return f"savepoint-operator {ours}" + (f"; {extra}" if extra else "")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def digest_bytes(data: bytes) -> str:
    """The ``manifestDigest`` of a backup: ``sha256:<hex>`` of backup.json's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- names and paths (pure) ---------------------------------------------------------------------


def check_name(value: str, what: str) -> str:
    if not value or len(value) > 253 or not _NAME.match(value):
        raise BadPath(f"{what} {value!r} is not a DNS-1123 name; it cannot be a repository directory")
    return value


def check_source_id(value: str) -> str:
    if not value or not _SOURCE_ID.match(value):
        raise BadPath(f"source id {value!r} is not a uid or raw-<hash>; it cannot be a repository directory")
    return value


def raw_source_id(description: str) -> str:
    """The stable source id of a raw reference (``nfs:SERVER:/PATH``, ``rbd:CLUSTER/POOL/IMAGE``)."""
    return "raw-" + hashlib.sha256(description.encode()).hexdigest()[:32]


def source_rel_path(namespace: str, source_uid: str) -> PurePosixPath:
    """``<namespace>/<source-uid>``: every backup of one source, and (blocks) its chunk store."""
    return PurePosixPath(check_name(namespace, "namespace"), check_source_id(source_uid))


def backup_rel_path(namespace: str, source_uid: str, backup_name: str) -> PurePosixPath:
    """``<namespace>/<source-uid>/<backup-name>``: one backup's directory (``status.repositoryPath``)."""
    return source_rel_path(namespace, source_uid) / check_name(backup_name, "backup name")


def parse_rel_path(rel: str | PurePosixPath) -> tuple[str, str, str]:
    """``ns/uid/name`` → ``(ns, uid, name)``, validated; ``BadPath`` for anything else."""
    parts = PurePosixPath(rel).parts
    if len(parts) != 3:
        raise BadPath(f"{rel!s} is not NAMESPACE/SOURCE-UID/BACKUP-NAME")
    return check_name(parts[0], "namespace"), check_source_id(parts[1]), check_name(parts[2], "backup name")


def inside(root: Path, rel: str | PurePosixPath) -> Path:
    """``root/rel`` if it stays inside ``root`` with every symlink resolved; ``BadPath`` otherwise."""
    rel_path = PurePosixPath(rel)
    if rel_path.is_absolute() or any(p in ("..", "") for p in rel_path.parts):
        raise BadPath(f"{rel!s} is not a relative path inside the repository")
    real_root = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(real_root / rel_path))
    if candidate != real_root and real_root not in candidate.parents:
        raise BadPath(f"{rel!s} resolves to {candidate}, outside the repository {real_root}")
    return real_root / rel_path


def source_dir(root: Path, namespace: str, source_uid: str) -> Path:
    return inside(root, source_rel_path(namespace, source_uid))


def backup_dir(root: Path, namespace: str, source_uid: str, backup_name: str) -> Path:
    return inside(root, backup_rel_path(namespace, source_uid, backup_name))


# ---- reading and writing manifests -------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems refuse fsync on a directory; the rename is durable there
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` appears whole or not at all: temp file next to it, fsync, rename, fsync the directory."""
    tmp = path.with_name(f"{RESERVED_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_manifest(directory: Path, manifest: BackupManifest) -> str:
    """Write ``backup.json`` into a backup's directory, atomically, as its LAST file; returns its digest.

    Refuses (``NotThisBackup``) to replace the manifest of another backup
    (a different uid); rewriting our own is allowed (idempotent retries).
    """
    existing = directory / MANIFEST_FILE
    if existing.exists():
        current = read_manifest(directory)
        if current.backup.uid != manifest.backup.uid:
            raise NotThisBackup(f"{directory} already holds backup {current.backup.name} (uid {current.backup.uid}); "
                                f"not replacing it with uid {manifest.backup.uid}")
    data = manifest.to_bytes()
    write_atomic(existing, data)
    return digest_bytes(data)


def read_manifest_bytes(directory: Path) -> bytes:
    try:
        return (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise ManifestMissing(f"{directory} has no {MANIFEST_FILE}: the backup is incomplete or its data is gone") \
            from None
    except OSError as exc:
        raise ManifestInvalid(f"{directory / MANIFEST_FILE} cannot be read: {exc.strerror or exc}") from None


def parse_manifest(data: bytes, where: str = MANIFEST_FILE) -> BackupManifest:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ManifestInvalid(f"{where} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != MANIFEST_KIND:
        raise ManifestInvalid(f"{where} is not a Savepoint backup manifest (kind {MANIFEST_KIND!r})")
    version = raw.get("formatVersion")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestInvalid(f"{where} has format version {version!r}; this Savepoint reads up to {FORMAT_VERSION}")
    try:
        return BackupManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestInvalid(f"{where} is malformed: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def read_manifest(directory: Path) -> BackupManifest:
    """The manifest of a complete backup; ``ManifestMissing``/``ManifestInvalid`` otherwise."""
    return parse_manifest(read_manifest_bytes(directory), str(directory / MANIFEST_FILE))


def load_backup(root: Path, rel: str | PurePosixPath, *, expected_uid: str | None = None,
                expected_digest: str | None = None) -> tuple[Path, BackupManifest]:
    """A complete backup by its ``ns/uid/name`` path, checked to be the one expected.

    What restores call first: a missing directory or manifest, another
    backup's manifest (uid) or a manifest changed since the backup was made
    (digest) raise, so nothing is ever restored from the wrong data.
    """
    parse_rel_path(rel)
    directory = inside(root, rel)
    if not directory.is_dir():
        raise ManifestMissing(f"the backup's directory {rel!s} does not exist in the repository (its data is gone)")
    data = read_manifest_bytes(directory)
    manifest = parse_manifest(data, f"{rel}/{MANIFEST_FILE}")
    if expected_uid and manifest.backup.uid != expected_uid:
        raise ManifestInvalid(f"{rel}/{MANIFEST_FILE} belongs to backup uid {manifest.backup.uid}, not {expected_uid}")
    if expected_digest and digest_bytes(data) != expected_digest:
        raise ManifestInvalid(f"{rel}/{MANIFEST_FILE} changed since the backup was made (digest "
                              f"{digest_bytes(data)}, expected {expected_digest})")
    return directory, manifest


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file()


# ---- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedBackup:
    """One complete backup found in the repository."""

    rel_path: PurePosixPath
    manifest: BackupManifest
    digest: str


@dataclass
class Listing:
    """What ``list_backups`` found: complete backups, and directories it skipped (with why)."""

    backups: list[ListedBackup] = field(default_factory=list)
    incomplete: list[PurePosixPath] = field(default_factory=list)  # no backup.json (being written, or a crash)
    invalid: list[tuple[PurePosixPath, str]] = field(default_factory=list)  # unreadable or inconsistent manifests


def _subdirs(path: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if not entry.name.startswith(RESERVED_PREFIX) and entry.is_dir(follow_symlinks=False):
            yield entry


def list_backups(root: Path, namespace: str | None = None, source_uid: str | None = None) -> Listing:
    """Complete backups under ``root`` (all, one namespace, or one source), sorted by completion time.

    A manifest must agree with where it lies (namespace/source/name): a copy
    moved to another place is reported invalid, not listed.
    """
    listing = Listing()
    namespaces = [Path(root) / check_name(namespace, "namespace")] if namespace else \
        [Path(e.path) for e in _subdirs(Path(root))]
    for ns_dir in namespaces:
        if source_uid:
            sources = [ns_dir / check_source_id(source_uid)]
        else:
            sources = [Path(e.path) for e in _subdirs(ns_dir)]
        for src in sources:
            for entry in _subdirs(src):
                rel = PurePosixPath(ns_dir.name, src.name, entry.name)
                directory = Path(entry.path)
                if not is_complete(directory):
                    listing.incomplete.append(rel)
                    continue
                try:
                    data = read_manifest_bytes(directory)
                    manifest = parse_manifest(data, f"{rel}/{MANIFEST_FILE}")
                except RepositoryError as exc:
                    listing.invalid.append((rel, exc.message))
                    continue
                try:
                    where = manifest.rel_path()
                except BadPath as exc:
                    listing.invalid.append((rel, exc.message))
                    continue
                if where != rel:
                    listing.invalid.append((rel, f"its manifest describes {where}, not {rel}"))
                    continue
                listing.backups.append(ListedBackup(rel, manifest, digest_bytes(data)))
    listing.backups.sort(key=lambda b: (b.manifest.completed, str(b.rel_path)))
    return listing


def newest_backup(root: Path, namespace: str, source_uid: str, *, fmt: str | None = None,
                  exclude: str | None = None) -> ListedBackup | None:
    """The most recently completed backup of a source (the natural parent of the next incremental)."""
    found = [b for b in list_backups(root, namespace, source_uid).backups
             if b.manifest.backup.name != exclude and (fmt is None or b.manifest.format == fmt)]
    return found[-1] if found else None


# ---- removing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoveResult:
    removed: bool  # False: there was nothing to remove
    bytes_freed: int  # of files whose last link went (files format), or chunks swept (blocks)
    files_removed: int
    gc: dict[str, Any] | None = None  # what the blocks garbage collector reported


def _make_writable_and_retry(func: Any, path: str, _exc_info: Any) -> None:
    """rmtree's error hook: a directory without write permission (a non-root mover) is opened up and retried."""
    parent = os.path.dirname(path)
    with contextlib.suppress(OSError):
        os.chmod(parent, stat.S_IRWXU | os.stat(parent).st_mode)
    with contextlib.suppress(FileNotFoundError):
        func(path)


def _tree_size(directory: Path) -> tuple[int, int]:
    """(bytes of files whose last link is in this tree, files) — what removing it frees."""
    freed = files = 0
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            files += 1
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                freed += st.st_blocks * 512
    return freed, files


def remove_backup(root: Path, rel: str | PurePosixPath, *, expected_uid: str | None = None,
                  measure: bool = False) -> RemoveResult:
    """Remove one backup's directory, safely and idempotently; never anything outside it.

    Order, so a crash at any point leaves no backup that is listed but broken:
    ``backup.json`` goes first (the backup stops being listed or importable),
    then the directory, then -- when the source has a chunk store -- the
    chunks no remaining backup references (``collect_garbage``).  Hard links
    make file-share backups independent: removing one never breaks another.

    ``expected_uid``: refuse (``NotThisBackup``) when the directory holds a
    complete backup of another uid (a same-named backup of another object).
    """
    parse_rel_path(rel)
    directory = inside(root, rel)
    src = directory.parent
    removed = False
    freed = files = 0
    if directory.is_symlink():
        raise BadPath(f"{rel!s} is a symlink; refusing to remove it")
    if directory.is_dir():
        if expected_uid and is_complete(directory):
            try:
                owner = read_manifest(directory).backup.uid
            except ManifestInvalid:
                owner = expected_uid  # unreadable: it is at our path, and ours to remove
            if owner != expected_uid:
                raise NotThisBackup(f"{rel!s} holds backup uid {owner}, not {expected_uid}; not removing it")
        if measure:
            freed, files = _tree_size(directory)
        with contextlib.suppress(FileNotFoundError):
            (directory / MANIFEST_FILE).unlink()
            _fsync_dir(directory)
        shutil.rmtree(directory, onerror=_make_writable_and_retry)  # onexc is 3.12+
        _fsync_dir(src)
        removed = True
    gc = None
    if (src / CHUNKS_DIR).is_dir():
        gc = collect_garbage(src)
        freed += int(gc.get("bytes_freed", 0))
    remove_if_empty(src)
    return RemoveResult(removed=removed, bytes_freed=freed, files_removed=files, gc=gc)


def collect_garbage(source: Path) -> dict[str, Any]:
    """Blocks: remove the chunks of ``source`` that no remaining backup references.

    The hook for the block-volume format: the chunk store's own mark and
    sweep (``savepoint.storage.chunks.collect_garbage``), which takes the
    store's exclusive lock and waits for running backups and restores.
    """
    from savepoint.storage import chunks  # late: file-share movers never need it

    result = chunks.collect_garbage(source, wait=True)
    return {k: getattr(result, k) for k in result.__dataclass_fields__}


def remove_if_empty(directory: Path) -> bool:
    """rmdir a source (or namespace) directory that nothing is in any more; False when it is not empty."""
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def ensure_dir(path: Path, attempts: int = 5) -> None:
    """``mkdir -p`` that survives a concurrent ``remove_if_empty`` of a parent (retries on ENOENT)."""
    for attempt in range(attempts):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
