"""Rows and feed bodies compressed on disk (issue 11, "database ≤ 1.5 KB per event"):
icsfeed.store.codec. A database from before 0010 is rewritten and reads back the same events,
fragments and bodies; a row keeps decoding after its source group gets a newer dictionary;
an unreadable blob is logged and left out (or rendered again), never a crashed render; a copy
to PostgreSQL keeps the rows and the dictionaries they name."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
import zstandard
from alembic import command
from conftest import storage_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icsfeed.model import Event
from icsfeed.poller import poll_source
from icsfeed.render import render_feeds
from icsfeed.store import FeedQuery, Store, dictionaries_table, events_table, feed_segments_table, feeds_table
from icsfeed.store.codec import DICT_ID_BASE, MAGIC, MAX_SAMPLES, pack_body, unpack_body
from icsfeed.store.copy import copy_database
from icsfeed.store.database import driver_url
from icsfeed.store.events import EventsMixin, _encoded, _storable
from icsfeed.store.migrate import alembic_config, upgrade_url

NOW = datetime.now(timezone.utc).replace(microsecond=0)
EVERYTHING = FeedQuery(start_ts=0.0, end_ts=1e12)


def tickets(n: int, first: int = 0, source: str = "tickets") -> list[Event]:
    return [Event(source=source, key=f"T-{i}", kind="ticket", title=f"Printer {i} on fire; \"urgent\"",
                  detail=f"Ticket {i} of acme: see https://desk.example/tickets/{i}\nassignee: ops",
                  url=f"https://desk.example/tickets/{i}", account="acme", severity=("warning", "critical")[i % 2],
                  start=NOW - timedelta(hours=i), end=NOW - timedelta(hours=i) + timedelta(minutes=30),
                  attrs={"host": f"host-{i % 7}.example"})
            for i in range(first, first + n)]


HOSTILE = [Event(source="odd", key="nul", kind="ticket", title="NUL \x00 in the text", start=NOW, account="acme"),
           Event(source="odd", key="astral", kind="ticket", title="Astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎫", start=NOW, account="acme"),
           Event(source="odd", key="lone", kind="ticket", title="lone \ud800 surrogate", start=NOW, account="acme")]


def fragment_of(ev: Event) -> bytes:
    return (f"BEGIN:VEVENT\r\nUID:{ev.key}@test\r\nSUMMARY:{ev.title.encode('utf-8', 'replace').decode()}\r\n"
            f"DESCRIPTION:{ev.detail}\r\nEND:VEVENT\r\n").encode("utf-8", "replace")


def raw_rows(store: Store) -> dict[str, tuple[bytes, bytes | None]]:
    t = events_table
    with store.engine.connect() as conn:
        return {r.key: (bytes(r.data), None if r.vevent is None else bytes(r.vevent))
                for r in conn.execute(sa.select(t.c.key, t.c.data, t.c.vevent))}


def frame_dict(blob: bytes) -> int:
    assert blob[:4] == MAGIC, blob[:40]
    return zstandard.get_frame_parameters(blob).dict_id


def stored_events(store: Store) -> dict[str, Event]:
    return {str(row.event.key): row.event for row in store.query_events(EVERYTHING)}


def poll(store: Store, events: list[Event], source: str = "tickets") -> None:
    store.apply_poll(source, events, absence="keep", complete=False, now=time.time(), previous_success=None,
                     fragment=lambda row: (fragment_of(row.event), "key1"))


def save_body(store: Store, filler: bytes) -> bytes:
    """A rendered body of account/acme saved (what render_feeds stores), returned as given."""
    body = b"BEGIN:VCALENDAR\r\n" + filler + b"END:VCALENDAR\r\n"
    store.save_feed("account/acme", body, b"", "e1", event_count=1, now=time.time(), render_seconds=0.1,
                    render_key="k", window_day="2026-12-02")
    return body


def test_database_from_0009_is_rewritten_and_reads_back_the_same_events_fragments_and_bodies(
        storage_backend: str, tmp_path: Path) -> None:
    url = storage_backend if storage_backend != "sqlite" else f"sqlite:///{tmp_path / 'data' / 'icsfeed.db'}"
    (tmp_path / "data").mkdir()
    engine = sa.create_engine(driver_url(url))
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "0009")
    events = tickets(150) + tickets(3, first=1000, source="alerts") + HOSTILE
    # the rows as 0009's code wrote them: JSON text, raw fragments and bodies (typeless: as given)
    rows = sa.table("events", *(sa.column(c.name) for c in events_table.columns
                                if c.name not in ("id", "record_digest", "facts", "traits")))
    feeds = sa.table("feeds", *(sa.column(n) for n in ("feed_id", "body", "body_gz", "etag", "last_modified",
                                                       "rendered_at", "event_count", "dirty", "dirty_gen")))
    maker = SimpleNamespace(uid_host="test")
    now = time.time()
    values = []
    for ev in events:
        stored = _storable(ev)  # what apply_poll stores of it (NUL and lone surrogates in keys replaced)
        text, digest = _encoded(stored)
        v = EventsMixin._row_values(maker, stored, digest, now, sequence=2, created=now - 60, blob=text)  # type: ignore[arg-type]
        v["vevent"], v["vevent_key"] = fragment_of(stored), "key1"
        for later in ("record_digest", "facts", "traits"):  # columns of 0011 and 0014, after this schema
            del v[later]
        values.append(v)
    body = b"BEGIN:VCALENDAR\r\n" + b"".join(fragment_of(ev) for ev in events) + b"END:VCALENDAR\r\n"
    with engine.begin() as conn:
        conn.execute(rows.insert(), values)
        conn.execute(feeds.insert().values(feed_id="account/acme", body=body, body_gz=b"", etag="e1", last_modified=now,
                                           rendered_at=now, event_count=len(events), dirty=False, dirty_gen=0))
    engine.dispose()

    if storage_backend != "sqlite":
        upgrade_url(url)  # a shared database: upgraded by hand (SQLite: at start)
    store = Store(url, uid_host="test")
    try:
        assert stored_events(store) == {str(ev.key): ev for ev in events}, "every event as it was"
        rows_back = {row.event.key: row for row in store.query_events(EVERYTHING)}
        assert {r.sequence for r in rows_back.values()} == {2}
        fragments = dict(store.query_fragments(EVERYTHING, "key1"))
        assert {rows_back[str(ev.key)].id: fragment_of(ev) for ev in events} == fragments, "every fragment as it was"
        feed = store.get_feed("account/acme")
        assert feed is not None and feed.body == body and feed.etag == "e1"

        raw = raw_rows(store)
        sizes = sum(len(d) + len(v or b"") for d, v in raw.values())
        before = sum(len(v["data"].encode("utf-8")) + len(v["vevent"]) for v in values)
        assert sizes < before / 3, (sizes, before)
        with store.engine.connect() as conn:
            groups = dict(conn.execute(sa.select(dictionaries_table.c.id, dictionaries_table.c.source_group)).all())
            stored_body = conn.execute(sa.select(feeds_table.c.body)).scalar_one()
        assert set(groups.values()) == {"tickets"}, "only a group with enough rows gets a dictionary"
        assert all(frame_dict(raw[f"T-{i}"][0]) - DICT_ID_BASE in groups for i in range(150))
        assert bytes(stored_body)[:4] == MAGIC and len(stored_body) < len(body) / 3

        changes = store.apply_poll("tickets", tickets(150), absence="keep", complete=True, now=time.time(),
                                   previous_success=None)
        assert (changes.new, changes.updated, changes.unchanged) == (0, 0, 150), "the same content hashes"
    finally:
        store.close()


def test_a_row_written_under_one_dictionary_decodes_after_a_newer_one(storage_backend: str, tmp_path: Path) -> None:
    url = storage_url(tmp_path / "data")
    store = Store(url, uid_host="test")
    try:
        first = tickets(100)
        poll(store, first)
        old = raw_rows(store)
        old_dict = frame_dict(old["T-0"][0])
        assert {frame_dict(d) for d, _v in old.values()} == {old_dict}, "one dictionary for the group's data"
        second = tickets(500, first=100)  # 4x the first batch: a dictionary trained on more
        poll(store, second)
        now_rows = raw_rows(store)
        assert {k: now_rows[k] for k in old} == old, "rows written before are left as they are"
        new_dict = frame_dict(now_rows["T-100"][0])
        assert new_dict != old_dict
        with store.engine.connect() as conn:
            t = dictionaries_table
            kept = conn.execute(sa.select(t.c.id, t.c.samples).where(t.c.field == "data", t.c.source_group == "tickets")
                                .order_by(t.c.id)).all()
        assert [(i + DICT_ID_BASE, n) for i, n in kept] == [(old_dict, 100), (new_dict, min(500, MAX_SAMPLES))]
    finally:
        store.close()
    again = Store(url, uid_host="test")  # nothing held in memory: both dictionaries read from the database
    try:
        assert stored_events(again) == {str(ev.key): ev for ev in first + second}
        listed = dict(again.query_fragments(EVERYTHING, "key1"))
        assert sorted(listed.values()) == sorted(fragment_of(ev) for ev in first + second)
    finally:
        again.close()


CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: ops, name: Ops}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    absence: cancel
    mapping: {kind: ticket, key: id, title: subject, start: created, account: customer}
"""


def write_tickets(config_dir: Path, ids: range) -> None:
    day = NOW - timedelta(days=1)
    (config_dir / "tickets.json").write_text(json.dumps(
        [{"id": i, "subject": f"Printer {i} on fire", "created": (day - timedelta(hours=i)).isoformat(),
          "customer": "acme"} for i in ids]))


def test_unreadable_blobs_are_logged_and_skipped_not_a_crashed_render(make_env: object,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    write_tickets(config.config_dir, range(80))
    assert poll_source(config, store, "tickets").new == 80
    render_feeds(config, store)
    body = store.get_feed("account/acme").body
    assert b"Printer 1 on fire" in body and b"Printer 2 on fire" in body and b"Printer 3 on fire" in body

    other = zstandard.train_dictionary(4096, [f"Printer {i} on fire, not ours {i * 7}".encode() for i in range(200)],
                                       dict_id=DICT_ID_BASE + 999)
    t = events_table
    with store.engine.begin() as conn:
        data_of_3 = conn.execute(sa.select(t.c.data).where(t.c.key == "3")).scalar_one()
        # changed (a new last_modified, so no render reuses their text from the previous body) and
        # without their fragments: rendered from their events, which cannot be read
        changed = t.c.last_modified + 1
        conn.execute(t.update().where(t.c.key == "1").values(data=MAGIC + b"\x00garbage", vevent=None,
                                                             last_modified=changed))  # a corrupt frame
        conn.execute(t.update().where(t.c.key == "2").values(vevent=MAGIC + b"garbage too",
                                                             last_modified=changed))  # its event is fine
        unknown = zstandard.ZstdCompressor(dict_data=other).compress(bytes(data_of_3))
        conn.execute(t.update().where(t.c.key == "3").values(data=unknown, vevent=None,
                                                             last_modified=changed))  # a dictionary this database lacks
    store.mark_dirty(["account/acme"])
    caplog.set_level(logging.WARNING, "icsfeed.store")
    render_feeds(config, store)
    body = store.get_feed("account/acme").body
    assert b"Printer 1 on fire" not in body and b"Printer 3 on fire" not in body, "unreadable events left out"
    assert b"Printer 2 on fire" in body and b"Printer 4 on fire" in body, "a bad fragment is rendered again"
    logged = [r.getMessage() for r in caplog.records]
    assert any("event" in m and "cannot be read" in m and "not a readable zstd frame" in m for m in logged), logged
    assert any("does not hold" in m for m in logged), logged
    assert frame_dict(raw_rows(store)["2"][1] or b"") > 0, "the fragment rendered again is stored again"

    write_tickets(config.config_dir, range(2, 80))  # 0 and 1 gone: cancelled, the unreadable one left as it is
    report = poll_source(config, store, "tickets")
    assert report.ok and report.cancelled == 1, report.line()
    assert any("cannot be read" in m and "marked gone" in m for m in [r.getMessage() for r in caplog.records])

    with store.engine.begin() as conn:  # the body is stored as segments (feed_segments): one of them unreadable
        conn.execute(feed_segments_table.update().where(feed_segments_table.c.feed_id == "account/acme")
                     .values(blob=MAGIC + b"bad"))
    assert store.get_feed("account/acme") is None, "an unreadable body is no body"
    assert store.feed_render_states()["account/acme"][0], "and the feed is marked for a new render"
    render_feeds(config, store)
    again = store.get_feed("account/acme")
    assert again is not None and b"Printer 4 on fire" in again.body


def test_copy_to_postgresql_keeps_compressed_rows_and_their_dictionaries(tmp_path: Path, pg_url: str) -> None:
    source = Store(f"sqlite:///{tmp_path / 'data' / 'icsfeed.db'}", uid_host="test")
    target = Store(pg_url, uid_host="test")
    try:
        poll(source, tickets(120))
        poll(source, HOSTILE, source="odd")
        body = save_body(source, b"x" * 10_000)
        copy_database(source, target)
        assert stored_events(target) == stored_events(source) == {str(ev.key): ev for ev in tickets(120) + HOSTILE}
        assert sorted(dict(target.query_fragments(EVERYTHING, "key1")).items()) == \
            sorted(dict(source.query_fragments(EVERYTHING, "key1")).items())
        assert raw_rows(target) == raw_rows(source), "copied as stored"
        assert target.get_feed("account/acme").body == body
        poll(target, tickets(80, first=1000, source="alerts"), source="alerts")  # a new dictionary: the id sequence goes on
        with target.engine.connect() as conn:
            ids = conn.execute(sa.select(dictionaries_table.c.id).order_by(dictionaries_table.c.id)).scalars().all()
        assert len(ids) == 4 and len(set(ids)) == 4
        assert len(stored_events(target)) == 203
    finally:
        source.close()
        target.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=80), group=st.sampled_from(["a", "insight-x:acme"]))
def test_encoded_values_decode_to_what_was_written(tmp_path: Path, texts: list[str], group: str) -> None:
    """Whatever the value (compressible or not, a dictionary trained or not), it reads back."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        values = [json.dumps({"t": t}).encode() for t in texts] * 2
        with store.engine.begin() as conn:
            packed = store.codec.encode_values(conn, "data", [group] * len(values), list(values))
        assert [store.codec.decode(b) for b in packed if b is not None] == values
        assert pack_body(values[0]) and unpack_body(pack_body(values[0])) == values[0]
    finally:
        store.close()


def test_downgrade_to_0009_writes_the_rows_back_as_json_text(storage_backend: str, tmp_path: Path) -> None:
    url = storage_url(tmp_path / "data")
    store = Store(url, uid_host="test")
    events = tickets(40) + HOSTILE
    try:
        poll(store, tickets(40))
        poll(store, HOSTILE, source="odd")
        body = save_body(store, b"y" * 5000)
        with store.engine.connect() as conn, conn.begin():
            command.downgrade(alembic_config(conn), "0009")
        t = events_table
        with store.engine.connect() as conn:
            rows = {r.key: r for r in conn.execute(sa.text("SELECT key, data, vevent FROM events"))}
            stored_body = conn.execute(sa.text("SELECT body FROM feeds")).scalar_one()
            tables = sa.inspect(conn).get_table_names()
        assert "dictionaries" not in tables and t.name in tables
        assert {k: r.data for k, r in rows.items()} == {str(_storable(ev).key): _encoded(_storable(ev))[0] for ev in events}
        assert {k: bytes(r.vevent) for k, r in rows.items()} == {str(ev.key): fragment_of(ev) for ev in events}
        assert bytes(stored_body) == body
    finally:
        store.close()


def _frame_ids(blobs: list[bytes | None]) -> set[int]:
    return {zstandard.get_frame_parameters(b).dict_id for b in blobs if b is not None and b[:4] == MAGIC}


def test_the_list_of_dictionaries_is_held_a_while_and_never_from_a_training_transaction(
        storage_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding reads the dictionaries table at most every INFOS_SECONDS: a dictionary another
    process trains is used once that time is over. A transaction that trains one and is rolled
    back leaves nothing held that names it: what is encoded next uses a dictionary that is there."""
    import icsfeed.store.codec as codec_module

    url = storage_url(tmp_path / "data")
    one, other = Store(url, uid_host="test"), Store(url, uid_host="test")
    clock = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: clock[0])
    values = [fragment_of(ev) for ev in tickets(40)]
    queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM dictionaries" in statement:
            queries.append(statement)

    sa.event.listen(one.engine, "before_cursor_execute", count)
    try:
        with one.engine.begin() as conn:  # trains the group's first dictionary
            first = one.codec.encode_values(conn, "vevent", ["g"] * 40, list(values))
        with one.engine.begin() as conn:
            again = one.codec.encode_values(conn, "vevent", ["g"] * 40, list(values))
        assert _frame_ids(again) == _frame_ids(first) and len(_frame_ids(first)) == 1
        queries.clear()
        for _ in range(3):
            with one.engine.begin() as conn:
                one.codec.encode_values(conn, "vevent", ["g"] * 2, values[:2])
        assert len(queries) == 0  # held
        with other.engine.begin() as conn:  # another process trains a newer one on 4x the batch
            newer = other.codec.encode_values(conn, "vevent", ["g"] * 160, list(values) * 4)
        assert _frame_ids(newer) != _frame_ids(first)
        with one.engine.begin() as conn:
            held = one.codec.encode_values(conn, "vevent", ["g"] * 2, values[:2])
        assert _frame_ids(held) == _frame_ids(first)  # within the time: the one it knew
        clock[0] += codec_module.INFOS_SECONDS + 1
        with one.engine.begin() as conn:
            later = one.codec.encode_values(conn, "vevent", ["g"] * 2, values[:2])
        assert _frame_ids(later) == _frame_ids(newer)  # read again: the newer one
        assert [one.codec.decode(b) for b in later if b is not None] == values[:2]

        # a training transaction rolled back: what it read is not held
        with pytest.raises(RuntimeError), one.engine.begin() as conn:
            trained = one.codec.encode_values(conn, "vevent", ["h"] * 40, list(values))
            one.codec.encode_values(conn, "vevent", ["h"] * 2, values[:2])
            assert len(_frame_ids(trained)) == 1
            raise RuntimeError("rolled back")
        assert "vevent" not in one.codec._held_infos
        with one.engine.begin() as conn:
            after = one.codec.encode_values(conn, "vevent", ["h"] * 2, values[:2])
        assert not _frame_ids(after) & _frame_ids(trained)  # too few to train: no dictionary, not the gone one
        assert [one.codec.decode(b) for b in after if b is not None] == values[:2]
    finally:
        one.close()
        other.close()
