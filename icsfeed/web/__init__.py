"""The web layer (Flask app factory). It only reads what render produced."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response

from icsfeed.live import LiveConfig
from icsfeed.store import Store


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
    try:  # pages for people (subscribe, month view, status) when present
        from icsfeed.web import pages
    except ImportError:
        pages = None  # type: ignore[assignment]
    if pages is not None:
        pages.init_app(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # feed URLs carry tokens
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    return app


def context() -> WebContext:
    from flask import current_app

    return current_app.extensions["icsfeed"]  # type: ignore[no-any-return]
