"""The server's DTLS certificate and its SDP fingerprint (RFC 8122, RFC 8827).

Browsers do not validate a chain for WebRTC: the peer proves it holds the key of the certificate
whose hash is the ``a=fingerprint`` in the SDP. So a fresh self-signed certificate will do.
"""

from __future__ import annotations

import datetime
import hashlib

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

__all__ = ["FINGERPRINT_HASHES", "Certificate", "PrivateKey", "fingerprint_of_der"]

FINGERPRINT_HASHES: dict[str, str] = {
    "sha-1": "sha1",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}
"""SDP hash-function names (RFC 8122 §5; matched case-insensitively) to hashlib names."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def fingerprint_of_der(der: bytes, algorithm: str) -> str:
    """Format a fingerprint as SDP writes it ("AB:CD:..."), so it can be compared as a string."""
    name = FINGERPRINT_HASHES.get(algorithm.lower())
    if name is None:
        supported = ", ".join(FINGERPRINT_HASHES)
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r} (use {supported})")
    return hashlib.new(name, der).digest().hex(":").upper()


def _public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _parse(certificate_pem: bytes, private_key_pem: bytes) -> tuple[x509.Certificate, PrivateKey]:
    """Parse and check that the key belongs to the certificate, so DTLS cannot fail later."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise ValueError(f"cannot read the DTLS certificate PEM: {exc}") from None
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: an encrypted key; a server has nobody to ask for the password.
        raise ValueError(
            f"cannot read the DTLS private key PEM (must be unencrypted): {exc}"
        ) from None
    if not isinstance(key, PrivateKey):
        raise ValueError(f"unsupported DTLS key type {type(key).__name__}; use EC P-256 (or RSA)")
    cert_public = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if cert_public != _public_der(key):
        raise ValueError("the DTLS private key does not match the certificate")
    return certificate, key


@attrs.frozen
class Certificate:
    """ECDSA P-256 self-signed certificate for DTLS (pyOpenSSL cannot generate EC keys itself).

    Every instance holds a matching certificate and key: the constructor checks them.
    """

    certificate_pem: bytes
    private_key_pem: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        _parse(self.certificate_pem, self.private_key_pem)

    @classmethod
    def generate(
        cls,
        common_name: str = "trio_sfu",
        *,
        valid_days: int = 30,
        now: datetime.datetime | None = None,
    ) -> Certificate:
        """Make a fresh key and certificate; valid from a day back to tolerate clock skew."""
        if valid_days <= 0:
            raise ValueError(f"valid_days must be positive, not {valid_days}")
        if now is None:
            now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .sign(key, hashes.SHA256())
        )
        return cls(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    @classmethod
    def load(cls, certificate_pem: bytes, private_key_pem: bytes) -> Certificate:
        """Use a configured pair (a stable fingerprint); ValueError unless they match."""
        return cls(certificate_pem=certificate_pem, private_key_pem=private_key_pem)

    @property
    def certificate_der(self) -> bytes:
        """The DER encoding, which is what fingerprints hash."""
        certificate = x509.load_pem_x509_certificate(self.certificate_pem)
        return certificate.public_bytes(serialization.Encoding.DER)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """The ``a=fingerprint`` value for the SDP answer."""
        return fingerprint_of_der(self.certificate_der, algorithm)

    def cryptography_objects(self) -> tuple[x509.Certificate, PrivateKey]:
        """The pair as ``cryptography`` objects, which ``SSL.Context`` takes without warnings."""
        return _parse(self.certificate_pem, self.private_key_pem)

    def openssl_objects(self) -> tuple[crypto.X509, crypto.PKey]:
        """Objects for ``SSL.Context.use_certificate`` and ``use_privatekey``.

        pyOpenSSL 26 still accepts these but warns (DeprecationWarning) when a Context is given
        them; ``cryptography_objects()`` avoids the warning.
        """
        certificate, key = self.cryptography_objects()
        return crypto.X509.from_cryptography(certificate), crypto.PKey.from_cryptography_key(key)
