"""A lean HTTP/1.1 load generator for the ingest benches: multipart uploads over keep-alive sockets.

httpx spends a few milliseconds of Python per request, which on a 2-core machine is CPU taken
from the server being measured. Here each request is built once, before the clock starts, and a
connection is a pair of asyncio streams: sending is a write, answering is a status line, headers
and a ``Content-Length`` body. The client's own CPU is reported so a reader can see what it took.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def multipart_request(host: str, path: str, field_name: str, files: list[tuple[str, bytes]]) -> bytes:
    """One complete POST: request line, headers and a multipart body of ``files``."""
    boundary = uuid.uuid4().hex
    parts = []
    for filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class Outcome:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[dict[str, object]] = field(default_factory=list)
    client_cpu_s: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def send_all(url: str, requests: list[bytes], concurrency: int, keep_bodies: bool = False) -> Outcome:
    """Send every prepared request over ``concurrency`` keep-alive connections; time each one."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    outcome = Outcome()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                started = time.perf_counter()
                writer.write(request)
                status, body = await _read_response(reader)
                outcome.latencies.append(time.perf_counter() - started)
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                if keep_bodies:
                    outcome.bodies.append(json.loads(body))
        finally:
            writer.close()

    cpu_before = _own_cpu()
    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    outcome.seconds = time.perf_counter() - started
    outcome.client_cpu_s = _own_cpu() - cpu_before
    return outcome


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
