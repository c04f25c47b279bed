"""Check .ics bytes with independent real calendar parsers and consumers.

Tests call :func:`check_all` (or one checker) on the feeds icsfeed produces.
Each checker raises ``AssertionError`` listing what the parser objected to.
The parsers are lenient in different ways, so a feed must pass all of them.
Three validate (python icalendar, ical.js, libical); two more read a feed the
way a subscriber's software does and compare what they see (node-ical, Home
Assistant's ``ical``); sabre/vobject (Nextcloud) is run by the tests of
calendar-level text only (:func:`sabre_results`):

* python ``icalendar`` (7.x), :func:`parse_icalendar`. It records property
  value errors in ``component.errors`` instead of raising; those are turned
  into failures, and so is everything its own tables say is required
  (PRODID/VERSION on VCALENDAR, UID/DTSTAMP on VEVENT, at most one of each
  singleton property, never DTEND together with DURATION), an unreadable
  start/end (``Event.start``/``Event.end``) and a TZID with no VTIMEZONE.
  It is the strictest value parser of the three: it rejects ``2024-01-01``
  as a DATE-TIME and out-of-range dates like ``20241345T250000Z``.
  It also fails on a bad TZOFFSETFROM in a VTIMEZONE and on junk after
  END:VCALENDAR. It does not catch: unknown STATUS values, a DATE-TIME given with
  ``VALUE=DATE``, bad URLs, a missing VALARM ACTION, an END that does not
  match its BEGIN (``BEGIN:VEVENT``...``END:VTODO``), non-UTF-8 bytes.
* Thunderbird's ``ical.js`` under node, :func:`check_icaljs`. ``ICAL.parse``
  throws on broken content lines, bad parameters, bad RRULE frequencies,
  an unterminated BEGIN and any junk after END:VCALENDAR; reading each event
  through ``ICAL.Event`` then catches bad DATE-TIME, DATE and DURATION
  values and a VEVENT without DTSTART. It does not catch: duplicate
  DTSTART/SUMMARY, DTEND with DURATION, missing UID/DTSTAMP/VERSION,
  ``20241345T250000Z`` (silently normalised to 2025-02-15), DATE-TIME with
  ``VALUE=DATE``, unknown TZIDs, bad GEO, mismatched END names.
* libical 3.0 through GObject introspection, :func:`check_libical`, run by
  Debian's ``/usr/bin/python3`` (see tests/libical_check.py). Its parser
  flags bad DATE-TIME/DATE/DURATION/RECUR/GEO values, bad parameter syntax
  and lines without a name (as X-LIC-ERROR); ``check_restrictions`` flags
  duplicate DTSTART/SUMMARY (any singleton), DTEND with DURATION, a missing
  VERSION, and, only when METHOD is set, the iTIP rules: with
  ``METHOD:PUBLISH`` every VEVENT needs ORGANIZER, UID and DTSTAMP.
  Without METHOD it does NOT require UID or DTSTAMP. It also refuses a
  COMMENT directly inside VTIMEZONE, which icalendar's
  ``Calendar.add_missing_timezones()`` writes (strip it). It does not catch:
  ``2024-01-01`` (read as a DATE), ``20241345T250000Z``, unknown TZIDs,
  unknown STATUS, bad URLs, VALARM without ACTION, trailing junk after
  END:VCALENDAR, mismatched END names. An unterminated BEGIN gives no
  component at all, and two VCALENDARs come back as an XROOT; both fail.

None of the three cares about CRLF line endings, 75-octet folding or
invalid UTF-8 (only the libical wrapper decodes strictly), so
:func:`check_line_format` checks those bytes directly; :func:`check_all`
runs it too. An empty VCALENDAR (no components) passes everything here,
although RFC 5545 asks for at least one component.

Consumers (what a subscriber's software does with the feed):

* node-ical under node, :func:`check_node_ical` (tests/js/check_node_ical.mjs):
  the parser of MagicMirror and many JavaScript dashboards. It throws on almost
  nothing, so the check is on what it hands a dashboard: every VEVENT's
  ``uid``, ``summary`` and ``url`` must be JavaScript strings (``URL;VALUE=URI``
  comes out as ``{params, val}``, shown as "[object Object]"), ``start`` and
  ``end`` valid Dates, and a recurring event must expand (node-ical's own
  ``expandRecurringEvent``, three years either side of now).
* Home Assistant's ``ical`` (PyPI, what the Remote Calendar integration
  uses), :func:`check_ha_ical`: ``IcsCalendarStream.calendar_from_ics`` must
  read the feed without a ``CalendarParseError``, and its UTC timeline over
  30 days either side of now must hold the same occurrences (UID, SUMMARY,
  start) as python icalendar + recurring-ical-events read from the same bytes.
* sabre/vobject 4 under php, :func:`sabre_results` (tests/sabre_check.php):
  Nextcloud's parser. Unlike the others it splits a TEXT value at unescaped
  commas and unescapes TEXT in every property, X-WR-* included, so it is the
  judge of calendar-level text (NAME, X-WR-CALNAME, X-WR-CALDESC).

Node, libical and php run in subprocesses; the ``*_many`` variants check
several calendars in one subprocess, which is what to use in loops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import icalendar
import recurring_ical_events

TESTS_DIR = Path(__file__).resolve().parent
JS_DIR = TESTS_DIR / "js"
ICALJS_SCRIPT = JS_DIR / "check_ical.mjs"
NODE_ICAL_SCRIPT = JS_DIR / "check_node_ical.mjs"
SABRE_SCRIPT = TESTS_DIR / "sabre_check.php"
LIBICAL_SCRIPT = TESTS_DIR / "libical_check.py"
# gi (python3-gi) is only importable by Debian's own interpreter.
SYSTEM_PYTHON = os.environ.get("ICSFEED_SYSTEM_PYTHON", "/usr/bin/python3")
SUBPROCESS_TIMEOUT = 600.0
MAX_LINE_OCTETS = 75

Summary = dict[str, Any]


# --- python icalendar ------------------------------------------------------


def _icalendar_problems(cal: icalendar.Calendar) -> list[str]:
    """Collect what icalendar recorded or would raise about a parsed calendar."""
    problems: list[str] = []
    for comp in cal.walk():
        where = comp.name
        if comp.name == "VEVENT":
            where = f"VEVENT {comp.get('UID', '(no UID)')}"
        for prop, err in comp.errors:
            problems.append(f"{where}: {prop or 'content line'}: {err}")
        if comp.name not in ("VCALENDAR", "VEVENT"):
            continue
        # icalendar's own per-component tables of RFC 5545 cardinalities.
        for name in comp.required:
            if name not in comp:
                problems.append(f"{where}: missing required {name}")
        for name in comp.singletons:
            if isinstance(comp.get(name), list):
                problems.append(f"{where}: {name} appears {len(comp[name])} times")
        if comp.exclusive and all(name in comp for name in comp.exclusive):
            problems.append(f"{where}: has all of {', '.join(comp.exclusive)}")
        if comp.name != "VEVENT":
            continue
        for attr in ("start", "end"):
            try:
                getattr(comp, attr)
            except Exception as exc:  # any failure is the finding
                problems.append(f"{where}: reading {attr}: {type(exc).__name__}: {exc}")
    missing_tz = sorted(cal.get_missing_tzids())
    if missing_tz:
        problems.append(f"TZID used without a VTIMEZONE: {', '.join(missing_tz)}")
    return problems


def parse_icalendar(data: bytes) -> icalendar.Calendar:
    """Parse one VCALENDAR with python icalendar; AssertionError on any error."""
    try:
        cal = icalendar.Calendar.from_ical(data)
    except Exception as exc:
        raise AssertionError(f"icalendar could not parse the calendar: {type(exc).__name__}: {exc}") from exc
    if not isinstance(cal, icalendar.Calendar) or cal.name != "VCALENDAR":
        raise AssertionError(f"icalendar: top-level component is {getattr(cal, 'name', cal)!r}, not VCALENDAR")
    problems = _icalendar_problems(cal)
    if problems:
        raise AssertionError("icalendar reported errors:\n  " + "\n  ".join(problems))
    return cal


#: calendar-level TEXT properties (RFC 7986 NAME; the X-WR-* names Apple and Google write)
CALENDAR_TEXT = ("NAME", "X-WR-CALNAME", "X-WR-CALDESC")


def calendar_text(data: bytes) -> dict[str, str]:
    """The calendar's NAME, X-WR-CALNAME and X-WR-CALDESC as python icalendar reads TEXT.

    icalendar 7 has no type for these names: it keeps their escaped text (``\\,``) as an
    unknown value. With them typed TEXT in its type table (for this one parse: the table is
    the library's, shared), it reads them the way RFC 7986 and the X-WR convention mean them,
    with its own unescaping."""
    types_map = icalendar.Calendar.types_factory.types_map
    saved = {name.lower(): types_map.get(name.lower()) for name in CALENDAR_TEXT}
    types_map.update({name: "text" for name in saved})
    try:
        cal = icalendar.Calendar.from_ical(data)
    finally:
        for name, value in saved.items():
            if value is None:
                types_map.pop(name, None)
            else:
                types_map[name] = value
    return {name: str(cal[name]) for name in CALENDAR_TEXT if name in cal}


# --- subprocess plumbing ---------------------------------------------------


def _run_on_files(argv: list[str], datas: Sequence[bytes], what: str, hint: str) -> list[Summary]:
    """Write each calendar to a temp file, run argv + paths, return its JSON list."""
    if not datas:
        return []
    with tempfile.TemporaryDirectory(prefix="icsfeed-parsers-") as tmp:
        paths = []
        for i, data in enumerate(datas):
            path = Path(tmp) / f"{i:05d}.ics"
            path.write_bytes(data)
            paths.append(str(path))
        try:
            proc = subprocess.run(
                [*argv, *paths],
                capture_output=True,
                timeout=SUBPROCESS_TIMEOUT,
                check=False,
            )
        except FileNotFoundError as exc:
            raise AssertionError(f"{what}: cannot run {argv[0]!r} ({exc}); {hint}") from exc
    if proc.returncode != 0:
        raise AssertionError(
            f"{what} checker exited with {proc.returncode}; {hint}\nstderr:\n{proc.stderr.decode(errors='replace')}"
        )
    results: list[Summary] = json.loads(proc.stdout)
    if len(results) != len(datas):
        raise AssertionError(f"{what}: expected {len(datas)} results, got {len(results)}")
    for result in results:
        result.pop("file", None)
    return results


def _raise_on_errors(results: list[Summary], what: str) -> None:
    """AssertionError naming every calendar (by index) that has errors."""
    bad = [(i, r["errors"]) for i, r in enumerate(results) if r.get("errors")]
    if not bad:
        return
    lines = []
    for i, errors in bad:
        prefix = f"calendar #{i}: " if len(results) > 1 else ""
        lines.extend(f"{prefix}{err}" for err in errors)
    raise AssertionError(f"{what} reported errors:\n  " + "\n  ".join(lines))


# --- ical.js ---------------------------------------------------------------

_NPM_HINT = "run `npm ci --prefix tests/js` (or scripts/install-test-deps.sh as root)"


def _node_argv() -> list[str]:
    """node + script, or AssertionError saying how to install what is missing."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed; run scripts/install-test-deps.sh as root")
    if not (JS_DIR / "node_modules" / "ical.js" / "package.json").is_file():
        raise AssertionError(f"ical.js is not installed in {JS_DIR / 'node_modules'}: {_NPM_HINT}")
    return [node, str(ICALJS_SCRIPT)]


def icaljs_results(datas: Sequence[bytes]) -> list[Summary]:
    """Run ical.js on each calendar; summaries with "errors", never raises on them."""
    return _run_on_files(_node_argv(), datas, "ical.js", _NPM_HINT)


def check_icaljs_many(datas: Sequence[bytes]) -> list[Summary]:
    """Check several calendars in one node process; AssertionError on any error."""
    results = icaljs_results(datas)
    _raise_on_errors(results, "ical.js")
    return results


def check_icaljs(data: bytes) -> Summary:
    """Check one calendar with ical.js; returns its summary.

    Keys: vcalendars, vevents, uids, summaries, starts, ends (ical.js time
    strings), tzids (used), vtimezones (defined), errors.
    """
    return check_icaljs_many([data])[0]


# --- node-ical -------------------------------------------------------------


def _node_ical_argv() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed; run scripts/install-test-deps.sh as root")
    if not (JS_DIR / "node_modules" / "node-ical" / "package.json").is_file():
        raise AssertionError(f"node-ical is not installed in {JS_DIR / 'node_modules'}: {_NPM_HINT}")
    return [node, str(NODE_ICAL_SCRIPT)]


def node_ical_results(datas: Sequence[bytes]) -> list[Summary]:
    """Run node-ical on each calendar; summaries with "errors", never raises on them."""
    return _run_on_files(_node_ical_argv(), datas, "node-ical", _NPM_HINT)


def check_node_ical_many(datas: Sequence[bytes]) -> list[Summary]:
    """Check several calendars in one node process; AssertionError on any error."""
    results = node_ical_results(datas)
    _raise_on_errors(results, "node-ical")
    return results


def check_node_ical(data: bytes) -> Summary:
    """Check one calendar with node-ical; returns its summary.

    Keys: vevents, uids, summaries, urls, starts, ends (ISO UTC), datetypes,
    recurring (UID -> expanded starts), errors.
    """
    return check_node_ical_many([data])[0]


# --- Home Assistant's ical -------------------------------------------------

#: the timeline compared with python icalendar's reading: this far either side of now
HA_WINDOW = timedelta(days=30)
#: occurrences this close to either end of the window are left out of the comparison: the two
#: libraries may place an all-day event (a date, no zone) a few hours apart in UTC
HA_EDGE = timedelta(days=1)


def _utc_start(value: date | datetime) -> datetime:
    """An occurrence's start as an aware UTC datetime (a date as its midnight UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def ha_ical_occurrences(data: bytes, now: datetime) -> set[tuple[str, str, datetime]]:
    """(UID, SUMMARY, start) of every occurrence on Home Assistant's UTC timeline within
    HA_WINDOW of ``now``; AssertionError naming the problem if ``ical`` cannot read the feed."""
    from ical.calendar_stream import IcsCalendarStream
    from ical.exceptions import CalendarParseError

    try:
        calendar = IcsCalendarStream.calendar_from_ics(data.decode("utf-8"))
    except CalendarParseError as exc:
        raise AssertionError(f"Home Assistant's ical could not read the calendar: {exc}: {exc.detailed_error}") from exc
    except Exception as exc:  # anything else it raises is a failure too, named
        raise AssertionError(f"Home Assistant's ical failed: {type(exc).__name__}: {exc}") from exc
    try:
        found = calendar.timeline.overlapping(now - HA_WINDOW, now + HA_WINDOW)
        return {(str(ev.uid), str(ev.summary), _utc_start(ev.dtstart)) for ev in found}
    except Exception as exc:
        raise AssertionError(f"Home Assistant's ical timeline failed: {type(exc).__name__}: {exc}") from exc


def icalendar_occurrences(data: bytes, now: datetime) -> set[tuple[str, str, datetime]]:
    """The same as :func:`ha_ical_occurrences`, read by python icalendar and expanded by
    recurring-ical-events."""
    cal = icalendar.Calendar.from_ical(data)
    found = recurring_ical_events.of(cal).between(now - HA_WINDOW, now + HA_WINDOW)
    return {(str(ev["UID"]), str(ev["SUMMARY"]), _utc_start(ev["DTSTART"].dt)) for ev in found}


def check_ha_ical(data: bytes, now: datetime | None = None) -> set[tuple[str, str, datetime]]:
    """Read one calendar with Home Assistant's ical and compare its timeline with python
    icalendar's; AssertionError listing what differs. Returns HA's occurrences."""
    now = now or datetime.now(timezone.utc)
    ha = ha_ical_occurrences(data, now)
    ours = icalendar_occurrences(data, now)

    def inner(items: set[tuple[str, str, datetime]]) -> set[tuple[str, str, datetime]]:
        low, high = now - HA_WINDOW + HA_EDGE, now + HA_WINDOW - HA_EDGE
        return {item for item in items if low <= item[2] <= high}

    only_ha, only_ours = inner(ha) - inner(ours), inner(ours) - inner(ha)
    if only_ha or only_ours:
        def show(items: set[tuple[str, str, datetime]]) -> str:
            return "; ".join(f"{uid} {summary[:60]!r} at {start.isoformat()}" for uid, summary, start in sorted(items)[:10])
        raise AssertionError(f"Home Assistant's timeline differs from the feed: {len(only_ha)} occurrence(s) only in "
                             f"HA ({show(only_ha)}), {len(only_ours)} only in python icalendar ({show(only_ours)})")
    return ha


def check_ha_ical_many(datas: Sequence[bytes]) -> None:
    for i, data in enumerate(datas):
        try:
            check_ha_ical(data)
        except AssertionError as exc:
            raise AssertionError(f"calendar #{i}: {exc}" if len(datas) > 1 else str(exc)) from exc


# --- sabre/vobject (Nextcloud) ---------------------------------------------

_SABRE_HINT = ("sabre/vobject 4 needs php (php-cli, php-mbstring) and `composer install --working-dir tests/php` "
               "(scripts/install-test-deps.sh), or ICSFEED_SABRE_SRC naming a directory with vobject/lib and xml/lib")


def sabre_missing() -> str | None:
    """Why sabre/vobject 4 cannot run here (None when it can).

    Nextcloud's parser comes from Packagist (composer), which not every machine reaches;
    Debian's php-sabre-vobject is 2.1 and cannot judge TEXT. Tests that need it skip with
    this reason, and the escaping itself is asserted on the bytes and by the other consumers.
    """
    if shutil.which("php") is None:
        return f"php is not installed: {_SABRE_HINT}"
    src = os.environ.get("ICSFEED_SABRE_SRC")
    if (TESTS_DIR / "php" / "vendor" / "autoload.php").is_file():
        return None
    if src and (Path(src) / "vobject" / "lib").is_dir() and (Path(src) / "xml" / "lib").is_dir():
        return None
    return f"sabre/vobject 4 is not installed: {_SABRE_HINT}"


def sabre_results(datas: Sequence[bytes]) -> list[Summary]:
    """Run sabre/vobject 4 on each calendar; summaries with "errors", never raises on them.

    Keys: version, calendar (property name -> {"parts": values as sabre splits them,
    "value": joined}), vevents, uids, summaries, urls, descriptions, errors.
    """
    php = shutil.which("php")
    if php is None:
        raise AssertionError(f"php is not installed: {_SABRE_HINT}")
    return _run_on_files([php, str(SABRE_SCRIPT)], datas, "sabre/vobject", _SABRE_HINT)


# --- libical ---------------------------------------------------------------

_LIBICAL_HINT = f"libical needs {SYSTEM_PYTHON} with python3-gi and gir1.2-ical-3.0 (run scripts/install-test-deps.sh as root)"


def libical_results(datas: Sequence[bytes]) -> list[Summary]:
    """Run libical on each calendar; summaries with "errors", never raises on them."""
    return _run_on_files([SYSTEM_PYTHON, str(LIBICAL_SCRIPT)], datas, "libical", _LIBICAL_HINT)


def check_libical_many(datas: Sequence[bytes]) -> list[Summary]:
    """Check several calendars in one libical process; AssertionError on any error."""
    results = libical_results(datas)
    _raise_on_errors(results, "libical")
    return results


def check_libical(data: bytes) -> Summary:
    """Check one calendar with libical; returns its summary.

    Keys: kind (top-level component), vevents, uids, restrictions_ok, errors
    (every distinct X-LIC-ERROR, prefixed with its component).
    """
    return check_libical_many([data])[0]


# --- bytes on the wire -----------------------------------------------------


def check_line_format(data: bytes) -> None:
    """RFC 5545 §3.1 framing none of the parsers enforce: UTF-8, CRLF, 75 octets."""
    problems: list[str] = []
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"not valid UTF-8: {exc}")
    if data and not data.endswith(b"\r\n"):
        problems.append("does not end with CRLF")
    lines = data.split(b"\r\n")
    for number, line in enumerate(lines, start=1):
        if b"\n" in line or b"\r" in line:
            problems.append(f"line {number}: bare LF or CR (lines must end with CRLF)")
        if len(line) > MAX_LINE_OCTETS:
            problems.append(f"line {number}: {len(line)} octets, longer than {MAX_LINE_OCTETS} (not folded)")
        if len(problems) >= 20:
            problems.append("... (stopped after 20 problems)")
            break
    if problems:
        raise AssertionError("line format errors:\n  " + "\n  ".join(problems))


# --- all together ----------------------------------------------------------


def check_all_many(datas: Sequence[bytes]) -> None:
    """Run every check on each calendar, and make the parsers agree on the events.

    Agreement matters because each parser may silently drop or merge what it
    does not understand; a differing VEVENT count or UID list means one did.
    node-ical keeps events in an object keyed by UID, so its order is compared
    as a set; Home Assistant's timeline is compared with python icalendar's.
    """
    cals = []
    for i, data in enumerate(datas):
        try:
            check_line_format(data)
            cals.append(parse_icalendar(data))
        except AssertionError as exc:
            raise AssertionError(f"calendar #{i}: {exc}" if len(datas) > 1 else str(exc)) from exc
    js = check_icaljs_many(datas)
    lib = check_libical_many(datas)
    node = check_node_ical_many(datas)
    check_ha_ical_many(datas)
    for i, (cal, js_res, lib_res, node_res) in enumerate(zip(cals, js, lib, node, strict=True)):
        py_uids = [str(ev.get("UID")) for ev in cal.walk("VEVENT")]
        views = {
            "icalendar": py_uids,
            "ical.js": js_res["uids"],
            "libical": lib_res["uids"],
            # node-ical keys events by UID (its order is its own): compared sorted
            "node-ical": node_res["uids"] if sorted(node_res["uids"]) != sorted(py_uids) else py_uids,
        }
        if len({len(v) for v in views.values()}) != 1 or len({tuple(v) for v in views.values()}) != 1:
            counts = ", ".join(f"{name}={len(v)}" for name, v in views.items())
            raise AssertionError(f"calendar #{i}: parsers disagree on the VEVENTs ({counts}): {views}"[:4000])


def check_all(data: bytes) -> None:
    """Check one calendar with every checker; AssertionError on any problem."""
    check_all_many([data])
