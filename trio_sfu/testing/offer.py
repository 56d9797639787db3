"""A Chromium-shaped offer and a reader for the answers a test peer gets back.

For test peers written here (the sans-IO client peer, the benchmark's legs): a BUNDLE offer of opus
and VP8 with rtcp-mux, a=setup:active and abs-send-time, and the few fields of an answer (from
trio_sfu, or an offer from Janus) that such a peer needs to connect.

A publisher may offer its video as simulcast layers the way Chromium does (`build_offer(rids=...)`):
the mid, rid and repaired-rid header extensions, `a=rid:X send` per layer, `a=simulcast:send q;h;f`,
and no a=ssrc lines for the video (the layers' SSRCs are learnt from the rid extension of their first
packets); `simulcast_answer_problem` says whether the answer took the layers.
"""

from __future__ import annotations

import os
import secrets
import struct

import attrs

from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME, EXT_MID, EXT_REPAIRED_RID, EXT_RID
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.ice import ice_credential
from trio_sfu.wire.datagram import Address

ABS_SEND_TIME_ID = 2  # Chromium's ids: abs-send-time 2, mid 4, rid 10, repaired-rid 11
MID_ID = 4
RID_ID = 10
REPAIRED_RID_ID = 11
SIMULCAST_RIDS = ("q", "h", "f")  # Chromium's three layers, lowest first: quarter, half, full size
OPUS_PT = 111
VP8_PT = 96


@attrs.frozen
class LocalParams:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256, of the client's own certificate
    port: int  # the leg's UDP port (written as its host candidate)
    audio_ssrc: int
    video_ssrc: int
    cname: str
    host: str = "127.0.0.1"  # the leg's address (its host candidate)

    @classmethod
    def new(cls, certificate: Certificate, port: int, host: str = "127.0.0.1") -> LocalParams:
        ssrcs = struct.unpack("!II", os.urandom(8))
        return cls(
            ice_ufrag=ice_credential(8),
            ice_pwd=ice_credential(24),
            fingerprint=certificate.fingerprint("sha-256"),
            port=port,
            audio_ssrc=ssrcs[0] | 1,
            video_ssrc=ssrcs[1] | 1,
            cname=secrets.token_hex(8),
            host=host,
        )


def build_offer(local: LocalParams, *, publish: bool, rids: tuple[str, ...] = ()) -> str:
    """A Chromium-shaped BUNDLE offer: opus/111 and VP8/96, rtcp-mux, setup:active, abs-send-time.

    A publisher sends (a=ssrc lines name its SSRCs); a subscriber only receives. `rids` (a publisher
    only): the video goes as these simulcast layers, lowest first, as Chromium offers them (see the
    module's docstring); `local.video_ssrc` is then unused.
    """
    if rids and not publish:
        raise ValueError("only a publisher offers simulcast layers")
    direction = "sendonly" if publish else "recvonly"
    session_id = int.from_bytes(os.urandom(7), "big")
    lines = [
        "v=0",
        f"o=- {session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS bench",
    ]
    sections = (
        ("audio", "0", OPUS_PT, local.audio_ssrc,
         [f"a=rtpmap:{OPUS_PT} opus/48000/2", f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1"]),
        ("video", "1", VP8_PT, local.video_ssrc,
         [f"a=rtpmap:{VP8_PT} VP8/90000", f"a=rtcp-fb:{VP8_PT} goog-remb", f"a=rtcp-fb:{VP8_PT} ccm fir",
          f"a=rtcp-fb:{VP8_PT} nack", f"a=rtcp-fb:{VP8_PT} nack pli"]),
    )
    for index, (kind, mid, pt, ssrc, codec_lines) in enumerate(sections):
        lines += [
            f"m={kind} {local.port if index == 0 else 9} UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 127.0.0.1" if index == 0 else "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
        ]
        if index == 0:
            lines += [
                f"a=candidate:1 1 udp 2122260223 {local.host} {local.port} typ host generation 0",
                "a=end-of-candidates",
            ]
        simulcast = bool(rids) and kind == "video"
        lines += [
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            f"a=fingerprint:sha-256 {local.fingerprint}",
            "a=setup:active",
            f"a=mid:{mid}",
            f"a=extmap:{ABS_SEND_TIME_ID} {EXT_ABS_SEND_TIME}",
            f"a=extmap:{MID_ID} {EXT_MID}",
        ]
        if simulcast:
            lines += [f"a=extmap:{RID_ID} {EXT_RID}", f"a=extmap:{REPAIRED_RID_ID} {EXT_REPAIRED_RID}"]
        lines += [
            f"a={direction}",
            "a=rtcp-mux",
            *codec_lines,
        ]
        if simulcast:
            # As Chromium: the stream's msid, no a=ssrc lines, then the layers.
            lines += [f"a=msid:bench {kind}", *(f"a=rid:{rid} send" for rid in rids),
                      f"a=simulcast:send {';'.join(rids)}"]
        elif publish:
            msid = f"bench {kind}"
            lines += [f"a=msid:{msid}", f"a=ssrc:{ssrc} cname:{local.cname}", f"a=ssrc:{ssrc} msid:{msid}"]
    return "\r\n".join(lines) + "\r\n"


@attrs.frozen
class Section:
    kind: str
    port: int
    mid: str | None
    formats: tuple[str, ...]
    rtpmaps: dict[int, str]  # payload type -> "VP8/90000"
    extensions: dict[str, int]  # uri -> id
    rids: dict[str, str] = attrs.field(factory=dict)  # a=rid lines: rid -> direction ("recv", "send")
    simulcast: str = ""  # the a=simulcast value, e.g. "recv q;h;f"


@attrs.frozen
class Answer:
    """The peer's session description (an answer from trio_sfu; an offer from Janus for players)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    candidates: tuple[tuple[str, int], ...]
    ssrcs: dict[str, int]  # kind -> the SSRC the server sends (play answers)
    payload_types: dict[str, int]  # kind -> payload type
    sections: tuple[Section, ...] = ()

    @property
    def address(self) -> Address:
        """The server's IPv4 loopback candidate (the bench never uses any other address): 127.0.0.1
        first, else another 127/8 one (Janus gathers only on non-loopback interfaces)."""
        loopback = [(h, p) for h, p in self.candidates if h.startswith("127.")]
        for host, port in sorted(loopback, key=lambda c: c[0] != "127.0.0.1"):
            return host, port
        raise ValueError(f"the answer has no 127.0.0.0/8 candidate: {self.candidates}")

    def extension_id(self, uri: str) -> int:
        return next((s.extensions[uri] for s in self.sections if uri in s.extensions), 0)


def parse_answer(sdp: str) -> Answer:
    ufrag = pwd = None
    fingerprints: list[tuple[str, str]] = []
    candidates: list[tuple[str, int]] = []
    ssrcs: dict[str, int] = {}
    pts: dict[str, int] = {}
    sections: list[Section] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        section = sections[-1] if sections else None
        if line.startswith("m="):
            fields = line[2:].split()
            sections.append(Section(fields[0], int(fields[1]), None, tuple(fields[3:]), {}, {}))
            if fields[1] != "0" and len(fields) > 3:
                pts.setdefault(fields[0], int(fields[3]))
        elif line.startswith("a=ice-ufrag:"):
            ufrag = ufrag or line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            pwd = pwd or line.split(":", 1)[1]
        elif line.startswith("a=fingerprint:"):
            algorithm, _, value = line.split(":", 1)[1].partition(" ")
            if (algorithm, value) not in fingerprints:
                fingerprints.append((algorithm, value))
        elif line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) >= 6 and fields[2].lower() == "udp":
                candidate = (fields[4], int(fields[5]))
                if candidate not in candidates:
                    candidates.append(candidate)
        elif section is None:
            continue
        elif line.startswith("a=ssrc:"):
            ssrcs.setdefault(section.kind, int(line[7:].split()[0]))
        elif line.startswith("a=mid:"):
            sections[-1] = attrs.evolve(section, mid=line[6:])
        elif line.startswith("a=rtpmap:"):
            pt, _, codec = line[9:].partition(" ")
            section.rtpmaps[int(pt)] = codec
        elif line.startswith("a=extmap:"):
            ident, _, uri = line[9:].partition(" ")
            section.extensions[uri.split()[0]] = int(ident.split("/")[0])
        elif line.startswith("a=rid:"):
            fields = line[6:].split()
            if len(fields) >= 2:
                section.rids[fields[0]] = fields[1]
        elif line.startswith("a=simulcast:"):
            sections[-1] = attrs.evolve(section, simulcast=" ".join(line[12:].split()))
    if ufrag is None or pwd is None or not fingerprints:
        raise ValueError("the answer lacks ICE credentials or a fingerprint")
    return Answer(ufrag, pwd, tuple(fingerprints), tuple(candidates), ssrcs, pts, tuple(sections))


def simulcast_answer_problem(answer: Answer, rids: tuple[str, ...]) -> str | None:
    """None if `answer` receives every layer of a simulcast offer of `rids` (a=rid:X recv for each, and
    a=simulcast:recv listing them all), else what is wrong: a server that answers without them gets
    one layer from a browser, and the layers' packets would not be told apart."""
    video = next((s for s in answer.sections if s.kind == "video" and s.port != 0), None)
    if video is None:
        return "the answer rejects or lacks the video section"
    missing = [rid for rid in rids if video.rids.get(rid) != "recv"]
    direction, _, listed = video.simulcast.partition(" ")
    # RFC 8853: alternatives are separated by commas, layers by semicolons; '~' marks a paused one.
    received = {alt.lstrip("~") for layer in listed.split(";") for alt in layer.split(",") if alt}
    problems = []
    if missing:
        problems.append(f"no 'a=rid:X recv' for {', '.join(missing)}")
    if direction != "recv" or not set(rids) <= received:
        problems.append(f"'a=simulcast:{video.simulcast}' instead of 'a=simulcast:recv {';'.join(rids)}'"
                        if video.simulcast else f"no 'a=simulcast:recv {';'.join(rids)}'")
    if EXT_RID not in video.extensions:
        problems.append(f"the rid header extension ({EXT_RID}) was not accepted")
    return "; ".join(problems) or None
