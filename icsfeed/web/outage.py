"""A web process while the database is away: fail fast, and come back at once.

Without this, every request during an outage waits for its own connection attempt (a
database host that drops packets holds each one for the whole connect timeout), and the
first request after a database restart fails on a pooled connection the restart killed.
:class:`DatabaseGate`, installed on the store's engine, therefore

* checks a pooled connection before handing it out (unless the engine already pre-pings),
  so connections a restart killed are replaced instead of failing a request;
* bounds each connection attempt (``connect_timeout`` on PostgreSQL) and each wait on a
  connection whose host vanished (``tcp_user_timeout``);
* after a failure, refuses new connection attempts at once for ``hold`` seconds, then lets
  one attempt through at a time (the others keep failing fast until it succeeds); a pooled
  connection found dead also makes connection attempts go one at a time until one works.

The web layer answers such failures from memory or with 503 (web/feeds.py); /healthz says
"degraded" while the gate is down.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: after a failure, how long new connection attempts are refused without trying
HOLD_SECONDS = 1.0
#: the longest one connection attempt may take (PostgreSQL's libpq ``connect_timeout``)
CONNECT_TIMEOUT_SECONDS = 5
#: libpq ``tcp_user_timeout``: how long sent data may go unacknowledged on an open connection
TCP_USER_TIMEOUT_MS = 10_000

_GATES: weakref.WeakKeyDictionary[Engine, DatabaseGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


class DatabaseGate:
    """Tracks whether the database is reachable from this process; see the module docstring."""

    def __init__(self, hold: float = HOLD_SECONDS, connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> None:
        self.hold = hold
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._failed_at: float | None = None  # time.monotonic() of the last failure
        #: a pooled connection was found dead: connect one at a time until one succeeds
        self._suspect = False
        self._probing = False
        #: why the database is unreachable (None while it is reachable)
        self.reason: str | None = None
        #: time.time() when the current outage began
        self.down_since: float | None = None
        #: connection attempts the gate let through (for tests and logs)
        self.attempts = 0

    @classmethod
    def on(cls, engine: Engine) -> DatabaseGate:
        """The gate of this engine, installed on first use (one per engine, however many
        apps are built over the same store)."""
        with _GATES_LOCK:
            gate = _GATES.get(engine)
            if gate is None:
                gate = cls()
                gate._install(engine)
                _GATES[engine] = gate
            return gate

    @property
    def down(self) -> bool:
        return self._failed_at is not None

    def _install(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._connect)
        event.listen(engine, "handle_error", self._error)
        if engine.dialect.name != "sqlite" and not getattr(engine.pool, "_pre_ping", False):
            event.listen(engine, "checkout", self._ping)

    def _connect(self, dialect: Any, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        with self._lock:
            failed = self._failed_at is not None
            if (failed or self._suspect) and (self._probing or (failed and time.monotonic() - self._failed_at < self.hold)):
                refused = dialect.loaded_dbapi.OperationalError(
                    f"database unreachable ({self.reason or 'a connection was lost'}); "
                    f"retried at most every {self.hold:g} s")
                refused.icsfeed_gate = True  # not a new failure: handle_error must not extend the hold
                raise refused
            probing = failed or self._suspect
            self._probing = probing
            self.attempts += 1
        if dialect.name == "postgresql":
            cparams.setdefault("connect_timeout", self.connect_timeout)
            # a database host that vanished without closing the connection: data left
            # unacknowledged this long drops the connection (a ping would hang for minutes)
            cparams.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT_MS)
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception as error:
            self._failed(error)
            raise
        finally:
            if probing:
                with self._lock:
                    self._probing = False
        self._recovered()
        return connection

    def _ping(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        """Pessimistic disconnect handling (SQLAlchemy's pool-event recipe): a connection that
        cannot run SELECT 1 is dropped, and the pool connects anew -- one request at a time
        until that works, so that a host that vanished is not asked by every thread at once."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        except Exception:
            with self._lock:
                self._suspect = True
            raise exc.DisconnectionError() from None
        finally:
            try:
                cursor.close()
            except Exception:
                pass

    def _error(self, context: Any) -> None:
        original = context.original_exception
        if getattr(original, "icsfeed_gate", False):
            return  # the gate's own refusal: not a new failure
        if getattr(context, "is_pre_ping", False):  # the engine's own pre-ping found a dead connection:
            with self._lock:  # the pool connects anew, and that attempt tells
                self._suspect = True
            return
        if context.is_disconnect:
            self._failed(original)

    def _failed(self, error: BaseException) -> None:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        with self._lock:
            first = self._failed_at is None
            self._failed_at = time.monotonic()
            self.reason = reason
            if first:
                self.down_since = time.time()
        if first:
            log.warning("database unreachable (%s): feeds held in memory are served, other requests get 503", reason)

    def _recovered(self) -> None:
        with self._lock:
            self._suspect = False
            if self._failed_at is None:
                return
            since = self.down_since
            self._failed_at = self.reason = self.down_since = None
        log.warning("database reachable again%s", f" after {time.time() - since:.1f} s" if since else "")
