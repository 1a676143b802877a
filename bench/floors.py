"""The two floors bench/token_endpoint.py measures the gateway against: one tiny Starlette app.

- `GET /bare`: a fixed small JSON answer: what Starlette on uvicorn costs with no work at all.
- `GET /sign?service=S&scope=type:name:actions` with HTTP Basic: parses the credentials and the
  one scope, signs an ES256 JWT with PyJWT carrying the same claims and header (`kid` and `x5c`)
  as a gateway access token, and answers in the token endpoint's format. It checks no password
  and decides nothing: what signing a token costs a Starlette route done the usual way (the
  issue names PyJWT). The gateway itself signs with `cryptography` directly, from a raw ASGI
  endpoint on its `token` route, so a token it signs can cost less than this.
- `GET /healthz`: for the benchmark to know the server is up.

Serve it as the benchmark does (same settings as `registry-gateway serve`):

    taskset -c 0 .venv/bin/python -m uvicorn bench.floors:app --port 5099 \\
        --loop asyncio --http httptools --no-access-log --no-server-header --workers 1
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TTL = 300
ISSUER = "registry-gateway"


def _key_and_header() -> tuple[ec.EllipticCurvePrivateKey, dict[str, object]]:
    """A fresh P-256 key, and a JOSE header as big as the gateway's (kid and one x5c cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    kid = ":".join(
        base64.b32encode(secrets.token_bytes(30)).decode().rstrip("=")[i : i + 4]
        for i in range(0, 48, 4)
    )
    return key, {"typ": "JWT", "kid": kid, "x5c": [base64.b64encode(der).decode()]}


KEY, HEADER = _key_and_header()
BARE = {"status": "ok", "floor": "bare"}


async def bare(request: Request) -> JSONResponse:
    return JSONResponse(BARE)


async def sign(request: Request) -> JSONResponse:
    params = request.query_params
    service = params.get("service", "")
    subject = ""
    header = request.headers.get("authorization")
    if header:
        _scheme, _, value = header.partition(" ")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return JSONResponse({"error": "malformed credentials"}, status_code=401)
        subject, _, _password = decoded.partition(":")
    scope = params.get("scope", "")
    type_, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": service,
        "exp": now + TTL,
        "nbf": now,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "access": [{"type": type_, "name": name, "actions": actions.split(",")}],
    }
    token = jwt.encode(claims, KEY, algorithm="ES256", headers=HEADER)
    issued = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return JSONResponse(
        {"token": token, "access_token": token, "expires_in": TTL, "issued_at": issued}
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/bare", bare),
        Route("/sign", sign),
        Route("/healthz", healthz),
    ]
)
