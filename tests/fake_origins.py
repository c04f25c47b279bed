"""A small local HTTP server that fakes a documented origin API in tests.

Network sources are tested against the real product where it runs on this machine;
SaaS products (Jira Cloud, Zendesk) cannot, so their tests answer with the response
shapes copied from the product's API reference, served over real HTTP on 127.0.0.1
(never any other address) so that the real client stack runs: requests, urllib3
retries, Retry-After, auth headers, JSON parsing.

Usage::

    with FakeOrigin() as origin:
        origin.add("GET", "/api/items", json_response({"items": []}))
        origin.add("GET", "/api/flaky", Reply(429, headers={"Retry-After": "1"}), json_response({}))
        origin.route("POST", "/api/search", lambda req: json_response({"echo": req.json()}))
        ... origin.url ...  # http://127.0.0.1:<port>
        assert origin.requests[0].path == "/api/items"

Canned replies are served in order and the last one repeats; a route given a function
calls it with the :class:`RecordedRequest`. Unknown paths answer 404. Every request is
recorded (method, path, query, headers, body) for assertions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeOrigin", "RecordedRequest", "Reply", "TrickleOrigin", "json_response"]


@dataclass
class Reply:
    """One HTTP answer: status, body (bytes, str, or a JSON-able object) and headers."""

    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return data, headers


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer."""
    return Reply(status=status, body=obj, headers=dict(headers or {}))


@dataclass
class RecordedRequest:
    """What the client sent, for assertions."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def arg(self, name: str) -> str | None:
        """First value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None


Handler = Callable[[RecordedRequest], Reply]


class FakeOrigin:
    """A threaded HTTP server on 127.0.0.1 with a free port, routed by method and path."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._routes: dict[tuple[str, str], Handler | list[Reply]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- configuration -------------------------------------------------------------------

    def add(self, method: str, path: str, *replies: Reply) -> None:
        """Serve these replies in order for method+path; the last one repeats."""
        if not replies:
            raise ValueError("give at least one reply")
        with self._lock:
            self._routes[(method.upper(), path)] = list(replies)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer method+path by calling handler(request)."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOrigin is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        origin = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    method=self.command, path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k: v for k, v in self.headers.items()}, body=body,
                )
                reply = origin._dispatch(request)
                data, headers = reply.encoded()
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-origin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals -----------------------------------------------------------------------

    def _dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            target = self._routes.get((request.method, request.path))
            if isinstance(target, list):
                reply = target.pop(0) if len(target) > 1 else target[0]
                return reply
        if target is None:
            return json_response({"error": "not found", "path": request.path}, status=404)
        try:
            return target(request)
        except Exception as exc:  # a broken test handler shows as a 599, not a hang
            return Reply(599, f"fake origin handler failed: {type(exc).__name__}: {exc}")


class TrickleOrigin:
    """An origin on 127.0.0.1 that answers every request, but slowly: one byte every
    ``interval`` seconds, of the body (headers at once) or, with ``trickle_headers``, of the
    whole answer from the status line on. It never stalls long enough for a read timeout to
    fire, which is what makes it hostile. Each answer ends after ``max_seconds`` at the
    latest (the connection is closed), so a client without a deadline is slow, not stuck.
    """

    def __init__(self, body: bytes, *, interval: float = 1.0, trickle_headers: bool = False,
                 content_type: str = "application/json", max_seconds: float = 40.0,
                 first: list[bytes] | None = None) -> None:
        """``first``: bodies answered at once, on a kept-alive connection, before the trickle
        (page 1 of a paged API comes quickly, page 2 does not)."""
        self.body, self.interval, self.trickle_headers = body, interval, trickle_headers
        self.first = list(first or [])
        self.content_type, self.max_seconds = content_type, max_seconds
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "TrickleOrigin is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        import time

        origin = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                origin.requests.append(f"{self.command} {self.path}")
                if origin.first:
                    body = origin.first.pop(0)
                    self.send_response(200)
                    self.send_header("Content-Type", origin.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return  # the connection stays open for the next request
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: {origin.content_type}\r\n"
                        f"Content-Length: {len(origin.body)}\r\nX-Padding: {'p' * 40}\r\n\r\n").encode()
                started = time.monotonic()
                slow = (head + origin.body) if origin.trickle_headers else origin.body
                try:
                    if not origin.trickle_headers:
                        self.wfile.write(head)
                        self.wfile.flush()
                    for i in range(len(slow)):
                        if time.monotonic() - started > origin.max_seconds:
                            break
                        self.wfile.write(slow[i:i + 1])
                        self.wfile.flush()
                        time.sleep(origin.interval)
                except OSError:
                    pass  # the client gave up: what a deadline is for
                self.close_connection = True

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="trickle-origin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
