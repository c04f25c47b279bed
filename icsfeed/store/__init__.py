"""The store: the record of history, per-source state, and rendered feeds.

SQLAlchemy Core over SQLite by default (any SQLAlchemy URL works, PostgreSQL for more than
one machine). Origins forget (Alertmanager drops a resolved alert within minutes); the store
does not: an event that stops appearing is closed, kept or cancelled by its source's policy,
never deleted. Each poll is applied in one transaction.

One concern per module, as Radicale splits ``storage/``: ``schema`` (the tables),
``database`` (engine, SQLite pragmas, read-only open, errors), ``migrate`` and
``migrations/`` (schema versions, Alembic), ``events`` (polls and the queries of render),
``codec`` (how rows and feed bodies are compressed on disk), ``feeds`` (rendered feeds, dirty marks), ``rollups`` (the size budget's rolled-up days and
the parts of rendered feeds), ``state`` (per-source state, due insights), ``keys``
(the shared secret key), ``subscribers`` (who fetches each feed). :class:`Store` is composed of their parts.
"""

from __future__ import annotations

from icsfeed.store.database import Database, StoreError
from icsfeed.store.events import EventRow, EventsMixin, FeedQuery, Fragmenter, PollChanges, Touched, to_ts
from icsfeed.store.feeds import FeedsMixin, StoredFeed
from icsfeed.store.keys import KeysMixin
from icsfeed.store.rollups import FeedParts, PartAttrs, RollupsMixin, StoredRollup
from icsfeed.store.schema import (
    dictionaries_table,
    events_table,
    feed_segments_table,
    feeds_table,
    insights_due_table,
    metadata,
    settings_table,
    source_state_table,
)
from icsfeed.store.state import SourceState, StateMixin
from icsfeed.store.subscribers import SubscriberCount, SubscribersMixin, subscribers_table

__all__ = [
    "EventRow",
    "FeedParts",
    "FeedQuery",
    "Fragmenter",
    "PartAttrs",
    "PollChanges",
    "SourceState",
    "Store",
    "StoreError",
    "StoredFeed",
    "StoredRollup",
    "SubscriberCount",
    "Touched",
    "dictionaries_table",
    "events_table",
    "feed_segments_table",
    "feeds_table",
    "insights_due_table",
    "metadata",
    "settings_table",
    "source_state_table",
    "subscribers_table",
    "to_ts",
]


class Store(EventsMixin, FeedsMixin, RollupsMixin, StateMixin, KeysMixin, SubscribersMixin, Database):
    """All database access of icsfeed goes through here."""
