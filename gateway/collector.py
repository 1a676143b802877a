"""Process-wide garbage-collector decisions, made by the app and the CLI, never by a library.

A policy builds hundreds of thousands of long-lived, acyclic objects. Full collections
rescanned them again and again while they were built (62% of the load time of a 10,000-user
policy), and every collection after that walked them again (130 ms per full collection on a
large policy, straight into token p99). So: pause the cyclic collector while building, and
freeze what was built out of every later collection as soon as it is built.

Freezing is sound only for what reference counting alone can free: an object in a reference
cycle that is frozen is never freed. What a policy load builds holds no cycle (the policy
index is built without them, and `tests/test_collector.py` holds a load, a failed load and
the decisions of a loaded policy to that), so a replaced policy is freed as soon as nothing
uses it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (reference counting still frees as usual)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def building() -> Iterator[None]:
    """Build something that lives until it is replaced (a policy): what lies about is
    collected first, no cyclic collection runs while building, and once the block ends
    without an exception everything alive is frozen, before the collector may run again.

    Without the freeze, the first collection after the block would scan all that was built
    at once (1.3 s for a 100,000-user policy) and later full collections again and again.
    The collection before the block keeps what requests left behind until then out of the
    freeze; what they leave during the block, if cyclic, stays frozen: a few objects at most,
    once per reload."""
    if gc.isenabled():
        gc.collect()
    with paused():
        yield
        gc.freeze()  # not reached when the block raises


def freeze_survivors() -> None:
    """Collect once, then move everything still alive out of later collections' reach."""
    gc.collect()
    gc.freeze()
