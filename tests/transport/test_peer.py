"""The server's peer transport against the sans-IO client peer, in memory, on a clock the test owns.

ICE, DTLS and SRTP in the order a browser drives them, and the faults that end a transport: consent
expiry, lost DTLS flights, a fingerprint that does not match, a close during the handshake. Simulated
seconds cost microseconds here, so timeouts are asserted to the millisecond.
"""

from __future__ import annotations

import struct

import pytest
from aioice import stun

from trio_sfu.testing.transport_pair import (
    CLIENT_ADDRESS,
    TO_CLIENT,
    TO_SERVER,
    TransportPair,
    client_and_server,
)
from trio_sfu.transport.peer import (
    CandidateValidated,
    Connected,
    Failed,
    Failure,
    PairSelected,
    PeerClosed,
    TransportState,
)
from trio_sfu.wire.datagram import Kind, classify

WRONG_FINGERPRINT = (("sha-256", ":".join(["AB"] * 32)),)


def connect(pair: TransportPair) -> float:
    """Run until both sides are connected; the simulated time it took."""
    return pair.run_until(
        lambda: pair.client.state is TransportState.CONNECTED
        and pair.server.state is TransportState.CONNECTED,
        limit=5,
    )


def failures(events: list[object]) -> list[Failed]:
    return [e for e in events if isinstance(e, Failed)]


def test_ice_then_dtls_then_srtp_both_ways() -> None:
    pair = client_and_server()
    assert pair.server.state is TransportState.NEW
    took = connect(pair)
    assert took < 0.05  # no loss: one check, one handshake, no timer needed
    assert [type(e) for e in pair.server_events] == [CandidateValidated, PairSelected, Connected]
    assert pair.server.media_address == CLIENT_ADDRESS
    assert [type(e) for e in pair.client_events] == [Connected]
    assert pair.client.srtp is not None and pair.server.srtp is not None
    packet = struct.pack("!BBHII", 0x80, 96, 1, 90, 1234) + b"frame"
    assert pair.server.srtp.unprotect_rtp(pair.client.srtp.protect_rtp(packet)) == packet
    assert pair.client.srtp.unprotect_rtp(pair.server.srtp.protect_rtp(packet)) == packet


def test_server_as_dtls_client_says_hello_once_ice_validates() -> None:
    """a=setup:passive in the offer: the server is the DTLS client, and it may only speak once a check
    has told it where the peer is."""
    pair = client_and_server(client_dtls_server=True)
    assert pair.server.datagrams_to_send() == []  # nobody to say ClientHello to yet
    connect(pair)
    first_dtls = next(d for d in pair.delivered[TO_CLIENT] if classify(d) is Kind.DTLS)
    assert first_dtls[13] == 1  # handshake type ClientHello, from the server
    assert pair.server.state is pair.client.state is TransportState.CONNECTED


def test_dtls_from_an_unchecked_address_is_ignored() -> None:
    pair = client_and_server()
    pair.server.receive_dtls(b"\x16\xfe\xfd" + bytes(10), ("127.0.0.1", 1), 0.0)
    assert pair.server.counters["dtls_unvalidated"] == 1
    assert pair.server.datagrams_to_send() == [] and pair.server.state is TransportState.NEW


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_lost_server_flights_are_retransmitted_with_backoff(lost: int) -> None:
    """The server's DTLS flight is lost `lost` times: its retransmission clock (0.1 s, doubling)
    brings the handshake home, at the exact time the backoff says."""
    pair = client_and_server()
    remaining = [lost]

    def drop(direction: str, data: bytes) -> bool:
        if direction == TO_CLIENT and classify(data) is Kind.DTLS and remaining[0] > 0:
            remaining[0] -= 1
            return True
        return False

    pair.drop = drop
    took = connect(pair)
    expected = sum(0.1 * 2**i for i in range(lost))  # 0.1, 0.3, 0.7
    assert expected <= took <= expected + 0.02, took
    assert pair.server.dtls.counters["retransmits"] >= lost


def test_a_handshake_that_never_finishes_fails_at_the_handshake_timeout() -> None:
    pair = client_and_server(server_options={"handshake_timeout": 3.0})
    pair.drop = lambda direction, data: direction == TO_CLIENT and classify(data) is Kind.DTLS
    took = pair.run_until(lambda: pair.server.ended, limit=10)
    assert 3.0 <= took <= 3.01, took
    (failed,) = failures(pair.server_events)
    assert failed.failure is Failure.DTLS and "timed out" in failed.detail
    assert pair.server.get_timer() is None


def test_consent_expires_exactly_after_the_timeout_without_checks_or_media() -> None:
    pair = client_and_server(server_options={"consent_timeout": 30.0})
    connect(pair)
    pair.advance(12)  # consent checks flow (every ~5 s)
    pair.drop = lambda direction, data: direction == TO_SERVER  # the client goes silent
    last_refresh = pair.server.ice.consent_deadline() - 30.0
    took = pair.run_until(lambda: pair.server.ended, limit=60)
    (failed,) = failures(pair.server_events)
    assert failed.failure is Failure.CONSENT_EXPIRED
    # 30 s after the last check that arrived, to the 10 ms step of run_until; that check came at
    # most one consent interval (5 s, +20 % jitter) before the silence began.
    assert pair.now - last_refresh == pytest.approx(30.0, abs=0.011)
    assert 30.0 - 6.0 <= took <= 30.0 + 0.011, took


def test_media_keeps_consent_alive_without_checks() -> None:
    """Media from the selected address proves liveness (RFC 7675 lets either count)."""
    pair = client_and_server(server_options={"consent_timeout": 5.0})
    connect(pair)
    pair.drop = lambda direction, data: direction == TO_SERVER and classify(data) is Kind.STUN
    for _ in range(40):
        pair.advance(0.5)
        pair.server.media_received(CLIENT_ADDRESS, pair.now)
    assert not pair.server.ended
    pair.advance(5.0)  # media stops too
    assert [f.failure for f in failures(pair.server_events)] == [Failure.CONSENT_EXPIRED]


def test_media_from_another_address_does_not_count_as_consent() -> None:
    pair = client_and_server(server_options={"consent_timeout": 5.0})
    connect(pair)
    pair.drop = lambda direction, data: direction == TO_SERVER
    for _ in range(12):
        pair.advance(0.5)
        pair.server.media_received(("127.0.0.1", 9), pair.now)  # spoofable: not the selected pair
    assert pair.server.ended


def test_the_client_notices_a_silent_server() -> None:
    pair = client_and_server(client_options={"consent_timeout": 10.0})
    connect(pair)
    pair.drop = lambda direction, data: direction == TO_CLIENT
    pair.run_until(lambda: pair.client.ended, limit=20)
    assert [f.failure for f in failures(pair.client_events)] == [Failure.CONSENT_EXPIRED]


def test_client_rejects_a_server_with_another_fingerprint() -> None:
    pair = client_and_server(client_sees_fingerprints=WRONG_FINGERPRINT)
    pair.run_until(lambda: pair.client.ended and pair.server.ended, limit=15)
    (client_failure,) = failures(pair.client_events)
    assert client_failure.failure is Failure.DTLS and "fingerprint" in client_failure.detail
    (server_failure,) = failures(pair.server_events)
    assert server_failure.failure is Failure.DTLS
    assert pair.client.srtp is None and pair.server.srtp is None


def test_server_rejects_a_client_with_another_fingerprint() -> None:
    pair = client_and_server(server_sees_fingerprints=WRONG_FINGERPRINT)
    pair.run_until(lambda: pair.server.ended, limit=15)
    (failed,) = failures(pair.server_events)
    assert failed.failure is Failure.DTLS and "fingerprint" in failed.detail
    assert pair.server.srtp is None
    assert not any(isinstance(e, Connected) for e in pair.server_events)


def test_no_usable_fingerprint_fails_at_once() -> None:
    pair = client_and_server(server_sees_fingerprints=(("md5", "00:11"),))
    assert pair.server.ended
    (failed,) = [pair.server.next_event()]
    assert isinstance(failed, Failed) and "fingerprint" in failed.detail


def test_client_closing_during_the_handshake_ends_the_server_at_its_timeout() -> None:
    pair = client_and_server(server_options={"handshake_timeout": 2.0})
    pair.drop = lambda direction, data: direction == TO_CLIENT and classify(data) is Kind.DTLS
    pair.advance(0.05)  # ICE done, the server's first flight lost
    assert pair.server.state is TransportState.CONNECTING
    pair.client.close()
    pair.drop = lambda direction, data: False
    took = pair.run_until(lambda: pair.server.ended, limit=5)
    assert 1.9 <= took <= 2.0, took
    assert [f.failure for f in failures(pair.server_events)] == [Failure.DTLS]
    assert pair.server.srtp is None


def test_server_closing_during_the_handshake_sends_nothing_more() -> None:
    pair = client_and_server()
    pair.drop = lambda direction, data: direction == TO_CLIENT and classify(data) is Kind.DTLS
    pair.advance(0.05)
    pair.server.close()
    assert pair.server.state is TransportState.CLOSED and pair.server.get_timer() is None
    pair.server.datagrams_to_send()
    pair.advance(5)
    assert pair.server.datagrams_to_send() == []


def test_a_client_that_closes_dtls_has_left_on_purpose() -> None:
    pair = client_and_server()
    connect(pair)
    pair.client.close()
    pair.exchange()
    assert isinstance(pair.server_events[-1], PeerClosed)
    assert pair.server.state is TransportState.CLOSED and pair.server.get_timer() is None


def test_the_server_closing_tells_the_client() -> None:
    pair = client_and_server()
    connect(pair)
    pair.server.close()
    pair.exchange()
    assert isinstance(pair.client_events[-1], PeerClosed)


def test_the_client_gives_up_when_no_check_is_answered() -> None:
    pair = client_and_server(client_options={"handshake_timeout": 4.0})
    pair.drop = lambda direction, data: direction == TO_SERVER
    took = pair.run_until(lambda: pair.client.ended, limit=10)
    assert 4.0 <= took <= 4.01
    assert [f.failure for f in failures(pair.client_events)] == [Failure.ICE]
    # Checks backed off: 0.05, 0.1, 0.2, 0.4, then every 0.5 s.
    assert 8 <= pair.client.counters["stun_requests"] <= 14


def test_checks_with_the_wrong_password_are_dropped_and_counted() -> None:
    pair = client_and_server(client_options={"handshake_timeout": 1.0})
    pair.client._remote_key = b"not the password"
    pair.client.datagrams_to_send()  # the first check, signed before the password changed
    pair.run_until(lambda: pair.client.ended, limit=5)
    assert pair.server.state is TransportState.NEW
    assert pair.server.ice.counters["bad_integrity"] >= 3
    assert pair.server_events == []


def test_the_peer_moving_to_a_new_address_moves_the_media() -> None:
    """A client that changes network checks (and nominates) from its new address: media follows."""
    pair = client_and_server()
    connect(pair)
    moved = ("127.0.0.1", 50001)
    pair.client._pending.clear()
    pair.client._send_check(nominate=True)
    ((check, _),) = pair.client.datagrams_to_send()
    pair.server.receive_stun(stun.parse_message(check), check, moved, pair.now)
    assert pair.server.media_address == moved
    events = [pair.server.next_event(), pair.server.next_event()]
    assert events == [CandidateValidated(moved), PairSelected(moved, CLIENT_ADDRESS)]
