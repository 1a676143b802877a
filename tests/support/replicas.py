"""Several gateway replicas on loopback that share their signing keys, as in docs/deploy.md.

Each replica has its own root (audit log, server log, its own clone of the policy remote under
its data dir); only the key files are the same, copied from one key store before any replica
starts, as a Kubernetes Secret or a shared volume would give them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .gateway import EXAMPLE_POLICIES, ISSUER, REPO, Gateway
from .registry import free_port


def make_keys(data_dir: Path, bundle: Path, *, issuer: str = ISSUER) -> Path:
    """Create a key store with one signing key; write its bundle; return the keys dir."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "bundle", "--data-dir", str(data_dir),
         "--issuer", issuer, "-o", str(bundle)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return data_dir / "keys"


def start_replicas(
    root: Path,
    count: int,
    *,
    keys: Path,
    args: list[str],
    env: dict[str, str] | None = None,
) -> list[Gateway]:
    """Start `count` replicas under root/replica-N with copies of `keys`, in parallel."""
    replicas = []
    for n in range(1, count + 1):
        replica_root = root / f"replica-{n}"
        (replica_root / "data").mkdir(parents=True, exist_ok=True)
        shutil.copytree(keys, replica_root / "data" / "keys")
        # --policies is required by the harness's command line; with --policy-git it is unused.
        shutil.copytree(EXAMPLE_POLICIES, replica_root / "policies")
        replicas.append(
            Gateway(replica_root, replica_root / "policies", free_port(), None, env=env or {},
                    args=list(args))
        )  # fmt: skip
    errors: list[BaseException] = []

    def start(gateway: Gateway) -> None:
        try:
            gateway.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(g,)) for g in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for gateway in replicas:
            gateway.stop()
        raise errors[0]
    return replicas
