"""ImageSnapshot (seed 002, Nova's RBD direct snapshots): an RBD disk into an
image pool by snapshot, clone and flatten, with a full-copy fallback.

Steps, each recorded in ``status.step`` after it completes (every step is
idempotent, so an operator restarted at any instruction resumes after the
last one recorded):

  Validated      source resolved, names of the temporary snapshot and of the
                 destination image recorded (before either exists), path chosen
  Snapshotted    temporary snapshot ``savepoint-image-<uid>`` on the source
  Cloned         (direct path) ``source@snapshot`` cloned into the destination pool
  Flattened      (direct path) the clone flattened by a mover Job, with progress
  Copied         (fallback) a mover Job copied ``source@snapshot`` into a new image
                 of the destination pool: sparse, verified by checksums
  SourceSnapshotRemoved  the temporary snapshot is gone from the source
  ImageReady     ``snap`` created and protected on the image → Succeeded with
                 ``status.location`` ``rbd://<fsid>/<pool>/<image>/snap``
  Aborting       a failure is being cleaned up (the reason is in the Ready
                 condition); a restart finishes the cleanup, then fails

The direct path falls back to the copy (``method: Auto``) on any Ceph error of
the clone or flatten step other than an unreachable cluster (which is retried):
``status.method`` becomes ``Copy`` and ``status.fallbackReason`` says why in a
form a user can act on (e.g. the caps to add). ``Clone`` fails instead, with
every partial object removed; ``Copy`` skips the direct path.

**Ceph users (least privilege).** The operator's user (``ceph_secret``, the
ceph-csi user) takes and removes the temporary snapshot, and on the direct path
clones, flattens (in the mover Job) and owns the image; that needs write access
to the image pool, as the seed says (``allow rwx pool=images``). The fallback
copy runs as ``image_copy_secret``'s user when that setting is given: a user
that may read the source pools and write the image pool only, like Glance's, so
the mover Job never holds credentials that could write a volume. Images are
created, snapshotted and deleted by the user of the path that made them
(``status.method``).

**The PVC lock.** Taken only around the snapshot step (state
``image-snapshotting``), released as soon as the snapshot exists. Reading
needs no lock: the snapshot is a point-in-time, crash-consistent copy taken
through librbd while the volume stays in use, and everything after it reads
the snapshot, never the volume. But a snapshot taken while another Savepoint
action rewrites the volume (a revert copying data in) would capture half of
it, and a volume left in an error state holds data nobody vouched for: the
short lock makes the snapshot wait for those (``VolumeBusy``,
``VolumeInErrorState``) without keeping reverts or backups waiting for the
whole flatten or copy. Savepoint's own ``savepoint-`` snapshots are ignored by
the latest-snapshot rule, so the temporary snapshot never blocks a revert.

**Whose image is it.** The destination name is checked to be free before it
is recorded, and the generated name carries the CR's uid; afterwards an image
of the recorded name is ours. The image also carries the metadata key
``savepoint.dev/owner`` (``<namespace>/<name> <uid>``): deletion never removes
an image whose metadata names another owner.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from savepoint import metrics
from savepoint.engine import movers
from savepoint.kube import cephconfig, events, k8s, locks, references
from savepoint.api import (
    DeletionPolicy,
    ImageMethod,
    ImageSnapshotSpec,
    Reason,
    to_quantity,
)
from savepoint.api.conditions import READY
from savepoint.engine.faults import crash_point
from savepoint.engine.context import FlowContext, Stop, Wait
from savepoint.mover.request import MoverRequest
from savepoint.settings import Settings
from savepoint.storage import ceph, rbd
from savepoint.storage.errors import (
    AlreadyExists,
    Busy,
    HasDependents,
    NotFound,
    PermissionDenied,
    StorageError,
    Unreachable,
    ceph_errors,
)

KIND = "ImageSnapshot"
SNAPSHOT_PREFIX = "savepoint-image-"
IMAGE_SNAP = "snap"  # the conventional snapshot Glance's direct_url points at
OWNER_KEY = "savepoint.dev/owner"  # image metadata: which ImageSnapshot made the image
LOCK_STATE = "image-snapshotting"
FLATTEN_STEP = "flatten"
COPY_STEP = "copy"

VALIDATED = "Validated"
SNAPSHOTTED = "Snapshotted"
CLONED = "Cloned"
FLATTENED = "Flattened"
COPIED = "Copied"
SOURCE_SNAPSHOT_REMOVED = "SourceSnapshotRemoved"
IMAGE_READY = "ImageReady"
ABORTING = "Aborting"

CREATING = "Creating"
DELETING = "Deleting"
ERROR_DELETING = "ErrorDeleting"
MOVER_WATCH_SECONDS = 20  # watch a running mover this long per reconcile before handing the thread back

Path = Literal["Clone", "Copy"]

_handled: set[str] = set()  # uids this operator process has reconciled: any other one in flight was adopted


# --- pure decisions (tests/unit/test_imagesnapshot_logic.py) -------------------------------

def snapshot_name(uid: str) -> str:
    """The temporary snapshot on the source: Savepoint's prefix, so no latest-snapshot rule counts it."""
    return f"{SNAPSHOT_PREFIX}{uid[:13]}"


_NOT_CEPH = re.compile(r"[^A-Za-z0-9_.+:=-]")


def generated_image_name(namespace: str, name: str, uid: str) -> str:
    """``<namespace>-<name>-<uid8>``: readable, unique per CR, a valid Ceph name of at most 250 characters."""
    base = _NOT_CEPH.sub("-", f"{namespace}-{name}")[:240]
    return f"{base}-{uid[:8]}"


def initial_path(method: ImageMethod | str) -> Path:
    return "Copy" if ImageMethod(method) is ImageMethod.COPY else "Clone"


def on_direct_failure(method: ImageMethod | str, reason: str | None,
                      deadline_passed: bool) -> Literal["fallback", "fail"]:
    """After the snapshot, clone or flatten failed: copy instead (Auto), or fail (Clone, or out of time)."""
    if deadline_passed or reason == Reason.DEADLINE_EXCEEDED:
        return "fail"
    return "fallback" if ImageMethod(method) is ImageMethod.AUTO else "fail"


def failure_reason(storage_reason: str | None) -> Reason:
    """The condition reason for a direct path that failed and may not fall back."""
    return Reason.PERMISSION_DENIED if storage_reason == PermissionDenied.reason else Reason.CLONE_FAILED


def direct_path_hint(storage_reason: str | None, user: str, pool: str) -> str:
    """What a user (or the cluster admin) can do about a failed clone or flatten."""
    if storage_reason == PermissionDenied.reason:
        return (f"the Ceph user {user} may not write pool {pool}: add write access to it "
                f"(e.g. 'profile rbd pool={pool}' or 'allow rwx pool={pool}' in its osd caps, with 'ceph auth caps') "
                "to use the fast clone path")
    if storage_reason == NotFound.reason:
        return f"does pool {pool} exist? (ceph osd pool ls)"
    return "see the message; the clone path is retried by the next ImageSnapshot"


def fallback_reason(where: str, storage_reason: str | None, message: str, user: str, pool: str) -> str:
    """``status.fallbackReason``: what failed, and what would make the direct path work."""
    return f"{where} failed ({storage_reason or 'Error'}): {message}; {direct_path_hint(storage_reason, user, pool)}"


def copy_failure_reason(mover_reason: str | None) -> str:
    """The condition reason for a failed copy: the mover's (or Ceph's) own, which is more precise than
    MoverFailed (docs/events.md lists them); a read-back mismatch is our VerificationFailed."""
    if mover_reason == "VerifyFailed":
        return Reason.VERIFICATION_FAILED
    return mover_reason or Reason.MOVER_FAILED


def deletion_action(phase: str | None, step: str | None, policy: DeletionPolicy | str) -> Literal[
        "nothing", "abort", "retain", "delete"]:
    """What deleting the CR does: nothing made yet, undo a partial one, keep or delete the image."""
    if phase in ("Succeeded", DELETING, ERROR_DELETING):
        return "retain" if DeletionPolicy(policy) is DeletionPolicy.RETAIN else "delete"
    if step is None:
        return "nothing"
    return "abort"  # running, aborting or failed: remove whatever partial objects may remain


def owner_value(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name} {uid}"


def owned_by(metadata_owner: str | None, uid: str) -> bool:
    """Is an image ours?  Only when its owner metadata (which we write) names our uid: an unmarked
    or differently marked image is never ours, whatever status says."""
    return metadata_owner is not None and metadata_owner.rsplit(" ", 1)[-1] == uid


def our_clone(metadata_owner: str | None, parent: rbd.ParentInfo | None, source: rbd.ImageRef, snapshot: str,
              uid: str) -> bool:
    """An existing destination is ours if it is marked so, or if it is still a clone of our own source
    snapshot (whose name holds our uid): killed between the clone and the marking."""
    if metadata_owner is not None:
        return owned_by(metadata_owner, uid)
    return parent is not None and parent.ref == source and parent.snapshot == snapshot


# --- the plan: everything later steps need, from status (the PVC may be gone by then) ---

@dataclasses.dataclass(frozen=True)
class Plan:
    cluster_id: str
    source: rbd.ImageRef
    snapshot: str
    destination: rbd.ImageRef
    path: Path
    pvc: str | None

    @classmethod
    def from_status(cls, ctx: FlowContext, spec: ImageSnapshotSpec) -> Plan:
        """What earlier steps recorded.  The destination is not taken from status: it is derived again
        from the immutable spec (status is for people and for resuming, never the authority on what to
        delete), and every delete checks the image's owner metadata as well."""
        st = ctx.status
        src = st["sourceImage"]
        kind, ref = spec.source.chosen()
        return cls(
            cluster_id=st["clusterID"],
            source=rbd.ImageRef(src["pool"], src["name"], src.get("radosNamespace") or None),
            snapshot=snapshot_name(ctx.owner.uid),
            destination=rbd.ImageRef(destination_pool(ctx, spec), destination_name(ctx, spec)),
            path="Copy" if st.get("method") == "Copy" else "Clone",
            pvc=ref.name if kind == "persistentVolumeClaim" else None,
        )

    def source_params(self) -> dict[str, Any]:
        return {"pool": self.source.pool, "image": self.source.image, "namespace": self.source.namespace,
                "snapshot": self.snapshot}

    def destination_params(self) -> dict[str, Any]:
        return {"pool": self.destination.pool, "image": self.destination.image}


def destination_pool(ctx: FlowContext, spec: ImageSnapshotSpec) -> str:
    return (spec.destination.pool if spec.destination else None) or ctx.settings.image_pool


def destination_name(ctx: FlowContext, spec: ImageSnapshotSpec) -> str:
    if spec.destination and spec.destination.image:
        return spec.destination.image
    return generated_image_name(ctx.owner.namespace, ctx.owner.name, ctx.owner.uid)


# --- credentials -----------------------------------------------------------------------------

def main_credentials(ctx: FlowContext, cluster_id: str) -> ceph.CephCredentials:
    return cephconfig.credentials(cluster_id, ctx.settings)


def copy_credentials(ctx: FlowContext, cluster_id: str) -> ceph.CephCredentials:
    """The fallback copy's user: ``image_copy_secret``, else the operator's own."""
    secret = ctx.settings.image_copy_secret
    if not secret:
        return main_credentials(ctx, cluster_id)
    try:
        return cephconfig.credentials(cluster_id, _with_secret(ctx.settings, secret))
    except references.RefusedError as exc:
        message = exc.message.replace("SAVEPOINT_CEPH_SECRET", "SAVEPOINT_IMAGE_COPY_SECRET")
        raise references.RefusedError(exc.reason, message, final=exc.final) from None


def _with_secret(settings: Settings, secret: str) -> Settings:
    return settings.model_copy(update={"ceph_secret": secret})


def image_credentials(ctx: FlowContext, p: Plan) -> ceph.CephCredentials:
    """The user that made (and owns) the destination image."""
    return copy_credentials(ctx, p.cluster_id) if p.path == "Copy" else main_credentials(ctx, p.cluster_id)


# --- the flow --------------------------------------------------------------------------------

def reconcile(ctx: FlowContext) -> None:
    if ctx.phase in (DELETING, ERROR_DELETING):
        return  # the deletion handler owns it now
    spec = ImageSnapshotSpec.model_validate(ctx.spec)
    adopted = ctx.owner.uid not in _handled and bool(ctx.status.get("step"))
    _handled.add(ctx.owner.uid)
    try:
        if not ctx.status.get("step"):
            validate(ctx, spec)
            crash_point("isnap:validated")
        ctx.related = _related(ctx, spec)
        if adopted:
            ctx.event("Normal", Reason.ADOPTED, f"picked up after an operator restart at step {ctx.status['step']}: "
                      "resuming (a running mover Job is followed, not started again)")
        _run_steps(ctx, spec)
    except Stop:
        _handled.discard(ctx.owner.uid)
        raise


def _run_steps(ctx: FlowContext, spec: ImageSnapshotSpec) -> None:
    while True:
        p = Plan.from_status(ctx, spec)
        step = ctx.status["step"]
        if step != ABORTING:  # every later failure removes every partial object first
            ctx.undo = lambda reason, message, p=p: abort(ctx, p, reason, message)
        if step == ABORTING:
            finish_abort(ctx, p)
        elif step == VALIDATED:
            take_snapshot(ctx, p)
            crash_point("isnap:snapshotted")
        elif step == SNAPSHOTTED and p.path == "Clone":
            clone(ctx, spec, p)
            crash_point("isnap:cloned")
        elif step == SNAPSHOTTED:
            copy(ctx, p)
            crash_point("isnap:copied")
        elif step == CLONED:
            flatten(ctx, spec, p)
            crash_point("isnap:flattened")
        elif step in (FLATTENED, COPIED):
            remove_source_snapshot(ctx, p)
            crash_point("isnap:source-snapshot-removed")
        elif step == SOURCE_SNAPSHOT_REMOVED:
            finish(ctx, p)
        else:
            raise RuntimeError(f"unknown step {step!r} in status")


def _related(ctx: FlowContext, spec: ImageSnapshotSpec) -> list[dict[str, str]]:
    """The source PVC, which gets our Events too (``kubectl describe pvc`` matches them by uid)."""
    kind, ref = spec.source.chosen()
    if kind != "persistentVolumeClaim":
        return []
    try:
        uid = k8s.core().read_namespaced_persistent_volume_claim(ref.name, ctx.owner.namespace).metadata.uid
    except Exception as exc:  # noqa: BLE001 - gone or unreadable: Events on the CR only
        if not k8s.is_not_found(exc):
            ctx.logger.warning("cannot read PVC %s for Events: %s", ref.name, exc)
        return []
    return [events.pvc_ref(ctx.owner.namespace, ref.name, uid)]


def _refuse(ctx: FlowContext, exc: references.RefusedError) -> None:
    if exc.final:
        ctx.fail(exc.reason, exc.message)
    ctx.wait(exc.reason, exc.message, delay=5)


def validate(ctx: FlowContext, spec: ImageSnapshotSpec) -> None:
    """Resolve the source, check both ends, record every name before anything exists."""
    try:
        volume = references.resolve_source(ctx.owner.namespace, spec.source, ctx.settings)
        target = volume.target
        if not isinstance(target, references.RbdTarget):
            ctx.fail(Reason.UNSUPPORTED_VOLUME,
                     f"an ImageSnapshot needs a Ceph RBD volume; {volume.describe()} is {target}")
        assert isinstance(target, references.RbdTarget)
        creds = main_credentials(ctx, target.cluster_id)
    except references.RefusedError as exc:
        _refuse(ctx, exc)
        raise  # unreachable
    pool = destination_pool(ctx, spec)
    if not ctx.settings.image_pool_allowed(ctx.owner.namespace, pool):
        ctx.fail(Reason.REFERENCE_NOT_ALLOWED,
                 f"pool {pool} is not an image pool this namespace may write to (allowed: "
                 f"{', '.join(ctx.settings.image_pools_allowed())}); leave spec.destination.pool unset, or ask an "
                 "administrator (operator setting imagePools)")
    destination = rbd.ImageRef(pool, destination_name(ctx, spec))
    source = target.image_ref()
    with ceph.connect(creds) as cluster:
        try:
            with rbd.open_ref(cluster, source, read_only=True) as image:
                size = image.size()
        except Unreachable:
            raise
        except StorageError as exc:
            reason = {NotFound.reason: Reason.UNSUPPORTED_VOLUME,
                      PermissionDenied.reason: Reason.PERMISSION_DENIED}.get(exc.reason, Reason.CEPH_ERROR)
            ctx.fail(reason, f"the RBD image {source} behind {volume.describe()} cannot be opened as "
                     f"{creds.entity}: {exc}")
            raise
        if destination == source:
            ctx.fail(Reason.INVALID_SPEC, f"the destination {destination} is the source image itself")
        taken = _destination_taken(ctx, cluster, destination, target.cluster_id)
    if taken:
        ctx.fail(Reason.DESTINATION_EXISTS, f"image {destination} exists already; name another spec.destination.image "
                 "(or leave it unset for a generated name), or remove that image")
    path = initial_path(spec.method)
    extra: dict[str, Any] = {
        "step": VALIDATED, "source": volume.describe(), "clusterID": target.cluster_id,
        "sourceImage": {"pool": source.pool, "name": source.image,
                        **({"radosNamespace": source.namespace} if source.namespace else {})},
        "destinationPool": pool, "temporaryImage": destination.image, "temporarySnapshot": snapshot_name(ctx.owner.uid),
        "method": path,
    }
    if path == "Copy":
        extra["fallbackReason"] = "spec.method is Copy: the direct clone path was not tried"
    message = f"making image {destination} of {volume.describe()} ({size} bytes) by {path.lower()}"
    ctx.set_phase(CREATING, Reason.IN_PROGRESS, message, extra)
    ctx.related = _related(ctx, spec)
    ctx.event("Normal", "ImageSnapshotStarted", message)


def _destination_taken(ctx: FlowContext, cluster: Any, destination: rbd.ImageRef, cluster_id: str) -> bool:
    """Does an image of that name exist? A missing pool is for the clone to report (and fall back from)."""
    try:
        return rbd.image_exists(cluster, destination)
    except NotFound:
        return False
    except PermissionDenied:
        pass  # the operator's user may not even read the pool: ask the copy user, which will write it
    try:
        with ceph.connect(copy_credentials(ctx, cluster_id)) as other:
            return rbd.image_exists(other, destination)
    except (NotFound, PermissionDenied):
        return False


def take_snapshot(ctx: FlowContext, p: Plan) -> None:
    """The point-in-time snapshot of the (possibly in-use) source, under a short PVC lock."""
    if p.pvc:
        try:
            taken = locks.acquire(ctx.owner, ctx.owner.namespace, p.pvc, LOCK_STATE)
        except locks.Busy as busy:
            wait_or_abort(ctx, p, Reason.VOLUME_BUSY, str(busy))
        except locks.InErrorState as err:
            wait_or_abort(ctx, p, Reason.VOLUME_IN_ERROR_STATE, str(err))
        except references.RefusedError as exc:  # the PVC went away after validation
            abort(ctx, p, exc.reason, exc.message)
        else:
            if taken.took_over_from:
                ctx.event("Normal", "StaleLockRecovered", f"took over the lock left by {taken.took_over_from}")
    try:
        with ceph.connect(main_credentials(ctx, p.cluster_id)) as cluster, \
                rbd.open_ref(cluster, p.source) as image:
            rbd.create_snapshot(image, p.snapshot, exist_ok=True)
    except Busy as exc:
        wait_or_abort(ctx, p, Reason.VOLUME_BUSY, f"another client holds the RBD lock of {p.source}: {exc}")
    except Unreachable:
        raise
    except StorageError as exc:
        # The copy reads a snapshot too: without one there is nothing to fall back to.
        reason = Reason.PERMISSION_DENIED if isinstance(exc, PermissionDenied) else Reason.CEPH_ERROR
        abort(ctx, p, reason, f"taking snapshot {p.snapshot} of {p.source} failed: {exc}")
    crash_point("isnap:snapshot-taken")
    if p.pvc:
        locks.release(ctx.owner, ctx.owner.namespace, p.pvc)
    if ctx.phase != CREATING:  # it waited (VolumeBusy, ...): working again
        ctx.set_phase(CREATING, Reason.IN_PROGRESS, f"snapshot of {p.source} taken", {"step": SNAPSHOTTED})
    else:
        ctx.patch_status({"step": SNAPSHOTTED})


def clone(ctx: FlowContext, spec: ImageSnapshotSpec, p: Plan) -> None:
    creds = main_credentials(ctx, p.cluster_id)
    try:
        with ceph.connect(creds) as cluster:
            try:
                rbd.clone(cluster, p.source, p.snapshot, p.destination)
            except AlreadyExists:
                # A restart after our clone, or another action took the name since validation.
                with rbd.open_ref(cluster, p.destination, read_only=True) as image:
                    owner, parent = _owner_of(image), rbd.image_info(image).parent
                if not our_clone(owner, parent, p.source, p.snapshot, ctx.owner.uid):
                    abort(ctx, p, Reason.DESTINATION_EXISTS, f"image {p.destination} was created by "
                          f"{owner or 'someone else'} after this ImageSnapshot checked the name; it is left alone")
            crash_point("isnap:clone-made")
            with rbd.open_ref(cluster, p.destination) as image:
                _mark_owner(ctx, image)
    except Unreachable:
        raise
    except StorageError as exc:
        direct_path_failed(ctx, spec, p, "the clone", exc.reason, str(exc), creds.entity)
        return
    ctx.patch_status({"step": CLONED})


def flatten(ctx: FlowContext, spec: ImageSnapshotSpec, p: Plan) -> None:
    creds = main_credentials(ctx, p.cluster_id)
    request = MoverRequest(action="rbd-flatten", needs_ceph=True, params={
        "image": p.destination_params(), "parent": p.source_params()})
    _record_mover(ctx, FLATTEN_STEP)
    state = movers.ensure_mover(ctx.owner, FLATTEN_STEP, request, ctx.settings,
                                deadline_seconds=max(ctx.seconds_left(), 60), ceph=creds, wait=MOVER_WATCH_SECONDS)
    if state.phase == "Waiting":
        wait_or_abort(ctx, p, Reason.MOVER_LIMIT, state.message)
    _working(ctx, f"flattening {p.destination}")
    if state.phase == "Running":
        ctx.show_mover_start(state.reason, state.message)
        raise Wait(Reason.IN_PROGRESS, f"flattening {p.destination}", delay=1)
    if state.phase == "Failed":
        direct_path_failed(ctx, spec, p, "the flatten", state.reason, state.message, creds.entity)
        return
    data = state.result.data if state.result else {}
    metrics.BYTES_MOVED.labels(KIND).inc(int(data.get("bytes") or 0))
    ctx.patch_status({"step": FLATTENED, "moverJob": None})
    movers.cleanup_mover(ctx.owner, FLATTEN_STEP, ctx.settings)


def _working(ctx: FlowContext, message: str) -> None:
    """Back to Creating after a wait (Pending, MoverLimit): the mover got its slot."""
    if ctx.phase != CREATING:
        ctx.set_phase(CREATING, Reason.IN_PROGRESS, message)


def _record_mover(ctx: FlowContext, step: str) -> None:
    """The Job's name goes into status before the Job exists (and shows while it runs)."""
    name = movers.job_name(ctx.owner, step)
    if ctx.status.get("moverJob") != name:
        ctx.patch_status({"moverJob": name})


def direct_path_failed(ctx: FlowContext, spec: ImageSnapshotSpec, p: Plan, where: str, reason: str | None,
                       message: str, user: str) -> None:
    """Clone or flatten failed: fall back to the copy (Auto), or clean up and fail (Clone)."""
    if on_direct_failure(spec.method, reason, ctx.deadline_passed()) == "fail":
        if reason == Reason.DEADLINE_EXCEEDED or ctx.deadline_passed():
            abort(ctx, p, Reason.DEADLINE_EXCEEDED, f"{where} did not finish within {ctx.deadline_seconds}s: {message}")
        hint = direct_path_hint(reason, user, p.destination.pool)
        abort(ctx, p, failure_reason(reason),
              f"{where} failed: {message}; {hint}; method Clone does not fall back to a copy (use Auto)")
    why = fallback_reason(where, reason, message, user, p.destination.pool)
    ctx.event("Warning", Reason.FALLBACK_TO_COPY, why)
    metrics.FALLBACKS.labels(reason or "Error").inc()
    # One status patch switches paths: a restart resumes in the copy path, which removes the partial clone itself.
    ctx.set_phase(CREATING, Reason.FALLBACK_TO_COPY, f"copying the data instead: {why}",
                  {"method": "Copy", "fallbackReason": why, "step": SNAPSHOTTED, "moverJob": None, "progress": None})
    crash_point("isnap:fallback")


def copy(ctx: FlowContext, p: Plan) -> None:
    """The fallback (or ``method: Copy``): a mover copies ``source@snapshot`` into a new image, sparse and verified."""
    creds = copy_credentials(ctx, p.cluster_id)
    if movers.mover_state(ctx.owner, COPY_STEP, ctx.settings) is None:
        # Before the copy starts: no flatten left running, no partial clone (or earlier copy) in the way.
        movers.cleanup_mover(ctx.owner, FLATTEN_STEP, ctx.settings)
        if remove_destination(ctx, p):
            metrics.LEFTOVERS.labels(KIND, "image").inc()
    request = MoverRequest(action="rbd-copy", needs_ceph=True, params={
        "source": p.source_params(), "destination": p.destination_params(),
        "create_destination": True, "verify": True})
    _record_mover(ctx, COPY_STEP)
    state = movers.ensure_mover(ctx.owner, COPY_STEP, request, ctx.settings,
                                deadline_seconds=max(ctx.seconds_left(), 60), ceph=creds, wait=MOVER_WATCH_SECONDS)
    if state.phase == "Waiting":
        wait_or_abort(ctx, p, Reason.MOVER_LIMIT, state.message)
    _working(ctx, f"copying {p.source}@{p.snapshot} into {p.destination}")
    if state.phase == "Running":
        ctx.show_mover_start(state.reason, state.message)
        raise Wait(Reason.IN_PROGRESS, f"copying {p.source}@{p.snapshot} into {p.destination}", delay=1)
    if state.phase == "Failed":
        before = ctx.status.get("fallbackReason")
        abort(ctx, p, copy_failure_reason(state.reason), f"the copy as {creds.entity} failed: {state.message}"
              + (f" (it ran because {before})" if before else ""))
    data = state.result.data if state.result else {}
    metrics.BYTES_MOVED.labels(KIND).inc(int(data.get("bytes") or 0))
    ctx.patch_status({"step": COPIED, "moverJob": None, "checksum": data.get("checksum") or None})
    movers.cleanup_mover(ctx.owner, COPY_STEP, ctx.settings)


def remove_source_snapshot(ctx: FlowContext, p: Plan) -> None:
    with ceph.connect(main_credentials(ctx, p.cluster_id)) as cluster:
        try:
            with rbd.open_ref(cluster, p.source) as image:
                rbd.remove_snapshot(image, p.snapshot)
        except NotFound:
            pass  # the source image is gone, and its snapshots with it
    ctx.patch_status({"step": SOURCE_SNAPSHOT_REMOVED, "temporarySnapshot": None})


def finish(ctx: FlowContext, p: Plan) -> None:
    """``snap`` created and protected (what clones of the image will use); the location reported."""
    with ceph.connect(image_credentials(ctx, p)) as cluster:
        fsid = ceph.cluster_fsid(cluster)
        with rbd.open_ref(cluster, p.destination) as image:
            _mark_owner(ctx, image)
            rbd.create_snapshot(image, IMAGE_SNAP, exist_ok=True)
            rbd.protect_snapshot(image, IMAGE_SNAP)
            size = image.size()
    location = rbd.location_url(fsid, p.destination, IMAGE_SNAP)
    how = "cloned and flattened" if p.path == "Clone" else "copied"
    if p.path == "Copy" and ctx.spec.get("method", "Auto") == "Auto":
        how += " (the clone path failed, see fallbackReason)"
    ctx.succeed("Succeeded", Reason.SUCCEEDED, f"{ctx.status.get('source')} is now image {location}, {how}", {
        "step": IMAGE_READY, "location": location, "temporaryImage": None, "temporarySnapshot": None,
        "moverJob": None, "progress": {"percent": 100, "bytesDone": size, "bytesTotal": size},
        "image": {"pool": p.destination.pool, "name": p.destination.image, "size": to_quantity(size)},
    })


def _mark_owner(ctx: FlowContext, image: Any) -> None:
    value = owner_value(ctx.owner.namespace, ctx.owner.name, ctx.owner.uid)
    if _owner_of(image) != value:
        with ceph_errors(f"setting metadata {OWNER_KEY} of image {image.get_name()}"):
            image.metadata_set(OWNER_KEY, value)


def _owner_of(image: Any) -> str | None:
    try:
        return str(image.metadata_get(OWNER_KEY))
    except KeyError:  # python-rbd: no such key
        return None


# --- waiting, failing, cleaning up -----------------------------------------------------------

def wait_or_abort(ctx: FlowContext, p: Plan, reason: str, message: str, delay: float = 5) -> None:
    """Wait (Pending with ``reason``); once the deadline passed, clean up and fail instead."""
    if ctx.deadline_passed():
        abort(ctx, p, Reason.DEADLINE_EXCEEDED, f"gave up after {ctx.deadline_seconds}s: {message}")
    ctx.wait(reason, message, delay=delay)


def abort(ctx: FlowContext, p: Plan, reason: str, message: str) -> None:
    """Fail, after removing every partial object; the cleanup survives a restart (step Aborting)."""
    ctx.undo = None  # this is the undo: its own fail is final
    ctx.set_phase(ctx.phase or CREATING, reason, message, {"step": ABORTING})
    finish_abort(ctx, p)


def finish_abort(ctx: FlowContext, p: Plan) -> None:
    reason = next((c.get("reason") for c in ctx.status.get("conditions") or [] if c.get("type") == READY),
                  None) or Reason.CEPH_ERROR
    message = ctx.status.get("message") or "failed"
    removed = cleanup(ctx, p)
    tail = f"; removed {', '.join(removed)}" if removed else ""
    ctx.fail(reason, f"{message}{tail}; nothing is left behind in the source or destination pool")


def cleanup(ctx: FlowContext, p: Plan) -> list[str]:
    """Remove every temporary object (mover Jobs, destination image, source snapshot, PVC lock); idempotent.

    Raises ``Wait`` while a mover still has the destination open (its pod is stopping).
    """
    removed = []
    for step in (FLATTEN_STEP, COPY_STEP):
        movers.cleanup_mover(ctx.owner, step, ctx.settings)
    if remove_destination(ctx, p):
        removed.append(f"image {p.destination}")
        metrics.LEFTOVERS.labels(KIND, "image").inc()
    try:
        with ceph.connect(main_credentials(ctx, p.cluster_id)) as cluster, rbd.open_ref(cluster, p.source) as image:
            if rbd.remove_snapshot(image, p.snapshot):
                removed.append(f"snapshot {p.source}@{p.snapshot}")
                metrics.LEFTOVERS.labels(KIND, "snapshot").inc()
    except NotFound:
        pass
    except HasDependents as exc:
        raise Wait(Reason.IN_PROGRESS, f"cleaning up: {exc}", delay=5) from None
    if p.pvc:
        locks.release(ctx.owner, ctx.owner.namespace, p.pvc)
    ctx.patch_status({"temporaryImage": None, "temporarySnapshot": None, "moverJob": None, "progress": None})
    return removed


def remove_destination(ctx: FlowContext, p: Plan) -> bool:
    """Remove our destination image (clone or copy) with whichever user may; False if there is none."""
    users = [main_credentials(ctx, p.cluster_id)]
    if ctx.settings.image_copy_secret:
        users.append(copy_credentials(ctx, p.cluster_id))
    if p.path == "Copy":
        users.reverse()
    last: StorageError | None = None
    for creds in users:
        try:
            with ceph.connect(creds) as cluster:
                try:
                    with rbd.open_ref(cluster, p.destination, read_only=True) as image:
                        owner = _owner_of(image)
                except NotFound:
                    return False
                if not owned_by(owner, ctx.owner.uid):
                    ctx.event("Warning", "ImageNotOurs", f"image {p.destination} belongs to {owner}; left alone")
                    return False
                return rbd.remove_image(cluster, p.destination, purge_snapshots=True)
        except Busy as exc:
            raise Wait(Reason.IN_PROGRESS, f"waiting for the mover to let go of {p.destination}: {exc}",
                       delay=3) from None
        except PermissionDenied as exc:
            last = exc
    assert last is not None
    raise last


# --- deletion --------------------------------------------------------------------------------

def finalize(ctx: FlowContext) -> None:
    """Deleting the CR: undo a partial image, or delete (``Delete``) or keep (``Retain``) the image made."""
    spec = ImageSnapshotSpec.model_validate(ctx.spec)
    action = deletion_action(ctx.phase, ctx.status.get("step"), spec.deletion_policy)
    if action == "nothing" or not ctx.status.get("clusterID"):
        return
    p = Plan.from_status(ctx, spec)
    if action == "abort":
        cleanup(ctx, p)
        if not ctx.finished:
            ctx.fail("Aborted", "deleted before the image was made; every partial object was removed")
        return
    if action == "retain":
        ctx.event("Normal", Reason.RETAINED, f"deletionPolicy Retain: image {p.destination} is kept"
                  + (f" at {ctx.status['location']}" if ctx.status.get("location") else ""))
        return
    delete_image(ctx, p)


def delete_image(ctx: FlowContext, p: Plan) -> None:
    if ctx.phase != DELETING:
        ctx.set_phase(DELETING, Reason.DELETING, f"removing image {p.destination}")
    try:
        with ceph.connect(image_credentials(ctx, p)) as cluster:
            try:
                with rbd.open_ref(cluster, p.destination, read_only=True) as image:
                    owner = _owner_of(image)
                    clones = rbd.children(image, IMAGE_SNAP) if image.snap_exists(IMAGE_SNAP) else []
            except NotFound:
                ctx.event("Normal", "ImageDeleted", f"image {p.destination} was gone already")
                return
            if not owned_by(owner, ctx.owner.uid):
                ctx.event("Warning", "ImageNotOurs", f"image {p.destination} belongs to {owner}; left alone")
                return
            if clones:
                error_deleting(ctx, Reason.IMAGE_HAS_CLONES, _clones_message(p, [str(c) for c in clones]))
            rbd.remove_image(cluster, p.destination, purge_snapshots=True)
    except HasDependents as exc:
        error_deleting(ctx, Reason.IMAGE_HAS_CLONES, _clones_message(p, [str(exc)]))
    except Busy as exc:
        error_deleting(ctx, Reason.DELETION_FAILED, f"image {p.destination} is in use: {exc}")
    except Unreachable:
        raise
    except StorageError as exc:
        error_deleting(ctx, Reason.DELETION_FAILED, f"removing image {p.destination} failed: {exc}")
    ctx.event("Normal", "ImageDeleted", f"image {p.destination} removed")


def _clones_message(p: Plan, clones: list[str]) -> str:
    return (f"image {p.destination} cannot be deleted while clones of its snapshot {IMAGE_SNAP} depend on it: "
            f"{', '.join(clones)}; flatten them (rbd flatten POOL/IMAGE) or delete them, and the deletion goes on "
            "by itself (or set deletionPolicy Retain on a new ImageSnapshot next time)")


def error_deleting(ctx: FlowContext, reason: str, message: str) -> None:
    """Deletion cannot go on now: ErrorDeleting with the reason; kopf retries, the object stays."""
    if ctx.phase != ERROR_DELETING or ctx.status.get("message") != message:
        ctx.set_phase(ERROR_DELETING, reason, message)
        ctx.event("Warning", reason, message)
    raise Wait(reason, message, delay=10)

