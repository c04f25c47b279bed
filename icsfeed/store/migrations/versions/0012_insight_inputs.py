"""Insight inputs: what each detector last read, so an unchanged account is not recomputed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

``insight_inputs`` holds, per detector source (``insight-<detector>:<account>``), a digest of
the rows and settings its last run read that wrote no change, when it ran, and until when the
clock cannot change its flags (icsfeed/insights/inputs.py). Nothing to backfill: a source
without a row is recomputed in full on its next refresh, which writes its row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "insight_inputs",
        sa.Column("source", sa.String(160), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("run_at", sa.Float(), nullable=False),
        sa.Column("valid_until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("insight_inputs")
