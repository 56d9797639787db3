"""Parse and validate a client's SDP offer into frozen data (sans-IO).

A small strict line parser rather than sdp-transform: that package is a regex port of a JavaScript
parser that skips whatever does not match and yields loose dicts, while the server must bound its
input and refuse inconsistent offers with a precise message (signaling error 415).
Everything the parser rejects raises `SdpError`; nothing else escapes for any input string.
"""

from __future__ import annotations

import re

import attrs

MAX_TEXT_BYTES = 64 * 1024
MAX_LINES = 2000
MAX_MEDIA = 32
MAX_CODECS = 128
MAX_RIDS = 8  # simulcast layers in one section (browsers send at most 3 or 4)

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SETUP_ROLES = ("actpass", "active", "passive", "holdconn")
# Digest length in bytes of each fingerprint algorithm the server can verify.
FINGERPRINT_DIGEST_SIZES = {"sha-1": 20, "sha-256": 32, "sha-384": 48, "sha-512": 64}
# Payload types with a static RFC 3551 assignment: they may appear in m= without an a=rtpmap.
STATIC_PAYLOAD_TYPES = frozenset(
    (0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 25, 26, 28, 31, 32, 33, 34)
)

_LINE_TYPES = frozenset("vosiuepcbtrzkam")
_BAD_CHARS = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_DIGITS = re.compile(r"[0-9]+")
_CODEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_URI = re.compile(r"[!-~]+")
_ADDRESS = re.compile(r"[A-Za-z0-9.:\-]{1,255}")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
_PROTOCOL = re.compile(r"[A-Za-z0-9/_.\-]+")
_RID = re.compile(r"[A-Za-z0-9_\-]{1,32}")  # RFC 8851 rid-id (it allows 255 characters; browsers use 1-3)


class SdpError(ValueError):
    """The offer cannot be used (-> signaling error 415). str(e) is a clear human message."""


@attrs.frozen
class Codec:
    """One a=rtpmap entry with its fmtp parameters and feedback, as the peer wrote them."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None
    parameters: tuple[tuple[str, str], ...]
    feedback: tuple[str, ...]

    def parameter(self, key: str) -> str | None:
        """The value of fmtp parameter `key` (case-insensitive name), None when absent."""
        wanted = key.lower()
        for k, v in self.parameters:
            if k.lower() == wanted:
                return v
        return None

    @property
    def fmtp(self) -> str:
        """The fmtp value as it should be written back, "" if there are no parameters."""
        return ";".join(f"{k}={v}" if v else k for k, v in self.parameters)


@attrs.frozen
class HeaderExtension:
    """An a=extmap mapping of a local id to an RTP header extension URI."""

    id: int
    uri: str


@attrs.frozen
class Rid:
    """An RFC 8851 a=rid line: one RTP stream the offerer names (a simulcast layer)."""

    id: str
    direction: str  # "send" or "recv", from the offerer's side
    restrictions: str  # the rest of the line (pt=, max-width=, ...), kept as written


@attrs.frozen
class SsrcInfo:
    """One a=ssrc id with the attributes the server uses."""

    ssrc: int
    cname: str | None
    msid: str | None


@attrs.frozen
class Candidate:
    """An ICE candidate; informational, since the ICE-lite server learns addresses from checks."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str


@attrs.frozen
class MediaSection:
    """One m-section of the offer, with session-level transport values filled in."""

    index: int
    kind: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    mid: str | None
    direction: str
    codecs: tuple[Codec, ...]
    header_extensions: tuple[HeaderExtension, ...]
    ssrcs: tuple[SsrcInfo, ...]
    ssrc_groups: tuple[tuple[str, tuple[int, ...]], ...]
    msid: str | None
    rtcp_mux: bool
    rtcp_rsize: bool
    rids: tuple[Rid, ...]
    simulcast_send: tuple[str, ...]  # RFC 8853: the rids the offerer sends, in its order (paused too)
    bundle_only: bool
    usable: bool
    ice_ufrag: str | None
    ice_pwd: str | None
    fingerprints: tuple[tuple[str, str], ...]
    setup: str | None
    candidates: tuple[Candidate, ...]

    @property
    def simulcast(self) -> bool:
        """The offerer sends this section as several RTP streams (layers)."""
        return len(self.simulcast_send) > 1

    @property
    def sends(self) -> bool:
        """The offerer sends media on this section."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """The offerer receives media on this section."""
        return self.direction in ("sendrecv", "recvonly")


@attrs.frozen
class Offer:
    """A validated offer; the transport fields are those of the bundled transport."""

    session_id: str
    media: tuple[MediaSection, ...]
    bundle: tuple[str, ...]
    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    setup: str
    candidates: tuple[Candidate, ...]
    extmap_allow_mixed: bool = False


# --------------------------------------------------------------------------- low-level helpers


def _servable(kind: str, protocol: str, port: int, bundle_only: bool) -> bool:
    """Audio/video over (DTLS-)SRTP on a port, or port 0 with a=bundle-only (RFC 8843 section 6: JSEP
    max-bundle offers every section but the first so). Other sections (data channels, plain RTP, port
    0 alone) are kept but answered with port 0."""
    return kind in ("audio", "video") and "RTP/SAVP" in protocol and (port != 0 or bundle_only)


def _fail(lineno: int, message: str) -> SdpError:
    return SdpError(f"line {lineno}: {message}")


def _int(text: str, lo: int, hi: int, what: str, lineno: int) -> int:
    """A decimal integer in [lo, hi]; bounded length so hostile digit strings cost nothing."""
    if not _DIGITS.fullmatch(text) or len(text) > 20:
        raise _fail(lineno, f"{what} must be a decimal integer, got {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise _fail(lineno, f"{what} {value} out of range {lo}-{hi}")
    return value


def _token(text: str, what: str, lineno: int, pattern: re.Pattern[str] = _TOKEN) -> str:
    if not pattern.fullmatch(text):
        raise _fail(lineno, f"invalid {what} {text[:40]!r}")
    return text


def _fields(value: str, minimum: int, what: str, lineno: int) -> list[str]:
    fields = [f for f in value.split(" ") if f]
    if len(fields) < minimum:
        raise _fail(lineno, f"{what} needs at least {minimum} fields, got {value[:60]!r}")
    return fields


def _split_lines(text: object) -> list[tuple[int, str, str]]:
    """Split into (line number, type letter, value), enforcing the size and character limits."""
    if not isinstance(text, str):
        raise SdpError("the offer must be a string")
    if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise SdpError(f"the offer is larger than {MAX_TEXT_BYTES} bytes")
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        lineno = text.count("\n", 0, bad.start()) + 1
        raise _fail(lineno, f"forbidden control character {bad.group()!r}")
    lines: list[tuple[int, str, str]] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if "\r" in line:
            raise _fail(lineno, "carriage return inside a line")
        if not line:
            continue  # blank lines carry nothing; tolerated
        if len(lines) >= MAX_LINES:
            raise SdpError(f"the offer has more than {MAX_LINES} lines")
        if len(line) < 2 or line[1] != "=":
            raise _fail(lineno, f"not an SDP '<type>=<value>' line: {line[:40]!r}")
        if line[0] not in _LINE_TYPES:
            # RFC 8866 section 5: a description with an unknown type letter is to be ignored whole.
            raise _fail(lineno, f"unknown line type {line[0]!r}")
        lines.append((lineno, line[0], line[2:]))
    if not lines:
        raise SdpError("the offer is empty")
    first_lineno, first_type, first_value = lines[0]
    if first_type != "v" or first_value != "0":
        raise _fail(first_lineno, "an SDP description must start with 'v=0'")
    return lines


# --------------------------------------------------------------------------- mutable builders


class _Scope:
    """Attributes that may appear at session level and be overridden per media section."""

    def __init__(self) -> None:
        self.ice_ufrag: str | None = None
        self.ice_pwd: str | None = None
        self.fingerprints: list[tuple[str, str]] = []
        self.setup: str | None = None
        self.direction: str | None = None


class _Media(_Scope):
    def __init__(self, index: int, lineno: int, value: str) -> None:
        super().__init__()
        self.index = index
        self.lineno = lineno
        fields = _fields(value, 4, "m= line", lineno)
        self.kind = _token(fields[0], "media kind", lineno)
        if "/" in fields[1]:
            raise _fail(lineno, "port counts ('port/n') are not supported")
        self.port = _int(fields[1], 0, 65535, "port", lineno)
        self.protocol = _token(fields[2], "protocol", lineno, _PROTOCOL)
        self.formats = tuple(_token(f, "format", lineno) for f in fields[3:])
        if len(self.formats) > MAX_CODECS:
            raise _fail(lineno, f"more than {MAX_CODECS} formats in one m-section")
        self.mid: str | None = None
        self.rtpmap: dict[int, tuple[str, int, int | None, int]] = {}
        self.fmtp: dict[int, tuple[tuple[tuple[str, str], ...], int]] = {}
        self.rtcp_fb: list[tuple[int | None, str, int]] = []
        self.extmaps: list[HeaderExtension] = []
        self.ssrcs: dict[int, dict[str, str]] = {}
        self.ssrc_groups: list[tuple[str, tuple[int, ...], int]] = []
        self.msid: str | None = None
        self.rtcp_mux = False
        self.rtcp_rsize = False
        self.rids: dict[str, Rid] = {}
        self.simulcast_send: tuple[str, ...] = ()
        self.bundle_only = False
        self.extmap_allow_mixed = False
        self.candidates: list[Candidate] = []
        # A bundle-only section outside the BUNDLE group is a rejected one: parse_offer sets this.
        self.in_bundle = True

    @property
    def usable(self) -> bool:
        return _servable(self.kind, self.protocol, self.port, self.bundle_only and self.in_bundle)


def _parse_fingerprint(value: str, lineno: int) -> tuple[str, str] | None:
    fields = _fields(value, 2, "a=fingerprint", lineno)
    algorithm = fields[0].lower()
    size = FINGERPRINT_DIGEST_SIZES.get(algorithm)
    if size is None:
        return None  # an algorithm the server cannot check is simply not usable
    digest = fields[1]
    if not _HEX_PAIRS.fullmatch(digest) or len(digest) != size * 3 - 1:
        raise _fail(lineno, f"malformed {algorithm} fingerprint")
    return algorithm, digest.upper()


def _parse_candidate(value: str, lineno: int) -> Candidate:
    fields = _fields(value, 8, "a=candidate", lineno)
    if fields[6] != "typ":
        raise _fail(lineno, "a=candidate: expected 'typ' as the seventh field")
    address = fields[4]
    if not _ADDRESS.fullmatch(address):
        raise _fail(lineno, f"a=candidate: invalid address {address[:40]!r}")
    foundation = fields[0]
    if len(foundation) > 32:
        raise _fail(lineno, "a=candidate: foundation longer than 32 characters")
    return Candidate(
        foundation=_token(foundation, "candidate foundation", lineno, _ICE_CHARS),
        component=_int(fields[1], 1, 256, "candidate component", lineno),
        transport=_token(fields[2], "candidate transport", lineno).lower(),
        priority=_int(fields[3], 1, 2**31 - 1, "candidate priority", lineno),
        address=address,
        port=_int(fields[5], 0, 65535, "candidate port", lineno),
        type=_token(fields[7], "candidate type", lineno).lower(),
    )


def _parse_fmtp_parameters(text: str, lineno: int) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = []
    for part in text.split(";"):
        part = part.strip(" ")
        if not part:
            continue
        key, _, val = part.partition("=")
        key, val = key.strip(" "), val.strip(" ")
        if not key:
            raise _fail(lineno, f"a=fmtp: parameter without a name in {text[:60]!r}")
        params.append((key, val))
    return tuple(params)


def _set_once(current: str | None, value: str, what: str, lineno: int) -> str:
    if current is not None and current != value:
        raise _fail(lineno, f"conflicting {what} attributes")
    return value


def _scope_attribute(scope: _Scope, name: str, value: str, lineno: int) -> bool:
    """Attributes valid at both levels; True when `name` was one of them."""
    if name == "ice-ufrag":
        scope.ice_ufrag = _set_once(scope.ice_ufrag, value, "a=ice-ufrag", lineno)
    elif name == "ice-pwd":
        scope.ice_pwd = _set_once(scope.ice_pwd, value, "a=ice-pwd", lineno)
    elif name == "fingerprint":
        fingerprint = _parse_fingerprint(value, lineno)
        if fingerprint is not None and fingerprint not in scope.fingerprints:
            scope.fingerprints.append(fingerprint)
    elif name == "setup":
        if value not in SETUP_ROLES:
            raise _fail(lineno, f"a=setup: unknown role {value[:20]!r}")
        scope.setup = _set_once(scope.setup, value, "a=setup", lineno)
    elif name in DIRECTIONS:
        scope.direction = _set_once(scope.direction, name, "direction", lineno)
    else:
        return False
    return True


def _payload_type(text: str, lineno: int, what: str) -> int:
    return _int(text, 0, 127, f"{what} payload type", lineno)


def _media_attribute(media: _Media, name: str, value: str, lineno: int) -> None:
    if _scope_attribute(media, name, value, lineno):
        return
    if name == "mid":
        media.mid = _set_once(media.mid, _token(value, "mid", lineno), "a=mid", lineno)
        if len(value) > 256:
            raise _fail(lineno, "a=mid longer than 256 characters")
    elif name == "rtpmap":
        fields = _fields(value, 2, "a=rtpmap", lineno)
        pt = _payload_type(fields[0], lineno, "a=rtpmap")
        if pt in media.rtpmap or len(fields) != 2:
            raise _fail(lineno, f"duplicate or malformed a=rtpmap for payload type {pt}")
        parts = fields[1].split("/")
        if len(parts) not in (2, 3):
            raise _fail(lineno, "a=rtpmap: expected '<name>/<clock rate>[/<channels>]'")
        codec_name = _token(parts[0], "codec name", lineno, _CODEC_NAME)
        clock = _int(parts[1], 1, 2**32 - 1, "clock rate", lineno)
        channels = _int(parts[2], 1, 255, "channel count", lineno) if len(parts) == 3 else None
        media.rtpmap[pt] = (codec_name, clock, channels, lineno)
    elif name == "fmtp":
        pt_text, _, params = value.partition(" ")
        pt = _payload_type(pt_text, lineno, "a=fmtp")
        if pt in media.fmtp:
            raise _fail(lineno, f"duplicate a=fmtp for payload type {pt}")
        media.fmtp[pt] = (_parse_fmtp_parameters(params, lineno), lineno)
    elif name == "rtcp-fb":
        fields = _fields(value, 2, "a=rtcp-fb", lineno)
        target = None if fields[0] == "*" else _payload_type(fields[0], lineno, "a=rtcp-fb")
        for f in fields[1:]:
            _token(f, "rtcp-fb value", lineno)
        media.rtcp_fb.append((target, " ".join(fields[1:]), lineno))
    elif name == "extmap":
        fields = _fields(value, 2, "a=extmap", lineno)
        id_text, _, ext_direction = fields[0].partition("/")
        ext_id = _int(id_text, 1, 255, "a=extmap id", lineno)
        if ext_direction and ext_direction not in DIRECTIONS:
            raise _fail(lineno, f"a=extmap: unknown direction {ext_direction[:20]!r}")
        if any(e.id == ext_id for e in media.extmaps):
            raise _fail(lineno, f"a=extmap id {ext_id} used twice")
        uri = _token(fields[1], "a=extmap URI", lineno, _URI)
        media.extmaps.append(HeaderExtension(id=ext_id, uri=uri))
    elif name == "ssrc":
        ssrc_text, _, rest = value.partition(" ")
        ssrc = _int(ssrc_text, 0, 2**32 - 1, "a=ssrc", lineno)
        attr_name, _, attr_value = rest.partition(":")
        _token(attr_name, "a=ssrc attribute", lineno)
        media.ssrcs.setdefault(ssrc, {}).setdefault(attr_name, attr_value)
    elif name == "ssrc-group":
        fields = _fields(value, 2, "a=ssrc-group", lineno)
        semantics = _token(fields[0], "a=ssrc-group semantics", lineno)
        ssrcs = tuple(_int(f, 0, 2**32 - 1, "a=ssrc-group ssrc", lineno) for f in fields[1:])
        media.ssrc_groups.append((semantics, ssrcs, lineno))
    elif name == "msid":
        fields = _fields(value, 1, "a=msid", lineno)
        if len(fields) > 2:
            raise _fail(lineno, "a=msid: expected '<stream id> [<track id>]'")
        media.msid = " ".join(_token(f, "a=msid id", lineno) for f in fields)
    elif name == "candidate":
        media.candidates.append(_parse_candidate(value, lineno))
    elif name in ("rtcp-mux", "rtcp-mux-only"):  # RFC 8858: -only implies rtcp-mux (GStreamer)
        media.rtcp_mux = True
    elif name == "bundle-only":
        media.bundle_only = True
    elif name == "extmap-allow-mixed":  # RFC 8285 allows it at media level too (Firefox, Pion)
        media.extmap_allow_mixed = True
    elif name == "rtcp-rsize":
        media.rtcp_rsize = True
    elif name == "rid":
        rid = _parse_rid(value, lineno)
        if len(media.rids) >= MAX_RIDS and rid.id not in media.rids:
            raise _fail(lineno, f"more than {MAX_RIDS} a=rid lines in one m-section")
        media.rids.setdefault(rid.id, rid)
    elif name == "simulcast":
        media.simulcast_send = _parse_simulcast(value, lineno)
    # Anything else (end-of-candidates, ice-options, rtcp, rtcp-xr, sctp-port, ...) is ignored.


def _parse_rid(value: str, lineno: int) -> Rid:
    fields = value.split(None, 2)
    if len(fields) < 2 or not _RID.fullmatch(fields[0]) or fields[1] not in ("send", "recv"):
        raise _fail(
            lineno, f"a=rid must be '<rid-id> send|recv [restrictions]' (RFC 8851), got {value[:60]!r}"
        )
    return Rid(fields[0], fields[1], fields[2] if len(fields) > 2 else "")


def _parse_simulcast(value: str, lineno: int) -> tuple[str, ...]:
    """RFC 8853 `send <list> [recv <list>]` (either order): the first alternative of each send entry,
    `~` (paused at first) or not. A recv list is for what the offerer receives: nothing we serve."""
    fields = value.split()
    directions = fields[0::2]
    if len(fields) not in (2, 4) or sorted(directions) not in (["send"], ["recv"], ["recv", "send"]):
        raise _fail(
            lineno, f"a=simulcast must be 'send <rid;...> [recv <rid;...>]' (RFC 8853), got {value[:60]!r}"
        )
    send: list[str] = []
    for direction, entries in zip(directions, fields[1::2], strict=True):
        for entry in entries.split(";"):
            first = entry.split(",")[0].removeprefix("~")
            if not _RID.fullmatch(first):
                raise _fail(lineno, f"a=simulcast: {entry[:40]!r} is not a rid-id")
            if direction == "send" and first not in send:
                send.append(first)
    if len(send) > MAX_RIDS:
        raise _fail(lineno, f"a=simulcast: more than {MAX_RIDS} layers")
    return tuple(send)


def _check_c_line(value: str, lineno: int) -> None:
    fields = _fields(value, 3, "c= line", lineno)
    if fields[0] != "IN" or fields[1] not in ("IP4", "IP6") or len(fields) != 3:
        raise _fail(lineno, f"c= line must be 'IN IP4|IP6 <address>', got {value[:60]!r}")
    _token(fields[2].split("/")[0], "c= address", lineno, _ADDRESS)


# --------------------------------------------------------------------------- validation


def _codecs(media: _Media) -> tuple[Codec, ...]:
    """Codecs in m= order; for a section the server serves, every reference must be consistent."""
    strict = media.usable
    pts: list[int] = []
    for fmt in media.formats:
        if not _DIGITS.fullmatch(fmt) or len(fmt) > 3 or int(fmt) > 127:
            if strict:
                raise _fail(media.lineno, f"payload type {fmt[:20]!r} out of range 0-127")
            continue
        pt = int(fmt)
        if pt in pts:
            if strict:
                raise _fail(media.lineno, f"payload type {pt} listed twice")
            continue
        pts.append(pt)
    if strict:
        for pt in pts:
            if 64 <= pt <= 95:
                # RFC 5761 section 4: these collide with RTCP packet types under rtcp-mux.
                raise _fail(media.lineno, f"payload type {pt} is not allowed with rtcp-mux")
            if pt not in media.rtpmap and pt not in STATIC_PAYLOAD_TYPES:
                raise _fail(media.lineno, f"payload type {pt} has no a=rtpmap")
        for pt, (_, _, _, lineno) in media.rtpmap.items():
            if pt not in pts:
                raise _fail(lineno, f"a=rtpmap for payload type {pt} not listed in the m= line")
        for pt, (_, lineno) in media.fmtp.items():
            if pt not in pts:
                raise _fail(lineno, f"a=fmtp for payload type {pt} not listed in the m= line")
        # a=rtcp-fb for a payload type not on the m= line is ignored, not refused: Firefox keeps them
        # after setCodecPreferences drops the codec (RFC 4585 gives them no meaning).
    codecs: list[Codec] = []
    for pt in pts:
        if pt not in media.rtpmap:
            continue
        name, clock, channels, lineno = media.rtpmap[pt]
        parameters = media.fmtp.get(pt, ((), 0))[0]
        feedback: list[str] = []
        for target, fb, _ in media.rtcp_fb:
            if target in (None, pt) and fb not in feedback:
                feedback.append(fb)
        codec = Codec(pt, name, clock, channels, parameters, tuple(feedback))
        if strict and name.lower() == "rtx":
            apt = codec.parameter("apt")
            if apt is None or not _DIGITS.fullmatch(apt) or len(apt) > 3 or int(apt) not in pts:
                raise _fail(
                    lineno,
                    f"rtx payload type {pt} needs apt= naming a payload type of the same section",
                )
            if int(apt) not in media.rtpmap:
                raise _fail(lineno, f"rtx payload type {pt} points to {apt}, which has no rtpmap")
        codecs.append(codec)
    return tuple(codecs)


def _check_ice(media: MediaSection, lineno: int) -> None:
    ufrag, pwd = media.ice_ufrag, media.ice_pwd
    if ufrag is None or pwd is None:
        raise _fail(lineno, f"m-section {media.index} has no a=ice-ufrag/a=ice-pwd")
    if not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.fullmatch(ufrag):
        raise _fail(lineno, "a=ice-ufrag must be 4-256 ICE characters (RFC 8839)")
    if not 22 <= len(pwd) <= 256 or not _ICE_CHARS.fullmatch(pwd):
        raise _fail(lineno, "a=ice-pwd must be 22-256 ICE characters (RFC 8839)")


def _freeze(media: _Media, session: _Scope) -> MediaSection:
    """The section as frozen data; bundle-only sections are completed later by `_share_transport`."""
    ssrc_groups = []
    for semantics, ssrcs, lineno in media.ssrc_groups:
        if media.usable and semantics == "FID" and len(ssrcs) != 2:
            raise _fail(lineno, "a=ssrc-group:FID needs exactly two SSRCs")
        ssrc_groups.append((semantics, ssrcs))
    return MediaSection(
        index=media.index,
        kind=media.kind,
        port=media.port,
        protocol=media.protocol,
        formats=media.formats,
        mid=media.mid,
        direction=media.direction or session.direction or "sendrecv",
        codecs=_codecs(media),
        header_extensions=tuple(media.extmaps),
        ssrcs=tuple(
            SsrcInfo(ssrc, attrs_.get("cname") or None, attrs_.get("msid") or None)
            for ssrc, attrs_ in media.ssrcs.items()
        ),
        ssrc_groups=tuple(ssrc_groups),
        msid=media.msid,
        rtcp_mux=media.rtcp_mux,
        rtcp_rsize=media.rtcp_rsize,
        rids=tuple(media.rids.values()),
        # Only rids the section declares for sending (RFC 8853 section 5.2: others are an error the
        # offerer cannot mean; we serve the rest rather than refuse the offer).
        simulcast_send=tuple(
            r for r in media.simulcast_send if r in media.rids and media.rids[r].direction == "send"
        ),
        bundle_only=media.bundle_only,
        usable=media.usable,
        ice_ufrag=media.ice_ufrag if media.ice_ufrag is not None else session.ice_ufrag,
        ice_pwd=media.ice_pwd if media.ice_pwd is not None else session.ice_pwd,
        fingerprints=tuple(media.fingerprints or session.fingerprints),
        setup=media.setup or session.setup,
        candidates=tuple(media.candidates),
    )


def parse_offer(text: str) -> Offer:
    """Parse and validate a client's offer; raises SdpError saying what is wrong."""
    lines = _split_lines(text)
    session = _Scope()
    media_builders: list[_Media] = []
    origin: str | None = None
    seen: set[str] = set()
    bundle: tuple[str, ...] | None = None
    bundle_lineno = 0
    allow_mixed = False

    for lineno, kind, value in lines[1:]:
        current = media_builders[-1] if media_builders else None
        if kind == "v":
            raise _fail(lineno, "a second v= line")
        if kind == "m":
            if len(media_builders) >= MAX_MEDIA:
                raise _fail(lineno, f"more than {MAX_MEDIA} m-sections")
            media_builders.append(_Media(len(media_builders), lineno, value))
            continue
        if kind == "c":
            _check_c_line(value, lineno)
            continue
        if kind != "a":
            if current is None:
                if kind in "ost" and kind in seen:
                    raise _fail(lineno, f"a second {kind}= line")
                seen.add(kind)
                if kind == "o":
                    origin = value
            elif kind in "ost":
                raise _fail(lineno, f"{kind}= is a session-level line")
            continue
        name, has_value, attr_value = value.partition(":")
        _token(name, "attribute name", lineno)
        if current is not None:
            _media_attribute(current, name, attr_value, lineno)
        elif _scope_attribute(session, name, attr_value, lineno):
            pass
        elif name == "group" and has_value:
            fields = _fields(attr_value, 1, "a=group", lineno)
            if fields[0] == "BUNDLE" and bundle is None:
                bundle = tuple(_token(f, "BUNDLE mid", lineno) for f in fields[1:])
                bundle_lineno = lineno
                if len(set(bundle)) != len(bundle):
                    raise _fail(lineno, "a mid appears twice in a=group:BUNDLE")
        elif name == "extmap-allow-mixed":
            allow_mixed = True
        elif name == "ice-lite":
            raise _fail(
                lineno,
                "the offerer is ICE-lite; the server is ICE-lite too, so "
                "nobody would send connectivity checks",
            )

    if origin is None or "s" not in seen or "t" not in seen:
        raise SdpError("the session part needs o=, s= and t= lines")
    origin_fields = origin.split(" ")
    if (
        len(origin_fields) != 6
        or not _DIGITS.fullmatch(origin_fields[1])
        or len(origin_fields[1]) > 64
        or origin_fields[3] != "IN"
    ):
        raise SdpError("o= line must be '<user> <numeric session id> <version> IN <type> <addr>'")
    session_id = origin_fields[1]

    for builder in media_builders:
        builder.in_bundle = builder.mid is not None and builder.mid in (bundle or ())
        allow_mixed = allow_mixed or builder.extmap_allow_mixed
    media = tuple(_freeze(m, session) for m in media_builders)
    return _validate(session_id, media, media_builders, bundle or (), bundle_lineno, allow_mixed)


NO_BUNDLE_ADVICE = (
    "several audio/video sections need one a=group:BUNDLE with all of them (the server serves one "
    "ICE/DTLS transport per session): set the peer connection's bundle policy to max-bundle "
    "(RTCPeerConnection bundlePolicy: 'max-bundle'; GStreamer webrtcbin: bundle-policy=max-bundle)"
)


def _check_transport(section: MediaSection, lineno: int) -> None:
    """The attributes of a section that carries its own ICE/DTLS transport."""
    _check_ice(section, lineno)
    if not section.fingerprints:
        raise _fail(lineno, f"m-section {section.index} has no usable a=fingerprint (sha-1/256/384/512)")
    if section.setup == "holdconn":
        raise _fail(
            lineno,
            "a=setup:holdconn is not allowed in an offer: offer actpass, active or passive (RFC 5763)",
        )
    if not section.rtcp_mux:
        raise _fail(lineno, f"m-section {section.index} lacks a=rtcp-mux")


def _share_transport(section: MediaSection, transport: MediaSection) -> MediaSection:
    """RFC 8843 section 7.1.3 / JSEP: a bundled section may leave out what the BUNDLE-tagged section
    says about the transport (bundle-only sections often do); it shares that transport."""
    return attrs.evolve(
        section,
        ice_ufrag=section.ice_ufrag if section.ice_ufrag is not None else transport.ice_ufrag,
        ice_pwd=section.ice_pwd if section.ice_pwd is not None else transport.ice_pwd,
        fingerprints=section.fingerprints or transport.fingerprints,
        setup=section.setup or transport.setup,
        rtcp_mux=section.rtcp_mux or transport.rtcp_mux,
    )


def _validate(
    session_id: str,
    media: tuple[MediaSection, ...],
    builders: list[_Media],
    bundle: tuple[str, ...],
    bundle_lineno: int,
    allow_mixed: bool,
) -> Offer:
    mids = [m.mid for m in media if m.mid is not None]
    if len(set(mids)) != len(mids):
        raise SdpError("two m-sections share a mid")
    for mid in bundle:
        if mid not in mids:
            raise _fail(bundle_lineno, f"a=group:BUNDLE names mid {mid!r}, which no m-section has")
    usable = [m for m in media if m.usable]
    if not usable:
        raise SdpError("no usable audio or video section (audio/video over UDP/TLS/RTP/SAVPF)")

    if bundle:
        for section in usable:
            if section.mid is None:
                raise _fail(
                    builders[section.index].lineno,
                    f"m-section {section.index} needs a=mid when BUNDLE is used",
                )
    if len(usable) > 1:
        if not bundle:
            raise SdpError(NO_BUNDLE_ADVICE)
        missing = [m.mid or str(m.index) for m in usable if m.mid not in bundle]
        if missing:
            raise _fail(bundle_lineno, f"a=group:BUNDLE lacks the usable sections {missing}")

    by_mid = {m.mid: m for m in media if m.mid is not None}
    bundled = [by_mid[mid] for mid in bundle if by_mid[mid].usable]
    if bundled:
        # The offerer's BUNDLE tag: the first section of the group that is not bundle-only.
        transport = next((m for m in bundled if not m.bundle_only), None)
        if transport is None:
            raise _fail(
                bundle_lineno,
                "every section of a=group:BUNDLE is bundle-only: the first must carry the transport "
                "(a port and its ICE/DTLS attributes)",
            )
    else:
        transport = usable[0]
    _check_transport(transport, builders[transport.index].lineno)
    shared = {m.index: _share_transport(m, transport) for m in bundled}
    media = tuple(shared.get(m.index, m) for m in media)
    for section in bundled:
        section = shared[section.index]
        if (section.ice_ufrag, section.ice_pwd) != (transport.ice_ufrag, transport.ice_pwd):
            raise _fail(
                builders[section.index].lineno,
                "bundled m-sections disagree on a=ice-ufrag/a=ice-pwd",
            )
        _check_transport(section, builders[section.index].lineno)

    # The offerer gathers on the first bundled section that has candidates (Chromium: only the
    # first m-section; aiortc: every one, on per-section ports it drops once bundled).
    candidates: tuple[Candidate, ...] = ()
    for section in [by_mid[mid] for mid in bundle] if bundled else [transport]:
        if section.candidates:
            candidates = tuple(c for c in section.candidates if c.transport == "udp")
            break

    assert transport.ice_ufrag is not None and transport.ice_pwd is not None
    return Offer(
        session_id=session_id,
        media=media,
        bundle=bundle,
        ice_ufrag=transport.ice_ufrag,
        ice_pwd=transport.ice_pwd,
        fingerprints=transport.fingerprints,
        setup=transport.setup or "actpass",
        candidates=candidates,
        extmap_allow_mixed=allow_mixed,
    )
