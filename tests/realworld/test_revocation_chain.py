"""Revocation, the whole chain: every kind of credential, removed the way an operator removes
it, is refused by every worker within the stated bound.

For each way of changing the policy (a commit pushed to the branch the gateway follows, the
file edited in place, a `current` symlink swapped to a new checkout the way git-sync
publishes one, the directory replaced by a rename) and for one and two workers, one change
removes at once: a policy user with a password, a robot, a personal access token, a user
whose refresh token was issued before, a user signed in to the UI, and (through its own file,
changed the same way) an htpasswd user. A member of an LDAP group that a team maps is removed
from the group in the real slapd (once per worker count: that change is the directory's).
Each credential is asked about again every 0.1 s, on a new connection each time (so both
workers answer), until it has been refused 15 times in a row and past its bound; its
revocation time is the first refusal of that final run. Before the change every credential
was used several times, so replayed answers, remembered sign-ins and cached tokens are all
in play. After it, a second change must be followed too (the watch moved with the directory).

The measured times are printed as a table (`pytest -s`); docs/security.md states the bounds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest

from gateway.auth.credentials import ROBOT_PREFIX, TOKEN_PREFIX, new_secret, sha256_hex

from tests.support.catalog import csrf_of
from tests.support.gateway import SERVICE, Gateway, jwt_parts, start_gateway
from tests.support.gitrepo import git
from tests.support.ldap import PASSWORDS as LDAP_PASSWORDS
from tests.support.ldap import SERVICE_DN, SERVICE_PASSWORD, SUFFIX, Slapd, start_slapd

POLL = 1.0  # --poll-interval of the git runs, seconds
CACHE_TTL = 1.5  # --auth-cache-ttl: how long a directory (LDAP) answer may stand
FILE_BOUND = 2.0  # a file change (policy or htpasswd) is in force within this
BOUNDS = {"git": 2 * POLL + FILE_BOUND, "ldap": CACHE_TTL + FILE_BOUND}  # see docs/security.md
REFUSED_IN_A_ROW = 15
COOKIE = "rg_session"
PUSH = "repository:chain/app:pull,push"
LDAP_PUSH = "repository:devs/app:pull,push"
LARA_GROUP = "platform-devs"


def bcrypt4(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


@dataclass
class Secrets:
    passwords: dict[str, str]
    robot: str
    token: str

    @classmethod
    def make(cls) -> Secrets:
        names = ("uma", "rena", "sia", "hana")
        return cls(
            {name: f"{name}-chain-password" for name in names},
            new_secret(ROBOT_PREFIX),
            new_secret(TOKEN_PREFIX),
        )


def chain_policy(secrets: Secrets, *, revoked: bool) -> str:
    """The policy before (revoked=False) and after the operator's change."""
    password = {name: bcrypt4(value) for name, value in secrets.passwords.items()}
    users = "  tess: {}\n  hana: {}\n" if revoked else (
        f'  uma:\n    password: "{password["uma"]}"\n'
        f'  rena:\n    password: "{password["rena"]}"\n'
        f'  sia:\n    password: "{password["sia"]}"\n'
        "  tess:\n    tokens:\n      laptop:\n"
        f'        token_sha256: "{sha256_hex(secrets.token)}"\n'
        "  hana: {}\n"
    )  # fmt: skip
    robots = (
        "" if revoked else f'robots:\n  rob:\n    token_sha256: "{sha256_hex(secrets.robot)}"\n'
    )
    members = "[tess, hana]" if revoked else "[uma, rena, sia, tess, hana, robot:rob]"
    return f"""\
users:
{users}{robots}
teams:
  chain:
    contributors: {members}
  devs:
    ldap_groups:
      - group: "cn={LARA_GROUP},ou=groups,{SUFFIX}"
        role: contributor
namespaces:
  chain:
    teams: [chain]
  devs:
    teams: [devs]
"""


def htpasswd_text(secrets: Secrets, *, revoked: bool) -> str:
    return "" if revoked else f"hana:{bcrypt4(secrets.passwords['hana'])}\n"


# -- how the operator changes things ---------------------------------------------------------


class Layout:
    """Where the gateway reads the policy and the htpasswd file, and how they change."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def args(self) -> list[str]:
        raise NotImplementedError

    def publish(self, policy: str, htpasswd: str) -> None:
        raise NotImplementedError


class EditInPlace(Layout):
    """`vim chain.yaml`: the same files, rewritten."""

    name = "edit in place"

    def args(self) -> list[str]:
        return ["--policies", str(self.root / "policies"), "--htpasswd", str(self.htpasswd)]

    @property
    def htpasswd(self) -> Path:
        return self.root / "auth" / "htpasswd"

    def publish(self, policy: str, htpasswd: str) -> None:
        for path, text in (
            (self.root / "policies" / "chain.yaml", policy),
            (self.htpasswd, htpasswd),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as file:  # truncate and write: the same inode
                file.write(text)


class SymlinkSwap(Layout):
    """git-sync's `current -> rev-N` link renamed to a new checkout, and a Secret volume
    (`htpasswd -> ..data/htpasswd`, `..data` renamed) for the htpasswd file."""

    name = "symlink swap"
    version = 0

    def args(self) -> list[str]:
        return [
            "--policies", str(self.root / "git" / "current" / "policies"),
            "--htpasswd", str(self.root / "secret" / "htpasswd"),
        ]  # fmt: skip

    def publish(self, policy: str, htpasswd: str) -> None:
        self.version += 1
        checkout = self.root / "git" / f"rev-{self.version}" / "policies"
        checkout.mkdir(parents=True)
        (checkout / "chain.yaml").write_text(policy)
        swap(self.root / "git" / "current", checkout.parent.name)
        secret = self.root / "secret"
        data = secret / f"..2026_12_02_{self.version}"
        data.mkdir(parents=True)
        (data / "htpasswd").write_text(htpasswd)
        swap(secret / "..data", data.name)
        if not (secret / "htpasswd").is_symlink():
            (secret / "htpasswd").symlink_to("..data/htpasswd")


def swap(link: Path, target: str) -> None:
    """Point `link` at `target` atomically: a new link, then a rename over the old one."""
    temporary = link.with_name(link.name + ".tmp")
    temporary.symlink_to(target)
    os.replace(temporary, link)


class DirectoryChange(Layout):
    """A deploy script that builds the new policy beside the old and renames it into place;
    the htpasswd file written beside and renamed over the old one."""

    name = "directory change"
    version = 0

    def args(self) -> list[str]:
        return [
            "--policies", str(self.root / "policies"),
            "--htpasswd", str(self.root / "auth" / "htpasswd"),
        ]  # fmt: skip

    def publish(self, policy: str, htpasswd: str) -> None:
        self.version += 1
        new = self.root / f"policies.{self.version}"
        new.mkdir(parents=True)
        (new / "chain.yaml").write_text(policy)
        live = self.root / "policies"
        if live.exists():
            live.rename(self.root / f"policies.old.{self.version}")
        new.rename(live)
        auth = self.root / "auth"
        auth.mkdir(exist_ok=True)
        (auth / "htpasswd.new").write_text(htpasswd)
        os.replace(auth / "htpasswd.new", auth / "htpasswd")


class CommitAndPush(Layout):
    """A pull request merged: a commit pushed to the branch the gateway follows. The htpasswd
    file is not in git: it is replaced by a rename."""

    name = "commit and push"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bare = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True)
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    def args(self) -> list[str]:
        return [
            "--policy-git", f"file://{self.bare}",
            "--policy-branch", "main",
            "--policy-path", "policies",
            "--poll-interval", f"{POLL}s",
            "--htpasswd", str(self.root / "auth" / "htpasswd"),
        ]  # fmt: skip

    def publish(self, policy: str, htpasswd: str) -> None:
        path = self.work / "policies" / "chain.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(policy)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-qm", "chain policy")
        git(self.work, "push", "-q", "origin", "main")
        auth = self.root / "auth"
        auth.mkdir(exist_ok=True)
        (auth / "htpasswd.new").write_text(htpasswd)
        os.replace(auth / "htpasswd.new", auth / "htpasswd")


LAYOUTS: dict[str, type[Layout]] = {
    "edit": EditInPlace,
    "swap": SymlinkSwap,
    "dirchange": DirectoryChange,
    "git": CommitAndPush,
}


# -- the credentials, asked again and again ---------------------------------------------------


def token_actions(gateway: Gateway, user: str, password: str, scope: str) -> list[str] | None:
    """The actions granted on the scope's repository, or None when the sign-in is refused."""
    answer = httpx.get(
        f"{gateway.url}/auth/token",
        params={"service": SERVICE, "scope": scope},
        auth=(user, password),
        timeout=30,
    )
    if answer.status_code == 401:
        return None
    assert answer.status_code == 200, answer.text
    access = jwt_parts(answer.json()["token"])[1]["access"]
    return sorted(access[0]["actions"]) if access else []


def refresh_token_of(gateway: Gateway, user: str, password: str) -> str:
    answer = httpx.get(
        f"{gateway.url}/auth/token",
        params={"service": SERVICE, "scope": PUSH, "offline_token": "true", "client_id": "chain"},
        auth=(user, password),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["refresh_token"]
    return token


def refreshed_actions(gateway: Gateway, refresh_token: str) -> list[str] | None:
    answer = httpx.post(
        f"{gateway.url}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": SERVICE,
            "client_id": "chain",
            "scope": PUSH,
        },
        timeout=30,
    )
    if answer.status_code == 401:
        return None
    assert answer.status_code == 200, answer.text
    access = jwt_parts(answer.json()["access_token"])[1]["access"]
    return sorted(access[0]["actions"]) if access else []


def ui_session(gateway: Gateway, user: str, password: str) -> str:
    with httpx.Client(base_url=gateway.url, follow_redirects=False, timeout=30) as client:
        form = client.get("/-/login")
        data = {"username": user, "password": password, "csrf": csrf_of(form.text)}
        assert client.post("/-/login", data=data).status_code == 303
        return client.cookies[COOKIE]


def ui_signed_in(gateway: Gateway, cookie: str) -> bool:
    page = httpx.get(
        f"{gateway.url}/?format=json", headers={"Cookie": f"{COOKIE}={cookie}"}, timeout=30
    )
    assert page.status_code == 200, page.text
    return bool(page.json()["viewer"]["signed_in"])


Check = Callable[[], bool]  # True while the credential still has its rights


def checks(gateway: Gateway, secrets: Secrets) -> dict[str, Check]:
    pw = secrets.passwords
    refresh = refresh_token_of(gateway, "rena", pw["rena"])
    cookie = ui_session(gateway, "sia", pw["sia"])
    lara = LDAP_PASSWORDS["lara"]
    return {
        "policy user (password)": lambda: (
            token_actions(gateway, "uma", pw["uma"], PUSH) is not None
        ),
        "robot": lambda: token_actions(gateway, "rob", secrets.robot, PUSH) is not None,
        "personal access token": lambda: (
            token_actions(gateway, "tess", secrets.token, PUSH) is not None
        ),
        "refresh token": lambda: refreshed_actions(gateway, refresh) is not None,
        "UI session": lambda: ui_signed_in(gateway, cookie),
        "htpasswd user": lambda: token_actions(gateway, "hana", pw["hana"], PUSH) is not None,
        "LDAP group member": lambda: (
            "push" in (token_actions(gateway, "lara", lara, LDAP_PUSH) or [])
        ),
    }


def revocation_time(check: Check, since: float, bound: float) -> float:
    """Seconds from `since` to the first refusal of a final run of REFUSED_IN_A_ROW refusals;
    fails when the credential is granted again `bound` + 5 s after the change."""
    first_refusal: float | None = None
    in_a_row = 0
    # A run of refusals that lasts past the bound too: with two workers, one that still had
    # the credential cached would have answered one of them.
    while in_a_row < REFUSED_IN_A_ROW or time.monotonic() < since + bound + 1:
        asked = time.monotonic()
        if check():
            assert asked < since + bound + 5, (
                f"still granted {asked - since:.1f} s after the change"
            )
            first_refusal, in_a_row = None, 0
        else:
            first_refusal = first_refusal or asked
            in_a_row += 1
        time.sleep(0.1)
    assert first_refusal is not None
    return first_refusal - since


def measure_all(
    gateway: Gateway, checks: dict[str, Check], changed: float, bound: float
) -> dict[str, float]:
    """The revocation time of each credential, asked in parallel; each within `bound`."""
    times: dict[str, float] = {}
    errors: dict[str, BaseException] = {}

    def measure(kind: str, check: Check) -> None:
        try:
            times[kind] = revocation_time(check, changed, bound)
        except BaseException as exc:  # reported below, with the kind
            errors[kind] = exc

    threads = [threading.Thread(target=measure, args=item) for item in checks.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(*[line for line in gateway.logs().splitlines() if '"path":' not in line][-20:])
    assert not errors, {kind: str(exc).splitlines()[0] for kind, exc in errors.items()}
    late = {kind: seconds for kind, seconds in times.items() if seconds > bound}
    assert not late, f"refused later than the bound of {bound} s: {late}"
    return times


# -- the runs ---------------------------------------------------------------------------------

RESULTS: dict[tuple[str, int], dict[str, float]] = {}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("chain-ldap"))
    yield server
    server.stop()
    print_table()


def print_table() -> None:
    if not RESULTS:
        return
    runs = sorted(RESULTS)
    seen = {kind for times in RESULTS.values() for kind in times}
    kinds = sorted(seen, key=lambda kind: kind.startswith("LDAP"))  # the directory's row last
    header = "| credential | " + " | ".join(f"{m}, {w} worker{'s' * (w > 1)}" for m, w in runs)
    print("\n\nRevocation time, seconds from the change to the first of 15 refusals in a row:\n")
    print(header + " |")
    print("|---" * (len(runs) + 1) + "|")
    for kind in kinds:
        cells = [f"{RESULTS[run][kind]:.2f}" if kind in RESULTS[run] else "" for run in runs]
        print(f"| {kind} | " + " | ".join(cells) + " |")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("method", list(LAYOUTS))
def test_every_credential_is_refused_within_its_bound(
    tmp_path: Path, slapd: Slapd, method: str, workers: int
) -> None:
    secrets = Secrets.make()
    layout = LAYOUTS[method](tmp_path / "source")
    layout.publish(chain_policy(secrets, revoked=False), htpasswd_text(secrets, revoked=False))
    gateway = start_gateway(
        tmp_path / "gw",
        args=[
            *layout.args(),  # after start_gateway's own --policies: these say where it is
            "--workers", str(workers),
            "--auth-cache-ttl", f"{CACHE_TTL}s",
            "--ldap-url", slapd.url,
            "--ldap-bind-dn", SERVICE_DN,
            "--ldap-user-base", f"ou=people,{SUFFIX}",
            "--ldap-group-base", f"ou=groups,{SUFFIX}",
            "--lockout-failures", "100000",
            "--lockout-address-failures", "100000",
            "--drain-seconds", "0",
        ],
        env={"REGISTRY_GATEWAY_LDAP_BIND_PASSWORD": SERVICE_PASSWORD},
    )  # fmt: skip
    try:
        credentials = checks(gateway, secrets)
        for _ in range(4):  # warm every cache: replays, remembered sign-ins, tokens
            for kind, check in credentials.items():
                assert check(), f"{kind} has no access before the change"
        ldap = {kind: check for kind, check in credentials.items() if kind.startswith("LDAP")}
        files = {kind: check for kind, check in credentials.items() if kind not in ldap}
        times: dict[str, float] = {}
        if method == "edit":  # the directory's change is the same whatever the policy's way
            # First the directory alone (so that no file reload clears its cached answer
            # early), then one change to the policy and the htpasswd file.
            changed = time.monotonic()
            slapd.remove_member(LARA_GROUP, "lara")
            times |= measure_all(gateway, ldap, changed, BOUNDS["ldap"])
        revoked = chain_policy(secrets, revoked=True), htpasswd_text(secrets, revoked=True)
        changed = time.monotonic()
        layout.publish(*revoked)
        times |= measure_all(gateway, files, changed, BOUNDS.get(method, FILE_BOUND))
        RESULTS[(LAYOUTS[method].name, workers)] = times
        # tess keeps her place in the policy; only her token went.
        assert token_actions(gateway, "tess", secrets.token, PUSH) is None
        # The watch moved with the directory: the next change is followed too.
        layout.publish(chain_policy(secrets, revoked=False), htpasswd_text(secrets, revoked=False))
        deadline = time.monotonic() + BOUNDS.get(method, FILE_BOUND) + 5
        while not credentials["policy user (password)"]():
            assert time.monotonic() < deadline, "a change after the first one was not followed"
            time.sleep(0.1)
    finally:
        gateway.stop()
        if LARA_GROUP not in slapd.member_of("lara"):
            slapd.add_member(LARA_GROUP, "lara")  # for the next run
