"""RTP packets on the wire: the header view the fast path routes by, header extensions, and sequence
arithmetic (RFC 3550, RFC 8285). `parse_rtp` reads only what routing needs."""

from __future__ import annotations

import struct

import attrs

RTP_VERSION = 2
FIXED_HEADER = 12
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000  # the low 4 bits ("appbits") are free
# Sequence-number classification, after RFC 3550 appendix A.1.
MAX_DROPOUT = 3000  # a forward jump up to this is loss; beyond it, a restart
MAX_MISORDER = 1000  # a late packet up to this far behind keeps its place

_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")
_HEADER = struct.Struct("!BBHII")
SEQUENCE_TIMESTAMP_SSRC = struct.Struct("!HII")
"""The per-player header fields, at offset 2."""


@attrs.frozen(slots=True)
class RtpHeader:
    """The fields of an RTP header that routing and rewriting need, plus where the payload starts."""

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    header_length: int  # bytes up to the payload (including CSRCs and the extension block)
    extension_offset: int  # offset of the extension profile word, or -1
    payload_length: int  # bytes of payload (without the header and the padding)
    padding: int = 0  # padding octets at the end (0 when the P bit is clear)


def parse_rtp(packet: bytes) -> RtpHeader | None:
    """The header of a valid RTP version 2 packet, or None: malformed input is dropped, never raised."""
    size = len(packet)
    if size < FIXED_HEADER:
        return None
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        return None
    length = FIXED_HEADER + 4 * (first & 0x0F)
    extension_offset = -1
    if first & 0x10:
        if length + 4 > size:
            return None
        extension_offset = length
        length += 4 + 4 * _U16.unpack_from(packet, length + 2)[0]
    if length > size:
        return None
    padding = 0
    if first & 0x20:
        padding = packet[-1]
        if padding == 0 or length + padding > size:
            return None
    return RtpHeader(
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        header_length=length,
        extension_offset=extension_offset,
        payload_length=size - length - padding,
        padding=padding,
    )


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 are RTP payload types 64-95 once the marker
    bit is masked, and RTP must not use those."""
    return len(packet) >= 2 and 64 <= (packet[1] & 0x7F) <= 95


def read_extension(packet: bytes, header: RtpHeader, ext_id: int) -> bytes | None:
    """The value of header extension `ext_id` (RFC 8285 one-byte or two-byte form), or None."""
    span = extension_span(packet, header.extension_offset, ext_id)
    return None if span is None else bytes(packet[span[0] : span[0] + span[1]])


def extension_span(packet: bytes | bytearray, offset: int, ext_id: int) -> tuple[int, int] | None:
    """Where the value of extension `ext_id` is, (start, length), in the extension block at `offset`
    (-1: none); None when it has no such element or the block is malformed before it."""
    if offset < 0 or ext_id <= 0 or offset + 4 > len(packet):
        return None
    profile, words = _U16_PAIR.unpack_from(packet, offset)
    pos = offset + 4
    end = min(pos + 4 * words, len(packet))
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = packet[pos]
            ident = byte >> 4
            if ident == 0:  # padding
                pos += 1
                continue
            if ident == 15:  # reserved: stop parsing (RFC 8285 4.2)
                return None
            length = (byte & 0x0F) + 1
            if pos + 1 + length > end:
                return None
            if ident == ext_id:
                return pos + 1, length
            pos += 1 + length
        return None
    if profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos < end:
            ident = packet[pos]
            if ident == 0:  # padding
                pos += 1
                continue
            if pos + 2 > end:
                return None
            length = packet[pos + 1]
            if pos + 2 + length > end:
                return None
            if ident == ext_id:
                return pos + 2, length
            pos += 2 + length
        return None
    return None


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number `a` comes after `b` (RFC 1982 serial arithmetic)."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000
