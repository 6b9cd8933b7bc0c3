"""`peek up`'s supervisor restarts a child that dies, and stops them all together; and its embedded
broker, should that die."""

from __future__ import annotations

import signal
import socket
import time

from confluent_kafka import Consumer

from infra.broker import EmbeddedBroker
from infra.kafka import broker_reachable
from infra.supervisor import BrokerKeeper, ProcessSpec, Supervisor
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED


def test_a_crashing_child_is_restarted_with_a_delay_and_all_stop_together(tmp_path) -> None:
    crasher = ProcessSpec("crasher", ["analyze", str(tmp_path / "missing.png")])  # exits 1 at once
    sleeper = ProcessSpec("sleeper", ["analyze", "--help"])
    supervisor = Supervisor([crasher, sleeper], log_dir=tmp_path / "logs")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start_all()
        first_pid = crasher.process.pid
        deadline = time.monotonic() + 30
        while crasher.restarts < 2 and time.monotonic() < deadline:
            supervisor.watch_once()
            time.sleep(0.1)
        assert crasher.restarts >= 2 and crasher.process.pid != first_pid
        assert "missing.png" in (tmp_path / "logs" / "crasher.log").read_text()
    finally:
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert all(spec.process.poll() is not None for spec in (crasher, sleeper))


def test_the_embedded_broker_is_restarted_on_its_port_and_retried_while_it_cannot_start() -> None:
    restarted: list[float] = []
    deaths: list[int | None] = []  # at each on_death: the broker's exit code (None: one is running)
    with EmbeddedBroker() as broker:

        def on_death() -> None:
            assert broker.process is not None
            deaths.append(broker.process.poll())

        keeper = BrokerKeeper(broker, partitions=2, on_restart=restarted.append, on_death=on_death)
        keeper.RETRY_S = 0.0
        keeper()  # running: nothing to do
        assert restarted == [] and deaths == [] and keeper.restarts == 0
        first = broker.process
        assert first is not None
        first.kill()
        first.wait(5)
        # Failure injected for real: another socket holds the port, so the new broker cannot start.
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", broker.port))
            holder.listen()
            keeper()
            assert restarted == [] and keeper.restarts == 0
            assert deaths == [-signal.SIGKILL], "told of the death before a new broker starts"
        before = time.time()
        keeper()
        assert keeper.restarts == 1 and len(restarted) == 1
        assert deaths == [-signal.SIGKILL], "told once per death, not once per attempt"
        assert before <= restarted[0] <= time.time(), "the moment the new broker had its topics"
        assert broker.process is not None and broker.process.pid != first.pid
        assert broker_reachable(broker.bootstrap)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "peek-test"})
        topics = consumer.list_topics(timeout=10).topics
        consumer.close()
        assert {IMAGE_UPLOADED, ANALYSIS_PARTIAL} <= set(topics)
        assert len(topics[IMAGE_UPLOADED].partitions) == 2


def test_a_held_child_stays_stopped_until_released_with_its_new_environment(tmp_path) -> None:
    crasher = ProcessSpec("crasher", ["analyze", str(tmp_path / "missing.png")])  # exits 1 at once
    other = ProcessSpec("other", ["analyze", str(tmp_path / "missing.png")])
    supervisor = Supervisor([crasher, other], log_dir=tmp_path / "logs")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start_all()
        held_pid = crasher.process.pid
        supervisor.hold(["crasher"])
        assert crasher.process.poll() is not None
        deadline = time.monotonic() + 6
        while other.restarts < 2 and time.monotonic() < deadline:
            supervisor.watch_once()
            time.sleep(0.1)
        assert other.restarts >= 2, "children not held are restarted as before"
        assert crasher.restarts == 0 and crasher.process.pid == held_pid, "a held child is not restarted"
        supervisor.release(["crasher"], {"PEEK_BROKER_STARTED_AT": "12.5"})
        assert crasher.process.pid != held_pid and not crasher.held
        assert crasher.env["PEEK_BROKER_STARTED_AT"] == "12.5"
        assert "PEEK_BROKER_STARTED_AT" not in other.env
    finally:
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
