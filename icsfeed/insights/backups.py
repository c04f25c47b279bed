"""Backup rhythm: learn when each host backs up, flag the runs that did not come.

A *series* is the backups of one host (``attrs.host``; none: the account as a whole),
and, where tags or ``attrs.full`` mark full backups, separately its full backups. For each
day the rhythm is learned from the weeks before it (``history_weeks``):

* the usual time of day is the circular centre of the series' local start times; a run
  belongs to the *run day* whose usual time it is nearest (the 24 hours centred on it), so
  23:50 and 00:10 are the same night's run, named after the day most runs start on;
* per weekday, the share of weeks with a run (a run late or early within grace counts for
  its day, as detection counts it). The weekdays with at least ``regular_share`` are the
  pattern (all seven: daily; one: weekly on that day; Mon–Fri; …). It is a rhythm when runs
  on the other weekdays are extras (see :func:`_covers`); otherwise the series is
  *irregular*, flagged as such on Mondays instead of with false misses. A rhythm, once
  learned, stays while its weekdays keep ``keep_share`` (a few misses must not unlearn it).

A run expected on a day and missing ``raise_after`` past its usual time is a missed-backup
flag on that day; a run up to ``grace`` late (``early`` early), when the neighbouring days
expect none, still counts and cancels the flag on the next refresh. Consecutive daily
misses are one flag. During a streak of misses the rhythm from before it is kept (the gap
must not teach that the host never backs up) until ``give_up_after_days`` and at least
four missed runs: then the host is taken as retired, and flagged no more until it runs
again. Days, weekdays and times are
the account's local time, DST included.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal

from icsfeed.insights.base import (
    WEEKDAYS,
    AccountContext,
    Detector,
    days_between,
    fmt_day,
    insight_event,
    iso_week,
    link_text,
    live,
    start_dt,
)
from icsfeed.insights.settings import BackupSettings, InsightsSettings
from icsfeed.model import Event

NAME = "backups"
MINUTES_PER_DAY = 24 * 60
#: a streak is given up only after this many flagged runs too (a weekly full: four weeks)
GIVE_UP_AFTER_RUNS = 4


@dataclass
class Series:
    """The runs of one host (or the account), all of them or the full ones only."""

    host: str
    full: bool
    runs: list[Event] = field(default_factory=list)
    #: usual start, minutes after the local midnight of its run day; below 0 or from 1440 on
    #: when the run usually starts the evening before or just after midnight (see build_series)
    minute: int = 0
    #: run day -> runs whose usual time is nearest
    by_day: dict[date, list[Event]] = field(default_factory=dict)
    #: run day -> local wall-clock starts of those runs
    local: dict[date, list[datetime]] = field(default_factory=dict)
    first_day: date = date.max

    def usual(self, day: date) -> datetime:
        """The usual start on a run day, local wall clock (naive)."""
        return datetime.combine(day, time(0)) + timedelta(minutes=self.minute)

    @property
    def key(self) -> str:
        return f"{self.host or '*'}:{'full' if self.full else 'any'}"


@dataclass(frozen=True)
class Rhythm:
    """What the weeks before a day say about a series."""

    status: Literal["regular", "irregular", "unknown"]
    weekdays: frozenset[int] = frozenset()
    share: tuple[float, ...] = ()
    run_days: int = 0
    days: int = 0


def span_days(settings: InsightsSettings) -> int:
    s = settings.backups
    return s.report_days + s.give_up_after_days + 7 * GIVE_UP_AFTER_RUNS + 7 * (s.history_weeks + 1) + 2


def horizon(ctx: AccountContext) -> date:
    return ctx.today - timedelta(days=ctx.settings.backups.report_days)


def is_full(ev: Event, full_tags: set[str]) -> bool:
    """attrs.full (restic source) or a full tag (``tags`` as a list or comma-separated text)."""
    flag = ev.attrs.get("full")
    if isinstance(flag, bool):
        if flag:
            return True
    elif isinstance(flag, str) and flag.strip().lower() in ("full", "true", "yes", "1"):
        return True
    tags = ev.attrs.get("tags")
    if isinstance(tags, str):
        tags = tags.split(",")
    if isinstance(tags, (list, tuple)):
        return any(str(t).strip().lower() in full_tags for t in tags)
    return False


def host_of(ev: Event) -> str:
    return str(ev.attrs.get("host") or ev.attrs.get("hostname") or "").strip()


def usual_minute(minutes: list[int]) -> int:
    """Circular centre of times of day: the mean of the runs within 3 hours of the mean, twice."""
    def mean(values: list[int]) -> float:
        x = sum(math.cos(2 * math.pi * v / MINUTES_PER_DAY) for v in values)
        y = sum(math.sin(2 * math.pi * v / MINUTES_PER_DAY) for v in values)
        return (math.atan2(y, x) / (2 * math.pi) * MINUTES_PER_DAY) % MINUTES_PER_DAY

    centre = mean(minutes)
    for _ in range(2):
        near = [m for m in minutes if _circular_gap(m, centre) <= 180]
        if not near:
            break
        centre = mean(near)
    return round(centre) % MINUTES_PER_DAY


def _circular_gap(a: float, b: float) -> float:
    d = abs(a - b) % MINUTES_PER_DAY
    return min(d, MINUTES_PER_DAY - d)


def build_series(ctx: AccountContext, events: list[Event], s: BackupSettings) -> list[Series]:
    """Series per host: all runs, and full runs where some are marked full."""
    full_tags = {t.strip().lower() for t in s.full_tags}
    hosts: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        hosts[host_of(ev)].append(ev)
    out = []
    for host, runs in sorted(hosts.items()):
        runs.sort(key=start_dt)
        full = [ev for ev in runs if is_full(ev, full_tags)]
        if len(full) < len(runs):
            out.append(Series(host, False, runs))
        if full:
            out.append(Series(host, True, full))
    for series in out:
        local = [start_dt(ev).astimezone(ctx.tz).replace(tzinfo=None) for ev in series.runs]
        minute = usual_minute([t.hour * 60 + t.minute for t in local])
        # name the run day after the calendar day most runs start on: a run at 23:58 ± 5 min
        # is "Sunday's" when most of them start on Sunday, though its centre is Saturday night
        options = [minute, minute - MINUTES_PER_DAY if minute >= MINUTES_PER_DAY // 2 else minute + MINUTES_PER_DAY]
        series.minute = max(options, key=lambda m: (sum(_run_day(t, m) == t.date() for t in local), m == minute))
        for ev, t in zip(series.runs, local, strict=True):
            day = _run_day(t, series.minute)
            series.by_day.setdefault(day, []).append(ev)
            series.local.setdefault(day, []).append(t)
        series.first_day = min(series.by_day)
    return out


def _run_day(local: datetime, minute: int) -> date:
    """The run day of a (naive, local) start: the day whose usual time it is nearest."""
    return (local - timedelta(minutes=minute - MINUTES_PER_DAY // 2)).date()


def learn(series: Series, day: date, s: BackupSettings) -> Rhythm:
    """The rhythm of the ``history_weeks`` before ``day`` (only days the series existed)."""
    first = max(day - timedelta(days=7 * s.history_weeks), series.first_day)
    days = (day - first).days
    if days < s.min_history_days:
        return Rhythm("unknown", days=max(days, 0))
    window = days_between(first, day - timedelta(days=1))
    ran = {d for d in window if d in series.by_day}
    share = _shares(window, ran)
    likely = frozenset(w for w in range(7) if share[w] >= s.regular_share)
    if likely and len(likely) < 7:
        ran = _late_and_early(series, window, ran, likely, s)
        share = _shares(window, ran)
    if len(ran) < s.min_backups:
        return Rhythm("unknown", run_days=len(ran), days=days)
    pattern = frozenset(w for w in range(7) if share[w] >= s.regular_share)
    status: Literal["regular", "irregular"] = "regular" if _covers(pattern, share, s) else "irregular"
    return Rhythm(status, pattern, share, len(ran), days)


def _shares(window: list[date], ran: set[date]) -> tuple[float, ...]:
    """Per weekday, the share of the window's such days that had a run."""
    seen, hits = [0] * 7, [0] * 7
    for d in window:
        seen[d.weekday()] += 1
        hits[d.weekday()] += d in ran
    return tuple(h / n if n else 0.0 for h, n in zip(hits, seen, strict=True))


def _late_and_early(series: Series, window: list[date], ran: set[date], likely: frozenset[int],
                    s: BackupSettings) -> set[date]:
    """Learn as detection counts: a run late (or early) within grace is its own day's run.

    Otherwise a weekly run that came 14 hours late twice lands on Tuesday in the learning
    and makes Monday's series look irregular.
    """
    ran = set(ran)
    for d in window:
        if d.weekday() not in likely or d in ran:
            continue
        for step, limit in ((1, s.grace), (-1, s.early)):
            moved = False
            for j in (1, 2):
                other = d + timedelta(days=step * j)
                if other.weekday() in likely:
                    break
                starts = series.local.get(other, [])
                if other in ran and starts and min(abs(t - series.usual(d)) for t in starts) <= limit:
                    ran.discard(other)
                    ran.add(d)
                    moved = True
                    break
            if moved:
                break
    return ran


def _covers(pattern: frozenset[int], share: tuple[float, ...], s: BackupSettings) -> bool:
    """A weekday pattern is a rhythm when runs on the other weekdays are extras, not a habit.

    Extras: on average on at most ``1 - regular_share`` of the other weekdays' weeks (a
    manual run now and then), and on none of them half as often as on the pattern's
    weakest day. A host backing up on four random days out of ten has no such pattern,
    even when three weekdays happen to have runs in six of eight weeks: it is irregular.
    """
    if not pattern:
        return False
    others = [share[w] for w in range(7) if w not in pattern]
    if not others:
        return True
    return sum(others) / len(others) <= 1 - s.regular_share and \
        min(share[w] for w in pattern) - max(others) >= 0.5


def detect(ctx: AccountContext) -> list[Event]:
    s = ctx.settings.backups
    today = ctx.today
    first_day = today - timedelta(days=span_days(ctx.settings))
    rows = ctx.history.rows(ctx.midnight(first_day), ctx.now + timedelta(seconds=1))
    events = [ev for ev in live(rows, s.kinds) if start_dt(ev) <= ctx.now]
    report_start = horizon(ctx)
    out: list[Event] = []
    for series in build_series(ctx, events, s):
        out.extend(_check_series(ctx, series, s, report_start))
    # a host whose runs all follow the full backups' rhythm misses both on the same day:
    # say it once, as the full backup
    full = {(ev.attrs["host"], ev.start, tuple(ev.attrs["weekdays"])) for ev in out
            if ev.attrs["flag"] == "missed" and ev.attrs["series"] == "full"}
    return [ev for ev in out if not (ev.attrs["flag"] == "missed" and ev.attrs["series"] == "any"
                                     and (ev.attrs["host"], ev.start, tuple(ev.attrs["weekdays"])) in full)]


def _check_series(ctx: AccountContext, series: Series, s: BackupSettings, report_start: date) -> list[Event]:
    misses: list[tuple[date, Rhythm]] = []
    irregular: list[tuple[date, Rhythm]] = []
    frozen: Rhythm | None = None  # the rhythm before the current streak of misses
    streak_first: date | None = None
    streak_flags = 0
    warm_up = report_start - timedelta(days=s.give_up_after_days + 7 * GIVE_UP_AFTER_RUNS)
    known: Rhythm | None = None  # the last regular rhythm, kept while the weeks still bear it out
    for day in days_between(max(warm_up, series.first_day), ctx.today):
        rhythm = frozen or _keep(known, learn(series, day, s), s)
        known = rhythm if rhythm.status == "regular" else None
        if rhythm.status == "irregular" and day.weekday() == 0 and day >= report_start:
            irregular.append((day, rhythm))
        if rhythm.status != "regular" or day.weekday() not in rhythm.weekdays:
            continue
        usual = _usual_time(ctx, series, day)
        if ctx.now < usual + s.raise_after:
            break  # not due yet, and neither is anything later
        if _runs_for(ctx, series, day, rhythm, s):
            frozen, streak_first = None, None
            continue
        if frozen is not None and any(streak_first <= d < day for d in series.by_day):  # type: ignore[operator]
            # runs came during the streak, on days the rhythm did not expect them: it has
            # changed; learn it again rather than keep flagging against the old one
            frozen, streak_first = None, None
            rhythm = _keep(known, learn(series, day, s), s)
            if rhythm.status != "regular" or day.weekday() not in rhythm.weekdays:
                continue
        if streak_first is None:
            frozen, streak_first, streak_flags = rhythm, day, 0
        if (day - streak_first).days >= s.give_up_after_days and streak_flags >= GIVE_UP_AFTER_RUNS:
            continue  # retired host: no more flags until it backs up again
        streak_flags += 1
        misses.append((day, rhythm))
    out = []
    for group in _consecutive(misses):
        if group[0][0] >= report_start:
            out.append(_missed_flag(ctx, series, group, s))
    if s.irregular:
        out.extend(_irregular_flag(ctx, series, day, rhythm, s) for day, rhythm in irregular)
    return out


def _keep(known: Rhythm | None, learned: Rhythm, s: BackupSettings) -> Rhythm:
    """Hysteresis: a regular rhythm stays while each of its weekdays keeps ``keep_share``.

    Otherwise a few scattered misses (three of eight Sundays) would make a weekly series
    "irregular", and an irregular series is not checked for misses at all.
    """
    if known is None or learned.status == "unknown" or (learned.status == "regular" and learned.weekdays == known.weekdays):
        return learned
    if all(learned.share[w] >= s.keep_share for w in known.weekdays) and _covers(known.weekdays, learned.share, s):
        return Rhythm("regular", known.weekdays, learned.share, learned.run_days, learned.days)
    return learned


def _usual_time(ctx: AccountContext, series: Series, day: date) -> datetime:
    """When the run of ``day`` is usually due, as an instant (local wall time, DST-aware)."""
    wall = datetime.combine(day, time(0)) + timedelta(minutes=series.minute)
    return wall.replace(tzinfo=ctx.tz).astimezone(timezone.utc)


def _runs_for(ctx: AccountContext, series: Series, day: date, rhythm: Rhythm, s: BackupSettings) -> list[Event]:
    """Runs that count for ``day``: its own run day, or a neighbour's that expects none, in time."""
    usual = _usual_time(ctx, series, day)
    found = list(series.by_day.get(day, []))
    for step, limit in ((1, s.grace), (-1, s.early)):
        for j in (1, 2):
            other = day + timedelta(days=step * j)
            if other.weekday() in rhythm.weekdays:
                break
            for ev in series.by_day.get(other, []):
                gap = (start_dt(ev) - usual) * step
                if gap <= limit:
                    found.append(ev)
    return found


def _consecutive(misses: list[tuple[date, Rhythm]]) -> list[list[tuple[date, Rhythm]]]:
    groups: list[list[tuple[date, Rhythm]]] = []
    for item in misses:
        if groups and (item[0] - groups[-1][-1][0]).days == 1:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def cadence(weekdays: frozenset[int]) -> str:
    """'daily', 'Sunday', 'Mon–Fri', 'Mon, Wed, Fri'."""
    if len(weekdays) == 7:
        return "daily"
    if len(weekdays) == 1:
        return WEEKDAYS[next(iter(weekdays))]
    if weekdays == frozenset(range(5)):
        return "Mon–Fri"
    return ", ".join(WEEKDAYS[w][:3] for w in sorted(weekdays))


def _every(weekdays: frozenset[int]) -> str:
    """'daily', 'every Sunday', 'on Mon–Fri'."""
    text = cadence(weekdays)
    return text if text == "daily" else f"every {text}" if len(weekdays) == 1 else f"on {text}"


def _what(series: Series, rhythm: Rhythm) -> str:
    weekly = "weekly " if len(rhythm.weekdays) == 1 else ""
    return f"{weekly}{'full ' if series.full else ''}backup"


def _who(ctx: AccountContext, series: Series) -> str:
    return series.host or ctx.account.name


def _missed_flag(ctx: AccountContext, series: Series, group: list[tuple[date, Rhythm]], s: BackupSettings) -> Event:
    first, rhythm = group[0]
    last = group[-1][0]
    what, who, usual = _what(series, rhythm), _who(ctx, series), cadence(rhythm.weekdays)
    if len(group) == 1:
        title = f"Missed {what} for {who} (usually {usual})"
    else:
        title = f"No {what} for {who} for {len(group)} days (usually {usual})"
    tzname = ctx.account.timezone or ctx.config.feeds.timezone
    lines = []
    for day, _ in group:
        due = _usual_time(ctx, series, day).astimezone(ctx.tz)
        deadline = (due + s.grace).astimezone(ctx.tz)
        lines.append(f"Expected around {due:%H:%M} ({tzname}) on {fmt_day(due.date())}; "
                     f"a run until {fmt_day(deadline.date())} {deadline:%H:%M} still counts.")
    lines.append(_rhythm_text(series, rhythm, s, first))
    before = [ev for ev in series.runs if start_dt(ev) < _usual_time(ctx, series, first) - s.early]
    if before:
        prev = before[-1]
        when = start_dt(prev).astimezone(ctx.tz)
        line = f"Last {'full ' if series.full else ''}backup before: {fmt_day(when.date())} {when:%H:%M}"
        lines.append(line + link_text(prev.url))
    return insight_event(
        ctx, NAME, f"{ctx.account.id}:{series.key}:{first.isoformat()}", title, first, last, "\n".join(lines),
        attrs={**_attrs(series, rhythm, "missed", [d.isoformat() for d, _ in group]),
               "expected": [_usual_time(ctx, series, d).isoformat() for d, _ in group]},
    )


def _irregular_flag(ctx: AccountContext, series: Series, monday: date, rhythm: Rhythm, s: BackupSettings) -> Event:
    who = _who(ctx, series)
    kind = "full backups" if series.full else "backups"
    title = f"Irregular {kind} for {who}: no steady rhythm"
    lines = [
        _rhythm_text(series, rhythm, s, monday),
        "Share of weeks with a run, per weekday: "
        + ", ".join(f"{WEEKDAYS[w][:3]} {round(100 * rhythm.share[w])}%" for w in range(7)) + ".",
        "Without a steady rhythm there is nothing to check runs against, so missed runs are not flagged.",
    ]
    return insight_event(
        ctx, NAME, f"{ctx.account.id}:{series.key}:irregular:{iso_week(monday)}", title, monday, monday,
        "\n".join(lines), severity="info", attrs=_attrs(series, rhythm, "irregular", [monday.isoformat()]),
    )


def _rhythm_text(series: Series, rhythm: Rhythm, s: BackupSettings, day: date) -> str:
    weeks = round(rhythm.days / 7)
    kind = "full backups" if series.full else "backups"
    if rhythm.status == "regular":
        return (f"Learned from the {weeks} weeks before {fmt_day(day)}: {kind} {_every(rhythm.weekdays)}"
                f" (runs on {rhythm.run_days} of {rhythm.days} days).")
    return f"In the {weeks} weeks before {fmt_day(day)}: {kind} on {rhythm.run_days} of {rhythm.days} days."


def _attrs(series: Series, rhythm: Rhythm, flag: str, days: list[str]) -> dict[str, Any]:
    return {"flag": flag, "host": series.host, "series": "full" if series.full else "any",
            "weekdays": sorted(rhythm.weekdays), "days": days}


DETECTOR = Detector(NAME, lambda s: s.backups.enabled, horizon, detect)
