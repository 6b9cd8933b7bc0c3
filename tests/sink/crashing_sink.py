"""Failure injection for tests/sink/test_sink_app.py: ``peek sink`` that dies in the middle of its
first batch of partials.

It takes the batch, holds it for ``PEEK_INJECT_HOLD_S`` seconds (longer than the offset-commit
interval, so that offsets acknowledged too early would be committed meanwhile), then exits at once,
before anything of the batch is written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from schemas.events import AnalysisPartial
from sink.aggregator import Aggregator

CRASH_EXIT_CODE = 70


def _die_mid_batch(_self: Aggregator, partials: Sequence[AnalysisPartial]) -> None:
    print(f"holding a batch of {len(partials)} partials", flush=True)
    time.sleep(float(os.environ.get("PEEK_INJECT_HOLD_S", "4")))
    os._exit(CRASH_EXIT_CODE)


if __name__ == "__main__":
    Aggregator.apply_partials = _die_mid_batch  # type: ignore[method-assign]
    from infra.cli import main

    sys.exit(main(["sink"]))
