"""What counting subscribers costs a feed request: the 304 path with and without the tally.

A calendar's hourly fetch is mostly a 304. The feed layer (icsfeed.web.feeds.FeedRequests)
answers it from memory; counting the fetch adds a dict update under a lock (and a cached
User-Agent lookup) on the request path, and the writes happen on a background thread. Both
variants run in one process, in many short alternating rounds (the machine is shared: the
best round of each is the least disturbed), over the same WSGI app with a real SQLite store;
the figures and their ratio print side by side.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import best_of, line, make_env

from icsfeed.live import LiveConfig
from icsfeed.render import render_feeds
from icsfeed.tokens import feed_token
from icsfeed.web import create_app
from icsfeed.web.feeds import FeedRequests

REQUESTS = 2_000
ROUNDS = 30
AGENTS = ["Google-Calendar-Importer", "iOS/16.3.1 (20D67) dataaccessd/1.0",
          "Microsoft Exchange/15.20 (Windows NT 10.0; Win64; x64)", "Nextcloud Webcal Service"]


class _NoTally:
    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def run() -> dict[str, float]:
    env = make_env(["acme"])
    render_feeds(env.config, env.store)
    secret = b"bench-secret-key-0123456789abcdef"
    app = create_app(LiveConfig(env.config, check_every=3600), env.store, secret)
    layer: FeedRequests = app.extensions["icsfeed_feed_requests"]
    etag = env.store.get_feed("account/acme").etag  # type: ignore[union-attr]
    environs = [{"REQUEST_METHOD": "GET", "PATH_INFO": "/feeds/acme.ics", "REMOTE_ADDR": "127.0.0.1",
                 "QUERY_STRING": f"token={feed_token(secret, 'account/acme', 1)}", "HTTP_USER_AGENT": agent,
                 "HTTP_IF_NONE_MATCH": f'"{etag}"', "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                 "wsgi.url_scheme": "http"} for agent in AGENTS]
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    def run() -> None:
        for i in range(REQUESTS):
            app.wsgi_app(dict(environs[i % len(environs)]), start_response)

    tally = layer.subscribers
    run()  # warm the caches
    assert statuses[-1].startswith("304"), statuses[-1]
    with_tally, without = [], []
    for _ in range(ROUNDS):
        layer.subscribers = tally  # type: ignore[assignment]
        with_tally.append(best_of(1, run))
        layer.subscribers = _NoTally()  # type: ignore[assignment]
        without.append(best_of(1, run))
    layer.subscribers = tally
    tally.flush()
    counted = sum(c.fetches_304 for c in env.store.subscriber_counts())
    a, b = min(with_tally), min(without)
    print(f"304 answers through the feed layer, {REQUESTS} requests per round, best of {ROUNDS} rounds:")
    print(line("without counting subscribers", f"{REQUESTS / b:,.0f} req/s", f"{b / REQUESTS * 1e6:.1f} µs each"))
    print(line("with the subscriber tally", f"{REQUESTS / a:,.0f} req/s", f"{a / REQUESTS * 1e6:.1f} µs each"))
    print(line("ratio (with / without, time per request)", f"{a / b:.3f}x", f"+{(a - b) / REQUESTS * 1e6:.2f} µs"))
    print(line("304s the store counted (warm-up and counted rounds)", f"{counted:,}"))
    return {"subscribers_304_us_without": b / REQUESTS * 1e6, "subscribers_304_us_with": a / REQUESTS * 1e6,
            "subscribers_304_ratio": a / b}


if __name__ == "__main__":
    run()
