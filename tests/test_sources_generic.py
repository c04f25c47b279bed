"""The generic source types against real files, a real local HTTP server and real processes."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import write_config
from fake_origins import FakeOrigin, json_response

from icsfeed.config import load_config
from icsfeed.poller import build_source
from icsfeed.sources import SourceError

NOW = datetime.now(timezone.utc).replace(microsecond=0)
MAPPING = "{kind: ticket, key: id, title: subject, start: created, account: org}"


def source_for(tmp_path: Path, yaml_source: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    config_dir = write_config(tmp_path / "config", {"a.yaml": f"sources:\n  - {yaml_source}\n"})
    config = load_config(config_dir, tmp_path / "data")
    return build_source(config, next(iter(config.sources))), config_dir


def records(n: int) -> list[dict[str, object]]:
    return [{"id": i, "subject": f"t{i}", "org": "acme", "created": (NOW - timedelta(hours=i)).isoformat()} for i in range(n)]


def test_file_json_with_items_path(tmp_path: Path) -> None:
    source, config_dir = source_for(tmp_path, f"{{id: s, type: file, path: x.json, items: data.list, mapping: {MAPPING}}}")
    (config_dir / "x.json").write_text(json.dumps({"data": {"list": records(3)}}))
    events = list(source.fetch(None))
    assert [e.title for e in events] == ["t0", "t1", "t2"] and events[0].account == "acme"


def test_file_csv_and_jsonl(tmp_path: Path) -> None:
    source, config_dir = source_for(tmp_path, f"{{id: s, type: file, path: x.csv, mapping: {MAPPING}}}")
    (config_dir / "x.csv").write_text("id,subject,org,created\n1,first,acme,2026-11-01T10:00:00Z\n2,second,acme,2026-11-02\n")
    assert [e.key for e in source.fetch(None)] == ["1", "2"]
    source, config_dir = source_for(tmp_path / "l", f"{{id: s, type: file, path: x.jsonl, mapping: {MAPPING}}}")
    lines = [json.dumps(r) for r in records(2)] + ["{broken"]
    (config_dir / "x.jsonl").write_text("\n".join(lines))
    assert len(list(source.fetch(None))) == 2
    assert source.skipped == ["line 3: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"]


def test_file_missing_is_a_source_error(tmp_path: Path) -> None:
    source, _ = source_for(tmp_path, f"{{id: s, type: file, path: nope.json, mapping: {MAPPING}}}")
    with pytest.raises(SourceError, match="file not found"):
        list(source.fetch(None))


def test_http_json_since_placeholder_and_auth(tmp_path: Path) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/api", json_response({"items": records(2)}))
        source, _ = source_for(tmp_path, f"{{id: s, type: http_json, url: '{origin.url}/api?since={{since}}', "
                                         f"since_format: epoch, items: items, auth: {{username: u, password: '${{PW}}'}}, mapping: {MAPPING}}}"
                               .replace("${PW}", "pa55"))
        assert source.incremental
        since = NOW - timedelta(hours=1)
        events = list(source.fetch(since))
        request = origin.requests[0]
    assert len(events) == 2
    assert request.arg("since") == str(int(since.timestamp()))
    assert request.headers["Authorization"].startswith("Basic ")


def test_http_json_without_since_is_complete(tmp_path: Path) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/api", json_response(records(1)))
        source, _ = source_for(tmp_path, f"{{id: s, type: http_json, url: '{origin.url}/api', mapping: {MAPPING}}}")
        assert not source.incremental and len(list(source.fetch(None))) == 1


def test_http_json_too_large_answer(tmp_path: Path) -> None:
    with FakeOrigin() as origin:
        origin.add("GET", "/api", json_response(records(500)))
        source, _ = source_for(tmp_path, f"{{id: s, type: http_json, url: '{origin.url}/api', max_bytes: 1000, mapping: {MAPPING}}}")
        with pytest.raises(SourceError, match="larger than max_bytes"):
            list(source.fetch(None))


def test_command_json_output_env_and_since(tmp_path: Path) -> None:
    script = tmp_path / "config" / "emit.py"
    script.parent.mkdir(parents=True)
    script.write_text("import json, os\nprint(json.dumps([{'id': 1, 'subject': os.environ['TOPIC'] + '|' + os.environ.get('ICSFEED_SINCE', '-'),"
                      " 'org': 'acme', 'created': '2026-11-01T10:00:00Z'}]))\n")
    source, _ = source_for(tmp_path, f"{{id: s, type: command, argv: ['{sys.executable}', emit.py], env: {{TOPIC: hello}}, mapping: {MAPPING}}}")
    assert [e.title for e in source.fetch(None)] == ["hello|-"]
    assert [e.title for e in source.fetch(NOW)] == [f"hello|{NOW.isoformat()}"]


def test_command_failure_and_timeout(tmp_path: Path) -> None:
    source, _ = source_for(tmp_path, f"{{id: s, type: command, argv: ['{sys.executable}', '-c', 'import sys; sys.exit(\"boom: no db\")'], mapping: {MAPPING}}}")
    with pytest.raises(SourceError, match="exited with status 1: boom: no db"):
        list(source.fetch(None))
    source, _ = source_for(tmp_path / "t", f"{{id: s, type: command, timeout: 0.5, argv: ['{sys.executable}', '-c', 'import time; time.sleep(5)'], mapping: {MAPPING}}}")
    started = datetime.now()
    with pytest.raises(SourceError, match=r"no result within 0\.5s"):
        list(source.fetch(None))
    assert (datetime.now() - started).total_seconds() < 3
    source, _ = source_for(tmp_path / "m", f"{{id: s, type: command, argv: [/nonexistent/prog], mapping: {MAPPING}}}")
    with pytest.raises(SourceError, match="cannot run prog"):
        list(source.fetch(None))


def test_command_jsonl(tmp_path: Path) -> None:
    script = tmp_path / "config" / "lines.py"
    script.parent.mkdir(parents=True)
    script.write_text("import json\nfor r in " + repr(records(3)) + ":\n    print(json.dumps(r))\nprint('garbage')\n")
    source, _ = source_for(tmp_path, f"{{id: s, type: command, format: jsonl, argv: ['{sys.executable}', lines.py], mapping: {MAPPING}}}")
    assert [e.key for e in source.fetch(None)] == ["0", "1", "2"]
    assert len(source.skipped) == 1 and source.skipped[0].startswith("line 4: not valid JSON")
