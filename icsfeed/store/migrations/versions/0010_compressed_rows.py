"""Rows and feed bodies compressed: ``events.data`` becomes binary, with ``events.vevent``
encoded by icsfeed.store.codec (zstd, dictionaries per source kept in ``dictionaries``);
``feeds.body`` compressed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

Every existing row is rewritten, a source group at a time (its first batch trains its
dictionaries): 30,000 rows took 9 s on SQLite (with the VACUUM that follows, see
migrate.upgrade_database) and 21 s on PostgreSQL on 2 shared cores, so minutes per million
events (docs/PERFORMANCE.md, issue 11). The events, UIDs, SEQUENCEs, fragments and bodies read
back the same. The downgrade writes them back as they were (JSON text, raw fragments and bodies).
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from icsfeed.store.codec import Codec, pack_body, source_group, unpack_body

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000


def upgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "dictionaries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("field", sa.String(16), nullable=False),
        sa.Column("source_group", sa.String(160), nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    if conn.dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN data TYPE bytea USING convert_to(data, 'UTF8')")
    codec = Codec(None)  # trains and reads its dictionaries in this transaction
    for ids, rows in _by_group(conn):
        groups = [source_group(r.source) for r in rows]
        data = codec.encode_values(conn, "data", groups, [_utf8(r.data) for r in rows])
        vevents = codec.encode_values(conn, "vevent", groups, [None if r.vevent is None else bytes(r.vevent) for r in rows])
        _update(conn, "events", [{"_id": i, "data": d, "vevent": v} for i, d, v in zip(ids, data, vevents, strict=True)])
    for feed_id, body in conn.execute(sa.text("SELECT feed_id, body FROM feeds WHERE body IS NOT NULL")).all():
        conn.execute(sa.text("UPDATE feeds SET body = :body WHERE feed_id = :feed_id"),
                     {"body": pack_body(bytes(body)), "feed_id": feed_id})
    if conn.dialect.name != "postgresql":  # SQLite copies the table to change the declared type
        with op.batch_alter_table("events") as batch:
            batch.alter_column("data", type_=sa.LargeBinary(), existing_type=sa.Text(), existing_nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    codec = Codec(None)
    codec.load(conn)
    for ids, rows in _by_group(conn):
        _update(conn, "events", [{"_id": i, "data": codec.decode(r.data), "vevent": None if r.vevent is None else codec.decode(r.vevent)}
                                 for i, r in zip(ids, rows, strict=True)])
    for feed_id, body in conn.execute(sa.text("SELECT feed_id, body FROM feeds WHERE body IS NOT NULL")).all():
        conn.execute(sa.text("UPDATE feeds SET body = :body WHERE feed_id = :feed_id"),
                     {"body": unpack_body(body), "feed_id": feed_id})
    if conn.dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN data TYPE text USING convert_from(data, 'UTF8')")
    else:
        with op.batch_alter_table("events") as batch:
            batch.alter_column("data", type_=sa.Text(), existing_type=sa.LargeBinary(), existing_nullable=False)
        op.execute("UPDATE events SET data = CAST(data AS TEXT)")
    op.drop_table("dictionaries")


def _utf8(value: Any) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def _by_group(conn: Any) -> Iterator[tuple[list[int], list[Any]]]:
    """Every event row, a source group at a time (its first batch trains its dictionaries),
    in batches of row ids."""
    sources = [r[0] for r in conn.execute(sa.text("SELECT DISTINCT source FROM events"))]
    groups: dict[str, list[str]] = {}
    for s in sources:
        groups.setdefault(source_group(s), []).append(s)
    events = sa.table("events", sa.column("id"), sa.column("source"), sa.column("data"), sa.column("vevent"))
    for members in groups.values():
        last = 0
        while True:
            rows = conn.execute(sa.select(events.c.id, events.c.source, events.c.data, events.c.vevent)
                                .where(events.c.source.in_(members), events.c.id > last)
                                .order_by(events.c.id).limit(BATCH)).all()
            if not rows:
                break
            last = rows[-1].id
            yield [r.id for r in rows], rows


def _update(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(sa.text(f"UPDATE {table} SET data = :data, vevent = :vevent WHERE id = :_id"), rows)
