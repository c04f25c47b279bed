"""Pages without a browser: the month grid's rules, admin access, status, metrics, subscribe links.

HTTP tests use Flask's test client (the peer is set with ``REMOTE_ADDR``; ``Env.admin()`` is
a client logged in with the generated admin token); the same pages are driven in real
Chromium by test_pages_browser.py. Admin access itself: test_admin_auth.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient

from icsfeed.config import Config
from icsfeed.live import LiveConfig
from icsfeed.model import Event
from icsfeed.routing import all_feeds, find_feed, subscription_url
from icsfeed.store import EventRow, Store
from icsfeed.tokens import feed_token
from icsfeed.web import create_app
from icsfeed.web.admin import load_admin_token
from icsfeed.web.month import POPOVER_MAX, BadMonth, build_month, grid_days, parse_month

SECRET = b"pages-test-secret-0123456789abcdef"
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "10.0.0.5"}
UTC = timezone.utc

BASE_YAML = """\
server:
  base_url: {base_url}
{server_extra}
feeds:
  timezone: UTC
accounts:
  - {{id: acme, name: "ACME <Corp>", keys: [acme], timezone: Europe/Berlin}}
  - {{id: globex, name: Globex, keys: [globex]}}
teams:
  - {{id: ops, name: Ops, accounts: "*", kinds: [alert]}}
sources:
  - id: s1
    type: file
    interval: 10m
    path: events.json
    mapping: {{kind: "{{kind}}", key: id, title: title, start: start, account: account}}
"""


@pytest.fixture(autouse=True)
def _no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ICSFEED_ADMIN_USER", "ICSFEED_ADMIN_PASSWORD", "ICSFEED_METRICS_PUBLIC"):
        monkeypatch.delenv(name, raising=False)


class AtBaseURL(FlaskClient):
    """A test client whose requests go to ``base`` (scheme and host), from 127.0.0.1."""

    base = "http://localhost/"

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("base_url", self.base)
        kwargs.setdefault("environ_base", LOCAL)
        return super().open(*args, **kwargs)


class Env:
    def __init__(self, config: Config, store: Store) -> None:
        self.config, self.store = config, store
        self.live = LiveConfig(config, check_every=3600)
        self.app = create_app(self.live, store, SECRET)

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def admin(self) -> FlaskClient:
        """A client logged in with the generated admin token, reaching the app at base_url."""
        client = AtBaseURL(self.app, self.app.response_class, use_cookies=True)
        base = urlsplit(self.config.server.base_url)
        client.base = f"{base.scheme}://{base.netloc}/"
        assert client.get(f"/login?token={load_admin_token(self.config.data_dir)}").status_code == 303
        return client

    def token(self, feed_id: str) -> str:
        return feed_token(SECRET, feed_id, 1)

    def add(self, *events: Event, source: str = "s1", now: float | None = None) -> None:
        self.store.apply_poll(source, list(events), absence="keep", complete=True,
                              now=time.time() if now is None else now, previous_success=None)


@pytest.fixture
def env(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> Callable[..., Env]:
    def build(base_url: str = "https://cal.example.com", server_extra: str = "") -> Env:
        config, store = make_env({"icsfeed.yaml": BASE_YAML.format(base_url=base_url, server_extra=server_extra)})
        return Env(config, store)
    return build


def ev(key: str, kind: str, start: datetime | date, end: datetime | date | None = None, **kw: Any) -> Event:
    return Event(source="s1", key=key, kind=kind, title=kw.pop("title", f"{kind} {key}"), start=start, end=end,
                 account=kw.pop("account", "acme"), **kw)


def rows(*events: Event) -> list[EventRow]:
    return [EventRow(id=i, uid=f"u{i}", event=e, sequence=0, created=0, last_modified=0) for i, e in enumerate(events)]


def cells_by_day(grid: Any) -> dict[date, dict[str, int]]:
    return {d.date: {c.kind: c.count for c in d.cells} for week in grid.weeks for d in week if d.cells}


def month(config: Config, events: list[Event], year: int, mon: int, tz: str = "UTC", today: date | None = None) -> Any:
    return build_month(rows(*events), config.kinds, year, mon, ZoneInfo(tz), tz, today=today or date(year, mon, 1))


# --- the month grid --------------------------------------------------------------------------------

def test_grid_is_whole_weeks_monday_first(env: Callable[..., Env]) -> None:
    start, end = grid_days(2026, 11)
    assert (start, end) == (date(2026, 10, 26), date(2026, 12, 7))
    grid = month(env().config, [], 2026, 11)
    assert len(grid.weeks) == 6 and all(len(w) == 7 for w in grid.weeks)
    assert all(w[0].date.weekday() == 0 for w in grid.weeks)
    assert [d.in_month for d in grid.weeks[0]] == [False] * 6 + [True]
    assert (grid.prev, grid.next, grid.title) == ("2026-10", "2026-12", "November 2026")
    assert month(env().config, [], 2026, 12).next == "2027-01"
    assert month(env().config, [], 2026, 1).prev == "2025-12"


def test_events_land_on_their_day_in_the_accounts_timezone(env: Callable[..., Env]) -> None:
    late = ev("a", "alert", datetime(2026, 11, 9, 23, 30, tzinfo=UTC), datetime(2026, 11, 9, 23, 40, tzinfo=UTC))
    config = env().config
    assert cells_by_day(month(config, [late], 2026, 11, "Europe/Berlin")) == {date(2026, 11, 10): {"alert": 1}}
    assert cells_by_day(month(config, [late], 2026, 11, "UTC")) == {date(2026, 11, 9): {"alert": 1}}
    assert cells_by_day(month(config, [late], 2026, 11, "America/New_York")) == {date(2026, 11, 9): {"alert": 1}}
    grid = month(config, [late], 2026, 11, "Europe/Berlin")
    cell = grid.weeks[2][1].cells[0]
    assert cell.occurrences[0].when == "00:30–00:40"
    assert cell.aria_label == "1 alert on 10 November"


def test_long_events_spread_over_their_days_short_ones_stay_on_their_start(env: Callable[..., Env]) -> None:
    config = env().config
    weekend = ev("m", "maintenance", datetime(2026, 11, 13, 22, 0, tzinfo=UTC), datetime(2026, 11, 16, 6, 0, tzinfo=UTC))
    midnight = ev("a", "alert", datetime(2026, 11, 3, 23, 50, tzinfo=UTC), datetime(2026, 11, 4, 0, 20, tzinfo=UTC))
    cert = ev("c", "certificate", date(2026, 11, 20), date(2026, 11, 23))
    open_ended = ev("o", "alert", datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    got = cells_by_day(month(config, [weekend, midnight, cert, open_ended], 2026, 11))
    assert got == {
        date(2026, 11, 3): {"alert": 1},
        **{date(2026, 11, d): {"maintenance": 1} for d in (13, 14, 15, 16)},
        **{date(2026, 11, d): {"certificate": 1} for d in (20, 21, 22)},
        date(2026, 11, 25): {"alert": 1},
    }
    grid = month(config, [open_ended], 2026, 11)
    occ = next(c for w in grid.weeks for d in w for c in d.cells).occurrences[0]
    assert occ.when == "10:00, no end reported yet"


def test_yearly_birthdays_show_on_their_anniversary(env: Callable[..., Env]) -> None:
    config = env().config
    born = ev("h", "birthday", date(2019, 11, 27), date(2019, 11, 28), rrule="FREQ=YEARLY")
    assert cells_by_day(month(config, [born], 2026, 11)) == {date(2026, 11, 27): {"birthday": 1}}
    assert cells_by_day(month(config, [born], 2030, 11)) == {date(2030, 11, 27): {"birthday": 1}}
    assert cells_by_day(month(config, [born], 2026, 10)) == {}  # the grid of October ends on 1 November
    assert cells_by_day(month(config, [born], 2018, 11)) == {}  # not before it was born
    # a birthday in the first days of next month shows on the muted days at the end of the grid
    early = ev("h2", "birthday", date(2020, 12, 3), date(2020, 12, 4), rrule="FREQ=YEARLY")
    grid = month(config, [early], 2026, 11)
    assert cells_by_day(grid) == {date(2026, 12, 3): {"birthday": 1}}
    assert grid.kinds[0].count == 0  # counted for December, not November


def test_a_runaway_rule_is_bounded_and_a_broken_one_shows_once(env: Callable[..., Env]) -> None:
    config = env().config
    runaway = ev("r", "alert", datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC),
                 rrule="FREQ=SECONDLY")
    started = time.perf_counter()
    month(config, [runaway], 2026, 11)
    assert time.perf_counter() - started < 5
    broken = ev("b", "alert", datetime(2026, 11, 5, 9, 0, tzinfo=UTC), datetime(2026, 11, 5, 10, 0, tzinfo=UTC),
                rrule="FREQ=NONSENSE")
    assert cells_by_day(month(config, [broken], 2026, 11)) == {date(2026, 11, 5): {"alert": 1}}


def test_cancelled_left_out_unsafe_urls_dropped_long_lists_capped(env: Callable[..., Env]) -> None:
    config = env().config
    day = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    events = [ev(f"t{i}", "ticket", day + timedelta(minutes=i), url=f"https://helpdesk.example/{i}") for i in range(25)]
    events.append(ev("gone", "ticket", day, status="cancelled"))
    events.append(ev("js", "backup", day, url="javascript:alert(1)"))
    events.append(ev("rel", "alert", day, url="/relative"))
    grid = month(config, events, 2026, 11)
    cells = {c.kind: c for w in grid.weeks for d in w for c in d.cells}
    assert cells["ticket"].count == 25
    assert len(cells["ticket"].shown) == POPOVER_MAX and cells["ticket"].hidden_count == 25 - POPOVER_MAX
    assert cells["ticket"].shown[0].url == "https://helpdesk.example/0"
    assert cells["ticket"].single_url is None  # several events: the icon opens the list, not one of them
    assert cells["backup"].single_url is None and cells["backup"].occurrences[0].url is None
    assert cells["alert"].single_url is None
    assert [k.kind for k in grid.kinds] == ["alert", "backup", "ticket"]  # config order


def test_parse_month() -> None:
    today = date(2026, 11, 22)
    assert parse_month(None, today) == (2026, 11)
    assert parse_month("2027-02", today) == (2027, 2)
    for bad in ("2026-13", "2026-1", "26-11", "1969-12", "2026-11-01", "<script>"):
        with pytest.raises(BadMonth):
            parse_month(bad, today)


# --- month view over HTTP ------------------------------------------------------------------------------

def test_month_view_shows_the_accounts_events_escaped(env: Callable[..., Env]) -> None:
    e = env()
    now = datetime.now(UTC)
    e.add(ev("x", "alert", now, now + timedelta(minutes=5), title="<b>bold?</b>", url="javascript:alert(1)"),
          ev("g", "alert", now, account="globex", title="globex only"))
    page = e.client().get(f"/view/acme?token={e.token('account/acme')}", environ_base=REMOTE)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "<b>bold?" not in html
    assert "ACME &lt;Corp&gt;" in html
    assert "javascript:" not in html
    assert "globex only" not in html
    assert "Europe/Berlin" in html
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self'")
    assert page.headers["Cache-Control"] == "no-store"
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
    assert " style=" not in html


def test_team_view_uses_the_team_filters(env: Callable[..., Env]) -> None:
    e = env()
    now = datetime.now(UTC)
    e.add(ev("a", "alert", now, now + timedelta(minutes=5), title="an alert", account="globex"),
          ev("t", "ticket", now, title="a ticket"))
    html = e.client().get(f"/view/team/ops?token={e.token('team/ops')}").get_data(as_text=True)
    assert "an alert" in html and "a ticket" not in html


def test_month_view_refusals_are_the_feeds_404(env: Callable[..., Env]) -> None:
    e = env()
    client = e.client()
    feed_404 = client.get("/feeds/acme.ics?token=nope")
    assert feed_404.status_code == 404
    for url in ("/view/acme?token=nope", "/view/acme", "/view/nobody?token=x",
                f"/view/globex?token={e.token('account/acme')}", f"/view/team/ops?token={e.token('account/acme')}",
                f"/view/team/acme?token={e.token('account/acme')}"):
        got = client.get(url)
        assert (got.status_code, got.data, got.mimetype) == (404, feed_404.data, feed_404.mimetype), url


def test_month_view_bad_month_is_a_clear_400(env: Callable[..., Env]) -> None:
    e = env()
    got = e.client().get(f"/view/acme?token={e.token('account/acme')}&month=2026-13")
    assert got.status_code == 400 and b"2026-10" in got.data
    ok = e.client().get(f"/view/acme?token={e.token('account/acme')}&month=2027-02")
    assert ok.status_code == 200 and "February 2027" in ok.get_data(as_text=True)


def test_tokens_are_never_logged(env: Callable[..., Env], caplog: pytest.LogCaptureFixture) -> None:
    e = env()
    caplog.set_level("DEBUG")
    client = e.admin()
    token = e.token("account/acme")
    client.get(f"/view/acme?token={token}")
    assert token in client.get("/").get_data(as_text=True)
    client.get("/metrics")
    assert token not in caplog.text
    assert token not in client.get("/metrics").get_data(as_text=True)


# --- admin access -------------------------------------------------------------------------------------

ADMIN_PATHS = ("/", "/status", "/metrics")


def test_without_credentials_admin_pages_need_the_admin_token(env: Callable[..., Env]) -> None:
    e = env()
    client = e.client()
    for path in ADMIN_PATHS:
        # a proxy on the same machine makes every client look local: local is no credential
        for environ in (LOCAL, {"REMOTE_ADDR": "::1"}, REMOTE):
            refused = client.get(path, environ_base=environ)
            assert refused.status_code == 401, path
            assert b"Authentication required: open the login link" in refused.data
        assert client.get(path, environ_base=LOCAL, headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 401
        assert e.admin().get(path).status_code == 200, path
    page = e.admin().get("/").get_data(as_text=True)
    assert 'action="/logout"' in page


def _basic(user: str, password: str) -> dict[str, str]:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_credentials_from_the_environment(env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICSFEED_ADMIN_USER", "ops")
    monkeypatch.setenv("ICSFEED_ADMIN_PASSWORD", "s3cret pässword")
    client = env().client()
    for path in ADMIN_PATHS:
        for environ in (LOCAL, REMOTE):
            refused = client.get(path, environ_base=environ)
            assert refused.status_code == 401, path
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="icsfeed admin", charset="UTF-8"'
            assert client.get(path, environ_base=environ, headers=_basic("ops", "wrong")).status_code == 401
            assert client.get(path, environ_base=environ, headers=_basic("admin", "s3cret pässword")).status_code == 401
            assert client.get(path, environ_base=environ, headers=_basic("ops", "s3cret pässword")).status_code == 200
    page = client.get("/", environ_base=REMOTE, headers=_basic("ops", "s3cret pässword")).get_data(as_text=True)
    assert 'action="/logout"' not in page  # basic auth: the browser keeps the login
    assert "s3cret" not in page


def test_credentials_from_the_config(env: Callable[..., Env]) -> None:
    client = env(server_extra="  admin_user: cfg\n  admin_password: from-yaml").client()
    assert client.get("/status", environ_base=REMOTE).status_code == 401
    assert client.get("/status", environ_base=LOCAL).status_code == 401  # credentials set: localhost needs them too
    assert client.get("/status", environ_base=REMOTE, headers=_basic("cfg", "from-yaml")).status_code == 200


def test_half_configured_credentials_refuse_everyone(env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICSFEED_ADMIN_USER", "ops")
    client = env().client()
    refused = client.get("/status", environ_base=LOCAL)
    assert refused.status_code == 403 and b"half-configured" in refused.data


def test_month_view_is_not_an_admin_page(env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICSFEED_ADMIN_USER", "ops")
    monkeypatch.setenv("ICSFEED_ADMIN_PASSWORD", "pw")
    e = env()
    assert e.client().get(f"/view/acme?token={e.token('account/acme')}", environ_base=REMOTE).status_code == 200


# --- subscribe ------------------------------------------------------------------------------------------

def test_subscribe_links_encode_the_subscription_url(env: Callable[..., Env]) -> None:
    e = env()
    html = e.admin().get("/").get_data(as_text=True)
    import html as htmllib
    for spec in all_feeds(e.config):
        url = subscription_url(e.config, SECRET, spec)
        assert url.startswith("https://cal.example.com/")
        webcal = "webcal://" + url.removeprefix("https://")
        hrefs = [htmllib.unescape(h) for h in re.findall(r'href="([^"]+)"', html)]
        google = [h for h in hrefs if h.startswith("https://calendar.google.com/") and parse_qs(urlsplit(h).query)["cid"] == [webcal]]
        assert len(google) == 1, spec.feed_id
        assert "cid=webcal%3A%2F%2Fcal.example.com%2F" in google[0]
        for host in ("outlook.live.com", "outlook.office.com"):
            match = [h for h in hrefs if urlsplit(h).netloc == host and parse_qs(urlsplit(h).query).get("url") == [url]]
            assert len(match) == 1, (host, spec.feed_id)
            assert parse_qs(urlsplit(match[0]).query)["name"] == [spec.name]
        assert webcal in hrefs
    assert "Too long for Google Calendar" not in html
    assert "Heads up" not in html  # a public https base URL needs no warning
    assert "12–24 hours" in html


def test_subscribe_warns_about_long_and_unreachable_urls(env: Callable[..., Env]) -> None:
    long_base = "https://calendars.example.com/" + "x" * 220
    html = env(base_url=long_base).admin().get("/").get_data(as_text=True)
    assert "Too long for Google Calendar" in html
    local = env(base_url="http://127.0.0.1:8080").admin().get("/").get_data(as_text=True)
    assert "cannot reach it" in local


# --- status ----------------------------------------------------------------------------------------------

def test_status_shows_failing_and_stale_sources_escaped(env: Callable[..., Env]) -> None:
    e = env()
    long_ago = time.time() - 4 * 600  # four intervals of s1
    e.add(ev("a", "alert", datetime.now(UTC)), now=long_ago)
    e.store.record_failure("s1", "HTTP 500 from <script>alert(1)</script> (token [redacted])", time.time())
    html = e.admin().get("/status").get_data(as_text=True)
    row = re.search(r'<tr class="source (\w+)" data-source="s1">(.*?)</tr>', html, re.S)
    assert row is not None
    assert row.group(1) == "bad"
    assert "FAILING (1 in a row)" in row.group(2) and "STALE" in row.group(2)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in row.group(2) and "<script>alert" not in html
    assert "1 source needs attention" in html


def test_status_healthy_source_and_feeds(env: Callable[..., Env]) -> None:
    from icsfeed.render import render_feeds
    e = env()
    e.add(ev("a", "alert", datetime.now(UTC)))
    render_feeds(e.config, e.store)
    html = e.admin().get("/status").get_data(as_text=True)
    assert re.search(r'<tr class="source ok" data-source="s1">', html)
    assert "All sources healthy" in html
    assert re.search(r'data-feed="account/acme">\s*<th scope="row">account/acme</th>\s*<td>ACME &lt;Corp&gt;</td>\s*<td class="num">1</td>', html)


def test_status_says_when_a_config_change_was_refused(env: Callable[..., Env]) -> None:
    e = env()
    (Path(e.config.config_dir) / "broken.yaml").write_text("accounts: [oops\n", encoding="utf-8")
    assert e.live.reload_if_changed() is False
    assert e.live.last_error
    html = e.admin().get("/status").get_data(as_text=True)
    assert "config change refused; the last good config keeps running" in html
    assert "broken.yaml" in html


# --- metrics -----------------------------------------------------------------------------------------------

def test_metrics_read_the_store_and_count_requests(env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    from icsfeed.render import render_feeds
    e = env()
    e.add(ev("a", "alert", datetime.now(UTC)), ev("b", "ticket", datetime.now(UTC)))
    e.store.record_failure("s1", "boom", time.time())
    render_feeds(e.config, e.store)
    client = e.client()
    assert client.get("/metrics", environ_base=REMOTE).status_code == 401
    monkeypatch.setenv("ICSFEED_METRICS_PUBLIC", "1")
    client.get("/view/acme?token=wrong")
    text = client.get("/metrics", environ_base=REMOTE).get_data(as_text=True)
    assert 'icsfeed_source_polls_total{source="s1"} 2.0' in text
    assert 'icsfeed_source_failures_total{source="s1"} 1.0' in text
    assert 'icsfeed_source_consecutive_failures{source="s1"} 1.0' in text
    assert 'icsfeed_source_events{source="s1"} 2.0' in text
    assert re.search(r'icsfeed_source_last_success_timestamp_seconds\{source="s1"\} \d', text)
    assert 'icsfeed_feed_events{feed="account/acme"} 2.0' in text
    assert re.search(r'icsfeed_feed_render_seconds\{feed="team/ops"\} \d', text)
    assert 'icsfeed_http_requests_total{endpoint="pages.account_view",status="404"} 1.0' in text
    assert 'icsfeed_http_requests_total{endpoint="pages.metrics_endpoint",status="401"} 1.0' in text
    assert "icsfeed_store_up 1.0" in text and "icsfeed_config_refused 0.0" in text
    # a second app (another process) has its own request counter, and the same store figures
    other = Env(e.config, e.store).client().get("/metrics", environ_base=REMOTE).get_data(as_text=True)
    assert 'endpoint="pages.account_view"' not in other
    assert 'icsfeed_source_polls_total{source="s1"} 2.0' in other


def test_kind_colours_come_from_config_and_stay_css(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    config, store = make_env({"icsfeed.yaml": """\
        kinds:
          alert: {color_hex: "red;} body {display:none"}
          deploy: {icon: "🚀", color: teal, color_hex: "#00aaaa"}
        """})
    css = create_app(LiveConfig(config), store, SECRET).test_client().get("/kinds.css").get_data(as_text=True)
    assert '[data-kind="alert"] { --kind-color: #ff0000; }' in css
    assert '[data-kind="deploy"] { --kind-color: #00aaaa; }' in css
    assert "display:none" not in css


def test_find_feed_and_view_agree_on_ids(env: Callable[..., Env]) -> None:
    e = env()
    spec = find_feed(e.config, "team", "ops")
    assert spec is not None
    html = e.admin().get("/").get_data(as_text=True)
    assert f'/view/team/ops?token={e.token("team/ops")}' in html
    assert f'/view/acme?token={e.token("account/acme")}' in html


def test_admin_pages_over_a_real_socket_need_the_token(serve: Callable[..., Any], tmp_path: Path) -> None:
    """From 127.0.0.1 (as through a proxy on this machine) with or without proxy headers: 401."""
    import os

    import requests
    from conftest import write_config

    # no sources: nothing polls, so the server starts and stops at once
    write_config(tmp_path / "config", {"icsfeed.yaml": "accounts: [{id: acme, name: ACME}]\n"})
    assert not os.environ.get("ICSFEED_ADMIN_USER") and not os.environ.get("ICSFEED_ADMIN_PASSWORD")
    served = serve(tmp_path / "config", tmp_path / "data")
    for headers in ({}, {"X-Real-IP": "203.0.113.9"}, {"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        assert requests.get(served.base + "/status", headers=headers, timeout=10).status_code == 401, headers
    token = load_admin_token(tmp_path / "data")
    status = requests.get(served.base + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert status.status_code == 200
    assert status.headers["Content-Security-Policy"].startswith("default-src 'self'")
