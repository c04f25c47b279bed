"""Issue 11, the poll path: a full dump in which 1% of the records changed maps that 1%
(a digest per origin record, kept with its event), and the compiled field mapping. Each fast
path is checked against the slow one: the rows a poll stores are the rows a poll that maps
every record stores, whatever the answers do (edit, move, drop, duplicate a key, come back).
Speed is measured in benchmarks/bench_scale.py."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
import tempfile
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import open_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import write_config
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from test_scale import count_mapping

import icsfeed.poller as poller
from icsfeed.config import Config, load_config
from icsfeed.poller import poll_source
from icsfeed.sources.mapping import RecordError, compile_value, render_value
from icsfeed.store import Store
from icsfeed.store.schema import events_table

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def config_text(path: str = "tickets.jsonl", title: str = "subject", extra: str = "") -> str:
    return f"""
accounts:
  - {{id: acme, name: Acme, timezone: Europe/Berlin}}
  - {{id: globex, name: Globex}}
sources:
  - id: tickets
    type: file
    path: {path}
    absence: cancel
    mapping: {{kind: ticket, key: id, title: '{title}', start: created, account: org, detail: body,
               url: "https://desk.example/t/{{id}}", attrs: {{prio: prio.level, tags: tags}}{extra}}}
"""


def record(i: int, tag: str = "", **more: Any) -> dict[str, Any]:
    return {"id": i, "subject": f"ticket {i}{tag}", "org": ("acme", "globex", None)[i % 3],
            "created": (NOW - timedelta(hours=i)).replace(tzinfo=None).isoformat(), "body": f"line one\nline {i}",
            "prio": {"level": ("low", "high")[i % 2]}, "tags": ["a", f"t{i}"], **more}


def write_answer(config: Config, records: list[dict[str, Any]], path: str = "tickets.jsonl") -> None:
    target = config.config_dir / path
    if path.endswith(".jsonl"):
        target.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.endswith(".json"):
        target.write_text(json.dumps({"data": records}), encoding="utf-8")
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["id", "subject", "org", "created", "body"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        target.write_text(out.getvalue(), encoding="utf-8")


class World:
    """A config directory and store of their own; ``full``: never skips a record (the slow path)."""

    def __init__(self, base: Path, text: str, *, full: bool) -> None:
        self.config, self.store = open_env(write_config(base / "config", {"a.yaml": text}), base / "data")
        self.full = full
        if full:  # no stored record digests: every record is mapped, as before the change
            self.store.record_digests = lambda source_id: {}  # type: ignore[method-assign]

    def forget_kept_records(self) -> None:
        """Remove the present rows the last poll kept (poller._keep_records): the next poll reads the store."""
        (self.config.data_dir / "cache" / "tickets" / poller.RECORDS_STATE).unlink(missing_ok=True)

    def poll(self, records: list[dict[str, Any]], now: float, path: str = "tickets.jsonl") -> Any:
        write_answer(self.config, records, path)
        if self.full:  # nor the ones the last poll kept
            self.forget_kept_records()
        return poll_source(self.config, self.store, "tickets", now=now)

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every stored column of every event but its row id, by key."""
        t = events_table
        columns = [c for c in t.c if c.name != "id"]
        with self.store.engine.connect() as conn:
            return {r.key: r._asdict() for r in conn.execute(select(*columns))}


@pytest.fixture
def worlds(tmp_path: Path, another_store: Callable[[], None]) -> Callable[..., tuple[World, World]]:
    made: list[World] = []

    def make(text: str | None = None) -> tuple[World, World]:
        fast = World(tmp_path / "fast", text or config_text(), full=False)
        another_store()
        slow = World(tmp_path / "slow", text or config_text(), full=True)
        made.extend((fast, slow))
        return fast, slow

    yield make
    for world in made:
        world.store.close()


def report_counts(report: Any) -> tuple[Any, ...]:
    return (report.ok, report.new, report.updated, report.unchanged, report.closed, report.cancelled,
            len(report.skipped))


# --- the record digest -----------------------------------------------------------------------

ANSWERS: list[Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = [
    lambda base: base,                                                        # the first import
    lambda base: [record(i, " (edited)") if i in (3, 7) else r for i, r in enumerate(base)],  # 2 edited
    lambda base: [*list(reversed(base[:-2])), record(50)],                    # moved, 2 dropped, 1 new
    lambda base: base,                                                        # the dropped come back
    lambda base: [*base, record(4, " (second)")],                             # a key sent twice
    lambda base: [*base[:4], {"id": 99, "subject": "no start"}, *base[4:]],   # a broken record
    lambda base: [record(i, " (edited)") if i == 5 else r for i, r in enumerate(base)],  # after all that
]


def test_each_answer_stores_exactly_what_mapping_every_record_stores(worlds: Any, monkeypatch: Any) -> None:
    fast, slow = worlds()
    base = [record(i) for i in range(12)]
    mapped = count_mapping(monkeypatch)
    maps = []
    for step, answer in enumerate(ANSWERS):
        records = answer(base)
        now = 1000.0 + 100 * step
        before = mapped[0]
        got = fast.poll(records, now)
        maps.append(mapped[0] - before)
        want = slow.poll(records, now)
        assert report_counts(got) == report_counts(want), step
        assert got.skipped == want.skipped, step
        assert fast.rows() == slow.rows(), step
        assert fast.store.source_state("tickets").last_result == slow.store.source_state("tickets").last_result
    # the first import maps all; two edits map two; the dropped that came back are mapped (their
    # rows were cancelled); a key sent twice maps everything (the last record wins, as before)
    # (each answer is made from the first one: 3 and 7 are edited back in the third)
    assert maps[:4] == [12, 2, 2 + 1, 2]
    assert maps[4] == 13 and maps[5] == 1 + 1  # the key sent once again, and the broken record
    assert maps[6] == 1
    assert all(row["record_digest"] for row in fast.rows().values() if not row["gone"])


@pytest.mark.parametrize("path", ["tickets.json", "tickets.csv"])
def test_json_documents_and_csv_map_only_changed_records(worlds: Any, monkeypatch: Any, path: str) -> None:
    text = config_text(path).replace("type: file", "type: file\n    items: data" if path.endswith(".json") else "type: file")
    fast, slow = worlds(text)
    base = [record(i) for i in range(6)]
    mapped = count_mapping(monkeypatch)
    for step, records in enumerate([base, [record(2, " (x)") if i == 2 else r for i, r in enumerate(base)]]):
        before = mapped[0]
        got, want = fast.poll(records, 1000.0 + step, path), slow.poll(records, 1000.0 + step, path)
        assert report_counts(got) == report_counts(want) and fast.rows() == slow.rows()
    assert mapped[0] - before == 1 + 6  # the fast world mapped the one edited record, the slow one all six
    assert got.updated == 1 and got.unchanged == 5


def test_command_output_maps_only_changed_records(tmp_path: Path, monkeypatch: Any) -> None:
    text = config_text().replace("type: file\n    path: tickets.jsonl",
                                 f"type: command\n    argv: [{sys.executable}, -c, 'print(open(\"tickets.jsonl\").read())']\n"
                                 "    format: jsonl")
    world = World(tmp_path, text, full=False)
    mapped = count_mapping(monkeypatch)
    base = [record(i) for i in range(5)]
    assert world.poll(base, 1000.0).new == 5 and mapped[0] == 5
    report = world.poll([record(1, " (x)") if i == 1 else r for i, r in enumerate(base)], 1100.0)
    assert (report.updated, report.unchanged, mapped[0]) == (1, 4, 6)
    world.store.close()


def test_a_settings_change_or_a_new_year_maps_every_record(tmp_path: Path, monkeypatch: Any) -> None:
    world = World(tmp_path, config_text(), full=False)
    base = [record(i) for i in range(4)]
    world.poll(base, 1000.0)
    mapped = count_mapping(monkeypatch)
    edited = [record(0, " (x)"), *base[1:]]

    class NextYear(date):
        @classmethod
        def today(cls) -> NextYear:
            return cls(date.today().year + 1, 1, 1)

    with monkeypatch.context() as patched:  # the year is part of every record's digest
        patched.setattr(poller, "date", NextYear)
        assert world.poll(edited, 1100.0).updated == 1 and mapped[0] == 4
    world.store.close()
    mapped[0] = 0
    changed = World(tmp_path, config_text(title="{subject}!"), full=False)  # the same store, a new mapping
    report = changed.poll(edited, 1200.0)
    assert mapped[0] == 4 and report.updated == 4
    assert {json.loads(changed.store.codec.text(r["data"]))["title"] for r in changed.rows().values()} == \
        {"ticket 0 (x)!", "ticket 1!", "ticket 2!", "ticket 3!"}
    changed.store.close()


def test_a_poll_the_store_refuses_half_way_then_a_good_one(worlds: Any, monkeypatch: Any) -> None:
    fast, slow = worlds()
    base = [record(i) for i in range(8)]
    fast.poll(base, 1000.0), slow.poll(base, 1000.0)
    kept = fast.rows()
    second = [record(i, " (edited)") if i < 3 else r for i, r in enumerate(base)] + [record(20)]
    store_type = type(fast.store)
    original = store_type._bulk_update

    def failing(self: Store, conn: Any, updates: list[dict[str, Any]]) -> None:
        original(self, conn, updates[:1])  # one row written inside the transaction, then the database fails
        raise OperationalError("UPDATE events", {}, Exception("disk I/O error"))

    with monkeypatch.context() as patched:
        patched.setattr(store_type, "_bulk_update", failing)
        assert not fast.poll(second, 1100.0).ok
    assert fast.rows() == kept  # nothing of that poll is stored
    mapped = count_mapping(monkeypatch)
    got, want = fast.poll(second, 1200.0), slow.poll(second, 1200.0)
    assert mapped[0] == 9 + 9  # after a failure every record is mapped again (both worlds)
    assert report_counts(got) == report_counts(want) and fast.rows() == slow.rows()
    mapped[0] = 0
    third = [record(5, " (again)") if i == 5 else r for i, r in enumerate(second)]
    got, want = fast.poll(third, 1300.0), slow.poll(third, 1300.0)
    assert mapped[0] == 1 + 9 and fast.rows() == slow.rows()


def test_an_event_changed_during_the_poll_refuses_it_and_the_next_maps_all(worlds: Any, monkeypatch: Any) -> None:
    """A row another writer (a push) changes between reading the record digests and storing
    the poll: the poll is refused instead of keeping the pushed row as if the record said so."""
    fast, slow = worlds()
    base = [record(i) for i in range(5)]
    fast.poll(base, 1000.0), slow.poll(base, 1000.0)
    edited = [record(0, " (x)"), *base[1:]]
    reads = fast.store.record_digests

    def read_then_push(source_id: str) -> dict[str, str]:
        known = reads(source_id)
        row = {r.event.key: r for r in fast.store.query_events(_all())}["3"]
        fast.store.apply_poll("tickets", [row.event.bounded(10, 10)], absence="keep", complete=False,
                              now=1050.0, previous_success=1000.0, record=False)
        return known

    fast.store.record_digests = read_then_push  # type: ignore[method-assign]
    fast.forget_kept_records()  # read from the store (the kept ones: the next test)
    report = fast.poll(edited, 1100.0)
    assert not report.ok and "changed during its poll" in (report.error or "")
    fast.store.record_digests = reads  # type: ignore[method-assign]
    mapped = count_mapping(monkeypatch)
    got, _want = fast.poll(edited, 1200.0), slow.poll(edited, 1200.0)
    assert mapped[0] == 5 + 5 and got.updated == 2  # ticket 0 edited, ticket 3 back to its record
    assert fast.rows()["0"] == slow.rows()["0"]
    pushed_back, reference = fast.rows()["3"], slow.rows()["3"]
    assert (pushed_back["data"], pushed_back["record_digest"]) == (reference["data"], reference["record_digest"])


def _all() -> Any:
    from icsfeed.store import FeedQuery

    return FeedQuery(0.0, 1e11)


# --- the compiled mapping --------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "id", "a.b", "0", "-1", "x y", "é", "", "subject", "org", "body", "prio", "level",
                         "tags", "created"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                   st.text(max_size=8))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
                      max_leaves=8)
RECORDS = st.dictionaries(NAMES, VALUES, max_size=5)
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(".".join)
SPECS = st.one_of(
    PATHS, PATHS.map(lambda p: "=" + p),
    st.lists(st.one_of(PATHS.map(lambda p: "{" + p + "}"), st.text(alphabet="ab :/{}!.", max_size=4)),
             max_size=4).map("".join),
    PATHS.map(lambda p: "https://x.example/{" + p + "}"), PATHS.map(lambda p: "{" + p + ":>4}"),
    PATHS.map(lambda p: "{" + p + "!r}"), st.just("{}"), st.just("{0}"), st.just("a://b"), st.just("{a}}"),
)


def outcome(function: Callable[[], Any]) -> Any:
    try:
        return ("value", function())
    except RecordError as exc:
        return ("error", str(exc))


@settings(max_examples=1500, deadline=None)
@given(RECORDS, SPECS)
def test_compiled_mapping_is_render_value(record: dict[str, Any], spec: str) -> None:
    assert outcome(lambda: compile_value(spec)(record)) == outcome(lambda: render_value(record, spec))


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS, max_size=6), st.sampled_from(["subject", "{subject} ({org})", "=fixed", "a.b"]))
def test_compiled_to_event_is_the_render_value_mapping(records: list[dict[str, Any]], title: str) -> None:
    """Hostile records through a whole source: the same events and skips as mapping each field
    with render_value (the code before the compiled mapping)."""
    config = _mapping_config(title)
    source = poller.build_source(config, "tickets")
    reference = poller.build_source(config, "tickets")
    reference.__dict__["_compiled_mapping"] = _RenderValueMapping(config, "tickets")
    for r in records:
        r.setdefault("id", "k")
        r.setdefault("created", "2026-01-02T03:04:05")
    assert outcome(lambda: list(source.events_from(records))) == outcome(lambda: list(reference.events_from(records)))
    assert source.skipped == reference.skipped


@functools.cache
def _mapping_config(title: str) -> Config:
    base = Path(tempfile.mkdtemp(prefix="icsfeed-mapping-"))
    return load_config(write_config(base / "config", {"a.yaml": config_text(title=title)}), base / "data")


class _RenderValueMapping:
    """The mapping of the code before: every field through render_value, per record."""

    def __init__(self, config: Config, source_id: str) -> None:
        m = config.source_settings[source_id].mapping  # type: ignore[attr-defined]
        self.kind_spec = m.kind if ("{" in m.kind or m.kind.startswith("=")) else f"={m.kind}"

        def slow(spec: str | None) -> Callable[[Any], Any]:
            return (lambda record: render_value(record, spec)) if spec else (lambda record: None)

        self.kind, self.key, self.title, self.start = slow(self.kind_spec), slow(m.key), slow(m.title), slow(m.start)
        self.end, self.detail, self.url = slow(m.end), slow(m.detail), slow(m.url)
        self.account, self.severity, self.status = slow(m.account), slow(m.severity), slow(m.status)
        self.attrs = [(name, (lambda s: lambda record: render_value(record, s))(spec)) for name, spec in m.attrs.items()]


def test_a_poll_naming_most_rows_unchanged_reads_only_the_mapped_rows_and_stores_the_same(
        worlds: Any, monkeypatch: Any) -> None:
    """A 1% change of a full dump (``apply_poll``'s sparse path: most rows ``known``) reads the
    full stored columns of the events it maps only, a batch at a time (here batches of 7, so a
    key sent twice, edits, moves and drops fall in different batches), and stores exactly what
    the poll that maps every record stores."""
    import icsfeed.store.events as store_events

    monkeypatch.setattr(store_events, "SPARSE_BATCH", 7)
    read_keys: list[int] = []
    stored_rows = store_events._stored_rows

    def counting(conn: Any, source_id: str, keys: Any = None) -> Any:
        rows = stored_rows(conn, source_id, keys)
        if keys is not None:
            read_keys.append(len(rows))
        return rows

    monkeypatch.setattr(store_events, "_stored_rows", counting)
    fast, slow = worlds()
    base = [record(i) for i in range(60)]
    answers = [
        base,
        [record(i, " (edited)") if i % 13 == 0 else r for i, r in enumerate(base)],  # 5 edited
        [*[r for i, r in enumerate(base) if i not in (8, 40)], record(70), record(71)],  # 2 dropped, 2 new
        [*base, record(9, " (again)"), record(33, " (again)")],  # two keys sent twice, far apart
        base,  # the dropped come back, the edits go back
    ]
    for step, records in enumerate(answers):
        now = 2000.0 + 100 * step
        read_keys.clear()
        got = fast.poll(records, now)
        want = slow.poll(records, now)
        assert report_counts(got) == report_counts(want), step
        assert fast.rows() == slow.rows(), step
        if step in (1, 2):  # the sparse path: only the mapped keys' rows read whole (5 edited, then
            # the same 5 back to their records), and at step 2 the 2 dropped rows, by key
            assert read_keys and sum(read_keys) <= (5, 7)[step - 1], (step, read_keys)
        if step == 2:  # the dropped rows were found by the light read of every row, and cancelled
            rows = fast.rows()
            assert rows["8"]["gone"] and rows["40"]["gone"] and not rows["9"]["gone"]


# --- the lines and digests of a whole answer --------------------------------------------------

LINE_TEXT = st.text(alphabet=st.sampled_from(["a", "{", "}", " ", "\t", "\n", "\r", "\u2028", "é", "\x00", "\ud800"]),
                    max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=LINE_TEXT)
def test_json_lines_made_on_demand_are_json_lines(text: str) -> None:
    """``JsonLines`` (texts filtered in C, a JsonLine built when read) gives, line for line
    and number for number, what ``json_lines`` gives, blank lines anywhere."""
    from icsfeed.sources.mapping import JsonLines, json_lines

    lines = JsonLines(text)
    assert list(lines) == json_lines(text)
    assert [lines[i] for i in range(len(lines))] == json_lines(text)
    assert lines.texts == [line.text for line in json_lines(text)]
    if len(lines):
        lines[0] = None  # let go of a line's text (EventStream)
        assert lines[0] is None and lines.texts[0] is None


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.one_of(st.none(), LINE_TEXT), max_size=8), fingerprint=st.binary(max_size=2000))
def test_record_digests_of_an_answer_are_each_records_digest(texts: list[str | None], fingerprint: bytes) -> None:
    from icsfeed.sources.file import FileSource

    source = FileSource.__new__(FileSource)
    source.fingerprint = fingerprint
    want = [source.record_digest(t) if t is not None else None for t in texts]
    assert source.record_digests_of(texts) == want
    assert all(d is None or len(d) == 32 for d in want)  # the column holds 32 characters
    source.fingerprint = fingerprint + b"x"  # another fingerprint: other digests
    assert all(a != b for a, b in zip(source.record_digests_of(texts), want, strict=True) if a is not None)


OPS = st.lists(st.tuples(st.sampled_from(["edit", "drop", "new", "twice", "broken", "push", "reverse", "same"]),
                         st.integers(0, 14)), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=OPS)
def test_a_poll_reads_every_stored_row_once_and_stores_what_mapping_every_record_stores(
        tmp_path: Path, another_store: Callable[[], None], monkeypatch: Any, steps: list[tuple[str, int]]) -> None:
    """The store takes the source's read of every row (``record_digests``) instead of reading
    them again, under the answer digest it was read with: after any answers (edits, drops, new
    keys, a key sent twice, broken records, pushes between polls) the rows, reports and results
    are those of a poll that maps every record, and no poll reads every row a second time."""
    import icsfeed.store.events as store_events

    second_reads: list[str] = []
    present_rows = store_events._present_rows

    def counted(conn: Any, source_id: str) -> Any:
        second_reads.append(source_id)
        return present_rows(conn, source_id)

    monkeypatch.setattr(store_events, "_present_rows", counted)
    base = Path(tempfile.mkdtemp(dir=tmp_path))  # each example's worlds of their own (databases too)
    another_store()
    fast = World(base / "fast", config_text(), full=False)
    another_store()
    slow = World(base / "slow", config_text(), full=True)
    try:
        _poll_both(fast, slow, steps)
    finally:
        fast.store.close()
        slow.store.close()
    assert second_reads == []


def _poll_both(fast: World, slow: World, steps: list[tuple[str, int]]) -> None:
    answer = [record(i) for i in range(12)]
    fast.poll(answer, 1000.0), slow.poll(answer, 1000.0)
    for step, (op, i) in enumerate(steps):
        now = 2000.0 + 100 * step
        if op == "edit":
            answer = [record(j, f" (edit {step})") if j == i else r for j, r in enumerate(answer)]
        elif op == "drop":
            answer = [r for j, r in enumerate(answer) if j != i]
        elif op == "new":
            answer = [*answer, record(100 + step)]
        elif op == "twice" and answer:
            answer = [*answer, {**answer[i % len(answer)], "subject": f"again {step}"}]
        elif op == "broken":
            answer = [*answer[:i], {"id": 500 + step, "subject": "no start"}, *answer[i:]]
        elif op == "reverse":
            answer = list(reversed(answer))
        elif op == "push":  # a pushed event of a polled key, in both worlds: the next poll maps all
            for world in (fast, slow):
                row = {r.event.key: r for r in world.store.query_events(_all())}.get(str(i))
                if row is not None:
                    world.store.apply_poll("tickets", [row.event.bounded(10, 10)], absence="keep", complete=False,
                                           now=now - 50, previous_success=now - 100, record=False)
        got, want = fast.poll(answer, now), slow.poll(answer, now)
        assert report_counts(got) == report_counts(want), (step, op)
        assert got.skipped == want.skipped, (step, op)
        assert fast.rows() == slow.rows(), (step, op)
        assert fast.store.source_state("tickets").answer_digest == slow.store.source_state("tickets").answer_digest
        state = fast.store.source_state("tickets")
        if state.answer_digest is not None:  # what the poll kept for the next one is what the store holds
            kept = poller._kept_records(poller.build_source(fast.config, "tickets"), state.answer_digest)
            stored = fast.store.record_digests("tickets")
            assert kept is not None and kept == stored and sorted(kept.others) == sorted(stored.others), (step, op)


def test_a_poll_of_kept_records_reads_no_stored_row_but_the_mapped_and_a_push_meanwhile_refuses_it(
        worlds: Any, monkeypatch: Any) -> None:
    """The next poll takes the present rows the last one kept (no read of every row); a push
    after they were taken (during the poll) clears the answer digest, so the store refuses the
    poll, and the next one maps every record and stores what the slow path stores."""
    fast, slow = worlds()
    base = [record(i) for i in range(20)]
    fast.poll(base, 1000.0), slow.poll(base, 1000.0)
    reads: list[str] = []
    read = fast.store.record_digests

    def counted(source_id: str) -> Any:
        reads.append(source_id)
        return read(source_id)

    fast.store.record_digests = counted  # type: ignore[method-assign]
    edited = [record(i, " (edited)") if i == 4 else r for i, r in enumerate(base)]
    got, _want = fast.poll(edited, 1100.0), slow.poll(edited, 1100.0)
    assert reads == [] and got.updated == 1 and got.unchanged == 19 and fast.rows() == slow.rows()
    kept_records = poller._kept_records

    def kept_then_push(source: Any, answer_digest: str) -> Any:
        kept = kept_records(source, answer_digest)
        row = {r.event.key: r for r in fast.store.query_events(_all())}["7"]
        fast.store.apply_poll("tickets", [row.event.bounded(10, 10)], absence="keep", complete=False,
                              now=1150.0, previous_success=1100.0, record=False)
        return kept

    second = [record(i, " (again)") if i == 2 else r for i, r in enumerate(edited)]
    with monkeypatch.context() as patched:
        patched.setattr(poller, "_kept_records", kept_then_push)
        report = fast.poll(second, 1200.0)
    assert not report.ok and "changed during its poll" in (report.error or "")
    mapped = count_mapping(monkeypatch)
    got, _want = fast.poll(second, 1300.0), slow.poll(second, 1300.0)
    assert mapped[0] == 20 + 20 and reads == []  # no digest to trust: every record mapped, nothing read
    assert report_counts(got)[1:3] == (0, 2)  # 2 again, 7 back to its record
    rows, reference = fast.rows(), slow.rows()
    pushed_back, reference_7 = rows.pop("7"), reference.pop("7")
    assert rows == reference
    assert (pushed_back["data"], pushed_back["record_digest"]) == (reference_7["data"], reference_7["record_digest"])
