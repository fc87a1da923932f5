"""Checkpoints: per-rank files to resume training, one full file any W can load.

Layout of a run folder:

* ``checkpoint.pt`` — **the run's model, whatever W trained it**: ``best_model`` holds the
  full tables (every user row), so W = 1 code loads it as is and W workers cut their rows
  out of it (:func:`local_state`). At W = 1 it is also the resume file (written at every
  evaluation); at W > 1 rank 0 writes it once training ends, from the user rows gathered
  over the ranks (:func:`gather_state`; rank order is user order, because every rank holds
  a contiguous user range).
* ``checkpoint.rank{r}.pt`` (W > 1 only) — rank ``r``'s resume file: its user rows, the
  replicated (item-side) parameters, its optimizer state. A run resumes with the same W.

Why gather at save rather than reshard on load (``torch.distributed.checkpoint``): the
only sharded tensors are the user ID tables (n_users × dim, small next to the features,
which are never saved), they are split along rows in rank order, so a concatenation
rebuilds them; one plain ``torch.save`` file then opens anywhere — on a laptop without a
process group, at W = 1, 2 or 4 — with the same loader.

Contents (only tensors and primitive containers, so ``torch.load(weights_only=True)``
accepts them — no pickled classes): ``model`` (last parameters), ``best_model``,
``optimizer``, ``sampler`` (generator state), ``rng`` (torch CPU/CUDA, numpy, Python
``random`` states), ``config`` (``Config.to_dict()``), ``epoch``, ``best_epoch``,
``best_metric``, ``bad_evals``, ``history``, ``train_seconds``, ``eval_seconds``,
``finished``, ``world_size``, ``rank``. The full file of a W > 1 run holds ``best_model``,
``config``, ``data``, ``world_size`` and the epoch counters (no optimizer: it is not a
resume file).

Every run folder also holds ``config.yaml``: the resolved config the run was started with
(:func:`write_run_config`), readable and reusable as ``--config RUN/config.yaml``.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tru_dist import comm as collectives
from tru_dist.errors import ConfigError, TruDistError
from tru_dist.io_utils import atomic_torch_save, atomic_write_text

CONFIG_FILE = "config.yaml"


class CheckpointError(TruDistError):
    """A checkpoint is missing, unreadable or does not match the run being resumed."""


def checkpoint_path(out_dir: str | Path, rank: int | None = None, world_size: int | None = None) -> Path:
    """``out_dir/checkpoint.pt`` at W = 1, ``out_dir/checkpoint.rank{r}.pt`` at W > 1."""
    world_size = collectives.world_size() if world_size is None else world_size
    rank = collectives.rank() if rank is None else rank
    name = "checkpoint.pt" if world_size == 1 else f"checkpoint.rank{rank}.pt"
    return Path(out_dir) / name


def holds_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run's checkpoint: ``checkpoint.pt``, or the per-rank files of a
    W > 1 run, finished or interrupted."""
    folder = Path(folder)
    return (folder / "checkpoint.pt").is_file() or any(folder.glob("checkpoint.rank*.pt")) \
        or any(folder.glob("replica.rank*.pt"))


def refuse_run_folder(folder: str | Path | None, what: str) -> None:
    """A one-line ConfigError when ``folder`` is a run folder (:func:`holds_checkpoint`): a cache,
    work or results folder pointed at one would mix its files, and its reruns' deletions,
    into the run's own."""
    if folder is None:
        return
    folder = Path(folder)
    if holds_checkpoint(folder):
        raise ConfigError(f"{what} {folder} is a run folder (it holds a checkpoint); give {what} a folder "
                          "of its own")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` (``{}`` when it has none); a file that is not a JSON
    object (truncated, overwritten) is a one-line CheckpointError naming it, where
    ``json.loads`` raised a raw JSONDecodeError in evaluate/recommend/unlearn/audit."""
    import json

    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read ({reason[:200]}): the run's metrics file is damaged; "
                              f"rerun the command that wrote {run_dir}, or delete {path.name} to use the run "
                              "without its recorded metrics") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} holds a JSON {type(metrics).__name__}, not the run's metrics object; "
                              f"rerun the command that wrote {run_dir}, or delete {path.name}")
    return metrics


def write_run_config(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``out_dir/config.yaml`` (``Config.to_dict()``) atomically; returns its path."""
    text = "# the resolved config of this run (tru-dist); reuse it with --config\n"
    return atomic_write_text(Path(out_dir) / CONFIG_FILE, text + yaml.safe_dump(config, sort_keys=False))


def save_checkpoint(state: dict[str, Any], path: str | Path, *, fault: str | None = None) -> Path:
    """Atomic ``torch.save`` (a crash mid-write leaves the previous checkpoint intact);
    ``fault`` names a crash-injection stage (:mod:`tru_dist.crashpoints`) before the rename."""
    return atomic_torch_save(state, path, fault=fault)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
                    ) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the fix; ``mmap``:
    the tensors memory-mapped, not read (for what only needs a checkpoint's metadata)."""
    path = Path(path)
    if not path.exists():
        ranks = sorted(path.parent.glob("checkpoint.rank*.pt"))
        if path.name == "checkpoint.pt" and ranks:  # a run interrupted at W > 1 keeps per-rank files
            w = len(ranks)
            raise CheckpointError(f"{path.parent} holds {w} per-rank checkpoints (checkpoint.rank<r>.pt): it "
                                  f"was trained on {w} workers; resume it with --workers {w}")
        raise CheckpointError(
            f"no checkpoint at {path}; train first (tru-dist train) or drop --resume to start fresh"
        )
    try:
        # mmap needs torch's zip format; a legacy (pre-1.6 format) file is read whole instead
        return torch.load(path, map_location=map_location, weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
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


# -- one full model state, loadable at any W ----------------------------------------------------
def user_row_keys(model: torch.nn.Module) -> set[str]:
    """State-dict names of the model's user-row tables (the only sharded parameters)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p, kind in model.row_tables().values() if kind == "user"}


@torch.no_grad()
def gather_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state of a (sharded) model, on CPU: user-row tables gathered over ranks in
    rank order, everything else as this rank holds it (replicated). Collective; the identity
    copy at W = 1."""
    users = user_row_keys(model)
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        out[k] = (collectives.all_gather_rows(v.contiguous()) if k in users else v).cpu().clone()
    return out


def local_state(model: torch.nn.Module, full: dict[str, torch.Tensor], lo: int, hi: int
                ) -> dict[str, torch.Tensor]:
    """This rank's part of a full state: user rows ``[lo, hi)``, every other entry as is."""
    users = user_row_keys(model)
    return {k: (v[lo:hi] if k in users else v) for k, v in full.items()}


def read_run(run_dir: str | Path, map_location: str | torch.device = "cpu", *, tensors: bool = True
             ) -> dict[str, Any]:
    """The full checkpoint of a finished run (``run_dir/checkpoint.pt``), whatever W wrote it;
    one-line errors for a missing or foreign file and for a W > 1 run that has not finished.
    ``tensors=False``: its metadata only (config, data signatures, world size) — the tensors
    are memory-mapped, not read, and not checked for NaN (what loads the model checks them): a
    1M-user checkpoint took ~0.5 s per full read, and an unlearn read its source three times.
    Its ``config.data.path`` is where the data is from here: the recorded absolute path when
    the relative one does not exist from this directory (:func:`tru_dist.data.location.locate_data`)."""
    from tru_dist.config import Config
    from tru_dist.data.location import locate_data
    from tru_dist.errors import ConfigError

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run {run_dir} is a file; pass the run folder (it holds checkpoint.pt)")
    path = run_dir / "checkpoint.pt"
    if not path.exists() and any(run_dir.glob("checkpoint.rank*.pt")):
        raise CheckpointError(
            f"{run_dir} holds only per-rank resume files (a W > 1 training that did not finish); "
            f"finish it with tru-dist train --resume --out {run_dir} and the same --workers")
    if not path.exists():
        from tru_dist.data.store import is_store

        if is_store(run_dir) or any(run_dir.glob("*.inter")):  # "train --out" there is refused
            raise CheckpointError(f"{run_dir} is a dataset, not a run folder; pass the --out folder of a "
                                  "train or unlearn run")
        raise CheckpointError(f"no checkpoint in {run_dir}; train first (tru-dist train --out {run_dir})")
    saved = load_checkpoint(path, map_location=map_location, mmap=not tensors)
    missing = [k for k in ("config", "data", "best_model") if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by this "
                              "tru-dist version's train/unlearn; retrain the run")
    best = saved["best_model"] if isinstance(saved["best_model"], dict) and tensors else {}
    bad = [k for k, t in best.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # evaluate/recommend/unlearn ran on it and printed NaN scores
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"checkpoint {path} holds NaN/inf parameters in {', '.join(bad[:3])}{more}: "
                              "the model is damaged; retrain the run or restore checkpoint.pt from a backup")
    try:
        Config.from_dict(saved["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} has a config this tru-dist version rejects ({exc}); "
                              "retrain the run with this version") from None
    data = saved["config"].get("data") or {}
    if data.get("path") is not None:  # a relative data.path missing from here: where train found it
        data["path"] = locate_data(data["path"], data.get("resolved_path"))
    return saved
