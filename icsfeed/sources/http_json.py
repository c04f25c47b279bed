"""``http_json``: events from a JSON API of an internal system (GET, mapped by config)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import Field

from icsfeed.model import Event
from icsfeed.sources.http import HttpSettings, fetch, make_session, safe_url
from icsfeed.sources.mapping import MappedSettings, MappedSource, records_in


class HttpJsonSettings(MappedSettings, HttpSettings):
    #: may contain ``{since}``: the time of the last successful poll, for incremental APIs
    url: str
    params: dict[str, str] = Field(default_factory=dict)
    items: str | None = None
    since_format: Literal["iso", "epoch", "epoch_ms"] = "iso"
    #: how far back the first poll (with no last success yet) asks for
    since_default_days: int = Field(default=90, ge=0)
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)


class HttpJsonSource(MappedSource):
    """One GET per poll. With ``{since}`` in the URL or params the poll is incremental:
    the answer holds what changed, and a missing record means nothing."""

    type_name = "http_json"
    Settings = HttpJsonSettings
    settings: HttpJsonSettings
    absence = "keep"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        s = self.settings
        self.incremental = "{since}" in s.url or any("{since}" in v for v in s.params.values())  # type: ignore[misc]

    def _since_text(self, since: datetime | None) -> str:
        when = since or datetime.now(timezone.utc) - timedelta(days=self.settings.since_default_days)
        when = when.astimezone(timezone.utc)
        if self.settings.since_format == "epoch":
            return str(int(when.timestamp()))
        if self.settings.since_format == "epoch_ms":
            return str(int(when.timestamp() * 1000))
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        s = self.settings
        since_text = self._since_text(since)
        url = s.url.replace("{since}", since_text)
        params = {k: v.replace("{since}", since_text) for k, v in s.params.items()}
        with make_session(s) as session:
            answer = fetch(session, "GET", url, timeout=s.timeout, max_bytes=s.max_bytes, params=params)
        # a charset in Content-Type decodes the body; without one JSON is UTF-8 (BOM accepted)
        document = answer.text() if answer.charset else answer.body
        return list(self.events_from(records_in(self, document, "json", s.items, safe_url(url))))
