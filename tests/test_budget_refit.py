"""A feed over its size budget re-rendered from its previous body and plan columns (icsfeed.refit).

Whatever changes between two renders -- titles edited, events new or gone, moved to another
day, insight flags appearing, severities, the window moving on -- the re-rendered body of each
budgeted feed (rolled-up days, a shorter window, events left out) must be the one a render from
the events alone makes, byte for byte; and a small change must take the re-render from the
plan columns (reading only the changed rows), not a render from every event.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from test_render_splice import from_scratch, stored_bodies

import icsfeed.refit as refit_module
import icsfeed.render as render_module
from icsfeed.budget import _SUMMARY, _URL, ROLLUP_TITLE_MAX, RollupFields, listed_bytes, rollup_component, rollup_vevent
from icsfeed.config import Config
from icsfeed.model import Event
from icsfeed.render import clean_text, clean_title, fragment_renderer, render_feeds
from icsfeed.routing import all_feeds
from icsfeed.store import Store

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
CONFIG = """
insights: {enabled: false}
server: {base_url: "https://cal.example.com"}
feeds: {timezone: Europe/Berlin, window_back_days: 12, window_ahead_days: 5}
accounts:
  - {id: acme, name: "ACME, Inc.", keys: [acme], budget: {max_events: 10, keep_individual: [maintenance, insight]}}
  - {id: beta, name: Beta, keys: [beta], budget: {max_events: 30, max_bytes: 10000}}
teams:
  - {id: all, name: All, accounts: "*", budget: {max_events: 18}}
  - {id: small, name: Small, accounts: "*", kinds: [alert, insight], budget: {max_events: 10}}
"""
KINDS = ("alert", "alert", "backup", "ticket", "maintenance", "insight")
TABLES = ("rollups", "feed_parts", "feeds", "events", "source_state")


def event(key: int, kind: str, day: int, hour: int, account: str, severity: str | None, version: int = 0) -> Event:
    start = NOW.replace(hour=0) + timedelta(days=day, hours=hour)
    return Event(source="src", key=f"k{key}", kind=kind, title=f"{kind} {key} v{version}; on host-{key % 5}",
                 start=start, end=start + timedelta(minutes=20 + key % 50), detail=f"detail {key}, v{version}",
                 url=f"https://origin.example/{kind}/{key}", account=account, severity=severity,
                 attrs={"view_link": True} if kind == "insight" else {})


specs = st.tuples(st.sampled_from(KINDS), st.one_of(st.integers(-14, 5), st.sampled_from([-2, -1, 0])), st.integers(0, 23), st.sampled_from(["acme", "beta"]),
                  st.sampled_from(["critical", "warning", None]))
change = st.sampled_from(["title", "new", "gone", "move", "flag", "severity", "later"])


def _wipe(store: Store) -> None:
    with store.engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


def _worked_out(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each version list of a re-render was worked out from the changes (True), each
    one checked against the list ``feed_versions`` reads now."""
    took: list[bool] = []
    original = render_module._versions_since

    def spy(store: Store, query: Any, listed: Any) -> Any:
        out = original(store, query, listed)
        took.append(out is not None)
        if out is not None:
            assert (out[0], out[1], out[2]) == store.feed_versions(query)
            assert out[3] == [n for n in range(len(out[0])) if (out[1][n], out[2][n]) != (listed.seqs[n], listed.mods[n])]
        return out

    monkeypatch.setattr(render_module, "_versions_since", spy)
    return took


def _no_join(stored: Any, calls: list[Any]) -> Any:
    """``stored`` (StoredSegments) recording in ``calls`` when its whole body is joined."""
    if stored is not None:
        body = stored.body
        stored.body = lambda: calls.append("body") or body()
    return stored


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each refit made the feed (True) or left it to the render from the events."""
    made: list[bool] = []
    original = refit_module.refit

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fitted = original(*args, **kwargs)
        made.append(fitted is not None)
        return fitted

    monkeypatch.setattr(refit_module, "refit", wrapper)
    return made


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(first=st.lists(specs, min_size=25, max_size=60),
       rounds=st.lists(st.tuples(st.lists(change, min_size=1, max_size=4), st.randoms(use_true_random=False)),
                       min_size=1, max_size=4))
def test_refit_equals_a_render_from_scratch_after_random_changes(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]],
        first: list[tuple[Any, ...]], rounds: list[tuple[list[str], random.Random]]) -> None:
    config, store = _env(make_env)
    _wipe(store)
    fragment = fragment_renderer(config)
    events = {k: event(k, *spec) for k, spec in enumerate(first)}
    now = NOW

    def poll(at: datetime, with_fragments: bool) -> None:
        store.apply_poll("src", list(events.values()), absence="delete", complete=True, now=at.timestamp(),
                         previous_success=(at - timedelta(minutes=5)).timestamp(),
                         affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                         fragment=fragment if with_fragments else None)

    poll(now, True)
    render_feeds(config, store, now=now)
    assert stored_bodies(config, store) == from_scratch(config, store, now)
    with pytest.MonkeyPatch.context() as patch:  # every list worked out from the changes is the one read whole
        _worked_out(patch)
        _random_rounds(config, store, events, now, rounds, poll)


def _random_rounds(config: Config, store: Store, events: dict[int, Event], now: datetime,
                   rounds: list[tuple[list[str], random.Random]], poll: Callable[[datetime, bool], None]) -> None:
    next_key = max(events) + 1
    for n, (changes, rnd) in enumerate(rounds, start=1):
        keys = sorted(events)
        for what in changes:
            k = rnd.choice(keys)
            ev = events.get(k)
            if what == "title" and ev is not None:
                events[k] = replace(ev, title=f"{ev.title} (updated {n})")
            elif what == "new":
                events[next_key] = event(next_key, rnd.choice(KINDS), rnd.randrange(-14, 6), rnd.randrange(24),
                                         rnd.choice(["acme", "beta"]), "critical", n)
                next_key += 1
            elif what == "gone" and ev is not None and len(events) > 1:
                del events[k]
            elif what == "move" and ev is not None:  # to another day (another group, or out of the window)
                shift = timedelta(days=rnd.choice([-3, -1, 1, 2]))
                events[k] = replace(ev, start=ev.start + shift, end=ev.end + shift if ev.end else None)
            elif what == "flag":  # an insight flag appears
                events[next_key] = event(next_key, "insight", rnd.randrange(-3, 1), rnd.randrange(24),
                                         rnd.choice(["acme", "beta"]), None, n)
                next_key += 1
            elif what == "severity" and ev is not None:
                events[k] = replace(ev, severity=rnd.choice(["critical", "warning", "info", None]))
            elif what == "later":  # the window moves on (a new day: rollups' days fall out behind)
                now += timedelta(hours=rnd.choice([3, 25]))
        poll(now, with_fragments=n % 2 == 1)
        render_feeds(config, store, now=now)
        assert stored_bodies(config, store) == from_scratch(config, store, now), f"round {n}: {changes}"


def _env(make_env: Callable[[dict[str, str]], tuple[Config, Store]]) -> tuple[Config, Store]:
    """One store per test (hypothesis runs the examples in one test call; each wipes it first)."""
    env = getattr(make_env, "env", None)
    if env is None:
        env = make_env({"icsfeed.yaml": CONFIG})
        make_env.env = env  # type: ignore[attr-defined]
    return env  # type: ignore[no-any-return]


def test_a_title_edit_refits_reading_only_the_changed_row(
        make_env: Callable[[dict[str, str]], tuple[Config, Store]], monkeypatch: pytest.MonkeyPatch) -> None:
    """One title edited in a rolled-up, window-shrunk feed: the re-render is the refit (only that
    row's columns and fragment read, no feed-wide read of columns or fragments), and its bytes
    are a render's from the events alone; the rollup holding it gets SEQUENCE one higher."""
    config, store = make_env({"icsfeed.yaml": CONFIG})
    rnd = random.Random(5)
    events = {k: event(k, "alert" if k % 3 else "backup", -rnd.randrange(0, 12), rnd.randrange(24), "acme",
                       "critical") for k in range(60)}
    fragment = fragment_renderer(config)

    def poll(at: datetime) -> None:
        store.apply_poll("src", list(events.values()), absence="delete", complete=True, now=at.timestamp(),
                         previous_success=None, affected=lambda touched: [s.feed_id for s in all_feeds(config)],
                         fragment=fragment)

    poll(NOW)
    render_feeds(config, store, now=NOW)
    before = store.feed_reports()["account/acme"]
    assert before["over"] and before["rollups"] >= 1
    events[7] = replace(events[7], title="the edited one")
    poll(NOW + timedelta(minutes=5))
    made = _recording(monkeypatch)
    read: list[Sequence[int]] = []
    original = Store.part_attrs_by_id
    monkeypatch.setattr(Store, "part_attrs_by_id", lambda self, ids, keys: read.append(list(ids)) or original(self, ids, keys))
    whole: list[Any] = []
    for name in ("query_part_attrs", "query_feed_index", "query_feed_fragments"):
        monkeypatch.setattr(Store, name, lambda *a, _name=name, **k: whole.append(_name) or [])
    versions = Store.feed_versions
    monkeypatch.setattr(Store, "feed_versions", lambda self, q: whole.append("feed_versions") or versions(self, q))
    took = _worked_out(monkeypatch)
    joined = Store.feed_segments  # the previous body is read as its segments: none of them joined
    monkeypatch.setattr(Store, "feed_segments", lambda self, feed_id: _no_join(joined(self, feed_id), whole))
    assert render_feeds(config, store, now=NOW, only=["account/acme"]) == ["account/acme"]
    # not even the feed's version list read whole: worked out from its plan columns and the changed
    # row; nor its previous body: the changed VEVENT and the rollups spliced into the stored segments
    assert made == [True] and took == [True] and whole == ["feed_versions"]  # (the spy's own check)
    assert [len(ids) for ids in read] in ([1], [1, 1])  # the changed row (and its fragment if it is shown)
    # a second edit re-renders from the body the refit made (its parts name its version list too)
    events[11] = replace(events[11], title="edited next")
    monkeypatch.undo()
    poll(NOW + timedelta(minutes=10))
    made, took = _recording(monkeypatch), _worked_out(monkeypatch)
    assert render_feeds(config, store, now=NOW, only=["account/acme"]) == ["account/acme"]
    assert made == [True] and took == [True]
    monkeypatch.undo()
    assert stored_bodies(config, store)["account/acme"] == from_scratch(config, store, NOW)["account/acme"]


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(summary=texts, detail=texts, link=st.one_of(st.none(), st.just("https://cal.example.com/v?t=a&month=2026-11#d20261120k0")),
       categories=st.lists(st.sampled_from(["Alert", "critical", "Ticket, open", "a;b", "Maintenance"]), min_size=1,
                           max_size=2),
       sequence=st.integers(0, 10_000), stamp=st.floats(1e9, 2e9), created=st.floats(1e9, 2e9),
       day=st.dates(date(2000, 1, 1), date(2090, 12, 31)),
       organizer=st.one_of(st.none(), st.just(("ops@example.com", "Ops, Inc.; 24/7"))))
def test_rollup_vevent_is_icalendars_bytes(summary: str, detail: str, link: str | None, categories: list[str],
                                           sequence: int, stamp: float, created: float, day: date,
                                           organizer: tuple[str, str] | None) -> None:
    """The rollup VEVENT written line by line is what icalendar's component makes of the same fields."""
    fields = RollupFields(uid="rollup-0123456789abcdef0123456789abcdef@cal.example.com", stamp=float(int(stamp)),
                          day=day, summary=clean_title(summary, 250), detail=clean_text(detail, 2000), link=link,
                          categories=tuple(categories), sequence=sequence, created=created, color="crimson",
                          organizer=organizer)
    assert rollup_vevent(fields) == rollup_component(fields).to_ical()


pieces = st.lists(st.sampled_from([b"\r\n", b"\r\n ", b"\r", b"SUMMARY:", b"URL", b"URL;VALUE=URI:", b":", b"a", b"\xc3\xa9",
                                   b"BEGIN:VEVENT", b"x" * 80, b" "]), max_size=40)


@settings(max_examples=500, deadline=None)
@given(parts=pieces)
def test_listed_bytes_measures_what_the_patterns_find(parts: list[bytes]) -> None:
    """listed_bytes (bytes.find) measures the SUMMARY and URL values the budget's patterns match."""
    fragment = b"".join(parts)
    summary, link = _SUMMARY.search(fragment), _URL.search(fragment)
    expected = min(len(summary.group(1)) if summary else 60, ROLLUP_TITLE_MAX + 8) + \
        (len(link.group(1)) if link else 0) + 12
    assert listed_bytes(fragment) == expected
