"""Fixtures for tests that drive real Chromium against a real ``icsfeed serve`` on 127.0.0.1.

Use from a test module with ``pytest_plugins = ["browser"]``. The session server runs the
shipped demo config (copied to a temp directory) plus a "lab" account whose events the tests
control: a title that tries to run script, a ``javascript:`` link, two alerts on one day, a
backup, a birthday that recurs, next month's maintenance, and a source that always fails.
Admin pages need basic auth (credentials in the server's environment); the ``page`` fixture's
browser context sends them. Chromium is Debian's (/usr/bin/chromium); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import requests
from conftest import DEMO_CONFIG, REPO, Served, free_port

from icsfeed.config import load_config
from icsfeed.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
                 "--disable-default-apps", "--mute-audio"]
ARTIFACTS = REPO / "test-artifacts"
XSS_TITLE = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
LAB_NAME = "Lab & <Co>"
FIRST_POLL_TIMEOUT = 90.0


def shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + delta
    return index // 12, index % 12 + 1


@dataclass
class Lab:
    """The dates the lab events were written for (all in UTC, the lab account's timezone)."""

    today: date
    year: int
    month: int
    alert_day: date
    backup_day: date
    birthday_day: date
    maintenance_day: date

    @property
    def month_param(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def month_after(self, delta: int) -> str:
        y, m = shift_month(self.year, self.month, delta)
        return f"{y:04d}-{m:02d}"


def write_lab(config_dir: Path, today: date) -> Lab:
    """Add the lab account, its events file and a failing source to a copied demo config."""
    y, m = today.year, today.month
    ny, nm = shift_month(y, m, 1)
    lab = Lab(today=today, year=y, month=m, alert_day=date(y, m, 10), backup_day=date(y, m, 12),
              birthday_day=date(y, m, 15), maintenance_day=date(ny, nm, 5))

    def at(day: date, hh: int, mm: int) -> str:
        return datetime(day.year, day.month, day.day, hh, mm, tzinfo=timezone.utc).isoformat()

    def record(id_: str, kind: str, title: str, start: str, end: str = "", url: str = "",
               detail: str = "", severity: str = "") -> dict[str, str]:
        return {"id": id_, "kind": kind, "title": title, "start": start, "end": end, "url": url,
                "detail": detail, "severity": severity, "account": "lab"}

    records = [
        record("a1", "alert", XSS_TITLE, at(lab.alert_day, 8, 15), at(lab.alert_day, 8, 45),
               "https://origin.example/alerts/1", "fired on lab01 <b>not bold</b>", "warning"),
        record("a2", "alert", "Disk full on lab01", at(lab.alert_day, 14, 30), at(lab.alert_day, 15, 0),
               "https://origin.example/alerts/2", "/var is 97% full", "critical"),
        record("t1", "ticket", "#42 javascript link", at(lab.alert_day, 11, 0), url="javascript:alert(1)",
               detail="a ticket whose link is javascript:"),
        record("b1", "backup", "backup lab01 (daily)", at(lab.backup_day, 2, 0), at(lab.backup_day, 2, 20),
               "https://origin.example/backups/7", "snapshot 7 of lab01"),
        record("h1", "birthday", "lab01 went online", date(y - 7, m, 15).isoformat(),
               url="https://inventory.example/hosts/lab01", detail="Lab server"),
        record("m1", "maintenance", "Kernel upgrade lab01", at(lab.maintenance_day, 6, 0),
               at(lab.maintenance_day, 8, 0), "https://status.example/maintenance/1", "reboot of lab01"),
    ]
    (config_dir / "lab").mkdir(exist_ok=True)
    (config_dir / "lab" / "lab-events.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    (config_dir / "zz-lab.yaml").write_text(textwrap.dedent(f"""\
        accounts:
          - id: lab
            name: {json.dumps(LAB_NAME)}
            keys: [lab]
            timezone: UTC
        sources:
          - id: lab-events
            type: file
            interval: 1h
            path: lab/lab-events.json
            mapping:
              kind: "{{kind}}"
              key: id
              title: title
              detail: detail
              url: url
              start: start
              end: end
              account: account
              severity: severity
          - id: lab-broken
            type: file
            interval: 1h
            path: lab/missing.json
            mapping: {{kind: ticket, key: id, title: title, start: start}}
        """), encoding="utf-8")
    return lab


def wait_first_poll(served: Served, config_dir: Path, data_dir: Path, timeout: float = FIRST_POLL_TIMEOUT) -> None:
    """Until every source has been polled once, no account waits for its insights and no feed
    for a re-render (bounded)."""
    config = load_config(config_dir, data_dir)
    wanted = {s.id for s in config.sources.values() if s.enabled}
    store = Store(config.storage_url, uid_host=config.uid_host)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if served.proc.poll() is not None:
                raise AssertionError(f"icsfeed serve exited with {served.proc.returncode}:\n{served.log()}")
            states = store.source_states()
            polled = {s for s in wanted if s in states and states[s].last_attempt is not None}
            renders = store.feed_render_states()
            if (polled == wanted and renders and not any(dirty for dirty, _k, _d in renders.values())
                    and not store.insights_due()):
                return
            time.sleep(0.2)
    finally:
        store.close()
    raise AssertionError(f"first poll not finished in {timeout}s (polled {sorted(polled)} of {sorted(wanted)}):\n{served.log()}")


@dataclass
class Site:
    """The served instance and what tests need to reach it."""

    served: Served
    config_dir: Path
    data_dir: Path
    env: dict[str, str]
    admin: tuple[str, str]
    lab: Lab
    feed_urls: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.served.base

    def token(self, feed_id: str) -> str:
        return self.feed_urls[feed_id].rsplit("token=", 1)[1]

    xss_title: str = XSS_TITLE
    lab_name: str = LAB_NAME

    @staticmethod
    def screenshot(pg: object, name: str) -> Path:
        return screenshot(pg, name)

    @staticmethod
    def screenshot_path(name: str) -> Path:
        """Where a viewport-only screenshot goes (popovers are fixed to the viewport on phones)."""
        ARTIFACTS.mkdir(exist_ok=True)
        return ARTIFACTS / f"{name}.png"

    def view(self, account: str, month: str | None = None) -> str:
        url = f"{self.base}/view/{account}?token={self.token('account/' + account)}"
        return url + (f"&month={month}" if month else "")


def accounts_output(config_dir: Path, data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """feed id -> URL, as ``icsfeed accounts`` prints them."""
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir),
                           "accounts"], capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False)
    assert done.returncode == 0, done.stderr
    urls: dict[str, str] = {}
    current = None
    for line in done.stdout.splitlines():
        if line.startswith("  ") and current:
            urls[current] = line.strip()
        elif line.strip():
            kind, ident = line.split()[:2]
            current = f"{kind}/{ident}"
    return urls


def start_site_server(config_dir: Path, data_dir: Path, admin: tuple[str, str]) -> tuple[Served, dict[str, str]]:
    """Start on a free port; retried because the port can be taken between probing and binding."""
    for _attempt in range(3):
        port = free_port()
        env = {"ICSFEED_SECRET_KEY": "browser-tests-" + secrets.token_hex(8),
               "ICSFEED_BASE_URL": f"http://127.0.0.1:{port}",
               "ICSFEED_ADMIN_USER": admin[0], "ICSFEED_ADMIN_PASSWORD": admin[1]}
        # the port is chosen before start, so that server.base_url can name it
        served = Served(config_dir, data_dir, env=env, port=port, secret=None)
        try:
            served.start(timeout=30)
            return served, env
        except AssertionError:
            served.stop()
            if "address already in use" not in served.log().lower():
                raise
    raise AssertionError("could not bind a free port for icsfeed serve")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("site")
    config_dir, data_dir = base / "config", base / "data"
    shutil.copytree(DEMO_CONFIG, config_dir)
    lab = write_lab(config_dir, datetime.now(timezone.utc).date())
    admin = ("admin", secrets.token_urlsafe(12))
    served, env = start_site_server(config_dir, data_dir, admin)
    try:
        wait_first_poll(served, config_dir, data_dir)
        site = Site(served=served, config_dir=config_dir, data_dir=data_dir, env=env, admin=admin, lab=lab,
                    feed_urls=accounts_output(config_dir, data_dir, env))
        feed = requests.get(site.feed_urls["account/lab"], timeout=10)
        assert feed.status_code == 200 and b"BEGIN:VEVENT" in feed.content, feed.status_code
        yield site
    finally:
        served.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright (python) is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object, site: Site) -> Iterator[object]:
    """A fresh context (admin credentials set) and page; console errors collected on ``page.errors``."""
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": site.admin[0], "password": site.admin[1]})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type in ("error", "warning") else None)
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.errors = errors
    pg.set_default_timeout(10_000)
    try:
        yield pg
    finally:
        context.close()


def screenshot(pg: object, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ (gitignored) for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 1000
    return path
