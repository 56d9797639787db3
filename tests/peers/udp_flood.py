"""Hostile datagrams at a fixed rate from many source ports, as a separate process.

Usage: python tests/peers/udp_flood.py HOST PORT COUNT RATE SEED UFRAG
Prints one JSON line with what it sent by kind. Every datagram is one of: random bytes, truncated or
mutated STUN, STUN that names a real session's ufrag with the wrong password, DTLS-looking records,
RTP/RTCP-looking packets with junk payloads, or an empty datagram.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import time

from aioice import stun

SOURCES = 64


def stun_request(username: str, password: bytes) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(password)
    message.add_fingerprint()
    return bytes(message)


def main() -> None:
    host, port, count, rate, seed, ufrag = sys.argv[1:7]
    target = (host, int(port))
    rng = random.Random(int(seed))
    sockets = []
    for _ in range(SOURCES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    valid_stun = stun_request(f"{ufrag}:peer", b"wrong-password-0123456789")
    kinds = [
        "random", "stun_truncated", "stun_mutated", "stun_wrong_password", "dtls", "rtp", "rtcp", "empty"
    ]
    sent = dict.fromkeys(kinds, 0)
    total, interval = int(count), 1.0 / float(rate)
    start = time.monotonic()
    for index in range(total):
        kind = kinds[index % len(kinds)]
        if kind == "random":
            data = rng.randbytes(rng.randint(1, 1200))
        elif kind == "stun_truncated":
            data = valid_stun[: rng.randint(1, len(valid_stun) - 1)]
        elif kind == "stun_mutated":
            mutable = bytearray(valid_stun)
            mutable[rng.randrange(len(mutable))] ^= 1 << rng.randrange(8)
            data = bytes(mutable)
        elif kind == "stun_wrong_password":
            data = stun_request(f"{ufrag}:peer{index % 7}", os.urandom(16))
        elif kind == "dtls":
            data = bytes([rng.randint(20, 63), 0xFE, 0xFD]) + rng.randbytes(rng.randint(10, 300))
        elif kind == "rtp":
            data = bytes([0x80, rng.choice([96, 97, 111, 0xE0])]) + rng.randbytes(rng.randint(12, 1200))
        elif kind == "rtcp":
            header = bytes([0x80 | rng.randint(0, 31), rng.randint(192, 223)])
            data = header + rng.randbytes(rng.randint(2, 100))
        else:
            data = b""
        with contextlib.suppress(OSError):  # a full send buffer: the flood goes on
            sockets[index % SOURCES].sendto(data, target)
        sent[kind] += 1
        delay = start + (index + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 2)}))


if __name__ == "__main__":
    main()
