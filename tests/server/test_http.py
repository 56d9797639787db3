"""The HTTP port: demo page, /config.json, /healthz, /metrics; bad input, limits, timeouts, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from trio_sfu.config import Config, ConfigError, HostPort
from trio_sfu.media.totals import Totals
from trio_sfu.server.server import Server

from ..conftest import fixture_sdp, running_server

LOOPBACK = HostPort("127.0.0.1", 0)


class Reply:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = {name.decode(): value.decode() for name, value in headers}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(client: h11.Connection, stream: trio.abc.Stream) -> Reply:
    response: h11.Response | None = None
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return Reply(response.status_code, list(response.headers), body)
        else:
            raise AssertionError(f"unexpected {event!r}")


async def fetch(
    stream: trio.abc.Stream, method: str, path: str, headers: list[tuple[str, str]] | None = None,
    client: h11.Connection | None = None,
) -> Reply:
    """One request over `stream` (with h11 as the client too)."""
    client = client or h11.Connection(h11.CLIENT)
    request = h11.Request(method=method, target=path, headers=[("host", "sfu.test"), *(headers or [])])
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    return await read_response(client, stream)


@asynccontextmanager
async def http_stream(server: Server) -> AsyncIterator[trio.abc.Stream]:
    """A connection to the server's HTTP handler over an in-memory stream."""
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.http.handle, server_side)
        yield client
        await client.aclose()


async def get(server: Server, path: str, method: str = "GET") -> Reply:
    async with http_stream(server) as stream:
        return await fetch(stream, method, path)


async def raw_exchange(server: Server, data: bytes) -> bytes:
    """Send `data`, return everything the server writes until it closes the connection."""
    async with http_stream(server) as stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


# ---------------------------------------------------------------------- pages and endpoints


async def test_demo_page_module_and_config() -> None:
    async with running_server() as sfu:
        page = await get(sfu.server, "/")
        assert page.status == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert b'<script type="module" src="/app.js">' in page.body
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert (await get(sfu.server, "/?app=live&stream=cam")).body == page.body

        head = await get(sfu.server, "/", "HEAD")
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(page.body))

        module = await get(sfu.server, "/app.js")
        assert module.status == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert b"stream.offer" in module.body and b"iceGatheringState" in module.body

        config = (await get(sfu.server, "/config.json")).json()
        assert config["signaling"] == {"port": 8080, "path": "/ws", "tls": False}
        assert config["open_mode"] is True


async def test_healthz() -> None:
    async with running_server() as sfu:
        reply = await get(sfu.server, "/healthz")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"status": "ok", "sessions": 0, "streams": 0, "worker": None}
        sfu.server.shutting_down = True  # load balancers should stop sending new clients
        reply = await get(sfu.server, "/healthz")
        assert reply.status == 503 and reply.json()["status"] == "shutting_down"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_read_the_servers_counters() -> None:
    async with running_server() as sfu, sfu.client(uid="pub") as publisher:
        server = sfu.server
        assert (await publisher.connect())["err"] == 0
        reply = await publisher.offer("cam", fixture_sdp("chromium_offer_publish"), True)
        assert reply["err"] == 0, reply
        server.totals = Totals(
            rtp_packets_in=100, rtp_bytes_in=120_000, rtp_packets_out=300, rtp_bytes_out=360_000,
            rtcp_packets_in=7, rtcp_packets_out=9, dtls_handshakes=4, dtls_failures=2,
            keyframe_requests=5, drop_srtp_auth=3, drop_fanout_queue_full=11,
        )
        server.mux.dropped.update(unknown_source=6, malformed_stun=1)
        server.mux.received.update(stun=40, rtp=400)

        reply = await get(server, "/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = scrape(reply.body.decode())

        def value(name: str, **labels: str) -> float:
            return values[(name, tuple(sorted(labels.items())))]

        assert value("trio_sfu_sessions", kind="publish") == 1
        assert value("trio_sfu_sessions", kind="play") == 0
        assert value("trio_sfu_streams", kind="publish") == 1
        assert value("trio_sfu_connections") == 1
        assert value("trio_sfu_rtp_packets_total", direction="in") == 100
        assert value("trio_sfu_rtp_bytes_total", direction="out") == 360_000
        assert value("trio_sfu_rtcp_packets_total", direction="out") == 9
        assert value("trio_sfu_dropped_packets_total", reason="srtp_auth") == 3
        assert value("trio_sfu_dropped_packets_total", reason="fanout_queue_full") == 11
        assert value("trio_sfu_dropped_packets_total", reason="unknown_source") == 6
        assert value("trio_sfu_dropped_packets_total", reason="malformed_stun") == 1
        assert value("trio_sfu_datagrams_received_total", kind="rtp") == 400
        assert value("trio_sfu_dtls_handshakes_total") == 4
        assert value("trio_sfu_handshake_failures_total") == 2
        assert value("trio_sfu_keyframe_requests_total") == 5
        assert ("process_resident_memory_bytes", ()) in values

        assert (await publisher.request("stream.close", "cam"))["err"] == 0
        values = scrape((await get(server, "/metrics")).body.decode())
        assert value("trio_sfu_sessions", kind="publish") == 0
        assert value("trio_sfu_streams", kind="publish") == 0
        assert value("trio_sfu_http_responses_total", code="200") == 1  # the first scrape


async def test_each_server_has_its_own_registry() -> None:
    async with running_server() as one, running_server() as two:
        one.server.totals.rtp_packets_in = 17
        first = scrape((await get(one.server, "/metrics")).body.decode())
        second = scrape((await get(two.server, "/metrics")).body.decode())
        key = ("trio_sfu_rtp_packets_total", (("direction", "in"),))
        assert (first[key], second[key]) == (17, 0)


# ---------------------------------------------------------------------- bad input and limits


async def test_unknown_path_is_404_and_wrong_method_405() -> None:
    async with running_server() as sfu:
        missing = await get(sfu.server, "/nothing/here")
        assert missing.status == 404 and b"/healthz" in missing.body
        for method in ("POST", "PUT", "DELETE"):
            wrong = await get(sfu.server, "/healthz", method)
            assert wrong.status == 405
            assert wrong.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200), 400),  # a TLS hello on http
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 3000 + b"\r\n", 431),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n", 413),
        (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n",
            413,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
    ],
    ids=["garbage", "tls-hello", "no-host", "huge-header", "many-headers", "big-body", "chunked-body",
         "bad-length"],
)
async def test_bad_requests_get_an_error_and_the_connection_closes(request_bytes: bytes, status: int) -> None:
    async with running_server() as sfu:
        received = await raw_exchange(sfu.server, request_bytes)
        assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:200]
        assert b"connection: close" in received.lower()
        assert (await get(sfu.server, "/healthz")).status == 200  # the server did not notice


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with running_server() as sfu, http_stream(sfu.server) as stream:
        client = h11.Connection(h11.CLIENT)
        for path in ("/healthz", "/config.json", "/metrics"):
            assert (await fetch(stream, "GET", path, client=client)).status == 200
            client.start_next_cycle()
        # A small body on a GET is read and ignored; the connection stays usable.
        body_request = h11.Request(method="GET", target="/healthz",
                                   headers=[("host", "x"), ("content-length", "5")])
        await stream.send_all(client.send(body_request) + client.send(h11.Data(data=b"hello"))
                              + client.send(h11.EndOfMessage()))
        assert (await read_response(client, stream)).status == 200


async def test_idle_and_slow_clients_are_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(Config(http_idle_timeout=10.0)) as sfu:
        # Connects and says nothing.
        async with http_stream(sfu.server) as stream:
            start = trio.current_time()
            assert await stream.receive_some(100) == b""
            assert 10 <= trio.current_time() - start < 11
        # Sends its headers a byte a second (slowloris): the whole request must come within 10 s.
        async with http_stream(sfu.server) as stream:
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):
                for byte in b"GET / HTTP/1.1\r\nHost: example\r\n\r\n":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(1)
            assert trio.current_time() - start < 12
        # Idle between keep-alive requests: closed after the timeout too.
        async with http_stream(sfu.server) as stream:
            assert (await fetch(stream, "GET", "/healthz")).status == 200
            start = trio.current_time()
            assert await stream.receive_some(100) == b""
            assert 10 <= trio.current_time() - start < 11


async def test_connection_limit() -> None:
    async with running_server(Config(http_max_connections=2)) as sfu:
        async with http_stream(sfu.server) as first, http_stream(sfu.server) as second:
            await trio.testing.wait_all_tasks_blocked()
            async with http_stream(sfu.server) as third:
                with trio.fail_after(1):
                    assert await third.receive_some(100) == b""
            assert (await fetch(first, "GET", "/healthz")).status == 200
            assert (await fetch(second, "GET", "/healthz")).status == 200
        assert (await get(sfu.server, "/healthz")).status == 200


# ---------------------------------------------------------------------- real sockets, TLS, process


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trio_sfu test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@asynccontextmanager
async def listening(config: Config) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(config).serve)
        yield server
        nursery.cancel_scope.cancel()


async def test_real_listener_serves_http() -> None:
    async with listening(Config(signal=LOOPBACK, http=LOOPBACK, media=(LOOPBACK,))) as server:
        host, port = server.http_addresses[0]
        assert host == "127.0.0.1" and port > 0
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            config = (await fetch(stream, "GET", "/config.json")).json()
        assert config["signaling"] == {"port": server.signal_addresses[0][1], "path": "/ws", "tls": False}


async def test_tls_serves_https_and_wss(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = Config(signal=LOOPBACK, http=LOOPBACK, media=(LOOPBACK,), tls_cert=cert, tls_key=key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with listening(config) as server:
        host, port = server.http_addresses[0]
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=trusting)
        async with stream:
            health = await fetch(stream, "GET", "/healthz")
        assert health.status == 200 and health.json()["status"] == "ok"

        # Plain http to the https port, and a client that distrusts the certificate: refused, harmlessly.
        async with await trio.open_tcp_stream(host, port) as plain:
            await plain.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(5):
                assert not (await plain.receive_some(100)).startswith(b"HTTP")
        with pytest.raises(trio.BrokenResourceError):
            distrusting = await trio.open_ssl_over_tcp_stream(host, port)
            async with distrusting:
                await fetch(distrusting, "GET", "/healthz")

        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=trusting)
        async with stream:
            config_json = (await fetch(stream, "GET", "/config.json")).json()
        signal_port = server.signal_addresses[0][1]
        assert config_json["signaling"] == {"port": signal_port, "path": "/ws", "tls": True}

        async with open_websocket_url(f"wss://127.0.0.1:{signal_port}/ws", ssl_context=trusting) as ws:
            await ws.send_message(json.dumps({"version": "1.0", "method": "stream.connect", "app": "live",
                                              "uid": "u", "stream": "", "data": {"token": ""}}))
            reply = json.loads(await ws.get_message())
        assert (reply["err"], reply["on_result"]) == (0, "stream.connected")


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        Config(tls_cert=cert).check()
    with pytest.raises(ConfigError, match="TLS certificate"):
        Server(Config(tls_cert=key, tls_key=cert))
    with pytest.raises(ConfigError, match="refuses to bind"):
        Server(Config(http=HostPort("0.0.0.0", 8081))).check_binds()


@pytest.mark.parametrize("tls", [False, True])
async def test_process_prints_the_http_line_and_exits_cleanly(tmp_path: Path, tls: bool) -> None:
    args = [sys.executable, "-m", "trio_sfu", "--signal", "127.0.0.1:0", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0"]
    context = None
    if tls:
        cert, key = self_signed(tmp_path)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        context = ssl.create_default_context(cafile=str(cert))
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(3)]
        scheme, ws_scheme = ("https", "wss") if tls else ("http", "ws")
        assert lines[0].startswith(f"signaling  {ws_scheme}://127.0.0.1:")
        assert lines[1].startswith("media      udp 127.0.0.1:")
        assert lines[2].startswith(f"http       {scheme}://127.0.0.1:") and lines[2].endswith("/")
        port = int(lines[2].rsplit(":", 1)[1].rstrip("/"))
        if context is None:
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        else:
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
        async with stream:
            assert (await fetch(stream, "GET", "/healthz")).status == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = await trio.to_thread.run_sync(lambda: process.communicate(timeout=10))
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
