"""Retention decisions (savepoint.retention) over generated histories: examples and properties."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from savepoint.retention import Item, Policy, State, bucket_keys, decide

pytestmark = pytest.mark.unit

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def history(times: list[dt.datetime], state: State = State.SUCCEEDED) -> list[Item]:
    return [Item(f"s-{t:%Y%m%d-%H%M%S}", t, state) for t in times]


def kept(items: list[Item], policy: Policy, zone: ZoneInfo = BERLIN, now: dt.datetime = NOW) -> set[str]:
    return set(decide(items, policy, zone, now).keep)


# --- the restic worked example of docs/schedules.md --------------------------------------------

def test_nightly_keep_7_daily_4_weekly() -> None:
    """30 nightly backups (Tue 2026-11-01 .. 2026-11-30, 01:30 UTC): 7 dailies + the newest of 4 weeks."""
    items = history([dt.datetime(2026, 11, d, 1, 30, tzinfo=UTC) for d in range(1, 31)])
    decision = decide(items, Policy(keep_daily=7, keep_weekly=4), BERLIN, NOW)
    days = sorted(n[2:10] for n in decision.keep)
    # dailies: 24..30; weeklies (ISO weeks end on Sunday): 30 (Mon, W49), 29 (W48), 22 (W47), 15 (W46)
    assert days == ["20261115", "20261122", "20261124", "20261125", "20261126", "20261127", "20261128",
                    "20261129", "20261130"]
    assert len(decision.prune) == 30 - 9
    assert decision.prune == sorted(decision.prune), "oldest first"


def test_keep_last_and_newest_always_kept() -> None:
    items = history([NOW - dt.timedelta(hours=h) for h in range(10)])
    assert kept(items, Policy(keep_last=3)) == {i.name for i in items[:3]}
    # maxAge prunes everything older, but never the last restorable point
    old = history([NOW - dt.timedelta(days=d) for d in range(30, 40)])
    assert kept(old, Policy(max_age_seconds=86400)) == {old[0].name}


def test_no_rules_keeps_everything() -> None:
    items = history([NOW - dt.timedelta(hours=h) for h in range(5)])
    decision = decide(items, Policy(), BERLIN, NOW)
    assert set(decision.keep) == {i.name for i in items} and not decision.prune


def test_failed_and_running() -> None:
    ok = history([NOW - dt.timedelta(hours=h) for h in (5, 6)])
    failed = history([NOW - dt.timedelta(hours=h) for h in (1, 2, 3)], State.FAILED)
    running = history([NOW], State.RUNNING)
    decision = decide(ok + failed + running, Policy(keep_last=1, keep_failed=1), BERLIN, NOW)
    assert set(decision.keep) == {ok[0].name, failed[0].name, running[0].name}
    assert set(decision.prune) == {ok[1].name, failed[1].name, failed[2].name}


def test_parent_of_a_running_backup_is_kept() -> None:
    a, b, c = history([NOW - dt.timedelta(hours=h) for h in (3, 2, 1)])
    child = Item("s-running", NOW, State.RUNNING, requires=frozenset({a.name}))
    decision = decide([a, b, c, child], Policy(keep_last=1), BERLIN, NOW)
    assert a.name in decision.keep and "needed by s-running" in decision.keep[a.name]
    assert decision.prune == [b.name]


def test_busy_items_are_blocked_not_skipped() -> None:
    a, b = history([NOW - dt.timedelta(hours=h) for h in (2, 1)])
    a = Item(a.name, a.time, a.state, busy="VolumeRevert/x holds the volume")
    decision = decide([a, b], Policy(keep_last=1), BERLIN, NOW)
    assert decision.prune == [] and decision.blocked == {a.name: "VolumeRevert/x holds the volume"}


def test_buckets_across_dst() -> None:
    """The fall-back night's repeated 02:xx hour is two hourly buckets; its 25-hour day is one daily bucket."""
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert bucket_keys(first, BERLIN)["hourly"] != bucket_keys(second, BERLIN)["hourly"]
    assert bucket_keys(first, BERLIN)["daily"] == bucket_keys(second, BERLIN)["daily"] == "2026-10-25"
    # spring forward: 2026-03-29 has 23 hours; every hour of it is its own bucket, all on one day
    spring = [dt.datetime(2026, 3, 28, 23, tzinfo=UTC) + dt.timedelta(hours=h) for h in range(23)]
    assert len({bucket_keys(t, BERLIN)["hourly"] for t in spring}) == 23
    assert {bucket_keys(t, BERLIN)["daily"] for t in spring} == {"2026-03-29"}


# --- properties ----------------------------------------------------------------------------------

ZONES = st.sampled_from([ZoneInfo(z) for z in ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                                               "Asia/Kolkata")])
# Histories around the 2026 DST changes of the zones above (Mar/Apr and Oct/Nov), minutes apart to weeks apart.
START = dt.datetime(2026, 3, 1, tzinfo=UTC)
offsets = st.lists(st.integers(min_value=0, max_value=300 * 24 * 60), min_size=0, max_size=60, unique=True)
counts = st.none() | st.integers(min_value=0, max_value=10)
policies = st.builds(Policy, keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
                     keep_monthly=counts, keep_yearly=counts,
                     max_age_seconds=st.none() | st.integers(min_value=60, max_value=400 * 86400),
                     keep_failed=st.integers(min_value=0, max_value=3))
states = st.sampled_from([State.SUCCEEDED, State.SUCCEEDED, State.SUCCEEDED, State.FAILED, State.RUNNING])


@st.composite
def histories(draw: st.DrawFn) -> list[Item]:
    minutes = sorted(draw(offsets))
    items: list[Item] = []
    for m in minutes:
        t = START + dt.timedelta(minutes=m)
        state = draw(states)
        requires: frozenset[str] = frozenset()
        if items and draw(st.booleans()):
            requires = frozenset({draw(st.sampled_from(items)).name})
        busy = "in use" if draw(st.integers(0, 9)) == 0 else None
        items.append(Item(f"s-{t:%Y%m%d-%H%M%S}", t, state, requires, busy))
    return items


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(histories(), policies, ZONES)
def test_the_newest_successful_point_always_survives(items: list[Item], policy: Policy, zone: ZoneInfo) -> None:
    decision = decide(items, policy, zone, START + dt.timedelta(days=400))
    successful = [i for i in items if i.state == State.SUCCEEDED]
    if successful:
        newest = max(successful, key=lambda i: (i.time, i.name))
        assert newest.name in decision.keep
        assert newest.name not in decision.prune


@PROPS
@given(histories(), policies, ZONES)
def test_a_needed_parent_is_never_pruned(items: list[Item], policy: Policy, zone: ZoneInfo) -> None:
    decision = decide(items, policy, zone, START + dt.timedelta(days=400))
    by_name = {i.name: i for i in items}
    survivors = {n for n in decision.keep if by_name[n].state != State.FAILED} | set(decision.blocked)
    for name in list(survivors):
        for dep in by_name[name].requires:
            assert dep not in decision.prune, f"{dep} is needed by {name}"
    # and nothing running, nothing busy, is ever deleted
    for name in decision.prune:
        assert by_name[name].state != State.RUNNING and by_name[name].busy is None


@PROPS
@given(histories(), policies, ZONES)
def test_every_item_is_decided_exactly_once(items: list[Item], policy: Policy, zone: ZoneInfo) -> None:
    decision = decide(items, policy, zone, START + dt.timedelta(days=400))
    keep, prune, blocked = set(decision.keep), set(decision.prune), set(decision.blocked)
    assert keep | prune | blocked == {i.name for i in items}
    assert not (keep & prune) and not (keep & blocked) and not (prune & blocked)


@PROPS
@given(st.lists(st.integers(min_value=0, max_value=300 * 24 * 60), min_size=1, max_size=80, unique=True),
       st.sampled_from(["hourly", "daily", "weekly", "monthly"]), st.integers(min_value=1, max_value=12), ZONES)
def test_bucket_counts_are_right_across_dst(minutes: list[int], rule: str, count: int, zone: ZoneInfo) -> None:
    """keepX N keeps exactly the newest item of each of the N newest local buckets that have one."""
    items = history([START + dt.timedelta(minutes=m) for m in sorted(minutes)])
    decision = decide(items, Policy(**{f"keep_{rule}": count}), zone, START + dt.timedelta(days=400))
    buckets: dict[str, Item] = {}
    for item in items:  # oldest first: the last one written per bucket is its newest
        buckets[bucket_keys(item.time, zone)[rule]] = item
    newest_buckets = sorted(buckets.values(), key=lambda i: i.time, reverse=True)[:count]
    expected = {i.name for i in newest_buckets} | {max(items, key=lambda i: i.time).name}
    assert set(decision.keep) == expected
    # a local day is one bucket however long it is (23, 24 or 25 hours), an hour is a real hour
    spans = {"hourly": 3600, "daily": 25 * 3600, "weekly": 7 * 86400 + 3600, "monthly": 31 * 86400 + 3600}
    grouped: dict[str, list[dt.datetime]] = {}
    for item in items:
        grouped.setdefault(bucket_keys(item.time, zone)[rule], []).append(item.time)
    for times in grouped.values():
        assert (max(times) - min(times)).total_seconds() < spans[rule]
