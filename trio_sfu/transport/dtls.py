"""DTLS 1.2 endpoint for DTLS-SRTP (RFC 5763/5764), sans-IO on pyOpenSSL memory BIOs.

Bytes and time go in, datagrams and the next deadline come out: no sockets, no Trio. The peer is
authenticated by the SDP fingerprint of its self-signed certificate, not by a chain.

Retransmission runs on the caller's clock (initial_timeout doubling to max_timeout), because
OpenSSL's own DTLS timer runs on wall time, starts at 1 s and cannot be set from pyOpenSSL; OpenSSL's
timer is defused before every read. Three more things OpenSSL does not do for a memory-BIO user are
done here: a repeated peer flight is answered at once (OpenSSL ignores it during the handshake), a
server re-sends its final flight when the client repeats its own (OpenSSL drops an identical copy as a
replay), and every epoch-0 record gets a fresh record number on the wire (see `DtlsEndpoint._emit`).

Known limit, inherent in DTLS 1.2: epoch-0 records are unauthenticated, so an attacker able to spoof
the peer's address during the handshake can kill it with a forged alert or a well-formed but bogus
handshake message. Structurally invalid records are dropped before OpenSSL sees them, and nothing
unauthenticated can harm the connection once it is established.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import struct
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from trio_sfu.transport.certificate import FINGERPRINT_HASHES, Certificate, fingerprint_of_der
from trio_sfu.transport.dtls_records import ALERT_NAMES, RecordOpener

__all__ = ["DtlsEndpoint", "DtlsState", "SrtpKeys", "SrtpProfile"]


class SrtpProfile(enum.Enum):
    """DTLS-SRTP protection profiles (RFC 5764, RFC 7714), valued by OpenSSL's names."""

    AEAD_AES_128_GCM = "SRTP_AEAD_AES_128_GCM"
    AES_CM_128_HMAC_SHA1_80 = "SRTP_AES128_CM_SHA1_80"

    @property
    def key_length(self) -> int:
        return 16

    @property
    def salt_length(self) -> int:
        return 12 if self is SrtpProfile.AEAD_AES_128_GCM else 14


@attrs.frozen
class SrtpKeys:
    """What SRTP needs from the handshake; each key is master key || master salt."""

    profile: SrtpProfile
    local_key: bytes = attrs.field(repr=False)
    remote_key: bytes = attrs.field(repr=False)


class DtlsState(enum.Enum):
    NEW = "new"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)
"""ECDHE only, AEAD first; the CBC suites are what older WebRTC stacks fall back to."""

MIN_MTU = 256
"""OpenSSL cannot send a ClientHello in smaller datagrams."""

REPEAT_SPACING = 0.05
"""Answer a repeated peer flight at most this often: a flight spread over datagrams counts once."""

DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL exports no DTLS version constants
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
_HEADER = struct.Struct("!BBBHHIH")  # type, version major/minor, epoch, seq (48 bits), length
_HEADER_LEN = 13
_HANDSHAKE_HEADER_LEN = 12
_CHANGE_CIPHER_SPEC, _ALERT, _HANDSHAKE, _APPLICATION_DATA = 20, 21, 22, 23
# Strongest first: RFC 8122 §5 says to check against the peer's fingerprints of the best hash we share.
_ALGORITHM_PREFERENCE = ("sha-512", "sha-384", "sha-256", "sha-1")
_VERIFY_MODE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


@functools.lru_cache(maxsize=32)
def _context(certificate: Certificate, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
    """One context per certificate and profile list: parsing the key per session would be waste.

    Role and fingerprint check are per connection, so client and server share it.
    """
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_min_proto_version(DTLS1_2_VERSION)
    cert, key = certificate.cryptography_objects()
    context.use_certificate(cert)
    context.use_privatekey(key)
    context.check_privatekey()
    context.set_cipher_list(CIPHERS)
    context.set_tlsext_use_srtp(b":".join(profile.value.encode() for profile in profiles))
    # NO_QUERY_MTU: memory BIOs know no path MTU; keep the one we set. No resumption or renegotiation:
    # every WebRTC session is a fresh full handshake.
    context.set_options(
        SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_verify(_VERIFY_MODE, _reject_unchecked)
    return context


def _reject_unchecked(*_args: Any) -> bool:
    """The context's callback; every connection installs its own fingerprint check instead."""
    return False


@attrs.frozen
class _Record:
    type: int
    epoch: int
    message_seq: int | None  # epoch-0 handshake records only
    data: bytes = attrs.field(repr=False)  # the whole record, header included


def _parse_records(data: bytes) -> tuple[bytes, list[_Record], int]:
    """Keep the records OpenSSL should see; return them, what they are, and how many were dropped.

    OpenSSL aborts a handshake on some malformed epoch-0 records (an epoch-0 application data
    record, an unknown content type, an inconsistent handshake header), so those never reach it.
    """
    kept: list[bytes] = []
    records: list[_Record] = []
    dropped = 0
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER_LEN:
            dropped += 1
            break
        content_type, major, _minor, epoch, _seq_hi, _seq_lo, length = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER_LEN + length
        if major != 0xFE or not _CHANGE_CIPHER_SPEC <= content_type <= _APPLICATION_DATA:
            dropped += 1
            break  # not DTLS: the rest cannot be framed
        if end > len(data):
            dropped += 1
            break
        body = data[offset + _HEADER_LEN : end]
        record = data[offset:end]
        offset = end
        message_seq = None
        if epoch == 0:
            if not _plausible_epoch0(content_type, body):
                dropped += 1
                continue
            if content_type == _HANDSHAKE:
                message_seq = int.from_bytes(body[4:6], "big")
        elif length == 0:
            dropped += 1
            continue
        kept.append(record)
        records.append(_Record(content_type, epoch, message_seq, record))
    return b"".join(kept), records, dropped


def _plausible_epoch0(content_type: int, body: bytes) -> bool:
    if content_type == _CHANGE_CIPHER_SPEC:
        return body == b"\x01"
    if content_type == _ALERT:
        return len(body) == 2 and body[0] in (1, 2)
    if content_type == _HANDSHAKE:
        if len(body) < _HANDSHAKE_HEADER_LEN:
            return False
        message_length = int.from_bytes(body[1:4], "big")
        fragment_offset = int.from_bytes(body[6:9], "big")
        fragment_length = int.from_bytes(body[9:12], "big")
        return (
            fragment_length == len(body) - _HANDSHAKE_HEADER_LEN
            and fragment_offset + fragment_length <= message_length
        )
    return False  # application data is never sent in epoch 0


def _split_datagrams(data: bytes, mtu: int) -> list[bytes]:
    """Cut what OpenSSL wrote into datagrams of whole records no larger than the MTU.

    A memory BIO loses OpenSSL's datagram boundaries; OpenSSL packs records greedily up to the MTU
    during the handshake, so packing them the same way gives the same datagrams.
    """
    datagrams: list[bytes] = []
    start = offset = 0
    while offset + _HEADER_LEN <= len(data):
        length = int.from_bytes(data[offset + 11 : offset + 13], "big")
        end = offset + _HEADER_LEN + length
        if end > len(data):
            break
        if end - start > mtu and offset > start:
            datagrams.append(data[start:offset])
            start = offset
        offset = end
    if start < len(data):
        datagrams.append(data[start:])
    return datagrams


def _error_text(error: SSL.Error) -> str:
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return "; ".join(reasons) or str(error) or type(error).__name__


CURVE_ADVICE = (
    " (the peer's certificate key is on an elliptic curve this server's OpenSSL lacks: FFmpeg's WHIP "
    "client makes a P-224 one by default; give it a P-256 certificate with its cert_file and key_file "
    "options)"
)


def _failure_text(error: SSL.Error) -> str:
    text = _error_text(error)
    for prefix in ("tls alert ", "sslv3 alert ", "tlsv1 alert "):
        if text.startswith(prefix):
            return f"DTLS alert: {text.removeprefix(prefix)}"
    if "wrong curve" in text:
        return f"DTLS error: {text}{CURVE_ADVICE}"
    return f"DTLS error: {text}"


class DtlsEndpoint:
    """One side of a DTLS-SRTP association.

    `start`, `receive` and `handle_timeout` return the datagrams to send; `next_deadline` says when to
    call `handle_timeout`. None of them raises on anything the network sends.
    """

    def __init__(
        self,
        certificate: Certificate,
        *,
        server: bool,
        remote_fingerprints: Sequence[tuple[str, str]],
        profiles: Sequence[SrtpProfile] = (SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80),
        initial_timeout: float = 0.1,
        max_timeout: float = 3.0,
        handshake_timeout: float = 30.0,
        mtu: int = 1200,
    ) -> None:
        if not profiles:
            raise ValueError("at least one SRTP profile is needed")
        if not 0 < initial_timeout <= max_timeout:
            raise ValueError("need 0 < initial_timeout <= max_timeout")
        if mtu < MIN_MTU:
            raise ValueError(f"DTLS needs an MTU of at least {MIN_MTU} bytes, not {mtu}")
        self.server = server
        self.profiles = tuple(profiles)
        self.initial_timeout = initial_timeout
        self.max_timeout = max_timeout
        self.handshake_timeout = handshake_timeout
        self.mtu = mtu
        self.state = DtlsState.NEW
        self.failure: str | None = None
        self.keys: SrtpKeys | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self._algorithm, self._expected = self._choose_fingerprints(remote_fingerprints)
        self._verify_failure: str | None = None

        self._conn = SSL.Connection(_context(certificate, self.profiles), None)
        self._conn.set_verify(_VERIFY_MODE, self._verify)
        self._conn.set_ciphertext_mtu(mtu)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()

        self._started_at = 0.0
        self._flight: list[bytes] = []  # our last flight, for retransmission
        self._last_sent = float("-inf")
        self._interval = initial_timeout
        self._retransmit_at: float | None = None
        self._peer_message_seq = -1  # highest epoch-0 handshake message_seq seen from the peer
        self._epoch0_sequence = 0  # next epoch-0 record number on the wire (see _emit)
        # Once connected with an AEAD suite, OpenSSL's state is freed (_retire_openssl): the peer's
        # records are read with `_opener`, and `_goodbye` is our close_notify, written beforehand.
        self._opener: RecordOpener | None = None
        self._goodbye: list[bytes] = []

    # -- public API ---------------------------------------------------------------------------------

    def start(self, now: float) -> list[bytes]:
        """Begin the handshake clock; a client also sends its ClientHello."""
        return self._emit(self._start(now))

    def _start(self, now: float) -> list[bytes]:
        if self.state is not DtlsState.NEW:
            return []
        self._started_at = now
        self.state = DtlsState.HANDSHAKING
        if not self._expected:
            names = ", ".join(FINGERPRINT_HASHES)
            self._fail(f"no certificate fingerprint with a supported hash function ({names}) in the SDP")
            return []
        if self.server:
            return []
        return self._drive_handshake(now, [])

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Feed one datagram from the peer; return the datagrams to send back."""
        return self._emit(self._receive(data, now))

    def _receive(self, data: bytes, now: float) -> list[bytes]:
        if self.state in (DtlsState.FAILED, DtlsState.CLOSED):
            self.counters["ignored_datagrams"] += 1
            return []
        clean, records, dropped = _parse_records(bytes(data))
        if dropped:
            self.counters["bad_record"] += dropped
        if not clean:
            return []
        out: list[bytes] = []
        if self.state is DtlsState.NEW:
            if not any(record.message_seq is not None for record in records):
                self.counters["ignored_datagrams"] += 1
                return []  # a handshake starts with an epoch-0 handshake message, nothing else
            out = self._start(now)
            if self.failure is not None:
                return out
        self.counters["datagrams_in"] += 1
        if self._opener is not None:
            return out + self._drive_retired(now, records)
        if self.state is DtlsState.HANDSHAKING:
            self._absorb_openssl_timer()
        self._conn.bio_write(clean)
        if self.state is DtlsState.HANDSHAKING:
            return out + self._drive_handshake(now, records)
        return out + self._drive_connected(now, records)

    def handle_timeout(self, now: float) -> list[bytes]:
        """Fail a handshake that took too long, or re-send our last flight when it is due."""
        return self._emit(self._handle_timeout(now))

    def _handle_timeout(self, now: float) -> list[bytes]:
        if self.state is not DtlsState.HANDSHAKING:
            return []
        if now >= self._started_at + self.handshake_timeout:
            self._fail("DTLS handshake timed out")
            return []
        if self._retransmit_at is None or now < self._retransmit_at:
            return []
        self._absorb_openssl_timer()
        self.counters["retransmits"] += 1
        self._interval = min(self._interval * 2, self.max_timeout)
        return self._resend(now)

    def resend_flight(self, now: float) -> list[bytes]:
        """Our current flight again, now: a client that started before it knew where its peer was
        (ICE had not validated an address yet) sends its ClientHello as soon as it does."""
        if self.state is not DtlsState.HANDSHAKING or not self._flight:
            return []
        return self._emit(self._resend(now))

    @property
    def openssl_freed(self) -> bool:
        """Connected with an AEAD suite, and OpenSSL's state freed: the peer's records are read here."""
        return self._opener is not None

    def next_deadline(self) -> float | None:
        if self.state is not DtlsState.HANDSHAKING:
            return None
        deadline = self._started_at + self.handshake_timeout
        if self._retransmit_at is not None:
            deadline = min(deadline, self._retransmit_at)
        return deadline

    def close(self) -> list[bytes]:
        """Send close_notify (when there is a connection to close) and stop."""
        out: list[bytes] = []
        if self._opener is not None:
            out = self._goodbye if self.state is DtlsState.CONNECTED else []
        elif self.state in (DtlsState.HANDSHAKING, DtlsState.CONNECTED):
            with contextlib.suppress(SSL.Error):  # e.g. during the handshake: nothing to say
                self._conn.shutdown()
            out = self._drain()
        if self.state is not DtlsState.FAILED:
            self.state = DtlsState.CLOSED
        self._retransmit_at = None
        self._flight = []
        return self._emit(out)

    # -- internals ----------------------------------------------------------------------------------

    @staticmethod
    def _choose_fingerprints(fingerprints: Sequence[tuple[str, str]]) -> tuple[str, frozenset[str]]:
        by_algorithm: dict[str, set[str]] = {}
        for algorithm, value in fingerprints:
            by_algorithm.setdefault(algorithm.strip().lower(), set()).add(value.strip().upper())
        for algorithm in _ALGORITHM_PREFERENCE:
            if algorithm in by_algorithm:
                return algorithm, frozenset(by_algorithm[algorithm])
        return "", frozenset()

    def _fingerprint_ok(self, der: bytes) -> bool:
        return bool(self._expected) and fingerprint_of_der(der, self._algorithm) in self._expected

    def _verify(self, _conn: SSL.Connection, x509: Any, _errno: int, depth: int, _ok: int) -> bool:
        """Accept any chain (self-signed is normal); the leaf must match the SDP fingerprint."""
        if depth != 0:
            return True
        try:
            der = x509.to_cryptography().public_bytes(serialization.Encoding.DER)
        except Exception:  # never let an exception escape into OpenSSL's callback
            self._verify_failure = "cannot read the peer's certificate"
            return False
        if self._fingerprint_ok(der):
            return True
        self._verify_failure = "certificate fingerprint does not match the SDP"
        return False

    def _emit(self, datagrams: list[bytes]) -> list[bytes]:
        """Number every epoch-0 record afresh as it leaves, then count.

        A repeated flight must not reuse record numbers: a peer that saw a record but could not use it
        yet (OpenSSL drops a ChangeCipherSpec that overtook the messages before it) then drops every
        identical copy as a replay, and OpenSSL only renumbers when its own 1 s wall-clock timer fires.
        Epoch-0 records carry no MAC, and the handshake hashes messages, not record headers, so the
        numbers are ours to choose; later epochs are encrypted over their number and left alone.
        """
        self.counters["datagrams_out"] += len(datagrams)
        return [self._renumber(datagram) for datagram in datagrams]

    def _renumber(self, datagram: bytes) -> bytes:
        buffer: bytearray | None = None
        offset = 0
        while offset + _HEADER_LEN <= len(datagram):
            epoch = int.from_bytes(datagram[offset + 3 : offset + 5], "big")
            if epoch == 0:
                if buffer is None:
                    buffer = bytearray(datagram)
                buffer[offset + 5 : offset + 11] = self._epoch0_sequence.to_bytes(6, "big")
                self._epoch0_sequence += 1
            offset += _HEADER_LEN + int.from_bytes(datagram[offset + 11 : offset + 13], "big")
        return datagram if buffer is None else bytes(buffer)

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self.failure = reason
        self._retransmit_at = None
        self._flight = []
        self.counters["failures"] += 1

    def _drain(self) -> list[bytes]:
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(65536))
            except SSL.Error:  # WantReadError: empty
                break
        data = b"".join(chunks)
        if not data:
            return []
        return _split_datagrams(data, self.mtu)

    def _absorb_openssl_timer(self) -> None:
        """Let OpenSSL's wall-clock timer fire now and throw away what it re-sends.

        Left alone, OpenSSL re-sends from inside the next read once its timer has expired, which would
        double our own schedule and look like a new flight. Our copy of the flight is the same bytes.
        """
        remaining = self._conn.DTLSv1_get_timeout()
        if remaining is None or remaining > 0:
            return
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error:
            return  # the next handshake step reports it
        self._drain()
        self.counters["openssl_timer_absorbed"] += 1

    def _resend(self, now: float) -> list[bytes]:
        self._last_sent = now
        self._retransmit_at = now + self._interval
        return list(self._flight)

    def _new_flight(self, datagrams: list[bytes], now: float) -> list[bytes]:
        self._flight = datagrams
        self._interval = self.initial_timeout
        self._last_sent = now
        self._retransmit_at = now + self._interval
        return list(datagrams)

    def _peer_repeated(self, records: list[_Record]) -> bool:
        """Did this datagram only repeat handshake messages the peer sent before?"""
        seqs = [record.message_seq for record in records if record.message_seq is not None]
        repeated = bool(seqs) and max(seqs) <= self._peer_message_seq
        if seqs:
            self._peer_message_seq = max(self._peer_message_seq, *seqs)
        return repeated

    def _answer_repeat(self, now: float) -> list[bytes]:
        """The peer lost our flight (RFC 6347 §4.2.4): send it again, unless we just did."""
        if not self._flight or now - self._last_sent < REPEAT_SPACING:
            return []
        self.counters["peer_retransmits"] += 1
        return self._resend(now)

    def _drive_handshake(self, now: float, records: list[_Record]) -> list[bytes]:
        repeated = self._peer_repeated(records)
        done = False
        try:
            self._conn.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self._fail("DTLS peer closed the connection during the handshake")
        except SSL.Error as error:
            self.counters["dtls_errors"] += 1
            self._fail(self._verify_failure or _failure_text(error))
        output = self._drain()
        if self.state is DtlsState.FAILED:
            return output  # our alert, if OpenSSL wrote one
        if done:
            return self._connected(now, output)
        if output:
            return self._new_flight(output, now)
        if repeated:
            return self._answer_repeat(now)
        return []

    def _connected(self, now: float, output: list[bytes]) -> list[bytes]:
        peer = self._conn.get_peer_certificate(as_cryptography=True)
        profile_name = self._conn.get_selected_srtp_profile().decode()
        profile = next((p for p in self.profiles if p.value == profile_name), None)
        if peer is None or not self._fingerprint_ok(peer.public_bytes(serialization.Encoding.DER)):
            return output + self._fail_connected(
                self._verify_failure or "certificate fingerprint does not match the SDP"
            )
        if profile is None:
            return output + self._fail_connected("the peer negotiated no SRTP profile we offered")
        self.keys = self._export_keys(profile)
        self.state = DtlsState.CONNECTED
        self._retransmit_at = None
        # A server's last flight (ChangeCipherSpec, Finished) is answered by nobody: keep it, to send
        # again when the client repeats its own last flight. A client has nothing to repeat.
        self._flight = output if self.server else []
        self._last_sent = now
        output = output + self._read_application()
        if self.state is DtlsState.CONNECTED:
            self._retire_openssl()
        return output

    def _retire_openssl(self) -> None:
        """Free OpenSSL's connection (40-90 KB) once nothing but alerts is left to it: keep the peer's
        record key to read its alerts (see dtls_records), and write our close_notify now for close().
        Our last flight, for a client that repeats its own, is kept in `_flight` as before."""
        conn = self._conn
        master, client_random, server_random = conn.master_key(), conn.client_random(), conn.server_random()
        opener = None
        if master is not None and client_random is not None and server_random is not None:
            opener = RecordOpener.for_peer(
                conn.get_cipher_name() or "", master, client_random, server_random, server=self.server
            )
        if opener is None:  # a CBC suite (older stacks): OpenSSL keeps reading the peer's records
            self.counters["openssl_kept"] += 1
            return
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
        self._goodbye = self._drain()
        self._opener = opener
        self._conn = None  # type: ignore[assignment]

    def _drive_retired(self, now: float, records: list[_Record]) -> list[bytes]:
        """`_drive_connected` without OpenSSL: the peer's repeated flight, its alerts; data is ignored."""
        assert self._opener is not None
        if self.state is not DtlsState.CONNECTED:
            return []
        repeated = False
        for record in records:
            if record.epoch == 0:
                repeated = repeated or record.type in (_HANDSHAKE, _CHANGE_CIPHER_SPEC)
                continue
            plain = self._opener.open(record.data)
            if plain is None:
                self.counters["bad_record"] += 1
                continue
            if record.type == _HANDSHAKE:  # the peer's Finished again: it repeats its last flight
                repeated = True
            elif record.type == _ALERT and len(plain) == 2:
                return self._peer_alert(plain[0], plain[1])
            else:
                self.counters["app_data_ignored"] += 1
        if repeated and self.server:
            return self._answer_repeat(now)
        return []

    def _peer_alert(self, level: int, description: int) -> list[bytes]:
        if description == 0:  # close_notify: answer with ours, as OpenSSL does
            self.state = DtlsState.CLOSED
            self._flight = []
            return self._goodbye
        if level == 2:
            self.counters["dtls_errors"] += 1
            self._fail(f"DTLS alert: {ALERT_NAMES.get(description, f'description {description}')}")
        else:
            self.counters["warning_alerts"] += 1
        return []

    def _fail_connected(self, reason: str) -> list[bytes]:
        """Refuse a completed handshake; close_notify is the only way left to tell the peer."""
        self._fail(reason)
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        return self._drain()

    def _export_keys(self, profile: SrtpProfile) -> SrtpKeys:
        """RFC 5764 §4.2: client key, server key, client salt, server salt."""
        key_len, salt_len = profile.key_length, profile.salt_length
        material = self._conn.export_keying_material(_EXPORTER_LABEL, 2 * (key_len + salt_len))
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client, server = client_key + client_salt, server_key + server_salt
        if self.server:
            return SrtpKeys(profile, local_key=server, remote_key=client)
        return SrtpKeys(profile, local_key=client, remote_key=server)

    def _read_application(self) -> list[bytes]:
        """Process records after the handshake: alerts, close_notify, repeats; ignore data."""
        while True:
            try:
                data = self._conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.state = DtlsState.CLOSED
                with contextlib.suppress(SSL.Error):
                    self._conn.shutdown()  # answer with our close_notify
                self._flight = []
                break
            except SSL.Error as error:
                self.counters["dtls_errors"] += 1
                self._fail(_failure_text(error))
                break
            if data:
                self.counters["app_data_ignored"] += 1
        return self._drain()

    def _drive_connected(self, now: float, records: list[_Record]) -> list[bytes]:
        output = self._read_application()
        if self.state is not DtlsState.CONNECTED or not self.server:
            return output
        if any(record.type in (_HANDSHAKE, _CHANGE_CIPHER_SPEC) for record in records):
            # The client repeats its last flight: it missed our Finished. OpenSSL answers only a
            # Finished record it has not seen; an identical copy is dropped as a replay.
            if output:
                self._flight = output
                self._last_sent = now
                self.counters["peer_retransmits"] += 1
                return output
            return self._answer_repeat(now)
        return output
