"""Size budget and filtered variants: what fitting a feed costs, and what a variant request costs.

A team feed over 110 accounts (tests/test_budget.py's data: alert bursts, tickets, weekly
backups, maintenance ahead; a ``file`` source, the product's own poll) is rendered with the
default budget and with a budget too large to matter (what a plain join gives), side by side;
then re-rendered with nothing changed and after one more alert. A filtered variant
(``kinds=alert``) is answered the old way, a request-time
join of stored fragments (``build_feed(kinds=…)``), and the new way, cut from the stored body
with its parts (``select_parts``). Best of ``ROUNDS``.

    python benchmarks/bench_budget.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import line

from icsfeed.config import load_config
from icsfeed.feed_filters import FeedFilter, select_parts
from icsfeed.poller import poll, poll_source
from icsfeed.render import build_feed, render_feeds
from icsfeed.routing import find_feed
from icsfeed.store import Store

ROUNDS = int(os.environ.get("ICSFEED_BENCH_ROUNDS", "3"))
ACCOUNTS = int(os.environ.get("ICSFEED_BENCH_BUDGET_ACCOUNTS", "110"))


def best(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run() -> dict[str, float]:
    from test_budget import config_yaml, record, world_records  # the tests' data, shared

    os.environ.setdefault("ICSFEED_SECRET_KEY", "bench-budget-secret-0123456789abcdef")
    base = Path(tempfile.mkdtemp(prefix="icsfeed-budget-"))
    try:
        out: dict[str, float] = {}
        records = world_records(ACCOUNTS)
        config_dir = base / "config"
        config_dir.mkdir()
        huge = "  budget: {max_bytes: 1GB, max_events: 1000000}"
        for name, extra in (("budgeted", ""), ("unbounded", huge)):
            (base / name / "config").mkdir(parents=True)
            (base / name / "config" / "icsfeed.yaml").write_text(config_yaml(ACCOUNTS, feeds_budget=extra))
        import json

        lines = "".join(json.dumps(r) + "\n" for r in records)
        for name in ("budgeted", "unbounded"):
            (base / name / "config" / "events.jsonl").write_text(lines)
        configs = {n: load_config(base / n / "config", base / n / "data") for n in ("budgeted", "unbounded")}
        stores = {n: Store(c.storage_url, uid_host=c.uid_host) for n, c in configs.items()}
        for n in configs:
            assert all(r.ok for r in poll(configs[n], stores[n]))
        now = datetime.now(timezone.utc)
        spec = find_feed(configs["budgeted"], "team", "everything")
        assert spec is not None
        feeds = {}
        for n in configs:
            feeds[n] = build_feed(configs[n], stores[n], spec, now)  # warm: every fragment stored
            out[f"render_{n}_s"] = best(lambda n=n: build_feed(configs[n], stores[n], spec, now))  # type: ignore[misc]
        fitted = feeds["budgeted"]
        assert fitted.report is not None
        out["events"] = float(len(records))
        out["full_bytes"], out["full_vevents"] = float(len(feeds["unbounded"].body)), float(feeds["unbounded"].event_count)
        out["fitted_bytes"], out["fitted_vevents"] = float(len(fitted.body)), float(fitted.event_count)
        out["rollups"], out["window_back_days"] = float(fitted.report["rollups"]), float(fitted.report["window_back_days"])

        config, store = configs["budgeted"], stores["budgeted"]
        render_feeds(config, store, only=[spec.feed_id], force=True)
        out["rerender_unchanged_s"] = best(lambda: render_feeds(config, store, only=[spec.feed_id], force=True))
        day = datetime.combine(now.date(), datetime.min.time(), timezone.utc) - timedelta(days=1, hours=-20)
        changed: list[float] = []
        for k in range(ROUNDS):
            records.append(record(f"al-bench-{k}", "alert", 3, day + timedelta(minutes=k), end=day + timedelta(minutes=k + 5),
                                  severity="warning"))
            (base / "budgeted" / "config" / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            assert poll_source(config, store, "events").ok  # stored, feeds marked dirty, not rendered
            started = time.perf_counter()
            assert render_feeds(config, store, only=[spec.feed_id]) == [spec.feed_id]
            changed.append(time.perf_counter() - started)
        out["rerender_one_alert_s"] = min(changed)

        stored = store.get_feed(spec.feed_id)
        parts = store.feed_parts(spec.feed_id, stored.etag) if stored else None
        assert stored is not None and parts is not None
        chosen = FeedFilter(kinds=frozenset({"alert"}))
        plain_config, plain_store = configs["unbounded"], stores["unbounded"]  # main's join: no budget to fit
        out["variant_join_s"] = best(lambda: build_feed(plain_config, plain_store, spec, now, kinds=["alert"],
                                                        save_fragments=False))
        out["variant_cut_s"] = best(lambda: select_parts(stored.body, parts.parts, chosen))
        for s in stores.values():
            s.close()
        print(f"Size budget: team feed over {ACCOUNTS} accounts, {len(records):,} events (file source, SQLite), best of {ROUNDS}")
        print(line("without a budget (a plain join)", f"{out['full_bytes'] / 1e6:.2f} MB",
                   f"{int(out['full_vevents']):,} VEVENTs"))
        print(line("with the default budget", f"{out['fitted_bytes'] / 1e6:.2f} MB",
                   f"{int(out['fitted_vevents']):,} VEVENTs, {int(out['rollups'])} rollups, "
                   f"{int(out['window_back_days'])} days back"))
        print(line("build_feed, budget too large to matter", f"{out['render_unbounded_s'] * 1000:.0f} ms", ""))
        print(line("build_feed, default budget (rollups stored)", f"{out['render_budgeted_s'] * 1000:.0f} ms",
                   f"{out['render_budgeted_s'] / out['render_unbounded_s']:.2f}x the plain join"))
        print(line("render_feeds, nothing changed (same bytes)", f"{out['rerender_unchanged_s'] * 1000:.0f} ms", ""))
        print(line("render_feeds after one more alert", f"{out['rerender_one_alert_s'] * 1000:.0f} ms", ""))
        print(line("kinds=alert variant: request-time join (before)", f"{out['variant_join_s'] * 1000:.1f} ms", ""))
        print(line("kinds=alert variant: cut from the stored body", f"{out['variant_cut_s'] * 1000:.2f} ms",
                   f"{out['variant_join_s'] / out['variant_cut_s']:.0f}x faster"))
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run()
