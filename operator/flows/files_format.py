"""The ``files`` backup format: NFS and CephFS shares as browsable, hard-linked trees (rsync).

Everything here is the operator side; the copying is ``savepoint.mover.files``
in a Job that mounts the share and the repository.  A file share has no
snapshot to read from, so there is nothing to prepare or clean up around the
copy: the application keeps reading and writing, and files that change while
rsync runs are copied as rsync finds them (``verify`` tells them apart from
real mismatches).  Nothing requires the share to be idle.
"""

from __future__ import annotations

from typing import Any

from savepoint.kube import references
from savepoint.api import BackupFormat as ApiFormat
from savepoint.api import Reason
from savepoint.engine.context import FlowContext
from savepoint.flows.formats import (
    BackupPlan,
    DeletePlan,
    FormatBase,
    RestorePlan,
    mountable,
    repository_limits,
    repository_volume,
    share_volume,
)
from savepoint.mover import files as mover_files
from savepoint.mover.request import MoverRequest
from savepoint.storage import repository as repo


class FilesFormat(FormatBase):
    name = repo.FORMAT_FILES
    api_format = ApiFormat.TREE

    def accepts(self, target: references.Target) -> bool:
        return isinstance(target, (references.NfsTarget, references.CephFsTarget))

    def check_source(self, ctx: FlowContext, plan: BackupPlan) -> None:
        if plan.source.resolved is not None:
            _mountable_or_fail(ctx, plan.source.resolved.target, plan.source.description)

    def claim_access_modes(self, backup: dict[str, Any]) -> list[str]:
        return ["ReadWriteMany"]  # a share

    def backup_request(self, ctx: FlowContext, plan: BackupPlan) -> MoverRequest:
        return MoverRequest(
            action="files-backup",
            run_as_root=True,  # owners, modes, ACLs of every user's files: only root reads and recreates them all
            volumes=[plan.source.volume(mount_path=mover_files.SOURCE_MOUNT, read_only=True),
                     repository_volume(ctx, plan.repository, read_only=False, mount_path=mover_files.REPOSITORY_MOUNT)],
            params={"limits": repository_limits(ctx),
                    "source": mover_files.SOURCE_MOUNT, "repository": mover_files.REPOSITORY_MOUNT,
                    "path": plan.rel_path, "parent": plan.parent_path, "parentUid": plan.parent_uid,
                    "verify": plan.verify, "manifest": plan.manifest_fields(self.name)},
        )

    def backup_status(self, ctx: FlowContext, plan: BackupPlan, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": self.api_format,
            "fileCount": result.get("files"),
            "bytesRead": result.get("bytesRead"),
            "bytesStored": result.get("bytesStored"),
            "manifestDigest": result.get("digest"),
            "parentBackup": result.get("parent"),
            "fullReadReason": result.get("fullReadReason"),
        }

    def check_restore_target(self, ctx: FlowContext, plan: RestorePlan) -> None:
        if not self.accepts(plan.target.target) or plan.target.is_block:
            ctx.fail(Reason.UNSUPPORTED_VOLUME,
                     f"{plan.target.describe()} is {plan.target.target}; a file-share backup restores into an NFS or "
                     "CephFS file share")
        _mountable_or_fail(ctx, plan.target.target, plan.target.describe())

    def restore_request(self, ctx: FlowContext, plan: RestorePlan) -> MoverRequest:
        target = plan.target
        volume = _target_volume(target)
        return MoverRequest(
            action="files-restore",
            run_as_root=True,
            volumes=[repository_volume(ctx, plan.repository, read_only=True, mount_path=mover_files.REPOSITORY_MOUNT,
                                       rel_path=plan.backup_path), volume],
            params={"limits": repository_limits(ctx),
                    "repository": mover_files.REPOSITORY_MOUNT, "target": mover_files.TARGET_MOUNT,
                    "path": plan.backup_path, "backupUid": plan.backup_uid, "manifestDigest": plan.manifest_digest,
                    "deleteExtraFiles": plan.delete_extra_files},
        )

    def delete_request(self, ctx: FlowContext, plan: DeletePlan) -> MoverRequest:
        return delete_request(ctx, plan)


def delete_request(ctx: FlowContext, plan: DeletePlan) -> MoverRequest:
    """Removing a backup's directory (either format: the repository action sweeps chunks where there are any)."""
    return MoverRequest(
        action="repository-delete",
        run_as_root=True,  # the tree holds every user's files, in directories only their owners may write
        volumes=[repository_volume(ctx, plan.repository, read_only=False, mount_path=mover_files.REPOSITORY_MOUNT,
                                   rel_path=plan.rel_path)],
        params={"limits": repository_limits(ctx),
                "repository": mover_files.REPOSITORY_MOUNT, "path": plan.rel_path, "backupUid": plan.backup_uid,
                "owner": plan.owner()},
    )


def _target_volume(target: references.ResolvedVolume) -> Any:
    return share_volume("target", target.target, mount_path=mover_files.TARGET_MOUNT, read_only=False)


def _mountable_or_fail(ctx: FlowContext, target: references.Target, what: str) -> None:
    """Before the lock: a share a mover cannot mount is refused with its reason."""
    try:
        mountable(target, what)
    except references.RefusedError as exc:
        ctx.refuse(exc)
