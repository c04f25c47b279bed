"""The restic source against a real restic repository (Debian's /usr/bin/restic) in tmp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icalendar
import pydantic
import pytest

from icsfeed.sources import load_source_class
from icsfeed.sources.base import KindInfo, SourceContext, SourceError
from icsfeed.sources.restic import ResticSource

PASSWORD = "c0rrect-h0rse-restic"
BINARY = "/usr/bin/restic"


def _restic() -> str:
    found = BINARY if os.path.exists(BINARY) else shutil.which("restic")
    if not found:
        pytest.fail(f"{BINARY} is missing: install the Debian package restic "
                    "(these tests run the real restic, they are never skipped)")
    return found


def _run(repo: Path, *args: str, password: str = PASSWORD) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=password)
    done = subprocess.run([_restic(), *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=repo.parent, check=False)
    assert done.returncode == 0, f"restic {' '.join(args)} failed: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A repository with three snapshots: web01 full, web01 incremental, db01 tagged for globex."""
    base = tmp_path_factory.mktemp("restic")
    repository = base / "repo"
    _run(repository, "init")
    www = base / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>hello</h1>\n" * 100)
    db = base / "db"
    db.mkdir()
    (db / "dump.sql").write_bytes(os.urandom(50_000))
    before = datetime.now(UTC) - timedelta(seconds=1)
    _run(repository, "backup", "--host", "web01", "--tag", "full", str(www))
    (www / "new.html").write_text("new page\n")
    _run(repository, "backup", "--host", "web01", str(www))
    _run(repository, "backup", "--host", "db01", "--tag", "nightly", "--tag", "customer=globex", str(db))
    after = datetime.now(UTC) + timedelta(seconds=1)
    snapshots = json.loads(_run(repository, "snapshots", "--json"))
    assert len(snapshots) == 3
    return {"repository": repository, "www": www, "db": db, "before": before, "after": after,
            "snapshots": snapshots, "base": base}


def _context(tmp_path: Path) -> SourceContext:
    return SourceContext(config_dir=tmp_path, data_dir=tmp_path, kinds={
        "backup": KindInfo(all_day=False, duration_seconds=900),
    })


def _source(tmp_path: Path, **raw: Any) -> ResticSource:
    cls = load_source_class("restic")
    assert cls is ResticSource
    raw.setdefault("binary", _restic())
    return ResticSource("backups", cls.parse_settings(raw), _context(tmp_path))


def test_snapshots_become_backup_events(repo: dict[str, Any], tmp_path: Path) -> None:
    source = _source(tmp_path, repository=str(repo["repository"]), password=PASSWORD,
                     accounts={"WEB01": "acme"})
    events = sorted(source.fetch(None), key=lambda e: e.start)
    assert source.skipped == []
    assert [e.title for e in events] == ["web01 (full)", "web01", "db01"]
    by_id = {s["id"]: s for s in repo["snapshots"]}
    assert sorted(e.key for e in events) == sorted(by_id)
    full, incremental, db = events
    snap = by_id[full.key]
    assert full.kind == "backup"
    assert full.source == "backups"
    assert repo["before"] <= full.start <= repo["after"]
    assert full.start == datetime.fromisoformat(snap["time"])
    assert full.end == full.start + timedelta(seconds=900), "restic 0.14 has no summary: the kind's duration"
    assert full.url is None, "restic has no web UI; no url_template given"
    assert full.account == "acme", "hostname mapping is case-insensitive"
    assert db.account == "db01", "an unmapped hostname is the account key itself"
    assert full.status == "confirmed" and full.severity is None
    assert dict(full.attrs) == {"host": "web01", "tags": ["full"], "paths": [str(repo["www"])], "full": True,
                                "short_id": snap["short_id"]}
    assert incremental.attrs["full"] is False and incremental.attrs["tags"] == []
    lines = full.detail.splitlines()
    assert "Host: web01" in lines
    assert f"Paths: {repo['www']}" in lines
    assert "Tags: full" in lines
    assert f"Snapshot: {snap['short_id']}" in lines
    assert not full.title.startswith("💾"), "render adds the icon"
    assert ResticSource.absence == "keep"


def test_tag_mapping_and_prefix_name_the_account(repo: dict[str, Any], tmp_path: Path) -> None:
    mapped = _source(tmp_path, repository=str(repo["repository"]), password=PASSWORD,
                     account_from="tag", accounts={"full": "acme"}, account_tag_prefix="customer=",
                     account="fallback-co")
    accounts = {(e.title, e.account) for e in mapped.fetch(None)}
    assert accounts == {("web01 (full)", "acme"), ("db01", "globex"), ("web01", "fallback-co")}


def test_filters_url_template_and_title_template(repo: dict[str, Any], tmp_path: Path) -> None:
    source = _source(tmp_path, repository=str(repo["repository"]), password=PASSWORD, hosts=["web01"],
                     tags=["full"], full_tags=["FULL"], url_template="https://backups.example.com/snapshots/{id}",
                     title="{host}: {paths} [{short_id}] {full}")
    (ev,) = list(source.fetch(None))
    assert ev.url == f"https://backups.example.com/snapshots/{ev.key}"
    assert ev.title == f"web01: {repo['www']} [{ev.key[:8]}] full"


def test_password_file_and_cache_dir(repo: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "restic.pw").write_text(PASSWORD + "\n")
    source = _source(tmp_path, repository=str(repo["repository"]), password_file="restic.pw",
                     cache_dir="cache")
    assert len(list(source.fetch(None))) == 3
    assert (tmp_path / "cache").is_dir(), "restic used the configured cache directory"


def test_password_travels_in_the_environment_not_the_command_line(repo: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "leaked-from-parent")
    source = _source(tmp_path, repository=str(repo["repository"]), password=PASSWORD,
                     env={"AWS_SECRET_ACCESS_KEY": "aws-s3cret"})
    assert PASSWORD not in " ".join(source.command())
    env = source.environment()
    assert env["RESTIC_PASSWORD"] == PASSWORD
    assert env["AWS_SECRET_ACCESS_KEY"] == "aws-s3cret"
    assert PASSWORD not in repr(source.settings) and "aws-s3cret" not in repr(source.settings)
    assert len(list(source.fetch(None))) == 3


def test_wrong_password_is_a_source_error_without_the_password(repo: dict[str, Any], tmp_path: Path) -> None:
    wrong = "wr0ng-" + PASSWORD
    source = _source(tmp_path, repository=str(repo["repository"]), password=wrong)
    with pytest.raises(SourceError) as caught:
        list(source.fetch(None))
    message = str(caught.value)
    assert "wrong password" in message, message  # restic's own first stderr line
    assert wrong not in message and PASSWORD not in message


def test_missing_repository_is_a_source_error(tmp_path: Path) -> None:
    source = _source(tmp_path, repository=str(tmp_path / "nope"), password=PASSWORD)
    with pytest.raises(SourceError, match=r"restic snapshots failed: .*config"):
        list(source.fetch(None))


def test_missing_binary_is_a_source_error(tmp_path: Path) -> None:
    source = _source(tmp_path, repository=str(tmp_path), password=PASSWORD, binary=str(tmp_path / "no-restic"))
    with pytest.raises(SourceError, match="restic not found"):
        list(source.fetch(None))


def test_timeout_stops_restic_and_its_children(tmp_path: Path) -> None:
    # A stand-in that hangs like restic waiting for ssh: it starts a child holding the pipes.
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 60\necho '[]'\n")
    hang.chmod(0o755)
    source = _source(tmp_path, repository=str(tmp_path), password=PASSWORD, binary=str(hang), timeout=1)
    began = time.monotonic()
    with pytest.raises(SourceError, match="no answer within 1s"):
        list(source.fetch(None))
    assert time.monotonic() - began < 10


def test_secrets_in_stderr_are_redacted(tmp_path: Path) -> None:
    # restic does not print secrets; if a backend ever did, they must still not reach the status page.
    noisy = tmp_path / "noisy.sh"
    noisy.write_text('#!/bin/sh\necho "Fatal: rest:https://u:$RESTIC_PASSWORD@h/ said $AWS_SECRET_ACCESS_KEY" >&2\nexit 1\n')
    noisy.chmod(0o755)
    source = _source(tmp_path, repository="rest:https://u:pw@h/", password=PASSWORD, binary=str(noisy),
                     env={"AWS_SECRET_ACCESS_KEY": "aws-s3cret"})
    with pytest.raises(SourceError) as caught:
        list(source.fetch(None))
    assert str(caught.value) == "restic snapshots failed: Fatal: rest:https://u:***@h/ said ***"


def test_bad_snapshots_are_skipped(tmp_path: Path) -> None:
    # restic >= 0.17 adds "summary"; Debian's 0.14 does not, so this shape follows restic's
    # docs (scripting: "snapshots --json"), printed by a stand-in.
    snapshots = [
        {"time": "2024-05-01T02:00:00.123456789+02:00", "hostname": "web01", "tags": ["full"], "paths": ["/srv"],
         "id": "a" * 64, "short_id": "aaaaaaaa", "program_version": "restic 0.17.0",
         "summary": {"backup_start": "2024-05-01T02:00:00.1+02:00", "backup_end": "2024-05-01T02:07:30+02:00",
                     "files_new": 3, "files_changed": 1, "files_unmodified": 10, "data_added": 5 * 1024 * 1024,
                     "total_files_processed": 14, "total_bytes_processed": 3 * 1024 ** 3}},
        {"time": "not a time", "hostname": "web02", "id": "b" * 64},
        {"time": "2024-05-01T02:00:00Z", "hostname": "web03"},
        ["not", "an", "object"],
    ]
    fake = tmp_path / "fake.sh"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(snapshots)}\nEOF\n")
    fake.chmod(0o755)
    source = _source(tmp_path, repository=str(tmp_path), password=PASSWORD, binary=str(fake))
    (ev,) = list(source.fetch(None))
    assert len(source.skipped) == 3
    assert ev.start == datetime(2024, 5, 1, 0, 0, 0, 100000, tzinfo=UTC)
    assert ev.end == datetime(2024, 5, 1, 0, 7, 30, tzinfo=UTC)
    lines = ev.detail.splitlines()
    assert "Files: 3 new, 1 changed, 10 unmodified" in lines
    assert "Added: 5.0 MiB" in lines
    assert "Processed: 3.0 GiB in 14 files" in lines


def test_grouped_output_is_flattened(tmp_path: Path) -> None:
    grouped = [{"group_key": {"hostname": "web01"}, "snapshots": [
        {"time": "2024-05-01T02:00:00Z", "hostname": "web01", "id": "c" * 64, "short_id": "cccccccc"}]}]
    fake = tmp_path / "fake.sh"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(grouped)}'\n")
    fake.chmod(0o755)
    (ev,) = list(_source(tmp_path, repository=str(tmp_path), password=PASSWORD, binary=str(fake)).fetch(None))
    assert ev.key == "c" * 64
    assert ev.end == ev.start + timedelta(seconds=900), "no summary: the kind's duration"


@pytest.mark.parametrize("raw", [
    {"password": "x"},
    {"repository": "/r"},
    {"repository": "/r", "password": "x", "password_file": "f"},
    {"repository": "/r", "password": "x", "env": {"RESTIC_PASSWORD_COMMAND": "pass restic"}},
    {"repository": "/r", "password": "x", "account_from": "owner"},
    {"repository": "/r", "password": "x", "url_template": "https://b/{snapshot}"},
    {"repository": "/r", "password": "x", "env": {"BAD NAME": "v"}},
    {"repository": "/r", "password": "x", "surprise": True},
])
def test_invalid_settings_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ResticSource.parse_settings(raw)


# --- end to end: CLI poll + render ------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(config_dir: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["TEST_RESTIC_PASSWORD"] = PASSWORD
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"icsfeed {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_end_to_end_snapshots_in_the_feed_and_kept_after_forget(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _run(repository, "init")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello\n")
    _run(repository, "backup", "--host", "web01", "--tag", "full", str(site))
    (site / "more.html").write_text("more\n")
    _run(repository, "backup", "--host", "web01", str(site))
    full_id = next(s["id"] for s in json.loads(_run(repository, "snapshots", "--json")) if s.get("tags"))

    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    (config_dir / "icsfeed.yaml").write_text(
        "accounts:\n"
        "  - id: acme\n    name: ACME Corp\n    keys: [acme]\n"
        "sources:\n"
        f"  - id: backups\n    type: restic\n    interval: 15m\n    repository: {repository}\n"
        "    password: ${TEST_RESTIC_PASSWORD}\n"
        f"    binary: {_restic()}\n"
        "    accounts: {web01: acme}\n"
        "    url_template: https://backups.example.com/snapshots/{short_id}\n")
    first = _cli(config_dir, data_dir, "poll", "--once")
    assert "backups: 2 new" in first.stdout, first.stdout
    assert PASSWORD not in first.stdout + first.stderr
    _cli(config_dir, data_dir, "render", "acme", "-o", str(tmp_path / "acme.ics"))
    calendar = icalendar.Calendar.from_ical((tmp_path / "acme.ics").read_bytes())
    events = {str(ev.get("SUMMARY")): ev for ev in calendar.walk("VEVENT") if str(ev.get("SUMMARY")).startswith("💾")}
    assert set(events) == {"💾 web01 (full)", "💾 web01"}
    assert str(events["💾 web01 (full)"].get("URL")) == f"https://backups.example.com/snapshots/{full_id[:8]}"
    assert "Host: web01" in str(events["💾 web01 (full)"].get("DESCRIPTION"))

    # forget --prune removes the snapshot from the repository; the calendar keeps the history.
    _run(repository, "forget", "--prune", full_id)
    assert len(json.loads(_run(repository, "snapshots", "--json"))) == 1
    second = _cli(config_dir, data_dir, "poll", "--once")
    assert "backups: 0 new, 0 updated, 0 closed, 0 cancelled, 1 unchanged" in second.stdout, second.stdout
    _cli(config_dir, data_dir, "render", "acme", "-o", str(tmp_path / "acme2.ics"))
    calendar = icalendar.Calendar.from_ical((tmp_path / "acme2.ics").read_bytes())
    kept = {str(ev.get("SUMMARY")): ev for ev in calendar.walk("VEVENT") if str(ev.get("SUMMARY")).startswith("💾")}
    assert set(kept) == {"💾 web01 (full)", "💾 web01"}
    assert str(kept["💾 web01 (full)"].get("STATUS")) == "CONFIRMED"


@pytest.mark.slow
def test_end_to_end_wrong_password_is_reported_without_it(repo: dict[str, Any], tmp_path: Path) -> None:
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    (config_dir / "icsfeed.yaml").write_text(
        "sources:\n"
        f"  - id: backups\n    type: restic\n    repository: {repo['repository']}\n"
        "    password: ${TEST_RESTIC_PASSWORD}-wrong\n"
        f"    binary: {_restic()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["TEST_RESTIC_PASSWORD"] = PASSWORD
    done = subprocess.run([sys.executable, "-m", "icsfeed", "--config", str(config_dir), "--data", str(data_dir),
                           "poll", "--once"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "backups: ERROR (1 in a row): restic snapshots failed: Fatal: wrong password" in done.stdout, done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_documented_example_is_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (REPO_ROOT / "docs" / "sources" / "restic.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sources.yaml").write_text(example)
    for name in ("RESTIC_PASSWORD", "BACKUP_S3_KEY", "BACKUP_S3_SECRET"):
        monkeypatch.setenv(name, f"value-of-{name}")
    from icsfeed.config import load_config

    config = load_config(tmp_path, tmp_path / "data")
    settings = config.source_settings["backups"]
    assert isinstance(settings, ResticSource.Settings)
    assert settings.password is not None and settings.password.get_secret_value() == "value-of-RESTIC_PASSWORD"
    assert settings.accounts["shop-web"] == "globex"
    source = ResticSource("backups", settings, config.source_context())
    assert source.environment()["AWS_SECRET_ACCESS_KEY"] == "value-of-BACKUP_S3_SECRET"
