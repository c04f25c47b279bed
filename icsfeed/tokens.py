"""Identifiers that must never change, and secrets that must be checked in constant time.

Feed tokens are an HMAC of the feed's id under the server's secret key, so there is no
token table to lose: bumping an account's ``token_version`` in config revokes its old URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "ICSFEED_SECRET_KEY"


def event_uid(source: str, key: str, host: str) -> str:
    """The UID of an event: from its source and origin key only, so it survives every poll."""
    digest = hashlib.sha256(f"{source}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{digest}@{host}"


def load_secret_key(data_dir: Path) -> bytes:
    """The server's secret: from the environment, or generated once into the data directory."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
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


def feed_token(secret: bytes, feed_id: str, version: int) -> str:
    """22 URL-safe characters (128 bits): short enough for Google's 256-character limit."""
    mac = hmac.new(secret, f"{feed_id}\x00{version}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_token(secret: bytes, feed_id: str | None, version: int, given: str | None) -> bool:
    """Constant time whether or not the feed exists (an unknown id checks a dummy)."""
    expected = feed_token(secret, feed_id or "\x00unknown", version)
    ok = hmac.compare_digest(expected.encode(), (given or "").encode("utf-8", "replace"))
    return ok and feed_id is not None
