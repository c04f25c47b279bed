"""Pollers side by side over one store: which poller takes which source, feed and account.

Any number of pollers (``icsfeed poll``, ``icsfeed serve`` with its scheduler) can share a
store. They coordinate through locks that die with their holder, so a ``kill -9`` never
leaves anything claimed:

* PostgreSQL: session-level advisory locks (``pg_try_advisory_lock``), each on a connection
  held while the claim lasts; the server drops them when that connection goes away;
* SQLite: POSIX record locks (``fcntl.lockf``) on one byte each of a file beside the
  database (``<database>-locks``); the kernel drops them when the process exits.

What is claimed:

* a **source** for the whole of one poll (fetch and store): one poller at a time;
* a **feed** while it is rendered, and an **account** while its insights are recomputed,
  so N pollers split the render and insight work instead of each doing all of it;
* a **member slot** for as long as a scheduled poller runs: the live slots are the pollers
  that share the sources, by rendezvous hashing (:meth:`Coordinator.prefers`).

An in-process lock alone would not do: the pollers are separate processes, maybe on
separate machines. Which source to poll *when* is the scheduler's policy (scheduler.py);
this module only provides the claims, and never writes anything but locks.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store import StoreError, feeds_table

log = logging.getLogger(__name__)

#: advisory lock namespaces (the first key of PostgreSQL's two-key form), per kind of claim;
#: the base keeps icsfeed's locks apart from other applications' in the same database
_NAMESPACE_BASE = 0x1C5F_0000
KINDS = {"member": 1, "source": 2, "feed": 3, "account": 4, "job": 5}
#: the most pollers that can share one store (member slots)
MAX_MEMBERS = 64
#: how long a list of live members is reused (one pg_locks query per this, at most)
MEMBERS_TTL_SECONDS = 0.25

#: (dirty, render key, window day, dirty generation) of a feed, as Store.feed_render_generations
FeedRenderState = tuple[bool, str | None, str | None, int]


def _namespace(kind: str) -> int:
    return _NAMESPACE_BASE + KINDS[kind]


def _hash32(name: str) -> int:
    """A stable 32-bit hash of a claimed name (for the SQLite lock file's byte offsets)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big")


def rendezvous_owner(key: str, members: set[int]) -> int | None:
    """The member a key belongs to: the highest hash of (key, member). Every poller computes
    the same answer from the same live set; when a member leaves, only its keys move."""
    if not members:
        return None

    def score(member: int) -> int:
        digest = hashlib.blake2b(f"{key}\0{member}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(sorted(members), key=score)


class LockSession(ABC):
    """Claims held together (PostgreSQL: on one connection); :meth:`close` drops them all."""

    @abstractmethod
    def try_lock(self, kind: str, name: str) -> bool:
        """Claim ``name`` if no other holder has it; never waits."""

    @abstractmethod
    def unlock(self, kind: str, name: str) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class _LockBackend(ABC):
    """Where the locks live: the database server, or the kernel (a lock file)."""

    @abstractmethod
    def session(self) -> LockSession: ...

    @abstractmethod
    def join(self) -> int | None:
        """Take a free member slot (kept until :meth:`leave`); None if none can be taken."""

    @abstractmethod
    def members(self) -> set[int]:
        """Slots held right now, by any process (this one's included)."""

    @abstractmethod
    def slot_alive(self) -> bool:
        """Whether this process still holds the slot it joined with."""

    @abstractmethod
    def leave(self) -> None: ...

    def close(self) -> None:
        self.leave()


# --- PostgreSQL: advisory locks ---------------------------------------------------------------

class _PgSession(LockSession):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._broken = False

    def _scalar(self, sql: str, **params: object) -> object:
        try:
            return self.conn.execute(text(sql), params).scalar()
        except SQLAlchemyError as exc:
            self._broken = True
            raise StoreError(f"cannot claim in the database: {_reason(exc)}") from None

    def try_lock(self, kind: str, name: str) -> bool:
        return bool(self._scalar("SELECT pg_try_advisory_lock(:ns, hashtext(:name))", ns=_namespace(kind), name=name))

    def unlock(self, kind: str, name: str) -> None:
        self._scalar("SELECT pg_advisory_unlock(:ns, hashtext(:name))", ns=_namespace(kind), name=name)

    def close(self) -> None:
        """Back to the pool with no lock held; a connection that cannot say so is thrown away
        (closing it makes the server drop its locks), never pooled with a lock still on it."""
        try:
            if not self._broken:
                self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self.conn.close()
                return
        except SQLAlchemyError:
            pass
        try:
            self.conn.invalidate()
        finally:
            self.conn.close()


class _PgLocks(_LockBackend):
    """Advisory locks on connections of their own (autocommit: no transaction stays open)."""

    def __init__(self, engine: Engine) -> None:
        # a pool of its own: a poll holds its source's lock connection and store connections
        # at once, and must not wait for the store's pool to do so
        self.engine = create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True,
                                    pool_size=2, max_overflow=40, pool_timeout=10)
        self._member: Connection | None = None
        self._slot: int | None = None
        self._lock = threading.Lock()

    def session(self) -> LockSession:
        try:
            return _PgSession(self.engine.connect())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the database to claim work: {_reason(exc)}") from None

    def join(self) -> int | None:
        with self._lock:
            self._drop_member()
            try:
                conn = self.engine.connect()
            except SQLAlchemyError as exc:
                log.warning("cannot join the pollers (will retry): %s", _reason(exc))
                return None
            try:
                for slot in range(MAX_MEMBERS):
                    if conn.execute(text("SELECT pg_try_advisory_lock(:ns, :slot)"),
                                    {"ns": _namespace("member"), "slot": slot}).scalar():
                        self._member, self._slot = conn, slot
                        return slot
            except SQLAlchemyError as exc:
                log.warning("cannot join the pollers (will retry): %s", _reason(exc))
            conn.invalidate()
            conn.close()
            return None

    def members(self) -> set[int]:
        sql = text("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns AND objsubid = 2 "
                   "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        try:
            with self.engine.connect() as conn:
                return {int(r[0]) for r in conn.execute(sql, {"ns": _namespace("member")})}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list the pollers: {_reason(exc)}") from None

    def slot_alive(self) -> bool:
        with self._lock:
            if self._member is None:
                return False
            try:
                self._member.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                self._drop_member()
                return False

    def _drop_member(self) -> None:
        if self._member is not None:
            try:
                self._member.invalidate()  # closing the connection releases the slot
                self._member.close()
            except SQLAlchemyError:
                pass
        self._member, self._slot = None, None

    def leave(self) -> None:
        with self._lock:
            self._drop_member()

    def close(self) -> None:
        self.leave()
        self.engine.dispose()


# --- SQLite: record locks on a file beside the database -----------------------------------------

class _LockFile:
    """One byte of ``path`` per claim, locked with ``fcntl.lockf`` (POSIX record locks:
    dropped by the kernel when the process ends). Record locks belong to the process, not to
    a thread or a descriptor, and closing any descriptor of the file drops all of them; so
    one object per file and process holds the only descriptor (as long as a Coordinator
    uses it) and the set of offsets this process holds, which excludes its threads and its
    Coordinators from each other."""

    _open: ClassVar[dict[Path | None, _LockFile]] = {}
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.local: set[int] = set()
        self.guard = threading.Lock()
        self.users = 0
        self.fd: int | None = None
        if path is None:
            return
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("cannot open the lock file %s (%s): polls are not coordinated with other processes "
                        "(nothing can be stored either while the data directory cannot be written)",
                        path, exc.strerror)

    @classmethod
    def use(cls, path: Path | None) -> _LockFile:
        with cls._open_lock:
            lock_file = cls._open.get(path)
            if lock_file is None:
                lock_file = cls._open[path] = cls(path)
            lock_file.users += 1
            return lock_file

    def done(self) -> None:
        with self._open_lock:
            self.users -= 1
            if self.users > 0:
                return
            self._open.pop(self.path, None)
        if self.fd is not None:
            os.close(self.fd)  # drops whatever this process still held on it
            self.fd = None

    def acquire(self, offset: int) -> bool:
        with self.guard:
            if offset in self.local:
                return False
            if self.fd is not None:
                try:
                    fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EAGAIN):
                        return False
                    raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from None
            self.local.add(offset)
            return True

    def release(self, offset: int) -> None:
        with self.guard:
            if offset not in self.local:
                return
            self.local.discard(offset)
            if self.fd is not None:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset)

    def held(self, offset: int) -> bool:
        """Whether this process or another holds this byte (another's: probed by taking and
        dropping it)."""
        with self.guard:
            if offset in self.local:
                return True
            if self.fd is None:
                return False
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError:
                return True
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset)
            return False


class _FileSession(LockSession):
    def __init__(self, lock_file: _LockFile) -> None:
        self.lock_file = lock_file
        self.held: set[int] = set()

    def try_lock(self, kind: str, name: str) -> bool:
        offset = _namespace(kind) << 32 | _hash32(name)
        if self.lock_file.acquire(offset):
            self.held.add(offset)
            return True
        return False

    def unlock(self, kind: str, name: str) -> None:
        offset = _namespace(kind) << 32 | _hash32(name)
        if offset in self.held:
            self.held.discard(offset)
            self.lock_file.release(offset)

    def close(self) -> None:
        for offset in list(self.held):
            self.lock_file.release(offset)
        self.held.clear()


class _FileLocks(_LockBackend):
    """SQLite: claims on the lock file beside the database (``path`` None: an in-memory
    database, which only one process can open: claims exclude this process's threads only)."""

    def __init__(self, path: Path | None) -> None:
        self.file = _LockFile.use(path)
        self._slot: int | None = None

    def session(self) -> LockSession:
        return _FileSession(self.file)

    def join(self) -> int | None:
        base = _namespace("member") << 32
        for slot in range(MAX_MEMBERS):
            if self.file.acquire(base | slot):
                self._slot = slot
                return slot
        return None

    def members(self) -> set[int]:
        base = _namespace("member") << 32
        return {s for s in range(MAX_MEMBERS) if self.file.held(base | s)}

    def slot_alive(self) -> bool:
        return self._slot is not None

    def leave(self) -> None:
        if self._slot is not None:
            self.file.release(_namespace("member") << 32 | self._slot)
            self._slot = None

    def close(self) -> None:
        self.leave()
        self.file.done()


def _sqlite_lock_path(engine: Engine) -> Path | None:
    """``<database>-locks`` beside a SQLite file (None for an in-memory database)."""
    database = engine.url.database or ""
    if database.startswith("file:"):  # a URI filename (the read-only store opens one)
        database = database.removeprefix("file:").split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + "-locks")


# --- what the scheduler, poller and render use -------------------------------------------------

class Coordinator:
    """Claims of one process over the store behind ``engine`` (see the module's docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend: _LockBackend
        if engine.dialect.name == "postgresql":
            self.backend = _PgLocks(engine)
        else:
            path = _sqlite_lock_path(engine) if engine.dialect.name == "sqlite" else None
            if path is None and engine.dialect.name != "sqlite":
                log.warning("pollers are coordinated on PostgreSQL and SQLite only, not on %s: run one poller",
                            engine.dialect.name)
            self.backend = _FileLocks(path)
        self.slot: int | None = None
        self._joined = False
        self._members: tuple[float, set[int]] = (0.0, set())

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- claims ---------------------------------------------------------------------------------

    @contextmanager
    def locks(self) -> Iterator[LockSession]:
        """A lock session; everything claimed through it is dropped when the block ends.
        Raises StoreError when the database cannot be reached."""
        session = self.backend.session()
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def source(self, source_id: str) -> Iterator[bool]:
        """True (and held for the block) if no other poller is polling this source now."""
        with self.locks() as session:
            yield session.try_lock("source", source_id)

    @contextmanager
    def job(self, name: str) -> Iterator[bool]:
        """A named job (the hourly insights) that must not run twice at once."""
        with self.locks() as session:
            yield session.try_lock("job", name)

    @contextmanager
    def feed_claims(self) -> Iterator[FeedClaimer]:
        """For one render pass: ``claim(feed_id)`` gives the feed to this poller or not."""
        with self.locks() as session:
            yield FeedClaimer(self.engine, session)

    # --- membership -------------------------------------------------------------------------------

    def join(self) -> None:
        """Become one of the pollers that share the sources (until :meth:`close`)."""
        self._joined = True
        self.slot = self.backend.join()
        if self.slot is not None:
            log.info("poller slot %d of the pollers sharing %s", self.slot, self.dialect)

    def members(self) -> set[int]:
        """The live member slots (cached for MEMBERS_TTL_SECONDS). Raises StoreError."""
        at, members = self._members
        if time.monotonic() - at < MEMBERS_TTL_SECONDS:
            return members
        if self._joined and not self.backend.slot_alive():
            self.slot = self.backend.join()  # the database restarted, say: take a slot again
        members = self.backend.members()
        self._members = (time.monotonic(), members)
        return members

    def prefers(self, key: str) -> bool:
        """Whether ``key`` (a source id, a job name) is this poller's to do among the live
        pollers. True when this process has no slot (it is then the only judge of itself)."""
        members = self.members()
        if self.slot is None or self.slot not in members:
            return True
        return rendezvous_owner(key, members) == self.slot

    def close(self) -> None:
        self.backend.close()


class FeedClaimer:
    """``with claim(feed_id) as state:`` — the feed's render state read *after* the claim (a
    render by another poller that just finished is seen, so the feed is not rendered twice),
    or None while another poller renders it."""

    def __init__(self, engine: Engine, session: LockSession) -> None:
        self.engine = engine
        self.session = session

    @contextmanager
    def __call__(self, feed_id: str) -> Iterator[FeedRenderState | None]:
        if not self.session.try_lock("feed", feed_id):
            yield None
            return
        try:
            yield self._state(feed_id)
        finally:
            self.session.unlock("feed", feed_id)

    def _state(self, feed_id: str) -> FeedRenderState:
        f = feeds_table
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(f.c.dirty, f.c.render_key, f.c.window_day, f.c.dirty_gen)
                                   .where(f.c.feed_id == feed_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the render state of {feed_id}: {_reason(exc)}") from None
        if row is None:
            return (True, None, None, 0)
        return (bool(row.dirty), row.render_key, row.window_day, row.dirty_gen or 0)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0][:300] if str(orig or exc) else type(exc).__name__
