"""What the store's encoding of rows costs (issue 11, bytes per event): CPU per event of writing
one source's first poll (``apply_poll``, fragments rendered beforehand: only the store's part)
and of reading it back (``query_events``, ``query_fragments``, ``events_by_id``), and a feed
body's ``get_feed``, for this tree and, side by side, ``ICSFEED_BENCH_CODE`` (e.g. main).

The data is bench_scale's (``ICSFEED_BENCH_ACCOUNTS`` × 1,000 events, default 100: its first
source has 10,000 records). Each tree runs in a process of its own, started outside both
trees (``python -m`` would import the current directory's icsfeed first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, line

ACCOUNTS = int(os.environ.get("ICSFEED_BENCH_ACCOUNTS", "100"))
OTHER = os.environ.get("ICSFEED_BENCH_CODE")


def measure(config_dir: Path, data_dir: Path) -> dict[str, float]:
    """In the tree on sys.path: the figures of one source, as JSON on stdout."""
    from icsfeed.config import load_config
    from icsfeed.poller import _checked, build_source
    from icsfeed.render import fragment_renderer
    from icsfeed.store import EventRow, FeedQuery, Store

    config = load_config(config_dir, data_dir)
    store = Store(config.storage_url, uid_host=config.uid_host)
    source = build_source(config, "src0")
    events = _checked(config, source, source.fetch(None))
    render = fragment_renderer(config)
    made = {ev.key: render(EventRow(id=0, uid="u", event=ev, sequence=0, created=1.7e9, last_modified=1.7e9))
            for ev in events}
    cpu = time.process_time
    n = len(events)
    t = cpu()
    store.apply_poll("src0", events, absence="keep", complete=True, now=time.time(), previous_success=None,
                     fragment=lambda row: made[row.event.key])
    write = cpu() - t
    query = FeedQuery(0.0, 1e12)
    t = cpu()
    rows = store.query_events(query)
    read = cpu() - t
    key = next(r.vevent_key for r in rows if r.vevent_key)
    t = cpu()
    fragments = store.query_fragments(query, key)
    frag = cpu() - t
    t = cpu()
    by_id = store.events_by_id([r.id for r in rows])
    ids = cpu() - t
    assert len(rows) == len(by_id) == n and all(f is not None for _, f in fragments)
    body = b"BEGIN:VCALENDAR\r\n" + b"".join(f for _, f in fragments) + b"END:VCALENDAR\r\n"
    store.save_feed("account/x", body, b"", "e", event_count=n, now=time.time(), render_seconds=0.0,
                    render_key=key, window_day="2026-12-02")
    reads = 20
    t, c = time.perf_counter(), cpu()
    for _ in range(reads):
        assert len(store.get_feed("account/x").body) == len(body)  # type: ignore[union-attr]
    feed_wall, feed_cpu = (time.perf_counter() - t) / reads, (cpu() - c) / reads
    store.close()
    return {"n": n, "write_us": write / n * 1e6, "query_events_us": read / n * 1e6,
            "query_fragments_us": frag / n * 1e6, "events_by_id_us": ids / n * 1e6,
            "body_kb": len(body) / 1e3, "get_feed_ms": feed_wall * 1e3, "get_feed_cpu_ms": feed_cpu * 1e3}


def run() -> dict[str, float]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_scale import write_data

    base = Path(tempfile.mkdtemp(prefix="icsfeed-codec-"))
    try:
        write_data(base, ACCOUNTS, 1000, insights=True)
        trees = [("this tree", REPO)] + ([("ICSFEED_BENCH_CODE", Path(OTHER))] if OTHER else [])
        results = {}
        for name, tree in trees:
            data = base / f"data-{len(results)}"
            env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
            code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import bench_codec; "
                    f"print(json.dumps(bench_codec.measure(*map(__import__('pathlib').Path, sys.argv[1:]))))")
            done = subprocess.run([sys.executable, "-c", code, str(base / "config"), str(data)], env=env,
                                  cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"Store encoding, one source's first poll ({int(results['this tree']['n']):,} records) written and read "
          f"back; CPU per event (load average {os.getloadavg()[0]:.2f})")
    out: dict[str, float] = {}
    for label, field, unit in (("apply_poll (store part only)", "write_us", "us"),
                               ("query_events", "query_events_us", "us"),
                               ("query_fragments", "query_fragments_us", "us"),
                               ("events_by_id", "events_by_id_us", "us"),
                               ("get_feed of the body, wall", "get_feed_ms", "ms"),
                               ("get_feed of the body, CPU", "get_feed_cpu_ms", "ms")):
        mine = results["this tree"][field]
        other = results.get("ICSFEED_BENCH_CODE", {}).get(field)
        print(line(label, f"{mine:.2f} {unit}", f"{OTHER}: {other:.2f} {unit}" if other is not None else ""))
        out[f"codec_{field}"] = mine
    print(line("feed body read", f"{results['this tree']['body_kb']:,.0f} kB", ""))
    return out


if __name__ == "__main__":
    run()
