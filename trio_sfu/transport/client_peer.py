"""A browser's side of a WebRTC transport, sans-IO: ICE controlling, DTLS client, SRTP.

The counterpart of `trio_sfu.transport.peer.PeerTransport`, for a relay that plays a stream from
another worker or node (trio_sfu.cluster), tests and the benchmark's legs, with the same surface
(`receive`, `datagrams_to_send`, `get_timer`/`handle_timer`, `next_event`, `srtp`),
so one can be wired to the other in memory (`trio_sfu.testing.transport_pair`) or driven over a
socket. Like a browser it sends connectivity checks (nominating) until one is answered, then RFC 7675
consent checks, and answers the checks a full ICE peer sends back. It has one remote address: the
server's candidate (a relay's origin is a server too, ICE-lite with one candidate a family).
"""

from __future__ import annotations

import os
import random
from typing import Any, Final

from aioice import stun

from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint
from trio_sfu.transport.ice import check_stun_auth, ice_credential
from trio_sfu.transport.peer import DtlsSrtpTransport, Failure, TransportEvent, TransportState
from trio_sfu.wire.datagram import Address

ClientEvent = TransportEvent  # of them, a client peer gives Connected, Failed and PeerClosed

PRIORITY: Final = 0x6E7F1EFF  # a host candidate's, as Chromium computes it
MAX_PENDING: Final = 64


class ClientPeer(DtlsSrtpTransport):
    """One peer's transport towards `remote_address`, as the controlling ICE agent."""

    def __init__(
        self,
        *,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprints: tuple[tuple[str, str], ...],
        certificate: Certificate,
        remote_address: Address,
        now: float,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        dtls_server: bool = False,
        check_interval: float = 0.05,
        max_check_interval: float = 0.5,
        consent_interval: float = 5.0,
        consent_timeout: float = 30.0,
        handshake_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.local_ufrag = local_ufrag or ice_credential(8)
        self.local_pwd = local_pwd or ice_credential(24)
        self.remote_ufrag = remote_ufrag
        self.remote_address = remote_address
        self._remote_key = remote_pwd.encode()
        self._local_key = self.local_pwd.encode()
        self._tie_breaker = int.from_bytes(os.urandom(8), "big")
        self._check_interval = check_interval
        self._max_check_interval = max_check_interval
        self.consent_interval = consent_interval
        self.consent_timeout = consent_timeout
        self.handshake_timeout = handshake_timeout
        self._rng = rng or random.Random()
        super().__init__(
            DtlsEndpoint(
                certificate,
                server=dtls_server,
                remote_fingerprints=remote_fingerprints,
                handshake_timeout=handshake_timeout,
            )
        )
        self._pending: dict[bytes, bool] = {}  # transaction id -> nominating
        self._started_at = now
        self._ice_connected = False
        self._last_response = now
        self._next_check = now
        self.handle_timer(now)  # the first check, at once

    # -- outputs -------------------------------------------------------------------------------------

    @property
    def ice_connected(self) -> bool:
        return self._ice_connected

    def get_timer(self) -> float | None:
        if self.ended:
            return None
        if self._ice_connected:
            deadline = min(self._next_check, self._last_response + self.consent_timeout)
        else:
            deadline = min(self._next_check, self._started_at + self.handshake_timeout)
        dtls_deadline = self.dtls.next_deadline()
        return deadline if dtls_deadline is None else min(deadline, dtls_deadline)

    # -- inputs --------------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """A STUN or DTLS datagram from the server (media goes through `srtp` on the caller's path)."""
        if self.ended or not data:
            return
        first = data[0]
        if first < 4:
            self._on_stun(data, source, now)
        elif 20 <= first <= 63:
            self._on_dtls(data, now)
        else:
            self.counters["not_stun_or_dtls"] += 1

    def handle_timer(self, now: float) -> None:
        if self.ended:
            return
        for out in self.dtls.handle_timeout(now):
            self._send(out)
        self._after_dtls()
        if self.ended:
            return
        if not self._ice_connected:
            if now >= self._started_at + self.handshake_timeout:
                self._fail(Failure.ICE, f"no ICE check answered in {self.handshake_timeout:g} s")
            elif now >= self._next_check:
                self._send_check(nominate=True)
                self._check_interval = min(self._check_interval * 2, self._max_check_interval)
                self._next_check = now + self._check_interval
            return
        if now >= self._last_response + self.consent_timeout:
            self._fail(Failure.CONSENT_EXPIRED, f"no consent response for {self.consent_timeout:g} s")
        elif now >= self._next_check:
            self._send_check(nominate=False)
            # Jittered, as RFC 7675 asks (0.8 to 1.2 of the interval).
            self._next_check = now + self.consent_interval * (0.8 + 0.4 * self._rng.random())

    def close(self) -> None:
        """Leave on purpose: close_notify to the server (what aiortc's close() does)."""
        if self.ended:
            return
        for out in self.dtls.close():
            self._send(out)
        self.state = TransportState.CLOSED

    # -- ICE -----------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._outgoing.append((data, self.remote_address))

    def _send_check(self, *, nominate: bool) -> None:
        attributes: dict[str, Any] = {
            "USERNAME": f"{self.remote_ufrag}:{self.local_ufrag}",
            "PRIORITY": PRIORITY,
            "ICE-CONTROLLING": self._tie_breaker,
        }
        if nominate:
            attributes["USE-CANDIDATE"] = None
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes=attributes)
        message.add_message_integrity(self._remote_key)  # and FINGERPRINT, last
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()
        self._pending[message.transaction_id] = nominate
        self.counters["stun_requests"] += 1
        self._send(bytes(message))

    def _on_stun(self, data: bytes, source: Address, now: float) -> None:
        try:
            message = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, struct.error, UnicodeDecodeError...
            self.counters["stun_malformed"] += 1
            return
        if message.message_class == stun.Class.REQUEST:
            self._answer_check(message, data, source)
            return
        if message.transaction_id not in self._pending:
            self.counters["stun_unexpected"] += 1
            return
        if message.message_class != stun.Class.RESPONSE:
            self.counters["stun_error_response"] += 1
            return
        if check_stun_auth(data, self._remote_key) is not None:
            self.counters["stun_bad_auth"] += 1
            return
        nominated = self._pending.pop(message.transaction_id)
        self.counters["stun_responses"] += 1
        self._last_response = max(self._last_response, now)
        if nominated and not self._ice_connected:
            self._ice_connected = True
            self.state = TransportState.CONNECTING
            self._next_check = now + self.consent_interval
            for out in self.dtls.start(now):
                self._send(out)
            self._after_dtls()

    def _answer_check(self, message: stun.Message, data: bytes, source: Address) -> None:
        """A full ICE peer (Janus's libnice, even in lite mode) checks us too: answer as a browser."""
        if (
            message.message_method != stun.Method.BINDING
            or message.attributes.get("USERNAME") != f"{self.local_ufrag}:{self.remote_ufrag}"
            or check_stun_auth(data, self._local_key) is not None
        ):
            self.counters["stun_bad_request"] += 1
            return
        response = stun.Message(
            stun.Method.BINDING,
            stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
            attributes={"XOR-MAPPED-ADDRESS": source},
        )
        response.add_message_integrity(self._local_key)
        self.counters["stun_checks_answered"] += 1
        self._outgoing.append((bytes(response), source))

    # -- DTLS ----------------------------------------------------------------------------------------

    def _on_dtls(self, data: bytes, now: float) -> None:
        for out in self.dtls.receive(data, now):
            self._send(out)
        self._after_dtls()
