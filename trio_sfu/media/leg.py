"""One leg of a session as the media layer sees it: what it does with the media its transport decrypts,
and what it needs of that transport (protect and send RTCP). The server's transport driver implements
`RtcpSender` and calls a `MediaHandler`; the media layer knows neither sockets nor Trio."""

from __future__ import annotations

import math
from typing import Protocol

from trio_sfu.media.totals import Totals

REPORT_INTERVAL = 1.0
"""Seconds between a leg's RTCP reports (SR to players, RR to publishers), as browsers send theirs."""


class RtcpSender(Protocol):
    """The leg's transport, for what the media layer sends on its own (reports, feedback)."""

    totals: Totals  # the server's, for /metrics

    def send_rtcp(self, packet: bytes) -> bool | None:
        """Protect and send; True: sent, False: the socket would block, None: not connected yet."""
        ...


class MediaHandler:
    """What the session does with decrypted media; the transport only moves and protects bytes."""

    def on_rtp(self, packet: bytes, now: float) -> None: ...

    def on_rtcp(self, packet: bytes, now: float) -> None: ...

    def on_connected(self, now: float) -> None: ...

    def tick(self, now: float, wall: float) -> float:
        """Periodic work (RTCP reports) at monotonic `now`, wall-clock `wall` (for NTP timestamps);
        returns when to be called next."""
        return math.inf
