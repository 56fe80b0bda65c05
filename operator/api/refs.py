"""References: what a Savepoint resource points at.

A PVC (or VolumeSnapshot, or ShareBackup) is always looked up in the
resource's own namespace, so none of these carries a namespace. Raw `rbd` and
`nfs` references bypass Kubernetes' access control on volumes; the operator
accepts them only in namespaces its settings allow (reason
`ReferenceNotAllowed` otherwise).
"""

from __future__ import annotations

from pydantic import Field

from savepoint.api.base import ApiModel, ExactlyOne
from savepoint.api.types import CephName, ClusterId, NfsPath, NfsServer, ObjectName


class PersistentVolumeClaimRef(ApiModel):
    """A PersistentVolumeClaim in the same namespace, resolved through its bound PersistentVolume."""

    name: ObjectName
    """Name of the PersistentVolumeClaim."""


class VolumeSnapshotRef(ApiModel):
    """A CSI VolumeSnapshot (snapshot.storage.k8s.io) in the same namespace."""

    name: ObjectName
    """Name of the VolumeSnapshot."""


class ShareBackupRef(ApiModel):
    """A ShareBackup in the same namespace."""

    name: ObjectName
    """Name of the ShareBackup."""


class RbdRef(ApiModel):
    """A raw Ceph RBD image, for administrators (allowed only in namespaces the operator permits)."""

    cluster_id: ClusterId = Field(alias="clusterID")
    """ceph-csi clusterID of the Ceph cluster (a key of ceph-csi's config.json)."""

    pool: CephName
    """Pool that holds the image."""

    image: CephName
    """Name of the RBD image."""

    rados_namespace: CephName | None = None
    """RADOS namespace inside the pool, if the image lives in one."""


class NfsRef(ApiModel):
    """A raw NFS export, for administrators (allowed only in namespaces the operator permits)."""

    server: NfsServer
    """Host name or IP address of the NFS server."""

    path: NfsPath
    """Absolute path of the export (no '..' segments)."""


class VolumeSource(ExactlyOne):
    """An RBD block volume: a PVC backed by RBD, or a raw RBD image."""

    persistent_volume_claim: PersistentVolumeClaimRef | None = None
    """A PVC in this namespace whose PersistentVolume is a Ceph RBD volume (ceph-csi or in-tree)."""

    rbd: RbdRef | None = None
    """A raw RBD image (administrators only)."""


class ShareSource(ExactlyOne):
    """What a backup reads: a PVC (NFS, CephFS or RBD), a raw NFS export or a raw RBD image."""

    persistent_volume_claim: PersistentVolumeClaimRef | None = None
    """A PVC in this namespace backed by NFS, CephFS or Ceph RBD."""

    nfs: NfsRef | None = None
    """A raw NFS export (administrators only)."""

    rbd: RbdRef | None = None
    """A raw RBD image (administrators only)."""


class RepositoryRef(ExactlyOne):
    """Where backups are stored: a PVC with a filesystem, or an NFS export."""

    persistent_volume_claim: PersistentVolumeClaimRef | None = None
    """A filesystem PVC in this namespace that holds the repository."""

    nfs: NfsRef | None = None
    """An NFS export that holds the repository (administrators only)."""
