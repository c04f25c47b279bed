"""The jira source against a local fake of Jira's documented search API.

Jira Cloud cannot run here, so a real HTTP server on 127.0.0.1 answers with the shapes
of Atlassian's public API reference, copied field for field:

* Jira Cloud, "Search for issues using JQL enhanced search (POST)",
  ``POST /rest/api/3/search/jql``: request ``{jql, nextPageToken, maxResults, fields}``,
  response ``{issues, nextPageToken, isLast}`` (``nextPageToken`` absent/null on the
  last page) —
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/#api-rest-api-3-search-jql-post
* Jira Server/Data Center, "Search for issues using JQL (POST)", ``POST /rest/api/2/search``:
  request ``{jql, startAt, maxResults, fields}``, response
  ``{expand, startAt, maxResults, total, issues}`` —
  https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/search-searchUsingSearchRequest
* Issue bean (``expand, id, self, key, fields``) and the field values: ``status`` with
  ``statusCategory {self, id, key, colorName, name}``, ``priority {self, iconUrl, name, id}``,
  users (Cloud: ``accountId, displayName, active, timeZone, accountType``; Server: ``name,
  key, emailAddress, displayName``), ``project {self, id, key, name, projectTypeKey}``,
  select custom fields ``{self, value, id}``, dates like ``2023-07-12T06:03:00.833+0000`` —
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-get
* JQL dates (``updated >= "yyyy/MM/dd HH:mm"``, read in the searching user's time zone;
  relative ``-Nm``) — https://support.atlassian.com/jira-software-cloud/docs/jql-fields/#Updated
* Rate limiting answers 429 with ``Retry-After`` —
  https://developer.atlassian.com/cloud/jira/platform/rate-limiting/
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
from icsfeed.sources.jira import JiraSource, strip_order_by

EMAIL = "ops-bot@example.com"
API_TOKEN = "ATATT3xFfGF0-sekrit-jira-token-4711"
PAT = "NjM1OTk4-server-pat-sekrit-0815"

KINDS = {
    "ticket": KindInfo(all_day=False, duration_seconds=1800),
    "insight": KindInfo(all_day=True, duration_seconds=86400),
}


# --- documented shapes ------------------------------------------------------------------------

def cloud_user(name: str, account_id: str, site: str) -> dict[str, Any]:
    return {
        "self": f"{site}/rest/api/3/user?accountId={account_id}",
        "accountId": account_id,
        "avatarUrls": {"48x48": f"https://avatar.example/{account_id}/48", "24x24": f"https://avatar.example/{account_id}/24",
                       "16x16": f"https://avatar.example/{account_id}/16", "32x32": f"https://avatar.example/{account_id}/32"},
        "displayName": name,
        "active": True,
        "timeZone": "Europe/Berlin",
        "accountType": "atlassian",
    }


def server_user(name: str, login: str, site: str) -> dict[str, Any]:
    return {
        "self": f"{site}/rest/api/2/user?username={login}",
        "name": login,
        "key": f"JIRAUSER{abs(hash(login)) % 100000}",
        "emailAddress": f"{login}@example.com",
        "avatarUrls": {"48x48": f"{site}/secure/useravatar?avatarId=10122"},
        "displayName": name,
        "active": True,
        "timeZone": "Europe/Berlin",
    }


STATUS = {
    "To Do": ("1", 2, "new", "blue-gray", "To Do"),
    "In Progress": ("3", 4, "indeterminate", "yellow", "In Progress"),
    "Done": ("10001", 3, "done", "green", "Done"),
}


def status(name: str, site: str, api: str = "3") -> dict[str, Any]:
    sid, cid, ckey, color, cname = STATUS[name]
    return {
        "self": f"{site}/rest/api/{api}/status/{sid}",
        "description": "",
        "iconUrl": f"{site}/images/icons/statuses/generic.png",
        "name": name,
        "id": sid,
        "statusCategory": {"self": f"{site}/rest/api/{api}/statuscategory/{cid}", "id": cid, "key": ckey,
                           "colorName": color, "name": cname},
    }


def priority(name: str, site: str, api: str = "3") -> dict[str, Any]:
    ids = {"Highest": "1", "High": "2", "Medium": "3", "Low": "4", "Lowest": "5", "Blocker": "1", "Major": "3"}
    return {"self": f"{site}/rest/api/{api}/priority/{ids[name]}",
            "iconUrl": f"{site}/images/icons/priorities/{name.lower()}.svg", "name": name, "id": ids[name]}


def issue(site: str, number: int, summary: str, *, created: str | None, updated: str, state: str = "In Progress",
          prio: str | None = "High", project: str = "OPS", api: str = "3", assignee: str | None = "Mia Krystof",
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    user = cloud_user if api == "3" else server_user
    fields: dict[str, Any] = {
        "summary": summary,
        "status": status(state, site, api),
        "created": created,
        "updated": updated,
        "priority": priority(prio, site, api) if prio else None,
        "reporter": user("Emma Richards", "5b10ac8d82e05b22cc7d4ef5", site) if api == "3" else user("Emma Richards", "erichards", site),
        "assignee": (user(assignee, "5b10a2844c20165700ede21g", site) if api == "3" else user(assignee, "mkrystof", site)) if assignee else None,
        "project": {"self": f"{site}/rest/api/{api}/project/10000", "id": "10000", "key": project,
                    "name": "Operations", "projectTypeKey": "software", "simplified": False,
                    "avatarUrls": {"48x48": f"{site}/secure/projectavatar?size=large&pid=10000"}},
        "issuetype": {"self": f"{site}/rest/api/{api}/issuetype/10001", "id": "10001", "description": "A task.",
                      "iconUrl": f"{site}/images/icons/issuetypes/task.svg", "name": "Task", "subtask": False,
                      "avatarId": 10318, "hierarchyLevel": 0},
    }
    if created is None:
        del fields["created"]
    fields.update(extra or {})
    iid = str(10000 + number)
    return {"expand": "operations,versionedRepresentations,editmeta,changelog,renderedFields",
            "id": iid, "self": f"{site}/rest/api/{api}/issue/{iid}", "key": f"{project}-{number}", "fields": fields}


def v3_pages(origin: FakeOrigin, pages: list[list[dict[str, Any]]], *, fail_page: Reply | None = None,
             fail_at: int | None = None) -> None:
    """POST /rest/api/3/search/jql paging by nextPageToken, as documented."""
    tokens = [None] + [f"CAEaAggD-page{i}" for i in range(1, len(pages))]

    def handler(req: RecordedRequest) -> Reply:
        token = req.json().get("nextPageToken")
        if token not in tokens:
            return json_response({"errorMessages": ["The provided next page token is invalid or expired."], "errors": {}}, 400)
        index = tokens.index(token)
        if fail_at is not None and index == fail_at and fail_page is not None:
            return fail_page
        body: dict[str, Any] = {"issues": pages[index], "isLast": index == len(pages) - 1}
        if index < len(pages) - 1:
            body["nextPageToken"] = tokens[index + 1]
        return json_response(body)

    origin.route("POST", "/rest/api/3/search/jql", handler)


def v2_pages(origin: FakeOrigin, issues: list[dict[str, Any]], page_size: int) -> None:
    """POST /rest/api/2/search paging by startAt/total, as documented."""

    def handler(req: RecordedRequest) -> Reply:
        body = req.json()
        start = int(body.get("startAt", 0))
        size = min(int(body.get("maxResults", 50)), page_size)
        return json_response({"expand": "schema,names", "startAt": start, "maxResults": size,
                              "total": len(issues), "issues": issues[start:start + size]})

    origin.route("POST", "/rest/api/2/search", handler)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def origin() -> Any:
    with FakeOrigin() as fake:
        yield fake


@pytest.fixture
def context(tmp_path: Path) -> SourceContext:
    return SourceContext(config_dir=tmp_path, data_dir=tmp_path, kinds=KINDS, default_timezone="UTC",
                         account_timezones={"acme": "Europe/Berlin"})


def make(origin: FakeOrigin, context: SourceContext, **raw: Any) -> JiraSource:
    settings: dict[str, Any] = {"base_url": origin.url, "auth": {"username": EMAIL, "password": API_TOKEN},
                                "retries": 0, "timeout": 5}
    settings.update(raw)
    return JiraSource("jira-ops", JiraSource.parse_settings(settings), context)


def five_issues(site: str, api: str = "3") -> list[dict[str, Any]]:
    return [
        issue(site, 1230, "Disk full on db-3", created="2024-03-01T08:15:00.000+0100", updated="2024-03-01T09:00:00.000+0100", api=api),
        issue(site, 1231, "Backup job failed", created="2024-03-02T10:00:00.000+0000", updated="2024-03-03T11:00:00.000+0000", state="Done", prio="Highest", api=api),
        issue(site, 1232, "Certificate renewal", created="2024-03-04T12:30:00.000+0000", updated="2024-03-04T12:31:00.000+0000", state="To Do", prio="Lowest", api=api, assignee=None),
        issue(site, 1233, "VPN flapping", created="2024-03-05T07:00:00.000-0500", updated="2024-03-06T07:00:00.000-0500", prio=None, api=api),
        issue(site, 1234, "Disk full", created="2024-03-07T23:59:59.999+0000", updated="2024-03-08T00:10:00.000+0000", prio="Medium", api=api),
    ]


# --- paging and mapping ----------------------------------------------------------------------

def test_v3_three_pages_become_events(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url)
    v3_pages(origin, [issues[:2], issues[2:4], issues[4:]])
    source = make(origin, context, jql="project = OPS ORDER BY created DESC", page_size=2)

    events = source.fetch(datetime(2024, 3, 1, 6, 0, tzinfo=UTC))

    assert [e.key for e in events] == ["OPS-1230", "OPS-1231", "OPS-1232", "OPS-1233", "OPS-1234"]
    first = events[0]
    assert first.title == "#OPS-1230 Disk full on db-3"
    assert first.kind == "ticket" and first.source == "jira-ops"
    assert first.start == datetime(2024, 3, 1, 7, 15, tzinfo=UTC)
    assert first.end == first.start + timedelta(seconds=1800)
    assert first.url == f"{origin.url}/browse/OPS-1230"
    assert first.account == "OPS"
    assert first.severity == "high"
    assert first.status == "confirmed"
    assert "Status: In Progress" in first.detail
    assert "Reporter: Emma Richards" in first.detail and "Assignee: Mia Krystof" in first.detail
    assert "Priority: High" in first.detail and "Updated: 2024-03-01 08:00 UTC" in first.detail
    # done tickets stay, confirmed; priorities become severities
    done = events[1]
    assert done.status == "confirmed" and done.attrs["status_category"] == "done" and done.severity == "critical"
    assert events[2].severity == "info" and "Assignee: unassigned" in events[2].detail
    assert events[3].severity is None and events[3].start == datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    assert events[4].title == "#OPS-1234 Disk full"

    requests = origin.requests_to("/rest/api/3/search/jql")
    assert len(requests) == 3
    bodies = [r.json() for r in requests]
    assert "nextPageToken" not in bodies[0]
    assert bodies[1]["nextPageToken"] == "CAEaAggD-page1" and bodies[2]["nextPageToken"] == "CAEaAggD-page2"
    assert bodies[0]["maxResults"] == 2
    assert {"summary", "status", "created", "updated", "priority", "reporter", "assignee", "project"} <= set(bodies[0]["fields"])
    # user JQL ANDed with the incremental clause; its ORDER BY replaced by updated order
    assert bodies[0]["jql"] == '(project = OPS) AND updated >= "2024/03/01 05:00" ORDER BY updated ASC, key ASC'
    expected = "Basic " + base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
    assert requests[0].headers["Authorization"] == expected
    # the cursor is the newest `updated` seen, in UTC
    assert source.cursor == "2024-03-08T00:10:00+00:00"
    assert source.skipped == []


def test_v2_server_pages_by_start_at_with_bearer_pat(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url, api="2")
    v2_pages(origin, issues, page_size=2)
    source = make(origin, context, api="v2", auth={"token": PAT}, jql="project = OPS", browse_url="https://jira.example.com/jira")

    events = source.fetch(None)

    assert [e.key for e in events] == ["OPS-1230", "OPS-1231", "OPS-1232", "OPS-1233", "OPS-1234"]
    requests = origin.requests_to("/rest/api/2/search")
    assert [r.json()["startAt"] for r in requests] == [0, 2, 4]
    assert requests[0].headers["Authorization"] == f"Bearer {PAT}"
    assert events[0].url == "https://jira.example.com/jira/browse/OPS-1230"
    assert "Reporter: Emma Richards" in events[0].detail
    # no resume point: the lookback bounds the first poll
    jql = requests[0].json()["jql"]
    lookback = (datetime.now(UTC) - timedelta(days=90, seconds=3600)).strftime("%Y/%m/%d")
    assert jql.startswith(f'(project = OPS) AND updated >= "{lookback} ')


def test_cursor_wins_over_since_and_advances(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url)
    v3_pages(origin, [issues[:1]])
    source = make(origin, context, overlap=0)
    source.cursor = "2024-03-01T10:07:00+00:00"

    source.fetch(datetime(2024, 2, 1, tzinfo=UTC))

    assert origin.requests[0].json()["jql"] == 'updated >= "2024/03/01 10:07" ORDER BY updated ASC, key ASC'
    # the only issue is older than the cursor: the cursor never goes back
    assert source.cursor == "2024-03-01T10:07:00+00:00"


def test_jql_date_is_written_in_the_users_timezone_minus_overlap(origin: FakeOrigin, context: SourceContext) -> None:
    source = make(origin, context, jql="project = OPS", timezone="America/New_York", overlap=900)
    now = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    # 12:00 UTC = 08:00 EDT, minus 15 minutes
    assert source.build_jql(datetime(2024, 7, 1, 12, 0, tzinfo=UTC), now) == \
        '(project = OPS) AND updated >= "2024/07/01 07:45" ORDER BY updated ASC, key ASC'
    # the server default zone when none is set
    berlin = SourceContext(config_dir=context.config_dir, data_dir=context.data_dir, kinds=KINDS, default_timezone="Europe/Berlin")
    source = make(origin, berlin, overlap=0)
    assert source.build_jql(datetime(2024, 1, 15, 23, 30, tzinfo=UTC), now) == \
        'updated >= "2024/01/16 00:30" ORDER BY updated ASC, key ASC'


def test_relative_since_needs_no_timezone(origin: FakeOrigin, context: SourceContext) -> None:
    source = make(origin, context, since_style="relative", overlap=600, jql="labels = customer")
    now = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    assert source.build_jql(now - timedelta(minutes=14, seconds=30), now) == \
        "(labels = customer) AND updated >= -25m ORDER BY updated ASC, key ASC"


def test_strip_order_by_respects_quotes() -> None:
    assert strip_order_by("project = OPS order  by created DESC") == "project = OPS"
    assert strip_order_by('summary ~ "order by me" AND project = X ORDER BY key') == 'summary ~ "order by me" AND project = X'
    assert strip_order_by("reorder = 1") == "reorder = 1"
    assert strip_order_by("ORDER BY created") == ""


def test_account_from_custom_field_option(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    option = {"self": f"{site}/rest/api/3/customFieldOption/10016", "value": "ACME", "id": "10016"}
    multi = [{"self": f"{site}/rest/api/3/customFieldOption/10017", "value": "Globex", "id": "10017"}]
    v3_pages(origin, [[
        issue(site, 1, "a", created="2024-03-01T08:00:00.000+0000", updated="2024-03-01T08:00:00.000+0000", extra={"customfield_10042": option}),
        issue(site, 2, "b", created="2024-03-01T08:00:00.000+0000", updated="2024-03-01T08:00:00.000+0000", extra={"customfield_10042": multi}),
        issue(site, 3, "c", created="2024-03-01T08:00:00.000+0000", updated="2024-03-01T08:00:00.000+0000", extra={"customfield_10042": None}),
    ]])
    source = make(origin, context, account_field="fields.customfield_10042")

    events = source.fetch(None)

    assert [e.account for e in events] == ["ACME", "Globex", None]
    assert "customfield_10042" in origin.requests[0].json()["fields"]


def test_all_day_kind_uses_the_accounts_timezone(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    v3_pages(origin, [[issue(site, 9, "late", created="2024-03-01T23:30:00.000+0000", updated="2024-03-01T23:30:00.000+0000",
                             extra={"customfield_1": {"value": "acme", "id": "1", "self": f"{site}/x"}})]])
    source = make(origin, context, kind="insight", account_field="fields.customfield_1")
    [event] = source.fetch(None)
    assert event.start == date(2024, 3, 2) and event.end == date(2024, 3, 3)  # 00:30 in Berlin


def test_issue_without_created_is_skipped_with_reason(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    v3_pages(origin, [[
        issue(site, 1, "no date", created=None, updated="2024-03-01T08:00:00.000+0000"),
        issue(site, 2, "bad date", created="yesterday-ish", updated="2024-03-01T08:00:00.000+0000"),
        {"id": "3", "self": f"{site}/rest/api/3/issue/3"},
        issue(site, 4, "fine", created="2024-03-01T08:00:00.000+0000", updated="2024-03-02T08:00:00.000+0000"),
    ]])
    source = make(origin, context)

    events = source.fetch(None)

    assert [e.key for e in events] == ["OPS-4"]
    assert len(source.skipped) == 3
    assert "no created date" in source.skipped[0]
    assert "not a date" in source.skipped[1]
    assert "no key" in source.skipped[2]
    assert source.cursor == "2024-03-02T08:00:00+00:00"


def test_max_pages_stops_and_the_cursor_resumes(origin: FakeOrigin, context: SourceContext, caplog: pytest.LogCaptureFixture) -> None:
    issues = five_issues(origin.url)
    v3_pages(origin, [issues[:2], issues[2:4], issues[4:]])
    source = make(origin, context, max_pages=2, page_size=2)

    with caplog.at_level(logging.WARNING):
        events = source.fetch(None)

    assert [e.key for e in events] == ["OPS-1230", "OPS-1231", "OPS-1232", "OPS-1233"]
    assert len(origin.requests) == 2
    assert source.cursor == "2024-03-06T12:00:00+00:00"
    assert "max_pages" in caplog.text


# --- failures -----------------------------------------------------------------------------------

def secrets_absent(message: str) -> None:
    for secret in (API_TOKEN, PAT, base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()):
        assert secret not in message


def test_401_is_reported_as_authentication_failure(origin: FakeOrigin, context: SourceContext) -> None:
    origin.add("POST", "/rest/api/3/search/jql", json_response(
        {"errorMessages": ["You are not authorized to perform this operation. Please log in."], "errors": {}}, 401))
    source = make(origin, context)
    with pytest.raises(SourceError, match="authentication failed") as info:
        source.fetch(None)
    secrets_absent(str(info.value))
    assert source.cursor is None


def test_429_with_short_retry_after_is_retried(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url)
    origin.add("POST", "/rest/api/3/search/jql",
               Reply(429, "Rate limit exceeded", {"Retry-After": "1"}),
               json_response({"issues": issues[:1], "isLast": True}))
    source = make(origin, context, retries=2)
    started = time.monotonic()
    events = source.fetch(None)
    assert [e.key for e in events] == ["OPS-1230"]
    assert len(origin.requests) == 2
    assert time.monotonic() - started >= 0.9  # Retry-After was honoured


def test_429_with_long_retry_after_fails_fast(origin: FakeOrigin, context: SourceContext) -> None:
    origin.add("POST", "/rest/api/3/search/jql", Reply(429, "Rate limit exceeded", {"Retry-After": "3600"}))
    source = make(origin, context, retries=2)
    started = time.monotonic()
    with pytest.raises(SourceError, match="rate limited") as info:
        source.fetch(None)
    assert time.monotonic() - started < 5
    secrets_absent(str(info.value))


def test_failure_on_page_three_returns_nothing(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url)
    v3_pages(origin, [issues[:2], issues[2:4], issues[4:]], fail_at=2,
             fail_page=Reply(500, "<html>Internal Server Error</html>"))
    source = make(origin, context, page_size=2)
    source.cursor = "2024-02-01T00:00:00+00:00"
    with pytest.raises(SourceError, match=r"HTTP 500|gave up") as info:
        source.fetch(None)
    assert len(origin.requests) == 3
    assert source.cursor == "2024-02-01T00:00:00+00:00"  # no progress recorded from pages 1-2
    secrets_absent(str(info.value))


@pytest.mark.parametrize("reply, message", [
    (Reply(200, "<html><body>Atlassian login</body></html>", {"Content-Type": "text/html"}), "not JSON"),
    (json_response({"errorMessages": [], "total": 3}), "unexpected answer"),
    (json_response([1, 2, 3]), "unexpected answer"),
])
def test_garbage_answer_is_a_source_error(origin: FakeOrigin, context: SourceContext, reply: Reply, message: str) -> None:
    origin.add("POST", "/rest/api/3/search/jql", reply)
    with pytest.raises(SourceError, match=message) as info:
        make(origin, context).fetch(None)
    secrets_absent(str(info.value))


def test_repeating_page_token_is_an_error_not_a_loop(origin: FakeOrigin, context: SourceContext) -> None:
    issues = five_issues(origin.url)
    origin.add("POST", "/rest/api/3/search/jql", json_response({"issues": issues[:1], "nextPageToken": "same", "isLast": False}))
    with pytest.raises(SourceError, match="does not advance"):
        make(origin, context, max_pages=50).fetch(None)
    assert len(origin.requests) == 2


def test_unreachable_origin_message_has_no_secret(context: SourceContext) -> None:
    with FakeOrigin() as fake:
        url = fake.url  # a port that was just free: nothing listens after stop
    settings = JiraSource.parse_settings({"base_url": url, "auth": {"username": EMAIL, "password": API_TOKEN},
                                          "retries": 0, "timeout": 2})
    with pytest.raises(SourceError, match="cannot connect") as info:
        JiraSource("j", settings, context).fetch(None)
    secrets_absent(str(info.value))


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, problem", [
    ({"base_url": "https://x.atlassian.net", "api": "v4"}, "api"),
    ({"base_url": "https://x.atlassian.net", "timezone": "Mars/Olympus"}, "timezone"),
    ({"base_url": "x.atlassian.net"}, "base_url"),
    ({"base_url": "https://x.atlassian.net", "project": "OPS"}, "project"),
    ({"base_url": "https://x.atlassian.net", "account_field": "fields..x"}, "account_field"),
    ({}, "base_url"),
])
def test_settings_are_validated(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        JiraSource.parse_settings(raw)


def test_secret_is_not_in_settings_repr() -> None:
    settings = JiraSource.parse_settings({"base_url": "https://x.atlassian.net", "auth": {"username": EMAIL, "password": API_TOKEN}})
    assert API_TOKEN not in repr(settings) and API_TOKEN not in str(settings.model_dump())


def test_unconfigured_kind_is_an_error(origin: FakeOrigin, tmp_path: Path) -> None:
    context = SourceContext(config_dir=tmp_path, data_dir=tmp_path, kinds={"alert": KindInfo(False, 300)})
    with pytest.raises(SourceError, match="kind 'ticket'"):
        make(origin, context).fetch(None)
    assert origin.requests == []


# --- end to end: CLI poll + render, feed parsed with icalendar ------------------------------------------

def run_cli(config_dir: Path, data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, **env, "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          capture_output=True, text=True, timeout=120, env=full_env, cwd=str(repo), check=False)


@pytest.mark.slow
def test_end_to_end_poll_twice_and_render(origin: FakeOrigin, tmp_path: Path) -> None:
    site = origin.url
    now = datetime.now(UTC).replace(microsecond=0)

    def jira_time(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    newest = now - timedelta(hours=3, minutes=7)
    first = [issue(site, 1234, "Disk full", created=jira_time(now - timedelta(days=3)), updated=jira_time(now - timedelta(days=2))),
             issue(site, 1235, "Backup late", created=jira_time(now - timedelta(days=1)), updated=jira_time(newest), state="Done")]
    second = [issue(site, 1234, "Disk full on db-3", created=jira_time(now - timedelta(days=3)), updated=jira_time(now - timedelta(minutes=5)))]
    pages = iter([[first[:1], first[1:]], [second]])
    current: list[list[dict[str, Any]]] = []

    def search(req: RecordedRequest) -> Reply:
        token = req.json().get("nextPageToken")
        if token is None:
            current[:] = next(pages)
        index = 0 if token is None else int(token)
        body: dict[str, Any] = {"issues": current[index], "isLast": index == len(current) - 1}
        if index < len(current) - 1:
            body["nextPageToken"] = str(index + 1)
        return json_response(body)

    origin.route("POST", "/rest/api/3/search/jql", search)
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    (config_dir / "icsfeed.yaml").write_text(
        "server:\n  base_url: http://127.0.0.1:8080\n"
        "accounts:\n  - id: acme\n    name: ACME Corp\n    keys: [acme, OPS]\n    timezone: Europe/Berlin\n"
        "sources:\n  - id: jira-ops\n    type: jira\n    interval: 5m\n"
        f"    base_url: {site}\n    jql: project = OPS\n    timezone: UTC\n    overlap: 600\n    retries: 0\n"
        "    auth:\n      username: ops-bot@example.com\n      password: ${JIRA_TOKEN}\n",
        encoding="utf-8")
    env = {"JIRA_TOKEN": API_TOKEN}

    for _ in range(2):
        result = run_cli(config_dir, data_dir, "poll", "--once", "jira-ops", env=env)
        assert result.returncode == 0, result.stderr
        assert API_TOKEN not in result.stdout + result.stderr
    feed_path = tmp_path / "acme.ics"
    result = run_cli(config_dir, data_dir, "render", "acme", "-o", str(feed_path), env=env)
    assert result.returncode == 0, result.stderr

    searches = [r.json() for r in origin.requests_to("/rest/api/3/search/jql")]
    assert len(searches) == 3
    # the second poll resumed from the newest `updated` of the first, minus the overlap
    resume = (newest - timedelta(seconds=600)).strftime("%Y/%m/%d %H:%M")
    assert searches[2]["jql"] == f'(project = OPS) AND updated >= "{resume}" ORDER BY updated ASC, key ASC'

    calendar = icalendar.Calendar.from_ical(feed_path.read_bytes())
    events = {str(e["URL"]): e for e in calendar.walk("VEVENT")}
    disk = events[f"{site}/browse/OPS-1234"]
    assert "#OPS-1234 Disk full on db-3" in str(disk["SUMMARY"])  # updated by the second poll
    assert disk.decoded("DTSTART") == now - timedelta(days=3)
    done = events[f"{site}/browse/OPS-1235"]
    assert "#OPS-1235 Backup late" in str(done["SUMMARY"]) and str(done["STATUS"]) == "CONFIRMED"


def test_future_dated_update_does_not_push_the_cursor_past_now(origin: FakeOrigin, context: SourceContext) -> None:
    site = origin.url
    v3_pages(origin, [[issue(site, 1, "clock skew", created="2024-03-01T08:00:00.000+0000", updated="2999-01-01T00:00:00.000+0000")]])
    source = make(origin, context)
    source.fetch(None)
    assert source.cursor is not None
    assert datetime.fromisoformat(source.cursor) <= datetime.now(UTC)
