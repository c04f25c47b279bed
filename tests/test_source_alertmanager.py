"""The alertmanager source against the real Alertmanager (Debian's prometheus-alertmanager).

Each test posts its alerts and silences with a unique ``test`` label and polls with
``filter: ['test="<name>"']``, so the tests share one Alertmanager without seeing each
other's data (and the filter itself is exercised against the real product).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import icalendar
import pydantic
import pytest
import requests

from icsfeed.model import Event
from icsfeed.sources import load_source_class
from icsfeed.sources.alertmanager import AlertmanagerSource
from icsfeed.sources.base import KindInfo, SourceContext, SourceError

BINARY = "/usr/bin/prometheus-alertmanager"
MINIMAL_CONFIG = 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'
AUTH_USER = "icsfeed"
AUTH_PASSWORD = "Tr0ub4dor-am-pw"
#: bcrypt of AUTH_PASSWORD (what Alertmanager's --web.config.file wants)
AUTH_HASH = "$2b$04$zYTw.JSZWp/kRnCPQg2CY.IusDNLKlOvsU2kB2C/xceEmWuY6jcv2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_alertmanager(workdir: Path, web_config: str | None = None,
                        config: str = MINIMAL_CONFIG) -> tuple[subprocess.Popen[bytes], str]:
    """Start the real binary on a free 127.0.0.1 port; fail loudly if it is not there.
    ``config``: its alertmanager.yml (routes and receivers: the webhook tests send to icsfeed)."""
    if not (os.path.exists(BINARY) or shutil.which("prometheus-alertmanager")):
        pytest.fail(f"{BINARY} is missing: install the Debian package prometheus-alertmanager "
                    "(these tests run the real Alertmanager, they are never skipped)")
    binary = BINARY if os.path.exists(BINARY) else str(shutil.which("prometheus-alertmanager"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "am.yml").write_text(config)
    port = _free_port()
    args = [binary, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    if web_config is not None:
        (workdir / "web.yml").write_text(web_config)
        args.append(f"--web.config.file={workdir / 'web.yml'}")
    log = open(workdir / "am.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"alertmanager exited with {proc.returncode}:\n{(workdir / 'am.log').read_text()[-2000:]}")
        try:
            answer = requests.get(f"{url}/-/ready", timeout=1)
            if answer.status_code in (200, 401):
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"alertmanager not ready within 30s:\n{(workdir / 'am.log').read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def am_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def am_auth_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    web = f"basic_auth_users:\n  {AUTH_USER}: {AUTH_HASH}\n"
    proc, url = _start_alertmanager(tmp_path_factory.mktemp("alertmanager-auth"), web_config=web)
    try:
        yield url
    finally:
        _stop(proc)


def _context(tmp_path: Path) -> SourceContext:
    return SourceContext(config_dir=tmp_path, data_dir=tmp_path, kinds={
        "alert": KindInfo(all_day=False, duration_seconds=3600),
        "maintenance": KindInfo(all_day=False, duration_seconds=3600),
    })


def _source(tmp_path: Path, **raw: Any) -> AlertmanagerSource:
    cls = load_source_class("alertmanager")
    assert cls is AlertmanagerSource
    return AlertmanagerSource("prod-am", cls.parse_settings(raw), _context(tmp_path))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _post_alerts(url: str, *alerts: dict[str, Any]) -> None:
    answer = requests.post(f"{url}/api/v2/alerts", json=list(alerts), timeout=5)
    assert answer.status_code == 200, answer.text


def _post_silence(url: str, **silence: Any) -> str:
    answer = requests.post(f"{url}/api/v2/silences", json=silence, timeout=5)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["silenceID"])


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def _poll_until(source: AlertmanagerSource, predicate: Any, what: str, timeout: float = 10) -> list[Event]:
    """Alertmanager ingests posted alerts asynchronously: poll until they show (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        events = list(source.fetch(None))
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s; last poll: {events!r}")
        time.sleep(0.2)


def _alerts(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "alert"]


def _silences(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "maintenance"]


# --- alerts ------------------------------------------------------------------------------


def test_firing_alert_becomes_an_open_event(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    started = _now() - timedelta(minutes=10)
    _post_alerts(am_url, {
        "labels": {"alertname": "DiskFull", "instance": "web01:9100", "customer": "acme",
                   "severity": "critical", "test": tag},
        "annotations": {"summary": "Disk almost full", "description": "/var is at 99%",
                        "runbook_url": "https://runbooks.example.com/disk"},
        "startsAt": _iso(started),
        "endsAt": _iso(_now() + timedelta(hours=1)),
        "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=disk_free",
    })
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    events = _poll_until(source, lambda evs: len(_alerts(evs)) == 1, "the posted alert")
    (ev,) = _alerts(events)
    fingerprint = requests.get(f"{am_url}/api/v2/alerts", params={"filter": f'test="{tag}"'},
                               timeout=5).json()[0]["fingerprint"]
    assert ev.source == "prod-am"
    assert ev.key == f"{fingerprint}@{_iso(started)}"
    assert ev.kind == "alert"
    assert ev.title == "DiskFull on web01:9100"
    assert ev.start == started
    assert ev.end is None, "a firing alert is open, whatever its provisional endsAt"
    assert ev.account == "acme"
    assert ev.severity == "critical"
    assert ev.url == "http://prometheus.example.com:9090/graph?g0.expr=disk_free"
    ui_linked = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'], alert_links="alertmanager")
    (own,) = _alerts(list(ui_linked.fetch(None)))
    assert own.url and own.url.startswith(f"{am_url}/#/alerts?silenced=true&inhibited=true&active=true&filter=%7B")
    assert ev.status == "confirmed"
    lines = ev.detail.splitlines()
    assert lines[:2] == ["Disk almost full", "/var is at 99%"]
    assert "runbook_url: https://runbooks.example.com/disk" in lines
    assert "State: active" in lines
    for line in ("alertname=DiskFull", "customer=acme", "instance=web01:9100", "severity=critical"):
        assert line in lines
    assert ev.attrs["fingerprint"] == fingerprint
    assert ev.attrs["labels"]["instance"] == "web01:9100"
    assert "absence" not in ev.attrs
    assert AlertmanagerSource.absence == "close"
    assert source.skipped == []


def test_links_to_the_ui_when_generator_url_is_not_http(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    _post_alerts(am_url, {
        "labels": {"alertname": "Backup \"late\"", "tenant": "globex", "test": tag},
        "startsAt": _iso(_now() - timedelta(minutes=1)),
        "generatorURL": "javascript:alert(1)",
    })
    source = _source(tmp_path, url=am_url, ui_url="https://am.example.com/", filter=[f'test="{tag}"'],
                     account_label=["customer", "tenant"], severity_label="priority")
    (ev,) = _alerts(_poll_until(source, lambda evs: len(_alerts(evs)) == 1, "the posted alert"))
    assert ev.title == 'Backup "late"', "no instance label: the next title template applies"
    assert ev.account == "globex", "second account label applies when the first is missing"
    assert ev.severity is None
    parts = urlsplit(ev.url or "")
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "am.example.com", "/")
    fragment = urlsplit(parts.fragment)
    assert fragment.path == "/alerts"
    query = parse_qs(fragment.query)
    assert query["silenced"] == ["true"] and query["inhibited"] == ["true"]
    assert query["filter"] == ['{alertname="Backup \\"late\\"",tenant="globex",test="' + tag + '"}']
    # The filter is what Alertmanager itself accepts: asking the API with it finds the alert.
    found = requests.get(f"{am_url}/api/v2/alerts", timeout=5,
                         params={"filter": query["filter"][0].strip("{}").split(",")}).json()
    assert [a["labels"]["test"] for a in found] == [tag]


def test_title_templates_fall_back_in_order(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    _post_alerts(am_url,
                 {"labels": {"alertname": "A", "job": "node", "test": tag}, "annotations": {"summary": "sum A"}},
                 {"labels": {"alertname": "B", "test": tag}},
                 {"labels": {"alertname": "C", "job": "", "test": tag}, "annotations": {"summary": "sum C"}})
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'],
                     title=["{annotations[summary]} ({job})", "{alertname} on {instance}", "{alertname}!"])
    events = _alerts(_poll_until(source, lambda evs: len(_alerts(evs)) == 3, "three alerts"))
    assert sorted(e.title for e in events) == ["B!", "C!", "sum A (node)"]
    dotted = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'], title=["{annotations.summary}: {labels.job}",
                                                                            "{annotations.summary}", "{alertname}"])
    assert sorted(e.title for e in _alerts(list(dotted.fetch(None)))) == ["B", "sum A: node", "sum C"]


def test_resolved_alert_is_no_longer_returned_and_a_refire_is_a_new_event(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    labels = {"alertname": "HostDown", "instance": "db01", "customer": "acme", "test": tag}
    first_start = _now() - timedelta(minutes=30)
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(first_start)})
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    (first,) = _alerts(_poll_until(source, lambda evs: len(_alerts(evs)) == 1, "the firing alert"))
    assert first.end is None

    # Prometheus resolves an alert by sending it again with endsAt in the past.
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(first_start), "endsAt": _iso(_now() - timedelta(minutes=20))})
    _poll_until(source, lambda evs: not _alerts(evs), "the resolved alert disappearing")
    # Real behaviour of API v2: a resolved alert is not returned, whatever the state flags.
    raw = requests.get(f"{am_url}/api/v2/alerts", timeout=5, params={
        "filter": f'test="{tag}"', "active": "true", "silenced": "true", "inhibited": "true",
        "unprocessed": "true"}).json()
    assert raw == []

    refire_start = _now() - timedelta(minutes=5)
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(refire_start)})
    (second,) = _alerts(_poll_until(source, lambda evs: len(_alerts(evs)) == 1, "the re-fired alert"))
    assert second.start == refire_start
    assert second.attrs["fingerprint"] == first.attrs["fingerprint"]
    assert second.key != first.key, "a re-fire is a new event"


def test_silenced_alert_still_counts_unless_excluded(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    _post_alerts(am_url, {"labels": {"alertname": "Noisy", "customer": "acme", "test": tag}})
    silence_id = _post_silence(
        am_url, matchers=[{"name": "test", "value": tag, "isRegex": False, "isEqual": True}],
        startsAt=_iso(_now()), endsAt=_iso(_now() + timedelta(hours=1)), createdBy="jane", comment="quiet")
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    events = _poll_until(source, lambda evs: any(e.attrs.get("state") == "suppressed" for e in _alerts(evs)),
                         "the alert being suppressed")
    (ev,) = _alerts(events)
    assert f"State: suppressed (silenced by {silence_id})" in ev.detail.splitlines()
    assert ev.attrs["silenced_by"] == [silence_id]
    assert ev.end is None
    assert [s.key for s in _silences(events)] == [f"silence/{silence_id}"]

    quiet = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'], include_silenced=False, include_silences=False)
    assert list(quiet.fetch(None)) == []


# --- silences ----------------------------------------------------------------------------


def test_silence_becomes_a_maintenance_window_and_is_kept_when_expired(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    starts = _now() + timedelta(hours=2)
    ends = starts + timedelta(hours=3)
    silence_id = _post_silence(
        am_url,
        matchers=[{"name": "customer", "value": "acme", "isRegex": False, "isEqual": True},
                  {"name": "alertname", "value": "Disk.*", "isRegex": True, "isEqual": True},
                  {"name": "test", "value": tag, "isRegex": False, "isEqual": True}],
        startsAt=_iso(starts), endsAt=_iso(ends), createdBy="jane@example.com",
        comment="Storage migration\nticket OPS-42")
    source = _source(tmp_path, url=am_url, ui_url="https://am.example.com", filter=[f'test="{tag}"'])
    (ev,) = _silences(_poll_until(source, lambda evs: len(_silences(evs)) == 1, "the silence"))
    assert ev.key == f"silence/{silence_id}"
    assert ev.title == "Silence: Storage migration"
    assert (ev.start, ev.end) == (starts, ends)
    assert ev.account == "acme"
    assert ev.url == f"https://am.example.com/#/silences/{silence_id}"
    assert ev.status == "confirmed"
    assert ev.attrs["absence"] == "keep", "the store must keep a vanished silence, not close it"
    assert ev.attrs["state"] == "pending"
    lines = ev.detail.splitlines()
    assert lines[:2] == ["Storage migration", "ticket OPS-42"]
    assert f'Matchers: customer="acme", alertname=~"Disk.*", test="{tag}"' in lines
    assert "Created by: jane@example.com" in lines

    # Expiring a pending silence: Alertmanager sets startsAt = endsAt = now; the planned
    # window was called off.
    assert requests.delete(f"{am_url}/api/v2/silence/{silence_id}", timeout=5).status_code == 200
    (gone,) = _silences(list(source.fetch(None)))
    assert gone.attrs["state"] == "expired"
    assert gone.status == "cancelled"
    assert gone.start == gone.end and gone.start < starts


def test_expired_active_silence_ends_when_it_was_expired(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    silence_id = _post_silence(
        am_url, matchers=[{"name": "test", "value": tag, "isRegex": False}, {"name": "team", "value": "db", "isRegex": False}],
        startsAt=_iso(_now()), endsAt=_iso(_now() + timedelta(hours=4)), createdBy="bob", comment="")
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    (active,) = _silences(list(source.fetch(None)))
    assert active.title == f'Silence: test="{tag}", team="db"', "no comment: the matchers name it"
    assert active.account is None, "no customer matcher: team feeds only"
    time.sleep(0.05)
    before = datetime.now(UTC)
    assert requests.delete(f"{am_url}/api/v2/silence/{silence_id}", timeout=5).status_code == 200
    (expired,) = _silences(list(source.fetch(None)))
    assert expired.status == "confirmed", "an expired silence happened"
    assert expired.start == active.start
    assert expired.end is not None and before - timedelta(seconds=1) <= expired.end <= datetime.now(UTC)
    assert expired.key == active.key


def test_regex_account_matcher_gives_no_account(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    _post_silence(am_url, matchers=[{"name": "customer", "value": "acme|globex", "isRegex": True},
                                    {"name": "test", "value": tag, "isRegex": False}],
                  startsAt=_iso(_now()), endsAt=_iso(_now() + timedelta(hours=1)), createdBy="x", comment="both")
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    (ev,) = _silences(list(source.fetch(None)))
    assert ev.account is None


# --- failures ----------------------------------------------------------------------------


def test_unreachable_alertmanager_is_a_source_error(tmp_path: Path) -> None:
    source = _source(tmp_path, url=f"http://127.0.0.1:{_free_port()}", retries=0, timeout=2)
    with pytest.raises(SourceError, match="cannot connect"):
        list(source.fetch(None))


def test_wrong_path_is_a_source_error(am_url: str, tmp_path: Path) -> None:
    source = _source(tmp_path, url=f"{am_url}/not-alertmanager", retries=0)
    with pytest.raises(SourceError, match="HTTP 404"):
        list(source.fetch(None))


def test_basic_auth_works_and_the_password_never_shows(am_auth_url: str, tmp_path: Path) -> None:
    tag = _tag()
    good = _source(tmp_path, url=am_auth_url, filter=[f'test="{tag}"'],
                   auth={"username": AUTH_USER, "password": AUTH_PASSWORD})
    answer = requests.post(f"{am_auth_url}/api/v2/alerts", auth=(AUTH_USER, AUTH_PASSWORD), timeout=5,
                           json=[{"labels": {"alertname": "Guarded", "test": tag}}])
    assert answer.status_code == 200
    (ev,) = _alerts(_poll_until(good, lambda evs: len(_alerts(evs)) == 1, "the alert behind basic auth"))
    assert ev.title == "Guarded"

    wrong_password = "wrong-" + AUTH_PASSWORD
    bad = _source(tmp_path, url=am_auth_url, retries=0, auth={"username": AUTH_USER, "password": wrong_password})
    with pytest.raises(SourceError) as caught:
        list(bad.fetch(None))
    assert "authentication failed" in str(caught.value)
    assert wrong_password not in str(caught.value) and AUTH_PASSWORD not in str(caught.value)
    assert wrong_password not in repr(bad.settings) and wrong_password not in str(bad.settings.model_dump())

    unreachable = _source(tmp_path, url=f"http://127.0.0.1:{_free_port()}", retries=0,
                          auth={"username": AUTH_USER, "password": AUTH_PASSWORD})
    with pytest.raises(SourceError) as caught:
        list(unreachable.fetch(None))
    assert AUTH_PASSWORD not in str(caught.value)


# --- records the real product does not produce (documented v2 shapes, served locally) ---------


class _FakeAm(BaseHTTPRequestHandler):
    """Serves fixed JSON bodies for /api/v2/alerts and /api/v2/silences."""

    bodies: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.bodies.get(urlsplit(self.path).path, {"error": "nope"})).encode()
        self.send_response(200 if urlsplit(self.path).path in self.bodies else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_am() -> Iterator[tuple[str, dict[str, Any]]]:
    bodies: ClassVar[dict[str, Any]] = {}
    handler = type("Handler", (_FakeAm,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_bad_records_are_skipped_not_fatal(fake_am: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, bodies = fake_am
    good = {"fingerprint": "abc123", "labels": {"alertname": "Ok"}, "annotations": {},
            "startsAt": "2024-05-01T10:00:00.000Z", "endsAt": "2024-05-01T10:05:00.000Z",
            "updatedAt": "2024-05-01T10:00:00.000Z", "status": {"state": "active", "silencedBy": [], "inhibitedBy": []},
            "receivers": [{"name": "null"}], "generatorURL": ""}
    bodies["/api/v2/alerts"] = [
        good,
        {**good, "fingerprint": None},
        {**good, "fingerprint": "def", "startsAt": "yesterday"},
        {**good, "fingerprint": "ghi", "labels": ["not", "a", "map"]},
        "not an object",
    ]
    bodies["/api/v2/silences"] = [
        {"id": "s1", "status": {"state": "active"}, "matchers": [], "createdBy": "x", "comment": "c",
         "startsAt": "2024-05-01T10:00:00.000Z", "endsAt": "2024-05-01T09:00:00.000Z"},
        {"id": "s2", "status": "weird", "matchers": [{"name": "customer", "value": "acme", "isRegex": False}],
         "createdBy": "x", "comment": "", "startsAt": "2024-05-01T10:00:00.000Z", "endsAt": "2024-05-01T11:00:00.000Z"},
    ]
    source = _source(tmp_path, url=url)
    events = list(source.fetch(None))
    assert [e.key for e in events] == ["abc123@2024-05-01T10:00:00.000Z", "silence/s2"]
    # endsAt of this returned alert is in the past: it did end, and then is not open.
    assert events[0].end == datetime(2024, 5, 1, 10, 5, tzinfo=UTC)
    assert events[0].url and events[0].url.startswith(f"{url}/#/alerts?")
    assert events[1].account == "acme"
    assert len(source.skipped) == 5
    assert any("startsAt" in reason or "not a date" in reason for reason in source.skipped)


def test_an_answer_that_is_not_a_list_is_a_source_error(fake_am: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, bodies = fake_am
    bodies["/api/v2/alerts"] = {"status": "success", "data": []}  # the old v1 shape
    bodies["/api/v2/silences"] = []
    with pytest.raises(SourceError, match="not an Alertmanager API v2 answer"):
        list(_source(tmp_path, url=url).fetch(None))


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    {},
    {"url": "ftp://am.example.com"},
    {"url": "http://user:secret@am.example.com"},
    {"url": "http://am", "title": "{alertname"},
    {"url": "http://am", "title": "{}"},
    {"url": "http://am", "title": []},
    {"url": "http://am", "unknown_key": 1},
])
def test_invalid_settings_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        AlertmanagerSource.parse_settings(raw)


def test_defaults() -> None:
    s = AlertmanagerSource.parse_settings({"url": "http://am.example.com:9093/"})
    assert s.url == "http://am.example.com:9093"  # type: ignore[attr-defined]
    assert s.ui_url == "http://am.example.com:9093"  # type: ignore[attr-defined]
    assert s.account_label == ["customer"]  # type: ignore[attr-defined]
    assert s.severity_label == "severity"  # type: ignore[attr-defined]
    assert s.include_silences is True  # type: ignore[attr-defined]


# --- end to end: CLI poll + render ------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(config_dir: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"icsfeed {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _feed_events(path: Path) -> dict[str, Any]:
    calendar = icalendar.Calendar.from_ical(path.read_bytes())
    return {str(ev.get("SUMMARY")): ev for ev in calendar.walk("VEVENT")}


@pytest.mark.slow
def test_end_to_end_alert_stays_in_the_feed_closed_after_it_resolves(am_url: str, tmp_path: Path) -> None:
    tag = _tag()
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    (config_dir / "icsfeed.yaml").write_text(
        "accounts:\n"
        "  - id: acme\n    name: ACME Corp\n    keys: [acme]\n"
        "sources:\n"
        f"  - id: prod-am\n    type: alertmanager\n    interval: 60\n    url: {am_url}\n"
        f"    ui_url: https://am.example.com\n    account_label: customer\n"
        f"    filter: ['test=\"{tag}\"']\n")
    labels = {"alertname": "DiskFull", "instance": "web01:9100", "customer": "acme", "severity": "critical", "test": tag}
    started = _now() - timedelta(minutes=15)
    _post_alerts(am_url, {"labels": labels, "annotations": {"summary": "Disk almost full"}, "startsAt": _iso(started)})
    window = (_now() + timedelta(hours=1), _now() + timedelta(hours=2))
    silence_id = _post_silence(am_url, matchers=[{"name": "customer", "value": "acme", "isRegex": False},
                                                 {"name": "test", "value": tag, "isRegex": False}],
                               startsAt=_iso(window[0]), endsAt=_iso(window[1]), createdBy="jane", comment="DB upgrade")
    source = _source(tmp_path, url=am_url, filter=[f'test="{tag}"'])
    _poll_until(source, lambda evs: len(_alerts(evs)) == 1, "the posted alert")

    before_first = datetime.now(UTC)
    first = _cli(config_dir, data_dir, "poll", "--once")
    after_first = datetime.now(UTC)
    assert "prod-am: 2 new" in first.stdout, first.stdout
    _cli(config_dir, data_dir, "render", "acme", "-o", str(tmp_path / "acme.ics"))
    events = _feed_events(tmp_path / "acme.ics")
    alert = events["🚨 🔥 FIRING: DiskFull on web01:9100"]  # still firing: says so
    assert alert.decoded("DTSTART") == started
    assert alert.decoded("DTEND") >= after_first, "a firing alert reaches at least its last sighting"
    assert str(alert.get("URL")).startswith("https://am.example.com/#/alerts?")
    assert str(alert.get("STATUS")) == "CONFIRMED"
    maintenance = events["🔧 Silence: DB upgrade"]
    assert (maintenance.decoded("DTSTART"), maintenance.decoded("DTEND")) == window
    assert str(maintenance.get("URL")) == f"https://am.example.com/#/silences/{silence_id}"

    # Resolve the alert and expire the silence: Alertmanager stops returning the alert ...
    _post_alerts(am_url, {"labels": labels, "startsAt": _iso(started), "endsAt": _iso(_now() - timedelta(seconds=1))})
    assert requests.delete(f"{am_url}/api/v2/silence/{silence_id}", timeout=5).status_code == 200
    _poll_until(source, lambda evs: not _alerts(evs), "the resolved alert disappearing")
    time.sleep(1.1)
    second = _cli(config_dir, data_dir, "poll", "--once")
    assert "1 closed" in second.stdout, second.stdout
    _cli(config_dir, data_dir, "render", "acme", "-o", str(tmp_path / "acme2.ics"))
    events = _feed_events(tmp_path / "acme2.ics")
    # ... and the feed keeps it, ended when it was last seen (the first poll), no longer firing.
    assert not any("FIRING" in summary for summary in events)
    alert = events["🚨 DiskFull on web01:9100"]
    assert alert.decoded("DTSTART") == started
    end = alert.decoded("DTEND")
    assert before_first - timedelta(seconds=1) <= end <= after_first + timedelta(seconds=1)
    assert int(alert.get("SEQUENCE")) >= 1
    # The silence was still returned (expired, cancelled before it began): it stays too.
    cancelled = events["🔧 Silence: DB upgrade"]
    assert str(cancelled.get("STATUS")) == "CANCELLED"


def test_documented_example_is_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (REPO_ROOT / "docs" / "sources" / "alertmanager.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sources.yaml").write_text(example)
    monkeypatch.setenv("ALERTMANAGER_PASSWORD", "pw-from-env")
    monkeypatch.setenv("ICSFEED_AM_HOOK_TOKEN", "hook-token-from-env-0123")
    from icsfeed.config import load_config

    config = load_config(tmp_path, tmp_path / "data")
    settings = config.source_settings["prod-am"]
    assert isinstance(settings, AlertmanagerSource.Settings)
    assert settings.auth is not None and settings.auth.password is not None
    assert settings.auth.password.get_secret_value() == "pw-from-env"
    assert settings.silence_filter == [] and settings.filter == ['env="prod"']
    assert settings.webhook_token is not None
    assert settings.webhook_token.get_secret_value() == "hook-token-from-env-0123"
    assert "hook-token-from-env-0123" in config.secrets, "the token is redacted like every secret"


def test_documented_receiver_is_valid_alertmanager_config(tmp_path: Path) -> None:
    """The receiver YAML of the docs, checked by the real Alertmanager's own amtool."""
    doc = (REPO_ROOT / "docs" / "sources" / "alertmanager.md").read_text()
    receiver = doc.split("## Webhook", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "webhook_configs" in receiver and "send_resolved: true" in receiver
    (tmp_path / "am.yml").write_text(receiver)
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is missing: install the Debian package prometheus-alertmanager")
    done = subprocess.run([amtool, "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
