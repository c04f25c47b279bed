"""The stale-ticket verdicts kept between refreshes (icsfeed/insights/verdicts.py).

A refresh after a few tickets changed reads those tickets and rewrites their flags only: the
others' flags are named to the store unread, and the summary counts the open tickets from
the verdicts. Checked against the full recompute (``reuse=False``) in a second store given
the same polls, byte for byte (content hash, SEQUENCE, state of every flag), after random
ticket changes, tickets deleted and flags deleted under the store, a memo that is not one,
and the clock moving past the instant a ticket goes stale; and by counting what is decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import and_, delete, select, update
from test_insights_inputs import NOW, Pair
from test_insights_support import ticket

import icsfeed.store.events as store_events
from icsfeed.insights import refresh_account, settings_of
from icsfeed.model import Event
from icsfeed.store import Store
from icsfeed.store.schema import events_table, insight_inputs_table

STALE = "insight-stale_tickets:acme"


def tickets(n: int = 40) -> list[Event]:
    """Stale tickets (updated at the origin when opened: a new title is no update), one going
    stale in two hours, closed ones, and one of globex."""
    out = [ticket(f"t{i}", NOW - timedelta(days=9 + i), updated=NOW - timedelta(days=9 + i)) for i in range(n)]
    out += [ticket("soon", NOW - timedelta(days=6, hours=22))]  # stale at NOW + 2 h
    out += [ticket(f"c{i}", NOW - timedelta(days=20 + i), state="closed") for i in range(5)]
    out += [ticket("g0", NOW - timedelta(days=15), account="globex")]
    return out


def memo_of(store: Store, source: str = STALE) -> bytes | None:
    with store.engine.connect() as conn:
        return conn.execute(select(insight_inputs_table.c.memo)
                            .where(insight_inputs_table.c.source == source)).scalar()


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every stored row decoded (by any read of the store)."""
    seen: list[str] = []
    real = store_events.stored_event

    def counting(data: Any, codec: Any = None) -> Event:
        ev = real(data, codec)
        seen.append(ev.kind)
        return ev

    monkeypatch.setattr(store_events, "stored_event", counting)
    return seen


def test_a_changed_ticket_is_the_only_one_read_and_its_flag_the_only_one_written(
        tmp_path: Path, another_store: Callable[[], None], decoded: list[str]) -> None:
    pair = Pair(tmp_path, another_store)
    base = tickets()
    pair.poll("tickets", base, NOW)
    pair.refresh(NOW)
    pair.refresh(NOW + timedelta(minutes=1))
    flags = pair.same()
    stale = [f for f in flags if f[0] == STALE and not f[4]]
    assert len(stale) == 40, "every open ticket of acme but 'soon' is stale"
    assert memo_of(pair.stores[0]) is not None, "the reusing refresh keeps its verdicts"
    assert memo_of(pair.stores[1]) is None, "the full recompute records nothing"

    now = NOW + timedelta(minutes=2)
    changed = replace(base[3], title="#t3 Checkout is down")
    for store in pair.stores:
        store.apply_poll("tickets", [changed], absence="keep", complete=False, now=now.timestamp(),
                         previous_success=None)
    acme = pair.config.accounts["acme"]
    decoded.clear()
    refresh_account(pair.config, pair.stores[0], settings_of(pair.config), acme, now.timestamp())
    assert decoded.count("ticket") == 1, "only the changed ticket is read"
    # of the flags: the changed ticket's, to settle it, and the summary's own (one a week)
    assert decoded.count("insight") <= 1 + 6, decoded
    refresh_account(pair.config, pair.stores[1], settings_of(pair.config), acme, now.timestamp(), reuse=False)
    after = pair.same()
    rewritten = [b for a, b in zip(flags, after, strict=True) if a != b]
    assert [(r[0], r[1], r[4]) for r in rewritten] == [(STALE, "acme:tickets:t3", False)], \
        "its flag says the new title; the summary's counts did not change"
    pair.close()


@st.composite
def ticket_operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(2, 8))):
        what = draw(st.sampled_from(["edit", "edit", "new", "delete", "drop_flag", "bad_memo", "clock", "refresh",
                                     "vanish"]))
        if what == "edit":
            ops.append(("edit", (draw(st.integers(0, 45)),
                                 draw(st.sampled_from(["title", "state", "updated", "cancel", "account", "start"])))))
        elif what == "new":
            ops.append(("new", (draw(st.integers(0, 9)), draw(st.integers(0, 20)))))
        elif what == "vanish":  # a complete poll without most (or all) tickets: cancelled at once
            ops.append(("vanish", draw(st.integers(0, 3))))
        elif what in ("delete", "drop_flag"):
            ops.append((what, draw(st.integers(0, 45))))
        elif what == "clock":
            ops.append(("clock", draw(st.sampled_from([0, 1, 30, 119, 121, 5 * 60, 24 * 60]))))
        else:
            ops.append((what, None))
    return [*ops, ("refresh", None)]


def _edited(ev: Event, field: str, now: Any) -> Event:
    if field == "title":
        return replace(ev, title=f"{ev.title}!")
    if field == "state":
        return replace(ev, attrs={**ev.attrs, "state": "closed" if ev.attrs.get("state") == "open" else "open"})
    if field == "updated":
        return replace(ev, attrs={**ev.attrs, "updated": (now - timedelta(days=1)).isoformat()})
    if field == "cancel":
        return replace(ev, status="cancelled" if ev.status != "cancelled" else "confirmed")
    if field == "account":
        return replace(ev, account="globex" if ev.account != "globex" else "acme")
    return replace(ev, start=ev.start - timedelta(days=2), end=ev.end - timedelta(days=2) if ev.end else None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=ticket_operations())
def test_flags_with_verdicts_are_the_full_recomputes_after_random_ticket_changes(
        tmp_path_factory: pytest.TempPathFactory, another_store: Callable[[], None],
        ops: list[tuple[str, Any]]) -> None:
    pair = Pair(tmp_path_factory.mktemp("verdicts"), another_store)
    base = tickets()
    now = NOW
    pair.poll("tickets", base, now)
    pair.refresh(now)
    pair.refresh(now + timedelta(minutes=1))
    now += timedelta(minutes=1)
    t = events_table
    for what, arg in ops:
        if what == "edit":
            i, field = arg
            i %= len(base)
            base[i] = _edited(base[i], field, now)
            for store in pair.stores:
                store.apply_poll("tickets", [base[i]], absence="keep", complete=False, now=now.timestamp(),
                                 previous_success=None)
        elif what == "new":
            days, i = arg
            base.append(ticket(f"n{i}{len(base)}", now - timedelta(days=days, hours=1)))
            pair.poll("tickets", base, now)
        elif what == "vanish":
            pair.poll("tickets", base[:arg], now, absence="cancel")
        elif what == "delete":  # a ticket row deleted under the store
            key = base[arg % len(base)].key
            for store in pair.stores:
                with store.engine.begin() as conn:
                    conn.execute(delete(t).where(and_(t.c.source == "tickets", t.c.key == key)))
        elif what == "drop_flag":  # a flag deleted under the store: the verdicts cannot vouch for it
            key = f"acme:tickets:{base[arg % len(base)].key}"
            for store in pair.stores:
                with store.engine.begin() as conn:
                    conn.execute(delete(t).where(and_(t.c.source == STALE, t.c.key == key)))
        elif what == "bad_memo":
            with pair.stores[0].engine.begin() as conn:
                conn.execute(update(insight_inputs_table).where(insight_inputs_table.c.source == STALE)
                             .values(memo=b"not a memo"))
        elif what == "clock":
            now += timedelta(minutes=arg)
        else:
            pair.refresh(now)
            pair.same()
    flags = pair.same()
    assert any(f[0] == STALE for f in flags), "the tickets make stale flags"
    pair.close()
