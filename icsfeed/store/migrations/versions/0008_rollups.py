"""Size budget: rolled-up days, the parts of each rendered feed, and whether an event is open.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``rollups`` keeps each rolled-up day's last content hash, SEQUENCE and VEVENT, so a re-render
without changes keeps its bytes; ``feed_parts`` lists the VEVENTs of each rendered body with
what the filters (``status=``, ``min_severity=``, ``kinds=``) read of them; ``events.is_open``
is filled as events are written (NULL for rows from before: render works it out once).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("is_open", sa.Boolean(), nullable=True))
    op.create_table(
        "rollups",
        sa.Column("feed_id", sa.String(160), primary_key=True),
        sa.Column("group_key", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.Column("vevent", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "feed_parts",
        sa.Column("feed_id", sa.String(160), primary_key=True),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("parts", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feed_parts")
    op.drop_table("rollups")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("is_open")
