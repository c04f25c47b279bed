"""Shared fixtures: temp config directories, a polled demo, and a served instance."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from icsfeed.config import Config, load_config
from icsfeed.poller import poll
from icsfeed.store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config"


def write_config(directory: Path, files: dict[str, str]) -> Path:
    """Write YAML files (dedented) into a config directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """`icsfeed serve` running as a subprocess on 127.0.0.1."""

    def __init__(self, config_dir: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        import os

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_dir, self.data_dir = config_dir, data_dir
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir),
             "serve", "--bind", f"127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"icsfeed serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"icsfeed serve not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start `icsfeed serve` instances; all are stopped at teardown."""
    started: list[Served] = []

    def start(config_dir: Path, data_dir: Path, env: dict[str, str] | None = None) -> Served:
        served = Served(config_dir, data_dir, env)
        started.append(served)
        served.wait_ready()
        return served

    yield start
    for served in started:
        served.stop()


def cli(config_dir: Path, data_dir: Path, *args: str, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the icsfeed command line as a user would."""
    import os

    return subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})})
