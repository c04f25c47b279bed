"""The scheduler: a job per source, one at a time, backoff after failures, config changes applied."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import open_env, write_config
from servers import wait_until

from icsfeed.live import LiveConfig
from icsfeed.scheduler import MAX_BACKOFF, PollScheduler, backoff_delay

NOW = datetime.now(timezone.utc)
CONFIG = """
accounts: [{id: acme, name: ACME}]
sources:
  - {id: good, type: file, interval: 1, jitter: 0, path: good.json, mapping: {kind: ticket, key: id, title: t, start: s, account: "=acme"}}
  - {id: bad, type: file, interval: 1, jitter: 0, path: missing.json, mapping: {kind: ticket, key: id, title: t, start: s}}
"""


def test_backoff_doubles_and_is_capped() -> None:
    minute = timedelta(minutes=1)
    assert [backoff_delay(minute, n) for n in range(4)] == [minute, 2 * minute, 4 * minute, 8 * minute]
    assert backoff_delay(minute, 50) == MAX_BACKOFF
    assert backoff_delay(timedelta(hours=3), 5) == timedelta(hours=3), "never shorter than the interval"


def test_scheduler_polls_backs_off_and_follows_config(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    (config_dir / "good.json").write_text(json.dumps([{"id": 1, "t": "x", "s": NOW.isoformat()}]))
    config, store = open_env(config_dir, tmp_path / "data")
    live = LiveConfig(config, check_every=0.2)
    scheduler = PollScheduler(live, store, config_check_seconds=0.3)
    scheduler.start()
    try:
        jobs = {job.id: job for job in scheduler.scheduler.get_jobs()}
        assert {"poll:good", "poll:bad", "config-watch", "render", "insights", "insights-due"} <= set(jobs)
        assert jobs["poll:good"].max_instances == 1 and jobs["poll:good"].coalesce is True

        wait_until(lambda: store.source_state("bad").consecutive_failures >= 2, 15, "two failed polls of bad")
        wait_until(lambda: store.get_feed("account/acme") is not None and "SUMMARY:🎫 x" in store.get_feed("account/acme").body.decode(), 15, "the ticket in the feed")
        state = store.source_state("bad")
        assert "file not found" in (state.last_error or "")
        # after n failures the next poll is interval * 2^n away, not one interval
        next_run = scheduler.scheduler.get_job("poll:bad").next_run_time
        expected = backoff_delay(timedelta(seconds=1), state.consecutive_failures)
        assert next_run - datetime.now(timezone.utc) > expected - timedelta(seconds=1.5)
        assert store.source_state("good").consecutive_failures == 0
        assert store.source_state("good").polls_total >= 2

        # removing a source from config removes its job; a new interval reschedules
        # written whole and renamed, as an editor saves: the watcher never reads half a file
        changed = config_dir / "a.yaml.new"
        changed.write_text(CONFIG.replace("interval: 1, jitter: 0, path: missing", "interval: 1, enabled: false, path: missing"))
        changed.replace(config_dir / "a.yaml")
        wait_until(lambda: scheduler.scheduler.get_job("poll:bad") is None, 15, "the disabled source's job removed")
        assert scheduler.scheduler.get_job("poll:good") is not None
    finally:
        scheduler.shutdown()
        store.close()


def test_shutdown_during_a_poll_finishes_it_and_returns(tmp_path: Path) -> None:
    """SIGTERM while a poll runs: the poll's transaction completes and shutdown does not hang."""
    import sys

    slow = f"""
accounts: [{{id: acme, name: ACME}}]
sources:
  - id: slow
    type: command
    interval: 60
    argv: ['{sys.executable}', '-c', 'import time, json; time.sleep(1.5); print(json.dumps([{{"id": 1, "t": "x", "s": "2026-11-20T10:00:00Z"}}]))']
    mapping: {{kind: ticket, key: id, title: t, start: s, account: "=acme"}}
"""
    config_dir = write_config(tmp_path / "config", {"a.yaml": slow})
    config, store = open_env(config_dir, tmp_path / "data")
    scheduler = PollScheduler(LiveConfig(config), store)
    scheduler.start()
    wait_until(lambda: scheduler._running == 1, 10, "the slow poll running")
    started = time.monotonic()
    scheduler.shutdown(timeout=10)
    assert time.monotonic() - started < 5
    assert store.source_state("slow").last_success is not None, "the poll in flight was stored"
    store.close()
