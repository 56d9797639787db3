"""A deterministic fan-out scenario whose output is every datagram the players' sockets receive.

tests/media/test_fastpath.py runs it twice, with the compiled fan-out (_fastpath.c, built by
setup.py) and with the Python one (TRIO_SFU_PURE_PYTHON=1), and requires byte-identical output. From
the repository root:

    python -c "from tests.media.fastpath_scenario import main; main()"

prints the summary as JSON. Everything that could vary is pinned: the SRTP keys, the rewriters'
initial sequence numbers and timestamps, the clock (`now`, which abs-send-time is stamped from).

The players' sinks behave as `TransportDriver.send_rtp` / `send_rtp_as` do: protect with a real
`SrtpSession`, send on the player's own connected non-blocking socket (UDP on 127.0.0.1; a Unix
datagram socket pair for the player whose kernel buffer fills, which UDP on loopback never does), count
`Totals`; and each exposes the `Wire` the server layer keeps (`srtp.fanout_handles`, the socket's fd),
which the compiled path sends with.

The stream covers: video before any keyframe, a keyframe, steady packets, loss gaps (one past
MAX_MISORDER), reordered, late and duplicate packets, payload types the players did not negotiate,
packets around the 1356-byte protect limit and over it, sequence and timestamp wraparound (input and
output), mute and unmute (with and without a fresh cached keyframe), a player joining midway (from the
keyframe cache), a player connecting midway, NACKs (RTX and plain), probes, a player whose socket is
dropped or whose wire is detached for a while, a player whose kernel buffer and then backlog fill, a
player whose receiver goes away (send errors), and a simulcast (H264) layer switch and back.

Then VP8 simulcast (`vp8_simulcast`), whose players get picture ids and TL0PICIDX renumbered
(Vp8Pictures) and upper temporal layers dropped on request: three layers (15-bit picture ids, 7-bit ones,
no descriptor extension), L1T3 frames of several packets, picture id and TL0PICIDX wraparound, players
that stay, switch up and down, join from the keyframe cache, and have a temporal cap set and lifted;
descriptors with some fields only, truncated ones, reordered, late and duplicate packets, NACKs and
probes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from trio_sfu.media import fanout
from trio_sfu.media import producer as producer_module
from trio_sfu.media.consumer import Consumer
from trio_sfu.media.fanout import Wire
from trio_sfu.media.negotiation import NegotiatedTrack
from trio_sfu.media.producer import Producer
from trio_sfu.media.rewriter import abs_send_time
from trio_sfu.media.totals import Totals
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.transport.dtls import SrtpKeys, SrtpProfile
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.rtp import RtpHeader

from ..support.media_model import (
    C_ABS,
    C_LEVEL,
    C_MID,
    C_TCC,
    CHROMIUM_AUDIO_SSRC,
    CHROMIUM_OPUS,
    CHROMIUM_VIDEO_SSRC,
    CHROMIUM_VP8,
    FakeLink,
    header,
    play,
    publish,
    rtp_packet,
)

__all__ = [
    "PROFILES",
    "SHARED_ENV",
    "VP8_STATE",
    "CountingConsumer",
    "PlayerSink",
    "main",
    "player_keys",
    "pure_fan_out",
    "run",
    "run_all",
    "vp8_descriptor",
    "vp8_simulcast",
]

PROFILES = (SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES_CM_128_HMAC_SHA1_80)
WALL = 1_767_225_600.0
TICK = 0.004  # seconds between video packets
UNMAPPED_VIDEO_PT = 100  # negotiated by no player
UNMAPPED_AUDIO_PT = 0
H264_IN, H264_OUT = 102, 104
LOW_SSRC, HIGH_SSRC = 0x0A0A0A01, 0x0B0B0B02

FanOut = Callable[[Sequence[Any], bytes, RtpHeader, float], None]

SHARED_ENV = "TRIO_SFU_SCENARIO_SHARED"


@attrs.define
class SharedSocket:
    """The server's shared UDP socket, when the run has the compiled fan-out send through it in
    batches (`Wire.share`); counts the datagrams that came from it and from the players' own sockets."""

    sock: socket.socket | None = None
    received: collections.Counter[str] = attrs.Factory(collections.Counter)

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def count(self, source: object) -> None:
        shared = self.sock is not None and source == self.sock.getsockname()
        self.received["shared" if shared else "own"] += 1


SHARED = SharedSocket()


def pure_fan_out(consumers: Sequence[Any], packet: bytes, header: RtpHeader, now: float) -> None:
    """The Python loop the compiled fan-out stands for."""
    for consumer in consumers:
        consumer.forward(packet, header, now)


def player_keys(profile: SrtpProfile, index: int) -> SrtpKeys:
    """Fixed key material for player `index`: the server's (local) key and the player's."""
    length = profile.key_length + profile.salt_length
    local = bytes((index * 37 + 3 * j + 1) & 0xFF for j in range(length))
    remote = bytes((index * 53 + 5 * j + 7) & 0xFF for j in range(length))
    return SrtpKeys(profile=profile, local_key=local, remote_key=remote)


class PlayerSink:
    """A player's transport as its consumers see it: TransportDriver's send_rtp / send_rtp_as on the
    player's own connected socket, its totals, and its Wire (what the compiled fan-out sends with)."""

    whole_frames_only = False

    def __init__(self, keys: SrtpKeys, totals: Totals, *, unix: bool = False, connected: bool = True) -> None:
        self.keys = keys
        self.totals = totals
        self.wire = Wire()
        self.srtp: SrtpSession | None = None
        self.send_errors = 0
        self.datagrams: list[bytes] = []
        if unix:
            # Loopback UDP never says EWOULDBLOCK (the datagram is handed to the receiver at once);
            # a Unix datagram pair does, deterministically, once the receiver holds a few.
            self.sender, self.receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        else:
            self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.receiver.bind(("127.0.0.1", 0))
            self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sender.bind(("127.0.0.1", 0))
            self.sender.connect(self.receiver.getsockname())
        self.sender.setblocking(False)
        self.receiver.setblocking(False)
        self.receiver_open = True
        if connected:
            self.connect()

    def connect(self) -> None:
        """DTLS is up and the peer's own socket connected (TransportDriver._connected_now and
        _follow_media_address)."""
        if self.srtp is None:
            self.srtp = SrtpSession(self.keys)
        self.wire.attach(*self.srtp.fanout_handles, self.srtp)
        self.set_socket()

    def set_socket(self) -> None:
        """Its own socket, and the shared one if the run has one (TransportDriver._follow_media_address)."""
        self.wire.fd = self.sender.fileno()
        if SHARED.sock is not None:
            self.wire.share(SHARED.sock.fileno())

    # ---- TransportDriver's send path ----

    def send_rtp(self, packet: bytes) -> bool | None:
        srtp = self.srtp
        if srtp is None:
            return None
        try:
            protected = srtp.protect_rtp(packet)
        except ValueError:
            return True
        return self._send_rtp_protected(protected)

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        srtp = self.srtp
        if srtp is None:
            return None
        try:
            protected = srtp.protect_rtp_as(packet, sequence, timestamp, ssrc)
        except ValueError:
            return True
        return self._send_rtp_protected(protected)

    def _send_rtp_protected(self, protected: bytes | memoryview) -> bool:
        try:  # ConnectedUdp.send
            self.sender.send(protected)
        except BlockingIOError:
            return False
        except OSError:
            self.send_errors += 1
        self.totals.rtp_packets_out += 1
        self.totals.rtp_bytes_out += len(protected)
        return True

    # ---- the player's side ----

    def receive(self) -> None:
        while self.receiver_open:
            try:
                datagram, source = self.receiver.recvfrom(4096)
            except BlockingIOError:
                break
            self.datagrams.append(datagram)
            SHARED.count(source)

    def close_receiver(self) -> None:
        self.receive()
        self.receiver.close()
        self.receiver_open = False

    def close(self) -> None:
        self.wire.detach()
        self.sender.close()
        if self.receiver_open:
            self.receiver.close()


class CountingConsumer(Consumer):
    """Counts the calls of its Python `forward` (the compiled fan-out calls it, by name, for whatever
    it does not send itself); weak-referenceable, for the tests."""

    __slots__ = ("__weakref__", "forward_calls", "would_block_calls")

    def __init__(self, *args: Any) -> None:
        self.forward_calls = 0
        self.would_block_calls = 0
        super().__init__(*args)

    def forward(self, packet: bytes, header: RtpHeader, now: float) -> None:
        self.forward_calls += 1
        super().forward(packet, header, now)

    def _would_block(self, mapped: bytes, sequence: int, timestamp: int) -> None:
        self.would_block_calls += 1  # the compiled path only: its send found the kernel buffer full
        super()._would_block(mapped, sequence, timestamp)


@attrs.define(eq=False)
class Player:
    name: str
    index: int  # its keys are player_keys(profile, index)
    sink: PlayerSink
    consumers: dict[str, CountingConsumer]
    backlogs: dict[str, trio.MemoryReceiveChannel[bytes]]
    pending: dict[str, bytes] = attrs.Factory(dict)

    def pump(self) -> None:
        """Read what arrived, then send what queued (Session._forward, which waits for writability
        where this stops until the next pump)."""
        self.sink.receive()
        for kind, consumer in self.consumers.items():
            while True:
                packet = self.pending.pop(kind, None)
                if packet is None:
                    try:
                        packet = self.backlogs[kind].receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if self.sink.send_rtp(packet) is False:
                    self.pending[kind] = packet
                    break
                consumer.backlogged -= 1
        self.sink.receive()


def make_player(
    name: str,
    index: int,
    fixture: str,
    tracks: Sequence[NegotiatedTrack],
    producers: dict[str, Producer],
    keys: SrtpKeys,
    totals: Totals,
    *,
    initial: dict[str, tuple[int, int]] | None = None,
    backlog: int = 128,
    unix: bool = False,
    connected: bool = True,
    codec: dict[str, Any] | None = None,
) -> Player:
    sink = PlayerSink(keys, totals, unix=unix, connected=connected)
    played = play(tracks, fixture).tracks
    consumers: dict[str, CountingConsumer] = {}
    backlogs: dict[str, trio.MemoryReceiveChannel[bytes]] = {}
    for offset, track in enumerate(played):
        base = 0x01000000 * (index + 1) + 0x100 * offset
        changes: dict[str, Any] = {"ssrc": base + 1}
        if track.rtx_ssrc is not None:
            changes["rtx_ssrc"] = base + 2
        if codec is not None and track.kind == "video":
            changes["codec"] = attrs.evolve(track.codec, **codec)
        track = attrs.evolve(track, **changes)
        producer = producers[track.kind]
        send, receive = trio.open_memory_channel[bytes](backlog)
        consumer = CountingConsumer(name, producer, track, sink, ChannelBacklog(send))
        sequence, timestamp = (initial or {}).get(
            track.kind, (1000 * (index + 1) + offset * 500, 0x01234567 * (index + 1 + offset))
        )
        # The rewriter's output starts here (RFC 3550 random by default): pinned before any packet.
        consumer.rewriter._initial_sequence = sequence & 0xFFFF
        consumer.rewriter._initial_timestamp = timestamp & 0xFFFFFFFF
        consumers[track.kind] = consumer
        backlogs[track.kind] = receive
    return Player(name, index, sink, consumers, backlogs)


def body(size: int, seed: int) -> bytes:
    pattern = bytes((seed * 13 + 7 * j) & 0xFF for j in range(64))
    return (pattern * (size // 64 + 1))[:size]


class Publisher:
    """A Chromium publisher's VP8 video and Opus audio, on a clock that moves TICK per video packet."""

    def __init__(self, video: Producer, audio: Producer, after_tick: Callable[[], None]) -> None:
        self.video_producer = video
        self.audio_producer = audio
        self.after_tick = after_tick
        self.ticks = 0
        self.now = 10.0
        self.video_ssrc = CHROMIUM_VIDEO_SSRC
        self.video_seq = 65_400  # both wrap early on
        self.video_ts = 0xFFFF_0000
        self.audio_seq = 65_500
        self.audio_ts = 0xFFFF_FA00
        self.tcc = 0
        self.sent: dict[int, bytes] = {}  # video input sequence -> packet

    def _extensions(self, audio: bool) -> list[tuple[int, bytes]]:
        self.tcc = (self.tcc + 1) & 0xFFFF
        elements = [(C_ABS, abs_send_time(self.now - 0.05)), (C_TCC, self.tcc.to_bytes(2, "big"))]
        return [(C_LEVEL, b"\x85"), *elements, (C_MID, b"0")] if audio else [*elements, (C_MID, b"1")]

    def send_video(self, packet: bytes) -> None:
        self.video_producer.receive(packet, header(packet), self.now)

    def video(
        self,
        payload: bytes,
        *,
        marker: bool = False,
        sequence: int | None = None,
        payload_type: int = CHROMIUM_VP8,
        advance: bool = True,
    ) -> bytes:
        """One video packet at the current frame's timestamp; `sequence` None: the next one."""
        if sequence is None:
            sequence = self.video_seq
            self.video_seq = (self.video_seq + 1) & 0xFFFF
        packet = rtp_packet(
            sequence,
            self.video_ts,
            self.video_ssrc,
            payload_type,
            payload,
            marker=marker,
            extensions=self._extensions(False),
        )
        self.sent[sequence] = packet
        self.send_video(packet)
        if advance:
            self.tick()
        return packet

    def frame(self, packets: int, *, key: bool = False, sizes: Sequence[int] = ()) -> None:
        """One VP8 frame: a first packet (S=1, P bit for delta), continuations, the marker last."""
        for i in range(packets):
            size = sizes[i] if i < len(sizes) else (300 if key else 40) + (self.video_seq * 7) % 50
            if i == 0:
                payload = (b"\x10\x50" if key else b"\x10\x51") + body(size, self.video_seq)
            else:
                payload = b"\x00" + body(size, self.video_seq)
            self.video(payload, marker=i == packets - 1)
        self.video_ts = (self.video_ts + 3000) & 0xFFFFFFFF

    def frames(self, count: int, per_frame: int = 3) -> None:
        for _ in range(count):
            self.frame(per_frame)

    def audio(self, payload_type: int = CHROMIUM_OPUS) -> None:
        packet = rtp_packet(
            self.audio_seq,
            self.audio_ts,
            CHROMIUM_AUDIO_SSRC,
            payload_type,
            b"\xfc" + body(60 + self.audio_seq % 30, self.audio_seq),
            extensions=self._extensions(True),
        )
        self.audio_seq = (self.audio_seq + 1) & 0xFFFF
        self.audio_ts = (self.audio_ts + 960) & 0xFFFFFFFF
        self.audio_producer.receive(packet, header(packet), self.now)

    def tick(self) -> None:
        self.ticks += 1
        self.now = 10.0 + self.ticks * TICK
        if self.ticks % 5 == 0:
            self.audio()
        self.after_tick()


def sent_map_digest(consumer: Consumer) -> str:
    """The consumer's output -> input sequence map (Outlet's), over every output number."""
    digest = hashlib.sha256()
    for output in range(0x10000):
        source = consumer.sent_source(output)
        if source is not None:
            digest.update(output.to_bytes(2, "big") + source.to_bytes(4, "big", signed=True))
    return digest.hexdigest()


LANE_FIELDS = (
    "packets",
    "octets",
    "last_sequence",
    "last_timestamp",
    "last_sent_at",
    "_seq_offset",
    "_ts_offset",
    "_max_input",
    "_max_back",
    "_input_ssrc",
)


def consumer_summary(consumer: Consumer, now: float) -> dict[str, Any]:
    rewriter = consumer.rewriter
    report = consumer.sender_report(now, WALL)
    return {
        "counters": dict(sorted(consumer.counters.items())),
        "rewriter": {name: getattr(rewriter, name) for name in LANE_FIELDS}
        | {"muted": bool(rewriter._muted), "needs_sync": bool(rewriter._needs_sync)}
        | {"drops": list(rewriter._drops)},
        "timestamp_offset": consumer._timestamp_offset,
        "ready": bool(consumer._ready),
        "awaiting_keyframe": consumer.awaiting_keyframe,
        "backlogged": consumer.backlogged,
        "rtx_sequence": consumer._rtx_sequence,
        "sent_map": sent_map_digest(consumer),
        "sender_report": None if report is None else attrs.asdict(report),
    }


def run(profile: SrtpProfile, fan_out: FanOut | None = None) -> dict[str, Any]:
    """The scenario for one SRTP profile. `fan_out`: what Producer.receive fans out with (default:
    trio_sfu.media.fanout's, compiled where built)."""
    saved = getattr(producer_module, "fan_out")  # noqa: B009 - the name Producer.receive looks up
    if fan_out is not None:
        setattr(producer_module, "fan_out", fan_out)  # noqa: B010
    try:
        return _run(profile)
    finally:
        setattr(producer_module, "fan_out", saved)  # noqa: B010


def _run(profile: SrtpProfile) -> dict[str, Any]:
    published = publish()
    link = FakeLink()
    producers = {t.kind: Producer(t, link) for t in published.tracks}
    tracks = published.tracks
    server_totals = Totals()  # shared by two players: the compiled path batches across consumers
    own: dict[str, Totals] = {}
    players: dict[str, Player] = {}

    def add(name: str, fixture: str, *, shared: bool = False, join: bool = True, **options: Any) -> Player:
        index = len(players)
        totals = server_totals if shared else own.setdefault(name, Totals())
        player = make_player(
            name, index, fixture, tracks, producers, player_keys(profile, index), totals, **options
        )
        players[name] = player
        if join:
            for consumer in player.consumers.values():
                consumer.update_mute(False, 10.0)
                consumer.producer.add_player(consumer)
        return player

    # Players in fan-out order; neighbours map headers differently (the compiled path maps a packet once
    # per map and switches maps between consumers).
    p0 = add(
        "aiortc",
        "aiortc_offer_play",
        # Output sequence and timestamp wrap soon after the start.
        initial={"video": (65_450, 0xFFFF_F000), "audio": (65_530, 0xFFFF_FF00)},
    )
    p1 = add("chromium", "chromium_offer_play", shared=True)
    p2 = add("firefox", "firefox_offer_play_max_bundle", shared=True)
    p3 = add("blocked", "gstreamer_offer_play_max_bundle", unix=True, backlog=4)
    p5 = add("unconnected", "chromium_offer_play", connected=False)
    p6 = add("gone", "aiortc_offer_play")
    blocked_pumps = [0]

    def after_tick() -> None:
        for player in players.values():
            if player is not p3:
                player.pump()
        if publisher.ticks % 16 == 0:  # the blocked player's socket drains now and then
            p3.pump()
            blocked_pumps[0] += 1

    video, audio = producers["video"], producers["audio"]
    publisher = Publisher(video, audio, after_tick)

    # Video before any keyframe: every player waits (and asks for one).
    publisher.frames(2, per_frame=3)
    # The keyframe, then steady frames.
    publisher.frame(8, key=True)
    publisher.frames(15)
    # A loss gap upstream: five packets never arrive (a NACK for one finds it missing).
    gap = (p0.consumers["video"].rewriter.last_sequence + 2) & 0xFFFF
    publisher.video_seq = (publisher.video_seq + 5) & 0xFFFF
    publisher.frames(4)
    p0.consumers["video"].retransmit((gap,), publisher.now)
    # Reordering, a late packet and a duplicate.
    n = publisher.video_seq
    first = publisher.video(b"\x10\x51" + body(50, n), sequence=n)
    publisher.video(b"\x00" + body(51, n + 2), sequence=(n + 2) & 0xFFFF)
    publisher.video(b"\x00" + body(52, n + 1), sequence=(n + 1) & 0xFFFF)
    publisher.video(b"\x00" + body(53, n + 3), sequence=(n + 3) & 0xFFFF, marker=True)
    publisher.send_video(publisher.sent[(n + 3) & 0xFFFF])  # the same packet again: a duplicate
    publisher.send_video(bytes(first))  # an equal copy (another object) of an older one
    publisher.video_seq = (n + 4) & 0xFFFF
    publisher.video_ts = (publisher.video_ts + 3000) & 0xFFFFFFFF
    publisher.frames(4)
    # Around the protect limit (1356 bytes in): the players' maps leave 12 + 8 + payload (abs-send-time
    # only) or 12 + payload (no extensions); the last two are too long for everyone.
    publisher.frame(16, sizes=[*range(1330, 1344), 1440, 1460])
    publisher.frames(4)

    # Mute: the aiortc player's video and the chromium player's audio.
    now = publisher.now
    before_mute = p0.consumers["video"].rewriter.last_sequence
    p0.consumers["video"].muted_by_player = True
    p0.consumers["video"].update_mute(False, now)
    p1.consumers["audio"].muted_by_player = True
    p1.consumers["audio"].update_mute(False, now)
    publisher.frames(6)
    publisher.frame(6, key=True)  # during the mute: fresh in the cache at unmute
    publisher.frames(4)
    now = publisher.now
    p0.consumers["video"].muted_by_player = False
    p0.consumers["video"].update_mute(False, now)  # starts from the cache at once
    p1.consumers["audio"].muted_by_player = False
    p1.consumers["audio"].update_mute(False, now)
    p0.pump()
    publisher.frames(5)

    # NACKs: across the unmute splice, recent ones, one lost upstream, and a repeat (too soon).
    now = publisher.now
    v0 = p0.consumers["video"]
    last = v0.rewriter.last_sequence
    v0.retransmit(((before_mute - 2) & 0xFFFF, before_mute, (last - 1) & 0xFFFF, last), now)
    v0.retransmit((last,), now + 0.001)
    v1 = p1.consumers["video"]
    v1.retransmit(tuple((v1.rewriter.last_sequence - k) & 0xFFFF for k in (0, 3, 7)), now)
    v3 = p3.consumers["video"]
    v3.retransmit(((v3.rewriter.last_sequence - 1) & 0xFFFF,), now)  # no RTX: the packet itself
    for player in players.values():
        player.sink.receive()
    publisher.frames(3)

    # Mute the firefox player's video with no keyframe after it: it waits for the publisher's next.
    now = publisher.now
    v2 = p2.consumers["video"]
    v2.muted_by_player = True
    v2.update_mute(False, now)
    publisher.frames(3)
    v2.muted_by_player = False
    v2.update_mute(False, publisher.now)
    publisher.frames(5)

    # The unconnected player's DTLS comes up: its consumers start from the cache (on_connected).
    p5.sink.connect()
    for consumer in p5.consumers.values():
        if not consumer.start_from_cache(publisher.now):
            consumer.producer.request_keyframe(publisher.now)
    publisher.frames(2)

    # A player joins midway: from the keyframe cache at once.
    p4 = add("late", "aiortc_offer_play")
    for consumer in p4.consumers.values():
        if not consumer.start_from_cache(publisher.now):
            consumer.producer.request_keyframe(publisher.now)
    p4.pump()
    publisher.frames(3)

    # The chromium player's connected socket goes (the shared socket sends: the Python path) and
    # comes back; the firefox player's wire is detached for a while.
    p1.sink.wire.fd = -1
    publisher.frames(4)
    p1.sink.set_socket()
    p2.sink.wire.detach()
    publisher.frames(4)
    p2.sink.connect()
    publisher.frames(2)

    # Payload types nobody negotiated: dropped, numbers closed over (the rewriters' drop lists).
    publisher.video(b"\x10\x51" + body(30, 1), payload_type=UNMAPPED_VIDEO_PT)
    publisher.audio(payload_type=UNMAPPED_AUDIO_PT)
    publisher.frames(3)

    # A long loss upstream, past MAX_MISORDER: the drop lists empty and the compiled path takes over.
    publisher.video_seq = (publisher.video_seq + 1200) & 0xFFFF
    publisher.audio_seq = (publisher.audio_seq + 1100) & 0xFFFF
    publisher.frames(8)
    publisher.frame(6, key=True)
    publisher.frames(10)

    # Probes, and NACKs after the gap.
    now = publisher.now
    v0.send_probe(2000, now)
    p4.consumers["video"].retransmit(((p4.consumers["video"].rewriter.last_sequence - 2) & 0xFFFF,), now)
    for player in players.values():
        player.sink.receive()

    # The publisher restarts its encoder: a new SSRC and timestamp, sequence numbers close to the old
    # ones (the same numbers on another SSRC must still be spliced, not numbered as the old stream's).
    publisher.video_ssrc = CHROMIUM_VIDEO_SSRC ^ 0x5A5A
    publisher.video_seq = (publisher.video_seq + 10) & 0xFFFF
    publisher.video_ts = 777_777
    publisher.frame(5, key=True)
    publisher.frames(5)

    # The "gone" player's receiver closes: its sends fail now and then (ICMP port unreachable).
    p6.sink.close_receiver()
    publisher.frames(6)
    for consumer in p6.consumers.values():
        consumer.producer.remove_player(consumer)
        consumer.close()
    publisher.frames(10)

    # The blocked player catches up.
    for _ in range(4):
        p3.pump()

    simulcast = _simulcast(profile, publisher.now)

    end = publisher.now + 0.5
    result: dict[str, Any] = {"players": {}, "consumers": {}, "totals": {}, "producers": {}}
    for player in players.values():
        player.sink.receive()
        srtp = player.sink.srtp
        result["players"][player.name] = {
            "index": player.index,
            "datagrams": [d.hex() for d in player.sink.datagrams],
            "send_errors": player.sink.send_errors + player.sink.wire.send_errors,
            "protect_failed": (srtp.counters["rtp_protect_failed"] if srtp else 0)
            + player.sink.wire.protect_failed,
        }
        for kind, consumer in player.consumers.items():
            result["consumers"][f"{player.name}/{kind}"] = consumer_summary(consumer, end)
    result["totals"]["server"] = attrs.asdict(server_totals)
    for name, totals in own.items():
        result["totals"][name] = attrs.asdict(totals)
    for kind, producer in producers.items():
        result["producers"][kind] = {
            "keyframe_requests": producer.keyframe_requests,
            "packets": producer.packets,
            "gop": len(producer.keyframe_cache),
        }
    result["producers"]["keyframe_requests_sent"] = len(link.keyframes)
    result["blocked_pumps"] = blocked_pumps[0]
    result["simulcast"] = simulcast["summary"]
    calls = {
        f"{player.name}/{kind}": consumer.forward_calls
        for player in players.values()
        for kind, consumer in player.consumers.items()
    }
    calls["blocked/would_block"] = sum(c.would_block_calls for c in p3.consumers.values())
    calls |= simulcast["calls"]
    vp8 = vp8_simulcast(profile)
    result["vp8_simulcast"] = vp8["summary"]
    calls |= vp8["calls"]
    for player in players.values():
        player.sink.close()
    return {"summary": result, "forward_calls": calls}


def _simulcast(profile: SrtpProfile, start: float) -> dict[str, Any]:
    """H264 simulcast (no VP8 picture ids to rewrite: the compiled path serves it): two layers, a
    player that moves up at the high layer's keyframe and back down, one that stays."""
    published = publish()
    video_track = next(t for t in published.tracks if t.kind == "video")
    codec = attrs.evolve(video_track.codec, name="H264", payload_type=H264_IN, parameters=())
    link = FakeLink()
    layers = [
        Producer(attrs.evolve(video_track, codec=codec, ssrc=ssrc, rids=("l", "h")), link, rid=rid)
        for rid, ssrc in (("l", LOW_SSRC), ("h", HIGH_SSRC))
    ]
    for layer in layers:
        layer.layers = layers
    low, high = layers
    audio = Producer(next(t for t in published.tracks if t.kind == "audio"), link)
    producers = {"video": low, "audio": audio}
    totals = Totals()
    h264 = {"name": "H264", "payload_type": H264_OUT, "parameters": ()}
    players = [
        make_player(
            name,
            20 + i,
            "aiortc_offer_play",
            published.tracks,
            producers,
            player_keys(profile, 20 + i),
            totals,
            codec=h264,
        )
        for i, name in enumerate(("switching", "staying"))
    ]
    for player in players:
        consumer = player.consumers["video"]
        consumer.producer.add_player(consumer)
    now = start
    seqs = {LOW_SSRC: 30_000, HIGH_SSRC: 65_530}
    ts = {LOW_SSRC: 1_000_000, HIGH_SSRC: 0xFFFF_FF00}

    def send(layer: Producer, key: bool = False, size: int = 60) -> None:
        ssrc = layer.ssrc
        assert ssrc is not None
        payload = (b"\x65" if key else b"\x41") + body(size, seqs[ssrc])
        packet = rtp_packet(
            seqs[ssrc],
            ts[ssrc],
            ssrc,
            H264_IN,
            payload,
            marker=True,
            extensions=[(C_ABS, abs_send_time(now)), (C_MID, b"1")],
        )
        seqs[ssrc] = (seqs[ssrc] + 1) & 0xFFFF
        ts[ssrc] = (ts[ssrc] + 3000) & 0xFFFFFFFF
        layer.receive(packet, header(packet), now)

    def tick(count: int, key_at: dict[int, Producer] | None = None) -> None:
        nonlocal now
        for i in range(count):
            now += 0.033
            send(low, key=(key_at or {}).get(i) is low, size=60 + i % 7)
            send(high, key=(key_at or {}).get(i) is high, size=400 + i % 11)
            for player in players:
                player.pump()

    switching = players[0].consumers["video"]
    tick(5, {2: low})
    switching.select_layer(high, now)
    tick(12, {6: high})
    switching.select_layer(low, now)
    tick(12, {4: low, 8: high})
    switching.retransmit(((switching.rewriter.last_sequence - 1) & 0xFFFF,), now)
    tick(6)
    summary: dict[str, Any] = {"totals": attrs.asdict(totals), "players": {}}
    calls = {}
    for player in players:
        player.sink.receive()
        consumer = player.consumers["video"]
        summary["players"][player.name] = {
            "index": player.index,
            "datagrams": [d.hex() for d in player.sink.datagrams],
            "video": consumer_summary(consumer, now + 0.5),
        }
        calls[f"simulcast/{player.name}"] = consumer.forward_calls
        player.sink.close()
    return {"summary": summary, "calls": calls}


# --------------------------------------------------------------------------- VP8 simulcast

VP8_SSRCS = {"q": 0x0C0C0C01, "h": 0x0D0D0D02, "f": 0x0E0E0E03}
L1T3 = (0, 2, 1, 2)  # the TID of each frame in turn, from a keyframe on (Chromium's simulcast layers)
VP8_FRAME = 1 / 30
VP8_FRAME_TICKS = 3000  # RTP timestamp units a frame at 90 kHz


def vp8_descriptor(
    picture_id: int | None = None,
    tl0: int | None = None,
    tid: int | None = None,
    *,
    sync: bool = False,
    start: bool = True,
    wide: bool = True,
    keyidx: int | None = None,
) -> bytes:
    """RFC 7741's payload descriptor: S at a frame's first packet (PID 0); X when any of I (picture id,
    15 bits if `wide`, else 7), L (TL0PICIDX), T (TID and Y) or K (KEYIDX) follows."""
    first = 0x10 if start else 0x00
    if picture_id is None and tl0 is None and tid is None and keyidx is None:
        return bytes([first])
    extension = (0x80 if picture_id is not None else 0) | (0x40 if tl0 is not None else 0)
    extension |= (0x20 if tid is not None else 0) | (0x10 if keyidx is not None else 0)
    out = [0x80 | first, extension]
    if picture_id is not None:
        out += [0x80 | picture_id >> 8, picture_id & 0xFF] if wide else [picture_id & 0x7F]
    if tl0 is not None:
        out.append(tl0)
    if tid is not None or keyidx is not None:
        out.append((tid or 0) << 6 | (0x20 if sync else 0) | (keyidx or 0))
    return bytes(out)


class Vp8Layer:
    """One simulcast layer's frames: L1T3 with picture ids (`wide`: 15-bit, else 7-bit) and TL0PICIDX in
    every packet's descriptor, or (`numbered` False) a descriptor with no extension at all (X clear)."""

    def __init__(
        self,
        stream: Vp8Stream,
        producer: Producer,
        *,
        sequence: int,
        picture_id: int = 0,
        tl0: int = 0,
        wide: bool = True,
        numbered: bool = True,
        packets: int = 2,
        size: int = 60,
        width: int = 320,
    ) -> None:
        self.stream, self.producer = stream, producer
        self.sequence = sequence
        self.picture_id, self.tl0 = picture_id, tl0
        self.wide, self.numbered = wide, numbered
        self.packets, self.size, self.width = packets, size, width
        self.index = 0  # the frame's place in the L1T3 pattern (restarted at a keyframe)
        self.started = False
        self.last_sent = b""

    def next_tid(self) -> int:
        """The TID of the next frame, unless it is a keyframe."""
        return L1T3[self.index % len(L1T3)]

    def frame(
        self,
        *,
        key: bool = False,
        variant: str = "",
        order: Sequence[int] | None = None,
        hold: Sequence[int] = (),
        extra: tuple[int, bytes] | None = None,
        between: Callable[[], None] | None = None,
    ) -> list[bytes]:
        """Send one frame at the stream's timestamp: a first packet (S, the VP8 frame header: P clear
        at a keyframe, with its size), continuations, the marker on the last. `variant` leaves fields
        out of the descriptor ("i-only", "t-only", "k-only", "x-clear"); `extra`: (place, payload) of
        another packet of this frame (a truncated descriptor, say); `order`: the order the packets are
        sent in; `hold`: packets built (numbered) but not sent (returned: the caller sends them late);
        `between`: called after the first packet sent."""
        if key:
            self.index = 0
        tid = 0 if key else self.next_tid()
        sync = tid > 0 and L1T3[(self.index - 1) % len(L1T3)] == 0  # right after a TL0 frame
        self.index += 1
        # A frame without picture id or TL0PICIDX takes no number (the next one that has it goes on).
        numbers_picture = self.numbered and variant in ("", "i-only")
        if tid == 0 and self.started and self.numbered and not variant:
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.started = True
        fields: dict[str, Any] = {"picture_id": self.picture_id, "tl0": self.tl0, "tid": tid}
        if not self.numbered or variant == "x-clear":
            fields = {}
        elif variant == "i-only":
            fields = {"picture_id": self.picture_id}
        elif variant == "t-only":
            fields = {"tid": tid}
        elif variant == "k-only":
            fields = {"keyidx": 5}
        if key:
            height = self.width * 9 // 16
            frame_header = b"\x10\x02\x00\x9d\x01\x2a" + self.width.to_bytes(2, "little")
            frame_header += height.to_bytes(2, "little")
        else:
            frame_header = b"\x31\x01\x00"  # P set: an interframe
        count = self.packets + (2 if key else 0)
        payloads = []
        for i in range(count):
            descriptor = vp8_descriptor(**fields, sync=sync, start=i == 0, wide=self.wide)
            data = body(self.size + 3 * i, self.sequence + i)
            payloads.append(descriptor + (frame_header if i == 0 else b"") + data)
        if extra is not None:
            payloads.insert(extra[0], extra[1])
        packets = []
        for i, payload in enumerate(payloads):
            sequence, self.sequence = self.sequence, (self.sequence + 1) & 0xFFFF
            last = i == len(payloads) - 1
            packets.append(self.stream.packet(self.producer, sequence, payload, marker=last))
        held = [packets[i] for i in hold]
        for n, i in enumerate(order if order is not None else range(len(packets))):
            if i in hold:
                continue
            self.send(packets[i])
            if n == 0 and between is not None:
                between()
        if numbers_picture:
            self.picture_id = (self.picture_id + 1) & (0x7FFF if self.wide else 0x7F)
        return held

    def send(self, packet: bytes) -> None:
        self.last_sent = packet
        self.stream.send(self.producer, packet)


VP8_STATE = (  # what vp8_state lists, in order
    "layer",
    "target",
    "temporal",
    "temporal_target",
    "frame_timestamp",
    "frame_forwarded",
    "picture_offset",
    "tl0_offset",
    "last_picture",
    "last_tl0",
    "drops",
    "needs_sync",
    "last_sequence",
    "packets",
)


def vp8_state(consumer: Consumer) -> list[Any]:
    """A VP8 simulcast player's layer, temporal and picture numbering state (the fields VP8_STATE
    names): a list, as the scenario keeps one a frame for each player."""
    pictures = consumer.pictures
    assert pictures is not None
    target = consumer.target
    return [
        consumer.producer.rid,
        None if target is None else target.rid,
        consumer.temporal,
        consumer.temporal_target,
        consumer._frame_timestamp,
        bool(consumer._frame_forwarded),
        pictures._picture_offset,
        pictures._tl0_offset,
        pictures._last_picture,
        pictures._last_tl0,
        list(pictures._drops),
        bool(pictures.needs_sync),
        consumer.rewriter.last_sequence,
        consumer.rewriter.packets,
    ]


SLOW_PUMP = 8  # frames between two reads of a slow player's socket: its kernel buffer fills between


class Vp8Stream:
    """A VP8 simulcast publisher's layers (capture timestamps shared across layers, a frame every
    VP8_FRAME seconds) and the players of its video."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.timestamp = 0xFFFF_A000  # wraps early on
        self.tcc = 0
        self.layers: dict[str, Vp8Layer] = {}
        self.players: dict[str, Player] = {}
        self.offered: collections.Counter[str] = collections.Counter()  # packets fanned out to each
        self.trace: dict[str, list[list[Any]]] = {}
        self._opened: dict[str, tuple[int, int]] = {}
        self.windows: dict[str, dict[str, int]] = {}  # name -> packets offered, forward calls
        self.slow: set[str] = set()  # players whose socket is read every SLOW_PUMP frames only
        self.frame_count = 0

    def video(self, name: str) -> CountingConsumer:
        return self.players[name].consumers["video"]

    def packet(self, producer: Producer, sequence: int, payload: bytes, *, marker: bool) -> bytes:
        self.tcc = (self.tcc + 1) & 0xFFFF
        assert producer.ssrc is not None
        return rtp_packet(
            sequence,
            self.timestamp,
            producer.ssrc,
            CHROMIUM_VP8,
            payload,
            marker=marker,
            extensions=[
                (C_ABS, abs_send_time(self.now)),
                (C_TCC, self.tcc.to_bytes(2, "big")),
                (C_MID, b"1"),
            ],
        )

    def send(self, producer: Producer, packet: bytes) -> None:
        for consumer in producer.consumers:
            self.offered[consumer.owner] += 1  # what the Python loop calls `forward` for
        producer.receive(packet, header(packet), self.now)

    def tick(self, *, keys: str = "", **options: dict[str, Any]) -> dict[str, list[bytes]]:
        """The next frame of every layer (`keys`: the layers whose frame is a keyframe; `options`, by
        rid: Vp8Layer.frame's), then the players read; what was held back, by rid."""
        self.now += VP8_FRAME
        held = {
            rid: layer.frame(key=rid in keys, **options.get(rid, {})) for rid, layer in self.layers.items()
        }
        self.timestamp = (self.timestamp + VP8_FRAME_TICKS) & 0xFFFFFFFF
        self.pump()
        for name in self.players:
            self.trace.setdefault(name, []).append(vp8_state(self.video(name)))
        return held

    def ticks(self, count: int) -> None:
        for _ in range(count):
            self.tick()

    def until(self, rid: str, tid: int) -> None:
        """Frames until layer `rid`'s next one is of temporal layer `tid`."""
        while self.layers[rid].next_tid() != tid:
            self.tick()

    def pump(self) -> None:
        self.frame_count += 1
        for name, player in self.players.items():
            if name not in self.slow:
                player.pump()
            elif self.frame_count % SLOW_PUMP == 0:
                for _ in range(64):  # read and send until its backlog is empty
                    player.pump()

    def open_window(self, name: str) -> None:
        """From here, `name` is in the steady case (no cap, no switch pending, numbering in sync)."""
        self._opened[name] = (self.offered[name], self.video(name).forward_calls)

    def close_window(self, name: str) -> None:
        offered, calls = self._opened.pop(name)
        self.windows[name] = {
            "offered": self.offered[name] - offered,
            "forward_calls": self.video(name).forward_calls - calls,
        }


def vp8_simulcast(profile: SrtpProfile, start: float = 200.0) -> dict[str, Any]:
    """VP8 simulcast: three layers, q (15-bit picture ids), h (7-bit ones, three packets a frame) and f
    (no descriptor extension), and six players of them.

    "steady-q" and "steady-h" stay on one layer, all temporal layers; "settled" moves from h to q once
    and stays (its numbers go on with offsets); "switching" goes q -> h -> f -> q (targets replaced
    before a keyframe, one given up); "capped" gets a temporal cap on q (TL1, then TL0) while late and
    odd packets come, has it lifted, moves to h (its drops forgotten), is capped there and lifted again;
    "joiner" joins q from the keyframe cache midway. `summary` is the same on both paths; `calls` (the
    Python `forward` calls) differ by design, and so do `windows`' forward calls (the stretches each
    player spends in the steady case)."""
    published = publish()
    video_track = next(t for t in published.tracks if t.kind == "video")
    link = FakeLink()
    rids = tuple(VP8_SSRCS)
    producers = {
        rid: Producer(attrs.evolve(video_track, ssrc=ssrc, rids=rids), link, rid=rid)
        for rid, ssrc in VP8_SSRCS.items()
    }
    layers = list(producers.values())
    for layer in layers:
        layer.layers = layers
    q, h, f = (producers[rid] for rid in rids)
    audio = Producer(next(t for t in published.tracks if t.kind == "audio"), link)
    stream = Vp8Stream(start)
    # q's picture id wraps (0x7FFF -> 0) about 150 frames in and its TL0PICIDX (255 -> 0) about 160; h's
    # 7-bit ids wrap every 128 frames, its TL0PICIDX about 150 frames in.
    stream.layers = {
        "q": Vp8Layer(stream, q, sequence=65_480, picture_id=0x7FFF - 150, tl0=216, packets=2, size=60),
        "h": Vp8Layer(stream, h, sequence=20_000, picture_id=40, tl0=219, wide=False, packets=3, size=200),
        "f": Vp8Layer(stream, f, sequence=40_000, numbered=False, packets=1, size=500, width=1280),
    }
    totals = Totals()

    def add(name: str, fixture: str, layer: Producer, **options: Any) -> CountingConsumer:
        index = 30 + len(stream.players)
        player = make_player(
            name,
            index,
            fixture,
            published.tracks,
            {"video": layer, "audio": audio},
            player_keys(profile, index),
            totals,
            **options,
        )
        stream.players[name] = player
        consumer = player.consumers["video"]
        assert consumer.pictures is not None
        layer.add_player(consumer)
        return consumer

    # Neighbours in a layer's fan-out list map headers alike or not (aiortc's, chromium's, firefox's and
    # gstreamer's maps differ in size: the picture id is at a different place in each player's copy).
    add("steady-q", "aiortc_offer_play", q)
    capped = add("capped", "chromium_offer_play", q)
    # Output sequence numbers wrap soon.
    switching = add("switching", "firefox_offer_play_max_bundle", q, initial={"video": (65_500, 0xFFFF_FFF0)})
    steady_h = add("steady-h", "gstreamer_offer_play_max_bundle", h)
    # A player whose socket is full now and then (a Unix datagram pair with a small buffer, read every
    # few frames): the packets it refuses are queued with its own picture numbers.
    blocked = add("blocked-h", "chromium_offer_play", h, unix=True)
    stream.slow.add("blocked-h")
    settled = add("settled", "aiortc_offer_play", h)

    # Every layer's keyframe: each player starts (it waited for one).
    stream.tick(keys="qhf")
    stream.open_window("steady-q")
    stream.open_window("steady-h")
    stream.ticks(8)
    # The settled player moves up to q at q's next keyframe (q's frames before it: keyframe requests).
    settled.select_layer(q, stream.now)
    blocked.select_layer(q, stream.now)  # so that its picture numbers are not the publisher's
    stream.ticks(3)
    stream.tick(keys="q")
    stream.open_window("settled")
    stream.ticks(4)
    # The switching player goes to h (7-bit picture ids) at h's keyframe.
    switching.select_layer(h, stream.now)
    stream.ticks(5)
    stream.tick(keys="h")
    stream.ticks(6)
    # Packets out of order within a frame; one held back and sent after the next frame (an older
    # picture's); a duplicate.
    held = stream.tick(q={"order": (1, 0)}, h={"order": (0, 2, 1), "hold": (1,)})
    stream.tick()
    stream.layers["h"].send(held["h"][0])
    stream.layers["q"].send(stream.layers["q"].last_sent)
    stream.ticks(2)

    # A temporal cap (TL1) for the capped player, come while a TL2 frame is in progress on q: the
    # frame's other packets still go.
    stream.until("q", 2)
    stream.tick(q={"between": lambda: capped.select_layer(q, stream.now, temporal=1)})
    stream.ticks(6)
    # Late packets: a TL1 picture's (kept; a dropped TL2 picture came after it) and a TL2 one's (dropped).
    stream.until("q", 1)
    late_tl1 = stream.tick(q={"hold": (1,)})["q"]
    late_tl2 = stream.tick(q={"hold": (0,)})["q"]
    stream.tick()
    stream.layers["q"].send(late_tl1[0])
    stream.layers["q"].send(late_tl2[0])
    stream.ticks(2)
    # Descriptors with some fields only (picture id, TID, KEYIDX), none (X clear), and cut short.
    stream.tick(q={"variant": "i-only"})
    stream.until("q", 2)
    stream.tick(q={"variant": "t-only"})  # TL2 with no picture id: dropped for the capped player, no gap
    stream.tick(q={"variant": "k-only"})
    stream.tick(q={"variant": "x-clear"})
    stream.tick(q={"extra": (1, b"\x80\xe0")})  # X, then I, L and T said but nothing follows
    stream.tick(q={"extra": (2, b"\x90")})  # X, and no extension byte
    stream.ticks(2)
    capped.select_layer(q, stream.now, temporal=0)  # down to TL0
    stream.ticks(8)
    # NACKs and a probe while capped: the resent packets carry the numbers the originals had.
    last = capped.rewriter.last_sequence
    capped.retransmit(tuple((last - k) & 0xFFFF for k in (0, 1, 4)), stream.now)
    capped.send_probe(2500, stream.now)
    stream.pump()

    # The switching player goes to f (no picture ids) at f's keyframe.
    switching.select_layer(f, stream.now)
    stream.ticks(3)
    stream.tick(keys="f")
    stream.ticks(5)
    # The cap lifted: TL1 and TL2 come back at a frame marked Y, the rest at q's next keyframe.
    capped.select_layer(q, stream.now)
    stream.ticks(8)
    # The switching player asks for q, then h, then q again, before any keyframe (targets replaced).
    switching.select_layer(q, stream.now)
    stream.ticks(2)
    switching.select_layer(h, stream.now)
    stream.ticks(2)
    switching.select_layer(q, stream.now)
    stream.ticks(2)
    # A player joins q midway, from the keyframe cache (q's latest keyframe and every packet since).
    joiner = add("joiner", "aiortc_offer_play", q)
    if not joiner.start_from_cache(stream.now):
        q.request_keyframe(stream.now)
    stream.pump()
    stream.open_window("joiner")
    stream.ticks(2)
    stream.tick(keys="q")  # the switching player moves to q; the capped one gets every layer again
    stream.ticks(15)
    # The switching player asks for h and gives it up before h's keyframe.
    switching.select_layer(h, stream.now)
    stream.ticks(2)
    switching.select_layer(q, stream.now)
    stream.tick()
    stream.open_window("switching")
    # NACKs: from before its switch to q (the previous layer's), recent ones; a probe. The gstreamer
    # player has no RTX: the packet itself is resent.
    last = switching.rewriter.last_sequence
    assert switching.switched_at is not None
    switching.retransmit(((switching.switched_at - 2) & 0xFFFF, (last - 1) & 0xFFFF, last), stream.now)
    switching.send_probe(2500, stream.now)
    steady_h.retransmit(((steady_h.rewriter.last_sequence - 1) & 0xFFFF,), stream.now)
    stream.pump()
    stream.ticks(10)
    # The capped player moves to h (its dropped pictures forgotten): its numbers go on with offsets.
    capped.select_layer(h, stream.now)
    stream.ticks(3)
    stream.tick(keys="h")
    stream.open_window("capped")
    # Late packets from before q's wraps: of picture 0x7FFF after pictures 0 and 1, and of the last
    # frame with TL0PICIDX 255 after TL0PICIDX 0 began.
    q_frames = stream.layers["q"]
    while q_frames.picture_id != 0x7FFF:
        stream.tick()
    late = stream.tick(q={"hold": (1,)})["q"]
    stream.ticks(2)
    q_frames.send(late[0])
    while not (q_frames.tl0 == 255 and q_frames.next_tid() == 2 and q_frames.index % len(L1T3) == 3):
        stream.tick()
    late = stream.tick(q={"hold": (0,)})["q"]
    stream.ticks(2)
    q_frames.send(late[0])
    stream.ticks(10)
    stream.close_window("capped")
    # Capped again, on h (7-bit picture ids), and lifted.
    capped.select_layer(h, stream.now, temporal=0)
    stream.ticks(10)
    capped.select_layer(h, stream.now)
    stream.ticks(6)
    stream.tick(keys="h")
    stream.ticks(20)
    for name in ("steady-q", "steady-h", "settled", "switching", "joiner"):
        stream.close_window(name)

    end = stream.now
    summary: dict[str, Any] = {"totals": attrs.asdict(totals), "players": {}, "producers": {}}
    calls: dict[str, int] = {}
    for name, player in stream.players.items():
        player.sink.receive()
        consumer = player.consumers["video"]
        summary["players"][name] = {
            "index": player.index,
            "ssrc": consumer.ssrc,
            "datagrams": [d.hex() for d in player.sink.datagrams],
            "video": consumer_summary(consumer, end + 0.5)
            | {
                "vp8": vp8_state(consumer),
                "switched_at": consumer.switched_at,
                "option_since": consumer.option_since,
            },
            "trace": stream.trace[name],
        }
        calls[f"vp8/{name}"] = consumer.forward_calls
        calls[f"vp8-would-block/{name}"] = consumer.would_block_calls
        player.sink.close()
    for rid, producer in producers.items():
        summary["producers"][rid] = {
            "packets": producer.packets,
            "keyframe_requests": producer.keyframe_requests,
            "gop": len(producer.keyframe_cache),
            "pixels": producer.pixels,
        }
    summary["keyframe_requests_sent"] = [producer.rid for producer in link.keyframes]
    summary["offered"] = dict(sorted(stream.offered.items()))
    summary["windows"] = {name: window["offered"] for name, window in stream.windows.items()}
    calls |= {f"vp8-window/{name}": window["forward_calls"] for name, window in stream.windows.items()}
    return {"summary": summary, "calls": calls}


def run_all(fan_out: FanOut | None = None, *, shared: bool = False) -> dict[str, Any]:
    """Both profiles; `shared`: the players' wires also send through one shared socket (Wire.share)."""
    global SHARED
    SHARED = SharedSocket()
    if shared:
        SHARED.open()
    runs = {profile.name: run(profile, fan_out) for profile in PROFILES}
    if SHARED.sock is not None:
        SHARED.sock.close()
    return {
        # Which socket the players' datagrams came from: differs between the paths by design.
        "received": dict(SHARED.received),
        "compiled": fanout.COMPILED,
        "pure_python_env": os.environ.get(fanout.PURE_PYTHON_ENV),
        "runs": {name: r["summary"] for name, r in runs.items()},
        # How often each consumer's Python `forward` ran: differs between the paths by design.
        "forward_calls": {name: r["forward_calls"] for name, r in runs.items()},
    }


def main() -> None:
    print(json.dumps(run_all(shared=os.environ.get(SHARED_ENV) == "1"), sort_keys=True))


if __name__ == "__main__":
    main()
