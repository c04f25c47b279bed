"""From SQLite to PostgreSQL (issue 10, item 10): ``icsfeed db copy --from URL`` moves an
installation's whole history into an empty PostgreSQL database: events with their ids, UIDs,
SEQUENCEs and created times, rendered feeds, source state, and the secret key, so the URLs
subscribers have keep working and the next poll changes nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from conftest import Served, cli
from servers import write_config
from sqlalchemy import create_engine, select

from icsfeed.config import STORAGE_URL_ENV
from icsfeed.store import events_table, feeds_table, source_state_table
from icsfeed.tokens import SECRET_ENV

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
teams: [{id: ops, name: Ops}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: "=acme"}
"""


def rows(url: str, table: object) -> list[tuple[object, ...]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key))]  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def write(config_dir: Path, subjects: list[str]) -> None:
    day = datetime.now(timezone.utc) - timedelta(days=1)
    (config_dir / "tickets.json").write_text(json.dumps(
        [{"id": i, "subject": s, "created": (day + timedelta(hours=i)).isoformat()} for i, s in enumerate(subjects)]))


@pytest.mark.slow
def test_copy_from_sqlite_to_postgresql_keeps_history_and_urls(tmp_path: Path, pg_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    data = tmp_path / "data"
    sqlite_env = {STORAGE_URL_ENV: ""}
    write(config_dir, ["Slow site", "Printer on fire"])
    assert cli(config_dir, data, "poll", "--once", env=sqlite_env).returncode == 0
    write(config_dir, ["Slow site", "Printer on fire, again", "Disk full"])
    assert cli(config_dir, data, "poll", "--once", env=sqlite_env).returncode == 0  # ticket 1 at SEQUENCE 1
    sqlite_url = f"sqlite:///{data / 'icsfeed.db'}"
    before = {t.name: rows(sqlite_url, t) for t in (events_table, feeds_table, source_state_table)}
    urls = cli(config_dir, data, "accounts", env=sqlite_env).stdout

    pg = {STORAGE_URL_ENV: pg_url}
    done = cli(config_dir, data, "db", "copy", "--from", sqlite_url, env=pg)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("copied 3 events, ") and ", 2 feeds, " in done.stdout and "subscription URLs stay the same" in done.stdout
    after = {t.name: rows(pg_url, t) for t in (events_table, feeds_table, source_state_table)}
    assert after == before, "every row as it was: ids, UIDs, SEQUENCEs, bodies, ETags, state"
    assert cli(config_dir, tmp_path / "other-machine", "accounts", env=pg).stdout == urls, "the same URLs"

    again = cli(config_dir, data, "poll", "--once", env=pg)
    assert again.returncode == 0 and "0 new, 0 updated, 0 closed, 0 cancelled, 3 unchanged" in again.stdout, again.stdout
    write(config_dir, ["Slow site", "Printer on fire, again", "Disk full", "New on PostgreSQL"])
    assert "1 new" in cli(config_dir, data, "poll", "--once", env=pg).stdout  # the id sequence goes on
    assert max(r[0] for r in rows(pg_url, events_table)) == 4

    with Served(config_dir, tmp_path / "web", env=pg, secret=None, scheduler=False) as served:
        feed = next(line.strip() for line in urls.splitlines() if "/feeds/acme.ics" in line)
        answer = requests.get(served.base + "/" + feed.split("://", 1)[1].split("/", 1)[1], timeout=10)
        assert answer.status_code == 200 and b"New on PostgreSQL" in answer.content

    refused = cli(config_dir, data, "db", "copy", "--from", sqlite_url, env=pg)
    assert refused.returncode == 3 and "already has events: copy into an empty database" in refused.stderr
