"""Prometheus metrics: what the store knows, read at scrape time, plus this process's requests.

Web processes are stateless and the scheduler may be another process, so poll counts,
failures and render times are not counted in memory: a custom collector reads them from
the store on each scrape. Only the HTTP request counter belongs to this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from icsfeed.live import LiveConfig
from icsfeed.store import Store

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """Per-source and per-feed figures from the store, read when Prometheus scrapes."""

    def __init__(self, get: Callable[[], tuple[LiveConfig, Store]]) -> None:
        self._get = get

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        live, store = self._get()
        up = GaugeMetricFamily("icsfeed_store_up", "1 when the store answered this scrape")
        try:
            states = store.source_states()
            counts = store.event_counts()
            feeds = store.feeds_summary()
        except Exception as exc:  # a scrape must answer even when the database does not
            log.error("metrics: cannot read the store: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        polls = CounterMetricFamily("icsfeed_source_polls", "Polls of a source (all processes)", labels=["source"])
        failures = CounterMetricFamily("icsfeed_source_failures", "Failed polls of a source", labels=["source"])
        in_row = GaugeMetricFamily("icsfeed_source_consecutive_failures", "Failed polls in a row", labels=["source"])
        success = GaugeMetricFamily("icsfeed_source_last_success_timestamp_seconds",
                                    "When a source was last polled successfully", labels=["source"])
        stored = GaugeMetricFamily("icsfeed_source_events", "Events stored per source", labels=["source"])
        sources = sorted(set(states) | set(counts) | set(live.current().sources))
        for source in sources:
            state = states.get(source)
            polls.add_metric([source], state.polls_total if state else 0)
            failures.add_metric([source], state.failures_total if state else 0)
            in_row.add_metric([source], state.consecutive_failures if state else 0)
            if state is not None and state.last_success is not None:
                success.add_metric([source], state.last_success)
            stored.add_metric([source], counts.get(source, 0))
        yield from (polls, failures, in_row, success, stored)

        render = GaugeMetricFamily("icsfeed_feed_render_seconds", "Seconds the last render of a feed took", labels=["feed"])
        events = GaugeMetricFamily("icsfeed_feed_events", "Events in a feed as last rendered", labels=["feed"])
        rendered = GaugeMetricFamily("icsfeed_feed_rendered_timestamp_seconds", "When a feed was last rendered",
                                     labels=["feed"])
        for feed in feeds:
            render.add_metric([feed.feed_id], feed.render_seconds)
            events.add_metric([feed.feed_id], feed.event_count)
            rendered.add_metric([feed.feed_id], feed.rendered_at)
        yield from (render, events, rendered)

        refused = GaugeMetricFamily("icsfeed_config_refused",
                                    "1 when the newest config files were refused and the last good config runs")
        refused.add_metric([], 1 if live.last_error else 0)
        yield refused


class Metrics:
    """One registry per app: the store collector and this process's request counter."""

    def __init__(self, get: Callable[[], tuple[LiveConfig, Store]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(get))
        self.requests = Counter("icsfeed_http_requests", "HTTP requests handled by this process",
                                ["endpoint", "status"], registry=self.registry)

    def count_request(self, endpoint: str | None, status: int) -> None:
        """Endpoint names, never paths: paths carry account ids and query strings carry tokens."""
        self.requests.labels(endpoint or "none", str(status)).inc()
