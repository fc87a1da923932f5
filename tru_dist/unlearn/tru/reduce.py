"""Shard-invariant sums of per-parameter statistics over named parameter groups.

TRU's decisions use sums over a group's parameter entries (Σ g², Σ g_f·g_r, entry counts).
A parameter is either *sharded* (a user-row table: each rank holds its users' rows, so the
global sum is the sum over ranks) or *replicated* (item side, projections, fusion: every rank
holds the same value and, after ``collectives.sum_grads``, the same gradient, so it must be
counted once). One all-reduce of the sharded part (``collectives.sum_stats``) plus the
replicated part gives, for every group g and statistic k,

    total[g, k] = Σ_ranks Σ_{p ∈ g, sharded} x_p[k]  +  Σ_{p ∈ g, replicated} x_p[k],

the value a single process would compute, whatever the number of shards.
"""

from __future__ import annotations

import torch

from tru_dist import comm as collectives


def group_sums(
    groups: dict[str, list[int]],
    per_param: torch.Tensor,
    sharded: torch.Tensor,
) -> dict[str, list[float]]:
    """Global per-group sums of per-parameter statistics.

    Args:
        groups: group name -> indices into the parameter list.
        per_param: (n_params, n_stats) float64 shard-local statistics.
        sharded: (n_params,) bool, True for user-row tables.
    """
    part = per_param * sharded[:, None].to(per_param.dtype)
    collectives.sum_stats(part)
    total = part + per_param * (~sharded)[:, None].to(per_param.dtype)
    return {name: total[idx].sum(0).tolist() if idx else [0.0] * per_param.shape[1]
            for name, idx in groups.items()}
