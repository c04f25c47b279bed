"""Alert bursts: a week with far more alerts than the account usually has.

For every day ``d`` the count of the trailing window (``window_days``, a week) is compared
with the same-length windows before it (``baseline_weeks`` of them). The usual level is
their median, and the spread the largest of: 1.4826·MAD of those windows, √window_days ×
1.4826·MAD of their single days (eight windows alone give a shaky spread), √median (counts
vary at least like a Poisson count) and 1. Median and MAD ignore an earlier burst inside
the baseline. A day is a burst day when its window holds at least

    max(min_alerts, median + k·spread, min_ratio·median)

alerts. Consecutive burst days are one burst, and two bursts within a window of each other
merge: one flag, keyed by the account and its first burst day, shown from the day the
excess began to the last day above the usual rate. Accounts with fewer than
``min_history_weeks`` baseline windows of history (as far as the store knows the account)
are not judged. See docs/INSIGHTS.md for why these defaults.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from icsfeed.insights.base import (
    AccountContext,
    Detector,
    days_between,
    fmt_day,
    fmt_number,
    insight_event,
    link_text,
    live,
    robust_level,
    start_dt,
)
from icsfeed.insights.settings import BurstSettings, InsightsSettings
from icsfeed.model import Event

NAME = "bursts"


@dataclass(frozen=True)
class DayVerdict:
    """The window ending on one day against its baseline."""

    count: int
    usual: float
    threshold: float
    weeks: int

    @property
    def burst(self) -> bool:
        return self.count >= self.threshold


def threshold(baseline: list[int], daily: list[int], s: BurstSettings) -> tuple[float, float]:
    """(usual level, count from which a window is a burst).

    ``baseline``: counts of the earlier windows; ``daily``: the day counts they are made of.
    Eight windows give a shaky spread, so the spread is also estimated from the days
    (√window_days · their robust spread): whichever is larger, and never below √median.
    """
    level, spread = robust_level([float(b) for b in baseline])
    _, day_spread = robust_level([float(d) for d in daily])
    spread = max(spread, math.sqrt(s.window_days) * day_spread, math.sqrt(level), 1.0)
    return level, max(float(s.min_alerts), level + s.k * spread, s.min_ratio * level)


def span_days(settings: InsightsSettings) -> int:
    """How far back this detector reads history."""
    s = settings.bursts
    return s.report_days + s.window_days * (s.baseline_weeks + 2)


def horizon(ctx: AccountContext) -> date:
    return ctx.today - timedelta(days=ctx.settings.bursts.report_days)


def detect(ctx: AccountContext) -> list[Event]:
    s = ctx.settings.bursts
    w = s.window_days
    today = ctx.today
    first_day = today - timedelta(days=span_days(ctx.settings))
    rows = ctx.history.rows(ctx.midnight(first_day), ctx.now + timedelta(seconds=1))
    known = [ctx.local_day(r.event.start) for r in rows if not r.event.rrule]
    if not known:
        return []
    coverage = max(min(known), first_day)  # the account's events start here (as far as we read)
    alerts = [ev for ev in live(rows, s.kinds) if start_dt(ev) <= ctx.now]
    per_day: Counter[date] = Counter()
    by_day: dict[date, list[Event]] = defaultdict(list)
    for ev in alerts:
        day = ctx.local_day(ev.start)
        per_day[day] += 1
        by_day[day].append(ev)

    def window(end: date) -> int:
        return sum(per_day[end - timedelta(days=i)] for i in range(w))

    def verdict(day: date) -> DayVerdict | None:
        baseline: list[int] = []
        for k in range(1, s.baseline_weeks + 1):
            end = day - timedelta(days=w * k)
            if end - timedelta(days=w - 1) < coverage:
                break
            baseline.append(window(end))
        if len(baseline) < s.min_history_weeks:
            return None
        daily = [per_day[day - timedelta(days=i)] for i in range(w, w * (len(baseline) + 1))]
        usual, limit = threshold(baseline, daily, s)
        return DayVerdict(count=window(day), usual=usual, threshold=limit, weeks=len(baseline))

    report_start = horizon(ctx)
    episodes: list[tuple[date, date, DayVerdict]] = []
    current: list[date] = []
    first_verdict: DayVerdict | None = None
    # start a window early, so a burst already running at report_start is seen as older
    for day in days_between(report_start - timedelta(days=w), today):
        v = verdict(day)
        if v is not None and v.burst:
            if not current:
                first_verdict = v
            current.append(day)
            continue
        if current and first_verdict is not None:
            episodes.append((current[0], current[-1], first_verdict))
        current = []
    if current and first_verdict is not None:
        episodes.append((current[0], current[-1], first_verdict))
    # a burst that dips below the threshold for a day or two and comes back is one burst
    merged: list[tuple[date, date, DayVerdict]] = []
    for episode in episodes:
        if merged and (episode[0] - merged[-1][1]).days <= w:
            merged[-1] = (merged[-1][0], episode[1], merged[-1][2])
        else:
            merged.append(episode)
    episodes = merged

    out = []
    for d1, d2, v in episodes:
        if d1 < report_start:
            continue  # history: kept as stored
        out.append(_flag(ctx, s, d1, d2, v, per_day, by_day))
    return out


def _flag(ctx: AccountContext, s: BurstSettings, d1: date, d2: date, v: DayVerdict,
          per_day: Counter[date], by_day: dict[date, list[Event]]) -> Event:
    w = s.window_days
    # the burst began on the latest day from which the alerts up to d1 alone reach the threshold
    first = d1
    total = 0
    for back in range(w):
        day = d1 - timedelta(days=back)
        total += per_day[day]
        if total >= v.threshold:
            first = day
            break
    # and lasted while days stayed above the usual daily rate (at least one alert)
    daily = max(1.0, s.min_ratio * v.usual / w)
    last = d1
    for day in days_between(d1, d2):
        if per_day[day] >= daily:
            last = day
    events = [ev for day in days_between(first, last) for ev in by_day.get(day, [])]
    count = len(events)
    days = (last - first).days + 1
    when = "on one day" if days == 1 else f"in {days} days"
    usual = fmt_number(v.usual)
    title = f"Alert burst: {count} alerts {when} (usually {usual} in a week)"
    groups: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        groups[ev.title].append(ev)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    lines = [
        f"{count} alerts from {fmt_day(first)} to {fmt_day(last)}." if days > 1 else f"{count} alerts on {fmt_day(first)}.",
        f"A usual {w}-day stretch has {usual} (median of the {v.weeks} before it); "
        f"{math.ceil(v.threshold)} or more counts as a burst.",
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
        attrs={"count": count, "usual": v.usual, "threshold": v.threshold,
               "first": first.isoformat(), "last": last.isoformat()},
    )


DETECTOR = Detector(NAME, lambda s: s.bursts.enabled, horizon, detect)
