"""The ``ics`` source against a real HTTP server on 127.0.0.1 and real .ics text.

The calendars here are written by hand in RFC 5545 syntax (what vendors' maintenance
calendars and Google/Outlook exports look like); parsing and expansion are the real
``icalendar`` and ``recurring-ical-events``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydantic
import pytest

from icsfeed.model import Event
from icsfeed.sources import load_source_class
from icsfeed.sources.base import KindInfo, SourceContext, SourceError
from icsfeed.sources.ics import IcsSource

UTC = timezone.utc
NOW = datetime(2025, 3, 12, 12, 0, tzinfo=UTC)  # a Wednesday
SECRET_PATH = "/cal/private-s3cr3tpath/basic.ics"
SECRET_QUERY = "token=t0ps3cret"
BEARER = "b3arer-t0ken"

KINDS = {
    "alert": KindInfo(all_day=False, duration_seconds=3600),
    "backup": KindInfo(all_day=False, duration_seconds=3600),
    "ticket": KindInfo(all_day=False, duration_seconds=3600),
    "maintenance": KindInfo(all_day=False, duration_seconds=7200),
    "certificate": KindInfo(all_day=True, duration_seconds=86400),
    "birthday": KindInfo(all_day=True, duration_seconds=86400),
    "insight": KindInfo(all_day=True, duration_seconds=86400),
}

WEEKLY = """BEGIN:VEVENT
UID:weekly-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART;TZID=Europe/Berlin:20250106T220000
DTEND;TZID=Europe/Berlin:20250107T020000
RRULE:FREQ=WEEKLY;COUNT=10
EXDATE;TZID=Europe/Berlin:20250120T220000
SUMMARY:Core switch firmware
DESCRIPTION:Rolling upgrade of the core switches.\\nExpect short link flaps.
LOCATION:FRA1\\, hall 2
URL:https://status.dc.example/maintenance/weekly
X-CUSTOMER:ACME
CATEGORIES:network,acme
END:VEVENT
BEGIN:VEVENT
UID:weekly-1@dc.example
DTSTAMP:20250101T000000Z
RECURRENCE-ID;TZID=Europe/Berlin:20250203T220000
DTSTART;TZID=Europe/Berlin:20250204T230000
DTEND;TZID=Europe/Berlin:20250205T010000
SUMMARY:Core switch firmware (moved)
END:VEVENT
"""

SINGLES = """BEGIN:VEVENT
UID:allday-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART;VALUE=DATE:20250315
DTEND;VALUE=DATE:20250317
SUMMARY:Generator test
URL:ftp://files.dc.example/gen.pdf
END:VEVENT
BEGIN:VEVENT
UID:cancelled-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART:20250320T080000Z
DTEND:20250320T090000Z
STATUS:CANCELLED
SUMMARY:UPS battery swap
END:VEVENT
BEGIN:VEVENT
UID:tentative-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART:20250325T090000
DURATION:PT30M
STATUS:TENTATIVE
SUMMARY:Cooling inspection
END:VEVENT
BEGIN:VEVENT
UID:ancient-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART:20240101T080000Z
DTEND:20240101T090000Z
SUMMARY:Long ago
END:VEVENT
BEGIN:VEVENT
UID:broken-1@dc.example
DTSTAMP:20250101T000000Z
DTSTART:notadate
SUMMARY:Broken start
END:VEVENT
BEGIN:VEVENT
DTSTAMP:20250101T000000Z
DTSTART:20250318T080000Z
SUMMARY:No uid at all
END:VEVENT
"""


def calendar(*parts: str) -> bytes:
    text = "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//DC Example//Maintenance//EN\n" + "".join(parts) + "END:VCALENDAR\n"
    return text.replace("\n", "\r\n").encode()


# --- a real HTTP server ------------------------------------------------------------------------

class CalendarServer:
    """Serves one .ics body with ETag/Last-Modified and answers 304 when they match."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.send_etag = True
        self.last_modified = "Wed, 05 Mar 2025 10:00:00 GMT"
        self.requests: list[dict[str, str]] = []
        self.answers: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
                etag = '"' + hashlib.sha256(server.body).hexdigest()[:16] + '"'
                if server.status != 200:
                    self._answer(server.status, b"oops")
                    return
                inm = self.headers.get("If-None-Match")
                ims = self.headers.get("If-Modified-Since")
                not_modified = (inm == etag) if (inm and server.send_etag) else (ims == server.last_modified)
                if not_modified:
                    self._answer(304, b"", etag)
                    return
                self._answer(200, server.body, etag)

            def _answer(self, status: int, body: bytes, etag: str | None = None) -> None:
                server.answers.append(status)
                self.send_response(status)
                if etag and server.send_etag:
                    self.send_header("ETag", etag)
                self.send_header("Last-Modified", server.last_modified)
                if status != 304:
                    self.send_header("Content-Type", "text/calendar; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{SECRET_PATH}?{SECRET_QUERY}"


@pytest.fixture
def server() -> Iterator[CalendarServer]:
    srv = CalendarServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# --- helpers -----------------------------------------------------------------------------------

def make_source(tmp_path: Path, now: datetime = NOW, cursor: str | None = None, **raw: Any) -> IcsSource:
    context = SourceContext(config_dir=tmp_path, data_dir=tmp_path / "data", kinds=KINDS,
                            account_timezones={"acme": "Europe/Berlin"})
    source = IcsSource("dc-maint", IcsSource.parse_settings(raw), context)
    source.cursor = cursor
    source._now = lambda: now  # type: ignore[method-assign]
    return source


def poll(tmp_path: Path, now: datetime = NOW, cursor: str | None = None,
         **raw: Any) -> tuple[dict[str, Event], IcsSource]:
    source = make_source(tmp_path, now, cursor, **raw)
    events = list(source.fetch(None))
    by_key = {e.key: e for e in events}
    assert len(by_key) == len(events), "duplicate keys in one result"
    return by_key, source


def write_ics(tmp_path: Path, body: bytes, name: str = "dc.ics") -> str:
    (tmp_path / name).write_bytes(body)
    return name


def berlin_key(day: str) -> str:
    """Key of the weekly series' occurrence whose original start is 22:00 Berlin (UTC+1) that day."""
    return f"weekly-1@dc.example#{day}T210000Z"


# --- tests -------------------------------------------------------------------------------------

def test_registered_under_its_type_name() -> None:
    assert load_source_class("ics") is IcsSource


def test_conditional_get_returns_the_events_again_on_304(server: CalendarServer, tmp_path: Path) -> None:
    server.body = calendar(WEEKLY, SINGLES)
    first, source = poll(tmp_path, url=server.url)
    assert server.answers == [200]
    assert "if-none-match" not in server.requests[0]
    assert "text/calendar" in server.requests[0]["accept"]
    assert (tmp_path / "data" / "cache" / "dc-maint" / "http.json").is_file()

    second, _ = poll(tmp_path, cursor=source.cursor, url=server.url)
    assert server.answers == [200, 304]
    etag = '"' + hashlib.sha256(server.body).hexdigest()[:16] + '"'
    assert server.requests[1]["if-none-match"] == etag
    assert server.requests[1]["if-modified-since"] == server.last_modified
    assert second == first
    assert len(second) == 12  # 9 weekly occurrences in the window + 3 singles

    # a changed body is a 200 again, and its content wins
    server.body = calendar(WEEKLY)
    third, _ = poll(tmp_path, url=server.url)
    assert server.answers == [200, 304, 200]
    assert third["allday-1@dc.example"].status == "cancelled"  # vanished upstream


def test_last_modified_alone_is_used_when_there_is_no_etag(server: CalendarServer, tmp_path: Path) -> None:
    server.body = calendar(SINGLES)
    server.send_etag = False
    first, _ = poll(tmp_path, url=server.url)
    second, _ = poll(tmp_path, url=server.url)
    assert "if-none-match" not in server.requests[1]
    assert server.requests[1]["if-modified-since"] == server.last_modified
    assert server.answers == [200, 304]
    assert second == first and "allday-1@dc.example" in second


def test_weekly_rule_with_exdate_and_a_moved_occurrence(tmp_path: Path) -> None:
    events, source = poll(tmp_path, url=write_ics(tmp_path, calendar(WEEKLY)), account="{X-CUSTOMER}")
    expected_days = ["20250106", "20250113", "20250127", "20250203", "20250210",
                     "20250217", "20250224", "20250303", "20250310"]  # 20250120 is an EXDATE
    assert sorted(events) == sorted(berlin_key(d) for d in expected_days)
    assert source.skipped == []

    plain = events[berlin_key("20250113")]
    assert plain.kind == "maintenance"
    assert plain.title == "Core switch firmware"
    assert plain.start == datetime(2025, 1, 13, 21, 0, tzinfo=UTC)
    assert plain.end == datetime(2025, 1, 14, 1, 0, tzinfo=UTC)
    assert plain.detail == ("Rolling upgrade of the core switches.\nExpect short link flaps.\n"
                            "Location: FRA1, hall 2")
    assert plain.url == "https://status.dc.example/maintenance/weekly"
    assert plain.account == "ACME"
    assert plain.status == "confirmed"
    assert plain.attrs["upstream_uid"] == "weekly-1@dc.example"
    assert plain.attrs["recurrence_id"].startswith("2025-01-13T22:00:00")
    assert plain.attrs["categories"] == ["network", "acme"]

    moved = events[berlin_key("20250203")]  # keyed by its RECURRENCE-ID, not its new start
    assert moved.title == "Core switch firmware (moved)"
    assert moved.start == datetime(2025, 2, 4, 22, 0, tzinfo=UTC)
    assert moved.end == datetime(2025, 2, 5, 0, 0, tzinfo=UTC)


def test_all_day_cancelled_tentative_and_floating_events(tmp_path: Path) -> None:
    events, source = poll(tmp_path, url=write_ics(tmp_path, calendar(SINGLES)),
                          page_url="https://status.dc.example/", timezone="America/New_York")
    assert sorted(events) == ["allday-1@dc.example", "cancelled-1@dc.example", "tentative-1@dc.example"]

    allday = events["allday-1@dc.example"]  # stays all-day although maintenance is a timed kind
    assert (allday.start, allday.end) == (date(2025, 3, 15), date(2025, 3, 17))
    assert allday.url == "https://status.dc.example/"  # ftp: is not a page: the calendar page instead
    assert allday.attrs["recurrence_id"] is None

    assert events["cancelled-1@dc.example"].status == "cancelled"

    tentative = events["tentative-1@dc.example"]
    assert tentative.status == "tentative"
    # floating 09:00 read in the source's timezone (New York, EDT): 13:00 UTC; DURATION kept
    assert tentative.start == datetime(2025, 3, 25, 13, 0, tzinfo=UTC)
    assert tentative.end - tentative.start == timedelta(minutes=30)

    reasons = " | ".join(source.skipped)
    assert "uid='broken-1@dc.example'" in reasons and "notadate" in reasons
    assert "without UID" in reasons
    assert len(source.skipped) == 2


def test_timed_events_become_days_for_an_all_day_kind(tmp_path: Path) -> None:
    events, _ = poll(tmp_path, url=write_ics(tmp_path, calendar(WEEKLY)), kind="certificate",
                     account="acme")
    occurrence = events[berlin_key("20250113")]  # 22:00-02:00 Berlin: two calendar days there
    assert (occurrence.start, occurrence.end) == (date(2025, 1, 13), date(2025, 1, 15))
    assert occurrence.kind == "certificate"
    assert occurrence.account == "acme"


def test_account_from_categories_and_missing_property(tmp_path: Path) -> None:
    events, _ = poll(tmp_path, url=write_ics(tmp_path, calendar(WEEKLY, SINGLES)), account="cust-{CATEGORIES}")
    assert events[berlin_key("20250113")].account == "cust-network"
    assert events["allday-1@dc.example"].account is None  # no CATEGORIES: no account


def test_garbage_and_html_bodies_raise(server: CalendarServer, tmp_path: Path) -> None:
    server.body = b"this is not a calendar\r\n"
    with pytest.raises(SourceError, match="not an iCalendar document"):
        poll(tmp_path, url=server.url)
    server.body = b"<html><body>Maintenance portal</body></html>"
    with pytest.raises(SourceError, match="not an iCalendar document"):
        poll(tmp_path, url=server.url)
    server.body = b"BEGIN:VEVENT\r\nUID:x\r\nDTSTART:20250101T000000Z\r\nEND:VEVENT\r\n"
    with pytest.raises(SourceError, match="not VCALENDAR"):
        poll(tmp_path, url=server.url)
    # garbage is never cached: the next request is unconditional
    assert not (tmp_path / "data" / "cache" / "dc-maint" / "http.json").exists()
    assert all("if-none-match" not in r for r in server.requests)


def test_errors_never_show_the_secret(server: CalendarServer, tmp_path: Path) -> None:
    server.status = 500
    with pytest.raises(SourceError) as failed:
        poll(tmp_path, url=server.url, retries=0, headers={"Authorization": f"Bearer {BEARER}"})
    message = str(failed.value)
    assert "HTTP 500" in message and "127.0.0.1" in message
    for secret in ("s3cr3tpath", "t0ps3cret", BEARER):
        assert secret not in message
    assert server.requests[0]["authorization"] == f"Bearer {BEARER}"

    server.status = 401
    with pytest.raises(SourceError, match="authentication failed") as failed:
        poll(tmp_path, url=server.url, retries=0)
    assert "s3cr3tpath" not in str(failed.value)

    port = server.httpd.server_address[1]
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(SourceError, match=r"cannot connect|gave up") as failed:
        poll(tmp_path, url=f"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}", retries=0, timeout=2)
    assert "s3cr3tpath" not in str(failed.value) and "t0ps3cret" not in str(failed.value)


def test_missing_file_and_body_too_large(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        poll(tmp_path, url="nowhere.ics")
    name = write_ics(tmp_path, calendar(WEEKLY))
    with pytest.raises(SourceError, match="max_bytes"):
        poll(tmp_path, url=name, max_bytes=100)
    events, _ = poll(tmp_path, url=(tmp_path / name).as_uri())  # file:// works too
    assert len(events) == 9


def test_vanished_events_are_cancelled_but_window_leavers_are_not(tmp_path: Path) -> None:
    name = write_ics(tmp_path, calendar(WEEKLY, SINGLES))
    first, source = poll(tmp_path, url=name)
    assert len(first) == 12

    # upstream deletes the generator test and excludes one more weekly occurrence
    changed = calendar(WEEKLY.replace("EXDATE;TZID=Europe/Berlin:20250120T220000",
                                      "EXDATE;TZID=Europe/Berlin:20250120T220000,20250224T220000"),
                       SINGLES.replace("UID:allday-1@dc.example", "UID:other@dc.example"))
    write_ics(tmp_path, changed)
    second, source = poll(tmp_path, cursor=source.cursor, url=name)
    assert second["allday-1@dc.example"].status == "cancelled"
    assert second["allday-1@dc.example"].start == date(2025, 3, 15)  # the cancelled copy keeps its data
    assert second[berlin_key("20250224")].status == "cancelled"
    assert second[berlin_key("20250224")].title == "Core switch firmware"
    assert second["other@dc.example"].status == "confirmed"
    assert sum(e.status == "cancelled" for e in second.values()) == 3  # + the upstream-cancelled UPS swap

    # 40 days later the January occurrences are behind the window: not returned, not cancelled
    later = NOW + timedelta(days=40)
    third, source = poll(tmp_path, now=later, cursor=source.cursor, url=name)
    assert berlin_key("20250106") not in third and berlin_key("20250113") not in third
    assert berlin_key("20250210") in third and third[berlin_key("20250210")].status == "confirmed"
    assert all(e.status != "cancelled" or e.key in {"cancelled-1@dc.example"} for e in third.values())

    # and once nothing is in the window any more, nothing is cancelled either
    much_later = NOW + timedelta(days=400)
    fourth, _ = poll(tmp_path, now=much_later, cursor=source.cursor, url=name)
    assert fourth == {}


def test_an_event_moved_beyond_the_window_is_followed_then_cancelled(tmp_path: Path) -> None:
    name = write_ics(tmp_path, calendar(SINGLES))
    _, source = poll(tmp_path, url=name)
    moved = SINGLES.replace("DTSTART:20250320T080000Z\nDTEND:20250320T090000Z",
                            "DTSTART:20251120T080000Z\nDTEND:20251120T090000Z").replace("STATUS:CANCELLED\n", "")
    write_ics(tmp_path, calendar(moved))
    second, source = poll(tmp_path, cursor=source.cursor, url=name)
    ups = second["cancelled-1@dc.example"]
    assert ups.status == "confirmed" and ups.start == datetime(2025, 11, 20, 8, 0, tzinfo=UTC)

    # still followed while outside the window: deleted upstream now -> cancelled
    write_ics(tmp_path, calendar(moved.replace("UID:cancelled-1@dc.example", "UID:renamed@dc.example")))
    third, _ = poll(tmp_path, cursor=source.cursor, url=name)
    assert third["cancelled-1@dc.example"].status == "cancelled"
    assert third["cancelled-1@dc.example"].start == datetime(2025, 11, 20, 8, 0, tzinfo=UTC)


def test_a_moved_occurrence_outside_the_window_is_not_cancelled(tmp_path: Path) -> None:
    name = write_ics(tmp_path, calendar(WEEKLY))
    _, source = poll(tmp_path, url=name)
    far = WEEKLY.replace("RECURRENCE-ID;TZID=Europe/Berlin:20250203T220000",
                         "RECURRENCE-ID;TZID=Europe/Berlin:20250310T220000").replace(
        "DTSTART;TZID=Europe/Berlin:20250204T230000\nDTEND;TZID=Europe/Berlin:20250205T010000",
        "DTSTART;TZID=Europe/Berlin:20250901T230000\nDTEND;TZID=Europe/Berlin:20250902T010000")
    write_ics(tmp_path, calendar(far))
    second, _ = poll(tmp_path, cursor=source.cursor, url=name)
    moved = second[berlin_key("20250310")]
    assert moved.status == "confirmed"
    assert moved.start == datetime(2025, 9, 1, 21, 0, tzinfo=UTC)
    # the old override is gone, so Feb 3 is an ordinary occurrence again
    assert second[berlin_key("20250203")].title == "Core switch firmware"


def test_a_series_that_breaks_is_skipped_not_cancelled(tmp_path: Path) -> None:
    name = write_ics(tmp_path, calendar(WEEKLY, SINGLES))
    _, source = poll(tmp_path, url=name)
    broken = WEEKLY.replace("RRULE:FREQ=WEEKLY;COUNT=10", "RRULE:FREQ=WEEKLY;COUNT=ten")
    write_ics(tmp_path, calendar(broken, SINGLES))
    second, source = poll(tmp_path, cursor=source.cursor, url=name)
    assert not any(k.startswith("weekly-1") for k in second)
    assert any("uid='weekly-1@dc.example'" in reason for reason in source.skipped)
    # fixed again: everything is back, nothing was ever cancelled
    write_ics(tmp_path, calendar(WEEKLY, SINGLES))
    third, _ = poll(tmp_path, cursor=source.cursor, url=name)
    assert sum(k.startswith("weekly-1") for k in third) == 9
    assert all(e.status == "confirmed" for k, e in third.items() if k.startswith("weekly-1"))


def test_the_cursor_keeps_a_cancellation_the_store_did_not_commit(tmp_path: Path) -> None:
    name = write_ics(tmp_path, calendar(SINGLES))
    _, committed = poll(tmp_path, url=name)
    write_ics(tmp_path, calendar(SINGLES.replace("UID:allday-1@dc.example", "UID:x@dc.example")))
    lost, _ = poll(tmp_path, cursor=committed.cursor, url=name)  # the store fails to commit this one
    assert lost["allday-1@dc.example"].status == "cancelled"
    again, _ = poll(tmp_path, cursor=committed.cursor, url=name)  # the poller retries from its cursor
    assert again["allday-1@dc.example"].status == "cancelled"


def test_runaway_rules_are_bounded(tmp_path: Path) -> None:
    minutely = WEEKLY.replace("RRULE:FREQ=WEEKLY;COUNT=10", "RRULE:FREQ=MINUTELY").replace(
        "RECURRENCE-ID;TZID=Europe/Berlin:20250203T220000", "RECURRENCE-ID;TZID=Europe/Berlin:20250106T220100")
    hourly = SINGLES.replace("DTSTART:20250320T080000Z\nDTEND:20250320T090000Z",
                             "DTSTART:20250101T080000Z\nDTEND:20250101T083000Z\nRRULE:FREQ=HOURLY")
    started = time.monotonic()
    events, source = poll(tmp_path, url=write_ics(tmp_path, calendar(minutely, hourly)))
    assert time.monotonic() - started < 20
    assert not any(k.startswith("weekly-1") or k.startswith("cancelled-1") for k in events)
    reasons = " | ".join(source.skipped)
    assert "FREQ=MINUTELY is not supported" in reasons
    assert "max_occurrences" in reasons
    assert "allday-1@dc.example" in events  # the rest of the calendar is there


def test_settings_are_validated() -> None:
    settings = IcsSource.parse_settings({"url": "https://dc.example/maint.ics"})
    assert (settings.kind, settings.window_back_days, settings.window_ahead_days) == ("maintenance", 90, 60)
    assert settings.timeout == 30.0 and settings.verify_tls is True
    for bad in ({"url": "x", "colour": "red"}, {"url": "x", "timezone": "Mars/Olympus"},
                {"url": "x", "account": "{unclosed"}, {"url": ""}, {}):
        with pytest.raises(pydantic.ValidationError):
            IcsSource.parse_settings(bad)


def test_unknown_kind_fails_the_poll(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown kind"):
        poll(tmp_path, url=write_ics(tmp_path, calendar(WEEKLY)), kind="meeting")


# --- end to end: CLI poll + render ---------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_poll_and_render(server: CalendarServer, tmp_path: Path) -> None:
    import icalendar
    from conftest import cli, write_config

    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday() + 14)
    day = today + timedelta(days=5)
    weekly = (f"BEGIN:VEVENT\nUID:weekly-e2e@dc.example\nDTSTAMP:20250101T000000Z\n"
              f"DTSTART:{monday:%Y%m%d}T200000Z\nDTEND:{monday:%Y%m%d}T220000Z\nRRULE:FREQ=WEEKLY;COUNT=4\n"
              "SUMMARY:Storage controller update\nEND:VEVENT\n")
    singles = (f"BEGIN:VEVENT\nUID:allday-e2e@dc.example\nDTSTAMP:20250101T000000Z\n"
               f"DTSTART;VALUE=DATE:{day:%Y%m%d}\nDTEND;VALUE=DATE:{day + timedelta(days=1):%Y%m%d}\n"
               "SUMMARY:Generator test\nURL:https://status.dc.example/generator\nEND:VEVENT\n"
               f"BEGIN:VEVENT\nUID:single-e2e@dc.example\nDTSTAMP:20250101T000000Z\n"
               f"DTSTART:{today + timedelta(days=3):%Y%m%d}T080000Z\nDURATION:PT1H\n"
               "SUMMARY:UPS battery swap\nEND:VEVENT\n")
    server.body = calendar(weekly, singles)
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    write_config(config_dir, {"icsfeed.yaml": f"""
        accounts:
          - id: acme
            name: ACME Corp
            keys: [acme]
        sources:
          - id: dc-maintenance
            type: ics
            url: "{server.url}"
            page_url: https://status.dc.example/
            account: acme
        """})

    def run(*args: str) -> str:
        done = cli(config_dir, data_dir, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "s3cr3tpath" not in done.stdout + done.stderr and "t0ps3cret" not in done.stdout + done.stderr
        return done.stdout

    def feed() -> dict[str, Any]:
        run("render", "acme", "-o", str(tmp_path / "acme.ics"))
        parsed = icalendar.Calendar.from_ical((tmp_path / "acme.ics").read_bytes())
        return {f"{ev.get('SUMMARY')}|{ev.decoded('DTSTART')}": ev for ev in parsed.walk("VEVENT")
                if str(ev.get("SUMMARY")).startswith("🔧 ")}  # not the insight events the pipeline adds

    assert "dc-maintenance: 6 new, 0 updated" in run("poll", "--once")
    events = feed()
    assert len(events) == 6
    weekly_starts = sorted(ev.decoded("DTSTART") for k, ev in events.items() if "Storage controller" in k)
    assert weekly_starts == [datetime.combine(monday + timedelta(weeks=n), datetime.min.time(), UTC) + timedelta(hours=20)
                             for n in range(4)]
    generator = next(ev for k, ev in events.items() if "Generator test" in k)
    assert generator.decoded("DTSTART") == day and not isinstance(generator.decoded("DTSTART"), datetime)
    assert str(generator.get("URL")) == "https://status.dc.example/generator"

    # unchanged upstream: a 304, and nothing changes
    assert "0 new, 0 updated, 0 closed, 0 cancelled, 6 unchanged" in run("poll", "--once")
    assert server.answers == [200, 304]
    assert "if-none-match" in server.requests[1]

    # upstream drops the UPS swap: the feed shows it cancelled
    server.body = calendar(weekly, singles.split("BEGIN:VEVENT\nUID:single-e2e")[0])
    assert "0 new, 1 updated" in run("poll", "--once")
    ups = next(ev for k, ev in feed().items() if "UPS battery swap" in k)
    assert str(ups.get("STATUS")) == "CANCELLED"


def test_documented_example_is_valid_config(tmp_path: Path) -> None:
    from icsfeed.config import load_config

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sources" / "ics.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sources.yaml").write_text(example)
    config = load_config(tmp_path, tmp_path / "data")
    assert isinstance(config.source_settings["dc-maintenance"], IcsSource.Settings)
