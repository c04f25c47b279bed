"""Backup rhythm: missed runs, grace, irregular and new hosts, DST, on a real Store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from test_insights_support import BERLIN, NEW_YORK, alert, at, backup, days, make_world

NOW = at(date(2026, 3, 18), 15)  # a Wednesday


def db01(first: date, last: date, *, skip_full: tuple[date, ...] = (), skip: tuple[date, ...] = (),
         host: str | None = "db01") -> list:
    """Nightly at 01:30 (Berlin) and a weekly full on Sundays at 03:00."""
    out = []
    for day in days(first, last):
        if day not in skip:
            out.append(backup(f"{host}-n-{day}", at(day, 1, 30), host=host))
        if day.weekday() == 6 and day not in skip_full:
            out.append(backup(f"{host}-f-{day}", at(day, 3, 0), host=host, full=True))
    return out


def summary(flags: list) -> list[tuple[date, date, str]]:
    return sorted((f.start, f.end, f.title) for f in flags)


def test_missed_weekly_full_backup_is_flagged_on_its_sunday(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.poll("backups", db01(date(2026, 1, 5), date(2026, 3, 18), skip_full=(date(2026, 3, 8),)), NOW)
    world.refresh(NOW)
    flags = world.flags("backups")
    assert summary(flags) == [(date(2026, 3, 8), date(2026, 3, 9), "Missed weekly full backup for db01 (usually Sunday)")]
    detail = flags[0].detail
    assert "Expected around 03:00 (Europe/Berlin) on Sun 8 Mar 2026" in detail
    assert "Last full backup before: Sun 1 Mar 2026 03:00 — https://backups.example/snapshots/db01-f-2026-03-01" in detail
    assert flags[0].attrs["host"] == "db01" and flags[0].attrs["series"] == "full"


def test_late_run_within_grace_cancels_the_flag_and_one_after_it_does_not(tmp_path: Path, another_store: Callable[[], None]) -> None:
    sunday = date(2026, 3, 22)
    history = db01(date(2026, 1, 5), sunday, skip_full=(sunday,))
    world = make_world(tmp_path)
    world.poll("backups", history, at(sunday, 8))
    world.refresh(at(sunday, 8))  # due at 03:00, flagged 6 hours after: not yet
    assert world.flags("backups") == []
    world.refresh(at(sunday, 12))
    [row] = world.rows("backups")
    assert row.event.title == "Missed weekly full backup for db01 (usually Sunday)"
    assert "a run until Mon 23 Mar 2026 03:00 still counts" in row.event.detail
    # the full run comes on Monday at 01:00: late, within the 24 hours of grace
    late = backup("db01-late", at(sunday + timedelta(days=1), 1, 0), full=True)
    world.poll("backups", [*history, late], at(sunday + timedelta(days=1), 2))
    world.refresh(at(sunday + timedelta(days=1), 2))
    assert world.flags("backups") == []
    [cancelled] = world.rows("backups", status="cancelled")
    assert cancelled.uid == row.uid and cancelled.sequence == row.sequence + 1
    # in another world it comes at 05:00, after the grace period: the flag stands
    another_store()  # an independent store (on PostgreSQL: its own database)
    other = make_world(tmp_path / "other")
    too_late = backup("db01-late", at(sunday + timedelta(days=1), 5, 0), full=True)
    other.poll("backups", [*history, too_late], at(sunday + timedelta(days=1), 6))
    other.refresh(at(sunday + timedelta(days=1), 6))
    assert summary(other.flags("backups")) == [(sunday, sunday + timedelta(days=1),
                                                "Missed weekly full backup for db01 (usually Sunday)")]


def test_irregular_host_gets_an_irregular_flag_instead_of_misses(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    runs = [backup(f"files-{day}", at(day, (7 * i) % 23, 10), host="files01")
            for i, day in enumerate(days(date(2026, 1, 5), date(2026, 3, 18))) if (i * 7) % 11 < 5]
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    flags = world.flags("backups")
    assert flags and all(f.title == "Irregular backups for files01: no steady rhythm" for f in flags)
    assert all(f.start.weekday() == 0 and f.severity == "info" for f in flags)  # type: ignore[union-attr]
    # one per Monday the feed shows (90 days back): all eleven since 5 January, the first
    # ones judged by the weeks after them
    assert len({f.key for f in flags}) == len(flags) == 11


def test_new_host_and_little_history_are_not_flagged(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    runs = [backup(f"web02-{d}", at(d, 4)) for d in days(date(2026, 3, 8), date(2026, 3, 18)) if d != date(2026, 3, 15)]
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    assert world.flags("backups") == []


def test_consecutive_daily_misses_are_one_flag_and_a_stopped_host_is_given_up(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    gap = (date(2026, 3, 10), date(2026, 3, 11), date(2026, 3, 12))
    web01 = [backup(f"web01-{d}", at(d, 23, 50), host="web01") for d in days(date(2026, 1, 5), date(2026, 3, 18)) if d not in gap]
    web02 = [backup(f"web02-{d}", at(d, 4, 0), host="web02") for d in days(date(2026, 1, 5), date(2026, 2, 19))]
    world.poll("backups", web01 + web02, NOW)
    world.refresh(NOW)
    assert summary(world.flags("backups")) == [
        (date(2026, 2, 20), date(2026, 3, 13), "No backup for web02 for 21 days (usually daily)"),
        (date(2026, 3, 10), date(2026, 3, 13), "No backup for web01 for 3 days (usually daily)"),
    ]


def test_weekday_pattern_and_account_level_backups(tmp_path: Path) -> None:
    """Runs without a host attribute are the account's; a Mon–Fri rhythm is not missed at weekends."""
    world = make_world(tmp_path)
    runs = [backup(f"acct-{d}", at(d, 20), host=None) for d in days(date(2026, 1, 5), date(2026, 3, 17))
            if d.weekday() < 5 and d != date(2026, 3, 4)]
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    assert summary(world.flags("backups")) == [
        (date(2026, 3, 4), date(2026, 3, 5), "Missed backup for ACME Corp (usually Mon–Fri)")]


def test_dst_changes_make_no_false_misses(tmp_path: Path) -> None:
    """Local 02:30 runs across both Berlin DST changes (02:30 does not exist on 29 March
    2026), and a UTC cron whose local time moves an hour: no flags."""
    world = make_world(tmp_path)
    local = [backup(f"l-{d}", datetime(d.year, d.month, d.day, 2, 30, tzinfo=BERLIN).astimezone(timezone.utc), host="local")
             for d in days(date(2025, 9, 1), date(2026, 4, 20))]
    utc = [backup(f"u-{d}", datetime(d.year, d.month, d.day, 0, 30, tzinfo=timezone.utc), host="utc")
           for d in days(date(2025, 9, 1), date(2026, 4, 20))]
    sundays = [backup(f"s-{d}", at(d, 2, 45), host="local", full=True) for d in days(date(2025, 9, 1), date(2026, 4, 20))
               if d.weekday() == 6]
    world.poll("backups", local + utc + sundays, at(date(2026, 4, 20), 12))
    for now in (at(date(2025, 11, 5), 12), at(date(2026, 4, 5), 12), at(date(2026, 4, 20), 12)):
        world.refresh(now)
        assert world.flags("backups") == [], now


def test_near_midnight_weekly_run_is_named_after_the_day_most_runs_start(tmp_path: Path) -> None:
    """Globex (New York) fulls start around midnight after Sunday: 23:57 and 23:59 on
    Sunday, 00:30 on Monday. Their centre is Monday 00:09, but they are Sunday's runs."""
    world = make_world(tmp_path)
    runs = []
    for i, d in enumerate(d for d in days(date(2026, 1, 4), date(2026, 3, 16)) if d.weekday() == 6):
        if d != date(2026, 3, 1):
            midnight = datetime(d.year, d.month, d.day, tzinfo=NEW_YORK) + timedelta(days=1)
            when = midnight + timedelta(minutes=(-3, -1, 30)[i % 3])
            runs.append(backup(f"g-{d}", when.astimezone(timezone.utc), host="pg-main", full=True, account="globex"))
    now = datetime(2026, 3, 16, 12, tzinfo=NEW_YORK).astimezone(timezone.utc)
    world.poll("backups", runs, now)
    world.refresh(now, keys={"globex"})
    flags = world.flags("backups", account="globex")
    assert summary(flags) == [(date(2026, 3, 1), date(2026, 3, 2), "Missed weekly full backup for pg-main (usually Sunday)")]
    assert "Expected around 00:0" in flags[0].detail and "on Mon 2 Mar 2026" in flags[0].detail


def test_other_kinds_and_cancelled_backups_do_not_count(tmp_path: Path) -> None:
    """A cancelled snapshot (deleted at the origin) is no run; an alert named backup is no run."""
    world = make_world(tmp_path)
    sunday = date(2026, 3, 8)
    history = db01(date(2026, 1, 5), date(2026, 3, 18), skip_full=(sunday,))
    deleted = backup("db01-f-deleted", at(sunday, 3), full=True)
    world.poll("backups", [*history, deleted], NOW)
    world.poll("backups", history, NOW, absence="cancel")  # the snapshot was deleted: cancelled in the store
    world.poll("alerts", [alert("a1", at(sunday, 3), title="backup db01 full")], NOW)
    world.refresh(NOW)
    assert [f.start for f in world.flags("backups")] == [sunday]


def test_late_runs_in_the_history_do_not_make_a_weekly_series_irregular(tmp_path: Path) -> None:
    """Mondays 05:00, but twice at 19:00 (late, within grace) and a few manual runs on
    Tuesdays: still a weekly rhythm — learning counts a late run for its day, like detection."""
    world = make_world(tmp_path)
    mondays = [d for d in days(date(2026, 1, 5), date(2026, 3, 16)) if d.weekday() == 0]
    runs = [backup(f"m-{d}", at(d, 19 if d in (mondays[5], mondays[8]) else 5), host="nas", full=True)
            for d in mondays if d != date(2026, 3, 9)]
    runs += [backup(f"x-{d}", at(d + timedelta(days=1), 10), host="nas", tags=["manual"]) for d in mondays[6:9]]
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    assert summary(world.flags("backups")) == [
        (date(2026, 3, 9), date(2026, 3, 10), "Missed weekly full backup for nas (usually Monday)")]


def test_a_missed_full_that_replaces_the_nightly_is_one_flag(tmp_path: Path) -> None:
    """db02 runs nightly at 01:30 except on Sundays, when its full backup runs instead at
    02:30. A Sunday without it is one missed run: "Missed weekly full backup", not also
    "Missed backup … (usually daily)". The next Sunday's full comes 20 hours late, within
    grace: no flag at all, though the nightly series saw no run that night."""
    first, last = date(2026, 1, 5), date(2026, 3, 18)
    runs = [backup(f"n-{d}", at(d, 1, 30), host="db02") for d in days(first, last) if d.weekday() != 6]
    runs += [backup(f"f-{d}", at(d, 2, 30), host="db02", full=True) for d in days(first, last)
             if d.weekday() == 6 and d not in (date(2026, 3, 1), date(2026, 3, 8))]
    runs.append(backup("f-late", at(date(2026, 3, 8), 22, 30), host="db02", full=True))
    world = make_world(tmp_path)
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    assert summary(world.flags("backups")) == [
        (date(2026, 3, 1), date(2026, 3, 2), "Missed weekly full backup for db02 (usually Sunday)")]


def test_a_young_host_makes_no_cadence_claim_until_four_weeks_bear_it_out(tmp_path: Path) -> None:
    """nas02 was added three and a half weeks ago; its runs came on three Sundays (and once
    on a Wednesday), none on the fourth. Three Sundays are no weekly rhythm yet: no "Missed
    weekly backup", and no "Irregular" either. Four Sundays are: the fifth one missed is flagged."""
    sundays = [date(2026, 2, 22), date(2026, 3, 1), date(2026, 3, 8)]
    runs = [backup(f"y-{d}", at(d, 4, 15 * i), host="nas02") for i, d in enumerate(sundays)]
    runs.append(backup("y-wed", at(date(2026, 2, 25), 16), host="nas02"))
    world = make_world(tmp_path)
    world.poll("backups", runs, NOW)  # Sunday 15 March: nothing
    world.refresh(NOW)
    assert world.flags("backups") == []
    later = at(date(2026, 3, 25), 15)  # a fourth Sunday run on the 15th, none on the 22nd
    world.poll("backups", [*runs, backup("y-4", at(date(2026, 3, 15), 4), host="nas02")], later)
    world.refresh(later)
    assert summary(world.flags("backups")) == [
        (date(2026, 3, 22), date(2026, 3, 23), "Missed weekly backup for nas02 (usually Sunday)")]


def test_a_retired_host_is_not_irregular_in_its_first_weeks(tmp_path: Path) -> None:
    """A first import: old01 backed up nightly for four weeks and stopped six weeks ago.
    The weeks after its last run are its silence, not its rhythm: its first weeks are not
    "irregular", and the stop is flagged as missed runs."""
    runs = [backup(f"o-{d}", at(d, 2), host="old01") for d in days(date(2025, 12, 24), date(2026, 2, 3))]
    world = make_world(tmp_path)
    world.poll("backups", runs, NOW)
    world.refresh(NOW)
    flags = world.flags("backups")
    assert [f.title for f in flags] == ["No backup for old01 for 21 days (usually daily)"]
    assert flags[0].start == date(2026, 2, 4)
