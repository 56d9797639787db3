"""The limit bookkeeping on its own (the signaling tests check the codes on the wire)."""

from __future__ import annotations

import pytest

from trio_sfu.signaling.limits import Limits, LimitSettings, TokenBucket
from trio_sfu.signaling.messages import SignalingError


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.allow(0.05) is False  # half a token
    assert bucket.allow(0.1) is True
    assert [bucket.allow(10.0) for _ in range(6)] == [True] * 5 + [False]  # refills to the burst only


@pytest.mark.parametrize(
    ("settings", "kwargs", "code", "limit"),
    [
        (LimitSettings(max_sessions_per_socket=1), {"socket_sessions": 1}, 429, "sessions_per_socket"),
        (LimitSettings(max_players_per_stream=2), {"players": 2}, 503, "players_per_stream"),
    ],
)
def test_each_limit_refuses_with_its_code(
    settings: LimitSettings, kwargs: dict[str, int], code: int, limit: str
) -> None:
    limits = Limits(settings)
    args = {"socket_sessions": 0, "address": "127.0.0.1", "players": None} | kwargs
    with pytest.raises(SignalingError) as refused:
        limits.check_new_session(**args)  # type: ignore[arg-type]
    assert refused.value.code == code
    assert limits.refused == {limit: 1}


def test_counted_limits_follow_sessions() -> None:
    limits = Limits(LimitSettings(max_sessions=3, max_sessions_per_address=2, max_handshakes=2))
    limits.session_started("a")
    limits.session_started("a")
    with pytest.raises(SignalingError) as refused:
        limits.check_new_session(socket_sessions=0, address="a", players=None)
    assert refused.value.code == 429
    with pytest.raises(SignalingError) as refused:  # two handshakes in progress
        limits.check_new_session(socket_sessions=0, address="b", players=None)
    assert refused.value.code == 503
    limits.handshake_done()
    limits.check_new_session(socket_sessions=0, address="b", players=None)
    limits.session_started("b")
    with pytest.raises(SignalingError) as refused:  # three sessions in total
        limits.check_new_session(socket_sessions=0, address="c", players=None)
    assert refused.value.code == 503
    limits.session_ended("a", handshake_pending=False)
    limits.session_ended("a", handshake_pending=True)
    limits.session_ended("b", handshake_pending=True)
    assert (limits.sessions, limits.handshakes, dict(limits.sessions_by_address)) == (0, 0, {})
