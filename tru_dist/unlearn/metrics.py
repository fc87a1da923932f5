"""Forgetting metrics and agreement with Retrain (DESIGN §5, "what good means").

For every deleted TRAIN pair (u, i) ∈ D_f, with u's RETAINED train history masked and i
itself a candidate (``train.evaluate.pair_ranks``, ties in i's favour):

* rank(u, i)      = #{ j ∉ retained(u), j ≠ i : s_uj > s_ui }   (0 = top)
* ``hit@K``       = mean over pairs of 1[rank < K] — close to Retrain's is right, far below
                    it is over-forgetting, above it under-forgetting;
* ``rank_pct``    = mean over pairs of rank / (n_items − |retained(u)|)  (0 = top, ≈ 0.5 random).

Agreement of a model M with Retrain R (both ranking on D_r's data):

* ``jaccard@K``   = mean over the retained data's test users of |top_K^M ∩ top_K^R| / |top_K^M ∪ top_K^R|
                    (train and valid items excluded, as in the test evaluation);
* ``forget_rank_spearman`` = Spearman's ρ between M's and R's ranks of the deleted train pairs
                    (``scipy.stats.spearmanr``; NaN when one side is constant);
* ``forget_rank_ks`` = the two-sample Kolmogorov–Smirnov distance
                    sup_x |F_M(x) − F_R(x)| between M's and R's distributions of the deleted
                    pairs' rank percentiles rank/(n_items − |retained(u)|) (``scipy.stats.ks_2samp``):
                    0 when M forgets exactly as Retrain does at every cut-off, 1 at worst — it
                    sees under- and over-forgetting alike and is not tied to the gate's K.

One summary per method, :func:`retrain_distance` (0 for Retrain, lower is better):

    retrain_distance = max(0, 1 − recall@20_M / recall@20_R) + forget_rank_ks(M, R)

— the relative utility lost against Retrain (gaining utility is not penalised) plus the
forget-behaviour gap. Both terms are scale-free in [0, 1], so one point of either weighs the
same; a method that does nothing scores its KS gap, one that destroys the model ≈ 1 + gap.

Sums and counts are all-reduced (``collectives.sum_stats``) and the forget ranks gathered,
so the values do not depend on the number of shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.data.dataset import TEST, RecDataset
from tru_dist.train.evaluate import candidate_counts, eval_embeddings, history_mask, pair_ranks, topk


def _local_forget(graph, forget) -> tuple[torch.Tensor, torch.Tensor]:
    lo, n = graph.user_offset, graph.n_local_users
    u, i = np.asarray(forget.train_users), np.asarray(forget.train_items)
    mine = (u >= lo) & (u < lo + n)
    device = graph.ui.norm.device
    return torch.from_numpy(u[mine] - lo).to(device), torch.from_numpy(i[mine]).to(device)


def forget_ranks(model, graph, data_after: RecDataset, forget, emb=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank, n_candidates) of this shard's deleted train pairs (retained history masked)."""
    emb = emb if emb is not None else eval_embeddings(model, graph)
    lu, li = _local_forget(graph, forget)
    exclude = history_mask(data_after, ["train"], graph)
    return pair_ranks(emb.user, emb.item, lu, li, exclude), candidate_counts(exclude, lu, graph.n_items)


def forget_metrics(model, graph, data_after: RecDataset, forget, ks: Sequence[int] = (10, 20, 50),
                   emb=None) -> dict[str, float]:
    """``hit@K`` for every K, ``rank_pct`` and ``n_pairs`` over the deleted train pairs."""
    ranks, n_cand = forget_ranks(model, graph, data_after, forget, emb)
    ks = sorted({int(k) for k in ks})
    sums = torch.tensor([float((ranks < k).sum()) for k in ks]
                        + [float((ranks.double() / n_cand.clamp(min=1).double()).sum()), float(len(ranks))],
                        dtype=torch.float64)
    collectives.sum_stats(sums)
    n = float(sums[-1])
    out = {f"hit@{k}": (float(sums[j]) / n if n else 0.0) for j, k in enumerate(ks)}
    out["rank_pct"] = float(sums[-2]) / n if n else 0.0
    out["n_pairs"] = int(n)
    return out


def _test_rows(data_after: RecDataset, graph) -> torch.Tensor:
    lo, n = graph.user_offset, graph.n_local_users
    users = data_after.users[data_after.labels == TEST]
    users = np.unique(users[(users >= lo) & (users < lo + n)]) - lo
    return torch.from_numpy(users).to(graph.ui.norm.device)


def jaccard_topk(top_a: torch.Tensor, top_b: torch.Tensor) -> torch.Tensor:
    """Row-wise |A ∩ B| / |A ∪ B| of two (n, K) top-K id matrices (ids unique per row)."""
    k = top_a.shape[1]
    inter = (top_a[:, :, None] == top_b[:, None, :]).any(-1).sum(-1).double()
    return inter / (2 * k - inter)


def agreement(model, retrain, graph, data_after: RecDataset, forget, k: int = 20,
              retrain_graph=None, emb=None, retrain_emb=None) -> dict[str, float]:
    """``jaccard@K`` over retained test users and ``forget_rank_spearman`` vs Retrain.

    ``retrain_graph`` = the graph Retrain ranks with (D_r's; defaults to ``graph``) — pass it
    when ``graph`` is the original graph (evaluating the original model).
    """
    from scipy.stats import spearmanr

    emb = emb if emb is not None else eval_embeddings(model, graph)
    rgraph = retrain_graph if retrain_graph is not None else graph
    remb = retrain_emb if retrain_emb is not None else eval_embeddings(retrain, rgraph)
    rows = _test_rows(data_after, graph)
    exclude = history_mask(data_after, ["train", "valid"], graph)
    top_m = topk(emb.user, emb.item, exclude, k, rows=rows)
    top_r = topk(remb.user, remb.item, exclude, k, rows=rows)
    jac = jaccard_topk(top_m, top_r)
    sums = torch.tensor([float(jac.sum()), float(len(jac))], dtype=torch.float64)
    collectives.sum_stats(sums)

    ranks_m, n_cand = forget_ranks(model, graph, data_after, forget, emb)
    ranks_r, _ = forget_ranks(retrain, rgraph, data_after, forget, remb)
    pct_m = collectives.all_gather_rows(ranks_m.double() / n_cand.clamp(min=1).double()).cpu().numpy()
    pct_r = collectives.all_gather_rows(ranks_r.double() / n_cand.clamp(min=1).double()).cpu().numpy()
    ranks_m = collectives.all_gather_rows(ranks_m.double()).cpu().numpy()
    ranks_r = collectives.all_gather_rows(ranks_r.double()).cpu().numpy()
    rho = float("nan")
    if len(ranks_m) > 1 and np.ptp(ranks_m) > 0 and np.ptp(ranks_r) > 0:
        rho = float(spearmanr(ranks_m, ranks_r).statistic)
    n = float(sums[1])
    return {f"jaccard@{k}": float(sums[0]) / n if n else 0.0, "forget_rank_spearman": rho,
            "forget_rank_ks": ks_distance(pct_m, pct_r)}


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS statistic sup_x |F_a(x) − F_b(x)| (``scipy.stats.ks_2samp``'s; 0.0 when a
    sample is empty, NaN when one holds NaN). Only the statistic is used: the warning ks_2samp
    raises when its exact p-value fails (e.g. ``[0, 1, 2, 3, 4]`` vs ``[0, 1, 2, 3, 4.5]``) is
    about the p-value, so it is silenced here rather than printed raw by ``compare``."""
    import warnings

    from scipy.stats import ks_2samp

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"ks_distance: both samples must be 1-D (got shapes {a.shape} and {b.shape}); "
                         "pass each sample's values flattened, e.g. x.ravel()")
    if len(a) == 0 or len(b) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful",
                                category=RuntimeWarning)
        return float(ks_2samp(a, b).statistic)


def retrain_distance(recall: float, retrain_recall: float, forget_ks: float) -> float:
    """max(0, 1 − recall/retrain_recall) + forget_ks — see the module docstring."""
    loss = max(0.0, 1.0 - recall / retrain_recall) if retrain_recall > 0 else 0.0
    return float(loss + forget_ks)
