"""Each row's facts digests and traits, kept with its content hash (an insight refresh decodes
no row to tell that only a title changed, nor to count an account's weeks).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03

``events.facts`` and ``events.traits`` (icsfeed.store.facts): written with every row from now
on. Existing rows keep NULL; the insight refresh works them out from the decoded event, with
the same functions, the first time it needs them, and writes them back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("facts", sa.String(64)))
        batch.add_column(sa.Column("traits", sa.SmallInteger))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("traits")
        batch.drop_column("facts")
