"""Slots of SavepointSchedules (savepoint.cron): parsing, DST, catch-up after an outage, jitter, names."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from savepoint.cron import SEARCH_LIMIT, InvalidSchedule, Schedule, child_name, due, jitter_offset, slot_of_child

pytestmark = pytest.mark.unit
UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize("text", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@every 30s", "@every 5m",
                                  "30 2 * * *", "*/15 * * * 1-5", "0 0 1 */3 *"])
def test_valid(text: str) -> None:
    Schedule.parse(text, "Europe/Berlin")


@pytest.mark.parametrize(("text", "zone"), [("* * * * * *", "UTC"), ("61 * * * *", "UTC"), ("@sometimes", "UTC"),
                                            ("@every 1s", "UTC"), ("0 0 31 2 *", "UTC"), ("@daily", "Mars/Olympus"),
                                            ("@daily", "../../etc/passwd")])
def test_invalid(text: str, zone: str) -> None:
    with pytest.raises(InvalidSchedule):
        Schedule.parse(text, zone)


def test_daily_across_dst_runs_once_a_day() -> None:
    s = Schedule.parse("30 2 * * *", "Europe/Berlin")
    spring = list(s.slots_between(at(2026, 3, 27), at(2026, 3, 31)))
    assert [t.isoformat() for t in spring] == ["2026-03-27T01:30:00+00:00", "2026-03-28T01:30:00+00:00",
                                               "2026-03-29T01:00:00+00:00",  # 02:30 does not exist: 03:00 CEST
                                               "2026-03-30T00:30:00+00:00"]
    autumn = list(s.slots_between(at(2026, 10, 24), at(2026, 10, 27)))
    assert len(autumn) == 3, "the repeated 02:30 of the fall-back night runs once"


def test_every_is_aligned_to_the_epoch() -> None:
    s = Schedule.parse("@every 30s")
    assert s.next_after(at(2026, 1, 1, 0, 0, 10)) == at(2026, 1, 1, 0, 0, 30)
    assert s.next_after(at(2026, 1, 1, 0, 0, 30)) == at(2026, 1, 1, 0, 1, 0)


def test_an_outage_over_several_slots_yields_one_run() -> None:
    s = Schedule.parse("@every 30s")
    d = due(s, at(2026, 1, 1, 0, 3, 5), at(2026, 1, 1, 0, 0, 0), at(2025, 1, 1), starting_deadline=None)
    assert d.slot == at(2026, 1, 1, 0, 3, 0) and d.missed == 5
    assert d.wake_at == at(2026, 1, 1, 0, 3, 30)
    # nothing due right after the run
    d = due(s, at(2026, 1, 1, 0, 3, 5), at(2026, 1, 1, 0, 3, 0), at(2025, 1, 1), starting_deadline=None)
    assert d.slot is None and d.missed == 0
    # the starting deadline passed: no run, all missed
    d = due(s, at(2026, 1, 1, 0, 3, 25), at(2026, 1, 1, 0, 0, 0), at(2025, 1, 1), starting_deadline=10)
    assert d.slot is None and d.missed == 6


def test_a_long_outage_of_a_minutely_cron_costs_a_bounded_walk() -> None:
    s = Schedule.parse("* * * * *")
    d = due(s, at(2026, 6, 1), at(2026, 1, 1), at(2025, 1, 1), starting_deadline=None)
    assert d.slot == at(2026, 6, 1) and d.missed >= 9999


def test_jitter_is_fixed_per_schedule_and_bounded() -> None:
    assert jitter_offset("uid-a", 600, 3600) == jitter_offset("uid-a", 600, 3600) <= 600
    assert jitter_offset("uid-a", 600, 30) <= 15
    assert jitter_offset("uid-a", 0, 3600) == 0
    spread = {jitter_offset(f"uid-{i}", 60, 3600) for i in range(500)}
    assert len(spread) > 40, "500 schedules spread over the minute"


def test_child_names() -> None:
    name = child_name("nightly", at(2026, 12, 1, 2, 30))
    assert name == "nightly-20261201-023000"
    assert slot_of_child("nightly", name) == at(2026, 12, 1, 2, 30)
    assert slot_of_child("night", name) is None and slot_of_child("nightly", "nightly-x") is None


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["@hourly", "0 */6 * * *", "30 2 * * *", "@every 45s", "15 3 * * 0"]),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
       st.integers(min_value=0, max_value=400 * 86400), st.integers(min_value=1, max_value=20 * 86400))
def test_due_runs_the_newest_slot_and_counts_the_rest(text: str, zone: str, start: int, gap: int) -> None:
    s = Schedule.parse(text, zone)
    last = at(2026, 1, 1) + dt.timedelta(seconds=start)
    now = last + dt.timedelta(seconds=gap)
    slots = list(s.slots_between(last, now))
    assume(len(slots) < SEARCH_LIMIT)
    d = due(s, now, last, last, starting_deadline=None)
    assert d.slot == (slots[-1] if slots else None)
    assert d.missed == max(0, len(slots) - 1)
    assert d.wake_at > now and d.wake_at == s.next_after(now)
