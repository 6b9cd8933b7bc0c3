"""The analysis processes: jobs run in real child processes; a hung or crashed one costs only itself."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from stream_workers.processes import AnalysisProcesses, ProcessCrashed


def _nothing() -> None:
    """Set-up that does nothing (the processes are spawned, so it must be importable)."""


def _fail(message: str) -> None:
    raise ValueError(message)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_jobs_run_in_the_started_processes_and_their_answers_come_back() -> None:
    group = AnalysisProcesses(2, _nothing, ())
    try:
        started = set(group.pids)

        async def run_four() -> list[int]:
            return await asyncio.gather(*(group.run(_pid_after, 0.2, timeout_s=30) for _ in range(4)))

        pids = asyncio.run(run_four())
    finally:
        group.close()
    assert os.getpid() not in pids and set(pids) == started and len(started) == 2


def test_an_exception_reaches_the_caller_and_the_process_keeps_working() -> None:
    group = AnalysisProcesses(1, _nothing, ())
    try:

        async def fail_then_run() -> int:
            with pytest.raises(ValueError, match="bad image"):
                await group.run(_fail, "bad image", timeout_s=30)
            return await group.run(os.getpid, timeout_s=30)

        first = group.pids[0]
        assert asyncio.run(fail_then_run()) == first
    finally:
        group.close()


def test_a_job_past_its_limit_costs_only_its_own_process() -> None:
    group = AnalysisProcesses(2, _nothing, ())
    try:

        async def hang_beside_slow() -> tuple[object, object]:
            slow = asyncio.ensure_future(group.run(_pid_after, 1.5, timeout_s=30))
            await asyncio.sleep(0.1)  # the slow job has its process; the hung one takes the other
            hung = asyncio.ensure_future(group.run(time.sleep, 60, timeout_s=0.5))
            return tuple(await asyncio.gather(slow, hung, return_exceptions=True))  # type: ignore[return-value]

        before = list(group.pids)
        slow_pid, hung_error = asyncio.run(hang_beside_slow())
        after = list(group.pids)
    finally:
        group.close()
    assert isinstance(hung_error, TimeoutError)
    assert slow_pid in before and slow_pid in after  # the slow job finished in its own process
    assert len(set(after) - set(before)) == 1  # only the hung process was replaced


def test_a_crashed_process_is_named_and_replaced() -> None:
    group = AnalysisProcesses(1, _nothing, ())
    try:

        async def crash_then_run() -> int:
            with pytest.raises(ProcessCrashed):
                await group.run(os._exit, 3, timeout_s=30)
            return await group.run(os.getpid, timeout_s=30)

        first = group.pids[0]
        second = asyncio.run(crash_then_run())
    finally:
        group.close()
    assert second != first and second == group.pids[0]


def test_more_jobs_than_processes_wait_and_their_limit_starts_when_they_run() -> None:
    group = AnalysisProcesses(1, _nothing, ())
    try:

        async def queue_five() -> list[int]:
            # Each job takes 0.5 s; the fifth waits 2 s for the process, longer than its limit,
            # yet finishes: the limit counts from when a process starts the job. (1 s of slack for
            # each job, so that a busy machine cannot fail it.)
            return await asyncio.gather(*(group.run(_pid_after, 0.5, timeout_s=1.5) for _ in range(5)))

        assert len(asyncio.run(queue_five())) == 5
    finally:
        group.close()


def test_closing_ends_every_process() -> None:
    group = AnalysisProcesses(2, _nothing, ())
    processes = [each.process for each in group._all]
    group.close()
    assert all(not process.is_alive() for process in processes)
