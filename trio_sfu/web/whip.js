// WHIP (RFC 9725) and WHEP with fetch: an offer POSTed, the answer in the 201, DELETE on its Location.
// The server is ICE-lite and learns addresses from connectivity checks, so the offer goes at once,
// without waiting for candidates. window.whip lets tests drive and read the page.

const status = (text) => { document.getElementById("status").textContent = text; };

async function exchange(kind, pc, app, stream, token) {
  await pc.setLocalDescription(await pc.createOffer());
  const headers = { "Content-Type": "application/sdp" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/${kind}/${encodeURIComponent(app)}/${encodeURIComponent(stream)}`, {
    method: "POST", headers, body: pc.localDescription.sdp,
  });
  const body = await response.text();
  if (response.status !== 201) throw new Error(`${kind.toUpperCase()} ${response.status}: ${body.trim()}`);
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  return response.headers.get("Location");
}

const sessions = [];

async function publish(app, stream, token) {
  const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
  document.getElementById("local").srcObject = media;
  const pc = new RTCPeerConnection();
  for (const track of media.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
  const location = await exchange("whip", pc, app, stream, token);
  sessions.push({ kind: "whip", pc, location, media });
  status(`publishing ${app}/${stream} (${location})`);
  return sessions.length - 1;
}

async function play(app, stream, token) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const remote = new MediaStream();
  pc.ontrack = (event) => {
    remote.addTrack(event.track);
    document.getElementById("remote").srcObject = remote;
  };
  const location = await exchange("whep", pc, app, stream, token);
  sessions.push({ kind: "whep", pc, location });
  status(`playing ${app}/${stream} (${location})`);
  return sessions.length - 1;
}

async function stop(index) {
  const session = sessions[index];
  const response = await fetch(session.location, { method: "DELETE" });
  session.pc.close();
  if (session.media) for (const track of session.media.getTracks()) track.stop();
  status(`stopped (${response.status})`);
  return response.status;
}

async function stats(index) {
  const report = await sessions[index].pc.getStats();
  const out = { video: null, audio: null, state: sessions[index].pc.connectionState };
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" || entry.type === "outbound-rtp") {
      out[entry.kind] = {
        frames: entry.framesDecoded ?? entry.framesEncoded ?? null,
        width: entry.frameWidth ?? null,
        packets: entry.packetsReceived ?? entry.packetsSent ?? null,
      };
    }
  });
  return out;
}

function fields() {
  const form = document.getElementById("form");
  return [form.app.value, form.stream.value, form.token.value];
}

document.getElementById("publish").onclick = () => publish(...fields()).catch((e) => status(String(e)));
document.getElementById("play").onclick = () => play(...fields()).catch((e) => status(String(e)));
document.getElementById("stop").onclick = () => {
  if (sessions.length) stop(sessions.length - 1).catch((e) => status(String(e)));
};

window.whip = { ready: true, publish, play, stop, stats, sessions };
