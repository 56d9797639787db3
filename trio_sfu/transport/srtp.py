"""SRTP and SRTCP contexts for one DTLS-SRTP association (RFC 3711, RFC 7714), on pylibsrtp.

One libsrtp session per direction, each with a wildcard-SSRC policy: a publisher's SSRCs are not known
in advance, and a forwarding server sends many SSRCs over one association. Outgoing RTP with
AEAD_AES_128_GCM, the forwarding server's main cost after the kernel's, goes through `GcmSender`
(trio_sfu/transport/_srtp_gcm.c) where it was built: the same bytes as libsrtp's, without its
per-packet bookkeeping.
"""

from __future__ import annotations

import collections
from typing import Any

import pylibsrtp
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from trio_sfu.transport.compiled import compiled_wanted
from trio_sfu.transport.dtls import SrtpKeys, SrtpProfile
from trio_sfu.wire.rtp import SEQUENCE_TIMESTAMP_SSRC

__all__ = [
    "GCM_COMPILED",
    "MAX_PROTECT_INPUT",
    "REPLAY_WINDOW",
    "RETRANSMIT_WINDOW",
    "SrtpSession",
    "session_key_and_salt",
]

_PROFILES = {
    SrtpProfile.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SrtpProfile.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}

REPLAY_WINDOW = 1024
"""Inbound replay window in packets: wide enough for video bursts reordered by the network."""

RETRANSMIT_WINDOW = 1024
"""Outbound window: how far back (per SSRC) a same-sequence retransmission can still be protected.

Seconds of video at typical rates; wider windows cost time on every protect (libsrtp shifts a bitmap)."""

MAX_PROTECT_INPUT = 1500 - (4 + 16 + 128)
"""pylibsrtp works in a 1500-byte buffer and reserves room for the longest trailer."""

_BUFFER = 1500
_MAX_RTP_INPUT = _BUFFER - pylibsrtp.SRTP_MAX_TRAILER_LEN  # what pylibsrtp's own protect accepts
_FANOUT_BUFFER: Any = _ffi.new("char[]", _BUFFER)
_FANOUT_VIEW = memoryview(_ffi.buffer(_FANOUT_BUFFER))
_FANOUT_LENGTH: Any = _ffi.new("int *")
_PROTECT_ADDRESS = int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_protect")))
_UNPROTECT_BUFFER: Any = _ffi.new("char[]", _BUFFER)
_UNPROTECT_VIEW = memoryview(_ffi.buffer(_UNPROTECT_BUFFER))
_UNPROTECT_LENGTH: Any = _ffi.new("int *")
# libsrtp's srtp_err_status_t values for a packet refused on its merits; any other is an "error"
_REFUSED = {7: "auth_failed", 9: "replay", 10: "replay"}


def _compiled_gcm_sender() -> Any:
    """The compiled sender's type, or None (no C compiler at install, no libcrypto to load, or
    TRIO_SFU_PURE_PYTHON=1): then libsrtp protects everything."""
    if not compiled_wanted():
        return None
    try:
        from trio_sfu.transport._srtp_gcm import GcmSender  # type: ignore[import-not-found]
    except ImportError:
        return None
    return GcmSender


GcmSender: Any = _compiled_gcm_sender()
GCM_COMPILED = GcmSender is not None
"""Whether outgoing RTP with AEAD_AES_128_GCM is protected by `GcmSender` rather than libsrtp."""

_RTP_ENCRYPTION, _RTP_SALT = 0x00, 0x02  # RFC 3711 §4.3.2 key derivation labels


def session_key_and_salt(master: bytes, key_length: int = 16, salt_length: int = 12) -> tuple[bytes, bytes]:
    """The SRTP session encryption key and salt derived from `master` (master key then master salt):
    RFC 3711 §4.3 with key derivation rate 0, whose PRF is AES in counter mode keyed with the master
    key, the counter block starting from the master salt (padded to 14 bytes, as libsrtp does for
    RFC 7714's 12-byte salts) with the label in its eighth byte."""
    key, salt = master[:key_length], master[key_length : key_length + salt_length]

    def prf(label: int, length: int) -> bytes:
        block = bytearray(salt.ljust(14, b"\0") + b"\0\0")
        block[7] ^= label
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(block))).encryptor()
        return encryptor.update(bytes(length))

    return prf(_RTP_ENCRYPTION, key_length), prf(_RTP_SALT, salt_length)


class SrtpSession:
    """Protect what we send with our key, unprotect what the peer sends with theirs.

    Unprotect never raises on network input: it returns None and counts why, e.g.
    ``rtp_auth_failed``, ``rtp_replay``, ``rtcp_auth_failed``, ``rtcp_replay``, ``rtp_error``.
    """

    __slots__ = (
        "_gcm",
        "_rx",
        "_rx_context",
        "_tx",
        "_tx_context",
        "counters",
        "profile",
    )

    def __init__(self, keys: SrtpKeys) -> None:
        profile = _PROFILES[keys.profile]
        inbound = pylibsrtp.Policy(
            key=keys.remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
        )
        inbound.window_size = REPLAY_WINDOW
        outbound = pylibsrtp.Policy(
            key=keys.local_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
        )
        # A NACK-driven retransmission re-sends a packet with the same sequence number.
        outbound.allow_repeat_tx = True
        outbound.window_size = RETRANSMIT_WINDOW
        self.profile = keys.profile
        self._rx = pylibsrtp.Session(policy=inbound)
        self._tx = pylibsrtp.Session(policy=outbound)
        self.counters: collections.Counter[str] = collections.Counter()
        # For `protect_rtp_as`, which calls libsrtp on this context directly (pylibsrtp's binding).
        self._tx_context: Any = self._tx._srtp[0]
        self._rx_context: Any = self._rx._srtp[0]  # for `_unprotect`, likewise (self._rx owns it)
        # Outgoing RTP with AES-GCM, where compiled (libsrtp keeps RTCP: its index is its own).
        self._gcm: Any = None
        if GcmSender is not None and keys.profile is SrtpProfile.AEAD_AES_128_GCM:
            self._gcm = GcmSender(*session_key_and_salt(keys.local_key))

    def protect_rtp(self, packet: bytes) -> bytes:
        """SRTP-protect one RTP packet; ValueError if it is not one or is too long to protect."""
        if self._gcm is not None:
            try:
                return self._gcm.protect(packet)  # type: ignore[no-any-return]
            except ValueError as error:
                self.counters["rtp_protect_failed"] += 1
                raise ValueError(f"cannot protect RTP packet: {error}") from None
        try:
            return bytes(self._tx.protect(packet))
        except (pylibsrtp.Error, ValueError) as error:  # ValueError: longer than pylibsrtp's buffer
            self.counters["rtp_protect_failed"] += 1
            raise ValueError(f"cannot protect RTP packet: {error}") from None

    def protect_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bytes | memoryview:
        """SRTP-protect `packet` with its sequence number, timestamp and SSRC replaced by these.

        The fan-out's path: the per-player fields are written straight into the buffer libsrtp
        encrypts in place, so a packet shared by many players is copied once per player (the plain
        `protect_rtp` path copies it four times), and that buffer is one for the whole process, so
        it stays in the cache from one player to the next. The result is a view of it: send it
        before the next call on any session (the event loop's thread only). ValueError as for
        `protect_rtp`. (With `GcmSender`: new bytes, protected the same way.)"""
        if self._gcm is not None:
            try:
                return self._gcm.protect_as(packet, sequence, timestamp, ssrc)  # type: ignore[no-any-return]
            except ValueError:
                self.counters["rtp_protect_failed"] += 1
                raise
        size = len(packet)
        if not 12 <= size <= _MAX_RTP_INPUT:
            self.counters["rtp_protect_failed"] += 1
            raise ValueError(f"cannot protect RTP packet of {size} bytes")
        _FANOUT_VIEW[:size] = packet
        SEQUENCE_TIMESTAMP_SSRC.pack_into(_FANOUT_VIEW, 2, sequence, timestamp, ssrc)
        _FANOUT_LENGTH[0] = size
        status = _lib.srtp_protect(self._tx_context, _FANOUT_BUFFER, _FANOUT_LENGTH)
        if status:
            self.counters["rtp_protect_failed"] += 1
            raise ValueError(f"cannot protect RTP packet: libsrtp status {status}")
        return _FANOUT_VIEW[: _FANOUT_LENGTH[0]]

    @property
    def fanout_handles(self) -> tuple[int, int]:
        """The outbound context's address and its protect function's (srtp_protect's signature), for
        the compiled fan-out (which protects as `protect_rtp_as` does; keep this session alive while
        it holds them)."""
        if self._gcm is not None:
            return self._gcm.handles  # type: ignore[no-any-return]
        context = int(_ffi.cast("uintptr_t", self._tx_context))
        return context, _PROTECT_ADDRESS

    def protect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP-protect one RTCP (compound) packet."""
        try:
            return bytes(self._tx.protect_rtcp(packet))
        except pylibsrtp.Error as error:
            self.counters["rtcp_protect_failed"] += 1
            raise ValueError(f"cannot protect RTCP packet: {error}") from None

    def unprotect_rtp(self, packet: bytes) -> bytes | None:
        """The RTP packet, or None if it is forged, corrupted or replayed."""
        return self._unprotect(_lib.srtp_unprotect, packet, "rtp_")

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The RTCP packet, or None if it is forged, corrupted or replayed."""
        return self._unprotect(_lib.srtp_unprotect_rtcp, packet, "rtcp_")

    def _unprotect(self, unprotect: Any, packet: bytes, counted_as: str) -> bytes | None:
        """A publisher's every packet comes here: libsrtp is called on the context directly, in one
        buffer for the process (as `protect_rtp_as` does), not through pylibsrtp's per-call setup."""
        size = len(packet)
        if size > _BUFFER:
            self.counters[counted_as + "error"] += 1
            return None
        _UNPROTECT_VIEW[:size] = packet
        _UNPROTECT_LENGTH[0] = size
        status = unprotect(self._rx_context, _UNPROTECT_BUFFER, _UNPROTECT_LENGTH)
        if status:
            self.counters[counted_as + _REFUSED.get(status, "error")] += 1
            return None
        return _UNPROTECT_VIEW[: _UNPROTECT_LENGTH[0]].tobytes()
