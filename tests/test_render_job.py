"""The scheduler's render job: a pushed change is rendered at the next run (every
RENDER_EVERY_SECONDS), and a run while nothing is dirty only asks the store (no full pass)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from icsfeed import scheduler as scheduler_module
from icsfeed.live import LiveConfig
from icsfeed.model import Event, seen_until
from icsfeed.render import render_feeds
from icsfeed.routing import affected_feeds
from icsfeed.scheduler import PollScheduler

CONFIG = """
accounts: [{id: acme, name: ACME, keys: [acme]}, {id: globex, name: Globex, keys: [globex]}]
teams: [{id: ops, name: Ops, accounts: "*"}]
insights: {enabled: false}
"""


def test_idle_runs_only_probe_and_a_push_is_rendered_at_the_next_run(make_env: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config, store = make_env({"c.yaml": CONFIG})
    passes: list[list[str]] = []

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        rendered = render_feeds(*args, **kwargs)
        passes.append(rendered)
        return rendered

    monkeypatch.setattr(scheduler_module, "render_feeds", counted)
    job = PollScheduler(LiveConfig(config), store)  # not started: the test runs the job itself
    try:
        job._render_if_needed()
        assert passes == [["account/acme", "account/globex", "team/ops"]], "the first run is a full pass"
        for _ in range(5):
            job._render_if_needed()
        assert len(passes) == 1, "nothing dirty: no render pass, only the probe"

        now = datetime.now(UTC).replace(microsecond=0)
        pushed = Event(source="am", key="fp@t", kind="alert", title="Pushed", account="acme",
                       start=now - timedelta(minutes=5), seen=seen_until(now))
        store.apply_poll("am", [pushed], absence="keep", complete=False, now=now.timestamp(),
                         previous_success=None, affected=lambda t: affected_feeds(config, t), record=False)
        assert store.any_feed_dirty()
        job._render_if_needed()
        assert passes[-1] == ["account/acme", "team/ops"], "the push's feeds, and only those"
        assert "🔥 FIRING: Pushed" in store.get_feed("account/acme").body.decode()
        assert not store.any_feed_dirty()
        job._render_if_needed()
        assert len(passes) == 2

        monkeypatch.setattr(scheduler_module, "FULL_RENDER_EVERY_SECONDS", 0)
        job._render_if_needed()
        assert len(passes) == 3 and passes[-1] == [], "a periodic full pass, which finds nothing to do"
    finally:
        job.coordinator.close()
