"""A team feed never carries an account's token (issue 9, item 5).

Insight flags link "the month view": in an account's feed that is the account's view, in a
team feed the team's own view, with the team's token. Checked on the rendered bytes of both
feeds (every URL, the DESCRIPTION text too), on the team's month view page, for flags
stored before the rule (which held the account's view URL), and across a token rotation.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import icalendar
from test_insights_bursts import burst, quiet_history
from test_insights_support import World, at, make_config, make_world, ticket

from icsfeed.live import LiveConfig
from icsfeed.render import build_feed, render_feeds
from icsfeed.routing import find_feed
from icsfeed.tokens import feed_token, load_secret_key
from icsfeed.web import create_app

NOW = at(date(2026, 3, 18), 15)  # a Wednesday: this week's summary is on Monday 16 March
BASE = "https://feeds.example.com"


def _world(tmp_path: Path) -> World:
    world = make_world(tmp_path)
    world.poll("alerts", quiet_history() + burst(), NOW)
    world.poll("tickets", [ticket("T1", at(date(2026, 3, 11), 9))], NOW)
    world.refresh(NOW)
    assert world.flags("summary") and world.flags("bursts"), "the fixture must raise flags"
    return world


def _feed(world: World, feed_id: str) -> tuple[bytes, list[icalendar.Event]]:
    stored = world.store.get_feed(feed_id)
    assert stored is not None, feed_id
    return stored.body, list(icalendar.Calendar.from_ical(stored.body).walk("VEVENT"))


def _unfolded(body: bytes) -> str:
    return body.decode().replace("\r\n ", "")


def _view_links(events: list[icalendar.Event]) -> list[str]:
    """Every /view/ link in the events: URL properties and DESCRIPTION lines."""
    out = []
    for ev in events:
        for text in (str(ev.get("URL", "")), str(ev.get("DESCRIPTION", ""))):
            out += re.findall(r"https?://\S*/view/\S*", text)
    return out


def test_team_feed_links_the_team_view_and_never_an_account_token(tmp_path: Path) -> None:
    world = _world(tmp_path)
    render_feeds(world.config, world.store, now=NOW)
    secret = load_secret_key(world.config.data_dir, world.store)
    acme_token = feed_token(secret, "account/acme", 1)
    team_token = feed_token(secret, "team/heads-up", 1)

    team_body, team_events = _feed(world, "team/heads-up")
    summaries = [ev for ev in team_events if str(ev["SUMMARY"]).startswith("⚠️ Last week at ACME Corp")]
    assert summaries, "the team feed shows ACME's weekly summaries"
    assert acme_token not in _unfolded(team_body)
    links = _view_links(team_events)
    assert links and set(links) == {f"{BASE}/view/team/heads-up?token={team_token}"}, set(links)
    for ev in summaries:  # the link is the URL and the description's last line
        assert str(ev["URL"]) == f"{BASE}/view/team/heads-up?token={team_token}"
        assert str(ev["DESCRIPTION"]).splitlines()[-1] == str(ev["URL"])

    acme_body, acme_events = _feed(world, "account/acme")
    assert team_token not in _unfolded(acme_body)
    assert set(_view_links(acme_events)) == {f"{BASE}/view/acme?token={acme_token}"}

    # the team's month view shows the same flags and no account token either
    client = create_app(LiveConfig(world.config), world.store, secret).test_client()
    page = client.get(f"/view/team/heads-up?token={team_token}&month=2026-03")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Last week at ACME Corp" in html and acme_token not in html
    # and a filtered variant (&kinds=…), which the web layer joins when it is asked for
    spec = find_feed(world.config, "team", "heads-up")
    assert spec is not None
    variant = build_feed(world.config, world.store, spec, NOW, kinds=["insight"], save_fragments=False, secret=secret)
    assert b"Last week at ACME Corp" in variant.body
    assert acme_token not in _unfolded(variant.body) and team_token in _unfolded(variant.body)


def test_flags_stored_with_the_account_view_url_are_relinked(tmp_path: Path) -> None:
    """Flags made before the rule held ``…/view/acme?token=<acme's token>`` as their URL."""
    world = _world(tmp_path)
    secret = load_secret_key(world.config.data_dir, world.store)
    acme_token = feed_token(secret, "account/acme", 1)
    old_link = f"{BASE}/view/acme?token={acme_token}"
    for row in world.rows("summary"):
        attrs = {k: v for k, v in row.event.attrs.items() if k != "view_link"}
        legacy = dataclasses.replace(row.event, url=old_link, attrs=attrs)
        world.store.apply_poll(row.event.source, [legacy], absence="keep", complete=False,
                               now=NOW.timestamp(), previous_success=None)
    assert {r.event.url for r in world.rows("summary")} == {old_link}
    render_feeds(world.config, world.store, now=NOW, force=True)
    team_body, team_events = _feed(world, "team/heads-up")
    assert acme_token not in _unfolded(team_body)
    assert set(_view_links(team_events)) == {f"{BASE}/view/team/heads-up?token={feed_token(secret, 'team/heads-up', 1)}"}
    html = create_app(LiveConfig(world.config), world.store, secret).test_client().get(
        f"/view/team/heads-up?token={feed_token(secret, 'team/heads-up', 1)}&month=2026-03").get_data(as_text=True)
    assert acme_token not in html


def test_a_token_rotation_relinks_the_flags(tmp_path: Path) -> None:
    world = _world(tmp_path)
    render_feeds(world.config, world.store, now=NOW)
    secret = load_secret_key(world.config.data_dir, world.store)
    accounts = [{"id": "acme", "name": "ACME Corp", "keys": ["acme"], "timezone": "Europe/Berlin", "token_version": 2},
                {"id": "globex", "name": "Globex", "keys": ["globex"]}]
    world.config = make_config(world.root, None, accounts)
    assert "account/acme" in render_feeds(world.config, world.store, now=NOW + timedelta(minutes=1))
    body, events = _feed(world, "account/acme")
    assert feed_token(secret, "account/acme", 1) not in _unfolded(body)
    links = _view_links(events)
    assert links and all(parse_qs(urlsplit(link).query)["token"] == [feed_token(secret, "account/acme", 2)]
                         for link in links)
