"""Several processes over one real PostgreSQL database, as README's production section runs them.

* one ``icsfeed poll`` and three ``icsfeed serve --no-scheduler``: a change reaches all three
  web processes with the same ETag, and conditional GETs work on each;
* two ``icsfeed poll``: they share the sources (each polled at its interval, not twice as
  often, by one poller at a time); one is ``kill -9``ed in the middle of a poll and the other
  takes its sources over within two intervals; no event is lost or stored twice;
* two ``icsfeed poll`` and a stream of changes: no feed stays stale.

These are PostgreSQL tests in both passes of the suite (``pg_url``: a database of the test's
own on the private cluster). The database going away while serving is test_db_outage.py.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import IcsfeedPoller, IcsfeedServer, wait_until, write_config
from sqlalchemy import create_engine, text

from icsfeed.config import STORAGE_URL_ENV
from icsfeed.coordination import rendezvous_owner
from icsfeed.store.codec import Codec

pytestmark = pytest.mark.slow


def records(n: int, tag: str) -> list[dict[str, Any]]:
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    return [{"id": f"e{i}", "title": f"{tag} event {i}", "start": (base - timedelta(minutes=13 * i)).isoformat(),
             "account": ("acme", "globex")[i % 2]} for i in range(n)]


ACCOUNTS = """
accounts:
  - {id: acme, name: ACME}
  - {id: globex, name: Globex}
teams:
  - {id: all, name: Everyone, accounts: "*"}
insights: {enabled: false}
"""


def test_one_poller_and_three_web_processes_serve_the_same_feed(pg_url: str, tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": ACCOUNTS + """
sources:
  - {id: src, type: file, path: events.json, interval: 1, jitter: 0, mapping: {kind: alert, key: id, title: title, start: start, account: account}}
"""})
    (config_dir / "events.json").write_text(json.dumps(records(20, "v1")))
    env = {STORAGE_URL_ENV: pg_url}
    poller = IcsfeedPoller(config_dir, tmp_path / "poller", env=env)
    webs = [IcsfeedServer(config_dir, tmp_path / f"web{i}", env=env, scheduler=False) for i in range(3)]
    try:
        poller.start()
        for web in webs:
            web.start()
        urls = [web.feed_url("team/all") for web in webs]
        for url in urls:
            wait_until(lambda u=url: b"v1 event 19" in requests.get(u, timeout=10).content, 30, "the first poll everywhere")

        (config_dir / "events.json").write_text(json.dumps(records(20, "v2")))
        answers = [wait_until(lambda u=url: (r := requests.get(u, timeout=10)).status_code == 200
                              and b"v2 event 19" in r.content and r, 20, "the change everywhere") for url in urls]
        assert len({a.headers["ETag"] for a in answers}) == 1, [a.headers["ETag"] for a in answers]
        assert len({a.content for a in answers}) == 1
        etag = answers[0].headers["ETag"]
        for url in urls:  # conditional GETs, on each process
            assert requests.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
            assert requests.get(url, headers={"If-None-Match": '"stale"'}, timeout=10).status_code == 200
        for proc in [poller, *webs]:
            assert "Traceback" not in proc.log(), proc.log()[-3000:]
    finally:
        for proc in [*webs, poller]:
            proc.stop()


#: a command source that takes ``seconds`` and logs each run: (source, poller pid, start[, end, emitted]).
#: Run n of a source emits keys 0..n+1, titled "run n", so every poll changes what is stored.
GROWING = """
import json, os, sys, time
log, source, seconds, counters = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
parent, start = os.getppid(), time.time()
fd = os.open(os.path.join(counters, source), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, b".")
run = os.fstat(fd).st_size
os.close(fd)
with open(log, "a") as fh:
    fh.write(json.dumps({"source": source, "pid": parent, "start": start}) + "\\n")
while time.time() < start + seconds:
    if os.getppid() != parent:
        sys.exit(1)  # the poller died: nobody will store this poll
    time.sleep(0.02)
print(json.dumps([{"id": f"{source}-{i}", "t": f"run {run}", "s": "2026-01-05T10:00:00Z", "a": "acme"}
                  for i in range(run + 2)]))
with open(log, "a") as fh:
    fh.write(json.dumps({"source": source, "pid": parent, "start": start, "end": time.time(), "emitted": run + 2}) + "\\n")
"""
INTERVAL = 2.0
RUN_SECONDS = 0.6


def _runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_pollers_share_the_sources_and_the_survivor_of_a_kill_9_takes_over(pg_url: str, tmp_path: Path) -> None:
    names = [f"s{i}" for i in range(6)]
    owner_slot = {n: rendezvous_owner(n, {0, 1}) for n in names}
    assert set(owner_slot.values()) == {0, 1}, owner_slot  # the test needs both pollers to own some
    runs, counters = tmp_path / "runs.jsonl", tmp_path / "counters"
    counters.mkdir()
    config_dir = write_config(tmp_path / "config", {"grow.py": GROWING, "a.yaml": ACCOUNTS + "sources:\n" + "".join(
        f"  - {{id: {n}, type: command, interval: {INTERVAL}, jitter: 0, argv: [{json.dumps(sys.executable)}, grow.py, "
        f"{json.dumps(str(runs))}, {n}, '{RUN_SECONDS}', {json.dumps(str(counters))}], "
        "mapping: {kind: ticket, key: id, title: t, start: s, account: a}}\n" for n in names)})
    env = {STORAGE_URL_ENV: pg_url}
    first = IcsfeedPoller(config_dir, tmp_path / "p1", env=env)
    second = IcsfeedPoller(config_dir, tmp_path / "p2", env=env)
    try:
        first.start()  # slot 0
        wait_until(lambda: {r["source"] for r in _runs(runs) if "end" in r} == set(names), 30, "the first poller's first round")
        second.start()  # slot 1: takes its share
        slot_pid = {0: first.pid, 1: second.pid}
        time.sleep(3 * INTERVAL)  # settle
        window_start = time.time()
        time.sleep(4 * INTERVAL)
        window_end = time.time()

        def first_mid_poll() -> dict[str, Any] | None:
            all_runs = _runs(runs)
            ended = {(r["source"], r["start"]) for r in all_runs if "end" in r}
            return next((r for r in all_runs if r["pid"] == first.pid and "end" not in r
                         and (r["source"], r["start"]) not in ended and time.time() - r["start"] < 0.3), None)

        victim = wait_until(first_mid_poll, 20, "the first poller to be in the middle of a poll", every=0.01)
        first.kill(signal.SIGKILL)
        killed_at = time.time()
        time.sleep(2 * INTERVAL + 1.5)
        second.stop()  # graceful: its poll in flight is stored
        assert "Traceback" not in second.log(), second.log()[-3000:]
    finally:
        first.stop()
        second.stop()

    all_runs = _runs(runs)
    done = [r for r in all_runs if "end" in r]
    started = {(r["source"], r["start"]): r for r in all_runs if "end" not in r}
    # one poller at a time per source: no run starts while another one of the same source goes
    # on (a killed poller's run ends at the kill: its command then exits)
    spans = defaultdict(list)
    for key, r in started.items():
        end = next((d["end"] for d in done if (d["source"], d["start"]) == key), killed_at)
        spans[r["source"]].append((r["start"], end, r["pid"]))
    for source, items in spans.items():
        items.sort()
        for (_, end, pid), (start, _, other) in itertools.pairwise(items):
            assert start >= end - 0.05, f"{source}: a run by {other} started while one by {pid} was going on"

    # sharing: each source at its interval, not once per poller; each by its owner
    in_window = [r for r in started.values() if window_start <= r["start"] < window_end]
    per_source = defaultdict(int)
    for r in in_window:
        per_source[r["source"]] += 1
    limit = (window_end - window_start) / INTERVAL + 1
    assert all(1 <= per_source[n] <= limit for n in names), (dict(per_source), limit)
    by_owner = sum(1 for r in in_window if r["pid"] == slot_pid[owner_slot[r["source"]]])
    assert by_owner >= 0.8 * len(in_window), f"{by_owner} of {len(in_window)} polls by the source's owner"
    for slot in (0, 1):  # the poller that came second took its share
        assert any(r["pid"] == slot_pid[slot] for r in in_window), f"poller {slot} polled nothing"

    # the survivor takes over every source within two intervals, the one killed mid-poll included
    takeover = {}
    for source in names:
        after = [r["start"] for r in started.values() if r["source"] == source and r["pid"] == second.pid
                 and r["start"] > killed_at]
        assert after and min(after) <= killed_at + 2 * INTERVAL + 0.5, (source, victim, after and min(after) - killed_at)
        takeover[source] = round(min(after) - killed_at, 2)
    print(f"\npolls in {window_end - window_start:.1f} s with both pollers (interval {INTERVAL} s): {dict(per_source)}, "
          f"{by_owner} of {len(in_window)} by the source's owner; killed mid-poll of {victim['source']}; "
          f"first poll by the survivor after the kill, s: {takeover}")

    # nothing lost, nothing twice: the store holds exactly what each source's last finished run emitted
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            twice = conn.execute(text("SELECT source, key, count(*) FROM events GROUP BY source, key HAVING count(*) > 1")).all()
            stored = defaultdict(set)
            titles = defaultdict(set)
            codec = Codec(engine)  # rows are stored compressed
            for source, key, data in conn.execute(text("SELECT source, key, data FROM events")):
                stored[source].add(key)
                titles[source].add(json.loads(codec.text(data))["title"])
    finally:
        engine.dispose()
    assert twice == []
    for source in names:
        last = max((d for d in done if d["source"] == source), key=lambda d: d["end"])
        assert stored[source] == {f"{source}-{i}" for i in range(last["emitted"])}, source
        assert titles[source] == {f"run {last['emitted'] - 2}"}, (source, titles[source])


def test_two_pollers_under_a_stream_of_changes_leave_no_feed_stale(pg_url: str, tmp_path: Path) -> None:
    """Both pollers render (each claims the feeds it renders); after the last change every
    feed holds exactly what a fresh render of the store gives, and none is left dirty."""
    from icsfeed.config import load_config
    from icsfeed.render import build_feed
    from icsfeed.routing import all_feeds
    from icsfeed.store import FeedQuery, Store

    accounts = [f"c{i:02d}" for i in range(24)]
    config_text = "accounts:\n" + "".join(f"  - {{id: {a}, name: Customer {a}}}\n" for a in accounts) + """
teams:
  - {id: all, name: Everyone, accounts: "*"}
sources:
""" + "".join(f"  - {{id: f{s}, type: file, path: f{s}.json, interval: 1, jitter: 0, "
              "mapping: {kind: alert, key: id, title: title, start: start, account: account}}\n" for s in range(3))
    config_dir = write_config(tmp_path / "config", {"a.yaml": config_text})
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)

    def write(round_no: int) -> None:
        for s in range(3):
            (config_dir / f"f{s}.json").write_text(json.dumps([
                {"id": f"{s}-{i}", "title": f"round {round_no} alert {i}", "account": accounts[(i + s) % len(accounts)],
                 "start": (base + timedelta(minutes=17 * i)).isoformat()} for i in range(150)]))

    write(0)
    env = {STORAGE_URL_ENV: pg_url}
    pollers = [IcsfeedPoller(config_dir, tmp_path / f"p{i}", env=env) for i in range(2)]
    try:
        for poller in pollers:
            poller.start()
        for round_no in range(1, 8):
            time.sleep(0.7)
            write(round_no)
        config = load_config(config_dir, tmp_path / "check")
        store = Store(pg_url, uid_host=config.uid_host)
        try:
            def settled() -> bool:
                states = store.feed_render_states()
                if len(states) < len(accounts) + 1 or any(dirty for dirty, *_ in states.values()):
                    return False
                titles = {row.event.title for row in store.query_events(FeedQuery(0.0, 4e9))}
                return titles == {"round 7 alert " + str(i) for i in range(150)}
            wait_until(settled, 40, "the last change to be polled and rendered", every=0.3)
            now = datetime.now(timezone.utc)
            for spec in all_feeds(config):
                fresh = build_feed(config, store, spec, now, save_fragments=False)
                stored = store.get_feed(spec.feed_id)
                assert stored is not None and stored.etag == fresh.etag, spec.feed_id
                assert b"round 7 alert" in stored.body or spec.feed_id == "team/all" or fresh.event_count == 0
        finally:
            store.close()
        for poller in pollers:
            assert "Traceback" not in poller.log(), poller.log()[-3000:]
    finally:
        for poller in pollers:
            poller.stop()
