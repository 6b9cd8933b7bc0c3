"""Failure injection for the fault tests: a `peek` process whose analyzers misbehave on purpose.

``PEEK_INJECT="colors=raise,quality=hang,faces=slow"`` replaces those analyzers' functions, then
runs ``infra.cli.main`` as usual. Only tests use this; it is failure injection, not a mock of a
service. Use it with ``PEEK_WORKER_PROCESSES=0`` so the analysis runs in this patched process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np


def _raise(_image: np.ndarray) -> dict[str, Any]:
    raise RuntimeError("injected failure: this analyzer always raises")


def _hang(_image: np.ndarray) -> dict[str, Any]:
    time.sleep(3600)
    raise AssertionError("unreachable")


def _slow(_image: np.ndarray) -> dict[str, Any]:
    time.sleep(float(os.environ.get("PEEK_INJECT_SLOW_S", "20")))
    return {}


BEHAVIOURS = {"raise": _raise, "hang": _hang, "slow": _slow}


def inject(spec: str) -> None:
    from stream_workers.analyzers import REGISTRY

    for item in filter(None, spec.split(",")):
        name, behaviour = item.split("=")
        REGISTRY[name] = dataclasses.replace(REGISTRY[name], run=BEHAVIOURS[behaviour])


if __name__ == "__main__":
    inject(os.environ.get("PEEK_INJECT", ""))
    from infra.cli import main

    sys.exit(main(sys.argv[1:]))
