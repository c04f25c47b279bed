"""Render: stored events -> .ics bytes, when events change (never per request).

Each event's VEVENT is built with ``icalendar`` (escaping, folding, CRLF) once per change
and kept in the store as a fragment; a feed is the calendar header plus the fragments of its
events. So a re-render after a poll costs the changed events plus a join, and a feed request
costs a lookup. The rules every client needs are in DESIGN.md's Render section.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit

import icalendar

from icsfeed import __version__
from icsfeed.config import Config, KindConfig
from icsfeed.routing import FeedSpec, all_feeds
from icsfeed.store import EventRow, Store

log = logging.getLogger(__name__)

PRODID = f"-//icsfeed//icsfeed {__version__}//EN"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BIDI_CONTROL = re.compile(r"[\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class RenderedFeed:
    body: bytes
    etag: str
    event_count: int


def render_key(config: Config) -> str:
    """Hash of the settings that shape a VEVENT: a fragment made under others is stale."""
    shape = {
        "kinds": {n: k.model_dump(mode="json") for n, k in sorted(config.kinds.items())},
        "feeds": config.feeds.model_dump(mode="json", include={"method_publish", "organizer_name",
                                                                "organizer_email", "max_title", "max_detail"}),
        "host": config.uid_host, "version": __version__,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:32]


def feed_render_key(config: Config, spec: FeedSpec) -> str:
    """Hash of everything a feed's bytes depend on besides its events."""
    shape = [render_key(config), spec.name, spec.color, config.feeds.refresh_interval.total_seconds()]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:32]


# --- text hygiene ------------------------------------------------------------------------

def clean_text(value: str, limit: int) -> str:
    """Text a calendar client can take: no control characters or lone surrogates, bounded."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = _SURROGATE.sub("\ufffd", value)
    value = _CONTROL.sub(lambda m: "\n" if m.group() in "\x0b\x0c\x85" else "", value)
    value = unicodedata.normalize("NFC", value)
    if len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return value


def clean_title(value: str, limit: int) -> str:
    """One line (SUMMARY is shown in a cell), bidi overrides isolated so they cannot spill."""
    one_line = " ".join(clean_text(value, limit * 2).split())
    one_line = _BIDI_CONTROL.sub("", one_line)
    return clean_text(one_line, limit) or "(untitled)"


def safe_url(url: str | None) -> str | None:
    """An absolute http(s) URL, or None: ``javascript:`` and relative links never get out."""
    if not url:
        return None
    url = url.strip()
    if len(url) > 2000 or _CONTROL.search(url) or any(c.isspace() for c in url):
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


# --- one event ---------------------------------------------------------------------------

def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def _bounds(row: EventRow, kind: KindConfig) -> tuple[datetime | date, datetime | date]:
    ev = row.event
    if ev.all_day:
        start = ev.start if not isinstance(ev.start, datetime) else ev.start.date()
        end = ev.end if ev.end is not None and ev.end > start else start + timedelta(days=1)  # type: ignore[operator]
        return start, end
    start = _utc(ev.start)  # type: ignore[arg-type]
    end = _utc(ev.end) if isinstance(ev.end, datetime) and ev.end > ev.start else start + kind.duration  # type: ignore[operator]
    return start, end


def render_vevent(config: Config, row: EventRow) -> bytes:
    """One VEVENT, with icalendar doing the escaping and folding."""
    ev = row.event
    kind = config.kinds.get(ev.kind) or config.kinds["alert"]
    feeds = config.feeds
    start, end = _bounds(row, kind)
    url = safe_url(ev.url)
    detail = clean_text(ev.detail or "", feeds.max_detail)
    if ev.end is None and not ev.all_day:
        detail = f"{detail}\n(ongoing: no end reported yet)".strip()
    if url:  # Google and Outlook hide URL; the link must be in the text people see
        detail = f"{detail}\n\n{url}" if detail else url
    modified = datetime.fromtimestamp(row.last_modified, timezone.utc).replace(microsecond=0)

    vevent = icalendar.Event()
    vevent.add("uid", row.uid)
    vevent.add("dtstamp", modified)
    vevent.add("dtstart", start)
    vevent.add("dtend", end)
    vevent.add("summary", f"{kind.icon} {clean_title(ev.title, feeds.max_title)}")
    if detail:
        vevent.add("description", detail)
    if url:
        vevent.add("url", url, parameters={"VALUE": "URI"})
    categories = [kind.label or ev.kind.title()]
    if ev.severity:
        categories.append(clean_title(ev.severity, 40))
    vevent.add("categories", categories)
    vevent.add("status", ev.status.upper())
    vevent.add("sequence", row.sequence)
    vevent.add("created", datetime.fromtimestamp(row.created, timezone.utc).replace(microsecond=0))
    vevent.add("last-modified", modified)
    vevent.add("color", kind.color)
    vevent.add("transp", "TRANSPARENT")
    vevent.add("class", "PUBLIC")
    if feeds.method_publish:
        organizer = icalendar.vCalAddress(f"mailto:{feeds.organizer_email}")
        organizer.params["CN"] = icalendar.vText(feeds.organizer_name)
        vevent.add("organizer", organizer)
    if ev.rrule:
        vevent.add("rrule", icalendar.vRecur.from_ical(ev.rrule))
    if ev.alarm_before:
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", f"{kind.icon} {clean_title(ev.title, feeds.max_title)}")
        alarm.add("trigger", -ev.alarm_before)
        vevent.add_component(alarm)
    return vevent.to_ical()


# --- one feed --------------------------------------------------------------------------------

def calendar_header(config: Config, spec: FeedSpec) -> tuple[bytes, bytes]:
    """The VCALENDAR lines before and after the events."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    if config.feeds.method_publish:
        cal.add("method", "PUBLISH")
    title = f"{spec.name} · icsfeed" if spec.type == "account" else f"{spec.name} (team) · icsfeed"
    cal.add("name", title)
    cal.add("x-wr-calname", title)
    cal.add("x-wr-caldesc", f"Alerts, backups, tickets and maintenance for {spec.name}")
    refresh = icalendar.vDuration(config.feeds.refresh_interval)
    cal.add("refresh-interval", refresh, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", icalendar.vDuration(config.feeds.refresh_interval))
    cal.add("color", spec.color)
    from icsfeed.config import CSS_COLORS
    cal.add("x-apple-calendar-color", CSS_COLORS[spec.color].upper())
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
        try:
            fragment = render_vevent(config, row)
        except Exception:  # one unrenderable event must not take the feed down
            log.exception("cannot render event %s; it is left out of the feed", row.uid)
            continue
        out.append(fragment)
        fresh.append((row.id, fragment, key))
    store.save_fragments(fresh)
    return out


def build_feed(config: Config, store: Store, spec: FeedSpec, now: datetime,
               kinds: Iterable[str] | None = None) -> RenderedFeed:
    """A feed's bytes and ETag (optionally only some kinds)."""
    rows = store.query_events(spec.query(now))
    if kinds is not None:
        wanted = set(kinds)
        rows = [r for r in rows if r.event.kind in wanted]
    head, tail = calendar_header(config, spec)
    body = b"".join([head, *fragments_for(config, store, rows), tail])
    return RenderedFeed(body=body, etag=hashlib.sha256(body).hexdigest()[:32], event_count=len(rows))


def render_feeds(config: Config, store: Store, *, now: datetime | None = None,
                 only: Iterable[str] | None = None, force: bool = False) -> list[str]:
    """Re-render the feeds that need it: dirty, made under other settings, or a day old.

    Returns the ids rendered. A feed whose bytes come out the same keeps its ETag and
    Last-Modified, so clients get 304s.
    """
    now = now or datetime.now(timezone.utc)
    today = now.astimezone(timezone.utc).date().isoformat()
    states = store.feed_render_states()
    wanted = set(only) if only is not None else None
    rendered = []
    for spec in all_feeds(config):
        if wanted is not None and spec.feed_id not in wanted:
            continue
        key = feed_render_key(config, spec)
        dirty, old_key, day = states.get(spec.feed_id, (True, None, None))
        if not (force or dirty or old_key != key or day != today):
            continue
        started = time.perf_counter()
        feed = build_feed(config, store, spec, now)
        gz = gzip.compress(feed.body, compresslevel=6, mtime=0)
        store.save_feed(spec.feed_id, feed.body, gz, feed.etag, event_count=feed.event_count,
                        now=now.timestamp(), render_seconds=time.perf_counter() - started,
                        render_key=key, window_day=today)
        rendered.append(spec.feed_id)
    return rendered
