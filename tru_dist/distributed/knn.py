"""Item–item kNN graphs from feature *slices*: no worker ever holds a whole feature matrix.

MGCN's item–item graph needs, for every item i, its k most cosine-similar items over all
items (``tru_dist.graph.knn``). Worker r holds only its contiguous slice X_r of the
feature rows. A ring of broadcasts computes the same top-k:

    for s in 0..W−1:   X̂_s = broadcast from rank s (row-normalised, padded to the largest slice)
                       S = X̂_r X̂_sᵀ;  keep the running top-k over [best so far | S]

so peak memory is two slices and one ``rows_r × rows_s`` block. The per-row top-k column
ids are then all-gathered (n_items × k int64) and every worker builds the same normalised
graph Â = D^{-1/2} A D^{-1/2} with D = k·I (rows have exactly k entries, self included),
i.e. Â_ij = 1/k on the kept entries, as ``tru_dist.graph.knn`` does. At W = 1 the ring
has one step and the result equals ``knn_graph`` on the full matrix.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from tru_dist import comm as collectives
from tru_dist.graph.partition import PartitionBook

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalise(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    return torch.nn.functional.normalize(x.to(torch.float32), dim=1)


def local_topk(local: torch.Tensor, book: PartitionBook, k: int, block: int = 4096) -> torch.Tensor:
    """Global column ids of the top-``k`` most similar items for each local row (ring of broadcasts).

    ``local`` = this rank's row-normalised slice. Collective: every rank must call it.
    """
    rank = collectives.rank()
    width = max(book.item_starts[r + 1] - book.item_starts[r] for r in range(book.world_size))
    best_val = torch.full((local.shape[0], 0), float("-inf"))
    best_idx = torch.zeros((local.shape[0], 0), dtype=torch.long)
    for src in range(book.world_size):
        lo, hi = book.item_range(src)
        if collectives.is_distributed():
            buf = local.new_zeros((width, local.shape[1]))
            if src == rank:
                buf[: local.shape[0]] = local
            dist.broadcast(buf, src=src)
            other = buf[: hi - lo]
        else:
            other = local
        vals, idxs = [], []
        for a in range(0, local.shape[0], block):
            sim = local[a : a + block] @ other.T
            cand_val = torch.cat([best_val[a : a + block], sim], dim=1)
            cand_idx = torch.cat([best_idx[a : a + block],
                                  torch.arange(lo, hi).expand(sim.shape[0], -1)], dim=1)
            top = torch.topk(cand_val, min(k, cand_val.shape[1]), dim=1)
            vals.append(top.values)
            idxs.append(cand_idx.gather(1, top.indices))
        if vals:
            best_val, best_idx = torch.cat(vals), torch.cat(idxs)
    if local.shape[0] == 0:  # a rank without feature rows (more ranks than items)
        return torch.zeros((0, k), dtype=torch.long)
    return best_idx


def normalised_graph(cols: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â, Âᵀ) as float32 CSR from the (n_items × k) neighbour ids: Â_ij = 1/√(k·k) = 1/k."""
    k = cols.shape[1]
    row = torch.arange(n_items).repeat_interleave(k)
    col = cols.reshape(-1)
    deg = torch.full((n_items,), float(k))
    val = (deg[row] * deg[col]).rsqrt()
    a = torch.sparse_coo_tensor(torch.stack([row, col]), val, (n_items, n_items)).coalesce()
    return a.to_sparse_csr(), a.t().coalesce().to_sparse_csr()


def distributed_knn(
    local_features: np.ndarray | torch.Tensor, k: int, book: PartitionBook, cache_key: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every worker's copy of the item–item kNN graph, computed from the feature slices.

    ``cache_key`` (e.g. the data spec, modality, k and W) reuses a graph built earlier in
    this process. Collective: every rank must call it with its own slice.
    """
    if cache_key is not None and cache_key in _CACHE:
        return _CACHE[cache_key]
    k = min(int(k), book.n_items)
    local = _normalise(local_features)
    mine = local_topk(local, book, k)
    cols = collectives.all_gather_rows(mine) if collectives.is_distributed() else mine
    pair = normalised_graph(cols, book.n_items)
    if cache_key is not None:
        _CACHE[cache_key] = pair
    return pair
