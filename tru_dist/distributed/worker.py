"""The worker function: one rank of a train / evaluate / unlearn / compare task.

``worker_main(task)`` is what every rank runs, whoever started it — Ray Train
(:mod:`tru_dist.distributed.launch`), ``torchrun``, :func:`tru_dist.distributed.process_group.spawn_local`
or a plain call in this process at W = 1. It takes rank and world size from the process
group (initialising it from torchrun-style variables when needed), loads only this rank's
partition (:mod:`tru_dist.distributed.shard`), and runs the task with the package's
trainer, unlearning code and evaluator — the same functions a single process uses, so a
task's result and its files do not depend on W:

===========  =================================================================================
kind         what every rank runs; what rank 0 writes
===========  =================================================================================
train        ``train_model`` on its shard; ``out_dir/metrics.json`` and ``out_dir/checkpoint.pt``
             (full tables, gathered over ranks) — plus ``checkpoint.rank{r}.pt`` resume files
             at W > 1; returns the metrics and the per-epoch ``history``
evaluate     the run's full ``checkpoint.pt`` cut to its rows, valid/test metrics; nothing
unlearn      :func:`tru_dist.unlearn.run.apply_requests`: deletion step, method, metrics;
             ``out_dir/checkpoint.pt`` (full), ``metrics.json``, the ledger receipt
compare      :func:`tru_dist.compare.run_compare` on its shard; ``out_dir/results.json`` etc.
===========  =================================================================================

A task is a plain dict (JSON-able, so it travels to Ray workers and job scripts):
``kind``; ``config`` (``Config.to_dict()``); ``out_dir`` (train, unlearn, compare);
``resume`` (train); ``model_dir`` (evaluate, unlearn: a finished run, trained at any W);
``requests``, ``method``, ``purge_store``, ``keep_versions`` (unlearn); ``spec`` (compare:
``CompareSpec`` fields).

``reporter(metrics, files)`` (Ray's ``train.report``, supplied by the launcher) is called on
every rank after every training epoch with the checkpoint files written in that epoch, and
once at the end, when rank 0 passes ``result.json`` (the task's result) — so the result
lands in Ray's storage, where the driver reads it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.faults import FaultPlan, arm
from tru_dist.distributed.process_group import init_from_env
from tru_dist.distributed.shard import Shard, build_shard_model, load_run_model, load_shard
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json
from tru_dist.logs import setup_logging
from tru_dist.models.base import Backbone

Reporter = Callable[[dict[str, Any], list[Path]], None]
TASKS = ("train", "unlearn", "evaluate", "compare")
RESULT_FILE = "result.json"


def worker_main(
    task: dict[str, Any], reporter: Reporter | None = None, data: RecDataset | None = None
) -> dict:
    """Run ``task`` on this rank; return its result (rank 0's is the one the launcher returns).

    ``data`` (an in-memory dataset) replaces ``config.data.path``, e.g. in tests.
    """
    kind = task.get("kind")
    if kind not in TASKS:
        raise ConfigError(f"unknown task kind {kind!r} (choose one of: {', '.join(TASKS)})")
    cfg = Config.from_dict(task["config"])
    setup_logging()  # per-epoch lines from every process that runs a task (Ray workers, torchrun)
    init_from_env(cfg.dist.backend)
    out_dir = Path(task["out_dir"]) if task.get("out_dir") else None
    if kind != "evaluate":
        if out_dir is None:
            raise ConfigError(f"a {kind} task needs out_dir (the folder its results go to)")
        out_dir.mkdir(parents=True, exist_ok=True)
        resuming = kind == "train" and bool(task.get("resume", False))
        # every run folder holds its resolved config (a resume: once it succeeded; a comparison:
        # with its results, so a refused or failed one leaves an earlier comparison's as it was)
        if collectives.rank() == 0 and not resuming and kind != "compare":
            from tru_dist.train.checkpoint import write_run_config

            write_run_config(out_dir, cfg.to_dict())
    if kind == "compare":
        result = _compare(cfg, task, out_dir, data)
    else:
        shard = load_shard(cfg, data)
        run = {"train": _train, "unlearn": _unlearn, "evaluate": _evaluate}[kind]
        result = run(cfg, task, shard, out_dir, reporter)
    if reporter is not None:
        _report_result(result, reporter)
    return result


def _report_result(result: dict, reporter: Reporter) -> None:
    """The last report: rank 0's result as ``result.json``, the other ranks' without files."""
    if collectives.rank() != 0:
        reporter({"done": 1}, [])
        return
    with tempfile.TemporaryDirectory(prefix="tru-dist-result-") as tmp:
        path = Path(tmp) / RESULT_FILE
        path.write_text(json.dumps(result, default=str))
        reporter({"done": 1}, [path])


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
    from tru_dist.train.checkpoint import checkpoint_path, gather_state, save_checkpoint, write_run_config
    from tru_dist.train.trainer import data_signature, run_metrics, train_model

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
    if resume and shard.rank == 0:  # only now: a refused resume leaves the run's config.yaml as it was
        write_run_config(out_dir, cfg.to_dict())
    if shard.world_size > 1:  # W = 1: train_model's checkpoint.pt already is the full file
        best = gather_state(model)  # collective; train_model restored the best parameters
        if shard.rank == 0:
            save_checkpoint({"model": best, "best_model": best, "config": cfg.to_dict(),
                             "data": data_signature(shard.data), "world_size": shard.world_size, "rank": 0,
                             "epoch": result.epochs, "best_epoch": result.best_epoch,
                             "history": result.history, "finished": True},
                            checkpoint_path(out_dir, rank=0, world_size=1))
    if shard.rank == 0:
        atomic_write_json(out_dir / "metrics.json", metrics)
    return {**metrics, "history": result.history}


# -- evaluate / unlearn ------------------------------------------------------------------------
def _evaluate(cfg: Config, task: dict, shard: Shard, out_dir: Path | None, reporter: Reporter | None) -> dict:
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.train.size_warnings import evaluate_size_warnings
    from tru_dist.unlearn.ledger import served_state

    if not task.get("model_dir"):
        raise ConfigError("evaluate needs model_dir (a finished training run's folder)")
    model = load_run_model(cfg, shard, task["model_dir"])
    data, graph = served_state(task["model_dir"], shard.data, shard.graph)  # without what it deleted
    evaluate_size_warnings(cfg, data.n_items)  # e.g. --eval.ks='[100]' on 40 items: logged, once
    emb = eval_embeddings(model, graph)
    return {split: evaluate(model, graph, data, split, ks=cfg.eval.ks,
                            batch_users=cfg.eval.batch_users, emb=emb) for split in ("valid", "test")}


def _unlearn(cfg: Config, task: dict, shard: Shard, out_dir: Path, reporter: Reporter | None) -> dict:
    from tru_dist.unlearn.run import apply_requests

    for key in ("model_dir", "requests", "method"):
        if not task.get(key):
            raise ConfigError(f"an unlearn task needs {key} (see tru_dist.distributed.commands.unlearn)")
    model = load_run_model(cfg, shard, task["model_dir"])
    return apply_requests(cfg, task["model_dir"], task["requests"], task["method"], out_dir,
                          shard.data, shard.graph, model, store=task.get("purge_store"),
                          keep_versions=int(task.get("keep_versions", 0)),
                          expected_digest=task.get("requests_digest"))


# -- compare -----------------------------------------------------------------------------------
def _compare(cfg: Config, task: dict, out_dir: Path, data: RecDataset | None) -> dict:
    from tru_dist.compare import CompareSpec, run_compare

    results = run_compare(cfg, CompareSpec(**task.get("spec", {})), out_dir, data=data)
    return {"results": {k: v for k, v in results.items() if k != "table"}, "table": results.get("table"),
            "out_dir": str(out_dir)}
