"""Synthetic account histories with known, injected anomalies, for benchmarks/insights_eval.py.

Every account gets months of alerts, backups and tickets drawn from a seeded generator,
in one of several timezones (the history crosses the 2026 DST changes of Europe, the US and
Australia), and some accounts get anomalies whose truth is recorded:

* alert bursts (1–5 days, 2.5–6× the usual week and at least 8 alerts on top of it)
  anywhere in the window the feed shows (90 days back), in the weeks before it (they must
  not hide a later one), and straddling its first day (begun before, running into it);
* quiet accounts (about no alerts), accounts with plain Poisson noise of 2–6 alerts a
  week (half of them with a small burst of 8–12 alerts, half with none), noisy ones
  (hundreds a week, over-dispersed), accounts with little history (onboarded days ago),
  with none, and first imports: 12 weeks of history stored at once, anomalies anywhere;
* backup hosts that back up daily, daily plus a weekly full, Mon–Fri, weekly only, on a
  UTC cron (the local time moves an hour at DST), at times near midnight; with ad-hoc
  manual runs, runs late within the grace period (not misses), removed runs and removed
  weekly fulls (misses), hosts that stopped, hosts added recently (nightly, weekly, and
  random runs: a young host's runs must not be taken for a rhythm), irregular hosts;
* tickets in the states of the demo, Zendesk and Jira, with and without ``updated``.

Events are made up to a day after ``NOW`` (``END``): the evaluation stores what exists at
``NOW``, then the next day's, to see which flags change as a day passes.

Pure data: this module builds Events and the truth, and never touches a store.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from icsfeed.model import Event

#: a Wednesday after the 2026 DST changes of the US (8 Mar), Europe (29 Mar) and Australia (5 Apr)
NOW = datetime(2026, 4, 15, 12, 0, tzinfo=timezone.utc)
#: events exist up to here: the next day's polls
END = NOW + timedelta(days=1)
HISTORY_DAYS = 130
#: a first import: this much history, stored at once
IMPORT_DAYS = 84
#: the days flags must cover: the feed's window (90 days back) and the day flags add
REPORT_DAYS = 91
#: a host younger than this has no rhythm to claim (``backups.min_weeks`` weeks)
YOUNG_DAYS = 28
TIMEZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC", "Asia/Kolkata",
             "America/Los_Angeles", "Europe/London"]
ALERT_NAMES = ["HighCPU", "DiskFull", "HTTPErrors", "SlowQueries", "MemoryPressure", "PodRestarts",
               "CertExpiring", "QueueBacklog", "ReplicationLag", "NodeDown", "LatencyP99"]


@dataclass
class Truth:
    """What was injected, in account-local days."""

    #: (account, first day, last day), wherever they are (scoring expects the ones in the window)
    bursts: list[tuple[str, date, date]] = field(default_factory=list)
    #: (account, first day) -> the case it tests ("recent", "old", "straddle", "import", "quiet")
    burst_case: dict[tuple[str, date], str] = field(default_factory=dict)
    #: (account, host, series "any"|"full", day) -> when the run that did not happen was due
    misses: dict[tuple[str, str, str, date], datetime] = field(default_factory=dict)
    #: (account, host, series) with no regular rhythm
    irregular: set[tuple[str, str, str]] = field(default_factory=set)
    #: (account, host, series) -> the first day from which it must be flagged irregular
    #: (a young one may be flagged earlier, or not yet)
    irregular_from: dict[tuple[str, str, str], date] = field(default_factory=dict)
    #: (account, host) that stopped backing up, and the first missed day
    stopped: dict[tuple[str, str], date] = field(default_factory=dict)
    #: removed runs another run of the host made up for within 12 hours (not misses)
    covered: int = 0
    #: (account, host, series, day) -> when the run that came late (within grace) was due
    late_ok: dict[tuple[str, str, str, date], datetime] = field(default_factory=dict)
    #: (account, ticket key) open with no update for 7+ days at NOW
    stale: set[tuple[str, str]] = field(default_factory=set)
    #: account -> {kind: count} of the week before this Monday (local)
    last_week: dict[str, dict[str, int]] = field(default_factory=dict)
    #: account -> the true mean of alerts per week the noise was drawn around
    weekly_rate: dict[str, float] = field(default_factory=dict)
    #: (account, local day) -> the true mean of alerts that day
    day_rate: dict[tuple[str, date], float] = field(default_factory=dict)
    #: account -> profile words, for breakdowns
    profile: dict[str, dict[str, str]] = field(default_factory=dict)
    #: (account, host, series) -> profile of the host
    hosts: dict[tuple[str, str, str], str] = field(default_factory=dict)


@dataclass
class Account:
    id: str
    tz: str
    events: list[Event] = field(default_factory=list)


def poisson(r: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal for large ones)."""
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(r.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= r.random()
        if p <= limit:
            return k
        k += 1


#: shape of the gamma noise on each day's alert rate: counts are negative-binomial,
#: over-dispersed like real alerting (a day at twice the usual rate is not rare)
DISPERSION = 3.0


def expected_alerts(weekly: float, day: date) -> float:
    """The true mean alert count of a day: weekdays busier than weekends."""
    return weekly / 7 * (0.7 if day.weekday() >= 5 else 1.1)


def local_today(tz: ZoneInfo) -> date:
    return NOW.astimezone(tz).date()


def at(day: date, minute: float, tz: ZoneInfo) -> datetime:
    """Local wall time on a day (minutes may run past midnight or before it), in UTC.

    UTC, because adding a timedelta to a zoned datetime is wall-clock arithmetic: an end
    computed in local time can land before a start in a DST gap.
    """
    base = datetime.combine(day, time(0)) + timedelta(minutes=minute)
    return base.replace(tzinfo=tz).astimezone(timezone.utc)


def generate(seed: int = 7, n_accounts: int = 120) -> tuple[list[Account], Truth]:
    """Accounts with events and the truth of what was injected (deterministic per seed)."""
    r = random.Random(seed)
    truth = Truth()
    accounts = []
    for i in range(n_accounts):
        acc = Account(id=f"acc{i:03d}", tz=TIMEZONES[i % len(TIMEZONES)])
        accounts.append(acc)
        _account(r, acc, truth, i)
    return accounts, truth


def _account(r: random.Random, acc: Account, truth: Truth, i: int) -> None:
    tz = ZoneInfo(acc.tz)
    today = local_today(tz)
    history = ["full"] * 6 + ["import"] * 2 + ["little"] + ["none"] * (1 if i % 40 == 39 else 0)
    life = r.choice(history) if i % 40 != 39 else "none"
    if life == "none":
        truth.profile[acc.id] = {"alerts": "none", "life": "none"}
        return
    length = {"full": HISTORY_DAYS, "import": IMPORT_DAYS}.get(life) or r.randint(5, 18)
    first_day = today - timedelta(days=length)
    days = [first_day + timedelta(days=n) for n in range((today - first_day).days + 2)]  # through tomorrow
    level = r.choices(["silent", "quiet", "poisson", "normal", "noisy"], weights=[1, 3, 2, 5, 2])[0]
    weekly = {"silent": 0.0, "quiet": r.uniform(0.3, 2.0), "poisson": r.uniform(2.0, 6.0),
              "normal": r.uniform(5, 30), "noisy": r.uniform(60, 180)}[level]
    truth.profile[acc.id] = {"alerts": level, "life": life, "tz": acc.tz}
    truth.weekly_rate[acc.id] = weekly
    names = r.sample(ALERT_NAMES, r.randint(4, 9))
    weights = [1 / (k + 1) for k in range(len(names))]
    counter = 0

    def alert(day: date, name: str) -> None:
        nonlocal counter
        counter += 1
        start = at(day, r.uniform(0, 1439), tz)
        host = f"node{r.randint(1, 6)}"
        if start > END:
            return  # has not happened yet
        acc.events.append(Event(
            source="syn-alerts", key=f"{acc.id}-a{counter}", kind="alert", title=f"{name} on {host}",
            start=start, end=start + timedelta(minutes=r.randint(3, 120)), account=acc.id,
            url=f"https://prometheus.example/{acc.id}/{name}", severity=r.choice(["warning", "critical"]),
        ))

    for day in days:
        # plain Poisson noise on "poisson" accounts, gamma noise on the rate elsewhere
        noise = 1.0 if level == "poisson" else r.gammavariate(DISPERSION, 1 / DISPERSION)
        truth.day_rate[(acc.id, day)] = expected_alerts(weekly, day)
        for _ in range(poisson(r, expected_alerts(weekly, day) * noise)):
            alert(day, r.choices(names, weights)[0])
    report_start = today - timedelta(days=REPORT_DAYS)

    def inject(b0: date, dur: int, case: str, extra: int | None = None) -> None:
        dur = max(1, min(dur, (today - b0).days))  # over by yesterday: all of it has happened
        strength = _burst(r, b0, dur, weekly, names, alert, extra)
        truth.bursts.append((acc.id, b0, b0 + timedelta(days=dur - 1)))
        truth.burst_case[(acc.id, b0)] = case
        truth.profile[acc.id]["burst"] = strength

    if level == "poisson" and life != "little":
        if r.random() < 0.5:  # a small burst on a quiet account: it must flag, the noise must not
            inject(first_day + timedelta(days=r.randint(28, length - 2)), r.randint(1, 3), "quiet", r.randint(8, 12))
    elif life == "full":
        # a burst in the weeks before the window (must not hide a later one, nor make normal weeks look odd)
        if r.random() < 0.25:
            inject(today - timedelta(days=r.randint(96, 115)), r.randint(1, 4), "old")
        if r.random() < 0.2:  # begun before the window's first day, running into it
            lead = r.randint(1, 3)
            inject(report_start - timedelta(days=lead), lead + r.randint(1, 3), "straddle")
        if r.random() < 0.5:
            inject(report_start + timedelta(days=r.randint(7, REPORT_DAYS - 2)), r.randint(1, 5), "recent")
    elif life == "import":
        # a first import: bursts anywhere in the 12 weeks, judged by the weeks around them
        b0 = first_day + timedelta(days=r.randint(3, 30))
        while b0 < today - timedelta(days=1) and r.random() < 0.7:
            inject(b0, r.randint(1, 5), "import")
            b0 += timedelta(days=r.randint(24, 45))
    _backups(r, acc, truth, tz, first_day, today, life)
    _settle_misses(acc, truth)
    _tickets(r, acc, truth, tz, first_day, today)
    _last_week(acc, truth, tz, today)


def _burst(r: random.Random, b0: date, dur: int, weekly: float, names: list[str], alert: object,
           extra: int | None = None) -> str:
    factor = r.uniform(2.5, 6.0)
    extra = extra or max(8, round(factor * weekly))
    focus = r.sample(names, min(len(names), r.randint(1, 3)))
    for n in range(extra):
        alert(b0 + timedelta(days=n % dur), r.choice(focus))  # type: ignore[operator]
    return "min+8" if extra == 8 else f"{factor:.0f}x"


HOST_PROFILES = ["daily", "daily", "daily+full", "daily+full", "weekdays", "weekly", "utc-daily",
                 "midnight", "irregular", "new", "stopped", "young-weekly", "young-irregular"]


def _backups(r: random.Random, acc: Account, truth: Truth, tz: ZoneInfo, first_day: date, today: date,
             life: str) -> None:
    report_start = today - timedelta(days=REPORT_DAYS)
    counter = 0

    def run(host: str, when: datetime, full: bool, tags: list[str]) -> None:
        nonlocal counter
        counter += 1
        acc.events.append(Event(
            source="syn-backups", key=f"{acc.id}-b{counter}", kind="backup",
            title=f"backup {host}" + (" (full)" if full else ""), start=when,
            end=when + timedelta(minutes=r.randint(5, 50)), account=acc.id,
            url=f"https://backups.example/{acc.id}/{counter}",
            attrs={"host": host, "tags": tags, "full": full},
        ))

    for h in range(r.randint(1, 4)):
        host = f"host{h}"
        profile = r.choice(HOST_PROFILES) if life in ("full", "import") else "daily"
        start_day = first_day
        if profile == "new":
            start_day = today - timedelta(days=r.randint(3, 12))
        elif profile.startswith("young"):  # a host added weeks ago: too little to claim a rhythm
            start_day = today - timedelta(days=r.randint(10, 27))
        minute = r.uniform(0, 1439) if profile != "midnight" else r.uniform(-20, 20) % 1440
        jitter = r.choice([5, 15, 40])
        weekday = r.randrange(7)
        full_minute = (minute + r.uniform(60, 180)) % 1440
        stop = today - timedelta(days=r.randint(3, REPORT_DAYS - 7)) if profile == "stopped" else None
        if stop is not None:  # a host stops after four weeks of runs at least: a rhythm to miss
            stop = max(stop, start_day + timedelta(days=YOUNG_DAYS))
        p_irregular = r.uniform(0.3, 0.65) if profile != "young-irregular" else r.uniform(0.15, 0.5)
        series_any = "any"
        if profile in ("weekly", "young-weekly"):
            series_any = "full"
        key_any = (acc.id, host, series_any)
        truth.hosts[key_any] = profile
        if profile == "daily+full":
            truth.hosts[(acc.id, host, "full")] = profile
        if profile in ("irregular", "young-irregular"):
            truth.irregular.add(key_any)
            truth.irregular_from[key_any] = start_day + timedelta(days=YOUNG_DAYS)
        if stop is not None:
            truth.stopped[(acc.id, host)] = stop
        learned_from = start_day + timedelta(days=14)  # a first import's misses: once there are runs around them
        for day in [start_day + timedelta(days=n) for n in range((today - start_day).days + 2)]:
            # only runs whose time has come exist (a run later today has not happened yet)
            def when(base: float, spread: float = jitter, day: date = day) -> datetime:
                return at(day, base + r.gauss(0, spread / 2), tz)

            # anomalies only where they can be learned: not on new or young hosts, nor accounts of days
            in_report = day <= today and profile not in ("new", "young-weekly", "young-irregular") and (
                (life == "full" and day >= report_start) or (life == "import" and day >= learned_from))
            if profile in ("irregular", "young-irregular"):
                if r.random() < p_irregular:
                    _emit(run, host, at(day, r.uniform(0, 1439), tz), False, ["adhoc"])
                continue
            if stop is not None and day >= stop:
                if _expected(profile, day, weekday) and day <= today:
                    truth.misses[(acc.id, host, series_any, day)] = at(day, minute, tz)
                continue
            if r.random() < 0.03:  # a manual run at a random time
                _emit(run, host, at(day, r.uniform(0, 1439), tz), False, ["manual"])
            if profile == "utc-daily":
                utc = datetime.combine(day, time(0), timezone.utc) + timedelta(minutes=minute)
                moment = utc + timedelta(minutes=r.gauss(0, jitter / 2))
                if in_report and r.random() < 0.04:
                    truth.misses[(acc.id, host, "any", moment.astimezone(tz).date())] = moment
                    continue
                _emit(run, host, moment, False, ["nightly"])
                continue
            if _expected(profile, day, weekday):
                full = profile in ("weekly", "young-weekly")
                moment = when(minute)
                if in_report and r.random() < 0.05:
                    truth.misses[(acc.id, host, series_any, day)] = moment
                else:
                    if in_report and r.random() < 0.05:  # late, within the grace period
                        delay = r.uniform(60, 360) if profile != "weekly" else r.uniform(120, 1200)
                        truth.late_ok[(acc.id, host, series_any, day)] = moment
                        moment += timedelta(minutes=delay)
                    _emit(run, host, moment, full, ["full", "weekly"] if full else ["nightly"])
            if profile == "daily+full" and day.weekday() == weekday:
                moment = when(full_minute)
                if in_report and r.random() < 0.12:
                    truth.misses[(acc.id, host, "full", day)] = moment
                else:
                    _emit(run, host, moment, True, ["full", "weekly"])


def _settle_misses(acc: Account, truth: Truth) -> None:
    """A removed run is no miss when another run of the host (a full one, for a full) came
    within 12 hours of its due time — a manual run the next morning, a full an hour after
    the skipped nightly: the data was backed up that night, as the customer sees it."""
    runs: dict[tuple[str, bool], list[datetime]] = {}
    for ev in acc.events:
        if ev.kind == "backup" and ev.start <= NOW:  # type: ignore[operator]
            runs.setdefault((ev.attrs["host"], False), []).append(ev.start)  # type: ignore[arg-type]
            if ev.attrs["full"]:
                runs.setdefault((ev.attrs["host"], True), []).append(ev.start)  # type: ignore[arg-type]
    for key, due in list(truth.misses.items()):
        account, host, series, _day = key
        if account != acc.id:
            continue
        others = runs.get((host, series == "full"), [])
        if any(abs(t - due) <= timedelta(hours=12) for t in others):
            del truth.misses[key]
            truth.covered += 1


def _emit(run: object, host: str, when: datetime, full: bool, tags: list[str]) -> None:
    if when <= END:
        run(host, when, full, tags)  # type: ignore[operator]


def _expected(profile: str, day: date, weekday: int) -> bool:
    if profile == "weekdays":
        return day.weekday() < 5
    if profile in ("weekly", "young-weekly"):
        return day.weekday() == weekday
    return True


def _tickets(r: random.Random, acc: Account, truth: Truth, tz: ZoneInfo, first_day: date, today: date) -> None:
    styles = [
        ("state", ["open", "open", "solved"], None),                     # the demo
        ("status", ["new", "open", "pending", "hold", "solved", "closed"], None),  # Zendesk
        ("status", ["To Do", "In Progress", "Done"], "status_category"),  # Jira
    ]
    style = styles[r.randrange(len(styles))]
    for n in range(r.randint(0, 14)):
        created = at(first_day + timedelta(days=r.randint(0, (today - first_day).days + 1)), r.uniform(480, 1080), tz)
        if created > END:
            continue
        word = r.choice(style[1])
        attrs: dict[str, object] = {style[0]: word}
        if style[2]:
            attrs[style[2]] = {"To Do": "new", "In Progress": "indeterminate", "Done": "done"}[word]
        updated = created
        if r.random() < 0.75 and created < NOW:
            updated = created + (NOW - created) * r.random()
            attrs["updated"] = updated.isoformat()
        is_open = word.lower() not in ("solved", "closed", "done")
        key = f"T-{acc.id}-{n}"
        if is_open and created <= NOW and NOW - updated >= timedelta(days=7):
            truth.stale.add((acc.id, key))
        acc.events.append(Event(
            source="syn-tickets", key=key, kind="ticket", title=f"#{key} something is wrong",
            start=created, end=created + timedelta(minutes=30), account=acc.id,
            url=f"https://helpdesk.example/tickets/{key}", attrs=attrs,
        ))


def _last_week(acc: Account, truth: Truth, tz: ZoneInfo, today: date) -> None:
    monday = today - timedelta(days=today.weekday())
    counts: dict[str, int] = {}
    for ev in acc.events:
        day = ev.start.astimezone(tz).date()  # type: ignore[union-attr]
        if monday - timedelta(days=7) <= day < monday and ev.start <= NOW:  # type: ignore[operator]
            counts[ev.kind] = counts.get(ev.kind, 0) + 1
    truth.last_week[acc.id] = counts
