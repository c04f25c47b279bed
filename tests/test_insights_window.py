"""Insights over the whole feed window, a first import, and days passing, on a real Store.

Issue 13, items 1 and 3: flags cover the window the feed shows (not only ``report_days``),
a burst that began before the window and runs into it is flagged, a first import of 12
weeks flags what is in it, and a flag whose day has passed keeps its SEQUENCE until what
it says changes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import icalendar
from test_insights_support import alert, at, backup, days, make_world

from icsfeed.insights.base import VERDICT_ATTR, settle
from icsfeed.model import Event
from icsfeed.render import build_feed
from icsfeed.routing import find_feed

TODAY = date(2026, 3, 18)  # a Wednesday
NOW = at(TODAY, 15)


def quiet(first: date, last: date) -> list[Event]:
    """An alert every ten days (on days ending in 8)."""
    return [alert(f"q{day}", at(day, 11)) for day in days(first, last) if day.day % 10 == 8]


def db01(first: date, last: date, skip_full: tuple[date, ...] = ()) -> list[Event]:
    """Nightly at 01:30, a full every Sunday at 03:00 (Berlin)."""
    out = [backup(f"n-{d}", at(d, 1, 30)) for d in days(first, last)]
    return out + [backup(f"f-{d}", at(d, 3), full=True) for d in days(first, last)
                  if d.weekday() == 6 and d not in skip_full]


def feed_summaries(world: object, now: object = NOW) -> list[str]:
    """SUMMARY of every ⚠️ flag in ACME's rendered feed (what a subscriber sees)."""
    spec = find_feed(world.config, "account", "acme")  # type: ignore[attr-defined]
    body = build_feed(world.config, world.store, spec, now).body  # type: ignore[arg-type, attr-defined]
    cal = icalendar.Calendar.from_ical(body)
    return sorted(str(e["SUMMARY"]) for e in cal.walk("VEVENT") if str(e["SUMMARY"]).startswith("⚠️")
                  and str(e.get("STATUS")) == "CONFIRMED" and "Last week" not in str(e["SUMMARY"]))


def test_a_first_import_of_twelve_weeks_flags_what_is_in_it(tmp_path: Path) -> None:
    """Stored at once: a burst nine weeks ago and a full backup missed ten weeks ago, in the
    account's third week — both older than 42 days, both in the feed's 90 days. The missed
    Sunday had two Sundays before it: the weeks after it show the rhythm."""
    first = TODAY - timedelta(weeks=12)
    burst_day = date(2026, 1, 14)
    missed = date(2026, 1, 11)
    assert (TODAY - burst_day).days > 42 and (TODAY - missed).days > 42
    world = make_world(tmp_path)
    spike = [alert(f"b{i}", at(burst_day + timedelta(days=i % 2), 9, i)) for i in range(14)]
    world.poll("alerts", quiet(first, TODAY) + spike, NOW)
    world.poll("backups", db01(first, TODAY, skip_full=(missed,)), NOW)
    world.refresh(NOW)
    [burst] = world.flags("bursts")
    assert (burst.start, burst.end) == (burst_day, burst_day + timedelta(days=2))
    assert burst.title.startswith("Alert burst: 14 alerts in 2 days")
    assert "weeks before and after it" in burst.detail  # a young account: judged by the weeks around it
    [miss] = world.flags("backups")
    assert (miss.start, miss.title) == (missed, "Missed weekly full backup for db01 (usually Sunday)")
    assert "Learned from the 8 weeks around Sun 11 Jan 2026" in miss.detail
    shown = feed_summaries(world)
    assert any(t.startswith("⚠️ Alert burst: 14 alerts in 2 days") for t in shown)
    assert "⚠️ Missed weekly full backup for db01 (usually Sunday)" in shown


def test_a_burst_that_began_before_the_window_and_runs_into_it_is_flagged(tmp_path: Path, another_store: Callable[[], None]) -> None:
    """The feed shows 90 days back: a burst from day 93 to day 89 is half in it; one that
    ended on day 95 is not shown, and not flagged."""
    world = make_world(tmp_path)
    straddling = [alert(f"s{i}", at(TODAY - timedelta(days=93 - i % 5), 10, i)) for i in range(25)]
    before = [alert(f"o{i}", at(TODAY - timedelta(days=96 - i % 2), 10, i)) for i in range(20)]
    history = quiet(TODAY - timedelta(days=200), TODAY) + straddling
    world.poll("alerts", history, NOW)
    world.refresh(NOW)
    flags = world.flags("bursts")
    assert [(f.start, f.end) for f in flags] == [(TODAY - timedelta(days=93), TODAY - timedelta(days=88))]
    assert next(t for t in feed_summaries(world) if t.startswith("⚠️ Alert burst: ")).split(" (")[0] in (
        "⚠️ Alert burst: 25 alerts in 5 days", "⚠️ Alert burst: 26 alerts in 5 days")  # a quiet one among them
    another_store()  # an independent store (on PostgreSQL: its own database)
    other = make_world(tmp_path / "other")
    other.poll("alerts", quiet(TODAY - timedelta(days=200), TODAY) + before, NOW)
    other.refresh(NOW)
    assert other.flags("bursts") == []


def test_report_days_still_narrows_the_range_and_an_account_window_widens_it(tmp_path: Path) -> None:
    first = TODAY - timedelta(weeks=20)
    spike = [alert(f"b{i}", at(date(2026, 1, 14), 9, i)) for i in range(14)]
    world = make_world(tmp_path, {"bursts": {"report_days": 42}})
    world.poll("alerts", quiet(first, TODAY) + spike, NOW)
    world.refresh(NOW)
    assert world.flags("bursts") == []  # 63 days ago: outside 42
    accounts = [{"id": "acme", "name": "ACME Corp", "keys": ["acme"], "timezone": "Europe/Berlin",
                 "window_back_days": 30}]
    world.reconfigure({}, accounts=accounts)
    world.refresh(NOW)
    assert world.flags("bursts") == []  # the account's feed shows 30 days: so do its flags
    world.reconfigure({}, accounts=[{**accounts[0], "window_back_days": 120}])
    world.refresh(NOW)
    assert [f.start for f in world.flags("bursts")] == [date(2026, 1, 14)]


def test_a_day_passing_changes_no_flag_whose_verdict_stands(tmp_path: Path) -> None:
    """Sunday fulls at 03:00, one missed on 15 February. A later full comes at 05:40 (within
    grace), which moves the usual time the old flag quotes: its text is kept and its
    SEQUENCE does not move. A changed verdict still updates it: the missed run restored at
    the origin cancels it."""
    sundays = [d for d in days(date(2026, 1, 4), date(2026, 3, 15)) if d.weekday() == 6]
    runs = [backup(f"f-{d}", at(d, 3), full=True) for d in sundays if d != date(2026, 2, 15)]
    world = make_world(tmp_path)
    sunday = date(2026, 3, 22)
    first_now = at(sunday, 2)
    world.poll("backups", runs, first_now)
    world.refresh(first_now)
    [row] = world.rows("backups")
    assert row.event.start == date(2026, 2, 15) and "Expected around 03:00" in row.event.detail
    late = backup("f-late", at(sunday, 5, 40), full=True)  # the next day's data: a late run
    next_day = at(sunday + timedelta(days=1), 9)
    world.poll("backups", [*runs, late], next_day)
    world.refresh(next_day)
    [same] = world.rows("backups")
    assert (same.uid, same.sequence, same.event.detail) == (row.uid, row.sequence, row.event.detail)
    restored = backup("f-restored", at(date(2026, 2, 15), 3, 5), full=True)
    world.poll("backups", [*runs, late, restored], next_day + timedelta(hours=1))
    world.refresh(next_day + timedelta(hours=1))
    [gone] = world.rows("backups", status="cancelled")
    assert gone.uid == row.uid and gone.sequence == row.sequence + 1


def test_settle_keeps_a_passed_flag_only_while_its_verdict_is_the_same() -> None:
    def flag(day: date, verdict: str, detail: str) -> Event:
        return Event(source="insight-backups:acme", key=f"acme:{day}", kind="insight", title="t", start=day,
                     end=day + timedelta(days=1), detail=detail, account="acme", attrs={VERDICT_ATTR: verdict})

    old_day, today = date(2026, 3, 1), date(2026, 3, 18)
    stored = [flag(old_day, "a", "Expected around 03:00"), flag(today, "b", "Expected around 03:00")]
    fresh = [flag(old_day, "a", "Expected around 03:14"), flag(today, "b", "Expected around 03:14")]
    kept = settle(fresh, stored, today)
    assert [f.detail for f in kept] == ["Expected around 03:00", "Expected around 03:14"]  # today's still moves
    changed = settle([flag(old_day, "c", "Expected around 03:14")], stored, today)
    assert changed[0].detail == "Expected around 03:14"
