"""Prometheus metrics, read from the server's own counters at scrape time.

The packet path only adds to the server's `Totals` and the mux's plain counters (`MediaMux.received`
and `.dropped`); this collector turns them into metric families when `/metrics` is fetched, so metrics cost
nothing per packet. Every `Server` gets its own `CollectorRegistry` (tests run many servers in one
process; the global registry would mix them up).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trio_sfu.media.totals import Totals

if TYPE_CHECKING:
    from trio_sfu.server.server import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# MediaMux.dropped keys (datagrams dropped before reaching any session).
MUX_DROPS = {
    "unknown_source": "unknown_source",
    "malformed_stun": "malformed_stun",
    "unknown_kind": "unknown_kind",
    "queue_full": "transport_queue_full",
    "wrong_transport": "wrong_transport",  # a proven address over the other transport (UDP vs ICE-TCP)
}


class ServerCollector(Collector):
    """Reads one server's counters, sessions and streams whenever the registry is collected."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        snap = self.server.snapshot()
        totals = snap.totals

        sessions = GaugeMetricFamily(
            "trio_sfu_sessions", "Sessions (one stream and direction on one WebSocket)", labels=["kind"]
        )
        sessions.add_metric(["publish"], snap.publishers)
        sessions.add_metric(["play"], snap.players)
        yield sessions

        streams = GaugeMetricFamily(
            "trio_sfu_streams", "Streams by kind: published, and being played", labels=["kind"]
        )
        streams.add_metric(["publish"], snap.streams_published)
        streams.add_metric(["play"], snap.streams_played)
        yield streams

        yield GaugeMetricFamily("trio_sfu_connections", "Open signaling WebSockets", value=snap.connections)
        yield GaugeMetricFamily(
            "trio_sfu_relayed_streams",
            "Streams played here through a relay from the worker or node that holds them",
            value=snap.relayed_in,
        )
        worker = self.server.config.worker_index
        if worker is not None:
            info = GaugeMetricFamily(
                "trio_sfu_worker", "Which worker of `--workers N` answered this scrape", labels=["worker"]
            )
            info.add_metric([str(worker)], 1)
            yield info

        for name, help_text in (
            ("rtp_packets", "RTP packets received and sent"),
            ("rtp_bytes", "RTP bytes (SRTP, as on the wire) received and sent"),
            ("rtcp_packets", "RTCP packets received and sent"),
        ):
            family = CounterMetricFamily(f"trio_sfu_{name}", help_text, labels=["direction"])
            family.add_metric(["in"], getattr(totals, f"{name}_in"))
            family.add_metric(["out"], getattr(totals, f"{name}_out"))
            yield family

        datagrams = CounterMetricFamily(
            "trio_sfu_datagrams_received", "Datagrams on the media port by kind (RFC 7983)", labels=["kind"]
        )
        for kind in ("stun", "dtls", "rtp", "unknown"):
            datagrams.add_metric([kind], snap.datagrams.get(kind, 0))
        yield datagrams

        drops = CounterMetricFamily(
            "trio_sfu_dropped_packets", "Packets and datagrams dropped", labels=["reason"]
        )
        for reason in Totals.drop_reasons():
            drops.add_metric([reason], getattr(totals, f"drop_{reason}"))
        for key, reason in MUX_DROPS.items():
            drops.add_metric([reason], snap.mux_drops.get(key, 0))
        yield drops

        yield CounterMetricFamily(
            "trio_sfu_dtls_handshakes", "DTLS handshakes completed", value=totals.dtls_handshakes
        )
        yield CounterMetricFamily(
            "trio_sfu_handshake_failures", "DTLS handshakes that failed", value=totals.dtls_failures
        )
        yield CounterMetricFamily(
            "trio_sfu_keyframe_requests", "Keyframe requests (PLI) sent to publishers",
            value=totals.keyframe_requests,
        )
        yield CounterMetricFamily(
            "trio_sfu_nacks_to_publisher", "NACKs sent to publishers for packets players lost",
            value=totals.nacks_to_publisher,
        )
        yield CounterMetricFamily(
            "trio_sfu_signaling_bad_requests", "Signaling frames that could not be parsed",
            value=snap.bad_requests,
        )
        yield GaugeMetricFamily(
            "trio_sfu_keyframe_cache_bytes",
            "Bytes held by the keyframe caches (each layer's latest keyframe and what followed it)",
            value=snap.keyframe_cache_bytes,
        )
        yield GaugeMetricFamily(
            "trio_sfu_keyframe_cache_packets", "Packets held by the keyframe caches",
            value=snap.keyframe_cache_packets,
        )
        tcp = snap.ice_tcp
        yield GaugeMetricFamily(
            "trio_sfu_ice_tcp_connections", "Open ICE-TCP connections", value=tcp.get("open", 0)
        )
        yield CounterMetricFamily(
            "trio_sfu_ice_tcp_accepted", "ICE-TCP connections accepted", value=tcp.get("accepted", 0)
        )
        closed = CounterMetricFamily(
            "trio_sfu_ice_tcp_refused",
            "ICE-TCP connections refused or closed by the server, by reason",
            labels=["reason"],
        )
        for reason in ("refused_total", "refused_per_address", "handshake_timeouts", "idle_closed",
                       "oversized_frames"):
            closed.add_metric([reason], tcp.get(reason, 0))
        yield closed
        yield CounterMetricFamily(
            "trio_sfu_ice_tcp_send_queue_full",
            "Sends refused because an ICE-TCP connection's queue was full (its player's backlog took them)",
            value=tcp.get("send_queue_full", 0),
        )
        http = CounterMetricFamily(
            "trio_sfu_http_responses", "HTTP responses by status code", labels=["code"]
        )
        for code, value in sorted(snap.http_responses.items()):
            http.add_metric([str(code)], value)
        yield http


def make_registry(server: Server) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)  # CPU seconds, resident memory, open files of this process
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition format (version 0.0.4)."""
    return generate_latest(registry)
