"""SavepointSchedule handlers: one asyncio daemon per schedule (no thread while it sleeps), woken
at its next slot or when the schedule or one of its children changes; the work is
savepoint.flows.schedule.tick, run in a small thread pool shared by all schedules.

Why daemons and not ``@kopf.timer``: a timer fires on a fixed interval, a cron slot is a point in
time. Why async: a sync kopf daemon holds a thread for its whole life — 500 schedules would be 500
threads — while an async one is a coroutine that costs a few KiB while it waits. Blocking work
(API calls, librbd) runs in ``EXECUTOR``: at most ``WORKERS`` ticks at once, however many
schedules there are.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from savepoint.api import GROUP, VERSION
from savepoint.flows import schedule
from savepoint.flows.schedule_children import LABEL_SCHEDULE_UID, SNAPSHOT_GROUP, SNAPSHOT_VERSION
from savepoint.handlers.common import settings_of

PLURAL = schedule.PLURAL
WORKERS = 16
EXECUTOR = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="schedule")

_wake: dict[str, asyncio.Event] = {}
_ticking: dict[str, threading.Lock] = {}  # held while a tick runs: deletion waits for it (a thread cannot be cancelled)
_ticking_guard = threading.Lock()
_children: dict[str, dict[str, dict[str, Any]]] = {}  # schedule uid -> child name -> latest body seen


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _poke(uid: str | None) -> None:
    event = _wake.get(uid or "")
    if event is not None:
        event.set()


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def schedule_daemon(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped,
                          uid: str, **_: Any) -> None:
    settings = settings_of(memo)
    wake = _wake.setdefault(uid, asyncio.Event())
    loop = asyncio.get_running_loop()
    mine: dict[str, Any] | None = None  # the object as our own last status patch returned it
    try:
        while not stopped:
            wake.clear()
            current = copy.deepcopy(dict(body))
            if mine is not None and _rv(mine) > _rv(current):  # the watch has not shown our own patch yet
                current["status"] = mine.get("status")
            known = dict(_children.get(uid, {}))
            try:
                delay, mine = await loop.run_in_executor(EXECUTOR, _tick, current, settings, known)
            except Exception:  # noqa: BLE001 - a schedule must outlive any one failure
                logger.exception("schedule tick failed; retrying in 15s")
                delay = 15.0
                # What we wrote before the failure (a recorded run) may not be in the watched body yet.
                mine = await loop.run_in_executor(EXECUTOR, _read, current)
            await _sleep(wake, stopped, delay)
    finally:
        _wake.pop(uid, None)
        _children.pop(uid, None)
        _seen.pop(uid, None)


def _read(obj: dict[str, Any]) -> dict[str, Any] | None:
    from savepoint.kube import k8s

    meta = obj["metadata"]
    try:
        return dict(k8s.custom().get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"]))
    except Exception:  # noqa: BLE001 - the next tick tries again
        return None


def _lock(uid: str) -> threading.Lock:
    with _ticking_guard:
        return _ticking.setdefault(uid, threading.Lock())


def _tick(obj: dict[str, Any], settings: Any, known: dict[str, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    with _lock(obj["metadata"]["uid"]):
        if obj["metadata"].get("deletionTimestamp"):
            return 3600.0, obj  # being deleted: no new run (the finalizer handles the children)
        return schedule.tick_with(obj, settings, known)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    waiter = asyncio.ensure_future(wake.wait())
    stopper = asyncio.ensure_future(stopped.wait(delay))
    try:
        await asyncio.wait({waiter, stopper}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            task.cancel()


_seen: dict[str, tuple[Any, ...]] = {}  # schedule uid -> what of it a tick must react to, as last seen


@kopf.on.event(GROUP, VERSION, PLURAL)
async def schedule_changed(uid: str, body: kopf.Body, **_: Any) -> None:
    """Spec edits, run-now, deletion: the daemon looks again now. Its own status patches come back as
    events too; those change nothing it must react to, so they do not wake it (two ticks per run saved)."""
    meta = body.get("metadata") or {}
    key = (meta.get("generation"), (meta.get("annotations") or {}).get(schedule.ANN_RUN_NOW),
           meta.get("deletionTimestamp"))
    if _seen.get(uid) != key:
        _seen[uid] = key
        _poke(uid)


def _child_changed(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    owner = (body.get("metadata") or {}).get("labels", {}).get(LABEL_SCHEDULE_UID)
    if not owner or owner not in _wake:
        return
    name = body["metadata"]["name"]
    if event.get("type") == "DELETED":
        _children.get(owner, {}).pop(name, None)
    else:
        _children.setdefault(owner, {})[name] = copy.deepcopy(dict(body))
    _poke(owner)


@kopf.on.event(GROUP, VERSION, "sharebackups", labels={LABEL_SCHEDULE_UID: kopf.PRESENT})
async def schedule_sharebackup_changed(event: dict[str, Any], body: kopf.Body, **kw: Any) -> None:
    _child_changed(event, body)


@kopf.on.event(GROUP, VERSION, "imagesnapshots", labels={LABEL_SCHEDULE_UID: kopf.PRESENT})
async def schedule_imagesnapshot_changed(event: dict[str, Any], body: kopf.Body, **kw: Any) -> None:
    _child_changed(event, body)


@kopf.on.event(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", labels={LABEL_SCHEDULE_UID: kopf.PRESENT})
async def schedule_volumesnapshot_changed(event: dict[str, Any], body: kopf.Body, **kw: Any) -> None:
    _child_changed(event, body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def schedule_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, uid: str, **_: Any) -> None:
    with _lock(uid):  # a tick still running in a worker thread finishes (and makes its child) first
        retry = schedule.finalize(copy.deepcopy(dict(body)), settings_of(memo))
    with _ticking_guard:
        _ticking.pop(uid, None)
    if retry:
        raise kopf.TemporaryError(retry, delay=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
