"""Where clients fetch an image from: a stable URL for results, a presigned one on request."""

from __future__ import annotations

from infra.settings import Settings


def public_url(settings: Settings, image_id: int, storage_key: str) -> str:
    """The R2 public-domain URL when one is configured, else the API's own route."""
    if settings.r2_public_domain:
        domain = settings.r2_public_domain.rstrip("/")
        base = domain if "://" in domain else f"https://{domain}"
        return f"{base}/{storage_key}"
    return f"{settings.public_api_url.rstrip('/')}/api/image/{image_id}/original"
