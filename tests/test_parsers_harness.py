"""Prove the parser checkers in tests/parsers.py accept good and reject bad .ics.

A checker that never fails would make every feed test meaningless, so each
one is shown failing on inputs that its parser really rejects (verified by
hand; see the parsers module docstring for what each one misses).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import parsers
import pytest

CRLF = "\r\n"

GOOD_EVENT = [
    "UID:harness-1@icsfeed.test",
    "DTSTAMP:20240101T000000Z",
    "DTSTART:20240102T100000Z",
    "DTEND:20240102T110000Z",
    "SUMMARY:Harness event",
]


def ics(
    *event_lines: str,
    head: tuple[str, ...] = ("VERSION:2.0", "PRODID:-//icsfeed//harness//EN"),
    tail: str = "",
) -> bytes:
    """A one-VEVENT calendar built from raw content lines, CRLF-terminated."""
    lines = [
        "BEGIN:VCALENDAR",
        *head,
        "BEGIN:VEVENT",
        *event_lines,
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return (CRLF.join(lines) + CRLF + tail).encode()


def with_event(**replace: str | None) -> bytes:
    """GOOD_EVENT with properties replaced (value) or dropped (None)."""
    lines = []
    for line in GOOD_EVENT:
        name = line.split(":", 1)[0]
        if name in replace:
            if replace[name] is not None:
                lines.append(f"{name}:{replace[name]}")
            continue
        lines.append(line)
    return ics(*lines)


GOOD = ics(*GOOD_EVENT)

TWO_CALENDARS = GOOD + GOOD
UNTERMINATED = CRLF.join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:x", "BEGIN:VEVENT", *GOOD_EVENT]).encode() + b"\r\n"
TWO_DTSTART = ics(*GOOD_EVENT, "DTSTART:20240103T100000Z")
DTEND_AND_DURATION = ics(*GOOD_EVENT, "DURATION:PT1H")
GARBAGE_DTSTART = with_event(DTSTART="garbage")
BAD_DURATION = with_event(DTEND=None).replace(b"SUMMARY", b"DURATION:1hour\r\nSUMMARY")
BAD_RRULE = ics(*GOOD_EVENT, "RRULE:FREQ=SOMETIMES")
NO_COLON_LINE = ics(*GOOD_EVENT, "NOCOLONLINE")
JUNK_AFTER_END = ics(*GOOD_EVENT, tail="junk\r\n")
PUBLISH_NO_ORGANIZER = ics(*GOOD_EVENT, head=("VERSION:2.0", "PRODID:x", "METHOD:PUBLISH"))
NO_VERSION = ics(*GOOD_EVENT, head=("PRODID:x",))
ISO_DASHED_DTSTART = with_event(DTSTART="2024-01-02")
OUT_OF_RANGE_DTSTART = with_event(DTSTART="20241345T250000Z")
NO_UID = with_event(UID=None)
NO_DTSTAMP = with_event(DTSTAMP=None)
UNKNOWN_TZID = with_event(DTSTART=None).replace(b"DTEND", b"DTSTART;TZID=Nowhere/Zone:20240102T100000\r\nDTEND")
NOT_UTF8 = GOOD.replace(b"Harness event", "caf\u00e9".encode("latin-1"))


# --- accepting a valid calendar ---------------------------------------------


def test_icalendar_accepts_valid_calendar() -> None:
    cal = parsers.parse_icalendar(GOOD)
    assert isinstance(cal, icalendar.Calendar)
    [event] = cal.walk("VEVENT")
    assert str(event["SUMMARY"]) == "Harness event"


def test_icaljs_accepts_valid_calendar() -> None:
    summary = parsers.check_icaljs(GOOD)
    assert summary["errors"] == []
    assert summary["vevents"] == 1
    assert summary["uids"] == ["harness-1@icsfeed.test"]
    assert summary["summaries"] == ["Harness event"]
    assert summary["starts"] == ["2024-01-02T10:00:00Z"]
    assert summary["ends"] == ["2024-01-02T11:00:00Z"]


def test_libical_accepts_valid_calendar() -> None:
    summary = parsers.check_libical(GOOD)
    assert summary["errors"] == []
    assert summary["kind"] == "VCALENDAR"
    assert summary["restrictions_ok"] is True
    assert summary["uids"] == ["harness-1@icsfeed.test"]


def test_line_format_accepts_valid_calendar() -> None:
    parsers.check_line_format(GOOD)


def test_check_all_accepts_valid_calendar() -> None:
    parsers.check_all(GOOD)


def test_check_all_accepts_a_real_generated_calendar() -> None:
    """icalendar's own output (folded, escaped, with a VTIMEZONE) passes all."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//icsfeed//harness//EN")
    cal.add("version", "2.0")
    event = icalendar.Event()
    event.add("uid", "harness-2@icsfeed.test")
    event.add("dtstamp", datetime(2024, 1, 1, tzinfo=UTC))
    event.add("dtstart", datetime(2024, 3, 31, 1, 30, tzinfo=ZoneInfo("Europe/Berlin")))
    event.add("dtend", datetime(2024, 3, 31, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")))
    event.add("summary", "Ümlaut, comma; semicolon \\ backslash " + "long " * 30)
    event.add("rrule", {"freq": "weekly", "count": 3})
    cal.add_component(event)
    cal.add_missing_timezones()
    _drop_vtimezone_comments(cal)
    parsers.check_all(cal.to_ical())


def _drop_vtimezone_comments(cal: icalendar.Calendar) -> None:
    """RFC 5545 §3.6.5 allows no COMMENT directly in VTIMEZONE; libical enforces it."""
    for vtimezone in cal.walk("VTIMEZONE"):
        vtimezone.pop("COMMENT", None)


def test_libical_rejects_the_comment_icalendar_puts_in_vtimezone() -> None:
    """icalendar's add_missing_timezones() adds a VTIMEZONE COMMENT libical refuses."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//icsfeed//harness//EN")
    cal.add("version", "2.0")
    event = icalendar.Event()
    event.add("uid", "harness-3@icsfeed.test")
    event.add("dtstamp", datetime(2024, 1, 1, tzinfo=UTC))
    event.add("dtstart", datetime(2024, 6, 1, 9, 0, tzinfo=ZoneInfo("Europe/Berlin")))
    cal.add_component(event)
    cal.add_missing_timezones()
    with pytest.raises(AssertionError, match=r"VTIMEZONE: .*COMMENT property. Expected 0 instances"):
        parsers.check_libical(cal.to_ical())
    _drop_vtimezone_comments(cal)
    parsers.check_libical(cal.to_ical())


def test_many_variants_check_several_calendars_at_once() -> None:
    other = GOOD.replace(b"harness-1@", b"harness-9@")
    assert [r["uids"] for r in parsers.check_icaljs_many([GOOD, other])] == [
        ["harness-1@icsfeed.test"],
        ["harness-9@icsfeed.test"],
    ]
    assert [r["uids"] for r in parsers.check_libical_many([GOOD, other])] == [
        ["harness-1@icsfeed.test"],
        ["harness-9@icsfeed.test"],
    ]
    parsers.check_all_many([GOOD, other])


def test_many_variants_name_the_broken_calendar() -> None:
    with pytest.raises(
        AssertionError,
        match=r"calendar #1: VEVENT harness-1@icsfeed.test: DTSTART: .*invalid",
    ):
        parsers.check_icaljs_many([GOOD, GARBAGE_DTSTART])
    with pytest.raises(AssertionError, match=r"calendar #1: .*garbage"):
        parsers.check_libical_many([GOOD, GARBAGE_DTSTART])


# --- rejecting broken calendars ---------------------------------------------

# (name, data, regex the AssertionError must match). Only what the parser
# really rejects; see tests/parsers.py for what it lets through.
ICALENDAR_REJECTS = [
    ("two DTSTART", TWO_DTSTART, r"DTSTART appears 2 times"),
    ("DTEND and DURATION", DTEND_AND_DURATION, r"DTEND, DURATION"),
    ("garbage DTSTART", GARBAGE_DTSTART, r"DTSTART: Expected time, got: garbage"),
    (
        "dashed ISO DTSTART",
        ISO_DASHED_DTSTART,
        r"DTSTART: Expected datetime.*2024-01-02",
    ),
    ("month 13 DTSTART", OUT_OF_RANGE_DTSTART, r"Wrong datetime format"),
    ("bad DURATION", BAD_DURATION, r"DURATION"),
    ("bad RRULE", BAD_RRULE, r"RRULE: Expected frequency"),
    ("line without colon", NO_COLON_LINE, r"NOCOLONLINE"),
    ("junk after END", JUNK_AFTER_END, r"could not parse.*junk"),
    ("no VERSION", NO_VERSION, r"missing required VERSION"),
    ("no UID", NO_UID, r"missing required UID"),
    ("no DTSTAMP", NO_DTSTAMP, r"missing required DTSTAMP"),
    (
        "TZID without VTIMEZONE",
        UNKNOWN_TZID,
        r"TZID used without a VTIMEZONE: Nowhere/Zone",
    ),
    ("unterminated", UNTERMINATED, r"could not parse.*no components"),
    ("two calendars", TWO_CALENDARS, r"could not parse.*multiple components"),
]

ICALJS_REJECTS = [
    ("garbage DTSTART", GARBAGE_DTSTART, r"invalid date-time value"),
    ("dashed ISO DTSTART", ISO_DASHED_DTSTART, r"invalid date-time value"),
    ("bad DURATION", BAD_DURATION, r"invalid duration value"),
    ("bad RRULE", BAD_RRULE, r"invalid frequency"),
    ("line without colon", NO_COLON_LINE, r"ParserError: invalid line"),
    ("junk after END", JUNK_AFTER_END, r"ParserError: invalid line.*junk"),
    ("unterminated", UNTERMINATED, r"component began but did not end"),
    ("two calendars", TWO_CALENDARS, r"exactly one top-level component, got 2"),
]

LIBICAL_REJECTS = [
    (
        "two DTSTART",
        TWO_DTSTART,
        r"DTSTART property. Expected zero or one instances.*got 2",
    ),
    (
        "DTEND and DURATION",
        DTEND_AND_DURATION,
        r"must not have both DURATION and DTEND",
    ),
    (
        "METHOD:PUBLISH without ORGANIZER",
        PUBLISH_NO_ORGANIZER,
        r"ORGANIZER property. Expected 1 instances",
    ),
    ("garbage DTSTART", GARBAGE_DTSTART, r"Can't parse as DATE-TIME value in DTSTART"),
    ("bad DURATION", BAD_DURATION, r"Can't parse as DURATION value"),
    ("bad RRULE", BAD_RRULE, r"Can't parse as RECUR value"),
    (
        "line without colon",
        NO_COLON_LINE,
        r"could not find a property name.*NOCOLONLINE",
    ),
    ("no VERSION", NO_VERSION, r"VERSION property. Expected 1 instances"),
    ("unterminated", UNTERMINATED, r"libical parsed no component"),
    ("two calendars", TWO_CALENDARS, r"top-level component is XROOT"),
    ("not UTF-8", NOT_UTF8, r"not valid UTF-8"),
]

LINE_FORMAT_REJECTS = [
    ("LF line endings", GOOD.replace(b"\r\n", b"\n"), r"bare LF"),
    ("unfolded long line", with_event(SUMMARY="x" * 100), r"longer than 75"),
    ("not UTF-8", NOT_UTF8, r"not valid UTF-8"),
    ("no final CRLF", GOOD[:-2], r"does not end with CRLF"),
]


def _ids(cases: list[tuple[str, bytes, str]]) -> list[str]:
    return [c[0] for c in cases]


@pytest.mark.parametrize(("name", "data", "pattern"), ICALENDAR_REJECTS, ids=_ids(ICALENDAR_REJECTS))
def test_icalendar_rejects(name: str, data: bytes, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        parsers.parse_icalendar(data)


def _assert_batch_rejects(
    run: Callable[[list[bytes]], list[dict[str, object]]],
    check_one: Callable[[bytes], object],
    cases: list[tuple[str, bytes, str]],
) -> None:
    """All cases in one subprocess (fast), then one through the raising API."""
    results = run([data for _, data, _ in cases])
    failures = []
    for (name, _, pattern), result in zip(cases, results, strict=True):
        errors = "\n".join(map(str, result["errors"]))  # type: ignore[call-overload]
        if not re.search(pattern, errors, re.DOTALL):
            failures.append(f"{name}: expected /{pattern}/ in errors, got {errors!r}")
    assert not failures, "\n".join(failures)
    name, data, pattern = cases[0]
    with pytest.raises(AssertionError, match=pattern):
        check_one(data)


def test_icaljs_rejects() -> None:
    _assert_batch_rejects(parsers.icaljs_results, parsers.check_icaljs, ICALJS_REJECTS)


def test_libical_rejects() -> None:
    _assert_batch_rejects(parsers.libical_results, parsers.check_libical, LIBICAL_REJECTS)


def test_libical_restriction_check_really_runs() -> None:
    """restrictions_ok comes from Component.check_restrictions, not the parser."""
    [result] = parsers.libical_results([TWO_DTSTART])
    assert result["restrictions_ok"] is False
    [result] = parsers.libical_results([GOOD])
    assert result["restrictions_ok"] is True


def test_libical_reports_repeated_errors_once() -> None:
    """libical 3.0.16 adds the DTEND+DURATION X-LIC-ERROR dozens of times."""
    [result] = parsers.libical_results([DTEND_AND_DURATION])
    assert len(result["errors"]) == 1


@pytest.mark.parametrize(("name", "data", "pattern"), LINE_FORMAT_REJECTS, ids=_ids(LINE_FORMAT_REJECTS))
def test_line_format_rejects(name: str, data: bytes, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        parsers.check_line_format(data)


@pytest.mark.parametrize(
    ("name", "data", "pattern"),
    [
        ("garbage DTSTART", GARBAGE_DTSTART, r"icalendar reported errors.*DTSTART"),
        (
            "METHOD:PUBLISH without ORGANIZER",
            PUBLISH_NO_ORGANIZER,
            r"libical reported errors.*ORGANIZER",
        ),
        ("LF line endings", GOOD.replace(b"\r\n", b"\n"), r"bare LF"),
    ],
)
def test_check_all_rejects(name: str, data: bytes, pattern: str) -> None:
    with pytest.raises(AssertionError, match=re.compile(pattern, re.DOTALL)):
        parsers.check_all(data)


def test_check_all_rejects_parsers_that_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parser that silently drops an event is caught by comparing UID lists."""
    real = parsers.check_libical_many

    def dropping(datas: list[bytes]) -> list[dict[str, object]]:
        results = real(datas)
        for result in results:
            result["uids"] = []
        return results

    monkeypatch.setattr(parsers, "check_libical_many", dropping)
    with pytest.raises(AssertionError, match=r"parsers disagree.*libical=0"):
        parsers.check_all(GOOD)


# --- missing dependencies fail loudly ---------------------------------------


def test_missing_node_modules_fails_with_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsers, "JS_DIR", tmp_path)
    with pytest.raises(AssertionError, match=r"npm ci --prefix tests/js"):
        parsers.check_icaljs(GOOD)


def test_ical_js_is_installed() -> None:
    """Fails (never skips) on a machine where `npm ci --prefix tests/js` was not run."""
    assert (parsers.JS_DIR / "node_modules" / "ical.js" / "package.json").is_file(), (
        "ical.js is missing: run `npm ci --prefix tests/js`"
    )


def test_missing_system_python_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsers, "SYSTEM_PYTHON", "/nonexistent/python3")
    with pytest.raises(AssertionError, match=r"install-test-deps.sh"):
        parsers.libical_results([GOOD])


# --- consumers: node-ical, Home Assistant's ical, sabre/vobject ---------------------------------

URL_VALUE_URI = ics(*GOOD_EVENT, "URL;VALUE=URI:https://example.com/a")
SUMMARY_WITH_LANGUAGE = with_event(SUMMARY=None).replace(b"END:VEVENT", b"SUMMARY;LANGUAGE=en:Harness event\r\nEND:VEVENT")
YEARLY_FROM_2024 = ics(*GOOD_EVENT, "RRULE:FREQ=YEARLY")


def test_node_ical_accepts_valid_calendar() -> None:
    summary = parsers.check_node_ical(ics(*GOOD_EVENT, "URL:https://example.com/a"))
    assert summary["errors"] == []
    assert summary["uids"] == ["harness-1@icsfeed.test"]
    assert summary["summaries"] == ["Harness event"]
    assert summary["urls"] == ["https://example.com/a"]
    assert summary["starts"] == ["2024-01-02T10:00:00.000Z"] and summary["ends"] == ["2024-01-02T11:00:00.000Z"]


def test_node_ical_rejects_what_a_dashboard_shows_as_object() -> None:
    """node-ical turns a property with parameters into {params, val}: "[object Object]"."""
    results = parsers.node_ical_results([URL_VALUE_URI, SUMMARY_WITH_LANGUAGE, with_event(DTSTART=None)])
    assert re.search(r"url is \{\"params\":\{\"VALUE\":\"URI\"\}.*not a string", results[0]["errors"][0]), results[0]
    assert any("summary is {" in e for e in results[1]["errors"]), results[1]
    assert any("start is not a valid Date" in e for e in results[2]["errors"]), results[2]
    with pytest.raises(AssertionError, match=r"(?s)node-ical reported errors.*url is"):
        parsers.check_node_ical(URL_VALUE_URI)


def test_node_ical_expands_yearly_rules() -> None:
    [result] = parsers.node_ical_results([YEARLY_FROM_2024])
    starts = result["recurring"]["harness-1@icsfeed.test"]
    assert len(starts) >= 5 and {s[5:] for s in starts} == {"01-02T10:00:00.000Z"}, starts


def test_node_ical_is_installed() -> None:
    """Fails (never skips) on a machine where `npm ci --prefix tests/js` was not run."""
    assert (parsers.JS_DIR / "node_modules" / "node-ical" / "package.json").is_file(), (
        "node-ical is missing: run `npm ci --prefix tests/js`"
    )


def test_check_all_rejects_url_with_value_uri() -> None:
    with pytest.raises(AssertionError, match=r"(?s)node-ical reported errors.*url is"):
        parsers.check_all(URL_VALUE_URI)


def test_ha_ical_reads_a_valid_calendar_and_its_timeline() -> None:
    found = parsers.check_ha_ical(YEARLY_FROM_2024, datetime(2030, 1, 10, tzinfo=UTC))
    assert found == {("harness-1@icsfeed.test", "Harness event", datetime(2030, 1, 2, 10, tzinfo=UTC))}


def test_ha_ical_rejects_what_it_cannot_read() -> None:
    with pytest.raises(AssertionError, match=r"Home Assistant's ical could not read the calendar"):
        parsers.check_ha_ical(GARBAGE_DTSTART)


def test_ha_ical_comparison_catches_a_missing_occurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeline that lost an occurrence (here: python icalendar's side made to drop it)."""
    monkeypatch.setattr(parsers, "icalendar_occurrences", lambda data, now: set())
    with pytest.raises(AssertionError, match=r"timeline differs.*1 occurrence\(s\) only in HA"):
        parsers.check_ha_ical(YEARLY_FROM_2024, datetime(2030, 1, 10, tzinfo=UTC))


def test_ical_is_installed() -> None:
    from importlib.metadata import version

    assert version("ical") == "14.3.1", "pip install -e '.[test]' installs Home Assistant's ical"


@pytest.mark.skipif(parsers.sabre_missing() is not None, reason=str(parsers.sabre_missing()))
def test_sabre_splits_unescaped_text_at_commas() -> None:
    """The judge of calendar-level text: Nextcloud's parser sees `a, b` as two values."""
    plain = ics(*GOOD_EVENT, head=("VERSION:2.0", "PRODID:x", "X-WR-CALDESC:a, b; c"))
    escaped = ics(*GOOD_EVENT, head=("VERSION:2.0", "PRODID:x", "X-WR-CALDESC:a\\, b\\; c \\\\ d"))
    [p, e] = parsers.sabre_results([plain, escaped])
    assert p["calendar"]["X-WR-CALDESC"]["parts"] == ["a", " b; c"]
    assert e["calendar"]["X-WR-CALDESC"]["parts"] == ["a, b; c \\ d"]
    assert e["uids"] == ["harness-1@icsfeed.test"] and e["errors"] == []
    assert p["version"].startswith("4.")
