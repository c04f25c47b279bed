"""A feed over its size budget re-rendered from its previous body and plan columns.

A fitted feed's parts keep the plan's columns of every event of the feed (the ``b_`` lists,
icsfeed.budget.plan_parts: its length, what a rollup listing it takes, kind, account, day,
severity, open, recurring, end) as of each row's version, and where its VEVENT sits in the
body. A re-render reads the feed's version list (the covering index), takes the columns of the
rows whose version is the same from those lists, reads only the changed rows (columns and
fragment), plans again on the columns (icsfeed.budget._Fitter: no event decoded, no fragment
read), and leaves each individually shown VEVENT that did not change where the previous body
has it (a :class:`~icsfeed.budget.KeptVevent`): icsfeed.render patches the others (and the
rollups) into the stored segments when every kept one is still at its place, reading only the
segments patched, else copies the kept ones out of the previous body. Stored rollups whose
members did not change are kept as they are; only a rollup with a changed member is made again.
Because it is the same plan over the same columns, the bytes are the ones a render from the
events alone makes. The version list it starts from is worked out from the plan columns'
own list and the rows changed since (render._versions_since), not read whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from icsfeed.budget import (
    NOTE_RESERVE,
    PLAN_LISTS,
    Columns,
    FittedFeed,
    KeptVevent,
    _Fitter,
    _open_flags,
    _report,
    end_seconds,
    feed_budget,
    listed_bytes,
)
from icsfeed.config import Config
from icsfeed.routing import FeedSpec
from icsfeed.store import PartAttrs, Store

#: row id -> (columns, fragment; None: gone, or cannot be rendered)
Fetch = Callable[[Sequence[int]], dict[int, tuple[PartAttrs, bytes | None]]]


def refit(config: Config, store: Store, spec: FeedSpec, now: datetime, head: bytes, tail: bytes, size: int,
          parts: dict[str, Any], ids: list[int], seqs: list[int], mods: list[int], fetch: Fetch, *,
          secret: bytes | None, save: bool, changed: list[int] | None = None) -> FittedFeed | None:
    """The feed planned again from its previous body's ``parts`` (with plan columns; the body
    ``size`` bytes long), its events now being ``ids`` with versions ``seqs``/``mods`` (the
    feed index; ``changed``: the positions whose version differs, when ``ids`` is the plan
    columns' own list as render._versions_since works it out); ``fetch`` reads changed rows. Each VEVENT the previous body has as it is now
    is a :class:`KeptVevent` of the result (its ``pieces``; the caller splices or joins). None:
    not this case (no plan columns, too much changed, within its budget now): the caller
    renders from the events."""
    cached = _cached(parts, size)
    if cached is None or not ids or min(mods) < 0:
        return None
    b_ids, b_seqs, b_mods = cached["b_ids"], cached["b_seqs"], cached["b_mods"]
    at: list[int | None]
    if changed is not None and ids is b_ids:  # the plan's own list with ``changed`` positions changed
        at = list(range(len(ids)))
        for k in changed:
            at[k] = None
    else:  # each event's place in the plan's list, where its version is the same there
        where = {v: n for n, v in enumerate(zip(b_ids, b_seqs, b_mods, strict=True)) if v[2] >= 0}
        at = list(map(where.get, zip(ids, seqs, mods, strict=True)))
    changed = [ids[k] for k, n in enumerate(at) if n is None]
    if len(changed) > max(500, len(ids) // 4):
        return None
    got = fetch(changed) if changed else {}
    if len(got) != len(changed) or any(f is None for _, f in got.values()):  # some row gone or unrenderable
        keep = [k for k, n in enumerate(at) if n is not None or got.get(ids[k], (None, None))[1] is not None]
        ids, seqs, mods, at = ([v[k] for k in keep] for v in (ids, seqs, mods, at))  # type: ignore[misc]
        if not ids:
            return None
    unknown_open = [i for i, (a, _) in got.items() if a.is_open is None]
    flags = _open_flags(store, unknown_open, save)
    budget = feed_budget(config, spec)
    fitter = _Fitter(config, store, spec, now, budget, len(head) + len(tail) + NOTE_RESERVE, secret)
    cols = _columns(cached, at, ids, got, flags, fitter)
    known = parts.get("b_digests")
    if isinstance(known, dict) and known.get("context") == fitter.context and isinstance(known.get("digests"), dict):
        fitter.digests = known["digests"]
    size = len(head) + len(tail) + sum(cols.lens)
    if budget.fits(size, len(ids)):
        return None  # within its budget now: the general path lists it whole
    lens = parts["lens"]
    b_at = cached["b_at"]

    def fragments_of(alone: list[int]) -> list[bytes | KeptVevent] | None:
        out: list[bytes | KeptVevent | None] = []
        missing = []
        for p in alone:
            n = at[p]
            v = b_at[n] if n is not None else -1
            if v >= 0:  # in the previous body, rendered from this version: left where it is
                out.append(KeptVevent(v, lens[v]))
                continue
            fresh = got.get(ids[p])
            if fresh is not None:
                out.append(fresh[1])
                continue
            missing.append(len(out))
            out.append(None)
        if missing:  # shown now, not in the previous body (the window or a rollup moved)
            read = fetch([ids[alone[k]] for k in missing])
            for k in missing:
                fragment = read.get(ids[alone[k]], (None, None))[1]
                if fragment is None or len(fragment) != cols.lens[alone[k]]:
                    return None  # changed since its version was read: the next render has it
                out[k] = fragment
        return out  # type: ignore[return-value]

    versions = dict(zip(ids, zip(seqs, mods, strict=True), strict=True))
    report = _report(budget, spec, size, len(ids))
    return fitter.fit(cols, head, tail, report, fragments_of, save, versions)


def _cached(parts: dict[str, Any], size: int) -> dict[str, Any] | None:
    """The plan lists of ``parts``, when they are all there and agree with each other and the
    body's ``size`` (its bytes are checked where they are copied, icsfeed.render)."""
    try:
        lists = {name: parts[name] for name in (*PLAN_LISTS, "b_kinds", "b_accts")}
        n = len(lists["b_ids"])
        if any(len(lists[name]) != n for name in PLAN_LISTS) or not isinstance(parts["head"], int):
            return None
        if parts["head"] + sum(parts["lens"]) + len(b"END:VCALENDAR\r\n") != size:
            return None
        if n and (max(lists["b_kind"]) >= len(lists["b_kinds"]) or max(lists["b_acct"]) >= len(lists["b_accts"])
                  or max(lists["b_at"]) >= len(parts["lens"])):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return lists


def _columns(cached: dict[str, Any], at: list[int | None], ids: list[int],
             got: dict[int, tuple[PartAttrs, bytes | None]], flags: dict[int, bool], fitter: _Fitter) -> Columns:
    """The plan's columns now: the cached ones of unchanged rows, the read ones of the others."""
    fresh = [k for k, n in enumerate(at) if n is None]
    index = [0 if n is None else n for n in at]

    def column(name: str, decode: Callable[[Any], Any] | None = None) -> list[Any]:
        values = cached[name]
        out = list(map(values.__getitem__, index))
        return out if decode is None else list(map(decode, out))

    kinds_named, accounts_named = cached["b_kinds"], cached["b_accts"]
    cols = Columns(ids=list(ids), lens=column("b_lens"), est=column("b_est"),
                   kinds=column("b_kind", kinds_named.__getitem__), accounts=column("b_acct", accounts_named.__getitem__),
                   days=column("b_day"), ranks=column("b_rank", lambda r: None if r < 0 else r),
                   opens=column("b_open", bool), recurring=column("b_rec", bool), ends=column("b_end"),
                   seqs=column("b_seqs"))
    tz = fitter.tz
    for k in fresh:
        attrs, fragment = got[ids[k]]
        assert fragment is not None
        cols.lens[k], cols.est[k] = len(fragment), listed_bytes(fragment)
        cols.kinds[k], cols.accounts[k] = attrs.kind, attrs.account_key or ""
        cols.days[k] = datetime.fromtimestamp(attrs.start_ts, tz).toordinal()
        cols.ranks[k] = attrs.severity_rank
        cols.opens[k] = attrs.is_open if attrs.is_open is not None else flags.get(attrs.id, True)
        cols.recurring[k], cols.ends[k], cols.seqs[k] = attrs.recurring, end_seconds(attrs.end_ts), attrs.sequence
        cols.uids[attrs.id] = attrs.uid
    return cols
