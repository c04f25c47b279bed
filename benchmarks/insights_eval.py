#!/usr/bin/env python3
"""Precision and recall of the insight detectors on synthetic histories with known anomalies.

    python benchmarks/insights_eval.py [--seed 7] [--accounts 120] [--stream 24] [--show 8]

The histories (benchmarks/synthetic_history.py) go into a real Store on a temporary SQLite
file and the detectors run through ``icsfeed.insights.refresh_insights``, as after a poll.
Then every stored ⚠️ flag is compared with what was injected:

* bursts — an injected burst is found when a burst flag overlaps its days (±1 day); a
  flag overlapping no injected burst is a false flag;
* missed backups — per (account, host, day): flagged days against removed runs; runs late
  within the grace period and irregular hosts must not be flagged; for hosts that stopped,
  days more than ``give_up_after_days`` after the stop are not expected to be flagged;
* irregular hosts — a host is found when it gets an irregular flag; one on a regular host
  is a false flag;
* stale tickets — per ticket; summary — this Monday's counts per kind equal the truth.

``--stream`` replays the last days for some accounts poll by poll (every 6 hours) and
reports flags raised and later cancelled (a late run within grace does that by design).
Deterministic for a seed; runs in well under two minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from synthetic_history import NOW, REPORT_DAYS, Account, Truth, expected_alerts, generate

from icsfeed.config import Config, load_config
from icsfeed.insights import refresh_insights
from icsfeed.insights.backups import GIVE_UP_AFTER_RUNS
from icsfeed.insights.settings import InsightsSettings
from icsfeed.model import Event
from icsfeed.store import FeedQuery, Store

SOURCES = ("syn-alerts", "syn-backups", "syn-tickets")


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
    for acc in accounts:
        for ev in acc.events:
            if ev.start <= until and (since is None or ev.start > since):  # type: ignore[operator]
                by_source[ev.source].append(ev)
    for source in SOURCES:
        store.apply_poll(source, by_source[source], absence="keep", complete=since is None,
                         now=until.timestamp(), previous_success=None)


def flags(store: Store, confirmed_only: bool = True) -> list[Event]:
    rows = store.query_events(FeedQuery(0.0, 1e11, kinds=frozenset({"insight"})))
    return [r.event for r in rows if not confirmed_only or r.event.status == "confirmed"]


def days_of(ev: Event) -> list[date]:
    first, end = ev.start, ev.end
    assert isinstance(first, date) and isinstance(end, date)
    return [first + timedelta(days=i) for i in range((end - first).days)]


#: a false burst flag on days with at least this many times the generator's true rate is
#: counted apart: the noise made a burst nobody injected (it is still a false flag)
NATURAL_EXCURSION = 2.5


class Score:
    """Counts of one detector, and examples of what it got wrong."""

    def __init__(self, name: str, unit: str) -> None:
        self.name, self.unit = name, unit
        self.tp_flags = self.fp_flags = self.found = self.missed = self.natural = 0
        self.negatives = 0  # units that should not be flagged (for the false-positive rate)
        self.wrong: list[str] = []

    def line(self) -> str:
        flagged = self.tp_flags + self.fp_flags
        precision = self.tp_flags / flagged if flagged else 1.0
        truth = self.found + self.missed
        recall = self.found / truth if truth else 1.0
        text = (f"{self.name:<16} recall {100 * recall:6.2f}% ({self.found}/{truth} {self.unit})   "
                f"precision {100 * precision:6.2f}% ({self.tp_flags}/{flagged} flags, "
                f"false flags {100 * (1 - precision):5.2f}%)")
        if self.natural:
            text += f"\n{'':<17}of the false flags, {self.natural} on days with ≥{NATURAL_EXCURSION}× the true alert rate (noise that made a burst)"
        if self.negatives:
            text += f"\n{'':<17}false-positive rate {100 * self.fp_flags / self.negatives:.2f}% of {self.negatives} account-weeks without a burst"
        return text


def score_bursts(found: list[Event], truth: Truth, accounts: dict[str, Account]) -> Score:
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
        else:
            score.fp_flags += 1
            # how unusual were those days, measured against the rate the noise was drawn around?
            true_mean = sum(expected_alerts(truth.weekly_rate[ev.account or ""], d) for d in days)
            ratio = ev.attrs["count"] / true_mean if true_mean else float("inf")
            if ratio >= NATURAL_EXCURSION:
                score.natural += 1
            score.wrong.append(f"false burst {ev.account} {days[0]}..{days[-1]} "
                               f"({truth.profile[ev.account or '']['alerts']}, {ratio:.1f}× the true rate): {ev.title}")
    by_strength: Counter[str] = Counter()
    judged = [a for a, p in truth.profile.items() if p.get("life") == "full"]
    score.negatives = len(judged) * REPORT_DAYS // 7 - len(truth.bursts)
    for i, (acc, b0, b1) in enumerate(truth.bursts):
        strength = truth.profile[acc].get("burst", "?")
        if i in hit:
            score.found += 1
            by_strength[f"found {strength}"] += 1
        else:
            score.missed += 1
            score.wrong.append(f"missed burst {acc} {b0}..{b1} ({truth.profile[acc]['alerts']}, {strength})")
    return score


def score_backups(found: list[Event], truth: Truth, accounts: dict[str, Account]) -> tuple[Score, Score, str]:
    """Missed runs matched by time (a flag's expected run within 12 hours of the removed one)."""
    settings = InsightsSettings()
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
        else:
            key = (acc, host, ev.attrs["series"])
            irregular_hosts.add(key)
            if key in truth.irregular or (acc, host, "any") in truth.irregular:
                irregular.tp_flags += 1
            else:
                irregular.fp_flags += 1
                irregular.wrong.append(f"irregular flag on a regular host {key} ({_profile(truth, acc, host)}): {ev.title}")
    removed: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    due: list[tuple[str, str, datetime]] = []  # removed runs the detector should have flagged by NOW
    missed_days = {(acc, host, day) for acc, host, _series, day in truth.misses}
    streaks: dict[tuple[str, str], list[date]] = defaultdict(list)
    for (acc, host, _series, day) in truth.misses:
        streaks[(acc, host)].append(day)
    for (acc, host, _series, day), when in truth.misses.items():
        removed[(acc, host)].append(when)
        today = NOW.astimezone(ZoneInfo(accounts[acc].tz)).date()
        stop = truth.stopped.get((acc, host))
        while stop is not None and (acc, host, stop - timedelta(days=1)) in missed_days:
            stop -= timedelta(days=1)  # a run removed just before the host stopped starts the streak
        if day < today - timedelta(days=REPORT_DAYS) or when + settings.backups.raise_after > NOW:
            continue  # before the report range, or not due yet
        if stop is not None and (day - stop).days >= settings.backups.give_up_after_days and \
                sum(1 for d in streaks[(acc, host)] if stop <= d < day) >= GIVE_UP_AFTER_RUNS:
            continue  # a retired host: flags end by design
        due.append((acc, host, when))
    late: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for (acc, host, _series, _day), when in truth.late_ok.items():
        late[(acc, host)].append(when)

    def near(times: list[datetime], when: datetime) -> bool:
        return any(abs(t - when) <= timedelta(hours=12) for t in times)

    late_flagged = 0
    for acc, host, when in sorted(set(flagged)):
        if near(removed[(acc, host)], when):
            missed.tp_flags += 1
        else:
            missed.fp_flags += 1
            why = "late within grace, not come yet" if near(late[(acc, host)], when) else _profile(truth, acc, host)
            late_flagged += near(late[(acc, host)], when)
            missed.wrong.append(f"false miss {acc} {host} {when:%Y-%m-%d %H:%M}Z ({why}, {accounts[acc].tz})")
    by_host: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for acc, host, when in flagged:
        by_host[(acc, host)].append(when)
    for acc, host, when in sorted(due):
        if near(by_host[(acc, host)], when):
            missed.found += 1
        else:
            missed.missed += 1
            missed.wrong.append(f"unflagged miss {acc} {host} {when:%Y-%m-%d %H:%M}Z "
                                f"({_profile(truth, acc, host)}, {accounts[acc].tz})")
    for key in sorted(truth.irregular):
        if key in irregular_hosts:
            irregular.found += 1
        else:
            irregular.missed += 1
            irregular.wrong.append(f"irregular host not flagged {key}")
    return missed, irregular, f"runs late within grace: {late_flagged} of {len(truth.late_ok)} flagged at NOW"


def _profile(truth: Truth, acc: str, host: str) -> str:
    return next((p for (a, h, _s), p in truth.hosts.items() if a == acc and h == host), "?")


def score_tickets(found: list[Event], truth: Truth) -> Score:
    score = Score("stale tickets", "stale tickets")
    got = {(ev.account, ev.attrs["ticket_key"]) for ev in found if ev.attrs.get("insight") == "stale_tickets"}
    for unit in sorted(got, key=str):
        if unit in truth.stale:
            score.tp_flags += 1
        else:
            score.fp_flags += 1
            score.wrong.append(f"false stale ticket {unit}")
    for unit in sorted(truth.stale):
        if unit in got:
            score.found += 1
        else:
            score.missed += 1
            score.wrong.append(f"stale ticket not flagged {unit}")
    return score


def score_summary(found: list[Event], truth: Truth, accounts: dict[str, Account]) -> Score:
    """This Monday's summary exists for every account with history, with the true counts."""
    score = Score("summary", "accounts")
    summaries = [ev for ev in found if ev.attrs.get("insight") == "summary"]
    for acc_id, counts in sorted(truth.last_week.items()):
        today = NOW.astimezone(ZoneInfo(accounts[acc_id].tz)).date()
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


def stream(accounts: list[Account], truth: Truth, root: Path, insights: dict[str, Any],
           step_hours: int = 6, days: int = 6) -> str:
    """Replay the last days poll by poll: flags raised, and raised-then-cancelled."""
    config = make_config(root, accounts, insights)
    store = Store(f"sqlite:///{root / 'stream.db'}", uid_host=config.uid_host)
    keys = {a.id for a in accounts}
    t = NOW - timedelta(days=days)
    load(store, accounts, t)
    refresh_insights(config, store, keys, t.timestamp())
    ever: dict[tuple[str, str], Event] = {}
    uids: dict[tuple[str, str], set[str]] = defaultdict(set)
    steps = 0
    while t < NOW:
        nxt = min(t + timedelta(hours=step_hours), NOW)
        load(store, accounts, nxt, since=t)
        refresh_insights(config, store, keys, nxt.timestamp())
        for row in store.query_events(FeedQuery(0.0, 1e11, kinds=frozenset({"insight"}))):
            uids[(row.event.source, row.event.key)].add(row.uid)
            if row.event.status == "confirmed":
                ever[(row.event.source, row.event.key)] = row.event
        t = nxt
        steps += 1
    final = {(ev.source, ev.key): ev for ev in flags(store, confirmed_only=False)}
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
            f"{late_withdrawn} by a run late within grace), {unstable} keys with more than one UID")


def evaluate(seed: int, n_accounts: int, insights: dict[str, Any], stream_accounts: int, show: int,
             quiet: bool = False) -> list[Score]:
    """One seed: generate, store, refresh, score; print the report (or not, when ``quiet``)."""
    say = (lambda *_a: None) if quiet else print
    started = time.perf_counter()
    accounts, truth = generate(seed, n_accounts)
    by_id = {a.id: a for a in accounts}
    n_events = sum(len(a.events) for a in accounts)
    with tempfile.TemporaryDirectory(prefix="insights-eval-") as tmp:
        root = Path(tmp)
        config = make_config(root, accounts, insights)
        store = Store(f"sqlite:///{root / 'eval.db'}", uid_host=config.uid_host)
        load(store, accounts, NOW)
        loaded = time.perf_counter()
        refresh_insights(config, store, set(by_id), NOW.timestamp())
        refreshed = time.perf_counter()
        found = flags(store)
        store.close()
        say(f"seed {seed}: {len(accounts)} accounts, {n_events} events, now {NOW.isoformat()}, "
            f"report range {REPORT_DAYS} days; settings: {insights or 'defaults'}")
        say(f"injected: {len(truth.bursts)} bursts, {len(truth.misses)} missed runs "
            f"(+{truth.covered} removed runs made up for by another run within 12 h), "
            f"{len(truth.irregular)} irregular hosts, {len(truth.stopped)} stopped hosts, "
            f"{len(truth.late_ok)} runs late within grace, {len(truth.stale)} stale tickets")
        bursts = score_bursts(found, truth, by_id)
        missed, irregular, late_line = score_backups(found, truth, by_id)
        scores = [bursts, missed, irregular, score_tickets(found, truth), score_summary(found, truth, by_id)]
        say()
        for score in scores:
            say(score.line())
        say(late_line)
        if stream_accounts:
            full = [a for a in accounts if truth.profile[a.id].get("life") == "full"][:stream_accounts]
            sroot = root / "stream"
            sroot.mkdir()
            say(stream(full, truth, sroot, insights))
        say()
        for score in scores:
            for line in score.wrong[:show]:
                say(f"  {score.name}: {line}")
            if len(score.wrong) > show:
                say(f"  {score.name}: … and {len(score.wrong) - show} more")
        say(f"\ntime: generate+store {loaded - started:.1f}s, refresh {refreshed - loaded:.1f}s "
            f"({1000 * (refreshed - loaded) / len(accounts):.0f} ms per account), "
            f"total {time.perf_counter() - started:.1f}s")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seeds", help="several seeds, e.g. 1-5: one line per seed and detector, and totals")
    parser.add_argument("--accounts", type=int, default=120)
    parser.add_argument("--stream", type=int, default=12, help="accounts replayed poll by poll (0: none)")
    parser.add_argument("--show", type=int, default=8, help="wrong cases listed per detector")
    parser.add_argument("--set", action="append", default=[], metavar="DETECTOR.SETTING=VALUE",
                        help="override a setting of the insights: section, e.g. bursts.k=5")
    args = parser.parse_args(argv)
    insights: dict[str, Any] = {}
    for item in args.set:
        path, _, value = item.partition("=")
        section, _, name = path.partition(".")
        insights.setdefault(section, {})[name] = yaml.safe_load(value)
    if not args.seeds:
        evaluate(args.seed, args.accounts, insights, args.stream, args.show)
        return 0
    first, _, last = args.seeds.partition("-")
    totals: dict[str, Score] = {}
    for seed in range(int(first), int(last or first) + 1):
        for score in evaluate(seed, args.accounts, insights, 0, 0, quiet=True):
            print(f"seed {seed:<3} {score.line().splitlines()[0]}")
            total = totals.setdefault(score.name, Score(score.name, score.unit))
            for field in ("tp_flags", "fp_flags", "found", "missed", "natural", "negatives"):
                setattr(total, field, getattr(total, field) + getattr(score, field))
    print()
    for total in totals.values():
        print(f"all      {total.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
