"""A fixed set of analysis processes that the event loop drives directly, one job per process.

Each process has a pipe to the worker; the loop writes a job to an idle process and is woken by
the pipe when the answer is there. Compared with ``ProcessPoolExecutor`` this costs no threads in
the worker (no manager or queue-feeder thread handing each job across, which was a quarter of a
worker's own CPU), a time limit counts from when a process starts the job rather than from when
it was queued, and a job past its limit costs only its own process: the others keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any


class ProcessCrashed(RuntimeError):
    """The process running a job died (killed, or crashed in native code) before answering."""


def _serve(connection: Connection, initializer: Callable[..., None], initargs: Sequence[Any]) -> None:
    """A process's life: set up once, then answer jobs until the worker closes the pipe."""
    initializer(*initargs)
    while True:
        try:
            function, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[bool, Any] = (True, function(*args))
        except Exception as exc:
            answer = (False, exc)
        try:
            connection.send(answer)
        except (EOFError, OSError):
            return
        except Exception as exc:  # the result or the exception does not pickle
            connection.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


class _Process:
    """One analysis process and the worker's end of its pipe."""

    def __init__(self, initializer: Callable[..., None], initargs: Sequence[Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child_end, initializer, initargs), daemon=True
        )
        self.process.start()
        child_end.close()

    async def run(self, function: Callable[..., Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        descriptor = self.connection.fileno()

        def readable() -> None:
            loop.remove_reader(descriptor)
            if answer.done():
                return
            try:
                answer.set_result(self.connection.recv())
            except (EOFError, OSError):
                answer.set_exception(ProcessCrashed("the analysis process died"))
            except Exception as exc:  # an answer that does not unpickle here
                answer.set_result((False, exc))

        try:
            self.connection.send((function, args))
        except (EOFError, OSError):
            raise ProcessCrashed("the analysis process died") from None
        loop.add_reader(descriptor, readable)
        try:
            succeeded, value = await answer
        finally:
            loop.remove_reader(descriptor)
        if not succeeded:
            raise value
        return value

    def stop(self, *, kill: bool) -> None:
        """Close the pipe (an idle process then exits by itself); ``kill`` ends a busy one now."""
        if kill and self.process.is_alive():
            self.process.kill()
        self.connection.close()
        self.process.join(timeout=0 if kill else 1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=1)


class AnalysisProcesses:
    """``size`` processes, each set up by ``initializer(*initargs)`` when the group starts.

    ``run`` waits for an idle process, so callers may have more jobs in flight than processes.
    A job that passes its time limit, or whose process dies, gets its process replaced.
    """

    def __init__(self, size: int, initializer: Callable[..., None], initargs: Sequence[Any]) -> None:
        if size < 1:
            raise ValueError("an analysis group needs at least one process")
        self._initializer = initializer
        self._initargs = initargs
        # Started now, so models load before the first event rather than in front of it.
        self._all = [_Process(initializer, initargs) for _ in range(size)]
        self._idle: asyncio.Queue[_Process] | None = None
        self._closed = False

    @property
    def pids(self) -> list[int | None]:
        return [each.process.pid for each in self._all]

    def _idle_queue(self) -> asyncio.Queue[_Process]:
        # Made on first use, inside the event loop that runs the jobs.
        if self._idle is None:
            self._idle = asyncio.Queue()
            for each in self._all:
                self._idle.put_nowait(each)
        return self._idle

    async def run(self, function: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """``function(*args)`` in an idle process; raises TimeoutError past ``timeout_s`` once
        started, ProcessCrashed if its process died, or whatever the function raised."""
        if self._closed:
            raise RuntimeError("the analysis processes are closed")
        idle = self._idle_queue()
        process = await idle.get()
        try:
            return await asyncio.wait_for(process.run(function, args), timeout_s)
        except (TimeoutError, ProcessCrashed, asyncio.CancelledError):
            # The process is still busy with a job no one waits for (its late answer must not
            # reach the next job), or gone: either way it is replaced.
            process.stop(kill=True)
            if not self._closed:
                replacement = _Process(self._initializer, self._initargs)
                self._all[self._all.index(process)] = replacement
                process = replacement
            raise
        finally:
            if not self._closed:
                idle.put_nowait(process)

    def close(self) -> None:
        self._closed = True
        for each in self._all:
            with contextlib.suppress(OSError):
                each.stop(kill=False)
