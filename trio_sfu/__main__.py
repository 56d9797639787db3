"""Command line: `python -m trio_sfu [options]` serves; `python -m trio_sfu token ...` mints a token."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import signal
import sys
import time
from pathlib import Path

import trio

from trio_sfu import config as config_module
from trio_sfu.config import Config, ConfigError, HostPort
from trio_sfu.media import fanout
from trio_sfu.server.server import ClusterLink as ServerCluster
from trio_sfu.server.server import Server
from trio_sfu.signaling.auth import mint_token
from trio_sfu.transport.srtp import GCM_COMPILED

log = logging.getLogger("trio_sfu")

OPEN_MODE_WARNING = """\
!!! trio_sfu is running in OPEN DEVELOPMENT MODE: no token key is configured, so ANY token (even an
!!! empty one) may publish and play every stream. It only binds loopback addresses in this mode.
!!! For anything else set --token-secret (or TRIO_SFU_TOKEN_SECRET) or --token-public-key."""


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_sfu",
        description="A WebRTC SFU on Trio. `python -m trio_sfu token --help` mints tokens.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with the same keys as the options")
    parser.add_argument(
        "--signal", metavar="HOST:PORT", help="signaling WebSocket listener (default 127.0.0.1:8080)"
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP listener: demo page, /config.json, /healthz, /metrics (default 127.0.0.1:8081)",
    )
    parser.add_argument(
        "--media",
        metavar="HOST:PORT",
        action="append",
        help="media UDP socket, repeatable (default 127.0.0.1:40000; port 0 picks a free one)",
    )
    parser.add_argument(
        "--announce",
        metavar="IP",
        action="append",
        help="address written into ICE candidates, repeatable (default: the bound address, or "
        "every non-loopback interface address when bound to 0.0.0.0 or ::)",
    )
    parser.add_argument(
        "--media-tcp",
        metavar="PORT|off",
        help="ICE-TCP listener port beside each media address (default: the UDP port's number; 0: any "
        "free port; off: no ICE-TCP)",
    )
    parser.add_argument("--token-secret", help="HS256 secret (or env TRIO_SFU_TOKEN_SECRET)")
    parser.add_argument(
        "--record",
        metavar="APP/STREAM=DIR",
        action="append",
        help="record matching streams (fnmatch pattern, e.g. 'live/*=recordings') from their publish "
        "on into DIR, repeatable",
    )
    parser.add_argument("--token-public-key", type=Path, help="PEM public key for RS256/ES256")
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM certificate chain: serve https and wss on the same ports (with --tls-key)",
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the ports (default 1: this process serves); docs/cluster.md",
    )
    parser.add_argument(
        "--cluster-secret",
        help="authenticates relays between workers and nodes (or env TRIO_SFU_CLUSTER_SECRET; "
        "random when workers run without one)",
    )
    parser.add_argument("--redis", metavar="URL", help="a cluster of nodes on Redis: redis://HOST:PORT/DB")
    parser.add_argument("--node-name", help="this node's name in the cluster (default: the host name)")
    parser.add_argument(
        "--cluster-host",
        metavar="IP",
        help="where relays from other workers and nodes reach this one (default 127.0.0.1)",
    )
    # Set by the supervisor for its workers.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor", help=argparse.SUPPRESS)
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_sfu token", description="Print a development token (HS256 JWT)."
    )
    parser.add_argument("--secret", required=True, help="the server's --token-secret")
    parser.add_argument("--app", required=True)
    parser.add_argument("--uid", help="bind the token to this uid")
    parser.add_argument(
        "--publish",
        nargs="*",
        metavar="STREAM",
        help="streams it may publish; the flag alone grants every stream",
    )
    parser.add_argument(
        "--play",
        nargs="*",
        metavar="STREAM",
        help="streams it may play; the flag alone grants every stream",
    )
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds of validity (3600)")
    return parser


def _tcp_port(value: str | None) -> int | None:
    if value is None or value == "off":
        return None
    try:
        return int(value)
    except ValueError:
        raise config_module.ConfigError(f"--media-tcp {value!r}: a port number, or off") from None


def _scope(values: list[str] | None) -> bool | frozenset[str]:
    if values is None:
        return False
    return frozenset(values) if values else True


def token_main(argv: list[str]) -> int:
    args = _token_parser().parse_args(argv)
    try:
        token = mint_token(
            args.secret,
            args.app,
            uid=args.uid,
            publish=_scope(args.publish),
            play=_scope(args.play),
            ttl=args.ttl,
            now=time.time(),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


class LogfmtFormatter(logging.Formatter):
    """One line per event, `key=value` pairs, so logs can be grepped and parsed."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"time={stamp}Z level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def load_config(argv: list[str]) -> Config:
    import os

    args = _serve_parser().parse_args(argv)
    return config_module.load(
        args.config,
        signal=HostPort.parse(args.signal) if args.signal else None,
        http=HostPort.parse(args.http) if args.http else None,
        media=tuple(HostPort.parse(m) for m in args.media) if args.media else None,
        announce=tuple(args.announce) if args.announce else None,
        token_secret=args.token_secret or os.environ.get("TRIO_SFU_TOKEN_SECRET") or None,
        token_public_key=args.token_public_key,
        record=tuple(args.record) if args.record else None,
        ice_tcp=False if args.media_tcp == "off" else None,
        media_tcp_port=_tcp_port(args.media_tcp),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_level=args.log_level,
        workers=1 if args.worker_index is not None else args.workers,
        cluster_secret=args.cluster_secret or os.environ.get("TRIO_SFU_CLUSTER_SECRET") or None,
        worker_index=args.worker_index,
        redis=args.redis,
        node_name=args.node_name,
        cluster_host=args.cluster_host,
        supervisor=args.supervisor,
        reuse_port=True if args.worker_index is not None else None,
    )


def cluster_link(config: Config) -> ServerCluster:
    """This process's part in a cluster: Redis's directory if configured, else its supervisor's."""
    import socket

    from trio_sfu.cluster.directory import Directory, SupervisorDirectory
    from trio_sfu.cluster.redis_directory import RedisDirectory
    from trio_sfu.cluster.worker import WorkerCluster

    assert config.cluster_secret is not None
    directory: Directory
    if config.redis is not None:
        node = config.node_name or socket.gethostname()
        if config.worker_index is not None:
            node = f"{node}-w{config.worker_index}"
        directory = RedisDirectory(config.redis, node)
    else:
        assert config.supervisor is not None
        directory = SupervisorDirectory(config.supervisor)
    return WorkerCluster(directory, secret=config.cluster_secret)


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_server(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        # What exists now (modules, the server's own objects) lives as long as the process: out of
        # the collector's sight, a full collection (a pause of the whole loop) scans the sessions
        # only: with 300 players ~95k objects instead of ~140k, the longest pause 61 ms, was 90.
        gc.collect()
        gc.freeze()
        parts = {"fan-out": fanout.COMPILED, "gcm-sender": GCM_COMPILED}
        missing = [name for name, built in parts.items() if not built]
        if missing:
            log.warning(
                "event=compiled_parts_unused parts=%s hint=%s",
                ",".join(missing),
                "slower, same packets: install with a C compiler (pip install -e . in a checkout), "
                "unset TRIO_SFU_PURE_PYTHON, and for the gcm-sender have OpenSSL's libcrypto.so.3",
            )
        tls = server.config.tls
        worker = server.config.worker_index
        if worker is None:
            for host, port in server.signal_addresses:
                print(f"signaling  {'wss' if tls else 'ws'}://{_shown(host)}:{port}/ws", flush=True)
        for host, port in server.media_addresses:
            suffix = f" (worker {worker})" if worker is not None else ""
            print(f"media      udp {_shown(host)}:{port}{suffix}", flush=True)
        for host, port in server.cluster_addresses:
            suffix = f" (worker {worker})" if worker is not None else ""
            print(f"cluster    ws://{_shown(host)}:{port}/ws{suffix}", flush=True)
        if worker is None:
            for host, port in server.http_addresses:
                print(f"http       {'https' if tls else 'http'}://{_shown(host)}:{port}/", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("event=signal signal=%s", signal.Signals(signum).name)
                await server.shutdown()
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    try:
        config = load_config(argv)
        setup_logging(config.log_level)
        server = Server(config)
        server.check_binds()
        if config.workers == 1 and config.cluster_secret and (config.redis or config.supervisor):
            server.cluster = cluster_link(config)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if server.verifier.open_mode and config.worker_index is None:
        print(OPEN_MODE_WARNING, file=sys.stderr, flush=True)
    if config.workers > 1:
        from trio_sfu.cluster.supervisor import supervise

        return supervise(config, argv)
    status = 0
    try:
        trio.run(run_server, server)
    except* OSError as group:
        for failure in _leaves(group):
            hint = (
                "; is another server using that address? pick other ports"
                if (getattr(failure, "errno", None) == errno.EADDRINUSE)
                else ""
            )
            print(f"error: {failure}{hint}", file=sys.stderr)
        status = 1
    return status


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    """The errors in `group`, nested groups (a nursery inside a nursery) opened."""
    out: list[OSError] = []
    for item in group.exceptions:
        if isinstance(item, BaseExceptionGroup):
            out += _leaves(item)
        else:
            out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
