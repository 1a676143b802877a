import base64
import hashlib
import os
import re
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth.keys import KeyStore, KeyStoreError, SigningKey, libtrust_key_id

KID = re.compile(r"^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$")

# A P-256 public key published with its libtrust key ID by an independent libtrust port
# (realityone/libtrust-py, tests/fixtures/ec-public.pem).
VECTOR_PEM = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4pBqYlc5IU5pJh5AOvijtEccStyJ
u0dSAiz4OlDGGFk5PvSlSh+wqUcSyp1ZRSP5kX7Pluof72g5MniaoFrLKg==
-----END PUBLIC KEY-----
"""
VECTOR_KID = "UEV2:PPF2:4DMU:WZYF:WOWU:677P:B7XU:SGFA:BMUG:NCTC:R7CL:XFKZ"
# DER SubjectPublicKeyInfo header for an uncompressed P-256 point (id-ecPublicKey, prime256v1).
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")


def spec_key_id(spki_der: bytes) -> str:
    """The libtrust key ID computed straight from the spec text."""
    digest = hashlib.sha256(spki_der).digest()[:30]
    text = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, 48, 4))


def kids(store: KeyStore) -> list[str]:
    """Key IDs in the store's order."""
    return [key.kid for key in store.keys()]


@pytest.fixture(scope="module")
def rsa_store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    store = KeyStore(tmp_path_factory.mktemp("rsa"))
    store.ensure("RS256")
    return store


def test_libtrust_key_id_matches_published_vector() -> None:
    public_key = serialization.load_pem_public_key(VECTOR_PEM)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert libtrust_key_id(public_key) == VECTOR_KID


def test_libtrust_key_id_matches_hand_built_der() -> None:
    public_key = ec.derive_private_key(0xC0FFEE, ec.SECP256R1()).public_key()
    numbers = public_key.public_numbers()
    der = P256_SPKI_PREFIX + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    assert libtrust_key_id(public_key) == spec_key_id(der)
    assert KID.match(libtrust_key_id(public_key))


def test_libtrust_key_id_for_rsa_has_libtrust_format() -> None:
    public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    kid = libtrust_key_id(public_key)
    assert KID.match(kid)
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert kid == spec_key_id(der)


def test_ensure_creates_one_es256_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "data")
    key = store.ensure()
    assert isinstance(key, SigningKey)
    assert key.algorithm == "ES256"
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.private_key.curve, ec.SECP256R1)
    assert KID.match(key.kid)
    certified = key.certificate.public_key()
    assert isinstance(certified, ec.EllipticCurvePublicKey)
    assert key.kid == libtrust_key_id(certified)
    assert store.ensure() == key
    assert store.keys() == [key]
    assert store.current() == key


def test_key_files_and_directories_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = KeyStore(data_dir).ensure()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
    files = sorted(p for p in (data_dir / "keys").iterdir() if not p.name.startswith("."))
    assert [p.name.split(".", 1)[1] for p in files] == ["crt.pem", "key.pem"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.path in files
    assert b"BEGIN PRIVATE KEY" in key.path.read_bytes()  # PKCS8, unencrypted


def test_existing_data_dir_permissions_are_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    KeyStore(tmp_path).ensure()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_certificate_is_a_self_signed_ca_valid_for_ten_years(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    key = KeyStore(tmp_path, common_name="gw.example").ensure()
    cert = key.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw.example"
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    skew = before - cert.not_valid_before_utc
    assert timedelta(minutes=59) <= skew <= timedelta(minutes=61)
    lifetime = cert.not_valid_after_utc - before
    assert timedelta(days=3649) <= lifetime <= timedelta(days=3651)


def test_x5c_is_standard_base64_der_of_the_certificate(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    (encoded,) = key.x5c()
    assert base64.b64decode(encoded, validate=True) == key.certificate.public_bytes(
        serialization.Encoding.DER
    )
    assert "-" not in encoded and "_" not in encoded


def test_x5c_returns_a_fresh_list(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    key.x5c().append("junk")
    assert len(key.x5c()) == 1


def test_certificate_pem_round_trips(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    pem = key.certificate_pem()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(pem.encode()) == key.certificate


def test_public_jwk_carries_libtrust_kid(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    jwk = key.public_jwk()
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-256"
    assert jwk["kid"] == key.kid
    assert jwk["alg"] == "ES256"
    assert jwk["use"] == "sig"
    assert "d" not in jwk
    public = ECAlgorithm.from_jwk(jwk)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()


def test_rs256_key(rsa_store: KeyStore) -> None:
    key = rsa_store.current()
    assert key.algorithm == "RS256"
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 3072
    assert KID.match(key.kid)
    jwk = key.public_jwk()
    assert (jwk["kty"], jwk["alg"], jwk["kid"]) == ("RSA", "RS256", key.kid)
    public = RSAAlgorithm.from_jwk(jwk)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()
    key.certificate.verify_directly_issued_by(key.certificate)


def test_rs256_key_survives_reload(rsa_store: KeyStore) -> None:
    again = KeyStore(rsa_store.data_dir)
    assert kids(again) == kids(rsa_store)
    assert again.current().algorithm == "RS256"


def test_rotate_makes_the_new_key_current_and_keeps_old_ones(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    first = store.ensure()
    second = store.rotate()
    third = store.rotate()
    assert kids(store) == [first.kid, second.kid, third.kid]
    assert store.current() == third
    assert store.ensure() == third
    assert first.created < second.created < third.created


def test_rotate_on_empty_store_creates_the_first_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key = store.rotate()
    assert store.keys() == [key]


def test_file_names_sort_by_creation_even_if_the_clock_stands_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)  # the key store's clock
    store = KeyStore(tmp_path)
    created = [store.rotate().kid for _ in range(4)]
    assert kids(KeyStore(tmp_path)) == created
    names = [k.path.name for k in store.keys()]
    assert names == sorted(names)
    assert len(set(names)) == 4


def test_bundle_contains_every_certificate(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.ensure()
    store.rotate()
    store.rotate()
    bundle = x509.load_pem_x509_certificates(store.bundle_pem().encode())
    assert bundle == [k.certificate for k in store.keys()]


def test_jwks_lists_every_public_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.ensure()
    store.rotate()
    jwks = store.jwks()
    assert [jwk["kid"] for jwk in jwks["keys"]] == kids(store)
    assert all("d" not in jwk for jwk in jwks["keys"])


def test_find_returns_key_by_kid(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    first = store.ensure()
    store.rotate()
    assert store.find(first.kid) == first
    assert store.find("AAAA:" * 11 + "AAAA") is None


def test_reload_sees_keys_created_by_another_instance(tmp_path: Path) -> None:
    reader = KeyStore(tmp_path)
    writer = KeyStore(tmp_path)
    first = writer.ensure()
    assert reader.keys() == [first]
    second = writer.rotate()
    assert reader.current().kid == first.kid  # cached until reload()
    reader.reload()
    assert kids(reader) == [first.kid, second.kid]
    assert reader.current().kid == second.kid


def test_ensure_after_another_instance_created_a_key_reuses_it(tmp_path: Path) -> None:
    stale = KeyStore(tmp_path)
    assert stale.keys() == []
    key = KeyStore(tmp_path).ensure()
    assert stale.ensure().kid == key.kid
    assert len(stale.keys()) == 1


def test_current_on_empty_store_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no signing keys"):
        KeyStore(tmp_path).current()


def test_missing_data_dir_reads_as_empty(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "nope")
    assert store.keys() == []
    assert store.bundle_pem() == ""
    assert store.jwks() == {"keys": []}


def test_unsupported_algorithm_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="PS256"):
        KeyStore(tmp_path / "data").rotate("PS256")
    with pytest.raises(KeyStoreError, match="EdDSA"):
        KeyStore(tmp_path / "data").ensure("EdDSA")
    assert not (tmp_path / "data").exists()


def test_corrupt_key_file_is_reported_by_name(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    key.path.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyStoreError, match=re.escape(str(key.path))):
        KeyStore(tmp_path).keys()


def test_missing_certificate_is_reported_by_name(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    cert_path = key.path.with_name(key.path.name.replace(".key.pem", ".crt.pem"))
    cert_path.unlink()
    with pytest.raises(KeyStoreError, match=re.escape(str(cert_path))):
        KeyStore(tmp_path).keys()


def test_certificate_of_another_key_is_rejected(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    first = store.ensure()
    second = store.rotate()
    first_cert = first.path.with_name(first.path.name.replace(".key.pem", ".crt.pem"))
    second_cert = second.path.with_name(second.path.name.replace(".key.pem", ".crt.pem"))
    first_cert.write_bytes(second_cert.read_bytes())
    with pytest.raises(KeyStoreError, match="does not match"):
        KeyStore(tmp_path).keys()


def test_unsupported_key_type_on_disk_is_rejected(tmp_path: Path) -> None:
    key = KeyStore(tmp_path).ensure()
    p384 = ec.generate_private_key(ec.SECP384R1())
    key.path.write_bytes(
        p384.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyStoreError, match=re.escape(f"{key.path}: unsupported signing key")):
        KeyStore(tmp_path).keys()


def test_unrelated_files_in_keys_dir_are_ignored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key = store.ensure()
    (tmp_path / "keys" / "README").write_text("hello")
    (tmp_path / "keys" / ".00000000000000000001-AAAAAAAA.key.pem.123.tmp").write_text("half")
    assert kids(KeyStore(tmp_path)) == [key.kid]


def test_ensure_works_on_a_read_only_key_folder(tmp_path: Path) -> None:
    """A Kubernetes Secret mounted as the key folder is read-only: existing keys must load."""
    store = KeyStore(tmp_path)
    kid = store.ensure().kid
    keys_dir = tmp_path / "keys"
    keys_dir.chmod(0o500)
    try:
        if os.access(keys_dir, os.W_OK):  # root ignores modes: prove the lock is not taken
            (keys_dir / ".lock").unlink(missing_ok=True)
        again = KeyStore(tmp_path)
        assert again.ensure().kid == kid
        assert not (keys_dir / ".lock").exists()
    finally:
        keys_dir.chmod(0o700)
