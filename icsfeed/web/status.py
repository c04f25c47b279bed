"""What the status page shows: each source's health, each feed's last render, the config.

Built from the store only (the scheduler may run in another process). A source is *stale*
when it has had no success for more than three intervals, and *failing* while its last
poll failed; both are said in words, not only in colour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from icsfeed.config import Config
from icsfeed.live import LiveConfig
from icsfeed.routing import all_feeds
from icsfeed.store import SourceState, Store, StoredFeed

STALE_INTERVALS = 3
#: source ids of insight events: ``insight-<detector>:<account>`` (icsfeed.insights)
INSIGHT_PREFIX = "insight-"


@dataclass(frozen=True)
class When:
    """A moment as the page prints it: exact UTC time and how long ago (or until)."""

    ts: float | None
    now: float

    @property
    def iso(self) -> str:
        if self.ts is None:
            return ""
        return datetime.fromtimestamp(self.ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    @property
    def relative(self) -> str:
        if self.ts is None:
            return "never"
        delta = self.ts - self.now
        text = _duration(abs(delta))
        return f"in {text}" if delta > 1 else f"{text} ago"


@dataclass
class SourceRow:
    id: str
    type: str
    name: str
    interval: str
    enabled: bool
    configured: bool
    state: SourceState
    events: int
    last_success: When
    last_attempt: When
    last_error_at: When
    next_poll: When
    problems: list[str] = field(default_factory=list)

    @property
    def css(self) -> str:
        if not self.configured:
            return "gone"
        if "failing" in self.problems:
            return "bad"
        return "warn" if self.problems else "ok"

    @property
    def health(self) -> str:
        if not self.configured:
            return "no longer configured"
        if not self.enabled:
            return "disabled"
        if self.state.last_attempt is None:
            return "waiting for the first poll"
        if not self.problems:
            return "ok"
        words = []
        if "failing" in self.problems:
            n = self.state.consecutive_failures
            words.append(f"FAILING ({n} in a row)")
        if "stale" in self.problems:
            words.append("STALE (no success for more than 3 intervals)")
        return ", ".join(words)


@dataclass
class DetectorRow:
    """An insight detector: it stores events per account under ``insight-<detector>:<account>``."""

    name: str
    accounts: int
    events: int
    last_run: When
    failures: int


@dataclass
class FeedRow:
    feed_id: str
    name: str
    stored: StoredFeed | None
    rendered: When
    #: the size budget report of the stored body (icsfeed.budget), None before one was kept
    budget: dict[str, Any] | None = None

    @property
    def budget_state(self) -> str:
        """What the size budget did to the feed, in words."""
        return budget_words(self.budget)


def budget_words(report: dict[str, Any] | None) -> str:
    """"within budget", or what was done to fit it ("rolled up 412 days of 26,103 events; window 30 of 90 days")."""
    if not report:
        return "unknown (rendered before budgets were reported)"
    if not report.get("over"):
        return "within budget"
    said = [f"over budget: {report['full_events']:,} events, {_size(report['full_bytes'])} in the window"]
    if report.get("rollups"):
        said.append(f"rolled up {report['rollups']:,} days of {report['rolled_events']:,} events")
    if report.get("shrunk"):
        said.append(f"window shrunk to {report['window_back_days']} of {report['configured_back_days']} days back")
    if report.get("left_out"):
        said.append(f"{report['left_out']:,} events ahead left out")
    return "; ".join(said)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


@dataclass
class StatusPage:
    sources: list[SourceRow]
    detectors: list[DetectorRow]
    feeds: list[FeedRow]
    config_error: str | None
    config_error_at: When
    config_loaded_at: When
    now: When

    @property
    def problem_count(self) -> int:
        return sum(1 for s in self.sources if s.problems)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def build_status(live: LiveConfig, store: Store, now: float | None = None) -> StatusPage:
    config: Config = live.current()
    now = time.time() if now is None else now
    states = store.source_states()
    counts = store.event_counts()
    rows: list[SourceRow] = []
    detector_ids = {s for s in set(states) | set(counts) if s.startswith(INSIGHT_PREFIX) and ":" in s}
    others = sorted((set(states) | set(counts)) - set(config.sources) - detector_ids)
    for source_id in [*config.sources, *others]:
        source = config.sources.get(source_id)
        state = states.get(source_id) or SourceState(source=source_id)
        row = SourceRow(
            id=source_id, type=source.type if source else "?", name=(source.name or "") if source else "",
            interval=_duration(source.interval.total_seconds()) if source else "",
            enabled=source.enabled if source else False, configured=source is not None, state=state,
            events=counts.get(source_id, 0), last_success=When(state.last_success, now),
            last_attempt=When(state.last_attempt, now), last_error_at=When(state.last_error_at, now),
            next_poll=When(state.next_poll, now))
        if source is not None and source.enabled and state.last_attempt is not None:
            if state.consecutive_failures > 0:
                row.problems.append("failing")
            if _stale(state, source.interval.total_seconds(), now):
                row.problems.append("stale")
        rows.append(row)
    stored = {f.feed_id: f for f in store.feeds_summary()}
    detectors = _detectors(detector_ids, states, counts, now)
    reports = store.feed_reports()
    feeds = [FeedRow(feed_id=spec.feed_id, name=spec.name, stored=stored.get(spec.feed_id),
                     rendered=When(stored[spec.feed_id].rendered_at if spec.feed_id in stored else None, now),
                     budget=reports.get(spec.feed_id))
             for spec in all_feeds(config)]
    return StatusPage(sources=rows, detectors=detectors, feeds=feeds, config_error=live.last_error,
                      config_error_at=When(live.last_error_at, now), config_loaded_at=When(live.loaded_at, now),
                      now=When(now, now))


def _stale(state: SourceState, interval: float, now: float) -> bool:
    """No success for more than three intervals.

    A source that never succeeded has no "since": the store keeps no first-attempt time,
    so it counts as stale once it has failed more than three times in a row.
    """
    if state.last_success is None:
        return state.consecutive_failures > STALE_INTERVALS
    return now - state.last_success > STALE_INTERVALS * interval


def _detectors(ids: set[str], states: dict[str, SourceState], counts: dict[str, int], now: float) -> list[DetectorRow]:
    """One row per detector, summed over its accounts."""
    by_name: dict[str, list[str]] = {}
    for source_id in ids:
        by_name.setdefault(source_id[len(INSIGHT_PREFIX):].partition(":")[0], []).append(source_id)
    rows = []
    for name, members in sorted(by_name.items()):
        successes = [st.last_success for m in members if (st := states.get(m)) and st.last_success is not None]
        rows.append(DetectorRow(
            name=name, accounts=len(members), events=sum(counts.get(m, 0) for m in members),
            last_run=When(max(successes) if successes else None, now),
            failures=sum(st.consecutive_failures for m in members if (st := states.get(m)))))
    return rows
