"""Pollers side by side (icsfeed/coordination.py): claims that other processes respect and that
die with their holder, and work split between real processes on both backends.

Every test here that runs processes runs on SQLite (record locks on ``<db>-locks``) and on a
real PostgreSQL server (advisory locks) -- the coordination is not the same code on the two,
so both are tried whatever the backend of the run. Scheduled pollers over time, a ``kill -9``
mid-poll and web processes are in test_multiprocess.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from servers import REPO, write_config

from icsfeed.config import STORAGE_URL_ENV, load_config
from icsfeed.coordination import Coordinator, rendezvous_owner
from icsfeed.scheduler import poll_wait
from icsfeed.store import SourceState, Store

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A storage URL of either backend, for this process (load_config) and every child."""
    if request.param == "sqlite":
        (tmp_path / "data").mkdir(exist_ok=True)
        value = f"sqlite:///{tmp_path / 'data' / 'icsfeed.db'}"
    else:
        value = request.getfixturevalue("pg_url")
    monkeypatch.setenv(STORAGE_URL_ENV, value)
    return value


# --- the policy, alone ---------------------------------------------------------------------------

def test_rendezvous_moves_only_the_keys_of_a_member_that_leaves() -> None:
    keys = [f"source-{i}" for i in range(300)]
    three = {k: rendezvous_owner(k, {0, 1, 2}) for k in keys}
    assert set(Counter(three.values())) == {0, 1, 2}
    assert min(Counter(three.values()).values()) > 60, "roughly a third each"
    two = {k: rendezvous_owner(k, {0, 2}) for k in keys}
    assert all(two[k] == three[k] for k in keys if three[k] != 1), "the keys of the others stay put"
    assert rendezvous_owner("x", set()) is None


def test_poll_wait_shares_a_source_at_its_interval_whoever_polled_it() -> None:
    minute = timedelta(minutes=1)
    polled = SourceState(source="s", last_attempt=1000.0)
    # the owner polls one interval after the last attempt (a little before: timers run early)
    assert poll_wait(polled, minute, 1030.0, preferred=True, since=0) == pytest.approx(24.0)
    assert poll_wait(polled, minute, 1060.0, preferred=True, since=0) == 0.0
    # any other poller only half an interval later: it takes over from a dead owner, never races a live one
    assert poll_wait(polled, minute, 1060.0, preferred=False, since=0) == pytest.approx(30.0)
    assert poll_wait(polled, minute, 1090.0, preferred=False, since=0) == 0.0
    # failures in a row: the backoff counts for every poller
    failing = SourceState(source="s", last_attempt=1000.0, consecutive_failures=2)
    assert poll_wait(failing, minute, 1120.0, preferred=True, since=0) == pytest.approx(114.0)
    # never polled: the owner at once, the others half an interval after they started
    assert poll_wait(SourceState(source="s"), minute, 500.0, preferred=True, since=500.0) == 0.0
    assert poll_wait(SourceState(source="s"), minute, 500.0, preferred=False, since=500.0) == pytest.approx(30.0)


# --- claims across processes ----------------------------------------------------------------------

HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from icsfeed.coordination import Coordinator
from icsfeed.store import Store
store = Store({url!r})
coordinator = Coordinator(store.engine)
coordinator.join()
with coordinator.source("shared") as mine:
    print("held" if mine else "refused", coordinator.slot, flush=True)
    time.sleep(120)
"""


def test_claims_exclude_other_processes_and_die_with_them(url: str) -> None:
    """A claim held by another process is refused here; after a ``kill -9`` of that process it
    is free at once (no lease to expire), and its member slot is gone from the live set."""
    store = Store(url)
    here = Coordinator(store.engine)
    here.join()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), url=url)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        first = holder.stdout.readline().split()
        assert first == ["held", "1"], first  # slot 0 is ours
        assert here.members() == {0, 1}
        with here.source("shared") as mine:
            assert not mine, "the other process holds it"
        with here.source("other") as mine:
            assert mine, "a different source is free"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed connection within milliseconds
            with here.source("shared") as mine:
                if mine:
                    break
            assert time.monotonic() < deadline, "the dead process's claim was never released"
            time.sleep(0.05)
        time.sleep(0.3)  # past the members cache
        assert here.members() == {0}
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
        here.close()
        store.close()


# --- two `icsfeed poll --once` at the same time ----------------------------------------------------

#: a command source that takes a while and logs each run: (source, poller pid, start[, end])
SLOW = """
import json, os, sys, time
log, source, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
parent, start = os.getppid(), time.time()
with open(log, "a") as fh:
    fh.write(json.dumps({"source": source, "pid": parent, "start": start}) + "\\n")
while time.time() < start + seconds:
    if os.getppid() != parent:
        sys.exit(1)  # the poller died: nobody will store this poll
    time.sleep(0.02)
print(json.dumps([{"id": f"{source}-{i}", "t": f"{source} event {i}", "s": "2026-01-05T10:00:00Z", "a": "acme"}
                  for i in range(5)]))
with open(log, "a") as fh:
    fh.write(json.dumps({"source": source, "pid": parent, "start": start, "end": time.time()}) + "\\n")
"""


def slow_sources(config_dir: Path, runs: Path, names: list[str], seconds: float, interval: str = "1h") -> str:
    write_config(config_dir, {"slow.py": SLOW})
    return "sources:\n" + "".join(
        f"  - {{id: {n}, type: command, interval: {interval}, jitter: 0, "
        f"argv: [{json.dumps(sys.executable)}, slow.py, {json.dumps(str(runs))}, {n}, '{seconds}'], "
        "mapping: {kind: ticket, key: id, title: t, start: s, account: a}}\n" for n in names)


def read_runs(runs: Path) -> list[dict[str, float | str | int]]:
    if not runs.exists():
        return []
    return [json.loads(line) for line in runs.read_text().splitlines() if line.strip()]


def test_two_poll_once_processes_split_the_sources(url: str, tmp_path: Path) -> None:
    """Two ``icsfeed poll --once`` started together: every source is polled once, by one of
    them, never by both at once; each leaves the others' sources to them. Today both poll all."""
    names = [f"s{i}" for i in range(6)]
    runs = tmp_path / "runs.jsonl"
    config_dir = tmp_path / "config"
    write_config(config_dir, {"a.yaml": "accounts: [{id: acme, name: ACME}]\ninsights: {enabled: false}\n"
                              + slow_sources(config_dir, runs, names, 1.0)})
    Store(url).close()  # the schema first: two processes creating it at once is not what is tried here
    argv = [sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(tmp_path / "data"), "poll", "--once"]
    env = {**os.environ, "ICSFEED_SECRET_KEY": "k" * 32, "ICSFEED_POLL_HELPERS": "0"}  # two pollers, no helpers
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    done = [r for r in read_runs(runs) if "end" in r]
    per_source = Counter(str(r["source"]) for r in done)
    assert per_source == Counter(dict.fromkeys(names, 1)), per_source  # each once, none twice, none missed
    by_pid = Counter(int(r["pid"]) for r in done)
    assert set(by_pid) == {p.pid for p in procs}, f"both pollers took a share: {by_pid}"
    for out, _ in outputs:  # and each says which it left to the other
        left = [line for line in out.splitlines() if "not polled here" in line]
        polled = [line for line in out.splitlines() if " new, " in line]
        assert len(left) + len(polled) == len(names), out
    store = Store(url)
    try:
        assert store.event_counts() == dict.fromkeys(names, 5)
    finally:
        store.close()


# --- renders and insight refreshes split between processes ------------------------------------------

SPLITTER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from icsfeed.config import load_config
from icsfeed.coordination import Coordinator
from icsfeed.poller import refresh_due_insights
from icsfeed.render import render_feeds
from icsfeed.store import Store
config = load_config({config!r}, {data!r})
store = Store(config.storage_url, uid_host=config.uid_host)
coordinator = Coordinator(store.engine)
barrier = Path({barrier!r})
(barrier / "{name}").touch()
deadline = time.monotonic() + 60
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.005)
if {job!r} == "render":
    with coordinator.feed_claims() as claim:
        done = render_feeds(config, store, claim=claim)
else:
    done = refresh_due_insights(config, store, claims=coordinator)
print("RESULT " + json.dumps(done), flush=True)
"""


def _split(job: str, config_dir: Path, data: Path, tmp_path: Path) -> list[object]:
    """Run ``job`` in two processes that start it at the same moment; their results."""
    barrier = tmp_path / f"barrier-{job}"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", SPLITTER.format(repo=str(REPO), config=str(config_dir), data=str(data),
                                                                    barrier=str(barrier), name=name, job=job)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT ")))
    return results


def test_two_processes_split_the_renders_and_the_insight_refreshes(url: str, tmp_path: Path) -> None:
    """60 dirty feeds and 60 accounts due for insights, two processes at once: each feed is
    rendered by exactly one of them, each account refreshed once in all; both take a share.
    Today each renders every feed and refreshes every account."""
    from icsfeed.poller import poll

    accounts = [f"c{i:02d}" for i in range(60)]
    config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent("""
        accounts:
        """) + "".join(f"  - {{id: {a}, name: Customer {a}}}\n" for a in accounts) + textwrap.dedent("""
        sources:
          - {id: src, type: file, path: events.json, mapping: {kind: alert, key: id, title: t, start: s, account: a}}
        """)})
    now = time.time()
    (config_dir / "events.json").write_text(json.dumps([
        {"id": f"e{i}", "t": f"alert {i} " + "x" * 200, "s": now - 3600 * (i % 500), "a": accounts[i % len(accounts)]}
        for i in range(6000)]))
    data = tmp_path / "data"
    config = load_config(config_dir, data)
    store = Store(config.storage_url, uid_host=config.uid_host)
    try:
        assert all(r.ok for r in poll(config, store))  # everything rendered once, by this process
        store.mark_dirty([f"account/{a}" for a in accounts])
        store.mark_insights_due(accounts)
        dirty = {f for f, (is_dirty, *_rest) in store.feed_render_states().items() if is_dirty}
        assert dirty == {f"account/{a}" for a in accounts}

        a, b = _split("render", config_dir, data, tmp_path)
        assert isinstance(a, list) and isinstance(b, list)
        assert not set(a) & set(b), f"rendered by both: {sorted(set(a) & set(b))[:5]}"
        assert set(a) | set(b) == dirty
        assert a and b, f"one process rendered everything ({len(a)} / {len(b)})"
        assert not any(is_dirty for is_dirty, *_rest in store.feed_render_states().values())

        assert len(store.insights_due()) == len(accounts)
        first, second = _split("insights", config_dir, data, tmp_path)
        assert first + second == len(accounts), (first, second)  # today: 2 x 60
        assert first and second, (first, second)
        assert store.insights_due() == {}
    finally:
        store.close()


def test_two_coordinators_in_one_process_exclude_each_other(url: str) -> None:
    """Record locks belong to the process (SQLite): Coordinators of one process must still
    exclude each other, and closing one must not drop the claims of another."""
    store = Store(url)
    first, second = Coordinator(store.engine), Coordinator(store.engine)
    try:
        with first.source("x") as mine:
            assert mine
            with second.source("x") as theirs:
                assert not theirs
            second.close()
            third = Coordinator(store.engine)
            with third.source("x") as again:
                assert not again, "closing another Coordinator dropped this one's claim"
            third.close()
        fourth = Coordinator(store.engine)
        with fourth.source("x") as free:
            assert free
        fourth.close()
    finally:
        first.close()
        store.close()


def test_two_processes_marking_the_same_new_feed_at_once_both_succeed(url: str) -> None:
    """Pollers side by side mark the same feeds dirty, and on a new store those rows do not
    exist yet: one poll is about to insert the row, another inserts it and commits first, then
    the first one's insert runs. At d97b23e that poll failed on the unique constraint (and lost
    its events); now the late insert bumps the row instead. The interleaving is forced, not
    hoped for: the first store's INSERT waits until the second store's mark has committed."""
    import re
    import threading

    from sqlalchemy import event

    first, second = Store(url), Store(url)
    read, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def pause_before_the_insert(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not read.is_set() and re.match(r"\s*INSERT INTO feeds\b", statement):
            read.set()
            go.wait(10)

    event.listen(first.engine, "before_cursor_execute", pause_before_the_insert)

    def mark() -> None:
        try:
            first.mark_dirty(["account/new"])
        except BaseException as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=mark)
        thread.start()
        assert read.wait(10)
        second.mark_dirty(["account/new"])  # the other poller inserts the row and commits first
        go.set()
        thread.join(15)
        assert errors == [], errors
        dirty, _key, _day, generation = second.feed_render_generations()["account/new"]
        assert dirty and generation == 2  # both marks counted: a render that read 1 leaves it dirty
    finally:
        go.set()
        first.close()
        second.close()
