"""``tru-dist train`` on W data-parallel replicas: sampled training (``train.propagation: local``)
whose ranks each hold the whole model, the one mapped graph and only their users' train pairs.

With neighbourhood steps a step's cost follows its batch, so the sharded path
(:mod:`tru_dist.distributed.worker`: the model split by user rows, the whole graph propagated
every step) is the wrong trade; :mod:`tru_dist.distributed.replica` has the replica step (local
forward and backward, gradients summed over ranks with only touched table rows sent, the same
optimizer step on every rank: the replicas stay identical). This module runs that step for
whole epochs with what ``tru-dist train`` promises at any W — validation, early stopping,
checkpoints, ``--resume`` and the run folder that ``evaluate`` / ``unlearn`` open:

* **Epoch.** With N train pairs, global batch B and n_b = ⌈N / B⌉, rank r permutes its own
  N_r pairs with its own seeded generator and cuts them into n_b nearly equal batches
  (``np.array_split``), one uniform non-positive negative per pair; every rank takes n_b steps
  in lock-step, every train pair is drawn once per epoch, each loss term scaled 1 / B — so a
  step's loss summed over ranks is a mean over a global batch of ≈ B pairs stratified by user
  range (what :func:`~tru_dist.distributed.replica.rank_batches` draws for the scale bench,
  aligned to epochs).
* **Validation.** Only rank 0 holds the dataset's splits (the others: their pairs, the graph,
  the model). It evaluates every ``train.eval_every`` epochs and broadcasts whether to stop, so
  the ranks leave the loop together; early stopping and the best state are the trainer's
  (:func:`tru_dist.train.trainer.train_model`).
* **Checkpoints.** At every evaluation rank r writes ``replica.rank{r}.pt``: its sampler and
  fan-out generator states, and on rank 0 the parameters, optimizer state and counters (the
  same on every rank). ``--resume`` restarts every rank from them (same W, same config). At
  the end rank 0 writes the run's ``checkpoint.pt`` (the best parameters, full tables: the
  same file a sharded or a W = 1 run leaves) and the driver ``metrics.json``.

The driver builds the graph once (with MGCN's kNN graphs), saves it for the ranks to map and
splits the pairs (:func:`~tru_dist.distributed.replica.split_pairs`); the ranks are local
processes on loopback gloo (:func:`~tru_dist.distributed.process_group.spawn_local`).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.dataset import VALID, RecDataset
from tru_dist.data.validate import require_train_rows
from tru_dist.distributed.launch import uses_ray
from tru_dist.distributed.process_group import spawn_local
from tru_dist.distributed.replica import open_shared_graph, replica_step, share_graph, split_pairs
from tru_dist.distributed.shard import open_full
from tru_dist.errors import ConfigError
from tru_dist.graph.context import build_rec_graph
from tru_dist.io_utils import atomic_write_json
from tru_dist.logs import setup_logging
from tru_dist.models.base import BPRBatch
from tru_dist.models.registry import build_model, model_class, torch_seed
from tru_dist.train.checkpoint import (
    CheckpointError,
    checkpoint_path,
    clone_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_run_config,
)
from tru_dist.train.evaluate import evaluate
from tru_dist.train.optim import build_optimizer
from tru_dist.train.progress import log_epoch
from tru_dist.train.sampler import BPRSampler
from tru_dist.train.size_warnings import train_size_warnings
from tru_dist.train.trainer import check_loss, check_metric, data_signature, has_valid_rows, same_data

WORK_DIR = "replica-work"
DATA_FILE = "eval-data.pt"


def replica_file(out_dir: str | Path, rank: int) -> Path:
    """Rank ``rank``'s resume file of a replica run."""
    return Path(out_dir) / f"replica.rank{rank}.pt"


def wants_replicas(cfg: Config) -> bool:
    """Whether ``tru-dist train`` runs this config on data-parallel replicas: sampled steps
    (``train.propagation: local``) on more than one worker."""
    return cfg.train.propagation == "local" and cfg.dist.workers > 1


def run_replica_train(cfg: Config, out_dir: str | Path, *, resume: bool = False,
                      data: RecDataset | None = None) -> dict[str, Any]:
    """Train ``cfg`` on ``cfg.dist.workers`` local replicas into ``out_dir`` (module docstring);
    returns the metrics written to ``out_dir/metrics.json``."""
    if uses_ray(cfg):
        raise ConfigError("sampled training on several workers (train.propagation=local with "
                          f"--workers {cfg.dist.workers}) runs data-parallel replicas as local processes, "
                          "not on Ray: add --address none (or train with --train.propagation=full on Ray)")
    check_metric(cfg)
    if str(cfg.train.device).strip().lower().startswith("cuda"):  # auto: CPU ranks, also where CUDA is
        raise ConfigError(f"train.device={cfg.train.device}: sampled training on replicas runs on CPU ranks "
                          "(not measured on GPUs yet); use --device cpu, or --train.propagation=full on GPUs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # a resume's: once it succeeded (a refused one leaves config.yaml as it was)
        write_run_config(out, cfg.to_dict())
    in_memory = data is not None
    data = open_full(cfg, data)
    require_train_rows(data)
    has_valid_rows(data, cfg.model.name)  # the warning, once; rank 0's _validate keeps the last epoch
    train_size_warnings(cfg, data, model_class(cfg.model.name).uses_knn)
    graph = build_rec_graph(data, knn_k=cfg.model.knn_k, with_knn=model_class(cfg.model.name).uses_knn)
    if resume:
        check_resume_before_spawning(cfg, out, data_signature(data))
    users, items = data.train_pairs
    work = out / WORK_DIR
    work.mkdir(exist_ok=True)
    try:
        pair_files = split_pairs(users, items, data.n_users, data.n_items, cfg.dist.workers, work)
        spec = {"config": cfg.to_dict(), "graph": str(share_graph(graph, work)),
                "pairs": [str(p) for p in pair_files], "n_train": int(len(users)), "out_dir": str(out),
                "resume": bool(resume), "data": None, "data_signature": data_signature(data)}
        if in_memory:  # rank 0 evaluates on it; a dataset named by a path it opens itself
            torch.save(data, work / DATA_FILE)
            spec["data"] = str(work / DATA_FILE)
        del graph
        ranks = spawn_local(replica_train_rank, cfg.dist.workers, (spec,), backend="gloo")  # CPU ranks
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = ranks[0]
    if resume:
        write_run_config(out, cfg.to_dict())
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _epoch_batches(sampler: BPRSampler, n_batches: int, batch_size: int) -> list[BPRBatch]:
    """This rank's n_b batches of one epoch: its pairs permuted, cut into n_b parts."""
    out = []
    for idx in np.array_split(sampler.rng.permutation(len(sampler)), n_batches):
        u, i = sampler.users[idx], sampler.items[idx]
        out.append(BPRBatch(torch.from_numpy(u), torch.from_numpy(i),
                            torch.from_numpy(sampler.sample_negatives(u)), 1.0 / batch_size))
    return out


def replica_train_rank(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, Any] | None:
    """What every rank runs (module docstring); rank 0 returns the run's metrics."""
    cfg = Config.from_dict(spec["config"])
    tc = cfg.train
    out = Path(spec["out_dir"])
    setup_logging()  # rank 0's per-epoch lines reach stderr, as a W = 1 run's do
    with collectives.full_replica():
        graph = open_shared_graph(spec["graph"])
        pairs = np.load(spec["pairs"][rank])
        model = build_model(cfg.model, graph, seed=tc.seed)
        optimizer = build_optimizer(model, tc)
        sampler = BPRSampler(pairs[0], pairs[1], graph.n_users, graph.n_items, seed=[tc.seed, rank])
        fanout_rng = torch.Generator().manual_seed(tc.seed * 7919 + rank)
        n_batches = max(1, math.ceil(int(spec["n_train"]) / tc.batch_size))
        if len(sampler) < n_batches:
            raise ConfigError(f"--workers {world_size} with train.batch_size={tc.batch_size}: a replica "
                              f"holds {len(sampler)} train pairs, fewer than the {n_batches} steps of an "
                              "epoch; use a larger batch size or fewer workers")
        data = None
        if rank == 0:
            data = torch.load(spec["data"], weights_only=False) if spec["data"] else open_full(cfg)
        st: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_metric": -math.inf, "best_model": None,
                              "bad_evals": 0, "history": [], "train_seconds": 0.0, "eval_seconds": 0.0,
                              "stopped_early": False}
        if spec["resume"]:
            _resume(rank, world_size, cfg, out, model, optimizer, sampler, fanout_rng, st,
                    spec["data_signature"])
        else:
            torch_seed(tc.seed)
        while st["epoch"] < tc.epochs and not st["stopped_early"]:
            st["epoch"] += 1
            model.train()
            start = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64)
            for batch in _epoch_batches(sampler, n_batches, tc.batch_size):
                loss_sum += replica_step(model, graph, batch, optimizer, tc.fanout, fanout_rng,
                                         tc.deterministic).double()
            dist.all_reduce(loss_sum)
            seconds = time.perf_counter() - start
            st["train_seconds"] += seconds
            record: dict[str, Any] = {"epoch": st["epoch"], "loss": float(loss_sum) / n_batches,
                                      "seconds": seconds}
            check_loss(record["loss"], st["epoch"], cfg)  # every rank: the summed loss is the same
            evaluated = st["epoch"] % max(1, tc.eval_every) == 0 or st["epoch"] == tc.epochs
            if evaluated:
                if rank == 0:
                    _validate(cfg, model, graph, data, st, record)
                stop = torch.tensor([float(st["stopped_early"])])
                dist.broadcast(stop, 0)  # rank 0 decided: the ranks leave the loop together
                st["stopped_early"] = bool(stop.item())
            if rank == 0:  # the epoch's record goes into the resume file written next
                st["history"].append(record)
                log_epoch(cfg.model.name, record, tc.epochs, cfg.eval.metric, st["best_metric"],
                          st["best_epoch"])
            if evaluated:
                _save(rank, world_size, cfg, out, model, optimizer, sampler, fanout_rng, st,
                      spec["data_signature"])
        if rank != 0:
            return None
        return _finish(cfg, model, graph, data, st, out, world_size)


def _validate(cfg: Config, model, graph, data: RecDataset, st: dict[str, Any],
              record: dict[str, Any]) -> None:
    """Rank 0: valid metrics, best state and early stopping, as the trainer keeps them."""
    t0 = time.perf_counter()
    metrics = evaluate(model, graph, data, "valid", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    st["eval_seconds"] += time.perf_counter() - t0
    record["valid"] = metrics
    value = metrics[cfg.eval.metric]
    if value > st["best_metric"] or not data.split_counts[VALID]:  # no valid rows: the last epoch (trainer)
        st.update(best_metric=value, best_epoch=record["epoch"], best_model=clone_state(model), bad_evals=0)
    else:
        st["bad_evals"] += 1
        st["stopped_early"] = 0 < cfg.train.patience <= st["bad_evals"]


def _save(rank: int, world_size: int, cfg: Config, out: Path, model, optimizer, sampler: BPRSampler,
          fanout_rng: torch.Generator, st: dict[str, Any], signature: dict[str, Any]) -> None:
    state: dict[str, Any] = {"sampler": sampler.state_dict(), "fanout_rng": fanout_rng.get_state(),
                             "epoch": st["epoch"], "world_size": world_size, "config": cfg.to_dict()}
    if rank == 0:  # the parameters and optimizer are the same on every rank: one copy
        state.update(model=clone_state(model), optimizer=optimizer.state_dict(), rng=rng_state(),
                     data=signature, **{k: v for k, v in st.items() if k != "epoch"})
    save_checkpoint(state, replica_file(out, rank))
    dist.barrier()  # every rank's file of this epoch is down before any rank goes on


def _refuse_changed_resume(mine: dict[str, Any], first: dict[str, Any], cfg: Config, world_size: int,
                           data: dict[str, int], out: Path) -> None:
    """A CheckpointError when rank files ``mine`` and ``first`` (rank 0's) cannot be resumed under
    ``cfg`` at ``world_size`` on data of signature ``data``: what the trainer's resume checks
    (world size, model, data, seed, lr, batch size, optimizer), the replicas' own draws (fanout),
    an epoch past ``train.epochs`` (it would finish there silently, config.yaml saying
    otherwise), and rank files of different epochs."""
    now = cfg.to_dict()
    for saved in (mine, first):
        was = saved["config"]
        fields = [("world size", saved["world_size"], world_size), ("model", was["model"], now["model"])]
        if "data" in saved and not same_data(saved["data"], data):
            fields.append(("data", saved["data"], data))
        fields += [(f"train.{k}", was["train"][k], now["train"][k])
                   for k in ("seed", "lr", "batch_size", "fanout", "optimizer")]
        for what, old, new in fields:
            if old != new:
                raise CheckpointError(f"the replica checkpoints in {out} were written with a different "
                                      f"{what} ({old} vs now {new}); resume with the original settings or "
                                      "train into a fresh out_dir")
    if first["epoch"] > cfg.train.epochs:
        raise CheckpointError(f"the replica checkpoints in {out} are at epoch {first['epoch']}, past "
                              f"train.epochs={cfg.train.epochs}; resume with --train.epochs={first['epoch']} "
                              "or more")
    if mine["epoch"] != first["epoch"]:
        raise CheckpointError(f"the replica checkpoints in {out} are from different epochs "
                              f"({mine['epoch']} vs {first['epoch']}); train into a fresh out_dir")


def check_resume_before_spawning(cfg: Config, out: Path, data: dict[str, int]) -> None:
    """:func:`_refuse_changed_resume` for every rank's file, in the calling process: a resume that
    the ranks would refuse is refused before W processes start (about 3 s each time on 2 cores).
    Where a rank's file is missing the ranks decide, as before."""
    world_size = cfg.dist.workers
    files = [replica_file(out, r) for r in range(world_size)]
    if not all(f.exists() for f in files):
        return
    first = load_checkpoint(files[0])
    for f in files:
        mine = first if f == files[0] else load_checkpoint(f)
        _refuse_changed_resume(mine, first, cfg, world_size, data, out)


def _resume(rank: int, world_size: int, cfg: Config, out: Path, model, optimizer, sampler: BPRSampler,
            fanout_rng: torch.Generator, st: dict[str, Any], data: dict[str, int]) -> None:
    mine, first = load_checkpoint(replica_file(out, rank)), load_checkpoint(replica_file(out, 0))
    _refuse_changed_resume(mine, first, cfg, world_size, data, out)
    model.load_state_dict(first["model"])
    optimizer.load_state_dict(first["optimizer"])
    set_rng_state(first["rng"])
    sampler.load_state_dict(mine["sampler"])
    fanout_rng.set_state(mine["fanout_rng"])
    st.update({k: first[k] for k in st if k != "epoch"}, epoch=first["epoch"])


def _finish(cfg: Config, model, graph, data: RecDataset, st: dict[str, Any], out: Path,
            world_size: int) -> dict[str, Any]:
    """Rank 0: the best parameters back, test once, the run's ``checkpoint.pt``; the metrics."""
    model.load_state_dict(st["best_model"])  # train.epochs >= 1 and the last epoch validates: set
    valid = next((r["valid"] for r in st["history"] if r["epoch"] == st["best_epoch"] and "valid" in r), None)
    if valid is None:
        valid = evaluate(model, graph, data, "valid", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    test = evaluate(model, graph, data, "test", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    save_checkpoint({"model": st["best_model"], "best_model": st["best_model"], "config": cfg.to_dict(),
                     "data": data_signature(data), "world_size": world_size, "rank": 0, "epoch": st["epoch"],
                     "best_epoch": st["best_epoch"], "history": st["history"], "finished": True},
                    checkpoint_path(out, rank=0, world_size=1))
    return {"valid": valid, "test": test, "best_epoch": st["best_epoch"], "epochs": st["epoch"],
            "train_seconds": st["train_seconds"],
            "seconds_per_epoch": st["train_seconds"] / max(1, st["epoch"]),
            "world_size": world_size, "replicas": True, "config": cfg.to_dict()}
