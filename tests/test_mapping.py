"""The field mapping shared by the generic sources: paths, templates, dates, timezones."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from icsfeed.config import load_config
from icsfeed.sources.file import FileSource
from icsfeed.sources.mapping import RecordError, lookup, parse_when, render_value


def test_lookup_paths() -> None:
    record = {"a": {"b": [{"c": 1}, {"c": 2}]}, "x.y": 3}
    assert lookup(record, "a.b.1.c") == 2
    assert lookup(record, "a.b.-1.c") == 2
    assert lookup(record, "a.b.5.c") is not None and lookup(record, "a.b.5.c") is not lookup(record, "a.b.1.c")
    assert render_value(record, "a.missing") is None


def test_templates_literals_and_urls() -> None:
    record = {"id": 42, "labels": {"alertname": "DiskFull"}, "org": None}
    assert render_value(record, "#{id} {labels.alertname}") == "#42 DiskFull"
    assert render_value(record, "https://helpdesk.example.com/tickets/{id}") == "https://helpdesk.example.com/tickets/42"
    assert render_value(record, "https://status.example.com/") == "https://status.example.com/"
    assert render_value(record, "=acme") == "acme"
    assert render_value(record, "{org}") is None, "a missing field makes the whole template missing"
    assert render_value(record, "{id.__class__}") is None, "no attribute access from templates"


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=timezone.utc)),
    ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, tzinfo=timezone.utc)),
    (1790000000, datetime.fromtimestamp(1790000000, timezone.utc)),
    (1790000000123, datetime.fromtimestamp(1790000000.123, timezone.utc)),
    ("1790000000", datetime.fromtimestamp(1790000000, timezone.utc)),
    ("2026-11-20", date(2026, 11, 20)),
])
def test_parse_when_formats(value: object, expected: object) -> None:
    assert parse_when(value, timezone.utc) == expected


def test_naive_times_are_read_in_the_given_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    parsed = parse_when("2026-07-01T12:00:00", berlin)
    assert parsed == datetime(2026, 7, 1, 10, tzinfo=timezone.utc)
    assert parse_when("01.07.2026 12:00", berlin, "%d.%m.%Y %H:%M") == parsed


@pytest.mark.parametrize("value", ["", "soon", None, True, {"a": 1}, "2026-13-45"])
def test_parse_when_rejects(value: object) -> None:
    with pytest.raises(RecordError):
        parse_when(value, timezone.utc)


def _source(tmp_path: Path, mapping: str, accounts: str = "[]") -> FileSource:
    (tmp_path / "c").mkdir(exist_ok=True)
    (tmp_path / "c" / "a.yaml").write_text(
        f"accounts: {accounts}\nfeeds: {{timezone: America/New_York}}\n"
        f"sources:\n  - {{id: s, type: file, path: x.json, mapping: {mapping}}}\n")
    config = load_config(tmp_path / "c", tmp_path / "d")
    return FileSource("s", config.source_settings["s"], config.source_context())  # type: ignore[arg-type]


def test_account_timezone_wins_over_source_and_default(tmp_path: Path) -> None:
    source = _source(tmp_path, "{kind: ticket, key: id, title: t, start: at, account: org}",
                     "[{id: acme, name: ACME, keys: [ACME Corp], timezone: Europe/Berlin}]")
    berlin = source.to_event({"id": 1, "t": "x", "at": "2026-07-01T12:00:00", "org": "acme corp"})
    other = source.to_event({"id": 2, "t": "x", "at": "2026-07-01T12:00:00", "org": "globex"})
    assert berlin.start == datetime(2026, 7, 1, 10, tzinfo=timezone.utc)
    assert other.start == datetime(2026, 7, 1, 16, tzinfo=timezone.utc)  # feeds.timezone New York


def test_all_day_kind_takes_the_local_day(tmp_path: Path) -> None:
    source = _source(tmp_path, "{kind: certificate, key: id, title: t, start: at, account: org, timezone: Asia/Tokyo}")
    ev = source.to_event({"id": 1, "t": "x", "at": "2026-07-01T20:00:00Z", "org": "x"})
    assert ev.start == date(2026, 7, 2) and ev.end == date(2026, 7, 3)


def test_status_map_severity_and_attrs(tmp_path: Path) -> None:
    source = _source(tmp_path, "{kind: maintenance, key: id, title: t, start: at, status: state, severity: prio, "
                               "status_map: {Geplant: tentative}, attrs: {host: h.name}, duration: 600}")
    ev = source.to_event({"id": 1, "t": "x", "at": "2026-07-01T20:00:00Z", "state": "geplant", "prio": "High", "h": {"name": "db01"}})
    assert ev.status == "tentative" and ev.severity == "High" and ev.attrs == {"host": "db01"}
    assert ev.end - ev.start == timedelta(minutes=10)
    deleted = source.to_event({"id": 2, "t": "x", "at": "2026-07-01T20:00:00Z", "state": "deleted"})
    assert deleted.status == "cancelled"


def test_kind_from_record_and_unknown_kind(tmp_path: Path) -> None:
    source = _source(tmp_path, "{kind: '{type}', key: id, title: t, start: at}")
    assert source.to_event({"id": 1, "type": "Backup", "t": "x", "at": "2026-07-01T20:00:00Z"}).kind == "backup"
    with pytest.raises(RecordError, match="unknown kind 'fax'"):
        source.to_event({"id": 1, "type": "fax", "t": "x", "at": "2026-07-01T20:00:00Z"})


def test_birthday_recurs_and_tells_its_age(tmp_path: Path) -> None:
    source = _source(tmp_path, "{kind: birthday, key: host, title: host, start: since}")
    ev = source.to_event({"host": "db01", "since": "2019-03-04"})
    assert ev.rrule == "FREQ=YEARLY" and ev.start == date(2019, 3, 4)
    age = date.today().year - 2019
    assert f"Online since 2019-03-04: {age} years this year." in ev.detail


def test_times_in_a_dst_gap_keep_real_durations(tmp_path: Path) -> None:
    """02:50 on the night Berlin springs forward does not exist; 20 minutes later is still later."""
    source = _source(tmp_path, "{kind: alert, key: id, title: t, start: at, duration: 1200, timezone: Europe/Berlin}")
    ev = source.to_event({"id": 1, "t": "x", "at": "2027-03-28T02:50:00"})
    assert ev.end.timestamp() - ev.start.timestamp() == 1200
    from icsfeed.model import Event

    assert Event.from_dict(ev.to_dict()) == ev, "what is stored can be read back"
    berlin = ZoneInfo("Europe/Berlin")
    with pytest.raises(ValueError, match="before start"):  # wall clock says later, real time says earlier
        Event(source="s", key="k", kind="alert", title="t", start=datetime(2027, 3, 28, 2, 50, tzinfo=berlin),
              end=datetime(2027, 3, 28, 3, 10, tzinfo=berlin))
