"""The size budget (issue 12 item 6): a feed stays within what Google Calendar keeps.

Data is written the way benchmarks/bench_scale.py writes it (a ``file`` source, JSON Lines)
and goes through the product's own poll and render. A team feed over 110 accounts is
several MB and thousands of VEVENTs without the budget; with it, it is ≤ 1 MB and ≤ 1,000
VEVENTs, rolls up busy days into one event each, shrinks its window when that is not
enough, and still parses in python icalendar and ical.js.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import icalendar
import pytest
from parsers import check_all, check_icaljs
from servers import write_config

from icsfeed.budget import feed_budget
from icsfeed.config import Config, ConfigError, load_config
from icsfeed.live import LiveConfig
from icsfeed.poller import poll
from icsfeed.render import build_feed, calendar_header, render_feeds, render_key
from icsfeed.routing import find_feed
from icsfeed.store import Store
from icsfeed.tokens import feed_token
from icsfeed.web import create_app
from icsfeed.web.admin import load_admin_token

SECRET = "budget-test-secret-0123456789abcdef"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
TEAM = "team/everything"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICSFEED_SECRET_KEY", SECRET)
    for name in ("ICSFEED_ADMIN_USER", "ICSFEED_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def record(i: str, kind: str, account: int, start: datetime, *, end: datetime | None = None, severity: str | None = None,
           title: str | None = None, **extra: Any) -> dict[str, Any]:
    host = f"host-{hash(i) % 97:02d}.c{account:03d}.example"
    out = {"id": i, "kind": kind, "account": f"c{account:03d}", "start": start.isoformat(),
           "title": title or f"{kind} on {host}: job=api, p99 > 2s; \"check\"",
           "detail": f"{kind} on {host}; see https://wiki.example/runbooks/{kind}\nlabels: job=api, team=ops",
           "url": f"https://origin.example/{kind}/{i}", **extra}
    if end is not None:
        out["end"] = end.isoformat()
    if severity is not None:
        out["severity"] = severity
    return out


def world_records(accounts: int, *, backups_days: int = 90, backup_every: int = 7) -> list[dict[str, Any]]:
    """Per account: three burst days of resolved alerts, tickets, a weekly backup (by
    default), a maintenance window ahead; one firing alert for the first account."""
    today = datetime.combine(NOW.date(), datetime.min.time(), timezone.utc)
    out: list[dict[str, Any]] = []
    for a in range(accounts):
        for k in range(3):
            day = today - timedelta(days=(a * 7 + k * 23) % 80 + 1)
            for j in range(6 + (a + k) % 7):
                start = day + timedelta(hours=9, minutes=7 * j)
                out.append(record(f"al-{a}-{k}-{j}", "alert", a, start, end=start + timedelta(minutes=20),
                                  severity="critical" if k == 0 else "warning"))
        for t in range(6):
            start = today - timedelta(days=(a + t * 13) % 85 + 1, hours=-10)
            out.append(record(f"tk-{a}-{t}", "ticket", a, start, ticket_status="solved" if t % 2 else "open"))
        for d in range(a % backup_every, backups_days, backup_every):
            start = today - timedelta(days=d, hours=-2)
            out.append(record(f"bk-{a}-{d}", "backup", a, start, end=start + timedelta(minutes=30)))
        start = today + timedelta(days=3 + a % 20, hours=22)
        out.append(record(f"mt-{a}", "maintenance", a, start, end=start + timedelta(hours=2)))
    first = today - timedelta(hours=1) if NOW - today > timedelta(hours=2) else today
    out.append(record("al-firing", "alert", 0, first, severity="critical"))
    return out


def config_yaml(accounts: int, *, team_budget: str = "", feeds_budget: str = "", account_extra: str = "") -> str:
    listed = "\n".join(f"  - {{id: c{i:03d}, name: Customer {i}{account_extra if i == 0 else ''}}}"
                       for i in range(accounts))
    return f"""\
insights: {{enabled: false}}
server: {{base_url: "https://cal.example.com"}}
feeds:
  timezone: UTC
{feeds_budget}
accounts:
{listed}
teams:
  - {{id: everything, name: Everything, accounts: "*"{team_budget}}}
sources:
  - id: events
    type: file
    path: events.jsonl
    format: jsonl
    mapping: {{kind: "{{kind}}", key: id, title: title, start: start, end: end, account: account, detail: detail,
               severity: severity, url: url, status: status, attrs: {{status: ticket_status}}}}
"""


class World:
    """A config directory, its store, and the events file its source reads."""

    def __init__(self, root: Path, records: list[dict[str, Any]], yaml_text: str) -> None:
        self.root = root
        self.config_dir = write_config(root / "config", {"icsfeed.yaml": yaml_text})
        self.write(records)
        self.config = load_config(self.config_dir, root / "data")
        self.store = Store(self.config.storage_url, uid_host=self.config.uid_host)

    def write(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        (self.config_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    def poll_and_render(self, **kw: Any) -> list[str]:
        reports = poll(self.config, self.store)
        assert all(r.ok for r in reports), [r.line() for r in reports]
        return render_feeds(self.config, self.store, **kw)

    def body(self, feed_id: str) -> bytes:
        stored = self.store.get_feed(feed_id)
        assert stored is not None
        return stored.body


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(records: list[dict[str, Any]], yaml_text: str) -> World:
        made.append(World(tmp_path, records, yaml_text))
        return made[-1]

    yield make
    for w in made:
        w.store.close()


def vevents(body: bytes) -> list[icalendar.Event]:
    return list(icalendar.Calendar.from_ical(body).walk("VEVENT"))


def rollups(body: bytes) -> list[icalendar.Event]:
    return [e for e in vevents(body) if str(e["UID"]).startswith("rollup-")]


# --- the big team feed ----------------------------------------------------------------------

def test_team_feed_over_110_accounts_fits_google_budget_and_parses(world: Callable[..., World]) -> None:
    w = world(world_records(110), config_yaml(110))
    w.poll_and_render()
    body = w.body(TEAM)
    report = w.store.feed_reports()[TEAM]
    assert report["full_events"] > 5000 and report["full_bytes"] > 3_000_000, report  # what main serves
    assert len(body) <= 1_000_000, len(body)
    events = vevents(body)
    assert len(events) <= 1000 and body.count(b"BEGIN:VEVENT") == len(events) == report["events"]
    assert report["bytes"] == len(body) and report["over"] and report["rollups"] > 50, report
    # weekly backups and tickets of 110 accounts are more than 1,000 on their own: the window shrinks too
    assert report["shrunk"] and 14 <= report["window_back_days"] < 90, report
    check_all(body)  # python icalendar, ical.js, libical, and the line format
    seen = check_icaljs(body)
    assert seen["vevents"] == len(events) and sum(s.startswith("🚨 ") and " alerts on " in s for s in seen["summaries"]) > 50

    cal = icalendar.Calendar.from_ical(body)
    assert "days back" in str(cal["X-WR-CALDESC"]) and "rolled up" in str(cal["X-WR-CALDESC"])
    sample = max(rollups(body), key=lambda e: int(str(e["SUMMARY"]).split()[1]))
    summary = str(sample["SUMMARY"])
    assert re.fullmatch(r"🚨 \d+ (critical|warning) alerts on Customer \d+", summary), summary
    count = int(summary.split()[1])
    description = str(sample["DESCRIPTION"])
    listed = [ln for ln in description.splitlines() if re.match(r"\d\d:\d\d ", ln)]
    assert len(listed) == count and all(" — https://origin.example/alert/al-" in ln for ln in listed)
    day = sample.decoded("DTSTART")
    token = feed_token(SECRET.encode(), TEAM, 1)
    link = f"https://cal.example.com/view/team/everything?token={token}&month={day:%Y-%m}#d{day:%Y%m%d}k0"
    assert description.splitlines()[-1] == link and str(sample["URL"]) == link
    # maintenance windows (all ahead) and the firing alert stay individual, every one of them
    maintenance = [e for e in events if str(e["SUMMARY"]).startswith("🔧")]
    assert len(maintenance) == 110 and not any(str(e["UID"]).startswith("rollup-") for e in maintenance)
    assert any("al-firing" in str(e.get("URL", "")) for e in events)
    # the window shrank behind, never ahead
    oldest = min(_day(e.decoded("DTEND")) for e in events)
    assert oldest >= NOW.date() - timedelta(days=report["window_back_days"]), (oldest, report)


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def test_rollup_uid_and_sequence_stay_then_sequence_bumps_when_one_more_alert_lands(world: Callable[..., World]) -> None:
    records = world_records(12, backups_days=0)
    w = world(records, config_yaml(12, team_budget=", budget: {max_events: 150}"))
    w.poll_and_render()
    first = w.body(TEAM)
    assert len(vevents(first)) <= 150
    report = w.store.feed_reports()[TEAM]
    assert report["rollups"] and not report["shrunk"], report  # rollups alone are enough here
    target = max(rollups(first), key=lambda e: int(str(e["SUMMARY"]).split()[1]))
    uid, seq, summary = str(target["UID"]), int(target["SEQUENCE"]), str(target["SUMMARY"])
    assert seq == 0

    rendered = render_feeds(w.config, w.store, force=True)  # a re-render with nothing changed
    assert TEAM in rendered and w.body(TEAM) == first, "same bytes: same UIDs, SEQUENCEs, DTSTAMPs"

    # one more alert on that account, that day, of that severity
    day = target.decoded("DTSTART")
    account = int(summary.rsplit(" ", 1)[1])
    severity = summary.split()[2]
    start = datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(hours=18)
    w.write([*records, record("al-extra", "alert", account, start, end=start + timedelta(minutes=5), severity=severity)])
    w.poll_and_render()
    again = {str(e["UID"]): e for e in rollups(w.body(TEAM))}
    assert uid in again, "the same day keeps its UID"
    bumped = again[uid]
    assert int(bumped["SEQUENCE"]) == seq + 1
    assert int(str(bumped["SUMMARY"]).split()[1]) == int(summary.split()[1]) + 1
    assert "al-extra" in str(bumped["DESCRIPTION"])
    others = {str(e["UID"]): int(e["SEQUENCE"]) for e in rollups(first)}
    assert all(int(again[u]["SEQUENCE"]) == s for u, s in others.items() if u != uid and u in again), \
        "days that did not change keep their SEQUENCE"


def test_small_feed_is_unchanged_by_the_budget(world: Callable[..., World]) -> None:
    w = world(world_records(3), config_yaml(3))
    w.poll_and_render()
    spec = find_feed(w.config, "account", "c001")
    assert spec is not None
    body = w.body(spec.feed_id)
    head, tail = calendar_header(w.config, spec)
    listed = w.store.query_fragments(spec.query(NOW), render_key(w.config))
    assert all(f is not None for _, f in listed)
    assert body == head + b"".join(f for _, f in listed) + tail  # what a plain join gives, byte for byte
    report = w.store.feed_reports()[spec.feed_id]
    assert not report["over"] and report["rollups"] == 0 and not report["shrunk"]
    assert report["events"] == len(listed) and report["bytes"] == len(body)


def test_window_shrinks_when_rollups_are_not_enough(world: Callable[..., World]) -> None:
    """Daily backups, one per account per day: nothing to roll up, so the window shrinks,
    and what is ahead (maintenance windows) is all still there."""
    records = [r for r in world_records(8, backups_days=60, backup_every=1) if r["kind"] in ("backup", "maintenance")]
    w = world(records, config_yaml(8, team_budget=", budget: {max_events: 100}"))
    w.poll_and_render()
    body = w.body(TEAM)
    report = w.store.feed_reports()[TEAM]
    assert report["shrunk"] and report["rollups"] == 0 and report["window_back_days"] in (7, 3, 1, 0), report
    events = vevents(body)
    assert len(events) <= 100
    assert sum(str(e["SUMMARY"]).startswith("🔧") for e in events) == 8, "the part ahead is never cut"
    oldest = min(_day(e.decoded("DTSTART")) for e in events)
    assert oldest >= NOW.date() - timedelta(days=report["window_back_days"])
    caldesc = str(icalendar.Calendar.from_ical(body)["X-WR-CALDESC"])
    assert f"showing {report['window_back_days']} of 90 days back" in caldesc
    assert caldesc.startswith("Alerts")  # the header's own text is kept in front of the note
    # the same feed with the default budget: 8 × 60 backups fit, nothing is cut
    plain = build_feed(dataclasses.replace(w.config, teams={
        "everything": w.config.teams["everything"].model_copy(update={"budget": None})}), w.store,
        find_feed(w.config, "team", "everything"), NOW, save_fragments=False)  # type: ignore[arg-type]
    assert plain.report is not None and not plain.report["over"] and plain.event_count == len(records)


# --- configuration ----------------------------------------------------------------------------

def test_budget_is_configured_globally_per_account_and_per_team(tmp_path: Path) -> None:
    text = config_yaml(3, feeds_budget="  budget: {max_bytes: 500kB, keep_individual: [maintenance]}",
                       team_budget=", budget: {max_events: 200, max_bytes: 2MB}",
                       account_extra=", budget: {max_events: 50}")
    config = load_config(write_config(tmp_path / "c", {"icsfeed.yaml": text}), tmp_path / "d")
    account0, account1 = find_feed(config, "account", "c000"), find_feed(config, "account", "c001")
    team = find_feed(config, "team", "everything")
    assert account0 and account1 and team
    b0, b1, bt = feed_budget(config, account0), feed_budget(config, account1), feed_budget(config, team)
    assert (b0.max_events, b0.max_bytes, b0.keep_individual) == (50, 500_000, frozenset({"maintenance"}))
    assert (b1.max_events, b1.max_bytes) == (1000, 500_000)
    assert (bt.max_events, bt.max_bytes) == (200, 2_000_000)
    unset = load_config(write_config(tmp_path / "u", {"icsfeed.yaml": config_yaml(1)}), tmp_path / "d")
    default = feed_budget(unset, find_feed(unset, "team", "everything"))  # type: ignore[arg-type]
    assert (default.max_events, default.max_bytes) == (1000, 1_000_000)
    assert default.keep_individual == frozenset({"insight", "maintenance"})


@pytest.mark.parametrize(("extra", "path", "message"), [
    ({"feeds_budget": "  budget: {max_bytes: 1 XB}"}, "feeds.budget.max_bytes", "not a size"),
    ({"feeds_budget": "  budget: {max_events: 5}"}, "feeds.budget.max_events", "greater than or equal to 10"),
    ({"feeds_budget": "  budget: {max_lines: 5}"}, "feeds.budget.max_lines", "unknown setting"),
    ({"team_budget": ", budget: {keep_individual: [alarms]}"}, "teams[0].budget.keep_individual[0]", "unknown kind 'alarms'"),
    ({"account_extra": ", budget: {max_bytes: 100}"}, "accounts[0].budget.max_bytes", "greater than or equal to 10000"),
])
def test_bad_budget_config_names_file_path_and_problem(tmp_path: Path, extra: dict[str, str], path: str,
                                                        message: str) -> None:
    config_dir = write_config(tmp_path / "c", {"icsfeed.yaml": config_yaml(2, **extra)})
    with pytest.raises(ConfigError) as err:
        load_config(config_dir, tmp_path / "d")
    assert any(f.endswith("icsfeed.yaml") and p == path and message in m for f, p, m in err.value.problems), \
        err.value.problems


# --- status and subscribe pages ---------------------------------------------------------------

def admin_client(config: Config, store: Store) -> Any:
    app = create_app(LiveConfig(config, check_every=3600), store, SECRET.encode())
    client = app.test_client()
    assert client.get(f"/login?token={load_admin_token(config.data_dir)}", base_url="https://cal.example.com").status_code == 303
    return client


def test_status_shows_size_events_and_rollups_and_subscribe_page_warns(world: Callable[..., World]) -> None:
    w = world(world_records(12, backups_days=0), config_yaml(12, team_budget=", budget: {max_events: 60}"))
    w.poll_and_render()
    client = admin_client(w.config, w.store)
    page = client.get("/status", base_url="https://cal.example.com").get_data(as_text=True)
    team_row = re.search(r'<tr data-feed="team/everything".*?</tr>', page, re.S)
    assert team_row is not None
    row = team_row.group(0)
    body = w.body(TEAM)
    assert f"{len(body):,} bytes" in row and f'<td class="num">{len(vevents(body))}</td>' in row
    assert "over budget" in row and "rolled up" in row
    account_row = re.search(r'<tr data-feed="account/c001".*?</tr>', page, re.S)
    assert account_row is not None and "within budget" in account_row.group(0)

    subscribe = client.get("/", base_url="https://cal.example.com").get_data(as_text=True)
    card = re.search(r'<article class="feed-card" id="feed-team-everything".*?</article>', subscribe, re.S)
    assert card is not None and 'data-budget="over"' in card.group(0)
    assert "Over the size budget" in card.group(0)
    small = re.search(r'<article class="feed-card" id="feed-account-c001".*?</article>', subscribe, re.S)
    assert small is not None and 'data-budget="over"' not in small.group(0)
