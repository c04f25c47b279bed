"""Opening the database: the engine, SQLite's pragmas, a read-only SQLite file, and errors
that say where and why in one line."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

log = logging.getLogger("icsfeed.store")


class StoreError(Exception):
    """The database cannot be opened or written; the message says where and why."""


class Database:
    """The engine and how it was opened; the other parts of :class:`~icsfeed.store.Store`
    run their statements on ``self.engine``."""

    def __init__(self, url: str, *, uid_host: str = "icsfeed", upgrade: bool | None = None,
                 pool_size: int | None = None, max_overflow: int | None = None) -> None:
        """Open the database at ``url`` and make sure its schema is at head: created when
        empty; upgraded when behind if ``upgrade`` (default: on SQLite only, see
        :func:`~icsfeed.store.migrate.ensure_schema`), else a :class:`StoreError`."""
        from icsfeed.store.codec import Codec
        from icsfeed.store.migrate import ensure_schema

        self.url = url
        self.uid_host = uid_host
        #: True when the database could only be opened for reading (a read-only data directory)
        self.read_only = False
        #: feeds saved through this Store (web caches in this process forget what they read before)
        self.saves = 0
        path = sqlite_path(url)
        make_data_dir(url)
        self.engine: Engine = open_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        #: how rows and bodies are encoded on disk, and the dictionaries read for it
        self.codec = Codec(self.engine)
        try:
            ensure_schema(self.engine, upgrade=self.engine.dialect.name == "sqlite" if upgrade is None else upgrade)
        except (SQLAlchemyError, OSError) as exc:
            if not (path is not None and self._open_read_only(path)):
                self.engine.dispose()
                reason = db_reason(exc) if isinstance(exc, SQLAlchemyError) else f"{exc.strerror}: {exc.filename}"
                raise StoreError(f"cannot open the database ({redact_url(url)}): {reason}") from None
        except StoreError:
            self.engine.dispose()
            raise

    def _open_read_only(self, path: Path) -> bool:
        """A SQLite database in a directory that cannot be written: SQLite cannot make the
        WAL index it needs next to it, so open the file as immutable, read-only. Feeds that
        were rendered are served; every write fails with a clear "readonly database"."""
        from icsfeed.store.migrate import describe

        if not path.is_file() or os.access(path.parent, os.W_OK):
            return False
        engine = open_engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true")
        try:
            status = describe(engine)
        except SQLAlchemyError:
            engine.dispose()
            return False
        if status.state != "current":
            engine.dispose()
            self.engine.dispose()
            raise StoreError(f"the database {path} has {status.describe()}, and cannot be upgraded: "
                             f"its directory {path.parent} cannot be written")
        from icsfeed.store.codec import Codec

        self.engine.dispose()
        self.engine, self.read_only = engine, True
        self.codec = Codec(engine)
        log.warning("the data directory %s cannot be written: serving what is stored; polls and renders "
                    "cannot be saved until it is writable and icsfeed is restarted", path.parent)
        return True

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for any other database)."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def make_data_dir(url: str) -> None:
    """The directory of a SQLite file (SQLite makes the file, not its directory)."""
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {path.parent}: {exc.strerror}") from None


def driver_url(url: str) -> str:
    """The URL with its driver named: plain ``postgresql://`` means psycopg 3 (the driver
    of the ``postgres`` extra), whichever default the installed SQLAlchemy has."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


#: what a missing driver's error says to do
DRIVER_HINT = {"postgresql": "pip install 'icsfeed[postgres]' (psycopg 3, for postgresql:// URLs)"}


def open_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None) -> Engine:
    """An engine for ``url``; a missing driver or a bad URL is a one-line :class:`StoreError`.

    A database server's connections are checked before use (``pool_pre_ping``): the first
    request after a server restart gets a new connection, not an error."""
    url = driver_url(url)
    options: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        options = {"pool_pre_ping": True, "pool_size": pool_size or 5,
                   "max_overflow": 5 if max_overflow is None else max_overflow}
    try:
        engine = create_engine(url, **options)
    except ImportError as exc:  # the DBAPI module of the URL's dialect
        dialect = url.partition("://")[0].partition("+")[0]
        hint = DRIVER_HINT.get(dialect, "install it")
        raise StoreError(f"the database driver for {redact_url(url)} is not installed "
                         f"({type(exc).__name__}: {exc}): {hint}") from None
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise StoreError(f"bad storage URL: {type(exc).__name__}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # read-only directory: WAL cannot be set up; plain reads still work
        pass
    cursor.execute("PRAGMA synchronous=NORMAL")
    # feeds read their events' fragments by index, scattered over the table: memory-map the
    # file (no read() per page) and keep more pages than the 2 MB default
    cursor.execute("PRAGMA mmap_size=134217728")
    cursor.execute("PRAGMA cache_size=-8192")
    # checkpoint the WAL every ~40 MB instead of every 4 MB: a feed body is several MB, and
    # each checkpoint syncs the database file (half the time of saving a 7 MB feed)
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()


def bump_or_insert(conn: Any, key: Any, generation: Any, keys: Iterable[str], **values: Any) -> None:
    """Rows of ``key``'s table for these keys get ``values`` and their ``generation`` counter
    bumped (missing rows are inserted at 1): marks that a later step clears only if no newer
    mark came in meanwhile (feeds to render, accounts whose insights are due). One atomic
    statement: processes marking the same new key at once both count."""
    bumped = {generation.name: func.coalesce(generation, 0) + 1, **values}
    for chunk in chunks(sorted(set(keys)), 500):  # sorted: concurrent marks lock rows in one order
        upsert(conn, key.table, [{key.name: k, generation.name: 1, **values} for k in chunk], bumped)


def _dialect_insert(conn: Any) -> Any:
    """The INSERT that knows ON CONFLICT, on the backends that have it (else None)."""
    return _dialect_insert_of(conn.dialect.name)


def _dialect_insert_of(name: str) -> Any:
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        return insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
        return insert
    return None


@lru_cache(maxsize=64)
def _insert_ignoring(dialect: str, table: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING of ``table`` (None: a backend without it), made once:
    a render saves a feed with one, and building a statement cost more than running it."""
    insert = _dialect_insert_of(dialect)
    return insert(table).on_conflict_do_nothing() if insert is not None else None


@lru_cache(maxsize=64)
def _insert_replacing(dialect: str, table: Any, columns: tuple[str, ...]) -> Any:
    """INSERT … ON CONFLICT DO UPDATE of ``table`` setting ``columns`` to the row's (None: a
    backend without it), made once."""
    insert = _dialect_insert_of(dialect)
    if insert is None:
        return None
    statement = insert(table)
    return statement.on_conflict_do_update(index_elements=[c.name for c in table.primary_key],
                                           set_={c: statement.excluded[c] for c in columns})


def upsert_row(conn: Any, table: Any, row: dict[str, Any], columns: tuple[str, ...]) -> None:
    """:func:`upsert` of one row whose stored version, if any, takes the row's ``columns``."""
    replacing = _insert_replacing(conn.dialect.name, table, columns)
    if replacing is not None:
        conn.execute(replacing, row)
        return
    upsert(conn, table, [row], {c: row[c] for c in columns})


def upsert(conn: Any, table: Any, rows: list[dict[str, Any]], changes: dict[str, Any]) -> None:
    """Insert ``rows``; where one's primary key is already there, apply ``changes`` (column ->
    value or expression of the stored row) to it instead. Atomic where the backend has
    INSERT … ON CONFLICT DO UPDATE (PostgreSQL, SQLite): no unique violation when another
    transaction inserted the same key first."""
    if not rows:
        return
    keys = [c.name for c in table.primary_key]
    insert = _dialect_insert(conn)
    if insert is not None:
        conn.execute(insert(table).on_conflict_do_update(index_elements=keys, set_=changes), rows)
        return
    for row in rows:  # other backends: update, else insert
        where = and_(*(table.c[k] == row[k] for k in keys))
        if not conn.execute(update(table).where(where).values(**changes)).rowcount:
            conn.execute(table.insert().values(**row))


def insert_missing(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose primary key is not there yet, and leave the others alone, even
    when another transaction inserts the same key at the same moment (ON CONFLICT DO NOTHING).
    On SQLite it also takes the write lock, so what the transaction reads next stays true."""
    if not rows:
        return
    ignoring = _insert_ignoring(conn.dialect.name, table)
    if ignoring is not None:
        conn.execute(ignoring, rows)
        return
    for row in rows:
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(**row))
        except IntegrityError:
            pass


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """Text every backend stores as given: NUL (PostgreSQL refuses it in text columns) and
    lone surrogates (not encodable as UTF-8) become U+FFFD, the same on SQLite."""
    if value.isascii() and "\x00" not in value:
        return value
    return _UNSTORABLE.sub("\ufffd", value)


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def db_reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, first line: what a user can act on."""
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0][:300]


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
