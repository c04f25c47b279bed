"""Feed endpoints: stored bytes, conditional GET, gzip, and one 404 for every refusal.

Feed requests are nearly all the traffic (every subscribed calendar asks hourly, most of
them for a 304), so ``FeedRequests`` answers GET and HEAD of ``/feeds/<id>.ics`` and
``/teams/<id>.ics`` as a small WSGI layer in front of Flask: the answer depends only on the
token, the stored ETag and the request's conditional headers, and Flask's request cycle
cost several times the rest. Everything else (other methods, pages, /healthz) goes to Flask.
A filtered variant (``?kinds=``, ``status=open``, ``min_severity=``) is cut from the feed's
stored body (``FilteredVariants``): no request renders or joins events.

While the database is away (web/outage.py), a feed this process holds is answered from
memory, 304s included (stale-if-error); anything else that needs the database gets 503 with
``Retry-After``, pages too, never a 500; ``/healthz`` says "degraded" (with a 200: see
docs/SCALING.md for why a load balancer should keep such a process).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import http_date, is_resource_modified, parse_accept_header, quote_etag

from icsfeed.feed_filters import FeedFilter, FilterError, parse_filter, select_parts
from icsfeed.routing import FeedType, find_feed
from icsfeed.store import StoreError
from icsfeed.tokens import check_token
from icsfeed.web import SECURITY_HEADERS, WebContext, context
from icsfeed.web.feed_cache import BodyCache, FeedMetaCache
from icsfeed.web.outage import DatabaseGate
from icsfeed.web.subscribers import init_app as init_subscribers

log = logging.getLogger(__name__)

bp = Blueprint("feeds", __name__)

NOT_FOUND = b"Not found\n"
CALENDAR = "text/calendar; charset=utf-8"
_FEED_PATH = re.compile(r"/(feeds|teams)/([^/]+)\.ics")
#: metric labels, the names the routes had when Flask served them
_ENDPOINTS: dict[FeedType, str] = {"account": "feeds.account_feed", "team": "feeds.team_feed"}
#: what the store raises when the database cannot be reached (StoreError where it wraps them)
DB_ERRORS = (StoreError, SQLAlchemyError)
#: Retry-After of a 503 while the database is away (most outages are a restart)
RETRY_AFTER_SECONDS = 10
UNAVAILABLE = b"The database is unreachable; try again in a minute.\n"


def not_found() -> Response:
    """The 404 of a refused page: the very bytes of a refused feed (see NOT_FOUND_ANSWER)."""
    return Response(NOT_FOUND, status=404, mimetype="text/plain")


@bp.route("/healthz")
def healthz() -> Response:
    """"ok", or (still 200) "degraded" while the database is unreachable: the process then
    serves the feeds it holds, and so does every other web process of a shared database --
    taking them all out of a load balancer would turn those answers into 502s."""
    ctx = context()
    try:
        ctx.store.ping()
    except Exception as exc:  # why goes to the log (the gate's), not to anyone who asks
        _log_unavailable(ctx.store.engine, "/healthz", exc)
        feeds: FeedRequests | None = current_app.extensions.get("icsfeed_feed_requests")
        held = feeds.bodies.feeds() if feeds is not None else 0
        return Response(f"degraded: database unreachable; serving the {held} feed(s) this process holds, "
                        "503 for the rest\n", mimetype="text/plain", headers={"Cache-Control": "no-store"})
    return Response("ok\n", mimetype="text/plain")


@bp.app_errorhandler(StoreError)
@bp.app_errorhandler(SQLAlchemyError)
def database_unavailable(error: Exception) -> Response:
    """A page that needs the database while it is away: 503, not 500."""
    _log_unavailable(context().store.engine, f"{request.method} {request.path}", error)
    return Response(UNAVAILABLE, status=503, mimetype="text/plain", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@bp.after_app_request
def retry_after(response: Response) -> Response:
    """Every 503 says when to come back (pages that answer 503 themselves included)."""
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response


def _log_unavailable(engine: Any, what: str, error: BaseException) -> None:
    """Once per outage is enough (the gate logs when it starts and ends); an error while the
    database is reachable is logged each time."""
    level = logging.DEBUG if DatabaseGate.on(engine).down else logging.WARNING
    log.log(level, "%s: database unavailable: %s", what, _first_line(error))


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]


@dataclass(frozen=True)
class FeedAnswer:
    """Status, headers and body of one feed request (the body is empty for HEAD and 304)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _plain(status: int, text: bytes, *extra: tuple[str, str]) -> FeedAnswer:
    return FeedAnswer(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text))),
                               *extra], text)


#: the same bytes for an unknown feed and a wrong token, so neither can be told apart
NOT_FOUND_ANSWER = _plain(404, NOT_FOUND)
UNAVAILABLE_ANSWER = _plain(503, UNAVAILABLE, ("Retry-After", str(RETRY_AFTER_SECONDS)))


class FeedRequests:
    """The WSGI layer that answers feed GET/HEAD requests; anything else goes to ``app``."""

    def __init__(self, flask_app: Flask, app: Callable[..., Iterable[bytes]]) -> None:
        self.flask_app = flask_app
        self.app = app
        self._ctx: WebContext = flask_app.extensions["icsfeed"]
        self.meta = FeedMetaCache(self._ctx.store)
        self.bodies = BodyCache()
        self._gzip_lock = threading.Lock()
        self.variants = FilteredVariants(self)
        self.gate = DatabaseGate.on(self._ctx.store.engine)  # fail fast while the database is away
        self.subscribers = init_subscribers(flask_app, self._ctx.store)  # who fetches: tallied, written in batches
        flask_app.extensions["icsfeed_feed_requests"] = self

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = _FEED_PATH.fullmatch(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD")
        if match is None or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        feed_type: FeedType = "account" if match.group(1) == "feeds" else "team"
        try:
            answer = self.answer(feed_type, match.group(2), environ)
        except DB_ERRORS as exc:  # a filtered variant, say: it needs the database
            _log_unavailable(self._ctx.store.engine, "feed request", exc)
            answer = UNAVAILABLE_ANSWER
        except Exception:  # as Flask would: logged, a 500, the process goes on
            log.exception("feed request failed")
            answer = _plain(500, b"Internal server error\n")
        metrics = self.flask_app.extensions.get("icsfeed_metrics")
        if metrics is not None:
            metrics.count_request(_ENDPOINTS[feed_type], answer.status)
        self.subscribers.record(f"{feed_type}/{match.group(2)}", environ.get("HTTP_USER_AGENT"), answer.status)
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", [*answer.headers, *SECURITY_HEADERS])
        if method == "HEAD" or not answer.body:
            return [b""]
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and len(answer.body) > 64 * 1024:
            # handed to the server as a file: waitress then sends it without copying it into
            # its output buffer (which spills anything over 1 MB to a temporary file)
            return wrapper(io.BytesIO(answer.body), 256 * 1024)  # type: ignore[no-any-return]
        return [answer.body]

    def answer(self, feed_type: FeedType, feed_id: str, environ: dict[str, Any]) -> FeedAnswer:
        ctx = self._ctx
        config = ctx.live.current()
        args = _query(environ.get("QUERY_STRING", ""))
        spec = find_feed(config, feed_type, feed_id)
        version = spec.token_version if spec else 1
        if not check_token(ctx.secret, spec.feed_id if spec else None, version, args.get("token")):
            return NOT_FOUND_ANSWER
        assert spec is not None
        refresh = int(config.feeds.refresh_interval.total_seconds())

        gz = _accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING"))
        try:  # after the token: a refused feed answers the same 404 whatever its parameters
            chosen = parse_filter(args, config.kinds)
        except FilterError as exc:
            return _plain(400, f"{exc}\n".encode())
        if chosen is not None:
            return self.variants.answer(spec.feed_id, chosen, environ, gz=gz, refresh=refresh)

        try:
            meta = self.meta.get(spec.feed_id)
        except DB_ERRORS:
            return self._from_memory(spec.feed_id, environ, gz=gz, refresh=refresh)
        if meta is None:
            return _plain(503, b"This feed is being prepared; try again in a minute.\n", ("Retry-After", "30"))
        etag, last_modified = meta.etag, meta.last_modified
        modified = datetime.fromtimestamp(last_modified, timezone.utc)
        if not is_resource_modified(environ, etag=etag + ("-gz" if gz else ""), last_modified=modified):
            return _feed_answer(b"", etag, last_modified, gz=gz, refresh=refresh, status=304)
        body = self.bodies.get((spec.feed_id, etag, gz))
        if body is None:
            try:
                stored = ctx.store.get_feed(spec.feed_id)
            except DB_ERRORS:
                return self._from_memory(spec.feed_id, environ, gz=gz, refresh=refresh)
            if stored is None:
                return NOT_FOUND_ANSWER
            etag, last_modified = stored.etag, stored.last_modified  # maybe re-rendered since: the newer one
            self.bodies.put((spec.feed_id, etag, False), stored.body)
            body = self._gzipped(spec.feed_id, etag, stored.body) if gz else stored.body
        return _feed_answer(body, etag, last_modified, gz=gz, refresh=refresh)

    def _from_memory(self, feed_id: str, environ: dict[str, Any], *, gz: bool, refresh: int) -> FeedAnswer:
        """The database is unreachable: the last render of the feed this process holds
        (stale-if-error: a calendar is better served an hour-old feed than an error), with
        its ETag, so conditional requests still get 304s; 503 if it holds none."""
        last = self.meta.last(feed_id)
        held = self.bodies.held(feed_id, last.etag if last is not None else None)
        if held is None:
            return UNAVAILABLE_ANSWER
        etag, plain, packed = held
        last_modified = last.last_modified if last is not None and last.etag == etag else None
        modified = datetime.fromtimestamp(last_modified, timezone.utc) if last_modified is not None else None
        if not is_resource_modified(environ, etag=etag + ("-gz" if gz else ""), last_modified=modified):
            return _feed_answer(b"", etag, last_modified, gz=gz, refresh=refresh, status=304)
        if gz:
            body = packed if packed is not None else self._gzipped(feed_id, etag, plain or b"")
        else:
            body = plain if plain is not None else gzip.decompress(packed or b"")
        return _feed_answer(body, etag, last_modified, gz=gz, refresh=refresh)

    def _gzipped(self, feed_id: str, etag: str, body: bytes) -> bytes:
        """The gzip body of a rendered feed, made on the first request for its ETag.

        Render does not compress: a feed is re-rendered on every change but fetched by its
        subscribers about hourly, so compressing on demand (once per ETag and process, one
        at a time) costs far less than compressing every render.
        """
        key = (feed_id, etag, True)
        with self._gzip_lock:
            gz_body = self.bodies.get(key)
            if gz_body is None:
                gz_body = gzip.compress(body, compresslevel=6, mtime=0)
                self.bodies.put(key, gz_body)
        return gz_body


class FilteredVariants:
    """Filtered variants (``?kinds=``, ``status=open``, ``min_severity=``) of stored feeds.

    A variant is cut from the feed's stored body, which render fitted to its size budget:
    the VEVENTs that pass the filter, found with the list of parts render saved for that
    body (icsfeed.budget). Nothing is rendered or joined from the events table here, and a
    variant is never larger than its feed. Its ETag is a hash of the feed's ETag and the
    filter, so it changes exactly when the feed's bytes do and 304s work per variant.
    """

    def __init__(self, feeds: FeedRequests) -> None:
        self.feeds = feeds
        self._parts: dict[str, tuple[str, dict[str, Any]]] = {}

    def answer(self, feed_id: str, chosen: FeedFilter, environ: dict[str, Any], *, gz: bool,
               refresh: int) -> FeedAnswer:
        feeds = self.feeds
        variant = f"{feed_id}?{chosen.canonical}"  # the body cache's key for it
        try:
            meta = feeds.meta.get(feed_id)
        except DB_ERRORS:  # stale-if-error: the variant this process last served, if it holds it
            return self._from_memory(feed_id, variant, chosen, environ, gz=gz, refresh=refresh)
        if meta is None:
            return _plain(503, b"This feed is being prepared; try again in a minute.\n", ("Retry-After", "30"))
        etag = chosen.etag(meta.etag)
        modified = datetime.fromtimestamp(meta.last_modified, timezone.utc)
        if not is_resource_modified(environ, etag=etag + ("-gz" if gz else ""), last_modified=modified):
            return _feed_answer(b"", etag, meta.last_modified, gz=gz, refresh=refresh, status=304)
        body = feeds.bodies.get((variant, etag, gz))
        if body is None:
            try:
                cut = self._cut(feed_id, meta.etag, chosen)
            except DB_ERRORS:
                return self._from_memory(feed_id, variant, chosen, environ, gz=gz, refresh=refresh)
            if cut is None:
                return _plain(503, b"This feed is being prepared; try again in a minute.\n", ("Retry-After", "30"))
            etag, plain = cut
            feeds.bodies.put((variant, etag, False), plain)
            body = feeds._gzipped(variant, etag, plain) if gz else plain
        return _feed_answer(body, etag, meta.last_modified, gz=gz, refresh=refresh)

    def _cut(self, feed_id: str, feed_etag: str, chosen: FeedFilter) -> tuple[str, bytes] | None:
        """(variant ETag, bytes) from the feed's stored body and its parts; None while the
        stored body has no parts yet (rendered by an icsfeed before them: the next render)."""
        store = self.feeds._ctx.store
        plain = self.feeds.bodies.get((feed_id, feed_etag, False))
        if plain is None:
            stored = store.get_feed(feed_id)
            if stored is None:
                return None
            feed_etag, plain = stored.etag, stored.body  # maybe re-rendered since: the newer one
            self.feeds.bodies.put((feed_id, feed_etag, False), plain)
        held = self._parts.get(feed_id)
        if held is not None and held[0] == feed_etag:
            parts = held[1]
        else:
            found = store.feed_parts(feed_id, feed_etag)
            if found is None:
                return None
            parts = found.parts
            if len(self._parts) > 10_000:  # bounded: ids come from the config, but be safe
                self._parts.clear()
            self._parts[feed_id] = (feed_etag, parts)
        try:
            body, _count = select_parts(plain, parts, chosen)
        except (ValueError, KeyError, TypeError):  # not this body's: wait for the next render
            log.warning("the stored parts of %s do not fit its body; its variants wait for a render", feed_id)
            return None
        return chosen.etag(feed_etag), body

    def _from_memory(self, feed_id: str, variant: str, chosen: FeedFilter, environ: dict[str, Any], *,
                     gz: bool, refresh: int) -> FeedAnswer:
        last = self.feeds.meta.last(feed_id)
        held = self.feeds.bodies.held(variant, chosen.etag(last.etag) if last is not None else None)
        if held is None or held[1] is None:
            return UNAVAILABLE_ANSWER
        etag, plain, packed = held
        if not is_resource_modified(environ, etag=etag + ("-gz" if gz else "")):
            return _feed_answer(b"", etag, None, gz=gz, refresh=refresh, status=304)
        body = (packed if packed is not None else self.feeds._gzipped(variant, etag, plain)) if gz else plain
        return _feed_answer(body, etag, None, gz=gz, refresh=refresh)


def _query(query_string: str) -> dict[str, str]:
    """The first value of each query argument (as Flask's ``request.args.get``)."""
    args: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        args.setdefault(name, value)
    return args


@lru_cache(maxsize=256)
def _accepts_gzip(accept_encoding: str | None) -> bool:
    return "gzip" in parse_accept_header(accept_encoding)


def _feed_answer(body: bytes, etag: str, last_modified: float | None, *, gz: bool, refresh: int,
                 status: int = 200) -> FeedAnswer:
    headers = [("ETag", quote_etag(etag + ("-gz" if gz else ""))),
               ("Cache-Control", f"private, max-age={min(refresh, 900)}"),
               ("Vary", "Accept-Encoding"),
               ("Content-Disposition", "inline; filename=calendar.ics")]
    if status == 304:  # no entity headers on a 304, as werkzeug does
        return FeedAnswer(304, headers, b"")
    headers += [("Content-Type", CALENDAR), ("Content-Length", str(len(body)))]
    if last_modified is not None:
        headers.append(("Last-Modified", _http_date(last_modified)))
    if gz:
        headers.append(("Content-Encoding", "gzip"))
    return FeedAnswer(status, headers, body)


@lru_cache(maxsize=1024)
def _http_date(timestamp: float) -> str:
    return http_date(datetime.fromtimestamp(timestamp, timezone.utc))
