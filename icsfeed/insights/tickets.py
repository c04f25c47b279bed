"""Stale tickets: open for days with no update, the thing a customer opens a call with.

The contract for ticket events (docs/INSIGHTS.md): ``attrs.state`` (or ``status``, or
Jira's ``status_category``) says whether the ticket is open — any word not in
``closed_states`` is open — and ``attrs.updated`` (ISO 8601; or ``updated_at``) is when
it last changed at the origin. Without ``updated``, the last time icsfeed saw the ticket
change stands in for it (its creation when it never changed). A ticket open with no update
for ``after_days`` is flagged on the day it went quiet that long; an update or closing
cancels the flag. A ticket stale since before the window the feed shows is flagged again
every ``REMIND_DAYS`` after that day, on the first such day in the window: the feed keeps
it in view, and the flag moves once every four weeks, not daily.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

from icsfeed.insights.base import VERDICT_ATTR, AccountContext, Detector, Reads, fmt_day, insight_event, start_dt
from icsfeed.insights.settings import StaleTicketSettings
from icsfeed.insights.verdicts import Verdict, flag_keys
from icsfeed.model import Event
from icsfeed.store import EventRow

NAME = "stale_tickets"
#: a flag whose day left the feed's window moves forward by this many days
REMIND_DAYS = 28

STATE_ATTRS = ("state", "status", "status_category")
UPDATED_ATTRS = ("updated", "updated_at")


def ticket_state(ev: Event) -> str | None:
    """The first state word the ticket carries, lower-cased (None: the source gives none)."""
    for name in STATE_ATTRS:
        value = ev.attrs.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    return None


def is_open(ev: Event, s: StaleTicketSettings) -> bool:
    """Open unless cancelled at the origin or any state word says closed."""
    if ev.status == "cancelled":
        return False
    closed = set(s.closed_states)
    words = [ev.attrs.get(n) for n in STATE_ATTRS]
    return not any(isinstance(w, str) and w.strip().lower() in closed for w in words)


def last_update(row: EventRow) -> datetime:
    """attrs.updated, else when icsfeed last saw a change, else the ticket's start."""
    ev = row.event
    created = start_dt(ev)
    for name in UPDATED_ATTRS:
        value = ev.attrs.get(name)
        if isinstance(value, str) and value.strip():
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return max(parsed, created)
    if row.sequence > 0:
        return max(datetime.fromtimestamp(row.last_modified, timezone.utc), created)
    return created


def tickets_read(ctx: AccountContext) -> Reads:
    """The rows :func:`open_tickets` reads: the tickets of ``lookback_days``."""
    s = ctx.settings.stale_tickets
    return Reads(ctx.midnight(ctx.today - timedelta(days=s.lookback_days)), ctx.now + timedelta(seconds=1),
                 frozenset(s.kinds))


def open_tickets(ctx: AccountContext) -> list[EventRow]:
    """The account's open tickets (within ``lookback_days``), oldest first."""
    s = ctx.settings.stale_tickets
    read = tickets_read(ctx)
    rows = ctx.history.rows(read.start, read.end, read.kinds)
    return [r for r in rows if is_open(r.event, s) and start_dt(r.event) <= ctx.now]


def open_now(ctx: AccountContext, listed: int) -> tuple[int, list[EventRow]]:
    """How many tickets are open, and the first ``listed`` of them (oldest first): from the
    verdicts of this refresh when every ticket has one (decoding only those listed)."""
    ids = ctx.verdicts.open_ids() if ctx.verdicts is not None else None
    if ids is None:
        rows = open_tickets(ctx)
        return len(rows), rows[:listed]
    found = ctx.history.store.events_by_id(ids[:listed]) if ids else {}
    return len(ids), [found[i] for i in ids[:listed] if i in found]


def horizon(ctx: AccountContext) -> date:
    return date.min  # every flag is recomputed: a stale ticket is a state, not history


def detect(ctx: AccountContext) -> list[Event]:
    """A flag per open ticket quiet for ``after_days``. With the last run's verdicts
    (:attr:`AccountContext.verdicts`, insights/verdicts.py), only the tickets whose version
    they do not hold are read; the flags of the others go to :attr:`AccountContext.kept`."""
    s = ctx.settings.stale_tickets
    verdicts = ctx.verdicts
    if verdicts is not None and verdicts.reusable:
        rows = verdicts.pending_rows(ctx.history.store)
        held = verdicts.held()
        ctx.kept.update(flag_keys(held))
        ctx.changes_at = min([ctx.changes_at, *(v.until for v in held)])
    else:
        read = tickets_read(ctx)
        rows = ctx.history.rows(read.start, read.end, read.kinds)
    out = []
    for row in rows:
        verdict, flag = ticket_verdict(ctx, s, row)
        if verdicts is not None:
            verdicts.note(row.id, verdict)
        if verdict.until < math.inf:
            ctx.changes_at = min(ctx.changes_at, verdict.until)
        if flag is not None:
            out.append(flag)
    return out


def ticket_verdict(ctx: AccountContext, s: StaleTicketSettings, row: EventRow) -> tuple[Verdict, Event | None]:
    """The detector's finding on one ticket, and its flag if it is stale."""
    ev = row.event
    if not is_open(ev, s):
        return Verdict(False), None
    begins = start_dt(ev)
    if begins > ctx.now:  # (read up to a second after now) not open yet: it is when it starts
        return Verdict(False, begins.timestamp()), None
    updated = last_update(row)
    quiet = timedelta(days=s.after_days)
    if ctx.now - updated < quiet:
        return Verdict(True, (updated + quiet).timestamp()), None
    stale_day = ctx.local_day(updated + quiet)
    shown = stale_day
    window = ctx.report_start(None)
    if shown < window:  # stale since before the window: shown again, every four weeks
        shown += timedelta(days=REMIND_DAYS * -(-(window - shown).days // REMIND_DAYS))
    created = ctx.local_day(ev.start)
    title = f"Stale ticket: {ev.title} (no update since {fmt_day(ctx.local_day(updated))})"
    state = ticket_state(ev)
    lines = [
        f"Opened {fmt_day(created)}; last update {fmt_day(ctx.local_day(updated))}"
        + (f"; state: {state}" if state else "") + ".",
        f"Open with no update for {s.after_days} days since {fmt_day(stale_day)}: the customer may well ask about it.",
    ]
    if shown != stale_day:
        lines.append(f"Still stale on {fmt_day(shown)}: shown again every {REMIND_DAYS // 7} weeks, "
                     "so that the feed keeps it in view.")
    flag = insight_event(
        ctx, NAME, f"{ctx.account.id}:{ev.source}:{ev.key}", title, shown, shown, "\n".join(lines),
        url=ev.url, attrs={"ticket_source": ev.source, "ticket_key": str(ev.key),
                           "updated": updated.isoformat(), "state": state,
                           VERDICT_ATTR: f"{title}|{shown.isoformat()}"},
    )
    return Verdict(True, flag=str(flag.key)), flag


DETECTOR = Detector(NAME, lambda s: s.stale_tickets.enabled, horizon, detect, lambda ctx: [tickets_read(ctx)])
