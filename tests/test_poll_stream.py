"""Issue 11, a first import's memory and CPU: the records of a full dump nothing is known of
are mapped as the store takes their events (``EventStream``), new rows are held encoded, and a
zstd frame is held in a bytes object of its own size. Each is checked against the path it
replaced: the same rows (ids included), report and recorded result as the list of events."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import zstandard
from conftest import open_env
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import write_config
from sqlalchemy import select

import icsfeed.poller as poller
import icsfeed.store.events as events_mod
from icsfeed.model import MAX_URL, Event
from icsfeed.sources.file import FileSource
from icsfeed.store import Store
from icsfeed.store.codec import pack
from icsfeed.store.schema import events_table, source_state_table

NOW = datetime.now(timezone.utc).replace(microsecond=0)

CONFIG = """
accounts:
  - {id: acme, name: Acme, timezone: Europe/Berlin}
  - {id: globex, name: Globex}
sources:
  - id: alerts
    type: file
    path: alerts.jsonl
    mapping: {kind: alert, key: id, title: title, start: start, end: end, account: org, detail: body,
              severity: sev, url: "https://mon.example/a/{id}", attrs: {host: host}}
"""


def answer(n: int) -> str:
    """JSON Lines of ``n`` alerts and the hostile ones: a broken line, a record without a start,
    an end before its start, a key sent twice (batches apart), a key too long for a feed, NUL in
    a key, a naive time (the account's zone), an open alert."""
    lines = []
    for i in range(n):
        start = NOW - timedelta(minutes=7 * i)
        lines.append(json.dumps({"id": f"a{i}", "title": f"disk {i}", "start": start.isoformat(),
                                 "end": (start + timedelta(minutes=5)).isoformat(), "org": ("acme", "globex")[i % 2],
                                 "body": f"host h{i % 5}", "sev": ("warning", "critical")[i % 2], "host": f"h{i % 5}"}))
    lines[3] = "{not json"
    lines[5] = json.dumps({"id": "no-start", "title": "x"})
    lines[8] = json.dumps({"id": "backwards", "title": "x", "start": NOW.isoformat(),
                           "end": (NOW - timedelta(hours=1)).isoformat()})
    lines[9] = json.dumps({"id": "k" * 600, "title": "long", "start": NOW.isoformat()})
    lines[11] = json.dumps({"id": "nul\u0000key", "title": "nul", "start": NOW.isoformat()})
    lines[12] = json.dumps({"id": "naive", "title": "naive", "start": "2026-03-29T02:30:00", "org": "acme"})
    lines[13] = json.dumps({"id": "open", "title": "firing", "start": NOW.isoformat()})
    lines.append(json.dumps({"id": "a1", "title": "disk 1 again", "start": NOW.isoformat()}))  # sent twice
    return "\n".join(lines) + "\n"


def stored(store: Store) -> dict[str, dict[str, Any]]:
    """Every column of every row (the id too: the insert order), blobs decoded, by key."""
    with store.engine.connect() as conn:
        rows = {r.key: r._asdict() for r in conn.execute(select(*events_table.c))}
    for row in rows.values():
        row["data"] = store.codec.text(row["data"])
        row["vevent"] = store.codec.decode(row["vevent"]) if row["vevent"] is not None else None
    return rows


def last_result(store: Store) -> Any:
    with store.engine.connect() as conn:
        return json.loads(conn.execute(select(source_state_table.c.last_result)).scalar_one())


@pytest.fixture
def two(tmp_path: Path, another_store: Callable[[], None]) -> Iterator[Callable[[str], tuple[Any, Any]]]:
    made: list[Store] = []

    def make(text: str) -> tuple[Any, Any]:
        worlds = []
        for name in ("stream", "list"):
            if worlds:
                another_store()
            config, store = open_env(write_config(tmp_path / name, {"a.yaml": CONFIG}), tmp_path / f"data-{name}")
            (config.config_dir / "alerts.jsonl").write_text(text, encoding="utf-8")
            made.append(store)
            worlds.append((config, store))
        return worlds[0], worlds[1]

    yield make
    for store in made:
        store.close()


def list_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller as before: no source streams (every record mapped into a list first)."""
    monkeypatch.setattr(poller, "MappedSource", type("NoStream", (), {}))


def test_a_streamed_first_import_stores_what_the_list_of_events_stores(
        two: Callable[[str], tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows (ids, columns, decoded blobs), the report and the recorded result (fetched, the
    skipped and their order) are the list path's, with batches of 7 (a key sent twice lands in
    an encoded batch) and then a poll of the same file with one record edited."""
    (c1, streamed), (c2, listed) = two(answer(40))
    monkeypatch.setattr(events_mod, "INSERT_BATCH", 7)
    now = NOW.timestamp()
    got = poller.poll_source(c1, streamed, "alerts", now=now)
    with monkeypatch.context() as m:
        list_path(m)
        want = poller.poll_source(c2, listed, "alerts", now=now)
    assert got.ok and want.ok
    assert (got.new, got.updated, got.unchanged, got.skipped) == (want.new, want.updated, want.unchanged, want.skipped)
    assert len(got.skipped) == 4 and got.skipped[0].startswith("line 4")  # the broken line first, as before
    assert stored(streamed) == stored(listed)
    assert last_result(streamed) == last_result(listed)
    for config in (c1, c2):  # then a poll that knows the records: the list path in both
        path = config.config_dir / "alerts.jsonl"
        path.write_text(path.read_text(encoding="utf-8").replace('"disk 20"', '"disk 20 (edited)"'), encoding="utf-8")
    assert poller.poll_source(c1, streamed, "alerts", now=now + 60).updated == 1
    with monkeypatch.context() as m:
        list_path(m)
        assert poller.poll_source(c2, listed, "alerts", now=now + 60).updated == 1
    assert stored(streamed) == stored(listed)


def test_records_are_mapped_as_the_store_takes_their_events(make_env: Callable[..., Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """When the store renders the first event's VEVENT, only the first record has been mapped
    (before, every record was mapped into a list before the store was called)."""
    config, store = make_env({"a.yaml": CONFIG})
    (config.config_dir / "alerts.jsonl").write_text(answer(30), encoding="utf-8")
    mapped: list[int] = []
    real = FileSource.to_event

    def to_event(self: FileSource, record: Any) -> Event:
        mapped.append(1)
        return real(self, record)

    monkeypatch.setattr(FileSource, "to_event", to_event)
    seen: list[int] = []
    renderer = poller.fragment_renderer

    def fragment_renderer(cfg: Any) -> Any:
        render = renderer(cfg)

        def counted(row: Any) -> Any:
            seen.append(len(mapped))
            return render(row)
        return counted

    monkeypatch.setattr(poller, "fragment_renderer", fragment_renderer)
    report = poller.poll_source(config, store, "alerts")
    assert report.ok and report.new == len(stored(store)) > 20
    assert seen[0] == 1 and seen == sorted(seen) and len(mapped) == 30  # 31 lines, one not JSON


def test_a_mapping_that_raises_half_way_is_the_sources_failure(make_env: Callable[..., Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An error past the mapping's own checks, raised while the store takes the events: the
    poll is rolled back and recorded as the source's failure, as one raised by fetch was."""
    config, store = make_env({"a.yaml": CONFIG})
    (config.config_dir / "alerts.jsonl").write_text(answer(30), encoding="utf-8")
    real = FileSource.to_event
    calls: list[int] = []

    def to_event(self: FileSource, record: Any) -> Event:
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("mapping bug")
        return real(self, record)

    monkeypatch.setattr(FileSource, "to_event", to_event)
    report = poller.poll_source(config, store, "alerts")
    assert not report.ok and report.error == "RuntimeError: mapping bug" and report.failures == 1
    assert stored(store) == {}
    monkeypatch.setattr(FileSource, "to_event", real)
    assert poller.poll_source(config, store, "alerts").new > 20  # the next poll imports it all


def test_a_packed_frame_holds_its_own_size() -> None:
    """zstandard's output buffer is the worst case's (more than the input); pack keeps a copy
    of the frame's size: 1,000 frames of 500-byte rows hold ≈ 100 bytes each, not ≈ 600."""
    cctx = zstandard.ZstdCompressor(level=3)
    values = [json.dumps({"title": f"alert {i}", "detail": "disk full " * 40}).encode() for i in range(1000)]
    tracemalloc.start()
    try:
        packed = [pack(cctx, v) for v in values]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert [zstandard.ZstdDecompressor().decompress(p) for p in packed] == values
    assert held / len(packed) < 200


WHEN = st.one_of(st.datetimes(timezones=st.just(timezone.utc)),
                 st.datetimes(timezones=st.sampled_from([timezone(timedelta(hours=2)), timezone.utc])),
                 st.dates(), st.datetimes())


@settings(max_examples=300, deadline=None)
@given(start=WHEN, end=st.none() | WHEN, key=st.sampled_from(["", "k"]), source=st.sampled_from(["", "s"]),
       status=st.sampled_from(["confirmed", "cancelled", "bogus"]))
def test_mapped_event_is_the_constructors(start: datetime | date, end: datetime | date | None, key: str,
                                          source: str, status: str) -> None:
    """Event.mapped gives the constructor's Event, or raises its error, for any times."""
    fields = dict(source=source, key=key, kind="alert", title="t", start=start, end=end, detail="d", url=None,
                  account="acme", status=status, severity=None, attrs={"host": "h"}, rrule=None)
    try:
        want: Any = Event(**fields)  # type: ignore[arg-type]
    except ValueError as exc:
        want = repr(exc)
    try:
        got: Any = Event.mapped(**fields)  # type: ignore[arg-type]
    except ValueError as exc:
        got = repr(exc)
    assert got == want
    if isinstance(got, Event):
        assert got.to_dict() == want.to_dict() and vars(got) == vars(want)


@settings(max_examples=300, deadline=None)
@given(title=st.text(max_size=30), detail=st.text(max_size=30), url=st.none() | st.just("u" * (MAX_URL + 1)) | st.text(),
       attrs=st.dictionaries(st.text(max_size=3), st.text(max_size=30) | st.integers() | st.lists(st.text(max_size=30)),
                             max_size=4))
def test_bounded_shortcut_is_the_general_cut(title: str, detail: str, url: str | None, attrs: dict[str, Any]) -> None:
    """Nothing to cut: the same Event; else what the general cut gives (attrs as another
    Mapping take the general path: limits of 10 and 20)."""
    ev = Event(source="s", key="k", kind="alert", title=title, start=NOW, detail=detail, url=url, attrs=attrs)
    general = Event(source="s", key="k", kind="alert", title=title, start=NOW, detail=detail, url=url,
                    attrs=MappingProxyType(attrs)).bounded(10, 20)
    got = ev.bounded(10, 20)
    assert (got.title, got.detail, got.url, dict(got.attrs)) == (general.title, general.detail, general.url,
                                                                 dict(general.attrs))
    nothing_cut = (general.title, general.detail, general.url, dict(general.attrs)) == (title, detail, url, attrs)
    assert (got is ev) == nothing_cut or (not nothing_cut and got is not ev)
    if nothing_cut:
        assert got is ev
