"""Load: 200 concurrent clients for 60 s against ``icsfeed serve`` while polls run.

wrk (C, so the client does not starve the server of this 2-core machine's CPU) keeps 200
keep-alive connections busy on 127.0.0.1, cycling through account and team feeds, plain,
gzip and conditional requests. Meanwhile a command source changes its events every 2 s, so
feeds are re-rendered and ETags move under the clients' feet. A Lua script counts every
answer by status; the test asserts there were no errors at all (no status outside
200/304, no socket error, no timeout) and prints p50/p99 latency and requests/s
(docs/PERFORMANCE.md has the figures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from servers import IcsfeedServer, feed_token, write_config

DURATION = int(os.environ.get("ICSFEED_LOAD_SECONDS", "60"))
CONNECTIONS = 200

GENERATOR = """
import json, sys, time
from datetime import datetime, timedelta, timezone
tick = int(time.time() // 2)
base = datetime.fromisoformat(sys.argv[1])  # fixed by the test: an hour passing must not change every feed
# acme's warnings change every 2 s (its feed and the ops feed re-render); the rest stays (304s)
print(json.dumps([{"id": f"a{i}", "title": f"alert {i} (tick {tick if i % 6 == 0 else 0})",
                   "account": ["acme", "globex", "initech"][i % 3], "severity": ["warning", "critical"][i % 2],
                   "start": (base - timedelta(hours=3 * i)).isoformat()} for i in range(600)]))
"""

LUA = """
local paths = {PATHS}
local counter = 0
statuses = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function request()
  counter = counter + 1
  local p = paths[(counter % #paths) + 1]
  return wrk.format("GET", p[1], p[2])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end
  end
  for code, n in pairs(total) do io.write(string.format("STATUS %d %d\\n", code, n)) end
  io.write(string.format("ERRORS connect=%d read=%d write=%d timeout=%d status=%d\\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
  io.write(string.format("LATENCY p50=%.1f p90=%.1f p99=%.1f max=%.1f\\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def _lua_paths(server: IcsfeedServer) -> str:
    entries = []
    for feed in ("account/acme", "account/globex", "account/initech", "team/ops", "team/critical"):
        url = server.feed_url(feed).removeprefix(server.base)
        etag = requests.get(server.feed_url(feed), headers={"Accept-Encoding": "gzip"}, timeout=10).headers["ETag"]
        for headers in ({}, {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip", "If-None-Match": etag}):
            pairs = ", ".join(f'["{k}"] = {json.dumps(v)}' for k, v in headers.items())
            entries.append(f'{{"{url}", {{{pairs}}}}}')
    return "{" + ", ".join(entries) + "}"


@pytest.mark.slow
def test_200_clients_for_a_minute_while_polling(tmp_path: Path) -> None:
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed (Debian package wrk; scripts/install-test-deps.sh)"
    base = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    config_dir = write_config(tmp_path / "config", {"gen.py": GENERATOR, "a.yaml": f"""
        accounts:
          - {{id: acme, name: ACME}}
          - {{id: globex, name: Globex}}
          - {{id: initech, name: Initech}}
        teams:
          - {{id: ops, name: Ops, accounts: "*"}}
          - {{id: critical, name: Critical, accounts: "*", min_severity: critical}}
        insights: {{enabled: false}}
        feeds: {{window_back_days: 90}}
        sources:
          - {{id: gen, type: command, interval: 2, jitter: 0, argv: [{json.dumps(sys.executable)}, gen.py, "{base}"],
              mapping: {{kind: alert, key: id, title: title, start: start, account: account, severity: severity}}}}
        """})
    server = IcsfeedServer(config_dir, tmp_path / "data", log_level="INFO")
    try:
        server.start()
        feeds = ("account/acme", "account/globex", "account/initech", "team/ops", "team/critical")
        server.wait_for(lambda: all(b"BEGIN:VEVENT" in requests.get(server.feed_url(f), timeout=5).content for f in feeds),
                        30, "the first poll in every feed")  # not the empty feeds rendered at start
        script = tmp_path / "load.lua"
        script.write_text(LUA.replace("{PATHS}", _lua_paths(server)))
        renders_before = server.log().count("rendered ")
        done = subprocess.run([wrk, "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--timeout", "10s", "-s", str(script),
                               server.base + "/"], capture_output=True, text=True, timeout=DURATION + 120, check=False)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        renders = server.log().count("rendered ") - renders_before
        assert server.running
        log = server.log()
    finally:
        server.stop()
    statuses = {int(code): int(n) for code, n in re.findall(r"STATUS (\d+) (\d+)", out)}
    errors = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", re.search(r"ERRORS .*", out).group(0)))  # type: ignore[union-attr]
    latency = dict((k, float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", re.search(r"LATENCY .*", out).group(0)))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = sum(statuses.values())
    print(f"\n{CONNECTIONS} clients x {DURATION}s: {total} answers ({rps:.0f}/s), statuses {statuses}, "
          f"p50 {latency['p50']:.0f} ms, p90 {latency['p90']:.0f} ms, p99 {latency['p99']:.0f} ms, max {latency['max']:.0f} ms, "
          f"{renders} re-renders during the run")
    assert set(statuses) <= {200, 304}, statuses
    assert errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}, errors
    assert statuses.get(200, 0) > 0 and statuses.get(304, 0) > 0
    assert total >= DURATION * 20, total  # it kept answering, all the time
    assert renders >= DURATION // 10, renders  # polls really ran (and changed feeds) under the load
    assert "Traceback" not in log
    assert feed_token("team/ops") not in log
