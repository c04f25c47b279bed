"""Render speed: a 10,000-event feed, against the naive request-time renderer.

The naive baseline is what renderers that build the calendar per request do: read the
events, make an ``icalendar.Calendar`` of ``icalendar.Event`` components and call
``to_ical()``. It uses :func:`icsfeed.render.vevent_component`, which makes the very same
properties, so both sides produce the same bytes (tests/test_hostile.py checks that the
fast fragments equal the components' output byte for byte).

Measured, all in this run:

* naive: query + Calendar of components + to_ical;
* (b) cold full render: ``render_feeds`` with no stored fragments (every VEVENT made,
  stored, joined, hashed, gzipped, feed saved) -- what the first render of a feed costs;
* (a) dirty feed, fragments cached: the same call after a poll that changed nothing in
  this feed's events but marked it dirty -- what most re-renders cost;
* re-render after 1% of the events changed (100 of 10,000): ``render_feeds`` renders the
  100 new fragments and joins the rest;
* an unchanged poll re-renders no feed (render_feeds returns [] and rendered_at stays).

Each figure is the best of its rounds by wall time, and again by CPU time (``process_time``:
steadier than wall time on a shared machine); the shares compare each with the cold render of
the same run.

The feed's size budget is set out of the way (``max_events`` 100,000): the figures are those
of rendering all 10,000 events, as the naive renderer does (a budgeted feed is
benchmarks/bench_budget.py's).

``ICSFEED_BENCH_CODE=<tree>`` also runs the same benchmark on another checkout's icsfeed (e.g.
``/work/main``), in a child process right after this one, and prints both side by side.

    python benchmarks/bench_render.py          (or: python benchmarks/run.py --only render)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

#: the icsfeed tree a child run measures (set by run() for ``ICSFEED_BENCH_CODE``): first on sys.path
_CHILD_CODE = os.environ.get("ICSFEED_BENCH_RENDER_CHILD")
if _CHILD_CODE:
    _here = Path(__file__).resolve().parent
    sys.path[:0] = [_CHILD_CODE, str(_here.parent), str(_here.parent / "tests")]

import icalendar  # noqa: E402
from common import REPO, Env, best_of, line, make_env, synthetic_event, timer  # noqa: E402
from sqlalchemy import text  # noqa: E402

from icsfeed.render import build_feed, calendar_header, fragment_renderer, render_feeds, vevent_component  # noqa: E402
from icsfeed.routing import find_feed  # noqa: E402

N = 10_000
ROUNDS = 5


def naive_feed(env, spec, now: datetime) -> bytes:
    """Request-time rendering: the whole calendar as icalendar components, then to_ical()."""
    rows = env.store.query_events(spec.query(now))
    head, _ = calendar_header(env.config, spec)
    cal = icalendar.Calendar.from_ical(head + b"END:VCALENDAR\r\n")
    for row in rows:
        cal.add_component(vevent_component(env.config, row))
    return cal.to_ical()


def bench_env() -> Env:
    env = make_env(["acme"], unbudgeted=True)
    assert env.config.feeds.budget.max_events == 100_000
    return env


def run() -> dict[str, float]:
    """This tree's figures; with ``ICSFEED_BENCH_CODE``, then another tree's, side by side."""
    other = os.environ.get("ICSFEED_BENCH_CODE")
    figures = measure()
    if not other or Path(other).resolve() == REPO:
        return figures
    print(f"\nThe same on {other} (child process, same data, right after):")
    env = {**os.environ, "ICSFEED_BENCH_RENDER_CHILD": str(Path(other).resolve())}
    env.pop("ICSFEED_BENCH_CODE")
    done = subprocess.run([sys.executable, __file__, "--json"], env=env, check=True, capture_output=True, text=True)
    print(done.stdout.rsplit("\n@@", 1)[0])
    theirs = json.loads(done.stdout.rsplit("\n@@", 1)[1])
    print(f"\nSide by side (this tree | {other}; ratios are each run's own, against its naive renderer):")
    rows = [("naive request-time render", "naive", "s"), ("(b) cold full render", "cold", "s"),
            ("    cold: times faster than naive (median of pairs)", "cold_ratio_median", "x"),
            ("(a) dirty feed, fragments cached", "warm", "ms"), ("re-render after 1% changed", "one_percent", "ms"),
            ("    as a share of the cold full render", "one_percent_share", "%"),
            ("1% as the poller does it: poll write incl. fragments", "one_percent_poll_with_fragments", "ms"),
            ("    ... then render_feeds", "one_percent_render_after_poll", "ms"),
            ("    as a share of the cold full render", "one_percent_after_poll_share", "%"),
            ("CPU (process_time): cold full render", "cold_cpu", "ms"),
            ("    re-render after 1% changed, share of cold CPU", "one_percent_cpu_share", "%"),
            ("    1% as the poller does it, share of cold CPU", "one_percent_after_poll_cpu_share", "%")]
    for name, key, unit in rows:
        values = [f.get(key, float("nan")) for f in (figures, theirs)]
        shown = [f"{v:.2f} s" if unit == "s" else f"{v:.1f}x" if unit == "x" else f"{v:.1%}" if unit == "%"
                 else f"{v * 1000:.0f} ms" for v in values]
        print(line(name, shown[0], f"| {shown[1]}"))
    figures.update({f"other_{k}": v for k, v in theirs.items()})
    return figures


def measure() -> dict[str, float]:
    import icsfeed

    print(f"Render benchmark of {Path(icsfeed.__file__).resolve().parent.parent} — load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    env = bench_env()
    config, store = env.config, env.store
    now = datetime.now(timezone.utc)
    rnd = random.Random(5)
    events = [synthetic_event("bench", i, "acme", now, rnd) for i in range(N)]
    with timer() as t_apply:
        store.apply_poll("bench", events, absence="keep", complete=True, now=time.time(), previous_success=None)
    spec = find_feed(config, "account", "acme")
    assert spec is not None

    def drop_fragments() -> None:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE events SET vevent = NULL, vevent_key = NULL"))

    naive_body = naive_feed(env, spec, now)
    # naive and cold runs in pairs, one right after the other: the machine is shared, and a
    # ratio should compare runs made under the same load. Reported: the median of the pairs'
    # ratios (and their range), and the best time of each.
    naives, colds, ratios = [], [], []
    cold_build = cold_cpu = float("inf")
    for _ in range(ROUNDS):
        naives.append(best_of(1, lambda: naive_feed(env, spec, now)))
        drop_fragments()
        with timer() as t_cold:
            render_feeds(config, store, now=now, force=True)
        colds.append(t_cold["wall"])
        cold_cpu = min(cold_cpu, t_cold["cpu"])
        ratios.append(naives[-1] / colds[-1])
        cold_build = min(cold_build, best_of(1, lambda: build_feed(config, store, spec, now), setup=drop_fragments))
    naive, cold, ratio = min(naives), min(colds), statistics.median(ratios)
    # the same rendering writing nothing back: like for like with a request-time renderer
    cold_nowrite = best_of(3, lambda: build_feed(config, store, spec, now, save_fragments=False), setup=drop_fragments)
    stored = store.get_feed(spec.feed_id)
    assert stored is not None and stored.event_count == N, stored
    assert len(icalendar.Calendar.from_ical(stored.body).walk("VEVENT")) == N
    assert len(icalendar.Calendar.from_ical(naive_body).walk("VEVENT")) == N

    def mark() -> None:
        store.mark_dirty([spec.feed_id])

    warm = best_of(5, lambda: render_feeds(config, store, now=now), setup=mark)
    warm_build = best_of(5, lambda: build_feed(config, store, spec, now))

    # 1% of the events change (as the poller writes them, minus the poll-time fragment so
    # that the re-render below pays for rendering them); three different 1%, best of three.
    # Each round changes 1% of what is stored now (``current``), so exactly 100 events differ.
    one_pct = poll_frag = one_pct_after_poll = one_pct_cpu = one_pct_after_poll_cpu = float("inf")
    current = events
    for round_no in range(5):
        changed = [replace(ev, title=f"{ev.title} (update {round_no})") if i % 100 == round_no else ev
                   for i, ev in enumerate(current)]
        applied = store.apply_poll("bench", changed, absence="keep", complete=True, now=time.time(),
                                   previous_success=None, affected=lambda touched: [spec.feed_id])
        assert applied.updated == N // 100, applied
        with timer() as t_one:
            one = render_feeds(config, store, now=now)
        assert one == [spec.feed_id], one
        one_pct, one_pct_cpu = min(one_pct, t_one["wall"]), min(one_pct_cpu, t_one["cpu"])
        # the same 1% as the poller really does it: fragments made while the poll is written
        again = [replace(ev, title=f"{ev.title} (again {round_no})") if i % 100 == round_no else ev
                 for i, ev in enumerate(changed)]
        with timer() as t_poll_frag:
            written = store.apply_poll("bench", again, absence="keep", complete=True, now=time.time(),
                                       previous_success=None, affected=lambda touched: [spec.feed_id],
                                       fragment=fragment_renderer(config))
        assert written.updated == N // 100, written
        current = again
        with timer() as t_one_poll:
            render_feeds(config, store, now=now)
        poll_frag, one_pct_after_poll = min(poll_frag, t_poll_frag["wall"]), min(one_pct_after_poll, t_one_poll["wall"])
        one_pct_after_poll_cpu = min(one_pct_after_poll_cpu, t_one_poll["cpu"])

    # an unchanged poll: nothing touched, nothing dirty, no feed re-rendered
    before = store.get_feed(spec.feed_id, with_body=False)
    changes = store.apply_poll("bench", again, absence="keep", complete=True, now=time.time(), previous_success=None,
                               affected=lambda touched: [spec.feed_id], fragment=fragment_renderer(config))
    rendered = render_feeds(config, store, now=now)
    after = store.get_feed(spec.feed_id, with_body=False)
    assert changes.unchanged == N and not changes.touched, changes
    assert rendered == [], rendered
    assert before is not None and after is not None and after.rendered_at == before.rendered_at

    env.close()
    shutil.rmtree(env.base, ignore_errors=True)
    figures = {
        "apply_10k": t_apply["wall"], "naive": naive, "cold": cold, "cold_build": cold_build, "cold_ratio_median": ratio,
        "cold_nowrite": cold_nowrite,
        "warm": warm, "warm_build": warm_build, "one_percent": one_pct,
        "one_percent_poll_with_fragments": poll_frag, "one_percent_render_after_poll": one_pct_after_poll,
        "body_bytes": float(len(stored.body)),
        "one_percent_share": one_pct / cold, "one_percent_after_poll_share": one_pct_after_poll / cold,
        "cold_cpu": cold_cpu, "one_percent_cpu": one_pct_cpu, "one_percent_after_poll_cpu": one_pct_after_poll_cpu,
        "one_percent_cpu_share": one_pct_cpu / cold_cpu, "one_percent_after_poll_cpu_share": one_pct_after_poll_cpu / cold_cpu,
    }
    print(f"Render: one feed of {N:,} events ({len(stored.body) / 1e6:.1f} MB)")
    print(line("naive request-time render (Calendar of components)", f"{naive:.2f} s"))
    print(line("(b) cold full render, no fragments stored", f"{cold:.2f} s",
               f"{ratio:.1f}x faster than naive (goal >= 8x; median of {ROUNDS} pairs, "
               f"{min(ratios):.1f}x-{max(ratios):.1f}x)"))
    print(line("    of which build_feed (fragments stored, feed not saved)", f"{cold_build:.2f} s", f"{naive / cold_build:.1f}x"))
    print(line("    the same writing nothing back (like a request-time renderer)", f"{cold_nowrite:.2f} s",
               f"{naive / cold_nowrite:.1f}x"))
    print(line("(a) dirty feed, fragments cached (render_feeds)", f"{warm * 1000:.0f} ms",
               f"{naive / warm:.0f}x faster than naive"))
    print(line("    of which build_feed (join only)", f"{warm_build * 1000:.0f} ms"))
    print(line("re-render after 1% changed (100 fragments + join)", f"{one_pct * 1000:.0f} ms",
               f"{one_pct / cold:.1%} of cold full render (goal <= 5%)"))
    print(line("    same 1% as the poller does it: poll write incl. fragments", f"{poll_frag * 1000:.0f} ms"))
    print(line("    ... then render_feeds (join only)", f"{one_pct_after_poll * 1000:.0f} ms",
               f"{one_pct_after_poll / cold:.1%} of cold full render"))
    print(line("CPU (process_time, best): cold full render", f"{cold_cpu * 1000:.0f} ms"))
    print(line("    re-render after 1% changed", f"{one_pct_cpu * 1000:.0f} ms", f"{one_pct_cpu / cold_cpu:.1%} of cold"))
    print(line("    ... as the poller does it (join only)", f"{one_pct_after_poll_cpu * 1000:.0f} ms",
               f"{one_pct_after_poll_cpu / cold_cpu:.1%} of cold"))
    print(line("unchanged poll: feeds re-rendered", f"{len(rendered)}", "rendered_at unchanged: yes"))
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return figures


if __name__ == "__main__":
    if "--json" in sys.argv:  # a child run: figures after a marker line
        print("\n@@" + json.dumps(measure()))
    else:
        run()
