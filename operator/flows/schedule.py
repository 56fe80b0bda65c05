"""SavepointSchedule: run a template on a schedule and prune with retention (plain functions, no kopf).

One ``tick(obj)`` looks at a schedule and does what is due, then says when to look again; the
kopf daemon (handlers/schedule.py) calls it at that time, or sooner when the schedule or one of
its children changes. A tick is idempotent and restartable at any instruction:

  1. a recorded run (``status.pendingRun``) whose child may not exist yet is finished first:
     the child is created (AlreadyExists from before a crash is fine when it is ours), then
     ``lastScheduleTime``/``active`` are written and ``pendingRun`` cleared;
  2. the active child's end is noticed: ``lastSuccessfulTime``, or condition ``LastRunFailed``
     naming the child and its reason; retention runs;
  3. the newest slot due is run (one catch-up run after an outage, the rest counted missed;
     none when older than ``startingDeadlineSeconds``); with ``Forbid`` it waits while the
     previous child runs (reason ``PreviousRunActive``). A run is recorded (``pendingRun``)
     *before* its child is created, and a child's name is its slot, so a crash anywhere never
     makes two children for one slot.
  4. ``nextScheduleTime`` and the phase are written when they change.

Requests per run are constant: a status patch to record it, the create, a status patch after,
and when the child ends one list of this schedule's children (label selector on its uid), the
deletes retention decides, and a status patch. Nothing lists across schedules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from savepoint import cron, metrics_schedules as metrics
from savepoint.kube import events, k8s
from savepoint.api import READY, Reason, set_condition, utcnow
from savepoint.api.schedule import ConcurrencyPolicy, SavepointScheduleSpec
from savepoint.api.status import Condition
from savepoint.engine.faults import crash_point
from savepoint.flows.schedule_children import Adapter, Child, Refused, Sched, adapter
from savepoint.retention import State, decide, policy_of
from savepoint.settings import Settings

KIND = "SavepointSchedule"
PLURAL = "savepointschedules"
LAST_RUN_FAILED = "LastRunFailed"
ANN_RUN_NOW = "savepoint.dev/run-now"  # any new value: run once now (kubectl savepoint schedule run-now)
IDLE_RECHECK = 600.0  # seconds: look again at least this often (maxAge pruning while nothing runs)
BUSY_RETRY = 5.0  # seconds: a run waiting for a busy volume, a blocked prune

log = logging.getLogger("savepoint.schedule")


@dataclasses.dataclass
class Tick:
    """One look at a schedule; ``status`` is what the API server has (updated by every patch)."""

    obj: dict[str, Any]
    settings: Settings
    now: dt.datetime
    known: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # children as the watch saw them

    def __post_init__(self) -> None:
        meta = self.obj["metadata"]
        self.sched = Sched(meta["namespace"], meta["name"], meta["uid"])
        self.status: dict[str, Any] = dict(self.obj.get("status") or {})  # as this tick sees it (staged included)
        self.server: dict[str, Any] = dict(self.status)  # as the API server has it
        self.staged: dict[str, Any] = {}
        self.generation = int(meta.get("generation") or 1)
        self.ready_set = False  # a step of this tick said something more specific than "Scheduled"

    # --- status ---------------------------------------------------------------------------

    def patch(self, changes: dict[str, Any], *, now: bool = True) -> None:
        """Merge ``changes`` into status; ``now=False`` stages them for one patch at the end of the tick
        (``flush``), which keeps a run at three requests. Whatever must be on the server *before* the next
        step (a recorded run, before its child is created) is patched now."""
        for key, value in changes.items():
            self.staged[key] = value
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        if now:
            self.flush()

    def flush(self) -> None:
        changes = {k: v for k, v in self.staged.items() if self.server.get(k) != v}
        self.staged = {}
        if not changes:
            return
        updated = k8s.custom().patch_namespaced_custom_object_status(
            k8s.GROUP, k8s.VERSION, self.sched.namespace, PLURAL, self.sched.name, {"status": changes})
        self.server = dict(updated.get("status") or {})
        self.status = dict(self.server)
        self.obj = dict(updated)

    def conditions(self, *updates: tuple[str, str, str, str]) -> list[dict[str, Any]]:
        current = [Condition.model_validate(c) for c in self.status.get("conditions") or []]
        for type_, status, reason, message in updates:
            current = set_condition(current, type_, status, reason, message, observed_generation=self.generation)
        return [c.to_dict() for c in current]

    def ready(self, status: str, reason: str, message: str, **extra: Any) -> dict[str, Any]:
        self.ready_set = True
        return {"conditions": self.conditions((READY, status, reason, message)), "message": message,
                "observedGeneration": self.generation, **extra}

    def event(self, type_: events.EventType, reason: str, message: str) -> None:
        events.post(events.owner_ref(self.sched.owner), type_, reason, message)

    def ready_reason(self) -> str | None:
        for c in self.status.get("conditions") or []:
            if c.get("type") == READY:
                return c.get("reason")
        return None


def tick(obj: dict[str, Any], settings: Settings, now: dt.datetime | None = None) -> float:
    """Do what is due for one schedule; returns seconds until it should be looked at again."""
    return tick_with(obj, settings, {}, now)[0]


def tick_with(obj: dict[str, Any], settings: Settings, known: dict[str, dict[str, Any]],
              now: dt.datetime | None = None) -> tuple[float, dict[str, Any]]:
    """``tick`` with the children the watch has shown (saves a read each), returning the object as last patched."""
    t = Tick(obj, settings, now or dt.datetime.now(dt.UTC), known)
    delay = _tick(t)
    t.flush()
    return delay, t.obj


def _tick(t: Tick) -> float:
    obj = t.obj
    settings = t.settings
    try:
        spec = SavepointScheduleSpec.model_validate(obj.get("spec") or {})
        schedule = cron.Schedule.parse(spec.schedule, spec.time_zone)
        check_names(t, spec)
        children = adapter(spec.template, settings)
    except (ValueError, cron.InvalidSchedule, Refused) as exc:
        message = exc.message if isinstance(exc, Refused) else str(exc).splitlines()[0]
        if t.status.get("phase") != "Invalid" or t.status.get("message") != message:
            t.event("Warning", Reason.INVALID_SPEC, message)
        t.patch(t.ready("False", Reason.INVALID_SPEC, message, phase="Invalid", nextScheduleTime=None), now=False)
        return IDLE_RECHECK
    if not t.status.get("conditions"):
        t.patch(t.ready("Unknown", "Accepted", "accepted", phase="Active", runs=0, pruned=0, missedRuns=0, kept=0), now=False)
    period = schedule.period_seconds(t.now)
    metrics.PERIOD.labels(t.sched.namespace, t.sched.name).set(period)
    jitter = cron.jitter_offset(t.sched.uid, spec.jitter_seconds, period)
    delays = [IDLE_RECHECK]

    pending = t.status.get("pendingRun")
    if pending:
        delays.append(start_child(t, spec, children, pending))
    settle_active(t, spec, children)
    if t.status.get("observedGeneration") != t.generation or t.status.get("retentionBlocked"):
        delays.append(prune(t, spec, children))

    created = cron.parse_time(obj["metadata"].get("creationTimestamp")) or t.now
    if spec.suspend:
        t.patch(t.ready("False", Reason.SUSPENDED, "suspended: no new runs (retention still prunes)", phase="Suspended",
                        nextScheduleTime=None), now=False)
        return min(delays)
    if t.status.get("phase") == "Suspended":  # resumed: what was missed while suspended is not caught up
        t.patch({"skipUntil": cron.rfc3339(t.now), "phase": "Active"}, now=False)
    last = cron.parse_time(t.status.get("lastScheduleTime"))
    skip = cron.parse_time(t.status.get("skipUntil"))
    if skip is not None:
        last = max(last or skip, skip)
    due = cron.due(schedule, t.now, last, created, starting_deadline=spec.starting_deadline_seconds, jitter=jitter)
    run_now = (obj["metadata"].get("annotations") or {}).get(ANN_RUN_NOW)
    slot = due.slot
    if run_now and run_now != t.status.get("runNowHandled") and slot is None:
        slot = t.now
    if not t.status.get("pendingRun") and slot is not None:
        if spec.concurrency_policy == ConcurrencyPolicy.FORBID and t.status.get("active"):
            message = f"slot {cron.rfc3339(slot)} waits: the previous run {t.status['active']} is still running"
            if t.ready_reason() != Reason.PREVIOUS_RUN_ACTIVE:
                t.event("Normal", Reason.PREVIOUS_RUN_ACTIVE, message)
            t.patch(t.ready("True", Reason.PREVIOUS_RUN_ACTIVE, message, phase="Active"), now=False)
            delays.append(IDLE_RECHECK)  # woken when the child changes
        else:
            if due.missed:
                metrics.MISSED.labels(t.sched.namespace, t.sched.name).inc(due.missed)
                t.event("Warning", Reason.MISSED_RUNS, f"{due.missed} slot(s) before {cron.rfc3339(slot)} were missed "
                        "(operator down, or the previous run still running); running the newest once")
            delays.append(record_run(t, spec, children, slot, due.missed, run_now))
    elif due.missed and slot is None:
        metrics.MISSED.labels(t.sched.namespace, t.sched.name).inc(due.missed)
        newest = schedule.latest_at_or_before(t.now - dt.timedelta(seconds=jitter), last or created)[0]
        message = (f"{due.missed} slot(s) missed, the newest more than startingDeadlineSeconds="
                   f"{spec.starting_deadline_seconds} ago; waiting for the next slot")
        t.event("Warning", Reason.MISSED_RUNS, message)
        t.patch({"missedRuns": int(t.status.get("missedRuns") or 0) + due.missed,
                 "lastScheduleTime": cron.rfc3339(newest or t.now)}, now=False)
    upcoming = cron.rfc3339(due.wake_at - dt.timedelta(seconds=jitter))
    changes: dict[str, Any] = {"nextScheduleTime": upcoming, "phase": "Active"}
    if not t.ready_set and (t.ready_reason() != Reason.SCHEDULED or t.status.get("message") != f"next run at {upcoming}"):
        changes.update(t.ready("True", Reason.SCHEDULED, f"next run at {upcoming}"))
    t.patch(changes, now=False)
    delays.append(max(0.0, (due.wake_at - dt.datetime.now(dt.UTC)).total_seconds()))
    return max(0.05, min(delays))


def check_names(t: Tick, spec: SavepointScheduleSpec) -> None:
    kind, _ = spec.template.chosen()
    if kind == "safePoint" and t.sched.name.startswith("savepoint-"):
        raise Refused(Reason.INVALID_SPEC, "a safe-point schedule may not be named savepoint-*: VolumeRevert's "
                      "latest-snapshot rule ignores Savepoint's temporary savepoint-* snapshots, so such safe "
                      "points would never count as the volume's latest snapshot")


# --- a run --------------------------------------------------------------------------------------

def record_run(t: Tick, spec: SavepointScheduleSpec, children: Adapter, slot: dt.datetime, missed: int,
               run_now: str | None) -> float:
    """Record the run (its child's name) before the child exists; then create it."""
    name = cron.child_name(t.sched.name, slot)
    pending: dict[str, Any] = {"name": name, "slot": cron.rfc3339(slot)}
    kind, template = spec.template.chosen()
    if kind == "shareBackup":
        since_full = t.status.get("runsSinceFull")
        # runsSinceFull counts the runs since (and including) the last full one: F I I F I I for fullEvery 3
        full = since_full is None or (template.full_every is not None and since_full >= template.full_every)
        pending["incremental"] = bool(template.incremental is not False and not full)
    changes = {"pendingRun": pending, "runs": int(t.status.get("runs") or 0) + 1,
               "missedRuns": int(t.status.get("missedRuns") or 0) + missed}
    if run_now:
        changes["runNowHandled"] = run_now
    t.patch(changes)
    crash_point("schedule:recorded")
    return start_child(t, spec, children, pending)


def start_child(t: Tick, spec: SavepointScheduleSpec, children: Adapter, pending: dict[str, Any]) -> float:
    name, slot = pending["name"], cron.parse_time(pending["slot"]) or t.now
    try:
        children.create(t.sched, name, slot, pending.get("incremental"))
    except Refused as exc:
        if exc.wait and not _superseded(t, spec, slot):
            message = f"run {name} waits: {exc.message}"
            if t.ready_reason() != exc.reason:
                t.event("Normal", exc.reason, message)
            t.patch(t.ready("False", exc.reason, message), now=False)
            return BUSY_RETRY
        run_failed(t, name, exc.reason, exc.message, slot)
        return 0.05
    crash_point("schedule:created")
    metrics.STARTED.labels(t.sched.namespace, t.sched.name).inc()
    kind = children.kind
    since_full = t.status.get("runsSinceFull")
    changes: dict[str, Any] = {"pendingRun": None, "lastScheduleTime": cron.rfc3339(slot), "lastChild": name,
                               "active": name}
    if pending.get("incremental") is not None:
        changes["runsSinceFull"] = (since_full or 0) + 1 if pending["incremental"] else 1
    t.patch(changes, now=False)  # a crash before the flush: the restart finds the child (ours) and gets here again
    t.event("Normal", "RunStarted", f"created {kind} {name} for slot {pending['slot']}")
    if kind == "SafePoint":
        settle_active(t, spec, children)  # done at once; other children report through the watch
    return 0.05


def _superseded(t: Tick, spec: SavepointScheduleSpec, slot: dt.datetime) -> bool:
    """A waiting run gives up when the next slot has come, or its starting deadline passed."""
    schedule = cron.Schedule.parse(spec.schedule, spec.time_zone)
    if schedule.next_after(slot) <= t.now:
        return True
    return spec.starting_deadline_seconds is not None and (t.now - slot).total_seconds() > spec.starting_deadline_seconds


def run_failed(t: Tick, name: str, reason: str, message: str, slot: dt.datetime | None) -> None:
    metrics.RUNS.labels(t.sched.namespace, t.sched.name, "failed").inc()
    t.event("Warning", LAST_RUN_FAILED, f"{name}: {reason}: {message}")
    changes = {"conditions": t.conditions((LAST_RUN_FAILED, "True", reason, f"{name}: {message}")),
               "active": None, "pendingRun": None}
    if slot is not None:
        changes["lastScheduleTime"] = cron.rfc3339(max(slot, cron.parse_time(t.status.get("lastScheduleTime")) or slot))
    t.patch(changes, now=False)


def settle_active(t: Tick, spec: SavepointScheduleSpec, children: Adapter) -> None:
    """Has the active child ended? Then say how, and prune."""
    name = t.status.get("active")
    if not name:
        return
    seen = t.known.get(name)
    to_child = getattr(children, "to_child", None)
    child = to_child(t.sched, seen) if seen is not None and to_child is not None else None
    if child is None or child.state != State.RUNNING:
        child = children.child(t.sched, name)  # what ends a run is read from the API server, not a cache
    if child is not None and child.state == State.RUNNING:
        return
    if child is None or child.state is None:
        run_failed(t, name, Reason.CHILD_DELETED, "the child was deleted before it finished", None)
    elif child.state == State.SUCCEEDED:
        finished = child.finished or t.now
        metrics.RUNS.labels(t.sched.namespace, t.sched.name, "succeeded").inc()
        metrics.LAST_SUCCESS.labels(t.sched.namespace, t.sched.name, child.source or "").set(finished.timestamp())
        t.patch({"active": None, "lastSuccessfulTime": cron.rfc3339(finished),
                 "conditions": t.conditions((LAST_RUN_FAILED, "False", Reason.RUN_SUCCEEDED, f"{name} succeeded"))},
                now=False)
        t.event("Normal", Reason.RUN_SUCCEEDED, f"{name} succeeded")
    else:
        run_failed(t, name, child.reason or Reason.CHILD_FAILED, f"{children.kind} {name} failed", None)
    prune(t, spec, children)


# --- retention ----------------------------------------------------------------------------------

def prune(t: Tick, spec: SavepointScheduleSpec, children: Adapter) -> float:
    """Apply retention: delete what it prunes (each child through its own finalizer), report what it cannot."""
    try:
        found = children.children(t.sched)
    except Refused as exc:
        t.patch({"retentionBlocked": f"cannot list children: {exc.message}", "observedGeneration": t.generation}, now=False)
        return BUSY_RETRY * 6
    live = [c for c in found if c.state is not None]
    schedule = cron.Schedule.parse(spec.schedule, spec.time_zone)
    policy = policy_of(spec.retention)
    first = decide([c.item() for c in live], policy, schedule.zone, t.now)
    candidates = [c for c in live if c.name in first.prune or c.name in first.blocked]
    if candidates:  # only what would go is checked for locks, clones, readers (those checks cost requests)
        checked = {c.name: c for c in children.protect(t.sched, candidates)}
        live = [checked.get(c.name, c) for c in live]
    decision = decide([c.item() for c in live], policy, schedule.zone, t.now)
    by_name = {c.name: c for c in live}
    pruned = 0
    for name in decision.prune:
        children.delete(t.sched, by_name[name])
        pruned += 1
        crash_point("schedule:pruned-one")
        t.event("Normal", "Pruned", f"retention pruned {children.kind} {name}")
    if pruned:
        metrics.PRUNED.labels(t.sched.namespace, t.sched.name).inc(pruned)
    blocked = "; ".join(f"{n}: {why}" for n, why in sorted(decision.blocked.items())) or None
    if blocked and blocked != t.status.get("retentionBlocked"):
        t.event("Normal", "PruneBlocked", f"retention would prune, but cannot yet (retried): {blocked}")
    t.patch({"kept": sum(1 for c in live if c.state == State.SUCCEEDED and c.name not in decision.prune),
             "pruned": int(t.status.get("pruned") or 0) + pruned, "retentionBlocked": blocked,
             "observedGeneration": t.generation}, now=False)
    return BUSY_RETRY * 2 if blocked else IDLE_RECHECK


# --- deletion -----------------------------------------------------------------------------------

def finalize(obj: dict[str, Any], settings: Settings) -> str | None:
    """Deleting the schedule: Delete removes its children (through their finalizers), Retain orphans them.

    Returns a reason to retry (the object stays until then), or None when done.
    """
    meta = obj["metadata"]
    sched = Sched(meta["namespace"], meta["name"], meta["uid"])
    try:
        spec = SavepointScheduleSpec.model_validate(obj.get("spec") or {})
        children = adapter(spec.template, settings)
        found = children.children(sched)
    except (ValueError, Refused) as exc:
        log.warning("schedule %s/%s: children cannot be listed (%s); leaving them", sched.namespace, sched.name, exc)
        return None
    retain = str(spec.deletion_policy) == "Retain"
    for child in found:
        if retain:
            children.orphan(sched, child)
        elif child.state is not None:
            children.delete(sched, child)
    verb = "kept" if retain else "deleted"
    events.post(events.owner_ref(sched.owner), "Normal", "ScheduleDeleted",
                f"deletionPolicy {spec.deletion_policy}: {len(found)} child(ren) {verb}")
    return None
