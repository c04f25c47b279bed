"""A feed body stored as content-defined segments (migration 0015): a re-render rewrites only
the segments whose VEVENTs changed, the rest are kept by their digests.

A rendered body is the VCALENDAR head, the VEVENTs, the tail. The VEVENTs are cut into
segments by their bytes alone: a segment ends after a VEVENT whose ``UID`` value starts with
one of ``HIT_DIGITS`` (UIDs are hashes in hex: 1 VEVENT in ``SEGMENT_EVENTS``; a property of
the event, not of its place or its version: a VEVENT that changes keeps the cut after it), or
once a segment reaches ``MAX_SEGMENT`` bytes, or at the last VEVENT. Cutting resets at every
cut, so a change inside one segment can move only the cuts up to the next cut that is also an
old one (:func:`splice`): the segments after it are the same bytes, with the same digests.

The ETag is a hash over the head, the segments' digests (sha256 of each segment's bytes) and
the tail (:func:`etag_of`): a function of the body's bytes alone (the cuts are), so the same
body has the same ETag, and a different body a different one.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

#: a segment's mean length in VEVENTs (of UIDs that are hashes: see HIT_DIGITS)
SEGMENT_EVENTS = 8
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
    #: :func:`lens_check` of the VEVENT lengths of the parts saved with the body (render's,
    #: icsfeed.budget): a re-render splices segments only with parts that match it
    check: str = ""
    #: the stored list (its text, its digests) these segments were read from or spliced from:
    #: the saver compares it with the row's (then need not parse the row's list again)
    based_on: tuple[str, list[str]] | None = None

    @property
    def etag(self) -> str:
        return etag_of(self.head, self.digests, self.tail)

    @property
    def size(self) -> int:
        return len(self.head) + sum(self.lengths) + len(self.tail)


def cuts(data: bytes | bytearray, start: int = 0, stop: int | None = None) -> list[int]:
    """Where segments end in ``data[start:stop]``, a run of whole VEVENTs that starts at a cut:
    the offset after each segment's last VEVENT. A VEVENT ends a segment when it has a ``UID``
    line whose value starts with one of ``HIT_DIGITS`` (a UID is a hash in hex, so 1 VEVENT in
    ``SEGMENT_EVENTS``), or when the segment has reached ``MAX_SEGMENT`` bytes with it. The
    run's last VEVENT ends a segment only by these rules (the caller decides about the body's
    end).

    One regex scan finds the VEVENTs that hit (a C-level search, no Python step per VEVENT);
    VEVENTs are walked one by one only where a segment would pass ``MAX_SEGMENT``."""
    stop = len(data) if stop is None else stop
    find = data.find
    out: list[int] = []
    seg_start = start
    for match in _HIT.finditer(data, start, stop):
        end = find(_END, match.end(), stop)
        if end < 0:
            break
        end += len(_END)
        if end == seg_start:  # a second hit in the VEVENT that just ended a segment
            continue
        if end - seg_start > MAX_SEGMENT:
            seg_start = _walk(data, seg_start, end, out)
            if seg_start == end:
                continue
        out.append(end)
        seg_start = end
    if stop - seg_start >= MAX_SEGMENT:
        _walk(data, seg_start, stop, out)
    return out


def _walk(data: bytes | bytearray, seg_start: int, stop: int, out: list[int]) -> int:
    """The size cuts between ``seg_start`` (a cut) and ``stop``, VEVENT by VEVENT, added to
    ``out``; returns the last cut."""
    find = data.find
    pos = seg_start
    while True:
        end = find(_END, pos, stop)
        if end < 0:
            return seg_start
        end += len(_END)
        if end - seg_start >= MAX_SEGMENT:
            out.append(end)
            seg_start = end
        pos = end


#: a UID line whose value starts with one of these ends a segment (2 of 16 hex digits)
HIT_DIGITS = b"01"
_HIT = re.compile(rb"\r\nUID:[" + HIT_DIGITS + rb"]")


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
    ends = cuts(body, first, last)
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


def lens_check(lens: object) -> str:
    """A checksum of a body's VEVENT lengths as its parts list them ("" for a list that is not
    one of ints): the row keeps it with the segments, so parts that no longer describe the
    body they were saved with are not trusted where the re-render does not read the bytes."""
    try:
        return f"{zlib.crc32(array('q', lens)):08x}"  # type: ignore[arg-type]
    except (TypeError, OverflowError, ValueError):
        return ""


def encode_list(digests: list[str], lengths: list[int], check: str = "") -> str:
    """The feed row's list of segments: their lengths joined by commas, ``;``, their digests
    one after another (32 hex digits each), ``;``, the parts' :func:`lens_check`."""
    return f"{','.join(map(str, lengths))};{''.join(digests)};{check}"


def decode_list(text: str) -> tuple[list[str], list[int], str]:
    """:func:`encode_list` read back; raises ValueError for anything else."""
    text, _, check = text.rpartition(";")
    counts, sep, names = text.partition(";")
    lengths = list(map(int, counts.split(","))) if counts else []
    # (the ASCII bytes' isalnum: a table lookup a byte; str.isalnum asks Unicode of each character, 30x the time)
    if not sep or len(names) != 32 * len(lengths) or (names and not (names.isascii() and names.encode().isalnum())):
        raise ValueError(f"not a list of segments: {text[:80]!r}")
    return [names[i:i + 32] for i in range(0, len(names), 32)], lengths, check


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
        same = _patched_alike(raw_of(j), offs[j], offs[j + 1], patches, p)
        if same is not None:  # the usual case: the segment keeps its bounds (see _patched_alike)
            piece, p = same
            d = digest(piece)
            digests.append(d)
            lengths.append(len(piece))
            raw.setdefault(d, piece)
            j += 1
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
            ends = cuts(buf, done)
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
    return Segments(head=old.head, tail=old.tail, digests=digests, lengths=lengths, raw=raw, based_on=old.based_on,
                    check=old.check)


def _patched_alike(seg: bytes, base: int, stop: int, patches: list[tuple[int, int, bytes]],
                   p: int) -> tuple[bytes, int] | None:
    """Segment ``seg`` (at ``base`` up to ``stop`` in the old body) with the patches from
    ``p`` on that fall in it applied, and the next patch's index, when that is a segment of
    its own with the same bounds: each patched VEVENT is a cut exactly when the one it
    replaces was (the same UID, as a re-render's changed event keeps), and the segment stays
    under ``MAX_SEGMENT`` bytes before and after. Then the cuts :func:`split` would make of
    the new body are the old ones around it (no VEVENT inside hits; its last one ends it as
    before). None: any other case (the cuts are made again)."""
    if len(seg) >= MAX_SEGMENT:
        return None
    pieces: list[bytes] = []
    at = 0
    size = len(seg)
    while p < len(patches) and patches[p][0] < stop:
        start, end, new = patches[p]
        old = seg[start - base:end - base]
        if _vevent_hit(old) != _vevent_hit(new):
            return None
        pieces += [seg[at:start - base], new]
        size += len(new) - len(old)
        at = end - base
        p += 1
    if size >= MAX_SEGMENT:
        return None
    pieces.append(seg[at:])
    return b"".join(pieces), p


def _vevent_hit(vevent: bytes) -> bool:
    """Whether a VEVENT ends a segment by its UID (:func:`cuts`)."""
    return _HIT.search(vevent) is not None
