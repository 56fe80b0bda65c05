"""What every flow (one reconcile of one CR) works with: status, phases, Events, deadlines.

Flows are plain functions of a ``FlowContext``; they never import kopf.  A flow
that must come back later raises ``Wait`` (the kopf handler turns it into
``kopf.TemporaryError``).  Status is written through to the API server at once
(``patch_status``) rather than when the handler returns, so that the name of a
temporary object is recorded *before* the object exists and an operator killed
at any instruction finds it on restart.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any, Iterable, Mapping, NoReturn

from savepoint import metrics
from savepoint.api import READY, SUCCEEDED, Condition, Reason, set_condition, utcnow
from savepoint.engine import movers
from savepoint.kube import events, k8s, locks, references
from savepoint.mover.request import MoverRequest, MoverResult
from savepoint.settings import Settings
from savepoint.storage.ceph import CephCredentials

FINAL_PHASES = frozenset({"Succeeded", "Failed", "Available"})
ABORTING = "Aborting"  # a flow undoing its steps (engine/steps.py); a restart finishes the undo
ERROR_DELETING = "ErrorDeleting"
MOVER_WATCH_SECONDS = 10  # watch a running mover this long per reconcile before handing the worker back


class Wait(Exception):
    """Come back after ``delay`` seconds; the CR shows ``reason``/``message`` meanwhile.

    ``nothing_written`` says, for a deadline passing during this wait, whether the data may have been
    touched: False while a mover that started writes, True while waiting to begin, None: unknown."""

    def __init__(self, reason: str, message: str, delay: float = 5.0, *,
                 nothing_written: bool | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay
        self.nothing_written = nothing_written


class Stop(Exception):
    """The flow ended (succeeded or failed) during this reconcile; nothing more to do."""


class Failure(Exception):
    """A step failed (raised by ``ctx.fail`` once the step runner has begun): the runner undoes the steps."""

    def __init__(self, reason: str, message: str, *, nothing_written: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.nothing_written = nothing_written


class MoverFailed(Failure):
    """A mover Job failed (``ctx.run_mover``); a flow with a fallback catches it, others let the runner undo."""

    def __init__(self, state: movers.MoverState) -> None:
        super().__init__(state.reason or Reason.MOVER_FAILED, state.message, nothing_written=not state.started)
        self.state = state


@dataclasses.dataclass
class FlowContext:
    owner: k8s.Owner
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]
    settings: Settings
    logger: logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
    related: list[dict[str, str]] = dataclasses.field(default_factory=list)  # also get our Events (PVCs, ...)
    # Set by the step runner while a step runs: ``fail`` raises ``Failure`` for the runner to undo.
    abortable: bool = False
    deferred: dict[str, Any] = dataclasses.field(default_factory=dict)  # see defer_status
    usage: references.Usage | None = None  # who uses which claim, from the operator's watches (None: list them)

    @classmethod
    def from_body(cls, body: dict[str, Any], settings: Settings, logger: Any,
                  usage: references.Usage | None = None) -> "FlowContext":
        return cls(owner=k8s.Owner.of(body), generation=int(body["metadata"].get("generation") or 1),
                   spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}),
                   settings=settings, logger=logger, usage=usage)

    # --- status --------------------------------------------------------------------------

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def finished(self) -> bool:
        return self.phase in FINAL_PHASES

    def patch_status(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` (camelCase) into status on the API server now; ``None`` deletes a key.
        Fields deferred with ``defer_status`` go with it."""
        if self.deferred:
            changes = {**self.deferred, **changes}
            self.deferred = {}
        k8s.request("PATCH", k8s.path(self.owner.plural, self.owner.name, namespace=self.owner.namespace) + "/status",
                    {"status": changes}, content_type="application/merge-patch+json")
        self._apply(changes)

    def defer_status(self, changes: dict[str, Any]) -> None:
        """Fields whose loss to a crash costs only a repeat of idempotent work (the step runner's marks): they
        go with the next write, or with ``flush_status`` when the reconcile ends."""
        self.deferred.update(changes)
        self._apply(changes)

    def flush_status(self) -> None:
        if self.deferred:
            self.patch_status({})

    def _apply(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value

    def _conditions(self) -> list[Condition]:
        return [Condition.model_validate(c) for c in self.status.get("conditions") or []]

    def _with_conditions(self, updates: Iterable[tuple[str, str, str, str]]) -> list[dict[str, Any]]:
        conditions = self._conditions()
        for type_, status, reason, message in updates:
            conditions = set_condition(conditions, type_, status, reason, message,
                                       observed_generation=self.generation)
        return [c.to_dict() for c in conditions]

    def start(self) -> None:
        """First sight: startTime, conditions Unknown, phase Pending."""
        if self.status.get("startTime"):
            if not self.finished:  # resumed (e.g. after a restart): still running since then
                begun = datetime.datetime.fromisoformat(self.status["startTime"].replace("Z", "+00:00"))
                metrics.ACTION_STARTED.labels(self.owner.kind, self.owner.name,
                                              namespace=self.owner.namespace).set(begun.timestamp())
            return
        metrics.ACTION_STARTED.labels(self.owner.kind, self.owner.name,
                                      namespace=self.owner.namespace).set(utcnow().timestamp())
        # Goes with the flow's first write (a phase, a wait, the lock): one round trip fewer per action.
        self.defer_status({
            "phase": "Pending",
            "startTime": _ts(utcnow()),
            "observedGeneration": self.generation,
            "message": "accepted",
            "conditions": self._with_conditions([(READY, "Unknown", "Accepted", "accepted"),
                                                 (SUCCEEDED, "Unknown", "Accepted", "accepted")]),
        })

    def set_phase(self, phase: str, reason: str, message: str, extra: dict[str, Any] | None = None, *,
                  defer: bool = False) -> None:
        """A non-final phase (Pending, Reverting, Creating, ...) with its reason.  ``defer``: it goes with the
        next write -- for a step's last write, which the step runner's mark of the step then carries (one
        round trip fewer; a crash before it repeats the idempotent step, which writes it again)."""
        changes = {"phase": phase, "message": message, "observedGeneration": self.generation,
                   "conditions": self._with_conditions([(READY, "False", reason, message),
                                                        (SUCCEEDED, "Unknown", reason, message)])}
        changes.update(extra or {})
        if defer:
            self.defer_status(changes)
        else:
            self.patch_status(changes)

    def wait(self, reason: str, message: str, delay: float = 5.0) -> NoReturn:
        """Keep waiting (Pending with ``reason``) unless the deadline passed, then fail (nothing was written
        while waiting: a wait comes before a step writes)."""
        if self.deadline_passed():
            self.fail(f"{reason}", f"gave up after {self.deadline_seconds}s: {message}", nothing_written=True)
        if self.status.get("conditions") and self.ready_reason() != reason:
            self.event("Normal", reason, message)
            metrics.WAITS.labels(self.owner.kind, reason, namespace=self.owner.namespace).inc()
        if self.phase != "Pending" or self.ready_reason() != reason or self.status.get("message") != message:
            self.set_phase("Pending", reason, message)
        raise Wait(reason, message, delay)

    def ready_reason(self) -> str | None:
        for c in self.status.get("conditions") or []:
            if c.get("type") == READY:
                return c.get("reason")
        return None

    def refuse(self, exc: references.RefusedError) -> NoReturn:
        """A reference that cannot be used: final ones fail, the others wait until the deadline."""
        if exc.final:
            self.fail(exc.reason, exc.message)
        self.wait(exc.reason, exc.message, delay=5)

    def lock_or_wait(self, namespace: str, pvc: str, state: str, *,
                     known: Mapping[str, Any] | None = None) -> locks.Acquired:
        """Take the PVC's lock, or wait while another action holds it or it is in an error state (``known``: the
        claim as just read, see ``locks.acquire``)."""
        try:
            taken = locks.acquire(self.owner, namespace, pvc, state, known=known)
        except locks.Busy as busy:
            self.wait(Reason.VOLUME_BUSY, str(busy), delay=5)
        except locks.InErrorState as err:
            self.wait(Reason.VOLUME_IN_ERROR_STATE, str(err), delay=10)
        if taken.took_over_from:
            self.event("Normal", "StaleLockRecovered", f"took over the lock left by {taken.took_over_from}",
                       wait=False)
        return taken

    def error_deleting(self, reason: str, message: str, delay: float = 20) -> NoReturn:
        """Deleting the data failed: ErrorDeleting with the reason, retried with backoff, the object stays."""
        if self.phase != ERROR_DELETING or self.status.get("message") != message:
            self.event("Warning", reason, message)  # the Event first: whoever sees ErrorDeleting finds it too
            self.set_phase(ERROR_DELETING, reason, message)
        raise Wait(reason, message, delay=delay)

    def run_mover(self, step: str, request: MoverRequest, *, phase: str, message: str,
                  ceph: CephCredentials | None = None, deadline_seconds: int | None = None) -> MoverResult:
        """Run one data-moving step as a mover Job, the one way every flow does it.

        The Job's name goes into ``status.moverJob`` before the Job exists.  While it waits for a slot the
        CR shows ``MoverLimit`` with its place in the queue (time in the queue counts toward the deadline:
        nothing was written); while its pod cannot start, the pod's reason; while it runs, ``phase`` with
        ``message``.  Returns the mover's result once it succeeded; a failed Job raises ``MoverFailed``
        (a refusal of the request, ``MoverRefused``, too: nothing was written).  ``deadline_seconds`` is
        for steps with a deadline of their own (deleting), which do not end with the CR's."""
        name = movers.job_name(self.owner, step)
        if self.status.get("moverJob") != name:
            self.patch_status({"moverJob": name})
        try:
            state = movers.ensure_mover(self.owner, step, request, self.settings,
                                        deadline_seconds=deadline_seconds or max(self.seconds_left(), 60),
                                        ceph=ceph, wait=MOVER_WATCH_SECONDS)
        except movers.MoverRefused as exc:
            raise MoverFailed(movers.MoverState("Failed", name, reason=exc.reason, message=exc.message)) from None
        if state.phase == "Waiting":
            if deadline_seconds is None and self.deadline_passed():
                self.fail(Reason.DEADLINE_EXCEEDED, f"gave up after {self.deadline_seconds}s: {state.message}",
                          nothing_written=True)
            self._show(self.phase if self.phase not in (None, "Pending") else "Pending", Reason.MOVER_LIMIT,
                       state.message)
            raise Wait(Reason.MOVER_LIMIT, state.message, delay=5, nothing_written=True)
        if state.phase == "Running":
            reason, shown = (state.reason, state.message) if state.reason else (Reason.IN_PROGRESS, message)
            self._show(phase, reason, shown)
            raise Wait(reason, shown, delay=1, nothing_written=not state.started)
        if state.phase == "Failed":
            raise MoverFailed(state)
        assert state.result is not None
        r, data = state.result, state.result.data  # the mover's own counts; older movers: their data fields
        moved = r.bytes_written if r.bytes_written is not None else r.bytes_read
        if moved is None:
            moved = int(data.get("bytesWritten") or data.get("bytesRead") or data.get("bytes") or 0)
        metrics.BYTES_MOVED.labels(self.owner.kind, namespace=self.owner.namespace).inc(max(0, moved))
        return state.result

    def finish_mover(self, step: str) -> None:
        """Remove a finished (or abandoned) step's Job, its Secret and its progress ConfigMap."""
        movers.cleanup_mover(self.owner, step, self.settings)
        if self.status.get("moverJob") == movers.job_name(self.owner, step):
            # With the next write: a restart before it finds the Job gone and starts the step's mover again,
            # as it would after a crash just before this.
            self.defer_status({"moverJob": None})

    def stop_mover(self, step: str, reason: str = Reason.ABORTING) -> None:
        """An undo's (or a fallback's) first act: remove the step's mover and wait until none of its pods can
        still write."""
        self.finish_mover(step)
        if not movers.mover_stopped(self.owner, step, self.settings):
            raise Wait(reason, f"waiting for mover {movers.job_name(self.owner, step)} to stop", delay=2)

    def _show(self, phase: str, reason: str, message: str) -> None:
        if self.phase != phase or self.ready_reason() != reason or self.status.get("message") != message:
            self.set_phase(phase, reason, message)

    def fail(self, reason: str, message: str, extra: dict[str, Any] | None = None, *,
             nothing_written: bool = False) -> NoReturn:
        """End the action as Failed with a reason a user can act on (raises Stop).

        While the step runner runs a step (``abortable``) this raises ``Failure`` instead: the runner
        undoes the steps and then ends the action.  ``nothing_written`` tells it the data was not touched."""
        if self.abortable:
            raise Failure(reason, message, nothing_written=nothing_written)
        # The Event goes first: whoever sees the final phase finds the Event too.
        self.event("Warning", self._event_reason("Failed"), f"{reason}: {message}")
        changes = {"phase": "Failed", "message": message, "completionTime": _ts(utcnow()),
                   "observedGeneration": self.generation, "progress": None,
                   "conditions": self._with_conditions([(READY, "False", reason, message),
                                                        (SUCCEEDED, "False", reason, message)])}
        changes.update(extra or {})
        self._observe("failed")  # like the Event, before the status: whoever sees Failed finds the metrics
        self.patch_status(changes)
        raise Stop()

    def succeed(self, phase: str, reason: str, message: str, extra: dict[str, Any] | None = None) -> NoReturn:
        self.event("Normal", self._event_reason("Succeeded"), message)
        changes = {"phase": phase, "message": message, "completionTime": _ts(utcnow()),
                   "observedGeneration": self.generation,
                   "conditions": self._with_conditions([(READY, "True", reason, message),
                                                        (SUCCEEDED, "True", reason, message)])}
        changes.update(extra or {})
        self._observe("succeeded")
        self.patch_status(changes)
        raise Stop()

    def _event_reason(self, outcome: str) -> str:
        verb = {"VolumeRevert": "Revert", "ShareBackup": "Backup", "ShareRestore": "Restore",
                "ImageSnapshot": "ImageSnapshot"}[self.owner.kind]
        return f"{verb}{outcome}"

    def _observe(self, result: str) -> None:
        ns = self.owner.namespace
        metrics.OPERATIONS.labels(self.owner.kind, result, namespace=ns).inc()
        metrics.ACTION_STARTED.remove(self.owner.kind, self.owner.name, namespace=ns)
        if result == "succeeded":
            metrics.LAST_SUCCESS.labels(self.owner.kind, namespace=ns).set(utcnow().timestamp())
        started = self.status.get("startTime")
        if started:
            begun = datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
            metrics.DURATION.labels(self.owner.kind, result, namespace=ns).observe((utcnow() - begun).total_seconds())

    # --- deadlines and events --------------------------------------------------------------

    @property
    def deadline_seconds(self) -> int:
        asked = int(self.spec.get("deadlineSeconds") or self.settings.default_deadline_seconds)
        return min(asked, self.settings.max_deadline_seconds)

    def seconds_left(self) -> int:
        started = self.status.get("startTime")
        if not started:
            return self.deadline_seconds
        begun = datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
        return max(0, int(self.deadline_seconds - (utcnow() - begun).total_seconds()))

    def deadline_passed(self) -> bool:
        return self.seconds_left() <= 0

    def event(self, type_: events.EventType, reason: str, message: str, *, wait: bool = True) -> None:
        """An Event on the CR and on every related object (e.g. the PVC), posted in parallel.  ``wait=False``
        for Events along the way, which then stay off the action's critical path; Events before a final
        or a waiting status are waited for (whoever sees the status finds the Event)."""
        events.post_all([(events.owner_ref(self.owner), message),
                         *((ref, f"{self.owner}: {message}") for ref in self.related)], type_, reason, wait=wait)


def _ts(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
