"""Prometheus metrics (SPEC 8).  Each service owns its registry, so several services can
run in one process (tests) without sharing counters.  Gauges that describe the database
are read from it at scrape time, so they are exact and cost an indexed query."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.errors import REASONS
from gateway.store import STAGES

P = "fax_gateway_"

# `_created` series double the scrape and mean nothing to an alert (SPEC 8 names none).
disable_created_metrics()


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]],
                 oldest: Callable[[], float | None],
                 blocked: Callable[[], dict[tuple[str, str], int]],
                 outboxes: Sequence[str]) -> None:
        self._counts, self._oldest, self._blocked, self._outboxes = counts, oldest, blocked, outboxes

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(P + "jobs", "Jobs in the database by state.", labels=["state"])
        for state, n in self._counts().items():
            jobs.add_metric([state], n)
        yield jobs
        oldest = self._oldest()
        yield GaugeMetricFamily(P + "oldest_active_job_age_seconds",
                                "Age of the oldest job not yet finished (0 when none).",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)
        blocked = GaugeMetricFamily(P + "blocked", "Items the gateway cannot act on yet (SPEC 4.5), "
                                    "from the same rows as `fax-gateway jobs --blocked`.",
                                    labels=["outbox", "stage"])
        counts = self._blocked()
        for key in sorted({(o, s) for o in self._outboxes for s in STAGES} | set(counts)):
            blocked.add_metric(list(key), counts.get(key, 0))
        yield blocked


class Metrics:
    def __init__(self, outboxes: Sequence[str] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.files_detected = Counter(P + "files_detected", "Files seen in an outbox.", ["outbox"],
                                      registry=r)
        self.files_rejected = Counter(P + "files_rejected", "Documents rejected before sending.",
                                      ["outbox", "reason"], registry=r)
        self.jobs_submitted = Counter(P + "jobs_submitted", "Faxes accepted by iFax.", ["outbox"],
                                      registry=r)
        self.jobs_completed = Counter(P + "jobs_completed", "Jobs that reached a final status.",
                                      ["outbox", "result"], registry=r)
        self.files_waiting = Gauge(P + "files_waiting",
                                   "Files seen but not yet taken (settling, open, waiting for a sidecar).",
                                   ["outbox"], registry=r)
        self.pages_sent = Counter(P + "pages_sent", "Pages of delivered faxes.", ["outbox"], registry=r)
        self.cost = Counter(P + "cost", "Cost reported by iFax.", ["outbox"], registry=r)
        self.api_requests = Counter(P + "api_requests", "Requests to the iFax API.",
                                    ["endpoint", "outcome"], registry=r)
        self.api_duration = Histogram(P + "api_request_duration_seconds", "iFax API request time.",
                                      ["endpoint"], registry=r)
        self.submit_delay = Histogram(P + "submit_delay_seconds",
                                      "From a file settled to its fax accepted by iFax.", registry=r,
                                      buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
        self.delivery_duration = Histogram(P + "delivery_duration_seconds",
                                           "From accepted by iFax to final status.", registry=r,
                                           buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 21600))
        self.last_poll = Gauge(P + "last_poll_timestamp_seconds", "When fax-status last answered.",
                               registry=r)
        self.api_paused = Gauge(P + "api_paused", "1 while submissions are paused by an account refusal.",
                                registry=r)
        self.files_waiting_long = Gauge(P + "files_waiting_long", "Files waiting over 10 minutes.",
                                        ["outbox"], registry=r)
        self.outbox_paused = Gauge(P + "outbox_paused", "1 while the outbox is paused (a folder missing "
                                   "or unmounted).", ["outbox"], registry=r)
        self.retention_deleted = Counter(P + "retention_deleted", "What retention deleted: files the "
                                         "gateway filed in sent/ and failed/, finished jobs from the "
                                         "database.", ["what"], registry=r)
        for what in ("sent", "failed", "jobs"):
            self.retention_deleted.labels(what)
        self.rate_limited = Gauge(P + "rate_limited", "1 while max_faxes_per_hour holds the outbox's "
                                  "submissions back.", ["outbox"], registry=r)
        self.healthy = Gauge(P + "healthy", "1 exactly when /healthz answers 200.", registry=r)
        self.build_info = Gauge(P + "build_info", "The running version.", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # `child`
        self._outboxes: list[str] = []  # shared with the collector: a reload adds and removes
        for name in outboxes:
            self.add_outbox(name)

    def add_outbox(self, name: str) -> None:
        """Create every labelled series at 0, so dashboards see them before the first event."""
        if name not in self._outboxes:
            self._outboxes.append(name)
        for m in (self.files_detected, self.jobs_submitted, self.files_waiting, self.pages_sent,
                  self.cost, self.files_waiting_long, self.outbox_paused, self.rate_limited):
            m.labels(name)
        for code in REASONS:
            self.files_rejected.labels(name, code)
        for result in ("delivered", "failed", "canceled"):
            self.jobs_completed.labels(name, result)

    @property
    def outboxes(self) -> tuple[str, ...]:
        """The outboxes whose series exist (added before a reload is applied, removed after)."""
        return tuple(self._outboxes)

    def remove_outbox(self, name: str) -> None:
        """An outbox removed by a reload: its gauges go; its counters stay (its jobs may
        still finish, and a counter that vanished would read as a reset)."""
        for m in (self.files_waiting, self.files_waiting_long, self.outbox_paused, self.rate_limited):
            try:
                m.remove(name)
            except KeyError:
                pass
        if name in self._outboxes:
            self._outboxes.remove(name)

    def watch_store(self, counts: Callable[[], dict[str, int]], oldest: Callable[[], float | None],
                    blocked: Callable[[], dict[tuple[str, str], int]] = dict) -> None:
        self.registry.register(_StoreCollector(counts, oldest, blocked, self._outboxes))

    def api_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.count(self.api_requests, endpoint, outcome)
        self.child(self.api_duration, endpoint).observe(seconds)

    def count(self, metric: Counter, *labels: str, amount: float = 1.0) -> None:
        """`metric.labels(*labels).inc(amount)`, for what happens a few times a document."""
        self.child(metric, *labels).inc(amount)

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus_client checks and looks up the labels
        under a lock on every call, half of what counting costs (issue 12).  Only for
        counters and histograms, whose series are never removed (a gauge's may be, by
        `remove_outbox`, and a kept one would then count into nothing)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)

