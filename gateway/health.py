"""The health model: one answer for /healthz, /readyz and the UI's Status page."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.services import Services


def health(services: Services, *, details: bool = False) -> dict[str, Any]:
    """Whether a valid policy is in force, which one, and how the sources behind it are.

    Unauthenticated callers (/healthz, /readyz) get where a rejected policy went wrong, not
    what its files say (`error_summary`); `details` (the UI, for admins) gives every problem."""
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
        "error": status.last_error if details else error_summary(status.last_error),
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


def error_summary(error: str | None) -> str | None:
    """Where a rejection's problems are (`file:line:column`, the first five places) and how
    many there were; none of the files' text (a message may quote a key or a value)."""
    if not error:
        return error
    lines = [line for line in error.splitlines() if line.strip()]
    places = list(dict.fromkeys(line.split(": ", 1)[0] for line in lines if ": " in line))
    shown = ", ".join(places[:5]) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
    return (
        f"policy rejected: {len(lines)} problem(s) at {shown or 'the policy'}; the server log "
        "has them all, and so has the Status page for admins"
    )
