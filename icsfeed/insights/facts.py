"""Field-aware input digests: a detector is not re-run for a change to fields it never reads.

The digest of icsfeed/insights/inputs.py takes every row a detector reads by its stored
version (content hash, SEQUENCE): any change to a row re-runs the detector. But a change of
title (bench_scale.py's 1% row: 1% of the titles of every account) does not touch a backup's
rhythm, an alert count or a week's counts. So a detector's :class:`Reads
<icsfeed.insights.base.Reads>` name the fields it is ``blind`` to, and a run also leaves a
second digest (the *facts* digest) of the same rows, in which each row of such a read counts
by its id, times, kind and state and its stored facts for that blind set (icsfeed/store/facts.py:
a digest of every Event field but the blind ones, written with the row); every flag, the
detector's own flags and the ranges it ``sees`` after all (bursts: the alerts its flags list
by title) count by version, as in the exact digest. A refresh whose exact digest differs but
whose facts digest is the last run's (same local day, before any noted instant,
inputs.still_holds) would compute the same flags: the same rows by id with the same values of
every field the detector reads. Both digests are cut from the same versions query, so telling
that only a title changed decodes no row (rows written before the facts were stored are
decoded once, and their facts written back).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from datetime import date, datetime, timedelta

from icsfeed.insights.base import INSIGHT_KIND, AccountContext, Detector, History, Reads
from icsfeed.insights.inputs import END, FACTS, GONE, KIND, RECURRING, START, TRAITS, AccountInputs
from icsfeed.model import Event
from icsfeed.store import Store, StoreError
from icsfeed.store.facts import COUNTED, FACT_SETS, TEXT, facts_part, row_facts, row_traits
from icsfeed.store.history import VersionRow, fill_facts

__all__ = ["COUNTED", "TEXT", "AccountFacts", "flag_ranges"]

log = logging.getLogger(__name__)

_UNSET = object()

#: id, start, end, recurring, gone: where a row is and whether it is still reported
_PLACE = struct.Struct("<qdd??")


def _place(r: VersionRow, facts: str) -> bytes:
    """A row as a blind read counts it: where and what kind it is, and its facts for that read."""
    return b"f%s%s\0%s\0" % (_PLACE.pack(r[0], r[START], r[END], bool(r[RECURRING]), bool(r[GONE])),
                             r[KIND].encode(), facts.encode())


class AccountFacts:
    """Facts digests cut from the account's versions (:class:`AccountInputs`, read once per
    refresh); ``history`` decodes only what the versions cannot say: the detector's own flags
    for ``sees``, and rows stored without facts."""

    def __init__(self, inputs: AccountInputs, history: History, store: Store) -> None:
        self.inputs = inputs
        self.history = history
        self.store = store
        self._worked_out: dict[int, tuple[str, int]] = {}  # row id -> facts, traits of a row stored without them
        self._places: dict[frozenset[str], dict[VersionRow, bytes | None]] = {}  # by blind set, by row version

    def _parts(self, rows: list[VersionRow], versions: list[bytes], picked: list[int],
               blind: frozenset[str]) -> list[bytes] | None:
        """The picked rows as a read blind to ``blind`` counts them (None: one cannot be told).
        Each row's part is made when first asked for and kept by the row's version: a read
        of one kind makes only its rows', and a write re-reads one source's rows only."""
        done = self._places.setdefault(blind, {})
        if any(rows[i][FACTS] is None and rows[i][KIND] != INSIGHT_KIND and rows[i][0] not in self._worked_out
               and rows[i] not in done for i in picked):
            self._work_out(rows, blind=True)
        out = []
        for i in picked:
            r = rows[i]
            if r[KIND] == INSIGHT_KIND:
                out.append(versions[i])  # a flag counts by its version
                continue
            place = done.get(r, _UNSET)
            if place is _UNSET:
                stored = r[FACTS] or self._worked_out.get(r[0], ("", 0))[0]
                part = facts_part(stored, blind) if stored else None
                place = done[r] = _place(r, part) if part is not None else None
            if place is None:
                return None
            out.append(place)  # type: ignore[arg-type]
        return out

    def _work_out(self, rows: list[VersionRow], *, blind: bool) -> None:
        """The facts and traits of rows stored before they were kept (``blind``: the facts of
        every row but flags are needed, else the traits of every row), from the decoded history
        (by the functions that write them), written back so the next refresh reads them."""
        self.history.load()
        by_id = {r.row.id: r for r in [*(self.history.read or []), *(self.history.flags() or [])]}
        fill = []
        for r in rows:
            missing = (r[FACTS] is None and r[KIND] != INSIGHT_KIND) if blind else r[TRAITS] is None
            if missing and r[0] in by_id and r[0] not in self._worked_out:
                h = by_id[r[0]]
                ev = h.row.event
                made = self._worked_out[r[0]] = (row_facts(ev.to_dict()),
                                                 row_traits(ev.status, not isinstance(ev.start, datetime), ev.end is None))
                fill.append((*made, r[0], h.content_hash))
        try:
            fill_facts(self.store, fill)
        except StoreError as exc:  # worked out again next time: nothing is lost
            log.warning("could not keep the facts of %d rows: %s", len(fill), exc)

    def counted(self) -> list[VersionRow] | None:
        """The account's versions (:meth:`AccountInputs.rows`) with every row's traits, for a
        count that reads nothing else (the summary's weeks); None when they are not read."""
        rows = self.inputs.rows()
        if rows is None:
            return None
        if any(r[TRAITS] is None for r in rows):
            self._work_out(rows, blind=False)
            worked = self._worked_out
            rows = [r if r[TRAITS] is not None else (*r[:TRAITS], worked[r[0]][1]) for r in rows if
                    r[TRAITS] is not None or r[0] in worked]
            if len(rows) != len(self.inputs.rows() or []):
                return None  # a row that could not be read: counted from the history instead
        return rows

    def digest(self, detector: Detector, ctx: AccountContext, source: str) -> str | None:
        """The facts digest of what ``detector`` reads now, or None when it has no blind
        reads (the exact digest says it all) or it cannot be told (a range not read, a blind
        set the rows keep no facts for)."""
        if detector.reads is None:
            return None
        reads = detector.reads(ctx)
        if not any(read.blind for read in reads) or any(read.blind and read.blind not in FACT_SETS for read in reads):
            return None
        inputs = self.inputs
        rows = inputs.rows()
        if rows is None:
            return None
        versions = inputs.versions()
        if detector.sees is not None:
            reads = [*reads, *detector.sees(ctx, [r.row.event for r in self.history.own(source)])]
        h = hashlib.sha256(inputs.base + b"facts\0" + detector.name.encode() + b"\0" + ctx.today.isoformat().encode())
        for read in reads:
            picked = inputs.picked(read)
            if picked is None:
                return None
            h.update(repr((sorted(read.kinds) if read.kinds is not None else None, read.earliest,
                           sorted(read.blind))).encode())
            if read.earliest:
                first = next((rows[i][START] for i in picked if not rows[i][RECURRING]), None)  # (rows are by start)
                h.update(repr(first).encode())
                continue
            if not read.blind:
                h.update(b"".join(versions[i] for i in picked))
                continue
            parts = self._parts(rows, versions, picked, read.blind)
            if parts is None:
                return None
            h.update(b"".join(parts))
        h.update(b"own\0")
        h.update(inputs.section(source))
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
