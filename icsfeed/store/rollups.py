"""What the size budget keeps: rolled-up days, the parts of each rendered feed, open flags.

Render (icsfeed.budget) reads a feed's events by their columns only (no event is decoded
unless a rolled-up day changed), keeps each rolled-up day's content hash, SEQUENCE and bytes,
and saves, next to each rendered body, the list of its VEVENTs with what the filters read of
them, which the web layer uses to serve filtered variants without rendering.
"""

from __future__ import annotations

import array
import base64
import json
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard
from sqlalchemy import and_, bindparam, case, delete, null, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, chunks, db_reason, insert_missing, upsert_row
from icsfeed.store.events import FeedQuery, fetch_statement
from icsfeed.store.schema import events_table, feed_parts_table, feeds_table, rollups_table

log = logging.getLogger("icsfeed.store")

_e, _r, _p = events_table, rollups_table, feed_parts_table
#: the statements a re-render runs for every feed, made once (building one cost more than running it)
_ROLLUPS_OF = select(_r.c.group_key, _r.c.day, _r.c.content_hash, _r.c.sequence, _r.c.created, _r.c.last_modified,
                     _r.c.vevent).where(_r.c.feed_id == bindparam("feed_id"))
_PARTS_OF = select(_p.c.etag, _p.c.parts, _p.c.report).where(
    and_(_p.c.feed_id == bindparam("feed_id"), _p.c.etag == bindparam("etag")))
_PART_ATTRS_BY_ID = select(
    _e.c.id, _e.c.uid, _e.c.kind, _e.c.account_key, _e.c.severity_rank, _e.c.start_ts, _e.c.end_ts, _e.c.recurring,
    _e.c.sequence, _e.c.is_open,
    case((_e.c.vevent_key.in_(bindparam("keys", expanding=True)), _e.c.vevent), else_=null()),
).where(_e.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class PartAttrs:
    """What the budget and the filters need of one stored event, read from its columns."""

    id: int
    uid: str
    kind: str
    account_key: str | None
    severity_rank: int | None
    start_ts: float
    end_ts: float
    recurring: bool
    sequence: int
    is_open: bool | None


@dataclass(frozen=True)
class StoredRollup:
    group_key: str
    day: str
    content_hash: str
    sequence: int
    created: float
    last_modified: float
    vevent: bytes


@dataclass(frozen=True)
class FeedParts:
    """The VEVENTs of the stored body with this ETag (JSON as render saved it) and its budget report."""

    etag: str
    parts: dict[str, Any]
    report: dict[str, Any]


#: the marker of a list of ints stored packed in a feed's parts (see :func:`pack_parts`)
_PACKED = "q64z:"
#: lists shorter than this stay JSON lists
_PACK_FROM = 64
_LITTLE = sys.byteorder == "little"


#: a list of a feed's parts and its packed text (what :func:`pack_parts` made of it, or read)
Packed = dict[str, tuple[list[Any], str]]


def pack_parts(parts: dict[str, Any], previous: Packed | None = None, packed: Packed | None = None) -> str:
    """A feed's parts as stored: JSON, each long list of ints (a feed's parts are a few lists
    with one int per VEVENT) as ``q64z:`` + base64 of its zstd-compressed little-endian int64
    array. A 10,000-event feed's parts take ~3 ms instead of ~20 ms to write and read back as
    JSON lists of numbers, and a sixth of the bytes.

    ``previous``: lists packed before (the feed's last saved parts): a list equal to one of
    them keeps its text (a 1% re-render changes the lengths and versions; the ids, kinds,
    severities and open flags stay: 4 of 7 lists not packed again). ``packed``: filled with
    each list packed and its text."""
    out: dict[str, Any] = {}
    for name, value in parts.items():
        if isinstance(value, list) and len(value) >= _PACK_FROM and name != "kinds":
            before = previous.get(name) if previous is not None else None
            if before is not None and before[0] == value:
                out[name] = before[1]
                if packed is not None:
                    packed[name] = (value, before[1])
                continue
            try:
                array_ = array.array("q", value)
            except (TypeError, OverflowError):  # not all ints: kept as JSON
                out[name] = value
                continue
            if not _LITTLE:
                array_.byteswap()
            out[name] = _PACKED + base64.b64encode(_PARTS_C.compress(array_.tobytes())).decode("ascii")
            if packed is not None:  # a copy: the caller's list may yet change in place
                packed[name] = (list(value), out[name])
        else:
            out[name] = value
    return json.dumps(out, separators=(",", ":"))


def unpack_parts(text: str, packed: Packed | None = None) -> dict[str, Any]:
    """:func:`pack_parts` undone (parts stored as plain JSON, before it, read as they are);
    ValueError when a packed list cannot be read. ``packed``: filled as pack_parts fills it."""
    parts = json.loads(text)
    for name, value in parts.items():
        if isinstance(value, str) and value.startswith(_PACKED):
            try:
                raw = _PARTS_D.decompress(base64.b64decode(value[len(_PACKED):], validate=True))
            except (zstandard.ZstdError, ValueError) as exc:
                raise ValueError(f"packed list {name!r} cannot be read: {exc}") from None
            if len(raw) % 8:
                raise ValueError(f"packed list {name!r} is not a list of int64")
            values = array.array("q", raw)
            if not _LITTLE:
                values.byteswap()
            parts[name] = values.tolist()
            if packed is not None:
                packed[name] = (values.tolist(), value)
    return parts


#: feed parts held by a store for the feeds it saved or read last (at most this many VEVENTs
#: in all, counted twice: the parts and a copy of the lists as packed; ≈ 100 bytes each): a re-render in the same process reads its feed's parts from here,
#: and packs again only the lists that changed
PARTS_CACHE_EVENTS = 200_000


class _PartsCache:
    """feed id -> (ETag, parts, report, the lists packed): the parts of the body with that ETag,
    as saved or read (the parts of one body are what they are: whichever process saved them,
    they describe its bytes). Least recently used dropped first."""

    def __init__(self, limit: int = PARTS_CACHE_EVENTS) -> None:
        self._entries: OrderedDict[str, tuple[str, FeedParts, Packed, int]] = OrderedDict()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, feed_id: str, etag: str | None = None) -> tuple[FeedParts, Packed] | None:
        with self._lock:
            entry = self._entries.get(feed_id)
            if entry is None or (etag is not None and entry[0] != etag):
                return None
            self._entries.move_to_end(feed_id)
            return entry[1], entry[2]

    def put(self, feed_id: str, parts: FeedParts, packed: Packed) -> None:
        size = 2 * max((len(v) for v in parts.parts.values() if isinstance(v, list)), default=0) + 1
        with self._lock:
            old = self._entries.pop(feed_id, None)
            if old is not None:
                self._size -= old[3]
            if size > self._limit:
                return
            self._entries[feed_id] = (parts.etag, parts, packed, size)
            self._size += size
            while self._size > self._limit:
                _, dropped = self._entries.popitem(last=False)
                self._size -= dropped[3]

    def drop(self, feed_id: str) -> None:
        with self._lock:
            old = self._entries.pop(feed_id, None)
            if old is not None:
                self._size -= old[3]


_PARTS_C = zstandard.ZstdCompressor(level=1, write_content_size=True)
_PARTS_D = zstandard.ZstdDecompressor()


class RollupsMixin:
    """Part of :class:`~icsfeed.store.Store`."""

    engine: Engine
    _feed_conditions: Any

    def query_part_attrs(self, query: FeedQuery) -> dict[int, PartAttrs]:
        """The feed's events by row id, columns only (the same conditions as query_fragments)."""
        t = events_table
        conditions = self._feed_conditions(query)
        if conditions is None:
            return {}
        stmt = select(t.c.id, t.c.uid, t.c.kind, t.c.account_key, t.c.severity_rank, t.c.start_ts, t.c.end_ts,
                      t.c.recurring, t.c.sequence, t.c.is_open).where(and_(*conditions))
        with self.engine.connect() as conn:  # the DB-API cursor: every event of a feed over its budget
            rows = fetch_statement(conn, stmt)
        return {r[0]: PartAttrs(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8],
                                None if r[9] is None else bool(r[9]))
                for r in rows}

    def part_attrs_by_id(self, ids: Sequence[int], keys: Sequence[str]) -> dict[int, tuple[PartAttrs, bytes | None]]:
        """:meth:`query_part_attrs` of some rows by id, each with its fragment stored under any
        of ``keys`` (or None): what a re-render of a feed over its budget reads of its changed events."""
        out: dict[int, tuple[PartAttrs, bytes | None]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                for r in fetch_statement(conn, _PART_ATTRS_BY_ID, {"keys": list(keys), "ids": chunk}):
                    attrs = PartAttrs(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8],
                                      None if r[9] is None else bool(r[9]))
                    out[r[0]] = (attrs, self._fragment(r[0], r[10]))  # type: ignore[attr-defined]
        return out

    def uids_by_id(self, ids: Sequence[int]) -> dict[int, str]:
        """Row id -> UID (the rollup members' UIDs name a rollup's content)."""
        t = events_table
        out: dict[int, str] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                out.update(fetch_statement(conn, select(t.c.id, t.c.uid).where(t.c.id.in_(chunk))))
        return out

    def save_open_flags(self, flags: Iterable[tuple[int, bool]]) -> None:
        """Fill ``is_open`` of rows written before it existed (render works it out once)."""
        batch = [{"_id": i, "is_open": flag} for i, flag in flags]
        if not batch:
            return
        t = events_table
        try:
            with self.engine.begin() as conn:
                conn.execute(update(t).where(t.c.id == bindparam("_id")).values(is_open=bindparam("is_open")), batch)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store open flags: {db_reason(exc)}") from None

    def rollups_of(self, feed_id: str) -> dict[str, StoredRollup]:
        with self.engine.connect() as conn:
            rows = conn.execute(_ROLLUPS_OF, {"feed_id": feed_id}).all()
        return {row[0]: StoredRollup(*row) for row in rows}

    def save_rollups(self, feed_id: str, rollups: Sequence[StoredRollup], *, prune_before: str | None = None) -> None:
        """Keep new and changed rollups; forget those of days before ``prune_before`` (YYYY-MM-DD)."""
        r = rollups_table
        try:
            with self.engine.begin() as conn:
                for chunk in chunks(list(rollups), 200):
                    values = [{"feed_id": feed_id, "group_key": x.group_key, "day": x.day, "content_hash": x.content_hash,
                               "sequence": x.sequence, "created": x.created, "last_modified": x.last_modified,
                               "vevent": x.vevent} for x in chunk]
                    insert_missing(conn, r, values)
                    conn.execute(update(r).where(and_(r.c.feed_id == bindparam("_feed"), r.c.group_key == bindparam("_key")))
                                 .values(day=bindparam("day"), content_hash=bindparam("content_hash"),
                                         sequence=bindparam("sequence"), last_modified=bindparam("last_modified"),
                                         vevent=bindparam("vevent")),
                                 [{"_feed": feed_id, "_key": v["group_key"], **{k: v[k] for k in (
                                     "day", "content_hash", "sequence", "last_modified", "vevent")}} for v in values])
                if prune_before is not None:
                    conn.execute(delete(r).where(and_(r.c.feed_id == feed_id, r.c.day < prune_before)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store rollups of {feed_id}: {db_reason(exc)}") from None

    @property
    def _parts_cache(self) -> _PartsCache:
        cache: _PartsCache | None = self.__dict__.get("_parts_held")
        if cache is None:
            cache = self.__dict__.setdefault("_parts_held", _PartsCache())
        return cache

    def forget_held_parts(self) -> None:
        """Drop the feed parts this store holds (what another process, which holds none, reads)."""
        self.__dict__.pop("_parts_held", None)

    def save_feed_parts(self, feed_id: str, etag: str, parts: dict[str, Any], report: dict[str, Any]) -> bool:
        """Keep the parts of the body with ``etag``, if that is the feed's stored body (a render
        whose save was refused, compare-and-set, describes bytes nobody is served). The parts
        are held by this store from then on (:class:`_PartsCache`): the caller leaves them as they are."""
        f = feeds_table
        try:
            with self.engine.begin() as conn:
                stored = conn.execute(select(f.c.etag).where(f.c.feed_id == feed_id)).scalar_one_or_none()
                if stored != etag:
                    return False
                held = self._write_parts(conn, feed_id, etag, parts, report)
        except SQLAlchemyError as exc:
            self._parts_cache.drop(feed_id)
            raise StoreError(f"cannot store the parts of {feed_id}: {db_reason(exc)}") from None
        self._hold_parts(feed_id, held)
        return True

    def _write_parts(self, conn: Any, feed_id: str, etag: str, parts: dict[str, Any],
                     report: dict[str, Any]) -> tuple[FeedParts, Packed]:
        """Write the parts of the body with ``etag`` in ``conn``'s transaction (the caller has
        made sure that is the feed's body); what to hold once it commits (:meth:`_hold_parts`)."""
        held = self._parts_cache.get(feed_id)
        packed: Packed = {}
        row = {"feed_id": feed_id, "etag": etag, "parts": pack_parts(parts, held[1] if held else None, packed),
               "report": json.dumps(report, separators=(",", ":"))}
        upsert_row(conn, feed_parts_table, row, ("etag", "parts", "report"))
        return FeedParts(etag, parts, report), packed

    def _hold_parts(self, feed_id: str, held: tuple[FeedParts, Packed]) -> None:
        self._parts_cache.put(feed_id, *held)

    def feed_parts(self, feed_id: str, etag: str) -> FeedParts | None:
        """The parts of the body with ``etag``, or None (rendered before parts were kept, or just
        re-rendered): the ones this store saved or read last for the feed, if they are that
        body's, else read (the caller leaves them as they are: they are held)."""
        held = self._parts_cache.get(feed_id, etag)
        if held is not None:
            return held[0]
        with self.engine.connect() as conn:
            row = conn.execute(_PARTS_OF, {"feed_id": feed_id, "etag": etag}).first()
        if row is None:
            return None
        packed: Packed = {}
        try:
            found = FeedParts(row.etag, unpack_parts(row.parts, packed), json.loads(row.report))
        except ValueError as exc:  # the body is re-rendered from its events, its variants wait for that
            log.warning("the stored parts of %s cannot be read (%s): left unused", feed_id, exc)
            return None
        self._parts_cache.put(feed_id, found, packed)
        return found

    def feed_reports(self) -> dict[str, dict[str, Any]]:
        """feed id -> budget report of its stored body (status and subscribe pages)."""
        f, p = feeds_table, feed_parts_table
        stmt = select(p.c.feed_id, p.c.report).join(f, and_(f.c.feed_id == p.c.feed_id, f.c.etag == p.c.etag))
        with self.engine.connect() as conn:
            return {r.feed_id: json.loads(r.report) for r in conn.execute(stmt)}
