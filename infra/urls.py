"""Where clients fetch an image from: a stable URL for results, a presigned one on request."""

from __future__ import annotations

from infra.settings import Settings


def public_domain_url(domain: str, storage_key: str) -> str:
    """An object's URL on a public bucket domain (``https://`` unless the domain names a scheme)."""
    domain = domain.rstrip("/")
    base = domain if "://" in domain else f"https://{domain}"
    return f"{base}/{storage_key}"


def public_url(settings: Settings, image_id: int, storage_key: str) -> str:
    """The R2 public-domain URL when one is configured, else the API's own route."""
    if settings.r2_public_domain:
        return public_domain_url(settings.r2_public_domain, storage_key)
    return f"{settings.public_api_url.rstrip('/')}/api/image/{image_id}/original"
