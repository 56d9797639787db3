"""A sans-IO ICE-lite agent (RFC 8445 lite implementation) with RFC 7675 consent freshness.

The server never sends checks: it answers authenticated Binding requests, learns the peer's addresses
from them, follows the peer's USE-CANDIDATE nominations, and declares the session dead when nothing
authenticated has arrived for `consent_timeout` seconds. Bytes and time come in, responses and events
go out; the Trio transport moves them to and from the socket.

Anything that fails authentication is dropped silently and counted: answering forged requests (even with
a 401) would make the server an amplifier, and a peer must not be able to grow our state.
"""

from __future__ import annotations

import binascii
import collections
import hmac
import ipaddress
import secrets
import string
import struct
from typing import Final

import attrs
from aioice import stun

from trio_sfu.wire.datagram import Address

_MESSAGE_INTEGRITY: Final = 0x0008
_FINGERPRINT: Final = 0x8028
_HEADER: Final = 20
_MAGIC_COOKIE: Final = 0x2112A442
_FINGERPRINT_XOR: Final = 0x5354554E
ROLE_CONFLICT: Final = 487


@attrs.frozen
class StunResponse:
    """Bytes to send back to `address` (always the request's source)."""

    data: bytes
    address: Address


@attrs.frozen
class CandidateValidated:
    """First valid check from a new address: DTLS (and media) from it may be accepted."""

    address: Address


@attrs.frozen
class PairSelected:
    """USE-CANDIDATE on an address other than the current one: send media there from now on."""

    address: Address
    previous: Address | None


@attrs.frozen
class CandidateEvicted:
    """An address fell out of the bounded validated set: stop accepting datagrams from it."""

    address: Address


IceEvent = CandidateValidated | PairSelected | CandidateEvicted


def _with_length(data: bytes, end: int, extra: int) -> bytes:
    """The bytes before `end` with the header length rewritten as if the message ended `extra` later."""
    return data[:2] + struct.pack("!H", end - _HEADER + extra) + data[4:end]


def check_stun_auth(data: bytes, key: bytes) -> str | None:
    """Verify FINGERPRINT (if present) and MESSAGE-INTEGRITY on the raw datagram; a drop reason or None.

    Done on the bytes as received rather than on a re-serialisation, because padding and attribute
    order from other stacks differ from aioice's (RFC 5769 pads with spaces).
    """
    if len(data) < _HEADER:
        return "malformed"
    length, cookie = struct.unpack_from("!HI", data, 2)
    if cookie != _MAGIC_COOKIE or length != len(data) - _HEADER or length % 4:
        return "malformed"
    integrity_at: int | None = None
    integrity = b""
    pos = _HEADER
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            return "malformed"
        if attr_type == _FINGERPRINT:
            if attr_len != 4 or end != len(data):
                return "bad_fingerprint"
            (value,) = struct.unpack_from("!I", data, pos + 4)
            expected = binascii.crc32(_with_length(data, pos, 8)) ^ _FINGERPRINT_XOR
            if value != expected:
                return "bad_fingerprint"
            break
        if attr_type == _MESSAGE_INTEGRITY and integrity_at is None:
            if attr_len != 20:
                return "bad_integrity"
            integrity_at = pos
            integrity = data[pos + 4 : end]
        # Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are ignored: RFC 8489 section 14.5.
        pos = end + (-attr_len % 4)
    if integrity_at is None:
        return "no_integrity"
    expected_mac = hmac.new(key, _with_length(data, integrity_at, 24), "sha1").digest()
    if not hmac.compare_digest(integrity, expected_mac):
        return "bad_integrity"
    return None


def _valid_address(address: Address) -> bool:
    try:
        ipaddress.ip_address(address[0])
    except (ValueError, TypeError, IndexError):
        return False
    return 0 <= address[1] <= 0xFFFF


class IceLiteAgent:
    """One session's ICE-lite state: the credentials, the validated addresses, the selection, consent.

    Always the controlled agent (RFC 8445 section 6.1.1): a lite agent never nominates, it follows.
    """

    MAX_VALIDATED = 16

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        *,
        consent_timeout: float = 30.0,
        now: float,
        max_validated: int = MAX_VALIDATED,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.remote_ufrag = remote_ufrag
        # remote_pwd would sign checks we send; a lite agent sends none, so it is only kept for symmetry.
        self.remote_pwd = remote_pwd
        self._username = f"{local_ufrag}:{remote_ufrag}"
        self._key = local_pwd.encode("utf-8")
        self.consent_timeout = consent_timeout
        self._max_validated = max(2, max_validated)
        self._validated: collections.OrderedDict[Address, None] = collections.OrderedDict()
        self._selected: Address | None = None
        self._last_refresh = now
        self.counters: collections.Counter[str] = collections.Counter()
        self.checks_answered = 0

    # -- queries -------------------------------------------------------------------------------------

    def is_validated(self, address: Address) -> bool:
        return address in self._validated

    @property
    def selected(self) -> Address | None:
        return self._selected

    @property
    def validated(self) -> list[Address]:
        """Validated addresses, least recently checked first."""
        return list(self._validated)

    def consent_deadline(self) -> float:
        return self._last_refresh + self.consent_timeout

    def consent_expired(self, now: float) -> bool:
        return now >= self.consent_deadline()

    # -- inputs --------------------------------------------------------------------------------------

    def media_received(self, source: Address, now: float) -> None:
        """Media proves liveness only from the selected address: anything else may be spoofed."""
        if self._selected is not None and source == self._selected:
            self._refresh(now)

    def handle_stun(
        self, message: stun.Message, data: bytes, source: Address, now: float
    ) -> tuple[StunResponse | None, list[IceEvent]]:
        """Answer one STUN datagram already parsed by the mux; `data` is the datagram as received."""
        if message.message_method != stun.Method.BINDING or message.message_class != stun.Class.REQUEST:
            return self._drop("not_binding_request")
        attributes = message.attributes if isinstance(message.attributes, dict) else {}
        if attributes.get("USERNAME") != self._username:
            return self._drop("bad_username")
        reason = check_stun_auth(data, self._key)
        if reason is not None:
            return self._drop(reason)
        if not isinstance(message.transaction_id, bytes) or len(message.transaction_id) != 12:
            return self._drop("malformed")
        if not _valid_address(source):
            return self._drop("bad_source")

        if "ICE-CONTROLLED" in attributes:
            # The peer thinks it is controlled too. A lite agent cannot take the controlling role, so it
            # always tells the peer to switch (RFC 8445 section 7.3.1.1), whatever the tie-breakers.
            self.counters["role_conflict"] += 1
            error = stun.Message(
                stun.Method.BINDING,
                stun.Class.ERROR,
                transaction_id=message.transaction_id,
                attributes={"ERROR-CODE": (ROLE_CONFLICT, "Role Conflict")},
            )
            return StunResponse(self._sign(error), source), []

        success = stun.Message(
            stun.Method.BINDING,
            stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
            attributes={"XOR-MAPPED-ADDRESS": source},
        )
        response = StunResponse(self._sign(success), source)
        self.checks_answered += 1
        self._refresh(now)
        return response, self._learn(source, nominated="USE-CANDIDATE" in attributes)

    # -- internals -----------------------------------------------------------------------------------

    def _drop(self, reason: str) -> tuple[None, list[IceEvent]]:
        self.counters[reason] += 1
        return None, []

    def _sign(self, message: stun.Message) -> bytes:
        message.add_message_integrity(self._key)  # also adds FINGERPRINT, last
        return bytes(message)

    def _refresh(self, now: float) -> None:
        self._last_refresh = max(self._last_refresh, now)

    def _learn(self, source: Address, *, nominated: bool) -> list[IceEvent]:
        events: list[IceEvent] = []
        if source in self._validated:
            self._validated.move_to_end(source)
        else:
            self._validated[source] = None
            events.append(CandidateValidated(source))
        if nominated and source != self._selected:
            previous, self._selected = self._selected, source
            events.append(PairSelected(source, previous))
        while len(self._validated) > self._max_validated:
            # The selected address and the one just checked are never evicted (max_validated >= 2).
            oldest = next(a for a in self._validated if a not in (self._selected, source))
            del self._validated[oldest]
            events.append(CandidateEvicted(oldest))
        return events


_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def ice_credential(length: int) -> str:
    """A random ufrag or password (RFC 8839 ice-char), from the system's secure source."""
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))
