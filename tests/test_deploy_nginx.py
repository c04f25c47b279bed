"""The shipped nginx site, run by real nginx over https in front of ``icsfeed serve`` (issue 9, item 15).

deploy/nginx/icsfeed.conf is rendered with this test's ports and paths (tests/nginx_site.py
changes only its EDIT lines) and a certificate made here. icsfeed trusts 127.0.0.1 as its
proxy and has no admin credentials configured (a fresh install). A second nginx runs the
same site without its X-Forwarded-* lines: a plain ``proxy_pass`` on the same host, whose
requests reach icsfeed from 127.0.0.1 with no forwarded headers at all.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import cli
from nginx_site import Certificate, Nginx, make_certificate, render_site
from servers import IcsfeedServer, feed_token, free_port, write_config

pytestmark = pytest.mark.slow

ADMIN_PATHS = ("/", "/status", "/metrics")
#: how long nginx keeps a feed answer: the site's ``proxy_cache_valid 200 1s``, which nginx
#: counts in whole seconds of its clock, so an answer is kept for 1 to 2 s
MICRO_CACHE_SECONDS = 2.0

CONFIG = """\
server:
  base_url: "https://localhost:{port}"
  trusted_proxies: [127.0.0.1]
accounts:
  - {{id: acme, name: ACME, keys: [acme]}}
  - {{id: globex, name: Globex, keys: [globex], token_version: {globex_version}}}
teams:
  - {{id: ops, name: Ops, accounts: "*"}}
insights: {{enabled: false}}
sources:
  - {{id: f, type: file, path: events.json, interval: 1h,
      mapping: {{kind: alert, key: id, title: title, start: start, account: account, url: url}}}}
"""
EVENTS = "[" + ",".join(
    f'{{"id": "e{i}", "title": "event {i}", "start": "2026-11-{i + 1:02d}T10:00:00Z", "account": "{acct}", '
    f'"url": "https://grafana.example/d/{i}"}}'
    for i, acct in enumerate(["acme", "globex"] * 10)) + "]"


@dataclass
class Deployment:
    server: IcsfeedServer
    cert: Certificate
    https: str  # https://localhost:<port> of the shipped site
    plain: str  # https://localhost:<port> of the same site without forwarded headers
    config_dir: Path
    access_log: Path

    def feed(self, feed_id: str, version: int = 1, base: str | None = None) -> str:
        kind, _, name = feed_id.partition("/")
        path = f"/feeds/{name}.ics" if kind == "account" else f"/teams/{name}.ics"
        return f"{base or self.https}{path}?token={feed_token(feed_id, version)}"

    def get(self, url: str, **kwargs: object) -> requests.Response:
        return requests.get(url, verify=str(self.cert.ca), timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("deploy")
    https_port, http_port, plain_port, plain_http = free_port(), free_port(), free_port(), free_port()
    config_dir = write_config(base / "config", {"icsfeed.yaml": CONFIG.format(port=https_port, globex_version=1)})
    (config_dir / "events.json").write_text(EVENTS)
    polled = cli(config_dir, base / "data", "poll", "--once", env={"ICSFEED_SECRET_KEY": "reliability-suite-secret-key-0123456789"})
    assert polled.returncode == 0, polled.stderr
    cert = make_certificate(base / "tls")
    server = IcsfeedServer(config_dir, base / "data", scheduler=False,
                           env={"ICSFEED_ADMIN_USER": "", "ICSFEED_ADMIN_PASSWORD": ""})
    server.start()
    upstream = f"127.0.0.1:{server.port}"
    full = Nginx(base / "nginx", render_site(https_port=https_port, http_port=http_port, upstream=upstream, cert=cert,
                                             cache_dir=base / "nginx" / "cache", access_log=base / "nginx" / "access.log"),
                 (https_port, http_port))
    plain = Nginx(base / "plain", render_site(https_port=plain_port, http_port=plain_http, upstream=upstream, cert=cert,
                                              cache_dir=base / "plain" / "cache", access_log=base / "plain" / "access.log",
                                              forwarded=False),
                  (plain_port, plain_http))
    try:
        full.start()
        plain.start()
        yield Deployment(server=server, cert=cert, https=f"https://localhost:{https_port}",
                         plain=f"https://localhost:{plain_port}", config_dir=config_dir,
                         access_log=base / "nginx" / "access.log")
    finally:
        full.stop()
        plain.stop()
        server.stop()


def test_feeds_and_304s_work_through_nginx_over_https(deployment: Deployment) -> None:
    d = deployment
    direct = requests.get(d.server.feed_url("account/acme"), headers={"Accept-Encoding": "identity"}, timeout=10)
    assert direct.status_code == 200 and b"BEGIN:VEVENT" in direct.content
    first = d.get(d.feed("account/acme"), headers={"Accept-Encoding": "identity"})
    again = d.get(d.feed("account/acme"), headers={"Accept-Encoding": "identity"})
    assert first.status_code == again.status_code == 200
    assert first.content == again.content == direct.content
    assert first.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert again.headers["X-Cache-Status"] == "HIT"  # nginx answered from its micro-cache
    assert first.headers["ETag"] == direct.headers["ETag"] and "private" in first.headers["Cache-Control"]
    assert first.headers["Strict-Transport-Security"].startswith("max-age=")
    not_modified = d.get(d.feed("account/acme"), headers={"If-None-Match": first.headers["ETag"],
                                                           "Accept-Encoding": "identity"})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["X-Cache-Status"] in ("HIT", "REVALIDATED", "UPDATING")
    # the gzip variant is its own cache entry, with icsfeed's gzip bytes and ETag
    zipped = d.get(d.feed("account/acme"), headers={"Accept-Encoding": "gzip, deflate, br"}, stream=True)
    raw = zipped.raw.read(decode_content=False)
    assert zipped.headers["Content-Encoding"] == "gzip" and gzip.decompress(raw) == direct.content
    assert zipped.headers["ETag"] == direct.headers["ETag"][:-1] + '-gz"'
    assert d.get(d.feed("account/acme"), headers={"Accept-Encoding": "gzip",
                                                  "If-None-Match": zipped.headers["ETag"]}).status_code == 304
    # once the answer expires, nginx revalidates it with the ETag; the answer stays right
    time.sleep(MICRO_CACHE_SECONDS + 0.2)
    later = d.get(d.feed("account/acme"), headers={"Accept-Encoding": "identity"})
    assert later.status_code == 200 and later.content == direct.content
    assert later.headers["X-Cache-Status"] in ("REVALIDATED", "EXPIRED", "HIT")
    team = d.get(d.feed("team/ops"))
    assert team.status_code == 200 and team.content.count(b"BEGIN:VEVENT") == 20
    assert requests.head(d.feed("account/acme"), verify=str(d.cert.ca), timeout=10).status_code == 200
    deadline = time.monotonic() + 10  # the access log is written out every second
    while "/feeds/acme.ics" not in d.access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = d.access_log.read_text()
    assert "/feeds/acme.ics" in log and "token" not in log  # the log names paths, never tokens


@pytest.mark.parametrize("site", ["shipped", "plain proxy_pass"])
def test_admin_pages_refuse_without_credentials_through_nginx(deployment: Deployment, site: str) -> None:
    d = deployment
    base = d.https if site == "shipped" else d.plain
    for path in ADMIN_PATHS:
        for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}):
            refused = d.get(base + path, headers=headers)
            assert refused.status_code == 401, (site, path, headers)
            assert "X-Cache-Status" not in refused.headers
            assert feed_token("account/acme") not in refused.text
    assert d.get(base + "/healthz").status_code == 200


def test_the_login_link_works_through_nginx_and_nothing_admin_is_cached(deployment: Deployment) -> None:
    d = deployment
    token = (d.server.data_dir / "admin_token").read_text().strip()
    with requests.Session() as browser:
        login = browser.get(f"{d.https}/login?token={token}", headers={"X-Forwarded-For": "198.51.100.99"},
                            allow_redirects=False, timeout=10, verify=str(d.cert.ca))
        assert login.status_code == 303
        assert "; Secure" in login.headers["Set-Cookie"]  # icsfeed saw https: nginx is a trusted proxy
        page = browser.get(d.https + "/", timeout=10, verify=str(d.cert.ca))
        assert page.status_code == 200 and feed_token("account/acme") in page.text
        assert page.headers["Cache-Control"] == "no-store"
    # the same page again, without the cookie: refused (nginx kept nothing)
    assert d.get(d.https + "/").status_code == 401
    # nginx sets X-Forwarded-For itself: what a client sends is not believed
    d.server.wait_for(lambda: "admin login from 127.0.0.1" in d.server.log(), 10, "the login log line")
    assert "198.51.100.99" not in d.server.log()


def test_wrong_tokens_give_byte_identical_404s_through_nginx(deployment: Deployment) -> None:
    d = deployment
    right = feed_token("account/acme")
    urls = [f"{d.https}/feeds/acme.ics?token={right[:-1]}{c}" for c in "ABCDEFGH" if c != right[-1]]
    urls += [f"{d.https}/feeds/acme.ics", f"{d.https}/feeds/acme.ics?token=", f"{d.https}/feeds/nobody.ics?token={right}",
             f"{d.https}/teams/ops.ics?token={right}", f"{d.https}/teams/nobody.ics?token=x",
             f"{d.https}/feeds/globex.ics?token={right}", f"{d.https}/feeds/acme.ics?token={right}x"]
    urls += [f"{d.https}/feeds/acme.ics?token=wrong{i}" for i in range(40)]
    answers = [d.get(url) for url in urls]
    for url, answer in zip(urls, answers, strict=True):
        assert answer.status_code == 404, url
    bodies = {a.content for a in answers}
    headers = {tuple(sorted((k.lower(), v) for k, v in a.headers.items() if k.lower() != "date")) for a in answers}
    assert len(bodies) == 1 and len(headers) == 1, (bodies, headers)
    direct = requests.get(f"{d.server.base}/feeds/acme.ics?token=wrong", timeout=10)
    assert bodies == {direct.content}


def test_page_links_are_https_through_nginx(deployment: Deployment) -> None:
    d = deployment
    token = (d.server.data_dir / "admin_token").read_text().strip()
    with requests.Session() as browser:
        ca = str(d.cert.ca)  # per request: REQUESTS_CA_BUNDLE would override the session's verify
        assert browser.get(f"{d.https}/login?token={token}", timeout=10, verify=ca).status_code == 200
        page = browser.get(d.https + "/", timeout=10, verify=ca).text
        month = browser.get(f"{d.https}/view/acme?token={feed_token('account/acme')}&month=2026-11", timeout=10, verify=ca)
    assert month.status_code == 200
    assert "You reached this page at" not in page  # icsfeed sees https://localhost:<port>, as base_url says
    for html in (page, month.text):
        links = [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]
        absolute = [h for h in links if "://" in h]
        assert absolute and all(h.startswith(("https://", "webcal://")) for h in absolute), absolute
        assert f"{d.https}/feeds/acme.ics?token={feed_token('account/acme')}" in html
        assert f"webcal://localhost:{d.https.rsplit(':', 1)[1]}/feeds/acme.ics?token=" in html
        assert "http://" not in html.replace("http://www.w3.org", "")


def test_a_token_rotation_404s_the_old_url_within_the_micro_cache_lifetime(deployment: Deployment) -> None:
    d = deployment
    old, new = d.feed("account/globex", 1), d.feed("account/globex", 2)
    direct_old = d.server.feed_url("account/globex", 1)
    assert d.get(old).status_code == 200 and d.get(old).headers["X-Cache-Status"] == "HIT"
    (d.config_dir / "icsfeed.yaml").write_text(
        CONFIG.format(port=d.https.rsplit(":", 1)[1], globex_version=2), encoding="utf-8")
    flipped_direct = flipped_nginx = None
    deadline = time.monotonic() + 20  # the config is re-read within a few seconds
    while time.monotonic() < deadline and flipped_nginx is None:
        now = time.monotonic()
        if flipped_direct is None and requests.get(direct_old, timeout=10).status_code == 404:
            flipped_direct = now
        if d.get(old).status_code == 404:
            flipped_nginx = time.monotonic()
        time.sleep(0.05)
    if flipped_direct is None or flipped_nginx is None:  # what the server said meanwhile (a reload refused?)
        said = d.server.log_path.read_text(errors="replace").splitlines()[-30:]
        pytest.fail("the old URL still answers 200 after 20 s; the server's last log lines:\n" + "\n".join(said))
    lag = flipped_nginx - flipped_direct
    assert lag <= MICRO_CACHE_SECONDS + 0.3, f"nginx served the revoked URL {lag:.2f}s after icsfeed refused it"
    assert d.get(old).status_code == 404
    fresh = d.get(new)
    assert fresh.status_code == 200 and b"BEGIN:VEVENT" in fresh.content
