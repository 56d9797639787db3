"""`python -m trio_sfu` as a real process on real sockets: start-up lines, limits, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from ..conftest import fixture_sdp

PUBLISH_SDP = fixture_sdp("chromium_offer_publish")


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_sfu", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []

    def read_listeners(self, count: int) -> list[str]:
        assert self.proc.stdout is not None
        while len(self.lines) < count:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.proc.wait()} {self.proc.stderr.read()}")  # type: ignore[union-attr]
            self.lines.append(line.strip())
        return self.lines

    @property
    def ws_url(self) -> str:
        return next(line.split()[1] for line in self.lines if line.startswith("signaling"))

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=10)
        return self.proc.returncode, stderr


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(
        "--signal", "127.0.0.1:0", "--http", "127.0.0.1:0", "--media", "127.0.0.1:0", "--media", "[::1]:0"
    )
    process.read_listeners(4)
    yield process
    if process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait()


def request(method: str, stream: str = "cam", **data: object) -> str:
    return json.dumps(
        {"version": "1.0", "method": method, "app": "live", "uid": "u", "stream": stream, "data": data}
    )


async def test_startup_lines_and_clean_shutdown(server: ServerProcess) -> None:
    lines = server.lines
    assert lines[0].startswith("signaling  ws://127.0.0.1:") and lines[0].endswith("/ws")
    assert lines[1].startswith("media      udp 127.0.0.1:")
    assert lines[2].startswith("media      udp [::1]:")
    assert lines[3].startswith("http       http://127.0.0.1:") and not lines[3].endswith(":8081/")
    async with open_websocket_url(server.ws_url) as pub, open_websocket_url(server.ws_url) as other:
        for ws in (pub, other):
            await ws.send_message(request("stream.connect", token=""))
            assert json.loads(await ws.get_message())["err"] == 0
        await pub.send_message(request("stream.offer", publish=True, sdp=PUBLISH_SDP))
        answer = json.loads(await pub.get_message())
        assert answer["err"] == 0
        media_port = lines[1].rsplit(":", 1)[1]
        assert f"a=candidate:1 1 udp 2130706431 127.0.0.1 {media_port} typ host" in answer["data"]["sdp"]
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        notice = json.loads(await pub.get_message())
        assert notice["method"] == "stream.close"
        assert notice["data"] == {"reason": "server_shutdown"}
        with pytest.raises(ConnectionClosed) as closed:
            await pub.get_message()
        assert closed.value.reason.code == 1001
    _, stderr = await trio.to_thread.run_sync(lambda: server.proc.communicate(timeout=10))
    assert server.proc.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert "OPEN DEVELOPMENT MODE" in stderr
    assert "Traceback" not in stderr


async def test_oversize_and_invalid_utf8_close_the_socket(server: ServerProcess) -> None:
    async with open_websocket_url(server.ws_url) as healthy:
        await healthy.send_message(request("stream.connect", token=""))
        assert json.loads(await healthy.get_message())["err"] == 0
        async with open_websocket_url(server.ws_url) as ws:
            await ws.send_message("x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1009
        # Exactly at the limit is still fine (and gets a 400: it's not JSON).
        async with open_websocket_url(server.ws_url) as ws:
            await ws.send_message(" " * (64 * 1024 - 2) + "{}")
            assert json.loads(await ws.get_message())["err"] == 400
        # Invalid UTF-8 in a text frame ends the socket (sent as raw bytes on a hand-made frame).
        stream = await trio.open_tcp_stream("127.0.0.1", int(server.ws_url.rsplit(":", 1)[1][:-3]))
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += await stream.receive_some(4096)
        assert response.startswith(b"HTTP/1.1 101")
        mask = b"\x00\x00\x00\x00"
        payload = b"\xff\xfe"
        await stream.send_all(bytes([0x81, 0x80 | len(payload)]) + mask + payload)
        frame = response.split(b"\r\n\r\n", 1)[1]
        with trio.fail_after(5):
            while len(frame) < 4:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                frame += chunk
        # RFC 6455 section 8.1: the server fails the connection with a close frame saying 1007.
        assert frame[:1] == b"\x88" and int.from_bytes(frame[2:4], "big") == 1007, frame
        await stream.aclose()
        # The healthy client never noticed.
        await healthy.send_message(request("stream.mute", "nothing"))
        assert json.loads(await healthy.get_message())["err"] == 404


async def test_wrong_path_is_refused(server: ServerProcess) -> None:
    with pytest.raises(HandshakeError):
        async with open_websocket_url(server.ws_url.replace("/ws", "/other")):
            pass


def test_open_mode_refuses_public_bind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--signal", "0.0.0.0:0", "--media", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "open development mode" in result.stderr and "--token-secret" in result.stderr


def test_bad_option_says_what_to_do() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--media", "::1:40000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "brackets" in result.stderr


def test_a_taken_ice_tcp_port_says_what_to_do() -> None:
    """--media-tcp PORT that another program holds: the start-up fails with the address and a hint
    (the error is opened out of Trio's nested exception groups), not a traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "trio_sfu", "--signal", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--media", "127.0.0.1:0", "--media-tcp", str(port)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert f"ICE-TCP port {port}" in last and "pick other ports" in last, result.stderr
    assert "Traceback" not in result.stderr


def test_token_command_mints_a_valid_token() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_sfu",
            "token",
            "--secret",
            "s" * 32,
            "--app",
            "live",
            "--uid",
            "alice",
            "--publish",
            "--play",
            "a",
            "b",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    claims = jwt.decode(result.stdout.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["app"] == "live" and claims["uid"] == "alice"
    assert claims["publish"] is True and sorted(claims["play"]) == ["a", "b"]
    assert 55 <= claims["exp"] - time.time() <= 61


async def test_token_secret_from_environment_and_config_file(tmp_path: Path) -> None:
    secret = "env-secret-0123456789abcdef0123456789"
    config = tmp_path / "sfu.toml"
    config.write_text('signal = "127.0.0.1:0"\nhttp = "127.0.0.1:0"\nmedia = ["127.0.0.1:0"]\n')
    process = ServerProcess("--config", str(config), env={"TRIO_SFU_TOKEN_SECRET": secret})
    try:
        process.read_listeners(3)
        token = subprocess.run(
            [sys.executable, "-m", "trio_sfu", "token", "--secret", secret, "--app", "live", "--publish"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        async with open_websocket_url(process.ws_url) as ws:
            await ws.send_message(request("stream.connect", token="not-a-token"))
            assert json.loads(await ws.get_message())["err"] == 401
            await ws.send_message(request("stream.connect", token=token))
            assert json.loads(await ws.get_message())["err"] == 0
    finally:
        code, stderr = process.stop()
    assert code == 0, stderr
    assert "OPEN DEVELOPMENT MODE" not in stderr
