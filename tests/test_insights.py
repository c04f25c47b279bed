"""Insights as a whole: settings, stale tickets, the Monday summary, refresh, and the demo via the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import icalendar
import pytest
from parsers import check_all, parse_icalendar
from test_insights_support import ACCOUNTS, alert, at, backup, days, make_config, make_world, ticket

import icsfeed.insights as insights
from icsfeed.config import ConfigError
from icsfeed.insights import refresh_all
from icsfeed.insights.base import Detector
from icsfeed.insights.settings import InsightsSettings
from icsfeed.render import render_feeds
from icsfeed.tokens import check_token, load_secret_key

REPO = Path(__file__).resolve().parents[1]
NOW = at(date(2026, 3, 18), 15)  # Wednesday; this week's Monday is 16 March


# --- settings --------------------------------------------------------------------------------

def test_missing_section_gives_defaults_and_values_are_validated(tmp_path: Path) -> None:
    config = make_config(tmp_path / "a")
    assert isinstance(config.insights, InsightsSettings)
    assert config.insights == InsightsSettings() and config.insights.bursts.enabled
    config = make_config(tmp_path / "b", {"backups": {"grace": "36h", "raise_after": "PT2H"}, "bursts": {"p": 1e-6}})
    assert config.insights.backups.grace == timedelta(hours=36)
    assert config.insights.backups.raise_after == timedelta(hours=2)
    assert config.insights.bursts.p == 1e-6
    assert config.insights.bursts.report_days is None  # the feed's own window
    bad = {"bursts": {"p": -1}, "backups": {"gracee": "1h", "keep_share": 0.9},
           "stale_tickets": {"after_days": "soon"}}
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path / "c", bad)
    problems = {(path, message) for _file, path, message in info.value.problems}
    paths = {path for path, _ in problems}
    assert "insights.bursts.p" in paths and "insights.stale_tickets.after_days" in paths
    assert ("insights.backups.gracee", "unknown setting") in problems
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path / "d", {"backups": {"keep_share": 0.9}})
    assert any("keep_share must not be above regular_share" in m for _f, _p, m in info.value.problems)
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path / "e", {"backups": {"min_weeks": 9}})
    assert any("min_weeks must not be above history_weeks" in m for _f, _p, m in info.value.problems)


# --- stale tickets ------------------------------------------------------------------------------

def test_stale_tickets_by_state_and_update(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    mar = lambda d, h=10: at(date(2026, 3, d), h)  # noqa: E731
    tickets = [
        ticket("T1", mar(1), "open", updated=mar(8)),                  # quiet since 8 March: stale on the 15th
        ticket("T2", mar(1), "solved", updated=mar(2)),                # closed
        ticket("T3", mar(1), "open", updated=mar(16)),                 # updated recently
        ticket("T4", mar(5)),                                          # no updated: created counts
        ticket("T5", mar(1), state="Closed"),                          # closed, in other words
        ticket("T6", at(date(2026, 2, 10), 9), state="In Progress", status_category="indeterminate",
               updated=at(date(2026, 2, 20), 9)),                      # Jira, still open
        ticket("T7", mar(1), state="Done", status_category="done"),    # Jira, done
        ticket("T8", mar(2), state="pending", updated=mar(3)),         # waiting on the customer: still open
    ]
    world.poll("tickets", tickets, NOW)
    world.refresh(NOW)
    flags = {f.attrs["ticket_key"]: f for f in world.flags("stale_tickets")}
    assert sorted(flags) == ["T1", "T4", "T6", "T8"]
    t1 = flags["T1"]
    assert (t1.start, t1.end) == (date(2026, 3, 15), date(2026, 3, 16))
    assert t1.title == "Stale ticket: #T1 Checkout is slow (no update since Sun 8 Mar 2026)"
    assert t1.url == "https://helpdesk.example/tickets/T1"
    [row] = [r for r in world.rows("stale_tickets") if r.event.attrs["ticket_key"] == "T1"]
    # the ticket gets an answer: the flag is withdrawn, same UID
    tickets[0] = ticket("T1", mar(1), "open", updated=mar(18, 11))
    world.poll("tickets", tickets, NOW)
    world.refresh(NOW)
    assert sorted(f.attrs["ticket_key"] for f in world.flags("stale_tickets")) == ["T4", "T6", "T8"]
    [gone] = world.rows("stale_tickets", status="cancelled")
    assert gone.uid == row.uid


def test_without_updated_a_change_seen_by_icsfeed_counts_as_an_update(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    created = at(date(2026, 2, 1), 9)
    world.poll("tickets", [ticket("T9", created)], at(date(2026, 3, 1), 9))
    world.refresh(at(date(2026, 3, 1), 9))
    assert [f.start for f in world.flags("stale_tickets")] == [date(2026, 2, 8)]
    world.poll("tickets", [ticket("T9", created, state="pending")], at(date(2026, 3, 17), 9))
    world.refresh(NOW)
    assert world.flags("stale_tickets") == []
    world.refresh(at(date(2026, 3, 25), 9))
    assert [f.start for f in world.flags("stale_tickets")] == [date(2026, 3, 24)]


def test_a_ticket_stale_since_before_the_window_stays_in_view(tmp_path: Path) -> None:
    """Quiet since 1 November 2025: stale since the 8th, 130 days ago, before the 90 days the
    feed shows. Its flag is on the first day four-weekly after that inside the window, and
    it stays there day after day (one SEQUENCE), until the window moves past it."""
    world = make_world(tmp_path)
    world.poll("tickets", [ticket("T1", at(date(2025, 10, 20), 9), "open", updated=at(date(2025, 11, 1), 9))], NOW)
    world.refresh(NOW)
    [row] = world.rows("stale_tickets")
    day = row.event.start
    assert isinstance(day, date) and (day - date(2025, 11, 8)).days % 28 == 0
    assert NOW.date() - timedelta(days=91) <= day < NOW.date() - timedelta(days=91 - 28)
    assert row.event.title == "Stale ticket: #T1 Checkout is slow (no update since Sat 1 Nov 2025)"
    assert "Still stale on" in row.event.detail
    for later in range(1, 4):
        world.refresh(NOW + timedelta(days=later))
    [same] = world.rows("stale_tickets")
    assert (same.uid, same.sequence, same.event.start) == (row.uid, row.sequence, day)
    moved = NOW + timedelta(days=(day - (NOW.date() - timedelta(days=91))).days + 1)
    world.refresh(moved)
    [again] = world.rows("stale_tickets")
    assert again.uid == row.uid and again.event.start == day + timedelta(days=28)


# --- the Monday summary ---------------------------------------------------------------------------

def test_monday_summary_counts_against_usual_and_links_the_month_view(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    history = [alert(f"a{d}", at(d, 12)) for d in days(date(2026, 1, 5), date(2026, 3, 8)) if d.weekday() == 2]
    week = [alert(f"w{i}", at(date(2026, 3, 10 + i), 12)) for i in range(3)]
    backups = [backup(f"b{d}", at(d, 1, 30)) for d in days(date(2026, 1, 5), date(2026, 3, 18))]
    backups += [backup(f"f{d}", at(d, 3), full=True) for d in days(date(2026, 1, 5), date(2026, 3, 14)) if d.weekday() == 6]
    world.poll("alerts", history + week, NOW)
    world.poll("backups", backups, NOW)  # no full on Sunday 15 March: a flag raised last week
    world.poll("tickets", [ticket("T1", at(date(2026, 3, 11), 9)), ticket("T2", at(date(2026, 3, 12), 9), "solved")], NOW)
    world.refresh(NOW)
    current = [f for f in world.flags("summary") if "open_tickets" in f.attrs]
    assert len(current) == 1
    s = current[0]
    assert (s.start, s.end) == (date(2026, 3, 16), date(2026, 3, 17)) and s.severity == "info"
    assert s.title == "Last week at ACME Corp: 3 alerts (usually 1), 2 tickets, 1 flag, 1 ticket open"
    lines = s.detail.splitlines()
    assert lines[0] == "The week Mon 9 Mar 2026 – Sun 15 Mar 2026 at ACME Corp, against the 8 weeks before:"
    assert "• 3 alerts (usually about 1)" in lines and "• 7 backups (usually about 8)" in lines
    assert "• Sun 15 Mar 2026: Missed weekly full backup for db01 (usually Sunday)" in lines
    assert "• #T1 Checkout is slow — https://helpdesk.example/tickets/T1" in lines
    assert s.attrs["counts"] == {"alert": 3, "backup": 7, "ticket": 2}
    # it links "the month view of the feed that shows it": no token is stored with it (each
    # feed renders its own link, tests/test_team_links.py); the account feed links ACME's view
    assert s.url is None and s.attrs["view_link"] is True
    render_feeds(world.config, world.store, now=NOW)
    stored = world.store.get_feed("account/acme")
    assert stored is not None
    [vevent] = [e for e in icalendar.Calendar.from_ical(stored.body).walk("VEVENT") if str(e["SUMMARY"]).endswith(s.title)]
    url = urlsplit(str(vevent["URL"]))
    assert (url.scheme, url.netloc, url.path) == ("https", "feeds.example.com", "/view/acme")
    token = parse_qs(url.query)["token"][0]
    assert check_token(load_secret_key(world.config.data_dir, world.store), "account/acme", 1, token)
    # earlier Mondays were filled in (no open-ticket line: it would not be true of then)
    past = sorted(f.start for f in world.flags("summary") if "open_tickets" not in f.attrs)
    assert past == [date(2026, 2, 16), date(2026, 2, 23), date(2026, 3, 2), date(2026, 3, 9)]
    assert all("Open tickets now" not in f.detail for f in world.flags("summary") if "open_tickets" not in f.attrs)
    # a week later this summary is history: kept as it was made, tickets and all
    [row] = [r for r in world.rows("summary") if r.event.start == date(2026, 3, 16)]
    next_week = at(date(2026, 3, 23), 9)
    world.poll("tickets", [ticket("T1", at(date(2026, 3, 11), 9), "solved")], next_week)
    world.refresh(next_week)
    [kept] = [r for r in world.rows("summary") if r.event.start == date(2026, 3, 16)]
    assert (kept.uid, kept.sequence, kept.event.detail) == (row.uid, row.sequence, row.event.detail)
    assert [f.title.endswith("0 tickets open") for f in world.flags("summary") if f.start == date(2026, 3, 23)] == [True]


def test_summary_counts_backups_exactly(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("backups", [backup(f"b{d}", at(d, 1, 30)) for d in days(date(2026, 2, 1), date(2026, 3, 18))], NOW)
    world.refresh(NOW)
    [s] = [f for f in world.flags("summary") if "open_tickets" in f.attrs]
    assert s.attrs["counts"] == {"backup": 7}
    assert s.title == "Last week at ACME Corp: 0 alerts (usually none), 0 tickets, 0 flags, 0 tickets open"


# --- refresh as a whole -------------------------------------------------------------------------

def quiet_then_burst() -> list:
    quiet = [alert(f"q{d}", at(d, 11)) for i, d in enumerate(days(date(2025, 12, 1), date(2026, 3, 10))) if i % 10 == 0]
    return quiet + [alert(f"b{i}", at(date(2026, 3, 17), 9, i)) for i in range(12)]


def test_a_failing_detector_keeps_its_flags_and_the_others_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_then_burst(), NOW)
    world.refresh(NOW)
    [burst] = world.rows("bursts")

    def broken(_ctx: object) -> list:
        raise RuntimeError("detector bug")

    detectors = tuple(Detector(d.name, d.enabled, d.horizon, broken) if d.name == "bursts" else d
                      for d in insights.DETECTORS)
    monkeypatch.setattr(insights, "DETECTORS", detectors)
    world.poll("tickets", [ticket("T1", at(date(2026, 3, 1), 9))], NOW)
    with caplog.at_level(logging.ERROR, logger="icsfeed.insights"):
        world.refresh(NOW + timedelta(hours=1))
    assert "insight detector bursts failed for account acme" in caplog.text
    [still] = world.rows("bursts")
    assert (still.uid, still.sequence, still.event.status) == (burst.uid, burst.sequence, "confirmed")
    assert [f.attrs["ticket_key"] for f in world.flags("stale_tickets")] == ["T1"]


def test_switched_off_insights_and_removed_accounts_cancel_flags(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_then_burst(), NOW)
    world.refresh(NOW)
    assert world.flags("bursts") and world.flags("summary")
    world.reconfigure({"enabled": False})
    world.refresh(NOW)
    assert world.flags() == [] and world.flags(status="cancelled")
    world.reconfigure({})
    world.refresh(NOW)
    assert world.flags("bursts")
    world.reconfigure({}, accounts=[a for a in ACCOUNTS if a["id"] != "acme"])
    refresh_all(world.config, world.store, NOW.timestamp())
    assert world.flags() == [] and world.flags(status="cancelled")


def test_the_clock_is_never_read(tmp_path: Path) -> None:
    """Everything is relative to ``now``: a refresh "in 2026" gives the same flags whatever today is."""
    world = make_world(tmp_path)
    world.poll("alerts", quiet_then_burst(), NOW)
    world.refresh(NOW)
    assert [f.start for f in world.flags("bursts")] == [date(2026, 3, 17)]
    early = at(date(2026, 3, 16), 12)  # the day before the burst: nothing yet
    world.refresh(early)
    assert world.flags("bursts") == []


# --- the demo, through the CLI ----------------------------------------------------------------------

def _icsfeed(data: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSFEED_")}
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(REPO / "config"), "--data", str(data), *args],
                          cwd=REPO, env=env, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


@pytest.mark.slow
def test_demo_feeds_show_a_burst_and_a_missed_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _icsfeed(data, "poll", "--once")
    acme = _icsfeed(data, "render", "acme").stdout
    check_all(acme)
    text = acme.decode()
    assert "SUMMARY:⚠️ Alert burst: " in text
    assert "SUMMARY:⚠️ Missed weekly full backup for db01 (usually Sunday)" in text
    cal = parse_icalendar(acme)
    flags = [e for e in cal.walk("VEVENT") if str(e["summary"]).startswith("⚠️")]
    missed = [e for e in flags if "Missed weekly full backup" in str(e["summary"])]
    assert len(missed) == 1 and missed[0]["dtstart"].dt.weekday() == 6
    today = date.today()
    assert 14 <= (today - missed[0]["dtstart"].dt).days <= 21
    burst = [e for e in flags if "Alert burst" in str(e["summary"])]
    assert len(burst) == 1 and (today - burst[0]["dtstart"].dt).days <= 6
    assert all(str(e["status"]) == "CONFIRMED" and str(e["transp"]) == "TRANSPARENT" for e in flags)
    # Globex's weekly full is on Saturdays, and always there: no false alarm
    globex = _icsfeed(data, "render", "globex").stdout.decode()
    assert "Missed" not in globex and "Alert burst" not in globex and "Irregular" not in globex


POLLED_CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}, {id: globex, name: Globex, keys: [globex]}]
sources:
  - {id: alerts, type: file, path: alerts.json,
     mapping: {kind: alert, key: id, title: name, start: at, account: customer}}
  - {id: tickets, type: file, path: tickets.json,
     mapping: {kind: ticket, key: id, title: subject, start: created, account: customer}}
"""


def test_polls_mark_accounts_and_one_refresh_recomputes_each_once(make_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A poll only marks the accounts it changed; refresh_due_insights recomputes each marked
    account once (whatever the number of polls), and an account marked again during the
    refresh stays due. ``poll`` (the CLI's) refreshes before it renders."""
    from icsfeed.poller import poll, poll_source, refresh_due_insights

    config, store = make_env({"a.yaml": POLLED_CONFIG})
    day = date.today().isoformat()
    (config.config_dir / "alerts.json").write_text(json.dumps(
        [{"id": 1, "name": "DiskFull", "at": f"{day}T10:00:00Z", "customer": "acme"}]))
    (config.config_dir / "tickets.json").write_text(json.dumps(
        [{"id": 7, "subject": "Slow", "created": f"{day}T09:00:00Z", "customer": "acme"},
         {"id": 8, "subject": "Down", "created": f"{day}T09:30:00Z", "customer": "globex"}]))

    def insight_sources() -> set[str]:
        return {s for s in store.source_states() if s.startswith("insight-")}

    assert poll_source(config, store, "alerts").ok and poll_source(config, store, "tickets").ok
    assert set(store.insights_due()) == {"acme", "globex"}
    assert insight_sources() == set(), "a poll does not recompute insights itself"

    refreshed: list[set[str | None]] = []
    real = insights.refresh_insights
    monkeypatch.setattr("icsfeed.poller.refresh_insights",
                        lambda c, s, keys, t: refreshed.append(set(keys)) or real(c, s, keys, t))
    assert refresh_due_insights(config, store) == 2
    assert refreshed == [{"acme", "globex"}], "each account once, in one refresh, though two polls touched acme"
    assert {s.partition(":")[2] for s in insight_sources()} == {"acme", "globex"}
    assert store.insights_due() == {}
    assert refresh_due_insights(config, store) == 0 and len(refreshed) == 1

    # a poll that marks an account while its refresh runs keeps it due
    store.mark_insights_due(["acme"])
    seen = store.insights_due()
    store.mark_insights_due(["acme", None])  # events without an account have no insights
    store.clear_insights_due(seen)
    assert store.insights_due() == {"acme": 2}

    (config.config_dir / "alerts.json").write_text("[]")
    poll(config, store)
    assert store.insights_due() == {}, "icsfeed poll leaves nothing due"
