"""VolumeRevert: revert a volume in place to its most recent snapshot (seed 000, Cinder revert-to-snapshot)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from savepoint.api.base import ApiModel, ExactlyOne, StatusModel
from savepoint.api.refs import VolumeSnapshotRef, VolumeSource
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
from savepoint.api.types import CephName, ClusterId, DeadlineSeconds, ShortText


class SnapshotSource(ExactlyOne):
    """The snapshot to revert to; it must be the volume's most recent one."""

    rbd_snapshot: CephName | None = None
    """Name of an RBD snapshot on the volume's own image (fast path: rollback)."""

    volume_snapshot: VolumeSnapshotRef | None = None
    """A ready CSI VolumeSnapshot of the PVC (ceph-csi keeps it as a separate image: copy path)."""


class VolumeRevertSpec(ApiModel):
    """What to revert to what. Immutable: a VolumeRevert is one action."""

    volume: VolumeSource
    """The volume to revert in place."""

    snapshot: SnapshotSource
    """The snapshot to revert to."""

    safety_snapshot: bool = True
    """Take a snapshot of the current data before overwriting it; removed after success, kept after a failure."""

    deadline_seconds: DeadlineSeconds | None = None
    """How long to wait (volume in use, busy) and work before giving up; unset: the operator's default."""


class VolumeRevertPhase(StrEnum):
    """Pending (waiting or not started), Reverting, Succeeded, Failed, Aborting (undoing its steps after a failure or deletion midway)."""

    PENDING = "Pending"
    REVERTING = "Reverting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTING = "Aborting"


class RevertMethod(StrEnum):
    """Rollback: `rbd snap rollback` on the image itself; Copy: a mover copies a separate snapshot image."""

    ROLLBACK = "Rollback"
    COPY = "Copy"


class SnapshotState(StrEnum):
    """The seed's snapshot status while a revert uses it."""

    AVAILABLE = "Available"
    RESTORING = "Restoring"


class RevertImage(StatusModel):
    """An RBD image (and, for a snapshot image, the RBD snapshot on it) a revert works on."""

    pool: CephName
    """Pool of the image."""

    rados_namespace: CephName | None = None
    """RADOS namespace of the image, if any."""

    name: CephName
    """Name of the image."""

    snapshot: CephName | None = None
    """The RBD snapshot on it that is read (the snapshot image of a VolumeSnapshot)."""


class VolumeRevertStatus(StatusBase[VolumeRevertPhase]):
    """Progress and result of a revert."""

    cluster_id: ClusterId | None = Field(default=None, alias="clusterID")
    """ceph-csi clusterID of the volume, recorded with the lock."""

    volume_image: RevertImage | None = None
    """The volume's RBD image, recorded when the lock was taken: later steps work from it (cross-checked
    against the claim while it exists) and never validate the world again."""

    snapshot_image: RevertImage | None = None
    """Copy path: the VolumeSnapshot's own image and snapshot, recorded with the lock."""

    snapshot: ShortText | None = None
    """The snapshot reverted to, resolved: `rbd:POOL/IMAGE@SNAP` or `volumesnapshot/NAME`."""

    method: RevertMethod | None = None
    """Which path ran: Rollback (snapshot on the volume's own image) or Copy (snapshot is a separate image)."""

    safety_snapshot: CephName | None = None
    """RBD snapshot of the volume taken before the data step (named before it is created)."""

    snapshot_state: SnapshotState | None = None
    """Restoring while the revert uses the snapshot (RBD snapshots have no annotation to carry it)."""


class VolumeRevert(CustomResource[VolumeRevertSpec, VolumeRevertStatus]):
    """Reverts a volume in place to its most recent snapshot; the volume must be detached and idle."""

    crd = CrdInfo(
        kind="VolumeRevert",
        plural="volumereverts",
        short_names=("vrev",),
        printer_columns=(
            PHASE_COLUMN,
            PROGRESS_COLUMN,
            SOURCE_COLUMN,
            REASON_COLUMN,
            AGE_COLUMN,
            PrinterColumn("Snapshot", ".status.snapshot", description="Snapshot reverted to", priority=1),
            PrinterColumn("Method", ".status.method", description="Rollback or Copy", priority=1),
            MESSAGE_COLUMN,
        ),
    )

    spec: VolumeRevertSpec
    status: VolumeRevertStatus | None = None
