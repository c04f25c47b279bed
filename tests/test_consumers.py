"""What subscribers' software reads from a feed: Nextcloud (sabre/vobject), node-ical
(MagicMirror, dashboards), Home Assistant's ``ical``, besides the three validators.

Issue 12 items 1-3: calendar-level text (NAME, X-WR-CALNAME, X-WR-CALDESC) is TEXT-escaped
once, by icalendar's vText, so that sabre/vobject reads one value with the right text; URL
is written without ``VALUE=URI``, so node-ical hands dashboards a string; node-ical and Home
Assistant read every demo and team feed (the hostile corpus goes through them in
tests/test_hostile.py and test_conformance.py, via parsers.check_all_many).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from parsers import (
    calendar_text,
    check_all_many,
    check_ha_ical,
    check_node_ical_many,
    icalendar_occurrences,
    icaljs_results,
    parse_icalendar,
    sabre_missing,
    sabre_results,
)
from test_conformance import feeds_of, unfolded_lines

from icsfeed.config import Config
from icsfeed.poller import poll
from icsfeed.store import Store

AWKWARD = "Smith, Jones; Co \\ Ltd"
AWKWARD_TEAM = "Night, shift; ops \\ on call"
#: what the feed says about an account (render.calendar_header)
DESCRIPTION = f"Alerts, backups, tickets and maintenance for {AWKWARD}"
NOW = datetime.now(timezone.utc)

#: Nextcloud's parser comes from Packagist, which not every machine reaches (see parsers.sabre_missing)
needs_sabre = pytest.mark.skipif(sabre_missing() is not None, reason=str(sabre_missing()))


def _awkward_feeds(make_env: object) -> tuple[bytes, bytes]:
    config, store = make_env({"a.yaml": f"""
        accounts: [{{id: smith, name: {json.dumps(AWKWARD)}}}]
        teams: [{{id: night, name: {json.dumps(AWKWARD_TEAM)}}}]
        sources:
          - {{id: f, type: file, path: e.json, mapping: {{kind: ticket, key: id, title: t, start: s, account: "=smith"}}}}
    """})  # type: ignore[operator]
    (config.config_dir / "e.json").write_text(f'[{{"id": 1, "t": "x", "s": "{NOW.isoformat()}"}}]')
    assert poll(config, store)[0].ok
    return store.get_feed("account/smith").body, store.get_feed("team/night").body


# --- item 1: calendar-level text ---------------------------------------------------------------

def test_calendar_text_is_escaped_once_on_the_wire(make_env: object) -> None:
    account, team = _awkward_feeds(make_env)
    lines = unfolded_lines(account)
    assert "NAME:Smith\\, Jones\\; Co \\\\ Ltd · icsfeed" in lines
    assert "X-WR-CALNAME:Smith\\, Jones\\; Co \\\\ Ltd · icsfeed" in lines
    assert "X-WR-CALDESC:Alerts\\, backups\\, tickets and maintenance for Smith\\, Jones\\; Co \\\\ Ltd" in lines
    assert "NAME:Night\\, shift\\; ops \\\\ on call (team) · icsfeed" in unfolded_lines(team)
    check_all_many([account, team])


@needs_sabre
def test_nextcloud_reads_one_value_with_the_right_text(make_env: object) -> None:
    """sabre/vobject 4 (Nextcloud) splits TEXT at unescaped commas: an unescaped X-WR-CALDESC
    is four values, and an unescaped name comes back as "Smith, Jones\\; Co \\\\ Ltd"."""
    account, team = _awkward_feeds(make_env)
    [acc, tm] = sabre_results([account, team])
    assert acc["errors"] == [] and tm["errors"] == [], (acc["errors"], tm["errors"])
    assert int(acc["version"].split(".")[0]) >= 4, acc["version"]
    assert acc["calendar"]["X-WR-CALDESC"] == {"parts": [DESCRIPTION], "value": DESCRIPTION}
    for name in ("NAME", "X-WR-CALNAME"):
        assert acc["calendar"][name] == {"parts": [f"{AWKWARD} · icsfeed"], "value": f"{AWKWARD} · icsfeed"}
        assert tm["calendar"][name]["parts"] == [f"{AWKWARD_TEAM} (team) · icsfeed"]
    assert acc["vevents"] == 1


def test_icaljs_and_icalendar_read_the_name_back(make_env: object) -> None:
    account, _ = _awkward_feeds(make_env)
    [js] = icaljs_results([account])
    assert js["calendar"] == {"NAME": [f"{AWKWARD} · icsfeed"], "X-WR-CALNAME": [f"{AWKWARD} · icsfeed"],
                              "X-WR-CALDESC": [DESCRIPTION]}
    assert calendar_text(account) == {"NAME": f"{AWKWARD} · icsfeed", "X-WR-CALNAME": f"{AWKWARD} · icsfeed", "X-WR-CALDESC": DESCRIPTION}


@needs_sabre
def test_demo_calendar_text_reads_as_one_value_in_nextcloud(demo: tuple[Config, Store]) -> None:
    """The demo's own names and descriptions ("Alerts, backups, …") through sabre/vobject."""
    config, store = demo
    bodies = feeds_of(config, store)
    results = sabre_results(list(bodies.values()))
    for (feed_id, body), result in zip(bodies.items(), results, strict=True):
        assert result["errors"] == [], (feed_id, result["errors"])
        cal = parse_icalendar(body)
        for name in ("NAME", "X-WR-CALNAME", "X-WR-CALDESC"):
            parts = result["calendar"][name]["parts"]
            assert len(parts) == 1, f"{feed_id}: {name} is {len(parts)} values in Nextcloud: {parts}"
            assert parts[0] == calendar_text(body)[name]
        assert result["calendar"]["X-WR-CALDESC"]["parts"][0].startswith("Alerts, backups, tickets and maintenance for ")
        assert sorted(result["uids"]) == sorted(str(e["UID"]) for e in cal.walk("VEVENT"))


# --- item 2: URL without VALUE=URI ---------------------------------------------------------------

def test_url_is_written_without_value_uri(demo: tuple[Config, Store]) -> None:
    bodies = feeds_of(*demo)
    urls = 0
    for feed_id, body in bodies.items():
        assert b"VALUE=URI" not in body, feed_id
        lines = unfolded_lines(body)
        urls += sum(1 for line in lines if line.startswith("URL:https://"))
        assert not [line for line in lines if line.startswith("URL") and not line.startswith("URL:")], feed_id
    assert urls > 20, "the demo feeds link their origins"


def test_node_ical_gives_dashboards_string_urls(demo: tuple[Config, Store]) -> None:
    bodies = feeds_of(*demo)
    results = check_node_ical_many(list(bodies.values()))  # raises on any non-string url/summary/uid
    for (feed_id, body), result in zip(bodies.items(), results, strict=True):
        wanted = {str(e["UID"]): str(e["URL"]) for e in parse_icalendar(body).walk("VEVENT") if "URL" in e}
        got = {uid: url for uid, url in zip(result["uids"], result["urls"], strict=True) if url is not None}
        assert got == wanted, feed_id
        assert all(isinstance(url, str) for url in got.values())


# --- item 3: node-ical and Home Assistant over the demo and team feeds ---------------------------

def test_node_ical_reads_every_demo_feed_and_expands_birthdays(demo: tuple[Config, Store]) -> None:
    bodies = feeds_of(*demo)
    results = check_node_ical_many(list(bodies.values()))
    for (feed_id, body), result in zip(bodies.items(), results, strict=True):
        events = list(parse_icalendar(body).walk("VEVENT"))
        assert result["vevents"] == len(events) > 0, feed_id
        assert sorted(result["summaries"]) == sorted(str(e["SUMMARY"]) for e in events)
        assert all(isinstance(s, str) and s for s in result["starts"] + result["ends"])
        yearly = {str(e["UID"]): e["DTSTART"].dt for e in events if "RRULE" in e}
        if feed_id != "account/acme":
            continue
        assert yearly, "the demo account has birthdays (yearly RRULE)"
        for uid, first in yearly.items():
            starts = result["recurring"][uid]
            assert len(starts) >= 5, (uid, starts)  # three years either side of now: 6 or 7 birthdays
            days = {s[5:10] for s in starts}
            assert days == {first.strftime("%m-%d")}, (uid, starts)  # the same day each year


def test_home_assistant_timeline_matches_every_demo_feed(demo: tuple[Config, Store]) -> None:
    bodies = feeds_of(*demo)
    seen = 0
    for feed_id, body in bodies.items():
        ha = check_ha_ical(body, NOW)  # raises if it cannot read the feed or its timeline differs
        ours = icalendar_occurrences(body, NOW)
        assert ha, f"{feed_id}: Home Assistant shows nothing within 30 days"
        assert {uid for uid, _, _ in ha} == {uid for uid, _, _ in ours}, feed_id
        seen += len(ha)
    assert seen > 50


def test_home_assistant_shows_a_birthday_every_year(demo: tuple[Config, Store]) -> None:
    body = feeds_of(*demo)["account/acme"]
    birthdays = [e for e in parse_icalendar(body).walk("VEVENT") if "RRULE" in e]
    first = birthdays[0]["DTSTART"].dt
    assert isinstance(first, date)
    # ten years on, Home Assistant's timeline still has it, on its day
    later = datetime(NOW.year + 10, first.month, min(first.day, 28), 12, tzinfo=timezone.utc)
    found = check_ha_ical(body, later)
    assert any(uid == str(birthdays[0]["UID"]) and start.date().year == later.year for uid, _, start in found)
    assert later - timedelta(days=40) < max(s for _, _, s in found)
