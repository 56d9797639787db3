"""Janus (Debian's `janus` package) as a second server under the same bench: its VideoRoom plugin over
the plain HTTP API, on loopback only.

Janus is configured as ICE-lite (so the bench's legs are the controlling agents, as they are with
trio_sfu), binds HTTP to 127.0.0.1 and gathers candidates on 127.0.0.1 only. A publisher joins room
1234 and publishes with our offer; a player joins as a subscriber, gets Janus's offer and answers it
(recvonly, setup:active). Each leg has its own Janus session, kept alive by its long poll.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import trio

from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME, EXT_MID

from . import procfs
from .proto import (
    JANUS_MEDIA_HOST,
    Answer,
    LocalParams,
    SignalingError,
    build_offer,
    check_simulcast_answer,
    parse_answer,
)

ROOM = 1234
PLUGIN = "janus.plugin.videoroom"
_transactions = itertools.count()


def janus_binary() -> str | None:
    return shutil.which("janus")


def _library_folder() -> Path:
    for candidate in [*sorted(Path("/usr/lib").glob("*/janus")), Path("/usr/lib/janus")]:
        if (candidate / "plugins" / "libjanus_videoroom.so").exists():
            return candidate
    raise FileNotFoundError("Janus plugins not found (is Debian's janus package installed?)")


def write_config(folder: Path, http_port: int, event_loops: int = 0) -> list[str]:
    """A private configuration (nothing in /etc/janus is used); returns the command line.

    `event_loops` > 0 shares that many media threads between all handles; 0 is Janus's default of one
    thread per handle (which thrashes with hundreds of subscribers on a few cores)."""
    lib = _library_folder()
    keep = {"plugins": "libjanus_videoroom.so", "transports": "libjanus_http.so"}
    disabled = {
        kind: ",".join(p.name for p in sorted((lib / kind).glob("*.so")) if p.name != keep.get(kind))
        for kind in ("plugins", "transports", "events", "loggers")
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "janus.jcfg").write_text(f"""
general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib / 'plugins'}"
    transports_folder = "{lib / 'transports'}"
    events_folder = "{lib / 'events'}"
    loggers_folder = "{lib / 'loggers'}"
    debug_level = 3
    debug_timestamps = true
    debug_colors = false
    interface = "127.0.0.1"
    session_timeout = 120
    server_name = "trio_sfu-bench"
    {f"event_loops = {event_loops}" if event_loops > 0 else ""}
}}
certificates: {{
}}
media: {{
    ipv6 = false
    rtp_port_range = "20000-60000"
}}
nat: {{
    nice_debug = false
    ice_lite = true
    ice_enforce_list = "{JANUS_MEDIA_HOST}"
    ignore_mdns = true
    full_trickle = false
}}
plugins: {{
    disable = "{disabled['plugins']}"
}}
transports: {{
    disable = "{disabled['transports']}"
}}
loggers: {{
    disable = "{disabled['loggers']}"
}}
events: {{
    broadcast = false
    disable = "{disabled['events']}"
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""
general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text(f"""
general: {{
}}
room-{ROOM}: {{
    description = "bench"
    publishers = 1
    bitrate = 2500000
    fir_freq = 0
    audiocodec = "opus"
    videocodec = "vp8"
    audiolevel_ext = false
    videoorient_ext = false
    playoutdelay_ext = false
    transport_wide_cc_ext = false
    record = false
}}
""")
    binary = janus_binary()
    if binary is None:
        raise FileNotFoundError("janus is not installed (apt-get install janus)")
    return [binary, "-F", str(folder), "-C", str(folder / "janus.jcfg"), "-o"]


def prepare_network() -> None:
    """Give Janus an address it will gather on, without leaving loopback.

    Janus skips every interface flagged IFF_LOOPBACK when it gathers candidates (ice.c,
    janus_ice_setup_local), so on a loopback-only host it has none and fails the offer. Inside the
    bench's private network namespace, a veth pair connected to nothing carries 127.0.0.2/32 (a loopback
    address: traffic to it is delivered locally, nothing can leave). Refused outside a private namespace.
    """
    if not procfs.loopback_only():
        raise RuntimeError("the Janus bench needs a private, loopback-only network namespace "
                           "(run it without --no-netns, or inside unshare --net)")
    addresses = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    if f" {JANUS_MEDIA_HOST}/" in addresses:
        return
    for command in (
        ["ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
        ["ip", "link", "set", "bench0", "addrgenmode", "none"],  # no IPv6 link-local addresses
        ["ip", "link", "set", "bench1", "addrgenmode", "none"],
        ["ip", "addr", "add", f"{JANUS_MEDIA_HOST}/32", "dev", "bench0"],
        ["ip", "link", "set", "bench1", "up"],
        ["ip", "link", "set", "bench0", "up"],
    ):
        subprocess.run(command, check=True, capture_output=True)


# --------------------------------------------------------------------------- HTTP


async def http_json(url: str, body: dict[str, Any] | None = None, *, timeout: float = 40.0) -> Any:
    """One request on its own connection (h11 over a Trio TCP stream); the decoded JSON reply."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    data = json.dumps(body).encode() if body is not None else b""
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    if body is not None:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    connection = h11.Connection(h11.CLIENT)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            out = connection.send(h11.Request(method="POST" if body is not None else "GET",
                                              target=target, headers=headers))
            if data:
                out += connection.send(h11.Data(data=data))
            out += connection.send(h11.EndOfMessage())
            await stream.send_all(out)
            chunks: list[bytes] = []
            status = 0
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    if status != 200:
        raise SignalingError(f"Janus HTTP {status} for {target}")
    return json.loads(b"".join(chunks))


def _transaction() -> str:
    return f"t{next(_transactions)}-{secrets.token_hex(4)}"


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await http_json(url, {"janus": "info", "transaction": _transaction()}, timeout=2)
            if reply.get("janus") == "server_info":
                return
        except (OSError, SignalingError, trio.TooSlowError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SignalingError(f"Janus did not answer on {url} within {timeout:.0f} s")
        await trio.sleep(0.1)


# --------------------------------------------------------------------------- one leg's signaling


class JanusSignaling:
    """One Janus session with one VideoRoom handle; events arrive through the session's long poll."""

    def __init__(self, url: str, session: int, handle: int) -> None:
        self.url = url
        self.session_url = f"{url}/{session}"
        self.handle_url = f"{url}/{session}/{handle}"
        self._events_send, self._events = trio.open_memory_channel[dict[str, Any]](64)
        self.closed_by_server: str | None = None
        self.offer_sent_at = 0.0

    async def long_poll(self) -> None:
        while True:
            try:
                events = await http_json(f"{self.session_url}?maxev=10", timeout=70)
            except (OSError, SignalingError, trio.TooSlowError, ValueError):
                await trio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                kind = event.get("janus")
                if kind in ("hangup", "detached"):
                    self.closed_by_server = f"{kind}: {event.get('reason', '')}".strip()
                if kind == "event":
                    await self._events_send.send(event)

    async def message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"janus": "message", "transaction": _transaction(), "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        reply: dict[str, Any] = await http_json(self.handle_url, request)
        if reply.get("janus") not in ("ack", "success"):
            raise SignalingError(f"Janus {body.get('request')}: {reply.get('error')}")
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise SignalingError(f"Janus {body.get('request')}: {data['error']}")
        return reply

    async def event(self, wanted: str) -> dict[str, Any]:
        """The next plugin event whose `videoroom` field is `wanted` (errors raise)."""
        while True:
            event = await self._events.receive()
            data = event.get("plugindata", {}).get("data", {})
            if "error" in data:
                raise SignalingError(f"Janus: {data['error']}")
            if data.get("videoroom") == wanted or (wanted == "configured" and data.get("configured")):
                return event

    async def negotiate(
        self, local: LocalParams, *, publish: bool, token: str, rids: tuple[str, ...] = ()
    ) -> Answer:
        if publish:
            await self.message({"request": "join", "ptype": "publisher", "room": ROOM, "display": "bench"})
            await self.event("joined")
            self.offer_sent_at = time.monotonic()
            offer = build_offer(local, publish=True, rids=rids)
            await self.message({"request": "publish", "audio": True, "video": True},
                               {"type": "offer", "sdp": offer, "trickle": False})
            event = await self.event("configured")
            accepted = parse_answer(event["jsep"]["sdp"])
            check_simulcast_answer(accepted, rids)  # untested with Janus (its VideoRoom takes rids)
            return accepted
        listing = await self.message({"request": "listparticipants", "room": ROOM})
        participants = listing["plugindata"]["data"].get("participants", [])
        feeds = [p["id"] for p in participants if p.get("publisher")]
        if not feeds:
            raise SignalingError("nobody publishes in the Janus room")
        self.offer_sent_at = time.monotonic()
        await self.message({"request": "join", "ptype": "subscriber", "room": ROOM,
                            "streams": [{"feed": feeds[0]}]})
        event = await self.event("attached")
        remote = parse_answer(event["jsep"]["sdp"])
        answer = {"type": "answer", "sdp": build_answer(remote, local), "trickle": False}
        await self.message({"request": "start"}, answer)
        return remote


@contextlib.asynccontextmanager
async def open_janus(url: str, *, timeout: float = 20.0) -> AsyncIterator[JanusSignaling]:
    with trio.fail_after(timeout):
        created = await http_json(url, {"janus": "create", "transaction": _transaction()})
        session = created["data"]["id"]
        attached = await http_json(f"{url}/{session}", {"janus": "attach", "plugin": PLUGIN,
                                                        "transaction": _transaction()})
        handle = attached["data"]["id"]
    signaling = JanusSignaling(url, session, handle)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signaling.long_poll)
            try:
                yield signaling
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(2) as cleanup:
            cleanup.shield = True
            with contextlib.suppress(OSError, SignalingError, ValueError):
                await http_json(signaling.session_url, {"janus": "destroy", "transaction": _transaction()})


def build_answer(offer: Answer, local: LocalParams) -> str:
    """Answer a Janus subscriber offer: receive each audio/video section with its own payload type."""
    mids = [s.mid for s in offer.sections if s.port != 0 and s.mid is not None]
    lines = ["v=0", f"o=- {int.from_bytes(os.urandom(7), 'big')} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if mids:
        lines.append("a=group:BUNDLE " + " ".join(mids))
    lines.append("a=msid-semantic: WMS *")
    first = True
    wanted = {"audio": "opus/48000", "video": "vp8/90000"}
    for section in offer.sections:
        pt = next((pt for pt, codec in section.rtpmaps.items()
                   if codec.lower().startswith(wanted.get(section.kind, "-"))), None)
        if section.port == 0 or pt is None:
            lines += [f"m={section.kind} 0 UDP/TLS/RTP/SAVPF {' '.join(section.formats) or '0'}",
                      "c=IN IP4 0.0.0.0"]
            if section.mid is not None:
                lines.append(f"a=mid:{section.mid}")
            continue
        lines += [f"m={section.kind} {local.port if first else 9} UDP/TLS/RTP/SAVPF {pt}",
                  "c=IN IP4 127.0.0.1", "a=rtcp:9 IN IP4 0.0.0.0"]
        if first:
            lines += [f"a=candidate:1 1 udp 2122260223 {local.host} {local.port} typ host generation 0",
                      "a=end-of-candidates"]
        first = False
        lines += [f"a=ice-ufrag:{local.ice_ufrag}", f"a=ice-pwd:{local.ice_pwd}",
                  f"a=fingerprint:sha-256 {local.fingerprint}", "a=setup:active"]
        if section.mid is not None:
            lines.append(f"a=mid:{section.mid}")
        for uri in (EXT_MID, EXT_ABS_SEND_TIME):
            if uri in section.extensions:
                lines.append(f"a=extmap:{section.extensions[uri]} {uri}")
        lines += ["a=recvonly", "a=rtcp-mux", f"a=rtpmap:{pt} {section.rtpmaps[pt]}"]
        if section.kind == "video":
            lines += [f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli", f"a=rtcp-fb:{pt} ccm fir"]
    return "\r\n".join(lines) + "\r\n"
