"""What a datagram on the shared media port is (RFC 7983): STUN, DTLS or RTP/RTCP by its first byte,
and whose ICE check a STUN message is (its username)."""

from __future__ import annotations

import enum

from aioice import stun

Address = tuple[str, int]
"""(host, port) of a datagram's source or destination."""


class Kind(enum.Enum):
    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"
    UNKNOWN = "unknown"


def classify(data: bytes) -> Kind:
    """RFC 7983 section 7: the first byte decides."""
    if not data:
        return Kind.UNKNOWN
    first = data[0]
    if first <= 3:
        return Kind.STUN
    if 20 <= first <= 63:
        return Kind.DTLS
    if 128 <= first <= 191:
        return Kind.RTP
    return Kind.UNKNOWN


def stun_username(message: stun.Message) -> str | None:
    username = message.attributes.get("USERNAME")
    return username if isinstance(username, str) else None
