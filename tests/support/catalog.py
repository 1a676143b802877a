"""Fill a real registry with images for the catalog UI tests, and read the UI as someone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from bs4 import BeautifulSoup

from .clients import Skopeo, ok
from .fixtures import OciImage
from .gateway import PASSWORDS, Stack, creds, jwt_parts

# repository -> (tag in the layout, pusher). `multi` is an image index of two platforms.
IMAGES: dict[str, tuple[str, str]] = {
    "library/base": ("v1", "alice"),
    "library/multi": ("multi", "alice"),
    "platform/api": ("v1", "bob"),
    "platform/prod/api": ("v1", "release"),
    "bob/tool": ("v1", "bob"),
    "carol/notes": ("v1", "carol"),
    "qa/runner": ("v1", "dave"),
    "alpine": ("v1", "alice"),
}


def push_all(stack: Stack, skopeo: Skopeo, image: OciImage) -> None:
    for repository, (tag, who) in IMAGES.items():
        ok(
            skopeo.copy(
                image.ref(tag),
                stack.ref(f"{repository}:{tag}"),
                dest_creds=creds(who),
                all_platforms=tag == "multi",
            )
        )


def may_pull(stack: Stack, user: str | None, repository: str) -> bool:
    """What the policy engine says, asked through the real token endpoint."""
    token = stack.gateway.token(user, f"repository:{repository}:pull").json()["token"]
    access = jwt_parts(token)[1]["access"]
    return any(a["name"] == repository and "pull" in a["actions"] for a in access)


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def basic(user: str) -> tuple[str, str]:
    return (user, PASSWORDS[user])


def csrf_of(html: str) -> str:
    field = BeautifulSoup(html, "html.parser").select_one("input[name=csrf]")
    assert field is not None, "no CSRF field in the page"
    return str(field["value"])


@contextlib.contextmanager
def signed_in_client(stack: Stack, user: str | None) -> Iterator[httpx.Client]:
    """An HTTP client holding a UI session of `user` (None: anonymous, no session)."""
    with httpx.Client(base_url=stack.gateway.url, timeout=30, follow_redirects=False) as client:
        if user is not None:
            csrf = csrf_of(client.get("/-/login").text)
            answer = client.post(
                "/-/login", data={"username": user, "password": PASSWORDS[user], "csrf": csrf}
            )
            assert answer.status_code == 303, answer.text
        yield client
