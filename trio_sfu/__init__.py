"""trio_sfu: a WebRTC SFU on Trio.

Embedding it in an application: `from trio_sfu import open_server, Config` (see trio_sfu.embed and
docs/embedding.md). The names are imported on first use, so the sans-IO modules stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_sfu.embed import AuthError, AuthRequest, Config, Grant, Server, open_server

__all__ = ["AuthError", "AuthRequest", "Config", "Grant", "Server", "open_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trio_sfu import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'trio_sfu' has no attribute {name!r}")
