"""The store: the record of history, per-source state, and rendered feeds.

SQLAlchemy Core over SQLite by default (any SQLAlchemy URL works, PostgreSQL for more than
one machine). Origins forget (Alertmanager drops a resolved alert within minutes); the store
does not: an event that stops appearing is closed, kept or cancelled by its source's policy,
never deleted. Each poll is applied in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from datetime import time as dtime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    inspect,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.model import Event, severity_rank
from icsfeed.tokens import event_uid

log = logging.getLogger(__name__)

metadata = MetaData()

events_table = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("key", String(512), nullable=False),
    Column("uid", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("account_key", String(256)),  # origin account key, lower-cased
    Column("severity_rank", Integer),
    Column("start_ts", Float, nullable=False),
    Column("end_ts", Float, nullable=False),
    Column("recurring", Boolean, nullable=False, default=False),
    Column("data", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("sequence", Integer, nullable=False, default=0),
    Column("created", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("gone", Boolean, nullable=False, default=False),
    Column("vevent", LargeBinary),  # rendered VEVENT fragment, cleared on change
    Column("vevent_key", String(64)),  # render settings the fragment was made with
    UniqueConstraint("source", "key", name="uq_events_source_key"),
    Index("ix_events_account_start", "account_key", "start_ts"),
    Index("ix_events_start", "start_ts"),
)

source_state_table = Table(
    "source_state", metadata,
    Column("source", String(64), primary_key=True),
    Column("last_attempt", Float),
    Column("last_success", Float),
    Column("last_error", Text),
    Column("last_error_at", Float),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("cursor", Text),
    Column("last_duration", Float),
    Column("last_result", Text),  # JSON summary of the last poll
    Column("next_poll", Float),
    Column("polls_total", Integer, nullable=False, default=0),
    Column("failures_total", Integer, nullable=False, default=0),
)

feeds_table = Table(
    "feeds", metadata,
    Column("feed_id", String(160), primary_key=True),
    Column("body", LargeBinary),
    Column("body_gz", LargeBinary),
    Column("etag", String(80)),
    Column("last_modified", Float),
    Column("rendered_at", Float),
    Column("render_seconds", Float),
    Column("event_count", Integer),
    Column("dirty", Boolean, nullable=False, default=True),
    #: bumped by every mark_dirty; a render clears ``dirty`` only if no change came in meanwhile
    Column("dirty_gen", Integer, nullable=False, default=0),
    Column("render_key", String(64)),
    Column("window_day", String(10)),
)


#: accounts whose insights a poll made out of date (see Store.mark_insights_due)
insights_due_table = Table(
    "insights_due", metadata,
    Column("account_key", String(200), primary_key=True),
    #: bumped by every mark; clear_insights_due drops a key only if nothing marked it since
    Column("gen", Integer, nullable=False, default=1),
)


def _feed_statement(with_body: bool, gz: bool) -> Any:
    f = feeds_table
    cols = [f.c.feed_id, f.c.etag, f.c.last_modified, f.c.rendered_at, f.c.event_count,
            f.c.render_seconds, f.c.render_key, f.c.window_day]
    if with_body:
        cols.append(f.c.body_gz if gz else f.c.body)
    return select(*cols).where(f.c.feed_id == bindparam("feed_id"))


#: get_feed's statements by (with_body, gz)
_FEED_STATEMENTS = {(b, g): _feed_statement(b, g) for b in (True, False) for g in (True, False)}


class StoreError(Exception):
    """The database cannot be opened or written; the message says where and why."""


def to_ts(value: datetime | date) -> float:
    """Seconds since the epoch; a date counts from its midnight UTC."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.combine(value, dtime(0), timezone.utc).timestamp()


@dataclass(frozen=True)
class EventRow:
    """An event as stored, with what clients need beyond the Event itself."""

    id: int
    uid: str
    event: Event
    sequence: int
    created: float
    last_modified: float
    vevent: bytes | None = None
    vevent_key: str | None = None


@dataclass(frozen=True)
class Touched:
    """What routing needs to know of a changed event to find the feeds it is in."""

    account_key: str | None
    kind: str
    severity_rank: int | None


@dataclass
class PollChanges:
    """What one poll did to the store."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    cancelled: int = 0
    duplicates: int = 0
    touched: set[Touched] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.closed or self.cancelled)


@dataclass(frozen=True)
class SourceState:
    source: str
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    cursor: str | None = None
    last_duration: float | None = None
    last_result: dict[str, Any] | None = None
    next_poll: float | None = None
    polls_total: int = 0
    failures_total: int = 0


@dataclass(frozen=True)
class StoredFeed:
    feed_id: str
    body: bytes
    body_gz: bytes
    etag: str
    last_modified: float
    rendered_at: float
    event_count: int
    render_seconds: float = 0.0
    render_key: str | None = None
    window_day: str | None = None


@dataclass(frozen=True)
class FeedQuery:
    """Which stored events a feed shows (routing builds it, render runs it)."""

    start_ts: float
    end_ts: float
    account_keys: frozenset[str] | None = None  # None: every account, and none
    kinds: frozenset[str] | None = None
    min_severity: int | None = None


class Store:
    """All database access of icsfeed goes through here."""

    def __init__(self, url: str, *, uid_host: str = "icsfeed") -> None:
        self.url = url
        self.uid_host = uid_host
        #: True when the database could only be opened for reading (a read-only data directory)
        self.read_only = False
        #: feeds saved through this Store (web caches in this process forget what they read before)
        self.saves = 0
        path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create data directory {path.parent}: {exc.strerror}") from None
        self.engine: Engine = self._engine(url)
        try:
            metadata.create_all(self.engine)
            self._add_missing_columns()
        except SQLAlchemyError as exc:
            if not (path is not None and self._open_read_only(path)):
                raise StoreError(f"cannot open the database ({_redact_url(url)}): {_db_reason(exc)}") from None

    @staticmethod
    def _engine(url: str) -> Engine:
        try:
            engine = create_engine(url)
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"bad storage URL: {type(exc).__name__}: {exc}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _open_read_only(self, path: Path) -> bool:
        """A SQLite database in a directory that cannot be written: SQLite cannot make the
        WAL index it needs next to it, so open the file as immutable, read-only. Feeds that
        were rendered are served; every write fails with a clear "readonly database"."""
        if not path.is_file() or os.access(path.parent, os.W_OK):
            return False
        engine = self._engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true")
        try:
            with engine.connect() as conn:
                have = set(inspect(conn).get_table_names())
        except SQLAlchemyError:
            engine.dispose()
            return False
        if not {"events", "feeds", "source_state"} <= have:
            engine.dispose()
            return False
        self.engine.dispose()
        self.engine, self.read_only = engine, True
        log.warning("the data directory %s cannot be written: serving what is stored; polls and renders "
                    "cannot be saved until it is writable and icsfeed is restarted", path.parent)
        return True

    def _add_missing_columns(self) -> None:
        """Columns added since a database was created (create_all only makes missing tables)."""
        have = {c["name"] for c in inspect(self.engine).get_columns("feeds")}
        if "dirty_gen" not in have:
            with self.engine.begin() as conn:
                conn.execute(text("ALTER TABLE feeds ADD COLUMN dirty_gen INTEGER NOT NULL DEFAULT 0"))

    def close(self) -> None:
        self.engine.dispose()

    # --- polls ---------------------------------------------------------------------------

    def apply_poll(self, source_id: str, events: Sequence[Event], *, absence: str,
                   complete: bool, now: float, previous_success: float | None,
                   cursor: str | None = None, result: dict[str, Any] | None = None,
                   duration: float | None = None,
                   affected: Callable[[set[Touched]], Iterable[str]] | None = None,
                   fragment: Fragmenter | None = None) -> PollChanges:
        """Upsert a poll's events and apply the absence policy, all in one transaction.

        ``complete`` is False for incremental polls: then a missing event means nothing.
        A vanished event is closed at ``previous_success`` (the last time it was seen).
        ``affected`` maps the touched events to feed ids, which are marked dirty in the same
        transaction: a crash right after the commit cannot leave a feed that misses them.
        ``fragment`` renders a new or changed event's VEVENT (bytes and render key) so it is
        written with the event, once, instead of being rewritten into the row by the render.
        """
        changes = PollChanges()
        unique: dict[str, Event] = {}
        for ev in events:
            ev = _storable(ev)
            if ev.key in unique:
                changes.duplicates += 1
                log.warning("source %s returned key %r more than once; the last one wins", source_id, ev.key[:80])
            unique[str(ev.key)] = ev
        t = events_table
        try:
            with self.engine.begin() as conn:
                existing = {
                    row.key: row for row in conn.execute(
                        select(t.c.id, t.c.key, t.c.content_hash, t.c.sequence, t.c.gone,
                               t.c.account_key, t.c.kind, t.c.severity_rank, t.c.created)
                        .where(t.c.source == source_id))
                }
                inserts: list[dict[str, Any]] = []
                updates: list[dict[str, Any]] = []
                revived: list[int] = []
                for key, ev in unique.items():
                    blob, digest = _encoded(ev)
                    old = existing.get(key)
                    if old is None:
                        inserts.append(self._row_values(ev, digest, now, sequence=0, created=now, blob=blob,
                                                        fragment=fragment))
                        changes.new += 1
                    elif old.content_hash != digest:
                        values = self._row_values(ev, digest, now, sequence=old.sequence + 1, blob=blob,
                                                  fragment=fragment, created_for_fragment=old.created)
                        updates.append({"_id": old.id, **values})
                        changes.updated += 1
                        changes.touched.add(Touched(old.account_key, old.kind, old.severity_rank))
                    else:
                        if old.gone:
                            revived.append(old.id)
                        changes.unchanged += 1
                        continue
                    changes.touched.add(Touched(_account_key(ev.account), ev.kind, severity_rank(ev.severity)))
                for chunk in _chunks(revived, 500):
                    conn.execute(update(t).where(t.c.id.in_(chunk)).values(gone=False))
                if complete:
                    missing = [row for key, row in existing.items() if key not in unique and not row.gone]
                    self._apply_absence(conn, missing, absence, now, previous_success, changes, updates, fragment)
                if inserts:
                    conn.execute(t.insert(), inserts)
                if updates:
                    self._bulk_update(conn, updates)
                if affected is not None and changes.touched:
                    self._mark_dirty(conn, affected(changes.touched))
                self._record_success(conn, source_id, now, cursor, result, duration)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write poll of {source_id}: {_db_reason(exc)}") from None
        return changes

    def _apply_absence(self, conn: Any, missing: list[Any], absence: str, now: float,
                       previous_success: float | None, changes: PollChanges,
                       updates: list[dict[str, Any]], fragment: Fragmenter | None = None) -> None:
        if not missing:
            return
        t = events_table
        ids = [row.id for row in missing]
        rows = []
        for chunk in _chunks(ids, 500):
            rows.extend(conn.execute(select(t.c.id, t.c.data, t.c.sequence, t.c.created).where(t.c.id.in_(chunk))))
        seen_until = previous_success or now
        gone_only: list[int] = []
        for row in rows:
            ev = Event.from_dict(json.loads(row.data))
            policy = ev.attrs.get("absence") or absence
            new_ev = ev
            if policy == "close":
                new_ev = _closed(ev, seen_until)
                if new_ev is not ev:
                    changes.closed += 1
            elif policy == "cancel" and ev.status != "cancelled":
                new_ev = replace(ev, status="cancelled")
                changes.cancelled += 1
            if new_ev is ev:
                gone_only.append(row.id)
                continue
            blob, digest = _encoded(new_ev)
            values = self._row_values(new_ev, digest, now, sequence=row.sequence + 1, blob=blob,
                                      fragment=fragment, created_for_fragment=row.created)
            values["gone"] = True
            updates.append({"_id": row.id, **values})
            changes.touched.add(Touched(_account_key(ev.account), ev.kind, severity_rank(ev.severity)))
        for chunk in _chunks(gone_only, 500):
            conn.execute(update(t).where(t.c.id.in_(chunk)).values(gone=True))

    def _bulk_update(self, conn: Any, updates: list[dict[str, Any]]) -> None:
        t = events_table
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for u in updates:
            by_shape.setdefault(tuple(sorted(k for k in u if k != "_id")), []).append(u)
        for shape, batch in by_shape.items():
            stmt = update(t).where(t.c.id == bindparam("_id")).values({c: bindparam(c) for c in shape})
            conn.execute(stmt, batch)

    def _row_values(self, ev: Event, digest: str, now: float, *, sequence: int,
                    created: float | None = None, blob: str | None = None,
                    fragment: Fragmenter | None = None, created_for_fragment: float | None = None) -> dict[str, Any]:
        start_ts = to_ts(ev.start)
        uid = event_uid(ev.source, str(ev.key), self.uid_host)
        values: dict[str, Any] = {
            "source": ev.source, "key": str(ev.key), "uid": uid,
            "kind": ev.kind, "account_key": _account_key(ev.account),
            "severity_rank": severity_rank(ev.severity), "start_ts": start_ts,
            "end_ts": to_ts(ev.end) if ev.end is not None else start_ts,
            "recurring": bool(ev.rrule),
            "data": blob if blob is not None else _encoded(ev)[0],
            "content_hash": digest, "sequence": sequence, "last_modified": now,
            "gone": False, "vevent": None, "vevent_key": None,
        }
        if created is not None:
            values["created"] = created
        if fragment is not None:
            made = fragment(EventRow(id=0, uid=uid, event=ev, sequence=sequence,
                                     created=created if created is not None else (created_for_fragment or now),
                                     last_modified=now))
            if made is not None:
                values["vevent"], values["vevent_key"] = made
        return values

    # --- source state ----------------------------------------------------------------------

    def _record_success(self, conn: Any, source_id: str, now: float, cursor: str | None,
                        result: dict[str, Any] | None, duration: float | None) -> None:
        s = source_state_table
        values: dict[str, Any] = {"last_attempt": now, "last_success": now, "consecutive_failures": 0,
                                  "last_duration": duration, "last_result": json.dumps(result or {}),
                                  "polls_total": func.coalesce(s.c.polls_total, 0) + 1}
        if cursor is not None:
            values["cursor"] = cursor
        self._upsert_state(conn, source_id, values)

    def record_failure(self, source_id: str, error: str, now: float, duration: float | None = None) -> int:
        """Note a failed poll; returns the number of failures in a row."""
        s = source_state_table
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(s.c.consecutive_failures).where(s.c.source == source_id)).first()
                failures = (row.consecutive_failures if row else 0) + 1
                self._upsert_state(conn, source_id, {
                    "last_attempt": now, "last_error": error[:2000], "last_error_at": now,
                    "consecutive_failures": failures, "last_duration": duration,
                    "polls_total": func.coalesce(s.c.polls_total, 0) + 1,
                    "failures_total": func.coalesce(s.c.failures_total, 0) + 1})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the failed poll of {source_id}: {_db_reason(exc)}") from None
        return failures

    def set_next_poll(self, source_id: str, when: float | None) -> None:
        try:
            with self.engine.begin() as conn:
                self._upsert_state(conn, source_id, {"next_poll": when})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot note the next poll of {source_id}: {_db_reason(exc)}") from None

    def _upsert_state(self, conn: Any, source_id: str, values: dict[str, Any]) -> None:
        s = source_state_table
        done = conn.execute(update(s).where(s.c.source == source_id).values(**values)).rowcount
        if not done:
            initial = {k: (1 if k.endswith("_total") else v) for k, v in values.items()}
            conn.execute(s.insert().values(source=source_id, **{"consecutive_failures": 0, **initial}))

    def source_state(self, source_id: str) -> SourceState:
        s = source_state_table
        with self.engine.connect() as conn:
            row = conn.execute(select(s).where(s.c.source == source_id)).first()
        if row is None:
            return SourceState(source=source_id)
        data = row._asdict()
        data["last_result"] = json.loads(data["last_result"]) if data["last_result"] else None
        return SourceState(**data)

    def source_states(self) -> dict[str, SourceState]:
        s = source_state_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(s)).all()
        out = {}
        for row in rows:
            data = row._asdict()
            data["last_result"] = json.loads(data["last_result"]) if data["last_result"] else None
            out[row.source] = SourceState(**data)
        return out

    def event_counts(self) -> dict[str, int]:
        """Events stored per source."""
        t = events_table
        with self.engine.connect() as conn:
            return {r.source: r.n for r in conn.execute(select(t.c.source, func.count().label("n")).group_by(t.c.source))}

    # --- events for render -------------------------------------------------------------------

    def _feed_conditions(self, query: FeedQuery) -> list[Any] | None:
        """WHERE clauses of a feed's events, or None when it can show none."""
        t = events_table
        conditions = [or_(and_(t.c.start_ts < query.end_ts, t.c.end_ts >= query.start_ts),
                          and_(t.c.recurring.is_(True), t.c.start_ts < query.end_ts))]
        if query.account_keys is not None:
            if not query.account_keys:
                return None
            conditions.append(t.c.account_key.in_(sorted(query.account_keys)))
        if query.kinds is not None:
            if not query.kinds:
                return None
            conditions.append(t.c.kind.in_(sorted(query.kinds)))
        if query.min_severity is not None:
            conditions.append(or_(t.c.severity_rank.is_(None), t.c.severity_rank >= query.min_severity))
        return conditions

    def query_events(self, query: FeedQuery) -> list[EventRow]:
        """Events a feed shows: in the window (or recurring), matching accounts/kinds/severity."""
        t = events_table
        conditions = self._feed_conditions(query)
        if conditions is None:
            return []
        stmt = select(*_EVENT_ROW_COLUMNS).where(and_(*conditions)).order_by(t.c.start_ts, t.c.id)
        with self.engine.connect() as conn:
            return [_event_row(r) for r in conn.execute(stmt).all()]  # one fetchall, not a fetch a row

    def query_fragments(self, query: FeedQuery, render_key: str) -> list[tuple[int, bytes | None]]:
        """(id, VEVENT fragment) of a feed's events in feed order; the fragment is None where
        none made under ``render_key`` is stored. Cheaper than :meth:`query_events`: no event
        is decoded, which is what a re-render after a small change mostly needs."""
        t = events_table
        conditions = self._feed_conditions(query)
        if conditions is None:
            return []
        fragment = case((t.c.vevent_key == render_key, t.c.vevent), else_=null())
        stmt = select(t.c.id, fragment).where(and_(*conditions)).order_by(t.c.start_ts, t.c.id)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())  # one fetchall: half the time of a fetch a row

    def events_by_id(self, ids: Sequence[int]) -> dict[int, EventRow]:
        """Stored events by row id (the ones a render has no fragment for)."""
        t = events_table
        out: dict[int, EventRow] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                stmt = select(*_EVENT_ROW_COLUMNS).where(t.c.id.in_(chunk))
                for r in conn.execute(stmt).all():
                    out[r[0]] = _event_row(r)
        return out

    def save_fragments(self, fragments: Iterable[tuple[int, bytes, str]]) -> None:
        """Keep rendered VEVENTs (id, bytes, render key) so the next render only joins them."""
        batch = [{"_id": i, "vevent": body, "vevent_key": key} for i, body, key in fragments]
        if not batch:
            return
        t = events_table
        stmt = update(t).where(t.c.id == bindparam("_id")).values(vevent=bindparam("vevent"), vevent_key=bindparam("vevent_key"))
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, batch)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store rendered events: {_db_reason(exc)}") from None

    # --- feeds ---------------------------------------------------------------------------------

    def mark_dirty(self, feed_ids: Iterable[str]) -> None:
        try:
            with self.engine.begin() as conn:
                self._mark_dirty(conn, feed_ids)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot mark feeds for re-rendering: {_db_reason(exc)}") from None

    def _mark_dirty(self, conn: Any, feed_ids: Iterable[str]) -> None:
        _bump_or_insert(conn, feeds_table.c.feed_id, feeds_table.c.dirty_gen, feed_ids, dirty=True)

    def feed_render_states(self) -> dict[str, tuple[bool, str | None, str | None]]:
        """feed id -> (dirty, render key, window day) for deciding what to re-render."""
        return {feed_id: state[:3] for feed_id, state in self.feed_render_generations().items()}

    def mark_insights_due(self, account_keys: Iterable[str | None]) -> None:
        """Note that these accounts' insights must be recomputed (by one job, however many
        polls touched them). Events without an account have no insights."""
        keys = sorted({key for key in account_keys if key})
        if not keys:
            return
        try:
            with self.engine.begin() as conn:
                _bump_or_insert(conn, insights_due_table.c.account_key, insights_due_table.c.gen, keys)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot mark insights for a refresh: {_db_reason(exc)}") from None

    def insights_due(self) -> dict[str, int]:
        """Account keys whose insights are out of date -> their mark generation."""
        d = insights_due_table
        try:
            with self.engine.connect() as conn:
                return {r[0]: r[1] for r in conn.execute(select(d.c.account_key, d.c.gen)).all()}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the accounts due for insights: {_db_reason(exc)}") from None

    def clear_insights_due(self, seen: dict[str, int]) -> None:
        """Forget the keys refreshed from ``seen`` (from insights_due), except those marked
        again meanwhile: a poll during the refresh keeps its account due."""
        d = insights_due_table
        try:
            with self.engine.begin() as conn:
                for key, gen in seen.items():
                    conn.execute(d.delete().where(and_(d.c.account_key == key, d.c.gen == gen)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot clear refreshed insights: {_db_reason(exc)}") from None

    def feed_render_generations(self) -> dict[str, tuple[bool, str | None, str | None, int]]:
        """feed id -> (dirty, render key, window day, dirty generation); pass the generation to
        :meth:`save_feed` so that a change marked during the render keeps the feed dirty."""
        f = feeds_table
        with self.engine.connect() as conn:
            return {r.feed_id: (bool(r.dirty), r.render_key, r.window_day, r.dirty_gen or 0)
                    for r in conn.execute(select(f.c.feed_id, f.c.dirty, f.c.render_key, f.c.window_day, f.c.dirty_gen))}

    def save_feed(self, feed_id: str, body: bytes, body_gz: bytes, etag: str, *, event_count: int,
                  now: float, render_seconds: float, render_key: str, window_day: str,
                  generation: int | None = None) -> bool:
        """Store a rendered feed; returns True when its bytes changed (Last-Modified moves then).

        With ``generation`` (read before the render), the feed stays dirty if it was marked
        dirty again while it was being rendered, so the next render picks that change up.
        """
        f = feeds_table
        try:
            with self.engine.begin() as conn:
                old = conn.execute(select(f.c.etag, f.c.last_modified).where(f.c.feed_id == feed_id)).first()
                changed = old is None or old.etag != etag
                clean: Any = False if generation is None else case(
                    (func.coalesce(f.c.dirty_gen, 0) == generation, False), else_=f.c.dirty)
                values = {"rendered_at": now, "render_seconds": render_seconds, "event_count": event_count,
                          "dirty": clean, "render_key": render_key, "window_day": window_day}
                if changed:
                    values.update(body=body, body_gz=body_gz, etag=etag, last_modified=now)
                if old is None:
                    values["dirty"] = False
                    conn.execute(f.insert().values(feed_id=feed_id, **values))
                else:
                    conn.execute(update(f).where(f.c.feed_id == feed_id).values(**values))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store feed {feed_id}: {_db_reason(exc)}") from None
        self.saves += 1
        return changed

    def get_feed(self, feed_id: str, *, with_body: bool = True, gz: bool = False) -> StoredFeed | None:
        """A rendered feed (body, or the gzip body when ``gz``), or None if never rendered.

        Every feed request makes this lookup, so its statements are built once."""
        stmt = _FEED_STATEMENTS[(with_body, gz)]
        with self.engine.connect() as conn:
            row = conn.execute(stmt, {"feed_id": feed_id}).first()
        if row is None or row.etag is None:
            return None
        body = row[-1] if with_body else b""
        return StoredFeed(
            feed_id=row.feed_id, body=body if not gz else b"", body_gz=body if gz else b"",
            etag=row.etag, last_modified=row.last_modified, rendered_at=row.rendered_at,
            event_count=row.event_count or 0, render_seconds=row.render_seconds or 0.0,
            render_key=row.render_key, window_day=row.window_day)

    def feeds_summary(self) -> list[StoredFeed]:
        """Every rendered feed without its bytes, for the status page."""
        f = feeds_table
        with self.engine.connect() as conn:
            ids = [r.feed_id for r in conn.execute(select(f.c.feed_id).order_by(f.c.feed_id))]
        return [feed for i in ids if (feed := self.get_feed(i, with_body=False)) is not None]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))


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


#: renders a stored event's VEVENT: (bytes, render key), or None when it cannot
Fragmenter = Callable[[EventRow], "tuple[bytes, str] | None"]

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _storable(ev: Event) -> Event:
    """The event with a key and account the database can hold: lone surrogates (from a
    ``\\ud800`` escape in an origin's JSON) cannot be encoded, so they become U+FFFD; the
    same input always maps to the same key, so the UID stays stable."""
    key, account = str(ev.key), ev.account
    if key.isascii() and (account is None or account.isascii()):
        return ev
    fixed_key = _SURROGATE.sub("\ufffd", key)
    fixed_account = _SURROGATE.sub("\ufffd", account) if account else account
    if fixed_key == key and fixed_account == account:
        return ev
    return replace(ev, key=fixed_key, account=fixed_account)


def _encoded(ev: Event) -> tuple[str, str]:
    """The stored JSON of an event and its content hash (the same as ``Event.content_hash``),
    from one serialisation. JSON with lone surrogates is kept ASCII-escaped: SQLite cannot
    store them raw, and json.loads gives the same text back."""
    blob = json.dumps(ev.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
    try:
        raw = blob.encode("utf-8")
    except UnicodeEncodeError:
        raw = blob.encode("utf-8", "surrogatepass")
        blob = json.dumps(ev.to_dict(), sort_keys=True, default=str)
    return blob, hashlib.sha256(raw).hexdigest()


def _bump_or_insert(conn: Any, key: Any, generation: Any, keys: Iterable[str], **values: Any) -> None:
    """Rows of ``key``'s table for these keys get ``values`` and their ``generation`` counter
    bumped (missing rows are inserted at 1): marks that a later step clears only if no newer
    mark came in meanwhile (feeds to render, accounts whose insights are due)."""
    table = key.table
    for chunk in _chunks(sorted(set(keys)), 500):
        known = {r[0] for r in conn.execute(select(key).where(key.in_(chunk)))}
        if known:
            conn.execute(update(table).where(key.in_(sorted(known)))
                         .values(**values, **{generation.name: func.coalesce(generation, 0) + 1}))
        fresh = [{key.name: k, generation.name: 1, **values} for k in chunk if k not in known]
        if fresh:
            conn.execute(_insert_or_bump(conn, table, key, generation, values), fresh)


def _insert_or_bump(conn: Any, table: Any, key: Any, generation: Any, values: dict[str, Any]) -> Any:
    """An INSERT that bumps the row instead where another process inserted the same key since
    it was read (pollers side by side mark the same new feeds and accounts at once)."""
    if conn.dialect.name not in ("postgresql", "sqlite"):
        return table.insert()
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_update(
        index_elements=[key], set_={**values, generation.name: func.coalesce(generation, 0) + 1})


#: the columns _event_row reads, in its order (rows are read by position: thousands per render)
_EVENT_ROW_COLUMNS = (events_table.c.id, events_table.c.uid, events_table.c.data, events_table.c.sequence,
                      events_table.c.created, events_table.c.last_modified, events_table.c.vevent,
                      events_table.c.vevent_key)


def _event_row(r: tuple[Any, ...]) -> EventRow:
    row_id, uid, data, sequence, created, last_modified, vevent, vevent_key = r
    return EventRow(id=row_id, uid=uid, event=Event.from_dict(json.loads(data)), sequence=sequence,
                    created=created, last_modified=last_modified, vevent=vevent, vevent_key=vevent_key)


def _account_key(account: str | None) -> str | None:
    return account.strip().lower() if account and account.strip() else None


def _closed(ev: Event, seen_until: float) -> Event:
    """An open or still-running event ended at the time it was last seen."""
    if ev.all_day or ev.rrule:
        return ev
    last_seen = datetime.fromtimestamp(seen_until, timezone.utc)
    if ev.end is not None and ev.end <= last_seen:  # type: ignore[operator]
        return ev
    end = max(last_seen, ev.start)  # type: ignore[type-var]
    return replace(ev, end=end, attrs={**ev.attrs, "closed": "no longer reported by the source"})


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _db_reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0][:300]


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

