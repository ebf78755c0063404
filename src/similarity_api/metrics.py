"""Prometheus metrics, one registry per app (no process globals)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "similarity_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "similarity_request_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_items = Gauge(
            "similarity_index_items", "Customers in the loaded index", registry=self.registry
        )
        self.index_customers = Gauge(
            "similarity_index_customers",
            "Customers known to the loaded index (indexed or not)",
            registry=self.registry,
        )
        self.index_info = Gauge(
            "similarity_index_info",
            "The loaded index version (value 1)",
            ["version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "similarity_reloads",
            "Index (re)loads by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def index_loaded(self, version: str, items: int, customers: int) -> None:
        self.index_info.clear()
        self.index_info.labels(version=version).set(1)
        self.index_items.set(items)
        self.index_customers.set(customers)


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
