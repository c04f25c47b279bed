"""Issue 12, item 4: an alert that is still firing looks like it is firing.

While it fires, SUMMARY says so (``🚨 🔥 FIRING: …``) and DTEND reaches at least the last
time a poll saw it, rounded up to the next full hour, so an alert polled every minute changes
its feed (and SEQUENCE) about once an hour. When it resolves, DTEND is the real end and the
marker is gone. The polls here are the real Alertmanager's API (Debian's
prometheus-alertmanager) through ``icsfeed.poller.poll``, the real store and the renderer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from parsers import parse_icalendar
from test_source_alertmanager import _iso, _now, _post_alerts, _start_alertmanager, _stop, _tag

from icsfeed.config import Config
from icsfeed.poller import build_source, poll
from icsfeed.render import fragment_renderer, render_feeds
from icsfeed.routing import affected_feeds
from icsfeed.sources.alertmanager import AlertmanagerSource
from icsfeed.store import Store

#: what SUMMARY says after the kind's icon while an alert fires
FIRING_MARKER = "🔥 FIRING: "

CONFIG = """
accounts: [{{id: acme, name: ACME, keys: [acme]}}]
teams: [{{id: ops, name: Ops, accounts: "*", kinds: [alert]}}]
insights: {{enabled: false}}
sources:
  - id: am
    type: alertmanager
    interval: 1m
    url: {url}
    include_silences: false
    filter: ['test="{tag}"']
"""


@pytest.fixture(scope="module")
def am_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start_alertmanager(tmp_path_factory.mktemp("am-firing"))
    try:
        yield url
    finally:
        _stop(proc)


def seen_until(when: datetime) -> datetime:
    """The next full hour after ``when``."""
    return when.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _vevents(store: Store, feed_id: str = "account/acme") -> dict[str, Any]:
    return {str(e["SUMMARY"]): e for e in parse_icalendar(store.get_feed(feed_id).body).walk("VEVENT")}


def _poll_until_seen(config: Config, store: Store, what: str) -> None:
    """Alertmanager takes posted alerts asynchronously: poll (bounded) until one is stored."""
    for _ in range(50):
        (report,) = poll(config, store, ["am"])
        assert report.ok, report.line()
        if report.new:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} never reached the store")


def test_an_alert_firing_for_two_hours_shows_as_firing_until_the_next_hour_then_its_real_end(
        am_url: str, make_env: Any) -> None:
    tag = _tag()
    config, store = make_env({"c.yaml": CONFIG.format(url=am_url, tag=tag)})
    started = _now() - timedelta(hours=2, minutes=10)
    labels = {"alertname": "DiskFull", "instance": "web01", "customer": "acme", "test": tag}
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(started)})
    before = datetime.now(UTC)
    _poll_until_seen(config, store, "the firing alert")
    after = datetime.now(UTC)

    events = _vevents(store)
    firing = events.get(f"🚨 {FIRING_MARKER}DiskFull on web01")
    assert firing is not None, f"SUMMARY must say the alert is firing: {list(events)}"
    assert firing.decoded("DTSTART") == started
    end = firing.decoded("DTEND")
    assert end >= after, f"DTEND {end} is before the poll that saw it firing ({after}): shown as over"
    assert end in (seen_until(before), seen_until(after)), "rounded up to the next full hour"
    assert "ongoing" in str(firing["DESCRIPTION"])
    assert "🚨 🔥 FIRING: DiskFull on web01" in _vevents(store, "team/ops"), "team feeds say so too"
    assert int(firing["SEQUENCE"]) == 0

    # Prometheus resolves it: Alertmanager stops returning it, the next poll closes it at the
    # last sighting (the previous poll), and the marker is gone.
    last_seen = store.source_state("am").last_success
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(started), "endsAt": _iso(_now() - timedelta(seconds=1))})
    for _ in range(50):
        (report,) = poll(config, store, ["am"])
        if report.closed:
            break
        time.sleep(0.2)
    assert report.closed == 1, report.line()
    events = _vevents(store)
    assert not any("FIRING" in s for s in events), list(events)
    closed = events["🚨 DiskFull on web01"]
    assert closed.decoded("DTEND") == datetime.fromtimestamp(int(last_seen), UTC)
    assert "ongoing" not in str(closed["DESCRIPTION"])
    assert int(closed["SEQUENCE"]) == 1


def test_an_alert_firing_since_before_the_window_stays_in_the_feed(am_url: str, make_env: Any) -> None:
    """The feed window (90 days back) takes a firing alert by its last sighting, not its start."""
    tag = _tag()
    config, store = make_env({"c.yaml": CONFIG.format(url=am_url, tag=tag)})
    started = _now() - timedelta(days=120)
    _post_alerts(am_url, {"labels": {"alertname": "Forever", "customer": "acme", "test": tag},
                          "startsAt": _iso(started)})
    _poll_until_seen(config, store, "the long-firing alert")
    events = _vevents(store)
    assert f"🚨 {FIRING_MARKER}Forever" in events, f"a 120-day-old alert that still fires is missing: {list(events)}"
    assert events[f"🚨 {FIRING_MARKER}Forever"].decoded("DTSTART") == started


RECORD = {"fingerprint": "0123456789abcdef", "startsAt": "2026-12-01T09:58:00.000Z",
          "endsAt": "2026-12-01T09:58:00.000Z",
          "labels": {"alertname": "HighLoad", "instance": "db01", "customer": "acme"},
          "annotations": {"summary": "Load is high"}, "generatorURL": "https://prom.example.com/graph",
          "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}}


def test_polls_every_five_minutes_bump_sequence_about_hourly_and_dtend_always_reaches_them(make_env: Any) -> None:
    """A firing alert polled every 5 minutes for three hours: the stored event changes once per
    hour, not on every poll, and every render's DTEND is at or after the poll's time."""
    config, store = make_env({"c.yaml": CONFIG.format(url="http://127.0.0.1:9", tag="x")})
    source = build_source(config, "am")
    assert isinstance(source, AlertmanagerSource)
    record = dict(RECORD, endsAt="2026-12-01T14:30:00.000Z")  # provisional: not an end while firing
    first = datetime(2026, 12, 1, 10, 2, 30, tzinfo=UTC)
    updates = 0
    for step in range(36):  # 10:02:30 … 12:57:30
        now = first + timedelta(minutes=5 * step)
        changes = store.apply_poll("am", [source.alert_event(record, now)], absence="close", complete=True,
                                   now=now.timestamp(), previous_success=(now - timedelta(minutes=5)).timestamp(),
                                   affected=lambda t: affected_feeds(config, t), fragment=fragment_renderer(config))
        updates += changes.updated
        render_feeds(config, store, now=now)
        (ev,) = _vevents(store).values()
        assert str(ev["SUMMARY"]) == f"🚨 {FIRING_MARKER}HighLoad on db01"
        end = ev.decoded("DTEND")
        assert now <= end <= now + timedelta(hours=1), f"poll at {now}: DTEND {end}"
        assert end.minute == end.second == 0
    assert updates == 2, f"the hour turned twice (11:00, 12:00): two changes, not {updates}"
    assert int(ev["SEQUENCE"]) == 2
