"""RTP packets built by hand for tests, independently of the code under test."""

from __future__ import annotations

import struct
from collections.abc import Sequence

VP8, OPUS = 96, 111


def build_rtp(
    *,
    sequence: int = 1,
    timestamp: int = 1000,
    ssrc: int = 0x11223344,
    payload_type: int = VP8,
    marker: bool = False,
    payload: bytes = b"\x10\x02\x03\x04",
    csrcs: Sequence[int] = (),
    extensions: Sequence[tuple[int, bytes]] = (),
    two_byte: bool = False,
    padding: int = 0,
) -> bytes:
    """An RTP packet built independently of the code under test (RFC 3550 / RFC 8285 by hand)."""
    first = 0x80 | len(csrcs) | (0x20 if padding else 0) | (0x10 if extensions else 0)
    second = (0x80 if marker else 0) | payload_type
    out = struct.pack("!BBHII", first, second, sequence, timestamp, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extensions:
        body = b""
        for ident, value in extensions:
            if two_byte:
                body += bytes((ident, len(value))) + value
            else:
                body += bytes(((ident << 4) | (len(value) - 1),)) + value
        body += bytes(-len(body) % 4)
        out += struct.pack("!HH", 0x1000 if two_byte else 0xBEDE, len(body) // 4) + body
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes((padding,))
    return out
