"""Build OCI image layouts on disk with the standard library only.

The bytes are deterministic: the same arguments always give the same manifest digest, so tests
can compare digests across a push and a pull. Several tags may share one layout directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

CREATED = "2024-01-01T00:00:00Z"
_MTIME = 1704067200  # CREATED as a Unix time: fixed so that layers are reproducible
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
DEFAULT_FILES: Mapping[str, bytes] = {"etc/registry-gateway-test": b"hello from the harness\n"}


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_blob(layout_dir: Path, data: bytes) -> str:
    """Store `data` under blobs/sha256 and return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def _descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of `files` with parent directories, fixed owners and mtimes."""
    members: dict[str, bytes | None] = {}
    for name, data in files.items():
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts)):
            members.setdefault("/".join(parts[:depth]), None)
        members["/".join(parts)] = data
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            content = members[name]
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _write_manifest(
    layout_dir: Path,
    layer_files: Sequence[Mapping[str, bytes]],
    *,
    architecture: str,
    os: str,
    labels: Mapping[str, str] | None,
    env: Sequence[str] | None,
    entrypoint: Sequence[str] | None,
) -> tuple[str, int]:
    """Write layers, config and manifest blobs; return the manifest digest and size."""
    layers: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for files in layer_files:
        raw = _tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        compressed = gzip.compress(raw, compresslevel=6, mtime=0)
        layers.append(
            _descriptor(OCI_LAYER_GZIP, _write_blob(layout_dir, compressed), len(compressed))
        )
    image_config: dict[str, Any] = {"Env": list(DEFAULT_ENV if env is None else env)}
    if entrypoint is not None:
        image_config["Entrypoint"] = list(entrypoint)
    if labels:
        image_config["Labels"] = dict(labels)
    config = {
        "created": CREATED,
        "architecture": architecture,
        "os": os,
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"registry-gateway tests: layer {n}"}
            for n in range(len(layers))
        ],
    }
    config_bytes = _json_bytes(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, _write_blob(layout_dir, config_bytes), len(config_bytes)),
        "layers": layers,
    }
    manifest_bytes = _json_bytes(manifest)
    return _write_blob(layout_dir, manifest_bytes), len(manifest_bytes)


def _tag(layout_dir: Path, tag: str, descriptor: dict[str, Any]) -> None:
    """Point `tag` at `descriptor` in index.json, replacing an earlier entry for the same tag."""
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout_dir / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    entries = [
        entry
        for entry in index.get("manifests", [])
        if entry.get("annotations", {}).get(REF_NAME) != tag
    ]
    entries.append({**descriptor, "annotations": {REF_NAME: tag}})
    index["manifests"] = entries
    index_path.write_text(json.dumps(index, indent=2))


def _layer_files(files: Mapping[str, bytes] | None, layers: int) -> list[Mapping[str, bytes]]:
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    first = DEFAULT_FILES if files is None else files
    return [first, *({f"layer-{n}.txt": f"layer {n}\n".encode()} for n in range(1, layers))]


def build_image(
    layout_dir: Path,
    tag: str,
    *,
    files: dict[str, bytes] | None = None,
    layers: int = 1,
    architecture: str = "amd64",
    os: str = "linux",
    labels: dict[str, str] | None = None,
    env: list[str] | None = None,
    entrypoint: list[str] | None = None,
) -> str:
    """Write a single-platform image tagged `tag` into the layout; return its manifest digest.

    `files` (path to content) make up the first layer; each further layer holds one small file.
    """
    layout_dir.mkdir(parents=True, exist_ok=True)
    digest, size = _write_manifest(
        layout_dir,
        _layer_files(files, layers),
        architecture=architecture,
        os=os,
        labels=labels,
        env=env,
        entrypoint=entrypoint,
    )
    _tag(layout_dir, tag, _descriptor(OCI_MANIFEST, digest, size))
    return digest


def build_multiplatform_image(
    layout_dir: Path,
    tag: str,
    platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
) -> str:
    """Write an image index with one manifest per (os, architecture); return the index digest."""
    layout_dir.mkdir(parents=True, exist_ok=True)
    manifests: list[dict[str, Any]] = []
    for os_name, architecture in platforms:
        files = {"etc/platform": f"{os_name}/{architecture}\n".encode()}
        digest, size = _write_manifest(
            layout_dir,
            [files],
            architecture=architecture,
            os=os_name,
            labels=None,
            env=None,
            entrypoint=None,
        )
        platform = {"architecture": architecture, "os": os_name}
        manifests.append(_descriptor(OCI_MANIFEST, digest, size, platform=platform))
    index_bytes = _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    digest = _write_blob(layout_dir, index_bytes)
    _tag(layout_dir, tag, _descriptor(OCI_INDEX, digest, len(index_bytes)))
    return digest


# -- reading a layout back ----------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    """The `sha256:` digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_index(layout_dir: Path) -> dict[str, Any]:
    """The layout's index.json."""
    data: dict[str, Any] = json.loads((layout_dir / "index.json").read_text())
    return data


def read_blob(layout_dir: Path, digest: str) -> bytes:
    """The blob `digest` of the layout."""
    return (layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
