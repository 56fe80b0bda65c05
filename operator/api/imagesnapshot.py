"""ImageSnapshot: an RBD disk into an image pool by snapshot, clone and flatten, with full-copy fallback (seed 002)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from savepoint.api.base import ApiModel, StatusModel
from savepoint.api.refs import VolumeSource
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
from savepoint.api.types import CephName, ClusterId, DeadlineSeconds, Message, Quantity, ShortText


class ImageDestination(ApiModel):
    """Where the new image goes, in the source's Ceph cluster."""

    pool: CephName | None = None
    """Destination pool (e.g. `images`); unset: the operator's default image pool."""

    image: CephName | None = None
    """Name of the new image; unset: generated from the namespace, this resource's name and a piece of its uid
    (`NAMESPACE-NAME-UID8`), so a retained image never blocks a new ImageSnapshot of the same name."""


class ImageMethod(StrEnum):
    """Auto: clone, falling back to a copy; Clone: clone or fail; Copy: copy only."""

    AUTO = "Auto"
    CLONE = "Clone"
    COPY = "Copy"


class DeletionPolicy(StrEnum):
    """Delete: deleting the ImageSnapshot removes its image; Retain: the image is kept."""

    DELETE = "Delete"
    RETAIN = "Retain"


class ImageSnapshotSpec(ApiModel):
    """Which disk to snapshot and where to put the image. Immutable: an ImageSnapshot is one image."""

    source: VolumeSource
    """The RBD volume to snapshot; it may be in use (the snapshot is crash-consistent)."""

    destination: ImageDestination | None = None
    """Pool and name of the new image; unset: the defaults of both."""

    method: ImageMethod = ImageMethod.AUTO
    """Auto: snapshot, clone and flatten, and copy the data if that fails; Clone: never copy; Copy: always copy."""

    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    """What happens to the image when this ImageSnapshot is deleted."""

    deadline_seconds: DeadlineSeconds | None = None
    """How long to work before giving up; unset: the operator's default."""


class ImageSnapshotPhase(StrEnum):
    """Pending, Creating, Succeeded, Failed, Deleting, ErrorDeleting, Aborting (undoing its steps after a failure or deletion midway)."""

    PENDING = "Pending"
    CREATING = "Creating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTING = "Aborting"
    DELETING = "Deleting"
    ERROR_DELETING = "ErrorDeleting"


class ImagePath(StrEnum):
    """Clone: snapshot, clone and flatten (direct path); Copy: a mover copied the data (fallback)."""

    CLONE = "Clone"
    COPY = "Copy"


class ImageInfo(StatusModel):
    """The image an ImageSnapshot made."""

    pool: CephName
    """Pool of the image."""

    name: CephName
    """Name of the image."""

    size: Quantity | None = None
    """Size of the image."""


class SourceImage(StatusModel):
    """The RBD image behind the source, as resolved when the ImageSnapshot started."""

    pool: CephName
    """Pool of the source image."""

    rados_namespace: CephName | None = None
    """RADOS namespace of the source image, if any."""

    name: CephName
    """Name of the source image."""


class ImageSnapshotStatus(StatusBase[ImageSnapshotPhase]):
    """Progress and result of an image snapshot."""

    location: ShortText | None = None
    """Where the image is, as the seed's direct URL: `rbd://FSID/POOL/IMAGE/snap`."""

    image: ImageInfo | None = None
    """The image made: pool, name and size."""

    method: ImagePath | None = None
    """Which path made the image: Clone (direct) or Copy (fallback)."""

    fallback_reason: Message | None = None
    """Why the clone path was not used or failed, when the image was copied."""

    temporary_snapshot: CephName | None = None
    """Snapshot taken on the source (named before it is created; removed at the end)."""

    temporary_image: CephName | None = None
    """Destination image while it is being cloned or copied (removed if the step fails)."""

    cluster_id: ClusterId | None = Field(None, alias="clusterID")
    """ceph-csi clusterID of the source's Ceph cluster, recorded at the start: cleanup and deletion work
    even after the source PVC is gone."""

    source_image: SourceImage | None = None
    """The source's RBD image, recorded at the start (where the temporary snapshot is)."""

    destination_pool: CephName | None = None
    """Pool the image is made in, recorded before anything is created there."""

    checksum: ShortText | None = None
    """Checksum of the copied content (`sp1-sha256:...`, holes read as zeros), when a copy made the image;
    the copy verified the image against it."""


class ImageSnapshot(CustomResource[ImageSnapshotSpec, ImageSnapshotStatus]):
    """Makes an independent image of an RBD disk in an image pool."""

    crd = CrdInfo(
        kind="ImageSnapshot",
        plural="imagesnapshots",
        short_names=("isnap",),
        printer_columns=(
            PHASE_COLUMN,
            PROGRESS_COLUMN,
            SOURCE_COLUMN,
            PrinterColumn("Location", ".status.location", description="rbd://FSID/POOL/IMAGE/snap"),
            REASON_COLUMN,
            AGE_COLUMN,
            PrinterColumn("Method", ".status.method", description="Clone or Copy", priority=1),
            PrinterColumn("Fallback", ".status.fallbackReason", description="Why the data was copied", priority=1),
            MESSAGE_COLUMN,
        ),
    )

    spec: ImageSnapshotSpec
    status: ImageSnapshotStatus | None = None
