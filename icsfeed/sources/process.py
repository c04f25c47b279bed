"""Run a program with bounded output and time: what ``command`` (and any source that runs
a program) needs so that a runaway child can neither fill memory nor hold a poll.

The child runs in a session of its own; stdout is read as it comes, up to ``max_bytes``,
stderr is kept as its last few kilobytes, and on a limit, a timeout or any error the whole
process group is killed (a shell's children too) and reaped.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: how much of stderr is kept (the end: where a program says why it failed)
STDERR_TAIL = 64 * 1024
CHUNK = 64 * 1024


class OutputTooLarge(Exception):
    """stdout passed max_bytes; the process group was killed."""


class TimedOut(Exception):
    """The program did not finish within the timeout; the process group was killed."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes


def run_bounded(argv: list[str], *, cwd: Path | str | None, env: Mapping[str, str], timeout: float,
                max_bytes: int) -> Finished:
    """Run ``argv`` to its end; OutputTooLarge / TimedOut (child killed) or OSError (not started)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    out = bytearray()
    err = bytearray()
    done = False
    try:
        with selectors.DefaultSelector() as selector:
            assert proc.stdout is not None and proc.stderr is not None
            selector.register(proc.stdout, selectors.EVENT_READ)
            selector.register(proc.stderr, selectors.EVENT_READ)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut()
                for key, _ in selector.select(left):
                    data = os.read(key.fd, CHUNK)
                    if not data:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stdout:
                        out += data
                        if len(out) > max_bytes:
                            raise OutputTooLarge()
                    else:
                        err += data
                        if len(err) > STDERR_TAIL:
                            del err[:-STDERR_TAIL]
        try:
            returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TimedOut() from None
        done = True
        return Finished(returncode, bytes(out), bytes(err))
    finally:
        if not done:
            kill_group(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program and everything it started (its own process group), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
