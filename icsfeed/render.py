"""Render: stored events -> .ics bytes, when events change (never per request).

Each event's VEVENT is built with ``icalendar`` (escaping, folding, CRLF) once per change
and kept in the store as a fragment; a feed is the calendar header plus the fragments of its
events. A re-render starts from the feed's previous body: the VEVENTs of events whose row is
in the same version are copied out of it, so it costs the changed events plus a byte copy,
and a feed request costs a lookup. The rules every client needs are in DESIGN.md's Render section.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import re
import threading
import time
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from functools import cached_property, lru_cache
from itertools import accumulate, compress, pairwise, repeat
from operator import add, ne, sub
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import icalendar
from icalendar.parser import Contentline, Parameters

from icsfeed import __version__
from icsfeed.config import CSS_COLORS, Config, KindConfig
from icsfeed.model import Event
from icsfeed.routing import FeedSpec, all_feeds, view_url
from icsfeed.store import EventRow, FeedQuery, Store, StoreError
from icsfeed.store.codec import UndecodableBlob
from icsfeed.store.feeds import StoredSegments, micros
from icsfeed.store.segments import Segments, lens_check, splice, split
from icsfeed.tokens import load_secret_key
from icsfeed.urls import safe_url

if TYPE_CHECKING:  # (the size budget imports this module)
    from icsfeed.budget import FittedFeed, KeptVevent

log = logging.getLogger(__name__)

PRODID = f"-//icsfeed//icsfeed {__version__}//EN"
#: control characters, noncharacters and U+FEFF (a byte-order mark that leaked into text)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BIDI_CONTROL = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
#: what clean_text changes in ASCII text (CR, and _CONTROL's ASCII part): text without it is clean
_ASCII_UNCLEAN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: what TEXT escaping changes (icalendar's _escape_char): text without it is its own escaped form
_TO_ESCAPE = re.compile(r"[\\;,\r\n]")
#: an insight's attribute meaning "link the month view of the feed that shows me"
VIEW_LINK_ATTR = "view_link"
#: bumped when a VEVENT's bytes change for the same event and settings: stored fragments are stale
FRAGMENT_FORMAT = 3


class RenderedFeed:
    """A rendered feed: its bytes (joined when first asked for: a re-render that spliced
    segments has none of its own), ETag, the body as segments (what the store keeps,
    icsfeed.store.segments), its parts for filtered variants and its size budget report."""

    __slots__ = ("_body", "etag", "event_count", "parts", "report", "segments")

    def __init__(self, body: bytes | None, etag: str, event_count: int, parts: dict[str, Any] | None = None,
                 report: dict[str, Any] | None = None, segments: Segments | None = None,
                 raw_of: Callable[[str], bytes] | None = None) -> None:
        self._body: bytes | Callable[[], bytes] | None = body
        if body is None:  # the segments' bytes: new ones in ``raw``, the others raw_of(digest)
            assert segments is not None and raw_of is not None
            self._body = _joiner(segments, raw_of)
        self.etag, self.event_count, self.parts, self.report = etag, event_count, parts, report
        self.segments = segments

    @property
    def body(self) -> bytes:
        if callable(self._body):
            self._body = self._body()
        return self._body  # type: ignore[return-value]


def _joiner(segments: Segments, raw_of: Callable[[str], bytes]) -> Callable[[], bytes]:
    def join() -> bytes:
        return b"".join([segments.head, *(segments.raw.get(d) or raw_of(d) for d in segments.digests),
                         segments.tail])
    return join


def _rendered(fitted: Any) -> RenderedFeed:
    """The RenderedFeed of a fitted body (icsfeed.budget): cut into segments, its ETag theirs."""
    assert getattr(fitted, "pieces", None) is None, "a refit's kept VEVENTs are spliced or joined first"
    segments = split(fitted.body)
    if fitted.parts is not None:
        segments.check = lens_check(fitted.parts.get("lens"))
    return RenderedFeed(body=fitted.body, etag=segments.etag, event_count=fitted.event_count, parts=fitted.parts,
                        report=fitted.report, segments=segments)


def render_key(config: Config) -> str:
    """Hash of the settings that shape a VEVENT: a fragment made under others is stale."""
    shape = {
        "kinds": {n: k.model_dump(mode="json") for n, k in sorted(config.kinds.items())},
        "feeds": config.feeds.model_dump(mode="json", include={"method_publish", "organizer_name",
                                                                "organizer_email", "max_title", "max_detail"}),
        "host": config.uid_host, "version": __version__, "format": FRAGMENT_FORMAT,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:32]


def feed_render_key(config: Config, spec: FeedSpec, *, base: str | None = None, view: str | None = None) -> str:
    """Hash of everything a feed's bytes depend on besides its events (``base``: render_key(config);
    ``view``: the feed's month view URL, which its flags link: a new token re-renders the feed)."""
    from icsfeed.budget import budget_shape

    shape = [base or render_key(config), spec.name, spec.color, config.feeds.refresh_interval.total_seconds(), view,
             budget_shape(config, spec)]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:32]


# --- text hygiene ------------------------------------------------------------------------

def clean_text(value: str, limit: int) -> str:
    """Text a calendar client can take: no control characters or lone surrogates, bounded."""
    if value.isascii() and _ASCII_UNCLEAN.search(value) is None:  # the usual case: only the bound applies
        return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"
    return _clean_text_general(value, limit)


def _clean_text_general(value: str, limit: int) -> str:
    """:func:`clean_text` of any text (its shortcut gives the same for clean ASCII)."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = _CONTROL.sub(lambda m: "\n" if m.group() in "\x0b\x0c\x85" else "", value)
    if not value.isascii():  # ASCII has no surrogates and is already NFC
        value = _SURROGATE.sub("\ufffd", value)
        value = unicodedata.normalize("NFC", value)
    if len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return value


def clean_title(value: str, limit: int) -> str:
    """One line (SUMMARY is shown in a cell), bidi overrides isolated so they cannot spill."""
    if value.isascii() and value.isprintable():  # the usual case: what clean_text would do to it, no more
        if len(value) > limit * 2:
            value = value[: limit * 2 - 1].rstrip() + "…"
        one_line = " ".join(value.split())
        if len(one_line) > limit:
            one_line = one_line[: limit - 1].rstrip() + "…"
        return one_line or "(untitled)"
    return _clean_title_general(value, limit)


def _clean_title_general(value: str, limit: int) -> str:
    """:func:`clean_title` of any text (its shortcut gives the same for printable ASCII)."""
    one_line = " ".join(clean_text(value, limit * 2).split())
    one_line = _BIDI_CONTROL.sub("", one_line)
    return clean_text(one_line, limit) or "(untitled)"


def links_month_view(ev: Event) -> bool:
    """Whether the event's link is "the month view of the feed that shows it" (insight flags).

    Such a link is never stored with a token: each feed gets its own (see :func:`build_feed`),
    so a team feed never carries an account's token. Flags stored before this rule carry the
    account's view URL itself (``…/view/<id>?token=…``); they are recognised by that shape.
    """
    if ev.kind != "insight":  # insights.base.INSIGHT_KIND (insights import this module)
        return False
    if ev.attrs.get(VIEW_LINK_ATTR):
        return True
    parts = urlsplit(ev.url or "")
    return parts.path.startswith("/view/") and "token=" in parts.query


# --- one event ---------------------------------------------------------------------------

def _utc(value: datetime) -> datetime:
    if value.tzinfo is timezone.utc:
        return value
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before the first UTC moment a datetime holds
        raise ValueError(f"{value.isoformat()} is outside the range of UTC times") from None


_LAST_MOMENT = datetime.max.replace(microsecond=0, tzinfo=timezone.utc)


def _whole_second(value: datetime) -> datetime:
    return value.replace(microsecond=0) if value.microsecond else value


def _bounds(row: EventRow, kind: KindConfig) -> tuple[datetime | date, datetime | date]:
    """DTSTART and a DTEND after it. An open end near the year 9999 stops at the last
    second a datetime holds; an event with no room left for an end raises ValueError."""
    ev = row.event
    if ev.all_day:
        start = ev.start if not isinstance(ev.start, datetime) else ev.start.date()
        if ev.end is not None and ev.end > start:  # type: ignore[operator]
            return start, ev.end
        if start >= date.max:
            raise ValueError(f"all-day event on {start.isoformat()} leaves no day for its end")
        return start, start + timedelta(days=1)
    start = _whole_second(_utc(ev.start))  # type: ignore[arg-type]
    end = _whole_second(_utc(ev.end)) if isinstance(ev.end, datetime) else None
    if end is None or end <= start:  # open, or shorter than the second DTEND can say
        end = start + kind.duration if start <= _LAST_MOMENT - kind.duration else _LAST_MOMENT
    if ev.ongoing:  # still firing: up to its last sighting, rounded up (see model.seen_until)
        end = max(end, _whole_second(_utc(ev.seen)))  # type: ignore[arg-type]
    if end <= start:
        raise ValueError(f"event at {start.isoformat()} has no room for an end")
    return start, end


#: what SUMMARY says after the kind's icon while an event is going on (text as well as an
#: emoji: some clients show no emoji); alerts fire, anything else is ongoing
FIRING_MARKER = "🔥 FIRING: "
ONGOING_MARKER = "⏳ ONGOING: "


def ongoing_marker(ev: Event) -> str:
    """The SUMMARY marker of an event still going on (:attr:`Event.ongoing`), else ""."""
    if not ev.ongoing:
        return ""
    return FIRING_MARKER if ev.kind == "alert" else ONGOING_MARKER


class _Texts(NamedTuple):
    """What a VEVENT shows, cleaned once for both renderers (a tuple: made once per event)."""

    start: datetime | date
    end: datetime | date
    summary: str
    detail: str
    url: str | None
    categories: tuple[str, ...]


def _texts(config: Config, row: EventRow, kind: KindConfig, view: str | None) -> _Texts:
    ev = row.event
    feeds = config.feeds
    start, end = _bounds(row, kind)
    url = safe_url(view if links_month_view(ev) else ev.url)
    detail = clean_text(ev.detail or "", feeds.max_detail).strip()  # libical drops a blank DESCRIPTION
    if ev.end is None and not ev.all_day:
        detail = f"{detail}\n(ongoing: no end reported yet)".strip()
    if url:  # Google and Outlook hide URL; the link must be in the text people see
        detail = f"{detail}\n\n{url}" if detail else url
    return _Texts(start, end, f"{kind.icon} {ongoing_marker(ev)}{clean_title(ev.title, feeds.max_title)}",
                  detail, url, _categories(kind.label or ev.kind.title(), ev.severity))


@lru_cache(maxsize=4096)
def _categories(label: str, severity: str | None) -> tuple[str, ...]:
    """The kind's label and the cleaned severity (a few values, repeated across events)."""
    return (label, clean_title(severity, 40)) if severity else (label,)


@lru_cache(maxsize=4096)
def _stamp(ts: float) -> datetime:
    """A stored timestamp as a whole-second UTC datetime (a poll stamps many events alike)."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(microsecond=0)


def vevent_component(config: Config, row: EventRow, view: str | None = None) -> icalendar.Event:
    """One VEVENT as an icalendar component: the reference :func:`render_vevent` is tested
    against byte for byte, and what a request-time renderer would build (the benchmark baseline)."""
    ev = row.event
    kind = config.kinds.get(ev.kind) or config.kinds["alert"]
    feeds = config.feeds
    t = _texts(config, row, kind, view)
    modified = _stamp(row.last_modified)
    vevent = icalendar.Event()
    vevent.add("uid", row.uid)
    vevent.add("dtstamp", modified)
    vevent.add("dtstart", t.start)
    vevent.add("dtend", t.end)
    vevent.add("summary", t.summary)
    if t.detail:
        vevent.add("description", t.detail)
    if t.url:
        vevent.add("url", icalendar.vUri(t.url))  # URI is URL's default type: no VALUE=URI (node-ical)
    vevent.add("categories", list(t.categories))
    vevent.add("status", ev.status.upper())
    vevent.add("sequence", row.sequence)
    vevent.add("created", _stamp(row.created))
    vevent.add("last-modified", modified)
    vevent.add("color", kind.color)
    vevent.add("transp", "TRANSPARENT")
    vevent.add("class", "PUBLIC")
    if feeds.method_publish:
        vevent.add("organizer", _organizer(feeds.organizer_email, feeds.organizer_name))
    if ev.rrule:
        vevent.add("rrule", icalendar.vRecur.from_ical(ev.rrule))
    if ev.alarm_before:
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", t.summary)
        alarm.add("trigger", -ev.alarm_before)
        vevent.add_component(alarm)
    return vevent


def _organizer(email: str, name: str) -> icalendar.vCalAddress:
    organizer = icalendar.vCalAddress(f"mailto:{email}")
    organizer.params["CN"] = icalendar.vText(name)
    return organizer


# The fast path. Building a Component per event costs about a millisecond (type lookups,
# parameter objects, folding every line character by character); a 10,000-event feed took
# 12 s. render_vevent writes the same lines in the same order from icalendar's own value
# types (vText escapes, vCategory joins, vRecur/vDuration format) and its own folding
# (Contentline.to_ical), skipping only what cannot change the bytes: folding a line shorter
# than icalendar's fold width, and re-making lines that are the same for every event.
# tests/test_hostile.py checks it is byte-identical to vevent_component(...).to_ical().

#: icalendar folds a content line when it reaches this many octets; shorter ones are unchanged
_FOLD_AT = 75


def _line(name: str, value: str) -> bytes:
    """``NAME:value`` with CRLF, folded as icalendar folds it when long."""
    data = f"{name}:{value}".encode()
    if len(data) < _FOLD_AT:
        return data + b"\r\n"
    return fold_utf8(data) + b"\r\n"


def fold_ascii(line: str) -> str:
    """icalendar's folding of an ASCII line (see :func:`fold_utf8`)."""
    return fold_utf8(line.encode("ascii")).decode("ascii")


def fold_utf8(data: bytes) -> bytes:
    """icalendar's folding (``Contentline.to_ical``) of a UTF-8 line, byte for byte: pieces
    of at most 74 octets that never split a character, and never end in an escape's first
    character (``\\`` or ``^``), which then starts the next piece. By slices of the bytes
    instead of a character at a time: microseconds instead of most of a millisecond for a
    long line (every SUMMARY with a kind's emoji is one that is not ASCII)."""
    pieces = []
    start, width = 0, _FOLD_AT - 1
    while len(data) - start > width:
        end = start + width
        while data[end] & 0xC0 == 0x80:  # a continuation byte: the character starts before
            end -= 1
        if data[end - 1] in b"\\^":
            end -= 1
        pieces.append(data[start:end])
        start = end
    pieces.append(data[start:])
    return b"\r\n ".join(pieces)


def _lib_line(name: str, value: object) -> bytes:
    """A content line made entirely by icalendar (parameters and all): for the rare ones."""
    params = getattr(value, "params", None) or Parameters()
    return Contentline.from_parts(name, params, value).to_ical() + b"\r\n"


@lru_cache(maxsize=4096)
def _text_line(name: str, value: str) -> bytes:
    """A TEXT line whose value repeats across events (status, colour, categories)."""
    return _line(name, icalendar.vText(value).to_ical().decode("utf-8"))


@lru_cache(maxsize=4096)
def _categories_line(categories: tuple[str, ...]) -> bytes:
    return _line("CATEGORIES", icalendar.vCategory(list(categories)).to_ical().decode("utf-8"))


class _Text(icalendar.vText):
    """icalendar's TEXT value without its parameter object, which costs more than the
    escaping itself; only the inherited escaping (``to_ical``) is used."""

    __slots__ = ()

    def __new__(cls, value: str) -> _Text:
        self = str.__new__(cls, value)
        self.encoding = "utf-8"
        return self


def _escaped(value: str) -> str:
    if _TO_ESCAPE.search(value) is None:  # nothing icalendar's escaping would change
        return value
    return _Text(value).to_ical().decode("utf-8")


def _when(value: datetime | date) -> tuple[str, str]:
    """(parameters, value) of a DTSTART/DTEND: a UTC DATE-TIME, or a DATE (the formats of
    icalendar's vDatetime/vDate, whose constructors cost more than the event's other lines)."""
    if isinstance(value, datetime):
        return "", (f"{value.year:04}{value.month:02}{value.day:02}"
                    f"T{value.hour:02}{value.minute:02}{value.second:02}Z")
    return ";VALUE=DATE", f"{value.year:04}{value.month:02}{value.day:02}"


@lru_cache(maxsize=4096)
def _stamp_text(ts: float) -> str:
    return _when(_stamp(ts))[1]


@lru_cache(maxsize=64)
def _organizer_line(email: str, name: str) -> bytes:
    return _lib_line("ORGANIZER", _organizer(email, name))


@lru_cache(maxsize=1024)
def _rrule_line(rrule: str) -> bytes:
    """An RRULE line (recurring events of one source mostly share a rule)."""
    return _lib_line("RRULE", icalendar.vRecur.from_ical(rrule))


@lru_cache(maxsize=256)
def _trigger_line(before: timedelta) -> bytes:
    return _lib_line("TRIGGER", icalendar.vDDDTypes(-before))


def render_vevent(config: Config, row: EventRow, view: str | None = None) -> bytes:
    """One VEVENT (escaped, folded, CRLF), byte-identical to vevent_component(...).to_ical().

    ``view``: the month view URL of the feed being rendered, for events that link it
    (:func:`links_month_view`); without it they link nothing.
    """
    ev = row.event
    kind = config.kinds.get(ev.kind) or config.kinds["alert"]
    feeds = config.feeds
    t = _texts(config, row, kind, view)
    modified = _stamp_text(row.last_modified)
    start_params, start = _when(t.start)
    end_params, end = _when(t.end)
    out = [b"BEGIN:VEVENT\r\n",
           _line("SUMMARY", _escaped(t.summary)),
           _line("DTSTART" + start_params, start),
           _line("DTEND" + end_params, end),
           _line("DTSTAMP", modified),
           _line("UID", _escaped(row.uid)),
           _line("SEQUENCE", str(int(row.sequence)))]
    if ev.rrule:
        out.append(_rrule_line(ev.rrule))
    out += [_categories_line(t.categories),
            _text_line("CLASS", "PUBLIC"),
            _text_line("COLOR", kind.color),
            _line("CREATED", _stamp_text(row.created))]
    if t.detail:
        out.append(_line("DESCRIPTION", _escaped(t.detail)))
    out.append(_line("LAST-MODIFIED", modified))
    if feeds.method_publish:
        out.append(_organizer_line(feeds.organizer_email, feeds.organizer_name))
    out += [_text_line("STATUS", ev.status.upper()), _text_line("TRANSP", "TRANSPARENT")]
    if t.url:
        out.append(_line("URL", t.url))
    if ev.alarm_before:
        out += [b"BEGIN:VALARM\r\n", _text_line("ACTION", "DISPLAY"),
                _line("DESCRIPTION", _escaped(t.summary)),
                _trigger_line(ev.alarm_before), b"END:VALARM\r\n"]
    out.append(b"END:VEVENT\r\n")
    return b"".join(out)


# --- one feed --------------------------------------------------------------------------------

def calendar_header(config: Config, spec: FeedSpec) -> tuple[bytes, bytes]:
    """The VCALENDAR lines before and after the events."""
    return _calendar_header(spec.name, spec.type, spec.color, config.feeds.method_publish,
                            config.feeds.refresh_interval)


@lru_cache(maxsize=4096)
def _calendar_header(name: str, feed_type: str, color: str, method_publish: bool,
                     refresh_interval: timedelta) -> tuple[bytes, bytes]:
    """:func:`calendar_header` of what it depends on, made once (an icalendar Calendar built
    per render cost ≈ 0.4 ms of CPU, ≈ 1% of a 1% re-render of 10,000 events)."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    if method_publish:
        cal.add("method", "PUBLISH")
    title = f"{name} · icsfeed" if feed_type == "account" else f"{name} (team) · icsfeed"
    # icalendar knows no value type for these names and would write them unescaped: a comma
    # splits X-WR-CALDESC into values (sabre/vobject), a name's `;` and `\` come back doubled
    for prop, text in (("name", title), ("x-wr-calname", title),
                       ("x-wr-caldesc", f"Alerts, backups, tickets and maintenance for {name}")):
        cal.add(prop, icalendar.vText(text))
    refresh = icalendar.vDuration(refresh_interval)
    cal.add("refresh-interval", refresh, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", icalendar.vDuration(refresh_interval))
    cal.add("color", color)
    cal.add("x-apple-calendar-color", CSS_COLORS[color].upper())
    text = cal.to_ical()
    head, _, tail = text.rpartition(b"END:VCALENDAR")
    return head, b"END:VCALENDAR" + tail


def fragments_for(config: Config, store: Store, rows: list[EventRow]) -> list[bytes]:
    """The VEVENT bytes of each row: the stored fragment, or rendered now and stored."""
    key = render_key(config)
    out: list[bytes] = []
    fresh: list[tuple[int, bytes, str]] = []
    for row in rows:
        if row.vevent is not None and row.vevent_key == key:
            out.append(row.vevent)
            continue
        fragment = _render_or_skip(config, row)
        if fragment is not None:
            out.append(fragment)
            if not links_month_view(row.event):  # without a feed, such an event links nothing: not kept
                fresh.append((row.id, fragment, key))
    store.save_fragments(fresh)
    return out


def fragment_renderer(config: Config) -> Callable[[EventRow], tuple[bytes, str] | None]:
    """What the store calls to render an event as it writes it (see Store.apply_poll), so a
    poll's new and changed events are rendered once and written once."""
    key = render_key(config)

    def render(row: EventRow) -> tuple[bytes, str] | None:
        if links_month_view(row.event):  # rendered per feed, with its own view link (build_feed)
            return None
        fragment = _render_or_skip(config, row)
        return None if fragment is None else (fragment, key)

    return render


def _render_or_skip(config: Config, row: EventRow, view: str | None = None) -> bytes | None:
    try:
        return render_vevent(config, row, view)
    except Exception as exc:  # one unrenderable event must not take the feed down
        log.warning("cannot render event %s (%s/%s): %s: %s; it is left out of the feed",
                    row.uid, row.event.source, str(row.event.key)[:80], type(exc).__name__, exc)
        return None


def view_fragment_key(key: str, view: str) -> str:
    """The key of a stored fragment that links this month view (``key``: render_key): such
    a fragment is one feed's, and only that feed's render finds it."""
    return hashlib.sha256(f"{key}\0{view}".encode()).hexdigest()[:32]


def feed_secret(config: Config, store: Store) -> bytes | None:
    """The token key, for the month view links in feeds; None when it cannot be read
    (``store``: on a server database every process shares the key kept there)."""
    try:
        return load_secret_key(config.data_dir, store)
    except (OSError, StoreError) as exc:
        log.warning("cannot read the secret key (%s): feeds are rendered without month view links", exc)
        return None


class PreviousBody:
    """A feed's stored body and the parts render saved with it (icsfeed.budget's ``parts``):
    where a re-render starts from (see :func:`build_feed`). ``stored``: the body as its stored
    segments, joined only when some path needs the whole body (``body``; the splice by
    segments reads only the segments it changes)."""

    def __init__(self, body: bytes | None, parts: dict[str, Any], stored: StoredSegments | None = None) -> None:
        assert body is not None or stored is not None
        self._body = body
        self.parts = parts
        self.stored = stored

    @property
    def body(self) -> bytes:
        """The whole body (raises UndecodableBlob for a stored segment that cannot be read)."""
        if self._body is None:
            assert self.stored is not None
            self._body = self.stored.body()
        return self._body

    @property
    def joined(self) -> bool:
        """Whether the whole body is at hand already."""
        return self._body is not None

    @property
    def size(self) -> int:
        if self._body is None and self.stored is not None:
            return self.stored.segments.size
        return len(self.body)

    def endswith(self, suffix: bytes) -> bool:
        if self._body is None and self.stored is not None and len(self.stored.segments.tail) >= len(suffix):
            return self.stored.segments.tail.endswith(suffix)
        return self.body.endswith(suffix)


@dataclass
class Listed:
    """A feed's events in feed order, one entry per event in each list: the VEVENT's bytes
    (a slice of the previous body, or a fragment), and what the budget and the parts need."""

    ids: list[int] = field(default_factory=list)
    fragments: list[bytes] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    #: true or false as the backend gives it (0/1 on SQLite); None: not known yet (rows written before the flag)
    opens: list[bool | int | None] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    #: last modified in whole microseconds (an int: cheap to store and to compare; -1: matches none)
    mods: list[int] = field(default_factory=list)


def _vevent_bounds(parts: dict[str, Any]) -> list[int]:
    """Where a previous body's VEVENTs lie, as its parts list them: the head's end, then each
    VEVENT's end."""
    return list(accumulate(parts["lens"], initial=parts["head"]))


class _VersionList:
    """A version list a previous render was made from: the row ids, sequences and
    last-modified µs of its events in feed order (:func:`_versions_since` works the next one
    out from it), with the parts that stamp it."""

    ids: list[int]
    seqs: list[int]
    mods: list[int]
    parts: dict[str, Any]

    @cached_property
    def positions(self) -> dict[int, int]:
        """Row id -> position in the list."""
        return dict(zip(self.ids, range(len(self.ids)), strict=True))


class _Reusable(_VersionList):
    """The VEVENTs of a previous body by row id, with the version each was rendered from."""

    def __init__(self, previous: PreviousBody) -> None:
        self.previous = previous
        self.valid = False
        self._placed: bool | None = False
        parts = previous.parts
        try:
            if parts.get("v") != 2:
                return
            lens, ids, seqs, mods = parts["lens"], parts["ids"], parts["seqs"], parts["mods"]
            kind, rank, open_, kind_names = parts["kind"], parts["rank"], parts["open"], parts["kinds"]
            head = parts["head"]
            if not (isinstance(head, int) and len(lens) == len(ids) == len(seqs) == len(mods) == len(kind)
                    == len(rank) == len(open_)):
                return
            ends = _vevent_bounds(parts)
        except (KeyError, TypeError):
            return
        if ends[-1] + len(_TAIL) != previous.size or not previous.endswith(_TAIL):
            return
        self.parts = parts
        self.bounds = ends  # the head's end, then each VEVENT's
        self.ids, self.seqs, self.mods = ids, seqs, mods
        self.kind, self.rank, self.open, self.kind_names = kind, rank, open_, kind_names
        self.valid = bool(ids) and max(ids) >= 0
        self._placed = None

    @property
    def body(self) -> bytes:
        return self.previous.body

    @property
    def starts(self) -> list[int]:
        """Where each VEVENT starts in the previous body."""
        return self.bounds[:-1]

    @property
    def ends(self) -> list[int]:
        """Where each VEVENT ends in the previous body."""
        return self.bounds[1:]

    @property
    def placed(self) -> bool:
        """Every VEVENT starts and ends where the parts say: then each can be copied unchecked
        (checked over the whole body, when first asked)."""
        if self._placed is None:
            self._placed = _boundaries_hold(self.body, self.bounds)
        return self._placed

    def take(self, listed: Listed) -> list[int]:
        """Fill in each listed event's VEVENT (and kind, severity, open flag) out of the previous
        body where it was rendered from the same version of its row; returns the positions of
        the others. A VEVENT the parts misplace is never taken."""
        if not self.placed:
            return self._take_checked(listed)
        # each event's position in the previous body, where its version is the same there: a
        # dict lookup per event (no Python loop), then list comprehensions over those positions
        versions = dict(zip(zip(self.ids, self.seqs, self.mods, strict=True), range(len(self.ids)), strict=True))
        if min(self.mods, default=0) < 0 or min(self.ids, default=0) < 0:  # rollups, versions not known
            versions = {v: n for v, n in versions.items() if v[0] >= 0 and v[2] >= 0}
        at = list(map(versions.get, zip(listed.ids, listed.seqs, listed.mods, strict=True)))
        body, starts, ends = self.body, self.starts, self.ends
        old_kinds, old_kind, old_rank, old_open = self.kind_names, self.kind, self.rank, self.open
        listed.fragments = [None if n is None else body[starts[n]:ends[n]] for n in at]  # type: ignore[misc]
        listed.kinds = ["" if n is None else old_kinds[old_kind[n]] for n in at]
        listed.ranks = [None if n is None or old_rank[n] < 0 else old_rank[n] for n in at]
        listed.opens = [None if n is None else old_open[n] for n in at]
        return [k for k, n in enumerate(at) if n is None]

    def _take_checked(self, listed: Listed) -> list[int]:
        """:meth:`take` checking each VEVENT's boundaries (some parts do not fit the body)."""
        positions = {i: n for n, i in enumerate(self.ids) if i >= 0}
        old_seqs, old_mods, starts, ends, body = self.seqs, self.mods, self.starts, self.ends, self.body
        old_kinds, old_kind, old_rank, old_open = self.kind_names, self.kind, self.rank, self.open
        startswith, endswith = body.startswith, body.endswith
        fragments, kinds, ranks, opens = listed.fragments, listed.kinds, listed.ranks, listed.opens
        others = []
        for at, (row_id, sequence, mod) in enumerate(zip(listed.ids, listed.seqs, listed.mods, strict=True)):
            n = positions.get(row_id)
            if n is not None and old_seqs[n] == sequence and old_mods[n] == mod and mod >= 0:
                start, end = starts[n], ends[n]
                if startswith(_BEGIN, start) and endswith(_END, start, end):
                    fragments.append(body[start:end])
                    kinds.append(old_kinds[old_kind[n]])
                    rank = old_rank[n]
                    ranks.append(None if rank < 0 else rank)
                    opens.append(old_open[n])
                    continue
            others.append(at)
            fragments.append(None)  # type: ignore[arg-type]
            kinds.append("")
            ranks.append(None)
            opens.append(None)
        return others


_BEGIN, _END = b"BEGIN:VEVENT\r\n", b"END:VEVENT\r\n"


def _boundaries_hold(body: bytes, ends: list[int]) -> bool:
    """Whether the VEVENTs that ``ends`` (the head's end, then each VEVENT's) cut out of
    ``body`` each start with a BEGIN:VEVENT line and end with an END:VEVENT line: one slice
    per boundary around it, compared at once."""
    if len(ends) < 2:
        return True
    inner_ends = ends[1:-1]
    inner = b"".join(map(body.__getitem__, map(slice, map(sub, inner_ends, repeat(12)),
                                                map(add, inner_ends, repeat(14)))))
    return (body.startswith(_BEGIN, ends[0]) and body.endswith(_END, 0, ends[-1])
            and inner == (_END + _BEGIN) * (len(ends) - 2))


_TAIL = b"END:VCALENDAR\r\n"


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a feed is built: a build allocates a few
    objects per event (rows, decoded events, fragments), none of them in a reference cycle,
    and the collector's passes over them cost 15-20% of a render's CPU. Renders are serial
    (one per process at a time); the collector runs again when the feed is built."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def build_feed(config: Config, store: Store, spec: FeedSpec, now: datetime,
               kinds: Iterable[str] | None = None, *, key: str | None = None,
               save_fragments: bool = True, secret: bytes | None = None,
               previous: PreviousBody | None = None) -> RenderedFeed:
    """A feed's bytes and ETag (optionally only some kinds).

    Stored fragments are joined as they are; only events without a current fragment are
    decoded and rendered (and, with ``save_fragments``, stored for the next render; the web
    layer, which only reads, passes False). Events that link the month view never have a
    stored fragment (a fragment is shared by every feed that shows the event): they are
    rendered for each feed with its own view URL (``secret``: the token key, read when not
    given). They are a few flags per account, so this costs no query of its own. The feed is
    then fitted to its size budget (icsfeed.budget: rollups, a shorter window), which also
    lists its parts for filtered variants.

    ``previous``: the feed's stored body, rendered under the same feed render key (the caller
    checks). Each of its VEVENTs whose event row has the same sequence and last-modified time
    is copied from it; only the others' fragments are read (or rendered). So a re-render after
    1% of the events changed reads the feed's events by their columns, 1% of the fragments,
    and copies the rest: the cost of what changed plus a byte copy.
    """
    with _gc_paused():
        return _build_feed(config, store, spec, now, kinds, key=key, save_fragments=save_fragments, secret=secret,
                           previous=previous)


def _build_feed(config: Config, store: Store, spec: FeedSpec, now: datetime, kinds: Iterable[str] | None, *,
                key: str | None, save_fragments: bool, secret: bytes | None,
                previous: PreviousBody | None) -> RenderedFeed:
    query = spec.query(now)
    if kinds is not None:
        wanted = frozenset(kinds)
        query = replace(query, kinds=wanted if query.kinds is None else query.kinds & wanted)
    key = key or render_key(config)
    # events linking the month view are kept rendered for one feed's view (the key says
    # which): with the view known up front, this feed joins the ones made for it last time
    view: str | None = view_url(config, secret, spec) if secret is not None else None
    view_key = view_fragment_key(key, view) if view is not None else None
    keys = (key,) if view_key is None else (key, view_key)
    index = getattr(store, "query_feed_index", None)  # None: a store from before the feed index
    if index is None:
        return _joined_feed(config, store, spec, now, query, key, keys, view, view_key, save_fragments, secret)
    reuse = _Reusable(previous) if previous is not None else None
    if reuse is not None and not reuse.valid:
        reuse = None
    versions = getattr(store, "feed_versions", None)  # None: a store from before the covering feed index
    if previous is not None and versions is not None and kinds is None and "b_ids" in previous.parts:
        planned = _PlannedList.of(previous.parts)  # the list its plan columns are of, worked on as a body's is
        worked_out = _versions_since(store, query, planned) if planned is not None else None
        listed = worked_out[:3] if worked_out is not None else versions(query)
        refitted = _refitted(config, store, spec, now, previous, listed, key, keys, view, view_key,
                             save_fragments, secret, worked_out[3] if worked_out is not None else None)
        if refitted is not None:  # over its budget, planned again from the columns kept with its body
            return _stamped(refitted, worked_out[4] if worked_out is not None else _version_stamp(query, listed[2]))
    changed_at: list[int] | None = None  # the positions whose version differs from the previous body's
    since = _versions_since(store, query, reuse) if reuse is not None and versions is not None else None
    if since is not None:
        ids, seqs, mods, changed_at, stamp = since
    elif reuse is not None and versions is not None:
        ids, seqs, mods = versions(query)
    else:
        rows = index(query, None if reuse else keys)
        columns: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in range(7)]
        ids, seqs = list(columns[0]), list(columns[1])
        mods = micros(columns[2])
    stamp = since[4] if since is not None else _version_stamp(query, mods)
    if reuse is None:
        listed = Listed(ids=ids, fragments=list(columns[6]), kinds=list(columns[3]), ranks=list(columns[4]),
                        opens=list(columns[5]), seqs=seqs, mods=mods)
        missing = [n for n, fragment in enumerate(listed.fragments) if fragment is None]  # positions in the lists
    else:
        spliced = _spliced(config, store, spec, reuse, ids, seqs, mods, key, keys, view, view_key, save_fragments,
                           secret, changed_at)
        if spliced is not None:
            return _stamped(spliced, stamp)
        listed = Listed(ids=ids, seqs=seqs, mods=mods)
        changed = reuse.take(listed)
        if len(changed) > max(500, len(ids) // 4):  # mostly new to this body (rolled up, or a big change):
            return build_feed(config, store, spec, now, kinds, key=key,  # one scan beats reads by id
                              save_fragments=save_fragments, secret=secret)
        found = store.changed_parts_by_id([ids[n] for n in changed], keys) if changed else {}
        missing = []
        for n in changed:  # their columns, and the fragments the poll stored with them
            got = found.get(ids[n])
            if got is None:  # deleted since the index was read: left out
                continue
            listed.kinds[n], listed.ranks[n], listed.opens[n], listed.fragments[n] = got
            if got[3] is None:
                missing.append(n)
    fragments = listed.fragments
    if missing:
        rendered = _render_missing(config, store, spec, [ids[n] for n in missing], key, view, view_key,
                                   save_fragments, secret)
        for n in missing:
            fragments[n] = rendered.get(ids[n])  # type: ignore[call-overload]
    if None in fragments:  # unrenderable (logged), or gone: left out
        kept = [n for n, f in enumerate(fragments) if f is not None]
        for name in ("ids", "fragments", "kinds", "ranks", "opens", "seqs", "mods"):
            values = getattr(listed, name)
            setattr(listed, name, [values[n] for n in kept])
    head, tail = calendar_header(config, spec)
    from icsfeed.budget import fit_listed  # the size budget (rollups, window), which uses this module

    fitted = fit_listed(config, store, spec, now, query, head, tail, listed, secret=secret, save=save_fragments)
    return _stamped(_rendered(fitted), stamp)


#: a feed's parts name the version list the body was rendered from (see :func:`_versions_since`):
#: a digest of the query, and the largest and smallest last-modified time in it (whole µs)
_QUERY_PART, _MAX_PART, _MIN_PART = "vq", "vmax", "vmin"


def _query_digest(query: FeedQuery) -> str:
    shown = [query.start_ts, query.end_ts, None if query.account_keys is None else sorted(query.account_keys),
             None if query.kinds is None else sorted(query.kinds), query.min_severity]
    return hashlib.sha256(json.dumps(shown).encode()).hexdigest()[:32]


def _version_stamp(query: FeedQuery, mods: list[int]) -> dict[str, Any]:
    return {_QUERY_PART: _query_digest(query), _MAX_PART: max(mods, default=0), _MIN_PART: min(mods, default=0)}


def _stamped(feed: RenderedFeed, stamp: dict[str, Any]) -> RenderedFeed:
    """The feed with its parts naming the version list it was rendered from."""
    if feed.parts is not None:
        feed.parts.update(stamp)
    return feed


class _PlannedList(_VersionList):
    """The version list of a feed over its budget: every event its plan columns list (the
    ``b_`` lists, icsfeed.refit), rolled up or not; a body's own list names only the VEVENTs."""

    def __init__(self, parts: dict[str, Any], ids: list[int], seqs: list[int], mods: list[int]) -> None:
        self.parts, self.ids, self.seqs, self.mods = parts, ids, seqs, mods

    @classmethod
    def of(cls, parts: dict[str, Any]) -> _PlannedList | None:
        """None: no such list, or one with a version not known (the next render reads it whole)."""
        ids, seqs, mods = parts.get("b_ids"), parts.get("b_seqs"), parts.get("b_mods")
        if not (isinstance(ids, list) and isinstance(seqs, list) and isinstance(mods, list)) or not ids \
                or not len(ids) == len(seqs) == len(mods) or min(mods) < 0 or min(ids) < 0:
            return None
        return cls(parts, ids, seqs, mods)


def _versions_since(store: Store, query: FeedQuery, reuse: _VersionList | None
                    ) -> tuple[list[int], list[int], list[int], list[int], dict[str, Any]] | None:
    """The feed's version list (ids, sequences, last-modified µs) worked out from the previous
    body's parts and the rows modified after the newest version they list
    (Store.feed_changes), without reading every row; with the positions whose version
    differs, and the stamp of the new list. None: not known that way (the caller reads the
    whole list, Store.feed_versions).

    Every write that changes a row sets its sequence one higher and its last-modified time to
    the writer's clock, and rows are never deleted; a feed's events come and go only by their
    own changes or by the query (its window moves once a day). So with the same query, the
    same number of events, every recent row among the previous ones, the same sum of row
    ids, a sum of sequences that the recent rows account for (a change written with an older
    clock than the newest version listed, e.g. a poll that committed after a later one,
    raises the sum: it is never missed), and each changed event still between its old
    neighbours, the list is the previous one with the recent rows' versions."""
    changes_of = getattr(store, "feed_changes", None)  # None: a store from before it
    if reuse is None or changes_of is None:
        return None
    parts = reuse.parts
    newest, oldest = parts.get(_MAX_PART), parts.get(_MIN_PART)
    if type(newest) is not int or type(oldest) is not int or oldest < 0 or \
            parts.get(_QUERY_PART) != _query_digest(query):
        return None
    ids, old_seqs, old_mods = reuse.ids, reuse.seqs, reuse.mods
    most = max(500, len(ids) // 4)  # more changed: _spliced leaves it to the general path
    got = changes_of(query, newest, most + 1)
    if got is None or got.count != len(ids) or got.id_sum != sum(ids) or len(got.rows) > most:
        return None
    at = reuse.positions
    keys: dict[int, tuple[float, int]] = {}  # position -> order key (start_ts, id) of the recent rows
    new: dict[int, tuple[int, int]] = {}
    seq_sum = sum(old_seqs)
    for row_id, seq, mod, start in got.rows:
        n = at.get(row_id)
        if n is None or mod < 0:  # new to this feed, or a time out of range
            return None
        keys[n] = (start, row_id)
        if seq != old_seqs[n] or mod != old_mods[n]:
            new[n] = (seq, mod)
            seq_sum += seq - old_seqs[n]
    if seq_sum != got.sequence_sum:  # a change older than the newest version listed
        return None
    changed = sorted(new)
    if changed:  # each run of changed events still sorts between the unchanged ones around it
        runs: list[list[int]] = []
        for n in changed:
            if runs and runs[-1][-1] == n - 1:
                runs[-1].append(n)
            else:
                runs.append([n])
        around = {m for run in runs for m in (run[0] - 1, run[-1] + 1) if 0 <= m < len(ids)}
        wanted = [ids[m] for m in around if m not in keys]
        if wanted:
            starts = store.start_times(wanted)
            if len(starts) != len(wanted):
                return None
            for m in around:
                if m not in keys:
                    keys[m] = (starts[ids[m]], ids[m])
        for run in runs:
            order = [keys[m] for m in (run[0] - 1, *run, run[-1] + 1) if 0 <= m < len(ids)]
            if any(a >= b for a, b in pairwise(order)):
                return None
    seqs, mods = list(old_seqs), list(old_mods)
    for n, (seq, mod) in new.items():
        seqs[n], mods[n] = seq, mod
    changed_mods = [mod for _, mod in new.values()]
    stamp = {_QUERY_PART: parts[_QUERY_PART], _MAX_PART: max([newest, *changed_mods]),
             _MIN_PART: min([oldest, *changed_mods])}
    return ids, seqs, mods, changed, stamp


def _spliced(config: Config, store: Store, spec: FeedSpec, reuse: _Reusable, ids: list[int], seqs: list[int],
             mods: list[int], key: str, keys: tuple[str, ...], view: str | None, view_key: str | None,
             save_fragments: bool, secret: bytes | None, changed: list[int] | None = None) -> RenderedFeed | None:
    """The common re-render, without a step per event in Python: the feed lists the same events
    in the same order as its previous body (nothing moved, came or went; some changed). The
    changed ones are found by comparing the version lists, their VEVENTs read (or rendered),
    and the body is the previous one's runs between them (budget.fit_spliced). None: not
    that case (the general path, :meth:`_Reusable.take`, handles it)."""
    if ids != reuse.ids or len(ids) < 2:
        return None
    by_segments = reuse.previous.stored is not None and not reuse.previous.joined
    if not by_segments and not reuse.placed:
        return None
    old_seqs, old_mods = reuse.seqs, reuse.mods
    if changed is None:  # the positions whose version differs, found without a Python step per event
        changed = sorted({*compress(range(len(ids)), map(ne, seqs, old_seqs)),
                          *compress(range(len(ids)), map(ne, mods, old_mods))})
        if min(mods) < 0:
            return None
    if len(changed) > max(500, len(ids) // 4):
        return None
    found = store.changed_parts_by_id([ids[n] for n in changed], keys) if changed else {}
    if len(found) != len(changed) or any(got[2] is None for got in found.values()):
        return None  # a row gone since the list was read, or one whose open flag is not known yet
    missing = [ids[n] for n in changed if found[ids[n]][3] is None]
    rendered = _render_missing(config, store, spec, missing, key, view, view_key, save_fragments, secret) \
        if missing else {}
    parts: dict[int, tuple[bytes, str, int | None, bool]] = {}
    for n in changed:
        kind, rank, is_open_, fragment = found[ids[n]]
        fragment = fragment if fragment is not None else rendered.get(ids[n])
        if fragment is None:  # unrenderable (logged): the general path leaves it out
            return None
        parts[n] = (fragment, kind, rank, bool(is_open_))
    head, tail = calendar_header(config, spec)
    from icsfeed.budget import fit_spliced  # the size budget, which uses this module

    if by_segments:
        assert reuse.previous.stored is not None
        return _spliced_segments(config, spec, head, tail, reuse, reuse.previous.stored, parts, seqs, mods)
    fitted = fit_spliced(config, spec, head, tail, reuse.body, reuse.parts, parts, seqs, mods)
    if fitted is None:  # over its budget now: rolled up by the general path
        return None
    return _rendered(fitted)


class _Misplaced(Exception):
    """A stored segment whose VEVENTs are not where the parts say."""


def _spliced_segments(config: Config, spec: FeedSpec, head: bytes, tail: bytes, reuse: _Reusable,
                      stored: StoredSegments, changed: dict[int, tuple[bytes, str, int | None, bool]],
                      seqs: list[int], mods: list[int]) -> RenderedFeed | None:
    """:func:`_spliced` on a body stored as segments: the changed VEVENTs replaced in the
    segments that hold them (each read, its VEVENT boundaries checked against the parts), the
    cuts made again from there (icsfeed.store.segments.splice); every other segment is kept
    by its digest, unread. The body is joined only if someone asks for it. None: not that
    case (segments that do not fall on the parts' VEVENT boundaries, or misplaced VEVENTs)."""
    from icsfeed.budget import fit_spliced

    old = stored.segments
    if old.head != head or old.tail != tail or not old.check or old.check != lens_check(reuse.parts["lens"]):
        return None  # parts that are not the ones saved with these segments: checked over the whole body
    fitted = fit_spliced(config, spec, head, tail, None, reuse.parts, changed, seqs, mods)
    if fitted is None:  # over its budget now: rolled up by the general path
        return None
    bounds = reuse.bounds  # (VEVENT n runs from bounds[n] to bounds[n + 1])
    segments = _splice_stored(stored, bounds, [(bounds[n], bounds[n + 1], changed[n][0]) for n in sorted(changed)])
    if segments is None:
        return None
    segments.check = lens_check(fitted.parts["lens"])
    return RenderedFeed(body=None, etag=segments.etag, event_count=fitted.event_count, parts=fitted.parts,
                        report=fitted.report, segments=segments, raw_of=stored.by_digest)


def _splice_stored(stored: StoredSegments, bounds: list[int], patches: list[tuple[int, int, bytes]]
                   ) -> Segments | None:
    """The stored segments with ``patches`` (start, end, bytes: VEVENTs replaced, in the old
    body's offsets, sorted) applied; ``bounds``: the head's end, then each VEVENT's, as the
    parts list them. Only the segments patched are read, and each one's VEVENT boundaries
    are checked against ``bounds``. None: segments that do not fall on those boundaries, or
    misplaced VEVENTs (or one that cannot be read)."""
    old = stored.segments
    offs = list(accumulate(old.lengths, initial=len(old.head)))
    firsts: dict[int, int] = {}

    def first(j: int) -> int:
        """The position in ``bounds`` where segment ``j`` starts (``j`` = their number: where the
        last one ends): the segments read must start and end at VEVENT boundaries (checked for
        those only, not a bisection per segment of the body)."""
        f = firsts.get(j)
        if f is None:
            f = bisect_left(bounds, offs[j])
            if f >= len(bounds) or bounds[f] != offs[j]:
                raise _Misplaced
            firsts[j] = f
        return f

    def raw_of(j: int) -> bytes:
        raw = stored.raw(j)
        base = offs[j]
        if not _boundaries_hold(raw, [b - base for b in bounds[first(j):first(j + 1) + 1]]):
            raise _Misplaced
        return raw

    try:
        stored.preload({bisect_right(offs, start) - 1 for start, _, _ in patches})  # one read of the segments patched
        return splice(old, raw_of, patches)
    except (_Misplaced, UndecodableBlob):
        return None


def _refitted(config: Config, store: Store, spec: FeedSpec, now: datetime, previous: PreviousBody,
              listed: tuple[list[int], list[int], list[int]], key: str, keys: tuple[str, ...], view: str | None,
              view_key: str | None, save_fragments: bool, secret: bytes | None,
              changed: list[int] | None = None) -> RenderedFeed | None:
    """The re-render of a feed over its size budget (icsfeed.refit): the changed rows' columns
    and fragments read (or rendered), the rest from the previous body and its plan columns.
    None: not that case (the paths below handle it)."""
    from icsfeed.refit import refit  # the size budget, which uses this module

    by_id = getattr(store, "part_attrs_by_id", None)  # None: a store from before it
    if by_id is None:
        return None

    def fetch(ids: Any) -> dict[int, Any]:
        found = by_id(ids, keys)
        missing = [i for i, (_, fragment) in found.items() if fragment is None]
        if missing:
            rendered = _render_missing(config, store, spec, missing, key, view, view_key, save_fragments, secret)
            found.update((i, (found[i][0], rendered.get(i))) for i in missing)
        return found  # type: ignore[no-any-return]

    head, tail = calendar_header(config, spec)
    fitted = refit(config, store, spec, now, head, tail, previous.size, previous.parts, *listed, fetch, secret=secret,
                   save=save_fragments, changed=changed)
    if fitted is None:
        return None
    if fitted.pieces is None:  # every VEVENT in hand
        return _rendered(fitted)
    spliced = _refit_spliced(previous, fitted)
    if spliced is not None:
        return spliced
    body = _joined(previous, fitted.pieces)
    return _rendered(replace(fitted, body=body, pieces=None)) if body is not None else None


def _refit_spliced(previous: PreviousBody, fitted: FittedFeed) -> RenderedFeed | None:
    """A refit whose VEVENTs are where the previous body has them (the same count, each one
    it keeps at its old place): the others patched into the stored segments, unread ones
    kept by their digests (as :func:`_spliced_segments`). None: not that case."""
    from icsfeed.budget import KeptVevent  # (the size budget uses this module)

    stored, parts = previous.stored, previous.parts
    assert fitted.pieces is not None
    head, *vevents, tail = fitted.pieces
    if stored is None or previous.joined or not isinstance(head, bytes) or tail != stored.segments.tail:
        return None
    old = stored.segments
    lens = parts["lens"]
    if len(vevents) != len(lens) or parts["head"] != len(old.head) or not old.check or old.check != lens_check(lens):
        return None  # parts that are not the ones saved with these segments, or VEVENTs come or gone
    bounds = _vevent_bounds(parts)
    patches = []
    for n, piece in enumerate(vevents):
        if type(piece) is KeptVevent:
            if piece.at != n:
                return None  # moved: the body is joined
        else:
            patches.append((bounds[n], bounds[n + 1], bytes(piece)))  # type: ignore[arg-type]
    segments = _splice_stored(stored, bounds, patches)
    if segments is None:
        return None
    segments.head = head  # (the budget note in it may have changed)
    segments.check = lens_check(fitted.parts["lens"])
    return RenderedFeed(body=None, etag=segments.etag, event_count=fitted.event_count, parts=fitted.parts,
                        report=fitted.report, segments=segments, raw_of=stored.by_digest)


def _joined(previous: PreviousBody, pieces: list[bytes | memoryview | KeptVevent]) -> bytes | None:
    """The body of a refit's pieces, its kept VEVENTs copied out of the previous body (each
    checked to be one there). None: one is not (parts that do not describe the body)."""
    from icsfeed.budget import KeptVevent

    body = previous.body
    view = memoryview(body)
    starts = _vevent_bounds(previous.parts)
    out: list[bytes | memoryview] = []
    for piece in pieces:
        if type(piece) is KeptVevent:
            start, end = starts[piece.at], starts[piece.at + 1]
            if not (body.startswith(_BEGIN, start) and body.endswith(_END, start, end)):
                return None
            out.append(view[start:end])
        else:
            out.append(piece)  # type: ignore[arg-type]
    return b"".join(out)


def _render_missing(config: Config, store: Store, spec: FeedSpec, ids: list[int], key: str, view: str | None,
                    view_key: str | None, save_fragments: bool, secret: bytes | None) -> dict[int, bytes | None]:
    """The VEVENTs of events without a stored fragment, rendered now (and stored, with
    ``save_fragments``); None for one that cannot be rendered (logged)."""
    rows = store.events_by_id(ids)
    if view is None and any(links_month_view(row.event) for row in rows.values()):
        secret = secret if secret is not None else feed_secret(config, store)
        view = view_url(config, secret, spec) if secret is not None else None
        view_key = view_fragment_key(key, view) if view is not None else None
    rendered: dict[int, bytes | None] = {}
    fresh = []
    for i in ids:
        row = rows.get(i)
        if row is None:
            continue
        linked = links_month_view(row.event)
        fragment = _render_or_skip(config, row, view if linked else None)
        rendered[i] = fragment
        if fragment is None:
            continue
        if not linked:
            fresh.append((i, fragment, key))
        elif view_key is not None and spec.type == "account":
            # kept under the account feed's view key (a team feed's key never matches it, and
            # team feeds, which would take turns with it over the one slot, render their own)
            fresh.append((i, fragment, view_key))
    if save_fragments and fresh:
        _save_fragments(store, fresh, rows)
    return rendered


def _takes(method: Any, name: str) -> bool:
    """Whether a store's method takes the keyword ``name`` (a store from before it does not)."""
    return name in _parameters(getattr(method, "__func__", method))


@lru_cache(maxsize=64)
def _parameters(function: Any) -> frozenset[str]:
    """The parameter names of a function (inspect.signature is ≈ 30 µs: asked twice a render)."""
    return frozenset(inspect.signature(function).parameters)


def _save_fragments(store: Store, fresh: list[tuple[int, bytes, str]], rows: Mapping[int, EventRow]) -> None:
    """Store fragments, with each row's source (its event's: the store need not read it again);
    a store from before ``sources`` reads them itself."""
    if _takes(store.save_fragments, "sources"):
        store.save_fragments(fresh, sources={i: rows[i].event.source for i, _, _ in fresh})
    else:
        store.save_fragments(fresh)


def _joined_feed(config: Config, store: Store, spec: FeedSpec, now: datetime, query: FeedQuery, key: str,
                 keys: tuple[str, ...], view: str | None, view_key: str | None, save_fragments: bool,
                 secret: bytes | None) -> RenderedFeed:
    """build_feed over a store from before the feed index: every stored fragment joined."""
    by_keys = getattr(store, "query_feed_fragments", None)  # None: a store from before view keys
    listed = store.query_fragments(query, key) if view_key is None or by_keys is None else by_keys(query, keys)
    missing = [i for i, fragment in listed if fragment is None]
    rendered = _render_missing(config, store, spec, missing, key, view, view_key, save_fragments, secret) \
        if missing else {}
    head, tail = calendar_header(config, spec)
    fragments = [(i, fragment if fragment is not None else rendered.get(i)) for i, fragment in listed]
    from icsfeed.budget import fit_feed

    fitted = fit_feed(config, store, spec, now, query, head, tail, [(i, f) for i, f in fragments if f is not None],
                      secret=secret, save=save_fragments)
    return _rendered(fitted)


def previous_body(store: Store, feed_id: str) -> PreviousBody | None:
    """The feed's stored body and its parts, when both are there and belong together (the
    body as its stored segments, read when needed; or whole, as stored before them)."""
    parts_of = getattr(store, "feed_parts", None)  # None: a store from before feed parts
    if parts_of is None:
        return None
    segments_of = getattr(store, "feed_segments", None)  # None: a store from before segments
    if segments_of is not None:
        try:
            segmented = segments_of(feed_id)
        except UndecodableBlob as exc:
            log.warning("the stored segments of %s cannot be read (%s): rendered from its events", feed_id, exc)
            return None
        if segmented is not None:
            parts = parts_of(feed_id, segmented.etag)
            return None if parts is None else PreviousBody(None, parts.parts, segmented)
    stored = store.get_feed(feed_id)
    if stored is None or not stored.body:
        return None
    parts = parts_of(feed_id, stored.etag)
    return None if parts is None else PreviousBody(stored.body, parts.parts)


def _save_feed(store: Store, feed_id: str, feed: RenderedFeed, **kwargs: Any) -> bool:
    """Store a render (its segments, when the store keeps them; else its whole body), and its
    parts for filtered variants and /status (in the same transaction, where the store can)."""
    with_parts = feed.parts is not None and feed.report is not None
    if with_parts and _takes(store.save_feed, "parts"):
        kwargs["parts"] = (feed.parts, feed.report)
    if feed.segments is not None and _takes(store.save_feed, "segments"):
        saved = store.save_feed(feed_id, b"", b"", feed.etag, segments=feed.segments, **kwargs)
    else:
        saved = store.save_feed(feed_id, feed.body, b"", feed.etag, **kwargs)
    if with_parts and not _takes(store.save_feed, "parts"):
        store.save_feed_parts(feed_id, feed.etag, feed.parts, feed.report)  # type: ignore[arg-type]
    return saved


#: one render at a time per process: two renders of one feed racing could store the older bytes last
_RENDER_LOCK = threading.Lock()


def render_feeds(config: Config, store: Store, *, now: datetime | None = None,
                 only: Iterable[str] | None = None, force: bool = False,
                 claim: Callable[[str], AbstractContextManager[tuple[bool, str | None, str | None, int] | None]]
                 | None = None) -> list[str]:
    """Re-render the feeds that need it: dirty, made under other settings, or a day old.

    Returns the ids rendered. A feed whose bytes come out the same keeps its ETag and
    Last-Modified, so clients get 304s. A feed marked dirty while it renders stays dirty.
    ``claim`` (pollers side by side, ``Coordinator.feed_claims``) gives each feed to one of
    them: None while another renders it, else its render state read again under the claim.
    A feed last rendered under the same feed render key is re-rendered from its stored body
    (:func:`build_feed`'s ``previous``); ``force`` renders every feed from its events alone.
    """
    now = now or datetime.now(timezone.utc)
    today = now.astimezone(timezone.utc).date().isoformat()
    wanted = set(only) if only is not None else None
    base_key = render_key(config)
    secret = feed_secret(config, store)
    rendered = []
    with _RENDER_LOCK:
        states = store.feed_render_generations()
        for spec in all_feeds(config):
            if wanted is not None and spec.feed_id not in wanted:
                continue
            view = view_url(config, secret, spec) if secret is not None else None
            key = feed_render_key(config, spec, base=base_key, view=view)
            dirty, old_key, day, generation = states.get(spec.feed_id, (True, None, None, 0))
            if not (force or dirty or old_key != key or day != today):
                continue
            state = (dirty, old_key, day, generation)
            with claim(spec.feed_id) if claim is not None else nullcontext(state) as claimed:
                if claimed is None:  # another poller renders it now
                    continue
                dirty, old_key, day, generation = claimed
                if not (force or dirty or old_key != key or day != today):
                    continue  # another poller rendered it meanwhile
                started = time.perf_counter()
                # the same feed render key: the stored body is where this render starts from
                previous = previous_body(store, spec.feed_id) if not force and old_key == key else None
                try:
                    feed = build_feed(config, store, spec, now, key=base_key, secret=secret, previous=previous)
                except UndecodableBlob as exc:  # a stored segment of the previous body: start from the events
                    log.warning("the stored body of %s cannot be read (%s): rendered from its events", spec.feed_id,
                                exc)
                    drop = getattr(store, "drop_feed_body", None)
                    if drop is not None:  # none of its stored segments is taken as it is
                        drop(spec.feed_id)
                    feed = build_feed(config, store, spec, now, key=base_key, secret=secret)
                # no gzip here: the web layer compresses on the first request for an ETag
                _save_feed(store, spec.feed_id, feed, event_count=feed.event_count, now=now.timestamp(),
                           render_seconds=time.perf_counter() - started, render_key=key, window_day=today,
                           generation=generation)
            rendered.append(spec.feed_id)
    return rendered
