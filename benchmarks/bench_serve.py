"""Serving a cached 2,000-event feed: ``icsfeed serve`` (waitress) next to nginx.

Both serve the same bytes on 127.0.0.1: icsfeed from its store (token check, metadata
lookup, conditional GET), nginx the same body as a static file (``gzip_static`` for the
compressed variant). ``wrk`` drives both with the same settings for 10 s each and the
benchmark reads requests/s, latency and the count of non-2xx/3xx answers.

Measured: full 200 answers (identity and gzip), and the 304 path (If-None-Match with the
current ETag) which is what subscribed calendars mostly do.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from common import line, make_env, synthetic_event
from servers import IcsfeedServer, free_port

from icsfeed.render import render_feeds

N = 2_000
DURATION = int(os.environ.get("ICSFEED_BENCH_SECONDS", "10"))
WRK_THREADS, WRK_CONNECTIONS = 2, 32

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    sendfile on; tcp_nopush on; keepalive_requests 1000000;
    types {{ text/calendar ics; }}
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
        gzip_static on;
        etag on;
    }}
}}
"""


def wrk(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Run wrk; requests/s, p50/p99 latency (ms) and the number of non-2xx/3xx answers."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{DURATION}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=DURATION + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def latency(pct: str) -> float:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "bad": float(bad.group(1)) if bad else 0.0,
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``url`` answers at all (bounded to 15 s); SystemExit if ``proc`` dies or never listens."""
    deadline = time.monotonic() + 15
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() is not None else ""
                raise SystemExit(f"{what} did not start: {err}") from None
            time.sleep(0.05)


def run() -> dict[str, float]:
    threads = os.environ.get("ICSFEED_BENCH_THREADS")  # default: server.threads from config
    env = make_env(["acme"], extra_yaml=f"server: {{threads: {threads}}}\n" if threads else "")
    now = datetime.now(timezone.utc)
    rnd = random.Random(7)
    env.store.apply_poll("bench", [synthetic_event("bench", i, "acme", now, rnd) for i in range(N)], absence="keep",
                         complete=True, now=time.time(), previous_success=None)
    assert render_feeds(env.config, env.store, now=now) == ["account/acme"]
    stored = env.store.get_feed("account/acme")
    assert stored is not None and stored.event_count == N
    env.close()

    prefix = Path(tempfile.mkdtemp(prefix="icsfeed-nginx-"))
    (prefix / "www").mkdir()
    (prefix / "tmp").mkdir()
    (prefix / "www" / "acme.ics").write_bytes(stored.body)
    for path in (prefix, prefix / "www", prefix / "www" / "acme.ics"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # nginx workers run as nobody
    nginx_port = free_port()
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=nginx_port))
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        raise SystemExit("nginx is not installed (Debian package nginx-light)")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(prefix / "nginx.conf"), "-p", str(prefix)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = IcsfeedServer(env.base / "config", env.base / "data", scheduler=False, log_level="WARNING")
    figures: dict[str, float] = {}
    try:
        server.start()
        nginx_url = f"http://127.0.0.1:{nginx_port}/acme.ics"
        icsfeed_url = server.feed_url("account/acme")
        _wait_http(nginx_url, nginx, "nginx")
        # nginx serves the very gzip bytes icsfeed makes (gzip_static), and the same plain body
        ours_gz = requests.get(icsfeed_url, timeout=10, headers={"Accept-Encoding": "gzip"}, stream=True)
        gz_body = ours_gz.raw.read(decode_content=False)
        assert ours_gz.headers["Content-Encoding"] == "gzip" and gzip.decompress(gz_body) == stored.body
        (prefix / "www" / "acme.ics.gz").write_bytes(gz_body)
        (prefix / "www" / "acme.ics.gz").chmod(0o644)
        ours = requests.get(icsfeed_url, timeout=10)
        theirs = requests.get(nginx_url, timeout=10, headers={"Accept-Encoding": "identity"})
        assert ours.status_code == 200 and ours.content == theirs.content == stored.body, "not the same bytes"
        etag = ours.headers["ETag"]
        assert requests.get(icsfeed_url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        nginx_etag = theirs.headers["ETag"]

        close = {"Connection": "close"}
        runs = {
            "200 identity": ({"Accept-Encoding": "identity"}, {"Accept-Encoding": "identity"}),
            "200 gzip": ({"Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip"}),
            "304 (If-None-Match)": ({"If-None-Match": etag}, {"If-None-Match": nginx_etag}),
            # what an hourly-polling calendar does: one request per connection
            "304, a new connection each": ({"If-None-Match": etag, **close}, {"If-None-Match": nginx_etag, **close}),
        }
        print(f"Serving one cached feed of {N:,} events ({len(stored.body) / 1e6:.2f} MB, gzip {len(gz_body) / 1e3:.0f} kB); "
              f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{DURATION}s on 127.0.0.1")
        for name, (our_headers, their_headers) in runs.items():
            a = wrk(icsfeed_url, our_headers)
            b = wrk(nginx_url, their_headers)
            slug = name.split(" ")[0].rstrip(",") + ("_gz" if "gzip" in name else "") + ("_close" if "new connection" in name else "")
            figures[f"icsfeed_{slug}"], figures[f"nginx_{slug}"] = a["rps"], b["rps"]
            figures[f"icsfeed_{slug}_bad"] = a["bad"] + a["socket_errors"]
            print(line(f"{name}: icsfeed serve (waitress)", f"{a['rps']:,.0f} req/s",
                       f"p50 {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms, errors {a['bad'] + a['socket_errors']:.0f}"))
            print(line(f"{name}: nginx static file", f"{b['rps']:,.0f} req/s",
                       f"p50 {b['p50']:.1f} ms, p99 {b['p99']:.1f} ms"))
            print(line("  ratio icsfeed / nginx", f"{a['rps'] / b['rps']:.2f}", "(goal >= 0.3)"))
        # the ceiling: waitress itself with an app that does nothing (same threads)
        ceiling_port = free_port()
        (prefix / "body.gz").write_bytes(gz_body)
        ceiling = subprocess.Popen([sys.executable, str(Path(__file__).with_name("waitress_ceiling.py")), str(ceiling_port),
                                    str(env.config.server.threads), str(prefix / "body.gz")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{ceiling_port}"
            _wait_http(base + "/304", ceiling, "the waitress ceiling app")
            for name, path, headers in (("200 gzip body", "/", {}), ("304 (If-None-Match)", "/304", {}),
                                        ("304, a new connection each", "/304", {"Connection": "close"})):
                c = wrk(base + path, headers)
                slug = name.split(" ")[0].rstrip(",") + ("_gz" if "gzip" in name else "") + ("_close" if "new connection" in name else "")
                figures[f"waitress_ceiling_{slug}"] = c["rps"]
                nginx_rps = figures[f"nginx_{slug}"]
                print(line(f"ceiling, {name}: waitress + an empty WSGI app", f"{c['rps']:,.0f} req/s",
                           f"{c['rps'] / nginx_rps:.2f} of nginx: the best any WSGI app on waitress gets here"))
        finally:
            ceiling.terminate()
            ceiling.wait(timeout=10)
    finally:
        server.stop()
        nginx.terminate()
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(env.base, ignore_errors=True)
    return figures


if __name__ == "__main__":
    run()
