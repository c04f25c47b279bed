"""Alert bursts: days with far more alerts than the account's own rate makes likely.

For every day ``d``, each stretch of 1 to ``window_days`` days ending on ``d`` is judged
against the account's usual rate. The rate is the **mean** of the baseline windows
(``window_days`` long; the ``baseline_weeks`` before the week ending on ``d`` — and,
while the account is younger than that, the ones after it), leaving out windows that
would be bursts themselves, plus half an alert (a prior: no account's rate is exactly
zero). A stretch is a burst when it holds

* at least ``min_alerts`` alerts and ``min_ratio`` times its usual count, and
* a count whose probability at the usual rate is at most ``p``: the upper tail of a
  negative binomial whose dispersion is the account's own (estimated from the baseline's
  days and windows; Poisson when they vary no more than that), widened by how little
  the rate is known from a few alerts.

Consecutive burst days are one burst, and two within a window of each other merge: one
flag, keyed by the account and its first burst day, from the day the excess began to the
last busy day. Accounts with fewer than ``min_history_weeks`` baseline windows (as far as
the store knows the account) are not judged. Flags cover the account feed's window
(``report_days``), a burst running into it from before included. See docs/INSIGHTS.md.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from icsfeed.config import AccountConfig, Config
from icsfeed.insights.base import (
    VERDICT_ATTR,
    AccountContext,
    Detector,
    fmt_day,
    fmt_number,
    insight_event,
    link_text,
    live,
    report_days,
    start_dt,
)
from icsfeed.insights.settings import BurstSettings, InsightsSettings
from icsfeed.insights.stats import odds_text, upper_tail
from icsfeed.model import Event

NAME = "bursts"
#: alerts added to the baseline's count (a Gamma prior's shape): a rate is never zero
PRIOR_ALERTS = 0.5
#: a burst that was going on when the report range began is looked for this many windows back
LOOK_BACK_WINDOWS = 3


@dataclass(frozen=True)
class Baseline:
    """The usual level of the windows around a day."""

    mean: float      # alerts per window, prior included
    phi_window: float  # dispersion of window counts beyond the days' own
    phi_day: float   # dispersion of single days
    phi_rate: float  # how little the mean is known (1 / alerts it rests on)
    windows: int     # windows it was made of
    left_out: int    # windows left out as bursts themselves
    after: bool      # windows after the day were used (a young account)

    def dispersion(self, days: int) -> float:
        """Of a stretch of ``days``: the window's extra, the days' own, the rate's uncertainty."""
        return self.phi_window + self.phi_day / days + self.phi_rate


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
        self.sq = [0]
        for c in per_day:
            self.cum.append(self.cum[-1] + c)
            self.sq.append(self.sq[-1] + c * c)

    def total(self, start: int, days: int) -> int:
        return self.cum[start + days] - self.cum[start]

    def squares(self, start: int, days: int) -> int:
        return self.sq[start + days] - self.sq[start]


def span_days(config: Config, account: AccountConfig, settings: InsightsSettings) -> int:
    """How far back this detector reads history."""
    s = settings.bursts
    return report_days(config, account, s.report_days) + s.window_days * (s.baseline_weeks + LOOK_BACK_WINDOWS + 2)


def horizon(ctx: AccountContext) -> date:
    """Flags starting before the report range are history (a straddling one is returned anyway)."""
    return ctx.report_start(ctx.settings.bursts.report_days)


def baseline(counts: Counts, i: int, coverage: int, last_full: int, s: BurstSettings) -> Baseline | None:
    """The usual level for the window ending on day index ``i``, or None without enough history."""
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
    values = sorted(((counts.total(st, w), st) for st in starts), reverse=True)
    total = sum(v for v, _ in values)
    n = len(values)
    drop = 0
    while drop < n // 2:  # leave out windows that were bursts themselves (at most half)
        top = values[drop][0]
        rest = (total - top + PRIOR_ALERTS) / (n - drop - 1)
        if top < max(s.min_ratio * rest, rest + s.min_alerts):
            break
        total -= top
        drop += 1
    kept = values[drop:]
    m = len(kept)
    mean_w = total / m
    phi_window = 0.0
    if m >= 3 and mean_w > 0:
        var_w = sum((v - mean_w) ** 2 for v, _ in kept) / (m - 1)
        phi_window = max(0.0, (var_w - mean_w) / mean_w**2)
    phi_day = 0.0
    n_days = m * w
    if total > 0 and n_days > 1:
        mean_d = total / n_days
        var_d = (sum(counts.squares(st, w) for _, st in kept) - n_days * mean_d**2) / (n_days - 1)
        phi_day = max(0.0, (var_d - mean_d) / mean_d**2)
    # window counts vary by the days' dispersion (phi_day / w) and what varies between windows on top
    extra = max(0.0, phi_window - phi_day / w)
    return Baseline(mean=(total + PRIOR_ALERTS) / m, phi_window=extra, phi_day=phi_day,
                    phi_rate=1.0 / (total + PRIOR_ALERTS), windows=m, left_out=drop, after=after)


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
        p = upper_tail(count, usual, base.dispersion(days))
        if p <= s.p:
            return DayVerdict(days, count, p, base)
    return None


def detect(ctx: AccountContext) -> list[Event]:
    s = ctx.settings.bursts
    w = s.window_days
    today = ctx.today
    origin = today - timedelta(days=span_days(ctx.config, ctx.account, ctx.settings))
    rows = ctx.history.rows(ctx.midnight(origin), ctx.now + timedelta(seconds=1))
    known = [ctx.local_day(r.event.start) for r in rows if not r.event.rrule]
    if not known:
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
    coverage = max(0, (min(known) - origin).days)  # the account's events start here (as far as we read)
    last_full = n - 2  # yesterday: the last complete day
    report_start = (horizon(ctx) - origin).days
    verdicts: dict[int, DayVerdict | None] = {}

    def verdict(i: int) -> DayVerdict | None:
        if i not in verdicts:
            base = baseline(counts, i, coverage, last_full, s)
            verdicts[i] = judge(counts, i, base, coverage, s) if base is not None else None
        return verdicts[i]

    first_scan = max(coverage, report_start - LOOK_BACK_WINDOWS * w)
    while first_scan > coverage and verdict(first_scan) is not None:
        first_scan -= 1  # a burst was going on: find where it began, so its key does not move
    episodes: list[list[int]] = []  # [first burst day, last burst day]
    for i in range(first_scan, n):
        if verdict(i) is None:
            continue
        if episodes and i - episodes[-1][1] <= w:  # a dip of a day or two is the same burst
            episodes[-1][1] = i
        else:
            episodes.append([i, i])
    out = []
    for d1, d2 in episodes:
        v = verdict(d1)
        assert v is not None
        first = d1 - v.days + 1
        last = _last_busy_day(counts, d1, d2, v.base.mean / w * s.min_ratio)
        if last < report_start:
            continue  # over before the report range: history
        out.append(_flag(ctx, s, counts, first, last, d1, v, by_day))
    return out


def _last_busy_day(counts: Counts, d1: int, d2: int, busy: float) -> int:
    """The burst lasts from its first burst day while days stay busy (two quiet days end it)."""
    threshold = max(1.0, busy)
    last, quiet = d1, 0
    for i in range(d1 + 1, d2 + 1):
        if counts.per_day[i] >= threshold:
            last, quiet = i, 0
        else:
            quiet += 1
            if quiet >= 2:
                break
    return last


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
    left_out = f", leaving out {v.base.left_out} that had bursts themselves" if v.base.left_out else ""
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


DETECTOR = Detector(NAME, lambda s: s.bursts.enabled, horizon, detect)
