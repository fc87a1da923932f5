"""noop: the deletion step alone — the baseline every approximate method must beat.

The original parameters, with fully deleted users' ID rows re-drawn
(:func:`tru_dist.unlearn.deletion.start_model`), served on D_r's graph: deleted edges no
longer propagate, affected degrees are renormalised. No gradient step. Its ``seconds`` are
the deletion step's (plus the copy and reset).
"""

from __future__ import annotations

from tru_dist.unlearn.base import Stopwatch, UnlearnResult
from tru_dist.unlearn.deletion import start_model


def unlearn(model, deletion, cfg) -> UnlearnResult:
    with Stopwatch() as sw:
        out = start_model(model, deletion, cfg.unlearn.seed, reuse=True)  # never steps
    return UnlearnResult(out, {"reset_users": int(len(deletion.reset_users)), "steps": 0}, sw.seconds)
