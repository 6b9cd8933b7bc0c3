"""Access: API keys hashed at rest and managed with `peek keys`, per-key rate limits in Redis,
reads limited to the key's own images, CORS never `*` with keys on, no secrets in logs or bodies.

Each scenario runs its own API process on its own fresh PostgreSQL database (keys in a shared
database would lock other tests out), its own embedded broker and its own S3 bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from infra.broker import EmbeddedBroker
from infra.kafka import ensure_topics
from tests import services
from tests.conftest import service_env

DB_PASSWORD = "db-pw-" + uuid.uuid4().hex[:12]
S3_SECRET = "s3-secret-" + uuid.uuid4().hex[:12]
ALLOWED_ORIGIN = "https://app.example"


def _with_password(url: str) -> str:
    """The URL with a password marker; PostgreSQL here trusts local connections and ignores it."""
    scheme, rest = url.split("://", 1)
    netloc, path = rest.split("/", 1)
    user_part, _, host = netloc.rpartition("@")
    if ":" in user_part:  # a real password already: keep it
        return url
    return f"{scheme}://{user_part or 'postgres'}:{DB_PASSWORD}@{host}/{path}"


def _own_redis_db(url: str) -> str:
    """Another Redis database number than the shared test one, so rate counters stay apart."""
    base, _, number = url.rpartition("/")
    return f"{base}/12" if number.isdigit() else url


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with EmbeddedBroker() as embedded:
        ensure_topics(embedded.bootstrap, 2)
        yield embedded.bootstrap


def _api(
    postgres_server: str,
    redis_url: str,
    s3_endpoint: str,
    broker: str,
    folder: Path,
    extra: dict[str, str],
) -> Iterator[tuple[services.PeekProcesses, str]]:
    with services.fresh_database(postgres_server) as database_url:
        env = service_env(
            _with_password(database_url),
            _own_redis_db(redis_url),
            s3_endpoint,
            broker,
            folder / "data",
            bucket=f"access-{uuid.uuid4().hex[:8]}",
        )
        env.update({"R2_SECRET_ACCESS_KEY": S3_SECRET, **extra})
        peek = services.PeekProcesses(env, folder / "logs")
        try:
            peek.start_api()
            yield peek, database_url
        finally:
            peek.stop_all()


@pytest.fixture(scope="module")
def locked(
    postgres_server: str,
    redis_url: str,
    s3_endpoint: str,
    broker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.PeekProcesses, str]]:
    """An API with PEEK_REQUIRE_API_KEYS=1 and one allowed browser origin."""
    yield from _api(
        postgres_server,
        redis_url,
        s3_endpoint,
        broker,
        tmp_path_factory.mktemp("locked"),
        {"PEEK_REQUIRE_API_KEYS": "1", "CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN},
    )


@pytest.fixture(scope="module")
def open_by_default(
    postgres_server: str,
    redis_url: str,
    s3_endpoint: str,
    broker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.PeekProcesses, str]]:
    """An API with no key configuration at all and CORS_ALLOWED_ORIGINS=*."""
    yield from _api(
        postgres_server,
        redis_url,
        s3_endpoint,
        broker,
        tmp_path_factory.mktemp("open"),
        {"CORS_ALLOWED_ORIGINS": "*"},
    )


def peek_keys(peek: services.PeekProcesses, *args: str) -> dict[str, object]:
    """Run the real `peek keys` command against the API's database; its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "keys", *args],
        env={**os.environ, **peek.env},
        cwd=services.REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[0])  # type: ignore[no-any-return]


def upload(http: httpx.Client, corpus: Path, key: str | None, name: str = "apple.jpg") -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    # Unique bytes per call, so that content deduplication does not hand back an earlier id.
    data = (corpus / name).read_bytes() + uuid.uuid4().bytes
    return http.post("/api/analyze", files={"image": (name, data)}, headers=headers)


def test_keys_are_off_by_default_and_turn_on_when_one_exists(open_by_default, corpus: Path) -> None:
    peek, _ = open_by_default
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        assert upload(http, corpus, None).status_code == 202
        preflight = http.options(
            "/api/analyze",
            headers={"Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers.get("access-control-allow-origin") == "*"

        created = peek_keys(peek, "create", "first-client")
        secret = str(created["key"])
        # Key lookups are trusted for a few seconds; then the open API closes by itself.
        services.wait_for(lambda: upload(http, corpus, None).status_code == 401, 30, "keys to be required")
        assert upload(http, corpus, secret).status_code == 202
        preflight = http.options(
            "/api/analyze",
            headers={"Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers.get("access-control-allow-origin") != "*"
        assert "access-control-allow-origin" not in preflight.headers


def test_requests_without_a_valid_key_are_refused(locked, corpus: Path) -> None:
    peek, _ = locked
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        missing = upload(http, corpus, None)
        assert missing.status_code == 401
        assert "API key is required" in missing.json()["error"]
        wrong = upload(http, corpus, "peek_" + "x" * 43)
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
        assert http.get("/api/results/1").status_code == 401
        assert http.get("/api/health").status_code == 200  # probes stay open


def test_keys_are_stored_hashed_and_revocable(locked, corpus: Path) -> None:
    peek, database_url = locked
    created = peek_keys(peek, "create", "revocable")
    secret = str(created["key"])
    assert secret.startswith("peek_") and len(secret) > 40
    with psycopg.connect(database_url) as connection:
        rows = connection.execute("SELECT key_hash, prefix, name FROM api_keys").fetchall()
        dump = json.dumps([list(row) for row in rows])
    assert secret not in dump
    assert hashlib.sha256(secret.encode()).hexdigest() in [row[0] for row in rows]
    listed = subprocess.run(
        [sys.executable, "-m", "infra.cli", "keys", "list"],
        env={**os.environ, **peek.env},
        cwd=services.REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and secret not in listed.stdout and "revocable" in listed.stdout

    with httpx.Client(base_url=peek.url, timeout=30) as http:
        assert upload(http, corpus, secret).status_code == 202
        peek_keys(peek, "revoke", str(created["id"]))
        services.wait_for(
            lambda: upload(http, corpus, secret).status_code == 401, 30, "the revoked key to be refused"
        )


def test_a_key_reads_only_its_own_images(locked, corpus: Path) -> None:
    peek, _ = locked
    owner = str(peek_keys(peek, "create", "owner")["key"])
    stranger = str(peek_keys(peek, "create", "stranger")["key"])
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        response = upload(http, corpus, owner)
        assert response.status_code == 202, response.text
        image_id = response.json()["id"]
        mine = {"X-API-Key": owner}
        theirs = {"X-API-Key": stranger}
        assert http.get(f"/api/results/{image_id}", headers=mine).status_code == 202
        url = http.get(f"/api/image/{image_id}/url", headers=mine)
        assert url.status_code == 200
        assert httpx.get(url.json()["url"]).content[:2] == b"\xff\xd8"  # a working presigned URL
        # The other key learns nothing: every route answers as for an image that does not exist.
        for path in ("results/{id}", "image/{id}/url", "image/{id}/original", "image/{id}/annotated"):
            refused = http.get("/api/" + path.format(id=image_id), headers=theirs)
            assert refused.status_code == 404, path
            assert refused.json() == {"error": f"no image with id {image_id}"}
        # Bearer works as well as X-API-Key.
        bearer = http.get(f"/api/results/{image_id}", headers={"Authorization": f"Bearer {owner}"})
        assert bearer.status_code == 202


def test_rate_limit_is_per_key_sliding_window_in_redis(locked, corpus: Path, redis_url: str) -> None:
    peek, _ = locked
    slow = peek_keys(peek, "create", "slow-client", "--rate", "5/min")
    other = str(peek_keys(peek, "create", "other-client")["key"])
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        headers = {"X-API-Key": str(slow["key"])}
        statuses = [http.get("/api/results/999999", headers=headers).status_code for _ in range(5)]
        assert statuses == [404] * 5
        limited = http.get("/api/results/999999", headers=headers)
        assert limited.status_code == 429
        assert "5 requests per minute" in limited.json()["error"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Another key is not slowed by this one.
        assert http.get("/api/results/999999", headers={"X-API-Key": other}).status_code == 404
    namespace = peek.env["PEEK_REDIS_NAMESPACE"]
    window = redis.Redis.from_url(_own_redis_db(redis_url)).zcard(f"{namespace}:rate:{slow['id']}")
    assert window == 5  # the sliding window lives in Redis, one member per allowed request


def test_cors_names_only_configured_origins(locked) -> None:
    peek, _ = locked
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        for origin, allowed in ((ALLOWED_ORIGIN, True), ("https://evil.example", False)):
            preflight = http.options(
                "/api/analyze",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "x-api-key",
                },
            )
            assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed
        unauthorized = http.get("/api/results/1", headers={"Origin": ALLOWED_ORIGIN})
        assert unauthorized.status_code == 401
        assert unauthorized.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN


def test_star_origin_with_required_keys_refuses_to_start() -> None:
    from infra.settings import Settings
    from ingest_api.app import create_app

    settings = Settings(PEEK_REQUIRE_API_KEYS=True, CORS_ALLOWED_ORIGINS="*")
    with pytest.raises(ValueError, match="cannot be used with PEEK_REQUIRE_API_KEYS"):
        create_app(settings)


def test_no_secrets_in_logs_or_error_bodies(locked, corpus: Path) -> None:
    peek, _ = locked
    secret = str(peek_keys(peek, "create", "log-check")["key"])
    bodies = []
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        headers = {"X-API-Key": secret}
        bodies.append(upload(http, corpus, secret).text)
        bodies.append(http.post("/api/analyze", files={"image": ("x.png", b"junk")}, headers=headers).text)
        bodies.append(http.get("/api/results/abc", headers=headers).text)
        bodies.append(http.get("/api/health").text)
        bodies.append(upload(http, corpus, secret + "-tampered").text)
    logs = peek.logs()
    for marker in (secret, DB_PASSWORD, S3_SECRET):
        assert marker not in logs
        assert all(marker not in body for body in bodies)


@pytest.fixture(scope="module")
def turned_on(
    postgres_server: str,
    redis_url: str,
    s3_endpoint: str,
    broker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.PeekProcesses, str]]:
    """An API that starts with keys off; the test turns them on by creating keys."""
    yield from _api(postgres_server, redis_url, s3_endpoint, broker, tmp_path_factory.mktemp("turned-on"), {})


def _listed_ids(http: httpx.Client, key: str, **filters: object) -> list[int]:
    """Every id of the filtered listing, following next_cursor with two results a page; each page
    but the last is full, so filtering happens in the query and not after it."""
    ids: list[int] = []
    params: dict[str, object] = {"limit": 2, **filters}
    while True:
        page = http.get("/api/results", params=params, headers={"X-API-Key": key})
        assert page.status_code == 200, page.text
        body = page.json()
        ids += [result["id"] for result in body["results"]]
        if body["next_cursor"] is None:
            return ids
        assert len(body["results"]) == 2
        params["cursor"] = body["next_cursor"]


def test_batch_listing_and_long_poll_show_a_key_only_what_it_may_read(turned_on, corpus: Path) -> None:
    peek, _ = turned_on
    with httpx.Client(base_url=peek.url, timeout=60) as http:
        before_keys = upload(http, corpus, None)
        assert before_keys.status_code == 202
        shared = before_keys.json()["id"]  # uploaded while keys were off: every key reads it
        owner = str(peek_keys(peek, "create", "owner")["key"])
        stranger = str(peek_keys(peek, "create", "stranger")["key"])
        # Until the API notices the keys (a few seconds), keyless uploads are still accepted.
        keyless = [shared]
        while (response := upload(http, corpus, None)).status_code == 202:
            keyless.append(response.json()["id"])
            assert len(keyless) < 500, "keys were never required"
        assert response.status_code == 401
        mine = [upload(http, corpus, owner).json()["id"] for _ in range(3)]
        theirs = [upload(http, corpus, stranger).json()["id"] for _ in range(2)]
        unknown = max(mine + theirs) + 1000

        # Batch lookup: another key's ids are reported exactly like ids that do not exist.
        asked = [theirs[0], *mine, shared, theirs[1], unknown]  # visible: in keyless or the key's own
        for key, readable, hidden in ((owner, mine, theirs), (stranger, theirs, mine)):
            batch = http.get(
                "/api/results", params={"ids": ",".join(map(str, asked))}, headers={"X-API-Key": key}
            )
            assert batch.status_code == 200, batch.text
            visible = [image_id for image_id in asked if image_id in readable or image_id in keyless]
            assert [result["id"] for result in batch.json()["results"]] == visible
            assert batch.json()["not_found"] == [image_id for image_id in asked if image_id in hidden] + [
                unknown
            ]

        # Filtered listing, newest first, paged with the cursor: own images and the keyless one.
        assert _listed_ids(http, owner) == sorted([*mine, *keyless], reverse=True)
        assert _listed_ids(http, owner, status="processing") == sorted([*mine, *keyless], reverse=True)
        assert _listed_ids(http, stranger) == sorted([*theirs, *keyless], reverse=True)
        assert _listed_ids(http, stranger, status="completed") == []

        # Long-poll: another key's image is not found (a readable one would answer 202 after the wait).
        refused = http.get(f"/api/results/{mine[0]}", params={"wait": 20}, headers={"X-API-Key": stranger})
        assert refused.status_code == 404
        assert refused.json() == {"error": f"no image with id {mine[0]}"}
        # No workers run here, so readable images are still processing when the wait ends.
        for key, image_id in ((owner, mine[0]), (stranger, shared), (owner, shared)):
            waited = http.get(f"/api/results/{image_id}", params={"wait": 1}, headers={"X-API-Key": key})
            assert waited.status_code == 202
            assert waited.json() == {"id": image_id, "status": "processing"}
