"""Recording without a browser: the operator API starts and stops a recording of a publisher on the
in-memory network, a config rule records from the publish on, and the files hold what was sent (the
payloads are test VP8 packets: the file is checked packet by packet, not decoded; tests/e2e has the
real peers whose recordings decode)."""

from __future__ import annotations

from pathlib import Path

import av
import trio

from trio_sfu.config import Config
from trio_sfu.testing.client_transport import open_client

from ..conftest import running_server
from .test_admin import ADMIN, admin
from .test_transport_faults import send_video

FPS = 30


async def stream_frames(publisher: object, first: int, count: int) -> None:
    for index in range(first, first + count):
        send_video(publisher, index)  # type: ignore[arg-type]
        await trio.sleep(1 / FPS)


def video_packets(path: str) -> list[av.Packet]:  # type: ignore[type-arg]
    with av.open(path) as container:
        return [packet for packet in container.demux(video=0) if packet.size]


async def test_the_operator_records_a_stream_and_the_file_holds_its_frames(tmp_path: Path) -> None:
    config = Config(admin_token=ADMIN, recording_dir=tmp_path)
    async with running_server(config) as sfu:
        server = sfu.server
        network = sfu.network  # type: ignore[attr-defined]
        status, body = await admin(server, "POST", "/admin/streams/live/cam/recording")
        assert status == 404 and "not being published" in body["error"]  # type: ignore[index]
        async with (
            sfu.client(uid="pub") as signaling,
            open_client(signaling, network.endpoint(), publish=True) as pub,
        ):
            await stream_frames(pub, 0, 5)
            status, started = await admin(server, "POST", "/admin/streams/live/cam/recording")
            assert status == 201, started
            assert isinstance(started, dict) and started["path"].endswith(".webm")
            assert (await admin(server, "POST", "/admin/streams/live/cam/recording"))[0] == 409
            assert (await admin(server, "POST", "/admin/streams/live/cam/recording", token=None))[0] == 401
            status, running = await admin(server, "GET", "/admin/recordings")
            assert status == 200 and isinstance(running, list)
            assert [r["path"] for r in running] == [started["path"]]
            _, streams = await admin(server, "GET", "/admin/streams")
            assert streams[0]["recording"] == started["path"]  # type: ignore[index]
            await stream_frames(pub, 5, 60)
            status, stopped = await admin(server, "DELETE", "/admin/streams/live/cam/recording")
            assert status == 200, stopped
            assert isinstance(stopped, dict)
            print(f"recorded: {stopped}")
            # Every frame from the first after the start is in the file (each test frame is a keyframe).
            assert 55 <= stopped["video_frames"] <= 65 and stopped["bytes"] > 0
            # The file's clock is the RTP timestamps' (the test's frames are 4500 ticks, 50 ms, apart).
            assert abs(stopped["seconds"] - (stopped["video_frames"] - 1) * 4500 / 90000) < 0.01
            assert (await admin(server, "DELETE", "/admin/streams/live/cam/recording"))[0] == 404
            assert (await admin(server, "GET", "/admin/recordings"))[1] == []
            packets = video_packets(stopped["path"])
            assert len(packets) == stopped["video_frames"]
            # Each frame as the publisher sent it, its descriptor stripped: the frame's index after the
            # VP8 start of the test payload (tests/server/test_transport_faults.video_payload).
            sent = [int.from_bytes(bytes(p)[5:9], "big") for p in packets]
            # In order, up to the last one sent but one: the test's packets carry no marker bit, so the
            # last frame never ended (a frame that may be cut short is not written).
            assert sent == sorted(sent) and sent[-1] == 63
            assert packets[0].is_keyframe


async def test_a_rule_records_from_the_publish_until_the_publisher_goes(tmp_path: Path) -> None:
    config = Config(record=(f"live/c*={tmp_path / 'rules'}",))
    async with running_server(config) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        async with (
            sfu.client(uid="other") as other_signaling,
            open_client(other_signaling, network.endpoint(), publish=True, stream="other") as other,
        ):
            async with (
                sfu.client(uid="pub") as signaling,
                open_client(signaling, network.endpoint(), publish=True) as pub,
            ):
                assert list(sfu.server.recordings.active) == [("live", "cam")]  # not "other"
                await stream_frames(pub, 0, 30)
                await stream_frames(other, 0, 3)
            # The publisher is gone (the other stream goes on): its recording ends, its file is written.
            await stream_frames(other, 3, 3)
        with trio.fail_after(5):
            while sfu.server.recordings.active:
                await trio.sleep(0.05)
        assert sfu.server.recordings.finished == 1
        (path,) = (tmp_path / "rules").iterdir()
        assert path.name.startswith("live-cam-") and path.suffix == ".webm"
        assert 25 <= len(video_packets(str(path))) <= 30
