"""A worker's part in the cluster: claims in the directory, and relays for streams held elsewhere.

Plugged into the server as its `ClusterLink`: a publish claims its stream before it is answered (409
if another worker holds it), a play of a stream held elsewhere waits for this worker's relay of it (503
if the directory or the origin does not answer), and a publisher's end releases the claim.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry

from trio_sfu.cluster.directory import Directory, DirectoryUnavailable, StreamKey, SupervisorDirectory
from trio_sfu.cluster.relay import Relays
from trio_sfu.server import metrics
from trio_sfu.server.server import Server
from trio_sfu.signaling.messages import ErrorCode, SignalingError

log = logging.getLogger(__name__)

METRICS_REPORT_INTERVAL = 2.0  # seconds between a worker's reports of its /metrics to the supervisor


class WorkerCluster:
    def __init__(self, directory: Directory, *, secret: str, connect_directory: bool = True) -> None:
        self.directory = directory
        self.secret = secret
        self._connect_directory = connect_directory
        self.relays: Relays | None = None
        self._nursery: trio.Nursery | None = None
        self._origin = ""
        self._registry: CollectorRegistry | None = None

    async def run(
        self, server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        origin = server.cluster_url
        if origin is None:
            raise RuntimeError("a worker of a cluster needs its cluster listener (cluster_secret)")
        self._origin = origin
        self.directory.origin = origin
        self.relays = Relays(server, self.directory, secret=self.secret, origin=origin,
                             host=server.config.cluster_host)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            run_directory = getattr(self.directory, "run", None)
            if self._connect_directory and run_directory is not None:
                await nursery.start(run_directory)
            await nursery.start(self.relays.run)
            if self._connect_directory and isinstance(self.directory, SupervisorDirectory):
                self._registry = metrics.make_registry(server)
                nursery.start_soon(self._report_metrics, self.directory, self._registry)
            task_status.started()

    async def _report_metrics(self, directory: SupervisorDirectory, registry: CollectorRegistry) -> None:
        while True:
            try:
                await directory.report_metrics(metrics.render(registry).decode())
            except DirectoryUnavailable as exc:
                log.debug("event=metrics_report_failed error=%r", str(exc))
            await trio.sleep(METRICS_REPORT_INTERVAL)

    async def host_metrics(self) -> bytes | None:
        directory, registry = self.directory, self._registry
        if not isinstance(directory, SupervisorDirectory) or registry is None:
            return None  # not one of a host's workers
        try:
            await directory.report_metrics(metrics.render(registry).decode())  # this one's, fresh
            return (await directory.host_metrics()).encode()
        except DirectoryUnavailable as exc:
            raise SignalingError(
                ErrorCode.UNAVAILABLE, f"the supervisor did not answer ({exc}); try /metrics or again"
            ) from None

    async def claim(self, key: StreamKey) -> None:
        try:
            holder = await self.directory.claim(key, self._origin)
        except DirectoryUnavailable as exc:
            raise SignalingError(
                ErrorCode.UNAVAILABLE, f"the cluster directory is unavailable ({exc}); try again shortly"
            ) from None
        if holder is not None:
            raise SignalingError(
                ErrorCode.CONFLICT, f"stream {key[1]!r} is already being published (on another worker)"
            )

    def release(self, key: StreamKey) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._release, key)

    async def _release(self, key: StreamKey) -> None:
        try:
            await self.directory.release(key)
        except DirectoryUnavailable as exc:
            log.warning("event=directory_release_failed app=%s stream=%s error=%r", *key, str(exc))

    async def close(self) -> None:
        """The server is shutting down: its streams are freed now, not when their claims expire."""
        try:
            await self.directory.release_all()
        except DirectoryUnavailable as exc:
            log.warning("event=directory_release_failed during=shutdown error=%r", str(exc))

    async def ensure_playable(self, key: StreamKey) -> None:
        assert self.relays is not None
        await self.relays.ensure(key)
