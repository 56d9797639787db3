"""RTCP packets as frozen data: parse and serialize (sans-IO).

RFC 3550 (SR, RR, SDES, BYE), RFC 4585 (generic NACK, PLI), RFC 5104 (FIR), draft-alvestrand-rmcat-remb
(REMB) and draft-holmer-rmcat-transport-wide-cc-extensions-01 (transport-cc). Anything else is kept as
`Unknown` so a compound packet still parses. Parsing reads untrusted datagrams: every malformation
raises `RtcpError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

RTCP_VERSION = 2
PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_RTPFB = 205
PT_PSFB = 206
FMT_NACK = 1
FMT_TRANSPORT_CC = 15
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15
SDES_CNAME = 1
MAX_REPORT_BLOCKS = 31  # the 5-bit count of SR/RR report blocks and SDES chunks
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
TWCC_DELTA_US = 250
TWCC_REFERENCE_US = 64_000
_REMB_MAX_MANTISSA = 0x3FFFF
_REMB_MAX_EXPONENT = 63

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc + NTP + RTP ts + packet count + octet count
_REPORT = struct.Struct("!IB3sIIII")
_TWCC_HEADER = struct.Struct("!IIHHI")  # sender, media, base sequence, status count, ref time | fb count
_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")


class RtcpError(ValueError):
    """A malformed RTCP packet (or a value that cannot be serialized)."""


@attrs.frozen(slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    packets_lost: int  # cumulative, signed 24-bit
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int


@attrs.frozen(slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@attrs.frozen(slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@attrs.frozen(slots=True)
class Sdes:
    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]  # (ssrc, ((item type, value), ...))


@attrs.frozen(slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: bytes | None = None


@attrs.frozen(slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@attrs.frozen(slots=True)
class Fir:
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


@attrs.frozen(slots=True)
class Nack:
    """Generic NACK; `lost` lists sequence numbers in order (PID/BLP pairs are an encoding detail)."""

    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]


@attrs.frozen(slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int  # bits per second; encoding keeps 18 significant bits, rounding down
    ssrcs: tuple[int, ...] = ()


@attrs.frozen(slots=True)
class TransportCc:
    """Transport-wide feedback: every sequence number from `base_sequence`, with its receive delta in
    microseconds from the previous received packet (the first from `reference_time` * 64 ms), or None
    when it was not received."""

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int  # 24 bits, in 64 ms units
    feedback_count: int
    packets: tuple[tuple[int, int | None], ...]


@attrs.frozen(slots=True)
class Unknown:
    packet_type: int
    fmt: int
    body: bytes  # after the 4-byte header, padding removed


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | Pli | Fir | Nack | Remb | TransportCc | Unknown


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point from 1900) of a Unix time."""
    return round((unix_time + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------- parse


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram; RtcpError if any of it is malformed."""
    if not data:
        raise RtcpError("empty RTCP datagram")
    packets: list[RtcpPacket] = []
    pos = 0
    size = len(data)
    while pos < size:
        if pos + 4 > size:
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != RTCP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6}")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpError("RTCP length field beyond the datagram")
        body = data[pos + 4 : end]
        if first & 0x20:
            if not body or body[-1] == 0 or body[-1] > len(body):
                raise RtcpError("bad RTCP padding")
            body = body[: -body[-1]]
        packets.append(_parse_one(packet_type, first & 0x1F, bytes(body)))
        pos = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    try:
        if packet_type == PT_SR:
            return _parse_sr(count, body)
        if packet_type == PT_RR:
            return _parse_rr(count, body)
        if packet_type == PT_SDES:
            return _parse_sdes(count, body)
        if packet_type == PT_BYE:
            return _parse_bye(count, body)
        if packet_type == PT_RTPFB:
            if count == FMT_NACK:
                return _parse_nack(body)
            if count == FMT_TRANSPORT_CC:
                return _parse_transport_cc(body)
        elif packet_type == PT_PSFB:
            if count == FMT_PLI:
                return _parse_pli(body)
            if count == FMT_FIR:
                return _parse_fir(body)
            if count == FMT_AFB and body[8:12] == b"REMB":
                return _parse_remb(body)
    except (struct.error, IndexError) as exc:  # belt and braces: lengths are checked before reading
        raise RtcpError(f"truncated RTCP packet type {packet_type}") from exc
    return Unknown(packet_type, count, body)


def _parse_reports(count: int, body: bytes, pos: int) -> tuple[ReportBlock, ...]:
    if len(body) < pos + 24 * count:
        raise RtcpError("RTCP report blocks truncated")
    reports = []
    for _ in range(count):
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT.unpack_from(body, pos)
        packets_lost = int.from_bytes(lost, "big", signed=True)
        reports.append(ReportBlock(ssrc, fraction, packets_lost, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(reports)


def _parse_sr(count: int, body: bytes) -> SenderReport:
    if len(body) < 24:
        raise RtcpError("sender report truncated")
    ssrc, ntp, rtp, packet_count, octet_count = _SENDER_INFO.unpack_from(body)
    # Profile-specific extensions after the report blocks are allowed and ignored.
    return SenderReport(ssrc, ntp, rtp, packet_count, octet_count, _parse_reports(count, body, 24))


def _parse_rr(count: int, body: bytes) -> ReceiverReport:
    if len(body) < 4:
        raise RtcpError("receiver report truncated")
    return ReceiverReport(_U32.unpack_from(body)[0], _parse_reports(count, body, 4))


def _parse_sdes(count: int, body: bytes) -> Sdes:
    chunks = []
    pos = 0
    size = len(body)
    for _ in range(count):
        if pos + 4 > size:
            raise RtcpError("SDES chunk truncated")
        ssrc = _U32.unpack_from(body, pos)[0]
        pos += 4
        items = []
        while True:
            if pos >= size:
                raise RtcpError("SDES items not terminated")
            item_type = body[pos]
            if item_type == 0:
                pos = (pos + 4) & ~3  # the null octet, then padding to the next 32-bit boundary
                if pos > size:
                    raise RtcpError("SDES chunk padding truncated")
                break
            if pos + 2 > size or pos + 2 + body[pos + 1] > size:
                raise RtcpError("SDES item truncated")
            length = body[pos + 1]
            items.append((item_type, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append((ssrc, tuple(items)))
    return Sdes(tuple(chunks))


def _parse_bye(count: int, body: bytes) -> Bye:
    end = 4 * count
    if len(body) < end:
        raise RtcpError("BYE truncated")
    ssrcs = struct.unpack_from(f"!{count}I", body)
    reason = None
    if len(body) > end:
        length = body[end]
        if end + 1 + length > len(body):
            raise RtcpError("BYE reason truncated")
        reason = body[end + 1 : end + 1 + length]
    return Bye(tuple(ssrcs), reason)


def _parse_nack(body: bytes) -> Nack:
    if len(body) < 8 or len(body) % 4:
        raise RtcpError("generic NACK has a bad length")
    sender, media = _TWO_U32.unpack_from(body)
    lost: list[int] = []
    for pos in range(8, len(body), 4):
        pid, blp = struct.unpack_from("!HH", body, pos)
        lost.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return Nack(sender, media, tuple(lost))


def _parse_pli(body: bytes) -> Pli:
    if len(body) < 8:
        raise RtcpError("PLI truncated")
    return Pli(*_TWO_U32.unpack_from(body))


def _parse_fir(body: bytes) -> Fir:
    if len(body) < 8 or len(body) % 8:
        raise RtcpError("FIR has a bad length")
    sender = _U32.unpack_from(body)[0]
    entries = tuple((_U32.unpack_from(body, pos)[0], body[pos + 4]) for pos in range(8, len(body), 8))
    return Fir(sender, entries)


def _parse_remb(body: bytes) -> Remb:
    if len(body) < 16:
        raise RtcpError("REMB truncated")
    sender = _U32.unpack_from(body)[0]
    count = body[12]
    exponent = body[13] >> 2
    mantissa = ((body[13] & 0x03) << 16) | (body[14] << 8) | body[15]
    if len(body) < 16 + 4 * count:
        raise RtcpError("REMB SSRC list truncated")
    ssrcs = struct.unpack_from(f"!{count}I", body, 16)
    return Remb(sender, mantissa << exponent, tuple(ssrcs))


def _parse_transport_cc(body: bytes) -> TransportCc:
    if len(body) < 16:
        raise RtcpError("transport-cc truncated")
    sender, media, base, status_count, ref_word = _TWCC_HEADER.unpack_from(body)
    symbols: list[int] = []
    pos = 16
    size = len(body)
    while len(symbols) < status_count:
        if pos + 2 > size:
            raise RtcpError("transport-cc chunks truncated")
        chunk = (body[pos] << 8) | body[pos + 1]
        pos += 2
        if chunk & 0x8000 == 0:  # run length
            symbols.extend([(chunk >> 13) & 0x03] * min(chunk & 0x1FFF, status_count - len(symbols)))
        elif chunk & 0x4000 == 0:  # status vector, fourteen 1-bit symbols
            symbols.extend((chunk >> shift) & 0x01 for shift in range(13, -1, -1))
        else:  # status vector, seven 2-bit symbols
            symbols.extend((chunk >> shift) & 0x03 for shift in range(12, -1, -2))
    del symbols[status_count:]
    packets: list[tuple[int, int | None]] = []
    for index, symbol in enumerate(symbols):
        sequence = (base + index) & 0xFFFF
        if symbol == 0:
            packets.append((sequence, None))
        elif symbol == 1:
            if pos >= size:
                raise RtcpError("transport-cc deltas truncated")
            packets.append((sequence, body[pos] * TWCC_DELTA_US))
            pos += 1
        elif symbol == 2:
            if pos + 2 > size:
                raise RtcpError("transport-cc deltas truncated")
            packets.append((sequence, _I16.unpack_from(body, pos)[0] * TWCC_DELTA_US))
            pos += 2
        else:
            raise RtcpError("transport-cc reserved status symbol")
    return TransportCc(sender, media, base, ref_word >> 8, ref_word & 0xFF, tuple(packets))


# ------------------------------------------------------------------------------------------ serialize


def serialize(packet: RtcpPacket) -> bytes:
    """One RTCP packet on the wire; RtcpError if a field does not fit."""
    try:
        return _serialize(packet)
    except (struct.error, OverflowError) as exc:
        raise RtcpError(f"cannot serialize {packet!r}: {exc}") from exc


def serialize_compound(packets: Iterable[RtcpPacket]) -> bytes:
    return b"".join(serialize(packet) for packet in packets)


def _frame(packet_type: int, count: int, body: bytes) -> bytes:
    """Header + body; a body that is not 32-bit aligned gets RTCP padding (P bit, count in last octet)."""
    if not 0 <= count <= 31:
        raise RtcpError(f"RTCP count/fmt out of range: {count}")
    padding = -len(body) % 4
    first = 0x80 | count
    if padding:
        first |= 0x20
        body = body + bytes(padding - 1) + bytes((padding,))
    words = len(body) // 4
    if words > 0xFFFF:
        raise RtcpError("RTCP packet too long")
    return _HEADER.pack(first, packet_type, words) + body


def _serialize_reports(reports: tuple[ReportBlock, ...]) -> bytes:
    if len(reports) > 31:
        raise RtcpError("more than 31 report blocks")
    out = bytearray()
    for r in reports:
        if not -(1 << 23) <= r.packets_lost < (1 << 23):
            raise RtcpError(f"packets_lost out of range: {r.packets_lost}")
        lost = r.packets_lost.to_bytes(3, "big", signed=True)
        out += _REPORT.pack(
            r.ssrc, r.fraction_lost, lost, r.highest_sequence, r.jitter, r.last_sr, r.delay_since_last_sr
        )
    return bytes(out)


def _serialize(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport):
        body = _SENDER_INFO.pack(
            packet.ssrc, packet.ntp_timestamp, packet.rtp_timestamp, packet.packet_count, packet.octet_count
        )
        return _frame(PT_SR, len(packet.reports), body + _serialize_reports(packet.reports))
    if isinstance(packet, ReceiverReport):
        body = _U32.pack(packet.ssrc) + _serialize_reports(packet.reports)
        return _frame(PT_RR, len(packet.reports), body)
    if isinstance(packet, Sdes):
        return _frame(PT_SDES, len(packet.chunks), _sdes_body(packet))
    if isinstance(packet, Bye):
        body = struct.pack(f"!{len(packet.ssrcs)}I", *packet.ssrcs)
        if packet.reason is not None:
            if len(packet.reason) > 255:
                raise RtcpError("BYE reason longer than 255 octets")
            reason = bytes((len(packet.reason),)) + packet.reason
            body += reason + bytes(-len(reason) % 4)
        return _frame(PT_BYE, len(packet.ssrcs), body)
    if isinstance(packet, Pli):
        return _frame(PT_PSFB, FMT_PLI, _TWO_U32.pack(packet.sender_ssrc, packet.media_ssrc))
    if isinstance(packet, Fir):
        body = _TWO_U32.pack(packet.sender_ssrc, 0)
        body += b"".join(struct.pack("!IB3x", ssrc, seq) for ssrc, seq in packet.entries)
        return _frame(PT_PSFB, FMT_FIR, body)
    if isinstance(packet, Nack):
        body = _TWO_U32.pack(packet.sender_ssrc, packet.media_ssrc) + _nack_fci(packet)
        return _frame(PT_RTPFB, FMT_NACK, body)
    if isinstance(packet, Remb):
        return _frame(PT_PSFB, FMT_AFB, _remb_body(packet))
    if isinstance(packet, TransportCc):
        return _frame(PT_RTPFB, FMT_TRANSPORT_CC, _transport_cc_body(packet))
    return _frame(packet.packet_type, packet.fmt, packet.body)


def _sdes_body(packet: Sdes) -> bytes:
    out = bytearray()
    for ssrc, items in packet.chunks:
        out += _U32.pack(ssrc)
        for item_type, value in items:
            if not 1 <= item_type <= 255 or len(value) > 255:
                raise RtcpError(f"bad SDES item {item_type}")
            out.append(item_type)
            out.append(len(value))
            out += value
        out += bytes(4 - len(out) % 4)  # the terminating null, then padding to 32 bits
    return bytes(out)


def _nack_fci(packet: Nack) -> bytes:
    """Pack sequence numbers into PID/BLP pairs: each later number within 16 of the PID sets a bit."""
    out = bytearray()
    pid = -1
    blp = 0
    for sequence in packet.lost:
        if not 0 <= sequence <= 0xFFFF:
            raise RtcpError(f"NACK sequence number out of range: {sequence}")
        if pid >= 0:
            distance = (sequence - pid - 1) & 0xFFFF
            if distance < 16:
                blp |= 1 << distance
                continue
            out += struct.pack("!HH", pid, blp)
        pid = sequence
        blp = 0
    if pid >= 0:
        out += struct.pack("!HH", pid, blp)
    return bytes(out)


def remb_encode(bitrate: int) -> tuple[int, int]:
    """(exponent, mantissa) with mantissa << exponent <= bitrate: a receiver must not be told more."""
    if bitrate < 0:
        raise RtcpError(f"negative REMB bitrate: {bitrate}")
    exponent = max(0, bitrate.bit_length() - 18)
    if exponent > _REMB_MAX_EXPONENT:
        return _REMB_MAX_EXPONENT, _REMB_MAX_MANTISSA
    return exponent, bitrate >> exponent


def _remb_body(packet: Remb) -> bytes:
    if len(packet.ssrcs) > 255:
        raise RtcpError("REMB with more than 255 SSRCs")
    exponent, mantissa = remb_encode(packet.bitrate)
    body = _TWO_U32.pack(packet.sender_ssrc, 0) + b"REMB"
    body += bytes((len(packet.ssrcs), (exponent << 2) | (mantissa >> 16)))
    body += _U16.pack(mantissa & 0xFFFF)
    return body + struct.pack(f"!{len(packet.ssrcs)}I", *packet.ssrcs)


def _twcc_symbols(packet: TransportCc) -> tuple[list[int], bytearray]:
    """Status symbols and the receive-delta bytes (250 µs units, 1 byte when 0..255 else 2 signed)."""
    symbols: list[int] = []
    deltas = bytearray()
    for _sequence, delta_us in packet.packets:
        if delta_us is None:
            symbols.append(0)
            continue
        ticks = (delta_us + TWCC_DELTA_US // 2) // TWCC_DELTA_US
        if 0 <= ticks <= 0xFF:
            symbols.append(1)
            deltas.append(ticks)
        elif -0x8000 <= ticks <= 0x7FFF:
            symbols.append(2)
            deltas += _I16.pack(ticks)
        else:
            raise RtcpError(f"transport-cc delta does not fit 16 bits: {delta_us} µs")
    return symbols, deltas


def _twcc_chunks(symbols: list[int]) -> bytearray:
    """A compact chunk list: run length for long runs, else the densest status vector that fits."""
    out = bytearray()
    count = len(symbols)
    i = 0
    while i < count:
        symbol = symbols[i]
        run = 1
        while i + run < count and symbols[i + run] == symbol and run < 0x1FFF:
            run += 1
        window = symbols[i : i + 14]
        if run >= 14 or (run == count - i and run > 7):
            out += _U16.pack((symbol << 13) | run)
            i += run
        elif max(window) <= 1:
            chunk = 0x8000
            for index, value in enumerate(window):
                chunk |= value << (13 - index)
            out += _U16.pack(chunk)
            i += len(window)
        elif run >= 7:
            out += _U16.pack((symbol << 13) | run)
            i += run
        else:
            chunk = 0xC000
            for index, value in enumerate(symbols[i : i + 7]):
                chunk |= value << (12 - 2 * index)
            out += _U16.pack(chunk)
            i += 7
    return out


def _transport_cc_body(packet: TransportCc) -> bytes:
    if len(packet.packets) > 0xFFFF:
        raise RtcpError("transport-cc reports more than 65535 packets")
    if not 0 <= packet.reference_time <= 0xFFFFFF or not 0 <= packet.feedback_count <= 0xFF:
        raise RtcpError("transport-cc reference time or feedback count out of range")
    symbols, deltas = _twcc_symbols(packet)
    header = _TWCC_HEADER.pack(
        packet.sender_ssrc,
        packet.media_ssrc,
        packet.base_sequence,
        len(packet.packets),
        (packet.reference_time << 8) | packet.feedback_count,
    )
    return header + _twcc_chunks(symbols) + deltas
