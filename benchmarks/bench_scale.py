"""Scale: 1,000 accounts x 1,000 events each, poll + render, time and peak memory.

Ten ``file`` sources (JSON Lines, 100,000 records each, four kinds, spread over every
account) are polled by the product's own ``poll_source`` and the feeds rendered by
``render_feeds`` -- what ``icsfeed poll --once`` does -- in a child process, so that its peak
RSS (``resource.getrusage``) is icsfeed's alone. The data files are written by the parent
before the child starts (not timed). Insights are switched off here: they are a separate
stage with their own cost, measured on a sample of accounts and reported next to it.

Then, in the same child: a poll in which nothing changed (steady state: every source
re-read, nothing written, no feed re-rendered) and a poll in which 1% of the events changed.

``ICSFEED_BENCH_ACCOUNTS`` / ``ICSFEED_BENCH_EVENTS`` scale it down for a quick look.

:func:`run_pollers` (``--only pollers`` in run.py, or ``bench_scale.py --pollers``): the same
kind of data, smaller (``ICSFEED_BENCH_POLLER_ACCOUNTS`` x ``ICSFEED_BENCH_POLLER_EVENTS``), polled
and rendered by one ``icsfeed poll --once`` and by two started together (they split the
sources and the feeds, icsfeed/coordination.py), on PostgreSQL (a private server on this
machine, tests/postgres.py, with PostgreSQL's own fsync and commit settings) and on SQLite,
side by side: events per second from the start of the processes to the end of the last.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import REPO, line

#: the pollers comparison: small enough for a few minutes in all (4 setups, best of 2)
POLLER_ACCOUNTS = int(os.environ.get("ICSFEED_BENCH_POLLER_ACCOUNTS", "150"))
POLLER_EVENTS = int(os.environ.get("ICSFEED_BENCH_POLLER_EVENTS", "400"))
POLLER_ROUNDS = int(os.environ.get("ICSFEED_BENCH_POLLER_ROUNDS", "2"))

ACCOUNTS = int(os.environ.get("ICSFEED_BENCH_ACCOUNTS", "1000"))
PER_ACCOUNT = int(os.environ.get("ICSFEED_BENCH_EVENTS", "1000"))
SOURCES = 10
KINDS = ("alert", "backup", "ticket", "maintenance")


def write_data(base: Path, accounts_n: int = ACCOUNTS, per_account: int = PER_ACCOUNT) -> None:
    config = base / "config"
    config.mkdir(parents=True)
    rnd = random.Random(11)
    now = datetime.now(timezone.utc)
    per_source = accounts_n * per_account // SOURCES
    sources = []
    for s in range(SOURCES):
        kind = KINDS[s % len(KINDS)]
        with (config / f"src{s}.jsonl").open("w", encoding="utf-8") as fh:
            for j in range(per_source):
                account = (s * per_source + j) % accounts_n
                start = now - timedelta(minutes=rnd.randrange(0, 85 * 24 * 60))
                host = f"host-{j % 97:02d}.c{account:04d}.example"
                fh.write(json.dumps({
                    "id": f"{s}-{j}", "account": f"c{account:04d}", "host": host,
                    "title": f"{kind} on {host}: job=api, p99 > 2s; \"check\"",
                    "start": start.isoformat(), "end": (start + timedelta(minutes=rnd.randrange(5, 240))).isoformat(),
                    "detail": f"{kind} on {host}; see https://wiki.example/runbooks/{kind}\nlabels: job=api, team=ops",
                    "severity": ("warning", "critical", "info")[j % 3]}) + "\n")
        sources.append(f"""  - id: src{s}
    type: file
    path: src{s}.jsonl
    format: jsonl
    mapping: {{kind: {kind}, key: id, title: title, start: start, end: end, account: account, detail: detail,
               severity: severity, url: "https://origin.example/{kind}/{{id}}", attrs: {{host: host}}}}""")
    accounts = "\n".join(f"  - {{id: c{i:04d}, name: Customer {i}}}" for i in range(accounts_n))
    (config / "icsfeed.yaml").write_text(
        "insights: {enabled: false}\n"
        f"accounts:\n{accounts}\n"
        "teams:\n  - {id: critical, name: Critical alerts, accounts: '*', kinds: [alert], min_severity: critical}\n"
        "sources:\n" + "\n".join(sources) + "\n", encoding="utf-8")


def child(base: Path) -> None:
    """Runs in its own process: poll + render, then steady state, then 1% changed."""
    sys.path.insert(0, str(REPO))
    from icsfeed.config import load_config
    from icsfeed.poller import poll_source
    from icsfeed.render import render_feeds
    from icsfeed.store import Store

    config = load_config(base / "config", base / "data")
    store = Store(config.storage_url, uid_host=config.uid_host)
    out: dict[str, float] = {}

    def poll_all() -> tuple[float, float, int]:
        started = time.perf_counter()
        for source_id in config.sources:
            report = poll_source(config, store, source_id)
            assert report.ok, report.line()
        polled = time.perf_counter()
        rendered = render_feeds(config, store)
        return polled - started, time.perf_counter() - polled, len(rendered)

    cpu = time.process_time()
    out["poll"], out["render"], out["feeds"] = poll_all()
    out["cpu"] = time.process_time() - cpu
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["events"] = float(sum(store.event_counts().values()))

    out["steady_poll"], out["steady_render"], out["steady_feeds"] = poll_all()

    for s in range(SOURCES):  # 1% of every source's records change their title
        path = base / "config" / f"src{s}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        for j in random.Random(s).sample(range(len(lines)), len(lines) // 100):
            record = json.loads(lines[j])
            record["title"] += " (updated)"
            lines[j] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out["one_pct_poll"], out["one_pct_render"], out["one_pct_feeds"] = poll_all()
    out["peak_rss_mib_end"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["db_mib"] = (base / "data" / "icsfeed.db").stat().st_size / 2**20
    out.update(_insights_sample(config, store))
    print("RESULT " + json.dumps(out), flush=True)


def _insights_sample(config: object, store: object) -> dict[str, float]:
    """Insights (on by default in the product) recompute every account a poll touched; time
    that for a sample of accounts with the default settings, to extrapolate."""
    from icsfeed.insights import refresh_account
    from icsfeed.insights.settings import InsightsSettings

    accounts = list(config.accounts.values())[:20]  # type: ignore[attr-defined]
    started = time.perf_counter()
    for account in accounts:
        refresh_account(config, store, InsightsSettings(), account, time.time())  # type: ignore[arg-type]
    return {"insights_per_account": (time.perf_counter() - started) / len(accounts)}


def stage_costs(base: Path, n: int = 20_000) -> dict[str, float]:
    """CPU microseconds per event of each stage of a first poll, on n records of one source
    (a fresh store): where the time of the big run goes."""
    sys.path.insert(0, str(REPO))
    from icsfeed.config import load_config
    from icsfeed.poller import _checked, build_source
    from icsfeed.render import render_vevent
    from icsfeed.store import EventRow, Store

    sample = base / "stages"
    (sample / "config").mkdir(parents=True)
    text = (base / "config" / "icsfeed.yaml").read_text(encoding="utf-8")
    (sample / "config" / "icsfeed.yaml").write_text(text, encoding="utf-8")
    with (base / "config" / "src0.jsonl").open(encoding="utf-8") as src, \
            (sample / "config" / "src0.jsonl").open("w", encoding="utf-8") as dst:
        for _, record in zip(range(n), src, strict=False):
            dst.write(record)
    config = load_config(sample / "config", sample / "data")
    store = Store(config.storage_url, uid_host=config.uid_host)
    cpu = time.process_time
    t = cpu()
    source = build_source(config, "src0")
    events = _checked(config, source, source.fetch(None))
    fetch = cpu() - t
    rows = [EventRow(id=0, uid="0123456789abcdef0123456789abcdef@bench", event=ev, sequence=0, created=1.7e9,
                     last_modified=1.7e9) for ev in events]
    t = cpu()
    for row in rows:
        render_vevent(config, row)
    vevent = cpu() - t
    t = cpu()
    store.apply_poll("src0", events, absence="keep", complete=True, now=time.time(), previous_success=None)
    stored = cpu() - t
    store.close()
    return {"stage_fetch_map_us": fetch / len(events) * 1e6, "stage_vevent_us": vevent / len(events) * 1e6,
            "stage_store_us": stored / len(events) * 1e6, "stage_records": float(len(events))}


def run() -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="icsfeed-scale-"))
    started = time.perf_counter()
    write_data(base)
    generated = time.perf_counter() - started
    stages = stage_costs(base)
    try:
        done = subprocess.run([sys.executable, __file__, "--child", str(base)], capture_output=True, text=True,
                              timeout=7200, check=False, cwd=Path(__file__).parent)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # gigabytes of data and database
    result = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        raise SystemExit(f"scale child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    r = json.loads(result[0].removeprefix("RESULT "))
    total = r["poll"] + r["render"]
    print(f"Scale: {ACCOUNTS:,} accounts x {PER_ACCOUNT:,} events = {int(r['events']):,} events from {SOURCES} file "
          f"sources, {int(r['feeds'])} feeds (data written in {generated:.0f} s, not timed); child process")
    print(line("first poll of everything (fetch, map, store, render VEVENTs)", f"{r['poll']:.1f} s",
               f"{r['poll'] / r['events'] * 1e6:.0f} us per event"))
    print(line("render_feeds (join, hash, save every feed)", f"{r['render']:.1f} s",
               f"{r['render'] / r['feeds'] * 1000:.0f} ms per feed"))
    print(line("poll + render", f"{total:.1f} s", f"goal <= 60 s; CPU {r['cpu']:.1f} s"))
    print(line("peak RSS", f"{r['peak_rss_mib']:.0f} MiB", "goal <= 1024 MiB"))
    print(line("steady state: poll with nothing changed + render", f"{r['steady_poll'] + r['steady_render']:.1f} s",
               f"{int(r['steady_feeds'])} feeds re-rendered"))
    print(line("poll with 1% of the events changed + render", f"{r['one_pct_poll'] + r['one_pct_render']:.1f} s",
               f"render {r['one_pct_render']:.1f} s for {int(r['one_pct_feeds'])} feeds"))
    print(line("peak RSS over all three; database size", f"{r['peak_rss_mib_end']:.0f} MiB", f"{r['db_mib']:.0f} MiB on disk"))
    per_event = stages["stage_fetch_map_us"] + stages["stage_vevent_us"] + stages["stage_store_us"]
    print(line(f"where a first poll's time goes, CPU per event ({int(stages['stage_records']):,} records)",
               f"{per_event:.0f} us", f"fetch + map {stages['stage_fetch_map_us']:.0f}, "
               f"VEVENT render {stages['stage_vevent_us']:.0f}, store {stages['stage_store_us']:.0f}"))
    if "insights_per_account" in r:
        per = r["insights_per_account"]
        print(line("insights refresh, per account (mean of 20, default settings)", f"{per * 1000:.0f} ms",
                   f"x {ACCOUNTS:,} accounts = {per * ACCOUNTS:.0f} s per poll that touches them all"))
    return {"scale_" + k: v for k, v in {**r, **stages}.items()}


def _poll_once(base: Path, url: str, pollers: int) -> tuple[float, list[int], float]:
    """``pollers`` x ``icsfeed poll --once`` started together on an empty store (its schema made
    first); wall seconds until the last exits, how many sources each polled, and their CPU
    seconds."""
    sys.path.insert(0, str(REPO))
    from icsfeed.store import Store

    Store(url).close()
    env = {**os.environ, "ICSFEED_STORAGE_URL": url, "ICSFEED_SECRET_KEY": "bench-" + "k" * 32, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "icsfeed", "--config", str(base / "config"), "--data", str(base / "data"),
            "--log-level", "WARNING", "poll", "--once"]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(pollers)]
    outputs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    polled = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"icsfeed poll --once failed ({proc.returncode}):\n{err[-3000:]}")
        polled.append(sum(1 for ln in out.splitlines() if " new, " in ln))
    # more than SOURCES polls: a poller that started late re-polled what the other had polled
    # before it started (a tiny scale only: a source takes longer than a start)
    return wall, polled, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def _server_cpu(cluster: object) -> float:
    """CPU seconds PostgreSQL has used so far: its postmaster's own and its ended backends'
    (the pollers' connections end with them, so a run's backends are counted once it ends)."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])  # type: ignore[attr-defined]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _cpu_ceiling(seconds: float = 3.0) -> float:
    """Two CPU-bound processes against one, now: the most a second poller can gain on this
    machine at this moment (other work shares its cores)."""
    code = f"import time\nend = time.process_time() + {seconds}\nn = 0\nwhile time.process_time() < end: n += 1\nprint(n)"
    rates = []
    for procs in (1, 2):
        started = time.perf_counter()
        runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        for run in runs:
            run.communicate(timeout=120)
        rates.append(procs / (time.perf_counter() - started))
    return rates[1] / rates[0]


def _stored(url: str) -> tuple[int, int]:
    """(events, clean rendered feeds) in the store: the run did all of it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            events = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
            feeds = conn.execute(text("SELECT count(*) FROM feeds WHERE NOT dirty AND etag IS NOT NULL")).scalar_one()
    finally:
        engine.dispose()
    return int(events), int(feeds)


def run_pollers() -> dict[str, float]:
    """1 and 2 pollers on PostgreSQL and on SQLite, side by side; best of POLLER_ROUNDS each."""
    from postgres import PostgresCluster

    base = Path(tempfile.mkdtemp(prefix="icsfeed-pollers-"))
    total = POLLER_ACCOUNTS * POLLER_EVENTS
    cluster = None
    try:
        write_data(base, POLLER_ACCOUNTS, POLLER_EVENTS)
        cluster = PostgresCluster(durable=True).init().start()
        setups = [("postgresql", 1), ("postgresql", 2), ("sqlite", 1), ("sqlite", 2)]
        best: dict[tuple[str, int], tuple[float, list[int], float]] = {}
        walls: dict[tuple[str, int], list[float]] = {setup: [] for setup in setups}  # per round
        ceilings = []
        for round_no in range(POLLER_ROUNDS):
            ceilings.append(_cpu_ceiling())
            for backend, pollers in setups if round_no % 2 == 0 else list(reversed(setups)):
                if backend == "postgresql":
                    url = cluster.url(cluster.create_database("bench"))
                else:
                    db = base / f"sqlite-{round_no}-{pollers}" / "icsfeed.db"
                    db.parent.mkdir()
                    url = f"sqlite:///{db}"
                server_before = _server_cpu(cluster)
                wall, polled, cpu = _poll_once(base, url, pollers)
                if backend == "postgresql":
                    time.sleep(0.2)  # the backends of the pollers' connections end
                    cpu += _server_cpu(cluster) - server_before
                events, feeds = _stored(url)
                if events != total or feeds != POLLER_ACCOUNTS + 1:
                    raise SystemExit(f"{backend} x{pollers}: {events} events, {feeds} clean feeds stored")
                walls[(backend, pollers)].append(wall)
                if (backend, pollers) not in best or wall < best[(backend, pollers)][0]:
                    best[(backend, pollers)] = (wall, polled, cpu)
        version = subprocess.run([str(cluster.bin / "postgres"), "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip()
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    print(f"Pollers: {POLLER_ACCOUNTS:,} accounts x {POLLER_EVENTS:,} events = {total:,} events from {SOURCES} file "
          f"sources, {POLLER_ACCOUNTS + 1} feeds; `icsfeed poll --once` x N started together on an empty store, "
          f"poll + render, best of {POLLER_ROUNDS}; {version} on this machine (fsync on), SQLite WAL")
    out: dict[str, float] = {}
    for backend in ("postgresql", "sqlite"):
        one = best[(backend, 1)][0]
        for pollers in (1, 2):
            wall, polled, cpu = best[(backend, pollers)]
            rate = total / wall
            note = f"{wall:.1f} s, CPU {cpu:.1f} s" + (" (pollers + server)" if backend == "postgresql" else "")
            if pollers == 2:
                rounds = ", ".join(f"{a / b:.2f}x" for a, b in zip(walls[(backend, 1)], walls[(backend, 2)], strict=True))
                note += f"; {one / wall:.2f}x one poller (per round {rounds}); sources split {'+'.join(map(str, polled))}"
                if backend == "postgresql":
                    note += "; goal >= 1.4x"
            print(line(f"{backend}, {pollers} poller{'s' if pollers > 1 else ''}", f"{rate:,.0f} ev/s", note))
            out[f"pollers_{backend}_{pollers}_events_per_s"] = rate
        out[f"pollers_{backend}_speedup"] = one / best[(backend, 2)][0]
    pg2, lite1 = best[("postgresql", 2)][0], best[("sqlite", 1)][0]
    print(line("PostgreSQL with 2 pollers against SQLite with 1", f"{lite1 / pg2:.2f}x", ""))
    print(line("this machine now: 2 CPU-bound processes against 1", f"{max(ceilings):.2f}x",
               f"per round {', '.join(f'{c:.2f}x' for c in ceilings)}: the most a second poller could gain "
               "(other work shares the 2 cores)"))
    out["pollers_cpu_ceiling"] = max(ceilings)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]))
    elif sys.argv[1:] == ["--pollers"]:
        run_pollers()
    else:
        run()
