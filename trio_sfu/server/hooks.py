"""What an application embedding the server plugs in (see trio_sfu.embed): who may do what, and the
server's events as they happen.

`authorize` replaces or extends the JWT check: it gets an `AuthRequest` (the token, the app, the uid
the client claims, where the request came from) and returns a `Grant` (what this client may publish
and play), or raises `AuthError(401 or 403, message)`; the message reaches the client as its
`err_msg`. `request.jwt()` is the built-in check, for a hook that only adds to it. It may be a plain
function or a coroutine function (a database lookup). It is asked at `stream.connect` and for every
WHIP and WHEP request; the Grant is then checked on every offer, as tokens are.

`on_event` gets each event the webhooks get (`publish`, `unpublish`, `play`, `stop`,
`recording_finished`) as `(name, fields)`, synchronously, on the server's task: it must not block
(start a task, or put the event on a channel). An exception it raises is logged and ignored.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from trio_sfu.signaling.auth import AuthError, Grant, TokenVerifier

log = logging.getLogger(__name__)


@attrs.frozen
class AuthRequest:
    token: str
    app: str
    uid: str | None  # the uid the client claims (None: WHIP and WHEP name none)
    remote: str  # the client's address, "HOST:PORT"
    via: str  # "websocket", "whip" or "whep"
    verifier: TokenVerifier = attrs.field(repr=False)
    now: float = 0.0

    def jwt(self) -> Grant:
        """The server's own check of the token (its configured key; open mode without one)."""
        return self.verifier.verify(self.token, self.app, self.uid, self.now)


Authorize = Callable[[AuthRequest], "Grant | Awaitable[Grant]"]
OnEvent = Callable[[str, dict[str, Any]], None]


async def authorize(hook: Authorize | None, request: AuthRequest) -> Grant:
    """The Grant for `request`: the hook's, else the JWT check's. AuthError (401/403) refuses."""
    if hook is None:
        return request.jwt()
    try:
        result = hook(request)
        grant = await result if inspect.isawaitable(result) else result
    except AuthError:
        raise
    except Exception:
        log.exception("event=authorize_hook_failed app=%s via=%s", request.app, request.via)
        raise AuthError(403, "the server's authorization failed; try again or ask its operator") from None
    if not isinstance(grant, Grant):
        log.error("event=authorize_hook_bad_result type=%s", type(grant).__name__)
        raise AuthError(403, "the server's authorization failed; try again or ask its operator")
    grant.check_request(request.app, request.uid, request.now)
    return grant


def tell(hook: OnEvent | None, event: str, fields: dict[str, Any]) -> None:
    if hook is None:
        return
    try:
        hook(event, fields)
    except Exception:
        log.exception("event=on_event_hook_failed name=%s", event)
