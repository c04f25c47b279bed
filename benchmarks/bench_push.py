"""What the scheduler's render job costs when nothing is dirty, and when a push made one feed dirty.

A pushed alert (``POST /hooks/alertmanager/<source>``) reaches the feeds through the render
job that runs every ``RENDER_EVERY_SECONDS`` in every scheduler: it must be cheap while
nothing changed (most runs), and a push should cost the render of the feeds it touched, not
of all of them. Measured on SQLite with 100 and 1,000 account feeds (plus one team feed),
each with a few events:

* idle full pass: ``render_feeds`` with every feed clean (reads every feed's state, makes
  its render key and month-view token, renders none): what the job cost on each run before;
* idle job run: ``PollScheduler._render_if_needed`` between full passes (one probe for a
  dirty feed, ``Store.any_feed_dirty``): what the job costs on most runs now;
* one push: the same call after a webhook-shaped write (``apply_poll(..., complete=False,
  record=False)``) of one firing alert of one account: two feeds dirty (the account's and
  the team's).

Run: ``.venv/bin/python benchmarks/bench_push.py``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, line, make_env

from icsfeed.live import LiveConfig
from icsfeed.model import Event, seen_until
from icsfeed.render import render_feeds
from icsfeed.routing import affected_feeds
from icsfeed.scheduler import RENDER_EVERY_SECONDS, PollScheduler

TEAM = "teams:\n  - {id: ops, name: Ops, accounts: '*'}\n"


def measure(n_accounts: int) -> tuple[float, float, float, int]:
    accounts = [f"a{i:04d}" for i in range(n_accounts)]
    env = make_env(accounts, extra_yaml=TEAM)
    config, store = env.config, env.store
    now = datetime.now(UTC).replace(microsecond=0)
    events = [Event(source="am", key=f"{a}-{j}", kind="alert", title=f"Alert {j} on {a}", account=a,
                    start=now - timedelta(days=j), end=now - timedelta(days=j) + timedelta(minutes=30))
              for a in accounts for j in range(5)]
    store.apply_poll("am", events, absence="close", complete=True, now=now.timestamp(), previous_success=None,
                     affected=lambda t: affected_feeds(config, t))
    render_feeds(config, store, now=now)
    idle = best_of(5, lambda: render_feeds(config, store, now=now))
    job = PollScheduler(LiveConfig(config), store)
    job._render_if_needed()  # its first run is a full pass
    probe = best_of(20, job._render_if_needed)
    job.coordinator.close()
    rendered: list[str] = []
    pushes = [0]

    def push() -> None:
        pushes[0] += 1
        ev = Event(source="am", key=f"push-{pushes[0]}", kind="alert", title="Pushed", account=accounts[0],
                   start=now, seen=seen_until(now))
        store.apply_poll("am", [ev], absence="keep", complete=False, now=now.timestamp(), previous_success=None,
                         affected=lambda t: affected_feeds(config, t), record=False)

    def render() -> None:
        rendered[:] = render_feeds(config, store, now=now)

    one = best_of(5, render, setup=push)
    store.close()
    return idle, probe, one, len(rendered)


def main() -> None:
    print(f"render job (every {RENDER_EVERY_SECONDS}s in each scheduler), SQLite, best of 5:")
    for n in (100, 1000):
        idle, probe, one, count = measure(n)
        print(line(f"{n} accounts + 1 team: idle full pass (render_feeds)", f"{idle * 1000:.2f} ms"))
        print(line(f"{n} accounts + 1 team: idle job run (dirty probe)", f"{probe * 1000:.2f} ms",
                   f"{idle / probe:.0f}x less than the full pass"))
        print(line(f"{n} accounts + 1 team: render after one pushed alert ({count} feeds)", f"{one * 1000:.1f} ms"))


if __name__ == "__main__":
    main()
