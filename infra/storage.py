"""Object storage for originals and annotated copies: R2 / any S3 endpoint, or a local folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol

from infra.settings import Settings
from infra.urls import public_domain_url


class StorageError(RuntimeError):
    """Storage could not complete an operation."""


class ObjectNotFound(StorageError):
    """No object under that key."""


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def url(self, key: str, expires_in: int) -> str | None:
        """A URL a client can fetch the object from, or None when only the API can serve it."""
        ...

    def check(self) -> None:
        """Raise StorageError when storage is unreachable."""
        ...


class LocalStorage:
    """Objects as files under one folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._folders: set[Path] = set()  # folders known to exist: one mkdir per folder, not per put

    def _path(self, key: str) -> Path:
        # Keys are checked by their words, not by asking the file system: no "..", no absolute path,
        # no empty or dot parts (a symlink planted inside the folder is the operator's own doing).
        parts = key.split("/")
        if not key or key.startswith("/") or "\x00" in key or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"storage key escapes the storage folder: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            self._write(path, data)
        except FileNotFoundError:
            # The folder went away since it was made (cleaned up by hand): make it again.
            self._folders.discard(path.parent)
            self._write(path, data)

    def _write(self, path: Path, data: bytes) -> None:
        """Write to a temporary name beside the object, then rename: readers never see half a file."""
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def url(self, key: str, expires_in: int) -> str | None:
        return None

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage folder {self.root} is not writable")


class S3Storage:
    """R2 or any S3-compatible store through boto3, with bounded retries and timeouts."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.r2_bucket_name
        self.public_domain = settings.r2_public_domain
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            aws_access_key_id=settings.r2_access_key_id or None,
            aws_secret_access_key=settings.r2_secret_access_key or None,
            region_name=settings.s3_region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
                signature_version="s3v4",
            ),
        )

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except Exception as exc:
            raise StorageError(f"could not store {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise StorageError(f"could not read {key}: {exc}") from exc
        except Exception as exc:
            raise StorageError(f"could not read {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise StorageError(f"could not delete {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError:
            return False

    def url(self, key: str, expires_in: int) -> str | None:
        if self.public_domain:
            return public_domain_url(self.public_domain, key)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageError(f"bucket {self.bucket} unreachable: {exc}") from exc


def build_storage(settings: Settings) -> Storage:
    """Storage as configured: S3/R2 when a bucket is configured, otherwise a local folder."""
    if settings.uses_s3:
        storage = S3Storage(settings)
        if settings.s3_endpoint_url:
            # Self-hosted S3 (MinIO, moto): create the bucket on first use; R2 buckets are made by ops.
            storage.ensure_bucket()
        return storage
    return LocalStorage(settings.local_storage_dir)
