"""The Event: the only thing sources produce, and everything downstream consumes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

Status = Literal["confirmed", "tentative", "cancelled"]
STATUSES: frozenset[str] = frozenset({"confirmed", "tentative", "cancelled"})

#: Severity words origins use, ranked so that team feeds can say "warning and above".
SEVERITY_RANK: dict[str, int] = {
    "none": 0, "info": 0, "informational": 0, "low": 1, "minor": 1,
    "warning": 2, "warn": 2, "medium": 2, "normal": 2,
    "error": 3, "major": 3, "high": 3,
    "critical": 4, "urgent": 4, "page": 4, "emergency": 4, "highest": 4,
}


def severity_rank(severity: str | None) -> int | None:
    """Rank of a severity word, None when there is none (unknown words rank as warning)."""
    if not severity:
        return None
    return SEVERITY_RANK.get(severity.strip().lower(), 2)


@dataclass(frozen=True)
class Event:
    """One thing that happened at an origin, as a calendar shows it.

    ``(source, key)`` is the identity: the feed UID is derived from these two only, so
    it survives every poll. ``start``/``end`` are timezone-aware datetimes, or dates for
    all-day events (``end`` exclusive, as in iCalendar). ``end`` may be None for
    something still going on (an alert that is firing).
    """

    source: str
    key: str
    kind: str
    title: str
    start: datetime | date
    end: datetime | date | None = None
    detail: str = ""
    url: str | None = None
    account: str | None = None
    status: Status = "confirmed"
    severity: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    #: RFC 5545 RRULE value for events that recur (birthdays: ``FREQ=YEARLY``).
    rrule: str | None = None
    #: Remind this long before ``start`` (a VALARM); certificates use it for expiry.
    alarm_before: timedelta | None = None
    #: For an event still going on (``end`` None, e.g. a firing alert): until when its
    #: origin has reported it, rounded up by :func:`seen_until` so that it changes (and
    #: bumps SEQUENCE) at most hourly. Feeds show it as the end, with a "firing" marker.
    seen: datetime | None = None

    def __post_init__(self) -> None:
        if not self.source or not str(self.key):
            raise ValueError("event needs a source and a key")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {self.status!r}")
        _check_when("start", self.start)
        if self.end is not None:
            _check_when("end", self.end)
            if isinstance(self.start, datetime) != isinstance(self.end, datetime):
                raise ValueError("start and end must both be dates or both be datetimes")
            # compare instants: two times in one zone compare by wall clock, which is wrong
            # around DST changes (02:50 + 20 min in a spring-forward gap ends before it starts)
            if _instant(self.end) < _instant(self.start):
                raise ValueError(f"end {self.end.isoformat()} is before start {self.start.isoformat()}")
        if self.seen is not None:
            if not isinstance(self.seen, datetime) or not isinstance(self.start, datetime):
                raise ValueError("seen is a datetime, for events with a start time")
            _check_when("seen", self.seen)

    @property
    def ongoing(self) -> bool:
        """Still going on as its origin last reported it (a firing alert): open, and seen."""
        return self.end is None and self.seen is not None

    @property
    def all_day(self) -> bool:
        return not isinstance(self.start, datetime)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, the way the store keeps it (``seen`` only when set, so that the
        content hash of every other event is what it was before the field existed)."""
        out: dict[str, Any] = {
            "source": self.source,
            "key": str(self.key),
            "kind": self.kind,
            "title": self.title,
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end is not None else None,
            "detail": self.detail,
            "url": self.url,
            "account": self.account,
            "status": self.status,
            "severity": self.severity,
            "attrs": dict(self.attrs),
            "rrule": self.rrule,
            "alarm_before": self.alarm_before.total_seconds() if self.alarm_before else None,
        }
        if self.seen is not None:
            out["seen"] = self.seen.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(**_fields(data))

    @classmethod
    def from_checked_dict(cls, data: Mapping[str, Any]) -> Event:
        """``from_dict`` without re-running the checks: for what ``to_dict`` of a checked
        Event wrote (stored rows; insights and renders decode every event of an account, and
        the checks cost as much as the JSON)."""
        ev = object.__new__(cls)
        ev.__dict__.update(_fields(data))
        return ev

    @classmethod
    def mapped(cls, source: str, key: str, kind: str, title: str, start: datetime | date,
               end: datetime | date | None, detail: str, url: str | None, account: str | None,
               status: str, severity: str | None, attrs: dict[str, Any], rrule: str | None) -> Event:
        """The Event of a mapped record (``seen`` and ``alarm_before`` None), the same as the
        constructor's: its checks are run only where they could fail. A mapping's times are
        mostly UTC datetimes (or dates) in order, for which the checks cost more than the rest
        of building the Event (a first import builds 100,000s)."""
        if (source and key and status in STATUSES and start.tzinfo is timezone.utc  # type: ignore[union-attr]
                and (end is None or (type(end) is datetime and end.tzinfo is timezone.utc and end >= start))
                if type(start) is datetime else
                source and key and status in STATUSES and type(start) is date
                and (end is None or (type(end) is date and end >= start))):  # type: ignore[operator]
            ev = object.__new__(cls)
            ev.__dict__.update(source=source, key=key, kind=kind, title=title, start=start, end=end,
                               detail=detail, url=url, account=account, status=status, severity=severity,
                               attrs=attrs, rrule=rrule, alarm_before=None, seen=None)
            return ev
        return cls(source=source, key=key, kind=kind, title=title, start=start, end=end, detail=detail,
                   url=url, account=account, status=status, severity=severity,  # type: ignore[arg-type]
                   attrs=attrs, rrule=rrule)

    def bounded(self, max_title: int, max_detail: int) -> Event:
        """This event with its text cut to what a feed shows (``feeds.max_title`` and
        ``max_detail``), so that the store never keeps, reloads or hashes more.

        The cut is a function of the input only: the same record cuts to the same text on
        every poll, so its content hash, and with it SEQUENCE, stays put. Attribute values
        are cut like the detail, and an URL longer than :data:`MAX_URL` (no calendar
        opens it) is dropped.
        """
        attrs = self.attrs
        if (len(self.title) <= max_title and len(self.detail) <= max_detail
                and (self.url is None or len(self.url) <= MAX_URL) and type(attrs) is dict
                and len(attrs) <= MAX_ATTR_ITEMS
                and all(type(v) is str and len(v) <= max_detail for v in attrs.values())):
            return self  # the usual case: nothing to cut (what the general path below finds too)
        title, detail = cut_text(self.title, max_title), cut_text(self.detail, max_detail)
        url = self.url if self.url is None or len(self.url) <= MAX_URL else None
        attrs = _bounded_value(self.attrs, max_detail)
        if title is self.title and detail is self.detail and url is self.url and attrs is self.attrs:
            return self
        return replace(self, title=title, detail=detail, url=url, attrs=attrs)

    def content_hash(self) -> str:
        """Hash of everything a client sees; a change bumps SEQUENCE and LAST-MODIFIED."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def seen_until(now: datetime) -> datetime:
    """When an ongoing event seen at ``now`` shows as ending: the next full hour (UTC).

    Rounded up, never down, so the feed's end is never before the last sighting; rounded
    at all so that polls every minute change the stored event (and its SEQUENCE) about
    once an hour, not on every poll."""
    utc = now.astimezone(timezone.utc)
    return utc.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


#: longest URL an event keeps (render publishes far shorter ones only)
MAX_URL = 8192
#: most items an attribute list or mapping keeps
MAX_ATTR_ITEMS = 1000


def cut_text(value: str, limit: int) -> str:
    """At most ``limit`` characters, cut with "…" the way render cuts (then a no-op)."""
    if len(value) <= limit:
        return value
    return value[: limit - 1].rstrip() + "…"


def _bounded_value(value: Any, limit: int) -> Any:
    """Strings cut to ``limit``, containers to MAX_ATTR_ITEMS, the same object when nothing is cut."""
    if isinstance(value, str):
        return cut_text(value, limit)
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_ATTR_ITEMS]
        out = {k: _bounded_value(v, limit) for k, v in items}
        same = len(items) == len(value) and all(out[k] is v for k, v in items)
        return value if same else out
    if isinstance(value, (list, tuple)):
        kept = [_bounded_value(v, limit) for v in value[:MAX_ATTR_ITEMS]]
        same = len(kept) == len(value) and all(a is b for a, b in zip(kept, value, strict=False))
        return value if same else kept
    return value


def _instant(value: datetime | date) -> float | date:
    return value.timestamp() if isinstance(value, datetime) else value


def _check_when(name: str, value: object) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} {value.isoformat()} has no timezone")
    elif not isinstance(value, date):
        raise ValueError(f"{name} must be a date or datetime, not {type(value).__name__}")


def _fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The Event fields ``to_dict`` wrote, decoded: one decoder for checked and unchecked use."""
    parse = date.fromisoformat if "T" not in data["start"] else datetime.fromisoformat
    alarm = data.get("alarm_before")
    return dict(
        source=data["source"], key=data["key"], kind=data["kind"], title=data["title"],
        start=parse(data["start"]),
        end=parse(data["end"]) if data.get("end") else None,
        detail=data.get("detail") or "", url=data.get("url"), account=data.get("account"),
        status=data.get("status") or "confirmed", severity=data.get("severity"),
        attrs=data.get("attrs") or {}, rrule=data.get("rrule"),
        alarm_before=timedelta(seconds=alarm) if alarm else None,
        seen=datetime.fromisoformat(data["seen"]) if data.get("seen") else None,
    )
