"""Feed endpoints: stored bytes, conditional GET, gzip, and one 404 for every refusal."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, Response, request
from werkzeug.http import is_resource_modified

from icsfeed.render import build_feed
from icsfeed.routing import FeedType, find_feed
from icsfeed.store import StoreError
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
    if kinds_arg:  # a filtered variant: joined from stored fragments now
        kinds = {k.strip() for k in kinds_arg.split(",") if k.strip()}
        built = build_feed(config, ctx.store, spec, datetime.now(timezone.utc), kinds=kinds)
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
    stored = ctx.store.get_feed(spec.feed_id, gz=gz)
    if stored is None:
        return not_found()
    body = stored.body_gz if gz else stored.body
    return _respond(body, stored.etag, datetime.fromtimestamp(stored.last_modified, timezone.utc), gz=gz)


def _respond(body: bytes, etag: str, last_modified: datetime | None, *, gz: bool, status: int = 200) -> Response:
    ctx = context()
    response = Response(body if request.method != "HEAD" or status == 304 else b"", status=status, content_type=CALENDAR)
    if request.method == "HEAD" and status == 200:
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
