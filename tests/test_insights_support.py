"""Helpers for the insight tests: a real config directory and a real Store on SQLite.

No tests here. Events are built by hand; ``World.poll`` stores them as a source's poll
would, ``World.refresh`` runs the detectors exactly as the poller does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from icsfeed.config import Config, load_config
from icsfeed.insights import refresh_insights
from icsfeed.model import Event
from icsfeed.store import EventRow, FeedQuery, Store

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

ACCOUNTS = [
    {"id": "acme", "name": "ACME Corp", "keys": ["acme", "ACME Corp", "10042"], "timezone": "Europe/Berlin"},
    {"id": "globex", "name": "Globex", "keys": ["globex"], "timezone": "America/New_York"},
]
TEAMS = [
    {"id": "heads-up", "name": "Heads-up", "accounts": "*", "kinds": ["insight"]},
    {"id": "ops", "name": "Ops", "accounts": "*", "kinds": ["alert"]},
]


def at(day: date, hour: int, minute: int = 0, tz: ZoneInfo = BERLIN) -> datetime:
    """A local wall time, as the instant it is (UTC), DST-aware."""
    return datetime.combine(day, time(hour, minute), tz).astimezone(timezone.utc)


def alert(key: str, when: datetime, title: str = "HighCPU on db01", account: str = "acme",
          url: str | None = "https://prometheus.example/graph?g0.expr=cpu") -> Event:
    return Event(source="alerts", key=key, kind="alert", title=title, start=when,
                 end=when + timedelta(minutes=20), account=account, url=url, severity="warning")


def backup(key: str, when: datetime, host: str | None = "db01", full: bool = False,
           account: str = "acme", tags: list[str] | None = None) -> Event:
    attrs: dict[str, Any] = {"tags": tags if tags is not None else (["full", "weekly"] if full else ["nightly"])}
    if host is not None:
        attrs["host"] = host
    return Event(source="backups", key=key, kind="backup", title=f"backup {host}", start=when,
                 end=when + timedelta(minutes=15), account=account,
                 url=f"https://backups.example/snapshots/{key}", attrs=attrs)


def ticket(key: str, created: datetime, state: str = "open", updated: datetime | None = None,
           account: str = "acme", **attrs: Any) -> Event:
    values: dict[str, Any] = {"state": state, **attrs}
    if updated is not None:
        values["updated"] = updated.isoformat()
    return Event(source="tickets", key=key, kind="ticket", title=f"#{key} Checkout is slow", start=created,
                 end=created + timedelta(minutes=30), account=account,
                 url=f"https://helpdesk.example/tickets/{key}", attrs=values)


@dataclass
class World:
    """A config directory, a data directory and a Store, as a running icsfeed has them."""

    config: Config
    store: Store
    root: Path

    def poll(self, source: str, events: list[Event], now: datetime, absence: str = "keep") -> None:
        self.store.apply_poll(source, events, absence=absence, complete=True, now=now.timestamp(),
                              previous_success=None)

    def refresh(self, now: datetime, keys: set[str | None] | None = None) -> None:
        refresh_insights(self.config, self.store, keys if keys is not None else {"acme"}, now.timestamp())

    def rows(self, detector: str | None = None, status: str | None = "confirmed",
             account: str = "acme") -> list[EventRow]:
        """Stored insight events (of one detector and status; None: any)."""
        rows = self.store.query_events(FeedQuery(0.0, 1e11, account_keys=frozenset({account}),
                                                 kinds=frozenset({"insight"})))
        return [r for r in rows
                if (detector is None or r.event.attrs.get("insight") == detector)
                and (status is None or r.event.status == status)]

    def flags(self, detector: str | None = None, status: str | None = "confirmed",
              account: str = "acme") -> list[Event]:
        return [r.event for r in self.rows(detector, status, account)]

    def reconfigure(self, insights: dict[str, Any], accounts: list[dict[str, Any]] | None = None) -> None:
        self.config = make_config(self.root, insights, accounts)


def make_config(root: Path, insights: dict[str, Any] | None = None,
                accounts: list[dict[str, Any]] | None = None) -> Config:
    cfg = root / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"server": {"base_url": "https://feeds.example.com"},
                           "accounts": ACCOUNTS if accounts is None else accounts, "teams": TEAMS}
    if insights is not None:
        doc["insights"] = insights
    (cfg / "icsfeed.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_config(cfg, root / "data")


def make_world(root: Path, insights: dict[str, Any] | None = None) -> World:
    config = make_config(root, insights)
    return World(config, Store(config.storage_url, uid_host=config.uid_host), root)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
