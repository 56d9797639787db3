"""Server configuration: one attrs class, filled from defaults, a TOML file, then the command line.

The TOML keys are the long option names with `_` for `-` (`token_secret`, `media`, ...), so whatever
can be said on the command line can be kept in a file.
"""

from __future__ import annotations

import ipaddress
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import cattrs


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which setting and what to write instead."""


@attrs.frozen
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Read `HOST:PORT` or `[V6]:PORT`."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:40000")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{text!r}: port {port_text!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"{text!r}: port must be 0..65535")
        return cls(host, port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::", "")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_announce(_: Any, __: Any, values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"announce {value!r}: expected an IP address") from None


MIN_PEER_RECEIVE_BUFFER = 128 * 1024
"""A keyframe of a high-resolution stream arrives as one burst of this order."""


@attrs.frozen(kw_only=True)
class Config:
    signal: HostPort = HostPort("127.0.0.1", 8080)
    http: HostPort = HostPort("127.0.0.1", 8081)
    media: tuple[HostPort, ...] = (HostPort("127.0.0.1", 40000),)
    announce: tuple[str, ...] = attrs.field(default=(), validator=_check_announce)
    token_secret: str | None = None
    token_public_key: Path | None = None
    dtls_certificate: Path | None = None
    dtls_private_key: Path | None = None
    tls_cert: Path | None = None  # PEM chain: serve https and wss (with tls_key)
    tls_key: Path | None = None
    log_level: str = "warning"
    max_message_size: int = 64 * 1024
    max_sessions_per_socket: int = 16
    max_sessions: int = 10_000
    max_sessions_per_address: int = 1_000
    max_players_per_stream: int = 1_000
    max_handshakes: int = 256
    requests_per_second: float = 20.0
    request_burst: float = 40.0
    allowed_origins: tuple[str, ...] = ()  # WebSocket Origins; () = any in open mode, same host otherwise
    keepalive_interval: float = 20.0
    keepalive_timeout: float = 60.0
    liveness_timeout: float = 30.0
    # ICE over TCP (RFC 6544; docs/operations.md): a TCP listener on each media address, on the UDP
    # port's number unless media_tcp_port says another (0: any free one), for clients whose network
    # drops UDP; offered after the UDP candidates. Off: ice_tcp = false.
    ice_tcp: bool = True
    media_tcp_port: int | None = None
    tcp_max_connections: int = 2000
    # As max_sessions_per_address: a whole office behind one NAT address is the case ICE-TCP is for.
    tcp_max_per_address: int = 1000
    dtls_handshake_timeout: float = 10.0
    max_publisher_bitrate: int = 2_500_000
    # Seconds of a publisher's media (at max_publisher_bitrate) its socket may hold while the server is
    # busy; beyond it the kernel drops and /metrics counts (reason input_overflow). Latency, not loss,
    # is what a live viewer notices first: a 4 MB buffer held ~14 s of a 1.5 Mbit/s stream.
    max_input_delay: float = 0.5
    # Players of a simulcast stream move between layers (and VP8 temporal layers) with their own
    # bandwidth. False: each plays the best layer sending (up to its max_layer), whatever its link.
    simulcast_adaptation: bool = True
    # The operator API (/admin/...; docs/operations.md) answers only this bearer token; unset: off.
    admin_token: str | None = None
    # Webhooks (docs/operations.md): events POSTed to these http:// URLs, signed with webhook_secret.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = ""
    webhook_ca_file: Path | None = None  # PEM CAs that https:// receivers' certificates chain to
    # Recording (docs/operations.md): streams whose app/stream matches a rule's pattern are recorded
    # from their publish on, into its directory ("live/*=recordings"); the operator API records into
    # recording_dir.
    record: tuple[str, ...] = ()
    recording_dir: Path = Path("recordings")
    shutdown_grace: float = 2.0
    http_idle_timeout: float = 10.0  # seconds to send a whole request (and between keep-alive requests)
    http_max_connections: int = 256
    # More than one process (docs/cluster.md). `workers` > 1: a supervisor and that many workers
    # sharing the signaling and HTTP ports, worker i with media port + i. Relays between workers (and
    # nodes) are authenticated with `cluster_secret` (a random one when workers run without it).
    workers: int = 1
    cluster_secret: str | None = None
    cluster_host: str = "127.0.0.1"  # where a worker's cluster listener (for relays) binds
    # A cluster of nodes (hosts) on Redis: redis://HOST:PORT/DB, this node's name in it (default: the
    # host name); cluster_host is then the address other nodes reach this one at.
    redis: str | None = None
    node_name: str | None = None
    # Set by the supervisor for its workers, not by hand:
    worker_index: int | None = None
    reuse_port: bool = False
    supervisor: str | None = None  # the supervisor's directory socket

    def check(self) -> None:
        if not self.media:
            raise ConfigError("media: at least one media address is needed")
        positive = ("max_message_size", "max_sessions_per_socket", "max_sessions", "http_max_connections")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.token_secret is not None and self.token_public_key is not None:
            raise ConfigError("give either token_secret or token_public_key, not both")
        if (self.dtls_certificate is None) != (self.dtls_private_key is None):
            raise ConfigError("dtls_certificate and dtls_private_key go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together (--tls-cert FILE --tls-key FILE)")
        if self.max_input_delay <= 0:
            raise ConfigError("max_input_delay must be positive (seconds of input a socket may queue)")
        if self.http_idle_timeout <= 0:
            raise ConfigError("http_idle_timeout must be positive")
        if self.media_tcp_port is not None and not 0 <= self.media_tcp_port <= 65535:
            raise ConfigError("media_tcp_port: a TCP port number (0: any free one)")
        for rule in self.record:
            pattern, sep, directory = rule.partition("=")
            if not sep or "/" not in pattern or not directory:
                raise ConfigError(f"record rule {rule!r}: write APP/STREAM=DIRECTORY, e.g. live/*=recordings")
        for url in self.webhook_urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"webhook_urls: {url!r} is not http(s)://HOST[:PORT]/PATH")
        if self.webhook_urls and not self.webhook_secret:
            raise ConfigError("webhook_urls need webhook_secret (the receivers check each event's signature)")
        if self.redis is not None and not self.cluster_secret:
            raise ConfigError(
                "redis: a cluster of nodes needs cluster_secret (--cluster-secret or "
                "TRIO_SFU_CLUSTER_SECRET), the same on every node"
            )
        if not 1 <= self.workers <= 256:
            raise ConfigError("workers must be from 1 to 256 (one per core is the useful most)")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: one of debug, info, warning, error")

    @property
    def open_mode(self) -> bool:
        """No key configured: any token grants everything (development only)."""
        return self.token_secret is None and self.token_public_key is None

    def non_loopback_binds(self) -> list[HostPort]:
        return [a for a in (self.signal, self.http, *self.media) if not a.is_loopback]

    @property
    def peer_receive_buffer(self) -> int:
        """Bytes of kernel receive buffer for one peer's socket: max_input_delay of media at
        max_publisher_bitrate, but never less than a keyframe burst."""
        return max(int(self.max_input_delay * self.max_publisher_bitrate / 8), MIN_PEER_RECEIVE_BUFFER)

    @property
    def tls(self) -> bool:
        """https and wss on the HTTP and signaling ports (with a certificate browsers trust)."""
        return self.tls_cert is not None


_converter = cattrs.Converter()
_converter.register_structure_hook(HostPort, lambda value, _: HostPort.parse(str(value)))
_converter.register_structure_hook(Path, lambda value, _: Path(str(value)))


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def load(file: Path | None = None, **overrides: Any) -> Config:
    """Defaults, then `file` (TOML), then `overrides` whose value is not None."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values.update(tomllib.loads(file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {field.name for field in attrs.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("media", "announce", "allowed_origins", "webhook_urls", "record"):
        if key in values:
            values[key] = _as_tuple(values[key])
    try:
        config = _converter.structure(values, Config)
    except cattrs.BaseValidationError as exc:
        ours = [str(leaf) for leaf in _leaves(exc) if isinstance(leaf, ConfigError)]
        raise ConfigError("; ".join(ours or cattrs.transform_error(exc))) from None
    except (ConfigError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    config.check()
    return config
