"""Feed endpoints: stored bytes, conditional GET, gzip, and one 404 for every refusal."""

from __future__ import annotations

import gzip
import io
import threading
from collections import OrderedDict
from datetime import datetime, timezone

from flask import Blueprint, Response, request
from werkzeug.http import is_resource_modified

from icsfeed.render import build_feed
from icsfeed.routing import FeedType, find_feed
from icsfeed.store import StoredFeed, StoreError
from icsfeed.tokens import check_token
from icsfeed.web import context

bp = Blueprint("feeds", __name__)

NOT_FOUND = b"Not found\n"
CALENDAR = "text/calendar; charset=utf-8"


def not_found() -> Response:
    """The same bytes for an unknown feed and a wrong token, so neither can be told apart."""
    return Response(NOT_FOUND, status=404, mimetype="text/plain")


@bp.route("/feeds/<feed_id>.ics", methods=["GET", "HEAD"])
def account_feed(feed_id: str) -> Response:
    return _serve("account", feed_id)


@bp.route("/teams/<feed_id>.ics", methods=["GET", "HEAD"])
def team_feed(feed_id: str) -> Response:
    return _serve("team", feed_id)


@bp.route("/healthz")
def healthz() -> Response:
    ctx = context()
    try:
        ctx.store.ping()
    except Exception:
        return Response("database unavailable\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")


class BodyCache:
    """Feed bodies this process served lately, by (feed, ETag, gzip), at most ``max_bytes``.

    The web layer still depends on nothing in process: every request looks up the feed's
    current ETag in the store first, and a body is only taken from here when its ETag is
    that one. A re-render (new ETag) simply misses; several web processes each keep their
    own. What it saves is reading a megabyte blob out of the database per request.
    """

    def __init__(self, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, bool], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, bool]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: tuple[str, str, bool], body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return
        with self._lock:
            stale = [k for k in self._items if k[0] == key[0] and k[2] == key[2] and k != key]
            for k in stale:  # an older render of the same feed will never be asked for again
                self._size -= len(self._items.pop(k))
            if key not in self._items:
                self._items[key] = body
                self._size += len(body)
            while self._size > self.max_bytes and self._items:
                self._size -= len(self._items.popitem(last=False)[1])


_BODIES = BodyCache()


def _serve(feed_type: FeedType, feed_id: str) -> Response:
    ctx = context()
    config = ctx.live.current()
    spec = find_feed(config, feed_type, feed_id)
    version = spec.token_version if spec else 1
    if not check_token(ctx.secret, spec.feed_id if spec else None, version, request.args.get("token")):
        return not_found()
    assert spec is not None
    gz = "gzip" in request.accept_encodings

    kinds_arg = request.args.get("kinds")
    if kinds_arg:  # a filtered variant: joined from stored fragments now (nothing is written)
        kinds = {k.strip() for k in kinds_arg.split(",") if k.strip()}
        built = build_feed(config, ctx.store, spec, datetime.now(timezone.utc), kinds=kinds, save_fragments=False)
        return _respond(built.body, built.etag, None, gz=False)

    try:
        meta = ctx.store.get_feed(spec.feed_id, with_body=False)
    except StoreError:
        meta = None
    if meta is None:
        response = Response("This feed is being prepared; try again in a minute.\n", status=503, mimetype="text/plain")
        response.headers["Retry-After"] = "30"
        return response
    etag = meta.etag + ("-gz" if gz else "")
    last_modified = datetime.fromtimestamp(meta.last_modified, timezone.utc)
    if not is_resource_modified(request.environ, etag=etag, last_modified=last_modified):
        return _respond(b"", meta.etag, last_modified, gz=gz, status=304)
    body = _BODIES.get((spec.feed_id, meta.etag, gz))
    if body is None:
        stored = ctx.store.get_feed(spec.feed_id)
        if stored is None:
            return not_found()
        if stored.etag != meta.etag:  # re-rendered between the two lookups: serve the newer one
            meta, last_modified = stored, datetime.fromtimestamp(stored.last_modified, timezone.utc)
        body = _gzipped(spec.feed_id, stored) if gz else stored.body
        _BODIES.put((spec.feed_id, stored.etag, False), stored.body)
    return _respond(body, meta.etag, last_modified, gz=gz)


_GZIP_LOCK = threading.Lock()


def _gzipped(feed_id: str, stored: StoredFeed) -> bytes:
    """The gzip body of a rendered feed, made on the first request for its ETag.

    Render does not compress: a feed is re-rendered on every change but fetched by its
    subscribers about hourly, so compressing on demand (once per ETag and process, one at a
    time) costs far less than compressing every render.
    """
    key = (feed_id, stored.etag, True)
    with _GZIP_LOCK:
        body = _BODIES.get(key)
        if body is None:
            body = gzip.compress(stored.body, compresslevel=6, mtime=0)
            _BODIES.put(key, body)
    return body


def _respond(body: bytes, etag: str, last_modified: datetime | None, *, gz: bool, status: int = 200) -> Response:
    ctx = context()
    head = request.method == "HEAD"
    wrapper = request.environ.get("wsgi.file_wrapper")
    if status == 200 and not head and wrapper is not None and len(body) > 64 * 1024:
        # handed to the server as a file: waitress then sends it without copying it into its
        # output buffer (which spills anything over 1 MB to a temporary file)
        response = Response(wrapper(io.BytesIO(body), 256 * 1024), status=status, content_type=CALENDAR,
                            direct_passthrough=True)
        response.headers["Content-Length"] = str(len(body))
    else:
        response = Response(body if not head or status == 304 else b"", status=status, content_type=CALENDAR)
    if head and status == 200:
        response.headers["Content-Length"] = str(len(body))
    response.set_etag(etag + ("-gz" if gz else ""))
    if last_modified is not None:
        response.last_modified = last_modified
    refresh = int(ctx.live.current().feeds.refresh_interval.total_seconds())
    response.cache_control.private = True
    response.cache_control.max_age = min(refresh, 900)
    response.vary.add("Accept-Encoding")
    if gz and status == 200:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Content-Disposition"] = "inline; filename=calendar.ics"
    if status == 304:
        response.data = b""
        response.headers.pop("Content-Type", None)
    return response
