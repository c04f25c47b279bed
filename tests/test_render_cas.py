"""Renders are compare-and-set (issue 10, item 7): two processes rendering the same feed, in a
scripted interleaving on two Store objects over one database (the backend of the run). An
older render never overwrites a newer one, and never leaves the feed marked clean with stale
bytes. A web process alone (``serve --no-scheduler``) never renders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from conftest import Served
from parsers import parse_icalendar

from icsfeed.config import Config
from icsfeed.poller import poll_source
from icsfeed.render import RenderedFeed, build_feed, render_feeds, render_key
from icsfeed.routing import find_feed
from icsfeed.store import Store

NOW = datetime.now(timezone.utc).replace(microsecond=0)
FEED = "account/acme"

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: "=acme"}
"""


@pytest.fixture
def two(make_env: object) -> Iterator[tuple[Config, Store, Store]]:
    """The config and two stores on one database: process A and process B."""
    config, a = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    b = Store(config.storage_url, uid_host=config.uid_host)
    post(config, a, ["Slow site"])
    render_feeds(config, a)
    assert not dirty(a)
    yield config, a, b
    b.close()


def post(config: Config, store: Store, subjects: list[str]) -> None:
    """A poll that changes the feed (marks it dirty, in the poll's transaction)."""
    records = [{"id": i, "subject": s, "created": (NOW - timedelta(hours=i)).isoformat()} for i, s in enumerate(subjects)]
    (config.config_dir / "tickets.json").write_text(json.dumps(records))
    report = poll_source(config, store, "tickets")
    assert report.ok and (report.new or report.updated), report.line()


def start_render(config: Config, store: Store) -> tuple[int, RenderedFeed]:
    """What render_feeds does before it saves: read the generation, then build the feed."""
    generation = store.feed_render_generations()[FEED][3]
    spec = find_feed(config, "account", "acme")
    assert spec is not None
    return generation, build_feed(config, store, spec, NOW, key=render_key(config))


def save(config: Config, store: Store, generation: int, feed: RenderedFeed) -> bool:
    from icsfeed.render import feed_render_key, feed_secret, view_url

    spec = find_feed(config, "account", "acme")
    assert spec is not None
    secret = feed_secret(config, store)
    key = feed_render_key(config, spec, view=view_url(config, secret, spec) if secret is not None else None)
    return store.save_feed(FEED, feed.body, b"", feed.etag, event_count=feed.event_count, now=NOW.timestamp(),
                           render_seconds=0.0, render_key=key, window_day=NOW.date().isoformat(),
                           generation=generation)


def summaries(store: Store) -> set[str]:
    stored = store.get_feed(FEED)
    assert stored is not None
    return {str(e["SUMMARY"]) for e in parse_icalendar(stored.body).walk("VEVENT")}


def dirty(store: Store) -> bool:
    return store.feed_render_generations()[FEED][0]


def test_an_older_render_saved_late_never_overwrites_a_newer_one(two: tuple[Config, Store, Store]) -> None:
    config, a, b = two
    post(config, a, ["Slow site", "Printer on fire"])
    gen_a, feed_a = start_render(config, a)              # A reads generation g and renders
    post(config, b, ["Slow site", "Printer on fire", "Disk full"])  # a change: g + 1
    gen_b, feed_b = start_render(config, b)              # B reads g + 1 and renders
    assert gen_b == gen_a + 1 and feed_a.etag != feed_b.etag
    assert save(config, b, gen_b, feed_b) is True        # B saves first
    assert save(config, a, gen_a, feed_a) is False       # A saves late: refused
    assert a.get_feed(FEED).etag == feed_b.etag, "the newer render's bytes stay"
    assert summaries(a) == {"🎫 Slow site", "🎫 Printer on fire", "🎫 Disk full"}
    assert not dirty(a), "B rendered the newest generation: clean"
    assert render_feeds(config, a) == [], "nothing left to render"


def test_an_older_render_saved_late_leaves_a_newer_change_dirty(two: tuple[Config, Store, Store]) -> None:
    config, a, b = two
    gen_a, feed_a = start_render(config, a)              # A reads g
    post(config, b, ["Slow site", "Printer on fire"])    # g + 1
    gen_b, feed_b = start_render(config, b)              # B reads g + 1
    post(config, a, ["Slow site", "Printer on fire", "Disk full"])  # g + 2, while B renders
    assert save(config, b, gen_b, feed_b) is True
    assert dirty(b), "B's bytes miss the change of g + 2: still dirty"
    assert save(config, a, gen_a, feed_a) is False       # A (g) saves last: refused, feed still dirty
    assert a.get_feed(FEED).etag == feed_b.etag and dirty(a)
    assert render_feeds(config, b) == [FEED], "the dirty feed is rendered by the next render job"
    assert summaries(a) == {"🎫 Slow site", "🎫 Printer on fire", "🎫 Disk full"} and not dirty(a)


def test_a_render_saved_late_but_newest_still_lands(two: tuple[Config, Store, Store]) -> None:
    config, a, b = two
    gen_b, feed_b = start_render(config, b)              # B reads g
    post(config, a, ["Slow site", "Printer on fire"])    # g + 1
    gen_a, feed_a = start_render(config, a)              # A reads g + 1
    assert save(config, b, gen_b, feed_b) is False       # B (older) saves first: the bytes it had, still dirty
    assert a.get_feed(FEED).etag == feed_b.etag and dirty(a)
    assert save(config, a, gen_a, feed_a) is True        # A (newer) saves after it: written, clean
    assert a.get_feed(FEED).etag == feed_a.etag and not dirty(a)


def test_serve_without_scheduler_renders_nothing(make_env: object, tmp_path: object) -> None:
    config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    post(config, store, ["Slow site"])                   # polled, the feed marked dirty, not rendered
    assert store.get_feed(FEED) is None and dirty(store)
    with Served(config.config_dir, config.data_dir, scheduler=False) as served:  # up: /healthz answered
        assert served.running
    assert store.get_feed(FEED) is None and dirty(store), "a web process alone never renders or writes feeds"
