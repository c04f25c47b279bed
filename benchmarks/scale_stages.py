"""The stage costs of benchmarks/bench_scale.py (``stage_costs``), run in a child process by
the icsfeed tree on its PYTHONPATH (no import of this repository's benchmarks/common.py,
which imports icsfeed from this tree): ``python scale_stages.py <bench base dir> <records>``
prints one JSON line."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _stage_costs_here(base: Path, n: int) -> dict[str, float]:
    """:func:`stage_costs` in this process (icsfeed from PYTHONPATH): fetch + map, the VEVENT
    render alone, the store's write without VEVENTs, and the whole ``poll_source``."""
    from icsfeed.config import load_config
    from icsfeed.poller import _checked, build_source, poll_source
    from icsfeed.render import render_vevent
    from icsfeed.store import EventRow, Store

    sample = base / f"stages-{time.time_ns()}"
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
    config = load_config(sample / "config", sample / "data-whole")  # the whole poll, as poll --once runs it
    store = Store(config.storage_url, uid_host=config.uid_host)
    t = cpu()
    poll_source(config, store, "src0")
    whole = cpu() - t
    store.close()
    config = load_config(sample / "config", sample / "data-probed")
    store = Store(config.storage_url, uid_host=config.uid_host)
    locked = _write_lock_share(store, lambda: poll_source(config, store, "src0"))
    store.close()
    shutil.rmtree(sample, ignore_errors=True)
    return {"stage_fetch_map_us": fetch / len(events) * 1e6, "stage_vevent_us": vevent / len(events) * 1e6,
            "stage_store_us": stored / len(events) * 1e6, "stage_poll_source_us": whole / len(events) * 1e6,
            "stage_records": float(len(events)), "stage_write_locked_share": locked}


def _write_lock_share(store: object, work: Callable[[], object]) -> float:
    """The share of ``work`` (a poll) during which the store's SQLite connections hold a
    write transaction (from the implicit ``BEGIN`` sqlite3 issues before the first write to
    ``COMMIT``/``ROLLBACK``, seen by each connection's trace callback): what another writer
    of the file, a helper poller, waits for. A ratio, so steadier than wall times under load."""
    from sqlalchemy import event

    engine = store.engine  # type: ignore[attr-defined]
    held: list[float] = []

    def traced(dbapi_connection: Any, _record: object) -> None:
        begun: list[float] = []

        def trace(sql: str) -> None:
            word = sql.lstrip()[:8].upper()
            if word.startswith("BEGIN"):
                begun.append(time.perf_counter())
            elif word.startswith(("COMMIT", "ROLLBACK")) and begun:
                held.append(time.perf_counter() - begun.pop())

        dbapi_connection.set_trace_callback(trace)

    event.listen(engine, "connect", traced)
    engine.dispose()  # the pooled connections, opened before the listener, are replaced
    started = time.perf_counter()
    work()
    return sum(held) / (time.perf_counter() - started)


if __name__ == "__main__":
    print(json.dumps(_stage_costs_here(Path(sys.argv[1]), int(sys.argv[2]))))
