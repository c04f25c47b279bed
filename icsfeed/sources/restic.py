"""restic: every snapshot of a repository is a backup event.

Runs ``restic snapshots --json`` (read-only, ``--no-lock``). The repository password goes
to restic through the subprocess environment (``RESTIC_PASSWORD`` or
``RESTIC_PASSWORD_FILE``), never on the command line, where any local user could read it
in the process list. A snapshot that ``forget --prune`` removes is history, so a vanished
event is kept (``absence = "keep"``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import string
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from icsfeed.model import Event
from icsfeed.redact import redact
from icsfeed.sources.base import Source, SourceError, SourceSettings
from icsfeed.sources.mapping import RecordError, parse_when

#: environment variables restic reads its repository and password from; never inherited
#: from icsfeed's own environment, so that a source uses only what its config says
_RESTIC_ENV = re.compile(r"^RESTIC_")
_TEMPLATE_FIELDS = {"id", "short_id", "host", "username", "tags", "paths", "full"}


class ResticSettings(SourceSettings):
    """Settings of a ``restic`` source."""

    #: what restic's ``-r`` takes: a path, ``sftp:…``, ``s3:…``, ``rest:…``
    repository: str
    password: SecretStr | None = None
    #: file holding the password (relative to the config directory)
    password_file: str | None = None
    #: the restic executable
    binary: str = "restic"
    #: extra environment, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3
    env: dict[str, SecretStr] = Field(default_factory=dict)
    #: seconds before restic is stopped and the poll fails
    timeout: float = Field(default=300.0, gt=0, le=3600)
    #: only snapshots of these hosts / with these tags / of these paths (restic's
    #: ``--host``, ``--tag``, ``--path``; a tag item "a,b" means both tags)
    hosts: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    #: restic's cache (speeds up remote repositories); default: <data dir>/restic-cache
    cache_dir: str | None = None
    #: where the customer comes from: the snapshot's hostname or one of its tags
    account_from: Literal["hostname", "tag", "none"] = "hostname"
    #: hostname or tag -> account key (matched case-insensitively); a hostname without an
    #: entry is used as the account key itself
    accounts: dict[str, str] = Field(default_factory=dict)
    #: with ``account_from: tag``: a tag "<prefix><key>" names the account, e.g. "customer="
    account_tag_prefix: str | None = None
    #: account of snapshots that the above does not map (one repository per customer)
    account: str | None = None
    #: tags that mark a full backup (title "web01 (full)")
    full_tags: list[str] = Field(default_factory=lambda: ["full"])
    #: link of each snapshot, e.g. "https://backups.example.com/snapshots/{id}"
    url_template: str | None = None
    #: title template over id, short_id, host, username, tags, paths, full;
    #: default "web01 (full)" / "web01"
    title: str | None = None

    @field_validator("url_template", "title")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from None
        unknown = fields - _TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {sorted(_TEMPLATE_FIELDS)}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> ResticSettings:
        from_env = {"RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"} & set(self.env)
        given = [name for name, value in (("password", self.password), ("password_file", self.password_file))
                 if value is not None] + sorted(from_env)
        if len(given) != 1:
            raise ValueError("give exactly one of password, password_file (or env RESTIC_PASSWORD_COMMAND); "
                             f"got {given or 'none'}")
        return self


class ResticSource(Source):
    """Snapshots of one restic repository, as backup events."""

    type_name = "restic"
    Settings = ResticSettings
    absence = "keep"
    settings: ResticSettings

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        self.skipped = []
        records = self.snapshots()
        events = []
        for record in records:
            try:
                if not isinstance(record, dict):
                    raise RecordError("not a JSON object")
                events.append(self.snapshot_event(record))
            except (RecordError, ValueError, TypeError, KeyError, IndexError) as exc:
                self.skip(record, str(exc))
        return events

    # --- running restic --------------------------------------------------------------

    def command(self) -> list[str]:
        """restic's argument list: no secret in it (the process list is public)."""
        s = self.settings
        cache = self.resolve_path(s.cache_dir) if s.cache_dir else self.context.data_dir / "restic-cache"
        args = [s.binary, "snapshots", "--json", "--no-lock", "--cache-dir", str(cache)]
        for flag, values in (("--host", s.hosts), ("--tag", s.tags), ("--path", s.paths)):
            for value in values:
                args += [flag, value]
        return args

    def environment(self) -> dict[str, str]:
        """The subprocess environment: ours minus RESTIC_*, plus the repository and secrets."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not _RESTIC_ENV.match(k)}
        env.update({name: value.get_secret_value() for name, value in s.env.items()})
        env["RESTIC_REPOSITORY"] = s.repository
        if s.password is not None:
            env["RESTIC_PASSWORD"] = s.password.get_secret_value()
        elif s.password_file is not None:
            env["RESTIC_PASSWORD_FILE"] = str(self.resolve_path(s.password_file))
        return env

    def snapshots(self) -> list[Any]:
        """The parsed ``restic snapshots --json`` list; SourceError on any failure."""
        s = self.settings
        try:
            # A session of its own: on a timeout the whole group goes (ssh for sftp:,
            # rclone), or its children would hold the pipes open.
            proc = subprocess.Popen(self.command(), env=self.environment(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise SourceError(f"restic not found: {s.binary!r} (install restic or set binary:)") from None
        except PermissionError:
            raise SourceError(f"restic binary {s.binary!r} is not executable") from None
        try:
            stdout, stderr = proc.communicate(timeout=s.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SourceError(f"restic snapshots gave no answer within {s.timeout:g}s (stopped)") from None
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if done.returncode != 0:
            reason = self._first_line(done.stderr) or f"exit status {done.returncode}"
            raise SourceError(f"restic snapshots failed: {reason}")
        try:
            document = json.loads(done.stdout or b"null")
        except ValueError:
            raise SourceError(f"restic snapshots printed no JSON ({len(done.stdout)} bytes)") from None
        if document is None:
            return []
        if not isinstance(document, list):
            raise SourceError("restic snapshots --json printed no list")
        # --group-by prints [{"group_key": …, "snapshots": […]}, …]
        if all(isinstance(item, dict) and isinstance(item.get("snapshots"), list) for item in document) and document:
            return [snap for group in document for snap in group["snapshots"]]
        return document

    def _first_line(self, stderr: bytes) -> str:
        """restic's first stderr line, with anything secret redacted (defence in depth)."""
        text = stderr.decode("utf-8", "replace")
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:300]
        return self.redact(line)

    def redact(self, text: str) -> str:
        """Secret values and URL credentials (rest:https://user:pw@host) replaced by ***."""
        s = self.settings
        secrets = [v.get_secret_value() for v in s.env.values()]
        if s.password is not None:
            secrets.append(s.password.get_secret_value())
        return redact(text, secrets)

    # --- snapshots -> events ---------------------------------------------------------

    def snapshot_event(self, snap: Mapping[str, Any]) -> Event:
        """One snapshot as a backup event, from the backup's start to its end."""
        s = self.settings
        snap_id = snap.get("id")
        if not isinstance(snap_id, str) or not snap_id:
            raise RecordError("snapshot without id")
        short_id = str(snap.get("short_id") or snap_id[:8])
        host = str(snap.get("hostname") or "").strip()
        tags = [str(t) for t in snap.get("tags") or []]
        paths = [str(p) for p in snap.get("paths") or []]
        summary = snap.get("summary") if isinstance(snap.get("summary"), dict) else {}
        # restic >= 0.17 records when the backup ran; older ones only its start ("time").
        start = _when(summary.get("backup_start") or snap.get("time"))
        if summary.get("backup_end"):
            end = max(_when(summary["backup_end"]), start)
        else:
            kind = self.context.kinds.get("backup")
            end = start + timedelta(seconds=kind.duration_seconds if kind else 0)
        full_tags = {t.lower() for t in s.full_tags}
        full = any(t.lower() in full_tags for t in tags)
        fields = {"id": snap_id, "short_id": short_id, "host": host or "unknown host",
                  "username": str(snap.get("username") or ""), "tags": ", ".join(tags),
                  "paths": ", ".join(paths), "full": "full" if full else ""}
        if s.title:
            title = s.title.format(**fields).strip()
        else:
            title = fields["host"] + (" (full)" if full else "")
        return Event(
            source=self.id,
            key=snap_id,
            kind="backup",
            title=title or f"snapshot {short_id}",
            start=start,
            end=end,
            detail=_detail(host, paths, tags, short_id, summary, snap),
            url=s.url_template.format(**fields) if s.url_template else None,
            account=self._account(host, tags),
            attrs={"host": host, "tags": tags, "paths": paths, "full": full, "short_id": short_id},
        )

    def _account(self, host: str, tags: list[str]) -> str | None:
        s = self.settings
        mapping = {k.strip().lower(): v for k, v in s.accounts.items()}
        if s.account_from == "hostname" and host:
            return mapping.get(host.lower(), s.account or host)
        if s.account_from == "tag":
            for tag in tags:
                if tag.lower() in mapping:
                    return mapping[tag.lower()]
            if s.account_tag_prefix:
                for tag in tags:
                    if tag.startswith(s.account_tag_prefix) and tag[len(s.account_tag_prefix):]:
                        return tag[len(s.account_tag_prefix):]
        return s.account


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill restic and everything it started (its own process group), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _when(value: Any) -> datetime:
    if not value:
        raise RecordError("snapshot without time")
    parsed = parse_when(value, UTC)
    if not isinstance(parsed, datetime):
        raise RecordError(f"time is a date, not a time: {value!r}")
    return parsed


def _size(count: Any) -> str:
    """Bytes in IEC units, the way restic prints them."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _detail(host: str, paths: list[str], tags: list[str], short_id: str,
            summary: Mapping[str, Any], snap: Mapping[str, Any]) -> str:
    lines = [f"Host: {host or 'unknown'}", f"Paths: {', '.join(paths) or '-'}"]
    if tags:
        lines.append(f"Tags: {', '.join(tags)}")
    lines.append(f"Snapshot: {short_id}")
    if snap.get("username"):
        lines.append(f"User: {snap['username']}")
    if summary:
        files = [f"{summary[k]} {label}" for k, label in
                 (("files_new", "new"), ("files_changed", "changed"), ("files_unmodified", "unmodified"))
                 if isinstance(summary.get(k), int)]
        if files:
            lines.append(f"Files: {', '.join(files)}")
        if isinstance(summary.get("data_added"), int):
            lines.append(f"Added: {_size(summary['data_added'])}")
        if isinstance(summary.get("total_bytes_processed"), int):
            processed = _size(summary["total_bytes_processed"])
            count = summary.get("total_files_processed")
            lines.append(f"Processed: {processed}" + (f" in {count} files" if isinstance(count, int) else ""))
    if snap.get("program_version"):
        lines.append(f"Program: {snap['program_version']}")
    return "\n".join(lines)


