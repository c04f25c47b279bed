"""The account's feed index also covers what an insight refresh reads of the account's rows.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03

``icsfeed.store.history.account_versions`` reads, of every row of an account in the
refresh's range, its version (id, times, kind, gone, content hash, SEQUENCE, last modified,
a flag's source, facts, traits). Its rows lie all over the table (ten sources write every
account's rows in turn), so at 1,000,000 events that read touched a table page per row: a
fifth of a refresh after a poll changed 1% of the events (py-spy; docs/PERFORMANCE.md). The
account index ``ix_events_feed_account`` (migration 0013) gets those columns after its own:
the read is one run of index pages, and a feed's query is served as before (same leading
columns). About 150 bytes per event on disk in a compact file, 260 as inserts in random
order leave the index (1,000,000 events, benchmarks/bench_scale.py).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the index's columns as migration 0013 made them
FEED = ["account_key", "start_ts", "id", "end_ts", "recurring", "kind", "severity_rank", "sequence", "last_modified"]
#: and what it covers from here on
VERSION = ["gone", "content_hash", "source", "facts", "traits"]


def upgrade() -> None:
    op.drop_index("ix_events_feed_account", "events")
    op.create_index("ix_events_feed_account", "events", [*FEED, *VERSION])


def downgrade() -> None:
    op.drop_index("ix_events_feed_account", "events")
    op.create_index("ix_events_feed_account", "events", FEED)
