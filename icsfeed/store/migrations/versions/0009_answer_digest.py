"""The digest of each source's last stored answer (a poll of the same answer writes nothing).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

``source_state.answer_digest``: set by a poll that stored a full dump, cleared by a failed
one; NULL (every existing row) means "apply the next answer in full".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.add_column(sa.Column("answer_digest", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.drop_column("answer_digest")
