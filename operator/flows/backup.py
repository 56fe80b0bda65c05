"""ShareBackup (seed 003, Manila share backup; seed 001 for block volumes): back up a share or volume
into a backup repository, incrementally, and delete the data with the object.

Before any step, ``plan`` decides every refusal: the source and the repository resolve and may be
used, the format is chosen, the format's own rules hold (blocks: in use needs ``force``), the share
is not its own repository, the claim is not in an error state, and -- one atomic decision per
namespace -- the backup gigabytes quota; the facts of this backup are recorded with that decision
(format, size, sourceUID, source, repositoryPath, parentBackup, repository).  Then the steps
(``FLOW`` at the bottom; engine/steps.py runs them, records each in ``status.step``, resumes after
the last from what was recorded, never looking the world up again):

  Locked     PVC lock taken, PVC state ``backup-creating`` (phase Creating, Event BackupStarted);
             other Savepoint actions on the share wait
  Prepared   the format's preparation done (blocks: temporary snapshot, named in status first)
  Copied     the mover Job copied the data and wrote ``backup.json`` last
  Finished   Job removed, temporary objects removed (blocks: the snapshot becomes the base), PVC
             back to its previous state → phase Available (Event BackupSucceeded)

Any failure after the lock is undone in reverse (phase Aborting, a restart finishes it): the copy
is stopped and a half-written backup directory removed from the repository (kept and named when
removing it fails: it goes with the object), the temporary snapshot removed, the lock released;
then Failed with the reason and what the undo did ("nothing was written to the repository" when
the mover never started).  A backup only reads its source: the claim never gets an error state.

Deleting the object (finalizer): an unfinished backup is undone as above (``finalize_flow``); then,
for a backup that wrote data, a mover Job removes the backup's directory (phase Deleting;
ErrorDeleting with the reason while that fails, retried, the object stays).  Annotation
``savepoint.dev/deletion-policy: Retain`` keeps the data.  A backup a ShareRestore is reading
(phase Restoring) is deleted when the restore ends.

Quotas (seed: ``quota_backups``, ``quota_backup_gigabytes``): the number of
ShareBackups is a plain ResourceQuota (``count/sharebackups.savepoint.dev``),
enforced by the API server at creation. Backup gigabytes are enforced here,
from the namespace annotation ``savepoint.dev/backup-gigabytes`` (GiB, or a
quantity such as ``500Gi``): the sizes (source capacity, ``status.size``) of
the namespace's backups that are not Failed, plus this one, must fit, else
Failed with reason ``QuotaExceeded`` and usage and limit in the message.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Callable, NoReturn

from savepoint import metrics
from savepoint.api import BackupFormat as ApiFormat
from savepoint.api import Reason, ShareBackupPhase, ShareBackupSpec
from savepoint.api.quantity import to_bytes, to_quantity
from savepoint.engine import movers
from savepoint.engine.context import Failure, FlowContext, MoverFailed, Stop, Wait
from savepoint.engine.faults import crash_point
from savepoint.engine.steps import Abort, Flow, Step, finalize_flow, run_flow
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
from savepoint.kube import k8s, locks, references
from savepoint.storage import repository as repo

KIND = "ShareBackup"
PLURAL = "sharebackups"
BACKUP_STEP = "backup"
DISCARD_STEP = "discard"
DELETE_STEP = "delete"

Phase = ShareBackupPhase
# The phases by name, for flows/restore.py (which reads a backup's phase).
PENDING, CREATING, AVAILABLE, RESTORING = Phase.PENDING, Phase.CREATING, Phase.AVAILABLE, Phase.RESTORING
DELETING, ERROR_DELETING, FAILED, ABORTING = Phase.DELETING, Phase.ERROR_DELETING, Phase.FAILED, Phase.ABORTING
# Steps (status.step): the runner's, plus two this flow's objects may carry.
LOCKED, PREPARED, COPIED, FINISHED = "Locked", "Prepared", "Copied", "Finished"
VALIDATED = "Validated"  # recorded by versions before the step runner (the plan was made, no lock yet)
LEGACY_ABORTING = "Aborting"  # status.step of a backup an older version left midway through its abort
IMPORTED = "Imported"  # an object made by `kubectl savepoint backups import`

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
            ctx.refuse(exc)
    elif ctx.settings.default_repository:
        chosen = Repository(dict(ctx.settings.default_repository))
        if not (chosen.claim_name or chosen.nfs):
            ctx.fail(Reason.INVALID_SPEC, "the operator's defaultRepository setting is neither nfs nor a claim")
    else:
        ctx.fail(Reason.INVALID_SPEC, "no repository: set spec.repository, or ask an administrator to set the "
                 "operator's defaultRepository (SAVEPOINT_DEFAULT_REPOSITORY)")
    record_repository(ctx, chosen)
    return chosen


def record_repository(ctx: FlowContext, chosen: Repository) -> None:
    """In status: only the operator writes it, so later steps can trust it."""
    ctx.patch_status({"repository": chosen.ref})


def resolve_source(ctx: FlowContext, spec: ShareBackupSpec, *, recorded_uid: bool = True) -> Source:
    """Resolve the source now; ``RefusedError`` when it is not (or no longer) usable."""
    resolved = references.resolve_source(ctx.owner.namespace, spec.source, ctx.settings)
    kind, ref = spec.source.chosen()
    uid = (ctx.status.get("sourceUID") if recorded_uid else None) or formats.source_id(resolved)
    return Source(reference={kind: ref.model_dump(mode="json", by_alias=True, exclude_none=True)},
                  uid=uid, description=resolved.describe(), size_bytes=resolved.size_bytes, resolved=resolved)


def source_from_status(ctx: FlowContext, spec: ShareBackupSpec) -> Source:
    """The source as recorded, without looking it up (cleanup when it is gone)."""
    kind, ref = spec.source.chosen()
    size = ctx.status.get("size")
    return Source(reference={kind: ref.model_dump(mode="json", by_alias=True, exclude_none=True)},
                  uid=ctx.status.get("sourceUID") or "", description=ctx.status.get("source") or kind,
                  size_bytes=to_bytes(size) if size else None, resolved=None)


def make_plan(ctx: FlowContext, obj: dict[str, Any] | None, spec: ShareBackupSpec, source: Source,
              repository: Repository, *, rel_path: str | None, parent: str | None) -> BackupPlan:
    meta = (obj or {}).get("metadata") or {}
    return BackupPlan(
        namespace=ctx.owner.namespace, name=ctx.owner.name, backup_uid=backup_uid(ctx, obj), source=source,
        repository=repository,
        rel_path=rel_path or str(repo.backup_rel_path(ctx.owner.namespace, source.uid, ctx.owner.name)),
        incremental=spec.incremental, verify=spec.verify, force=spec.force,
        parent_name=parent,
        parent_path=str(repo.backup_rel_path(ctx.owner.namespace, source.uid, parent)) if parent else None,
        created=ctx.status.get("startTime"), labels=dict(meta.get("labels") or {}))


def pvc_related(ctx: FlowContext, source: Source) -> None:
    if source.pvc_name:
        uid = source.resolved.pvc_uid if source.resolved else ""
        ctx.related = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": source.pvc_name,
                        "namespace": ctx.owner.namespace, "uid": uid or ""}]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the steps work with: decided by ``plan`` before the lock, rebuilt by ``resume`` from status."""

    obj: dict[str, Any] | None
    spec: ShareBackupSpec
    fmt: BackupFormat | None  # None: status names a format this version does not have
    source: Source
    backup: BackupPlan | None  # None: no repository recorded (nothing can have been written)
    # After the lock: why the source cannot be read now (the steps that read it end through the undo).
    unusable: references.RefusedError | None = None

    @property
    def pvc_name(self) -> str | None:
        return self.source.pvc_name

    def started_message(self) -> str:
        assert self.backup is not None
        what = f"backing up {self.source.description} to {self.backup.repository.describe()} as {self.backup.rel_path}"
        return what + (f" (incremental to {self.backup.parent_name})" if self.backup.parent_name else "")


# ---- before the lock: every refusal ------------------------------------------------------------


def plan(ctx: FlowContext) -> Plan:
    """The seed's 400/404/413 checks, then the facts of this backup recorded (one atomic quota decision)."""
    obj = read_object(ctx)
    spec = ShareBackupSpec.model_validate(ctx.spec)
    try:
        source = resolve_source(ctx, spec, recorded_uid=False)
    except references.RefusedError as exc:
        ctx.refuse(exc)
    pvc_related(ctx, source)
    assert source.resolved is not None
    try:
        fmt = formats.for_target(source.resolved.target)
    except references.RefusedError as exc:
        ctx.refuse(exc)
    repository = resolve_repository(ctx, obj, spec)
    backup = make_plan(ctx, obj, spec, source, repository, rel_path=None, parent=None)
    if not source.uid:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"{source.description} has no uid to file its backups under")
    fmt.check_source(ctx, backup)
    repository_target = formats.repository_target(ctx, repository)
    if (source.resolved is not None and repository_target is not None
            and formats.overlap(repository_target, source.resolved.target)):
        ctx.fail(Reason.INVALID_SPEC, f"{source.description} is (or contains, or lies inside) the repository "
                 f"{repository.describe()}; a share cannot be backed up into itself")
    if source.pvc_name:
        formats.wait_while_in_error_state(ctx, source.pvc_name)
    parent = decide_quota_and_record(ctx, spec, fmt, backup)
    crash_point("sbak:validated")
    return Plan(obj, spec, fmt, source, make_plan(ctx, obj, spec, source, repository, rel_path=backup.rel_path,
                                                  parent=parent))


def decide_quota_and_record(ctx: FlowContext, spec: ShareBackupSpec, fmt: BackupFormat, backup: BackupPlan) -> str | None:
    """Check the gigabytes quota and record this backup's size in one step per namespace (so two backups
    created together cannot both fit a quota only one fits); returns the parent backup chosen."""
    source = backup.source
    with _quota_lock(ctx.owner.namespace):
        siblings = k8s.custom().list_namespaced_custom_object(k8s.GROUP, k8s.VERSION, ctx.owner.namespace,
                                                              PLURAL)["items"]
        namespace = k8s.core().read_namespace(ctx.owner.namespace)
        raw_limit = (namespace.metadata.annotations or {}).get(NS_GIGABYTES)
        try:
            limit = gigabytes_limit(raw_limit)
        except ValueError:
            ctx.fail(Reason.INVALID_SPEC, f"namespace annotation {NS_GIGABYTES}={raw_limit!r} is not a number of GiB "
                     "or a quantity; an administrator must fix it")
        refusal = quota_refusal(limit, usage_bytes(siblings, ctx.owner.uid), source.size_bytes or 0)
        if refusal:
            ctx.fail(Reason.QUOTA_EXCEEDED, refusal)
        parent = None
        if spec.incremental:
            parent = choose_parent(siblings, source_uid=source.uid, repository_key=backup.repository.key(),
                                   api_format=fmt.api_format, exclude=ctx.owner.name)
        ctx.patch_status({
            "format": fmt.api_format,
            "size": to_quantity(source.size_bytes) if source.size_bytes else None,
            "sourceUID": source.uid,
            "source": source.description,
            "repositoryPath": backup.rel_path,
            "parentBackup": parent["metadata"]["name"] if parent else None,
        })
    return parent["metadata"]["name"] if parent else None


_quota_guard = threading.Lock()
_quota_locks: dict[str, threading.Lock] = {}


def _quota_lock(namespace: str) -> threading.Lock:
    """One decision at a time per namespace: check the quota and record this backup's size atomically."""
    with _quota_guard:
        return _quota_locks.setdefault(namespace, threading.Lock())


# ---- after the lock: the plan as recorded ---------------------------------------------------------


def resume(ctx: FlowContext) -> Plan:
    """The plan from what was recorded (format, sourceUID, repositoryPath, parentBackup, repository); the
    source is looked up only to mount it, and a source that became unusable is a reason to undo, never to
    refuse (a restarted operator must not end a locked backup without its undo)."""
    obj = read_object(ctx)
    spec = ShareBackupSpec.model_validate(ctx.spec)
    unusable = None
    try:
        source = resolve_source(ctx, spec)
    except references.RefusedError as exc:
        source, unusable = source_from_status(ctx, spec), exc
    pvc_related(ctx, source)
    repository = formats.recorded_repository(ctx, obj)
    backup = None
    if repository is not None:
        backup = make_plan(ctx, obj, spec, source, repository, rel_path=ctx.status.get("repositoryPath"),
                           parent=ctx.status.get("parentBackup"))
    return Plan(obj, spec, formats.by_api_format(ctx.status.get("format")), source, backup, unusable)


def _usable(ctx: FlowContext, p: Plan) -> tuple[BackupFormat, BackupPlan]:
    """A step that reads the source or writes the repository: what it needs, else a failure (nothing written)."""
    if p.fmt is None:
        ctx.fail(Reason.UNSUPPORTED_VOLUME, f"backup format {ctx.status.get('format')!r} is not available",
                 nothing_written=True)
    if p.backup is None:
        ctx.fail(Reason.INVALID_SPEC, "the backup's repository was not recorded", nothing_written=True)
    if p.unusable is not None:
        ctx.fail(p.unusable.reason, f"the source became unusable during the backup: {p.unusable.message}",
                 nothing_written=True)
    return p.fmt, p.backup


def _before_writing(ctx: FlowContext, build: Callable[[], Any]) -> Any:
    """Build what a mover needs (the repository's export, Ceph credentials): a refusal or failure here
    comes before the mover starts, so nothing was written."""
    try:
        return build()
    except references.RefusedError as exc:
        if exc.final:
            ctx.fail(exc.reason, exc.message, nothing_written=True)
        ctx.refuse(exc)  # a wait: past the deadline it fails, nothing written
    except Failure as failure:
        failure.nothing_written = True
        raise


# ---- the steps ---------------------------------------------------------------------------------


def take_lock(ctx: FlowContext, p: Plan) -> None:
    if p.pvc_name:
        try:
            ctx.lock_or_wait(ctx.owner.namespace, p.pvc_name, formats.STATE_CREATING)
        except references.RefusedError as exc:
            ctx.refuse(exc)
    what = p.started_message()
    ctx.set_phase(CREATING, Reason.IN_PROGRESS, what, defer=True)
    ctx.event("Normal", "BackupStarted", what, wait=False)
    crash_point("sbak:locked")


def release_lock(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Locked: the claim back to its previous state (a backup only read it: never ``error``)."""
    if p is not None:
        pvc = p.pvc_name
    else:  # killed between taking the lock and recording anything: give back what the spec names
        kind, ref = ShareBackupSpec.model_validate(ctx.spec).source.chosen()
        pvc = ref.name if kind == "persistentVolumeClaim" else None
    if pvc:
        locks.release(ctx.owner, ctx.owner.namespace, pvc)
    # repositoryPath stays only while something may be left there (the finalizer removes it then).
    a.extra.setdefault("repositoryPath", None)
    a.extra.update({"moverJob": None})


def prepare(ctx: FlowContext, p: Plan) -> None:
    fmt, backup = _usable(ctx, p)
    fmt.prepare(ctx, backup)
    crash_point("sbak:prepared")


def drop_temporaries(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of Prepared: the format's temporary objects go (blocks: the temporary snapshot)."""
    fmt = p.fmt
    if fmt is None:
        return
    _best_effort(ctx, a, "removing the backup's temporary objects",
                 lambda: fmt.cleanup(ctx, _cleanup_plan(p), succeeded=False))
    if ctx.status.get("temporarySnapshot"):
        a.note(f"the temporary snapshot {ctx.status['temporarySnapshot']} is left on the volume; remove it by hand")


def copy(ctx: FlowContext, p: Plan) -> None:
    fmt, backup = _usable(ctx, p)
    request = _before_writing(ctx, lambda: fmt.backup_request(ctx, backup))
    creds = _before_writing(ctx, lambda: fmt.ceph_credentials(ctx, backup)) if request.needs_ceph else None
    mover = ctx.run_mover(BACKUP_STEP, request, phase=CREATING, message=p.started_message(), ceph=creds)
    result = dict(mover.data)
    fields = fmt.backup_status(ctx, backup, result)
    if not backup.source.size_bytes and result.get("bytesTotal") is not None:
        fields["size"] = to_quantity(max(1, int(result["bytesTotal"])))  # a raw share: its data is its size
    fields.update({"progress": {"percent": 100, "bytesDone": int(result.get("bytes") or 0),
                                "bytesTotal": int(result.get("bytes") or 0),
                                **({"files": result["files"]} if result.get("files") else {})}})
    ctx.patch_status({k: v for k, v in fields.items() if v is not None})
    if result.get("fullReadReason"):
        ctx.event("Normal", Reason.FULL_READ, str(result["fullReadReason"]))
    if result.get("metadataDropped"):
        ctx.event("Warning", "MetadataDropped", "the repository's filesystem cannot keep "
                  + ", ".join(result["metadataDropped"]) + "; they are not in the backup")
    crash_point("sbak:copied")


def discard_partial(ctx: FlowContext, p: Plan, a: Abort) -> None:
    """Undo of Copied: stop the copy, then remove what it wrote to the repository (never another backup's
    data); when removing fails the directory stays, named, and goes when the ShareBackup is deleted."""
    ctx.stop_mover(BACKUP_STEP)
    completed = a.step != COPIED  # a later step failed: the copy had finished, its backup is there
    rel_path = ctx.status.get("repositoryPath")
    if not (a.data_touched or completed) or not rel_path:
        a.note("nothing was written to the repository")
        a.extra["repositoryPath"] = None
        return
    if p.backup is None:
        a.note(f"the partial backup {rel_path} may be left in the repository (it was not recorded which)")
        return
    dplan = delete_plan(ctx, p.obj, p.backup.repository)
    fmt = p.fmt or _files_format()
    try:
        request = fmt.delete_request(ctx, dplan)
        result = ctx.run_mover(DISCARD_STEP, request, phase=ABORTING, deadline_seconds=_delete_deadline(ctx),
                               message=f"removing the partial backup {rel_path} from the repository")
    except (references.RefusedError, MoverFailed) as exc:
        ctx.finish_mover(DISCARD_STEP)
        a.note(f"removing the partial backup {rel_path} failed ({exc.message}): it stays until the ShareBackup "
               "is deleted")
        a.extra["repositoryPath"] = rel_path
        return
    ctx.finish_mover(DISCARD_STEP)
    a.extra["repositoryPath"] = None
    if completed:
        _best_effort(ctx, a, "removing the backup's base snapshot", lambda: fmt.after_delete(ctx, dplan))
    if result.data.get("removed"):
        metrics.LEFTOVERS.labels(KIND, "partial-backup", namespace=ctx.owner.namespace).inc()
        a.note(f"the partial backup {rel_path} was removed from the repository")


def finish(ctx: FlowContext, p: Plan) -> None:
    ctx.finish_mover(BACKUP_STEP)
    if p.fmt is not None:
        p.fmt.cleanup(ctx, _cleanup_plan(p), succeeded=True)
    if p.pvc_name:
        locks.release(ctx.owner, ctx.owner.namespace, p.pvc_name)
    status = ctx.status
    stored = int(status.get("bytesStored") or 0)
    parts = [f"backup of {p.source.description} is available at {status.get('repositoryPath')}"]
    if status.get("fileCount") is not None:
        parts.append(f"{status['fileCount']} files")
    if status.get("chunkCount") is not None:
        parts.append(f"{status['chunkCount']} chunks")
    parts.append(f"{stored} new bytes stored" + (f" (incremental to {status['parentBackup']})"
                                                  if status.get("parentBackup") else " (full)"))
    ctx.succeed(AVAILABLE, Reason.AVAILABLE, ", ".join(parts), {"moverJob": None})


def _cleanup_plan(p: Plan) -> BackupPlan | None:
    """The plan a format's cleanup gets: None when the source cannot be looked up (it cleans up from status)."""
    return p.backup if p.source.resolved is not None else None


def _best_effort(ctx: FlowContext, a: Abort, what: str, action: Callable[[], Any]) -> None:
    """An undo's act that may meet a broken Ceph or ceph-csi config: retried (``Wait``) while the deadline
    allows, then given up with a note -- an undo never ends the action itself (its ``fail`` would skip the
    undos after it)."""
    try:
        action()
    except Failure as failure:
        a.note(f"{what} failed ({failure.message})")
    except Wait as wait:
        if not ctx.deadline_passed():
            raise
        a.note(f"{what} failed ({wait.message})")


def _files_format() -> BackupFormat:
    from savepoint.flows.files_format import FilesFormat

    return FilesFormat()


def _delete_deadline(ctx: FlowContext) -> int:
    return max(ctx.settings.default_deadline_seconds, 600)


FLOW: Flow[Plan] = Flow("ShareBackup", plan=plan, resume=resume, steps=(
    Step(LOCKED, take_lock, undo=release_lock),
    Step(PREPARED, prepare, undo=drop_temporaries),
    Step(COPIED, copy, undo=discard_partial, touches_data=True),
    Step(FINISHED, finish, cleanup=True),
))


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
    if ctx.phase in (DELETING, ERROR_DELETING):
        return  # the finalizer's
    adopt_legacy_abort(ctx)
    run_flow(FLOW, ctx)


def adopt_legacy_abort(ctx: FlowContext) -> None:
    """A backup an older version left midway through its abort (``status.step: Aborting``): the runner's
    undo finishes it (the copy's undo removes what a started mover may have written)."""
    if ctx.status.get("step") != LEGACY_ABORTING or ctx.phase == ABORTING:
        return
    a = Abort(ctx.ready_reason() or Reason.MOVER_FAILED, ctx.status.get("message") or "failed", COPIED,
              data_touched=bool(ctx.status.get("moverJob")))
    ctx.set_phase(ABORTING, a.reason, a.message, {"abort": a.recorded(), "step": PREPARED})


# ---- for flows/restore.py (not on the step runner yet) ---------------------------------------------


def _ready_reason(ctx: FlowContext) -> str | None:
    return ctx.ready_reason()


def stop_movers(ctx: FlowContext, *steps: str) -> None:
    """Remove the steps' Jobs and wait (``Wait``) until their pods are gone; status is left as it is."""
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
    if namespace != ctx.owner.namespace and not ctx.settings.raw_references_allowed(ctx.owner.namespace):
        ctx.fail(Reason.REFERENCE_NOT_ALLOWED,
                 f"{info['path']} belongs to namespace {namespace}; backups of another namespace can be imported only "
                 "where raw references are allowed (operator setting rawReferenceNamespaces)")
    spec = ShareBackupSpec.model_validate(ctx.spec)
    repository = resolve_repository(ctx, obj, spec)
    fmt = ApiFormat.CHUNKS if info.get("format") == repo.FORMAT_BLOCKS else ApiFormat.TREE
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
    """Deleting the object: an unfinished backup is undone first (its copy stopped, its partial data and
    temporary objects removed, its lock released); then the data of a backup that has some goes (unless
    Retain).  Deleting a finished backup is no abort: it just removes the data."""
    obj = read_object(ctx)
    if obj is None:
        return
    holder = locks.holder(obj)
    if holder is not None and holder.kind == "ShareRestore" and locks.holder_alive(ctx.owner.namespace, holder):
        raise Wait(Reason.IN_PROGRESS, f"{holder} is restoring from this backup; it is deleted when that ends", 5)
    if ANN_IMPORTED not in annotations_of(obj) and ctx.phase in (None, PENDING, CREATING, ABORTING):
        adopt_legacy_abort(ctx)
        finalize_flow(FLOW, ctx, reason=Reason.ABORTED, message="deleted before the backup finished")
    delete_data(ctx, obj)


def delete_data(ctx: FlowContext, obj: dict[str, Any]) -> None:
    """The finalizer's removal of the backup's directory (phase Deleting; ErrorDeleting while it fails)."""
    spec = ShareBackupSpec.model_validate(ctx.spec)
    try:
        source: Source = resolve_source(ctx, spec)
    except references.RefusedError:
        source = source_from_status(ctx, spec)
    pvc_related(ctx, source)
    if source.pvc_name:  # whatever an older version left: only this backup's own lock goes
        locks.release(ctx.owner, ctx.owner.namespace, source.pvc_name)
    if ctx.status.get("step") in (None, VALIDATED) or not ctx.status.get("repositoryPath"):
        return  # nothing was ever written, or a failed backup's partial data was removed already
    fmt = formats.by_api_format(ctx.status.get("format"))
    repository = formats.recorded_repository(ctx, obj)
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
    dplan = delete_plan(ctx, obj, repository)
    try:
        formats.path_namespace(ctx, dplan.rel_path)
    except references.RefusedError as exc:  # never another namespace's data, whatever status says
        ctx.event("Warning", Reason.REFERENCE_NOT_ALLOWED, f"{exc.message}; the data there is left alone")
        return
    what = f"removing {dplan.rel_path} from {repository.describe()}"
    if ctx.phase not in (DELETING, ERROR_DELETING):
        ctx.set_phase(DELETING, Reason.DELETING, what)
        ctx.event("Normal", "BackupDeleting", what)
    fmt_ = fmt or _files_format()
    try:
        request = fmt_.delete_request(ctx, dplan)
    except references.RefusedError as exc:  # e.g. the repository claim is gone
        error_deleting(ctx, Reason.DELETION_FAILED, f"{what}: {exc.message}")
    try:
        result = ctx.run_mover(DELETE_STEP, request, phase=DELETING, message=what,
                               deadline_seconds=_delete_deadline(ctx))
    except MoverFailed as failed:
        ctx.finish_mover(DELETE_STEP)  # the next attempt runs a new Job
        if failed.reason in NOT_OURS_TO_DELETE:
            # The directory is not this backup's (another owner's marker, a path outside the namespace): it is
            # never removed, and retrying cannot change that -- the object goes, the data stays.
            ctx.event("Warning", failed.reason, f"{dplan.rel_path} in {repository.describe()} is not this backup's "
                      f"to remove ({failed.message}); it is left alone")
            metrics.OPERATIONS.labels(KIND, "delete_refused", namespace=ctx.owner.namespace).inc()
            return
        error_deleting(ctx, Reason.DELETION_FAILED, f"{what} failed: {failed.message}")
    except Exception as exc:
        if getattr(exc, "status", None) == 403 and namespace_terminating(ctx.owner.namespace):
            # No Job can start in a namespace being deleted: keep the data rather than the namespace forever.
            ctx.event("Warning", "BackupDataRetained",
                      f"namespace {ctx.owner.namespace} is being deleted, so no mover can remove {dplan.rel_path} "
                      f"from {repository.describe()}; the data stays there (import it elsewhere with `kubectl "
                      f"savepoint backups import`, or remove the directory by hand)")
            metrics.OPERATIONS.labels(KIND, "delete_retained", namespace=ctx.owner.namespace).inc()
            return
        raise
    ctx.finish_mover(DELETE_STEP)
    fmt_.after_delete(ctx, dplan)
    freed = result.data.get("bytesFreed")
    metrics.OPERATIONS.labels(KIND, "deleted", namespace=ctx.owner.namespace).inc()
    ctx.event("Normal", "BackupDeleted", f"removed {dplan.rel_path} from {repository.describe()}"
              + (f" ({freed} bytes freed)" if freed else "")
              + ("" if result.data.get("removed", True) else f"; {result.data.get('note') or 'it was gone already'}"))


NOT_OURS_TO_DELETE = (Reason.BACKUP_OWNER_MISMATCH, Reason.BAD_BACKUP_PATH)


def namespace_terminating(namespace: str) -> bool:
    try:
        ns = k8s.core().read_namespace(namespace)
    except Exception as exc:
        if k8s.is_not_found(exc):
            return True
        raise
    return bool(ns.metadata.deletion_timestamp) or (ns.status is not None and ns.status.phase == "Terminating")


def error_deleting(ctx: FlowContext, reason: str, message: str) -> NoReturn:
    """``ctx.error_deleting`` with the Event this kind documents (``BackupDeleteFailed``) before it."""
    if ctx.phase != ERROR_DELETING or ctx.status.get("message") != message:
        ctx.event("Warning", "BackupDeleteFailed", f"{reason}: {message}")
        metrics.OPERATIONS.labels(KIND, "delete_failed", namespace=ctx.owner.namespace).inc()
    ctx.error_deleting(reason, message)
