"""Registering images that already sit in an S3/R2 bucket, without passing them through the API.

How an object becomes a Peek image: the API server lists the prefix a page at a time, reads each
object once (a full GET: the sha256 that deduplication and the ``image.uploaded`` event need
covers every byte, so a ranged header read would not be enough), validates it like an upload, and
then **copies it server-side** (S3 ``CopyObject``) into Peek's own bucket under ``originals/``.
The bytes never travel back up. Copying rather than referencing the source key keeps three
promises even when the source is Peek's own bucket: workers read every original from Peek's
storage with Peek's credentials, an annotated copy is kept beside it under ``annotated/``
(never over a user's object), and deleting or rewriting the source later does not change a result.

The source is read with Peek's S3 client (same endpoint and credentials; on R2, any bucket of the
same account). When Peek stores images in a local folder, the object's bytes are written there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from infra.settings import Settings
from infra.storage import S3Storage, StorageError
from ingest_api.bulk import bounded_map, refusal
from ingest_api.errors import ApiError
from ingest_api.services import Services
from ingest_api.uploads import ALLOWED_EXTENSIONS, accept_upload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BucketSource:
    """``s3://bucket/prefix``: where the objects to ingest are."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> BucketSource:
        if not url.startswith("s3://"):
            raise ApiError(400, f"the source must look like s3://bucket/prefix, not {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ApiError(400, "the source names no bucket: use s3://bucket/prefix")
        return cls(bucket, prefix)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}"


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int


def s3_client(services: Services) -> Any:
    """Peek's S3 client, or one built from the S3 settings when Peek stores images locally."""
    if isinstance(services.storage, S3Storage):
        return services.storage.client
    settings: Settings = services.settings
    if not (settings.s3_endpoint_url or settings.r2_account_id):
        raise ApiError(
            400, "bucket ingestion needs an S3 endpoint: set S3_ENDPOINT_URL (or R2_ACCOUNT_ID) and keys"
        )
    return S3Storage(settings).client


def _is_image_key(key: str) -> bool:
    return not key.endswith("/") and key.rsplit(".", 1)[-1].lower() in ALLOWED_EXTENSIONS


def list_page(
    client: Any, source: BucketSource, start_after: str | None, limit: int
) -> tuple[list[ListedObject], str | None]:
    """Up to ``limit`` keys under the prefix after ``start_after``; and where the next page starts."""
    from botocore.exceptions import BotoCoreError, ClientError

    request: dict[str, Any] = {"Bucket": source.bucket, "Prefix": source.prefix, "MaxKeys": limit}
    if start_after:
        request["StartAfter"] = start_after
    try:
        page = client.list_objects_v2(**request)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ApiError(404, f"no bucket named {source.bucket!r}") from None
        if code in ("AccessDenied", "403"):
            raise ApiError(403, f"Peek's credentials may not list {source.url()}") from None
        raise ApiError(502, f"the bucket could not be listed ({code or 'error'})") from None
    except BotoCoreError:
        raise ApiError(
            503, "object storage is unreachable; try again shortly", {"Retry-After": "5"}
        ) from None
    contents = page.get("Contents", [])
    listed = [ListedObject(item["Key"], int(item["Size"])) for item in contents]
    next_start = contents[-1]["Key"] if page.get("IsTruncated") and contents else None
    return listed, next_start


def _read_object(client: Any, bucket: str, key: str) -> bytes:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
    except Exception as exc:
        raise ApiError(502, f"could not read {key} from the bucket: {exc}") from None


def _copier(services: Services, client: Any, source: BucketSource, source_key: str) -> Any:
    """``store(key, data, content_type)`` that copies server-side into Peek's bucket when it can."""
    storage = services.storage

    def copy_into_peek(key: str, data: bytes, content_type: str) -> None:
        if not isinstance(storage, S3Storage):
            storage.put(key, data, content_type)
            return
        try:
            client.copy_object(
                Bucket=storage.bucket,
                Key=key,
                CopySource={"Bucket": source.bucket, "Key": source_key},
                ContentType=content_type,
                MetadataDirective="REPLACE",
            )
        except Exception as exc:
            raise StorageError(f"could not copy {source.url(source_key)}: {exc}") from exc

    return copy_into_peek


async def ingest_page(
    services: Services, source_url: str, *, start_after: str | None, limit: int, reanalyze: bool
) -> dict[str, Any]:
    """Register one page of objects; ``next_start_after`` is null when the prefix is exhausted."""
    source = BucketSource.parse(source_url)
    limit = max(1, min(limit, services.settings.bucket_page_size))
    client = s3_client(services)
    listed, next_start = await run_in_threadpool(list_page, client, source, start_after, limit)
    max_bytes = services.settings.max_file_size

    async def register(item: ListedObject) -> dict[str, Any]:
        where = {"key": item.key}
        try:
            if not _is_image_key(item.key):
                raise ApiError(400, "not an image file name (png, jpg, jpeg, gif, bmp, webp)")
            if item.size > max_bytes:
                raise ApiError(413, f"the object is larger than the {max_bytes // (1024 * 1024)} MB limit")
            data = await run_in_threadpool(_read_object, client, source.bucket, item.key)
            accepted = await accept_upload(
                services,
                data,
                item.key,
                reanalyze=reanalyze,
                store=_copier(services, client, source, item.key),
            )
        except Exception as exc:
            return refusal(exc, **where)
        return {**accepted.body(), **where}

    entries = await bounded_map(listed, register, services.settings.ingest_concurrency)
    accepted = sum("id" in entry for entry in entries)
    return {
        "source": source.url(),
        "accepted": accepted,
        "refused": len(entries) - accepted,
        "results": entries,
        "next_start_after": next_start,
    }
