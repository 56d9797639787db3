"""WHIP (RFC 9725) and WHEP on the HTTP port: publish and play with one HTTP request each.

`POST /whip/{app}/{stream}` (an SDP offer, `Authorization: Bearer <token>`) publishes, `POST
/whep/{app}/{stream}` (a recvonly offer) plays; each answers `201 Created` with the answer SDP, a
`Location` (`/session/{id}`) and an `ETag`. `DELETE` on the location ends the session (players of a
WHIP publisher hear `publisher_closed`, as after `stream.close`); `PATCH` takes trickle candidates
(`application/trickle-ice-sdpfrag`) and answers 204 — the server is ICE-lite and learns the client's
addresses from its checks, so candidates need no handling — and an ICE restart (new credentials in
the fragment) gets 422: the client starts a new session instead.

A WHIP or WHEP session is a session like any other (the same tokens, grants, limits, router and
cluster claims); its "connection" is this service, which runs it until it ends or is deleted.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trio_sfu.server.session import Session
from trio_sfu.signaling.auth import AuthError
from trio_sfu.signaling.messages import ErrorCode, Header, SignalingError
from trio_sfu.wire.sdp import SdpError, parse_offer

if TYPE_CHECKING:
    from trio_sfu.server.server import Server

log = logging.getLogger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
MAX_NAME = 128  # app and stream names in a WHIP/WHEP path


class HttpError(Exception):
    """A refusal with its HTTP status and a message that says what to change."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


# Signaling error codes as WHIP/WHEP statuses (RFC 9725 section 4.2 and its references).
STATUS_OF = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNSUPPORTED_MEDIA: 406,  # SDP the server cannot serve (no common codec)
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.UNAVAILABLE: 503,
}


@attrs.define(eq=False)
class Resource:
    """One WHIP or WHEP session, reachable at /session/{id} until it ends."""

    ident: str
    session: Session
    address: str
    etag: str = attrs.field(factory=lambda: f'"{secrets.token_hex(8)}"')
    ice_ufrag: str = ""
    deleted: bool = False


class WhipService:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.resources: dict[str, Resource] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- POST ----

    async def open(
        self, *, publish: bool, app: str, stream: str, authorization: str | None, content_type: str | None,
        body: bytes, address: str,
    ) -> Resource:
        """A new session from an offer; HttpError says why not."""
        kind = "WHIP" if publish else "WHEP"
        if content_type is None or content_type.split(";")[0].strip().lower() != SDP:
            message = f"{kind} takes an SDP offer: send Content-Type: {SDP}"
            raise HttpError(415, message, [("accept-post", SDP)])
        if not app or not stream or len(app) > MAX_NAME or len(stream) > MAX_NAME:
            raise HttpError(404, f"{kind} resources are /{kind.lower()}/APP/STREAM")
        try:
            sdp = body.decode("utf-8")
            offer = parse_offer(sdp)
        except (UnicodeDecodeError, SdpError) as exc:
            raise HttpError(400, f"the offer is not usable SDP: {exc}") from None
        for media_kind in ("audio", "video"):
            if sum(1 for section in offer.media if section.kind == media_kind and section.usable) > 1:
                raise HttpError(422, f"{kind} takes at most one {media_kind} track; offer one")
        server = self.server
        token = _bearer(authorization)
        try:
            grant = await server.authorize(token, app, None, remote=address, via=kind.lower())
            (grant.check_publish if publish else grant.check_play)(stream)
        except AuthError as exc:
            raise HttpError(exc.code, exc.message) from None
        header = Header(app=app, uid=grant.uid or kind.lower(), stream=stream)
        key = (app, stream)
        nursery = self._nursery
        if nursery is None or server.shutting_down:
            raise HttpError(503, "the server is shutting down")
        resource: Resource | None = None

        def notify(session: Session, method: str, data: dict[str, Any]) -> None:
            log.info("event=whip_session_told method=%s data=%s resource=%s", method, data,
                     resource.ident if resource else "-")

        try:
            await server.prepare_offer(key, publish=publish, relay=False)
            try:
                session = server.open_session(
                    header, publish=publish, sdp=sdp, notify=notify, socket_sessions=0, address=address
                )
            except BaseException:
                server.offer_failed(key, publish=publish)
                raise
        except SignalingError as exc:
            raise HttpError(STATUS_OF.get(exc.code, 400), exc.message) from None
        session.remote = address
        resource = Resource(secrets.token_urlsafe(12), session, address, ice_ufrag=offer.ice_ufrag)
        self.resources[resource.ident] = resource
        nursery.start_soon(self._run, resource, name=f"<{kind} {app}/{stream}>")
        log.info("event=session_started app=%s stream=%s direction=%s via=%s remote=%s",
                 app, stream, session.direction, kind.lower(), address)
        return resource

    async def _run(self, resource: Resource) -> None:
        session = resource.session
        try:
            await session.run()
        finally:
            self.server.session_ended(session, resource.address)
            self.resources.pop(resource.ident, None)
            log.info("event=session_ended app=%s stream=%s direction=%s via=%s reason=%s",
                     session.header.app, session.header.stream, session.direction,
                     "whip" if session.publish else "whep",
                     session.ending.label if session.ending else "deleted")

    # ---- the resource ----

    def get(self, ident: str) -> Resource:
        resource = self.resources.get(ident)
        if resource is None:
            raise HttpError(404, "no such session (it ended, or never was)")
        return resource

    async def delete(self, ident: str) -> None:
        resource = self.get(ident)
        resource.deleted = True
        await resource.session.close_by_client()

    def patch(self, ident: str, content_type: str | None, if_match: str | None, body: bytes) -> None:
        """Trickle candidates (204, nothing to do for an ICE-lite server); an ICE restart: 422."""
        resource = self.get(ident)
        if content_type is None or content_type.split(";")[0].strip().lower() != TRICKLE:
            raise HttpError(415, f"PATCH takes {TRICKLE}", [("accept-patch", TRICKLE)])
        if if_match is not None and if_match.strip() not in ("*", resource.etag):
            raise HttpError(412, "If-Match does not name this session's current ETag")
        try:
            fragment = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "the SDP fragment is not UTF-8") from None
        for line in fragment.splitlines():
            if line.startswith("a=ice-ufrag:") and line[12:].strip() != resource.ice_ufrag:
                raise HttpError(422, "ICE restarts are not supported: DELETE this session and POST again")


def _bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header ("" when there is none: open mode takes it)."""
    if authorization is None:
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()
