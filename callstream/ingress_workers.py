"""`callstream ingress --workers N`: N ingress processes on one port, supervised.

The parent serves nothing itself: it checks the settings and that the port is free (once, so
that a mistake is one line here rather than N workers failing and restarting), then runs N
`callstream ingress --worker I` children (`callstream.supervisor`: a worker that dies is reported
and restarted) and stops them together. What the workers share and what stays per process:
`ingest.workers`.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from callstream.supervisor import Child, supervise
from foundation.settings import IngressSettings, KafkaSettings
from ingest.server import check, claim_port


def workers(settings: IngressSettings, kafka: KafkaSettings, directory: Path) -> list[Child]:
    """The worker processes, each the ingress command with its index and the peers' directory
    (the flags that override settings passed on; the environment is inherited)."""
    flags = ["--kafka", kafka.bootstrap, "--host", settings.host, "--port", str(settings.port)]
    if settings.insecure_no_auth:
        flags.append("--insecure-no-auth")
    flags += ["--workers", str(settings.workers), "--peers", str(directory)]
    return [
        Child(f"ingress-{index}", ("ingress", *flags, "--worker", str(index)))
        for index in range(settings.workers)
    ]


async def serve(settings: IngressSettings, kafka: KafkaSettings, stop: asyncio.Event) -> None:
    """Run the workers until `stop` is set, then stop them all at once (each drains its
    requests in flight). Raises SettingsError or Unavailable (port taken) before any starts."""
    check(settings)
    claim_port(settings)
    with tempfile.TemporaryDirectory(prefix="callstream-ingress-") as directory:
        await supervise(workers(settings, kafka, Path(directory)), stop, together=True)
