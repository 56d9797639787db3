"""The per-consumer rewriter (sans-IO, the per-packet fast path).

`Rewriter` turns one publisher packet into the packet one player receives: its SSRC, a contiguous
sequence space, a timestamp space that follows wall-clock time across gaps, its payload types and its
header-extension ids. The last two are a `HeaderMap`, shared by the players of a track that negotiated
the same ones (one browser version offers the same ids), so a packet is mapped once for all of them and
each player only writes its own sequence number, timestamp and SSRC (`SEQUENCE_TIMESTAMP_SSRC`, straight
into the SRTP buffer on the fast path).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping, MutableMapping

from trio_sfu.media.fanout import Lane
from trio_sfu.wire.rtp import (
    MAX_DROPOUT,
    MAX_MISORDER,
    ONE_BYTE_PROFILE,
    SEQUENCE_TIMESTAMP_SSRC,
    TWO_BYTE_PROFILE,
    RtpHeader,
    extension_span,
)

_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")


AST_UNITS = 1 << 18  # abs-send-time: seconds in 6.18 fixed point, 24 bits


def abs_send_time(now: float) -> bytes:
    return (int(now * AST_UNITS) & 0xFFFFFF).to_bytes(3, "big")


def stamp_abs_send_time(buf: bytearray, ident: int, now: float) -> bool:
    """Write `now` into the 3-byte extension element `ident` of the RTP packet in `buf`, if it has one
    (one-byte or two-byte form, RFC 8285); False when it has none."""
    if len(buf) < 12 or not buf[0] & 0x10:
        return False
    span = extension_span(buf, 12 + 4 * (buf[0] & 0x0F), ident)
    if span is None or span[1] != 3:
        return False
    buf[span[0] : span[0] + 3] = abs_send_time(now)
    return True


class HeaderMap:
    """A player's payload types and header-extension ids for one published track.

    Players that negotiated the same ones share a map (`shared`), and `apply` remembers its last
    packet: the map is applied once per packet for all of them, not once per player.
    """

    __slots__ = ("__weakref__", "_last_in", "_last_out", "ext_map", "pt_map", "stamp_id")

    def __init__(
        self, payload_types: Mapping[int, int], extension_ids: Mapping[int, int], stamp_id: int = 0
    ) -> None:
        # Publisher PT -> player PT, -1 for "drop": a list index is cheaper than a dict lookup.
        self.pt_map = [-1] * 128
        for source, target in payload_types.items():
            if not (0 <= source < 128 and 0 <= target < 128):
                raise ValueError(f"payload type out of range: {source} -> {target}")
            self.pt_map[source] = target
        # Publisher extension id -> player extension id, 0 for "remove".
        self.ext_map = [0] * 256
        for source, target in extension_ids.items():
            if not (1 <= source <= 255 and 1 <= target <= 255):
                raise ValueError(f"extension id out of range: {source} -> {target}")
            self.ext_map[source] = target
        self._last_in: bytes | None = None
        self._last_out = b""
        # The player's abs-send-time id: its value is our send time, not the publisher's (the player's
        # delay-based estimate is of the path from us, and probes are stamped on the same clock).
        self.stamp_id = stamp_id

    @classmethod
    def shared(
        cls,
        payload_types: Mapping[int, int],
        extension_ids: Mapping[int, int],
        registry: MutableMapping[object, HeaderMap],
        stamp_id: int = 0,
    ) -> HeaderMap:
        """The map in `registry` equal to this one, made and registered if there is none yet (make the
        registry a WeakValueDictionary, so that a map goes when its last player does)."""
        key = (frozenset(payload_types.items()), frozenset(extension_ids.items()), stamp_id)
        found = registry.get(key)
        if found is None:
            found = registry[key] = cls(payload_types, extension_ids, stamp_id)
        return found

    def apply(self, packet: bytes, header: RtpHeader, now: float | None = None) -> bytes:
        """`packet` with the player's payload type and extension ids (and abs-send-time stamped at
        `now`, when given); the sequence number, timestamp and SSRC are left for each player to write.
        Its payload type must be mapped."""
        if packet is self._last_in:  # the same object: every player sharing the map gets one copy
            return self._last_out
        buf = bytearray(packet)
        buf[1] = (packet[1] & 0x80) | self.pt_map[header.payload_type]
        if header.extension_offset >= 0:
            self._rewrite_extensions(buf, packet, header.extension_offset, header.header_length)
            if self.stamp_id and now is not None:
                stamp_abs_send_time(buf, self.stamp_id, now)
        out = bytes(buf)
        self._last_in, self._last_out = packet, out
        return out

    def _rewrite_extensions(self, buf: bytearray, packet: bytes, offset: int, end: int) -> None:
        """Map extension ids in one pass over `buf`, sliding kept elements over removed ones; only a
        change of form (a player id above 14 in a one-byte block) takes the slower rebuild."""
        ext_map = self.ext_map
        profile = (packet[offset] << 8) | packet[offset + 1]
        read = write = offset + 4
        changed = False
        if profile == ONE_BYTE_PROFILE:
            while read < end:
                byte = packet[read]
                ident = byte >> 4
                if ident == 0:  # padding
                    read += 1
                    continue
                if ident == 15:  # reserved: receivers stop here, so drop the rest
                    changed = True
                    break
                size = (byte & 0x0F) + 2
                if read + size > end:  # overruns the block: drop it
                    changed = True
                    break
                target = ext_map[ident]
                if target:
                    if target > 14:
                        self._rebuild_extensions(buf, packet, offset, end, profile)
                        return
                    buf[write] = (target << 4) | (byte & 0x0F)
                    if write != read:
                        buf[write + 1 : write + size] = packet[read + 1 : read + size]
                        changed = True
                    write += size
                else:
                    changed = True
                read += size
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while read < end:
                ident = packet[read]
                if ident == 0:
                    read += 1
                    continue
                if read + 2 > end:
                    changed = True
                    break
                size = packet[read + 1] + 2
                if read + size > end:
                    changed = True
                    break
                target = ext_map[ident]
                if target:
                    buf[write] = target
                    if write != read:
                        buf[write + 1 : write + size] = packet[read + 1 : read + size]
                        changed = True
                    write += size
                else:
                    changed = True
                read += size
        else:  # an unknown profile: the player negotiated none of it
            changed = True
        if not changed:
            return  # every element kept where it was, ids mapped in place
        if write == offset + 4:
            buf[0] &= 0xEF  # nothing left: no extension block at all
            del buf[offset:end]
            return
        padding = -(write - offset) % 4
        if padding:
            buf[write : write + padding] = bytes(padding)
            write += padding
        del buf[write:end]
        _U16.pack_into(buf, offset + 2, (write - offset - 4) // 4)

    def _rebuild_extensions(self, buf: bytearray, packet: bytes, offset: int, end: int, profile: int) -> None:
        """Replace the extension block with the mapped elements only; drop the X bit if none remain."""
        elements: list[tuple[int, bytes]] = []
        ext_map = self.ext_map
        pos = offset + 4
        if profile == ONE_BYTE_PROFILE:
            while pos < end:
                byte = packet[pos]
                ident = byte >> 4
                if ident == 0:
                    pos += 1
                    continue
                if ident == 15:
                    break
                length = (byte & 0x0F) + 1
                if pos + 1 + length > end:
                    break
                target = ext_map[ident]
                if target:
                    elements.append((target, packet[pos + 1 : pos + 1 + length]))
                pos += 1 + length
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while pos < end:
                ident = packet[pos]
                if ident == 0:
                    pos += 1
                    continue
                if pos + 2 > end:
                    break
                length = packet[pos + 1]
                if pos + 2 + length > end:
                    break
                target = ext_map[ident]
                if target:
                    elements.append((target, packet[pos + 2 : pos + 2 + length]))
                pos += 2 + length
        if not elements:
            buf[0] &= 0xEF
            del buf[offset:end]
            return
        one_byte = all(0 < target < 15 and 0 < len(value) <= 16 for target, value in elements)
        block = bytearray()
        if one_byte:
            block += _U16.pack(ONE_BYTE_PROFILE)
            block += b"\x00\x00"
            for target, value in elements:
                block.append((target << 4) | (len(value) - 1))
                block += value
        else:
            block += _U16.pack(profile if profile & 0xFFF0 == TWO_BYTE_PROFILE else TWO_BYTE_PROFILE)
            block += b"\x00\x00"
            for target, value in elements:
                block.append(target)
                block.append(len(value))
                block += value
        block += bytes(-len(block) % 4)
        _U16.pack_into(block, 2, (len(block) - 4) // 4)
        buf[offset:end] = block


class Rewriter(Lane):
    """One consumer's view of one track: SSRC, sequence, timestamp, PT and extension-id mapping, mute.

    Feed it one media stream (unwrap RTX first). Output sequence numbers stay contiguous across
    mutes, publisher restarts and dropped payload types, so a player never NACKs what was never sent;
    late packets keep the place their sequence number gives them, so retransmissions map consistently.
    """

    # The rest of the state is Lane's: what the compiled fan-out reads and writes (media/fanout.py).
    __slots__ = (
        "_bad_sequence",
        "_clock_rate",
        "_initial_sequence",
        "_initial_timestamp",
        "_old_ssrcs",
        "ssrc",
    )

    def __init__(
        self,
        *,
        ssrc: int,
        clock_rate: int,
        payload_types: Mapping[int, int],
        extension_ids: Mapping[int, int],
        initial_sequence: int | None = None,
        initial_timestamp: int | None = None,
        header_maps: MutableMapping[object, HeaderMap] | None = None,
        stamp_id: int = 0,
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc out of range: {ssrc}")
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive: {clock_rate}")
        self.ssrc = ssrc
        self._clock_rate = clock_rate
        # `header_maps`: the maps other players of the same track already use, to share an equal one.
        registry: MutableMapping[object, HeaderMap] = {} if header_maps is None else header_maps
        self.header_map = HeaderMap.shared(payload_types, extension_ids, registry, stamp_id)
        self._pt_map = self.header_map.pt_map
        # Output is random at first (RFC 3550 5.1): tests may pin it. The sequence starts in the lower
        # half, as libwebrtc's does, so it cannot wrap within the first 32768 packets: a player whose
        # first packets are lost (or arrive before its SRTP keys are ready) would otherwise take its
        # first packet after the wrap for rollover 0 and fail authentication on every packet after.
        self._initial_sequence = (
            secrets.randbits(15) if initial_sequence is None else initial_sequence & 0xFFFF
        )
        self._initial_timestamp = (
            secrets.randbits(32) if initial_timestamp is None else initial_timestamp & 0xFFFFFFFF
        )
        self._muted = False
        self._needs_sync = True
        self._seq_offset = 0
        self._ts_offset = 0
        self._max_input = -1  # newest input sequence number seen (forwarded or dropped)
        self._max_back = 0  # how far behind _max_input a late packet may be and still be forwarded
        self._bad_sequence = -1  # RFC 3550 A.1: a big jump is believed when the next packet follows it
        self._input_ssrc = -1
        self._old_ssrcs: tuple[int, ...] = ()
        self._drops: list[int] = []  # recent input sequence numbers dropped (unmapped PT), oldest first
        self.packets = 0
        self.octets = 0
        self.last_sequence = -1
        self.last_timestamp = 0
        self.last_sent_at = 0.0

    @property
    def muted(self) -> bool:
        return self._muted

    def mute(self, now: float) -> None:
        """Stop forwarding; what follows the gap is spliced on at `unmute`."""
        self._muted = True

    def unmute(self, now: float) -> None:
        """Resume: the next packet continues the output sequence and wall-clock timestamps."""
        if self._muted:
            self._muted = False
            self._needs_sync = True

    def expect(self, ssrc: int | None) -> None:
        """The next packets come from `ssrc` on purpose (a simulcast layer switch), even if it is one
        this rewriter replaced before: no longer take its packets for stragglers."""
        self._old_ssrcs = tuple(s for s in self._old_ssrcs if s != ssrc)

    @property
    def next_sequence(self) -> int:
        """The output sequence number the next packet will get."""
        return self._initial_sequence if self.last_sequence < 0 else (self.last_sequence + 1) & 0xFFFF

    def _sync(self, sequence: int, timestamp: int, now: float) -> None:
        """Splice the input stream onto the output at `sequence`: the first packet ever gets the initial
        values; later ones continue the sequence and advance the timestamp by the wall-clock gap."""
        if self.last_sequence < 0:
            out_sequence = self._initial_sequence
            out_timestamp = self._initial_timestamp
            self._max_back = MAX_MISORDER - 1  # nothing was sent yet: late packets cannot collide
        else:
            out_sequence = (self.last_sequence + 1) & 0xFFFF
            gap = max(1, round((now - self.last_sent_at) * self._clock_rate))
            out_timestamp = (self.last_timestamp + gap) & 0xFFFFFFFF
            self._max_back = -1  # older input would reuse output numbers already sent
        self._seq_offset = (out_sequence - sequence) & 0xFFFF
        self._ts_offset = (out_timestamp - timestamp) & 0xFFFFFFFF
        self._max_input = (sequence - 1) & 0xFFFF
        self._drops.clear()
        self._bad_sequence = -1
        self._needs_sync = False

    def patch(self, mapped: bytes, sequence: int, timestamp: int) -> bytes:
        """A packet from `header_map.apply` with this consumer's sequence number, timestamp and SSRC."""
        buf = bytearray(mapped)
        SEQUENCE_TIMESTAMP_SSRC.pack_into(buf, 2, sequence, timestamp, self.ssrc)
        return bytes(buf)

    def number(self, header: RtpHeader, now: float, skip: bool = False) -> tuple[int, int] | None:
        """The output sequence number and timestamp of the packet `header` heads, or None when it
        must not be sent. The fan-out then writes them into each player's SRTP buffer itself (or
        `patch` does, into a copy of the packet `header_map.apply` made). `skip`: the consumer
        drops this packet (a temporal layer the player does not get): its number goes to the next."""
        if self._muted:
            return None
        sequence = header.sequence
        if header.ssrc != self._input_ssrc:
            if header.ssrc in self._old_ssrcs:
                return None  # a straggler (or a retransmission) from a stream that was replaced
            self._old_ssrcs = (self._input_ssrc, *self._old_ssrcs[:3])
            self._input_ssrc = header.ssrc
            self._needs_sync = True
        if self._needs_sync:
            self._sync(sequence, header.timestamp, now)
        payload_type = self._pt_map[header.payload_type]
        delta = (sequence - self._max_input) & 0xFFFF
        newest = 0 < delta < MAX_DROPOUT
        if newest:
            self._max_input = sequence
            back = self._max_back + delta
            self._max_back = MAX_MISORDER if back > MAX_MISORDER else back
            if self._drops and ((sequence - self._drops[0]) & 0xFFFF) > MAX_MISORDER:
                self._prune_drops(sequence)
            if payload_type < 0 or skip:
                # Close the hole: later packets take the number this one would have had.
                self._seq_offset = (self._seq_offset - 1) & 0xFFFF
                self._drops.append(sequence)
                return None
            out_sequence = (sequence + self._seq_offset) & 0xFFFF
        elif payload_type < 0 or skip:
            return None
        else:
            back = (self._max_input - sequence) & 0xFFFF
            if back <= MAX_MISORDER:
                if back > self._max_back:
                    return None  # older than a splice point: its number was given to another packet
                out_sequence = (sequence + self._seq_offset + self._drops_after(sequence)) & 0xFFFF
            elif back >= 0x8000 and sequence == self._bad_sequence:
                # Two packets in a row after a big forward jump: the publisher restarted its sequence
                # (or lost a long burst upstream). Backward jumps are never believed: a retransmission
                # of a packet from before a long mute looks just like one.
                self._needs_sync = True
                return self.number(header, now)
            else:
                self._bad_sequence = (sequence + 1) & 0xFFFF
                return None

        out_timestamp = (header.timestamp + self._ts_offset) & 0xFFFFFFFF
        self.packets += 1
        self.octets += header.payload_length
        if newest:
            self.last_sequence = out_sequence
            self.last_timestamp = out_timestamp
            self.last_sent_at = now
        return out_sequence, out_timestamp

    def source_sequence(self, output: int) -> int | None:
        """The input sequence number that output number `output` stands for since the last splice
        (packets lost before the server included), or None before anything was numbered."""
        if self._needs_sync or self.last_sequence < 0:
            return None
        return (output - self._seq_offset) & 0xFFFF

    def rewrite_retransmission(
        self, packet: bytes, header: RtpHeader, now: float | None = None
    ) -> bytes | None:
        """A packet sent again for a NACK, numbered as it was the first time (abs-send-time: now, as a
        new send). It never splices the stream (a retransmission right after an unmute must not become
        the splice point), and it is not counted in the sender report (RFC 3550 6.4.1)."""
        if self._muted or self._needs_sync or header.ssrc != self._input_ssrc:
            return None
        payload_type = self._pt_map[header.payload_type]
        sequence = header.sequence
        if payload_type < 0 or sequence in self._drops:
            return None
        back = (self._max_input - sequence) & 0xFFFF
        if back > self._max_back:
            return None  # from before the last splice, or too old to have a place
        out_sequence = (sequence + self._seq_offset + self._drops_after(sequence)) & 0xFFFF
        out_timestamp = (header.timestamp + self._ts_offset) & 0xFFFFFFFF
        mapped = self.header_map.apply(packet, header)
        if now is not None and self.header_map.stamp_id:
            stamped = bytearray(mapped)
            stamp_abs_send_time(stamped, self.header_map.stamp_id, now)
            mapped = bytes(stamped)
        return self.patch(mapped, out_sequence, out_timestamp)

    def _prune_drops(self, sequence: int) -> None:
        drops = self._drops
        while drops and ((sequence - drops[0]) & 0xFFFF) > MAX_MISORDER:
            del drops[0]

    def _drops_after(self, sequence: int) -> int:
        """How many dropped packets newer than `sequence` shifted the offset since it was numbered."""
        count = 0
        for dropped in self._drops:
            if 0 < ((dropped - sequence) & 0xFFFF) < 0x8000:
                count += 1
        return count
