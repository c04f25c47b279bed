"""HTTP for network sources: one session with retries, and errors that are safe to show.

Retries and Retry-After come from urllib3's ``Retry`` (not hand-written): connection
errors and 5xx are retried with backoff; a 429 is retried after the origin's Retry-After
when that is short, and otherwise reported so that the scheduler's backoff takes over.
Messages name scheme, host and path only: query strings and credentials never reach a
log or the status page.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from icsfeed.sources.base import SourceError

#: longest Retry-After (seconds) a poll waits out itself
MAX_RETRY_AFTER = 30.0
USER_AGENT = "icsfeed (+calendar feeds of operational events)"


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

    timeout: float = Field(default=30.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)
    verify_tls: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    auth: HttpAuth | None = None


class _Retry(Retry):
    """urllib3 Retry that gives up on a 429 whose Retry-After is too long to wait in a poll."""

    def increment(self, method: Any = None, url: Any = None, response: Any = None, error: Any = None,
                  _pool: Any = None, _stacktrace: Any = None) -> Retry:
        if response is not None and response.status == 429:
            retry_after = self.get_retry_after(response)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                raise _TooLongRetryAfter(retry_after)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class _TooLongRetryAfter(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def make_session(settings: HttpSettings) -> requests.Session:
    """A session with retries on connection errors, 5xx and short 429s."""
    session = requests.Session()
    retry = _Retry(
        total=settings.retries, connect=settings.retries, read=settings.retries,
        status=settings.retries, backoff_factor=0.5, backoff_max=10,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD", "POST"}),
        respect_retry_after_header=True, raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
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


def request(session: requests.Session, method: str, url: str, *, timeout: float,
            **kwargs: Any) -> requests.Response:
    """Send a request; raise SourceError with a clear, secret-free message on any failure."""
    where = safe_url(url)
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except _TooLongRetryAfter as exc:
        raise SourceError(f"{where}: rate limited (429), the origin asks to retry after {exc.seconds:.0f}s") from None
    except requests.exceptions.RetryError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        raise SourceError(f"{where}: gave up after retries ({_short(reason) or 'too many errors'})") from None
    except requests.exceptions.Timeout:
        raise SourceError(f"{where}: no answer within {timeout:g}s") from None
    except requests.exceptions.SSLError:
        raise SourceError(f"{where}: TLS error (certificate not trusted or handshake failed)") from None
    except requests.exceptions.ConnectionError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, ReadTimeoutError):
            raise SourceError(f"{where}: no answer within {timeout:g}s") from None
        raise SourceError(f"{where}: cannot connect ({_short(reason or exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise SourceError(f"{where}: request failed ({type(exc).__name__})") from None
    if response.status_code in (401, 403):
        raise SourceError(f"{where}: authentication failed (HTTP {response.status_code}); check the credentials")
    if response.status_code == 429:
        after = response.headers.get("Retry-After", "?")
        raise SourceError(f"{where}: rate limited (429), retry after {after}s")
    if response.status_code >= 400:
        detail = _error_detail(response) if response.status_code < 500 else ""
        raise SourceError(f"{where}: HTTP {response.status_code}" + (f": {detail}" if detail else ""))
    return response


def _error_detail(response: requests.Response) -> str:
    """The origin's own first error line from a JSON error body (Jira's errorMessages,
    Zendesk's description), so that a bad query says what is wrong with it."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    for key in ("errorMessages", "errors", "description", "error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        elif isinstance(value, dict) and value:
            value = next(iter(value.values()))
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:200]
    return ""


def get_json(session: requests.Session, url: str, *, timeout: float, **kwargs: Any) -> Any:
    """GET a JSON document; raise SourceError on any failure or a body that is not JSON."""
    response = request(session, "GET", url, timeout=timeout, **kwargs)
    try:
        return response.json()
    except ValueError:
        raise SourceError(f"{safe_url(url)}: answer is not JSON ({len(response.content)} bytes)") from None


def read_body(response: requests.Response, limit: int, where: str, timeout: float) -> bytes:
    """The body of a streamed response, at most ``limit`` bytes; SourceError when it is larger,
    breaks off (the connection closed before Content-Length or the last chunk) or stalls."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=64 * 1024):
            size += len(chunk)
            if size > limit:
                raise SourceError(f"{where}: answer larger than max_bytes ({limit})")
            chunks.append(chunk)
    except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
        raise SourceError(f"{where}: body not received within {timeout:g}s (after {size} bytes)") from None
    except requests.exceptions.RequestException as exc:  # ChunkedEncodingError: IncompleteRead and the like
        reason = re.search(r"IncompleteRead\([^)]*\)", str(exc))
        detail = reason.group() if reason else type(exc).__name__
        raise SourceError(f"{where}: the answer broke off after {size} bytes ({detail})") from None
    return b"".join(chunks)


def _short(exc: object) -> str:
    """The reason in an exception (``Connection refused``), without URLs or object reprs."""
    text = str(exc).splitlines()[0] if exc else ""
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    text = re.sub(r"<[^>]*>", "", text.split("?")[0])
    return text[:160]
