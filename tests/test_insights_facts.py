"""Row facts (icsfeed/store/facts.py): kept with each row, they let a refresh tell that only
fields a detector never reads changed without decoding any row.

Checked: the column written by every write path equals the function over the stored JSON
(hostile text included); a refresh after a title-only change decodes no event row, runs
only the detectors that read titles, and keeps the flags a full recompute makes; rows
stored without facts (before migration 0014) give the same decisions and get their facts
written back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from test_insights_inputs import NOW, history, loaded, refresh_reused, runs  # noqa: F401  (the fixture)
from test_insights_support import make_config

from icsfeed.insights import refresh_account, settings_of
from icsfeed.store import Store
from icsfeed.store.events import EventsMixin
from icsfeed.store.facts import COUNTED, FACT_SETS, TEXT, facts_part, row_facts
from icsfeed.store.schema import events_table


def _stored(store: Store) -> list[tuple[Any, ...]]:
    t = events_table
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t.c.id, t.c.kind, t.c.data, t.c.facts, t.c.content_hash))]


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Event rows decoded, by kind."""
    counted: Counter[str] = Counter()
    original = EventsMixin._event_row

    def counting(self: EventsMixin, r: tuple[Any, ...]) -> Any:
        row = original(self, r)
        if row is not None:
            counted[row.event.kind] += 1
        return row

    monkeypatch.setattr(EventsMixin, "_event_row", counting)
    yield counted


def test_every_write_keeps_the_facts_of_its_stored_json(tmp_path: Path) -> None:
    config, store, by_source = loaded(tmp_path)
    refresh_reused(config, store, NOW)  # flags written by the insights' polls
    ticket = by_source["tickets"][0]
    store.apply_poll("tickets", [replace(ticket, title="Changed", attrs={"state": "open"})], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    store.apply_poll("alerts", by_source["alerts"][1:], absence="close", complete=True, now=NOW.timestamp() + 60,
                     previous_success=NOW.timestamp())  # one closed by absence
    rows = _stored(store)
    assert {r[1] for r in rows} >= {"alert", "backup", "ticket", "insight"}
    for _id, _kind, data, facts, _hash in rows:
        assert facts is not None and len(facts) == 64
        assert facts == row_facts(json.loads(store.codec.text(data)))


def test_facts_differ_by_exactly_the_fields_they_are_not_blind_to() -> None:
    ev = history()[0]
    base = row_facts(ev.to_dict())
    title = row_facts(replace(ev, title="other").to_dict())
    attrs = row_facts(replace(ev, attrs={"host": "elsewhere"}).to_dict())
    start = row_facts(replace(ev, start=ev.start + timedelta(minutes=1)).to_dict())  # type: ignore[operator]
    assert facts_part(base, TEXT) == facts_part(title, TEXT) and facts_part(base, COUNTED) == facts_part(title, COUNTED)
    assert facts_part(base, TEXT) != facts_part(attrs, TEXT) and facts_part(base, COUNTED) == facts_part(attrs, COUNTED)
    assert facts_part(base, TEXT) != facts_part(start, TEXT) and facts_part(base, COUNTED) != facts_part(start, COUNTED)
    assert facts_part(base, frozenset({"title"})) is None  # a set the column keeps nothing for
    assert len(FACT_SETS) == 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), attr=st.text(max_size=20))
def test_facts_of_hostile_text_are_those_of_the_stored_json(tmp_path_factory: pytest.TempPathFactory,
                                                            text: str, attr: str) -> None:
    root = tmp_path_factory.mktemp("facts")
    config = make_config(root)
    store = Store(config.storage_url, uid_host=config.uid_host)
    try:
        ev = replace(history()[0], title=text or "x", detail=text, attrs={"note": attr})
        store.apply_poll("backups", [ev], absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
        [(_id, _kind, data, facts, _hash)] = _stored(store)
        assert facts == row_facts(json.loads(store.codec.text(data)))
    finally:
        store.close()


def test_a_title_change_is_told_from_the_versions_without_decoding_a_row(
        tmp_path: Path, runs: Counter[str], decoded: Counter[str]) -> None:  # noqa: F811
    config, store, by_source = loaded(tmp_path)
    refresh_reused(config, store, NOW)
    refresh_reused(config, store, NOW + timedelta(minutes=1))  # recorded: the next refresh can skip
    backup = by_source["backups"][5]
    store.apply_poll("backups", [replace(backup, title="Backup (renamed)", detail="more")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    runs.clear()
    decoded.clear()
    refresh_reused(config, store, NOW + timedelta(minutes=2))
    assert set(runs) == set()  # backups read no run's text; the summary counts it
    assert set(decoded) <= {"insight"}, decoded  # bursts' own flags only (what it `sees`)
    # a change the backups detector reads still runs it (and the summary, which counts its flags)
    moved = replace(backup, start=backup.start + timedelta(hours=30), end=backup.end + timedelta(hours=30))  # type: ignore[operator]
    store.apply_poll("backups", [moved], absence="keep", complete=False, now=NOW.timestamp(), previous_success=None)
    runs.clear()
    refresh_reused(config, store, NOW + timedelta(minutes=3))
    assert "backups" in runs


def test_rows_stored_without_facts_decide_alike_and_get_them_written_back(
        tmp_path: Path, runs: Counter[str], another_store: Any) -> None:  # noqa: F811
    another_store()
    config, store, by_source = loaded(tmp_path / "a")
    refresh_reused(config, store, NOW)
    refresh_reused(config, store, NOW + timedelta(minutes=1))
    with store.engine.begin() as conn:  # as an installation upgraded to 0014 has them
        conn.execute(update(events_table).values(facts=None))
    backup = by_source["backups"][5]
    store.apply_poll("backups", [replace(backup, title="Backup (renamed)")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    runs.clear()
    refresh_reused(config, store, NOW + timedelta(minutes=2))
    assert set(runs) == set()
    rows = _stored(store)
    filled = [r for r in rows if r[1] != "insight" and r[3] is not None]
    assert len(filled) >= len([r for r in rows if r[1] == "backup"])  # at least every row a blind read took
    for _id, _kind, data, facts, _hash in filled:
        assert facts == row_facts(json.loads(store.codec.text(data)))
    # the same flags as a store that never lost its facts, and as a full recompute
    another_store()
    ref_config, ref, _ = loaded(tmp_path / "b")
    for when in (NOW, NOW + timedelta(minutes=1)):
        refresh_account(ref_config, ref, settings_of(ref_config), ref_config.accounts["acme"], when.timestamp(),
                        reuse=False)
    ref.apply_poll("backups", [replace(backup, title="Backup (renamed)")], absence="keep",
                   complete=False, now=NOW.timestamp(), previous_success=None)
    refresh_account(ref_config, ref, settings_of(ref_config), ref_config.accounts["acme"],
                    (NOW + timedelta(minutes=2)).timestamp(), reuse=False)

    def flags(s: Store) -> list[tuple[Any, ...]]:
        t = events_table
        with s.engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(select(t.c.source, t.c.key, t.c.content_hash, t.c.gone)
                                                        .where(t.c.kind == "insight", t.c.account_key == "acme")))
    assert flags(store) == flags(ref)
    store.close()
    ref.close()


@pytest.mark.parametrize("only", ["stale_tickets", "backups", "summary"])
def test_one_detector_alone_still_records_what_it_read(tmp_path: Path, runs: Counter[str], only: str) -> None:  # noqa: F811
    """With one detector on, the history reads only what it asks for (the stale-ticket kinds
    alone, its own flags alone); the first refresh still records its inputs, so the next one
    with nothing changed does not run it."""
    switched = {"bursts": {"enabled": False}, "backups": {"enabled": False}, "stale_tickets": {"enabled": False},
                "summary": {"enabled": False}}
    switched.pop(only)
    config, store, _ = loaded(tmp_path, switched)
    refresh_reused(config, store, NOW)
    refresh_reused(config, store, NOW + timedelta(minutes=1))  # the same flags: recorded
    runs.clear()
    refresh_reused(config, store, NOW + timedelta(minutes=2))
    assert set(runs) == set(), runs
    store.close()
