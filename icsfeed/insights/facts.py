"""Field-aware input digests: a detector is not re-run for a change to fields it never reads.

The digest of icsfeed/insights/inputs.py takes every row a detector reads by its stored
version (content hash, SEQUENCE): any change to a row re-runs the detector. But a change of
title (bench_scale.py's 1% row: 1% of the titles of every account) does not touch a backup's
rhythm, an alert count or a week's counts. So a detector's :class:`Reads
<icsfeed.insights.base.Reads>` name the fields it is ``blind`` to, and a run also leaves a
second digest (the *facts* digest) of the same rows, in which each row of such a read counts
by its id, times, kind and state and the value of every Event field but the blind ones;
every flag, the detector's own flags and the ranges it ``sees`` after all (bursts: the alerts
its flags list by title) count by version, as in the exact digest. A refresh whose exact
digest differs but whose facts digest is the last run's (same local day, before any noted
instant, inputs.still_holds) would compute the same flags: the same rows by id with the same
values of every field the detector reads. It needs the rows decoded (the history's own),
so it is computed only when the exact digest did not hold, or after a run.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import fields
from datetime import date, datetime, timedelta

from icsfeed.insights.base import INSIGHT_KIND, AccountContext, Detector, History, Reads
from icsfeed.model import Event
from icsfeed.store.history import HistoryRow

#: what a title or text change alone touches (every detector reading a row's counts, times or
#: attributes but not its text)
TEXT = frozenset({"title", "detail"})
#: all but when a row is, what kind and whether it counts (status, recurrence): what a count reads
COUNTED = TEXT | {"url", "severity", "attrs"}
#: the Event fields, in a fixed order (a row's facts are their values but the blind ones)
_FIELDS = tuple(f.name for f in fields(Event))
#: id, start, end, recurring, gone, SEQUENCE, last modified (as inputs._NUMBERS) / id, start, end, recurring, gone
_VERSION = struct.Struct("<qdd??qd")
_PLACE = struct.Struct("<qdd??")


def _exact(r: HistoryRow) -> bytes:
    """A row by its stored version (the same facts as the exact digest's)."""
    return b"v%s%s\0%s\0%s\0" % (
        _VERSION.pack(r.row.id, r.start_ts, r.end_ts, bool(r.recurring), bool(r.gone), r.row.sequence,
                      r.row.last_modified),
        r.kind.encode(), r.content_hash.encode(), (r.source if r.kind == INSIGHT_KIND else "").encode())


def _facts(r: HistoryRow, blind: frozenset[str]) -> bytes:
    """A row by where it is, its state and every field of its event but the ``blind`` ones
    (repr keeps types apart: 1 and 1.0, True and 1; attrs come in their stored, sorted order)."""
    ev = r.row.event
    values = tuple(getattr(ev, name) for name in _FIELDS if name not in blind)
    return b"f%s%s\0%s\0" % (_PLACE.pack(r.row.id, r.start_ts, r.end_ts, bool(r.recurring), bool(r.gone)),
                             r.kind.encode(), repr(values).encode("utf-8", "surrogatepass"))


class AccountFacts:
    """The history's rows (read and decoded once per refresh) cut into facts digests.

    ``covered(lo, hi, kinds)`` says whether a range is all among the rows read (the exact
    digest's test, inputs.AccountInputs.covered: both read the same ranges)."""

    def __init__(self, history: History, base: bytes, covered: Callable[[float, float, frozenset[str] | None], bool]) -> None:
        self.history = history
        self.base = base
        self.covered = covered
        self._rows: list[HistoryRow] | None = None
        self._starts: list[float] = []
        self._seen: object = None
        self._cache: dict[tuple[int, frozenset[str]], bytes] = {}

    def _all(self) -> list[HistoryRow]:
        """Every row read and every flag, by (start, id) as the versions query orders them."""
        h = self.history
        h.load()
        flags = h.flags()
        assert flags is not None and h.read is not None
        if self._rows is None or self._seen is not flags:
            self._rows = sorted([*h.read, *flags], key=lambda r: (r.start_ts, r.row.id))
            self._starts = [r.start_ts for r in self._rows]
            self._seen = flags
        return self._rows

    def _bytes(self, r: HistoryRow, blind: frozenset[str]) -> bytes:
        if not blind or r.kind == INSIGHT_KIND:
            return _exact(r)
        key = (r.row.id, blind)  # (the rows read do not change within a refresh; flags count exactly)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = _facts(r, blind)
        return out

    def digest(self, detector: Detector, ctx: AccountContext, source: str) -> str | None:
        """The facts digest of what ``detector`` reads now, or None when it has no blind
        reads (the exact digest says it all) or cannot be told (a range not read)."""
        if detector.reads is None:
            return None
        reads = detector.reads(ctx)
        if not any(read.blind for read in reads):
            return None
        rows = self._all()
        mine = [r for r in rows if r.source == source and r.kind == INSIGHT_KIND]
        if detector.sees is not None:
            reads = [*reads, *detector.sees(ctx, [r.row.event for r in mine])]
        h = hashlib.sha256(self.base + b"facts\0" + detector.name.encode() + b"\0" + ctx.today.isoformat().encode())
        for read in reads:
            lo, hi = read.start.timestamp(), read.end.timestamp()
            if not self.covered(lo, hi, read.kinds):
                return None
            h.update(repr((sorted(read.kinds) if read.kinds is not None else None, read.earliest,
                           sorted(read.blind))).encode())
            end = bisect_left(self._starts, hi)
            picked = [r for r in rows[:end] if (read.kinds is None or r.kind in read.kinds)
                      and (r.end_ts >= lo or r.recurring)]
            if read.earliest:
                h.update(repr(min((r.start_ts for r in picked if not r.recurring), default=None)).encode())
                continue
            h.update(b"".join(self._bytes(r, read.blind) for r in picked))
        h.update(b"own\0")
        h.update(b"".join(_exact(r) for r in mine))
        return h.hexdigest()


def flag_ranges(ctx: AccountContext, flags: list[Event], within: Reads) -> list[Reads]:
    """The parts of ``within`` (its kinds, nothing blind) around the days of the live flags,
    a day wider on each side (a row's local day against the flag's days)."""
    lo, hi = within.start, within.end
    out = []
    for ev in flags:
        if ev.status == "cancelled" or ev.end is None:
            continue
        first, last = ctx.midnight(_date(ev.start)), ctx.midnight(_date(ev.end))
        start, end = max(lo, first - _DAY), min(hi, last + _DAY)
        if start < end:
            out.append(Reads(start, end, within.kinds))
    return out


_DAY = timedelta(days=1)


def _date(when: datetime | date) -> date:
    return when.date() if isinstance(when, datetime) else when
