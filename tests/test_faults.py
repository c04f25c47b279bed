"""Faults: origins that fail, a server killed mid-poll, a data directory that cannot be
written, a config that breaks while serving.

What must hold (docs/RELIABILITY.md): a failing source records why, backs off, and keeps
its last good events; every feed request meanwhile is answered with the last good feed;
``kill -9`` at any moment loses no committed event, never leaves half a poll, never makes
a UID twice, and the restarted server serves valid feeds at once; a read-only or full data
directory gives a clear error, keeps the process up and keeps serving what was rendered;
a broken config is refused, reported, and the last good one keeps running.

Everything runs for real: ``icsfeed serve`` subprocesses on 127.0.0.1, a real HTTP origin
that misbehaves on demand (tests/servers.py), real mounts (a read-only bind mount and a
tiny tmpfs; this suite runs as root in CI and in the sandbox).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import storage_url
from parsers import check_all_many, check_line_format
from servers import ControlledOrigin, IcsfeedServer, wait_until, write_config
from sqlalchemy import create_engine, text

from icsfeed.config import load_config
from icsfeed.live import LiveConfig
from icsfeed.scheduler import MAX_BACKOFF, PollScheduler, backoff_delay
from icsfeed.store import Store
from icsfeed.store.codec import Codec, unpack_body

ACCOUNTS = """
    accounts:
      - {id: acme, name: ACME, keys: [acme]}
    teams:
      - {id: all, name: Everyone, accounts: "*"}
    insights: {enabled: false}
    """
MAPPING = "{kind: alert, key: id, title: title, start: start, account: account}"


def records(n: int, tag: str = "v1") -> list[dict[str, Any]]:
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    return [{"id": f"e{i}", "title": f"{tag} event {i}", "start": (base - timedelta(minutes=7 * i)).isoformat(),
             "account": "acme"} for i in range(n)]


UID_LINE = re.compile(rb"\r\nUID:([^\r]+)")


def feed_uids(body: bytes) -> list[bytes]:
    """UIDs straight from the bytes (UID lines are short: never folded)."""
    return UID_LINE.findall(body)


# --- backoff -----------------------------------------------------------------------------------

def test_backoff_doubles_per_failure_and_is_capped() -> None:
    minute = timedelta(minutes=1)
    assert [backoff_delay(minute, n) for n in range(5)] == [minute, 2 * minute, 4 * minute, 8 * minute, 16 * minute]
    assert backoff_delay(minute, 50) == MAX_BACKOFF
    assert backoff_delay(timedelta(hours=3), 5) == timedelta(hours=3)  # never shorter than the interval


@pytest.mark.slow
def test_scheduler_moves_the_next_poll_out_after_each_failure(tmp_path: Path) -> None:
    """The real PollScheduler: after n failures in a row the job's next run is backoff_delay(n) away."""
    with ControlledOrigin(records(5)) as origin:
        origin.set_mode("500")
        config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent(ACCOUNTS) + textwrap.dedent(f"""
            sources:
              - {{id: src, type: http_json, url: "{origin.url}/r", interval: 1, jitter: 0, retries: 0, timeout: 2,
                  mapping: {MAPPING}}}
            """)})
        config = load_config(config_dir, tmp_path / "data")
        store = Store(config.storage_url, uid_host=config.uid_host)
        scheduler = PollScheduler(LiveConfig(config), store)
        scheduler.start()
        try:
            wait_until(lambda: store.source_state("src").consecutive_failures >= 3, 30, "three failures")
            job = scheduler.scheduler.get_job("poll:src")
            state = store.source_state("src")
            assert job is not None and job.next_run_time is not None
            expected = state.last_attempt + backoff_delay(config.sources["src"].interval, state.consecutive_failures).total_seconds()
            assert abs(job.next_run_time.timestamp() - expected) < 2.0, (job.next_run_time, expected)
            assert state.next_poll is not None and abs(state.next_poll - job.next_run_time.timestamp()) < 0.01
            assert "HTTP 500" in (state.last_error or "")
        finally:
            scheduler.shutdown()
            store.close()
        times = [t for t, mode in origin.log if mode == "500"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 2 and gaps[0] >= 1.8 and gaps[1] >= 3.8, gaps  # 2 s, then 4 s


# --- a failing origin while clients keep asking --------------------------------------------------

class FeedClient(threading.Thread):
    """Asks for a feed in a loop (one keep-alive session) and keeps every answer's facts."""

    def __init__(self, url: str, limit_seconds: float = 180.0) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit_seconds
        self.stop = threading.Event()
        self.answers: list[tuple[int, int, str]] = []  # status, VEVENT count, ETag
        self.errors: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with requests.Session() as session:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = session.get(self.url, timeout=10)
                    self.answers.append((r.status_code, r.content.count(b"BEGIN:VEVENT"), r.headers.get("ETag", "")))
                except requests.RequestException as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.02)


@pytest.mark.slow
def test_failing_origin_keeps_the_last_good_feed_served(tmp_path: Path) -> None:
    faults = [("500", "HTTP 500"), ("truncated", "the answer broke off after"), ("not_json", "not valid JSON"),
              ("hang", "no answer within 1.5s"), ("down", "cannot connect")]
    with ControlledOrigin(records(30)) as origin:
        config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent(ACCOUNTS) + textwrap.dedent(f"""
            sources:
              - {{id: src, type: http_json, url: "{origin.url}/r", interval: 1, jitter: 0, retries: 0, timeout: 1.5,
                  mapping: {MAPPING}}}
            """)})
        server = IcsfeedServer(config_dir, tmp_path / "data")
        client = None
        try:
            server.start()
            url = server.feed_url("account/acme")
            wait_until(lambda: requests.get(url, timeout=5).content.count(b"BEGIN:VEVENT") == 30, 30, "the first poll")
            store = Store(storage_url(tmp_path / "data"))
            client = FeedClient(url)
            client.start()
            for mode, error in faults:
                switched = time.time()
                origin.set_mode(mode)
                want = 2 if mode == "500" else 1  # 500: see the backoff grow
                # a failure recorded, and the scheduler's note of the next poll after it
                state = wait_until(lambda s=switched, w=want: (st := store.source_state("src")).last_error_at
                                   and st.last_error_at > s and st.consecutive_failures >= w
                                   and (st.next_poll or 0) > st.last_attempt and st, 40, f"a {mode} failure")
                assert error in (state.last_error or ""), (mode, state.last_error)
                assert state.next_poll is not None
                # the scheduler noted the next poll after the backoff for this many failures
                delay = backoff_delay(timedelta(seconds=1), state.consecutive_failures).total_seconds()
                assert state.next_poll - state.last_attempt >= delay - 0.5, (mode, state)
                origin.set_mode("ok")
                recovered = time.time()
                wait_until(lambda r=recovered: (st := store.source_state("src")).consecutive_failures == 0
                           and (st.last_success or 0) > r, 40, f"recovery after {mode}")
            client.stop.set()
            client.join(15)
            assert server.running
        finally:
            if client is not None:
                client.stop.set()
            server.stop()
    assert not client.errors, client.errors[:5]
    assert len(client.answers) >= 50, len(client.answers)
    statuses = {status for status, _, _ in client.answers}
    assert statuses == {200}, statuses
    assert {count for _, count, _ in client.answers} == {30}  # the last good events, every time
    assert len({etag for _, _, etag in client.answers}) == 1  # and the same bytes: nothing was re-rendered
    assert sorted(r.event.key for r in store.query_events(_everything())) == sorted(f"e{i}" for i in range(30))
    store.close()
    assert "Traceback" not in server.log()


def _everything() -> Any:
    from icsfeed.store import FeedQuery

    return FeedQuery(-1e13, 1e13)


# --- kill -9 in the middle of polls -----------------------------------------------------------------

GENERATOR = """
import json, os, sys, time
from datetime import datetime, timedelta, timezone
counter, n = sys.argv[1], int(sys.argv[2])
try:
    gen = int(open(counter).read()) + 1
except (FileNotFoundError, ValueError):
    gen = 1
with open(counter + ".tmp", "w") as fh:
    fh.write(str(gen))
os.replace(counter + ".tmp", counter)  # the test sees a poll start when this number moves
base = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
print(json.dumps([{"id": f"k{i}", "title": f"gen {gen} event {i}", "account": "acme" if i % 2 else "globex",
                   "start": (base - timedelta(minutes=9 * i)).isoformat()} for i in range(n)]))
"""
KILL_ROUNDS = 22
N_RECORDS = 2000


def _db_facts(url: str) -> dict[str, Any]:
    """What the database holds right now, read with the database itself (the server is dead):
    SQLite's own module (and its integrity check) on the file, else a plain connection."""
    events_sql = "SELECT key, uid, data, sequence FROM events WHERE source = 'gen'"
    feeds_sql = "SELECT feed_id, body FROM feeds WHERE body IS NOT NULL"
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute(events_sql).fetchall()
            feeds = {r[0]: r[1] for r in conn.execute(feeds_sql)}
        finally:
            conn.close()
    else:
        engine = create_engine(url)
        try:
            with engine.connect() as sa_conn:
                rows = [tuple(r) for r in sa_conn.execute(text(events_sql))]
                feeds = {r[0]: bytes(r[1]) for r in sa_conn.execute(text(feeds_sql))}
        finally:
            engine.dispose()
    engine = create_engine(url)  # the rows are stored compressed, some with dictionaries kept in the database
    try:
        codec = Codec(engine)
        gens = {int(re.match(r"gen (\d+) ", json.loads(codec.text(data))["title"]).group(1))  # type: ignore[union-attr]
                for _, _, data, _ in rows}
    finally:
        engine.dispose()
    return {"keys": [r[0] for r in rows], "uids": [r[1] for r in rows], "gens": gens,
            "sequences": {r[3] for r in rows}, "feeds": {k: unpack_body(v) for k, v in feeds.items()}}


def _poll_seconds(url: str) -> float:
    """How long the source's last poll took, as the poller recorded it (0: not recorded)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT last_duration FROM source_state WHERE source = 'gen'")).scalar()
    finally:
        engine.dispose()
    return float(value or 0.0)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_polls_loses_nothing(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    counter = tmp_path / "counter"
    write_config(config_dir, {"gen.py": GENERATOR, "a.yaml": """
        accounts:
          - {id: acme, name: ACME}
          - {id: globex, name: Globex}
        teams:
          - {id: all, name: Everyone, accounts: "*"}
        insights: {enabled: false}
        feeds: {window_back_days: 30, window_ahead_days: 1, budget: {max_events: 10000, max_bytes: 50MB}}  # every event counted: no rollups
        """ + f"""
        sources:
          - {{id: gen, type: command, interval: 1, jitter: 0, argv: [{json.dumps(sys.executable)}, gen.py, {json.dumps(str(counter))}, "{N_RECORDS}"],
              mapping: {{kind: alert, key: id, title: title, start: start, account: account}}}}
        """})
    db = storage_url(tmp_path / "data")
    server = IcsfeedServer(config_dir, tmp_path / "data", log_level="WARNING")
    rng = random.Random(20240601)
    bodies: list[bytes] = []
    committed_gen, last_sequence, mid_poll_kills = 0, -1, 0
    try:
        server.start()
        url = server.feed_url("team/all")
        wait_until(lambda: len(feed_uids(requests.get(url, timeout=10).content)) == N_RECORDS, 60, "the first complete poll")
        # the kills fall within 1.5 times a poll's duration on this machine (at most 1.2 s): on a
        # fast one a fixed window would mostly hit the pause between polls
        window = min(1.2, max(0.2, 1.5 * _poll_seconds(db)))
        for round_no in range(KILL_ROUNDS):
            if round_no:
                server.start()  # must come up on whatever the kill left
            # the restarted server serves complete, valid feeds at once
            for feed in ("team/all", "account/acme", "account/globex"):
                r = requests.get(server.feed_url(feed), timeout=10)
                assert r.status_code == 200, (round_no, feed, r.status_code)
                check_line_format(r.content)
                uids = feed_uids(r.content)
                expected = N_RECORDS if feed == "team/all" else N_RECORDS // 2
                assert len(uids) == len(set(uids)) == expected, (round_no, feed, len(uids), len(set(uids)))
                feed_gens = {int(g) for g in re.findall(rb"SUMMARY:\xf0\x9f\x9a\xa8 gen (\d+) ", r.content)}
                assert len(feed_gens) == 1, (round_no, feed, feed_gens)  # one poll's state, never a mix
                assert min(feed_gens) >= committed_gen, (round_no, feed, feed_gens, committed_gen)  # not stale
                if feed == "team/all":
                    bodies.append(r.content)
            # kill it at a random moment of a poll
            started = int(counter.read_text())
            wait_until(lambda s=started: counter.exists() and int(counter.read_text()) > s, 20, "the next poll to start",
                       every=0.01)
            time.sleep(rng.uniform(0.0, window))
            server.kill()
            facts = _db_facts(db)
            assert sorted(facts["keys"]) == sorted(f"k{i}" for i in range(N_RECORDS)), round_no  # nothing lost
            assert len(set(facts["uids"])) == N_RECORDS  # no UID twice
            assert len(facts["gens"]) == 1 and len(facts["sequences"]) == 1, facts["gens"]  # a whole poll, or none of it
            gen, = facts["gens"]
            sequence, = facts["sequences"]
            assert gen >= committed_gen and sequence >= last_sequence  # nothing committed was rolled back
            if int(counter.read_text()) > gen:
                mid_poll_kills += 1  # the command had run, its poll never committed
            committed_gen, last_sequence = gen, sequence
            for feed_id, body in facts["feeds"].items():
                assert len(set(feed_uids(body))) == len(feed_uids(body)), feed_id
        # and once more: up, a poll goes through, a clean stop
        server.start()
        before = committed_gen
        wait_until(lambda: max(_db_facts(db)["gens"]) > before, 30, "a poll after the last restart")
        server.stop()
    finally:
        server.stop()
    print(f"{mid_poll_kills} of {KILL_ROUNDS} kills hit a poll in flight (each within {window:.2f} s of its start)")
    assert mid_poll_kills >= KILL_ROUNDS // 3, f"only {mid_poll_kills} of {KILL_ROUNDS} kills hit a poll in flight"
    check_all_many([bodies[0], bodies[len(bodies) // 2], bodies[-1]])
    assert "Traceback" not in server.log()


# --- a data directory that cannot be written ----------------------------------------------------

@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points made by a test; unmounted at teardown (lazily if still busy)."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def _mount(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, (f"{' '.join(argv)} failed ({done.stderr.strip()}): these tests need root "
                                  "and mount (they run as root in CI)")


def _file_source_env(tmp_path: Path, n: int, data_dir: Path) -> tuple[Path, Path]:
    config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent(ACCOUNTS) + textwrap.dedent(f"""
        sources:
          - {{id: src, type: file, path: events.json, interval: 1, jitter: 0, mapping: {MAPPING}}}
        """)})
    (config_dir / "events.json").write_text(json.dumps(records(n)))
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir),
                           "poll", "--once"], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "ICSFEED_SECRET_KEY": "x" * 32})
    assert done.returncode == 0, done.stderr
    return config_dir, data_dir


@pytest.mark.slow
@pytest.mark.sqlite_only  # a read-only SQLite file; a server database is not in the data dir
def test_read_only_data_dir_keeps_serving_and_says_why(tmp_path: Path, mounts: list[Path]) -> None:
    """icsfeed started on a data directory that is mounted read-only (a read-only volume, a
    disk the kernel remounted read-only and a restart). A bind mount cannot make files that a
    running process already holds open read-only, so "full" below covers writes failing while
    running."""
    data = tmp_path / "data"
    config_dir, _ = _file_source_env(tmp_path, 20, data)
    _mount(["mount", "--bind", str(data), str(data)])
    mounts.append(data)
    _mount(["mount", "-o", "remount,bind,ro", str(data)])
    assert subprocess.run(["touch", str(data / "probe")], capture_output=True, check=False).returncode != 0

    server = IcsfeedServer(config_dir, data)
    try:
        server.start()  # a read-only database is opened, not refused
        url = server.feed_url("account/acme")
        first = requests.get(url, timeout=10)
        assert first.status_code == 200 and first.content.count(b"BEGIN:VEVENT") == 20
        assert requests.get(f"{server.base}/healthz", timeout=5).status_code == 200
        (config_dir / "events.json").write_text(json.dumps(records(25, "v2")))  # a change it cannot store
        server.wait_for(lambda: server.log().count("attempt to write a readonly database") >= 3, 30,
                        "polls to fail on the read-only database")
        assert re.search(r"poll of src not stored: cannot write poll of src: attempt to write a readonly database", server.log())
        for _ in range(20):  # still serving the feed it had, the whole time
            r = requests.get(url, timeout=10)
            assert r.status_code == 200 and r.content == first.content
        assert server.running and "Traceback" not in server.log()

        assert "cannot be written: serving what is stored" in server.log()

        _mount(["mount", "-o", "remount,bind,rw", str(data)])  # writable again: a restart catches up
        server.stop()
        server.start()
        server.wait_for(lambda: requests.get(url, timeout=10).content.count(b"BEGIN:VEVENT") == 25, 30, "recovery")
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.sqlite_only  # the SQLite file on a full disk; a server database is not in the data dir
def test_full_data_dir_keeps_serving_and_says_why(tmp_path: Path, mounts: list[Path]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _mount(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(data)])
    mounts.append(data)
    config_dir, _ = _file_source_env(tmp_path, 20, data)
    server = IcsfeedServer(config_dir, data)
    filler = data / "filler"
    try:
        server.start()
        url = server.feed_url("account/acme")
        first = requests.get(url, timeout=10)
        assert first.status_code == 200 and first.content.count(b"BEGIN:VEVENT") == 20
        with open(filler, "wb", buffering=0) as fh:  # take every byte that is left
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        (config_dir / "events.json").write_text(json.dumps(records(400, "v2" + "x" * 400)))
        server.wait_for(lambda: "database or disk is full" in server.log(), 30, "a poll to fail on the full disk")
        assert re.search(r"poll of src not stored: .*database or disk is full", server.log())
        for _ in range(20):
            r = requests.get(url, timeout=10)
            assert r.status_code == 200 and r.content == first.content
        assert server.running and "Traceback" not in server.log()

        filler.unlink()  # room again: the next poll goes through
        server.wait_for(lambda: requests.get(url, timeout=10).content.count(b"BEGIN:VEVENT") == 400, 30, "recovery")
    finally:
        server.stop()


# --- a config that breaks while serving -----------------------------------------------------------

@pytest.mark.slow
def test_broken_config_reload_keeps_the_last_good_config(tmp_path: Path) -> None:
    config_dir, data = _file_source_env(tmp_path, 5, tmp_path / "data")
    env = {"ICSFEED_ADMIN_USER": "admin", "ICSFEED_ADMIN_PASSWORD": "s3cret-admin"}
    server = IcsfeedServer(config_dir, data, env=env)
    auth = ("admin", "s3cret-admin")
    try:
        server.start()
        acme = server.feed_url("account/acme")
        assert requests.get(acme, timeout=10).status_code == 200
        good = (config_dir / "a.yaml").read_text()
        broken = good.replace("accounts:\n", "accounts:\n  - {id: newco, name: New Co}\n  - [unclosed\n", 1)
        (config_dir / "a.yaml").write_text(broken)
        server.wait_for(lambda: "config change refused" in server.log(), 20, "the broken config to be refused")
        status = requests.get(f"{server.base}/status", auth=auth, timeout=10)
        assert status.status_code == 200
        assert "config change refused; the last good config keeps running" in status.text
        assert "a.yaml" in status.text and "YAML syntax error" in status.text
        assert requests.get(acme, timeout=10).status_code == 200  # the old config still serves
        assert requests.get(server.feed_url("account/newco"), timeout=10).status_code == 404  # the new one is not in
        assert server.running

        (config_dir / "a.yaml").write_text(good.replace("accounts:\n", "accounts:\n  - {id: newco, name: New Co}\n", 1))
        server.wait_for(lambda: requests.get(server.feed_url("account/newco"), timeout=10).status_code == 200, 20,
                        "the fixed config to take effect")
        assert "config change refused" not in requests.get(f"{server.base}/status", auth=auth, timeout=10).text
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# --- a change that lands while a feed renders ---------------------------------------------------

def test_change_marked_during_a_render_keeps_the_feed_dirty(tmp_path: Path) -> None:
    """A poll that commits while render_feeds is building a feed must not be lost: the render
    read the dirty generation first, so its save leaves the feed dirty for the next render."""
    from icsfeed.render import render_feeds

    config_dir, data = _file_source_env(tmp_path, 3, tmp_path / "data")
    config = load_config(config_dir, data)
    store = Store(config.storage_url, uid_host=config.uid_host)
    assert render_feeds(config, store, force=True)
    generation = store.feed_render_generations()["account/acme"][3]
    store.mark_dirty(["account/acme"])  # a poll committed while the feed was being built
    body = store.get_feed("account/acme")
    assert body is not None
    store.save_feed("account/acme", body.body, b"", body.etag, event_count=3, now=time.time(), render_seconds=0.1,
                    render_key="k", window_day="d", generation=generation)
    assert store.feed_render_states()["account/acme"][0] is True  # still dirty
    assert "account/acme" in render_feeds(config, store)  # and the next render picks it up
    assert store.feed_render_states()["account/acme"][0] is False
    assert render_feeds(config, store) == []  # then nothing is left to do
    store.close()
