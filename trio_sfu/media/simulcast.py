"""Which simulcast layer a player should get, from what the layers send and what the player can take.

Layers are ranked by their picture size where the codec tells it (VP8 keyframes), then by what they
measurably send (bytes per second over the producer's rate window), never by their names: Chromium
lists its rids low to high (q;h;f), Firefox high to low (h;m;l), and an application may name them
anything. (Firefox was seen spending 1 Mbit/s on its 320x180 layer and 0.5 on its 1280x720 one.) A
layer the publisher stopped (its browser's CPU or bandwidth adaptation turns layers off) is idle after
IDLE_AFTER and chosen by nobody.

The choice is a pure function; the consumer carries it out at the target layer's next keyframe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_sfu.media.producer import Producer

IDLE_AFTER = 0.5  # seconds without a packet before a layer counts as stopped
HEADROOM = 0.9  # a layer is affordable when its rate fits in this share of the player's estimate


def active_layers(layers: Sequence[Producer], now: float) -> list[Producer]:
    """The layers sending now, lowest first (ties keep the publisher's order)."""
    active = [layer for layer in layers if now - layer.last_received_at < IDLE_AFTER]
    return sorted(active, key=lambda layer: (layer.pixels, layer.byte_rate))


def choose_layer(
    layers: Sequence[Producer],
    now: float,
    *,
    budget_bps: float | None = None,
    max_rank: int | None = None,
) -> Producer | None:
    """The best active layer within the player's estimate (`budget_bps`, None: no limit) and its own
    cap (`max_rank`: 0 is the lowest layer); the lowest one when none fits; None when none sends."""
    active = active_layers(layers, now)
    if not active:
        return None
    if max_rank is not None:
        active = active[: max(0, max_rank) + 1]
    if budget_bps is None:
        return active[-1]
    affordable = [layer for layer in active if layer.byte_rate * 8 <= budget_bps * HEADROOM]
    return affordable[-1] if affordable else active[0]
