"""Transport faults through the whole server, in memory and under `trio.testing.MockClock`.

The server-level counterparts of tests/transport/test_peer.py: the real `Server` (signaling, sessions,
transport drivers, the media mux) against the sans-IO client peer on an in-memory network. No socket is
opened and no real second passes, so a consent or handshake timeout is asserted at the simulated
instant it fires, and the module runs in well under a second. tests/robustness/test_faults.py covers
the same faults with aiortc peers over real UDP, where the timing can only be loose.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.config import Config
from trio_sfu.server.session import Session
from trio_sfu.testing.client_transport import Client, Endpoint, open_client, rtp_packet
from trio_sfu.testing.offer import OPUS_PT, VP8_PT
from trio_sfu.transport.peer import Connected, Failed, Failure
from trio_sfu.wire.datagram import Address
from trio_sfu.wire.rtp import RtpHeader, parse_rtp

from ..conftest import Harness, running_server, settle, task_names

# Not the defaults, so the tests also show the configuration reaches every transport.
LIVENESS = 20.0  # the server's ICE consent timeout
HANDSHAKE = 4.0  # the server's DTLS handshake timeout
CONFIG = Config(liveness_timeout=LIVENESS, dtls_handshake_timeout=HANDSHAKE)
CONSENT_INTERVAL = 5.0  # the client peer's, jittered to 0.8..1.2 of it (RFC 7675)
FRAME = 0.05  # seconds between the test publishers' packets
# The start of a VP8 keyframe (payload descriptor, then a key frame's header and start code): every
# packet may start a player's stream, so none waits for a keyframe and every one is forwarded.
VP8_KEYFRAME = b"\x10\x00\x00\x9d\x01\x2a"
WRONG_FINGERPRINT = ":".join(["AB"] * 32)
EXACT = 1e-9  # MockClock jumps straight to the next deadline: only float rounding is left


# ---- helpers ---------------------------------------------------------------------------------------


def sessions(sfu: Harness) -> list[str]:
    return sorted(
        f"{s.header.uid}:{s.header.stream}:{s.direction}"
        for c in sfu.server.connections
        for s in c.sessions.values()
    )


def server_session(sfu: Harness, uid: str, stream: str = "cam") -> Session:
    """The server's session for `uid`'s `stream`."""
    for connection in sfu.server.connections:
        for session in connection.sessions.values():
            if session.header.uid == uid and session.header.stream == stream:
                return session
    raise LookupError(f"no session for {uid}/{stream}")


def session_tasks() -> list[str]:
    return [name for name in task_names() if name.startswith("<Session ")]


def video_payload(index: int) -> bytes:
    return VP8_KEYFRAME + index.to_bytes(4, "big") + bytes(90)


def send_video(client: Client, index: int) -> None:
    client.transport.send_rtp(
        rtp_packet(VP8_PT, index, index * 4500, client.local.video_ssrc, video_payload(index))
    )


@contextlib.asynccontextmanager
async def publisher_and_player(sfu: Harness) -> AsyncIterator[tuple[Client, Client]]:
    """A publisher of "cam" and a player of it, each with its own signaling connection and endpoint on
    the server's in-memory network, connected (ICE and DTLS done)."""
    network = sfu.network  # type: ignore[attr-defined]
    async with (
        sfu.client(uid="pub") as pub_sig,
        sfu.client(uid="p1") as play_sig,
        open_client(pub_sig, network.endpoint(), publish=True) as pub,
        open_client(play_sig, network.endpoint(), publish=False) as player,
    ):
        yield pub, player


async def stream_video(client: Client, count: int, start: int = 0) -> list[float]:
    """Send `count` video packets, one every FRAME seconds; the simulated times they left."""
    sent = []
    for index in range(start, start + count):
        sent.append(trio.current_time())
        send_video(client, index)
        await trio.sleep(FRAME)
    return sent


async def stream_video_forever(client: Client, sent: list[float]) -> None:
    index = 0
    while True:
        sent.append(trio.current_time())
        send_video(client, index)
        index += 1
        await trio.sleep(FRAME)


def received(client: Client) -> list[tuple[float, RtpHeader, bytes]]:
    """What the player decrypted: arrival time, header, payload."""
    out = []
    for at, packet in client.transport.received.rtp:
        header = parse_rtp(packet)
        assert header is not None
        payload = packet[header.header_length : header.header_length + header.payload_length]
        out.append((at, header, payload))
    return out


async def next_close(signaling: SignalingClient, within: float) -> tuple[str, float]:
    """The next server request, which must be stream.close: its reason and the simulated time it came."""
    with trio.fail_after(within):
        notice = await signaling.next_server_request()
    assert notice["method"] == "stream.close", notice
    return notice["data"]["reason"], trio.current_time()


def told_nothing(signaling: SignalingClient) -> bool:
    try:
        notice = signaling.server_requests.receive_nowait()
    except trio.WouldBlock:
        return True
    raise AssertionError(f"unexpected server request {notice}")


async def silence(client: Client, session: Session) -> tuple[float, float]:
    """Cut `client` off (it sends nothing from now on); when, and the last consent refresh the server got.

    Settling first lets the server take in whatever the client sent before (a check sent on the same
    simulated instant may still be in the mux's queue); nothing after that instant reaches it.
    """
    client.transport.silent = True
    silent_at = trio.current_time()
    await settle()
    assert trio.current_time() == silent_at
    return silent_at, session.transport.peer.ice.consent_deadline() - LIVENESS


class DtlsBlackhole:
    """A client endpoint that loses every DTLS datagram from the server (RFC 7983: first byte 20..63):
    ICE connects, the client's ClientHello goes out and is answered, and the handshake never ends."""

    def __init__(self, inner: Endpoint) -> None:
        self.inner = inner
        self.dropped = 0

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    async def receive(self) -> tuple[bytes, Address]:
        while True:
            data, source = await self.inner.receive()
            if data and 20 <= data[0] <= 63:
                self.dropped += 1
                continue
            return data, source

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        return self.inner.send(data, address)


# ---- media ----------------------------------------------------------------------------------------


async def test_media_flows(autojump_clock: trio.testing.MockClock) -> None:
    """Every packet reaches the player at the instant it was sent, rewritten to the player's SSRC and
    payload type, in order, with its payload intact; audio too."""
    async with running_server(CONFIG) as sfu, publisher_and_player(sfu) as (pub, player):
        sent = await stream_video(pub, 50)
        pub.transport.send_rtp(rtp_packet(OPUS_PT, 7, 960, pub.local.audio_ssrc, b"opus!"))
        await settle()
        packets = received(player)
        video = [p for p in packets if p[1].ssrc == player.answer.ssrcs["video"]]
        audio = [p for p in packets if p[1].ssrc == player.answer.ssrcs["audio"]]
        assert len(video) == 50 and len(audio) == 1 and len(packets) == 51
        assert [payload for _, _, payload in video] == [video_payload(i) for i in range(50)]
        assert [at for at, _, _ in video] == sent  # no queueing anywhere: 0 s latency
        assert {h.payload_type for _, h, _ in video} == {player.answer.payload_types["video"]}
        sequences = [h.sequence for _, h, _ in video]
        assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(50)]
        assert audio[0][2] == b"opus!"
        assert audio[0][1].payload_type == player.answer.payload_types["audio"]
        assert player.transport.received.srtp_failures == 0
        assert sfu.server.totals.rtp_packets_in == 51
        assert sfu.server.totals.rtp_packets_out == 51
        assert sfu.server.limits.handshakes == 0


class StallingEndpoint:
    """The server's media endpoint with a kernel buffer that can be made full: while `stalled`, every
    send is refused (as a non-blocking sendto with EAGAIN) and `wait_writable` waits."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stalled = False
        self.refused = 0
        self._writable = trio.Event()

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    async def receive(self) -> tuple[bytes, Address]:
        return await self.inner.receive()

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        if self.stalled:
            self.refused += 1
            return False
        return self.inner.send(data, address)

    async def wait_writable(self) -> None:
        while self.stalled:
            await self._writable.wait()
        await self.inner.wait_writable()

    def resume(self) -> None:
        self.stalled = False
        self._writable.set()
        self._writable = trio.Event()

    def connect(self, remote: Address) -> None:
        return None

    def close(self) -> None:
        self.inner.close()


async def test_a_full_socket_queues_in_a_task_started_then_and_drains_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No backlog task until a player's socket refuses a packet; then what it refused is queued, sent
    in order once the socket is writable, and nothing is lost or duplicated."""
    stall: list[StallingEndpoint] = []

    def wrap(endpoint: Any) -> Any:
        stall.append(StallingEndpoint(endpoint))
        return stall[0]

    async with (
        running_server(CONFIG, wrap_endpoint=wrap) as sfu,
        publisher_and_player(sfu) as (pub, player),
    ):
        await stream_video(pub, 10)
        await settle()
        forwarders = [name for name in task_names() if name.endswith("play>.forward")]
        assert forwarders == [] and len(received(player)) == 10
        stall[0].stalled = True
        await stream_video(pub, 10, start=10)
        await settle()
        assert stall[0].refused >= 1 and len(received(player)) == 10  # queued behind the first
        forwarders = [name for name in task_names() if name.endswith("play>.forward")]
        assert len(forwarders) == 1  # the video track's, started by the first refusal
        stall[0].resume()
        await stream_video(pub, 10, start=20)
        await settle()
        video = [p for p in received(player) if p[1].ssrc == player.answer.ssrcs["video"]]
        assert [payload for _, _, payload in video] == [video_payload(i) for i in range(30)]
        sequences = [h.sequence for _, h, _ in video]
        assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(30)]
        assert player.transport.received.srtp_failures == 0
        assert sfu.server.totals.drop_fanout_queue_full == 0


# ---- liveness ----------------------------------------------------------------------------------------


async def test_silent_publisher_times_out_and_players_are_told(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(CONFIG) as sfu, publisher_and_player(sfu) as (pub, player):
        sent = await stream_video(pub, 20)
        assert len(player.transport.received.rtp) == 20
        # No consent checks, no media from here on.
        silent_at, last_refresh = await silence(pub, server_session(sfu, "pub"))
        # Media refreshed consent until the last packet, one frame before the silence.
        assert last_refresh == pytest.approx(sent[-1], abs=EXACT)
        assert sent[-1] == pytest.approx(silent_at - FRAME, abs=EXACT)

        reason, ended_at = await next_close(pub.signaling, LIVENESS + 1)
        assert reason == "timeout"
        # Exactly the liveness timeout after the last thing that reached the server.
        assert ended_at - last_refresh == pytest.approx(LIVENESS, abs=EXACT)
        # The player is told at the same simulated instant.
        reason, told_at = await next_close(player.signaling, 1)
        assert (reason, told_at) == ("publisher_gone", ended_at)

        await settle()
        assert trio.current_time() == ended_at
        assert sessions(sfu) == [] and session_tasks() == []
        assert sfu.server.router.lookup(("live", "cam")) is None
        assert sfu.server.mux.sessions_routed == 0
        assert sfu.server.limits.sessions == 0 and sfu.server.limits.handshakes == 0
        assert sfu.server.totals.dtls_failures == 0
        # The session is gone: a late stream.close for it is a 404 (protocol decision 5).
        assert (await pub.signaling.request("stream.close", "cam"))["err"] == 404


async def test_silent_player_is_reclaimed_and_the_publisher_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(CONFIG) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        async with (
            sfu.client(uid="pub") as pub_sig,
            sfu.client(uid="quiet") as quiet_sig,
            sfu.client(uid="other") as other_sig,
            open_client(pub_sig, network.endpoint(), publish=True) as pub,
            open_client(quiet_sig, network.endpoint(), publish=False) as quiet,
            open_client(other_sig, network.endpoint(), publish=False) as other,
            trio.open_nursery() as nursery,
        ):
            sent: list[float] = []
            # Half a frame off the grid of whole seconds, so no packet leaves at an instant the test
            # looks at (which of two tasks woken at one instant runs first is Trio's choice).
            await trio.sleep(FRAME / 2)
            nursery.start_soon(stream_video_forever, pub, sent)
            await trio.sleep(7.0)  # past a consent check of every client
            # Players send only consent checks: the last one came at most one interval ago.
            silent_at, last_refresh = await silence(quiet, server_session(sfu, "quiet"))
            assert silent_at - CONSENT_INTERVAL * 1.2 <= last_refresh <= silent_at

            reason, ended_at = await next_close(quiet_sig, LIVENESS + 1)
            assert reason == "timeout"
            assert ended_at - last_refresh == pytest.approx(LIVENESS, abs=EXACT)
            await settle()
            assert sessions(sfu) == ["other:cam:play", "pub:cam:publish"]
            publication = sfu.server.router.lookup(("live", "cam"))
            assert publication is not None
            assert [len(p.consumers) for p in publication.producers] == [1, 1]

            # The other player received every packet, before and after, with no gap, the instant it
            # was sent; the silent one was served until the instant the server gave up on it.
            before = len(sent)
            await trio.sleep(1.0)
            await settle()
            assert len(sent) - before == 20
            assert [at for at, _ in other.transport.received.rtp] == sent
            assert [at for at, _ in quiet.transport.received.rtp] == [at for at in sent if at < ended_at]
            assert told_nothing(pub_sig) and told_nothing(other_sig)
            assert sfu.server.totals.dtls_failures == 0
            nursery.cancel_scope.cancel()


async def test_consent_checks_alone_keep_sessions_alive(autojump_clock: trio.testing.MockClock) -> None:
    """No media at all: a publisher's and a player's consent checks (every 5 s) carry them through three
    liveness timeouts."""
    async with running_server(CONFIG) as sfu, publisher_and_player(sfu) as (pub, player):
        start = trio.current_time()
        await trio.sleep(3 * LIVENESS)
        assert trio.current_time() - start == pytest.approx(3 * LIVENESS, abs=EXACT)
        assert sessions(sfu) == ["p1:cam:play", "pub:cam:publish"]
        # Checks every 4 to 6 s (5 s, jittered by RFC 7675's 0.8..1.2).
        fewest, most = 3 * LIVENESS / (1.2 * CONSENT_INTERVAL), 3 * LIVENESS / (0.8 * CONSENT_INTERVAL)
        for signaling, client, uid in ((pub.signaling, pub, "pub"), (player.signaling, player, "p1")):
            assert told_nothing(signaling)
            # Each check was answered, and the last one is at most an interval old.
            checks = client.transport.peer.counters["stun_responses"]
            assert fewest <= checks <= most + 1  # and the nominating check's response
            deadline = server_session(sfu, uid).transport.peer.ice.consent_deadline()
            assert deadline - LIVENESS >= trio.current_time() - 1.2 * CONSENT_INTERVAL
            assert [type(e) for e in client.transport.events] == [Connected]
        assert sfu.server.totals.rtp_packets_in == 0


# ---- handshakes ----------------------------------------------------------------------------------------


async def test_dtls_that_never_finishes_fails_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(CONFIG) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        endpoint = DtlsBlackhole(network.endpoint())
        async with sfu.client(uid="pub") as pub_sig:
            offered_at = trio.current_time()
            async with open_client(pub_sig, endpoint, publish=True, wait_connected=False) as pub:
                assert trio.current_time() == offered_at
                await settle()
                assert sfu.server.limits.handshakes == 1
                session = server_session(sfu, "pub")
                assert session.transport.peer.ice.selected is not None  # ICE is done; DTLS is not

                reason, ended_at = await next_close(pub_sig, HANDSHAKE + 1)
                assert reason == "transport_failed"
                # The handshake clock starts with the session, when the offer is answered.
                assert ended_at - offered_at == pytest.approx(HANDSHAKE, abs=EXACT)
                assert endpoint.dropped >= 3  # the server's flight, and its retransmissions
                assert sfu.server.totals.dtls_failures == 1
                assert sfu.server.totals.dtls_handshakes == 0
                await settle()
                assert sfu.server.limits.handshakes == 0 and sfu.server.limits.sessions == 0
                assert sfu.server.router.lookup(("live", "cam")) is None
                assert sessions(sfu) == [] and session_tasks() == []
                assert not pub.transport.connected.is_set()


async def test_fingerprint_mismatch_fails_only_that_session(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(CONFIG) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        async with (
            sfu.client(uid="pub") as pub_sig,
            sfu.client(uid="p1") as play_sig,
            sfu.client(uid="liar") as liar_sig,
            open_client(pub_sig, network.endpoint(), publish=True) as pub,
            open_client(play_sig, network.endpoint(), publish=False) as player,
        ):
            await stream_video(pub, 10)
            offered_at = trio.current_time()
            async with open_client(
                liar_sig,
                network.endpoint(),
                publish=True,
                stream="other",
                wait_connected=False,
                claimed_fingerprint=WRONG_FINGERPRINT,
            ) as liar_client:
                liar = liar_client.transport
                reason, ended_at = await next_close(liar_sig, HANDSHAKE)
                assert reason == "transport_failed"
                # Found in the handshake itself, not at a timeout: no simulated time passed.
                assert ended_at == offered_at
                with trio.fail_after(1):
                    await liar.ended.wait()
                assert trio.current_time() == offered_at
                (failed,) = liar.events
                assert isinstance(failed, Failed) and failed.failure is Failure.DTLS, liar.events
                assert "alert" in failed.detail  # the server's alert told it, not a timeout of its own
                assert liar.peer.srtp is None
            assert sfu.server.totals.dtls_failures == 1
            await settle()
            assert sfu.server.limits.handshakes == 0
            assert sfu.server.router.lookup(("live", "other")) is None
            assert sessions(sfu) == ["p1:cam:play", "pub:cam:publish"]
            # The stream beside it never noticed.
            await stream_video(pub, 10, start=10)
            payloads = [payload for _, _, payload in received(player)]
            assert payloads == [video_payload(i) for i in range(20)]
            assert told_nothing(pub_sig) and told_nothing(play_sig)


async def test_stream_close_while_the_handshake_is_pending(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(CONFIG) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        baseline = sorted(task_names())
        async with sfu.client(uid="pub") as pub_sig:
            connection_tasks = sorted(task_names())
            endpoint = DtlsBlackhole(network.endpoint())
            async with open_client(pub_sig, endpoint, publish=True, wait_connected=False):
                await trio.sleep(HANDSHAKE / 2)
                assert sfu.server.limits.handshakes == 1
                assert len(session_tasks()) == 2  # the session and its transport
                closed_at = trio.current_time()
                assert (await pub_sig.request("stream.close", "cam"))["err"] == 0
                # Gone before the reply, at the same simulated instant.
                assert trio.current_time() == closed_at
                assert sessions(sfu) == [] and session_tasks() == []
                assert sfu.server.limits.handshakes == 0 and sfu.server.limits.sessions == 0
                assert sfu.server.mux.sessions_routed == 0
                assert sfu.server.router.lookup(("live", "cam")) is None
                # Past the handshake timeout: nothing fires for the closed session.
                await trio.sleep(HANDSHAKE)
                assert told_nothing(pub_sig)
                assert sfu.server.totals.dtls_failures == 0
            await settle()
            assert sorted(task_names()) == connection_tasks
        await settle()
        assert sorted(task_names()) == baseline


# ---- endings ---------------------------------------------------------------------------------------------


async def test_publisher_closing_dtls_has_left_on_purpose(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(CONFIG) as sfu, publisher_and_player(sfu) as (pub, player):
        await stream_video(pub, 5)
        closed_at = trio.current_time()
        pub.transport.close()  # close_notify, as a browser's pc.close()
        reason, told_at = await next_close(player.signaling, 1)
        assert (reason, told_at) == ("publisher_closed", closed_at)
        reason, told_at = await next_close(pub.signaling, 1)
        assert (reason, told_at) == ("transport_failed", closed_at)
        await settle()
        assert sessions(sfu) == [] and session_tasks() == []
        assert sfu.server.router.lookup(("live", "cam")) is None
        assert sfu.server.totals.dtls_failures == 0
        assert len(player.transport.received.rtp) == 5


async def test_shutdown_tells_every_client_and_their_transports_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_consent_timeout = 10.0
    async with running_server(CONFIG) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        async with (
            sfu.client(uid="pub") as pub_sig,
            sfu.client(uid="p1") as play_sig,
            open_client(
                pub_sig, network.endpoint(), publish=True, consent_timeout=client_consent_timeout
            ) as pub,
            open_client(
                play_sig, network.endpoint(), publish=False, consent_timeout=client_consent_timeout
            ) as player,
        ):
            await stream_video(pub, 10)
            shutdown_at = trio.current_time()
            await sfu.server.shutdown()
            assert trio.current_time() == shutdown_at  # no grace period was needed
            for signaling in (pub_sig, play_sig):
                reason, told_at = await next_close(signaling, 1)
                assert (reason, told_at) == ("server_shutdown", shutdown_at)
            await settle()
            assert session_tasks() == [] and sfu.server.connections == set()
            # The server sends no close_notify: the clients' media stacks learn from consent expiry,
            # within one consent interval of their timeout after the last check was answered.
            for client in (pub, player):
                with trio.fail_after(client_consent_timeout + 1):
                    await client.transport.ended.wait()
                gone = trio.current_time() - shutdown_at
                assert client_consent_timeout - 1.2 * CONSENT_INTERVAL <= gone <= client_consent_timeout
                assert [type(e) for e in client.transport.events] == [Connected, Failed]
                failed = client.transport.events[-1]
                assert isinstance(failed, Failed) and failed.failure is Failure.CONSENT_EXPIRED
