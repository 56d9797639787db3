"""A GStreamer webrtcbin peer for end-to-end tests, run with Debian's /usr/bin/python3 (python3-gi).

gi is not importable in the project's venv, so tests run this script as a subprocess and talk to it in
JSON lines. It prints {"type": "offer", "sdp": ...} once ICE gathering is complete (the server wants a
complete offer), reads {"type": "answer", "sdp": ...} from stdin and applies it. Then:

- publish: sends 320x240 video at 30 fps whose ten vertical bars encode a frame counter (white, eight
  bits, black: the pattern of tests/aiortc_peers.counter_image), as VP8 or H264, and a 440 Hz tone as
  Opus;
- play: decodes what arrives and prints {"type": "report", ...} twice a second: frames decoded, size,
  the counters read off the bars, audio buffers, level and the tone's frequency (from zero crossings).

Events ({"type": "state" | "pad" | "error", ...}) say how ICE and the SDP went. The script exits when
stdin closes. Only the standard library and gi are used.
"""

from __future__ import annotations

import argparse
import array
import itertools
import json
import math
import sys
import threading
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

WIDTH, HEIGHT, FPS = 320, 240, 30
BARS = 10
POLICIES = {
    "none": GstWebRTC.WebRTCBundlePolicy.NONE,
    "balanced": GstWebRTC.WebRTCBundlePolicy.BALANCED,
    "max-compat": GstWebRTC.WebRTCBundlePolicy.MAX_COMPAT,
    "max-bundle": GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE,
}
FEEDBACK = "rtcp-fb-nack=(boolean)true,rtcp-fb-nack-pli=(boolean)true,rtcp-fb-ccm-fir=(boolean)true"
RTP_CAPS = {
    "vp8": f"application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000,{FEEDBACK}",
    "h264": "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    f"packetization-mode=(string)1,{FEEDBACK}",
    "opus": "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
    "encoding-params=(string)2",
}
ENCODERS = {
    "vp8": "vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=600000 "
    "! rtpvp8pay pt=96 picture-id-mode=15-bit",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=600 "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 config-interval=-1 "
    "aggregate-mode=zero-latency",
}
DECODERS = {
    "VP8": "rtpvp8depay ! vp8dec",
    "H264": "rtph264depay ! h264parse ! avdec_h264 output-corrupt=false",
}

_print_lock = threading.Lock()


def emit(kind: str, **fields: Any) -> None:
    """One JSON line on stdout (from any thread)."""
    with _print_lock:
        sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
        sys.stdout.flush()


def counter_frame(counter: int) -> bytes:
    """An RGB frame showing `counter` as bars (tests/aiortc_peers.counter_image, in pure Python)."""
    bar = WIDTH // BARS
    values = [1] + [(counter >> bit) & 1 for bit in range(8)] + [0]
    row = b"".join((b"\xff\xff\xff" if value else b"\x00\x00\x00") * bar for value in values)
    return row * HEIGHT


def read_counter(data: bytes, width: int, height: int) -> int | None:
    """The counter shown by an RGBx frame, or None when its framing bars are wrong (as read_counter)."""
    bar = width // BARS
    levels = []
    rows = range(height // 4, 3 * height // 4, max(1, height // 16))
    for index in range(BARS):
        total = count = 0
        for y in rows:
            start = (y * width + index * bar + bar // 4) * 4
            end = (y * width + (index + 1) * bar - bar // 4) * 4
            for channel in range(3):
                values = data[start + channel : end : 4]
                total += sum(values)
                count += len(values)
        level = total / count
        if 60 < level < 195:
            return None
        levels.append(level > 127)
    if not levels[0] or levels[-1]:
        return None
    return sum(1 << bit for bit in range(8) if levels[1 + bit])


class Peer:
    """One webrtcbin in one pipeline, publishing or playing, driven from the GLib main loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.Pipeline.new("peer")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        self.webrtc.set_property("bundle-policy", POLICIES[args.bundle])
        self.webrtc.set_property("latency", 100)
        self.pipeline.add(self.webrtc)
        # libnice leaves loopback out; on a loopback-only host (the test namespace) it is all there is.
        # Both objects are kept referenced here: gi drops the agent otherwise.
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)
        self.agent = self.ice.get_property("agent")
        address = Nice.Address.new()
        address.set_from_string(args.address)
        self.agent.add_local_address(address)
        self.offer_sent = False
        self.lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "video": {"frames": 0, "width": 0, "height": 0, "counters": [], "unreadable": 0, "codec": None},
            "audio": {"buffers": 0, "samples": 0, "rms": 0.0, "frequency": 0.0},
        }
        self._audio_window: list[tuple[int, int, float]] = []  # (samples, zero crossings, sum of squares)
        self.counter = 0
        self.appsrc: Gst.Element | None = None

        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::ice-connection-state", self._on_state, "ice-connection-state")
        self.webrtc.connect("notify::connection-state", self._on_state, "connection-state")
        self.webrtc.connect("pad-added", self._on_pad_added)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)
        bus.connect("message::warning", self._on_bus_warning)

        if args.mode == "publish":
            self._build_publisher()
        else:
            self._build_player()

    # --- building -------------------------------------------------------------------------------

    def _link_sender(self, description: str, caps: str) -> None:
        """Source chain -> fixed RTP caps -> a new webrtcbin sink pad, whose transceiver only sends."""
        chain = Gst.parse_bin_from_description(f"{description} ! capsfilter caps=\"{caps}\"", True)
        self.pipeline.add(chain)
        pad = self.webrtc.request_pad_simple("sink_%u")
        chain.get_static_pad("src").link(pad)
        transceiver = pad.get_property("transceiver")
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        if self.args.codec_preferences:
            # webrtcbin then offers at once from these caps instead of waiting for the encoder's
            # (so an H264 offer carries no profile-level-id or sprop-parameter-sets).
            transceiver.set_property("codec-preferences", Gst.Caps.from_string(caps))
        self._appsrc_from(chain)

    def _appsrc_from(self, chain: Gst.Bin) -> None:
        source = chain.get_by_name("counter")
        if source is not None:
            self.appsrc = source

    def _build_publisher(self) -> None:
        if self.args.video != "none":
            caps = RTP_CAPS[self.args.video]
            if self.args.video == "h264" and self.args.profile_level_id:
                caps += f",profile-level-id=(string){self.args.profile_level_id}"
            source = (
                f"appsrc name=counter is-live=true do-timestamp=true format=time "
                f"caps=video/x-raw,format=RGB,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
                f"! videoconvert ! queue max-size-buffers=2"
            )
            self._link_sender(f"{source} ! {ENCODERS[self.args.video]}", caps)
        if self.args.audio:
            self._link_sender(
                "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample "
                "! opusenc ! rtpopuspay pt=111",
                RTP_CAPS["opus"],
            )

    def _build_player(self) -> None:
        recvonly = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        if self.args.video != "none":
            caps = RTP_CAPS[self.args.video]
            if self.args.video == "h264":
                caps += f",profile-level-id=(string){self.args.profile_level_id or '42e01f'}"
            self.webrtc.emit("add-transceiver", recvonly, Gst.Caps.from_string(caps))
        if self.args.audio:
            self.webrtc.emit("add-transceiver", recvonly, Gst.Caps.from_string(RTP_CAPS["opus"]))

    # --- signaling ------------------------------------------------------------------------------

    def _on_negotiation_needed(self, _element: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer_created, None)
        self.webrtc.emit("create-offer", None, promise)

    def _on_offer_created(self, promise: Gst.Promise, _data: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            emit("error", where="create-offer", message=str(reply and reply.to_string()))
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, _element: Gst.Element, _spec: Any) -> None:
        state = self.webrtc.get_property("ice-gathering-state")
        emit("state", name="ice-gathering-state", value=state.value_nick)
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offer_sent:
            self.offer_sent = True
            GLib.idle_add(self._send_offer)

    def _send_offer(self) -> bool:
        description = self.webrtc.get_property("local-description")
        emit("offer", sdp=description.sdp.as_text())
        return False

    def apply_answer(self, text: str) -> bool:
        result, message = GstSdp.SDPMessage.new_from_text(text)
        if result != GstSdp.SDPResult.OK:
            emit("error", where="answer", message=f"unparseable answer: {result.value_nick}")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        promise = Gst.Promise.new_with_change_func(self._on_answer_applied, None)
        self.webrtc.emit("set-remote-description", answer, promise)
        return False

    def _on_answer_applied(self, promise: Gst.Promise, _data: Any) -> None:
        reply = promise.get_reply()
        error = reply.get_value("error") if reply is not None and reply.has_field("error") else None
        if error is not None:
            emit("error", where="set-remote-description", message=str(error.message))
            return
        emit("state", name="answer", value="applied")

    def _on_state(self, _element: Gst.Element, _spec: Any, name: str) -> None:
        emit("state", name=name, value=self.webrtc.get_property(name).value_nick)

    def _on_bus_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        emit("error", where=message.src.get_name(), message=error.message, debug=debug)

    def _on_bus_warning(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        warning, debug = message.parse_warning()
        emit("warning", where=message.src.get_name(), message=warning.message, debug=debug)

    # --- media ----------------------------------------------------------------------------------

    def _push_frame(self) -> bool:
        assert self.appsrc is not None
        buffer = Gst.Buffer.new_wrapped(counter_frame(self.counter % 256))
        self.counter += 1
        return self.appsrc.emit("push-buffer", buffer) == Gst.FlowReturn.OK

    def _on_pad_added(self, _element: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        structure = caps.get_structure(0)
        media, encoding = structure.get_string("media"), structure.get_string("encoding-name")
        emit("pad", media=media, encoding=encoding, caps=caps.to_string())
        if media == "video" and encoding in DECODERS:
            self.stats["video"]["codec"] = encoding
            description = (
                f"queue ! {DECODERS[encoding]} ! videoconvert ! video/x-raw,format=RGBx "
                "! appsink name=sink emit-signals=true sync=false max-buffers=2 drop=true"
            )
            callback = self._on_video_sample
        elif media == "audio" and encoding == "OPUS":
            description = (
                "queue ! rtpopusdepay ! opusdec ! audioconvert ! audioresample "
                "! audio/x-raw,format=S16LE,rate=48000,channels=1 "
                "! appsink name=sink emit-signals=true sync=false"
            )
            callback = self._on_audio_sample
        else:
            description, callback = "fakesink", None
        chain = Gst.parse_bin_from_description(description, True)
        if callback is not None:
            chain.get_by_name("sink").connect("new-sample", callback)
        self.pipeline.add(chain)
        chain.sync_state_with_parent()
        pad.link(chain.get_static_pad("sink"))

    def _on_video_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.OK
        try:
            counter = read_counter(bytes(info.data), width, height) if width >= BARS * 4 else None
        finally:
            buffer.unmap(info)
        with self.lock:
            video = self.stats["video"]
            video["frames"] += 1
            video["width"], video["height"] = width, height
            video["counters"].append(counter)
            del video["counters"][:-90]
            if counter is None:
                video["unreadable"] += 1
        return Gst.FlowReturn.OK

    def _on_audio_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.OK
        try:
            samples = array.array("h", bytes(info.data))
        finally:
            buffer.unmap(info)
        crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
        squares = float(sum(s * s for s in samples))
        with self.lock:
            window = self._audio_window
            window.append((len(samples), crossings, squares))
            del window[:-50]
            total = sum(n for n, _, _ in window)
            audio = self.stats["audio"]
            audio["buffers"] += 1
            audio["samples"] += len(samples)
            audio["frequency"] = sum(c for _, c, _ in window) / 2 / (total / 48000) if total else 0.0
            audio["rms"] = math.sqrt(sum(q for _, _, q in window) / total) if total else 0.0
        return Gst.FlowReturn.OK

    def _report(self) -> bool:
        with self.lock:
            snapshot = json.loads(json.dumps(self.stats))
        emit("report", sent=self.counter, **snapshot)
        return True

    # --- running --------------------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self._read_stdin, daemon=True).start()
        GLib.timeout_add(500, self._report)
        if self.appsrc is not None:
            # From the start: webrtcbin offers once every sink pad has caps, that is once media flows
            # (unless --codec-preferences); the counter runs from here either way.
            GLib.timeout_add(1000 // FPS, self._push_frame)
        self.pipeline.set_state(Gst.State.PLAYING)
        try:
            self.loop.run()
        finally:
            self.pipeline.set_state(Gst.State.NULL)

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("type") == "answer":
                GLib.idle_add(self.apply_answer, message["sdp"])
            elif message.get("type") == "stop":
                break
        GLib.idle_add(self.loop.quit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["publish", "play"])
    parser.add_argument("--bundle", choices=sorted(POLICIES), default="max-bundle")
    parser.add_argument("--video", choices=["vp8", "h264", "none"], default="vp8")
    parser.add_argument("--no-audio", dest="audio", action="store_false")
    parser.add_argument("--profile-level-id", default="", help="put this H264 profile-level-id in the offer")
    parser.add_argument(
        "--codec-preferences", action="store_true",
        help="publish: offer from the RTP caps given here, before any media flows",
    )
    parser.add_argument("--address", default="127.0.0.1", help="the local address ICE uses")
    args = parser.parse_args()
    Gst.init(None)
    Peer(args).run()


if __name__ == "__main__":
    main()
