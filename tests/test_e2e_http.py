"""End to end over HTTP on 127.0.0.1: `icsfeed serve` polling a real local HTTP origin."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
from conftest import Served, cli, write_config
from fake_origins import FakeOrigin, RecordedRequest, Reply, json_response
from parsers import check_all, parse_icalendar

NOW = datetime.now(timezone.utc).replace(microsecond=0)
TICKET = "SUMMARY:🎫".encode()  # ticket events (feeds also carry the weekly ⚠️ summary)


def tickets(n: int) -> dict[str, object]:
    return {"data": {"tickets": [
        {"id": 100 + i, "subject": f"Ticket {i}", "org": "acme", "created": (NOW - timedelta(hours=i)).isoformat()}
        for i in range(n)]}}


def config_files(origin_url: str) -> dict[str, str]:
    return {"icsfeed.yaml": f"""
        server: {{base_url: "https://feeds.example.com"}}
        accounts:
          - {{id: acme, name: ACME Corp, keys: [acme]}}
          - {{id: globex, name: Globex}}
        teams:
          - {{id: ops, name: Ops}}
        sources:
          - id: helpdesk
            type: http_json
            interval: 2
            url: "{origin_url}/api/tickets"
            params: {{updated_since: "{{since}}"}}
            headers: {{X-Api-Key: "${{HELPDESK_KEY}}"}}
            timeout: 2
            retries: 0
            items: data.tickets
            mapping:
              kind: ticket
              key: id
              title: "#{{id}} {{subject}}"
              url: "https://helpdesk.example.com/tickets/{{id}}"
              start: created
              account: org
    """}


def feed_url(config_dir: Path, data_dir: Path, feed: str, base: str) -> str:
    out = cli(config_dir, data_dir, "accounts", env={"HELPDESK_KEY": "unused"})
    assert out.returncode == 0, out.stderr
    url = next(line.strip() for line in out.stdout.splitlines() if f"/{feed}.ics?token=" in line)
    assert len(url) < 256, "Google Calendar refuses longer subscription URLs"
    return url.replace("https://feeds.example.com", base)


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_serve_polls_origin_and_serves_feeds(tmp_path: Path, serve: Callable[..., Served]) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/api/tickets", json_response(tickets(3)))
        config_dir = write_config(tmp_path / "config", config_files(origin.url))
        data_dir = tmp_path / "data"
        served = serve(config_dir, data_dir, env={"HELPDESK_KEY": "s3cr3t-key-value"})
        url = feed_url(config_dir, data_dir, "acme", served.base)

        def has_tickets() -> bool:
            r = requests.get(url, timeout=5)
            return r.status_code == 200 and b"Ticket 2" in r.content
        wait_for(has_tickets)

        first = origin.requests_to("/api/tickets")[0]
        assert first.headers.get("X-Api-Key") == "s3cr3t-key-value"
        assert first.arg("updated_since"), "the {since} placeholder is filled"

        response = requests.get(url, timeout=5)
        assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
        assert response.headers["Cache-Control"].startswith("private")
        assert response.headers["Referrer-Policy"] == "no-referrer"
        check_all(response.content)
        summaries = sorted(str(e["SUMMARY"]) for e in parse_icalendar(response.content).walk("VEVENT")
                           if str(e["SUMMARY"]).startswith("🎫"))
        assert summaries == ["🎫 #100 Ticket 0", "🎫 #101 Ticket 1", "🎫 #102 Ticket 2"]

        # conditional GETs: ETag and Last-Modified
        etag, modified = response.headers["ETag"], response.headers["Last-Modified"]
        assert requests.get(url, headers={"If-None-Match": etag}, timeout=5).status_code == 304
        not_modified = requests.get(url, headers={"If-Modified-Since": modified}, timeout=5)
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert requests.get(url, headers={"If-None-Match": '"other"'}, timeout=5).status_code == 200

        # gzip for clients that accept it, the same calendar inside
        raw = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
        assert raw.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in raw.headers["Vary"]
        assert gzip.decompress(raw.raw.read()) == response.content

        head = requests.head(url, headers={"Accept-Encoding": "identity"}, timeout=5)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["Content-Length"]) == len(response.content)

        # kinds= filter
        only_alerts = requests.get(url + "&kinds=alert", timeout=5)
        assert only_alerts.status_code == 200 and b"BEGIN:VEVENT" not in only_alerts.content
        only_tickets = requests.get(url + "&kinds=ticket", timeout=5)
        assert only_tickets.content.count(b"BEGIN:VEVENT") == 3
        check_all(only_alerts.content)

        # wrong token and unknown account: byte-identical 404s
        wrong = requests.get(url.split("token=")[0] + "token=AAAAAAAAAAAAAAAAAAAAAA", timeout=5)
        unknown = requests.get(served.base + "/feeds/nobody.ics?token=" + url.split("token=")[1], timeout=5)
        missing = requests.get(url.split("?")[0], timeout=5)
        other = requests.get(feed_url(config_dir, data_dir, "globex", served.base).replace("globex", "acme"), timeout=5)
        assert wrong.status_code == unknown.status_code == missing.status_code == other.status_code == 404
        assert wrong.content == unknown.content == missing.content == other.content
        assert dict(wrong.headers).keys() == dict(unknown.headers).keys()

        team = requests.get(feed_url(config_dir, data_dir, "ops", served.base), timeout=5)
        assert team.status_code == 200 and team.content.count(TICKET) == 3

        # the origin goes down: the poll fails, the feed keeps its events
        origin.add("GET", "/api/tickets", Reply(500, b"oops"))
        failures_seen = len(origin.requests_to("/api/tickets"))
        wait_for(lambda: len(origin.requests_to("/api/tickets")) > failures_seen)
        time.sleep(0.5)
        assert requests.get(url, timeout=5).content.count(TICKET) == 3
        assert "s3cr3t-key-value" not in served.log() and url.split("token=")[1] not in served.log()
        assert "HTTP 500" in served.log()


def test_config_reload_while_serving(tmp_path: Path, serve: Callable[..., Served]) -> None:
    with FakeOrigin() as origin:
        origin.route("GET", "/api/tickets", lambda _req: json_response(tickets(1)))
        config_dir = write_config(tmp_path / "config", config_files(origin.url))
        data_dir = tmp_path / "data"
        served = serve(config_dir, data_dir, env={"HELPDESK_KEY": "k"})
        acme = feed_url(config_dir, data_dir, "acme", served.base)
        wait_for(lambda: requests.get(acme, timeout=5).status_code == 200)

        # a new account appears without a restart
        (config_dir / "more.yaml").write_text("accounts: [{id: initech, name: Initech}]\n")
        initech = feed_url(config_dir, data_dir, "initech", served.base)
        wait_for(lambda: requests.get(initech, timeout=5).status_code == 200)

        # a broken file is refused; the last good config keeps serving
        (config_dir / "more.yaml").write_text("accounts: [{id: initech, name: Initech}\n")
        wait_for(lambda: "config change refused" in served.log())
        assert requests.get(initech, timeout=5).status_code == 200
        assert requests.get(acme, timeout=5).status_code == 200
        assert "more.yaml" in served.log()

        # token_version rotation revokes the old URL
        (config_dir / "more.yaml").write_text("accounts: [{id: initech, name: Initech, token_version: 2}]\n")
        wait_for(lambda: requests.get(initech, timeout=5).status_code == 404)
        rotated = feed_url(config_dir, data_dir, "initech", served.base)
        assert rotated != initech
        wait_for(lambda: requests.get(rotated, timeout=5).status_code == 200)


def test_origin_that_hangs_times_out_and_keeps_events(tmp_path: Path, serve: Callable[..., Served]) -> None:
    state = {"mode": "ok"}

    def answer(_req: RecordedRequest) -> Reply:
        if state["mode"] == "hang":
            time.sleep(4)  # longer than the source's 2 s timeout
        return json_response(tickets(2))

    with FakeOrigin() as origin:
        origin.route("GET", "/api/tickets", answer)
        config_dir = write_config(tmp_path / "config", config_files(origin.url))
        data_dir = tmp_path / "data"
        served = serve(config_dir, data_dir, env={"HELPDESK_KEY": "k"})
        url = feed_url(config_dir, data_dir, "acme", served.base)
        wait_for(lambda: requests.get(url, timeout=5).content.count(TICKET) == 2)
        state["mode"] = "hang"
        wait_for(lambda: "no answer within 2s" in served.log(), timeout=30)
        assert requests.get(url, timeout=5).content.count(TICKET) == 2
        assert "Traceback" not in served.log(), "a timeout is an expected failure, not a crash"
