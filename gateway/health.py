"""The health model: one answer for /healthz, /readyz and the UI's Status page."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.services import Services


def health(services: Services) -> dict[str, Any]:
    """Whether a valid policy is in force, which one, and how the sources behind it are."""
    source, remote = services.source, services.remote
    status = source.status()
    source_error = remote.last_error if remote else None
    # The newest revision the source offers: for a git remote, the commit last fetched.
    newest = remote.head[:12] if remote is not None and remote.head else status.revision
    state = status.state
    behind = status.revision is not None and newest != status.revision
    if state == "ok" and (source_error or behind):
        state = "degraded"
    return {
        "status": "draining" if services.draining.is_set() else state,
        "revision": status.revision,
        "newest": newest,
        "loaded_at": source.loaded_at_iso(),
        "error": status.last_error,
        "source": remote.describe()
        if remote
        else {"kind": "directory", "path": str(source.directory)},
        "reloads": status.reloads,
        "failed_reloads": status.failures,
        "version": __version__,
        **sign_in_status(services),
    }


def sign_in_status(services: Services) -> dict[str, Any]:
    """The directory backends, when configured (informational: never unhealthy)."""
    backends: dict[str, Any] = {}
    htpasswd, ldap = services.authenticator.htpasswd, services.authenticator.ldap
    if htpasswd is not None:
        backends["htpasswd"] = {
            "path": str(htpasswd.path),
            "users": len(htpasswd.entries.hashes),
            "revision": htpasswd.entries.revision,
            "error": htpasswd.last_error,
        }
    if ldap is not None:
        backends["ldap"] = {"url": ldap.describe(), "down": ldap.down}
    return {"sign_in": backends} if backends else {}
