"""The size budget: every feed stays within what Google Calendar keeps of a subscription.

Google Calendar is reported to drop a subscribed feed's events beyond about 1 MB or about
1,000 events (see README.md, "Feed size budget"). A feed over its budget is fitted at render
time, in the poller, from the stored per-event fragments:

1. Roll up: the events of one kind, one account, one local day (the feed's month view
   timezone), one severity and one open-ness become one all-day VEVENT ("🚨 14 critical alerts
   on ACME Corp") listing them and linking that day of the feed's month view. The biggest
   groups go first, only as many as needed. Insight flags, maintenance windows (configurable:
   ``keep_individual``), open events (a firing alert, an open ticket) and recurring events
   stay individual.
2. Still over: the window back shrinks, step by step (never the part ahead), rolling up again
   at each step.
3. Still over at no days back: the kept kinds and open events roll up too, and last the
   events farthest ahead are left out. The feed says so in X-WR-CALDESC, /status shows it.

A rollup's UID comes from (feed, account, kind, day, severity, open); its content hash,
SEQUENCE and bytes are stored (``rollups`` table), so a re-render without changes decodes no
event and keeps the bytes, and a change bumps SEQUENCE. Because every VEVENT of a fitted feed
is of one kind, one severity and one open-ness, its filtered variants (icsfeed.feed_filters)
are exact subsets of its bytes: render saves the list of its parts next to it. The parts
(format 2, flat arrays) also name each VEVENT's event row and the version it was rendered
from (sequence, last modified), so that the next render copies the unchanged ones out of the
body instead of reading every fragment again (icsfeed.render.build_feed's ``previous``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from itertools import accumulate, compress, count, repeat
from operator import ge
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import icalendar
from icalendar.parser import Contentline

from icsfeed.config import BudgetConfig, Config
from icsfeed.feed_filters import LEVEL_NAMES, is_open
from icsfeed.render import (
    Listed,
    _categories_line,
    _escaped,
    _line,
    _organizer,
    _organizer_line,
    _stamp_text,
    _text_line,
    clean_text,
    clean_title,
    feed_secret,
    links_month_view,
    render_key,
    safe_url,
)
from icsfeed.routing import FeedSpec, view_url
from icsfeed.store import FeedQuery, PartAttrs, Store, StoredRollup

DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_MAX_EVENTS = 1000
DEFAULT_KEEP_INDIVIDUAL = ("insight", "maintenance")
#: days back the window shrinks to, in turn, while a feed is still over its budget
SHRINK_STEPS = (60, 30, 14, 7, 3, 1, 0)
#: events a rollup lists by name (the month view, which it links, shows them all)
ROLLUP_LIST_MAX = 20
#: longest title of a listed event
ROLLUP_TITLE_MAX = 100
#: room kept for the note in X-WR-CALDESC of a feed over its budget
NOTE_RESERVE = 600
#: bumped when a rollup's bytes change for the same events: stored rollups are stale
ROLLUP_FORMAT = 1
#: 2: flat arrays per VEVENT (length, kind, rank, open; and the event's row id and version)
PARTS_FORMAT = 2
#: a rollup's bytes besides its listed events (properties, the heading line), for estimates
ROLLUP_BASE_BYTES = 700
_SUMMARY = re.compile(rb"\r\nSUMMARY:((?:[^\r]|\r\n )*)")
_URL = re.compile(rb"\r\nURL[^:]*:((?:[^\r]|\r\n )*)")


@dataclass(frozen=True)
class Budget:
    max_bytes: int
    max_events: int
    keep_individual: frozenset[str]

    def fits(self, size: int, events: int) -> bool:
        return size <= self.max_bytes and events <= self.max_events

    def fits_plan(self, plan: _Plan) -> bool:
        return self.fits(plan.size, plan.events)


def feed_budget(config: Config, spec: FeedSpec) -> Budget:
    """The feed's own budget keys, else ``feeds.budget``'s, else the defaults."""
    own: BudgetConfig | None = None
    if spec.type == "account" and spec.id in config.accounts:
        own = config.accounts[spec.id].budget
    elif spec.type == "team" and spec.id in config.teams:
        own = config.teams[spec.id].budget

    def pick(name: str, default: Any) -> Any:
        for layer in (own, config.feeds.budget):
            value = getattr(layer, name) if layer is not None else None
            if value is not None:
                return value
        return default

    return Budget(max_bytes=pick("max_bytes", DEFAULT_MAX_BYTES), max_events=pick("max_events", DEFAULT_MAX_EVENTS),
                  keep_individual=frozenset(pick("keep_individual", DEFAULT_KEEP_INDIVIDUAL)))


def view_timezone(config: Config, spec: FeedSpec) -> str:
    """The timezone of the feed's month view: its days are the rollups' days."""
    if spec.type == "account" and spec.id in config.accounts:
        return config.accounts[spec.id].timezone or config.feeds.timezone
    return config.feeds.timezone


def budget_shape(config: Config, spec: FeedSpec) -> list[Any]:
    """What a feed's bytes depend on here (part of its render key: a new budget re-renders it)."""
    b = feed_budget(config, spec)
    return [ROLLUP_FORMAT, PARTS_FORMAT, b.max_bytes, b.max_events, sorted(b.keep_individual), view_timezone(config, spec)]


class KeptVevent(NamedTuple):
    """A VEVENT the feed shows as its previous body has it, by its position there (and its
    length): a re-render over the budget (icsfeed.refit) leaves it where it is, unread."""

    at: int
    length: int


@dataclass(frozen=True)
class FittedFeed:
    """A feed's bytes within its budget, the list of its VEVENTs for filtered variants, and a report.

    ``pieces``: set when some VEVENTs are :class:`KeptVevent` (``body`` is then empty): the
    head, each VEVENT's bytes or its place in the previous body, the tail, for the caller to
    splice into the stored segments or join."""

    body: bytes
    event_count: int
    parts: dict[str, Any]
    report: dict[str, Any]
    pieces: list[bytes | memoryview | KeptVevent] | None = None


#: (account key, kind, local day, severity rank, open)
GroupKey = tuple[str, str, date, "int | None", bool]
#: an end time that is no end (open-ended rows, ``inf``): always in every window
END_MAX = 2**62


@dataclass
class Columns:
    """An over-budget feed's events in feed order, one entry per event in each list: all the
    plan reads of them (no fragment, no decoded event). Kept with the fitted body (the
    ``b_`` lists of its parts), so that a re-render reads only the changed events' columns."""

    ids: list[int]
    #: the VEVENT's length, and what a rollup listing it takes (its title and link, :func:`listed_bytes`)
    lens: list[int]
    est: list[int]
    kinds: list[str]
    accounts: list[str]
    #: the local day (the feed's month view timezone) of the start, as a proleptic ordinal
    days: list[int]
    ranks: list[int | None]
    opens: list[bool]
    recurring: list[bool]
    #: the end in whole seconds, rounded down (window cuts are whole seconds); END_MAX: none
    ends: list[int]
    #: the row's SEQUENCE, and each rollup member's UID (by row id, read when a rollup needs it)
    seqs: list[int]
    uids: dict[int, str] = field(default_factory=dict)


def listed_bytes(fragment: bytes) -> int:
    """What listing this VEVENT in a rollup takes, for estimates: its title and link as
    measured in its own bytes, and the line's frame. (What ``_SUMMARY`` and ``_URL`` find,
    found by ``bytes.find``: a few times cheaper, and it is done for every event of a feed
    over its budget.)"""
    at = fragment.find(b"\r\nSUMMARY:")
    title = 60 if at < 0 else min(_value_length(fragment, at + 10), ROLLUP_TITLE_MAX + 8)
    at = fragment.find(b"\r\nURL")
    colon = -1 if at < 0 else fragment.find(b":", at + 5)
    return title + (0 if colon < 0 else _value_length(fragment, colon + 1)) + 12


def _value_length(fragment: bytes, start: int) -> int:
    """The length of the (folded) value from ``start``: up to the first CR that does not begin a fold."""
    end = fragment.find(b"\r", start)
    while end >= 0 and fragment.startswith(b"\r\n ", end):
        end = fragment.find(b"\r", end + 3)
    return (len(fragment) if end < 0 else end) - start


def end_seconds(end_ts: float) -> int:
    """:attr:`Columns.ends` of an end time."""
    return math.floor(end_ts) if -END_MAX < end_ts < END_MAX else (END_MAX if end_ts > 0 else -END_MAX)


@dataclass
class _Plan:
    #: positions in :class:`Columns`
    kept: list[int]
    rollups: dict[GroupKey, tuple[StoredRollup, list[int]]] = field(default_factory=dict)
    size: int = 0
    events: int = 0
    dropped: int = 0


def _report(budget: Budget, spec: FeedSpec, size: int, events: int) -> dict[str, Any]:
    return {"full_bytes": size, "full_events": events, "max_bytes": budget.max_bytes,
            "max_events": budget.max_events, "rollups": 0, "rolled_events": 0,
            "configured_back_days": spec.window_back_days, "window_back_days": spec.window_back_days,
            "shrunk": False, "left_out": 0}


def fit_listed(config: Config, store: Store, spec: FeedSpec, now: datetime, query: FeedQuery, head: bytes,
               tail: bytes, listed: Listed, *, secret: bytes | None = None, save: bool = True) -> FittedFeed:
    """:func:`fit_feed` for a feed listed by render's feed index (each event's fragment, kind,
    severity, open flag and version read together): a feed within its budget needs no query of
    its own, and its parts name each event and its version, so that the next render can copy
    the unchanged ones out of this body."""
    budget = feed_budget(config, spec)
    fragments = listed.fragments
    size = len(head) + len(tail) + sum(map(len, fragments))
    if not budget.fits(size, len(fragments)):
        versions = dict(zip(listed.ids, zip(listed.seqs, listed.mods, strict=True), strict=True))
        return fit_feed(config, store, spec, now, query, head, tail,
                        [(i, bytes(f)) for i, f in zip(listed.ids, fragments, strict=True)], secret=secret, save=save,
                        versions=versions)
    opens = listed.opens
    if None in opens:
        flags = _open_flags(store, [i for i, o in zip(listed.ids, opens, strict=True) if o is None], save)
        opens = [flags.get(i, True) if o is None else o for i, o in zip(listed.ids, opens, strict=True)]
    # kinds numbered in order of first appearance (dict.fromkeys keeps it): no loop in Python
    kinds = {kind: n for n, kind in enumerate(dict.fromkeys(listed.kinds))}
    body = b"".join([head, *fragments, tail])
    report = _report(budget, spec, size, len(fragments))
    report.update(bytes=len(body), events=len(fragments), over=False)
    parts = {"v": PARTS_FORMAT, "head": len(head), "kinds": list(kinds), "lens": list(map(len, fragments)),
             "kind": list(map(kinds.__getitem__, listed.kinds)), "rank": [-1 if r is None else r for r in listed.ranks],
             "open": [1 if o else 0 for o in opens], "ids": listed.ids, "seqs": listed.seqs, "mods": listed.mods}
    return FittedFeed(body=body, event_count=len(fragments), parts=parts, report=report)


def fit_spliced(config: Config, spec: FeedSpec, head: bytes, tail: bytes, body: bytes | None, parts: dict[str, Any],
                changed: dict[int, tuple[bytes, str, int | None, bool]], seqs: list[int],
                mods: list[int]) -> FittedFeed | None:
    """:func:`fit_listed` for a feed whose events are the previous body's, in the same order,
    with the VEVENTs at the positions of ``changed`` (position -> VEVENT, kind, severity rank,
    open) replaced: the body is the previous one's runs between them (a few hundred slices,
    not one per event), its parts the previous ones patched at those positions. None when
    the feed no longer fits its budget (fit_listed then rolls it up).

    ``body`` and ``parts`` are the previous body and parts (format 2, every event by its row
    id, VEVENT boundaries checked by the caller); ``seqs`` and ``mods`` the events' versions now.
    ``body`` None: the caller splices the body itself (its stored segments, render.py); the
    fitted feed then has the parts and report of the spliced body, and no bytes.
    """
    lens, kind_at, rank_at, open_at = list(parts["lens"]), list(parts["kind"]), list(parts["rank"]), list(parts["open"])
    kinds = {name: n for n, name in enumerate(parts["kinds"])}
    start = int(parts["head"])
    if body is None:
        for n in sorted(changed):
            fragment, kind, rank, is_open_ = changed[n]
            lens[n] = len(fragment)
            kind_at[n] = kinds.setdefault(kind, len(kinds))
            rank_at[n] = -1 if rank is None else rank
            open_at[n] = 1 if is_open_ else 0
        size = len(head) + sum(lens) + len(tail)
        budget = feed_budget(config, spec)
        if not budget.fits(size, len(lens)):
            return None
        report = _report(budget, spec, size, len(lens))
        report.update(bytes=size, events=len(lens), over=False)
        return FittedFeed(body=b"", event_count=len(lens), report=report, parts={
            "v": PARTS_FORMAT, "head": len(head), "kinds": list(kinds), "lens": lens, "kind": kind_at,
            "rank": rank_at, "open": open_at, "ids": list(parts["ids"]), "seqs": seqs, "mods": mods})
    old = memoryview(body)  # runs of the previous body joined without a copy of their own
    pieces: list[bytes | memoryview] = [head]
    at = start
    ends = list(accumulate(lens, initial=start))
    for n in sorted(changed):
        fragment, kind, rank, is_open_ = changed[n]
        pieces += [old[at:ends[n]], fragment]
        at = ends[n + 1]
        lens[n] = len(fragment)
        kind_at[n] = kinds.setdefault(kind, len(kinds))
        rank_at[n] = -1 if rank is None else rank
        open_at[n] = 1 if is_open_ else 0
    pieces += [old[at:ends[-1]], tail]
    size = sum(map(len, pieces))
    budget = feed_budget(config, spec)
    if not budget.fits(size, len(lens)):
        return None
    joined = b"".join(pieces)
    report = _report(budget, spec, size, len(lens))
    report.update(bytes=len(joined), events=len(lens), over=False)
    return FittedFeed(body=joined, event_count=len(lens), report=report, parts={
        "v": PARTS_FORMAT, "head": len(head), "kinds": list(kinds), "lens": lens, "kind": kind_at, "rank": rank_at,
        "open": open_at, "ids": list(parts["ids"]), "seqs": seqs, "mods": mods})


def fit_feed(config: Config, store: Store, spec: FeedSpec, now: datetime, query: FeedQuery, head: bytes,
             tail: bytes, fragments: Sequence[tuple[int, bytes]], *, secret: bytes | None = None,
             save: bool = True, versions: Mapping[int, tuple[int, int]] | None = None) -> FittedFeed:
    """The feed's bytes from its events' fragments (row id, VEVENT, in feed order), within its
    budget. ``save``: keep changed rollups and open flags (the render job; False: only read).
    ``versions``: each event's version (render's feed index), named in the parts (with the
    plan's columns, :class:`Columns`, for the next render: icsfeed.refit)."""
    attrs = store.query_part_attrs(query) if fragments else {}
    flags = _open_flags(store, [i for i, _ in fragments if i in attrs and attrs[i].is_open is None], save)
    budget = feed_budget(config, spec)
    size = len(head) + len(tail) + sum(len(f) for _, f in fragments)
    report = _report(budget, spec, size, len(fragments))
    if budget.fits(size, len(fragments)):
        pieces: list[_Piece] = []
        for i, fragment in fragments:
            a = attrs.get(i) or _UNKNOWN
            pieces.append((fragment, a.kind, a.severity_rank, a.is_open if a.is_open is not None else flags.get(i, True), i))
        return _assemble(head, tail, pieces, report, versions)
    fitter = _Fitter(config, store, spec, now, budget, len(head) + len(tail) + NOTE_RESERVE, secret)
    cols = fitter.columns(fragments, attrs, flags)
    unknown = {i for i, _ in fragments if i not in attrs}  # changed between the two reads: not kept as known
    by_position = [f for _, f in fragments]
    fitted = fitter.fit(cols, head, tail, report, lambda alone: [by_position[p] for p in alone], save, versions,
                        unknown)
    assert fitted is not None  # every fragment is at hand
    return fitted


#: the columns of an event whose row changed between the two reads: shown, never rolled up; the next render knows it
_UNKNOWN = PartAttrs(0, "", "", None, None, 0.0, float("inf"), True, 0, True)


#: the plan's columns kept in a fitted feed's parts (icsfeed.refit reads them back): row ids and
#: versions, then one list per :class:`Columns` field (kinds and accounts by number), and ``b_at``:
#: where each event's VEVENT is in the body (-1: rolled up or left out)
PLAN_LISTS = ("b_ids", "b_seqs", "b_mods", "b_lens", "b_est", "b_kind", "b_acct", "b_day", "b_rank", "b_open",
              "b_rec", "b_end", "b_at")


def plan_parts(cols: Columns, at: list[int], versions: Mapping[int, tuple[int, int]],
               unknown: Collection[int]) -> dict[str, Any]:
    """The ``b_`` entries of a fitted feed's parts: its plan's columns as of each row's version
    (an event in ``unknown`` gets a version no row has, so the next render reads it again)."""
    kinds = {k: n for n, k in enumerate(dict.fromkeys(cols.kinds))}
    accounts = {a: n for n, a in enumerate(dict.fromkeys(cols.accounts))}
    known = [versions.get(i, (-1, -1)) for i in cols.ids]
    mods = [v[1] for v in known]
    if unknown:
        mods = [-1 if i in unknown else m for i, m in zip(cols.ids, mods, strict=True)]
    return {"b_kinds": list(kinds), "b_accts": list(accounts), "b_ids": list(cols.ids), "b_seqs": [v[0] for v in known],
            "b_mods": mods, "b_lens": cols.lens, "b_est": cols.est, "b_kind": list(map(kinds.__getitem__, cols.kinds)),
            "b_acct": list(map(accounts.__getitem__, cols.accounts)), "b_day": cols.days,
            "b_rank": [-1 if r is None else r for r in cols.ranks], "b_open": [1 if o else 0 for o in cols.opens],
            "b_rec": [1 if r else 0 for r in cols.recurring], "b_end": cols.ends, "b_at": at}


def _open_flags(store: Store, unknown: list[int], save: bool) -> dict[int, bool]:
    """``is_open`` of rows written before the flag existed: worked out once (and kept, with ``save``)."""
    if not unknown:
        return {}
    flags = {i: is_open(row.event) for i, row in store.events_by_id(unknown).items()}
    if save:
        store.save_open_flags(flags.items())
    return flags


#: one VEVENT of a fitted feed: bytes (or its place in the previous body), kind, severity rank, open, and its
#: event's row id (None: a rollup)
_Piece = tuple["bytes | memoryview | KeptVevent", str, "int | None", bool, "int | None"]


def _assemble(head: bytes, tail: bytes, pieces: list[_Piece], report: dict[str, Any],
              versions: Mapping[int, tuple[int, int]] | None = None) -> FittedFeed:
    kinds: dict[str, int] = {}
    for _, kind, _, _, _ in pieces:
        if kind not in kinds:
            kinds[kind] = len(kinds)
    lens = [p[0].length if type(p[0]) is KeptVevent else len(p[0]) for p in pieces]
    kept = any(type(p[0]) is KeptVevent for p in pieces)
    body = b"" if kept else b"".join([head, *(p[0] for p in pieces), tail])  # type: ignore[misc]
    report = {**report, "bytes": len(head) + sum(lens) + len(tail), "events": len(pieces),
              "over": report["full_bytes"] > report["max_bytes"] or report["full_events"] > report["max_events"]}
    parts: dict[str, Any] = {"v": PARTS_FORMAT, "head": len(head), "kinds": list(kinds),
                             "lens": lens, "kind": [kinds[p[1]] for p in pieces],
                             "rank": [-1 if p[2] is None else p[2] for p in pieces], "open": [int(p[3]) for p in pieces]}
    if versions is not None:  # which event each VEVENT is, in which version (-1: a rollup, or not known)
        known = [versions.get(p[4]) if p[4] is not None else None for p in pieces]
        parts["ids"] = [p[4] if v is not None else -1 for p, v in zip(pieces, known, strict=True)]
        parts["seqs"] = [v[0] if v is not None else -1 for v in known]
        parts["mods"] = [v[1] if v is not None else -1 for v in known]
    return FittedFeed(body=body, event_count=len(pieces), parts=parts, report=report,
                      pieces=[head, *(p[0] for p in pieces), tail] if kept else None)


@dataclass(frozen=True)
class RollupFields:
    """What a rollup VEVENT says (its texts cleaned already)."""

    uid: str
    stamp: float
    day: date
    summary: str
    detail: str
    link: str | None
    categories: tuple[str, ...]
    sequence: int
    created: float
    color: str
    #: (email, name) with METHOD:PUBLISH, else None
    organizer: tuple[str, str] | None


def rollup_vevent(f: RollupFields) -> bytes:
    """A rollup's VEVENT, byte-identical to :func:`rollup_component` (...).to_ical(): the lines
    in icalendar's order, from render's line helpers (a few µs instead of a millisecond)."""
    stamp = _stamp_text(f.stamp)
    day = f"{f.day.year:04}{f.day.month:02}{f.day.day:02}"
    end = f.day + timedelta(days=1)
    out = [b"BEGIN:VEVENT\r\n", _line("SUMMARY", _escaped(f.summary)), _line("DTSTART;VALUE=DATE", day),
           _line("DTEND;VALUE=DATE", f"{end.year:04}{end.month:02}{end.day:02}"), _line("DTSTAMP", stamp),
           _line("UID", _escaped(f.uid)), _line("SEQUENCE", str(int(f.sequence))), _categories_line(f.categories),
           _text_line("CLASS", "PUBLIC"), _text_line("COLOR", f.color), _line("CREATED", _stamp_text(f.created)),
           _line("DESCRIPTION", _escaped(f.detail)), _line("LAST-MODIFIED", stamp)]
    if f.organizer is not None:
        out.append(_organizer_line(*f.organizer))
    out += [_text_line("STATUS", "CONFIRMED"), _text_line("TRANSP", "TRANSPARENT")]
    if f.link:
        out.append(_line("URL", f.link))
    out.append(b"END:VEVENT\r\n")
    return b"".join(out)


def rollup_component(f: RollupFields) -> icalendar.Event:
    """The rollup as an icalendar component: the reference :func:`rollup_vevent` is tested against."""
    stamp = datetime.fromtimestamp(f.stamp, timezone.utc)
    vevent = icalendar.Event()
    vevent.add("uid", f.uid)
    vevent.add("dtstamp", stamp)
    vevent.add("dtstart", f.day)
    vevent.add("dtend", f.day + timedelta(days=1))
    vevent.add("summary", f.summary)
    vevent.add("description", f.detail)
    if f.link:
        vevent.add("url", f.link)
    vevent.add("categories", list(f.categories))
    vevent.add("status", "CONFIRMED")
    vevent.add("sequence", f.sequence)
    vevent.add("created", datetime.fromtimestamp(f.created, timezone.utc))
    vevent.add("last-modified", stamp)
    vevent.add("color", f.color)
    vevent.add("transp", "TRANSPARENT")
    vevent.add("class", "PUBLIC")
    if f.organizer is not None:
        vevent.add("organizer", _organizer(*f.organizer))
    return vevent


def _note(report: dict[str, Any]) -> str:
    said = []
    if report["rollups"]:
        said.append(f"busy days rolled up ({report['rollups']:,} summaries of {report['rolled_events']:,} events)")
    if report["shrunk"]:
        said.append(f"showing {report['window_back_days']} of {report['configured_back_days']} days back")
    if report["left_out"]:
        said.append(f"{report['left_out']:,} events furthest ahead left out")
    return (f"Over the size budget of {report['max_events']:,} events and {report['max_bytes'] / 1e6:g} MB that "
            f"calendar apps keep: {'; '.join(said)}. The month view shows every event.")


def with_note(head: bytes, note: str) -> bytes:
    """The calendar header with ``note`` added to X-WR-CALDESC (re-escaped and folded by
    icalendar, whatever escaping the header's own text had), or as its own line if it has none."""
    match = re.search(rb"(?:^|\r\n)(X-WR-CALDESC[;:](?:[^\r]|\r\n[ \t])*)\r\n", head)
    if match is None:
        line = Contentline.from_parts("X-WR-CALDESC", icalendar.Parameters(), icalendar.vText(note)).to_ical()
        return head + line + b"\r\n"
    unfolded = re.sub(rb"\r\n[ \t]", b"", match.group(1)).decode("utf-8")
    name, params, value = Contentline(unfolded).parts()
    text = icalendar.vText.from_ical(value)
    line = Contentline.from_parts(name, params, icalendar.vText(f"{text} · {note}" if text else note)).to_ical()
    return head[:match.start(1)] + line + head[match.end(1):]


def _plural(label: str, count: int) -> str:
    """As the month view says it: "alert" / "alerts"; a few kinds take no s."""
    word = label.lower()
    return word if count == 1 or word.endswith("s") or word == "maintenance" else word + "s"


class _Fitter:
    """Plans one over-budget feed: which groups roll up, how far back it reaches."""

    def __init__(self, config: Config, store: Store, spec: FeedSpec, now: datetime, budget: Budget,
                 fixed: int, secret: bytes | None) -> None:
        self.config, self.store, self.spec, self.budget, self.fixed = config, store, spec, budget, fixed
        self.now_ts = float(int(now.timestamp()))
        self.midnight = datetime.combine(now.astimezone(timezone.utc).date(), time(0), timezone.utc)
        self.tz_name = view_timezone(config, spec)
        self.tz = ZoneInfo(self.tz_name)
        secret = secret if secret is not None else feed_secret(config, store)
        self.view = view_url(config, secret, spec) if secret is not None else None
        self.owners = config.account_by_key
        self.kind_order = {name: i for i, name in enumerate(config.kinds)}
        self.render_key = render_key(config)
        self.stored = store.rollups_of(spec.feed_id)
        self._built: dict[tuple[str, str], StoredRollup] = {}
        #: content hash by the group's rows and versions: the previous render's (refit), and this one's
        self.digests: dict[str, str] = {}
        self.used: dict[str, str] = {}
        self._rows: dict[int, Any] = {}
        self._ahead: list[tuple[GroupKey, list[int]]] = []
        self._ahead_at = 0

    def columns(self, fragments: Sequence[tuple[int, bytes]], attrs: Mapping[int, PartAttrs],
                flags: Mapping[int, bool]) -> Columns:
        """The plan's columns of a feed read whole (its fragments and their rows' columns)."""
        tz = self.tz
        got = [attrs.get(i) or _UNKNOWN for i, _ in fragments]
        days: dict[float, int] = {}
        for a in got:
            if a.start_ts not in days:
                days[a.start_ts] = datetime.fromtimestamp(a.start_ts, tz).toordinal()
        return Columns(
            ids=[i for i, _ in fragments], lens=[len(f) for _, f in fragments],
            est=[listed_bytes(f) for _, f in fragments], kinds=[a.kind for a in got],
            accounts=[a.account_key or "" for a in got], days=[days[a.start_ts] for a in got],
            ranks=[a.severity_rank for a in got],
            opens=[a.is_open if a.is_open is not None else flags.get(i, True) for (i, _), a in zip(fragments, got, strict=True)],
            recurring=[a.recurring for a in got], ends=[end_seconds(a.end_ts) for a in got],
            seqs=[a.sequence for a in got], uids={a.id: a.uid for a in got if a is not _UNKNOWN})

    def fit(self, cols: Columns, head: bytes, tail: bytes, report: dict[str, Any],
            fragments_of: Callable[[list[int]], list[bytes | memoryview | KeptVevent] | None], save: bool,
            versions: Mapping[int, tuple[int, int]] | None, unknown: Collection[int] = frozenset(),
            ) -> FittedFeed | None:
        """The plan made and the feed assembled: the individually shown VEVENTs by their
        positions (``fragments_of``; None: one cannot be had, nothing is saved), each rollup
        stored or made. ``unknown``: rows whose columns were not read as of their version
        (the next render reads them again)."""
        self.cols = cols
        plan, back = self.plan()
        member_of = {m: key for key, (_, members) in plan.rollups.items() for m in members}
        alone = [p for p in plan.kept if p not in member_of]
        fragments = fragments_of(alone)
        if fragments is None:
            return None
        if save:
            self.save(plan, back)
        shown = dict(zip(alone, fragments, strict=True))
        ids, kinds, ranks, opens = cols.ids, cols.kinds, cols.ranks, cols.opens
        pieces: list[_Piece] = []
        at = [-1] * len(ids)
        emitted: set[GroupKey] = set()
        for p in plan.kept:
            key = member_of.get(p)
            if key is None:
                at[p] = len(pieces)
                pieces.append((shown[p], kinds[p], ranks[p], bool(opens[p]), ids[p]))  # type: ignore[arg-type]
            elif key not in emitted:
                emitted.add(key)
                pieces.append((plan.rollups[key][0].vevent, key[1], key[3], key[4], None))
        report.update(rollups=len(plan.rollups), rolled_events=sum(len(m) for _, m in plan.rollups.values()),
                      window_back_days=back, shrunk=back < self.spec.window_back_days, left_out=plan.dropped)
        fitted = _assemble(with_note(head, _note(report)), tail, pieces, report, versions)
        if versions is not None:
            fitted.parts.update(plan_parts(cols, at, versions, unknown))
            fitted.parts["b_digests"] = {"context": self.context, "digests": self.used}
        return fitted

    def plan(self) -> tuple[_Plan, int]:
        """The widest window that fits: each step planned with the sizes of stored rollups and
        estimates for the others (no event decoded), then the step that fits made exactly. A
        step that cannot fit by its count of VEVENTs alone (each group rolled up) is passed by
        without a plan: the estimate would not fit either. Each step's events and that count
        come from C-level maps over the columns (a team feed has 100,000s of events)."""
        cols = self.cols
        n = len(cols.ids)
        keep = self.budget.keep_individual
        # each event's group as a number (the same tuple, the same number), then its key
        numbers: dict[tuple[Any, ...], int] = {}
        codes = list(map(numbers.setdefault, zip(cols.accounts, cols.kinds, cols.days, cols.ranks,
                                                 map(bool, cols.opens), strict=True), count()))
        day_of: dict[int, date] = {}
        key_of: dict[int, GroupKey] = {}
        protected_codes = set()
        for (account, kind, day, rank, open_), code in numbers.items():
            d = day_of.get(day)
            if d is None:
                d = day_of[day] = date.fromordinal(day)
            key_of[code] = (account, kind, d, rank, open_)
            if kind in keep or open_:
                protected_codes.add(code)
        ends = cols.ends
        if any(cols.recurring):  # never rolled up, in every window
            codes = [-1 if r else c for c, r in zip(codes, cols.recurring, strict=True)]
            ends = [END_MAX if r else e for e, r in zip(ends, cols.recurring, strict=True)]
            protected_codes.add(-1)
        self.codes, self.key_of, self.protected_codes = codes, key_of, protected_codes
        self.keys = [key_of.get(c) for c in codes]
        self.protected = [c in protected_codes for c in codes]
        backs = [self.spec.window_back_days, *(s for s in SHRINK_STEPS if s < self.spec.window_back_days)]
        plan = _Plan(kept=list(range(n)))
        for back in backs:
            cut = (self.midnight - timedelta(days=back)).timestamp()
            kept = list(compress(range(n), map(ge, ends, repeat(cut))))
            if self._fewest(kept) > self.budget.max_events or \
                    not self.budget.fits_plan(self.roll_up(kept, protect=True, exact=False)):
                plan = _Plan(kept=kept)
                continue
            plan = self.roll_up(kept, protect=True, exact=True)
            if self.budget.fits_plan(plan):
                return plan, back
        plan = self.roll_up(plan.kept, protect=False, exact=True)  # no days back left: the kept kinds too
        while not self.budget.fits(plan.size, plan.events) and plan.kept:
            self._drop_last(plan)
        return plan, backs[-1]

    def _fewest(self, kept: list[int]) -> int:
        """The fewest VEVENTs ``kept`` can become with the kept kinds individual: every group rolled up."""
        codes = list(map(self.codes.__getitem__, kept))
        protected = self.protected_codes
        alone = sum(map(protected.__contains__, codes))
        return alone + len(set(codes) - protected)

    def roll_up(self, kept: list[int], *, protect: bool, exact: bool) -> _Plan:
        """The biggest groups first, until the feed fits (``exact``: each chosen rollup made,
        else the size of its stored bytes while its content is the same, or an estimate)."""
        lens, keys, protected = self.cols.lens, self.keys, self.protected
        plan = _Plan(kept=kept, size=self.fixed + sum(map(lens.__getitem__, kept)), events=len(kept))
        groups: dict[GroupKey, list[int]] = {}
        for p in kept:
            key = keys[p]
            if key is None or (protect and protected[p]):
                continue
            members = groups.get(key)
            if members is None:
                groups[key] = [p]
            else:
                members.append(p)
        ranked = sorted((g for g in groups.items() if len(g[1]) >= 2),
                        key=lambda g: (-len(g[1]), -sum(map(lens.__getitem__, g[1])), repr(g[0])))
        self._ahead = ranked
        for at, (key, members) in enumerate(ranked):
            if self.budget.fits(plan.size, plan.events):
                break
            self._ahead_at = at
            rollup = self.rollup(key, members) if exact else self.known(key, members)
            size = len(rollup.vevent) if rollup is not None else self.estimate(members)
            saved = sum(map(lens.__getitem__, members)) - size
            if saved <= 0 and plan.events <= self.budget.max_events:
                continue  # only the size is over, and this one would not make it smaller
            if rollup is not None:
                plan.rollups[key] = (rollup, members)
            plan.size -= saved
            plan.events -= len(members) - 1
        return plan

    def _drop_last(self, plan: _Plan) -> None:
        """Leave out the VEVENT furthest ahead (a rolled-up day as a whole)."""
        last = plan.kept[-1]
        key = next((k for k, (_, members) in plan.rollups.items() if last in members), None)
        if key is None:
            plan.kept = plan.kept[:-1]
            plan.size -= self.cols.lens[last]
            plan.events -= 1
            plan.dropped += 1
            return
        rollup, members = plan.rollups.pop(key)
        gone = set(members)
        plan.kept = [p for p in plan.kept if p not in gone]
        plan.size -= len(rollup.vevent)
        plan.events -= 1
        plan.dropped += len(members)

    def group_key(self, key: GroupKey) -> str:
        account, kind, day, rank, open_ = key
        text = f"{self.spec.feed_id}\x00{account}\x00{kind}\x00{day.isoformat()}\x00{rank}\x00{int(open_)}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def _identity(self, key: GroupKey, members: list[int]) -> tuple[str, str]:
        """(group key, content hash): the content is what the members are (UID, SEQUENCE) and
        everything else the VEVENT shows. A group of the same rows in the same versions has
        the content hash it had (``digests``, kept in the parts): no UID read for it."""
        cols = self.cols
        ids, seqs, uids = cols.ids, cols.seqs, cols.uids
        gkey, name = self.group_key(key), self._name(key[0])
        memo = hashlib.sha256(f"{gkey}\x00{name}\x00{[(ids[m], seqs[m]) for m in members]}".encode(
            "utf-8", "surrogatepass")).hexdigest()[:32]
        digest = self.used.get(memo) or self.digests.get(memo)
        if digest is None:
            unknown = [ids[m] for m in members if ids[m] not in uids]
            if unknown:
                uids.update(self.store.uids_by_id(unknown))
            content = json.dumps([ROLLUP_FORMAT, self.render_key, self.view, name, self.tz_name,
                                  sorted((uids.get(ids[m], ""), seqs[m]) for m in members)])
            digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
        self.used[memo] = digest
        return gkey, digest

    @property
    def context(self) -> str:
        """What every content hash of this feed's rollups depends on besides the groups."""
        text = json.dumps([ROLLUP_FORMAT, self.render_key, self.view, self.tz_name])
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def known(self, key: GroupKey, members: list[int]) -> StoredRollup | None:
        """The group's rollup if it is stored (or made in this render) with this content."""
        gkey, digest = self._identity(key, members)
        stored = self.stored.get(gkey)
        if stored is not None and stored.content_hash == digest:
            return stored
        return self._built.get((gkey, digest))

    def estimate(self, members: list[int]) -> int:
        """About the bytes of a rollup not made yet: its fixed lines, and per listed event its
        title and link, measured in the event's own fragment (:func:`listed_bytes`)."""
        listed = sum(map(self.cols.est.__getitem__, members[:ROLLUP_LIST_MAX]))
        return ROLLUP_BASE_BYTES + len(self.view or "") * 2 + listed * 21 // 20  # escaping and folding

    def rollup(self, key: GroupKey, members: list[int]) -> StoredRollup:
        """The group's VEVENT: the stored one while its content is the same, else made now
        with SEQUENCE one higher than the stored one's."""
        gkey, digest = self._identity(key, members)
        name = self._name(key[0])
        stored = self.stored.get(gkey)
        if stored is not None and stored.content_hash == digest:
            return stored
        built = self._built.get((gkey, digest))
        if built is None:
            sequence = stored.sequence + 1 if stored is not None else 0
            created = stored.created if stored is not None else self.now_ts
            vevent = self._vevent(key, gkey, name, members, sequence, created)
            built = self._built[(gkey, digest)] = StoredRollup(gkey, key[2].isoformat(), digest, sequence, created,
                                                               self.now_ts, vevent)
        return built

    def _event_rows(self, ids: list[int]) -> dict[int, Any]:
        """The members' rows, read with those of the next groups that may be rolled up (one
        read for many rollups: a first render makes hundreds)."""
        rows = self._rows
        if any(i not in rows for i in ids):
            wanted = set(ids)
            for key, members in self._ahead[self._ahead_at:self._ahead_at + 32]:
                if self.known(key, members) is None:
                    wanted.update(self.cols.ids[m] for m in members)
            rows.update(self.store.events_by_id(sorted(i for i in wanted if i not in rows)))
        return rows

    def _name(self, account_key: str) -> str:
        if not account_key:
            return "no account"
        owner = self.owners.get(account_key)
        return owner.name if owner is not None else account_key

    def day_link(self, kind: str, day: date) -> str | None:
        """That day's cell in the feed's own month view (its dom id is the month view's)."""
        if self.view is None:
            return None
        return safe_url(f"{self.view}&month={day:%Y-%m}#d{day:%Y%m%d}k{self.kind_order.get(kind, 0)}")

    def _vevent(self, key: GroupKey, gkey: str, name: str, members: list[int], sequence: int,
                created: float) -> bytes:
        _account, kind_name, day, rank, open_ = key
        config = self.config
        kind = config.kinds.get(kind_name) or config.kinds["alert"]
        label = kind.label or kind_name.title()
        level = f"{LEVEL_NAMES[rank]} " if rank is not None else ""
        state = "open " if open_ and kind_name in ("alert", "ticket") else ""
        words = f"{len(members)} {state}{level}{_plural(label, len(members))} on {name}"
        link = self.day_link(kind_name, day)
        ids = [self.cols.ids[m] for m in members]
        rows = self._event_rows(ids)
        events = sorted((rows[i].event for i in ids if i in rows), key=lambda ev: (str(ev.start), ev.title))
        room = config.feeds.max_detail - len(link or "") - 200
        lines = [f"{words}, {day:%A %d %B %Y} ({self.tz_name}):"]
        used = len(lines[0])
        for listed, ev in enumerate(events):
            when = "all day" if ev.all_day else f"{ev.start.astimezone(self.tz):%H:%M}"  # type: ignore[union-attr]
            url = None if links_month_view(ev) else safe_url(ev.url)
            line = f"{when} {'(cancelled) ' if ev.status == 'cancelled' else ''}{clean_title(ev.title, ROLLUP_TITLE_MAX)}"
            line += f" — {url}" if url else ""
            if listed >= ROLLUP_LIST_MAX or used + len(line) > room:
                lines.append(f"… and {len(events) - listed} more in the month view")
                break
            lines.append(line)
            used += len(line) + 1
        detail = "\n".join(lines) + (f"\n\n{link}" if link else "")
        feeds = config.feeds
        return rollup_vevent(RollupFields(
            uid=f"rollup-{gkey}@{config.uid_host}", stamp=self.now_ts, day=day,
            summary=f"{kind.icon} {clean_title(words, feeds.max_title)}", detail=clean_text(detail, feeds.max_detail),
            link=link, categories=(label, *([LEVEL_NAMES[rank]] if rank is not None else [])), sequence=sequence,
            created=created, color=kind.color,
            organizer=(feeds.organizer_email, feeds.organizer_name) if feeds.method_publish else None))

    def save(self, plan: _Plan, back: int) -> None:
        """Keep the rollups of this plan that changed; forget those older than any window
        (nothing written when neither happens: the usual re-render)."""
        fresh = [r for r, _ in plan.rollups.values() if self.stored.get(r.group_key) is not r]
        oldest = (self.midnight - timedelta(days=self.spec.window_back_days + 2)).date().isoformat()
        if fresh or any(r.day < oldest for r in self.stored.values()):
            self.store.save_rollups(self.spec.feed_id, fresh, prune_before=oldest)
