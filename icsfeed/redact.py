"""Secrets out of every text icsfeed shows: errors, skipped reasons, log lines, CLI output.

One function, :func:`redact`, is used wherever text leaves the process or is stored for a
page: the poller's errors and skipped reasons, ``icsfeed poll`` output, and (through
:class:`RedactingFilter`, which the CLI installs on the log handlers) every log record of
icsfeed, urllib3, requests and the web server. It removes

* every known secret: each value a ``${VAR}`` put into the config, each ``SecretStr``
  setting, and what a config marks as a key by its name (``api_key=…`` in a URL or in
  ``params``, ``--token …`` in a command's ``argv``), also in the forms an origin or a
  library writes them back (percent-encoded, JSON-escaped, base64 of ``user:password``);
* the password (or a lone user name, often a token) and every query value of each URL in the text (absolute ones and the
  ``/path?query`` that urllib3 logs);
* ``name=value`` pairs and ``"name": "value"`` members whose name says secret, and the
  credentials after ``Bearer``/``Basic``, whatever their origin.

Config loading registers its secrets here (:func:`register`), so the log filter knows
them in every process, also after a reload.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

MASK = "***"
#: shorter values are not treated as secrets: replacing "1" or "on" everywhere would
#: garble every message, and a four-character key is no secret anyway
MIN_SECRET = 4

#: a name that says its value is a credential (query parameter, header, flag, JSON key)
SECRET_NAME = (r"(?:[\w.-]*?(?:api[_-]?key|apikey|access[_-]?key|private[_-]?key|secret|token|passw(?:or)?d|pwd"
               r"|auth|signature|sig|session|credential|cookie))")
_SECRET_NAME = re.compile(rf"^{SECRET_NAME}s?$", re.I)

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
#: ``/path?query`` and ``host/path?query`` inside text (urllib3 logs the request target alone)
_QUERY = re.compile(r"(?<=[\w/.\-%])\?([^\s#'\"<>`]*=[^\s#'\"<>`]*)")
_PAIR = re.compile(rf"(?i)(\b{SECRET_NAME}s?)(\s*=\s*)(?!\*\*\*)([^\s&,;'\"<>)\]}}]+)")
_JSON_MEMBER = re.compile(rf"(?i)([\"']{SECRET_NAME}s?[\"']\s*:\s*)([\"'])(?!\*\*\*)((?:\\.|(?!\2).)*)\2")
#: credentials after an auth scheme; the value must hold a digit, so that "basic
#: authentication" stays a phrase
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic|token)(\s+)(?!\*\*\*)(?=[A-Za-z._~-]*[0-9+/=])([A-Za-z0-9+/=._~-]{8,})")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: what a ${VAR} may hold that is no secret and would garble every message if masked:
#: YAML's booleans and short numbers (a port, a count)
_NOT_SECRET = re.compile(r"(?i)true|false|yes|no|on|off|null|none|\d{1,7}")

_lock = threading.Lock()
_registered: frozenset[str] = frozenset()


def is_secret_name(name: str) -> bool:
    """True for ``api_key``, ``X-Api-Key``, ``token``, ``password``, ``--auth-token`` …"""
    return bool(_SECRET_NAME.match(name.strip().lstrip("-")))


def secret_forms(value: str) -> set[str]:
    """A secret and the ways it comes back: percent-encoded (query strings), ``+`` for
    spaces, JSON-escaped (an origin's error body)."""
    if len(value) < MIN_SECRET or _NOT_SECRET.fullmatch(value):
        return set()
    forms = {value, quote(value, safe=""), quote_plus(value), quote(value, safe="/:@")}
    forms.add(json.dumps(value)[1:-1])
    return {f for f in forms if len(f) >= MIN_SECRET}


def basic_forms(username: str, password: str) -> set[str]:
    """The base64 that basic auth sends for ``username:password`` (an origin may echo it)."""
    if len(password) < MIN_SECRET:
        return set()
    return {base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}


def register(secrets: Iterable[str]) -> None:
    """Add secrets the log filter removes in this process (config loading calls this)."""
    global _registered
    new = {s for s in secrets if len(s) >= MIN_SECRET}
    if not new <= _registered:
        with _lock:
            _registered = _registered | new


def registered() -> frozenset[str]:
    return _registered


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without ``secrets`` (a config's: see ``Config.secrets``), URL credentials
    and query values, and whatever a name marks as a credential (see the module docstring)."""
    if not text:
        return text
    known = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: _redact_url(m.group()), text)
    if "?" in text:
        text = _QUERY.sub(lambda m: "?" + _redact_query(m.group(1)), text)
    text = _PAIR.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _JSON_MEMBER.sub(lambda m: m.group(1) + m.group(2) + MASK + m.group(2), text)
    return _SCHEME_TOKEN.sub(lambda m: m.group(1) + m.group(2) + MASK, text)


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        parts.append(f"{name}={MASK}" if sep and value else item)
    return "&".join(parts)


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0]
    netloc = parts.netloc
    if "@" in netloc:  # user:password keeps the user (who, not how); a lone user may be a token
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if sep and user and user != MASK else f"{MASK}@{host}"
    query = _redact_query(parts.query) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def printable(text: str) -> str:
    """Text any terminal or log file takes: lone surrogates (which no encoder writes) as
    ``\\udxxx`` escapes, and control characters other than newline and tab escaped too,
    so an origin's text cannot move the cursor or recolour a terminal."""
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)


class RedactingFilter(logging.Filter):
    """Applied on a handler: every record it writes, from any logger, is redacted first
    (the message with its arguments, the traceback and the stack)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it itself
            return True
        secrets = _registered
        clean = printable(redact(message, secrets))
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(redact(record.exc_text, secrets))
        if record.stack_info:
            record.stack_info = printable(redact(record.stack_info, secrets))
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root),
    so records of icsfeed, urllib3, requests and waitress are all covered."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
