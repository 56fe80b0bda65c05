"""ShareRestore: restore a ShareBackup into its source, another claim, or a new claim (seed 003)."""

from __future__ import annotations

from enum import StrEnum

from savepoint.api.base import ApiModel, ExactlyOne
from savepoint.api.refs import PersistentVolumeClaimRef, ShareBackupRef
from savepoint.api.resource import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    PHASE_COLUMN,
    PROGRESS_COLUMN,
    REASON_COLUMN,
    CrdInfo,
    CustomResource,
    PrinterColumn,
)
from savepoint.api.status import StatusBase
from savepoint.api.types import DeadlineSeconds, ObjectName, Quantity


class NewClaim(ApiModel):
    """A PersistentVolumeClaim the operator creates to restore into."""

    name: ObjectName
    """Name of the claim to create (it must not exist yet)."""

    storage_class_name: ObjectName | None = None
    """StorageClass of the new claim; unset: the cluster's default StorageClass."""

    size: Quantity | None = None
    """Requested size, at least the backup's size; unset: the backup's size."""


class RestoreTarget(ExactlyOne):
    """Where to restore into, when not the backup's own source."""

    persistent_volume_claim: PersistentVolumeClaimRef | None = None
    """An existing claim in this namespace, at least as large as the backup (its data is replaced)."""

    new_claim: NewClaim | None = None
    """A claim the operator creates from a StorageClass, then restores into."""


class ShareRestoreSpec(ApiModel):
    """Which backup to restore and where. Immutable: a ShareRestore is one restore."""

    backup: ShareBackupRef
    """The ShareBackup to restore; it must be Available."""

    target: RestoreTarget | None = None
    """Where to restore; unset: into the backup's source, which must have the backup's size."""

    delete_extra_files: bool = True
    """Remove files in the target that are not in the backup, so the restored tree equals the backup."""

    deadline_seconds: DeadlineSeconds | None = None
    """How long to wait (target busy or in use) and work before giving up; unset: the operator's default."""


class ShareRestorePhase(StrEnum):
    """Pending, Restoring, Succeeded, Failed, Aborting (undoing its steps after a failure or deletion midway)."""

    PENDING = "Pending"
    RESTORING = "Restoring"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTING = "Aborting"


class ShareRestoreStatus(StatusBase[ShareRestorePhase]):
    """Progress and result of a restore."""

    target_claim: ObjectName | None = None
    """The claim restored into (resolved from the target, or the backup's source)."""

    created_claim: bool | None = None
    """True when the operator created `targetClaim` from `newClaim` (it owns it until success)."""


class ShareRestore(CustomResource[ShareRestoreSpec, ShareRestoreStatus]):
    """Restores a backup; on failure the target carries an error state until it is reset."""

    crd = CrdInfo(
        kind="ShareRestore",
        plural="sharerestores",
        short_names=("srst",),
        printer_columns=(
            PHASE_COLUMN,
            PROGRESS_COLUMN,
            PrinterColumn("Backup", ".spec.backup.name", description="ShareBackup restored"),
            PrinterColumn("Target", ".status.targetClaim", description="Claim restored into"),
            REASON_COLUMN,
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    spec: ShareRestoreSpec
    status: ShareRestoreStatus | None = None
