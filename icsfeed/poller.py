"""One poll: fetch from a source, apply to the store in one transaction, mark what changed.

A source that fails leaves its last good events in place; the error (with secrets taken out
by :func:`icsfeed.redact.redact`, like every skipped reason) is recorded for the status page
and the scheduler's backoff. Events are cut to ``feeds.max_title``/``max_detail`` before
they are stored.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import marshal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from icsfeed import __version__
from icsfeed.config import Config
from icsfeed.insights import refresh_insights
from icsfeed.model import Event
from icsfeed.redact import redact, secret_forms
from icsfeed.render import fragment_renderer, render_feeds
from icsfeed.routing import affected_feeds
from icsfeed.sources import AnswerUnchanged, Source, SourceError, load_source_class
from icsfeed.sources.mapping import EventStream, MappedSource
from icsfeed.store import Store, StoreError
from icsfeed.store.database import storable_text
from icsfeed.store.events import StoredRecords

if TYPE_CHECKING:
    from icsfeed.coordination import Coordinator

log = logging.getLogger(__name__)

#: accounts whose insights one poller recomputes per claim (the others take the next ones)
INSIGHT_BATCH = 25
#: how long ``poll --once`` waits for other pollers' polls in flight before it renders
OTHERS_WAIT_SECONDS = 600.0


@dataclass
class PollReport:
    """What a poll of one source did, as `icsfeed poll` prints it."""

    source: str
    ok: bool
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    cancelled: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    failures: int = 0
    seconds: float = 0.0
    #: why this run left the source to another poller (None: polled here)
    elsewhere: str | None = None

    def line(self) -> str:
        if self.elsewhere:
            return f"{self.source}: not polled here: {self.elsewhere}"
        if not self.ok:
            return f"{self.source}: ERROR ({self.failures} in a row): {self.error}"
        text = (f"{self.source}: {self.new} new, {self.updated} updated, {self.closed} closed, "
                f"{self.cancelled} cancelled, {self.unchanged} unchanged")
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text + f" ({self.seconds:.2f}s)"


def secrets_of(settings: BaseModel) -> set[str]:
    """Every secret value in a source's settings (SecretStr anywhere in the tree), in the
    forms it may come back in. ``Config.secrets`` holds these too, and more (every
    ``${VAR}`` value, keys named as such); this covers settings made without a config."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.update(secret_forms(value.get_secret_value()))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(settings)
    return found


def source_secrets(config: Config, source_id: str) -> set[str]:
    """What the messages of a source's poll must not show."""
    return set(config.secrets) | secrets_of(config.source_settings[source_id])


def build_source(config: Config, source_id: str) -> Source:
    cfg = config.sources[source_id]
    cls = load_source_class(cfg.type)
    return cls(source_id, config.source_settings[source_id], config.source_context())


def answer_fingerprint(config: Config, source_id: str) -> bytes:
    """What a source's events depend on besides the origin's raw answer: its settings and
    absence policy, the kinds, the text caps, the timezones, icsfeed's version, and the year
    (a birthday's detail counts the years). An answer digest made under another fingerprint
    never matches, so a change to any of these maps the answer again."""
    cfg = config.sources[source_id]
    context = config.source_context()
    shape = {
        "source": cfg.model_dump(mode="json"),
        "settings": config.source_settings[source_id].model_dump(mode="json"),
        "kinds": {name: [info.all_day, info.duration_seconds] for name, info in sorted(context.kinds.items())},
        "timezones": [context.default_timezone, sorted(context.account_timezones.items())],
        "caps": [config.feeds.max_title, config.feeds.max_detail, sorted(config.kinds)],
        "version": __version__, "year": date.today().year,
    }
    return json.dumps(shape, sort_keys=True, default=str).encode()


def poll_source(config: Config, store: Store, source_id: str, *, now: float | None = None,
                answer_changed: Callable[[], None] | None = None) -> PollReport:
    """Poll one source and apply the result; never raises for a failing source.

    A full-dump source whose raw answer is the one the stored events came from (its digest
    is kept with the source's state by the poll that stored them) costs a read and a hash:
    mapping, checking and the upsert would all give the same rows again. A failed poll
    clears that digest, so the next one is applied in full. ``answer_changed`` is called
    when the answer has events to write, before the store writes them.
    """
    cfg = config.sources[source_id]
    secrets = source_secrets(config, source_id)
    started = time.monotonic()
    now = now if now is not None else time.time()
    state = store.source_state(source_id)
    try:
        source = build_source(config, source_id)
        source.cursor = state.cursor
        since = datetime.fromtimestamp(state.last_success, timezone.utc) if state.last_success else None
        source.fingerprint = answer_fingerprint(config, source_id)
        source.known_digest = state.answer_digest if not (source.incremental and since is not None) else None
        if source.known_digest is not None:  # same rule: after a failure or a push, map every record
            source.stored_records = functools.partial(_stored_records, store, source, source.known_digest)
        source.stored_key = storable_text
        if isinstance(source, MappedSource):  # a first import's records mapped as the store takes them
            source.stream_events = True
        try:
            fetched = source.fetch(since)
            if isinstance(fetched, EventStream):
                checked: _CheckedStream | None = _CheckedStream(config, source, fetched)
                events: Iterable[Event] = checked.started()  # the first record mapped here: its failure is the source's
            else:
                checked, events = None, _checked(config, source, fetched)
        except AnswerUnchanged:
            return _unchanged(store, source_id, state, source.known_digest or "", now, started, secrets)
    except Exception as exc:  # the source failed as a whole: keep the last good events
        return _source_failed(store, source_id, exc, secrets, now, started)

    elapsed = time.monotonic() - started
    if answer_changed is not None and (checked.any if checked is not None else events):  # something to write
        answer_changed()
    complete = not (source.incremental and since is not None)
    known = source.unchanged_keys if complete else {}  # records not mapped: present and unchanged

    def result() -> dict[str, Any]:  # once every event is taken (a stream's skipped are known then)
        fetched = checked.count if checked is not None else len(events)  # type: ignore[arg-type]
        return {"fetched": fetched + len(known), "skipped": len(source.skipped),
                "skipped_examples": [redact(s, secrets)[:300] for s in source.skipped[:5]]}

    def duration() -> float:  # a stream maps as it is stored: its fetch ends with the last event
        return elapsed if checked is None else time.monotonic() - started

    try:
        changes = store.apply_poll(
            source_id, events, absence=cfg.absence or source.absence, complete=complete, now=now,
            previous_success=state.last_success, cursor=source.cursor, result=result, duration=duration,
            affected=lambda touched: affected_feeds(config, touched),  # marked dirty in the poll's transaction
            fragment=fragment_renderer(config),  # VEVENTs rendered as they are written
            answer_digest=source.answer_digest if complete else None,
            record_digests=source.record_digests, known=known,
            stored=source.stored_known if complete else None, expect_answer_digest=source.known_digest)
    except StoreError as exc:  # the store refused the poll: a failure like any other (backoff, /status)
        return _store_refused(store, source_id, redact(str(exc), secrets), now, elapsed, state.consecutive_failures)
    except _StreamFailed as failed:  # mapping a record raised past its own checks: nothing was written
        return _source_failed(store, source_id, failed.error, secrets, now, started)
    elapsed = duration()
    if changes.present is not None and complete and source.answer_digest and isinstance(source, MappedSource):
        _keep_records(source, source.answer_digest, changes.present)
    for key, reason in changes.skipped:  # records the store cannot hold: skipped like the source's own
        source.skip(key, reason)
    if changes.touched:  # recomputed by refresh_due_insights, once however many polls touched them
        try:
            store.mark_insights_due(t.account_key for t in changes.touched)
        except StoreError as exc:  # the events are stored; the hourly refresh of all accounts catches up
            log.error("cannot mark insights after a poll of %s: %s", source_id, exc)
    report = PollReport(source_id, ok=True, new=changes.new, updated=changes.updated,
                        unchanged=changes.unchanged, closed=changes.closed, cancelled=changes.cancelled,
                        skipped=[redact(s, secrets) for s in source.skipped], seconds=elapsed)
    log.info("poll %s", report.line())
    return report


#: the file in a source's state directory that keeps the present rows a poll left (``_keep_records``)
RECORDS_STATE = "records.marshal"
_RECORDS_FORMAT = 1


def _stored_records(store: Store, source: Source, answer_digest: str) -> StoredRecords:
    """What ``store.record_digests`` gives, read from the file the poll that stored
    ``answer_digest`` left (``_keep_records``) when there is one: the rows a poll leaves are a
    function of its answer and settings, which that digest names, and every other writer of
    the source's events clears or replaces the digest in its own transaction; the store takes
    the poll only if the digest is still the stored one (``apply_poll(expect_answer_digest=)``).
    A 1% poll of 100,000 records then reads no stored row but the ones it maps."""
    kept = _kept_records(source, answer_digest)
    return kept if kept is not None else store.record_digests(source.id)


def _kept_records(source: Source, answer_digest: str) -> StoredRecords | None:
    try:
        raw = (source.state_dir / RECORDS_STATE).read_bytes()
        version, digest, pairs, others = marshal.loads(raw)
    except (OSError, ValueError, EOFError, TypeError):  # none kept, or not readable: read the store
        return None
    if version != _RECORDS_FORMAT or digest != answer_digest or not isinstance(pairs, dict):
        return None
    kept = StoredRecords(pairs)
    kept.others = tuple(others)
    return kept


def _keep_records(source: Source, answer_digest: str, present: StoredRecords) -> None:
    """Keep a stored poll's present rows for the next poll of the source (after its commit)."""
    try:
        # replaced whole, but not synced to the disk (an fsync of 4 MB a source cost a poll
        # seconds of wall time behind other writes): a file lost or cut short by a crash is one
        # marshal cannot read, or one of an older answer digest; either way the next poll reads
        # the store
        payload = marshal.dumps((_RECORDS_FORMAT, answer_digest, dict(present), list(present.others)))
        source.write_state(RECORDS_STATE, payload, sync=False)
    except (OSError, ValueError) as exc:  # the next poll reads the store instead
        log.warning("cannot keep the stored records of %s: %s", source.id, exc)
        (source.state_dir / RECORDS_STATE).unlink(missing_ok=True)


def _source_failed(store: Store, source_id: str, exc: BaseException, secrets: set[str], now: float,
                   started: float) -> PollReport:
    """Record a poll whose source failed as a whole (its last good events stay) and report it."""
    if isinstance(exc, SourceError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
        log.debug("source %s raised", source_id, exc_info=exc)
    message = redact(message, secrets)
    elapsed = time.monotonic() - started
    failures = store.record_failure(source_id, message, now, elapsed)
    log.warning("poll of %s failed (%d in a row): %s", source_id, failures, message)
    return PollReport(source_id, ok=False, error=message, failures=failures, seconds=elapsed)


class _StreamFailed(Exception):
    """An error of the source's own code while the store took a stream's events (the poll
    is rolled back; it is recorded as the source's failure, as if it had come from fetch)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _CheckedStream:
    """:func:`_checked` of an :class:`EventStream`, one event at a time: the same events and
    the same skipped, reported in the same order as a list's (the stream's own, then these)
    once the last event is taken."""

    def __init__(self, config: Config, source: Source, stream: EventStream) -> None:
        self.config, self.source, self.stream = config, source, stream
        self.count = 0
        self.any = False
        self._skipped: list[tuple[object, str]] = []

    def started(self) -> Iterator[Event]:
        """The checked events, the first one already mapped (so that whether there is any is
        known before the store is called, and a failure of the first record is fetch's)."""
        events = self._events()
        first = next(events, None)
        if first is None:
            return iter(())
        self.any = True
        return itertools.chain((first,), events)

    def _events(self) -> Iterator[Event]:
        max_title, max_detail = self.config.feeds.max_title, self.config.feeds.max_detail
        kinds, source_id, skipped = self.config.kinds, self.source.id, self._skipped
        taken = iter(self.stream)
        while True:
            try:
                ev = next(taken, None)
            except Exception as exc:  # not the store's: the source's, as fetch's would be
                raise _StreamFailed(exc) from exc
            if ev is None:
                break
            if not isinstance(ev, Event):
                skipped.append((ev, "not an Event"))
            elif ev.source != source_id:
                skipped.append((ev.key, f"event claims source {ev.source!r}"))
            elif ev.kind not in kinds:
                skipped.append((ev.key, f"unknown kind {ev.kind!r}"))
            elif len(str(ev.key)) > 500:
                skipped.append((str(ev.key)[:60], "key longer than 500 characters"))
            else:
                self.count += 1
                yield ev.bounded(max_title, max_detail)
        for what, reason in skipped:
            self.source.skip(what, reason)


def _unchanged(store: Store, source_id: str, state: Any, digest: str, now: float, started: float,
               secrets: set[str]) -> PollReport:
    """Record a poll whose answer is the stored one: the events stay as they are."""
    elapsed = time.monotonic() - started
    last = dict(state.last_result or {})
    last["answer_unchanged"] = True
    try:
        store.record_unchanged(source_id, now, result=last, duration=elapsed, answer_digest=digest)
    except StoreError as exc:
        return _store_refused(store, source_id, redact(str(exc), secrets), now, elapsed, state.consecutive_failures)
    report = PollReport(source_id, ok=True, unchanged=int(last.get("fetched") or 0), seconds=elapsed)
    log.info("poll %s (answer unchanged)", report.line())
    return report


def _store_refused(store: Store, source_id: str, message: str, now: float, elapsed: float,
                   failures_before: int) -> PollReport:
    """Record a poll the store refused (if the store takes even that) and report it."""
    try:
        failures = store.record_failure(source_id, message, now, elapsed)
    except StoreError as exc:
        log.error("cannot record the failed poll of %s: %s", source_id, exc)
        failures = failures_before + 1
    log.error("poll of %s not stored: %s (%d in a row)", source_id, message, failures)
    return PollReport(source_id, ok=False, error=message, failures=failures, seconds=elapsed)


def refresh_due_insights(config: Config, store: Store, now: float | None = None, *,
                         claims: Coordinator | None = None) -> int:
    """Recompute the insight events of the accounts polls changed since the last refresh.

    Polls only mark accounts (``Store.mark_insights_due``): ten sources touching the same
    thousand accounts cost a thousand refreshes here, not ten thousand inside the polls.
    With ``claims`` (pollers side by side), accounts are claimed INSIGHT_BATCH at a time and
    those another poller holds are left to it, so N pollers split the work.
    Returns the number of account keys refreshed; on a storage error they stay due.
    """
    due = store.insights_due()
    if not due:
        return 0
    when = now if now is not None else time.time()
    if claims is None:
        return _refresh_keys(config, store, due, when)
    by_account: dict[str, list[str]] = {}
    for key in due:  # claimed per configured account: its keys are refreshed together
        by_account.setdefault(_owner_id(config, key), []).append(key)
    names = sorted(by_account)
    batch = max(1, min(INSIGHT_BATCH, len(names) // 8))  # a few accounts: small claims, so all pollers get some
    done = 0
    with claims.locks() as locks:
        for start in range(0, len(names), batch):
            claimed = [n for n in names[start:start + batch] if locks.try_lock("account", n)]
            if not claimed:
                continue
            fresh = store.insights_due()  # read again under the claim: another poller may have just done them
            keys = {k: fresh[k] for n in claimed for k in by_account[n] if k in fresh}
            refreshed = _refresh_keys(config, store, keys, when) if keys else 0
            for n in claimed:
                locks.unlock("account", n)
            if refreshed < 0:
                break
            done += refreshed
    return done


def _owner_id(config: Config, key: str) -> str:
    """The id of the configured account owning an origin key ("" for none): what is claimed."""
    account = config.account_by_key.get(key.strip().lower())
    return account.id if account is not None else ""


def _refresh_keys(config: Config, store: Store, due: dict[str, int], now: float) -> int:
    """Refresh these due keys and clear them; -1 when the store refused (they stay due)."""
    try:
        refresh_insights(config, store, set(due), now)
    except StoreError as exc:  # the keys stay due: the next run retries
        log.error("cannot store insights: %s", exc)
        return -1
    except Exception:  # a detector bug: logged; the keys are cleared so that it is not retried in a loop
        log.exception("insights failed")
    store.clear_insights_due(due)
    return len(due)


def _checked(config: Config, source: Source, fetched: Iterable[Event]) -> list[Event]:
    """Events that can be stored; anything else is skipped with a reason."""
    events = []
    max_title, max_detail = config.feeds.max_title, config.feeds.max_detail
    for ev in fetched:
        if not isinstance(ev, Event):
            source.skip(ev, "not an Event")
        elif ev.source != source.id:
            source.skip(ev.key, f"event claims source {ev.source!r}")
        elif ev.kind not in config.kinds:
            source.skip(ev.key, f"unknown kind {ev.kind!r}")
        elif len(str(ev.key)) > 500:
            source.skip(str(ev.key)[:60], "key longer than 500 characters")
        else:  # cut here, not only when rendered: the store never keeps a 50 MB detail
            events.append(ev.bounded(max_title, max_detail))
    return events


def poll(config: Config, store: Store, source_ids: Iterable[str] | None = None, *,
         coordinator: Coordinator | None = None, since: float | None = None,
         helpers: int = 0) -> list[PollReport]:
    """Poll sources in turn (all enabled ones by default), then re-render the changed feeds.

    With ``coordinator`` (``icsfeed poll --once``), pollers running at the same time split
    the work: a source another poller is polling right now, or has polled since this run
    started (``since``, default now), is left to it; so are the feeds and accounts another
    one renders or refreshes. ``helpers``: that many such pollers started here
    (icsfeed/parallel.py) to use the other cores; their reports stand in for the sources
    they polled.
    """
    ids = list(source_ids) if source_ids else [s.id for s in config.sources.values() if s.enabled]
    started = since if since is not None else time.time()
    began = time.perf_counter()
    team: list[Any] = []

    def need_help() -> None:
        """Start the helpers once there is work to share (an unchanged poll never pays their start)."""
        if not team and helpers > 0 and coordinator is not None and not source_ids:
            from icsfeed.parallel import Helpers

            team.append(Helpers(config.config_dir, config.data_dir, started, helpers))

    try:
        reports = _poll_all(config, store, ids, coordinator, started, began, need_help)
    finally:
        helped = team[0].finish() if team else []
    by_source = {r["source"]: r for r in helped}
    return [PollReport(**by_source.pop(r.source)) if r.elsewhere and r.source in by_source else r for r in reports]


#: due accounts or dirty feeds from which ``poll --once`` shares the work with its helpers
HELP_FROM = 8


def _poll_all(config: Config, store: Store, ids: list[str], coordinator: Coordinator | None, started: float,
              began: float, need_help: Callable[[], None]) -> list[PollReport]:
    reports = []
    began_cpu = time.process_time()
    busy: list[str] = []  # sources another poller was polling when this one came to them
    for source_id in ids:
        try:
            if coordinator is None:
                reports.append(poll_source(config, store, source_id))
                continue
            with coordinator.source(source_id) as mine:
                last = store.source_state(source_id).last_attempt if mine else None
                if not mine:
                    busy.append(source_id)
                    reports.append(PollReport(source_id, ok=True, elsewhere="another poller is polling it"))
                elif last is not None and last >= started:
                    reports.append(PollReport(source_id, ok=True, elsewhere="another poller polled it during this run"))
                else:
                    # this origin's answer changed: the others' may too; helpers started before
                    # the write, so that they take the next sources while this one is stored
                    reports.append(poll_source(config, store, source_id, answer_changed=need_help))
                    if reports[-1].new or reports[-1].updated or reports[-1].seconds > 1.0:
                        need_help()
        except StoreError as exc:
            message = redact(str(exc), source_secrets(config, source_id))
            log.error("cannot store poll of %s: %s", source_id, message)
            reports.append(PollReport(source_id, ok=False, error=message))
    if coordinator is not None and busy:
        # the feeds those polls change would be rendered twice (now by this poller, then again
        # by that one): wait for them, then render together with the others, splitting the feeds
        _wait_for_polls(coordinator, busy, timeout=OTHERS_WAIT_SECONDS)
    polled, polled_cpu = time.perf_counter(), time.process_time()
    refreshed = 0
    try:
        if coordinator is not None and len(store.insights_due()) >= HELP_FROM:
            need_help()
        refreshed = refresh_due_insights(config, store, claims=coordinator)
        if coordinator is not None:  # render once the others' refreshes are stored too
            _wait_for_insights(config, store, coordinator, timeout=OTHERS_WAIT_SECONDS)
    except StoreError as exc:
        log.error("cannot refresh insights: %s", exc)
    insights_done, insights_cpu = time.perf_counter(), time.process_time()
    feeds: list[str] = []
    try:
        if coordinator is None:
            feeds = render_feeds(config, store)
        else:
            if _dirty_feeds(store) >= HELP_FROM:
                need_help()
            with coordinator.feed_claims() as claim:
                feeds = render_feeds(config, store, claim=claim)
    except StoreError as exc:
        log.error("cannot store rendered feeds: %s", exc)
    # (wall clock, then this process's CPU: on a shared machine the one to compare)
    log.info("poll stages: %d sources in %.2f s, insights of %d account keys in %.2f s, %d feeds rendered in %.2f s; "
             "CPU %.2f s, %.2f s, %.2f s", len(reports), polled - began, refreshed, insights_done - polled, len(feeds),
             time.perf_counter() - insights_done, polled_cpu - began_cpu, insights_cpu - polled_cpu,
             time.process_time() - insights_cpu)
    return reports


def _dirty_feeds(store: Store) -> int:
    """How many stored feeds are dirty (0 when the store cannot tell: the render will say why)."""
    try:
        return sum(1 for dirty, *_ in store.feed_render_generations().values() if dirty)
    except Exception:  # only a hint for starting helpers
        return 0


def _wait_for_insights(config: Config, store: Store, coordinator: Coordinator, timeout: float) -> None:
    """Until no account due for insights is claimed by another poller (its refresh is
    stored, and the feeds it marks dirty are rendered once, after it), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = store.insights_due()
        if not due:
            return
        busy = False
        with coordinator.locks() as locks:
            for name in sorted({_owner_id(config, key) for key in due}):
                if not locks.try_lock("account", name):
                    busy = True
                    break
                locks.unlock("account", name)
        if not busy:
            return
        time.sleep(0.05)


def _wait_for_polls(coordinator: Coordinator, source_ids: list[str], timeout: float) -> None:
    """Until no other poller holds these sources (their polls are stored), or ``timeout``."""
    deadline = time.monotonic() + timeout
    for source_id in source_ids:
        while time.monotonic() < deadline:
            try:
                with coordinator.source(source_id) as free:
                    if free:
                        break
            except StoreError:
                return
            time.sleep(0.1)
