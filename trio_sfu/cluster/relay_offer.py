"""The play offer a relay sends its origin, and what it reads back from the answer.

A relay does not know the publisher's codecs before it asks, so it offers every codec the server
forwards (the origin answers with the publisher's own, as it would for a browser that offers them
all), each video codec with RTX, NACK, PLI, FIR and REMB. The origin's answer describes what it will
send (sendonly sections with their SSRCs, codecs and header extension ids): the same shape as a
publisher's offer, so the relay reads it with the server's own publish negotiation and gets the
tracks its local producers are made of.
"""

from __future__ import annotations

import os
import secrets

import attrs

from trio_sfu.media.negotiation import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    Negotiated,
    TransportParameters,
    answer_publish,
)
from trio_sfu.wire.datagram import Address
from trio_sfu.wire.sdp import Offer, SdpError, parse_offer

OPUS = (111, "opus/48000/2", "minptime=10;useinbandfec=1")
# (payload type, rtpmap, fmtp, RTX payload type): what Chromium offers, as the origin may have any.
VIDEO_CODECS = (
    (96, "VP8/90000", "", 97),
    (98, "VP9/90000", "profile-id=0", 99),
    (100, "VP9/90000", "profile-id=2", 101),
    (102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f", 103),
    (104, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f", 105),
    (106, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 107),
    (108, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f", 109),
    (112, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f", 113),
    (114, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f", 115),
    (45, "AV1/90000", "", 46),
)
VIDEO_FEEDBACK = ("goog-remb", "ccm fir", "nack", "nack pli")
EXTENSIONS = {"audio": ((1, EXT_AUDIO_LEVEL), (2, EXT_ABS_SEND_TIME), (4, EXT_MID)),
              "video": ((2, EXT_ABS_SEND_TIME), (4, EXT_MID))}


@attrs.frozen
class RelayLocal:
    """The relay's side of the transport it offers."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256 of the relay's certificate
    address: Address  # its UDP socket (the host candidate)


def relay_offer(local: RelayLocal, kinds: tuple[str, ...] = ("audio", "video")) -> str:
    """A BUNDLE recvonly offer of `kinds` with every codec the server forwards."""
    host, port = local.address
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=- {int.from_bytes(os.urandom(7), 'big')} 2 IN {family} {host}",
        "s=trio_sfu relay",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(str(i) for i in range(len(kinds)))}",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
    ]
    video_formats = " ".join(f"{pt} {rtx}" for pt, _, _, rtx in VIDEO_CODECS)
    formats_of = {"audio": str(OPUS[0]), "video": video_formats}
    for index, kind in enumerate(kinds):
        formats = formats_of[kind]
        lines += [
            f"m={kind} {port if index == 0 else 9} UDP/TLS/RTP/SAVPF {formats}",
            f"c=IN {family} {host}",
            f"a=rtcp:9 IN {family} {host}",
        ]
        if index == 0:
            lines += [f"a=candidate:1 1 udp 2122260223 {host} {port} typ host generation 0",
                      "a=end-of-candidates"]
        lines += [
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            f"a=fingerprint:sha-256 {local.fingerprint}",
            "a=setup:active",
            f"a=mid:{index}",
            *(f"a=extmap:{ident} {uri}" for ident, uri in EXTENSIONS[kind]),
            "a=recvonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
        ]
        if kind == "audio":
            pt, rtpmap, fmtp = OPUS
            lines += [f"a=rtpmap:{pt} {rtpmap}", f"a=fmtp:{pt} {fmtp}"]
            continue
        for pt, rtpmap, fmtp, rtx in VIDEO_CODECS:
            lines.append(f"a=rtpmap:{pt} {rtpmap}")
            lines += [f"a=rtcp-fb:{pt} {feedback}" for feedback in VIDEO_FEEDBACK]
            if fmtp:
                lines.append(f"a=fmtp:{pt} {fmtp}")
            lines += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
    return "\r\n".join(lines) + "\r\n"


@attrs.frozen
class OriginAnswer:
    """What a relay needs of its origin's answer: how to reach it, and the tracks it will send."""

    description: Offer
    negotiated: Negotiated
    address: Address


def read_answer(sdp: str, family_v6: bool = False) -> OriginAnswer:
    """The origin's answer, read as the description of a sender. Raises SdpError."""
    # The origin is ICE-lite, as every trio_sfu is; read as an offer to a server that must not be, the
    # line would be refused. The relay is the full (controlling) agent here: the line says nothing new.
    lines = [line for line in sdp.splitlines() if line.strip() != "a=ice-lite"]
    description = parse_offer("\r\n".join(lines) + "\r\n")
    # Only the tracks are wanted of the publish negotiation; its own answer text is never sent.
    local = TransportParameters(
        ice_ufrag=secrets.token_hex(4), ice_pwd=secrets.token_hex(12), fingerprint_sha256="00", candidates=()
    )
    negotiated = answer_publish(description, local)
    if any(track.ssrc is None for track in negotiated.tracks):
        raise SdpError("the origin's answer names no SSRC for a track")
    candidates = [c for c in description.candidates if c.transport.lower() == "udp"]
    usable = [c for c in candidates if (":" in c.address) == family_v6] or candidates
    if not usable:
        raise SdpError("the origin's answer has no UDP candidate")
    return OriginAnswer(description, negotiated, (usable[0].address, usable[0].port))
