"""The running config: reloaded when its files change, kept when the new version is broken."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from icsfeed.config import Config, ConfigError, config_fingerprint, load_config

log = logging.getLogger(__name__)


class LiveConfig:
    """Holds the last good Config; ``current()`` notices changed files (checked at most
    every ``check_every`` seconds) and swaps in the new config only if it validates."""

    def __init__(self, config: Config, *, check_every: float = 2.0) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._seen = config.fingerprint
        self.check_every = check_every
        self.loaded_at = time.time()
        #: why the newest files were refused (None while they are in use)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._listeners: list[Callable[[Config], None]] = []

    @classmethod
    def load(cls, config_dir: str | Path, data_dir: str | Path | None = None, **kwargs: float) -> LiveConfig:
        return cls(load_config(config_dir, data_dir), **kwargs)

    def on_change(self, listener: Callable[[Config], None]) -> None:
        self._listeners.append(listener)

    def current(self) -> Config:
        if time.monotonic() - self._checked_at >= self.check_every:
            self.reload_if_changed()
        return self._config

    def reload_if_changed(self) -> bool:
        """Re-read the files if they changed; True when a new config took effect."""
        with self._lock:
            self._checked_at = time.monotonic()
            old = self._config
            fingerprint = config_fingerprint(old.config_dir)
            if fingerprint == self._seen:
                return False
            self._seen = fingerprint
            try:
                new = load_config(old.config_dir, old.data_dir)
            except ConfigError as exc:
                self.last_error, self.last_error_at = str(exc), time.time()
                log.error("config change refused, the last good config keeps running:\n%s", exc)
                return False
            self._config, self.loaded_at = new, time.time()
            self.last_error = self.last_error_at = None
        log.info("config reloaded: %d accounts, %d teams, %d sources",
                 len(new.accounts), len(new.teams), len(new.sources))
        for listener in self._listeners:
            try:
                listener(new)
            except Exception:
                log.exception("config change listener failed")
        return True
