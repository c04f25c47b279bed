"""insights_due: accounts whose insights one job recomputes, however many polls touched them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

The schema of icsfeed before it used Alembic (commit d97b23e): such a database is stamped here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "insights_due",
        sa.Column("account_key", sa.String(200), primary_key=True),
        sa.Column("gen", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("insights_due")
