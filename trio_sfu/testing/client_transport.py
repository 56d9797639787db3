"""The sans-IO client peer on a Trio task: a datagram endpoint and the Trio clock.

With `trio_sfu.testing.network.MemoryNetwork` and `trio.testing.MockClock` a whole server and its
clients run without a socket or a real second passing, so a test can assert that a 30 s consent
timeout ends a session at 30 s. `open_client` adds the signaling: stream.connect, an offer, the
answer, ICE, DTLS.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from trio_sfu.cluster.client_driver import ClientDriver, Endpoint
from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.testing.offer import LocalParams, build_offer, parse_answer
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.client_peer import ClientEvent, ClientPeer


@attrs.define
class Received:
    """Media the client decrypted, with the Trio time it arrived."""

    rtp: list[tuple[float, bytes]] = attrs.field(factory=list)
    rtcp: list[tuple[float, bytes]] = attrs.field(factory=list)
    driver: ClientDriver | None = None

    @property
    def srtp_failures(self) -> int:
        return self.driver.srtp_failures if self.driver is not None else 0


class ClientTransport(ClientDriver):
    """The client driver keeping everything: the media it decrypted (`received`) and the events."""

    def __init__(self, peer: ClientPeer, endpoint: Endpoint) -> None:
        self.received = Received()
        self.events: list[ClientEvent] = []
        super().__init__(
            peer,
            endpoint,
            on_rtp=lambda packet, now: self.received.rtp.append((now, packet)),
            on_rtcp=lambda packet, now: self.received.rtcp.append((now, packet)),
            on_event=self.events.append,
        )
        self.received.driver = self


def rtp_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type & 0x7F, sequence & 0xFFFF, timestamp, ssrc) + payload


@attrs.define
class Client:
    """One session's client: its signaling and its media transport."""

    signaling: SignalingClient
    transport: ClientTransport
    local: LocalParams
    answer: Any  # trio_sfu.testing.offer.Answer
    stream: str


_CERTIFICATE: list[Certificate] = []


def _certificate() -> Certificate:
    if not _CERTIFICATE:
        _CERTIFICATE.append(Certificate.generate("client"))
    return _CERTIFICATE[0]


@contextlib.asynccontextmanager
async def open_client(
    signaling: SignalingClient,
    endpoint: Endpoint,
    *,
    publish: bool,
    stream: str = "cam",
    token: str = "",
    connect: bool = True,
    wait_connected: bool = True,
    claimed_fingerprint: str | None = None,
    rids: tuple[str, ...] = (),
    max_layer: int | None = None,
    **peer_options: Any,
) -> AsyncIterator[Client]:
    """Offer over `signaling`, then run ICE and DTLS over `endpoint` for as long as the block runs.

    `connect=False` skips stream.connect (for a second session on the same WebSocket);
    `wait_connected=False` returns as soon as the transport runs (for tests of failed handshakes);
    `claimed_fingerprint` goes in the offer instead of the client certificate's (a lying client);
    `rids`: a publisher offers its video as these simulcast layers (packets must carry the rid);
    `max_layer`: a player's cap on simulcast layers (the offer's extension field).
    """
    certificate = _certificate()
    local = LocalParams.new(certificate, endpoint.local_address[1], endpoint.local_address[0])
    offered = local if claimed_fingerprint is None else attrs.evolve(local, fingerprint=claimed_fingerprint)
    if connect:
        reply = await signaling.request("stream.connect", stream, {"token": token})
        if reply.get("err") != 0:
            raise RuntimeError(f"stream.connect: {reply}")
    data: dict[str, Any] = {"publish": publish, "sdp": build_offer(offered, publish=publish, rids=rids)}
    if max_layer is not None:
        data["max_layer"] = max_layer
    reply = await signaling.request("stream.offer", stream, data)
    if reply.get("err") != 0:
        raise RuntimeError(f"stream.offer: {reply}")
    answer = parse_answer(reply["data"]["sdp"])
    peer = ClientPeer(
        local_ufrag=local.ice_ufrag,
        local_pwd=local.ice_pwd,
        remote_ufrag=answer.ice_ufrag,
        remote_pwd=answer.ice_pwd,
        remote_fingerprints=answer.fingerprints,
        certificate=certificate,
        remote_address=answer.address,
        now=trio.current_time(),
        **peer_options,
    )
    transport = ClientTransport(peer, endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        if wait_connected:
            with trio.fail_after(30):
                while not transport.connected.is_set():
                    if transport.ended.is_set():
                        raise RuntimeError(f"the client's transport ended: {transport.events}")
                    with trio.move_on_after(0.05):
                        await transport.connected.wait()
        try:
            yield Client(signaling, transport, local, answer, stream)
        finally:
            nursery.cancel_scope.cancel()
