"""Real processes and real sockets for the reliability suites and the benchmarks.

* :class:`IcsfeedServer` runs ``python -m icsfeed serve`` (:class:`IcsfeedPoller`:
  ``icsfeed poll``) as a subprocess on a free port of
  127.0.0.1 with its own config and data directory and a known secret key (so tests can
  make feed URLs), waits until ``/healthz`` answers, and is killed (SIGKILL if need be) by
  ``stop()``, which fixtures call in teardown.
* :class:`ControlledOrigin` is an HTTP origin on 127.0.0.1 whose behaviour a test switches
  while a poller talks to it: a good JSON answer, 500, a body cut off mid-transfer, a body
  that is not JSON, an answer that never comes (until released), or no listener at all.
  ``tests/fake_origins.py`` fakes product APIs with canned replies; this one breaks the
  connection itself, which canned replies cannot.

Every loop here is bounded in time; every thread is a daemon; every process is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import requests

REPO = Path(__file__).resolve().parents[1]
#: the secret key every served instance here uses, so tests can compute feed tokens
SECRET = "reliability-suite-secret-key-0123456789"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """The predicate's first true value, polled every ``every`` seconds for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_config(directory: Path, files: dict[str, str]) -> Path:
    """Write YAML files (dedented) into a config directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


def feed_token(feed_id: str, version: int = 1) -> str:
    """The token of a feed under :data:`SECRET` (what ``icsfeed accounts`` would print)."""
    from icsfeed.tokens import feed_token as make

    return make(SECRET.encode(), feed_id, version)


class IcsfeedServer:
    """``icsfeed serve`` in a subprocess; use as a context manager or call stop()."""

    def __init__(self, config_dir: Path, data_dir: Path, *, env: dict[str, str] | None = None,
                 log_level: str = "INFO", scheduler: bool = True, port: int | None = None,
                 secret: str | None = SECRET) -> None:
        """``secret`` None: the server uses its data directory's key (or one ``env`` gives)."""
        self.config_dir, self.data_dir = Path(config_dir), Path(data_dir)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.secret = secret
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    **({"ICSFEED_SECRET_KEY": secret} if secret is not None else {}), **(env or {})}
        self.log_level = log_level
        self.scheduler = scheduler
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        self._log: Any = None
        self.starts = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Self:
        """Start (or restart) the process; its output is appended to ``log_path``."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "icsfeed", "--config", str(self.config_dir), "--data", str(self.data_dir),
                "--log-level", self.log_level, *self.command()]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO))
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def command(self) -> list[str]:
        """The icsfeed subcommand and its options."""
        return ["serve", "--bind", f"127.0.0.1:{self.port}", *([] if self.scheduler else ["--no-scheduler"])]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz answers 200; AssertionError with the log if the process dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"icsfeed serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"icsfeed serve not ready within {timeout}s:\n{self.log()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal (SIGKILL: no cleanup at all) and reap the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; always leaves no process behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- use -----------------------------------------------------------------------------

    def log(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def feed_url(self, feed_id: str, version: int = 1) -> str:
        """Subscription URL of ``account/<id>`` or ``team/<id>`` on this server."""
        if self.secret != SECRET:
            raise RuntimeError("this server's key is not SECRET: take URLs from `icsfeed accounts`")
        kind, _, name = feed_id.partition("/")
        path = f"/feeds/{name}.ics" if kind == "account" else f"/teams/{name}.ics"
        return f"{self.base}{path}?token={feed_token(feed_id, version)}"

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
        """Poll ``predicate`` until true; AssertionError naming ``what`` (with the log tail) if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.running:
                raise AssertionError(f"icsfeed serve died while waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log()[-4000:]}")


class IcsfeedPoller(IcsfeedServer):
    """``icsfeed poll`` (the scheduler alone) in a subprocess: ready once it holds its poller
    slot (it logs "poller slot N"); no port, no pages."""

    def __init__(self, config_dir: Path, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(config_dir, data_dir, **kwargs)
        self.log_path = self.data_dir.parent / f"poll-{self.port}.log"  # the port only names the log

    def command(self) -> list[str]:
        return ["poll"]

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Self:
        self._mark = len(self.log())
        return super().start(wait=wait, timeout=timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda: "poller slot" in self.log()[self._mark:], timeout, "the poller to take its slot")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# --- an origin that misbehaves on demand ---------------------------------------------------

MODES = ("ok", "500", "truncated", "not_json", "hang", "down")


class ControlledOrigin:
    """GET /<anything> answers according to ``mode``:

    ``ok``         200 with ``document`` as JSON
    ``500``        500 with a short text body
    ``truncated``  200 whose Content-Length promises the whole document, then the
                   connection closes after half of it
    ``not_json``   200 with an HTML error page
    ``hang``       reads the request and answers nothing until ``release()`` or 60 s
    ``down``       the listening socket is closed: connection refused

    ``hits[mode]`` counts requests per mode and ``log`` times them, so tests can see when
    the poller came by.
    """

    def __init__(self, document: Any = None) -> None:
        self.document: Any = document if document is not None else []
        self.mode = "ok"
        self.hits: dict[str, int] = dict.fromkeys(MODES, 0)
        #: (time.time(), mode) of every request, to see the poller's rhythm
        self.log: list[tuple[float, str]] = []
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            previous, self.mode = self.mode, mode
        if previous == "hang":
            self._release.set()
        if mode == "hang":
            self._release.clear()
        if mode == "down":
            self._close()
        elif self._server is None:
            self._listen()

    def release(self) -> None:
        """Let hanging requests go (they then close without an answer)."""
        self._release.set()

    def start(self) -> Self:
        self._listen()
        return self

    def stop(self) -> None:
        self._release.set()
        self._close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _count(self, mode: str) -> None:
        with self._lock:
            self.hits[mode] += 1
            self.log.append((time.time(), mode))

    def _listen(self) -> None:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                mode = origin.mode
                origin._count(mode)
                body = json.dumps(origin.document).encode()
                if mode == "hang":
                    origin._release.wait(60)
                    self.close_connection = True
                    return
                if mode == "500":
                    self._send(500, b"internal error\n", "text/plain")
                elif mode == "not_json":
                    self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                elif mode == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self._send(200, body, "application/json")

            def _send(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        deadline = time.monotonic() + 5
        while True:  # the port was just released by "down"; rebinding may need a moment
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def kill_quietly(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a helper process of ours if it still runs (for teardown)."""
    if proc is not None and proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
