#!/usr/bin/env python3
"""What one account's insight refresh costs: ``python benchmarks/insights_timing.py``.

Two accounts of about 1,000 stored events each, in a real Store on a temporary SQLite file:

* ``scale`` — the shape of benchmarks/bench_scale.py (four kinds evenly over 85 days, 97
  hosts, tickets without a state: every one of them open, hence stale);
* ``history`` — an account of benchmarks/synthetic_history.py (alerts with bursts, four
  backup hosts with a rhythm, tickets), the kind of history the detectors are written for.

For each, ``refresh_account`` (what the poller runs per due account) is timed on its first
run (every flag new), then ``--repeat`` times with nothing changed (the steady state:
nothing is written; since icsfeed/insights/inputs.py a detector whose inputs are those of its
last run that changed nothing is not run again, so after the first of these runs only the
inputs are read and digested), then ``--repeat`` times after 1% of the
account's events changed their title (what bench_scale.py's 1%-changed row refreshes):
the median wall-clock time and the median CPU time of the process, in milliseconds. On a
shared machine the CPU time is the figure to compare (the refresh runs in one thread,
SQLite in-process): the wall clock also counts the time other processes had the cores.
``ICSFEED_CODE=/path`` imports icsfeed from another checkout; ``--compare /path`` runs this
script once with that checkout's code and once with this one's, alternately, and prints
both, side by side with their ratio (two versions in the same conditions).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("ICSFEED_CODE") or str(HERE.parent))
sys.path.insert(1, str(HERE))

import yaml  # noqa: E402
from synthetic_history import NOW, generate  # noqa: E402

from icsfeed.config import load_config  # noqa: E402
from icsfeed.insights import refresh_account, settings_of  # noqa: E402
from icsfeed.model import Event  # noqa: E402
from icsfeed.store import Store  # noqa: E402

KINDS = ("alert", "backup", "ticket", "maintenance")


def scale_account(n: int = 1000) -> list[Event]:
    """bench_scale.py's records for one account, as its file source maps them."""
    rnd = random.Random(11)
    out = []
    for j in range(n):
        kind = KINDS[j % len(KINDS)]
        start = NOW - timedelta(minutes=rnd.randrange(0, 85 * 24 * 60))
        host = f"host-{j % 97:02d}.c0000.example"
        out.append(Event(
            source=f"src{j % 10}", key=f"{j}", kind=kind, title=f"{kind} on {host}: job=api, p99 > 2s",
            start=start, end=start + timedelta(minutes=rnd.randrange(5, 240)), account="c0000",
            detail=f"{kind} on {host}; see https://wiki.example/runbooks/{kind}",
            url=f"https://origin.example/{kind}/{j}", severity=("warning", "critical", "info")[j % 3],
            attrs={"host": host}))
    return out


def history_account(target: int = 1000) -> tuple[list[Event], str]:
    """The synthetic account (seed 7) nearest ``target`` events that has bursts and hosts."""
    accounts, truth = generate(7, 120)
    full = [a for a in accounts if truth.profile[a.id].get("life") == "full"
            and truth.profile[a.id]["alerts"] in ("normal", "noisy")]
    best = min(full, key=lambda a: abs(len(a.events) - target))
    return best.events, best.tz


def _changed(events: list[Event], round_no: int) -> list[Event]:
    """1% of the events (others each round) with a changed title."""
    picked = random.Random(round_no).sample(range(len(events)), max(1, len(events) // 100))
    return [replace(events[i], title=f"{events[i].title} (updated {round_no})") for i in picked]


def time_one(name: str, events: list[Event], tz: str, repeat: int) -> tuple[float, float, float, float, float]:
    """(first refresh, median steady wall and CPU time, median 1%-changed wall and CPU time), in ms."""
    with tempfile.TemporaryDirectory(prefix="insights-timing-") as tmp:
        root = Path(tmp)
        (root / "config").mkdir()
        account = events[0].account or "c0000"
        doc = {"accounts": [{"id": account, "name": account, "timezone": tz}]}
        (root / "config" / "icsfeed.yaml").write_text(yaml.safe_dump(doc))
        config = load_config(root / "config", root / "data")
        store = Store(config.storage_url, uid_host=config.uid_host)
        by_source: dict[str, list[Event]] = {}
        for ev in events:
            by_source.setdefault(ev.source, []).append(ev)
        for source, evs in by_source.items():
            store.apply_poll(source, evs, absence="keep", complete=True, now=NOW.timestamp(), previous_success=None)
        settings = settings_of(config)
        acc = config.accounts[account]
        now = NOW.timestamp()
        started = time.perf_counter()
        refresh_account(config, store, settings, acc, now)
        first = time.perf_counter() - started
        wall, cpu = [], []
        for _ in range(repeat):
            started, cpu_started = time.perf_counter(), time.process_time()
            refresh_account(config, store, settings, acc, now)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        wall_c, cpu_c = [], []
        for round_no in range(repeat):
            for ev in _changed(events, round_no):  # one poll of each changed event's source
                store.apply_poll(ev.source, [ev], absence="keep", complete=False, now=now, previous_success=None)
            started, cpu_started = time.perf_counter(), time.process_time()
            refresh_account(config, store, settings, acc, now)
            wall_c.append(time.perf_counter() - started)
            cpu_c.append(time.process_time() - cpu_started)
        store.close()
    return (first * 1000, statistics.median(wall) * 1000, statistics.median(cpu) * 1000,
            statistics.median(wall_c) * 1000, statistics.median(cpu_c) * 1000)


def compare(other: str, repeat: int, rounds: int) -> int:
    """This script with ``other``'s icsfeed and with this tree's, alternately, ``rounds`` times;
    the lowest CPU figure of each (the least disturbed by other processes), side by side."""
    import json
    import subprocess

    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    trees = {"before": other, "after": str(HERE.parent)}
    for _ in range(rounds):
        for label, tree in trees.items():
            env = {**os.environ, "ICSFEED_CODE": tree}
            out = subprocess.run([sys.executable, __file__, "--repeat", str(repeat), "--json"], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.splitlines()[-1]))
    print(f"before: icsfeed from {other}; after: from {HERE.parent}; now {NOW.isoformat()}; "
          f"lowest of {rounds} runs each, median of {repeat} refreshes per run; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'case':<9}{'refresh':<12}{'before CPU':>11}{'after CPU':>11}{'ratio':>8}{'before wall':>13}{'after wall':>12}")
    for name in runs["before"][0]:
        for i, what in enumerate(("first", "steady", "1% changed")):
            col = {"first": (0, 0), "steady": (2, 1), "1% changed": (4, 3)}[what]
            b = min(r[name][col[0]] for r in runs["before"])
            a = min(r[name][col[0]] for r in runs["after"])
            bw = min(r[name][col[1]] for r in runs["before"])
            aw = min(r[name][col[1]] for r in runs["after"])
            label = "(wall)" if i == 0 else ""
            print(f"{name if i == 0 else '':<9}{what + label:<12}{b:>9.1f}ms{a:>9.1f}ms{b / a:>7.1f}x"
                  f"{bw:>11.1f}ms{aw:>10.1f}ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--compare", metavar="TREE", help="another checkout to run side by side with this one")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree with --compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.repeat, args.rounds)
    cases = [("scale", scale_account(), "UTC"), ("history", *history_account())]
    if not args.json:
        print(f"icsfeed from {sys.path[0]}; now {NOW.isoformat()}")
    results = {}
    for name, events, tz in cases:
        results[name] = first, wall, cpu, wall_c, cpu_c = time_one(name, events, tz, args.repeat)
        if not args.json:
            print(f"{name:<8} {len(events):>5} events ({tz}): first refresh {first:5.0f} ms; median of {args.repeat}: "
                  f"steady {wall:5.0f} ms wall, {cpu:5.0f} ms CPU; 1% changed {wall_c:5.0f} ms wall, {cpu_c:5.0f} ms CPU")
    if args.json:
        import json

        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
