"""The compiled AES-GCM sender (trio_sfu/transport/_srtp_gcm.c) against libsrtp, its oracle.

It must give libsrtp's bytes for every packet libsrtp protects and refuse every packet libsrtp refuses,
whatever the order of sequence numbers (rollovers, jumps, repeats, packets older than the window)."""

from __future__ import annotations

import os
import random
import shutil
import struct
from typing import Any

import pylibsrtp
import pytest

from trio_sfu.transport import srtp
from trio_sfu.transport.compiled import compiled_wanted
from trio_sfu.transport.dtls import SrtpKeys, SrtpProfile
from trio_sfu.transport.srtp import RETRANSMIT_WINDOW, SrtpSession, session_key_and_salt

needs_compiled = pytest.mark.skipif(not srtp.GCM_COMPILED, reason="the AES-GCM sender is not compiled here")


def libsrtp_sender(master: bytes) -> pylibsrtp.Session:
    """What SrtpSession used for outgoing RTP before: libsrtp with the same policy."""
    policy = pylibsrtp.Policy(
        key=master,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    )
    policy.allow_repeat_tx = True
    policy.window_size = RETRANSMIT_WINDOW
    return pylibsrtp.Session(policy=policy)


def gcm_session(master: bytes) -> SrtpSession:
    return SrtpSession(SrtpKeys(SrtpProfile.AEAD_AES_128_GCM, local_key=master, remote_key=os.urandom(28)))


def packet(rng: random.Random, sequence: int, ssrc: int) -> bytes:
    """RTP with and without CSRCs and a one-byte extension block, payloads from empty to 1100 bytes."""
    csrcs = rng.randrange(3)
    extension = rng.random() < 0.5
    first = 0x80 | (0x10 if extension else 0) | csrcs
    header = struct.pack("!BBHII", first, 96 | (0x80 if rng.random() < 0.2 else 0), sequence, 1234, ssrc)
    header += rng.randbytes(4 * csrcs)
    if extension:
        header += b"\xbe\xde\x00\x02" + rng.randbytes(8)
    return header + rng.randbytes(rng.choice((0, 1, 15, 16, 17, 200, 1100)))


def both(reference: pylibsrtp.Session, ours: SrtpSession, data: bytes) -> tuple[Any, Any]:
    try:
        expected: Any = bytes(reference.protect(data))
    except (pylibsrtp.Error, ValueError) as error:
        expected = ("refused", type(error).__name__)
    try:
        got: Any = ours.protect_rtp(data)
    except ValueError:
        got = ("refused", "any")
    return expected, got


@needs_compiled
def test_same_bytes_as_libsrtp_in_any_order_of_sequence_numbers() -> None:
    rng = random.Random(7714)
    master = rng.randbytes(28)
    reference, ours = libsrtp_sender(master), gcm_session(master)
    newest: dict[int, int] = {}
    refused = protected = 0
    for _ in range(30_000):
        ssrc = rng.choice((1, 0xCAFEBABE, 0xFFFFFFFF))
        base = newest.setdefault(ssrc, rng.randrange(65536))
        draw = rng.random()
        if draw < 0.85:
            sequence = (base + 1) & 0xFFFF  # in order, across rollovers
        elif draw < 0.92:
            sequence = (base - rng.randrange(2 * RETRANSMIT_WINDOW)) & 0xFFFF  # repeats, old, too old
        elif draw < 0.97:
            sequence = (base + rng.randrange(1, 40_000)) & 0xFFFF  # jumps, some read as backwards
        else:
            sequence = rng.randrange(65536)
        if 0 < (sequence - base) & 0xFFFF < 0x8000:
            newest[ssrc] = sequence
        expected, got = both(reference, ours, packet(rng, sequence, ssrc))
        if isinstance(expected, tuple):
            assert isinstance(got, tuple), "libsrtp refused a packet the sender protected"
            refused += 1
        else:
            assert got == expected
            protected += 1
    assert protected > 25_000 and refused > 300  # both outcomes were exercised
    assert ours.counters["rtp_protect_failed"] == refused


@needs_compiled
def test_refuses_what_libsrtp_refuses() -> None:
    master = os.urandom(28)
    reference, ours = libsrtp_sender(master), gcm_session(master)
    valid = struct.pack("!BBHII", 0x80, 96, 1, 1, 1) + b"x" * 20
    malformed = [
        b"",
        b"\x80" * 11,  # shorter than a header
        b"\x8f" + valid[1:40],  # 15 CSRCs announced, 40 bytes
        b"\x90" + valid[1:12] + b"\xbe\xde",  # an extension without its header
        b"\x90" + valid[1:12] + b"\xbe\xde\x00\x09" + b"x" * 8,  # an extension longer than the packet
        valid + b"x" * (1500 - 144 - len(valid) + 1),  # longer than the buffer
    ]
    for data in malformed:
        expected, got = both(reference, ours, data)
        assert isinstance(expected, tuple) and isinstance(got, tuple), data[:16].hex()
    largest = valid + b"x" * (1500 - 144 - len(valid))
    assert both(reference, ours, largest)[0] == both(reference, ours, largest)[1]


@needs_compiled
def test_protect_as_writes_the_fields_then_protects() -> None:
    master = os.urandom(28)
    reference, ours = libsrtp_sender(master), gcm_session(master)
    template = struct.pack("!BBHII", 0x80, 96, 9, 9, 9) + os.urandom(900)
    for sequence in (65534, 65535, 0, 1):
        timestamp = (3000 * sequence) & 0xFFFFFFFF
        expected = struct.pack("!BBHII", 0x80, 96, sequence, timestamp, 0xCAFEBABE) + template[12:]
        assert bytes(ours.protect_rtp_as(template, sequence, timestamp, 0xCAFEBABE)) == bytes(
            reference.protect(expected)
        )
    with pytest.raises(ValueError):
        ours.protect_rtp_as(b"\x80" * 11, 1, 1, 1)
    with pytest.raises(OverflowError):
        ours.protect_rtp_as(template, 1 << 16, 1, 1)


def test_session_key_and_salt_is_rfc_3711_key_derivation() -> None:
    """RFC 3711 appendix B.3's test vectors (AES-CM PRF, 14-byte master salt)."""
    master_key = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    master_salt = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    key, salt = session_key_and_salt(master_key + master_salt, salt_length=14)
    assert key == bytes.fromhex("C61E7A93744F39EE10734AFE3FF7A087")
    assert salt == bytes.fromhex("30CBBC08863D8C85D49DB34A9AE1")


@needs_compiled
def test_a_sender_needs_a_16_byte_key_and_a_12_byte_salt() -> None:
    for key, salt in ((b"k" * 15, b"s" * 12), (b"k" * 16, b"s" * 14)):
        with pytest.raises(ValueError):
            srtp.GcmSender(key, salt)
    unkeyed = srtp.GcmSender.__new__(srtp.GcmSender)  # __init__ never ran: refuses, does not crash
    with pytest.raises(ValueError):
        unkeyed.protect(struct.pack("!BBHII", 0x80, 96, 1, 1, 1))


def test_the_sender_is_built_where_a_c_compiler_exists() -> None:
    """As the fan-out's loop: CI with a compiler must not silently protect with libsrtp."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) here: libsrtp protects everything")
    if compiled_wanted():
        assert srtp.GCM_COMPILED, "a C compiler exists but _srtp_gcm does not import: run `pip install -e .`"
