"""Moved to trio_sfu.transport.client_peer (the cluster's relays use it too); kept for old imports."""

from trio_sfu.transport.client_peer import ClientEvent, ClientPeer

__all__ = ["ClientEvent", "ClientPeer"]
