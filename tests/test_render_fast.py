"""The render fast paths equal the slow ones they replace, on hostile input (hypothesis).

``render_vevent`` writes a VEVENT from icalendar's primitives with shortcuts: a fold by byte
slices (:func:`icsfeed.render.fold_utf8`), text that needs no cleaning or escaping passed
through, cached lines for values many events share. Each shortcut is checked here against
what it stands for: icalendar's own folding (``Contentline.to_ical``), the full cleaning
steps (a copy of them below, as they were before the shortcuts) and, for whole events,
``vevent_component(...).to_ical()``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import icalendar
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icalendar.parser.content_line import Contentline

from icsfeed.config import Config, load_config
from icsfeed.model import Event
from icsfeed.render import (
    _clean_text_general,
    _clean_title_general,
    _escaped,
    clean_text,
    clean_title,
    fold_utf8,
    render_vevent,
    vevent_component,
)
from icsfeed.store import EventRow

#: characters that make text hard: escapes, fold-relevant bytes, multi-byte, controls, bidi
_HARD = "ab ,;:\\^\"\n\r\t\x00\x0b\x85\u202e\u2066é€😀\ufeff\ufffe\u0301ǅ"
TEXT = st.text(alphabet=st.sampled_from(_HARD) | st.characters(), max_size=300)
SHORT = st.text(alphabet=st.sampled_from(_HARD) | st.characters(), max_size=60)


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab\\^ ,;:é€😀\u0301"), max_size=400), st.sampled_from(["SUMMARY", "X"]))
def test_fold_is_icalendars_fold_for_any_utf8_line(text: str, name: str) -> None:
    line = f"{name}:{text}"
    assert fold_utf8(line.encode("utf-8")) == Contentline(line).to_ical()


@settings(max_examples=500, deadline=None)
@given(TEXT, st.integers(1, 200))
def test_clean_text_and_title_shortcuts_equal_the_full_cleaning(text: str, limit: int) -> None:
    assert clean_text(text, limit) == _clean_text_general(text, limit)
    assert clean_title(text, limit) == _clean_title_general(text, limit)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab ,;:\\N\n\r\"") | st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_text_needing_no_escape_is_passed_through_and_the_rest_escaped_by_icalendar(text: str) -> None:
    assert _escaped(text) == icalendar.vText(text).to_ical().decode("utf-8")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    base = tmp_path_factory.mktemp("fast")
    (base / "config").mkdir()
    (base / "config" / "icsfeed.yaml").write_text(
        "accounts: [{id: acme, name: ACME}]\nfeeds: {max_title: 60, max_detail: 400}\ninsights: {enabled: false}\n",
        encoding="utf-8")
    return load_config(Path(base / "config"), Path(base / "data"))


_ZONES = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
_TIMES = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2090, 1, 1), timezones=_ZONES)


@st.composite
def events(draw: st.DrawFn) -> EventRow:
    all_day = draw(st.booleans())
    start: datetime | date
    end: datetime | date | None
    seen = None
    if all_day:
        start = draw(st.dates(min_value=date(1971, 1, 1), max_value=date(2090, 1, 1)))
        end = draw(st.one_of(st.none(), st.integers(0, 40).map(lambda d: start + timedelta(days=d))))  # type: ignore[operator]
    else:
        start = draw(_TIMES)
        end = draw(st.one_of(st.none(), st.integers(0, 10**6).map(lambda s: start + timedelta(seconds=s))))  # type: ignore[operator]
        if end is None and draw(st.booleans()):
            seen = start + timedelta(seconds=draw(st.integers(0, 10**5)))  # type: ignore[operator]
    ev = Event(
        source="s", key=draw(st.text(min_size=1, max_size=20)),
        kind=draw(st.sampled_from(["alert", "backup", "ticket", "maintenance", "certificate", "birthday", "insight", "x"])),
        title=draw(TEXT), start=start, end=end, detail=draw(TEXT),
        url=draw(st.sampled_from([None, "https://origin.example/a?b=c,d;e", "javascript:alert(1)", "http://ex ample/é",
                                  "https://wiki.example/" + "x" * 120])),
        status=draw(st.sampled_from(["confirmed", "tentative", "cancelled"])),
        severity=draw(st.one_of(st.none(), SHORT)), seen=seen,
        rrule=draw(st.sampled_from([None, "FREQ=YEARLY", "FREQ=WEEKLY;COUNT=3"])) if all_day else None,
        alarm_before=draw(st.sampled_from([None, timedelta(days=14), timedelta(minutes=30)])),
    )
    stamp = draw(st.floats(1.0e9, 4.0e9))
    return EventRow(id=1, uid=draw(st.sampled_from(["a1b2@127.0.0.1", "x,y;z\\@host"])), event=ev,
                    sequence=draw(st.integers(0, 10**6)), created=stamp, last_modified=stamp + draw(st.floats(0, 1e6)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.sampled_from([None, "https://ics.example/view/acme?token=abc"]))
def test_fast_vevent_is_icalendars_vevent_byte_for_byte(config: Config, row: EventRow, view: str | None) -> None:
    try:
        fast = render_vevent(config, row, view)
    except (ValueError, OverflowError):
        with pytest.raises((ValueError, OverflowError)):
            vevent_component(config, row, view).to_ical()
        return
    assert fast == vevent_component(config, row, view).to_ical()
