"""One approximate method epoch by epoch, for a scheduler that needs a report after every epoch.

:func:`method_epochs` wraps :func:`tru_dist.unlearn.engine.iter_update` with the method's
spec (:func:`tru_dist.unlearn.specs.spec_for`: reverse_bpr, grad_ascent, finetune and TRU
are all that loop), which runs the very loop of ``run_update`` and yields after each
epoch, so a trial costs E epochs and the state after epoch e is exactly the method with
``unlearn.epochs = e`` (TRU's gate early stop included: a run that converges at epoch
c < e stops there). :func:`method_at_epoch` computes one such state directly (the report's
single re-evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tru_dist.config import Config
from tru_dist.unlearn.engine import iter_update, run_update
from tru_dist.unlearn.specs import spec_for


@dataclass
class EpochState:
    """The method's model after ``epoch`` epochs, its decisions, and the wall time of those epochs."""

    epoch: int
    model: Any
    stats: dict[str, Any]
    seconds: float

    @property
    def converged(self) -> bool:
        """The gate stopped the run before it reached ``epoch`` full epochs (TRU only)."""
        return self.stats.get("epochs_run", self.epoch) < self.epoch


def method_at_epoch(method: str, original, deletion, cfg: Config, epoch: int) -> EpochState:
    """``method`` with ``cfg``'s hyperparameters stopped after ``epoch`` epochs (exact, see module doc)."""
    cfg = cfg.model_copy(deep=True)
    cfg.unlearn.epochs = epoch
    t0 = time.perf_counter()
    model, stats = run_update(original, deletion, cfg, spec_for(method, cfg))
    return EpochState(epoch, model, stats, time.perf_counter() - t0)


def method_epochs(method: str, original, deletion, cfg: Config) -> Iterator[EpochState]:
    """States after epochs 1, 2, … of one run of ``method`` (the model is live: evaluate, don't keep).

    ``seconds`` counts only the time spent inside the run (the consumer's evaluation and
    reporting between epochs are not the method's cost), so it is comparable with
    :func:`method_at_epoch` and with the other methods' ``seconds``."""
    run = iter_update(original, deletion, cfg, spec_for(method, cfg))
    spent = 0.0
    while True:
        t0 = time.perf_counter()
        state = next(run, None)
        spent += time.perf_counter() - t0
        if state is None:
            return
        epoch, model, stats = state
        yield EpochState(epoch, model, stats, spent)
