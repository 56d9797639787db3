"""The offer parser: exact values from captured real offers, and refusal of bad or hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sfu.wire.sdp import (
    Candidate,
    Codec,
    HeaderExtension,
    Offer,
    SdpError,
    SsrcInfo,
    parse_offer,
)

SDP_DIR = Path(__file__).parents[1] / "fixtures" / "sdp"
FIXTURE_NAMES = (
    "chromium_offer_publish",
    "chromium_offer_play",
    "aiortc_offer_publish",
    "aiortc_offer_play",
    "firefox_offer_publish_max_bundle",
    "firefox_offer_publish_balanced",
    "firefox_offer_play_max_bundle",
    "firefox_offer_publish_vp9_picked",
    "gstreamer_offer_publish_max_bundle",
    "gstreamer_offer_publish_h264_max_bundle",
    "gstreamer_offer_play_max_bundle",
    "ffmpeg_whip_offer",
)


def fixture(name: str) -> str:
    """The capture byte for byte (read_text would turn its CRLF into LF)."""
    return (SDP_DIR / f"{name}.sdp").read_bytes().decode()


CHROMIUM_PUBLISH = fixture("chromium_offer_publish")
CHROMIUM_PLAY = fixture("chromium_offer_play")
AIORTC_PUBLISH = fixture("aiortc_offer_publish")
AIORTC_PLAY = fixture("aiortc_offer_play")

FP = ":".join(["AB"] * 32)
SESSION = ["v=0", "o=- 42 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
TRANSPORT = [
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuv",
    f"a=fingerprint:sha-256 {FP}",
    "a=setup:actpass",
    "a=rtcp-mux",
]


def video_section(mid: str = "0", direction: str = "sendonly") -> list[str]:
    return [
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 0.0.0.0",
        *TRANSPORT,
        f"a=mid:{mid}",
        f"a={direction}",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
    ]


def make(*sections: list[str], bundle: str | None = None, session: tuple[str, ...] = ()) -> str:
    lines = list(SESSION)
    if bundle is not None:
        lines.append(f"a=group:BUNDLE {bundle}")
    lines += session
    for section in sections:
        lines += section
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------- real offers


def test_chromium_publish() -> None:
    offer = parse_offer(CHROMIUM_PUBLISH)
    assert offer.session_id == "2086545059771573983"
    assert offer.bundle == ("0", "1")
    assert offer.ice_ufrag == "dAnV"
    assert offer.ice_pwd == "+waq9zYzgXawW3/55Qg0/vvt"
    assert offer.setup == "actpass"
    assert offer.extmap_allow_mixed is True
    assert offer.fingerprints == (
        (
            "sha-256",
            "BE:27:1C:35:1C:B8:23:30:97:CA:95:EC:C0:93:0A:73:"
            "B0:25:C0:B6:FF:25:23:DF:C5:10:1D:2B:38:13:B6:A7",
        ),
    )
    # Only the UDP candidate; the TCP "tcptype active" port 9 one is parsed but dropped.
    assert offer.candidates == (
        Candidate("1747362594", 1, "udp", 2122260223, "127.0.0.1", 60995, "host"),
    )
    audio, video = offer.media
    assert [m.mid for m in offer.media] == ["0", "1"]

    assert (audio.index, audio.kind, audio.port, audio.protocol) == (
        0,
        "audio",
        60995,
        "UDP/TLS/RTP/SAVPF",
    )
    assert audio.formats == ("111", "63", "9", "0", "8", "13", "110", "126")
    assert audio.direction == "sendonly" and audio.sends and not audio.receives
    assert audio.usable
    assert [c.transport for c in audio.candidates] == ["udp", "tcp"]
    assert audio.candidates[1] == Candidate(
        "2525788086", 1, "tcp", 1518280447, "127.0.0.1", 9, "host"
    )
    opus = audio.codecs[0]
    assert opus == Codec(
        111, "opus", 48000, 2, (("minptime", "10"), ("useinbandfec", "1")), ("transport-cc",)
    )
    assert opus.fmtp == "minptime=10;useinbandfec=1"
    assert opus.parameter("useinbandfec") == "1" and opus.parameter("stereo") is None
    red = audio.codecs[1]
    assert (red.name, red.parameters, red.fmtp) == ("red", (("111/111", ""),), "111/111")
    assert [c.payload_type for c in audio.codecs] == [111, 63, 9, 0, 8, 13, 110, 126]
    assert audio.codecs[2] == Codec(9, "G722", 8000, None, (), ())
    assert audio.ssrcs == (
        SsrcInfo(
            3699866258,
            "knWRpEGvKkzXtEwh",
            "31a98a81-f81a-45b3-a7f5-26f82cd0c2dc 0f03df3b-61a6-4b80-92e1-39b4f2f2445b",
        ),
    )
    assert audio.msid == (
        "31a98a81-f81a-45b3-a7f5-26f82cd0c2dc 0f03df3b-61a6-4b80-92e1-39b4f2f2445b"
    )
    assert audio.rtcp_mux and audio.rtcp_rsize and not audio.simulcast
    assert audio.header_extensions == (
        HeaderExtension(1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        HeaderExtension(2, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        HeaderExtension(
            3, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
        ),
        HeaderExtension(4, "urn:ietf:params:rtp-hdrext:sdes:mid"),
    )

    # m=video 9 with c=IN IP4 0.0.0.0 and no candidates: bundled, not rejected.
    assert (video.kind, video.port, video.direction, video.candidates) == (
        "video",
        9,
        "sendonly",
        (),
    )
    assert video.usable
    assert (video.ice_ufrag, video.setup) == ("dAnV", "actpass")
    vp8, rtx = video.codecs[:2]
    assert (vp8.payload_type, vp8.name, vp8.clock_rate, vp8.channels) == (96, "VP8", 90000, None)
    assert vp8.feedback == ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    assert (rtx.payload_type, rtx.name, rtx.parameter("apt")) == (97, "rtx", "96")
    assert len(video.codecs) == 23
    h264 = next(c for c in video.codecs if c.payload_type == 104)
    assert h264.parameter("packetization-mode") == "0"
    assert h264.parameter("profile-level-id") == "42001f"
    ids = {e.uri: e.id for e in video.header_extensions}
    assert ids["urn:ietf:params:rtp-hdrext:sdes:mid"] == 4
    assert ids["http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"] == 2
    assert ids["http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"] == 3
    assert len(ids) == 11
    assert video.ssrc_groups == (("FID", (37704122, 1317872438)),)
    assert [s.ssrc for s in video.ssrcs] == [37704122, 1317872438]


def test_chromium_play() -> None:
    offer = parse_offer(CHROMIUM_PLAY)
    assert offer.ice_ufrag == "c2Z+" and offer.ice_pwd == "4TJvKrAcmdFLqkhtiumBQmrm"
    assert offer.candidates == (
        Candidate("3357595424", 1, "udp", 2122260223, "127.0.0.1", 35456, "host"),
    )
    audio, video = offer.media
    assert audio.direction == video.direction == "recvonly"
    assert audio.receives and not audio.sends
    assert audio.ssrcs == video.ssrcs == () and audio.msid is None
    assert len(video.codecs) == 34
    assert [c.parameter("profile-id") for c in video.codecs if c.name == "VP9"] == [
        "0",
        "2",
        "1",
        "3",
    ]
    av1 = [c for c in video.codecs if c.name == "AV1"]
    assert [(c.payload_type, c.parameter("profile")) for c in av1] == [(45, "0"), (47, "1")]
    flexfec = video.codecs[-1]
    assert (flexfec.payload_type, flexfec.name, flexfec.fmtp) == (
        49,
        "flexfec-03",
        "repair-window=10000000",
    )
    assert flexfec.feedback == ("goog-remb", "transport-cc")


def test_aiortc_publish() -> None:
    offer = parse_offer(AIORTC_PUBLISH)
    video, audio = offer.media
    assert (video.kind, video.mid, audio.kind, audio.mid) == ("video", "0", "audio", "1")
    assert offer.ice_ufrag == "VrB4" and offer.ice_pwd == "9q9uRbxuXoh6oqhqCbPsD3"
    assert [alg for alg, _ in offer.fingerprints] == ["sha-256", "sha-384", "sha-512"]
    assert offer.fingerprints[0][1].startswith("5C:E6:EE:AC")
    assert offer.extmap_allow_mixed is False
    # aiortc gathers per section (ports 52739 and 47224); the bundled transport is the first.
    assert [c.port for c in video.candidates] == [52739]
    assert [c.port for c in audio.candidates] == [47224]
    assert [c.port for c in offer.candidates] == [52739]
    assert video.codecs[0] == Codec(97, "VP8", 90000, None, (), ("nack", "nack pli", "goog-remb"))
    assert video.codecs[1].parameters == (("apt", "97"),)
    assert audio.codecs[0] == Codec(96, "opus", 48000, 2, (), ())
    assert video.header_extensions == (
        HeaderExtension(1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        HeaderExtension(3, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    )
    assert audio.header_extensions[1] == HeaderExtension(
        2, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    )
    assert not video.rtcp_rsize and video.rtcp_mux
    assert video.ssrc_groups == (("FID", (4136699825, 3071359946)),)
    assert video.ssrcs[0] == SsrcInfo(4136699825, "8e09f2c5-3a45-481c-8e1c-f6ee349051de", None)
    assert video.msid == (
        "d7a764ce-d26e-414f-9a49-30e238fbb271 c01acd36-8325-46b2-a5c0-4447ebe0b41e"
    )


def test_aiortc_play() -> None:
    offer = parse_offer(AIORTC_PLAY)
    audio, video = offer.media
    assert audio.direction == video.direction == "recvonly"
    assert offer.ice_ufrag == "wy76"
    assert [(c.payload_type, c.name) for c in video.codecs] == [
        (97, "VP8"),
        (98, "rtx"),
        (99, "H264"),
        (100, "rtx"),
        (101, "H264"),
        (102, "rtx"),
    ]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_lf_line_endings_parse_the_same(name: str) -> None:
    text = fixture(name)
    assert "\r\n" in text
    assert parse_offer(text.replace("\r\n", "\n")) == parse_offer(text)


# --------------------------------------------------------------------------- less common but valid


def test_single_section_without_bundle_and_session_level_transport() -> None:
    lines = [line for line in video_section() if line not in TRANSPORT[:4]]
    offer = parse_offer(make(lines, session=tuple(TRANSPORT[:3])))
    (video,) = offer.media
    assert offer.bundle == ()
    assert (video.ice_ufrag, video.ice_pwd) == ("abcd", "abcdefghijklmnopqrstuv")
    assert video.fingerprints == (("sha-256", FP),) == offer.fingerprints
    assert video.setup is None and offer.setup == "actpass"  # missing setup means actpass


def test_active_setup_and_lower_case_fingerprint() -> None:
    text = make(video_section()).replace("actpass", "active").replace(FP, FP.lower())
    offer = parse_offer(text)
    assert offer.setup == "active"
    assert offer.fingerprints == (("sha-256", FP),)


def test_unknown_fingerprint_algorithm_is_ignored() -> None:
    text = make(video_section()).replace(
        "a=setup:actpass", "a=fingerprint:md5 00:11\r\na=setup:actpass"
    )
    assert parse_offer(text).fingerprints == (("sha-256", FP),)


def test_sections_the_server_cannot_serve_are_kept_unvalidated() -> None:
    data = [
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
    ]
    rejected_audio = ["m=audio 0 UDP/TLS/RTP/SAVPF 111", "a=mid:2"]  # no rtpmap, no ICE
    plain = ["m=video 9 RTP/AVP 31", "a=mid:3"]
    text = make(video_section(), data, rejected_audio, plain, bundle="0 1")
    offer = parse_offer(text)
    assert [m.kind for m in offer.media] == ["video", "application", "audio", "video"]
    assert [m.usable for m in offer.media] == [True, False, False, False]
    assert offer.media[1].formats == ("webrtc-datachannel",)
    assert offer.media[1].protocol == "UDP/DTLS/SCTP"
    assert offer.media[2].port == 0 and offer.media[2].codecs == ()


def test_simulcast_and_rid_are_noticed() -> None:
    extra = ["a=rid:h send", "a=rid:l send", "a=simulcast:send h;l"]
    offer = parse_offer(make(video_section() + extra))
    assert offer.media[0].simulcast
    assert not parse_offer(make(video_section())).media[0].simulcast


def test_static_payload_type_without_rtpmap_is_skipped() -> None:
    lines = [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        *TRANSPORT,
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
    ]
    (audio,) = parse_offer(make(lines)).media
    assert [c.payload_type for c in audio.codecs] == [111]
    assert audio.direction == "sendrecv"


def test_wildcard_feedback_and_extmap_direction() -> None:
    lines = [
        *video_section(),
        "a=rtcp-fb:* ccm fir",
        "a=extmap:7/sendonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:200 urn:example:two-byte",
    ]
    (video,) = parse_offer(make(lines)).media
    assert video.codecs[0].feedback == ("nack", "ccm fir")
    assert video.codecs[1].feedback == ("ccm fir",)
    assert video.header_extensions == (
        HeaderExtension(7, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        HeaderExtension(200, "urn:example:two-byte"),
    )


def test_session_level_direction_is_the_default() -> None:
    lines = [line for line in video_section() if line != "a=sendonly"]
    (video,) = parse_offer(make(lines, session=("a=recvonly",))).media
    assert video.direction == "recvonly"


# --------------------------------------------------------------------------- refusals


def _drop(text: str, prefix: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(prefix))


def _set_line(text: str, prefix: str, line: str) -> str:
    return "".join(
        line + "\r\n" if old.startswith(prefix) else old for old in text.splitlines(keepends=True)
    )


def _many_sections(n: int) -> str:
    sections = [video_section(str(i)) for i in range(n)]
    return make(*sections, bundle=" ".join(str(i) for i in range(n)))


def _two_ufrags() -> str:
    text = CHROMIUM_PUBLISH
    first = text.index("a=ice-ufrag:dAnV")
    second = text.index("a=ice-ufrag:dAnV", first + 1)
    return text[:second] + text[second:].replace("a=ice-ufrag:dAnV", "a=ice-ufrag:zzzz", 1)


BAD_OFFERS = [
    ("empty", "", "empty"),
    ("blank-lines-only", "\r\n\r\n", "empty"),
    ("not-a-string", b"v=0\r\n", "must be a string"),
    ("v=1", CHROMIUM_PUBLISH.replace("v=0", "v=1", 1), "v=0"),
    ("not-first-v", "s=-\r\n" + CHROMIUM_PUBLISH, "v=0"),
    ("junk", "hello\r\nworld", "not an SDP"),
    ("unknown-type", CHROMIUM_PUBLISH.replace("s=-", "s=-\r\nx=1"), "unknown line type"),
    ("second-v", CHROMIUM_PUBLISH + "v=0\r\n", "second v="),
    ("missing-o", _drop(CHROMIUM_PUBLISH, "o="), "o=, s= and t="),
    ("bad-o", CHROMIUM_PUBLISH.replace("o=- 2086545059771573983 2", "o=- abc 2"), "o= line"),
    ("missing-ufrag", _drop(CHROMIUM_PUBLISH, "a=ice-ufrag"), "ice-ufrag"),
    ("missing-pwd", _drop(CHROMIUM_PUBLISH, "a=ice-pwd"), "ice-pwd"),
    ("short-pwd", CHROMIUM_PUBLISH.replace("+waq9zYzgXawW3/55Qg0/vvt", "short"), "22-256"),
    ("short-ufrag", CHROMIUM_PUBLISH.replace("dAnV", "dAn"), "4-256"),
    ("ufrag-bad-chars", CHROMIUM_PUBLISH.replace("dAnV", "dA;nV"), "ICE characters"),
    ("ufrag-mismatch", _two_ufrags(), "disagree"),
    ("holdconn", CHROMIUM_PUBLISH.replace("a=setup:actpass", "a=setup:holdconn"), "holdconn"),
    ("bogus-setup", CHROMIUM_PUBLISH.replace("a=setup:actpass", "a=setup:bogus"), "a=setup"),
    ("no-fingerprint", _drop(CHROMIUM_PUBLISH, "a=fingerprint"), "fingerprint"),
    ("bad-fingerprint", CHROMIUM_PUBLISH.replace("BE:27:1C", "BE:27:1"), "fingerprint"),
    ("no-bundle", _drop(CHROMIUM_PUBLISH, "a=group:BUNDLE"), "BUNDLE"),
    ("bundle-lacks-one", CHROMIUM_PUBLISH.replace("BUNDLE 0 1", "BUNDLE 0"), "BUNDLE lacks"),
    ("bundle-unknown-mid", CHROMIUM_PUBLISH.replace("BUNDLE 0 1", "BUNDLE 0 1 7"), "mid '7'"),
    ("bundle-dup-mid", CHROMIUM_PUBLISH.replace("BUNDLE 0 1", "BUNDLE 0 1 1"), "twice"),
    ("missing-mid", _drop(CHROMIUM_PUBLISH, "a=mid:1"), "BUNDLE"),
    ("duplicate-mid", CHROMIUM_PUBLISH.replace("a=mid:1", "a=mid:0"), "share a mid"),
    ("no-rtcp-mux", _drop(CHROMIUM_PUBLISH, "a=rtcp-mux"), "rtcp-mux"),
    ("rtx-apt-missing", CHROMIUM_PUBLISH.replace("a=fmtp:97 apt=96", "a=fmtp:97 apt=55"), "apt"),
    ("rtx-no-apt", _drop(CHROMIUM_PUBLISH, "a=fmtp:97 "), "apt"),
    ("pt-200", CHROMIUM_PUBLISH.replace("a=rtpmap:96 VP8", "a=rtpmap:200 VP8"), "0-127"),
    ("pt-200-in-m", CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF 200 97"), "0-127"),
    ("pt-rtcp-range", CHROMIUM_PUBLISH.replace(" 110 126", " 110 72"), "rtcp-mux"),
    ("pt-no-rtpmap", CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF 96 97 35"), "no a=rtpmap"),
    ("rtpmap-not-in-m", CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF 97"), "not listed"),
    ("pt-twice", CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF 96 96 97"), "twice"),
    ("dup-rtpmap", CHROMIUM_PUBLISH.replace("a=rtpmap:97 rtx", "a=rtpmap:96 rtx"), "rtpmap"),
    ("dup-fmtp", CHROMIUM_PUBLISH.replace("a=fmtp:97 apt=96", "a=fmtp:102 apt=96"), "fmtp"),
    ("port-70000", CHROMIUM_PUBLISH.replace("m=audio 60995", "m=audio 70000"), "0-65535"),
    ("port-count", CHROMIUM_PUBLISH.replace("m=audio 60995", "m=audio 60995/2"), "port"),
    ("port-text", CHROMIUM_PUBLISH.replace("m=audio 60995", "m=audio abc"), "decimal"),
    ("port-huge", CHROMIUM_PUBLISH.replace("m=audio 60995", "m=audio " + "9" * 5000), "decimal"),
    ("ext-id-0", CHROMIUM_PUBLISH.replace("a=extmap:4 ", "a=extmap:0 "), "1-255"),
    ("ext-id-256", CHROMIUM_PUBLISH.replace("a=extmap:4 ", "a=extmap:256 "), "1-255"),
    ("ext-id-text", CHROMIUM_PUBLISH.replace("a=extmap:4 ", "a=extmap:x "), "decimal"),
    ("ext-id-twice", CHROMIUM_PUBLISH.replace("a=extmap:13 ", "a=extmap:14 "), "twice"),
    ("ssrc-too-big", CHROMIUM_PUBLISH.replace("a=ssrc:37704122 ", "a=ssrc:4294967296 "), "ssrc"),
    ("ssrc-text", CHROMIUM_PUBLISH.replace("a=ssrc:37704122 ", "a=ssrc:x1 "), "decimal"),
    ("fid-three", CHROMIUM_PUBLISH.replace("FID 37704122", "FID 1 37704122"), "FID"),
    ("rtpmap-text", CHROMIUM_PUBLISH.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:9a VP8"), "rtpmap"),
    ("clock-text", CHROMIUM_PUBLISH.replace("VP8/90000", "VP8/fast"), "clock rate"),
    (
        "candidate-short",
        _set_line(CHROMIUM_PUBLISH, "a=candidate:17", "a=candidate:1 1 udp 5"),
        "8",
    ),
    ("candidate-port", CHROMIUM_PUBLISH.replace("127.0.0.1 60995 typ", "127.0.0.1 x typ"), "port"),
    ("candidate-typ", CHROMIUM_PUBLISH.replace("60995 typ host", "60995 host typ"), "typ"),
    ("c-line", CHROMIUM_PUBLISH.replace("c=IN IP4 127.0.0.1", "c=IN IPX 127.0.0.1"), "c= line"),
    ("offerer-ice-lite", CHROMIUM_PUBLISH.replace("t=0 0", "t=0 0\r\na=ice-lite"), "ICE-lite"),
    ("33-sections", _many_sections(33), "32"),
    ("129-formats", CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF 96 97" + " 1" * 128), "128"),
    ("70-KiB", CHROMIUM_PUBLISH + "a=x-pad:" + "x" * 70 * 1024 + "\r\n", "bytes"),
    ("2001-lines", "v=0\r\n" + "a=x\r\n" * 2000, "2000 lines"),
    ("nul", CHROMIUM_PUBLISH.replace("s=-", "s=-\x00"), "control character"),
    ("tab", CHROMIUM_PUBLISH.replace("a=mid:0", "a=mid:\t0"), "control character"),
    ("bare-cr", CHROMIUM_PUBLISH.replace("s=-\r\n", "s=-\r\r\n"), "carriage return"),
    ("surrogate", CHROMIUM_PUBLISH.replace("s=-", "s=\udc80"), "control character"),
    ("data-only", make(["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:0"]), "usable"),
    (
        "all-port-0",
        CHROMIUM_PUBLISH.replace("m=audio 60995", "m=audio 0").replace("m=video 9", "m=video 0"),
        "no usable audio or video section",
    ),
    ("no-media", make(), "no usable audio or video section"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [b[1:] for b in BAD_OFFERS], ids=[b[0] for b in BAD_OFFERS]
)
def test_bad_offers_are_refused_with_a_message(text: str, fragment: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_offer(text)
    message = str(info.value)
    assert fragment in message, message
    assert len(message) < 300


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SdpError, ValueError)


# --------------------------------------------------------------------------- property tests


def _parse_or_sdp_error(text: str) -> None:
    try:
        offer = parse_offer(text)
    except SdpError as exc:
        assert str(exc)
    else:
        assert isinstance(offer, Offer) and offer.media


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=3000))
def test_random_text_raises_only_sdp_error(text: str) -> None:
    _parse_or_sdp_error(text)


_FIXTURE_LINES = [fixture(name).split("\r\n") for name in FIXTURE_NAMES]
_SDP_PIECES = [*"0123456789 :/;=-abcdefvmx*AZ\t\r\x00é", "a=", "\r\n", "m=video 9 "]
_FRAGMENT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(_SDP_PIECES), max_size=20).map("".join),
    st.sampled_from(["0", "-1", "65536", "4294967296", "999999999999999999999", "", " ", "x"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_offers_raise_only_sdp_error(data: st.DataObject) -> None:
    lines = list(data.draw(st.sampled_from(_FIXTURE_LINES)))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(
            st.sampled_from(["delete", "duplicate", "replace", "insert", "field", "cut"])
        )
        line = lines[i]
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(data.draw(st.integers(0, len(lines))), line)
        elif op == "replace":
            lines[i] = data.draw(_FRAGMENT)
        elif op == "insert":
            at = data.draw(st.integers(0, len(line)))
            lines[i] = line[:at] + data.draw(_FRAGMENT) + line[at:]
        elif op == "field":
            # Swap one space/colon/slash separated field of the line for something else.
            parts = line.replace(":", " ").replace("/", " ").split(" ")
            j = data.draw(st.integers(0, len(parts) - 1))
            lines[i] = line.replace(parts[j], data.draw(_FRAGMENT), 1) if parts[j] else line
        else:
            lines[i] = line[: data.draw(st.integers(0, len(line)))]
        if not lines:
            lines = [""]
    _parse_or_sdp_error(data.draw(st.sampled_from(["\r\n", "\n"])).join(lines))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(sorted({ln for lines in _FIXTURE_LINES for ln in lines})), max_size=80)
)
def test_shuffled_real_lines_raise_only_sdp_error(lines: list[str]) -> None:
    _parse_or_sdp_error("\r\n".join(["v=0", *lines]))


# --------------------------------------------------------------------------- what other peers send


def audio_section(mid: str = "1") -> list[str]:
    return [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        *TRANSPORT,
        f"a=mid:{mid}",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
    ]


def bundle_only(section: list[str], keep_transport: bool = False) -> list[str]:
    """JSEP max-bundle (Firefox, webrtcbin): port 0 with a=bundle-only, maybe no transport attributes."""
    lines = [line.replace(" 9 ", " 0 ", 1) if line.startswith("m=") else line for line in section]
    if not keep_transport:
        lines = [line for line in lines if line not in TRANSPORT[:4]]
    return [*lines, "a=bundle-only"]


@pytest.mark.parametrize("keep_transport", [True, False])
def test_bundle_only_sections_are_served_on_the_bundle_transport(keep_transport: bool) -> None:
    audio_lines = bundle_only(audio_section("1"), keep_transport)
    offer = parse_offer(make(video_section("0"), audio_lines, bundle="0 1"))
    video, audio = offer.media
    assert audio.port == 0 and audio.bundle_only and audio.usable
    # What it left out is the tagged section's: one transport for both.
    assert (audio.ice_ufrag, audio.fingerprints) == (video.ice_ufrag, video.fingerprints)
    assert audio.setup == "actpass"
    assert audio.rtcp_mux


def test_bundle_only_outside_the_group_is_a_rejected_section() -> None:
    offer = parse_offer(make(video_section("0"), bundle_only(audio_section("1")), bundle="0"))
    assert [m.usable for m in offer.media] == [True, False]


def test_a_group_of_bundle_only_sections_has_no_transport() -> None:
    with pytest.raises(SdpError, match="bundle-only"):
        parse_offer(
            make(bundle_only(video_section("0"), True), bundle_only(audio_section("1")), bundle="0 1")
        )


def test_rtcp_fb_for_a_payload_type_not_offered_is_ignored() -> None:
    # Firefox after setCodecPreferences keeps feedback lines of codecs it dropped.
    offer = parse_offer(make([*video_section(), "a=rtcp-fb:120 nack pli", "a=rtcp-fb:121 ccm fir"]))
    assert offer.media[0].codecs[0].feedback == ("nack",)


def test_offerer_may_be_the_dtls_server() -> None:
    # FFmpeg's WHIP client: a=setup:passive, so the server must take the DTLS client role.
    offer = parse_offer(make(video_section()).replace("a=setup:actpass", "a=setup:passive"))
    assert offer.setup == "passive"


def test_rtcp_mux_only_and_media_level_extmap_allow_mixed() -> None:
    section = [line for line in video_section() if line != "a=rtcp-mux"]
    offer = parse_offer(make([*section, "a=rtcp-mux-only", "a=extmap-allow-mixed"]))
    assert offer.media[0].rtcp_mux and offer.extmap_allow_mixed


def test_several_sections_without_bundle_are_told_to_use_max_bundle() -> None:
    with pytest.raises(SdpError, match="max-bundle"):
        parse_offer(make(video_section("0"), audio_section("1")))
