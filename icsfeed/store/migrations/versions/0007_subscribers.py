"""subscribers: fetches per feed and client family (200s, 304s, last fetch), added up by the
web processes in batches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("feed_id", sa.String(160), nullable=False),
        sa.Column("client", sa.String(32), nullable=False),
        sa.Column("fetches_200", sa.Integer, nullable=False),
        sa.Column("fetches_304", sa.Integer, nullable=False),
        sa.Column("last_fetch", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("feed_id", "client", name="pk_subscribers"),
    )


def downgrade() -> None:
    op.drop_table("subscribers")
