"""Answers to publish and play offers: line by line, and applied by a real peer (aiortc)."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import attrs
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from trio_sfu.media.negotiation import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_TRANSPORT_CC,
    Negotiated,
    NegotiatedTrack,
    TransportParameters,
    answer_play,
    answer_publish,
    codecs_compatible,
    h264_profile,
    incompatibility,
)
from trio_sfu.wire.sdp import Codec, HeaderExtension, Offer, SdpError, parse_offer

SDP_DIR = Path(__file__).parents[1] / "fixtures" / "sdp"


def fixture(name: str) -> str:
    return (SDP_DIR / f"{name}.sdp").read_bytes().decode()


CHROMIUM_PUBLISH = fixture("chromium_offer_publish")
CHROMIUM_PLAY = fixture("chromium_offer_play")
AIORTC_PUBLISH = fixture("aiortc_offer_publish")
AIORTC_PLAY = fixture("aiortc_offer_play")

SERVER_FP = ":".join(f"{i:02X}" for i in range(32))
LOCAL = TransportParameters(
    ice_ufrag="sfu1",
    ice_pwd="sfupasswordsfupassword",
    fingerprint_sha256=SERVER_FP,
    candidates=(("127.0.0.1", 40000), ("::1", 40002)),
)
TRANSPORT_LINES = [
    "a=ice-ufrag:sfu1",
    "a=ice-pwd:sfupasswordsfupassword",
    f"a=fingerprint:sha-256 {SERVER_FP}",
    "a=setup:passive",
]
CANDIDATE_LINES = [
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
    "a=candidate:2 1 udp 2130706175 ::1 40002 typ host",
    "a=end-of-candidates",
]


def split(answer: str) -> tuple[list[str], list[list[str]]]:
    """Session lines and the lines of each m-section, checking the line endings on the way."""
    assert answer.endswith("\r\n") and not answer.endswith("\r\n\r\n")
    lines = answer[:-2].split("\r\n")
    assert all("\n" not in line and "\r" not in line and line for line in lines)
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def values(lines: list[str], attribute: str) -> list[str]:
    prefix = f"a={attribute}:"
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def extmaps(lines: list[str]) -> dict[int, str]:
    return {int(v.split(" ")[0]): v.split(" ")[1] for v in values(lines, "extmap")}


def feedback(lines: list[str], pt: int) -> list[str]:
    return [v.split(" ", 1)[1] for v in values(lines, "rtcp-fb") if v.split(" ")[0] == str(pt)]


def reparse(answer: str) -> Offer:
    """The answer read back by our own parser, after the two things an offer may not say."""
    return parse_offer(
        answer.replace("a=ice-lite\r\n", "").replace("setup:passive", "setup:active")
    )


def ssrcs() -> itertools.count[int]:
    return itertools.count(1000)


def publish(text: str) -> Negotiated:
    return answer_publish(parse_offer(text), LOCAL)


def play(text: str, published: tuple[NegotiatedTrack, ...] | list[NegotiatedTrack]) -> Negotiated:
    counter = ssrcs()
    return answer_play(parse_offer(text), LOCAL, published, lambda: next(counter))


def with_video_formats(text: str, formats: str) -> str:
    """Only these video payload types, in this order (the preference), in a Chromium offer."""
    keep = formats.split(" ")
    at = text.index("m=video")
    lines = []
    for line in text[at:].splitlines(keepends=True):
        found = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):([0-9]+) ", line)
        if found is None or found.group(1) in keep:
            lines.append(line)
    video = re.sub(
        r"^m=video 9 UDP/TLS/RTP/SAVPF [0-9 ]+",
        f"m=video 9 UDP/TLS/RTP/SAVPF {formats}",
        "".join(lines),
    )
    return text[:at] + video


def published_video(name: str, parameters: tuple[tuple[str, str], ...] = ()) -> NegotiatedTrack:
    return NegotiatedTrack(
        mid="1",
        kind="video",
        codec=Codec(100, name, 90000, None, parameters, ("nack",)),
        rtx_payload_type=None,
        header_extensions=(),
        feedback=("nack",),
        ssrc=1,
        rtx_ssrc=None,
        cname="c",
        msid=None,
    )


def h264(plid: str, mode: str = "1") -> NegotiatedTrack:
    return published_video(
        "H264",
        (
            ("level-asymmetry-allowed", "1"),
            ("packetization-mode", mode),
            ("profile-level-id", plid),
        ),
    )


# --------------------------------------------------------------------------- publish


def test_publish_answer_to_chromium() -> None:
    negotiated = publish(CHROMIUM_PUBLISH)
    session, (audio, video) = split(negotiated.answer)
    assert re.fullmatch(r"o=- [0-9]{1,19} 2 IN IP4 127\.0\.0\.1", session[1])
    assert int(session[1].split(" ")[1]) < 2**63
    assert session == [
        "v=0",
        session[1],
        "s=-",
        "t=0 0",
        "a=ice-lite",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
    ]

    assert audio[:2] == ["m=audio 40000 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 127.0.0.1"]
    assert video[:2] == ["m=video 40000 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 127.0.0.1"]
    for lines, mid in ((audio, "0"), (video, "1")):
        for line in [*TRANSPORT_LINES, *CANDIDATE_LINES, "a=rtcp-mux", "a=rtcp-rsize"]:
            assert lines.count(line) == 1, line
        assert values(lines, "mid") == [mid]
        assert "a=recvonly" in lines
        assert not {"a=sendrecv", "a=sendonly", "a=inactive"} & set(lines)
        assert not [ln for ln in lines if ln.startswith(("a=ssrc", "a=simulcast", "a=rid"))]
        assert lines.index("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host") + 2 == (
            lines.index("a=end-of-candidates")
        )

    assert values(audio, "rtpmap") == ["111 opus/48000/2"]
    assert values(audio, "fmtp") == ["111 minptime=10;useinbandfec=1"]
    assert feedback(audio, 111) == ["transport-cc"]
    assert extmaps(audio) == {
        1: EXT_AUDIO_LEVEL,
        2: EXT_ABS_SEND_TIME,
        3: EXT_TRANSPORT_CC,
        4: EXT_MID,
    }

    assert values(video, "rtpmap") == ["96 VP8/90000", "97 rtx/90000"]
    assert values(video, "fmtp") == ["97 apt=96"]
    assert feedback(video, 96) == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    assert feedback(video, 97) == []
    assert extmaps(video) == {2: EXT_ABS_SEND_TIME, 3: EXT_TRANSPORT_CC, 4: EXT_MID}

    a, v = negotiated.tracks
    msid = "31a98a81-f81a-45b3-a7f5-26f82cd0c2dc"
    assert (a.mid, a.kind, a.ssrc, a.rtx_ssrc, a.rtx_payload_type) == (
        "0",
        "audio",
        3699866258,
        None,
        None,
    )
    assert a.codec.name == "opus" and a.codec.payload_type == 111
    assert a.feedback == a.codec.feedback == ("transport-cc",)
    assert (
        a.cname == "knWRpEGvKkzXtEwh" and a.msid == f"{msid} 0f03df3b-61a6-4b80-92e1-39b4f2f2445b"
    )
    assert (v.mid, v.kind, v.ssrc, v.rtx_ssrc, v.rtx_payload_type) == (
        "1",
        "video",
        37704122,
        1317872438,
        97,
    )
    assert (v.codec.name, v.codec.payload_type) == ("VP8", 96)
    assert v.header_extensions == (
        HeaderExtension(2, EXT_ABS_SEND_TIME),
        HeaderExtension(3, EXT_TRANSPORT_CC),
        HeaderExtension(4, EXT_MID),
    )

    back = reparse(negotiated.answer)
    assert back.bundle == ("0", "1")
    assert (back.ice_ufrag, back.ice_pwd) == ("sfu1", "sfupasswordsfupassword")
    assert back.fingerprints == (("sha-256", SERVER_FP),)
    assert [(c.address, c.port) for c in back.candidates] == [("127.0.0.1", 40000), ("::1", 40002)]
    assert [m.direction for m in back.media] == ["recvonly", "recvonly"]
    assert back.media[0].codecs == (a.codec,)
    assert back.media[1].codecs[0] == v.codec
    assert back.media[1].header_extensions == v.header_extensions


def test_publish_answer_to_aiortc() -> None:
    negotiated = publish(AIORTC_PUBLISH)
    session, (video, audio) = split(negotiated.answer)
    assert "a=group:BUNDLE 0 1" in session and "a=extmap-allow-mixed" not in session
    assert "a=msid-semantic: WMS *" not in session
    assert video[0] == "m=video 40000 UDP/TLS/RTP/SAVPF 97 98"
    assert audio[0] == "m=audio 40000 UDP/TLS/RTP/SAVPF 96"
    assert values(video, "rtpmap") == ["97 VP8/90000", "98 rtx/90000"]
    assert values(video, "fmtp") == ["98 apt=97"]
    assert feedback(video, 97) == ["nack", "nack pli", "goog-remb"]  # no transport-cc offered
    assert values(audio, "rtpmap") == ["96 opus/48000/2"] and values(audio, "fmtp") == []
    assert values(audio, "rtcp-fb") == []
    assert extmaps(video) == {1: EXT_MID, 3: EXT_ABS_SEND_TIME}
    assert extmaps(audio) == {1: EXT_MID, 2: EXT_AUDIO_LEVEL}
    assert "a=rtcp-rsize" not in video + audio
    assert "a=recvonly" in video and "a=recvonly" in audio and "a=setup:passive" in video
    v, a = negotiated.tracks
    assert (v.ssrc, v.rtx_ssrc, v.cname) == (
        4136699825,
        3071359946,
        "8e09f2c5-3a45-481c-8e1c-f6ee349051de",
    )
    assert (a.ssrc, a.rtx_ssrc) == (2694364936, None)
    back = reparse(negotiated.answer)
    assert [m.mid for m in back.media] == ["0", "1"]
    assert back.media[0].codecs[0].payload_type == 97


def test_candidates_are_valid_host_candidates() -> None:
    many = attrs.evolve(LOCAL, candidates=tuple((f"10.0.0.{i}", 5000 + i) for i in range(1, 6)))
    _, sections = split(answer_publish(parse_offer(CHROMIUM_PUBLISH), many).answer)
    priorities = [int(v.split(" ")[3]) for v in values(sections[0], "candidate")]
    assert priorities == sorted(set(priorities), reverse=True) and len(priorities) == 5
    for p in priorities:
        assert p >> 24 == 126 and p & 0xFF == 255 and p < 2**31
    foundations = [v.split(" ")[0] for v in values(sections[0], "candidate")]
    assert len(set(foundations)) == 5


def test_connection_line_for_ipv6_only_and_no_candidates() -> None:
    v6 = attrs.evolve(LOCAL, candidates=(("::1", 5000), ("fe80:0:0::5", 5002)))
    _, sections = split(answer_publish(parse_offer(AIORTC_PUBLISH), v6).answer)
    assert sections[0][:2] == ["m=video 5000 UDP/TLS/RTP/SAVPF 97 98", "c=IN IP6 ::1"]
    assert "a=candidate:2 1 udp 2130706175 fe80::5 5002 typ host" in sections[0]
    none = attrs.evolve(LOCAL, candidates=())
    _, sections = split(answer_publish(parse_offer(AIORTC_PUBLISH), none).answer)
    assert sections[0][:2] == ["m=video 9 UDP/TLS/RTP/SAVPF 97 98", "c=IN IP4 0.0.0.0"]
    mixed = attrs.evolve(LOCAL, candidates=(("::1", 5000), ("127.0.0.1", 5002)))
    _, sections = split(answer_publish(parse_offer(AIORTC_PUBLISH), mixed).answer)
    assert sections[0][:2] == ["m=video 5002 UDP/TLS/RTP/SAVPF 97 98", "c=IN IP4 127.0.0.1"]


def test_publish_prefers_h264_packetization_mode_1() -> None:
    text = with_video_formats(CHROMIUM_PUBLISH, "104 107 102 103 96 97")
    (_, video) = publish(text).tracks
    assert (video.codec.payload_type, video.rtx_payload_type) == (102, 103)
    assert video.codec.parameter("packetization-mode") == "1"
    # Only mode 0 offered: it is still fine for publishing.
    (_, video) = publish(with_video_formats(CHROMIUM_PUBLISH, "104 107")).tracks
    assert (video.codec.payload_type, video.rtx_payload_type) == (104, 107)


def test_publish_follows_the_offer_order() -> None:
    (_, video) = publish(with_video_formats(CHROMIUM_PUBLISH, "98 99 96 97")).tracks
    assert (video.codec.name, video.codec.fmtp, video.rtx_payload_type) == (
        "VP9",
        "profile-id=0",
        99,
    )
    (_, video) = publish(with_video_formats(CHROMIUM_PUBLISH, "45 96")).tracks
    assert (video.codec.name, video.rtx_payload_type) == ("AV1", None)
    _, (_, lines) = split(publish(with_video_formats(CHROMIUM_PUBLISH, "45 96")).answer)
    assert lines[0] == "m=video 40000 UDP/TLS/RTP/SAVPF 45"


def test_publish_rejects_sections_the_client_only_receives_on() -> None:
    text = CHROMIUM_PUBLISH.replace("a=sendonly", "a=recvonly", 1)
    negotiated = publish(text)
    session, (audio, _) = split(negotiated.answer)
    assert audio == [
        "m=audio 0 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
    ]
    assert "a=group:BUNDLE 1" in session
    assert [t.kind for t in negotiated.tracks] == ["video"]
    with pytest.raises(SdpError, match="sends no audio or video"):
        publish(CHROMIUM_PUBLISH.replace("a=sendonly", "a=recvonly"))


def test_publish_rejects_a_section_without_supported_codec() -> None:
    text = CHROMIUM_PUBLISH.replace("SAVPF 111 63 9 0 8 13 110 126", "SAVPF 9 0 8")
    text = "".join(
        ln
        for ln in text.splitlines(keepends=True)
        if not re.match(r"a=(rtpmap|fmtp|rtcp-fb):(111|63|13|110|126) ", ln)
    )
    negotiated = publish(text)
    _, (audio, _) = split(negotiated.answer)
    assert audio[0] == "m=audio 0 UDP/TLS/RTP/SAVPF 9 0 8"
    assert [t.kind for t in negotiated.tracks] == ["video"]
    video_only = with_video_formats(text, "120")
    with pytest.raises(SdpError, match="no compatible codec") as info:
        publish(video_only)
    assert "G722" in str(info.value) and "ulpfec" in str(info.value)


def test_publish_answers_simulcast_with_its_layers() -> None:
    text = CHROMIUM_PUBLISH.replace(
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
        "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
    ).split("a=ssrc-group:FID")[0]
    offer = parse_offer(text)
    assert offer.media[1].simulcast and offer.media[1].simulcast_send == ("q", "h", "f")
    negotiated = answer_publish(offer, LOCAL)
    _, (audio, video) = split(negotiated.answer)
    assert [ln for ln in video if ln.startswith(("a=rid", "a=simulcast"))] == [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
    ]
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in video
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in video
    assert not [ln for ln in audio if "rid" in ln or "simulcast" in ln]
    track = negotiated.tracks[1]
    assert track.rids == ("q", "h", "f") and track.ssrc is None and track.rtx_ssrc is None
    assert track.codec.name == "VP8" and negotiated.tracks[0].rids == ()


def test_simulcast_without_the_rid_extension_is_answered_as_one_layer() -> None:
    """Packets could not say which layer they are: the answer leaves simulcast out, so one comes."""
    text = CHROMIUM_PUBLISH.replace(
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", ""
    ).replace(
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
        "a=rid:q send\r\na=rid:h send\r\na=simulcast:send q;h\r\n",
    ).split("a=ssrc-group:FID")[0]
    negotiated = answer_publish(parse_offer(text), LOCAL)
    assert "a=simulcast" not in negotiated.answer and "a=rid" not in negotiated.answer
    assert negotiated.tracks[1].rids == ()


@pytest.mark.parametrize(
    ("fixture", "rids"),
    [
        ("chromium_offer_publish_simulcast", ("q", "h", "f")),
        ("firefox_offer_publish_simulcast", ("h", "m", "l")),
    ],
)
def test_captured_simulcast_offers_are_answered_with_every_layer(fixture: str, rids: tuple[str, ...]) -> None:
    negotiated = answer_publish(parse_offer((SDP_DIR / f"{fixture}.sdp").read_text()), LOCAL)
    (video,) = [t for t in negotiated.tracks if t.kind == "video"]
    assert video.rids == rids and video.ssrc is None  # Firefox's a=ssrc lines do not say which layer
    assert f"a=simulcast:recv {';'.join(rids)}" in negotiated.answer


def test_rejects_data_channel_in_place() -> None:
    data = (
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:dAnV\r\n"
        "a=mid:2\r\n"
        "a=sctp-port:5000\r\n"
        "a=max-message-size:262144\r\n"
    )
    at = CHROMIUM_PUBLISH.index("m=video")
    text = CHROMIUM_PUBLISH[:at] + data + CHROMIUM_PUBLISH[at:]
    text = text.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 2 1")
    negotiated = publish(text)
    session, sections = split(negotiated.answer)
    assert [s[0].split(" ")[:2] for s in sections] == [
        ["m=audio", "40000"],
        ["m=application", "0"],
        ["m=video", "40000"],
    ]
    assert sections[1] == [
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
    ]
    assert [values(s, "mid") for s in sections] == [["0"], ["2"], ["1"]]
    assert "a=group:BUNDLE 0 1" in session
    assert [t.mid for t in negotiated.tracks] == ["0", "1"]


def test_data_channel_first_keeps_its_candidates_as_the_transport() -> None:
    text = (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE d v\r\n"
        "m=application 5000 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\r\na=mid:d\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:v\r\na=sendonly\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
        f"a=fingerprint:sha-256 {SERVER_FP}\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
    )
    offer = parse_offer(text)
    assert [c.port for c in offer.candidates] == [5000]
    session, sections = split(answer_publish(offer, LOCAL).answer)
    assert "a=group:BUNDLE v" in session
    assert sections[0][0] == "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"


# --------------------------------------------------------------------------- play


def test_play_answer_to_chromium() -> None:
    published = publish(CHROMIUM_PUBLISH).tracks
    negotiated = play(CHROMIUM_PLAY, published)
    session, (audio, video) = split(negotiated.answer)
    assert session[4:] == [
        "a=ice-lite",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS *",
    ]
    assert audio[0] == "m=audio 40000 UDP/TLS/RTP/SAVPF 111"
    assert video[0] == "m=video 40000 UDP/TLS/RTP/SAVPF 96 97"
    for lines in (audio, video):
        assert "a=sendonly" in lines and "a=recvonly" not in lines
        for line in [*TRANSPORT_LINES, *CANDIDATE_LINES, "a=rtcp-mux", "a=rtcp-rsize"]:
            assert lines.count(line) == 1, line
    assert values(audio, "rtcp-fb") == []
    assert feedback(video, 96) == ["goog-remb", "ccm fir", "nack", "nack pli"]  # REMB: its estimate
    assert extmaps(audio) == {1: EXT_AUDIO_LEVEL, 2: EXT_ABS_SEND_TIME, 4: EXT_MID}
    assert extmaps(video) == {2: EXT_ABS_SEND_TIME, 4: EXT_MID}
    assert values(audio, "fmtp") == ["111 minptime=10;useinbandfec=1"]

    a, v = negotiated.tracks
    assert (a.ssrc, a.rtx_ssrc, v.ssrc, v.rtx_ssrc) == (1000, None, 1001, 1002)
    assert (v.codec.payload_type, v.rtx_payload_type, v.feedback) == (
        96,
        97,
        ("goog-remb", "ccm fir", "nack", "nack pli"),
    )
    assert a.cname == v.cname and a.cname
    assert a.msid and v.msid and a.msid.split(" ")[0] == v.msid.split(" ")[0]
    assert a.msid != v.msid
    assert values(audio, "msid") == [a.msid]
    assert values(audio, "ssrc") == [f"1000 cname:{a.cname}", f"1000 msid:{a.msid}"]
    assert values(video, "ssrc-group") == ["FID 1001 1002"]
    assert values(video, "ssrc") == [
        f"1001 cname:{v.cname}",
        f"1001 msid:{v.msid}",
        f"1002 cname:{v.cname}",
        f"1002 msid:{v.msid}",
    ]
    back = reparse(negotiated.answer)
    assert [s.ssrc for m in back.media for s in m.ssrcs] == [1000, 1001, 1002]
    assert back.media[1].ssrc_groups == (("FID", (1001, 1002)),)


def test_play_answer_to_aiortc_uses_its_payload_types_and_ids() -> None:
    negotiated = play(AIORTC_PLAY, publish(CHROMIUM_PUBLISH).tracks)
    _, (audio, video) = split(negotiated.answer)
    assert audio[0] == "m=audio 40000 UDP/TLS/RTP/SAVPF 96"
    assert values(audio, "rtpmap") == ["96 opus/48000/2"]
    assert values(audio, "fmtp") == ["96 minptime=10;useinbandfec=1"]  # the publisher's
    assert video[0] == "m=video 40000 UDP/TLS/RTP/SAVPF 97 98"
    assert values(video, "fmtp") == ["98 apt=97"]
    assert extmaps(audio) == {1: EXT_MID, 2: EXT_AUDIO_LEVEL}
    assert extmaps(video) == {1: EXT_MID, 3: EXT_ABS_SEND_TIME}
    assert "a=rtcp-rsize" not in audio + video
    assert [t.header_extensions for t in negotiated.tracks] == [
        (HeaderExtension(1, EXT_MID), HeaderExtension(2, EXT_AUDIO_LEVEL)),
        (HeaderExtension(1, EXT_MID), HeaderExtension(3, EXT_ABS_SEND_TIME)),
    ]


def test_play_audio_only_publication_rejects_video() -> None:
    audio_only = [t for t in publish(CHROMIUM_PUBLISH).tracks if t.kind == "audio"]
    negotiated = play(CHROMIUM_PLAY, audio_only)
    session, (audio, video) = split(negotiated.answer)
    assert audio[0] == "m=audio 40000 UDP/TLS/RTP/SAVPF 111"
    offered = parse_offer(CHROMIUM_PLAY).media[1].formats
    assert video == [
        f"m=video 0 UDP/TLS/RTP/SAVPF {' '.join(offered)}",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
    ]
    assert "a=group:BUNDLE 0" in session
    assert [t.kind for t in negotiated.tracks] == ["audio"]


def test_play_rejects_extra_and_send_only_sections() -> None:
    published = publish(AIORTC_PUBLISH).tracks  # video, audio
    second_video = (
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\na=mid:2\r\n"
        "a=rtcp-mux\r\na=rtpmap:97 VP8/90000\r\n"
        "a=ice-ufrag:wy76\r\na=ice-pwd:1V0pepVdCWGC6l4K5pCR4Z\r\n"
        f"a=fingerprint:sha-256 {SERVER_FP}\r\n"
    )
    text = AIORTC_PLAY.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + second_video
    text = text.replace("a=recvonly", "a=sendonly", 1)  # the audio section only sends
    negotiated = play(text, published)
    session, (audio, video, extra) = split(negotiated.answer)
    assert audio[0].startswith("m=audio 0 ") and extra[0] == "m=video 0 UDP/TLS/RTP/SAVPF 97"
    assert video[0] == "m=video 40000 UDP/TLS/RTP/SAVPF 97 98"
    assert "a=group:BUNDLE 1" in session
    assert [(t.mid, t.kind) for t in negotiated.tracks] == [("1", "video")]


def test_play_with_nothing_compatible_or_nothing_published() -> None:
    with pytest.raises(SdpError, match="nothing to play"):
        play(CHROMIUM_PLAY, [])
    vp9 = published_video("VP9", (("profile-id", "0"),))
    with pytest.raises(SdpError, match=r"^player accepts none of the publisher's codecs: ") as info:
        play(AIORTC_PLAY, [vp9])
    assert "VP9" in str(info.value)
    with pytest.raises(SdpError, match="player accepts none of the publisher's codecs"):
        play(AIORTC_PLAY, [h264("4d001f")])


# --------------------------------------------------------------------------- codec matching


@pytest.mark.parametrize(
    ("plid", "profile"),
    [
        ("42e01f", "constrained-baseline"),
        ("42C01F", "constrained-baseline"),
        ("4d801f", "constrained-baseline"),
        ("58c01f", "constrained-baseline"),
        ("42001f", "baseline"),
        ("42101f", "baseline"),
        ("4d001f", "main"),
        ("640032", "high"),
        ("640c1f", "constrained-high"),
        ("f4001f", "predictive-high-444"),
        (None, "baseline"),  # RFC 6184 section 8.1: 42000a
        ("42e0", None),
        ("zz001f", None),
        ("6e001f", None),
        ("42e11f", None),
    ],
)
def test_h264_profile(plid: str | None, profile: str | None) -> None:
    assert h264_profile(plid) == profile


@pytest.mark.parametrize(
    ("published", "pt", "answered_plid"),
    [
        (h264("42e01f"), 108, "42e01f"),
        (h264("42e034"), 108, "42e01f"),  # level may differ; the player's line is kept
        (h264("4d801f"), 108, "42e01f"),  # constrained baseline spelled with profile_idc 0x4d
        (h264("42001f"), 102, "42001f"),
        (h264("42001f", "0"), 104, "42001f"),
        (h264("4d001f"), 116, "4d001f"),
        (h264("f4001f"), 41, "f4001f"),
    ],
)
def test_play_h264_matches_profile_and_packetization(
    published: NegotiatedTrack, pt: int, answered_plid: str
) -> None:
    audio = publish(CHROMIUM_PUBLISH).tracks[0]
    negotiated = play(CHROMIUM_PLAY, [audio, published])
    video = negotiated.tracks[1]
    assert video.codec.payload_type == pt
    assert video.codec.parameter("profile-level-id") == answered_plid
    assert video.codec.parameter("packetization-mode") == published.codec.parameter(
        "packetization-mode"
    )
    _, (_, lines) = split(negotiated.answer)
    assert values(lines, "rtpmap")[0] == f"{pt} H264/90000"


def test_play_h264_constrained_high_is_refused_by_chromium_offer() -> None:
    with pytest.raises(SdpError, match="player accepts none"):
        play(CHROMIUM_PLAY, [h264("640c1f")])


@pytest.mark.parametrize(
    ("published", "pt"),
    [
        (published_video("VP9", (("profile-id", "0"),)), 98),
        (published_video("VP9"), 98),  # absent profile-id means 0
        (published_video("VP9", (("profile-id", "2"),)), 100),
        (published_video("VP9", (("profile-id", "1"),)), 35),
        (published_video("AV1", (("level-idx", "5"), ("profile", "0"), ("tier", "0"))), 45),
        (published_video("AV1", (("profile", "1"),)), 47),
        (published_video("vp8"), 96),
    ],
)
def test_play_vp9_and_av1_profiles(published: NegotiatedTrack, pt: int) -> None:
    (video,) = play(CHROMIUM_PLAY, [published]).tracks
    assert video.codec.payload_type == pt
    assert video.codec.parameters == published.codec.parameters
    assert video.rtx_payload_type == pt + 1


def test_codecs_compatible() -> None:
    opus2 = Codec(111, "opus", 48000, 2, (), ())
    assert codecs_compatible(opus2, Codec(96, "OPUS", 48000, 2, (("minptime", "10"),), ()))
    # RFC 7587 says opus/48000/2, but OPUS/48000 is what some peers write: the same codec.
    assert codecs_compatible(opus2, Codec(96, "OPUS", 48000, None, (), ()))
    assert incompatibility(opus2, Codec(96, "opus", 16000, 2, (), ())) == "clock rate 48000 vs 16000"
    assert not codecs_compatible(opus2, Codec(96, "opus", 16000, 2, (), ()))
    vp9 = Codec(98, "VP9", 90000, None, (("profile-id", "2"),), ())
    assert not codecs_compatible(vp9, attrs.evolve(vp9, parameters=()))
    rtx = Codec(97, "rtx", 90000, None, (("apt", "96"),), ())
    assert not codecs_compatible(rtx, rtx)


# --------------------------------------------------------------------------- a real peer


def _codecs_of(pc: RTCPeerConnection) -> list[tuple[str | None, str, int | None]]:
    return [(t.mid, t._codecs[0].mimeType, t._codecs[0].payloadType) for t in pc.getTransceivers()]


def test_aiortc_applies_publish_answer() -> None:
    async def main() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(VideoStreamTrack())
            pc.addTrack(AudioStreamTrack())
            await pc.setLocalDescription(await pc.createOffer())
            negotiated = publish(pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(negotiated.answer, "answer"))
            assert pc.signalingState == "stable"
            assert _codecs_of(pc) == [("0", "video/VP8", 97), ("1", "audio/opus", 96)]
            assert [t.currentDirection for t in pc.getTransceivers()] == ["sendonly", "sendonly"]
            assert [t.kind for t in negotiated.tracks] == ["video", "audio"]
            assert negotiated.tracks[0].rtx_ssrc is not None
        finally:
            await pc.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("publisher_offer", "expected_video"),
    [
        (CHROMIUM_PUBLISH, ("video/VP8", 97)),
        (AIORTC_PUBLISH, ("video/VP8", 97)),
        (with_video_formats(CHROMIUM_PUBLISH, "102 103 96 97"), ("video/H264", 99)),
        (with_video_formats(CHROMIUM_PUBLISH, "108 109 96 97"), ("video/H264", 101)),
    ],
    ids=["chromium-vp8", "aiortc-vp8", "h264-baseline", "h264-constrained-baseline"],
)
def test_aiortc_applies_play_answer(publisher_offer: str, expected_video: tuple[str, int]) -> None:
    published = publish(publisher_offer).tracks

    async def main() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            negotiated = play(pc.localDescription.sdp, published)
            kinds: list[str] = []
            pc.on("track", lambda track: kinds.append(track.kind))
            await pc.setRemoteDescription(RTCSessionDescription(negotiated.answer, "answer"))
            assert pc.signalingState == "stable"
            assert kinds == ["video", "audio"]
            assert _codecs_of(pc) == [("0", *expected_video), ("1", "audio/opus", 96)]
            assert [t.currentDirection for t in pc.getTransceivers()] == ["recvonly", "recvonly"]
            assert [t.codec.payload_type for t in negotiated.tracks] == [expected_video[1], 96]
            assert negotiated.tracks[0].rtx_payload_type == expected_video[1] + 1
        finally:
            await pc.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- other peers' variations


def test_passive_offer_is_answered_active() -> None:
    """FFmpeg's WHIP client offers a=setup:passive: the server becomes the DTLS client."""
    negotiated = publish(CHROMIUM_PUBLISH.replace("a=setup:actpass", "a=setup:passive"))
    _, sections = split(negotiated.answer)
    assert all(values(lines, "setup") == ["active"] for lines in sections)
    _, sections = split(publish(CHROMIUM_PUBLISH).answer)
    assert all(values(lines, "setup") == ["passive"] for lines in sections)


def test_bundle_only_section_is_accepted_with_the_transport() -> None:
    """Firefox/webrtcbin max-bundle: the second section comes with port 0 and a=bundle-only; the
    answer accepts it in the group with a real port and the full transport (webrtcbin needs a
    fingerprint in every accepted section)."""
    at = CHROMIUM_PUBLISH.index("m=video")
    video = CHROMIUM_PUBLISH[at:].replace("m=video 9 ", "m=video 0 ", 1) + "a=bundle-only\r\n"
    negotiated = publish(CHROMIUM_PUBLISH[:at] + video)
    assert [t.kind for t in negotiated.tracks] == ["audio", "video"]
    session, sections = split(negotiated.answer)
    assert "a=group:BUNDLE 0 1" in session
    for lines in sections:
        assert lines[0].split(" ")[1] != "0"
        assert values(lines, "fingerprint") == [f"sha-256 {SERVER_FP}"]
        assert "a=bundle-only" not in lines


def test_h264_without_profile_level_id_plays_as_baseline() -> None:
    """RFC 6184: no profile-level-id means baseline (42000a), which constrained-baseline-only
    players cannot be promised; Chromium's baseline entry takes it, under its own spelling."""
    published = published_video("H264", (("packetization-mode", "1"),))
    negotiated = play(CHROMIUM_PLAY, [publish(CHROMIUM_PUBLISH).tracks[0], published])
    video = negotiated.tracks[1].codec
    assert video.payload_type == 102
    assert video.parameter("profile-level-id") == "42001f"
    only_cb = with_video_formats(CHROMIUM_PLAY, "108 109")
    expected = r"profile baseline \(profile-level-id 42000a\) vs constrained-baseline"
    with pytest.raises(SdpError, match=expected):
        play(only_cb, [published])


def test_constrained_baseline_plays_to_a_baseline_only_player() -> None:
    negotiated = play(with_video_formats(CHROMIUM_PLAY, "102 103"), [h264("42e01f")])
    assert negotiated.tracks[0].codec.payload_type == 102


def test_opus_without_channel_count_plays_to_opus_48000_2() -> None:
    audio = publish(CHROMIUM_PUBLISH.replace("opus/48000/2", "OPUS/48000")).tracks[0]
    assert audio.codec.channels is None
    negotiated = play(CHROMIUM_PLAY, [audio])
    assert negotiated.tracks[0].codec.name == "opus" and negotiated.tracks[0].codec.channels == 2


# --------------------------------------------------------------------------- captured third-party offers

# (fixture, publish?, kinds accepted, the codec each kind gets, the answer's DTLS role)
THIRD_PARTY_OFFERS = [
    ("firefox_offer_publish_max_bundle", True, ["audio", "video"], ["opus", "VP8"], "passive"),
    ("firefox_offer_publish_balanced", True, ["audio", "video"], ["opus", "VP8"], "passive"),
    ("firefox_offer_play_max_bundle", False, ["audio", "video"], ["opus", "VP8"], "passive"),
    # After setCodecPreferences: m=video 121 125 with rtcp-fb lines of VP8, AV1, H264... left behind.
    ("firefox_offer_publish_vp9_picked", True, ["audio", "video"], ["opus", "VP9"], "passive"),
    ("gstreamer_offer_publish_max_bundle", True, ["video", "audio"], ["VP8", "OPUS"], "passive"),
    ("gstreamer_offer_publish_h264_max_bundle", True, ["video", "audio"], ["H264", "OPUS"], "passive"),
    ("gstreamer_offer_play_max_bundle", False, ["video", "audio"], ["VP8", "OPUS"], "passive"),
    # FFmpeg's WHIP muxer: a=setup:passive, so the server is the DTLS client.
    ("ffmpeg_whip_offer", True, ["audio", "video"], ["opus", "H264"], "active"),
]


@pytest.mark.parametrize(
    ("name", "publishes", "kinds", "codecs", "setup"),
    THIRD_PARTY_OFFERS,
    ids=[o[0] for o in THIRD_PARTY_OFFERS],
)
def test_captured_offers_of_other_peers_are_served_whole(
    name: str, publishes: bool, kinds: list[str], codecs: list[str], setup: str
) -> None:
    """Real offers Firefox and GStreamer made (bundle-only sections, stray rtcp-fb, rtcp-mux-only,
    OPUS without a channel count...): every section is accepted, in one BUNDLE group, on one transport."""
    text = fixture(name)
    negotiated = publish(text) if publishes else play(text, publish(CHROMIUM_PUBLISH).tracks)
    assert [t.kind for t in negotiated.tracks] == kinds
    assert [t.codec.name for t in negotiated.tracks] == codecs
    session, sections = split(negotiated.answer)
    mids = [values(lines, "mid")[0] for lines in sections]
    assert f"a=group:BUNDLE {' '.join(mids)}" in session
    for lines in sections:
        assert lines[0].split(" ")[1] != "0", lines[0]  # nothing rejected
        assert values(lines, "setup") == [setup]
        assert values(lines, "fingerprint") == [f"sha-256 {SERVER_FP}"]


def test_captured_offer_without_bundle_is_told_to_use_max_bundle() -> None:
    with pytest.raises(SdpError, match="bundle-policy=max-bundle"):
        publish(fixture("gstreamer_offer_publish_no_bundle"))
