"""The analyzers: pure functions from a BGR image to a dict of insight fields, and their registry.

A new analyzer is one module (exporting `FIELDS`, `VERSION` and `analyze`, and optionally
`DECODE_SIDE`, the largest image side it looks at, and `LUMA_ONLY = True` when it looks at
brightness only and so accepts a single-channel image) plus one line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from stream_workers.analyzers import colors, faces, quality, scene, text

__all__ = ["REGISTRY", "Analyzer", "analyze_all"]


@dataclass(frozen=True)
class Analyzer:
    """One analyzer: its name, result version, the fields it produces and the function itself."""

    name: str
    version: str
    fields: tuple[str, ...]
    run: Callable[[np.ndarray], dict]
    # A worker running only this analyzer decodes no larger than this (JPEG DCT scaling makes
    # that much cheaper); None means the full decode that every analyzer can share.
    decode_side: int | None = None
    # A worker running only this analyzer decodes the image's luma alone (cheaper to decode and
    # to shrink); the analyzer accepts BGR and single-channel images alike.
    luma_only: bool = False


def _from_module(module: ModuleType) -> Analyzer:
    """Describe an analyzer module (`FIELDS`, `VERSION`, `analyze`) as an `Analyzer`."""
    name = module.__name__.rsplit(".", 1)[-1]
    return Analyzer(
        name=name,
        version=module.VERSION,
        fields=module.FIELDS,
        run=module.analyze,
        decode_side=getattr(module, "DECODE_SIDE", None),
        luma_only=getattr(module, "LUMA_ONLY", False),
    )


REGISTRY: dict[str, Analyzer] = {
    analyzer.name: analyzer for analyzer in map(_from_module, (colors, quality, faces, text, scene))
}


def analyze_all(image: np.ndarray) -> dict:
    """Run every registered analyzer on one image and merge their fields."""
    merged: dict = {}
    for analyzer in REGISTRY.values():
        merged.update(analyzer.run(image))
    return merged
