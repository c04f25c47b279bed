"""Scale (issue 11): 1,000 accounts x 1,000 events each, each row one whole ``icsfeed poll --once``.

Ten ``file`` sources (JSON Lines, 100,000 records each, four kinds, spread over every
account), the default insights, SQLite. Three runs of the real command on one data
directory, each a process of its own (its wall time, CPU and peak RSS from ``wait4``; the
RSS of it and any children it starts is sampled too), printed next to the issue's goals:
the first import; a poll in which nothing changed (steady state: every source re-read,
nothing written, no feed re-rendered); a poll in which 1% of the events changed, across
all accounts (every account's insights refreshed, every affected feed re-rendered). The
stage times (polls, insights, render) are the ones the poller logs. The data files are
written before (not timed). The database's size per event is measured after each run.

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
import re
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
#: ``ICSFEED_BENCH_CODE``: the icsfeed tree the measured ``poll --once`` runs (default: this one),
#: to measure another commit side by side on the same data
CODE = Path(os.environ.get("ICSFEED_BENCH_CODE", str(REPO)))
KINDS = ("alert", "backup", "ticket", "maintenance")


def write_data(base: Path, accounts_n: int = ACCOUNTS, per_account: int = PER_ACCOUNT, *,
               insights: bool = False) -> None:
    """Ten JSON Lines files and their config (``insights``: on with the default settings)."""
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
        ("" if insights else "insights: {enabled: false}\n") +
        f"accounts:\n{accounts}\n"
        "teams:\n  - {id: critical, name: Critical alerts, accounts: '*', kinds: [alert], min_severity: critical}\n"
        "sources:\n" + "\n".join(sources) + "\n", encoding="utf-8")


#: the issue-11 goals, next to which every row is printed
GOAL_FIRST_S, GOAL_RSS_MIB, GOAL_UNCHANGED_S, GOAL_ONE_PCT_S = 60.0, 1024.0, 5.0, 10.0
GOAL_INSIGHT_MS, GOAL_BYTES_PER_EVENT = 20.0, 1500.0


def change_one_percent(base: Path) -> int:
    """1% of every source's records change their title (spread over every account)."""
    changed = 0
    for s in range(SOURCES):
        path = base / "config" / f"src{s}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        for j in random.Random(s).sample(range(len(lines)), len(lines) // 100):
            record = json.loads(lines[j])
            record["title"] += " (updated)"
            lines[j] = json.dumps(record)
            changed += 1
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants now (a pool's workers count)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for field in Path(f"/proc/{p}/status").read_text().splitlines():
                if field.startswith("VmRSS:"):
                    total += int(field.split()[1])
        except OSError:
            pass
    return total / 1024


def measured_poll(base: Path, code: Path = CODE, data: str = "data") -> dict[str, float]:
    """One ``icsfeed poll --once`` (polls, insights, render) of the icsfeed tree ``code`` on
    the data directory ``base / data``, as a user runs it: wall time, CPU (of it and its
    helpers), peak RSS of the process (and, sampled, of it with any children it starts), its
    stages as it logs them, and the database's size on disk afterwards."""
    env = {**os.environ, "ICSFEED_SECRET_KEY": "bench-" + "k" * 32, "PYTHONPATH": str(code)}
    env.pop("ICSFEED_STORAGE_URL", None)
    argv = [sys.executable, "-m", "icsfeed", "--config", str(base / "config"), "--data", str(base / data),
            "--log-level", "INFO", "poll", "--once"]
    log_path = base / f"poll-{data}.log"
    with log_path.open("wb") as log_file:
        started = time.perf_counter()
        # cwd outside every tree: ``python -m`` imports the current directory's icsfeed before PYTHONPATH's
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(base))
        peak_tree = 0.0
        while True:  # wait4: this process's own rusage (its peak RSS, not the largest child's so far)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_tree = max(peak_tree, _tree_rss_mib(proc.pid))
            time.sleep(0.25)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"icsfeed poll --once failed ({proc.returncode}):\n{text[-3000:]}")
    # the command's own line and its helpers' ("icsfeed.poller[helper]"): accounts and feeds
    # add up, a stage lasts as long as its slowest process
    found = re.findall(r"poll stages: (\d+) sources in ([\d.]+) s, insights of (\d+) account keys in ([\d.]+) s, "
                       r"(\d+) feeds rendered in ([\d.]+) s", text)
    if not found:  # an icsfeed from before the poller logged its stages (ICSFEED_BENCH_CODE)
        found = [("0", "nan", "0", "nan", "0", "nan")]
    stages = ["", found[0][0], str(max(float(f[1]) for f in found)), str(sum(int(f[2]) for f in found)),
              str(max(float(f[3]) for f in found)), str(sum(int(f[4]) for f in found)),
              str(max(float(f[5]) for f in found))]
    db = base / data / "icsfeed.db"
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024,
            "peak_tree_mib": peak_tree, "poll_s": float(stages[2]), "insight_keys": float(stages[3]),
            "insights_s": float(stages[4]), "feeds": float(stages[5]), "render_s": float(stages[6]),
            "db_bytes": float(size)}


def stage_costs(base: Path, n: int = 20_000, code: Path = REPO) -> dict[str, float]:
    """CPU microseconds per event of each stage of a first poll, on n records of one source
    (a fresh store), by the icsfeed tree ``code`` (in a child process): where the time of
    the big run goes."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("ICSFEED_STORAGE_URL", None)
    # a script of its own: this module imports icsfeed from this tree (common.py)
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("scale_stages.py")), str(base), str(n)], env=env,
                         capture_output=True, text=True, check=False, cwd=str(base))
    if out.returncode != 0:
        raise SystemExit(f"stage costs of {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def run() -> dict[str, float]:
    """The issue-11 rows: first import, unchanged poll, 1% changed, each one whole
    ``icsfeed poll --once`` with the default insights, on SQLite; printed next to the goals.
    With ``ICSFEED_BENCH_CODE`` (another tree), that tree runs each row too, on the same data
    (a data directory of its own), alternately with this one, and both are printed side by side."""
    base = Path(tempfile.mkdtemp(prefix="icsfeed-scale-"))
    started = time.perf_counter()
    write_data(base, insights=True)
    generated = time.perf_counter() - started
    events = ACCOUNTS * PER_ACCOUNT
    compare = CODE != REPO
    trees = [(CODE, "data-other"), (REPO, "data")] if compare else [(REPO, "data")]
    phases: dict[str, dict[str, float]] = {}
    others: dict[str, dict[str, float]] = {}
    stage_n = min(20_000, events // SOURCES)
    try:
        stages = stage_costs(base, stage_n)
        other_stages = stage_costs(base, stage_n, CODE) if compare else {}
        for name in ("first", "unchanged", "one_pct"):
            if name == "one_pct":
                change_one_percent(base)
            for code, data in trees:
                r = measured_poll(base, code, data)
                (phases if code == REPO else others)[name] = r
                print(f"  ({name}, {'this tree' if code == REPO else code}: {r['wall']:.1f} s wall, CPU {r['cpu']:.1f} s, "
                      f"polls {r['poll_s']:.1f} s, load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # gigabytes of data and database
    print(f"Scale: {ACCOUNTS:,} accounts x {PER_ACCOUNT:,} events = {events:,} events from {SOURCES} file sources, "
          f"{ACCOUNTS + 1} feeds, default insights; each row one whole `icsfeed poll --once` on SQLite "
          f"(data written in {generated:.0f} s, not timed)" + (f"; side by side with {CODE}" if compare else ""))
    goals = {"first": GOAL_FIRST_S, "unchanged": GOAL_UNCHANGED_S, "one_pct": GOAL_ONE_PCT_S}
    titles = {"first": "first import", "unchanged": "unchanged poll of everything",
              "one_pct": "1% of the events changed (all accounts), insights + feeds"}
    out: dict[str, float] = {}
    full = events == 1_000_000  # the goals are for 1,000 x 1,000; a smaller run shows no verdict

    def judged(ok: bool) -> str:
        return ("met" if ok else "NOT met") if full else "goal for 1,000 x 1,000 events"

    for name, r in phases.items():
        rss = max(r["maxrss_mib"], r["peak_tree_mib"])
        verdict = judged(r["wall"] <= goals[name] and (name != "first" or rss <= GOAL_RSS_MIB))
        goal = f"goal <= {goals[name]:.0f} s" + (f", RSS <= {GOAL_RSS_MIB:.0f} MiB" if name == "first" else "")
        print(line(titles[name], f"{r['wall']:.1f} s",
                   f"{goal}: {verdict}; CPU {r['cpu']:.1f} s; peak RSS {rss:.0f} MiB; "
                   f"{r['db_bytes'] / events:,.0f} bytes per event on disk"))
        print(line("    of which polls / insights / render", f"{r['poll_s']:.1f} s",
                   f"insights {r['insights_s']:.1f} s ({int(r['insight_keys'])} accounts), "
                   f"render {r['render_s']:.1f} s ({int(r['feeds'])} feeds)"))
        if name in others:
            o = others[name]
            print(line(f"    {CODE}: the same row", f"{o['wall']:.1f} s",
                       f"CPU {o['cpu']:.1f} s; polls {o['poll_s']:.1f} s; peak RSS "
                       f"{max(o['maxrss_mib'], o['peak_tree_mib']):.0f} MiB; this tree: {o['wall'] / r['wall']:.2f}x "
                       f"faster (wall), {o['cpu'] / r['cpu']:.2f}x less CPU, polls {o['poll_s'] / r['poll_s']:.2f}x"))
            out.update({f"scale_other_{name}_{k}": v for k, v in o.items()})
        out.update({f"scale_{name}_{k}": v for k, v in r.items()})
    one = phases["one_pct"]
    per = one["insights_s"] / max(1.0, one["insight_keys"]) * 1000
    print(line("insight refresh, per account of 1,000 events (the 1% row's)", f"{per:.1f} ms",
               f"goal <= {GOAL_INSIGHT_MS:.0f} ms: {'met' if per <= GOAL_INSIGHT_MS else 'NOT met'}"))  # any size
    size = one["db_bytes"] / events
    print(line("database on disk, per event (events, insights, feeds)", f"{size:,.0f} B",
               f"goal <= {GOAL_BYTES_PER_EVENT:,.0f} B: {judged(size <= GOAL_BYTES_PER_EVENT)}; "
               f"{one['db_bytes'] / 2**20:,.0f} MiB"))
    for label, st in (("this tree", stages), (str(CODE), other_stages)):
        if not st:
            continue
        per_event = st["stage_fetch_map_us"] + st["stage_vevent_us"] + st["stage_store_us"]
        print(line(f"a first poll's CPU per event, by stage ({int(st['stage_records']):,} records), {label}",
                   f"{per_event:.0f} us", f"fetch + map {st['stage_fetch_map_us']:.0f}, "
                   f"VEVENT render {st['stage_vevent_us']:.0f}, store {st['stage_store_us']:.0f}; "
                   f"the whole poll_source {st.get('stage_poll_source_us', float('nan')):.0f}; SQLite's write lock "
                   f"held {st.get('stage_write_locked_share', float('nan')):.0%} of the poll"))
    out["scale_insight_ms_per_account"] = per
    out["scale_bytes_per_event"] = size
    out.update({"scale_" + k: v for k, v in stages.items()})
    out.update({"scale_other_" + k: v for k, v in other_stages.items()})
    return out


def _poll_once(base: Path, url: str, pollers: int) -> tuple[float, list[int], float]:
    """``pollers`` x ``icsfeed poll --once`` started together on an empty store (its schema made
    first); wall seconds until the last exits, how many sources each polled, and their CPU
    seconds."""
    sys.path.insert(0, str(REPO))
    from icsfeed.store import Store

    Store(url).close()
    env = {**os.environ, "ICSFEED_STORAGE_URL": url, "ICSFEED_SECRET_KEY": "bench-" + "k" * 32, "PYTHONPATH": str(REPO),
           "ICSFEED_POLL_HELPERS": "0"}  # one process per poller, as this comparison means
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
    if sys.argv[1:] == ["--pollers"]:
        run_pollers()
    else:
        run()
