"""Who subscribes: which calendar clients fetch each feed, told apart by their User-Agent.

A feed request only adds to an in-memory tally (an append to a deque); a background thread
writes the tally to the store every few seconds and when the process exits, as additions
(icsfeed.store.subscribers), so several web processes on one database add up. A write that
fails never fails a request: the batch goes back into the tally and is written with the next
one. Only the feed id, the client family and counts are kept: never the token, the
User-Agent itself or the client's address.

The User-Agents, as the clients send them (from access logs quoted in public issue threads):

* Google Calendar: ``Google-Calendar-Importer`` (aaronpk/Meetable#138);
* Outlook.com / Microsoft 365 fetch from Exchange: ``Microsoft Exchange/15.20 (Windows NT 10.0;
  Win64; x64)``; desktop Outlook ``Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook
  16.0.16327; Pro)``; ``Outlook-iOS/2.0``, ``Microsoft-MacOutlook/16.81.0 (Mac OS/13.6; …)``;
* Apple: iOS ``iOS/16.3.1 (20D67) dataaccessd/1.0`` (browscap/browscap#382), macOS
  ``macOS/13.0 (22A380) dataaccessd/1.0``, ``Mac+OS+X/10.11.6 (15G1217) CalendarAgent/361.2``
  (matomo-org/device-detector#5600, tine20/tine20#7407);
* Thunderbird: ``Mozilla/5.0 (X11; Linux x86_64; rv:78.0) Gecko/20100101 Thunderbird/78.13.0``
  (before 78 also ``Lightning/…``);
* Nextcloud: ``Nextcloud Webcal Service`` (earlier ``Nextcloud Webcal Crawler``; server
  apps/dav WebcalCaching);
* Home Assistant: ``HomeAssistant/2025.5.0.dev0 httpx/0.28.1 Python/3.13``
  (home-assistant/core#141675).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from flask import Flask
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from icsfeed.store import Store, SubscriberCount
from icsfeed.web.status import When

log = logging.getLogger(__name__)

#: client family -> how pages name it; the order is the order pages list them in
FAMILIES: dict[str, str] = {
    "google": "Google Calendar",
    "microsoft": "Outlook",
    "apple": "Apple Calendar",
    "thunderbird": "Thunderbird",
    "nextcloud": "Nextcloud",
    "home_assistant": "Home Assistant",
    "other": "other clients",
}
#: the families a feed that none of them opened says so about ("never opened in Outlook")
EXPECTED = ("google", "microsoft", "apple")
#: first match wins: Outlook for iOS says "iOS", Thunderbird on a Mac says "Mac OS X"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("google", re.compile(r"Google-Calendar-Importer", re.I)),
    ("microsoft", re.compile(r"Microsoft|Outlook|Exchange", re.I)),
    ("thunderbird", re.compile(r"Thunderbird|Lightning/", re.I)),
    ("nextcloud", re.compile(r"Nextcloud", re.I)),
    ("home_assistant", re.compile(r"HomeAssistant|Home Assistant", re.I)),
    ("apple", re.compile(r"dataaccessd|CalendarAgent|^iOS/|^macOS/|^Mac[ _+]?OS[ _+]?X/|iCal/", re.I)),
)
#: fetches appended before a request folds them into the counts itself (bounds memory while a
#: write hangs; the background thread folds them at every flush)
FOLD_AT = 10_000
#: seconds between writes of the tally (ICSFEED_SUBSCRIBERS_FLUSH_SECONDS overrides it)
FLUSH_SECONDS = 5.0
#: only answers a subscriber got count: a wrong token (404) or a 503 is nobody's subscription
COUNTED = (200, 304)


@lru_cache(maxsize=1024)  # a few clients fetch each feed again and again: one regex run per agent
def client_family(user_agent: str | None) -> str:
    """The family of the calendar client a User-Agent names ("other" when none)."""
    if user_agent:
        for family, pattern in _PATTERNS:
            if pattern.search(user_agent):
                return family
    return "other"


class SubscriberTally:
    """This process's fetches not yet written, and the thread that writes them.

    A request only appends to a deque (atomic, no lock: the cheapest thing a request can do);
    the flush drains it into per-(feed, family) counts and writes those."""

    def __init__(self, store: Store, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._fetches: deque[tuple[str, str | None, int, float]] = deque()
        self._lock = threading.Lock()  # guards _pending
        self._pending: dict[tuple[str, str], list[float]] = {}  # (feed, family) -> [200s, 304s, last]
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_flushes = 0
        self._failing = 0
        _TALLIES.add(self)

    def record(self, feed_id: str, user_agent: str | None, status: int, now: float | None = None) -> None:
        """Count one answered fetch: an append, no I/O and no lock on the request path."""
        if status in COUNTED:
            self._fetches.append((feed_id, user_agent, status, time.time() if now is None else now))
            if self._thread is None:
                self._start()
            if len(self._fetches) > FOLD_AT:  # a write is slow (a database far away): fold now
                with self._lock:
                    self._drain()

    def pending(self) -> list[SubscriberCount]:
        """What this process counted and has not written yet (pages add it to the stored)."""
        with self._lock:
            self._drain()
            return [SubscriberCount(f, c, int(e[0]), int(e[1]), e[2]) for (f, c), e in self._pending.items()]

    def flush(self) -> bool:
        """Write the tally as one batch; on failure it goes back into the tally. True when
        nothing is left unwritten."""
        with self._flush_lock:
            with self._lock:
                self._drain()
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            counts = [SubscriberCount(f, c, int(e[0]), int(e[1]), e[2]) for (f, c), e in batch.items()]
            try:
                self.store.add_subscriber_counts(counts)
            except Exception as exc:  # kept for the next flush; a request never sees it
                self.failed_flushes += 1
                self._failing += 1  # said once per outage (a read-only store fails every few seconds)
                log.log(logging.WARNING if self._failing == 1 else logging.DEBUG,
                        "cannot write subscriber counts (%d rows kept for the next try): %s", len(counts), exc)
                with self._lock:
                    self._add(counts)
                return False
            if self._failing:
                log.info("subscriber counts written again after %d failed attempt(s)", self._failing)
                self._failing = 0
            return True

    def close(self) -> None:
        """Stop the thread and write what is left (the process is exiting)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.flush_seconds + 5)
        self.flush()

    def _drain(self) -> None:
        """Fold the appended fetches into the counts (under _lock); memory stays bounded by
        the clients and feeds, however long writes fail."""
        fetches = self._fetches
        while fetches:
            feed_id, agent, status, when = fetches.popleft()
            entry = self._pending.setdefault((feed_id, client_family(agent)), [0, 0, when])
            entry[0 if status == 200 else 1] += 1
            if when > entry[2]:
                entry[2] = when

    def _add(self, counts: Iterable[SubscriberCount]) -> None:
        for c in counts:
            entry = self._pending.setdefault((c.feed_id, c.client), [0, 0, c.last_fetch])
            entry[0] += c.fetches_200
            entry[1] += c.fetches_304
            entry[2] = max(entry[2], c.last_fetch)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            # the thread holds the tally weakly: a tally nobody uses any more (an app a test
            # made) is collected, and its thread ends
            ref = weakref.ref(self)
            self._thread = threading.Thread(target=_run, args=(ref, self._stop, self.flush_seconds),
                                            name="icsfeed-subscribers", daemon=True)
            self._thread.start()


def _run(ref: weakref.ref[SubscriberTally], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        tally = ref()
        if tally is None:
            return
        tally.flush()
        del tally


_TALLIES: weakref.WeakSet[SubscriberTally] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """`icsfeed serve` exits on SIGTERM through SystemExit: what is counted is written."""
    for tally in list(_TALLIES):
        try:
            tally.close()
        except Exception as exc:  # exiting anyway
            log.warning("cannot write subscriber counts at exit: %s", exc)


# --- reading: stored totals plus this process's pending ------------------------------------------

@dataclass(frozen=True)
class ClientFetches:
    client: str
    fetches_200: int
    fetches_304: int
    last_fetch: float

    @property
    def name(self) -> str:
        return FAMILIES.get(self.client, self.client)


def fetches_by_feed(store: Store, tally: SubscriberTally | None) -> dict[str, list[ClientFetches]]:
    """feed id -> its clients, most recent first: what is stored plus what this process has
    not written yet."""
    totals: dict[tuple[str, str], list[float]] = {}
    for c in [*store.subscriber_counts(), *(tally.pending() if tally is not None else [])]:
        entry = totals.setdefault((c.feed_id, c.client), [0, 0, c.last_fetch])
        entry[0] += c.fetches_200
        entry[1] += c.fetches_304
        entry[2] = max(entry[2], c.last_fetch)
    out: dict[str, list[ClientFetches]] = {}
    for (feed_id, client), (ok, not_modified, last) in totals.items():
        out.setdefault(feed_id, []).append(ClientFetches(client, int(ok), int(not_modified), last))
    for clients in out.values():
        clients.sort(key=lambda c: -c.last_fetch)
    return out


def summary_sentence(clients: list[ClientFetches], now: float) -> str:
    """e.g. "Google Calendar, last fetched 3.0 h ago; never opened in Outlook or Apple Calendar"."""
    parts = [f"{c.name}, last fetched {When(c.last_fetch, now).relative}" for c in clients]
    seen = {c.client for c in clients}
    never = [FAMILIES[f] for f in EXPECTED if f not in seen]
    if never:
        names = never[0] if len(never) == 1 else ", ".join(never[:-1]) + " or " + never[-1]
        parts.append(f"never opened in {names}")
    return "; ".join(parts if clients else ["No calendar has fetched this feed yet", *parts])


class SubscriberCollector(Collector):
    """``icsfeed_feed_fetches_total{feed,client,status}`` and the last fetch per client."""

    def __init__(self, store: Store, tally: SubscriberTally) -> None:
        self._store, self._tally = store, tally

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            by_feed = fetches_by_feed(self._store, self._tally)
        except Exception as exc:  # the store collector reports icsfeed_store_up 0 already
            log.error("metrics: cannot read subscriber counts: %s", type(exc).__name__)
            return
        fetches = CounterMetricFamily("icsfeed_feed_fetches", "Fetches of a feed per calendar client family "
                                      "and answer (200: the feed, 304: not modified), all processes",
                                      labels=["feed", "client", "status"])
        last = GaugeMetricFamily("icsfeed_feed_last_fetch_timestamp_seconds",
                                 "When a calendar client family last fetched a feed", labels=["feed", "client"])
        for feed_id, clients in sorted(by_feed.items()):
            for c in clients:
                fetches.add_metric([feed_id, c.client, "200"], c.fetches_200)
                fetches.add_metric([feed_id, c.client, "304"], c.fetches_304)
                last.add_metric([feed_id, c.client], c.last_fetch)
        yield fetches
        yield last


def init_app(app: Flask, store: Store) -> SubscriberTally:
    """The app's tally (``app.extensions['icsfeed_subscribers']``), its metrics registered."""
    seconds = float(os.environ.get("ICSFEED_SUBSCRIBERS_FLUSH_SECONDS") or FLUSH_SECONDS)
    tally = SubscriberTally(store, flush_seconds=seconds)
    app.extensions["icsfeed_subscribers"] = tally
    metrics = app.extensions.get("icsfeed_metrics")
    if metrics is not None:
        metrics.registry.register(SubscriberCollector(store, tally))
    return tally


def tally_of(app: Flask) -> SubscriberTally | None:
    return app.extensions.get("icsfeed_subscribers")  # type: ignore[no-any-return]
