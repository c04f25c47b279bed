"""Every benchmark figure in one run: ``python benchmarks/run.py`` (or ``make bench``).

Render (10,000-event feed vs the naive request-time renderer, cold and cached, 1% changed,
unchanged poll), serving (icsfeed serve vs nginx with wrk, 200/gzip/304, and waitress's
own ceiling), scale (1,000 accounts x 1,000 events: poll + render time, peak RSS) and
pollers (one `icsfeed poll --once` against two together, on PostgreSQL and on SQLite),
subscribers (the 304 path with and without counting who fetches).
Ratios are measured in the same run. The machine's load is printed first: on a shared
2-core machine it moves every figure, which is why the benchmarks take the best of several
runs where a run is short.

``--only render,serve,scale,pollers,subscribers`` picks parts; ``--json FILE`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_render
import bench_scale
import bench_serve
import bench_subscribers

PARTS = {"render": bench_render.run, "serve": bench_serve.run, "scale": bench_scale.run,
         "pollers": bench_scale.run_pollers, "subscribers": bench_subscribers.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")

    import icalendar
    import sqlalchemy
    import waitress  # noqa: F401

    print(f"icsfeed benchmarks — {time.strftime('%Y-%m-%d %H:%M')} — Python {platform.python_version()}, "
          f"icalendar {icalendar.__version__}, SQLAlchemy {sqlalchemy.__version__}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures: dict[str, float] = {}
    for part in wanted:
        print()
        started = time.perf_counter()
        figures.update(PARTS[part]())
        print(f"  ({part}: {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
