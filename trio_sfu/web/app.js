// trio_sfu demo page and reference browser client (plain ES module, no build step).
//
// It speaks the signaling protocol of spec/PROTOCOL.md, version 1.0:
//   - JSON text frames on a WebSocket at ws(s)://HOST:PORT/ws; the page learns PORT and whether to
//     use TLS from /config.json on the HTTP port it was loaded from, and HOST from its own location;
//   - every request {version, method, app, uid, stream, data} gets exactly one reply
//     {method: "ack", err, err_msg, on_result, ...}, in the order the requests were sent;
//   - the server sends requests too (stream.mute, stream.close): each is answered with one ack;
//   - the client is always the offerer and sends a complete offer: it waits for ICE gathering to
//     finish (Chromium never signals end-of-candidates in the SDP) and sends no trickle candidates.
//
// Each publish or play session here opens its own WebSocket (the protocol allows several sessions
// on one socket, but not publish and play of the same stream, and one socket per session keeps the
// page's sessions independent). `Session` is the part to copy into another application.

const VERSION = "1.0";
const GATHERING_TIMEOUT_MS = 5000; // send what was gathered if ICE gathering never completes
// Simulcast (options.simulcast): the camera asked for 1280x720 and three encodings, Chromium's order low
// to high. The server picks one per player; a server that answers without a=simulcast gets only the first.
const SIMULCAST_CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 } };
const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", maxBitrate: 1500000 },
];
const RESULTS = {
  "stream.connect": "stream.connected",
  "stream.offer": "stream.answer",
  "stream.mute": "stream.muted",
  "stream.close": "stream.closed",
};

/** A failed request: `code` is the reply's `err`, the message its `err_msg`. */
export class SignalingError extends Error {
  constructor(method, code, message) {
    super(`${method} failed (${code}): ${message}`);
    this.code = code;
  }
}

/** One signaling WebSocket: requests with promised replies, server requests to a handler. */
export class Signaling {
  /** Open `url`; resolves once the socket is open. */
  static open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(new Signaling(ws));
      ws.onerror = () => reject(new Error(`cannot reach the signaling server at ${url}`));
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.pending = []; // resolvers of requests in flight, in the order sent (replies come in order)
    this.onrequest = async () => ({}); // (message) => data of the ack
    this.onclose = () => {};
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => {
      for (const { reject } of this.pending.splice(0)) reject(new Error("signaling closed"));
      this.onclose(event);
    };
  }

  get state() {
    return ["connecting", "open", "closing", "closed"][this.ws.readyState];
  }

  /** Send a request; resolves with the reply's data, rejects with SignalingError if err != 0. */
  request(method, header, data = {}) {
    const message = { version: VERSION, method, ...header, data };
    return new Promise((resolve, reject) => {
      this.pending.push({ method, resolve, reject });
      this.ws.send(JSON.stringify(message));
    });
  }

  close() {
    this.ws.close(1000);
  }

  async _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.method === "ack") {
      const waiter = this.pending.shift();
      if (!waiter) return;
      if (message.err === 0) waiter.resolve(message.data || {});
      else waiter.reject(new SignalingError(waiter.method, message.err, message.err_msg));
      return;
    }
    // A request from the server: handle it, then answer with one ack of the same shape.
    let data = {};
    let err = 0;
    let errMsg = "success";
    try {
      data = (await this.onrequest(message)) || {};
    } catch (error) {
      [err, errMsg] = [500, String(error)];
    }
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(
      JSON.stringify({
        version: VERSION,
        err,
        err_msg: errMsg,
        method: "ack",
        on_result: RESULTS[message.method] || "",
        app: message.app || "",
        uid: message.uid || "",
        stream: message.stream || "",
        data,
      }),
    );
  }
}

/** Resolves when ICE gathering is complete (or after `timeoutMs`: then the offer has what there is). */
function gatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * Which of several RTP stats of one kind a summary shows: the one with the most packets; for a
 * publisher's video (one stat per simulcast layer) first the largest picture, then the most packets.
 */
function shownBefore(entry, other, publish) {
  const area = (e) => (publish && e.width ? e.width * (e.height || 0) : 0);
  if (area(entry) !== area(other)) return area(entry) > area(other);
  return (entry.packets || 0) > (other.packets || 0);
}

/** Keep only `mimeType` (plus RTX, so lost packets can be resent) in a transceiver's offer. */
export function preferCodec(transceiver, mimeType) {
  const kind = transceiver.receiver.track.kind;
  const codecs = RTCRtpSender.getCapabilities(kind).codecs;
  const chosen = codecs.filter((c) => c.mimeType.toLowerCase() === mimeType.toLowerCase());
  if (!chosen.length) throw new Error(`this browser cannot send ${mimeType}`);
  const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === `${kind}/rtx`);
  transceiver.setCodecPreferences([...chosen, ...rtx]);
}

/**
 * One publish or play session: its WebSocket, its RTCPeerConnection, its state.
 *
 * options: {url, app, stream, uid, token, publish, videoCodec?, bundlePolicy?, simulcast?, onupdate?}
 *   bundlePolicy is RTCPeerConnection's: "max-bundle" (the default), "balanced" or "max-compat".
 *   simulcast (publishers): capture 1280x720 and send it as three layers, rids q, h, f (1/4, 1/2, full).
 *   onupdate(session) is called whenever `state`, `error`, `muted` or `publisherMuted` change.
 */
export class Session {
  constructor(options) {
    this.options = options;
    this.publish = Boolean(options.publish);
    this.header = { app: options.app, uid: options.uid, stream: options.stream };
    this.state = "new"; // new, connecting, negotiating, live, ended
    this.error = "";
    this.endReason = "";
    this.muted = { audio: false, video: false }; // this session's own mute (as the server confirmed)
    this.publisherMuted = { audio: false, video: false }; // players: what the server told us
    this.signaling = null;
    this.pc = null;
    this.localStream = null;
    this.remoteStream = new MediaStream();
    this.timing = {}; // Date.now() at: start, offer (sent), answer, connected, firstFrame
    this.sdp = { offer: "", answer: "" }; // as sent and received (for debugging; kept after close)
    this._previous = null; // the last stats sample, for rates
  }

  _update(changes) {
    Object.assign(this, changes);
    if (this.options.onupdate) this.options.onupdate(this);
  }

  /** Connect, authenticate, offer, apply the answer. Rejects (and ends) on any failure. */
  async start() {
    this.timing.start = Date.now();
    try {
      this._update({ state: "connecting" });
      if (this.publish) {
        const video = this.options.simulcast ? SIMULCAST_CAMERA : true;
        this.localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
      }
      this.signaling = await Signaling.open(this.options.url);
      this.signaling.onrequest = (message) => this._serverRequest(message);
      this.signaling.onclose = () => this.state !== "ended" && this._end("signaling connection lost");
      await this.signaling.request("stream.connect", this.header, { token: this.options.token || "" });
      this._update({ state: "negotiating" });
      const bundlePolicy = this.options.bundlePolicy || "max-bundle";
      const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy, rtcpMuxPolicy: "require" });
      this.pc = pc;
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected" && !this.timing.connected) this.timing.connected = Date.now();
        if (pc.connectionState === "failed") this._end("media connection failed (ICE/DTLS)");
        this._update({});
      };
      if (this.publish) {
        for (const track of this.localStream.getTracks()) {
          const init = { direction: "sendonly", streams: [this.localStream] };
          if (track.kind === "video" && this.options.simulcast) {
            init.sendEncodings = SIMULCAST_ENCODINGS.map((encoding) => ({ ...encoding }));
          }
          const transceiver = pc.addTransceiver(track, init);
          if (track.kind === "video" && this.options.videoCodec) preferCodec(transceiver, this.options.videoCodec);
        }
      } else {
        pc.addTransceiver("audio", { direction: "recvonly" });
        pc.addTransceiver("video", { direction: "recvonly" });
        pc.ontrack = (event) => this.remoteStream.addTrack(event.track);
      }
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc, GATHERING_TIMEOUT_MS);
      this.timing.offer = Date.now();
      this.sdp.offer = pc.localDescription.sdp;
      const reply = await this.signaling.request("stream.offer", this.header, {
        publish: this.publish,
        sdp: this.sdp.offer,
      });
      this.timing.answer = Date.now();
      this.sdp.answer = reply.sdp;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      this._update({ state: "live" });
    } catch (error) {
      this._end(error.message || String(error), true);
      throw error;
    }
  }

  /** Mute or unmute: {audio?: bool, video?: bool}. A publisher's mute reaches all its players. */
  async mute(flags) {
    try {
      const now = await this.signaling.request("stream.mute", this.header, flags);
      if (this.localStream) {
        // Also stop capturing what is muted (the server already stopped forwarding it).
        for (const track of this.localStream.getTracks()) track.enabled = !now[track.kind];
      }
      this._update({ muted: { audio: Boolean(now.audio), video: Boolean(now.video) } });
    } catch (error) {
      this._update({ error: error.message });
      throw error;
    }
  }

  /** Close the session (stream.close), then the peer connection and the socket. */
  async close() {
    if (this.state === "ended") return;
    try {
      if (this.signaling && this.signaling.state === "open") {
        await this.signaling.request("stream.close", this.header, {});
      }
    } catch (error) {
      if (error.code !== 404) this._update({ error: error.message }); // 404: the server ended it first
    }
    this._end("closed");
  }

  async _serverRequest(message) {
    if (message.method === "stream.close") {
      const reason = (message.data && message.data.reason) || "unknown";
      // End now (so a socket close that follows cannot hide the reason); close the socket once the
      // ack has gone out.
      this._end(`stream ended by the server: ${reason}`, false, reason, false);
      setTimeout(() => this.signaling.close(), 100);
      return {};
    }
    if (message.method === "stream.mute") {
      const flags = { audio: Boolean(message.data.audio), video: Boolean(message.data.video) };
      this._update({ publisherMuted: flags });
      return flags;
    }
    throw new Error(`unknown method ${message.method}`);
  }

  _end(why, isError = false, reason = "", closeSignaling = true) {
    if (this.state === "ended") return;
    if (this.pc) this.pc.close();
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
    if (this.signaling && closeSignaling) this.signaling.close();
    this._update({ state: "ended", endReason: reason || why, error: isError || reason ? why : this.error });
  }

  /** The peer connection's getStats() as a plain object keyed by id (for tests and debugging). */
  async rawStats() {
    const out = {};
    if (this.pc) (await this.pc.getStats()).forEach((value, key) => (out[key] = value));
    return out;
  }

  /**
   * A summary of getStats(): per kind the RTP counters of this side (inbound for players, outbound
   * for publishers) with codec, frames, resolution, jitter; plus RTT, DTLS state and the sending
   * bandwidth estimate. `bitrate` is over the time since the previous call.
   *
   * Publishers: `layers` lists every video outbound-rtp as {rid, ssrc, frameWidth, frameHeight,
   * framesEncoded, framesPerSecond, bytesSent, active, qualityLimitationReason} (null where the browser
   * has no such field), simulcast layers in the order of SIMULCAST_ENCODINGS. Chromium keeps a stat for
   * each rid it offered, also when the answer refused simulcast and only the first is sent. With
   * several, `video` is the largest picture (the most packets among equals). Players: `layers` is [].
   */
  async stats() {
    const raw = await this.rawStats();
    const values = Object.values(raw);
    const rtpType = this.publish ? "outbound-rtp" : "inbound-rtp";
    const summary = {
      time: Date.now(),
      signaling: this.signaling ? this.signaling.state : "none",
      ice: this.pc ? this.pc.iceConnectionState : "new",
      connection: this.pc ? this.pc.connectionState : "new",
      dtls: "new",
      rtt: null,
      availableOutgoingBitrate: null,
      bytes: 0,
      bitrate: null,
      audio: null,
      video: null,
      layers: [],
    };
    for (const stat of values) {
      if (stat.type === "transport") {
        summary.dtls = stat.dtlsState;
        const pair = raw[stat.selectedCandidatePairId];
        if (pair) {
          summary.rtt = pair.currentRoundTripTime ?? null;
          summary.availableOutgoingBitrate = pair.availableOutgoingBitrate ?? null;
        }
      }
      if (stat.type !== rtpType) continue;
      const codec = raw[stat.codecId];
      const entry = {
        codec: codec ? codec.mimeType : null,
        packets: this.publish ? stat.packetsSent : stat.packetsReceived,
        bytes: this.publish ? stat.bytesSent : stat.bytesReceived,
        frames: this.publish ? stat.framesEncoded : stat.framesDecoded,
        fps: stat.framesPerSecond ?? null,
        width: stat.frameWidth ?? null,
        height: stat.frameHeight ?? null,
        jitter: stat.jitter ?? null,
        packetsLost: stat.packetsLost ?? null,
        audioEnergy: stat.totalAudioEnergy ?? null, // players' audio: grows while sound is heard
      };
      summary.bytes += entry.bytes || 0;
      const shown = summary[stat.kind];
      if (!shown || shownBefore(entry, shown, this.publish)) summary[stat.kind] = entry;
      if (this.publish && stat.kind === "video") {
        summary.layers.push({
          rid: stat.rid ?? null,
          ssrc: stat.ssrc ?? null,
          frameWidth: stat.frameWidth ?? null,
          frameHeight: stat.frameHeight ?? null,
          framesEncoded: stat.framesEncoded ?? null,
          framesPerSecond: stat.framesPerSecond ?? null,
          bytesSent: stat.bytesSent ?? null,
          active: stat.active ?? null,
          qualityLimitationReason: stat.qualityLimitationReason ?? null,
        });
      }
    }
    const rids = this.publish && this.options.simulcast ? SIMULCAST_ENCODINGS.map((e) => e.rid) : [];
    const order = (layer) => (rids.includes(layer.rid) ? rids.indexOf(layer.rid) : rids.length);
    summary.layers.sort((a, b) => order(a) - order(b));
    for (const stat of values) {
      if (stat.type === "remote-inbound-rtp" && stat.roundTripTime !== undefined && summary.rtt === null) {
        summary.rtt = stat.roundTripTime;
      }
    }
    const previous = this._previous;
    if (previous && summary.time > previous.time) {
      summary.bitrate = ((summary.bytes - previous.bytes) * 8 * 1000) / (summary.time - previous.time);
    }
    this._previous = summary;
    return summary;
  }
}

// --------------------------------------------------------------------------- the demo page

/** Signaling URL: scheme and port from /config.json, host from the page's own address. */
async function signalingUrl() {
  const response = await fetch("/config.json", { cache: "no-store" });
  const config = await response.json();
  const scheme = config.signaling.tls ? "wss" : "ws";
  return { url: `${scheme}://${location.hostname}:${config.signaling.port}${config.signaling.path}`, config };
}

function formatStatus(session, s) {
  const parts = [`signaling ${s.signaling}`, `ICE ${s.ice}`, `DTLS ${s.dtls}`];
  if (s.bitrate !== null) parts.push(`${(s.bitrate / 1e6).toFixed(2)} Mbit/s`);
  const video = s.video;
  if (video) {
    if (video.fps !== null) parts.push(`${video.fps} fps`);
    if (video.width) parts.push(`${video.width}x${video.height}`);
    if (video.codec) parts.push(video.codec);
  }
  if (s.layers.length > 1) {
    const sizes = s.layers.map((l) => `${l.rid} ${l.frameWidth ? `${l.frameWidth}x${l.frameHeight}` : "off"}`);
    parts.push(`layers ${sizes.join(", ")}`);
  }
  if (s.audio && s.audio.codec) parts.push(s.audio.codec);
  if (s.rtt !== null) parts.push(`RTT ${(s.rtt * 1000).toFixed(0)} ms`);
  if (session.publish && s.availableOutgoingBitrate) {
    parts.push(`estimate ${(s.availableOutgoingBitrate / 1e6).toFixed(2)} Mbit/s`);
  }
  return parts.join(" · ");
}

/** A panel for one session: video, mute toggles, close, status and error lines. */
function addPanel(session) {
  const template = document.getElementById("panel");
  const panel = template.content.firstElementChild.cloneNode(true);
  const $ = (name) => panel.querySelector(`[data-role=${name}]`);
  const video = $("video");
  $("title").textContent = `${session.publish ? "publish" : "play"} ${session.header.app}/${session.header.stream}`;
  if (session.publish) video.muted = true; // no echo of one's own microphone
  panel.dataset.direction = session.publish ? "publish" : "play";
  for (const kind of ["audio", "video"]) {
    $(`mute-${kind}`).onclick = () => session.mute({ [kind]: !session.muted[kind] }).catch(() => {});
  }
  $("close").onclick = () => session.close();
  $("remove").onclick = () => {
    session.close();
    panel.remove();
  };
  session.options.onupdate = () => {
    panel.dataset.state = session.state;
    $("state").textContent = session.state;
    for (const kind of ["audio", "video"]) {
      const button = $(`mute-${kind}`);
      button.textContent = `${session.muted[kind] ? "unmute" : "mute"} ${kind}`;
      button.setAttribute("aria-pressed", String(session.muted[kind]));
      button.disabled = session.state !== "live";
    }
    $("close").disabled = session.state === "ended";
    const notes = [];
    if (!session.publish) {
      for (const kind of ["audio", "video"]) if (session.publisherMuted[kind]) notes.push(`publisher muted ${kind}`);
    }
    $("notes").textContent = notes.join(", ");
    $("error").textContent = session.error;
    const stream = session.publish ? session.localStream : session.remoteStream;
    if (stream && video.srcObject !== stream) {
      video.srcObject = stream;
      video.play().catch(() => {
        video.muted = true; // autoplay with sound refused: play muted (controls can unmute)
        video.play().catch(() => {});
      });
    }
  };
  if ("requestVideoFrameCallback" in video) {
    video.requestVideoFrameCallback(() => {
      session.timing.firstFrame = Date.now();
    });
  }
  document.getElementById("sessions").prepend(panel);
  session.panel = panel;
  session.options.onupdate(session);
  const timer = setInterval(async () => {
    if (session.state === "ended") {
      clearInterval(timer);
      $("status").textContent = `ended: ${session.endReason}`;
      return;
    }
    if (!session.pc) return;
    try {
      $("status").textContent = formatStatus(session, await session.stats());
    } catch {
      // the peer connection closed between the check and getStats
    }
  }, 1000);
  return panel;
}

async function main() {
  const form = document.getElementById("form");
  form.onsubmit = (event) => event.preventDefault();
  const fields = ["app", "stream", "uid", "token"];
  const params = new URLSearchParams(location.search);
  form.uid.value = `user-${Math.random().toString(36).slice(2, 8)}`;
  for (const name of fields) if (params.has(name)) form[name].value = params.get(name);
  // ?bundle=balanced|max-bundle|max-compat picks the peer connection's bundle policy.
  if (params.has("bundle")) {
    form.bundle.value = params.get("bundle");
    if (form.bundle.value !== params.get("bundle")) throw new Error(`unknown bundle policy ${params.get("bundle")}`);
  }
  // ?simulcast=1 ticks "simulcast": publishers capture 1280x720 and send three layers (q, h, f).
  if (params.has("simulcast")) {
    const value = params.get("simulcast");
    if (!["0", "1"].includes(value)) throw new Error(`simulcast must be 0 or 1, not ${value}`);
    form.simulcast.checked = value === "1";
  }
  const codecs = new Set(
    RTCRtpSender.getCapabilities("video")
      .codecs.map((c) => c.mimeType)
      .filter((m) => !/\/(rtx|red|ulpfec|flexfec-03)$/i.test(m)),
  );
  for (const mime of codecs) form.codec.add(new Option(mime.replace("video/", ""), mime));

  const { url, config } = await signalingUrl();
  document.getElementById("endpoint").textContent = url;
  if (config.open_mode) {
    if (!params.has("token")) form.token.value = "dev";
    document.getElementById("mode").textContent =
      "development mode: the server accepts any token (and only listens on loopback)";
  }
  if (!window.isSecureContext) {
    document.getElementById("mode").textContent +=
      " — this page is not a secure context: the camera needs https (or http://localhost)";
  }

  const start = (publish) => {
    const options = Object.fromEntries(fields.map((name) => [name, form[name].value.trim()]));
    const videoCodec = publish ? form.codec.value : "";
    const [bundlePolicy, simulcast] = [form.bundle.value, publish && form.simulcast.checked];
    const session = new Session({ ...options, url, publish, videoCodec, bundlePolicy, simulcast });
    window.sfu.sessions.push(session);
    addPanel(session);
    session.start().catch(() => {}); // the panel shows the error
    return session;
  };
  document.getElementById("publish").onclick = () => start(true);
  document.getElementById("play").onclick = () => start(false);
  window.sfu.ready = true;
}

window.sfu = { sessions: [], ready: false, Session, Signaling };
main().catch((error) => {
  document.getElementById("mode").textContent = `cannot start: ${error.message}`;
});
