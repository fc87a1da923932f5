"""One entry point for every on-disk dataset: :func:`load_dataset` and :func:`dataset_stats`.

A folder with ``META.json`` is a tru-dist store (:mod:`tru_dist.data.store`); a folder
with a ``*.inter`` file is an MMRec folder (:mod:`tru_dist.data.mmrec`). Anything else
is a one-line DataError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.mmrec import read_mmrec
from tru_dist.data.store import is_store, read_store
from tru_dist.errors import DataError
from tru_dist.io_utils import why_not_found

#: quantiles reported by :func:`dataset_stats`
DEGREE_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def detect_format(path: str | Path) -> str:
    """``"store"`` or ``"mmrec"`` for a dataset folder; a DataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {path} {why_not_found(path)}; pass an MMRec folder or a tru-dist "
                        "store")
    if path.is_dir() and is_store(path):
        return "store"
    if path.is_dir() and any(path.glob("*.inter")):
        return "mmrec"
    raise DataError(
        f"{path} is neither a tru-dist store (META.json) nor an MMRec folder (<name>.inter);"
        " point the data path at the folder that holds one of them"
    )


def load_dataset(path: str | Path, item_range: tuple[int, int] | None = None) -> RecDataset:
    """Read a store or an MMRec folder. With ``item_range=(lo, hi)`` every feature matrix
    is the row slice ``lo..hi-1`` (memory-mapped, as a worker loads its feature shard)."""
    if detect_format(path) == "store":
        return read_store(path, item_range=item_range)
    data = read_mmrec(path)
    if item_range is None:
        return data
    lo, hi = (int(x) for x in item_range)
    if not 0 <= lo <= hi <= data.n_items:
        raise DataError(
            f"item_range ({lo}, {hi}) is outside items 0..{data.n_items}; use 0 <= lo <= hi <= n_items"
        )
    meta = {**data.meta, "item_range": [lo, hi]}
    return RecDataset(data.n_users, data.n_items, data.users, data.items, data.labels,
                      {m: f[lo:hi] for m, f in data.features.items()}, meta)


def degree_quantiles(degrees: np.ndarray) -> dict[str, float]:
    """``{"min", "p25", "p50", "p75", "p90", "p99", "max", "mean"}`` of a degree vector."""
    if len(degrees) == 0:
        return {}
    q = np.quantile(degrees, DEGREE_QUANTILES)
    names = ["min", "p25", "p50", "p75", "p90", "p99", "max"]
    out = {n: float(x) for n, x in zip(names, q, strict=True)}
    out["mean"] = float(degrees.mean())
    return out


def data_stats(data: RecDataset) -> dict:
    """``RecDataset.summary()`` plus degree quantiles over all and over train interactions,
    and how many users/items have no train interaction (cold)."""
    train = data.labels == TRAIN
    u_all = np.bincount(data.users, minlength=data.n_users)
    i_all = np.bincount(data.items, minlength=data.n_items)
    u_tr = np.bincount(data.users[train], minlength=data.n_users)
    i_tr = np.bincount(data.items[train], minlength=data.n_items)
    return {
        **data.summary(),
        "user_degree": degree_quantiles(u_all),
        "item_degree": degree_quantiles(i_all),
        "user_train_degree": degree_quantiles(u_tr),
        "item_train_degree": degree_quantiles(i_tr),
        "users_without_train": int((u_tr == 0).sum()),
        "items_without_train": int((i_tr == 0).sum()),
    }


def dataset_stats(path: str | Path) -> dict:
    """What ``tru-dist data stats PATH`` prints: see :func:`data_stats`."""
    return {"path": str(path), "format": detect_format(path), **data_stats(load_dataset(path))}
