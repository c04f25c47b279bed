"""Pages for people: the subscribe page, the customer's month view, the status page, metrics.

The month view is protected by the feed's own token (same 404 as the feed for an unknown id
or a wrong token); the other pages are admin pages (see :mod:`icsfeed.web.admin`). Pages are
server-rendered with Jinja (autoescaped: titles are written by customers) and sent with a
Content-Security-Policy that allows no inline script or style, so the little JavaScript and
CSS there is live in ``static/``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, Response, render_template, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from icsfeed import __version__
from icsfeed.config import CSS_COLORS, Config
from icsfeed.feed_filters import LEVEL_NAMES, FilterError, parse_filter
from icsfeed.live import LiveConfig
from icsfeed.metrics import Metrics
from icsfeed.routing import FeedSpec, FeedType, all_feeds, find_feed, subscription_url
from icsfeed.store import FeedQuery, Store, StoreError
from icsfeed.tokens import check_token, feed_token
from icsfeed.web import context
from icsfeed.web.admin import admin_auth, admin_required
from icsfeed.web.feeds import not_found
from icsfeed.web.month import BadMonth, build_month, grid_range, parse_month, plural
from icsfeed.web.status import When, budget_words, build_status
from icsfeed.web.subscribers import ClientFetches, fetches_by_feed, summary_sentence, tally_of

bp = Blueprint("pages", __name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
#: Google Calendar refuses subscription URLs longer than this
GOOGLE_MAX_URL = 256
METRICS_PUBLIC_ENV = "ICSFEED_METRICS_PUBLIC"
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_KIND_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEX = re.compile(r"^#[0-9A-Fa-f]{3,8}$")


def _config() -> Config:
    return context().live.current()


admin = admin_required(_config)


# --- subscribe -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Subscription:
    """Every way to add one feed to a calendar."""

    spec: FeedSpec
    url: str
    webcal: str
    google: str
    outlook: str
    office: str
    view: str

    @property
    def too_long(self) -> bool:
        return max(len(self.url), len(self.webcal)) > GOOGLE_MAX_URL

    @property
    def length(self) -> int:
        return max(len(self.url), len(self.webcal))


def subscription(config: Config, secret: bytes, spec: FeedSpec, filters: str = "") -> Subscription:
    """``filters``: a filtered variant's parameters (FeedFilter.canonical), appended to the URL."""
    url = subscription_url(config, secret, spec) + (f"&{filters}" if filters else "")
    webcal = re.sub(r"^https?://", "webcal://", url)
    enc_url, enc_name = quote(url, safe=""), quote(spec.name, safe="")
    token = feed_token(secret, spec.feed_id, spec.token_version)
    if spec.type == "account":
        view = url_for("pages.account_view", account=spec.id, token=token)
    else:
        view = url_for("pages.team_view", team=spec.id, token=token)
    return Subscription(
        spec=spec, url=url, webcal=webcal,
        google="https://calendar.google.com/calendar/r?cid=" + quote(webcal, safe=""),
        outlook=f"https://outlook.live.com/calendar/0/addfromweb?url={enc_url}&name={enc_name}",
        office=f"https://outlook.office.com/calendar/0/addfromweb?url={enc_url}&name={enc_name}",
        view=view)


def reachability_warning(config: Config) -> str | None:
    """Google and Outlook fetch feeds from their own servers: a local or plain-http URL fails."""
    parts = urlsplit(config.server.base_url)
    host = parts.hostname or ""
    try:
        private = not ip_address(host).is_global
    except ValueError:
        private = host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan"))
    if private:
        return (f"server.base_url is {config.server.base_url}: Google Calendar and Outlook fetch feeds from "
                "their own servers and cannot reach it. Set it (ICSFEED_BASE_URL) to the public https address.")
    if parts.scheme != "https":
        return (f"server.base_url is {config.server.base_url}: Google Calendar and Outlook.com want https; "
                "feed tokens should not travel in clear text either.")
    return None


def _loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def reached_at_warning(config: Config) -> str | None:
    """This page was reached at another scheme or host than ``server.base_url`` names.

    Feed URLs are built from base_url alone, so a mismatch means they point elsewhere than
    where this browser reached icsfeed, or icsfeed does not see the proxy's https (the proxy
    is not in ``server.trusted_proxies``, so its X-Forwarded-Proto/-Host are not believed).
    """
    base = urlsplit(config.server.base_url)
    base_host, here = (base.hostname or "").lower(), (urlsplit(request.host_url).hostname or "").lower()
    same_host = base_host == here or (_loopback(base_host) and _loopback(here))
    if base.scheme == request.scheme and same_host:
        return None
    return (f"You reached this page at {request.scheme}://{request.host}, but feed URLs are built from "
            f"server.base_url ({config.server.base_url}). Behind a reverse proxy, list the proxy in "
            "server.trusted_proxies so that icsfeed sees the https address it is reached at; otherwise "
            "check that base_url is the address subscribers reach.")


@bp.route("/")
@admin
def subscribe() -> str:
    ctx = context()
    config = ctx.live.current()
    subs = [subscription(config, ctx.secret, spec) for spec in all_feeds(config)]
    refresh = config.feeds.refresh_interval
    who = _who_subscribes()
    now = time.time()
    return render_template("subscribe.html", subs=subs, warning=reachability_warning(config),
                           reached_at=reached_at_warning(config),
                           subscribers=None if who is None else {s.spec.feed_id: summary_sentence(who.get(s.spec.feed_id, []), now)
                                                                  for s in subs},
                           refresh=_human(refresh), google_max=GOOGLE_MAX_URL,
                           **_budget_and_filters(config, ctx.store, ctx.secret), **_admin_context(config))


@dataclass(frozen=True)
class FilteredSubscription:
    """The filtered URL an admin asked the subscribe page for (its filter form), or why not."""

    feed_id: str
    sub: Subscription | None
    error: str | None


def _budget_and_filters(config: Config, store: Store, secret: bytes) -> dict[str, object]:
    """What the subscribe page shows of the size budget (a warning next to a feed over it) and
    of filters (a form per feed; ``?feed=<feed id>&kinds=…&status=open&min_severity=…`` shows
    that feed's filtered URL)."""
    try:
        reports = store.feed_reports()
    except StoreError:
        reports = {}
    filtered = None
    feed_id = request.args.get("feed")
    spec = next((s for s in all_feeds(config) if s.feed_id == feed_id), None)
    if spec is not None:
        args = {"kinds": ",".join(request.args.getlist("kinds")), "status": request.args.get("status", ""),
                "min_severity": request.args.get("min_severity", "")}
        try:
            chosen = parse_filter(args, config.kinds)
            sub = subscription(config, secret, spec, chosen.canonical) if chosen is not None else None
            filtered = FilteredSubscription(spec.feed_id, sub, None if sub else "choose at least one filter")
        except FilterError as exc:
            filtered = FilteredSubscription(spec.feed_id, None, str(exc))
    return {"budgets": reports, "budget_words": budget_words, "filtered": filtered, "kind_names": list(config.kinds),
            "levels": [LEVEL_NAMES[r] for r in sorted(LEVEL_NAMES) if r > 0]}


def _who_subscribes() -> dict[str, list[ClientFetches]] | None:
    """feed id -> the clients that fetch it (stored plus this process's unwritten tally);
    None while the store cannot be read (the pages still show everything else)."""
    from flask import current_app

    try:
        return fetches_by_feed(context().store, tally_of(current_app))
    except StoreError:
        return None


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' if seconds != 86400 else ''}"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' if seconds != 3600 else ''}"
    return f"{seconds // 60} minutes"


def _admin_context(config: Config) -> dict[str, object]:
    return {"admin_page": True, "admin_logout": admin_auth(config).mode == "token"}


# --- month view --------------------------------------------------------------------------------

@bp.route("/view/<account>")
def account_view(account: str) -> Response | str:
    return _month_view("account", account)


@bp.route("/view/team/<team>")
def team_view(team: str) -> Response | str:
    return _month_view("team", team)


def _month_view(feed_type: FeedType, feed_id: str) -> Response | str:
    ctx = context()
    config = ctx.live.current()
    spec = find_feed(config, feed_type, feed_id)
    version = spec.token_version if spec else 1
    token = request.args.get("token")
    if not check_token(ctx.secret, spec.feed_id if spec else None, version, token):
        return not_found()
    assert spec is not None and token is not None
    tz_name = config.feeds.timezone
    if feed_type == "account":
        tz_name = config.accounts[feed_id].timezone or tz_name
    tz = ZoneInfo(tz_name)
    today = datetime.now(tz).date()
    try:
        year, month = parse_month(request.args.get("month"), today)
    except BadMonth as exc:
        return Response(f"{exc}\n", status=400, mimetype="text/plain")
    start_ts, end_ts = grid_range(year, month, tz)
    query = FeedQuery(start_ts - 86400, end_ts + 86400, spec.account_keys, spec.kinds, spec.min_severity)
    try:
        rows = ctx.store.query_events(query)
    except StoreError:
        return Response("The calendar is unavailable right now; try again in a minute.\n", status=503,
                        mimetype="text/plain")
    grid = build_month(rows, config.kinds, year, month, tz, tz_name, today=today, max_title=config.feeds.max_title)
    endpoint = "pages.account_view" if feed_type == "account" else "pages.team_view"
    args = {"account": spec.id} if feed_type == "account" else {"team": spec.id}

    def month_url(value: str | None) -> str:
        return url_for(endpoint, **args, token=token, **({"month": value} if value else {}))

    return render_template("month.html", spec=spec, grid=grid, weekdays=WEEKDAYS, month_url=month_url,
                           sub=subscription(config, ctx.secret, spec), plural=plural)


# --- status and metrics -------------------------------------------------------------------------

@bp.route("/status")
@admin
def status() -> str:
    ctx = context()
    config = ctx.live.current()
    try:
        page = build_status(ctx.live, ctx.store)
    except StoreError as exc:
        return render_template("status.html", page=None, store_error=str(exc), **_admin_context(config))
    return render_template("status.html", page=page, store_error=None, subscribers=_who_subscribes(),
                           when=lambda ts: When(ts, page.now.ts or time.time()), **_admin_context(config))


def metrics() -> Response:
    registry = _metrics_of_app().registry
    response = Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _metrics_of_app() -> Metrics:
    from flask import current_app

    return current_app.extensions["icsfeed_metrics"]  # type: ignore[no-any-return]


def metrics_public() -> bool:
    return os.environ.get(METRICS_PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes")


@bp.route("/metrics")
def metrics_endpoint() -> Response:
    if metrics_public():
        return metrics()
    return admin(metrics)()  # type: ignore[no-any-return]


@bp.route("/kinds.css")
def kinds_css() -> Response:
    """Each kind's colour, from config: CSP forbids style attributes, so it is a stylesheet."""
    lines = []
    for name, kind in _config().kinds.items():
        if not _KIND_NAME.match(name):
            continue
        colour = kind.color_hex if kind.color_hex and _HEX.match(kind.color_hex) else CSS_COLORS.get(kind.color, "#888888")
        lines.append(f'[data-kind="{name}"] {{ --kind-color: {colour}; }}')
    response = Response("\n".join(lines) + "\n", mimetype="text/css")
    response.cache_control.max_age = 300
    return response


# --- wiring ---------------------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Register the pages, the CSP header on HTML, and the request counter for /metrics."""
    def live_and_store() -> tuple[LiveConfig, Store]:
        ctx = app.extensions["icsfeed"]
        return ctx.live, ctx.store

    app.extensions["icsfeed_metrics"] = Metrics(live_and_store)
    app.register_blueprint(bp)
    app.jinja_env.globals["icsfeed_version"] = __version__

    @app.after_request
    def page_headers(response: Response) -> Response:
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("Cache-Control", "no-store")  # pages show feed tokens
        return response

    @app.after_request
    def count_request(response: Response) -> Response:
        _metrics_of_app().count_request(request.endpoint, response.status_code)
        return response
