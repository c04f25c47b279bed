"""Serving while the database is away (icsfeed/web/outage.py, web/feeds.py).

A real PostgreSQL server goes away under running ``icsfeed serve --no-scheduler`` processes
(and a poller): a feed a process holds is still answered, 304s included; everything else that
needs the database is a 503 with Retry-After; ``/healthz`` says degraded; never a 500. When it
is back, the next requests succeed at once, and polls reach the feeds again.

Two ways of going away: the server restarts (``pg_ctl stop``/``start``: connections refused,
pooled connections dead), and the server stops answering (a TCP relay in front of it that
accepts and then says nothing, as a host that drops packets does): then requests must not
each wait for a connection attempt.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Self

import pytest
import requests
from postgres import PostgresCluster
from servers import IcsfeedPoller, IcsfeedServer, feed_token, free_port, wait_until, write_config

from icsfeed.config import STORAGE_URL_ENV

pytestmark = pytest.mark.slow

CONFIG = """
accounts:
  - {id: acme, name: ACME}
  - {id: globex, name: Globex}
teams:
  - {id: all, name: Everyone, accounts: "*"}
insights: {enabled: false}
sources:
  - {id: src, type: file, path: events.json, interval: 1, jitter: 0, mapping: {kind: alert, key: id, title: title, start: start, account: account}}
"""


def records(n: int, tag: str) -> list[dict[str, Any]]:
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    return [{"id": f"e{i}", "title": f"{tag} event {i}", "start": (base - timedelta(minutes=13 * i)).isoformat(),
             "account": ("acme", "globex")[i % 2]} for i in range(n)]


PLAIN = {"Accept-Encoding": "identity"}


class Hammer:
    """Requests in a loop from a thread, every status kept (to show that none was a 500)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.statuses: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            for url in self.urls:
                try:
                    status = requests.get(url, timeout=15).status_code
                except requests.RequestException as exc:
                    status = -1
                    print("hammer:", type(exc).__name__, url.split("?")[0])
                self.statuses[(url.split("?")[0], status)] += 1
            time.sleep(0.02)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_database_restart_while_serving(tmp_path: Path) -> None:
    """A private cluster (the session one must not go away under other tests)."""
    cluster = PostgresCluster().init().start()
    try:
        url = cluster.url(cluster.create_database())
        config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
        (config_dir / "events.json").write_text(json.dumps(records(20, "v1")))
        admin = ("admin", "outage-test-password")  # /status is an admin page
        env = {STORAGE_URL_ENV: url, "ICSFEED_ADMIN_USER": admin[0], "ICSFEED_ADMIN_PASSWORD": admin[1]}
        poller = IcsfeedPoller(config_dir, tmp_path / "poller", env=env)
        webs = [IcsfeedServer(config_dir, tmp_path / f"web{i}", env=env, scheduler=False) for i in range(2)]
        try:
            poller.start()
            for web in webs:
                web.start()
            first, second = webs
            acme, team = first.feed_url("account/acme"), first.feed_url("team/all")
            view = f"{second.base}/view/acme?token={feed_token('account/acme')}"
            wait_until(lambda: b"v1 event 18" in requests.get(acme, timeout=10).content, 30, "the first poll")
            held = requests.get(acme, headers=PLAIN, timeout=10)
            held_gz = requests.get(acme, timeout=10)  # requests asks for gzip
            assert held_gz.headers.get("Content-Encoding") == "gzip"
            assert requests.get(second.feed_url("account/acme"), timeout=10).status_code == 200
            assert requests.get(view, timeout=10).status_code == 200

            # the first process never serves the team feed (it is asked for it only while the
            # database is away); the second one does
            with Hammer([acme, second.feed_url("account/acme"), second.feed_url("team/all"), view,
                         f"{first.base}/healthz"]) as hammer:
                cluster.stop("fast")
                time.sleep(1.5)  # past the one-second ETag cache: today every feed request is a 500 from here
                for _ in range(2):
                    again = requests.get(acme, headers=PLAIN, timeout=10)
                    assert again.status_code == 200 and again.content == held.content  # stale-if-error
                    assert again.headers["ETag"] == held.headers["ETag"]
                    packed = requests.get(acme, timeout=10)
                    assert packed.status_code == 200 and packed.content == held.content
                    assert packed.headers["ETag"] == held_gz.headers["ETag"]
                    for etag, headers in ((held.headers["ETag"], PLAIN), (held_gz.headers["ETag"], {})):
                        cond = requests.get(acme, headers={**headers, "If-None-Match": etag}, timeout=10)
                        assert cond.status_code == 304, cond.status_code
                    never = requests.get(team, timeout=10)  # never fetched from this process
                    assert never.status_code == 503 and int(never.headers["Retry-After"]) > 0
                    page = requests.get(view, timeout=10)
                    assert page.status_code == 503 and int(page.headers["Retry-After"]) > 0, page.status_code
                    health = requests.get(f"{first.base}/healthz", timeout=10)
                    assert health.status_code == 200 and health.text.startswith("degraded: database unreachable"), health.text
                    status = requests.get(f"{first.base}/status", auth=admin, timeout=10)
                    assert status.status_code in (200, 503), status.status_code
                    time.sleep(1.5)

                cluster.start()
                time.sleep(1.5)  # past the gate's one-second hold
                for web in webs:  # the first request after the restart succeeds, on each process
                    r = requests.get(web.feed_url("team/all"), timeout=10)
                    assert r.status_code == 200, (web.base, r.status_code)
                assert requests.get(f"{first.base}/healthz", timeout=10).text == "ok\n"
                assert requests.get(view, timeout=10).status_code == 200
                (config_dir / "events.json").write_text(json.dumps(records(20, "v2")))
                for web in webs:  # and the poller got back to work
                    wait_until(lambda w=web: b"v2 event 18" in requests.get(w.feed_url("account/acme"), timeout=10).content,
                               30, "a poll after the restart to be served")
            codes = Counter(status for (_, status), n in hammer.statuses.items() for _ in range(n))
            print(f"\nrequests during and around the restart, by status: {dict(codes)}")
            assert codes[500] == 0 and codes[-1] == 0, hammer.statuses
            assert codes[503] > 0 and codes[200] > 0
            for web in webs:
                assert "Traceback" not in web.log(), web.log()[-3000:]
        finally:
            for proc in [*webs, poller]:
                proc.stop()
    finally:
        cluster.destroy()


class Relay:
    """A TCP relay on 127.0.0.1 in front of the database: ``forward`` passes bytes both ways;
    ``silent`` accepts connections and never answers (a host that drops packets, as far as a
    client can tell), and ``cut()`` closes every relayed connection. Counts connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "forward"
        self.connections = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(client)
                mode = self.mode
            if mode == "forward":
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                with self._lock:
                    self._open.append(upstream)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self.cut()


def test_requests_do_not_wait_for_a_database_that_does_not_answer(pg_url: str, tmp_path: Path) -> None:
    """The database host stops answering: the first request that needs it waits for one
    connection attempt (bounded: libpq's default is to wait for ever), then forty requests at
    once get the held feed or a 503 with one or two connection attempts among them, not one
    each."""
    from sqlalchemy.engine import make_url

    target = make_url(pg_url)
    relay = Relay(int(target.port or 5432)).start()
    relayed = target.set(port=relay.port).render_as_string(hide_password=False)
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    (config_dir / "events.json").write_text(json.dumps(records(20, "v1")))
    env = {STORAGE_URL_ENV: relayed}
    web = IcsfeedServer(config_dir, tmp_path / "web", env=env, scheduler=False)
    try:
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(tmp_path / "p"),
                               "poll", "--once"], capture_output=True, text=True, timeout=120, check=False,
                              env={**web.env})
        assert done.returncode == 0, done.stderr[-2000:]
        web.start()
        acme, team = web.feed_url("account/acme"), web.feed_url("team/all")
        held = requests.get(acme, timeout=10)
        assert held.status_code == 200

        relay.mode = "silent"
        relay.cut()
        time.sleep(1.2)  # past the ETag cache
        # the first request to need the database waits for one connection attempt, bounded
        # (libpq's default is to wait for ever: today this request times out)
        first = requests.get(team, timeout=20)
        assert first.status_code == 503 and int(first.headers["Retry-After"]) > 0
        before = relay.connections
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(lambda u: requests.get(u, timeout=20), [acme, team] * 20))
        attempts = relay.connections - before
        statuses = Counter((a.url == acme, a.status_code) for a in answers)
        assert statuses == Counter({(True, 200): 20, (False, 503): 20}), statuses
        assert all(a.content == held.content for a in answers if a.url == acme)
        assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 503)
        assert attempts <= 2, f"{attempts} connection attempts for 40 requests"
        print(f"\n40 requests while the database said nothing: {dict(statuses)}, {attempts} connection attempt(s)")
        health = requests.get(f"{web.base}/healthz", timeout=20)
        assert health.status_code == 200 and health.text.startswith("degraded"), health.text

        relay.mode = "forward"
        wait_until(lambda: requests.get(team, timeout=20).status_code == 200, 20, "the database to be used again")
        assert "Traceback" not in web.log(), web.log()[-3000:]
    finally:
        web.stop()
        relay.stop()
