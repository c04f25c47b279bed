"""``file``: events from a JSON, JSON Lines or CSV file an internal system writes."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import Field

from icsfeed.model import Event
from icsfeed.sources.base import AnswerUnchanged, SourceError
from icsfeed.sources.mapping import (
    MappedSettings,
    MappedSource,
    answer_records,
    canonical_text,
)


class FileSettings(MappedSettings):
    path: str
    format: Literal["auto", "json", "jsonl", "csv"] = "auto"
    #: where the list of records is inside a JSON document (``data.items``); default: the top
    items: str | None = None
    encoding: str = "utf-8"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)


class FileSource(MappedSource):
    """Reads the whole file each poll: what is in it now is what the origin has."""

    type_name = "file"
    Settings = FileSettings
    settings: FileSettings
    absence = "keep"

    def fetch(self, since: datetime | None) -> Iterable[Event]:
        path = self.resolve_path(self.settings.path)
        limit = self.settings.max_bytes
        try:
            size = path.stat().st_size
            if size > limit:
                raise SourceError(f"{path.name}: {size} bytes is more than max_bytes ({limit})")
            with path.open("rb") as handle:  # bounded even if it grows (or is a pipe) meanwhile
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise SourceError(f"{path.name}: more than max_bytes ({limit})")
            if self.answer_unchanged(data):  # the same bytes as the stored events came from
                raise AnswerUnchanged(path.name)
            # universal newlines, as a text file is read: \r\n and \r end a line (U+2028 does not)
            text = data.decode(_encoding(self.settings.encoding), "replace")
            if "\r" in text:  # one scan of 37 MB instead of two when there is none
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            del data  # a first import of 100,000 records holds its events next: not the file's bytes too
        except LookupError:
            raise SourceError(f"unknown encoding {self.settings.encoding!r}") from None
        except FileNotFoundError:
            raise SourceError(f"file not found: {path}") from None
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None
        fmt = self.settings.format
        if fmt == "auto":
            fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower(), "json")
        if fmt == "csv":
            # the file is bounded by max_bytes already; csv's own 128 kB field limit would fail
            # the whole file over one long field
            csv.field_size_limit(max(csv.field_size_limit(), self.settings.max_bytes))
            try:
                records: list[object] = list(csv.DictReader(io.StringIO(text), delimiter=self.settings.delimiter))
            except csv.Error as exc:
                raise SourceError(f"{path.name}: not valid CSV ({exc})") from None
            texts = [canonical_text(r) for r in records]
        else:
            records, texts = answer_records(self, text, fmt, self.settings.items, path.name)
        del text  # the records (lines) are copies: the whole text need not outlive their split
        return self.events_of_answer(records, texts)


def _encoding(name: str) -> str:
    """The codec to read with: UTF-8 files may start with a byte-order mark (Excel's CSV
    export does), which is no part of the first record or column name."""
    codec = codecs.lookup(name).name
    return "utf-8-sig" if codec == "utf-8" else codec
