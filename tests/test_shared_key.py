"""One secret key for every process of an installation (issue 10, item 2): on a PostgreSQL
database it is kept in the database, so processes with different data directories (other
machines) print the same subscription URLs, and a URL printed by one is served by another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import Served, cli
from servers import write_config

from icsfeed.config import STORAGE_URL_ENV
from icsfeed.tokens import SECRET_ENV, feed_token

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: ops, name: Ops}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: "=acme"}
"""


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    directory = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    (directory / "tickets.json").write_text('[{"id": 1, "subject": "Slow site", "created": "2026-11-30T10:00:00Z"}]')
    return directory


def urls(accounts_output: str) -> list[str]:
    return [line.strip() for line in accounts_output.splitlines() if line.startswith("  http")]


def test_machines_with_their_own_data_dirs_share_the_key_in_the_database(
        config_dir: Path, tmp_path: Path, pg_url: str) -> None:
    env = {STORAGE_URL_ENV: pg_url}
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "machine-c"]
    # three processes at once, on an empty database: whichever comes first makes the key
    procs = [subprocess.Popen([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(d),
                               "accounts"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) for d in dirs]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    printed = [urls(out) for out, _ in outputs]
    assert len(printed[0]) == 2 and printed[0] == printed[1] == printed[2], printed
    assert not any((d / "secret_key").exists() for d in dirs), "the key is not written into the data dirs"

    assert cli(config_dir, dirs[0], "poll", "--once", env=env).returncode == 0  # machine A polls and renders
    with Served(config_dir, dirs[1], env=env, secret=None, scheduler=False) as served:  # machine B serves
        for url in printed[0]:
            path = url.split("://", 1)[1].split("/", 1)[1]
            answer = requests.get(f"{served.base}/{path}", timeout=10)
            assert answer.status_code == 200 and b"Slow site" in answer.content, (url, answer.status_code)
        assert requests.get(f"{served.base}/feeds/acme.ics?token=wrong", timeout=10).status_code == 404


def test_an_installation_moved_from_sqlite_keeps_its_urls(config_dir: Path, tmp_path: Path, pg_url: str) -> None:
    """The first process on the database offers its data directory's key (the one its SQLite
    installation made): the URLs subscribers already have keep working."""
    old = tmp_path / "old-machine"
    sqlite = cli(config_dir, old, "accounts", env={STORAGE_URL_ENV: ""})
    assert sqlite.returncode == 0 and (old / "secret_key").exists()
    key = bytes.fromhex((old / "secret_key").read_text())
    assert f"token={feed_token(key, 'account/acme', 1)}" in sqlite.stdout

    env = {STORAGE_URL_ENV: pg_url}
    moved = cli(config_dir, old, "accounts", env=env)
    other = cli(config_dir, tmp_path / "new-machine", "accounts", env=env)
    assert moved.returncode == other.returncode == 0, moved.stderr + other.stderr
    assert urls(moved.stdout) == urls(other.stdout) == urls(sqlite.stdout)


def test_the_environment_key_still_wins(config_dir: Path, tmp_path: Path, pg_url: str) -> None:
    env = {STORAGE_URL_ENV: pg_url, SECRET_ENV: "from-the-environment"}
    done = cli(config_dir, tmp_path / "data", "accounts", env=env)
    assert done.returncode == 0 and f"token={feed_token(b'from-the-environment', 'account/acme', 1)}" in done.stdout
