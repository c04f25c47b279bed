"""The shipped deployment files other than nginx's (issue 9, item 14): systemd units and examples.

The units are checked by ``systemd-analyze verify`` (unknown keys, a missing binary) with
only the install prefix pointed at this checkout's virtualenv, and each ExecStart is run as
``icsfeed … --help``, which fails on an option the command does not have. The example
server config loads, with the trusted proxy it documents.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from icsfeed.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PREFIX = "/opt/icsfeed/.venv/bin/icsfeed"


def test_the_units_are_the_single_process_and_the_split_setup() -> None:
    names = {u.name for u in UNITS}
    assert names == {"icsfeed.service", "icsfeed-web@.service", "icsfeed-poller.service"}
    starts = {u.name: _exec_start(u) for u in UNITS}
    assert starts["icsfeed.service"] == [PREFIX, "serve"]
    assert starts["icsfeed-web@.service"] == [PREFIX, "serve", "--no-scheduler", "--bind", "127.0.0.1:%i"]
    assert starts["icsfeed-poller.service"] == [PREFIX, "poll"]
    for unit in UNITS:
        text = unit.read_text()
        assert "EnvironmentFile=/etc/icsfeed/icsfeed.env" in text and "User=icsfeed" in text, unit.name


def _exec_start(unit: Path) -> list[str]:
    [line] = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    venv_icsfeed = Path(sys.executable).with_name("icsfeed")
    assert venv_icsfeed.exists(), "pip install -e . puts the icsfeed command next to python"
    paths = []
    for unit in UNITS:
        name = unit.name.replace("@.service", "@8081.service")  # an instance of the template
        copy = tmp_path / name
        copy.write_text(unit.read_text().replace(PREFIX, str(venv_icsfeed)))
        paths.append(str(copy))
    done = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "icsfeed" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_exec_start_is_a_valid_icsfeed_command(unit: Path) -> None:
    argv = [a.replace("%i", "8081") for a in _exec_start(unit)]
    done = subprocess.run([sys.executable, "-m", "icsfeed", *argv[1:], "--help"], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_the_example_server_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    shutil.copy(DEPLOY / "server.yaml.example", config_dir / "server.yaml")
    (config_dir / "accounts.yaml").write_text("accounts: [{id: acme, name: ACME}]\n")
    monkeypatch.setenv("ICSFEED_BASE_URL", "https://feeds.example.com")
    config = load_config(config_dir, tmp_path / "data")
    assert config.server.base_url == "https://feeds.example.com"
    assert config.server.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert config.server.bind == "127.0.0.1:8080"
    env = (DEPLOY / "icsfeed.env.example").read_text()
    for name in ("ICSFEED_SECRET_KEY=", "ICSFEED_ADMIN_USER=", "ICSFEED_ADMIN_PASSWORD=", "ICSFEED_BASE_URL="):
        assert name in env
