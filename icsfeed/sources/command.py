"""``command``: events from a program's JSON or JSON Lines output (an inventory export, a script)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import Field, SecretStr

from icsfeed.model import Event
from icsfeed.sources.base import AnswerUnchanged, SourceError
from icsfeed.sources.mapping import (
    MappedSettings,
    MappedSource,
    answer_records,
)
from icsfeed.sources.process import OutputTooLarge, TimedOut, run_bounded


class CommandSettings(MappedSettings):
    #: the program and its arguments (no shell); a relative program path starts in config/
    argv: list[str] = Field(min_length=1)
    format: Literal["json", "jsonl"] = "json"
    items: str | None = None
    timeout: float = Field(default=60.0, gt=0, le=3600)
    env: dict[str, SecretStr] = Field(default_factory=dict)
    #: working directory, relative to the config directory
    cwd: str = "."
    max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)


class CommandSource(MappedSource):
    """Runs the command each poll; a non-zero exit, a timeout or more output than
    ``max_bytes`` fails the poll (the program and its children are killed)."""

    type_name = "command"
    Settings = CommandSettings
    settings: CommandSettings
    absence = "keep"

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        s = self.settings
        cwd = self.resolve_path(s.cwd)
        argv = list(s.argv)
        program = argv[0]
        if ("/" in program) and not os.path.isabs(program):
            argv[0] = str(self.resolve_path(program))
        env = {**os.environ, **{k: v.get_secret_value() for k, v in s.env.items()}}
        if since is not None:
            env["ICSFEED_SINCE"] = since.isoformat()
        name = os.path.basename(program)
        try:
            done = run_bounded(argv, cwd=cwd, env=env, timeout=s.timeout, max_bytes=s.max_bytes)
        except TimedOut:
            raise SourceError(f"{name}: no result within {s.timeout:g}s (stopped)") from None
        except OutputTooLarge:
            raise SourceError(f"{name}: output larger than max_bytes ({s.max_bytes}); stopped it") from None
        except OSError as exc:
            raise SourceError(f"cannot run {name}: {exc.strerror}") from None
        if done.returncode != 0:
            first = (done.stderr.decode("utf-8", "replace").strip().split("\n") or [""])[-1].strip()[:300]
            raise SourceError(f"{name} exited with status {done.returncode}: {first}")
        if self.answer_unchanged(done.stdout):  # the same output as the stored events came from
            raise AnswerUnchanged(name)
        text = done.stdout.decode("utf-8-sig", "replace")  # a byte-order mark is no record
        return self.events_of_answer(*answer_records(self, text, s.format, s.items, name))
