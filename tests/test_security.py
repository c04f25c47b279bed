"""Security: feed tokens, secrets, admin pages, headers.

* Tokens are compared in constant time: check_token and the admin check go through
  hmac.compare_digest (a spy proves it is called, for right and wrong tokens and for unknown
  feeds), and no ``==`` on a token, password or secret exists anywhere in icsfeed (AST scan).
* 10,000 wrong tokens over real HTTP to a served instance find nothing, and every refusal is
  the same 404, byte for byte and header for header, whatever was wrong.
* No feed token, source password, API token or admin password appears in any log line, the
  status page, /metrics or an error message, at DEBUG level, with sources failing in every way
  that puts text into messages (origin errors echoing the request, a command printing its
  environment to stderr).
* Bumping token_version in config revokes the old URL on reload, without a restart.
* Admin pages refuse without (or with wrong) credentials, from 127.0.0.1 too (more in
  test_admin_auth.py); security headers are on feeds, refusals and pages.
"""

from __future__ import annotations

import ast
import hmac
import json
import re
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import storage_url
from fake_origins import FakeOrigin, Reply
from servers import IcsfeedServer, feed_token, write_config

import icsfeed
from icsfeed.tokens import check_token

ICSFEED_DIR = Path(icsfeed.__file__).resolve().parent
SECRET_NAMES = re.compile(r"token|password|secret|passwd|api_?key", re.I)
ADMIN = ("admin", "Adm1n-pass-7f3a9c")


def _events(n: int = 10) -> str:
    return json.dumps([{"id": f"e{i}", "title": f"event {i}", "start": f"2030-01-{i + 1:02d}T10:00:00Z", "account": "acme"}
                       for i in range(n)])


BASE_CONFIG = """
    accounts:
      - {id: acme, name: ACME, keys: [acme], window_back_days: 3660, window_ahead_days: 3660}
      - {id: globex, name: Globex}
    teams:
      - {id: ops, name: Ops, accounts: "*"}
    feeds: {window_back_days: 3660, window_ahead_days: 3660}
    insights: {enabled: false}
    sources:
      - {id: f, type: file, path: events.json, interval: 1, mapping: {kind: alert, key: id, title: title, start: start, account: account}}
    """


# --- constant time ------------------------------------------------------------------------------

def test_check_token_compares_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    secret = b"k" * 32
    right = feed_token_for(secret, "account/acme", 1)
    assert check_token(secret, "account/acme", 1, right) is True
    assert check_token(secret, "account/acme", 1, right[:-1] + ("A" if right[-1] != "A" else "B")) is False
    assert check_token(secret, "account/acme", 2, right) is False  # another version
    assert check_token(secret, None, 1, right) is False  # unknown feed: still one comparison
    assert check_token(secret, "account/acme", 1, None) is False
    assert len(calls) == 5
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    assert calls[0] == (right.encode(), right.encode())


def feed_token_for(secret: bytes, feed_id: str, version: int) -> str:
    from icsfeed.tokens import feed_token as make

    return make(secret, feed_id, version)


def test_feed_and_admin_requests_compare_with_compare_digest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from icsfeed.config import load_config
    from icsfeed.live import LiveConfig
    from icsfeed.store import Store
    from icsfeed.web import create_app

    config_dir = write_config(tmp_path / "config", {"a.yaml": BASE_CONFIG})
    config = load_config(config_dir, tmp_path / "data")
    store = Store(config.storage_url)
    monkeypatch.setenv("ICSFEED_ADMIN_USER", ADMIN[0])
    monkeypatch.setenv("ICSFEED_ADMIN_PASSWORD", ADMIN[1])
    app = create_app(LiveConfig(config), store, b"s" * 32)
    calls: list[int] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    client = app.test_client()
    for path in ("/feeds/acme.ics?token=wrong", "/feeds/nobody.ics?token=wrong", "/teams/ops.ics",
                 "/view/acme?token=nope"):
        before = len(calls)
        assert client.get(path).status_code == 404
        assert len(calls) == before + 1, path
    before = len(calls)
    assert client.get("/status", auth=("admin", "wrong")).status_code == 401
    assert len(calls) == before + 2  # user and password, both always compared
    store.close()


def test_no_secret_is_compared_with_equals_anywhere() -> None:
    """Code review as a test: ``==``/``!=`` with a token, password or secret on either side."""
    found = []
    for path in sorted(ICSFEED_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                for side in [node.left, *node.comparators]:
                    name = _name_of(side)
                    if name and SECRET_NAMES.search(name) and not _is_constant_check(node):
                        found.append(f"{path.relative_to(ICSFEED_DIR)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name_of(node.func)
    return None


def _is_constant_check(node: ast.Compare) -> bool:
    """``x == None`` / ``mode == "token"`` style checks compare no secret value."""
    return any(isinstance(side, ast.Constant) for side in [node.left, *node.comparators])


# --- 10,000 wrong tokens -----------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path: Path) -> Any:
    config_dir = write_config(tmp_path / "config", {"a.yaml": BASE_CONFIG})
    (config_dir / "events.json").write_text(_events())
    server = IcsfeedServer(config_dir, tmp_path / "data", env={"ICSFEED_ADMIN_USER": ADMIN[0],
                                                             "ICSFEED_ADMIN_PASSWORD": ADMIN[1]})
    server.start()
    server.wait_for(lambda: requests.get(server.feed_url("account/acme"), timeout=5).status_code == 200, 30,
                    "the first poll")
    yield server
    server.stop()


def _wrong_urls(base: str, n: int) -> list[str]:
    """Every way of being wrong: near misses, other feeds' tokens, old versions, no token, junk."""
    right = feed_token("account/acme")
    variants = [
        lambda i: f"/feeds/acme.ics?token={right[:-2]}{i % 10}{i % 7}",  # near miss
        lambda i: f"/feeds/acme.ics?token={feed_token('account/globex')}",  # another feed's token
        lambda i: f"/feeds/acme.ics?token={feed_token('account/acme', 2)}",  # a version not yet in use
        lambda i: f"/feeds/acme.ics?token={feed_token('team/ops')}",
        lambda i: f"/feeds/nobody{i}.ics?token={right}",  # unknown account, a real token
        lambda i: f"/teams/ops.ics?token={right}",
        lambda i: f"/teams/nobody{i}.ics?token=x{i}",
        lambda i: "/feeds/acme.ics",  # no token
        lambda i: "/feeds/acme.ics?token=",
        lambda i: f"/feeds/acme.ics?token={'A' * (i % 300)}",
        lambda i: f"/feeds/acme.ics?token=%00%ff%c3%28{i}",
        lambda i: f"/feeds/acme.ics?token={right.lower() if right.lower() != right else right.upper()}",
        lambda i: f"/feeds/acme.ics?tok={right}",
        lambda i: f"/feeds/ACME.ics?token={right}",
    ]
    return [base + variants[i % len(variants)](i) for i in range(n)]


@pytest.mark.slow
def test_ten_thousand_wrong_tokens_find_nothing_and_all_look_alike(served: IcsfeedServer) -> None:
    urls = _wrong_urls(served.base, 10_000)
    answers: Counter[tuple[int, bytes, tuple[tuple[str, str], ...]]] = Counter()
    lock = threading.Lock()
    errors: list[str] = []

    def worker(chunk: list[str]) -> None:
        with requests.Session() as session:
            for url in chunk:
                try:
                    r = session.get(url, timeout=10)
                except requests.RequestException as exc:
                    errors.append(f"{url}: {exc}")
                    continue
                headers = tuple(sorted((k.lower(), v) for k, v in r.headers.items() if k.lower() != "date"))
                with lock:
                    answers[(r.status_code, r.content, headers)] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(urls[i::4],), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert sum(answers.values()) == 10_000
    assert len(answers) == 1, [(status, body[:40], headers) for status, body, headers in answers]  # one 404 for all
    (status, body, headers), = answers
    assert status == 404 and body == b"Not found\n"
    assert dict(headers)["x-content-type-options"] == "nosniff"
    # the right token still works, and the wrong ones did not slow anything to a crawl
    assert requests.get(served.feed_url("account/acme"), timeout=5).status_code == 200
    assert elapsed < 100, elapsed


# --- no secret anywhere --------------------------------------------------------------------------------

SECRETS = {
    "SRC_BEARER": "bearer-4f1c9e7a1d2b",
    "SRC_PASSWORD": "basic-pw-93b1f0aa77",
    "SRC_HEADER_KEY": "hdr-key-5e2d8c11f0",
    "SRC_QUERY_KEY": "qry-key-a8b7c6d5e4",
    "CMD_TOKEN": "cmd-token-0f9e8d7c6b",
}


@pytest.mark.slow
def test_no_secret_in_logs_status_metrics_or_errors(tmp_path: Path) -> None:
    # an origin that fails in ways that echo what it was sent
    echo = FakeOrigin().start()
    echo.route("GET", "/api", lambda req: Reply(500, f"upstream error for {req.path}?{req.query} "
                                                     f"auth={req.headers.get('Authorization')} key={req.headers.get('X-Api-Key')}"))
    echo.add("GET", "/auth", Reply(401, "denied"))
    echo.route("GET", "/notjson", lambda req: Reply(200, f"<html>{req.headers}</html>"))
    config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent(BASE_CONFIG) + textwrap.indent(textwrap.dedent(f"""
          - id: bearer
            type: http_json
            url: "{echo.url}/api?api_key=${{SRC_QUERY_KEY}}"
            interval: 1
            retries: 1
            auth: {{token: "${{SRC_BEARER}}"}}
            headers: {{X-Api-Key: "${{SRC_HEADER_KEY}}"}}
            mapping: {{key: id, title: t, start: s}}
          - id: basic
            type: http_json
            url: "{echo.url}/auth"
            interval: 1
            retries: 0
            auth: {{username: bob, password: "${{SRC_PASSWORD}}"}}
            mapping: {{key: id, title: t, start: s}}
          - id: html
            type: http_json
            url: "{echo.url}/notjson?key=${{SRC_QUERY_KEY}}"
            interval: 1
            retries: 0
            auth: {{token: "${{SRC_BEARER}}"}}
            mapping: {{key: id, title: t, start: s}}
          - id: cmd
            type: command
            interval: 1
            argv: [{json.dumps(sys.executable)}, -c, "import os, sys; print('boom', os.environ['API_TOKEN'], file=sys.stderr); sys.exit(3)"]
            env: {{API_TOKEN: "${{CMD_TOKEN}}"}}
            mapping: {{key: id, title: t, start: s}}
        """), "  ")})
    (config_dir / "events.json").write_text(_events())
    server = IcsfeedServer(config_dir, tmp_path / "data", log_level="DEBUG",
                           env={**SECRETS, "ICSFEED_ADMIN_USER": ADMIN[0], "ICSFEED_ADMIN_PASSWORD": ADMIN[1]})
    try:
        server.start()
        from icsfeed.store import Store

        store = Store(storage_url(tmp_path / "data"))
        server.wait_for(lambda: all(store.source_state(s).consecutive_failures >= 2 for s in ("bearer", "basic", "html", "cmd")),
                        60, "every secret-holding source to fail twice")
        assert any(r.headers.get("Authorization") == f"Bearer {SECRETS['SRC_BEARER']}" for r in echo.requests)  # it was sent
        texts = {"log": "", "errors": ""}
        for feed in ("account/acme", "account/globex", "team/ops"):
            url = server.feed_url(feed)
            assert requests.get(url, timeout=5).status_code == 200
            requests.get(url + "x", timeout=5)  # a wrong token, for the log
        pages = {path: requests.get(f"{server.base}{path}", auth=ADMIN, timeout=10) for path in ("/status", "/metrics")}
        assert all(p.status_code == 200 for p in pages.values()), {k: v.status_code for k, v in pages.items()}
        assert "HTTP 500" in pages["/status"].text and "authentication failed" in pages["/status"].text
        assert "exited with status 3" in pages["/status"].text  # the errors are shown ...
        texts["errors"] = "\n".join(store.source_state(s).last_error or "" for s in ("bearer", "basic", "html", "cmd"))
        store.close()
        texts["log"] = server.log()
        texts.update({path: page.text for path, page in pages.items()})
    finally:
        server.stop()
        echo.stop()
    assert "***" in texts["errors"]  # ... with the command's echoed token taken out
    forbidden = {**SECRETS, "admin password": ADMIN[1]}
    forbidden.update({f"token of {f}": feed_token(f) for f in ("account/acme", "account/globex", "team/ops")})
    leaks = [f"{what} in {where}" for where, text in texts.items() for what, value in forbidden.items() if value in text]
    assert not leaks, leaks


# --- token rotation ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_token_version_rotation_takes_effect_on_reload(served: IcsfeedServer) -> None:
    old, new = served.feed_url("account/acme", 1), served.feed_url("account/acme", 2)
    assert requests.get(old, timeout=5).status_code == 200
    assert requests.get(new, timeout=5).status_code == 404
    pid = served.proc.pid if served.proc else None
    path = served.config_dir / "a.yaml"
    path.write_text(path.read_text().replace("keys: [acme],", "keys: [acme], token_version: 2,"))
    served.wait_for(lambda: requests.get(new, timeout=5).status_code == 200, 20, "the new token to work")
    assert requests.get(old, timeout=5).status_code == 404
    assert requests.get(old, timeout=5).content == requests.get(served.feed_url("account/nobody"), timeout=5).content
    assert served.proc is not None and served.proc.pid == pid and served.running  # no restart
    assert requests.get(served.feed_url("account/globex"), timeout=5).status_code == 200  # others untouched


# --- admin pages and headers ------------------------------------------------------------------------

@pytest.mark.slow
def test_admin_pages_refuse_without_credentials(served: IcsfeedServer) -> None:
    for path in ("/", "/status", "/metrics"):
        url = served.base + path
        bare = requests.get(url, timeout=5)
        assert bare.status_code == 401 and "Basic" in bare.headers["WWW-Authenticate"], path
        for auth in (("admin", "wrong"), ("wrong", ADMIN[1]), ("", ""), (ADMIN[0], ADMIN[1] + "x")):
            assert requests.get(url, auth=auth, timeout=5).status_code == 401, (path, auth)
        ok = requests.get(url, auth=ADMIN, timeout=5)
        assert ok.status_code == 200, path
        assert ADMIN[1] not in ok.text


@pytest.mark.slow
def test_admin_pages_need_the_generated_token_without_credentials(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": BASE_CONFIG})
    (config_dir / "events.json").write_text(_events())
    with IcsfeedServer(config_dir, tmp_path / "data", scheduler=False) as server:
        # a loopback peer is what a reverse proxy on this host looks like: no credential
        assert requests.get(server.base + "/status", timeout=5).status_code == 401
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            r = requests.get(server.base + "/status", headers={header: "127.0.0.1"}, timeout=5)
            assert r.status_code == 401, header
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        assert requests.get(server.base + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=5).ok


@pytest.mark.slow
def test_security_headers_on_feeds_refusals_and_pages(served: IcsfeedServer) -> None:
    feed = requests.get(served.feed_url("account/acme"), timeout=5)
    checks = {
        "feed 200": feed,
        "feed 304": requests.get(served.feed_url("account/acme"), headers={"If-None-Match": feed.headers["ETag"]}, timeout=5),
        "feed 404": requests.get(served.feed_url("account/acme") + "x", timeout=5),
        "healthz": requests.get(served.base + "/healthz", timeout=5),
        "status": requests.get(served.base + "/status", auth=ADMIN, timeout=5),
        "status 401": requests.get(served.base + "/status", timeout=5),
        "month view": requests.get(f"{served.base}/view/acme?token={feed_token('account/acme')}", timeout=5),
    }
    assert [checks[k].status_code for k in checks] == [200, 304, 404, 200, 200, 401, 200]
    for name, r in checks.items():
        assert r.headers.get("X-Content-Type-Options") == "nosniff", name
        assert r.headers.get("Referrer-Policy") == "no-referrer", name  # feed URLs carry tokens
        assert r.headers.get("X-Frame-Options") == "DENY", name
    for name in ("status", "month view"):
        csp = checks[name].headers.get("Content-Security-Policy", "")
        assert "default-src" in csp and "'unsafe-inline'" not in csp, name
        assert checks[name].headers.get("Cache-Control") == "no-store", name
    assert feed.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert "private" in feed.headers["Cache-Control"]
