"""The step runner: a flow is a declared list of steps, each with its ``run`` and its ``undo``.

``run_flow(flow, ctx)`` decides every refusal in ``flow.plan`` (before the first step, which takes
the locks), then runs the steps in order.  After each step the runner records its name in
``status.step``; a restarted operator resumes after the last recorded one, with the plan rebuilt
by ``flow.resume`` from what was recorded (never by looking at the world again).  A refusal in
``plan`` also runs ``flow.release``: an operator killed between taking a lock and recording
the step leaves no lock behind.

Once the first step has begun, every ending that is not success goes through the undo: a
``ctx.fail``, a wait past the deadline, an unexpected error past the deadline, the CR deleted.
(Fault points ``<Flow>:<Step>:begin|done|undo`` let tests kill the operator at each; engine/faults.py.)
The runner records ``phase: Aborting`` with the reason first, so that an operator killed midway
through the undo finishes it after a restart, then runs every step's undo in reverse (each undo
is idempotent -- it may run again after a restart -- and tolerates its step never having
happened) and ends the action ``Failed`` with the reason, the message and what the undos did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, NoReturn, TypeVar

from savepoint.api import Reason
from savepoint.engine.context import ABORTING, Failure, FlowContext, Stop, Wait
from savepoint.engine.faults import crash_point

P = TypeVar("P")


@dataclasses.dataclass
class Abort:
    """Why a flow is being undone, and what its undos did (the notes end up in the final message)."""

    reason: str
    message: str
    step: str  # the step that had begun when it failed (for people and the record; every undo runs)
    data_touched: bool  # the data step may have half-run: put the data back, keep the safety copy
    notes: list[str] = dataclasses.field(default_factory=list)
    error_state: bool = False  # an undo left the volume marked ``error`` (the seeds' rule after touched data)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # status fields for the final write

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def recorded(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "step": self.step, "dataTouched": self.data_touched}

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Abort:
        a = status.get("abort") or {}
        return cls(str(a.get("reason") or Reason.INTERNAL_ERROR), str(a.get("message") or "aborted"),
                   str(a.get("step") or ""), bool(a.get("dataTouched")))

    @property
    def final_message(self) -> str:
        return "; ".join([self.message, *self.notes])


@dataclasses.dataclass(frozen=True)
class Step(Generic[P]):
    """One step of a flow.  ``run`` does it (idempotently: it may run again after a restart) and returns
    when it is done; ``undo`` reverses whatever of it may have happened, also idempotently."""

    name: str
    run: Callable[[FlowContext, P], None]
    undo: Callable[[FlowContext, P, Abort], None] | None = None
    touches_data: bool = False  # a failure while it runs may have left the data half-written
    # Whether the step belongs to this run at all (e.g. a copy path's steps when the clone path is taken):
    # one that does not is passed over without a write.  Decided from the plan and the recorded status only,
    # so a restart decides the same.  Its undo still runs on an abort, as every undo tolerates its step
    # never having happened.
    applies: Callable[[FlowContext, P], bool] | None = None
    # Only tidies up after every data step is done (locks, temporary snapshots): past the deadline it is
    # retried rather than aborted, because the abort's undo would take back data that is in place (a
    # revert put back, a finished backup discarded).  What it cannot tidy it must give up on itself.
    cleanup: bool = False


@dataclasses.dataclass(frozen=True)
class Flow(Generic[P]):
    """A kind's flow: ``plan`` (every refusal, before any lock), the steps, ``resume`` (the plan from status)."""

    name: str
    plan: Callable[[FlowContext], P]
    resume: Callable[[FlowContext], P]
    steps: tuple[Step[P], ...]
    # Gives back what the spec names if this CR holds it: for an operator killed after the first step took
    # a lock and before the step was recorded (run after a refusal in ``plan``, and on deletion).
    release: Callable[[FlowContext], None] | None = None

    def __post_init__(self) -> None:
        last_data = max((i for i, s in enumerate(self.steps) if s.touches_data), default=-1)
        early = [s.name for s in self.steps[:last_data + 1] if s.cleanup]
        if early:
            raise ValueError(f"{self.name}: cleanup steps {early} come before a data step")

    def index_after(self, recorded: str | None) -> int:
        names = [s.name for s in self.steps]
        return names.index(recorded) + 1 if recorded in names else 0

    def step(self, name: str) -> Step[P] | None:
        return next((s for s in self.steps if s.name == name), None)


def run_flow(flow: Flow[P], ctx: FlowContext) -> None:
    """One reconcile: resume an abort, or run the steps after the last recorded one."""
    if ctx.phase == ABORTING:
        _undo(flow, ctx, flow.resume(ctx), Abort.from_status(ctx.status))
    start = flow.index_after(ctx.status.get("step"))
    plan = _plan(flow, ctx) if start == 0 else flow.resume(ctx)
    try:
        _run_steps(flow, ctx, plan, start)
    finally:
        ctx.flush_status()


def _plan(flow: Flow[P], ctx: FlowContext) -> P:
    """``flow.plan``; a refusal undoes the first step too (tolerant of it not having run): an operator killed
    after the first step took its lock and before it was recorded must not leave that lock behind."""
    ctx.abortable = True
    try:
        return flow.plan(ctx)
    except Failure as failure:
        if flow.release is not None:
            flow.release(ctx)
        ctx.abortable = False
        ctx.fail(failure.reason, failure.message)
    finally:
        ctx.abortable = False


def _run_steps(flow: Flow[P], ctx: FlowContext, plan: P, start: int) -> None:
    for index in range(start, len(flow.steps)):
        step = flow.steps[index]
        ctx.abortable = True
        crash_point(f"{flow.name}:{step.name}:begin")  # the fault matrix kills the operator at every step
        if step.applies is not None and not step.applies(ctx, plan):
            if ctx.status.get("running") == step.name:  # named by the step before: it will not run
                ctx.defer_status({"running": None})
            continue
        if step.touches_data and ctx.status.get("running") != step.name:
            ctx.patch_status({"running": step.name})  # from here an abort assumes the data may be touched
        try:
            step.run(ctx, plan)
        except Failure as failure:
            abort(flow, ctx, plan, step, failure.reason, failure.message,
                  data_touched=step.touches_data and not failure.nothing_written)
        except Wait as wait:
            if step.cleanup or not ctx.deadline_passed():
                raise
            abort(flow, ctx, plan, step, Reason.DEADLINE_EXCEEDED,
                  f"gave up after {ctx.deadline_seconds}s: {wait.message}",
                  data_touched=step.touches_data and wait.nothing_written is False)
        except Stop:
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: retried by the handler until the deadline
            if step.cleanup or not ctx.deadline_passed():
                raise
            abort(flow, ctx, plan, step, Reason.INTERNAL_ERROR,
                  f"gave up after {ctx.deadline_seconds}s: {type(exc).__name__}: {exc}".splitlines()[0],
                  data_touched=step.touches_data)
        # On record at once (with whatever the step deferred): ":done" means a restart resumes after it.  The
        # same write says a following data step is about to run (from then on an abort assumes touched data).
        following = flow.steps[index + 1] if index + 1 < len(flow.steps) else None
        mark: dict[str, Any] = {"step": step.name}
        if following is not None and following.touches_data:
            mark["running"] = following.name
        elif step.touches_data:
            mark["running"] = None
        ctx.patch_status(mark)
        crash_point(f"{flow.name}:{step.name}:done")


def abort(flow: Flow[P], ctx: FlowContext, plan: P, step: Step[P], reason: str, message: str, *,
          data_touched: bool) -> NoReturn:
    """Record the abort (so a restart finishes it), then undo every begun step in reverse."""
    done = flow.steps[: flow.steps.index(step)]
    a = Abort(reason, message, step.name, data_touched or any(s.touches_data for s in done))
    ctx.event("Warning", "Aborting", f"{reason}: {message}; undoing what was done")
    ctx.set_phase(ABORTING, reason, f"{message}; undoing what was done", {"abort": a.recorded()})
    _undo(flow, ctx, plan, a)


def _undo(flow: Flow[P], ctx: FlowContext, plan: P, a: Abort) -> NoReturn:
    # Every undo runs, last step first, not only those of the steps on record: a later step's mark may not
    # have been written when the operator died (marks go with the next write), and each undo tolerates its
    # step never having happened.
    for step in reversed(flow.steps):
        if step.undo is not None:
            crash_point(f"{flow.name}:{step.name}:undo")
            ctx.abortable = True  # a failure inside an undo is noted and the other undos still run
            try:
                step.undo(ctx, plan, a)
            except Failure as failure:  # e.g. a mover of the undo failed, or its wait passed the deadline
                a.note(f"undoing {step.name} failed ({failure.reason}: {failure.message})")
    ctx.abortable = False
    ctx.fail(a.reason, a.final_message, {"abort": None, "running": None, **a.extra})


def finalize_flow(flow: Flow[P], ctx: FlowContext, *, reason: str = "Aborted",
                  message: str = "deleted before it finished") -> None:
    """The CR is being deleted while it runs: undo what was done (a restart mid-undo finishes it)."""
    if ctx.finished:
        return
    try:
        if ctx.phase == ABORTING:
            _undo(flow, ctx, flow.resume(ctx), Abort.from_status(ctx.status))
        recorded = ctx.status.get("step")
        if recorded is None:
            # No step recorded: the first may have taken its lock and been killed before recording it.
            if flow.release is not None:
                flow.release(ctx)
            return
        start = flow.index_after(recorded)
        if start >= len(flow.steps):
            return
        if not any(s.touches_data for s in flow.steps[start:]):
            run_flow(flow, ctx)  # the data is moved: finishing (cleanup) is the way to end well
            return
        running = flow.steps[start]
        ctx.abortable = True
        abort(flow, ctx, flow.resume(ctx), running, reason, message,
              data_touched=running.touches_data and ctx.status.get("running") == running.name)
    except Stop:
        return
