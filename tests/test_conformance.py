"""Every Render rule of DESIGN.md, asserted on real feeds, and real parsers agreeing.

The demo feeds (accounts and teams) and a feed built from hostile records go through python
icalendar, Thunderbird's ical.js (node) and libical (check_restrictions, no X-LIC-ERROR), and
two consumers: node-ical (string url/summary/uid, Date start/end, RRULEs that expand) and Home
Assistant's ical (reads without errors; its ±30-day timeline is the feed's). See tests/parsers.py.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import icalendar
import pytest
from conftest import open_env, write_config
from parsers import check_all_many, parse_icalendar

from icsfeed.config import CSS_COLORS, Config
from icsfeed.poller import poll
from icsfeed.render import render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store

ICONS = {"alert": "🚨", "backup": "💾", "ticket": "🎫", "maintenance": "🔧", "certificate": "🔒", "birthday": "🎂",
         "insight": "⚠️"}
NOW = datetime.now(timezone.utc)


def feeds_of(config: Config, store: Store) -> dict[str, bytes]:
    render_feeds(config, store)
    out = {}
    for spec in all_feeds(config):
        stored = store.get_feed(spec.feed_id)
        assert stored is not None, spec.feed_id
        out[spec.feed_id] = stored.body
    return out


def unfolded_lines(body: bytes) -> list[str]:
    text = body.decode("utf-8")
    return text.replace("\r\n ", "").replace("\r\n\t", "").split("\r\n")[:-1]


def vevents(body: bytes) -> list[icalendar.Event]:
    return list(parse_icalendar(body).walk("VEVENT"))


HOSTILE_RECORDS = [
    {"id": "crlf", "title": "disk full\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:evil", "start": "2026-11-20T10:00:00Z",
     "detail": "line1\nEND:VCALENDAR\nline3", "url": "https://example.com/a?x=1,2;3"},
    {"id": "escape", "title": "a,b;c\\d", "start": "2026-11-20T11:00:00Z", "detail": "semi;colon,comma\\back"},
    {"id": "control", "title": "nul\u0000bell\u0007esc\u001b", "start": "2026-11-20T12:00:00Z"},
    {"id": "huge", "title": "x" * 1_000_000, "start": "2026-11-20T13:00:00Z", "detail": "y" * 1_000_000},
    {"id": "rtl", "title": "\u202eevil\u202c مرحبا 🚀 日本語", "start": "2026-11-20T14:00:00Z"},
    {"id": "jsurl", "title": "js link", "start": "2026-11-20T15:00:00Z", "url": "javascript:alert(1)"},
    {"id": "relurl", "title": "relative link", "start": "2026-11-20T16:00:00Z", "url": "/tickets/1"},
    {"id": "open", "title": "still firing", "start": "2026-11-21T08:00:00Z"},
    {"id": "long-fold", "title": "ä" * 200, "start": "2026-11-21T09:00:00Z", "detail": "€" * 300},
    {"id": "nodate", "title": "no start"},
    {"id": "baddate", "title": "bad start", "start": "yesterday-ish"},
    {"id": "backwards", "title": "end before start", "start": "2026-11-20T10:00:00Z", "end": "2026-11-19T10:00:00Z"},
]

HOSTILE_CONFIG = {
    "icsfeed.yaml": """
        server: {base_url: "https://feeds.example.com"}
        accounts:
          - {id: acme, name: "ACME, Inc; \\"the\\" best", keys: [acme]}
        sources:
          - id: hostile
            type: file
            path: hostile.json
            mapping: {kind: alert, key: id, title: title, detail: detail, url: url, start: start, end: end, account: "=acme", severity: "=critical"}
    """,
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Store, bytes]:
    base = tmp_path_factory.mktemp("hostile")
    config_dir = write_config(base / "config", HOSTILE_CONFIG)
    (config_dir / "hostile.json").write_text(json.dumps(HOSTILE_RECORDS), encoding="utf-8")
    config, store = open_env(config_dir, base / "data")
    reports = poll(config, store)
    assert reports[0].ok, reports[0].error
    # the three records without a usable time are skipped, each with its reason
    reasons = " | ".join(reports[0].skipped)
    assert len(reports[0].skipped) == 3, reasons
    assert "missing start" in reasons and "not a date" in reasons and "before start" in reasons
    return config, store, feeds_of(config, store)["account/acme"]


def test_demo_and_hostile_feeds_pass_three_parsers(demo: tuple[Config, Store], hostile: tuple[Config, Store, bytes]) -> None:
    bodies = [*list(feeds_of(*demo).values()), hostile[2]]
    check_all_many(bodies)  # icalendar, ical.js, libical: raises on any error or disagreement
    counts = [len(vevents(b)) for b in bodies]
    assert all(n > 0 for n in counts), counts


# --- line format -----------------------------------------------------------------------------

def test_crlf_line_endings(hostile: tuple[Config, Store, bytes], demo: tuple[Config, Store]) -> None:
    for body in [hostile[2], *feeds_of(*demo).values()]:
        assert body.endswith(b"\r\n")
        assert b"\n" not in body.replace(b"\r\n", b""), "bare LF"
        assert b"\r" not in body.replace(b"\r\n", b""), "bare CR"


def test_lines_folded_at_75_octets(hostile: tuple[Config, Store, bytes]) -> None:
    lines = hostile[2].split(b"\r\n")
    assert max(len(line) for line in lines) <= 75
    assert any(line.startswith(b" ") for line in lines), "long values must be folded, not cut"
    # a fold never splits a UTF-8 character
    for line in lines:
        line.decode("utf-8")


def test_utf8_text_survives(hostile: tuple[Config, Store, bytes]) -> None:
    summaries = [str(e["SUMMARY"]) for e in vevents(hostile[2])]
    assert any("مرحبا 🚀 日本語" in s for s in summaries)
    assert any("ä" * 50 in s for s in summaries)


def test_text_is_escaped_and_injection_stays_inside_summary(hostile: tuple[Config, Store, bytes]) -> None:
    body = hostile[2]
    events = vevents(body)
    lines = body.split(b"\r\n")
    assert lines.count(b"BEGIN:VEVENT") == lines.count(b"END:VEVENT") == len(events)
    assert sum(1 for e in events if str(e["SUMMARY"]).startswith("🚨")) == 9  # 12 records, 3 skipped
    assert lines.count(b"END:VCALENDAR") == 1
    crlf = next(e for e in events if "disk full" in str(e["SUMMARY"]))
    assert "END:VEVENT" in str(crlf["SUMMARY"]) and "UID:evil" in str(crlf["SUMMARY"])
    assert "\n" not in str(crlf["SUMMARY"]), "SUMMARY is one line"
    assert "END:VCALENDAR" in str(crlf["DESCRIPTION"])
    assert not any(str(e["UID"]) == "evil" for e in events)
    lines = unfolded_lines(body)  # type: ignore[assignment]
    assert "SUMMARY:🚨 a\\,b\\;c\\\\d" in lines
    assert any(line.startswith("DESCRIPTION:semi\\;colon\\,comma\\\\back") for line in lines)
    escape = next(e for e in events if str(e["SUMMARY"]).startswith("🚨 a,b"))
    assert str(escape["SUMMARY"]) == "🚨 a,b;c\\d"


def test_control_characters_removed_and_huge_text_bounded(hostile: tuple[Config, Store, bytes]) -> None:
    body = hostile[2]
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", body)
    events = vevents(body)
    control = next(e for e in events if str(e["SUMMARY"]).startswith("🚨 nul"))
    assert str(control["SUMMARY"]) == "🚨 nulbellesc"
    huge = next(e for e in events if str(e["SUMMARY"]).startswith("🚨 xxx"))
    assert len(str(huge["SUMMARY"])) <= 260 and str(huge["SUMMARY"]).endswith("…")
    assert len(str(huge["DESCRIPTION"])) <= 4100
    assert len(body) < 100_000, "a 1 MB title must not make a 1 MB feed"
    rtl = next(e for e in events if "مرحبا" in str(e["SUMMARY"]))
    assert "\u202e" not in str(rtl["SUMMARY"]), "bidi override must not flip the rest of the line"


# --- VCALENDAR -------------------------------------------------------------------------------

def test_calendar_properties(demo: tuple[Config, Store]) -> None:
    config, store = demo
    for feed_id, body in feeds_of(config, store).items():
        cal = parse_icalendar(body)
        lines = unfolded_lines(body)
        assert lines[0] == "BEGIN:VCALENDAR" and lines[-1] == "END:VCALENDAR"
        top = [line for line in lines if not line.startswith((" ",))]
        calendar_lines = top[: top.index("BEGIN:VEVENT")]
        assert "VERSION:2.0" in calendar_lines
        assert sum(1 for line in calendar_lines if line.startswith("PRODID:")) == 1
        assert "CALSCALE:GREGORIAN" in calendar_lines
        assert str(cal["NAME"]) == str(cal["X-WR-CALNAME"]) and str(cal["NAME"])
        assert "REFRESH-INTERVAL;VALUE=DURATION:PT1H" in calendar_lines
        assert "X-PUBLISHED-TTL:PT1H" in calendar_lines
        color = str(cal["COLOR"])
        assert color in CSS_COLORS, f"{feed_id}: COLOR {color} is not a CSS3 name"
        assert re.fullmatch(r"#[0-9A-F]{6}", str(cal["X-APPLE-CALENDAR-COLOR"]))
        assert str(cal["X-APPLE-CALENDAR-COLOR"]).lower() == CSS_COLORS[color]


def test_method_publish_means_organizer_on_every_event(demo: tuple[Config, Store], make_env: object) -> None:
    config, store = demo
    for body in feeds_of(config, store).values():
        assert "METHOD:PUBLISH" in unfolded_lines(body)
        for ev in vevents(body):
            assert str(ev["ORGANIZER"]).startswith("mailto:")


def test_without_method_publish_there_is_no_method(make_env: object) -> None:
    config, store = make_env({  # type: ignore[operator]
        "a.yaml": """
            feeds: {method_publish: false}
            accounts: [{id: acme, name: ACME}]
            sources:
              - {id: f, type: file, path: e.json, mapping: {kind: ticket, key: id, title: t, start: s, account: "=acme"}}
        """})
    (config.config_dir / "e.json").write_text(json.dumps([{"id": 1, "t": "x", "s": NOW.isoformat()}]))
    poll(config, store)
    body = store.get_feed("account/acme").body
    assert b"METHOD:" not in body and b"ORGANIZER" not in body
    check_all_many([body])


# --- VEVENT ----------------------------------------------------------------------------------

def test_vevent_properties(demo: tuple[Config, Store]) -> None:
    config, store = demo
    host = config.uid_host
    body = feeds_of(config, store)["account/acme"]
    events = vevents(body)
    kinds_seen = set()
    for ev in events:
        assert re.fullmatch(rf"[0-9a-f]{{32}}@{re.escape(host)}", str(ev["UID"]))
        for prop in ("DTSTAMP", "DTSTART", "DTEND", "SUMMARY", "DESCRIPTION", "CATEGORIES", "STATUS",
                     "SEQUENCE", "LAST-MODIFIED", "COLOR", "TRANSP", "URL"):
            assert prop in ev, f"{prop} missing in {ev['SUMMARY']}"
        assert "DURATION" not in ev
        assert str(ev["TRANSP"]) == "TRANSPARENT"
        assert str(ev["STATUS"]) in ("CONFIRMED", "TENTATIVE", "CANCELLED")
        kind = str(ev["CATEGORIES"].cats[0]).lower().replace("server ", "")
        kind = {"birthday": "birthday"}.get(kind, kind)
        assert kind in ICONS, kind
        assert str(ev["SUMMARY"]).startswith(ICONS[kind] + " ")
        assert str(ev["COLOR"]) == config.kinds[kind].color
        kinds_seen.add(kind)
    assert kinds_seen == set(ICONS), f"the demo account should show every kind, saw {kinds_seen}"
    assert len({str(e["UID"]) for e in events}) == len(events), "UIDs are unique"


def test_url_is_last_line_of_description(demo: tuple[Config, Store], hostile: tuple[Config, Store, bytes]) -> None:
    for ev in vevents(feeds_of(*demo)["account/acme"]):
        assert str(ev["DESCRIPTION"]).splitlines()[-1] == str(ev["URL"])
    events = vevents(hostile[2])
    for title in ("js link", "relative link"):
        ev = next(e for e in events if title in str(e["SUMMARY"]))
        assert "URL" not in ev, "javascript: and relative URLs never get out"
        assert "javascript" not in str(ev.get("DESCRIPTION", ""))


def test_times_in_utc_and_all_day_as_dates(demo: tuple[Config, Store]) -> None:
    body = feeds_of(*demo)["account/acme"]
    lines = unfolded_lines(body)
    for line in lines:
        if line.startswith(("DTSTART", "DTEND", "DTSTAMP", "LAST-MODIFIED", "CREATED")):
            name, _, value = line.partition(":")
            if ";VALUE=DATE" in name:
                assert re.fullmatch(r"\d{8}", value), line
            else:
                assert re.fullmatch(r"\d{8}T\d{6}Z", value), f"not UTC: {line}"
                assert "TZID" not in name
    for ev in vevents(body):
        kind_all_day = str(ev["SUMMARY"]).startswith(("🔒", "🎂", "⚠️"))
        start = ev["DTSTART"].dt
        assert isinstance(start, datetime) != kind_all_day, str(ev["SUMMARY"])
        assert ev["DTEND"].dt > start


def test_open_ended_event_gets_bounded_end(hostile: tuple[Config, Store, bytes]) -> None:
    ev = next(e for e in vevents(hostile[2]) if "still firing" in str(e["SUMMARY"]))
    assert ev["DTEND"].dt - ev["DTSTART"].dt == timedelta(hours=1)  # the alert kind's default length
    assert "ongoing" in str(ev["DESCRIPTION"])


def test_birthday_recurs_yearly_as_all_day(demo: tuple[Config, Store]) -> None:
    events = vevents(feeds_of(*demo)["account/acme"])
    birthdays = [e for e in events if str(e["SUMMARY"]).startswith("🎂")]
    assert birthdays
    for ev in birthdays:
        assert ev["RRULE"]["FREQ"] == ["YEARLY"]
        assert isinstance(ev["DTSTART"].dt, date) and not isinstance(ev["DTSTART"].dt, datetime)


def test_window_keeps_feeds_bounded(make_env: object) -> None:
    config, store = make_env({  # type: ignore[operator]
        "a.yaml": """
            accounts:
              - {id: acme, name: ACME}
              - {id: short, name: Short, window_back_days: 7, window_ahead_days: 2}
            sources:
              - {id: f, type: file, path: e.json, mapping: {kind: ticket, key: id, title: id, start: s, account: a}}
        """})
    days = [-120, -89, -30, -6, 0, 1, 5, 29, 45]
    records = [{"id": f"{acc}{d}", "a": acc, "s": (NOW + timedelta(days=d)).isoformat()} for acc in ("acme", "short") for d in days]
    (config.config_dir / "e.json").write_text(json.dumps(records))
    poll(config, store)
    shown = {acc: sorted(int(str(e["SUMMARY"]).split(acc)[1]) for e in vevents(store.get_feed(f"account/{acc}").body)
                         if str(e["SUMMARY"]).startswith("🎫"))
             for acc in ("acme", "short")}
    assert shown["acme"] == [-89, -30, -6, 0, 1, 5, 29]  # 90 days back, 30 ahead
    assert shown["short"] == [-6, 0, 1]  # the account's own window


def test_alarm_renders_as_valarm(make_env: object, tmp_path: Path) -> None:
    from icsfeed.model import Event
    from icsfeed.render import render_vevent
    from icsfeed.store import EventRow

    config, _ = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    row = EventRow(id=1, uid="u@h", sequence=0, created=0, last_modified=0, event=Event(
        source="s", key="k", kind="certificate", title="cert expires", start=date(2026, 12, 24),
        alarm_before=timedelta(days=14)))
    cal = icalendar.Calendar.from_ical(b"BEGIN:VCALENDAR\r\n" + render_vevent(config, row) + b"END:VCALENDAR\r\n")
    alarm = next(iter(cal.walk("VALARM")))
    assert alarm["TRIGGER"].dt == -timedelta(days=14) and str(alarm["ACTION"]) == "DISPLAY"


def test_blank_detail_gives_no_empty_description(make_env: object) -> None:
    """A detail of only spaces or tabs must not become a DESCRIPTION libical calls empty."""
    config, store = make_env({  # type: ignore[operator]
        "a.yaml": """
            accounts: [{id: acme, name: ACME}]
            sources:
              - {id: f, type: file, path: e.json, mapping: {kind: ticket, key: id, title: t, detail: d, start: s, account: "=acme"}}
        """})
    (config.config_dir / "e.json").write_text(json.dumps(
        [{"id": i, "t": "x", "d": d, "s": NOW.isoformat()} for i, d in enumerate([" ", "\t", " \t "])]))
    poll(config, store)
    body = store.get_feed("account/acme").body
    check_all_many([body])
    assert b"DESCRIPTION: " not in body and b"DESCRIPTION:\t" not in body
