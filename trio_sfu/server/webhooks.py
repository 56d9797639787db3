"""Webhooks: the server's events POSTed, signed, to the operator's URLs, never in the way of media.

Events: `publish` and `unpublish` (a publisher's session starts and ends), `play` and `stop` (a
player's), `recording_finished` (a recording's file is written). Each is one JSON object
`{"event", "app", "stream", "uid", "session", "via", "time", "reason"}` POSTed to every
`webhook_urls` entry with `X-Trio-Sfu-Signature: sha256=<hex>`, the HMAC-SHA256 of the body with
`webhook_secret` (the receiver recomputes it to trust the event). The packet path and signaling only
put events on a bounded queue (WEBHOOK_QUEUE; when full the event is dropped and counted); one task
delivers them, each with WEBHOOK_TIMEOUT per attempt and up to WEBHOOK_ATTEMPTS attempts, so an
unreachable receiver costs a log line per event and nothing else.
The HTTP client is h11 over a Trio TCP stream, or TLS for https:// URLs (certificates verified
against the system's CAs, or `webhook_ca_file`); the server's HTTP side is h11 too: one POST's worth of
HTTP/1.1 does not need a client library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = 1000
WEBHOOK_TIMEOUT = 2.0  # seconds per attempt (connect, send, read the status)
WEBHOOK_ATTEMPTS = 3
RETRY_DELAY = 0.5  # seconds before the second attempt, doubling


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, urls: tuple[str, ...], secret: str, ca_file: Path | None = None) -> None:
        self.urls = urls
        self.secret = secret
        self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._send, self._receive = trio.open_memory_channel[bytes](WEBHOOK_QUEUE)
        self.counters: dict[str, int] = {"queued": 0, "delivered": 0, "failed": 0, "dropped_queue_full": 0}

    def emit(self, event: str, **fields: Any) -> None:
        """Queue an event (never waits; a full queue drops it, counted)."""
        if not self.urls:
            return
        body = json.dumps({"event": event, "time": time.time(), **fields}).encode()
        try:
            self._send.send_nowait(body)
            self.counters["queued"] += 1
        except trio.WouldBlock:
            self.counters["dropped_queue_full"] += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for body in self._receive:
            for url in self.urls:
                await self._deliver(url, body)

    async def _deliver(self, url: str, body: bytes) -> None:
        delay = RETRY_DELAY
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                with trio.fail_after(WEBHOOK_TIMEOUT):
                    status = await _post(url, body, sign(self.secret, body), self._tls)
                if 200 <= status < 300:
                    self.counters["delivered"] += 1
                    return
                error = f"HTTP {status}"
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError,
                    ValueError) as exc:  # ssl.SSLError is an OSError
                error = repr(exc)
            if attempt < WEBHOOK_ATTEMPTS:
                await trio.sleep(delay)
                delay *= 2
        self.counters["failed"] += 1
        log.warning("event=webhook_failed url=%s attempts=%d error=%s", url, WEBHOOK_ATTEMPTS, error)


async def _post(url: str, body: bytes, signature: str, tls: ssl.SSLContext) -> int:
    """POST `body` to an http:// or https:// URL; the response's status."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URLs are http(s)://HOST[:PORT]/PATH, not {url!r}")
    stream: trio.abc.Stream
    if parts.scheme == "https":
        stream = await trio.open_ssl_over_tcp_stream(parts.hostname, parts.port or 443, ssl_context=tls)
    else:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
    async with stream:
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(method="POST", target=parts.path or "/", headers=[
            ("host", parts.netloc),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-trio-sfu-signature", signature),
            ("connection", "close"),
        ])
        data = client.send(request) + client.send(h11.Data(data=body)) + client.send(h11.EndOfMessage())
        await stream.send_all(data)
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(bytes(await stream.receive_some(4096)))
            elif isinstance(event, h11.Response):
                return int(event.status_code)
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("the webhook receiver closed without a response")
