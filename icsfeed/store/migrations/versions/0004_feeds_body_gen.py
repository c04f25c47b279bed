"""feeds.body_gen: the generation a feed's body was rendered from, for compare-and-set saves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Two processes rendering the same feed: the older render must not overwrite the newer one.
NULL (every feed rendered before this revision) is older than any render.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("feeds", sa.Column("body_gen", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("body_gen")
