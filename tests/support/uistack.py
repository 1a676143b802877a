"""A real registry holding everything the catalog UI shows, for the browser tests: the images
of tests/support/catalog.py, one image under three tags, and a cosign signature and
attestation of it, all pushed with skopeo; a gateway that reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .catalog import IMAGES, basic, push_all, wait_until
from .clients import Skopeo, ok
from .cosign import attachment_tag, build_attestation, build_signature
from .fixtures import OciImage
from .gateway import Stack, creds, start_stack

GROUPED = "library/base"  # v1 is also `latest` and `stable` there, and signed
MORE_TAGS = ("latest", "stable")
# Every page of the UI, by who may see it (None: anonymous), as the browser tests visit them.
ANYONE = [
    "/",
    "/n/library",
    f"/r/{GROUPED}",
    f"/r/{GROUPED}:latest",
    "/r/library/multi:multi",
    "/search?q=a",
    "/-/login",
    "/this/is/not/a/page",
]
USER = [
    *ANYONE,
    "/n/platform",
    "/r/platform/prod/api",
    "/r/platform/prod/api:v1",
    "/-/explain/r/platform/prod/api",
    "/-/access/r/platform/prod/api",
    "/-/access/n/platform",
    "/-/teams",
    "/-/status",
]
ADMIN = [
    *USER,
    "/-/explain?subject=user%3Abob&scope=repository%3Aplatform%2Fprod%2Fapi%3Apull%2Cpush",
    "/n/_",
]
PAGES = {None: ANYONE, "bob": USER, "alice": ADMIN}


def start_ui_stack(root: Path, oci_image: OciImage) -> Stack:
    """The stack, filled, and the catalog read in full (no "unreachable" banner left from the
    start, when the registry was not up yet)."""
    stack = start_stack(root, catalog=True, args=["--registry-public", "registry.example.test"])
    try:
        skopeo = Skopeo(root / "skopeo")
        push_all(stack, skopeo, oci_image)
        for tag in MORE_TAGS:
            ok(
                skopeo.copy(
                    oci_image.ref("v1"), stack.ref(f"{GROUPED}:{tag}"), creds=creds("alice")
                )
            )
        layout = root / "cosign"
        digest = oci_image.v1_digest
        build_signature(layout, "sig", f"{stack.host}/{GROUPED}", digest)
        build_attestation(layout, "att", digest)
        for suffix in ("sig", "att"):
            target = stack.ref(f"{GROUPED}:{attachment_tag(digest, suffix)}")
            ok(skopeo.copy(f"oci:{layout}:{suffix}", target, creds=creds("alice")))
        wait_until(lambda: _read(stack, oci_image), timeout=60, what="the whole registry in the UI")
    except BaseException:
        stack.stop()
        raise
    return stack


def _read(stack: Stack, oci_image: OciImage) -> bool:
    status = httpx.get(
        f"{stack.gateway.url}/-/status", params={"format": "json"}, auth=basic("alice")
    ).json()["catalog"]
    if not (status["built"] and not status["last_error"] and status["repositories"] == len(IMAGES)):
        return False
    page = httpx.get(f"{stack.gateway.url}/r/{GROUPED}", params={"format": "json"}).json()
    return any(len(image["attached"]) == 2 for image in page["images"])


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage) -> Iterator[Stack]:
    """One UI stack (start_ui_stack) for every browser test that only reads it."""
    running = start_ui_stack(tmp_path_factory.mktemp("ui-stack"), oci_image)
    try:
        yield running
    finally:
        running.stop()
