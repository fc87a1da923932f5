"""TRU component 2: branch-wise modality scaling (DESIGN §5).

Per modality branch b (``Backbone.branches()``: ``id``, one per modality, ``shared``), with
g_f^b, g_r^b the gradients of the forget and retain losses restricted to b's parameters:

* squared norms   ‖g_f^b‖², ‖g_r^b‖² and the inner product <g_f^b, g_r^b>, each a SUM over
                  b's LIVE entries — the parameters of no frozen layer group, rows outside the
                  isolation row masks zeroed: what the update moves — shard-local sums for
                  user-row tables all-reduced, replicated parameters counted once
                  (:func:`tru_dist.unlearn.tru.reduce.group_sums`); only branches with a live
                  parameter take part (the engine, ``_Loop.scaled_gradients``). Measured over
                  every parameter instead, frozen branches set max r: with only the ID rows
                  live (MIG-GT's isolation; the test case, a small MGCN) the ID branch got
                  α = 0.64 from encoders that never move. On Scientific's tuning seeds the
                  change left retrain_distance where it was (mean over seeds, old → new: MGCN
                  interactions 0.062 → 0.061, items 0.183 → 0.189; MIG-GT interactions
                  0.057 → 0.059, items 0.298 → 0.304) — there the default isolation leaves
                  one live branch, so α = 1 and a step takes one backward, not two;
* ratio           r_b = ‖g_f^b‖ / (‖g_r^b‖ + δ);
* scale           α_b = clip((r_b / max_b' r_b')^γ, α_min, 1)   (γ = 0 → α_b = 1 for all b);
* optional conflict projection, when <g_f^b, g_r^b> < 0:
                  g_f^b ← g_f^b − (<g_f^b, g_r^b> / ‖g_r^b‖²)·g_r^b   (PCGrad-style), after
                  which <g_f^b, g_r^b> = 0;
* combined step   g^b = λ_r·g_r^b + λ_f·α_b·g_f^b.

The branch whose forget signal dominates its retain signal the most gets the full reverse
update; branches where the retained data pulls harder are damped, so the retained
multimodal representation survives. α is decided afresh every step from that step's
gradients (a handful of floats to all-reduce).
"""

from __future__ import annotations

import math

import torch


def decide_alphas(
    forget_sq: dict[str, float],
    retain_sq: dict[str, float],
    gamma: float,
    alpha_min: float,
    delta: float,
) -> dict[str, float]:
    """α_b = clip((r_b / max r)^γ, α_min, 1) with r_b = ‖g_f^b‖ / (‖g_r^b‖ + δ).

    With no forget gradient anywhere (max r = 0) every α is 1 (nothing to scale).
    """
    ratios = {b: math.sqrt(max(forget_sq[b], 0.0)) / (math.sqrt(max(retain_sq.get(b, 0.0), 0.0)) + delta)
              for b in forget_sq}
    top = max(ratios.values(), default=0.0)
    if top <= 0.0 or gamma == 0.0:
        return dict.fromkeys(ratios, 1.0)
    return {b: float(min(1.0, max(alpha_min, (r / top) ** gamma))) for b, r in ratios.items()}


def gradient_statistics(g_f: torch.Tensor, g_r: torch.Tensor,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
    """(‖g_f‖², ‖g_r‖², <g_f, g_r>) in float64 over one parameter's entries — for a row table
    with a row mask ``rows`` (bool, one per row) only the rows the update may move."""
    f, r = g_f.double(), g_r.double()
    if rows is not None:
        keep = rows.to(device=f.device, dtype=f.dtype).reshape(-1, *([1] * (f.dim() - 1)))
        f, r = f * keep, r * keep
    return torch.stack([f.pow(2).sum(), r.pow(2).sum(), (f * r).sum()])


def projection_coefficient(dot: float, retain_sq: float) -> float:
    """c in g_f ← g_f − c·g_r: <g_f,g_r>/‖g_r‖² when the two conflict (dot < 0), else 0."""
    if dot >= 0.0 or retain_sq <= 0.0:
        return 0.0
    return dot / retain_sq


def combine(
    g_f: list[torch.Tensor | None],
    g_r: list[torch.Tensor | None],
    alpha: float,
    coef: float,
    lambda_f: float,
    lambda_r: float,
) -> list[torch.Tensor | None]:
    """λ_r·g_r + λ_f·α·(g_f − coef·g_r) for the parameters of one branch (None = no gradient)."""
    out: list[torch.Tensor | None] = []
    for f, r in zip(g_f, g_r, strict=True):
        if f is None and r is None:
            out.append(None)
            continue
        f_part = None
        if f is not None:
            f_part = f - coef * r if (coef != 0.0 and r is not None) else f
        total = None
        if r is not None:
            total = lambda_r * r
        if f_part is not None:
            total = lambda_f * alpha * f_part if total is None else total + lambda_f * alpha * f_part
        out.append(total)
    return out
