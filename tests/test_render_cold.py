"""The cold render's store calls (issue 11, fifth session), against what they stand for.

A cold render reads every event of the feed (``Store.events_by_id``, now the driver's rows
without SQLAlchemy's row processing) and stores a fragment for each (``Store.save_fragments``,
now one DB-API executemany, with each row's source passed by the render instead of read again).
Each is checked against the slow path on both backends: the same EventRows as SQLAlchemy's
typed rows, the same stored blobs as a save that reads the sources itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sqlalchemy import select, text
from test_render_splice import CONFIG, NOW, from_scratch, make_event, stored_bodies

from icsfeed.config import Config
from icsfeed.render import fragment_renderer, render_feeds, render_key, render_vevent
from icsfeed.routing import all_feeds
from icsfeed.store import Store
from icsfeed.store.events import _EVENT_ROW_COLUMNS
from icsfeed.store.schema import events_table as t


def _poll(config: Config, store: Store, n: int, *, fragments: bool) -> list[int]:
    rnd = random.Random(7)
    at = NOW.timestamp() + 0.123457  # last-modified with sub-µs digits
    store.apply_poll("src", [make_event(i, rnd, NOW) for i in range(n)], absence="keep", complete=True, now=at,
                     previous_success=at - 300, affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                     fragment=fragment_renderer(config) if fragments else None)
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(t.c.id).order_by(t.c.id))]


def _blobs(store: Store) -> dict[int, tuple[bytes | None, str | None]]:
    with store.engine.connect() as conn:
        return {r[0]: (None if r[1] is None else bytes(r[1]), r[2])
                for r in conn.execute(select(t.c.id, t.c.vevent, t.c.vevent_key))}


def test_events_by_id_equal_the_typed_rows(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """The driver's rows decode to the EventRows SQLAlchemy's typed rows gave: same values, same types."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    ids = _poll(config, store, 120, fragments=True)
    got = store.events_by_id([*ids, 10 ** 9])  # one id that is no row
    with store.engine.connect() as conn:
        typed = {r[0]: store._event_row(tuple(r)) for r in conn.execute(select(*_EVENT_ROW_COLUMNS)).all()}
    assert set(got) == set(ids) == set(typed)
    for i in ids:
        assert got[i] == typed[i], i
        row = got[i]
        assert (type(row.id), type(row.sequence), type(row.created), type(row.last_modified)) == (int, int, float, float)
        assert row.vevent is None or type(row.vevent) is bytes


def test_save_fragments_with_sources_stores_what_a_save_reading_them_does(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """Fragments saved with the sources given are the same blobs (same dictionary) as saved with
    the sources read by the store; an id that is no row (deleted meanwhile) is skipped."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    ids = _poll(config, store, 150, fragments=False)
    rows = store.events_by_id(ids)
    key = render_key(config)
    fresh = [(i, render_vevent(config, rows[i]), key) for i in ids]
    store.save_fragments(fresh)
    read_sources = _blobs(store)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET vevent = NULL, vevent_key = NULL"))
    gone = 10**9
    store.save_fragments([*fresh, (gone, b"BEGIN:VEVENT\r\nEND:VEVENT\r\n", key)],
                         sources={**{i: rows[i].event.source for i in ids}, gone: "src"})
    given = _blobs(store)
    assert given == read_sources
    assert gone not in given and all(blob is not None and k == key for blob, k in given.values())
    index = {r[0]: r[-1] for r in store.query_feed_index(all_feeds(config)[0].query(NOW), (key,))}
    assert index and all(fragment == render_vevent(config, rows[i]) for i, fragment in index.items())


def test_cold_render_stores_every_fragment_and_equals_a_render_from_scratch(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """A first render of events the poll stored no fragment for: every feed equals a render from
    the events alone, and each event it rendered now has its fragment stored, readable."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    ids = _poll(config, store, 200, fragments=False)
    assert all(blob is None for blob, _ in _blobs(store).values())
    render_feeds(config, store, now=NOW, force=True)
    blobs = _blobs(store)
    key = render_key(config)
    assert sum(1 for i in ids if blobs[i][0] is not None and blobs[i][1] == key) > len(ids) // 2
    rows = store.events_by_id(ids)
    for i in ids:
        if blobs[i][1] == key:
            assert rows[i].vevent == render_vevent(config, rows[i]), i
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)
