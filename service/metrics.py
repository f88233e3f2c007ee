"""Prometheus metrics (served at GET /metrics): requests by route, inference, storing, queue, flags.

With several worker processes each reports its own figures (scrape each, or run one worker per
container)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

REGISTRY = CollectorRegistry()
REQUESTS = Counter("grader_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "grader_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
)
INFERENCE_BATCH = Histogram("grader_inference_batch_size", "crops per inference call", registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram(
    "grader_inference_seconds",
    "ONNX Runtime time per inference call",
    registry=REGISTRY,
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
)
STORE_SECONDS = Histogram(
    "grader_store_seconds",
    "time to store a result: image file written and synced, rows committed (waiting for the database's writer included)",
    registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
QUEUE_DEPTH = Gauge("grader_inference_queue_depth", "requests waiting for inference", registry=REGISTRY)
FRUITS = Counter("grader_fruits_total", "fruit graded", ["grade"], registry=REGISTRY)
FLAGS = Counter("grader_flags_total", "flags raised, by code (flag rate = this / grader_fruits_total)", ["code"], registry=REGISTRY)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every request under its route template (/v1/results/{result_id})."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status["code"])).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - t0)
