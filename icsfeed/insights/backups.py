"""Backup rhythm: learn when each host backs up, flag the runs that did not come.

A *series* is the backups of one host (``attrs.host``; none: the account as a whole),
and, where tags or ``attrs.full`` mark full backups, separately its full backups. For each
day the rhythm is learned from the weeks before it (``history_weeks``; while the series is
younger than that, the days after it fill the window, so a first import judges its early
weeks by what came later):

* the usual time of day is the circular centre of the series' local start times; a run
  belongs to the *run day* whose usual time it is nearest (the 24 hours centred on it), so
  23:50 and 00:10 are the same night's run, named after the day most runs start on;
* per weekday, the share of weeks with a run (a run late or early within grace counts for
  its day, as detection counts it). The weekdays with at least ``regular_share`` are the
  pattern (all seven: daily; one: weekly on that day; Mon–Fri; …). It is a rhythm when runs
  on the other weekdays are extras (see :func:`_covers`); otherwise the series is
  *irregular*, flagged as such on Mondays instead of with false misses. A rhythm of fewer
  than seven weekdays is claimed only once each of its weekdays had runs in ``min_weeks``
  weeks: before that the series is still being learned (three random runs on Sundays are
  no weekly backup). A rhythm, once learned, stays while its weekdays keep ``keep_share``
  (a few misses must not unlearn it).

A run expected on a day and missing ``raise_after`` past its usual time is a missed-backup
flag on that day; a run up to ``grace`` late (``early`` early), when the neighbouring days
expect none, still counts and cancels the flag on the next refresh. Consecutive daily
misses are one flag. During a streak of misses the rhythm from before it is kept (the gap
must not teach that the host never backs up) until ``give_up_after_days`` and at least
four missed runs: then the host is taken as retired, and flagged no more until it runs
again. One night gets one flag: a missed full backup is not also a missed daily backup
of the same host. Days, weekdays and times are the account's local time, DST included.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal

from icsfeed.config import AccountConfig, Config
from icsfeed.insights.base import (
    VERDICT_ATTR,
    WEEKDAYS,
    AccountContext,
    Detector,
    Reads,
    days_between,
    fmt_day,
    insight_event,
    iso_week,
    link_text,
    live,
    report_days,
    start_dt,
)
from icsfeed.insights.facts import TEXT
from icsfeed.insights.settings import BackupSettings, InsightsSettings
from icsfeed.model import Event

NAME = "backups"
MINUTES_PER_DAY = 24 * 60
#: a streak is given up only after this many flagged runs too (a weekly full: four weeks)
GIVE_UP_AFTER_RUNS = 4
#: a missed run of a host's full series this close to a missed run of its other series is
#: the same night: only the full backup is flagged
SAME_NIGHT = timedelta(hours=12)


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
    #: run day -> usual start as an instant (:func:`_usual_time`), once ``minute`` is known
    due: dict[date, datetime] = field(default_factory=dict, repr=False, compare=False)

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
    #: learned from days after the day too (a young series)
    around: bool = False


def span_days(config: Config, account: AccountConfig, settings: InsightsSettings) -> int:
    """How far back this detector reads history."""
    s = settings.backups
    back = report_days(config, account, s.report_days)
    return back + s.give_up_after_days + 7 * GIVE_UP_AFTER_RUNS + 7 * (s.history_weeks + 1) + 2


def horizon(ctx: AccountContext) -> date:
    return ctx.report_start(ctx.settings.backups.report_days)


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


class Learner:
    """What the weeks around each day say about one series, answered in constant time.

    Runs are kept as one flag per day (``ran``); ``chain[i]`` is the number of run days
    among day ``i`` and the days 7, 14, … before it (the same weekday), so a weekday's
    runs in any stretch are a difference of two entries. Runs late or early within grace
    count for their day as detection counts them (:meth:`_moved`); that depends on which
    weekdays the rhythm has, so it is computed once per such set.
    """

    def __init__(self, series: Series, today: date, s: BackupSettings) -> None:
        self.series = series
        self.s = s
        self.origin = series.first_day
        self.n = (today - self.origin).days + 1
        self.raw = [self.origin + timedelta(days=i) in series.by_day for i in range(self.n)]
        # days after a day are learned from up to yesterday (today's runs may still come), and
        # not past the last run: a host that stopped has no rhythm in its silence
        self.last_full = min(self.n - 2, self.index(max(series.by_day)))
        self._chains: dict[tuple[frozenset[int], frozenset[int]], list[int]] = {}
        self._raw_chain = self._chain(self.raw)
        #: run days before each index (for :meth:`may_be_regular`)
        self._before = [0]
        for r in self.raw:
            self._before.append(self._before[-1] + r)
        #: a regular rhythm rests on at least this many run days: ``min_backups``, and either
        #: ``min_weeks`` on each weekday of a pattern of fewer than seven or a run on every weekday
        self.regular_runs = max(s.min_backups, min(s.min_weeks, 7))

    def index(self, day: date) -> int:
        return (day - self.origin).days

    @staticmethod
    def _chain(ran: list[bool]) -> list[int]:
        chain = [0] * len(ran)
        for i, r in enumerate(ran):
            chain[i] = r + (chain[i - 7] if i >= 7 else 0)
        return chain

    def _moved(self, likely: frozenset[int], quiet: frozenset[int]) -> list[int]:
        """The chain of run days with late and early runs counted for their own day.

        Otherwise a weekly run that came 14 hours late twice lands on Tuesday in the
        learning and makes Monday's series look irregular. Only runs on ``quiet`` weekdays
        (that usually have none) move: a host running on random days would otherwise
        gather its Saturday and Monday runs into a "weekly" Sunday.
        """
        if (likely, quiet) not in self._chains:
            ran = list(self.raw)
            series, s = self.series, self.s
            for i in range(self.n):
                day = self.origin + timedelta(days=i)
                if ran[i] or day.weekday() not in likely:
                    continue
                for step, limit in ((1, s.grace), (-1, s.early)):
                    moved = False
                    for j in (1, 2):
                        k = i + step * j
                        other = day + timedelta(days=step * j)
                        if not 0 <= k < self.n or other.weekday() in likely or other.weekday() not in quiet:
                            break
                        starts = series.local.get(other, [])
                        if ran[k] and starts and min(abs(t - series.usual(day)) for t in starts) <= limit:
                            ran[k], ran[i], moved = False, True, True
                            break
                    if moved:
                        break
            self._chains[(likely, quiet)] = self._chain(ran)
        return self._chains[(likely, quiet)]

    def _counts(self, chain: list[int], spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Per weekday: days in the spans ([a, b) index ranges), and days with runs."""
        seen, hits = [0] * 7, [0] * 7
        base = self.origin.weekday()
        for a, b in spans:
            for r in range(7):  # the index residue r is weekday (base + r) % 7
                first = a + (r - a) % 7
                if first >= b:
                    continue
                last = first + (b - 1 - first) // 7 * 7
                w = (base + r) % 7
                seen[w] += (last - first) // 7 + 1
                hits[w] += chain[last] - (chain[first - 7] if first >= 7 else 0)
        return seen, hits

    def _spans(self, i: int) -> list[tuple[int, int]]:
        """The index ranges [a, b) the rhythm of day ``i`` is learned from."""
        want = 7 * self.s.history_weeks
        spans = [(max(0, i - want), i)]
        have = spans[0][1] - spans[0][0]
        if have < want and i + 1 <= self.last_full:
            spans.append((i + 1, min(i + 1 + want - have, self.last_full + 1)))
        return spans

    def may_be_regular(self, day: date) -> bool:
        """False when :meth:`learn` cannot find a regular rhythm on ``day``: its spans (widened
        by the two days a late or early run moves, :meth:`_moved`) hold fewer run days than
        any regular rhythm needs. Counted in constant time, so days whose rhythm matters only
        if it is regular are skipped without learning it."""
        spans = self._spans(self.index(day))
        lo = max(0, min(a for a, _ in spans) - 2)
        hi = min(self.n, max(b for _, b in spans) + 2)
        return hi > lo and self._before[hi] - self._before[lo] >= self.regular_runs

    def learn(self, day: date) -> Rhythm:
        """The rhythm of the ``history_weeks`` before ``day`` (after it too while the series is young)."""
        s = self.s
        spans = self._spans(self.index(day))
        days = sum(b - a for a, b in spans)
        if days < s.min_history_days:
            return Rhythm("unknown", days=max(days, 0))
        seen, hits = self._counts(self._raw_chain, spans)
        share = _shares(seen, hits)
        likely = frozenset(w for w in range(7) if share[w] >= s.regular_share)
        if not likely and max(share) >= s.keep_share:  # a weekly run missed or late in three weeks of eight
            likely = frozenset({max(range(7), key=lambda w: share[w])})
        if likely and len(likely) < 7:
            quiet = frozenset(w for w in range(7) if share[w] <= 1 - s.regular_share)
            seen, hits = self._counts(self._moved(likely, quiet), spans)
            share = _shares(seen, hits)
        run_days = sum(hits)
        if run_days < s.min_backups:
            return Rhythm("unknown", run_days=run_days, days=days)
        around = len(spans) > 1
        pattern = frozenset(w for w in range(7) if share[w] >= s.regular_share)
        if not _covers(pattern, share, s):
            # a weekly full missed three times in eight weeks is still a weekly full, when the
            # other weekdays stay empty; a pattern of more weekdays with one weak weekday (a
            # nightly whose Sunday full failed twice) still that pattern, when its weekdays
            # have regular_share on average. Two weak weekdays are not: random runs on half
            # the days look like that, and so do late and manual runs the day after a run
            pattern = frozenset(w for w in range(7) if share[w] >= s.keep_share)
            weak = sum(1 for w in pattern if share[w] < s.regular_share)
            loose = len(pattern) == 1 or (
                weak == 1 and sum(share[w] for w in pattern) / len(pattern) >= s.regular_share)
            if not (loose and _covers(pattern, share, s)):
                if days < 7 * s.min_weeks:  # a young host: too early to say it has no rhythm either
                    return Rhythm("unknown", frozenset(), share, run_days, days, around)
                return Rhythm("irregular", frozenset(), share, run_days, days, around)
        if len(pattern) < 7 and min(hits[w] for w in pattern) < s.min_weeks:
            return Rhythm("unknown", pattern, share, run_days, days, around)  # too few weeks to call it a rhythm
        return Rhythm("regular", pattern, share, run_days, days, around)


def _shares(seen: list[int], hits: list[int]) -> tuple[float, ...]:
    """Per weekday, the share of such days that had a run."""
    return tuple(h / n if n else 0.0 for h, n in zip(hits, seen, strict=True))


def _covers(pattern: frozenset[int], share: tuple[float, ...], s: BackupSettings) -> bool:
    """A weekday pattern is a rhythm when runs on the other weekdays are extras, not a habit.

    Extras: on average on at most ``1 - regular_share`` of the other weekdays' weeks (a
    manual run now and then), and on none of them half as often as on the pattern's
    weakest day. A host backing up on four random days out of ten has no such pattern,
    even when three weekdays happen to have runs in six of eight weeks: it is irregular.
    One or two weekdays are easily filled by chance (a host running on a third of its
    days has runs on some Sunday in seven weeks of eight now and then), so such a pattern
    allows half as many extras.
    """
    if not pattern:
        return False
    others = [share[w] for w in range(7) if w not in pattern]
    if not others:
        return True
    extras = (1 - s.regular_share) / (2 if len(pattern) <= 2 else 1)
    return sum(others) / len(others) <= extras and min(share[w] for w in pattern) - max(others) >= 0.5


def detect(ctx: AccountContext) -> list[Event]:
    s = ctx.settings.backups
    today = ctx.today
    first_day = today - timedelta(days=span_days(ctx.config, ctx.account, ctx.settings))
    rows = ctx.history.rows(ctx.midnight(first_day), ctx.now + timedelta(seconds=1))
    events = [ev for ev in live(rows, s.kinds) if start_dt(ev) <= ctx.now]
    report_start = horizon(ctx)
    checked = []
    for series in build_series(ctx, events, s):
        if len(series.runs) < s.min_backups:
            continue  # too few runs to learn anything from, ever
        misses, check = _check_series(ctx, series, s, report_start)
        checked.append((series, misses, check))
    # one flag per night: a night the host's full backup was due (missed: its own flag; late
    # within grace: none) is not also a missed daily backup; and a host whose full backups
    # keep a rhythm is not irregular for its odd other runs
    full_due: dict[str, list[datetime]] = defaultdict(list)
    full_regular: dict[str, set[date]] = defaultdict(set)
    for series, _misses, check in checked:
        if series.full:
            full_due[series.host] = check.expected
            full_regular[series.host] = check.regular_mondays
    out: list[Event] = []
    for series, misses, check in checked:
        irregular = check.irregular
        if not series.full:
            misses = [(day, rhythm) for day, rhythm in misses
                      if not _same_night(_usual_time(ctx, series, day), full_due[series.host])]
            irregular = [(day, rhythm) for day, rhythm in irregular if day not in full_regular[series.host]]
        for group in _consecutive(misses):
            if group[0][0] >= report_start:
                out.append(_missed_flag(ctx, series, group, s))
        if s.irregular:
            out.extend(_irregular_flag(ctx, series, day, rhythm, s) for day, rhythm in irregular)
    return out


def _same_night(usual: datetime, due: list[datetime]) -> bool:
    """A full backup was due within SAME_NIGHT of ``usual``."""
    return any(abs(usual - d) <= SAME_NIGHT for d in due)


@dataclass
class Checked:
    """What the days of one series said, besides its misses."""

    #: Mondays (in the report range) without a rhythm
    irregular: list[tuple[date, Rhythm]] = field(default_factory=list)
    #: Mondays with one
    regular_mondays: set[date] = field(default_factory=set)
    #: when a run was due, on every day the rhythm expected one (it came or not)
    expected: list[datetime] = field(default_factory=list)


def _check_series(ctx: AccountContext, series: Series, s: BackupSettings,
                  report_start: date, *, skip: bool = True) -> tuple[list[tuple[date, Rhythm]], Checked]:
    """The days a run was expected and did not come, and the Mondays the series had no rhythm.

    Days whose rhythm cannot be regular (:meth:`Learner.may_be_regular`) and that are no
    reported Monday are not learned (``skip``; False learns every day, the reference the
    tests compare with): most hosts of a big account have too few runs for a rhythm.
    """
    learner = Learner(series, ctx.today, s)
    misses: list[tuple[date, Rhythm]] = []
    check = Checked()
    frozen: Rhythm | None = None  # the rhythm before the current streak of misses
    streak_first: date | None = None
    streak_flags = 0
    warm_up = report_start - timedelta(days=s.give_up_after_days + 7 * GIVE_UP_AFTER_RUNS)
    known: Rhythm | None = None  # the last regular rhythm, kept while the weeks still bear it out
    days = days_between(max(warm_up, series.first_day), ctx.today)
    if skip and len(series.by_day) < learner.regular_runs:  # never regular: only reported Mondays matter
        days = [day for day in days if day.weekday() == 0 and day >= report_start]
    for day in days:
        if skip and frozen is None and known is None and not learner.may_be_regular(day) \
                and not (day.weekday() == 0 and day >= report_start and not _dormant(series, day, s)):
            continue  # not regular, so nothing to check; and no Monday that would be flagged irregular
        rhythm = frozen or _keep(known, learner.learn(day), s)
        known = rhythm if rhythm.status == "regular" else None
        if day.weekday() == 0 and day >= report_start:
            if rhythm.status == "irregular" and not _dormant(series, day, s):
                check.irregular.append((day, rhythm))
            elif rhythm.status == "regular":
                check.regular_mondays.add(day)
        if rhythm.status != "regular" or day.weekday() not in rhythm.weekdays:
            continue
        usual = _usual_time(ctx, series, day)
        if ctx.now < usual + s.raise_after:
            ctx.until(usual + s.raise_after)
            break  # not due yet, and neither is anything later
        check.expected.append(usual)
        if _runs_for(ctx, series, day, rhythm, s):
            frozen, streak_first = None, None
            continue
        if frozen is not None and any(streak_first <= d < day for d in series.by_day):  # type: ignore[operator]
            # runs came during the streak, on days the rhythm did not expect them: it has
            # changed; learn it again rather than keep flagging against the old one
            frozen, streak_first = None, None
            rhythm = _keep(known, learner.learn(day), s)
            if rhythm.status != "regular" or day.weekday() not in rhythm.weekdays:
                continue
        if streak_first is None:
            frozen, streak_first, streak_flags = rhythm, day, 0
        if (day - streak_first).days >= s.give_up_after_days and streak_flags >= GIVE_UP_AFTER_RUNS:
            continue  # retired host: no more flags until it backs up again
        streak_flags += 1
        misses.append((day, rhythm))
    return misses, check


def _dormant(series: Series, day: date, s: BackupSettings) -> bool:
    """No run in the ``give_up_after_days`` before ``day``: the host is retired, not irregular."""
    return not any(day - timedelta(days=s.give_up_after_days) <= d < day for d in series.by_day)


def _keep(known: Rhythm | None, learned: Rhythm, s: BackupSettings) -> Rhythm:
    """Hysteresis: a regular rhythm stays while each of its weekdays keeps ``keep_share``.

    Otherwise a few scattered misses (three of eight Sundays) would make a weekly series
    "irregular", and an irregular series is not checked for misses at all.
    """
    if known is None or learned.status == "unknown" or (learned.status == "regular" and learned.weekdays == known.weekdays):
        return learned
    if all(learned.share[w] >= s.keep_share for w in known.weekdays) and _covers(known.weekdays, learned.share, s):
        return Rhythm("regular", known.weekdays, learned.share, learned.run_days, learned.days, learned.around)
    return learned


def _usual_time(ctx: AccountContext, series: Series, day: date) -> datetime:
    """When the run of ``day`` is usually due, as an instant (local wall time, DST-aware)."""
    due = series.due.get(day)
    if due is None:  # (asked for the same days again and again: checks, neighbours, flag texts)
        wall = datetime.combine(day, time(0)) + timedelta(minutes=series.minute)
        due = series.due[day] = wall.replace(tzinfo=ctx.tz).astimezone(timezone.utc)
    return due


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
    kind = "full backup" if series.full else "backup"
    due_first = _usual_time(ctx, series, first).astimezone(ctx.tz)
    when = f"on {fmt_day(first)}" if len(group) == 1 else f"from {fmt_day(first)} to {fmt_day(last)}"
    cutoff = _usual_time(ctx, series, first) - s.early
    before = [ev for ev in series.runs if start_dt(ev) < cutoff]
    lines = [f"No {kind} for {who} {when}, where one is expected {_every(rhythm.weekdays)} around "
             f"{due_first:%H:%M} ({tzname}); " + ("the last one before is linked below." if before else
                                                  "the month view is the link.")]
    for day, _ in group:
        due = _usual_time(ctx, series, day).astimezone(ctx.tz)
        deadline = (due + s.grace).astimezone(ctx.tz)
        lines.append(f"Expected around {due:%H:%M} ({tzname}) on {fmt_day(due.date())}; "
                     f"a run until {fmt_day(deadline.date())} {deadline:%H:%M} still counts.")
    lines.append(_rhythm_text(series, rhythm, s, first))
    if before:
        prev = before[-1]
        at = start_dt(prev).astimezone(ctx.tz)
        line = f"Last {kind} before: {fmt_day(at.date())} {at:%H:%M}"
        lines.append(line + link_text(prev.url))
    days = [d.isoformat() for d, _ in group]
    return insight_event(
        ctx, NAME, f"{ctx.account.id}:{series.key}:{first.isoformat()}", title, first, last, "\n".join(lines),
        attrs={**_attrs(series, rhythm, "missed", days),
               "expected": [_usual_time(ctx, series, d).isoformat() for d, _ in group],
               VERDICT_ATTR: f"{title}|{','.join(days)}"},
    )


def _irregular_flag(ctx: AccountContext, series: Series, monday: date, rhythm: Rhythm, s: BackupSettings) -> Event:
    who = _who(ctx, series)
    kind = "full backups" if series.full else "backups"
    title = f"Irregular {kind} for {who}: no steady rhythm"
    lines = [
        f"{kind.capitalize()} for {who} came on {rhythm.run_days} of {rhythm.days} days, on no weekday in "
        f"{round(100 * s.regular_share)}% of weeks with few runs on the others: missed runs cannot be told "
        "(the month view is the link).",
        _rhythm_text(series, rhythm, s, monday),
        "Share of weeks with a run, per weekday: "
        + ", ".join(f"{WEEKDAYS[w][:3]} {round(100 * rhythm.share[w])}%" for w in range(7)) + ".",
        "Without a steady rhythm there is nothing to check runs against, so missed runs are not flagged.",
    ]
    return insight_event(
        ctx, NAME, f"{ctx.account.id}:{series.key}:irregular:{iso_week(monday)}", title, monday, monday,
        "\n".join(lines), severity="info",
        attrs={**_attrs(series, rhythm, "irregular", [monday.isoformat()]), VERDICT_ATTR: title},
    )


def _rhythm_text(series: Series, rhythm: Rhythm, s: BackupSettings, day: date) -> str:
    weeks = round(rhythm.days / 7)
    kind = "full backups" if series.full else "backups"
    around = "around" if rhythm.around else "before"
    if rhythm.status == "regular":
        return (f"Learned from the {weeks} weeks {around} {fmt_day(day)}: {kind} {_every(rhythm.weekdays)}"
                f" (runs on {rhythm.run_days} of {rhythm.days} days).")
    return f"In the {weeks} weeks {around} {fmt_day(day)}: {kind} on {rhythm.run_days} of {rhythm.days} days."


def _attrs(series: Series, rhythm: Rhythm, flag: str, days: list[str]) -> dict[str, Any]:
    return {"flag": flag, "host": series.host, "series": "full" if series.full else "any",
            "weekdays": sorted(rhythm.weekdays), "days": days}


def reads(ctx: AccountContext) -> list[Reads]:
    """The backups of :func:`detect`'s range: all but their text (a run's title and detail
    are in no flag and no rhythm; its link is: the last good backup's)."""
    first_day = ctx.today - timedelta(days=span_days(ctx.config, ctx.account, ctx.settings))
    return [Reads(ctx.midnight(first_day), ctx.now + timedelta(seconds=1), frozenset(ctx.settings.backups.kinds),
                  blind=TEXT)]


DETECTOR = Detector(NAME, lambda s: s.backups.enabled, horizon, detect, reads)
