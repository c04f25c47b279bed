"""Issue 11 (scale on one machine): what makes a poll of an unchanged origin cheap, and what
must still happen when it is skipped. Speed itself is measured in benchmarks/bench_scale.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from icalendar.parser.content_line import Contentline

from icsfeed.config import Config
from icsfeed.poller import poll_source
from icsfeed.render import fold_ascii, render_feeds
from icsfeed.sources.mapping import MappedSource

NOW = datetime.now(timezone.utc).replace(microsecond=0)
CONFIG = """
accounts:
  - {id: acme, name: Acme}
sources:
  - id: tickets
    type: file
    path: tickets.jsonl
    absence: cancel
    mapping: {kind: ticket, key: id, title: subject, start: created, account: org}
"""


def write_records(config: Config, records: list[dict[str, Any]]) -> None:
    (config.config_dir / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def records(n: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"id": i, "subject": f"ticket {i}{tag}", "org": "acme", "created": (NOW - timedelta(hours=i)).isoformat()}
            for i in range(n)]


def count_mapping(monkeypatch: Any) -> list[int]:
    """How many records the mapped sources turn into events (the work an unchanged answer skips)."""
    mapped = [0]
    original = MappedSource.to_event

    def counting(self: MappedSource, record: Any) -> Any:
        mapped[0] += 1
        return original(self, record)

    monkeypatch.setattr(MappedSource, "to_event", counting)
    return mapped


def test_unchanged_answer_is_neither_mapped_nor_written(make_env: Any, monkeypatch: Any) -> None:
    config, store = make_env({"a.yaml": CONFIG})
    write_records(config, records(20))
    mapped = count_mapping(monkeypatch)
    first = poll_source(config, store, "tickets", now=1000.0)
    assert first.ok and first.new == 20 and mapped[0] == 20
    before = {r.event.key: (r.sequence, r.last_modified) for r in store.query_events(_all())}
    again = poll_source(config, store, "tickets", now=2000.0)
    assert again.ok and again.unchanged == 20 and again.new == again.updated == 0
    assert mapped[0] == 20  # the second answer was not mapped at all
    state = store.source_state("tickets")
    assert state.last_success == 2000.0 and state.polls_total == 2 and state.last_result["answer_unchanged"]
    assert {r.event.key: (r.sequence, r.last_modified) for r in store.query_events(_all())} == before


def test_changed_answer_is_applied_and_a_vanished_event_cancelled(make_env: Any) -> None:
    config, store = make_env({"a.yaml": CONFIG})
    write_records(config, records(5))
    assert poll_source(config, store, "tickets", now=1000.0).new == 5
    assert poll_source(config, store, "tickets", now=1500.0).unchanged == 5
    write_records(config, records(4, tag=" (edited)"))  # one gone, the rest edited
    report = poll_source(config, store, "tickets", now=2000.0)
    assert report.updated == 4 and report.cancelled == 1
    rows = {r.event.key: r for r in store.query_events(_all())}
    assert rows["4"].event.status == "cancelled" and rows["0"].sequence == 1


def test_a_failed_poll_means_the_next_same_answer_is_applied_in_full(make_env: Any, monkeypatch: Any) -> None:
    config, store = make_env({"a.yaml": CONFIG})
    write_records(config, records(3))
    assert poll_source(config, store, "tickets", now=1000.0).ok
    (config.config_dir / "tickets.jsonl").unlink()
    assert not poll_source(config, store, "tickets", now=1500.0).ok
    assert store.source_state("tickets").answer_digest is None
    write_records(config, records(3))  # the very answer the events came from
    mapped = count_mapping(monkeypatch)
    report = poll_source(config, store, "tickets", now=2000.0)
    assert report.ok and report.unchanged == 3 and mapped[0] == 3  # mapped and compared again


def test_a_config_change_maps_the_same_answer_again(make_env: Any, monkeypatch: Any, tmp_path: Path) -> None:
    config, store = make_env({"a.yaml": CONFIG})
    write_records(config, records(3))
    assert poll_source(config, store, "tickets", now=1000.0).new == 3
    config2, store2 = make_env({"a.yaml": CONFIG.replace("title: subject", "title: '{subject} at {org}'")})
    mapped = count_mapping(monkeypatch)
    report = poll_source(config2, store2, "tickets", now=2000.0)
    assert mapped[0] == 3 and report.updated == 3
    assert store2.query_events(_all())[0].event.title.endswith(" at acme")


def _all() -> Any:
    from icsfeed.store import FeedQuery

    return FeedQuery(0.0, 1e11)




@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab\\^ ,;:é", max_size=400))
def test_fast_fold_is_icalendars_fold(text: str) -> None:
    line = text.replace("é", "e")  # the fast path is for ASCII lines (others go to icalendar)
    assert fold_ascii(line) == Contentline(line).to_ical().decode("ascii")


def test_flags_that_link_the_view_are_rendered_once_per_feed_not_per_render(tmp_path: Path, monkeypatch: Any) -> None:
    """Insight flags link the month view of the feed showing them, so they have no shared
    fragment; they are kept under the feed's own view key and joined by its next render."""
    from test_team_links import NOW as FLAG_NOW
    from test_team_links import _feed, _view_links, _world

    import icsfeed.render as render

    world = _world(tmp_path)
    render_feeds(world.config, world.store, now=FLAG_NOW)
    rendered: list[str] = []
    original = render.render_vevent

    def counting(config: Config, row: Any, view: str | None = None) -> bytes:
        rendered.append(row.event.kind)
        return original(config, row, view)

    monkeypatch.setattr(render, "render_vevent", counting)
    first = {f: _feed(world, f)[0] for f in ("account/acme", "team/heads-up")}
    render_feeds(world.config, world.store, now=FLAG_NOW, force=True, only=["account/acme"])
    assert "insight" not in rendered  # the account feed found its flags under its own view key
    render_feeds(world.config, world.store, now=FLAG_NOW, force=True)
    assert "insight" in rendered  # a team feed renders them with its own view (none of them stored)
    for feed_id, body in first.items():
        again, events = _feed(world, feed_id)
        assert again == body
        links = set(_view_links(events))
        assert len(links) == 1 and feed_id.rpartition("/")[2] in links.pop()


def test_stored_events_decode_as_from_dict_does() -> None:
    """Rows are decoded without re-running the Event checks; the result is the same Event,
    every field of it (a field added to Event and not decoded fails here)."""
    import dataclasses
    from datetime import date

    from icsfeed.model import Event
    from icsfeed.store.events import _encoded, stored_event

    events = [Event(source="s", key="1", kind="alert", title="t", start=NOW, end=None),
              Event(source="s", key="2", kind="birthday", title="b", start=date(2026, 1, 1), end=date(2026, 1, 2),
                    detail="d", url="https://x.example/", account="Acme", status="cancelled", severity="high",
                    attrs={"host": ["a", 1]}, rrule="FREQ=YEARLY", alarm_before=timedelta(hours=2)),
              Event(source="am", key="3", kind="alert", title="firing", start=NOW, end=None,
                    seen=NOW.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))]
    for ev in events:
        blob = _encoded(ev)[0]
        decoded = stored_event(blob)
        assert decoded == Event.from_dict(json.loads(blob)) == ev
        assert set(vars(decoded)) == {f.name for f in dataclasses.fields(Event)}


def test_poll_once_helpers_split_the_work_and_report_every_source(tmp_path: Path) -> None:
    """``icsfeed poll --once`` with a helper (icsfeed/parallel.py): the helper polls some of
    the sources, each source is polled once, and the command prints every source's report and
    fails when one failed, whichever process polled it. Today one process polls them all."""
    import sys
    from collections import Counter

    from conftest import cli
    from test_coordination import read_runs, slow_sources

    from icsfeed.config import load_config
    from icsfeed.store import Store

    names = [f"s{i}" for i in range(8)]
    runs = tmp_path / "runs.jsonl"
    config_dir = tmp_path / "config"
    from servers import write_config

    broken = ("  - {id: broken, type: command, argv: [" + json.dumps(sys.executable) + ", -c, 'import sys; sys.exit(3)'],"
              " mapping: {kind: ticket, key: id, title: t, start: s}}\n")
    write_config(config_dir, {"a.yaml": "accounts: [{id: acme, name: ACME}]\n"
                              + slow_sources(config_dir, runs, names, 3.0) + broken})
    done = cli(config_dir, tmp_path / "data", "--log-level", "INFO", "poll", "--once", timeout=240,
               env={"ICSFEED_POLL_HELPERS": "1", "ICSFEED_SECRET_KEY": "k" * 32})
    assert done.returncode == 1, done.stderr[-2000:]  # the broken source failed
    finished = [r for r in read_runs(runs) if "end" in r]
    assert Counter(str(r["source"]) for r in finished) == Counter(dict.fromkeys(names, 1))
    assert len({int(r["pid"]) for r in finished}) == 2, "the command and its helper each polled some"
    assert "[helper]: poll s" in done.stderr
    lines = done.stdout.splitlines()
    for name in names:  # every source's own report, none "not polled here"
        assert any(line.startswith(f"{name}: 5 new, ") for line in lines), done.stdout
    assert any(line.startswith("broken: ERROR") for line in lines), done.stdout
    assert "not polled here" not in done.stdout
    config = load_config(config_dir, tmp_path / "data")
    store = Store(config.storage_url)
    try:
        assert {s: n for s, n in store.event_counts().items() if s in names} == dict.fromkeys(names, 5)
        assert store.get_feed("account/acme") is not None
    finally:
        store.close()

