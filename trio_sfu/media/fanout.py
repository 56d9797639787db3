"""The fan-out loop: one packet to every player of a track, compiled where the extension was built.

`fan_out(consumers, packet, header, now)` means `for consumer in consumers: consumer.forward(...)`.
trio_sfu/media/_fastpath.c does the same in one call, and sends a player's packet itself (number,
write its header fields, protect with libsrtp, send: many players in one sendmmsg through the shared
socket, or on the player's connected socket) while that player is in the steady case, which is nearly
every packet; for anything else it calls the player's own `forward`.

The state both paths share lives in small types, defined here in Python and there in C with the
same fields: `Lane` (a rewriter's numbering; Rewriter's base), `Outlet` (a consumer's gate, SSRC,
sent-sequence map and VP8 temporal-layer state; Consumer's base), `PictureState` (a simulcast VP8
player's picture numbering; Vp8Pictures' base) and `Wire` (a player's SRTP context and connected
socket, which the server layer keeps current). The compiled ones are used unless the extension could
not be built (no C compiler at install) or TRIO_SFU_PURE_PYTHON=1; `COMPILED` says which.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from trio_sfu.transport.compiled import PURE_PYTHON_ENV, compiled_wanted
from trio_sfu.wire.rtp import RtpHeader

if TYPE_CHECKING:
    from trio_sfu.media.rewriter import HeaderMap, Rewriter
    from trio_sfu.media.totals import Totals
    from trio_sfu.media.vp8_pictures import Vp8Pictures

__all__ = ["COMPILED", "PURE_PYTHON_ENV", "Lane", "Outlet", "PictureState", "Wire", "fan_out"]

SEQUENCE_MAP = 1024  # output sequence -> input sequence of recently sent packets, for NACKs


class Forwarder(Protocol):
    def forward(self, packet: bytes, header: RtpHeader, now: float) -> None: ...


class Wire:
    """A player's SRTP context and its own connected UDP socket, for the compiled path only (here,
    where every packet takes the Python path, it is kept but never sent on)."""

    __slots__ = ("_keep", "attached", "fd", "protect_failed", "send_errors", "shared_fd")

    def __init__(self) -> None:
        self.fd = -1
        self.shared_fd = -1
        self.attached = False
        self.send_errors = 0
        self.protect_failed = 0
        self._keep: object = None

    def attach(self, context: int, protect: int, owner: object) -> None:
        """Protect with libsrtp context `context` (an address) through `protect` (srtp_protect's);
        `owner` keeps the context alive while it is attached."""
        self._keep, self.attached = owner, True

    def share(self, shared_fd: int) -> None:
        """Send the compiled fan-out's packets to `fd`'s peer through `shared_fd`, the unconnected
        socket on the same local address, many players in one sendmmsg; `fd` still sends what that
        cannot. Setting `fd` again undoes it (in C)."""
        self.shared_fd = shared_fd

    def detach(self) -> None:
        self.fd, self.shared_fd, self._keep, self.attached = -1, -1, None, False


class Lane:
    """A rewriter's numbering state (see Rewriter)."""

    __slots__ = (
        "_drops",
        "_input_ssrc",
        "_max_back",
        "_max_input",
        "_muted",
        "_needs_sync",
        "_pt_map",
        "_seq_offset",
        "_ts_offset",
        "header_map",
        "last_sent_at",
        "last_sequence",
        "last_timestamp",
        "octets",
        "packets",
    )
    _drops: list[int]
    _input_ssrc: int
    _max_back: int
    _max_input: int
    _muted: bool
    _needs_sync: bool
    _pt_map: list[int]
    _seq_offset: int
    _ts_offset: int
    header_map: HeaderMap
    last_sent_at: float
    last_sequence: int
    last_timestamp: int
    octets: int
    packets: int


class PictureState:
    """A simulcast VP8 player's picture numbering (see Vp8Pictures)."""

    __slots__ = ("_drops", "_last_picture", "_last_tl0", "_picture_offset", "_tl0_offset", "needs_sync")
    _drops: list[int]
    _last_picture: int | None
    _last_tl0: int | None
    _picture_offset: int
    _tl0_offset: int
    needs_sync: bool


class Outlet:
    """A consumer's state on the packet path (see Consumer)."""

    __slots__ = (
        "_frame_forwarded",
        "_frame_timestamp",
        "_ready",
        "_sent_input",
        "_sent_output",
        "_timestamp_offset",
        "_wire",
        "pictures",
        "rewriter",
        "ssrc",
        "temporal",
        "temporal_target",
        "totals",
    )
    _frame_forwarded: bool
    _frame_timestamp: int
    pictures: Vp8Pictures | None
    temporal: int
    temporal_target: int
    _ready: bool
    _timestamp_offset: int
    _wire: Wire | None
    rewriter: Rewriter
    ssrc: int
    totals: Totals

    def __init__(self) -> None:
        # Typed arrays: no int object kept alive per entry (-1: not written).
        self._sent_output = array.array("i", [-1]) * SEQUENCE_MAP
        self._sent_input = array.array("H", [0]) * SEQUENCE_MAP

    def record_sent(self, output: int, source: int) -> None:
        """Output sequence number `output` carried input sequence number `source`."""
        output &= 0xFFFF
        slot = output % SEQUENCE_MAP
        self._sent_output[slot] = output
        self._sent_input[slot] = source & 0xFFFF

    def sent_source(self, output: int) -> int | None:
        """The input sequence number recorded for output `output`, or None."""
        slot = output % SEQUENCE_MAP
        return self._sent_input[slot] if self._sent_output[slot] == output else None


def fan_out(consumers: Sequence[Forwarder], packet: bytes, header: RtpHeader, now: float) -> None:
    """Forward one packet to every consumer, in order."""
    for consumer in consumers:
        consumer.forward(packet, header, now)


COMPILED = False
if not TYPE_CHECKING and compiled_wanted():
    try:
        from trio_sfu.media._fastpath import Lane, Outlet, PictureState, Wire, fan_out
    except ImportError:  # built without a C compiler: the Python path above
        pass
    else:
        COMPILED = True
