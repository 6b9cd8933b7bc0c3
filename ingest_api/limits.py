"""A deadline on receiving a request body, so slow senders cannot hold a request open for ever."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTimeout(Exception):
    """The client did not finish sending its body within the deadline."""


class BodyDeadlineMiddleware:
    """The whole body must arrive within ``timeout_s`` of the request's start."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s

        async def receive_before_deadline() -> Message:
            if loop.time() >= deadline:
                raise BodyTimeout
            try:
                # A timer, not wait_for's extra task per chunk: this wraps every receive.
                async with asyncio.timeout_at(deadline):
                    return await receive()
            except TimeoutError:
                raise BodyTimeout from None

        await self.app(scope, receive_before_deadline, send)
