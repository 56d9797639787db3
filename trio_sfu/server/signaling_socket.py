"""One WebSocket: its requests in order, its replies and server requests, its sessions.

The connection nursery holds a reader (this task), a writer draining a bounded outbox, the keepalive,
and one child nursery per session. A dropped socket ends the reader, which cancels the connection
nursery and with it every session the socket carried.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_sfu.config import Config
from trio_sfu.server.session import EndedBy, Ending, Session
from trio_sfu.signaling.auth import AuthError, Grant, TokenVerifier
from trio_sfu.signaling.limits import Limits
from trio_sfu.signaling.messages import (
    Ack,
    CloseData,
    CloseReason,
    ConnectData,
    ErrorCode,
    FrameError,
    Header,
    MuteData,
    OfferData,
    Reply,
    Request,
    ServerRequest,
    SignalingError,
    encode,
    error_reply,
    parse_frame,
)

log = logging.getLogger(__name__)

_ping_payloads = itertools.count()


class SignalingHost(Protocol):
    """What a connection needs of the server: the settings, limits and verifier every connection
    shares, and a place to open and end sessions (the server owns the router, mux and certificate)."""

    config: Config
    limits: Limits
    verifier: TokenVerifier
    counters: collections.Counter[str]

    def wall_clock(self) -> float: ...

    def open_session(
        self,
        header: Header,
        *,
        publish: bool,
        sdp: str,
        notify: Callable[[Session, str, dict[str, Any]], None],
        socket_sessions: int,
        address: str,
        max_layer: int | None = None,
        relay_layer: str | None = None,
    ) -> Session: ...

    def session_ended(self, session: Session, address: str) -> None: ...

    async def authorize(self, token: str, app: str, uid: str | None, *, remote: str, via: str) -> Grant: ...

    @property
    def cluster_verifier(self) -> TokenVerifier | None: ...

    async def prepare_offer(self, key: tuple[str, str], *, publish: bool, relay: bool) -> None: ...

    def offer_failed(self, key: tuple[str, str], *, publish: bool) -> None: ...


class SignalingSocket:
    OUTBOX = 256

    def __init__(
        self,
        server: SignalingHost,
        ws: WebSocketConnection,
        remote: str,
        address: str = "",
        *,
        relay: bool = False,
    ) -> None:
        self.server = server
        # A connection on the cluster listener: another worker's relay, with a cluster-secret token.
        self.relay = relay
        self.ws = ws
        self.remote = remote
        self.address = address  # the client's IP, for per-address limits
        self._requests = server.limits.request_bucket()
        self.grant: Grant | None = None
        self.sessions: dict[str, Session] = {}
        self._outbox_send, self._outbox = trio.open_memory_channel[str](self.OUTBOX)
        self._nursery: trio.Nursery | None = None
        self._last_heard = trio.current_time()
        self.closing = False

    def __repr__(self) -> str:
        return f"<SignalingSocket {self.remote}>"

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write, name=f"{self!r}.writer")
            nursery.start_soon(self._keepalive, name=f"{self!r}.keepalive")
            try:
                await self._read()
            finally:
                for session in list(self.sessions.values()):
                    session.connection_gone()  # how they ended, for their players and the log
                nursery.cancel_scope.cancel()

    # ---- outgoing ----

    def send(self, message: Reply | ServerRequest) -> None:
        """Queue a frame; a client that stops reading is dropped rather than buffered forever."""
        try:
            self._outbox_send.send_nowait(encode(message))
        except trio.WouldBlock:
            log.warning("event=client_not_reading remote=%s action=disconnect", self.remote)
            self.abort()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # Closed: we are shutting down. Broken: the writer stopped because the socket broke, and
            # the reader has not noticed yet. Either way nobody can read this; never raise it into
            # the session (or the shutdown) that is telling this client something.
            pass

    def notify(self, session: Session, method: str, data: dict[str, Any]) -> None:
        header = session.header
        self.send(
            ServerRequest(method=method, app=header.app, uid=header.uid, stream=header.stream, data=data)
        )

    def abort(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _write(self) -> None:
        async with self._outbox:
            async for text in self._outbox:
                try:
                    await self.ws.send_message(text)
                except ConnectionClosed:
                    break
        # The outbox was closed (shutdown) and drained: say goodbye, then stop the reader.
        if self.closing:
            with trio.move_on_after(1):
                await self.ws.aclose(1001, "server shutdown")
        self.abort()

    async def _keepalive(self) -> None:
        """Ping every interval; drop a socket silent for longer than the timeout (decision 6)."""
        config = self.server.config
        async with trio.open_nursery() as pings:
            while True:
                await trio.sleep(config.keepalive_interval)
                if trio.current_time() - self._last_heard > config.keepalive_timeout:
                    log.info("event=keepalive_timeout remote=%s", self.remote)
                    self.abort()
                    return
                pings.start_soon(self._ping)

    async def _ping(self) -> None:
        try:
            await self.ws.ping(next(_ping_payloads).to_bytes(8, "big"))
        except ConnectionClosed:
            return
        self._last_heard = trio.current_time()

    # ---- incoming ----

    async def _read(self) -> None:
        while True:
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return
            self._last_heard = trio.current_time()
            reply = await self.handle(frame)
            if reply is not None:
                self.send(reply)

    async def handle(self, text: str | bytes) -> Reply | None:
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            self.server.counters["bad_request"] += 1
            return error_reply(exc.on_result, exc.header, exc.code, exc.message)
        if isinstance(frame, Ack):
            return None
        try:
            self.server.limits.check_rate(self._requests, trio.current_time())
            data = await self._dispatch(frame)
        except SignalingError as exc:
            log.info(
                "event=request_refused method=%s code=%d app=%s stream=%s remote=%s detail=%r",
                frame.method.value,
                exc.code,
                frame.header.app,
                frame.header.stream,
                self.remote,
                exc.message,
            )
            return error_reply(frame.method.result, frame.header, exc.code, exc.message)
        except Exception:
            log.exception("event=internal_error method=%s remote=%s", frame.method, self.remote)
            return error_reply(
                frame.method.result,
                frame.header,
                ErrorCode.INTERNAL,
                "internal error; the server logged it — please report",
            )
        return Reply.to(frame.method.result, frame.header, data=data)

    async def _dispatch(self, request: Request) -> dict[str, Any]:
        data = request.data
        if isinstance(data, ConnectData):
            return await self._connect(request, data)
        grant = self._authorize(request)
        if not request.header.stream:
            raise SignalingError(ErrorCode.BAD_REQUEST, "stream: a stream name is required")
        if isinstance(data, OfferData):
            return await self._offer(request, data, grant)
        session = self.sessions.get(request.header.stream)
        if session is None:
            raise SignalingError(
                ErrorCode.NOT_FOUND,
                f"no session for stream {request.header.stream!r} on this connection",
            )
        if isinstance(data, MuteData):
            return self._mute(session, data)
        assert isinstance(data, CloseData)
        await session.close_by_client()
        return {}

    async def _connect(self, request: Request, data: ConnectData) -> dict[str, Any]:
        header = request.header
        if not header.app:
            raise SignalingError(ErrorCode.BAD_REQUEST, "app: an app name is required")
        try:
            if self.relay:
                verifier = self.server.cluster_verifier
                if verifier is None:
                    raise SignalingError(ErrorCode.FORBIDDEN, "this server takes no relays")
                self.grant = verifier.verify(data.token, header.app, header.uid, self.server.wall_clock())
            else:
                self.grant = await self.server.authorize(
                    data.token, header.app, header.uid, remote=self.address, via="websocket"
                )
        except AuthError as exc:
            raise SignalingError(ErrorCode(exc.code), exc.message) from None
        return {}

    def _authorize(self, request: Request) -> Grant:
        if self.grant is None:
            raise SignalingError(
                ErrorCode.UNAUTHORIZED, "not authenticated: send stream.connect with a token first"
            )
        try:
            self.grant.check_request(request.header.app, request.header.uid, self.server.wall_clock())
        except AuthError as exc:
            raise SignalingError(ErrorCode(exc.code), exc.message) from None
        return self.grant

    async def _offer(self, request: Request, data: OfferData, grant: Grant) -> dict[str, Any]:
        header = request.header
        data.check()
        try:
            (grant.check_publish if data.publish else grant.check_play)(header.stream)
        except AuthError as exc:
            raise SignalingError(ErrorCode(exc.code), exc.message) from None
        existing = self.sessions.get(header.stream)
        if existing is not None:
            raise SignalingError(
                ErrorCode.CONFLICT,
                f"this connection already has a {existing.direction} session for stream "
                f"{header.stream!r}; close it first",
            )
        key = (header.app, header.stream)
        if self.relay and data.publish:
            raise SignalingError(ErrorCode.FORBIDDEN, "the cluster listener only serves relays' plays")
        if data.layer is not None and not self.relay:
            raise SignalingError(ErrorCode.BAD_REQUEST, "data.layer is for relays between servers")
        await self.server.prepare_offer(key, publish=data.publish, relay=self.relay)
        try:
            session = self.server.open_session(
                header,
                publish=data.publish,
                sdp=data.sdp,
                notify=self.notify,
                socket_sessions=len(self.sessions),
                address=self.address,
                max_layer=data.max_layer,
                relay_layer=data.layer if data.layer is not None else ("" if self.relay else None),
            )
        except BaseException:
            self.server.offer_failed(key, publish=data.publish)
            raise
        session.remote = self.remote
        self.sessions[header.stream] = session
        assert self._nursery is not None
        self._nursery.start_soon(self._run_session, session, name=repr(session))
        log.info(
            "event=session_started app=%s stream=%s direction=%s remote=%s",
            header.app,
            header.stream,
            session.direction,
            self.remote,
        )
        reply: dict[str, Any] = {"publish": data.publish, "sdp": session.negotiated.answer}
        if self.relay:
            # A relay plays each other layer on a leg of its own; this leg carries `layer`.
            reply["layers"], reply["layer"] = session.layer_rids(), session.video_rid()
        return reply

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        finally:
            self.server.session_ended(session, self.address)
            if self.sessions.get(session.header.stream) is session:
                del self.sessions[session.header.stream]
            log.info(
                "event=session_ended app=%s stream=%s direction=%s reason=%s",
                session.header.app,
                session.header.stream,
                session.direction,
                (session.ending or Ending(EndedBy.CONNECTION)).label,  # cancelled from above
            )

    def _mute(self, session: Session, data: MuteData) -> dict[str, Any]:
        changed = session.set_muted(audio=data.audio, video=data.video)
        if session.publish and changed and session.publication is not None:
            flags = session.mute_flags()
            for player in session.publication.players:
                assert isinstance(player, Session)
                player.notify_publisher_mute(flags)
        return session.mute_flags()

    # ---- shutdown ----

    def shut_down(self) -> None:
        """Tell every session's client `server_shutdown`, then let the writer flush and close."""
        self.closing = True
        for session in list(self.sessions.values()):
            session.end(CloseReason.SERVER_SHUTDOWN)
        self._outbox_send.close()
