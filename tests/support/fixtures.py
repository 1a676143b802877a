"""pytest plugin: real clients, a small OCI image layout and an unauthenticated registry.

Registered from tests/conftest.py with `pytest_plugins = ["tests.support.fixtures", ...]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .clients import DockerCLI, Podman, Skopeo
from .images import build_image, build_multiplatform_image
from .registry import Registry, start_registry


@dataclass(frozen=True)
class OciImage:
    """An OCI layout holding tag `v1` (one platform) and tag `multi` (an index of two)."""

    layout: Path
    v1_digest: str
    multi_digest: str

    def ref(self, tag: str) -> str:
        """The skopeo source reference `oci:LAYOUT:TAG`."""
        return f"oci:{self.layout}:{tag}"


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    """skopeo with its own HOME, XDG dirs and auth file under the test's temp dir."""
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def podman(tmp_path: Path) -> Podman:
    """podman (vfs) whose every command runs in a private mount namespace."""
    return Podman(tmp_path / "podman")


@pytest.fixture
def docker_cli(tmp_path: Path) -> DockerCLI:
    """The Docker CLI (no engine) with its own DOCKER_CONFIG."""
    return DockerCLI(tmp_path / "docker")


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A small image layout built once per session; treat it as read-only."""
    layout = tmp_path_factory.mktemp("oci") / "layout"
    return OciImage(
        layout=layout,
        v1_digest=build_image(layout, "v1", labels={"org.example.test": "harness"}),
        multi_digest=build_multiplatform_image(layout, "multi"),
    )


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[Registry]:
    """A real registry without authentication, stopped after the test."""
    registry = start_registry(tmp_path / "registry")
    try:
        yield registry
    finally:
        registry.stop()
