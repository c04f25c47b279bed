"""Who fetches each feed: counts per feed and client family (Google, Apple, …), added up.

Web processes tally fetches in memory and write them here in batches (icsfeed.web.subscribers).
Each batch is *added* to what is stored, in one statement per row (INSERT … ON CONFLICT DO
UPDATE with the stored value plus the batch's), so several web processes over one PostgreSQL
database add up, and a batch that failed can be added again later without counting twice or
losing any. Only the feed id, the client family, two counters and a time are kept: never a
token, a User-Agent string or a client address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Integer, PrimaryKeyConstraint, String, Table, and_, case, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, _dialect_insert, db_reason
from icsfeed.store.schema import metadata

#: a client family's name (icsfeed.web.subscribers.FAMILIES)
CLIENT_LENGTH = 32

subscribers_table = Table(
    "subscribers", metadata,
    Column("feed_id", String(160), nullable=False),
    Column("client", String(CLIENT_LENGTH), nullable=False),
    #: fetches answered with the feed (200) and with "not modified" (304)
    Column("fetches_200", Integer, nullable=False, default=0),
    Column("fetches_304", Integer, nullable=False, default=0),
    Column("last_fetch", Float, nullable=False),
    PrimaryKeyConstraint("feed_id", "client", name="pk_subscribers"),
)


@dataclass(frozen=True)
class SubscriberCount:
    """Fetches of one feed by one client family: a batch to add, or the stored total."""

    feed_id: str
    client: str
    fetches_200: int
    fetches_304: int
    last_fetch: float


class SubscribersMixin:
    """Subscriber counters (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine

    def add_subscriber_counts(self, counts: Iterable[SubscriberCount]) -> None:
        """Add a batch to the stored counters (one transaction: all of it or none)."""
        rows = [{"feed_id": c.feed_id, "client": c.client, "fetches_200": c.fetches_200,
                 "fetches_304": c.fetches_304, "last_fetch": c.last_fetch}
                for c in sorted(counts, key=lambda c: (c.feed_id, c.client))]  # one lock order for every process
        if not rows:
            return
        try:
            with self.engine.begin() as conn:
                _add(conn, rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write the subscriber counts: {db_reason(exc)}") from None

    def subscriber_counts(self) -> list[SubscriberCount]:
        s = subscribers_table
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(s).order_by(s.c.feed_id, s.c.client)).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the subscriber counts: {db_reason(exc)}") from None
        return [SubscriberCount(r.feed_id, r.client, r.fetches_200, r.fetches_304, r.last_fetch) for r in rows]


def _add(conn: Any, rows: list[dict[str, Any]]) -> None:
    s = subscribers_table
    insert = _dialect_insert(conn)
    if insert is not None:  # PostgreSQL, SQLite: atomic, also against a process inserting the same row
        stmt = insert(s)
        new = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(index_elements=["feed_id", "client"], set_={
            "fetches_200": s.c.fetches_200 + new.fetches_200,
            "fetches_304": s.c.fetches_304 + new.fetches_304,
            "last_fetch": case((new.last_fetch > s.c.last_fetch, new.last_fetch), else_=s.c.last_fetch),
        }), rows)
        return
    for row in rows:  # other backends: add, else insert
        where = and_(s.c.feed_id == row["feed_id"], s.c.client == row["client"])
        changed = conn.execute(update(s).where(where).values(
            fetches_200=s.c.fetches_200 + row["fetches_200"], fetches_304=s.c.fetches_304 + row["fetches_304"],
            last_fetch=case((s.c.last_fetch < row["last_fetch"], row["last_fetch"]), else_=s.c.last_fetch))).rowcount
        if not changed:
            conn.execute(s.insert().values(**row))
