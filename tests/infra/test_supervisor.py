"""`peek up`'s supervisor restarts a child that dies, and stops them all together."""

from __future__ import annotations

import signal
import time

from infra.supervisor import ProcessSpec, Supervisor


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
