"""The HTTP port: the demo page, `/config.json`, `/healthz` and `/metrics`.

A small HTTP/1.1 server: h11 parses and frames (sans-IO, like the rest of the server), this module
moves bytes between it and a trio stream (TCP, or TLS through `trio.SSLListener`). Only GET and HEAD of
a handful of fixed paths are served. Requests are bounded (headers by h11's incomplete-event limit,
bodies by `MAX_BODY`), a client gets `idle_timeout` seconds to send each request, the number of open
connections is capped, and no input ends anything but its own connection.

trio-websocket answers a plain GET with 400, so the page cannot share the signaling listener; the page
learns the signaling port from `/config.json` and takes the host from its own address.
"""

from __future__ import annotations

import http
import json
import logging
import ssl
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

import h11
import trio

from trio_sfu.server import metrics
from trio_sfu.server.admin import AdminApi, AdminError
from trio_sfu.server.listeners import bound_addresses, tcp_listeners
from trio_sfu.server.whip import SDP, TRICKLE, HttpError, WhipService
from trio_sfu.signaling.messages import SignalingError

if TYPE_CHECKING:
    from trio_sfu.server.server import Server

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024  # request line and headers; above it: 431
# Bodies: WHIP and WHEP offers up to the signaling message limit (browser offers are 5-6 KiB); the other
# routes take none: a small one is read and ignored, a larger one is 413.
MAX_BODY = 4 * 1024
BODY_ROUTES = (b"/whip/", b"/whep/", b"/session/")  # (the operator API takes no bodies)
MAX_REQUESTS_PER_CONNECTION = 1000
READ_SIZE = 16 * 1024
SEND_TIMEOUT = 10.0

WEB_FILES = {  # path -> (file in trio_sfu/web, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/whip.html": ("whip.html", "text/html; charset=utf-8"),  # WHIP publish and WHEP play with fetch
    "/whip.js": ("whip.js", "text/javascript; charset=utf-8"),
}
# The page loads only itself and its module, and talks to the signaling WebSocket on another port.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' blob: mediastream:; frame-ancestors 'none'"
)


class Response:
    def __init__(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-cache"),
            ("x-content-type-options", "nosniff"),
            *(headers or []),
        ]


def _json(value: object, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode() + b"\n", "application/json")


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, text.encode() + b"\n", headers=headers)


def load_web_files() -> dict[str, bytes]:
    folder = resources.files("trio_sfu") / "web"
    return {name: (folder / name).read_bytes() for name, _ in set(WEB_FILES.values())}


class HttpFrontend:
    """Serves one `Server`'s HTTP endpoints; `handle` takes any trio stream (tests use memory streams)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.registry = metrics.make_registry(server)
        self.files = load_web_files()
        self.connections = 0
        self.whip = WhipService(server)
        self.admin = AdminApi(server)
        self.routes: dict[str, Callable[[], Response]] = {
            "/healthz": self._healthz,
            "/metrics": self._metrics,
            "/config.json": self._config,
        }
        for path, (name, content_type) in WEB_FILES.items():
            self.routes[path] = self._file(name, content_type)

    # ---- listening ----

    async def serve(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (TLS when `ssl_context`); started() with the bound addresses."""
        listeners = await tcp_listeners(
            host, port, ssl_context, reuse_port=self.server.config.reuse_port
        )
        addresses = bound_addresses(listeners)
        wrapped: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, wrapped)
            task_status.started(addresses)

    # ---- one connection ----

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve requests on one connection until it closes, misbehaves or idles; never raises."""
        if self.connections >= self.server.config.http_max_connections:
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass  # the client went away, or its TLS handshake failed
        except Exception:
            log.exception("event=http_internal_error")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        timeout = self.server.config.http_idle_timeout
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            received: tuple[h11.Request, bytes] | None = None
            try:
                with trio.move_on_after(timeout):
                    received = await self._read_request(connection, stream)
            except h11.RemoteProtocolError as exc:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                    why = str(exc)[:200]
                    await self._send(stream, connection, _text(status, f"bad request: {why}"), close=True)
                return
            except _BodyTooLarge:
                await self._send(stream, connection, _text(413, "request body too large"), close=True)
                return
            if received is None:  # closed, or idle/slow for too long
                return
            request, body = received
            response = await self._respond(request, body, stream)
            keep = connection.their_state is h11.DONE
            await self._send(stream, connection, response, head=request.method == b"HEAD", close=not keep)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _read_request(
        self, connection: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[h11.Request, bytes] | None:
        """The next request and its (bounded) body; None when the peer closed."""
        request: h11.Request | None = None
        body = bytearray()
        limit = MAX_BODY
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_SIZE)
                connection.receive_data(bytes(data))
                if not data and request is None and connection.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                # h11 bounds the buffer while the head is incomplete; a head that arrived whole in
                # one read is measured here, so the limit does not depend on how bytes were split.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > MAX_HEADER_BYTES:
                    raise h11.RemoteProtocolError("request headers too large", error_status_hint=431)
                request = event
                if event.target.startswith(BODY_ROUTES):
                    limit = max(MAX_BODY, self.server.config.max_message_size)
                length = _content_length(event)
                if length is not None and length > limit:
                    raise _BodyTooLarge
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                return None if request is None else (request, bytes(body))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(
        self, stream: trio.abc.Stream, connection: h11.Connection, response: Response,
        *, head: bool = False, close: bool = False,
    ) -> None:
        self.server.http_responses[response.status] += 1
        headers = list(response.headers)
        if close:
            headers.append(("connection", "close"))
        reason = http.HTTPStatus(response.status).phrase.encode()
        data = connection.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if not head and response.body:
            data += connection.send(h11.Data(data=response.body))
        data += connection.send(h11.EndOfMessage())
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(data)
            return
        raise trio.BrokenResourceError("client does not read")

    # ---- routes ----

    async def _respond(self, request: h11.Request, body: bytes, stream: trio.abc.Stream) -> Response:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        parts = path.strip("/").split("/")
        if parts[0] in ("whip", "whep", "session"):
            return await self._whip(request, parts, body, stream)
        if parts[0] == "admin":
            return await self._admin(request, parts)
        if path == "/metrics/host":
            return await self._host_metrics(request)
        route = self.routes.get(path)
        if route is None:
            return _text(404, f"not found: {path[:200]}; try / (the demo page), /healthz or /metrics")
        if request.method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed: use GET or HEAD", [("allow", "GET, HEAD")])
        return route()

    async def _whip(
        self, request: h11.Request, parts: list[str], body: bytes, stream: trio.abc.Stream
    ) -> Response:
        """WHIP and WHEP (trio_sfu/server/whip.py): POST /whip|whep/APP/STREAM, then DELETE or PATCH
        /session/ID; OPTIONS anywhere there (CORS preflight)."""
        method = request.method.decode("ascii", "replace")
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        cors = [
            ("access-control-allow-origin", "*"),
            ("access-control-expose-headers", "Location, ETag, Accept-Patch, Accept-Post"),
        ]
        creating = parts[0] in ("whip", "whep")
        allowed = "POST, OPTIONS" if creating else "DELETE, PATCH, OPTIONS"
        if method == "OPTIONS":
            return Response(204, b"", headers=[
                *cors,
                ("access-control-allow-methods", allowed),
                ("access-control-allow-headers", "Authorization, Content-Type, If-Match"),
                ("access-control-max-age", "86400"),
                ("accept-post" if creating else "accept-patch", SDP if creating else TRICKLE),
            ])
        try:
            if creating:
                if method != "POST":
                    raise HttpError(405, "use POST (with an SDP offer) here", [("allow", allowed)])
                if len(parts) != 3:
                    raise HttpError(404, f"{parts[0].upper()} resources are /{parts[0]}/APP/STREAM")
                address = _peer_address(stream)
                resource = await self.whip.open(
                    publish=parts[0] == "whip", app=parts[1], stream=parts[2],
                    authorization=headers.get("authorization"), content_type=headers.get("content-type"),
                    body=body, address=address,
                )
                return Response(201, resource.session.negotiated.answer.encode(), SDP, headers=[
                    *cors,
                    ("location", f"/session/{resource.ident}"),
                    ("etag", resource.etag),
                    ("accept-patch", TRICKLE),
                ])
            if len(parts) != 2:
                raise HttpError(404, "sessions are /session/ID (the Location of the 201)")
            if method == "DELETE":
                await self.whip.delete(parts[1])
                return Response(200, b"", headers=cors)
            if method == "PATCH":
                self.whip.patch(parts[1], headers.get("content-type"), headers.get("if-match"), body)
                return Response(204, b"", headers=cors)
            raise HttpError(405, f"use {allowed} on a session", [("allow", allowed)])
        except HttpError as exc:
            return _text(exc.status, exc.message, [*cors, *exc.headers])

    async def _admin(self, request: h11.Request, parts: list[str]) -> Response:
        """The operator API (trio_sfu/server/admin.py)."""
        authorization = next(
            (value.decode("latin-1") for name, value in request.headers if name == b"authorization"), None
        )
        try:
            method = request.method.decode("ascii", "replace")
            status, value = await self.admin.handle(method, parts, authorization)
        except AdminError as exc:
            return _json({"error": exc.message}, exc.status)
        return _json(value, status)

    def _file(self, name: str, content_type: str) -> Callable[[], Response]:
        def serve() -> Response:
            return Response(
                200, self.files[name], content_type,
                [("content-security-policy", CONTENT_SECURITY_POLICY)] if name.endswith(".html") else [],
            )

        return serve

    def _healthz(self) -> Response:
        snap = self.server.snapshot()
        status = "shutting_down" if snap.shutting_down else "ok"
        return _json(
            {
                "status": status,
                "sessions": snap.sessions,
                "streams": snap.streams_published,
                "worker": self.server.config.worker_index,  # null: a single process
            },
            503 if snap.shutting_down else 200,
        )

    async def _host_metrics(self, request: h11.Request) -> Response:
        """Under `--workers N`, every worker's figures summed; one process's own otherwise."""
        if request.method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed: use GET or HEAD", [("allow", "GET, HEAD")])
        cluster = self.server.cluster
        try:
            text = await cluster.host_metrics() if cluster is not None else None
        except SignalingError as exc:
            return _text(503, exc.message)
        if text is None:
            return self._metrics()
        return Response(200, text, metrics.CONTENT_TYPE)

    def _metrics(self) -> Response:
        return Response(200, metrics.render(self.registry), metrics.CONTENT_TYPE)

    def _config(self) -> Response:
        """What the page needs to reach the signaling WebSocket: its port, path and scheme."""
        server = self.server
        ports = [port for _, port in server.signal_addresses] or [server.config.signal.port]
        return _json(
            {
                "signaling": {"port": ports[0], "path": "/ws", "tls": server.config.tls},
                "open_mode": server.verifier.open_mode,
                "version": "1.0",
            }
        )


class _BodyTooLarge(Exception):
    pass


def _peer_address(stream: trio.abc.Stream) -> str:
    """The client's IP (for per-address limits), "" where the stream has none (tests' memory streams)."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        return str(inner.socket.getpeername()[0])
    return ""


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
