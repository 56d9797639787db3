"""The supervisor's directory table, sans-IO: claims, 409 across workers, a dead worker's claims
freed, and garbage answered with an error (never a crash)."""

from __future__ import annotations

import json

import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_sfu.cluster.directory import MAX_LINE, DirectoryTable, SupervisorDirectory, serve_directory


def request(table: DirectoryTable, owner: object, **fields: object) -> dict[str, object]:
    return table.handle(owner, json.dumps(fields).encode())


def test_claims_are_per_worker_and_go_with_it() -> None:
    table = DirectoryTable()
    one, two = object(), object()
    claim = {"op": "claim", "app": "live", "stream": "cam", "id": 1}
    assert request(table, one, **claim, origin="ws://one/ws") == {"id": 1, "ok": True}
    assert request(table, one, **claim, origin="ws://one/ws")["ok"] is True  # again: still its own
    assert request(table, two, **claim, origin="ws://two/ws") == {"id": 1, "ok": False, "origin": "ws://one/ws"}
    located = request(table, two, op="locate", app="live", stream="cam", id=2)
    assert located == {"id": 2, "ok": True, "origin": "ws://one/ws"}
    request(table, two, op="release", app="live", stream="cam", id=3)  # not its claim: no effect
    assert table.locate(("live", "cam")) == "ws://one/ws"
    assert table.forget(one) == [("live", "cam")]
    assert request(table, two, **claim, origin="ws://two/ws")["ok"] is True


def test_garbage_gets_an_error_reply_and_is_counted() -> None:
    table = DirectoryTable()
    for line in (b"", b"not json", b"[]", b'{"op": "claim"}', b'{"op": "claim", "app": "a", "stream": "b"}',
                 b'{"op": "explode", "app": "a", "stream": "b"}', b"\xff\xfe",
                 b'{"op": "report_metrics", "text": 5}', b'{"op": "report_metrics"}'):
        reply = table.handle(object(), line)
        assert reply["ok"] is False and "error" in reply
    assert table.malformed == 9 and table.claims == {} and table.metrics == {}


def worker_page(worker: int, players: int, started: float) -> str:
    """What a worker's /metrics says, in part."""
    return (
        "# HELP trio_sfu_worker Which worker answered\n# TYPE trio_sfu_worker gauge\n"
        f'trio_sfu_worker{{worker="{worker}"}} 1.0\n'
        "# HELP trio_sfu_sessions Sessions\n# TYPE trio_sfu_sessions gauge\n"
        f'trio_sfu_sessions{{kind="play"}} {players}\ntrio_sfu_sessions{{kind="publish"}} 1.0\n'
        "# HELP trio_sfu_rtp_packets Packets\n# TYPE trio_sfu_rtp_packets counter\n"
        f'trio_sfu_rtp_packets_total{{direction="out"}} {players * 1000}\n'
        "# HELP process_start_time_seconds Start\n# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {started}\n"
    )


def summed(table: DirectoryTable, owner: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = request(table, owner, op="host_metrics", id=9)["text"]
    assert isinstance(text, str)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_workers_metrics_are_summed_and_go_with_a_worker() -> None:
    """/metrics/host under --workers N: every worker reports its page, the sum adds samples with the
    same labels, keeps the earliest start time, counts the workers; a dead worker's page goes."""
    table = DirectoryTable()
    one, two = object(), object()
    assert request(table, one, op="report_metrics", text=worker_page(0, 3, 100.0), id=1)["ok"] is True
    assert request(table, two, op="report_metrics", text=worker_page(1, 4, 90.0), id=2)["ok"] is True
    both = summed(table, one)
    assert both[("trio_sfu_worker", ())] == 2
    assert both[("trio_sfu_sessions", (("kind", "play"),))] == 7
    assert both[("trio_sfu_sessions", (("kind", "publish"),))] == 2
    assert both[("trio_sfu_rtp_packets_total", (("direction", "out"),))] == 7000
    assert both[("process_start_time_seconds", ())] == 90.0
    request(table, one, op="report_metrics", text=worker_page(0, 5, 100.0), id=3)  # the latest counts
    assert summed(table, two)[("trio_sfu_sessions", (("kind", "play"),))] == 9
    table.forget(two)
    alone = summed(table, one)
    assert alone[("trio_sfu_worker", ())] == 1 and alone[("trio_sfu_sessions", (("kind", "play"),))] == 5


async def test_a_worker_talks_to_the_table_over_a_unix_socket(tmp_path: object) -> None:
    path = f"{tmp_path}/directory.sock"
    table = DirectoryTable()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_directory, table, trio.SocketListener(sock))
        worker = SupervisorDirectory(path)
        await nursery.start(worker.run)
        assert await worker.claim(("live", "cam"), "ws://w0/ws") is None
        assert await worker.locate(("live", "cam")) == "ws://w0/ws"
        # Garbage from a broken client closes only its own connection.
        garbage = await trio.open_unix_socket(path)
        await garbage.send_all(b"x" * (MAX_LINE + 10_000))
        with trio.fail_after(5):
            assert await garbage.receive_some(10) == b""
        assert await worker.locate(("live", "cam")) == "ws://w0/ws"
        await worker.release_all()
        assert await worker.locate(("live", "cam")) is None
        nursery.cancel_scope.cancel()
