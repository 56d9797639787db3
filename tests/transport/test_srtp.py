"""SRTP/SRTCP sessions: keys from a real DTLS handshake, libsrtp's reference vectors, and abuse."""

from __future__ import annotations

import os
import struct

import pytest

from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState, SrtpKeys, SrtpProfile
from trio_sfu.transport.srtp import REPLAY_WINDOW, RETRANSMIT_WINDOW, SrtpSession

GCM = SrtpProfile.AEAD_AES_128_GCM
CM = SrtpProfile.AES_CM_128_HMAC_SHA1_80
RTP_OVERHEAD = {GCM: 16, CM: 10}
RTCP_OVERHEAD = {GCM: 16 + 4, CM: 10 + 4}  # tag plus E-flag/SRTCP index


def rtp(
    seq: int, *, ssrc: int = 0x11223344, payload: bytes = b"\x5a" * 160, timestamp: int | None = None
) -> bytes:
    """V=2, no padding/extension/CSRC, marker 0, payload type 96."""
    timestamp = seq * 960 if timestamp is None else timestamp
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def receiver_report(ssrc: int = 0x55667788, media_ssrc: int = 0x11223344) -> bytes:
    """An RTCP RR with one report block (RFC 3550 §6.4.2): 8 + 24 bytes, length 7 words."""
    block = struct.pack("!IIIIII", media_ssrc, 0x00000001, 1000, 20, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block


def handshake(profiles: tuple[SrtpProfile, ...]) -> tuple[SrtpKeys, SrtpKeys]:
    """Keys as the SFU will get them: from two endpoints that really shook hands."""
    client_cert, server_cert = Certificate.generate(), Certificate.generate()
    client = DtlsEndpoint(
        client_cert,
        server=False,
        remote_fingerprints=[("sha-256", server_cert.fingerprint())],
        profiles=profiles,
    )
    server = DtlsEndpoint(
        server_cert, server=True, remote_fingerprints=[("sha-256", client_cert.fingerprint())]
    )
    pending = [(server, datagram) for datagram in client.start(0.0)]
    while pending:
        endpoint, datagram = pending.pop(0)
        peer = client if endpoint is server else server
        pending += [(peer, out) for out in endpoint.receive(datagram, 0.0)]
    assert client.state is server.state is DtlsState.CONNECTED
    assert client.keys is not None and server.keys is not None
    return client.keys, server.keys


@pytest.fixture(scope="module", params=[GCM, CM], ids=["gcm", "cm"])
def keys(request: pytest.FixtureRequest) -> tuple[SrtpKeys, SrtpKeys]:
    client_keys, server_keys = handshake((request.param,))
    assert client_keys.profile is request.param
    return client_keys, server_keys


@pytest.fixture
def pair(keys: tuple[SrtpKeys, SrtpKeys]) -> tuple[SrtpSession, SrtpSession]:
    client_keys, server_keys = keys
    return SrtpSession(client_keys), SrtpSession(server_keys)


def test_rtp_round_trip_both_directions(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, server = pair
    for sender, receiver in ((client, server), (server, client)):
        for seq in (1, 2, 3, 7, 5):  # a little reordering is fine
            packet = rtp(seq, payload=os.urandom(1188))
            protected = sender.protect_rtp(packet)
            assert len(protected) == len(packet) + RTP_OVERHEAD[sender.profile]
            assert protected[:12] == packet[:12]  # the header stays readable
            assert protected[12:1200] != packet[12:]  # the payload does not
            assert receiver.unprotect_rtp(protected) == packet
    assert not client.counters and not server.counters


def test_rtcp_round_trip_both_directions(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, server = pair
    for sender, receiver in ((client, server), (server, client)):
        for _ in range(3):
            report = receiver_report()
            protected = sender.protect_rtcp(report)
            assert len(protected) == len(report) + RTCP_OVERHEAD[sender.profile]
            assert protected[:8] == report[:8]
            assert receiver.unprotect_rtcp(protected) == report


def test_sessions_do_not_talk_to_themselves(pair: tuple[SrtpSession, SrtpSession]) -> None:
    """Each direction has its own key: our own packets are not accepted back."""
    client, _ = pair
    assert client.unprotect_rtp(client.protect_rtp(rtp(1))) is None
    assert client.counters["rtp_auth_failed"] == 1


def test_tampered_packets_are_rejected_and_counted(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, server = pair
    protected = client.protect_rtp(rtp(10))
    for index in (1, 5, 20, len(protected) - 1):  # header, payload and tag are all covered
        tampered = bytearray(protected)
        tampered[index] ^= 0x01
        assert server.unprotect_rtp(bytes(tampered)) is None
    assert server.counters["rtp_auth_failed"] == 4
    assert server.unprotect_rtp(protected) == rtp(10)  # the genuine one still passes

    report = client.protect_rtcp(receiver_report())
    tampered = bytearray(report)
    tampered[10] ^= 0x80
    assert server.unprotect_rtcp(bytes(tampered)) is None
    assert server.counters["rtcp_auth_failed"] == 1
    assert server.unprotect_rtcp(report) == receiver_report()


def test_replays_are_rejected_and_counted(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, server = pair
    protected = client.protect_rtp(rtp(100))
    assert server.unprotect_rtp(protected) is not None
    assert server.unprotect_rtp(protected) is None
    assert server.counters["rtp_replay"] == 1

    report = client.protect_rtcp(receiver_report())
    assert server.unprotect_rtcp(report) is not None
    assert server.unprotect_rtcp(report) is None
    assert server.counters["rtcp_replay"] == 1


def test_replay_window_tolerates_reordering_but_not_age(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, server = pair
    packets = [client.protect_rtp(rtp(seq)) for seq in range(REPLAY_WINDOW + 10)]
    assert server.unprotect_rtp(packets[-1]) is not None
    assert server.unprotect_rtp(packets[20]) is not None  # late but inside the window
    assert server.unprotect_rtp(packets[0]) is None  # older than the window
    assert server.counters["rtp_replay"] == 1


def test_packets_under_other_keys_are_rejected(keys: tuple[SrtpKeys, SrtpKeys]) -> None:
    client_keys, server_keys = keys
    profile = client_keys.profile
    stranger = SrtpSession(
        SrtpKeys(profile, local_key=os.urandom(len(client_keys.local_key)), remote_key=b"\0" * 30)
    )
    server = SrtpSession(server_keys)
    assert server.unprotect_rtp(stranger.protect_rtp(rtp(1))) is None
    assert server.unprotect_rtcp(stranger.protect_rtcp(receiver_report())) is None
    assert server.counters["rtp_auth_failed"] == server.counters["rtcp_auth_failed"] == 1


def test_retransmission_with_same_sequence_can_be_protected_again(
    pair: tuple[SrtpSession, SrtpSession],
) -> None:
    """An SFU answering a NACK re-sends a packet it already protected (allow_repeat_tx)."""
    client, server = pair
    first = server.protect_rtp(rtp(500))
    for seq in range(501, 600):
        server.protect_rtp(rtp(seq))
    again = server.protect_rtp(rtp(500))
    assert again == first  # same key, same index: same bytes
    assert client.unprotect_rtp(again) == rtp(500)
    assert client.unprotect_rtp(first) is None  # the receiver treats the second copy as a replay
    too_old = rtp(500 + 600 - RETRANSMIT_WINDOW - 1)
    for seq in range(600, 600 + RETRANSMIT_WINDOW):
        server.protect_rtp(rtp(seq))
    with pytest.raises(ValueError, match="cannot protect RTP"):
        server.protect_rtp(too_old)
    assert server.counters["rtp_protect_failed"] == 1


def test_many_ssrcs_share_one_session(pair: tuple[SrtpSession, SrtpSession]) -> None:
    """Wildcard policies: a forwarder sends and receives any SSRC without adding streams."""
    client, server = pair
    for ssrc in (1, 0xDEADBEEF, 42, 7):
        for seq in (0, 1):
            assert client.unprotect_rtp(server.protect_rtp(rtp(seq, ssrc=ssrc))) == rtp(seq, ssrc=ssrc)


def test_garbage_is_rejected_without_raising(pair: tuple[SrtpSession, SrtpSession]) -> None:
    _, server = pair
    for junk in (
        b"",
        b"\x80",
        b"\x80\x60\x00",
        os.urandom(11),
        os.urandom(40),
        os.urandom(1400),
        b"\x80" * 2000,
    ):
        assert server.unprotect_rtp(junk) is None
        assert server.unprotect_rtcp(junk) is None
    assert sum(server.counters.values()) == 14


def test_protect_rejects_oversized_packet(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, _ = pair
    with pytest.raises(ValueError):
        client.protect_rtp(rtp(1, payload=b"\0" * 1400))


def test_protect_rtp_as_is_protect_of_the_patched_packet(keys: tuple[SrtpKeys, SrtpKeys]) -> None:
    """The fan-out's path (header fields written into libsrtp's buffer) gives the same bytes as
    patching the packet first and protecting it the plain way."""
    client_keys, server_keys = keys
    fast, plain, receiver = SrtpSession(server_keys), SrtpSession(server_keys), SrtpSession(client_keys)
    template = rtp(7, ssrc=0x01010101, timestamp=1, payload=os.urandom(1100))
    for sequence in (100, 101, 65535, 0, 1):
        timestamp = (90000 * sequence) & 0xFFFFFFFF
        view = fast.protect_rtp_as(template, sequence, timestamp, 0xCAFEBABE)
        protected = bytes(view)
        expected = rtp(sequence, ssrc=0xCAFEBABE, timestamp=timestamp, payload=template[12:])
        assert protected == plain.protect_rtp(expected)
        assert receiver.unprotect_rtp(protected) == expected
    assert bytes(view) == protected  # a view of the session's buffer: valid until the next call
    assert fast.protect_rtp_as(template, 5, 5, 5) is not view


def test_protect_rtp_as_refuses_what_protect_rtp_refuses(pair: tuple[SrtpSession, SrtpSession]) -> None:
    client, _ = pair
    for packet in (b"\x80" * 11, rtp(1, payload=b"\0" * 1400)):
        with pytest.raises(ValueError, match="cannot protect RTP"):
            client.protect_rtp_as(packet, 1, 1, 1)
        with pytest.raises(ValueError):
            client.protect_rtp(packet)
    assert client.counters["rtp_protect_failed"] >= 2
    largest = rtp(1, payload=b"\0" * (1500 - 144 - 12))
    assert len(client.protect_rtp_as(largest, 2, 2, 2)) > len(largest)


# libsrtp's reference packets (test/srtp_driver.c: srtp_validate, srtp_validate_gcm), SSRC 0xcafebabe.
RTP_PLAIN = bytes.fromhex("800f1234decafbadcafebabe") + b"\xab" * 16
RTCP_PLAIN = bytes.fromhex("81c8000bcafebabe") + b"\xab" * 16
VECTORS = {
    CM: (
        bytes.fromhex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6"),
        bytes.fromhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"),
        bytes.fromhex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798"),
    ),
    GCM: (
        bytes.fromhex("000102030405060708090a0b0c0d0e0fa0a1a2a3a4a5a6a7a8a9aaab"),
        bytes.fromhex(
            "800f1234decafbadcafebabec5002ede04cfdd2eb91159e0880aa06ed2976826f796b201df3131a127e8a392"
        ),
        bytes.fromhex(
            "81c8000bcafebabec98b8b5df0392a55852b6c21ac8e7025c52c6fbea2b3b446ea31123ba88ce61e80000001"
        ),
    ),
}


@pytest.mark.parametrize("profile", [CM, GCM], ids=["cm", "gcm"])
def test_libsrtp_reference_vectors(profile: SrtpProfile) -> None:
    key, srtp_packet, srtcp_packet = VECTORS[profile]
    sender = SrtpSession(SrtpKeys(profile, local_key=key, remote_key=key))
    assert sender.protect_rtp(RTP_PLAIN) == srtp_packet
    assert sender.protect_rtcp(RTCP_PLAIN) == srtcp_packet
    receiver = SrtpSession(SrtpKeys(profile, local_key=key, remote_key=key))
    assert receiver.unprotect_rtp(srtp_packet) == RTP_PLAIN
    assert receiver.unprotect_rtcp(srtcp_packet) == RTCP_PLAIN
