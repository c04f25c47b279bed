"""Feed bodies stored as content-defined segments (migration 0015, icsfeed/store/segments.py).

A re-render rewrites only the segments its changed VEVENTs are in; everything that reads a
feed still sees the whole body, byte for byte:

* ``segments.splice`` (the re-render's cut) makes exactly the segments ``segments.split`` (a
  cut of the whole new body) makes; the ETag is a function of the body's bytes alone;
* a re-render by segments equals a render from the events alone, keeps the other segments
  unread and unwritten, and leaves no segment its body does not list;
* the body served over HTTP is the stored one joined, with its ETag (and 304 for it);
* a body stored whole (before 0015) is read and re-rendered; 0013 -> head -> 0013 keeps the
  bodies, on both backends.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text, update
from test_render_splice import NOW, from_scratch, make_event, stored_bodies, ticket

import icsfeed.render as render
import icsfeed.store.segments as segments
from icsfeed.config import Config
from icsfeed.live import LiveConfig
from icsfeed.render import feed_secret, fragment_renderer, render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store, feed_segments_table, feeds_table
from icsfeed.store.codec import pack_body, unpack_body
from icsfeed.store.migrate import alembic_config
from icsfeed.store.segments import body_etag, splice, split
from icsfeed.tokens import feed_token
from icsfeed.web import create_app

CONFIG = """
insights: {enabled: false}
server: {base_url: "https://cal.example.com"}
feeds: {timezone: UTC, window_back_days: 10, window_ahead_days: 5}
accounts:
  - {id: acme, name: "ACME, Inc.", keys: [acme]}
  - {id: beta, name: Beta, keys: [beta]}
teams:
  - {id: all, name: All, accounts: "*"}
"""


# --- the cut ----------------------------------------------------------------------------------

def _vevent(uid: str, text: str) -> bytes:
    return f"BEGIN:VEVENT\r\nSUMMARY:{text}\r\nUID:{uid}\r\nEND:VEVENT\r\n".encode()


HEAD, TAIL = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\n", b"END:VCALENDAR\r\n"

vevents = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([0, 5, 40, 300, 9000, 70000])),
                   min_size=0, max_size=120)


@settings(max_examples=150, deadline=None)
@given(vevents, st.data())
def test_splice_makes_the_segments_a_cut_of_the_new_body_makes(events: list[tuple[int, int]], data: Any) -> None:
    old = [_vevent(f"{uid}@h", "x" * size) for uid, size in events]
    body = HEAD + b"".join(old) + TAIL
    cut = split(body)
    assert cut.head + b"".join(cut.raw[d] for d in cut.digests) + cut.tail == body
    assert cut.lengths == [len(cut.raw[d]) for d in cut.digests] and cut.size == len(body)
    if not old:
        return
    changed = sorted(data.draw(st.sets(st.integers(0, len(old) - 1), max_size=8)))
    offsets = [len(HEAD)]
    for v in old:
        offsets.append(offsets[-1] + len(v))
    new = list(old)
    patches = []
    for n in changed:
        keep_uid = data.draw(st.booleans())
        uid = events[n][0] if keep_uid else data.draw(st.integers(0, 10**6))
        new[n] = _vevent(f"{uid}@h", "y" * data.draw(st.sampled_from([0, 7, 500, 66000])))
        patches.append((offsets[n], offsets[n + 1], new[n]))
    read: list[int] = []

    def raw_of(j: int) -> bytes:
        read.append(j)
        return cut.raw[cut.digests[j]]

    spliced = splice(cut, raw_of, patches)
    again = split(HEAD + b"".join(new) + TAIL)
    assert (spliced.digests, spliced.lengths) == (again.digests, again.lengths)
    assert spliced.etag == again.etag
    assert set(again.digests) <= set(spliced.raw) | set(cut.digests), "every new segment's bytes are given"
    assert all(spliced.raw[d] == again.raw[d] for d in spliced.raw)
    touched = {next(j for j in range(len(cut.digests)) if offsets[n] < len(HEAD) + sum(cut.lengths[:j + 1]))
               for n in changed}
    assert touched <= set(read)


def test_the_etag_is_a_function_of_the_bytes() -> None:
    rnd = random.Random(4)
    parts = [_vevent(f"{rnd.randrange(10**9)}@h", f"event {i}") for i in range(400)]
    body = HEAD + b"".join(parts) + TAIL
    assert body_etag(body) == body_etag(bytes(bytearray(body))) == split(body).etag
    assert len(split(body).digests) > 10, "a body of many segments"
    other = body.replace(b"event 123\r\n", b"event 124\r\n")
    assert body_etag(other) != body_etag(body)
    assert body_etag(body[:-2]) != body_etag(body)
    assert body_etag(b"") == body_etag(b"") != body_etag(b"x")


def test_segment_lists_read_back_and_bad_ones_raise() -> None:
    digests = [segments.digest(bytes([i])) for i in range(5)]
    text_ = segments.encode_list(digests, [1, 2, 3, 4, 5], "0badcafe")
    assert segments.decode_list(text_) == (digests, [1, 2, 3, 4, 5], "0badcafe")
    assert segments.decode_list(segments.encode_list([], [])) == ([], [], "")
    assert segments.lens_check([1, 2, 3]) != segments.lens_check([2, 1, 3]) != ""
    assert segments.lens_check([1, "2"]) == segments.lens_check([2 ** 70]) == ""
    for bad in ("", "1,2;abc;", "x;" + digests[0] + ";", "1;" + digests[0] + "z;", "1;" + digests[0]):
        with pytest.raises(ValueError):
            segments.decode_list(bad)


# --- renders ----------------------------------------------------------------------------------

def _poll(config: Config, store: Store, events: list[Any], at: float, fragments: bool = True) -> None:
    store.apply_poll("src", events, absence="keep", complete=True, now=at, previous_success=at - 300,
                     affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                     fragment=fragment_renderer(config) if fragments else None)


def _polled_and_rendered(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                         events: list[Any]) -> tuple[Config, Store]:
    """A store of CONFIG that took ``events`` in one poll and rendered every feed."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    return config, store


def _stored_segments(store: Store, feed_id: str) -> tuple[list[str], set[str]]:
    """(the digests the feed row lists, the digests of its rows in feed_segments)."""
    s, f = feed_segments_table, feeds_table
    with store.engine.connect() as conn:
        listed = conn.execute(select(f.c.segments, f.c.body).where(f.c.feed_id == feed_id)).one()
        rows = set(conn.execute(select(s.c.digest).where(s.c.feed_id == feed_id)).scalars())
    assert listed.body is None, "a body stored as segments is not also stored whole"
    return segments.decode_list(listed.segments)[0], rows


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each splice by segments made the feed (True) or left it to another path."""
    taken: list[bool] = []
    original = render._spliced_segments

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        got = original(*args, **kwargs)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(render, "_spliced_segments", wrapper)
    return taken


@pytest.mark.parametrize("fragments", [True, False])
def test_a_rerender_by_segments_equals_a_render_from_the_events(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch,
        fragments: bool) -> None:
    rnd = random.Random(11)
    events = [replace(make_event(i, rnd, NOW), attrs={}, kind="ticket" if i % 5 == 4 else make_event(i, rnd, NOW).kind)
              for i in range(400)]
    config, store = _polled_and_rendered(make_env, events)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)
    listed, rows = _stored_segments(store, "team/all")
    assert len(listed) > 20 and rows == set(listed)
    taken = _spy(monkeypatch)
    for round_no in range(1, 6):
        before = {spec.feed_id: _stored_segments(store, spec.feed_id)[0] for spec in all_feeds(config)}
        changed = rnd.sample(range(len(events)), 4)
        for i in changed:  # 1%: titles change, the events stay where they are
            events[i] = replace(events[i], title=f"{events[i].title} (r{round_no})")
        _poll(config, store, events, NOW.timestamp() + 60 * round_no, fragments=fragments)
        render_feeds(config, store, now=NOW)
        assert stored_bodies(config, store) == from_scratch(config, store, NOW), f"round {round_no}"
        for spec in all_feeds(config):
            now_listed, now_rows = _stored_segments(store, spec.feed_id)
            assert now_rows == set(now_listed), "no segment the body does not list"
            new = set(now_listed) - set(before[spec.feed_id])
            assert len(new) <= len(changed), (spec.feed_id, len(new))
            assert len(set(now_listed) & set(before[spec.feed_id])) >= len(now_listed) - len(changed)
    assert taken and all(taken), "every re-render spliced segments"


def test_a_changed_event_rewrites_its_segment_and_reads_only_that_one(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(5)
    events = [replace(make_event(i, rnd, NOW), account="acme", attrs={}, kind="ticket") for i in range(300)]
    config, store = _polled_and_rendered(make_env, events)
    before, _ = _stored_segments(store, "account/acme")
    fetched: list[list[str]] = []
    original = Store._segment_blobs

    def counting(self: Store, feed_id: str, digests: list[str]) -> dict[str, bytes]:
        fetched.append(list(digests))
        return original(self, feed_id, digests)

    monkeypatch.setattr(Store, "_segment_blobs", counting)
    monkeypatch.setattr(Store, "get_feed", lambda *a, **k: pytest.fail("the whole body is not read"))
    events[123] = replace(events[123], title="Printer on fire")
    _poll(config, store, events, NOW.timestamp() + 60)
    assert "account/acme" in render_feeds(config, store, now=NOW, only=["account/acme"])
    after, _ = _stored_segments(store, "account/acme")
    assert len(after) == len(before) and len(set(after) - set(before)) == 1
    assert sum(map(len, fetched)) == 1, "one segment read"
    monkeypatch.undo()
    stored = store.get_feed("account/acme")
    assert stored is not None and b"Printer on fire" in stored.body
    assert stored.body == from_scratch(config, store, NOW)["account/acme"]
    assert stored.etag == body_etag(stored.body)


def test_same_body_same_etag_and_last_modified(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    rnd = random.Random(2)
    events = [make_event(i, rnd, NOW) for i in range(120)]
    config, store = _polled_and_rendered(make_env, events)
    first = {s.feed_id: store.get_feed(s.feed_id) for s in all_feeds(config)}
    render_feeds(config, store, now=NOW, force=True)  # from the events alone: the same bytes
    for feed_id, old in first.items():
        again = store.get_feed(feed_id)
        assert again is not None and old is not None
        assert (again.body, again.etag, again.last_modified) == (old.body, old.etag, old.last_modified)
    for i in range(10):
        events[i] = replace(events[i], title=f"another title {i}")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    changed = [f for f, old in first.items() if store.get_feed(f).body != old.body]  # type: ignore[union-attr]
    assert changed
    for feed_id in changed:
        assert store.get_feed(feed_id).etag != first[feed_id].etag  # type: ignore[union-attr]


def test_the_body_served_is_the_stored_body(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    rnd = random.Random(9)
    events = [replace(make_event(i, rnd, NOW), attrs={}) for i in range(300)]
    config, store = _polled_and_rendered(make_env, events)
    secret = feed_secret(config, store)
    assert secret is not None
    client = create_app(LiveConfig(config, check_every=3600), store, secret).test_client()
    for round_no in range(2):
        for spec in all_feeds(config):
            path = f"/feeds/{spec.id}.ics" if spec.type == "account" else f"/teams/{spec.id}.ics"
            url = f"{path}?token={feed_token(secret, spec.feed_id, 1)}"
            stored = store.get_feed(spec.feed_id)
            assert stored is not None
            got = client.get(url, base_url="https://cal.example.com")
            assert got.status_code == 200 and got.data == stored.body
            assert got.headers["ETag"].strip('"') == stored.etag == body_etag(got.data)
            again = client.get(url, base_url="https://cal.example.com", headers={"If-None-Match": got.headers["ETag"]})
            assert again.status_code == 304
        events[7] = replace(events[7], title=f"changed {round_no}")
        _poll(config, store, events, NOW.timestamp() + 60 * (round_no + 1))
        render_feeds(config, store, now=NOW)


def test_an_unreadable_segment_is_rendered_again(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    rnd = random.Random(3)
    events = [ticket(i, rnd) for i in range(100)]  # all in account/acme's window
    config, store = _polled_and_rendered(make_env, events)
    s = feed_segments_table
    with store.engine.begin() as conn:  # every segment of the feed corrupt
        conn.execute(update(s).where(s.c.feed_id == "account/acme").values(blob=b"\x28\xb5\x2f\xfdbroken"))
    events[10] = replace(events[10], title="changed")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)  # the re-render cannot read its segment: from the events
    render_feeds(config, store, now=NOW)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)
    listed, _ = _stored_segments(store, "account/acme")
    with store.engine.begin() as conn:  # a segment lost
        conn.execute(s.delete().where(s.c.feed_id == "account/acme", s.c.digest == listed[1]))
    assert store.get_feed("account/acme") is None, "a body that cannot be read is not served"
    assert store.feed_render_states()["account/acme"][0], "and is rendered again"
    render_feeds(config, store, now=NOW)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)


# --- bodies stored whole, the migration ----------------------------------------------------------

def test_a_body_stored_whole_is_read_and_rerendered_into_segments(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """What code before 0015 wrote (feeds.body, no segments) keeps working until re-rendered."""
    rnd = random.Random(8)
    events = [replace(make_event(i, rnd, NOW), attrs={}) for i in range(150)]
    config, store = _polled_and_rendered(make_env, events)
    bodies = stored_bodies(config, store)
    f, s = feeds_table, feed_segments_table
    with store.engine.begin() as conn:  # as an older icsfeed stored them
        for feed_id, body in bodies.items():
            conn.execute(update(f).where(f.c.feed_id == feed_id).values(  # its ETag the hash of the body
                body=pack_body(body), body_head=None, body_tail=None, segments=None,
                etag=hashlib.sha256(body).hexdigest()[:32]))
        conn.execute(s.delete())
    for feed_id, body in bodies.items():
        stored = store.get_feed(feed_id)
        assert stored is not None and stored.body == body
    events[3] = replace(events[3], title="changed after the upgrade")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)
    for spec in all_feeds(config):
        listed, rows = _stored_segments(store, spec.feed_id)
        assert rows == set(listed)


def test_upgrade_from_0013_and_back_keeps_the_bodies(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    rnd = random.Random(6)
    events = [replace(make_event(i, rnd, NOW), attrs={}) for i in range(150)]
    config, store = _polled_and_rendered(make_env, events)
    bodies = stored_bodies(config, store)
    with store.engine.connect() as conn, conn.begin():
        command.downgrade(alembic_config(conn), "0013")
    with store.engine.connect() as conn:
        assert "feed_segments" not in inspect(conn).get_table_names()
        assert "segments" not in {c["name"] for c in inspect(conn).get_columns("feeds")}
        whole = dict(conn.execute(text("SELECT feed_id, body FROM feeds")).all())
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0013"
    assert {k: unpack_body(v) for k, v in whole.items()} == bodies, "the downgrade writes the bodies back whole"
    with store.engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "head")
    store.close()
    store = Store(config.storage_url, uid_host=config.uid_host)
    try:
        assert stored_bodies(config, store) == bodies, "bodies stored whole read after the upgrade"
        events[1] = replace(events[1], title="changed after the upgrade")
        _poll(config, store, events, NOW.timestamp() + 60)
        store.mark_dirty([s.feed_id for s in all_feeds(config)])
        render_feeds(config, store, now=NOW + timedelta(seconds=1))
        assert stored_bodies(config, store) == from_scratch(config, store, NOW + timedelta(seconds=1))
        for spec in all_feeds(config):
            listed, rows = _stored_segments(store, spec.feed_id)
            assert listed and rows == set(listed)
    finally:
        store.close()


def test_a_read_between_a_render_s_writes_is_made_again(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """get_feed reads the row, then its segments: when a render replaced some in between (they
    are missing), it reads both again rather than serve or drop a body it did not see whole."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(12)
    _poll(config, store, [ticket(i, rnd) for i in range(60)], NOW.timestamp())
    render_feeds(config, store, now=NOW)
    body = store.get_feed("account/acme").body  # type: ignore[union-attr]
    original = Store._all_segment_blobs
    calls: list[int] = []

    def racing(self: Store, conn: Any, feed_id: str) -> dict[str, bytes]:
        calls.append(1)
        got = original(self, conn, feed_id)
        return got if len(calls) > 1 else dict(list(got.items())[1:])  # the first read misses one

    monkeypatch.setattr(Store, "_all_segment_blobs", racing)
    again = store.get_feed("account/acme")
    assert again is not None and again.body == body and len(calls) == 2
    assert not store.feed_render_states()["account/acme"][0], "nothing marked for a new render"
