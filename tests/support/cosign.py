"""What cosign attaches to an image, written as OCI image layouts with the standard library:
a signature (`sha256-<hex>.sig`) and an attestation (`sha256-<hex>.att`), with cosign's media
types, annotations and config, so that `skopeo copy` pushes them as cosign would. The
signatures are not real (no key signs them): the catalog shows what is attached, it does not
verify it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def attachment_tag(digest: str, suffix: str) -> str:
    """`sha256:abc...` and `sig` -> `sha256-abc....sig`, cosign's tag for it."""
    return digest.replace(":", "-") + f".{suffix}"


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _write(layout: Path, tag: str, layers: list[tuple[str, bytes, dict[str, str]]]) -> str:
    """An OCI layout holding one manifest of `layers` (media type, payload, annotations)
    under `tag`, with the config cosign writes; returns the manifest's digest."""
    descriptors = [
        {"mediaType": media_type, **_blob(layout, payload), "annotations": annotations}
        for media_type, payload, annotations in layers
    ]
    config = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": [d["digest"] for d in descriptors],
        },
        "config": {},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_blob(layout, json.dumps(config).encode())},
        "layers": descriptors,
    }
    body = json.dumps(manifest).encode()
    found = _blob(layout, body)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
    ] + [{"mediaType": OCI_MANIFEST, **found, "annotations": {REF_NAME: tag}}]
    index_path.write_text(json.dumps(index))
    return str(found["digest"])


def build_signature(layout: Path, tag: str, reference: str, digest: str) -> str:
    """A cosign signature of the image `digest` (pulled as `reference`), tagged `tag` in the
    layout; returns the signature manifest's digest."""
    payload = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    signature = base64.b64encode(hashlib.sha256(digest.encode()).digest()).decode()
    annotations = {"dev.cosignproject.cosign/signature": signature}
    return _write(layout, tag, [(SIMPLESIGNING, json.dumps(payload).encode(), annotations)])


def build_attestation(layout: Path, tag: str, digest: str) -> str:
    """A cosign attestation (an in-toto SLSA provenance statement in a DSSE envelope) of the
    image `digest`, tagged `tag` in the layout; returns its manifest's digest."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "image", "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicate": {"builder": {"id": "https://example.test/registry-gateway-tests"}},
    }
    envelope = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(b"not a signature").decode()}],
    }
    annotations = {"predicateType": "https://slsa.dev/provenance/v0.2"}
    return _write(layout, tag, [(DSSE, json.dumps(envelope).encode(), annotations)])
