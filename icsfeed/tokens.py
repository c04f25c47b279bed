"""Identifiers that must never change, and secrets that must be checked in constant time.

Feed tokens are an HMAC of the feed's id under the server's secret key, so there is no
token table to lose: bumping an account's ``token_version`` in config revokes its old URL.
Every process of an installation must use the same key (:func:`load_secret_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SECRET_ENV = "ICSFEED_SECRET_KEY"


def event_uid(source: str, key: str, host: str) -> str:
    """The UID of an event: from its source and origin key only, so it survives every poll."""
    digest = hashlib.sha256(f"{source}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{digest}@{host}"


class SharedSecret(Protocol):
    """Where a server database keeps the key every process shares (``icsfeed.store.Store``)."""

    @property
    def shares_secret(self) -> bool: ...

    def shared_secret_key(self, initial: bytes | None = None) -> bytes: ...


def load_secret_key(data_dir: Path, store: SharedSecret | None = None) -> bytes:
    """The server's secret, the same for every process of an installation: from the
    environment; else, on a server database (``store``), the key kept in it, generated once
    by whichever process comes first (from its data directory's key, if it has one, so an
    installation moved from SQLite keeps its URLs); else generated once into the data
    directory (SQLite: one machine)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    if store is not None and store.shares_secret:
        local = _key_file(data_dir)
        shared = store.shared_secret_key(initial=local)
        if local is not None and local != shared and data_dir not in _warned:
            _warned.add(data_dir)
            log.warning("%s differs from the key in the database: the database's is used (every process "
                        "shares it); subscription URLs made with the file's key no longer work", data_dir / "secret_key")
        return shared
    path = data_dir / "secret_key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    try:
        os.link(tmp, path)  # never overwrite a key another process created meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


#: data directories whose own key was found to differ from the shared one (warned once)
_warned: set[Path] = set()


def _key_file(data_dir: Path) -> bytes | None:
    """The data directory's key, if it has a readable one."""
    try:
        return bytes.fromhex((data_dir / "secret_key").read_text().strip())
    except (OSError, ValueError):
        return None


def feed_token(secret: bytes, feed_id: str, version: int) -> str:
    """22 URL-safe characters (128 bits): short enough for Google's 256-character limit."""
    mac = hmac.new(secret, f"{feed_id}\x00{version}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_token(secret: bytes, feed_id: str | None, version: int, given: str | None) -> bool:
    """Constant time whether or not the feed exists (an unknown id checks a dummy)."""
    expected = feed_token(secret, feed_id or "\x00unknown", version)
    ok = hmac.compare_digest(expected.encode(), (given or "").encode("utf-8", "replace"))
    return ok and feed_id is not None
