"""Feed filters as URL parameters (issue 12 item 7): ``status=open``, ``min_severity=``, ``kinds=``.

Requests go through the product's WSGI feed layer (Flask's test client in front of
``FeedRequests``); events through the real poll (a ``file`` source) and render. A filtered
variant is cut from the stored, budgeted body with the parts render saved: nothing is
rendered or joined from the events table per request, a rolled-up feed's variants keep its
rollups, and each variant has its own ETag and 304s.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import icalendar
import pytest
from flask.testing import FlaskClient
from parsers import check_all
from test_budget import (
    NOW,
    SECRET,
    TEAM,
    World,
    _secret,  # noqa: F401  (autouse: the tests' secret key, no admin credentials)
    admin_client,
    config_yaml,
    record,
    world_fixture,  # noqa: F401  (the fixture "world")
    world_records,
)

from icsfeed import render
from icsfeed.feed_filters import FeedFilter, FilterError, is_open, parse_filter
from icsfeed.live import LiveConfig
from icsfeed.model import Event
from icsfeed.store import Store
from icsfeed.tokens import feed_token
from icsfeed.web import create_app

BASE = "https://cal.example.com"


def mixed_records() -> list[dict[str, Any]]:
    """One of each: what status=open keeps and drops, and every severity."""
    at = datetime.combine(NOW.date(), datetime.min.time(), timezone.utc) - timedelta(days=2, hours=-9)
    later = at + timedelta(minutes=30)
    return [
        record("resolved-crit", "alert", 0, at, end=later, severity="critical"),
        record("firing-warn", "alert", 0, at + timedelta(hours=1), severity="warning"),
        record("firing-page", "alert", 1, at + timedelta(hours=2), severity="page"),
        record("resolved-info", "alert", 1, at + timedelta(hours=3), end=later + timedelta(hours=3), severity="info"),
        record("ticket-open", "ticket", 0, at, severity="high", ticket_status="open"),
        record("ticket-solved", "ticket", 0, at, severity="urgent", ticket_status="solved"),
        record("ticket-closed", "ticket", 1, at, ticket_status="Closed"),
        record("backup-ok", "backup", 0, at, end=later),
        record("maint-cancelled", "maintenance", 1, at + timedelta(days=4), end=at + timedelta(days=4, hours=2),
               status="cancelled"),
        record("maint-planned", "maintenance", 1, at + timedelta(days=5), end=at + timedelta(days=5, hours=2)),
    ]


def client_for(w: World) -> FlaskClient:
    return create_app(LiveConfig(w.config, check_every=3600), w.store, SECRET.encode()).test_client()


def team_url(extra: str = "", feed: str = TEAM) -> str:
    kind, name = feed.split("/")
    path = f"/teams/{name}.ics" if kind == "team" else f"/feeds/{name}.ics"
    return f"{path}?token={feed_token(SECRET.encode(), feed, 1)}{extra}"


def ids(body: bytes) -> set[str]:
    """The origin ids of the VEVENTs (from their URL), rollups as their UID."""
    out = set()
    for e in icalendar.Calendar.from_ical(body).walk("VEVENT"):
        uid = str(e["UID"])
        out.add(uid if uid.startswith("rollup-") else str(e["URL"]).rsplit("/", 1)[1])
    return out


def test_status_open_and_min_severity_select_what_they_say(world: Callable[..., World]) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    client = client_for(w)
    everything = client.get(team_url())
    assert everything.status_code == 200 and len(ids(everything.data)) == 10

    opened = client.get(team_url("&status=open"))
    assert opened.status_code == 200
    assert ids(opened.data) == {"firing-warn", "firing-page", "ticket-open", "backup-ok", "maint-planned"}
    check_all(opened.data)

    critical = client.get(team_url("&min_severity=critical"))  # "page" ranks as critical; no severity passes
    assert ids(critical.data) == {"resolved-crit", "firing-page", "ticket-solved", "ticket-closed", "backup-ok",
                                  "maint-cancelled", "maint-planned"}
    combined = client.get(team_url("&kinds=alert,ticket&status=open&min_severity=warning"))
    assert ids(combined.data) == {"firing-warn", "firing-page", "ticket-open"}
    assert client.get(team_url("&min_severity=WARN&status=open&kinds=alert")).data == \
        client.get(team_url("&kinds=alert&status=open&min_severity=warning")).data

    # an account feed filtered: still only that account's events (the token opens that feed only)
    account = client.get(team_url("&status=open", feed="account/c000"))
    assert ids(account.data) == {"firing-warn", "ticket-open", "backup-ok"}
    assert client.get(team_url("&status=open", feed="account/c000").replace("c000", "c001")).status_code == 404


@pytest.mark.parametrize(("query", "message"), [
    ("&kinds=alert,alarms", "kinds: unknown kind 'alarms'"),
    ("&status=closed", "status: 'closed' is not a status filter"),
    ("&min_severity=severe", "min_severity: unknown severity 'severe' (lowest to highest: info, low, warning, error, critical)"),
])
def test_unknown_filter_values_are_a_clear_400(world: Callable[..., World], query: str, message: str) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    client = client_for(w)
    answer = client.get(team_url(query))
    assert answer.status_code == 400 and message in answer.get_data(as_text=True)
    wrong = client.get(team_url(query).replace("token=", "token=x"))
    assert wrong.status_code == 404, "a refused token says nothing about the filters"


def test_each_variant_has_its_own_etag_and_304(world: Callable[..., World]) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    client = client_for(w)
    base = client.get(team_url())
    opened = client.get(team_url("&status=open"))
    alerts = client.get(team_url("&kinds=alert"))
    etags = {base.headers["ETag"], opened.headers["ETag"], alerts.headers["ETag"]}
    assert len(etags) == 3
    assert client.get(team_url("&status=open"), headers={"If-None-Match": opened.headers["ETag"]}).status_code == 304
    assert client.get(team_url("&kinds=alert"), headers={"If-None-Match": opened.headers["ETag"]}).status_code == 200
    assert client.get(team_url("&status=open"), headers={"If-None-Match": base.headers["ETag"]}).status_code == 200
    packed = client.get(team_url("&status=open"), headers={"Accept-Encoding": "gzip"})
    assert packed.headers["Content-Encoding"] == "gzip" and gzip.decompress(packed.data) == opened.data
    assert packed.headers["ETag"] != opened.headers["ETag"]
    assert client.get(team_url("&status=open"), headers={"Accept-Encoding": "gzip",
                                                         "If-None-Match": packed.headers["ETag"]}).status_code == 304

    # one more firing alert: the feed and its open variant change, and so do their ETags
    w.write([*w.records, record("firing-new", "alert", 0, NOW - timedelta(minutes=10), severity="critical")])
    w.poll_and_render()
    again = client.get(team_url("&status=open"), headers={"If-None-Match": opened.headers["ETag"]})
    assert again.status_code == 200 and "firing-new" in ids(again.data)


def test_variants_of_a_rolled_up_feed_are_cut_from_its_bytes_without_rendering(
        world: Callable[..., World], monkeypatch: pytest.MonkeyPatch) -> None:
    w = world(world_records(12, backups_days=0), config_yaml(12, team_budget=", budget: {max_events: 150}"))
    w.poll_and_render()
    body = w.body(TEAM)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a feed request rendered or joined events")

    monkeypatch.setattr(render, "render_vevent", refuse)
    monkeypatch.setattr(render, "build_feed", refuse)
    monkeypatch.setattr(Store, "query_fragments", refuse)
    monkeypatch.setattr(Store, "query_events", refuse)
    client = client_for(w)
    alerts = client.get(team_url("&kinds=alert"))
    assert alerts.status_code == 200, alerts.data[:300]
    cal = icalendar.Calendar.from_ical(alerts.data)
    events = list(cal.walk("VEVENT"))
    assert events and all(str(e["SUMMARY"]).startswith("🚨") for e in events)
    rolled = [e for e in events if str(e["UID"]).startswith("rollup-")]
    assert rolled, "the rollups of the feed are in its filtered variant (the budget holds there too)"
    assert all(e.to_ical() in body or _fragment(alerts.data, e) in body for e in events)
    assert len(alerts.data) < len(body) and len(events) <= 150
    check_all(alerts.data)
    critical = client.get(team_url("&min_severity=critical&kinds=alert"))
    summaries = [str(e["SUMMARY"]) for e in icalendar.Calendar.from_ical(critical.data).walk("VEVENT")]
    assert summaries and all(" warning " not in s for s in summaries)
    assert any(" critical alerts on " in s for s in summaries)


def _fragment(body: bytes, event: icalendar.Event) -> bytes:
    """The VEVENT's own bytes in ``body`` (by its UID line)."""
    uid = f"UID:{event['UID']}".encode()
    start = body.rindex(b"BEGIN:VEVENT", 0, body.index(uid))
    return body[start:body.index(b"END:VEVENT\r\n", start) + len(b"END:VEVENT\r\n")]


def test_a_feed_rendered_before_parts_were_kept_waits_for_its_next_render(world: Callable[..., World]) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    from icsfeed.store.schema import feed_parts_table

    with w.store.engine.begin() as conn:
        conn.execute(feed_parts_table.delete())
    w.store.forget_held_parts()  # the web process's store, which has held none
    client = client_for(w)
    waiting = client.get(team_url("&status=open"))
    assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "30"
    assert client.get(team_url()).status_code == 200  # the feed itself is served as ever
    render.render_feeds(w.config, w.store, force=True)
    assert client.get(team_url("&status=open")).status_code == 200


def test_open_flags_of_rows_from_before_are_worked_out_by_render(world: Callable[..., World]) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    from icsfeed.store.schema import events_table

    with w.store.engine.begin() as conn:
        conn.execute(events_table.update().values(is_open=None))
    render.render_feeds(w.config, w.store, force=True)
    with w.store.engine.connect() as conn:
        flags = dict(conn.execute(events_table.select().with_only_columns(events_table.c.key, events_table.c.is_open)).all())
    assert flags["firing-warn"] is True and flags["resolved-crit"] is False and flags["ticket-solved"] is False
    assert ids(client_for(w).get(team_url("&status=open")).data) == {
        "firing-warn", "firing-page", "ticket-open", "backup-ok", "maint-planned"}


def test_is_open_follows_the_sources_mappings() -> None:
    start = NOW - timedelta(hours=1)
    alert = Event(source="am", key="f@1", kind="alert", title="x", start=start)
    assert is_open(alert) and not is_open(Event(source="am", key="f@1", kind="alert", title="x", start=start, end=NOW))
    jira = Event(source="j", key="J-1", kind="ticket", title="x", start=start, attrs={"status": "Done", "status_category": "done"})
    zendesk = Event(source="z", key="1", kind="ticket", title="x", start=start, attrs={"status": "pending"})
    assert not is_open(jira) and is_open(zendesk)
    assert not is_open(Event(source="z", key="2", kind="ticket", title="x", start=start, status="cancelled"))


def test_parse_filter_canonical_and_empty() -> None:
    kinds = ["alert", "ticket"]
    assert parse_filter({}, kinds) is None and parse_filter({"kinds": "", "status": "all"}, kinds) is None
    assert parse_filter({"min_severity": "info"}, kinds) is None  # the lowest minimum keeps everything
    chosen = parse_filter({"kinds": "ticket, alert", "min_severity": "Major", "status": "open"}, kinds)
    assert chosen == FeedFilter(frozenset({"alert", "ticket"}), True, 3)
    assert chosen.canonical == "kinds=alert,ticket&min_severity=error&status=open"
    with pytest.raises(FilterError):
        parse_filter({"kinds": "birthday"}, kinds)


def test_subscribe_page_offers_the_filters(world: Callable[..., World]) -> None:
    w = world(mixed_records(), config_yaml(2))
    w.poll_and_render()
    client = admin_client(w.config, w.store)
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert page.count('class="feed-filters"') == 3  # two accounts and the team
    assert 'name="status" value="open"' in page and '<option value="critical">' in page
    asked = client.get(f"/?feed={TEAM}&kinds=alert&kinds=ticket&status=open&min_severity=warning",
                       base_url=BASE).get_data(as_text=True)
    token = feed_token(SECRET.encode(), TEAM, 1)
    url = f"{BASE}/teams/everything.ics?token={token}&amp;kinds=alert,ticket&amp;min_severity=warning&amp;status=open"
    assert url in asked
    served = client_for(w).get(url.removeprefix(BASE).replace("&amp;", "&"))
    assert ids(served.data) == {"firing-warn", "firing-page", "ticket-open"}
    bad = client.get(f"/?feed={TEAM}&min_severity=severe", base_url=BASE).get_data(as_text=True)
    assert "unknown severity" in bad
