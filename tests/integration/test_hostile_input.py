"""Hostile and odd uploads: each refused with a 4xx and a clear message, nothing stored, the
service still healthy. Runs its own API on a fresh PostgreSQL database, its own S3 bucket and its
own embedded broker, so that "nothing stored" is measured exactly: rows, objects and events.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from PIL import Image, PngImagePlugin

from infra.broker import EmbeddedBroker
from infra.kafka import ensure_topics
from tests import png, services
from tests.conftest import service_env

PARTITIONS = 2
BODY_TIMEOUT_S = 3


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A few hundred bytes of PNG whose header claims side × side pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 200_000, 9)
    return png.SIGNATURE + png.chunk(b"IHDR", header) + png.chunk(b"IDAT", pixels) + png.chunk(b"IEND", b"")


def gif_bomb(side: int = 65_535) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0)
    return screen + descriptor + b"\x02\x02\x44\x01\x00\x3b"


def webp_bomb(side: int = 16_384) -> bytes:
    bits = (side - 1) | ((side - 1) << 14)
    lossless = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 64
    chunk = b"VP8L" + struct.pack("<I", len(lossless)) + lossless
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def overwrite(data: bytes, at: int, junk: bytes) -> bytes:
    return data[:at] + junk + data[at + len(junk) :]


def png_with_script() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<html><script>alert(document.cookie)</script></html>")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def jpeg_with_zip() -> bytes:
    """A JPEG with a ZIP archive appended (the GIFAR trick)."""
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("evil.class", b"\xca\xfe\xba\xbe" + b"\x00" * 64)
    return image_bytes("JPEG") + archive.getvalue()


TRUNCATED = {
    fmt: image_bytes(fmt)[: len(image_bytes(fmt)) // 2] for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")
}
# Each corrupts the structure the format's decoder relies on (checksums, headers, lengths).
CORRUPT = {
    "PNG": overwrite(image_bytes("PNG"), len(image_bytes("PNG")) // 3, b"\x00" * 50),
    "JPEG": overwrite(image_bytes("JPEG"), 12, bytes(range(40))),
    "GIF": overwrite(image_bytes("GIF"), len(image_bytes("GIF")) // 3, b"\x00" * 50),
    "BMP": overwrite(image_bytes("BMP"), 8, b"\xff" * 24),
    "WEBP": overwrite(image_bytes("WEBP"), 12, bytes(range(40))),
}
EXTENSION = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


@dataclass
class Footprint:
    database_url: str
    bucket: str
    s3_endpoint: str
    bootstrap: str

    def snapshot(self) -> tuple[int, int, int]:
        """(image rows, stored objects, image.uploaded events)."""
        with psycopg.connect(self.database_url) as connection:
            rows = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        objects = s3.list_objects_v2(Bucket=self.bucket).get("KeyCount", 0)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "footprint"})
        try:
            events = sum(
                consumer.get_watermark_offsets(TopicPartition("image.uploaded", p), timeout=10)[1]
                for p in range(PARTITIONS)
            )
        finally:
            consumer.close()
        return rows, objects, events


@pytest.fixture(scope="module")
def api(
    postgres_server: str, redis_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[services.PeekProcesses, Footprint]]:
    folder = tmp_path_factory.mktemp("hostile")
    bucket = f"hostile-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker, services.fresh_database(postgres_server) as database_url:
        ensure_topics(broker.bootstrap, PARTITIONS)
        env = service_env(
            database_url, redis_url, s3_endpoint, broker.bootstrap, folder / "data", bucket=bucket
        )
        env["PEEK_REQUEST_BODY_TIMEOUT_S"] = str(BODY_TIMEOUT_S)
        peek = services.PeekProcesses(env, folder / "logs")
        try:
            peek.start_api()
            yield peek, Footprint(database_url, bucket, s3_endpoint, broker.bootstrap)
        finally:
            peek.stop_all()


@pytest.fixture
def http(api) -> Iterator[httpx.Client]:
    peek, _ = api
    with httpx.Client(base_url=peek.url, timeout=30) as client:
        yield client


def refused(
    http: httpx.Client, footprint: Footprint, send, status: int | tuple[int, ...], words: str
) -> None:
    """Send something hostile; expect a clear 4xx, no trace, nothing stored, a healthy service."""
    before = footprint.snapshot()
    response = send()
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text
    body = response.json()
    assert set(body) == {"error"} and words in body["error"], body
    assert "Traceback" not in response.text
    assert footprint.snapshot() == before
    assert http.get("/api/health").status_code == 200


@pytest.mark.parametrize("fmt", sorted(TRUNCATED))
def test_truncated_files_are_refused(api, http, fmt: str) -> None:
    _, footprint = api
    name = f"cut.{EXTENSION[fmt]}"
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", files={"image": (name, TRUNCATED[fmt])}),
        400,
        "not a usable image",
    )


@pytest.mark.parametrize("fmt", sorted(CORRUPT))
def test_corrupt_files_are_refused(api, http, fmt: str) -> None:
    _, footprint = api
    name = f"broken.{EXTENSION[fmt]}"
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", files={"image": (name, CORRUPT[fmt])}),
        400,
        "not a usable image",
    )


@pytest.mark.parametrize(
    ("name", "bomb"), [("bomb.png", png_bomb()), ("bomb.gif", gif_bomb()), ("bomb.webp", webp_bomb())]
)
def test_decompression_bombs_are_refused_without_decoding(api, http, name: str, bomb: bytes) -> None:
    _, footprint = api
    assert len(bomb) < 4096  # billions of pixels promised in a few hundred bytes
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", files={"image": (name, bomb)}),
        400,
        "too many pixels",
    )


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("page.png", png_with_script(), "also something else"),
        ("gifar.jpg", jpeg_with_zip(), "another file format after the image"),
        ("page.gif", b"GIF89a<html><script>alert(1)</script></html>" + b"\x00" * 64, "not a usable image"),
    ],
)
def test_polyglots_are_refused(api, http, name: str, data: bytes, words: str) -> None:
    _, footprint = api
    refused(http, footprint, lambda: http.post("/api/analyze", files={"image": (name, data)}), 400, words)


@pytest.mark.parametrize("declared", ["image/jpeg", "text/html", "application/x-php"])
def test_a_wrong_declared_content_type_is_refused(api, http, declared: str) -> None:
    _, footprint = api
    png = image_bytes("PNG", seed=11)
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", files={"image": ("photo.png", png, declared)}),
        400,
        f"declared as {declared}",
    )


def raw_multipart(filename: bytes, data: bytes, content_type: bytes = b"image/png") -> tuple[bytes, str]:
    """A multipart body built by hand, so the file name's bytes reach the server unaltered."""
    boundary = "peekboundary" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="image"; filename="'
        + filename
        + b'"\r\nContent-Type: '
        + content_type
        + b"\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("filename", "words"),
    [
        (b"evil\x00.png", "control characters"),
        # 10 KB: the multipart parser itself refuses a part header that long.
        (b"x" * 10_240 + b".png", "malformed multipart body"),
        (b"x" * 300 + b".png", "characters long"),
        ("holiday\u202egnp.exe".encode(), "text-direction"),
        (b"tab\there\x1b[31m.png", "control characters"),
    ],
)
def test_hostile_file_names_are_refused(api, http, filename: bytes, words: str) -> None:
    _, footprint = api
    body, content_type = raw_multipart(filename, image_bytes("PNG", seed=13))
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", content=body, headers={"Content-Type": content_type}),
        400,
        words,
    )


def test_traversal_and_unicode_names_never_reach_storage(api, http) -> None:
    """A traversal name is only metadata: the base name is kept, the storage key is Peek's own."""
    _, footprint = api
    for index, name in enumerate(
        ["../../../etc/cron.d/evil.png", "..\\..\\windows\\evil.png", "café 写真 🙂.png"]
    ):
        response = http.post("/api/analyze", files={"image": (name, image_bytes("PNG", seed=100 + index))})
        assert response.status_code == 202, response.text
        with psycopg.connect(footprint.database_url) as connection:
            stored, key = connection.execute(
                "SELECT original_filename, storage_key FROM images WHERE id = %s", (response.json()["id"],)
            ).fetchone()
        assert "/" not in stored and "\\" not in stored and ".." not in stored.replace(".png", "")
        assert key.startswith("originals/") and ".." not in key and "evil" not in key
    assert stored == "café 写真 🙂.png"


def test_many_parts_in_one_request_are_refused(api, http) -> None:
    _, footprint = api
    tiny = image_bytes("PNG", size=(4, 4))
    many_files = [("image", (f"f{i}.png", tiny)) for i in range(40)]
    refused(
        http, footprint, lambda: http.post("/api/analyze", files=many_files), 400, "malformed multipart body"
    )
    many_fields = {f"field{i}": "x" for i in range(200)}
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze", data=many_fields, files={"image": ("a.png", tiny)}),
        400,
        "malformed multipart body",
    )
    too_many_for_a_batch = [("images", (f"f{i}.png", tiny)) for i in range(300)]
    refused(
        http,
        footprint,
        lambda: http.post("/api/analyze/batch", files=too_many_for_a_batch),
        400,
        "malformed multipart body",
    )


def _complete_response(answer: bytes) -> bool:
    """True once the headers and as many body bytes as Content-Length promises have arrived."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def test_slow_senders_do_not_hold_the_service(api, http) -> None:
    peek, footprint = api
    before = footprint.snapshot()
    # Slowloris: many connections that send headers a few bytes at a time and never finish.
    crawlers = []
    for _ in range(40):
        crawler = socket.create_connection(("127.0.0.1", peek.port), timeout=5)
        crawler.sendall(b"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        crawlers.append(crawler)
    # A slow body: the headers promise 100 kB, the bytes trickle in.
    body, content_type = raw_multipart(b"slow.png", image_bytes("PNG", size=(200, 200)))
    trickler = socket.create_connection(("127.0.0.1", peek.port), timeout=30)
    trickler.sendall(
        f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    try:
        # Meanwhile ordinary clients are served as usual.
        assert http.get("/api/health").status_code == 200
        fast = http.post("/api/analyze", files={"image": ("fast.png", image_bytes("PNG", seed=21))})
        assert fast.status_code == 202

        answer = b""
        started = time.monotonic()
        for offset in range(0, len(body), 16):
            for crawler in crawlers:
                crawler.sendall(b"a")
            try:
                trickler.sendall(body[offset : offset + 16])
            except OSError:
                break  # the server answered and closed: the test reads the answer below
            trickler.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                answer += trickler.recv(65536)
            if answer or time.monotonic() - started > 60:
                break
        trickler.settimeout(10)
        while not _complete_response(answer):
            chunk = trickler.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"too slowly" in answer
        assert time.monotonic() - started < BODY_TIMEOUT_S + 30
    finally:
        for connection in [*crawlers, trickler]:
            connection.close()
    assert http.get("/api/health").status_code == 200
    rows, objects, events = footprint.snapshot()
    assert (rows, objects, events) == (before[0] + 1, before[1] + 1, before[2] + 1)  # only the fast upload


def test_images_pass_the_screening(api, http) -> None:
    """The checks above refuse the hostile shapes, not ordinary images of every accepted format."""
    for index, fmt in enumerate(sorted(EXTENSION)):
        response = http.post(
            "/api/analyze", files={"image": (f"fine.{EXTENSION[fmt]}", image_bytes(fmt, seed=200 + index))}
        )
        assert response.status_code == 202, (fmt, response.text)


def test_corpus_images_pass_the_screening(api, http, corpus: Path) -> None:
    for path in sorted(corpus.glob("*.jpg"))[:6] + sorted(corpus.glob("*.png"))[:6]:
        response = http.post("/api/analyze", files={"image": (path.name, path.read_bytes())})
        assert response.status_code == 202, (path.name, response.text)
