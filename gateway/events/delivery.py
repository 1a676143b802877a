"""The sender: takes events off the queue, finds the subscriptions that want each, and POSTs
it to each one, signed, with retries.

One outbox per subscription (bounded, drop-oldest like the queue) and a few deliveries in
flight per subscription, so a dead receiver holds up nobody else. A delivery is tried until
it is answered 2xx, refused for good (any other 3xx or 4xx but 408, 425 and 429: trying
again would change nothing), or out of time (`Retry.total` after the first try); between
tries it waits a random time between 0 and `backoff * 2**(n-1)` (full jitter, at most
`MAX_BACKOFF`). Every outcome goes to the subscription's delivery log (the last N, shown on
the Status page) and to the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from gateway import __version__, metrics
from gateway.events import formats, signing
from gateway.events.dedupe import Claims
from gateway.events.model import Event, rfc3339
from gateway.events.queue import DropOldestQueue
from gateway.events.subscriptions import SecretUnavailable, Subscriptions, read_secret
from gateway.policy.model import Webhook

log = logging.getLogger("registry_gateway.events")
MAX_BACKOFF = 60.0  # seconds: the longest wait between two tries
IN_FLIGHT = 4  # deliveries under way at once, per subscription
# A receiver that failed this many requests in a row (or whose outbox holds BACKLOG events while
# its last request failed) is suspended: its new events are dropped (and counted) for SUSPEND_FIRST
# seconds, doubled each time after, at most SUSPEND_MAX; then the next event is tried, and a
# 2xx resumes it. A dead or hung receiver then costs nothing.
SUSPEND_AFTER = 10
BACKLOG = 100  # events waiting in an outbox that, with a failed last request, suspend it too
SUSPEND_FIRST = 30.0
SUSPEND_MAX = 300.0
RETRYABLE = frozenset({408, 425, 429})
# What waits on the queue: an event, or the work of making events off the token path.
Item = Event | Callable[[], Iterable[Event]]


@dataclass(frozen=True, slots=True)
class Retry:
    """How long one try may take, the first wait, and how long to keep trying in all."""

    timeout: float = 5.0
    backoff: float = 1.0
    total: float = 600.0

    def wait(self, tries: int, rng: random.Random) -> float:
        """The wait after `tries` failed tries: full jitter over an exponential ceiling."""
        ceiling = min(MAX_BACKOFF, self.backoff * 2.0 ** min(tries - 1, 32))
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One line of a subscription's delivery log."""

    event_id: str
    type: str
    status: str  # delivered | failed | gave up | no secret | dropped
    attempts: int
    http_status: int | None
    latency_ms: float | None  # the last try's
    total_ms: float  # from the first try to the outcome
    time: str
    error: str | None = None


class DeliveryLog:
    """The last `size` deliveries of each subscription, newest first (of this replica)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._entries: dict[str, deque[Delivery]] = {}

    def add(self, webhook: str, delivery: Delivery) -> None:
        entries = self._entries.get(webhook)
        if entries is None:
            entries = self._entries[webhook] = deque(maxlen=self.size)
        entries.appendleft(delivery)

    def entries(self, webhook: str) -> list[dict[str, Any]]:
        return [asdict(d) for d in self._entries.get(webhook, ())]

    def names(self) -> list[str]:
        return sorted(self._entries)


class _Outbox:
    def __init__(self, size: int) -> None:
        self.queue: DropOldestQueue[tuple[Webhook, Event]] = DropOldestQueue(size, "outbox")
        self.slots = asyncio.Semaphore(IN_FLIGHT)
        self.task: asyncio.Task[None] | None = None


class Sender:
    """Delivers what is put on `queue` to the subscriptions `subscriptions()` names."""

    def __init__(
        self,
        queue: DropOldestQueue[Item],
        subscriptions: Callable[[], Subscriptions],
        *,
        claims: Claims,
        retry: Retry,
        source: str,
        registry: str,
        public: Callable[[str], bool],
        log_size: int = 50,
        outbox_size: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.subscriptions = subscriptions
        self.claims = claims
        self.retry = retry
        self.source = source
        self.registry = registry
        self.public = public
        self.log = DeliveryLog(log_size)
        self.outbox_size = outbox_size
        self.rng = rng or random.SystemRandom()
        self._outboxes: dict[str, _Outbox] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._failures: dict[str, int] = {}  # failed requests in a row, per subscription
        self._pause: dict[str, float] = {}  # its last suspension's length
        self._until: dict[str, float] = {}  # suspended until (time.monotonic())
        self.suspended: set[str] = set()  # subscriptions suspended now

    def active(self, name: str) -> bool:
        """Whether events for the subscription `name` are taken (not suspended)."""
        if name not in self.suspended:
            return True
        if time.monotonic() >= self._until.get(name, 0.0):
            self.suspended.discard(name)  # the next event tries the receiver again
            return True
        return False

    def suspended_until(self, name: str) -> str | None:
        """When a suspended subscription takes events again (RFC 3339), else None."""
        if name not in self.suspended:
            return None
        return rfc3339(time.time() + max(0.0, self._until[name] - time.monotonic()))

    def _answered(self, name: str, ok: bool) -> None:
        """Count one request's outcome towards suspending (or resuming) the subscription."""
        if ok:
            self._failures.pop(name, None)
            self._pause.pop(name, None)
            self.suspended.discard(name)
            return
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        if failures >= SUSPEND_AFTER:
            self._suspend(name, f"{failures} requests in a row failed")

    def _suspend(self, name: str, why: str) -> None:
        if name in self.suspended:
            return
        pause = min(SUSPEND_MAX, self._pause.get(name, SUSPEND_FIRST / 2) * 2)
        self._pause[name] = pause
        self._until[name] = time.monotonic() + pause
        self.suspended.add(name)
        log.warning(
            "webhook %s: %s; its new events are dropped for %.0f s",
            name,
            why,
            pause,
            extra={"event": "webhook_suspended", "webhook": name},
        )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No redirects (a 3xx is an answer), no proxy or .netrc from the environment
            # (credentials must not be added to a request the policy points anywhere).
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=self.retry.timeout,
                headers={"User-Agent": f"registry-gateway/{__version__}"},
            )
        return self._client

    async def run(self) -> None:
        """Take events off the queue until cancelled."""
        self.queue.bind()
        while True:
            for item in await self.queue.get_batch():
                try:
                    events = [item] if isinstance(item, Event) else list(item())
                    for event in events:
                        await self.dispatch(event)
                except Exception:  # one bad item must not stop the sender
                    log.exception("cannot dispatch an event", extra={"event": "webhook_error"})

    async def dispatch(self, event: Event) -> None:
        """Hand `event` to the outbox of each subscription that wants it."""
        webhooks = self.subscriptions().matching(event)
        if not webhooks:
            metrics.count_event(event.type, "unsubscribed")
            return
        if event.shared and not await self.claims.claim(event.id):
            metrics.count_event(event.type, "claimed_elsewhere")
            return
        metrics.count_event(event.type, "dispatched")
        for webhook in webhooks:
            if not self.active(webhook.name):
                metrics.count_dropped("suspended")
                continue
            box = self._outboxes.get(webhook.name)
            if box is None:
                box = self._outboxes[webhook.name] = _Outbox(self.outbox_size)
                box.queue.bind()
                box.task = asyncio.create_task(self._serve(webhook.name, box))
            box.queue.put_nowait((webhook, event))
            if len(box.queue) >= BACKLOG and self._failures.get(webhook.name):
                # Piling up, and its last request failed: a hung or dead receiver, not a slow one.
                self._suspend(webhook.name, f"{BACKLOG} events wait and its last request failed")

    async def _serve(self, name: str, box: _Outbox) -> None:
        while True:
            await box.slots.acquire()
            try:
                webhook, event = await box.queue.get()
            except BaseException:
                box.slots.release()
                raise
            task = asyncio.create_task(self._deliver_released(webhook, event, box.slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_released(
        self, webhook: Webhook, event: Event, slots: asyncio.Semaphore
    ) -> None:
        try:
            await self.deliver(webhook, event)
        except Exception:
            log.exception("delivering an event failed", extra={"event": "webhook_error"})
        finally:
            slots.release()

    def body(self, webhook: Webhook, event: Event) -> tuple[bytes, str]:
        """The bytes to send and their content type, in the subscription's format."""
        if webhook.format == "harbor":
            public = self.public(event.repository or "")
            document = formats.harbor(event, registry=self.registry, public=public)
            return formats.body(document), formats.HARBOR_TYPE
        return formats.body(formats.cloudevent(event, self.source)), formats.CLOUDEVENTS_TYPE

    async def deliver(
        self, webhook: Webhook, event: Event, *, retry: Retry | None = None
    ) -> Delivery:
        """Send `event` to `webhook` until it is taken, refused, or out of time."""
        retry = retry or self.retry
        started = time.monotonic()
        try:
            secret = read_secret(webhook)
        except SecretUnavailable as exc:
            self._answered(webhook.name, False)  # as good as a dead receiver: suspended too
            return self._done(webhook, event, "no secret", 0, None, None, started, str(exc))
        payload, content_type = self.body(webhook, event)
        tries = 0
        status: int | None = None
        latency: float | None = None
        error: str | None = None
        while True:
            tries += 1
            headers = {
                "Content-Type": content_type,
                "X-Registry-Gateway-Event": event.type,
                "X-Registry-Gateway-Event-Id": event.id,
                **signing.headers(secret, int(time.time()), payload),
            }
            sent = time.monotonic()
            retry_after: float | None = None
            try:
                async with self.client.stream(
                    "POST", webhook.url, content=payload, headers=headers, timeout=retry.timeout
                ) as response:
                    status, error = response.status_code, None
                    retry_after = _retry_after(response.headers.get("retry-after"))
            except httpx.TimeoutException:
                status, error = None, "timed out"
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
            latency = (time.monotonic() - sent) * 1000
            metrics.WEBHOOK_LATENCY.labels(webhook.name).observe(latency / 1000)
            metrics.WEBHOOK_ATTEMPTS.labels(webhook.name, _result(status, error)).inc()
            self._answered(webhook.name, status is not None and 200 <= status < 300)
            if status is not None and 200 <= status < 300:
                return self._done(webhook, event, "delivered", tries, status, latency, started)
            if status is not None and status < 500 and status not in RETRYABLE:
                why = f"HTTP {status}: refused, not retried"
                return self._done(webhook, event, "failed", tries, status, latency, started, why)
            wait = self.retry_wait(retry, tries, retry_after)
            if time.monotonic() + wait - started > retry.total:
                why = error or f"HTTP {status}"
                return self._done(webhook, event, "gave up", tries, status, latency, started, why)
            await asyncio.sleep(wait)

    def retry_wait(self, retry: Retry, tries: int, retry_after: float | None) -> float:
        wait = retry.wait(tries, self.rng)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_BACKOFF))
        return wait

    def _done(
        self,
        webhook: Webhook,
        event: Event,
        status: str,
        tries: int,
        http_status: int | None,
        latency: float | None,
        started: float,
        error: str | None = None,
    ) -> Delivery:
        delivery = Delivery(
            event.id,
            event.type,
            status,
            tries,
            http_status,
            round(latency, 1) if latency is not None else None,
            round((time.monotonic() - started) * 1000, 1),
            rfc3339(time.time()),
            error,
        )
        self.log.add(webhook.name, delivery)
        metrics.WEBHOOK_DELIVERIES.labels(webhook.name, status.replace(" ", "_")).inc()
        if status != "delivered":
            log.warning(
                "webhook %s: event %s (%s) %s after %d tries: %s",
                webhook.name,
                event.id,
                event.type,
                status,
                tries,
                error,
                extra={"event": "webhook_failed", "webhook": webhook.name, "status": status},
            )
        return delivery

    async def close(self) -> None:
        """Stop every delivery under way (what is left is lost: events are not stored)."""
        tasks = [*self._tasks, *(b.task for b in self._outboxes.values() if b.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.claims.close()


def _retry_after(value: str | None) -> float | None:
    if value and value.isdigit() and len(value) < 6:
        return float(value)
    return None


def _result(status: int | None, error: str | None) -> str:
    if status is None:
        return "timeout" if error == "timed out" else "error"
    return f"{status // 100}xx"
