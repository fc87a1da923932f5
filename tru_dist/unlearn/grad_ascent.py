"""grad_ascent: maximise the BPR loss on the deleted pairs, nothing else.

    L = −λ_f · mean_{(u,i)∈D_f batch} softplus(s_uj − s_ui)   (= −BPR on D_f),

minimised with Adam(``unlearn.lr``) for ``unlearn.epochs`` epochs over D_f; no retain term
(the classic unlearning baseline that tends to damage utility). Same loop as reverse_bpr.
"""

from __future__ import annotations

from tru_dist.unlearn.base import Stopwatch, UnlearnResult
from tru_dist.unlearn.engine import UpdateSpec, run_update

SPEC = UpdateSpec(forget_term="ascent", retain=False)


def unlearn(model, deletion, cfg) -> UnlearnResult:
    with Stopwatch() as sw:
        out, stats = run_update(model, deletion, cfg, SPEC)
    return UnlearnResult(out, stats, sw.seconds)
