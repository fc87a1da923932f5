"""finetune: continue training on the retained data only.

    L = λ_r · BPR(D_r batch)   (+ the model's regularisers, as in training),

for the same number of steps as reverse_bpr (``unlearn.epochs`` × the number of D_f
batches, D_r batches of the same size), so the two differ only by the forget term.
"""

from __future__ import annotations

from tru_dist.unlearn.base import Stopwatch, UnlearnResult
from tru_dist.unlearn.engine import UpdateSpec, run_update

SPEC = UpdateSpec(forget_term="none", retain=True)


def unlearn(model, deletion, cfg) -> UnlearnResult:
    with Stopwatch() as sw:
        out, stats = run_update(model, deletion, cfg, SPEC)
    return UnlearnResult(out, stats, sw.seconds)
