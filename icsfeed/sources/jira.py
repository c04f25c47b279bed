"""Jira issues as ticket events, from the JQL search of Jira Cloud (v3) or Server/DC (v2).

Each issue the configured JQL matches becomes one ``ticket`` event at its ``created``
time, titled ``#OPS-1234 Disk full`` and linked to ``{base_url}/browse/OPS-1234``.

The source is incremental: a poll asks only for issues updated since the last one,
``(<jql>) AND updated >= "yyyy/MM/dd HH:mm" ORDER BY updated ASC, key ASC``. The resume
point is the newest ``updated`` seen (kept in ``self.cursor``, Jira's own clock), else
the poller's ``since``, else ``lookback_days`` ago. JQL reads an absolute date in the
*time zone of the user the credentials belong to* (their Jira profile), so the date is
written in ``timezone`` (set it to that user's zone) and moved back by ``overlap``
to absorb a wrong guess, DST and clock skew; re-fetching an issue is harmless (the
store upserts by key). ``since_style: relative`` sends ``updated >= -<N>m`` instead,
which Jira evaluates against its own "now" and needs no time zone at all.

Jira never reports deleted issues in a search: a deleted issue stays in the calendar as
last seen (``absence = keep``). Resolved issues (status category ``done``) stay too: a
ticket happened, whatever became of it.

API references: Jira Cloud "Search for issues using JQL enhanced search (POST)"
``POST /rest/api/3/search/jql`` (``nextPageToken``/``isLast``), and Jira Server/Data
Center (and legacy Cloud) "Search for issues using JQL (POST)" ``POST /rest/api/2/search``
(``startAt``/``maxResults``/``total``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from icsfeed.model import Event
from icsfeed.sources.base import KindInfo, Source, SourceError, SourceSettings
from icsfeed.sources.http import HttpSettings, fetch, make_session, safe_url
from icsfeed.sources.mapping import RecordError, lookup, parse_when, render_value

log = logging.getLogger(__name__)

#: Jira priority names (Cloud defaults and the classic Server scheme) -> severity words
DEFAULT_PRIORITY_MAP: dict[str, str] = {
    "highest": "critical", "blocker": "critical", "critical": "critical",
    "high": "high", "major": "major",
    "medium": "medium",
    "low": "low", "minor": "minor",
    "lowest": "info", "trivial": "info",
}

#: fields every search asks for (plus the top-level field of ``account_field``)
BASE_FIELDS = ("summary", "status", "created", "updated", "priority", "reporter", "assignee",
               "project", "issuetype")


class JiraSettings(HttpSettings, SourceSettings):
    """Settings of a ``type: jira`` source (plus timeout/retries/verify_tls/headers/auth)."""

    #: site root, e.g. https://acme.atlassian.net or https://jira.example.com/jira
    base_url: str
    #: where people open issues, when it differs from the API root (OAuth via api.atlassian.com)
    browse_url: str | None = None
    #: v3: Jira Cloud's /rest/api/3/search/jql; v2: Server/Data Center /rest/api/2/search
    api: Literal["v3", "v2"] = "v3"
    #: which issues (an ORDER BY in it is replaced: polls page by ``updated``)
    jql: str = ""
    #: where the customer key is: a dotted path into the issue ("fields.customfield_10042")
    account_field: str = "fields.project.key"
    #: time zone of the API user's Jira profile, in which JQL reads dates (default: server's)
    timezone: str | None = None
    #: how the incremental clause is written: absolute date (in ``timezone``) or minutes ago
    since_style: Literal["absolute", "relative"] = "absolute"
    #: seconds the resume point is moved back (time zone doubt, DST, clock skew)
    overlap: int = Field(default=3600, ge=0, le=7 * 86400)
    #: how far back the first poll looks (days of ``updated``)
    lookback_days: int = Field(default=90, ge=1, le=3650)
    page_size: int = Field(default=100, ge=1, le=1000)
    #: most pages per poll; the rest follows on the next poll (results are in updated order)
    max_pages: int = Field(default=20, ge=1, le=1000)
    #: most seconds per poll spent paging, same effect as max_pages
    max_duration: float = Field(default=300, gt=0, le=3600)
    #: priority name (lower-case) -> severity word; unmapped names pass through
    priority_map: dict[str, str] = Field(default_factory=dict)
    #: the event kind (a timed kind unless configured otherwise)
    kind: str = "ticket"

    @field_validator("base_url", "browse_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            _zone(value)
        return value

    @field_validator("account_field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", value.strip()):
            raise ValueError("must be a dotted path such as fields.project.key")
        return value.strip()

    @field_validator("priority_map")
    @classmethod
    def _lower_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {str(k).strip().lower(): str(v) for k, v in value.items()}


class JiraSource(Source):
    """Jira issues matched by JQL -> ticket events at their creation time."""

    type_name = "jira"
    Settings = JiraSettings
    absence = "keep"
    incremental = True

    settings: JiraSettings

    def fetch(self, since: datetime | None) -> list[Event]:
        s = self.settings
        self.skipped = []
        kind_info = self.kind_info(s.kind)
        jql = self.build_jql(self._resume_point(since), now=datetime.now(UTC))
        session = make_session(s)
        issues: list[Any] = []
        try:
            pages = self._pages_v3(session, jql) if s.api == "v3" else self._pages_v2(session, jql)
            for page in pages:
                issues.extend(page)
        finally:
            session.close()

        events: dict[str, Event] = {}
        newest: datetime | None = None
        for issue in issues:
            if not isinstance(issue, Mapping):
                self.skip(issue, f"issue is a {type(issue).__name__}, not an object")
                continue
            updated = _optional_time(lookup(issue, "fields.updated"))
            if updated is not None and (newest is None or updated > newest):
                newest = updated
            try:
                event = self.to_event(issue, kind_info)
            except (RecordError, ValueError, TypeError) as exc:
                self.skip(issue, str(exc) or type(exc).__name__)
                continue
            events.pop(event.key, None)  # an issue updated while paging: the later state wins
            events[event.key] = event
        if newest is not None:
            newest = min(newest, datetime.now(UTC))  # one future-dated issue must not skip real updates
            old = _optional_time(self.cursor)
            if old is None or newest > old:
                self.cursor = newest.astimezone(UTC).isoformat()
        return list(events.values())

    # --- the query ---------------------------------------------------------------------------

    def _resume_point(self, since: datetime | None) -> datetime:
        """Newest update seen (Jira's clock), else the poller's since, else the lookback."""
        point = _optional_time(self.cursor) or since
        if point is None:
            return datetime.now(UTC) - timedelta(days=self.settings.lookback_days)
        if point.tzinfo is None:
            point = point.replace(tzinfo=UTC)
        return point

    def build_jql(self, resume: datetime, now: datetime) -> str:
        """``(jql) AND updated >= ... ORDER BY updated ASC, key ASC``."""
        s = self.settings
        start = resume - timedelta(seconds=s.overlap)
        if s.since_style == "relative":
            minutes = max(1, math.ceil((now - start).total_seconds() / 60))
            clause = f"updated >= -{minutes}m"
        else:
            zone = _zone(s.timezone or self.context.default_timezone)
            local = start.astimezone(zone)
            clause = f'updated >= "{local:%Y/%m/%d %H:%M}"'
        user = strip_order_by(s.jql).strip()
        where = f"({user}) AND {clause}" if user else clause
        return f"{where} ORDER BY updated ASC, key ASC"

    def _fields(self) -> list[str]:
        fields = list(BASE_FIELDS)
        parts = self.settings.account_field.split(".")
        if parts[0] == "fields" and len(parts) > 1 and parts[1] not in fields:
            fields.append(parts[1])
        return fields

    # --- paging ------------------------------------------------------------------------------

    def _post(self, session: Any, url: str, body: dict[str, Any]) -> Mapping[str, Any]:
        s = self.settings
        data = fetch(session, "POST", url, timeout=s.timeout, max_bytes=s.max_bytes, json=body).json()
        if not isinstance(data, Mapping) or not isinstance(data.get("issues"), list):
            raise SourceError(f"{safe_url(url)}: unexpected answer (no list of issues)")
        return data

    def _budget(self) -> tuple[int, float]:
        return self.settings.max_pages, time.monotonic() + self.settings.max_duration

    def _pages_v3(self, session: Any, jql: str) -> Any:
        """Pages of POST /rest/api/3/search/jql, following nextPageToken until isLast."""
        s = self.settings
        url = f"{s.base_url}/rest/api/3/search/jql"
        max_pages, deadline = self._budget()
        token: str | None = None
        seen: set[str] = set()
        for number in range(1, max_pages + 1):
            body: dict[str, Any] = {"jql": jql, "maxResults": s.page_size, "fields": self._fields()}
            if token:
                body["nextPageToken"] = token
            data = self._post(session, url, body)
            yield data["issues"]
            token = data.get("nextPageToken")
            if data.get("isLast") is True or not token:
                return
            if not isinstance(token, str) or token in seen:
                raise SourceError(f"{safe_url(url)}: paging does not advance (nextPageToken repeats)")
            seen.add(token)
            if time.monotonic() > deadline:
                self._truncated(number, "max_duration")
                return
        self._truncated(max_pages, "max_pages")

    def _pages_v2(self, session: Any, jql: str) -> Any:
        """Pages of POST /rest/api/2/search, by startAt until total is reached."""
        s = self.settings
        url = f"{s.base_url}/rest/api/2/search"
        max_pages, deadline = self._budget()
        start_at = 0
        for number in range(1, max_pages + 1):
            body = {"jql": jql, "startAt": start_at, "maxResults": s.page_size, "fields": self._fields()}
            data = self._post(session, url, body)
            issues = data["issues"]
            yield issues
            total = data.get("total")
            start_at += len(issues)
            if not issues or not isinstance(total, int) or start_at >= total:
                return
            if time.monotonic() > deadline:
                self._truncated(number, "max_duration")
                return
        self._truncated(max_pages, "max_pages")

    def _truncated(self, pages: int, limit: str) -> None:
        log.warning("source %s: stopped after %d page(s) (%s); the next poll continues from the "
                    "newest update seen", self.id, pages, limit)

    # --- issue -> event ----------------------------------------------------------------------

    def to_event(self, issue: Mapping[str, Any], kind_info: KindInfo) -> Event:
        s = self.settings
        key = issue.get("key")
        if not isinstance(key, str) or not key.strip():
            raise RecordError("issue has no key")
        key = key.strip()
        fields = issue.get("fields")
        if not isinstance(fields, Mapping):
            raise RecordError("issue has no fields")
        created_raw = fields.get("created")
        if created_raw in (None, ""):
            raise RecordError("issue has no created date")
        account = _display(render_value(issue, s.account_field))
        tz = self.context.timezone_for(account, s.timezone)
        created = parse_when(created_raw, tz)
        if not isinstance(created, datetime):
            raise RecordError(f"created is a date without time: {created_raw!r}")

        summary = str(fields.get("summary") or "").strip() or "(no summary)"
        status = _name(fields.get("status"))
        category = lookup(fields, "status.statusCategory.key")
        priority = _name(fields.get("priority"))
        reporter = _user(fields.get("reporter"))
        assignee = _user(fields.get("assignee"))
        issue_type = _name(fields.get("issuetype"))
        updated = _optional_time(fields.get("updated"))

        severity = None
        if priority:
            severity = s.priority_map.get(priority.lower()) or DEFAULT_PRIORITY_MAP.get(priority.lower()) or priority.lower()

        browse = s.browse_url or s.base_url
        url = f"{browse}/browse/{key}"
        lines = [f"Status: {status or 'unknown'}"]
        if issue_type:
            lines.append(f"Type: {issue_type}")
        lines.append(f"Priority: {priority or 'none'}")
        lines.append(f"Reporter: {reporter or 'unknown'}")
        lines.append(f"Assignee: {assignee or 'unassigned'}")
        if updated is not None:
            lines.append(f"Updated: {updated.astimezone(UTC):%Y-%m-%d %H:%M} UTC")

        start, end = kind_info.span(created, tz)
        attrs = {k: v for k, v in {
            "status": status, "status_category": category if isinstance(category, str) else None,
            "priority": priority, "issue_type": issue_type,
            "project": _display(render_value(fields, "project.key")),
            "reporter": reporter, "assignee": assignee,
            "updated": updated.astimezone(UTC).isoformat() if updated is not None else None,  # stale-ticket insights
        }.items() if v}
        return Event(
            source=self.id, key=key, kind=s.kind, title=f"#{key} {summary}",
            start=start, end=end, detail="\n".join(lines), url=url, account=account,
            status="confirmed", severity=severity, attrs=attrs,
        )


# --- helpers ---------------------------------------------------------------------------------

def strip_order_by(jql: str) -> str:
    """The JQL without a trailing ORDER BY clause (quotes respected)."""
    quote: str | None = None
    i = 0
    while i < len(jql):
        ch = jql[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "oO" and re.match(r"order\s+by\b", jql[i:], re.IGNORECASE) and (i == 0 or not (jql[i - 1].isalnum() or jql[i - 1] == "_")):
            return jql[:i].rstrip()
        i += 1
    return jql


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def _optional_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _name(value: Any) -> str | None:
    if isinstance(value, Mapping):
        name = value.get("name")
        return str(name) if name not in (None, "") else None
    return None


def _user(value: Any) -> str | None:
    if isinstance(value, Mapping):
        for key in ("displayName", "name", "emailAddress"):
            if value.get(key):
                return str(value[key])
    return None


def _display(value: Any) -> str | None:
    """An account key from a field value: text, number, an option ({value}/{name}/{key}) or a list."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        for key in ("value", "name", "key", "id"):
            if value.get(key) not in (None, ""):
                value = value[key]
                break
        else:
            return None
    if value is None or isinstance(value, (bool, Mapping, list)):
        return None
    text = str(value).strip()
    return text or None
