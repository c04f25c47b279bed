"""A feed body stored as content-defined segments (migration 0015): a re-render rewrites only
the segments whose VEVENTs changed, the rest are kept by their digests.

A rendered body is the VCALENDAR head, the VEVENTs, the tail. The VEVENTs are cut into
segments by their bytes alone: a segment ends after a VEVENT whose ``UID`` line hashes to 0
modulo ``SEGMENT_EVENTS`` (a property of the event, not of its place or its version: a VEVENT
that changes keeps the cut after it), or once a segment reaches ``MAX_SEGMENT`` bytes, or at
the last VEVENT. Cutting resets at every cut, so a change inside one segment can move only the
cuts up to the next cut that is also an old one (:func:`recut`): the segments after it are
the same bytes, with the same digests.

The ETag is a hash over the head, the segments' digests (sha256 of each segment's bytes) and
the tail (:func:`etag_of`): a function of the body's bytes alone (the cuts are), so the same
body has the same ETag, and a different body a different one.
"""

from __future__ import annotations

import hashlib
import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

#: a segment ends after a VEVENT whose UID's crc32 is 0 modulo this (its mean length in VEVENTs)
SEGMENT_EVENTS = 16
#: ... or once it has this many bytes (a run of VEVENTs without such a UID, or large ones)
MAX_SEGMENT = 64 * 1024

_BEGIN = b"BEGIN:VEVENT\r\n"
_END = b"\r\nEND:VEVENT\r\n"
_UID = b"\r\nUID:"


def digest(raw: bytes | memoryview) -> str:
    """A segment's name: the first 128 bits of the sha256 of its bytes, in hex."""
    return hashlib.sha256(raw).hexdigest()[:32]


def etag_of(head: bytes, digests: list[str], tail: bytes) -> str:
    """The ETag of a body: a hash of its head, its segments' digests and its tail."""
    h = hashlib.sha256(head)
    h.update(b"\0")
    h.update(",".join(digests).encode("ascii"))
    h.update(b"\0")
    h.update(tail)
    return h.hexdigest()[:32]


@dataclass
class Segments:
    """A body as head, segments (by digest, with their lengths) and tail. ``raw`` holds the
    bytes of segments the saver may not have (every new one); the others are named only."""

    head: bytes
    tail: bytes
    digests: list[str]
    lengths: list[int]
    raw: dict[str, bytes] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return etag_of(self.head, self.digests, self.tail)

    @property
    def size(self) -> int:
        return len(self.head) + sum(self.lengths) + len(self.tail)


def cuts(data: bytes | memoryview, start: int = 0, stop: int | None = None) -> tuple[list[int], int]:
    """Where segments end in ``data[start:stop]``, a run of whole VEVENTs starting at a cut:
    the offsets after each segment's last VEVENT, and the offset the last VEVENT ends at (the
    run's own end, unless bytes that are no VEVENT follow). The run's last VEVENT ends a
    segment only if it is a cut by itself (the caller decides about the body's end)."""
    stop = len(data) if stop is None else stop
    find = data.find  # type: ignore[union-attr]
    out: list[int] = []
    seg_start = pos = start
    crc32 = zlib.crc32
    while pos < stop:
        end = find(_END, pos, stop)
        if end < 0:
            break
        end += len(_END)
        u = find(_UID, pos, end)
        if u >= 0:
            u += len(_UID)
            e = find(b"\r\n", u, end)
            if crc32(data[u:e]) % SEGMENT_EVENTS == 0 or end - seg_start >= MAX_SEGMENT:
                out.append(end)
                seg_start = end
        elif end - seg_start >= MAX_SEGMENT:
            out.append(end)
            seg_start = end
        pos = end
    return out, pos


def split(body: bytes) -> Segments:
    """A body cut into head, segments and tail (every segment's bytes in ``raw``).

    The head ends where the first VEVENT begins, the tail starts after the last one; a body
    without VEVENTs is all head."""
    first = body.find(b"\r\n" + _BEGIN)
    if first < 0:
        return Segments(head=body, tail=b"", digests=[], lengths=[])
    first += 2
    last = body.rfind(_END)
    if last < first:
        return Segments(head=body, tail=b"", digests=[], lengths=[])
    last += len(_END)
    ends, _ = cuts(body, first, last)
    if not ends or ends[-1] != last:
        ends.append(last)
    view = memoryview(body)
    digests, lengths, raw = [], [], {}
    at = first
    for end in ends:
        piece = view[at:end]
        d = digest(piece)
        digests.append(d)
        lengths.append(end - at)
        raw.setdefault(d, bytes(piece))
        at = end
    return Segments(head=body[:first], tail=body[last:], digests=digests, lengths=lengths, raw=raw)


def body_etag(body: bytes) -> str:
    """The ETag of a body (what render and the store give it)."""
    return split(body).etag


def encode_list(digests: list[str], lengths: list[int]) -> str:
    """The feed row's list of segments: ``digest:length`` joined by commas."""
    return ",".join(f"{d}:{n}" for d, n in zip(digests, lengths, strict=True))


def decode_list(text: str) -> tuple[list[str], list[int]]:
    """:func:`encode_list` read back; raises ValueError for anything else."""
    if not text:
        return [], []
    digests, lengths = [], []
    for item in text.split(","):
        d, _, n = item.partition(":")
        if len(d) != 32 or not n.isdigit():
            raise ValueError(f"not a segment entry: {item[:80]!r}")
        digests.append(d)
        lengths.append(int(n))
    return digests, lengths


def splice(old: Segments, raw_of: Callable[[int], bytes],
           patches: list[tuple[int, int, bytes]]) -> Segments:
    """The segments of ``old``'s body with ``patches`` applied: (start, end, bytes) in the
    old body's offsets, sorted, each within one segment and on VEVENT boundaries (a VEVENT
    replaced by its new bytes). ``raw_of(j)``: the bytes of old segment ``j`` (read only for
    the segments patched, and any a changed cut runs into).

    The segments no patch touches keep their digests; from each patched one on the cuts are
    made again (:func:`cuts`) until one falls on an old segment's end: from there the old
    cuts hold. The result is what :func:`split` makes of the new body, without the body."""
    offs = list(accumulate(old.lengths, initial=len(old.head)))
    n = len(old.digests)
    digests: list[str] = []
    lengths: list[int] = []
    raw: dict[str, bytes] = {}
    p, j = 0, 0
    while j < n:
        if p >= len(patches) or patches[p][0] >= offs[j + 1]:  # untouched: kept as it is
            if p >= len(patches):
                digests += old.digests[j:]
                lengths += old.lengths[j:]
                break
            k = bisect_right(offs, patches[p][0]) - 1
            digests += old.digests[j:k]
            lengths += old.lengths[j:k]
            j = k
            continue
        buf = bytearray()
        done = 0
        k = j
        while True:
            seg, base, at = raw_of(k), offs[k], 0
            while p < len(patches) and patches[p][0] < offs[k + 1]:
                start, end, new = patches[p]
                buf += seg[at:start - base]
                buf += new
                at = end - base
                p += 1
            buf += seg[at:]
            k += 1
            ends, _ = cuts(buf, done)
            if k == n and (not ends or ends[-1] != len(buf)):
                ends.append(len(buf))  # the body's last segment ends with its last VEVENT
            for end in ends:
                piece = bytes(buf[done:end])
                d = digest(piece)
                digests.append(d)
                lengths.append(end - done)
                raw.setdefault(d, piece)
                done = end
            if done == len(buf):  # a cut on an old segment's end: the old cuts hold from here
                break
        j = k
    return Segments(head=old.head, tail=old.tail, digests=digests, lengths=lengths, raw=raw)
