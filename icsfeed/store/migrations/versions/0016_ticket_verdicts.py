"""What the stale-ticket detector found of each ticket, kept with its recorded inputs (a
refresh after a few tickets changed reads and rewrites only those).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03

``insight_inputs.memo`` (icsfeed.insights.verdicts): per ticket version, whether it was open,
until when that verdict holds and the key of its flag. NULL for every other detector and for
rows written before: the next run of the detector reads every ticket and writes it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("insight_inputs") as batch:
        batch.add_column(sa.Column("memo", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("insight_inputs") as batch:
        batch.drop_column("memo")
