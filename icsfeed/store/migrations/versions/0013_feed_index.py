"""Covering indexes for a feed's event list: a re-render reads (id, sequence, last_modified)
of every event of the feed from the index alone, not from the events' pages.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

The two window indexes (``ix_events_account_start``: account feeds; ``ix_events_start``: feeds
of every account) are replaced by ones with the same leading columns, then ``id`` (the feed's
order is ``start_ts, id``) and every column the feed query tests or a re-render reads. Queries
the old indexes served are served by the new ones' prefixes.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: after (account_key, start_ts) / (start_ts): the order's tie-break, the tests, what is read
TAIL = ["id", "end_ts", "recurring", "kind", "severity_rank", "sequence", "last_modified"]


def upgrade() -> None:
    op.create_index("ix_events_feed_account", "events", ["account_key", "start_ts", *TAIL])
    op.create_index("ix_events_feed_window", "events", ["start_ts", *TAIL, "account_key"])
    op.drop_index("ix_events_account_start", "events")
    op.drop_index("ix_events_start", "events")


def downgrade() -> None:
    op.create_index("ix_events_account_start", "events", ["account_key", "start_ts"])
    op.create_index("ix_events_start", "events", ["start_ts"])
    op.drop_index("ix_events_feed_window", "events")
    op.drop_index("ix_events_feed_account", "events")
