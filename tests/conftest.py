"""Shared fixtures: temp config directories, a polled demo, a served instance, and the backend.

The whole suite runs on SQLite (the default) and, with ``ICSFEED_TEST_BACKEND=postgresql``, on a
private PostgreSQL cluster (tests/postgres.py): then every test gets a database of its own through
``ICSFEED_STORAGE_URL``, which ``load_config`` and every ``icsfeed`` subprocess the test starts
read. A test about SQLite itself (its files, a read-only data directory) is marked
``sqlite_only`` and runs in the SQLite pass only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres import PostgresCluster
from servers import IcsfeedServer as Served
from servers import free_port, write_config  # noqa: F401

from icsfeed.config import STORAGE_URL_ENV, Config, load_config
from icsfeed.poller import poll
from icsfeed.store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config"
#: which database every test's store uses: sqlite (in the test's data dir) or postgresql
BACKEND = os.environ.get("ICSFEED_TEST_BACKEND", "sqlite")


def pytest_report_header() -> str:
    return f"icsfeed storage backend: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "sqlite":
        return
    skip = pytest.mark.skip(reason="about SQLite itself; runs in the SQLite pass")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One private PostgreSQL server for the whole run (started on first use)."""
    cluster = PostgresCluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (whatever the backend of the run)."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)


@pytest.fixture(autouse=True)
def storage_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The backend of this run for this test: on PostgreSQL, a database of the test's own."""
    if BACKEND != "postgresql" or request.node.get_closest_marker("sqlite_only"):
        monkeypatch.delenv(STORAGE_URL_ENV, raising=False)
        yield "sqlite"
        return
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv(STORAGE_URL_ENV, url)
    yield url


@pytest.fixture
def another_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Call it before opening a second, independent store in one test: on PostgreSQL the
    stores opened after it use a new empty database (on SQLite each data dir is its own)."""
    made: list[str] = []

    def switch() -> None:
        if os.environ.get(STORAGE_URL_ENV) and BACKEND == "postgresql":
            cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
            made.append(cluster.create_database("w"))
            monkeypatch.setenv(STORAGE_URL_ENV, cluster.url(made[-1]))

    yield switch
    if made:
        cluster = request.getfixturevalue("postgres_cluster")
        for name in made:
            cluster.drop_database(name)


def storage_url(data_dir: Path) -> str:
    """The database an ``icsfeed`` process started by this test writes to: the run's
    PostgreSQL database of the test, else the SQLite file in ``data_dir``."""
    return os.environ.get(STORAGE_URL_ENV) or f"sqlite:///{data_dir / 'icsfeed.db'}"


def open_env(config_dir: Path, data_dir: Path) -> tuple[Config, Store]:
    config = load_config(config_dir, data_dir)
    return config, Store(config.storage_url, uid_host=config.uid_host)


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], tuple[Config, Store]]]:
    """Build (config, store) from YAML texts in a fresh temp directory."""
    stores: list[Store] = []

    def make(files: dict[str, str]) -> tuple[Config, Store]:
        config_dir = write_config(tmp_path / "config", files)
        config, store = open_env(config_dir, tmp_path / "data")
        stores.append(store)
        return config, store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[tuple[Config, Store]]:
    """The shipped demo config, polled once into a temp data directory."""
    base = tmp_path_factory.mktemp("demo")
    config_dir = base / "config"
    shutil.copytree(DEMO_CONFIG, config_dir)
    with pytest.MonkeyPatch.context() as mp:  # the demo outlives each test's own database
        if BACKEND == "postgresql":
            cluster = request.getfixturevalue("postgres_cluster")
            mp.setenv(STORAGE_URL_ENV, cluster.url(cluster.create_database("demo")))
        config, store = open_env(config_dir, base / "data")
    reports = poll(config, store)
    assert all(r.ok for r in reports), [r.line() for r in reports]
    yield config, store
    store.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start `icsfeed serve` instances; all are stopped at teardown."""
    started: list[Served] = []

    def start(config_dir: Path, data_dir: Path, env: dict[str, str] | None = None) -> Served:
        served = Served(config_dir, data_dir, env=env, secret=None)  # the data directory's own key
        started.append(served)
        return served.start()

    yield start
    for served in started:
        served.stop()


def cli(config_dir: Path, data_dir: Path, *args: str, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the icsfeed command line as a user would."""
    import os

    return subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})})
