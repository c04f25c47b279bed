"""The digest of the origin record each stored event came from (a 1%-changed dump maps 1%).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

``events.record_digest``: written by a poll of a full-dump source (file, command) with each
event it maps, NULL for every other write (a push, the absence policy, insights). NULL (every
existing row) means "map this event's record again"; the next poll fills it in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("record_digest", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("record_digest")
