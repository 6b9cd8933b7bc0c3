"""Running Peek's processes on one machine: start, restart on crash, stop together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from infra.broker import EmbeddedBroker
from infra.kafka import ensure_topics
from infra.settings import Settings

log = logging.getLogger("peek.up")


@dataclass
class ProcessSpec:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    held: bool = False  # stopped on purpose until released: not restarted as a crash


class Supervisor:
    """Keeps child ``peek`` processes running until told to stop."""

    def __init__(self, specs: list[ProcessSpec], log_dir: Path | None = None) -> None:
        self.specs = specs
        self.log_dir = log_dir
        self.stopping = False

    def _start(self, spec: ProcessSpec) -> None:
        env = {**os.environ, **spec.env}
        output = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by the child
        spec.process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *spec.args], env=env, stdout=output, stderr=output
        )
        spec.started_at = time.monotonic()
        log.info("started %s (pid %s)", spec.name, spec.process.pid)

    def start_all(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for spec in self.specs:
            self._start(spec)

    def _on_signal(self, *_args: object) -> None:
        self.stopping = True

    def watch_once(self) -> None:
        """Restart children that exited, with a growing delay for those that keep crashing."""
        now = time.monotonic()
        for spec in self.specs:
            if self.stopping or spec.held or spec.process is None or spec.process.poll() is None:
                continue
            if spec.restart_at == 0.0:
                spec.restarts += 1
                crashed_early = now - spec.started_at < 60
                delay = min(30.0, 2.0 ** min(spec.restarts, 5)) if crashed_early else 1.0
                spec.restart_at = now + delay
                log.warning(
                    "%s exited with %s; restarting in %.0f s", spec.name, spec.process.returncode, delay
                )
            elif now >= spec.restart_at:
                spec.restart_at = 0.0
                self._start(spec)

    def hold(self, names: Collection[str]) -> None:
        """Kill the named children now and keep them stopped until ``release``. SIGKILL, not a
        polite stop: this is for children whose state is already worthless, and a child that
        took time to stop could act on it meanwhile."""
        for spec in self.specs:
            if spec.name not in names:
                continue
            spec.held = True
            spec.restart_at = 0.0
            if spec.process is not None and spec.process.poll() is None:
                spec.process.kill()
                spec.process.wait(10)
                log.info("stopped %s (pid %s) until it is released", spec.name, spec.process.pid)

    def release(self, names: Collection[str], env: dict[str, str] | None = None) -> None:
        """Start the named held children again, with ``env`` added to their environment from now on."""
        for spec in self.specs:
            if spec.name in names and spec.held:
                spec.held = False
                spec.env = {**spec.env, **(env or {})}
                self._start(spec)

    def stop_all(self) -> None:
        for spec in self.specs:
            if spec.process and spec.process.poll() is None:
                spec.process.terminate()
        deadline = time.monotonic() + 15
        for spec in self.specs:
            if spec.process:
                try:
                    spec.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    spec.process.kill()

    def run(self) -> int:
        """Start everything and keep it running until SIGINT or SIGTERM."""
        self.start_all()
        try:
            self.supervise()
        finally:
            self.stop_all()
        return 0

    def supervise(self, also: Callable[[], None] | None = None) -> None:
        """Restart exited children until told to stop; ``also`` runs on every round too."""
        while not self.stopping:
            self.watch_once()
            if also is not None and not self.stopping:
                also()
            time.sleep(0.5)


class BrokerKeeper:
    """Restarts ``peek up``'s embedded broker on its port when it exits, and re-creates the topics.

    The broker keeps nothing on disk, so it comes back empty, on the same address. Its consumers
    must not carry on from where they were in the old one: their positions and the offsets they
    still meant to commit point past the new broker's ends, so they would skip the events sent to
    it until its partitions grew that far, and the reconciler, reading those offsets, would take
    the skipped events for handled and lost. So ``on_death()`` runs before the new broker starts
    (``peek up`` kills the workers and the sink then), and ``on_restart(ready_at)`` once the topics
    are back (``peek up`` starts them again; the sink re-emits the unfinished images whose latest
    event was sent before ``ready_at``, the ones the broker lost).
    """

    RETRY_S = 2.0

    def __init__(
        self,
        broker: EmbeddedBroker,
        partitions: int,
        on_restart: Callable[[float], None],
        on_death: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.partitions = partitions
        self.on_restart = on_restart
        self.on_death = on_death
        self.restarts = 0
        self._next_try = 0.0
        self._recovering = False  # dead, or restarted but without its topics yet

    def __call__(self) -> None:
        process = self.broker.process
        alive = process is not None and process.poll() is None
        if alive and not self._recovering:
            return
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + self.RETRY_S
        if not alive:
            if not self._recovering:
                code = process.returncode if process is not None else None
                log.warning(
                    "the embedded broker exited with %s; restarting it on %s", code, self.broker.bootstrap
                )
                self._recovering = True
                self.on_death()
            try:
                self.broker.start()
            except Exception as exc:
                log.error("could not restart the embedded broker (%s); trying again", exc)
                return
        try:
            ensure_topics(self.broker.bootstrap, self.partitions)
        except Exception as exc:
            log.error("could not create the topics on the restarted broker (%s); trying again", exc)
            return
        # Only from now on are events sure to land in topics as they should be: one sent while the
        # broker was down or still without its topics counts as lost (re-emitted; a duplicate at worst).
        ready_at = time.time()
        self._recovering = False
        self.restarts += 1
        self.on_restart(ready_at)


def _wait_healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return True
        except Exception:
            time.sleep(0.5)
    return False


def assign_metrics_ports(specs: list[ProcessSpec], first_port: int) -> None:
    """Give each worker and the sink its own Prometheus port: ``first_port``, ``first_port + 1``, ...
    when PEEK_METRICS_PORT is set, free ports otherwise (the API serves /metrics on its own port)."""
    from infra.broker import free_port

    for index, spec in enumerate(specs):
        port = first_port + index if first_port > 0 else free_port()
        spec.env = {**spec.env, "PEEK_METRICS_PORT": str(port)}
        log.info("%s metrics on http://127.0.0.1:%s/metrics", spec.name, port)


def run_everything(host: str, port: int, data_dir: Path | None) -> int:
    """``peek up``: the API, one worker per analyzer and the sink, with embedded defaults."""
    from sink.db import make_engine, migrate

    if data_dir is not None:
        os.environ["PEEK_DATA_DIR"] = str(data_dir)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {"PEEK_DATA_DIR": str(settings.data_dir)}
    broker = None
    if not settings.kafka_bootstrap_servers:
        started_at = time.time()  # before it starts: every event it will hold is sent after this
        broker = EmbeddedBroker(log_path=settings.data_dir / "broker.log").start()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        env["PEEK_BROKER_EPHEMERAL"] = "1"
        env["PEEK_BROKER_STARTED_AT"] = f"{started_at:.3f}"
        log.info("embedded Kafka-protocol broker on %s (memory only)", broker.bootstrap)
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    ensure_topics(bootstrap, settings.topic_partitions)
    migrate(make_engine(settings.effective_database_url))
    if not settings.public_api_url:
        env["PEEK_PUBLIC_API_URL"] = f"http://{host}:{port}"

    specs = [ProcessSpec("api", ["api", "--host", host, "--port", str(port)], env)]
    specs += [
        ProcessSpec(f"worker-{name}", ["worker", "--analyzers", name], env)
        for name in settings.analyzer_names
    ]
    specs.append(ProcessSpec("sink", ["sink"], env))
    assign_metrics_ports(specs[1:], settings.metrics_port)
    supervisor = Supervisor(specs, log_dir=settings.data_dir / "logs")

    # Every process that consumes: stopped while the broker is down, started afresh once it is back.
    consumers = [spec.name for spec in specs if spec.name != "api"]

    def start_consumers(broker_ready_at: float) -> None:
        # The sink re-emits, when it starts beside the embedded broker, the unfinished images whose
        # latest event was sent before the new broker was ready: the ones it lost.
        supervisor.release(consumers, {"PEEK_BROKER_STARTED_AT": f"{broker_ready_at:.3f}"})

    keeper = (
        BrokerKeeper(
            broker,
            settings.topic_partitions,
            on_restart=start_consumers,
            on_death=lambda: supervisor.hold(consumers),
        )
        if broker
        else None
    )
    supervisor.start_all()
    try:
        if _wait_healthy(f"http://{host}:{port}/api/health", 60):
            print(
                f"Peek is up: http://{host}:{port}  (data in {settings.data_dir}, logs in "
                f"{settings.data_dir / 'logs'}; Ctrl-C stops)",
                flush=True,
            )
        else:
            print("Peek started, but /api/health is not answering yet; see the logs folder", flush=True)
        supervisor.supervise(also=keeper)
    finally:
        supervisor.stop_all()
        if broker:
            broker.stop()
    return 0
