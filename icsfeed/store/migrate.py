"""Schema versions, with Alembic: where a database stands, and upgrading it to head.

Alembic is configured here, in code (no alembic.ini to ship): the revisions live in
``migrations/versions/``. A database icsfeed made before it used Alembic (its tables, no
``alembic_version``) is recognised by its columns and stamped at the revision it matches,
then upgraded. Upgrades are serialised: on PostgreSQL by an advisory lock (any number of
processes may start at once on an empty database), on SQLite by a lock on the directory of
the database file.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from icsfeed.store.database import StoreError, redact_url, sqlite_path
from icsfeed.store.schema import metadata

log = logging.getLogger("icsfeed.store")

MIGRATIONS = Path(__file__).with_name("migrations")
#: pg_advisory_lock key of schema upgrades (any constant; "icsfeed" in hex, more or less)
UPGRADE_LOCK_KEY = 0x1C5FEED0
#: the tables of icsfeed; a database with none of them is empty
ICSFEED_TABLES = frozenset({"events", "source_state", "feeds", "insights_due", "settings"})


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for icsfeed's revisions (``connection``: the one to migrate)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision this icsfeed's code needs."""
    revision = _scripts().get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this code's head."""

    #: the stored revision, or the one an unversioned database matches; None: empty
    revision: str | None
    head: str
    #: False for a database made before icsfeed used Alembic
    versioned: bool = True
    #: the stored revision is none of ours: a newer icsfeed upgraded the database
    unknown: bool = False

    @property
    def state(self) -> str:
        """``current``, ``empty``, ``behind``, ``unversioned`` or ``ahead``."""
        if self.unknown:
            return "ahead"
        if self.revision is None:
            return "empty"
        if not self.versioned:
            return "unversioned"
        return "current" if self.revision == self.head else "behind"

    def describe(self) -> str:
        state = self.state
        if state == "current":
            return f"schema revision {self.revision} (head)"
        if state == "empty":
            return f"empty (created at revision {self.head} on first start)"
        if state == "ahead":
            return f"schema revision {self.revision}, newer than this icsfeed knows (head {self.head})"
        if state == "unversioned":
            return f"made before schema versions (matches revision {self.revision}; head {self.head})"
        return f"schema revision {self.revision} (head {self.head})"


def schema_status(conn: Connection) -> SchemaStatus:
    """Read where the database stands (no change made)."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        revision = MigrationContext.configure(conn).get_current_revision()
        if revision is not None:
            try:
                _scripts().get_revision(revision)
            except CommandError:
                return SchemaStatus(revision, head(), unknown=True)
            return SchemaStatus(revision, head())
    if not tables & ICSFEED_TABLES:
        return SchemaStatus(None, head())
    return SchemaStatus(_unversioned_revision(conn, tables), head(), versioned=False)


def _unversioned_revision(conn: Connection, tables: set[str]) -> str:
    """The revision a database made before Alembic matches (what its hand-made schema had)."""
    feeds = {c["name"] for c in inspect(conn).get_columns("feeds")} if "feeds" in tables else set()
    if "dirty_gen" not in feeds:
        return "0001"
    return "0003" if "insights_due" in tables else "0002"


def ensure_schema(engine: Engine, *, upgrade: bool) -> SchemaStatus:
    """Make sure the database is at head before icsfeed uses it.

    An empty database is created (whoever comes first, under the upgrade lock); one behind
    head is upgraded only with ``upgrade`` (SQLite at start: one installation, one file),
    otherwise it is an error that says to run ``icsfeed db upgrade``: when several processes
    share a database, an upgrade is a step an operator takes, not a race of restarts.
    """
    with engine.connect() as conn:
        status = schema_status(conn)
    state = status.state
    if state == "current":
        return status
    where = redact_url(engine.url.render_as_string(hide_password=False))
    if state == "ahead":
        raise StoreError(f"the database ({where}) has {status.describe()}: upgrade icsfeed, or use another database")
    if state == "empty" or upgrade:
        upgrade_database(engine)
        return SchemaStatus(head(), head())
    raise StoreError(f"the database ({where}) has {status.describe()}: run icsfeed db upgrade")


def upgrade_url(url: str) -> tuple[SchemaStatus, SchemaStatus]:
    """``icsfeed db upgrade``: :func:`upgrade_database` of the database at ``url``."""
    from sqlalchemy.exc import SQLAlchemyError

    from icsfeed.store.database import db_reason, make_data_dir, open_engine

    make_data_dir(url)
    engine = open_engine(url)
    try:
        return upgrade_database(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot upgrade the database ({redact_url(url)}): {db_reason(exc)}") from None
    finally:
        engine.dispose()


def upgrade_database(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Upgrade to head (stamping a database made before Alembic first); returns the status
    before and after. Safe to run from several processes at once."""
    with engine.connect() as conn, _upgrade_lock(conn):
        before = schema_status(conn)
        conn.commit()  # the inspection began a transaction; the upgrade runs in one of its own
        if before.state == "ahead":
            raise StoreError(f"the database has {before.describe()}: upgrade icsfeed")
        if before.state == "current":
            return before, before
        with conn.begin():  # one transaction on PostgreSQL (DDL is transactional there)
            if before.state == "empty":  # Alembic's advice: create the tables at once, stamp head
                metadata.create_all(conn)
                MigrationContext.configure(conn).stamp(_scripts(), "head")
            elif before.state == "unversioned":
                log.info("database made before schema versions: stamping it at revision %s", before.revision)
                MigrationContext.configure(conn).stamp(_scripts(), before.revision or "base")
            if before.state != "empty":
                command.upgrade(alembic_config(conn), "head")
        after = schema_status(conn)
        conn.commit()
        if conn.dialect.name == "sqlite" and before.state != "empty" and int(before.revision or 0) < 10:
            # 0010 rewrote the rows at a sixth of their size: give the freed pages back to the disk
            log.info("compacting the database file after rewriting its rows (VACUUM)")
            conn.exec_driver_sql("VACUUM")
            conn.commit()
    log.info("database schema upgraded from %s to %s", before.revision or "empty", after.revision)
    return before, after


@contextmanager
def _upgrade_lock(conn: Connection) -> Iterator[None]:
    """One upgrade at a time per database, across processes and machines."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": UPGRADE_LOCK_KEY})
            conn.commit()
        return
    path = sqlite_path(conn.engine.url.render_as_string(hide_password=False)) if dialect == "sqlite" else None
    if path is None or str(path) in ("", ":memory:"):
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)  # the directory: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def describe(engine: Engine) -> SchemaStatus:
    """The status of a database without changing it (``icsfeed db current``, ``check``)."""
    with engine.connect() as conn:
        return schema_status(conn)


def storage_status(url: str, *, strict: bool = True) -> str:
    """One line on a database, opened without changing it; a :class:`StoreError` for what
    would stop icsfeed from starting on it (no driver, no connection, a newer schema, and with
    ``strict`` on a shared database a schema behind head). A SQLite file that does not exist
    yet is not created."""
    from sqlalchemy.exc import SQLAlchemyError

    from icsfeed.store.database import db_reason, open_engine

    where = redact_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return f"{where}: new (created at revision {head()} on first start)"
    engine = open_engine(url)
    try:
        status = describe(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the database ({where}): {db_reason(exc)}") from None
    finally:
        engine.dispose()
    state = status.state
    if state == "ahead":
        raise StoreError(f"the database ({where}) has {status.describe()}: upgrade icsfeed, or use another database")
    if state in ("behind", "unversioned"):
        if engine.dialect.name != "sqlite" and strict:
            raise StoreError(f"the database ({where}) has {status.describe()}: run icsfeed db upgrade")
        if engine.dialect.name != "sqlite":
            return f"{where}: {status.describe()}: run icsfeed db upgrade"
        return f"{where}: {status.describe()}, upgraded at next start"
    return f"{where}: {status.describe()}"
