"""Signaling messages of PROTOCOL.md: their exact JSON shapes, and parsing that never trusts input.

Every frame is decoded in one place, `parse_frame`, so that each way a frame can be wrong maps to one
documented error code (PROTOCOL.md decision 1) and the reply can still echo what was readable.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Final, TypeAlias

import attrs
import cattrs

VERSION: Final = "1.0"


class Method(enum.StrEnum):
    CONNECT = "stream.connect"
    OFFER = "stream.offer"
    MUTE = "stream.mute"
    CLOSE = "stream.close"

    @property
    def result(self) -> str:
        """The `on_result` name of this method's reply."""
        return _RESULT_OF[self]


_RESULT_OF: Final = {
    Method.CONNECT: "stream.connected",
    Method.OFFER: "stream.answer",
    Method.MUTE: "stream.muted",
    Method.CLOSE: "stream.closed",
}

ACK: Final = "ack"


class ErrorCode(enum.IntEnum):
    OK = 0
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    UNSUPPORTED_MEDIA = 415
    UNSUPPORTED_VERSION = 426
    TOO_MANY_REQUESTS = 429
    INTERNAL = 500
    UNAVAILABLE = 503


class CloseReason(enum.StrEnum):
    """Why the server ended a session (PROTOCOL.md decision 5)."""

    PUBLISHER_CLOSED = "publisher_closed"
    PUBLISHER_GONE = "publisher_gone"
    TRANSPORT_FAILED = "transport_failed"
    TIMEOUT = "timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    KICKED = "kicked"


class SignalingError(Exception):
    """A request that fails with a documented code; becomes an error reply, never a crash."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class ConnectData:
    token: str


MAX_LAYER_INDEX: Final = 7


@attrs.frozen
class OfferData:
    publish: bool
    sdp: str
    # Extension (docs/protocol.md): a player's cap on simulcast layers, 0 the lowest; null: none.
    max_layer: int | None = None
    # Cluster listener only (docs/cluster.md): the simulcast layer (rid) a relay leg carries.
    layer: str | None = None

    def check(self) -> None:
        if self.layer is not None and not (0 < len(self.layer) <= 16 and self.layer.isalnum()):
            raise SignalingError(ErrorCode.BAD_REQUEST, "data.layer: a simulcast rid (letters and digits)")
        if self.max_layer is not None and not 0 <= self.max_layer <= MAX_LAYER_INDEX:
            raise SignalingError(
                ErrorCode.BAD_REQUEST,
                f"data.max_layer: must be 0 (the lowest layer) to {MAX_LAYER_INDEX}, got {self.max_layer}",
            )


@attrs.frozen
class MuteData:
    video: bool | None = None
    audio: bool | None = None


@attrs.frozen
class CloseData:
    reason: str | None = None


RequestData: TypeAlias = ConnectData | OfferData | MuteData | CloseData

_DATA_TYPE: Final[dict[Method, type[Any]]] = {
    Method.CONNECT: ConnectData,
    Method.OFFER: OfferData,
    Method.MUTE: MuteData,
    Method.CLOSE: CloseData,
}


@attrs.frozen
class Header:
    """What a reply echoes: the request's app, uid and stream, or "" where they were unreadable."""

    app: str = ""
    uid: str = ""
    stream: str = ""


@attrs.frozen
class Request:
    """A request as received; `header` is what its reply echoes."""

    method: Method
    header: Header
    data: RequestData


@attrs.frozen(kw_only=True)
class Reply:
    """The `ack` every request gets, field for field as it goes on the wire."""

    version: str = VERSION
    err: int = 0
    err_msg: str = "success"
    method: str = ACK
    on_result: str
    app: str
    uid: str
    stream: str
    data: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def to(cls, on_result: str, header: Header, **fields: Any) -> Reply:
        return cls(
            on_result=on_result, app=header.app, uid=header.uid, stream=header.stream, **fields
        )


@attrs.frozen(kw_only=True)
class ServerRequest:
    """A request the server initiates (`stream.mute`, `stream.close`), as it goes on the wire."""

    version: str = VERSION
    method: str
    app: str
    uid: str
    stream: str
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Ack:
    """A peer's reply to one of the server's own requests; nobody answers it."""

    on_result: str
    err: int
    header: Header


Frame: TypeAlias = Request | Ack


class FrameError(SignalingError):
    """A frame that cannot become a request; carries what the error reply must echo."""

    def __init__(self, code: ErrorCode, message: str, on_result: str, header: Header) -> None:
        super().__init__(code, message)
        self.on_result = on_result
        self.header = header


def _strict(kind: type[Any]) -> Any:
    """A cattrs hook that refuses values of another JSON type instead of coercing them."""

    def structure(value: Any, _: Any) -> Any:
        # bool is a subclass of int in Python but not in JSON.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {_JSON_NAMES[kind]}, got {_json_type(value)}")
        return value

    return structure


_JSON_NAMES: Final = {str: "string", bool: "boolean", int: "integer"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


converter: Final = cattrs.Converter()
for _kind in (str, bool, int):
    converter.register_structure_hook(_kind, _strict(_kind))


def _structure_data(method: Method, data: Any) -> RequestData:
    if not isinstance(data, dict):
        raise TypeError(f"data: expected object, got {_json_type(data)}")
    try:
        return converter.structure(data, _DATA_TYPE[method])  # type: ignore[no-any-return]
    except cattrs.BaseValidationError as exc:
        details = "; ".join(cattrs.transform_error(exc, path="data"))
        raise TypeError(details) from None


def _text_field(message: dict[str, Any], key: str) -> str:
    value = message.get(key, "")
    return value if isinstance(value, str) else ""


def parse_frame(frame: str | bytes) -> Frame:
    """Decode one WebSocket message into a request or an ack, or raise `FrameError`."""
    empty = Header()
    if isinstance(frame, bytes):
        raise FrameError(
            ErrorCode.BAD_REQUEST, "binary frames are not supported: send JSON as text", "", empty
        )
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise FrameError(ErrorCode.BAD_REQUEST, f"not valid JSON: {exc}", "", empty) from None
    if not isinstance(message, dict):
        raise FrameError(
            ErrorCode.BAD_REQUEST, f"expected a JSON object, got {_json_type(message)}", "", empty
        )
    header = Header(
        app=_text_field(message, "app"),
        uid=_text_field(message, "uid"),
        stream=_text_field(message, "stream"),
    )
    raw_method = message.get("method")
    if raw_method == ACK:
        err = message.get("err")
        return Ack(
            on_result=_text_field(message, "on_result"),
            err=err if isinstance(err, int) and not isinstance(err, bool) else -1,
            header=header,
        )
    try:
        method = Method(raw_method) if isinstance(raw_method, str) else Method("")
    except ValueError:
        method_text = json.dumps(raw_method)[:64]
        raise FrameError(
            ErrorCode.BAD_REQUEST,
            f"unknown method {method_text}; expected one of {', '.join(m.value for m in Method)}",
            "",
            header,
        ) from None
    version = message.get("version")
    if version != VERSION:
        shown = "missing" if version is None else f"unsupported ({json.dumps(version)[:32]})"
        raise FrameError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"version {shown}: this server speaks version {VERSION}",
            method.result,
            header,
        )
    problems = [
        f"{key}: expected string, got {_json_type(message[key])}"
        for key in ("app", "uid", "stream")
        if key in message and not isinstance(message[key], str)
    ]
    try:
        data = _structure_data(method, message.get("data", {}))
    except TypeError as exc:
        problems.append(str(exc))
    if problems:
        raise FrameError(ErrorCode.BAD_REQUEST, "; ".join(problems), method.result, header)
    return Request(method=method, header=header, data=data)


def encode(message: Reply | ServerRequest) -> str:
    return json.dumps(converter.unstructure(message))


def error_reply(on_result: str, header: Header, code: ErrorCode, message: str) -> Reply:
    return Reply.to(on_result, header, err=int(code), err_msg=message)
