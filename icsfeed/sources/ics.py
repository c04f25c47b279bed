"""``ics``: an upstream iCalendar feed, such as a datacenter's or vendor's maintenance calendar.

The calendar is fetched with a conditional GET (``If-None-Match`` / ``If-Modified-Since``).
The last body and its validators are kept in ``<data>/cache/<source id>/http.json``, so a
``304 Not Modified`` re-parses the cached body and the source still returns every event.
Recurring events are expanded with ``recurring-ical-events`` inside a window around now;
each occurrence becomes its own event.

Why the source is ``incremental``: an upstream event that disappears was most likely
cancelled, but an occurrence that merely moved out of the expansion window has not
disappeared. The store cannot tell the two apart, so this source tells it: it remembers
what it returned last time (``seen-<generation>.json``, the generation is the poller's
``cursor``, so the memory matches what the store committed) and itself returns a
cancelled copy of every remembered event that upstream no longer has. Everything it does
not return is left as it is in the store, which is exactly right for occurrences that
left the window behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import icalendar
import recurring_ical_events
import x_wr_timezone
from pydantic import Field, field_validator

from icsfeed.model import Event
from icsfeed.sources.base import Absence, KindInfo, Source, SourceError, SourceSettings
from icsfeed.sources.http import HttpSettings, fetch, make_session

#: RRULE frequencies that cannot be a maintenance calendar and would expand into
#: hundreds of thousands of occurrences (dateutil walks every one since DTSTART)
_REFUSED_FREQS = frozenset({"SECONDLY", "MINUTELY"})
_STATUS = {"CANCELLED": "cancelled", "TENTATIVE": "tentative"}


class IcsSettings(SourceSettings, HttpSettings):
    """Settings of an ``ics`` source (HTTP settings: timeout, retries, verify_tls, headers, auth)."""

    #: where the calendar is: http(s) URL, ``file://`` URL or a path (relative to the config dir)
    url: str = Field(min_length=1)
    #: link for events that have no http(s) URL of their own (the calendar's web page)
    page_url: str | None = None
    kind: str = "maintenance"
    #: account key: a literal (``acme``) or a template over the event's properties
    #: (``{X-CUSTOMER-ID}``, ``{CATEGORIES}`` = the first category)
    account: str | None = None
    #: timezone of floating times (no TZID) when the account has none; default: server's
    timezone: str | None = None
    window_back_days: int = Field(default=90, ge=0, le=3650)
    window_ahead_days: int = Field(default=60, ge=0, le=3650)
    #: a larger body is refused (protects memory; maintenance calendars are small)
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: a series with more occurrences inside the window is skipped
    max_occurrences: int = Field(default=1000, gt=0, le=100_000)

    @field_validator("account")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                list(string.Formatter().parse(value))
            except ValueError as exc:
                raise ValueError(f"bad account template {value!r}: {exc}") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(value)
            except Exception as exc:  # ZoneInfoNotFoundError, ValueError for odd keys
                raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class IcsSource(Source):
    """Events of an upstream calendar, one per occurrence inside the window."""

    type_name: ClassVar[str] = "ics"
    Settings: ClassVar[type[SourceSettings]] = IcsSettings
    #: a vanished upstream event was cancelled; applied by the source itself (see module doc)
    absence: ClassVar[Absence] = "cancel"
    #: results leave out what is outside the window, so the store must not apply absence
    incremental: ClassVar[bool] = True

    settings: IcsSettings

    # --- the poll --------------------------------------------------------------------------

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        self.skipped = []
        s = self.settings
        kind_info = self.kind_info(s.kind)
        body, remember = self._download()
        calendar = self._parse(body)
        now = self._now()
        window = (now - timedelta(days=s.window_back_days), now + timedelta(days=s.window_ahead_days))
        groups = self._group(calendar)
        current, unreadable = self._expand(calendar, groups, window, kind_info)

        base_generation, previous = self._load_seen()
        result = dict(current)
        seen = dict(current)
        for key, old in previous.items():
            if key in current:
                continue
            uid = str(old.attrs.get("upstream_uid", ""))
            if uid in unreadable:  # broken this time is not deleted: ask again next poll
                seen[key] = old
                continue
            if _before(_end_of(old), window[0]):
                continue  # it left the window behind; the store keeps it as it was
            now_there = self._locate(calendar, groups.get(uid, []), old, kind_info)
            if now_there is None:
                result[key] = replace(old, status="cancelled")
            else:  # moved outside the window: show where it went, keep following it
                result[key] = now_there
                if not _before(_end_of(now_there), window[0]):
                    seen[key] = now_there
        self.cursor = self._save_seen(base_generation, seen)
        remember()
        return list(result.values())

    def _now(self) -> datetime:
        """The poll's clock (a method so tests can move time)."""
        return datetime.now(timezone.utc)

    # --- download ----------------------------------------------------------------------------

    def _download(self) -> tuple[bytes, Any]:
        """The calendar body, and a callable that remembers it for the next conditional GET.

        Remembering happens only after the body parsed, so a garbage answer is never cached.
        """
        url = self.settings.url
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._download_http(url)
        if scheme == "file":
            path = Path(urlsplit(url).path)
        elif "://" in url:
            raise SourceError(f"unsupported URL scheme {scheme!r} (use http, https, file or a path)")
        else:
            path = self.resolve_path(url)
        try:
            with path.open("rb") as handle:
                body = handle.read(self.settings.max_bytes + 1)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        if len(body) > self.settings.max_bytes:
            raise SourceError(f"{path}: larger than max_bytes ({self.settings.max_bytes})")
        return body, lambda: None

    def _download_http(self, url: str) -> tuple[bytes, Any]:
        s = self.settings
        cache_file = self.state_dir / "http.json"
        url_hash = hashlib.sha256(url.encode()).hexdigest()
        cached = self.read_state("http.json")
        if cached is not None and cached.get("url_sha256") != url_hash:
            cached = None  # the url changed: the old validators mean nothing
        headers = {"Accept": "text/calendar, */*;q=0.5"}
        if cached is not None:
            if cached.get("etag"):
                headers["If-None-Match"] = cached["etag"]
            if cached.get("last_modified"):
                headers["If-Modified-Since"] = cached["last_modified"]
        where = _redacted(url)
        with make_session(s) as session:  # ``where`` in every message: calendar URLs carry a secret in the path
            answer = fetch(session, "GET", url, timeout=s.timeout, max_bytes=s.max_bytes, where=where,
                           headers=headers, accept_status=(304,))
        if answer.status == 304:
            if cached is None:
                raise SourceError(f"{where}: answered 304 Not Modified to an unconditional request")
            try:
                return base64.b64decode(cached["body"]), lambda: None
            except (KeyError, ValueError):
                raise SourceError(f"{where}: 304 Not Modified but the cached copy is unreadable") from None
        # RFC 5545's default is UTF-8; a charset the server names wins (kept as UTF-8 from here on)
        body = answer.text().encode("utf-8") if answer.charset and answer.charset != "utf-8" else answer.body
        etag = answer.headers.get("ETag")
        last_modified = answer.headers.get("Last-Modified")

        def remember() -> None:
            if etag or last_modified:
                self.write_state("http.json", json.dumps({
                    "url_sha256": url_hash, "etag": etag, "last_modified": last_modified,
                    "body": base64.b64encode(body).decode("ascii"),
                }).encode())
            else:  # nothing to revalidate with: don't keep a copy that can never be used
                cache_file.unlink(missing_ok=True)

        return body, remember

    # --- parse and expand ----------------------------------------------------------------------

    def _parse(self, body: bytes) -> icalendar.Calendar:
        try:
            calendar = icalendar.Calendar.from_ical(body)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise SourceError(f"not an iCalendar document ({len(body)} bytes): {first}") from None
        if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
            raise SourceError(f"not an iCalendar document: top component is {calendar.name}, not VCALENDAR")
        try:
            return x_wr_timezone.to_standard(calendar)
        except Exception as exc:  # a broken X-WR-TIMEZONE: the times are still readable as they are
            self.skip({"name": "X-WR-TIMEZONE"}, f"ignored: {type(exc).__name__}")
            return calendar

    def _group(self, calendar: icalendar.Calendar) -> dict[str, list[icalendar.Component]]:
        """VEVENTs by UID: a series is its master and its moved or changed occurrences."""
        groups: dict[str, list[icalendar.Component]] = {}
        for component in calendar.subcomponents:
            if component.name != "VEVENT":
                continue
            uid = str(component.get("UID", "")).strip()
            if not uid:
                summary = str(component.get("SUMMARY", ""))[:60]
                self.skip({"name": summary}, "VEVENT without UID (it could not be followed between polls)")
                continue
            groups.setdefault(uid, []).append(component)
        return groups

    def _expand(self, calendar: icalendar.Calendar, groups: dict[str, list[icalendar.Component]],
                window: tuple[datetime, datetime], kind_info: KindInfo) -> tuple[dict[str, Event], set[str]]:
        """Occurrences inside the window by key, and the UIDs that could not be read.

        Each series is expanded alone, so one broken series is skipped with its reason
        and the others go on.
        """
        timezones = [c for c in calendar.subcomponents if c.name == "VTIMEZONE"]
        events: dict[str, Event] = {}
        unreadable: set[str] = set()
        for uid, components in groups.items():
            recurring = _is_recurring(components)
            try:
                _check_rules(components)
                occurrences = _series_calendar(timezones, components).between(*window)
                if len(occurrences) > self.settings.max_occurrences:
                    raise ValueError(f"{len(occurrences)} occurrences in the window "
                                     f"(max_occurrences is {self.settings.max_occurrences})")
            except Exception as exc:  # any error of the library on this series: skip it, go on
                self.skip({"uid": uid}, _reason(exc))
                unreadable.add(uid)
                continue
            for occurrence in occurrences:
                try:
                    event = self._to_event(occurrence, uid, recurring, kind_info)
                except Exception as exc:
                    self.skip({"uid": uid}, _reason(exc))
                    unreadable.add(uid)
                    continue
                if event.key in events:
                    self.skip({"key": event.key}, "duplicate occurrence")
                    continue
                events[event.key] = event
        return events, unreadable

    def _locate(self, calendar: icalendar.Calendar, components: list[icalendar.Component], old: Event,
                kind_info: KindInfo) -> Event | None:
        """Where upstream has ``old`` now (outside the window), or None when it is gone."""
        if not components:
            return None
        uid = str(old.attrs.get("upstream_uid"))
        rid_text = old.attrs.get("recurrence_id")
        try:
            if rid_text is None:
                if _is_recurring(components):
                    return None  # a single event turned into a series: new keys for all
                return self._to_event(components[0], uid, False, kind_info)
            rid: date | datetime = (datetime.fromisoformat(rid_text) if "T" in rid_text
                                    else date.fromisoformat(rid_text))
            moved = [c for c in components if "RECURRENCE-ID" in c]
            span = timedelta(days=1) if not isinstance(rid, datetime) else timedelta(seconds=1)
            timezones = [c for c in calendar.subcomponents if c.name == "VTIMEZONE"]
            candidates = moved + list(_series_calendar(timezones, components).between(rid, rid + span))
            for candidate in candidates:
                event = self._to_event(candidate, uid, True, kind_info)
                if event.key == old.key:
                    return event
        except Exception as exc:  # can't tell: better keep it than cancel it
            self.skip({"uid": uid}, _reason(exc))
            return old
        return None

    def _to_event(self, component: icalendar.Component, uid: str, recurring: bool,
                  kind_info: KindInfo) -> Event:
        s = self.settings
        account = self._account(component)
        tz = self.context.timezone_for(account, s.timezone)
        start = component.start
        end = component.end
        start, end = _when(start, end, tz, kind_info)

        rid_value = component.get("RECURRENCE-ID")
        key = uid
        rid_iso = None
        if recurring:
            rid = rid_value.dt if rid_value is not None else component.start
            key = f"{uid}#{_rid_text(rid)}"
            rid_iso = rid.isoformat()

        summary = str(component.get("SUMMARY", "")).strip()
        description = str(component.get("DESCRIPTION", "")).strip()
        location = str(component.get("LOCATION", "")).strip()
        detail = "\n".join(part for part in (description, f"Location: {location}" if location else "") if part)
        own_url = str(component.get("URL", "")).strip()
        url = own_url if _is_http(own_url) else (s.page_url or (s.url if _is_http(s.url) else None))
        status = _STATUS.get(str(component.get("STATUS", "")).strip().upper(), "confirmed")
        attrs: dict[str, Any] = {"upstream_uid": uid, "recurrence_id": rid_iso}
        if location:
            attrs["location"] = location
        categories = _categories(component)
        if categories:
            attrs["categories"] = categories
        return Event(
            source=self.id, key=key, kind=s.kind, title=summary or "(no title)",
            start=start, end=end, detail=detail, url=url, account=account,
            status=status,  # type: ignore[arg-type]
            attrs=attrs,
        )

    def _account(self, component: icalendar.Component) -> str | None:
        template = self.settings.account
        if not template:
            return None
        try:
            value = _PROPERTY_FORMATTER.vformat(template, (), {"__component__": component})
        except KeyError:
            return None  # a property the template names is missing: no account
        return value.strip() or None

    # --- what was returned last time ------------------------------------------------------------

    def _load_seen(self) -> tuple[str | None, dict[str, Event]]:
        """The events returned by the poll the store committed last (found by the cursor)."""
        directory = self.state_dir
        path: Path | None = None
        if self.cursor:
            candidate = directory / f"seen-{self.cursor}.json"
            path = candidate if candidate.is_file() else None
        else:  # a poller that keeps no cursor: the newest file is the best guess
            files = sorted(directory.glob("seen-*.json"), key=lambda p: p.stat().st_mtime_ns)
            path = files[-1] if files else None
        data = self.read_state(path.name) if path is not None else None
        if not data:
            return None, {}
        events: dict[str, Event] = {}
        for item in data.get("events", []):
            try:
                event = Event.from_dict(item)
            except (KeyError, TypeError, ValueError):
                continue
            events[event.key] = event
        return path.stem.removeprefix("seen-") if path else None, events

    def _save_seen(self, base: str | None, events: dict[str, Event]) -> str:
        """Write the new memory; keep the base one too in case the store does not commit."""
        blob = json.dumps({"events": [e.to_dict() for e in sorted(events.values(), key=lambda e: e.key)]},
                          sort_keys=True, ensure_ascii=False).encode()
        generation = hashlib.sha256(blob).hexdigest()[:20]
        directory = self.state_dir
        self.write_state(f"seen-{generation}.json", blob)
        keep = {f"seen-{generation}.json", f"seen-{base}.json"}
        for old in directory.glob("seen-*.json"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return generation


# --- helpers -------------------------------------------------------------------------------------

class _PropertyFormatter(string.Formatter):
    """``{NAME}`` is the event's property NAME (``{CATEGORIES}``: the first category); no
    attribute or index access, so a template cannot reach into Python objects."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        component = kwargs["__component__"]
        name = field_name.strip().upper()
        if name == "CATEGORIES":
            categories = _categories(component)
            if not categories:
                raise KeyError(field_name)
            return categories[0], field_name
        value = component.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or str(value).strip() == "":
            raise KeyError(field_name)
        return str(value), field_name


_PROPERTY_FORMATTER = _PropertyFormatter()


def _series_calendar(timezones: list[icalendar.Component],
                     components: list[icalendar.Component]) -> recurring_ical_events.CalendarQuery:
    calendar = icalendar.Calendar()
    for tz in timezones:
        calendar.add_component(tz)
    for component in components:
        calendar.add_component(component)
    return recurring_ical_events.of(calendar)


def _is_recurring(components: list[icalendar.Component]) -> bool:
    return len(components) > 1 or any(
        "RRULE" in c or "RDATE" in c or "RECURRENCE-ID" in c for c in components)


def _check_rules(components: list[icalendar.Component]) -> None:
    for component in components:
        rules = component.get("RRULE")
        for rule in rules if isinstance(rules, list) else [rules] if rules is not None else []:
            freq = [str(f).upper() for f in (rule.get("FREQ") or [])] if hasattr(rule, "get") else []
            if _REFUSED_FREQS.intersection(freq):
                raise ValueError(f"RRULE FREQ={freq[0]} is not supported (too many occurrences)")


def _when(start: date | datetime, end: date | datetime | None, tz: tzinfo,
          kind_info: KindInfo) -> tuple[date | datetime, date | datetime]:
    """Event start/end: upstream all-day stays all-day; a timed event becomes days for an
    all-day kind; floating times are read in ``tz``; a missing end gets the kind's length."""
    if not isinstance(start, datetime):
        end_day = end if isinstance(end, date) and not isinstance(end, datetime) else None
        if end_day is None and isinstance(end, datetime):
            end_day = end.date() + (timedelta(days=1) if end.time() != time(0) else timedelta(0))
        if end_day is None or end_day <= start:
            end_day = start + timedelta(days=1)
        return start, end_day
    start = _aware(start, tz)
    end_dt = _aware(end, tz) if isinstance(end, datetime) else None
    if end_dt is None or end_dt <= start:
        end_dt = start + timedelta(seconds=kind_info.duration_seconds)
    if kind_info.all_day:
        first = start.astimezone(tz).date()
        last = end_dt.astimezone(tz)
        stop = last.date() + (timedelta(days=1) if last.time() != time(0) else timedelta(0))
        return first, max(stop, first + timedelta(days=1))
    return start, end_dt


def _aware(value: datetime, tz: tzinfo) -> datetime:
    return value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=tz)


def _rid_text(rid: date | datetime) -> str:
    """A recurrence id as key text: UTC for zoned times, as written for floating times and dates."""
    if isinstance(rid, datetime):
        if rid.tzinfo is not None and rid.utcoffset() is not None:
            return rid.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return rid.strftime("%Y%m%dT%H%M%S")
    return rid.strftime("%Y%m%d")


def _end_of(event: Event) -> datetime:
    return _as_utc(event.end if event.end is not None else event.start)


def _as_utc(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return datetime.combine(value, time(0), timezone.utc)


def _before(moment: datetime, limit: datetime) -> bool:
    return moment <= limit


def _categories(component: icalendar.Component) -> list[str]:
    try:
        return [str(c).strip() for c in component.categories if str(c).strip()]
    except Exception:
        return []


def _is_http(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme.lower() in ("http", "https")


def _redacted(url: str) -> str:
    """scheme://host/… (plus a harmless file name such as ``basic.ics``): calendar URLs
    (Google's private address, Outlook's published calendars, Nextcloud shares) carry
    their secret in the path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    last = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if not parts.path.strip("/"):
        return f"{parts.scheme}://{host}/"
    if re.fullmatch(r"[A-Za-z][\w.-]{0,39}\.(ics|ical|ifb|icalendar)", last):
        return f"{parts.scheme}://{host}/…/{last}"
    return f"{parts.scheme}://{host}/…"


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__




