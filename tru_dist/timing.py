"""Wall-clock timing of work a user waits for (CUDA synchronised).

``with Stopwatch() as sw: ...`` then ``sw.seconds``. On CUDA, kernels run asynchronously:
without a ``torch.cuda.synchronize()`` at both ends the clock would stop before the GPU has
finished, so both ends synchronise whenever CUDA has been initialised in this process.
"""

from __future__ import annotations

import time

import torch


def synchronize() -> None:
    """Wait for queued CUDA work (a no-op without an initialised CUDA context)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (perf_counter, CUDA synchronised)."""

    def __enter__(self) -> Stopwatch:
        synchronize()
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.start
