"""Settings every process of an installation shares, kept in the database: the secret key of
the feed tokens, so that a subscription URL printed on one machine works on all of them."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, db_reason, insert_missing
from icsfeed.store.schema import settings_table

#: settings row of the token key (hex)
KEY_ROW = "secret_key"


class KeysMixin:
    """Shared settings (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine
    _shared_secret: bytes | None = None

    @property
    def shares_secret(self) -> bool:
        """True when the token key lives in the database (any server database: processes on
        several machines share it). SQLite keeps it in the data directory, as it always did."""
        return self.engine.dialect.name != "sqlite"

    def shared_secret_key(self, initial: bytes | None = None) -> bytes:
        """The installation's token key, generated once by whichever process asks first
        (``initial``, e.g. the key an existing data directory already had, else 32 random
        bytes): an atomic insert-if-missing, then what is stored is read back, so processes
        starting together all end up with the first one's key."""
        if self._shared_secret is None:
            offer = (initial or secrets.token_bytes(32)).hex()
            s = settings_table
            try:
                with self.engine.begin() as conn:
                    insert_missing(conn, s, [{"name": KEY_ROW, "value": offer}])
                    stored: Any = conn.execute(select(s.c.value).where(s.c.name == KEY_ROW)).scalar_one()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot read the shared secret key: {db_reason(exc)}") from None
            self._shared_secret = bytes.fromhex(stored)
        return self._shared_secret

    def set_shared_secret_key(self, key: bytes) -> None:
        """Replace the shared key (``icsfeed db copy`` brings the old installation's)."""
        s = settings_table
        try:
            with self.engine.begin() as conn:
                conn.execute(s.delete().where(s.c.name == KEY_ROW))
                conn.execute(s.insert().values(name=KEY_ROW, value=key.hex()))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store the shared secret key: {db_reason(exc)}") from None
        self._shared_secret = key
