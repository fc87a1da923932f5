"""The worker function: one rank of a train / unlearn / evaluate / compare task.

``worker_main(task)`` is what every rank runs, whoever started it — Ray Train
(:mod:`tru_dist.distributed.launch`), ``torchrun``, :func:`tru_dist.distributed.process_group.spawn_local`
or a plain call at W = 1. It takes rank and world size from the process group
(initialising it from torchrun-style variables when needed), loads only this rank's
partition (:mod:`tru_dist.distributed.shard`), and runs the task with the package's trainer,
unlearning methods and evaluator — the same functions a single process uses.

A task is a plain dict (JSON-able, so it travels to Ray workers and job scripts):

* ``kind``: ``train`` | ``unlearn`` | ``evaluate`` | ``compare``;
* ``config``: ``Config.to_dict()``;
* ``out_dir``: where checkpoints (``checkpoint[.rank{r}].pt``) and results go;
* ``resume``: continue from the checkpoints in ``out_dir`` (train);
* ``model_dir``: a finished training run to start from (unlearn, evaluate); its
  checkpoints may come from any W — user rows are re-sharded (:func:`load_sharded_state`);
* ``regime``, ``policy``, ``fraction`` (unlearn; forget-set selection, seeded by
  ``unlearn.seed``); ``spec`` (compare: ``CompareSpec`` fields).

Rank 0 writes the result to ``out_dir/<kind>.json``. ``reporter(metrics, files)`` (Ray's
``train.report``, supplied by the launcher) is called on every rank after every epoch with
the checkpoint files written in that epoch, and once at the end with the result file
(rank 0) — so the result also lands in Ray's storage, where the driver reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.faults import FaultPlan, arm
from tru_dist.distributed.process_group import init_from_env
from tru_dist.distributed.shard import Shard, build_shard_model, load_shard
from tru_dist.errors import ConfigError
from tru_dist.graph.partition import PartitionBook
from tru_dist.io_utils import atomic_write_json
from tru_dist.models.base import Backbone

Reporter = Callable[[dict[str, Any], list[Path]], None]
TASKS = ("train", "unlearn", "evaluate", "compare")


def worker_main(
    task: dict[str, Any], reporter: Reporter | None = None, data: RecDataset | None = None
) -> dict:
    """Run ``task`` on this rank; return its result (the same on every rank).

    ``data`` (an in-memory dataset) replaces ``config.data.path``, e.g. in tests.
    """
    kind = task.get("kind")
    if kind not in TASKS:
        raise ConfigError(f"unknown task kind {kind!r} (choose one of: {', '.join(TASKS)})")
    cfg = Config.from_dict(task["config"])
    init_from_env(cfg.dist.backend)
    out_dir = Path(task.get("out_dir") or "runs/worker")
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "compare":
        result = _compare(cfg, task, out_dir, data)
    else:
        shard = load_shard(cfg, data)
        run = {"train": _train, "unlearn": _unlearn, "evaluate": _evaluate}[kind]
        result = run(cfg, task, shard, out_dir, reporter)
    result = {"kind": kind, "world_size": collectives.world_size(), **result}
    files = [atomic_write_json(out_dir / f"{kind}.json", result)] if collectives.rank() == 0 else []
    if reporter is not None:
        reporter({"done": 1}, files)
    return result


# -- train ----------------------------------------------------------------------------------
def _flat_record(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if not isinstance(v, dict)}
    for split in ("valid", "test"):
        for k, v in record.get(split, {}).items():
            out[f"{split}/{k}"] = v
    return out


def _arm_faults(cfg: Config, model: Backbone, shard: Shard, out_dir: Path, resume: bool) -> None:
    plan = FaultPlan(cfg.dist.fault_rank, cfg.dist.fault_step, out_dir)
    if not plan.enabled or shard.rank != plan.rank:
        return
    start = 0
    if resume:
        from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint

        steps_per_epoch = math.ceil(len(shard.data.train_pairs[0]) / cfg.train.batch_size)
        start = int(load_checkpoint(checkpoint_path(out_dir))["epoch"]) * steps_per_epoch
    arm(model, plan, shard.rank, start_step=start)


def _train(cfg: Config, task: dict, shard: Shard, out_dir: Path, reporter: Reporter | None) -> dict:
    from tru_dist.train.checkpoint import checkpoint_path
    from tru_dist.train.trainer import run_metrics, train_model

    resume = bool(task.get("resume", False))
    model = build_shard_model(cfg, shard)
    _arm_faults(cfg, model, shard, out_dir, resume)

    def on_epoch(record: dict[str, Any]) -> None:
        if reporter is not None:
            files = [checkpoint_path(out_dir)] if "valid" in record else []
            reporter(_flat_record(record), files)

    result = train_model(model, shard.graph, shard.data, cfg, out_dir=out_dir, resume=resume,
                         on_epoch=on_epoch)
    metrics = run_metrics(model, shard.graph, shard.data, cfg, result)
    return {**metrics, "history": result.history, "book": shard.book.to_dict()}


# -- loading a trained model at any W --------------------------------------------------------
def load_sharded_state(model: Backbone, model_dir: str | Path, shard: Shard, cfg: Config) -> None:
    """Load the best parameters of a finished run into this rank's model, whatever W it ran at.

    The saved run's partition book is recomputed from the same data (deterministic), so
    the user rows of this rank are cut out of the saved ranks' files that overlap it;
    replicated parameters and buffers come from the first file.
    """
    from tru_dist.train.checkpoint import CheckpointError, checkpoint_path, load_checkpoint

    model_dir = Path(model_dir)
    single = checkpoint_path(model_dir, rank=0, world_size=1)
    saved_w = 1 if single.exists() else len(list(model_dir.glob("checkpoint.rank*.pt")))
    if saved_w == 0:
        raise CheckpointError(f"no checkpoint in {model_dir}; train first (tru-dist train --out {model_dir})")
    saved_cfg = Config.from_dict(load_checkpoint(checkpoint_path(model_dir, 0, saved_w))["config"])
    saved_book = PartitionBook.for_data(shard.data, saved_w, saved_cfg.dist.partition)
    lo, hi = shard.book.user_range(shard.rank)
    names = {id(p): n for n, p in model.named_parameters()}
    user_keys = [names[id(p)] for p, kind in model.row_tables().values() if kind == "user"]
    state: dict[str, torch.Tensor] = {}
    pieces: dict[str, list[torch.Tensor]] = {k: [] for k in user_keys}
    for s in range(saved_w):
        s_lo, s_hi = saved_book.user_range(s)
        a, b = max(lo, s_lo), min(hi, s_hi)
        if s > 0 and a >= b:  # file 0 is always read, for the replicated parameters
            continue
        best = load_checkpoint(checkpoint_path(model_dir, s, saved_w))["best_model"]
        if s == 0:
            state.update({k: v for k, v in best.items() if k not in pieces})
        if a < b:
            for k in user_keys:
                pieces[k].append(best[k][a - s_lo : b - s_lo])
    for k, parts in pieces.items():
        state[k] = torch.cat(parts)
    model.load_state_dict(state)
    model.eval()


def _model_from(cfg: Config, task: dict, shard: Shard, out_dir: Path) -> Backbone:
    """The trained model: from ``task['model_dir']`` or, without one, trained now into out_dir/original."""
    model = build_shard_model(cfg, shard)
    if task.get("model_dir"):
        load_sharded_state(model, task["model_dir"], shard, cfg)
        return model
    from tru_dist.train.trainer import train_model

    train_model(model, shard.graph, shard.data, cfg, out_dir=out_dir / "original")
    return model


# -- evaluate / unlearn ------------------------------------------------------------------------
def _evaluate(cfg: Config, task: dict, shard: Shard, out_dir: Path, reporter: Reporter | None) -> dict:
    from tru_dist.train.evaluate import evaluate

    if not task.get("model_dir"):
        raise ConfigError("evaluate needs model_dir (a finished training run's folder)")
    model = _model_from(cfg, task, shard, out_dir)
    with torch.no_grad():
        emb = model.embed(shard.graph)
    return {split: evaluate(model, shard.graph, shard.data, split, ks=cfg.eval.ks,
                            batch_users=cfg.eval.batch_users, emb=emb) for split in ("valid", "test")}


def _unlearn(cfg: Config, task: dict, shard: Shard, out_dir: Path, reporter: Reporter | None) -> dict:
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.evaluate import evaluate
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion
    from tru_dist.unlearn.metrics import forget_metrics

    model = _model_from(cfg, task, shard, out_dir)
    forget = forget_set(shard.data, task.get("regime", "users"), float(task.get("fraction", 0.05)),
                        cfg.unlearn.seed, policy=task.get("policy", "random"))
    deletion = build_deletion(shard.data, shard.graph, forget, reset=cfg.unlearn.reset_deleted_users)
    data_after, graph_after = deletion.data_after, deletion.graph_after
    method = get_method(task.get("method") or cfg.unlearn.method)
    result = method.unlearn(model, deletion, cfg)
    ks = tuple(cfg.eval.ks)
    return {
        "method": method.name,
        "seconds": result.seconds,
        "stats": result.stats,
        "test": evaluate(result.model, graph_after, data_after, "test", ks),
        "valid": evaluate(result.model, graph_after, data_after, "valid", ks),
        "forget": forget_metrics(result.model, graph_after, data_after, forget, ks),
        "forget_set": forget.summary(),
    }


def _compare(cfg: Config, task: dict, out_dir: Path, data: RecDataset | None) -> dict:
    if collectives.world_size() > 1:
        raise ConfigError("compare runs on one worker (--dist.workers=1); its training and unlearning "
                          "steps use the W = 1 graph")
    from tru_dist.compare import CompareSpec, run_compare

    results = run_compare(cfg, CompareSpec(**task.get("spec", {})), out_dir, data=data)
    return {"results": {k: v for k, v in results.items() if k != "table"}, "out_dir": str(out_dir)}
