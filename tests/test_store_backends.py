"""The store behaves the same on SQLite and PostgreSQL (the backend of the run): records that
one backend would refuse (NUL, astral characters, long values), marks and state written by
two processes at once, and the driver named by the URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from conftest import cli
from parsers import parse_icalendar
from servers import free_port, write_config
from sqlalchemy import select

from icsfeed.config import STORAGE_URL_ENV, Config, load_config
from icsfeed.model import Event
from icsfeed.poller import poll_source
from icsfeed.render import render_feeds
from icsfeed.scheduler import backoff_delay
from icsfeed.store import Store, events_table, insights_due_table
from icsfeed.store.database import bump_or_insert
from icsfeed.store.schema import ACCOUNT_KEY_LENGTH
from icsfeed.tokens import event_uid

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: customer}
"""


@pytest.fixture
def two(make_env: object) -> Iterator[tuple[Config, Store, Store]]:
    config, a = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    b = Store(config.storage_url, uid_host=config.uid_host)
    yield config, a, b
    b.close()


def test_two_processes_marking_the_same_new_feed_both_count(two: tuple[Config, Store, Store]) -> None:
    """A poller marks a feed no row exists for yet while another one's transaction, which
    marked it too, is still open: the second waits, then bumps the mark (no unique violation)."""
    _config, a, b = two
    errors: list[BaseException] = []

    def other() -> None:
        try:
            b.mark_dirty(["account/acme"])
            b.mark_insights_due(["acme"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    d = insights_due_table
    with a.engine.begin() as conn:
        a._mark_dirty(conn, ["account/acme"])
        bump_or_insert(conn, d.c.account_key, d.c.gen, ["acme"])
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)  # B is now waiting for A's rows
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == [], errors
    assert a.feed_render_generations()["account/acme"] == (True, None, None, 2)
    assert a.insights_due() == {"acme": 2}


def test_failures_in_a_row_are_counted_in_the_database(two: tuple[Config, Store, Store]) -> None:
    _config, a, b = two
    assert a.record_failure("tickets", "down", 1.0) == 1
    assert b.record_failure("tickets", "still down", 2.0) == 2
    state = a.source_state("tickets")
    assert (state.consecutive_failures, state.failures_total, state.polls_total, state.last_error) == (2, 2, 2, "still down")


# --- the driver (issue 10, item 1) ------------------------------------------------------------

def cli_without_psycopg(config_dir: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The icsfeed command on a machine where psycopg is not installed."""
    code = "import sys; sys.modules['psycopg'] = None; from icsfeed.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "--config", str(config_dir), "--data", str(data_dir), *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={k: v for k, v in os.environ.items() if k != STORAGE_URL_ENV})


@pytest.mark.parametrize("command", [["check"], ["poll", "--once"], ["serve", "--no-scheduler"], ["db", "upgrade"]])
def test_missing_driver_is_one_line_error(tmp_path: Path, command: list[str]) -> None:
    config_dir = write_config(tmp_path / "config", {
        "a.yaml": CONFIG + 'storage: {url: "postgresql://icsfeed:hunter2@127.0.0.1:9/icsfeed"}\n'})
    done = cli_without_psycopg(config_dir, tmp_path / "data", *command)
    assert done.returncode == 3, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: the database driver for postgresql"), done.stderr
    assert "pip install 'icsfeed[postgres]'" in done.stderr and "hunter2" not in done.stderr
    assert done.stdout == ""


def test_check_opens_the_storage(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {
        "a.yaml": CONFIG + f'storage: {{url: "postgresql://icsfeed:hunter2@127.0.0.1:{free_port()}/icsfeed"}}\n'})
    done = cli(config_dir, tmp_path / "data", "check", env={STORAGE_URL_ENV: ""})
    assert done.returncode == 3, done
    assert done.stderr.startswith("error: cannot open the database (postgresql://icsfeed:***@127.0.0.1:"), done.stderr
    assert done.stderr.count("\n") == 1 and "Connection refused" in done.stderr and "hunter2" not in done.stderr


def test_check_reports_the_storage_of_the_run(tmp_path: Path, storage_backend: str) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    done = cli(config_dir, tmp_path / "data", "check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("storage: "), done.stdout
    assert not (tmp_path / "data" / "icsfeed.db").exists(), "check creates no database"


def test_plain_postgresql_url_means_psycopg_3(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain)
    try:
        assert store.engine.dialect.driver == "psycopg"
        store.ping()
    finally:
        store.close()


def test_pool_settings_and_a_lost_connection(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """storage.pool_size/max_overflow reach the engine (ICSFEED_STORAGE_URL keeps them), and a
    connection the server dropped is replaced before use, not handed to a request."""
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG + "storage: {pool_size: 2, max_overflow: 1}\n"})
    monkeypatch.setenv(STORAGE_URL_ENV, pg_url)
    config = load_config(config_dir, tmp_path / "data")
    assert (config.storage_url, config.storage.pool_size, config.storage.max_overflow) == (pg_url, 2, 1)
    store = Store(config.storage_url, pool_size=config.storage.pool_size, max_overflow=config.storage.max_overflow)
    try:
        assert (store.engine.pool.size(), store.engine.pool._max_overflow) == (2, 1)  # type: ignore[attr-defined]
        store.ping()  # one pooled connection
        database = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres",
                             autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()
        assert killed is not None and killed[0] >= 1
        store.ping()  # the dead connection is noticed by the pre-ping and replaced
        assert store.source_states() == {}
    finally:
        store.close()


# --- every record the same on both backends (issue 10, item 3) ------------------------------

HOSTILE = [
    {"id": 1, "subject": "Good one", "customer": "acme"},
    {"id": "nul\u0000key", "subject": "NUL in the key", "customer": "acme"},
    {"id": 3, "subject": "NUL in the account", "customer": "ac\u0000me"},
    {"id": 4, "subject": "NUL \u0000 in the text", "customer": "acme"},
    {"id": 5, "subject": "A very long account", "customer": "x" * 300},
    {"id": "🦄-6", "subject": "Astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎫", "customer": "ACME 🏢"},
    {"id": 7, "subject": "A long title " + "t" * 20000, "customer": "acme"},
    {"id": "k" * 500, "subject": "The longest key kept", "customer": "acme"},
    {"id": "surrogate-\ud800", "subject": "A lone surrogate", "customer": "acme"},
    {"id": 10, "subject": "Good two", "customer": "acme"},
]


def write_records(config: Config, records: list[dict[str, object]]) -> None:
    day = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    # ASCII JSON: the NULs and the lone surrogate travel as \\u escapes, as origins send them
    (config.config_dir / "tickets.json").write_text(json.dumps([{**r, "created": day} for r in records]))


def test_every_record_is_stored_the_same_on_both_backends(make_env: object) -> None:
    """On PostgreSQL a NUL in a key, account or text, or an account key over 256 characters,
    used to fail the whole poll (the good records were lost); SQLite stored them all. Now both
    store every record, with the same key and account mapping, so the same UIDs."""
    config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    write_records(config, HOSTILE)
    report = poll_source(config, store, "tickets")
    assert report.ok and report.new == len(HOSTILE) and not report.skipped, report.line()
    t = events_table
    with store.engine.connect() as conn:
        rows = {r.key: r for r in conn.execute(select(t.c.key, t.c.uid, t.c.account_key, t.c.data))}
    expected_keys = {"1", "nul\ufffdkey", "3", "4", "5", "🦄-6", "7", "k" * 500, "surrogate-\ufffd", "10"}
    assert set(rows) == expected_keys
    for key, row in rows.items():
        assert row.uid == event_uid("tickets", key, config.uid_host), key
    assert rows["3"].account_key == "ac\ufffdme"
    assert rows["5"].account_key == "x" * ACCOUNT_KEY_LENGTH, "cut to the column, the same everywhere"
    assert rows["🦄-6"].account_key == "acme 🏢"
    assert json.loads(store.codec.text(rows["4"].data))["title"] == "NUL \u0000 in the text", "text keeps its NUL (JSON-escaped)"
    assert json.loads(store.codec.text(rows["🦄-6"].data))["title"] == "Astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎫"
    title = json.loads(store.codec.text(rows["7"].data))["title"]
    assert len(title) == config.feeds.max_title and title.endswith("…"), "long text cut the same when stored"
    assert store.insights_due().keys() >= {"acme", "x" * ACCOUNT_KEY_LENGTH, "ac\ufffdme"}

    render_feeds(config, store)
    body = store.get_feed("account/acme").body
    titles = {str(e["SUMMARY"]) for e in parse_icalendar(body).walk("VEVENT")}
    assert len(titles) == 7 and "🎫 Good one" in titles and "🎫 Good two" in titles and b"\x00" not in body
    again = poll_source(config, store, "tickets")
    assert (again.ok, again.new, again.updated, again.unchanged) == (True, 0, 0, len(HOSTILE)), again.line()


def test_a_key_too_long_for_the_store_is_skipped_not_the_poll(make_env: object) -> None:
    _config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    good = Event(source="tickets", key="1", kind="ticket", title="Good", start=datetime(2026, 11, 30, tzinfo=timezone.utc))
    long = replace(good, key="k" * 600, title="Too long")
    changes = store.apply_poll("tickets", [good, long], absence="keep", complete=True, now=1.0, previous_success=None)
    assert (changes.new, changes.skipped) == (1, [("k" * 600, "key longer than 512 characters")])


def refuse_inserts(store: Store) -> None:
    """A trigger that makes the database itself refuse new events (a full disk, a constraint,
    a quota: any reason the store cannot take a poll)."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN "
                                 "SELECT RAISE(ABORT, 'events refused by the test'); END")
        else:
            conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                                 "$$ BEGIN RAISE EXCEPTION 'events refused by the test'; END $$")
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()")


def test_a_poll_the_store_refuses_is_recorded_as_a_failure(make_env: object) -> None:
    config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    write_records(config, HOSTILE[:1])
    refuse_inserts(store)
    first = poll_source(config, store, "tickets")
    second = poll_source(config, store, "tickets")
    assert (first.ok, first.failures, second.ok, second.failures) == (False, 1, False, 2)
    assert "events refused by the test" in (second.error or "")
    state = store.source_state("tickets")
    assert state.consecutive_failures == 2 and state.failures_total == 2 and state.last_success is None
    assert "cannot write poll of tickets: " in (state.last_error or "") and "refused by the test" in state.last_error
    assert backoff_delay(config.sources["tickets"].interval, second.failures) > config.sources["tickets"].interval


def test_insight_source_ids_of_long_account_ids_fit(make_env: object) -> None:
    """An account id may have 64 characters; its insights' source id ("insight-summary:<id>")
    then has 80: PostgreSQL used to refuse it (SQLite never checked the length)."""
    _config, store = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    source = "insight-summary:" + "a" * 64
    flag = Event(source=source, key="week", kind="insight", title="Last week", account="a" * 64,
                 start=datetime(2026, 11, 30, tzinfo=timezone.utc))
    assert store.apply_poll(source, [flag], absence="keep", complete=True, now=1.0, previous_success=None).new == 1
    store.mark_insights_due(["k" * 256])
    assert store.source_state(source).polls_total == 1 and "k" * 256 in store.insights_due()
