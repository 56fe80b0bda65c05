"""VolumeRevert (seed 000, Cinder revert-to-snapshot): revert a volume in place
to its most recent snapshot, safely.

Before any step, ``plan`` decides every refusal: the volume and snapshot resolve, the snapshot
is the latest, sizes match, the image can be locked, the volume is idle.  Then the steps
(``FLOW`` at the bottom; engine/steps.py runs them, records each, resumes after the last):

  Locked          PVC lock taken (state ``reverting``), snapshot marked restoring, plan recorded
  SafetySnapshot  a snapshot of the current data exists (named in status first)
  DataReverted    rollback (fast path) or mover copy (generic path) finished
  Finished        safety snapshot removed, snapshot and PVC states restored → Succeeded

Any failure after the lock is undone in reverse: the data step's undo stops the mover and, when
data may have been touched, rolls the volume back to the safety snapshot, keeps that snapshot
and leaves the PVC in state ``error`` (a documented reset clears it): never a half-written volume
reported as anything but an error, never data lost.  A failure before any data was touched
removes the safety snapshot and releases the lock cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from savepoint.engine import movers
from savepoint.kube import cephconfig, locks, references
from savepoint.engine.faults import crash_point
from savepoint.api import Reason, VolumeRevertSpec
from savepoint.engine import cephpool
from savepoint.engine.context import FlowContext, MoverFailed
from savepoint.engine.steps import Abort, Flow, Step, finalize_flow, run_flow
from savepoint.mover.request import MoverRequest
from savepoint.storage import ceph, rbd
from savepoint.storage.errors import Busy, NotFound, StorageError

SAFETY_PREFIX = "savepoint-safety-"
COPY_STEP = "copy"
LOCK_STATE = "reverting"
ERROR_STATE = "error"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the data step needs, resolved from the spec."""

    volume: references.ResolvedVolume | None  # None for a raw rbd reference
    target: references.RbdTarget
    method: str  # "Rollback" | "Copy"
    snapshot_label: str  # for people: rbd:pool/image@snap or volumesnapshot/NAME
    rbd_snapshot: str | None = None  # fast path
    snapshot_image: rbd.ImageRef | None = None  # copy path: the snapshot's own image
    snapshot_image_snap: str | None = None
    volume_snapshot: str | None = None  # name of the VolumeSnapshot, copy path
    creds: ceph.CephCredentials | None = dataclasses.field(default=None, repr=False)
    safety_snapshot: bool = True  # spec.safetySnapshot

    def recorded(self) -> dict[str, Any]:
        """What later steps need, recorded in status with the lock (they never look it up again)."""
        def image(ref: rbd.ImageRef, snapshot: str | None = None) -> dict[str, Any]:
            return {"pool": ref.pool, "name": ref.image, **({"radosNamespace": ref.namespace} if ref.namespace else {}),
                    **({"snapshot": snapshot} if snapshot else {})}

        out: dict[str, Any] = {"clusterID": self.target.cluster_id, "volumeImage": image(image_ref(self.target))}
        if self.snapshot_image is not None:
            out["snapshotImage"] = image(self.snapshot_image, self.snapshot_image_snap)
        return out

    @classmethod
    def from_status(cls, ctx: FlowContext, spec: VolumeRevertSpec) -> "Plan":
        """After the lock: the plan as recorded, cross-checked against the claim while it exists (a claim is
        bound to one volume for good, so a recorded image that is not the claim's was not recorded by us)."""
        st = ctx.status
        vi = st["volumeImage"]
        target = references.RbdTarget(st["clusterID"], vi["pool"], vi["name"], vi.get("radosNamespace") or None)
        kind, ref = spec.volume.chosen()
        volume = None
        if kind == "persistentVolumeClaim":
            volume = references.ResolvedVolume(namespace=ctx.owner.namespace, target=target, pvc_name=ref.name)
            try:
                live = references.resolve_pvc(ctx.owner.namespace, ref.name, ctx.settings)
            except references.RefusedError:
                live = None  # gone or unreadable now: what was recorded with the lock stands
            if live is not None and live.target != target:
                raise references.RefusedError(Reason.INVALID_SPEC, f"the recorded volume {target} is not the volume "
                                              f"of pvc/{ref.name} ({live.target}); nothing is done to it",
                                              final=True)
            if live is not None:
                volume = live
        snap_kind, snap_ref = spec.snapshot.chosen()
        si = st.get("snapshotImage")
        return cls(volume, target, str(st.get("method") or "Rollback"), str(st.get("snapshot") or ""),
                   rbd_snapshot=snap_ref if snap_kind == "rbdSnapshot" else None,
                   snapshot_image=rbd.ImageRef(si["pool"], si["name"], si.get("radosNamespace") or None) if si else None,
                   snapshot_image_snap=(si or {}).get("snapshot"),
                   volume_snapshot=snap_ref.name if snap_kind == "volumeSnapshot" else None,
                   safety_snapshot=bool(st.get("safetySnapshot")))


def safety_snapshot_name(ctx: FlowContext) -> str:
    return f"{SAFETY_PREFIX}{ctx.owner.uid[:13]}"


def image_ref(target: references.RbdTarget) -> rbd.ImageRef:
    return rbd.ImageRef(pool=target.pool, image=target.image, namespace=target.rados_namespace)


# --- validation --------------------------------------------------------------------------

def plan(ctx: FlowContext) -> Plan:
    """Every refusal, before the first lock: references, latest snapshot, sizes, image features, idle."""
    spec = VolumeRevertSpec.model_validate(ctx.spec)
    p = resolve(ctx, spec)
    _relate(ctx, p)
    assert p.creds is not None
    with cephpool.session(p.creds) as cluster:
        snapshot_size = copied_snapshot_size(ctx, p, cluster) if p.method == "Copy" else None
        with contextlib.ExitStack() as opened:  # the volume opened once for the snapshot, feature and idle checks
            try:
                image = opened.enter_context(rbd.open_ref(cluster, image_ref(p.target), read_only=True))
            except NotFound as exc:
                ctx.fail(Reason.UNSUPPORTED_VOLUME, str(exc))
            check_snapshot(ctx, p, image, snapshot_size)
            check_idle(ctx, p, image)
    return p


def resolve(ctx: FlowContext, spec: VolumeRevertSpec) -> Plan:
    try:
        kind, ref = spec.volume.chosen()
        if kind == "persistentVolumeClaim":
            volume = references.resolve_pvc(ctx.owner.namespace, ref.name, ctx.settings)
            target = volume.target
        else:
            volume = None
            target = references.resolve_raw(ctx.owner.namespace, ref, ctx.settings)
        if not isinstance(target, references.RbdTarget):
            ctx.fail(Reason.UNSUPPORTED_VOLUME, f"VolumeRevert needs a Ceph RBD volume; {_label(volume, target)} is not one")
        creds = cephconfig.credentials(target.cluster_id, ctx.settings)
        snap_kind, snap_ref = spec.snapshot.chosen()
        if snap_kind == "rbdSnapshot":
            return Plan(volume, target, "Rollback", f"rbd:{target.pool}/{target.image}@{snap_ref}",
                        rbd_snapshot=snap_ref, creds=creds, safety_snapshot=spec.safety_snapshot)
        if volume is None:
            ctx.fail(Reason.INVALID_SPEC, "a VolumeSnapshot can only be reverted onto a persistentVolumeClaim")
        snap = references.resolve_volume_snapshot(ctx.owner.namespace, snap_ref.name)
    except references.RefusedError as exc:
        ctx.refuse(exc)
    if snap.source_pvc != volume.pvc_name:
        ctx.fail(Reason.SNAPSHOT_NOT_OF_VOLUME,
                 f"VolumeSnapshot {snap.name} was taken of PVC {snap.source_pvc!r}, not {volume.pvc_name!r}")
    newer = [s for s in references.list_volume_snapshots_of(ctx.owner.namespace, volume.pvc_name)
             if s.ready and s.creation_time and snap.creation_time and s.creation_time > snap.creation_time]
    if newer:
        newest = max(newer, key=lambda s: s.creation_time)
        ctx.fail(Reason.SNAPSHOT_NOT_LATEST,
                 f"VolumeSnapshot {snap.name} is not the most recent snapshot of {volume.pvc_name}: "
                 f"{newest.name} is newer; revert to it first (or delete it) and try again")
    with cephpool.session(creds) as cluster:
        image = references.snapshot_image(snap, cluster.pool_reverse_lookup,
                                          cephconfig.rados_namespace(target.cluster_id, ctx.settings))
    return Plan(volume, target, "Copy", f"volumesnapshot/{snap.name}",
                snapshot_image=rbd.ImageRef(image.pool, image.image, image.namespace),
                snapshot_image_snap=image.snapshot, volume_snapshot=snap.name, creds=creds,
                safety_snapshot=spec.safety_snapshot)
def _label(volume: references.ResolvedVolume | None, target: Any) -> str:
    return f"pvc/{volume.pvc_name}" if volume else str(target)


def copied_snapshot_size(ctx: FlowContext, p: Plan, cluster: Any) -> int:
    """The size of the VolumeSnapshot's image.  ceph-csi's ``csi-snap-*`` image is a clone of the volume and
    librbd opens a clone's parent along with it: it is opened on its own, before the volume, not inside it."""
    assert p.snapshot_image is not None
    try:
        with rbd.open_ref(cluster, p.snapshot_image, snapshot=p.snapshot_image_snap, read_only=True) as s:
            return int(s.size())
    except NotFound as exc:
        ctx.fail(Reason.SNAPSHOT_NOT_FOUND, str(exc))


def check_snapshot(ctx: FlowContext, p: Plan, image: Any, copied_size: int | None) -> None:
    """The seed's 400/409 rules, on the real images: latest only, equal sizes; and the image must let
    Savepoint lock it (refused here, before the lock, rather than failing with a safety snapshot taken).
    ``copied_size``: the VolumeSnapshot's size for a copy (``copied_snapshot_size``)."""
    ref = image_ref(p.target)
    try:
        info = rbd.image_info(image)
    except NotFound as exc:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, str(exc))
    refusal = lock_feature_refusal(info, ref)
    if refusal:
        ctx.fail(Reason.UNSUPPORTED_IMAGE_FEATURES, refusal)
    if p.method == "Rollback":
        snap = info.snapshot(p.rbd_snapshot or "")
        if snap is None:
            ctx.fail(Reason.SNAPSHOT_NOT_FOUND, f"{ref} has no snapshot {p.rbd_snapshot!r}")
        latest = rbd.latest_snapshot(info, ignore_prefixes=("savepoint-",))
        if latest is not None and latest.name != snap.name:
            ctx.fail(Reason.SNAPSHOT_NOT_LATEST,
                     f"snapshot {snap.name} is not the most recent snapshot of {ref}: {latest.name} is newer")
        snap_size = snap.size
    else:
        assert copied_size is not None
        snap_size = copied_size
    if snap_size != info.size:
        ctx.fail(Reason.SIZE_MISMATCH,
                 f"the volume is {info.size} bytes but the snapshot is {snap_size} bytes (was the volume extended "
                 "after the snapshot?); only a volume of the snapshot's size can be reverted")


def lock_feature_refusal(info: rbd.ImageInfo, ref: rbd.ImageRef) -> str | None:
    """Why an image cannot be reverted for want of librbd's exclusive lock (None when it can)."""
    if info.has_feature("exclusive-lock"):
        return None
    return (f"{ref} lacks the RBD image feature exclusive-lock, which Savepoint holds so that nothing else writes "
            f"while it reverts; enable it while the volume is detached (`rbd feature enable {ref.spec} "
            "exclusive-lock`) and create the VolumeRevert again; nothing was changed")


def check_idle(ctx: FlowContext, p: Plan, image: Any) -> None:
    users: list[str] = []
    if p.volume is not None:
        users = references.volume_in_use(ctx.owner.namespace, p.volume, ctx.usage)
    users += [f"rbd watcher {w.address}" for w in rbd.watchers(image)]
    if users:
        ctx.wait(Reason.VOLUME_IN_USE, f"the volume is in use by {', '.join(users)}; stop the workload "
                 "(e.g. scale it to zero) and the revert goes on by itself", delay=5)




def resume(ctx: FlowContext) -> Plan:
    """After the lock the flow works from what it recorded: a newer snapshot, a deleted claim or a broken
    ceph-csi config must not end it without its undo (a broken config waits, then the undo runs)."""
    spec = VolumeRevertSpec.model_validate(ctx.spec)
    if not ctx.status.get("volumeImage"):
        return resolve(ctx, spec)  # locked by a version that did not record its plan: look it up as it did
    try:
        p = Plan.from_status(ctx, spec)
    except references.RefusedError as exc:  # the recorded volume is not the claim's: never touch it
        _release_claim(ctx, spec)
        ctx.abortable = False
        ctx.fail(exc.reason, exc.message)
    _relate(ctx, p)
    try:
        creds = cephconfig.credentials(p.target.cluster_id, ctx.settings)
    except references.RefusedError as exc:
        if ctx.deadline_passed():  # after the lock even a "final" config error may be fixed: wait until then
            # Without credentials nothing can be put back: keep the lock's error state for a person.
            _release_claim(ctx, spec, error=True)
            ctx.abortable = False
            ctx.fail(exc.reason, f"{exc.message}; the volume could not be reached to undo the revert, so "
                     f"pvc/{p.volume.pvc_name if p.volume else '?'} is left in state {ERROR_STATE!r}",
                     {"abort": None, "snapshotState": "Available"})
        ctx.wait(exc.reason, f"{exc.message} (the revert holds its lock and goes on when this is fixed)", delay=10)
    return dataclasses.replace(p, creds=creds)


def _release_claim(ctx: FlowContext, spec: VolumeRevertSpec, *, error: bool = False) -> None:
    kind, ref = spec.volume.chosen()
    if kind == "persistentVolumeClaim":
        locks.release(ctx.owner, ctx.owner.namespace, ref.name, error_state=ERROR_STATE if error else None)


def _relate(ctx: FlowContext, p: Plan) -> None:
    if p.volume is not None and p.volume.pvc_name:
        ctx.related = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": p.volume.pvc_name,
                        "namespace": ctx.owner.namespace, "uid": p.volume.pvc_uid or ""}]


# --- the steps ---------------------------------------------------------------------------

def take_locks(ctx: FlowContext, p: Plan) -> None:
    if p.volume is not None:
        ctx.lock_or_wait(ctx.owner.namespace, p.volume.pvc_name, LOCK_STATE, known=p.volume.claim)
    if p.volume_snapshot:
        locks.mark_snapshot(ctx.owner, ctx.owner.namespace, p.volume_snapshot, "restoring")
    source = _label(p.volume, p.target)
    recorded: dict[str, Any] = {"snapshotState": "Restoring", "snapshot": p.snapshot_label,
                                "method": p.method, "source": source, **p.recorded()}
    if p.safety_snapshot:
        recorded["safetySnapshot"] = safety_snapshot_name(ctx)  # named before it exists: a restart finds it
    ctx.set_phase("Reverting", Reason.IN_PROGRESS, f"reverting {source} to {p.snapshot_label}", recorded, defer=True)
    ctx.event("Normal", "RevertStarted", f"reverting {source} to {p.snapshot_label} ({p.method})", wait=False)
    crash_point("revert:locked")


def release_unrecorded(ctx: FlowContext) -> None:
    """Killed between taking the lock and recording it: give back what the spec names (only if ours)."""
    spec = VolumeRevertSpec.model_validate(ctx.spec)
    _release_claim(ctx, spec)
    snap_kind, snap_ref = spec.snapshot.chosen()
    if snap_kind == "volumeSnapshot":
        locks.unmark_snapshot(ctx.owner, ctx.owner.namespace, snap_ref.name)


def release_locks(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of Locked: the snapshot back to available, the PVC's lock released (``error`` after touched data)."""
    if p.volume_snapshot:
        locks.unmark_snapshot(ctx.owner, ctx.owner.namespace, p.volume_snapshot)
    if p.volume is not None:
        locks.release(ctx.owner, ctx.owner.namespace, p.volume.pvc_name,
                      error_state=ERROR_STATE if a.error_state else None)
    if a.error_state:
        a.note(f"PVC state is now {ERROR_STATE!r} (reset with: kubectl savepoint reset-state "
               f"pvc/{p.volume.pvc_name if p.volume else '?'})")
    a.extra.update({"snapshotState": "Available", "moverJob": None})


def wants_safety_snapshot(ctx: FlowContext, p: Plan) -> bool:
    return p.safety_snapshot


def take_safety_snapshot(ctx: FlowContext, p: Plan) -> None:
    assert p.creds is not None
    with cephpool.session(p.creds) as cluster, rbd.open_ref(cluster, image_ref(p.target)) as image:
        rbd.create_snapshot(image, safety_snapshot_name(ctx), exist_ok=True)
    crash_point("revert:safety-snapshot")


def drop_or_keep_safety(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of SafetySnapshot: kept (and named) when data may have been touched, else removed."""
    safety = ctx.status.get("safetySnapshot")
    if not safety:
        return
    if a.data_touched:
        a.note(f"safety snapshot {safety} is kept")
        return
    try:
        remove_safety_snapshot(p, safety)
    except StorageError:
        a.note(f"safety snapshot {safety} is kept (removing it failed); it holds exactly the volume's data")


def remove_safety_snapshot(p: Plan, name: str) -> None:
    """Idempotent; ``StorageError`` when Ceph refuses (e.g. someone cloned it): the callers keep it then."""
    assert p.creds is not None
    with cephpool.session(p.creds) as cluster, rbd.open_ref(cluster, image_ref(p.target)) as image:
        rbd.remove_snapshot(image, name)


def revert_data(ctx: FlowContext, p: Plan) -> None:
    assert p.creds is not None
    if p.method == "Rollback":
        rollback(ctx, p)
    else:
        copy(ctx, p)
    ctx.defer_status({"progress": {"percent": 100}})
    crash_point("revert:data-reverted")


def rollback(ctx: FlowContext, p: Plan) -> None:
    ref = image_ref(p.target)
    assert p.creds is not None
    try:
        with cephpool.session(p.creds) as cluster, ceph.open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, \
                rbd.exclusive_lock(ioctx, ref.image) as image:
            users = rbd.watchers(image, exclude_client=ceph.client_id(cluster))
            if users:  # a refusal found under the lock: nothing was written
                ctx.wait(Reason.VOLUME_IN_USE, "the volume gained RBD watchers before the rollback: "
                         + ", ".join(w.address for w in users))
            crash_point("revert:mid-rollback")
            rbd.rollback(image, p.rbd_snapshot or "")
    except Busy as exc:
        ctx.wait(Reason.VOLUME_BUSY, f"another client holds the RBD lock on {ref}: {exc}")
    except StorageError as exc:
        ctx.fail(exc.reason, f"rollback failed: {exc}")


def copy(ctx: FlowContext, p: Plan) -> None:
    assert p.snapshot_image is not None
    ref = image_ref(p.target)
    request = MoverRequest(action="rbd-copy", needs_ceph=True, params={
        "source": {"pool": p.snapshot_image.pool, "image": p.snapshot_image.image,
                   "namespace": p.snapshot_image.namespace, "snapshot": p.snapshot_image_snap},
        "destination": {"pool": ref.pool, "image": ref.image, "namespace": ref.namespace},
        "verify": True,
    })
    try:
        ctx.run_mover(COPY_STEP, request, ceph=p.creds, phase="Reverting",
                      message=f"copying {p.snapshot_label} onto the volume")
    except MoverFailed as failed:
        if failed.reason == Reason.VOLUME_IN_USE:  # the mover found a user before writing: wait, as before the lock
            ctx.finish_mover(COPY_STEP)
            ctx.wait(Reason.VOLUME_IN_USE, failed.message)
        raise
    ctx.finish_mover(COPY_STEP)


def put_back_data(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of DataReverted: stop the mover; when data may have been touched, roll back to the safety
    snapshot (kept) and leave the volume in state ``error`` (the seeds' rule) until a person resets it."""
    if p.method == "Copy":
        ctx.stop_mover(COPY_STEP)
    if not a.data_touched:
        a.note("nothing was written to the volume")
        return
    a.error_state = True
    safety = ctx.status.get("safetySnapshot")
    if not safety:
        a.note("the volume may be partly reverted (no safety snapshot was requested)")
        return
    try:
        assert p.creds is not None
        with cephpool.session(p.creds) as cluster, \
                ceph.open_ioctx(cluster, p.target.pool, p.target.rados_namespace) as ioctx, \
                rbd.exclusive_lock(ioctx, p.target.image) as image:
            rbd.rollback(image, safety)
        a.note(f"the volume was put back to its pre-revert data from safety snapshot {safety}")
    except StorageError as exc:
        a.note(f"putting back the pre-revert data failed ({exc})")


def finish(ctx: FlowContext, p: Plan) -> None:
    """The volume holds the snapshot's data: what is left is cleanup, which must never undo the revert.

    A safety snapshot that cannot be removed (someone protected or cloned it, Ceph refused) is kept and
    named, with a Warning Event, instead of failing: a failure here would end in the undo of the data step,
    putting the pre-revert data back over a revert that succeeded."""
    message = f"{ctx.status.get('source')} reverted to {p.snapshot_label} ({p.method})"
    safety = ctx.status.get("safetySnapshot")
    if safety:
        try:
            remove_safety_snapshot(p, safety)
        except StorageError as exc:
            kept = (f"safety snapshot {safety} of image {image_ref(p.target)} is kept: removing it failed ({exc}); "
                    f"it holds the pre-revert data, remove it with 'rbd snap rm' when it is not needed")
            ctx.event("Warning", "SafetySnapshotKept", kept, wait=False)
            message = f"{message}; {kept}"
    release_locks(ctx, p, Abort("", "", "", False))
    ctx.succeed("Succeeded", Reason.SUCCEEDED, message, {"snapshotState": "Available", "moverJob": None})


FLOW: Flow[Plan] = Flow("VolumeRevert", plan=plan, resume=resume, release=release_unrecorded, steps=(
    Step("Locked", take_locks, undo=release_locks),
    Step("SafetySnapshot", take_safety_snapshot, undo=drop_or_keep_safety, applies=wants_safety_snapshot),
    Step("DataReverted", revert_data, undo=put_back_data, touches_data=True),
    Step("Finished", finish, cleanup=True),
))


def reconcile(ctx: FlowContext) -> None:
    run_flow(FLOW, ctx)


def finalize(ctx: FlowContext) -> None:
    """Deleting a running revert: undo it (the volume ends with its pre-revert data, or marked ``error``)."""
    finalize_flow(FLOW, ctx, reason=Reason.ABORTED, message="deleted before the revert finished")
