"""A re-render starts from the feed's previous body (issue 11: render cost linear in what changed).

``render_feeds`` copies each VEVENT of the stored body whose event row is in the same version
(sequence, last modified) and reads or renders only the others. Whatever happens between two
renders -- titles changed, events moved in time or to another account, new events, events
closed or cancelled by the absence policy, rows gone, the window moving on, budget rollups,
kinds and severity filters, insight flags linking each feed's own month view -- the spliced
body must be the feed a render from the events alone makes, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from icsfeed.config import Config
from icsfeed.model import Event
from icsfeed.render import build_feed, feed_secret, fragment_renderer, render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store
from icsfeed.store.segments import body_etag

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)

CONFIG = """
insights: {enabled: false}
server: {base_url: "https://cal.example.com"}
feeds: {timezone: UTC, window_back_days: 10, window_ahead_days: 5}
accounts:
  - {id: acme, name: "ACME, Inc.", keys: [acme]}
  - {id: beta, name: Beta, keys: [beta], budget: {max_events: 12, keep_individual: [insight]}}
teams:
  - {id: ops, name: Ops, accounts: "*", kinds: [alert, insight], min_severity: warning}
  - {id: all, name: All, accounts: "*", budget: {max_events: 40}}
"""

KINDS = ("alert", "backup", "ticket", "maintenance", "insight")


def make_event(i: int, rnd: random.Random, now: datetime, *, version: int = 0) -> Event:
    busy = rnd.random() < 0.4  # a busy day of alerts: groups the budget can roll up
    kind = "alert" if busy else KINDS[i % len(KINDS)]
    start = now - timedelta(minutes=rnd.randrange(0, 360)) if busy else \
        now + timedelta(minutes=rnd.randrange(-12 * 24 * 60, 6 * 24 * 60))
    return Event(
        source="src", key=f"k{i}", kind=kind, title=f"{kind} {i}, v{version}; on host-{i % 7} — ünï",
        start=start, end=None if i % 9 == 0 else start + timedelta(minutes=rnd.randrange(1, 300)),
        detail=f"detail {i}\nline two, v{version}", url=f"https://origin.example/{kind}/{i}",
        account=rnd.choice(["acme", "beta", "acme", None]),
        severity="critical" if busy else rnd.choice(["critical", "warning", "info", None]),
        attrs={"view_link": True} if kind == "insight" else {},
        seen=start + timedelta(minutes=30) if i % 9 == 0 and rnd.random() < 0.5 else None,
    )


def ticket(i: int, rnd: random.Random) -> Event:
    """An ACME ticket of the last days (in every window)."""
    start = NOW - timedelta(hours=i)
    return replace(make_event(i, rnd, NOW), account="acme", kind="ticket", attrs={}, start=start,
                   end=start + timedelta(minutes=30), seen=None)


def from_scratch(config: Config, store: Store, now: datetime) -> dict[str, bytes]:
    """Every feed rendered from its events alone: no stored fragment, no previous body."""

    class NoFragments:
        def __init__(self, inner: Store) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def query_feed_index(self, query: Any, keys: Sequence[str] | None = None) -> list[Any]:
            return self._inner.query_feed_index(query, ("no such key",))

    secret = feed_secret(config, store)
    return {spec.feed_id: build_feed(config, NoFragments(store), spec, now, secret=secret,  # type: ignore[arg-type]
                                     save_fragments=False).body
            for spec in all_feeds(config)}


def stored_bodies(config: Config, store: Store) -> dict[str, bytes]:
    out = {}
    for spec in all_feeds(config):
        stored = store.get_feed(spec.feed_id)
        assert stored is not None, spec.feed_id
        assert stored.etag == body_etag(stored.body)  # a function of the bytes alone
        out[spec.feed_id] = stored.body
    return out


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[list[int]]:
    """Record the ids each call of Store.<name> asks for."""
    calls: list[list[int]] = []
    original = getattr(Store, name)

    def wrapper(self: Store, ids: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        calls.append(list(ids))
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(Store, name, wrapper)
    return calls


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spliced_feeds_equal_a_render_from_scratch_after_random_changes(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(seed)
    now = NOW
    events = {i: make_event(i, rnd, now) for i in range(120)}
    next_key = 1000
    fragment = fragment_renderer(config)

    def poll(at: datetime, absence: str = "keep", with_fragments: bool = True) -> None:
        store.apply_poll("src", list(events.values()), absence=absence, complete=True, now=at.timestamp(),
                         previous_success=(at - timedelta(minutes=5)).timestamp(),
                         affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                         fragment=fragment if with_fragments else None)

    poll(now)
    render_feeds(config, store, now=now)
    assert stored_bodies(config, store) == from_scratch(config, store, now)
    read = counting(monkeypatch, "changed_parts_by_id")
    spliced = 0
    rolled = over = False
    for round_no in range(1, 9):
        for i in rnd.sample(sorted(events), 6):  # titles and details change: SEQUENCE moves on
            events[i] = replace(events[i], title=f"{events[i].title} (r{round_no})", detail=f"changed in {round_no}")
        for i in rnd.sample(sorted(events), 3):  # moved in time: another place in the feed, or out of the window
            events[i] = replace(make_event(i, rnd, now, version=round_no), account=events[i].account)
        for i in rnd.sample(sorted(events), 2):  # to another account: out of one feed, into another
            events[i] = replace(events[i], account=rnd.choice(["acme", "beta", None]), title=f"{events[i].title} moved")
        for _ in range(rnd.randrange(0, 4)):  # new events
            events[next_key] = make_event(next_key, rnd, now, version=round_no)
            next_key += 1
        for i in rnd.sample(sorted(events), 2):  # no longer reported: closed or cancelled (absence policy)
            del events[i]
        if round_no % 3 == 0:  # a row gone altogether (a purge): the body must lose its VEVENT
            with store.engine.begin() as conn:
                conn.execute(text("DELETE FROM events WHERE id = (SELECT MIN(id) FROM events)"))
        if round_no % 2 == 0:  # the window moves on: events fall out behind, come in ahead
            now += timedelta(hours=rnd.choice([5, 26]))
        poll(now, absence=rnd.choice(["close", "cancel"]), with_fragments=round_no % 4 != 1)
        store.mark_dirty([s.feed_id for s in all_feeds(config)])
        before = len(read)
        rendered = render_feeds(config, store, now=now)
        assert sorted(rendered) == sorted(s.feed_id for s in all_feeds(config))
        spliced += len(read) - before
        assert stored_bodies(config, store) == from_scratch(config, store, now), f"round {round_no}"
        reports = store.feed_reports()
        rolled = rolled or bool(reports["team/all"]["rollups"])
        over = over or reports["account/beta"]["over"]
    assert spliced, "the re-renders started from the previous bodies"
    assert rolled and over, "the budget was in play"


def test_one_changed_event_reads_one_fragment_and_copies_the_rest(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1% change: the re-render reads the feed's events by their columns, one fragment, and
    copies 99 VEVENTs out of the stored body (no join of every stored fragment)."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(7)
    events = [ticket(i, rnd) for i in range(100)]
    fragment = fragment_renderer(config)
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None,
                     fragment=fragment)
    render_feeds(config, store, now=NOW)
    first = store.get_feed("account/acme")
    assert first is not None and first.event_count == 100
    parts = store.feed_parts("account/acme", first.etag)
    assert parts is not None and len(parts.parts["ids"]) == 100 and -1 not in parts.parts["ids"]

    events[40] = replace(events[40], title="Printer on fire")
    later = NOW + timedelta(minutes=5)
    store.apply_poll("src", events, absence="keep", complete=True, now=later.timestamp(), previous_success=None,
                     affected=lambda touched: ["account/acme"], fragment=fragment)
    by_id = counting(monkeypatch, "changed_parts_by_id")
    decoded = counting(monkeypatch, "events_by_id")
    joined: list[Any] = []
    monkeypatch.setattr(Store, "query_feed_fragments", lambda *a, **k: joined.append(a) or [])
    assert render_feeds(config, store, now=NOW, only=["account/acme"]) == ["account/acme"]
    changed_id = next(r.id for r in store.query_events(store_query(config)) if r.event.key == "k40")
    assert by_id == [[changed_id]], "only the changed event's fragment is read"
    assert decoded == [] and joined == [], "nothing decoded or rendered, no join of all fragments"
    body = store.get_feed("account/acme")
    assert body is not None and b"SUMMARY:\xf0\x9f\x8e\xab Printer on fire\r\n" in body.body
    assert body.body == from_scratch(config, store, NOW)["account/acme"]
    assert body.body.count(b"BEGIN:VEVENT") == 100


def store_query(config: Config) -> Any:
    from icsfeed.routing import find_feed

    spec = find_feed(config, "account", "acme")
    assert spec is not None
    return spec.query(NOW)


def test_a_body_its_parts_do_not_describe_is_not_spliced(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """Parts that do not fit the stored body (lengths swapped, a VEVENT boundary off) make the
    render start from the events, and the feed comes out right."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(3)
    events = [ticket(i, rnd) for i in range(20)]
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
    render_feeds(config, store, now=NOW)
    stored = store.get_feed("account/acme")
    assert stored is not None
    parts = store.feed_parts("account/acme", stored.etag)
    assert parts is not None
    lens = parts.parts["lens"]
    lens[0], lens[1] = lens[1] + 1, lens[0] - 1  # same total, boundaries wrong
    store.save_feed_parts("account/acme", stored.etag, parts.parts, parts.report)
    events[5] = replace(events[5], title="changed")
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp() + 60, previous_success=None,
                     affected=lambda touched: ["account/acme"])
    render_feeds(config, store, now=NOW)
    again = store.get_feed("account/acme")
    assert again is not None and again.body == from_scratch(config, store, NOW)["account/acme"]
    assert again.body.count(b"BEGIN:VEVENT") == 20


def test_new_settings_or_force_render_from_the_events(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous body is used only under the same feed render key, and never by ``force``."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(4)
    events = [ticket(i, rnd) for i in range(30)]
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
    render_feeds(config, store, now=NOW)
    seen: list[bool] = []
    original = build_feed

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("previous") is not None)
        return original(*args, **kwargs)

    import icsfeed.render as render

    monkeypatch.setattr(render, "build_feed", spy)
    render_feeds(config, store, now=NOW, force=True, only=["account/acme"])
    store.mark_dirty(["account/acme"])
    render_feeds(config, store, now=NOW, only=["account/acme"])
    assert seen == [False, True]
    with store.engine.begin() as conn:  # as if rendered by another version: another feed render key
        conn.execute(text("UPDATE feeds SET render_key = 'older' WHERE feed_id = 'account/acme'"))
    render_feeds(config, store, now=NOW, only=["account/acme"])
    assert seen == [False, True, False]
    stored = store.get_feed("account/acme")
    assert stored is not None and stored.render_key != "older"


def test_a_big_change_renders_by_one_scan_not_by_ids(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """When most of a feed is new to its previous body (every event changed, or rolled up before),
    reading the changed ones by id would cost more than one scan: the render does the scan."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(5)
    events = [ticket(i % 200, rnd) for i in range(600)]
    events = [replace(ev, key=f"big{i}") for i, ev in enumerate(events)]
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
    render_feeds(config, store, now=NOW)
    events = [replace(ev, title=f"{ev.title} again") for ev in events]
    store.apply_poll("src", events, absence="keep", complete=True, now=NOW.timestamp() + 60, previous_success=None,
                     affected=lambda touched: ["account/acme"], fragment=fragment_renderer(config))
    by_id = counting(monkeypatch, "changed_parts_by_id")
    render_feeds(config, store, now=NOW, only=["account/acme"])
    assert by_id == []
    stored = store.get_feed("account/acme")
    assert stored is not None and stored.event_count == 600
    assert stored.body == from_scratch(config, store, NOW)["account/acme"]
