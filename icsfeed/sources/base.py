"""The contract every source type fulfils.

A source type is one module in this package holding one subclass of :class:`Source`,
registered under its ``type:`` name in :mod:`icsfeed.sources`. The only required method
is :meth:`Source.fetch`. The rules, which the poller relies on:

* ``fetch`` returns the complete list of events (or, for ``incremental`` types, every
  event changed since ``since``) or **raises** :class:`SourceError`. It never returns
  half a result: the poller stores a result as one transaction, and an exception keeps
  the last good events in place.
* A single broken record is not a failure: call :meth:`Source.skip` with the reason
  and go on.
* Sources never touch the store, and never log or raise a secret (passwords, tokens):
  messages are shown on the status page.
* ``absence`` says what it means when an event stops appearing: ``close`` (an alert
  resolved: end it when it was last seen), ``keep`` (history: a silence expired), or
  ``cancel`` (a deleted ticket: STATUS:CANCELLED).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from icsfeed.model import Event

Absence = Literal["close", "keep", "cancel"]

log = logging.getLogger(__name__)

#: skipped records logged at WARNING per poll; the rest at DEBUG
MAX_LOGGED_SKIPS = 5


class SourceError(Exception):
    """A poll failed as a whole; the message is shown on the status page (no secrets)."""


class AnswerUnchanged(Exception):
    """Raised by ``fetch`` when :meth:`Source.answer_unchanged` says the origin's raw answer is
    the one the stored events came from: the poller records a successful poll and stops."""


class SourceSettings(BaseModel):
    """Type-specific settings of a source; subclasses add their fields."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class KindInfo:
    """What a source needs to know of a kind to build events for it."""

    all_day: bool
    duration_seconds: int

    def span(self, moment: datetime, tz: ZoneInfo) -> tuple[datetime | date, datetime | date]:
        """Start and end of an event that happened at ``moment`` (a ticket opened): its local
        day for an all-day kind, else the kind's default duration from then."""
        if self.all_day:
            day = moment.astimezone(tz).date()
            return day, day + timedelta(days=1)
        return moment, moment + timedelta(seconds=max(0, self.duration_seconds))


@dataclass(frozen=True)
class SourceContext:
    """Configuration a source may read: kinds, timezones, where relative paths start."""

    config_dir: Path
    data_dir: Path
    kinds: dict[str, KindInfo]
    default_timezone: str = "UTC"
    #: origin account key (lower-cased) -> IANA timezone of the configured account
    account_timezones: dict[str, str] = field(default_factory=dict)
    #: per-request timeout for network sources, seconds
    default_timeout: float = 30.0

    def timezone_for(self, account_key: str | None, fallback: str | None = None) -> ZoneInfo:
        """The timezone naive origin times are read in: the account's, else the source's."""
        name = None
        if account_key is not None:
            name = self.account_timezones.get(str(account_key).strip().lower())
        return ZoneInfo(name or fallback or self.default_timezone)


class Source(ABC):
    """Base class of all source types (see the module docstring for the contract)."""

    #: the ``type:`` name in config
    type_name: ClassVar[str]
    #: the pydantic model of this type's settings (everything under the source besides
    #: id/type/interval/jitter/enabled/absence)
    Settings: ClassVar[type[SourceSettings]] = SourceSettings
    #: what a vanished event means
    absence: ClassVar[Absence] = "keep"
    #: True when ``fetch(since)`` returns only what changed since ``since``: then a
    #: missing event means nothing and ``absence`` is not applied to such polls.
    incremental: ClassVar[bool] = False

    def __init__(self, source_id: str, settings: SourceSettings, context: SourceContext) -> None:
        self.id = source_id
        self.settings = settings
        self.context = context
        #: opaque resume point for incremental polls; the poller loads it before
        #: ``fetch`` and saves it after a successful one.
        self.cursor: str | None = None
        #: reasons for records skipped in the last fetch
        self.skipped: list[str] = []
        #: set by the poller: what the answer digest depends on besides the raw bytes (the
        #: source's settings, kinds, caps: see poller.answer_fingerprint), and the digest of
        #: the answer the stored events came from (None: none known, poll in full)
        self.fingerprint: bytes = b""
        self.known_digest: str | None = None
        #: the digest of the last raw answer ``answer_unchanged`` saw
        self.answer_digest: str | None = None
        #: set by the poller for full dumps: reads the record digest -> stored key of the
        #: stored events (None: map every record); and how a key is stored (the store's form)
        self.stored_records: Callable[[], Mapping[str, str]] | None = None
        #: what the last fetch's ``stored_records`` gave (the poller hands it to the store)
        self.stored_known: Mapping[str, str] | None = None
        self.stored_key: Callable[[str], str] = str
        #: what the last fetch left unmapped (stored key -> record digest: present, unchanged)
        #: and the record digest of each event it mapped (event key -> digest)
        self.unchanged_keys: dict[str, str] = {}
        self.record_digests: dict[str, str] = {}

    @classmethod
    def parse_settings(cls, raw: dict[str, Any]) -> SourceSettings:
        """Validate the raw YAML mapping (raises pydantic.ValidationError)."""
        return cls.Settings.model_validate(raw)

    @abstractmethod
    def fetch(self, since: datetime | None) -> Iterable[Event]:
        """Every event the origin has now (or changed since ``since``); raise on failure."""

    def answer_unchanged(self, raw: bytes) -> bool:
        """Note the digest of the origin's whole raw answer; True when it is the one the
        stored events came from, so ``fetch`` may raise :class:`AnswerUnchanged` instead of
        mapping it again. Only for types whose events are a function of the answer and the
        configuration alone (not of the clock): a full dump re-read every poll."""
        hasher = hashlib.sha256(self.fingerprint + b"\0")
        hasher.update(raw)  # not ``fingerprint + raw``: no copy of a 37 MB answer to hash it
        self.answer_digest = hasher.hexdigest()
        return self.known_digest is not None and self.known_digest == self.answer_digest

    def record_digest(self, text: str) -> str:
        """Digest of one origin record's canonical text under this source's settings (the
        answer fingerprint: a change of settings, version or year changes every digest):
        BLAKE2b of the text, its salt and personalisation a digest of the fingerprint (one
        call a record: no hasher copy, no key block, and the ≈ 1 KB fingerprint is hashed
        once per poll, not per record)."""
        return self._record_hash()(text.encode("utf-8", "surrogatepass")).hexdigest()

    def record_digests_of(self, texts: Sequence[str | None]) -> list[str | None]:
        """:meth:`record_digest` of each text (None for None), a whole answer at a time."""
        hash_ = self._record_hash()
        if None not in texts:
            return [hash_(text.encode("utf-8", "surrogatepass")).hexdigest() for text in texts]  # type: ignore[union-attr]
        return [hash_(text.encode("utf-8", "surrogatepass")).hexdigest() if text is not None else None
                for text in texts]

    def _record_hash(self) -> Callable[[bytes], Any]:
        if self._record_hasher is None or self._hashed_fingerprint != self.fingerprint:
            bound = hashlib.sha256(b"record\0" + self.fingerprint).digest()
            self._record_hasher = functools.partial(hashlib.blake2b, digest_size=16, salt=bound[:16],
                                                    person=bound[16:])
            self._hashed_fingerprint = self.fingerprint
        return self._record_hasher  # type: ignore[no-any-return]

    _record_hasher: Any = None
    _hashed_fingerprint: bytes = b""

    def skip(self, record: object, reason: str) -> None:
        """Log and count a record that cannot become an event; the poll goes on."""
        label = _describe(record)
        message = f"{label}: {reason}"
        self.skipped.append(message)
        # the first few per poll in full; the poller logs the count of the rest
        level = logging.WARNING if len(self.skipped) <= MAX_LOGGED_SKIPS else logging.DEBUG
        log.log(level, "source %s skipped record %s", self.id, message)

    def kind_info(self, kind: str) -> KindInfo:
        """The configured kind a type emits; a poll fails clearly if config lacks it."""
        info = self.context.kinds.get(kind)
        if info is None:
            raise SourceError(f"unknown kind {kind!r} (known: {', '.join(sorted(self.context.kinds))})")
        return info

    @property
    def state_dir(self) -> Path:
        """Where this source may keep small files between polls (a cache, what it saw)."""
        return self.context.data_dir / "cache" / self.id

    def read_state(self, name: str) -> dict[str, Any] | None:
        """A JSON object this source wrote before, or None (missing or unreadable)."""
        try:
            data = json.loads((self.state_dir / name).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_state(self, name: str, data: bytes, *, sync: bool = True) -> None:
        """Write a state file so that a reader sees the old or the new content, never half.
        ``sync`` False: not synced to the disk first (a cache whose loss costs a slower poll,
        not the fsync of megabytes behind other writes)."""
        path = self.state_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def resolve_path(self, path: str | Path) -> Path:
        """A path from config, relative to the config directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.context.config_dir / p


def _describe(record: object) -> str:
    if isinstance(record, dict):
        for key in ("id", "key", "fingerprint", "uid", "name"):
            if key in record:
                return f"{key}={str(record[key])[:80]!r}"
    text = record if isinstance(record, str) else repr(record)
    return text[:80] + ("…" if len(text) > 80 else "")
