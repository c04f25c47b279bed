"""Issue 11, the write path of a first import: a poll works out and encodes every row (JSON,
content hash, VEVENT, zstd) before its transaction's first write, so that on SQLite a second
poller is not held by the write lock while this one renders; a dictionary trained on the way
is committed on its own; helpers start as soon as a source's answer has events to write.
Each path is checked against the slow one. Speed: benchmarks/bench_scale.py."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import open_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import icsfeed.poller as poller
import icsfeed.store.events as events_mod
from icsfeed.config import Config
from icsfeed.model import Event
from icsfeed.render import fragment_renderer
from icsfeed.store import Store
from icsfeed.store.codec import MAGIC
from icsfeed.store.database import sqlite_path
from icsfeed.store.events import EventRow, _encoded, _json_bytes, _storable
from icsfeed.store.facts import row_facts
from icsfeed.store.schema import dictionaries_table, events_table

NOW = datetime.now(timezone.utc).replace(microsecond=0)
CONFIG = """
accounts:
  - {id: acme, name: Acme}
sources:
  - id: src
    type: file
    path: src.jsonl
    mapping: {kind: alert, key: id, title: title, start: start, account: org, detail: body}
"""


def hostile_events(n: int) -> list[Event]:
    """Events as a poll gets them, with what the store has to fix or refuse: NUL and lone
    surrogates in keys and accounts, emoji and surrogates in text, a key sent twice, a key
    too long to store."""
    out = []
    for i in range(n):
        key = (f"k{i}", f"k\x00{i}", f"k\ud800{i}", "x" * 600)[i % 4] if i % 7 else f"k{i % 5}"
        out.append(Event(source="src", key=key, kind="alert", title=f"t{i} \U0001f525 \ud83d" if i % 3 else f"t{i}",
                         start=NOW - timedelta(minutes=i), end=None if i % 2 else NOW + timedelta(minutes=i),
                         detail="line\n" * (i % 4), account=("acme", "ac\x00me", None)[i % 3],
                         severity=("warning", "critical", None)[i % 3], attrs={"n": i, "tags": ["a", str(i)]}))
    return out


def stored(store: Store) -> dict[str, dict[str, Any]]:
    """Every row by key, its blobs decoded, its id left out."""
    t = events_table
    with store.engine.connect() as conn:
        rows = conn.execute(select(t)).mappings().all()
    out = {}
    for r in rows:
        row = dict(r)
        row.pop("id")
        row["data"] = store.codec.text(row["data"])
        row["vevent"] = store.codec.decode(row["vevent"]) if row["vevent"] is not None else None
        row["gone"], row["recurring"], row["is_open"] = bool(row["gone"]), bool(row["recurring"]), bool(row["is_open"])
        out[row["key"]] = row
    return out


def _poll(config: Config, store: Store, events: list[Event], now: float,
          fragment: Callable[[EventRow], Any] | None = None) -> events_mod.PollChanges:
    return store.apply_poll("src", events, absence="keep", complete=True, now=now, previous_success=None,
                            fragment=fragment or fragment_renderer(config))


def test_rows_written_in_encoded_batches_are_the_rows_of_one_batch(make_env: Callable[..., tuple[Config, Store]],
                                                                   tmp_path: Path, another_store: Callable[[], None],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 20 (each encoded as it fills, dictionaries trained and committed on the way)
    store, column for column, what one batch of all of them stores, and each row's JSON and
    content hash are the event's (``Event.content_hash``, json.dumps of ``to_dict``); the
    hostile keys are stored fixed or logged and skipped, the same in both."""
    config, batched = make_env({"icsfeed.yaml": CONFIG})
    another_store()
    _, whole = open_env(config.config_dir, tmp_path / "data-whole")
    events = hostile_events(120)
    now = time.time()
    monkeypatch.setattr(events_mod, "INSERT_BATCH", 20)  # a dictionary trained from the first batch
    got = _poll(config, batched, events, now)
    monkeypatch.setattr(events_mod, "INSERT_BATCH", 10**6)
    want = _poll(config, whole, events, now)
    assert (got.new, got.duplicates, got.skipped) == (want.new, want.duplicates, want.skipped)
    assert got.skipped and got.duplicates and got.new == len(stored(batched))
    assert got.touched == want.touched
    rows = stored(batched)
    assert rows == stored(whole)
    with batched.engine.connect() as conn:  # the batched rows really are compressed with dictionaries
        assert conn.execute(select(dictionaries_table.c.id)).first() is not None
        blobs = [bytes(b) for b in conn.execute(select(events_table.c.data)).scalars()]
    assert any(b[:4] == MAGIC for b in blobs)
    last: dict[str, Event] = {}
    for ev in events:
        fixed = _storable(ev)
        if len(fixed.key) <= events_mod.EVENT_KEY_LENGTH:
            last[fixed.key] = fixed
    assert set(rows) == set(last)
    for key, ev in last.items():
        row = rows[key]
        assert row["content_hash"] == ev.content_hash()
        legacy = json.dumps(ev.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
        try:
            legacy.encode("utf-8")
        except UnicodeEncodeError:
            legacy = json.dumps(ev.to_dict(), sort_keys=True, default=str)
        assert row["data"] == legacy == _encoded(ev)[0]
        assert (row["sequence"], row["created"], row["last_modified"], row["gone"]) == (0, now, now, False)
        assert row["vevent"].startswith(b"BEGIN:VEVENT")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.text(), detail=st.text(), attrs=st.dictionaries(st.text(max_size=5), st.text() | st.integers()),
       key=st.text(min_size=1))
def test_stored_json_is_json_dumps_of_the_event(title: str, detail: str, attrs: dict[str, Any], key: str) -> None:
    """The shared encoder gives json.dumps's text, and its hash, for any text (lone surrogates
    ASCII-escaped, their hash taken of the raw text as before), and the row's facts are those
    of the stored JSON read back."""
    ev = Event(source="s", key=key, kind="alert", title=title or "t", start=NOW, end=None, detail=detail, attrs=attrs)
    raw, digest, facts = _json_bytes(ev)
    text = json.dumps(ev.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
    assert facts == row_facts(json.loads(raw))  # what a refresh works out for a row stored without them
    assert digest == ev.content_hash()
    try:
        assert raw == text.encode("utf-8")
    except UnicodeEncodeError:
        assert raw == json.dumps(ev.to_dict(), sort_keys=True, default=str).encode("ascii")
    assert json.loads(raw) == json.loads(text)


def test_a_poll_holds_no_write_lock_while_it_renders_and_encodes(
        make_env: Callable[..., tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch, storage_backend: str) -> None:
    """While the poll renders its last VEVENT (several batches are encoded by then, and a
    dictionary trained), another writer gets the database at once: on SQLite the poll has not
    taken the write lock yet (before, its first batch's insert had, until its commit). On
    PostgreSQL the other writer marks the feed the poll marks too."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    monkeypatch.setattr(events_mod, "INSERT_BATCH", 10)
    events = [ev for ev in hostile_events(57) if "\x00" not in ev.key and len(ev.key) < 100]
    render = fragment_renderer(config)
    seen: list[str] = []
    probes: list[str] = []

    def fragment(row: EventRow) -> Any:
        seen.append(str(row.event.key))
        if len(seen) == len({str(ev.key) for ev in events}):  # the last one: every batch before it encoded
            probes.append(other_writer(store, storage_backend))
        return render(row)

    changes = _poll(config, store, events, time.time(), fragment)
    assert probes == ["written"]
    assert changes.new == len(stored(store)) > 20


def other_writer(store: Store, backend: str) -> str:
    """Write something else right now, waiting at most 0.2 s for a lock."""
    path = sqlite_path(store.url)
    if backend == "sqlite":
        assert path is not None
        conn = sqlite3.connect(path, timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")  # SQLite's write lock
            conn.execute("INSERT INTO insights_due (account_key, gen) VALUES ('probe', 1)")
            conn.commit()
            return "written"
        except sqlite3.OperationalError as exc:
            return str(exc)
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(store.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        conn.execute("INSERT INTO insights_due (account_key, gen) VALUES ('probe', 1)")
    return "written"


def test_a_dictionary_trained_apart_outlives_a_rolled_back_poll(make_env: Callable[..., tuple[Config, Store]],
                                                               tmp_path: Path) -> None:
    """``apart``: the dictionary is committed at once, so the values it encoded decode in a
    store opened afterwards even though the transaction they were encoded in rolled back;
    without it, the dictionary goes with the transaction, as before."""
    _, store = make_env({"icsfeed.yaml": CONFIG})
    values = [json.dumps({"title": f"backup of host-{i}.example", "n": i}).encode() for i in range(40)]
    with pytest.raises(RuntimeError), store.engine.begin() as conn:
        packed = store.codec.encode_values(conn, "data", ["src"] * len(values), list(values), apart=True)
        store.codec.encode_values(conn, "vevent", ["src"] * len(values), list(values))  # in the transaction
        raise RuntimeError("the poll fails after encoding")
    with store.engine.connect() as conn:
        fields = [r.field for r in conn.execute(select(dictionaries_table.c.field))]
    assert fields == ["data"]
    fresh = Store(store.url, uid_host="test")
    try:
        assert [fresh.codec.decode(p) for p in packed] == values  # type: ignore[arg-type]
        assert all(p[:4] == MAGIC for p in packed)  # type: ignore[index]
    finally:
        fresh.close()


def test_helpers_start_before_the_first_changed_answer_is_written(make_env: Callable[..., tuple[Config, Store]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``answer_changed`` (what ``poll --once`` starts its helpers with) is called after the
    fetch and before the store writes, and not for an answer that has not changed."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    (config.config_dir / "src.jsonl").write_text(
        "".join(json.dumps({"id": i, "title": f"t{i}", "start": NOW.isoformat(), "org": "acme"}) + "\n"
                for i in range(5)), encoding="utf-8")
    order: list[str] = []
    real = Store.apply_poll

    def apply_poll(self: Store, *args: Any, **kwargs: Any) -> Any:
        order.append("write")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "apply_poll", apply_poll)
    report = poller.poll_source(config, store, "src", answer_changed=lambda: order.append("helpers"))
    assert report.new == 5 and order == ["helpers", "write"]
    order.clear()
    report = poller.poll_source(config, store, "src", answer_changed=lambda: order.append("helpers"))
    assert report.ok and order == []  # the same answer: neither

