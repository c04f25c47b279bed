"""Who subscribes (issue 12 item 8): fetches per feed and calendar client, from the User-Agent.

Real User-Agents (the ones icsfeed.web.subscribers quotes) are told apart; counts are tallied
in memory and added to the store in batches, so two web processes over one database add up;
a batch the store refuses (its table renamed away: a real SQL error) fails no request and is
written with the next one; and a real ``icsfeed serve`` fetched by several clients shows them
on /status, on the subscribe page and in /metrics, with no token and no client address
anywhere in the database or the metrics.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import DEMO_CONFIG, storage_url
from servers import SECRET, IcsfeedServer, feed_token, wait_until
from sqlalchemy import create_engine, text

from icsfeed.live import LiveConfig
from icsfeed.store import Store
from icsfeed.web import create_app
from icsfeed.web.admin import load_admin_token
from icsfeed.web.subscribers import SubscriberTally, client_family, summary_sentence, tally_of

#: User-Agents as the clients send them (see icsfeed/web/subscribers.py for where each is quoted)
REAL_AGENTS = {
    "Google-Calendar-Importer": "google",
    "Mozilla/5.0 (compatible; Google-Calendar-Importer)": "google",
    "Microsoft Exchange/15.20 (Windows NT 10.0; Win64; x64)": "microsoft",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.16327; Pro)": "microsoft",
    "Outlook-iOS/2.0": "microsoft",
    "Microsoft-MacOutlook/16.81.0 (Mac OS/13.6; Build/16.81.0)": "microsoft",
    "iOS/16.3.1 (20D67) dataaccessd/1.0": "apple",
    "iOS/9.1 (13B143) dataaccessd/1.0": "apple",
    "macOS/13.0 (22A380) dataaccessd/1.0": "apple",
    "macOS/11.0 (20A5343i) CalendarAgent/950": "apple",
    "Mac+OS+X/10.11.6 (15G1217) CalendarAgent/361.2": "apple",
    "Mac_OS_X/10.9.5 (13F34) CalendarAgent/176.2": "apple",
    "Mozilla/5.0 (X11; Linux x86_64; rv:78.0) Gecko/20100101 Thunderbird/78.13.0": "thunderbird",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.10; rv:31.0) Gecko/20100101 Thunderbird/31.4.0 Lightning/3.3.2": "thunderbird",
    "Nextcloud Webcal Service": "nextcloud",
    "Nextcloud Webcal Crawler": "nextcloud",
    "HomeAssistant/2025.5.0.dev0 httpx/0.28.1 Python/3.13": "home_assistant",
    "curl/8.5.0": "other",
    "Mozilla/5.0 (X11; Linux x86_64; rv:142.0) Gecko/20100101 Firefox/142.0": "other",
    "": "other",
}


@pytest.mark.parametrize(("agent", "family"), REAL_AGENTS.items(), ids=list(REAL_AGENTS))
def test_client_family_of_real_user_agents(agent: str, family: str) -> None:
    assert client_family(agent) == family
    assert client_family(None) == "other"


def test_summary_sentence_says_who_and_who_never() -> None:
    from icsfeed.web.subscribers import ClientFetches

    now = 1_000_000.0
    assert summary_sentence([ClientFetches("google", 3, 9, now - 3 * 3600)], now) == (
        "Google Calendar, last fetched 3.0 h ago; never opened in Outlook or Apple Calendar")
    assert summary_sentence([], now) == (
        "No calendar has fetched this feed yet; never opened in Google Calendar, Outlook or Apple Calendar")


# --- batches added up in the store -----------------------------------------------------------------

def _counts(store: Store) -> dict[tuple[str, str], tuple[int, int, float]]:
    return {(c.feed_id, c.client): (c.fetches_200, c.fetches_304, c.last_fetch) for c in store.subscriber_counts()}


def test_two_processes_add_up(make_env: object) -> None:
    """Two tallies over two Stores on one database (two web processes), flushing at once."""
    config, store = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    other = Store(config.storage_url, uid_host=config.uid_host)
    try:
        a, b = SubscriberTally(store, flush_seconds=3600), SubscriberTally(other, flush_seconds=3600)
        for i in range(50):
            a.record("account/acme", "Google-Calendar-Importer", 200 if i % 5 == 0 else 304, now=1000.0 + i)
            b.record("account/acme", "Google-Calendar-Importer", 304, now=2000.0)
            b.record("account/acme", "iOS/16.3.1 (20D67) dataaccessd/1.0", 200, now=1500.0)
            a.record("account/acme", "curl/8", 404)  # a refused fetch is nobody's subscription
        threads = [threading.Thread(target=t.flush) for t in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert a.pending() == [] and b.pending() == []
        a.record("account/acme", "Google-Calendar-Importer", 200, now=1200.0)
        assert a.flush()
        assert _counts(store) == {("account/acme", "google"): (11, 90, 2000.0), ("account/acme", "apple"): (50, 0, 1500.0)}
    finally:
        other.close()


def test_the_background_thread_writes_every_few_seconds(make_env: object) -> None:
    _, store = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    tally = SubscriberTally(store, flush_seconds=0.2)
    tally.record("account/acme", "Nextcloud Webcal Service", 200)
    wait_until(lambda: _counts(store), 10, "the tally written by its thread")
    assert _counts(store)[("account/acme", "nextcloud")][:2] == (1, 0)
    tally.close()


# --- a failed write fails no request ------------------------------------------------------------------

def _app_env(make_env: object) -> tuple[Store, SubscriberTally, Callable[..., Any]]:
    """A real app over a real store (the run's backend) and a feed GET as a client sends it."""
    config, store = make_env({"a.yaml": """
        accounts: [{id: acme, name: ACME}]
        sources:
          - {id: f, type: file, path: e.json, mapping: {kind: ticket, key: id, title: t, start: s, account: "=acme"}}
    """})  # type: ignore[operator]
    (config.config_dir / "e.json").write_text('[{"id": 1, "t": "x", "s": "2026-12-01T10:00:00Z"}]')
    from icsfeed.poller import poll

    assert poll(config, store)[0].ok
    app = create_app(LiveConfig(config, check_every=3600), store, SECRET.encode())
    client = app.test_client()
    url = f"/feeds/acme.ics?token={feed_token('account/acme')}"

    def get(agent: str, **headers: str) -> Any:
        return client.get(url, headers={"User-Agent": agent, **headers}, environ_base={"REMOTE_ADDR": "127.0.0.1"})

    tally = tally_of(app)
    assert tally is not None
    return store, tally, get


def test_a_failed_flush_fails_no_request_and_the_counts_wait(make_env: object, caplog: pytest.LogCaptureFixture) -> None:
    store, tally, get = _app_env(make_env)
    caplog.set_level(logging.INFO, logger="icsfeed.web.subscribers")
    first = get("Google-Calendar-Importer")
    assert first.status_code == 200
    assert tally.flush()
    with store.engine.begin() as conn:  # the store now refuses the write: its table is gone
        conn.execute(text("ALTER TABLE subscribers RENAME TO subscribers_away"))
    try:
        etag = first.headers["ETag"]
        again = get("Google-Calendar-Importer", **{"If-None-Match": etag})
        apple = get("iOS/16.3.1 (20D67) dataaccessd/1.0")
        assert (again.status_code, apple.status_code) == (304, 200)
        assert tally.flush() is False and tally.failed_flushes == 1
        assert get("Google-Calendar-Importer").status_code == 200  # still answering after the failure
        assert tally.flush() is False
        kept = {(c.feed_id, c.client): (c.fetches_200, c.fetches_304) for c in tally.pending()}
        assert kept == {("account/acme", "google"): (1, 1), ("account/acme", "apple"): (1, 0)}
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE subscribers_away RENAME TO subscribers"))
    assert tally.flush() is True and tally.pending() == []
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert len([m for level, m in said if level == "WARNING" and "cannot write subscriber counts (2 rows" in m]) == 1, said
    assert ("INFO", "subscriber counts written again after 2 failed attempt(s)") in said
    assert {k: v[:2] for k, v in _counts(store).items()} == {("account/acme", "google"): (2, 1),
                                                              ("account/acme", "apple"): (1, 0)}


# --- a real icsfeed serve, several clients ----------------------------------------------------------

AGENTS = [  # (feed, User-Agent, conditional?)
    ("account/acme", "Google-Calendar-Importer", False),
    ("account/acme", "Google-Calendar-Importer", True),
    ("account/acme", "Google-Calendar-Importer", True),
    ("account/acme", "iOS/16.3.1 (20D67) dataaccessd/1.0", False),
    ("account/acme", "macOS/13.0 (22A380) dataaccessd/1.0", True),
    ("account/acme", "Microsoft Exchange/15.20 (Windows NT 10.0; Win64; x64)", False),
    ("account/acme", "HomeAssistant/2025.5.0.dev0 httpx/0.28.1 Python/3.13", False),
    ("team/ops", "Mozilla/5.0 (X11; Linux x86_64; rv:78.0) Gecko/20100101 Thunderbird/78.13.0", False),
    ("team/ops", "Nextcloud Webcal Service", True),
    ("team/ops", "curl/8.5.0", False),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[IcsfeedServer]:
    config_dir = tmp_path / "config"
    shutil.copytree(DEMO_CONFIG, config_dir)
    server = IcsfeedServer(config_dir, tmp_path / "data", env={"ICSFEED_SUBSCRIBERS_FLUSH_SECONDS": "3600",
                                                                     # UIDs end in the base URL's host: not 127.0.0.1
                                                                     "ICSFEED_BASE_URL": "https://feeds.example.com"})
    try:
        yield server.start(timeout=60)
    finally:
        server.stop()


def _fetch_all(server: IcsfeedServer) -> None:
    etags: dict[str, str] = {}
    for feed_id, agent, conditional in AGENTS:
        url = server.feed_url(feed_id)
        if feed_id not in etags:
            wait_until(lambda u=url: requests.get(u, timeout=10).status_code == 200, 60, f"{feed_id} rendered")
            etags[feed_id] = requests.get(url, timeout=10, headers={"User-Agent": "warm-up"}).headers["ETag"]
        headers = {"User-Agent": agent, **({"If-None-Match": etags[feed_id]} if conditional else {})}
        got = requests.get(url, headers=headers, timeout=10)
        assert got.status_code == (304 if conditional else 200), (agent, got.status_code)


def _admin(server: IcsfeedServer) -> requests.Session:
    session = requests.Session()
    token = wait_until(lambda: load_admin_token(server.data_dir), 30, "the admin token")
    assert session.get(f"{server.base}/login?token={token}", timeout=10, allow_redirects=False).status_code == 303
    return session


def _status_table(html: str) -> dict[tuple[str, str], tuple[int, int, str]]:
    table = html[html.index('id="subscribers-title"'):]
    rows = re.findall(r'<tr data-subscriber-feed="([^"]+)" data-client="([^"]+)">\s*<th scope="row">[^<]*</th>\s*<td>[^<]*</td>\s*'
                      r'<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>\s*<td class="nowrap"><span title="[^"]*">([^<]*)</span>',
                      table)
    return {(f, c): (int(ok), int(nm), when) for f, c, ok, nm, when in rows}


EXPECTED = {
    ("account/acme", "google"): (1, 2), ("account/acme", "apple"): (1, 1), ("account/acme", "microsoft"): (1, 0),
    ("account/acme", "home_assistant"): (1, 0), ("team/ops", "thunderbird"): (1, 0), ("team/ops", "nextcloud"): (0, 1),
}


@pytest.mark.slow
def test_served_instance_shows_who_subscribes(served: IcsfeedServer) -> None:
    _fetch_all(served)
    admin = _admin(served)
    status = admin.get(f"{served.base}/status", timeout=10)
    assert status.status_code == 200
    table = _status_table(status.text)
    got = {k: v[:2] for k, v in table.items()}
    # the warm-up fetches (one per feed, and the waits before) count as "other"
    assert {k: v for k, v in got.items() if k[1] != "other"} == EXPECTED, got
    assert got[("team/ops", "other")][0] >= 2  # curl and the warm-up
    assert all(v[2].endswith("ago") for v in table.values())
    page = admin.get(f"{served.base}/", timeout=10).text
    acme = re.search(r'data-subscribers="account/acme">([^<]*)<', page)
    ops = re.search(r'data-subscribers="team/ops">([^<]*)<', page)
    assert acme and ops
    assert "Google Calendar, last fetched" in acme.group(1) and "Outlook, last fetched" in acme.group(1)
    assert "never opened in" not in acme.group(1)
    assert ops.group(1).endswith("never opened in Google Calendar, Outlook or Apple Calendar")
    assert "Thunderbird, last fetched" in ops.group(1) and "Nextcloud, last fetched" in ops.group(1)
    metrics = admin.get(f"{served.base}/metrics", timeout=10).text
    assert 'icsfeed_feed_fetches_total{client="google",feed="account/acme",status="304"} 2.0' in metrics
    assert 'icsfeed_feed_fetches_total{client="nextcloud",feed="team/ops",status="304"} 1.0' in metrics
    assert 'icsfeed_feed_last_fetch_timestamp_seconds{client="apple",feed="account/acme"}' in metrics

    # the flush interval is an hour: nothing is written yet; SIGTERM writes it at exit
    served.stop()
    url = storage_url(served.data_dir)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = {(r.feed_id, r.client): (r.fetches_200, r.fetches_304)
                      for r in conn.execute(text("SELECT feed_id, client, fetches_200, fetches_304 FROM subscribers"))}
            every_row = [tuple(r) for r in conn.execute(text("SELECT * FROM subscribers"))]
    finally:
        engine.dispose()
    assert {k: v for k, v in stored.items() if k[1] != "other"} == EXPECTED
    # no token and no client address: not in the metrics, not in what is stored
    tokens = [feed_token("account/acme"), feed_token("team/ops")]
    for token in tokens:
        assert token not in metrics and token not in repr(every_row)
    assert "127.0.0.1" not in metrics and "127.0.0.1" not in repr(every_row)
    db_file = served.data_dir / "icsfeed.db"
    if url.startswith("sqlite:///"):
        raw = db_file.read_bytes() + b"".join(p.read_bytes() for p in served.data_dir.glob("icsfeed.db-*"))
        for token in tokens:
            assert token.encode() not in raw
        assert b"127.0.0.1" not in raw
        assert b"Google-Calendar-Importer" not in raw  # the User-Agent itself is not kept either

    # a restarted process reads the counts back from the store
    served.start(timeout=60)
    again = _status_table(_admin(served).get(f"{served.base}/status", timeout=10).text)
    assert {k: v[:2] for k, v in again.items() if k[1] != "other"} == EXPECTED


def test_the_tally_stays_small_while_writes_hang(make_env: object) -> None:
    """However many fetches come in between two writes, what is kept is one entry per
    (feed, client): a request folds the appended fetches once there are FOLD_AT of them."""
    from icsfeed.web import subscribers

    _, store = make_env({"a.yaml": "accounts: [{id: acme, name: ACME}]\n"})  # type: ignore[operator]
    tally = SubscriberTally(store, flush_seconds=3600)
    for i in range(3 * subscribers.FOLD_AT):
        tally.record("account/acme", "Google-Calendar-Importer" if i % 2 else "curl/8", 304, now=float(i))
    assert len(tally._fetches) <= subscribers.FOLD_AT
    assert {(c.client, c.fetches_304) for c in tally.pending()} == {("google", 15_000), ("other", 15_000)}
