"""TRU component 1: the ranking fusion gate (DESIGN §5).

For a forget pair (u, i) under the current scores s:

* threshold        t_u^K = u's K-th highest score over the items NOT in u's retained train
                   history (the forget target i itself is a candidate, so a target still in
                   the top-K sets the bar it has to fall below);
* persistence      g_ui = σ((s_ui − t_u^K) / T)  — ≈1 while i is in u's top-K, → 0 far below;
* item persistence P_i = Σ_{forget pairs (v,i)} g_vi / #{forget pairs (v,i)}, from the
                   per-item SUM and COUNT all-reduced over shards (``collectives.sum_stats``),
                   so P_i is the global mean whatever the number of shards;
* fused gate       G_ui = β·g_ui + (1−β)·P_i  (a constant weight: computed without gradient);
* forget loss      Σ_{(u,i)} G_ui·[softplus(s_ui − s_uj) + μ·relu(s_ui − t_u^K + m)] · scale
                   (j a sampled negative, ``scale`` = 1/|global batch|; t_u^K is a constant);
* convergence      mean G < ε.

Identity used by :func:`decide_gate`: when P is computed over the same pairs as the mean,
Σ_pairs G = β Σ g + (1−β) Σ_i count_i·P_i = Σ g, so mean G = mean g = Σ_i sum_i / Σ_i count_i
and the convergence test needs only the per-item sums every rank already has (all-reduced).

Pairs whose target has left the top-K get G ≈ (1−β)·P_i and stop being pushed, which is the
point: over-forgetting (a target pushed far below where Retrain ranks it) is as detectable by
an auditor as under-forgetting.

Everything here is a pure tensor function except :func:`kth_thresholds`, which ranks items
with :func:`tru_dist.train.evaluate.topk` (history masked by an exclusion CSR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tru_dist.train.evaluate import topk


def persistence(scores_ui: torch.Tensor, thresholds: torch.Tensor, temperature: float) -> torch.Tensor:
    """g_ui = σ((s_ui − t_u^K) / T), elementwise."""
    return torch.sigmoid((scores_ui - thresholds) / temperature)


def item_persistence(items: torch.Tensor, g: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item (Σ g_ui, #pairs) over the given pairs, float64, length ``n_items``.

    These are the shard-local sums; all-reduce both (``collectives.sum_stats``) and divide
    with :func:`item_mean` to get P_i.
    """
    items = items.long()
    total = torch.zeros(n_items, dtype=torch.float64, device=g.device)
    count = torch.zeros(n_items, dtype=torch.float64, device=g.device)
    total.index_add_(0, items, g.detach().to(torch.float64))
    count.index_add_(0, items, torch.ones_like(items, dtype=torch.float64))
    return total, count


def item_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """P_i = total_i / count_i (0 for items without forget pairs)."""
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total))


def fuse(g: torch.Tensor, p_items: torch.Tensor, beta: float) -> torch.Tensor:
    """G_ui = β·g_ui + (1−β)·P_i (``p_items`` already gathered per pair)."""
    return beta * g + (1.0 - beta) * p_items


def gated_forget_loss(
    s_ui: torch.Tensor,
    s_uj: torch.Tensor,
    thresholds: torch.Tensor,
    weights: torch.Tensor,
    hinge_weight: float,
    margin: float,
    scale: float,
) -> torch.Tensor:
    """Σ G_ui·[softplus(s_ui − s_uj) + μ·relu(s_ui − t_u^K + m)]·scale (G, t constants)."""
    per_pair = F.softplus(s_ui - s_uj) + hinge_weight * F.relu(s_ui - thresholds.detach() + margin)
    return (weights.detach().to(per_pair.dtype) * per_pair).sum() * scale


def converged(sum_g: float, n: float, eps: float) -> bool:
    """mean G < ε (an empty forget set is converged)."""
    return n <= 0 or sum_g / n < eps


@dataclass(frozen=True)
class GateDecision:
    """What every rank decides after a gate pass (the same, from the same all-reduced sums)."""

    p_items: torch.Tensor  # P_i, float64 (n_items,)
    mean_g: float  # = mean G (see the module docstring)
    mean_p: float  # mean of P_i over items that have forget pairs
    converged: bool


def decide_gate(item_sum: torch.Tensor, item_count: torch.Tensor, eps: float) -> GateDecision:
    """P_i and the convergence decision from the all-reduced per-item sums and counts."""
    p = item_mean(item_sum, item_count)
    n = float(item_count.sum())
    total = float(item_sum.sum())
    has = item_count > 0
    mean_p = float(p[has].mean()) if bool(has.any()) else 0.0
    return GateDecision(p, total / n if n > 0 else 0.0, mean_p, converged(total, n, eps))


@torch.no_grad()
def kth_thresholds(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    exclude_csr: torch.Tensor | None,
    users_local: torch.Tensor,
    k: int,
    batch_users: int = 1024,
) -> torch.Tensor:
    """t_u^K for each given local user: the K-th highest score over non-excluded items.

    ``exclude_csr`` holds the RETAINED train history (``evaluate.history_mask``); the forget
    targets are not in it and so stay candidates. Computed once per distinct user.
    """
    uniq, inverse = torch.unique(users_local.long(), return_inverse=True)
    if uniq.numel() == 0:
        return user_emb.new_zeros(0)
    top = topk(user_emb, item_emb, exclude_csr, k, batch_users=batch_users, rows=uniq)
    kth = top[:, -1]
    t = (user_emb[uniq] * item_emb[kth]).sum(-1)
    return t[inverse]
