"""Serving a cached 2,000-event feed: ``icsfeed serve`` (waitress) next to nginx.

Both serve the same bytes on 127.0.0.1: icsfeed from its store (token check, metadata
lookup, conditional GET), nginx the same body as a static file (``gzip_static`` for the
compressed variant). ``wrk`` drives both with the same settings for 10 s each and the
benchmark reads requests/s, latency and the count of non-2xx/3xx answers.

Measured: full 200 answers (identity and gzip), and the 304 path (If-None-Match with the
current ETag) which is what subscribed calendars mostly do. Then the deployment: nginx
running the shipped site (deploy/nginx/icsfeed.conf: TLS and its one-second micro-cache)
in front of icsfeed, next to the same nginx serving the same bytes as a static file over
the same TLS, in the same run.
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
from nginx_site import Certificate, Nginx, make_certificate, render_site
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
    server {{  # the same files over the TLS settings of the shipped site
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {cert}; ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:static_tls:10m; ssl_session_timeout 1d;
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
    server_yaml = "server: {trusted_proxies: [127.0.0.1]" + (f", threads: {threads}" if threads else "") + "}\n"
    env = make_env(["acme"], extra_yaml=server_yaml, unbudgeted=True)  # all N events in the feed
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
    nginx_port, tls_port = free_port(), free_port()
    cert = make_certificate(prefix / "tls")
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=nginx_port, tls_port=tls_port,
                                                         cert=cert.cert, key=cert.key))
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
        figures.update(_shipped_site(prefix, server, cert, f"https://127.0.0.1:{tls_port}/acme.ics", stored.body, gz_body))
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


def _shipped_site(prefix: Path, server: IcsfeedServer, cert: Certificate, static_url: str, body: bytes,
                  gz_body: bytes) -> dict[str, float]:
    """nginx with deploy/nginx/icsfeed.conf in front of icsfeed, next to nginx static, both https."""
    https_port, http_port = free_port(), free_port()
    site = render_site(https_port=https_port, http_port=http_port, upstream=f"127.0.0.1:{server.port}", cert=cert,
                       cache_dir=prefix / "site" / "cache", access_log=prefix / "site" / "access.log")
    nginx = Nginx(prefix / "site", site, (https_port, http_port)).start()
    figures: dict[str, float] = {}
    try:
        url = server.feed_url("account/acme").replace(server.base, f"https://127.0.0.1:{https_port}")
        ca = str(cert.ca)
        ours = requests.get(url, headers={"Accept-Encoding": "identity"}, verify=ca, timeout=10)
        ours_gz = requests.get(url, headers={"Accept-Encoding": "gzip"}, verify=ca, timeout=10, stream=True)
        assert ours.content == body and ours_gz.raw.read(decode_content=False) == gz_body, "not the same bytes"
        etag = ours.headers["ETag"]
        assert requests.get(url, headers={"If-None-Match": etag, "Accept-Encoding": "identity"}, verify=ca,
                            timeout=10).status_code == 304
        static = requests.get(static_url, headers={"Accept-Encoding": "identity"}, verify=ca, timeout=10)
        assert static.content == body
        static_etag = static.headers["ETag"]
        print("Deployed: nginx running the shipped site (deploy/nginx/icsfeed.conf: TLS, 1 s micro-cache) in front of "
              "icsfeed, next to nginx serving the same bytes as a static file over the same TLS (HTTP/1.1, keep-alive)")
        runs = {
            "200 identity": ({"Accept-Encoding": "identity"}, {"Accept-Encoding": "identity"}),
            "200 gzip": ({"Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip"}),
            "304 (If-None-Match)": ({"If-None-Match": etag, "Accept-Encoding": "identity"},
                                    {"If-None-Match": static_etag, "Accept-Encoding": "identity"}),
        }
        for name, (site_headers, static_headers) in runs.items():
            a = wrk(url, site_headers)
            b = wrk(static_url, static_headers)
            slug = name.split(" ")[0] + ("_gz" if "gzip" in name else "")
            figures[f"site_{slug}"], figures[f"site_static_{slug}"] = a["rps"], b["rps"]
            figures[f"site_{slug}_bad"] = a["bad"] + a["socket_errors"]
            print(line(f"{name}: nginx (shipped site) + icsfeed, https", f"{a['rps']:,.0f} req/s",
                       f"p50 {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms, errors {a['bad'] + a['socket_errors']:.0f}"))
            print(line(f"{name}: nginx static file, https", f"{b['rps']:,.0f} req/s",
                       f"p50 {b['p50']:.1f} ms, p99 {b['p99']:.1f} ms"))
            print(line("  ratio shipped site / static", f"{a['rps'] / b['rps']:.2f}", "(goal >= 0.5)"))
    finally:
        nginx.stop()  # which also writes out its buffered access log
    log = (prefix / "site" / "access.log").read_text()
    print(line("  answered by icsfeed (the rest from nginx's cache)",
               f"{sum(log.count(f'cache={s}') for s in ('MISS', 'EXPIRED', 'REVALIDATED', 'BYPASS')):,}",
               f"of {log.count(chr(10)):,} requests"))
    return figures


if __name__ == "__main__":
    run()
