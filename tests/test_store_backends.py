"""The store behaves the same on SQLite and PostgreSQL (the backend of the run): records that
one backend would refuse (NUL, astral characters, long values), marks and state written by
two processes at once, and the driver named by the URL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import cli
from servers import free_port, write_config

from icsfeed.config import STORAGE_URL_ENV, Config, load_config
from icsfeed.store import Store, insights_due_table
from icsfeed.store.database import bump_or_insert

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
