"""Only valid http(s) URIs reach a feed or a page, through one sanitiser (issue 9, item 6).

A corpus of hostile origin links goes into the store as the links of origin events and of
the events the insight detectors read (alerts for a burst, backups for a missed-backup
flag, tickets for the Monday summary). The rendered feeds are parsed with icalendar and
every URL-looking value is checked, in URL properties and in DESCRIPTION text; then the
month view's HTML. Nothing may be other than an RFC 3986 http(s) URI in ASCII.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from pathlib import Path

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_insights_backups import db01
from test_insights_bursts import burst, quiet_history
from test_insights_support import World, at, make_world, ticket

from icsfeed.live import LiveConfig
from icsfeed.model import Event
from icsfeed.render import render_feeds
from icsfeed.tokens import feed_token, load_secret_key
from icsfeed.urls import _published, safe_url
from icsfeed.web import create_app

NOW = at(date(2026, 3, 18), 15)

#: origin link -> what may be published (None: nothing)
CORPUS: dict[str, str | None] = {
    "javascript:alert(document.cookie)": None,
    " JaVaScRiPt:alert(1)": None,
    "java\tscript:alert(1)": None,
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==": None,
    "vbscript:msgbox(1)": None,
    "file:///etc/passwd": None,
    "//evil.example/x": None,
    "/tickets/42": None,
    "https://": None,
    "https:evil.example": None,
    "https://ok.example/\r\nATTACH:https://evil.example/x": None,
    "https://a.example:99999/": None,
    "https://a..b.example/": None,
    "https://evil\u202e.example/": None,
    "https://a\"b.example/": None,
    "https://user:s3cretpw@host.example/p": "https://host.example/p",
    "https://a.example/x y/\"quoted\"/'single'/<tag>": "https://a.example/x%20y/%22quoted%22/%27single%27/%3Ctag%3E",
    "https://bücher.example/ü?q=ü#ü": "https://xn--bcher-kva.example/%C3%BC?q=%C3%BC#%C3%BC",
    "HTTPS://EXAMPLE.COM/UP": "https://example.com/UP",
    "https://a.example/x;y,z?q=1&r=2#f": "https://a.example/x;y,z?q=1&r=2#f",
    "https://a.example/100%/%41?x=%zz": "https://a.example/100%25/%41?x=%25zz",
    "https://a.example/#a#b": "https://a.example/#a%23b",
    "http://[::1]:8080/a": "http://[::1]:8080/a",
    "  https://padded.example/a  ": "https://padded.example/a",
}

# RFC 3986 appendix A, for http(s) URIs
_UNRESERVED, _SUB_DELIMS, _PCT = r"A-Za-z0-9\-._~", r"!$&'()*+,;=", r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]"
RFC3986_HTTP = re.compile(rf"https?://(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?(?:/{_PCHAR}*)*"
                          rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?")
#: anything with a scheme: "word:" followed by a non-space
URL_LOOKING = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*:(?=\S)\S*")
DANGEROUS = re.compile(r"(?i)(java|vb)script:|data:|file:")


@pytest.mark.parametrize("given", list(CORPUS))
def test_safe_url_publishes_valid_http_uris_or_nothing(given: str) -> None:
    published = safe_url(given)
    assert published == CORPUS[given]
    if published is not None:
        assert published.isascii() and RFC3986_HTTP.fullmatch(published), published
        assert safe_url(published) == published  # stable: publishing twice changes nothing


_PIECES = st.sampled_from(["https://", "http://", "HTTP://", "a", "Z", "ü", "-", ".", "..", "_", "xn--bcher-kva",
                           ":", ":8080", ":99999", "@", "user:pw@", "/", "?", "#", "%", "%41", "%zz", " ", "'", '"',
                           "<", "[::1]", "\\", "&", "=", ";", ",", "~", "\u202e", "😀", "a" * 64])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=12).map("".join))
def test_the_fast_path_agrees_with_the_full_sanitiser(url: str) -> None:
    """Most links are published as they are (a regex says so); the rest go the long way."""
    published = safe_url(url)
    assert published == _published(url)
    if published is not None:
        assert published.isascii() and RFC3986_HTTP.fullmatch(published), published
        assert safe_url(published) == published


def _hostile_world(tmp_path: Path) -> World:
    links = list(CORPUS)
    world = make_world(tmp_path)
    origin = [Event(source="origin", key=f"o{i}", kind="ticket", title=f"origin link {i}", start=at(date(2026, 3, 17), 9),
                    account="acme", url=link) for i, link in enumerate(links)]
    world.poll("origin", origin, NOW)
    alerts = [dataclasses.replace(ev, url=links[i % len(links)]) for i, ev in enumerate(burst())]
    world.poll("alerts", quiet_history() + alerts, NOW)
    backups = db01(date(2026, 1, 5), date(2026, 3, 18), skip_full=(date(2026, 3, 8),))
    world.poll("backups", [dataclasses.replace(ev, url="javascript:alert('backup')") for ev in backups], NOW)
    tickets = [dataclasses.replace(ticket(f"T{i}", at(date(2026, 3, 11), 9)), url=link) for i, link in enumerate(links)]
    world.poll("tickets", tickets, NOW)
    world.refresh(NOW)
    flagged = {ev.attrs["insight"] for ev in world.flags()}
    assert {"bursts", "backups", "summary", "stale_tickets"} <= flagged, flagged
    return world


def _url_looking(text: str) -> list[str]:
    return [m.rstrip(".,;)") for m in URL_LOOKING.findall(text)]


def test_feeds_publish_only_valid_http_uris(tmp_path: Path) -> None:
    world = _hostile_world(tmp_path)
    render_feeds(world.config, world.store, now=NOW)
    seen: set[str] = set()
    for feed_id in ("account/acme", "team/heads-up"):
        stored = world.store.get_feed(feed_id)
        assert stored is not None
        unfolded = stored.body.decode().replace("\r\n ", "")
        assert not DANGEROUS.search(unfolded), DANGEROUS.search(unfolded)
        assert "s3cretpw" not in unfolded
        for ev in icalendar.Calendar.from_ical(stored.body).walk("VEVENT"):
            if "URL" in ev:
                url = str(ev["URL"])
                assert RFC3986_HTTP.fullmatch(url) and url.isascii(), url
                seen.add(url)
            for name in ("DESCRIPTION", "SUMMARY"):
                for found in _url_looking(str(ev.get(name, ""))):
                    assert RFC3986_HTTP.fullmatch(found) and found.isascii(), (name, found)
                    seen.add(found)
    published = {v for v in CORPUS.values() if v}
    assert published <= seen, published - seen  # every link that could be published was, in its safe form


def test_month_view_links_only_valid_http_uris(tmp_path: Path) -> None:
    world = _hostile_world(tmp_path)
    secret = load_secret_key(world.config.data_dir, world.store)
    client = create_app(LiveConfig(world.config), world.store, secret).test_client()
    page = client.get(f"/view/acme?token={feed_token(secret, 'account/acme', 1)}&month=2026-03")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert not DANGEROUS.search(html), DANGEROUS.search(html)
    assert "s3cretpw" not in html
    hrefs = re.findall(r'(?:href|src|action)="([^"]*)"', html)
    external = [h.replace("&amp;", "&") for h in hrefs if not h.startswith(("/", "?", "#"))]
    assert "https://xn--bcher-kva.example/%C3%BC?q=%C3%BC#%C3%BC" in external
    for href in external:
        assert href.isascii() and (RFC3986_HTTP.fullmatch(href) or href.startswith("webcal://")), href
