"""Shared pieces of the benchmarks: synthetic events, a store to put them in, timing.

The events look like production ones (titles with punctuation, a detail of two lines and
a link, an origin URL, severities, four kinds) so that escaping and folding cost what they
cost in a real feed. Everything is generated from a fixed seed.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from icsfeed.config import Config, load_config  # noqa: E402
from icsfeed.model import Event  # noqa: E402
from icsfeed.store import Store  # noqa: E402

KINDS = ("alert", "backup", "ticket", "maintenance")
SEVERITIES = ("warning", "critical", "info", None)


def synthetic_event(source: str, i: int, account: str, now: datetime, rnd: random.Random,
                    *, days_back: int = 80) -> Event:
    """One realistic event; ``i`` makes the key, the seeded ``rnd`` the rest."""
    kind = KINDS[i % len(KINDS)]
    start = now - timedelta(minutes=rnd.randrange(0, days_back * 24 * 60))
    host = f"host-{i % 97:02d}.{account}.example"
    titles = {
        "alert": f"HighLatency, p99 > 2s on {host} (job=api; severity=warning)",
        "backup": f"backup {host} (daily) — 12.4 GiB, 3,201 files",
        "ticket": f"#{10000 + i} VPN drops every 20 minutes; customer: \"urgent\"",
        "maintenance": f"Kernel upgrade on {host}: reboot window",
    }
    return Event(
        source=source, key=f"{source}-{i}", kind=kind, title=titles[kind],
        start=start, end=start + timedelta(minutes=rnd.randrange(5, 180)),
        detail=f"{kind} on {host}; see the runbook at https://wiki.example/runbooks/{kind}\nlabels: job=api, team=ops",
        url=f"https://origin.example/{kind}/{i}?view=full", account=account,
        severity=SEVERITIES[i % len(SEVERITIES)],
    )


@dataclass
class Env:
    """A config (accounts only: the benchmarks apply events to the store themselves) and a store."""

    base: Path
    config: Config
    store: Store

    def close(self) -> None:
        self.store.close()


#: a feed budget no benchmark feed reaches (every event rendered, as by the naive renderer;
#: a budgeted feed is benchmarks/bench_budget.py's)
UNBUDGETED = "  budget: {max_events: 100000, max_bytes: 500MB}"


def make_env(accounts: list[str], *, extra_yaml: str = "", base: Path | None = None,
             unbudgeted: bool = False) -> Env:
    """Config with these accounts (window wide enough for the synthetic events) and an empty
    store; ``unbudgeted``: a feed budget out of the way (:data:`UNBUDGETED`)."""
    base = base or Path(tempfile.mkdtemp(prefix="icsfeed-bench-"))
    config_dir = base / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = ["accounts:"] + [f"  - {{id: {a}, name: Customer {a}}}" for a in accounts]
    lines += ["feeds:", "  window_back_days: 90", "  window_ahead_days: 30"] + ([UNBUDGETED] if unbudgeted else [])
    lines += ["insights: {enabled: false}"]
    (config_dir / "icsfeed.yaml").write_text("\n".join(lines) + "\n" + extra_yaml, encoding="utf-8")
    config = load_config(config_dir, base / "data")
    return Env(base=base, config=config, store=Store(config.storage_url, uid_host=config.uid_host))


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then t["wall"], t["cpu"] in seconds."""
    out: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out["wall"] = time.perf_counter() - wall
    out["cpu"] = time.process_time() - cpu


def best_of(n: int, fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float:
    """Smallest wall time of n runs (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(n):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def line(name: str, value: str, note: str = "") -> str:
    return f"  {name:<58} {value:>14}  {note}".rstrip()
