"""Feed bodies as content-defined segments: a re-render writes only the segments that changed.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03

``feed_segments`` holds each feed's segments (icsfeed.store.segments), zstd-compressed, by the
sha256 of their bytes; ``feeds`` gains the body's head and tail and the ordered list of its
segments. Nothing is rewritten: a body stored whole before keeps being read as it is, until its
feed's next render stores it as segments. The downgrade writes every segmented body back whole.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from icsfeed.store.codec import Codec, pack_body
from icsfeed.store.segments import decode_list

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_segments",
        sa.Column("feed_id", sa.String(160), primary_key=True),
        sa.Column("digest", sa.String(32), primary_key=True),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
    )
    op.add_column("feeds", sa.Column("body_head", sa.LargeBinary()))
    op.add_column("feeds", sa.Column("body_tail", sa.LargeBinary()))
    op.add_column("feeds", sa.Column("segments", sa.Text()))


def downgrade() -> None:
    conn = op.get_bind()
    codec = Codec(None)  # segments are compressed with dictionaries (field "segment"), kept
    codec.load(conn)
    rows = conn.execute(sa.text("SELECT feed_id, body_head, body_tail, segments FROM feeds "
                                "WHERE segments IS NOT NULL")).all()
    for feed_id, head, tail, listed in rows:
        blobs = dict(conn.execute(sa.text("SELECT digest, blob FROM feed_segments WHERE feed_id = :f"),
                                  {"f": feed_id}).all())
        digests = decode_list(listed)[0]
        body = bytes(head or b"") + b"".join(codec.decode(blobs[d]) for d in digests) + bytes(tail or b"")
        conn.execute(sa.text("UPDATE feeds SET body = :body WHERE feed_id = :f"),
                     {"body": pack_body(body), "f": feed_id})
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("segments")
        batch.drop_column("body_tail")
        batch.drop_column("body_head")
    op.drop_table("feed_segments")
