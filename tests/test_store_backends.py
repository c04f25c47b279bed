"""The store behaves the same on SQLite and PostgreSQL (the backend of the run): records that
one backend would refuse (NUL, astral characters, long values), marks and state written by
two processes at once, and the driver named by the URL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from icsfeed.config import Config
from icsfeed.store import Store, insights_due_table
from icsfeed.store.database import bump_or_insert

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}]
sources:
  - id: tickets
    type: file
    path: tickets.json
    mapping: {kind: ticket, key: id, title: subject, start: created, account: customer}
"""


@pytest.fixture
def two(make_env: object) -> Iterator[tuple[Config, Store, Store]]:
    config, a = make_env({"a.yaml": CONFIG})  # type: ignore[operator]
    b = Store(config.storage_url, uid_host=config.uid_host)
    yield config, a, b
    b.close()


def test_two_processes_marking_the_same_new_feed_both_count(two: tuple[Config, Store, Store]) -> None:
    """A poller marks a feed no row exists for yet while another one's transaction, which
    marked it too, is still open: the second waits, then bumps the mark (no unique violation)."""
    _config, a, b = two
    errors: list[BaseException] = []

    def other() -> None:
        try:
            b.mark_dirty(["account/acme"])
            b.mark_insights_due(["acme"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    d = insights_due_table
    with a.engine.begin() as conn:
        a._mark_dirty(conn, ["account/acme"])
        bump_or_insert(conn, d.c.account_key, d.c.gen, ["acme"])
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)  # B is now waiting for A's rows
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == [], errors
    assert a.feed_render_generations()["account/acme"] == (True, None, None, 2)
    assert a.insights_due() == {"acme": 2}


def test_failures_in_a_row_are_counted_in_the_database(two: tuple[Config, Store, Store]) -> None:
    _config, a, b = two
    assert a.record_failure("tickets", "down", 1.0) == 1
    assert b.record_failure("tickets", "still down", 2.0) == 2
    state = a.source_state("tickets")
    assert (state.consecutive_failures, state.failures_total, state.polls_total, state.last_error) == (2, 2, 2, "still down")
