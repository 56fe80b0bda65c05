"""ShareRestore (seed 003): restore a ShareBackup into its source, another claim, or a new claim.

Steps, each recorded in ``status.step`` after it completes (idempotent, so an
operator killed anywhere resumes after the last one):

  ClaimRequested  (target.newClaim) the claim's name recorded, then the claim
                  created -- owned by this ShareRestore until the restore
                  succeeds -- and waited for until it is bound
  Validated   backup Available, target resolved and of the right kind and size
              (in place: exactly the backup's size, else SizeMismatch, the
              seed's 400; another claim: at least as large, else TargetTooSmall)
  Locked      target PVC locked in state ``backup-restoring``; the ShareBackup
              locked and in phase Restoring (phase Restoring, Event RestoreStarted)
  Restored    the mover Job checked the backup (backup.json, uid, digest, every
              entry present) and copied it into the target
  (finish)    Job removed, locks released (the PVC back to its previous state,
              the backup Available), a created claim handed over → Succeeded
  Aborting    a failure after the lock is being cleaned up → Failed; the target
              is left in state ``backup-restoring-error`` when it may have been
              half written (reset: ``kubectl savepoint reset-state pvc/NAME``)

A backup whose data is gone or damaged fails with ``BackupDataMissing`` before
anything is written, and never reports success.
"""

from __future__ import annotations

from typing import Any

from savepoint import metrics
from savepoint.engine import movers
from savepoint.kube import k8s, locks, references
from savepoint.api import Reason, ShareRestoreSpec, ShareSource
from savepoint.api.quantity import to_bytes
from savepoint.engine.faults import crash_point
from savepoint.engine.context import FlowContext, Wait
from savepoint.flows import backup as backups
from savepoint.flows import formats
from savepoint.flows.formats import (
    ANN_BACKUP_UID,
    ANN_CREATED_BY,
    BackupFormat,
    RestorePlan,
)

KIND = "ShareRestore"
RESTORE_STEP = "restore"
MOVER_WATCH_SECONDS = 10
PENDING, RESTORING, SUCCEEDED = "Pending", "Restoring", "Succeeded"
CLAIM_REQUESTED, VALIDATED, LOCKED, RESTORED, ABORTING = (
    "ClaimRequested", "Validated", "Locked", "Restored", "Aborting")


# ---- size rules (pure) ------------------------------------------------------------------------


def size_refusal(backup_size: int | None, target_size: int | None, *, in_place: bool, target: str) -> tuple[str, str] | None:
    """(reason, message) when the target's size does not fit the backup, else None."""
    if backup_size is None:
        return None  # a raw share recorded no capacity: nothing to compare
    if target_size is None:
        return Reason.SIZE_MISMATCH, f"{target} reports no capacity; cannot compare it with the backup's {backup_size} bytes"
    if in_place and target_size != backup_size:
        return (Reason.SIZE_MISMATCH,
                (f"{target} is {target_size} bytes but the backup was taken at {backup_size} bytes (was the share "
                 "resized since?); a backup restores into its source only at the same size -- restore into another "
                 "claim (target.persistentVolumeClaim or target.newClaim) instead"))
    if not in_place and target_size < backup_size:
        return (Reason.TARGET_TOO_SMALL,
                f"{target} is {target_size} bytes, smaller than the backup's {backup_size} bytes")
    return None


# ---- reading -------------------------------------------------------------------------------------


def read_backup(ctx: FlowContext, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom().get_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace,
                                                              backups.PLURAL, name))
    except Exception as exc:
        if k8s.is_not_found(exc):
            return None
        raise


def _refuse(ctx: FlowContext, exc: references.RefusedError) -> None:
    if exc.final:
        ctx.fail(exc.reason, exc.message)
    ctx.wait(exc.reason, exc.message, delay=5)


def check_backup_usable(ctx: FlowContext, backup: dict[str, Any]) -> None:
    """Available (or Restoring for this very restore); waits while it is being made or read, fails otherwise."""
    status = backup.get("status") or {}
    phase = status.get("phase")
    name = backup["metadata"]["name"]
    if backup["metadata"].get("deletionTimestamp") or phase in (backups.DELETING, backups.ERROR_DELETING):
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} is being deleted")
    if phase == backups.FAILED:
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} failed ({status.get('message') or 'no message'}); "
                 "it holds nothing to restore")
    if phase == backups.AVAILABLE:
        return
    holder = locks.holder(backup)
    if phase == backups.RESTORING and holder is not None and holder.uid == ctx.owner.uid:
        return
    why = f"{holder} is restoring from it" if phase == backups.RESTORING and holder else f"it is {phase or 'Pending'}"
    ctx.wait(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} is not Available: {why}", delay=5)


def backup_repository(ctx: FlowContext, backup: dict[str, Any]) -> formats.Repository:
    recorded = formats.recorded_repository(ctx, backup)
    if recorded is not None:
        return recorded
    spec_repo = (backup.get("spec") or {}).get("repository")
    if spec_repo:
        return formats.Repository(spec_repo)
    if ctx.settings.default_repository:
        return formats.Repository(dict(ctx.settings.default_repository))
    ctx.fail(Reason.BACKUP_DATA_MISSING, f"ShareBackup {backup['metadata']['name']} names no repository")
    raise AssertionError("unreachable")


def backup_uid_of(backup: dict[str, Any]) -> str:
    meta = backup.get("metadata") or {}
    return (meta.get("annotations") or {}).get(ANN_BACKUP_UID) or meta["uid"]


# ---- the target ----------------------------------------------------------------------------------


def resolve_target(ctx: FlowContext, spec: ShareRestoreSpec, backup: dict[str, Any],
                   fmt: BackupFormat) -> tuple[references.ResolvedVolume, bool]:
    """(target, in place) for the spec; creates and waits for a new claim. May wait or fail."""
    backup_size = _size(backup)
    try:
        if spec.target is None:
            source = ShareSource.model_validate((backup.get("spec") or {}).get("source") or {})
            return references.resolve_source(ctx.owner.namespace, source, ctx.settings), True
        kind, ref = spec.target.chosen()
        if kind == "persistentVolumeClaim":
            return references.resolve_pvc(ctx.owner.namespace, ref.name, ctx.settings), False
        return new_claim(ctx, ref, backup, backup_size, fmt), False
    except references.RefusedError as exc:
        _refuse(ctx, exc)
        raise


def locked_target(ctx: FlowContext, spec: ShareRestoreSpec,
                  backup: dict[str, Any]) -> tuple[references.ResolvedVolume, bool]:
    """The target as decided at validation (``status.targetClaim``): no claim is created or waited for now."""
    claim = ctx.status.get("targetClaim")
    if claim:
        return references.resolve_pvc(ctx.owner.namespace, claim, ctx.settings), spec.target is None
    source = ShareSource.model_validate((backup.get("spec") or {}).get("source") or {})
    return references.resolve_source(ctx.owner.namespace, source, ctx.settings), True


def new_claim(ctx: FlowContext, claim: Any, backup: dict[str, Any], backup_size: int | None,
              fmt: BackupFormat) -> references.ResolvedVolume:
    size = to_bytes(claim.size) if claim.size else backup_size
    if size is None:
        ctx.fail(Reason.INVALID_SPEC, f"ShareBackup {backup['metadata']['name']} recorded no size: give "
                 "target.newClaim.size")
        raise AssertionError("unreachable")
    if size > ctx.settings.max_volume_bytes:
        ctx.fail(Reason.INVALID_SPEC, f"target.newClaim.size ({size} bytes) is larger than the {ctx.settings.max_volume_bytes}"
                 " bytes Savepoint creates at most (operator setting maxVolumeBytes)")
    if backup_size is not None and size < backup_size:
        ctx.fail(Reason.TARGET_TOO_SMALL, f"target.newClaim.size {claim.size} ({size} bytes) is smaller than the "
                 f"backup's {backup_size} bytes")
    if ctx.status.get("targetClaim") != claim.name:
        ctx.patch_status({"targetClaim": claim.name, "createdClaim": True, "step": CLAIM_REQUESTED})
    try:
        existing = k8s.core().read_namespaced_persistent_volume_claim(claim.name, ctx.owner.namespace)
    except Exception as exc:
        if not k8s.is_not_found(exc):
            raise
        existing = None
    if existing is not None and (existing.metadata.annotations or {}).get(ANN_CREATED_BY) != formats.created_by(ctx):
        ctx.patch_status({"createdClaim": False})
        ctx.fail(Reason.INVALID_SPEC, f"PersistentVolumeClaim {claim.name} exists already; target.newClaim creates a "
                 "new claim (use target.persistentVolumeClaim to restore into an existing one)")
    if existing is None:
        fmt.create_claim(ctx, claim, size, backup)
        crash_point("srst:claim-created")
    try:
        return references.resolve_pvc(ctx.owner.namespace, claim.name, ctx.settings)
    except references.RefusedError as exc:
        if exc.reason == Reason.PVC_NOT_BOUND:
            sc = f"StorageClass {claim.storage_class_name}" if claim.storage_class_name else "the default StorageClass"
            ctx.wait(Reason.PVC_NOT_BOUND, f"waiting for the new claim {claim.name} to be bound ({sc})", delay=3)
        raise


def _size(backup: dict[str, Any]) -> int | None:
    size = (backup.get("status") or {}).get("size")
    return to_bytes(size) if size else None


def make_plan(ctx: FlowContext, spec: ShareRestoreSpec, backup: dict[str, Any], target: references.ResolvedVolume,
              in_place: bool) -> RestorePlan:
    status = backup.get("status") or {}
    if not status.get("repositoryPath"):
        ctx.fail(Reason.BACKUP_DATA_MISSING, f"ShareBackup {backup['metadata']['name']} records no repositoryPath")
    return RestorePlan(namespace=ctx.owner.namespace, name=ctx.owner.name, backup_name=backup["metadata"]["name"],
                       backup_uid=backup_uid_of(backup), backup_path=status["repositoryPath"],
                       manifest_digest=status.get("manifestDigest"), backup_size=_size(backup),
                       repository=backup_repository(ctx, backup), target=target,
                       delete_extra_files=spec.delete_extra_files, in_place=in_place, backup_status=dict(status))


def related(ctx: FlowContext, target: references.ResolvedVolume | None, backup_name: str,
            backup: dict[str, Any] | None) -> None:
    refs = []
    if target is not None and target.pvc_name:
        refs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": target.pvc_name,
                     "namespace": ctx.owner.namespace, "uid": target.pvc_uid or ""})
    if backup is not None:
        refs.append({"apiVersion": k8s.API_VERSION, "kind": backups.KIND, "name": backup_name,
                     "namespace": ctx.owner.namespace, "uid": backup["metadata"].get("uid", "")})
    ctx.related = refs


# ---- the flow ------------------------------------------------------------------------------------


def reconcile(ctx: FlowContext) -> None:
    spec = ShareRestoreSpec.model_validate(ctx.spec)
    step = ctx.status.get("step")
    if step == ABORTING:
        finish_abort(ctx, spec)
        return
    backup = read_backup(ctx, spec.backup.name)
    if backup is None:
        if step in (LOCKED, RESTORED):
            abort(ctx, spec, Reason.BACKUP_NOT_FOUND, f"ShareBackup {spec.backup.name} was deleted during the restore")
        ctx.fail(Reason.BACKUP_NOT_FOUND, f"ShareBackup {spec.backup.name} does not exist in namespace "
                 f"{ctx.owner.namespace}")
        raise AssertionError("unreachable")
    related(ctx, None, spec.backup.name, backup)
    if step in (None, CLAIM_REQUESTED, VALIDATED):
        check_backup_usable(ctx, backup)
    fmt = formats.by_api_format((backup.get("status") or {}).get("format"))
    if fmt is None:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"ShareBackup {spec.backup.name} has format "
                 f"{(backup.get('status') or {}).get('format')!r}, which this operator cannot restore")
        raise AssertionError("unreachable")
    if step in (LOCKED, RESTORED):
        try:
            target, in_place = locked_target(ctx, spec, backup)
        except references.RefusedError as exc:  # the target vanished or was unbound mid-restore
            abort(ctx, spec, exc.reason, f"the restore target is no longer usable: {exc.message}")
            raise
    else:
        target, in_place = resolve_target(ctx, spec, backup, fmt)
    related(ctx, target, spec.backup.name, backup)
    plan = make_plan(ctx, spec, backup, target, in_place)
    if step in (None, CLAIM_REQUESTED):
        validate(ctx, fmt, plan)
        crash_point("srst:validated")
        step = VALIDATED
    if step == VALIDATED:
        take_locks(ctx, plan)
        crash_point("srst:locked")
        step = LOCKED
    if step == LOCKED:
        ctx.undo = lambda reason, message: abort(ctx, spec, reason, message,
                                                 touched=bool(ctx.status.get("moverJob")))
        restore_data(ctx, spec, fmt, plan)
        crash_point("srst:restored")
        step = RESTORED
    if step == RESTORED:
        finish(ctx, fmt, plan)


def validate(ctx: FlowContext, fmt: BackupFormat, plan: RestorePlan) -> None:
    try:
        formats.path_namespace(ctx, plan.backup_path)  # status is checked too: a backup reaches its own namespace
    except references.RefusedError as exc:
        ctx.fail(exc.reason, exc.message)
    refusal = size_refusal(plan.backup_size, plan.target.size_bytes, in_place=plan.in_place,
                           target=plan.target.describe())
    if refusal:
        ctx.fail(*refusal)
    repository_target = formats.repository_target(ctx, plan.repository)
    if repository_target is not None and formats.overlap(repository_target, plan.target.target):
        ctx.fail(Reason.INVALID_SPEC, f"{plan.target.describe()} is (or contains, or lies inside) the backup "
                 f"repository {plan.repository.describe()}; restoring into it would overwrite the backups")
    fmt.check_restore_target(ctx, plan)
    if plan.target.pvc_name:
        pvc = k8s.core().read_namespaced_persistent_volume_claim(plan.target.pvc_name, ctx.owner.namespace)
        state = (pvc.metadata.annotations or {}).get(locks.STATE, "")
        if locks.is_error_state(state):
            ctx.wait(Reason.VOLUME_IN_ERROR_STATE,
                     f"PersistentVolumeClaim {plan.target.pvc_name} is in state {state} after an earlier failed "
                     f"action; check its data, then reset it with {locks.reset_hint(locks.PVC, plan.target.pvc_name)}",
                     delay=10)
    ctx.patch_status({"step": VALIDATED, "targetClaim": plan.target.pvc_name,
                      "source": f"sharebackup/{plan.backup_name}"})


def take_locks(ctx: FlowContext, plan: RestorePlan) -> None:
    if plan.target.pvc_name:
        try:
            taken = locks.acquire(ctx.owner, ctx.owner.namespace, plan.target.pvc_name, formats.STATE_RESTORING)
        except locks.Busy as busy:
            ctx.wait(Reason.VOLUME_BUSY, str(busy), delay=5)
            raise
        except locks.InErrorState as err:
            ctx.wait(Reason.VOLUME_IN_ERROR_STATE, str(err), delay=10)
            raise
        except references.RefusedError as exc:
            _refuse(ctx, exc)
            raise
        if taken.took_over_from:
            ctx.event("Normal", "StaleLockRecovered", f"took over the lock left by {taken.took_over_from}")
    try:
        locks.acquire(ctx.owner, ctx.owner.namespace, plan.backup_name, formats.BACKUP_STATE_RESTORING,
                      resource=backups.BACKUP_RESOURCE)
    except locks.Busy as busy:
        release_target(ctx, plan.target.pvc_name, error=False)
        ctx.wait(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {plan.backup_name} is busy: {busy.holder} holds it",
                 delay=5)
        raise
    except references.RefusedError as exc:
        release_target(ctx, plan.target.pvc_name, error=False)
        _refuse(ctx, exc)
        raise
    # Under the backup's lock: it is still there and not being deleted (a deletion now waits for us).
    backup = read_backup(ctx, plan.backup_name)
    if backup is None or backup["metadata"].get("deletionTimestamp"):
        release_backup(ctx, plan.backup_name, "")
        release_target(ctx, plan.target.pvc_name, error=False)
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {plan.backup_name} is being deleted")
    backups.mark_restoring(ctx.owner.namespace, plan.backup_name, ctx.owner.name)
    what = f"restoring ShareBackup {plan.backup_name} into {plan.target.describe()}"
    if plan.in_place:
        what += " (its source)"
    ctx.set_phase(RESTORING, Reason.IN_PROGRESS, what, {"step": LOCKED, "targetClaim": plan.target.pvc_name})
    ctx.event("Normal", "RestoreStarted", what)


def restore_data(ctx: FlowContext, spec: ShareRestoreSpec, fmt: BackupFormat, plan: RestorePlan) -> None:
    request = fmt.restore_request(ctx, plan)
    creds = fmt.ceph_credentials(ctx, plan) if request.needs_ceph else None
    try:
        state = movers.ensure_mover(ctx.owner, RESTORE_STEP, request, ctx.settings,
                                    deadline_seconds=max(ctx.seconds_left(), 60), ceph=creds,
                                    wait=MOVER_WATCH_SECONDS)
    except movers.MoverRefused as exc:
        abort(ctx, spec, exc.reason, exc.message, touched=False)
        raise
    if ctx.status.get("moverJob") != state.job_name:
        ctx.patch_status({"moverJob": state.job_name})
    if state.phase == "Waiting":
        if ctx.deadline_passed():  # time in the queue counts: end through the undo, nothing was written
            abort(ctx, spec, Reason.DEADLINE_EXCEEDED, f"gave up after {ctx.deadline_seconds}s: {state.message}",
                  touched=False)
        if ctx.ready_reason() != Reason.MOVER_LIMIT or ctx.status.get("message") != state.message:
            ctx.set_phase(RESTORING, Reason.MOVER_LIMIT, state.message)
        raise Wait(Reason.MOVER_LIMIT, state.message, delay=5)
    if state.phase == "Running":
        reason = state.reason or Reason.IN_PROGRESS
        message = state.message or f"restoring {plan.backup_name} into {plan.target.describe()}"
        if ctx.ready_reason() != reason:
            ctx.set_phase(RESTORING, reason, message)
        crash_point("srst:mid-restore")
        raise Wait(Reason.IN_PROGRESS, f"restoring {plan.backup_name} into {plan.target.describe()}", delay=3)
    if state.phase == "Failed":
        data = state.result.data if state.result else {}
        abort(ctx, spec, state.reason or Reason.MOVER_FAILED, state.message,
              touched=state.started and data.get("targetTouched", True) is not False)
    assert state.result is not None
    result = state.result.data
    ctx.patch_status({"step": RESTORED, "progress": {"percent": 100, "bytesDone": int(result.get("bytes") or 0),
                                                     "bytesTotal": int(result.get("bytes") or 0),
                                                     **({"files": result["files"]} if result.get("files") else {})}})
    metrics.BYTES_MOVED.labels(KIND).inc(int(result.get("bytesWritten") or result.get("bytes") or 0))


def finish(ctx: FlowContext, fmt: BackupFormat, plan: RestorePlan) -> None:
    movers.cleanup_mover(ctx.owner, RESTORE_STEP, ctx.settings)
    fmt.restore_cleanup(ctx, plan, succeeded=True)
    release_target(ctx, plan.target.pvc_name, error=False)
    release_backup(ctx, plan.backup_name, f"restored into {plan.target.describe()} by ShareRestore {ctx.owner.name}")
    if ctx.status.get("createdClaim") and plan.target.pvc_name:
        hand_over_claim(ctx, plan.target.pvc_name)
    ctx.succeed(SUCCEEDED, Reason.SUCCEEDED,
                f"ShareBackup {plan.backup_name} restored into {plan.target.describe()}", {"moverJob": None})


def hand_over_claim(ctx: FlowContext, claim: str) -> None:
    """The restore succeeded: the claim it created is the user's now (no owner, survives the ShareRestore)."""
    try:
        pvc = k8s.core().read_namespaced_persistent_volume_claim(claim, ctx.owner.namespace)
    except Exception as exc:
        if k8s.is_not_found(exc):
            return
        raise
    owners = [o for o in (pvc.metadata.owner_references or []) if o.uid != ctx.owner.uid]
    if len(owners) != len(pvc.metadata.owner_references or []):
        k8s.core().patch_namespaced_persistent_volume_claim(
            claim, ctx.owner.namespace,
            {"metadata": {"ownerReferences": [k8s.api_client().sanitize_for_serialization(o) for o in owners] or None,
                          "annotations": {"savepoint.dev/restored-from": f"sharebackup/{ctx.spec['backup']['name']}"}}},
            _content_type="application/merge-patch+json")


def release_target(ctx: FlowContext, pvc: str | None, *, error: bool) -> None:
    if pvc:
        locks.release(ctx.owner, ctx.owner.namespace, pvc, error_state=formats.STATE_RESTORING_ERROR if error else None)


def release_backup(ctx: FlowContext, name: str, message: str) -> None:
    """Give the backup back: lock released and phase Available (only if this restore held it)."""
    try:
        released = locks.release(ctx.owner, ctx.owner.namespace, name, resource=backups.BACKUP_RESOURCE)
    except references.RefusedError:
        return
    backup = read_backup(ctx, name)
    if backup is None:
        return
    if released or (locks.holder(backup) is None and (backup.get("status") or {}).get("phase") == backups.RESTORING):
        backups.mark_available(ctx.owner.namespace, name, message or "available")


# ---- failing after the lock ----------------------------------------------------------------------


def abort(ctx: FlowContext, spec: ShareRestoreSpec, reason: str, message: str, *, touched: bool = True) -> None:
    """Fail after the lock: stop the copy, release everything, leave the error state if data was written."""
    ctx.undo = None  # this is the undo: its own fail is final
    ctx.set_phase(ctx.phase if ctx.phase in (PENDING, RESTORING) else RESTORING, reason, message,
                  {"step": ABORTING, **({} if touched else {"moverJob": None})})
    finish_abort(ctx, spec)


def finish_abort(ctx: FlowContext, spec: ShareRestoreSpec) -> None:
    reason = backups._ready_reason(ctx) or Reason.MOVER_FAILED
    message = ctx.status.get("message") or "failed"
    touched = bool(ctx.status.get("moverJob"))
    if not ctx.related:  # resumed here after a restart or a wait: the Events still go to the claim and backup
        target_claim = ctx.status.get("targetClaim")
        ctx.related = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": target_claim,
                        "namespace": ctx.owner.namespace, "uid": ""}] if target_claim else []
        backup = read_backup(ctx, spec.backup.name)
        if backup is not None:
            ctx.related.append({"apiVersion": k8s.API_VERSION, "kind": backups.KIND, "name": spec.backup.name,
                                "namespace": ctx.owner.namespace, "uid": backup["metadata"].get("uid", "")})
    backups.stop_movers(ctx, RESTORE_STEP)
    fmt = formats.by_api_format(_backup_format(ctx, spec))
    if fmt is not None:
        fmt.restore_cleanup(ctx, None, succeeded=False)
    target = ctx.status.get("targetClaim")
    release_target(ctx, target, error=touched)
    release_backup(ctx, spec.backup.name, f"the restore by ShareRestore {ctx.owner.name} failed; the backup is "
                   "unchanged")
    if touched and target:
        message += (f"; PersistentVolumeClaim {target} may be partly restored and is in state "
                    f"{formats.STATE_RESTORING_ERROR} (reset after checking it: kubectl savepoint reset-state "
                    f"pvc/{target})")
    elif target:
        message += f"; nothing was written to {target}"
    if ctx.status.get("createdClaim") and target:
        message += f" (claim {target} was created by this restore and goes when the ShareRestore is deleted)"
    ctx.fail(reason, message, {"moverJob": None})


def _backup_format(ctx: FlowContext, spec: ShareRestoreSpec) -> str | None:
    backup = read_backup(ctx, spec.backup.name)
    return ((backup or {}).get("status") or {}).get("format") if backup else "Tree"


# ---- deletion ------------------------------------------------------------------------------------


def finalize(ctx: FlowContext) -> None:
    """Deleting a restore midway: stop the copy, release the locks; a half-written target keeps the error state."""
    step = ctx.status.get("step")
    if ctx.finished or step in (None, CLAIM_REQUESTED, VALIDATED):
        if ctx.phase != SUCCEEDED and ctx.status.get("createdClaim"):
            for fmt in formats._formats():  # blocks: the PV and RBD image it made for the new claim go too
                fmt.restore_cleanup(ctx, None, succeeded=False)
        return
    spec = ShareRestoreSpec.model_validate(ctx.spec)
    touched = step in (LOCKED, ABORTING) and bool(ctx.status.get("moverJob"))
    backups.stop_movers(ctx, RESTORE_STEP)
    fmt = formats.by_api_format(_backup_format(ctx, spec))
    if fmt is not None:
        fmt.restore_cleanup(ctx, None, succeeded=step == RESTORED)
    release_target(ctx, ctx.status.get("targetClaim"), error=touched and step != RESTORED)
    release_backup(ctx, spec.backup.name, f"ShareRestore {ctx.owner.name} was deleted")
