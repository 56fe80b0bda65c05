"""ShareBackup (seed 003, Manila share backup; seed 001 for block volumes): back up a share or volume
into a backup repository, incrementally, and delete the data with the object.

Steps, each recorded in ``status.step`` after it completes; every step is
idempotent, so an operator killed at any instruction resumes after the last one:

  Validated   source resolved and usable, format chosen, quotas checked; size,
              sourceUID, repositoryPath and parentBackup recorded; the repository
              recorded on the object (annotation ``savepoint.dev/repository``)
  Locked      PVC lock taken, PVC state ``backup-creating`` (phase Creating,
              Event BackupStarted); other Savepoint actions on the share wait
  Prepared    the format's preparation done (blocks: temporary snapshot)
  Copied      the mover Job copied the data and wrote ``backup.json`` last
  (finish)    Job removed, temporary objects removed, PVC back to its previous
              state → phase Available (Event BackupSucceeded)
  Aborting    a failure after the lock is being cleaned up (the reason is in the
              Ready condition): the copy is stopped, a half-written backup
              directory removed, the lock released; a restart finishes it → Failed

Deleting the object (finalizer): a running copy is stopped, temporary objects
and the lock go, then a mover Job removes the backup's directory (phase
Deleting; ErrorDeleting with the reason while that fails, retried, the object
stays). Annotation ``savepoint.dev/deletion-policy: Retain`` keeps the data.
A backup a ShareRestore is reading (phase Restoring) is deleted when the
restore ends.

Quotas (seed: ``quota_backups``, ``quota_backup_gigabytes``): the number of
ShareBackups is a plain ResourceQuota (``count/sharebackups.savepoint.dev``),
enforced by the API server at creation. Backup gigabytes are enforced here,
from the namespace annotation ``savepoint.dev/backup-gigabytes`` (GiB, or a
quantity such as ``500Gi``): the sizes (source capacity, ``status.size``) of
the namespace's backups that are not Failed, plus this one, must fit, else
Failed with reason ``QuotaExceeded`` and usage and limit in the message.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from savepoint import metrics
from savepoint.engine import movers
from savepoint.kube import k8s, locks, references
from savepoint.api import Reason, ShareBackupSpec
from savepoint.api.quantity import to_bytes, to_quantity
from savepoint.engine.faults import crash_point
from savepoint.engine.context import FlowContext, Stop, Wait
from savepoint.flows import formats
from savepoint.flows.formats import (
    ANN_BACKUP_UID,
    ANN_DELETION_POLICY,
    ANN_IMPORTED,
    BackupFormat,
    BackupPlan,
    DeletePlan,
    Repository,
    Source,
)
from savepoint.storage import repository as repo

KIND = "ShareBackup"
PLURAL = "sharebackups"
BACKUP_STEP = "backup"
DISCARD_STEP = "discard"
DELETE_STEP = "delete"
MOVER_WATCH_SECONDS = 10  # watch a running mover this long per reconcile before handing the thread back

PENDING, CREATING, AVAILABLE, RESTORING = "Pending", "Creating", "Available", "Restoring"
DELETING, ERROR_DELETING, FAILED = "Deleting", "ErrorDeleting", "Failed"
VALIDATED, LOCKED, PREPARED, COPIED, ABORTING, IMPORTED = (
    "Validated", "Locked", "Prepared", "Copied", "Aborting", "Imported")

NS_GIGABYTES = "savepoint.dev/backup-gigabytes"
GiB = 1 << 30

# The ShareBackup itself as a lockable object: a restore marks the backup it reads.
BACKUP_RESOURCE = locks.Resource(KIND, k8s.GROUP, k8s.VERSION, PLURAL, "sharebackup", Reason.BACKUP_NOT_FOUND)


# ---- quota arithmetic (pure) ----------------------------------------------------------------


def gigabytes_limit(value: str | None) -> int | None:
    """The namespace's backup-gigabytes limit in bytes: ``"10"`` is 10 GiB, ``"500Gi"``/``"1T"`` quantities.

    None when unset; ``ValueError`` when it is not a number or quantity.
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return to_bytes(text)
    if number < 0:
        raise ValueError(f"negative limit {text!r}")
    return int(number * GiB)


def counts_toward_quota(obj: dict[str, Any]) -> bool:
    """Backups that hold (or will hold) data: everything but Failed ones."""
    return (obj.get("status") or {}).get("phase") != FAILED


def usage_bytes(backups: list[dict[str, Any]], exclude_uid: str) -> int:
    """Sum of ``status.size`` of the backups that count (this one excluded)."""
    total = 0
    for obj in backups:
        if obj.get("metadata", {}).get("uid") == exclude_uid or not counts_toward_quota(obj):
            continue
        size = (obj.get("status") or {}).get("size")
        if size:
            total += to_bytes(size)
    return total


def gib(n: int) -> str:
    return f"{n / GiB:.2f}".rstrip("0").rstrip(".") + " GiB"


def quota_refusal(limit: int | None, usage: int, requested: int) -> str | None:
    """The QuotaExceeded message, or None when ``requested`` fits."""
    if limit is None or usage + requested <= limit:
        return None
    return (f"backup gigabytes quota exceeded: this backup needs {gib(requested)}, the namespace's backups already "
            f"use {gib(usage)} of its {gib(limit)} ({NS_GIGABYTES}); delete backups or raise the limit")


def choose_parent(candidates: list[dict[str, Any]], *, source_uid: str, repository_key: str, api_format: str,
                  exclude: str) -> dict[str, Any] | None:
    """The newest completed backup of the same source, in the same repository and format: the next one's base."""
    best: tuple[str, str] | None = None
    chosen = None
    for obj in candidates:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        if meta.get("name") == exclude or meta.get("deletionTimestamp"):
            continue
        if status.get("phase") not in (AVAILABLE, RESTORING) or status.get("sourceUID") != source_uid:
            continue
        if status.get("format") != api_format or not status.get("repositoryPath"):
            continue
        if repository_key_of(obj) != repository_key:
            continue
        key = (str(status.get("completionTime") or ""), str(meta.get("name")))
        if best is None or key > best:
            best, chosen = key, obj
    return chosen


def repository_key_of(obj: dict[str, Any]) -> str | None:
    recorded = (obj.get("status") or {}).get("repository")
    if isinstance(recorded, dict) and recorded:
        return Repository(dict(recorded)).key()
    spec_repo = (obj.get("spec") or {}).get("repository")
    return Repository(spec_repo).key() if spec_repo else None


# ---- reading ---------------------------------------------------------------------------------


def read_object(ctx: FlowContext) -> dict[str, Any] | None:
    try:
        return dict(k8s.custom().get_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace, PLURAL,
                                                              ctx.owner.name))
    except Exception as exc:
        if k8s.is_not_found(exc):
            return None
        raise


def annotations_of(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def backup_uid(ctx: FlowContext, obj: dict[str, Any] | None) -> str:
    """The uid backup.json names: an imported object's original one, else the object's own."""
    return annotations_of(obj).get(ANN_BACKUP_UID) or ctx.owner.uid


def _refuse(ctx: FlowContext, exc: references.RefusedError) -> None:
    if exc.final:
        ctx.fail(exc.reason, exc.message)
    ctx.wait(exc.reason, exc.message, delay=5)


def resolve_repository(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec) -> Repository:
    """The repository recorded on the object, else the spec's (checked), else the operator's default; recorded."""
    recorded = formats.recorded_repository(ctx, obj)
    if recorded is not None:
        if not ctx.status.get("repository"):
            record_repository(ctx, recorded)
        return recorded
    if spec.repository is not None:
        kind, ref = spec.repository.chosen()
        try:
            if kind == "persistentVolumeClaim":
                resolved = references.resolve_pvc(ctx.owner.namespace, ref.name, ctx.settings)
                if resolved.is_block:
                    ctx.fail(Reason.UNSUPPORTED_VOLUME, f"repository claim {ref.name} is a Block volume; a repository "
                             "needs a filesystem")
                chosen = Repository({"persistentVolumeClaim": {"name": ref.name}})
            else:
                target = references.resolve_raw(ctx.owner.namespace, ref, ctx.settings)
                assert isinstance(target, references.NfsTarget)
                chosen = Repository({"nfs": {"server": target.server, "path": target.path}})
        except references.RefusedError as exc:
            _refuse(ctx, exc)
            raise
    elif ctx.settings.default_repository:
        chosen = Repository(dict(ctx.settings.default_repository))
        if not (chosen.claim_name or chosen.nfs):
            ctx.fail(Reason.INVALID_SPEC, "the operator's defaultRepository setting is neither nfs nor a claim")
    else:
        ctx.fail(Reason.INVALID_SPEC, "no repository: set spec.repository, or ask an administrator to set the "
                 "operator's defaultRepository (SAVEPOINT_DEFAULT_REPOSITORY)")
        raise AssertionError("unreachable")
    record_repository(ctx, chosen)
    return chosen


def record_repository(ctx: FlowContext, chosen: Repository) -> None:
    """In status: only the operator writes it, so later steps can trust it."""
    ctx.patch_status({"repository": chosen.ref})


def resolve_source(ctx: FlowContext, spec: ShareBackupSpec) -> Source:
    """Resolve the source now; ``RefusedError`` when it is not (or no longer) usable."""
    resolved = references.resolve_source(ctx.owner.namespace, spec.source, ctx.settings)
    kind, ref = spec.source.chosen()
    return Source(reference={kind: ref.model_dump(mode="json", by_alias=True, exclude_none=True)},
                  uid=ctx.status.get("sourceUID") or formats.source_id(resolved),
                  description=resolved.describe(), size_bytes=resolved.size_bytes, resolved=resolved)


def source_from_status(ctx: FlowContext, spec: ShareBackupSpec) -> Source:
    """The source as recorded, without looking it up (cleanup when it is gone)."""
    kind, ref = spec.source.chosen()
    size = ctx.status.get("size")
    return Source(reference={kind: ref.model_dump(mode="json", by_alias=True, exclude_none=True)},
                  uid=ctx.status.get("sourceUID") or "", description=ctx.status.get("source") or kind,
                  size_bytes=to_bytes(size) if size else None, resolved=None)


def make_plan(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec, source: Source,
              repository: Repository) -> BackupPlan:
    parent = ctx.status.get("parentBackup")
    meta = (obj or {}).get("metadata") or {}
    return BackupPlan(
        namespace=ctx.owner.namespace, name=ctx.owner.name, backup_uid=backup_uid(ctx, obj), source=source,
        repository=repository,
        rel_path=ctx.status.get("repositoryPath") or str(repo.backup_rel_path(ctx.owner.namespace, source.uid,
                                                                              ctx.owner.name)),
        incremental=spec.incremental, verify=spec.verify, force=spec.force,
        parent_name=parent,
        parent_path=str(repo.backup_rel_path(ctx.owner.namespace, source.uid, parent)) if parent else None,
        created=ctx.status.get("startTime"), labels=dict(meta.get("labels") or {}))


def pvc_related(ctx: FlowContext, source: Source) -> None:
    if source.pvc_name:
        uid = source.resolved.pvc_uid if source.resolved else ""
        ctx.related = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": source.pvc_name,
                        "namespace": ctx.owner.namespace, "uid": uid or ""}]


# ---- the flow --------------------------------------------------------------------------------


def reconcile(ctx: FlowContext) -> None:
    obj = read_object(ctx)
    if obj is None:
        return
    if ANN_IMPORTED in annotations_of(obj):
        adopt_import(ctx, obj)
        return
    if ctx.phase == RESTORING:
        settle_restoring(ctx, obj)
        return
    spec = ShareBackupSpec.model_validate(ctx.spec)
    step = ctx.status.get("step")
    if step == ABORTING:
        finish_abort(ctx, obj, spec)
        return
    try:
        source = resolve_source(ctx, spec)
    except references.RefusedError as exc:
        if step in (LOCKED, PREPARED):
            abort(ctx, obj, spec, exc.reason, f"the source became unusable during the backup: {exc.message}")
        if step == COPIED:
            source = source_from_status(ctx, spec)  # the data is safe in the repository: finish regardless
        else:
            _refuse(ctx, exc)
            raise
    pvc_related(ctx, source)
    fmt = formats.by_api_format(ctx.status.get("format")) if ctx.status.get("format") else None
    if fmt is None:
        try:
            fmt = formats.for_target(source.resolved.target) if source.resolved else None
        except references.RefusedError as exc:
            _refuse(ctx, exc)
            raise
    if fmt is None:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"backup format {ctx.status.get('format')!r} is not available")
        raise AssertionError("unreachable")
    repository = resolve_repository(ctx, obj, spec)
    plan = make_plan(ctx, obj, spec, source, repository)
    if step is None:
        validate(ctx, obj, spec, fmt, plan)
        crash_point("sbak:validated")
        plan = make_plan(ctx, obj, spec, source, repository)
        step = VALIDATED
    if step == VALIDATED:
        take_lock(ctx, plan)
        crash_point("sbak:locked")
        step = LOCKED
    if step in (LOCKED, PREPARED):
        ctx.undo = lambda reason, message: abort(ctx, obj, spec, reason, message)
    if step == LOCKED:
        fmt.prepare(ctx, plan)
        ctx.patch_status({"step": PREPARED})
        crash_point("sbak:prepared")
        step = PREPARED
    if step == PREPARED:
        copy(ctx, obj, spec, fmt, plan)
        crash_point("sbak:copied")
        step = COPIED
    if step == COPIED:
        finish(ctx, fmt, plan)


def validate(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec, fmt: BackupFormat,
             plan: BackupPlan) -> None:
    """The seed's 400/404/413 checks, then the facts of this backup recorded (one atomic quota decision)."""
    if not plan.source.uid:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"{plan.source.description} has no uid to file its backups under")
    fmt.check_source(ctx, plan)
    repository_target = formats.repository_target(ctx, plan.repository)
    if (plan.source.resolved is not None and repository_target is not None
            and formats.overlap(repository_target, plan.source.resolved.target)):
        ctx.fail(Reason.INVALID_SPEC, f"{plan.source.description} is (or contains, or lies inside) the repository "
                 f"{plan.repository.describe()}; a share cannot be backed up into itself")
    if plan.source.pvc_name:
        pvc = k8s.core().read_namespaced_persistent_volume_claim(plan.source.pvc_name, ctx.owner.namespace)
        state = (pvc.metadata.annotations or {}).get(locks.STATE, "")
        if locks.is_error_state(state):
            ctx.wait(Reason.VOLUME_IN_ERROR_STATE,
                     f"PersistentVolumeClaim {plan.source.pvc_name} is in state {state} after an earlier failed action; "
                     f"check its data, then reset it with {locks.reset_hint(locks.PVC, plan.source.pvc_name)}",
                     delay=10)
    with _quota_lock(ctx.owner.namespace):
        siblings = k8s.custom().list_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace,
                                                              PLURAL)["items"]
        requested = plan.source.size_bytes or 0
        namespace = k8s.core().read_namespace(ctx.owner.namespace)
        raw_limit = (namespace.metadata.annotations or {}).get(NS_GIGABYTES)
        try:
            limit = gigabytes_limit(raw_limit)
        except ValueError:
            ctx.fail(Reason.INVALID_SPEC, f"namespace annotation {NS_GIGABYTES}={raw_limit!r} is not a number of GiB "
                     "or a quantity; an administrator must fix it")
            raise AssertionError("unreachable")
        refusal = quota_refusal(limit, usage_bytes(siblings, ctx.owner.uid), requested)
        if refusal:
            ctx.fail(Reason.QUOTA_EXCEEDED, refusal)
        parent = None
        if spec.incremental:
            parent = choose_parent(siblings, source_uid=plan.source.uid, repository_key=plan.repository.key(),
                                   api_format=fmt.api_format, exclude=ctx.owner.name)
        ctx.patch_status({
            "step": VALIDATED,
            "format": fmt.api_format,
            "size": to_quantity(plan.source.size_bytes) if plan.source.size_bytes else None,
            "sourceUID": plan.source.uid,
            "source": plan.source.description,
            "repositoryPath": plan.rel_path,
            "parentBackup": parent["metadata"]["name"] if parent else None,
        })


_quota_guard = threading.Lock()
_quota_locks: dict[str, threading.Lock] = {}


def _quota_lock(namespace: str) -> threading.Lock:
    """One decision at a time per namespace: check the quota and record this backup's size atomically."""
    with _quota_guard:
        return _quota_locks.setdefault(namespace, threading.Lock())


def take_lock(ctx: FlowContext, plan: BackupPlan) -> None:
    if plan.source.pvc_name:
        try:
            taken = locks.acquire(ctx.owner, ctx.owner.namespace, plan.source.pvc_name, formats.STATE_CREATING)
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
    what = f"backing up {plan.source.description} to {plan.repository.describe()} as {plan.rel_path}"
    if plan.parent_name:
        what += f" (incremental to {plan.parent_name})"
    ctx.set_phase(CREATING, Reason.IN_PROGRESS, what, {"step": LOCKED})
    ctx.event("Normal", "BackupStarted", what)


def _mover(ctx: FlowContext, step: str, request: Any, fmt: BackupFormat, plan: Any, *,
           deadline: int | None = None) -> movers.MoverState:
    creds = fmt.ceph_credentials(ctx, plan) if request.needs_ceph else None
    state = movers.ensure_mover(ctx.owner, step, request, ctx.settings,
                                deadline_seconds=deadline or max(ctx.seconds_left(), 60), ceph=creds,
                                wait=MOVER_WATCH_SECONDS)
    if ctx.status.get("moverJob") != state.job_name:
        ctx.patch_status({"moverJob": state.job_name})
    if state.phase == "Waiting":
        if deadline is None and ctx.deadline_passed():  # cleanup steps (their own deadline) wait on
            raise DeadlinePassed(f"gave up after {ctx.deadline_seconds}s: {state.message}")
        if ctx.ready_reason() != Reason.MOVER_LIMIT or ctx.status.get("message") != state.message:
            ctx.set_phase(ctx.phase or PENDING, Reason.MOVER_LIMIT, state.message)
        raise Wait(Reason.MOVER_LIMIT, state.message, delay=5)
    return state


class DeadlinePassed(Exception):
    """The deadline passed while a mover waited for its slot: the step ends through its failure path."""


def copy(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec, fmt: BackupFormat,
         plan: BackupPlan) -> None:
    try:
        state = _mover(ctx, BACKUP_STEP, fmt.backup_request(ctx, plan), fmt, plan)
    except movers.MoverRefused as exc:
        abort(ctx, obj, spec, exc.reason, exc.message)
        raise
    except DeadlinePassed as exc:
        abort(ctx, obj, spec, Reason.DEADLINE_EXCEEDED, str(exc))
        raise
    if state.phase == "Running":
        crash_point("sbak:mid-copy")
        ctx.show_mover_start(state.reason, state.message)
        raise Wait(Reason.IN_PROGRESS, f"copying {plan.source.description} into {plan.rel_path}", delay=3)
    if state.phase == "Failed":
        abort(ctx, obj, spec, state.reason or Reason.MOVER_FAILED, state.message)
    assert state.result is not None
    result = dict(state.result.data)
    fields = fmt.backup_status(ctx, plan, result)
    if not plan.source.size_bytes and result.get("bytesTotal") is not None:
        fields["size"] = to_quantity(max(1, int(result["bytesTotal"])))  # a raw share: its data is its size
    fields.update({"step": COPIED, "progress": {"percent": 100, "bytesDone": int(result.get("bytes") or 0),
                                                "bytesTotal": int(result.get("bytes") or 0),
                                                **({"files": result["files"]} if result.get("files") else {})}})
    ctx.patch_status({k: v for k, v in fields.items() if v is not None})
    metrics.BYTES_MOVED.labels(KIND).inc(int(result.get("bytesRead") or 0))
    if result.get("fullReadReason"):
        ctx.event("Normal", Reason.FULL_READ, str(result["fullReadReason"]))
    if result.get("metadataDropped"):
        ctx.event("Warning", "MetadataDropped", "the repository's filesystem cannot keep "
                  + ", ".join(result["metadataDropped"]) + "; they are not in the backup")


def finish(ctx: FlowContext, fmt: BackupFormat, plan: BackupPlan) -> None:
    movers.cleanup_mover(ctx.owner, BACKUP_STEP, ctx.settings)
    fmt.cleanup(ctx, plan, succeeded=True)
    if plan.source.pvc_name:
        locks.release(ctx.owner, ctx.owner.namespace, plan.source.pvc_name)
    status = ctx.status
    stored = int(status.get("bytesStored") or 0)
    parts = [f"backup of {plan.source.description} is available at {plan.rel_path}"]
    if status.get("fileCount") is not None:
        parts.append(f"{status['fileCount']} files")
    if status.get("chunkCount") is not None:
        parts.append(f"{status['chunkCount']} chunks")
    parts.append(f"{stored} new bytes stored" + (f" (incremental to {status['parentBackup']})"
                                                  if status.get("parentBackup") else " (full)"))
    ctx.succeed(AVAILABLE, Reason.AVAILABLE, ", ".join(parts), {"moverJob": None})


# ---- failing after the lock ----------------------------------------------------------------------


def abort(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec, reason: str, message: str) -> None:
    """Fail, after stopping the copy and removing a half-written backup; survives a restart (step Aborting)."""
    ctx.undo = None  # this is the undo: its own fail is final
    ctx.set_phase(ctx.phase if ctx.phase in (PENDING, CREATING) else CREATING, reason, message, {"step": ABORTING})
    finish_abort(ctx, obj, spec)


def finish_abort(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec) -> None:
    reason = _ready_reason(ctx) or Reason.MOVER_FAILED
    message = ctx.status.get("message") or "failed"
    try:
        source = resolve_source(ctx, spec)
    except references.RefusedError:
        source = source_from_status(ctx, spec)
    pvc_related(ctx, source)
    fmt = formats.by_api_format(ctx.status.get("format"))
    repository = formats.recorded_repository(ctx, obj)
    plan = make_plan(ctx, obj, spec, source, repository) if repository else None
    stop_movers(ctx, BACKUP_STEP)
    tail = ""
    keep_path = False
    if ctx.status.get("moverJob") and repository is not None and ctx.status.get("repositoryPath"):
        tail, keep_path = discard(ctx, obj, repository)
    if fmt is not None:
        fmt.cleanup(ctx, plan if plan and source.resolved else None, succeeded=False)
    if source.pvc_name:
        locks.release(ctx.owner, ctx.owner.namespace, source.pvc_name)
    # repositoryPath stays only while something may be left there (the finalizer removes it then).
    ctx.fail(reason, message + tail, {"moverJob": None, **({} if keep_path else {"repositoryPath": None})})


def discard(ctx: FlowContext, obj: dict[str, Any] | None, repository: Repository) -> tuple[str, bool]:
    """Remove what a failed copy left in the repository (never another backup's data).

    Returns the message tail and whether data may be left (the removal failed)."""
    fmt = formats.by_api_format(ctx.status.get("format"))
    dplan = delete_plan(ctx, obj, repository)
    request = fmt.delete_request(ctx, dplan) if fmt else _files_delete_request(ctx, dplan)
    state = _mover(ctx, DISCARD_STEP, request, fmt or _files_format(), dplan, deadline=_delete_deadline(ctx))
    if state.phase == "Running":
        raise Wait(Reason.IN_PROGRESS, "removing the partial backup from the repository", delay=3)
    movers.cleanup_mover(ctx.owner, DISCARD_STEP, ctx.settings)
    if state.phase == "Failed":
        return (f"; removing the partial backup {dplan.rel_path} failed ({state.message}): it stays until the "
                "ShareBackup is deleted"), True
    data = state.result.data if state.result else {}
    if data.get("removed"):
        metrics.LEFTOVERS.labels(KIND, "partial-backup").inc()
        return f"; the partial backup {dplan.rel_path} was removed from the repository", False
    return "", False


def _files_format() -> BackupFormat:
    from savepoint.flows.files_format import FilesFormat

    return FilesFormat()


def _files_delete_request(ctx: FlowContext, plan: DeletePlan) -> Any:
    from savepoint.flows.files_format import delete_request

    return delete_request(ctx, plan)


def _ready_reason(ctx: FlowContext) -> str | None:
    for c in ctx.status.get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("reason")
    return None


def _delete_deadline(ctx: FlowContext) -> int:
    return max(ctx.settings.default_deadline_seconds, 600)


def stop_movers(ctx: FlowContext, *steps: str) -> None:
    """Remove the steps' Jobs and wait (``Wait``) until their pods are gone: nothing may still write."""
    for step in steps:
        movers.cleanup_mover(ctx.owner, step, ctx.settings)
    for step in steps:
        if not movers.mover_stopped(ctx.owner, step, ctx.settings):
            raise Wait(Reason.IN_PROGRESS, f"waiting for mover {movers.job_name(ctx.owner, step)} to stop", delay=2)


# ---- a restore reads this backup -------------------------------------------------------------------


def settle_restoring(ctx: FlowContext, obj: dict[str, Any]) -> None:
    """Phase Restoring after a restart: keep it while the restore lives, else back to Available."""
    holder = locks.holder(obj)
    if holder is not None and locks.holder_alive(ctx.owner.namespace, holder):
        return
    locks.reset_state(ctx.owner.namespace, ctx.owner.name, resource=BACKUP_RESOURCE, force=True)
    ctx.patch_status({"phase": AVAILABLE, "message": "the restore that read this backup is gone; available again"})


def mark_restoring(namespace: str, name: str, restore: str) -> None:
    k8s.custom().patch_namespaced_custom_object_status(
        k8s.GROUP, k8s.VERSION, namespace, PLURAL, name,
        {"status": {"phase": RESTORING, "message": f"ShareRestore {restore} is restoring from this backup"}})


def mark_available(namespace: str, name: str, message: str) -> None:
    try:
        k8s.custom().patch_namespaced_custom_object_status(
            k8s.GROUP, k8s.VERSION, namespace, PLURAL, name, {"status": {"phase": AVAILABLE, "message": message}})
    except Exception as exc:
        if not k8s.is_not_found(exc):
            raise


# ---- imported backups -------------------------------------------------------------------------------


def adopt_import(ctx: FlowContext, obj: dict[str, Any]) -> None:
    """An object ``kubectl savepoint backups import`` made from a backup.json: check it and make it Available."""
    if ctx.phase == AVAILABLE or ctx.phase == RESTORING:
        if ctx.phase == RESTORING:
            settle_restoring(ctx, obj)
        return
    try:
        info = json.loads(annotations_of(obj)[ANN_IMPORTED])
        namespace, source_uid, _name = repo.parse_rel_path(info["path"])
    except (ValueError, KeyError, TypeError, repo.RepositoryError) as exc:
        ctx.fail(Reason.INVALID_SPEC, f"annotation {ANN_IMPORTED} is not a repository listing entry: {exc}")
        raise AssertionError("unreachable")
    if namespace != ctx.owner.namespace and not ctx.settings.raw_references_allowed(ctx.owner.namespace):
        ctx.fail(Reason.REFERENCE_NOT_ALLOWED,
                 f"{info['path']} belongs to namespace {namespace}; backups of another namespace can be imported only "
                 "where raw references are allowed (operator setting rawReferenceNamespaces)")
    spec = ShareBackupSpec.model_validate(ctx.spec)
    repository = resolve_repository(ctx, obj, spec)
    fmt = "Chunks" if info.get("format") == repo.FORMAT_BLOCKS else "Tree"
    size = info.get("sizeBytes") or info.get("bytesTotal")
    completed = str(info.get("completed") or "")
    status: dict[str, Any] = {
        "step": IMPORTED, "format": fmt, "sourceUID": source_uid, "repositoryPath": info["path"],
        "size": to_quantity(int(size)) if size else None, "parentBackup": info.get("parent"),
        "fileCount": info.get("fileCount"), "chunkCount": info.get("chunkCount"),
        "bytesStored": info.get("bytesStored"), "bytesRead": info.get("bytesRead"),
        "manifestDigest": info.get("digest"), "source": info.get("description") or None,
    }
    if completed:
        status["completionTime"] = completed.replace("+00:00", "Z")
    ctx.event("Normal", "BackupImported", f"imported {info['path']} from {repository.describe()}")
    ctx.succeed(AVAILABLE, Reason.AVAILABLE, f"imported from {repository.describe()} at {info['path']}",
                {k: v for k, v in status.items() if v is not None})


# ---- deletion ------------------------------------------------------------------------------------


def delete_plan(ctx: FlowContext, obj: dict[str, Any] | None, repository: Repository) -> DeletePlan:
    return DeletePlan(namespace=ctx.owner.namespace, name=ctx.owner.name, backup_uid=backup_uid(ctx, obj),
                      rel_path=ctx.status["repositoryPath"], repository=repository,
                      source_uid=ctx.status.get("sourceUID"), status=dict(ctx.status), spec=dict(ctx.spec))


def finalize(ctx: FlowContext) -> None:
    """Deleting the object: stop what runs, release what is held, then remove the data (unless Retain)."""
    obj = read_object(ctx)
    if obj is None:
        return
    holder = locks.holder(obj)
    if holder is not None and holder.kind == "ShareRestore" and locks.holder_alive(ctx.owner.namespace, holder):
        raise Wait(Reason.IN_PROGRESS, f"{holder} is restoring from this backup; it is deleted when that ends", 5)
    spec = ShareBackupSpec.model_validate(ctx.spec)
    try:
        source: Source = resolve_source(ctx, spec)
    except references.RefusedError:
        source = source_from_status(ctx, spec)
    pvc_related(ctx, source)
    fmt = formats.by_api_format(ctx.status.get("format"))
    repository = formats.recorded_repository(ctx, obj)
    step = ctx.status.get("step")
    in_flight = ctx.phase in (None, PENDING, CREATING) and step in (LOCKED, PREPARED, COPIED, ABORTING)
    if in_flight:  # deleted while it ran: stop the copy before anything else touches its data
        stop_movers(ctx, BACKUP_STEP, DISCARD_STEP)
        if fmt is not None:
            plan = make_plan(ctx, obj, spec, source, repository) if repository and source.resolved else None
            fmt.cleanup(ctx, plan, succeeded=step == COPIED)
    if source.pvc_name:
        locks.release(ctx.owner, ctx.owner.namespace, source.pvc_name)
    if step in (None, VALIDATED) or not ctx.status.get("repositoryPath"):
        return  # nothing was ever written, or a failed backup's partial data was removed already
    if annotations_of(obj).get(ANN_DELETION_POLICY, "").lower() == "retain":
        ctx.event("Normal", Reason.RETAINED, f"{ANN_DELETION_POLICY}: Retain; the backup's data stays at "
                  f"{ctx.status['repositoryPath']}" + (f" in {repository.describe()}" if repository else ""))
        return
    if repository is None:
        try:
            repository = resolve_repository(ctx, obj, spec)
        except (Stop, Wait):
            error_deleting(ctx, Reason.DELETION_FAILED, "the backup's repository cannot be resolved; fix it, or "
                           f"annotate the ShareBackup {ANN_DELETION_POLICY}=Retain to delete the object and keep "
                           "whatever data there is")
    delete_data(ctx, obj, fmt, repository)


def delete_data(ctx: FlowContext, obj: dict[str, Any] | None, fmt: BackupFormat | None,
                repository: Repository) -> None:
    dplan = delete_plan(ctx, obj, repository)
    try:
        formats.path_namespace(ctx, dplan.rel_path)
    except references.RefusedError as exc:  # never another namespace's data, whatever status says
        ctx.event("Warning", Reason.REFERENCE_NOT_ALLOWED, f"{exc.message}; the data there is left alone")
        return
    if ctx.phase not in (DELETING, ERROR_DELETING):
        what = f"removing {dplan.rel_path} from {repository.describe()}"
        ctx.set_phase(DELETING, Reason.DELETING, what)
        ctx.event("Normal", "BackupDeleting", what)
    request = fmt.delete_request(ctx, dplan) if fmt else _files_delete_request(ctx, dplan)
    try:
        state = _mover(ctx, DELETE_STEP, request, fmt or _files_format(), dplan, deadline=_delete_deadline(ctx))
    except Exception as exc:
        if getattr(exc, "status", None) == 403 and namespace_terminating(ctx.owner.namespace):
            # No Job can start in a namespace being deleted: keep the data rather than the namespace forever.
            ctx.event("Warning", "BackupDataRetained",
                      f"namespace {ctx.owner.namespace} is being deleted, so no mover can remove {dplan.rel_path} "
                      f"from {repository.describe()}; the data stays there (import it elsewhere with `kubectl "
                      f"savepoint backups import`, or remove the directory by hand)")
            metrics.OPERATIONS.labels(KIND, "delete_retained").inc()
            return
        raise
    if state.phase == "Running":
        crash_point("sbak:mid-delete")
        raise Wait(Reason.DELETING, f"removing {dplan.rel_path}", delay=3)
    if state.phase == "Failed" and state.reason in NOT_OURS_TO_DELETE:
        # The directory is not this backup's (another owner's marker, a path outside the namespace): it is
        # never removed, and retrying cannot change that -- the object goes, the data stays.
        movers.cleanup_mover(ctx.owner, DELETE_STEP, ctx.settings)
        ctx.event("Warning", state.reason, f"{dplan.rel_path} in {repository.describe()} is not this backup's to "
                  f"remove ({state.message}); it is left alone")
        metrics.OPERATIONS.labels(KIND, "delete_refused").inc()
        return
    if state.phase == "Failed":
        movers.cleanup_mover(ctx.owner, DELETE_STEP, ctx.settings)  # the next attempt runs a new Job
        error_deleting(ctx, Reason.DELETION_FAILED, f"removing {dplan.rel_path} from {repository.describe()} "
                       f"failed: {state.message}")
    movers.cleanup_mover(ctx.owner, DELETE_STEP, ctx.settings)
    if fmt is not None:
        fmt.after_delete(ctx, dplan)
    data = state.result.data if state.result else {}
    freed = data.get("bytesFreed")
    metrics.OPERATIONS.labels(KIND, "deleted").inc()
    ctx.event("Normal", "BackupDeleted", f"removed {dplan.rel_path} from {repository.describe()}"
              + (f" ({freed} bytes freed)" if freed else "") + ("" if data.get("removed", True) else
                                                                 f"; {data.get('note') or 'it was gone already'}"))


NOT_OURS_TO_DELETE = ("BackupOwnerMismatch", "BadBackupPath")


def namespace_terminating(namespace: str) -> bool:
    try:
        ns = k8s.core().read_namespace(namespace)
    except Exception as exc:
        if k8s.is_not_found(exc):
            return True
        raise
    return bool(ns.metadata.deletion_timestamp) or (ns.status is not None and ns.status.phase == "Terminating")


def error_deleting(ctx: FlowContext, reason: str, message: str) -> None:
    """The data cannot be removed now: ErrorDeleting with the reason; retried with backoff, the object stays."""
    if ctx.phase != ERROR_DELETING or ctx.status.get("message") != message:
        # The Event first: whoever sees ErrorDeleting finds the Event too.
        ctx.event("Warning", "BackupDeleteFailed", f"{reason}: {message}")
        ctx.set_phase(ERROR_DELETING, reason, message)
        metrics.OPERATIONS.labels(KIND, "delete_failed").inc()
    raise Wait(reason, message, delay=20)
