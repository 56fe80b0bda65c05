"""What a Savepoint resource points at, resolved to a storage target.

A PVC is looked up in the resource's own namespace only and followed through
its bound PersistentVolume to the storage behind it (ceph-csi RBD, in-tree
``rbd``, ceph-csi CephFS, in-tree ``nfs`` or the NFS CSI driver). A CSI
VolumeSnapshot is followed through its VolumeSnapshotContent to the ceph-csi
snapshot image. Raw ``rbd``/``nfs`` references are allowed only where the
settings say so.

The parsing is pure (API dicts in, frozen dataclasses out) so it is
unit-tested without a cluster; the readers are thin, synchronous wrappers
around the kubernetes client (handlers run them in threads).

Every refusal is a ``RefusedError`` carrying a condition reason, a message a
user can act on, and whether it is *final* (the CR fails) or *waiting* (the CR
stays Pending and retries until its deadline).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from savepoint.kube import k8s
from savepoint.api.quantity import to_bytes
from savepoint.api.reasons import Handling, Reason
from savepoint.api.refs import NfsRef, RbdRef
from savepoint.settings import Settings
from savepoint.storage.ceph import CsiCluster, monitor_endpoints
from savepoint.storage.rbd import ImageRef

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"

RBD_CSI_DRIVER = "rbd.csi.ceph.com"
CEPHFS_CSI_DRIVER = "cephfs.csi.ceph.com"
NFS_CSI_DRIVER = "nfs.csi.k8s.io"
DEFAULT_SNAPSHOT_PREFIX = "csi-snap-"  # ceph-csi internal/journal/voljournal.go defaultSnapshotNamingPrefix


# ---- errors ---------------------------------------------------------------------------------

# Reasons not (yet) in api.reasons; both are final: an administrator must fix the configuration.
CEPH_CLUSTER_UNKNOWN = Reason.CEPH_CLUSTER_UNKNOWN
CEPH_CREDENTIALS_MISSING = Reason.CEPH_CREDENTIALS_MISSING


class RefusedError(Exception):
    """A reference cannot be used (yet): ``reason`` for the condition, ``message`` for the user.

    ``final`` False means the situation can change (PVC not bound, snapshot
    not ready, volume busy): the CR stays Pending and retries. When not given,
    it follows the reason's documented handling in ``api.reasons``.
    """

    def __init__(self, reason: str, message: str, *, final: bool | None = None) -> None:
        super().__init__(message)
        self.reason = str(reason)
        self.message = message
        if final is None:
            if not isinstance(reason, Reason):
                raise TypeError(f"final must be given for reason {reason!r} outside api.reasons")
            final = reason.handling is not Handling.WAIT
        self.final = final

    @property
    def waiting(self) -> bool:
        return not self.final

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r}, final={self.final})"


# ---- targets --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RbdTarget:
    """An RBD image: ceph-csi clusterID, pool, image, optional RADOS namespace."""

    cluster_id: str
    pool: str
    image: str
    rados_namespace: str | None = None

    def image_ref(self) -> ImageRef:
        return ImageRef(pool=self.pool, image=self.image, namespace=self.rados_namespace)

    def __str__(self) -> str:
        return f"rbd:{self.image_ref().spec}"


@dataclasses.dataclass(frozen=True)
class NfsTarget:
    """An NFS export (or a directory inside one)."""

    server: str
    path: str

    def __str__(self) -> str:
        return f"nfs:{self.server}:{self.path}"


@dataclasses.dataclass(frozen=True)
class CephFsTarget:
    """A directory of a CephFS file system (a ceph-csi subvolume, or a static root path)."""

    cluster_id: str
    fs_name: str
    path: str
    subvolume_name: str | None = None
    subvolume_group: str | None = None

    def __str__(self) -> str:
        return f"cephfs:{self.fs_name}:{self.path}"


Target = RbdTarget | NfsTarget | CephFsTarget


@dataclasses.dataclass(frozen=True)
class ResolvedVolume:
    """A volume reference resolved to its storage. ``pvc_name`` is None for raw references."""

    namespace: str
    target: Target
    pvc_name: str | None = None
    pvc_uid: str | None = None
    pv_name: str | None = None
    size_bytes: int | None = None
    access_modes: tuple[str, ...] = ()
    volume_mode: str = "Filesystem"
    storage_class: str | None = None
    driver: str | None = None  # CSI driver name, or "rbd"/"nfs" for in-tree volumes
    volume_handle: str | None = None  # CSI volumeHandle: what a VolumeSnapshotContent's source names
    # The claim as read (its resourceVersion): a lock's first conditional write can go without reading it again.
    claim: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_raw(self) -> bool:
        return self.pvc_name is None

    @property
    def is_block(self) -> bool:
        return self.volume_mode == "Block"

    def describe(self) -> str:
        """``pvc/NAME`` for claims, the target itself for raw references (status.source, messages)."""
        return f"pvc/{self.pvc_name}" if self.pvc_name else str(self.target)


# ---- small pure helpers ---------------------------------------------------------------------


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """obj[a][b]... or None when any step is missing."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def as_dict(obj: Any) -> dict[str, Any]:
    """A kubernetes-client model as the API server's JSON (camelCase), dicts unchanged."""
    if isinstance(obj, dict):
        return obj
    return cast(dict[str, Any], k8s.api_client().sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


def quantity_bytes(value: str | int | None) -> int | None:
    """A Kubernetes quantity (``10Gi``, ``1.5G``, ``1073741824``) as bytes; None when unset."""
    if value is None or value == "":
        return None
    return to_bytes(value)


def is_rbd_csi_driver(driver: str | None) -> bool:
    """ceph-csi's RBD driver, also under an operator's prefix (Rook: ``rook-ceph.rbd.csi.ceph.com``)."""
    return driver is not None and (driver == RBD_CSI_DRIVER or driver.endswith("." + RBD_CSI_DRIVER))


def is_cephfs_csi_driver(driver: str | None) -> bool:
    return driver is not None and (driver == CEPHFS_CSI_DRIVER or driver.endswith("." + CEPHFS_CSI_DRIVER))


def join_path(base: str, sub: str | None) -> str:
    """``/export`` + ``a/b`` → ``/export/a/b``; no doubled or trailing slashes."""
    base = "/" + base.strip("/")
    sub = (sub or "").strip("/")
    if not sub:
        return base
    return f"{base.rstrip('/')}/{sub}"


def cluster_for_monitors(monitors: Sequence[str], clusters: Mapping[str, CsiCluster]) -> str | None:
    """The ceph-csi clusterID whose monitors share an endpoint with ``monitors`` (in-tree rbd PVs).

    Compared as (host, port) pairs so ``10.0.0.1:6789``, ``v1:10.0.0.1:6789``
    and an address vector all match; names are not resolved.
    """
    wanted = set(monitor_endpoints(list(monitors)))
    for cluster_id, cluster in sorted(clusters.items()):
        if wanted & set(monitor_endpoints(cluster.monitors)):
            return cluster_id
    return None


# ---- PV parsing (pure) ----------------------------------------------------------------------


def _unsupported(pv_name: str, what: str) -> RefusedError:
    return RefusedError(
        Reason.UNSUPPORTED_VOLUME,
        f"PersistentVolume {pv_name} is {what}; Savepoint supports ceph-csi RBD and CephFS, in-tree rbd, "
        f"in-tree nfs and the NFS CSI driver ({NFS_CSI_DRIVER})",
    )


def _rbd_csi_target(pv_name: str, csi: Mapping[str, Any], clusters: Callable[[], Mapping[str, CsiCluster]]) -> RbdTarget:
    attrs: Mapping[str, str] = csi.get("volumeAttributes") or {}
    cluster_id, pool = attrs.get("clusterID"), attrs.get("pool")
    image = attrs.get("imageName")
    namespace = attrs.get("radosNamespace") or None
    if not image and str(attrs.get("staticVolume", "")).lower() == "true":
        # ceph-csi static PVs (docs/static-pvc.md): the volumeHandle is the image name, and the
        # RADOS namespace is the cluster's from config.json, as ceph-csi itself reads it.
        image = csi.get("volumeHandle")
        if not namespace and cluster_id:
            cluster = clusters().get(cluster_id)
            namespace = cluster.rbd_namespace if cluster else None
    missing = [n for n, v in (("clusterID", cluster_id), ("pool", pool), ("imageName", image)) if not v]
    if missing:
        raise _unsupported(pv_name, f"a ceph-csi RBD volume without volumeAttributes {', '.join(missing)}")
    return RbdTarget(cluster_id=str(cluster_id), pool=str(pool), image=str(image), rados_namespace=namespace)


def _cephfs_csi_target(pv_name: str, csi: Mapping[str, Any]) -> CephFsTarget:
    attrs: Mapping[str, str] = csi.get("volumeAttributes") or {}
    cluster_id, fs_name = attrs.get("clusterID"), attrs.get("fsName")
    path = attrs.get("subvolumePath") or attrs.get("rootPath")  # dynamic | static (docs/static-pvc.md)
    missing = [n for n, v in (("clusterID", cluster_id), ("fsName", fs_name), ("subvolumePath or rootPath", path)) if not v]
    if missing:
        raise _unsupported(pv_name, f"a ceph-csi CephFS volume without volumeAttributes {', '.join(missing)}")
    return CephFsTarget(cluster_id=str(cluster_id), fs_name=str(fs_name), path=str(path),
                        subvolume_name=attrs.get("subvolumeName") or None,
                        subvolume_group=attrs.get("subvolumeGroup") or None)


def _nfs_csi_target(pv_name: str, csi: Mapping[str, Any]) -> NfsTarget:
    # csi-driver-nfs matches its parameters case-insensitively (subDir in a StorageClass, subdir in a PV).
    attrs = {k.lower(): v for k, v in (csi.get("volumeAttributes") or {}).items()}
    server, share = attrs.get("server"), attrs.get("share")
    if not server or not share:
        raise _unsupported(pv_name, "an NFS CSI volume without volumeAttributes server and share")
    return NfsTarget(server=server, path=join_path(share, attrs.get("subdir")))


def _in_tree_rbd_target(pv_name: str, rbd: Mapping[str, Any], clusters: Mapping[str, CsiCluster],
                        config_map: str) -> RbdTarget:
    monitors = list(rbd.get("monitors") or [])
    image = rbd.get("image")
    if not monitors or not image:
        raise _unsupported(pv_name, "an in-tree rbd volume without monitors or image")
    cluster_id = cluster_for_monitors(monitors, clusters)
    if cluster_id is None:
        raise RefusedError(
            CEPH_CLUSTER_UNKNOWN,
            f"the monitors {', '.join(monitors)} of in-tree rbd PersistentVolume {pv_name} match no cluster in "
            f"ceph-csi's config.json (ConfigMap {config_map}); add the cluster there",
            final=True,
        )
    return RbdTarget(cluster_id=cluster_id, pool=rbd.get("pool") or "rbd", image=str(image))  # in-tree default pool


def target_from_pv(pv: Mapping[str, Any], clusters: Callable[[], Mapping[str, CsiCluster]] = dict,
                   config_map: str = "ceph-csi config") -> Target:
    """The storage behind a PersistentVolume (an API dict).

    ``clusters`` returns ceph-csi's clusterID → cluster map; it is called only
    for the volume types that need it (in-tree rbd, static ceph-csi RBD).
    Raises ``RefusedError(UnsupportedVolume)`` for anything else.
    """
    name = _get(pv, "metadata", "name") or "?"
    spec: Mapping[str, Any] = pv.get("spec") or {}
    if csi := spec.get("csi"):
        driver = csi.get("driver")
        if is_rbd_csi_driver(driver):
            return _rbd_csi_target(name, csi, clusters)
        if is_cephfs_csi_driver(driver):
            return _cephfs_csi_target(name, csi)
        if driver == NFS_CSI_DRIVER:
            return _nfs_csi_target(name, csi)
        raise _unsupported(name, f"a volume of CSI driver {driver}")
    if rbd := spec.get("rbd"):
        return _in_tree_rbd_target(name, rbd, clusters(), config_map)
    if nfs := spec.get("nfs"):
        if not nfs.get("server") or not nfs.get("path"):
            raise _unsupported(name, "an nfs volume without server or path")
        return NfsTarget(server=nfs["server"], path=join_path(nfs["path"], None))
    kinds = [k for k in spec if isinstance(spec.get(k), dict) and k not in ("capacity", "claimRef", "nodeAffinity")]
    raise _unsupported(name, f"a {kinds[0] if kinds else 'volume of unknown type'} volume")


def claim_bound_to(pvc: Mapping[str, Any], pv: Mapping[str, Any]) -> bool:
    """The PV's claimRef names this very PVC (namespace, name and, when set, uid): the binding is mutual."""
    ref = _get(pv, "spec", "claimRef") or {}
    meta = pvc.get("metadata") or {}
    if ref.get("namespace") != meta.get("namespace") or ref.get("name") != meta.get("name"):
        return False
    return not ref.get("uid") or ref.get("uid") == meta.get("uid")


def resolved_from(pvc: Mapping[str, Any], pv: Mapping[str, Any], target: Target) -> ResolvedVolume:
    """Assemble a ResolvedVolume from a bound PVC/PV pair (pure)."""
    meta, spec = pvc.get("metadata") or {}, pvc.get("spec") or {}
    pv_spec = pv.get("spec") or {}
    # PV capacity is the size of the volume itself; PVC status lags it during an expansion.
    size = quantity_bytes(_get(pv_spec, "capacity", "storage")) or quantity_bytes(_get(pvc, "status", "capacity", "storage"))
    csi = pv_spec.get("csi") or {}
    driver = csi.get("driver") or ("rbd" if "rbd" in pv_spec else "nfs" if "nfs" in pv_spec else None)
    return ResolvedVolume(
        namespace=meta["namespace"],
        target=target,
        pvc_name=meta["name"],
        pvc_uid=meta.get("uid"),
        pv_name=_get(pv, "metadata", "name"),
        size_bytes=size,
        access_modes=tuple(pv_spec.get("accessModes") or spec.get("accessModes") or ()),
        volume_mode=pv_spec.get("volumeMode") or spec.get("volumeMode") or "Filesystem",
        storage_class=pv_spec.get("storageClassName") or spec.get("storageClassName") or None,
        driver=driver,
        volume_handle=csi.get("volumeHandle"),
        claim=pvc,
    )


# ---- reading from the API -------------------------------------------------------------------


def _read_pvc(namespace: str, name: str) -> dict[str, Any]:
    try:
        return k8s.request("GET", k8s.path("persistentvolumeclaims", name, namespace=namespace, group="", version="v1"))
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise RefusedError(Reason.PVC_NOT_FOUND,
                               f"PersistentVolumeClaim {name} does not exist in namespace {namespace}") from None
        raise


def _csi_clusters_loader(settings: Settings) -> Callable[[], Mapping[str, CsiCluster]]:
    def load() -> Mapping[str, CsiCluster]:
        # Imported late: cephconfig imports RefusedError from this module.
        from savepoint.kube import cephconfig

        return cephconfig.csi_clusters(settings)

    return load


def resolve_pvc(namespace: str, name: str, settings: Settings | None = None) -> ResolvedVolume:
    """A PVC of ``namespace`` (never another) through its bound PV to its storage.

    Waiting: the PVC is not Bound, or its PV is missing or not bound back to
    it. Final: the PVC does not exist (``PvcNotFound``), the PV's type is not
    supported (``UnsupportedVolume``), an in-tree rbd PV's monitors are in no
    ceph-csi cluster (``CephClusterUnknown``).
    """
    settings = settings or Settings.from_env()
    pvc = _read_pvc(namespace, name)
    phase = _get(pvc, "status", "phase") or "Pending"
    pv_name = _get(pvc, "spec", "volumeName")
    if phase != "Bound" or not pv_name:
        raise RefusedError(Reason.PVC_NOT_BOUND, f"PersistentVolumeClaim {name} is {phase}, not Bound to a volume yet")
    try:
        pv = k8s.request("GET", k8s.path("persistentvolumes", pv_name, group="", version="v1"))
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise RefusedError(Reason.PVC_NOT_BOUND,
                               f"PersistentVolumeClaim {name} names PersistentVolume {pv_name}, which does not exist") from None
        raise
    if not claim_bound_to(pvc, pv):
        raise RefusedError(Reason.PVC_NOT_BOUND,
                           f"PersistentVolume {pv_name} is not bound to PersistentVolumeClaim {namespace}/{name}")
    target = target_from_pv(pv, _csi_clusters_loader(settings), settings.ceph_config_map)
    return resolved_from(pvc, pv, target)


def resolve_raw(namespace: str, ref: RbdRef | NfsRef, settings: Settings) -> RbdTarget | NfsTarget:
    """A raw ``rbd``/``nfs`` reference, if the settings allow raw references in ``namespace``."""
    if not settings.raw_references_allowed(namespace):
        kind = "rbd" if isinstance(ref, RbdRef) else "nfs"
        raise RefusedError(
            Reason.REFERENCE_NOT_ALLOWED,
            f"raw {kind} references are not allowed in namespace {namespace}: use a persistentVolumeClaim, or "
            f"ask an administrator to add {namespace} to the operator setting rawReferenceNamespaces "
            f"(SAVEPOINT_RAW_REFERENCE_NAMESPACES)",
        )
    if isinstance(ref, RbdRef):
        return RbdTarget(cluster_id=ref.cluster_id, pool=ref.pool, image=ref.image, rados_namespace=ref.rados_namespace)
    return NfsTarget(server=ref.server, path=ref.path)


def resolve_source(namespace: str, source: Any, settings: Settings) -> ResolvedVolume:
    """Any of the API's ``ExactlyOne`` volume/share/repository choices (pydantic model) resolved.

    A raw reference comes back as a ResolvedVolume without a PVC
    (``is_raw``), so handlers use ``.target`` either way.
    """
    kind, ref = source.chosen()
    if kind == "persistentVolumeClaim":
        return resolve_pvc(namespace, ref.name, settings)
    if kind in ("rbd", "nfs"):
        return ResolvedVolume(namespace=namespace, target=resolve_raw(namespace, ref, settings), driver=kind)
    raise AssertionError(f"unknown reference kind {kind}")


# ---- in use ---------------------------------------------------------------------------------


def pod_claims(pod: Mapping[str, Any]) -> set[str]:
    """Names of the PVCs a pod mounts, including generic ephemeral volumes (``<pod>-<volume>``)."""
    pod_name = _get(pod, "metadata", "name")
    claims: set[str] = set()
    for volume in _get(pod, "spec", "volumes") or []:
        if claim := _get(volume, "persistentVolumeClaim", "claimName"):
            claims.add(claim)
        elif volume.get("ephemeral") is not None:
            claims.add(f"{pod_name}-{volume.get('name')}")
    return claims


def users_of(pvc_name: str, pv_name: str | None, pods: Iterable[Mapping[str, Any]],
             attachments: Iterable[Mapping[str, Any]]) -> list[str]:
    """``Pod/NAME`` for running or pending pods using the claim, ``VolumeAttachment/NAME`` for the PV (pure)."""
    users = [f"Pod/{_get(p, 'metadata', 'name')}" for p in pods
             if _get(p, "status", "phase") not in ("Succeeded", "Failed") and pvc_name in pod_claims(p)]
    if pv_name:
        users += [f"VolumeAttachment/{_get(a, 'metadata', 'name')}" for a in attachments
                  if _get(a, "spec", "source", "persistentVolumeName") == pv_name]
    return sorted(users)


@dataclasses.dataclass(frozen=True)
class Usage:
    """Who uses which claim, as the operator's watches see it (kopf indexes, handlers/usage.py) instead of a
    list of pods and VolumeAttachments per action: ``pods`` maps ``(namespace, claim)`` to ``Pod/NAME`` of the
    pods not finished that mount it, ``attachments`` a PV's name to ``VolumeAttachment/NAME``."""

    pods: Mapping[tuple[str, str], Iterable[str]]
    attachments: Mapping[str, Iterable[str]]

    def users(self, namespace: str, pvc_name: str, pv_name: str | None) -> list[str]:
        found = _values(self.pods, (namespace, pvc_name))
        if pv_name:
            found += _values(self.attachments, pv_name)
        return sorted(set(found))


def _values(index: Mapping[Any, Iterable[str]], key: Any) -> list[str]:
    # The watch updates the index on the event loop while a handler thread reads it: read again if it changed.
    for _ in range(10):
        try:
            return list(index.get(key, ()))
        except RuntimeError:  # changed size during iteration
            continue
    return list(index.get(key, ()))


def volume_in_use(namespace: str, resolved: ResolvedVolume, usage: Usage | None = None) -> list[str]:
    """What keeps a PVC from being "detached and idle": pods in its namespace and VolumeAttachments of its PV.

    From ``usage`` when the operator has it, else listed.  Raw references have no claim to look for: the
    storage layer's watcher check covers them.
    """
    if resolved.pvc_name is None:
        return []
    if usage is not None:
        return usage.users(namespace, resolved.pvc_name, resolved.pv_name)
    pods = as_dict(k8s.core().list_namespaced_pod(namespace)).get("items") or []
    attachments: list[dict[str, Any]] = []
    if resolved.pv_name:
        attachments = as_dict(k8s.storage().list_volume_attachment()).get("items") or []
    return users_of(resolved.pvc_name, resolved.pv_name, pods, attachments)


# ---- VolumeSnapshots ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CsiId:
    """A ceph-csi volume or snapshot id.

    Layout (ceph-csi internal/util/csiid.go, ``ComposeCSIID``): 4 hex digits
    encoding version, ``-``, 4 hex digits length of the clusterID, ``-``,
    the clusterID, ``-``, 16 hex digits pool id (int64, big endian), ``-``,
    the 36-character object uuid.
    """

    version: int
    cluster_id: str
    pool_id: int
    uuid: str

    def compose(self) -> str:
        return f"{self.version:04x}-{len(self.cluster_id):04x}-{self.cluster_id}-{self.pool_id & (2**64 - 1):016x}-{self.uuid}"


def _hex(text: str, what: str, handle: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"{handle!r} is not a ceph-csi id: {what} {text!r} is not hex") from None


def parse_csi_id(handle: str) -> CsiId:
    """Decompose a ceph-csi volume/snapshot handle (``ValueError`` when it is not one)."""
    if len(handle) < 10 or handle[4] != "-" or handle[9] != "-":
        raise ValueError(f"{handle!r} is not a ceph-csi id: expected VVVV-LLLL-<clusterID>-<pool>-<uuid>")
    version = _hex(handle[0:4], "version", handle)
    length = _hex(handle[5:9], "clusterID length", handle)
    cluster_end = 10 + length
    rest = handle[cluster_end:]
    # rest is "-" + 16 hex + "-" + 36 uuid characters, exactly
    if len(rest) != 1 + 16 + 1 + 36 or rest[0] != "-" or rest[17] != "-":
        raise ValueError(f"{handle!r} is not a ceph-csi id: wrong length after a {length}-character clusterID")
    pool = _hex(rest[1:17], "pool id", handle)
    if pool >= 2**63:
        pool -= 2**64  # ceph-csi stores int64; -1 marks an invalid pool
    if pool < 0:
        raise ValueError(f"{handle!r} is not a usable ceph-csi id: pool id {pool}")
    return CsiId(version=version, cluster_id=handle[10:cluster_end], pool_id=pool, uuid=rest[18:])


def _parse_time(value: Any) -> datetime.datetime | None:
    """RFC 3339 string (VolumeSnapshot) or nanoseconds since the epoch (VolumeSnapshotContent)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value / 1e9, tz=datetime.UTC)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(value))  # Python 3.11+ reads the trailing Z


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    """What a VolumeSnapshot itself says (no content lookup)."""

    name: str
    namespace: str
    source_pvc: str | None
    ready: bool
    creation_time: datetime.datetime | None
    restore_size: int | None
    content_name: str | None
    snapshot_class: str | None
    error: str | None = None
    created: datetime.datetime | None = None  # metadata.creationTimestamp: orders snapshots not cut yet


def snapshot_info(vs: Mapping[str, Any]) -> SnapshotInfo:
    """Parse a VolumeSnapshot API dict (pure)."""
    meta, spec, status = vs.get("metadata") or {}, vs.get("spec") or {}, vs.get("status") or {}
    return SnapshotInfo(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        source_pvc=_get(spec, "source", "persistentVolumeClaimName"),
        ready=status.get("readyToUse") is True,
        creation_time=_parse_time(status.get("creationTime")),
        restore_size=quantity_bytes(status.get("restoreSize")),
        content_name=status.get("boundVolumeSnapshotContentName") or _get(spec, "source", "volumeSnapshotContentName"),
        snapshot_class=spec.get("volumeSnapshotClassName"),
        error=_get(status, "error", "message"),
        created=_parse_time(meta.get("creationTimestamp")),
    )


def newest_first(snapshots: Iterable[SnapshotInfo]) -> list[SnapshotInfo]:
    """By ``status.creationTime`` (when the snapshot was cut), newest first; uncut ones first of all."""
    far_future = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return sorted(snapshots, key=lambda s: (s.creation_time or far_future, s.created or epoch, s.name), reverse=True)


def latest_ready(snapshots: Iterable[SnapshotInfo]) -> SnapshotInfo | None:
    """The newest ready snapshot: the one the latest-snapshot rule allows."""
    ready = [s for s in snapshots if s.ready and s.creation_time is not None]
    return newest_first(ready)[0] if ready else None


@dataclasses.dataclass(frozen=True)
class ResolvedSnapshot:
    """A ready ceph-csi RBD VolumeSnapshot and what its handle says.

    The data is image ``image`` (snapshot name prefix + the handle's uuid) in
    the pool with id ``handle.pool_id``, at its RBD snapshot of the same name:
    ceph-csi snapshots by cloning the source into that image and snapshotting
    the clone (docs/design/proposals/rbd-snap-clone.md; internal/rbd/rbd_journal.go
    opens the clone under the snapshot's name and checks for its snapshot of
    that name). ``snapshot_image`` finds the pool's name.
    """

    name: str
    namespace: str
    source_pvc: str | None
    ready: bool
    creation_time: datetime.datetime | None
    restore_size: int | None
    content_name: str
    driver: str
    handle: CsiId
    image: str
    source_volume_handle: str | None = None  # the snapshotted volume's CSI handle (dynamic snapshots)
    snapshot_class: str | None = None


@dataclasses.dataclass(frozen=True)
class SnapshotImage:
    """Where a ceph-csi VolumeSnapshot's data is: ``pool/[namespace/]image@snapshot``."""

    cluster_id: str
    pool: str
    image: str
    snapshot: str
    namespace: str | None = None

    @property
    def target(self) -> RbdTarget:
        return RbdTarget(cluster_id=self.cluster_id, pool=self.pool, image=self.image, rados_namespace=self.namespace)

    def image_ref(self) -> ImageRef:
        return ImageRef(pool=self.pool, image=self.image, namespace=self.namespace)

    def __str__(self) -> str:
        return f"rbd:{self.image_ref().spec}@{self.snapshot}"


def snapshot_image(snap: ResolvedSnapshot, pool_name_of: Callable[[int], str],
                   rados_namespace: str | None = None) -> SnapshotImage:
    """The image and RBD snapshot holding ``snap``'s data.

    The handle carries the pool's *id*; its name needs a rados call
    (ceph-csi itself calls ``GetPoolName``), so ``pool_name_of`` is passed in:
    ``rados.Rados.pool_reverse_lookup``. ``rados_namespace`` is the cluster's
    ``rbd.radosNamespace`` from config.json (``cephconfig.rados_namespace``):
    ceph-csi creates snapshot images there, and the handle does not say.
    """
    return SnapshotImage(cluster_id=snap.handle.cluster_id, pool=pool_name_of(snap.handle.pool_id),
                         image=snap.image, snapshot=snap.image, namespace=rados_namespace)


def snapshot_from(info: SnapshotInfo, content: Mapping[str, Any], prefix: str) -> ResolvedSnapshot:
    """Check a VolumeSnapshot/VolumeSnapshotContent pair and decode the handle (pure)."""
    content_name = _get(content, "metadata", "name") or "?"
    ref = _get(content, "spec", "volumeSnapshotRef") or {}
    if ref.get("namespace") != info.namespace or ref.get("name") != info.name:
        # The binding must be mutual; a content bound elsewhere would lead into another namespace.
        raise RefusedError(
            Reason.REFERENCE_NOT_ALLOWED,
            f"VolumeSnapshotContent {content_name} belongs to VolumeSnapshot {ref.get('namespace')}/{ref.get('name')}, "
            f"not to {info.namespace}/{info.name}; Savepoint does not follow it",
        )
    driver = _get(content, "spec", "driver") or ""
    if not is_rbd_csi_driver(driver):
        raise RefusedError(Reason.UNSUPPORTED_VOLUME,
                           f"VolumeSnapshot {info.name} was taken by CSI driver {driver or '(none)'}; "
                           f"only ceph-csi RBD snapshots ({RBD_CSI_DRIVER}) can be used")
    handle_text = _get(content, "status", "snapshotHandle") or _get(content, "spec", "source", "snapshotHandle")
    if not handle_text:
        raise RefusedError(Reason.SNAPSHOT_NOT_READY, f"VolumeSnapshotContent {content_name} has no snapshotHandle yet")
    try:
        handle = parse_csi_id(handle_text)
    except ValueError as exc:
        raise RefusedError(Reason.UNSUPPORTED_VOLUME, f"VolumeSnapshot {info.name}: {exc}") from None
    c_status = content.get("status") or {}
    return ResolvedSnapshot(
        name=info.name,
        namespace=info.namespace,
        source_pvc=info.source_pvc,
        ready=info.ready,
        creation_time=info.creation_time or _parse_time(c_status.get("creationTime")),
        restore_size=info.restore_size if info.restore_size is not None else c_status.get("restoreSize"),
        content_name=content_name,
        driver=driver,
        handle=handle,
        image=f"{prefix}{handle.uuid}",
        source_volume_handle=_get(content, "spec", "source", "volumeHandle"),
        snapshot_class=_get(content, "spec", "volumeSnapshotClassName") or info.snapshot_class,
    )


def _custom(namespace: str | None, plural: str, name: str) -> dict[str, Any]:
    api = k8s.custom()
    if namespace is None:
        return cast(dict[str, Any], api.get_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, plural, name))
    return cast(dict[str, Any], api.get_namespaced_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, plural, name))


def snapshot_prefix(class_name: str | None) -> str:
    """ceph-csi's snapshot image prefix: the class's ``snapshotNamePrefix`` parameter, else ``csi-snap-``.

    ceph-csi also records the exact image name in its RADOS journal
    (omap ``csi.snap.<uuid>``, key ``csi.imagename``); the class parameter is
    what it was created from.
    """
    if not class_name:
        return DEFAULT_SNAPSHOT_PREFIX
    try:
        cls = _custom(None, "volumesnapshotclasses", class_name)
    except Exception as exc:
        if k8s.is_not_found(exc):
            return DEFAULT_SNAPSHOT_PREFIX
        raise
    return (cls.get("parameters") or {}).get("snapshotNamePrefix") or DEFAULT_SNAPSHOT_PREFIX


def resolve_volume_snapshot(namespace: str, name: str) -> ResolvedSnapshot:
    """A VolumeSnapshot of ``namespace`` → its content → the ceph-csi snapshot image.

    Final: missing (``SnapshotNotFound``), not a ceph-csi RBD snapshot
    (``UnsupportedVolume``), content bound to another snapshot
    (``ReferenceNotAllowed``). Waiting: not ready or not bound yet
    (``SnapshotNotReady``).
    """
    try:
        vs = _custom(namespace, "volumesnapshots", name)
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise RefusedError(Reason.SNAPSHOT_NOT_FOUND,
                               f"VolumeSnapshot {name} does not exist in namespace {namespace}") from None
        raise
    info = snapshot_info(vs)
    if not info.ready or not info.content_name:
        why = f": {info.error}" if info.error else ""
        raise RefusedError(Reason.SNAPSHOT_NOT_READY, f"VolumeSnapshot {name} is not readyToUse yet{why}")
    try:
        content = _custom(None, "volumesnapshotcontents", info.content_name)
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise RefusedError(Reason.SNAPSHOT_NOT_READY,
                               f"VolumeSnapshot {name} is bound to VolumeSnapshotContent {info.content_name}, "
                               f"which does not exist") from None
        raise
    class_name = _get(content, "spec", "volumeSnapshotClassName") or info.snapshot_class
    return snapshot_from(info, content, snapshot_prefix(class_name))


def list_volume_snapshots_of(namespace: str, pvc_name: str) -> list[SnapshotInfo]:
    """VolumeSnapshots in ``namespace`` taken of PVC ``pvc_name``, newest first (``latest_ready`` picks one).

    Pre-provisioned snapshots name no PVC and are not listed.
    """
    items = cast(dict[str, Any], k8s.custom().list_namespaced_custom_object(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots"))
    infos = [snapshot_info(vs) for vs in items.get("items") or []]
    return newest_first(s for s in infos if s.source_pvc == pvc_name)
