"""What a detector read, as a digest: a refresh whose digest is the last one keeps the flags.

A detector is a pure function of the rows it reads, its own stored flags, the settings and
``now`` (base.py). Its verdicts depend on ``now`` only through the local day and a few
instants its run notes (:meth:`AccountContext.until <icsfeed.insights.base.AccountContext.until>`:
a run falls due, a ticket goes stale; and any row read that starts after ``now``). So a run
that wrote no change leaves, in ``insight_inputs``, the digest of what it read — every row
of its :attr:`Detector.reads <icsfeed.insights.base.Detector.reads>` and of its own source
by stored version (id, times, content hash, SEQUENCE, ...; nothing is decoded), the settings,
the account's config and the code — with when it ran and until when ``now`` cannot change
its verdicts. A later refresh on the same local day before that instant, whose digest is the
same, would compute the same flags again: it records the run and keeps them. Anything the
digest cannot vouch for (a range outside what was read, no reads declared, a run that wrote
flags) runs the detector in full. A poll that changes a row read changes its content hash or
SEQUENCE; a row deleted, moved to another account or day, or closed by absence leaves or
changes the rows selected: each changes the digest.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import struct
from bisect import bisect_left, bisect_right, insort
from datetime import datetime, timedelta
from pathlib import Path

import icsfeed
from icsfeed.config import AccountConfig, Config
from icsfeed.insights.base import INSIGHT_KIND, AccountContext, Detector, History, Reads
from icsfeed.insights.settings import InsightsSettings
from icsfeed.store import Store
from icsfeed.store.history import HistoryRow, LastInputs, VersionRow, account_versions, source_versions

_ROOT = Path(icsfeed.__file__).resolve().parent
#: the code a detector's flags are made by: its digest is part of every input digest, so a new
#: version of icsfeed (or of a detector) recomputes every account once
_CODE = sorted([*(_ROOT / "insights").glob("*.py"),
                *(_ROOT / name for name in ("model.py", "urls.py", "config.py", "render.py")),
                *(_ROOT / "store" / name for name in ("events.py", "history.py", "codec.py"))])


def _code_digest() -> bytes:
    h = hashlib.sha256(icsfeed.__version__.encode())
    for path in _CODE:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


CODE_DIGEST = _code_digest()


# positions in a VersionRow (history.VERSION_COLUMNS)
KIND, START, END, RECURRING, GONE, CONTENT, SOURCE, FACTS, TRAITS = 1, 2, 3, 4, 5, 6, 9, 10, 11


#: id, start, end, recurring, gone, SEQUENCE, last modified (packing is ~10× cheaper than repr)
_NUMBERS = struct.Struct("<qdd??qd")


def _start(r: VersionRow) -> float:
    return float(r[START])


def _order(pair: tuple[VersionRow, bytes]) -> tuple[float, int]:
    """A (row, version) pair's place: the versions query's order (start, then id)."""
    return (pair[0][START], pair[0][0])


def _version(r: VersionRow) -> bytes:
    """A row's version as digested: its numbers packed, then kind, content hash and flag source."""
    return b"%s%s\0%s\0%s\0" % (_NUMBERS.pack(r[0], r[START], r[END], bool(r[RECURRING]), bool(r[5]), r[7], r[8]),
                               r[KIND].encode(), r[6].encode(), (r[SOURCE] or "").encode())


def _as_version(r: HistoryRow, flag: bool = True) -> VersionRow:
    """A history row as the versions query gives it (its source for a flag only, its facts
    for the other rows only)."""
    return (r.row.id, r.kind, r.start_ts, r.end_ts, r.recurring, r.gone, r.content_hash, r.row.sequence,
            r.row.last_modified, r.source if flag else None, None if flag else r.facts, r.traits)


class AccountInputs:
    """The versions of an account's rows (read once, by :func:`account_versions`), cut into
    each detector's digest. Covers [span) for every kind, ``wide`` for ``wide_kinds``, and
    every flag; :meth:`forget` re-reads one source after a detector wrote it."""

    def __init__(self, store: Store, config: Config, settings: InsightsSettings, account: AccountConfig,
                 span: tuple[datetime, datetime], wide: tuple[datetime, datetime],
                 wide_kinds: frozenset[str]) -> None:
        self.store = store
        self.keys = frozenset(account.match_keys)
        self.own_key = account.id.strip().lower()
        self.span = (span[0].timestamp(), span[1].timestamp())
        self.wide = (wide[0].timestamp(), wide[1].timestamp())
        self.wide_kinds = wide_kinds
        self._rows: list[VersionRow] | None = None
        self._bytes: list[bytes] | None = None
        self._by_kind: dict[str, list[int]] | None = None
        self._history: History | None = None
        self._read: tuple[list[VersionRow], list[bytes]] | None = None  # the history's rows read, as versions
        self._seen: object = None  # the history's flag list the rows were taken from
        self._picked_of: object = None  # the rows list the picks below were cut from
        self._picked: dict[tuple[float, float, frozenset[str] | None], list[int]] = {}
        self._sections_of: object = None  # the rows list the sections below were cut from
        self._sections: dict[str, tuple[bytes, int]] = {}
        self.base = hashlib.sha256(CODE_DIGEST + "\0".join((
            settings.model_dump_json(), account.model_dump_json(), config.feeds.model_dump_json(),
        )).encode()).digest()

    def use(self, history: History) -> None:
        """Take the versions from ``history``'s own reads once it has made them (instead of a
        query of their own): the rows the detectors read, to the letter. For a refresh that
        has nothing recorded to compare with, so it digests only after a run wrote nothing."""
        self._history = history

    def _from_history(self) -> list[VersionRow] | None:
        h = self._history
        if h is None:
            return None
        if h.read is None or h.flags() is None:  # a detector read only part of it (its kinds, its own flags)
            h.load()
        flags = h.flags()
        if h.read is None or flags is None:
            return None
        if self._rows is not None and self._seen is flags:
            return self._rows
        if self._read is None:  # (the rows read never change in a refresh: only flags are re-read)
            read = [_as_version(r, flag=False) for r in h.read]
            self._read = (read, [_version(r) for r in read])
        pairs = sorted([*zip(*self._read, strict=True), *((v, _version(v)) for v in map(_as_version, flags))],
                       key=_order)
        self._rows, self._bytes = [p[0] for p in pairs], [p[1] for p in pairs]
        self._by_kind, self._seen = None, flags
        return self._rows

    def rows(self) -> list[VersionRow] | None:
        """The versions, by start then id (from the history: read in full first if a detector
        read only part of it; None when it could not read)."""
        if self._history is not None:
            return self._from_history()  # never a query after the run: it might see newer rows
        if self._rows is None:
            self._rows = account_versions(self.store, self.keys | {self.own_key}, self.span, flag_kind=INSIGHT_KIND,
                                          wide=self.wide, wide_kinds=self.wide_kinds)
            self._bytes = self._by_kind = None
        return self._rows

    def _of_kinds(self, kinds: frozenset[str] | None) -> list[int]:
        """Positions in :meth:`rows` of the rows of these kinds (None: all), in order."""
        rows = self.rows() or []
        if kinds is None:
            return list(range(len(rows)))
        if self._by_kind is None:
            by_kind: dict[str, list[int]] = {kind: [] for kind in {r[KIND] for r in rows}}
            for i, r in enumerate(rows):
                by_kind[r[KIND]].append(i)
            self._by_kind = by_kind
        found = [self._by_kind.get(k, []) for k in sorted(kinds)]
        if len(found) == 1:
            return found[0]
        return list(heapq.merge(*found))  # (each part is in order)

    def versions(self) -> list[bytes]:
        """Each row's version as digested, in the order of :meth:`rows`."""
        return self._versions()

    def _versions(self) -> list[bytes]:
        if self._bytes is None:
            self._bytes = [_version(r) for r in self.rows() or []]
        return self._bytes

    def forget(self, source: str, flags: list[HistoryRow] | None = None) -> None:
        """Read the versions of ``source`` again (a detector just wrote its flags); from
        ``flags``, every flag of the account just re-read by the history, if given (the rows
        the versions query would select, no second query)."""
        if self._rows is None or self._history is not None:
            return  # (from the history: it re-reads the source itself)
        if flags is not None:
            fresh = [_as_version(r) for r in flags if r.source == source]
        else:
            fresh = source_versions(self.store, source, self.keys | {self.own_key}, INSIGHT_KIND)
        # each kept row's version as digested is kept with it: only the source's are made again,
        # and put in place among the others (in order already: no sort of the 1,000s)
        pairs = [p for p in zip(self._rows, self._versions(), strict=True) if p[0][SOURCE] != source]
        for r in fresh:
            insort(pairs, (r, _version(r)), key=_order)
        self._rows, self._bytes = [p[0] for p in pairs], [p[1] for p in pairs]
        self._by_kind = None

    def section(self, source: str) -> bytes:
        """The versions of ``source``'s flags, joined in order (its section of :meth:`digest`)."""
        return self._section(source)[0]

    def _section(self, source: str) -> tuple[bytes, int]:
        rows = self.rows() or []
        if self._sections_of is not rows:  # every flag source's section cut in one pass over the rows
            versions = self._versions()
            parts: dict[str, list[bytes]] = {}
            live: dict[str, int] = {}
            for r, v in zip(rows, versions, strict=True):
                if r[SOURCE] is not None:
                    parts.setdefault(r[SOURCE], []).append(v)
                    live[r[SOURCE]] = live.get(r[SOURCE], 0) + (not r[GONE])
            self._sections = {name: (b"".join(p), live[name]) for name, p in parts.items()}
            self._sections_of = rows
        return self._sections.get(source, (b"", 0))

    def own_digest(self, source: str) -> bytes:
        """A digest of the versions of ``source``'s flags (its section of :meth:`digest`)."""
        return hashlib.blake2b(self.section(source), digest_size=16).digest()

    def live_flags(self, source: str) -> int:
        """How many of ``source``'s flags are live (not cancelled: the store marks them gone)."""
        return self._section(source)[1]

    def covered(self, lo: float, hi: float, kinds: frozenset[str] | None) -> bool:
        """Whether every row of the range and kinds is among those read."""
        if lo >= self.span[0] and hi <= self.span[1]:
            return True
        if kinds is not None and kinds <= {INSIGHT_KIND}:
            return True  # every flag is read
        return kinds is not None and kinds <= self.wide_kinds | {INSIGHT_KIND} \
            and lo >= self.wide[0] and hi <= self.wide[1]

    def picked(self, read: Reads) -> list[int] | None:
        """Positions in :meth:`rows` of the rows ``read`` selects (the store's window test), in
        order; None when they cannot be told (a range not read, rows not read yet)."""
        rows = self.rows()
        lo, hi = read.start.timestamp(), read.end.timestamp()
        if rows is None or not self.covered(lo, hi, read.kinds):
            return None
        if self._picked_of is not rows:  # (several digests a refresh ask for the same reads)
            self._picked_of, self._picked = rows, {}
        key = (lo, hi, read.kinds)
        found = self._picked.get(key)
        if found is None:
            candidates = self._of_kinds(read.kinds)
            # rows are by start, so none from the first starting at ``hi`` on
            end = bisect_left(rows, hi, key=_start)
            candidates = candidates[:bisect_left(candidates, end)]
            found = self._picked[key] = [i for i in candidates if rows[i][END] >= lo or rows[i][RECURRING]]
        return found

    def digest(self, detector: Detector, ctx: AccountContext, source: str) -> tuple[str, float, str] | None:
        """(digest of what ``detector`` reads for this account, first start after now among
        those rows, the digest of its reads without its own flags' section), or None when it
        cannot be told (no reads declared, a range not read)."""
        if detector.reads is None:
            return None
        reads = detector.reads(ctx)
        now = ctx.now.timestamp()
        h = hashlib.sha256(self.base + detector.name.encode() + b"\0" + ctx.today.isoformat().encode())
        later = math.inf
        rows = self.rows()
        if rows is None:
            return None
        versions = self._versions()
        for read in reads:
            picked = self.picked(read)
            if picked is None:
                return None
            # the rows it selects, not its bounds: a range ending at now + 1 s moves with the clock
            h.update(repr((sorted(read.kinds) if read.kinds is not None else None, read.earliest)).encode())
            if read.earliest:
                first = next((rows[i][START] for i in picked if not rows[i][RECURRING]), None)  # (rows are by start)
                h.update(repr(first).encode())
                continue
            h.update(b"".join([versions[i] for i in picked]))
            # (rows are by start: the first picked one starting after now is found by bisection)
            after = bisect_right(picked, now, key=lambda i: rows[i][START])
            if after < len(picked):
                later = min(later, float(rows[picked[after]][START]))
        part = h.hexdigest()
        h.update(b"own\0")  # the detector's own flags (settled and kept by them)
        h.update(self.section(source))
        return h.hexdigest(), later, part


def reads_flags(detector: Detector, ctx: AccountContext) -> bool:
    """Whether ``detector``'s reads select flags (its own among them, or others' a later
    detector writes): then its own write may change what it reads (the summary counts
    earlier summaries), and a run after it may differ."""
    return detector.reads is not None and any(r.kinds is None or INSIGHT_KIND in r.kinds for r in detector.reads(ctx))


def recorded(exact: str, facts: str | None) -> str:
    """What ``insight_inputs.digest`` holds: the first 32 hex digits of the exact digest, then
    those of the facts digest (insights/facts.py), or dashes for a detector without one."""
    return exact[:32] + (facts[:32] if facts else "-" * 32)


def still_holds(last: LastInputs | None, digest: str, ctx: AccountContext, *, facts: bool = False) -> bool:
    """Whether the last run's flags are what a run now would make: same digest (the exact one,
    or with ``facts`` the facts digest), same local day, no noted instant passed (and the
    clock did not go back)."""
    if last is None or (last.digest[32:] if facts else last.digest[:32]) != digest[:32]:
        return False
    now = ctx.now.timestamp()
    if not last.run_at <= now < last.valid_until:
        return False
    return datetime.fromtimestamp(last.run_at, ctx.tz).date() == ctx.today


def inputs_of(digest: str, later: float, ctx: AccountContext) -> LastInputs:
    """What a run that wrote nothing leaves for the next refresh: valid until the first instant
    its verdicts may change (the next local midnight is checked by :func:`still_holds`)."""
    midnight = ctx.midnight(ctx.today + timedelta(days=1)).timestamp()
    return LastInputs(digest, ctx.now.timestamp(), min(later, ctx.changes_at, midnight))
