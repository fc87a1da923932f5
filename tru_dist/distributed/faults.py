"""Deterministic fault injection, to test that a killed worker resumes and changes nothing.

``dist.fault_rank = r`` and ``dist.fault_step = n`` make rank r raise
:class:`InjectedFault` once, when it reaches its n-th optimizer step (1-based, counted
from the first step of the run and continued across restarts via the resumed epoch).
"Once" is a marker file ``fault.rank{r}.step{n}`` in the run's directory, written just
before raising: the restarted worker group sees it and runs on. Ray Train
(``FailureConfig(max_failures)``) restarts the group from the latest checkpoint; since
resuming restores every state (parameters, Adam, sampler, RNGs), the run then ends with
the metrics of an uninterrupted run.

The step counter hooks into the model's loss: :func:`arm` wraps ``model.loss`` on the
instance, so every trainer (training, unlearning) is covered without knowing about faults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    """The failure :mod:`tru_dist.distributed.faults` raises on purpose."""


@dataclass
class FaultPlan:
    """Where and when to fail; ``rank < 0`` or ``step < 1`` disables injection."""

    rank: int
    step: int
    marker_dir: Path

    @property
    def enabled(self) -> bool:
        return self.rank >= 0 and self.step >= 1

    @property
    def marker(self) -> Path:
        return self.marker_dir / f"fault.rank{self.rank}.step{self.step}"

    def should_fail(self, rank: int, step: int) -> bool:
        return self.enabled and rank == self.rank and step == self.step and not self.marker.exists()

    def fire(self) -> None:
        """Write the marker (so a restart does not fail again), then raise."""
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"injected at pid {os.getpid()}\n")
        raise InjectedFault(
            f"injected fault on rank {self.rank} at step {self.step} (dist.fault_rank/fault_step)")


def arm(model: Any, plan: FaultPlan, rank: int, start_step: int = 0) -> Callable[[], int]:
    """Count ``model.loss`` calls (one per optimizer step) and fail per ``plan``.

    ``start_step`` = steps already taken before this attempt (after a resume). Returns a
    function giving the current step count. A disabled plan leaves the model untouched.
    """
    state = {"step": start_step}
    if not plan.enabled or rank != plan.rank:
        return lambda: state["step"]
    original = model.loss

    def counted_loss(*args: Any, **kwargs: Any) -> Any:
        state["step"] += 1
        if plan.should_fail(rank, state["step"]):
            plan.fire()
        return original(*args, **kwargs)

    model.loss = counted_loss
    return lambda: state["step"]
