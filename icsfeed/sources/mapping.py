"""Field mapping shared by the generic source types (file, http_json, command).

An admin maps an internal system's records to events in YAML, no code:

.. code-block:: yaml

    mapping:
      kind: ticket                     # a literal kind, or a template "{type}"
      key: id                          # a path into the record ...
      title: "#{id} {subject}"         # ... or a template over paths
      url: "https://helpdesk.example.com/tickets/{id}"
      start: created_at                # ISO 8601, epoch seconds or milliseconds
      account: organization.name
      status: state                    # mapped through status_map
      account_value: "=acme"           # a leading "=" makes any field a literal

A value with ``{...}`` (or a URL) is a template; otherwise it is a dotted path
(``labels.0.name``); ``=text`` is the literal ``text``. Naive times are read in the account's timezone, else the
mapping's ``timezone``, else the server default.
"""

from __future__ import annotations

import json
import operator
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone
from itertools import compress, repeat
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from icsfeed.model import Event
from icsfeed.sources.base import Source, SourceSettings

#: origin status words -> Event.status (anything else is confirmed)
DEFAULT_STATUS_MAP: dict[str, str] = {
    "tentative": "tentative", "pending": "tentative", "planned": "tentative",
    "scheduled": "tentative", "proposed": "tentative", "unconfirmed": "tentative",
    "cancelled": "cancelled", "canceled": "cancelled", "deleted": "cancelled",
    "void": "cancelled", "withdrawn": "cancelled", "rejected": "cancelled",
}

_MISSING = object()
_INDEX = re.compile(r"-?\d+")
_EPOCH = re.compile(r"\s*-?\d{9,}(\.\d+)?\s*")
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class RecordError(ValueError):
    """A record cannot become an event; the reason is logged and the record skipped."""


class FieldMapping(BaseModel):
    """How a record's fields become an Event's fields."""

    model_config = ConfigDict(extra="forbid")

    #: a literal kind (``ticket``), or a template over the record (``{type}``)
    kind: str = "alert"
    key: str
    title: str
    start: str
    end: str | None = None
    #: length of events whose record has no end (seconds); default: the kind's duration
    duration: int | None = Field(default=None, gt=0)
    detail: str | None = None
    url: str | None = None
    account: str | None = None
    severity: str | None = None
    status: str | None = None
    status_map: dict[str, str] = Field(default_factory=dict)
    #: extra values kept for filters and insights: name -> path or template
    attrs: dict[str, str] = Field(default_factory=dict)
    #: timezone of naive times when the account has none
    timezone: str | None = None
    #: strptime format for dates that are not ISO 8601 or epoch numbers
    date_format: str | None = None

    @field_validator("status_map")
    @classmethod
    def _known_statuses(cls, value: dict[str, str]) -> dict[str, str]:
        for word, status in value.items():
            if status not in ("confirmed", "tentative", "cancelled"):
                raise ValueError(f"status_map[{word!r}] must be confirmed, tentative or cancelled")
        return {str(k).lower(): v for k, v in value.items()}

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            _zone(value)
        return value


class MappedSettings(SourceSettings):
    """Settings every generic source has: the field mapping."""

    mapping: FieldMapping


# --- paths and templates ----------------------------------------------------------------

def lookup(record: Any, path: str) -> Any:
    """Value at a dotted path (``a.b.0.c``) or the missing marker."""
    return _lookup_parts(record, _path_parts(path))


def _path_parts(path: str) -> tuple[tuple[str, int | None], ...]:
    """A dotted path split once: each part, and its list index where it reads as one."""
    return tuple((part, int(part) if _INDEX.fullmatch(part) else None) for part in path.split("."))


def _lookup_parts(record: Any, parts: tuple[tuple[str, int | None], ...]) -> Any:
    value = record
    for part, index in parts:
        if type(value) is dict or isinstance(value, Mapping):
            if part in value:
                value = value[part]
                continue
            return _MISSING
        if isinstance(value, list) and index is not None:
            if -len(value) <= index < len(value):
                value = value[index]
                continue
        return _MISSING
    return value


def select_items(document: Any, path: str | None) -> list[Any]:
    """The list of records inside a document (``items: data.tickets``); raises if absent."""
    found = document if not path else lookup(document, path)
    if found is _MISSING:
        raise RecordError(f"no {path!r} in the document")
    if isinstance(found, Mapping) and not path:
        # an error object answered with 200 must fail the poll, not count as zero records
        raise RecordError("the document is an object, not a list of records (set items: to the list's path)")
    if isinstance(found, Mapping):
        return [found]
    if not isinstance(found, list):
        raise RecordError(f"{path or 'the document'} is a {type(found).__name__}, not a list of records")
    return found


class _RecordFormatter(string.Formatter):
    """str.format over a record where a field name is a dotted path, and nothing else:
    no attribute access, so a template cannot reach into Python objects. A list reads
    ``a, b`` and an object compact JSON, never Python's repr."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        value = lookup(kwargs["__record__"], field_name)
        if value is _MISSING or value is None:
            raise KeyError(field_name)
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, (list, tuple, Mapping, bool)):
            value = _text(value)
        return super().format_field(value, format_spec)


_FORMATTER = _RecordFormatter()


def render_value(record: Any, spec: str) -> Any:
    """A mapping value: ``=literal``, ``template {with} {paths}`` or ``a.path``.

    Returns None when a path or a template field is missing.
    """
    if spec.startswith("="):
        return spec[1:]
    if "{" in spec or "://" in spec:  # a URL is never a path
        try:
            return _FORMATTER.vformat(spec, (), {"__record__": record})
        except KeyError:
            return None
        except (ValueError, IndexError) as exc:
            raise RecordError(f"template {spec!r}: {exc}") from exc
    value = lookup(record, spec)
    return None if value is _MISSING else value


Getter = Callable[[Any], Any]


def compile_value(spec: str | None) -> Getter:
    """``render_value(record, spec)`` as a function of the record, worked out once per source
    instead of once per record and field: a literal, a bare field name (a dict look-up), a
    dotted path split once, a template of plain ``{path}`` fields joined directly; anything
    else (format specs, conversions, a template that does not parse) goes through
    :func:`render_value` itself, so its results and errors are the same."""
    if spec is None:
        return _none
    if spec.startswith("="):
        literal = spec[1:]
        return lambda record: literal
    if "{" in spec or "://" in spec:
        return _compile_template(spec)
    if "." not in spec:
        return lambda record: record.get(spec) if type(record) is dict else render_value(record, spec)
    parts = _path_parts(spec)

    def path(record: Any) -> Any:
        value = _lookup_parts(record, parts)
        return None if value is _MISSING else value
    return path


def _none(record: Any) -> None:
    return None


def _compile_template(spec: str) -> Getter:
    def slow(record: Any) -> Any:
        return render_value(record, spec)

    try:
        parsed = list(string.Formatter().parse(spec))
    except ValueError:  # an unbalanced brace: render_value says so for each record
        return slow
    pieces: list[tuple[str, tuple[tuple[str, int | None], ...] | None]] = []
    for literal, name, format_spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
        elif name == "" or format_spec or conversion is not None:
            return slow
        else:
            pieces.append((literal, _path_parts(name)))

    def template(record: Any) -> str | None:
        out = []
        for literal, parts in pieces:
            out.append(literal)
            if parts is not None:
                value = _lookup_parts(record, parts)
                if value is _MISSING or value is None:
                    return None
                if type(value) is str:
                    out.append(value)
                    continue
                if isinstance(value, (list, tuple, Mapping, bool)):
                    value = _text(value)
                out.append(format(value, ""))
        return "".join(out)
    return template


# --- dates --------------------------------------------------------------------------------

def _zone(name: str) -> timezone | Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def parse_when(value: Any, tz: Any, date_format: str | None = None) -> datetime | date:
    """ISO 8601 text, epoch seconds or milliseconds -> aware datetime (or a date)."""
    if (type(value) is str and value[4:5] == "-" and value[10:11] == "T" and not date_format
            and value[:4].isdigit()):  # ISO 8601 with a time: neither epoch digits nor a bare day
        try:
            parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError as exc:
            raise RecordError(f"not a date: {value.strip()[:60]!r}") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        return parsed.astimezone(timezone.utc)
    if isinstance(value, bool) or value is None:
        raise RecordError(f"not a date: {value!r}")
    if isinstance(value, datetime):
        parsed: datetime | date = value
    elif isinstance(value, date):
        return value
    elif isinstance(value, (int, float)) or (isinstance(value, str) and _EPOCH.fullmatch(value)):
        number = float(value)
        if abs(number) >= 1e11:  # milliseconds: 1e11 s is the year 5138
            number /= 1000.0
        try:
            return datetime.fromtimestamp(number, tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise RecordError(f"epoch time out of range: {value!r}") from exc
    elif isinstance(value, str):
        text = value.strip()
        try:
            if date_format:
                parsed = datetime.strptime(text, date_format)
            elif _ISO_DAY.fullmatch(text):
                return date.fromisoformat(text)
            else:
                parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError as exc:
            raise RecordError(f"not a date: {text[:60]!r}") from exc
    else:
        raise RecordError(f"not a date: {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    # an instant in UTC: later arithmetic (+ duration) is then real time, not wall-clock time
    return parsed.astimezone(timezone.utc)


def to_all_day(value: datetime | date, tz: Any) -> date:
    """The calendar day something happened on, in the account's timezone."""
    if isinstance(value, datetime):
        return value.astimezone(tz).date()
    return value


# --- records -> events ----------------------------------------------------------------------

def _text(value: Any) -> str:
    """A record's value as the text people read: a list as ``a, b``, an object as compact
    JSON (``{"nested":"object"}``), true/false as JSON writes them; never Python's repr."""
    if type(value) is str:  # most values: no abc check
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


class _Compiled:
    """A source's field mapping worked out once (see :func:`compile_value`)."""

    def __init__(self, m: FieldMapping) -> None:
        # kind is the one field where plain text is a literal, not a path
        self.kind_spec = m.kind if ("{" in m.kind or m.kind.startswith("=")) else f"={m.kind}"
        def field(spec: str | None) -> Getter:  # an empty spec is no field, as before
            return compile_value(spec) if spec else _none

        self.kind = field(self.kind_spec)
        self.key, self.title, self.start = field(m.key), field(m.title), field(m.start)
        self.end, self.detail, self.url = field(m.end), field(m.detail), field(m.url)
        self.account, self.severity, self.status = field(m.account), field(m.severity), field(m.status)
        self.attrs = [(name, compile_value(spec)) for name, spec in m.attrs.items()]


class MappedSource(Source):
    """Base of the generic types: records (dicts) in, events out via :class:`FieldMapping`.

    A full-dump type (file, command) maps through :meth:`events_of_answer`: with the digests
    of the records the stored events came from (``stored_records``, set by the poller), a
    record whose digest is known is not mapped again; its stored key is noted as present
    and unchanged (``unchanged_keys``) instead."""

    settings: MappedSettings
    _compiled_mapping: _Compiled | None = None
    _zones: dict[str | None, Any] | None = None

    def events_from(self, records: Iterable[Any]) -> Iterator[Event]:
        """Map each record; a broken one is skipped with its reason, the rest go on."""
        for record in records:
            event = self._mapped(record)
            if event is not None:
                yield event

    def _mapped(self, record: Any) -> Event | None:
        try:
            return self.to_event(record)
        except (RecordError, ValueError, TypeError, OverflowError) as exc:
            self.skip(record, str(exc) or type(exc).__name__)
            return None

    #: set by the poller: with no record known (a first import), events_of_answer may return an
    #: :class:`EventStream`, mapped as the store takes the events, instead of a list
    stream_events: bool = False

    def events_of_answer(self, records: Sequence[Any], texts: Sequence[str | None]) -> list[Event] | EventStream:
        """The events of a full dump's records, mapping only those not known unchanged.

        ``texts[i]``: the canonical text of ``records[i]`` (its JSON Lines line, its JSON),
        which with the settings (``fingerprint``) is all its event depends on; None: always
        mapped. A :class:`JsonLine` record is parsed only when it has to be mapped. When a
        known record repeats, or a mapped event has the key of a known one (an origin key
        sent twice: the last record wins), every record is mapped, as without digests.
        """
        digests = self.record_digests_of(texts)
        known = self.stored_records() if self.stored_records is not None else {}
        self.stored_known = known
        if not known and self.stream_events and isinstance(records, (list, JsonLines)):
            self.unchanged_keys = {}
            self.record_digests = {}
            return EventStream(self, records, digests)
        # each record's stored key, or None (a C-level look-up per record: most are known)
        keys = list(map(known.get, digests)) if known else [None] * len(digests)
        found = list(map(operator.is_not, keys, repeat(None)))
        unmatched = list(compress(range(len(keys)), map(operator.not_, found)))
        matched = len(keys) - len(unmatched)
        # a known record sent twice: every record is mapped (their events and the last one's wins)
        repeated = matched > 0 and len(set(compress(digests, found))) != matched
        mapped = self._map_indexed(records, unmatched)
        unchanged: dict[str, str] = dict(zip(compress(keys, found), compress(digests, found), strict=True)) if matched else {}
        if matched and (repeated or any(self.stored_key(str(ev.key)) in unchanged for _, ev in mapped)):
            matched_at = list(compress(range(len(keys)), found))
            mapped = sorted(mapped + self._map_indexed(records, matched_at), key=lambda pair: pair[0])
            unchanged = {}
        self.unchanged_keys = unchanged
        self.record_digests = {str(ev.key): digests[i] for i, ev in mapped if digests[i] is not None}  # type: ignore[misc]
        return [ev for _, ev in mapped]

    def _map_indexed(self, records: Sequence[Any], indices: list[int]) -> list[tuple[int, Event]]:
        """(index, event) of these records, in order, each parsed (a :class:`JsonLine`) and
        mapped in one go, so no more than one parsed record is held at a time. The skipped
        are reported as parse_json_lines and events_from report them: broken lines first."""
        out = []
        bad_lines: list[tuple[object, str]] = []
        bad_records: list[tuple[object, str]] = []
        for i in indices:
            record = records[i]
            if isinstance(record, JsonLine):
                try:
                    record = json.loads(record.text)
                except (ValueError, RecursionError) as exc:
                    bad_lines.append((f"line {record.number}", _bad_json(exc)))
                    continue
            try:
                out.append((i, self.to_event(record)))
            except (RecordError, ValueError, TypeError, OverflowError) as exc:
                bad_records.append((record, str(exc) or type(exc).__name__))
        for what, reason in bad_lines + bad_records:
            self.skip(what, reason)
        return out

    def _mapped_or_reason(self, record: Any) -> tuple[Event | None, str]:
        try:
            return self.to_event(record), ""
        except (RecordError, ValueError, TypeError, OverflowError) as exc:
            return None, str(exc) or type(exc).__name__

    def to_event(self, record: Any) -> Event:
        m = self.settings.mapping
        c = self._compiled_mapping
        if c is None:
            c = self._compiled_mapping = _Compiled(m)
        if type(record) is not dict and not isinstance(record, Mapping):
            raise RecordError(f"record is a {type(record).__name__}, not an object")

        def required(name: str, getter: Getter, spec: str) -> Any:
            value = getter(record)
            if value is None or (_text(value).strip() == "" if not isinstance(value, str) else value.strip() == ""):
                raise RecordError(f"missing {name} ({spec})")
            return value

        kind = _text(required("kind", c.kind, c.kind_spec)).strip().lower()
        kind_info = self.context.kinds.get(kind)
        if kind_info is None:
            raise RecordError(f"unknown kind {kind!r}")
        key = _text(required("key", c.key, m.key)).strip()
        account = c.account(record)
        account = _text(account).strip() or None if account is not None else None
        tz = self._zone_for(account, m.timezone)

        start = parse_when(required("start", c.start, m.start), tz, m.date_format)
        end_raw = c.end(record)
        end = parse_when(end_raw, tz, m.date_format) if end_raw not in (None, "") else None
        if kind_info.all_day:
            start = to_all_day(start, tz)
            end = to_all_day(end, tz) + timedelta(days=1) if end is not None else start + timedelta(days=1)
        else:
            if not isinstance(start, datetime):
                start = datetime.combine(start, time(0), tz)
            if end is not None and not isinstance(end, datetime):
                end = datetime.combine(end, time(0), tz)
            if end is None and m.duration:
                end = start + timedelta(seconds=m.duration)

        status_word = _text(c.status(record)).strip().lower()
        status = m.status_map.get(status_word) or DEFAULT_STATUS_MAP.get(status_word, "confirmed")
        severity = _text(c.severity(record)).strip() or None
        detail = _text(c.detail(record))
        attrs = {name: v for name, getter in c.attrs if (v := getter(record)) is not None}
        rrule = None
        if kind == "birthday":
            rrule = "FREQ=YEARLY"
            detail = _birthday_detail(detail, start)

        url = c.url(record)
        return Event.mapped(self.id, key, kind, _text(required("title", c.title, m.title)), start, end, detail,
                            _text(url).strip() or None if url is not None else None, account, status,
                            severity, attrs, rrule)

    def _zone_for(self, account: str | None, fallback: str | None) -> Any:
        """``context.timezone_for``, looked up once per account per poll."""
        zones = self._zones
        if zones is None:
            zones = self._zones = {}
        zone = zones.get(account)
        if zone is None:
            zone = zones[account] = self.context.timezone_for(account, fallback)
        return zone


class EventStream:
    """The events of a full dump's records when none is known (a first import, or after a
    failure or a push): each record parsed and mapped when its event is taken, and let go of
    then, so a poll of 100,000 records holds no list of 100,000 Events (``Store.apply_poll``
    takes them one at a time). Iterated once. As :meth:`MappedSource.events_of_answer`'s list:
    the same events in the same order, ``record_digests`` filled as each one comes (before it
    is taken), and the skipped reported once the last is taken: broken lines first, then the
    records that do not map."""

    def __init__(self, source: MappedSource, records: list[Any], digests: list[str | None]) -> None:
        self.source, self.records, self.digests = source, records, digests
        #: events taken so far
        self.count = 0

    def __iter__(self) -> Iterator[Event]:
        source, records, digests = self.source, self.records, self.digests
        self.records = []  # iterated once
        out = source.record_digests
        bad_lines: list[tuple[object, str]] = []
        bad_records: list[tuple[object, str]] = []
        for i in range(len(records)):
            record = records[i]
            records[i] = None  # its text is not needed past its event
            if isinstance(record, JsonLine):
                try:
                    record = json.loads(record.text)
                except (ValueError, RecursionError) as exc:
                    bad_lines.append((f"line {record.number}", _bad_json(exc)))
                    continue
            event, reason = source._mapped_or_reason(record)
            if event is None:
                bad_records.append((record, reason))
                continue
            digest = digests[i]
            if digest is not None:
                out[str(event.key)] = digest
            self.count += 1
            yield event
        for what, reason in bad_lines + bad_records:
            source.skip(what, reason)


def _birthday_detail(detail: str, born: date | datetime) -> str:
    day = born if not isinstance(born, datetime) else born.date()
    age = date.today().year - day.year
    line = f"Online since {day.isoformat()}: {age} year{'s' if age != 1 else ''} this year."
    return f"{detail}\n{line}" if detail else line


def parse_json_document(text: str | bytes, what: str) -> Any:
    """JSON or a SourceError that says what was wrong (never half a document)."""
    from icsfeed.sources.base import SourceError

    if isinstance(text, str):
        text = text.removeprefix("\ufeff")  # a byte-order mark is no part of the document
    try:
        return json.loads(text)
    except RecursionError:
        raise SourceError(f"{what}: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        if isinstance(text, bytes):  # invalid UTF-8 inside a string: lose those bytes, not the document
            return parse_json_document(text.decode("utf-8", "replace"), what)
        raise SourceError(f"{what}: not valid JSON ({str(exc)[:120]})") from None
    except ValueError as exc:
        raise SourceError(f"{what}: not valid JSON ({str(exc)[:120]})") from None


def records_in(source: Source, text: str | bytes, fmt: str, items: str | None, what: str) -> list[Any]:
    """The records of a JSON document (the list at ``items``) or of JSON Lines; a document
    that cannot be read fails the poll (SourceError), a bad line is skipped."""
    from icsfeed.sources.base import SourceError

    if fmt == "jsonl":
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig", "replace")
        return parse_json_lines(text.removeprefix("\ufeff"), source)
    try:
        return select_items(parse_json_document(text, what), items)
    except RecordError as exc:
        raise SourceError(f"{what}: {exc}") from None


def parse_json_lines(text: str, source: Source) -> list[Any]:
    """JSON Lines: a broken line is skipped with its line number, the rest go on.

    Lines end at ``\n`` only (a ``\r`` before it is JSON whitespace): U+2028, U+2029,
    U+0085 and the other characters ``str.splitlines`` breaks at are text inside a record.
    """
    return [record for line in json_lines(text) if (record := line.parsed(source)) is not _MISSING]


class JsonLine(NamedTuple):
    """One non-blank line of a JSON Lines text, parsed when needed."""

    number: int
    text: str

    def parsed(self, source: Source) -> Any:
        """The line's record, or the missing marker (skipped with its line number)."""
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError) as exc:
            source.skip(f"line {self.number}", _bad_json(exc))
            return _MISSING


def _bad_json(exc: Exception) -> str:
    return f"not valid JSON ({str(exc)[:80]})"


def json_lines(text: str) -> list[JsonLine]:
    """The non-blank lines of JSON Lines text (see :func:`parse_json_lines`)."""
    return [JsonLine(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


class JsonLines(Sequence[JsonLine]):
    """:func:`json_lines` of a text as a sequence made on demand: the non-blank lines' texts
    (one C-level filter), and a :class:`JsonLine` built only for the lines that are read — a
    full dump of 100,000 lines of which 1% changed builds 1,000, not 100,000 (≈ 3 µs a line).
    ``lines[i] = None`` lets go of a line's text (:class:`EventStream`)."""

    def __init__(self, text: str) -> None:
        parts = text.split("\n")
        #: the non-blank lines' texts, in order
        self.texts: list[str | None] = list(filter(str.strip, parts))
        blank_last = bool(parts) and not parts[-1].strip()
        # line numbers are positions + 1 unless a blank line comes before a non-blank one
        self._numbers: list[int] | None = None
        if len(self.texts) != len(parts) - (1 if blank_last else 0):
            self._numbers = [number for number, line in enumerate(parts, 1) if line.strip()]

    def __len__(self) -> int:
        return len(self.texts)

    def number(self, i: int) -> int:
        return self._numbers[i] if self._numbers is not None else i + 1

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        text = self.texts[i]
        return None if text is None else JsonLine(self.number(i), text)

    def __setitem__(self, i: int, value: None) -> None:
        self.texts[i] = None


def answer_records(source: Source, text: str | bytes, fmt: str, items: str | None,
                   what: str) -> tuple[Sequence[Any], Sequence[str | None]]:
    """:func:`records_in` for :meth:`MappedSource.events_of_answer`: the records and their
    canonical texts (a JSON Lines line as sent, unparsed; a document's record as JSON)."""
    if fmt == "jsonl":
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig", "replace")
        lines = JsonLines(text.removeprefix("\ufeff"))
        return lines, list(lines.texts)
    records = records_in(source, text, fmt, items, what)
    return records, [canonical_text(r) for r in records]


def canonical_text(record: Any) -> str | None:
    """A parsed record as text that tells it apart from every other (keys in their order, as
    mapping reads them: an object's compact JSON keeps that order); None when it has none."""
    try:
        if isinstance(record, Mapping):  # CSV rows may hold a None key (fields past the header)
            return json.dumps([[k, v] for k, v in record.items()])
        return json.dumps(record)
    except (TypeError, ValueError, RecursionError):
        return None
