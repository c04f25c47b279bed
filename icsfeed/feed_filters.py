"""Filters a subscriber adds to a feed URL: ``kinds=``, ``status=open``, ``min_severity=``.

A filter narrows the feed its token opens and nothing else: it is applied to the VEVENTs of
that feed's stored, budgeted body (see icsfeed.budget: every VEVENT there, a rollup too, is
all of one kind, one severity and one open-ness), so a filtered variant is a subset of those
bytes, within the same budget, made without rendering anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from icsfeed.model import SEVERITY_RANK, Event

#: the URL parameters that select a variant of a feed
FILTER_PARAMS = ("kinds", "status", "min_severity")
#: ticket states (Zendesk ``status``, Jira ``status_category``, generic ``status`` attributes) that are closed
CLOSED_TICKET_STATES = frozenset({"solved", "closed", "resolved", "done"})
#: the word each severity rank is written as (model.SEVERITY_RANK orders the words origins use)
LEVEL_NAMES: dict[int, str] = {0: "info", 1: "low", 2: "warning", 3: "error", 4: "critical"}
assert set(LEVEL_NAMES) == set(SEVERITY_RANK.values())


class FilterError(ValueError):
    """A filter parameter has a value this server does not know (answered with a 400)."""


def is_open(ev: Event) -> bool:
    """Whether ``status=open`` keeps the event: not cancelled, not a resolved alert (an alert
    with an end: Alertmanager's resolved ones, those closed when no longer reported), not a
    closed ticket. Everything else (backups, maintenance, flags) is open unless cancelled."""
    if ev.status == "cancelled":
        return False
    if ev.kind == "alert":
        return ev.end is None
    if ev.kind == "ticket":
        for name in ("status_category", "status"):
            value = ev.attrs.get(name)
            if isinstance(value, str) and value.strip().lower() in CLOSED_TICKET_STATES:
                return False
    return True


@dataclass(frozen=True)
class FeedFilter:
    """A variant of a feed: which kinds, only open events, a minimum severity rank."""

    kinds: frozenset[str] | None = None
    open_only: bool = False
    min_severity: int | None = None

    def passes(self, kind: str, severity_rank: int | None, open_: bool) -> bool:
        """As routing: an event without a severity passes any minimum."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.open_only and not open_:
            return False
        return self.min_severity is None or severity_rank is None or severity_rank >= self.min_severity

    @property
    def canonical(self) -> str:
        """The same text for every URL that means this filter (the variant's identity)."""
        out = []
        if self.kinds is not None:
            out.append("kinds=" + ",".join(sorted(self.kinds)))
        if self.min_severity is not None:
            out.append(f"min_severity={LEVEL_NAMES[self.min_severity]}")
        if self.open_only:
            out.append("status=open")
        return "&".join(out)

    def etag(self, feed_etag: str) -> str:
        """The variant's ETag: it changes exactly when the feed's bytes do."""
        return hashlib.sha256(f"{feed_etag}|{self.canonical}".encode()).hexdigest()[:32]


def parse_filter(args: Mapping[str, str], known_kinds: Iterable[str]) -> FeedFilter | None:
    """The filter a feed URL's parameters ask for; None for the whole feed. Empty values
    mean "no filter" (as ``kinds=`` always did). Raises FilterError naming what is wrong."""
    known = list(known_kinds)
    kinds: frozenset[str] | None = None
    raw_kinds = (args.get("kinds") or "").strip()
    if raw_kinds:
        names = {k.strip() for k in raw_kinds.split(",") if k.strip()}
        unknown = sorted(names - set(known))
        if unknown:
            raise FilterError(f"kinds: unknown kind {unknown[0]!r} (known: {', '.join(known)})")
        kinds = frozenset(names)
    status = (args.get("status") or "").strip().lower()
    if status not in ("", "open", "all"):
        raise FilterError(f"status: {status[:40]!r} is not a status filter (use status=open, or status=all)")
    raw_severity = (args.get("min_severity") or "").strip().lower()
    min_severity: int | None = None
    if raw_severity:
        if raw_severity not in SEVERITY_RANK:
            raise FilterError(f"min_severity: unknown severity {raw_severity[:40]!r} "
                              f"(lowest to highest: {', '.join(LEVEL_NAMES[r] for r in sorted(LEVEL_NAMES))})")
        min_severity = SEVERITY_RANK[raw_severity] or None  # "info" and below: everything
    chosen = FeedFilter(kinds=kinds, open_only=status == "open", min_severity=min_severity)
    return None if chosen == FeedFilter() else chosen


def select_parts(body: bytes, parts: Mapping[str, object], chosen: FeedFilter) -> tuple[bytes, int]:
    """The variant's bytes from the feed's stored body and its parts (icsfeed.budget's
    ``parts`` JSON: header length, then per VEVENT its length, kind, severity rank, open).
    Raises ValueError when the parts cannot be those of ``body``."""
    head = int(parts["head"])  # type: ignore[call-overload]
    kinds: list[str] = parts["kinds"]  # type: ignore[assignment]
    if "lens" in parts:  # format 2: one flat array per field
        listed = list(zip(parts["lens"], parts["kind"], parts["rank"], parts["open"], strict=True))  # type: ignore[call-overload]
    else:  # format 1: [length, kind, rank, open] per VEVENT
        listed = parts["parts"]  # type: ignore[assignment]
    if head + sum(p[0] for p in listed) > len(body):
        raise ValueError("the parts do not describe this body")
    out = [body[:head]]
    offset = head
    count = 0
    for length, kind_index, rank, open_ in listed:
        if chosen.passes(kinds[kind_index], None if rank < 0 else rank, bool(open_)):
            out.append(body[offset:offset + length])
            count += 1
        offset += length
    out.append(body[offset:])
    return b"".join(out), count
