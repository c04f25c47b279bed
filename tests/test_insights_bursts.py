"""Alert bursts, on hand-built histories in a real Store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

from test_insights_support import BERLIN, World, alert, at, backup, days, make_world

from icsfeed.render import build_feed
from icsfeed.routing import find_feed

TODAY = date(2026, 3, 18)  # a Wednesday
NOW = at(TODAY, 15)


def quiet_history(first: date = date(2025, 12, 1), last: date = date(2026, 3, 10)) -> list:
    """One alert every ten days: about one a week."""
    return [alert(f"q{i}", at(day, 11)) for i, day in enumerate(days(first, last)) if i % 10 == 0]


def burst(first: date = date(2026, 3, 16)) -> list:
    """14 alerts over three days: 6 DiskFull, 5 HighCPU, 3 SlowQueries."""
    names = ["DiskFull on db01"] * 6 + ["HighCPU on web01"] * 5 + ["SlowQueries on db01"] * 3
    out = []
    for i, name in enumerate(names):
        day = first + timedelta(days=i % 3)
        out.append(alert(f"b{i}", at(day, 9 + i % 5, 5 * i % 60), title=name,
                         url=f"https://prometheus.example/graph?alert={name.split()[0]}"))
    return out


def test_burst_after_quiet_weeks_is_flagged_with_top_alerts(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW)
    world.refresh(NOW)
    flags = world.flags("bursts")
    assert len(flags) == 1
    flag = flags[0]
    assert flag.kind == "insight" and flag.account == "acme" and flag.all_day
    assert flag.title.startswith("Alert burst: 14 alerts in 3 days (usually ")
    assert (flag.start, flag.end) == (date(2026, 3, 16), date(2026, 3, 19))
    lines = flag.detail.splitlines()
    assert "• 6× DiskFull on db01 — https://prometheus.example/graph?alert=DiskFull" in lines
    assert "• 5× HighCPU on web01 — https://prometheus.example/graph?alert=HighCPU" in lines
    assert lines.index("• 6× DiskFull on db01 — https://prometheus.example/graph?alert=DiskFull") < \
        lines.index("• 3× SlowQueries on db01 — https://prometheus.example/graph?alert=SlowQueries")
    assert flag.url is None and flag.attrs["view_link"]  # each feed links its own month view


def test_account_with_no_history_is_not_judged(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", burst(), NOW)
    world.refresh(NOW)
    assert world.flags("bursts") == []


def test_little_history_is_not_judged_until_three_weeks(tmp_path: Path) -> None:
    """Other kinds tell how long the store has known the account: two weeks is too little."""
    world = make_world(tmp_path)
    world.poll("alerts", burst(), NOW)
    world.poll("backups", [backup(f"k{d}", at(d, 2)) for d in days(date(2026, 3, 4), TODAY)], NOW)
    world.refresh(NOW)
    assert world.flags("bursts") == []
    world.poll("backups", [backup(f"k{d}", at(d, 2)) for d in days(date(2026, 2, 16), TODAY)], NOW)
    world.refresh(NOW)
    assert [f.title.split(" (")[0] for f in world.flags("bursts")] == ["Alert burst: 14 alerts in 3 days"]


def steady(first: date, last: date, prefix: str = "s") -> list:
    """About ten alerts a week: one a day, two on Mondays, Wednesdays and Fridays."""
    out = []
    for day in days(first, last):
        for n in range(2 if day.weekday() in (0, 2, 4) else 1):
            out.append(alert(f"{prefix}{day}-{n}", at(day, 8 + 3 * n)))
    return out


def test_normal_week_of_a_busy_account_is_not_a_burst_and_an_old_burst_does_not_mask_a_new_one(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    history = steady(date(2025, 12, 1), TODAY - timedelta(days=1))
    old_burst = [alert(f"old{i}", at(date(2026, 2, 11), 10, i)) for i in range(50)]
    world.poll("alerts", history + old_burst, NOW)
    world.refresh(NOW)
    flags = world.flags("bursts")
    assert [(f.start, f.title.split(" (")[0]) for f in flags] == [(date(2026, 2, 11), "Alert burst: 52 alerts on one day")]  # 50 + the day's usual 2
    # now a real one, this week: 40 more than usual
    new_burst = [alert(f"new{i}", at(date(2026, 3, 17), 10, i)) for i in range(40)]
    world.poll("alerts", history + old_burst + new_burst, NOW)
    world.refresh(NOW)
    starts = sorted(f.start for f in world.flags("bursts"))
    assert starts == [date(2026, 2, 11), date(2026, 3, 17)]
    new = next(f for f in world.flags("bursts") if f.start == date(2026, 3, 17))
    assert "usually about 10 in a week" in new.title


def test_days_are_the_accounts_local_days_across_dst(tmp_path: Path) -> None:
    """Berlin springs forward on 29 March 2026: alerts at 00:10–01:50 local are that day's, not 28 March's (UTC)."""
    world = make_world(tmp_path)
    dst_day = date(2026, 3, 29)
    alerts = [alert(f"d{i}", datetime(2026, 3, 29, 0, 10, tzinfo=BERLIN) + timedelta(minutes=10 * i)) for i in range(10)]
    assert alerts[0].start.astimezone(BERLIN).utcoffset() == timedelta(hours=1)
    assert alerts[0].start.timestamp() < datetime(2026, 3, 29).replace(tzinfo=BERLIN).timestamp() + 3600
    now = at(dst_day + timedelta(days=1), 12)
    world.poll("alerts", quiet_history(last=date(2026, 3, 20)) + alerts, now)
    world.refresh(now)
    flags = world.flags("bursts")
    assert [(f.start, f.end) for f in flags] == [(dst_day, dst_day + timedelta(days=1))]
    assert flags[0].title.startswith("Alert burst: 10 alerts on one day")


def test_flag_is_cancelled_when_no_longer_true_and_keeps_its_uid(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW, absence="cancel")
    world.refresh(NOW)
    [row] = world.rows("bursts")
    # the burst alerts were a test run and were deleted at the origin: the source cancels them
    later = NOW + timedelta(hours=1)
    world.poll("alerts", quiet_history(), later, absence="cancel")
    world.refresh(later)
    assert world.rows("bursts") == []
    [gone] = world.rows("bursts", status="cancelled")
    assert gone.uid == row.uid and gone.sequence == row.sequence + 1
    feed = build_feed(world.config, world.store, find_feed(world.config, "account", "acme"), later).body
    block = feed[feed.index(gone.uid.encode()) - 200: feed.index(gone.uid.encode()) + 200]
    assert b"STATUS:CANCELLED" in feed and b"Alert burst" in feed
    assert b"UID:" + gone.uid.encode() in block


def test_recompute_keeps_uids_and_sequence(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW)
    world.refresh(NOW)
    first = {r.event.key: (r.uid, r.sequence) for r in world.rows()}
    for hours in (1, 2, 5):
        world.refresh(NOW + timedelta(hours=hours))
    assert {r.event.key: (r.uid, r.sequence) for r in world.rows()} == first
    assert any(r.event.attrs["insight"] == "bursts" for r in world.rows())


def test_flags_go_to_the_account_feed_and_teams_that_select_insights(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW)
    world.refresh(NOW, keys={"ACME Corp", None, "nobody"})  # origin keys, as the poller passes them
    assert len(world.flags("bursts")) == 1
    states = world.store.feed_render_states()
    assert states["account/acme"][0] and states["team/heads-up"][0]
    assert "team/ops" not in states and "account/globex" not in states
    for kind, feed_id, expected in (("account", "acme", True), ("team", "heads-up", True), ("team", "ops", False)):
        body = build_feed(world.config, world.store, find_feed(world.config, kind, feed_id), NOW).body  # type: ignore[arg-type]
        assert ("⚠️ Alert burst: 14 alerts".encode() in body) is expected, feed_id


def test_switching_the_detector_off_cancels_its_flags(tmp_path: Path) -> None:
    world: World = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW)
    world.refresh(NOW)
    assert len(world.flags("bursts")) == 1
    world.reconfigure({"bursts": {"enabled": False}})
    world.refresh(NOW)
    assert world.flags("bursts") == [] and len(world.flags("bursts", status="cancelled")) == 1
    world.reconfigure({"bursts": {"min_alerts": 20}})
    world.refresh(NOW)
    assert world.flags("bursts") == []
    world.reconfigure({})
    world.refresh(NOW)
    assert len(world.flags("bursts")) == 1


def skewed_quiet(first: date, weeks: int) -> list:
    """About 3.7 alerts a week, most weeks 2 and some 6–8: a median of 2 under a mean of 3.75.
    They come two a day (a check that fires twice), so most days have none."""
    pattern = [2, 2, 6, 2, 2, 8, 2, 6]
    out = []
    for w in range(weeks):
        for k in range(pattern[(w + 3) % len(pattern)]):  # the week of 8 falls two weeks ago
            day = first + timedelta(days=7 * w + k // 2)
            out.append(alert(f"n{w}-{k}", at(day, 8 + 6 * (k % 2))))
    return out


def test_noise_on_a_quiet_account_is_not_a_burst_and_a_real_burst_on_it_is(tmp_path: Path) -> None:
    """An account averaging 3.7 alerts a week whose median week has 2: a week of 8, two a
    day, is ordinary noise at that rate (a median calls it 4× the usual, and flagged
    "8 alerts in 4 days (usually about 2 in a week)"). Twelve alerts in one day on the same
    account are a burst."""
    first = TODAY - timedelta(weeks=12) - timedelta(days=TODAY.weekday())
    history = skewed_quiet(first, 12)
    assert 3.4 < len(history) / 12 < 4.0
    world = make_world(tmp_path)
    world.poll("alerts", history, NOW)
    world.refresh(NOW)
    assert world.flags("bursts") == []
    spike = [alert(f"s{i}", at(TODAY - timedelta(days=2), 10, 3 * i), title="DiskFull on db01") for i in range(12)]
    world.poll("alerts", history + spike, NOW)
    world.refresh(NOW)
    [flag] = world.flags("bursts")
    assert flag.start == TODAY - timedelta(days=2) and flag.title.startswith("Alert burst: 1")
    assert flag.title.endswith("(usually about 4 in a week)")


def test_wording_says_none_never_about_zero_and_one_line_says_it_all(tmp_path: Path, another_store: Callable[[], None]) -> None:
    """Baseline weeks alternating 0 and 1 alerts (a median of 0.5: "about 0" before) read
    "about 1 in a week"; an account with no alerts at all reads "usually none". The first
    line of the description says what happened, what is usual and where the evidence is."""
    world = make_world(tmp_path)
    sparse = [alert(f"o{w}", at(date(2026, 1, 7) + timedelta(weeks=w), 11)) for w in range(9) if w % 2]
    world.poll("alerts", sparse + burst(), NOW)
    world.poll("backups", [backup(f"k{d}", at(d, 2)) for d in days(date(2026, 1, 5), TODAY)], NOW)
    world.refresh(NOW)
    [flag] = world.flags("bursts")
    assert "about 0" not in flag.title and flag.title.endswith("(usually about 1 in a week)")
    line = flag.detail.splitlines()[0]
    assert line.startswith("14 alerts from Mon 16 Mar 2026 to Wed 18 Mar 2026 where about 1 in a week is usual")
    assert "the top alerts are below" in line and "month view" in line
    assert flag.attrs["view_link"] is True
    another_store()  # an independent store (on PostgreSQL: its own database)
    silent = make_world(tmp_path / "silent")
    silent.poll("alerts", burst(), NOW)
    silent.poll("backups", [backup(f"k{d}", at(d, 2)) for d in days(date(2026, 1, 5), TODAY)], NOW)
    silent.refresh(NOW)
    [flag] = silent.flags("bursts")
    assert flag.title == "Alert burst: 14 alerts in 3 days (usually none)"


def test_the_tail_probabilities_are_exact_where_they_decide() -> None:
    """upper_tail against a direct sum of the probability mass below the count."""
    import math

    from icsfeed.insights.stats import odds_text, upper_tail

    def direct(count: int, mean: float, phi: float) -> float:
        if phi == 0:
            below = sum(math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1)) for k in range(count))
        else:
            r = 1 / phi
            below = sum(math.exp(math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1)
                                 + r * math.log(r / (r + mean)) + k * math.log(mean / (r + mean))) for k in range(count))
        return 1 - below

    for count, mean, phi in [(8, 3.7, 0), (12, 3.7, 0), (9, 1.6, 0), (150, 100, 0), (8, 3.7, 0.1),
                             (60, 14, 0.33), (250, 100, 0.05), (9, 0.5, 2.0)]:
        expected = direct(count, mean, phi)
        assert math.isclose(upper_tail(count, mean, phi), expected, rel_tol=1e-6), (count, mean, phi)
    assert upper_tail(3, 3.7) == 1.0 and upper_tail(0, 0.0) == 1.0 and upper_tail(5, 0.0) == 0.0
    assert upper_tail(30, 0.5) < 1e-30
    # asked "below 1e-4?", it stops as soon as the answer is no
    assert upper_tail(9, 3.7, stop_above=1e-4) > 1e-4
    assert upper_tail(15, 3.7, stop_above=1e-4) == upper_tail(15, 3.7)
    assert odds_text(3.2e-5) == "about 1 in 31,000" and odds_text(1e-12) == "less than 1 in a billion"
