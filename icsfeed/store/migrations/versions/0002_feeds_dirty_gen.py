"""feeds.dirty_gen: a render clears ``dirty`` only if no change was marked meanwhile.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

What icsfeed's hand-written ``ALTER TABLE`` added before it used Alembic (the same column,
with the same default for the rows already there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("feeds", sa.Column("dirty_gen", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("dirty_gen")
