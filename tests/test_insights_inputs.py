"""A detector whose inputs did not change is not run again, and its flags are what a run makes.

icsfeed/insights/inputs.py keeps, per detector and account, the digest of what its last run
that changed nothing read; a refresh with the same digest, on the same local day and before
any instant its verdicts hang on, keeps the flags without running it. Checked here against
the full recompute (``refresh_account(..., reuse=False)``) in a second store given the same
polls: after random polls (updates, moves between accounts and days, absence closing and
cancelling), rows deleted under the store, settings changed and the clock moving by minutes
to days, both stores hold the same flags, byte for byte (content hash, SEQUENCE, state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import and_, delete, func, select
from test_insights_support import BERLIN, alert, at, backup, make_config, ticket

from icsfeed import insights
from icsfeed.config import Config
from icsfeed.insights import DETECTORS, refresh_account, settings_of
from icsfeed.insights.base import Detector
from icsfeed.model import Event
from icsfeed.store import Store
from icsfeed.store.schema import events_table, insight_inputs_table

NOW = at(date(2026, 3, 18), 14, 0)  # a Wednesday, Berlin
ACCOUNTS = ("acme", "globex")


def history() -> list[Event]:
    """Flags of every detector: daily backups with misses, a burst, stale and fresh tickets."""
    first = NOW - timedelta(days=70)
    out = [backup(f"b{i}", first + timedelta(days=i, hours=1)) for i in range(70) if i % 11 != 4]
    out += [backup(f"w{i}", first + timedelta(days=7 * i, hours=3), host="fs01", full=True) for i in range(10)]
    out += [alert(f"a{i}", first + timedelta(days=i, hours=9)) for i in range(0, 70, 3)]
    out += [alert(f"burst{i}", NOW - timedelta(days=4, hours=i % 9), title=f"Disk {i % 3} full") for i in range(14)]
    out += [ticket(f"t{i}", NOW - timedelta(days=12 + 5 * i)) for i in range(4)]
    out += [ticket("fresh", NOW - timedelta(days=6, hours=20))]  # goes stale in a few hours
    out += [alert(f"g{i}", first + timedelta(days=2 * i, hours=7), account="globex") for i in range(35)]
    return out


class Pair:
    """The same polls in two stores: one refreshed with reuse, one recomputing every detector."""

    def __init__(self, root: Path, another_store: Callable[[], None]) -> None:
        self.root = root
        another_store()  # (on PostgreSQL: each store a new database of its own)
        self.config = make_config(root / "a")
        self.stores = [Store(self.config.storage_url, uid_host=self.config.uid_host)]
        another_store()
        other = make_config(root / "b")
        self.stores.append(Store(other.storage_url, uid_host=other.uid_host))

    def poll(self, source: str, events: list[Event], now: datetime, absence: str = "keep") -> None:
        for store in self.stores:
            store.apply_poll(source, events, absence=absence, complete=True, now=now.timestamp(), previous_success=None)

    def refresh(self, now: datetime) -> None:
        s = settings_of(self.config)
        for account in ACCOUNTS:
            for store, reuse in zip(self.stores, (True, False), strict=True):
                refresh_account(self.config, store, s, self.config.accounts[account], now.timestamp(), reuse=reuse)

    def flags(self, store: Store) -> list[tuple[Any, ...]]:
        t = events_table
        with store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                select(t.c.source, t.c.key, t.c.content_hash, t.c.sequence, t.c.gone, t.c.last_modified)
                .where(t.c.kind == "insight").order_by(t.c.source, t.c.key))]

    def same(self) -> list[tuple[Any, ...]]:
        a, b = (self.flags(s) for s in self.stores)
        assert a == b
        return a

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Detector runs, by name (every store's)."""
    counted: Counter[str] = Counter()

    def counting(d: Detector) -> Detector:
        def detect(ctx: Any, _d: Detector = d) -> list[Event]:
            counted[_d.name] += 1
            return _d.detect(ctx)
        return replace(d, detect=detect)

    monkeypatch.setattr(insights, "DETECTORS", tuple(counting(d) for d in DETECTORS))
    yield counted


def loaded(root: Path, insights: dict[str, Any] | None = None) -> tuple[Config, Store, dict[str, list[Event]]]:
    """A store of :func:`history`, one complete poll per source, with these insight settings."""
    config = make_config(root, insights=insights)
    store = Store(config.storage_url, uid_host=config.uid_host)
    by_source: dict[str, list[Event]] = {}
    for ev in history():
        by_source.setdefault(ev.source, []).append(ev)
    for source, evs in by_source.items():
        store.apply_poll(source, evs, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
    return config, store, by_source


def refresh_reused(config: Config, store: Store, now: datetime, account: str = "acme") -> None:
    refresh_account(config, store, settings_of(config), config.accounts[account], now.timestamp())


def test_unchanged_inputs_skip_the_detector_and_each_change_runs_those_that_read_it(
        tmp_path: Path, runs: Counter[str]) -> None:
    config, store, by_source = loaded(tmp_path)
    every = {"bursts", "backups", "stale_tickets", "summary"}
    refresh_reused(config, store, NOW)  # a first run writes every flag: nothing recorded
    refresh_reused(config, store, NOW + timedelta(minutes=1))  # runs again, changes nothing: recorded
    assert set(runs) == every
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(insight_inputs_table)).scalar_one() == 4

    def ran(now: datetime) -> set[str]:
        runs.clear()
        refresh_reused(config, store, now)
        return set(runs)

    states = {s: st.polls_total for s, st in store.source_states().items() if s.startswith("insight-")}
    assert ran(NOW + timedelta(minutes=2)) == set()  # before: every detector ran on every refresh
    after = store.source_states()
    assert all(after[s].polls_total == n + 1 and after[s].last_success == (NOW + timedelta(minutes=2)).timestamp()
               for s, n in states.items())  # each run is recorded as before
    def change_runs(now: datetime) -> set[str]:
        """What the change before ``now`` runs; then those runs settle (a detector that wrote
        runs once more, on its own new flags), and nothing runs."""
        first = ran(now)
        ran(now + timedelta(seconds=10))
        assert ran(now + timedelta(seconds=20)) == set()
        return first

    # a changed alert title: bursts reads the titles of the alerts a flag lists (those of its
    # days); the summary (which counts every event) reads no alert's title
    burst = next(ev for ev in by_source["alerts"] if ev.key == "burst13")
    store.apply_poll("alerts", [replace(burst, title="Disk full (updated)")], absence="keep", complete=False,
                     now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=3)) == {"bursts"}
    # ... of an alert on no flag's days, or of a backup, or a backup's detail: none reads it
    quiet = next(ev for ev in by_source["alerts"] if ev.key == "a3")
    store.apply_poll("alerts", [replace(quiet, title="CPU (updated)", detail="more")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    run = next(ev for ev in by_source["backups"] if ev.key == "b30")
    store.apply_poll("backups", [replace(run, title="Backup (updated)", detail="more")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=3, seconds=30)) == set()
    # the same alert ten minutes later (the same day): bursts and the summary count it
    store.apply_poll("alerts", [replace(quiet, start=quiet.start + timedelta(minutes=10), end=(quiet.end or quiet.start) + timedelta(minutes=10))], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=3, seconds=40)) == {"bursts", "summary"}
    # a backup's link (its flag quotes the last good run's) and a ticket's title (its flag's)
    store.apply_poll("backups", [replace(run, url="https://backups.example/b30")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=3, seconds=50)) == {"backups"}
    tk = by_source["tickets"][1]
    store.apply_poll("tickets", [replace(tk, title="Still broken (updated)")], absence="keep",
                     complete=False, now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=3, seconds=55)) == {"stale_tickets", "summary"}
    # a backup row deleted under the store
    with store.engine.begin() as conn:
        conn.execute(delete(events_table).where(and_(events_table.c.source == "backups", events_table.c.key == "b60")))
    assert change_runs(NOW + timedelta(minutes=4)) == {"backups", "summary"}
    # a ticket moved to another account
    moved = replace(by_source["tickets"][0], account="globex")
    store.apply_poll("tickets", [moved], absence="keep", complete=False, now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=5)) == {"stale_tickets", "summary"}
    # a backup closed by absence (the host's series without its last run)
    store.apply_poll("backups", [ev for ev in by_source["backups"] if ev.key != "w9"], absence="close", complete=True,
                     now=NOW.timestamp(), previous_success=None)
    assert change_runs(NOW + timedelta(minutes=6)) == {"backups", "summary"}
    # the clock: the fresh ticket goes stale (an instant its run noted)
    assert "stale_tickets" in ran(NOW + timedelta(hours=5))
    # the next local day runs everything again
    ran(NOW + timedelta(hours=5, minutes=1))
    assert ran(NOW + timedelta(hours=5, minutes=2)) == set()
    assert ran(datetime.combine(date(2026, 3, 19), datetime.min.time(), BERLIN).astimezone(timezone.utc)) == every
    # and so does another setting
    other = make_config(tmp_path / "other", {"bursts": {"min_alerts": 9}})
    runs.clear()
    refresh_reused(other, store, datetime(2026, 3, 19, 1, tzinfo=BERLIN))
    assert set(runs) == every
    store.close()


# --- random histories against the full recompute ------------------------------------------

HOSTS = ("db01", "db02", None)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(3, 9))):
        what = draw(st.sampled_from(["poll", "poll", "edit", "edit", "delete", "clock", "refresh"]))
        if what == "poll":
            source = draw(st.sampled_from(["alerts", "backups", "tickets"]))
            events = []
            for i in draw(st.lists(st.integers(0, 30), max_size=8, unique=True)):
                when = NOW + timedelta(days=draw(st.integers(-60, 3)), minutes=draw(st.integers(0, 1439)))
                account = draw(st.sampled_from(["acme", "acme", "globex", "10042"]))
                if source == "alerts":
                    ev = alert(f"x{i}", when, title=draw(st.sampled_from(["CPU", "Disk"])), account=account)
                elif source == "backups":
                    ev = backup(f"x{i}", when, host=draw(st.sampled_from(HOSTS)), full=draw(st.booleans()),
                                account=account)
                else:
                    ev = ticket(f"x{i}", when, state=draw(st.sampled_from(["open", "closed"])), account=account,
                                updated=draw(st.sampled_from([None, when + timedelta(days=2)])))
                if draw(st.integers(0, 5)) == 0:
                    ev = replace(ev, status="cancelled")
                events.append(ev)
            keep = draw(st.booleans())  # the history's events stay, or go by the absence policy
            ops.append(("poll", (source, events, keep, draw(st.sampled_from(["keep", "close", "cancel"])))))
        elif what == "edit":  # one stored event of the history: its text only, its state, link, time or account
            source = draw(st.sampled_from(["alerts", "backups", "tickets"]))
            ops.append(("edit", (source, draw(st.integers(0, 200)),
                                 draw(st.sampled_from(["title", "title", "detail", "status", "url", "start", "move"])))))
        elif what == "delete":
            ops.append(("delete", (draw(st.sampled_from(["alerts", "backups", "tickets"])), draw(st.integers(0, 30)))))
        elif what == "clock":
            ops.append(("clock", draw(st.sampled_from([0, 1, 60, 5 * 60, 9 * 60, 18 * 60, 24 * 60, 3 * 1440, 8 * 1440]))))
        else:
            ops.append(("refresh", None))
    return [*ops, ("refresh", None)]


def edited(ev: Event, field: str, url: str) -> Event:
    """One stored event with one thing changed: its text only, its state, link, time or account."""
    if field == "title":
        return replace(ev, title=f"{ev.title} (updated)")
    if field == "detail":
        return replace(ev, detail=f"{ev.detail} more")
    if field == "status":
        return replace(ev, status="cancelled" if ev.status != "cancelled" else "confirmed")
    if field == "url":
        return replace(ev, url=url)
    if field == "start":
        late = timedelta(minutes=50)
        return replace(ev, start=ev.start + late, end=ev.end + late if ev.end is not None else None)
    return replace(ev, account="globex" if ev.account != "globex" else "acme")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=operations())
def test_flags_with_reuse_are_the_full_recomputes_after_random_changes(
        tmp_path_factory: pytest.TempPathFactory, another_store: Callable[[], None],
        ops: list[tuple[str, Any]]) -> None:
    pair = Pair(tmp_path_factory.mktemp("pair"), another_store)
    base: dict[str, list[Event]] = {}
    for ev in history():
        base.setdefault(ev.source, []).append(ev)
    now = NOW
    for source, evs in base.items():
        pair.poll(source, evs, now)
    pair.refresh(now)
    pair.refresh(now + timedelta(minutes=1))  # the first refresh that records what it read
    now += timedelta(minutes=1)
    for what, arg in ops:
        if what == "poll":
            source, events, keep, absence = arg
            pair.poll(source, (base[source] if keep else []) + events, now, absence)
        elif what == "edit":
            source, i, field = arg
            i %= len(base[source])
            ev = edited(base[source][i], field, f"https://origin.example/{source}/{i}/{now.minute}")
            base[source][i] = ev
            for store in pair.stores:
                store.apply_poll(source, [ev], absence="keep", complete=False, now=now.timestamp(),
                                 previous_success=None)
        elif what == "delete":
            source, i = arg
            for store in pair.stores:
                with store.engine.begin() as conn:
                    t = events_table
                    conn.execute(delete(t).where(and_(t.c.source == source, t.c.key == f"x{i}")))
        elif what == "clock":
            now += timedelta(minutes=arg)
        else:
            pair.refresh(now)
            pair.same()
    assert pair.same(), "no flags at all: the history makes some"
    pair.close()
