"""Vectorized full-ranking evaluation (every item ranked for every evaluated user).

For a batch of users, ``scores = U_b · Iᵀ``; the user's excluded items (train history, plus
valid items when evaluating test) are set to ``-inf`` with one ``index_put_`` from an
exclusion CSR built once per call; ``torch.topk(max k)`` gives the ranked list. With
binary relevance ``h_j ∈ {0, 1}`` for the item at (1-based) position ``j`` and ``n`` the
user's number of relevant (split) items, per user and cut-off ``k``:

* ``recall@k    = Σ_{j≤k} h_j / n``
* ``precision@k = Σ_{j≤k} h_j / k``
* ``hit@k       = 1[Σ_{j≤k} h_j > 0]``
* ``ndcg@k      = Σ_{j≤k} h_j / log2(j+1)  /  Σ_{j≤min(n,k)} 1 / log2(j+1)``
* ``map@k       = Σ_{j≤k} h_j · (Σ_{l≤j} h_l / j)  /  min(n, k)``   (AP@k)

Each metric is averaged over users with at least one item in the split (optionally only
the given ``users``). Distributed: every rank ranks its own users; the per-metric SUMS and
the user count are summed over ranks (``collectives.sum_stats``) before dividing, so the
result does not depend on the number of ranks.

The exclusion structure is a ``torch.sparse_csr_tensor`` of shape
``(n_local_users, n_items)`` (only its ``crow_indices``/``col_indices`` are read), built by
:func:`history_mask`; the unlearning and audit code pass it to :func:`topk` and
:func:`pair_ranks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.data.dataset import SPLIT_LABELS, TRAIN, VALID, RecDataset
from tru_dist.graph.adjacency import csr_row_entries

METRICS = ("recall", "ndcg", "precision", "hit", "map")
# Rows per inner matmul/top-k step: ~1k rows keeps the score block cache-friendly on CPU
# (measured faster than 4k-row blocks); ``batch_users`` still bounds memory from above.
_CHUNK_ROWS = 1024


def _labels(split_labels: Iterable[int | str]) -> list[int]:
    return [SPLIT_LABELS[s] if isinstance(s, str) else int(s) for s in split_labels]


def _local_pairs(data: RecDataset, labels: Sequence[int], graph) -> tuple[np.ndarray, np.ndarray]:
    """(local user, item) pairs of this rank's users whose label is in ``labels``."""
    lo, n_local = graph.user_offset, graph.n_local_users
    mask = np.isin(data.labels, np.asarray(labels, dtype=data.labels.dtype))
    mask &= (data.users >= lo) & (data.users < lo + n_local)
    return data.users[mask] - lo, data.items[mask]


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], device) -> torch.Tensor:
    keys = np.unique(rows.astype(np.int64) * shape[1] + cols.astype(np.int64))
    rows, cols = keys // shape[1], keys % shape[1]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    crow[1:] = np.cumsum(np.bincount(rows, minlength=shape[0]))
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow), torch.from_numpy(cols), torch.ones(len(cols), dtype=torch.bool),
        size=shape, device=device,
    )


def _device(graph) -> torch.device:
    return graph.ui.norm.device


def history_mask(data: RecDataset, split_labels: Iterable[int | str], graph) -> torch.Tensor:
    """Exclusion CSR ``(n_local_users, n_items)`` of this rank's (user, item) pairs whose
    split label is in ``split_labels`` (e.g. ``(TRAIN,)`` or ``("train", "valid")``)."""
    lu, li = _local_pairs(data, _labels(split_labels), graph)
    return _csr(lu, li, (graph.n_local_users, graph.n_items), _device(graph))


def candidate_counts(exclude_csr: torch.Tensor, rows: torch.Tensor, n_items: int) -> torch.Tensor:
    """n_u = items not excluded for each given local row: the denominator of a rank percentile."""
    crow = exclude_csr.crow_indices()
    return n_items - (crow[1:] - crow[:-1])[rows.to(crow.device)]


def csr_rows(csr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of the given CSR rows: ``(position in rows, column)`` pairs, vectorized.

    Row ``rows[p]`` contributes its columns ``col[crow[r]:crow[r+1]]`` tagged with ``p``.
    """
    pos, entry = csr_row_entries(csr, rows)
    return pos, csr.col_indices()[entry]


def select_rows(csr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The CSR of the given rows only, in that order: row p of the result is row ``rows[p]``
    (an exclusion mask for a few users' compact score rows)."""
    pos, cols = csr_rows(csr, rows)
    crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=pos.device)
    crow[1:] = torch.cumsum(torch.bincount(pos, minlength=len(rows)), 0)
    return torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols), dtype=torch.bool, device=cols.device),
                                   size=(len(rows), csr.shape[1]))


class _RowMask:
    """Excluded entries of a fixed list of rows, expanded once and sliced per chunk.

    ``csr_rows`` runs once per call (O(nnz)); the entries of rows ``rows[a:b]`` are then
    the contiguous slice ``starts[a]:starts[b]``, tagged with their position minus ``a``.
    """

    def __init__(self, exclude: torch.Tensor | None, rows: torch.Tensor, device: torch.device):
        self.empty = exclude is None
        if self.empty:
            return
        pos, cols = csr_rows(exclude, rows)
        self.pos, self.cols = pos.to(device), cols.to(device)
        lengths = torch.bincount(pos, minlength=len(rows)).to(device)
        self.starts = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]).tolist()

    def apply_(self, scores: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Set the excluded entries of rows ``a..b-1`` (the rows of ``scores``) to -inf."""
        if not self.empty:
            lo, hi = self.starts[a], self.starts[b]
            scores.index_put_((self.pos[lo:hi] - a, self.cols[lo:hi]),
                              torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
        return scores


@torch.no_grad()
def topk(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    exclude_csr: torch.Tensor | None,
    k: int,
    batch_users: int = 4096,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-``k`` item ids per user (best first), excluded items ranked last.

    Returns a LongTensor ``(len(rows), k)``; ``rows`` are local user rows (all when None).
    ``k`` is clipped to ``n_items``. If a user has fewer than ``k`` non-excluded items the
    tail holds excluded items (score ``-inf``).
    """
    device = user_emb.device
    rows = torch.arange(user_emb.shape[0], device=device) if rows is None else rows.to(device).long()
    k = min(int(k), item_emb.shape[0])
    step = max(1, min(int(batch_users), _CHUNK_ROWS))
    mask = _RowMask(exclude_csr, rows, device)
    item_t = item_emb.T.contiguous()
    out = []
    for a in range(0, len(rows), step):
        b = min(a + step, len(rows))
        scores = mask.apply_(user_emb[rows[a:b]] @ item_t, a, b)
        out.append(torch.topk(scores, k).indices)
    return torch.cat(out) if out else torch.empty((0, k), dtype=torch.long, device=device)


@torch.no_grad()
def pair_ranks(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users_local: torch.Tensor,
    items: torch.Tensor,
    exclude_csr: torch.Tensor | None,
    batch_pairs: int = 4096,
) -> torch.Tensor:
    """0-based rank of each pair's item among its user's non-excluded items.

    ``rank(u, i) = #{ j ∉ excluded(u), j ≠ i : s_uj > s_ui }`` (ties count in the item's
    favour); the pair's own item is never excluded, so a deleted pair can be ranked while
    the rest of the user's history is masked. ``hit@K`` of the pair is ``rank < K``.
    """
    device = user_emb.device
    users_local = users_local.to(device).long()
    items = items.to(device).long()
    mask = _RowMask(exclude_csr, users_local, device)
    item_t = item_emb.T.contiguous()
    out = []
    for a in range(0, len(users_local), batch_pairs):
        b = min(a + batch_pairs, len(users_local))
        scores = user_emb[users_local[a:b]] @ item_t
        own = scores.gather(1, items[a:b, None])
        out.append((mask.apply_(scores, a, b) > own).sum(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=device)


def _per_user_metric_sums(
    hits: torch.Tensor, n_rel: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Metric sums over a batch of users from the (B, max k) hit matrix (float64)."""
    kmax = hits.shape[1]
    pos = torch.arange(1, kmax + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(pos + 1.0)
    idcg_table = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # idcg_table[m] = Σ_{j≤m}
    cum = hits.cumsum(1)
    gain = hits * discount
    prec_at_hit = hits * cum / pos
    n_rel = n_rel.to(torch.float64)
    out = {}
    for k in ks:
        hk = cum[:, k - 1]
        denom = torch.clamp(n_rel, max=k)
        out[f"recall@{k}"] = (hk / n_rel).sum()
        out[f"ndcg@{k}"] = (gain[:, :k].sum(1) / idcg_table[denom.long()]).sum()
        out[f"precision@{k}"] = (hk / k).sum()
        out[f"hit@{k}"] = (hk > 0).to(torch.float64).sum()
        out[f"map@{k}"] = (prec_at_hit[:, :k].sum(1) / denom).sum()
    return out


@torch.no_grad()
def eval_embeddings(model, graph):
    """``model.embed(graph)`` in eval mode (no dropout, fixed sampling), training mode restored."""
    was_training = model.training
    model.eval()
    try:
        return model.embed(graph)
    finally:
        model.train(was_training)


def evaluate(
    model,
    graph,
    data: RecDataset,
    split: str = "test",
    ks: Sequence[int] = (10, 20, 50),
    users: np.ndarray | Sequence[int] | None = None,
    emb=None,
    batch_users: int = 4096,
) -> dict[str, float]:
    """Full-ranking ``recall/ndcg/precision/hit/map@k`` on ``split`` plus ``n_users``.

    Excludes each user's train items (and valid items when ``split == "test"``). ``users``
    (global ids) restricts the evaluated users; ``emb`` reuses precomputed embeddings
    (otherwise ``model.embed(graph)`` runs in eval mode). Collective: every rank must call it.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    if emb is None:
        emb = eval_embeddings(model, graph)
    user_emb, item_emb = emb.user.detach(), emb.item.detach()
    device = user_emb.device

    excluded = [TRAIN, VALID] if split == "test" else [TRAIN]
    exclude = history_mask(data, excluded, graph)
    tu, ti = _local_pairs(data, [SPLIT_LABELS[split]], graph)
    n_rel_all = np.bincount(tu, minlength=graph.n_local_users)
    eligible = n_rel_all > 0
    if users is not None:
        chosen = np.zeros(graph.n_local_users, dtype=bool)
        local = np.asarray(users, dtype=np.int64) - graph.user_offset
        chosen[local[(local >= 0) & (local < graph.n_local_users)]] = True
        eligible &= chosen
    rows = torch.from_numpy(np.flatnonzero(eligible)).to(device)
    target_keys = torch.from_numpy(np.unique(tu * graph.n_items + ti)).to(device)
    n_rel = torch.from_numpy(n_rel_all).to(device)

    kmax = ks[-1]
    names = [f"{m}@{k}" for k in ks for m in METRICS]
    totals = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    if len(rows):
        top = topk(user_emb, item_emb, exclude, kmax, batch_users=batch_users, rows=rows)
        keys = rows[:, None] * graph.n_items + top
        where = torch.searchsorted(target_keys, keys).clamp_(max=len(target_keys) - 1)
        hits = (target_keys[where] == keys).to(torch.float64)
        if hits.shape[1] < kmax:  # fewer items than the largest cut-off
            hits = torch.cat([hits, hits.new_zeros(hits.shape[0], kmax - hits.shape[1])], 1)
        sums = _per_user_metric_sums(hits, n_rel[rows], ks)
        totals[:-1] = torch.stack([sums[n] for n in names])
        totals[-1] = len(rows)
    collectives.sum_stats(totals)
    count = float(totals[-1])
    out = {n: (float(totals[j]) / count if count > 0 else 0.0) for j, n in enumerate(names)}
    out["n_users"] = int(count)
    return out

