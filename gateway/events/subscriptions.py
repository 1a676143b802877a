"""The live policy's webhook subscriptions, indexed by event type, and their secrets.

The subscriptions themselves are policy (`webhooks:`, read and checked by
`gateway/policy/webhooks.py`), so they change with the revision in force. Secrets never are:
each is read from the environment variable or file the subscription names, when a delivery
needs it; a subscription whose secret is missing sends nothing (its log says why).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.events.model import Event
from gateway.policy.model import Policy, Webhook
from gateway.policy.patterns import Pattern, compile_pattern

MAX_SECRET_BYTES = 4096


class SecretUnavailable(Exception):
    """A subscription's secret cannot be read; the message says where it was looked for."""


class Subscriptions:
    """Who wants which event under one policy revision."""

    def __init__(self, policy: Policy | None) -> None:
        self.revision = policy.revision if policy is not None else None
        self.webhooks: dict[str, Webhook] = {}
        self._by_type: dict[str, list[tuple[Webhook, tuple[Pattern, ...]]]] = {}
        for webhook in policy.webhooks if policy is not None else ():
            self.webhooks[webhook.name] = webhook
            patterns = tuple(compile_pattern(p) for p in webhook.repositories)
            for kind in webhook.events:
                self._by_type.setdefault(kind, []).append((webhook, patterns))

        self._names = {
            kind: tuple(webhook.name for webhook, _ in found)
            for kind, found in self._by_type.items()
        }

    def wants(self, kind: str) -> bool:
        """Whether any subscription takes events of this type (cheap: the token path asks)."""
        return kind in self._by_type

    def names(self, kind: str) -> tuple[str, ...]:
        """The subscriptions that take events of this type."""
        return self._names.get(kind, ())

    def matching(self, event: Event) -> list[Webhook]:
        """The subscriptions that get `event`: its type, and a pattern naming its repository
        (or no patterns at all)."""
        found = []
        repository = event.repository
        for webhook, patterns in self._by_type.get(event.type, ()):
            if not patterns or (
                repository is not None and any(p.matches(repository) for p in patterns)
            ):
                found.append(webhook)
        return found


def read_secret(webhook: Webhook, environ: Mapping[str, str] | None = None) -> bytes:
    """The subscription's signing secret; SecretUnavailable when it is unset or empty."""
    environ = os.environ if environ is None else environ
    if webhook.secret_env:
        value = environ.get(webhook.secret_env, "")
        if not value:
            raise SecretUnavailable(
                f"webhook {webhook.name!r}: environment variable {webhook.secret_env} is not set"
            )
        return value.encode("utf-8")
    path = Path(webhook.secret_file)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretUnavailable(
            f"webhook {webhook.name!r}: cannot read secret_file {path}: {exc.strerror}"
        ) from None
    data = data.strip()
    if not data or len(data) > MAX_SECRET_BYTES:
        raise SecretUnavailable(
            f"webhook {webhook.name!r}: secret_file {path} is empty or longer than "
            f"{MAX_SECRET_BYTES} bytes"
        )
    return data
