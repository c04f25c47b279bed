"""Stable identity and history: what a client caches must stay right between polls."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from parsers import check_all, parse_icalendar

from icsfeed.config import Config
from icsfeed.poller import poll
from icsfeed.render import render_feeds
from icsfeed.store import Store

NOW = datetime.now(timezone.utc).replace(microsecond=0)

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: ops, name: Ops, kinds: [alert]}]
sources:
  - id: alerts
    type: file
    path: alerts.json
    absence: close
    mapping: {kind: alert, key: fp, title: name, detail: summary, start: start, end: end, account: customer, url: url}
  - id: tickets
    type: file
    path: tickets.json
    absence: cancel
    mapping: {kind: ticket, key: id, title: subject, start: created, account: "=acme"}
"""


def alert(fp: str, name: str, minutes_ago: int, end: bool = False) -> dict[str, object]:
    start = NOW - timedelta(minutes=minutes_ago)
    return {"fp": fp, "name": name, "summary": f"{name} summary", "customer": "acme",
            "start": start.isoformat(), "end": (start + timedelta(minutes=5)).isoformat() if end else None,
            "url": f"https://prometheus.example.com/graph?{fp}"}


def write(config: Config, name: str, records: list[dict[str, object]]) -> None:
    (config.config_dir / name).write_text(json.dumps(records))


def events_by_summary(body: bytes) -> dict[str, object]:
    return {str(e["SUMMARY"]): e for e in parse_icalendar(body).walk("VEVENT")}


@pytest.fixture
def env(make_env: object) -> tuple[Config, Store]:
    config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    write(config, "alerts.json", [alert("a1", "DiskFull", 120), alert("a2", "HighCPU", 60, end=True)])
    write(config, "tickets.json", [{"id": 7, "subject": "Slow site", "created": (NOW - timedelta(days=1)).isoformat()}])
    reports = poll(config, store)
    assert all(r.ok and r.new for r in reports), [r.line() for r in reports]
    return config, store


def test_unchanged_polls_give_identical_bytes_and_render_nothing(env: tuple[Config, Store]) -> None:
    config, store = env
    first = {f: store.get_feed(f) for f in ("account/acme", "team/ops")}
    reports = poll(config, store)
    assert all(r.unchanged and not (r.new or r.updated or r.closed) for r in reports)
    assert render_feeds(config, store) == [], "an unchanged poll re-renders no feed"
    for feed_id, before in first.items():
        after = store.get_feed(feed_id)
        assert after.body == before.body and after.etag == before.etag
        assert after.last_modified == before.last_modified
    # even a forced re-render produces the same bytes and keeps Last-Modified
    render_feeds(config, store, force=True)
    assert store.get_feed("account/acme").body == first["account/acme"].body
    assert store.get_feed("account/acme").last_modified == first["account/acme"].last_modified


def test_changed_record_keeps_uid_and_bumps_sequence_and_last_modified(env: tuple[Config, Store]) -> None:
    config, store = env
    before = events_by_summary(store.get_feed("account/acme").body)["🚨 DiskFull"]
    time.sleep(1.1)  # LAST-MODIFIED has second resolution
    changed = alert("a1", "DiskFull", 120)
    changed["summary"] = "now 99% full"
    write(config, "alerts.json", [changed, alert("a2", "HighCPU", 60, end=True)])
    report = poll(config, store, ["alerts"])[0]
    assert (report.updated, report.new) == (1, 0)
    after = events_by_summary(store.get_feed("account/acme").body)["🚨 DiskFull"]
    assert after["UID"] == before["UID"]
    assert int(after["SEQUENCE"]) == int(before["SEQUENCE"]) + 1
    assert after["LAST-MODIFIED"].dt > before["LAST-MODIFIED"].dt
    assert after["DTSTAMP"].dt == after["LAST-MODIFIED"].dt
    assert "now 99% full" in str(after["DESCRIPTION"])


def test_vanished_alert_stays_closed_at_last_seen(env: tuple[Config, Store]) -> None:
    config, store = env
    last_seen = store.source_state("alerts").last_success
    write(config, "alerts.json", [alert("a2", "HighCPU", 60, end=True)])
    report = poll(config, store, ["alerts"])[0]
    assert report.closed == 1
    body = store.get_feed("account/acme").body
    check_all(body)
    gone = events_by_summary(body)["🚨 DiskFull"]
    assert gone["DTEND"].dt == datetime.fromtimestamp(int(last_seen), timezone.utc), "closed when last seen"
    assert int(gone["SEQUENCE"]) == 1
    assert "ongoing" not in str(gone["DESCRIPTION"])
    assert "🚨 DiskFull" in events_by_summary(store.get_feed("team/ops").body)
    # a second poll without it changes nothing more
    assert poll(config, store, ["alerts"])[0].closed == 0


def test_vanished_ticket_is_cancelled_not_deleted(env: tuple[Config, Store]) -> None:
    config, store = env
    write(config, "tickets.json", [])
    assert poll(config, store, ["tickets"])[0].cancelled == 1
    ticket = events_by_summary(store.get_feed("account/acme").body)["🎫 Slow site"]
    assert str(ticket["STATUS"]) == "CANCELLED" and int(ticket["SEQUENCE"]) == 1


def test_reappearing_event_is_reopened(env: tuple[Config, Store]) -> None:
    config, store = env
    write(config, "tickets.json", [])
    poll(config, store, ["tickets"])
    write(config, "tickets.json", [{"id": 7, "subject": "Slow site", "created": (NOW - timedelta(days=1)).isoformat()}])
    assert poll(config, store, ["tickets"])[0].updated == 1
    ticket = events_by_summary(store.get_feed("account/acme").body)["🎫 Slow site"]
    assert str(ticket["STATUS"]) == "CONFIRMED" and int(ticket["SEQUENCE"]) == 2


def test_failed_poll_keeps_last_good_events(env: tuple[Config, Store]) -> None:
    config, store = env
    before = store.get_feed("account/acme")
    (config.config_dir / "alerts.json").write_text("[{broken json")
    report = poll(config, store, ["alerts"])[0]
    assert not report.ok and "not valid JSON" in (report.error or "")
    state = store.source_state("alerts")
    assert state.consecutive_failures == 1 and state.last_error == report.error
    after = store.get_feed("account/acme")
    assert after.body == before.body, "nothing was closed or lost"


def test_per_event_absence_override_keeps_event(make_env: object) -> None:
    from icsfeed.model import Event
    from icsfeed.store import FeedQuery

    _config, store = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    start = NOW + timedelta(days=2)
    silence = Event(source="am", key="s1", kind="maintenance", title="silence", start=start,
                    end=start + timedelta(hours=4), account="acme", attrs={"absence": "keep"})
    firing = Event(source="am", key="a1", kind="alert", title="alert", start=NOW - timedelta(hours=1), account="acme")
    first_poll = time.time()
    store.apply_poll("am", [silence, firing], absence="close", complete=True, now=first_poll, previous_success=None)
    changes = store.apply_poll("am", [], absence="close", complete=True, now=first_poll + 60, previous_success=first_poll)
    assert changes.closed == 1  # only the alert; the silence keeps its future end
    rows = {r.event.key: r.event for r in store.query_events(FeedQuery(0, 4e9))}
    assert rows["s1"].end == start + timedelta(hours=4)
    assert rows["a1"].end is not None and abs(rows["a1"].end.timestamp() - first_poll) < 1, "closed when last seen"


def test_incremental_poll_does_not_close_missing_events(make_env: object) -> None:
    from icsfeed.model import Event
    from icsfeed.store import FeedQuery

    _config, store = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    ev = Event(source="s", key="1", kind="alert", title="x", start=NOW, account="acme")
    store.apply_poll("s", [ev], absence="close", complete=True, now=time.time(), previous_success=None)
    changes = store.apply_poll("s", [], absence="close", complete=False, now=time.time(), previous_success=time.time())
    assert not changes.changed
    assert store.query_events(FeedQuery(0, 4e9))[0].event.end is None


def test_web_process_serves_a_new_render_at_once_here_and_within_a_second_from_elsewhere(
        env: tuple[Config, Store]) -> None:
    """Feed ETags are cached per web process (icsfeed/web/feed_cache.py): a render saved by
    this process is served by the next request; one saved by another process (another Store
    on the same database) within a second. Feed requests are still counted for /metrics."""
    from icsfeed.live import LiveConfig
    from icsfeed.tokens import feed_token
    from icsfeed.web import create_app

    config, store = env
    secret = b"k" * 32
    client = create_app(LiveConfig(config), store, secret).test_client()
    url = f"/feeds/acme.ics?token={feed_token(secret, 'account/acme', 1)}"
    first = client.get(url)
    assert first.status_code == 200 and first.headers["Content-Type"] == "text/calendar; charset=utf-8"
    etag = first.headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304

    write(config, "alerts.json", [alert("a1", "DiskFull", 120), alert("a3", "Renamed here", 30)])
    assert all(r.ok for r in poll(config, store))  # renders through this process's store
    here = client.get(url)
    assert here.headers["ETag"] != etag and "Renamed here" in here.get_data(as_text=True)

    other = Store(config.storage_url, uid_host=config.uid_host)  # as another process would
    try:
        write(config, "alerts.json", [alert("a1", "DiskFull", 120), alert("a4", "Renamed elsewhere", 20)])
        assert all(r.ok for r in poll(config, other))
        newest = other.get_feed("account/acme")
        assert newest is not None and f'"{newest.etag}"' != here.headers["ETag"]
        seen = [client.get(url).headers["ETag"]]
        deadline = time.monotonic() + 3
        while seen[-1] != f'"{newest.etag}"' and time.monotonic() < deadline:
            time.sleep(0.1)
            seen.append(client.get(url).headers["ETag"])
        assert seen[-1] == f'"{newest.etag}"', seen
        assert len(seen) <= 13, f"took {len(seen)} requests 0.1 s apart: more than the one-second cache"
        assert "Renamed elsewhere" in client.get(url).get_data(as_text=True)
    finally:
        other.close()
    from icsfeed.web.admin import load_admin_token  # /metrics is an admin page

    admin = {"Authorization": f"Bearer {load_admin_token(config.data_dir)}"}
    metrics = client.get("/metrics", headers=admin).get_data(as_text=True)
    assert 'icsfeed_http_requests_total{endpoint="feeds.account_feed",status="200"}' in metrics
    assert 'icsfeed_http_requests_total{endpoint="feeds.account_feed",status="304"} 1.0' in metrics
