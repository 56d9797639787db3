"""The operator API: off by default, its own token, the sessions and streams with their figures, and
kick (the kicked client hears `kicked`, the others go on). Sans browser: a publisher and players on the
in-memory network under MockClock, the API over the HTTP handler's in-memory streams."""

from __future__ import annotations

import json

import trio
import trio.testing

from trio_sfu.config import Config
from trio_sfu.testing.client_transport import open_client
from trio_sfu.wire.rtcp import ReceiverReport, ReportBlock, serialize

from ..conftest import running_server
from .test_http import get, read_response
from .test_http import http_stream as open_http
from .test_transport_faults import send_video

ADMIN = "an-admin-token-for-the-tests"


async def admin(server: object, method: str, path: str, token: str | None = ADMIN) -> tuple[int, object]:
    import h11

    async with open_http(server) as stream:  # type: ignore[arg-type]
        client = h11.Connection(h11.CLIENT)
        headers = [("host", "sfu.test"), ("content-length", "0")]
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        data = client.send(h11.Request(method=method, target=path, headers=headers))
        await stream.send_all(data + client.send(h11.EndOfMessage()))
        reply = await read_response(client, stream)
        return reply.status, json.loads(reply.body)


async def test_the_operator_api_is_off_without_its_token() -> None:
    async with running_server(Config()) as sfu:
        reply = await get(sfu.server, "/admin/sessions")
        assert reply.status == 404 and "admin_token" in reply.json()["error"]


async def test_sessions_streams_figures_and_kick(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(Config(admin_token=ADMIN)) as sfu:
        server = sfu.server
        network = sfu.network  # type: ignore[attr-defined]
        assert (await admin(server, "GET", "/admin/sessions", token=None))[0] == 401
        assert (await admin(server, "GET", "/admin/sessions", token="wrong"))[0] == 401
        async with (
            sfu.client(uid="pub") as pub_sig,
            sfu.client(uid="p1") as p1_sig,
            sfu.client(uid="p2") as p2_sig,
            open_client(pub_sig, network.endpoint(), publish=True) as pub,
            open_client(p1_sig, network.endpoint(), publish=False),
            open_client(p2_sig, network.endpoint(), publish=False) as p2,
        ):
            for index in range(30):
                send_video(pub, index)
                await trio.sleep(1 / 30)
            status, sessions = await admin(server, "GET", "/admin/sessions")
            assert status == 200 and isinstance(sessions, list)
            by_uid = {entry["uid"]: entry for entry in sessions}
            assert set(by_uid) == {"pub", "p1", "p2"}
            assert by_uid["pub"]["direction"] == "publish" and by_uid["pub"]["packets_in"] == 30
            assert by_uid["pub"]["codecs"] == {"audio": "opus", "video": "VP8"}
            assert by_uid["p1"]["packets_out"] == 30 and by_uid["p1"]["bitrate_out_bps"] > 0
            assert by_uid["p1"]["connected"] is True and by_uid["p1"]["seconds"] > 0
            status, streams = await admin(server, "GET", "/admin/streams")
            assert status == 200 and isinstance(streams, list)
            (stream,) = streams
            assert stream["stream"] == "cam" and stream["publisher"] == by_uid["pub"]["id"]
            assert sorted(stream["players"]) == sorted([by_uid["p1"]["id"], by_uid["p2"]["id"]])
            status, stats = await admin(server, "GET", "/admin/stats")
            assert status == 200 and stats["players"] == 2 and stats["rtp_packets"]["in"] == 30  # type: ignore[index]

            # Kick p1: it hears kicked; p2 and the publisher go on.
            assert (await admin(server, "GET", f"/admin/sessions/{by_uid['p1']['id']}/kick"))[0] == 405
            assert await admin(server, "POST", f"/admin/sessions/{by_uid['p1']['id']}/kick") == (
                200, {"kicked": by_uid["p1"]["id"]})
            closed = await p1_sig.next_server_request()
            assert closed["method"] == "stream.close" and closed["data"]["reason"] == "kicked"
            before = len(p2.transport.received.rtp)
            send_video(pub, 30)
            await trio.sleep(0.1)
            assert len(p2.transport.received.rtp) == before + 1
            _, sessions = await admin(server, "GET", "/admin/sessions")
            assert {entry["uid"] for entry in sessions} == {"pub", "p2"}  # type: ignore[union-attr]
            # Loss: one packet never sent reads as lost on the way in; a player's receiver report
            # saying it lost a quarter (64/256) and 7 in all is what its figures show.
            send_video(pub, 32)
            video_ssrc = p2.answer.ssrcs["video"]
            report = ReceiverReport(0x4321, (ReportBlock(video_ssrc, 64, 7, 32, 0, 0, 0),))
            p2.transport.send_rtcp(serialize(report))
            await trio.sleep(0.1)
            _, sessions = await admin(server, "GET", "/admin/sessions")
            by_uid = {entry["uid"]: entry for entry in sessions}  # type: ignore[union-attr]
            assert by_uid["pub"]["packets_lost_in"] == 1
            assert by_uid["p2"]["loss_reported"] == 0.25 and by_uid["p2"]["packets_lost_reported"] == 7
            assert (await admin(server, "POST", "/admin/sessions/nobody/kick"))[0] == 404
            assert (await admin(server, "GET", "/admin/nothing"))[0] == 404
