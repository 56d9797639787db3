"""A subscriber worker process: many real play legs, and a receive loop cheap enough not to matter.

Every leg has its own UDP socket (its own 5-tuple, as a browser would). All of them sit in one epoll
set whose descriptor Trio waits on, so one wake-up serves every socket that has data, and each socket
is read until EAGAIN. Per RTP packet the loop does only: sequence accounting per SSRC, the latency
from abs-send-time (the header is not encrypted), and SRTP unprotect for 1 packet in 8 — every packet
until the leg's first keyframe, and every packet on legs chosen to decrypt all.

With `WorkerConfig.transport` "tcp", every leg is a TCP connection to the server's ICE-TCP candidate
instead (see proto.py) and the loop deframes it (`FrameReader`: RFC 4571, a 2-byte length before each
datagram; a frame may arrive in pieces over several reads), then treats each frame exactly as the UDP
datagram it would have been. Each frame takes two reads, its length and then exactly its body, so
that its kernel receive timestamp is that of its own last byte, never of a later frame's. The loop
reads every ready connection every round (2 ms), which is what the server needs of a TCP player: it
drops whole frames for one whose connection has 256 KiB queued.

With `WorkerConfig.latency_by_port`, the end-to-end latency histograms are kept per server media port
(the port the leg's answer named): a server of several worker processes (`--workers N`) gives each its
own port, so the orchestrator can tell the legs of the worker holding the publisher from those served
through a relay.
"""

from __future__ import annotations

import collections
import contextlib
import math
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import attrs
import trio

from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME
from trio_sfu.transport.certificate import Certificate

from .proto import ABS_SEND_TIME_ID, AST_UNITS, FRAME_HEADER, VP8_PT, LegTransport, open_leg
from .publisher import describe
from .sendlog import SLOTS, SendLog, payload_offset

SO_TIMESTAMPNS = 35  # Linux; the socket module does not export it
FINE_BUCKETS = 4096  # abs-send-time ticks (3.8 us) >> 2: 15.3 us buckets up to 62.5 ms
COARSE_SHIFT = 12  # then 15.6 ms buckets up to 32 s
COARSE_BUCKETS = 2048
EARLY_LIMIT = 512  # SRTP packets kept per leg while its DTLS handshake is still being processed
TICK = 1.0 / AST_UNITS
FINE_WIDTH = 4 * TICK
COARSE_WIDTH = (1 << COARSE_SHIFT) * TICK


@attrs.define
class WorkerConfig:
    url: str
    stream: str = "bench"
    token: str = ""
    decrypt_every: int = 8  # a power of two
    decrypt_all_legs: int = 1  # the first legs of this worker decrypt every packet
    setup_concurrency: int = 8
    rcvbuf: int = 1 << 21
    coalesce: float = 0.002  # seconds the receive thread sleeps between rounds (see receive_loop)
    send_log: SendLog | None = None  # the publisher's, for end-to-end latency (see sendlog.py)
    # Keep the end-to-end latency per server media port (a server of several workers; not Janus, which
    # has a port per session).
    latency_by_port: bool = False
    transport: str = "udp"  # "tcp": every leg (and probe) over ICE-TCP (see the module's docstring)


class SubscriberLeg:
    """What the receive loop keeps per leg."""

    def __init__(self, index: int, transport: LegTransport, decrypt_all: bool) -> None:
        self.index = index
        self.transport = transport
        self.decrypt_all = decrypt_all
        self.mask = 0  # decrypt when (count & mask) == 0: every packet until the first keyframe
        self.early: list[tuple[bytes, float]] = []  # SRTP that came before the keys (see run)
        self.count = 0
        # ssrc -> [extended max seq, received, first seq, seq offset to the publisher's (-1: not yet
        # known), send-log base of its kind (simulcast: of the layer it was found in)]
        self.streams: dict[bytes, list[int]] = {}
        self.decrypted = 0
        self.failed_at: tuple[int, float] | None = None  # (sequence, s after set-up) of the first bad packet
        self.offer_sent_at = 0.0
        self.connected_at = 0.0
        self.first_rtp_at = 0.0
        self.first_keyframe_at = 0.0
        self.active = True
        self.fd = -1
        self.frames: FrameReader | None = None  # ICE-TCP: the stream's deframer; None over UDP
        answer = transport.answer
        self.ast_id = answer.extension_id(EXT_ABS_SEND_TIME) or ABS_SEND_TIME_ID
        self.ast_byte = (self.ast_id << 4) | 2  # the one-byte header of a 3-byte abs-send-time element
        self.video_pt = answer.payload_types.get("video", VP8_PT)
        self.signaling: Any = None  # proto.Signaling or janus.JanusSignaling

    def expected(self) -> int:
        return sum(s[0] - s[2] + 1 for s in list(self.streams.values()))

    def received(self) -> int:
        return sum(s[1] for s in list(self.streams.values()))


class FrameReader:
    """RFC 4571 deframing of one leg's ICE-TCP connection, for the receive loop.

    `read` returns one whole frame and the ancillary data of the read that completed it (the kernel
    receive timestamp of the frame's last byte: when it could first be used), or None when no whole
    frame is there yet (a part that is stays here until the rest comes). It reads the 2-byte length,
    then exactly the body, so no read takes bytes of the next frame. EOFError when the connection
    ended (the server closed it, or it broke)."""

    __slots__ = ("_length", "_partial", "_recv", "_recvmsg")

    def __init__(self, sock: socket.socket) -> None:
        self._recv = sock.recv
        self._recvmsg = sock.recvmsg
        self._length = -1  # the frame's length once its header is in; -1: reading a header
        self._partial = b""  # what has come of the header or the body so far

    def read(self) -> tuple[bytes, list[tuple[int, int, bytes]]] | None:
        try:
            if self._length < 0:
                head = self._recv(FRAME_HEADER - len(self._partial))
                if not head:
                    raise EOFError("the server closed the connection")
                if self._partial:
                    head = self._partial + head
                if len(head) < FRAME_HEADER:
                    self._partial = head
                    return None
                self._partial = b""
                self._length = (head[0] << 8) | head[1]
                if not self._length:  # an empty frame: nothing to hand over
                    self._length = -1
                    return None
            data, ancillary, _, _ = self._recvmsg(self._length - len(self._partial), 64)
            if not data:
                raise EOFError("the server closed the connection")
        except BlockingIOError:  # the rest of the frame is still on its way
            return None
        except ConnectionError as exc:
            raise EOFError(f"the connection broke ({type(exc).__name__})") from None
        if self._partial:
            data = self._partial + data
        if len(data) < self._length:
            self._partial = data
            return None
        self._partial = b""
        self._length = -1
        return data, ancillary


def is_vp8_keyframe_start(packet: bytes) -> bool:
    """RFC 7741: descriptor with S=1, PID=0, then the payload header's P bit clear (a keyframe)."""
    first = packet[0]
    pos = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if pos + 4 > len(packet):
            return False
        pos += 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    if pos >= end:
        return False
    descriptor = packet[pos]
    if not descriptor & 0x10 or descriptor & 0x07:
        return False
    pos += 1
    if descriptor & 0x80:
        extension = packet[pos]
        pos += 1
        if extension & 0x80:
            pos += 2 if packet[pos] & 0x80 else 1
        if extension & 0x40:
            pos += 1
        if extension & 0x30:
            pos += 1
    return pos < end and not packet[pos] & 0x01


def clock_offset(monotonic: Callable[[], float], realtime: Callable[[], float]) -> float:
    """CLOCK_MONOTONIC minus CLOCK_REALTIME, from the tightest of three bracketed readings (a thread
    preempted between two readings would shift every latency of the round)."""
    best_gap, best = math.inf, 0.0
    for _ in range(3):
        before = realtime()
        mono = monotonic()
        after = realtime()
        if after - before < best_gap:
            best_gap, best = after - before, mono - (before + after) / 2
    return best


def find_abs_send_time(packet: bytes, offset: int, ext_id: int) -> int:
    """The abs-send-time value in a one-byte-header extension block at `offset`, or -1."""
    if packet[offset : offset + 2] != b"\xbe\xde":
        return -1
    pos = offset + 4
    end = pos + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    while pos < end:
        byte = packet[pos]
        if byte == 0:
            pos += 1
            continue
        ident, size = byte >> 4, (byte & 0x0F) + 1
        if ident == 15:
            return -1
        if ident == ext_id and size == 3:
            return int.from_bytes(packet[pos + 1 : pos + 4], "big")
        pos += 1 + size
    return -1


class Worker:
    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.certificate = Certificate.generate("bench-subscriber")
        self.epoll = select.epoll()
        self.by_fd: dict[int, tuple[SubscriberLeg, LegTransport, list[int], list[int]]] = {}
        self.legs: list[SubscriberLeg] = []
        self.fine = [0] * FINE_BUCKETS
        self.coarse = [0] * COARSE_BUCKETS
        # The server's media port (from the leg's answer) -> the end-to-end histograms (fine, coarse)
        # of the legs it serves.
        self.e2e_by_port: dict[int, tuple[list[int], list[int]]] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.limiter = trio.CapacityLimiter(config.setup_concurrency)
        self.started = 0
        self.stopping = False
        self.setting_up = 0  # legs between offer and DTLS done
        self.trio_token = trio.lowlevel.current_trio_token()

    # ---- the receive loop (its own thread) ----

    def receive_loop(self) -> None:
        try:
            self._receive_loop()
        except BaseException as exc:  # a dead receiver must show in the report, not just stop counting
            self.failures.append(f"receiver thread: {describe(exc)}")
            self.counters["receiver_died"] += 1
            raise

    def _receive_loop(self) -> None:
        """Block in epoll (GIL released) until something arrives; then read one datagram from each
        ready socket and poll again without blocking until nothing is left (no EAGAIN per socket);
        then sleep `coalesce` seconds so that the next round finds many packets, not one.

        Sleeping does not bias the figures: arrival times are the kernel's receive timestamps
        (SO_TIMESTAMPNS, CLOCK_REALTIME, mapped onto CLOCK_MONOTONIC each round), not our read times.
        Only RTP is handled here; every other datagram goes to the Trio thread.
        """
        poll = self.epoll.poll
        by_fd = self.by_fd
        monotonic, realtime, sleep = time.monotonic, time.time, time.sleep
        timespec = struct.Struct("@qq").unpack
        fine, coarse = self.fine, self.coarse
        send_log = self.config.send_log
        sent_times = send_log.times if send_log is not None else None
        counters = self.counters
        decrypt_mask = self.config.decrypt_every - 1
        coalesce = self.config.coalesce
        to_trio = self.trio_token.run_sync_soon
        control = self._control_datagram
        while not self.stopping:
            events = poll(0.25)
            if events:
                counters["rounds"] += 1
            offset = clock_offset(monotonic, realtime)
            while events:
                for fd, _ in events:
                    entry = by_fd.get(fd)
                    if entry is None:
                        continue
                    leg, transport, e2e_fine, e2e_coarse = entry
                    frames = leg.frames
                    try:
                        if frames is None:
                            data, ancillary, _, _ = transport.sock.recvmsg(2048, 64)
                        else:  # ICE-TCP: one whole frame, or none yet
                            frame = frames.read()
                            if frame is None:
                                counters["tcp_partial_reads"] += 1
                                continue
                            data, ancillary = frame
                    except OSError:  # EAGAIN after all, or a socket closed under us
                        counters["recv_error"] += 1
                        continue
                    except EOFError as exc:
                        self._stream_ended(fd, transport, str(exc))
                        continue
                    if ancillary:
                        seconds, nanoseconds = timespec(ancillary[0][2])
                        now = seconds + nanoseconds * 1e-9 + offset
                    else:
                        now = monotonic()
                        counters["no_timestamp"] += 1
                    # SRTP that came before our view of the DTLS handshake (its last flight went to the Trio
                    # thread just before it: the keyframe cache's replay follows the server's flight at once):
                    # kept, and counted as it comes once the keys are there.
                    if leg.early and transport.srtp is not None:
                        packets, leg.early = [*leg.early, (data, now)], []
                    else:
                        packets = [(data, now)]
                    for data, now in packets:
                        first = data[0]
                        srtp = transport.srtp
                        if srtp is None and 128 <= first <= 191 and not 192 <= data[1] <= 223:
                            if len(leg.early) < EARLY_LIMIT:
                                leg.early.append((data, now))
                            continue
                        if first < 128 or first > 191 or 192 <= data[1] <= 223 or srtp is None:
                            to_trio(control, transport, data)
                            continue
                        if first & 0x20:
                            counters["rtp_with_padding"] += 1  # e.g. bandwidth probes, not media
                        seq = (data[2] << 8) | data[3]
                        key = data[8:12]
                        state = leg.streams.get(key)
                        if state is None:
                            base = SLOTS if (data[1] & 0x7F) == leg.video_pt else 0
                            state = leg.streams[key] = [seq, 1, seq, -1, base]
                            if not leg.first_rtp_at:
                                leg.first_rtp_at = now
                        else:
                            delta = (seq - state[0]) & 0xFFFF
                            if delta < 0x8000:
                                state[0] += delta
                            state[1] += 1
                        if state[3] >= 0 and sent_times is not None:
                            ticks = int((now - sent_times[state[4] + ((seq - state[3]) & 0xFFFF)]) * 262144.0)
                            if 0 <= ticks < 16384:
                                e2e_fine[ticks >> 2] += 1
                            elif 0 <= ticks < 0x800000:
                                e2e_coarse[min(ticks >> COARSE_SHIFT, COARSE_BUCKETS - 1)] += 1
                            else:  # not the packet we took it for: learn the offset again
                                counters["e2e_remapped"] += 1
                                state[3] = -1
                        if first & 0x10:
                            pos = 12 + ((first & 0x0F) << 2)
                            if data[pos + 4] == leg.ast_byte and data[pos] == 0xBE:
                                sent = (data[pos + 5] << 16) | (data[pos + 6] << 8) | data[pos + 7]
                            else:
                                sent = find_abs_send_time(data, pos, leg.ast_id)
                            if sent >= 0:
                                ticks = (int(now * 262144.0) - sent) & 0xFFFFFF
                                if ticks < 16384:
                                    fine[ticks >> 2] += 1
                                elif ticks < 0x800000:
                                    coarse[min(ticks >> COARSE_SHIFT, COARSE_BUCKETS - 1)] += 1
                                else:
                                    counters["latency_negative"] += 1
                            else:
                                counters["latency_unparsed"] += 1
                        count = leg.count = leg.count + 1
                        if count & leg.mask == 0:
                            plain = srtp.unprotect_rtp(data)
                            if plain is None and leg.failed_at is None:
                                leg.failed_at = (seq, now - leg.connected_at)
                            if plain is not None:
                                leg.decrypted += 1
                                if state[3] < 0 and send_log is not None:
                                    payload = plain[payload_offset(plain) :]
                                    # (simulcast: the layer the server forwards is found too)
                                    kind, original = send_log.locate(state[4] // SLOTS, payload)
                                    if original >= 0:
                                        state[3] = (seq - original) & 0xFFFF
                                        state[4] = kind * SLOTS
                                        counters["e2e_mapped"] += 1
                                if (
                                    not leg.first_keyframe_at
                                    and (plain[1] & 0x7F) == leg.video_pt
                                    and is_vp8_keyframe_start(plain)
                                ):
                                    leg.first_keyframe_at = now
                                    if not leg.decrypt_all:
                                        leg.mask = decrypt_mask
                events = poll(0)
                counters["polls"] += 1
            if coalesce and not self.setting_up:  # set-up round trips are timed: answer them at once
                sleep(coalesce)

    @staticmethod
    def _control_datagram(transport: LegTransport, data: bytes) -> None:
        transport.on_control(data, trio.current_time())

    def _stream_ended(self, fd: int, transport: LegTransport, reason: str) -> None:
        """(Receive thread) an ICE-TCP connection ended: stop polling it (it would be readable for
        ever), and tell its leg (a set-up in progress fails at once, saying why)."""
        self.counters["tcp_closed_as_asked" if transport.closing else "tcp_closed"] += 1
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        self.trio_token.run_sync_soon(transport.on_stream_closed, reason)

    def register(self, leg: SubscriberLeg, transport: LegTransport) -> None:
        leg.fd = transport.sock.fileno()
        transport.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if transport.kind == "tcp":
            leg.frames = FrameReader(transport.sock)
        port = transport.answer.address[1] if self.config.latency_by_port else 0
        e2e = self.e2e_by_port.get(port)
        if e2e is None:
            e2e = self.e2e_by_port[port] = ([0] * FINE_BUCKETS, [0] * COARSE_BUCKETS)
        self.by_fd[leg.fd] = (leg, transport, *e2e)
        self.epoll.register(leg.fd, select.EPOLLIN)

    def unregister(self, leg: SubscriberLeg) -> None:
        if self.by_fd.get(leg.fd, (None,))[0] is leg:
            del self.by_fd[leg.fd]
            with contextlib.suppress(OSError):  # closing the socket already removed it
                self.epoll.unregister(leg.fd)

    # ---- legs ----

    async def run_leg(self, index: int, done: trio.MemorySendChannel[dict[str, Any]]) -> None:
        leg: SubscriberLeg | None = None
        decrypt_all = self.started < self.config.decrypt_all_legs
        self.started += 1

        def on_transport(transport: LegTransport) -> None:
            nonlocal leg
            leg = SubscriberLeg(index, transport, decrypt_all)
            self.register(leg, transport)

        self.setting_up += 1
        setting_up = True
        try:
            async with open_leg(
                self.config.url, publish=False, certificate=self.certificate, stream=self.config.stream,
                token=self.config.token, rcvbuf=self.config.rcvbuf, on_transport=on_transport,
                limiter=self.limiter, transport=self.config.transport,
            ) as opened:
                assert leg is not None
                leg.offer_sent_at = opened.offer_sent_at
                leg.connected_at = opened.connected_at
                leg.signaling = opened.signaling
                self.setting_up -= 1
                setting_up = False
                self.legs.append(leg)
                await done.send({"event": "leg_ready", "index": index})
                try:
                    await trio.sleep_forever()
                finally:
                    leg.active = False
        except Exception as exc:
            self.failures.append(f"leg {index}: {describe(exc)}")
            await done.send({"event": "leg_failed", "index": index, "error": describe(exc)})
        finally:
            if setting_up:
                self.setting_up -= 1
            if leg is not None:
                self.unregister(leg)

    async def probe(self) -> dict[str, Any]:
        """A new subscriber on the loaded server: offer to first RTP and to first keyframe, then leave."""
        leg: SubscriberLeg | None = None

        def on_transport(transport: LegTransport) -> None:
            nonlocal leg
            leg = SubscriberLeg(-1, transport, False)
            self.register(leg, transport)

        self.setting_up += 1  # until the first keyframe
        result: dict[str, Any] | None = None
        try:
            with trio.fail_after(15):
                async with open_leg(
                    self.config.url, publish=False, certificate=self.certificate, stream=self.config.stream,
                    token=self.config.token, rcvbuf=self.config.rcvbuf, on_transport=on_transport,
                    transport=self.config.transport,
                ) as opened:
                    assert leg is not None
                    while not leg.first_keyframe_at:
                        await trio.sleep(0.005)
                    result = {
                        "event": "probe",
                        "setup_s": opened.connected_at - opened.offer_sent_at,
                        "first_rtp_s": leg.first_rtp_at - opened.offer_sent_at,
                        "first_keyframe_s": leg.first_keyframe_at - opened.offer_sent_at,
                    }
                    leaving = trio.current_time()
            assert result is not None
            result["leave_s"] = trio.current_time() - leaving
            return result
        except Exception as exc:
            if result is None:
                return {"event": "probe", "error": describe(exc)}
            # Measured, then leaving went wrong (e.g. the close handshake outlasted its timeout while
            # this process was busy receiving): keep the figures, say what happened.
            result["leave_error"] = describe(exc)
            return result
        finally:
            self.setting_up -= 1
            if leg is not None:
                self.unregister(leg)

    # ---- reporting ----

    def snapshot(self) -> dict[str, Any]:
        srtp: collections.Counter[str] = collections.Counter()
        transport: collections.Counter[str] = collections.Counter()
        for leg in self.legs:
            if leg.transport.srtp is not None:
                srtp.update(leg.transport.srtp.counters)
            transport.update(leg.transport.counters)
        e2e = {port: (list(fine), list(coarse)) for port, (fine, coarse) in list(self.e2e_by_port.items())}
        fine_by_port = [fine for fine, _ in e2e.values()]
        coarse_by_port = [coarse for _, coarse in e2e.values()]
        return {
            "event": "snapshot",
            "at": time.monotonic(),
            "legs": len(self.legs),
            "active": sum(leg.active for leg in self.legs),
            "packets": [leg.received() for leg in list(self.legs)],
            "ports": [leg.transport.answer.address[1] for leg in list(self.legs)],  # as "packets"
            "expected": [leg.expected() for leg in list(self.legs)],
            "decrypted": sum(leg.decrypted for leg in self.legs),
            "decrypted_all_legs": sum(leg.decrypted for leg in self.legs if leg.decrypt_all),
            "first_rtp_s": [leg.first_rtp_at - leg.offer_sent_at for leg in self.legs if leg.first_rtp_at],
            "first_keyframe_s": [
                leg.first_keyframe_at - leg.offer_sent_at for leg in self.legs if leg.first_keyframe_at
            ],
            "setup_s": [leg.connected_at - leg.offer_sent_at for leg in self.legs],
            "fine": list(self.fine),
            "coarse": list(self.coarse),
            "e2e_fine": [sum(c) for c in zip(*fine_by_port, strict=True)] or [0] * FINE_BUCKETS,
            "e2e_coarse": [sum(c) for c in zip(*coarse_by_port, strict=True)] or [0] * COARSE_BUCKETS,
            "e2e_by_port": {
                port: {"fine": fine, "coarse": coarse}
                for port, (fine, coarse) in e2e.items()
                if self.config.latency_by_port
            },
            "counters": dict(self.counters),
            "closed_by_server": [
                leg.signaling.closed_by_server for leg in self.legs
                if leg.signaling is not None and leg.signaling.closed_by_server
            ],
            "srtp": dict(srtp),
            # Legs that could not unprotect a packet: which, and where it started (diagnosis only).
            "failing_legs": [
                {
                    "leg": leg.index,
                    "failures": leg.transport.srtp.counters["rtp_auth_failed"],
                    "decrypted": leg.decrypted,
                    "first_sequence": leg.failed_at[0],
                    "first_after_s": round(leg.failed_at[1], 3),
                }
                for leg in self.legs
                if leg.failed_at is not None and leg.transport.srtp is not None
            ],
            "transport": dict(transport),
            "failures": list(self.failures),
        }

    async def control(self, nursery: trio.Nursery) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        nursery.start_soon(self._forward_events, receive)
        while True:
            await trio.lowlevel.wait_readable(self.conn.fileno())
            while self.conn.poll():
                message = self.conn.recv()
                command = message["cmd"]
                if command == "add":
                    for index in message["indexes"]:
                        nursery.start_soon(self.run_leg, index, send.clone())
                elif command == "snapshot":
                    self.conn.send(self.snapshot())
                elif command == "probe":
                    nursery.start_soon(self._probe, send.clone())
                elif command == "stop":
                    nursery.cancel_scope.cancel()
                    return

    async def _probe(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        await send.send(await self.probe())

    async def _forward_events(self, receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        async for event in receive:
            self.conn.send(event)


async def worker_main(conn: Connection, config: WorkerConfig) -> None:
    worker = Worker(conn, config)
    receiver = threading.Thread(target=worker.receive_loop, name="receiver", daemon=True)
    receiver.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.control, nursery)
            conn.send({"event": "worker_ready"})
    finally:
        worker.stopping = True
        receiver.join(1)


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    """multiprocessing entry point."""
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(worker_main, conn, config)
