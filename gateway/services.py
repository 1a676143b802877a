"""The service container: everything a request may need, built once from the settings.

`create_app` (gateway/app.py) wires these into routes; the UI and the system views take the
container, never the app. Nothing here starts a task or serves a route.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from gateway import metrics
from gateway.audit import AuditLog
from gateway.auth.identity import Authenticator
from gateway.auth.keys import KeyStore
from gateway.auth.lockout import Announcing
from gateway.auth.reuse import Reuse
from gateway.auth.service import TokenService
from gateway.auth.tokens import TokenIssuer
from gateway.catalog.index import CatalogIndex
from gateway.catalog.registry import RegistryClient
from gateway.config import Settings
from gateway.events.publisher import Events
from gateway.policy.gitsource import GitRemote, GitSyncError
from gateway.policy.source import PolicySource


class PolicyUnavailable(RuntimeError):
    """No valid policy at start: the gateway will not serve tokens from nothing."""


class Services:
    """The gateway's parts, for one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        building: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.data_dir, common_name=settings.issuer)
        self.remote, self.source = policy_source(settings, building)
        self.source.listeners.append(metrics.policy_loaded)
        self.issuer = TokenIssuer(
            self.keys,
            issuer=settings.issuer,
            service=settings.service,
            ttl=settings.token_ttl,
            refresh_ttl=settings.refresh_ttl,
        )
        self.audit = AuditLog(settings.audit_log)
        # Events out (webhooks): the queue the hooks below put on, the sender (docs/events.md).
        self.events = Events(settings, self.source)
        self.source.listeners.append(self.events.policy_loaded)
        self.authenticator = Authenticator.from_settings(settings)
        self.authenticator.throttle = Announcing(
            self.authenticator.throttle, self.events.locked_out
        )
        self.tokens = TokenService(
            service=settings.service,
            realm=settings.realm,
            max_scopes=settings.max_scopes,
            source=self.source,
            issuer=self.issuer,
            authenticator=self.authenticator,
            audit=self.audit,
            reuse=Reuse(
                window=min(30.0, settings.token_ttl / 10),
                auth_cache_ttl=self.authenticator.cache.ttl,
            ),
            on_answer=self.events.token_denied,
        )
        self.catalog: CatalogIndex | None = None
        if settings.registry_url:
            client = RegistryClient(
                settings.registry_url, self.issuer, connections=settings.catalog_concurrency
            )
            self.catalog = CatalogIndex(
                client,
                concurrency=settings.catalog_concurrency,
                full_refresh=settings.catalog_full_refresh,
            )
        # Set when the server stops taking new work (SIGTERM, shutdown): /readyz answers 503.
        self.draining = threading.Event()
        # The commit of the policy remote this process last tried to load, good or not.
        self.tried_head: str | None = None

    def start(self) -> None:
        """Keys, the first policy and the htpasswd file; PolicyUnavailable without a policy."""
        self.keys.ensure(self.settings.key_algorithm)
        if self.source.engine is None:
            load_first_policy(self)
        if self.authenticator.htpasswd is not None:
            self.authenticator.htpasswd.reload()


def policy_source(
    settings: Settings,
    building: Callable[[], AbstractContextManager[None]] | None = None,
) -> tuple[GitRemote | None, PolicySource]:
    """The policy's source: a directory, or a directory inside a clone of a git remote."""
    options = {"building": building} if building is not None else {}
    if not settings.policy_git:
        return None, PolicySource(settings.policies, **options)
    remote = GitRemote(
        settings.policy_git,
        settings.policy_branch,
        settings.data_dir / "policy-git",
        token=settings.policy_git_token.reveal() if settings.policy_git_token else None,
        ssh_key=settings.policy_git_ssh_key,
    )
    return remote, PolicySource(remote.directory / settings.policy_path, **options)


def follow_remote(services: Services) -> bool:
    """Fetch the policy remote and load its head if this process has not tried that commit
    yet (whoever checked it out: the workers of a host share one checkout, and the first to
    fetch a new commit checks it out for all). True if a reload ran.

    The checkout stays still meanwhile (`GitRemote.exclusive`), so no process reads a tree
    that another is checking out. A commit that was rejected is not loaded again until the
    branch moves. GitSyncError when the remote cannot be read."""
    remote, source = services.remote, services.source
    assert remote is not None
    with remote.exclusive():
        result = remote.sync_held()
        if result.head == services.tried_head and source.engine is not None:
            return False
        services.tried_head = result.head
        return source.reload()


def load_first_policy(services: Services) -> None:
    """Fetch and load the first policy; PolicyUnavailable when there is none to serve."""
    remote, source = services.remote, services.source
    if remote is not None:
        try:
            follow_remote(services)
        except GitSyncError as exc:
            if not (remote.directory / ".git").is_dir():
                raise PolicyUnavailable(str(exc)) from None
            # A remote that is down at start: serve the last checkout we have, if it is valid.
            with remote.exclusive():
                source.reload()
    else:
        source.reload()
    if source.engine is None:
        raise PolicyUnavailable(
            f"no valid policy in {source.directory}: {source.status().last_error}"
        )
