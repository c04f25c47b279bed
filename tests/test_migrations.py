"""Schema migrations (Alembic) on the backend of the run: a database made by icsfeed before it
used Alembic (commit d97b23e's own code, tests/store_d97b23e.py) is upgraded keeping its events,
UIDs and SEQUENCEs; a migrated database is exactly today's schema; an empty database is created
by whichever of several processes starts first; a shared database behind head is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import store_d97b23e
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import cli
from servers import write_config
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine

from icsfeed.config import Config, load_config
from icsfeed.poller import build_source, poll_source
from icsfeed.render import fragment_renderer, render_feeds
from icsfeed.routing import affected_feeds
from icsfeed.store import Store, StoreError, events_table, metadata
from icsfeed.store.codec import Codec
from icsfeed.store.migrate import alembic_config, head, upgrade_url

NOW = datetime.now(timezone.utc).replace(microsecond=0)

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: ops, name: Ops}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: customer}
"""


def tickets(subject_of_2: str = "Printer on fire") -> list[dict[str, object]]:
    day = NOW - timedelta(days=2)
    return [{"id": 1, "subject": "Slow site", "created": day.isoformat(), "customer": "acme"},
            {"id": 2, "subject": subject_of_2, "created": (day + timedelta(hours=3)).isoformat(), "customer": "acme"},
            {"id": "ü-3 🎫", "subject": "Astral 🎫 key", "created": day.isoformat(), "customer": "ACME"}]


@pytest.fixture
def db_url(storage_backend: str, tmp_path: Path) -> str:
    """An empty database of the run's backend: the test's own PostgreSQL database, or a file."""
    return storage_backend if storage_backend != "sqlite" else f"sqlite:///{tmp_path / 'data' / 'icsfeed.db'}"


@pytest.fixture
def config(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("ICSFEED_STORAGE_URL", db_url)
    config = load_config(write_config(tmp_path / "config", {"a.yaml": CONFIG}), tmp_path / "data")
    assert config.storage_url == db_url
    return config


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    if db_url.startswith("sqlite:///"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def write_tickets(config: Config, records: list[dict[str, object]]) -> None:
    (config.config_dir / "tickets.json").write_text(json.dumps(records))


def event_rows(engine: Engine) -> dict[str, tuple[object, ...]]:
    """Each event's row as read back (``data`` decoded: JSON text before 0010, compressed after)."""
    t = events_table
    codec = Codec(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.key, t.c.uid, t.c.sequence, t.c.created, t.c.data, t.c.content_hash,
                                   t.c.account_key)).all()
    return {row.key: (row.uid, row.sequence, row.created, codec.text(row.data), *row[5:]) for row in rows}


def legacy_poll(config: Config, old: store_d97b23e.Store) -> store_d97b23e.PollChanges:
    """A poll as d97b23e's poller applied it (the same call), written by d97b23e's store."""
    source = build_source(config, "tickets")
    state = old.source_state("tickets")
    return old.apply_poll("tickets", list(source.fetch(None)), absence=source.absence, complete=True,
                          now=time.time(), previous_success=state.last_success,
                          affected=lambda touched: affected_feeds(config, touched),  # type: ignore[arg-type]
                          fragment=fragment_renderer(config))  # type: ignore[arg-type]


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the revisions themselves (not create_all + stamp, which a new empty database gets)."""
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), revision)


def test_revisions_build_exactly_the_schema_the_code_uses(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert diffs == [], diffs
    assert version == head()


def test_database_made_by_d97b23e_is_upgraded_keeping_events_uids_and_sequences(config: Config, engine: Engine) -> None:
    old = store_d97b23e.Store(config.storage_url, uid_host=config.uid_host)
    write_tickets(config, tickets())
    assert legacy_poll(config, old).new == 3
    write_tickets(config, tickets("Printer on fire, again"))
    assert legacy_poll(config, old).updated == 1
    old.shares_secret = False  # type: ignore[attr-defined]  # d97b23e kept its key in the data directory only
    # d97b23e kept no event columns for the size budget nor feed parts (a small feed is unchanged by them)
    old.query_part_attrs = lambda query: {}  # type: ignore[attr-defined]
    old.save_feed_parts = lambda *args: False  # type: ignore[attr-defined]
    render_feeds(config, old)  # type: ignore[arg-type]
    old_feed = old.get_feed("account/acme")
    old.close()
    before = event_rows(engine)
    assert before["2"][1] == 1, "ticket 2 was changed once: SEQUENCE 1"
    with engine.connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()

    if engine.dialect.name != "sqlite":  # a shared database: upgraded by hand, never by a start
        with pytest.raises(StoreError, match=r"made before schema versions .*run icsfeed db upgrade"):
            Store(config.storage_url)
        done = cli(config.config_dir, config.data_dir, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        assert f"upgraded from 0003 to schema revision {head()} (head)" in done.stdout
    store = Store(config.storage_url, uid_host=config.uid_host)  # SQLite: upgraded at start
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head()
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []
        assert event_rows(engine) == before, "events, UIDs, SEQUENCEs and created times kept"
        kept = store.get_feed("account/acme")
        assert kept is not None and old_feed is not None and kept.body == old_feed.body and kept.etag == old_feed.etag

        again = poll_source(config, store, "tickets")
        assert (again.ok, again.new, again.updated, again.unchanged) == (True, 0, 0, 3), again.line()
        assert event_rows(engine) == before, "a re-poll after the upgrade changes nothing"
        render_feeds(config, store)
        assert store.get_feed("account/acme").etag == old_feed.etag, "the same feed, byte for byte"

        write_tickets(config, tickets("Printer on fire, a third time"))
        assert poll_source(config, store, "tickets").updated == 1
        after = event_rows(engine)
        assert after["2"][0] == before["2"][0] and after["2"][1] == 2, "same UID, SEQUENCE goes on from 1 to 2"
    finally:
        store.close()


def test_database_from_before_dirty_generations_is_stamped_at_0001_and_upgraded(config: Config, engine: Engine) -> None:
    migrate(engine, "0001")  # the schema of the first release: no feeds.dirty_gen, no insights_due
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # as that release made it: no version table
        conn.execute(text("INSERT INTO feeds (feed_id, body, etag, last_modified, rendered_at, event_count, dirty) "
                          "VALUES ('account/acme', NULL, 'e1', 1.0, 1.0, 0, false)"))
    done = upgrade_url(config.storage_url)
    assert (done[0].revision, done[0].versioned, done[1].revision) == ("0001", False, head())
    store = Store(config.storage_url)
    try:
        assert store.feed_render_generations()["account/acme"] == (False, None, None, 0)
        store.mark_dirty(["account/acme"])
        assert store.feed_render_generations()["account/acme"][3] == 1
        assert store.insights_due() == {}
    finally:
        store.close()


def test_empty_database_created_once_by_processes_starting_together(config: Config, engine: Engine) -> None:
    code = ("import sys; from icsfeed.store import Store; "
            "Store(sys.argv[1]).close(); print('opened')")
    procs = [subprocess.Popen([sys.executable, "-c", code, config.storage_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-500:] for _, err in results]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head()]
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []


def test_database_behind_head(config: Config, engine: Engine) -> None:
    migrate(engine, "0003")
    write_tickets(config, tickets())
    status = cli(config.config_dir, config.data_dir, "db", "current")
    assert status.returncode == 0 and f"schema revision 0003 (head {head()})" in status.stdout, status
    check = cli(config.config_dir, config.data_dir, "check")
    served = cli(config.config_dir, config.data_dir, "poll", "--once")
    if engine.dialect.name == "sqlite":  # one file, one installation: upgraded at start
        assert check.returncode == 0 and "upgraded at next start" in check.stdout, check
        assert served.returncode == 0, served.stderr
    else:
        for refused in (check, served):
            assert refused.returncode == 3, refused
            lines = refused.stderr.strip().splitlines()
            assert lines[-1].startswith("error: the database (postgresql") and lines[-1].endswith(
                f"has schema revision 0003 (head {head()}): run icsfeed db upgrade"), refused.stderr
            assert "Traceback" not in refused.stderr
        assert cli(config.config_dir, config.data_dir, "db", "upgrade").returncode == 0
        assert cli(config.config_dir, config.data_dir, "poll", "--once").returncode == 0
    assert f"schema revision {head()} (head)" in cli(config.config_dir, config.data_dir, "db", "current").stdout


def test_database_of_a_newer_icsfeed_is_refused(config: Config, engine: Engine) -> None:
    Store(config.storage_url).close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="schema revision 9999, newer than this icsfeed knows"):
        Store(config.storage_url)
    done = cli(config.config_dir, config.data_dir, "serve")
    assert done.returncode == 3 and done.stderr.strip().splitlines()[-1].startswith("error: the database"), done.stderr
