"""After the handshake DtlsEndpoint frees OpenSSL's connection and reads the peer's records itself
(trio_sfu/transport/dtls_records.py): checked against a plain pyOpenSSL peer, suite by suite."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from OpenSSL import SSL

from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState
from trio_sfu.transport.dtls_records import RecordOpener

AEAD_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]
CBC_SUITE = "ECDHE-ECDSA-AES128-SHA"


class PlainClient:
    """A DTLS client from plain pyOpenSSL offering one suite: the peer OpenSSL's records come from."""

    def __init__(self, suite: str, certificate: Certificate) -> None:
        context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        cert, key = certificate.cryptography_objects()
        context.use_certificate(cert)
        context.use_privatekey(key)
        context.set_cipher_list(suite.encode())
        context.set_tlsext_use_srtp(b"SRTP_AEAD_AES_128_GCM")
        context.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        self.conn = SSL.Connection(context, None)
        self.conn.set_connect_state()

    def output(self) -> list[bytes]:
        chunks = []
        while True:
            try:
                chunks.append(self.conn.bio_read(65536))
            except SSL.WantReadError:
                return [b"".join(chunks)] if chunks else []

    def read(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.conn.bio_write(data)


def connect(suite: str) -> tuple[PlainClient, DtlsEndpoint]:
    client_cert, server_cert = Certificate.generate("plain"), Certificate.generate("server")
    client = PlainClient(suite, client_cert)
    server = DtlsEndpoint(
        server_cert, server=True, remote_fingerprints=[("sha-256", client_cert.fingerprint())]
    )
    done = False
    for _ in range(10):
        try:
            client.conn.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        for data in client.output():
            client.read(server.receive(data, 0.0))
        if done and server.state is DtlsState.CONNECTED:
            break
    assert done and server.state is DtlsState.CONNECTED
    assert client.conn.get_cipher_name() == suite
    return client, server


@pytest.mark.parametrize("suite", AEAD_SUITES)
def test_the_peers_close_notify_is_read_without_openssl(suite: str) -> None:
    client, server = connect(suite)
    assert server.openssl_freed
    client.conn.send(b"application data nobody reads")
    assert server.receive(client.output()[0], 1.0) == []
    assert server.counters["app_data_ignored"] == 1
    client.conn.shutdown()
    goodbye = client.output()[0]
    forged = bytearray(goodbye)
    forged[-1] ^= 1
    assert server.receive(bytes(forged), 2.0) == []  # fails authentication: dropped, counted
    assert server.state is DtlsState.CONNECTED and server.counters["bad_record"] == 1
    reply = server.receive(goodbye, 3.0)
    assert server.state is DtlsState.CLOSED and server.failure is None
    client.read(reply)  # our close_notify, written by OpenSSL before it was freed: the peer reads it
    with pytest.raises(SSL.ZeroReturnError):
        client.conn.recv(100)


@pytest.mark.parametrize("suite", AEAD_SUITES)
def test_our_close_notify_reaches_the_peer(suite: str) -> None:
    client, server = connect(suite)
    client.read(server.close())
    assert server.state is DtlsState.CLOSED
    with pytest.raises(SSL.ZeroReturnError):
        client.conn.recv(100)
    assert server.close() == []


def test_a_fatal_alert_fails_the_association_with_its_name() -> None:
    client, server = connect(AEAD_SUITES[0])
    conn: Any = client.conn
    opener = RecordOpener.for_peer(
        AEAD_SUITES[0], conn.master_key(), conn.client_random(), conn.server_random(), server=True
    )
    assert opener is not None
    explicit = os.urandom(8)
    header = bytes([21, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 9])
    additional = header[3:11] + header[:3] + (2).to_bytes(2, "big")  # seq_num, type, version, length
    sealed = opener.aead.encrypt(opener.fixed_iv + explicit, b"\x02\x28", additional)
    body = explicit + sealed
    assert server.receive(header + len(body).to_bytes(2, "big") + body, 1.0) == []
    assert (server.state, server.failure) == (DtlsState.FAILED, "DTLS alert: handshake failure")


def test_the_peer_repeating_its_last_flight_gets_ours_again() -> None:
    """A client that lost our Finished repeats its flight; OpenSSL is gone, our copy answers."""
    client_cert, server_cert = Certificate.generate("plain"), Certificate.generate("server")
    client = PlainClient(AEAD_SUITES[0], client_cert)
    server = DtlsEndpoint(
        server_cert, server=True, remote_fingerprints=[("sha-256", client_cert.fingerprint())]
    )
    last_flight: list[bytes] = []
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.conn.do_handshake()
        outgoing = client.output()
        if not outgoing:
            break
        last_flight = outgoing
        replies = [reply for data in outgoing for reply in server.receive(data, 0.0)]
        if server.state is DtlsState.CONNECTED:
            ours = replies
            break
        client.read(replies)
    assert server.state is DtlsState.CONNECTED and server.openssl_freed
    again = server.receive(last_flight[0], 5.0)
    # The same flight from our copy; only its epoch-0 record gets a fresh number (see DtlsEndpoint._emit).
    assert [(data[:5], data[11:]) for data in again] == [(data[:5], data[11:]) for data in ours]
    client.read(again)
    client.conn.do_handshake()  # the client completes with it
    assert server.counters["peer_retransmits"] == 1


def test_a_cbc_suite_keeps_openssl() -> None:
    client, server = connect(CBC_SUITE)
    assert not server.openssl_freed and server.counters["openssl_kept"] == 1
    client.conn.shutdown()
    server.receive(client.output()[0], 1.0)
    assert server.state is DtlsState.CLOSED
