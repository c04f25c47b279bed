"""HTTP for network sources: one session per poll, and answers that are bounded and safe.

* **Retries** and Retry-After come from urllib3's ``Retry`` (not hand-written): connection
  errors and 5xx are retried with backoff; a 429 is retried after the origin's Retry-After
  when that is short, and otherwise reported so that the scheduler's backoff takes over.
* **One deadline per request**: ``timeout`` bounds the whole answer (connecting, the
  headers, every byte of the body, and the retries with their waits), not each socket
  read. requests' own timeout applies per read, so an origin trickling a byte a second
  would hold a poll for ever; here a watchdog shuts the request's sockets down when the
  time is up (:class:`Deadline`).
* **max_bytes** bounds the body as it is read, after decompression (urllib3 decodes
  ``Content-Encoding`` in bounded steps), so neither a huge answer nor a gzip bomb is ever
  held in memory beyond the limit.
* **Credentials stay with their host**: a redirect to another host, port or scheme drops
  ``Authorization`` (requests does that) and every configured ``headers:`` entry
  (:class:`Session`).
* **Text as sent**: a ``charset`` in Content-Type decodes the body; JSON without one is
  UTF-8 (RFC 8259), a byte-order mark accepted.
* **Errors safe to show**: messages name scheme, host and path only; an origin's own
  error text is redacted by the poller before it is stored or shown.
"""

from __future__ import annotations

import codecs
import contextvars
import email.message
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from icsfeed.sources.base import SourceError
from icsfeed.sources.mapping import parse_json_document

#: longest Retry-After (seconds) a poll waits out itself
MAX_RETRY_AFTER = 30.0
USER_AGENT = "icsfeed (+calendar feeds of operational events)"
#: what an error answer's body is read up to, for the origin's own message
ERROR_BODY_LIMIT = 64 * 1024
CHUNK = 64 * 1024


class HttpAuth(BaseModel):
    """Credentials for an origin: basic auth or a bearer token (use ``${ENV}`` for both)."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    def apply(self, session: requests.Session) -> None:
        if self.token is not None:
            session.headers["Authorization"] = f"Bearer {self.token.get_secret_value()}"
        elif self.username is not None:
            password = self.password.get_secret_value() if self.password else ""
            session.auth = (self.username, password)


class HttpSettings(BaseModel):
    """Connection settings shared by network source types."""

    model_config = ConfigDict(extra="forbid")

    #: seconds for the whole answer of one request: connect, headers, body, retries
    timeout: float = Field(default=30.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)
    verify_tls: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    auth: HttpAuth | None = None
    #: largest body of one answer (after decompression); a larger one fails the poll
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)


# --- the deadline --------------------------------------------------------------------------

_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("icsfeed_http_deadline", default=None)


class Deadline:
    """A time limit for everything a request does, enforced on its sockets.

    Inside ``with deadline:`` every connection the session opens or takes from its pool
    registers its socket here; when the time is up a timer thread shuts those sockets down, so whatever read
    or handshake is blocked on them returns at once (urllib3 then raises, and the retry
    logic sees :attr:`expired`). Read timeouts alone cannot do this: each read that gets a
    byte starts its timeout again.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._token: contextvars.Token[Deadline | None] | None = None
        self.fired = False

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.end

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has)."""
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> Deadline:
        self._token = _CURRENT.set(self)
        self._timer = threading.Timer(self.remaining(), self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._token is not None:
            _CURRENT.reset(self._token)
        with self._lock:
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _DeadlineExceeded(Exception):
    """Raised inside urllib3's retry loop: no time left for another attempt or wait."""


def _watch_new(sock: socket.socket) -> socket.socket:
    deadline = _CURRENT.get()
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _HTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new(super()._new_conn())


class _HTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:  # the TCP socket, before TLS: a slow handshake is cut too
        return _watch_new(super()._new_conn())


class _WatchedPool:
    """A pool whose kept-alive connections register with the current deadline when they
    are taken for a request (a new one registers when it connects)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        sock = getattr(conn, "sock", None)
        if sock is not None:
            _watch_new(sock)
        return conn


class _HTTPPool(_WatchedPool, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_WatchedPool, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Retry(Retry):
    """urllib3 Retry that gives up on a 429 whose Retry-After is too long to wait in a poll,
    and on anything once the request's deadline has passed (or would pass while waiting)."""

    def increment(self, method: Any = None, url: Any = None, response: Any = None, error: Any = None,
                  _pool: Any = None, _stacktrace: Any = None) -> Retry:
        deadline = _CURRENT.get()
        if deadline is not None and deadline.expired:
            raise _DeadlineExceeded()
        if response is not None and response.status == 429:
            retry_after = self.get_retry_after(response)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                raise _TooLongRetryAfter(retry_after)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response: Any = None) -> None:
        deadline = _CURRENT.get()
        if deadline is not None:
            wait = self.get_retry_after(response) if response is not None else None
            wait = wait if wait is not None else self.get_backoff_time()
            if wait >= deadline.remaining():
                raise _DeadlineExceeded()
        super().sleep(response)


class _TooLongRetryAfter(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _Adapter(HTTPAdapter):
    """HTTPAdapter whose connections register with the current :class:`Deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme") and not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


# --- the session -----------------------------------------------------------------------------

class Session(requests.Session):
    """A session whose credentials never follow a redirect to another origin.

    requests removes ``Authorization`` when a redirect leaves the host (or changes port or
    scheme: ``Session.should_strip_auth``); this removes every configured secret header
    (``headers:`` such as ``X-Api-Key``) by the same rule, in ``rebuild_auth``, the hook
    requests documents for it.
    """

    def __init__(self, secret_headers: Iterable[str] = ()) -> None:
        super().__init__()
        self.secret_headers = frozenset(name.lower() for name in secret_headers)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        old, new = response.request.url or "", prepared_request.url or ""
        if self.secret_headers and self.should_strip_auth(old, new):
            for name in list(prepared_request.headers):
                if name.lower() in self.secret_headers:
                    del prepared_request.headers[name]
        super().rebuild_auth(prepared_request, response)


def make_session(settings: HttpSettings) -> Session:
    """A session with retries on connection errors, 5xx and short 429s."""
    session = Session(secret_headers=settings.headers)
    retry = _Retry(
        total=settings.retries, connect=settings.retries, read=settings.retries,
        status=settings.retries, backoff_factor=0.5, backoff_max=10,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD", "POST"}),
        respect_retry_after_header=True, raise_on_status=False,
    )
    adapter = _Adapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    for name, value in settings.headers.items():
        session.headers[name] = value.get_secret_value()
    if settings.auth is not None:
        settings.auth.apply(session)
    session.verify = settings.verify_tls
    return session


def safe_url(url: str) -> str:
    """scheme://host/path of a URL: what may be shown (no credentials, no query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


# --- one answer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers and the whole body (within max_bytes)."""

    status: int
    headers: CaseInsensitiveDict[str]
    body: bytes
    where: str

    @property
    def charset(self) -> str | None:
        return charset_of(self.headers.get("Content-Type"))

    def text(self, default: str = "utf-8") -> str:
        """The body decoded by its charset (``default`` when it names none), BOM removed."""
        return decode(self.body, self.charset or default)

    def json(self) -> Any:
        """The body as JSON: decoded by its charset if it names one, else UTF-8 (RFC 8259)."""
        document: str | bytes = self.text() if self.charset else self.body
        try:
            return parse_json_document(document, self.where)
        except SourceError:
            raise SourceError(f"{self.where}: answer is not JSON ({len(self.body)} bytes)") from None


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type value, lower-cased, or None."""
    if not content_type:
        return None
    message = email.message.Message()
    message["Content-Type"] = content_type
    charset = message.get_content_charset()
    return str(charset) if charset else None


def decode(body: bytes, charset: str) -> str:
    """Bytes as text in ``charset`` (UTF-8 when Python knows no such codec); a byte-order
    mark is dropped, undecodable bytes become U+FFFD."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        name = "utf-8"
    if name == "utf-8":
        name = "utf-8-sig"
    text = body.decode(name, "replace")
    return text[1:] if text.startswith("\ufeff") else text


def fetch(session: requests.Session, method: str, url: str, *, timeout: float, max_bytes: int,
          where: str | None = None, accept_status: Iterable[int] = (), **kwargs: Any) -> Answer:
    """Send a request and read its whole answer within ``timeout`` seconds and ``max_bytes``
    bytes; SourceError with a clear, secret-free message on any failure or error status
    (other than those in ``accept_status``, such as 304)."""
    where = where or safe_url(url)
    deadline = Deadline(timeout)
    with deadline:
        response = _send(session, method, url, deadline, where, **kwargs)
        with response:
            status = response.status_code
            if status >= 400 and status not in accept_status:
                body = _read(response, min(max_bytes, ERROR_BODY_LIMIT), where, deadline, error_body=True)
                _raise_for_status(response, body, where)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes and not response.headers.get("Content-Encoding"):
                raise SourceError(f"{where}: answer larger than max_bytes ({max_bytes}): {length} bytes announced")
            body = _read(response, max_bytes, where, deadline)
            return Answer(status, response.headers, body, where)


def get_json(session: requests.Session, url: str, *, timeout: float, max_bytes: int, **kwargs: Any) -> Any:
    """GET a JSON document; SourceError on any failure or a body that is not JSON."""
    return fetch(session, "GET", url, timeout=timeout, max_bytes=max_bytes, **kwargs).json()


def _send(session: requests.Session, method: str, url: str, deadline: Deadline, where: str,
          **kwargs: Any) -> requests.Response:
    timeout = deadline.seconds
    try:
        left = max(deadline.remaining(), 0.001)
        return session.request(method, url, timeout=(left, left), stream=True, **kwargs)
    except _DeadlineExceeded:
        raise SourceError(f"{where}: no answer within {timeout:g}s") from None
    except _TooLongRetryAfter as exc:
        raise SourceError(f"{where}: rate limited (429), the origin asks to retry after {exc.seconds:.0f}s") from None
    except requests.exceptions.RetryError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        raise SourceError(f"{where}: gave up after retries ({_short(reason) or 'too many errors'})") from None
    except requests.exceptions.Timeout:
        raise SourceError(f"{where}: no answer within {timeout:g}s") from None
    except requests.exceptions.SSLError:
        if deadline.expired:
            raise SourceError(f"{where}: no answer within {timeout:g}s") from None
        raise SourceError(f"{where}: TLS error (certificate not trusted or handshake failed)") from None
    except requests.exceptions.ConnectionError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, ReadTimeoutError) or deadline.expired:
            raise SourceError(f"{where}: no answer within {timeout:g}s") from None
        raise SourceError(f"{where}: cannot connect ({_short(reason or exc)})") from None
    except requests.exceptions.RequestException as exc:
        if deadline.expired:
            raise SourceError(f"{where}: no answer within {timeout:g}s") from None
        raise SourceError(f"{where}: request failed ({type(exc).__name__})") from None


def _raise_for_status(response: requests.Response, body: bytes, where: str) -> None:
    status = response.status_code
    if status in (401, 403):
        raise SourceError(f"{where}: authentication failed (HTTP {status}); check the credentials")
    if status == 429:
        after = response.headers.get("Retry-After", "?")
        raise SourceError(f"{where}: rate limited (429), retry after {after}s")
    detail = _error_detail(body, response.headers.get("Content-Type")) if status < 500 else ""
    raise SourceError(f"{where}: HTTP {status}" + (f": {detail}" if detail else ""))


def _error_detail(body: bytes, content_type: str | None) -> str:
    """The origin's own first error line from a JSON error body (Jira's errorMessages,
    Zendesk's description), so that a bad query says what is wrong with it. It may echo
    what was sent: the poller redacts it before it is stored or shown."""
    try:
        document = parse_json_document(decode(body, charset_of(content_type) or "utf-8"), "error")
    except SourceError:
        return ""
    if not isinstance(document, dict):
        return ""
    for key in ("errorMessages", "errors", "description", "error", "message", "detail"):
        value = document.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        elif isinstance(value, dict) and value:
            value = next(iter(value.values()))
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:200]
    return ""


def _read(response: requests.Response, limit: int, where: str, deadline: Deadline, *, error_body: bool = False) -> bytes:
    """The body, decoded (Content-Encoding) as it streams and counted after decoding: at most
    ``limit`` bytes, else SourceError (an error answer's body is just cut there); SourceError
    too when it breaks off or the deadline passes."""
    chunks: list[bytes] = []
    size = 0
    timeout = deadline.seconds
    try:
        for chunk in response.iter_content(chunk_size=min(CHUNK, limit + 1)):
            size += len(chunk)
            if size > limit:
                if error_body:
                    chunks.append(chunk[: len(chunk) - (size - limit)])
                    break
                raise SourceError(f"{where}: answer larger than max_bytes ({limit})")
            chunks.append(chunk)
            if deadline.expired:
                raise SourceError(f"{where}: no complete answer within {timeout:g}s ({size} bytes received)")
    except (requests.exceptions.RequestException, OSError) as exc:
        if deadline.expired:
            raise SourceError(f"{where}: no complete answer within {timeout:g}s ({size} bytes received)") from None
        if error_body:
            return b"".join(chunks)
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            encoding = response.headers.get("Content-Encoding", "?")
            raise SourceError(f"{where}: cannot decode the answer (Content-Encoding {encoding}) after {size} bytes") from None
        if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ConnectionError)):
            raise SourceError(f"{where}: body not received within {timeout:g}s (after {size} bytes)") from None
        reason = re.search(r"IncompleteRead\([^)]*\)", str(exc))
        detail = reason.group() if reason else type(exc).__name__
        raise SourceError(f"{where}: the answer broke off after {size} bytes ({detail})") from None
    if deadline.fired:  # the watchdog closed the socket: what looked like the end was not
        raise SourceError(f"{where}: no complete answer within {timeout:g}s ({size} bytes received)")
    return b"".join(chunks)


def _short(exc: object) -> str:
    """The reason in an exception (``Connection refused``), without URLs or object reprs."""
    text = str(exc).splitlines()[0] if exc else ""
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    text = re.sub(r"<[^>]*>", "", text.split("?")[0])
    return text[:160]
