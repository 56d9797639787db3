"""The DTLS certificate: its SDP fingerprint and its use by pyOpenSSL."""

from __future__ import annotations

import datetime
import hashlib
import re
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

from trio_sfu.transport.certificate import Certificate, fingerprint_of_der

FINGERPRINT_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2})*$")


@pytest.fixture(scope="module")
def certificate() -> Certificate:
    return Certificate.generate()


def der_of(certificate: Certificate) -> bytes:
    parsed = x509.load_pem_x509_certificate(certificate.certificate_pem)
    return parsed.public_bytes(serialization.Encoding.DER)


def test_fingerprint_format(certificate: Certificate) -> None:
    fingerprint = certificate.fingerprint()
    assert len(fingerprint) == 95  # 32 bytes: 64 hex digits and 31 colons
    assert FINGERPRINT_RE.match(fingerprint)
    assert fingerprint == certificate.fingerprint("sha-256") == certificate.fingerprint("SHA-256")


@pytest.mark.parametrize(
    ("algorithm", "hashlib_name", "length"),
    [
        ("sha-1", "sha1", 20),
        ("sha-256", "sha256", 32),
        ("sha-384", "sha384", 48),
        ("sha-512", "sha512", 64),
    ],
)
def test_fingerprint_equals_hashlib_over_der(
    certificate: Certificate, algorithm: str, hashlib_name: str, length: int
) -> None:
    der = der_of(certificate)
    assert certificate.certificate_der == der
    expected = ":".join(f"{b:02X}" for b in hashlib.new(hashlib_name, der).digest())
    assert certificate.fingerprint(algorithm) == expected
    assert fingerprint_of_der(der, algorithm) == expected
    assert len(expected) == length * 3 - 1


def test_unknown_fingerprint_algorithm(certificate: Certificate) -> None:
    with pytest.raises(ValueError, match="md5"):
        fingerprint_of_der(b"x", "md5")
    with pytest.raises(ValueError):
        certificate.fingerprint("sha256")


def test_known_vector() -> None:
    assert fingerprint_of_der(b"", "sha-1") == (
        "DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09"
    )


def test_key_is_ec_p256_and_certificate_is_self_signed(certificate: Certificate) -> None:
    parsed = x509.load_pem_x509_certificate(certificate.certificate_pem)
    public_key = parsed.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(certificate.private_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert parsed.issuer == parsed.subject
    assert isinstance(parsed.signature_hash_algorithm, hashes.SHA256)
    parsed.verify_directly_issued_by(parsed)
    assert "trio_sfu" in parsed.subject.rfc4514_string()


def test_validity_window() -> None:
    now = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    certificate = Certificate.generate("example", valid_days=7, now=now)
    parsed = x509.load_pem_x509_certificate(certificate.certificate_pem)
    assert parsed.not_valid_before_utc == now - datetime.timedelta(days=1)
    assert parsed.not_valid_after_utc == now + datetime.timedelta(days=7)
    assert parsed.subject.rfc4514_string() == "CN=example"
    with pytest.raises(ValueError):
        Certificate.generate(valid_days=0)


def test_each_generation_is_fresh() -> None:
    first, second = Certificate.generate(), Certificate.generate()
    assert first.fingerprint() != second.fingerprint()
    assert first.private_key_pem != second.private_key_pem
    parsed = [x509.load_pem_x509_certificate(c.certificate_pem) for c in (first, second)]
    assert parsed[0].serial_number != parsed[1].serial_number


def test_load_round_trip(certificate: Certificate) -> None:
    loaded = Certificate.load(certificate.certificate_pem, certificate.private_key_pem)
    assert loaded == certificate
    assert loaded.fingerprint() == certificate.fingerprint()


def test_load_mismatch_is_value_error(certificate: Certificate) -> None:
    other = Certificate.generate()
    with pytest.raises(ValueError, match="does not match"):
        Certificate.load(certificate.certificate_pem, other.private_key_pem)
    with pytest.raises(ValueError, match="does not match"):
        Certificate(
            certificate_pem=other.certificate_pem, private_key_pem=certificate.private_key_pem
        )


def test_load_garbage_is_value_error(certificate: Certificate) -> None:
    with pytest.raises(ValueError):
        Certificate.load(b"garbage", certificate.private_key_pem)
    with pytest.raises(ValueError):
        Certificate.load(certificate.certificate_pem, b"garbage")
    key = serialization.load_pem_private_key(certificate.private_key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    )
    with pytest.raises(ValueError, match="unencrypted"):
        Certificate.load(certificate.certificate_pem, encrypted)


def test_load_rsa_pair() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rsa")])
    now = datetime.datetime.now(datetime.UTC)
    parsed = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    loaded = Certificate.load(
        parsed.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    assert FINGERPRINT_RE.match(loaded.fingerprint())


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_openssl_objects_usable_in_dtls_context(certificate: Certificate) -> None:
    x509_cert, pkey = certificate.openssl_objects()
    context = SSL.Context(SSL.DTLS_METHOD)
    context.use_certificate(x509_cert)
    context.use_privatekey(pkey)
    context.check_privatekey()
    assert x509_cert.to_cryptography().public_bytes(serialization.Encoding.DER) == der_of(
        certificate
    )


def test_cryptography_objects_usable_without_warnings(certificate: Certificate) -> None:
    cert, key = certificate.cryptography_objects()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        context = SSL.Context(SSL.DTLS_METHOD)
        context.use_certificate(cert)
        context.use_privatekey(key)
        context.check_privatekey()


def test_mismatched_pair_fails_check_privatekey(certificate: Certificate) -> None:
    """Guards the tests above: OpenSSL really does compare (use_privatekey already does)."""
    other = Certificate.generate()
    context = SSL.Context(SSL.DTLS_METHOD)
    context.use_certificate(certificate.cryptography_objects()[0])
    with pytest.raises(SSL.Error, match="key values mismatch"):
        context.use_privatekey(other.cryptography_objects()[1])
