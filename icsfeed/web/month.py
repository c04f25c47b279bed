"""The month grid of the customer view: which icons go on which day, in the account's timezone.

Pure functions over stored events, so the placement rules are tested without a browser:

* weeks run Monday to Sunday; the grid covers the whole weeks around the month, and days of
  the neighbouring months are shown (muted) with their events;
* an all-day event is on every date of ``[start, end)``; a timed event is on the day it
  starts, and on every day it touches when it lasts longer than a day (a weekend-long
  maintenance window); an event with no end yet is on its start day;
* recurring events (birthdays, ``FREQ=YEARLY``) are on each occurrence in the grid;
* cancelled events are left out, as calendar clients hide them.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from dateutil.rrule import rrulestr

from icsfeed.config import KindConfig
from icsfeed.model import Event
from icsfeed.render import clean_text, clean_title, links_month_view, safe_url
from icsfeed.store import EventRow

#: events listed in one popover; the count on the icon still counts them all
POPOVER_MAX = 20
#: longest detail shown in a popover (characters)
DETAIL_MAX = 600
#: a recurrence is expanded at most this many steps (a FREQ=SECONDLY rule must not hang a page)
RRULE_MAX_STEPS = 20_000
#: days a single long event is spread over at most
SPREAD_MAX_DAYS = 62

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class BadMonth(ValueError):
    """``?month=`` is not YYYY-MM in a sensible range."""


@dataclass(frozen=True)
class Occurrence:
    """One event as shown on one day."""

    title: str
    when: str
    detail: str
    url: str | None
    severity: str | None
    status: str
    sort_key: float


@dataclass
class KindCell:
    """The icon of one kind on one day, and the events behind it."""

    kind: str
    icon: str
    label: str
    dom_id: str
    day: date
    occurrences: list[Occurrence] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.occurrences)

    @property
    def shown(self) -> list[Occurrence]:
        return sorted(self.occurrences, key=lambda o: o.sort_key)[:POPOVER_MAX]

    @property
    def hidden_count(self) -> int:
        return max(0, self.count - POPOVER_MAX)

    @property
    def single_url(self) -> str | None:
        """The origin link the icon itself opens: only when the icon stands for one event."""
        return self.occurrences[0].url if self.count == 1 else None

    @property
    def aria_label(self) -> str:
        """What a screen reader says for the icon: "3 alerts on 14 November"."""
        return f"{self.count} {plural(self.label, self.count)} on {self.day.day} {self.day:%B}"


@dataclass
class Day:
    date: date
    in_month: bool
    today: bool
    cells: list[KindCell] = field(default_factory=list)


@dataclass
class KindSummary:
    kind: str
    icon: str
    label: str
    count: int  # occurrences in the month itself (not the muted neighbour days)


@dataclass
class MonthGrid:
    year: int
    month: int
    tz_name: str
    weeks: list[list[Day]]
    kinds: list[KindSummary]
    prev: str
    next: str
    this_month: str
    truncated: bool = False

    @property
    def title(self) -> str:
        return f"{calendar.month_name[self.month]} {self.year}"

    @property
    def total(self) -> int:
        return sum(k.count for k in self.kinds)


def plural(label: str, count: int) -> str:
    """"alert" / "alerts"; a few kinds do not take an s."""
    word = label.lower()
    if count == 1 or word.endswith("s") or word in ("maintenance",):
        return word
    return word + "s"


def parse_month(value: str | None, today: date) -> tuple[int, int]:
    """``2026-10`` -> (2026, 10); empty -> this month; anything else -> BadMonth."""
    if not value:
        return today.year, today.month
    match = _MONTH.match(value)
    year, month = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not (1970 <= year <= 2200 and 1 <= month <= 12):
        raise BadMonth("month must be a year and month between 1970-01 and 2200-12, like 2026-10")
    return year, month


def grid_days(year: int, month: int) -> tuple[date, date]:
    """First Monday on or before the 1st, and the day after the last Sunday shown."""
    first = date(year, month, 1)
    last = date(year, month, calendar.monthrange(year, month)[1])
    start = first - timedelta(days=first.weekday())
    end = last + timedelta(days=7 - last.weekday())
    return start, end


def grid_range(year: int, month: int, tz: tzinfo) -> tuple[float, float]:
    """The grid as epoch seconds in the given timezone, for the store query."""
    start, end = grid_days(year, month)
    return (datetime.combine(start, time(0), tz).timestamp(), datetime.combine(end, time(0), tz).timestamp())


def _shift(year: int, month: int, delta: int) -> str:
    index = year * 12 + (month - 1) + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def build_month(rows: Iterable[EventRow], kinds: dict[str, KindConfig], year: int, month: int,
                tz: tzinfo, tz_name: str, *, today: date, max_title: int = 255) -> MonthGrid:
    """Place each event's occurrences on the days of the grid, one cell per kind per day."""
    start, end = grid_days(year, month)
    days: dict[date, Day] = {}
    cursor = start
    while cursor < end:
        days[cursor] = Day(date=cursor, in_month=cursor.month == month, today=cursor == today)
        cursor += timedelta(days=1)
    order = {name: i for i, name in enumerate(kinds)}
    cells: dict[tuple[date, str], KindCell] = {}
    for row in rows:
        ev = row.event
        if ev.status == "cancelled":
            continue
        kind = kinds.get(ev.kind)
        if kind is None:
            continue
        for day, occurrence in _occurrences(ev, kind, tz, start, end, max_title):
            key = (day, ev.kind)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = KindCell(
                    kind=ev.kind, icon=kind.icon, label=kind.label or ev.kind.title(),
                    dom_id=f"d{day:%Y%m%d}k{order[ev.kind]}", day=day)
            cell.occurrences.append(occurrence)
    for (day, _kind), cell in sorted(cells.items(), key=lambda item: (item[0][0], order[item[0][1]])):
        days[day].cells.append(cell)
    ordered = [days[d] for d in sorted(days)]
    weeks = [ordered[i:i + 7] for i in range(0, len(ordered), 7)]
    summary = []
    for name, kind in kinds.items():
        count = sum(c.count for (d, k), c in cells.items() if k == name and d.month == month)
        present = any(k == name for (_d, k) in cells)
        if count or present:
            summary.append(KindSummary(kind=name, icon=kind.icon, label=kind.label or name.title(), count=count))
    return MonthGrid(year=year, month=month, tz_name=tz_name, weeks=weeks, kinds=summary,
                     prev=_shift(year, month, -1), next=_shift(year, month, 1),
                     this_month=f"{today.year:04d}-{today.month:02d}")


def _occurrences(ev: Event, kind: KindConfig, tz: tzinfo, start: date, end: date,
                 max_title: int) -> Iterator[tuple[date, Occurrence]]:
    for first, last_excl, when, sort_key in _spans(ev, kind, tz, start, end):
        occurrence = Occurrence(
            title=clean_title(ev.title, max_title), when=when,
            detail=clean_text(ev.detail or "", DETAIL_MAX),
            # a flag's "month view" link is the page it is shown on (and an old one's held a token)
            url=None if links_month_view(ev) else safe_url(ev.url),
            severity=clean_title(ev.severity, 40) if ev.severity else None,
            status=ev.status, sort_key=sort_key)
        day = max(first, start)
        stop = min(last_excl, end, first + timedelta(days=SPREAD_MAX_DAYS))
        while day < stop:
            yield day, occurrence
            day += timedelta(days=1)


def _spans(ev: Event, kind: KindConfig, tz: tzinfo, start: date,
           end: date) -> Iterator[tuple[date, date, str, float]]:
    """(first day, day after the last, time text, sort key) of each occurrence in the grid."""
    if ev.rrule:
        yield from _recurring_spans(ev, kind, tz, start, end)
        return
    yield _span(ev.start, ev.end, kind, tz)


def _span(ev_start: datetime | date, ev_end: datetime | date | None, kind: KindConfig,
          tz: tzinfo) -> tuple[date, date, str, float]:
    if not isinstance(ev_start, datetime):
        last = ev_end if isinstance(ev_end, date) and not isinstance(ev_end, datetime) and ev_end > ev_start else ev_start + timedelta(days=1)
        days = (last - ev_start).days
        when = "all day" if days == 1 else f"all day, {ev_start:%d %b} – {last - timedelta(days=1):%d %b}"
        sort_key = datetime.combine(ev_start, time(0), timezone.utc).timestamp()
        return ev_start, last, when, sort_key
    local = ev_start.astimezone(tz)
    first = local.date()
    if not isinstance(ev_end, datetime) or ev_end <= ev_start:
        when = f"{local:%H:%M}" + (", no end reported yet" if ev_end is None else "")
        return first, first + timedelta(days=1), when, ev_start.timestamp()
    local_end = ev_end.astimezone(tz)
    if local_end.date() == first:
        when = f"{local:%H:%M}–{local_end:%H:%M}"
    else:
        when = f"{local:%d %b %H:%M} – {local_end:%d %b %H:%M}"
    if ev_end - ev_start > timedelta(days=1):  # long events show on each day they touch
        last_day = (local_end - timedelta(microseconds=1)).date()
        return first, last_day + timedelta(days=1), when, ev_start.timestamp()
    return first, first + timedelta(days=1), when, ev_start.timestamp()


def _recurring_spans(ev: Event, kind: KindConfig, tz: tzinfo, start: date,
                     end: date) -> Iterator[tuple[date, date, str, float]]:
    """Occurrences of a recurring event that touch the grid; a broken rule shows the first one."""
    if isinstance(ev.start, datetime):
        dtstart: datetime = ev.start
        length = (ev.end - ev.start) if isinstance(ev.end, datetime) and ev.end > ev.start else timedelta(0)
        window_start = datetime.combine(start, time(0), tz) - max(length, timedelta(0))
        window_end = datetime.combine(end, time(0), tz)
    else:
        dtstart = datetime.combine(ev.start, time(0))
        days = (ev.end - ev.start).days if isinstance(ev.end, date) and ev.end > ev.start else 1
        length = timedelta(days=days)
        window_start = datetime.combine(start, time(0)) - length
        window_end = datetime.combine(end, time(0))
    try:
        rule = rrulestr(ev.rrule or "", dtstart=dtstart)
        occurrences = []
        for steps, occ in enumerate(rule):
            if occ >= window_end or steps >= RRULE_MAX_STEPS:
                break
            if occ > window_start:
                occurrences.append(occ)
    except (ValueError, TypeError, OverflowError):
        yield _span(ev.start, ev.end, kind, tz)
        return
    for occ in occurrences:
        if isinstance(ev.start, datetime):
            occ_end = occ + length if length else (None if ev.end is None else occ)
            yield _span(occ, occ_end, kind, tz)
        else:
            day = occ.date()
            yield _span(day, day + length, kind, tz)
