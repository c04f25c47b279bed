"""Hostile input: records built to break a calendar, through every generic source type.

The corpus (tests/corpus/hostile.json, described in tests/corpus/README.md) holds CR/LF and
END:VEVENT inside text, NUL and other control characters, invalid UTF-8, 1 MB strings,
right-to-left and emoji text, the years 0001 and 9999, ends before starts, missing and
duplicate keys, javascript: and relative links, deep nesting and big records. Each record
goes through file (JSON, JSON Lines, CSV), http_json (a real HTTP server on 127.0.0.1) and
command (a real subprocess), then the real poll and render. For each record the test
asserts what must happen: stored and rendered safely (its UID once, its text inside its
own SUMMARY/DESCRIPTION), or skipped with a logged reason that names the problem. Every
feed, and every stored event rendered on its own, passes the three parsers of
tests/parsers.py. A hypothesis test then throws arbitrary records at mapping + render.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import string
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import icalendar
import pytest
from fake_origins import FakeOrigin, Reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parsers import check_all_many, check_line_format, icaljs_results, libical_results, parse_icalendar

from icsfeed.config import load_config
from icsfeed.poller import build_source, poll
from icsfeed.render import calendar_header, render_vevent, vevent_component
from icsfeed.routing import find_feed
from icsfeed.store import EventRow, FeedQuery, Store
from icsfeed.tokens import event_uid

CORPUS = Path(__file__).resolve().parent / "corpus" / "hostile.json"
SOURCE = "hostile"
FORMATS = ("file-json", "file-jsonl", "file-csv", "http_json", "command")
#: formats whose document carries non-ASCII as raw UTF-8 (the others use \u escapes)
RAW_UTF8 = ("file-json", "file-csv", "command")
MAPPING = {"kind": "{kind}", "key": "id", "title": "title", "detail": "detail", "url": "url", "start": "start",
           "end": "end", "account": "account", "severity": "severity", "status": "status"}
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: what the store replaces by U+FFFD in keys and accounts (icsfeed.store.database.storable_text)
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
EVERYTHING = FeedQuery(-1e13, 1e13)


# --- the corpus --------------------------------------------------------------------------------

@dataclass
class Raw:
    """Bytes that go into the document as they are (invalid UTF-8, say)."""

    data: bytes


@dataclass
class Case:
    id: str
    record: Any  # materialised: Python values, Raw inside strings, or RawText / NotObject
    expect: str
    spec: dict[str, Any]
    json_only: bool
    raw_text: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _materialise(value: Any, now: datetime) -> Any:
    if value == "$drop":
        return value
    if isinstance(value, list):
        return [_materialise(v, now) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (marker, arg), = value.items()
        if marker == "$days":
            return (now + timedelta(days=arg)).isoformat()
        if marker == "$days_naive":
            return (now + timedelta(days=arg)).replace(tzinfo=None).isoformat()
        if marker == "$days_offset":
            days, offset = arg
            sign = 1 if offset[0] == "+" else -1
            hours, minutes = (int(x) for x in offset[1:].split(":"))
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
            return (now + timedelta(days=days)).astimezone(tz).isoformat()
        if marker == "$bytes":
            return Raw(bytes.fromhex(arg.replace(" ", "")))
        if marker == "$repeat":
            return arg[0] * arg[1]
        if marker == "$concat":
            return "".join(_materialise(v, now) for v in arg)
        if marker == "$obj":
            return arg
        if marker == "$nest":
            nested: dict[str, Any] = {"leaf": "bottom"}
            for _ in range(arg):
                nested = {"n": nested}
            return nested
    out = {k: _materialise(v, now) for k, v in value.items()}
    return {k: v for k, v in out.items() if v != "$drop"}


def load_corpus(now: datetime) -> list[Case]:
    cases = []
    for spec in json.loads(CORPUS.read_text(encoding="utf-8")):
        record = spec["record"]
        raw_text = None
        if isinstance(record, dict) and "$raw" in record:
            raw_text = record["$raw"].replace("$START", (now - timedelta(days=1)).isoformat())
            materialised: Any = None
        elif isinstance(record, dict) and "$value" in record:
            materialised = record["$value"]
        else:
            materialised = _materialise(record, now)
        cases.append(Case(id=spec["id"], record=materialised, expect=spec.get("expect", "render"), spec=spec,
                          json_only=spec.get("formats") == "json", raw_text=raw_text))
    return cases


def test_corpus_is_big_and_varied() -> None:
    cases = load_corpus(datetime.now(timezone.utc))
    assert len(cases) >= 50
    assert {c.expect for c in cases} == {"render", "skip", "dup", "unrenderable"}
    assert sum(c.expect == "skip" for c in cases) >= 15 and sum(c.expect == "render" for c in cases) >= 50


# --- documents in each format ---------------------------------------------------------------------

def _placeholders(value: Any, raws: list[bytes]) -> Any:
    if isinstance(value, Raw):
        raws.append(value.data)
        return f"@@RAW{len(raws) - 1}@@"
    if isinstance(value, dict):
        return {k: _placeholders(v, raws) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, raws) for v in value]
    return value


def _put_raw(data: bytes, raws: list[bytes]) -> bytes:
    for i, raw in enumerate(raws):
        data = data.replace(f"@@RAW{i}@@".encode(), raw)
    return data


def _json_text(case: Case, ascii_only: bool, raws: list[bytes]) -> str:
    if case.raw_text is not None:
        return case.raw_text
    return json.dumps(_placeholders(case.record, raws), ensure_ascii=ascii_only)


def json_document(cases: list[Case], *, ascii_only: bool) -> bytes:
    """A JSON array; ``ascii_only`` writes non-ASCII (and lone surrogates) as \\u escapes,
    otherwise as raw UTF-8 (a lone surrogate then is an invalid byte sequence)."""
    raws: list[bytes] = []
    text = "[\n" + ",\n".join(_json_text(c, ascii_only, raws) for c in cases) + "\n]\n"
    return _put_raw(text.encode("utf-8", "surrogatepass"), raws)


def jsonl_document(cases: list[Case]) -> bytes:
    raws: list[bytes] = []
    text = "".join(_json_text(c, True, raws) + "\n" for c in cases)
    return _put_raw(text.encode("utf-8", "surrogatepass"), raws)


def csv_document(cases: list[Case]) -> bytes:
    raws: list[bytes] = []
    rows = [_placeholders(c.record, raws) for c in cases]
    columns = sorted({k for row in rows for k in row})
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return _put_raw(out.getvalue().encode("utf-8", "surrogatepass"), raws)


CONFIG = """
    accounts:
      - {id: acme, name: ACME, keys: [acme], window_back_days: 3660, window_ahead_days: 3660}
    teams:
      - {id: all, name: Everything, accounts: "*"}
    feeds: {window_back_days: 3660, window_ahead_days: 3660}
    insights: {enabled: false}
    """


def _source_yaml(fmt: str, tmp: Path, origin_url: str | None) -> str:
    mapping = json.dumps(MAPPING)
    if fmt == "file-json":
        return f"{{id: {SOURCE}, type: file, path: records.json, format: json, mapping: {mapping}}}"
    if fmt == "file-jsonl":
        return f"{{id: {SOURCE}, type: file, path: records.jsonl, format: jsonl, mapping: {mapping}}}"
    if fmt == "file-csv":
        return f"{{id: {SOURCE}, type: file, path: records.csv, format: csv, mapping: {mapping}}}"
    if fmt == "http_json":
        return f"{{id: {SOURCE}, type: http_json, url: '{origin_url}/records', retries: 0, timeout: 20, mapping: {mapping}}}"
    return f"{{id: {SOURCE}, type: command, argv: [cat, {json.dumps(str(tmp / 'config' / 'records.json'))}], mapping: {mapping}}}"


def _expected_key(case: Case, fmt: str) -> str:
    record = case.record if isinstance(case.record, dict) else {}
    key = str(record.get("id", "")) if case.raw_text is None else case.id
    if fmt == "file-csv":  # the file is read with universal newlines
        key = key.replace("\r\n", "\n").replace("\r", "\n")
    if fmt in RAW_UTF8:  # a lone surrogate written as raw bytes reads back as three U+FFFD
        key = key.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    # a \ud800 escape or a NUL: the store replaces it, the same on every backend
    return _UNSTORABLE.sub("\ufffd", key.strip())


def _events_by_uid(body: bytes) -> dict[str, list[icalendar.Event]]:
    out: dict[str, list[icalendar.Event]] = {}
    for ev in icalendar.Calendar.from_ical(body).walk("VEVENT"):
        out.setdefault(str(ev["UID"]), []).append(ev)
    return out


def _all_fragments_calendar(config: Any, store: Store) -> tuple[bytes, list[str]]:
    """Every stored event rendered on its own (window or not), in one calendar."""
    spec = find_feed(config, "team", "all")
    assert spec is not None
    head, tail = calendar_header(config, spec)
    parts, failed = [head], []
    for row in store.query_events(EVERYTHING):
        try:
            fragment = render_vevent(config, row)
        except Exception as exc:
            failed.append(f"{row.event.key[:40]!r}: {type(exc).__name__}: {exc}")
            continue
        assert fragment == vevent_component(config, row).to_ical(), f"fast and reference VEVENT differ for {row.event.key[:60]!r}"
        parts.append(fragment)
    return b"".join([*parts, tail]), failed


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_corpus_through_each_source_type(fmt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.now(timezone.utc)
    cases = [c for c in load_corpus(now) if not (fmt == "file-csv" and c.json_only)]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    if fmt == "file-csv":
        (config_dir / "records.csv").write_bytes(csv_document(cases))
    elif fmt == "file-jsonl":
        (config_dir / "records.jsonl").write_bytes(jsonl_document(cases))
    else:  # JSON: \u escapes over HTTP, raw UTF-8 (and raw invalid bytes) in the file and from the command
        (config_dir / "records.json").write_bytes(json_document(cases, ascii_only=fmt == "http_json"))

    origin = FakeOrigin().start()
    try:
        if fmt == "http_json":
            origin.add("GET", "/records", Reply(200, (config_dir / "records.json").read_bytes(),
                                                {"Content-Type": "application/json"}))
        (config_dir / "icsfeed.yaml").write_text(textwrap.dedent(CONFIG) + f"sources:\n  - {_source_yaml(fmt, tmp_path, origin.url)}\n")
        config = load_config(config_dir, tmp_path / "data")
        store = Store(config.storage_url, uid_host=config.uid_host)
        caplog.set_level(logging.DEBUG, logger="icsfeed")
        reports = poll(config, store, [SOURCE])
    finally:
        origin.stop()
    report = reports[0]
    assert report.ok, report.error

    stored = {row.event.key: row for row in store.query_events(EVERYTHING)}
    team = store.get_feed("team/all")
    acme = store.get_feed("account/acme")
    assert team is not None and acme is not None
    in_team, in_acme = _events_by_uid(team.body), _events_by_uid(acme.body)
    log_text = "\n".join(r.getMessage() for r in caplog.records)

    expected_skips = [c for c in cases if c.expect == "skip"]
    assert len(report.skipped) == len(expected_skips), "\n".join(report.skipped)
    problems: list[str] = []
    for case in cases:
        key = _expected_key(case, fmt)
        uid = event_uid(SOURCE, key, config.uid_host)
        where = case.spec.get("feed", "both")
        if case.expect == "skip":
            if key and key in stored:
                problems.append(f"{case.id}: should be skipped but was stored")
            hits = [s for s in report.skipped if case.spec["reason"] in s and (case.id in s or len(key) > 80 or not key)]
            if not hits:
                problems.append(f"{case.id}: no skip reason containing {case.spec['reason']!r}")
            elif hits[0] not in log_text:
                problems.append(f"{case.id}: skip reason not logged: {hits[0]!r}")
            continue
        if case.expect == "unrenderable":
            if key not in stored:
                problems.append(f"{case.id}: not stored")
            if uid in in_team or uid in in_acme:
                problems.append(f"{case.id}: in a feed although it cannot be rendered")
            if not re.search(rf"cannot render event {re.escape(uid)} .*{re.escape(case.spec['reason'])}", log_text):
                problems.append(f"{case.id}: no logged reason containing {case.spec['reason']!r}")
            continue
        if case.expect == "dup":
            if f"returned key {key!r} more than once" not in log_text:
                problems.append(f"{case.id}: duplicate key not logged")
            continue
        if key not in stored:
            problems.append(f"{case.id}: not stored (key {key[:60]!r})")
            continue
        feeds = {"both": (True, True), "team": (True, False), "none": (False, False)}[where]
        for shown, events, name in ((feeds[0], in_team, "team"), (feeds[1], in_acme, "acme")):
            count = len(events.get(uid, []))
            if count != (1 if shown else 0):
                problems.append(f"{case.id}: {count} VEVENTs with its UID in the {name} feed, expected {int(shown)}")
        ev = (in_team.get(uid) or [None])[0]
        if ev is None:
            cal = icalendar.Calendar.from_ical(b"BEGIN:VCALENDAR\r\n" + render_vevent(config, stored[key]) + b"END:VCALENDAR\r\n")
            ev = cal.walk("VEVENT")[0]
        problems.extend(_check_event(case, ev))
    assert not problems, "\n".join(problems)

    # the whole feed holds exactly the events it should, and every calendar parses everywhere
    shown = {event_uid(SOURCE, _expected_key(c, fmt), config.uid_host) for c in cases
             if c.expect == "render" and c.spec.get("feed", "both") != "none"}
    assert set(in_team) == shown
    everything, failed = _all_fragments_calendar(config, store)
    assert len(failed) == sum(c.expect == "unrenderable" for c in cases), failed
    check_all_many([team.body, acme.body, everything])


def _check_event(case: Case, ev: icalendar.Event) -> list[str]:
    spec, out = case.spec, []
    summary, detail = str(ev.get("SUMMARY", "")), str(ev.get("DESCRIPTION", ""))
    if not summary.startswith("🚨 ") and spec["record"].get("kind", "alert") == "alert":
        out.append(f"{case.id}: SUMMARY does not start with the alert icon: {summary[:60]!r}")
    for name, text in (("summary_has", summary), ("detail_has", detail)):
        if name in spec and spec[name] not in text:
            out.append(f"{case.id}: {name} {spec[name]!r} not in {text[:120]!r}")
    if len(summary) > spec.get("summary_max", 400):
        out.append(f"{case.id}: SUMMARY of {len(summary)} characters")
    if len(detail) > spec.get("detail_max", 4200):
        out.append(f"{case.id}: DESCRIPTION of {len(detail)} characters")
    for name, text in (("SUMMARY", summary), ("DESCRIPTION", detail)):
        if any(ch in text for ch in "\x00\r") or _SURROGATE.search(text):
            out.append(f"{case.id}: {name} still holds a NUL, CR or lone surrogate")
    if "\n" in summary:
        out.append(f"{case.id}: SUMMARY spans lines")
    url = ev.get("URL")
    if spec.get("no_url"):
        if url is not None:
            out.append(f"{case.id}: unsafe URL kept: {str(url)[:80]!r}")
        if re.search(r"(?i)javascript:|data:|file:|evil\.example", detail):
            out.append(f"{case.id}: unsafe link in DESCRIPTION")
    if "url" in spec:
        if str(url) != spec["url"]:
            out.append(f"{case.id}: URL {url!r} != {spec['url']!r}")
        elif not detail.endswith(spec["url"]):
            out.append(f"{case.id}: link is not the last line of DESCRIPTION")
    if "status" in spec and str(ev.get("STATUS")) != spec["status"]:
        out.append(f"{case.id}: STATUS {ev.get('STATUS')} != {spec['status']}")
    return out


# --- whole documents that cannot be read ---------------------------------------------------------

def _one_source_env(tmp_path: Path, source_yaml: str) -> tuple[Any, Store]:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "icsfeed.yaml").write_text(textwrap.dedent(CONFIG) + f"sources:\n  - {source_yaml}\n")
    config = load_config(config_dir, tmp_path / "data")
    return config, Store(config.storage_url, uid_host=config.uid_host)


GOOD = [{"id": f"good-{i}", "kind": "alert", "title": f"good {i}", "account": "acme",
         "start": (datetime.now(timezone.utc) - timedelta(hours=i + 1)).isoformat()} for i in range(3)]


@pytest.mark.parametrize(("name", "document", "error"), [
    ("nested-100k", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("truncated", json.dumps(GOOD).encode()[:-20], "not valid JSON"),
    ("not-a-list", b'{"records": 5}', "not a list"),
    ("too-big", b"[" + b" " * (2 * 1024 * 1024) + b"]", "max_bytes"),
])
def test_unreadable_document_fails_the_poll_and_keeps_the_last_good_events(
        name: str, document: bytes, error: str, tmp_path: Path) -> None:
    config, store = _one_source_env(tmp_path, f"{{id: {SOURCE}, type: file, path: records.json, max_bytes: 1048576, "
                                              f"mapping: {json.dumps(MAPPING)}}}")
    path = config.config_dir / "records.json"
    path.write_text(json.dumps(GOOD))
    assert poll(config, store, [SOURCE])[0].ok
    before = store.get_feed("account/acme")
    assert before is not None and before.event_count == 3

    path.write_bytes(document)
    report = poll(config, store, [SOURCE])[0]
    assert not report.ok and error in (report.error or ""), report.error
    assert store.source_state(SOURCE).last_error == report.error
    after = store.get_feed("account/acme")
    assert after is not None and after.body == before.body  # nothing lost, nothing re-rendered
    assert sorted(r.event.key for r in store.query_events(EVERYTHING)) == ["good-0", "good-1", "good-2"]


def test_bad_lines_in_json_lines_are_skipped_one_by_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, store = _one_source_env(tmp_path, f"{{id: {SOURCE}, type: file, path: r.jsonl, format: jsonl, "
                                              f"mapping: {json.dumps(MAPPING)}}}")
    lines = [json.dumps(GOOD[0]).encode(), b"[" * 50_000 + b"]" * 50_000, b'{"id": "half", "title":',
             b"\xff\xfe garbage", json.dumps(GOOD[1]).encode()]
    (config.config_dir / "r.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    caplog.set_level(logging.WARNING, logger="icsfeed")
    report = poll(config, store, [SOURCE])[0]
    assert report.ok and report.new == 2
    assert [s.split(":")[0].strip("'") for s in report.skipped] == ["line 2", "line 3", "line 4"], report.skipped
    assert all("not valid JSON" in s for s in report.skipped)
    assert sum("skipped record" in r.getMessage() for r in caplog.records) == 3


def test_http_json_body_with_invalid_utf8_loses_only_the_bad_characters(tmp_path: Path) -> None:
    body = json.dumps(GOOD).encode().replace(b"good 1", b"good \xff\xc0 1")
    with FakeOrigin() as origin:
        origin.add("GET", "/r", Reply(200, body, {"Content-Type": "application/json"}))
        config, store = _one_source_env(tmp_path, f"{{id: {SOURCE}, type: http_json, url: '{origin.url}/r', "
                                                  f"mapping: {json.dumps(MAPPING)}}}")
        report = poll(config, store, [SOURCE])[0]
    assert report.ok and report.new == 3, report.error
    titles = {r.event.title for r in store.query_events(EVERYTHING)}
    assert titles == {"good 0", "good \ufffd\ufffd 1", "good 2"}


# --- property: whatever the record, the feed parses and every event keeps its UID ------------------

_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)
_WEIRD = st.sampled_from(["\r\nEND:VEVENT\r\n", "END:VCALENDAR", "\x00", "\ud800", "\u202e", "😀", ",;\\:",
                          "\r", "\n ", "ع", "\u0301", "\ufeff", "\x85", "\u2028"])
_TEXT = st.one_of(_ANY_TEXT, st.lists(st.one_of(_WEIRD, _ANY_TEXT), max_size=8).map("".join),
                  st.integers(0, 3000).map(lambda n: "é" * n))
_OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_NEAR = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_OFFSETS).map(datetime.isoformat)
_WHEN = st.one_of(  # mostly times a mapping accepts, so that most records reach the renderer
    _NEAR, _NEAR, _NEAR,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS).map(datetime.isoformat),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(datetime.isoformat),
    st.dates().map(lambda d: d.isoformat()),
    st.integers(-10**12, 10**14),
    _TEXT,
)
_URL = st.one_of(st.none(), _TEXT, st.sampled_from(["https://ok.example/a?b=c", "javascript:alert(1)", "/rel", "//x.example",
                                                    "HTTP://X.EXAMPLE/Ü", "https://x.example/" + "a" * 3000]),
                 st.text(string.printable, max_size=80).map(lambda s: "https://x.example/" + s))
# mostly keys and titles that are there (an empty one is a plain skip, tested above)
_KEY = st.one_of(_TEXT, st.integers(0, 10**6).map(str), _TEXT.map(lambda s: f"k{s}"))
_TITLE = st.one_of(_TEXT, _TEXT.map(lambda s: f"t {s}"), _TEXT.map(lambda s: f"{s} !"))
_KIND = st.sampled_from(["alert", "backup", "ticket", "maintenance", "certificate", "birthday"] * 2 + ["nope"])
_OPTIONAL = {"detail": _TEXT, "url": _URL, "end": _WHEN, "account": _TEXT, "severity": _TEXT,
             "status": st.one_of(_TEXT, st.sampled_from(["cancelled", "tentative", "confirmed"]))}
_ANY_RECORD = st.fixed_dictionaries({"id": _KEY, "kind": _KIND, "title": _TITLE, "start": _WHEN}, optional=_OPTIONAL)
# half the records have a key, a title, a known kind and a start a mapping takes (anything may
# be in them): so that many reach the renderer, whatever the generator's luck
_MAPPABLE_RECORD = st.fixed_dictionaries(
    {"id": st.integers(0, 10**9).map(str), "kind": st.sampled_from(["alert", "backup", "ticket", "maintenance", "certificate", "birthday"]),
     "title": _TEXT.map(lambda s: f"t {s}"), "start": _NEAR},
    optional={k: v for k, v in _OPTIONAL.items() if k != "end"})
_RECORD = st.one_of(_ANY_RECORD, _MAPPABLE_RECORD)


@pytest.mark.slow
def test_any_record_renders_into_a_feed_every_parser_reads(tmp_path: Path) -> None:
    config, store = _one_source_env(tmp_path, f"{{id: {SOURCE}, type: file, path: r.json, mapping: {json.dumps(MAPPING)}}}")
    store.close()  # mapping and render only: nothing is stored
    spec = find_feed(config, "team", "all")
    assert spec is not None
    head, tail = calendar_header(config, spec)
    collected: list[tuple[bytes, list[str]]] = []
    stats = {"events": 0, "skipped": 0, "unrenderable": 0}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(records=st.lists(_RECORD, min_size=1, max_size=6))
    def check(records: list[dict[str, Any]]) -> None:
        source = build_source(config, SOURCE)
        events = list(source.events_from(records))
        assert len(events) + len(source.skipped) == len(records)
        assert all(reason.split(": ", 1)[1].strip() for reason in source.skipped)  # every skip says why
        stats["skipped"] += len(source.skipped)
        fragments, uids = [], []
        for i, ev in enumerate(events):
            row = EventRow(id=i, uid=event_uid(ev.source, str(ev.key), config.uid_host), event=ev, sequence=i,
                           created=1_700_000_000.0, last_modified=1_700_000_000.0 + i)
            try:
                fragment = render_vevent(config, row)
            except (OverflowError, ValueError):
                # only a time at the very edge of what a datetime holds may not render
                assert _at_the_edge(ev), ev
                stats["unrenderable"] += 1
                continue
            assert fragment == vevent_component(config, row).to_ical()
            fragments.append(fragment)
            uids.append(row.uid)
        body = b"".join([head, *fragments, tail])
        check_line_format(body)
        cal = parse_icalendar(body)
        assert [str(e["UID"]) for e in cal.walk("VEVENT")] == uids
        stats["events"] += len(uids)
        collected.append((body, uids))

    check()
    print(f"property test: {stats}")
    assert stats["events"] >= 120, stats
    bodies = [body for body, _ in collected]
    for name, results in (("libical", libical_results(bodies)), ("ical.js", icaljs_results(bodies))):
        bad = [(r["errors"], uids) for r, (_, uids) in zip(results, collected, strict=True) if r.get("errors")]
        assert not bad, f"{name}: {bad[:3]}"
        wrong = [(r["uids"], uids) for r, (_, uids) in zip(results, collected, strict=True) if r["uids"] != uids]
        assert not wrong, f"{name} lost or changed UIDs: {wrong[:3]}"


def _at_the_edge(ev: Any) -> bool:
    years = [w.year for w in (ev.start, ev.end) if w is not None]
    return any(y <= 1 or y >= 9999 for y in years)
