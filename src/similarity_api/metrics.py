"""Prometheus metrics, one registry per app (no process globals).

With several workers each is its own process, so a scrape that reached one worker would show only
that worker's counts. ``python -m similarity_api serve --workers N`` therefore runs the workers in
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): every worker writes its values
to files in one folder and any worker's ``/metrics`` reads them all, so counters and histograms are
totals over the service, and the index gauges carry a ``pid`` label per live worker (which version
each worker serves, e.g. during a reload).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: The per-process files of live-mode gauges: ``gauge_liveall_<pid>.db``.
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """The service's metrics. ``multiproc_dir`` set: values are shared through that folder (the
    environment variable PROMETHEUS_MULTIPROC_DIR must name it before prometheus_client is
    imported, as ``serve`` arranges for its workers)."""

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self._versions: set[str] = set()
        # In multiprocess mode the metrics live in the shared files; the registry that is scraped
        # reads those files, so the metric objects themselves are registered nowhere.
        own: CollectorRegistry | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        if multiproc_dir is None:
            own = self.registry
        else:
            multiprocess.MultiProcessCollector(self.registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
        self.requests = Counter(
            "similarity_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "similarity_request_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.index_items = Gauge(
            "similarity_index_items",
            "Customers in the loaded index",
            registry=own,
            multiprocess_mode="liveall",
        )
        self.index_customers = Gauge(
            "similarity_index_customers",
            "Customers known to the loaded index (indexed or not)",
            registry=own,
            multiprocess_mode="liveall",
        )
        self.index_info = Gauge(
            "similarity_index_info",
            "The loaded index version (value 1)",
            ["version"],
            registry=own,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "similarity_reloads",
            "Index (re)loads by outcome",
            ["outcome"],
            registry=own,
        )

    def index_loaded(self, version: str, items: int, customers: int) -> None:
        if self.multiproc_dir is None:
            self.index_info.clear()
        else:
            # A multiprocess file keeps every series it ever wrote (clear() cannot drop them):
            # the versions this worker served before go to 0.
            for old in self._versions - {version}:
                self.index_info.labels(version=old).set(0)
            self._versions.add(version)
        self.index_info.labels(version=version).set(1)
        self.index_items.set(items)
        self.index_customers.set(customers)

    def forget_dead_workers(self) -> list[int]:
        """Drop the live gauges of worker processes that no longer run (killed and replaced):
        their counts stay in the totals, their ``pid`` series go. Returns the pids dropped."""
        if self.multiproc_dir is None:
            return []
        dead = set()
        for file in self.multiproc_dir.iterdir():
            match = _LIVE_GAUGE_FILE.match(file.name)
            if match and not _alive(int(match.group(1))):
                dead.add(int(match.group(1)))
        for pid in sorted(dead):
            multiprocess.mark_process_dead(pid, str(self.multiproc_dir))  # type: ignore[no-untyped-call]
        return sorted(dead)

    def worker_stopped(self) -> None:
        """This process is going away: its live gauges must not outlive it."""
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiproc_dir))  # type: ignore[no-untyped-call]


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(name, method, str(status)).inc()
            self.metrics.latency.labels(name, method).observe(time.perf_counter() - started)
