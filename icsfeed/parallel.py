"""Both cores for one ``icsfeed poll --once``: helper processes that poll as pollers side by side.

A single poller is one Python process, so one core. The pollers' coordination
(icsfeed/coordination.py) already splits sources, insight refreshes and feed renders
between pollers that run at the same time; a helper is such a poller, started by the
``poll --once`` process itself (``multiprocessing``, a fresh interpreter: no database
connection or lock crosses a fork) and sent its poll reports back, so the command prints and
fails on every source as if it had polled them all. A helper that has not started working
when the command is done is stopped: an unchanged poll does not wait for its start-up.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import asdict
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Lock
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``ICSFEED_POLL_HELPERS``: helper processes of ``poll --once`` (default: one per further core)
HELPERS_ENV = "ICSFEED_POLL_HELPERS"
#: seconds a helper gets to finish its share after the command's own work is done
HELPER_JOIN_SECONDS = 3600.0


def default_helpers() -> int:
    """One helper per core beyond the first (at most 7), unless the environment says."""
    raw = os.environ.get(HELPERS_ENV)
    if raw is not None:
        try:
            return max(0, int(raw))
        except ValueError:
            log.warning("%s=%r is not a number: no helpers", HELPERS_ENV, raw)
            return 0
    return max(0, min(7, (os.cpu_count() or 1) - 1))


class Helpers:
    """Helper pollers of one run; :meth:`finish` collects their reports."""

    def __init__(self, config_dir: Path, data_dir: Path, since: float, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.lock: Lock = context.Lock()
        self.started = context.Value("i", 0, lock=False)  # helpers that began (under self.lock)
        self.cancelled = context.Value("b", 0, lock=False)
        self.procs: list[tuple[BaseProcess, Connection]] = []
        level = logging.getLogger().getEffectiveLevel()
        for _ in range(count):
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(target=_helper_main, daemon=True, name="icsfeed-poll-helper",
                                   args=(str(config_dir), str(data_dir), since, level, send, self.lock,
                                         self.started, self.cancelled))
            proc.start()
            send.close()
            self.procs.append((proc, receive))

    def finish(self) -> list[dict[str, Any]]:
        """Stop helpers that have not begun; wait for the others; their reports (as dicts)."""
        with self.lock:
            self.cancelled.value = 1  # a helper not started by now finds nothing left to do
        reports: list[dict[str, Any]] = []
        for proc, receive in self.procs:
            try:
                if receive.poll(HELPER_JOIN_SECONDS):
                    reports.extend(receive.recv())
            except (EOFError, OSError):  # it died: its claims died with it, its work is undone
                log.warning("a poll helper ended without a report (exit code %s)", proc.exitcode)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        return reports


def _helper_main(config_dir: str, data_dir: str, since: float, level: int, send: Connection, lock: Lock,
                 started: Any, cancelled: Any) -> None:
    """One helper: the same poll as ``icsfeed poll --once`` started at ``since`` (sources
    polled since then by another poller are left alone), reports sent back."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[helper]: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from icsfeed.config import load_config
    from icsfeed.coordination import Coordinator
    from icsfeed.poller import poll
    from icsfeed.store import Store

    config = load_config(Path(config_dir), Path(data_dir))
    store = Store(config.storage_url, uid_host=config.uid_host)
    with lock:
        if cancelled.value:
            send.send([])
            return
        started.value += 1
    coordinator = Coordinator(store.engine)
    try:
        reports = poll(config, store, coordinator=coordinator, since=since, helpers=0)
    finally:
        coordinator.close()
        store.close()
    send.send([asdict(r) for r in reports if r.elsewhere is None])
