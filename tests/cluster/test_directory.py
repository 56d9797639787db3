"""The supervisor's directory table, sans-IO: claims, 409 across workers, a dead worker's claims
freed, and garbage answered with an error (never a crash)."""

from __future__ import annotations

import json

import trio

from trio_sfu.cluster.directory import DirectoryTable, SupervisorDirectory, serve_directory


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
                 b'{"op": "explode", "app": "a", "stream": "b"}', b"\xff\xfe"):
        reply = table.handle(object(), line)
        assert reply["ok"] is False and "error" in reply
    assert table.malformed == 7 and table.claims == {}


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
        await garbage.send_all(b"x" * 70_000)
        with trio.fail_after(5):
            assert await garbage.receive_some(10) == b""
        assert await worker.locate(("live", "cam")) == "ws://w0/ws"
        await worker.release_all()
        assert await worker.locate(("live", "cam")) is None
        nursery.cancel_scope.cancel()
