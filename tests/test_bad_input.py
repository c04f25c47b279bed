"""Bad input gets a clear error and loses nothing: broken config, broken origins, broken records."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import cli, open_env, write_config
from fake_origins import FakeOrigin, RecordedRequest, Reply, json_response
from parsers import check_all, parse_icalendar

from icsfeed.poller import poll

NOW = datetime.now(timezone.utc).replace(microsecond=0)
GOOD = """
accounts: [{id: acme, name: ACME}]
sources:
  - id: tickets
    type: file
    path: t.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: "=acme"}
"""


# --- icsfeed check ---------------------------------------------------------------------------

@pytest.mark.parametrize(("files", "expected"), [
    ({"a.yaml": "accounts: [{id: acme, name: ACME}\n"},
     ["a.yaml", "line 2", "YAML syntax error"]),
    ({"a.yaml": GOOD, "b.yaml": "sources:\n  - {id: x, type: carrier-pigeon}\n"},
     ["b.yaml", "sources[0].type", "unknown source type 'carrier-pigeon'", "http_json"]),
    ({"a.yaml": GOOD, "b.yaml": "sources:\n  - {id: ok, type: file, path: a, mapping: {key: id, title: t, start: s}}\n"
                                "  - {id: web, type: http_json, mapping: {key: id, title: t, start: s}}\n"},
     ["b.yaml", "sources[1].url", "required setting is missing"]),
    ({"a.yaml": GOOD, "b.yaml": "sources:\n  - {id: web, type: http_json, url: http://x, urll: typo, mapping: {key: id, title: t, start: s}}\n"},
     ["b.yaml", "sources[0].urll", "unknown setting"]),
    ({"a.yaml": "accounts:\n  - {id: acme, name: ACME, timezone: Mars/Olympus}\n"},
     ["a.yaml", "accounts[0].timezone", "unknown timezone 'Mars/Olympus'"]),
    ({"a.yaml": "accounts:\n  - {id: acme, name: ACME}\nteams:\n  - {id: ops, name: Ops, accounts: [acme, nobody]}\n"},
     ["a.yaml", "teams[0].accounts[1]", "unknown account 'nobody'"]),
    ({"a.yaml": "sources:\n  - {id: s, type: file, interval: soon, path: x, mapping: {key: id, title: t, start: s}}\n"},
     ["a.yaml", "sources[0].interval", "not a duration"]),
    ({"a.yaml": "sources:\n  - {id: s, type: http_json, url: 'http://x', headers: {K: '${ICSFEED_TEST_UNSET_VAR}'}, mapping: {key: id, title: t, start: s}}\n"},
     ["a.yaml", "sources[0].headers.K", "environment variable ICSFEED_TEST_UNSET_VAR is not set"]),
    ({"a.yaml": "accounts:\n  - {id: acme, name: ACME, keys: [shared]}\n  - {id: globex, name: Globex, keys: [Shared]}\n"},
     ["a.yaml", "keys", "'shared' also belongs to account 'acme'"]),
    ({"a.yaml": "- just\n- a list\n"}, ["a.yaml", "top level must be a mapping"]),
    ({"a.yaml": "server: {base_url: 'ftp://x'}\n"}, ["server.base_url", "http(s) URL"]),
    ({"a.yaml": "kinds: {alert: {color: '#ff0000'}}\n"}, ["kinds.alert.color", "CSS3 colour name"]),
])
def test_check_names_file_path_and_problem(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    config_dir = write_config(tmp_path / "config", files)
    result = cli(config_dir, tmp_path / "data", "check")
    assert result.returncode == 2, result.stdout
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"
    assert "Traceback" not in result.stderr


def test_check_accepts_the_demo_and_reports_counts(tmp_path: Path) -> None:
    from conftest import DEMO_CONFIG

    result = cli(DEMO_CONFIG, tmp_path / "data", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 3 accounts, 2 teams, 6 sources")


def test_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {
        "a.yaml": "accounts: [{id: acme}]\n",
        "b.yaml": "sources: [{id: s, type: nope}]\n"})
    result = cli(config_dir, tmp_path / "data", "check")
    assert "accounts[0].name" in result.stderr and "sources[0].type" in result.stderr


# --- broken origins --------------------------------------------------------------------------

HTTP_CONFIG = """
accounts: [{{id: acme, name: ACME}}]
sources:
  - id: api
    type: http_json
    url: "{url}/tickets"
    timeout: 1
    retries: 0
    mapping: {{kind: ticket, key: id, title: subject, start: created, end: ended, account: "=acme"}}
"""


def good_tickets() -> list[dict[str, object]]:
    return [{"id": i, "subject": f"ticket {i}", "created": (NOW - timedelta(hours=i)).isoformat()} for i in range(3)]


def slow(_req: RecordedRequest) -> Reply:
    time.sleep(2.5)
    return json_response(good_tickets())


@pytest.mark.parametrize(("reply", "error"), [
    (Reply(200, b"<html>not json</html>"), "not valid JSON"),
    (Reply(200, b'[{"id": 1, "subj'), "not valid JSON"),
    (Reply(500, b"Internal Server Error"), "HTTP 500"),
    (Reply(503, b""), "HTTP 503"),
    (json_response({"tickets": []}), "not a list of records"),
    (json_response({"error": "maintenance"}), "not a list of records"),
    (slow, "no answer within 1s"),
])
def test_broken_origin_keeps_last_good_events(tmp_path: Path, reply: object, error: str) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/tickets", json_response(good_tickets()))
        config_dir = write_config(tmp_path / "config", {"a.yaml": HTTP_CONFIG.format(url=origin.url)})
        config, store = open_env(config_dir, tmp_path / "data")
        assert poll(config, store)[0].new == 3
        before = store.get_feed("account/acme")
        if callable(reply):
            origin.route("GET", "/tickets", reply)  # type: ignore[arg-type]
        else:
            origin.add("GET", "/tickets", reply)  # type: ignore[arg-type]
        started = time.monotonic()
        report = poll(config, store)[0]
        assert time.monotonic() - started < 10
        assert not report.ok and error in (report.error or ""), report.error
        assert store.source_state("api").consecutive_failures == 1
        after = store.get_feed("account/acme")
        assert after.body == before.body
        assert after.body.count(b"SUMMARY:\xf0\x9f\x8e\xab") == 3  # the three tickets
        check_all(after.body)
        store.close()


def test_bad_records_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    records = [
        {"id": 1, "subject": "good", "created": NOW.isoformat()},
        {"id": 2, "subject": "no date"},
        {"id": 3, "subject": "bad date", "created": "31/02/2026 25:61"},
        {"id": 4, "subject": "epoch ms", "created": int(NOW.timestamp() * 1000)},
        {"id": 5, "subject": "x" * 1_000_000, "created": NOW.isoformat()},
        {"id": 6, "subject": "inject\r\nEND:VEVENT\r\nEND:VCALENDAR", "created": NOW.isoformat()},
        {"subject": "no key", "created": NOW.isoformat()},
        {"id": 8, "subject": "ends before it starts", "created": NOW.isoformat(), "ended": (NOW - timedelta(days=1)).isoformat()},
        "not an object",
        {"id": 10, "subject": "year 9999", "created": "9999-12-31T23:59:59Z"},
    ]
    with FakeOrigin() as origin:
        origin.add("GET", "/tickets", json_response(records))
        config_dir = write_config(tmp_path / "config", {"a.yaml": HTTP_CONFIG.format(url=origin.url)})
        config, store = open_env(config_dir, tmp_path / "data")
        report = poll(config, store)[0]
    assert report.ok and report.new == 5, report.line()
    reasons = "\n".join(report.skipped)
    for fragment in ("missing start", "not a date", "missing key", "before start", "not an object"):
        assert fragment in reasons, reasons
    body = store.get_feed("account/acme").body
    check_all(body)
    summaries = {str(e["SUMMARY"]) for e in parse_icalendar(body).walk("VEVENT")}
    assert "🎫 good" in summaries and "🎫 epoch ms" in summaries
    assert any(s.startswith("🎫 inject END:VEVENT") for s in summaries)
    assert any(s.startswith("🎫 xxxx") and len(s) < 300 for s in summaries)
    store.close()


def test_poll_command_prints_changes_and_errors(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": GOOD})
    (config_dir / "t.json").write_text(json.dumps([{"id": 1, "subject": "a", "created": NOW.isoformat()}, {"id": 2}]))
    first = cli(config_dir, tmp_path / "data", "poll", "--once")
    assert first.returncode == 0, first.stderr
    assert "tickets: 1 new, 0 updated, 0 closed, 0 cancelled, 0 unchanged, 1 skipped" in first.stdout
    assert "skipped id='2': missing start (created)" in first.stdout
    (config_dir / "t.json").write_text("{oops")
    second = cli(config_dir, tmp_path / "data", "poll", "--once", "tickets")
    assert second.returncode == 1
    assert "tickets: ERROR (1 in a row): t.json: not valid JSON" in second.stdout
    out = tmp_path / "acme.ics"
    rendered = cli(config_dir, tmp_path / "data", "render", "acme", "-o", str(out))
    assert rendered.returncode == 0 and out.read_bytes().count("SUMMARY:🎫".encode()) == 1
    unknown = cli(config_dir, tmp_path / "data", "poll", "--once", "nope")
    assert unknown.returncode == 2 and "unknown source(s): nope" in unknown.stderr


@pytest.mark.sqlite_only  # the data directory holds the SQLite file; a server database needs none
def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": GOOD})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data directory should be")
    result = cli(config_dir, blocker / "data", "poll", "--once")
    assert result.returncode == 3
    assert "cannot create data directory" in result.stderr and "Traceback" not in result.stderr


def test_check_reports_every_independent_problem_of_one_file(tmp_path: Path) -> None:
    """A bad interval must not hide an unknown type further down, nor a bad account a bad team."""
    config_dir = write_config(tmp_path / "config", {"a.yaml": """
accounts:
  - {id: acme}
  - {id: globex, name: Globex, timezone: Mars/Olympus}
teams:
  - {id: ops, name: Ops, kinds: [alert, nope]}
  - {id: t2}
sources:
  - {id: s1, type: file, interval: soon, path: x, mapping: {key: id, title: t, start: s}}
  - {id: s2, type: carrier-pigeon}
  - {id: s3, type: http_json, interval: 0, mapping: {key: id, title: t, start: s}}
  - {id: s4, type: command, jitter: later, argv: [x], mapping: {key: id, title: t, start: s}, shell: true}
feeds: {max_title: 3}
frobnicate: 1
"""})
    result = cli(config_dir, tmp_path / "data", "check")
    assert result.returncode == 2, result.stdout
    expected = [
        "a.yaml: accounts[0].name: required setting is missing",
        "a.yaml: accounts[1].timezone: ",
        "a.yaml: teams[1].name: required setting is missing",
        "a.yaml: teams[0].kinds[1]: unknown kind 'nope'",
        "a.yaml: sources[0].interval: ",
        "a.yaml: sources[1].type: unknown source type 'carrier-pigeon'",
        "a.yaml: sources[2].interval: ",
        "a.yaml: sources[2].url: required setting is missing",
        "a.yaml: sources[3].jitter: ",
        "a.yaml: sources[3].shell: unknown setting",
        "a.yaml: feeds.max_title: ",
        "a.yaml: frobnicate: unknown section",
    ]
    lines = result.stderr.splitlines()
    missing = [e for e in expected if not any(e in line for line in lines)]
    assert not missing, f"not reported: {missing}\n{result.stderr}"
    assert all(re.match(r"^\S+\.yaml: \S+: \S", line) for line in lines), result.stderr  # file: path: problem
