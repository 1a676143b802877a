"""The gateway's background work: keeping the policy, the htpasswd file, the signing keys
and the catalog current. Each task runs until cancelled; `start` makes them for a lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from pathlib import Path

import watchfiles

from gateway import metrics
from gateway.auth.lockout import EPOCH_INTERVAL
from gateway.catalog.index import CatalogIndex
from gateway.policy.gitsource import GitSyncError
from gateway.services import Services, follow_remote

log = logging.getLogger("registry_gateway")
CATALOG_RETRY = 5.0  # seconds before reading a registry that failed again
KEYS_INTERVAL = 2.0  # seconds between looks for keys rotated by another process


def start(services: Services) -> list[asyncio.Task[None]]:
    """The tasks these settings call for, started."""
    settings = services.settings
    work = [watch_keys(services)]
    if services.remote is not None:
        work.append(poll_remote(services))
    elif settings.watch:
        work.append(watch_policy(services))
    if services.authenticator.htpasswd is not None and settings.watch:
        work.append(watch_htpasswd(services))
    if services.catalog is not None:
        work.append(refresh_catalog(services, services.catalog))
    if services.authenticator.throttle.shared:
        work.append(follow_lockouts(services))
    return [asyncio.create_task(job) for job in work]


async def sync(services: Services) -> bool:
    """Fetch the remote (if any) and reload when the checkout holds a commit this process
    has not tried yet; True if a reload ran."""
    if services.remote is None:
        return await asyncio.to_thread(services.source.reload)
    try:
        return await asyncio.to_thread(follow_remote, services)
    except GitSyncError:
        return False  # logged by the remote; the last good revision stays in force


async def poll_remote(services: Services) -> None:
    """Fetch every `poll_interval` seconds on a fixed beat: the time a fetch takes does not
    push the next one later (a fetch that overruns its period skips to the next beat)."""
    interval = services.settings.poll_interval
    loop = asyncio.get_running_loop()
    beat = loop.time()
    while True:
        beat = next_beat(beat, interval, loop.time())
        await asyncio.sleep(beat - loop.time())
        await _survive("polling the policy remote", sync(services))


def next_beat(last: float, interval: float, now: float) -> float:
    """The first beat after `now` on the grid `last + k * interval`."""
    if now < last + interval:
        return last + interval
    return last + (int((now - last) / interval) + 1) * interval


async def _survive(what: str, work: Awaitable[object]) -> None:
    """Run one round of a background task; an unexpected error is logged, and the task goes
    on to its next round (a dead task would leave the gateway serving stale data silently)."""
    try:
        await work
    except Exception:
        log.exception(
            "%s failed; trying again on the next change", what, extra={"event": "task_error"}
        )


async def watch_policy(services: Services) -> None:
    """Reload when the policy directory changes, once a burst of writes has settled.

    What the directory's path names can change too: git-sync renames a `current` link to a
    new checkout, a deploy renames a new directory into place. The files are watched where
    the path resolves now, and the path is looked at every MOVED_INTERVAL seconds: when it
    resolves elsewhere, the policy is reloaded from there and the watch moves with it."""
    source = services.source
    path = Path(source.directory).absolute()
    debounce = max(1, int(services.settings.reload_debounce * 1000))

    def relevant(change: watchfiles.Change, path: str) -> bool:
        return ".git" not in Path(path).parts and not path.endswith(("~", ".swp", ".tmp"))

    while True:
        seen = directory_identity(path)
        moved = asyncio.Event()
        looking = asyncio.create_task(_until_moved(path, seen, moved))
        try:
            if seen is not None:
                async for _ in watchfiles.awatch(
                    seen[0],
                    debounce=debounce,
                    step=50,
                    watch_filter=relevant,
                    recursive=True,
                    stop_event=moved,
                ):
                    await _survive("reloading the policy", asyncio.to_thread(source.reload))
            await moved.wait()  # the watch ends when the path resolves elsewhere (or is gone)
        except (OSError, RuntimeError) as exc:  # the watched directory went away under it
            log.info("policy directory %s changed under the watch (%s)", path, exc)
            await moved.wait()
        finally:
            looking.cancel()
        await _survive("reloading the policy", asyncio.to_thread(source.reload))


MOVED_INTERVAL = 1.0  # seconds between looks at what the policy directory's path names


def directory_identity(path: Path) -> tuple[str, int, int] | None:
    """Where `path` resolves, and that directory's device and inode (None while missing)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (os.path.realpath(path), stat.st_dev, stat.st_ino)


async def _until_moved(path: Path, seen: tuple[str, int, int] | None, moved: asyncio.Event) -> None:
    while directory_identity(path) == seen:
        await asyncio.sleep(MOVED_INTERVAL)
    moved.set()


def file_identity(path: Path) -> tuple[str, int, int, int, int] | None:
    """What changes when a file is replaced by any means: its resolved path, and the inode,
    size and modification time of what it resolves to (None while it does not exist)."""
    try:
        stat = path.stat()  # through every symlink
    except OSError:
        return None
    return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


async def watch_htpasswd(services: Services) -> None:
    """Reload the htpasswd file whenever what its path resolves to changes: edited in place,
    replaced whole (editors, `htpasswd`), or swapped under it as a Kubernetes Secret or
    ConfigMap volume does (`htpasswd -> ..data/htpasswd`, `..data` renamed to a new
    directory). Any change in its directory is a reason to look; the look is a stat."""
    htpasswd = services.authenticator.htpasswd
    assert htpasswd is not None
    path = htpasswd.path.absolute()
    debounce = max(1, int(services.settings.reload_debounce * 1000))
    seen = file_identity(path)
    try:
        async for _ in watchfiles.awatch(path.parent, debounce=debounce, step=50, recursive=False):
            now = file_identity(path)
            if now != seen:
                seen = now
                await _survive("reloading the htpasswd file", asyncio.to_thread(htpasswd.reload))
    except FileNotFoundError:
        log.error(
            "cannot watch %s: its directory does not exist; htpasswd changes need a restart",
            path,
            extra={"event": "htpasswd_unwatched"},
        )


async def follow_lockouts(services: Services) -> None:
    """Read the shared lockout store's epoch every EPOCH_INTERVAL seconds: a failure counted
    on another worker or replica ends this process's replays and remembered sign-ins within
    about that long (and nothing is replayed while the store cannot be read)."""
    throttle = services.authenticator.throttle
    while True:
        await _survive("reading the lockout epoch", throttle.refresh_epoch())
        await asyncio.sleep(EPOCH_INTERVAL)


async def watch_keys(services: Services) -> None:
    """Pick up keys rotated by another process (`keys rotate`, another replica)."""
    keys = services.keys
    while True:
        await asyncio.sleep(KEYS_INTERVAL)
        try:
            before = keys.current().kid
            await asyncio.to_thread(keys.reload)
            current = keys.current()
            after = current.kid
            if after != before:
                log.info(
                    "now signing with key %s",
                    after,
                    extra={"event": "key_rotated", "kid": after},
                )
                services.events.key_rotated(after, before, current.algorithm)
        except Exception:
            log.exception("re-reading signing keys failed; still signing with the previous key")


async def refresh_catalog(services: Services, catalog: CatalogIndex) -> None:
    """Build the catalog index, then re-read the registry on an interval."""
    while True:
        refreshed = await catalog.refresh()
        if refreshed:
            metrics.CATALOG_REFRESH.set(catalog.refresh_seconds or 0)
        count_catalog(catalog)
        # A registry that is down (or not up yet) is tried again soon, not after a full period.
        interval = services.settings.catalog_refresh
        await asyncio.sleep(interval if refreshed else min(interval, CATALOG_RETRY))


async def update_repository(catalog: CatalogIndex, name: str, pushed: str | None) -> None:
    """Re-read one repository that a notification says changed."""
    await catalog.update_repository(name, pushed_at=pushed)
    count_catalog(catalog)


def count_catalog(catalog: CatalogIndex) -> None:
    status = catalog.status()
    metrics.CATALOG_SIZE.labels("repositories").set(status.repositories)
    metrics.CATALOG_SIZE.labels("tags").set(status.tags)
