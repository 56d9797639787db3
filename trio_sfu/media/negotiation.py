"""Build the server's SDP answer to a publish or a play offer (sans-IO).

The server is an ICE-lite, DTLS-passive endpoint that forwards RTP without transcoding. So a
publisher is held to one codec per section, and a player is answered with the codec the publisher
negotiated, under the player's own payload type and header extension ids (the media layer rewrites
them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Sequence

import attrs

from trio_sfu.wire.sdp import Codec, HeaderExtension, MediaSection, Offer, SdpError

SUPPORTED_AUDIO = ("opus",)
SUPPORTED_VIDEO = ("VP8", "VP9", "H264", "AV1")

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
SIMULCAST_EXTENSIONS = (EXT_RID, EXT_REPAIRED_RID)  # how packets name their layer (RFC 8852)
PUBLISH_EXTENSIONS = (EXT_MID, EXT_ABS_SEND_TIME, EXT_TRANSPORT_CC, EXT_AUDIO_LEVEL)
# The server does not consume a player's transport-cc feedback, so it does not offer the extension.
PLAY_EXTENSIONS = (EXT_MID, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL)
PUBLISH_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb", "transport-cc")
PLAY_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")  # REMB: the player's estimate, for simulcast

# RFC 8445 section 5.1.2.1 type preference of a host candidate.
_HOST_TYPE_PREFERENCE = 126


@attrs.frozen
class TransportParameters:
    """Our side of the transport, as every answer states it: ICE credentials, the certificate
    fingerprint, and the candidates."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint_sha256: str
    candidates: tuple[tuple[str, int], ...]
    # ICE-TCP passive candidates (RFC 6544), offered after the UDP ones at a lower priority.
    tcp_candidates: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class NegotiatedTrack:
    """One accepted audio/video section: what the media layer needs to forward it."""

    mid: str
    kind: str
    codec: Codec
    rtx_payload_type: int | None
    header_extensions: tuple[HeaderExtension, ...]
    feedback: tuple[str, ...]
    ssrc: int | None
    rtx_ssrc: int | None
    cname: str | None
    msid: str | None
    # Simulcast: the layers' rids in the publisher's order (empty: one RTP stream). Their SSRCs are
    # learnt from the rid header extension of the first packets.
    rids: tuple[str, ...] = ()


@attrs.frozen
class Negotiated:
    """The answer text and the tracks it accepted, in answer order."""

    answer: str
    tracks: tuple[NegotiatedTrack, ...]


# --------------------------------------------------------------------------- codec matching

# libwebrtc's table (api/video_codecs/h264_profile_level_id.cc): profile_idc plus a bit pattern of
# the constraint byte ("x" = any) decide the profile, so 42e01f and 4d801f are both constrained
# baseline while 42001f is baseline.
_H264_PROFILES = (
    (0x42, "x1xx0000", "constrained-baseline"),
    (0x4D, "1xxx0000", "constrained-baseline"),
    (0x58, "11xx0000", "constrained-baseline"),
    (0x42, "x0xx0000", "baseline"),
    (0x58, "10xx0000", "baseline"),
    (0x4D, "0x0x0000", "main"),
    (0x64, "00000000", "high"),
    (0x64, "00001100", "constrained-high"),
    (0xF4, "00000000", "predictive-high-444"),
)
# RFC 6184 section 8.1: without profile-level-id, Baseline profile at level 1 is meant. (libwebrtc
# assumes constrained baseline 3.1 instead; GStreamer sends no profile-level-id.)
H264_DEFAULT_PROFILE_LEVEL_ID = "42000a"


def h264_profile(profile_level_id: str | None) -> str | None:
    """The H.264 profile named by a profile-level-id, None when it is malformed or unknown."""
    text = profile_level_id if profile_level_id is not None else H264_DEFAULT_PROFILE_LEVEL_ID
    if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return None
    profile_idc, constraints = int(text[0:2], 16), int(text[2:4], 16)
    for idc, pattern, profile in _H264_PROFILES:
        mask = int("".join("0" if b == "x" else "1" for b in pattern), 2)
        value = int(pattern.replace("x", "0"), 2)
        if idc == profile_idc and (constraints & mask) == value:
            return profile
    return None


def _channels(codec: Codec) -> int:
    """RFC 7587: Opus is always written opus/48000/2, but peers send OPUS/48000 too; others default to 1."""
    if codec.name.lower() == "opus":
        return 2
    return codec.channels or 1


def _h264_plid(codec: Codec) -> str:
    return codec.parameter("profile-level-id") or H264_DEFAULT_PROFILE_LEVEL_ID


def incompatibility(sent: Codec, accepted: Codec) -> str | None:
    """Why a peer that offered `accepted` cannot decode what a publisher sends as `sent` (None: it can).

    The text names the differing property with both values, for the 415 err_msg."""
    name = sent.name.lower()
    if name != accepted.name.lower():
        return f"codec {sent.name} vs {accepted.name}"
    if sent.clock_rate != accepted.clock_rate:
        return f"clock rate {sent.clock_rate} vs {accepted.clock_rate}"
    if _channels(sent) != _channels(accepted):
        return f"channels {_channels(sent)} vs {_channels(accepted)}"
    if name == "h264":
        sent_profile = h264_profile(sent.parameter("profile-level-id"))
        profile = h264_profile(accepted.parameter("profile-level-id"))
        # A baseline decoder decodes constrained baseline (a subset); the reverse is not promised.
        if sent_profile is None or (
            sent_profile != profile and (sent_profile, profile) != ("constrained-baseline", "baseline")
        ):
            return (
                f"H264 profile {sent_profile or 'unknown'} (profile-level-id {_h264_plid(sent)}) vs "
                f"{profile or 'unknown'} (profile-level-id {_h264_plid(accepted)})"
            )
        sent_mode = sent.parameter("packetization-mode") or "0"
        mode = accepted.parameter("packetization-mode") or "0"
        if sent_mode != mode:
            return f"H264 packetization-mode {sent_mode} vs {mode}"
        return None
    if name == "vp9":
        sent_id, offered_id = sent.parameter("profile-id") or "0", accepted.parameter("profile-id") or "0"
        return None if sent_id == offered_id else f"VP9 profile-id {sent_id} vs {offered_id}"
    if name == "av1":
        sent_id, offered_id = sent.parameter("profile") or "0", accepted.parameter("profile") or "0"
        return None if sent_id == offered_id else f"AV1 profile {sent_id} vs {offered_id}"
    if name in ("rtx", "red", "ulpfec", "flexfec-03"):
        return f"{sent.name} is not a media codec"
    return None


def codecs_compatible(sent: Codec, accepted: Codec) -> bool:
    """Whether a peer that offered `accepted` can decode what a publisher sends as `sent`."""
    return incompatibility(sent, accepted) is None


def _supported(kind: str) -> tuple[str, ...]:
    names = SUPPORTED_AUDIO if kind == "audio" else SUPPORTED_VIDEO if kind == "video" else ()
    return tuple(n.lower() for n in names)


def _choose_publish_codec(section: MediaSection) -> Codec | None:
    """The first supported codec in the publisher's order; H.264 prefers packetization-mode 1."""
    supported = _supported(section.kind)
    choices = [c for c in section.codecs if c.name.lower() in supported]
    if not choices:
        return None
    first = choices[0]
    if first.name.lower() == "h264" and first.parameter("packetization-mode") != "1":
        for codec in choices:
            if codec.name.lower() == "h264" and codec.parameter("packetization-mode") == "1":
                return codec
    return first


def _rtx_for(section: MediaSection, payload_type: int) -> int | None:
    for codec in section.codecs:
        if codec.name.lower() == "rtx" and codec.parameter("apt") == str(payload_type):
            return codec.payload_type
    return None


def _extensions(section: MediaSection, allowed: tuple[str, ...]) -> tuple[HeaderExtension, ...]:
    chosen: list[HeaderExtension] = []
    for ext in section.header_extensions:
        if ext.uri in allowed and all(e.uri != ext.uri for e in chosen):
            chosen.append(ext)
    return tuple(chosen)


# --------------------------------------------------------------------------- answer writing


def _origin_id(offer: Offer, local: TransportParameters) -> int:
    """Derived rather than random so that an answer is reproducible from its inputs."""
    seed = f"{offer.session_id} {local.ice_ufrag}".encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") >> 2


def _session_lines(offer: Offer, local: TransportParameters, mids: list[str], play: bool) -> list[str]:
    lines = [
        "v=0",
        f"o=- {_origin_id(offer, local)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=ice-lite",
    ]
    # RFC 8843: the answer's group holds the accepted sections of the offer's group, if any.
    bundled = [mid for mid in mids if mid in offer.bundle]
    if bundled:
        lines.append("a=group:BUNDLE " + " ".join(bundled))
    if offer.extmap_allow_mixed:
        lines.append("a=extmap-allow-mixed")
    if play:
        lines.append("a=msid-semantic: WMS *")
    return lines


def _rejected_lines(section: MediaSection) -> list[str]:
    """RFC 3264 section 6: same kind, protocol and formats, port zero."""
    lines = [
        f"m={section.kind} 0 {section.protocol} {' '.join(section.formats)}",
        "c=IN IP4 0.0.0.0",
    ]
    if section.mid is not None:
        lines.append(f"a=mid:{section.mid}")
    return lines


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address)


def answer_setup(offer: Offer) -> str:
    """RFC 5763 section 5: the server takes the DTLS server role (passive) unless the offerer insists
    on it (a=setup:passive, as FFmpeg's WHIP client does): then the server is the client (active)."""
    return "active" if offer.setup == "passive" else "passive"


def _transport_lines(
    section: MediaSection, local: TransportParameters, setup: str
) -> tuple[str, list[str]]:
    """The m= port and connection line of the default candidate, and the ICE/DTLS attributes."""
    addresses = [(_ip(ip), port) for ip, port in local.candidates]
    default = next((c for c in addresses if c[0].version == 4), None) or next(iter(addresses), None)
    if default is None:
        port, connection = 9, "c=IN IP4 0.0.0.0"
    else:
        port = default[1]
        connection = f"c=IN IP{default[0].version} {default[0].compressed}"
    lines = [
        connection,
        f"a=ice-ufrag:{local.ice_ufrag}",
        f"a=ice-pwd:{local.ice_pwd}",
        f"a=fingerprint:sha-256 {local.fingerprint_sha256}",
        f"a=setup:{setup}",
    ]
    if section.mid is not None:
        lines.append(f"a=mid:{section.mid}")
    for index, (ip, cport) in enumerate(addresses):
        # Distinct, descending local preferences keep every host priority valid and unique.
        priority = (_HOST_TYPE_PREFERENCE << 24) | ((65535 - index) << 8) | (256 - 1)
        lines.append(f"a=candidate:{index + 1} 1 udp {priority} {ip.compressed} {cport} typ host")
    for index, (tcp_ip, tcp_port) in enumerate(local.tcp_candidates):
        # RFC 6544 section 4.2: local preference (2^13 * direction-pref) + other-pref, passive's
        # direction-pref 2 for a host candidate: below every UDP candidate's, so TCP is the fallback.
        priority = (_HOST_TYPE_PREFERENCE << 24) | (((2 << 13) - index) << 8) | (256 - 1)
        number = len(addresses) + index + 1
        address = f"{_ip(tcp_ip).compressed} {tcp_port}"
        lines.append(f"a=candidate:{number} 1 tcp {priority} {address} typ host tcptype passive")
    lines.append("a=end-of-candidates")
    return str(port), lines


def _codec_lines(codec: Codec, rtx_payload_type: int | None) -> list[str]:
    channels = f"/{codec.channels}" if codec.channels is not None else ""
    pt = codec.payload_type
    lines = [f"a=rtpmap:{pt} {codec.name}/{codec.clock_rate}{channels}"]
    lines += [f"a=rtcp-fb:{pt} {fb}" for fb in codec.feedback]
    if codec.fmtp:
        lines.append(f"a=fmtp:{pt} {codec.fmtp}")
    if rtx_payload_type is not None:
        lines.append(f"a=rtpmap:{rtx_payload_type} rtx/{codec.clock_rate}")
        lines.append(f"a=fmtp:{rtx_payload_type} apt={pt}")
    return lines


def _accepted_lines(
    offer: Offer,
    section: MediaSection,
    local: TransportParameters,
    direction: str,
    track: NegotiatedTrack,
    extra: list[str],
) -> list[str]:
    port, transport = _transport_lines(section, local, answer_setup(offer))
    formats = [str(track.codec.payload_type)]
    if track.rtx_payload_type is not None:
        formats.append(str(track.rtx_payload_type))
    lines = [f"m={section.kind} {port} {section.protocol} {' '.join(formats)}", *transport]
    lines.append(f"a={direction}")
    lines.append("a=rtcp-mux")
    if section.rtcp_rsize:
        lines.append("a=rtcp-rsize")
    lines += [f"a=extmap:{ext.id} {ext.uri}" for ext in track.header_extensions]
    lines += _codec_lines(track.codec, track.rtx_payload_type)
    return lines + extra


def _text(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------- publish


def _simulcast_rids(section: MediaSection) -> tuple[str, ...]:
    """The layers to accept: every rid the section sends, if its packets can say which they are."""
    if section.kind != "video" or not section.simulcast:
        return ()
    if not any(ext.uri == EXT_RID for ext in section.header_extensions):
        return ()  # no way to tell the layers apart: answered without simulcast, one layer comes
    return section.simulcast_send


def _publish_track(section: MediaSection, codec: Codec) -> NegotiatedTrack:
    rids = _simulcast_rids(section)
    extensions = _extensions(section, PUBLISH_EXTENSIONS + (SIMULCAST_EXTENSIONS if rids else ()))
    tcc = any(e.uri == EXT_TRANSPORT_CC for e in extensions)
    if section.kind == "video":
        feedback = [f for f in codec.feedback if f in PUBLISH_FEEDBACK]
    else:
        feedback = [f for f in codec.feedback if f == "transport-cc"]
    if not tcc:
        feedback = [f for f in feedback if f != "transport-cc"]
    rtx_pt = _rtx_for(section, codec.payload_type)

    fid = next((group for semantics, group in section.ssrc_groups if semantics == "FID"), None)
    ssrc = fid[0] if fid else (section.ssrcs[0].ssrc if section.ssrcs else None)
    rtx_ssrc = fid[1] if fid and rtx_pt is not None else None
    if rids:
        ssrc = rtx_ssrc = None  # Firefox lists its layers' SSRCs without saying which layer is which
    info = next((s for s in section.ssrcs if s.ssrc == ssrc), None)
    cname = (
        info.cname
        if info and info.cname
        else next((s.cname for s in section.ssrcs if s.cname), None)
    )
    return NegotiatedTrack(
        mid=section.mid if section.mid is not None else str(section.index),
        kind=section.kind,
        codec=attrs.evolve(codec, feedback=tuple(feedback)),
        rtx_payload_type=rtx_pt,
        header_extensions=extensions,
        feedback=tuple(feedback),
        ssrc=ssrc,
        rtx_ssrc=rtx_ssrc,
        cname=cname,
        msid=section.msid if section.msid is not None else (info.msid if info else None),
        rids=rids,
    )


def _simulcast_lines(track: NegotiatedTrack) -> list[str]:
    """RFC 8853: receive every layer, in the publisher's order; without these Chromium sends one."""
    if not track.rids:
        return []
    return [*(f"a=rid:{rid} recv" for rid in track.rids), f"a=simulcast:recv {';'.join(track.rids)}"]


def answer_publish(offer: Offer, local: TransportParameters) -> Negotiated:
    """Accept each section the client sends on, with one codec; reject everything else.

    A simulcast offer (a=rid send, a=simulcast send, and the rid header extension) is answered with
    a=rid recv and a=simulcast recv for its layers; the SSRCs of the layers, and of a section without
    a=ssrc lines, are learnt from the first packets (`ssrc` is None).
    """
    blocks: list[list[str]] = []
    tracks: list[NegotiatedTrack] = []
    accepted_mids: list[str] = []
    unsupported: list[str] = []
    for section in offer.media:
        codec = None
        if section.usable and section.sends:
            codec = _choose_publish_codec(section)
            if codec is None:
                names = sorted({c.name for c in section.codecs if c.name.lower() != "rtx"})
                unsupported.append(f"{section.kind} [{', '.join(names)}]")
        if codec is None:
            blocks.append(_rejected_lines(section))
            continue
        track = _publish_track(section, codec)
        tracks.append(track)
        if section.mid is not None:
            accepted_mids.append(section.mid)
        blocks.append(_accepted_lines(offer, section, local, "recvonly", track, _simulcast_lines(track)))
    if not tracks:
        if unsupported:
            raise SdpError(
                "no compatible codec: the server forwards opus audio and VP8/VP9/H264/AV1 video, "
                f"the offer has {'; '.join(unsupported)}"
            )
        raise SdpError("the publish offer sends no audio or video (all sections recvonly/inactive)")
    lines = _session_lines(offer, local, accepted_mids, play=False)
    for block in blocks:
        lines += block
    return Negotiated(answer=_text(lines), tracks=tuple(tracks))


# --------------------------------------------------------------------------- play


def _play_codec(source: Codec, offered: Codec, feedback: tuple[str, ...]) -> Codec:
    """The publisher's codec under the player's payload type and spelling."""
    parameters = source.parameters
    player_level = offered.parameter("profile-level-id")
    if source.name.lower() == "h264" and player_level is not None:
        # The player's own line: its profile is the publisher's or a superset of it (a baseline
        # decoder for constrained baseline), so it never announces what the publisher does not send.
        kept = [(k, v) for k, v in parameters if k.lower() != "profile-level-id"]
        parameters = (*kept, ("profile-level-id", player_level))
    return Codec(
        payload_type=offered.payload_type,
        name=offered.name,
        clock_rate=offered.clock_rate,
        channels=offered.channels,
        parameters=parameters,
        feedback=feedback,
    )


def _play_choice(source: Codec, section: MediaSection) -> Codec | None:
    """The player's first compatible codec, preferring the publisher's exact H.264 profile."""
    compatible = [c for c in section.codecs if codecs_compatible(source, c)]
    if source.name.lower() == "h264":
        profile = h264_profile(source.parameter("profile-level-id"))
        exact = [c for c in compatible if h264_profile(c.parameter("profile-level-id")) == profile]
        compatible = exact or compatible
    return compatible[0] if compatible else None


def answer_play(
    offer: Offer,
    local: TransportParameters,
    published: Sequence[NegotiatedTrack],
    ssrc_source: Callable[[], int],
) -> Negotiated:
    """Answer a player: the n-th accepted section of a kind plays the n-th published track of it.

    Sections the player only sends on, and sections beyond what is published, are rejected.
    """
    remaining = list(published)
    cname = secrets.token_hex(8)
    stream_id = secrets.token_hex(8)
    blocks: list[list[str]] = []
    tracks: list[NegotiatedTrack] = []
    accepted_mids: list[str] = []
    for section in offer.media:
        index = next(
            (i for i, t in enumerate(remaining) if t.kind == section.kind),
            None,
        )
        if not (section.usable and section.receives) or index is None:
            blocks.append(_rejected_lines(section))
            continue
        source = remaining.pop(index)
        offered = _play_choice(source.codec, section)
        if offered is None:
            differences = "; ".join(
                f"{c.name}/{c.clock_rate} (pt {c.payload_type}): {incompatibility(source.codec, c)}"
                for c in section.codecs
                if c.name.lower() == source.codec.name.lower()
            )
            raise SdpError(
                f"player accepts none of the publisher's codecs: section {section.mid!r} "
                f"({section.kind}) needs {source.codec.name}/{source.codec.clock_rate}"
                + (f" {source.codec.fmtp}" if source.codec.fmtp else "")
                + (f"; the offer differs: {differences}" if differences
                   else f", does not offer {source.codec.name}")
            )
        feedback = (
            tuple(f for f in offered.feedback if f in PLAY_FEEDBACK)
            if section.kind == "video"
            else ()
        )
        rtx_pt = _rtx_for(section, offered.payload_type)
        ssrc = ssrc_source()
        rtx_ssrc = ssrc_source() if rtx_pt is not None else None
        msid = f"{stream_id} {secrets.token_hex(8)}"
        track = NegotiatedTrack(
            mid=section.mid if section.mid is not None else str(section.index),
            kind=section.kind,
            codec=_play_codec(source.codec, offered, feedback),
            rtx_payload_type=rtx_pt,
            header_extensions=_extensions(section, PLAY_EXTENSIONS),
            feedback=feedback,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            cname=cname,
            msid=msid,
        )
        extra = [f"a=msid:{msid}"]
        if rtx_ssrc is not None:
            extra.append(f"a=ssrc-group:FID {ssrc} {rtx_ssrc}")
        for s in (ssrc, rtx_ssrc):
            if s is not None:
                extra += [f"a=ssrc:{s} cname:{cname}", f"a=ssrc:{s} msid:{msid}"]
        tracks.append(track)
        if section.mid is not None:
            accepted_mids.append(section.mid)
        blocks.append(_accepted_lines(offer, section, local, "sendonly", track, extra))
    if not tracks:
        kinds = sorted({t.kind for t in published}) or ["nothing"]
        raise SdpError(
            f"nothing to play: the stream publishes {', '.join(kinds)} and the offer receives "
            "no matching audio/video section"
        )
    lines = _session_lines(offer, local, accepted_mids, play=True)
    for block in blocks:
        lines += block
    return Negotiated(answer=_text(lines), tracks=tuple(tracks))
