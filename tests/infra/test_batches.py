"""gather_batches: the sink's batching of partials, waiting with no timer while nothing arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from infra.faust_app import gather_batches

# A bound on every test: batching must never wait for more than its window once items stop.
GUARD_S = 10.0


async def _collect(items: AsyncIterator[int], max_items: int, within_s: float) -> list[list[int]]:
    return [batch async for batch in gather_batches(items, max_items, within_s)]


async def _count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def test_items_already_there_come_in_full_batches_and_the_last_is_not_held() -> None:
    # A window far longer than the guard: the last, short batch must end when the source ends.
    batches = asyncio.run(asyncio.wait_for(_collect(_count(450), 200, within_s=60), GUARD_S))
    assert [len(batch) for batch in batches] == [200, 200, 50]
    assert [item for batch in batches for item in batch] == list(range(450))


def test_a_lone_item_is_passed_on_after_the_window() -> None:
    async def run() -> list[int]:
        never = asyncio.Event()

        async def one_then_silence() -> AsyncIterator[int]:
            yield 7
            await never.wait()

        batches = gather_batches(one_then_silence(), 200, within_s=0.05)
        first = await asyncio.wait_for(anext(batches), GUARD_S)
        await batches.aclose()
        return first

    assert asyncio.run(run()) == [7]


def test_items_arriving_within_the_window_share_a_batch() -> None:
    async def run() -> list[list[int]]:
        async def trickle() -> AsyncIterator[int]:
            for i in range(3):
                yield i
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            yield 3

        return await asyncio.wait_for(_collect(trickle(), 200, within_s=0.5), GUARD_S)

    assert asyncio.run(run()) == [[0, 1, 2], [3]]


def test_waiting_for_a_first_item_runs_no_timer() -> None:
    async def run() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        scheduled: list[Any] = []
        call_at: Callable[..., Any] = loop.call_at

        def counting_call_at(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            scheduled.append(callback)
            return call_at(when, callback, *args, **kwargs)

        go = asyncio.Event()

        async def late() -> AsyncIterator[int]:
            await go.wait()
            yield 1

        batches = gather_batches(late(), 200, within_s=0.01)
        first: Awaitable[list[int]] = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)
        loop.call_at = counting_call_at  # type: ignore[method-assign]
        await asyncio.sleep(0.5)  # this sleep is the one timer expected while idle
        timers_while_idle = len(scheduled)
        loop.call_at = call_at  # type: ignore[method-assign]
        go.set()
        batch = await asyncio.wait_for(first, GUARD_S)
        await batches.aclose()
        return timers_while_idle, batch

    timers_while_idle, batch = asyncio.run(run())
    # Faust's noack_take, polling every window, would have scheduled about 50 here.
    assert timers_while_idle == 1
    assert batch == [1]


def test_an_error_in_the_source_comes_after_its_items() -> None:
    async def three_then_fail() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        raise ValueError("the stream broke")

    async def run() -> list[list[int]]:
        seen: list[list[int]] = []
        with pytest.raises(ValueError, match="the stream broke"):
            async for batch in gather_batches(three_then_fail(), 200, within_s=0.05):
                seen.append(batch)
        return seen

    assert asyncio.run(asyncio.wait_for(run(), GUARD_S)) == [[0, 1, 2]]
