"""Prometheus Alertmanager: firing alerts and silences, over the API v2.

``GET /api/v2/alerts`` returns only alerts that are firing now (active, silenced,
inhibited or not yet processed); a resolved alert simply stops being returned. The
store remembers it, and since ``absence`` is ``close`` it ends the event at the time it
was last seen. A re-fire has a new ``startsAt`` and so is a new event (the key is
fingerprint + startsAt).

``GET /api/v2/silences`` returns pending, active and expired silences (expired ones
until Alertmanager's data retention drops them). Silences become maintenance windows
that carry ``attrs["absence"] = "keep"``: a silence that Alertmanager forgets is
history, not something to close.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from icsfeed.model import Event, seen_until
from icsfeed.sources.base import Source, SourceError, SourceSettings
from icsfeed.sources.http import HttpSettings, get_json, make_session, safe_url
from icsfeed.sources.mapping import RecordError, parse_when

#: longest title kept; calendars cut long SUMMARYs anyway
MAX_TITLE = 200
#: shortest webhook token accepted (a guessable one would open the hook to anyone)
MIN_WEBHOOK_TOKEN = 16
#: the webhook payload version this maps (Alertmanager has sent "4" since 0.x)
WEBHOOK_VERSION = "4"


class AlertmanagerSettings(HttpSettings, SourceSettings):
    """Settings of an ``alertmanager`` source (plus timeout/retries/verify_tls/headers/auth)."""

    #: base URL of Alertmanager (with its route prefix, if any): http://alertmanager:9093
    url: str
    #: base URL people open in a browser for links (default: ``url``)
    ui_url: str | None = None
    #: label(s) whose value names the customer; the first one present wins
    account_label: str | list[str] | None = Field(default="customer", validate_default=True)
    #: label whose value is the severity
    severity_label: str | None = "severity"
    #: title templates over the labels (``{alertname}``, ``{instance}``,
    #: ``{annotations.summary}``); the first whose fields are all present wins
    title: str | list[str] = Field(default_factory=lambda: ["{alertname} on {instance}", "{alertname}"])
    #: title template of silences: ``{comment}`` (first line of the comment, or the
    #: matchers when there is none), ``{matchers}``, ``{createdBy}``, ``{id}``
    silence_title: str = "Silence: {comment}"
    #: where an alert links: its ``generatorURL`` (Prometheus' graph) when that is http(s),
    #: or always the Alertmanager UI (when Prometheus' own URLs are internal)
    alert_links: Literal["generator", "alertmanager"] = "generator"
    include_silences: bool = True
    #: include alerts that are silenced / inhibited (they still happened)
    include_silenced: bool = True
    include_inhibited: bool = True
    #: Alertmanager matchers, e.g. ``['customer=~"acme|globex"', 'env="prod"']``
    filter: list[str] = Field(default_factory=list)
    #: matchers for silences (default: ``filter``). Alertmanager compares them with the
    #: silences' own matchers, so use equality here: ``['customer="acme"']``
    silence_filter: list[str] | None = None
    #: regex of receiver names; only alerts routed to a matching receiver
    receiver: str | None = None
    #: bearer token Alertmanager's webhook receiver sends (``POST /hooks/alertmanager/<id>``);
    #: without one the hook is off. A secret: use ``${VAR}``
    webhook_token: SecretStr | None = None
    #: largest webhook body accepted (a larger one is answered 413)
    webhook_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)

    @field_validator("webhook_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_WEBHOOK_TOKEN:
            raise ValueError(f"must be at least {MIN_WEBHOOK_TOKEN} characters (a random secret)")
        return value

    @field_validator("url", "ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not contain credentials; use auth: {username, password}")
        return value.rstrip("/")

    @field_validator("title")
    @classmethod
    def _titles(cls, value: str | list[str]) -> list[str]:
        templates = [value] if isinstance(value, str) else list(value)
        if not templates:
            raise ValueError("needs at least one template")
        for template in templates:
            _check_template(template)
        return templates

    @field_validator("silence_title")
    @classmethod
    def _silence_title(cls, value: str) -> str:
        _check_template(value)
        return value

    @field_validator("account_label")
    @classmethod
    def _labels(cls, value: str | list[str] | None) -> list[str]:
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _default_ui(self) -> AlertmanagerSettings:
        if self.ui_url is None:
            self.ui_url = self.url
        return self


class AlertmanagerSource(Source):
    """Firing alerts (kind ``alert``) and silences (kind ``maintenance``) of one Alertmanager."""

    type_name = "alertmanager"
    Settings = AlertmanagerSettings
    absence = "close"
    settings: AlertmanagerSettings

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        s = self.settings
        self.skipped = []
        params: dict[str, Any] = {
            "active": "true", "unprocessed": "true",
            "silenced": _flag(s.include_silenced), "inhibited": _flag(s.include_inhibited),
        }
        if s.filter:
            params["filter"] = s.filter
        if s.receiver:
            params["receiver"] = s.receiver
        with make_session(s) as session:
            alerts = get_json(session, f"{s.url}/api/v2/alerts", timeout=s.timeout, max_bytes=s.max_bytes, params=params)
            silences: Any = []
            if s.include_silences:
                silence_filter = s.filter if s.silence_filter is None else s.silence_filter
                silence_params = {"filter": silence_filter} if silence_filter else None
                silences = get_json(session, f"{s.url}/api/v2/silences", timeout=s.timeout, max_bytes=s.max_bytes,
                                    params=silence_params)
        if not isinstance(alerts, list) or not isinstance(silences, list):
            raise SourceError(f"{safe_url(s.url)}: not an Alertmanager API v2 answer (expected JSON lists)")
        now = datetime.now(UTC)
        events: list[Event] = []
        for record in alerts:
            self._convert(record, lambda r: self.alert_event(r, now), events)
        for record in silences:
            self._convert(record, self.silence_event, events)
        return events

    def _convert(self, record: Any, build: Any, events: list[Event]) -> None:
        try:
            if not isinstance(record, dict):
                raise RecordError("not a JSON object")
            events.append(build(record))
        except (RecordError, ValueError, TypeError) as exc:
            self.skip(record, str(exc))

    # --- alerts ----------------------------------------------------------------------

    def alert_event(self, alert: dict[str, Any], now: datetime) -> Event:
        """One firing alert as an event that stays open until the alert resolves, seen
        until the hour after ``now`` (model.seen_until)."""
        s = self.settings
        fingerprint = alert.get("fingerprint")
        if not fingerprint or not isinstance(fingerprint, str):
            raise RecordError("alert without fingerprint")
        labels = _str_map(alert.get("labels"))
        annotations = _str_map(alert.get("annotations"))
        start = _when(alert.get("startsAt"), "startsAt")
        status = alert.get("status") if isinstance(alert.get("status"), dict) else {}
        state = str(status.get("state") or "active")
        # endsAt of a firing alert is only when Alertmanager would resolve it if no
        # update came; it is a real end only once it has passed (v2 hides those anyway).
        end = None
        if state == "resolved":  # only a webhook says so (API v2 hides resolved alerts)
            end = _when(alert.get("endsAt"), "endsAt")
            if end < start:
                raise RecordError("resolved alert ends before it starts")
        elif alert.get("endsAt"):
            ends = _when(alert["endsAt"], "endsAt")
            if start <= ends <= now:
                end = ends
        namespace: dict[str, Any] = {**labels, "labels": labels, "annotations": annotations,
                                     "fingerprint": fingerprint}
        title = next((t for t in (_render(tpl, namespace) for tpl in s.title) if t), None)
        title = title or f"{labels.get('alertname') or 'Alert'} {fingerprint}"
        silenced_by = [str(x) for x in status.get("silencedBy") or []]
        inhibited_by = [str(x) for x in status.get("inhibitedBy") or []]
        generator = alert.get("generatorURL")
        use_generator = s.alert_links == "generator" and isinstance(generator, str) and _is_http(generator)
        url = generator if use_generator else self.alert_ui_url(labels)
        return Event(
            source=self.id,
            key=f"{fingerprint}@{_stamp(start)}",
            kind="alert",
            title=_one_line(title),
            start=start,
            end=end,
            seen=seen_until(now) if end is None else None,
            detail=_alert_detail(annotations, labels, state, silenced_by, inhibited_by),
            url=url,
            account=self._label_value(labels),
            severity=labels.get(s.severity_label) if s.severity_label else None,
            attrs={"labels": labels, "fingerprint": fingerprint, "state": state,
                   "silenced_by": silenced_by, "inhibited_by": inhibited_by},
        )

    def webhook_events(self, payload: Any, now: datetime) -> list[Event]:
        """The alerts of one webhook notification (payload version 4) as events, under the
        keys polls give them (fingerprint + startsAt), so a poll and a push converge on one
        event. A firing alert maps as the API's active one does (Alertmanager notifies only
        alerts no silence or inhibition mutes), so the two versions are byte-identical and
        neither bumps SEQUENCE; a resolved one ends at its ``endsAt``. A payload that is not
        a notification raises :class:`WebhookError`; a bad alert in it is skipped (``skipped``).
        """
        self.skipped = []
        if not isinstance(payload, dict):
            raise WebhookError("the body is not a JSON object (expected an Alertmanager webhook notification)")
        version = payload.get("version")
        if version is not None and str(version) != WEBHOOK_VERSION:
            raise WebhookError(f"unsupported webhook payload version {str(version)[:20]!r} (expected {WEBHOOK_VERSION!r})")
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise WebhookError('"alerts" is missing or not a list')
        events: list[Event] = []
        for alert in alerts:
            self._convert(alert, lambda a: self.alert_event(_as_polled(a), now), events)
        return events

    def alert_ui_url(self, labels: Mapping[str, str]) -> str:
        """The Alertmanager UI's alert list, filtered to exactly this alert's labels."""
        matchers = "{" + ",".join(f"{name}={_quote(value)}" for name, value in sorted(labels.items())) + "}"
        return (f"{self.settings.ui_url}/#/alerts?silenced=true&inhibited=true&active=true"
                f"&filter={quote(matchers, safe='')}")

    def _label_value(self, labels: Mapping[str, str]) -> str | None:
        for name in self.settings.account_label:  # type: ignore[union-attr]
            if labels.get(name):
                return labels[name]
        return None

    # --- silences --------------------------------------------------------------------

    def silence_event(self, silence: dict[str, Any]) -> Event:
        """A silence as a maintenance window from its start to its (actual) end."""
        s = self.settings
        silence_id = silence.get("id")
        if not silence_id or not isinstance(silence_id, str):
            raise RecordError("silence without id")
        start = _when(silence.get("startsAt"), "startsAt")
        end = _when(silence.get("endsAt"), "endsAt")
        if end < start:
            raise RecordError("silence ends before it starts")
        status = silence.get("status") if isinstance(silence.get("status"), dict) else {}
        state = str(status.get("state") or "")
        matchers = [m for m in silence.get("matchers") or [] if isinstance(m, dict) and m.get("name")]
        matcher_text = ", ".join(_matcher(m) for m in matchers)
        comment = str(silence.get("comment") or "").strip()
        created_by = str(silence.get("createdBy") or "").strip()
        headline = comment.splitlines()[0] if comment else matcher_text
        title = _render(s.silence_title, {"comment": headline, "matchers": matcher_text,
                                          "createdBy": created_by, "id": silence_id})
        equal = {str(m["name"]): str(m.get("value") or "") for m in matchers
                 if not m.get("isRegex") and m.get("isEqual", True)}
        lines = [comment] if comment else []
        lines += [f"Matchers: {matcher_text}", f"Created by: {created_by or 'unknown'}"]
        if state:
            lines.append(f"State: {state}")
        # Expiring a silence that never started sets startsAt = endsAt: the planned
        # window was called off.
        cancelled = state == "expired" and end <= start
        return Event(
            source=self.id,
            key=f"silence/{silence_id}",
            kind="maintenance",
            title=_one_line(title or f"Silence {silence_id}"),
            start=start,
            end=end,
            detail="\n".join(lines),
            url=f"{s.ui_url}/#/silences/{quote(silence_id, safe='')}",
            account=self._label_value(equal),
            status="cancelled" if cancelled else "confirmed",
            severity=equal.get(s.severity_label) if s.severity_label else None,
            attrs={"absence": "keep", "silence_id": silence_id, "state": state,
                   "matchers": matcher_text, "created_by": created_by},
        )


class WebhookError(ValueError):
    """A webhook body that is not an Alertmanager notification (the hook answers 400)."""


def _as_polled(alert: dict[str, Any]) -> dict[str, Any]:
    """A webhook alert in the API v2 shape :meth:`AlertmanagerSource.alert_event` reads.

    Its ``status`` is "firing" or "resolved" where the API has a state object: firing means
    active (a silenced or inhibited alert is never notified), resolved ends the event."""
    status = alert.get("status")
    if status not in ("firing", "resolved"):
        raise RecordError(f"status must be \"firing\" or \"resolved\", not {str(status)[:40]!r}")
    state = "active" if status == "firing" else "resolved"
    return {**alert, "status": {"state": state, "silencedBy": [], "inhibitedBy": []}}


# --- helpers -----------------------------------------------------------------------------


class _Formatter(string.Formatter):
    """str.format over labels where a missing or empty field makes the template fail."""

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        value = kwargs[key]  # KeyError: the template does not apply
        if value in ("", None):
            raise KeyError(key)
        return value

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        # {annotations.summary} reads a key, like the generic sources' templates do
        if "." in field_name and "[" not in field_name:
            value: Any = kwargs
            for part in field_name.split("."):
                value = value[part] if isinstance(value, dict) else None
                if value in ("", None):
                    raise KeyError(field_name)
            return value, field_name
        return super().get_field(field_name, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> str:
        if value in ("", None):
            raise KeyError("empty")
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


def _check_template(template: str) -> None:
    try:
        fields = [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None
    if any(f == "" or f.isdigit() for f in fields):
        raise ValueError(f"bad template {template!r}: fields must be named, e.g. {{alertname}}")


def _render(template: str, namespace: Mapping[str, Any]) -> str | None:
    """The rendered template, or None when one of its fields is missing or empty."""
    try:
        text = _FORMATTER.vformat(template, (), dict(namespace)).strip()
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        return None
    return text or None


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _str_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError("labels/annotations are not an object")
    return {str(k): str(v) for k, v in value.items()}


def _when(value: Any, name: str) -> datetime:
    if not value:
        raise RecordError(f"no {name}")
    parsed = parse_when(value, UTC)
    if not isinstance(parsed, datetime):
        raise RecordError(f"{name} is a date, not a time")
    return parsed


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _matcher(m: Mapping[str, Any]) -> str:
    regex = bool(m.get("isRegex"))
    equal = m.get("isEqual", True) is not False
    op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}[(regex, equal)]
    return f"{m['name']}{op}{_quote(str(m.get('value') or ''))}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1] + "…"


def _alert_detail(annotations: Mapping[str, str], labels: Mapping[str, str], state: str,
                  silenced_by: list[str], inhibited_by: list[str]) -> str:
    lines: list[str] = []
    for name in ("summary", "description"):
        if annotations.get(name):
            lines.append(annotations[name])
    lines += [f"{k}: {v}" for k, v in sorted(annotations.items()) if k not in ("summary", "description")]
    status = f"State: {state}"
    if silenced_by:
        status += f" (silenced by {', '.join(silenced_by)})"
    if inhibited_by:
        status += f" (inhibited by {', '.join(inhibited_by)})"
    if lines:
        lines.append("")
    lines.append(status)
    lines.append("Labels:")
    lines += [f"{k}={v}" for k, v in sorted(labels.items())]
    return "\n".join(lines)
