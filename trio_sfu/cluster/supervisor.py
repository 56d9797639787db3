"""`python -m trio_sfu --workers N`: a supervisor and N worker processes on one host.

One Python process forwards on one core. The supervisor starts N workers, each a whole server: they
share the signaling and HTTP ports (SO_REUSEPORT: the kernel spreads new connections over them) and
each has its own UDP media port (the configured one + i; a shared UDP port cannot steer DTLS and SRTP
to the process that holds the session), which its answers announce. A player whose worker does not
hold the stream gets it through a relay from the one that does (trio_sfu.cluster.relay), found in the
directory the supervisor keeps (trio_sfu.cluster.directory) on a Unix socket.

The supervisor restarts a worker that dies (its sessions are gone with it; its streams' claims go the
moment its directory connection closes), and on SIGINT/SIGTERM asks every worker to shut down (their
clients get `server_shutdown`) and waits for them.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket as stdlib_socket
import sys
import tempfile
from pathlib import Path

import trio

from trio_sfu.cluster.directory import DirectoryTable, serve_directory
from trio_sfu.config import Config, HostPort

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before a dead worker is started again (doubling while it keeps dying)
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long resets the restart delay
STOP_GRACE = 5.0  # seconds beyond shutdown_grace a worker gets to exit before it is killed


def reserve_port(address: HostPort) -> tuple[stdlib_socket.socket, int]:
    """Bind (not listen) `address` with SO_REUSEPORT, so port 0 becomes one number every worker
    binds; the socket is kept open for the supervisor's life so nobody else takes the port."""
    family = stdlib_socket.AF_INET6 if ":" in address.host else stdlib_socket.AF_INET
    sock = stdlib_socket.socket(family, stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
    sock.bind((address.host, address.port))
    return sock, sock.getsockname()[1]


OWN_OPTIONS = ("--signal", "--http", "--media", "--media-tcp", "--workers", "--worker-index", "--supervisor")


def worker_argv(argv: list[str]) -> list[str]:
    """The supervisor's command line without the options each worker gets its own value of."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OWN_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in OWN_OPTIONS)):
            out.append(arg)
    return out


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Supervisor:
    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        self.argv = argv  # the command line it was started with (workers get it too, plus theirs)
        self.secret = config.cluster_secret or secrets.token_urlsafe(32)
        self.table = DirectoryTable()
        self.processes: dict[int, trio.Process] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False

    def worker_command(self, index: int, signal_port: int, http_port: int, socket_path: str) -> list[str]:
        config = self.config
        media = [HostPort(m.host, m.port + index if m.port else 0) for m in config.media]
        return [
            sys.executable, "-m", "trio_sfu", *worker_argv(self.argv),
            "--signal", f"{_shown(config.signal.host)}:{signal_port}",
            "--http", f"{_shown(config.http.host)}:{http_port}",
            *(arg for m in media for arg in ("--media", f"{_shown(m.host)}:{m.port}")),
            *(("--media-tcp", "off") if not config.ice_tcp else ()),
            *(("--media-tcp", str(tcp + index if tcp else 0)) if (tcp := config.media_tcp_port) is not None
              and config.ice_tcp else ()),
            "--worker-index", str(index),
            "--supervisor", socket_path,
        ]  # fmt: skip

    async def run(self) -> None:
        config = self.config
        signal_sock, signal_port = reserve_port(config.signal)
        http_sock, http_port = reserve_port(config.http)
        with tempfile.TemporaryDirectory(prefix="trio_sfu-") as folder, signal_sock, http_sock:
            socket_path = str(Path(folder) / "directory.sock")
            unix = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
            await unix.bind(socket_path)
            unix.listen(64)
            scheme = "wss" if config.tls else "ws"
            print(f"signaling  {scheme}://{_shown(config.signal.host)}:{signal_port}/ws", flush=True)
            print(f"http       {'https' if config.tls else 'http'}://{_shown(config.http.host)}:{http_port}/",
                  flush=True)
            print(f"supervisor {config.workers} workers, pid {os.getpid()}", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_directory, self.table, trio.SocketListener(unix))
                async with trio.open_nursery() as workers:
                    for index in range(config.workers):
                        command = self.worker_command(index, signal_port, http_port, socket_path)
                        workers.start_soon(self._keep_running, index, command)
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            name = signal.Signals(signum).name
                            log.info("event=signal signal=%s action=stop_workers", name)
                            break
                    await self._stop_all()
                nursery.cancel_scope.cancel()

    async def _keep_running(self, index: int, command: list[str]) -> None:
        delay = RESTART_DELAY
        env = {**os.environ, "TRIO_SFU_CLUSTER_SECRET": self.secret}
        while not self.stopping:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(command, env=env)
            self.processes[index] = process
            log.info("event=worker_started worker=%d pid=%d", index, process.pid)
            code = await process.wait()
            if self.stopping:
                return
            self.restarts[index] = self.restarts.get(index, 0) + 1
            log.warning(
                "event=worker_died worker=%d pid=%d exit=%s action=restart_in delay_s=%.1f",
                index, process.pid, code, delay,
            )  # fmt: skip
            if trio.current_time() - started >= STABLE_AFTER:
                delay = RESTART_DELAY
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _stop_all(self) -> None:
        """SIGTERM to every worker (they tell their clients server_shutdown), then wait; kill late ones."""
        self.stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.shutdown_grace + STOP_GRACE):
            for process in self.processes.values():
                await process.wait()
        for index, process in self.processes.items():
            if process.returncode is None:
                log.warning("event=worker_killed worker=%d pid=%d reason=did_not_stop", index, process.pid)
                process.kill()
                await process.wait()


def supervise(config: Config, argv: list[str]) -> int:
    trio.run(Supervisor(config, argv).run)
    return 0
