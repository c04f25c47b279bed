"""A second generator of account histories, written apart from synthetic_history.py.

The detectors were developed against synthetic_history.py, and a detector tuned on one
generator learns its habits. This one makes its own choices wherever there is one to make:

* a different ``NOW`` (4 November 2026, so the window holds the autumn DST changes of
  Europe and the US and the spring ones of New Zealand and Australia) and other
  timezones, half- and quarter-hour offsets included (Adelaide, Kathmandu, St John's);
* **12 weeks of history stored at once** (a first import) for most accounts; 16 weeks for
  some, so that bursts can straddle the first day the feed shows;
* alert noise as a Poisson process (constant, or office hours: weekdays busy, weekends a
  quarter of that), as gamma-mixed counts with a week-to-week factor and a slow trend,
  with monitoring gaps of several silent days; alert times drawn through the day;
* bursts as incidents: 1–6 days, decaying day by day, their alerts mostly of one or two
  names, totalling 3–7× the usual week (at least 9 alerts more than usual);
* backup hosts: nightly with a weekly full that *replaces* that night's run, nightly plus
  a separate full, weekly fulls only, workdays, twice a week, a UTC cron, irregular,
  retired; young hosts (nightly, weekly, random) added 1–4 weeks ago; drifting start
  times and large jitter; fulls marked by ``attrs.full`` (true or "yes") or by tags given
  as a list or as comma-separated text; ``hostname`` instead of ``host`` on some accounts;
  whole nights missed, fulls missed, runs late within grace, manual runs;
* tickets in Zendesk-like states (``on-hold`` is open).

The truth has the shape of synthetic_history.Truth, so insights_eval.py scores both alike.
"""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from synthetic_history import Account, Truth

from icsfeed.model import Event

NOW = datetime(2026, 11, 4, 15, 45, tzinfo=timezone.utc)  # a Wednesday
END = NOW + timedelta(days=1)
REPORT_DAYS = 91
IMPORT_WEEKS = 12
LONG_WEEKS = 16
YOUNG_DAYS = 28
TIMEZONES = ["America/Chicago", "Europe/Paris", "Pacific/Auckland", "Asia/Tokyo", "Australia/Adelaide",
             "Asia/Kathmandu", "America/St_Johns", "America/Sao_Paulo", "Europe/Helsinki"]
INCIDENTS = ["ApiLatencyHigh", "Disk95Percent", "ErrorBudgetBurn", "PgReplicaLag", "OOMKilled",
             "TargetDown", "CronJobFailed", "TLSHandshakeErrors", "QueueDepth"]


def local(day: date, minutes: float, tz: ZoneInfo) -> datetime:
    """Wall-clock minutes after a local midnight (may spill into the next day), as UTC."""
    naive = datetime.combine(day, time(0)) + timedelta(minutes=minutes)
    return naive.replace(tzinfo=tz).astimezone(timezone.utc)


def arrivals(r: random.Random, rate: float) -> list[float]:
    """Times (fractions of a day) of a Poisson process of ``rate`` per day over one day."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = r.expovariate(rate)
    while t < 1.0:
        out.append(t)
        t += r.expovariate(rate)
    return out


def generate(seed: int = 101, n_accounts: int = 40) -> tuple[list[Account], Truth]:
    r = random.Random(seed * 7919 + 13)
    truth = Truth()
    accounts = []
    for i in range(n_accounts):
        acc = Account(id=f"var{i:03d}", tz=r.choice(TIMEZONES))
        accounts.append(acc)
        _account(r, acc, truth)
    return accounts, truth


def _account(r: random.Random, acc: Account, truth: Truth) -> None:
    tz = ZoneInfo(acc.tz)
    today = NOW.astimezone(tz).date()
    weeks = LONG_WEEKS if r.random() < 0.25 else IMPORT_WEEKS
    first = today - timedelta(weeks=weeks)
    model = r.choices(["silent", "poisson", "office", "drifting", "gappy"], weights=[1, 4, 3, 3, 2])[0]
    weekly = {"silent": 0.0, "poisson": r.uniform(1.0, 8.0), "office": r.uniform(5, 40),
              "drifting": r.uniform(10, 120), "gappy": r.uniform(3, 30)}[model]
    truth.profile[acc.id] = {"alerts": model, "life": f"{weeks} weeks", "tz": acc.tz}
    truth.weekly_rate[acc.id] = weekly
    trend = r.uniform(0.75, 1.35) if model == "drifting" else 1.0
    gaps: set[date] = set()
    if model == "gappy":
        for _ in range(r.randint(1, 2)):
            g0 = first + timedelta(days=r.randint(0, weeks * 7 - 10))
            gaps.update(g0 + timedelta(days=k) for k in range(r.randint(4, 10)))
    names = r.sample(INCIDENTS, r.randint(3, 7))
    serial = [0]

    def alert(day: date, fraction: float, name: str) -> None:
        serial[0] += 1
        start = local(day, fraction * 1440, tz)
        if start > END:
            return
        acc.events.append(Event(
            source="var-alerts", key=f"{acc.id}-{serial[0]}", kind="alert", title=f"{name} ({acc.id})",
            start=start, end=start + timedelta(minutes=r.randint(1, 240)), account=acc.id,
            url=f"https://grafana.example/alerting/{acc.id}/{name}", severity=r.choice(["warning", "critical", "page"]),
        ))

    week_factor: dict[int, float] = {}
    days = [first + timedelta(days=k) for k in range((today - first).days + 2)]
    for k, day in enumerate(days):
        rate = _day_rate(model, weekly, day) * (1 + (trend - 1) * k / len(days))
        truth.day_rate[(acc.id, day)] = rate
        if model == "drifting":
            factor = week_factor.setdefault(k // 7, r.gammavariate(12, 1 / 12))
            rate *= factor * r.gammavariate(4, 1 / 4)
        if day in gaps:
            rate = 0.0
        for t in arrivals(r, rate):
            alert(day, t if model != "office" else 0.3 + 0.5 * t, r.choice(names))

    window_start = today - timedelta(days=REPORT_DAYS)

    def incident(b0: date, length: int, case: str) -> None:
        length = max(1, min(length, (today - b0).days))
        factor = r.uniform(3.0, 7.0)
        extra = max(9, round((factor - 1) * weekly))
        weights = [0.6**k for k in range(length)]
        focus = r.sample(names, min(2, len(names)))
        for _ in range(extra):
            d = r.choices(range(length), weights)[0]
            alert(b0 + timedelta(days=d), r.random(), r.choice(focus) if r.random() < 0.85 else r.choice(names))
        truth.bursts.append((acc.id, b0, b0 + timedelta(days=length - 1)))
        truth.burst_case[(acc.id, b0)] = case
        truth.profile[acc.id]["burst"] = f"{factor:.0f}x"

    if model != "silent" or r.random() < 0.5:
        n = r.choices([0, 1, 2], weights=[45, 40, 15])[0]
        starts = sorted(r.sample(range(10, weeks * 7 - 2), n)) if n else []
        for k, offset in enumerate(starts):
            if k and offset - starts[k - 1] < 21:
                continue  # incidents weeks apart
            incident(first + timedelta(days=offset), r.randint(1, 6), "import")
        if weeks == LONG_WEEKS and r.random() < 0.5:
            lead = r.randint(1, 3)
            incident(window_start - timedelta(days=lead), lead + r.randint(1, 3), "straddle")
    runs = _fleet(r, acc, truth, tz, first, today)
    _settle(acc, truth, runs)
    _tickets(r, acc, truth, tz, first, today)
    _week_counts(acc, truth, tz, today)


def _day_rate(model: str, weekly: float, day: date) -> float:
    if model == "office":
        weekend = day.weekday() >= 5
        return weekly / (5 + 2 * 0.25) * (0.25 if weekend else 1.0)
    return weekly / 7


PROFILES = ["nightly-full-replaces", "nightly-full-replaces", "nightly-plus-full", "weekly-full", "weekly-full",
            "workdays", "twice-weekly", "utc-cron", "irregular", "retired", "young-nightly", "young-weekly",
            "young-irregular"]


def _fleet(r: random.Random, acc: Account, truth: Truth, tz: ZoneInfo, first: date,
           today: date) -> list[tuple[str, datetime, bool]]:
    """The hosts' snapshots; returns (host, start, full) of each, for :func:`_settle`."""
    host_attr = "hostname" if r.random() < 0.3 else "host"
    marking = r.choice(["attr", "attr-yes", "tags-text", "tags-list"])
    serial = [0]
    made: list[tuple[str, datetime, bool]] = []

    def snapshot(host: str, when: datetime, full: bool, tags: list[str]) -> None:
        if when > END:
            return
        serial[0] += 1
        made.append((host, when, full))
        attrs: dict[str, object] = {host_attr: host}
        if marking == "attr":
            attrs["full"] = full
            attrs["tags"] = tags
        elif marking == "attr-yes":
            attrs["full"] = "yes" if full else "no"
            attrs["tags"] = tags
        elif marking == "tags-text":
            attrs["tags"] = ",".join((["full"] if full else []) + tags)
        else:
            attrs["tags"] = (["Full"] if full else []) + tags
        acc.events.append(Event(
            source="var-backups", key=f"{acc.id}-s{serial[0]}", kind="backup", title=f"snapshot {host}",
            start=when, end=when + timedelta(minutes=r.randint(2, 90)), account=acc.id,
            url=f"https://restic.example/{acc.id}/{serial[0]}", attrs=attrs,
        ))

    for h in range(r.randint(1, 5)):
        host = f"{acc.id}-srv{h}"
        profile = r.choice(PROFILES)
        start = first
        if profile.startswith("young"):
            start = today - timedelta(days=r.randint(5 if profile == "young-nightly" else 8, 27))
        nightly = r.uniform(-240, 300)  # 20:00 to 05:00
        evening = r.uniform(1080, 1380)  # 18:00 to 23:00
        jitter = r.choice([3, 10, 25, 45])
        drift = r.uniform(-4, 4) if r.random() < 0.3 else 0.0  # minutes per week
        weekday = r.randrange(7)
        second = (weekday + r.randint(2, 4)) % 7
        full_at = nightly + r.uniform(30, 240)
        utc_minute = r.uniform(0, 1439)
        stop = today - timedelta(days=r.randint(10, 60)) if profile == "retired" else None
        p_random = r.uniform(0.25, 0.6) if profile == "irregular" else r.uniform(0.2, 0.5)
        full_series = profile in ("weekly-full", "twice-weekly", "young-weekly")
        key = (acc.id, host, "full" if full_series else "any")
        truth.hosts[key] = profile
        if profile in ("nightly-full-replaces", "nightly-plus-full"):
            truth.hosts[(acc.id, host, "full")] = profile
        if profile in ("irregular", "young-irregular"):
            truth.irregular.add(key)
            truth.irregular_from[key] = start + timedelta(days=YOUNG_DAYS)
        if stop is not None:
            truth.stopped[(acc.id, host)] = stop
        can_miss = profile not in ("young-nightly", "young-weekly", "young-irregular")
        day = start
        while day <= today + timedelta(days=1):
            age = (day - start).days
            shift = drift * age / 7
            anomalies = can_miss and age >= 14 and day <= today

            def at(minutes: float, day: date = day, shift: float = shift, jitter: float = jitter) -> datetime:
                return local(day, minutes + shift + r.gauss(0, jitter), tz)

            def planned(due: datetime, full: bool, tags: list[str], miss: float, series: str, day: date = day,
                        host: str = host, anomalies: bool = anomalies) -> None:
                if anomalies and r.random() < miss:
                    truth.misses[(acc.id, host, series, day)] = due
                    return
                late = timedelta(minutes=r.uniform(60, 300) if not full else r.uniform(120, 960))
                if anomalies and r.random() < 0.04 and due + late <= NOW:  # late, within grace, and come
                    truth.late_ok[(acc.id, host, series, day)] = due
                    due += late
                snapshot(host, due, full, tags)

            if profile in ("irregular", "young-irregular"):
                if r.random() < p_random:
                    snapshot(host, local(day, r.uniform(0, 1439), tz), False, ["adhoc"])
                day += timedelta(days=1)
                continue
            if stop is not None and day >= stop:
                if day <= today:
                    truth.misses[(acc.id, host, "any", day)] = local(day, nightly + shift, tz)
                day += timedelta(days=1)
                continue
            if r.random() < 0.02:
                snapshot(host, local(day, r.uniform(540, 1080), tz), False, ["manual"])
            wd = day.weekday()
            if profile == "nightly-full-replaces":
                if wd == weekday:
                    planned(at(full_at), True, ["weekly"], 0.12, "full")
                else:
                    planned(at(nightly), False, ["nightly"], 0.03, "any")
            elif profile == "nightly-plus-full":
                planned(at(nightly), False, ["nightly"], 0.03, "any")
                if wd == weekday:
                    planned(at(full_at), True, ["weekly"], 0.12, "full")
            elif profile in ("weekly-full", "young-weekly"):
                if wd == weekday:
                    planned(at(full_at), True, ["weekly"], 0.12, "full")
            elif profile == "twice-weekly":
                if wd in (weekday, second):
                    planned(at(full_at), True, ["weekly"], 0.1, "full")
            elif profile == "workdays":
                if wd < 5:
                    planned(at(evening), False, ["nightly"], 0.04, "any")
            elif profile == "utc-cron":  # once a UTC day: its local day and time move at DST
                utc = datetime.combine(day, time(0), timezone.utc) + timedelta(minutes=utc_minute + r.gauss(0, jitter))
                planned(utc, False, ["nightly"], 0.03, "any", utc.astimezone(tz).date())
            else:  # retired (before it stopped), young-nightly
                planned(at(nightly), False, ["nightly"], 0.03, "any")
            day += timedelta(days=1)
    return made


def _settle(acc: Account, truth: Truth, runs: list[tuple[str, datetime, bool]]) -> None:
    """A removed run made up for within 12 hours by another run of the host (a full one for
    a full) is no miss: that night was backed up."""
    for key, due in list(truth.misses.items()):
        account, host, series, _day = key
        if account == acc.id and any(h == host and (full or series != "full") and abs(t - due) <= timedelta(hours=12)
                                     and t <= NOW for h, t, full in runs):
            del truth.misses[key]
            truth.covered += 1


def _tickets(r: random.Random, acc: Account, truth: Truth, tz: ZoneInfo, first: date, today: date) -> None:
    states = ["new", "open", "pending", "on-hold", "solved", "closed"]
    for n in range(r.randint(0, 10)):
        created = local(first + timedelta(days=r.randint(0, (today - first).days)), r.uniform(420, 1200), tz)
        if created > NOW:
            continue
        state = r.choice(states)
        attrs: dict[str, object] = {"status": state}
        updated = created
        if r.random() < 0.8:
            updated = created + (NOW - created) * r.random() ** 2
            attrs["updated_at"] = updated.isoformat()
        key = f"Z{acc.id}{n}"
        if state not in ("solved", "closed") and NOW - updated >= timedelta(days=7):
            truth.stale.add((acc.id, key))
        acc.events.append(Event(
            source="var-tickets", key=key, kind="ticket", title=f"Ticket {key}", start=created,
            end=created + timedelta(minutes=10), account=acc.id, url=f"https://support.example/{key}", attrs=attrs,
        ))


def _week_counts(acc: Account, truth: Truth, tz: ZoneInfo, today: date) -> None:
    monday = today - timedelta(days=today.weekday())
    counts: dict[str, int] = {}
    for ev in acc.events:
        day = ev.start.astimezone(tz).date()  # type: ignore[union-attr]
        if monday - timedelta(days=7) <= day < monday and ev.start <= NOW:  # type: ignore[operator]
            counts[ev.kind] = counts.get(ev.kind, 0) + 1
    truth.last_week[acc.id] = counts
