"""reverse_bpr (MMRecUn): the uniform reverse update, the baseline TRU refines.

    L = λ_f · mean_{(u,i)∈D_f batch} softplus(s_ui − s_uj) + λ_r · BPR(D_r batch),

j a sampled negative, all parameters updated alike with Adam(``unlearn.lr``) for
``unlearn.epochs`` epochs over D_f, each D_f batch paired with an equally large D_r batch.
It is TRU's loop (:mod:`tru_dist.unlearn.engine`) with the gate, scaling and isolation
switched off — so "TRU, all switches off" is this method, bit for bit. Like every
approximate method it starts from the shared deletion step (deleted users reset).
"""

from __future__ import annotations

from tru_dist.unlearn.base import Stopwatch, UnlearnResult
from tru_dist.unlearn.engine import UpdateSpec, run_update

SPEC = UpdateSpec(forget_term="reverse", retain=True)


def unlearn(model, deletion, cfg) -> UnlearnResult:
    with Stopwatch() as sw:
        out, stats = run_update(model, deletion, cfg, SPEC)
    return UnlearnResult(out, stats, sw.seconds)
