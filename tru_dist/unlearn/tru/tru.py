"""TRU — Targeted Reverse Update (arXiv 2604.02183) as formulated in DESIGN §5.

    L = λ_r·BPR(D_r batch) + λ_f·Σ G_ui·[softplus(s_ui − s_uj) + μ·relu(s_ui − t_u^K + m)]·scale,

gradients scaled per modality branch (g = λ_r·g_r + λ_f·α_b·g_f) and masked by layer and
row isolation; Adam; a few epochs over D_f, stopping early when the gate's mean G < ε. It
starts, like every approximate method, from the shared deletion step
(:mod:`tru_dist.unlearn.deletion`: D_r's graph, deleted users' ID rows reset) — the reset
is not TRU's, and what TRU adds is measured on top of it. Components:

* :mod:`.gate` — ranking fusion gate (``unlearn.gate.enabled``),
* :mod:`.scaling` — branch-wise modality scaling (``unlearn.scaling.enabled``),
* :mod:`.isolation` — capacity-aware layer + k-hop row isolation (``unlearn.isolation.enabled``).

All three run inside the shared loop (:mod:`tru_dist.unlearn.engine`); with all three
switched off the spec equals reverse_bpr's, so TRU then IS reverse_bpr. Decisions land in
``stats``: ``gate`` (per epoch: mean g, mean P, mean G, fraction still in top-K),
``converged_epoch``, ``scaling`` (α per branch per epoch, last α, conflicting steps),
``isolation`` (Fisher ratios, selected/frozen groups, parameter share, rows within k hops),
``reset_users`` (from the deletion step).
"""

from __future__ import annotations

from tru_dist.config import Config
from tru_dist.unlearn.base import Stopwatch, UnlearnResult
from tru_dist.unlearn.engine import UpdateSpec, run_update


def tru_spec(cfg: Config, *, gate: bool = True, scaling: bool = True, isolation: bool = True) -> UpdateSpec:
    """The loop spec for TRU: each component on when its config switch AND the flag say so."""
    uc = cfg.unlearn
    return UpdateSpec(
        forget_term="reverse",
        retain=True,
        gate=uc.gate if gate and uc.gate.enabled else None,
        scaling=uc.scaling if scaling and uc.scaling.enabled else None,
        isolation=uc.isolation if isolation and uc.isolation.enabled else None,
    )


def _run(model, deletion, cfg, spec: UpdateSpec) -> UnlearnResult:
    with Stopwatch() as sw:
        out, stats = run_update(model, deletion, cfg, spec)
    stats["components"] = {"gate": spec.gate is not None, "scaling": spec.scaling is not None,
                           "isolation": spec.isolation is not None}
    return UnlearnResult(out, stats, sw.seconds)


def unlearn(model, deletion, cfg: Config) -> UnlearnResult:
    return _run(model, deletion, cfg, tru_spec(cfg))


def unlearn_no_gate(model, deletion, cfg: Config) -> UnlearnResult:
    return _run(model, deletion, cfg, tru_spec(cfg, gate=False))


def unlearn_no_scaling(model, deletion, cfg: Config) -> UnlearnResult:
    return _run(model, deletion, cfg, tru_spec(cfg, scaling=False))


def unlearn_no_isolation(model, deletion, cfg: Config) -> UnlearnResult:
    return _run(model, deletion, cfg, tru_spec(cfg, isolation=False))
