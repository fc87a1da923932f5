"""Attack features read off a model: what a membership-inference attacker can observe.

Everything here is a function of the model's scores ``s_ui = <e_u, e_i>`` only — no label,
no training data beyond the *retained* history that every audited model shares — so the
same features can be computed for the original model, Retrain and every unlearned model.

For a pair (u, i) let ``C_u`` be u's *candidate* items: every item not in u's retained
train history, plus i itself (a pair is never masked against itself, as in
:func:`tru_dist.train.evaluate.pair_ranks`). With ``n = |C_u|`` and ``h = #{j ∈ C_u, j ≠ i :
s_uj > s_ui}``, the features (:data:`PAIR_FEATURES`) are

* ``score``        s_ui
* ``rank_pct``     1 − h / (n − 1)                 (1 = top of u's ranking, 0 = bottom)
* ``log_rank``     log(1 + h)
* ``centered``     s_ui − mean_{C_u} s_u·
* ``zscore``       (s_ui − mean_{C_u} s_u·) / std_{C_u} s_u·
* ``topk_margin``  s_ui − t_u^K, t_u^K the K-th highest score over C_u \\ {i}
* ``item_z``       (s_ui − μ_i) / σ_i, μ_i and σ_i the mean and std of item i's score over
  all users: the popularity-normalised score (how much more u likes i than users at large).

μ_i and σ_i come in closed form from the user embeddings' first two moments:
μ_i = ē·e_i and E[s²] = e_iᵀ (UᵀU / n_users) e_i, so no full score matrix is needed.
"""

from __future__ import annotations

import numpy as np
import torch

from tru_dist.train.evaluate import csr_rows, eval_embeddings

PAIR_FEATURES = ("score", "rank_pct", "log_rank", "centered", "zscore", "topk_margin", "item_z")


@torch.no_grad()
def model_embeddings(model, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (user, item) embeddings in eval mode, detached; training mode is restored.

    The audits rank every user against every item, so they need the whole user table: the
    graph must be the single-process (W = 1) view (``graph.n_local_users == graph.n_users``).
    """
    if graph.n_local_users != graph.n_users:
        raise ValueError("audits need the full (world size 1) graph; gather the model on one process first")
    emb = eval_embeddings(model, graph)
    return emb.user.detach().float(), emb.item.detach().float()


def item_score_moments(user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ_i, σ_i) of every item's score over all users, in closed form (see module doc)."""
    u = user_emb.double()
    it = item_emb.double()
    mean_u = u.mean(0)
    second = u.T @ u / max(1, u.shape[0])
    mu = it @ mean_u
    var = ((it @ second) * it).sum(1) - mu.pow(2)
    return mu.float(), var.clamp_min(1e-12).sqrt().float()


@torch.no_grad()
def pair_features(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users_local: np.ndarray,
    items: np.ndarray,
    exclude_csr: torch.Tensor | None,
    top_k: int = 20,
    batch_pairs: int = 2048,
) -> np.ndarray:
    """Feature matrix ``(n_pairs, len(PAIR_FEATURES))`` (float64) for the given pairs.

    ``exclude_csr`` is the retained-history CSR from
    :func:`tru_dist.train.evaluate.history_mask`; the pair's own item is always a candidate.
    """
    mu_i, sd_i = item_score_moments(user_emb, item_emb)
    users_t = torch.as_tensor(np.asarray(users_local, dtype=np.int64), device=user_emb.device)
    items_t = torch.as_tensor(np.asarray(items, dtype=np.int64), device=user_emb.device)
    n_items = item_emb.shape[0]
    k = max(1, min(int(top_k), n_items - 1))
    neg_inf = torch.tensor(float("-inf"), device=user_emb.device)
    step = max(1, min(int(batch_pairs), (1 << 24) // max(1, n_items)))  # ≤ 16M scores per block
    out = []
    for a in range(0, len(users_t), step):
        u, i = users_t[a : a + step], items_t[a : a + step]
        rows = torch.arange(len(u), device=u.device)
        scores = user_emb[u] @ item_emb.T
        own = scores[rows, i]
        if exclude_csr is not None:
            pos, cols = csr_rows(exclude_csr, u)
            scores.index_put_((pos.to(scores.device), cols.to(scores.device)), neg_inf)
        scores[rows, i] = own  # the pair's item is always a candidate
        cand = torch.isfinite(scores)
        n_cand = cand.sum(1).double()
        finite = torch.where(cand, scores, torch.zeros_like(scores)).double()
        mean = finite.sum(1) / n_cand
        var = (finite.pow(2).sum(1) / n_cand - mean.pow(2)).clamp_min(1e-12)
        higher = (scores > own[:, None]).sum(1).double()
        scores[rows, i] = neg_inf  # threshold over the other candidates
        kth = torch.topk(scores, k, dim=1).values[:, -1]
        kth = torch.where(torch.isfinite(kth), kth, scores.new_full(kth.shape, -1e9))
        own_d = own.double()
        feats = torch.stack(
            [
                own_d,
                1.0 - higher / (n_cand - 1).clamp_min(1.0),
                torch.log1p(higher),
                own_d - mean,
                (own_d - mean) / var.sqrt(),
                own_d - kth.double(),
                ((own - mu_i[i]) / sd_i[i]).double(),
            ],
            1,
        )
        out.append(feats.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(PAIR_FEATURES)))
