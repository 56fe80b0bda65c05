"""ShareBackup: back up a file share or an (in-use) RBD volume into a backup repository (seeds 003 and 001)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from savepoint.api.base import ApiModel
from savepoint.api.refs import RepositoryRef, ShareSource
from savepoint.api.resource import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    PHASE_COLUMN,
    PROGRESS_COLUMN,
    REASON_COLUMN,
    SOURCE_COLUMN,
    CrdInfo,
    CustomResource,
    PrinterColumn,
)
from savepoint.api.status import StatusBase
from savepoint.api.types import CephName, Count, DeadlineSeconds, Message, ObjectName, Quantity, ShortText


class ShareBackupSpec(ApiModel):
    """What to back up and where. Immutable: a ShareBackup is one backup."""

    source: ShareSource
    """The share or volume to back up."""

    repository: RepositoryRef | None = None
    """Where to store the backup; unset: the operator's default repository."""

    incremental: bool = True
    """Store only what changed since the previous backup of the same source (every backup still restores on its own)."""

    verify: bool = False
    """After copying, re-read both sides and compare checksums; a mismatch fails the backup."""

    force: bool = False
    """Back up a block volume that is in use (from a crash-consistent temporary snapshot); without it an in-use volume waits."""

    deadline_seconds: DeadlineSeconds | None = None
    """How long to wait (source busy or in use) and work before giving up; unset: the operator's default."""


class ShareBackupPhase(StrEnum):
    """Pending, Creating, Available, Restoring (a ShareRestore reads it), Deleting, ErrorDeleting, Failed, Aborting (undoing its steps after a failure or deletion midway)."""

    PENDING = "Pending"
    CREATING = "Creating"
    AVAILABLE = "Available"
    RESTORING = "Restoring"
    DELETING = "Deleting"
    ERROR_DELETING = "ErrorDeleting"
    FAILED = "Failed"
    ABORTING = "Aborting"


class BackupFormat(StrEnum):
    """Tree: a browsable file tree (file shares); Chunks: content-addressed chunks (block volumes)."""

    TREE = "Tree"
    CHUNKS = "Chunks"


class ShareBackupStatus(StatusBase[ShareBackupPhase]):
    """Progress and result of a backup, and what a restore needs to know about it."""

    format: BackupFormat | None = None
    """How the data is stored: Tree (file shares) or Chunks (block volumes)."""

    size: Quantity | None = None
    """Capacity of the source when it was backed up (an in-place restore target must have this size)."""

    source_uid: ShortText | None = Field(default=None, alias="sourceUID")
    """UID of the source PVC (or a stable id of a raw reference); groups backups of one source in the repository."""

    repository_path: ShortText | None = None
    """Directory of this backup inside the repository: `NAMESPACE/SOURCE-UID/BACKUP-NAME`."""

    parent_backup: ObjectName | None = None
    """The backup this one is incremental to (unchanged data is shared with it)."""

    file_count: Count | None = None
    """Files in the backup (file shares)."""

    chunk_count: Count | None = None
    """Chunks the backup references (block volumes)."""

    bytes_read: Count | None = None
    """Bytes read from the source by this backup."""

    bytes_stored: Count | None = None
    """New bytes written to the repository by this backup (the rest is shared with earlier backups)."""

    manifest_digest: ShortText | None = None
    """Digest of the backup's checksum manifest (`backup.json`), to verify it later."""

    base_snapshot: CephName | None = None
    """RBD snapshot kept on the source as the base of the next incremental (block volumes)."""

    temporary_snapshot: CephName | None = None
    """RBD snapshot the backup reads from (named before it is created; removed at the end)."""

    full_read_reason: Message | None = None
    """Why an incremental backup read the whole source (e.g. the base snapshot was missing)."""

    repository: RepositoryRef | None = None
    """The repository the backup is stored in, as decided when it started (the spec's or the operator's
    default). Written by the operator only: later steps (restore, deletion) trust nothing else."""

    rbd_image: ShortText | None = None
    """The RBD image a block backup reads (JSON: clusterID, pool, radosNamespace, image, volumeMode); written by
    the operator, read back to remove its snapshots and to place restores into new claims."""


class ShareBackup(CustomResource[ShareBackupSpec, ShareBackupStatus]):
    """A backup of a share or volume; deleting the object deletes the backup's data."""

    crd = CrdInfo(
        kind="ShareBackup",
        plural="sharebackups",
        short_names=("sbak",),
        printer_columns=(
            PHASE_COLUMN,
            PROGRESS_COLUMN,
            SOURCE_COLUMN,
            PrinterColumn("Size", ".status.size", description="Capacity of the source"),
            REASON_COLUMN,
            AGE_COLUMN,
            PrinterColumn("Files", ".status.fileCount", "integer", "Files in the backup", priority=1),
            PrinterColumn("Stored", ".status.bytesStored", "integer", "New bytes stored", priority=1),
            PrinterColumn("Parent", ".status.parentBackup", description="Backup this one is incremental to", priority=1),
            MESSAGE_COLUMN,
        ),
    )

    spec: ShareBackupSpec
    status: ShareBackupStatus | None = None

