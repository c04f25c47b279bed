"""Shared fixtures: temp config directories, a polled demo, and a served instance."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import IcsfeedServer as Served
from servers import free_port, write_config  # noqa: F401

from icsfeed.config import Config, load_config
from icsfeed.poller import poll
from icsfeed.store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config"


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
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Store]]:
    """The shipped demo config, polled once into a temp data directory."""
    base = tmp_path_factory.mktemp("demo")
    config_dir = base / "config"
    shutil.copytree(DEMO_CONFIG, config_dir)
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
