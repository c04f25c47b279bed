"""Insights: what an account manager must know before calling the customer.

Detectors (alert bursts, missed or irregular backups, stale tickets, the Monday summary)
read an account's stored history and return ⚠️ ``insight`` events. Each detector's flags
for one account are written as one complete poll of the source
``insight-<detector>:<account>`` with absence ``cancel``: a flag that no longer holds
becomes STATUS:CANCELLED, one that still holds keeps its UID and SEQUENCE. A poll that
changed an account's events marks the account due; ``poller.refresh_due_insights`` (run by
the scheduler every few seconds, and by ``icsfeed poll`` after its polls) calls
:func:`refresh_insights` once for all of them; the feeds they touch are marked dirty and
re-rendered by the next render. See docs/INSIGHTS.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone

from icsfeed.config import AccountConfig, Config
from icsfeed.insights import backups, bursts, summary, tickets
from icsfeed.insights.base import (
    SOURCE_PREFIX,
    AccountContext,
    Detector,
    History,
    account_zone,
    settle,
    source_id,
)
from icsfeed.insights.facts import AccountFacts
from icsfeed.insights.inputs import AccountInputs, inputs_of, reads_flags, recorded, still_holds
from icsfeed.insights.settings import InsightsSettings
from icsfeed.insights.verdicts import TicketVerdicts
from icsfeed.model import Event
from icsfeed.routing import affected_feeds
from icsfeed.store import Store, StoreError, Touched
from icsfeed.store.history import LastInputs, last_inputs, record_runs, same_events, split_unchanged

log = logging.getLogger(__name__)

#: in this order: the summary lists the flags the others raised in the same refresh
DETECTORS: tuple[Detector, ...] = (bursts.DETECTOR, backups.DETECTOR, tickets.DETECTOR, summary.DETECTOR)

__all__ = ["DETECTORS", "InsightsSettings", "refresh_all", "refresh_insights"]


def settings_of(config: Config) -> InsightsSettings:
    """The validated settings (config.py validates them; a raw dict is validated here)."""
    raw = config.insights
    if isinstance(raw, InsightsSettings):
        return raw
    return InsightsSettings.model_validate(raw or {})


def accounts_for(config: Config, account_keys: Iterable[str | None]) -> list[AccountConfig]:
    """The configured accounts that own any of these origin keys (case-insensitive)."""
    owner = config.account_by_key
    found = {owner[k.strip().lower()].id for k in account_keys if k and k.strip().lower() in owner}
    return [config.accounts[i] for i in sorted(found)]


def refresh_insights(config: Config, store: Store, account_keys: set[str | None], now: float) -> None:
    """Recompute every detector for the accounts owning these keys; mark changed feeds dirty."""
    touched = _refresh(config, store, accounts_for(config, account_keys), now)
    if touched:
        store.mark_dirty(affected_feeds(config, touched))


def refresh_all(config: Config, store: Store, now: float) -> None:
    """Recompute every account (e.g. on a timer, as days pass with no poll changing anything).

    Also cancels the flags of accounts no longer configured, which no refresh reaches.
    """
    touched = _refresh(config, store, list(config.accounts.values()), now)
    for source in store.source_states():
        if source.startswith(SOURCE_PREFIX) and source.partition(":")[2] not in config.accounts:
            touched |= store.apply_poll(source, [], absence="cancel", complete=True, now=now,
                                        previous_success=None).touched
    if touched:
        store.mark_dirty(affected_feeds(config, touched))


def _refresh(config: Config, store: Store, accounts: list[AccountConfig], now: float) -> set[Touched]:
    settings = settings_of(config)
    if not settings.enabled:  # only accounts that ever had flags have any to cancel: one query, not one each
        flagged = {source.partition(":")[2] for source in store.source_states() if source.startswith(SOURCE_PREFIX)}
        accounts = [account for account in accounts if account.id in flagged]
    touched: set[Touched] = set()
    for account in accounts:
        touched |= refresh_account(config, store, settings, account, now)
    return touched


def refresh_account(config: Config, store: Store, settings: InsightsSettings, account: AccountConfig,
                    now: float, *, reuse: bool = True) -> set[Touched]:
    """Run each detector for one account and store its flags; returns what changed.

    A detector whose inputs are those of its last run that changed nothing, on the same day
    and before any instant its verdicts hang on (insights/inputs.py), is not run again: its
    run is recorded and its flags kept. ``reuse`` False runs every detector (the reference).
    """
    when = datetime.fromtimestamp(now, timezone.utc)
    span = max(d.span_days(config, account, settings) for d in (bursts, backups, summary))
    tz = account_zone(config, account)
    first = when.astimezone(tz).date() - timedelta(days=span)
    lookback = datetime.combine(when.astimezone(tz).date() - timedelta(days=settings.stale_tickets.lookback_days),
                                time(0), tz)  # the range tickets.open_tickets asks for: read with the rest
    start, end = datetime.combine(first, time(0), tz), when + timedelta(days=1)
    wide, wide_kinds = (lookback, when + timedelta(seconds=1)), frozenset(settings.stale_tickets.kinds)
    history = History(store, account, start, end, wide=wide, wide_kinds=wide_kinds)
    inputs = AccountInputs(store, config, settings, account, (start, end), wide, wide_kinds)
    active = [d for d in DETECTORS if settings.enabled and d.enabled(settings)]
    names = {d.name for d in active}
    last = last_inputs(store, [source_id(d.name, account.id) for d in active]) if reuse and active else {}
    if not last:  # nothing to compare with: digest what the history reads, after the runs
        inputs.use(history)
    facts = AccountFacts(inputs, history, store)
    verdicts: TicketVerdicts | None = None  # the stale-ticket verdicts (made when first needed)
    touched: set[Touched] = set()
    # detectors whose flags are as stored: their runs recorded together, in one transaction at
    # the end (a refresh cut short records them as far as it got: the others run again next time)
    unchanged: list[str] = []
    kept: dict[str, LastInputs | None] = {}  # what the runs read; None: forget (flags not kept, or not run)
    try:
        for detector in DETECTORS:
            sid = source_id(detector.name, account.id)
            events: list[Event] = []
            stood_by: set[str] = set()  # stored flags the detector stands by unread (AccountContext.kept)
            partial = False  # whether only some of its stored flags were read (see below)
            if detector in active:
                ctx = AccountContext(config, settings, account, when, history, counted=facts.counted if reuse else None)
                read = inputs.digest(detector, ctx, sid) if reuse and last else None
                if read is not None and still_holds(last.get(sid), read[0], ctx):
                    unchanged.append(sid)  # the same rows, day and clock: the same flags
                    continue
                prev = last.get(sid)
                fact = facts.digest(detector, ctx, sid) if read is not None and prev is not None else None
                if read is not None and prev is not None and fact is not None \
                        and still_holds(prev, fact, ctx, facts=True):
                    unchanged.append(sid)  # only fields it does not read changed: the same flags
                    kept[sid] = LastInputs(recorded(read[0], fact), prev.run_at, prev.valid_until, prev.memo)
                    continue
                before = read  # what it reads but its own section, to tell whether its write changes it
                if reuse and read is None and reads_flags(detector, ctx):
                    history.load()
                    before = inputs.digest(detector, ctx, sid)
                if reuse and tickets.NAME in names and detector.name in (tickets.NAME, summary.NAME):
                    verdicts = verdicts or _verdicts(inputs, ctx, last.get(source_id(tickets.NAME, account.id)))
                    ctx.verdicts = verdicts
                # with the last run's verdicts, the stale-ticket detector makes again only the flags of
                # the tickets that changed; of its stored flags only those are read (after it ran)
                partial = detector.name == tickets.NAME and verdicts is not None and verdicts.reusable
                rows = [] if partial else history.own(sid)
                mine = ctx.stored = [r.row.event for r in rows]
                try:
                    events = detector.detect(ctx)
                except StoreError:
                    raise
                except Exception:  # one broken detector must not take the others' flags down
                    log.exception("insight detector %s failed for account %s; its flags are left as they were",
                                  detector.name, account.id)
                    if sid in last:
                        kept[sid] = None
                    continue
                stood_by = ctx.kept
                if partial:
                    rows = history.own_keyed(sid, [str(ev.key) for ev in events])
                    mine = [r.row.event for r in rows]
                events = settle(events, mine, ctx.today)  # passed days keep their text while the verdict holds
                keep_before = detector.horizon(ctx)
                fresh = {ev.key for ev in events}
                events += [ev for ev in mine if ev.key not in fresh and _day(ev) < keep_before]
            else:
                rows = history.own(sid)
                mine = [r.row.event for r in rows]
                if not any(ev.status != "cancelled" for ev in mine):
                    continue  # switched off and nothing to cancel: leave no trace
                read = before = None
            # the flags as stored (and, of a detector that read only some, no other one live):
            # a write would only record the run
            if same_events(events, rows) and (not partial or len(events) + len(stood_by) == inputs.live_flags(sid)):
                unchanged.append(sid)
                if reuse and detector in active and not last:  # (the history's own rows: as the run read them)
                    read = inputs.digest(detector, ctx, sid)
                if read is not None:
                    kept[sid] = _memo(inputs_of(recorded(read[0], facts.digest(detector, ctx, sid)), read[1], ctx),
                                      detector, verdicts)
                elif sid in last:
                    kept[sid] = None
                continue
            write, known = split_unchanged(events, rows)  # (the flags as stored: counted present, not rewritten)
            known.update(dict.fromkeys(stood_by))
            changes = store.apply_poll(sid, write, absence="cancel", complete=True, now=now, previous_success=None,
                                       known=known)
            if changes.changed:
                touched |= changes.touched
                history.forget(sid, write, known)  # (only the rows this write can have changed)
                inputs.forget(sid, history.flags())
                log.info("insights %s: %d new, %d updated, %d cancelled", sid, changes.new, changes.updated, changes.cancelled)
            # what the next run reads: the same rows and the flags just written (re-read). The same
            # run again writes nothing (settle keeps what it wrote) unless its write changed what it
            # reads besides its own section: so the first refresh after an import can skip too
            read = inputs.digest(detector, ctx, sid) if reuse and detector in active else None
            if read is not None and reads_flags(detector, ctx) and (before is None or before[2] != read[2]):
                read = None
            if read is not None:
                kept[sid] = _memo(inputs_of(recorded(read[0], facts.digest(detector, ctx, sid)), read[1], ctx),
                                  detector, verdicts)
            elif sid in last:
                kept[sid] = None
    except StoreError:  # what was left unwritten before the store failed is still recorded, if it can be
        with suppress(StoreError):
            record_runs(store, unchanged, now)
        raise
    record_runs(store, unchanged, now, kept)
    return touched


def _verdicts(inputs: AccountInputs, ctx: AccountContext, last: LastInputs | None) -> TicketVerdicts:
    """This refresh's stale-ticket verdicts: the last run's where they hold (same code,
    settings, account and local day: its digest base), the others worked out as needed."""
    base = hashlib.blake2b(inputs.base + tickets.NAME.encode() + b"\0" + ctx.today.isoformat().encode(),
                           digest_size=16).digest()
    return TicketVerdicts(inputs, tickets.tickets_read(ctx), base, source_id(tickets.NAME, ctx.account.id),
                          ctx.now.timestamp(), last.memo if last is not None else None)


def _memo(inputs: LastInputs, detector: Detector, verdicts: TicketVerdicts | None) -> LastInputs:
    """The stale-ticket detector's recorded inputs with its verdicts (the others' as they are)."""
    if detector.name != tickets.NAME or verdicts is None:
        return inputs
    return replace(inputs, memo=verdicts.memo())


def _day(ev: Event) -> date:
    return ev.start.date() if isinstance(ev.start, datetime) else ev.start
