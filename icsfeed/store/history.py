"""One account's stored history as the insight refresh reads it: each row once, no fragments.

:meth:`Store.query_events <icsfeed.store.events.EventsMixin.query_events>` answers a feed:
one window, every column render needs. The refresh of an account's insights used to run it
four times (the account's window, its stored flags, a year of tickets, the flags again after
each detector wrote some) and so decoded most rows three times. Here one query reads the
account's events (a window, and optionally a wider one for some kinds; without the stored
VEVENT fragments), one reads every flag
the account has, and after a detector writes only that detector's rows are read again. Rows
are decoded by the store's ``_event_row``, the decoder of every other read (a row that
cannot be decoded is logged and left out, as there), and
carry the columns the reader filters on, so a window or kind is cut in memory exactly as the
store's query would cut it (:func:`in_window`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, case, null, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, chunks, db_reason
from icsfeed.store.events import _EVENT_ROW_COLUMNS, EventRow, fetch_statement, window_condition
from icsfeed.store.schema import events_table, insight_inputs_table

_t = events_table
_inputs = insight_inputs_table
#: read besides the decoded row: what the refresh filters and writes by
_EXTRA = (_t.c.source, _t.c.key, _t.c.kind, _t.c.account_key, _t.c.start_ts, _t.c.end_ts, _t.c.recurring, _t.c.gone,
          _t.c.content_hash, _t.c.facts, _t.c.traits)
_N = len(_EVENT_ROW_COLUMNS)
#: the decoder's columns without the stored VEVENT fragments (half the bytes of a row; no
#: detector reads them): NULL in their place
_COLUMNS = tuple(null().label(c.name) if c.name in ("vevent", "vevent_key") else c for c in _EVENT_ROW_COLUMNS)


@dataclass(frozen=True)
class HistoryRow:
    """A stored event with the columns the store's own window and kind tests read."""

    row: EventRow
    source: str
    key: str
    kind: str
    account_key: str | None
    start_ts: float
    end_ts: float
    recurring: bool
    gone: bool
    #: the stored content's hash (with the row's SEQUENCE: its version, icsfeed/insights/inputs.py)
    content_hash: str = ""
    #: the stored facts digests (icsfeed/store/facts.py); None: a row written before they were kept
    facts: str | None = None
    #: the stored traits (icsfeed/store/facts.py), None as ``facts``
    traits: int | None = None


def in_window(r: HistoryRow, lo: float, hi: float) -> bool:
    """The store's window test (``_feed_conditions``), on the columns read."""
    return (r.start_ts < hi and r.end_ts >= lo) or (r.recurring and r.start_ts < hi)


def _select(where: Any) -> Any:
    return select(*_COLUMNS, *_EXTRA).where(where).order_by(_t.c.start_ts, _t.c.id)


def _read(store: Any, stmt: Any, params: dict[str, Any] | None = None) -> list[HistoryRow]:
    """The rows a statement of :func:`_select` reads (with ``params``, one made once), decoded."""
    try:
        with store.engine.connect() as conn:  # the driver's tuples: an account has 1,000s of rows
            rows = fetch_statement(conn, stmt, params)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the account's history: {db_reason(exc)}") from None
    decoded = ((store._event_row(r[:_N]), r) for r in rows)
    return [HistoryRow(row, *r[_N:_N + 6], bool(r[_N + 6]), bool(r[_N + 7]), r[_N + 8], r[_N + 9], r[_N + 10])
            for row, r in decoded if row is not None]


def account_events(store: Any, account_keys: Collection[str], span: tuple[float, float], *,
                   exclude_kind: str, wide: tuple[float, float] | None = None,
                   wide_kinds: Collection[str] = ()) -> list[HistoryRow]:
    """The accounts' events of every kind but ``exclude_kind`` in the ``span`` window, and
    those of ``wide_kinds`` in the ``wide`` window too; by start (then id), as the store orders."""
    if not account_keys:
        return []
    windows = window_condition(*span)
    if wide is not None and wide_kinds:
        windows = or_(windows, and_(_t.c.kind.in_(sorted(wide_kinds)), window_condition(*wide)))
    return _read(store, _select(and_(_t.c.account_key.in_(sorted(account_keys)), _t.c.kind != exclude_kind, windows)))


def wide_events(store: Any, account_keys: Collection[str], kinds: Collection[str],
                wide: tuple[float, float], *, exclude_kind: str) -> list[HistoryRow]:
    """The accounts' events of ``kinds`` (but ``exclude_kind``) in the ``wide`` window: what
    :func:`account_events` reads of them there, alone (a detector that reads only them)."""
    if not account_keys or not kinds:
        return []
    return _read(store, _select(and_(_t.c.account_key.in_(sorted(account_keys)), _t.c.kind.in_(sorted(kinds)),
                                     _t.c.kind != exclude_kind, window_condition(*wide))))


def kind_events(store: Any, account_keys: Collection[str], kind: str) -> list[HistoryRow]:
    """Every event of one kind (the account's flags) the accounts have, at any time."""
    if not account_keys:
        return []
    return _read(store, _select(and_(_t.c.account_key.in_(sorted(account_keys)), _t.c.kind == kind)))


_SOURCE_EVENTS = _select(_t.c.source == bindparam("source"))


def source_events(store: Any, source: str) -> list[HistoryRow]:
    """Every event of one source (a detector's flags for one account, just written)."""
    return _read(store, _SOURCE_EVENTS, {"source": source})


def keyed_events(store: Any, source: str, keys: Collection[str]) -> list[HistoryRow]:
    """The events of one source with these keys (the few flags a detector made again)."""
    out: list[HistoryRow] = []
    for part in chunks(sorted(set(keys)), 500):
        out += _read(store, _select(and_(_t.c.source == source, _t.c.key.in_(part))))
    return out


#: a row's version as the insight inputs digest it (icsfeed/insights/inputs.py), read without
#: decoding anything: where and what kind it is, its content hash, SEQUENCE and state, for a
#: flag its source (NULL for other rows: the strings a read makes are most of its cost), its
#: facts (icsfeed/insights/facts.py; NULL for a flag, whose facts are its version) and traits
VERSION_COLUMNS = ("id", "kind", "start_ts", "end_ts", "recurring", "gone", "content_hash", "sequence",
                   "last_modified", "flag_source", "facts", "traits")
_VERSION = (_t.c.id, _t.c.kind, _t.c.start_ts, _t.c.end_ts, _t.c.recurring, _t.c.gone, _t.c.content_hash,
            _t.c.sequence, _t.c.last_modified)
#: a row of VERSION_COLUMNS, as the DB-API driver gives it (a bool may be 0/1)
VersionRow = tuple[Any, ...]


def _versions_select(where: Any, flag_kind: str, *extra: Any) -> Any:
    flag_source = case((_t.c.kind == flag_kind, _t.c.source), else_=null())
    facts = case((_t.c.kind == flag_kind, null()), else_=_t.c.facts)
    return select(*_VERSION, flag_source, facts, _t.c.traits, *extra).where(where).order_by(_t.c.start_ts, _t.c.id)


# The two reads of every refresh, made once (per flag kind and shape) with bound parameters:
# building and keying a statement of a dozen conditions cost about as much as running it.
@cache
def _account_versions_statement(flag_kind: str, wide: bool) -> Any:
    windows = or_(window_condition(bindparam("lo"), bindparam("hi")), _t.c.kind == flag_kind)
    if wide:
        windows = or_(windows, and_(_t.c.kind.in_(bindparam("wide_kinds", expanding=True)),
                                    window_condition(bindparam("wide_lo"), bindparam("wide_hi"))))
    return _versions_select(and_(_t.c.account_key.in_(bindparam("keys", expanding=True)), windows), flag_kind)


@cache
def _source_versions_statement(flag_kind: str) -> Any:
    return _versions_select(and_(_t.c.source == bindparam("source"), _t.c.kind == flag_kind), flag_kind,
                            _t.c.account_key)


def _versions(store: Any, stmt: Any, params: dict[str, Any]) -> list[VersionRow]:
    try:
        with store.engine.connect() as conn:  # plain tuples from the driver: an account has 1,000s
            return fetch_statement(conn, stmt, params)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the account's history: {db_reason(exc)}") from None


def account_versions(store: Any, account_keys: Collection[str], span: tuple[float, float], *, flag_kind: str,
                     wide: tuple[float, float] | None = None, wide_kinds: Collection[str] = ()) -> list[VersionRow]:
    """The versions of what :func:`account_events` and :func:`kind_events` read (the span's
    rows of every kind, the ``wide_kinds`` in ``wide``, every ``flag_kind`` row), in one
    query, by start (then id)."""
    if not account_keys:
        return []
    params: dict[str, Any] = {"keys": sorted(account_keys), "lo": span[0], "hi": span[1]}
    with_wide = wide is not None and bool(wide_kinds)
    if with_wide:
        assert wide is not None
        params.update(wide_kinds=sorted(wide_kinds), wide_lo=wide[0], wide_hi=wide[1])
    return _versions(store, _account_versions_statement(flag_kind, with_wide), params)


def source_versions(store: Any, source: str, account_keys: Collection[str], flag_kind: str) -> list[VersionRow]:
    """The versions of one source's ``flag_kind`` rows of the accounts (a detector's flags, just
    written). The accounts are told apart here, not in the query: by source alone it is the
    source's index (a few rows), not the account's covering one (all of the account's)."""
    keys = set(account_keys)
    rows = _versions(store, _source_versions_statement(flag_kind), {"source": source})
    return [r[:-1] for r in rows if r[-1] in keys]


def fill_facts(store: Any, rows: Sequence[tuple[str, int, int, str]]) -> None:
    """Keep the facts and traits (icsfeed/store/facts.py) worked out for rows stored without
    them: (facts, traits, id, content hash), written only where the row still has that
    content and none."""
    if not rows:
        return
    stmt = (update(_t).where(and_(_t.c.id == bindparam("_id"), _t.c.content_hash == bindparam("_hash"),
                                  _t.c.facts.is_(None))).values(facts=bindparam("_facts"), traits=bindparam("_traits")))
    try:
        with store.engine.begin() as conn:
            conn.execute(stmt, [{"_facts": f, "_traits": t, "_id": i, "_hash": h} for f, t, i, h in rows])
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot keep the rows' facts: {db_reason(exc)}") from None


@dataclass(frozen=True)
class LastInputs:
    """What a detector's last run that changed nothing read (see icsfeed/insights/inputs.py)."""

    digest: str
    run_at: float
    valid_until: float
    #: what a detector deciding row by row found of each row (insights/verdicts.py), or None
    memo: bytes | None = None


def last_inputs(store: Any, sources: Collection[str]) -> dict[str, LastInputs]:
    """The recorded inputs of these sources (none: never recorded, or since forgotten)."""
    if not sources:
        return {}
    stmt = select(_inputs.c.source, _inputs.c.digest, _inputs.c.run_at, _inputs.c.valid_until,
                  _inputs.c.memo).where(_inputs.c.source.in_(sorted(sources)))
    try:
        with store.engine.connect() as conn:
            return {r[0]: LastInputs(r[1], r[2], r[3], r[4]) for r in conn.execute(stmt)}
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the insights' inputs: {db_reason(exc)}") from None


def record_runs(store: Any, sources: Sequence[str], now: float,
                inputs: Mapping[str, LastInputs | None] | None = None) -> None:
    """What :meth:`apply_poll` records of polls that changed no event (their last success and
    counters), without reading their rows again, in one transaction: for the detectors of an
    account whose flags are the stored ones. ``inputs``: per source, what its run read
    (kept for the next refresh), or None to forget it (it wrote flags, or did not run)."""
    if not sources and not inputs:
        return
    try:
        with store.engine.begin() as conn:
            store._record_successes(conn, sources, now)
            if inputs:
                conn.execute(_inputs.delete().where(_inputs.c.source.in_(sorted(inputs))))
                kept = [{"source": s, "digest": i.digest, "run_at": i.run_at, "valid_until": i.valid_until,
                         "memo": i.memo} for s, i in inputs.items() if i is not None]
                if kept:
                    conn.execute(_inputs.insert(), kept)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write poll of {', '.join(sources) or 'the insights'}: {db_reason(exc)}") from None


def same_events(fresh: Sequence[Any], stored: Sequence[HistoryRow]) -> bool:
    """Whether writing ``fresh`` as a complete poll over ``stored`` (one source's rows) would
    change nothing: every event is a stored, live row's event with the same stored form (so
    the same content hash), under the same key, once, and no live row is left out. Strict:
    anything it cannot tell (a value JSON would write differently, such as 1 and 1.0) is a
    change, and then the poll is written in full."""
    by_key = {r.key: r for r in stored}
    seen: set[str] = set()
    for ev in fresh:
        key = str(ev.key)
        old = by_key.get(key)
        if old is None or old.gone or key in seen:
            return False
        seen.add(key)
        if old.row.event is not ev and not same_value(ev.to_dict(), old.row.event.to_dict()):
            return False
    return all(r.gone or r.key in seen for r in stored)


def split_unchanged(fresh: Sequence[Any], stored: Sequence[HistoryRow]) -> tuple[list[Any], dict[str, Any]]:
    """``fresh`` (a complete poll over ``stored``) as (the events to write, ``known``): the
    events that are a stored, live row's event with the same stored form (by the test of
    :func:`same_events`) are left out and named in ``known`` instead (stored key -> the
    row's record digest, NULL for a flag), which :meth:`apply_poll
    <icsfeed.store.events.EventsMixin.apply_poll>` counts as present and unchanged: the same
    rows as writing them all, without encoding and hashing every flag of a detector again."""
    by_key = {r.key: r for r in stored}
    count: dict[str, int] = {}
    for ev in fresh:
        count[str(ev.key)] = count.get(str(ev.key), 0) + 1
    write: list[Any] = []
    known: dict[str, Any] = {}
    for ev in fresh:
        key = str(ev.key)
        old = by_key.get(key)
        if old is not None and not old.gone and count[key] == 1 and (
                old.row.event is ev or same_value(ev.to_dict(), old.row.event.to_dict())):
            known[key] = None  # (what every flag is stored with: no record digest)
        else:
            write.append(ev)
    return write, known


def same_value(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are written as the same JSON (types and all; a float by its repr)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(isinstance(k, str) and same_value(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)
    if a is None or isinstance(a, (str, int)):  # bool is an int: the type check above keeps True from 1
        return bool(a == b)
    return False
