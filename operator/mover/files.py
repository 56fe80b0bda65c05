"""Mover actions of file-share backups, and the repository actions both formats share.

Each runs in a Job that mounts the share and/or the repository as Kubernetes
volumes (the operator never mounts anything):

- ``files-backup``: rsync the share into ``<repo>/<path>/data`` (incremental
  to the parent backup with ``--link-dest``), optionally verify both sides,
  then write ``backup.json`` last.  Idempotent: a retried Job completes a
  half-written directory; a complete one of the same uid is reported as is.
- ``files-restore``: check the backup (manifest, uid, digest, every entry
  present), then rsync ``data/`` into the target (``--delete`` with
  deleteExtraFiles).
- ``files-verify``: re-hash a stored backup against its ``checksums.jsonl``.
- ``repository-delete``: remove one backup's directory (``backup.json``
  first; for block volumes also the chunks nothing references any more).
- ``repository-list``: the complete backups of a namespace, compressed and
  paged to fit the 4 KiB termination message (``kubectl savepoint backups
  import`` reads it).

Results stay small: the termination message holds at most 4 KiB.

Trust: everything read from the repository is validated with bounds first (``params["limits"]``); a
bad ``backup.json`` (or ``checksums.jsonl``) ends the action ``BadBackupManifest`` naming the file and
field. Actions that delete or overwrite repository data (``files-backup`` into an existing
directory, ``repository-delete``) check the directory's owner (``params["owner"]``) right before and
end ``BackupOwnerMismatch`` when it is not the owner's; paths outside the owner's namespace end
``BadBackupPath``. The exact params: ``docs/repository.md``, "Mover requests".
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from savepoint.mover.registry import ActionContext, ActionFailed, action
from savepoint.storage import files, repository
from savepoint.storage.repository import BackupManifest, ChecksumInfo, RepositoryError

SOURCE_MOUNT = "/savepoint/source"
REPOSITORY_MOUNT = "/savepoint/repository"
TARGET_MOUNT = "/savepoint/target"

# Reasons (savepoint.api.Reason values; not imported: the mover stays free of the API package).
BACKUP_DATA_MISSING = "BackupDataMissing"
VERIFICATION_FAILED = "VerificationFailed"
INVALID_SPEC = "InvalidSpec"
MOVER_FAILED = "MoverFailed"
REPOSITORY_UNREACHABLE = "MoverFailed"

UNTOUCHED = {"targetTouched": False}  # a restore that failed before writing anything: no error state needed
LIST_PAGE_BYTES = 3000  # compressed entries per page: leaves room in the 4 KiB termination message


def _dir(params: dict[str, Any], key: str, what: str) -> Path:
    path = Path(params.get(key) or "")
    if not path.is_absolute() or not path.is_dir():
        raise ActionFailed(MOVER_FAILED, f"the {what} is not mounted in the mover at {path} (is the volume there?)",
                           UNTOUCHED)
    return path


def _progress(ctx: ActionContext) -> files.ProgressFn:
    return lambda done, total, count: ctx.progress(done, total, files=count)


def _failed(exc: files.RsyncFailed) -> ActionFailed:
    return ActionFailed(MOVER_FAILED, str(exc)[:1500], {"rsyncExit": exc.code, "noSpace": exc.no_space})


def _refused(exc: RepositoryError, data: dict[str, Any] | None = None) -> ActionFailed:
    """A repository error as the action's failure, with what the caller needs to act on it."""
    extra = dict(data or {})
    if isinstance(exc, repository.BackupOwnerMismatch):
        extra["directoryOwner"] = exc.found
    elif isinstance(exc, repository.BadBackupManifest):
        extra.update(file=exc.file, field=exc.field)
    return ActionFailed(exc.reason, exc.message, extra)


def _summary(manifest: BackupManifest, digest: str, **extra: Any) -> dict[str, Any]:
    return {"bytes": manifest.bytes_total, "files": manifest.file_count, "entries": manifest.entries,
            "bytesTotal": manifest.bytes_total, "bytesRead": manifest.bytes_read,
            "bytesStored": manifest.bytes_stored, "digest": digest, "incremental": manifest.incremental,
            "parent": manifest.parent, "fullReadReason": manifest.full_read_reason,
            "metadataDropped": manifest.metadata_dropped,
            "verifiedFiles": manifest.checksums.files if manifest.checksums else None, **extra}


@action("files-backup")
def files_backup(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: source, repository (mount paths), path (ns/uid/name: the owner's namespace and name), parent
    (ns/uid/name of the same source, or None), parentUid, verify (bool), manifest (the BackupManifest fields
    the operator knows: backup, source, created, labels), owner ({namespace, name, uid} of the ShareBackup;
    default manifest.backup, both given: equal), limits ({maxVolumeBytes, maxManifestBytes}, optional)."""
    source = _dir(params, "source", "share to back up")
    root = _dir(params, "repository", "backup repository")
    try:
        limits = repository.Limits.from_params(params)
        rel = params["path"]
        known = dict(params["manifest"])
        owner = repository.owner_from_params(params, required=True, default=known.get("backup"))
        assert owner is not None
        repository.check_path_owner(rel, owner, same_name=True)
        parent_rel = params.get("parent")
        if parent_rel:
            repository.check_same_source(rel, parent_rel, "the parent backup")
        target = repository.inside(root, rel)
        found = repository.check_owner_before_backup(target, rel, owner, limits)  # before anything is written
        if found.manifest is not None:  # a retried Job after the manifest was written: report it
            done = found.manifest
            return _summary(done, repository.digest_bytes(repository.read_manifest_bytes(target, limits)),
                            resumed=True)
        parent_dir = parent_manifest = None
        full_reason = None
        if parent_rel:
            try:
                parent_dir, parent_manifest = repository.load_backup(root, parent_rel,
                                                                     expected_uid=params.get("parentUid"),
                                                                     owner=owner, limits=limits)
                if parent_manifest.format != repository.FORMAT_FILES:
                    raise repository.ManifestInvalid(f"{parent_rel} is a {parent_manifest.format} backup")
            except repository.BadBackupManifest:
                raise
            except RepositoryError as exc:
                parent_dir = parent_manifest = None
                full_reason = f"the previous backup cannot be linked to ({exc.message}); this one is a full copy"
        target, _ = repository.claim_backup_dir(root, rel, owner, limits)  # the owner marker first
        data = target / repository.DATA_DIR
        for tree, what in ((data, "this backup's"), ((parent_dir / repository.DATA_DIR) if parent_dir else None,
                                                     "the parent backup's")):
            if tree is not None and os.path.islink(tree):
                raise repository.BadPath(f"{what} {repository.DATA_DIR}/ is a symlink; rsync never writes or links "
                                         "through one")
        caps = files.probe(target)
        started = time.time()
        try:
            result = files.copy_tree(
                source, data, link_dest=(parent_dir / repository.DATA_DIR) if parent_dir else None, delete=True,
                caps=caps, on_progress=_progress(ctx),
                expected_bytes=parent_manifest.bytes_total if parent_manifest else 0,
                expected_files=(parent_manifest.entries or 0) if parent_manifest else 0, what=f"backing up {rel}")
        except files.RsyncFailed as exc:
            raise _failed(exc) from None
        stats = result.stats
        entries = stats.files if not result.vanished else files.count_entries(data)
        checksums = None
        changed = 0
        bytes_read = result.items.received_bytes
        if params.get("verify"):
            report = files.verify_copy(source, data, since=started,
                                       checksums_out=target / repository.CHECKSUMS_FILE, caps=caps,
                                       on_progress=_progress(ctx), expected_bytes=stats.total_size)
            if not report.ok:
                raise ActionFailed(VERIFICATION_FAILED, report.message(),
                                   {"mismatches": len(report.mismatches), "verifiedFiles": report.files})
            checksums = ChecksumInfo(digest=report.checksums_digest or "", files=report.files)
            changed = report.changed_during
            bytes_read += report.bytes
        manifest = repository.build_manifest({
            **known,
            "format": repository.FORMAT_FILES,
            "completed": repository.utcnow(),
            "parent": parent_manifest.backup.name if parent_manifest else None,
            "parentUid": parent_manifest.backup.uid if parent_manifest else None,
            "incremental": parent_manifest is not None,
            "fullReadReason": full_reason,
            "fileCount": entries - stats.directories if result.vanished else stats.non_directories,
            "entries": entries,
            "bytesTotal": stats.total_size,
            "bytesRead": bytes_read,
            "bytesStored": result.items.new_bytes,
            "checksums": checksums.to_json_dict() if checksums else None,
            "metadataDropped": caps.dropped,
            "toolVersion": repository.tool_version(f"rsync {files.rsync_version()}"),
        }, limits, f"{rel}/{repository.MANIFEST_FILE}")
        if manifest.rel_path() != PurePosixPath(rel):
            raise ActionFailed(INVALID_SPEC, f"the manifest describes {manifest.rel_path()}, not {rel}")
        digest = repository.write_manifest(target, manifest, limits)
    except RepositoryError as exc:
        raise _refused(exc) from None
    return _summary(manifest, digest, seconds=round(result.seconds, 3), vanished=result.vanished,
                    changedDuringBackup=changed, newFiles=result.items.new_files)


@action("files-restore")
def files_restore(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: repository, target (mount paths), path, backupUid, manifestDigest, deleteExtraFiles; owner
    (optional: {namespace, name, uid} of the ShareRestore -- path must lie in its namespace), limits."""
    root = _dir(params, "repository", "backup repository")
    target = _dir(params, "target", "restore target")
    rel = params["path"]
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=False)
        directory, manifest = repository.load_backup(root, rel, expected_uid=params.get("backupUid"),
                                                     expected_digest=params.get("manifestDigest"), owner=owner,
                                                     limits=limits)
    except RepositoryError as exc:
        raise _refused(exc, UNTOUCHED) from None
    if manifest.format != repository.FORMAT_FILES:
        raise ActionFailed(INVALID_SPEC, f"{rel} is a {manifest.format} backup; files-restore restores file trees",
                           UNTOUCHED)
    data = directory / repository.DATA_DIR
    if os.path.islink(data):
        raise ActionFailed(repository.BadPath.reason, f"{rel}/{repository.DATA_DIR} is a symlink; a backup's tree is "
                           "never read through one", UNTOUCHED)
    if not data.is_dir():
        raise ActionFailed(BACKUP_DATA_MISSING, f"{rel}/{repository.DATA_DIR} is gone from the repository", UNTOUCHED)
    present = files.count_entries(data)
    if manifest.entries is not None and present != manifest.entries:
        raise ActionFailed(BACKUP_DATA_MISSING,
                           f"{rel} is damaged: its tree has {present} entries, the manifest recorded "
                           f"{manifest.entries}; nothing was restored", UNTOUCHED)
    caps = files.probe(target)
    try:
        result = files.copy_tree(data, target, delete=bool(params.get("deleteExtraFiles", True)), caps=caps,
                                 on_progress=_progress(ctx), expected_bytes=manifest.bytes_total,
                                 expected_files=manifest.entries or 0, what=f"restoring {rel}")
    except files.RsyncFailed as exc:
        raise _failed(exc) from None
    if result.vanished or (manifest.entries is not None and result.stats.files != manifest.entries):
        raise ActionFailed(BACKUP_DATA_MISSING, f"{rel} changed while it was restored ({result.stats.files} entries "
                           f"read, {manifest.entries} expected); the target is incomplete")
    stats = result.stats
    return {"bytes": stats.total_size, "files": stats.non_directories, "entries": stats.files,
            "bytesWritten": result.items.new_bytes, "transferred": result.items.new_files, "deleted": stats.deleted,
            "metadataDropped": caps.dropped, "seconds": round(result.seconds, 3)}


@action("files-verify")
def files_verify(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: repository, path, backupUid, manifestDigest; owner (optional: path must lie in its namespace),
    limits: re-hash a stored backup against its checksums."""
    root = _dir(params, "repository", "backup repository")
    rel = params["path"]
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=False)
        directory, manifest = repository.load_backup(root, rel, expected_uid=params.get("backupUid"),
                                                     expected_digest=params.get("manifestDigest"), owner=owner,
                                                     limits=limits)
    except RepositoryError as exc:
        raise _refused(exc) from None
    data = directory / repository.DATA_DIR
    if os.path.islink(data):
        raise ActionFailed(repository.BadPath.reason, f"{rel}/{repository.DATA_DIR} is a symlink; a backup's tree is "
                           "never read through one")
    present = files.count_entries(data) if data.is_dir() else 0
    if manifest.entries is not None and present != manifest.entries:
        raise ActionFailed(BACKUP_DATA_MISSING, f"{rel}: {present} entries, the manifest recorded {manifest.entries}")
    if manifest.checksums is None:
        return {"bytes": 0, "files": 0, "entries": present, "checksums": False}
    try:
        report = files.verify_against_checksums(data, directory / repository.CHECKSUMS_FILE,
                                                on_progress=_progress(ctx), expected=manifest.checksums,
                                                where=f"{rel}/{repository.CHECKSUMS_FILE}",
                                                limit=limits.max_manifest_bytes)
    except RepositoryError as exc:
        raise _refused(exc) from None
    if not report.ok:
        raise ActionFailed(VERIFICATION_FAILED, report.message(), {"mismatches": len(report.mismatches)})
    return {"bytes": report.bytes, "files": report.files, "entries": present, "checksums": True}


@action("repository-delete")
def repository_delete(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: repository, path, owner {namespace, name, uid} (required: the ShareBackup whose directory it is,
    checked right before), backupUid (optional; = owner.uid), limits: remove one backup (either format),
    idempotently."""
    root = _dir(params, "repository", "backup repository")
    rel = params["path"]
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=True)
        assert owner is not None
        result = repository.remove_backup(root, rel, owner=owner, limits=limits, expected_uid=params.get("backupUid"))
    except RepositoryError as exc:
        raise _refused(exc) from None
    except OSError as exc:
        raise ActionFailed("DeletionFailed", f"removing {rel}: {exc}") from None
    out: dict[str, Any] = {"bytes": 0, "removed": result.removed, "bytesFreed": result.bytes_freed}
    if result.gc:
        out["gc"] = {k: v for k, v in result.gc.items() if isinstance(v, int)}
    if result.gc_skipped:
        out["gcSkipped"] = result.gc_skipped[:500]
    return out


def _entry(listed: repository.ListedBackup) -> dict[str, Any]:
    m = listed.manifest
    return {"path": str(listed.rel_path), "digest": listed.digest, "name": m.backup.name, "uid": m.backup.uid,
            "namespace": m.backup.namespace, "format": m.format, "sourceUid": m.source.uid,
            "pvc": m.source.pvc_name, "reference": m.source.reference, "description": m.source.description,
            "sizeBytes": m.source.size_bytes, "created": m.created.isoformat(), "completed": m.completed.isoformat(),
            "parent": m.parent, "fileCount": m.file_count, "chunkCount": m.blocks.chunk_count if m.blocks else None,
            "bytesTotal": m.bytes_total, "bytesStored": m.bytes_stored, "bytesRead": m.bytes_read,
            "verified": m.checksums is not None, "labels": m.labels}


def pack(entries: list[dict[str, Any]]) -> str:
    return base64.b64encode(zlib.compress(json.dumps(entries, separators=(",", ":")).encode(), 9)).decode()


def unpack(text: str) -> list[dict[str, Any]]:
    return list(json.loads(zlib.decompress(base64.b64decode(text))))


@action("repository-list")
def repository_list(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """params: repository, namespace (optional), offset, limits: one page of complete backups, compressed.

    Read-only. Directories whose ``backup.json`` is refused (out of bounds, malformed, moved) are not
    listed: ``invalidCount`` counts them and ``invalid`` names the first few, ``PATH: Reason: message``."""
    root = _dir(params, "repository", "backup repository")
    try:
        limits = repository.Limits.from_params(params)
        listing = repository.list_backups(root, params.get("namespace") or None, limits=limits)
    except RepositoryError as exc:
        raise _refused(exc) from None
    offset = params.get("offset") or 0
    if type(offset) is not int or offset < 0:
        raise ActionFailed("BadMoverRequest", f"params.offset {str(offset)[:40]} is not a non-negative integer")
    page: list[dict[str, Any]] = []
    for listed in listing.backups[offset:]:
        candidate = page + [_entry(listed)]
        if page and len(pack(candidate)) > LIST_PAGE_BYTES:
            break
        page = candidate
    following = offset + len(page)
    return {"bytes": 0, "total": len(listing.backups), "offset": offset, "count": len(page),
            "next": following if following < len(listing.backups) else None, "entries": pack(page),
            "incomplete": len(listing.incomplete), "invalidCount": len(listing.invalid),
            "invalid": [f"{p}: {why}"[:240] for p, why in listing.invalid[:3]],
            "listedAt": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "root": os.fspath(root)}
