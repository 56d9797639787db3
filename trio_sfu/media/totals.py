"""Server-wide media totals: what /metrics reports about packets, handshakes and drops.

One object shared by every transport and consumer of a server. The packet path adds to a slot (as
cheap as a dict update, and a misspelt name fails at once instead of counting under a new key);
/metrics reads a copy at scrape time, so metrics cost nothing per packet. Diagnostic counts that only
tests and logs read stay in each object's own `counters`.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class Totals:
    rtp_packets_in: int = 0
    rtp_bytes_in: int = 0  # SRTP, as on the wire
    rtp_packets_out: int = 0
    rtp_bytes_out: int = 0
    rtcp_packets_in: int = 0
    rtcp_packets_out: int = 0
    dtls_handshakes: int = 0
    dtls_failures: int = 0
    keyframe_requests: int = 0  # PLI sent to publishers
    nacks_to_publisher: int = 0
    # Dropped packets, by reason (the /metrics `reason` label is the name without `drop_`).
    drop_srtp_auth: int = 0
    drop_srtcp_auth: int = 0
    drop_input_overflow: int = 0  # a peer's own socket overflowed before we read it
    drop_fanout_queue_full: int = 0  # a player's backlog was full
    drop_stream_congestion: int = 0  # an ICE-TCP player's connection was full: dropped, whole frames
    drop_nack_budget_exceeded: int = 0  # a player asked for more retransmissions than it may
    drop_protect_failed: int = 0  # SRTP would not protect it (too long, or older than its window)
    drop_send_error: int = 0  # the kernel's send failed (e.g. no route, the peer's port closed)

    def copy(self) -> Totals:
        return attrs.evolve(self)

    @classmethod
    def drop_reasons(cls) -> list[str]:
        return [f.name.removeprefix("drop_") for f in attrs.fields(cls) if f.name.startswith("drop_")]
