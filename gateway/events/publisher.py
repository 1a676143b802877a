"""Events: what the rest of the gateway calls when something happens, and the sender's
lifetime. Each hook costs a look at the live subscriptions and, if any wants the event, one
`put_nowait` on a bounded queue: nothing is built, signed or sent on the caller's path (a
token request's denial is turned into an event by the sender, from the answer's audit
fields). docs/events.md describes the events and their delivery.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.config import ConfigError, Settings
from gateway.events import model
from gateway.events.dedupe import Claims, FileClaims, RedisClaims
from gateway.events.delivery import Delivery, Item, Retry, Sender
from gateway.events.model import Event
from gateway.events.queue import DropOldestQueue
from gateway.events.subscriptions import Subscriptions
from gateway.policy.diff import diff_policies
from gateway.policy.diffrender import to_data
from gateway.policy.engine import Engine
from gateway.policy.model import Policy, Visibility, Webhook
from gateway.policy.patterns import namespace_of
from gateway.policy.source import PolicySource

log = logging.getLogger("registry_gateway.events")
REGISTRY_TYPES = ("image.pushed", "image.deleted", "tag.deleted", "repository.deleted")
MAX_DIFF_ITEMS = 50  # subjects, teams and notices a policy.changed event lists at most


class Events:
    """The event queue of one process, the subscriptions of the live policy, the sender."""

    def __init__(self, settings: Settings, source: PolicySource) -> None:
        self.settings = settings
        self.source = source
        self.queue: DropOldestQueue[Item] = DropOldestQueue(settings.webhook_queue_size)
        self._engine: Engine | None = None
        self._subscriptions = Subscriptions(None)
        self._policy: Policy | None = None  # the last revision seen in force (for the diff)
        self.sender = Sender(
            self.queue,
            self.subscriptions,
            claims=claims_for(settings),
            retry=Retry(
                timeout=settings.webhook_timeout,
                backoff=settings.webhook_backoff,
                total=settings.webhook_retry_time,
            ),
            source=settings.public_url,
            registry=settings.registry_public or _host(settings.registry_url),
            public=self.public,
            log_size=settings.webhook_log_size,
            outbox_size=settings.webhook_queue_size,
        )
        self._task: asyncio.Task[None] | None = None

    # -- the live subscriptions --------------------------------------------------------

    def subscriptions(self) -> Subscriptions:
        """The subscriptions of the revision in force (rebuilt once per revision)."""
        engine = self.source.engine
        if engine is not self._engine:
            self._subscriptions = Subscriptions(engine.policy if engine is not None else None)
            self._engine = engine
        return self._subscriptions

    def wants(self, kind: str) -> bool:
        """Whether a subscription takes `kind` now (one that is not suspended)."""
        active = self.sender.active
        return any(active(name) for name in self.subscriptions().names(kind))

    def public(self, repository: str) -> bool:
        """Whether anyone may pull `repository` (Harbor's `repo_type`)."""
        engine = self.source.engine
        if engine is None:
            return False
        namespace = engine.policy.namespaces.get(namespace_of(repository))
        return namespace is not None and namespace.visibility is Visibility.PUBLIC

    def kind_of(self, name: str) -> str:
        """`robot` for a robot of the live policy, else `user`."""
        engine = self.source.engine
        return "robot" if engine is not None and name in engine.policy.robots else "user"

    def revision(self) -> str | None:
        engine = self.source.engine
        return engine.revision if engine is not None else None

    # -- hooks: each one subscription check and at most one put_nowait ----------------

    def token_denied(self, decisions: str, audit: str, request_id: str, client: str | None) -> None:
        """A token answer: if it refused a named action, a `token.denied` per resource."""
        if ("d" in decisions or "p" in decisions) and self.wants("token.denied"):
            self.queue.put_nowait(
                functools.partial(_denied, audit, request_id, client, time.time())
            )

    def locked_out(self, username: str | None, client: str, scopes: Sequence[str]) -> None:
        """Failed sign-ins started a lockout (`scopes`: user, address, account)."""
        if self.wants("signin.locked_out"):
            event = model.locked_out(
                username, client, scopes, revision=self.revision(), now=time.time()
            )
            self.queue.put_nowait(event)

    def registry_notified(self, events: list[Any]) -> None:
        """The registry's notification events (as sent): pushes and deletes become events."""
        subscriptions = self.subscriptions()
        if events and any(subscriptions.wants(kind) for kind in REGISTRY_TYPES):
            self.queue.put_nowait(
                functools.partial(self._from_registry, events, self.revision(), time.time())
            )

    def _from_registry(self, raw: list[Any], revision: str | None, now: float) -> list[Event]:
        found = (
            model.from_registry(r, revision=revision, kind_of=self.kind_of, now=now) for r in raw
        )
        return [event for event in found if event is not None]

    def policy_loaded(self, revision: str | None, ok: bool) -> None:
        """A PolicySource listener (in the reloading thread): a new revision in force is a
        `policy.changed` with the permission diff from the one before."""
        engine = self.source.engine
        if not ok or engine is None:
            return
        before, self._policy = self._policy, engine.policy
        if before is None or before.revision == engine.revision:
            return
        try:
            if self.wants("policy.changed"):
                summary = diff_summary(before, engine.policy)
                self.queue.put_nowait(
                    model.policy_changed(before.revision, engine.revision, summary, now=time.time())
                )
        except Exception:  # the new policy is in force whatever happens here
            log.exception("cannot make the policy.changed event", extra={"event": "webhook_error"})

    def key_rotated(self, kid: str, previous: str | None, algorithm: str) -> None:
        """The gateway signs with a new key."""
        if self.wants("key.rotated"):
            self.queue.put_nowait(model.key_rotated(kid, previous, algorithm, now=time.time()))

    # -- the sender --------------------------------------------------------------------

    def start(self) -> None:
        """Start sending (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self.sender.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.sender.close()

    def deliveries(self) -> list[dict[str, Any]]:
        """Each subscription of the live policy with its latest deliveries (for admins)."""
        subscriptions = self.subscriptions().webhooks
        out = []
        for name in sorted(set(subscriptions) | set(self.sender.log.names())):
            webhook = subscriptions.get(name)
            out.append(
                {
                    "name": name,
                    "url": webhook.url if webhook else None,
                    "events": sorted(webhook.events) if webhook else [],
                    "repositories": list(webhook.repositories) if webhook else [],
                    "format": webhook.format if webhook else None,
                    "in_policy": webhook is not None,
                    "suspended_until": self.sender.suspended_until(name),
                    "deliveries": self.sender.log.entries(name),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        return {
            "queued": len(self.queue),
            "dropped": self.queue.dropped,
            "webhooks": self.deliveries(),
        }

    async def send_test(self, webhook: Webhook, kind: str | None = None) -> Delivery:
        """Deliver a sample event to `webhook` now (`webhook test`), with a short retry."""
        choice = kind or sorted(webhook.events)[0]
        repository = _sample_repository(webhook)
        event = model.sample(
            choice, repository=repository, revision=self.revision(), now=time.time()
        )
        retry = Retry(timeout=self.settings.webhook_timeout, backoff=0.5, total=5.0)
        return await self.sender.deliver(webhook, event, retry=retry)


def _denied(audit: str, request_id: str, client: str | None, now: float) -> list[Event]:
    fields = json.loads("{" + audit + "}")
    return model.token_denied(fields, request_id=request_id, client=client, now=now)


def _sample_repository(webhook: Webhook) -> str:
    for pattern in webhook.repositories:
        literal = "/".join(p for p in pattern.split("/") if "*" not in p)
        if literal:
            return f"{literal}/registry-gateway-test" if "*" in pattern else literal
    return "library/registry-gateway-test"


def diff_summary(old: Policy, new: Policy) -> dict[str, Any]:
    """What `registry-gateway diff` says about the change, for an event: its JSON (`to_data`),
    with at most MAX_DIFF_ITEMS notices, subjects and teams, and how many there were."""
    data = to_data(diff_policies(old, new))
    counts = {key: len(data[key]) for key in ("attention", "subjects", "teams")}
    for key in counts:
        data[key] = data[key][:MAX_DIFF_ITEMS]
    data["counts"] = counts
    data["truncated"] = any(n > MAX_DIFF_ITEMS for n in counts.values())
    return data


def claims_for(settings: Settings) -> Claims:
    """Where events that several replicas publish are claimed (gateway/events/dedupe.py)."""
    if settings.redis_url:
        import redis.asyncio as aioredis

        try:
            client = aioredis.from_url(
                settings.redis_url.reveal(), socket_timeout=0.5, socket_connect_timeout=0.5
            )
        except ValueError:  # its message may quote the URL, and so part of the password
            raise ConfigError("setting redis_url is not a valid Redis URL") from None
        return RedisClaims(client, f"registry-gateway:{settings.service}:event:")
    return FileClaims(settings.data_dir / "events" / "claims")


def _host(url: str | None) -> str:
    if not url:
        return ""
    return url.split("://", 1)[-1].rstrip("/")


def events_of(items: Iterable[Item]) -> list[Event]:
    """The events queued items stand for (tests and `webhook test` look at the queue)."""
    out: list[Event] = []
    for item in items:
        out.extend([item] if isinstance(item, Event) else item())
    return out
