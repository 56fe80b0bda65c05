"""The Savepoint lock and state annotations on PVCs (and VolumeSnapshots).

One Savepoint action at a time may work on a volume. It holds
``savepoint.dev/lock: <Kind>/<name>`` with ``savepoint.dev/lock-uid: <uid>``
and, while holding it, shows what it does in ``savepoint.dev/state``
(``reverting``, ``backup-creating``, ...), remembering the state it found in
``savepoint.dev/previous-state`` (empty: available) — the seeds'
``previous_status``. Releasing restores that state, or leaves an error state
(anything ending in ``error``) that blocks every later action until an
administrator resets it.

Every write carries the ``resourceVersion`` it was decided on, so the API
server refuses it (409) when anything changed in between: two CRs can never
both win. A conflict means "read again and decide again".

The decisions are pure functions of the annotations (``plan_*``), unit-tested
without a cluster; ``acquire``/``release``/``reset_state`` add the reads,
the conditional writes and the retries. The same functions serve any object
kind through a small ``Resource`` description (PVC, VolumeSnapshot).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from savepoint import metrics
from savepoint.kube import k8s
from savepoint.api.reasons import Reason
from savepoint.kube.references import SNAPSHOT_GROUP, SNAPSHOT_VERSION, RefusedError

PREFIX = "savepoint.dev/"
LOCK = PREFIX + "lock"
LOCK_UID = PREFIX + "lock-uid"
STATE = PREFIX + "state"
PREVIOUS_STATE = PREFIX + "previous-state"

AVAILABLE = ""  # no state annotation: nothing is going on and nothing went wrong
ERROR = "error"
MAX_ATTEMPTS = 10  # conflicting writes retried; each one means someone else made progress

Annotations = Mapping[str, str]
Changes = dict[str, str | None]  # merge-patch of annotations: None removes one


# ---- what is locked -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resource:
    """A namespaced kind that carries the annotations, and how to read and patch it."""

    kind: str
    group: str  # "" for the core API
    version: str
    plural: str
    cli_name: str  # how kubectl names it in messages: pvc, volumesnapshot
    not_found: Reason

    def path(self, namespace: str, name: str) -> str:
        return k8s.path(self.plural, name, namespace=namespace, group=self.group, version=self.version)

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        return k8s.request("GET", self.path(namespace, name))

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return k8s.request("PATCH", self.path(namespace, name), body, content_type="application/merge-patch+json")


PVC = Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", "pvc", Reason.PVC_NOT_FOUND)
VOLUME_SNAPSHOT = Resource("VolumeSnapshot", SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", "volumesnapshot",
                           Reason.SNAPSHOT_NOT_FOUND)


# ---- holders and states ---------------------------------------------------------------------


class Holder(NamedTuple):
    """The CR named by a lock: ``(kind, name, uid)``."""

    kind: str
    name: str
    uid: str

    @classmethod
    def of(cls, owner: k8s.Owner) -> Holder:
        return cls(owner.kind, owner.name, owner.uid)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" if self.kind else self.name


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def holder_from(annotations: Annotations) -> Holder | None:
    value = annotations.get(LOCK)
    if not value:
        return None
    kind, _, name = value.partition("/")
    if not name:  # not "<Kind>/<name>": someone wrote it by hand; keep it as an opaque name
        kind, name = "", value
    return Holder(kind, name, annotations.get(LOCK_UID, ""))


def holder(obj: Mapping[str, Any]) -> Holder | None:
    """Who holds the lock on an object (an API dict), or None."""
    return holder_from(annotations_of(obj))


def state_of(obj: Mapping[str, Any]) -> str:
    """The object's state annotation; ``""`` (AVAILABLE) when unset."""
    return annotations_of(obj).get(STATE, AVAILABLE)


def is_error_state(state: str | None) -> bool:
    """``error``, ``backup-restoring-error``, ...: left by a failed action, cleared only by a reset."""
    return state is not None and state.endswith(ERROR)


def reset_hint(resource: Resource, name: str) -> str:
    """The two documented ways to reset a state, as a user would type them."""
    return (f"`kubectl savepoint reset-state {resource.cli_name}/{name}` or "
            f"`kubectl annotate {resource.cli_name} {name} {STATE}-`")


class Busy(RefusedError):
    """Another live CR holds the lock: wait (reason ``VolumeBusy``)."""

    def __init__(self, message: str, holder: Holder) -> None:
        super().__init__(Reason.VOLUME_BUSY, message, final=False)
        self.holder = holder


class InErrorState(RefusedError):
    """A failed action left an error state: wait for a reset (reason ``VolumeInErrorState``).

    Waiting, not failing: a user's reset ends it, like stopping a workload ends VolumeInUse.
    """

    def __init__(self, message: str, state: str) -> None:
        super().__init__(Reason.VOLUME_IN_ERROR_STATE, message, final=False)
        self.state = state


@dataclasses.dataclass(frozen=True)
class Acquired:
    """The outcome of a successful ``acquire``.

    ``took_over_from`` names a holder that no longer existed (emit an Event
    about it); ``stale_state`` is the state that holder left behind.
    """

    holder: Holder
    state: str
    previous_state: str
    newly_acquired: bool
    took_over_from: Holder | None = None
    stale_state: str | None = None


# ---- pure decisions -------------------------------------------------------------------------


def _busy(resource: Resource, name: str, other: Holder) -> Busy:
    how = ("" if other.kind else
           f"; if nothing holds it any more, remove it: kubectl annotate {resource.cli_name} {name} {LOCK}- {LOCK_UID}-")
    return Busy(f"{resource.kind} {name} is locked by {other} ({LOCK}); waiting for it to finish{how}", other)


def _error_state(resource: Resource, name: str, state: str) -> InErrorState:
    return InErrorState(
        f"{resource.kind} {name} is in state {state} after an earlier failed action; check its data, then reset it "
        f"with {reset_hint(resource, name)}",
        state,
    )


def plan_acquire(annotations: Annotations, me: Holder, state: str, alive: Callable[[Holder], bool], *,
                 resource: Resource = PVC, name: str = "?") -> tuple[Changes | None, Acquired]:
    """What to write to take the lock for ``me`` with ``state`` (None: nothing to write).

    Raises ``Busy`` when another live CR holds it and ``InErrorState`` when a
    failed action left an error state.
    ``alive`` is asked only about a holder other than ``me``.
    """
    current = holder_from(annotations)
    if current is not None and current.uid == me.uid and current.uid:
        previous = annotations.get(PREVIOUS_STATE, AVAILABLE)
        changes: Changes | None = None if annotations.get(STATE) == state else {STATE: state}
        return changes, Acquired(me, state, previous, newly_acquired=False)
    stale: Holder | None = None
    if current is not None:
        if alive(current):
            raise _busy(resource, name, current)
        stale = current
    # The state before this lock: for a stale lock, what its dead holder had found.
    base = annotations.get(PREVIOUS_STATE, AVAILABLE) if stale else annotations.get(STATE, AVAILABLE)
    if is_error_state(base):
        raise _error_state(resource, name, base)
    changes = {LOCK: f"{me.kind}/{me.name}", LOCK_UID: me.uid, STATE: state, PREVIOUS_STATE: base}
    return changes, Acquired(me, state, base, newly_acquired=True, took_over_from=stale,
                             stale_state=annotations.get(STATE) if stale else None)


def plan_release(annotations: Annotations, me: Holder, error_state: str | None = None) -> Changes | None:
    """What to write to give the lock back (None: ``me`` does not hold it, nothing to do)."""
    current = holder_from(annotations)
    if current is None or current.uid != me.uid:
        return None
    if error_state is not None and not is_error_state(error_state):
        raise ValueError(f"{error_state!r} is not an error state (must end with {ERROR!r})")
    restored = error_state or annotations.get(PREVIOUS_STATE) or None  # "" (available) removes the annotation
    return {LOCK: None, LOCK_UID: None, PREVIOUS_STATE: None, STATE: restored}


def plan_reset(annotations: Annotations, alive: Callable[[Holder], bool], *, force: bool = False,
               resource: Resource = PVC, name: str = "?") -> Changes | None:
    """What to write to reset the state (None: nothing set). A live holder's lock stays unless ``force``."""
    current = holder_from(annotations)
    if current is not None and not force and alive(current):
        raise _busy(resource, name, current)
    keys = [STATE, PREVIOUS_STATE] + ([LOCK, LOCK_UID] if current is not None else [])
    changes: Changes = {k: None for k in keys if k in annotations}
    return changes or None


# ---- API -----------------------------------------------------------------------------------


def holder_alive(namespace: str, holder: Holder) -> bool:
    """Does the CR a lock names still exist (same uid) in ``namespace``?

    A holder of a kind we cannot look up counts as alive: a lock is never
    taken from something we could not check.
    """
    plural = k8s.PLURALS.get(holder.kind)
    if plural is None:
        return True
    try:
        obj = k8s.request("GET", k8s.path(plural, holder.name, namespace=namespace))
    except Exception as exc:
        if k8s.is_not_found(exc):
            return False
        raise
    return not holder.uid or (obj.get("metadata") or {}).get("uid") == holder.uid


def _read(resource: Resource, namespace: str, name: str, *, missing_ok: bool) -> dict[str, Any] | None:
    try:
        return resource.read(namespace, name)
    except Exception as exc:
        if not k8s.is_not_found(exc):
            raise
        if missing_ok:
            return None
        raise RefusedError(resource.not_found, f"{resource.kind} {name} does not exist in namespace {namespace}") from None


def _write(resource: Resource, namespace: str, name: str, obj: Mapping[str, Any],
           changes: Changes) -> dict[str, Any] | None:
    """Patch the annotations if the object is still at the version read: the object written, None on a conflict."""
    version = (obj.get("metadata") or {}).get("resourceVersion")
    body = {"metadata": {"resourceVersion": version, "annotations": changes}}
    try:
        return resource.patch(namespace, name, body)
    except Exception as exc:
        if k8s.is_conflict(exc):
            return None
        raise


# The locked objects as this process's acquire left them (the API server's answer to its write): a release
# decides on that first, without reading the object again; its write is conditional like any other, so if
# anything changed since, it costs a conflict and a read.  An entry goes with the release.
_written: dict[tuple[str, str, str], dict[str, Any]] = {}


def write_if_unchanged(resource: Resource, namespace: str, name: str, obj: Mapping[str, Any], changes: Changes) -> bool:
    """``changes`` to the annotations of ``obj`` as read (its resourceVersion); False on a conflict.

    For callers that plan with ``plan_reset`` and add their own keys to the same write
    (``savepoint.handlers.reset`` answers a reset request in it).
    """
    return _write(resource, namespace, name, obj, changes) is not None


def _kept_changing(resource: Resource, name: str) -> RefusedError:
    return RefusedError(Reason.VOLUME_BUSY, f"{resource.kind} {name} kept changing while Savepoint tried to lock it; retrying",
                        final=False)


def acquire(owner: k8s.Owner, namespace: str, name: str, state: str, *, resource: Resource = PVC,
            known: Mapping[str, Any] | None = None) -> Acquired:
    """Take the lock on ``name`` for ``owner`` and set ``state``; idempotent for the same owner.

    ``known``: the object as the caller just read it; the first decision is made on it (its write is
    conditional on its resourceVersion like any other, so a stale one costs a conflict and a read).
    Raises ``Busy`` (another live CR holds it), ``InErrorState`` (reset
    needed) or ``RefusedError`` with the resource's not-found reason.
    """
    if owner.namespace != namespace:
        raise ValueError(f"{owner} lives in {owner.namespace}; it cannot lock objects in {namespace}")
    if not state or is_error_state(state):
        raise ValueError(f"{state!r} is not an action state")
    me = Holder.of(owner)
    for attempt in range(MAX_ATTEMPTS):
        obj = known if attempt == 0 and known is not None else _read(resource, namespace, name, missing_ok=False)
        assert obj is not None
        changes, result = plan_acquire(annotations_of(obj), me, state, lambda h: holder_alive(namespace, h),
                                       resource=resource, name=name)
        written = obj if changes is None else _write(resource, namespace, name, obj, changes)
        if written is not None:
            _written[(resource.plural, namespace, name)] = written
            if resource is PVC:
                _count_held(namespace, name, held=True)
            return result
    raise _kept_changing(resource, name)


_held: set[tuple[str, str]] = set()  # PVC locks this process took and has not released (savepoint_locks_held)


def _count_held(namespace: str, name: str, *, held: bool) -> None:
    (_held.add if held else _held.discard)((namespace, name))
    metrics.LOCKS_HELD.set(len(_held))


def release(owner: k8s.Owner, namespace: str, name: str, *, error_state: str | None = None,
            resource: Resource = PVC) -> bool:
    """Give the lock back: restore the previous state, or leave ``error_state`` (e.g. ``error``).

    Only the holder releases; True when this call released it, False when
    there was nothing to release (not held by ``owner``, or the object is gone).
    """
    me = Holder.of(owner)
    key = (resource.plural, namespace, name)
    for attempt in range(MAX_ATTEMPTS):
        obj = _written.get(key) if attempt == 0 else None
        if obj is None or holder(obj) != me:  # not ours when we wrote it last: decide on the object as it is
            obj = _read(resource, namespace, name, missing_ok=True)
        changes = None if obj is None else plan_release(annotations_of(obj), me, error_state)
        if changes is not None:
            try:
                if _write(resource, namespace, name, obj, changes) is None:
                    continue  # changed since it was read: decide again
            except Exception as exc:
                if not k8s.is_not_found(exc):  # gone since we locked it: nothing left to release
                    raise
                changes = None
        # Released, or ours no more (gone, reset by an admin, taken over): this process holds it no longer.
        # Another owner's release of it (an action that waited for it, say) leaves our record alone.
        record = _written.get(key)
        if changes is not None or (record is not None and holder(record) == me):
            _written.pop(key, None)
            if resource is PVC:
                _count_held(namespace, name, held=False)
        return changes is not None
    raise _kept_changing(resource, name)


def reset_state(namespace: str, name: str, *, resource: Resource = PVC, force: bool = False) -> str | None:
    """Clear the state annotation (the admin's reset after checking the data); returns the state cleared.

    A lock whose holder no longer exists goes too; a live holder's lock
    raises ``Busy`` unless ``force``. None when there was nothing to reset.
    """
    for _ in range(MAX_ATTEMPTS):
        obj = _read(resource, namespace, name, missing_ok=False)
        assert obj is not None
        annotations = annotations_of(obj)
        changes = plan_reset(annotations, lambda h: holder_alive(namespace, h), force=force,
                             resource=resource, name=name)
        if changes is None:
            return None
        if _write(resource, namespace, name, obj, changes) is not None:
            return annotations.get(STATE, AVAILABLE)
    raise _kept_changing(resource, name)


def mark_snapshot(owner: k8s.Owner, namespace: str, name: str, state: str = "restoring") -> Acquired:
    """The seed's snapshot status while an action reads it: lock the VolumeSnapshot with ``state``."""
    return acquire(owner, namespace, name, state, resource=VOLUME_SNAPSHOT)


def unmark_snapshot(owner: k8s.Owner, namespace: str, name: str) -> bool:
    """Back to available, whatever the action's outcome (the seed: a failed revert leaves the snapshot available)."""
    return release(owner, namespace, name, resource=VOLUME_SNAPSHOT)
