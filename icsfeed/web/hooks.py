"""Pushed notifications: ``POST /hooks/alertmanager/<source id>`` (Alertmanager's webhook).

A hook is a source that is pushed instead of polled (DESIGN.md): a notification becomes the
same Events as a poll's records, under the same identities (fingerprint + startsAt), through
the same checks (:func:`icsfeed.poller._checked`: kinds, key length, ``Event.bounded``), and
is written in one transaction that marks the feeds it changes dirty. The web process never
renders: the scheduler's render job (``RENDER_EVERY_SECONDS``) serves the change.

A push is a partial write: it upserts the alerts it names and nothing else. It applies no
absence policy (a notification about one group says nothing about other alerts) and leaves
the source's poll state alone (``last_success`` stays the time of the last poll, which is
when a poll closes alerts that vanished). The poll's own rule does the rest: an alert that
resolved by its own ``endsAt`` before the poll keeps that end (store ``_closed``).

Refusals: an unknown source, one of another type, a disabled one, or one without
``webhook_token`` is 404
(the same answer); a missing or wrong bearer token 401 (compared in constant time); a body
over ``webhook_max_bytes`` 413, before it is read when Content-Length says so, else counted
as it is read (chunked); a body that is not a notification 400. One bad alert in a good
notification is logged and skipped. The token is a secret like any other (icsfeed.redact):
no answer or log line carries it.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from icsfeed.config import Config
from icsfeed.model import Event
from icsfeed.poller import _checked, build_source, source_secrets
from icsfeed.redact import redact
from icsfeed.routing import affected_feeds
from icsfeed.sources.alertmanager import AlertmanagerSettings, AlertmanagerSource, WebhookError
from icsfeed.store import PollChanges, Store, StoreError
from icsfeed.web import context

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__)

#: how many times a write that lost a race with a poll writing the same alert is retried
WRITE_ATTEMPTS = 3
#: how much of each skipped alert's reason the answer repeats
MAX_REASONS = 20


def _refusal(status: int, message: str, **headers: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time (also when absent)."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    same = hmac.compare_digest(given, token.encode("utf-8"))
    return same and scheme.lower() == "bearer"


def _read_body(limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (Content-Length is checked
    first; a chunked body is counted as it is read and never held beyond the limit)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


@bp.route("/hooks/alertmanager/<source_id>", methods=["POST"])
def alertmanager(source_id: str) -> Response:
    """Store one Alertmanager webhook notification (payload version 4)."""
    ctx = context()
    config = ctx.live.current()
    source_cfg = config.sources.get(source_id)
    settings = config.source_settings.get(source_id)
    if (source_cfg is None or source_cfg.type != AlertmanagerSource.type_name or not source_cfg.enabled
            or not isinstance(settings, AlertmanagerSettings) or settings.webhook_token is None):
        log.info("webhook for %r refused: no enabled alertmanager source of that id with a webhook_token",
                 source_id[:80])
        return _refusal(404, "no such hook")
    if not _authorized(request.headers.get("Authorization"), settings.webhook_token.get_secret_value()):
        log.warning("webhook for %s refused: missing or wrong bearer token", source_id)
        return _refusal(401, "a bearer token is required (http_config.authorization.credentials)",
                        WWW_Authenticate='Bearer realm="icsfeed hooks"')
    limit = settings.webhook_max_bytes
    body = _read_body(limit)
    if body is None:
        log.warning("webhook for %s refused: body over %d bytes", source_id, limit)
        return _refusal(413, f"body over {limit} bytes (webhook_max_bytes; lower max_alerts in Alertmanager)")
    secrets = source_secrets(config, source_id)
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError too
        return _refusal(400, f"the body is not JSON: {exc}"[:300])
    source = build_source(config, source_id)
    if not isinstance(source, AlertmanagerSource):  # the type check above makes it one
        return _refusal(404, "no such hook")
    now = datetime.now(UTC)
    try:
        events = _checked(config, source, source.webhook_events(payload, now))
    except WebhookError as exc:
        return _refusal(400, redact(str(exc), secrets))
    if isinstance(payload.get("truncatedAlerts"), int) and payload["truncatedAlerts"] > 0:
        log.warning("webhook for %s: Alertmanager left %d alert(s) out of the notification (max_alerts);"
                    " the next poll brings firing ones", source_id, payload["truncatedAlerts"])
    changes = _write(ctx.store, config, source_id, events, now.timestamp())
    for key, reason in changes.skipped:
        source.skip(key, reason)
    if changes.touched:
        try:
            ctx.store.mark_insights_due(t.account_key for t in changes.touched)
        except StoreError as exc:  # stored; the hourly refresh of all accounts catches up
            log.error("cannot mark insights after a webhook for %s: %s", source_id, exc)
    skipped = [redact(s, secrets)[:300] for s in source.skipped]
    log.info("webhook %s: %d alert(s), %d new, %d updated, %d unchanged, %d skipped", source_id,
             len(payload["alerts"]), changes.new, changes.updated, changes.unchanged, len(skipped))
    return jsonify({"alerts": len(payload["alerts"]), "stored": changes.new + changes.updated + changes.unchanged,
                    "new": changes.new, "updated": changes.updated, "unchanged": changes.unchanged,
                    "skipped": skipped[:MAX_REASONS]})


def _write(store: Store, config: Config, source_id: str, events: list[Event], now: float) -> PollChanges:
    """Upsert the events (partial: no absence policy, no poll state), feeds marked dirty in
    the same transaction. A poll inserting the same new alert at the same moment makes one of
    the two writes fail on the unique key: this one is retried (it then finds the row);
    a store that stays away raises StoreError, which the app answers with 503 (Alertmanager
    retries then)."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return store.apply_poll(source_id, events, absence="keep", complete=False, now=now,
                                    previous_success=None, affected=lambda touched: affected_feeds(config, touched),
                                    record=False)
        except StoreError:
            if attempt == WRITE_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
