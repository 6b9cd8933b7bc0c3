"""The API key store: create, list, revoke and look up keys; only SHA-256 hashes are kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sink.models import ApiKey, utc_now

KEY_PREFIX = "peek_"


@dataclass(frozen=True)
class KeyRecord:
    """What the API needs to know about a presented key (never the secret)."""

    id: int
    name: str
    rate_per_minute: int | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, rate_per_minute: int | None = None) -> tuple[ApiKey, str]:
    """A new key; returns the row and the secret, which is shown once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        key_hash=hash_secret(secret),
        prefix=secret[: len(KEY_PREFIX) + 6],
        rate_per_minute=rate_per_minute,
    )
    session.add(row)
    session.flush()
    return row, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int) -> ApiKey | None:
    """Mark a key revoked (idempotent); None when there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utc_now()
    return row


def find_active_key(session: Session, secret: str) -> KeyRecord | None:
    """The key a client presented, when it exists and is not revoked."""
    row = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
    ).first()
    return KeyRecord(row.id, row.name, row.rate_per_minute) if row else None


def active_key_count(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
    )


def describe(row: ApiKey) -> dict[str, object]:
    """A key as `peek keys list` shows it: no secret, no hash."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "rate_per_minute": row.rate_per_minute,
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }
