"""What the stale-ticket detector found of each ticket, by the ticket's stored version.

Its verdict on a ticket is a function of that ticket's row alone (the event, its SEQUENCE
and last change), the settings, the account, the local day, and of ``now`` only through one
instant (when an open ticket goes stale, or starts). So a run keeps, with its recorded
inputs (``insight_inputs.memo``), per ticket version: whether it is open, until when that
verdict holds and the key of the flag it made. The next run on the same local day whose flags
are the ones that run left decodes only the tickets whose version it does not hold (new,
changed, or past their instant) and names the others' flags to the store as unchanged,
without reading them; the summary counts the open tickets from the same verdicts and decodes
only those it lists. A bench account with every ticket stale rewrote 230 flags to change
three: this is what makes a refresh after a few tickets changed cost those tickets.

The memo is a cache of what the detector computes, never a source: anything it cannot vouch
for (another day, other settings or code, flags changed since, a ticket version not in it)
is computed from the ticket, as a run without it would.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from icsfeed.insights.base import Reads
from icsfeed.insights.inputs import AccountInputs
from icsfeed.store import EventRow, Store

#: format of a memo: a version byte, then the run's base digest, its flags' digest, when it ran
_HEAD = struct.Struct("<B16s16sd")
#: one ticket: its version digest, open?, until, length of its flag's key (0: none); then the key
_ENTRY = struct.Struct("<16s?dH")
_FORMAT = 1


@dataclass(frozen=True)
class Verdict:
    """The detector's finding on one ticket version."""

    open: bool
    #: the first instant at which the finding may change (math.inf: none)
    until: float = math.inf
    #: the key of the flag it made (None: no flag)
    flag: str | None = None


def _vhash(version: bytes) -> bytes:
    return hashlib.blake2b(version, digest_size=16).digest()


class TicketVerdicts:
    """The verdicts on one account's tickets in one refresh: those the last run kept (when it
    can vouch for them) and those this run works out (:meth:`note`)."""

    def __init__(self, inputs: AccountInputs, read: Reads, base: bytes, source: str, now: float,
                 memo: bytes | None) -> None:
        self.inputs = inputs
        self.source = source
        self.now = now
        self.base = base
        self._noted: dict[int, Verdict] = {}
        picked = inputs.picked(read)
        rows, versions = inputs.rows(), inputs.versions()
        #: (row id, version digest) of every ticket the detector reads, in its order
        self.tickets: list[tuple[int, bytes]] | None = None
        if picked is not None and rows is not None:
            self.tickets = [(int(rows[i][0]), _vhash(versions[i])) for i in picked]
        self._held = self._decode(memo) if self.tickets is not None else None

    def _decode(self, memo: bytes | None) -> dict[bytes, Verdict] | None:
        """The memo's verdicts, or None when it cannot vouch for them now."""
        if not memo:
            return None
        try:
            raw = zlib.decompress(memo)
            fmt, base, own, run_at = _HEAD.unpack_from(raw)
            if fmt != _FORMAT or base != self.base or not run_at <= self.now \
                    or own != self.inputs.own_digest(self.source):
                return None
            out: dict[bytes, Verdict] = {}
            at = _HEAD.size
            while at < len(raw):
                vhash, is_open, until, n = _ENTRY.unpack_from(raw, at)
                at += _ENTRY.size
                out[vhash] = Verdict(is_open, until, raw[at:at + n].decode() if n else None)
                at += n
        except (zlib.error, struct.error, UnicodeDecodeError):
            return None
        return out

    @property
    def reusable(self) -> bool:
        """Whether the last run's verdicts can stand for the tickets whose version is unchanged."""
        return self._held is not None

    def _valid(self, vhash: bytes) -> Verdict | None:
        held = self._held.get(vhash) if self._held is not None else None
        return held if held is not None and self.now < held.until else None

    def pending(self) -> list[int]:
        """Row ids of the tickets without a verdict that holds now, in the detector's order."""
        return [i for i, vhash in self.tickets or [] if i not in self._noted and self._valid(vhash) is None]

    def pending_rows(self, store: Store) -> list[EventRow]:
        """:meth:`pending`, decoded (a row deleted since the versions were read is left out)."""
        ids = self.pending()
        found = store.events_by_id(ids) if ids else {}
        return [found[i] for i in ids if i in found]

    def held(self) -> list[Verdict]:
        """The verdicts kept from the last run for the tickets that are not pending."""
        out = []
        for i, vhash in self.tickets or []:
            held = self._valid(vhash) if i not in self._noted else None
            if held is not None:
                out.append(held)
        return out

    def note(self, row_id: int, verdict: Verdict) -> None:
        self._noted[row_id] = verdict

    def open_ids(self) -> list[int] | None:
        """Row ids of the open tickets in the detector's order, when every ticket has a verdict
        (noted in this run or held); None otherwise."""
        if self.tickets is None:
            return None
        out = []
        for i, vhash in self.tickets:
            verdict = self._noted.get(i) or self._valid(vhash)
            if verdict is None:
                return None
            if verdict.open:
                out.append(i)
        return out

    def memo(self) -> bytes | None:
        """The verdicts to keep for the next run (every ticket that has one), with the digest of
        the detector's flags as they are now (after its write): None when there are none."""
        if self.tickets is None:
            return None
        parts = [_HEAD.pack(_FORMAT, self.base, self.inputs.own_digest(self.source), self.now)]
        for i, vhash in self.tickets:
            verdict = self._noted.get(i) or self._valid(vhash)
            if verdict is None:
                continue
            key = verdict.flag.encode() if verdict.flag is not None else b""
            if len(key) > 0xFFFF:
                return None
            parts.append(_ENTRY.pack(vhash, verdict.open, verdict.until, len(key)) + key)
        return zlib.compress(b"".join(parts), 1)


def flag_keys(verdicts: Iterable[Verdict]) -> list[str]:
    """The keys of the flags these verdicts made."""
    return [v.flag for v in verdicts if v.flag is not None]
