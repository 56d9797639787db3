"""Which simulcast layer a player should get, from what the layers send and what the player can take.

Layers are ranked by their picture size where the codec tells it (VP8 keyframes), then by what they
measurably send (bytes per second over the producer's rate window), never by their names: Chromium
lists its rids low to high (q;h;f), Firefox high to low (h;m;l), and an application may name them
anything. (Firefox was seen spending 1 Mbit/s on its 320x180 layer and 0.5 on its 1280x720 one.) A
layer the publisher stopped (its browser's CPU or bandwidth adaptation turns layers off) is idle after
IDLE_AFTER and chosen by nobody.

Within a layer, a VP8 encoder's temporal layers are the finer step: a player gets a layer's frames
up to some TID (each step about halves the frame rate and takes off a fifth to a third of the rate),
with no keyframe needed, so it is also the quickest way down. A player's choice is an `Option`: a
layer, and the highest temporal layer of it (None: all). Options are ranked spatial first, then
temporal; a frame rate below MIN_TEMPORAL_FPS is offered only on the lowest layer (a sharp picture
at a few frames a second is worse than a smaller one that moves).

For now temporal caps are offered on the lowest layer only (TEMPORAL_CAPS_ABOVE_LOWEST): a Chromium
player capped to TL1 of a higher layer a second after switching to it stopped decoding for 2-3 s
(until the next keyframe) in 2 of 2 full CI runs and under CPU load here, with no loss and picture
ids continuous; the cause is not found yet. Below the lowest layer's full rate a cap is the only step
there is, and there it played cleanly.

The consumer carries a choice out: a new layer at its next keyframe, a temporal cap at the next frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from trio_sfu.media.producer import Producer

IDLE_AFTER = 0.5  # seconds without a packet before a layer counts as stopped
HEADROOM = 0.9  # a layer is affordable when its rate fits in this share of the player's estimate
MIN_TEMPORAL_FPS = 10.0  # frames a second below which a temporal cap is offered on the lowest layer only
TEMPORAL_CAPS_ABOVE_LOWEST = False  # see the module's docstring

Option: TypeAlias = "tuple[Producer, int | None]"  # a layer; its highest temporal layer (None: all)


def active_layers(layers: Sequence[Producer], now: float) -> list[Producer]:
    """The layers sending now, lowest first (ties keep the publisher's order)."""
    return ranked([layer for layer in layers if now - layer.last_received_at < IDLE_AFTER])


def ranked(layers: Sequence[Producer]) -> list[Producer]:
    """Lowest first: by picture size, then by what they sent in the last rate window."""
    return sorted(layers, key=lambda layer: (layer.pixels, layer.byte_rate))


def start_layer(layers: Sequence[Producer], now: float, max_rank: int | None = None) -> Producer:
    """Where a new player starts: the best layer sending now within its cap; while none sends (a pause,
    a relay's first seconds), the best by what was last seen, within the cap all the same."""
    chosen = choose_layer(layers, now, max_rank=max_rank)
    if chosen is not None:
        return chosen
    every = ranked(layers)
    return every[min(len(every) - 1, max_rank)] if max_rank is not None else every[-1]


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


def layer_options(layers: Sequence[Producer], now: float, max_rank: int | None = None) -> list[Option]:
    """What a player may get, worst first: each active layer (up to the player's cap) capped at each of
    its temporal layers but the top one (where their frame rates allow), then whole."""
    active = active_layers(layers, now)
    if max_rank is not None:
        active = active[: max(0, max_rank) + 1]
    options: list[Option] = []
    for rank, layer in enumerate(active):
        fps = layer.temporal_fps
        if rank and not TEMPORAL_CAPS_ABOVE_LOWEST:
            options.append((layer, None))
            continue
        options.extend(
            (layer, tid)
            for tid in range(len(layer.temporal_rates) - 1)
            if rank == 0 or fps[tid] >= MIN_TEMPORAL_FPS
        )
        options.append((layer, None))
    return options


def option_bps(option: Option) -> float:
    """What an option sends, in bits per second (as measured over the producer's last window)."""
    layer, tid = option
    rates = layer.temporal_rates
    return (rates[tid] if tid is not None and tid < len(rates) else layer.byte_rate) * 8


def choose_option(options: Sequence[Option], budget_bps: float | None) -> Option:
    """The best of `options` (not empty) within `budget_bps` (None: no limit); the worst if none fits."""
    if budget_bps is None:
        return options[-1]
    affordable = [option for option in options if option_bps(option) <= budget_bps * HEADROOM]
    return affordable[-1] if affordable else options[0]


CONGESTION_MEMORY = 2.0  # seconds a sign of congestion (loss, a falling estimate) counts
LOSS_CONGESTION = 0.05  # fraction lost in a receiver report that means the link is full
ESTIMATE_DROP = 0.9  # an estimate below this share of the previous one: the player saw overuse
UP_AFTER = 1.0  # seconds a higher layer must keep fitting before the player moves up to it
UP_FIT = 0.9  # a higher layer fits when the estimate reaches this share of its rate (the estimate
# of a player grows only with what it receives: it need not cover the whole layer before it gets it)
ESTIMATE_TTL = 5.0  # an estimate older than this is no estimate (the player stopped sending REMB)
PROBE_STEP = 1.25  # probes aim at most this far above the current estimate
PROBE_BACKOFF = 5.0  # seconds before probing again after a probe met congestion (doubling)
PROBE_BACKOFF_MAX = 20.0
RISING_FOR = 3.0  # an estimate that has only risen this long ends a backoff: the link may have grown
QUIET_FOR = 10.0  # without an estimate (no REMB), a player goes up after this long without loss
# Loss moves a player one option down at most once per this long: the loss reported just after a step
# is the old rate's (the link's queue still drains), and steps are fine (temporal layers): a step each
# receiver report took a player from the top to the bottom in a second.
STEP_SETTLE = 1.0
# An estimate moves a player down only below this share of what it plays. Chromium's estimate after an
# overuse is 0.85 times what it received, and its first one is what it received: taken at its word, a
# player on a link wider than its option steps down at each of them, and the estimate follows it down
# (it grows 8 % a second at most: from q's base layer, the top is over 30 s away).
ESTIMATE_BELOW = 0.8
# ... and below this share when the estimate has not just fallen, and loss is all that says congestion:
# a first estimate is about what the player received, not its link. Against 0.8, a first estimate of
# 128k with q at 160k (and loss from h's queue just before) stepped a player on a 500 kbit/s link to
# q's TL1, from which its estimate took ~29 s to reach the top.
ESTIMATE_FAR_BELOW = 0.7


class LayerControl:
    """One player's layer choice: its estimate and loss in, an option and a probing rate out.

    Down when the option it plays loses packets (one option, or to what the estimate affords if that
    is lower; at most once per STEP_SETTLE from when the last step took effect), or at once when the
    estimate falls (ESTIMATE_DROP) well below the option (ESTIMATE_BELOW). Up one option at a time,
    only after it has fitted for UP_AFTER.
    The player's estimate (Chromium's REMB) can grow only to about 1.5 times what it receives, so below
    the top the server probes: it sends padding (retransmissions of recent packets) up to PROBE_STEP
    above the estimate, and backs off when a probe meets congestion.
    """

    def __init__(self) -> None:
        self.estimate_bps: float | None = None
        self.max_rank: int | None = None  # the player's cap (0: the lowest layer)
        self.adaptive = True  # False: the best option sending, whatever the estimate (no probes)
        self.pinned = False  # True: the layer it started on, always (a relay's leg)
        self._estimate_at = -1e9
        self._congested_at = -1e9
        self._estimate_fell_at = -1e9  # when the estimate last fell (an overuse the player saw)
        self._up_since: float | None = None
        self._probe_allowed_at = 0.0
        self._probe_backoff = PROBE_BACKOFF
        self._rising_since: float | None = None
        # Until its link has shown congestion once, a player goes up whatever its estimate says: it
        # may have started below the top only because the top layer was not sending yet (Firefox
        # turns its top layer on seconds after the others), and a young estimate only says what the
        # player has received so far.
        self._congested_ever = False
        self._step_down = False  # without an estimate, congestion moves the player one option down
        self._stepped_at = -1e9
        self.probe_bps = 0.0  # padding to send now, above the media

    def on_estimate(self, bps: float, now: float) -> None:
        previous = self.estimate_bps if now - self._estimate_at < ESTIMATE_TTL else None
        if previous is not None and bps < previous * ESTIMATE_DROP:
            self._congestion(now)
            self._estimate_fell_at = now
        if previous is None or bps <= previous:
            self._rising_since = None
        elif self._rising_since is None:
            self._rising_since = now
        elif now - self._rising_since >= RISING_FOR and now < self._probe_allowed_at:
            self._probe_allowed_at = now  # nothing but growth since the backoff began: try again
            self._probe_backoff = PROBE_BACKOFF
        self.estimate_bps, self._estimate_at = bps, now

    def on_loss(self, fraction: float, now: float) -> None:
        """`fraction`: lost of what the player got since its previous report, all of it sent as the
        option it plays now (see PlayerMedia: older reports are not passed on)."""
        if fraction >= LOSS_CONGESTION:
            self._congestion(now)
            if now - self._stepped_at >= STEP_SETTLE:
                self._step_down = True

    def option_changed(self, now: float) -> None:
        """The player's option changed (a switch took effect): loss is judged from here on."""
        self._stepped_at = max(self._stepped_at, now)

    def _congestion(self, now: float) -> None:
        self._congested_at = now
        self._congested_ever = True
        if self.probe_bps > 0:  # the probe found the limit: wait before trying again
            self.probe_bps = 0.0
            self._probe_allowed_at = now + self._probe_backoff
            self._probe_backoff = min(self._probe_backoff * 2, PROBE_BACKOFF_MAX)

    def choose(self, playing: Option, layers: Sequence[Producer], now: float) -> Option | None:
        """The option the player should get (None: nothing sends, stay); sets `probe_bps`."""
        if self.pinned:
            self.probe_bps = 0.0
            return None
        options = layer_options(layers, now, self.max_rank)
        if not options:
            self.probe_bps = 0.0
            return None
        estimate = self.estimate_bps if now - self._estimate_at < ESTIMATE_TTL else None
        if not self.adaptive:
            self.probe_bps = 0.0
            return options[-1]
        if playing not in options:  # stopped, above the cap, or its temporal layers changed: move now
            self._up_since = None
            return choose_option(options, estimate)
        index = options.index(playing)
        higher = options[index + 1] if index + 1 < len(options) else None
        if self._step_down:  # the option it plays loses packets: one step down, or the estimate's
            self._step_down = False
            self._stepped_at = now
            self._up_since = None
            self.probe_bps = 0.0
            lower = index - 1 if index > 0 else index
            if estimate is not None:
                lower = min(lower, options.index(choose_option(options, estimate)))
            return options[lower]
        if estimate is None:  # loss is all there is to go by (a player that sends no REMB)
            if higher is None or now - self._congested_at < QUIET_FOR:
                return playing
            return self._up(higher, playing, now)
        congested = now - self._congested_at < CONGESTION_MEMORY
        # An estimate that just fell is the player's word on its link; one that did not (a first one
        # is what it received) needs a wider gap to move it, beside loss.
        below = ESTIMATE_BELOW if now - self._estimate_fell_at < CONGESTION_MEMORY else ESTIMATE_FAR_BELOW
        if congested and estimate < option_bps(playing) * below:
            self._up_since = None
            self.probe_bps = 0.0
            return choose_option(options, estimate)
        if higher is None:
            self.probe_bps = 0.0
            return playing
        if estimate >= option_bps(higher) * UP_FIT or not self._congested_ever:
            self.probe_bps = 0.0
            return self._up(higher, playing, now)
        self._up_since = None
        if not congested and now >= self._probe_allowed_at:
            target = min(option_bps(higher), estimate * PROBE_STEP)
            self.probe_bps = max(0.0, target - option_bps(playing))
        else:
            self.probe_bps = 0.0
        return playing

    def _up(self, higher: Option, playing: Option, now: float) -> Option:
        if self._up_since is None:
            self._up_since = now
        if now - self._up_since < UP_AFTER:
            return playing
        self._up_since = None
        self._probe_backoff = PROBE_BACKOFF  # it fitted: the next probe may come soon
        return higher
