"""Moved to trio_sfu.cluster.signaling_client (relays use it); kept for old imports."""

from trio_sfu.cluster.signaling_client import SignalingClient

__all__ = ["SignalingClient"]
