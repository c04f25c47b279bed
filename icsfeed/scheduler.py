"""The scheduler: a job per source (interval, jitter, one at a time, backoff after failures),
a watcher that applies config changes, and one render job for every feed a poll or a push
(web/hooks.py) made dirty, cheap while nothing is.

Several schedulers (``icsfeed poll`` processes, ``icsfeed serve`` with its scheduler) can share
one store: each holds a member slot, a source is polled by the live member it hashes to
(:mod:`icsfeed.coordination`), under the source's lock, and only when the store says it is due
(:func:`poll_wait`), so N pollers poll each source as often as one would. Renders and insight
refreshes are claimed per feed and per account, so N pollers split them.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.config import Config
from icsfeed.coordination import Coordinator
from icsfeed.insights import refresh_all
from icsfeed.live import LiveConfig
from icsfeed.poller import poll_source, refresh_due_insights
from icsfeed.render import render_feeds
from icsfeed.store import SourceState, Store, StoreError

log = logging.getLogger(__name__)

#: longest wait after repeated failures
MAX_BACKOFF = timedelta(hours=1)
#: how often dirty feeds are rendered (the longest a poll's or a push's change waits to be served)
RENDER_EVERY_SECONDS = 2
#: between these full render passes (every feed's render key and window day checked), the
#: render job only asks the store whether a feed is dirty: cheap when nothing changed
FULL_RENDER_EVERY_SECONDS = 60
#: how often the insights of accounts changed by polls are recomputed
INSIGHTS_DUE_EVERY_SECONDS = 5


def backoff_delay(interval: timedelta, failures: int) -> timedelta:
    """Interval doubled per failure in a row, capped at MAX_BACKOFF (or the interval, if longer)."""
    if failures <= 0:
        return interval
    delay = interval * (2 ** min(failures, 16))
    return min(delay, max(MAX_BACKOFF, interval))


def poll_wait(state: SourceState, interval: timedelta, now: float, *, preferred: bool, since: float) -> float:
    """Seconds this poller should wait before polling a source (0: poll now), from the store's
    record of its last poll, whoever made it: due one interval after the last attempt (the
    backoff after failures in a row). The poller the source hashes to (``preferred``) polls
    from a little before that (its own timer runs a few milliseconds early or late); any other
    only half an interval after it, so it takes over from an owner that died or stalls, within
    1.5 intervals, but never competes with a live one. ``since``: when this poller started,
    the "last attempt" of a source never polled."""
    seconds = interval.total_seconds()
    last = state.last_attempt if state.last_attempt is not None else since
    due = last + (backoff_delay(interval, state.consecutive_failures).total_seconds()
                  if state.last_attempt is not None else 0.0)
    start = due - min(max(0.25, 0.1 * seconds), 30.0) if preferred else due + 0.5 * seconds
    return max(0.0, start - now)


class PollScheduler:
    """Runs polls in the background of ``icsfeed serve`` (or alone: ``icsfeed poll``)."""

    def __init__(self, live: LiveConfig, store: Store, *, config_check_seconds: float = 2.0,
                 coordinator: Coordinator | None = None) -> None:
        self.live = live
        self.store = store
        self._own_coordinator = coordinator is None
        self.coordinator = coordinator if coordinator is not None else Coordinator(store.engine)
        self._started_at = time.time()
        self.scheduler = BackgroundScheduler(timezone=timezone.utc,
                                             job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300})
        self._signatures: dict[str, tuple[float, float | None]] = {}
        self.config_check_seconds = config_check_seconds
        # shutdown must not wait inside APScheduler: it holds the job-store lock while waiting,
        # and a running poll needs that lock to reschedule itself
        self._stopping = threading.Event()
        self._running = 0
        self._idle = threading.Condition()
        #: (config, UTC day, monotonic time) of the last full render pass
        self._full_pass: tuple[Config | None, str, float] = (None, "", 0.0)
        live.on_change(self._config_changed)

    def start(self) -> None:
        self._started_at = time.time()
        self.coordinator.join()
        config = self.live.current()
        self._sync_jobs(config, first=True)
        self.scheduler.add_job(self.live.reload_if_changed, "interval", seconds=self.config_check_seconds,
                               id="config-watch")
        # polls only mark feeds dirty; one render job renders whatever is dirty (and windows that
        # moved to a new day), so ten polls touching the same feeds cost one render, not ten
        self.scheduler.add_job(self._render_if_needed, "interval", seconds=RENDER_EVERY_SECONDS, id="render")
        # polls only mark the accounts they changed; one job recomputes their insights, so an
        # account touched by ten sources is refreshed once, and no poll waits for it
        self.scheduler.add_job(self._refresh_due_insights, "interval", seconds=INSIGHTS_DUE_EVERY_SECONDS,
                               id="insights-due")
        # a backup that never comes changes no event: flags that depend on time passing
        # (missed runs, stale tickets, Monday's summary) are recomputed on the clock too
        self.scheduler.add_job(self._refresh_insights, "interval", hours=1, id="insights",
                               next_run_time=datetime.now(timezone.utc) + timedelta(minutes=1))
        self.scheduler.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop scheduling, then wait (bounded) for polls in flight to finish their transaction."""
        self._stopping.set()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))
        if self._own_coordinator:
            self.coordinator.close()  # gives up the member slot: the others take its share

    def _config_changed(self, config: Config) -> None:
        self._sync_jobs(config)
        self._render()

    def _sync_jobs(self, config: Config, first: bool = False) -> None:
        """One job per enabled source; changed intervals rescheduled, removed sources dropped."""
        wanted = {s.id: s for s in config.sources.values() if s.enabled}
        for source_id in list(self._signatures):
            if source_id not in wanted:
                self._remove(source_id)
        stagger = 0.0
        for source_id, source in wanted.items():
            signature = (source.interval.total_seconds(), source.jitter.total_seconds() if source.jitter else None)
            if self._signatures.get(source_id) == signature:
                continue
            if source_id in self._signatures:
                self._remove(source_id)
            jitter = signature[1] if signature[1] is not None else min(30.0, signature[0] * 0.1)
            self.scheduler.add_job(
                self._poll, "interval", args=[source_id], id=f"poll:{source_id}", seconds=signature[0],
                jitter=jitter or None, next_run_time=datetime.now(timezone.utc) + timedelta(seconds=stagger))
            stagger += 0.5
            self._signatures[source_id] = signature

    def _remove(self, source_id: str) -> None:
        try:
            self.scheduler.remove_job(f"poll:{source_id}")
        except JobLookupError:
            pass
        self._signatures.pop(source_id, None)

    def _poll(self, source_id: str) -> None:
        if self._stopping.is_set():
            return
        with self._idle:
            self._running += 1
        try:
            self._poll_and_reschedule(source_id)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _poll_and_reschedule(self, source_id: str) -> None:
        config = self.live.current()
        source = config.sources.get(source_id)
        if source is None:
            return
        now = time.time()
        try:
            with self.coordinator.source(source_id) as mine:
                if not mine:
                    log.debug("%s is being polled by another poller", source_id)
                    return
                wait = poll_wait(self.store.source_state(source_id), source.interval, now,
                                 preferred=self.coordinator.prefers(source_id), since=self._started_at)
                if wait > 0:  # polled by another poller lately, or its owner's to poll
                    self._check_again(source_id, now + wait)
                    return
                report = poll_source(config, self.store, source_id, now=now)
        except (StoreError, SQLAlchemyError) as exc:
            log.error("poll of %s not stored: %s", source_id, exc if isinstance(exc, StoreError) else _reason(exc))
            return
        if self._stopping.is_set():
            return
        job = self.scheduler.get_job(f"poll:{source_id}")
        if not report.ok and job is not None:
            delay = backoff_delay(source.interval, report.failures)
            when = datetime.now(timezone.utc) + delay
            job.modify(next_run_time=when)
            log.info("next poll of %s in %s (backoff)", source_id, delay)
        if job is not None and job.next_run_time is not None:
            self._note_next(source_id, job.next_run_time.timestamp())

    def _check_again(self, source_id: str, when: float) -> None:
        """Move this poller's next look at a source to ``when`` (not noted in the store: the
        poller that polls it notes its own next poll)."""
        if self._stopping.is_set():
            return
        job = self.scheduler.get_job(f"poll:{source_id}")
        if job is not None:
            job.modify(next_run_time=datetime.fromtimestamp(when, timezone.utc))

    def _note_next(self, source_id: str, when: float) -> None:
        try:
            self.store.set_next_poll(source_id, when)
        except StoreError as exc:
            log.error("cannot note next poll of %s: %s", source_id, exc)

    def _refresh_insights(self) -> None:
        """Every account's insights, hourly: by one of the pollers (the one the job hashes to)."""
        try:
            if not self.coordinator.prefers("job:insights"):
                return
            with self.coordinator.job("insights") as mine:
                if mine:
                    refresh_all(self.live.current(), self.store, time.time())
        except (StoreError, SQLAlchemyError) as exc:
            log.error("cannot store insights: %s", exc if isinstance(exc, StoreError) else _reason(exc))
            return
        self._render()

    def _refresh_due_insights(self) -> None:
        try:
            refresh_due_insights(self.live.current(), self.store, claims=self.coordinator)
        except (StoreError, SQLAlchemyError) as exc:
            log.error("cannot refresh insights: %s", exc if isinstance(exc, StoreError) else _reason(exc))

    def _render_if_needed(self) -> None:
        """The render job: a full pass when the config or the day changed or the last full one
        is FULL_RENDER_EVERY_SECONDS old; in between only when the store has a dirty feed (a
        poll's or a webhook's write, by this process or any other), else nothing but that probe."""
        config, day, at = self._full_pass
        current = self.live.current()
        if (current is config and day == datetime.now(timezone.utc).date().isoformat()
                and time.monotonic() - at < FULL_RENDER_EVERY_SECONDS):
            try:
                if not self.store.any_feed_dirty():
                    return
            except (StoreError, SQLAlchemyError) as exc:
                log.error("cannot read which feeds are dirty: %s", exc if isinstance(exc, StoreError) else _reason(exc))
                return
        self._render()

    def _render(self) -> None:
        started = time.perf_counter()
        config = self.live.current()
        day = datetime.now(timezone.utc).date().isoformat()
        try:
            with self.coordinator.feed_claims() as claim:  # other pollers render the feeds this one skips
                rendered = render_feeds(config, self.store, claim=claim)
        except (StoreError, SQLAlchemyError) as exc:
            log.error("cannot store rendered feeds: %s", exc if isinstance(exc, StoreError) else _reason(exc))
            return
        self._full_pass = (config, day, time.monotonic())
        if rendered:
            log.info("rendered %d feed(s) in %.2fs", len(rendered), time.perf_counter() - started)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0][:300]
