"""OpenID issuers for the tests.

- `CiIssuer`: a stand-in for GitHub Actions' and GitLab CI's token issuers, which cannot be
  reached from here. It serves a discovery document and a JWKS (over real HTTP on loopback
  with `serve()`, or through an httpx transport for fast tests) and mints ID tokens with
  their claim sets, signed by its keys (RS256 and ES256), or by a key it does not publish,
  or with `alg: none`. The gateway verifies them as any issuer's.
- `start_provider`: a real, certified OpenID provider (the npm package `oidc-provider`, run
  by Node with tests/support/oidc_provider.mjs) with a confidential client, users with
  groups and its interactive login page, for the people's sign-in.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

GITHUB_OWNER_ID = "1342004"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, kid: str, alg: str = "RS256") -> SigningKey:
        if alg == "RS256":
            return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(kid, alg, ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            text = RSAAlgorithm.to_jwk(self.private.public_key())
        else:
            text = ECAlgorithm.to_jwk(self.private.public_key())
        data: dict[str, Any] = json.loads(text)
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data


@dataclass
class CiIssuer:
    """A CI system's token issuer (see the module's text)."""

    url: str = "http://127.0.0.1:0"
    keys: list[SigningKey] = field(
        default_factory=lambda: [SigningKey.make("ci-rsa-1"), SigningKey.make("ci-ec-1", "ES256")]
    )
    jwks_fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what it publishes -----------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/.well-known/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def answer(self, path: str) -> tuple[int, bytes]:
        if path == "/.well-known/openid-configuration":
            return 200, json.dumps(self.discovery()).encode()
        if path == "/.well-known/jwks":
            with self._lock:
                self.jwks_fetches += 1
            return 200, json.dumps(self.jwks()).encode()
        return 404, b"{}"

    def transport(self) -> httpx.MockTransport:
        """The issuer as an httpx transport (fast tests: no socket)."""

        def handle(request: httpx.Request) -> httpx.Response:
            status, body = self.answer(request.url.path)
            return httpx.Response(status, content=body)

        return httpx.MockTransport(handle)

    @contextmanager
    def serve(self) -> Iterator[CiIssuer]:
        """Serve discovery and JWKS on 127.0.0.1 over real HTTP while inside."""
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = issuer.answer(self.path)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()

    # -- tokens ----------------------------------------------------------------------------

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
        lifetime: int = 300,
        issued: float | None = None,
    ) -> str:
        """An ID token with these claims (and iss, iat, nbf, exp), signed by `key`."""
        key = key or self.keys[0]
        now = int(issued if issued is not None else time.time())
        payload = {"iss": self.url, "iat": now, "nbf": now - 5, "exp": now + lifetime, **claims}
        return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def unsigned(self, claims: Mapping[str, Any]) -> str:
        """The same claims with `alg: none` and no signature (must be refused)."""
        now = int(time.time())
        payload = {"iss": self.url, "iat": now, "exp": now + 300, **claims}

        def part(value: Mapping[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': self.keys[0].kid})}.{part(payload)}."


def github_claims(
    repository: str = "acme/app",
    repository_id: str = "892374001",
    *,
    ref: str = "refs/heads/main",
    aud: str = "registry.example.com",
    environment: str | None = None,
    workflow: str = "release.yml",
) -> dict[str, Any]:
    """The claims GitHub Actions puts in a job's ID token (the ones that matter here)."""
    owner = repository.split("/")[0]
    claims: dict[str, Any] = {
        "sub": f"repo:{repository}:ref:{ref}",
        "aud": aud,
        "ref": ref,
        "ref_type": "branch" if ref.startswith("refs/heads/") else "tag",
        "repository": repository,
        "repository_id": repository_id,
        "repository_owner": owner,
        "repository_owner_id": GITHUB_OWNER_ID,
        "run_id": "7001",
        "actor": "octocat",
        "workflow": "release",
        "job_workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
        "event_name": "push",
        "runner_environment": "github-hosted",
        "jti": base64.b32encode(os.urandom(10)).decode(),
    }
    if environment is not None:
        claims["environment"] = environment
        claims["sub"] = f"repo:{repository}:environment:{environment}"
    return claims


def gitlab_claims(
    project_path: str = "acme/api",
    project_id: str = "4711",
    *,
    ref: str = "main",
    protected: bool = True,
    aud: str = "registry.example.com",
) -> dict[str, Any]:
    """The claims GitLab CI puts in a job's `id_tokens:` token."""
    namespace = project_path.rsplit("/", 1)[0]
    return {
        "sub": f"project_path:{project_path}:ref_type:branch:ref:{ref}",
        "aud": aud,
        "namespace_id": "72",
        "namespace_path": namespace,
        "project_id": project_id,
        "project_path": project_path,
        "user_id": "9",
        "user_login": "dev",
        "pipeline_id": "1234",
        "pipeline_source": "push",
        "job_id": "5678",
        "ref": ref,
        "ref_type": "branch",
        "ref_path": f"refs/heads/{ref}",
        "ref_protected": "true" if protected else "false",
        "runner_environment": "gitlab-hosted",
        "jti": base64.b32encode(os.urandom(10)).decode(),
    }


# -- the people's provider: oidc-provider under Node --------------------------------------

PROVIDER_PACKAGE = ("oidc-provider", "9.13.3")
PROVIDER_SCRIPT = Path(__file__).with_name("oidc_provider.mjs")


@dataclass
class Provider:
    """A running oidc-provider; `users.json` in its directory is re-read on every lookup,
    so a test can take a user out of a group while it runs."""

    url: str
    process: subprocess.Popen[bytes]
    users_file: Path
    log_path: Path

    def set_groups(self, user: str, groups: list[str]) -> None:
        users = json.loads(self.users_file.read_text())
        users[user]["groups"] = groups
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self.users_file)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_provider(
    root: Path,
    *,
    port: int,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    users: Mapping[str, Mapping[str, Any]],
) -> Provider:
    """Start oidc-provider on 127.0.0.1:`port` (installed into .cache/npm on first use)."""
    from .binaries import require
    from .npm import npm_package

    node = require("node", "nodejs")
    package = npm_package(*PROVIDER_PACKAGE)
    root.mkdir(parents=True, exist_ok=True)
    users_file = root / "users.json"
    users_file.write_text(json.dumps(users))
    config = {
        "port": port,
        "issuer": f"http://127.0.0.1:{port}",
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uri": redirect_uri,
        "users_file": str(users_file),
        "package": str(package),
    }
    log_path = root / "provider.log"
    env = {**os.environ, "NODE_PATH": str(package.parent), "OIDC_TEST_CONFIG": json.dumps(config)}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [node, str(PROVIDER_SCRIPT)], stdout=log, stderr=log, env=env, cwd=root
        )
    provider = Provider(f"http://127.0.0.1:{port}", process, users_file, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"oidc-provider exited:\n{provider.logs()[-3000:]}")
        try:
            found = httpx.get(f"{provider.url}/.well-known/openid-configuration", timeout=1)
            if found.status_code == 200:
                return provider
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    provider.stop()
    raise RuntimeError(f"oidc-provider did not start:\n{provider.logs()[-3000:]}")
