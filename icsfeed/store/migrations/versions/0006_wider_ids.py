"""Columns as wide on SQLite as on PostgreSQL: source ids of insights, account keys due.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

SQLite never enforced these lengths, PostgreSQL does: an insight's source id
("insight-summary:<account id of up to 64 characters>") did not fit in 64 characters, and an
account key of 201-256 characters (events hold 256) could not be marked due for insights.
SQLite copies the tables to change a column (Alembic's batch mode); the rows are kept.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column("source", type_=sa.String(160), existing_type=sa.String(64), existing_nullable=False)
    with op.batch_alter_table("source_state") as batch:
        batch.alter_column("source", type_=sa.String(160), existing_type=sa.String(64), existing_nullable=False)
    with op.batch_alter_table("insights_due") as batch:
        batch.alter_column("account_key", type_=sa.String(256), existing_type=sa.String(200), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("insights_due") as batch:
        batch.alter_column("account_key", type_=sa.String(200), existing_type=sa.String(256), existing_nullable=False)
    with op.batch_alter_table("source_state") as batch:
        batch.alter_column("source", type_=sa.String(64), existing_type=sa.String(160), existing_nullable=False)
    with op.batch_alter_table("events") as batch:
        batch.alter_column("source", type_=sa.String(64), existing_type=sa.String(160), existing_nullable=False)
