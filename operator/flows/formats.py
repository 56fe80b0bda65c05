"""What ShareBackup/ShareRestore do the same for every format, and the hooks where formats differ.

The backup and restore flows (``flows/backup.py``, ``flows/restore.py``) own
the life cycle every backup shares -- validation, quotas, the PVC lock and
states, phases, Events, metrics, deletion, restart safety.  Everything that
depends on *how* the data is stored is behind ``BackupFormat``:

- ``files`` (``flows/files_format.py``): NFS and CephFS shares, copied by rsync
  into a browsable tree (repository format ``files``, status.format ``Tree``).
- ``blocks`` (``flows/blocks_format.py``, the block-volume side): RBD volumes,
  read through librbd into content-addressed chunks (``blocks``/``Chunks``).

The flow picks the format from the resolved source (``for_target``) when it
backs up, and from ``status.format`` of the backup when it restores or
deletes.  A hook may ``ctx.wait``/``ctx.fail``/``ctx.refuse`` (raising; inside a
step of the step runner a failure ends through the flow's undo), must be
idempotent (the operator can die anywhere and calls it again), and must record
the name of any temporary object in status *before* creating it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Protocol, runtime_checkable

from savepoint.kube import k8s, locks, references
from savepoint.api import NewClaim, Reason
from savepoint.api.quantity import to_quantity
from savepoint.engine.context import FlowContext
from savepoint.mover.request import MoverRequest, MoverVolume, NfsSource
from savepoint.storage import repository as repo
from savepoint.storage.ceph import CephCredentials

# PVC states (``savepoint.dev/state``) of the seed: share backup_creating, backup_restoring, backup_restoring_error.
STATE_CREATING = "backup-creating"
STATE_RESTORING = "backup-restoring"
STATE_RESTORING_ERROR = "backup-restoring-error"
BACKUP_STATE_RESTORING = "restoring"  # on the ShareBackup itself while a restore reads it

# Annotations on ShareBackup objects.
ANN_REPOSITORY = "savepoint.dev/repository"  # the repository decided at creation (JSON, spec.repository form)
ANN_BACKUP_UID = "savepoint.dev/backup-uid"  # an imported object: the uid its backup.json names
ANN_IMPORTED = "savepoint.dev/imported"  # an imported object: what the repository listing said (JSON)
ANN_DELETION_POLICY = "savepoint.dev/deletion-policy"  # "Retain": deleting the object keeps the data
# On the ShareRestore's created claim.
ANN_CREATED_BY = "savepoint.dev/created-by"  # ShareRestore/<name> <uid>

GROUP, VERSION = k8s.GROUP, k8s.VERSION


# ---- the repository -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Repository:
    """A resolved repository: a claim in the namespace, or an NFS export; ``ref`` is the API form."""

    ref: dict[str, Any]

    @property
    def claim_name(self) -> str | None:
        return (self.ref.get("persistentVolumeClaim") or {}).get("name")

    @property
    def nfs(self) -> dict[str, str] | None:
        return self.ref.get("nfs")

    def key(self) -> str:
        """Canonical JSON: backups are incremental only to backups in the same repository."""
        return json.dumps(self.ref, sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        if self.claim_name:
            return f"pvc/{self.claim_name}"
        assert self.nfs is not None
        return f"nfs:{self.nfs['server']}:{self.nfs['path']}"


def recorded_repository(ctx: FlowContext, backup: dict[str, Any] | None) -> Repository | None:
    """The repository a ShareBackup recorded: ``status.repository`` (the operator's own record), else the
    annotation of an object made by an older version or by ``kubectl savepoint backups import`` -- which any
    user can write, so it is checked like a spec field (``repository_allowed``) and ignored when it fails."""
    status = (backup or {}).get("status") or {}
    if isinstance(status.get("repository"), dict):
        recorded = Repository(dict(status["repository"]))
        if recorded.claim_name or recorded.nfs:
            return recorded
    annotations = ((backup or {}).get("metadata") or {}).get("annotations") or {}
    legacy = repository_from_annotation(annotations.get(ANN_REPOSITORY))
    if legacy is not None and repository_allowed(ctx, legacy):
        return legacy
    return None


def repository_allowed(ctx: FlowContext, repository: Repository) -> bool:
    """May a CR of this namespace use ``repository``?  A claim is looked up in the CR's own namespace; a raw
    NFS export only where raw references are allowed, or when it is the operator's default repository."""
    if repository.claim_name:
        return True
    default = ctx.settings.default_repository or {}
    return (repository.nfs == default.get("nfs") and bool(repository.nfs)) or \
        ctx.settings.raw_references_allowed(ctx.owner.namespace)


def repository_from_annotation(value: str | None) -> Repository | None:
    if not value:
        return None
    try:
        ref = json.loads(value)
    except ValueError:
        return None
    if not isinstance(ref, dict) or not (ref.get("persistentVolumeClaim") or ref.get("nfs")):
        return None
    return Repository(ref)


# ---- the source -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """What a backup reads. ``resolved`` is None when it could not be looked up (cleanup after the fact)."""

    reference: dict[str, Any]  # spec.source, API form
    uid: str  # PVC uid, or raw-<hash> for a raw reference
    description: str  # pvc/NAME, nfs:SERVER:/PATH, rbd:POOL/IMAGE
    size_bytes: int | None
    resolved: references.ResolvedVolume | None = None

    @property
    def pvc_name(self) -> str | None:
        return (self.reference.get("persistentVolumeClaim") or {}).get("name")

    def volume(self, *, mount_path: str, read_only: bool = True) -> MoverVolume:
        """The share as a mover volume: the export behind the claim, or a raw NFS export."""
        if self.resolved is not None:
            return share_volume("source", self.resolved.target, mount_path=mount_path, read_only=read_only)
        nfs = self.reference.get("nfs")
        if not nfs:
            raise ValueError(f"{self.description} cannot be mounted as a file share")
        return share_volume("source", references.NfsTarget(server=nfs["server"], path=nfs["path"]),
                            mount_path=mount_path, read_only=read_only)


# ---- what a mover mounts --------------------------------------------------------------------------
# Movers run in the operator's namespace (savepoint.engine.movers), so they cannot mount a tenant's claim:
# the operator mounts the NFS export behind it, which it resolved in the tenant's own namespace.


def mountable(target: references.Target, what: str) -> references.NfsTarget:
    """The NFS export a mover mounts for ``target``; ``RefusedError`` when it cannot mount it."""
    if isinstance(target, references.NfsTarget):
        return target
    raise references.RefusedError(
        Reason.UNSUPPORTED_VOLUME,
        f"{what} is {target}; movers mount NFS exports (an in-tree nfs PV, the NFS CSI driver, or a raw nfs "
        "reference) — CephFS shares are not supported by this version")


def share_volume(name: str, target: references.Target, *, mount_path: str, read_only: bool,
                 sub_path: str | None = None) -> MoverVolume:
    export = mountable(target, name)
    return MoverVolume(name=name, mount_path=mount_path, read_only=read_only, sub_path=sub_path,
                       nfs=NfsSource(server=export.server, path=export.path))


def repository_export(ctx: FlowContext, repository: Repository) -> references.NfsTarget:
    """The export behind a repository: its NFS reference, or the PV of its claim in the CR's namespace."""
    if repository.nfs:
        return references.NfsTarget(server=repository.nfs["server"], path=repository.nfs["path"])
    resolved = references.resolve_pvc(ctx.owner.namespace, repository.claim_name or "", ctx.settings)
    return mountable(resolved.target, f"repository claim {repository.claim_name}")


def repository_limits(ctx: FlowContext) -> dict[str, int]:
    """The bounds a mover checks what it reads from a repository against (docs/repository.md, "Bounds")."""
    return {"maxVolumeBytes": ctx.settings.max_volume_bytes}


def path_namespace(ctx: FlowContext, rel_path: str | None) -> str:
    """The namespace part of a backup's path; ``RefusedError`` when it is another namespace's and this
    namespace may not reach it (only namespaces allowed raw references may, e.g. to import backups of a
    namespace that was recreated under another name)."""
    if not rel_path:
        return ctx.owner.namespace
    try:
        namespace = repo.parse_rel_path(rel_path)[0]
    except repo.RepositoryError as exc:
        raise references.RefusedError(Reason.INVALID_SPEC, f"backup path {rel_path!r}: {exc}") from exc
    if namespace != ctx.owner.namespace and not ctx.settings.raw_references_allowed(ctx.owner.namespace):
        raise references.RefusedError(
            Reason.REFERENCE_NOT_ALLOWED,
            f"backup path {rel_path} belongs to namespace {namespace}; a namespace reaches only its own part of a "
            "repository (operator setting rawReferenceNamespaces lets administrators' namespaces reach others')")
    return namespace


def repository_volume(ctx: FlowContext, repository: Repository, *, read_only: bool, mount_path: str,
                      rel_path: str | None = None) -> MoverVolume:
    """The repository as a mover sees it: only one namespace's subdirectory -- the CR's own, or that of
    ``rel_path`` where ``path_namespace`` allows it -- mounted (``subPath``) at ``<mount_path>/<namespace>``,
    so paths relative to ``mount_path`` stay ``<namespace>/<source-uid>/<backup>`` and no other namespace's
    backups are visible."""
    namespace = path_namespace(ctx, rel_path)
    return share_volume("repository", repository_export(ctx, repository), read_only=read_only,
                        mount_path=f"{mount_path.rstrip('/')}/{namespace}", sub_path=namespace)


def wait_while_in_error_state(ctx: FlowContext, claim: str) -> None:
    """Before the lock: a claim an earlier failed action left in an error state waits (``VolumeInErrorState``)
    until a person resets it -- decided with the other refusals, before anything of this action is recorded."""
    pvc = k8s.core().read_namespaced_persistent_volume_claim(claim, ctx.owner.namespace)
    state = (pvc.metadata.annotations or {}).get(locks.STATE, "")
    if locks.is_error_state(state):
        ctx.wait(Reason.VOLUME_IN_ERROR_STATE,
                 f"PersistentVolumeClaim {claim} is in state {state} after an earlier failed action; "
                 f"check its data, then reset it with {locks.reset_hint(locks.PVC, claim)}", delay=10)


def describe_target(target: references.Target) -> str:
    return str(target)


def source_id(resolved: references.ResolvedVolume) -> str:
    """The PVC's uid; a raw reference's stable id (``repository.raw_source_id``)."""
    if resolved.pvc_uid:
        return resolved.pvc_uid
    t = resolved.target
    if isinstance(t, references.RbdTarget):
        text = f"rbd:{t.cluster_id}/{t.pool}/{t.rados_namespace or ''}/{t.image}"
    else:
        text = str(t)
    return repo.raw_source_id(text)


# ---- plans: what the flows hand the format hooks ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackupPlan:
    namespace: str
    name: str
    backup_uid: str  # the uid in backup.json (the object's, or an imported object's original)
    source: Source
    repository: Repository
    rel_path: str  # <ns>/<source-uid>/<name>
    incremental: bool
    verify: bool
    force: bool
    parent_name: str | None = None
    parent_uid: str | None = None
    parent_path: str | None = None
    created: str | None = None  # status.startTime
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def manifest_fields(self, fmt: str) -> dict[str, Any]:
        """The manifest fields the operator knows; the mover adds what it measured (``BackupManifest``)."""
        resolved = self.source.resolved
        return {
            "format": fmt,
            "backup": {"name": self.name, "uid": self.backup_uid, "namespace": self.namespace},
            "source": {"namespace": self.namespace, "uid": self.source.uid, "pvcName": self.source.pvc_name,
                       "description": self.source.description, "reference": self.source.reference,
                       "sizeBytes": self.source.size_bytes,
                       "storageClass": resolved.storage_class if resolved else None,
                       "accessModes": list(resolved.access_modes) if resolved else []},
            "created": self.created or repo.utcnow().isoformat(),
            "labels": self.labels,
            "toolVersion": repo.tool_version(),
        }


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    namespace: str
    name: str  # the ShareRestore
    backup_name: str
    backup_uid: str
    backup_path: str  # status.repositoryPath of the backup
    manifest_digest: str | None
    backup_size: int | None  # status.size of the backup, bytes
    repository: Repository
    target: references.ResolvedVolume
    delete_extra_files: bool
    in_place: bool
    backup_status: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DeletePlan:
    namespace: str
    name: str
    backup_uid: str
    rel_path: str
    repository: Repository
    source_uid: str | None
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)

    def owner(self) -> dict[str, str]:
        """Who asks the mover to delete (docs/repository.md, "Owners"): the directory must be this backup's."""
        return {"namespace": self.namespace, "name": self.name, "uid": self.backup_uid}


# ---- the protocol --------------------------------------------------------------------------------


@runtime_checkable
class BackupFormat(Protocol):
    """How one kind of source is backed up, restored and deleted; the flows do everything else."""

    name: str  # repository format: "files" | "blocks" (backup.json ``format``)
    api_format: str  # status.format: "Tree" | "Chunks"

    def accepts(self, target: references.Target) -> bool:
        """Can this format back up (or restore into) ``target``?"""

    def check_source(self, ctx: FlowContext, plan: BackupPlan) -> None:
        """Before the lock: format rules on the source (e.g. blocks: in use needs ``force``). May wait or fail."""

    def prepare(self, ctx: FlowContext, plan: BackupPlan) -> None:
        """After the lock, before the copy (blocks: the temporary snapshot, named in status first)."""

    def ceph_credentials(self, ctx: FlowContext, plan: BackupPlan | RestorePlan | DeletePlan) -> CephCredentials | None:
        """Credentials for a mover request with ``needs_ceph`` (None when none is needed)."""

    def backup_request(self, ctx: FlowContext, plan: BackupPlan) -> MoverRequest:
        """The mover Job that copies the data and writes backup.json last."""

    def backup_status(self, ctx: FlowContext, plan: BackupPlan, result: dict[str, Any]) -> dict[str, Any]:
        """Status fields (camelCase) from the mover's result: fileCount/chunkCount, bytesRead, bytesStored, ..."""

    def cleanup(self, ctx: FlowContext, plan: BackupPlan | None, *, succeeded: bool) -> None:
        """After the copy, after a failure, after a restart, on deletion: remove temporary objects. Idempotent;
        ``plan`` is None when the source can no longer be resolved (clean up from status alone)."""

    def check_restore_target(self, ctx: FlowContext, plan: RestorePlan) -> None:
        """Format rules on the restore target (blocks: detached). May wait or fail."""

    def create_claim(self, ctx: FlowContext, new_claim: NewClaim, size_bytes: int, backup: dict[str, Any]) -> None:
        """Create the claim of ``target.newClaim`` (idempotent; the name is already in status.targetClaim)."""

    def restore_request(self, ctx: FlowContext, plan: RestorePlan) -> MoverRequest:
        """The mover Job that writes the backup into the target."""

    def restore_cleanup(self, ctx: FlowContext, plan: RestorePlan | None, *, succeeded: bool) -> None:
        """After the restore (either outcome), after a restart, on deletion. Idempotent."""

    def delete_request(self, ctx: FlowContext, plan: DeletePlan) -> MoverRequest:
        """The mover Job that removes the backup's data (blocks: and unreferenced chunks)."""

    def after_delete(self, ctx: FlowContext, plan: DeletePlan) -> None:
        """Once the data is gone (blocks: drop the base snapshot when no backup of the source is left)."""


class FormatBase:
    """Defaults for the optional hooks; formats subclass it and override what they need."""

    name = ""
    api_format = ""

    def check_source(self, ctx: FlowContext, plan: BackupPlan) -> None:
        return None

    def prepare(self, ctx: FlowContext, plan: BackupPlan) -> None:
        return None

    def ceph_credentials(self, ctx: FlowContext, plan: Any) -> CephCredentials | None:
        return None

    def cleanup(self, ctx: FlowContext, plan: BackupPlan | None, *, succeeded: bool) -> None:
        return None

    def check_restore_target(self, ctx: FlowContext, plan: RestorePlan) -> None:
        return None

    def create_claim(self, ctx: FlowContext, new_claim: NewClaim, size_bytes: int, backup: dict[str, Any]) -> None:
        create_claim_from_class(ctx, new_claim, size_bytes, access_modes=self.claim_access_modes(backup),
                                volume_mode=self.claim_volume_mode)

    claim_volume_mode = "Filesystem"

    def claim_access_modes(self, backup: dict[str, Any]) -> list[str]:
        return ["ReadWriteOnce"]

    def restore_cleanup(self, ctx: FlowContext, plan: RestorePlan | None, *, succeeded: bool) -> None:
        return None

    def after_delete(self, ctx: FlowContext, plan: DeletePlan) -> None:
        return None


def create_claim_from_class(ctx: FlowContext, new_claim: NewClaim, size_bytes: int, *, access_modes: list[str],
                            volume_mode: str = "Filesystem") -> None:
    """The PVC of ``target.newClaim``: owned by the ShareRestore until the restore succeeds (a failed or deleted
    restore's claim is garbage-collected with it), annotated with who made it.  Idempotent."""
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": new_claim.name, "namespace": ctx.owner.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "savepoint"},
                     "annotations": {ANN_CREATED_BY: created_by(ctx)},
                     "ownerReferences": [{"apiVersion": k8s.API_VERSION, "kind": ctx.owner.kind,
                                          "name": ctx.owner.name, "uid": ctx.owner.uid, "controller": False,
                                          "blockOwnerDeletion": False}]},
        "spec": {"accessModes": access_modes, "volumeMode": volume_mode,
                 "resources": {"requests": {"storage": to_quantity(size_bytes)}}},
    }
    if new_claim.storage_class_name:
        body["spec"]["storageClassName"] = new_claim.storage_class_name
    try:
        k8s.core().create_namespaced_persistent_volume_claim(ctx.owner.namespace, body)
    except Exception as exc:
        if k8s.is_conflict(exc):
            return  # made by an earlier attempt of this restore (the flow checked who made it)
        status = getattr(exc, "status", None)
        if status == 403 and "exceeded quota" in str(getattr(exc, "body", "")):
            ctx.fail(Reason.QUOTA_EXCEEDED, f"creating claim {new_claim.name}: {_api_message(exc)}")
        if status in (400, 403, 422):
            ctx.fail(Reason.INVALID_SPEC, f"creating claim {new_claim.name}: {_api_message(exc)}")
        raise


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, str) and body.startswith("{"):
        try:
            return str(json.loads(body).get("message") or body)
        except ValueError:
            pass
    return str(exc)


def created_by(ctx: FlowContext) -> str:
    return f"{ctx.owner.kind}/{ctx.owner.name} {ctx.owner.uid}"


def repository_target(ctx: FlowContext, repository: Repository) -> references.Target | None:
    """What the repository is stored on (to refuse backing it up into itself or restoring over it)."""
    if repository.nfs:
        return references.NfsTarget(server=repository.nfs["server"], path=references.join_path(repository.nfs["path"],
                                                                                               None))
    try:
        return references.resolve_pvc(ctx.owner.namespace, repository.claim_name or "", ctx.settings).target
    except references.RefusedError:
        return None


def overlap(a: references.Target, b: references.Target) -> bool:
    """Do two file-share targets share any directory (one is the other, or lies inside it)?"""
    def inside(x: str, y: str) -> bool:
        x, y = x.rstrip("/") + "/", y.rstrip("/") + "/"
        return x.startswith(y) or y.startswith(x)

    if isinstance(a, references.NfsTarget) and isinstance(b, references.NfsTarget):
        return a.server == b.server and inside(a.path, b.path)
    if isinstance(a, references.CephFsTarget) and isinstance(b, references.CephFsTarget):
        return a.cluster_id == b.cluster_id and a.fs_name == b.fs_name and inside(a.path, b.path)
    if isinstance(a, references.RbdTarget) and isinstance(b, references.RbdTarget):
        return a.image_ref() == b.image_ref() and a.cluster_id == b.cluster_id
    return False


# ---- the registry ------------------------------------------------------------------------------


def _formats() -> list[BackupFormat]:
    from savepoint.flows.files_format import FilesFormat

    found: list[BackupFormat] = [FilesFormat()]
    try:
        from savepoint.flows.blocks_format import (
            BlocksFormat,  # the block-volume side, when it is there
        )
    except ImportError:
        pass
    else:
        found.append(BlocksFormat())
    return found


def for_target(target: references.Target) -> BackupFormat:
    """The format that backs up ``target``; ``RefusedError(UnsupportedVolume)`` if none does."""
    for fmt in _formats():
        if fmt.accepts(target):
            return fmt
    if isinstance(target, references.RbdTarget):
        raise references.RefusedError(Reason.UNSUPPORTED_VOLUME,
                                      f"{target} is an RBD block volume; block-volume backups are not available in "
                                      "this version of Savepoint (only NFS and CephFS file shares)")
    raise references.RefusedError(Reason.UNSUPPORTED_VOLUME, f"{target} cannot be backed up by any backup format")


def by_api_format(api_format: str | None) -> BackupFormat | None:
    """The format of a backup from its ``status.format`` (Tree, Chunks); None if unknown or unavailable."""
    for fmt in _formats():
        if fmt.api_format == api_format:
            return fmt
    return None


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
