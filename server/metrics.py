"""Prometheus metrics of one server application, on its own CollectorRegistry.

Each app has its own registry (never prometheus_client's global one), so two apps in one
process (tests, a future master + destination) count separately. Nothing here does I/O.
"""

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Request latencies from a fast JSON answer (~1 ms) to a 64 MiB pack over a slow link.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})


class Metrics:
    """The counters the server keeps; `route` labels are URL templates, never raw paths, so
    the number of series stays bounded whatever clients request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cairn_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "cairn_http_request_duration_seconds",
            "Time to produce a response (for downloads: up to the first byte)",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.uploaded = Counter(
            "cairn_uploaded_bytes", "Bytes of object uploads received (stored or not)",
            registry=self.registry)
        self.downloaded = Counter(
            "cairn_downloaded_bytes", "Bytes of objects sent to clients", registry=self.registry)
        self.stored = Counter(
            "cairn_objects_stored", "Objects newly stored, by kind", ["kind"],
            registry=self.registry)
        self.deleted = Counter(
            "cairn_objects_deleted", "Objects deleted, by kind", ["kind"], registry=self.registry)
        self.rejected = Counter(
            "cairn_objects_rejected",
            "Uploads refused (integrity, too_large, quota_exceeded, incomplete, ...), by reason",
            ["reason"], registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Any token is a valid HTTP method: unknown ones share one label, so an anonymous
        # client cannot make the metrics grow without bound.
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format that Prometheus scrapes."""
        return generate_latest(self.registry)
