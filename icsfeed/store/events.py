"""Events: a poll applied in one transaction (upsert, sequence, absence policy), and the
queries render and the pages run (events in a window, stored VEVENT fragments)."""

from __future__ import annotations

import hashlib
import json
import logging
import marshal
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from datetime import time as dtime
from itertools import islice
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, case, func, null, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from icsfeed.feed_filters import is_open
from icsfeed.model import Event, severity_rank
from icsfeed.store.codec import Codec, UndecodableBlob, source_group
from icsfeed.store.database import StoreError, chunks, db_reason, storable_text
from icsfeed.store.facts import row_facts, row_traits
from icsfeed.store.schema import ACCOUNT_KEY_LENGTH, EVENT_KEY_LENGTH, events_table, source_state_table
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
    #: after a complete poll: what :meth:`EventsMixin.record_digests` reads now (the present
    #: rows by record digest, and those without one), worked out from the poll's own writes
    present: StoredRecords | None = None

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


def window_condition(lo: Any, hi: Any) -> Any:
    """The store's window test in SQL (``lo`` and ``hi`` values or bound parameters): starts
    before the end, and ends after the start or recurs. The start bound stands once, so that
    SQLite reads one range of the window index, not one per side of an OR."""
    t = events_table
    return and_(t.c.start_ts < hi, or_(t.c.end_ts >= lo, t.c.recurring.is_(True)))


class EventsMixin:
    """Writing polls and reading events (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine
    uid_host: str
    codec: Codec
    # from the other parts, called inside a poll's transaction
    _mark_dirty: Callable[[Any, Iterable[str]], None]
    _record_success: Callable[..., None]

    # --- polls ---------------------------------------------------------------------------

    def apply_poll(self, source_id: str, events: Iterable[Event], *, absence: str,
                   complete: bool, now: float, previous_success: float | None,
                   cursor: str | None = None, result: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                   duration: float | Callable[[], float] | None = None,
                   affected: Callable[[set[Touched]], Iterable[str]] | None = None,
                   fragment: Fragmenter | None = None, record: bool = True,
                   answer_digest: str | None = None, record_digests: Mapping[str, str] | None = None,
                   known: Mapping[str, str] | None = None, stored: Mapping[str, str] | None = None,
                   expect_answer_digest: str | None = None) -> PollChanges:
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
        ``record_digests``: event key (as mapped) -> digest of the origin record it came from,
        stored with the row (NULL for an event without one) so the next poll need not map
        that record again. ``known``: stored key -> record digest of the events whose record
        the source found unchanged and did not map (:meth:`record_digests`): present and
        unchanged; if any of them changed since it was read, the poll is refused (StoreError)
        and the next one maps in full.
        ``stored``: what :meth:`record_digests` gave the source that found ``known``, read
        while the source's answer digest was ``expect_answer_digest``: when both are given,
        the stored rows are not read again (a 1% poll of a full dump reads 100,000 rows once,
        not twice); the poll is stored only if that answer digest is still the stored one
        (every other writer of the source's events clears or replaces it in its own
        transaction), checked and taken by the transaction's first write.
        ``events`` are taken one at a time, inside the transaction (a stream that maps its
        records as it goes, icsfeed.sources.mapping.EventStream, holds no Event past its row);
        ``record_digests`` is read for each event as it comes (a stream fills it as it goes);
        ``result`` and ``duration`` may be functions, called once every event is taken.
        """
        changes = PollChanges()
        mapped_digests = record_digests or {}
        t = events_table
        try:
            with self.engine.begin() as conn:
                # a poll that names most of its stored rows unchanged by their records (``known``:
                # a 1% change of a full dump) maps few events: the rows' full columns are read for
                # those keys only, a batch at a time, and only key, id and state for the rest
                present: Mapping[str, Any]
                existing: dict[str, _StoredRow]
                light = (bool(known) and isinstance(stored, StoredRecords) and expect_answer_digest is not None
                         and len(known) >= SPARSE_SHARE * (len(stored) + len(stored.others)))
                if light:  # the source's read of every row stands for this one, under its answer digest
                    existing, present = {}, {}
                    events = _fetching_stored(events, lambda keys: existing.update(
                        (row.key, row) for row in _stored_rows(conn, source_id, keys)))
                elif known and len(known) >= SPARSE_SHARE * len(present := _present_rows(conn, source_id)):
                    existing = {}
                    events = _fetching_stored(events, lambda keys: existing.update(
                        (row.key, row) for row in _stored_rows(conn, source_id, keys)))
                else:
                    existing = present = {row.key: row for row in _stored_rows(conn, source_id)}
                # 1. every row worked out and encoded before the transaction's first write: SQLite
                # takes its one write lock there and holds it to the commit, so a poller beside this
                # one (another source) renders and encodes while this one writes, not after it.
                # The events are taken one at a time (a stream maps its records as they are taken):
                # what is held per new event is its encoded row (_NewRows), not the Event.
                new_rows = _NewRows(self, conn)
                entries: dict[str, tuple[int, Any, Any]] = {}  # key -> (what, row slot / update / digest, mapped)
                mapped_as: dict[tuple[str | None, str, str | None], tuple[str | None, str, str | None]] = {}
                digest_of: dict[str, str | None] = {}
                for ev in events:
                    mapped_key = str(ev.key)
                    ev = _storable(ev)
                    key = str(ev.key)
                    if len(key) > EVENT_KEY_LENGTH:  # skipped, never the whole poll
                        changes.skipped.append((key, f"key longer than {EVENT_KEY_LENGTH} characters"))
                        continue
                    before = entries.get(key)
                    if before is not None:  # the last one wins, in the first one's place
                        changes.duplicates += 1
                        log.warning("source %s returned key %r more than once; the last one wins", source_id, key[:80])
                    record_digest = mapped_digests.get(mapped_key)
                    digest_of[key] = record_digest  # the row's record digest after this poll (the last one wins)
                    blob, digest, facts = _json_bytes(ev)
                    old = existing.get(key)
                    mapped = (ev.account, ev.kind, ev.severity)
                    mapped = mapped_as.setdefault(mapped, mapped)  # one tuple per distinct, not per event
                    if old is None:
                        row = _row_tuple(self.uid_host, ev, digest, now, sequence=0, created=now, blob=blob,
                                         fragment=fragment, record_digest=record_digest, facts=facts)
                        slot = new_rows.add(row, before[1] if before is not None and before[0] == _NEW else None)
                        entries[key] = (_NEW, slot, mapped)
                    elif old.content_hash != digest:
                        values = self._row_values(ev, digest, now, sequence=old.sequence + 1, blob=blob,
                                                  fragment=fragment, created_for_fragment=old.created,
                                                  record_digest=record_digest, facts=facts)
                        entries[key] = (_UPDATED, {"_id": old.id, **values}, mapped)
                    else:
                        entries[key] = (_UNCHANGED, record_digest, None)
                known = known or {}
                unmapped = {k: d for k, d in known.items() if k not in entries} if known.keys() & entries.keys() else known
                if light:
                    assert isinstance(stored, StoredRecords)
                    # each unmapped record as the source read it (C-level look-ups, no set of 100,000 built)
                    if not all(map(operator.eq, map(stored.get, unmapped.values()), unmapped.keys())):
                        raise StoreError(f"the stored events of {source_id} changed during its poll")
                    # the present rows this answer left out: none when the unmapped and the present
                    # mapped ones are all of them (counted), else worked out by key
                    mapped_present = sum(1 for k in entries if (row := existing.get(k)) is not None and not row.gone)
                    left_out: set[str] = set()
                    if len(stored) + len(stored.others) != len(unmapped) + mapped_present:
                        left_out = {*stored.values(), *stored.others} - entries.keys() - unmapped.keys()
                else:
                    for key, record_digest in unmapped.items():
                        row = present.get(key)
                        if row is None or row.gone or row.record_digest != record_digest:
                            raise StoreError(f"the stored events of {source_id} changed during its poll")
                changes.unchanged += len(unmapped)
                updates: list[dict[str, Any]] = []
                revived: list[int] = []
                redigested: list[dict[str, Any]] = []
                touched_as_mapped: set[tuple[str | None, str, str | None]] = set()  # Touched once per distinct
                for key, (what, value, mapped) in entries.items():
                    if what == _NEW:
                        changes.new += 1
                    elif what == _UPDATED:
                        old = existing[key]
                        updates.append(value)
                        changes.updated += 1
                        changes.touched.add(Touched(old.account_key, old.kind, old.severity_rank))
                    else:
                        old = existing[key]
                        if old.gone:
                            revived.append(old.id)
                        if old.record_digest != value:  # the same event from another record text
                            redigested.append({"_id": old.id, "record_digest": value})
                        changes.unchanged += 1
                        continue
                    touched_as_mapped.add(mapped)
                del mapped_as
                changes.touched.update(Touched(_account_key(account), kind, severity_rank(severity))
                                       for account, kind, severity in touched_as_mapped)
                encoded = new_rows.finish(updates)  # the last new rows and the updates: one dictionary decision
                # 2. the writes
                if light:  # first: the rows are still the ones the source read (compare-and-set)
                    st = source_state_table
                    taken = conn.execute(update(st).where(and_(st.c.source == source_id,
                                                               st.c.answer_digest == expect_answer_digest))
                                         .values(answer_digest=None))
                    if taken.rowcount != 1:
                        raise StoreError(f"the stored events of {source_id} changed during its poll")
                for chunk in chunks(revived, 500):
                    conn.execute(update(t).where(t.c.id.in_(chunk)).values(gone=False))
                if redigested:
                    self._bulk_update(conn, redigested)
                if complete:
                    if light:  # the rows this answer left out, read by key (a few, mostly none)
                        missing = [row for row in _stored_rows(conn, source_id, sorted(left_out)) if not row.gone] \
                            if left_out else []
                    else:
                        missing = [row for key, row in present.items()
                                   if key not in entries and key not in unmapped and not row.gone]
                    gone_updates: list[dict[str, Any]] = []
                    self._apply_absence(conn, missing, absence, now, previous_success, changes, gone_updates,
                                        fragment)
                    self._encode_rows(conn, gone_updates)
                    updates += gone_updates
                for batch in encoded:
                    _insert_rows(conn, batch)
                if updates:
                    self._bulk_update(conn, updates)
                if affected is not None and changes.touched:
                    self._mark_dirty(conn, affected(changes.touched))
                if complete:  # the present rows now: the events of this answer, mapped or not (the rest are gone)
                    after = StoredRecords(zip(unmapped.values(), unmapped.keys(), strict=True))
                    after.update((d, k) for k, d in digest_of.items() if d is not None)
                    after.others = tuple(k for k, d in digest_of.items() if d is None)
                    changes.present = after
                if record:
                    self._record_success(conn, source_id, now, cursor, result() if callable(result) else result,
                                         duration() if callable(duration) else duration, answer_digest)
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
            try:
                ev = Event.from_dict(json.loads(self.codec.text(row.data)))
            except (UndecodableBlob, ValueError, TypeError, KeyError) as exc:  # left as it is: no policy applies
                log.warning("stored event %d cannot be read (%s): marked gone, left as it is", row.id, exc)
                gone_only.append(row.id)
                continue
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
            blob, digest, facts = _json_bytes(new_ev)
            values = self._row_values(new_ev, digest, now, sequence=row.sequence + 1, blob=blob,
                                      fragment=fragment, created_for_fragment=row.created, facts=facts)
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
        mark = _mark(conn)
        for shape, batch in by_shape.items():  # one executemany on the DB-API cursor, as _insert_rows,
            # in the table's order (row id): scattered keys' rows are updated page after page
            sql = f"UPDATE {t.name} SET {', '.join(f'{c} = {mark}' for c in shape)} WHERE id = {mark}"
            _executemany(conn, sql, [(*(u[c] for c in shape), u["_id"]) for u in sorted(batch, key=_by_id)])

    def _encode_rows(self, conn: Any, rows: list[dict[str, Any]], *, apart: bool = False) -> None:
        """Rows about to be written, their ``data`` (JSON, as text or its UTF-8 bytes) and
        ``vevent`` (bytes) encoded as stored (icsfeed.store.codec), in place: the one step
        between the values and the write. ``apart``: before the transaction's first write,
        a dictionary trained for them is committed on its own (Codec.encode_values), so that
        encoding does not take SQLite's write lock for the poll."""
        if not rows:
            return
        groups = [source_group(r["source"]) for r in rows]
        data = self.codec.encode_values(conn, "data", groups, [_utf8(r["data"]) for r in rows], apart=apart)
        vevents = self.codec.encode_values(conn, "vevent", groups, [r.get("vevent") for r in rows], apart=apart)
        for r, d, v in zip(rows, data, vevents, strict=True):
            r["data"] = d
            if "vevent" in r:
                r["vevent"] = v

    def _row_values(self, ev: Event, digest: str, now: float, *, sequence: int,
                    created: float | None = None, blob: str | bytes | None = None,
                    fragment: Fragmenter | None = None, created_for_fragment: float | None = None,
                    record_digest: str | None = None, facts: str | None = None) -> dict[str, Any]:
        """A row's values by column (updates; :func:`_row_tuple`, which new rows take as they are)."""
        row = _row_tuple(self.uid_host, ev, digest, now, sequence=sequence, created=created, blob=blob,
                         fragment=fragment, created_for_fragment=created_for_fragment, record_digest=record_digest,
                         facts=facts)
        return dict(zip(ROW_COLUMNS if created is not None else ROW_COLUMNS[:-1], row, strict=True))

    def record_digests(self, source_id: str) -> StoredRecords:
        """Record digest -> key of a source's present events that were mapped from a record
        (what a poll need not map again when the origin sends the same record), and the keys
        of its other present events (``others``: pushed or closed, no record digest): every
        present row, which ``apply_poll(stored=...)`` then need not read again."""
        try:
            with self.engine.connect() as conn:  # the DB-API cursor, as _stored_rows: 100,000s of rows
                mark = _mark(conn)
                rows = _fetch_all(conn, f"SELECT record_digest, key FROM {events_table.name} WHERE source = "
                                        f"{mark} AND gone = {mark}", (source_id, False))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the stored records of {source_id}: {db_reason(exc)}") from None
        out = StoredRecords(rows)
        if None in out:
            del out[None]
            out.others = tuple(key for digest, key in rows if digest is None)
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
        conditions = [window_condition(query.start_ts, query.end_ts)]
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
            rows = conn.execute(stmt).all()  # one fetchall, not a fetch a row
        return [row for r in rows if (row := self._event_row(r)) is not None]

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
            rows = fetch_statement(conn, stmt)  # the driver's tuples: no SQLAlchemy row a VEVENT
        return [(row_id, self._fragment(row_id, blob)) for row_id, blob in rows]

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
        with self.engine.connect() as conn:  # the driver's tuples (is_open as it gives it: 0/1 on SQLite)
            rows = fetch_statement(conn, stmt)
        if keys is None:
            return rows
        return [(*r[:-1], self._fragment(r[0], r[-1])) for r in rows]

    def _fragment(self, row_id: int, blob: bytes | None) -> bytes | None:
        """A stored VEVENT decoded; None (logged, so it is rendered again) when it cannot be."""
        if blob is None:
            return None
        try:
            return self.codec.decode(blob)
        except UndecodableBlob as exc:
            log.warning("stored VEVENT of event %d cannot be read (%s): rendered again", row_id, exc)
            return None

    def changed_parts_by_id(self, ids: Sequence[int], keys: Sequence[str]) -> dict[int, tuple[Any, ...]]:
        """id -> (kind, severity_rank, is_open, fragment stored under any of ``keys`` or None)."""
        out: dict[int, tuple[Any, ...]] = {}
        with self.engine.connect() as conn:  # the DB-API cursor: a statement's compilation cost more than its rows
            mark = _mark(conn)
            current = f"vevent_key IN ({', '.join([mark] * len(keys))})"
            for chunk in chunks(list(ids), 500):
                sql = (f"SELECT id, kind, severity_rank, is_open, CASE WHEN {current} THEN vevent ELSE NULL END "
                       f"FROM {events_table.name} WHERE id IN ({', '.join([mark] * len(chunk))})")
                out.update((r[0], (*r[1:-1], self._fragment(r[0], r[-1])))
                           for r in _fetch_all(conn, sql, (*keys, *chunk)))
        return out

    def events_by_id(self, ids: Sequence[int]) -> dict[int, EventRow]:
        """Stored events by row id (the ones a render has no fragment for)."""
        t = events_table
        out: dict[int, EventRow] = {}
        # one statement, the ids bound as a list (not a literal each: SQLAlchemy coerces each one)
        stmt = select(*_EVENT_ROW_COLUMNS).where(t.c.id.in_(bindparam("ids", expanding=True)))
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                # the driver's rows (int, str, bytes, float: what the columns are), no SQLAlchemy row
                # processing: a cold render reads every event of the feed here
                for r in conn.execute(stmt, {"ids": chunk}).cursor.fetchall():
                    row = self._event_row(r)
                    if row is not None:
                        out[r[0]] = row
        return out

    def _event_row(self, r: tuple[Any, ...]) -> EventRow | None:
        """A row read by _EVENT_ROW_COLUMNS, decoded; None (logged) when it cannot be read."""
        row_id, uid, data, sequence, created, last_modified, vevent, vevent_key = r
        try:
            event = stored_event(data, self.codec)
        except (UndecodableBlob, ValueError, TypeError, KeyError) as exc:
            log.warning("stored event %d (%s) cannot be read, left out: %s", row_id, uid, exc)
            return None
        if vevent is not None:
            vevent = self._fragment(row_id, vevent)
            if vevent is None:
                vevent_key = None
        return EventRow(id=row_id, uid=uid, event=event, sequence=sequence,
                        created=created, last_modified=last_modified, vevent=vevent, vevent_key=vevent_key)

    def save_fragments(self, fragments: Iterable[tuple[int, bytes, str]], *,
                       sources: Mapping[int, str] | None = None) -> None:
        """Keep rendered VEVENTs (id, bytes, render key) so the next render only joins them.

        ``sources``: each row's source (its Event's), when the caller has read the rows: else
        it is read here (the compression dictionaries are per source). One executemany on the
        DB-API cursor (as :func:`_insert_rows`): a cold render stores a fragment for every event
        of the feed, and SQLAlchemy's per-row parameter processing cost it more than the
        database did. A row deleted meanwhile is updated by no statement."""
        batch = list(fragments)
        if not batch:
            return
        t = events_table
        try:
            with self.engine.begin() as conn:
                if sources is None:
                    sources = {}
                    for chunk in chunks([b[0] for b in batch], 500):
                        sources.update(conn.execute(select(t.c.id, t.c.source).where(t.c.id.in_(chunk)))
                                       .cursor.fetchall())
                batch = [b for b in batch if b[0] in sources]  # a row deleted meanwhile: nothing to keep
                encoded = self.codec.encode_values(conn, "vevent", [source_group(sources[b[0]]) for b in batch],
                                                   [b[1] for b in batch])
                if batch:
                    _update_fragments(conn, [(blob, key, i) for (i, _, key), blob in zip(batch, encoded, strict=True)])
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store rendered events: {db_reason(exc)}") from None


def _update_fragments(conn: Any, rows: list[tuple[bytes | None, str, int]]) -> None:
    """Set (vevent, vevent_key) of rows by id, one executemany on the DB-API cursor of
    ``conn``'s transaction (the values are bytes, str and int, stored as the Core update did)."""
    mark = _mark(conn)
    sql = f"UPDATE {events_table.name} SET vevent = {mark}, vevent_key = {mark} WHERE id = {mark}"
    _executemany(conn, sql, rows)


class StoredRecords(dict[str, str]):
    """:meth:`EventsMixin.record_digests`: record digest -> key of a source's present rows
    mapped from a record, and ``others``, the keys of its present rows without one."""

    others: tuple[str, ...] = ()


class _StoredRow(NamedTuple):
    """What a poll compares of a stored event (``_stored_rows``)."""

    key: str
    id: int
    content_hash: str
    sequence: int
    gone: bool
    account_key: str | None
    kind: str
    severity_rank: int | None
    created: float
    record_digest: str | None


_STORED_ROW_SQL = (f"SELECT {', '.join(_StoredRow._fields)} FROM {events_table.name} WHERE source = "
                   "{mark}")


class _PresentRow(NamedTuple):
    """What a poll that maps few of its events needs of every stored row: whether a record
    named unchanged is the one stored, and which rows the poll left out (``_present_rows``)."""

    key: str
    id: int
    gone: bool
    record_digest: str | None


_PRESENT_ROW_SQL = f"SELECT {', '.join(_PresentRow._fields)} FROM {events_table.name} WHERE source = {{mark}}"
#: a poll naming at least this share of its stored rows unchanged (``known``) reads the full
#: stored columns of the events it maps only (``apply_poll``)
SPARSE_SHARE = 0.5
#: events taken, and their stored rows read, at a time by such a poll
SPARSE_BATCH = 500


#: new rows a poll writes at a time (their JSON and fragments are not all held at once)
INSERT_BATCH = 2000


def _row_tuple(uid_host: str, ev: Event, digest: str, now: float, *, sequence: int,
             created: float | None = None, blob: str | bytes | None = None,
             fragment: Fragmenter | None = None, created_for_fragment: float | None = None,
             record_digest: str | None = None, facts: str | None = None) -> tuple[Any, ...]:
    """A row's values in the order of :data:`ROW_COLUMNS` (``created`` last, left out when
    None): a tuple, as the insert's executemany takes it, without a dict per row. ``blob``,
    ``digest`` and ``facts`` are :func:`_json_bytes` of ``ev`` (worked out here when no blob
    is given)."""
    if blob is None or facts is None:
        made, _, facts = _json_bytes(ev)
        blob = made if blob is None else blob
    start_ts = to_ts(ev.start)
    key = str(ev.key)
    uid = event_uid(ev.source, key, uid_host)
    vevent = vevent_key = None
    if fragment is not None:
        made = fragment(EventRow(id=0, uid=uid, event=ev, sequence=sequence,
                                 created=created if created is not None else (created_for_fragment or now),
                                 last_modified=now))
        if made is not None:
            vevent, vevent_key = made
    row = (ev.source, key, uid, ev.kind, _account_key(ev.account), severity_rank(ev.severity), start_ts,
           # an ongoing event (a firing alert) reaches its last sighting: feed windows include it
           to_ts(ev.end) if ev.end is not None else max(start_ts, to_ts(ev.seen or ev.start)),
           bool(ev.rrule), blob, digest, sequence, now,
           False, vevent, vevent_key, is_open(ev), record_digest, facts,
           row_traits(ev.status, not isinstance(ev.start, datetime), ev.end is None))
    return row if created is None else (*row, created)


#: the columns of a row as :func:`_row_tuple` gives them (``created`` last)
ROW_COLUMNS = ("source", "key", "uid", "kind", "account_key", "severity_rank", "start_ts", "end_ts", "recurring",
               "data", "content_hash", "sequence", "last_modified", "gone", "vevent", "vevent_key", "is_open",
               "record_digest", "facts", "traits", "created")
_DATA, _VEVENT = ROW_COLUMNS.index("data"), ROW_COLUMNS.index("vevent")
#: what a poll found of one key (apply_poll's entries)
_NEW, _UPDATED, _UNCHANGED = 0, 1, 2


class _Batch(NamedTuple):
    """New rows encoded and ready to insert: their columns, and their values in that order,
    as one ``marshal`` payload (a tuple per row held as Python objects cost ≈ 900 bytes a
    row, the payload ≈ 400: a first import holds every row of its source until it writes)."""

    columns: tuple[str, ...]
    payload: bytes

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return marshal.loads(self.payload)  # type: ignore[no-any-return]


class _NewRows:
    """A poll's new rows as they are worked out: encoded INSERT_BATCH at a time (each batch's
    dictionary decision as before), then held as :class:`_Batch` payloads until the writes."""

    def __init__(self, store: EventsMixin, conn: Any) -> None:
        self.store, self.conn = store, conn
        self.pending: list[tuple[Any, ...]] = []
        self.batches: list[_Batch] = []
        self.count = 0

    def add(self, row: tuple[Any, ...], replacing: int | None = None) -> int:
        """Take a row of ``_row_tuple`` (with ``created``); ``replacing``: the slot of an earlier
        row of the same key in this poll (the last one wins, in the first one's place).
        Returns the row's slot."""
        if replacing is not None:
            self._replace(replacing, row)
            return replacing
        self.pending.append(row)
        self.count += 1
        if len(self.pending) >= INSERT_BATCH:  # encoded as they come: only the compressed rows are held
            self.batches.append(_as_batch(self._encoded(self.pending)))
            self.pending = []
        return self.count - 1

    def _replace(self, slot: int, row: tuple[Any, ...]) -> None:
        done = INSERT_BATCH * len(self.batches)
        if slot >= done:  # not encoded yet: the batch is the one a list of the last events makes
            self.pending[slot - done] = row
            return
        # already encoded (a key sent twice, batches apart): this row alone, with its group's dictionary
        number, position = divmod(slot, INSERT_BATCH)
        batch = self.batches[number]
        rows = batch.rows
        rows[position] = self._encoded([row])[0]
        self.batches[number] = _Batch(batch.columns, marshal.dumps(rows))

    def _encoded(self, rows: list[tuple[Any, ...]],
                 updates: list[dict[str, Any]] | None = None) -> list[tuple[Any, ...]]:
        """Rows with their ``data`` and ``vevent`` encoded, and ``updates`` (dicts) in place,
        in one ``encode_values`` per column (one dictionary decision for both)."""
        updates = updates or []
        groups = [source_group(r[0]) for r in rows] + [source_group(u["source"]) for u in updates]
        codec, conn = self.store.codec, self.conn
        data = codec.encode_values(conn, "data", groups, [_utf8(r[_DATA]) for r in rows] +
                                   [_utf8(u["data"]) for u in updates], apart=True)
        vevents = codec.encode_values(conn, "vevent", groups, [r[_VEVENT] for r in rows] +
                                      [u.get("vevent") for u in updates], apart=True)
        n = len(rows)
        for u, d, v in zip(updates, data[n:], vevents[n:], strict=True):
            u["data"] = d
            if "vevent" in u:
                u["vevent"] = v
        return [(*r[:_DATA], d, *r[_DATA + 1:_VEVENT], v, *r[_VEVENT + 1:])
                for r, d, v in zip(rows, data[:n], vevents[:n], strict=True)]

    def finish(self, updates: list[dict[str, Any]]) -> list[_Batch]:
        """Encode the last new rows together with ``updates`` (in place); every batch to insert."""
        if self.pending or updates:
            rows = self._encoded(self.pending, updates)
            if rows:
                self.batches.append(_as_batch(rows))
        self.pending = []
        return self.batches


def _as_batch(rows: list[tuple[Any, ...]]) -> _Batch:
    """Encoded new rows (``_row_tuple`` with ``created``) as a batch to insert."""
    return _Batch(ROW_COLUMNS, marshal.dumps(rows))


def _insert_rows(conn: Any, batch: _Batch) -> None:
    """Insert a batch with one executemany on the DB-API cursor of ``conn``'s transaction:
    SQLAlchemy's per-row parameter processing cost a first import more than the database
    did. The values are plain str, float, int, bool, bytes and None, which sqlite3 and
    psycopg store as the Core insert did."""
    marks = ", ".join([_mark(conn)] * len(batch.columns))
    sql = f"INSERT INTO {events_table.name} ({', '.join(batch.columns)}) VALUES ({marks})"
    rows = batch.rows
    _executemany(conn, sql, rows)


def _executemany(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``sql`` for each row, one executemany on the DB-API cursor of ``conn``'s transaction
    (no SQLAlchemy per-row processing); a driver error is raised as SQLAlchemy's."""
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(sql, rows)
    except conn.dialect.loaded_dbapi.Error as exc:  # raised as SQLAlchemy's, like any statement's
        raise DBAPIError.instance(sql, rows[:1], exc, conn.dialect.loaded_dbapi.Error) from None
    finally:
        cursor.close()


def _mark(conn: Any) -> str:
    """The DB-API parameter marker of ``conn``'s driver (sqlite3: ``?``, psycopg: ``%s``)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _by_id(values: dict[str, Any]) -> int:
    return values["_id"]  # type: ignore[no-any-return]


def _fetch_all(conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of a query as the DB-API cursor of ``conn``'s transaction gives them (plain
    tuples: a poll reads 100,000s), its errors raised as SQLAlchemy's like any query's."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error) from None
    finally:
        cursor.close()


def fetch_statement(conn: Any, stmt: Any, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """A SELECT's rows as the DB-API cursor gives them (plain tuples, no SQLAlchemy row or type
    processing: for the 10,000s of rows of one feed); only for columns whose driver values are
    what the code wants (numbers, text, 0/1 or bools). ``params``: the values of a statement
    made once with bound parameters (no statement built and keyed per call)."""
    return list(conn.execute(stmt, params or {}).cursor.fetchall())


def _stored_rows(conn: Any, source_id: str, keys: Sequence[str] | None = None) -> list[_StoredRow]:
    """Every stored event of a source (or those of ``keys``), read through the DB-API cursor
    of ``conn``'s transaction: a poll reads all of them, and SQLAlchemy's row objects cost
    more than the query (``gone`` is 0/1 on SQLite, a bool on PostgreSQL: both test as truth)."""
    mark = _mark(conn)
    if keys is None:
        return [_StoredRow._make(r) for r in _fetch_all(conn, _STORED_ROW_SQL.format(mark=mark), (source_id,))]
    out = []
    for chunk in chunks(sorted(set(keys)), SPARSE_BATCH):
        sql = _STORED_ROW_SQL.format(mark=mark) + f" AND key IN ({', '.join([mark] * len(chunk))})"
        out += [_StoredRow._make(r) for r in _fetch_all(conn, sql, (source_id, *chunk))]
    return out


def _present_rows(conn: Any, source_id: str) -> dict[str, _PresentRow]:
    """Key -> (key, id, gone, record digest) of every stored event of a source (a tenth of
    what :func:`_stored_rows` reads of each)."""
    return {r[0]: _PresentRow._make(r) for r in _fetch_all(conn, _PRESENT_ROW_SQL.format(mark=_mark(conn)), (source_id,))}


def _fetching_stored(events: Iterable[Event], fetch: Callable[[list[str]], None]) -> Iterator[Event]:
    """``events`` as they come, SPARSE_BATCH at a time, after ``fetch`` of their stored keys
    (as ``apply_poll`` stores them, :func:`_storable`)."""
    it = iter(events)
    while batch := list(islice(it, SPARSE_BATCH)):
        fetch([str(_storable(ev).key) for ev in batch])
        yield from batch


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


#: an event's stored JSON: json.dumps's output with these settings, without building an encoder per call
_JSON = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False).encode
_JSON_ASCII = json.JSONEncoder(sort_keys=True, default=str).encode


def _encoded(ev: Event) -> tuple[str, str]:
    """The stored JSON of an event as text, and its content hash (see :func:`_json_bytes`)."""
    raw, digest, _ = _json_bytes(ev)
    return raw.decode("utf-8"), digest


def _json_bytes(ev: Event) -> tuple[bytes, str, str]:
    """The stored JSON of an event (UTF-8), its content hash (the same as
    ``Event.content_hash``), from one serialisation, as the codec takes it (no second
    encoding), and its facts (icsfeed/store/facts.py) from the same dict. JSON with lone
    surrogates is kept ASCII-escaped: SQLite cannot store them raw, and json.loads gives the
    same text back."""
    as_dict = ev.to_dict()
    try:
        raw = _JSON(as_dict).encode("utf-8")
    except UnicodeEncodeError:
        text = _JSON(as_dict)
        return (_JSON_ASCII(as_dict).encode("ascii"), hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                row_facts(as_dict))
    return raw, hashlib.sha256(raw).hexdigest(), row_facts(as_dict)


def _utf8(data: str | bytes) -> bytes:
    """A row's JSON as the bytes the codec stores (already bytes from :func:`_encoded`)."""
    return data if type(data) is bytes else data.encode("utf-8")  # type: ignore[return-value]


#: the columns _event_row reads, in its order (rows are read by position: thousands per render)
_EVENT_ROW_COLUMNS = (events_table.c.id, events_table.c.uid, events_table.c.data, events_table.c.sequence,
                      events_table.c.created, events_table.c.last_modified, events_table.c.vevent,
                      events_table.c.vevent_key)


def stored_event(data: str | bytes, codec: Codec | None = None) -> Event:
    """The Event a row's ``data`` holds (it passed the Event checks when it was stored): its
    JSON, or the stored blob of it when ``codec`` is given. Raises UndecodableBlob or
    ValueError for a row that cannot be read."""
    text = codec.text(data) if codec is not None else data
    return Event.from_checked_dict(json.loads(text))


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
