"""Events: a poll applied in one transaction (upsert, sequence, absence policy), and the
queries render and the pages run (events in a window, stored VEVENT fragments)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from datetime import time as dtime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, null, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.feed_filters import is_open
from icsfeed.model import Event, severity_rank
from icsfeed.store.database import StoreError, chunks, db_reason, storable_text
from icsfeed.store.schema import ACCOUNT_KEY_LENGTH, EVENT_KEY_LENGTH, events_table
from icsfeed.tokens import event_uid

log = logging.getLogger("icsfeed.store")


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
    #: records the store cannot hold as they are, left out of the poll: (key, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.closed or self.cancelled)


@dataclass(frozen=True)
class FeedQuery:
    """Which stored events a feed shows (routing builds it, render runs it)."""

    start_ts: float
    end_ts: float
    account_keys: frozenset[str] | None = None  # None: every account, and none
    kinds: frozenset[str] | None = None
    min_severity: int | None = None


#: renders a stored event's VEVENT: (bytes, render key), or None when it cannot
Fragmenter = Callable[[EventRow], "tuple[bytes, str] | None"]


class EventsMixin:
    """Writing polls and reading events (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine
    uid_host: str
    # from the other parts, called inside a poll's transaction
    _mark_dirty: Callable[[Any, Iterable[str]], None]
    _record_success: Callable[..., None]

    # --- polls ---------------------------------------------------------------------------

    def apply_poll(self, source_id: str, events: Sequence[Event], *, absence: str,
                   complete: bool, now: float, previous_success: float | None,
                   cursor: str | None = None, result: dict[str, Any] | None = None,
                   duration: float | None = None,
                   affected: Callable[[set[Touched]], Iterable[str]] | None = None,
                   fragment: Fragmenter | None = None, record: bool = True,
                   answer_digest: str | None = None) -> PollChanges:
        """Upsert a poll's events and apply the absence policy, all in one transaction.

        ``complete`` is False for incremental polls: then a missing event means nothing.
        A vanished event is closed at ``previous_success`` (the last time it was seen).
        ``affected`` maps the touched events to feed ids, which are marked dirty in the same
        transaction: a crash right after the commit cannot leave a feed that misses them.
        ``fragment`` renders a new or changed event's VEVENT (bytes and render key) so it is
        written with the event, once, instead of being rewritten into the row by the render.
        ``record`` False (a pushed notification, ``complete`` False too): the source's poll
        state (last success, cursor) is left as it is, since a push says nothing about the
        events it does not name; only its answer digest is cleared (the stored events no
        longer come from that answer alone).
        ``answer_digest``: the digest of the raw answer these events came from, kept with the
        source's state in the same transaction (the next poll of the same answer skips it).
        """
        changes = PollChanges()
        unique: dict[str, Event] = {}
        for ev in events:
            ev = _storable(ev)
            if len(ev.key) > EVENT_KEY_LENGTH:  # skipped, never the whole poll
                changes.skipped.append((ev.key, f"key longer than {EVENT_KEY_LENGTH} characters"))
                continue
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
                for chunk in chunks(revived, 500):
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
                if record:
                    self._record_success(conn, source_id, now, cursor, result, duration, answer_digest)
                else:
                    self._upsert_state(conn, source_id, {"answer_digest": None})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write poll of {source_id}: {db_reason(exc)}") from None
        return changes

    def _apply_absence(self, conn: Any, missing: list[Any], absence: str, now: float,
                       previous_success: float | None, changes: PollChanges,
                       updates: list[dict[str, Any]], fragment: Fragmenter | None = None) -> None:
        if not missing:
            return
        t = events_table
        ids = [row.id for row in missing]
        rows = []
        for chunk in chunks(ids, 500):
            rows.extend(conn.execute(select(t.c.id, t.c.data, t.c.sequence, t.c.created).where(t.c.id.in_(chunk))))
        seen_until = previous_success or now
        gone_only: list[int] = []
        for row in rows:
            ev = Event.from_dict(json.loads(row.data))
            policy = ev.attrs.get("absence") or absence
            new_ev = ev
            if policy == "close":
                new_ev = _closed(ev, seen_until, now)
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
        for chunk in chunks(gone_only, 500):
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
            # an ongoing event (a firing alert) reaches its last sighting: feed windows include it
            "end_ts": to_ts(ev.end) if ev.end is not None else max(start_ts, to_ts(ev.seen or ev.start)),
            "recurring": bool(ev.rrule),
            "data": blob if blob is not None else _encoded(ev)[0],
            "content_hash": digest, "sequence": sequence, "last_modified": now,
            "gone": False, "vevent": None, "vevent_key": None, "is_open": is_open(ev),
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
        return self.query_feed_fragments(query, (render_key,))

    def query_feed_fragments(self, query: FeedQuery, keys: Sequence[str]) -> list[tuple[int, bytes | None]]:
        """:meth:`query_fragments` for fragments made under any of ``keys`` (the render key,
        and the key of the fragments made for one feed's month view links)."""
        t = events_table
        conditions = self._feed_conditions(query)
        if conditions is None:
            return []
        current = t.c.vevent_key == keys[0] if len(keys) == 1 else t.c.vevent_key.in_(list(keys))
        fragment = case((current, t.c.vevent), else_=null())
        stmt = select(t.c.id, fragment).where(and_(*conditions)).order_by(t.c.start_ts, t.c.id)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())  # one fetchall: half the time of a fetch a row

    def query_feed_index(self, query: FeedQuery, keys: Sequence[str] | None = None) -> list[Any]:
        """A feed's events in feed order, by their columns: (id, sequence, last_modified, kind,
        severity_rank, is_open, fragment), ``fragment`` the one stored under any of ``keys``,
        else None. Without ``keys``: only (id, sequence, last_modified), what a render that
        starts from the feed's previous body needs of every event (it reads the rest of the
        changed ones only, :meth:`changed_parts_by_id`)."""
        t = events_table
        conditions = self._feed_conditions(query)
        if conditions is None:
            return []
        columns: list[Any] = [t.c.id, t.c.sequence, t.c.last_modified]
        if keys is not None:
            current = t.c.vevent_key == keys[0] if len(keys) == 1 else t.c.vevent_key.in_(list(keys))
            columns += [t.c.kind, t.c.severity_rank, t.c.is_open, case((current, t.c.vevent), else_=null())]
        stmt = select(*columns).where(and_(*conditions)).order_by(t.c.start_ts, t.c.id)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    def changed_parts_by_id(self, ids: Sequence[int], keys: Sequence[str]) -> dict[int, tuple[Any, ...]]:
        """id -> (kind, severity_rank, is_open, fragment stored under any of ``keys`` or None)."""
        t = events_table
        current = t.c.vevent_key == keys[0] if len(keys) == 1 else t.c.vevent_key.in_(list(keys))
        fragment = case((current, t.c.vevent), else_=null())
        out: dict[int, tuple[Any, ...]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                stmt = select(t.c.id, t.c.kind, t.c.severity_rank, t.c.is_open, fragment).where(t.c.id.in_(chunk))
                out.update((r[0], tuple(r[1:])) for r in conn.execute(stmt).all())
        return out

    def events_by_id(self, ids: Sequence[int]) -> dict[int, EventRow]:
        """Stored events by row id (the ones a render has no fragment for)."""
        t = events_table
        out: dict[int, EventRow] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
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
            raise StoreError(f"cannot store rendered events: {db_reason(exc)}") from None


def _storable(ev: Event) -> Event:
    """The event with a key and account every backend holds the same: NUL (PostgreSQL
    refuses it in text) and lone surrogates (from a ``\\ud800`` escape in an origin's JSON:
    not UTF-8) become U+FFFD. The same input always maps to the same key, on SQLite and
    PostgreSQL alike, so the UID stays stable."""
    key, account = str(ev.key), ev.account
    fixed_key = storable_text(key)
    fixed_account = storable_text(account) if account else account
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


#: the columns _event_row reads, in its order (rows are read by position: thousands per render)
_EVENT_ROW_COLUMNS = (events_table.c.id, events_table.c.uid, events_table.c.data, events_table.c.sequence,
                      events_table.c.created, events_table.c.last_modified, events_table.c.vevent,
                      events_table.c.vevent_key)


def _event_row(r: tuple[Any, ...]) -> EventRow:
    row_id, uid, data, sequence, created, last_modified, vevent, vevent_key = r
    return EventRow(id=row_id, uid=uid, event=stored_event(data), sequence=sequence,
                    created=created, last_modified=last_modified, vevent=vevent, vevent_key=vevent_key)


def stored_event(data: str) -> Event:
    """The Event a row's JSON holds (it passed the Event checks when it was stored)."""
    return Event.from_checked_dict(json.loads(data))


def _account_key(account: str | None) -> str | None:
    """The account as stored and routed: trimmed, lower-cased, at most ACCOUNT_KEY_LENGTH
    characters (a longer origin value is cut, the same on every backend)."""
    key = account.strip().lower() if account else ""
    return key[:ACCOUNT_KEY_LENGTH] or None


def _closed(ev: Event, seen_until: float, now: float | None = None) -> Event:
    """An open or still-running event ended at the time it was last seen.

    An event that has ended by its own account by ``now`` keeps that end: a resolved alert
    a webhook stored with its real end, between the last poll and this one, is not moved
    back to the last poll."""
    if ev.all_day or ev.rrule:
        return ev
    last_seen = datetime.fromtimestamp(seen_until, timezone.utc)
    if ev.end is not None and ev.end <= last_seen:  # type: ignore[operator]
        return ev
    if ev.end is not None and now is not None and ev.end <= datetime.fromtimestamp(now, timezone.utc):  # type: ignore[operator]
        return ev
    end = max(last_seen, ev.start)  # type: ignore[type-var]
    return replace(ev, end=end, seen=None, attrs={**ev.attrs, "closed": "no longer reported by the source"})
