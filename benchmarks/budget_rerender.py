"""Over-budget feeds re-rendered (issue 11, fifth session): the CPU of one bench-shaped account
feed (1,000 events + ~500 insight flags, over the default budget) and of the team feed of
critical alerts, cold (first import) and after ``bench_scale.change_one_percent``; each tree
in a child process of its own on the same data (``ICSFEED_BENCH_CODE``: the other tree).

    ICSFEED_BENCH_ACCOUNTS=4 python benchmarks/budget_rerender.py [--profile]

Each row is one ``render_feeds`` of every account feed (per feed) or of the team feed, under ``process_time``, best of ``ROUNDS`` from
a copy of the database as the polls and insights left it (nothing timed but the render).
The re-render's body is checked against a from-scratch ``build_feed`` of the same store.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUNDS = int(os.environ.get("ICSFEED_BENCH_ROUNDS", "5"))


def _copy_db(data: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for p in data.glob("icsfeed.db*"):
        shutil.copy(p, to / p.name)


def _child(base: Path, tag: str, profile: bool) -> dict[str, Any]:
    """In the tree on PYTHONPATH: poll + insights (not timed), then the renders (timed)."""
    from datetime import datetime, timezone

    from icsfeed.config import load_config
    from icsfeed.poller import poll_source, refresh_due_insights
    from icsfeed.render import build_feed, render_feeds
    from icsfeed.routing import all_feeds
    from icsfeed.store import Store

    data = base / f"data-{tag}"
    out: dict[str, Any] = {}

    def polled(config_dir: Path) -> None:
        config = load_config(config_dir, data)
        store = Store(config.storage_url, uid_host=config.uid_host)
        for source_id in config.sources:
            poll_source(config, store, source_id)
        refresh_due_insights(config, store)
        store.close()

    def render(config_dir: Path, snap: Path, feeds: list[str], name: str, keep: bool) -> None:
        """CPU per feed of one render_feeds of ``feeds`` (one store, as the poller renders them)."""
        cpus = []
        for r in range(ROUNDS):
            _copy_db(snap, data)
            config = load_config(config_dir, data)
            store = Store(config.storage_url, uid_host=config.uid_host)
            now = datetime.now(timezone.utc)
            prof = None
            if profile and r == 1:
                from pyinstrument import Profiler
                prof = Profiler(interval=0.0005)
                prof.start()
            t = time.process_time()
            done = render_feeds(config, store, only=feeds, now=now)
            cpus.append((time.process_time() - t) / len(feeds))
            if prof is not None:
                prof.stop()
                (base / f"profile-{tag}-{name}.txt").write_text(prof.output_text(unicode=False, show_all=False))
            assert sorted(done) == sorted(feeds), done
            for spec in all_feeds(config):
                if spec.feed_id in feeds:
                    stored = store.get_feed(spec.feed_id)
                    fresh = build_feed(config, store, spec, now, save_fragments=False)
                    assert stored is not None and stored.body == fresh.body, f"{name}: not what a fresh render makes"
                    out[f"{name}_events"] = stored.event_count
            store.close()
            if r == ROUNDS - 1 and keep:
                _copy_db(data, snap.with_name(snap.name + "-after"))
        out[f"{name}_cpu_ms"] = min(cpus) * 1000
        out[f"{name}_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out[f"{name}_cpu_all_ms"] = [round(c * 1000, 1) for c in cpus]

    polled(base / "config")
    snap0 = base / f"snap0-{tag}"
    _copy_db(data, snap0)
    config = load_config(base / "config", data)
    feeds = {"account": [s.feed_id for s in all_feeds(config) if s.type == "account"], "team": ["team/critical"]}
    only = os.environ.get("ICSFEED_BENCH_FEEDS")  # "team": the team feed alone (a larger team at more accounts)
    if only:
        feeds = {k: v for k, v in feeds.items() if k == only}
    # cold renders (every feed rendered once cold, kept: where the re-render starts from)
    for kind, ids in feeds.items():
        render(base / "config", snap0, ids, f"cold_{kind}", keep=False)
    _copy_db(snap0, data)
    config = load_config(base / "config", data)
    store = Store(config.storage_url, uid_host=config.uid_host)
    render_feeds(config, store)
    store.close()
    polled(base / "config1")  # 1% of titles changed
    snap1 = base / f"snap1-{tag}"
    _copy_db(data, snap1)
    for kind, ids in feeds.items():
        render(base / "config1", snap1, ids, f"pct1_{kind}", keep=False)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(Path(sys.argv[2]), sys.argv[3], "--profile" in sys.argv)))
        return
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from bench_scale import change_one_percent, write_data

    accounts = int(os.environ.get("ICSFEED_BENCH_ACCOUNTS", "4"))
    base = Path(tempfile.mkdtemp(prefix="icsfeed-budget-rr-"))
    write_data(base, accounts, 1000, insights=True)
    shutil.copytree(base / "config", base / "config0")
    change_one_percent(base)  # edits base/config: the changed files go to config1
    (base / "config").rename(base / "config1")
    (base / "config0").rename(base / "config")
    trees = [("this", here.parent)]
    other = os.environ.get("ICSFEED_BENCH_CODE")
    if other:
        trees.append(("other", Path(other)))
    results = {}
    os.environ.setdefault("ICSFEED_SECRET_KEY", "bench-" + "k" * 32)
    for tag, code in trees:
        env = {**os.environ, "PYTHONPATH": str(code)}
        env.pop("ICSFEED_STORAGE_URL", None)
        proc = subprocess.run([sys.executable, __file__, "--child", str(base), tag, *sys.argv[1:]], env=env,
                              cwd=str(base), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{code}: {proc.stderr[-3000:]}")
        results[tag] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[tag]["code"] = str(code)
    names = [k for k in results["this"] if k.endswith("_cpu_ms")]
    print(f"{accounts} accounts x 1,000 events, insights on; CPU per feed of one render_feeds(only=<the account feeds> | <the team feed>), best of {ROUNDS} (all runs)")
    for k in names:
        row = f"  {k[:-7]:14s}"
        for tag, r in results.items():
            row += f" | {tag} {r[k]:7.1f} ms {r[k.replace('_cpu_ms', '_cpu_all_ms')]}"
        print(row)
    for tag, r in results.items():
        print(f"  {tag}: {r['code']}; VEVENTs: " + ", ".join(f"{k[5:-7]} {v}" for k, v in r.items() if k.startswith("cold_")
                                                            and k.endswith("_events")))
    if "--profile" not in sys.argv:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"  profiles in {base}")


if __name__ == "__main__":
    main()
