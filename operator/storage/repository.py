"""The backup repository: where every ShareBackup's data lives, for file shares and block volumes alike.

No Kubernetes in here: the repository is a directory (a PVC or an NFS export
mounted into a mover Job), and this module is all a mover needs to find, write,
list and remove backups in it.  The layout (``docs/repository.md``)::

    <root>/
      <namespace>/                       the ShareBackup's namespace
        <source-uid>/                    one source: a PVC's uid, or raw-<hash> of a raw reference
          .chunks/                       block volumes only: the source's content-addressed chunk store
          <backup-name>/                 one backup (a ShareBackup's name: DNS-1123, never starts with '.')
            .savepoint-owner.json        the owner marker {namespace, name, uid}, written FIRST
            backup.json                  the manifest, written LAST (temp file + rename)
            data/                        file shares: the browsable tree, incremental by hard links
            checksums.jsonl              file shares, when verified: one {path,size,sha256} per file
            chunkmap.json                block volumes: the chunk map, written before backup.json

A directory without ``backup.json`` is a backup being written (or one a crash
left half-written): it is never listed, restored or imported, and the next
attempt of the same backup completes it or its deletion removes it.  Names
starting with ``.`` are reserved (ShareBackup names cannot start with one).

Trust (``docs/repository.md``, "Owners" and "Bounds"): everything read from a repository is
validated with bounds (``Limits``) before it is used -- ``BadBackupManifest(file, field, message)``
otherwise; nothing is deleted or overwritten unless ``check_owner`` finds it is the asker's
(``BackupOwnerMismatch`` otherwise); paths are the asker's namespace's and never go through a
symlink (``BadPath``, reason ``BadBackupPath``).

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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from savepoint.storage.errors import StorageError

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
OWNER_FILE = ".savepoint-owner.json"  # the owner marker: written FIRST into a new backup directory
OWNER_KIND = "savepoint.dev/owner"

# ---- bounds on everything read from a repository (docs/repository.md, "Bounds") -------------------
KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50
DEFAULT_MAX_VOLUME_BYTES = 64 * TiB  # a block volume (and its chunk map) larger than this is refused
DEFAULT_MAX_MANIFEST_BYTES = 256 * MiB  # backup.json / chunkmap.json larger than this are refused unread
HARD_MAX_VOLUME_BYTES = 1 * PiB  # what ``limits.maxVolumeBytes`` may be raised to
HARD_MAX_MANIFEST_BYTES = 4 * GiB  # what ``limits.maxManifestBytes`` may be raised to
MAX_OWNER_FILE_BYTES = 4 * KiB
MAX_JSON_DEPTH = 32  # nesting of any JSON file read from the repository
MAX_INT = (1 << 63) - 1  # every count and byte figure fits a signed 64-bit integer
MAX_UID = 128
MAX_NAME = 253
MAX_TEXT = 4096  # descriptions, reasons, tool versions
MAX_REFERENCE_BYTES = 16 * KiB  # source.reference as JSON
MAX_LABELS = 1024
MAX_LABEL_KEY, MAX_LABEL_VALUE = 317, 63  # Kubernetes: prefix (253) + "/" + name (63); values 63
MAX_LIST_ITEMS = 64  # accessModes, metadataDropped

# DNS-1123 subdomain (namespaces are labels, a subset): what a namespace or backup name may be.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# A PVC uid (RFC 4122) or raw-<hex> for raw references.
_SOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


class RepositoryError(Exception):
    """A repository problem a user can act on; ``reason`` is a condition reason."""

    reason = "RepositoryError"

    def __init__(self, message: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self.message = message


class BadPath(RepositoryError):
    """A name or path that would leave the repository, break its layout, or lies in another namespace."""

    reason = "BadBackupPath"


class BadRequest(RepositoryError):
    """A mover's params that do not follow the contract (``owner``, ``limits``): an operator/mover mismatch."""

    reason = "BadMoverRequest"


class ManifestMissing(RepositoryError):
    """No backup.json: the backup is incomplete, or its data is gone."""

    reason = "BackupDataMissing"


class ManifestInvalid(RepositoryError):
    """backup.json exists but describes another backup (uid), or changed since the backup was made (digest)."""

    reason = "BackupDataMissing"


class BadBackupManifest(ManifestInvalid, StorageError):
    """A file read from the repository (``backup.json``, ``chunkmap.json``, the owner marker, ``checksums.jsonl``)
    is malformed or outside the bounds Savepoint accepts: refused before anything uses it.

    ``file`` names the file (relative to the repository where known), ``field`` the offending field
    (``blocks.chunks[12][0]``; ``(file)`` for the file as a whole), ``message`` what is wrong with it.
    """

    reason = "BadBackupManifest"

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = str(file)
        self.field = field or "(file)"
        self.problem = message
        super().__init__(f"{self.file}: {self.field}: {message}")


class NotThisBackup(RepositoryError):
    """The directory holds a complete backup with another identity (uid): never overwrite or delete it."""

    reason = "BackupOwnerMismatch"


class BackupOwnerMismatch(NotThisBackup):
    """A backup directory that is unmarked or marked for another owner: never deleted or overwritten.

    ``found`` is what the directory says about its owner (the marker's or backup.json's
    ``{namespace, name, uid}``), or ``{}`` when it says nothing.
    """

    reason = "BackupOwnerMismatch"

    def __init__(self, message: str, found: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.found = dict(found or {})


@dataclass(frozen=True)
class Limits:
    """The bounds a mover applies to what it reads from a repository (and refuses to write beyond).

    From the mover request as ``params["limits"] = {"maxVolumeBytes": N, "maxManifestBytes": N}`` (both
    optional, positive integers, at most ``HARD_MAX_*``); defaults otherwise.
    """

    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> Limits:
        raw = (params or {}).get("limits")
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"maxVolumeBytes", "maxManifestBytes"}:
            raise BadRequest(f"params.limits must be {{maxVolumeBytes, maxManifestBytes}}, not {str(raw)[:200]}")
        values: dict[str, int] = {}
        for key, attr, hard in (("maxVolumeBytes", "max_volume_bytes", HARD_MAX_VOLUME_BYTES),
                                ("maxManifestBytes", "max_manifest_bytes", HARD_MAX_MANIFEST_BYTES)):
            if key not in raw or raw[key] is None:
                continue
            value = raw[key]
            if type(value) is not int or not 0 < value <= hard:
                raise BadRequest(f"params.limits.{key} must be an integer in 1..{hard}, not {str(value)[:40]}")
            values[attr] = value
        return cls(**values)

    def to_params(self) -> dict[str, int]:
        return {"maxVolumeBytes": self.max_volume_bytes, "maxManifestBytes": self.max_manifest_bytes}


def _limits_of(info: ValidationInfo) -> Limits:
    context = info.context if isinstance(info.context, dict) else {}
    limits = context.get("limits")
    return limits if isinstance(limits, Limits) else Limits()


# Field types: strict (no "1" -> 1, no 1.0 -> 1, no true -> 1) and bounded.
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_NAME, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
Uid = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_UID, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")]
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]
Word = Annotated[str, Field(strict=True, max_length=64)]
Sha256Digest = Annotated[str, Field(strict=True, pattern=r"^sha256:[0-9a-f]{64}$")]


# ---- the manifest (backup.json) ----------------------------------------------------------------


class _Model(BaseModel):
    """camelCase on disk, snake_case in Python; unknown fields kept (newer writers, the blocks engineer's extras)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SourceInfo(_Model):
    """What was backed up."""

    namespace: Name
    uid: Uid  # the source id: PVC uid, or raw-<hash> (``raw_source_id``)
    pvc_name: Name | None = None  # None for a raw reference
    description: Text = ""  # for people: pvc/NAME, nfs:SERVER:/PATH, rbd:POOL/IMAGE
    reference: dict[str, Any] | None = None  # the ShareBackup's spec.source, as the API writes it (for re-import)
    size_bytes: Count | None = None  # capacity of the source (PVC/PV); an in-place restore needs the same size
    storage_class: Name | None = None
    access_modes: list[Word] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @field_validator("reference")
    @classmethod
    def _small_reference(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value, separators=(",", ":"))) > MAX_REFERENCE_BYTES:
            raise ValueError(f"is larger than {MAX_REFERENCE_BYTES} bytes as JSON")
        return value


class BackupIdentity(_Model):
    """Which ShareBackup wrote it."""

    name: Name
    uid: Uid  # the ShareBackup's uid when it was created (an imported object keeps this one)
    namespace: Name


class ChecksumInfo(_Model):
    """The checksum manifest of a file-share backup (written when the backup was verified)."""

    algorithm: Literal["sha256"] = "sha256"
    file: Literal["checksums.jsonl"] = CHECKSUMS_FILE  # never another path: readers open it inside the backup
    digest: Sha256Digest  # sha256 of the checksums file itself
    files: Count


class BlocksSection(_Model):
    """Block volumes: the chunk map (``savepoint.storage.chunks.ChunkMap.to_dict``); extra keys are kept.

    The types are checked here; the map itself (bounds, order, lengths, digests, counts, checksum) by
    ``savepoint.storage.chunks.parse_section`` in ``BackupManifest``'s validator.
    """

    format: Text
    hash: Text = "sha256"
    size: Count  # volume size in bytes
    chunk_size: Count
    checksum: Text | None = None
    data_bytes: Count | None = None
    chunk_count: Count | None = None
    chunks: list[Any] = Field(default_factory=list)  # [offset, length, sha256]


class BackupManifest(_Model):
    """``backup.json``: everything needed to list, restore and re-import a backup without the cluster."""

    kind: Literal["savepoint.dev/backup"] = "savepoint.dev/backup"
    format: FormatName
    format_version: Annotated[int, Field(strict=True, ge=1, le=FORMAT_VERSION)] = FORMAT_VERSION
    backup: BackupIdentity
    source: SourceInfo
    created: datetime.datetime  # when the ShareBackup started (UTC)
    completed: datetime.datetime  # when the data was complete (UTC)
    parent: Name | None = None  # name of the backup this one is incremental to (same source directory)
    parent_uid: Uid | None = None
    incremental: Annotated[bool, Field(strict=True)] = False  # True when data is shared with ``parent``
    full_read_reason: Text | None = None  # why an incremental backup had to read everything
    file_count: Count | None = None  # files: non-directory entries in the tree
    entries: Count | None = None  # files: every entry (directories included, the top one too); restore checks it
    bytes_total: Count = 0  # logical bytes of data the backup holds (files: regular file sizes; blocks: data bytes)
    bytes_read: Count = 0  # read from the source by this backup
    bytes_stored: Count = 0  # new bytes written to the repository by this backup (the rest is shared)
    checksums: ChecksumInfo | None = None  # files, verified backups
    metadata_dropped: list[Word] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)  # e.g. ["acls"]
    tool_version: Text
    labels: dict[Annotated[str, Field(strict=True, max_length=MAX_LABEL_KEY)],
                 Annotated[str, Field(strict=True, max_length=MAX_LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_LABELS)  # the ShareBackup's labels when it was made
    blocks: BlocksSection | None = None  # block volumes: filled by the blocks format

    _chunk_map: Any = PrivateAttr(default=None)
    _listed_only: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> BackupManifest:
        """Cross-field rules and bounds; raises ``BadBackupManifest`` naming the field (``parse_manifest``)."""
        limits = _limits_of(info)
        where = (info.context or {}).get("file", MANIFEST_FILE) if isinstance(info.context, dict) else MANIFEST_FILE

        def bad(field: str, message: str) -> None:
            raise BadBackupManifest(where, field, message)

        if self.source.namespace != self.backup.namespace:
            bad("source.namespace", f"{self.source.namespace!r} is not the backup's namespace "
                f"{self.backup.namespace!r}")
        if self.file_count is not None and self.entries is not None and self.file_count > self.entries:
            bad("fileCount", f"{self.file_count} files is more than the {self.entries} entries of the tree")
        if self.checksums is not None and self.file_count is not None and self.checksums.files > self.file_count:
            bad("checksums.files", f"{self.checksums.files} checksummed files is more than the {self.file_count} "
                "files of the tree")
        if self.format == FORMAT_BLOCKS:
            if self.blocks is None:
                bad("blocks", "a blocks backup has no chunk map")
                raise AssertionError("unreachable")
            from savepoint.storage import chunks  # late: chunks imports this module

            section = self.blocks.to_json_dict()
            entries = info.context.get("chunks") if isinstance(info.context, dict) else None
            if entries is not None:
                section["chunks"] = entries
            self._chunk_map = chunks.parse_section(section, where=where, limits=limits)
            if entries is not None:
                self.blocks.chunks = entries
            if self.source.size_bytes is not None and self.source.size_bytes > limits.max_volume_bytes:
                bad("source.sizeBytes", f"{self.source.size_bytes} bytes is more than the volume-size limit "
                    f"{limits.max_volume_bytes} (maxVolumeBytes)")
            if self.bytes_total != self._chunk_map.data_bytes:
                bad("bytesTotal", f"{self.bytes_total} is not the chunk map's {self._chunk_map.data_bytes} data bytes")
        elif self.blocks is not None:
            bad("blocks", "a files backup has no chunk map")
        return self

    def chunk_map(self) -> Any:
        """The validated ``chunks.ChunkMap`` of a blocks backup (None for files)."""
        if self._listed_only:
            raise RuntimeError("a manifest from list_backups() carries no chunk list; load_backup() it")
        if self._chunk_map is None and self.blocks is not None:
            from savepoint.storage import chunks

            self._chunk_map = chunks.parse_section(self.blocks.to_json_dict(), where=MANIFEST_FILE, limits=Limits())
        return self._chunk_map

    @property
    def source_size_bytes(self) -> int | None:
        return self.source.size_bytes

    @property
    def identity(self) -> Owner:
        return Owner(self.backup.namespace, self.backup.name, self.backup.uid)

    def rel_path(self) -> PurePosixPath:
        return backup_rel_path(self.backup.namespace, self.source.uid, self.backup.name)

    def to_bytes(self) -> bytes:
        """Indented JSON for people, with one line per chunk (``[offset, length, "sha256"]``): a chunk costs
        about 94 bytes of ``backup.json`` instead of about 130 spread over five lines."""
        body = self.to_json_dict()
        entries = (body.get("blocks") or {}).get("chunks")
        if not entries:
            return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        marker = f"@chunks-{uuid.uuid4().hex}@"
        body["blocks"]["chunks"] = marker
        text = json.dumps(body, indent=2, sort_keys=True)
        rows = ",\n".join("      " + json.dumps(entry) for entry in entries)
        text = text.replace(json.dumps(marker), "[\n" + rows + "\n    ]", 1)
        return (text + "\n").encode()


def build_manifest(fields: dict[str, Any], limits: Limits | None = None, where: str = MANIFEST_FILE) -> BackupManifest:
    """A manifest from fields the mover put together, checked exactly as a reader will check it.

    A writer that builds one a reader would refuse (say a chunk map over ``maxVolumeBytes``) fails here,
    before ``backup.json`` exists, with ``BadBackupManifest``.
    """
    return _validate_manifest(fields, limits or Limits(), where)


def _loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or "(file)"


def _validate_manifest(raw: Any, limits: Limits, where: str) -> BackupManifest:
    context: dict[str, Any] = {"limits": limits, "file": where}
    blocks = raw.get("blocks") if isinstance(raw, dict) else None
    if isinstance(blocks, dict) and isinstance(blocks.get("chunks"), list):
        # the chunk list (millions of entries) is checked once, by chunks.parse_section, and kept as it is
        context["chunks"] = blocks["chunks"]
        raw = {**raw, "blocks": {**blocks, "chunks": []}}
    try:
        return BackupManifest.model_validate(raw, context=context)
    except BadBackupManifest:
        raise
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise BadBackupManifest(where, _loc(tuple(first["loc"])), str(first["msg"])[:300]) from None
    except (RecursionError, OverflowError, TypeError, ValueError) as exc:  # e.g. a datetime out of range
        raise BadBackupManifest(where, "(file)", f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None


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
    if not isinstance(value, str) or not value or len(value) > 253 or not _NAME.match(value):
        raise BadPath(f"{what} {str(value)[:300]!r} is not a DNS-1123 name; it cannot be a repository directory")
    return value


def check_source_id(value: str) -> str:
    if not isinstance(value, str) or not value or not _SOURCE_ID.match(value):
        raise BadPath(f"source id {str(value)[:300]!r} is not a uid or raw-<hash>; it cannot be a repository "
                      "directory")
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
    if not isinstance(rel, (str, PurePosixPath)) or len(str(rel)) > 1024:
        raise BadPath(f"{str(rel)[:300]!r} is not NAMESPACE/SOURCE-UID/BACKUP-NAME")
    text = str(rel)
    parts = PurePosixPath(text).parts
    if len(parts) != 3 or text.startswith("/") or "//" in text or text.endswith("/"):
        raise BadPath(f"{text[:300]!s} is not NAMESPACE/SOURCE-UID/BACKUP-NAME")
    return check_name(parts[0], "namespace"), check_source_id(parts[1]), check_name(parts[2], "backup name")


def inside(root: Path, rel: str | PurePosixPath) -> Path:
    """``root/rel``, where no component of ``rel`` may be a symlink (or resolve outside ``root``).

    ``BadPath`` otherwise.  A symlink is refused even where it points back into the repository: a
    tenant's ``team-b/x -> ../team-a/x`` must not make ``team-b/x/...`` mean another namespace's data.
    """
    rel_path = PurePosixPath(rel)
    if rel_path.is_absolute() or any(p in ("..", "", ".") for p in rel_path.parts):
        raise BadPath(f"{rel!s} is not a relative path inside the repository")
    real_root = Path(os.path.realpath(root))
    wanted = real_root / rel_path
    candidate = Path(os.path.realpath(wanted))
    if candidate != wanted:
        if candidate != real_root and real_root not in candidate.parents:
            raise BadPath(f"{rel!s} resolves to {candidate}, outside the repository {real_root}")
        raise BadPath(f"{rel!s} goes through a symlink (it resolves to {candidate.relative_to(real_root)}); "
                      "repository directories are never symlinks")
    return wanted


def source_dir(root: Path, namespace: str, source_uid: str) -> Path:
    return inside(root, source_rel_path(namespace, source_uid))


def backup_dir(root: Path, namespace: str, source_uid: str, backup_name: str) -> Path:
    return inside(root, backup_rel_path(namespace, source_uid, backup_name))


# ---- owners ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who asks a mover to act, or who a backup directory belongs to: a CR's ``{namespace, name, uid}``.

    In a mover request: ``params["owner"] = {"namespace": NS, "name": NAME, "uid": UID}`` -- the
    ShareBackup for backups and deletes (``uid`` is the backup's uid: its own, or for an imported object
    the one its ``backup.json`` records), the ShareRestore (or ShareBackup) for reads.
    """

    namespace: str
    name: str
    uid: str

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def describe(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


def parse_owner(value: Any, what: str = "params.owner") -> Owner:
    """``{namespace, name, uid}`` (exactly those keys, all strings) as an ``Owner``; ``BadRequest`` otherwise."""
    if not isinstance(value, dict) or set(value) != {"namespace", "name", "uid"}:
        raise BadRequest(f"{what} must be {{namespace, name, uid}}, not {str(value)[:200]}")
    namespace, name, uid = value["namespace"], value["name"], value["uid"]
    try:
        check_name(namespace, f"{what}.namespace")
        check_name(name, f"{what}.name")
        check_source_id(uid)
    except BadPath as exc:
        raise BadRequest(exc.message) from None
    return Owner(namespace, name, uid)


def owner_from_params(params: dict[str, Any], *, required: bool, default: Any = None) -> Owner | None:
    """``params["owner"]`` parsed; ``default`` (e.g. the manifest's ``backup``) when absent, which must then
    agree with it when both are given. ``required``: a request that deletes or overwrites needs one."""
    raw = params.get("owner")
    fallback = None
    if default is not None:
        fallback = parse_owner({k: default.get(k) for k in ("namespace", "name", "uid")} if isinstance(default, dict)
                               else default, "params.manifest.backup")
    if raw is None:
        if fallback is None and required:
            raise BadRequest("this action deletes or overwrites repository data and needs params.owner "
                             "{namespace, name, uid} of the resource asking")
        return fallback
    owner = parse_owner(raw)
    if fallback is not None and fallback != owner:
        raise BadRequest(f"params.owner {owner.describe()} and params.manifest.backup {fallback.describe()} differ")
    return owner


def check_path_owner(rel: str | PurePosixPath, owner: Owner | None, *, same_name: bool) -> tuple[str, str, str]:
    """``rel`` parsed, and (with an ``owner``) in the owner's namespace; ``same_name``: also named after it
    (a ShareBackup's own directory). ``BadPath`` (reason ``BadBackupPath``) otherwise."""
    namespace, source_uid, name = parse_rel_path(rel)
    if owner is not None:
        if namespace != owner.namespace:
            raise BadPath(f"{rel!s} lies in namespace {namespace}'s part of the repository; {owner.namespace}/"
                          f"{owner.name} may only use {owner.namespace}/...")
        if same_name and name != owner.name:
            raise BadPath(f"{rel!s} is the directory of backup {name}, not of {owner.namespace}/{owner.name}")
    return namespace, source_uid, name


def check_same_source(rel: str | PurePosixPath, other: str | PurePosixPath, what: str) -> None:
    """A parent must be a backup of the same source, in the same namespace (``BadPath`` otherwise)."""
    ns, src, _ = parse_rel_path(rel)
    ons, osrc, _ = parse_rel_path(other)
    if (ns, src) != (ons, osrc):
        raise BadPath(f"{what} {other!s} is not a backup of the same source as {rel!s} ({ns}/{src})")


def read_bounded(path: Path, limit: int, where: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes: no symlink, no FIFO, never read past the limit.

    ``FileNotFoundError`` when it is not there; ``BadBackupManifest`` (field ``(file)``) for anything else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadBackupManifest(where, "(file)", "is a symlink; Savepoint reads only the files it wrote") \
                from None
        raise BadBackupManifest(where, "(file)", f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadBackupManifest(where, "(file)", "is not a regular file")
        if st.st_size > limit:
            raise BadBackupManifest(where, "(file)", f"is {st.st_size} bytes, more than the limit of {limit} "
                                    "(maxManifestBytes); refused unread")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            piece = os.read(fd, min(left, 1 << 20))
            if not piece:
                break
            chunks.append(piece)
            left -= len(piece)
        data = b"".join(chunks)
        if len(data) > limit:
            raise BadBackupManifest(where, "(file)", f"grew beyond the limit of {limit} bytes while read")
        return data
    except OSError as exc:
        raise BadBackupManifest(where, "(file)", f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:100]!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth_ok(value: Any, limit: int, skip: tuple[str, ...] = ()) -> str | None:
    """The path of the first value nested deeper than ``limit`` (iterative: no recursion), or None.

    ``skip``: dotted paths not descended into (the chunk list: checked entry by entry elsewhere)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > limit:
            return where or "(file)"
        if where in skip:
            continue
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
    return None


def parse_json(data: bytes, where: str, *, skip_depth: tuple[str, ...] = ()) -> Any:
    """JSON from the repository: strict (no NaN/Infinity, no duplicate keys), nesting at most ``MAX_JSON_DEPTH``.

    Every problem is ``BadBackupManifest(where, "(file)", ...)``; never a crash, never a hang."""
    try:
        text = data.decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise BadBackupManifest(where, "(file)", f"is nested too deeply (more than {MAX_JSON_DEPTH} levels)") \
            from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadBackupManifest(where, "(file)", f"is not JSON: {str(exc)[:200]}") from None
    deep = _depth_ok(raw, MAX_JSON_DEPTH, skip_depth)
    if deep is not None:
        raise BadBackupManifest(where, deep, f"is nested more than {MAX_JSON_DEPTH} levels deep")
    return raw


def write_owner_marker(directory: Path, owner: Owner) -> None:
    """The owner marker of a backup directory: written FIRST, before any data (``docs/repository.md``)."""
    body = {"kind": OWNER_KIND, **owner.to_dict(), "created": utcnow().isoformat()}
    write_atomic(directory / OWNER_FILE, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def read_owner_marker(directory: Path, where: str) -> Owner | None:
    """The owner a directory's marker names; None when it has none; ``BadBackupManifest`` when it is bad."""
    try:
        data = read_bounded(directory / OWNER_FILE, MAX_OWNER_FILE_BYTES, where)
    except FileNotFoundError:
        return None
    raw = parse_json(data, where)
    if not isinstance(raw, dict) or raw.get("kind") != OWNER_KIND:
        raise BadBackupManifest(where, "kind", f"is not {OWNER_KIND!r}")
    try:
        return parse_owner({k: raw.get(k) for k in ("namespace", "name", "uid")}, "marker")
    except BadRequest as exc:
        raise BadBackupManifest(where, "(file)", exc.message) from None


@dataclass(frozen=True)
class Ownership:
    """What a backup directory says about its owner (``check_owner``); it agreed with the one asking."""

    exists: bool
    marked: bool  # the owner marker is there (and names the owner)
    manifest: BackupManifest | None  # backup.json, when there and valid
    manifest_error: BadBackupManifest | None  # backup.json, when there and refused (our own damaged backup)
    claimable: bool  # exists but holds nothing: no marker, no manifest, no data (a crash right after mkdir)


def _holds_nothing(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return all(e.name.startswith(f"{RESERVED_PREFIX}{OWNER_FILE}.") and e.name.endswith(".tmp") for e in it)


def check_owner_before_backup(directory: Path, rel: str | PurePosixPath, owner: Owner,
                              limits: Limits | None = None) -> Ownership:
    """``check_owner`` for a backup about to write ``directory``: a mismatch says how to use the data
    found there instead, and an out-of-bounds ``backup.json`` of the owner is never taken as complete."""
    try:
        found = check_owner(directory, rel, owner, limits)
    except BackupOwnerMismatch as exc:
        exc.message += ("; if it is a backup of this share made elsewhere, import it with `kubectl savepoint "
                        "backups import`, or give this backup another name")
        raise
    if found.manifest_error is not None:
        raise found.manifest_error
    return found


def check_owner(directory: Path, rel: str | PurePosixPath, owner: Owner, limits: Limits | None = None) -> Ownership:
    """Right before a backup directory is deleted or written to: is it ``owner``'s?

    Its owner marker (``.savepoint-owner.json``), if there, must name ``owner``; its ``backup.json``, if
    there and readable, must record ``owner`` as its backup. A directory with neither is ``owner``'s only
    when it holds nothing at all. Anything else raises ``BackupOwnerMismatch`` naming what the directory
    says, and the caller leaves it alone.
    """
    limits = limits or Limits()
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return Ownership(False, False, None, None, False)
    if not stat.S_ISDIR(st.st_mode):
        raise BadPath(f"{rel!s} is not a directory (a {'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}); "
                      "Savepoint never deletes or writes through it")
    try:
        marker = read_owner_marker(directory, f"{rel}/{OWNER_FILE}")
    except BadBackupManifest as exc:
        raise BackupOwnerMismatch(f"{rel!s} has an owner marker Savepoint cannot read ({exc.message}); it is "
                                  f"not {owner.describe()}'s and stays as it is") from None
    if marker is not None and marker != owner:
        raise BackupOwnerMismatch(f"{rel!s} belongs to {marker.describe()} according to its {OWNER_FILE}, not to "
                                  f"{owner.describe()}; it stays as it is", marker.to_dict())
    manifest = manifest_error = None
    if os.path.lexists(directory / MANIFEST_FILE):
        try:
            manifest = read_manifest(directory, limits, f"{rel}/{MANIFEST_FILE}")
        except ManifestMissing:
            manifest = None
        except BadBackupManifest as exc:
            if marker is None:
                raise BackupOwnerMismatch(f"{rel!s} has no {OWNER_FILE} and its {MANIFEST_FILE} cannot be read "
                                          f"({exc.message}); it is not provably {owner.describe()}'s and stays as "
                                          "it is") from None
            manifest_error = exc
    if manifest is not None and manifest.identity != owner:
        raise BackupOwnerMismatch(f"{rel!s} holds backup {manifest.identity.describe()} according to its "
                                  f"{MANIFEST_FILE}, not {owner.describe()}'s; it stays as it is",
                                  manifest.identity.to_dict())
    claimable = False
    if marker is None and manifest is None:
        if not _holds_nothing(directory):
            raise BackupOwnerMismatch(f"{rel!s} has no {OWNER_FILE} (nor a {MANIFEST_FILE}): Savepoint did not "
                                      f"make it for {owner.describe()} and never deletes or overwrites it")
        claimable = True
    return Ownership(True, marker is not None, manifest, manifest_error, claimable)


def claim_backup_dir(root: Path, rel: str | PurePosixPath, owner: Owner,
                     limits: Limits | None = None) -> tuple[Path, Ownership]:
    """The backup directory ``rel`` for ``owner`` to write into: created with its owner marker first, or
    found to be ``owner``'s already (``check_owner``; a directory of another owner raises)."""
    check_path_owner(rel, owner, same_name=True)
    directory = inside(root, rel)
    ensure_dir(directory.parent)
    inside(root, rel)  # again: the source directory now exists, and is no symlink
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        found = check_owner(directory, rel, owner, limits)
        if not found.marked:
            write_owner_marker(directory, owner)  # ours (empty, or a complete backup of ours): mark it now
        return directory, found
    write_owner_marker(directory, owner)
    _fsync_dir(directory.parent)
    return directory, Ownership(True, True, None, None, False)


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
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


def write_manifest(directory: Path, manifest: BackupManifest, limits: Limits | None = None) -> str:
    """Write ``backup.json`` into a backup's directory, atomically, as its LAST file; returns its digest.

    Refuses (``NotThisBackup``) to replace the manifest of another backup
    (a different uid); rewriting our own is allowed (idempotent retries).
    Refuses (``BadBackupManifest``) to write one larger than ``maxManifestBytes``: no reader would read it.
    """
    limits = limits or Limits()
    existing = directory / MANIFEST_FILE
    if os.path.lexists(existing):
        current = read_manifest(directory, limits)
        if current.backup.uid != manifest.backup.uid:
            raise NotThisBackup(f"{directory} already holds backup {current.backup.name} (uid {current.backup.uid}); "
                                f"not replacing it with uid {manifest.backup.uid}")
    data = manifest.to_bytes()
    if len(data) > limits.max_manifest_bytes:
        raise BadBackupManifest(MANIFEST_FILE, "(file)", f"would be {len(data)} bytes, more than the limit of "
                                f"{limits.max_manifest_bytes} (maxManifestBytes) readers accept; not written")
    write_atomic(existing, data)
    return digest_bytes(data)


def read_manifest_bytes(directory: Path, limits: Limits | None = None, where: str | None = None) -> bytes:
    where = where or str(directory / MANIFEST_FILE)
    try:
        return read_bounded(directory / MANIFEST_FILE, (limits or Limits()).max_manifest_bytes, where)
    except FileNotFoundError:
        raise ManifestMissing(f"{directory} has no {MANIFEST_FILE}: the backup is incomplete or its data is gone") \
            from None


def parse_manifest(data: bytes, where: str = MANIFEST_FILE, limits: Limits | None = None) -> BackupManifest:
    """``backup.json``'s bytes as a validated manifest; ``BadBackupManifest(where, field, message)`` otherwise.

    Size (``maxManifestBytes``), JSON (strict, nesting), kind, format version, every field's type and
    bounds, and the chunk map of a blocks backup (``chunks.parse_section``) -- all before anything uses it.
    """
    limits = limits or Limits()
    if len(data) > limits.max_manifest_bytes:
        raise BadBackupManifest(where, "(file)", f"is {len(data)} bytes, more than the limit of "
                                f"{limits.max_manifest_bytes} (maxManifestBytes)")
    raw = parse_json(data, where, skip_depth=("blocks.chunks",))
    if not isinstance(raw, dict):
        raise BadBackupManifest(where, "(file)", "is not a JSON object")
    if raw.get("kind") != MANIFEST_KIND:
        raise BadBackupManifest(where, "kind", f"is not {MANIFEST_KIND!r}: not a Savepoint backup manifest")
    version = raw.get("formatVersion")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise BadBackupManifest(where, "formatVersion", f"format version {str(version)[:40]} is not one this "
                                f"Savepoint reads (1..{FORMAT_VERSION})")
    return _validate_manifest(raw, limits, where)


def read_manifest(directory: Path, limits: Limits | None = None, where: str | None = None) -> BackupManifest:
    """The manifest of a complete backup; ``ManifestMissing``/``BadBackupManifest`` otherwise."""
    where = where or str(directory / MANIFEST_FILE)
    return parse_manifest(read_manifest_bytes(directory, limits, where), where, limits)


def load_backup(root: Path, rel: str | PurePosixPath, *, expected_uid: str | None = None,
                expected_digest: str | None = None, owner: Owner | None = None,
                limits: Limits | None = None) -> tuple[Path, BackupManifest]:
    """A complete backup by its ``ns/uid/name`` path, checked to be the one expected.

    What restores call first: a path outside ``owner``'s namespace (``BadPath``), a missing directory
    or manifest, another backup's manifest (uid), a manifest changed since the backup was made
    (digest) or one out of bounds (``BadBackupManifest``) raise, so nothing is ever restored from the
    wrong data.
    """
    check_path_owner(rel, owner, same_name=False)
    directory = inside(root, rel)
    if not directory.is_dir():
        raise ManifestMissing(f"the backup's directory {rel!s} does not exist in the repository (its data is gone)")
    where = f"{rel}/{MANIFEST_FILE}"
    data = read_manifest_bytes(directory, limits, where)
    if expected_digest and digest_bytes(data) != expected_digest:
        raise ManifestInvalid(f"{where} changed since the backup was made (digest "
                              f"{digest_bytes(data)}, expected {expected_digest})")
    manifest = parse_manifest(data, where, limits)
    if expected_uid and manifest.backup.uid != expected_uid:
        raise ManifestInvalid(f"{where} belongs to backup uid {manifest.backup.uid}, not {expected_uid}")
    if manifest.rel_path() != PurePosixPath(rel):
        raise ManifestInvalid(f"{where} describes {manifest.rel_path()}, not {rel}: it was moved or copied there")
    return directory, manifest


def is_complete(directory: Path) -> bool:
    return os.path.lexists(directory / MANIFEST_FILE)


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
    # unreadable or inconsistent manifests: (path, "Reason: message")
    invalid: list[tuple[PurePosixPath, str]] = field(default_factory=list)


def _subdirs(path: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if not entry.name.startswith(RESERVED_PREFIX) and entry.is_dir(follow_symlinks=False):
            yield entry


def list_backups(root: Path, namespace: str | None = None, source_uid: str | None = None,
                 limits: Limits | None = None, *, keep_chunks: bool = False) -> Listing:
    """Complete backups under ``root`` (all, one namespace, or one source), sorted by completion time.

    A manifest must agree with where it lies (namespace/source/name): a copy
    moved to another place is reported invalid, not listed. So is one refused by the bounds
    (``BadBackupManifest``), with its reason; the listing itself never fails on a hostile file.
    Symlinks are never followed. Block manifests are validated in full but listed without their chunk
    list (``keep_chunks`` keeps it), so a listing's memory does not grow with the volumes' sizes.
    """
    listing = Listing()
    if namespace:
        ns_path = Path(root) / check_name(namespace, "namespace")
        namespaces = [ns_path] if os.path.isdir(ns_path) and not os.path.islink(ns_path) else []
    else:
        namespaces = [Path(e.path) for e in _subdirs(Path(root))]
    for ns_dir in namespaces:
        if source_uid:
            src_path = ns_dir / check_source_id(source_uid)
            sources = [src_path] if os.path.isdir(src_path) and not os.path.islink(src_path) else []
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
                    data = read_manifest_bytes(directory, limits, f"{rel}/{MANIFEST_FILE}")
                    manifest = parse_manifest(data, f"{rel}/{MANIFEST_FILE}", limits)
                except BadBackupManifest as exc:  # the path names the file: say which field, and why
                    listing.invalid.append((rel, f"{exc.reason}: {exc.field}: {exc.problem}"))
                    continue
                except RepositoryError as exc:
                    listing.invalid.append((rel, f"{exc.reason}: {exc.message}"))
                    continue
                try:
                    where = manifest.rel_path()
                except BadPath as exc:
                    listing.invalid.append((rel, f"{exc.reason}: {exc.message}"))
                    continue
                if where != rel:
                    listing.invalid.append((rel, f"{BadPath.reason}: its manifest describes {where}, not {rel}"))
                    continue
                if not keep_chunks and manifest.blocks is not None:
                    # validated in full; a listing needs only the counts (a large map is millions of entries)
                    manifest.blocks.chunks = []
                    manifest._chunk_map = None
                    manifest._listed_only = True
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
    gc_skipped: str | None = None  # why the sweep did not run (a manifest it cannot read): garbage stays


def _make_writable_and_retry(func: Any, path: str, _exc_info: Any) -> None:
    """rmtree's error hook: a directory without write permission (a non-root mover) is opened up and retried."""
    parent = os.path.dirname(path)
    with contextlib.suppress(OSError):
        st = os.lstat(parent)
        if stat.S_ISDIR(st.st_mode):
            os.chmod(parent, stat.S_IRWXU | st.st_mode)
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


def _remove_contents(directory: Path, keep: str) -> None:
    """Everything in ``directory`` but ``keep`` (never following a symlink: rmtree is fd-based here)."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, onerror=_make_writable_and_retry)  # onexc is 3.12+
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def remove_backup(root: Path, rel: str | PurePosixPath, *, owner: Owner, limits: Limits | None = None,
                  expected_uid: str | None = None, measure: bool = False) -> RemoveResult:
    """Remove one backup's directory -- ``owner``'s, checked right before -- safely and idempotently.

    Refused before anything is touched: a path outside ``owner``'s namespace or not named after it
    (``BadPath``), a directory that is not ``owner``'s (``BackupOwnerMismatch``: unmarked, or marked or
    recorded for another object -- it stays byte for byte), a symlink anywhere on the way.

    Order, so a crash at any point leaves no backup that is listed but broken, and nothing unmarked:
    ``backup.json`` goes first (the backup stops being listed or importable), then the data, then the
    owner marker (so a retry still recognises the rest as ours), then the directory, then -- when the
    source has a chunk store -- the chunks no remaining backup references (``collect_garbage``).
    Hard links make file-share backups independent: removing one never breaks another.
    """
    limits = limits or Limits()
    if expected_uid is not None and expected_uid != owner.uid:
        raise BadRequest(f"the backup uid {expected_uid} is not params.owner's uid {owner.uid}")
    check_path_owner(rel, owner, same_name=True)
    directory = inside(root, rel)
    src = directory.parent
    removed = False
    freed = files = 0
    found = check_owner(directory, rel, owner, limits)
    if found.exists:
        if not found.marked:
            write_owner_marker(directory, owner)  # proven ours (our backup.json): marked before anything goes
        if measure:
            freed, files = _tree_size(directory)
        with contextlib.suppress(FileNotFoundError):
            (directory / MANIFEST_FILE).unlink()
            _fsync_dir(directory)
        _remove_contents(directory, keep=OWNER_FILE)
        with contextlib.suppress(FileNotFoundError):
            (directory / OWNER_FILE).unlink()
        directory.rmdir()
        _fsync_dir(src)
        removed = True
    gc = None
    skipped = None
    chunks_dir = src / CHUNKS_DIR
    if os.path.lexists(chunks_dir):
        try:
            gc = collect_garbage(src, limits)
            freed += int(gc.get("bytes_freed", 0))
        except (BadBackupManifest, BadPath) as exc:
            skipped = f"{exc.reason}: {exc.message}"
    remove_if_empty(src)
    return RemoveResult(removed=removed, bytes_freed=freed, files_removed=files, gc=gc, gc_skipped=skipped)


def collect_garbage(source: Path, limits: Limits | None = None) -> dict[str, Any]:
    """Blocks: remove the chunks of ``source`` that no remaining backup references.

    The hook for the block-volume format: the chunk store's own mark and
    sweep (``savepoint.storage.chunks.collect_garbage``), which takes the
    store's exclusive lock and waits for running backups and restores.
    """
    from savepoint.storage import chunks  # late: file-share movers never need it

    result = chunks.collect_garbage(source, wait=True, limits=limits)
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
