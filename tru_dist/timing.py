"""Wall-clock timing of work a user waits for (CUDA synchronised), and the process's peak memory.

``with Stopwatch() as sw: ...`` then ``sw.seconds``. On CUDA, kernels run asynchronously:
without a ``torch.cuda.synchronize()`` at both ends the clock would stop before the GPU has
finished, so both ends synchronise whenever CUDA has been initialised in this process.
"""

from __future__ import annotations

import resource
import sys
import time


def synchronize() -> None:
    """Wait for queued CUDA work (a no-op without an initialised CUDA context). torch is not
    imported here: a process that has not imported it has queued no CUDA work, and the method
    registry (which the CLI's parser reads) imports this module."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
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


def warm_up_process() -> None:
    """Pay this process's one-time costs before anything is timed side by side.

    The first ``torch.optim`` optimizer built in a process imports ``torch._dynamo`` (its
    methods are wrapped to disable compilation): ~1 s measured on this machine, every later one
    ~0.1 ms. Without this, a comparison charges that second to whichever method happens to
    build an optimizer first (reverse_bpr, after a cached Retrain) — not a cost of the method.
    """
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
