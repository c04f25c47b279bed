"""The zendesk source against a local fake of Zendesk's documented Support API.

Zendesk cannot run here, so a real HTTP server on 127.0.0.1 answers with the shapes of
Zendesk's public API reference, copied field for field:

* "Incremental Ticket Export, Cursor Based",
  ``GET /api/v2/incremental/tickets/cursor.json?start_time=<unix>`` then ``?cursor=<after_cursor>``;
  each page ``{after_cursor, after_url, before_cursor, before_url, end_of_stream, tickets}``;
  deleted tickets are included with ``status: "deleted"``; ``start_time`` must be at least a
  minute in the past —
  https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-ticket-export-cursor-based
  and https://developer.zendesk.com/documentation/ticketing/managing-tickets/using-the-incremental-export-api/
* The ticket object (``id, url, external_id, via, created_at, updated_at, type, subject,
  raw_subject, description, priority, status, recipient, requester_id, submitter_id,
  assignee_id, organization_id, group_id, collaborator_ids, follower_ids, tags,
  custom_fields, ...``; priority urgent/high/normal/low; status new/open/pending/hold/
  solved/closed) — https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/
* "Show Many Organizations", ``GET /api/v2/organizations/show_many?ids=1,2`` ->
  ``{organizations, next_page, previous_page, count}`` with the organization object
  (``id, url, name, external_id, domain_names, ...``) —
  https://developer.zendesk.com/api-reference/ticketing/organizations/organizations/#show-many-organizations
* API token auth is basic auth ``{email}/token:{api_token}`` —
  https://developer.zendesk.com/api-reference/introduction/security-and-auth/
* 429 with ``Retry-After`` — https://developer.zendesk.com/api-reference/introduction/rate-limits/
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import icalendar
import pytest
from fake_origins import FakeOrigin, RecordedRequest, Reply, json_response
from pydantic import ValidationError

from icsfeed.sources.base import KindInfo, SourceContext, SourceError
from icsfeed.sources.zendesk import ZendeskSource

EMAIL = "agent@acme-support.example"
API_TOKEN = "6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv-sekrit"
OAUTH = "gErypPlm4dOVgGRvA1ZzMH5MQ3nLo8bo-oauth-sekrit"
EXPORT = "/api/v2/incremental/tickets/cursor.json"
SHOW_MANY = "/api/v2/organizations/show_many.json"

KINDS = {
    "ticket": KindInfo(all_day=False, duration_seconds=900),
    "insight": KindInfo(all_day=True, duration_seconds=86400),
}


# --- documented shapes ---------------------------------------------------------------------------

def ticket(site: str, tid: int, subject: str | None, *, created: str | None, updated: str,
           status: str = "open", priority: str | None = "high", org: int | None = 509974,
           ticket_type: str | None = "incident", tags: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "url": f"{site}/api/v2/tickets/{tid}.json",
        "id": tid,
        "external_id": None,
        "via": {"channel": "web", "source": {"from": {}, "to": {}, "rel": None}},
        "created_at": created,
        "updated_at": updated,
        "generated_timestamp": int(datetime.fromisoformat(updated).timestamp()),
        "type": ticket_type,
        "subject": subject,
        "raw_subject": subject,
        "description": "The fire is very colorful.",
        "priority": priority,
        "status": status,
        "recipient": "support@company.com",
        "requester_id": 20978392,
        "submitter_id": 76872,
        "assignee_id": 235323,
        "organization_id": org,
        "group_id": 98738,
        "collaborator_ids": [35334, 234],
        "follower_ids": [35334, 234],
        "email_cc_ids": [],
        "forum_topic_id": None,
        "problem_id": None,
        "has_incidents": False,
        "is_public": True,
        "due_at": None,
        "tags": tags if tags is not None else ["enterprise", "other_tag"],
        "custom_fields": [{"id": 27642, "value": "745"}, {"id": 27648, "value": "yes"}],
        "satisfaction_rating": None,
        "sharing_agreement_ids": [],
        "fields": [{"id": 27642, "value": "745"}, {"id": 27648, "value": "yes"}],
        "followup_ids": [],
        "brand_id": 1234,
        "allow_channelback": False,
        "allow_attachments": True,
    }
    if created is None:
        del data["created_at"]
    return data


def organization(site: str, oid: int, name: str, external_id: str | None) -> dict[str, Any]:
    return {
        "url": f"{site}/api/v2/organizations/{oid}.json",
        "id": oid,
        "name": name,
        "shared_tickets": False,
        "shared_comments": False,
        "external_id": external_id,
        "created_at": "2018-11-14T00:14:52Z",
        "updated_at": "2018-11-14T00:54:22Z",
        "domain_names": ["remain.com"],
        "details": "",
        "notes": "",
        "group_id": None,
        "tags": ["smiley"],
        "organization_fields": {},
    }


def export_pages(origin: FakeOrigin, pages: list[list[dict[str, Any]]], *, fail_at: int | None = None,
                 fail: Reply | None = None) -> list[str]:
    """The cursor-based export as documented: start_time (or cursor) -> page + after_cursor."""
    cursors = [f"MTU3NjYxMzUzOS4wfHw0Njd8-{i}" for i in range(1, len(pages) + 1)]

    def handler(req: RecordedRequest) -> Reply:
        cursor = req.arg("cursor")
        if cursor is None:
            if req.arg("start_time") is None:
                return json_response({"error": "InvalidValue", "description": "start_time is required"}, 400)
            index = 0
        elif cursor in cursors[:-1]:
            index = cursors.index(cursor) + 1
        else:
            return json_response({"error": "InvalidPaginationParameter", "description": "Invalid cursor"}, 400)
        if fail_at is not None and index == fail_at and fail is not None:
            return fail
        after = cursors[index]
        return json_response({
            "after_cursor": after,
            "after_url": f"{origin.url}{EXPORT}?cursor={after}",
            "before_cursor": None if index == 0 else cursors[index - 1],
            "before_url": None if index == 0 else f"{origin.url}{EXPORT}?cursor={cursors[index - 1]}",
            "end_of_stream": index == len(pages) - 1,
            "tickets": pages[index],
        })

    origin.route("GET", EXPORT, handler)
    return cursors


def show_many(origin: FakeOrigin, orgs: list[dict[str, Any]]) -> None:
    def handler(req: RecordedRequest) -> Reply:
        ids = {int(x) for x in (req.arg("ids") or "").split(",") if x}
        found = [o for o in orgs if o["id"] in ids]
        return json_response({"organizations": found, "next_page": None, "previous_page": None, "count": len(found)})

    origin.route("GET", SHOW_MANY, handler)


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def origin() -> Any:
    with FakeOrigin() as fake:
        yield fake


@pytest.fixture
def context(tmp_path: Path) -> SourceContext:
    return SourceContext(config_dir=tmp_path, data_dir=tmp_path, kinds=KINDS, default_timezone="UTC",
                         account_timezones={"acme corp": "America/New_York"})


def make(origin: FakeOrigin, context: SourceContext, **raw: Any) -> ZendeskSource:
    settings: dict[str, Any] = {"base_url": origin.url, "email": EMAIL, "api_token": API_TOKEN,
                                "retries": 0, "timeout": 5}
    settings.update(raw)
    return ZendeskSource("zd", ZendeskSource.parse_settings(settings), context)


def five_tickets(site: str) -> list[dict[str, Any]]:
    return [
        ticket(site, 1230, "Printer on fire", created="2024-03-01T08:15:00Z", updated="2024-03-01T09:00:00Z", priority="urgent"),
        ticket(site, 1231, "Backup missing", created="2024-03-02T10:00:00Z", updated="2024-03-03T11:00:00Z", status="solved", priority="normal", org=6061),
        ticket(site, 1232, "Spam", created="2024-03-04T12:30:00Z", updated="2024-03-04T12:31:00Z", status="deleted", priority=None, org=None),
        ticket(site, 1233, None, created="2024-03-05T07:00:00Z", updated="2024-03-06T07:00:00Z", status="closed", priority="low", org=777, tags=[]),
        ticket(site, 1234, "Disk full", created="2024-03-07T23:59:59Z", updated="2024-03-08T00:10:00Z", ticket_type=None),
    ]


ORGS = [(509974, "ACME Corp", "acme"), (6061, "Globex", None)]


# --- paging and mapping ---------------------------------------------------------------------------

def test_three_pages_become_events_and_the_cursor_is_kept(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    cursors = export_pages(origin, [tickets[:2], tickets[2:4], tickets[4:]])
    show_many(origin, [organization(origin.url, *o) for o in ORGS])
    source = make(origin, context)
    since = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)

    events = source.fetch(since)

    assert [e.key for e in events] == ["1230", "1231", "1232", "1233", "1234"]
    first = events[0]
    assert first.title == "#1230 Printer on fire"
    assert first.kind == "ticket" and first.source == "zd"
    assert first.start == datetime(2024, 3, 1, 8, 15, tzinfo=UTC)
    assert first.end == first.start + timedelta(seconds=900)
    assert first.url == f"{origin.url}/agent/tickets/1230"
    assert first.account == "ACME Corp"
    assert first.severity == "urgent"
    assert first.status == "confirmed"
    assert "Status: open" in first.detail and "Priority: urgent" in first.detail
    assert "Type: incident" in first.detail and "Tags: enterprise, other_tag" in first.detail
    assert "Updated: 2024-03-01 09:00 UTC" in first.detail
    # solved/closed stay confirmed, deleted is cancelled
    assert [e.status for e in events] == ["confirmed", "confirmed", "cancelled", "confirmed", "confirmed"]
    assert events[1].account == "Globex" and events[1].severity == "normal"
    assert events[2].account is None and events[2].severity is None
    assert events[3].title == "#1233 (no subject)" and events[3].account == "777"  # unknown org: its id
    assert source.skipped == []

    exports = origin.requests_to(EXPORT)
    assert [r.arg("start_time") for r in exports] == [str(int(since.timestamp())), None, None]
    assert [r.arg("cursor") for r in exports] == [None, cursors[0], cursors[1]]
    assert source.cursor == cursors[2]
    expected = "Basic " + base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()
    assert exports[0].headers["Authorization"] == expected
    # organizations: one batched lookup per poll
    [lookup] = origin.requests_to(SHOW_MANY)
    assert lookup.arg("ids") == "777,6061,509974"


def test_next_poll_resumes_from_the_cursor(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    cursors = export_pages(origin, [tickets[:2], tickets[2:]])
    source = make(origin, context, account_from="id")
    source.cursor = cursors[0]

    events = source.fetch(datetime(2020, 1, 1, tzinfo=UTC))

    assert [e.key for e in events] == ["1232", "1233", "1234"]
    [request] = origin.requests_to(EXPORT)
    assert request.arg("cursor") == cursors[0] and request.arg("start_time") is None
    assert source.cursor == cursors[1]
    assert origin.requests_to(SHOW_MANY) == []  # account_from: id needs no lookup
    assert events[2].account == "509974"


def test_first_poll_without_since_looks_back_and_never_asks_for_the_last_minute(origin: FakeOrigin, context: SourceContext) -> None:
    export_pages(origin, [[]])
    source = make(origin, context, lookback_days=30)
    source.fetch(None)
    now = datetime.now(UTC).timestamp()
    start = int(origin.requests[0].arg("start_time") or 0)
    assert abs(start - (now - 30 * 86400)) < 5

    source = make(origin, context)
    source.fetch(datetime.now(UTC) - timedelta(seconds=5))
    start = int(origin.requests[-1].arg("start_time") or 0)
    assert start <= datetime.now(UTC).timestamp() - 60


def test_organization_map_wins_and_external_ids(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    export_pages(origin, [tickets])
    show_many(origin, [organization(origin.url, *o) for o in ORGS])
    source = make(origin, context, organizations={509974: "acme-key"}, account_from="external_id")

    events = source.fetch(None)

    assert [e.account for e in events] == ["acme-key", "6061", None, "777", "acme-key"]  # Globex has no external_id
    [lookup] = origin.requests_to(SHOW_MANY)
    assert lookup.arg("ids") == "777,6061"


def test_all_day_kind_uses_the_accounts_timezone(origin: FakeOrigin, context: SourceContext) -> None:
    export_pages(origin, [[ticket(origin.url, 1, "late", created="2024-03-02T03:30:00Z", updated="2024-03-02T03:30:00Z")]])
    show_many(origin, [organization(origin.url, *o) for o in ORGS])
    [event] = make(origin, context, kind="insight").fetch(None)
    assert event.account == "ACME Corp"
    assert event.start == date(2024, 3, 1) and event.end == date(2024, 3, 2)  # 22:30 in New York


def test_ticket_without_created_at_is_skipped_with_reason(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    export_pages(origin, [[
        ticket(site, 1, "no date", created=None, updated="2024-03-01T08:00:00Z"),
        ticket(site, 2, "bad date", created="last tuesday", updated="2024-03-01T08:00:00Z"),
        {"subject": "no id at all", "created_at": "2024-03-01T08:00:00Z"},
        "not a ticket",
        ticket(site, 5, "fine", created="2024-03-01T08:00:00Z", updated="2024-03-01T08:00:00Z"),
    ]])
    source = make(origin, context, account_from="id")

    events = source.fetch(None)

    assert [e.key for e in events] == ["5"]
    assert len(source.skipped) == 4
    assert "no created_at" in source.skipped[0]
    assert "not a date" in source.skipped[1]
    assert "no id" in source.skipped[2]
    assert "not an object" in source.skipped[3]


def test_a_ticket_on_two_pages_keeps_its_later_state(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    export_pages(origin, [
        [ticket(site, 7, "Outage", created="2024-03-01T08:00:00Z", updated="2024-03-01T08:00:00Z", status="open")],
        [ticket(site, 7, "Outage", created="2024-03-01T08:00:00Z", updated="2024-03-01T09:00:00Z", status="deleted")],
    ])
    [event] = make(origin, context, account_from="id").fetch(None)
    assert event.status == "cancelled"


def test_max_pages_stops_and_the_cursor_resumes(origin: FakeOrigin, context: SourceContext, caplog: pytest.LogCaptureFixture) -> None:
    tickets = five_tickets(origin.url)
    cursors = export_pages(origin, [tickets[:2], tickets[2:4], tickets[4:]])
    source = make(origin, context, max_pages=2, account_from="id")
    with caplog.at_level(logging.WARNING):
        events = source.fetch(None)
    assert [e.key for e in events] == ["1230", "1231", "1232", "1233"]
    assert source.cursor == cursors[1]
    assert "max_pages" in caplog.text

    events = source.fetch(None)  # the next poll picks up the rest
    assert [e.key for e in events] == ["1234"]
    assert source.cursor == cursors[2]


def test_oauth_bearer_and_subdomain_links(origin: FakeOrigin, context: SourceContext) -> None:
    settings = ZendeskSource.parse_settings({"subdomain": "Acme", "auth": {"token": OAUTH}})
    assert settings.site == "https://acme.zendesk.com"
    export_pages(origin, [five_tickets(origin.url)[:1]])
    source = make(origin, context, email=None, api_token=None, auth={"token": OAUTH}, account_from="id")
    [event] = source.fetch(None)
    assert origin.requests[0].headers["Authorization"] == f"Bearer {OAUTH}"
    assert event.url == f"{origin.url}/agent/tickets/1230"


# --- failures ------------------------------------------------------------------------------------

def secrets_absent(message: str) -> None:
    for secret in (API_TOKEN, OAUTH, base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()):
        assert secret not in message


def test_401_is_reported_as_authentication_failure(origin: FakeOrigin, context: SourceContext) -> None:
    origin.add("GET", EXPORT, json_response({"error": "Couldn't authenticate you"}, 401))
    source = make(origin, context)
    with pytest.raises(SourceError, match="authentication failed") as info:
        source.fetch(None)
    secrets_absent(str(info.value))
    assert source.cursor is None


def test_429_with_short_retry_after_is_retried(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    origin.add("GET", EXPORT, Reply(429, "Number of allowed incremental export API requests per minute exceeded",
                                    {"Retry-After": "1"}),
               json_response({"after_cursor": "abc", "after_url": f"{origin.url}{EXPORT}?cursor=abc",
                              "before_cursor": None, "before_url": None, "end_of_stream": True, "tickets": tickets[:1]}))
    source = make(origin, context, retries=2, account_from="id")
    started = time.monotonic()
    events = source.fetch(None)
    assert [e.key for e in events] == ["1230"] and source.cursor == "abc"
    assert len(origin.requests) == 2
    assert time.monotonic() - started >= 0.9


def test_429_with_long_retry_after_fails_fast(origin: FakeOrigin, context: SourceContext) -> None:
    origin.add("GET", EXPORT, Reply(429, "Too Many Requests", {"Retry-After": "93"}))
    started = time.monotonic()
    with pytest.raises(SourceError, match="rate limited") as info:
        make(origin, context, retries=2).fetch(None)
    assert time.monotonic() - started < 5
    secrets_absent(str(info.value))


def test_failure_on_page_three_returns_nothing(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    export_pages(origin, [tickets[:2], tickets[2:4], tickets[4:]], fail_at=2, fail=Reply(503, "Service Unavailable"))
    source = make(origin, context, account_from="id")
    with pytest.raises(SourceError, match=r"HTTP 503|gave up") as info:
        source.fetch(None)
    assert len(origin.requests) == 3
    assert source.cursor is None  # pages 1-2 are not half-stored
    secrets_absent(str(info.value))


def test_failing_organization_lookup_fails_the_poll(origin: FakeOrigin, context: SourceContext) -> None:
    tickets = five_tickets(origin.url)
    export_pages(origin, [tickets])
    origin.add("GET", SHOW_MANY, json_response({"error": "Forbidden"}, 403))
    source = make(origin, context)
    with pytest.raises(SourceError, match="authentication failed"):
        source.fetch(None)
    assert source.cursor is None


@pytest.mark.parametrize("reply, message", [
    (Reply(200, "<html>Help Center is closed</html>", {"Content-Type": "text/html"}), "not JSON"),
    (json_response({"end_of_stream": True}), "unexpected answer"),
    (json_response({"tickets": {"id": 1}, "end_of_stream": True}), "unexpected answer"),
    (json_response({"tickets": [], "end_of_stream": False, "after_cursor": None}), "no after_cursor"),
    (json_response({"tickets": [], "end_of_stream": False, "after_cursor": 12}), "after_cursor"),
])
def test_garbage_answer_is_a_source_error(origin: FakeOrigin, context: SourceContext, reply: Reply, message: str) -> None:
    origin.add("GET", EXPORT, reply)
    source = make(origin, context)
    with pytest.raises(SourceError, match=message) as info:
        source.fetch(None)
    secrets_absent(str(info.value))
    assert source.cursor is None


def test_repeating_cursor_is_an_error_not_a_loop(origin: FakeOrigin, context: SourceContext) -> None:
    origin.add("GET", EXPORT, json_response({"tickets": [], "end_of_stream": False, "after_cursor": "same",
                                            "after_url": f"{origin.url}{EXPORT}?cursor=same"}))
    with pytest.raises(SourceError, match="does not advance"):
        make(origin, context, max_pages=50).fetch(None)
    assert len(origin.requests) == 2


# --- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, problem", [
    ({}, "subdomain"),
    ({"subdomain": "acme.zendesk.com"}, "subdomain"),
    ({"subdomain": "acme", "email": EMAIL}, "api_token"),
    ({"subdomain": "acme", "email": EMAIL, "api_token": API_TOKEN, "auth": {"token": OAUTH}}, "either"),
    ({"subdomain": "acme", "account_from": "domain"}, "account_from"),
    ({"subdomain": "acme", "start_time": 0}, "start_time"),
])
def test_settings_are_validated(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        ZendeskSource.parse_settings(raw)
    assert API_TOKEN not in str(info.value) and OAUTH not in str(info.value)


def test_secret_is_not_in_settings_repr() -> None:
    settings = ZendeskSource.parse_settings({"subdomain": "acme", "email": EMAIL, "api_token": API_TOKEN})
    assert API_TOKEN not in repr(settings) and API_TOKEN not in repr(settings.http())


# --- end to end: CLI poll + render, feed parsed with icalendar ------------------------------------------

def run_cli(config_dir: Path, data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, **env, "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          capture_output=True, text=True, timeout=120, env=full_env, cwd=str(repo), check=False)


@pytest.mark.slow
def test_end_to_end_poll_render_and_deleted_ticket_is_cancelled(origin: FakeOrigin, tmp_path: Path) -> None:
    site = origin.url
    now = datetime.now(UTC).replace(microsecond=0)
    created1 = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    created2 = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    updated = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = [ticket(site, 101, "Printer on fire", created=created1, updated=updated, priority="urgent"),
             ticket(site, 102, "Password reset", created=created2, updated=updated, status="solved", priority="low")]
    second = [ticket(site, 101, "Printer on fire", created=created1, updated=updated, status="deleted")]

    def export(req: RecordedRequest) -> Reply:
        page, after = (second, "c2") if req.arg("cursor") == "c1" else (first, "c1")
        return json_response({"after_cursor": after, "after_url": f"{site}{EXPORT}?cursor={after}",
                              "before_cursor": None, "before_url": None, "end_of_stream": True, "tickets": page})

    origin.route("GET", EXPORT, export)
    show_many(origin, [organization(site, *o) for o in ORGS])

    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    (config_dir / "icsfeed.yaml").write_text(
        "server:\n  base_url: http://127.0.0.1:8080\n"
        "accounts:\n  - id: acme\n    name: ACME Corp\n    keys: [acme, \"ACME Corp\"]\n    timezone: Europe/Berlin\n"
        "sources:\n  - id: helpdesk\n    type: zendesk\n    interval: 5m\n"
        f"    base_url: {site}\n    email: {EMAIL}\n    api_token: ${{ZENDESK_TOKEN}}\n    retries: 0\n",
        encoding="utf-8")
    env = {"ZENDESK_TOKEN": API_TOKEN}

    for _ in range(2):
        result = run_cli(config_dir, data_dir, "poll", "--once", "helpdesk", env=env)
        assert result.returncode == 0, result.stderr
        assert API_TOKEN not in result.stdout + result.stderr
    feed_path = tmp_path / "acme.ics"
    result = run_cli(config_dir, data_dir, "render", "acme", "-o", str(feed_path), env=env)
    assert result.returncode == 0, result.stderr

    exports = origin.requests_to(EXPORT)
    assert exports[0].arg("start_time") is not None and exports[1].arg("cursor") == "c1"  # the cursor was persisted

    calendar = icalendar.Calendar.from_ical(feed_path.read_bytes())
    events = {str(e["URL"]): e for e in calendar.walk("VEVENT")}
    fire = events[f"{site}/agent/tickets/101"]
    assert "#101 Printer on fire" in str(fire["SUMMARY"])
    assert str(fire["STATUS"]) == "CANCELLED"
    reset = events[f"{site}/agent/tickets/102"]
    assert "#102 Password reset" in str(reset["SUMMARY"]) and str(reset["STATUS"]) == "CONFIRMED"
    assert reset.decoded("DTSTART") == datetime.fromisoformat(created2)
