"""Alert bursts: days with far more alerts than the account's own rate makes likely.

For every day ``d``, each stretch of 1 to ``window_days`` days ending on ``d`` is judged
against the account's usual rate. The rate is the **mean** of the baseline windows
(``window_days`` long; the ``baseline_weeks`` before the week ending on ``d`` — and,
while the account is younger than that, the ones after it), plus half an alert (a prior:
no account's rate is exactly zero); earlier bursts are left out of it (see
:func:`baseline`). A stretch is a burst when it holds

* at least ``min_alerts`` alerts and ``min_ratio`` times its usual count, and
* a count whose probability at the usual rate is at most ``p``: the upper tail of a
  negative binomial whose dispersion is the account's own (from the baseline's days and
  windows, weighed by how much their counts can tell), widened by how little the rate is
  known from a few alerts.

A burst day stands for the busy days of its stretch; those within two quiet days of each
other are one burst: one flag, keyed by the account and its first burst day, from its
first to its last busy day. Accounts with fewer than ``min_history_weeks`` baseline
windows (as far as the store knows the account) are not judged. Flags cover the account
feed's window (``report_days``), a burst running into it from before included. See
docs/INSIGHTS.md for why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from icsfeed.config import AccountConfig, Config
from icsfeed.insights.base import (
    VERDICT_ATTR,
    AccountContext,
    Detector,
    Reads,
    fmt_day,
    fmt_number,
    insight_event,
    link_text,
    live,
    report_days,
    start_dt,
)
from icsfeed.insights.facts import COUNTED, flag_ranges
from icsfeed.insights.settings import BurstSettings, InsightsSettings
from icsfeed.insights.stats import odds_text, upper_tail
from icsfeed.model import Event

NAME = "bursts"
#: alerts added to the baseline's count (a Gamma prior's shape): a rate is never zero
PRIOR_ALERTS = 0.5
#: history read before the report range besides the baseline: a burst running into the range
#: is followed back to where it began (up to this many windows)
LOOK_BACK_WINDOWS = 3
#: dispersion before the data speak, per day and per window on top of the days (a day's
#: rate varying ±45%, windows ±15%), and how far an account may be from it (±0.3, ±0.1):
#: the estimate from the baseline counts for as much as its counts can tell — with 56
#: days of 0.3 alerts a fifth (one day with two alerts would otherwise read as enormous
#: dispersion, and hide a burst), with 56 days of 14 alerts nearly all
PRIOR_DAY_DISPERSION, DAY_DISPERSION_SPREAD = 0.2, 0.3
PRIOR_WINDOW_DISPERSION, WINDOW_DISPERSION_SPREAD = 0.02, 0.1
#: eight windows say little about how weeks vary: at least this much (±17%) is assumed
MIN_WINDOW_DISPERSION = 0.03
#: and never more than this (a day's rate that varies like an exponential, windows ±70%)
MAX_DAY_DISPERSION = 1.0
MAX_WINDOW_DISPERSION = 0.5
#: stretches of a baseline left out as earlier bursts, at most
MAX_LEFT_OUT = 2
#: a day is busy (part of a burst's span) when a usual day has less than this chance of its count
BUSY_DAY = 0.05


@dataclass(frozen=True)
class Baseline:
    """The usual level of the windows around a day."""

    mean: float      # alerts per window, prior included
    phi_window: float  # dispersion of window counts beyond the days' own
    phi_day: float   # dispersion of single days
    phi_rate: float  # how little the mean is known (1 / alerts it rests on)
    windows: int     # windows it was made of
    left_out: int    # stretches left out as bursts themselves
    after: bool      # windows after the day were used (a young account)

    def dispersion(self, days: int) -> float:
        """Of a stretch of ``days``: the window's extra, the days' own, the rate's uncertainty."""
        return self.phi_window + self.phi_day / days + self.phi_rate

    def busy_day(self, window_days: int) -> int:
        """The fewest alerts a usual day has less than a 5% chance of (at least one)."""
        mean, phi = self.mean / window_days, self.dispersion(1)
        c = max(1, math.ceil(mean))
        while upper_tail(c, mean, phi, stop_above=BUSY_DAY) > BUSY_DAY:
            c += 1
        return c


@dataclass(frozen=True)
class DayVerdict:
    """The stretch ending on one day that made it a burst day."""

    days: int      # length of the stretch
    count: int     # alerts in it
    p: float       # its probability at the usual rate
    base: Baseline


class Counts:
    """Alerts per local day from ``origin`` on, with prefix sums for windows."""

    def __init__(self, origin: date, per_day: list[int]) -> None:
        self.origin = origin
        self.per_day = per_day
        self.cum = [0]
        for c in per_day:
            self.cum.append(self.cum[-1] + c)

    def total(self, start: int, days: int) -> int:
        return self.cum[start + days] - self.cum[start]


def span_days(config: Config, account: AccountConfig, settings: InsightsSettings) -> int:
    """How far back this detector reads history."""
    s = settings.bursts
    return report_days(config, account, s.report_days) + s.window_days * (s.baseline_weeks + LOOK_BACK_WINDOWS + 2)


def horizon(ctx: AccountContext) -> date:
    """Flags starting before the report range are history (a straddling one is returned anyway)."""
    return ctx.report_start(ctx.settings.bursts.report_days)


def baseline(counts: Counts, i: int, coverage: int, last_full: int, s: BurstSettings) -> Baseline | None:
    """The usual level for the window ending on day index ``i``, or None without enough history.

    Robust to earlier bursts in two steps. The busiest stretch of ``window_days``
    consecutive baseline days is left out when it would be a burst against the rest (as
    :func:`judge` decides: floors and tail), and then the next one (at most
    ``MAX_LEFT_OUT``): an old burst must neither hide a new one nor pass for an account
    that varies a lot, wherever it falls in the windows. Then single days beyond an upper
    fence (three interquartile ranges above the third quartile, and at least where a
    Poisson count of the usual daily mean has a 1-in-1000 chance) count as usual days.
    """
    w = s.window_days
    starts: list[int] = []
    for k in range(1, s.baseline_weeks + 1):  # the windows before the one ending on i
        start = i - w * (k + 1) + 1
        if start < coverage:
            break
        starts.append(start)
    after = False
    k = 2  # a young account: windows after it too, skipping the one right after (a burst's tail)
    while len(starts) < s.baseline_weeks and i + w * k <= last_full:
        starts.append(i + w * (k - 1) + 1)
        after = True
        k += 1
    if len(starts) < s.min_history_weeks:
        return None
    per_day = counts.per_day
    starts.sort()
    # the baseline's days, and its blocks of consecutive days (before the day; after it)
    index = [st + j for st in starts for j in range(w)]
    values = [float(per_day[d]) for d in index]
    blocks: list[tuple[int, int]] = []
    for pos, d in enumerate(index):
        if blocks and index[blocks[-1][1] - 1] == d - 1:
            blocks[-1] = (blocks[-1][0], pos + 1)
        else:
            blocks.append((pos, pos + 1))
    left_out: list[int] = []
    out = [False] * len(index)
    for _ in range(MAX_LEFT_OUT):
        stretch = _busiest(values, out, blocks, w)
        if stretch is None:
            break
        a, b = stretch
        busy = sum(values[a:b])
        rest_days = sum(1 for o in out if not o) - (b - a)
        rest = (sum(v for v, o in zip(values, out, strict=True) if not o) - busy) / rest_days * w
        if busy < max(s.min_alerts, s.min_ratio * (rest + PRIOR_ALERTS / len(starts))):
            break
        rest_windows = [sum(v for v, o in zip(values[j:j + w], out[j:j + w], strict=True) if not o)
                        for j in range(0, len(index), w)]
        prior = PRIOR_DAY_DISPERSION / w + PRIOR_WINDOW_DISPERSION  # of a whole window
        phi = _shrunk(_dispersion([round(v) for v in rest_windows]), rest, len(rest_windows), prior,
                      WINDOW_DISPERSION_SPREAD) + 1.0 / (rest * rest_days / w + PRIOR_ALERTS)
        if upper_tail(round(busy), rest + PRIOR_ALERTS / len(starts), phi, stop_above=s.p) > s.p:
            break  # as busy as the account goes
        for j in range(a, b):
            out[j] = True
        left_out.append(a)
    usual_days = sorted(v for v, o in zip(values, out, strict=True) if not o)
    n_days = len(usual_days)
    mean_d = sum(usual_days) / n_days
    q1, q3 = usual_days[n_days // 4], usual_days[(3 * n_days) // 4]
    fence = q3 + 3 * (q3 - q1)
    if usual_days[-1] > fence:
        fence = max(fence, poisson_quantile(mean_d, 1e-3))
    if usual_days[-1] > fence:  # odd days: as if they had been usual ones
        usual_days = [v for v in usual_days if v <= fence]
        mean_d = sum(usual_days) / len(usual_days)
    # the windows as they would have been with usual days in place of the ones left out
    clean = [sum(v if not o and v <= fence else mean_d for v, o in zip(values[j:j + w], out[j:j + w], strict=True))
             for j in range(0, len(index), w)]
    m = len(clean)
    total_clean = sum(clean)
    mean_w = total_clean / m
    phi_window = 0.0
    if m >= 3 and mean_w > 0:
        var_w = sum((v - mean_w) ** 2 for v in clean) / (m - 1)
        phi_window = max(0.0, (var_w - mean_w) / mean_w**2)
    phi_day, md = 0.0, 0.0
    if len(usual_days) > 1 and sum(usual_days) > 0:
        md = sum(usual_days) / len(usual_days)
        var_d = sum((c - md) ** 2 for c in usual_days) / (len(usual_days) - 1)
        phi_day = max(0.0, (var_d - md) / md**2)
    phi_day = min(MAX_DAY_DISPERSION, _shrunk(phi_day, md, len(usual_days), PRIOR_DAY_DISPERSION, DAY_DISPERSION_SPREAD))
    # window counts vary by the days' dispersion (phi_day / w) and what varies between windows on top
    extra = _shrunk(max(0.0, phi_window - phi_day / w), mean_w, m, PRIOR_WINDOW_DISPERSION, WINDOW_DISPERSION_SPREAD)
    extra = min(max(extra, MIN_WINDOW_DISPERSION), MAX_WINDOW_DISPERSION)
    return Baseline(mean=(total_clean + PRIOR_ALERTS) / m, phi_window=extra, phi_day=phi_day,
                    phi_rate=1.0 / (total_clean + PRIOR_ALERTS), windows=m, left_out=len(left_out), after=after)


def _busiest(values: list[float], out: list[bool], blocks: list[tuple[int, int]], w: int) -> tuple[int, int] | None:
    """The [a, b) positions of the busiest ``w`` consecutive days (days already out count 0)."""
    best, where = 0.0, None
    for lo, hi in blocks:
        run = 0.0
        for b in range(lo, hi):
            run += 0.0 if out[b] else values[b]
            if b - w >= lo:
                run -= 0.0 if out[b - w] else values[b - w]
            if run > best:
                best, where = run, (max(lo, b - w + 1), b + 1)
    return where


def _shrunk(estimate: float, mean: float, n: int, prior: float, spread: float) -> float:
    """A dispersion estimate from ``n`` counts of this mean, weighed against the prior.

    The method-of-moments estimate's standard error is about √(2/(n-1)) / mean; its weight
    is the share of the prior's spread it does not blur (an empirical-Bayes compromise).
    """
    info = (n - 1) * mean**2 * spread**2 if n > 1 else 0.0
    weight = info / (info + 2.0)
    return weight * estimate + (1.0 - weight) * prior


def _dispersion(values: list[int]) -> float:
    """Method-of-moments dispersion of counts: how far their variance exceeds their mean."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    if mean <= 0:
        return 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return max(0.0, (var - mean) / mean**2)


def poisson_quantile(mean: float, p: float) -> int:
    """The smallest count a Poisson count of this mean exceeds with probability below ``p``."""
    term = math.exp(-mean)
    below = term  # P(X <= c)
    c = 0
    while 1.0 - below >= p and c < 10_000:
        c += 1
        term *= mean / c
        below += term
    return c


def judge(counts: Counts, i: int, base: Baseline, coverage: int, s: BurstSettings) -> DayVerdict | None:
    """The shortest stretch ending on day ``i`` that is a burst, or None."""
    w = s.window_days
    for days in range(1, w + 1):
        start = i - days + 1
        if start < coverage:
            break
        count = counts.total(start, days)
        usual = base.mean * days / w
        if count < s.min_alerts or count < s.min_ratio * usual:
            continue
        p = upper_tail(count, usual, base.dispersion(days), stop_above=s.p)
        if p <= s.p:
            return DayVerdict(days, count, p, base)
    return None


def detect(ctx: AccountContext) -> list[Event]:
    s = ctx.settings.bursts
    w = s.window_days
    today = ctx.today
    origin = today - timedelta(days=span_days(ctx.config, ctx.account, ctx.settings))
    rows = ctx.history.rows(ctx.midnight(origin), ctx.now + timedelta(seconds=1))
    earliest = min((start_dt(r.event) for r in rows if not r.event.rrule), default=None)
    if earliest is None:
        return []
    n = (today - origin).days + 1
    per_day = [0] * n
    by_day: dict[int, list[Event]] = defaultdict(list)
    for ev in live(rows, s.kinds):
        if start_dt(ev) > ctx.now:
            continue
        i = (ctx.local_day(ev.start) - origin).days
        if 0 <= i < n:
            per_day[i] += 1
            by_day[i].append(ev)
    counts = Counts(origin, per_day)
    coverage = max(0, (ctx.local_day(earliest) - origin).days)  # the account's events start here (as far as we read)
    last_full = n - 2  # yesterday: the last complete day
    report_start = (horizon(ctx) - origin).days
    verdicts: dict[int, DayVerdict | None] = {}

    def verdict(i: int) -> DayVerdict | None:
        if i not in verdicts:
            verdicts[i] = None
            if counts.total(max(coverage, i - w + 1), i - max(coverage, i - w + 1) + 1) >= s.min_alerts:
                base = baseline(counts, i, coverage, last_full, s)  # (no stretch of fewer alerts is a burst)
                verdicts[i] = judge(counts, i, base, coverage, s) if base is not None else None
        return verdicts[i]

    first_scan = max(coverage, report_start - w)
    while first_scan > coverage and verdict(first_scan) is not None:
        first_scan -= 1  # a burst was going on: find where it began, so its key does not move
    # each burst day stands for the busy days of the stretch that made it (days with a count
    # a usual day has less than a 5% chance of, at least one alert): the run of them, at
    # most two quiet days apart, that holds most of its alerts. Those spans that overlap or are at most two
    # quiet days apart are one burst, keyed by its first burst day. (Consecutive burst
    # days are not one burst as such: a week's window stays significant for days after a
    # burst, and another one may begin in them.)
    bursts: list[tuple[int, int, int]] = []  # (first day, last day, first burst day)
    for i in range(first_scan, n):
        v = verdict(i)
        if v is None:
            continue
        first, last = _busy_span(counts.per_day, i - v.days + 1, i, v.base.busy_day(w))
        if bursts and first <= bursts[-1][1] + 3:
            bursts[-1] = (min(first, bursts[-1][0]), max(last, bursts[-1][1]), bursts[-1][2])
        else:  # the day it became improbable is part of it, busy or not
            bursts.append((first, max(last, i) if counts.per_day[i] else last, i))
    out = []
    for first, last, d1 in bursts:
        v = verdict(d1)
        assert v is not None
        busy = v.base.busy_day(w)
        while any(counts.per_day[j] >= busy for j in range(max(coverage, first - 3), first)):
            first = max(j for j in range(max(coverage, first - 3), first) if counts.per_day[j] >= busy)
            # the excess began before the first stretch that was improbable on its own
        if last < report_start:
            continue  # over before the report range: history
        out.append(_flag(ctx, s, counts, first, last, d1, v, by_day))
    return out


def _busy_span(per_day: list[int], a: int, b: int, busy: int) -> tuple[int, int]:
    """Of days ``a``..``b``: the run of busy days (gaps of at most two quiet days) with most alerts."""
    runs: list[list[int]] = []
    for j in range(a, b + 1):
        if per_day[j] >= busy:
            if runs and j - runs[-1][-1] <= 3:
                runs[-1].append(j)
            else:
                runs.append([j])
    if not runs:  # (cannot happen for a burst: it has at least min_alerts alerts)
        return a, b
    best = max(runs, key=lambda run: sum(per_day[j] for j in run))
    return best[0], best[-1]


def usual_text(mean: float, window_days: int) -> str:
    """'none', 'about 3 in a week' (the window is a week by default)."""
    text = fmt_number(mean)
    if text == "none":
        return text
    return f"{text} in a week" if window_days == 7 else f"{text} in {window_days} days"


def _flag(ctx: AccountContext, s: BurstSettings, counts: Counts, first_i: int, last_i: int, d1_i: int,
          v: DayVerdict, by_day: dict[int, list[Event]]) -> Event:
    w = s.window_days
    origin = counts.origin
    first, last, d1 = (origin + timedelta(days=k) for k in (first_i, last_i, d1_i))
    events = [ev for i in range(first_i, last_i + 1) for ev in by_day.get(i, [])]
    count = len(events)
    days = last_i - first_i + 1
    when = "on one day" if days == 1 else f"in {days} days"
    usual = usual_text(v.base.mean, w)
    title = f"Alert burst: {count} alerts {when} (usually {usual})"
    span = f"on {fmt_day(first)}" if days == 1 else f"from {fmt_day(first)} to {fmt_day(last)}"
    stretch = "one day" if v.days == 1 else f"{v.days} days"
    around = "before and after it" if v.base.after else "before it"
    left_out = {0: "", 1: ", leaving out a stretch that was a burst itself"}.get(
        v.base.left_out, f", leaving out {v.base.left_out} stretches that were bursts themselves")
    groups: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        groups[ev.title].append(ev)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    lines = [
        f"{count} alerts {span} where {usual} is usual; the top alerts are below, "
        "the month view is the link.",
        f"Usual: the mean of the {v.base.windows} {'weeks' if w == 7 else f'{w}-day windows'} {around}{left_out}. "
        f"At that rate, {v.count} alerts in {stretch} has a chance of {odds_text(v.p)}.",
        "",
        "Top alerts:",
    ]
    for name, group in ranked[: s.top_alerts]:
        latest = max(group, key=start_dt)
        lines.append(f"• {len(group)}× {name}{link_text(latest.url)}")
    if len(ranked) > s.top_alerts:
        lines.append(f"• … and {len(ranked) - s.top_alerts} more kinds of alert")
    return insight_event(
        ctx, NAME, f"{ctx.account.id}:{d1.isoformat()}", title, first, last, "\n".join(lines),
        attrs={"count": count, "usual": round(v.base.mean, 3), "p": v.p,
               "first": first.isoformat(), "last": last.isoformat(),
               VERDICT_ATTR: f"{first.isoformat()}/{last.isoformat()}/{count}"},
    )


def reads(ctx: AccountContext) -> list[Reads]:
    """The alerts of :func:`detect`'s range, and the first start of anything in it (the
    account's age). Of the alerts, only when and whether they count: their titles and links
    are read for the days of a flag only (:func:`sees`)."""
    origin = ctx.today - timedelta(days=span_days(ctx.config, ctx.account, ctx.settings))
    start, end = ctx.midnight(origin), ctx.now + timedelta(seconds=1)
    return [Reads(start, end, frozenset(ctx.settings.bursts.kinds), blind=COUNTED),
            Reads(start, end, earliest=True)]


def sees(ctx: AccountContext, flags: list[Event]) -> list[Reads]:
    """The alerts whose titles and links the flags list: those of the flags' days. With the
    same counts the same bursts are found, with the days of the flags already stored."""
    return flag_ranges(ctx, flags, reads(ctx)[0])


DETECTOR = Detector(NAME, lambda s: s.bursts.enabled, horizon, detect, reads, sees)
