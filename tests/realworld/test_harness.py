"""The test harness itself, against a real registry without authentication. What needs no
process (finding programs, building image layouts) is in tests/test_harness.py."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import self_signed
from tests.support.clients import DockerCLI, Podman, Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.images import OCI_INDEX, digest_of, layout_index, read_blob
from tests.support.registry import Registry, RegistryStartError, TokenAuth, start_registry

# What root-run clients are known to write to when not isolated (see PROTOCOL.md).
SYSTEM_PATHS = (
    "/etc/containers",
    "/etc/cni",
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
    "/run/mount",
    "~/.docker",
    "~/.config/containers",
    "~/.local/share/containers",
)


def _snapshot(paths: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """Mode, size and mtime of everything under `paths` (absent paths are simply missing)."""
    seen: dict[str, tuple[int, int, int]] = {}
    for raw in paths:
        top = os.path.expanduser(raw)
        if not os.path.lexists(top):
            continue
        for directory, _dirs, files in os.walk(top):
            for name in [".", *files]:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                seen[os.path.normpath(path)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return seen


def test_skopeo_round_trip_keeps_the_manifest_digest(
    plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage, tmp_path: Path
) -> None:
    remote = f"docker://{plain_registry.host}/team/app:v1"
    ok(skopeo.copy(oci_image.ref("v1"), remote))
    back = tmp_path / "back"
    ok(skopeo.copy(remote, f"oci:{back}:copied"))

    [entry] = layout_index(back)["manifests"]
    assert entry["digest"] == oci_image.v1_digest
    assert json.loads(ok(skopeo.inspect(remote)).stdout)["Digest"] == oci_image.v1_digest
    assert json.loads(ok(skopeo.list_tags(f"{plain_registry.host}/team/app")).stdout)["Tags"] == [
        "v1"
    ]
    assert "PUT /v2/team/app/manifests/v1" in plain_registry.logs()


def test_multiplatform_push_keeps_every_platform(
    plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage
) -> None:
    remote = f"{plain_registry.host}/team/multi:latest"
    ok(skopeo.copy(oci_image.ref("multi"), f"docker://{remote}", all_platforms=True))

    raw = ok(skopeo.inspect(remote, raw=True)).stdout
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX
    assert digest_of(raw.encode()) == oci_image.multi_digest
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    for manifest in index["manifests"]:
        ok(skopeo.inspect(f"{plain_registry.host}/team/multi@{manifest['digest']}", raw=True))


def test_podman_pulls_and_pushes_under_a_new_name(
    plain_registry: Registry, skopeo: Skopeo, podman: Podman, oci_image: OciImage
) -> None:
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{plain_registry.host}/team/app:v1"))

    ok(podman.pull(f"{plain_registry.host}/team/app:v1"))
    ok(podman.push(f"{plain_registry.host}/team/app:v1", f"{plain_registry.host}/other/copy:v1"))

    names = [name for image in json.loads(ok(podman.images()).stdout) for name in image["Names"]]
    assert f"{plain_registry.host}/team/app:v1" in names
    original = json.loads(ok(skopeo.inspect(f"{plain_registry.host}/team/app:v1")).stdout)
    copied = json.loads(ok(skopeo.inspect(f"{plain_registry.host}/other/copy:v1")).stdout)
    assert copied["Layers"] == original["Layers"]
    assert copied["Labels"] == {"org.example.test": "harness"}


def test_podman_pushes_an_image_from_a_layout(
    plain_registry: Registry, skopeo: Skopeo, podman: Podman, oci_image: OciImage
) -> None:
    name = f"{plain_registry.host}/team/from-layout:v1"
    ok(podman.load_layout(oci_image.layout, "v1", name))
    ok(podman.push(name, name))
    assert json.loads(ok(skopeo.inspect(name)).stdout)["Labels"] == {"org.example.test": "harness"}


def test_docker_manifest_inspect(
    plain_registry: Registry, skopeo: Skopeo, docker_cli: DockerCLI, oci_image: OciImage
) -> None:
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{plain_registry.host}/team/app:v1"))

    shown = json.loads(ok(docker_cli.manifest_inspect(f"{plain_registry.host}/team/app:v1")).stdout)
    assert shown == json.loads(read_blob(oci_image.layout, oci_image.v1_digest))
    missing = docker_cli.manifest_inspect(f"{plain_registry.host}/team/app:nope")
    assert missing.returncode != 0


def test_skopeo_delete(plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage) -> None:
    image = f"{plain_registry.host}/team/app"
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{image}:v1"))

    ok(skopeo.delete(f"{image}:v1"))
    gone = skopeo.inspect(f"{image}@{oci_image.v1_digest}", raw=True)
    assert gone.returncode != 0
    assert "manifest unknown" in gone.stderr
    assert "DELETE /v2/team/app/manifests/sha256:" in plain_registry.logs()


def test_logins_and_pulls_leave_nothing_outside_the_temp_dir(
    plain_registry: Registry,
    skopeo: Skopeo,
    podman: Podman,
    docker_cli: DockerCLI,
    oci_image: OciImage,
    tmp_path: Path,
) -> None:
    before = _snapshot(SYSTEM_PATHS)
    image = f"{plain_registry.host}/team/app:v1"
    ok(skopeo.login(plain_registry.host, "alice", "secret"))
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{image}"))
    ok(skopeo.copy(f"docker://{image}", f"oci:{tmp_path / 'out'}:v1"))
    ok(podman.login(plain_registry.host, "alice", "secret"))
    ok(podman.pull(image))
    ok(podman.push(image, f"{plain_registry.host}/team/again:v1"))
    ok(podman.logout(plain_registry.host))
    ok(docker_cli.login(plain_registry.host, "alice", "secret"))
    ok(docker_cli.manifest_inspect(image))
    assert plain_registry.host in docker_cli.config()["auths"]
    ok(docker_cli.logout(plain_registry.host))
    ok(skopeo.logout(plain_registry.host))

    assert _snapshot(SYSTEM_PATHS) == before
    assert json.loads(skopeo.auth_file.read_text()) == {"auths": {}}
    # What podman wrote to the system directories went to its private copies instead.
    assert list(podman.system_dir("/var/lib/containers").rglob("blob-info-cache*"))


def test_token_auth_registry_challenges_and_restarts(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(self_signed("harness")[0])
    token = TokenAuth(
        realm="http://127.0.0.1:9/auth/token",
        service="registry.test",
        issuer="registry-gateway",
        rootcertbundle=bundle,
    )
    registry = start_registry(tmp_path / "registry", token=token)
    try:
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"{registry.url}/v2/", timeout=5)
            assert caught.value.code == 401
            assert caught.value.headers["WWW-Authenticate"] == (
                'Bearer realm="http://127.0.0.1:9/auth/token",service="registry.test"'
            )
            caught.value.close()
            port = registry.port
            registry.restart()
            assert registry.port == port
    finally:
        registry.stop()


def test_registry_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    token = TokenAuth("http://127.0.0.1:9/", "svc", "iss", tmp_path / "missing.pem")
    with pytest.raises(RegistryStartError, match=r"(?s)exited.*missing\.pem"):
        start_registry(tmp_path / "registry", token=token)


class _Events(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.extend(json.loads(body)["events"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def events_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint collecting registry notification events."""
    received: list[dict[str, Any]] = []
    handler = type("Handler", (_Events,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_registry_sends_notifications(
    tmp_path: Path,
    skopeo: Skopeo,
    oci_image: OciImage,
    events_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = events_server
    endpoint = {"name": "harness", "url": url, "timeout": "1s", "threshold": 3, "backoff": "1s"}
    registry = start_registry(tmp_path / "registry", notifications=[endpoint])
    try:
        ok(skopeo.copy(oci_image.ref("v1"), f"docker://{registry.host}/team/app:v1"))
        deadline = time.monotonic() + 10
        while not any(e["action"] == "push" and "tag" in e["target"] for e in received):
            assert time.monotonic() < deadline, f"no manifest push event; got {received}"
            time.sleep(0.05)
    finally:
        registry.stop()
    [push] = [e for e in received if e["action"] == "push" and "tag" in e["target"]]
    assert push["target"]["repository"] == "team/app"
    assert push["target"]["digest"] == oci_image.v1_digest
