"""Hostile origins (issue 9, items 4 and 7-12): a bad record is skipped with a reason, a bad
origin fails its own poll, nothing crashes, nothing grows without bound, credentials stay
with their host and text arrives the way it was sent.

Every origin here is a real HTTP server on 127.0.0.1 (tests/fake_origins.py), every
command a real subprocess, every poll the real poller into a real SQLite store; where the
CLI is the thing under test it runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import icalendar
import pytest
from conftest import DEMO_CONFIG, REPO, cli, write_config
from fake_origins import FakeOrigin, RecordedRequest, Reply, TrickleOrigin, json_response
from sqlalchemy import select

from icsfeed.config import Config
from icsfeed.poller import poll, poll_source
from icsfeed.store import FeedQuery, Store, events_table

EVERYTHING = FeedQuery(-1e13, 1e13)
NOW = datetime.now(timezone.utc).replace(microsecond=0)
BASE = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: all, name: Everything, accounts: "*"}]
insights: {enabled: false}
"""
MAPPING = '{kind: ticket, key: id, title: title, detail: detail, start: start, account: "=acme"}'

MakeEnv = Callable[[dict[str, str]], tuple[Config, Store]]


def env_with(make_env: MakeEnv, sources: str, **extra: str) -> tuple[Config, Store]:
    """Config and store from BASE plus a ``sources:`` block (YAML, dedented)."""
    return make_env({"a.yaml": textwrap.dedent(BASE) + "sources:\n" + textwrap.indent(textwrap.dedent(sources), "  "),
                     **extra})


def stored(store: Store) -> dict[str, Any]:
    return {row.event.key: row.event for row in store.query_events(EVERYTHING)}


def record(key: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"id": key, "title": f"ticket {key}", "start": (NOW - timedelta(hours=1)).isoformat(), **fields}


#: one source of each HTTP type against ``{url}``, with ``{extra}`` settings
HTTP_TYPES = {
    "http_json": "- {{id: s, type: http_json, url: '{url}/items', mapping: " + MAPPING.replace("{", "{{").replace("}", "}}")
                 + ", {extra}}}",
    "ics": "- {{id: s, type: ics, url: '{url}/cal.ics', {extra}}}",
    "jira": "- {{id: s, type: jira, base_url: '{url}', {extra}}}",
    "zendesk": "- {{id: s, type: zendesk, base_url: '{url}', {extra}}}",
    "alertmanager": "- {{id: s, type: alertmanager, url: '{url}', {extra}}}",
}
#: where each type sends its first request, and what a good empty answer is there
FIRST_REQUEST = {
    "http_json": ("GET", "/items", json_response([])),
    "ics": ("GET", "/cal.ics", Reply(200, b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nEND:VCALENDAR\r\n",
                                     {"Content-Type": "text/calendar"})),
    "jira": ("POST", "/rest/api/3/search/jql", json_response({"issues": [], "isLast": True})),
    "zendesk": ("GET", "/api/v2/incremental/tickets/cursor.json",
                json_response({"tickets": [], "after_cursor": None, "end_of_stream": True})),
    "alertmanager": ("GET", "/api/v2/alerts", json_response([])),
}


# --- item 4: credentials never follow a redirect to another host -------------------------------

SECRET_HEADER = "hdr-5ecret-9f8e7d6c"
BEARER = "bearer-5ecret-1a2b3c4d"
PASSWORD = "basic-5ecret-0f1e2d3c"


def _redirecting(target: str, good: Reply) -> Callable[[RecordedRequest], Reply]:
    """Requests to 127.0.0.1 are redirected to ``target`` (path and query kept); others get ``good``."""
    def reply(req: RecordedRequest) -> Reply:
        if not req.headers.get("Host", "").startswith("127.0.0.1"):
            return good
        query = "&".join(f"{k}={v[0]}" for k, v in req.query.items())
        return Reply(302, b"", {"Location": f"{target}{req.path}" + (f"?{query}" if query else "")})
    return reply


@pytest.mark.parametrize("auth", ["bearer", "basic"])
@pytest.mark.parametrize("source_type", list(HTTP_TYPES))
def test_no_secret_header_or_auth_follows_a_redirect_to_another_host(
        make_env: MakeEnv, source_type: str, auth: str) -> None:
    """The configured origin (127.0.0.1:A) redirects to 127.0.0.1:B, and to localhost:A (same
    port, another host name); neither may see X-Api-Key or Authorization, which the
    configured host itself did get."""
    method, path, good = FIRST_REQUEST[source_type]
    credentials = ("auth: {token: '" + BEARER + "'}" if auth == "bearer"
                   else "auth: {username: bot, password: '" + PASSWORD + "'}")
    extra = f"retries: 0, timeout: 10, headers: {{X-Api-Key: '{SECRET_HEADER}'}}, {credentials}"
    with FakeOrigin() as configured, FakeOrigin() as elsewhere:
        port = configured.url.rsplit(":", 1)[1]
        for target, server in ((elsewhere.url, elsewhere), (f"http://localhost:{port}", configured)):
            configured.requests.clear()
            elsewhere.requests.clear()
            for verb in {method, "GET"}:  # a 302 turns Jira's POST into a GET
                configured.route(verb, path, _redirecting(target, good))
                elsewhere.route(verb, path, lambda req, good=good: good)
            configured.add("GET", "/api/v2/silences", json_response([]))  # Alertmanager's second request
            config, store = env_with(make_env, HTTP_TYPES[source_type].format(url=configured.url, extra=extra))
            report = poll_source(config, store, "s")
            assert report.ok, report.error
            first = configured.requests[0]
            assert first.headers.get("X-Api-Key") == SECRET_HEADER and "Authorization" in first.headers  # sent here
            target_host = target.split("://", 1)[1]
            followed = [r for r in server.requests if r.headers.get("Host") == target_host]
            assert followed, f"the redirect to {target} was not followed"
            for req in followed:
                assert "X-Api-Key" not in req.headers, (target, req.headers)
                assert "Authorization" not in req.headers, (target, req.headers)
            store.close()


def test_a_redirect_on_the_same_host_keeps_the_credentials(make_env: MakeEnv) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/old", Reply(301, b"", {"Location": f"{origin.url}/items"}))
        origin.add("GET", "/items", json_response([record()]))
        config, store = env_with(make_env, f"""
            - id: s
              type: http_json
              url: '{origin.url}/old'
              headers: {{X-Api-Key: '{SECRET_HEADER}'}}
              mapping: {MAPPING}
            """)
        report = poll_source(config, store, "s")
    assert report.ok and report.new == 1, report.error
    assert [r.headers.get("X-Api-Key") for r in origin.requests] == [SECRET_HEADER, SECRET_HEADER]


# --- item 7: poll output with a lone surrogate ---------------------------------------------------

def test_poll_prints_a_skipped_record_with_a_lone_surrogate(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": BASE + textwrap.dedent(f"""
        sources:
          - {{id: s, type: file, path: r.json, mapping: {MAPPING}}}
        """)})
    # a record that is a string (skipped: "record is a str") holding U+D800, and a good one
    (config_dir / "r.json").write_text('["lone \\ud800 surrogate \\u001b[31m red", ' + json.dumps(record()) + "]")
    result = cli(config_dir, tmp_path / "data", "poll", "--once", env={"PYTHONIOENCODING": "utf-8"})  # strict
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "UnicodeEncodeError" not in result.stderr + result.stdout
    assert "s: 1 new" in result.stdout and "1 skipped" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("  skipped")]
    assert skipped == ["  skipped lone \\ud800 surrogate \\x1b[31m red: record is a str, not an object"], result.stdout
    assert "\x1b" not in result.stdout + result.stderr  # an origin cannot drive the terminal either


# --- item 8: JSON Lines split on \n only -----------------------------------------------------------

SEPARATORS = "a\u2028b\u2029c\x85d"


@pytest.mark.parametrize("via", ["file", "command"])
def test_json_lines_keep_records_with_unicode_line_separators(make_env: MakeEnv, via: str) -> None:
    lines = [json.dumps(record("r1", title=f"title {SEPARATORS}", detail=SEPARATORS), ensure_ascii=False),
             json.dumps(record("r2"), ensure_ascii=False)]
    body = ("\r\n".join(lines) + "\n").encode("utf-8")  # a CRLF file too
    if via == "file":
        source = f"- {{id: s, type: file, path: r.jsonl, mapping: {MAPPING}}}"
    else:
        source = (f"- {{id: s, type: command, format: jsonl, argv: [{json.dumps(sys.executable)}, -c, "
                  f"'import sys; sys.stdout.buffer.write(open(\"r.jsonl\", \"rb\").read())'], mapping: {MAPPING}}}")
    config, store = env_with(make_env, source)
    (config.config_dir / "r.jsonl").write_bytes(body)
    report = poll_source(config, store, "s")
    assert report.ok and report.skipped == [] and report.new == 2, (report.error, report.skipped)
    events = stored(store)
    assert events["r1"].title == f"title {SEPARATORS}" and events["r1"].detail == SEPARATORS


# --- item 9: timeout bounds the whole answer ---------------------------------------------------------

TRICKLED = {  # a body each type would accept, padded: 40 bytes at one a second
    "http_json": b"[" + b" " * 38 + b"]",
    "ics": b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",
    "jira": b'{"issues": [], "isLast": true}' + b" " * 10,
    "zendesk": b'{"tickets": [], "end_of_stream": true}' + b" " * 2,
    "alertmanager": b"[" + b" " * 38 + b"]",
}


@pytest.mark.slow
@pytest.mark.parametrize("source_type", list(HTTP_TYPES))
def test_a_trickling_origin_fails_the_poll_at_the_timeout(make_env: MakeEnv, source_type: str) -> None:
    with TrickleOrigin(TRICKLED[source_type], interval=1.0) as origin:
        config, store = env_with(make_env, HTTP_TYPES[source_type].format(url=origin.url, extra="timeout: 3"))
        began = time.monotonic()
        report = poll_source(config, store, "s")
        elapsed = time.monotonic() - began
    assert not report.ok, "a 40 s answer passed a 3 s timeout"
    assert "within 3s" in (report.error or ""), report.error
    assert elapsed < 6.0, f"{source_type}: a poll with timeout 3 took {elapsed:.1f}s"


@pytest.mark.slow
@pytest.mark.parametrize("source_type", ["jira", "zendesk"])
def test_a_trickled_second_page_on_a_kept_alive_connection_is_cut_at_the_timeout(
        make_env: MakeEnv, source_type: str) -> None:
    """Page 1 comes at once and keeps the connection open; page 2 trickles over that same
    connection, which the deadline of page 2's request must cover too."""
    page1 = {"jira": {"issues": [], "nextPageToken": "page-2", "isLast": False},
             "zendesk": {"tickets": [], "after_cursor": "page-2", "end_of_stream": False}}[source_type]
    with TrickleOrigin(TRICKLED[source_type], interval=1.0, first=[json.dumps(page1).encode()]) as origin:
        config, store = env_with(make_env, HTTP_TYPES[source_type].format(url=origin.url, extra="timeout: 3"))
        began = time.monotonic()
        report = poll_source(config, store, "s")
        elapsed = time.monotonic() - began
    assert len(origin.requests) >= 2, origin.requests  # page 2 was asked for
    assert not report.ok and "within 3s" in (report.error or ""), report.error
    assert elapsed < 6.0, f"{source_type}: a trickled page 2 held a 3 s poll for {elapsed:.1f}s"


@pytest.mark.slow
def test_trickled_headers_are_cut_at_the_timeout_too(make_env: MakeEnv) -> None:
    with TrickleOrigin(b"[]", interval=1.0, trickle_headers=True) as origin:
        config, store = env_with(make_env, HTTP_TYPES["http_json"].format(url=origin.url, extra="timeout: 3, retries: 2"))
        began = time.monotonic()
        report = poll_source(config, store, "s")
        elapsed = time.monotonic() - began
    assert not report.ok and "no answer within 3s" in (report.error or ""), report.error
    assert elapsed < 6.0, f"trickled headers held a 3 s poll for {elapsed:.1f}s"
    assert len(origin.requests) == 1  # no retry after the deadline


# --- item 10: max_bytes bounds memory ------------------------------------------------------------------

PEAK_SCRIPT = """
import json, resource, sys, time
from icsfeed.config import load_config
from icsfeed.poller import poll_source
from icsfeed.store import Store
config = load_config(sys.argv[1], sys.argv[2])
store = Store(config.storage_url, uid_host=config.uid_host)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.monotonic()
report = poll_source(config, store, "s")
print(json.dumps({"ok": report.ok, "error": report.error, "seconds": time.monotonic() - began,
                  "growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def peak_of_poll(config_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Poll source ``s`` in a fresh interpreter; its peak RSS growth (kB) during the poll."""
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(config_dir), str(data_dir)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_command_writing_300_mb_is_stopped_at_max_bytes(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    writer = (f"import os, sys; open({str(pid_file)!r}, 'w').write(str(os.getpid())); b = b'x' * 1048576\n"
              "for _ in range(300): sys.stdout.buffer.write(b)\n")
    config_dir = write_config(tmp_path / "config", {"a.yaml": BASE + textwrap.dedent(f"""
        sources:
          - {{id: s, type: command, max_bytes: 1000000, timeout: 120,
              argv: [{json.dumps(sys.executable)}, -c, {json.dumps(writer)}], mapping: {MAPPING}}}
        """)})
    result = peak_of_poll(config_dir, tmp_path / "data")
    assert not result["ok"] and "output larger than max_bytes (1000000)" in result["error"], result
    assert result["growth_kb"] < 40_000, f"peak RSS grew by {result['growth_kb']} kB reading a 1 MB limit"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left writing into a pipe
        os.kill(pid, 0)


BOMB = gzip.compress(b"\0" * (10 * 1024 * 1024), compresslevel=9)  # 10 MB of zeros in ~10 kB


@pytest.mark.parametrize("source_type", list(HTTP_TYPES))
def test_a_gzip_bomb_stops_at_max_bytes(make_env: MakeEnv, source_type: str) -> None:
    method, path, _ = FIRST_REQUEST[source_type]
    with FakeOrigin() as origin:
        origin.add(method, path, Reply(200, BOMB, {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
        config, store = env_with(make_env, HTTP_TYPES[source_type].format(url=origin.url, extra="max_bytes: 1000000"))
        report = poll_source(config, store, "s")
    assert not report.ok and "larger than max_bytes (1000000)" in (report.error or ""), report.error


@pytest.mark.slow
def test_a_gzip_bomb_does_not_fill_memory(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\0" * (300 * 1024 * 1024), compresslevel=9)  # 300 MB in ~300 kB
    with FakeOrigin() as origin:
        origin.add("GET", "/api/v2/alerts", Reply(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
        config_dir = write_config(tmp_path / "config", {"a.yaml": BASE + textwrap.dedent(f"""
            sources:
              - {{id: s, type: alertmanager, url: '{origin.url}', max_bytes: 1000000}}
            """)})
        result = peak_of_poll(config_dir, tmp_path / "data")
    assert not result["ok"] and "larger than max_bytes" in result["error"], result
    assert result["growth_kb"] < 40_000, f"peak RSS grew by {result['growth_kb']} kB for a 1 MB limit"


# --- item 11: text arrives the way it was sent ---------------------------------------------------------

def _feed_summaries(store: Store, feed: str = "account/acme") -> list[str]:
    body = store.get_feed(feed)
    assert body is not None
    return [str(e["SUMMARY"]) for e in icalendar.Calendar.from_ical(body.body).walk("VEVENT")]


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252", "utf-16"])
def test_http_json_is_decoded_by_its_charset(make_env: MakeEnv, charset: str) -> None:
    body = json.dumps([record(title="Café Müller")], ensure_ascii=False).encode(charset)
    with FakeOrigin() as origin:
        origin.add("GET", "/items", Reply(200, body, {"Content-Type": f"application/json; charset={charset}"}))
        config, store = env_with(make_env, HTTP_TYPES["http_json"].format(url=origin.url, extra="retries: 0"))
        reports = poll(config, store, ["s"])
    assert reports[0].ok, reports[0].error
    assert stored(store)["r1"].title == "Café Müller"
    assert _feed_summaries(store) == ["🎫 Café Müller"]


@pytest.mark.parametrize("source_type", ["http_json", "jira", "zendesk", "alertmanager"])
def test_json_without_charset_is_utf8_and_a_bom_is_accepted(make_env: MakeEnv, source_type: str) -> None:
    method, path, good = FIRST_REQUEST[source_type]
    with FakeOrigin() as origin:
        origin.add(method, path, Reply(200, b"\xef\xbb\xbf" + good.encoded()[0], {"Content-Type": "application/json"}))
        origin.add("GET", "/api/v2/silences", Reply(200, b"\xef\xbb\xbf[]", {"Content-Type": "application/json"}))
        config, store = env_with(make_env, HTTP_TYPES[source_type].format(url=origin.url, extra="retries: 0"))
        report = poll_source(config, store, "s")
    assert report.ok, report.error


def test_ics_is_decoded_by_its_charset(make_env: MakeEnv) -> None:
    start = (NOW + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    calendar = (f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:m1\r\nDTSTAMP:{start}\r\n"
                f"DTSTART:{start}\r\nSUMMARY:Wartung im Rechenzentrum Süd\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    with FakeOrigin() as origin:
        origin.add("GET", "/cal.ics", Reply(200, calendar.encode("iso-8859-1"), {"Content-Type": "text/calendar; charset=ISO-8859-1"}))
        config, store = env_with(make_env, HTTP_TYPES["ics"].format(url=origin.url, extra="account: acme"))
        report = poll_source(config, store, "s")
    assert report.ok, report.error
    assert [e.title for e in stored(store).values()] == ["Wartung im Rechenzentrum Süd"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_a_utf8_bom_is_accepted_in_files(make_env: MakeEnv, fmt: str) -> None:
    rows = [record("r1", title="Grüße"), record("r2")]
    if fmt == "json":
        text = json.dumps(rows, ensure_ascii=False)
    elif fmt == "jsonl":
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    else:
        text = "id,title,start\r\n" + "".join(f"{r['id']},{r['title']},{r['start']}\r\n" for r in rows)
    config, store = env_with(make_env, f"- {{id: s, type: file, path: r.{fmt}, mapping: {MAPPING}}}")
    (config.config_dir / f"r.{fmt}").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    report = poll_source(config, store, "s")
    assert report.ok and report.new == 2 and report.skipped == [], (report.error, report.skipped)
    assert stored(store)["r1"].title == "Grüße"


def test_objects_and_lists_read_as_text_not_python_repr(make_env: MakeEnv) -> None:
    rows = [record("r1", title={"nested": "object", "n": 1}, detail=[{"a": True}, "two", 3], tags=["nightly", "full"]),
            record("r2", title=["a", "b"], detail={"flag": False})]
    mapping = '{kind: ticket, key: id, title: title, detail: detail, start: start, account: "=acme"}'
    templated = ('{kind: backup, key: id, title: "backup {id} ({tags})", detail: "paths: {paths}\\ntags: {tags}\\nmeta: {meta}", '
                 'start: start, account: "=acme"}')
    config, store = env_with(make_env, f"""
        - {{id: s, type: file, path: r.json, mapping: {mapping}}}
        - {{id: t, type: file, path: t.json, mapping: {templated}}}
        """)
    (config.config_dir / "r.json").write_text(json.dumps(rows))
    (config.config_dir / "t.json").write_text(json.dumps([record("b1", paths=["/srv", "/etc"], tags=["nightly"], meta={"k": "v"})]))
    assert all(r.ok for r in poll(config, store, ["s", "t"]))
    events = stored(store)
    assert events["r1"].title == '{"nested":"object","n":1}'
    assert events["r1"].detail == '{"a":true}, two, 3'
    assert events["r2"].title == "a, b" and events["r2"].detail == '{"flag":false}'
    assert events["b1"].title == "backup b1 (nightly)"
    assert events["b1"].detail == 'paths: /srv, /etc\ntags: nightly\nmeta: {"k":"v"}'
    assert "🎫 {\"nested\":\"object\",\"n\":1}" in _feed_summaries(store)


def test_the_demo_backups_list_paths_and_tags_as_text(demo: tuple[Config, Store]) -> None:
    _, store = demo
    backups = [row.event for row in store.query_events(EVERYTHING) if row.event.source == "demo-backups"]
    assert backups
    for event in backups:
        assert "['" not in event.detail and "paths: /" in event.detail, event.detail
    body = store.get_feed("account/acme")
    assert body is not None and b"['" not in body.body and b"paths: /" in body.body


# --- item 12: an enormous value is cut before it is stored ----------------------------------------------

def test_an_enormous_detail_is_cut_when_stored_and_stays_unchanged(make_env: MakeEnv) -> None:
    config, store = env_with(make_env, f"- {{id: s, type: file, path: r.json, mapping: {MAPPING}}}",
                             **{"f.yaml": "feeds: {max_title: 100, max_detail: 2000}\n"})
    huge = record("big", title="T" * 1_000_000, detail="x" * 50_000_000)
    (config.config_dir / "r.json").write_text(json.dumps([huge, record("small")]))
    first = poll_source(config, store, "s")
    assert first.ok and first.new == 2, first.error
    event = stored(store)["big"]
    assert len(event.title) == 100 and event.title.endswith("…")
    assert len(event.detail) == 2000 and event.detail == "x" * 1999 + "…"
    with store.engine.connect() as conn:  # what the rows hold, on either backend (decoded: stored compressed)
        held = sum(len(store.codec.text(data)) for data in conn.execute(select(events_table.c.data)).scalars())
    assert held < 50_000, f"the events' rows hold {held} characters"
    again = poll_source(config, store, "s")  # the same input cuts to the same text: nothing changed
    assert again.ok and (again.new, again.updated, again.unchanged) == (0, 0, 2), again


# --- item 13 is in tests/test_bad_input.py (icsfeed check) -----------------------------------------------

def test_demo_config_is_found() -> None:  # the demo fixture above reads it
    assert (DEMO_CONFIG / "sources.yaml").is_file()
