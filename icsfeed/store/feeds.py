"""Rendered feeds: their bytes and ETag, and the dirty marks that say which to re-render."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

from sqlalchemy import bindparam, case, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.codec import Codec, UndecodableBlob, unpack_body
from icsfeed.store.database import StoreError, bump_or_insert, db_reason, insert_missing
from icsfeed.store.events import FeedQuery, _executemany, _fetch_all, _mark
from icsfeed.store.schema import events_table, feed_segments_table, feeds_table
from icsfeed.store.segments import Segments, decode_list, encode_list, split

log = logging.getLogger("icsfeed.store")


class FeedChanges(NamedTuple):
    """:meth:`FeedsMixin.feed_changes`: a feed's totals and its recently modified rows."""

    count: int
    sequence_sum: int
    id_sum: int
    #: (id, sequence, last modified in whole µs, start_ts), in no particular order
    rows: list[tuple[int, int, int, float]]


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


def _feed_statement(with_body: bool, gz: bool) -> Any:
    f = feeds_table
    cols = [f.c.feed_id, f.c.etag, f.c.last_modified, f.c.rendered_at, f.c.event_count,
            f.c.render_seconds, f.c.render_key, f.c.window_day]
    if with_body and gz:
        cols.append(f.c.body_gz)
    elif with_body:  # the body whole (before 0015), or the list of its segments (read next)
        cols += [f.c.body, f.c.body_head, f.c.body_tail, f.c.segments]
    return select(*cols).where(f.c.feed_id == bindparam("feed_id"))


#: the source group (icsfeed.store.codec) of feed segments' dictionaries: one for all feeds
SEGMENT_GROUP = "feeds"


class StoredSegments:
    """A feed's stored body as its segments (icsfeed.store.segments), each read and
    decompressed only when asked for: what a re-render starts from (it reads the segments it
    changes). ``load``: the stored blobs of some digests (those it finds)."""

    def __init__(self, etag: str, segments: Segments, blobs: dict[str, bytes], decode: Callable[[bytes], bytes],
                 load: Callable[[list[str]], dict[str, bytes]] | None = None) -> None:
        self.etag = etag
        self.segments = segments
        self._blobs = blobs
        self._decode = decode
        self._load = load
        self._raw: dict[int, bytes] = {}

    def preload(self, positions: Iterable[int]) -> None:
        """Read the blobs of these segments in one go (before :meth:`raw` asks for each)."""
        wanted = sorted({self.segments.digests[j] for j in positions} - self._blobs.keys())
        if wanted and self._load is not None:
            self._blobs.update(self._load(wanted))

    def preload_blobs(self, blobs: dict[str, bytes]) -> None:
        """Blobs read already (get_feed's)."""
        self._blobs.update(blobs)

    def raw(self, j: int) -> bytes:
        """The bytes of segment ``j``. Raises UndecodableBlob."""
        got = self._raw.get(j)
        if got is None:
            digest = self.segments.digests[j]
            if digest not in self._blobs:
                self.preload([j])
            blob = self._blobs.get(digest)
            if blob is None:
                raise UndecodableBlob(f"segment {digest} is missing")
            got = self._raw[j] = self._decode(blob)
            if len(got) != self.segments.lengths[j]:
                raise UndecodableBlob(f"segment {digest} is {len(got)} bytes, listed as {self.segments.lengths[j]}")
        return got

    def by_digest(self, digest: str) -> bytes:
        """The bytes of the stored segment ``digest``. Raises UndecodableBlob."""
        if digest not in self._blobs:
            self.preload([self.segments.digests.index(digest)])
        blob = self._blobs.get(digest)
        if blob is None:
            raise UndecodableBlob(f"segment {digest} is missing")
        return self._decode(blob)

    def body(self) -> bytes:
        """The whole body. Raises UndecodableBlob."""
        segs = self.segments
        self.preload(range(len(segs.digests)))
        return b"".join([segs.head, *map(self.raw, range(len(segs.digests))), segs.tail])


def _segments_of(rows: list[Any], decode: Callable[[bytes], bytes],
                 load: Callable[[list[str]], dict[str, bytes]] | None = None) -> StoredSegments | None:
    """The stored segments of get_feed's rows (None: a body stored whole), or of the feed row
    alone with ``load`` to read the blobs. Raises UndecodableBlob."""
    first = rows[0]
    if first.segments is None:
        return None
    try:
        digests, lengths, check = decode_list(first.segments)
    except ValueError as exc:
        raise UndecodableBlob(str(exc)) from None
    blobs: dict[str, bytes] = {}
    segments = Segments(head=bytes(first.body_head or b""), tail=bytes(first.body_tail or b""),
                        digests=digests, lengths=lengths, based_on=(first.segments, digests), check=check)
    return StoredSegments(first.etag, segments, blobs, decode, load)


_SEGMENTED_ROW = select(feeds_table.c.etag, feeds_table.c.body_head, feeds_table.c.body_tail,
                        feeds_table.c.segments).where(feeds_table.c.feed_id == bindparam("feed_id"))


#: get_feed's statements by (with_body, gz)
_FEED_STATEMENTS = {(b, g): _feed_statement(b, g) for b in (True, False) for g in (True, False)}


#: save_feed's read of the row it compares with (locked on PostgreSQL until the commit)
_SAVED_ROW = select(feeds_table.c.etag, feeds_table.c.body_gen, feeds_table.c.segments) \
    .where(feeds_table.c.feed_id == bindparam("feed_id")).with_for_update()
#: what save_feed writes of every render, and of a changed one its new identity
_RENDER_COLUMNS = ("rendered_at", "render_seconds", "event_count", "render_key", "window_day", "body_gen")
_CHANGED_COLUMNS = ("body_gz", "etag", "last_modified")


def _save_statement(changed: bool, generation: bool) -> Any:
    """save_feed's UPDATE, its values bound as ``v_<column>`` (``v_generation``: the dirty
    generation the render read, which leaves the feed dirty if a change came since)."""
    f = feeds_table
    clean: Any = case((func.coalesce(f.c.dirty_gen, 0) == bindparam("v_generation"), False),
                      else_=f.c.dirty) if generation else False
    names = (*_RENDER_COLUMNS, *(_CHANGED_COLUMNS if changed else ()))
    return update(f).where(f.c.feed_id == bindparam("v_feed_id")) \
        .values(dirty=clean, **{name: bindparam(f"v_{name}") for name in names})


#: by (bytes changed, generation known): made once, not per render
_SAVE_STATEMENTS = {(c, g): _save_statement(c, g) for c in (True, False) for g in (True, False)}


#: _save_segments' write of the feed row: its segments listed, no body of its own
_SEGMENTS_LISTED = update(feeds_table).where(feeds_table.c.feed_id == bindparam("v_feed_id")).values(
    body=None, body_head=bindparam("v_body_head"), body_tail=bindparam("v_body_tail"),
    segments=bindparam("v_segments"))


#: a last-modified time in whole microseconds, as feed parts keep it (-1: none matches it)
_MICROS = 1_000_000


def micros(values: Sequence[float]) -> list[int]:
    """Last-modified times in whole microseconds (``int(ts * 10**6)``); -1 for a value out of
    range (render's feed parts compare these ints, cheaper to store and compare than floats;
    :meth:`FeedsMixin.feed_versions` gives its times as these)."""
    try:
        out = list(map(int, map(float(_MICROS).__mul__, values)))
    except (OverflowError, ValueError):  # inf or nan
        out = [int(m * _MICROS) if -1e12 < m < 1e12 else -1 for m in values]
    else:
        if out and (max(out) >= 10**18 or min(out) <= -10**18):
            out = [o if -10**18 < o < 10**18 else -1 for o in out]
    return out


def feed_versions_sql(query: FeedQuery, mark: str) -> tuple[str, tuple[Any, ...]] | None:
    """The SQL and parameters :meth:`FeedsMixin.feed_versions` runs (None: the feed shows no event)."""
    where = _feed_where(query, mark)
    if where is None:
        return None
    sql, params = where
    return f"SELECT id, sequence, last_modified FROM {events_table.name} WHERE {sql} ORDER BY start_ts, id", params


def _feed_where(query: FeedQuery, mark: str) -> tuple[str, tuple[Any, ...]] | None:
    """:meth:`EventsMixin._feed_conditions` (:func:`window_condition` first) as SQL text and its parameters (``mark``: the
    driver's parameter marker), or None when the feed can show no event. The same conditions:
    tests/test_render_since.py compares the rows each selects."""
    sql = f"start_ts < {mark} AND (end_ts >= {mark} OR recurring = {mark})"
    params: list[Any] = [query.end_ts, query.start_ts, True]
    for column, values in (("account_key", query.account_keys), ("kind", query.kinds)):
        if values is not None:
            if not values:
                return None
            sql += f" AND {column} IN ({', '.join([mark] * len(values))})"
            params += sorted(values)
    if query.min_severity is not None:
        sql += f" AND (severity_rank IS NULL OR severity_rank >= {mark})"
        params.append(query.min_severity)
    return sql, tuple(params)


class FeedsMixin:
    """Rendered feeds and their dirty marks (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine
    saves: int
    codec: Codec
    _feed_conditions: Any

    def feed_versions(self, query: FeedQuery) -> tuple[list[int], list[int], list[int]]:
        """A feed's events in feed order as three lists: row ids, sequences and last-modified
        times in whole microseconds (:func:`micros`). What a re-render needs of every event to
        find the changed ones: read from the covering feed indexes (migration 0013), through
        the DB-API cursor (a feed has 10,000s of events; SQLAlchemy's rows cost more than the
        query). The times are read as the column's floats and made microseconds here: the
        same product truncated, a third of the CPU of the database's CASE and CAST per row
        (SQLite: 12 -> 8 ms for 10,000 rows). The SQL is :func:`_feed_where`'s, run by the
        DB-API cursor: building and compiling the statement cost as much as running it for
        an account's 1,000 rows (the same query plan, tests/test_render_since.py)."""
        with self.engine.connect() as conn:
            statement = feed_versions_sql(query, _mark(conn))
            if statement is None:
                return [], [], []
            rows = _fetch_all(conn, *statement)
        if not rows:
            return [], [], []
        ids, seqs, mods = zip(*rows, strict=True)
        return list(ids), list(seqs), micros(mods)

    def feed_changes(self, query: FeedQuery, since: int, limit: int) -> FeedChanges | None:
        """What a re-render needs to tell a feed's event list from the one its previous body was
        rendered from without reading the whole list (:meth:`feed_versions`): how many events
        the feed has, the sums of their sequences and of their row ids, and the rows last
        modified after ``since`` (whole microseconds, :func:`micros`: from ``since`` + 1 µs on),
        (id, sequence, last modified in µs, start_ts), at most ``limit`` of them (more: the
        caller reads the list in full). None: the query shows none.

        One pass over the feed's index entries gives the totals and the ids of the recent rows
        (a team feed's are every event in the window: a second pass for the rows cost as much
        again); their columns are then read by id. A row written between the two reads shows
        its newer sequence, which the totals do not count: the caller's sum check turns that
        list down, as it does a change written with an older clock."""
        with self.engine.connect() as conn:  # by the DB-API cursor: compiling the statement cost more than running it
            mark = _mark(conn)
            where = _feed_where(query, mark)
            if where is None:
                return None
            sql, params = where
            recent = f"CASE WHEN last_modified >= {mark} THEN id END"
            listed = f"group_concat({recent})" if conn.dialect.name == "sqlite" else \
                f"string_agg(CAST({recent} AS TEXT), ',')"
            statement = (f"SELECT count(*), coalesce(sum(sequence), 0), coalesce(sum(id), 0), {listed} "
                         f"FROM {events_table.name} WHERE {sql}")
            head = _fetch_all(conn, statement, ((since + 1) / _MICROS, *params))
            if len(head) != 1:
                raise StoreError("the feed's totals were not read")
            count, seq_sum, id_sum, ids = head[0]
            wanted = [int(i) for i in ids.split(",")[:limit]] if ids else []
            rows: list[tuple[Any, ...]] = []
            for at in range(0, len(wanted), 500):
                chunk = tuple(wanted[at:at + 500])
                rows += _fetch_all(conn, f"SELECT id, sequence, last_modified, start_ts FROM {events_table.name} "
                                         f"WHERE id IN ({', '.join([mark] * len(chunk))})", chunk)
        if len(rows) != len(wanted):  # deleted meanwhile: a count no list has (the caller reads it whole)
            count = -1
        mods = micros([r[2] for r in rows])
        return FeedChanges(int(count), int(seq_sum), int(id_sum),
                           [(r[0], r[1], m, r[3]) for r, m in zip(rows, mods, strict=True)])

    def start_times(self, ids: Sequence[int]) -> dict[int, float]:
        """Row id -> start_ts (the neighbours of a re-render's changed events: whether one moved)."""
        out: dict[int, float] = {}
        with self.engine.connect() as conn:  # the DB-API cursor, as changed_parts_by_id
            mark = _mark(conn)
            for at in range(0, len(ids), 500):
                chunk = tuple(ids[at:at + 500])
                sql = f"SELECT id, start_ts FROM {events_table.name} WHERE id IN ({', '.join([mark] * len(chunk))})"
                out.update(_fetch_all(conn, sql, chunk))
        return out

    def mark_dirty(self, feed_ids: Iterable[str]) -> None:
        try:
            with self.engine.begin() as conn:
                self._mark_dirty(conn, feed_ids)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot mark feeds for re-rendering: {db_reason(exc)}") from None

    def _mark_dirty(self, conn: Any, feed_ids: Iterable[str]) -> None:
        bump_or_insert(conn, feeds_table.c.feed_id, feeds_table.c.dirty_gen, feed_ids, dirty=True)

    def any_feed_dirty(self) -> bool:
        """Whether some feed waits for a render: one probe of a small table, what
        the scheduler's render job asks every couple of seconds before doing more."""
        f = feeds_table
        with self.engine.connect() as conn:
            return conn.execute(select(f.c.feed_id).where(f.c.dirty.is_(True)).limit(1)).first() is not None

    def feed_render_states(self) -> dict[str, tuple[bool, str | None, str | None]]:
        """feed id -> (dirty, render key, window day) for deciding what to re-render."""
        return {feed_id: state[:3] for feed_id, state in self.feed_render_generations().items()}

    def feed_render_generations(self) -> dict[str, tuple[bool, str | None, str | None, int]]:
        """feed id -> (dirty, render key, window day, dirty generation); pass the generation to
        :meth:`save_feed` so that a change marked during the render keeps the feed dirty."""
        f = feeds_table
        with self.engine.connect() as conn:
            return {r.feed_id: (bool(r.dirty), r.render_key, r.window_day, r.dirty_gen or 0)
                    for r in conn.execute(select(f.c.feed_id, f.c.dirty, f.c.render_key, f.c.window_day, f.c.dirty_gen))}

    def save_feed(self, feed_id: str, body: bytes, body_gz: bytes, etag: str, *, event_count: int,
                  now: float, render_seconds: float, render_key: str, window_day: str,
                  generation: int | None = None, segments: Segments | None = None,
                  parts: tuple[dict[str, Any], dict[str, Any]] | None = None) -> bool:
        """Store a rendered feed, compare-and-set; returns True when its bytes changed
        (Last-Modified moves then).

        The body is stored as segments (icsfeed.store.segments): ``segments``, the body as
        render cut it (the bytes of every segment the feed's stored body does not have yet;
        ``body`` may then be empty), else ``body`` cut here. Only segments the stored body
        lacks are written, those it no longer lists deleted, in the same transaction.

        ``generation`` is the feed's dirty generation read before the render
        (:meth:`feed_render_generations`). Several processes may render the same feed: the
        body is written only if no render of a newer generation was saved meanwhile, and the
        feed is marked clean only if no change was marked since ``generation``. So an older
        render never overwrites a newer one, and stale bytes are never left marked clean.
        Without ``generation`` the save is unconditional.

        ``parts``: the body's parts and budget report (render's), written in the same
        transaction (icsfeed.store.rollups: what :meth:`feed_parts` gives for this ETag).
        """
        f = feeds_table
        held = None
        try:
            with self.engine.begin() as conn:
                # a row to compare with (and SQLite's write lock), then that row locked on PostgreSQL:
                # what is read here stays true until the commit
                insert_missing(conn, f, [{"feed_id": feed_id, "dirty": True, "dirty_gen": 0}])
                old = conn.execute(_SAVED_ROW, {"feed_id": feed_id}).one()
                if generation is not None and old.body_gen is not None and old.body_gen > generation:
                    log.info("render of %s from generation %d not saved: one from generation %d was",
                             feed_id, generation, old.body_gen)
                    return False
                changed = old.etag != etag
                # a body stored whole (before 0015) is stored as segments by its next render, changed or not
                if (changed or old.segments is None) and not self._save_segments(
                        conn, feed_id, segments if segments is not None else split(body), old.segments):
                    return False
                values = {"v_feed_id": feed_id, "v_rendered_at": now, "v_render_seconds": render_seconds,
                          "v_event_count": event_count, "v_render_key": render_key, "v_window_day": window_day,
                          "v_body_gen": generation, "v_generation": generation}
                if changed:  # its segments written above; get_feed gives the body back as it was
                    values.update(v_body_gz=body_gz, v_etag=etag, v_last_modified=now)
                conn.execute(_SAVE_STATEMENTS[(changed, generation is not None)], values)
                if parts is not None:
                    held = self._write_parts(conn, feed_id, etag, *parts)  # type: ignore[attr-defined]
        except SQLAlchemyError as exc:
            if parts is not None:
                self._parts_cache.drop(feed_id)  # type: ignore[attr-defined]
            raise StoreError(f"cannot store feed {feed_id}: {db_reason(exc)}") from None
        if held is not None:
            self._hold_parts(feed_id, held)  # type: ignore[attr-defined]
        self.saves += 1
        return changed

    def _save_segments(self, conn: Any, feed_id: str, segments: Segments, listed: str | None) -> bool:
        """Make the feed's stored segments those ``segments`` lists (and its row name them):
        False when one it needs is neither stored nor given (the body it was spliced from is
        gone: not saved, the feed stays dirty). ``listed``: the row's list now (the stored
        segments are the ones it names: both are written together)."""
        s = feed_segments_table
        if listed is not None and segments.based_on is not None and segments.based_on[0] == listed:
            stored = set(segments.based_on[1])  # the list the render read and spliced: already parsed
        else:
            try:
                stored = set(decode_list(listed)[0]) if listed is not None else None
            except ValueError:
                stored = None
        if stored is None:  # stored whole until now (or an unreadable list): whatever rows there are
            stored = set(conn.execute(select(s.c.digest).where(s.c.feed_id == feed_id)).scalars())
        wanted = set(segments.digests)
        new = wanted - stored
        if not new <= segments.raw.keys():
            log.warning("render of %s not saved: %d of its segments are neither stored nor given", feed_id,
                        len(new - segments.raw.keys()))
            return False
        gone = stored - wanted
        mark = _mark(conn)  # by the DB-API cursor: a re-render writes and deletes a hundred of them
        if gone:
            _executemany(conn, f"DELETE FROM feed_segments WHERE feed_id = {mark} AND digest = {mark}",
                         [(feed_id, d) for d in sorted(gone)])
        if new:  # compressed with the segments' dictionary (one for every feed: their VEVENTs are alike)
            names = sorted(new)
            blobs = self.codec.encode_values(conn, "segment", [SEGMENT_GROUP] * len(names),
                                             [segments.raw[d] for d in names])
            _executemany(conn, f"INSERT INTO feed_segments (feed_id, digest, blob) VALUES ({mark}, {mark}, {mark})",
                         list(zip(repeat(feed_id), names, blobs, strict=False)))
        conn.execute(_SEGMENTS_LISTED, {"v_feed_id": feed_id, "v_body_head": segments.head,
                                        "v_body_tail": segments.tail,
                                        "v_segments": encode_list(segments.digests, segments.lengths, segments.check)})
        return True

    def feed_segments(self, feed_id: str) -> StoredSegments | None:
        """The feed's stored body as segments, each read and decompressed when asked for
        (what a re-render starts from: it reads the few it changes); None when never rendered
        or stored whole (before migration 0015). Raises UndecodableBlob for a segment list
        that cannot be read, and later for a segment no longer stored (a render elsewhere
        replaced the body meanwhile: render_feeds then renders from the events)."""
        with self.engine.connect() as conn:
            row = conn.execute(_SEGMENTED_ROW, {"feed_id": feed_id}).first()
        if row is None or row.etag is None:
            return None
        return _segments_of([row], self.codec.decode, lambda digests: self._segment_blobs(feed_id, digests))

    def _all_segment_blobs(self, conn: Any, feed_id: str) -> dict[str, bytes]:
        """Every stored segment blob of the feed, by digest (the DB-API cursor's rows)."""
        sql = f"SELECT digest, blob FROM feed_segments WHERE feed_id = {_mark(conn)}"
        return {d: bytes(b) for d, b in _fetch_all(conn, sql, (feed_id,))}

    def _segment_blobs(self, feed_id: str, digests: list[str]) -> dict[str, bytes]:
        """The stored blobs of these segments of the feed (those there are), by the DB-API cursor."""
        out: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            mark = _mark(conn)
            for at in range(0, len(digests), 500):
                chunk = digests[at:at + 500]
                sql = (f"SELECT digest, blob FROM feed_segments WHERE feed_id = {mark} "
                       f"AND digest IN ({', '.join([mark] * len(chunk))})")
                out.update((d, bytes(b)) for d, b in _fetch_all(conn, sql, (feed_id, *chunk)))
        return out

    def get_feed(self, feed_id: str, *, with_body: bool = True, gz: bool = False) -> StoredFeed | None:
        """A rendered feed (body, or the gzip body when ``gz``), or None if never rendered.

        Every feed request makes this lookup, so its statements are built once. The body is
        the one stored whole (before migration 0015) or its segments joined."""
        stmt = _FEED_STATEMENTS[(with_body, gz)]
        for attempt in range(3):  # the row, then its segments: again if a render replaced them between
            with self.engine.connect() as conn:
                row = conn.execute(stmt, {"feed_id": feed_id}).first()
                blobs = self._all_segment_blobs(conn, feed_id) \
                    if with_body and not gz and row is not None and row.segments is not None else {}
            if row is None or row.etag is None:
                return None
            if not with_body or gz or row.segments is None or attempt == 2:
                break
            try:
                if set(decode_list(row.segments)[0]) <= blobs.keys():
                    break
            except ValueError:
                break
        body = b""
        if with_body:
            try:
                if gz:
                    body = bytes(row.body_gz or b"")
                else:
                    segmented = _segments_of([row], self.codec.decode, lambda digests: {})
                    if segmented is not None:
                        segmented.preload_blobs(blobs)
                    body = segmented.body() if segmented is not None else unpack_body(row.body)
            except UndecodableBlob as exc:
                log.error("the stored body of feed %s cannot be read (%s): marked for a new render", feed_id, exc)
                self._forget_body(feed_id)
                return None
        return StoredFeed(
            feed_id=row.feed_id, body=body if not gz else b"", body_gz=body if gz else b"",
            etag=row.etag, last_modified=row.last_modified, rendered_at=row.rendered_at,
            event_count=row.event_count or 0, render_seconds=row.render_seconds or 0.0,
            render_key=row.render_key, window_day=row.window_day)

    def drop_feed_body(self, feed_id: str) -> None:
        """Drop a stored body found unreadable (a segment a re-render could not read): the
        feed is marked for a render, which stores every segment again."""
        log.error("the stored body of feed %s cannot be read: marked for a new render", feed_id)
        self._forget_body(feed_id)

    def _forget_body(self, feed_id: str) -> None:
        """An unreadable body is dropped with its ETag and the feed marked dirty: the next render
        writes it again (its ETag would otherwise match, and save_feed keep the bad bytes)."""
        f = feeds_table
        try:
            with self.engine.begin() as conn:
                conn.execute(update(f).where(f.c.feed_id == feed_id).values(
                    body=None, body_gz=None, etag=None, body_head=None, body_tail=None, segments=None))
                conn.execute(delete(feed_segments_table).where(feed_segments_table.c.feed_id == feed_id))
                self._mark_dirty(conn, [feed_id])
        except SQLAlchemyError as exc:  # a read-only database: it stays unreadable until a render can write
            log.warning("cannot mark feed %s for a new render: %s", feed_id, db_reason(exc))

    def feeds_summary(self) -> list[StoredFeed]:
        """Every rendered feed without its bytes, for the status page."""
        f = feeds_table
        with self.engine.connect() as conn:
            ids = [r.feed_id for r in conn.execute(select(f.c.feed_id).order_by(f.c.feed_id))]
        return [feed for i in ids if (feed := self.get_feed(i, with_body=False)) is not None]
