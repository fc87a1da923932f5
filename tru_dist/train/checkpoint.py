"""Training checkpoints: one self-contained file per rank, written atomically.

Layout of ``out_dir``:

* ``checkpoint.pt`` when the world size is 1 (the single-process path);
* ``checkpoint.rank{r}.pt`` for rank ``r`` when the world size is W > 1. User-embedding
  rows live only on their owner rank, so every rank saves and loads its own shard; the
  replicated (item-side) parameters appear in every shard, identical. A run is resumed
  with the same W and partition book (the file of each rank must exist).

Contents (only tensors and primitive containers, so ``torch.load(weights_only=True)``
accepts them — no pickled classes): ``model`` (last parameters), ``best_model``,
``optimizer``, ``sampler`` (generator state), ``rng`` (torch CPU/CUDA, numpy, Python
``random`` states), ``config`` (``Config.to_dict()``), ``epoch``, ``best_epoch``,
``best_metric``, ``bad_evals``, ``history``, ``train_seconds``, ``eval_seconds``,
``finished``, ``world_size``, ``rank``.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.errors import TruDistError
from tru_dist.io_utils import atomic_torch_save


class CheckpointError(TruDistError):
    """A checkpoint is missing, unreadable or does not match the run being resumed."""


def checkpoint_path(out_dir: str | Path, rank: int | None = None, world_size: int | None = None) -> Path:
    """``out_dir/checkpoint.pt`` at W = 1, ``out_dir/checkpoint.rank{r}.pt`` at W > 1."""
    world_size = collectives.world_size() if world_size is None else world_size
    rank = collectives.rank() if rank is None else rank
    name = "checkpoint.pt" if world_size == 1 else f"checkpoint.rank{rank}.pt"
    return Path(out_dir) / name


def save_checkpoint(state: dict[str, Any], path: str | Path, *, fault: str | None = None) -> Path:
    """Atomic ``torch.save`` (a crash mid-write leaves the previous checkpoint intact);
    ``fault`` names a crash-injection stage (:mod:`tru_dist.crashpoints`) before the rename."""
    return atomic_torch_save(state, path, fault=fault)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the fix."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}; train first (tru-dist train) or drop --resume to start fresh"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            first = "not a complete torch checkpoint: truncated, or another format"
        elif "Weights only load failed" in str(exc):
            first = "it holds pickled objects, not only tensors and containers: not a tru-dist checkpoint"
        else:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} ({first[:200]}); delete it and retrain") from None


def clone_state(module_or_state: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a state dict (so later optimizer steps cannot change it)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: v.detach().clone() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU (+ every CUDA device when initialised), numpy, random."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
