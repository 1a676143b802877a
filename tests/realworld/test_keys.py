"""The key store shared by processes: several gateways starting at once create one key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.auth.keys import KeyStore


def kids(store: KeyStore) -> list[str]:
    """Key IDs in the store's order."""
    return [key.kid for key in store.keys()]


def test_concurrent_ensure_in_several_processes_creates_one_key(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from gateway.auth.keys import KeyStore;"
        "print(KeyStore(Path(sys.argv[1])).ensure().kid)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(6)
    ]
    printed = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(printed) == 1
    assert kids(KeyStore(tmp_path)) == list(printed)
