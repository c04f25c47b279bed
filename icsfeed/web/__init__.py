"""The web layer (Flask app factory). It only reads what render produced."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response

from icsfeed.live import LiveConfig
from icsfeed.store import Store

#: on every answer, pages and feeds alike
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # feed URLs carry tokens
    ("X-Frame-Options", "DENY"),
)


@dataclass
class WebContext:
    """What request handlers need; kept on ``app.extensions['icsfeed']``."""

    live: LiveConfig
    store: Store
    secret: bytes


def create_app(live: LiveConfig, store: Store, secret: bytes) -> Flask:
    app = Flask(__name__)
    app.extensions["icsfeed"] = WebContext(live=live, store=store, secret=secret)

    from icsfeed.web import feeds

    app.register_blueprint(feeds.bp)
    from icsfeed.web import admin, pages  # subscribe, month view, status; the admin login

    pages.init_app(app)
    app.register_blueprint(admin.bp)
    from icsfeed.web import hooks  # POST /hooks/alertmanager/<source>: pushed notifications

    app.register_blueprint(hooks.bp)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS:
            response.headers.setdefault(name, value)
        return response

    # feed GET/HEADs are answered in front of Flask (see icsfeed.web.feeds); in front of
    # both, forwarded headers are applied for trusted proxies and removed for anyone else
    from icsfeed.web.proxy import TrustedProxies

    app.wsgi_app = TrustedProxies(feeds.FeedRequests(app, app.wsgi_app), live)  # type: ignore[method-assign]
    return app


def context() -> WebContext:
    from flask import current_app

    return current_app.extensions["icsfeed"]  # type: ignore[no-any-return]
