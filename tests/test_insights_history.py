"""The insight refresh's fast paths give what the slow ones gave, on hostile data, on a real Store.

* the history (icsfeed/store/history.py: one read of the account's rows, without fragments,
  its flags once, one source re-read after a write) answers every detector's request as
  one ``Store.query_events`` per request did (``QueryHistory``, the reader before);
* ``same_events`` says "nothing to write" only when ``apply_poll`` would change nothing;
* backups skip the days whose rhythm cannot be regular and find what learning every day finds;
* the summary cuts its weeks from one read as each week's own read did;
* and a refresh with nothing changed decodes each row once and rewrites no flag.
"""

from __future__ import annotations

import itertools
import math
import random
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_insights_support import at, backup, make_config, make_world

from icsfeed.config import AccountConfig
from icsfeed.insights import backups, refresh_account, settings_of, summary
from icsfeed.insights.base import INSIGHT_KIND, AccountContext, History, _indexed
from icsfeed.model import Event
from icsfeed.store import EventRow, FeedQuery, Store
from icsfeed.store import events as store_events
from icsfeed.store.history import same_events, same_value, split_unchanged

NOW = datetime(2026, 3, 18, 14, 0, tzinfo=timezone.utc)
ZONES = ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Berlin", "America/New_York")
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
_serial = itertools.count()


class QueryHistory:
    """The history as it was read before (main at b12ca9c): a query per range, every flag
    of the account by a query of all time, the flags read again after any write."""

    def __init__(self, store: Store, account: AccountConfig, start: datetime, end: datetime) -> None:
        self.store, self.keys, self.start, self.end = store, frozenset(account.match_keys), start, end
        self._base: list[tuple[float, float, EventRow]] | None = None
        self._insights: list[tuple[float, float, EventRow]] | None = None

    def _query(self, lo: float, hi: float, kinds: frozenset[str] | None) -> list[EventRow]:
        return self.store.query_events(FeedQuery(lo, hi, account_keys=self.keys, kinds=kinds))

    def rows(self, start: datetime, end: datetime, kinds: frozenset[str] | None = None) -> list[EventRow]:
        lo, hi = start.timestamp(), end.timestamp()
        if lo >= self.start.timestamp() and hi <= self.end.timestamp():
            span = (self.start.timestamp(), self.end.timestamp())
            if self._base is None:
                everything = _indexed(self._query(*span, None))
                self._base = [r for r in everything if r[2].event.kind != INSIGHT_KIND]
                self._insights = [r for r in everything if r[2].event.kind == INSIGHT_KIND]
            if self._insights is None:
                self._insights = _indexed(self._query(*span, frozenset({INSIGHT_KIND})))
            rows = self._base
            if kinds is None or INSIGHT_KIND in kinds:
                rows = sorted(rows + self._insights, key=lambda r: r[0])
            return [r for s, e, r in rows if s < hi and e >= lo and (kinds is None or r.event.kind in kinds)]
        return self._query(lo, hi, kinds)

    def forget(self) -> None:
        self._insights = None

    def stored(self, account: AccountConfig) -> dict[str, list[Event]]:
        query = FeedQuery(0.0, 1e11, account_keys=frozenset({account.id.strip().lower()}),
                          kinds=frozenset({INSIGHT_KIND}))
        out: dict[str, list[Event]] = {}
        for row in self.store.query_events(query):
            out.setdefault(row.event.source, []).append(row.event)
        return out


def seen(rows: list[EventRow]) -> list[tuple[Any, ...]]:
    """What a detector reads of rows (the fragments are not read: the new reader leaves them out)."""
    return [(r.id, r.uid, r.event, r.sequence, r.created, r.last_modified) for r in rows]


# --- hostile histories ------------------------------------------------------------------

KEYS = ("{a}", "{A}", " {a} ", "{a}-corp", "other", "")


@st.composite
def history_events(draw: st.DrawFn, account: str) -> list[Event]:
    """Events of every shape around NOW: dates and times, open, ongoing, recurring,
    cancelled, on the window's edges, under the account's keys in any case, and others'."""
    out = []
    n = draw(st.integers(0, 40))
    for i in range(n):
        kind = draw(st.sampled_from(["alert", "backup", "ticket", "maintenance", INSIGHT_KIND]))
        day_offset = draw(st.one_of(st.integers(-420, 40), st.sampled_from([-365, -205, -204, -203, 0, 1])))
        all_day = draw(st.booleans())
        minute = draw(st.integers(0, 24 * 60 - 1))
        if all_day:
            start: date | datetime = (NOW + timedelta(days=day_offset)).date()
            end: date | datetime | None = draw(st.sampled_from([None, start + timedelta(days=1), start + timedelta(days=9)]))
            seen_at = None
        else:
            start = datetime.combine((NOW + timedelta(days=day_offset)).date(), time(0), timezone.utc) + timedelta(minutes=minute)
            end = draw(st.sampled_from([None, start, start + timedelta(hours=3), start + timedelta(days=30)]))
            seen_at = draw(st.sampled_from([None, start + timedelta(hours=5)])) if end is None else None
        key = draw(st.sampled_from(KEYS)).format(a=account, A=account.upper())
        source = (f"insight-{draw(st.sampled_from(['bursts', 'summary']))}:{draw(st.sampled_from([account, 'other']))}"
                  if kind == INSIGHT_KIND else f"src-{kind}")
        out.append(Event(
            source=source, key=f"k{i}\x00" if i % 7 == 3 else f"k{i}", kind=kind, title=f"t{i} \u2603",
            start=start, end=end, seen=seen_at, account=key or None,
            status=draw(st.sampled_from(["confirmed", "confirmed", "cancelled", "tentative"])),
            rrule="FREQ=YEARLY" if draw(st.integers(0, 9)) == 0 else None,
            attrs={"insight": "bursts", "n": draw(st.sampled_from([1, 1.0, True, None]))}))
    return out


def stored_world(tmp_path: Path) -> Store:
    config = make_config(tmp_path / f"w{next(_serial)}")
    return Store(config.storage_url, uid_host=config.uid_host)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return stored_world(tmp_path_factory.mktemp("history"))


def poll_all(store: Store, events: list[Event]) -> None:
    by_source: dict[str, list[Event]] = {}
    for ev in events:
        by_source.setdefault(ev.source, []).append(ev)
    for source, evs in sorted(by_source.items()):
        store.apply_poll(source, evs, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)


@SLOW
@given(data=st.data(), zone=st.sampled_from(ZONES))
def test_history_answers_every_request_as_one_query_per_request_did(tmp_path: Path, data: st.DataObject,
                                                                     zone: str) -> None:
    account_id = f"acc{next(_serial)}"
    account = AccountConfig(id=account_id, name="A", keys=[f"{account_id}-corp", f"{account_id.upper()}"], timezone=zone)
    store = stored_world(tmp_path)
    poll_all(store, [replace_source(ev, account_id) for ev in data.draw(history_events(account_id))])
    tz = ZoneInfo(zone)
    start = datetime.combine(NOW.astimezone(tz).date() - timedelta(days=205), time(0), tz)
    end = NOW + timedelta(days=1)
    lookback = datetime.combine(NOW.astimezone(tz).date() - timedelta(days=365), time(0), tz)
    new = History(store, account, start, end, wide=(lookback, NOW + timedelta(seconds=1)),
                  wide_kinds=frozenset({"ticket"}))
    keyed = History(store, account, start, end, wide=(lookback, NOW + timedelta(seconds=1)),
                    wide_kinds=frozenset({"ticket"}))  # told what the write below wrote: re-reads those rows only
    old = QueryHistory(store, account, start, end)
    assert {sid: [r.row.event for r in rows] for sid, rows in new.stored().items()} == old.stored(account)
    requests = [(start, end, None), (start + timedelta(days=100), NOW, None),
                (start + timedelta(days=3), NOW + timedelta(seconds=1), frozenset({"alert"})),
                (start, end, frozenset({INSIGHT_KIND})), (start, end, frozenset({"backup", INSIGHT_KIND})),
                (lookback, NOW + timedelta(seconds=1), frozenset({"ticket"})),  # the wide range: from memory
                (lookback, NOW + timedelta(days=2), frozenset({"ticket"})),  # beyond it: a query of its own
                (lookback + timedelta(days=30), NOW, frozenset({"ticket"})),
                (start - timedelta(days=60), end, frozenset({"alert", "backup"}))]
    for lo, hi, kinds in requests:
        assert seen(new.rows(lo, hi, kinds)) == seen(old.rows(lo, hi, kinds)), (lo, hi, kinds)
    # a detector writes its flags (one gone, one changed, one new): the next one reads them
    sid = f"insight-bursts:{account_id}"
    flags = old.stored(account).get(sid, [])
    written = [ev if i % 2 else replace_title(ev) for i, ev in enumerate(flags[1:])]
    written.append(Event(source=sid, key="fresh", kind=INSIGHT_KIND, title="new", start=NOW.date(),
                         end=NOW.date() + timedelta(days=1), account=account_id))
    assert keyed.stored() is not None  # (its flags read before the write)
    write, known = split_unchanged(written, keyed.stored().get(sid, []))  # as the refresh writes them
    store.apply_poll(sid, write, absence="cancel", complete=True, now=NOW.timestamp() + 60, previous_success=None,
                     known=known)
    new.forget(sid)
    keyed.forget(sid, write, known)
    old.forget()
    for lo, hi, kinds in requests[:5]:
        assert seen(new.rows(lo, hi, kinds)) == seen(old.rows(lo, hi, kinds)), (lo, hi, kinds)
        assert seen(keyed.rows(lo, hi, kinds)) == seen(old.rows(lo, hi, kinds)), (lo, hi, kinds)
    assert [(r.row.id, r.content_hash, r.row.sequence, r.gone) for r in keyed.flags() or []] == \
        [(r.row.id, r.content_hash, r.row.sequence, r.gone) for r in new.flags() or []]
    store.close()


def replace_source(ev: Event, account_id: str) -> Event:
    """The drawn events' sources made unique to this example (one store may hold several)."""
    from dataclasses import replace

    if ev.kind == INSIGHT_KIND:
        return ev
    return replace(ev, source=f"{ev.source}-{account_id}")


def replace_title(ev: Event) -> Event:
    from dataclasses import replace

    return replace(ev, title=ev.title + " (changed)")


# --- flags as stored ------------------------------------------------------------------------

VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, 1e300, math.nan, math.inf]),
              st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("ab"), inner, max_size=2)),
    max_leaves=6)
#: values equal in Python that JSON writes apart, and the reverse: a swap must never pass as "the same"
SWAPS = [(1, 1.0), (1, True), (0.0, -0.0), ("1", 1), ([1], (1,)), (None, "None")]


@SLOW
@given(data=st.data())
def test_same_events_only_when_the_poll_would_change_nothing(module_store: Store, data: st.DataObject) -> None:
    store = module_store
    sid = f"insight-bursts:same{next(_serial)}"
    n = data.draw(st.integers(0, 5))
    stored = [Event(source=sid, key=f"f{i}", kind=INSIGHT_KIND, title=f"flag {i}", start=NOW.date(),
                    end=NOW.date() + timedelta(days=1), account="same",
                    attrs={"v": data.draw(VALUES), "w": data.draw(VALUES)}) for i in range(n)]
    store.apply_poll(sid, stored, absence="cancel", complete=True, now=NOW.timestamp(), previous_success=None)
    if n and data.draw(st.booleans()):  # some gone already (cancelled by an earlier refresh)
        store.apply_poll(sid, stored[1:], absence="cancel", complete=True, now=NOW.timestamp(), previous_success=None)
    from icsfeed.store.history import source_events

    rows = source_events(store, sid)
    fresh = [r.row.event for r in rows if data.draw(st.integers(0, 5)) > 0]  # some left out
    fresh = [swap(ev, data) for ev in fresh]
    if data.draw(st.booleans()) and fresh:
        fresh.append(fresh[0])  # a key twice
    if data.draw(st.integers(0, 4)) == 0:
        fresh.append(Event(source=sid, key="new", kind=INSIGHT_KIND, title="new", start=NOW.date(), account="same"))
    before = [(r.key, r.row.sequence, r.gone, r.row.event) for r in rows]
    verdict = same_events(fresh, rows)
    changes = store.apply_poll(sid, fresh, absence="cancel", complete=True, now=NOW.timestamp() + 1,
                               previous_success=None)
    after = [(r.key, r.row.sequence, r.gone, r.row.event) for r in source_events(store, sid)]
    if verdict:  # nothing written: no new, updated, cancelled or revived row
        assert not changes.changed and not changes.duplicates and after == before
    else:  # (the reverse need not hold: "same" is strict)
        assert changes.changed or changes.duplicates or after != before or not same_or_swapped(fresh, rows)


def swap(ev: Event, data: st.DataObject) -> Event:
    """The event, or with one value swapped for one Python calls equal (or not)."""
    from dataclasses import replace

    if data.draw(st.integers(0, 3)):
        return ev
    a, b = data.draw(st.sampled_from(SWAPS))
    value = ev.attrs.get("v")
    if same_value(value, a):
        return replace(ev, attrs={**ev.attrs, "v": b})
    return replace(ev, attrs={**ev.attrs, "v": a if data.draw(st.booleans()) else b})


def same_or_swapped(fresh: list[Event], rows: list[Any]) -> bool:
    """Whether ``fresh`` holds only stored events, each once, none gone (a swap may look equal)."""
    keys = [str(ev.key) for ev in fresh]
    live = {r.key for r in rows if not r.gone}
    return len(set(keys)) == len(keys) and set(keys) == live


def test_same_value_tells_apart_what_json_writes_apart() -> None:
    for a, b in SWAPS:
        assert not same_value(a, b) and not same_value(b, a)
    assert same_value(math.nan, math.nan) and not same_value(math.nan, math.inf)  # JSON writes NaN as NaN
    assert same_value({"a": [1, 2.5, None, "x", {"b": True}]}, {"a": [1, 2.5, None, "x", {"b": True}]})
    assert not same_value({"a": 1}, {"a": 1, "b": 1}) and not same_value({1: "x"}, {1: "x"})


# --- backups: days skipped ------------------------------------------------------------------


@st.composite
def backup_runs(draw: st.DrawFn) -> list[Event]:
    """A host's runs: sparse to daily, weekly on some weekdays, with late, early and full ones."""
    first = date(2025, 10, 1) + timedelta(days=draw(st.integers(0, 120)))
    density = draw(st.sampled_from([0.03, 0.08, 0.2, 0.5, 0.9, 1.0]))
    weekdays = draw(st.sets(st.integers(0, 6), min_size=0, max_size=7))
    rnd = random.Random(draw(st.integers(0, 10**6)))
    stop = draw(st.one_of(st.none(), st.integers(10, 150)))
    out = []
    for i in range((NOW.date() - first).days + 1):
        day = first + timedelta(days=i)
        if stop is not None and i > stop:
            break
        if (day.weekday() in weekdays and rnd.random() < 0.9) or rnd.random() < density * (0.2 if weekdays else 1):
            when = at(day, 1, 30) + timedelta(minutes=rnd.choice([0, 0, 0, 5, -40, 14 * 60, -13 * 60, 23 * 60]))
            if when <= NOW:
                out.append(backup(f"r{i}", when, host=draw(st.sampled_from(["db01", "db02"])),
                                  full=day.weekday() == 6 and rnd.random() < 0.8))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=backup_runs(), min_weeks=st.integers(1, 8), min_backups=st.integers(2, 6))
def test_backups_skipping_days_that_cannot_be_regular_finds_what_learning_every_day_finds(
        tmp_path_factory: pytest.TempPathFactory, runs: list[Event], min_weeks: int, min_backups: int) -> None:
    config = backups_config(tmp_path_factory)
    s = settings_of(config).backups.model_copy(update={"min_weeks": min_weeks, "min_backups": min_backups})
    ctx = AccountContext(config, settings_of(config), config.accounts["acme"], NOW, history=None)  # type: ignore[arg-type]
    report_start = NOW.date() - timedelta(days=91)
    for series in backups.build_series(ctx, runs, s):
        fast = backups._check_series(ctx, series, s, report_start)
        slow = backups._check_series(ctx, series, s, report_start, skip=False)
        assert fast == slow
        learner = backups.Learner(series, ctx.today, s)
        for i in range(learner.n):
            day = series.first_day + timedelta(days=i)
            if not learner.may_be_regular(day):
                assert learner.learn(day).status != "regular", day


_configs: dict[str, Any] = {}


def backups_config(factory: pytest.TempPathFactory) -> Any:
    if "c" not in _configs:
        _configs["c"] = make_config(factory.mktemp("backups"))
    return _configs["c"]


# --- summary: weeks cut from one read ---------------------------------------------------------


@SLOW
@given(data=st.data(), zone=st.sampled_from(ZONES))
def test_summary_cuts_its_weeks_from_one_read_as_each_read_did(tmp_path: Path, data: st.DataObject, zone: str) -> None:
    account_id = f"sum{next(_serial)}"
    account = AccountConfig(id=account_id, name="S", keys=[], timezone=zone)
    store = stored_world(tmp_path)
    poll_all(store, [replace_source(ev, account_id) for ev in data.draw(history_events(account_id))])
    config = make_config(tmp_path / f"c{next(_serial)}", accounts=[account.model_dump()])
    tz = ZoneInfo(zone)
    start = datetime.combine(NOW.astimezone(tz).date() - timedelta(days=205), time(0), tz)
    history = History(store, config.accounts[account_id], start, NOW + timedelta(days=1))
    ctx = AccountContext(config, settings_of(config), config.accounts[account_id], NOW, history)
    s = ctx.settings.summary
    monday = summary.this_monday(ctx)
    pool = summary._pool(ctx, monday - timedelta(days=7 * (s.backfill_weeks + s.baseline_weeks + 1)), monday)
    assert pool is not None
    weeks = summary._Weeks(pool, monday)  # every week counted once, each summary's cut from them
    for k in range(s.backfill_weeks + 1):
        week = monday - timedelta(days=7 * k)
        assert summary._summary(ctx, week, current=k == 0, weeks=weeks) == summary._summary(ctx, week, current=k == 0)
    store.close()


@pytest.mark.parametrize("zone", ["America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
def test_summary_weeks_leave_out_what_each_window_left_out(tmp_path: Path, zone: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """West of UTC a date without an end on a summary's first day lies outside its window:
    counted by its day, it must still be left out, as the summary's own read leaves it out
    (the weeks are counted once; such items are taken out again); on the edge days east of
    UTC every item counts."""
    account_id = f"edge{next(_serial)}"
    config = make_config(tmp_path / "c", accounts=[AccountConfig(id=account_id, name="E", timezone=zone).model_dump()])
    store = stored_world(tmp_path)
    tz = ZoneInfo(zone)
    ctx0 = AccountContext(config, settings_of(config), config.accounts[account_id], NOW, history=None)  # type: ignore[arg-type]
    s = ctx0.settings.summary
    monday = summary.this_monday(ctx0)
    events = []
    for j in range(s.backfill_weeks + 1):
        m = monday - timedelta(days=7 * j)
        first = m - timedelta(days=7 * (s.baseline_weeks + 1))
        for n, (day, kind, end) in enumerate([(first, "alert", None), (m - timedelta(days=1), "ticket", None),
                                              (first, "backup", first + timedelta(days=1)),
                                              (m - timedelta(days=7), INSIGHT_KIND, None)]):
            source = f"insight-bursts:{account_id}" if kind == INSIGHT_KIND else f"src-{kind}-{account_id}"
            events.append(Event(source=source, key=f"{j}-{n}", kind=kind, title=f"edge {j} {n}", start=day, end=end,
                                account=account_id, attrs={"insight": "bursts"} if kind == INSIGHT_KIND else {}))
        events.append(Event(source=f"src-alert-{account_id}", key=f"{j}-t", kind="alert", title="timed",
                            start=datetime.combine(first, time(0), tz), end=None, account=account_id))
    poll_all(store, events)
    start = datetime.combine(NOW.astimezone(tz).date() - timedelta(days=205), time(0), tz)
    history = History(store, config.accounts[account_id], start, NOW + timedelta(days=1))
    ctx = AccountContext(config, settings_of(config), config.accounts[account_id], NOW, history)
    pool = summary._pool(ctx, monday - timedelta(days=7 * (s.backfill_weeks + s.baseline_weeks + 1)), monday)
    assert pool is not None
    left_out: list[int] = []
    outside = summary._Weeks._outside
    monkeypatch.setattr(summary._Weeks, "_outside", lambda self, *a: left_out.extend(outside(self, *a)) or outside(self, *a))
    weeks = summary._Weeks(pool, monday)
    for k in range(s.backfill_weeks + 1):
        week = monday - timedelta(days=7 * k)
        assert summary._summary(ctx, week, current=k == 0, weeks=weeks) == summary._summary(ctx, week, current=k == 0)
    west = (NOW.astimezone(tz).utcoffset() or timedelta(0)) < timedelta(0)
    assert bool(left_out) == west  # west of UTC a first day's date without an end ends before its midnight
    store.close()


# --- a refresh with nothing changed -----------------------------------------------------------


def test_a_refresh_with_nothing_changed_decodes_each_row_once_and_rewrites_no_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every row decoded two or three times (the window, the flags, the flags again
    after a detector wrote), and every detector's flags written as a poll (encoded, hashed and
    compared row by row) even when none had changed."""
    world = make_world(tmp_path)
    first = NOW - timedelta(days=80)
    history = [backup(f"b{i}", first + timedelta(days=i, hours=1)) for i in range(80) if i % 9]  # missed runs
    history += [backup(f"x{i}", first + timedelta(days=5 * i + 2), host=f"h{i % 7}") for i in range(16)]  # irregular
    world.poll("backups", history, NOW)
    world.refresh(NOW)
    assert world.flags("backups") and world.flags("summary")
    rows = world.store.query_events(FeedQuery(0.0, 1e11, account_keys=frozenset({"acme", "acme corp", "10042"})))
    decoded: list[str] = []
    original = store_events.stored_event
    monkeypatch.setattr(store_events, "stored_event",
                        lambda data, codec=None: (decoded.append(data), original(data, codec))[1])
    polls: list[str] = []
    apply_poll = Store.apply_poll
    monkeypatch.setattr(Store, "apply_poll", lambda self, sid, *a, **k: (polls.append(sid), apply_poll(self, sid, *a, **k))[1])
    states = {s: st.polls_total for s, st in world.store.source_states().items() if s.startswith("insight-")}
    config = world.config
    refresh_account(config, world.store, settings_of(config), config.accounts["acme"], NOW.timestamp() + 60)
    assert len(decoded) <= len(rows), "a row decoded more than once"
    assert polls == [], "flags that had not changed were written again"
    after = {s: st for s, st in world.store.source_states().items() if s.startswith("insight-")}
    for source, total in states.items():  # each detector's run is still recorded, as a poll records it
        assert after[source].polls_total == total + 1 and after[source].last_success == NOW.timestamp() + 60
    assert [ev for ev in world.flags()] == [r.event for r in world.rows()]
