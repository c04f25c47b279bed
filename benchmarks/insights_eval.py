#!/usr/bin/env python3
"""Recall and false flags of the insight detectors on synthetic histories with known anomalies.

    python benchmarks/insights_eval.py [--generator project,variant] [--seed N | --seeds 1-6]
                                       [--accounts N] [--stream 12] [--show 8] [--set bursts.p=1e-6]

Two generators: ``project`` (benchmarks/synthetic_history.py, the one the detectors were
developed on) and ``variant`` (benchmarks/synthetic_variant.py, written apart from it with
other choices throughout, so that a detector tuned to one generator shows it). Their
histories go into a real Store on a temporary SQLite file, are stored as they exist at the
generator's ``NOW`` — all at once: for most accounts that is a first import — and the
detectors run through ``icsfeed.insights.refresh_insights``, as after a poll. Then the
flags each account's feed shows (its window, 90 days back) are compared with the truth:

* bursts — an injected burst ending in the window is found when a burst flag overlaps
  its days (±1 day); a flag overlapping no injected burst is a false flag. Recall is also
  given per case: ``recent``, ``old`` (before the window: none expected), ``straddle``
  (begun before the window's first day, running into it), ``import`` (anywhere in a first
  import of 12–16 weeks), ``quiet`` (a small burst on an account with Poisson noise);
* missed backups — each flagged run (host and expected time) is matched to one removed
  run within 12 hours; a second flag for the same removed run (a missed full backup also
  flagged as a missed daily one) or a flag matching none is a false flag. Runs late
  within grace that came, irregular and young hosts must not be flagged; for hosts that
  stopped, days more than ``give_up_after_days`` after the stop are not expected;
* irregular hosts — found when flagged irregular (expected once 4 weeks old); one on a
  regular host is a false flag;
* stale tickets — per ticket; summary — this Monday's counts per kind equal the truth;
* a day passing — the next day's events are stored, the detectors run a day later, and
  every flag whose SEQUENCE moved without its title, days or status changing is churn
  (a calendar shows it as updated for nothing).

``--stream`` replays the last days for some accounts poll by poll (every 6 hours) and
reports flags raised and later cancelled (a late run within grace does that by design),
and churn. Deterministic for a seed. ``ICSFEED_CODE=/path`` evaluates another checkout's
icsfeed (the same histories and scoring, to compare two versions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("ICSFEED_CODE") or str(HERE.parent))
sys.path.insert(1, str(HERE))

import synthetic_history  # noqa: E402
import synthetic_variant  # noqa: E402
import yaml  # noqa: E402
from synthetic_history import Account, Truth  # noqa: E402

from icsfeed.config import Config, load_config  # noqa: E402
from icsfeed.insights import refresh_insights  # noqa: E402
from icsfeed.insights.backups import GIVE_UP_AFTER_RUNS  # noqa: E402
from icsfeed.insights.settings import InsightsSettings  # noqa: E402
from icsfeed.model import Event  # noqa: E402
from icsfeed.routing import account_feed  # noqa: E402
from icsfeed.store import FeedQuery, Store  # noqa: E402

GENERATORS: dict[str, tuple[ModuleType, int, int]] = {  # name -> module, default seed, accounts
    "project": (synthetic_history, 7, 120),
    "variant": (synthetic_variant, 101, 40),
}
#: the days back a flag must cover: the feed's window (90 days)
WINDOW_DAYS = 90
MATCH = timedelta(hours=12)
#: a false burst flag on days with at least this many times the generator's true rate is
#: counted apart: the noise made a burst nobody injected (it is still a false flag)
NATURAL_EXCURSION = 2.5


def make_config(root: Path, accounts: list[Account], insights: dict[str, Any] | None = None) -> Config:
    """A config directory with the accounts and an ``insights:`` section (defaults unless set)."""
    cfg = root / "config"
    cfg.mkdir()
    doc = {"accounts": [{"id": a.id, "name": f"Account {a.id}", "timezone": a.tz} for a in accounts],
           "insights": insights or {}}
    (cfg / "icsfeed.yaml").write_text(yaml.safe_dump(doc))
    return load_config(cfg, root / "data")


def load(store: Store, accounts: list[Account], until: datetime, since: datetime | None = None) -> None:
    """Store the events that exist by ``until`` (those after ``since`` only, incrementally)."""
    by_source: dict[str, list[Event]] = defaultdict(list)
    sources: set[str] = set()
    for acc in accounts:
        for ev in acc.events:
            sources.add(ev.source)
            if ev.start <= until and (since is None or ev.start > since):  # type: ignore[operator]
                by_source[ev.source].append(ev)
    for source in sorted(sources):
        store.apply_poll(source, by_source[source], absence="keep", complete=since is None,
                         now=until.timestamp(), previous_success=None)


def shown_flags(store: Store, config: Config, now: datetime) -> list[Event]:
    """The confirmed flags each account's feed shows at ``now`` (its window, as rendered)."""
    out = []
    for account in config.accounts.values():
        query = account_feed(config, account).query(now)
        query = FeedQuery(query.start_ts, query.end_ts, query.account_keys, frozenset({"insight"}), None)
        out += [r.event for r in store.query_events(query) if r.event.status == "confirmed"]
    return out


def days_of(ev: Event) -> list[date]:
    first, end = ev.start, ev.end
    assert isinstance(first, date) and isinstance(end, date)
    return [first + timedelta(days=i) for i in range((end - first).days)]


def local_today(accounts: dict[str, Account], acc: str, now: datetime) -> date:
    return now.astimezone(ZoneInfo(accounts[acc].tz)).date()


@dataclass
class Score:
    """Counts of one detector, and examples of what it got wrong."""

    name: str
    unit: str
    tp_flags: int = 0
    fp_flags: int = 0
    found: int = 0
    missed: int = 0
    natural: int = 0
    cases: Counter[str] = field(default_factory=Counter)  # "case found" / "case missed"
    false_by: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def add(self, other: Score) -> None:
        for name in ("tp_flags", "fp_flags", "found", "missed", "natural"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cases.update(other.cases)
        self.false_by.update(other.false_by)

    def recall(self) -> float:
        truth = self.found + self.missed
        return self.found / truth if truth else 1.0

    def false_share(self) -> float:
        flagged = self.tp_flags + self.fp_flags
        return self.fp_flags / flagged if flagged else 0.0

    def line(self) -> str:
        flagged = self.tp_flags + self.fp_flags
        text = (f"{self.name:<16} recall {100 * self.recall():6.2f}% ({self.found}/{self.found + self.missed} "
                f"{self.unit})   false flags {100 * self.false_share():5.2f}% ({self.fp_flags}/{flagged} flags)")
        cases = sorted({c.rsplit(" ", 1)[0] for c in self.cases})
        if cases:
            text += "\n" + " " * 17 + "by case: " + ", ".join(
                f"{c} {self.cases[c + ' found']}/{self.cases[c + ' found'] + self.cases[c + ' missed']}" for c in cases)
        if self.false_by:
            text += "\n" + " " * 17 + "false flags by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(self.false_by.items()))
        if self.natural:
            text += (f"\n{'':<17}of the false flags, {self.natural} on days with ≥{NATURAL_EXCURSION}× the true "
                     "alert rate (noise that made a burst)")
        return text


def score_bursts(found: list[Event], truth: Truth, accounts: dict[str, Account], now: datetime) -> Score:
    score = Score("bursts", "bursts")
    mine = [ev for ev in found if ev.attrs.get("insight") == "bursts"]
    hit: set[int] = set()
    for ev in mine:
        days = days_of(ev)
        match = [i for i, (acc, b0, b1) in enumerate(truth.bursts)
                 if acc == ev.account and days[0] <= b1 + timedelta(days=1) and days[-1] >= b0 - timedelta(days=1)]
        if match:
            score.tp_flags += 1
            hit.update(match)
            continue
        score.fp_flags += 1
        acc = ev.account or ""
        true_mean = sum(truth.day_rate.get((acc, d), 0.0) for d in days)
        ratio = ev.attrs["count"] / true_mean if true_mean else float("inf")
        score.natural += ratio >= NATURAL_EXCURSION
        level = truth.profile[acc]["alerts"]
        score.false_by[level] += 1
        score.wrong.append(f"false burst {acc} {days[0]}..{days[-1]} ({level}, "
                           f"{ratio:.1f}× the true rate): {ev.title}")
    for i, (acc, b0, b1) in enumerate(truth.bursts):
        case = truth.burst_case.get((acc, b0), "?")
        if b1 < local_today(accounts, acc, now) - timedelta(days=WINDOW_DAYS):
            continue  # over before the window: nothing to show (a flag on it still counts as right)
        if i in hit:
            score.found += 1
            score.cases[f"{case} found"] += 1
        else:
            score.missed += 1
            score.cases[f"{case} missed"] += 1
            score.wrong.append(f"missed burst {acc} {b0}..{b1} ({case}, {truth.profile[acc]['alerts']}, "
                               f"{truth.profile[acc].get('burst', '?')}, {truth.weekly_rate.get(acc, 0):.1f}/week)")
    return score


def _profile(truth: Truth, acc: str, host: str) -> str:
    return next((p for (a, h, _s), p in truth.hosts.items() if a == acc and h == host), "?")


def score_backups(found: list[Event], truth: Truth, accounts: dict[str, Account], now: datetime) -> tuple[Score, Score]:
    """Missed runs matched one to one by time; irregular hosts by host."""
    settings = InsightsSettings().backups
    missed = Score("missed backups", "missed runs")
    irregular = Score("irregular hosts", "irregular hosts")
    flagged: list[tuple[str, str, datetime]] = []
    irregular_hosts: set[tuple[str, str, str]] = set()
    for ev in found:
        if ev.attrs.get("insight") != "backups":
            continue
        acc, host = ev.account or "", ev.attrs["host"]
        if ev.attrs["flag"] == "missed":
            flagged.extend((acc, host, datetime.fromisoformat(t)) for t in ev.attrs["expected"])
            continue
        key = (acc, host, ev.attrs["series"])
        irregular_hosts.add(key)
        if key in truth.irregular or (acc, host, "any") in truth.irregular or (acc, host, "full") in truth.irregular:
            irregular.tp_flags += 1
        else:
            irregular.fp_flags += 1
            irregular.false_by[_profile(truth, acc, host)] += 1
            irregular.wrong.append(f"irregular flag on a regular host {key} ({_profile(truth, acc, host)}): {ev.title}")
    # which removed runs were due: in the window, raise_after past, not after a host was given up
    removed: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    due: set[tuple[str, str, datetime]] = set()
    streaks: dict[tuple[str, str], list[date]] = defaultdict(list)
    missed_days = {(acc, host, day) for acc, host, _series, day in truth.misses}
    for (acc, host, _series, day) in truth.misses:
        streaks[(acc, host)].append(day)
    for (acc, host, _series, day), when in truth.misses.items():
        removed[(acc, host)].append(when)
        stop = truth.stopped.get((acc, host))
        while stop is not None and (acc, host, stop - timedelta(days=1)) in missed_days:
            stop -= timedelta(days=1)  # a run removed just before the host stopped starts the streak
        if day < local_today(accounts, acc, now) - timedelta(days=WINDOW_DAYS) or when + settings.raise_after > now:
            continue
        if stop is not None and (day - stop).days >= settings.give_up_after_days and \
                sum(1 for d in streaks[(acc, host)] if stop <= d < day) >= GIVE_UP_AFTER_RUNS:
            continue  # a retired host: flags end by design
        due.add((acc, host, when))
    late: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for (acc, host, _series, _day), when in truth.late_ok.items():
        late[(acc, host)].append(when)
    used: set[tuple[str, str, datetime]] = set()
    for acc, host, when in sorted(flagged):
        options = sorted((abs(t - when), t) for t in removed[(acc, host)]
                         if abs(t - when) <= MATCH and (acc, host, t) not in used)
        if options:
            used.add((acc, host, options[0][1]))
            missed.tp_flags += 1
            continue
        missed.fp_flags += 1
        if any(abs(t - when) <= MATCH for t in removed[(acc, host)]):
            why = "second flag for one missed run"
        elif any(abs(t - when) <= MATCH for t in late[(acc, host)]):
            why = "late within grace"
        else:
            why = _profile(truth, acc, host)
        missed.false_by[why] += 1
        missed.wrong.append(f"false miss {acc} {host} {when:%Y-%m-%d %H:%M}Z ({why}, {accounts[acc].tz})")
    for acc, host, when in sorted(due):
        if (acc, host, when) in used:
            missed.found += 1
            missed.cases[f"{_profile(truth, acc, host)} found"] += 1
        else:
            missed.missed += 1
            missed.cases[f"{_profile(truth, acc, host)} missed"] += 1
            missed.wrong.append(f"unflagged miss {acc} {host} {when:%Y-%m-%d %H:%M}Z "
                                f"({_profile(truth, acc, host)}, {accounts[acc].tz})")
    for key in sorted(truth.irregular):
        acc = key[0]
        flagged_host = key in irregular_hosts or any(k[:2] == key[:2] for k in irregular_hosts)
        if flagged_host:
            irregular.found += 1
            irregular.cases[f"{truth.hosts.get(key, '?')} found"] += 1
        elif truth.irregular_from.get(key, date.min) <= local_today(accounts, acc, now):
            irregular.missed += 1
            irregular.cases[f"{truth.hosts.get(key, '?')} missed"] += 1
            irregular.wrong.append(f"irregular host not flagged {key}")
    return missed, irregular


def score_tickets(found: list[Event], truth: Truth, accounts: dict[str, Account], now: datetime) -> Score:
    """Per ticket; by case: stale since a day in the window, or since before it (its flag,
    on the day it went stale, is then outside the feed)."""
    score = Score("stale tickets", "stale tickets")
    got = {(ev.account, ev.attrs["ticket_key"]) for ev in found if ev.attrs.get("insight") == "stale_tickets"}
    tickets = {(ev.account, ev.key): ev for acc in accounts.values() for ev in acc.events if ev.kind == "ticket"}

    def case(unit: tuple[str, str]) -> str:
        ev = tickets[unit]
        stamp = ev.attrs.get("updated") or ev.attrs.get("updated_at")
        updated = datetime.fromisoformat(str(stamp)) if stamp else ev.start
        assert isinstance(updated, datetime)
        tz = ZoneInfo(accounts[unit[0]].tz)
        stale = (updated + timedelta(days=7)).astimezone(tz).date()
        return "in window" if stale >= local_today(accounts, unit[0], now) - timedelta(days=WINDOW_DAYS) else "before window"

    for unit in sorted(got, key=str):
        if unit in truth.stale:
            score.tp_flags += 1
        else:
            score.fp_flags += 1
            score.wrong.append(f"false stale ticket {unit}")
    for unit in sorted(truth.stale):
        if unit in got:
            score.found += 1
            score.cases[f"{case(unit)} found"] += 1
        else:
            score.missed += 1
            score.cases[f"{case(unit)} missed"] += 1
            score.wrong.append(f"stale ticket not flagged {unit} (stale since {case(unit)})")
    return score


def score_summary(found: list[Event], truth: Truth, accounts: dict[str, Account], now: datetime) -> Score:
    """This Monday's summary exists for every account with history, with the true counts."""
    score = Score("summary", "accounts")
    summaries = [ev for ev in found if ev.attrs.get("insight") == "summary"]
    for acc_id, counts in sorted(truth.last_week.items()):
        today = local_today(accounts, acc_id, now)
        monday = today - timedelta(days=today.weekday())
        mine = [ev for ev in summaries if ev.account == acc_id and ev.start == monday]
        if len(mine) == 1 and mine[0].attrs["counts"] == counts:
            score.found += 1
            score.tp_flags += 1
        else:
            score.missed += 1
            score.wrong.append(f"summary {acc_id}: {[ev.attrs['counts'] for ev in mine]} != {counts}")
    score.fp_flags += sum(1 for ev in summaries if ev.account not in truth.last_week)
    return score


def snapshot(store: Store) -> dict[tuple[str, str], tuple[int, str, str, Any, Any]]:
    """Every stored flag: (sequence, status, title, start, end) by (source, key)."""
    rows = store.query_events(FeedQuery(0.0, 1e11, kinds=frozenset({"insight"})))
    return {(r.event.source, r.event.key): (r.sequence, r.event.status, r.event.title, r.event.start, r.event.end)
            for r in rows}


def churn(before: dict[tuple[str, str], tuple[int, str, str, Any, Any]],
          after: dict[tuple[str, str], tuple[int, str, str, Any, Any]]) -> tuple[Counter[str], Counter[str], list[str]]:
    """Flags whose SEQUENCE moved with nothing visible changed (churn), and with a changed verdict."""
    bad: Counter[str] = Counter()
    changed: Counter[str] = Counter()
    examples: list[str] = []
    for key, (seq, *visible) in after.items():
        old = before.get(key)
        if old is None or old[0] == seq:
            continue
        detector = key[0].removeprefix("insight-").partition(":")[0]
        if tuple(old[1:]) == tuple(visible):
            bad[detector] += 1
            examples.append(f"{key[1]}: {visible[1]}")
        else:
            changed[detector] += 1
    return bad, changed, examples


def day_passing(store: Store, config: Config, accounts: list[Account], gen: ModuleType) -> str:
    """Store the next day's events, refresh a day later: which flags moved, and why."""
    before = snapshot(store)
    load(store, accounts, gen.END, since=gen.NOW)
    refresh_insights(config, store, {a.id for a in accounts}, gen.END.timestamp())
    bad, changed, examples = churn(before, snapshot(store))
    detectors = sorted(set(bad) | set(changed))
    per = ", ".join(f"{d} {bad[d]} churned/{changed[d]} changed" for d in detectors) or "none moved"
    text = (f"a day passing: {sum(bad.values())} flags changed SEQUENCE without a changed verdict, "
            f"{sum(changed.values())} with one (new count, days, title or status) — {per}")
    return text + "".join(f"\n    churn: {e}" for e in examples[:5])


def stream(accounts: list[Account], truth: Truth, root: Path, insights: dict[str, Any], gen: ModuleType,
           step_hours: int = 6, days: int = 6) -> str:
    """Replay the last days poll by poll: flags raised, raised-then-cancelled, churn."""
    config = make_config(root, accounts, insights)
    store = Store(f"sqlite:///{root / 'stream.db'}", uid_host=config.uid_host)
    keys = {a.id for a in accounts}
    t = gen.NOW - timedelta(days=days)
    load(store, accounts, t)
    refresh_insights(config, store, keys, t.timestamp())
    ever: dict[tuple[str, str], Event] = {}
    uids: dict[tuple[str, str], set[str]] = defaultdict(set)
    churned: Counter[str] = Counter()
    steps = 0
    while t < gen.NOW:
        nxt = min(t + timedelta(hours=step_hours), gen.NOW)
        before = snapshot(store)
        load(store, accounts, nxt, since=t)
        refresh_insights(config, store, keys, nxt.timestamp())
        churned.update(churn(before, snapshot(store))[0])
        for row in store.query_events(FeedQuery(0.0, 1e11, kinds=frozenset({"insight"}))):
            uids[(row.event.source, row.event.key)].add(row.uid)
            if row.event.status == "confirmed":
                ever[(row.event.source, row.event.key)] = row.event
        t = nxt
        steps += 1
    final = {(r.event.source, r.event.key): r.event for r in store.query_events(FeedQuery(0.0, 1e11, kinds=frozenset({"insight"})))}
    withdrawn = [k for k in ever if final[k].status == "cancelled"]
    kinds = Counter(ever[k].attrs.get("insight") for k in withdrawn)
    unstable = sum(1 for v in uids.values() if len(v) > 1)
    late = {(a, h, d) for a, h, _s, d in truth.late_ok}
    late_withdrawn = sum(1 for k in withdrawn if ever[k].attrs.get("flag") == "missed" and any(
        (ever[k].account, ever[k].attrs["host"], date.fromisoformat(d) + timedelta(days=shift)) in late
        for d in ever[k].attrs["days"] for shift in (-1, 0, 1)))
    store.close()
    return (f"stream: {len(accounts)} accounts, {steps} polls {step_hours}h apart over {days} days: "
            f"{len(ever)} flags raised, {len(withdrawn)} later cancelled ({dict(kinds)}; "
            f"{late_withdrawn} by a run late within grace), {sum(churned.values())} SEQUENCE changes "
            f"without a changed verdict {dict(churned) or ''}, {unstable} keys with more than one UID")


def evaluate(generator: str, seed: int, n_accounts: int, insights: dict[str, Any], stream_accounts: int,
             show: int, quiet: bool = False) -> tuple[list[Score], int]:
    """One generator and seed: generate, store, refresh, score, a day passes; print the report."""
    say = (lambda *_a: None) if quiet else print
    gen = GENERATORS[generator][0]
    started = time.perf_counter()
    accounts, truth = gen.generate(seed, n_accounts)
    by_id = {a.id: a for a in accounts}
    now = gen.NOW
    with tempfile.TemporaryDirectory(prefix="insights-eval-") as tmp:
        root = Path(tmp)
        config = make_config(root, accounts, insights)
        store = Store(f"sqlite:///{root / 'eval.db'}", uid_host=config.uid_host)
        load(store, accounts, now)
        loaded = time.perf_counter()
        refresh_insights(config, store, set(by_id), now.timestamp())
        refreshed = time.perf_counter()
        found = shown_flags(store, config, now)
        n_events = sum(1 for a in accounts for ev in a.events if ev.start <= now)  # type: ignore[operator]
        say(f"[{generator} seed {seed}] {len(accounts)} accounts, {n_events} events, now {now.isoformat()}, "
            f"flags scored in each feed's window ({WINDOW_DAYS} days back); settings: {insights or 'defaults'}")
        say(f"injected: {len(truth.bursts)} bursts {dict(Counter(truth.burst_case.values()))}, "
            f"{len(truth.misses)} missed runs (+{truth.covered} removed runs made up for by another run "
            f"within 12 h), {len(truth.irregular)} irregular hosts, {len(truth.stopped)} stopped hosts, "
            f"{len(truth.late_ok)} runs late within grace, {len(truth.stale)} stale tickets")
        bursts = score_bursts(found, truth, by_id, now)
        missed, irregular = score_backups(found, truth, by_id, now)
        scores = [bursts, missed, irregular, score_tickets(found, truth, by_id, now), score_summary(found, truth, by_id, now)]
        say()
        for score in scores:
            say(score.line())
        passing = day_passing(store, config, accounts, gen)
        churned = int(passing.split(" flags changed", 1)[0].rsplit(" ", 1)[-1])
        say(passing)
        store.close()
        if stream_accounts:
            sample = [a for a in accounts if a.events][:stream_accounts]
            sroot = root / "stream"
            sroot.mkdir()
            say(stream(sample, truth, sroot, insights, gen))
        say()
        for score in scores:
            for line in score.wrong[:show]:
                say(f"  {score.name}: {line}")
            if len(score.wrong) > show:
                say(f"  {score.name}: … and {len(score.wrong) - show} more")
        say(f"\ntime: generate+store {loaded - started:.1f}s, refresh {refreshed - loaded:.1f}s "
            f"({1000 * (refreshed - loaded) / len(accounts):.0f} ms per account), "
            f"total {time.perf_counter() - started:.1f}s\n")
    return scores, churned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="project,variant", help="comma-separated: project, variant")
    parser.add_argument("--seed", type=int, help="one seed (default: 7 for project, 101 for variant)")
    parser.add_argument("--seeds", help="several seeds, e.g. 1-5: one line per seed and detector, and totals")
    parser.add_argument("--accounts", type=int, help="accounts per history (default: 120 project, 40 variant)")
    parser.add_argument("--stream", type=int, default=12, help="accounts replayed poll by poll (0: none)")
    parser.add_argument("--show", type=int, default=8, help="wrong cases listed per detector")
    parser.add_argument("--set", action="append", default=[], metavar="DETECTOR.SETTING=VALUE",
                        help="override a setting of the insights: section, e.g. bursts.p=1e-6")
    args = parser.parse_args(argv)
    insights: dict[str, Any] = {}
    for item in args.set:
        path, _, value = item.partition("=")
        section, _, name = path.partition(".")
        insights.setdefault(section, {})[name] = yaml.safe_load(value)
    generators = [g.strip() for g in args.generator.split(",") if g.strip()]
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        parser.error(f"unknown generator(s): {', '.join(unknown)}")
    print(f"icsfeed from {sys.path[0]}")
    totals: dict[str, dict[str, Score]] = {}
    churn_total: Counter[str] = Counter()
    for generator in generators:
        _, default_seed, default_accounts = GENERATORS[generator]
        n = args.accounts or default_accounts
        if not args.seeds:
            scores, churned = evaluate(generator, args.seed or default_seed, n, insights, args.stream, args.show)
            runs = [(args.seed or default_seed, scores, churned)]
        else:
            first, _, last = args.seeds.partition("-")
            runs = []
            for seed in range(int(first), int(last or first) + 1):
                scores, churned = evaluate(generator, seed, n, insights, 0, 0, quiet=True)
                runs.append((seed, scores, churned))
                for score in scores:
                    print(f"{generator} seed {seed:<3} {score.line().splitlines()[0]}")
                print(f"{generator} seed {seed:<3} churn on a day passing: {churned} flags")
        for _seed, scores, churned in runs:
            churn_total[generator] += churned
            for score in scores:
                total = totals.setdefault(generator, {}).setdefault(score.name, Score(score.name, score.unit))
                total.add(score)
    print("\nper detector, all seeds:")
    for generator, scores in totals.items():
        for total in scores.values():
            print(f"{generator:<8} {total.line()}")
        print(f"{generator:<8} churn on a day passing: {churn_total[generator]} flags changed SEQUENCE without a changed verdict")
    all_found = sum(s.found for g in totals.values() for s in g.values() if s.name in ("bursts", "missed backups", "irregular hosts"))
    all_truth = sum(s.found + s.missed for g in totals.values() for s in g.values()
                    if s.name in ("bursts", "missed backups", "irregular hosts"))
    all_fp = sum(s.fp_flags for g in totals.values() for s in g.values() if s.name in ("bursts", "missed backups", "irregular hosts"))
    all_flags = sum(s.fp_flags + s.tp_flags for g in totals.values() for s in g.values()
                    if s.name in ("bursts", "missed backups", "irregular hosts"))
    print(f"\nanomaly detectors together (bursts, missed backups, irregular hosts): recall "
          f"{100 * all_found / max(all_truth, 1):.1f}% ({all_found}/{all_truth}), false flags "
          f"{100 * all_fp / max(all_flags, 1):.1f}% ({all_fp}/{all_flags})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
