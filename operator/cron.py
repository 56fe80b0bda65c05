"""When a SavepointSchedule runs: slots from its ``schedule`` and ``timeZone`` (pure, no Kubernetes).

Cron expressions are evaluated by ``cronsim`` (the evaluator of healthchecks.io): strict 5-field
parsing, and Debian cron's daylight-saving rules, which are what people expect of "every night at
02:30": on the spring-forward night a slot in the skipped hour runs once at the first instant after
the gap, and on the fall-back night a daily slot in the repeated hour runs once, not twice (croniter
runs it twice). The macros ``@hourly`` … ``@yearly`` are the usual cron spellings of 5-field
expressions. ``@every N{s,m,h}`` is Savepoint's own: slots at whole multiples of N seconds since the
Unix epoch (independent of the time zone), so that tests — and users who want it — can run every 30
seconds.

Jitter (``spec.jitterSeconds``) never moves a slot: the child is still named after its slot. It
delays the *start* by a fixed offset per schedule, derived from its uid, at most half the period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = dt.UTC
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
EVERY = re.compile(r"^@every ([1-9][0-9]{0,6})(s|m|h)$")
UNIT = {"s": 1, "m": 60, "h": 3600}
MIN_EVERY_SECONDS = 5
SEARCH_LIMIT = 10_000  # cron slots examined at most when walking a window (a window is bounded anyway)


class InvalidSchedule(ValueError):
    """The schedule or time zone cannot be evaluated; the message says why, for people."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    text: str
    zone: ZoneInfo
    every: int | None  # seconds, for @every
    expression: str | None  # 5-field cron, for everything else

    @classmethod
    def parse(cls, text: str, time_zone: str = "UTC") -> Schedule:
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidSchedule(f"timeZone {time_zone!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc
        text = text.strip()
        every = EVERY.match(text)
        if every:
            seconds = int(every.group(1)) * UNIT[every.group(2)]
            if seconds < MIN_EVERY_SECONDS:
                raise InvalidSchedule(f"{text!r}: @every needs at least {MIN_EVERY_SECONDS}s")
            return cls(text, zone, seconds, None)
        expression = MACROS.get(text.lower(), text)
        if expression.startswith("@"):
            raise InvalidSchedule(f"{text!r} is not one of {', '.join(sorted(MACROS))} or @every N(s|m|h)")
        if len(expression.split()) != 5:
            raise InvalidSchedule(f"{text!r} is not a 5-field cron expression (minute hour day month weekday)")
        try:
            probe = CronSim(expression, dt.datetime(2000, 1, 1, tzinfo=zone))
            next(probe)
        except (CronSimError, StopIteration, ValueError) as exc:
            raise InvalidSchedule(f"{text!r} is not a valid cron expression: {exc or 'it never fires'}") from exc
        return cls(text, zone, None, expression)

    # --- slots --------------------------------------------------------------------------------

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``t`` (UTC, whole seconds)."""
        t = _utc(t)
        if self.every:
            epoch = int(t.timestamp())
            return dt.datetime.fromtimestamp((epoch // self.every + 1) * self.every, UTC)
        local = t.astimezone(self.zone).replace(microsecond=0)
        for candidate in CronSim(self.expression or "", local):
            if _utc(candidate) > t:
                return _utc(candidate)
        raise InvalidSchedule(f"{self.text!r} never fires")  # pragma: no cover - CronSim is infinite

    def latest_at_or_before(self, t: dt.datetime, not_before: dt.datetime) -> tuple[dt.datetime | None, int]:
        """The newest slot in ``(not_before, t]`` and how many slots that window holds (counted up to
        SEARCH_LIMIT: an outage of years costs no more than one of days)."""
        t, not_before = _utc(t), _utc(not_before)
        if self.every:
            count = int(t.timestamp()) // self.every - int(not_before.timestamp()) // self.every
            if count <= 0:
                return None, 0
            return dt.datetime.fromtimestamp(int(t.timestamp()) // self.every * self.every, UTC), count
        newest, count = None, 0
        start = (t + dt.timedelta(seconds=1)).astimezone(self.zone)
        for candidate in CronSim(self.expression or "", start, reverse=True):
            slot = _utc(candidate)
            if slot > t:
                continue
            if slot <= not_before or count >= SEARCH_LIMIT:
                break
            newest = newest or slot
            count += 1
        return newest, count

    def slots_between(self, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
        """Slots in ``(after, until]`` in order (at most SEARCH_LIMIT of them)."""
        after, until = _utc(after), _utc(until)
        if self.every:
            first = (int(after.timestamp()) // self.every + 1) * self.every
            last = int(until.timestamp())
            for n, epoch in enumerate(range(first, last + 1, self.every)):
                if n >= SEARCH_LIMIT:
                    return
                yield dt.datetime.fromtimestamp(epoch, UTC)
            return
        local = after.astimezone(self.zone).replace(microsecond=0)
        for n, candidate in enumerate(CronSim(self.expression or "", local)):
            slot = _utc(candidate)
            if slot > until or n >= SEARCH_LIMIT:
                return
            if slot > after:
                yield slot

    def period_seconds(self, around: dt.datetime) -> float:
        """The gap between the two slots after ``around`` (for jitter bounds and "two periods" alerts)."""
        first = self.next_after(around)
        return (self.next_after(first) - first).total_seconds()


def jitter_offset(uid: str, jitter_seconds: int, period_seconds: float) -> int:
    """A fixed delay per schedule in ``[0, min(jitter, period/2)]``, from its uid: spread, but deterministic."""
    bound = int(min(jitter_seconds, period_seconds // 2))
    if bound <= 0:
        return 0
    digest = int(hashlib.sha256(uid.encode()).hexdigest()[:12], 16)
    return digest % (bound + 1)


def child_name(schedule: str, slot: dt.datetime) -> str:
    """``<schedule>-<YYYYMMDD>-<HHMMSS>`` of the slot in UTC: one name per slot, so never two children for it."""
    return f"{schedule}-{_utc(slot).strftime('%Y%m%d-%H%M%S')}"


def slot_of_child(schedule: str, name: str) -> dt.datetime | None:
    """The slot a child's name encodes, or None when the name is not one of ``schedule``'s."""
    prefix = f"{schedule}-"
    if not name.startswith(prefix):
        return None
    try:
        return dt.datetime.strptime(name[len(prefix):], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def rfc3339(t: dt.datetime) -> str:
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return _utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def _utc(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(UTC).replace(microsecond=0)


@dataclasses.dataclass(frozen=True)
class Due:
    """What to do now: run ``slot`` (or nothing), how many slots were skipped, and when to look again."""

    slot: dt.datetime | None
    missed: int
    wake_at: dt.datetime


def due(schedule: Schedule, now: dt.datetime, last: dt.datetime | None, created: dt.datetime, *,
        starting_deadline: int | None, jitter: int = 0) -> Due:
    """The slot to run now, if any (pure; the heart of the missed-run policy).

    Only slots after the last one run (or after creation) count. Of those whose start time (slot +
    jitter) has come, only the newest runs — one catch-up run after an outage, however many slots it
    spanned — unless it is older than ``starting_deadline`` seconds, then none does. Every other one
    is counted as missed.
    """
    now = _utc(now)
    since = _utc(last) if last is not None else _utc(created)
    started = now - dt.timedelta(seconds=jitter)
    slot, count = schedule.latest_at_or_before(started, since)
    missed = max(0, count - 1)
    if slot is not None and starting_deadline is not None and (started - slot).total_seconds() > starting_deadline:
        missed += 1
        slot = None
    upcoming = schedule.next_after(max(started, since))
    return Due(slot, missed, upcoming + dt.timedelta(seconds=jitter))
