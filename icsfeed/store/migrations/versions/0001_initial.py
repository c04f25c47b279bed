"""The first schema: events, source state, rendered feeds.

Revision ID: 0001
Revises:
Create Date: 2026-11-20

A database icsfeed made before it used Alembic, without ``feeds.dirty_gen``, is stamped here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("account_key", sa.String(256)),
        sa.Column("severity_rank", sa.Integer),
        sa.Column("start_ts", sa.Float, nullable=False),
        sa.Column("end_ts", sa.Float, nullable=False),
        sa.Column("recurring", sa.Boolean, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("last_modified", sa.Float, nullable=False),
        sa.Column("gone", sa.Boolean, nullable=False),
        sa.Column("vevent", sa.LargeBinary),
        sa.Column("vevent_key", sa.String(64)),
        sa.UniqueConstraint("source", "key", name="uq_events_source_key"),
    )
    op.create_index("ix_events_account_start", "events", ["account_key", "start_ts"])
    op.create_index("ix_events_start", "events", ["start_ts"])
    op.create_table(
        "source_state",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("last_attempt", sa.Float),
        sa.Column("last_success", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.Float),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("cursor", sa.Text),
        sa.Column("last_duration", sa.Float),
        sa.Column("last_result", sa.Text),
        sa.Column("next_poll", sa.Float),
        sa.Column("polls_total", sa.Integer, nullable=False),
        sa.Column("failures_total", sa.Integer, nullable=False),
    )
    op.create_table(
        "feeds",
        sa.Column("feed_id", sa.String(160), primary_key=True),
        sa.Column("body", sa.LargeBinary),
        sa.Column("body_gz", sa.LargeBinary),
        sa.Column("etag", sa.String(80)),
        sa.Column("last_modified", sa.Float),
        sa.Column("rendered_at", sa.Float),
        sa.Column("render_seconds", sa.Float),
        sa.Column("event_count", sa.Integer),
        sa.Column("dirty", sa.Boolean, nullable=False),
        sa.Column("render_key", sa.String(64)),
        sa.Column("window_day", sa.String(10)),
    )


def downgrade() -> None:
    op.drop_table("feeds")
    op.drop_table("source_state")
    op.drop_index("ix_events_start", "events")
    op.drop_index("ix_events_account_start", "events")
    op.drop_table("events")
