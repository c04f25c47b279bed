"""The 1% re-render without a step per event in Python (issue 11, fourth session).

Three paths, each checked against the slow one it stands for, on both backends:

* ``Store.feed_versions``: a feed's (id, sequence, last modified in µs) read from the covering
  feed indexes through the DB-API cursor, equal to ``query_feed_index``'s columns;
* the splice by runs (``render._spliced``, ``budget.fit_spliced``) when a feed lists the same
  events in the same order as its previous body: its body equals a render from the events
  alone, and its parts describe that body as a full render's parts do;
* feed parts whose int lists are stored packed (``store.rollups.pack_parts``), read back as
  the lists that were saved; parts saved as JSON lists before still read.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from itertools import accumulate, pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from test_render_splice import CONFIG, KINDS, NOW, from_scratch, make_event, stored_bodies

import icsfeed.budget as budget
from icsfeed.config import Config
from icsfeed.feed_filters import parse_filter, select_parts
from icsfeed.render import build_feed, feed_secret, fragment_renderer, render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store
from icsfeed.store.feeds import StoredFeed, micros
from icsfeed.store.rollups import FeedParts, pack_parts, unpack_parts


def _poll(config: Config, store: Store, events: list[Any], at: float, fragments: bool = True) -> None:
    store.apply_poll("src", events, absence="keep", complete=True, now=at, previous_success=at - 300,
                     affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                     fragment=fragment_renderer(config) if fragments else None)


def test_feed_versions_equal_the_feed_index(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """Every feed (accounts, a team of all accounts with kinds and a severity floor, one with a
    budget) lists the same events in the same order, with the same versions, as the index query."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(11)
    events = [make_event(i, rnd, NOW) for i in range(150)]
    _poll(config, store, events, NOW.timestamp())
    events = [replace(ev, title=f"{ev.title} again") if i % 3 == 0 else ev for i, ev in enumerate(events)]
    _poll(config, store, events, NOW.timestamp() + 0.123457)  # last-modified with sub-µs digits
    for spec in all_feeds(config):
        query = spec.query(NOW)
        rows = store.query_feed_index(query, None)
        assert rows, spec.feed_id
        ids, seqs, mods = store.feed_versions(query)
        assert ids == [r[0] for r in rows], spec.feed_id
        assert seqs == [r[1] for r in rows], spec.feed_id
        assert mods == [int(r[2] * 1_000_000) for r in rows], spec.feed_id
        assert max(seqs) >= 1
    empty = replace(all_feeds(config)[0].query(NOW), account_keys=frozenset())
    assert store.feed_versions(empty) == ([], [], [])


@pytest.mark.sqlite_only
def test_feed_versions_read_the_covering_index(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """On SQLite the account feed's list and the all-accounts team feed's come from an index alone
    (migration 0013), not from the events' pages."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    specs = {s.feed_id: s for s in all_feeds(config)}
    from icsfeed.store.feeds import feed_versions_sql

    for feed_id, index in (("account/acme", "ix_events_feed_account"), ("team/ops", "ix_events_feed_window")):
        statement = feed_versions_sql(specs[feed_id].query(NOW), "?")  # the SQL feed_versions runs
        assert statement is not None
        sql, params = statement
        with store.engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
        details = " ".join(str(r[-1]) for r in plan)
        assert f"COVERING INDEX {index}" in details, (feed_id, details)
        assert "TEMP B-TREE" not in details, (feed_id, details)  # the order comes from the index too


def test_micros_is_int_of_microseconds() -> None:
    values = [0.0, 1.5e-6, 1764000000.123456, 1764000000.9999999, -3.25, 1e12, -1e12, 999999999999.5,
              float("inf"), float("nan"), 2e15]
    assert micros(values) == [int(m * 1_000_000) if -1e12 < m < 1e12 else -1 for m in values]
    assert micros([1.25, 2.5]) == [1250000, 2500000]
    assert micros([]) == []


def _with_parts(store: Store, feed_id: str) -> tuple[StoredFeed, FeedParts]:
    """The feed's stored body and the parts saved with it (both must be there)."""
    stored = store.get_feed(feed_id)
    assert stored is not None, feed_id
    parts = store.feed_parts(feed_id, stored.etag)
    assert parts is not None, feed_id
    return stored, parts


def _parts_describe(body: bytes, parts: dict[str, Any]) -> None:
    ends = list(accumulate(parts["lens"], initial=parts["head"]))
    assert ends[-1] + len(b"END:VCALENDAR\r\n") == len(body)
    for start, end in pairwise(ends):
        assert body.startswith(b"BEGIN:VEVENT\r\n", start) and body.endswith(b"END:VEVENT\r\n", start, end)


def _per_event(parts: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The parts as one tuple per VEVENT (kind by name: numbering may differ)."""
    names = parts["kinds"]
    return list(zip(parts["lens"], [names[k] for k in parts["kind"]], parts["rank"], parts["open"],
                    parts["ids"], parts["seqs"], parts["mods"], strict=True))


@pytest.mark.parametrize("seed", [1, 2])
def test_same_order_rerender_splices_runs_and_equals_a_render_from_scratch(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Titles, details, severities and open states change, nothing moves: each re-render takes the
    splice by runs, the bodies equal a render from the events alone, and the parts are a full
    render's (the ones the web's filtered variants and the next re-render read)."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(seed)
    events = [make_event(i, rnd, NOW) for i in range(160)]
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    taken: list[bool] = []
    original = budget.fit_spliced

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(budget, "fit_spliced", spy)
    at = NOW.timestamp()
    for round_no in range(1, 6):
        at += 60
        for i in rnd.sample(range(len(events)), 4):
            ev = events[i]
            events[i] = replace(ev, title=f"{ev.title} (r{round_no}) ; ,\\ — ü", detail=f"{ev.detail}\nround {round_no}")
        i = rnd.randrange(len(events))  # a severity change inside what every feed shows already
        if events[i].severity in ("critical", "warning"):
            events[i] = replace(events[i], severity="warning" if events[i].severity == "critical" else "critical")
        _poll(config, store, events, at, fragments=round_no % 2 == 0)  # odd rounds: fragments rendered by render
        taken.clear()
        render_feeds(config, store, now=NOW)
        assert taken and all(taken), taken
        bodies = stored_bodies(config, store)
        assert bodies == from_scratch(config, store, NOW)
        secret = feed_secret(config, store)
        for spec in all_feeds(config):
            stored, parts = _with_parts(store, spec.feed_id)
            _parts_describe(stored.body, parts.parts)
            fresh = build_feed(config, store, spec, NOW, secret=secret, save_fragments=False)
            assert fresh.body == stored.body and fresh.parts is not None
            if "ids" in fresh.parts:  # a feed within its budget
                assert _per_event(parts.parts) == _per_event(fresh.parts), spec.feed_id
            for wanted in ({"kinds": "alert"}, {"min_severity": "critical"}, {"status": "open"}):
                chosen = parse_filter(wanted, KINDS)
                assert chosen is not None
                assert select_parts(stored.body, parts.parts, chosen) == select_parts(fresh.body, fresh.parts, chosen)


def test_a_splice_over_the_budget_is_rolled_up_as_from_scratch(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """Longer details push a feed past its byte budget without moving any event: the splice
    declines (fit_spliced is None) and the feed is rolled up as a render from scratch is."""
    yaml = CONFIG.replace("{id: acme, name: \"ACME, Inc.\", keys: [acme]}",
                          "{id: acme, name: \"ACME, Inc.\", keys: [acme], budget: {max_bytes: 30KB}}")
    config, store = make_env({"icsfeed.yaml": yaml})
    start = NOW - timedelta(hours=30)
    events = [replace(make_event(i, random.Random(i), NOW), account="acme", kind="alert", attrs={}, seen=None,
                      start=start + timedelta(minutes=7 * i), end=start + timedelta(minutes=7 * i + 5))
              for i in range(40)]
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    first = store.get_feed("account/acme")
    assert first is not None and first.body.count(b"BEGIN:VEVENT") == 40, len(first.body)
    events = [replace(ev, detail=ev.detail + "\n" + "long line of detail " * 30) for ev in events]
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    again = store.get_feed("account/acme")
    assert again is not None and len(again.body) <= 30_000
    assert again.body.count(b"BEGIN:VEVENT") < 40
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)


def test_tampered_parts_are_not_spliced_by_runs(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """A boundary the parts misplace (same total length) is not trusted by the splice either: the
    render starts over, and the parts saved describe the new body."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(7)
    events = [make_event(i, rnd, NOW) for i in range(80)]
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    stored, parts = _with_parts(store, "account/acme")
    lens = parts.parts["lens"]
    lens[2], lens[3] = lens[2] + 5, lens[3] - 5
    store.save_feed_parts("account/acme", stored.etag, parts.parts, parts.report)
    events[0] = replace(events[0], title="changed")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)
    again, fresh = _with_parts(store, "account/acme")
    _parts_describe(again.body, fresh.parts)


int_lists = st.lists(st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), max_size=200)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["lens", "kind", "rank", "open", "ids", "seqs", "mods", "x"]), int_lists),
       st.lists(st.text(max_size=8), max_size=80),
       st.lists(st.one_of(st.integers(min_value=2 ** 63), st.floats(allow_nan=False), st.booleans()), min_size=64,
                max_size=70))
def test_packed_parts_read_back_as_saved(lists: dict[str, list[int]], kinds: list[str], odd: list[Any]) -> None:
    parts: dict[str, Any] = {"v": 2, "head": 17, "kinds": kinds, **lists, "odd": odd}
    assert unpack_parts(pack_parts(parts)) == json.loads(json.dumps(parts))


def test_parts_in_the_store_packed_and_as_json_lists(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """A rendered feed's parts come back as saved; parts stored as JSON lists (before packing)
    still read; an unreadable packed list makes the parts unused and the next render right."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(9)
    events = [make_event(i, rnd, NOW) for i in range(150)]
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    stored, saved = _with_parts(store, "account/acme")
    assert len(saved.parts["lens"]) >= 64
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT parts FROM feed_parts WHERE feed_id = 'account/acme'")).scalar_one()
    assert '"lens":"q64z:' in raw and len(raw) < len(json.dumps(saved.parts)) / 2
    with store.engine.begin() as conn:  # as written before packing
        conn.execute(text("UPDATE feed_parts SET parts = :p WHERE feed_id = 'account/acme'"),
                     {"p": json.dumps(saved.parts)})
    assert store.feed_parts("account/acme", stored.etag) is saved  # held since the render saved them
    store.forget_held_parts()  # read as another process reads them
    assert store.feed_parts("account/acme", stored.etag) == saved
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE feed_parts SET parts = :p WHERE feed_id = 'account/acme'"),
                     {"p": raw.replace('"lens":"q64z:', '"lens":"q64z:!!')})
    store.forget_held_parts()
    assert store.feed_parts("account/acme", stored.etag) is None
    events[3] = replace(events[3], title="changed after the parts broke")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)


def test_part_attrs_through_the_cursor_equal_sqlalchemy_rows(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """``query_part_attrs`` (what the budget plans a feed over its budget from) reads its rows
    through the DB-API cursor: the same attributes as SQLAlchemy's typed rows, on both backends."""
    from sqlalchemy import and_, select

    from icsfeed.store.rollups import PartAttrs
    from icsfeed.store.schema import events_table as t

    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(13)
    events = [make_event(i, rnd, NOW) for i in range(120)]
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)  # fills is_open of some rows
    for spec in all_feeds(config):
        query = spec.query(NOW)
        stmt = select(t.c.id, t.c.uid, t.c.kind, t.c.account_key, t.c.severity_rank, t.c.start_ts, t.c.end_ts,
                      t.c.recurring, t.c.sequence, t.c.is_open).where(and_(*store._feed_conditions(query)))
        with store.engine.connect() as conn:
            typed = {r[0]: PartAttrs(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8],
                                     None if r[9] is None else bool(r[9])) for r in conn.execute(stmt).all()}
        got = store.query_part_attrs(query)
        assert got == typed and got, spec.feed_id
        assert all(type(a.recurring) is bool and a.is_open in (None, True, False) for a in got.values())
