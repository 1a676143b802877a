"""Prometheus metrics, and their text for a scrape. With several workers, prometheus-client's
multiprocess mode adds them up.

`serve` sets PROMETHEUS_MULTIPROC_DIR (under the data dir) before any worker starts when
it runs more than one worker; each worker then writes its samples there and `/metrics`
collects them all, so a scrape sees the whole process group whichever worker answers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # of `exposition()`

TOKEN_REQUESTS = Counter(
    "registry_gateway_token_requests_total",
    "Token requests by outcome (issued, denied, rejected, locked) and HTTP status.",
    ["outcome", "status"],
)
TOKEN_LATENCY = Histogram(
    "registry_gateway_token_request_seconds",
    "Time to answer a token request.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
DECISIONS = Counter(
    "registry_gateway_decisions_total",
    "Decisions per requested resource: granted (all asked), partial, denied (nothing).",
    ["result"],
)
SIGNIN_FAILURES = Counter(
    "registry_gateway_signin_failures_total", "Failed sign-ins by method.", ["method"]
)
LOCKOUTS = Counter("registry_gateway_lockouts_total", "Sign-ins refused by brute-force protection.")
POLICY_RELOADS = Counter(
    "registry_gateway_policy_reloads_total", "Policy loads by result (ok, failed).", ["result"]
)
POLICY_REVISION = Gauge(
    "registry_gateway_policy_revision_info",
    "The policy revision in force (value 1), by revision.",
    ["revision"],
    multiprocess_mode="livemax",
)
CATALOG_SIZE = Gauge(
    "registry_gateway_catalog_entries",
    "Entries in the catalog index, by kind (repositories, tags).",
    ["kind"],
    multiprocess_mode="livemax",
)
CATALOG_REFRESH = Gauge(
    "registry_gateway_catalog_refresh_seconds",
    "How long the last full catalog refresh took.",
    multiprocess_mode="livemax",
)
EVENTS = Counter(
    "registry_gateway_events_total",
    "Events taken off the queue, by type and what became of them (dispatched to subscriptions, "
    "unsubscribed, claimed_elsewhere: another replica delivers it).",
    ["type", "result"],
)
WEBHOOK_DELIVERIES = Counter(
    "registry_gateway_webhook_deliveries_total",
    "Webhook deliveries by subscription and outcome (delivered, failed, gave_up, no_secret).",
    ["webhook", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "registry_gateway_webhook_attempts_total",
    "Webhook requests sent, by subscription and result (2xx, 3xx, 4xx, 5xx, timeout, error).",
    ["webhook", "result"],
)
WEBHOOK_LATENCY = Histogram(
    "registry_gateway_webhook_request_seconds",
    "Time a webhook receiver took to answer one request.",
    ["webhook"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_DROPPED = Counter(
    "registry_gateway_webhook_dropped_total",
    "Events dropped unsent because a bounded queue was full (queue: before matching; outbox: "
    "one subscription's, behind a slow or dead receiver).",
    ["where"],
)

_last_revision: str | None = None


def policy_loaded(revision: str | None, ok: bool) -> None:
    """Record a reload attempt and the revision in force."""
    global _last_revision
    POLICY_RELOADS.labels("ok" if ok else "failed").inc()
    if ok and revision != _last_revision:
        if _last_revision is not None:
            POLICY_REVISION.remove(_last_revision)
        POLICY_REVISION.labels(revision).set(1)
        _last_revision = revision


# A resource's decision as one letter, so that a replayed answer can count its decisions again
# without holding metric objects: granted (all asked), partial, denied (nothing).
DECISION_CODES = {"g": "granted", "p": "partial", "d": "denied"}
_DECISION_CHILDREN = {code: DECISIONS.labels(result) for code, result in DECISION_CODES.items()}


def decision_code(requested: int, granted: int) -> str:
    if granted == requested and requested:
        return "g"
    return "p" if granted else "d"


_TOKEN_REQUEST_CHILDREN: dict[tuple[str, int], Counter] = {}


def count_token_request(outcome: str, status: int, seconds: float, decisions: str) -> None:
    """One answered token request: its outcome, its time, and each resource's decision."""
    child = _TOKEN_REQUEST_CHILDREN.get((outcome, status))
    if child is None:  # a handful of pairs: bound once, not looked up per request
        child = _TOKEN_REQUEST_CHILDREN[outcome, status] = TOKEN_REQUESTS.labels(
            outcome, str(status)
        )
    child.inc()
    TOKEN_LATENCY.observe(seconds)
    for code in decisions:
        _DECISION_CHILDREN[code].inc()


_EVENT_CHILDREN: dict[tuple[str, str], Counter] = {}
_DROP_CHILDREN: dict[str, Counter] = {}


def count_event(kind: str, result: str) -> None:
    """An event taken off the queue (bound once per type and result: events can be many)."""
    child = _EVENT_CHILDREN.get((kind, result))
    if child is None:
        child = _EVENT_CHILDREN[kind, result] = EVENTS.labels(kind, result)
    child.inc()


def count_dropped(where: str) -> None:
    """An event dropped from a full queue or outbox."""
    child = _DROP_CHILDREN.get(where)
    if child is None:
        child = _DROP_CHILDREN[where] = WEBHOOK_DROPPED.labels(where)
    child.inc()


def exposition() -> bytes:
    """Every metric in the Prometheus text format (`CONTENT_TYPE`), from all workers."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
