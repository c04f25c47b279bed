"""No secret in any output (issue 9, item 3).

Sources hold keys in every place a real config puts them: a literal ``?api_key=`` in a
URL, ``params``, a ``${VAR}`` inside a URL's path, a command's ``argv``, a header, basic
auth. A real HTTP origin on 127.0.0.1 echoes back whatever it was sent in its 4xx bodies
and in records that get skipped, a command prints its argv to stderr, and a source whose
origin is down makes urllib3 log its retries. Then every output channel is searched for
every secret: ``icsfeed poll`` stdout and stderr (at DEBUG), the stored
``source_state.last_error`` and ``last_result``, ``/status`` and ``/metrics``, and
``icsfeed check``.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from conftest import cli, free_port, write_config
from fake_origins import FakeOrigin, RecordedRequest, Reply, json_response

from icsfeed.config import load_config
from icsfeed.live import LiveConfig
from icsfeed.redact import redact
from icsfeed.store import Store
from icsfeed.web import create_app

ENV = {
    "PATH_KEY": "path-key-3f9a1c7e55",
    "PARAM_KEY": "param-key-b81d2e4f09",
    "HEADER_KEY": "header-key-c5a6d7e8f1",
    "ARGV_KEY": "argv-key-0d1e2f3a4b",
    "DOWN_KEY": "down-key-9e8d7c6b5a",
    "BASIC_PASSWORD": "basic-pw-a1b2c3d4e5",
    "ADMIN_PASSWORD": "admin-pw-6f5e4d3c2b",
}
#: keys written in the config itself: secret by their name (api_key, --api-key)
LITERAL = {"query key": "literal-query-key-77aa01", "argv flag key": "literal-argv-key-88bb02"}
ADMIN = ("admin", ENV["ADMIN_PASSWORD"])


def echo(req: RecordedRequest) -> Reply:
    """A 4xx whose JSON error names everything the client sent, as careless APIs do."""
    sent = {"path": req.path, "query": req.query, "key": req.headers.get("X-Api-Key"),
            "authorization": req.headers.get("Authorization")}
    return json_response({"message": f"invalid request {json.dumps(sent)}"}, status=400)


def forbidden_values() -> dict[str, str]:
    values = {**ENV, **LITERAL}
    values["basic auth base64"] = base64.b64encode(f"bob:{ENV['BASIC_PASSWORD']}".encode()).decode()
    return values


@pytest.mark.slow
def test_no_secret_in_poll_output_logs_store_status_or_metrics(tmp_path: Path) -> None:
    down = free_port()  # nothing listens: urllib3 logs its retries with the request target
    with FakeOrigin() as origin:
        for path in ("/q", "/p", "/basic", f"/t/{ENV['PATH_KEY']}/events"):
            origin.route("GET", path, echo)
        # 200, but the records echo the key back: they are skipped, with the key in the reason
        origin.route("GET", "/s", lambda req: json_response([{"id": f"echo {req.headers.get('X-Api-Key')}", "title": "t"}]))
        printer = "import sys; print('bad arguments:', sys.argv[1:], file=sys.stderr); sys.exit(2)"
        sources = f"""
            - {{id: query, type: http_json, retries: 0, url: "{origin.url}/q?api_key={LITERAL['query key']}&limit=5", mapping: {{key: id, title: t, start: s}}}}
            - {{id: params, type: http_json, retries: 0, url: "{origin.url}/p", params: {{api_key: "${{PARAM_KEY}}", page: "1"}}, mapping: {{key: id, title: t, start: s}}}}
            - {{id: path, type: http_json, retries: 0, url: "{origin.url}/t/${{PATH_KEY}}/events", mapping: {{key: id, title: t, start: s}}}}
            - {{id: header, type: http_json, retries: 0, url: "{origin.url}/s", headers: {{X-Api-Key: "${{HEADER_KEY}}"}}, mapping: {{key: id, title: t, start: s}}}}
            - {{id: basic, type: http_json, retries: 0, url: "{origin.url}/basic", auth: {{username: bob, password: "${{BASIC_PASSWORD}}"}}, mapping: {{key: id, title: t, start: s}}}}
            - {{id: down, type: http_json, retries: 1, timeout: 5, url: "http://127.0.0.1:{down}/x?key=${{DOWN_KEY}}", mapping: {{key: id, title: t, start: s}}}}
            - {{id: argv, type: command, argv: [{json.dumps(sys.executable)}, -c, {json.dumps(printer)}, --token, "${{ARGV_KEY}}", "--api-key={LITERAL['argv flag key']}"], mapping: {{key: id, title: t, start: s}}}}
            """
        config_dir = write_config(tmp_path / "config", {"a.yaml": textwrap.dedent("""
            server: {admin_user: admin, admin_password: "${ADMIN_PASSWORD}"}
            accounts: [{id: acme, name: ACME}]
            insights: {enabled: false}
            sources:
            """) + textwrap.indent(textwrap.dedent(sources), "  ")})
        result = cli(config_dir, tmp_path / "data", "--log-level", "DEBUG", "poll", "--once", env=ENV)
        assert any(r.path == "/q" and r.arg("api_key") == LITERAL["query key"] for r in origin.requests)  # it was sent
        assert any(r.headers.get("X-Api-Key") == ENV["HEADER_KEY"] for r in origin.requests)

    assert result.returncode == 1, result.stdout + result.stderr  # the failing sources fail
    texts = {"poll stdout": result.stdout, "poll stderr": result.stderr}
    monkey_env = pytest.MonkeyPatch()
    for name, value in ENV.items():
        monkey_env.setenv(name, value)
    try:
        config = load_config(config_dir, tmp_path / "data")
    finally:
        monkey_env.undo()
    store = Store(config.storage_url, uid_host=config.uid_host)
    try:
        states = {s: store.source_state(s) for s in config.sources}
        texts["stored errors"] = "\n".join(f"{s}: {st.last_error}" for s, st in states.items())
        texts["stored results"] = json.dumps({s: st.last_result for s, st in states.items()})
        client = create_app(LiveConfig(config), store, b"k" * 32).test_client()
        auth = {"Authorization": "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()}
        for page in ("/status", "/metrics"):
            answer = client.get(page, headers=auth)
            assert answer.status_code == 200, (page, answer.status_code)
            texts[page] = answer.get_data(as_text=True)
    finally:
        store.close()

    # the errors are there, so the search below means something
    errors = texts["stored errors"]
    for source in ("query", "params", "path", "basic", "down", "argv"):
        assert states[source].last_error, f"{source} did not fail"
    assert "invalid request" in errors and "bad arguments" in errors and "***" in errors
    assert states["header"].last_result and states["header"].last_result["skipped_examples"], states["header"].last_result
    assert "Retrying" in texts["poll stderr"]  # urllib3's own log lines are in the capture
    assert "HTTP 400" in texts["/status"]

    leaks = [f"{what} in {where}" for where, text in texts.items() for what, value in forbidden_values().items()
             for form in {value, quote_plus(value)} if form in text]
    assert not leaks, [*leaks, texts["stored errors"]]


def test_check_output_does_not_quote_an_interpolated_secret(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "config", {"a.yaml": 'server: {base_url: "${BASE_SECRET}"}\n'
                                                              "sources:\n  - {id: s, type: file, interval: soon, path: x, "
                                                              "mapping: {key: id, title: t, start: s}}\n"})
    result = cli(config_dir, tmp_path / "data", "check", env={"BASE_SECRET": "ftp-secret-value-123456"})
    assert result.returncode == 2
    assert "server.base_url" in result.stderr and "sources[0].interval" in result.stderr
    assert "ftp-secret-value-123456" not in result.stderr and "***" in result.stderr


@pytest.mark.parametrize(("text", "clean"), [
    ("GET http://bob:pw-123456@h:8080/p?api_key=abc123&limit=5 failed", "GET http://bob:***@h:8080/p?api_key=***&limit=*** failed"),
    ("https://tok3n-abcdef@github.example/x", "https://***@github.example/x"),
    ("Retrying (Retry(total=0)) after connection broken by 'X': /x?key=k3y-value", "Retrying (Retry(total=0)) after connection broken by 'X': /x?key=***"),
    ('{"error": "denied", "api_key": "zz-1234"}', '{"error": "denied", "api_key": "***"}'),
    ("sent access_token=ab12cd34 and Authorization: Bearer abc.def-123", "sent access_token=*** and Authorization: Bearer ***"),
    ("HTTP basic authentication failed; check the password", "HTTP basic authentication failed; check the password"),
    ("sources[0].password: required setting is missing", "sources[0].password: required setting is missing"),
    ("the key is k%2Fey%20secret or k/ey secret", "the key is *** or ***"),
])
def test_one_redaction_for_urls_named_keys_and_known_secrets(text: str, clean: str) -> None:
    from icsfeed.redact import secret_forms

    assert redact(text, secret_forms("k/ey secret")) == clean
