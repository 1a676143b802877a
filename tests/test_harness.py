"""The test harness itself, without a process: finding programs, and the image layouts it
builds. Against a real registry and real clients: tests/realworld/test_harness.py."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.binaries import require
from tests.support.images import build_image, digest_of, layout_index, read_blob


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
    manifest = json.loads(read_blob(layout, first))
    config = json.loads(read_blob(layout, manifest["config"]["digest"]))
    raw_layers = [
        gzip.decompress(read_blob(layout, layer["digest"])) for layer in manifest["layers"]
    ]
    assert config["rootfs"]["diff_ids"] == [digest_of(raw) for raw in raw_layers]
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
        for m in layout_index(tmp_path)["manifests"]
    ]
    assert sorted(tags) == ["v1", "v2"]
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
