"""How rows and feed bodies are kept on disk: zstd frames, most of them made with a dictionary
trained from the installation's own rows.

An event row's JSON (``events.data``) and its VEVENT fragment (``events.vevent``) are a few
hundred bytes each and much alike within one source (its mapping fills the same fields with
the same words): compressed alone, a row shrinks by a third; with a dictionary trained on rows
of the same source, by 85–90% (docs/PERFORMANCE.md, issue 11). So each column has, per
*source group* (a configured source, or one insight detector for all accounts: the source id
up to its ``:``), dictionaries trained from the first large enough batch of that group's values
written, kept in the ``dictionaries`` table. A dictionary is never changed or deleted: a newer
one (trained on a larger batch) is used for new writes, rows written before keep decoding with
theirs.

What a blob is, read by its first bytes alone:

- a zstd frame (``28 b5 2f fd``): its header names the dictionary it was made with
  (``DICT_ID_BASE`` + the row id in ``dictionaries``), or none;
- anything else is the value itself (JSON starts with ``{``, a fragment with ``BEGIN:``): what a
  value that does not shrink is stored as, and what rows from before migration 0010 held.

Feed bodies are stored as segments of about 8 VEVENTs (``feed_segments.blob``, migration
0015, icsfeed.store.segments), compressed like rows, with dictionaries of the field
``segment`` (one source group for every feed): a re-render compresses only the segments it
changed, a feed request never (the web layer keeps the body it read, per ETag). A body stored
whole before 0015 (``feeds.body``) is one zstd frame without a dictionary, at zstd's fastest
level (:func:`pack_body`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zstandard
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from icsfeed.store.schema import dictionaries_table

log = logging.getLogger("icsfeed.store")

MAGIC = b"\x28\xb5\x2f\xfd"
#: a dictionary's zstd id is this plus its row id: ids below 32768 are reserved by zstd's format
DICT_ID_BASE = 32768
#: zstd level of rows (a few microseconds a row) and of feed bodies (fastest: renders pay it)
ROW_LEVEL, BODY_LEVEL = 3, 1
#: a group's first dictionary is trained from a batch of at least this many values
MIN_SAMPLES = 16
#: at most this many values of a batch are trained on; a dictionary trained on fewer is
#: replaced by one trained on a batch at least ``RETRAIN_FACTOR`` times as large
MAX_SAMPLES, RETRAIN_FACTOR = 300, 4
DICT_SIZE = 16 * 1024
#: the list of dictionaries is read again after this many seconds (Codec._infos)
INFOS_SECONDS = 10.0
#: the columns with dictionaries (``segment``: feed_segments.blob, icsfeed.store.feeds)
FIELDS = ("data", "vevent", "segment")


class UndecodableBlob(ValueError):
    """A stored value that cannot be read back (corrupt, or made with a dictionary this
    database does not hold)."""


def source_group(source: str) -> str:
    """Rows whose values are alike: a configured source, or one insight detector's flags of
    every account (``insight-backups:acme`` -> ``insight-backups``)."""
    return source.partition(":")[0]


@dataclass(frozen=True)
class DictionaryInfo:
    id: int
    field: str
    group: str
    samples: int


class Codec:
    """One store's encoder and decoder: the dictionaries it has read (never changed once
    written, so held for the process's life), and per-thread zstd contexts (not thread-safe)."""

    def __init__(self, engine: Engine | None) -> None:
        """``engine``: where committed dictionaries are read from; None (a migration, whose
        transaction may hold the only copy) reads them through the connection of each call."""
        self.engine = engine
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}  # assignments only: safe across threads
        self._local = threading.local()
        #: field -> (when read, the newest dictionary of each group): see :meth:`_infos`
        self._held_infos: dict[str, tuple[float, dict[str, DictionaryInfo]]] = {}

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, blob: bytes | memoryview | str) -> bytes:
        """The value a blob holds; raises :class:`UndecodableBlob`. Thousands per render or
        insight refresh: about 2 µs for a row's JSON."""
        if type(blob) is not bytes:
            if isinstance(blob, str):  # a TEXT value (a row written before 0010 on a backend that kept it)
                return blob.encode("utf-8", "surrogatepass")
            blob = bytes(blob)
        if blob[:4] != MAGIC:
            return blob
        try:
            dict_id = zstandard.get_frame_parameters(blob).dict_id
            try:
                dctx = self._local.d[dict_id]
            except (AttributeError, KeyError):
                dctx = self._decompressor(dict_id)
            return dctx.decompress(blob)  # type: ignore[no-any-return]
        except zstandard.ZstdError as exc:
            raise UndecodableBlob(f"not a readable zstd frame: {exc}") from None

    def text(self, blob: bytes | memoryview | str) -> str:
        """A blob's value as text (JSON); raises :class:`UndecodableBlob`."""
        try:
            return self.decode(blob).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableBlob(f"not UTF-8: {exc}") from None

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        held: dict[int, zstandard.ZstdDecompressor] | None = getattr(self._local, "d", None)
        if held is None:
            held = self._local.d = {}
        dctx = held.get(dict_id)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor(dict_data=self._dictionary(dict_id)) if dict_id else \
                zstandard.ZstdDecompressor()
            held[dict_id] = dctx
        return dctx

    def _dictionary(self, dict_id: int) -> zstandard.ZstdCompressionDict:
        """A committed dictionary (held from then on: it never changes), read on a connection of
        its own, so that one written by a transaction later rolled back (its id then free for
        another) is never held."""
        found = self._dicts.get(dict_id)
        if found is None:
            if self.engine is None:
                raise UndecodableBlob(f"dictionary {dict_id} is not loaded")
            try:
                with self.engine.connect() as conn:
                    content = _content(conn, dict_id - DICT_ID_BASE)
            except SQLAlchemyError:  # no such table yet (a migration's own transaction)
                content = None
            if not content:
                raise UndecodableBlob(f"made with dictionary {dict_id}, which this database does not hold")
            found = self._dicts[dict_id] = zstandard.ZstdCompressionDict(content)
        return found

    def load(self, conn: Any) -> None:
        """Hold every dictionary ``conn`` sees (a downgrade's decoding, in its own transaction)."""
        t = dictionaries_table
        for row_id, content in conn.execute(select(t.c.id, t.c.content)):
            if content:
                self._dicts[DICT_ID_BASE + row_id] = zstandard.ZstdCompressionDict(bytes(content))

    # --- encoding ---------------------------------------------------------------------------

    def encode_values(self, conn: Any, field: str, groups: Sequence[str], values: list[bytes | None], *,
                      apart: bool = False) -> list[bytes | None]:
        """``values`` (None stays None) of rows of these source groups, encoded: each group's
        newest dictionary for ``field``, trained first when the batch is large enough and the
        group has none or only one trained on a small batch. The new dictionary is written in
        ``conn``'s transaction, or with ``apart`` (and an engine) in a transaction of its own,
        committed at once: then encoding writes nothing in ``conn``'s, which on SQLite takes no
        write lock until its own first write (a poll's rows are encoded before it writes them).
        A dictionary whose rows are then rolled back is only never used by them."""
        by_group: dict[str, list[int]] = {}
        for i, (group, value) in enumerate(zip(groups, values, strict=True)):
            if value is not None:
                by_group.setdefault(group, []).append(i)
        if not by_group:
            return values
        known = self._infos(conn, field)
        out = list(values)
        for group, positions in by_group.items():
            info = known.get(group)
            cctx = None
            if info is None or (info.samples < MAX_SAMPLES and len(positions) >= RETRAIN_FACTOR * info.samples):
                cctx = self._trained(conn, field, group, [values[i] for i in positions],  # type: ignore[misc]
                                     apart=apart and self.engine is not None)
            if cctx is None:
                cctx = self._compressor(conn, info.id if info is not None else 0)
            for i in positions:
                out[i] = pack(cctx, values[i])  # type: ignore[arg-type]
        return out

    def _infos(self, conn: Any, field: str) -> dict[str, DictionaryInfo]:
        """The newest dictionary of each group for ``field``: read at most every
        ``INFOS_SECONDS`` (a query on every encode cost 0.5-1 ms, twice per re-render), so
        dictionaries other processes trained are used within that time (until then, a batch
        of a group that has none here may train one more: it is only a dictionary more).
        Held only when read from committed rows: never in a transaction that wrote one
        itself (it may yet be rolled back, its id then another's), and every dictionary this
        codec writes drops what is held."""
        held = self._held_infos.get(field)
        if held is not None and time.monotonic() - held[0] < INFOS_SECONDS:
            return held[1]
        t = dictionaries_table
        newest: dict[str, DictionaryInfo] = {}
        for r in conn.execute(select(t.c.id, t.c.source_group, t.c.samples).where(t.c.field == field).order_by(t.c.id)):
            newest[r.source_group] = DictionaryInfo(r.id, field, r.source_group, r.samples)
        if self.engine is not None and not _trained_in(conn):
            self._held_infos[field] = (time.monotonic(), newest)
        return newest

    def _compressor(self, conn: Any, row_id: int) -> zstandard.ZstdCompressor:
        """The compressor of a dictionary (0: none); one this transaction wrote and has not
        committed yet is read through ``conn`` and not held."""
        held: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "c", None)
        if held is None:
            held = self._local.c = {}
        cctx = held.get(row_id)
        if cctx is None:
            if not row_id:
                cctx = held[0] = _row_compressor(None)
                return cctx
            try:
                cctx = held[row_id] = _row_compressor(self._dictionary(DICT_ID_BASE + row_id))
            except UndecodableBlob:
                content = _content(conn, row_id)
                if content is None:
                    raise
                cctx = _row_compressor(zstandard.ZstdCompressionDict(content))
        return cctx

    def _trained(self, conn: Any, field: str, group: str, values: list[bytes], *,
                 apart: bool = False) -> zstandard.ZstdCompressor | None:
        """A new dictionary for the group trained from ``values`` and written in ``conn``'s
        transaction (``apart``: in one of its own on ``self.engine``, committed), and a
        compressor with it; None when there are too few to train on."""
        if len(values) < MIN_SAMPLES:
            return None
        if apart:
            assert self.engine is not None
            with self.engine.begin() as own:  # its errors are the caller's (a poll: not stored, as any write's)
                found = self._train(own, field, group, values)
            if found is None:
                return None
            row_id, trained = found
            self._dicts[DICT_ID_BASE + row_id] = trained  # committed: held like any read one
            return self._compressor(conn, row_id)
        found = self._train(conn, field, group, values)
        return _row_compressor(found[1]) if found is not None else None  # not held: may yet be rolled back

    def _train(self, conn: Any, field: str, group: str,
               values: list[bytes]) -> tuple[int, zstandard.ZstdCompressionDict] | None:
        """Train and write a dictionary in ``conn``'s transaction: (its row id, it), or None."""
        samples = random.Random(len(values)).sample(values, min(len(values), MAX_SAMPLES))
        t = dictionaries_table
        started = time.process_time()
        _mark_training(conn)
        self._held_infos.clear()
        row_id = conn.execute(t.insert().values(field=field, source_group=group[:160], samples=len(samples),
                                                created=time.time(), content=b"")).inserted_primary_key[0]
        try:
            trained = zstandard.train_dictionary(min(DICT_SIZE, max(1024, sum(map(len, samples)) // 4)), samples,
                                                 dict_id=DICT_ID_BASE + row_id, level=ROW_LEVEL)
        except zstandard.ZstdError as exc:  # too little or too uniform to train on: no dictionary
            log.info("no compression dictionary for %s of %s: %s", field, group, exc)
            conn.execute(t.delete().where(t.c.id == row_id))
            return None
        conn.execute(t.update().where(t.c.id == row_id).values(content=trained.as_bytes()))
        log.info("trained a compression dictionary for %s of %s from %d values in %.0f ms",
                 field, group, len(samples), (time.process_time() - started) * 1000)
        return row_id, trained


#: the key in a connection's ``info`` of the last transaction a dictionary was written in
_TRAINED = "icsfeed.codec.trained"


def _mark_training(conn: Any) -> None:
    info, get = getattr(conn, "info", None), getattr(conn, "get_transaction", None)
    if info is not None and get is not None:
        info[_TRAINED] = get()


def _trained_in(conn: Any) -> bool:
    """Whether ``conn``'s transaction wrote a dictionary (or it cannot tell: then as if it did)."""
    info, get = getattr(conn, "info", None), getattr(conn, "get_transaction", None)
    if info is None or get is None:
        return True
    transaction = get()
    return transaction is None or info.get(_TRAINED) is transaction


def _row_compressor(dictionary: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
    options: dict[str, Any] = {"level": ROW_LEVEL, "write_checksum": False, "write_content_size": True}
    if dictionary is not None:
        options["dict_data"] = dictionary
    return zstandard.ZstdCompressor(**options)


def _content(conn: Any, row_id: int) -> bytes | None:
    t = dictionaries_table
    content = conn.execute(select(t.c.content).where(t.c.id == row_id)).scalar()
    return bytes(content) if content else None


def pack(cctx: zstandard.ZstdCompressor, value: bytes) -> bytes:
    """The value compressed, or as it is when that is not smaller.

    zstandard returns its output in a buffer of the worst-case size (ZSTD_compressBound: the
    input's size and more), never shrunk: a 60-byte frame of a 500-byte row held ≈ 600 bytes
    until it was written, and a first import holds 200,000 of them (tracemalloc: 128 MiB of
    one 100,000-record source's 306). The frame is copied into a bytes object of its own size."""
    packed = cctx.compress(value)
    return memoryview(packed).tobytes() if len(packed) < len(value) else value


_BODY = threading.local()


def pack_body(body: bytes) -> bytes:
    """A feed body as stored: compressed without a dictionary, at zstd's fastest level."""
    cctx = getattr(_BODY, "c", None)
    if cctx is None:
        cctx = _BODY.c = zstandard.ZstdCompressor(level=BODY_LEVEL, write_checksum=True, write_content_size=True)
    return pack(cctx, body) if body else body


def unpack_body(blob: bytes | memoryview | None) -> bytes:
    """A stored feed body (compressed or, written before 0010, as it is)."""
    if blob is None:
        return b""
    blob = bytes(blob)
    if blob[:4] != MAGIC:
        return blob
    dctx = getattr(_BODY, "d", None)
    if dctx is None:
        dctx = _BODY.d = zstandard.ZstdDecompressor()
    try:
        return dctx.decompress(blob)
    except zstandard.ZstdError as exc:
        raise UndecodableBlob(f"not a readable zstd frame: {exc}") from None
