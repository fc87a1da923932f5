"""Item–item kNN graphs from modality features (MGCN's item-item view).

For features X (n_items × d): cosine similarity S = X̂X̂ᵀ with X̂ the row-normalised
features; keep each row's top-k (self included, as in MGCN), binarise, and normalise
symmetrically, Â = D^{-1/2} A D^{-1/2} with D the row sums. Built in row blocks with
``torch.topk`` so memory is O(block · n_items), never n_items².

The graph depends on the features only: deleting users leaves it valid, changing an
item's features invalidates it. The cache key is therefore a hash of the feature bytes
and k (MMRec keys it by file name only, which silently reuses a stale graph).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

_MEMORY_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def feature_hash(features: np.ndarray, k: int) -> str:
    """sha256 over the feature bytes, shape, dtype and k."""
    arr = np.ascontiguousarray(features)
    h = hashlib.sha256()
    h.update(f"{arr.shape}|{arr.dtype}|k={k}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:32]


def _build(features: np.ndarray, k: int, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.array(features, dtype=np.float32))  # a copy: features may be a read-only memmap
    n = x.shape[0]
    k = min(k, n)
    x = torch.nn.functional.normalize(x, dim=1)
    cols = []
    for start in range(0, n, block):
        sim = x[start : start + block] @ x.T
        cols.append(torch.topk(sim, k, dim=1).indices)
    col = torch.cat(cols).reshape(-1)
    row = torch.arange(n).repeat_interleave(k)
    # rows have exactly k entries, so D = k·I for row sums; MGCN normalises by row sums
    # on both sides: Â_ij = A_ij / sqrt(d_i d_j) with d the row degree.
    deg = torch.full((n,), float(k))
    val = (deg[row] * deg[col]).rsqrt()
    a = torch.sparse_coo_tensor(torch.stack([row, col]), val, (n, n)).coalesce()
    return a.to_sparse_csr(), a.t().coalesce().to_sparse_csr()


def knn_graph(
    features: np.ndarray, k: int, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â, Âᵀ) as float32 CSR, from memory or disk cache when the features are unchanged."""
    key = feature_hash(features, k)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = Path(cache_dir) / f"knn-{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=True)
        pair = (blob["a"].to_sparse_csr(), blob["a_t"].to_sparse_csr())
    else:
        pair = _build(features, k)
        if path is not None:
            from tru_dist.io_utils import atomic_torch_save

            atomic_torch_save({"a": pair[0].to_sparse_coo(), "a_t": pair[1].to_sparse_coo()}, path)
    _MEMORY_CACHE[key] = pair
    return pair
