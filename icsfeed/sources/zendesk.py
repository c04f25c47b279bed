"""Zendesk Support tickets as ticket events, from the cursor-based incremental export.

Each ticket becomes one ``ticket`` event at its ``created_at``, titled ``#1234 subject``
and linked to ``https://{subdomain}.zendesk.com/agent/tickets/1234``.

Polling uses Zendesk's "Incremental Ticket Export, Cursor Based"
(``GET /api/v2/incremental/tickets/cursor.json``): the first poll sends ``start_time``
(the poller's ``since``, else ``lookback_days`` ago), every page answers ``tickets``,
``after_cursor`` and ``end_of_stream``, and the last ``after_cursor`` is kept in
``self.cursor`` so that the next poll asks for what changed after it. Pages are
requested with ``cursor=`` against the configured host, never by following
``after_url`` (credentials stay with the host they were configured for).

The export includes deleted tickets with ``status: "deleted"``: those become
STATUS:CANCELLED. Solved and closed tickets stay confirmed: the ticket happened.
Nothing else ever disappears from an incremental export, so ``absence = keep``.

Accounts come from the ticket's ``organization_id``: an explicit ``organizations``
map (id -> account key) wins; other ids are looked up once per poll with
``GET /api/v2/organizations/show_many.json?ids=...`` (up to 100 per request) and the
organization's ``name`` (or ``external_id``) is used; ``account_from: id`` uses the id
itself and makes no extra request.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from icsfeed.model import Event
from icsfeed.sources.base import KindInfo, Source, SourceError, SourceSettings
from icsfeed.sources.http import HttpAuth, HttpSettings, get_json, make_session, safe_url
from icsfeed.sources.mapping import RecordError, parse_when

log = logging.getLogger(__name__)

EXPORT_PATH = "/api/v2/incremental/tickets/cursor.json"
ORGANIZATIONS_PATH = "/api/v2/organizations/show_many.json"
#: Zendesk refuses a start_time within the last minute
MIN_AGE_SECONDS = 61
SHOW_MANY_LIMIT = 100


class ZendeskSettings(HttpSettings, SourceSettings):
    """Settings of a ``type: zendesk`` source (plus timeout/retries/verify_tls/headers/auth)."""

    #: the account's subdomain: acme for https://acme.zendesk.com
    subdomain: str | None = None
    #: the site root instead of the subdomain (a host-mapped domain, or a test server)
    base_url: str | None = None
    #: API token auth: sent as basic auth "{email}/token" : api_token
    email: str | None = None
    api_token: SecretStr | None = None
    #: organization id -> account key; wins over the looked-up organization
    organizations: dict[str, str] = Field(default_factory=dict)
    #: what of an organization not in ``organizations`` becomes the account key
    account_from: Literal["name", "external_id", "id"] = "name"
    #: how far back the first poll looks (days)
    lookback_days: int = Field(default=90, ge=1, le=3650)
    #: most export pages per poll; the rest follows on the next poll (cursor)
    max_pages: int = Field(default=20, ge=1, le=1000)
    #: most seconds per poll spent paging, same effect as max_pages
    max_duration: float = Field(default=300, gt=0, le=3600)
    #: priority (urgent/high/normal/low) -> severity word; unmapped pass through
    priority_map: dict[str, str] = Field(default_factory=dict)
    kind: str = "ticket"

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value.strip()):
            raise ValueError("must be the bare subdomain, e.g. acme for acme.zendesk.com")
        return value.strip().lower() if value else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("organizations", mode="before")
    @classmethod
    def _string_ids(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k).strip(): str(v) for k, v in value.items()}
        return value

    @field_validator("priority_map")
    @classmethod
    def _lower_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {str(k).strip().lower(): str(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> ZendeskSettings:
        if not self.subdomain and not self.base_url:
            raise ValueError("set subdomain (or base_url)")
        if (self.email is None) != (self.api_token is None):
            raise ValueError("email and api_token go together")
        if self.email is not None and self.auth is not None:
            raise ValueError("use either email/api_token or auth, not both")
        return self

    @property
    def site(self) -> str:
        return self.base_url or f"https://{self.subdomain}.zendesk.com"

    def http(self) -> HttpSettings:
        """The connection settings, with email/api_token turned into basic auth."""
        if self.email is not None and self.api_token is not None:
            auth = HttpAuth(username=f"{self.email}/token", password=self.api_token)
            return self.model_copy(update={"auth": auth})
        return self


class ZendeskSource(Source):
    """Zendesk tickets changed since the last poll -> ticket events at their creation."""

    type_name = "zendesk"
    Settings = ZendeskSettings
    absence = "keep"
    incremental = True

    settings: ZendeskSettings

    def fetch(self, since: datetime | None) -> list[Event]:
        s = self.settings
        self.skipped = []
        kind_info = self.kind_info(s.kind)
        session = make_session(s.http())
        try:
            tickets, cursor = self._export(session, since)
            names = self._organization_keys(session, tickets)
        finally:
            session.close()

        events: dict[str, Event] = {}
        for ticket in tickets:
            try:
                event = self.to_event(ticket, names, kind_info)
            except (RecordError, ValueError, TypeError) as exc:
                self.skip(ticket, str(exc) or type(exc).__name__)
                continue
            events.pop(event.key, None)  # a ticket on two pages: the later state wins
            events[event.key] = event
        if cursor:
            self.cursor = cursor
        return list(events.values())

    # --- export paging -------------------------------------------------------------------------

    def _start_time(self, since: datetime | None) -> int:
        now = datetime.now(UTC)
        start = since if since is not None else now - timedelta(days=self.settings.lookback_days)
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        latest = now - timedelta(seconds=MIN_AGE_SECONDS)
        return int(min(start, latest).timestamp())

    def _export(self, session: Any, since: datetime | None) -> tuple[list[Any], str | None]:
        """Every exported ticket up to end_of_stream (or the page/time budget), and the cursor."""
        s = self.settings
        url = f"{s.site}{EXPORT_PATH}"
        params: dict[str, Any] = {"cursor": self.cursor} if self.cursor else {"start_time": self._start_time(since)}
        deadline = time.monotonic() + s.max_duration
        tickets: list[Any] = []
        cursor: str | None = None
        for number in range(1, s.max_pages + 1):
            data = get_json(session, url, timeout=s.timeout, max_bytes=s.max_bytes, params=params)
            if not isinstance(data, Mapping) or not isinstance(data.get("tickets"), list):
                raise SourceError(f"{safe_url(url)}: unexpected answer (no list of tickets)")
            tickets.extend(data["tickets"])
            after = data.get("after_cursor")
            if after is not None and not isinstance(after, str):
                raise SourceError(f"{safe_url(url)}: unexpected after_cursor")
            if after:
                cursor = after
            if data.get("end_of_stream") is True:
                return tickets, cursor
            if not after:
                raise SourceError(f"{safe_url(url)}: end_of_stream is false but there is no after_cursor")
            if after == params.get("cursor"):
                raise SourceError(f"{safe_url(url)}: paging does not advance (after_cursor repeats)")
            params = {"cursor": after}
            if time.monotonic() > deadline:
                self._truncated(number, "max_duration")
                return tickets, cursor
        self._truncated(s.max_pages, "max_pages")
        return tickets, cursor

    def _truncated(self, pages: int, limit: str) -> None:
        log.warning("source %s: stopped after %d page(s) (%s); the next poll continues from the cursor",
                    self.id, pages, limit)

    # --- organizations -------------------------------------------------------------------------

    def _organization_keys(self, session: Any, tickets: list[Any]) -> dict[str, str]:
        """organization id -> account key for every organization the tickets name."""
        s = self.settings
        keys = dict(s.organizations)
        wanted = sorted({
            str(t["organization_id"]) for t in tickets
            if isinstance(t, Mapping) and isinstance(t.get("organization_id"), int)
            and not isinstance(t.get("organization_id"), bool) and str(t["organization_id"]) not in keys
        }, key=int)
        if s.account_from == "id" or not wanted:
            return keys
        url = f"{s.site}{ORGANIZATIONS_PATH}"
        for i in range(0, len(wanted), SHOW_MANY_LIMIT):
            chunk = wanted[i:i + SHOW_MANY_LIMIT]
            data = get_json(session, url, timeout=s.timeout, max_bytes=s.max_bytes, params={"ids": ",".join(chunk)})
            if not isinstance(data, Mapping) or not isinstance(data.get("organizations"), list):
                raise SourceError(f"{safe_url(url)}: unexpected answer (no list of organizations)")
            for org in data["organizations"]:
                if not isinstance(org, Mapping) or org.get("id") is None:
                    continue
                value = org.get(s.account_from)
                if value not in (None, ""):
                    keys[str(org["id"])] = str(value).strip()
        return keys

    # --- ticket -> event ----------------------------------------------------------------------

    def to_event(self, ticket: Any, org_keys: Mapping[str, str], kind_info: KindInfo) -> Event:
        s = self.settings
        if not isinstance(ticket, Mapping):
            raise RecordError(f"ticket is a {type(ticket).__name__}, not an object")
        ticket_id = ticket.get("id")
        if isinstance(ticket_id, bool) or not isinstance(ticket_id, (int, str)) or not str(ticket_id).strip():
            raise RecordError("ticket has no id")
        key = str(ticket_id).strip()
        created_raw = ticket.get("created_at")
        if created_raw in (None, ""):
            raise RecordError("ticket has no created_at")

        org_id = ticket.get("organization_id")
        account = None
        if org_id is not None and not isinstance(org_id, bool):
            account = org_keys.get(str(org_id), str(org_id))
        tz = self.context.timezone_for(account)
        created = parse_when(created_raw, tz)
        if not isinstance(created, datetime):
            raise RecordError(f"created_at is a date without time: {created_raw!r}")

        subject = str(ticket.get("subject") or ticket.get("raw_subject") or "").strip() or "(no subject)"
        status_word = str(ticket.get("status") or "").strip().lower()
        priority = str(ticket.get("priority") or "").strip().lower() or None
        severity = (s.priority_map.get(priority) or priority) if priority else None
        ticket_type = str(ticket.get("type") or "").strip() or None
        tags = [str(t) for t in ticket.get("tags") or [] if isinstance(t, (str, int))]
        updated = _optional_time(ticket.get("updated_at"))

        lines = [f"Status: {status_word or 'unknown'}", f"Priority: {priority or 'none'}"]
        if ticket_type:
            lines.append(f"Type: {ticket_type}")
        if tags:
            lines.append(f"Tags: {', '.join(tags)}")
        if updated is not None:
            lines.append(f"Updated: {updated.astimezone(UTC):%Y-%m-%d %H:%M} UTC")

        start, end = kind_info.span(created, tz)
        attrs = {k: v for k, v in {
            "status": status_word or None, "priority": priority, "type": ticket_type,
            "tags": tags or None, "organization_id": org_id, "group_id": ticket.get("group_id"),
            "updated": updated.astimezone(UTC).isoformat() if updated is not None else None,  # stale-ticket insights
        }.items() if v is not None}
        return Event(
            source=self.id, key=key, kind=s.kind, title=f"#{key} {subject}",
            start=start, end=end, detail="\n".join(lines),
            url=f"{s.site}/agent/tickets/{key}", account=account,
            status="cancelled" if status_word == "deleted" else "confirmed",
            severity=severity, attrs=attrs,
        )


def _optional_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
