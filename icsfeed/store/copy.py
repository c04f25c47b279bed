"""Copying an installation's whole history from one database to another (``icsfeed db
copy``): the way from SQLite to PostgreSQL without losing events, UIDs, SEQUENCEs, source
state or the subscription URLs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, db_reason, redact_url
from icsfeed.store.schema import (
    dictionaries_table,
    events_table,
    feed_segments_table,
    feeds_table,
    insights_due_table,
    settings_table,
    source_state_table,
)

log = logging.getLogger("icsfeed.store")

#: what is copied, parents first; settings only between server databases (SQLite keeps the
#: key in its data directory: the caller passes it). Rows are copied as stored: the events'
#: encoded values with the dictionaries they name (ids kept), feed bodies compressed (whole, or
#: as the segments their rows list).
TABLES = (events_table, source_state_table, feeds_table, feed_segments_table, insights_due_table, dictionaries_table)
BATCH = 1000


@dataclass
class Copied:
    """Rows copied per table."""

    rows: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return ", ".join(f"{n} {name}" for name, n in self.rows.items())


def copy_database(source: Any, target: Any, *, secret_key: bytes | None = None) -> Copied:
    """Copy every row of ``source`` (a Store at head) into ``target`` (a Store at head with
    no events, feeds or source state), in one transaction of the target: all or nothing.
    ``secret_key``: the token key to keep (SQLite's data-directory key) when the target
    keeps it in the database."""
    with target.engine.connect() as conn:
        for table in (events_table, feeds_table, source_state_table, dictionaries_table):
            if conn.execute(select(func.count()).select_from(table)).scalar_one():
                raise StoreError(f"the target database ({redact_url(target.url)}) already has {table.name}: "
                                 "copy into an empty database")
    copied = Copied()
    tables = TABLES + ((settings_table,) if source.shares_secret and target.shares_secret else ())
    try:
        with source.engine.connect() as src, target.engine.begin() as dst:
            for table in tables:
                count = 0
                rows = src.execution_options(yield_per=BATCH).execute(select(table).order_by(*table.primary_key))
                for batch in rows.partitions(BATCH):
                    if table is settings_table:
                        dst.execute(table.delete().where(table.c.name.in_([r.name for r in batch])))
                    dst.execute(table.insert(), [r._asdict() for r in batch])
                    count += len(batch)
                copied.rows[table.name] = count
            if dst.dialect.name == "postgresql":  # ids were copied: the next row's id comes after them
                for name in ("events", "dictionaries"):
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                     f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot copy into {redact_url(target.url)}: {db_reason(exc)}") from None
    if secret_key is not None and target.shares_secret:
        target.set_shared_secret_key(secret_key)
    log.info("copied %s from %s to %s", copied.line(), redact_url(source.url), redact_url(target.url))
    return copied
