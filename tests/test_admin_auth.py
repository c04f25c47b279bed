"""Admin pages never open without credentials, wherever the request came from (issue 9, item 1).

A reverse proxy on the same host with a plain ``proxy_pass`` sends every request from
127.0.0.1 without X-Forwarded-For, so "local" is no credential. Without configured admin
credentials a fresh install generates an admin token into its data directory; the login
link ``icsfeed serve`` prints sets a session cookie. The same through real nginx is in
tests/test_deploy_nginx.py.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from servers import IcsfeedServer, feed_token, write_config

from icsfeed.config import Config, load_config
from icsfeed.live import LiveConfig
from icsfeed.store import Store
from icsfeed.web import create_app
from icsfeed.web.admin import COOKIE, SESSION_SECONDS, admin_token_path, load_admin_token, session_value

SECRET = b"admin-auth-test-secret-0123456789"
ADMIN_PATHS = ("/", "/status", "/metrics")
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
CONFIG = """
    server: {base_url: "https://feeds.example.com"}
    accounts: [{id: acme, name: ACME, keys: [acme]}]
    teams: [{id: ops, name: Ops, accounts: "*"}]
    insights: {enabled: false}
    """


@pytest.fixture(autouse=True)
def _no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ICSFEED_ADMIN_USER", "ICSFEED_ADMIN_PASSWORD", "ICSFEED_METRICS_PUBLIC"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path / "config", {"a.yaml": CONFIG}), tmp_path / "data")


@pytest.fixture
def client(config: Config) -> Iterator[FlaskClient]:
    store = Store(config.storage_url)
    yield create_app(LiveConfig(config, check_every=3600), store, SECRET).test_client()
    store.close()


def test_loopback_requests_without_credentials_are_refused(client: FlaskClient) -> None:
    """What a plain proxy_pass on the same host sends: peer 127.0.0.1, no forwarded headers."""
    for path in ADMIN_PATHS:
        for environ in (LOCAL, {"REMOTE_ADDR": "::1"}, {"REMOTE_ADDR": "203.0.113.9"}):
            refused = client.get(path, environ_base=environ)
            assert refused.status_code == 401, (path, environ)
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="icsfeed admin"'
            assert refused.headers["Cache-Control"] == "no-store"
            assert b"/login" in refused.data and b"token=" not in refused.data
        for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
            assert client.get(path, environ_base=LOCAL, headers={header: "127.0.0.1"}).status_code == 401
    assert client.get("/healthz", environ_base=LOCAL).status_code == 200  # not an admin page
    view = client.get(f"/view/acme?token={_token('account/acme')}", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert view.status_code == 200  # the month view has the feed's own token


def _token(feed_id: str) -> str:
    from icsfeed.tokens import feed_token as make

    return make(SECRET, feed_id, 1)


def test_the_login_link_sets_a_strict_httponly_session(client: FlaskClient, config: Config) -> None:
    token = load_admin_token(config.data_dir)
    login = client.get(f"/login?token={token}", environ_base=LOCAL)
    assert login.status_code == 303 and login.headers["Location"] == "/"
    assert login.headers["Cache-Control"] == "no-store"
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and token not in cookie
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attributes and "secure" not in attributes  # plain http here
    assert "SameSite=Strict" in cookie
    for path in ADMIN_PATHS:
        assert client.get(path, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200, path
    page = client.get("/", environ_base=LOCAL).get_data(as_text=True)
    assert f"/feeds/acme.ics?token={_token('account/acme')}" in page and 'action="/logout"' in page
    out = client.post("/logout", environ_base=LOCAL)
    assert out.status_code == 303 and f"{COOKIE}=;" in out.headers["Set-Cookie"]
    assert client.get("/status", environ_base=LOCAL).status_code == 401
    # the form posts the token too
    form = client.get("/login", environ_base=LOCAL)
    assert form.status_code == 200 and b'name="token"' in form.data
    assert client.post("/login", data={"token": token}, environ_base=LOCAL).status_code == 303
    assert client.get("/status", environ_base=LOCAL).status_code == 200


def test_wrong_forged_and_expired_credentials_are_refused(client: FlaskClient, config: Config,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    token = load_admin_token(config.data_dir)
    with caplog.at_level("WARNING", logger="icsfeed.web.admin"):
        wrong = client.get("/login?token=" + token[:-1] + ("A" if token[-1] != "A" else "B"), environ_base=LOCAL)
    assert wrong.status_code == 403 and "Set-Cookie" not in wrong.headers
    assert "admin login with a wrong token from 127.0.0.1" in caplog.text
    assert client.get("/status", environ_base=LOCAL).status_code == 401
    forged = {
        "garbage": "admin",
        "other key": session_value("not-the-admin-token"),
        "expired": _expired_session(token),
    }
    for what, value in forged.items():
        client.set_cookie(COOKIE, value, domain="localhost")
        assert client.get("/status", environ_base=LOCAL).status_code == 401, what
    client.delete_cookie(COOKIE, domain="localhost")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})  # Prometheus' bearer_token
    assert metrics.status_code == 200 and b"icsfeed_store_up" in metrics.data
    assert client.get("/metrics", headers={"Authorization": f"Basic {token}"}).status_code == 401


def _expired_session(token: str) -> str:
    from itsdangerous import TimestampSigner

    class Past(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - SESSION_SECONDS - 60

    return Past(token, salt="icsfeed admin session").sign(b"admin").decode()


def test_the_token_is_made_once_private_and_compared_in_constant_time(client: FlaskClient, config: Config,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = load_admin_token(config.data_dir)
    path = admin_token_path(config.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_admin_token(config.data_dir) == token and len(token) >= 32
    calls: list[int] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert client.get("/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/login?token=nope").status_code == 403
    assert len(calls) == 2


def test_configured_credentials_replace_the_token(client: FlaskClient, config: Config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    token = load_admin_token(config.data_dir)
    monkeypatch.setenv("ICSFEED_ADMIN_USER", "ops")
    monkeypatch.setenv("ICSFEED_ADMIN_PASSWORD", "pw-0123")
    client.set_cookie(COOKIE, session_value(token), domain="localhost")
    refused = client.get("/status", environ_base=LOCAL, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/login?token=" + token).status_code == 303  # to the page, which asks for the password
    assert client.get("/status", auth=("ops", "pw-0123")).status_code == 200


@pytest.mark.slow
def test_serve_prints_a_login_link_and_refuses_loopback_without_it(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG})
    assert not os.environ.get("ICSFEED_ADMIN_USER") and not os.environ.get("ICSFEED_ADMIN_PASSWORD")
    with IcsfeedServer(config_dir, tmp_path / "data", scheduler=False) as server:
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        server.wait_for(lambda: "/login?token=" in server.log(), 10, "the login link")
        links = re.findall(r"https?://\S+/login\?token=\S+", server.log())
        assert f"{server.base}/login?token={token}" in links
        assert f"https://feeds.example.com/login?token={token}" in links  # where base_url reaches it
        for path in ADMIN_PATHS:
            assert requests.get(server.base + path, timeout=5).status_code == 401, path  # 127.0.0.1, no headers
        with requests.Session() as browser:
            page = browser.get(f"{server.base}/login?token={token}", timeout=5)
            assert page.status_code == 200 and page.url == server.base + "/"
            assert feed_token("account/acme") in page.text
            assert browser.get(server.base + "/status", timeout=5).status_code == 200
