"""ImageSnapshot (seed 002, Nova's RBD direct snapshots): an RBD disk into an
image pool by snapshot, clone and flatten, with a full-copy fallback.

Before any step, ``plan`` decides every refusal: the source resolves to an RBD image that opens,
the destination pool is an image pool this namespace may write, the destination name is free.
Then the steps (``FLOW`` at the bottom; engine/steps.py runs them, records each in ``status.step``,
resumes after the last; every step is idempotent):

  Validated      names of the temporary snapshot and of the destination image recorded (before
                 either exists), path chosen (``status.method``)
  Snapshotted    temporary snapshot ``savepoint-image-<uid>`` on the source, under a short PVC lock
  Cloned         (direct path) ``source@snapshot`` cloned into the destination, only if the name is
                 free, and marked with our owner metadata in the same step
  Flattened      (direct path) the clone flattened by a mover Job, with progress
  ImageCreated   (copy path) an empty image made and marked ours as ``savepoint-staging-<uid>``,
                 then renamed to the destination only if the name is free (atomic in librbd)
  Copied         (copy path) a mover Job copied ``source@snapshot`` onto it: sparse, verified
  SourceSnapshotRemoved  the temporary snapshot is gone from the source
  ImageReady     ``snap`` created and protected on the image → Succeeded with
                 ``status.location`` ``rbd://<fsid>/<pool>/<image>/snap``

A failure after Validated is undone in reverse (phase ``Aborting`` while it runs, finished after a
restart): the movers stopped, our destination image removed (never one whose owner metadata names
someone else), the temporary snapshot removed, the PVC lock released.  The source is only read, so
nothing of it needs putting back.

The direct path falls back to the copy (``method: Auto``) on any Ceph error of
the clone or flatten step other than an unreachable cluster (which is retried):
the step that failed removes the partial clone, ``status.method`` becomes
``Copy`` and ``status.fallbackReason`` says why in a form a user can act on
(e.g. the caps to add); the steps of the direct path then pass and the copy
path's run. ``Clone`` fails instead, through the undo; ``Copy`` skips the
direct path.

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

**Whose image is it.** The destination name is checked to be free in ``plan``,
and the generated name carries the CR's uid. The step that makes the image
(clone, or create for the copy) makes it only if the name is still free and
marks it with the metadata key ``savepoint.dev/owner`` (``<namespace>/<name>
<uid>``) at once; an image of that name it did not make (another action took
the name meanwhile) ends the action ``DestinationExists`` naming its owner,
before anything is written. Nothing ever removes or writes an image whose
metadata does not name this ImageSnapshot.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from savepoint import metrics
from savepoint.api import (
    DeletionPolicy,
    ImageMethod,
    ImageSnapshotPhase,
    ImageSnapshotSpec,
    Reason,
    to_quantity,
)
from savepoint.engine import cephpool
from savepoint.engine.context import FlowContext, MoverFailed, Stop, Wait
from savepoint.engine.faults import crash_point
from savepoint.engine.steps import Abort, Flow, Step, finalize_flow, run_flow
from savepoint.kube import cephconfig, events, k8s, locks, references
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
STAGING_PREFIX = "savepoint-staging-"  # the copy path's image before it takes the destination name
IMAGE_SNAP = "snap"  # the conventional snapshot Glance's direct_url points at
OWNER_KEY = "savepoint.dev/owner"  # image metadata: which ImageSnapshot made the image
LOCK_STATE = "image-snapshotting"
FLATTEN_STEP = "flatten"
COPY_STEP = "copy"

IMAGE_READY = "ImageReady"  # the last step, recorded with the success

CREATING = ImageSnapshotPhase.CREATING
DELETING = ImageSnapshotPhase.DELETING
ERROR_DELETING = ImageSnapshotPhase.ERROR_DELETING
SUCCEEDED = ImageSnapshotPhase.SUCCEEDED

Path = Literal["Clone", "Copy"]


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
    if phase in (SUCCEEDED, DELETING, ERROR_DELETING):
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
    pvc: str | None
    method: ImageMethod  # spec.method; the path taken is in status (``current_path``): a fallback changes it
    label: str = ""  # the source for people (pvc/NAME, rbd:POOL/IMAGE); from plan only
    size: int = 0  # bytes of the source; from plan only

    @classmethod
    def from_status(cls, ctx: FlowContext, spec: ImageSnapshotSpec) -> Plan:
        """What earlier steps recorded.  The destination is not taken from status: it is derived again
        from the immutable spec (status is for people and for resuming, never the authority on what to
        delete), and every delete checks the image's owner metadata as well."""
        st = ctx.status
        src = st["sourceImage"]
        return cls(
            cluster_id=st["clusterID"],
            source=rbd.ImageRef(src["pool"], src["name"], src.get("radosNamespace") or None),
            snapshot=snapshot_name(ctx.owner.uid),
            destination=rbd.ImageRef(destination_pool(ctx, spec), destination_name(ctx, spec)),
            pvc=source_pvc(spec),
            method=spec.method,
            label=str(st.get("source") or ""),
        )

    def source_params(self) -> dict[str, Any]:
        return {"pool": self.source.pool, "image": self.source.image, "namespace": self.source.namespace,
                "snapshot": self.snapshot}

    def destination_params(self) -> dict[str, Any]:
        return {"pool": self.destination.pool, "image": self.destination.image}


def current_path(ctx: FlowContext) -> Path:
    """The path recorded in status (Validated records it, a fallback changes it to Copy)."""
    return "Copy" if ctx.status.get("method") == "Copy" else "Clone"


def on_copy_path(ctx: FlowContext, p: Plan) -> bool:
    """The copy path's own steps (ImageCreated, Copied) apply: method Copy, or Auto after a fallback."""
    return current_path(ctx) == "Copy"


def source_pvc(spec: ImageSnapshotSpec) -> str | None:
    kind, ref = spec.source.chosen()
    return ref.name if kind == "persistentVolumeClaim" else None


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
    return copy_credentials(ctx, p.cluster_id) if current_path(ctx) == "Copy" else main_credentials(ctx, p.cluster_id)


def step_credentials(ctx: FlowContext, get: Any, p: Plan) -> ceph.CephCredentials:
    """Credentials inside a step: a broken ceph-csi config waits (until the deadline, then the undo runs)."""
    try:
        return get(ctx, p.cluster_id)
    except references.RefusedError as exc:
        ctx.wait(exc.reason, f"{exc.message} (the ImageSnapshot goes on when this is fixed)", delay=10)


def undo_credentials(ctx: FlowContext, get: Any, p: Plan) -> ceph.CephCredentials:
    """Credentials inside an undo: a broken ceph-csi config waits for as long as it takes (the undo must finish)."""
    try:
        return get(ctx, p.cluster_id)
    except references.RefusedError as exc:
        raise Wait(exc.reason, f"{exc.message} (undoing the ImageSnapshot goes on when this is fixed)",
                   delay=10) from None


# --- plan: every refusal, before any step -------------------------------------------------------

def plan(ctx: FlowContext) -> Plan:
    """Resolve the source, check both ends (the source opens, the pool is allowed, the name is free)."""
    spec = ImageSnapshotSpec.model_validate(ctx.spec)
    try:
        volume = references.resolve_source(ctx.owner.namespace, spec.source, ctx.settings)
        target = volume.target
        if not isinstance(target, references.RbdTarget):
            ctx.fail(Reason.UNSUPPORTED_VOLUME,
                     f"an ImageSnapshot needs a Ceph RBD volume; {volume.describe()} is {target}")
        creds = main_credentials(ctx, target.cluster_id)
    except references.RefusedError as exc:
        ctx.refuse(exc)
    pool = destination_pool(ctx, spec)
    if not ctx.settings.image_pool_allowed(ctx.owner.namespace, pool):
        ctx.fail(Reason.REFERENCE_NOT_ALLOWED,
                 f"pool {pool} is not an image pool this namespace may write to (allowed: "
                 f"{', '.join(ctx.settings.image_pools_allowed())}); leave spec.destination.pool unset, or ask an "
                 "administrator (operator setting imagePools)")
    destination = rbd.ImageRef(pool, destination_name(ctx, spec))
    source = target.image_ref()
    with cephpool.session(creds) as cluster:
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
        if destination == source:
            ctx.fail(Reason.INVALID_SPEC, f"the destination {destination} is the source image itself")
        taken, owner = _destination_taken(ctx, cluster, destination, target.cluster_id)
    if taken:
        ctx.fail(Reason.DESTINATION_EXISTS, f"image {destination} exists already ({_owner_label(owner)}); name "
                 "another spec.destination.image (or leave it unset for a generated name), or remove that image")
    p = Plan(target.cluster_id, source, snapshot_name(ctx.owner.uid), destination, source_pvc(spec), spec.method,
             label=volume.describe(), size=size)
    ctx.related = _related(ctx, spec)
    return p


def _owner_label(owner: str | None) -> str:
    return f"made by {owner}" if owner else "not made by an ImageSnapshot: it has no savepoint.dev/owner metadata"


def _destination_taken(ctx: FlowContext, cluster: Any, destination: rbd.ImageRef,
                       cluster_id: str) -> tuple[bool, str | None]:
    """Does an image of that name exist, and who made it? A missing pool is for the clone to report
    (and fall back from)."""
    try:
        return _owner_if_exists(cluster, destination)
    except NotFound:
        return False, None
    except PermissionDenied:
        pass  # the operator's user may not even read the pool: ask the copy user, which will write it
    try:
        with cephpool.session(copy_credentials(ctx, cluster_id)) as other:
            return _owner_if_exists(other, destination)
    except (NotFound, PermissionDenied):
        return False, None


def _owner_if_exists(cluster: Any, ref: rbd.ImageRef) -> tuple[bool, str | None]:
    if not rbd.image_exists(cluster, ref):
        return False, None
    try:
        with rbd.open_ref(cluster, ref, read_only=True) as image:
            return True, _owner_of(image)
    except NotFound:  # removed meanwhile
        return False, None


def resume(ctx: FlowContext) -> Plan | None:
    """After Validated the flow works from what it recorded (the PVC may be gone by then).  None when
    nothing was recorded yet (an undo of the first step then has nothing to undo)."""
    spec = ImageSnapshotSpec.model_validate(ctx.spec)
    if not ctx.status.get("sourceImage") or not ctx.status.get("clusterID"):
        return None
    ctx.related = _related(ctx, spec)
    return Plan.from_status(ctx, spec)


def _related(ctx: FlowContext, spec: ImageSnapshotSpec) -> list[dict[str, str]]:
    """The source PVC, which gets our Events too (``kubectl describe pvc`` matches them by uid)."""
    pvc = source_pvc(spec)
    if pvc is None:
        return []
    try:
        uid = k8s.core().read_namespaced_persistent_volume_claim(pvc, ctx.owner.namespace).metadata.uid
    except Exception as exc:  # noqa: BLE001 - gone or unreadable: Events on the CR only
        if not k8s.is_not_found(exc):
            ctx.logger.warning("cannot read PVC %s for Events: %s", pvc, exc)
        return []
    return [events.pvc_ref(ctx.owner.namespace, pvc, uid)]


# --- the steps -----------------------------------------------------------------------------------

def record_plan(ctx: FlowContext, p: Plan) -> None:
    """Validated: every name recorded before the object exists; the path chosen."""
    path = initial_path(p.method)
    extra: dict[str, Any] = {
        "source": p.label, "clusterID": p.cluster_id,
        "sourceImage": {"pool": p.source.pool, "name": p.source.image,
                        **({"radosNamespace": p.source.namespace} if p.source.namespace else {})},
        "destinationPool": p.destination.pool, "temporaryImage": p.destination.image,
        "temporarySnapshot": p.snapshot, "method": path,
    }
    if path == "Copy":
        extra["fallbackReason"] = "spec.method is Copy: the direct clone path was not tried"
    message = f"making image {p.destination} of {p.label} ({p.size} bytes) by {path.lower()}"
    ctx.set_phase(CREATING, Reason.IN_PROGRESS, message, extra, defer=True)
    ctx.event("Normal", "ImageSnapshotStarted", message, wait=False)


def forget_names(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Validated (the last undo): the temporary names leave status with the final write."""
    a.note("nothing is left behind in the source or destination pool")
    a.extra.update({"temporaryImage": None, "temporarySnapshot": None, "moverJob": None, "progress": None})


def take_snapshot(ctx: FlowContext, p: Plan) -> None:
    """Snapshotted: the point-in-time snapshot of the (possibly in-use) source, under a short PVC lock."""
    if p.pvc:
        try:
            ctx.lock_or_wait(ctx.owner.namespace, p.pvc, LOCK_STATE)
        except references.RefusedError as exc:  # the PVC went away after validation
            ctx.fail(exc.reason, exc.message, nothing_written=True)
    creds = step_credentials(ctx, main_credentials, p)
    try:
        with cephpool.session(creds) as cluster, rbd.open_ref(cluster, p.source) as image:
            rbd.create_snapshot(image, p.snapshot, exist_ok=True)
    except Busy as exc:
        ctx.wait(Reason.VOLUME_BUSY, f"another client holds the RBD lock of {p.source}: {exc}")
    except Unreachable:
        raise
    except StorageError as exc:
        # The copy reads a snapshot too: without one there is nothing to fall back to.
        reason = Reason.PERMISSION_DENIED if isinstance(exc, PermissionDenied) else Reason.CEPH_ERROR
        ctx.fail(reason, f"taking snapshot {p.snapshot} of {p.source} failed: {exc}")
    crash_point("isnap:snapshot-taken")
    if p.pvc:
        locks.release(ctx.owner, ctx.owner.namespace, p.pvc)
    if ctx.phase != CREATING:  # it waited (VolumeBusy, ...): working again
        ctx.set_phase(CREATING, Reason.IN_PROGRESS, f"snapshot of {p.source} taken")


def drop_snapshot(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Snapshotted: the temporary snapshot removed (once no clone depends on it), the lock released."""
    if p is None:  # killed before anything was recorded: only the lock can be held
        pvc = source_pvc(ImageSnapshotSpec.model_validate(ctx.spec))
        if pvc:
            locks.release(ctx.owner, ctx.owner.namespace, pvc)
        return
    creds = undo_credentials(ctx, main_credentials, p)
    try:
        with cephpool.session(creds) as cluster, rbd.open_ref(cluster, p.source) as image:
            if rbd.remove_snapshot(image, p.snapshot):
                a.note(f"removed snapshot {p.source}@{p.snapshot}")
                metrics.LEFTOVERS.labels(KIND, "snapshot", namespace=ctx.owner.namespace).inc()
    except NotFound:
        pass  # the source image is gone, and its snapshots with it
    except HasDependents as exc:
        raise Wait(Reason.ABORTING, f"undoing: {exc}", delay=5) from None
    if p.pvc:
        locks.release(ctx.owner, ctx.owner.namespace, p.pvc)


def clone(ctx: FlowContext, p: Plan) -> None:
    """Cloned: ``source@snapshot`` cloned into the destination only if the name is free, marked ours at once."""
    if current_path(ctx) == "Copy":
        drop_direct_path(ctx, p)  # after a fallback (or method Copy): nothing of the direct path may stay
        return
    creds = step_credentials(ctx, main_credentials, p)
    try:
        with cephpool.session(creds) as cluster:
            try:
                rbd.clone(cluster, p.source, p.snapshot, p.destination)
            except AlreadyExists:
                # A restart after our clone, or another action took the name since the plan checked it.
                with rbd.open_ref(cluster, p.destination, read_only=True) as image:
                    owner, parent = _owner_of(image), rbd.image_info(image).parent
                if not our_clone(owner, parent, p.source, p.snapshot, ctx.owner.uid):
                    ctx.fail(Reason.DESTINATION_EXISTS, f"image {p.destination} was created after this "
                             f"ImageSnapshot checked the name ({_owner_label(owner)}); it is left alone",
                             nothing_written=True)
            crash_point("isnap:clone-made")
            with rbd.open_ref(cluster, p.destination) as image:
                _mark_owner(ctx, image)
    except Unreachable:
        raise
    except StorageError as exc:
        fall_back(ctx, p, "the clone", exc.reason, str(exc), creds.entity)


def flatten(ctx: FlowContext, p: Plan) -> None:
    """Flattened: a mover Job copies the parent's data into the clone, which then stands alone."""
    if current_path(ctx) == "Copy":
        drop_direct_path(ctx, p)
        return
    creds = step_credentials(ctx, main_credentials, p)
    request = MoverRequest(action="rbd-flatten", needs_ceph=True, params={
        "image": p.destination_params(), "parent": p.source_params()})
    try:
        result = ctx.run_mover(FLATTEN_STEP, request, ceph=creds, phase=CREATING,
                               message=f"flattening {p.destination}")
    except MoverFailed as failed:  # the real fallback: the copy
        fall_back(ctx, p, "the flatten", failed.state.reason, failed.state.message, creds.entity)
        return
    ctx.finish_mover(FLATTEN_STEP)


def fall_back(ctx: FlowContext, p: Plan, where: str, reason: str | None, message: str, user: str) -> None:
    """Clone or flatten failed: fail through the undo (Clone, or out of time), or switch to the copy (Auto).

    The switch is recorded first (``status.method: Copy``); the direct path's objects are removed after it,
    by this step and again by every later step of the direct path (a restart midway finishes it)."""
    if on_direct_failure(p.method, reason, ctx.deadline_passed()) == "fail":
        if reason == Reason.DEADLINE_EXCEEDED or ctx.deadline_passed():
            ctx.fail(Reason.DEADLINE_EXCEEDED, f"{where} did not finish within {ctx.deadline_seconds}s: {message}")
        hint = direct_path_hint(reason, user, p.destination.pool)
        ctx.fail(failure_reason(reason),
                 f"{where} failed: {message}; {hint}; method Clone does not fall back to a copy (use Auto)")
    why = fallback_reason(where, reason, message, user, p.destination.pool)
    ctx.event("Warning", Reason.FALLBACK_TO_COPY, why)
    metrics.FALLBACKS.labels(reason or "Error").inc()
    ctx.set_phase(CREATING, Reason.FALLBACK_TO_COPY, f"copying the data instead: {why}",
                  {"method": "Copy", "fallbackReason": why, "moverJob": None, "progress": None})
    crash_point("isnap:fallback")
    drop_direct_path(ctx, p)


def drop_direct_path(ctx: FlowContext, p: Plan) -> None:
    """After a fallback: no flatten left running, no partial clone in the copy's way (idempotent)."""
    if ImageMethod(p.method) is ImageMethod.COPY:
        return  # the direct path never ran
    ctx.stop_mover(FLATTEN_STEP)
    if remove_destination(ctx, p):
        metrics.LEFTOVERS.labels(KIND, "image", namespace=ctx.owner.namespace).inc()


def stop_flatten(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Flattened: the flatten Job removed, and no pod of it still holds the clone."""
    ctx.stop_mover(FLATTEN_STEP)


def create_destination(ctx: FlowContext, p: Plan) -> None:
    """ImageCreated (copy path): an empty image of the source's size, made and marked ours under a staging
    name of our own, then renamed to the destination only if that name is free (librbd refuses a taken
    name atomically): the image appears under the destination name already marked, and the copy then
    writes only an image that is ours."""
    creds = step_credentials(ctx, copy_credentials, p)
    staging = staging_ref(ctx, p)
    try:
        with cephpool.session(creds) as cluster:
            if _ours(ctx, cluster, p.destination):
                return  # renamed before a restart
            if not _ours(ctx, cluster, staging):
                with rbd.open_ref(cluster, p.source, snapshot=p.snapshot, read_only=True) as source:
                    size = source.size()
                try:
                    rbd.create_image(cluster, staging, size)
                except AlreadyExists:
                    pass  # ours: made before a restart, not marked yet (the name holds our uid)
                with rbd.open_ref(cluster, staging) as image:
                    _mark_owner(ctx, image)
            crash_point("isnap:image-created")
            try:
                rbd.rename_image(cluster, staging, p.destination.image)
            except AlreadyExists:
                with rbd.open_ref(cluster, p.destination, read_only=True) as image:
                    owner = _owner_of(image)
                ctx.fail(Reason.DESTINATION_EXISTS, f"image {p.destination} was created after this ImageSnapshot "
                         f"checked the name ({_owner_label(owner)}); it is left alone", nothing_written=True)
    except Unreachable:
        raise
    except StorageError as exc:
        ctx.fail(copy_failure_reason(exc.reason), f"creating image {p.destination} as {creds.entity} failed: {exc}"
                 + _ran_because(ctx))


def staging_ref(ctx: FlowContext, p: Plan) -> rbd.ImageRef:
    """Where the copy path's image is made before it takes the destination name (the name holds our uid)."""
    return rbd.ImageRef(p.destination.pool, f"{STAGING_PREFIX}{ctx.owner.uid[:13]}", p.destination.namespace)


def _ours(ctx: FlowContext, cluster: Any, ref: rbd.ImageRef) -> bool:
    try:
        with rbd.open_ref(cluster, ref, read_only=True) as image:
            return owned_by(_owner_of(image), ctx.owner.uid)
    except NotFound:
        return False


def remove_image_made(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Cloned and of ImageCreated: our destination image (and staging image) removed, never one
    that is not ours."""
    if p is None:
        return
    for ref in (p.destination, staging_ref(ctx, p)):
        if remove_destination(ctx, p, ref, undoing=True):
            a.note(f"removed image {ref}")
            metrics.LEFTOVERS.labels(KIND, "image", namespace=ctx.owner.namespace).inc()


def copy(ctx: FlowContext, p: Plan) -> None:
    """Copied (copy path): a mover copies ``source@snapshot`` onto our new image, sparse and verified."""
    creds = step_credentials(ctx, copy_credentials, p)
    request = MoverRequest(action="rbd-copy", needs_ceph=True, params={
        "source": p.source_params(), "destination": p.destination_params(), "verify": True})
    try:
        result = ctx.run_mover(COPY_STEP, request, ceph=creds, phase=CREATING,
                               message=f"copying {p.source}@{p.snapshot} into {p.destination}")
    except MoverFailed as failed:  # the mover's own reason is more precise than MoverFailed
        ctx.fail(copy_failure_reason(failed.state.reason),
                 f"the copy as {creds.entity} failed: {failed.state.message}" + _ran_because(ctx),
                 nothing_written=failed.nothing_written)
    ctx.defer_status({"checksum": result.data.get("checksum") or None})  # with the step's mark
    ctx.finish_mover(COPY_STEP)


def _ran_because(ctx: FlowContext) -> str:
    before = ctx.status.get("fallbackReason")
    return f" (it ran because {before})" if before else ""


def stop_copy(ctx: FlowContext, p: Plan | None, a: Abort) -> None:
    """Undo of Copied: the copy Job removed, and no pod of it still holds the image."""
    ctx.stop_mover(COPY_STEP)


def remove_source_snapshot(ctx: FlowContext, p: Plan) -> None:
    creds = step_credentials(ctx, main_credentials, p)
    with cephpool.session(creds) as cluster:
        try:
            with rbd.open_ref(cluster, p.source) as image:
                rbd.remove_snapshot(image, p.snapshot)
        except NotFound:
            pass  # the source image is gone, and its snapshots with it
    ctx.defer_status({"temporarySnapshot": None})  # with the step's mark: a repeat finds no snapshot


def finish(ctx: FlowContext, p: Plan) -> None:
    """ImageReady: ``snap`` created and protected (what clones of the image will use); the location reported."""
    creds = step_credentials(ctx, copy_credentials if current_path(ctx) == "Copy" else main_credentials, p)
    with cephpool.session(creds) as cluster:
        fsid = ceph.cluster_fsid(cluster)
        with rbd.open_ref(cluster, p.destination) as image:
            _mark_owner(ctx, image)
            rbd.create_snapshot(image, IMAGE_SNAP, exist_ok=True)
            rbd.protect_snapshot(image, IMAGE_SNAP)
            size = image.size()
    location = rbd.location_url(fsid, p.destination, IMAGE_SNAP)
    path = current_path(ctx)
    how = "cloned and flattened" if path == "Clone" else "copied"
    if path == "Copy" and ImageMethod(p.method) is ImageMethod.AUTO:
        how += " (the clone path failed, see fallbackReason)"
    ctx.succeed(SUCCEEDED, Reason.SUCCEEDED, f"{ctx.status.get('source')} is now image {location}, {how}", {
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


def remove_destination(ctx: FlowContext, p: Plan, ref: rbd.ImageRef | None = None, *,
                       undoing: bool = False) -> bool:
    """Remove our destination image (clone or copy; or ``ref``, the staging image) with whichever user may;
    False if there is none (or it is not ours: then it is left alone, with an Event).  The staging image
    is ours unmarked too (killed between its create and its marking): its name holds our uid.  Raises
    ``Wait`` while a mover still has it open."""
    ref = ref or p.destination
    get = undo_credentials if undoing else step_credentials
    candidates = [get(ctx, main_credentials, p)]
    if ctx.settings.image_copy_secret:
        candidates.append(get(ctx, copy_credentials, p))
    if current_path(ctx) == "Copy":
        candidates.reverse()
    last: StorageError | None = None
    for creds in candidates:
        try:
            with cephpool.session(creds) as cluster:
                try:
                    with rbd.open_ref(cluster, ref, read_only=True) as image:
                        owner = _owner_of(image)
                except NotFound:
                    return False
                staged = ref == staging_ref(ctx, p) and owner is None
                if not owned_by(owner, ctx.owner.uid) and not staged:
                    ctx.event("Warning", "ImageNotOurs", f"image {ref} belongs to {owner}; left alone")
                    return False
                return rbd.remove_image(cluster, ref, purge_snapshots=True)
        except Busy as exc:
            raise Wait(Reason.ABORTING if undoing else Reason.IN_PROGRESS,
                       f"waiting for the mover to let go of {ref}: {exc}", delay=3) from None
        except PermissionDenied as exc:
            last = exc
    assert last is not None
    raise last


FLOW: Flow[Plan] = Flow("ImageSnapshot", plan=plan, resume=resume, steps=(  # type: ignore[arg-type]
    Step("Validated", record_plan, undo=forget_names),
    Step("Snapshotted", take_snapshot, undo=drop_snapshot),
    Step("Cloned", clone, undo=remove_image_made),
    # The data steps write only our own new image (never the source); a failure removes that image.
    Step("Flattened", flatten, undo=stop_flatten, touches_data=True),
    Step("ImageCreated", create_destination, undo=remove_image_made, applies=on_copy_path),
    Step("Copied", copy, undo=stop_copy, touches_data=True, applies=on_copy_path),
    Step("SourceSnapshotRemoved", remove_source_snapshot),
    Step(IMAGE_READY, finish),
))

_handled: set[str] = set()  # uids this operator process has reconciled: any other one in flight was adopted


def reconcile(ctx: FlowContext) -> None:
    if ctx.phase in (DELETING, ERROR_DELETING):
        return  # the deletion handler owns it now
    adopted = ctx.owner.uid not in _handled and bool(ctx.status.get("step"))
    _handled.add(ctx.owner.uid)
    if adopted:
        ctx.related = _related(ctx, ImageSnapshotSpec.model_validate(ctx.spec))
        ctx.event("Normal", Reason.ADOPTED, f"picked up after an operator restart at step {ctx.status['step']}: "
                  "resuming (a running mover Job is followed, not started again)")
    try:
        run_flow(FLOW, ctx)
    except Stop:
        _handled.discard(ctx.owner.uid)
        raise


# --- deletion --------------------------------------------------------------------------------

def finalize(ctx: FlowContext) -> None:
    """Deleting the CR: undo an unfinished one; delete (``Delete``) or keep (``Retain``) the image made."""
    spec = ImageSnapshotSpec.model_validate(ctx.spec)
    action = deletion_action(ctx.phase, ctx.status.get("step"), spec.deletion_policy)
    if action in ("nothing", "abort"):
        finalize_flow(FLOW, ctx, reason=Reason.ABORTED, message="deleted before the image was made")
        if ctx.phase != SUCCEEDED:
            return
        # Finished instead of undone (a runner that completes a flow past its data steps): the image made
        # follows the deletion policy like any other.
        action = deletion_action(ctx.phase, ctx.status.get("step"), spec.deletion_policy)
    p = Plan.from_status(ctx, spec)
    if action == "retain":
        ctx.event("Normal", Reason.RETAINED, f"deletionPolicy Retain: image {p.destination} is kept"
                  + (f" at {ctx.status['location']}" if ctx.status.get("location") else ""))
        return
    delete_image(ctx, p)


def delete_image(ctx: FlowContext, p: Plan) -> None:
    if ctx.phase != DELETING:
        ctx.set_phase(DELETING, Reason.DELETING, f"removing image {p.destination}")
    try:
        creds = image_credentials(ctx, p)
    except references.RefusedError as exc:
        ctx.error_deleting(Reason.DELETION_FAILED, f"removing image {p.destination}: {exc.message}")
    try:
        with cephpool.session(creds) as cluster:
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
                ctx.error_deleting(Reason.IMAGE_HAS_CLONES, _clones_message(p, [str(c) for c in clones]), delay=10)
            rbd.remove_image(cluster, p.destination, purge_snapshots=True)
    except HasDependents as exc:
        ctx.error_deleting(Reason.IMAGE_HAS_CLONES, _clones_message(p, [str(exc)]), delay=10)
    except Busy as exc:
        ctx.error_deleting(Reason.DELETION_FAILED, f"image {p.destination} is in use: {exc}", delay=10)
    except Unreachable:
        raise
    except StorageError as exc:
        ctx.error_deleting(Reason.DELETION_FAILED, f"removing image {p.destination} failed: {exc}", delay=10)
    ctx.event("Normal", "ImageDeleted", f"image {p.destination} removed")


def _clones_message(p: Plan, clones: list[str]) -> str:
    return (f"image {p.destination} cannot be deleted while clones of its snapshot {IMAGE_SNAP} depend on it: "
            f"{', '.join(clones)}; flatten them (rbd flatten POOL/IMAGE) or delete them, and the deletion goes on "
            "by itself (or set deletionPolicy Retain on a new ImageSnapshot next time)")
