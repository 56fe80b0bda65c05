"""Which of a schedule's children to keep and which to prune: pure functions, no Kubernetes, no Ceph.

The keep rules are restic ``forget``'s (``--keep-last``, ``--keep-hourly`` … ``--keep-yearly``):
successful children are walked newest first; ``keepLast N`` keeps the first N; ``keepDaily N`` keeps
the newest child of each of the N most recent days that have one (likewise hours, ISO weeks,
months, years); a child is kept if *any* rule keeps it, and the rules count independently (one
child may use up a slot of several). Buckets are read in the schedule's time zone: a day is a local
calendar day (23 or 25 hours long across a daylight-saving change), an hour is a real hour (the
repeated hour of a fall-back night is two buckets, told apart by the UTC offset). ``maxAge`` then
removes children older than it, whatever the rules said.

On top of the rules, three protections that restic leaves to the user:

- the newest successful child is always kept (never remove the last restorable point);
- anything a kept, running or newest child ``requires`` (transitively) is kept: a backup that an
  incremental is being made from, a snapshot a running action reads;
- a child that would be pruned but is ``busy`` (locked by another action, in use, has clones) is not
  deleted now and not silently skipped: it is reported as blocked, with why, and retried.

Running children are never pruned; of the failed ones the newest ``keepFailed`` stay for inspection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from enum import StrEnum
from zoneinfo import ZoneInfo


class State(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RUNNING = "Running"


@dataclasses.dataclass(frozen=True)
class Item:
    """One child as retention sees it."""

    name: str
    time: dt.datetime  # its slot (aware)
    state: State
    requires: frozenset[str] = frozenset()  # names of children this one needs to exist
    busy: str | None = None  # why it cannot be deleted right now (None: it can)


@dataclasses.dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    max_age_seconds: int | None = None
    keep_failed: int = 1

    @property
    def keeps_everything(self) -> bool:
        return all(v is None for v in (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly,
                                       self.keep_monthly, self.keep_yearly, self.max_age_seconds))


@dataclasses.dataclass
class Decision:
    keep: dict[str, list[str]]  # name -> why ("last 3", "daily 2026-03-29", "newest", "needed by x", ...)
    prune: list[str]  # delete these now, oldest first
    blocked: dict[str, str]  # would be pruned, cannot be now: why (retried)

    @property
    def kept_successful(self) -> int:
        return self._kept_successful

    _kept_successful: int = 0


def bucket_keys(t: dt.datetime, zone: ZoneInfo) -> dict[str, str]:
    """The bucket of ``t`` for each rule, in ``zone``."""
    local = t.astimezone(zone)
    iso = local.isocalendar()
    offset = local.utcoffset() or dt.timedelta(0)
    return {
        "hourly": f"{local:%Y-%m-%d %H}{'+' if offset >= dt.timedelta(0) else '-'}{abs(int(offset.total_seconds()))}",
        "daily": f"{local:%Y-%m-%d}",
        "weekly": f"{iso.year}-W{iso.week:02d}",
        "monthly": f"{local:%Y-%m}",
        "yearly": f"{local:%Y}",
    }


def _by_rules(successful: Sequence[Item], policy: Policy, zone: ZoneInfo) -> dict[str, list[str]]:
    keep: dict[str, list[str]] = {}
    if policy.keep_last:
        for item in successful[:policy.keep_last]:
            keep.setdefault(item.name, []).append(f"last {policy.keep_last}")
    for rule, count in (("hourly", policy.keep_hourly), ("daily", policy.keep_daily),
                        ("weekly", policy.keep_weekly), ("monthly", policy.keep_monthly),
                        ("yearly", policy.keep_yearly)):
        if not count:
            continue
        seen: set[str] = set()
        for item in successful:
            key = bucket_keys(item.time, zone)[rule]
            if key in seen:
                continue
            seen.add(key)
            keep.setdefault(item.name, []).append(f"{rule} {key}")
            if len(seen) == count:
                break
    return keep


def _closure(start: Iterable[str], edges: dict[str, frozenset[str]]) -> dict[str, str]:
    """Everything reachable from ``start`` over ``requires`` edges: needed name -> a name that needs it."""
    needed: dict[str, str] = {}
    stack = [(name, name) for name in start]
    while stack:
        name, by = stack.pop()
        for dep in edges.get(name, frozenset()):
            if dep not in needed:
                needed[dep] = name if name == by else by
                stack.append((dep, by))
    return needed


def decide(items: Iterable[Item], policy: Policy, zone: ZoneInfo, now: dt.datetime) -> Decision:
    items = list(items)
    by_name = {i.name: i for i in items}
    newest_first = sorted(items, key=lambda i: (i.time, i.name), reverse=True)
    successful = [i for i in newest_first if i.state == State.SUCCEEDED]
    failed = [i for i in newest_first if i.state == State.FAILED]
    running = [i for i in newest_first if i.state == State.RUNNING]

    keep: dict[str, list[str]] = {}
    if policy.keeps_everything:
        for item in successful:
            keep[item.name] = ["no retention rules"]
    else:
        keep = _by_rules(successful, policy, zone)
        if policy.max_age_seconds is not None:
            cutoff = now - dt.timedelta(seconds=policy.max_age_seconds)
            for name in [n for n in keep if by_name[n].time < cutoff]:
                del keep[name]
    if successful:
        keep.setdefault(successful[0].name, []).append("newest")
    for item in running:
        keep.setdefault(item.name, []).append("running")
    for item in (failed if policy.keeps_everything else failed[:policy.keep_failed]):
        keep.setdefault(item.name, []).append("newest failed")

    edges = {i.name: i.requires for i in items}
    prune: list[str] = []
    blocked: dict[str, str] = {}
    while True:  # a blocked item survives too, so what it needs must survive: until nothing changes
        survivors = [n for n in keep if by_name[n].state != State.FAILED] + list(blocked)
        for dep, by in _closure(survivors, edges).items():
            if dep in by_name and f"needed by {by}" not in keep.get(dep, []):
                keep.setdefault(dep, []).append(f"needed by {by}")
        prune, newly_blocked = [], dict(blocked)
        for item in reversed(newest_first):  # oldest first
            if item.name in keep:
                newly_blocked.pop(item.name, None)
            elif item.busy:
                newly_blocked[item.name] = item.busy
            else:
                prune.append(item.name)
        if newly_blocked == blocked:
            break
        blocked = newly_blocked
    decision = Decision(keep=keep, prune=prune, blocked=blocked)
    decision._kept_successful = sum(1 for i in successful if i.name in keep or i.name in blocked)
    return decision


def policy_of(retention: object | None) -> Policy:
    """A Policy from ``spec.retention`` (a ``savepoint.api.Retention`` or None)."""
    if retention is None:
        return Policy()
    from savepoint.api.schedule import duration_seconds

    max_age = getattr(retention, "max_age", None)
    return Policy(keep_last=getattr(retention, "keep_last", None), keep_hourly=getattr(retention, "keep_hourly", None),
                  keep_daily=getattr(retention, "keep_daily", None), keep_weekly=getattr(retention, "keep_weekly", None),
                  keep_monthly=getattr(retention, "keep_monthly", None),
                  keep_yearly=getattr(retention, "keep_yearly", None),
                  max_age_seconds=duration_seconds(max_age) if max_age else None,
                  keep_failed=1 if getattr(retention, "keep_failed", None) is None else retention.keep_failed)  # type: ignore[attr-defined]
