"""Block-volume backups in the repository: ``blocks-backup``, ``blocks-restore``, ``blocks-verify``, ``blocks-delete``.

Each runs in a mover Job with the repository mounted as a volume (``repository``
is its mount path) and reaches RBD through librbd.  The chunk store and its
rules are ``savepoint.storage.chunks``; the layout and ``backup.json`` are
``savepoint.storage.repository``.  Results stay far below the 4 KiB
termination message: counts and a few names, never the chunk map.

Every action is idempotent, so a Job retried after a crash (or re-created after
an operator restart) is safe:

- ``blocks-backup`` that finds its own complete ``backup.json`` reports it
  again; otherwise it starts over, and the chunks a killed attempt stored are
  found in the store and not written twice.
- ``blocks-restore`` rewrites the target from scratch.
- ``blocks-delete`` of a removed backup still sweeps what may be left.

What every action takes from the repository is validated with bounds first (``params["limits"]``,
``repository.Limits``): a bad ``backup.json`` or chunk map ends it ``BadBackupManifest`` naming the
file and field, with nothing written. What deletes or overwrites repository data (``blocks-backup``
into an existing directory, ``blocks-delete``) checks the directory's owner (``params["owner"]``)
right before: another owner's or an unmarked directory ends it ``BackupOwnerMismatch``, untouched.
Paths outside the owner's namespace end it ``BadBackupPath``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from savepoint.mover.rbdcopy import credentials
from savepoint.mover.registry import ActionContext, ActionFailed, action
from savepoint.storage import ceph, chunks, rbd, repository
from savepoint.storage.errors import StorageError


def _ref(params: dict[str, Any]) -> rbd.ImageRef:
    return rbd.ImageRef(pool=params["pool"], image=params["image"], namespace=params.get("namespace") or None)


def _root(params: dict[str, Any]) -> Path:
    root = Path(params["repository"])
    if not root.is_dir():
        raise ActionFailed("RepositoryUnavailable", f"the repository is not mounted at {root} in the mover")
    return root


def _failed(exc: Exception, what: str = "using the repository", data: dict[str, Any] | None = None) -> ActionFailed:
    if isinstance(exc, ActionFailed):
        if data:
            exc.data = {**data, **exc.data}
        return exc
    extra = data or {}
    if isinstance(exc, repository.BackupOwnerMismatch):
        return ActionFailed(exc.reason, exc.message, {**extra, "directoryOwner": exc.found})
    if isinstance(exc, repository.BadBackupManifest):
        return ActionFailed(exc.reason, exc.message, {**extra, "file": exc.file, "field": exc.field})
    if isinstance(exc, chunks.CorruptChunk):
        return ActionFailed("VerificationFailed", str(exc), {**extra, "badChunks": 1, "bad": [
            {"digest": exc.digest, "offset": exc.offset, "problem": exc.problem}]})
    if isinstance(exc, (StorageError, repository.RepositoryError)):
        return ActionFailed(exc.reason, exc.message if hasattr(exc, "message") else str(exc), extra)
    if isinstance(exc, OSError):
        err = chunks.errno_error(exc, what)
        return ActionFailed(err.reason if err.reason != "StorageError" else "RepositoryError", err.message, extra)
    raise exc


def snapshot_id(image: Any, name: str) -> int | None:
    """The id of snapshot ``name`` (ids only grow: a recreated snapshot of the same name has another)."""
    snap = next((s for s in rbd.list_snapshots(image) if s.name == name), None)
    return snap.id if snap else None


# ---- blocks-backup ---------------------------------------------------------------------------


def _load_parent(root: Path, rel: str, base: dict[str, Any] | None, owner: repository.Owner,
                 limits: repository.Limits) -> tuple[repository.BackupManifest | None, str | None]:
    """(the parent's manifest, or None and why not incremental) from the ``base`` parameter -- before anything
    is written: a parent of another source or namespace is refused (``BadPath``), one whose ``backup.json``
    is out of bounds fails the backup (``BadBackupManifest``); one that is gone or replaced means a full read.
    """
    if not base:
        return None, "no earlier backup of this source to build on"
    if not isinstance(base, dict) or not isinstance(base.get("parentPath"), str):
        raise repository.BadRequest("params.base must be {parentPath, parentUid} or null")
    parent_rel = base["parentPath"]
    repository.check_same_source(rel, parent_rel, "the parent backup")
    try:
        _, parent = repository.load_backup(root, parent_rel, expected_uid=base.get("parentUid"), owner=owner,
                                           limits=limits)
    except repository.BadBackupManifest:
        raise
    except repository.RepositoryError as exc:
        return None, f"the earlier backup {parent_rel} cannot be used ({exc.message})"
    if parent.format != repository.FORMAT_BLOCKS or parent.blocks is None:
        return None, f"the earlier backup {parent_rel} is not a block backup"
    return parent, None


def _parent_map(parent: repository.BackupManifest | None, why: str | None,
                image: Any) -> tuple[chunks.ChunkMap | None, str | None, str | None, str | None]:
    """(parent map, base snapshot, parent name, why not incremental).

    The parent's map may be used only with the very snapshot it was read
    from: same name and same snapshot id as its ``blocks`` section recorded.
    """
    if parent is None or parent.blocks is None:
        return None, None, None, why
    section = parent.blocks.to_json_dict()
    snap = section.get("baseSnapshot")
    want_id = section.get("snapshotId")
    name = f"{parent.rel_path()}"
    if not snap or want_id is None:
        return None, None, None, f"the earlier backup {name} recorded no base snapshot"
    have_id = snapshot_id(image, snap)
    if have_id is None:
        return None, None, None, f"the base snapshot {snap} of the earlier backup is gone from the volume"
    if have_id != want_id:
        return None, None, None, (f"snapshot {snap} on the volume is not the one the earlier backup was read from "
                                  f"(id {have_id}, expected {want_id})")
    return parent.chunk_map(), snap, parent.backup.name, None


@action("blocks-backup")
def blocks_backup(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Back up an RBD image at a snapshot into ``<repository>/<backupPath>``, then write ``backup.json``.

    params:
      repository   mount path of the repository
      backupPath   NAMESPACE/SOURCE-UID/BACKUP-NAME (NAMESPACE and BACKUP-NAME: the owner's)
      source       {pool, image, namespace, snapshot}: the temporary snapshot to read
      snapshotName the name that snapshot keeps afterwards as the source's base (recorded for the next backup)
      base         {parentPath, parentUid} of the previous backup (same NAMESPACE/SOURCE-UID), or null
      manifest     the operator's part of backup.json (backup, source, created, labels)
      owner        {namespace, name, uid} of the ShareBackup (default: manifest.backup; both given: equal)
      verify       re-read every chunk of the new map and check it before backup.json is written
      chunkSize    bytes (default 4 MiB; one of chunks.ALLOWED_CHUNK_SIZES)
      limits       {maxVolumeBytes, maxManifestBytes} (optional)
    """
    started = time.monotonic()
    root = _root(params)
    try:
        limits = repository.Limits.from_params(params)
        rel = params["backupPath"]
        src = _ref(params["source"])
        snap = params["source"]["snapshot"]
        chunk_size = params.get("chunkSize") or chunks.DEFAULT_CHUNK_SIZE
        if type(chunk_size) is not int or chunk_size not in chunks.ALLOWED_CHUNK_SIZES:
            raise repository.BadRequest(f"params.chunkSize {str(chunk_size)[:40]} is not one of "
                                        f"{sorted(chunks.ALLOWED_CHUNK_SIZES)}")
        base_manifest = dict(params["manifest"])
        owner = repository.owner_from_params(params, required=True, default=base_manifest.get("backup"))
        assert owner is not None
        namespace, source_uid, name = repository.check_path_owner(rel, owner, same_name=True)
        directory = repository.inside(root, rel)
        found = repository.check_owner_before_backup(directory, rel, owner, limits)  # before anything is written
        if found.manifest is not None:
            return _summary_from_manifest(found.manifest, directory, again=True, limits=limits)
        parent, parent_why = _load_parent(root, rel, params.get("base"), owner, limits)  # before anything is written
        with ceph.connect(credentials(ctx)) as cluster, ceph.open_ioctx(cluster, src.pool, src.namespace) as ioctx, \
                rbd.open_image(ioctx, src.image, snapshot=snap, read_only=True) as image:
            sid = snapshot_id(image, snap)
            if sid is None:
                raise ActionFailed("SnapshotNotFound", f"{src}@{snap} does not exist")
            size = int(image.size())
            if size > limits.max_volume_bytes or -(-size // chunk_size) > chunks.MAX_CHUNK_INDEXES:
                raise ActionFailed("InvalidSpec", f"{src} has {size} bytes; backups of volumes larger than "
                                   f"{limits.max_volume_bytes} bytes (maxVolumeBytes) in chunks of {chunk_size} "
                                   "are not made, since no restore would read them")
            directory, _ = repository.claim_backup_dir(root, rel, owner, limits)  # the owner marker first
            store = chunks.ChunkStore(directory.parent)
            with store.locked(exclusive=False):
                parent_map, base_snap, parent_name, reason = _parent_map(parent, parent_why, image)
                result = chunks.backup_image(image, store, base_snapshot=base_snap, parent=parent_map,
                                             chunk_size=chunk_size, on_progress=ctx.progress, known_reason=reason)
                blocks = {**result.chunk_map.to_dict(), "baseSnapshot": params.get("snapshotName") or snap,
                          "snapshotId": sid, "readSnapshot": snap,
                          "image": {"pool": src.pool, "namespace": src.namespace, "image": src.image},
                          "bytesReadRepository": result.bytes_read_repository}
                chunks.write_chunk_map(directory, result.chunk_map, blocks)
                verified = None
                if params.get("verify"):
                    check = chunks.verify_chunks(store, result.chunk_map)
                    if not check.ok:
                        raise ActionFailed("VerificationFailed", check.message(), check.summary())
                    verified = check.chunks
                manifest = repository.build_manifest({
                    **base_manifest,
                    "format": repository.FORMAT_BLOCKS,
                    "completed": repository.utcnow(),
                    "parent": parent_name,
                    "parentUid": (params.get("base") or {}).get("parentUid") if parent_name else None,
                    "incremental": result.full_read_reason is None,
                    "fullReadReason": result.full_read_reason,
                    "bytesTotal": result.chunk_map.data_bytes,
                    "bytesRead": result.bytes_read,
                    "bytesStored": result.bytes_stored,
                    "toolVersion": repository.tool_version("chunks " + chunks.FORMAT),
                    "blocks": blocks,
                }, limits, f"{rel}/{repository.MANIFEST_FILE}")
                if manifest.backup.namespace != namespace or manifest.source.uid != source_uid \
                        or manifest.backup.name != name:
                    raise ActionFailed("InvalidSpec", f"the manifest describes {manifest.rel_path()}, not {rel}")
                digest = repository.write_manifest(directory, manifest, limits)
    except Exception as exc:  # mapped to a reason, or re-raised
        raise _failed(exc, "writing the backup into the repository") from exc
    summary = result.summary()
    summary["seconds"]["total"] = round(time.monotonic() - started, 3)
    summary.update(manifestDigest=digest, repositoryPath=str(rel), snapshotId=sid, parent=parent_name,
                   bytes=result.bytes_read, verifiedChunks=verified)
    return summary


def _summary_from_manifest(manifest: repository.BackupManifest, directory: Path, *, again: bool,
                           limits: repository.Limits) -> dict[str, Any]:
    blocks = manifest.blocks.to_json_dict() if manifest.blocks else {}
    data = repository.read_manifest_bytes(directory, limits)
    return {"bytesRead": manifest.bytes_read, "bytesStored": manifest.bytes_stored,
            "chunkCount": blocks.get("chunkCount"), "size": blocks.get("size"), "dataBytes": manifest.bytes_total,
            "checksum": blocks.get("checksum"), "incremental": manifest.incremental,
            "fullReadReason": manifest.full_read_reason, "manifestDigest": repository.digest_bytes(data),
            "snapshotId": blocks.get("snapshotId"), "parent": manifest.parent, "alreadyComplete": again,
            "bytes": manifest.bytes_read}


# ---- blocks-restore ---------------------------------------------------------------------------


@action("blocks-restore")
def blocks_restore(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Restore ``<repository>/<backupPath>`` into an existing RBD image, sparsely, verifying every chunk.

    params: repository, backupPath, expectedUid, expectedDigest (of backup.json),
    target {pool, image, namespace}, exactSize (the in-place rule: sizes must be
    equal), readback (read the image back and compare the checksum); owner (optional:
    {namespace, name, uid} of the ShareRestore; backupPath must lie in its namespace), limits.
    The target is held under librbd's exclusive lock and must have no other
    watchers (nobody has it open).
    """
    root = _root(params)
    dst = _ref(params["target"])
    touched = False  # nothing written to the target yet: a failure leaves it as it was
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=False)
        directory, manifest = repository.load_backup(root, params["backupPath"],
                                                     expected_uid=params.get("expectedUid"),
                                                     expected_digest=params.get("expectedDigest"), owner=owner,
                                                     limits=limits)
        if manifest.format != repository.FORMAT_BLOCKS or manifest.blocks is None:
            raise ActionFailed("InvalidSpec", f"{params['backupPath']} is a {manifest.format} backup, not blocks")
        chunk_map = manifest.chunk_map()
        store = chunks.ChunkStore(directory.parent)
        with ceph.connect(credentials(ctx)) as cluster:
            me = ceph.client_id(cluster)
            with ceph.open_ioctx(cluster, dst.pool, dst.namespace) as ioctx, \
                    rbd.exclusive_lock(ioctx, dst.image) as image:
                users = rbd.watchers(image, exclude_client=me)
                if users:
                    raise ActionFailed("VolumeInUse", f"{dst} is open elsewhere: "
                                       + ", ".join(w.address for w in users))
                size = image.size()
                if params.get("exactSize") and size != chunk_map.size:
                    raise ActionFailed("SizeMismatch", f"{dst} has {size} bytes, the backup {chunk_map.size}: "
                                       "restoring into the source needs equal sizes")
                with store.locked(exclusive=False):
                    chunks.verify_readable(store, chunk_map)  # every chunk there, before the first write
                    touched = True
                    result = chunks.restore_image(store, chunk_map, image, on_progress=ctx.progress,
                                                  readback=bool(params.get("readback")))
    except Exception as exc:
        raise _failed(exc, "reading the backup from the repository", {"targetTouched": touched}) from exc
    return {"bytes": result.bytes_written, "bytesWritten": result.bytes_written,
            "bytesRead": sum(ref.length for ref in chunk_map.chunks), "bytesDiscarded": result.bytes_discarded, "chunks": result.chunks, "checksum": result.checksum,
            "size": chunk_map.size, "targetSize": size}


# ---- blocks-verify ------------------------------------------------------------------------------


@action("blocks-verify")
def blocks_verify(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Re-read every chunk of a backup and check its size and sha256; a bad chunk fails naming it.

    params: repository, backupPath, expectedUid, expectedDigest; owner (optional: backupPath must lie in
    its namespace), limits.
    """
    root = _root(params)
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=False)
        directory, manifest = repository.load_backup(root, params["backupPath"],
                                                     expected_uid=params.get("expectedUid"),
                                                     expected_digest=params.get("expectedDigest"), owner=owner,
                                                     limits=limits)
        if manifest.blocks is None:
            raise ActionFailed("InvalidSpec", f"{params['backupPath']} is not a block backup")
        chunk_map = manifest.chunk_map()
        store = chunks.ChunkStore(directory.parent)
        with store.locked(exclusive=False):
            result = chunks.verify_chunks(store, chunk_map, on_progress=ctx.progress)
    except Exception as exc:
        raise _failed(exc, "reading the backup from the repository") from exc
    if not result.ok:
        raise ActionFailed("VerificationFailed", result.message(), result.summary())
    return {**result.summary(), "bytes": result.bytes, "bytesRead": result.bytes, "bytesWritten": 0,
            "checksum": chunk_map.checksum()}


# ---- blocks-delete ------------------------------------------------------------------------------


@action("blocks-delete")
def blocks_delete(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Remove a backup's directory (``backup.json`` first), then sweep the chunks nothing else uses.

    params: repository, backupPath, owner {namespace, name, uid} (required: the ShareBackup; the
    directory must be its own, checked right before), expectedUid (optional; = owner.uid), limits.
    Idempotent: a removed backup sweeps again (finishing a sweep a crash cut short).
    """
    root = _root(params)
    try:
        limits = repository.Limits.from_params(params)
        owner = repository.owner_from_params(params, required=True)
        assert owner is not None
        result = repository.remove_backup(root, params["backupPath"], owner=owner, limits=limits,
                                          expected_uid=params.get("expectedUid"))
    except Exception as exc:
        raise _failed(exc, "removing the backup from the repository") from exc
    gc = result.gc or {}
    return {"removed": result.removed, "bytesFreed": result.bytes_freed, "chunksRemoved": gc.get("removed", 0),
            "chunksKept": gc.get("kept", 0), "backupsLeft": gc.get("backups", 0),
            "chunksMissing": gc.get("missing", 0), "gcSkipped": (result.gc_skipped or "")[:500] or None, "bytes": 0}
