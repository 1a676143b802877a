"""The test harness itself, against a real registry without authentication."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.binaries import require
from support.certs import self_signed
from support.clients import DockerCLI, Podman, Skopeo, ok
from support.fixtures import OciImage
from support.images import OCI_INDEX, build_image
from support.registry import Registry, RegistryStartError, TokenAuth, start_registry

realworld = pytest.mark.realworld

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


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layout_index(layout: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return data


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


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


def test_require_fails_with_the_package_to_install() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y some-package"):
        require("no-such-program-registry-gateway", "some-package")


def test_images_are_reproducible_and_consistent(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", "v1", layers=2, env=["A=1"], entrypoint=["/bin/true"])
    again = build_image(
        tmp_path / "b", "other-tag", layers=2, env=["A=1"], entrypoint=["/bin/true"]
    )
    changed = build_image(tmp_path / "c", "v1", files={"x": b"different"})
    assert first == again != changed

    layout = tmp_path / "a"
    manifest = json.loads(_blob(layout, first))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    raw_layers = [gzip.decompress(_blob(layout, layer["digest"])) for layer in manifest["layers"]]
    assert config["rootfs"]["diff_ids"] == [_digest(raw) for raw in raw_layers]
    assert config["config"] == {"Env": ["A=1"], "Entrypoint": ["/bin/true"]}
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    tar_path = tmp_path / "layer.tar"
    tar_path.write_bytes(raw_layers[0])
    with tarfile.open(tar_path) as tar:
        assert tar.getnames() == ["etc", "etc/registry-gateway-test"]


def test_tags_accumulate_in_one_layout(tmp_path: Path) -> None:
    build_image(tmp_path, "v1")
    build_image(tmp_path, "v2", files={"v2": b"2"})
    build_image(tmp_path, "v1", files={"v1": b"retagged"})
    tags = [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in _layout_index(tmp_path)["manifests"]
    ]
    assert sorted(tags) == ["v1", "v2"]
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


@realworld
def test_skopeo_round_trip_keeps_the_manifest_digest(
    plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage, tmp_path: Path
) -> None:
    remote = f"docker://{plain_registry.host}/team/app:v1"
    ok(skopeo.copy(oci_image.ref("v1"), remote))
    back = tmp_path / "back"
    ok(skopeo.copy(remote, f"oci:{back}:copied"))

    [entry] = _layout_index(back)["manifests"]
    assert entry["digest"] == oci_image.v1_digest
    assert json.loads(ok(skopeo.inspect(remote)).stdout)["Digest"] == oci_image.v1_digest
    assert json.loads(ok(skopeo.list_tags(f"{plain_registry.host}/team/app")).stdout)["Tags"] == [
        "v1"
    ]
    assert "PUT /v2/team/app/manifests/v1" in plain_registry.logs()


@realworld
def test_multiplatform_push_keeps_every_platform(
    plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage
) -> None:
    remote = f"{plain_registry.host}/team/multi:latest"
    ok(skopeo.copy(oci_image.ref("multi"), f"docker://{remote}", all_platforms=True))

    raw = ok(skopeo.inspect(remote, raw=True)).stdout
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX
    assert _digest(raw.encode()) == oci_image.multi_digest
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    for manifest in index["manifests"]:
        ok(skopeo.inspect(f"{plain_registry.host}/team/multi@{manifest['digest']}", raw=True))


@realworld
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


@realworld
def test_podman_pushes_an_image_from_a_layout(
    plain_registry: Registry, skopeo: Skopeo, podman: Podman, oci_image: OciImage
) -> None:
    name = f"{plain_registry.host}/team/from-layout:v1"
    ok(podman.load_layout(oci_image.layout, "v1", name))
    ok(podman.push(name, name))
    assert json.loads(ok(skopeo.inspect(name)).stdout)["Labels"] == {"org.example.test": "harness"}


@realworld
def test_docker_manifest_inspect(
    plain_registry: Registry, skopeo: Skopeo, docker_cli: DockerCLI, oci_image: OciImage
) -> None:
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{plain_registry.host}/team/app:v1"))

    shown = json.loads(ok(docker_cli.manifest_inspect(f"{plain_registry.host}/team/app:v1")).stdout)
    assert shown == json.loads(_blob(oci_image.layout, oci_image.v1_digest))
    missing = docker_cli.manifest_inspect(f"{plain_registry.host}/team/app:nope")
    assert missing.returncode != 0


@realworld
def test_skopeo_delete(plain_registry: Registry, skopeo: Skopeo, oci_image: OciImage) -> None:
    image = f"{plain_registry.host}/team/app"
    ok(skopeo.copy(oci_image.ref("v1"), f"docker://{image}:v1"))

    ok(skopeo.delete(f"{image}:v1"))
    gone = skopeo.inspect(f"{image}@{oci_image.v1_digest}", raw=True)
    assert gone.returncode != 0
    assert "manifest unknown" in gone.stderr
    assert "DELETE /v2/team/app/manifests/sha256:" in plain_registry.logs()


@realworld
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


@realworld
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


@realworld
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


@realworld
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
