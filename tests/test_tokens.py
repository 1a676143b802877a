import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.keys import KeyStore
from gateway.auth.tokens import IssuedToken, RefreshClaims, TokenError, TokenIssuer, rfc3339

ISSUER = "test-issuer"
SERVICE = "test-registry"
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z


class Clock:
    """A settable clock returning floats, as time.time does."""

    def __init__(self, now: float = NOW + 0.75) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keystore(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path)
    store.ensure()
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(keystore: KeyStore, clock: Clock) -> TokenIssuer:
    return TokenIssuer(keystore, issuer=ISSUER, service=SERVICE, ttl=300, clock=clock)


def raw_segment(token: str, index: int) -> dict[str, Any]:
    """A token's header (0) or payload (1) exactly as JSON-decoded, before PyJWT touches it."""
    segment = token.split(".")[index]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_access(token: str, keystore: KeyStore, at: float = NOW) -> dict[str, Any]:
    """Verify an access token as the registry would, with the x5c certificate's key."""
    (cert_b64,) = jwt.get_unverified_header(token)["x5c"]
    matches = [k for k in keystore.keys() if k.x5c() == [cert_b64]]
    assert len(matches) == 1
    key = matches[0].certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return jwt.decode(
        token,
        key,
        algorithms=["ES256", "RS256"],
        audience=SERVICE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )


def test_access_token_header(issuer: TokenIssuer, keystore: KeyStore) -> None:
    token = issuer.issue_access_token("alice", []).token
    header = raw_segment(token, 0)
    key = keystore.current()
    assert header["alg"] == "ES256"
    assert header["typ"] == "JWT"
    assert header["kid"] == key.kid
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", header["kid"])
    assert header["x5c"] == key.x5c()
    assert isinstance(header["x5c"][0], str)
    assert base64.b64decode(header["x5c"][0], validate=True)


def test_access_token_claims_have_registry_types(issuer: TokenIssuer, keystore: KeyStore) -> None:
    access = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    issued = issuer.issue_access_token("alice", access, extra_claims={"revision": "abc123"})
    raw = raw_segment(issued.token, 1)
    assert raw["iss"] == ISSUER
    assert raw["sub"] == "alice"
    assert raw["aud"] == SERVICE
    assert isinstance(raw["aud"], str)
    for claim in ("exp", "nbf", "iat"):
        assert type(raw[claim]) is int, claim
    assert raw["iat"] == raw["nbf"] == NOW
    assert raw["exp"] == NOW + 300
    assert isinstance(raw["jti"], str) and len(raw["jti"]) >= 16
    assert raw["access"] == access
    assert raw["revision"] == "abc123"
    assert decode_access(issued.token, keystore) == raw


def test_issued_token_fields(issuer: TokenIssuer) -> None:
    issued = issuer.issue_access_token("alice", [])
    assert isinstance(issued, IssuedToken)
    assert type(issued.expires_in) is int
    assert issued.expires_in == 300
    assert issued.issued_at == "2027-01-15T08:00:00Z"


def test_rfc3339_uses_utc_with_z() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rfc3339(NOW))


def test_anonymous_token_has_empty_subject_and_no_access(
    issuer: TokenIssuer, keystore: KeyStore
) -> None:
    claims = decode_access(issuer.issue_access_token("", []).token, keystore)
    assert claims["sub"] == ""
    assert claims["access"] == []


def test_catalog_access_is_carried_verbatim(issuer: TokenIssuer, keystore: KeyStore) -> None:
    access = [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    claims = decode_access(issuer.issue_access_token("admin", access).token, keystore)
    assert claims["access"] == access


def test_access_entries_are_plain_json_lists(issuer: TokenIssuer) -> None:
    access = [{"type": "repository", "name": "a", "actions": ("pull",), "ignored": 1}]
    raw = raw_segment(issuer.issue_access_token("alice", access).token, 1)
    assert raw["access"] == [{"type": "repository", "name": "a", "actions": ["pull"]}]


def test_each_access_token_has_a_fresh_jti(issuer: TokenIssuer) -> None:
    first = raw_segment(issuer.issue_access_token("alice", []).token, 1)
    second = raw_segment(issuer.issue_access_token("alice", []).token, 1)
    assert first["jti"] != second["jti"]


def test_extra_claims_cannot_override_registry_claims(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="aud"):
        issuer.issue_access_token("alice", [], extra_claims={"aud": ["x"]})
    with pytest.raises(ValueError, match="access"):
        issuer.issue_access_token("alice", [], extra_claims={"access": []})


def test_access_token_is_signed_by_the_newest_key(issuer: TokenIssuer, keystore: KeyStore) -> None:
    old = keystore.current()
    new = keystore.rotate()
    header = jwt.get_unverified_header(issuer.issue_access_token("alice", []).token)
    assert header["kid"] == new.kid != old.kid
    assert header["x5c"] == new.x5c()


def test_issuing_does_not_reload_keys(
    issuer: TokenIssuer, keystore: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer.issue_access_token("alice", [])

    def forbidden() -> None:
        raise AssertionError("reload() on the token path")

    monkeypatch.setattr(keystore, "reload", forbidden)
    for _ in range(3):
        issuer.issue_access_token("alice", [])


def test_rs256_access_token(tmp_path: Path, clock: Clock) -> None:
    store = KeyStore(tmp_path)
    store.ensure("RS256")
    issuer = TokenIssuer(store, issuer=ISSUER, service=SERVICE, clock=clock)
    token = issuer.issue_access_token("alice", []).token
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert decode_access(token, store)["sub"] == "alice"


def test_empty_keystore_cannot_issue(tmp_path: Path) -> None:
    issuer = TokenIssuer(KeyStore(tmp_path), issuer=ISSUER, service=SERVICE)
    with pytest.raises(Exception, match="no signing keys"):
        issuer.issue_access_token("alice", [])


def test_refresh_token_round_trip(issuer: TokenIssuer) -> None:
    token = issuer.issue_refresh_token("alice", "user", fingerprint="fp-1")
    assert issuer.verify_refresh_token(token) == RefreshClaims(
        subject="alice", kind="user", fingerprint="fp-1", issued_at=NOW
    )


def test_refresh_token_without_fingerprint(issuer: TokenIssuer) -> None:
    token = issuer.issue_refresh_token("ci-bot", "robot")
    claims = issuer.verify_refresh_token(token)
    assert (claims.subject, claims.kind, claims.fingerprint) == ("ci-bot", "robot", None)
    assert "fp" not in raw_segment(token, 1)


def test_refresh_token_claims(issuer: TokenIssuer) -> None:
    raw = raw_segment(issuer.issue_refresh_token("alice", "user"), 1)
    assert raw["aud"] == f"{SERVICE}/refresh"
    assert raw["typ"] == "refresh"
    assert raw["exp"] == NOW + 90 * 86400
    assert "access" not in raw
    for claim in ("exp", "iat"):
        assert type(raw[claim]) is int


def test_refresh_token_is_not_an_access_token(issuer: TokenIssuer, keystore: KeyStore) -> None:
    token = issuer.issue_refresh_token("alice", "user")
    key = keystore.current().public_key()
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience=SERVICE,
            issuer=ISSUER,
            options={"verify_exp": False, "verify_iat": False},
        )


def test_earlier_refresh_tokens_stay_valid(issuer: TokenIssuer) -> None:
    tokens = [issuer.issue_refresh_token("alice", "user") for _ in range(3)]
    assert len(set(tokens)) == 3
    for token in tokens:
        assert issuer.verify_refresh_token(token).subject == "alice"


def test_refresh_token_from_rotated_away_key_verifies(
    issuer: TokenIssuer, keystore: KeyStore
) -> None:
    token = issuer.issue_refresh_token("alice", "user")
    old_kid = keystore.current().kid
    keystore.rotate()
    keystore.rotate()
    assert keystore.current().kid != old_kid
    assert issuer.verify_refresh_token(token).subject == "alice"


def test_refresh_token_survives_restart(
    issuer: TokenIssuer, keystore: KeyStore, clock: Clock
) -> None:
    token = issuer.issue_refresh_token("alice", "user", fingerprint="fp")
    restarted = TokenIssuer(
        KeyStore(keystore.data_dir), issuer=ISSUER, service=SERVICE, clock=clock
    )
    assert restarted.verify_refresh_token(token).fingerprint == "fp"


def test_refresh_token_from_key_rotated_by_another_process_verifies(
    issuer: TokenIssuer, keystore: KeyStore, clock: Clock
) -> None:
    other = TokenIssuer(KeyStore(keystore.data_dir), issuer=ISSUER, service=SERVICE, clock=clock)
    other.keystore.rotate()
    token = other.issue_refresh_token("alice", "user")
    assert issuer.verify_refresh_token(token).subject == "alice"


def test_expired_refresh_token_is_rejected(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue_refresh_token("alice", "user")
    clock.now = NOW + 90 * 86400 + 60  # inside the leeway
    assert issuer.verify_refresh_token(token).subject == "alice"
    clock.now = NOW + 90 * 86400 + 61
    with pytest.raises(TokenError, match="expired"):
        issuer.verify_refresh_token(token)


def test_refresh_token_from_the_future_is_rejected(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue_refresh_token("alice", "user")
    clock.now = NOW - 61
    with pytest.raises(TokenError, match="future"):
        issuer.verify_refresh_token(token)


def test_tampered_refresh_token_is_rejected(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue_refresh_token("alice", "user").split(".")
    claims = raw_segment(f"{header}.{payload}.{signature}", 1)
    claims["sub"] = "admin"
    forged = b64url(json.dumps(claims).encode())
    with pytest.raises(TokenError, match="bad signature"):
        issuer.verify_refresh_token(f"{header}.{forged}.{signature}")


def test_access_token_is_rejected_as_refresh_token(issuer: TokenIssuer) -> None:
    token = issuer.issue_access_token("alice", []).token
    with pytest.raises(TokenError, match="not a refresh token"):
        issuer.verify_refresh_token(token)


def test_refresh_token_for_another_issuer_is_rejected(
    keystore: KeyStore, issuer: TokenIssuer, clock: Clock
) -> None:
    other = TokenIssuer(keystore, issuer="someone-else", service=SERVICE, clock=clock)
    with pytest.raises(TokenError, match="wrong issuer"):
        issuer.verify_refresh_token(other.issue_refresh_token("alice", "user"))


def test_refresh_token_for_another_service_is_rejected(
    keystore: KeyStore, issuer: TokenIssuer, clock: Clock
) -> None:
    other = TokenIssuer(keystore, issuer=ISSUER, service="other-registry", clock=clock)
    with pytest.raises(TokenError, match="wrong audience"):
        issuer.verify_refresh_token(other.issue_refresh_token("alice", "user"))


def test_refresh_token_from_unknown_key_is_rejected(
    tmp_path: Path, issuer: TokenIssuer, clock: Clock
) -> None:
    stranger_store = KeyStore(tmp_path / "stranger")
    stranger_store.ensure()
    stranger = TokenIssuer(stranger_store, issuer=ISSUER, service=SERVICE, clock=clock)
    with pytest.raises(TokenError, match="unknown key"):
        issuer.verify_refresh_token(stranger.issue_refresh_token("alice", "user"))


def test_refresh_token_with_symmetric_algorithm_is_rejected(
    issuer: TokenIssuer, keystore: KeyStore
) -> None:
    key = keystore.current()
    claims = raw_segment(issuer.issue_refresh_token("alice", "user"), 1)
    # The classic confusion attack: HMAC keyed with the public certificate (PyJWT refuses to
    # sign that, so it is done by hand).
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(key.certificate_pem().encode(), signing_input.encode(), hashlib.sha256)
    forged = f"{signing_input}.{b64url(mac.digest())}"
    with pytest.raises(TokenError, match="algorithm not allowed"):
        issuer.verify_refresh_token(forged)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30."])
def test_malformed_refresh_token_is_rejected(issuer: TokenIssuer, token: str) -> None:
    with pytest.raises(TokenError):
        issuer.verify_refresh_token(token)


def test_refresh_token_needs_subject_and_known_kind(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="subject"):
        issuer.issue_refresh_token("", "user")
    with pytest.raises(ValueError, match="kind"):
        issuer.issue_refresh_token("alice", "admin")
