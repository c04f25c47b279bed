"""Forwarded headers count only from ``server.trusted_proxies`` (issue 9, item 2).

From a trusted peer, X-Forwarded-For/-Proto/-Host (the last value: the one the proxy set)
make the request https on the public host from the client's address: the admin session
cookie is Secure, the subscribe page sees the address base_url names, the admin log line
names the client. From any other peer the same headers change nothing. Both through
Flask's test client and through ``icsfeed serve`` (waitress must pass the headers on).
Through real nginx: tests/test_deploy_nginx.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from servers import IcsfeedServer, write_config

from icsfeed.config import ConfigError, load_config
from icsfeed.live import LiveConfig
from icsfeed.store import Store
from icsfeed.web import create_app
from icsfeed.web.admin import load_admin_token
from icsfeed.web.proxy import is_trusted_proxy

SECRET = b"proxy-test-secret-0123456789abcdef"
FORWARDED = {"X-Forwarded-For": "198.51.100.4, 203.0.113.7", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "cal.example.com"}
CONFIG = """
    server:
      base_url: "https://cal.example.com"
      trusted_proxies: {proxies}
    accounts: [{{id: acme, name: ACME, keys: [acme]}}]
    insights: {{enabled: false}}
    """


@pytest.fixture(autouse=True)
def _no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ICSFEED_ADMIN_USER", "ICSFEED_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app_for(tmp_path: Path) -> Iterator[Callable[[str], tuple[FlaskClient, str]]]:
    stores: list[Store] = []

    def make(proxies: str) -> tuple[FlaskClient, str]:
        config = load_config(write_config(tmp_path / "config", {"a.yaml": CONFIG.format(proxies=proxies)}),
                             tmp_path / "data")
        store = Store(config.storage_url)
        stores.append(store)
        return create_app(LiveConfig(config, check_every=3600), store, SECRET).test_client(), load_admin_token(config.data_dir)

    yield make
    for store in stores:
        store.close()


def _login(client: FlaskClient, token: str, peer: str, headers: dict[str, str]) -> str:
    response = client.get(f"/login?token={token}", environ_base={"REMOTE_ADDR": peer}, headers=headers)
    assert response.status_code == 303
    return response.headers["Set-Cookie"]


def test_a_trusted_proxy_makes_the_request_https_from_the_client(app_for: Callable[..., tuple[FlaskClient, str]],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client, token = app_for("[127.0.0.1, 10.0.0.0/8]")
    with caplog.at_level(logging.INFO, logger="icsfeed.web.admin"):
        cookie = _login(client, token, "127.0.0.1", FORWARDED)
    assert "; Secure" in cookie  # the browser reached nginx over https
    assert "admin login from 203.0.113.7" in caplog.text  # the address the proxy saw, not 127.0.0.1
    page = client.get("/", environ_base={"REMOTE_ADDR": "10.20.30.40"}, headers=FORWARDED).get_data(as_text=True)
    assert "You reached this page at" not in page  # https://cal.example.com is what base_url says
    assert 'href="webcal://cal.example.com/feeds/acme.ics?token=' in page


@pytest.mark.parametrize("proxies", ["[]", "[10.0.0.0/8]"])
def test_the_same_headers_from_another_peer_change_nothing(app_for: Callable[..., tuple[FlaskClient, str]],
                                                           caplog: pytest.LogCaptureFixture, proxies: str) -> None:
    client, token = app_for(proxies)
    with caplog.at_level(logging.INFO, logger="icsfeed.web.admin"):
        cookie = _login(client, token, "127.0.0.1", FORWARDED)
    assert "Secure" not in cookie
    assert "admin login from 127.0.0.1" in caplog.text and "203.0.113.7" not in caplog.text
    page = client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers=FORWARDED).get_data(as_text=True)
    assert "You reached this page at http://localhost" in page
    # subscription URLs come from base_url whatever the request says
    assert "https://cal.example.com/feeds/acme.ics?token=" in page and "evil" not in page
    evil = client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers={"Host": "evil.example", "Authorization": f"Bearer {token}"})
    assert "https://cal.example.com/feeds/acme.ics?token=" in evil.get_data(as_text=True)


def test_trusted_proxies_are_validated_and_matched(tmp_path: Path) -> None:
    assert is_trusted_proxy("10.1.2.3", ("10.0.0.0/8",)) and is_trusted_proxy("::ffff:127.0.0.1", ("127.0.0.1/32",))
    assert not is_trusted_proxy("11.0.0.1", ("10.0.0.0/8",)) and not is_trusted_proxy("127.0.0.1", ())
    assert not is_trusted_proxy("not an address", ("0.0.0.0/0",)) and not is_trusted_proxy(None, ("0.0.0.0/0",))
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c", {"a.yaml": CONFIG.format(proxies="[127.0.0.1, nginx.local]")}),
                    tmp_path / "d")
    assert any(path.startswith("server.trusted_proxies") and "'nginx.local' is not an IP address or CIDR" in message
               for _file, path, message in info.value.problems), info.value.problems


@pytest.mark.slow
def test_icsfeed_serve_passes_forwarded_headers_to_the_check(tmp_path: Path) -> None:
    """waitress strips X-Forwarded-* by default; icsfeed serve must leave the decision to icsfeed."""
    config_dir = write_config(tmp_path / "config", {"a.yaml": CONFIG.format(proxies="[127.0.0.1]")})
    with IcsfeedServer(config_dir, tmp_path / "data", scheduler=False) as server:
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        login = requests.get(f"{server.base}/login?token={token}", headers=FORWARDED, allow_redirects=False, timeout=5)
        assert login.status_code == 303 and "; Secure" in login.headers["Set-Cookie"]
        server.wait_for(lambda: "admin login from 203.0.113.7" in server.log(), 10, "the admin log line")
    write_config(config_dir, {"a.yaml": CONFIG.format(proxies="[]")})
    with IcsfeedServer(config_dir, tmp_path / "data", scheduler=False) as server:
        login = requests.get(f"{server.base}/login?token={token}", headers=FORWARDED, allow_redirects=False, timeout=5)
        assert login.status_code == 303 and "Secure" not in login.headers["Set-Cookie"]
