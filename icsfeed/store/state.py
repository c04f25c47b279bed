"""Per-source state (last success, errors in a row, cursor: for backoff and /status) and the
accounts whose insights are due."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.database import StoreError, bump_or_insert, db_reason, storable_text, upsert
from icsfeed.store.schema import insights_due_table, source_state_table


@dataclass(frozen=True)
class SourceState:
    source: str
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    cursor: str | None = None
    last_duration: float | None = None
    last_result: dict[str, Any] | None = None
    next_poll: float | None = None
    polls_total: int = 0
    failures_total: int = 0
    answer_digest: str | None = None


class StateMixin:
    """Source state and due insights (part of :class:`~icsfeed.store.Store`)."""

    engine: Engine

    def _record_success(self, conn: Any, source_id: str, now: float, cursor: str | None,
                        result: dict[str, Any] | None, duration: float | None,
                        answer_digest: str | None = None) -> None:
        """A stored poll; ``answer_digest``: the raw answer its events came from (None: unknown)."""
        self._record_successes(conn, [source_id], now, cursor, result, duration, answer_digest)

    def _record_successes(self, conn: Any, sources: Sequence[str], now: float, cursor: str | None = None,
                          result: dict[str, Any] | None = None, duration: float | None = None,
                          answer_digest: str | None = None) -> None:
        """:meth:`_record_success` of several sources at once, in one statement (an insight
        refresh records its detectors' unchanged runs together)."""
        s = source_state_table
        values: dict[str, Any] = {"last_attempt": now, "last_success": now, "consecutive_failures": 0,
                                  "last_duration": duration, "last_result": json.dumps(result or {}),
                                  "polls_total": func.coalesce(s.c.polls_total, 0) + 1,
                                  "answer_digest": answer_digest}
        if cursor is not None:
            values["cursor"] = storable_text(cursor)
        self._upsert_state(conn, sources, values)

    def record_unchanged(self, source_id: str, now: float, *, result: dict[str, Any] | None = None,
                         duration: float | None = None, answer_digest: str) -> None:
        """A successful poll whose raw answer is the one the stored events came from: nothing
        to write but the poll itself (last success, counters), only if that digest is still
        the stored one (a failure in between cleared it: then the caller must poll in full)."""
        s = source_state_table
        try:
            with self.engine.begin() as conn:
                done = conn.execute(s.update().where(and_(s.c.source == source_id, s.c.answer_digest == answer_digest))
                                    .values(last_attempt=now, last_success=now, consecutive_failures=0,
                                            last_duration=duration, last_result=json.dumps(result or {}),
                                            polls_total=func.coalesce(s.c.polls_total, 0) + 1))
                if done.rowcount != 1:
                    raise StoreError(f"the stored answer of {source_id} changed meanwhile")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write poll of {source_id}: {db_reason(exc)}") from None

    def record_failure(self, source_id: str, error: str, now: float, duration: float | None = None) -> int:
        """Note a failed poll; returns the number of failures in a row."""
        s = source_state_table
        try:
            with self.engine.begin() as conn:
                self._upsert_state(conn, source_id, {
                    "last_attempt": now, "last_error": storable_text(error[:2000]), "last_error_at": now,
                    "consecutive_failures": func.coalesce(s.c.consecutive_failures, 0) + 1,
                    "last_duration": duration, "answer_digest": None,
                    "polls_total": func.coalesce(s.c.polls_total, 0) + 1,
                    "failures_total": func.coalesce(s.c.failures_total, 0) + 1})
                failures = conn.execute(select(s.c.consecutive_failures).where(s.c.source == source_id)).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the failed poll of {source_id}: {db_reason(exc)}") from None
        return int(failures)

    def set_next_poll(self, source_id: str, when: float | None) -> None:
        try:
            with self.engine.begin() as conn:
                self._upsert_state(conn, source_id, {"next_poll": when})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot note the next poll of {source_id}: {db_reason(exc)}") from None

    def _upsert_state(self, conn: Any, source_ids: str | Sequence[str], values: dict[str, Any]) -> None:
        """``values`` into the row of the source (or of each source); a first row gets 1 for
        each counter (``*_total``, ``consecutive_failures``) that ``values`` bumps."""
        counters = ("_total", "consecutive_failures")
        initial = {k: (1 if k.endswith(counters) and not isinstance(v, int) else v) for k, v in values.items()}
        ids = [source_ids] if isinstance(source_ids, str) else list(dict.fromkeys(source_ids))
        if ids:
            upsert(conn, source_state_table, [{"source": i, "consecutive_failures": 0, "polls_total": 0,
                                                "failures_total": 0, **initial} for i in ids], values)

    def source_state(self, source_id: str) -> SourceState:
        s = source_state_table
        with self.engine.connect() as conn:
            row = conn.execute(select(s).where(s.c.source == source_id)).first()
        if row is None:
            return SourceState(source=source_id)
        data = row._asdict()
        data["last_result"] = json.loads(data["last_result"]) if data["last_result"] else None
        return SourceState(**data)

    def source_states(self) -> dict[str, SourceState]:
        s = source_state_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(s)).all()
        out = {}
        for row in rows:
            data = row._asdict()
            data["last_result"] = json.loads(data["last_result"]) if data["last_result"] else None
            out[row.source] = SourceState(**data)
        return out

    def mark_insights_due(self, account_keys: Iterable[str | None]) -> None:
        """Note that these accounts' insights must be recomputed (by one job, however many
        polls touched them). Events without an account have no insights."""
        keys = sorted({key for key in account_keys if key})
        if not keys:
            return
        try:
            with self.engine.begin() as conn:
                bump_or_insert(conn, insights_due_table.c.account_key, insights_due_table.c.gen, keys)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot mark insights for a refresh: {db_reason(exc)}") from None

    def insights_due(self) -> dict[str, int]:
        """Account keys whose insights are out of date -> their mark generation."""
        d = insights_due_table
        try:
            with self.engine.connect() as conn:
                return {r[0]: r[1] for r in conn.execute(select(d.c.account_key, d.c.gen)).all()}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the accounts due for insights: {db_reason(exc)}") from None

    def clear_insights_due(self, seen: dict[str, int]) -> None:
        """Forget the keys refreshed from ``seen`` (from insights_due), except those marked
        again meanwhile: a poll during the refresh keeps its account due."""
        d = insights_due_table
        try:
            with self.engine.begin() as conn:
                for key, gen in seen.items():
                    conn.execute(d.delete().where(and_(d.c.account_key == key, d.c.gen == gen)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot clear refreshed insights: {db_reason(exc)}") from None
