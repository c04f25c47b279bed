#!/usr/bin/env python3
"""Demo origins for icsfeed: prints a realistic recent month as JSON, relative to today.

Each day's records depend only on that day and the account (a seeded generator), so two
polls on the same day print the same bytes and a day keeps its events as time moves on.
Standard library only: the demo runs with no external system.

    demo_data.py alerts|backups|tickets|maintenance|certificates
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

DAYS_BACK = 60
TODAY = datetime.now(timezone.utc).date()
ACCOUNTS = {"acme": "Europe/Berlin", "globex": "America/New_York", "initech": "Europe/London"}
HOSTS = {"acme": ["db01", "web01"], "globex": ["pg-main"], "initech": ["files01"]}
ALERTS = [
    ("HighCPU", "warning", "CPU above 90% for 10 minutes", "node_cpu_seconds_total"),
    ("DiskFull", "critical", "Disk /var is 97% full", "node_filesystem_avail_bytes"),
    ("HTTPErrors", "critical", "5xx rate above 5% on the checkout API", "http_requests_total"),
    ("SlowQueries", "warning", "p99 query latency above 2s", "pg_stat_statements_seconds"),
    ("MemoryPressure", "warning", "Memory available below 5%", "node_memory_MemAvailable_bytes"),
]


def rng(*parts: object) -> random.Random:
    seed = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return random.Random(seed)


def days() -> list[date]:
    return [TODAY - timedelta(days=n) for n in range(DAYS_BACK, -1, -1)]


def at(day: date, hour: int, minute: int, account: str) -> datetime:
    """A local time of the account, as a UTC instant (so + timedelta is real time across DST)."""
    return datetime.combine(day, time(hour, minute), ZoneInfo(ACCOUNTS[account])).astimezone(timezone.utc)


def alerts() -> list[dict]:
    out = []
    for day in days():
        age = (TODAY - day).days
        for account in ACCOUNTS:
            r = rng("alerts", account, day)
            if account == "acme":
                # a burst in the last five days after a quiet week (an alert a week before it
                # would, on some dates, be counted into the burst and move its start back)
                count = r.randint(3, 6) if age < 5 else (1 if age > 12 and r.random() < 0.12 else 0)
            elif account == "globex":
                count = 1 if age == 20 else 0
            else:
                count = 1 if r.random() < 0.25 else 0
            for n in range(count):
                name, severity, summary, metric = r.choice(ALERTS)
                host = r.choice(HOSTS[account])
                start = at(day, r.randint(0, 22), r.choice([0, 7, 15, 23, 38, 51]), account)
                firing = age == 0 and n == 0 and account == "acme"
                end = None if firing else start + timedelta(minutes=r.randint(4, 95))
                fingerprint = hashlib.sha1(f"{account}{host}{name}{day}{n}".encode()).hexdigest()[:16]
                out.append({
                    "fingerprint": fingerprint, "startsAt": start.isoformat(),
                    "endsAt": end.isoformat() if end else None,
                    "labels": {"alertname": name, "customer": account, "instance": f"{host}.{account}.example",
                               "severity": severity},
                    "annotations": {"summary": summary},
                    "generatorURL": f"https://prometheus.demo.example/graph?g0.expr={metric}",
                })
    return out


def backups() -> list[dict]:
    out = []
    for day in days():
        for account, hosts in HOSTS.items():
            for host in hosts:
                r = rng("backup", host, day)
                start = at(day, 1, 30, account) + timedelta(minutes=r.randint(0, 20))
                out.append(snapshot(host, account, start, ["nightly"], r))
                weekly_day = 6 if account != "globex" else 5  # Sunday; globex on Saturday
                if host in ("db01", "pg-main") and day.weekday() == weekly_day:
                    missed = account == "acme" and 14 <= (TODAY - day).days < 21
                    if not missed:
                        out.append(snapshot(host, account, at(day, 3, 0, account) + timedelta(minutes=r.randint(0, 9)),
                                            ["full", "weekly"], r))
    return out


def snapshot(host: str, account: str, start: datetime, tags: list[str], r: random.Random) -> dict:
    short = hashlib.sha256(f"{host}{start.isoformat()}".encode()).hexdigest()
    return {
        "id": short, "short_id": short[:8], "hostname": host, "account": account, "tags": tags,
        "time": start.isoformat(), "end": (start + timedelta(minutes=r.randint(6, 40))).isoformat(),
        "paths": ["/var/lib/postgresql" if host.startswith(("db", "pg")) else "/srv"],
        "url": f"https://backups.demo.example/snapshots/{short[:8]}",
    }


def tickets() -> list[dict]:
    subjects = ["Checkout page slow", "Cannot log in to admin panel", "Request: new VPN user",
                "Invoice question", "Backup restore test", "SSL warning in browser", "Disk space on db01"]
    out = []
    number = 4100
    for day in days():
        for account in ACCOUNTS:
            r = rng("ticket", account, day)
            chance = 0.45 if account == "acme" and (TODAY - day).days < 8 else 0.08
            if r.random() < chance:
                number_here = number + int(hashlib.sha1(f"{account}{day}".encode()).hexdigest()[:4], 16) % 900
                age = (TODAY - day).days
                out.append({
                    "id": number_here, "subject": r.choice(subjects), "organization": account,
                    "created_at": at(day, r.randint(8, 17), r.randint(0, 59), account).isoformat(),
                    "status": "open" if age < 4 else "solved", "priority": r.choice(["low", "normal", "high"]),
                    "requester": r.choice(["Dana", "Lee", "Sam", "Alex"]),
                })
    return out


def maintenance() -> list[dict]:
    def next_weekday(weekday: int, weeks_ahead: int = 0) -> date:
        return TODAY + timedelta(days=(weekday - TODAY.weekday()) % 7 + 7 * weeks_ahead)

    acme_next = next_weekday(1)  # Tuesday
    acme_past = acme_next - timedelta(days=28)
    initech_next = next_weekday(3, 1)
    return [
        {"id": f"mw-acme-{acme_next}", "account": "acme", "title": "Database upgrade to PostgreSQL 17",
         "start": at(acme_next, 22, 0, "acme").isoformat(), "end": (at(acme_next, 22, 0, "acme") + timedelta(hours=3)).isoformat(),
         "detail": "db01 read-only during the upgrade; checkout in maintenance mode.", "state": "scheduled"},
        {"id": f"mw-acme-{acme_past}", "account": "acme", "title": "Kernel patching web01",
         "start": at(acme_past, 21, 0, "acme").isoformat(), "end": (at(acme_past, 21, 0, "acme") + timedelta(hours=1)).isoformat(),
         "detail": "Rolling reboot.", "state": "done"},
        {"id": f"mw-initech-{initech_next}", "account": "initech", "title": "File server migration",
         "start": at(initech_next, 19, 0, "initech").isoformat(), "end": (at(initech_next, 19, 0, "initech") + timedelta(hours=4)).isoformat(),
         "detail": "files01 moves to new storage.", "state": "scheduled"},
    ]


def certificates() -> list[dict]:
    expires = TODAY + timedelta(days=18)
    issued = expires - timedelta(days=90)
    return [
        {"id": "www.acme.example:expires", "account": "acme", "title": "TLS certificate for www.acme.example expires",
         "date": expires.isoformat(), "detail": f"Issuer: R11 (Let's Encrypt). Issued {issued}."},
        {"id": "www.acme.example:issued", "account": "acme", "title": "TLS certificate for www.acme.example issued",
         "date": issued.isoformat(), "detail": "Issuer: R11 (Let's Encrypt)."},
    ]


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    makers = {"alerts": alerts, "backups": backups, "tickets": tickets, "maintenance": maintenance,
              "certificates": certificates}
    if what not in makers:
        sys.exit(f"usage: demo_data.py {'|'.join(makers)}")
    json.dump(makers[what](), sys.stdout, indent=1)
    sys.stdout.write("\n")
