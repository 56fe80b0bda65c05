"""The Savepoint API (``savepoint.dev/v1alpha1``): pydantic models that are the single source of truth.

``crds/`` and ``docs/api.md`` are generated from these by ``python -m savepoint.crdgen``.
Typical use in a handler::

    revert = VolumeRevert.model_validate(body)          # whole object
    spec = VolumeRevertSpec.model_validate(body["spec"])  # or just the spec
    kind, ref = spec.volume.chosen()                      # ("persistentVolumeClaim", PersistentVolumeClaimRef)
    status.conditions = set_condition(status.conditions, READY, False, Reason.VOLUME_BUSY, "...")
    patch.status.update(status.to_dict())
"""

from savepoint.api.base import API_VERSION, CATEGORY, GROUP, VERSION, ApiModel, ExactlyOne
from savepoint.api.conditions import READY, SUCCEEDED, find_condition, initial_conditions, is_true, set_condition, utcnow
from savepoint.api.imagesnapshot import (
    DeletionPolicy,
    ImageDestination,
    ImageInfo,
    ImageMethod,
    ImagePath,
    ImageSnapshot,
    ImageSnapshotPhase,
    ImageSnapshotSpec,
    ImageSnapshotStatus,
)
from savepoint.api.quantity import to_bytes, to_quantity
from savepoint.api.reasons import Handling, Reason
from savepoint.api.refs import (
    NfsRef,
    PersistentVolumeClaimRef,
    RbdRef,
    RepositoryRef,
    ShareBackupRef,
    ShareSource,
    VolumeSnapshotRef,
    VolumeSource,
)
from savepoint.api.resource import CrdInfo, CustomResource, ObjectMeta, PrinterColumn
from savepoint.api.schedule import (
    ConcurrencyPolicy,
    Retention,
    SavepointSchedule,
    SavepointSchedulePhase,
    SavepointScheduleSpec,
    SavepointScheduleStatus,
    ScheduleTemplate,
)
from savepoint.api.sharebackup import BackupFormat, ShareBackup, ShareBackupPhase, ShareBackupSpec, ShareBackupStatus
from savepoint.api.sharerestore import (
    NewClaim,
    RestoreTarget,
    ShareRestore,
    ShareRestorePhase,
    ShareRestoreSpec,
    ShareRestoreStatus,
)
from savepoint.api.status import Condition, ConditionStatus, Progress, StatusBase, is_settled
from savepoint.api.volumerevert import (
    RevertMethod,
    SnapshotSource,
    SnapshotState,
    VolumeRevert,
    VolumeRevertPhase,
    VolumeRevertSpec,
    VolumeRevertStatus,
)

KINDS: tuple[type[CustomResource], ...] = (VolumeRevert, ShareBackup, ShareRestore, ImageSnapshot,  # type: ignore[type-arg]
                                          SavepointSchedule)  # type: ignore[type-arg]
"""Every kind, in the order docs and CRDs list them."""

BY_KIND = {k.crd.kind: k for k in KINDS}


def parse(body: dict) -> CustomResource:  # type: ignore[type-arg]
    """Any Savepoint object (a dict from the API server or a YAML file) as its model."""
    return BY_KIND[body["kind"]].model_validate(body)


__all__ = [
    "API_VERSION",
    "BY_KIND",
    "CATEGORY",
    "ConcurrencyPolicy",
    "Retention",
    "SavepointSchedule",
    "SavepointSchedulePhase",
    "SavepointScheduleSpec",
    "SavepointScheduleStatus",
    "ScheduleTemplate",
    "GROUP",
    "KINDS",
    "READY",
    "SUCCEEDED",
    "VERSION",
    "ApiModel",
    "BackupFormat",
    "Condition",
    "ConditionStatus",
    "CrdInfo",
    "CustomResource",
    "DeletionPolicy",
    "ExactlyOne",
    "Handling",
    "ImageDestination",
    "ImageInfo",
    "ImageMethod",
    "ImagePath",
    "ImageSnapshot",
    "ImageSnapshotPhase",
    "ImageSnapshotSpec",
    "ImageSnapshotStatus",
    "NewClaim",
    "NfsRef",
    "ObjectMeta",
    "PersistentVolumeClaimRef",
    "PrinterColumn",
    "Progress",
    "RbdRef",
    "Reason",
    "RepositoryRef",
    "RestoreTarget",
    "RevertMethod",
    "ShareBackup",
    "ShareBackupPhase",
    "ShareBackupRef",
    "ShareBackupSpec",
    "ShareBackupStatus",
    "ShareRestore",
    "ShareRestorePhase",
    "ShareRestoreSpec",
    "ShareRestoreStatus",
    "ShareSource",
    "SnapshotSource",
    "SnapshotState",
    "StatusBase",
    "VolumeRevert",
    "VolumeRevertPhase",
    "VolumeRevertSpec",
    "VolumeRevertStatus",
    "VolumeSnapshotRef",
    "VolumeSource",
    "find_condition",
    "initial_conditions",
    "is_settled",
    "is_true",
    "parse",
    "set_condition",
    "to_bytes",
    "to_quantity",
    "utcnow",
]
