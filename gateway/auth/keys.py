"""Token signing keys on disk: creation, rotation, certificates and key IDs."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = [
    "ALGORITHMS",
    "KeyStore",
    "KeyStoreError",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "libtrust_key_id",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

ALGORITHMS = ("ES256", "RS256")
# 3072 bits matches P-256's 128-bit security level; NIST SP 800-57 retires 2048-bit RSA after
# 2030, well inside the certificates' 10-year validity. Only rotation pays the generation cost.
RSA_KEY_SIZE = 3072
CERT_VALIDITY = timedelta(days=3650)
# Certificates start an hour in the past so a registry whose clock is behind accepts them.
CLOCK_SKEW = timedelta(hours=1)

_KEY_SUFFIX = ".key.pem"
_CERT_SUFFIX = ".crt.pem"
# <nanoseconds since epoch, zero-padded so names sort by age>-<first 8 kid characters>
_KEY_FILE = re.compile(r"(?P<ns>\d{20})-(?P<kid>[A-Z2-7]{8})" + re.escape(_KEY_SUFFIX))


class KeyStoreError(Exception):
    """The key store is empty, unreadable, or holds a key it cannot use."""


def libtrust_key_id(public_key: PublicKey) -> str:
    """The libtrust key ID that Distribution 2.x matches a token's `kid` against."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # 30 bytes are exactly 48 base32 characters, so there is no padding to strip.
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _algorithm_for(private_key: object) -> str | None:
    """The JWS algorithm for a key Distribution 2.8 accepts, or None."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP256R1
    ):
        return "ES256"
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= 2048:
        return "RS256"
    return None


@dataclass(frozen=True)
class SigningKey:
    """One private key with its self-signed certificate, as stored on disk."""

    kid: str
    algorithm: str
    # Key objects compare by identity; kid (a hash of the public key) already identifies it.
    private_key: PrivateKey = field(repr=False, compare=False)
    certificate: x509.Certificate = field(repr=False)
    created: datetime
    path: Path
    # Computed once: the token path reads these on every request.
    _x5c: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _cert_pem: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        object.__setattr__(self, "_x5c", (base64.standard_b64encode(der).decode("ascii"),))
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        object.__setattr__(self, "_cert_pem", pem)

    def x5c(self) -> list[str]:
        """The `x5c` header value: the certificate as standard base64 DER."""
        return list(self._x5c)

    def public_key(self) -> PublicKey:
        """The public half of the key (what verifies its signatures)."""
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK whose `kid` is the libtrust key ID."""
        public = self.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def certificate_pem(self) -> str:
        """The certificate in PEM form."""
        return self._cert_pem


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise KeyStoreError(f"unsupported algorithm {algorithm!r}: expected one of {ALGORITHMS}")


def _generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    return ec.generate_private_key(ec.SECP256R1())


def _self_signed_certificate(
    private_key: PrivateKey, common_name: str, now: datetime
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_VALIDITY)
        # CA so that Go's verifier accepts the certificate as a root of its own x5c chain.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_key(key_path: Path) -> SigningKey:
    match = _KEY_FILE.fullmatch(key_path.name)
    if match is None:  # pragma: no cover - callers only pass matching names
        raise KeyStoreError(f"{key_path}: not a key file name")
    cert_path = key_path.with_name(key_path.name.removesuffix(_KEY_SUFFIX) + _CERT_SUFFIX)
    try:
        private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyStoreError(f"{key_path}: cannot load private key: {exc}") from exc
    algorithm = _algorithm_for(private_key)
    if algorithm is None:
        # Distribution 2.8 refuses other curves/types (an Ed25519 cert even stops it starting).
        raise KeyStoreError(
            f"{key_path}: unsupported signing key {type(private_key).__name__}: "
            "use EC P-256 (ES256) or RSA of at least 2048 bits (RS256)"
        )
    signing_private_key = cast(PrivateKey, private_key)  # _algorithm_for checked the type
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{cert_path}: cannot load certificate: {exc}") from exc
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public_key = signing_private_key.public_key()
    if certificate.public_key().public_bytes(der, spki) != public_key.public_bytes(der, spki):
        raise KeyStoreError(f"{cert_path}: certificate does not match {key_path.name}")
    created = datetime.fromtimestamp(int(match["ns"]) / 1e9, tz=UTC)
    return SigningKey(
        libtrust_key_id(public_key), algorithm, signing_private_key, certificate, created, key_path
    )


class KeyStore:
    """Signing keys under `data_dir/keys/`, oldest first; the newest one signs."""

    def __init__(self, data_dir: Path, *, common_name: str = "registry-gateway") -> None:
        self.data_dir = Path(data_dir)
        self.keys_dir = self.data_dir / "keys"
        self.common_name = common_name
        self._keys: list[SigningKey] | None = None
        # Parsed keys by file name: key files never change once written, so reload() only
        # parses new ones.
        self._parsed: dict[str, SigningKey] = {}

    def keys(self) -> list[SigningKey]:
        """Every key, oldest first (read from disk on first use, then cached)."""
        return list(self._loaded())

    def _loaded(self) -> list[SigningKey]:
        if self._keys is None:
            self.reload()
        return self._keys or []

    def reload(self) -> None:
        """Re-read the keys directory, picking up keys another process created."""
        try:
            names = sorted(
                entry.name for entry in os.scandir(self.keys_dir) if _KEY_FILE.fullmatch(entry.name)
            )
        except FileNotFoundError:
            names = []
        except OSError as exc:
            raise KeyStoreError(f"{self.keys_dir}: cannot list keys: {exc}") from exc
        parsed = {name: self._parsed.get(name) or _load_key(self.keys_dir / name) for name in names}
        self._parsed = parsed
        self._keys = list(parsed.values())

    def current(self) -> SigningKey:
        """The newest key, which signs new tokens."""
        keys = self._loaded()
        if not keys:
            raise KeyStoreError(
                f"no signing keys in {self.keys_dir}: create one with ensure() or rotate()"
            )
        return keys[-1]

    def find(self, kid: str) -> SigningKey | None:
        """The key with libtrust key ID `kid`, if the store holds it."""
        return next((key for key in self._loaded() if key.kid == kid), None)

    def ensure(self, algorithm: str = "ES256") -> SigningKey:
        """Create the first key if there is none; return the newest."""
        _check_algorithm(algorithm)
        if self._loaded():
            # Keys exist: no lock needed, so a read-only key folder (a mounted secret) works.
            return self.current()
        with self._locked():
            if not self._keys:
                self._create(algorithm)
            return self.current()

    def rotate(self, algorithm: str = "ES256") -> SigningKey:
        """Add a new key; it becomes the signing key while older ones stay trusted."""
        _check_algorithm(algorithm)
        with self._locked():
            return self._create(algorithm)

    def bundle_pem(self) -> str:
        """Every certificate, PEM-concatenated: the registry's `rootcertbundle`."""
        return "".join(key.certificate_pem() for key in self.keys())

    def jwks(self) -> dict[str, Any]:
        """Every public key as a JWK Set."""
        return {"keys": [key.public_jwk() for key in self.keys()]}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock across processes, with a fresh view of the disk."""
        self._make_dirs()
        fd = os.open(self.keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another process may have created keys while we waited for the lock.
            self.reload()
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _make_dirs(self) -> None:
        for directory in (self.data_dir, self.keys_dir):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700, parents=True)
                # mkdir's mode is filtered by the umask; make sure it is exactly 0700.
                directory.chmod(0o700)

    def _create(self, algorithm: str) -> SigningKey:
        """Generate, write and load a new newest key; the caller holds the lock."""
        private_key = _generate_private_key(algorithm)
        now_ns = time.time_ns()
        existing = self._keys or []
        if existing:
            # Names must sort after every existing key even if the clock stepped back.
            last = _KEY_FILE.fullmatch(existing[-1].path.name)
            assert last is not None
            now_ns = max(now_ns, int(last["ns"]) + 1)
        now = datetime.fromtimestamp(now_ns / 1e9, tz=UTC)
        certificate = _self_signed_certificate(private_key, self.common_name, now)
        kid = libtrust_key_id(private_key.public_key())
        stem = f"{now_ns:020d}-{kid.replace(':', '')[:8]}"
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The certificate first: a key file is only listed once its certificate exists.
        _write_atomically(
            self.keys_dir / (stem + _CERT_SUFFIX),
            certificate.public_bytes(serialization.Encoding.PEM),
        )
        _write_atomically(self.keys_dir / (stem + _KEY_SUFFIX), key_pem)
        _fsync_dir(self.keys_dir)
        self.reload()
        return self.current()
