"""VolumeRevert (seed 000, Cinder revert-to-snapshot): revert a volume in place
to its most recent snapshot, safely.

Steps, each recorded in ``status.step`` after it completes so a restarted
operator resumes after the last one (every step is idempotent):

  Locked      volume and snapshot resolved, latest-snapshot, size and idle rules
              hold; PVC lock taken (state ``reverting``), snapshot marked restoring
  SafetySnapshot  a snapshot of the current data exists (named in status first)
  DataReverted    rollback (fast path) or mover copy (generic path) finished
  (cleanup)   safety snapshot removed, snapshot and PVC states restored → Succeeded

A failure after ``Locked`` rolls the volume back to the safety snapshot when
the data step may have half-run, keeps that snapshot, and leaves the PVC in
state ``error`` (a documented reset clears it): never a half-written volume
reported as anything but an error, never data lost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from savepoint.engine import movers
from savepoint.kube import cephconfig, locks, references
from savepoint.engine.faults import crash_point
from savepoint.api import Reason, VolumeRevertSpec
from savepoint.engine.context import FlowContext, Stop, Wait
from savepoint.mover.request import MoverRequest
from savepoint.storage import ceph, rbd
from savepoint.storage.errors import Busy, NotFound, StorageError

SAFETY_PREFIX = "savepoint-safety-"
COPY_STEP = "copy"
MOVER_WATCH_SECONDS = 20  # watch a running copy this long per reconcile before handing the thread back
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
                   volume_snapshot=snap_ref.name if snap_kind == "volumeSnapshot" else None)


def safety_snapshot_name(ctx: FlowContext) -> str:
    return f"{SAFETY_PREFIX}{ctx.owner.uid[:13]}"


def image_ref(target: references.RbdTarget) -> rbd.ImageRef:
    return rbd.ImageRef(pool=target.pool, image=target.image, namespace=target.rados_namespace)


# --- validation --------------------------------------------------------------------------

def _refuse(ctx: FlowContext, exc: references.RefusedError) -> None:
    if exc.final:
        ctx.fail(exc.reason, exc.message)
    ctx.wait(exc.reason, exc.message, delay=5)


def plan(ctx: FlowContext, spec: VolumeRevertSpec) -> tuple[Plan, ceph.CephCredentials]:
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
                        rbd_snapshot=snap_ref), creds
        if volume is None:
            ctx.fail(Reason.INVALID_SPEC, "a VolumeSnapshot can only be reverted onto a persistentVolumeClaim")
        snap = references.resolve_volume_snapshot(ctx.owner.namespace, snap_ref.name)
    except references.RefusedError as exc:
        _refuse(ctx, exc)
        raise  # unreachable: _refuse raises
    assert volume is not None
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
    with ceph.connect(creds) as cluster:
        image = references.snapshot_image(snap, cluster.pool_reverse_lookup,
                                          cephconfig.rados_namespace(target.cluster_id, ctx.settings))
    return Plan(volume, target, "Copy", f"volumesnapshot/{snap.name}",
                snapshot_image=rbd.ImageRef(image.pool, image.image, image.namespace),
                snapshot_image_snap=image.snapshot, volume_snapshot=snap.name), creds


def _label(volume: references.ResolvedVolume | None, target: Any) -> str:
    return f"pvc/{volume.pvc_name}" if volume else str(target)


def check_snapshot(ctx: FlowContext, p: Plan, cluster: Any) -> None:
    """The seed's 400/409 rules, on the real images: latest only, equal sizes; and the image must let
    Savepoint lock it (refused here, before the lock, rather than failing with a safety snapshot taken)."""
    ref = image_ref(p.target)
    try:
        with rbd.open_ref(cluster, ref, read_only=True) as image:
            info = rbd.image_info(image)
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
            assert p.snapshot_image is not None
            with rbd.open_ref(cluster, p.snapshot_image, snapshot=p.snapshot_image_snap, read_only=True) as s:
                snap_size = s.size()
    except NotFound as exc:
        ctx.fail(Reason.SNAPSHOT_NOT_FOUND if p.method == "Copy" else Reason.UNSUPPORTED_VOLUME, str(exc))
        raise
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


def check_idle(ctx: FlowContext, p: Plan, cluster: Any) -> None:
    users: list[str] = []
    if p.volume is not None:
        users = references.volume_in_use(ctx.owner.namespace, p.volume)
    with rbd.open_ref(cluster, image_ref(p.target), read_only=True) as image:
        users += [f"rbd watcher {w.address}" for w in rbd.watchers(image)]
    if users:
        ctx.wait(Reason.VOLUME_IN_USE, f"the volume is in use by {', '.join(users)}; stop the workload "
                 "(e.g. scale it to zero) and the revert goes on by itself", delay=5)


# --- the flow ----------------------------------------------------------------------------

LOCKED_STEPS = ("Locked", "SafetySnapshot", "DataReverted")


def reconcile(ctx: FlowContext) -> None:
    spec = VolumeRevertSpec.model_validate(ctx.spec)
    step = ctx.status.get("step")
    if step not in LOCKED_STEPS:
        # Every refusal is decided here, before the first lock.
        p, creds = plan(ctx, spec)
        _relate(ctx, p)
        with ceph.connect(creds) as cluster:
            check_snapshot(ctx, p, cluster)
            check_idle(ctx, p, cluster)
            take_locks(ctx, p, spec)  # records step Locked with the plan
        crash_point("revert:locked")
        step = "Locked"
    else:
        # After the lock the flow works from what it recorded: a newer snapshot, a deleted claim or a
        # broken ceph-csi config must not end it without its undo.
        p, creds = resumed_plan(ctx, spec)
        _relate(ctx, p)
    # From here every failure goes through the undo; data may be touched once the data step began.
    ctx.undo = lambda reason, message: fail_after_lock(
        ctx, p, reason, message, data_touched=ctx.status.get("step") == "SafetySnapshot")
    with ceph.connect(creds) as cluster:
        if step == "Locked":
            if spec.safety_snapshot:
                take_safety_snapshot(ctx, p, cluster)
            ctx.patch_status({"step": "SafetySnapshot"})
            crash_point("revert:safety-snapshot")
            step = "SafetySnapshot"
        if step == "SafetySnapshot":
            revert_data(ctx, p, cluster, creds)
            ctx.patch_status({"step": "DataReverted", "progress": {"percent": 100}})
            crash_point("revert:data-reverted")
            step = "DataReverted"
        if step == "DataReverted":
            finish(ctx, p, cluster)


def _relate(ctx: FlowContext, p: Plan) -> None:
    if p.volume is not None and p.volume.pvc_name:
        ctx.related = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": p.volume.pvc_name,
                        "namespace": ctx.owner.namespace, "uid": p.volume.pvc_uid or ""}]


def resumed_plan(ctx: FlowContext, spec: VolumeRevertSpec) -> tuple[Plan, ceph.CephCredentials]:
    """The recorded plan and credentials; a refusal now goes through the undo (waiting ones until the deadline)."""
    if not ctx.status.get("volumeImage"):
        return plan(ctx, spec)  # locked by a version that did not record its plan: look it up as it did
    try:
        p = Plan.from_status(ctx, spec)
    except references.RefusedError as exc:
        _release_recorded(ctx, spec)
        ctx.fail(exc.reason, exc.message)
        raise
    try:
        return p, cephconfig.credentials(p.target.cluster_id, ctx.settings)
    except references.RefusedError as exc:
        if exc.final or ctx.deadline_passed():
            # Without credentials nothing can be put back: keep the lock's error state for a person.
            fail_after_lock(ctx, p, exc.reason, exc.message, data_touched=ctx.status.get("step") != "Locked",
                            reachable=False)
        ctx.wait(exc.reason, f"{exc.message} (the revert holds its lock and goes on when this is fixed)", delay=10)
        raise


def _release_recorded(ctx: FlowContext, spec: VolumeRevertSpec) -> None:
    kind, ref = spec.volume.chosen()
    if kind == "persistentVolumeClaim":
        locks.release(ctx.owner, ctx.owner.namespace, ref.name, error_state=ERROR_STATE)


def wait_or_undo(ctx: FlowContext, p: Plan, reason: str, message: str, *, delay: float = 5) -> None:
    """A wait after the lock: once the deadline passed, end through the undo (nothing was written yet)."""
    if ctx.deadline_passed():
        fail_after_lock(ctx, p, Reason.DEADLINE_EXCEEDED, f"gave up after {ctx.deadline_seconds}s: {message}",
                        data_touched=False)
    ctx.wait(reason, message, delay=delay)


def take_locks(ctx: FlowContext, p: Plan, spec: VolumeRevertSpec) -> None:
    if p.volume is not None:
        try:
            taken = locks.acquire(ctx.owner, ctx.owner.namespace, p.volume.pvc_name, LOCK_STATE)
        except locks.Busy as busy:
            ctx.wait(Reason.VOLUME_BUSY, str(busy), delay=5)
        except locks.InErrorState as err:
            ctx.wait(Reason.VOLUME_IN_ERROR_STATE, str(err), delay=10)
        else:
            if taken.took_over_from:
                ctx.event("Normal", "StaleLockRecovered", f"took over the lock left by {taken.took_over_from}")
    if p.volume_snapshot:
        locks.mark_snapshot(ctx.owner, ctx.owner.namespace, p.volume_snapshot, "restoring")
    source = _label(p.volume, p.target)
    recorded: dict[str, Any] = {"step": "Locked", "snapshotState": "Restoring", "snapshot": p.snapshot_label,
                                "method": p.method, "source": source, **p.recorded()}
    if spec.safety_snapshot:
        recorded["safetySnapshot"] = safety_snapshot_name(ctx)  # named before it exists: a restart finds it
    ctx.set_phase("Reverting", Reason.IN_PROGRESS, f"reverting {source} to {p.snapshot_label}", recorded)
    ctx.event("Normal", "RevertStarted", f"reverting {source} to {p.snapshot_label} ({p.method})")


def take_safety_snapshot(ctx: FlowContext, p: Plan, cluster: Any) -> None:
    name = safety_snapshot_name(ctx)
    if ctx.status.get("safetySnapshot") != name:  # a status from before the name was recorded with the lock
        ctx.patch_status({"safetySnapshot": name})
    with rbd.open_ref(cluster, image_ref(p.target)) as image:
        rbd.create_snapshot(image, name, exist_ok=True)


def revert_data(ctx: FlowContext, p: Plan, cluster: Any, creds: ceph.CephCredentials) -> None:
    ref = image_ref(p.target)
    if p.method == "Rollback":
        try:
            with ceph.open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, \
                    rbd.exclusive_lock(ioctx, ref.image) as image:
                users = rbd.watchers(image, exclude_client=ceph.client_id(cluster))
                if users:
                    wait_or_undo(ctx, p, Reason.VOLUME_IN_USE, "the volume gained RBD watchers before the rollback: "
                                 + ", ".join(w.address for w in users))
                crash_point("revert:mid-rollback")
                rbd.rollback(image, p.rbd_snapshot or "")
        except Busy as exc:
            wait_or_undo(ctx, p, Reason.VOLUME_BUSY, f"another client holds the RBD lock on {ref}: {exc}")
        except StorageError as exc:
            fail_after_lock(ctx, p, exc.reason, f"rollback failed: {exc}", data_touched=True)
        return
    assert p.snapshot_image is not None
    request = MoverRequest(action="rbd-copy", needs_ceph=True, params={
        "source": {"pool": p.snapshot_image.pool, "image": p.snapshot_image.image,
                   "namespace": p.snapshot_image.namespace, "snapshot": p.snapshot_image_snap},
        "destination": {"pool": ref.pool, "image": ref.image, "namespace": ref.namespace},
        "verify": True,
    })
    state = movers.ensure_mover(ctx.owner, COPY_STEP, request, ctx.settings,
                                deadline_seconds=max(ctx.seconds_left(), 60), ceph=creds, wait=MOVER_WATCH_SECONDS)
    if ctx.status.get("moverJob") != state.job_name:
        ctx.patch_status({"moverJob": state.job_name})
    if state.phase == "Waiting" and ctx.deadline_passed():  # time in the queue counts; nothing was written
        fail_after_lock(ctx, p, Reason.DEADLINE_EXCEEDED, f"gave up after {ctx.deadline_seconds}s: {state.message}",
                        data_touched=False)
    if state.phase in ("Waiting", "Running"):
        if state.phase == "Waiting" or state.reason:  # a slot, or a pod that cannot start yet: say why
            reason, message = state.reason if state.phase == "Running" else Reason.MOVER_LIMIT, state.message
        else:
            reason, message = Reason.IN_PROGRESS, f"copying {p.snapshot_label} onto the volume"
        if ctx.ready_reason() != reason or ctx.status.get("message") != message:
            ctx.set_phase("Reverting", reason, message)
        raise Wait(reason, message, delay=5 if state.phase == "Waiting" else 1)
    if state.phase == "Failed":
        reason = state.reason or Reason.MOVER_FAILED
        if reason == Reason.VOLUME_IN_USE:  # nothing was written: wait, as before the lock
            movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)
            ctx.patch_status({"moverJob": None})
            wait_or_undo(ctx, p, Reason.VOLUME_IN_USE, state.message)
        fail_after_lock(ctx, p, reason, state.message, data_touched=state.started)


def finish(ctx: FlowContext, p: Plan, cluster: Any) -> None:
    if p.method == "Copy":
        movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)
    safety = ctx.status.get("safetySnapshot")
    if safety:
        with rbd.open_ref(cluster, image_ref(p.target)) as image:
            rbd.remove_snapshot(image, safety)
    release_locks(ctx, p, error=False)
    ctx.succeed("Succeeded", Reason.SUCCEEDED,
                f"{ctx.status.get('source')} reverted to {p.snapshot_label} ({p.method})",
                {"snapshotState": "Available", "moverJob": None})


def release_locks(ctx: FlowContext, p: Plan, *, error: bool) -> None:
    if p.volume_snapshot:
        locks.unmark_snapshot(ctx.owner, ctx.owner.namespace, p.volume_snapshot)
    if p.volume is not None:
        locks.release(ctx.owner, ctx.owner.namespace, p.volume.pvc_name, error_state=ERROR_STATE if error else None)


def fail_after_lock(ctx: FlowContext, p: Plan, reason: str, message: str, *, data_touched: bool,
                    reachable: bool = True) -> None:
    """Fail once the volume is locked: put the old data back, keep the safety snapshot.  A failure before any
    data was written (a deadline while waiting, a refusal under the lock) releases the lock cleanly."""
    ctx.undo = None  # this is the undo: its own fail is final
    safety = ctx.status.get("safetySnapshot")
    restored = ""
    if not data_touched:
        if p.method == "Copy":
            movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)
        if safety and reachable:
            try:
                creds = cephconfig.credentials(p.target.cluster_id, ctx.settings)
                with ceph.connect(creds) as cluster, rbd.open_ref(cluster, image_ref(p.target)) as image:
                    rbd.remove_snapshot(image, safety)
            except (StorageError, references.RefusedError):
                pass  # kept: it holds exactly the volume's data, which was not touched
        release_locks(ctx, p, error=False)
        ctx.fail(reason, f"{message}; nothing was written to the volume",
                 {"snapshotState": "Available", "moverJob": None})
    if data_touched and safety and reachable:
        try:
            creds = cephconfig.credentials(p.target.cluster_id, ctx.settings)
            with ceph.connect(creds) as cluster, \
                    ceph.open_ioctx(cluster, p.target.pool, p.target.rados_namespace) as ioctx, \
                    rbd.exclusive_lock(ioctx, p.target.image) as image:
                rbd.rollback(image, safety)
            restored = f"; the volume was put back to its pre-revert data from safety snapshot {safety}, which is kept"
        except StorageError as exc:
            restored = f"; putting back the pre-revert data failed ({exc}): safety snapshot {safety} is kept"
    elif safety:
        restored = f"; safety snapshot {safety} is kept"
    elif data_touched:
        restored = "; the volume may be partly reverted (no safety snapshot was requested)"
    if p.method == "Copy":
        movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)
    release_locks(ctx, p, error=True)
    ctx.fail(reason, f"{message}{restored}; PVC state is now {ERROR_STATE!r} "
             f"(reset with: kubectl savepoint reset-state pvc/{p.volume.pvc_name if p.volume else '?'})",
             {"snapshotState": "Available", "moverJob": None})


# --- deletion ----------------------------------------------------------------------------

def finalize(ctx: FlowContext) -> None:
    """Deleting a running revert: let the data step finish, or put the old data back, then clean up."""
    step = ctx.status.get("step")
    spec = VolumeRevertSpec.model_validate(ctx.spec)
    if ctx.finished:
        return
    if step in (None, "Validated"):
        # Killed between taking the lock and recording it: give it back.
        kind, ref = spec.volume.chosen()
        if kind == "persistentVolumeClaim":
            locks.release(ctx.owner, ctx.owner.namespace, ref.name)
        return
    try:
        p, creds = resumed_plan(ctx, spec)
    except Stop:
        return  # ended through its undo already
    with ceph.connect(creds) as cluster:
        if step == "SafetySnapshot" and p.method == "Copy":
            state = movers.mover_state(ctx.owner, COPY_STEP, ctx.settings)
            if state is not None and not state.done:
                raise Wait(Reason.IN_PROGRESS, "letting the running copy finish before the revert is deleted", 3)
            if state is not None and state.phase == "Succeeded":
                step = "DataReverted"
        try:
            if step == "DataReverted":
                finish(ctx, p, cluster)
            abort(ctx, p, cluster, data_touched=step == "SafetySnapshot")
        except Stop:
            return


def abort(ctx: FlowContext, p: Plan, cluster: Any, *, data_touched: bool) -> None:
    """Undo a revert that was deleted midway: the volume ends as it was before."""
    ctx.undo = None
    safety = ctx.status.get("safetySnapshot")
    ref = image_ref(p.target)
    if p.method == "Copy":
        movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)
    if data_touched and safety:
        try:
            with ceph.open_ioctx(cluster, ref.pool, ref.namespace) as ioctx, \
                    rbd.exclusive_lock(ioctx, ref.image) as image:
                rbd.rollback(image, safety)
        except StorageError as exc:
            release_locks(ctx, p, error=True)
            ctx.fail("Aborted", f"deleted midway and putting back the pre-revert data failed ({exc}); "
                     f"safety snapshot {safety} is kept")
    if safety:
        with rbd.open_ref(cluster, ref) as image:
            rbd.remove_snapshot(image, safety)
    release_locks(ctx, p, error=False)
    ctx.fail("Aborted", "deleted before the revert finished; the volume holds its pre-revert data",
             {"snapshotState": "Available", "moverJob": None})
