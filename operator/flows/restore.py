"""ShareRestore (seed 003, Manila share backup restore): restore a ShareBackup into its source, another
claim, or a new claim.

Before any step, ``plan`` decides every refusal: the backup exists and is Available, its format is
known, the target resolves (a ``target.newClaim`` is created here -- its name recorded first, owned by
this ShareRestore until the restore succeeds -- and waited for until it is bound), is of the right kind
and size (in place: exactly the backup's size, else SizeMismatch, the seed's 400; another claim: at
least as large, else TargetTooSmall), is not the repository and not in an error state.  Then the
steps (``FLOW`` at the bottom; engine/steps.py runs them, records each, resumes after the last):

  Locked    target PVC locked in state ``backup-restoring``; the ShareBackup locked and in phase
            Restoring (phase Restoring, Event RestoreStarted)
  Restored  the mover Job checked the backup (backup.json, uid, digest, every entry present) and
            copied it into the target
  Finished  Job gone, locks released (the PVC back to its previous state, the backup Available), a
            created claim handed over → Succeeded

Any failure after the lock is undone in reverse (phase Aborting, finished after a restart): the
mover is stopped; when it may have written, the target is left in state ``backup-restoring-error``
(reset: ``kubectl savepoint reset-state pvc/NAME``), else "nothing was written" and a clean release;
the backup is given back Available.  A backup whose data is gone or damaged fails with
``BackupDataMissing`` before anything is written, and never reports success.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from savepoint.api import Reason, ShareBackupPhase, ShareRestorePhase, ShareRestoreSpec, ShareSource
from savepoint.api.quantity import to_bytes
from savepoint.engine import movers
from savepoint.engine.context import FlowContext, MoverFailed, Stop, Wait
from savepoint.engine.faults import crash_point
from savepoint.engine.steps import Abort, Flow, Step, abort, finalize_flow, run_flow
from savepoint.flows import backup as backups
from savepoint.flows import formats
from savepoint.flows.formats import ANN_BACKUP_UID, ANN_CREATED_BY, BackupFormat, RestorePlan
from savepoint.kube import k8s, locks, references

KIND = "ShareRestore"
RESTORE_STEP = "restore"
LOCKED, RESTORED, FINISHED = "Locked", "Restored", "Finished"  # the steps, as status.step records them
LEGACY_ABORTING = "Aborting"  # status.step of a restore aborted by a version before the step runner


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


# ---- the plan -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the steps work from.  ``restore`` is None when, after the lock, the backup or the target can no
    longer be read (``trouble`` says why): the step that needs it fails, and the undo runs from status."""

    spec: ShareRestoreSpec
    fmt: BackupFormat | None
    restore: RestorePlan | None
    trouble: references.RefusedError | None = None

    def target_label(self, ctx: FlowContext) -> str:
        if self.restore is not None:
            return self.restore.target.describe()
        claim = ctx.status.get("targetClaim")
        return f"pvc/{claim}" if claim else "the backup's source"


def read_backup(ctx: FlowContext, name: str) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom().get_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace,
                                                              backups.PLURAL, name))
    except Exception as exc:
        if k8s.is_not_found(exc):
            return None
        raise


def plan(ctx: FlowContext) -> Plan:
    """Every refusal, before the first lock: the backup, its format, the target (created when new), sizes."""
    spec = ShareRestoreSpec.model_validate(ctx.spec)
    backup = read_backup(ctx, spec.backup.name)
    if backup is None:
        ctx.fail(Reason.BACKUP_NOT_FOUND, f"ShareBackup {spec.backup.name} does not exist in namespace "
                 f"{ctx.owner.namespace}")
    related(ctx, None, spec.backup.name, backup)
    check_backup_usable(ctx, backup)
    fmt = backup_format(ctx, spec, backup)
    target, in_place = resolve_target(ctx, spec, backup, fmt)
    related(ctx, target, spec.backup.name, backup)
    p = Plan(spec, fmt, make_plan(ctx, spec, backup, target, in_place))
    assert p.restore is not None
    validate(ctx, fmt, p.restore)
    crash_point("srst:validated")
    return p


def check_backup_usable(ctx: FlowContext, backup: dict[str, Any]) -> None:
    """Available (or Restoring for this very restore); waits while it is being made or read, fails otherwise."""
    status = backup.get("status") or {}
    phase = status.get("phase")
    name = backup["metadata"]["name"]
    if backup["metadata"].get("deletionTimestamp") or phase in (ShareBackupPhase.DELETING,
                                                                 ShareBackupPhase.ERROR_DELETING):
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} is being deleted")
    if phase == ShareBackupPhase.FAILED:
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} failed ({status.get('message') or 'no message'}); "
                 "it holds nothing to restore")
    if phase == ShareBackupPhase.AVAILABLE:
        return
    holder = locks.holder(backup)
    if phase == ShareBackupPhase.RESTORING and holder is not None and holder.uid == ctx.owner.uid:
        return
    why = f"{holder} is restoring from it" if phase == ShareBackupPhase.RESTORING and holder \
        else f"it is {phase or 'Pending'}"
    ctx.wait(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {name} is not Available: {why}", delay=5)


def backup_format(ctx: FlowContext, spec: ShareRestoreSpec, backup: dict[str, Any]) -> BackupFormat:
    fmt = formats.by_api_format((backup.get("status") or {}).get("format"))
    if fmt is None:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"ShareBackup {spec.backup.name} has format "
                 f"{(backup.get('status') or {}).get('format')!r}, which this operator cannot restore")
    return fmt


def backup_repository(ctx: FlowContext, backup: dict[str, Any]) -> formats.Repository | None:
    """The repository the backup is in: as it recorded it, else its spec's, else the operator's default."""
    recorded = formats.recorded_repository(ctx, backup)
    if recorded is not None:
        return recorded
    spec_repo = (backup.get("spec") or {}).get("repository")
    if spec_repo:
        return formats.Repository(spec_repo)
    if ctx.settings.default_repository:
        return formats.Repository(dict(ctx.settings.default_repository))
    return None


def backup_uid_of(backup: dict[str, Any]) -> str:
    meta = backup.get("metadata") or {}
    return (meta.get("annotations") or {}).get(ANN_BACKUP_UID) or meta["uid"]


def resolve_target(ctx: FlowContext, spec: ShareRestoreSpec, backup: dict[str, Any],
                   fmt: BackupFormat) -> tuple[references.ResolvedVolume, bool]:
    """(target, in place) for the spec; creates and waits for a new claim. May wait or fail."""
    try:
        if spec.target is None:
            source = ShareSource.model_validate((backup.get("spec") or {}).get("source") or {})
            return references.resolve_source(ctx.owner.namespace, source, ctx.settings), True
        kind, ref = spec.target.chosen()
        if kind == "persistentVolumeClaim":
            return references.resolve_pvc(ctx.owner.namespace, ref.name, ctx.settings), False
        return new_claim(ctx, ref, backup, _size(backup), fmt), False
    except references.RefusedError as exc:
        ctx.refuse(exc)


def new_claim(ctx: FlowContext, claim: Any, backup: dict[str, Any], backup_size: int | None,
              fmt: BackupFormat) -> references.ResolvedVolume:
    """The claim of ``target.newClaim``: its name recorded, then created (owned by this ShareRestore until
    the restore succeeds, so a restore that ends before is garbage-collected with it), then bound."""
    size = to_bytes(claim.size) if claim.size else backup_size
    if size is None:
        ctx.fail(Reason.INVALID_SPEC, f"ShareBackup {backup['metadata']['name']} recorded no size: give "
                 "target.newClaim.size")
    if size > ctx.settings.max_volume_bytes:
        ctx.fail(Reason.INVALID_SPEC, f"target.newClaim.size ({size} bytes) is larger than the {ctx.settings.max_volume_bytes}"
                 " bytes Savepoint creates at most (operator setting maxVolumeBytes)")
    if backup_size is not None and size < backup_size:
        ctx.fail(Reason.TARGET_TOO_SMALL, f"target.newClaim.size {claim.size} ({size} bytes) is smaller than the "
                 f"backup's {backup_size} bytes")
    if ctx.status.get("targetClaim") != claim.name:
        ctx.patch_status({"targetClaim": claim.name, "createdClaim": True})  # named before it exists
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
    repository = backup_repository(ctx, backup)
    if repository is None:
        ctx.fail(Reason.BACKUP_DATA_MISSING, f"ShareBackup {backup['metadata']['name']} names no repository")
    return RestorePlan(namespace=ctx.owner.namespace, name=ctx.owner.name, backup_name=backup["metadata"]["name"],
                       backup_uid=backup_uid_of(backup), backup_path=status["repositoryPath"],
                       manifest_digest=status.get("manifestDigest"), backup_size=_size(backup),
                       repository=repository, target=target,
                       delete_extra_files=spec.delete_extra_files, in_place=in_place, backup_status=dict(status))


def validate(ctx: FlowContext, fmt: BackupFormat, rp: RestorePlan) -> None:
    try:
        formats.path_namespace(ctx, rp.backup_path)  # status is checked too: a backup reaches its own namespace
    except references.RefusedError as exc:
        ctx.fail(exc.reason, exc.message)
    refusal = size_refusal(rp.backup_size, rp.target.size_bytes, in_place=rp.in_place, target=rp.target.describe())
    if refusal:
        ctx.fail(*refusal)
    repository_target = formats.repository_target(ctx, rp.repository)
    if repository_target is not None and formats.overlap(repository_target, rp.target.target):
        ctx.fail(Reason.INVALID_SPEC, f"{rp.target.describe()} is (or contains, or lies inside) the backup "
                 f"repository {rp.repository.describe()}; restoring into it would overwrite the backups")
    fmt.check_restore_target(ctx, rp)
    if rp.target.pvc_name:
        pvc = k8s.core().read_namespaced_persistent_volume_claim(rp.target.pvc_name, ctx.owner.namespace)
        state = (pvc.metadata.annotations or {}).get(locks.STATE, "")
        if locks.is_error_state(state):
            ctx.wait(Reason.VOLUME_IN_ERROR_STATE,
                     f"PersistentVolumeClaim {rp.target.pvc_name} is in state {state} after an earlier failed "
                     f"action; check its data, then reset it with {locks.reset_hint(locks.PVC, rp.target.pvc_name)}",
                     delay=10)
    ctx.patch_status({"targetClaim": rp.target.pvc_name, "source": f"sharebackup/{rp.backup_name}"})


def resume(ctx: FlowContext) -> Plan:
    """After the lock the flow works from what it recorded: the target claim of ``status.targetClaim`` (or,
    in place, the backup's source), and the backup it locked -- neither checked again.  Never fails: when
    they can no longer be read, the plan says why and the step that needs them ends through the undo."""
    spec = ShareRestoreSpec.model_validate(ctx.spec)
    backup = read_backup(ctx, spec.backup.name)
    claim = ctx.status.get("targetClaim")
    related(ctx, None, spec.backup.name, backup)
    if claim:  # the Events of the undo go to the claim even when it can no longer be resolved
        ctx.related.insert(0, _claim_ref(ctx, claim, ""))
    if backup is None:
        return Plan(spec, None, None, references.RefusedError(
            Reason.BACKUP_NOT_FOUND, f"ShareBackup {spec.backup.name} was deleted during the restore", final=True))
    fmt = formats.by_api_format((backup.get("status") or {}).get("format"))
    status = backup.get("status") or {}
    repository = backup_repository(ctx, backup)
    if fmt is None or repository is None or not status.get("repositoryPath"):
        return Plan(spec, fmt, None, references.RefusedError(
            Reason.BACKUP_DATA_MISSING, f"ShareBackup {spec.backup.name} no longer records its format, repository "
            "and path", final=True))
    try:
        if claim:
            target, in_place = references.resolve_pvc(ctx.owner.namespace, claim, ctx.settings), spec.target is None
        else:
            source = ShareSource.model_validate((backup.get("spec") or {}).get("source") or {})
            target, in_place = references.resolve_source(ctx.owner.namespace, source, ctx.settings), True
    except references.RefusedError as exc:  # the target vanished or was unbound mid-restore
        return Plan(spec, fmt, None, references.RefusedError(
            exc.reason, f"the restore target is no longer usable: {exc.message}", final=exc.final))
    related(ctx, target, spec.backup.name, backup)
    return Plan(spec, fmt, RestorePlan(
        namespace=ctx.owner.namespace, name=ctx.owner.name, backup_name=spec.backup.name,
        backup_uid=backup_uid_of(backup), backup_path=status["repositoryPath"],
        manifest_digest=status.get("manifestDigest"), backup_size=_size(backup), repository=repository,
        target=target, delete_extra_files=spec.delete_extra_files, in_place=in_place, backup_status=dict(status)))


def _usable(ctx: FlowContext, p: Plan) -> RestorePlan:
    """The recorded plan, or (the backup or target gone since the lock) the end of the restore via its undo."""
    if p.restore is None:
        assert p.trouble is not None
        # Not ctx.wait's own deadline check: it would say nothing was written, and a mover may have run.
        written = bool(ctx.status.get("moverJob"))
        if p.trouble.final:
            ctx.fail(p.trouble.reason, p.trouble.message, nothing_written=not written)
        if ctx.deadline_passed():
            ctx.fail(p.trouble.reason, f"gave up after {ctx.deadline_seconds}s: {p.trouble.message}",
                     nothing_written=not written)
        ctx.wait(p.trouble.reason, f"{p.trouble.message} (the restore holds its locks and goes on when this is "
                 "fixed)", delay=10)
    return p.restore


def related(ctx: FlowContext, target: references.ResolvedVolume | None, backup_name: str,
            backup: dict[str, Any] | None) -> None:
    refs = []
    if target is not None and target.pvc_name:
        refs.append(_claim_ref(ctx, target.pvc_name, target.pvc_uid or ""))
    if backup is not None:
        refs.append({"apiVersion": k8s.API_VERSION, "kind": backups.KIND, "name": backup_name,
                     "namespace": ctx.owner.namespace, "uid": backup["metadata"].get("uid", "")})
    ctx.related = refs


def _claim_ref(ctx: FlowContext, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": name, "namespace": ctx.owner.namespace,
            "uid": uid}


# ---- the steps ---------------------------------------------------------------------------------


def take_locks(ctx: FlowContext, p: Plan) -> None:
    rp = _usable(ctx, p)
    if rp.target.pvc_name:
        try:
            ctx.lock_or_wait(ctx.owner.namespace, rp.target.pvc_name, formats.STATE_RESTORING)
        except references.RefusedError as exc:  # the claim went away since the plan
            ctx.refuse(exc)
    try:
        locks.acquire(ctx.owner, ctx.owner.namespace, rp.backup_name, formats.BACKUP_STATE_RESTORING,
                      resource=backups.BACKUP_RESOURCE)
    except locks.Busy as busy:  # another restore took the backup first: do not hold the target meanwhile
        release_target(ctx, rp.target.pvc_name, error=False)
        ctx.wait(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {rp.backup_name} is busy: {busy.holder} holds it",
                 delay=5)
    except references.RefusedError as exc:
        ctx.refuse(exc)
    # Under the backup's lock: it is still there and not being deleted (a deletion now waits for us).
    backup = read_backup(ctx, rp.backup_name)
    if backup is None or backup["metadata"].get("deletionTimestamp"):
        ctx.fail(Reason.BACKUP_NOT_AVAILABLE, f"ShareBackup {rp.backup_name} is being deleted")
    backups.mark_restoring(ctx.owner.namespace, rp.backup_name, ctx.owner.name)
    what = f"restoring ShareBackup {rp.backup_name} into {rp.target.describe()}"
    if rp.in_place:
        what += " (its source)"
    ctx.set_phase(ShareRestorePhase.RESTORING, Reason.IN_PROGRESS, what, {"targetClaim": rp.target.pvc_name},
                  defer=True)
    ctx.event("Normal", "RestoreStarted", what, wait=False)
    crash_point("srst:locked")


def release_locks(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Locked: the backup given back Available, the target's lock released (``backup-restoring-error``
    when the data step may have written), and what that means said in the final message."""
    spec = p.spec if p is not None else ShareRestoreSpec.model_validate(ctx.spec)
    target = ctx.status.get("targetClaim")
    release_backup(ctx, spec.backup.name, f"the restore by ShareRestore {ctx.owner.name} failed; the backup is "
                   "unchanged")
    release_target(ctx, target, error=a.error_state)
    if a.error_state and target:
        how = "was restored in full but the restore did not finish" if a.step == FINISHED else "may be partly restored"
        a.note(f"PersistentVolumeClaim {target} {how} and is in state {formats.STATE_RESTORING_ERROR} (reset after "
               f"checking it: kubectl savepoint reset-state pvc/{target})")
    elif target:
        a.note(f"nothing was written to {target}")
    else:
        a.note("nothing was written" if not a.error_state else "the target may be partly restored")
    if ctx.status.get("createdClaim") and target:
        a.note(f"claim {target} was created by this restore and goes when the ShareRestore is deleted")
    a.extra.update({"moverJob": None})


def restore_data(ctx: FlowContext, p: Plan) -> None:
    rp = _usable(ctx, p)
    assert p.fmt is not None
    request = p.fmt.restore_request(ctx, rp)
    creds = p.fmt.ceph_credentials(ctx, rp) if request.needs_ceph else None
    try:
        result = ctx.run_mover(RESTORE_STEP, request, ceph=creds, phase=ShareRestorePhase.RESTORING,
                               message=f"restoring {rp.backup_name} into {rp.target.describe()}")
    except MoverFailed as failed:
        data = failed.state.result.data if failed.state.result else {}
        if data.get("targetTouched", True) is False:  # the mover failed before its first write
            ctx.fail(failed.reason, failed.message, nothing_written=True)
        raise
    except Wait as wait:
        if wait.reason != Reason.MOVER_LIMIT:
            crash_point("srst:mid-restore")
        raise
    done = result.data
    ctx.patch_status({"progress": {"percent": 100, "bytesDone": int(done.get("bytes") or 0),
                                   "bytesTotal": int(done.get("bytes") or 0),
                                   **({"files": done["files"]} if done.get("files") else {})}})
    crash_point("srst:restored")  # the succeeded Job stays until Finished: a restart adopts its result


def stop_restore(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of Restored: stop the mover (nothing may still write), the format's leftovers removed; when it may
    have written, the target keeps an error state (the seeds' rule) until a person checks and resets it."""
    ctx.stop_mover(RESTORE_STEP)
    for fmt in [p.fmt] if p.fmt is not None else formats._formats():
        fmt.restore_cleanup(ctx, None, succeeded=False)
    if a.data_touched:
        a.error_state = True


def finish(ctx: FlowContext, p: Plan) -> None:
    target = ctx.status.get("targetClaim")
    label = p.target_label(ctx)
    ctx.finish_mover(RESTORE_STEP)
    if p.fmt is not None:
        p.fmt.restore_cleanup(ctx, p.restore, succeeded=True)
    release_target(ctx, target, error=False)
    release_backup(ctx, p.spec.backup.name, f"restored into {label} by ShareRestore {ctx.owner.name}")
    if ctx.status.get("createdClaim") and target:
        hand_over_claim(ctx, target)
    ctx.succeed(ShareRestorePhase.SUCCEEDED, Reason.SUCCEEDED,
                f"ShareBackup {p.spec.backup.name} restored into {label}", {"moverJob": None})


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
    if released or (locks.holder(backup) is None
                    and (backup.get("status") or {}).get("phase") == ShareBackupPhase.RESTORING):
        backups.mark_available(ctx.owner.namespace, name, message or "available")


FLOW: Flow[Plan] = Flow(KIND, plan=plan, resume=resume, steps=(
    Step(LOCKED, take_locks, undo=release_locks),
    Step(RESTORED, restore_data, undo=stop_restore, touches_data=True),
    Step(FINISHED, finish, cleanup=True),
))


def reconcile(ctx: FlowContext) -> None:
    _adopt_legacy_abort(ctx)
    run_flow(FLOW, ctx)


def finalize(ctx: FlowContext) -> None:
    """Deleting a restore midway: undo it (the mover stopped, the locks released, a half-written target kept in
    its error state); a claim it created and did not hand over goes with it (blocks: its PV and image too)."""
    _adopt_legacy_abort(ctx)
    message = "deleted before the restore finished"
    if not ctx.finished and ctx.phase != ShareRestorePhase.ABORTING and ctx.status.get("step") == LOCKED \
            and movers.mover_state(ctx.owner, RESTORE_STEP, ctx.settings) is None:
        # Deleted while the data step had no mover Job (waiting for a slot, or not begun): nothing was
        # written (finalize_flow would take the running data step as having maybe written).
        ctx.abortable = True
        try:
            abort(FLOW, ctx, resume(ctx), FLOW.steps[1], Reason.ABORTED, message, data_touched=False)  # Restored
        except Stop:
            pass
    else:
        finalize_flow(FLOW, ctx, reason=Reason.ABORTED, message=message)
    if ctx.phase != ShareRestorePhase.SUCCEEDED and ctx.status.get("createdClaim"):
        for fmt in formats._formats():
            fmt.restore_cleanup(ctx, None, succeeded=False)


def _adopt_legacy_abort(ctx: FlowContext) -> None:
    """A restore a version before the step runner was aborting (``status.step: Aborting``): finish it as an
    abort of the data step (touched when its mover had been started, as that version decided)."""
    if ctx.status.get("step") != LEGACY_ABORTING or ctx.phase == ShareRestorePhase.ABORTING or ctx.finished:
        return  # (that version left ``step: Aborting`` on the restores it ended Failed too)
    a = Abort(ctx.ready_reason() or Reason.MOVER_FAILED, ctx.status.get("message") or "failed", RESTORED,
              bool(ctx.status.get("moverJob")))
    ctx.set_phase(ShareRestorePhase.ABORTING, a.reason, a.message, {"abort": a.recorded(), "step": LOCKED})
