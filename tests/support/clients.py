"""Run real registry clients (skopeo, podman, the Docker CLI), each shut inside a temp dir.

Every call returns the `subprocess.CompletedProcess` (text, captured) whatever the exit code, so
that tests can assert on refusals; `ok(proc)` asserts success and shows the output otherwise.
A command that outlives its timeout is killed and reported with exit code 124.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .binaries import require

DEFAULT_TIMEOUT = 60.0
TIMEOUT_EXIT = 124
TRANSPORTS = ("docker://", "oci:", "oci-archive:", "dir:", "docker-archive:", "containers-storage:")
REGISTRIES_CONF = 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
POLICY_JSON = '{"default": [{"type": "insecureAcceptAnything"}]}\n'

CompletedProcess = subprocess.CompletedProcess[str]


def ok(proc: CompletedProcess) -> CompletedProcess:
    """Return `proc` if it exited 0, else fail the test with its command, stdout and stderr."""
    if proc.returncode != 0:
        command = shlex.join(str(arg) for arg in proc.args)
        pytest.fail(
            f"exit code {proc.returncode}: {command}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _docker_ref(ref: str) -> str:
    """`ref` with a transport: `docker://` unless it already names one."""
    return ref if ref.startswith(TRANSPORTS) else f"docker://{ref}"


class _Client:
    """A home directory with private XDG dirs, auth file and TMPDIR, and a way to run in it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        for name in ("config", "data", "cache", "tmp"):
            (home / name).mkdir(parents=True, exist_ok=True)
        (home / "run").mkdir(mode=0o700, exist_ok=True)
        self.auth_file = home / "auth.json"
        if not self.auth_file.exists():
            # podman 4.3 fails on a REGISTRY_AUTH_FILE that does not exist yet.
            self.auth_file.write_text('{"auths": {}}\n')
        self.registries_conf = home / "registries.conf"
        self.registries_conf.write_text(REGISTRIES_CONF)
        # A minimal environment: nothing of the caller's (proxies, DOCKER_HOST, XDG_*) leaks in.
        self.env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "TMPDIR": str(home / "tmp"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
        }

    def _run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        shown: Sequence[str] | None = None,
    ) -> CompletedProcess:
        """Run `argv`; the result's `args` is `shown` (the command as a person would type it)."""
        args = list(shown if shown is not None else argv)
        try:
            proc = subprocess.run(
                list(argv),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                cwd=self.home,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            note = f"\n[harness] killed after {timeout:.0f}s: {shlex.join(args)}"
            return subprocess.CompletedProcess(
                args, TIMEOUT_EXIT, _text(expired.stdout), _text(expired.stderr) + note
            )
        return subprocess.CompletedProcess(args, proc.returncode, proc.stdout, proc.stderr)


class _ContainersClient(_Client):
    """What skopeo and podman share: the containers/image login commands."""

    def command(self, *args: str, input: str | None = None) -> CompletedProcess:
        raise NotImplementedError

    def login(self, host: str, user: str, password: str) -> CompletedProcess:
        """`login`, password on stdin; credentials land in this client's auth file."""
        return self.command(
            "login",
            "--tls-verify=false",
            "--username",
            user,
            "--password-stdin",
            host,
            input=password,
        )

    def logout(self, host: str) -> CompletedProcess:
        return self.command("logout", host)


class Skopeo(_ContainersClient):
    """skopeo 1.9 as a rootless user would run it: caches and auth stay under `home`."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.binary = require("skopeo", "skopeo")
        # As root skopeo writes its blob-info cache to /var/lib/containers/cache; as "rootless"
        # it uses XDG_DATA_HOME instead.
        self.env["_CONTAINERS_ROOTLESS_UID"] = "65534"

    def command(self, *args: str, input: str | None = None) -> CompletedProcess:
        """Run `skopeo ARGS` (global flags first)."""
        return self._run([self.binary, *args], input=input)

    @staticmethod
    def _creds(flag: str, creds: str | None) -> list[str]:
        return [f"{flag}={creds}"] if creds is not None else []

    def copy(
        self,
        src: str,
        dst: str,
        *,
        creds: str | None = None,
        src_creds: str | None = None,
        dest_creds: str | None = None,
        all_platforms: bool = False,
        extra: Sequence[str] = (),
    ) -> CompletedProcess:
        """`skopeo copy SRC DST` over plain HTTP; `creds` (USER:PASS) serves each docker:// side."""
        if creds is not None:
            if src_creds is None and src.startswith("docker://"):
                src_creds = creds
            if dest_creds is None and dst.startswith("docker://"):
                dest_creds = creds
        return self.command(
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *self._creds("--src-creds", src_creds),
            *self._creds("--dest-creds", dest_creds),
            *(["--all"] if all_platforms else []),
            *extra,
            src,
            dst,
        )

    def delete(self, ref: str, *, creds: str | None = None) -> CompletedProcess:
        """`skopeo delete` a manifest (by tag or digest)."""
        return self.command(
            "delete", "--tls-verify=false", *self._creds("--creds", creds), _docker_ref(ref)
        )

    def inspect(self, ref: str, *, creds: str | None = None, raw: bool = False) -> CompletedProcess:
        """`skopeo inspect` (`raw`: the manifest bytes as the registry serves them)."""
        return self.command(
            "inspect",
            "--tls-verify=false",
            *self._creds("--creds", creds),
            *(["--raw"] if raw else []),
            _docker_ref(ref),
        )

    def list_tags(self, ref: str, *, creds: str | None = None) -> CompletedProcess:
        """`skopeo list-tags` of a repository (`host/name`)."""
        return self.command(
            "list-tags", "--tls-verify=false", *self._creds("--creds", creds), _docker_ref(ref)
        )


class Podman(_ContainersClient):
    """podman 4.3 (vfs storage) run as root inside its own mount namespace.

    Even with --root/--runroot, rootful podman writes to /etc/containers, /etc/cni,
    /var/lib/containers and /run/containers. Each command runs under `unshare -m` with a
    directory of `home/system/` bind-mounted over each of those; one that does not exist on the
    machine gets its parent overlaid (upper layer in `home/overlay/`) so that its mount point
    can be made without touching the real file system. State persists between commands.
    """

    SYSTEM_DIRS = ("/etc/containers", "/etc/cni", "/var/lib/containers", "/run/containers")

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.binary = require("podman", "podman")
        self.unshare = require("unshare", "util-linux")
        etc_containers = self.system_dir("/etc/containers")
        for target in self.SYSTEM_DIRS:
            self.system_dir(target).mkdir(parents=True, exist_ok=True)
        (etc_containers / "registries.conf").write_text(REGISTRIES_CONF)
        (etc_containers / "policy.json").write_text(POLICY_JSON)
        # mount(8) would otherwise create /run/mount for its utab before the overlay is in place.
        self.env["LIBMOUNT_UTAB"] = str(home / "utab")
        self.global_flags = [
            f"--root={home / 'storage'}",
            # podman refuses a runroot longer than 50 characters; this one is the private mount.
            "--runroot=/run/containers/storage",
            f"--tmpdir={home / 'libpod'}",
            "--storage-driver=vfs",
            "--events-backend=none",
            "--cgroup-manager=cgroupfs",
        ]

    def system_dir(self, target: str) -> Path:
        """Where this client's private copy of a system directory such as /etc/cni lives."""
        return self.home / "system" / target.strip("/")

    def _mount_script(self) -> str:
        lines = ["set -eu"]
        overlaid: set[Path] = set()
        for target in self.SYSTEM_DIRS:
            path = Path(target)
            if not path.is_dir():
                parent = next(p for p in path.parents if p.is_dir())
                if parent == Path("/"):
                    raise RuntimeError(f"refusing to overlay / to create {target}")
                if parent not in overlaid:
                    layer = self.home / "overlay" / str(parent).strip("/").replace("/", "-")
                    (layer / "upper").mkdir(parents=True, exist_ok=True)
                    (layer / "work").mkdir(parents=True, exist_ok=True)
                    options = (
                        f"lowerdir={parent},upperdir={layer / 'upper'},workdir={layer / 'work'}"
                    )
                    lines.append(f"mount -t overlay overlay -o {shlex.quote(options)} {parent}")
                    overlaid.add(parent)
                lines.append(f"mkdir -p {shlex.quote(target)}")
            source = shlex.quote(str(self.system_dir(target)))
            lines.append(f"mount --bind {source} {shlex.quote(target)}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    def command(
        self, *args: str, input: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> CompletedProcess:
        """Run `podman GLOBAL_FLAGS ARGS` in a private mount namespace."""
        podman = [self.binary, *self.global_flags, *args]
        argv = [self.unshare, "--mount", "--propagation", "private", "sh", "-c",
                self._mount_script(), "podman", *podman]  # fmt: skip
        return self._run(argv, input=input, timeout=timeout, shown=["podman", *args])

    def pull(self, ref: str, *, creds: str | None = None) -> CompletedProcess:
        """`podman pull` over plain HTTP; `ref` may also be `oci:DIR:TAG` (no network)."""
        creds_flag = [f"--creds={creds}"] if creds is not None else []
        return self.command("pull", "--tls-verify=false", *creds_flag, ref)

    def push(self, local_ref: str, dest_ref: str, *, creds: str | None = None) -> CompletedProcess:
        """`podman push LOCAL DEST` over plain HTTP."""
        creds_flag = [f"--creds={creds}"] if creds is not None else []
        return self.command("push", "--tls-verify=false", *creds_flag, local_ref, dest_ref)

    def tag(self, src: str, dst: str) -> CompletedProcess:
        """`podman tag SRC DST`."""
        return self.command("tag", src, dst)

    def images(self) -> CompletedProcess:
        """`podman images --format json`."""
        return self.command("images", "--format", "json")

    def load_layout(self, layout_dir: Path, tag: str, name: str) -> CompletedProcess:
        """Put the layout's image `tag` into local storage as `name` (pull oci:, then tag).

        podman names an image pulled from `oci:DIR:TAG` after DIR and ignores TAG, hence the tag.
        """
        pulled = self.pull(f"oci:{layout_dir}:{tag}")
        if pulled.returncode != 0:
            return pulled
        image_id = pulled.stdout.strip().splitlines()[-1]
        return self.tag(image_id, name)


class DockerCLI(_Client):
    """The Docker CLI without an engine: `login`, `logout` and `manifest inspect` work."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.binary = require("docker", "docker.io")
        self.config_dir = home / "docker"
        self.config_dir.mkdir(exist_ok=True)
        self.env["DOCKER_CONFIG"] = str(self.config_dir)
        # Never talk to an engine that may run on a developer's machine.
        self.env["DOCKER_HOST"] = f"unix://{home / 'no-engine.sock'}"

    def command(self, *args: str, input: str | None = None) -> CompletedProcess:
        """Run `docker ARGS`."""
        return self._run([self.binary, *args], input=input)

    def login(self, host: str, user: str, password: str) -> CompletedProcess:
        """`docker login`, password on stdin (127.0.0.1 is an insecure registry by default)."""
        return self.command("login", "--username", user, "--password-stdin", host, input=password)

    def logout(self, host: str) -> CompletedProcess:
        """`docker logout`."""
        return self.command("logout", host)

    def manifest_inspect(self, ref: str, *, verbose: bool = False) -> CompletedProcess:
        """`docker manifest inspect --insecure` (`verbose`: with digests and platforms)."""
        return self.command("manifest", "inspect", "--insecure", *(["-v"] if verbose else []), ref)

    def config(self) -> dict[str, Any]:
        """The CLI's config.json (`auths` holds `auth` or, after a token login, `identitytoken`)."""
        path = self.config_dir / "config.json"
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data
