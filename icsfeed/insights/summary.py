"""The Monday summary: last week at a glance, before the account manager's first call.

On each Monday (account time) an all-day event covers the seven days before it: events
per kind against the usual week (median of ``baseline_weeks`` weeks before), the flags
raised that week, and — on the current Monday only — the tickets open now. Its link opens
the month view of the feed showing it (a team's in a team feed). A summary made while its
Monday was the current one is kept as made once the next Monday comes (tickets open then
and all); earlier Mondays without one (a first run) are filled in for ``backfill_weeks``,
without the open-ticket line, which would not be true of then.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from operator import itemgetter

from icsfeed.config import BUILTIN_KINDS, AccountConfig, Config
from icsfeed.insights.base import (
    INSIGHT_KIND,
    VERDICT_ATTR,
    AccountContext,
    Detector,
    Reads,
    fmt_day,
    fmt_number,
    insight_event,
    iso_week,
    link_text,
    robust_level,
    settles,
    source_id,
    start_dt,
)
from icsfeed.insights.facts import COUNTED
from icsfeed.insights.inputs import CONTENT, END, KIND, RECURRING, SOURCE, START, TRAITS
from icsfeed.insights.settings import InsightsSettings
from icsfeed.insights.tickets import open_now, tickets_read
from icsfeed.model import Event
from icsfeed.store.facts import ALL_DAY, CANCELLED, OPEN_ENDED
from icsfeed.store.history import VersionRow

NAME = "summary"
#: the start of every summary's source id
SUMMARY_SOURCE = source_id(NAME, "")


def span_days(_config: Config, _account: AccountConfig, settings: InsightsSettings) -> int:
    """How far back this detector reads history."""
    s = settings.summary
    return 7 * (s.baseline_weeks + s.backfill_weeks + 2)


def this_monday(ctx: AccountContext) -> date:
    return ctx.today - timedelta(days=ctx.today.weekday())


def horizon(ctx: AccountContext) -> date:
    return this_monday(ctx) - timedelta(days=7 * ctx.settings.summary.backfill_weeks)


def _first(ctx: AccountContext) -> date:
    """The first day any summary made today counts."""
    s = ctx.settings.summary
    return this_monday(ctx) - timedelta(days=7 * (s.backfill_weeks + s.baseline_weeks + 1))


def reads(ctx: AccountContext) -> list[Reads]:
    """Every event (flags too) of the weeks the summaries count — of those but flags and
    tickets, only when, what kind and whether they count — and the open tickets in full."""
    return [Reads(ctx.midnight(_first(ctx)), ctx.midnight(this_monday(ctx)), blind=COUNTED), tickets_read(ctx)]


def detect(ctx: AccountContext) -> list[Event]:
    """This Monday's summary, and earlier ones recomputed unless one was made while current."""
    s = ctx.settings.summary
    monday = this_monday(ctx)
    stored = {ev.key: ev for ev in ctx.stored}
    pool = _pool(ctx, _first(ctx), monday)
    weeks = _Weeks(pool, monday) if pool is not None else None
    out = [_summary(ctx, monday, current=True, weeks=weeks, before=stored.get(_key(ctx, monday)))]
    for k in range(1, s.backfill_weeks + 1):
        past = monday - timedelta(days=7 * k)
        before = stored.get(_key(ctx, past))
        if before is not None and "open_tickets" in before.attrs:
            out.append(before)  # final: made during its own week, with the tickets open then
        else:
            out.append(_summary(ctx, past, current=False, weeks=weeks, before=before))
    return [ev for ev in out if ev is not None]


#: (start, end as the history cut it, local day, kind, the event or its (row id, content
#: hash, source of a flag)) of the events a summary counts: only the flags it lists are needed whole
Ref = Event | tuple[int, str, str | None]
Item = tuple[float, float, date, str, Ref]
Pool = list[Item]


def _start(item: Item) -> float:
    return item[0]


def _pool(ctx: AccountContext, first: date, monday: date) -> Pool | None:
    """The events of every summary from ``first`` to ``monday`` read once (each summary cuts
    its weeks from them as its own read of the history would), or None when the history
    does not hold that range in memory. From the account's versions when the refresh has
    them (:attr:`AccountContext.counted`): when, what kind and whether each counts, no row
    decoded."""
    start, end = ctx.midnight(first), ctx.midnight(monday)
    if not ctx.history.in_span(start, end):
        return None
    versions = ctx.counted() if ctx.counted is not None else None
    if versions is not None:
        return _counted_pool(ctx, versions, start.timestamp(), end.timestamp())
    return [(s, e, ctx.local_day(r.event.start), r.event.kind, r.event) for s, e, r in ctx.history.indexed(start, end)
            if r.event.status != "cancelled" and not r.event.rrule]


def _counted_pool(ctx: AccountContext, versions: list[VersionRow], lo: float, hi: float) -> Pool:
    """:func:`_pool` from the versions: the rows :meth:`History.indexed
    <icsfeed.insights.base.History.indexed>` gives for [lo, hi) (those in the history's span,
    each cut by its start and its end, or its start when it has none), but the cancelled and
    recurring ones, each with its local day (a date's own day)."""
    slo, shi = ctx.history.span
    tz = ctx.tz
    days: dict[tuple[float, int], date] = {}
    out: Pool = []
    for r in versions:
        s, traits = r[START], r[TRAITS]
        if traits & CANCELLED or r[RECURRING] or not (s < shi and r[END] >= slo):
            continue
        e = s if traits & OPEN_ENDED else r[END]
        if not (s < hi and e >= lo):
            continue
        all_day = traits & ALL_DAY
        day = days.get((s, all_day))  # (a date's own day; a time's local one)
        if day is None:
            day = days[(s, all_day)] = datetime.fromtimestamp(s, timezone.utc if all_day else tz).date()
        out.append((s, e, day, r[KIND], (r[0], r[CONTENT], r[SOURCE])))
    return out


def _key(ctx: AccountContext, monday: date) -> str:
    return f"{ctx.account.id}:{iso_week(monday)}"


class _Weeks:
    """A pool's items by week before this Monday (week 0 the last one), counted once for every
    summary a refresh makes: each sums its weeks, then takes out the few items of its days
    its own window test would not select (a date without an end on its first day, west of
    UTC, ends before its first midnight) and so counts what a pass over its own weeks of the
    pool would. Five summaries of nine weeks each: thirteen weeks counted once, not forty-five."""

    def __init__(self, pool: Pool, monday: date) -> None:
        self.pool = pool
        self.ordinals = [item[2].toordinal() for item in pool]
        last = monday.toordinal() - 1
        self.week = [(last - o) // 7 for o in self.ordinals]
        kinds = [item[3] for item in pool]
        #: (week, kind) -> how many of its events count (flags under their own kind: not counted)
        self.counts = Counter(zip(self.week, kinds, strict=True))
        #: (week, day ordinal) -> how many items fall on it
        self.days = Counter(zip(self.week, self.ordinals, strict=True))
        #: week -> its flags but summaries (positions in the pool), in the pool's order
        self.flags: dict[int, list[int]] = {}
        for i, kind in enumerate(kinds):
            if kind == INSIGHT_KIND and not _is_summary(pool[i][4]):
                self.flags.setdefault(self.week[i], []).append(i)

    def _outside(self, lo: float, hi: float, first: int, monday: int) -> list[int]:
        """Positions of the items on the days [first, monday) that the window [lo, hi) leaves
        out: starting at or after ``hi``, or ending before ``lo`` (within three days of them:
        no UTC offset is a day)."""
        pool, ordinals = self.pool, self.ordinals
        out = []
        for i in range(bisect_left(pool, hi, key=_start), bisect_left(pool, hi + 3 * 86400.0, key=_start)):
            if first <= ordinals[i] < monday:
                out.append(i)
        for i in range(bisect_left(pool, lo - 3 * 86400.0, key=_start), bisect_left(pool, lo, key=_start)):
            if pool[i][1] < lo and first <= ordinals[i] < monday:
                out.append(i)
        return out

    def of(self, j: int, weeks: int, lo: float, hi: float, first: date, monday: date,
           ) -> tuple[date, dict[int, Counter[str]], list[Ref]] | None:
        """For the summary ``j`` weeks before this Monday (its window [lo, hi), its days [first,
        monday), ``weeks`` + 1 weeks): the first day it counts, its counts by week (0: the week
        itself) and kind, its week's flags; None when it counts nothing."""
        out = self._outside(lo, hi, first.toordinal(), monday.toordinal())
        counts: dict[int, Counter[str]] = {k: Counter() for k in range(weeks + 1)}
        for (w, kind), n in self.counts.items():
            if j <= w <= j + weeks and kind != INSIGHT_KIND:
                counts[w - j][kind] = n
        left_out = set(out)
        gone: Counter[int] = Counter()
        for i in out:
            gone[self.ordinals[i]] += 1
            kind, k = self.pool[i][3], self.week[i] - j
            if kind != INSIGHT_KIND:
                counts[k][kind] -= 1
                if counts[k][kind] <= 0:
                    del counts[k][kind]
        found = [o for (w, o), n in self.days.items() if j <= w <= j + weeks and n > gone[o]]
        if not found:
            return None
        listed = [self.pool[i][4] for i in self.flags.get(j, ()) if i not in left_out]
        return date.fromordinal(min(found)), counts, listed


def _summary(ctx: AccountContext, monday: date, *, current: bool, weeks: _Weeks | None = None,
             before: Event | None = None) -> Event | None:
    """The summary of the week before ``monday``; ``before``, the stored one, when its verdict
    (the title: counts, flags, open tickets) is the same and its days are over (what
    :func:`settle <icsfeed.insights.base.settle>` would keep), without reading the flags it lists."""
    s = ctx.settings.summary
    week_start = monday - timedelta(days=7)
    first = monday - timedelta(days=7 * (s.baseline_weeks + 1))
    # counts[0]: the week itself; counts[k]: k weeks before it
    counts: dict[int, Counter[str]]
    listed: list[Ref]
    if weeks is not None:  # the history's window test of this summary's range, then its days
        lo, hi = ctx.midnight(first).timestamp(), ctx.midnight(monday).timestamp()
        j = (this_monday(ctx) - monday).days // 7
        made = weeks.of(j, s.baseline_weeks, lo, hi, first, monday)
        if made is None:
            return None  # nothing in the week or the weeks before: no history to sum up
        coverage, counts, listed = made
    else:
        rows = [r for r in ctx.history.rows(ctx.midnight(first), ctx.midnight(monday))
                if r.event.status != "cancelled" and not r.event.rrule]
        found: list[tuple[date, str, Ref]] = [(ctx.local_day(r.event.start), r.event.kind, r.event) for r in rows]
        days = [(day, kind, ev) for day, kind, ev in found if first <= day < monday]
        if not days:
            return None  # nothing in the week or the weeks before: no history to sum up
        coverage = min(map(itemgetter(0), days), default=week_start)
        counts = {k: Counter() for k in range(s.baseline_weeks + 1)}
        listed = []
        last = monday.toordinal() - 1  # (day numbers: no timedelta per event)
        for day, kind, ev in days:
            k = (last - day.toordinal()) // 7
            if kind != INSIGHT_KIND:
                counts[k][kind] += 1
            elif k == 0 and not _is_summary(ev):
                listed.append(ev)
    week = counts[0]
    baseline = [k for k in range(1, s.baseline_weeks + 1) if monday - timedelta(days=7 * (k + 1)) >= coverage]
    open_count = open_now(ctx, 0)[0] if current else None
    if before is not None and settles(before, _title(ctx, counts, baseline, len(listed), open_count), monday, ctx.today):
        return before
    flags = _events(ctx, listed)
    kinds = sorted({*week, *(kind for k in baseline for kind in counts[k])}, key=_kind_order)
    lines = [f"The week {fmt_day(week_start)} – {fmt_day(monday - timedelta(days=1))} at {ctx.account.name}"
             + (f", against the {_plural('week', len(baseline), 'the week')} before:" if baseline
                else " (no earlier weeks to compare with):")]
    usual_of: dict[str, float] = {}
    for kind in kinds:
        usual_of[kind], _ = robust_level([float(counts[k][kind]) for k in baseline])
        usual_text = f" (usually {fmt_number(usual_of[kind])})" if baseline else ""
        lines.append(f"• {_plural(kind, week[kind])}{usual_text}")
    if not kinds:
        lines.append("• no events")
    if flags:
        lines += ["", f"Flags raised ({len(flags)}):"]
        lines += [f"• {fmt_day(ctx.local_day(ev.start))}: {ev.title}" for ev in sorted(flags, key=start_dt)]
    attrs = {"week": iso_week(week_start), "counts": dict(week), "flags": len(flags)}
    if open_count is not None:
        open_count, listed_tickets = open_now(ctx, 15)
        attrs["open_tickets"] = open_count
        lines += ["", f"Open tickets now: {open_count}"]
        for row in listed_tickets:
            ev = row.event
            lines.append(f"• {ev.title}{link_text(ev.url)}")
        if open_count > 15:
            lines.append(f"• … and {open_count - 15} more")
    lines += ["", "The month at a glance (the link below):"]
    title = _title(ctx, counts, baseline, len(flags), open_count)
    attrs[VERDICT_ATTR] = title
    return insight_event(
        ctx, NAME, _key(ctx, monday), title, monday, monday, "\n".join(lines), severity="info",
        attrs=attrs,
    )


def _title(ctx: AccountContext, counts: dict[int, Counter[str]], baseline: list[int], flags: int,
           open_count: int | None) -> str:
    """A summary's title, its verdict: the week's alerts (against the usual) and tickets, the
    flags raised, and on the current Monday the tickets open now."""
    week = counts[0]
    usual_alerts = fmt_number(robust_level([float(counts[k]["alert"]) for k in baseline])[0]).removeprefix("about ")
    parts = [_plural("alert", week["alert"]) + (f" (usually {usual_alerts})" if baseline else ""),
             _plural("ticket", week["ticket"]), _plural("flag", flags)]
    if open_count is not None:
        parts.append(f"{_plural('ticket', open_count)} open")
    return f"Last week at {ctx.account.name}: " + ", ".join(parts)


def _is_summary(ref: Ref) -> bool:
    """Whether a pool's flag is a summary (never listed by another)."""
    if isinstance(ref, Event):
        return ref.attrs.get("insight") == NAME
    return (ref[2] or "").startswith(SUMMARY_SOURCE)



def _events(ctx: AccountContext, items: list[Ref]) -> list[Event]:
    """The events of a pool's items, in order (those given by version read at once)."""
    versions = [i[:2] for i in items if isinstance(i, tuple)]
    found = ctx.history.events(versions) if versions else {}
    return [i if isinstance(i, Event) else found[i[0]] for i in items if isinstance(i, Event) or i[0] in found]


def _kind_order(kind: str) -> tuple[int, str]:
    order = list(BUILTIN_KINDS)
    return (order.index(kind) if kind in order else len(order), kind)


NOUNS = {"maintenance": "maintenance window", "birthday": "server birthday", "certificate": "certificate event"}


def _plural(kind: str, n: int, one: str | None = None) -> str:
    """'1 alert', '3 maintenance windows'; ``one`` replaces '1 <noun>' ('the week')."""
    noun = NOUNS.get(kind, kind)
    if n == 1:
        return one or f"1 {noun}"
    return f"{n} {noun}s"


DETECTOR = Detector(NAME, lambda s: s.summary.enabled, horizon, detect, reads)
