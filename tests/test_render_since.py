"""The 1% re-render without the whole version list (issue 11, eighth session).

A re-render that starts from the feed's previous body reads, instead of every event's version
(``Store.feed_versions``), the feed's totals and the rows modified since the newest version
its parts list (``Store.feed_changes``), and works the list out from the parts
(``render._versions_since``). Whatever happens in between -- changes written with a clock
behind the newest version listed (a poll that commits after a later one), events moving
past their neighbours, coming in or leaving with such a clock, the window moving on -- the
body must be what a render from the events alone makes, byte for byte; and the list must be
the one ``feed_versions`` reads.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from test_render_splice import CONFIG, NOW, from_scratch, make_event, stored_bodies

import icsfeed.render as render
from icsfeed.config import Config
from icsfeed.render import fragment_renderer, render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store

#: feeds within their budget only (the over-budget ones take icsfeed.refit, not this path)
PLAIN = CONFIG.replace(", budget: {max_events: 12, keep_individual: [insight]}", "") \
    .replace(", budget: {max_events: 40}", "")


def _poll(config: Config, store: Store, events: dict[int, Any], at: float, fragments: bool = True) -> None:
    store.apply_poll("src", list(events.values()), absence="keep", complete=True, now=at, previous_success=at - 300,
                     affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                     fragment=fragment_renderer(config) if fragments else None)


def _spy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[bool], list[list[int]]]:
    """Whether each re-render worked its list out from the changes (True) or not, and the lists
    that ``feed_versions`` reads of the feeds at the time each such one is worked out."""
    took: list[bool] = []
    checked: list[list[int]] = []
    original = render._versions_since

    def spy(store: Store, query: Any, reuse: Any) -> Any:
        out = original(store, query, reuse)
        took.append(out is not None)
        if out is not None:
            ids, seqs, mods = store.feed_versions(query)
            assert (out[0], out[1], out[2]) == (ids, seqs, mods)
            changed = [n for n in range(len(ids)) if (seqs[n], mods[n]) != (reuse.seqs[n], reuse.mods[n])]
            assert out[3] == changed
            checked.append(changed)
        return out

    monkeypatch.setattr(render, "_versions_since", spy)
    return took, checked


def test_a_few_changes_are_found_without_the_whole_list(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(4)
    events = {i: make_event(i, rnd, NOW) for i in range(150)}
    at = NOW.timestamp()
    _poll(config, store, events, at)
    render_feeds(config, store, now=NOW)
    took, checked = _spy(monkeypatch)
    read: list[int] = []
    original = Store.feed_versions
    monkeypatch.setattr(Store, "feed_versions", lambda self, q: read.append(1) or original(self, q))
    for round_no in range(1, 4):
        at += 60
        for i in rnd.sample(sorted(events), 3):
            events[i] = replace(events[i], title=f"{events[i].title} r{round_no}")
        _poll(config, store, events, at, fragments=round_no != 2)
        took.clear()
        read.clear()
        render_feeds(config, store, now=NOW)
        assert took and all(took), took
        assert len(read) == len(took)  # only the spy's own reads: the render read no whole list
        assert stored_bodies(config, store) == from_scratch(config, store, NOW)
    assert any(checked)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_list_worked_out_from_the_changes_is_the_list_read(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Random rounds of changes, some written with a clock behind the newest version the
    previous render saw: the body is always a render from the events alone, and whenever the
    list is worked out from the changes it is the one read in full (the spy checks)."""
    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(seed)
    events = {i: make_event(i, rnd, NOW) for i in range(120)}
    at = NOW.timestamp()
    _poll(config, store, events, at)
    render_feeds(config, store, now=NOW)
    took, _ = _spy(monkeypatch)
    next_key = 500
    outcomes: set[bool] = set()
    for round_no in range(1, 13):
        at += 30
        kind = rnd.choice(["title", "title", "late", "move", "late move", "new late", "account late", "new"])
        late = "late" in kind
        for i in rnd.sample(sorted(events), rnd.randint(1, 3)):
            ev = events[i]
            if "move" in kind:  # a few minutes or a day: past its neighbours or not
                step = timedelta(minutes=rnd.choice([1, 7, 24 * 60]))
                events[i] = replace(ev, start=ev.start + step, end=None if ev.end is None else ev.end + step)
            elif "account" in kind:
                events[i] = replace(ev, account="beta" if ev.account != "beta" else "acme")
            else:
                events[i] = replace(ev, title=f"{ev.title} r{round_no}")
        if "new" in kind:
            events[next_key] = replace(make_event(next_key, rnd, NOW), account="acme")
            next_key += 1
        # a late write: stamped before the newest version the last render listed
        _poll(config, store, events, at - 45 if late else at, fragments=rnd.random() < 0.5)
        took.clear()
        render_feeds(config, store, now=NOW)
        outcomes.update(took)
        assert stored_bodies(config, store) == from_scratch(config, store, NOW), (round_no, kind)
    assert outcomes == {True, False}  # both ways were taken


def test_a_late_change_is_not_missed(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A change stamped before the newest version listed is not among the rows modified since:
    the sum of sequences tells, and the list is read in full."""
    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(9)
    events = {i: replace(make_event(i, rnd, NOW), account="acme") for i in range(40)}
    at = NOW.timestamp()
    _poll(config, store, events, at)
    render_feeds(config, store, now=NOW)
    events[3] = replace(events[3], title="changed first")
    _poll(config, store, events, at + 60)
    render_feeds(config, store, now=NOW)
    took, _ = _spy(monkeypatch)
    events[5] = replace(events[5], title="changed late")
    _poll(config, store, events, at + 30)  # committed after the render, stamped before its newest version
    render_feeds(config, store, now=NOW)
    assert took and not any(took), took
    bodies = stored_bodies(config, store)
    assert b"changed late" in bodies["account/acme"]
    assert bodies == from_scratch(config, store, NOW)


def test_a_new_day_reads_the_whole_list(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The window moves once a day: the parts name the query, a new one reads the list in full."""
    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(2)
    events = {i: make_event(i, rnd, NOW) for i in range(80)}
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    took, _ = _spy(monkeypatch)
    later = NOW + timedelta(days=1)
    render_feeds(config, store, now=later)
    assert took and not any(took), took
    assert stored_bodies(config, store) == from_scratch(config, store, later)


def test_a_rerender_reads_the_parts_it_saved_from_memory_and_packs_only_changed_lists(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The store holds the parts it saved: the next render reads none from the database, packs
    again only the lists that changed (the ids keep their stored text), and another store on
    the same database (another process) reads the same parts."""
    import icsfeed.store.rollups as rollups

    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(6)
    events = {i: replace(make_event(i, rnd, NOW), account="acme") for i in range(100)}
    at = NOW.timestamp()
    _poll(config, store, events, at)
    render_feeds(config, store, now=NOW)

    def stored_text() -> dict[str, Any]:
        import json

        from sqlalchemy import text
        with store.engine.connect() as conn:
            return json.loads(conn.execute(text("SELECT parts FROM feed_parts WHERE feed_id = 'account/acme'")).scalar_one())

    before = stored_text()
    unpacked: list[int] = []
    original = rollups.unpack_parts
    monkeypatch.setattr(rollups, "unpack_parts", lambda *a, **k: unpacked.append(1) or original(*a, **k))
    events[7] = replace(events[7], title=f"{events[7].title} and then some")
    _poll(config, store, events, at + 60)
    render_feeds(config, store, now=NOW)
    assert unpacked == []
    after = stored_text()
    assert after["ids"] == before["ids"] and after["kind"] == before["kind"]  # the same text, not packed again
    assert after["lens"] != before["lens"] and after["seqs"] != before["seqs"]
    stored = store.get_feed("account/acme")
    assert stored is not None
    held = store.feed_parts("account/acme", stored.etag)
    store.forget_held_parts()
    read = store.feed_parts("account/acme", stored.etag)
    assert unpacked == [1]
    assert held is not None and read == held
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)


def test_held_parts_are_bounded() -> None:
    from icsfeed.store.rollups import FeedParts, _PartsCache

    cache = _PartsCache(limit=100)
    for n in range(5):
        cache.put(f"f{n}", FeedParts("e", {"ids": list(range(20))}, {}), {})
    assert cache.get("f0") is None and cache.get("f1") is None  # 41 each: two fit
    assert cache.get("f4", "e") is not None and cache.get("f4", "other") is None
    cache.put("big", FeedParts("e", {"ids": list(range(80))}, {}), {})
    assert cache.get("big") is None  # larger than the whole bound: not held
    assert cache.get("f3") is not None


def test_parts_whose_boundaries_miss_a_segment_s_end_are_not_spliced(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts that put a VEVENT boundary off a segment's end (their checksum made to match the
    row's) make the splice by segments give up on the segments it reads: the render starts
    from the events and the feed comes out right."""
    from sqlalchemy import update

    from icsfeed.store import feeds_table
    from icsfeed.store.segments import decode_list, encode_list, lens_check

    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(8)
    events = {i: replace(make_event(i, rnd, NOW), account="acme") for i in range(60)}
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    stored = store.get_feed("account/acme")
    assert stored is not None
    parts = store.feed_parts("account/acme", stored.etag)
    assert parts is not None
    with store.engine.connect() as conn:
        listed = conn.execute(feeds_table.select().where(feeds_table.c.feed_id == "account/acme")).one().segments
    digests, lengths, _ = decode_list(listed)
    assert len(lengths) >= 2
    lens = list(parts.parts["lens"])
    ends = [parts.parts["head"]]
    for n in lens:
        ends.append(ends[-1] + n)
    k = ends.index(parts.parts["head"] + lengths[0]) - 1  # the last VEVENT of the first segment
    lens[k], lens[k + 1] = lens[k] + 3, lens[k + 1] - 3  # same total: that segment's end is off
    tampered = {**parts.parts, "lens": lens}
    assert store.save_feed_parts("account/acme", stored.etag, tampered, parts.report)
    with store.engine.begin() as conn:
        conn.execute(update(feeds_table).where(feeds_table.c.feed_id == "account/acme")
                     .values(segments=encode_list(digests, lengths, lens_check(lens))))
    took: dict[str, bool] = {}
    original = render._spliced_segments

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        took[args[1].feed_id] = out is not None
        return out

    monkeypatch.setattr(render, "_spliced_segments", spy)
    first_uid = stored.body[stored.body.index(b"UID:", parts.parts["head"]):].split(b"\r\n", 1)[0]
    changed = next(i for i, ev in events.items() if first_uid.decode().startswith(f"UID:{_uid(store, ev)}"))
    events[changed] = replace(events[changed], title="changed in the first segment")
    _poll(config, store, events, NOW.timestamp() + 60)
    render_feeds(config, store, now=NOW)
    assert took["account/acme"] is False and any(took.values())  # the other feeds' parts are sound
    assert stored_bodies(config, store) == from_scratch(config, store, NOW)


def _uid(store: Store, ev: Any) -> str:
    from icsfeed.store.events import event_uid

    return event_uid(ev.source, str(ev.key), store.uid_host)


def test_a_dirty_feed_after_a_bulk_write_reads_no_rows(make_env: Callable[[dict[str, str]], tuple[Config, Store]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row of a first import has the newest version the render listed: a feed marked dirty
    with nothing changed reads the totals and no row, and keeps its body."""
    config, store = make_env({"icsfeed.yaml": PLAIN})
    rnd = random.Random(12)
    events = {i: make_event(i, rnd, NOW) for i in range(90)}
    _poll(config, store, events, NOW.timestamp())
    render_feeds(config, store, now=NOW)
    before = stored_bodies(config, store)
    took, _ = _spy(monkeypatch)
    recent: list[int] = []
    original = Store.feed_changes

    def spy(self: Store, query: Any, since: int, limit: int) -> Any:
        out = original(self, query, since, limit)
        recent.append(len(out.rows))
        return out

    monkeypatch.setattr(Store, "feed_changes", spy)
    store.mark_dirty([s.feed_id for s in all_feeds(config)])
    assert render_feeds(config, store, now=NOW)
    assert took and all(took) and recent and not any(recent), (took, recent)
    assert stored_bodies(config, store) == before == from_scratch(config, store, NOW)


def test_the_changes_read_the_rows_the_feed_query_selects(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> None:
    """Store.feed_changes writes the feed's conditions as SQL text of its own: for every feed
    (accounts, a team with kinds and a severity floor, one of all accounts), an empty one and a
    query of no account, its totals and rows are those of the feed query's rows."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(21)
    events = {i: make_event(i, rnd, NOW) for i in range(150)}
    _poll(config, store, events, NOW.timestamp())
    for i in list(events)[::4]:
        events[i] = replace(events[i], title=f"{events[i].title} again")
    _poll(config, store, events, NOW.timestamp() + 30)
    queries = [s.query(NOW) for s in all_feeds(config)]
    queries.append(replace(queries[0], kinds=frozenset({"ticket", "alert"}), min_severity=2))
    for query in queries:
        ids, seqs, mods = store.feed_versions(query)
        assert ids, query
        got = store.feed_changes(query, max(mods) - 40_000_000, 10_000)  # 40 s back: the second poll's rows
        assert got is not None
        assert (got.count, got.sequence_sum, got.id_sum) == (len(ids), sum(seqs), sum(ids)), query
        since = max(mods) - 40_000_000
        assert sorted((r[0], r[1], r[2]) for r in got.rows) == sorted(
            (i, s, m) for i, s, m in zip(ids, seqs, mods, strict=True) if m > since)
        assert len(store.feed_changes(query, since, 3).rows) == min(3, len(got.rows))  # at most the limit
    assert store.feed_changes(replace(queries[0], account_keys=frozenset()), 0, 10) is None
