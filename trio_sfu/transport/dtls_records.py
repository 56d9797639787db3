"""The peer's DTLS 1.2 records after the handshake, read without OpenSSL (AEAD cipher suites only).

Once the keys are exported, a DTLS-SRTP association uses DTLS for nothing but alerts: the peer's
close_notify (a browser's pc.close()) and ours. OpenSSL's connection state for that costs 40-90 KB
a session, a third of a player's memory; a suite's record keys and one AEAD object cost a few hundred
bytes. So `RecordOpener` keeps the peer's write key (RFC 5246 §6.3 key expansion from the master
secret OpenSSL reports) and authenticates and decrypts its records: AES-GCM (RFC 5288, explicit
nonce) or ChaCha20-Poly1305 (RFC 7905). A CBC suite keeps OpenSSL (see DtlsEndpoint).
"""

from __future__ import annotations

import hmac

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = ["ALERT_NAMES", "RecordOpener"]

_TAG = 16

# OpenSSL suite name -> (AEAD, key length, fixed IV length, explicit nonce, PRF hash)
_SUITES: dict[str, tuple[type[AESGCM] | type[ChaCha20Poly1305], int, int, bool, str]] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": (AESGCM, 16, 4, True, "sha256"),
    "ECDHE-RSA-AES128-GCM-SHA256": (AESGCM, 16, 4, True, "sha256"),
    "ECDHE-ECDSA-AES256-GCM-SHA384": (AESGCM, 32, 4, True, "sha384"),
    "ECDHE-RSA-AES256-GCM-SHA384": (AESGCM, 32, 4, True, "sha384"),
    "ECDHE-ECDSA-CHACHA20-POLY1305": (ChaCha20Poly1305, 32, 12, False, "sha256"),
    "ECDHE-RSA-CHACHA20-POLY1305": (ChaCha20Poly1305, 32, 12, False, "sha256"),
}

ALERT_NAMES = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record mac",
    22: "record overflow",
    40: "handshake failure",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown ca",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    90: "user canceled",
    100: "no renegotiation",
    110: "unsupported extension",
}
"""RFC 5246 §7.2 and RFC 5746 alert descriptions, as OpenSSL names them in its errors."""


def _p_hash(algorithm: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 §5 P_hash."""
    out, a = b"", seed
    while len(out) < length:
        a = hmac.digest(secret, a, algorithm)
        out += hmac.digest(secret, a + seed, algorithm)
    return out[:length]


@attrs.frozen
class RecordOpener:
    """Authenticates and decrypts the peer's records of the current epoch."""

    aead: AESGCM | ChaCha20Poly1305
    fixed_iv: bytes
    explicit_nonce: bool

    @classmethod
    def for_peer(
        cls,
        cipher_name: str,
        master_secret: bytes,
        client_random: bytes,
        server_random: bytes,
        *,
        server: bool,
    ) -> RecordOpener | None:
        """The opener for what the peer writes (the client's keys if we are the server), or None for a
        suite this module does not read."""
        suite = _SUITES.get(cipher_name)
        if suite is None:
            return None
        aead_type, key_length, iv_length, explicit, algorithm = suite
        block = _p_hash(
            algorithm,
            master_secret,
            b"key expansion" + server_random + client_random,
            2 * key_length + 2 * iv_length,  # AEAD suites have no MAC keys
        )
        client_key, server_key = block[:key_length], block[key_length : 2 * key_length]
        client_iv = block[2 * key_length : 2 * key_length + iv_length]
        server_iv = block[2 * key_length + iv_length :]
        key, iv = (client_key, client_iv) if server else (server_key, server_iv)
        return cls(aead_type(key), iv, explicit)

    def open(self, record: bytes) -> bytes | None:
        """The plaintext of one whole DTLS record (13-byte header, then the body), or None if it does
        not authenticate."""
        header, body = record[:13], record[13:]
        sequence = header[3:11]  # epoch and sequence number: RFC 6347 §4.1.2.1's seq_num
        if self.explicit_nonce:
            if len(body) < 8 + _TAG:
                return None
            nonce, body = self.fixed_iv + body[:8], body[8:]
        else:
            if len(body) < _TAG:
                return None
            nonce = bytes(a ^ b for a, b in zip(self.fixed_iv, bytes(4) + sequence, strict=True))
        additional = sequence + header[:3] + (len(body) - _TAG).to_bytes(2, "big")
        try:
            return self.aead.decrypt(nonce, body, additional)
        except InvalidTag:
            return None
