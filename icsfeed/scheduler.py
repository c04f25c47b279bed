"""The scheduler: a job per source (interval, jitter, one at a time, backoff after failures),
a watcher that applies config changes, and one render job for every feed a poll made dirty."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from icsfeed.config import Config
from icsfeed.insights import refresh_all
from icsfeed.live import LiveConfig
from icsfeed.poller import poll_source, refresh_due_insights
from icsfeed.render import render_feeds
from icsfeed.store import Store, StoreError

log = logging.getLogger(__name__)

#: longest wait after repeated failures
MAX_BACKOFF = timedelta(hours=1)
#: how often dirty feeds are rendered (the longest a poll's change waits to be served)
RENDER_EVERY_SECONDS = 2
#: how often the insights of accounts changed by polls are recomputed
INSIGHTS_DUE_EVERY_SECONDS = 5


def backoff_delay(interval: timedelta, failures: int) -> timedelta:
    """Interval doubled per failure in a row, capped at MAX_BACKOFF (or the interval, if longer)."""
    if failures <= 0:
        return interval
    delay = interval * (2 ** min(failures, 16))
    return min(delay, max(MAX_BACKOFF, interval))


class PollScheduler:
    """Runs polls in the background of ``icsfeed serve`` (or alone: ``icsfeed poll``)."""

    def __init__(self, live: LiveConfig, store: Store, *, config_check_seconds: float = 2.0) -> None:
        self.live = live
        self.store = store
        self.scheduler = BackgroundScheduler(timezone=timezone.utc,
                                             job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300})
        self._signatures: dict[str, tuple[float, float | None]] = {}
        self.config_check_seconds = config_check_seconds
        # shutdown must not wait inside APScheduler: it holds the job-store lock while waiting,
        # and a running poll needs that lock to reschedule itself
        self._stopping = threading.Event()
        self._running = 0
        self._idle = threading.Condition()
        live.on_change(self._config_changed)

    def start(self) -> None:
        config = self.live.current()
        self._sync_jobs(config, first=True)
        self.scheduler.add_job(self.live.reload_if_changed, "interval", seconds=self.config_check_seconds,
                               id="config-watch")
        # polls only mark feeds dirty; one render job renders whatever is dirty (and windows that
        # moved to a new day), so ten polls touching the same feeds cost one render, not ten
        self.scheduler.add_job(self._render, "interval", seconds=RENDER_EVERY_SECONDS, id="render")
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
        try:
            report = poll_source(config, self.store, source_id)
        except StoreError as exc:
            log.error("poll of %s not stored: %s", source_id, exc)
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

    def _note_next(self, source_id: str, when: float) -> None:
        try:
            self.store.set_next_poll(source_id, when)
        except StoreError as exc:
            log.error("cannot note next poll of %s: %s", source_id, exc)

    def _refresh_insights(self) -> None:
        try:
            refresh_all(self.live.current(), self.store, time.time())
        except StoreError as exc:
            log.error("cannot store insights: %s", exc)
            return
        self._render()

    def _refresh_due_insights(self) -> None:
        try:
            refresh_due_insights(self.live.current(), self.store)
        except StoreError as exc:
            log.error("cannot refresh insights: %s", exc)

    def _render(self) -> None:
        started = time.perf_counter()
        try:
            rendered = render_feeds(self.live.current(), self.store)
        except StoreError as exc:
            log.error("cannot store rendered feeds: %s", exc)
            return
        if rendered:
            log.info("rendered %d feed(s) in %.2fs", len(rendered), time.perf_counter() - started)
