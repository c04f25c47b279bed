"""The detector contract, and what every detector shares: the account, its clock and history.

A detector is a pure function of stored history and ``now``: ``detect(ctx) -> [Event]``
returns every flag it stands by for one account (kind ``insight``, all-day, stable keys).
:func:`icsfeed.insights.refresh_insights` writes that list as one complete "poll" of the
source ``insight-<detector>:<account>``, so a flag that is no longer returned becomes
STATUS:CANCELLED, and a flag returned again keeps its UID. Flags whose day is before the
detector's ``horizon`` are history: they are kept as stored, not recomputed. A flag whose
days have passed and whose ``verdict`` (an attribute: the facts it states, not its wording
of the evidence) is the stored one's is kept exactly as stored: see :func:`settle`.

Detectors never read the clock (``ctx.now`` is the only time) and never write the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import cached_property, lru_cache
from statistics import median
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from icsfeed.config import AccountConfig, Config
from icsfeed.insights.settings import InsightsSettings
from icsfeed.model import Event
from icsfeed.render import VIEW_LINK_ATTR
from icsfeed.store import EventRow, FeedQuery, Store, to_ts
from icsfeed.store.database import storable_text
from icsfeed.store.history import (
    HistoryRow,
    account_events,
    in_window,
    keyed_events,
    kind_events,
    source_events,
    wide_events,
)
from icsfeed.urls import safe_url

if TYPE_CHECKING:
    from icsfeed.insights.verdicts import TicketVerdicts

INSIGHT_KIND = "insight"
SOURCE_PREFIX = "insight-"
#: the attribute holding what a flag states (its days, counts, rhythm): while it stays the
#: same once the flag's days are over, the stored flag is kept byte for byte
VERDICT_ATTR = "verdict"

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def source_id(detector: str, account_id: str) -> str:
    """One source id per detector and account ("insight-bursts:acme"); ':' never occurs in config ids."""
    return f"{SOURCE_PREFIX}{detector}:{account_id}"


class History:
    """Stored events of one account, read once per refresh and shared by the detectors.

    Everything in ``[start, end)`` is read on first use (and, of the ``wide_kinds``, in
    ``wide`` too: the year of tickets the stale-ticket detector looks at), every flag of the
    account with it (:meth:`stored`); a request inside those ranges is answered from memory,
    anything else is its own query. :meth:`forget` re-reads the flags of one source (the
    ones a detector just wrote). Each row is decoded once (icsfeed/store/history.py).
    """

    def __init__(self, store: Store, account: AccountConfig, start: datetime, end: datetime, *,
                 wide: tuple[datetime, datetime] | None = None, wide_kinds: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.keys = frozenset(account.match_keys)
        #: the account key its flags are stored under
        self.own_key = account.id.strip().lower()
        self.start = start
        self.end = end
        self.span = (start.timestamp(), end.timestamp())
        self.wide = (wide[0].timestamp(), wide[1].timestamp()) if wide is not None else None
        self.wide_kinds = wide_kinds
        self._base: list[tuple[float, float, EventRow]] | None = None
        self._wide: list[HistoryRow] = []
        self._wide_only: list[HistoryRow] | None = None  # the wide kinds read alone, before the span
        self._decoded: dict[int, tuple[str, Event]] = {}  # flags read: id -> (content hash, event)
        #: every row the first read returned (the account's events of the span and wide kinds)
        self.read: list[HistoryRow] | None = None
        self._flags: list[HistoryRow] | None = None  # every insight row of the keys, by (start_ts, id)
        self._stored: tuple[list[HistoryRow], dict[str, list[HistoryRow]]] | None = None
        self._insights: list[tuple[float, float, EventRow]] | None = None
        self._other: dict[tuple[float, float, frozenset[str] | None], list[EventRow]] = {}
        #: local day of each start seen, shared by the detectors (five summaries, bursts and
        #: backups convert the same events)
        self.days: dict[datetime, date] = {}

    def _query(self, lo: float, hi: float, kinds: frozenset[str] | None) -> list[EventRow]:
        return self.store.query_events(FeedQuery(lo, hi, account_keys=self.keys, kinds=kinds))

    def _load(self) -> None:
        if self._base is not None:
            return
        rows = self.read = account_events(self.store, self.keys, self.span, exclude_kind=INSIGHT_KIND,
                                          wide=self.wide, wide_kinds=self.wide_kinds)
        lo, hi = self.span
        self._base = _indexed([r.row for r in rows if in_window(r, lo, hi)])
        if self.wide is not None:
            self._wide = [r for r in rows if r.kind in self.wide_kinds and in_window(r, *self.wide)]

    def load(self) -> None:
        """Read the span's rows and every flag now (what a facts digest cuts: insights/facts.py)."""
        self._load()
        self._load_flags()

    def flags(self) -> list[HistoryRow] | None:
        """Every flag of the account's keys as read (and re-read by :meth:`forget`), if read yet."""
        return self._flags

    def _load_flags(self) -> list[HistoryRow]:
        if self._flags is None:
            self._flags = self._keep(kind_events(self.store, self.keys | {self.own_key}, INSIGHT_KIND))
        return self._flags

    def stored(self) -> dict[str, list[HistoryRow]]:
        """The account's flags as stored (its own account key), by the source in their event."""
        flags = self._load_flags()
        if self._stored is not None and self._stored[0] is flags:  # (asked once per detector)
            return self._stored[1]
        out: dict[str, list[HistoryRow]] = {}
        for r in flags:
            if r.account_key == self.own_key and in_window(r, 0.0, 1e11):  # as a query of all time cuts
                out.setdefault(r.source, []).append(r)  # (the column: its event's source)
        self._stored = (flags, out)
        return out

    def _keep(self, rows: list[HistoryRow]) -> list[HistoryRow]:
        """Note each flag read by id and content hash (:meth:`events`); returns ``rows``."""
        self._decoded.update((r.row.id, (r.content_hash, r.row.event)) for r in rows)
        return rows

    def events(self, versions: list[tuple[int, str]]) -> dict[int, Event]:
        """Stored events by (row id, content hash): the ones read in this refresh with that
        content as read, the others read by id (the flags a summary lists, when it counts the
        rest from the versions: mostly the flags a detector just read as its own)."""
        out: dict[int, Event] = {}
        missing = []
        for i, content in versions:
            held = self._decoded.get(i)
            if held is not None and held[0] == content:
                out[i] = held[1]
            else:
                missing.append(i)
        if missing:
            out.update((i, row.event) for i, row in self.store.events_by_id(missing).items())
        return out

    def own(self, source: str) -> list[HistoryRow]:
        """The flags of one source as :meth:`stored` gives them, without reading every flag of
        the account when they are not read yet (a facts digest needs one detector's only)."""
        if self._flags is not None:
            return self.stored().get(source, [])
        return self._keep([r for r in source_events(self.store, source) if r.kind == INSIGHT_KIND
                           and r.account_key == self.own_key and in_window(r, 0.0, 1e11)])

    def own_keyed(self, source: str, keys: list[str]) -> list[HistoryRow]:
        """The flags of one source with these keys, as :meth:`own` gives them (the few a
        detector made again, when it stands by the others unread)."""
        return self._keep([r for r in keyed_events(self.store, source, keys) if r.kind == INSIGHT_KIND
                           and r.account_key == self.own_key and in_window(r, 0.0, 1e11)])

    def in_span(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end) is answered from the events read first (see :meth:`indexed`)."""
        return start.timestamp() >= self.span[0] and end.timestamp() <= self.span[1]

    def indexed(self, start: datetime, end: datetime,
                kinds: frozenset[str] | None = None) -> list[tuple[float, float, EventRow]]:
        """:meth:`rows` of a range inside the span, each with the (start, end) it was cut by:
        a detector asking for several ranges in it cuts them from one answer."""
        lo, hi = start.timestamp(), end.timestamp()
        assert lo >= self.span[0] and hi <= self.span[1], "indexed() answers the span only"
        self._load()
        assert self._base is not None
        if self._insights is None:
            slo, shi = self.span
            self._insights = _indexed([r.row for r in self._load_flags()
                                       if r.account_key in self.keys and in_window(r, slo, shi)])
        rows = self._base
        if kinds is None or INSIGHT_KIND in kinds:  # both lists are by start: keep it so
            rows = sorted(rows + self._insights, key=lambda r: r[0])
        # the store's window test: starts before the end, ends at or after the start
        return [(s, e, r) for s, e, r in rows if s < hi and e >= lo and (kinds is None or r.event.kind in kinds)]

    def rows(self, start: datetime, end: datetime, kinds: frozenset[str] | None = None) -> list[EventRow]:
        """Events overlapping [start, end) of the kinds (None: all), by start; cancelled ones too."""
        lo, hi = start.timestamp(), end.timestamp()
        if self.in_span(start, end):
            return [r for _, _, r in self.indexed(start, end, kinds)]
        if self.wide is not None and kinds is not None and kinds <= self.wide_kinds \
                and lo >= self.wide[0] and hi <= self.wide[1]:  # what the store's query would return
            if self._base is not None:
                rows = self._wide
            else:  # only these kinds are asked for (yet): the span's other rows are not read for them
                if self._wide_only is None:
                    self._wide_only = wide_events(self.store, self.keys, self.wide_kinds, self.wide,
                                                  exclude_kind=INSIGHT_KIND)
                rows = self._wide_only
            return [r.row for r in rows if r.kind in kinds and in_window(r, lo, hi)]
        key = (lo, hi, kinds)
        if key not in self._other:
            self._other[key] = self._query(lo, hi, kinds)
        return self._other[key]

    def forget(self, source: str, written: Sequence[Event] | None = None, known: Collection[str] = ()) -> None:
        """Re-read the flags of ``source`` on next use: a detector just stored flags the next
        one counts. What holds no insight (a year of tickets) is kept: only flags were written.
        With ``written`` (what a complete poll of the source wrote, the rest of its events
        named ``known``: :func:`split_unchanged <icsfeed.store.history.split_unchanged>`),
        only the rows that poll can have changed are read again: those of its events' keys,
        and the live ones it neither wrote nor named (its absence cancelled them)."""
        if self._flags is not None:
            keys = self.keys | {self.own_key}
            if written is None:
                redo = None
                fresh = source_events(self.store, source)
            else:
                redo = {storable_text(str(ev.key)) for ev in written}
                redo |= {r.key for r in self._flags if r.source == source and not r.gone and r.key not in known}
                fresh = keyed_events(self.store, source, redo) if redo else []
            fresh = self._keep([r for r in fresh if r.kind == INSIGHT_KIND and r.account_key in keys])
            kept = [r for r in self._flags if r.source != source or (redo is not None and r.key not in redo)]
            self._flags = sorted(kept + fresh, key=lambda r: (r.start_ts, r.row.id))
        self._insights = None
        self._other = {key: rows for key, rows in self._other.items()
                       if key[2] is not None and INSIGHT_KIND not in key[2]}


def _indexed(rows: list[EventRow]) -> list[tuple[float, float, EventRow]]:
    """(start, end, row) with the times as the store compares them."""
    out = []
    for row in rows:
        start = to_ts(row.event.start)
        out.append((start, to_ts(row.event.end) if row.event.end is not None else start, row))
    return out


@dataclass
class AccountContext:
    """What a detector sees: one account, its timezone, ``now``, history and settings."""

    config: Config
    settings: InsightsSettings
    account: AccountConfig
    now: datetime
    history: History
    #: the insight events this detector stored before (its own source id only)
    stored: list[Event] = field(default_factory=list)
    #: the first instant after ``now`` at which the detector's verdicts on the same rows may
    #: change (a run falls due, a ticket goes stale): see :meth:`until`
    changes_at: float = math.inf
    #: the account's row versions with their traits (insights/facts.py, AccountFacts.counted),
    #: for a detector that only counts (the summary); None, or None returned: from the history
    counted: Callable[[], list[Any] | None] | None = None
    #: the stale-ticket verdicts of this refresh (insights/verdicts.py), shared by the detectors
    #: that read tickets; None: each ticket is read and judged
    verdicts: TicketVerdicts | None = None
    #: keys of the detector's stored flags it stands by without having made them again (the
    #: tickets whose verdict held): the refresh keeps them as stored
    kept: set[str] = field(default_factory=set)

    def until(self, when: datetime) -> None:
        """Note that a comparison with ``now`` flips at ``when`` (later than now): until then,
        and within the same local day, the same rows give the same flags (insights/inputs.py)."""
        self.changes_at = min(self.changes_at, when.timestamp())

    @cached_property
    def tz(self) -> ZoneInfo:
        return account_zone(self.config, self.account)

    @property
    def today(self) -> date:
        return self.now.astimezone(self.tz).date()

    def midnight(self, day: date) -> datetime:
        """Start of a local day (DST-aware: a day may be 23 or 25 hours long)."""
        return datetime.combine(day, time(0), self.tz)

    def local_day(self, when: datetime | date) -> date:
        if not isinstance(when, datetime):
            return when
        day = self.history.days.get(when)
        if day is None:
            day = self.history.days[when] = when.astimezone(self.tz).date()
        return day

    def report_start(self, report_days: int | None) -> date:
        """The first day flags cover: ``report_days`` back, or by default the whole window the
        account's feed shows (a day more: the feed counts UTC days, flags local ones)."""
        back = report_days if report_days is not None else window_back_days(self.config, self.account) + 1
        return self.today - timedelta(days=back)


@dataclass(frozen=True)
class Reads:
    """Rows a detector reads: the account's events overlapping [start, end) (the store's window
    test) of ``kinds`` (None: every kind, its flags included). ``earliest``: of these only the
    first start of a row that does not recur (what bursts take the account's age from).
    ``blind``: the Event fields the detector never reads of these rows (flags aside: every
    field of a flag counts), so a change to only those does not run it (insights/facts.py)."""

    start: datetime
    end: datetime
    kinds: frozenset[str] | None = None
    earliest: bool = False
    blind: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Detector:
    """A registered detector: its name (source ids, config), switch, horizon and function,
    and which rows it reads besides its own flags (every row it could read: insights/inputs.py
    keeps its flags as they are while none of them changed)."""

    name: str
    enabled: Callable[[InsightsSettings], bool]
    #: flags starting before this day are history, kept as stored
    horizon: Callable[[AccountContext], date]
    detect: Callable[[AccountContext], list[Event]]
    #: None: not declared, so the detector runs on every refresh
    reads: Callable[[AccountContext], list[Reads]] | None = None
    #: ranges of its reads whose blind fields it reads after all, given its stored flags (the
    #: alerts a burst flag lists by title): digested in full (insights/facts.py)
    sees: Callable[[AccountContext, list[Event]], list[Reads]] | None = None


def window_back_days(config: Config, account: AccountConfig) -> int:
    """How many days back the account's feed shows (its own setting, else the feeds')."""
    return account.window_back_days if account.window_back_days is not None else config.feeds.window_back_days


def report_days(config: Config, account: AccountConfig, setting: int | None) -> int:
    """The days a detector's flags cover for this account (see AccountContext.report_start)."""
    return setting if setting is not None else window_back_days(config, account) + 1


def settle(fresh: list[Event], stored: list[Event], today: date) -> list[Event]:
    """Keep a flag as stored when its days are over and its verdict is the same.

    New runs or alerts move the evidence a flag quotes (a usual time a minute later, a
    share of weeks), not what it says happened; without this, flags weeks old would get a
    new SEQUENCE, and calendars would show them as updated, whenever a host ran again.
    """
    before = {ev.key: ev for ev in stored if ev.status != "cancelled"}
    out = []
    for ev in fresh:
        old = before.get(ev.key)
        verdict = ev.attrs.get(VERDICT_ATTR)
        out.append(old if old is not None and verdict is not None and settles(old, verdict, _last_day(ev), today)
                   else ev)
    return out


def settles(old: Event, verdict: str, last: date, today: date) -> bool:
    """Whether :func:`settle` keeps the stored ``old`` for a fresh flag of this verdict whose
    last day is ``last``: a detector that knows its verdict before its evidence (the summary)
    can stop there."""
    return old.status != "cancelled" and old.attrs.get(VERDICT_ATTR) == verdict \
        and last < today and _last_day(old) < today


def _last_day(ev: Event) -> date:
    end = ev.end if ev.end is not None else ev.start
    day = end.date() if isinstance(end, datetime) else end
    return day - timedelta(days=1) if ev.end is not None and ev.all_day else day


def account_zone(config: Config, account: AccountConfig) -> ZoneInfo:
    """The account's timezone (its own, else the feeds' default): days and weekdays are local."""
    return ZoneInfo(account.timezone or config.feeds.timezone)


def insight_event(ctx: AccountContext, detector: str, key: str, title: str, first: date, last: date,
                  detail: str, *, url: str | None = None, severity: str = "warning",
                  attrs: dict[str, Any] | None = None) -> Event:
    """An all-day ⚠️ event from ``first`` to ``last`` (inclusive) in the account's feed.

    It links ``url`` (an origin's page, published only if :func:`safe_url` accepts it) or
    else the month view of whichever feed shows it: no token is stored with a flag, so a
    team feed links the team's view and an account feed the account's (see render).
    """
    link = safe_url(url)
    extra = {} if link else {VIEW_LINK_ATTR: True}
    return Event(
        source=source_id(detector, ctx.account.id), key=key, kind=INSIGHT_KIND, title=title,
        start=first, end=last + timedelta(days=1), detail=detail, url=link,
        account=ctx.account.id, status="confirmed", severity=severity,
        attrs={"insight": detector, **(attrs or {}), **extra},
    )


def link_text(url: str | None) -> str:
    """`` — <url>`` to append to a line of a flag's text, or nothing: only a link
    :func:`safe_url` accepts is copied into the text people see (never ``javascript:``)."""
    link = safe_url(url)
    return f" — {link}" if link else ""


def live(rows: list[EventRow], kinds: list[str] | frozenset[str]) -> list[Event]:
    """Events of the given kinds that were not cancelled at the origin."""
    wanted = set(kinds)
    return [r.event for r in rows if r.event.kind in wanted and r.event.status != "cancelled"]


def start_dt(ev: Event) -> datetime:
    """An event's start as an aware datetime (a date counts from its midnight UTC)."""
    if isinstance(ev.start, datetime):
        return ev.start
    return datetime.combine(ev.start, time(0), timezone.utc)


def days_between(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last`` inclusive."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def robust_level(values: list[float]) -> tuple[float, float]:
    """Median and MAD scaled to a standard deviation (1.4826·MAD) of a small sample."""
    if not values:
        return 0.0, 0.0
    m = median(values)
    return m, 1.4826 * median(abs(v - m) for v in values)


@lru_cache(maxsize=4096)
def fmt_day(day: date) -> str:
    """'Sun 9 Nov 2026': unambiguous in every locale a reader may have (the same few days
    are in hundreds of flags of an account)."""
    return f"{WEEKDAYS[day.weekday()][:3]} {day.day} {day:%b %Y}"


def fmt_number(value: float) -> str:
    """A usual count as people say it: 'none', 'about 1', 'about 12' (never 'about 0')."""
    if value < 0.5:
        return "none"
    return f"about {max(1, math.floor(value + 0.5))}"


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"
