"""The store: the record of history, per-source state, and rendered feeds.

SQLAlchemy Core over SQLite by default (any SQLAlchemy URL works, PostgreSQL for more than
one machine). Origins forget (Alertmanager drops a resolved alert within minutes); the store
does not: an event that stops appearing is closed, kept or cancelled by its source's policy,
never deleted. Each poll is applied in one transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
    create_engine,
    event,
    func,
    or_,
    select,
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
    Column("render_key", String(64)),
    Column("window_day", String(10)),
)


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
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create data directory {path.parent}: {exc.strerror}") from None
        try:
            self.engine: Engine = create_engine(url)
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"bad storage URL: {type(exc).__name__}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database ({_redact_url(url)}): {_db_reason(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

    # --- polls ---------------------------------------------------------------------------

    def apply_poll(self, source_id: str, events: Sequence[Event], *, absence: str,
                   complete: bool, now: float, previous_success: float | None,
                   cursor: str | None = None, result: dict[str, Any] | None = None,
                   duration: float | None = None) -> PollChanges:
        """Upsert a poll's events and apply the absence policy, all in one transaction.

        ``complete`` is False for incremental polls: then a missing event means nothing.
        A vanished event is closed at ``previous_success`` (the last time it was seen).
        """
        changes = PollChanges()
        unique: dict[str, Event] = {}
        for ev in events:
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
                               t.c.account_key, t.c.kind, t.c.severity_rank)
                        .where(t.c.source == source_id))
                }
                inserts: list[dict[str, Any]] = []
                updates: list[dict[str, Any]] = []
                for key, ev in unique.items():
                    digest = ev.content_hash()
                    old = existing.get(key)
                    if old is None:
                        inserts.append(self._row_values(ev, digest, now, sequence=0, created=now))
                        changes.new += 1
                    elif old.content_hash != digest:
                        values = self._row_values(ev, digest, now, sequence=old.sequence + 1)
                        updates.append({"_id": old.id, **values})
                        changes.updated += 1
                        changes.touched.add(Touched(old.account_key, old.kind, old.severity_rank))
                    else:
                        if old.gone:
                            conn.execute(update(t).where(t.c.id == old.id).values(gone=False))
                        changes.unchanged += 1
                        continue
                    changes.touched.add(Touched(_account_key(ev.account), ev.kind, severity_rank(ev.severity)))
                if complete:
                    missing = [row for key, row in existing.items() if key not in unique and not row.gone]
                    self._apply_absence(conn, missing, absence, now, previous_success, changes, updates)
                if inserts:
                    conn.execute(t.insert(), inserts)
                if updates:
                    self._bulk_update(conn, updates)
                self._record_success(conn, source_id, now, cursor, result, duration)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write poll of {source_id}: {_db_reason(exc)}") from None
        return changes

    def _apply_absence(self, conn: Any, missing: list[Any], absence: str, now: float,
                       previous_success: float | None, changes: PollChanges,
                       updates: list[dict[str, Any]]) -> None:
        if not missing:
            return
        t = events_table
        ids = [row.id for row in missing]
        rows = []
        for chunk in _chunks(ids, 500):
            rows.extend(conn.execute(select(t.c.id, t.c.data, t.c.sequence).where(t.c.id.in_(chunk))))
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
                new_ev = _replace(ev, status="cancelled")
                changes.cancelled += 1
            if new_ev is ev:
                gone_only.append(row.id)
                continue
            values = self._row_values(new_ev, new_ev.content_hash(), now, sequence=row.sequence + 1)
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
                    created: float | None = None) -> dict[str, Any]:
        start_ts = to_ts(ev.start)
        values: dict[str, Any] = {
            "source": ev.source, "key": str(ev.key), "uid": event_uid(ev.source, str(ev.key), self.uid_host),
            "kind": ev.kind, "account_key": _account_key(ev.account),
            "severity_rank": severity_rank(ev.severity), "start_ts": start_ts,
            "end_ts": to_ts(ev.end) if ev.end is not None else start_ts,
            "recurring": bool(ev.rrule),
            "data": json.dumps(ev.to_dict(), ensure_ascii=False, default=str),
            "content_hash": digest, "sequence": sequence, "last_modified": now,
            "gone": False, "vevent": None, "vevent_key": None,
        }
        if created is not None:
            values["created"] = created
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
        with self.engine.begin() as conn:
            row = conn.execute(select(s.c.consecutive_failures).where(s.c.source == source_id)).first()
            failures = (row.consecutive_failures if row else 0) + 1
            self._upsert_state(conn, source_id, {
                "last_attempt": now, "last_error": error[:2000], "last_error_at": now,
                "consecutive_failures": failures, "last_duration": duration,
                "polls_total": func.coalesce(s.c.polls_total, 0) + 1,
                "failures_total": func.coalesce(s.c.failures_total, 0) + 1})
        return failures

    def set_next_poll(self, source_id: str, when: float | None) -> None:
        with self.engine.begin() as conn:
            self._upsert_state(conn, source_id, {"next_poll": when})

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

    def query_events(self, query: FeedQuery) -> list[EventRow]:
        """Events a feed shows: in the window (or recurring), matching accounts/kinds/severity."""
        t = events_table
        conditions = [or_(and_(t.c.start_ts < query.end_ts, t.c.end_ts >= query.start_ts),
                          and_(t.c.recurring.is_(True), t.c.start_ts < query.end_ts))]
        if query.account_keys is not None:
            if not query.account_keys:
                return []
            conditions.append(t.c.account_key.in_(sorted(query.account_keys)))
        if query.kinds is not None:
            conditions.append(t.c.kind.in_(sorted(query.kinds)))
        if query.min_severity is not None:
            conditions.append(or_(t.c.severity_rank.is_(None), t.c.severity_rank >= query.min_severity))
        stmt = (select(t.c.id, t.c.uid, t.c.data, t.c.sequence, t.c.created, t.c.last_modified,
                       t.c.vevent, t.c.vevent_key)
                .where(and_(*conditions)).order_by(t.c.start_ts, t.c.id))
        with self.engine.connect() as conn:
            return [
                EventRow(id=r.id, uid=r.uid, event=Event.from_dict(json.loads(r.data)), sequence=r.sequence,
                         created=r.created, last_modified=r.last_modified, vevent=r.vevent, vevent_key=r.vevent_key)
                for r in conn.execute(stmt)
            ]

    def save_fragments(self, fragments: Iterable[tuple[int, bytes, str]]) -> None:
        """Keep rendered VEVENTs (id, bytes, render key) so the next render only joins them."""
        batch = [{"_id": i, "vevent": body, "vevent_key": key} for i, body, key in fragments]
        if not batch:
            return
        t = events_table
        stmt = update(t).where(t.c.id == bindparam("_id")).values(vevent=bindparam("vevent"), vevent_key=bindparam("vevent_key"))
        with self.engine.begin() as conn:
            conn.execute(stmt, batch)

    # --- feeds ---------------------------------------------------------------------------------

    def mark_dirty(self, feed_ids: Iterable[str]) -> None:
        ids = sorted(set(feed_ids))
        if not ids:
            return
        f = feeds_table
        with self.engine.begin() as conn:
            known = {r.feed_id for r in conn.execute(select(f.c.feed_id).where(f.c.feed_id.in_(ids)))}
            if known:
                conn.execute(update(f).where(f.c.feed_id.in_(sorted(known))).values(dirty=True))
            for feed_id in ids:
                if feed_id not in known:
                    conn.execute(f.insert().values(feed_id=feed_id, dirty=True))

    def feed_render_states(self) -> dict[str, tuple[bool, str | None, str | None]]:
        """feed id -> (dirty, render key, window day) for deciding what to re-render."""
        f = feeds_table
        with self.engine.connect() as conn:
            return {r.feed_id: (bool(r.dirty), r.render_key, r.window_day)
                    for r in conn.execute(select(f.c.feed_id, f.c.dirty, f.c.render_key, f.c.window_day))}

    def save_feed(self, feed_id: str, body: bytes, body_gz: bytes, etag: str, *, event_count: int,
                  now: float, render_seconds: float, render_key: str, window_day: str) -> bool:
        """Store a rendered feed; returns True when its bytes changed (Last-Modified moves then)."""
        f = feeds_table
        with self.engine.begin() as conn:
            old = conn.execute(select(f.c.etag, f.c.last_modified).where(f.c.feed_id == feed_id)).first()
            changed = old is None or old.etag != etag
            values = {"rendered_at": now, "render_seconds": render_seconds, "event_count": event_count,
                      "dirty": False, "render_key": render_key, "window_day": window_day}
            if changed:
                values.update(body=body, body_gz=body_gz, etag=etag, last_modified=now)
            if old is None:
                conn.execute(f.insert().values(feed_id=feed_id, **values))
            else:
                conn.execute(update(f).where(f.c.feed_id == feed_id).values(**values))
        return changed

    def get_feed(self, feed_id: str, *, with_body: bool = True, gz: bool = False) -> StoredFeed | None:
        """A rendered feed (body, or the gzip body when ``gz``), or None if never rendered."""
        f = feeds_table
        cols = [f.c.feed_id, f.c.etag, f.c.last_modified, f.c.rendered_at, f.c.event_count,
                f.c.render_seconds, f.c.render_key, f.c.window_day]
        if with_body:
            cols.append(f.c.body_gz if gz else f.c.body)
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(f.c.feed_id == feed_id)).first()
        if row is None or row.etag is None:
            return None
        body = (row.body_gz if gz else row.body) if with_body else b""
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
    cursor.close()


def _account_key(account: str | None) -> str | None:
    return account.strip().lower() if account and account.strip() else None


def _replace(ev: Event, **changes: Any) -> Event:
    from dataclasses import replace
    return replace(ev, **changes)


def _closed(ev: Event, seen_until: float) -> Event:
    """An open or still-running event ended at the time it was last seen."""
    if ev.all_day or ev.rrule:
        return ev
    last_seen = datetime.fromtimestamp(seen_until, timezone.utc)
    if ev.end is not None and ev.end <= last_seen:  # type: ignore[operator]
        return ev
    end = max(last_seen, ev.start)  # type: ignore[type-var]
    return _replace(ev, end=end, attrs={**ev.attrs, "closed": "no longer reported by the source"})


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

