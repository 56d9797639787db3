"""Limits that protect the server: every one refuses with a documented code instead of queueing.

Per-client limits answer 429 (the client can slow down or close something); server-wide ones answer
503 (the client should come back later or go elsewhere). None of them keeps per-request state beyond
a counter, so a flood costs what the refusals cost and nothing more.
"""

from __future__ import annotations

import collections

import attrs

from trio_sfu.signaling.messages import ErrorCode, SignalingError


@attrs.define
class TokenBucket:
    """`rate` requests per second on average, bursts of up to `burst`."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=-1.0)
    updated: float = 0.0

    def allow(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@attrs.frozen
class LimitSettings:
    max_sessions: int = 10_000
    max_sessions_per_socket: int = 16
    max_sessions_per_address: int = 1_000
    max_players_per_stream: int = 1_000
    max_handshakes: int = 256
    requests_per_second: float = 20.0
    request_burst: float = 40.0


class Limits:
    """Counts what the limits are about; the signaling layer asks before it creates anything."""

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.sessions = 0
        self.sessions_by_address: collections.Counter[str] = collections.Counter()
        self.handshakes = 0
        self.refused: collections.Counter[str] = collections.Counter()

    def request_bucket(self) -> TokenBucket:
        return TokenBucket(self.settings.requests_per_second, self.settings.request_burst)

    def check_rate(self, bucket: TokenBucket, now: float) -> None:
        if not bucket.allow(now):
            self.refused["request_rate"] += 1
            raise SignalingError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"more than {self.settings.requests_per_second:g} requests per second on this "
                "connection; slow down",
            )

    def check_new_session(self, *, socket_sessions: int, address: str, players: int | None) -> None:
        """`players`: the stream's current player count for a play offer, None for a publish."""
        settings = self.settings
        if socket_sessions >= settings.max_sessions_per_socket:
            self._refuse("sessions_per_socket", ErrorCode.TOO_MANY_REQUESTS,
                         f"at most {settings.max_sessions_per_socket} sessions per connection; "
                         "close one or open another connection")
        if self.sessions_by_address[address] >= settings.max_sessions_per_address:
            self._refuse("sessions_per_address", ErrorCode.TOO_MANY_REQUESTS,
                         f"at most {settings.max_sessions_per_address} sessions per client address")
        if self.sessions >= settings.max_sessions:
            self._refuse("sessions", ErrorCode.UNAVAILABLE,
                         "the server is at its session limit; try again later")
        if players is not None and players >= settings.max_players_per_stream:
            self._refuse("players_per_stream", ErrorCode.UNAVAILABLE,
                         f"this stream has its maximum of {settings.max_players_per_stream} players")
        if self.handshakes >= settings.max_handshakes:
            self._refuse("handshakes", ErrorCode.UNAVAILABLE,
                         "too many connections are being set up right now; try again in a moment")

    def _refuse(self, limit: str, code: ErrorCode, message: str) -> None:
        self.refused[limit] += 1
        raise SignalingError(code, message)

    def session_started(self, address: str) -> None:
        self.sessions += 1
        self.sessions_by_address[address] += 1
        self.handshakes += 1

    def handshake_done(self) -> None:
        self.handshakes -= 1

    def session_ended(self, address: str, *, handshake_pending: bool) -> None:
        self.sessions -= 1
        self.sessions_by_address[address] -= 1
        if self.sessions_by_address[address] <= 0:
            del self.sessions_by_address[address]
        if handshake_pending:
            self.handshakes -= 1
