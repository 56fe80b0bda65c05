"""The ``blocks`` backup format: RBD volumes, in use or not (seed 001, Cinder non-disruptive backup).

The operator side of block-volume backups; the data moves in mover Jobs
(``savepoint.mover.blocks``) that read and write RBD through librbd and the
repository as a mounted volume (``savepoint.storage.chunks``).  The life cycle
(validation, quotas, the PVC lock and its states, phases, Events, deletion,
restart safety) is the shared flow's (``flows/backup.py``, ``flows/restore.py``);
this module fills in the hooks of ``formats.BackupFormat``:

Backup
  check_source  a volume in use -- a pod mounts the claim, a VolumeAttachment
                names its PV, or the image has RBD watchers -- is backed up
                only with ``force: true``; otherwise the backup waits (Pending,
                ``VolumeInUse``) until the deadline.  The PVC lock remembers
                the claim's previous state and puts it back afterwards (the
                seed's ``previous_status``).
  prepare       a temporary RBD snapshot ``savepoint-backup-<backup uid>``,
                named in ``status.temporarySnapshot`` (with the base-to-be in
                ``status.baseSnapshot``) *before* it is created.  The image's
                location is recorded in the ShareBackup's status
                (``status.rbdImage``) so the snapshot can be removed even
                when the claim is gone.  Every backup reads a snapshot, in use
                or not: the data is one crash-consistent point in time.
  backup        ``blocks-backup`` reads the snapshot: everything allocated, or
                -- with a parent backup whose base snapshot is still on the
                volume (same name *and* snapshot id as its backup.json says) --
                only what ``rbd diff`` reports changed since that base.  A
                missing or replaced base means a full read, said in
                ``status.fullReadReason`` and an Event (reason ``FullRead``).
  cleanup       success: the temporary snapshot becomes the source's base
                snapshot ``savepoint-base-<backup uid>`` (a rename: the data the
                next incremental diffs against), and older bases of the source
                go -- one per source.  Failure, abort, deletion: the temporary
                snapshot is removed.  Both are idempotent and run again after a
                restart (``status.step`` says where the flow was).
Restore
  into the source (detached, same size, else ``SizeMismatch``), into a given
  RBD-backed claim at least as large, or into a new claim: the operator creates
  the RBD image ``csi-vol-<restore uid>`` (pool and cluster from the claim's
  StorageClass, else the source's), a static ceph-csi PV bound to the new PVC,
  then ``blocks-restore`` writes the backup sparsely, verifying every chunk.
Delete
  ``blocks-delete`` removes the backup's directory and the chunks no other
  backup of the source uses; then the backup's base snapshot goes (its backups
  are gone: no incremental can build on it any more).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NoReturn

from savepoint.kube import cephconfig, k8s, references
from savepoint.api import BackupFormat as ApiFormat
from savepoint.api import NewClaim, Reason
from savepoint.api.quantity import to_quantity
from savepoint.engine import cephpool
from savepoint.engine.faults import crash_point
from savepoint.engine.context import FlowContext, Wait
from savepoint.flows.formats import (
    repository_limits,
    repository_volume,
    ANN_CREATED_BY,
    BackupPlan,
    DeletePlan,
    FormatBase,
    RestorePlan,
    _api_message,
    created_by,
)
from savepoint.mover.request import MoverRequest
from savepoint.storage import rbd
from savepoint.storage import repository as repo
from savepoint.storage.ceph import CephCredentials
from savepoint.storage.errors import AlreadyExists, NotFound, PermissionDenied, StorageError, Unreachable

TEMP_PREFIX = "savepoint-backup-"  # a backup's temporary snapshot (rbd.SAVEPOINT_SNAPSHOT_PREFIX: never "latest")
BASE_PREFIX = "savepoint-base-"  # the source's base snapshot for the next incremental
STATUS_IMAGE = "rbdImage"  # in a ShareBackup's status: the RBD image it reads (JSON)
LABEL_RESTORE_UID = "savepoint.dev/restore-uid"  # on PVs a ShareRestore created
REPOSITORY_MOUNT = "/savepoint/repository"
RBD_DRIVER = references.RBD_CSI_DRIVER
BACKUP_PLURAL = "sharebackups"
RESTORE_PLURAL = "sharerestores"


def temp_snapshot_name(uid: str) -> str:
    return f"{TEMP_PREFIX}{uid}"


def base_snapshot_name(uid: str) -> str:
    return f"{BASE_PREFIX}{uid}"


def restore_image_name(uid: str) -> str:
    return f"csi-vol-{uid}"  # ceph-csi's own naming; the ShareRestore's uid keeps it unique and idempotent


def restore_pv_name(uid: str) -> str:
    return f"savepoint-restore-{uid}"


@dataclasses.dataclass(frozen=True)
class Image:
    """An RBD image by cluster, pool, RADOS namespace and name (what the annotation records)."""

    cluster_id: str
    pool: str
    image: str
    namespace: str | None = None

    @property
    def ref(self) -> rbd.ImageRef:
        return rbd.ImageRef(self.pool, self.image, self.namespace)

    @classmethod
    def of(cls, target: references.RbdTarget) -> Image:
        return cls(target.cluster_id, target.pool, target.image, target.rados_namespace)

    def to_json(self) -> str:
        return json.dumps({"clusterID": self.cluster_id, "pool": self.pool, "image": self.image,
                           **({"radosNamespace": self.namespace} if self.namespace else {})}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Image | None:
        try:
            data = json.loads(text or "")
            return cls(str(data["clusterID"]), str(data["pool"]), str(data["image"]), data.get("radosNamespace"))
        except (ValueError, KeyError, TypeError):
            return None

    def __str__(self) -> str:
        return f"rbd:{self.ref.spec}"


# ---- pure decisions ------------------------------------------------------------------------------


def in_use_refusal(users: list[str], force: bool) -> str | None:
    """The VolumeInUse message when a backup must wait, None when it may go on (idle, or forced)."""
    if not users or force:
        return None
    return (f"the volume is in use ({', '.join(users)}); set force: true to back it up while it is in use (from a "
            "crash-consistent temporary snapshot), or stop the workload and the backup goes on by itself")


def stale_bases(snapshots: list[str], keep: str | None) -> list[str]:
    """Base snapshots of a source to remove when ``keep`` becomes its one base."""
    return [s for s in snapshots if s.startswith(BASE_PREFIX) and s != keep]


def restore_size_refusal(image_size: int, backup_size: int | None, *, in_place: bool, what: str) -> tuple[str, str] | None:
    """Checked on the image itself (the claim's capacity may differ from its image's size)."""
    if backup_size is None:
        return None
    if in_place and image_size != backup_size:
        return (Reason.SIZE_MISMATCH,
                (f"{what} holds {image_size} bytes but the backup was taken at {backup_size} bytes; a backup "
                 "restores into its source only at the same size -- restore into another claim "
                 "(target.persistentVolumeClaim or target.newClaim) instead"))
    if not in_place and image_size < backup_size:
        return Reason.TARGET_TOO_SMALL, f"{what} holds {image_size} bytes, less than the backup's {backup_size}"
    return None


# ---- helpers ---------------------------------------------------------------------------------------


def _ceph_trouble(ctx: FlowContext, exc: StorageError, what: str) -> NoReturn:
    """Wait on what can pass (cluster unreachable, busy), fail on what cannot."""
    if isinstance(exc, Unreachable) or exc.reason == "VolumeBusy":
        ctx.wait(Reason.CEPH_ERROR if isinstance(exc, Unreachable) else Reason.VOLUME_BUSY, f"{what}: {exc}", delay=10)
    if isinstance(exc, PermissionDenied):
        ctx.fail(Reason.PERMISSION_DENIED, f"{what}: {exc}")
    ctx.fail(Reason.CEPH_ERROR, f"{what}: {exc}")


def _creds(ctx: FlowContext, cluster_id: str) -> CephCredentials:
    try:
        return cephconfig.credentials(cluster_id, ctx.settings)
    except references.RefusedError as exc:
        ctx.refuse(exc)


def _read_custom(ctx: FlowContext, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom().get_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace, plural,
                                                              name))
    except Exception as exc:
        if k8s.is_not_found(exc):
            return None
        raise


def recorded_image(ctx: FlowContext) -> Image | None:
    return Image.from_json(ctx.status.get(STATUS_IMAGE))


def record_image(ctx: FlowContext, image: Image, volume_mode: str) -> None:
    """The image (and the claim's volume mode, for restores into a new claim) in the ShareBackup's status:
    written by the operator only, so no user can point a later step (base snapshot removal, the pool of a
    restore into a new claim) at another image."""
    value = json.dumps({**json.loads(image.to_json()), "volumeMode": volume_mode}, sort_keys=True)
    if ctx.status.get(STATUS_IMAGE) != value:
        ctx.patch_status({STATUS_IMAGE: value})


def _backup_image_record(backup: dict[str, Any]) -> str | None:
    return (backup.get("status") or {}).get(STATUS_IMAGE)


def _recorded_volume_mode(backup: dict[str, Any]) -> str:
    try:
        mode = json.loads(_backup_image_record(backup) or "{}")
    except ValueError:
        return "Filesystem"
    return "Block" if isinstance(mode, dict) and mode.get("volumeMode") == "Block" else "Filesystem"


def plan_image(plan: BackupPlan | None) -> Image | None:
    if plan is None or plan.source.resolved is None:
        return None
    target = plan.source.resolved.target
    return Image.of(target) if isinstance(target, references.RbdTarget) else None


def rbd_users(ctx: FlowContext, resolved: references.ResolvedVolume, image: Image) -> list[str]:
    """Pods mounting the claim, VolumeAttachments of its PV, RBD watchers of the image (``rbd status``)."""
    users = references.volume_in_use(ctx.owner.namespace, resolved, ctx.usage) if resolved.pvc_name else []
    try:
        with cephpool.session(_creds(ctx, image.cluster_id)) as cluster, \
                rbd.open_ref(cluster, image.ref, read_only=True) as handle:  # read-only: registers no watch itself
            users += [f"RBD watcher {w.address} (client.{w.client_id})" for w in rbd.watchers(handle)]
    except NotFound as exc:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"the volume's RBD image {image} does not exist: {exc}")
    except StorageError as exc:
        _ceph_trouble(ctx, exc, f"checking who uses {image}")
    return users


# ---- the format ------------------------------------------------------------------------------------


class BlocksFormat(FormatBase):
    name = repo.FORMAT_BLOCKS
    api_format = ApiFormat.CHUNKS

    def accepts(self, target: references.Target) -> bool:
        return isinstance(target, references.RbdTarget)

    def ceph_credentials(self, ctx: FlowContext, plan: Any) -> CephCredentials | None:
        if isinstance(plan, BackupPlan):
            image = recorded_image(ctx) or plan_image(plan)
            return _creds(ctx, image.cluster_id) if image is not None else None
        if isinstance(plan, RestorePlan):
            target = plan.target.target
        else:
            return None
        if not isinstance(target, references.RbdTarget):
            return None
        return _creds(ctx, target.cluster_id)

    # --- backup ---

    def check_source(self, ctx: FlowContext, plan: BackupPlan) -> None:
        image = plan_image(plan)
        assert image is not None and plan.source.resolved is not None
        users = rbd_users(ctx, plan.source.resolved, image)
        refusal = in_use_refusal(users, plan.force)
        if refusal:
            ctx.wait(Reason.VOLUME_IN_USE, refusal, delay=5)
        if users:
            ctx.event("Normal", "BackingUpInUseVolume", f"{plan.source.description} is in use ({', '.join(users)}); "
                      "force is set: backing it up from a crash-consistent temporary snapshot")

    def prepare(self, ctx: FlowContext, plan: BackupPlan) -> None:
        image = plan_image(plan)
        assert image is not None
        temp, base = temp_snapshot_name(ctx.owner.uid), base_snapshot_name(plan.backup_uid)
        record_image(ctx, image, plan.source.resolved.volume_mode if plan.source.resolved else "Filesystem")
        if ctx.status.get("temporarySnapshot") != temp:
            ctx.patch_status({"temporarySnapshot": temp, "baseSnapshot": base})  # named before it exists
        crash_point("sbak-blocks:snapshot-named")
        try:
            with cephpool.session(_creds(ctx, image.cluster_id)) as cluster, rbd.open_ref(cluster, image.ref) as handle:
                rbd.create_snapshot(handle, temp, exist_ok=True)
        except StorageError as exc:
            _ceph_trouble(ctx, exc, f"taking the temporary snapshot {temp} of {image}")
        crash_point("sbak-blocks:snapshot-taken")

    def backup_request(self, ctx: FlowContext, plan: BackupPlan) -> MoverRequest:
        image = recorded_image(ctx) or plan_image(plan)  # the image prepare recorded, with the lock held
        assert image is not None
        base = None
        if plan.incremental and plan.parent_path:
            base = {"parentPath": plan.parent_path, "parentUid": plan.parent_uid}
        return MoverRequest(
            action="blocks-backup",
            needs_ceph=True,
            run_as_root=True,  # writes into a repository whose directories other (root) movers made
            volumes=[repository_volume(ctx, plan.repository, read_only=False, mount_path=REPOSITORY_MOUNT)],
            params={"limits": repository_limits(ctx), "repository": REPOSITORY_MOUNT, "backupPath": plan.rel_path,
                    "source": {"pool": image.pool, "image": image.image, "namespace": image.namespace,
                               "snapshot": ctx.status.get("temporarySnapshot") or temp_snapshot_name(ctx.owner.uid)},
                    "snapshotName": ctx.status.get("baseSnapshot") or base_snapshot_name(plan.backup_uid),
                    "base": base, "verify": plan.verify, "manifest": plan.manifest_fields(self.name)},
        )

    def backup_status(self, ctx: FlowContext, plan: BackupPlan, result: dict[str, Any]) -> dict[str, Any]:
        fields = {
            "format": self.api_format,
            "chunkCount": result.get("chunkCount"),
            "bytesRead": result.get("bytesRead"),
            "bytesStored": result.get("bytesStored"),
            "manifestDigest": result.get("manifestDigest"),
            "parentBackup": result.get("parent"),
            "fullReadReason": result.get("fullReadReason"),
        }
        if not plan.source.size_bytes and result.get("size"):
            fields["size"] = to_quantity(int(result["size"]))  # a raw image: its size is the volume's
        return fields

    def cleanup(self, ctx: FlowContext, plan: BackupPlan | None, *, succeeded: bool) -> None:
        temp, base = ctx.status.get("temporarySnapshot"), ctx.status.get("baseSnapshot")
        if not temp and not (succeeded and base):
            return
        image = recorded_image(ctx) or plan_image(plan)
        if image is None:
            ctx.event("Warning", "TemporarySnapshotUnknown", f"cannot find the volume of temporary snapshot {temp} "
                      "(the claim is gone and no image was recorded); remove it by hand if it is still there")
            ctx.patch_status({"temporarySnapshot": None})
            return
        try:
            with cephpool.session(_creds(ctx, image.cluster_id)) as cluster, rbd.open_ref(cluster, image.ref) as handle:
                if succeeded:
                    self._promote(handle, temp, base)
                elif temp:
                    rbd.remove_snapshot(handle, temp)
        except NotFound:
            pass  # the image is gone, and its snapshots with it
        except StorageError as exc:
            if not (succeeded and ctx.deadline_passed()):
                raise Wait(Reason.CEPH_ERROR, f"removing the temporary snapshot {temp} of {image}: {exc}", 10) from exc
            # The backup is complete in the repository: give up on the volume's snapshots, never on the backup.
            ctx.event("Warning", "SnapshotCleanupFailed", f"the backup is kept, but tidying the snapshots of {image} "
                      f"failed until the deadline ({exc}); remove what is left of them by hand ('rbd snap ls'); "
                      "the next backup of this volume may read it in full", wait=False)
        crash_point("sbak-blocks:cleaned-up")
        ctx.patch_status({"temporarySnapshot": None, **({} if succeeded else {"baseSnapshot": None})})

    @staticmethod
    def _promote(handle: Any, temp: str | None, base: str | None) -> None:
        """The temporary snapshot becomes the one base of the source (idempotent)."""
        names = [s.name for s in rbd.list_snapshots(handle)]
        if temp and temp in names:
            if base and base not in names:
                handle.rename_snap(temp, base)
                crash_point("sbak-blocks:base-renamed")
            else:
                rbd.remove_snapshot(handle, temp)
            names = [s.name for s in rbd.list_snapshots(handle)]
        for old in stale_bases(names, base):
            rbd.remove_snapshot(handle, old)

    # --- restore ---

    def check_restore_target(self, ctx: FlowContext, plan: RestorePlan) -> None:
        target = plan.target.target
        if not isinstance(target, references.RbdTarget):
            ctx.fail(Reason.UNSUPPORTED_VOLUME, f"{plan.target.describe()} is {target}; a block-volume backup "
                     "restores into a Ceph RBD volume")
        image = Image.of(target)
        users = rbd_users(ctx, plan.target, image)
        if users:
            ctx.wait(Reason.VOLUME_IN_USE, f"{plan.target.describe()} is in use ({', '.join(users)}); a restore "
                     "overwrites the whole volume, so it must be detached: stop the workload and the restore goes on "
                     "by itself", delay=5)
        try:
            with cephpool.session(_creds(ctx, image.cluster_id)) as cluster, \
                    rbd.open_ref(cluster, image.ref, read_only=True) as handle:
                size = int(handle.size())
                info = rbd.image_info(handle)
        except StorageError as exc:
            _ceph_trouble(ctx, exc, f"reading the size of {image}")
        if not info.has_feature("exclusive-lock"):
            ctx.fail(Reason.UNSUPPORTED_IMAGE_FEATURES,
                     f"{image} lacks the RBD image feature exclusive-lock, which the restore holds while it writes; "
                     f"enable it while the volume is detached (`rbd feature enable {image.ref.spec} exclusive-lock`) "
                     "and create the ShareRestore again; nothing was changed")
        refusal = restore_size_refusal(size, plan.backup_size, in_place=plan.in_place, what=plan.target.describe())
        if refusal:
            ctx.fail(*refusal)

    def create_claim(self, ctx: FlowContext, new_claim: NewClaim, size_bytes: int, backup: dict[str, Any]) -> None:
        """A new RBD image, a static ceph-csi PV for it and the claim bound to that PV; all idempotent."""
        uid = ctx.owner.uid
        location, features, fs_type, storage_class = self._new_volume_location(ctx, new_claim, backup)
        image = dataclasses.replace(location, image=restore_image_name(uid))
        try:
            with cephpool.session(_creds(ctx, image.cluster_id)) as cluster:
                if not rbd.image_exists(cluster, image.ref):
                    try:
                        rbd.create_image(cluster, image.ref, size_bytes, features=features)
                    except AlreadyExists:
                        pass
        except StorageError as exc:
            _ceph_trouble(ctx, exc, f"creating the RBD image {image} for claim {new_claim.name}")
        crash_point("srst-blocks:image-created")
        volume_mode = _recorded_volume_mode(backup)
        pv_name = restore_pv_name(uid)
        attributes = {"clusterID": image.cluster_id, "pool": image.pool, "imageName": image.image,
                      "staticVolume": "true"}
        if features:
            attributes["imageFeatures"] = ",".join(features)
        if image.namespace:
            attributes["radosNamespace"] = image.namespace
        csi: dict[str, Any] = {"driver": RBD_DRIVER, "volumeHandle": image.image, "volumeAttributes": attributes}
        if volume_mode == "Filesystem":
            csi["fsType"] = fs_type
        quantity = to_quantity(size_bytes)
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": pv_name, "labels": {"app.kubernetes.io/managed-by": "savepoint",
                                                       LABEL_RESTORE_UID: uid},
                           "annotations": {ANN_CREATED_BY: created_by(ctx)}},
              "spec": {"capacity": {"storage": quantity}, "accessModes": ["ReadWriteOnce"], "volumeMode": volume_mode,
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "namespace": ctx.owner.namespace, "name": new_claim.name},
                       "csi": csi}}
        try:
            k8s.core().create_persistent_volume(pv)
        except Exception as exc:
            if not k8s.is_conflict(exc):
                raise
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": new_claim.name, "namespace": ctx.owner.namespace,
                            "labels": {"app.kubernetes.io/managed-by": "savepoint"},
                            "annotations": {ANN_CREATED_BY: created_by(ctx)},
                            "ownerReferences": [{"apiVersion": k8s.API_VERSION, "kind": ctx.owner.kind,
                                                 "name": ctx.owner.name, "uid": uid, "controller": False,
                                                 "blockOwnerDeletion": False}]},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": volume_mode, "volumeName": pv_name,
                        "storageClassName": storage_class, "resources": {"requests": {"storage": quantity}}}}
        try:
            k8s.core().create_namespaced_persistent_volume_claim(ctx.owner.namespace, pvc)
        except Exception as exc:
            if k8s.is_conflict(exc):
                return
            status = getattr(exc, "status", None)
            if status in (400, 403, 422):
                self._remove_created_volume(ctx)  # nothing will ever bind it
                reason = Reason.QUOTA_EXCEEDED if "exceeded quota" in str(getattr(exc, "body", "")) \
                    else Reason.INVALID_SPEC
                ctx.fail(reason, f"creating claim {new_claim.name}: {_api_message(exc)}")
            raise

    def _new_volume_location(self, ctx: FlowContext, new_claim: NewClaim,
                             backup: dict[str, Any]) -> tuple[Image, list[str] | None, str, str]:
        """(cluster/pool/namespace, image features, fsType, storageClassName) for a new claim's image.

        From the StorageClass the claim names (ceph-csi parameters clusterID,
        pool, imageFeatures, csi.storage.k8s.io/fstype), else from the backup's
        source image (same cluster and pool, the source's class if any).
        """
        recorded = Image.from_json(_backup_image_record(backup))
        class_name = new_claim.storage_class_name
        if class_name:
            try:
                sc = k8s.storage().read_storage_class(class_name)
            except Exception as exc:
                if k8s.is_not_found(exc):
                    ctx.fail(Reason.INVALID_SPEC, f"StorageClass {class_name} does not exist")
                raise
            if not references.is_rbd_csi_driver(sc.provisioner):
                ctx.fail(Reason.UNSUPPORTED_VOLUME, f"StorageClass {class_name} provisions {sc.provisioner} volumes; "
                         "a block-volume backup restores into a ceph-csi RBD volume")
            params = dict(sc.parameters or {})
            if not params.get("clusterID") or not params.get("pool"):
                ctx.fail(Reason.INVALID_SPEC, f"StorageClass {class_name} has no clusterID/pool parameters")
            namespace = params.get("radosNamespace") or cephconfig.rados_namespace(params["clusterID"], ctx.settings)
            features = [f.strip() for f in params.get("imageFeatures", "").split(",") if f.strip()] or None
            return (Image(params["clusterID"], params["pool"], "", namespace), features,
                    params.get("csi.storage.k8s.io/fstype") or "ext4", class_name)
        if recorded is None:
            ctx.fail(Reason.INVALID_SPEC, f"ShareBackup {backup['metadata']['name']} recorded no RBD image to place "
                     "the new claim next to; give target.newClaim.storageClassName (a ceph-csi RBD StorageClass)")
        return Image(recorded.cluster_id, recorded.pool, "", recorded.namespace), None, "ext4", ""

    def restore_request(self, ctx: FlowContext, plan: RestorePlan) -> MoverRequest:
        target = plan.target.target
        assert isinstance(target, references.RbdTarget)
        return MoverRequest(
            action="blocks-restore",
            needs_ceph=True,
            run_as_root=True,
            volumes=[repository_volume(ctx, plan.repository, read_only=True, mount_path=REPOSITORY_MOUNT,
                                       rel_path=plan.backup_path)],
            params={"limits": repository_limits(ctx), "repository": REPOSITORY_MOUNT, "backupPath": plan.backup_path,
                    "expectedUid": plan.backup_uid, "expectedDigest": plan.manifest_digest,
                    "exactSize": plan.in_place,
                    "target": {"pool": target.pool, "image": target.image, "namespace": target.rados_namespace}},
        )

    def restore_cleanup(self, ctx: FlowContext, plan: RestorePlan | None, *, succeeded: bool) -> None:
        """A restore that created a volume and is deleted without having succeeded takes the volume along
        (its claim, owned by the ShareRestore, is garbage-collected; the PV and image are ours to remove)."""
        if succeeded or not ctx.status.get("createdClaim"):
            return
        obj = _read_custom(ctx, RESTORE_PLURAL, ctx.owner.name)
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            return  # failed but not deleted: the claim stays for inspection until the ShareRestore goes
        self._remove_created_volume(ctx)

    def _remove_created_volume(self, ctx: FlowContext) -> None:
        core = k8s.core()
        try:
            pv = core.read_persistent_volume(restore_pv_name(ctx.owner.uid))
        except Exception as exc:
            if k8s.is_not_found(exc):
                return
            raise
        if (pv.metadata.labels or {}).get(LABEL_RESTORE_UID) != ctx.owner.uid:
            return  # not ours
        attrs = (pv.spec.csi.volume_attributes or {}) if pv.spec.csi else {}
        image = Image(attrs.get("clusterID", ""), attrs.get("pool", ""), attrs.get("imageName", ""),
                      attrs.get("radosNamespace") or None)
        if image.cluster_id and image.pool and image.image == restore_image_name(ctx.owner.uid):
            try:
                with cephpool.session(_creds(ctx, image.cluster_id)) as cluster:
                    rbd.remove_image(cluster, image.ref, purge_snapshots=True)
            except StorageError as exc:
                raise Wait(Reason.CEPH_ERROR, f"removing the restore's image {image}: {exc}", 10) from exc
        try:
            core.delete_persistent_volume(pv.metadata.name)
        except Exception as exc:
            if not k8s.is_not_found(exc):
                raise

    # --- delete ---

    def delete_request(self, ctx: FlowContext, plan: DeletePlan) -> MoverRequest:
        return MoverRequest(
            action="blocks-delete",
            run_as_root=True,
            volumes=[repository_volume(ctx, plan.repository, read_only=False, mount_path=REPOSITORY_MOUNT,
                                       rel_path=plan.rel_path)],
            params={"limits": repository_limits(ctx),
                    "repository": REPOSITORY_MOUNT, "backupPath": plan.rel_path, "expectedUid": plan.backup_uid,
                    "owner": plan.owner()},
        )

    def after_delete(self, ctx: FlowContext, plan: DeletePlan) -> None:
        """The backup's data is gone: so is its base snapshot (nothing can be incremental to it any more)."""
        base = plan.status.get("baseSnapshot")
        if not base or not base.startswith(BASE_PREFIX):
            return
        image = recorded_image(ctx) or _source_image(ctx, plan)
        if image is None:
            return
        try:
            with cephpool.session(_creds(ctx, image.cluster_id)) as cluster, rbd.open_ref(cluster, image.ref) as handle:
                rbd.remove_snapshot(handle, base)
        except NotFound:
            return  # the image is gone
        except StorageError as exc:
            raise Wait(Reason.CEPH_ERROR, f"removing the base snapshot {base} of {image}: {exc}", 10) from exc


def _source_image(ctx: FlowContext, plan: DeletePlan) -> Image | None:
    """The backup's source image looked up now (an object without the annotation, e.g. imported)."""
    from savepoint.api import ShareSource

    try:
        source = ShareSource.model_validate((plan.spec or {}).get("source") or {})
        resolved = references.resolve_source(ctx.owner.namespace, source, ctx.settings)
    except (ValueError, references.RefusedError):
        return None
    return Image.of(resolved.target) if isinstance(resolved.target, references.RbdTarget) else None
