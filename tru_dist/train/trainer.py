"""BPR training with early stopping on valid, exact checkpoint/resume, shard-aware.

One step (every rank, in lock-step): full forward ``emb = model.embed(graph)`` (or its rows the
batch uses, ``model.embed_rows``, where the backbone computes those for less: MIG-GT), this
rank's share of the global-batch loss ``model.loss(batch, graph, emb)`` (BPR + the model's
regularisers, scaled by 1/|global batch|), backward, sum the replicated parameters'
gradients over ranks (``collectives.sum_grads``), Adam step. Because the sampler draws
the same global batches on every rank and the loss is a sum of shard terms, W ranks take
the step one process would (DESIGN §7). With ``train.propagation: local`` the forward runs on
the batch's neighbourhood only (``models.base.embed_for``; ``train.fanout`` neighbours per node
and layer, drawn from a generator seeded by (seed, epoch) so a resumed run draws the same).
At W > 1 such sampled training runs as data-parallel replicas instead of shards
(:mod:`tru_dist.distributed.replica_train`; ``tru-dist train`` routes it there).

Valid is evaluated every ``train.eval_every`` epochs and at the last epoch; the best
``eval.metric`` (larger is better) is kept, and training stops after ``train.patience``
evaluations without improvement (``patience <= 0`` disables early stopping). The best
parameters are restored at the end. Data without valid rows trains every epoch and keeps the
last (:func:`has_valid_rows`, one warning); data without train rows is a one-line DataError,
and so is an epoch whose loss is NaN/inf (:func:`check_loss`), before it is checkpointed.

Every evaluation writes a checkpoint (``checkpoint.py``); ``resume=True`` restores model,
optimizer, sampler and global RNG states, so 3 epochs + resume 3 epochs reproduces 6
uninterrupted epochs bit for bit. A fresh run seeds the global RNGs with ``train.seed``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.dataset import VALID, RecDataset
from tru_dist.data.validate import dataset_source, require_train_rows
from tru_dist.device import resolve_device, synchronize
from tru_dist.errors import ConfigError, TrainingError
from tru_dist.graph.context import RecGraph, build_rec_graph
from tru_dist.graph.partition import PartitionBook
from tru_dist.io_utils import atomic_write_json
from tru_dist.models.base import Backbone, embed_for
from tru_dist.models.registry import build_model, model_class, torch_seed
from tru_dist.train.checkpoint import (
    CheckpointError,
    checkpoint_path,
    clone_state,
    load_checkpoint,
    read_run,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_run_config,
)
from tru_dist.train.determinism import deterministic_kernels
from tru_dist.train.evaluate import METRICS, evaluate
from tru_dist.train.optim import build_optimizer
from tru_dist.train.progress import log_epoch, progress
from tru_dist.train.sampler import BPRSampler
from tru_dist.train.size_warnings import train_size_warnings


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    ``epochs`` = epochs run in total (including before a resume); ``train_seconds`` = time
    in training steps only (evaluations excluded, summed over resumes); ``valid`` = the
    valid metrics of ``best_epoch``; ``history`` = one record per epoch
    (``epoch``, ``loss``, ``seconds``, and ``valid`` where evaluated).
    """

    best_epoch: int
    epochs: int
    train_seconds: float
    seconds_per_epoch: float
    valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LOG = logging.getLogger("tru_dist.train")

def check_metric(cfg: Config) -> None:
    """``eval.metric`` must be one of the computed keys, e.g. ``recall@20`` with 20 in ``eval.ks``."""
    name, _, k = cfg.eval.metric.partition("@")
    if name not in METRICS or not k.isdigit() or int(k) not in cfg.eval.ks:
        valid = ", ".join(f"{m}@{kk}" for kk in cfg.eval.ks for m in METRICS)
        raise ConfigError(f"eval.metric '{cfg.eval.metric}' is not computed; choose one of: {valid}")


def pairs_digest(users: np.ndarray, items: np.ndarray, n_items: int) -> str:
    """An order-independent digest of (user, item) pairs, as 16 hex digits:

        Σ_pairs splitmix64(u · n_items + i)  mod 2^64

    a multiset hash, so the same pairs in another row order (a purged store rewrites its rows)
    give the same digest, while other pairs of the same counts — another dataset, or the same
    one with its ids permuted — almost surely do not. Not a defence against a crafted collision:
    it tells a user they pointed a checkpoint at the wrong data."""
    x = users.astype(np.uint64)  # a copy; every step below is in place on it (one temporary)
    x *= np.uint64(n_items)
    x += items.astype(np.uint64, copy=False)
    x += np.uint64(0x9E3779B97F4A7C15)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x ^= x >> np.uint64(shift)
        x *= np.uint64(factor)
    x ^= x >> np.uint64(31)
    return f"{int(x.sum(dtype=np.uint64)):016x}"


def data_signature(data: RecDataset) -> dict[str, int | str]:
    """What a checkpoint records of its data, checked on resume and load: the counts and a
    digest of the train pairs (:func:`pairs_digest`; checkpoints written before it carry the
    counts only, and :func:`same_data` then compares those)."""
    users, items = data.train_pairs
    return {"n_users": data.n_users, "n_items": data.n_items, "n_train": int(len(users)),
            "train_digest": pairs_digest(np.asarray(users), np.asarray(items), data.n_items)}


def same_data(saved: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a checkpoint's recorded :func:`data_signature` matches ``now`` on every field
    both carry (an older checkpoint has no digest)."""
    return saved is not None and all(saved[k] == now[k] for k in saved.keys() & now.keys())


def _check_resumable(saved: dict[str, Any], cfg: Config, data: RecDataset, path: Path,
                     signature: dict[str, Any] | None = None) -> None:
    """CheckpointError unless ``saved`` can continue with ``cfg`` on ``data`` (``signature``: its
    :func:`data_signature`, when the caller already has it)."""
    now = cfg.to_dict()
    fields = [("model", saved["config"]["model"], now["model"])]
    saved_train = {"optimizer": "adam", **saved["config"]["train"]}  # older runs: before the choice
    for k in ("seed", "lr", "batch_size", "optimizer"):  # another optimizer's state does not load
        fields.append((f"train.{k}", saved_train[k], now["train"][k]))
    if saved.get("epoch", 0) > now["train"]["epochs"]:
        epoch = saved["epoch"]
        raise CheckpointError(f"checkpoint {path} is at epoch {epoch}, past train.epochs="
                              f"{now['train']['epochs']}; resume with --train.epochs={epoch} or more")
    signature = data_signature(data) if signature is None else signature
    if not same_data(saved["data"], signature):
        fields.append(("data", saved["data"], signature))
    fields.append(("world size", saved["world_size"], collectives.world_size()))
    for what, old, new in fields:
        if old != new:
            raise CheckpointError(
                f"checkpoint {path} was written with a different {what} ({old} vs now {new}); "
                "resume with the original settings or train into a fresh out_dir"
            )


def has_valid_rows(data: RecDataset, model_name: str) -> bool:
    """Whether ``data`` holds valid (x_label 1) rows to select the best epoch on; logs one
    warning when it does not. Without them every valid metric is 0, so "best" would always be
    the first evaluation and early stopping would end training ``train.patience`` evaluations
    later: instead every evaluation counts as the best so far, so training runs all
    ``train.epochs`` and keeps the last epoch's parameters (what training without a
    validation split means)."""
    if data.split_counts[VALID] > 0:
        return True
    if collectives.rank() == 0:  # every rank holds every row: one line, not W
        _LOG.warning("%s has no valid rows (x_label 1): %s trains all train.epochs without early stopping "
                     "and keeps the last epoch; label some rows x_label=1 to select the best epoch",
                     dataset_source(data), model_name)
    return False


def check_loss(loss: float, epoch: int, cfg: Config) -> None:
    """Stop training whose epoch loss (summed over ranks, so every rank stops alike) is NaN or
    infinite: the parameters are then NaN too, and would otherwise be ranked, checkpointed and
    served (``recommend`` printing NaN scores) as if training had worked. Huge feature values
    (unnormalised, ~1e30) or a too large learning rate are the usual causes."""
    if not math.isfinite(loss):
        raise TrainingError(f"{cfg.model.name} training diverged at epoch {epoch}: the loss is {loss}; "
                            "normalise the item features (e.g. to unit norm per item) or lower "
                            f"train.lr (now {cfg.train.lr:g})")


def train_step(model: Backbone, graph: RecGraph, batch, optimizer: torch.optim.Optimizer,
               replicated: list[torch.nn.Parameter], *, local: bool = False, fanout: int = 0,
               generator: torch.Generator | None = None, deterministic: bool) -> torch.Tensor:
    """One BPR step (module docstring): forward (full, or the batch's neighbourhood), this rank's
    loss, backward, sum of the replicated gradients over ranks, optimizer step. Returns the
    detached loss. ``deterministic``: fixed-order CPU kernels (:mod:`tru_dist.train.determinism`)."""
    with deterministic_kernels(deterministic, graph.ui.norm.device):
        optimizer.zero_grad(set_to_none=True)
        emb = embed_for(model, graph, [batch], local=local, fanout=fanout, generator=generator)
        loss = model.loss(batch, graph, emb)
        loss.backward()
        collectives.sum_grads(replicated)
        optimizer.step()
    return loss.detach()


def train_model(
    model: Backbone,
    graph: RecGraph,
    data: RecDataset,
    cfg: Config,
    out_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with BPR on ``data``'s train pairs; return the best-on-valid result.

    ``on_epoch(record)`` is called after every epoch (after the checkpoint is written), e.g.
    to report to Ray Tune; an exception raised there interrupts training like a crash would.
    Every epoch also logs one line (:func:`tru_dist.train.progress.log_epoch`). Epoch seconds
    are CUDA-synchronised. Collective: every rank calls it with its own graph shard and model.
    """
    check_metric(cfg)
    require_train_rows(data)
    tc = cfg.train
    device = resolve_device(tc.device)
    model.to(device)
    selects = has_valid_rows(data, cfg.model.name)  # False: no early stopping, the last epoch is kept
    train_size_warnings(cfg, data, model.uses_knn)  # e.g. eval.ks >= n_items: logged, once
    sampler = BPRSampler(*data.train_pairs, data.n_users, data.n_items, seed=tc.seed,
                         book=graph.book, rank=graph.rank)
    optimizer = build_optimizer(model, tc)
    replicated = model.replicated_parameters()
    ckpt = checkpoint_path(out_dir) if out_dir is not None else None

    st: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_metric": -math.inf, "best_model": None,
                          "bad_evals": 0, "history": [], "train_seconds": 0.0, "eval_seconds": 0.0,
                          "stopped_early": False}
    signature = data_signature(data) if ckpt is not None else None  # once: it hashes every train pair
    if resume:
        if ckpt is None:
            raise ConfigError("resume=True needs out_dir (the folder holding the checkpoint)")
        saved = load_checkpoint(ckpt, map_location=device)
        _check_resumable(saved, cfg, data, ckpt, signature)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        st.update({k: saved[k] for k in st})
    else:
        torch_seed(tc.seed)

    def save() -> None:
        if ckpt is None:
            return
        save_checkpoint({
            "model": clone_state(model), "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
            "rng": rng_state(), "config": cfg.to_dict(), "data": signature,
            "world_size": collectives.world_size(), "rank": collectives.rank(), **st,
        }, ckpt)

    n_batches = sampler.n_batches(tc.batch_size)
    local = tc.propagation == "local"
    if local and (not model.local_embedding or collectives.is_distributed()):
        why = "sharded (W > 1)" if model.local_embedding else f"{model.name} has no neighbourhood forward"
        _LOG.warning("train.propagation=local: %s, so every step runs the full forward", why)
    while st["epoch"] < tc.epochs and not st["stopped_early"]:
        st["epoch"] += 1
        epoch = st["epoch"]
        model.train()
        synchronize(device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        fanout_rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)  # resumable per epoch
        for batch in progress(sampler.epoch(tc.batch_size), total=n_batches, desc=f"epoch {epoch}",
                              mode=tc.progress):
            loss = train_step(model, graph, batch.to(device), optimizer, replicated, local=local,
                              fanout=tc.fanout, generator=fanout_rng, deterministic=tc.deterministic)
            loss_sum += loss.to(torch.float64)
        collectives.sum_stats(loss_sum)
        synchronize(device)
        seconds = time.perf_counter() - start
        st["train_seconds"] += seconds
        record: dict[str, Any] = {"epoch": epoch, "loss": float(loss_sum) / max(1, n_batches),
                                  "seconds": seconds}
        check_loss(record["loss"], epoch, cfg)  # before a NaN model is evaluated or checkpointed

        evaluated = epoch % max(1, tc.eval_every) == 0 or epoch == tc.epochs
        if evaluated:
            t0 = time.perf_counter()
            metrics = evaluate(model, graph, data, "valid", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
            st["eval_seconds"] += time.perf_counter() - t0
            record["valid"] = metrics
            value = metrics[cfg.eval.metric]
            if value > st["best_metric"] or not selects:
                st.update(best_metric=value, best_epoch=epoch, best_model=clone_state(model), bad_evals=0)
            else:
                st["bad_evals"] += 1
                st["stopped_early"] = 0 < tc.patience <= st["bad_evals"]
        st["history"].append(record)
        log_epoch(cfg.model.name, record, tc.epochs, cfg.eval.metric, st["best_metric"], st["best_epoch"])
        if evaluated:
            save()
        if on_epoch is not None:
            on_epoch(record)

    if st["best_model"] is None:  # zero epochs: the initial parameters are the best we have
        metrics = evaluate(model, graph, data, "valid", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
        st["history"].append({"epoch": 0, "valid": metrics})
        st.update(best_metric=metrics[cfg.eval.metric], best_model=clone_state(model))
    model.load_state_dict(st["best_model"])
    valid = next(r["valid"] for r in st["history"] if r["epoch"] == st["best_epoch"] and "valid" in r)
    return TrainResult(
        best_epoch=st["best_epoch"],
        epochs=st["epoch"],
        train_seconds=st["train_seconds"],
        seconds_per_epoch=st["train_seconds"] / max(1, st["epoch"]),
        valid=dict(valid),
        history=list(st["history"]),
        eval_seconds=st["eval_seconds"],
        stopped_early=bool(st["stopped_early"]),
    )


def fit(
    cfg: Config,
    data: RecDataset,
    out_dir: str | Path | None = None,
    resume: bool = False,
    book: PartitionBook | None = None,
    rank: int = 0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    knn: dict | None = None,
) -> tuple[Backbone, RecGraph, TrainResult]:
    """Build this rank's graph and the seeded model, then train; same config+seed → same result.

    ``knn``: item–item graphs built before (they depend on item features only), e.g. a
    shard's, whose feature slices cannot rebuild them."""
    uses_knn = model_class(cfg.model.name).uses_knn
    device = resolve_device(cfg.train.device)
    graph = build_rec_graph(data, knn_k=cfg.model.knn_k, book=book, rank=rank, device=device,
                            with_knn=uses_knn and not knn)
    if uses_knn and knn:
        graph.knn = {m: (a.to(device), at.to(device)) for m, (a, at) in knn.items()}
    model = build_model(cfg.model, graph, seed=cfg.train.seed).to(device)
    result = train_model(model, graph, data, cfg, out_dir=out_dir, resume=resume, on_epoch=on_epoch)
    return model, graph, result


def _load_data(cfg: Config) -> RecDataset:
    """``cfg.data.path``: a folder, or a synthetic spec (default: the embedded demo data); when
    neither it nor the run's recorded ``data.resolved_path`` exists, the error names both."""
    from tru_dist.data.location import path_to_open
    from tru_dist.data.source import open_data

    return open_data(path_to_open(cfg.data.path, cfg.data.resolved_path))


def run_metrics(model, graph, data: RecDataset, cfg: Config, result: TrainResult) -> dict:
    """The ``metrics.json`` record of a finished run: test evaluated once, with the best parameters."""
    test = evaluate(model, graph, data, "test", ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
    return {
        "valid": result.valid,
        "test": test,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "world_size": collectives.world_size(),
        "config": cfg.to_dict(),
    }


def run_train(cfg: Config, out_dir: str | Path, resume: bool = False, data: RecDataset | None = None) -> dict:
    """Train, evaluate test once with the best parameters, write ``out_dir/metrics.json``.

    ``metrics.json`` = ``{"valid", "test", "best_epoch", "epochs", "train_seconds",
    "seconds_per_epoch", "config"}``; the checkpoint is ``out_dir/checkpoint.pt`` (W = 1);
    ``out_dir/config.yaml`` (the resolved config) is written before training starts, once the
    data opened (data that cannot be read leaves no folder behind).
    """
    data = data if data is not None else _load_data(cfg)
    if resume and collectives.world_size() == 1:  # a refused resume leaves config.yaml as it was
        ckpt = checkpoint_path(out_dir)
        _check_resumable(load_checkpoint(ckpt), cfg, data, ckpt)
    if collectives.rank() == 0:
        write_run_config(out_dir, cfg.to_dict())
    model, graph, result = fit(cfg, data, out_dir=out_dir, resume=resume)
    metrics = run_metrics(model, graph, data, cfg, result)
    if collectives.rank() == 0:
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def run_config(run_dir: str | Path, *, config_file: str | Path | None = None, seed: int | None = None,
               overrides: list[str] | dict | None = None) -> Config:
    """The config of a command on a finished run (``evaluate``, ``unlearn``): the run's saved
    config < ``config_file`` < ``seed`` < ``overrides``, through the one builder
    (:func:`tru_dist.config.build_config`). ``dist.*`` says how to run this command, not what
    the run is, so it starts from the defaults (a run trained on 2 workers is evaluated on
    one unless ``--workers`` says otherwise). The model cannot change: its parameters are
    the run's."""
    from tru_dist.config import build_config

    saved = Config.from_dict(read_run(run_dir, tensors=False)["config"])
    base = {k: v for k, v in saved.to_dict().items() if k != "dist"}
    cfg = build_config(base=base, config_file=config_file, seed=seed, overrides=overrides)
    if cfg.model != saved.model:
        was = saved.model.model_dump()
        key = sorted(k for k, v in cfg.model.model_dump().items() if was[k] != v)[0]
        raise ConfigError(f"model.{key} differs from the run's ({was[key]!r}); "
                          f"the model of {run_dir} is fixed by its training — drop model.* from the "
                          "config file and overrides")
    return cfg


def check_run_data(run_dir: str | Path, saved: dict[str, Any], data: RecDataset) -> None:
    """The data a run's checkpoint was trained on must be ``data`` (counts): the original, or —
    for an unlearned run — its store once purged of the run's deletions (``data_after``)."""
    now = data_signature(data)  # once: it hashes every train pair
    if not any(same_data(s, now) for s in (saved["data"], saved.get("data_after"))):
        purged = " (if its store was purged since, this model was trained on deleted data: load the " \
            "unlearned run instead)" if data.meta.get("store") else ""
        raise CheckpointError(
            f"run {run_dir} was trained on data with {saved['data']}, not {now}; "
            f"pass the dataset it was trained on{purged}"
        )


def load_parameters(model: Backbone, state: dict[str, Any], run_dir: str | Path, name: str) -> None:
    """``model.load_state_dict(state)`` (eval mode) with a one-line error for another model's
    or version's parameters."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {Path(run_dir) / 'checkpoint.pt'} does not hold {name} parameters "
                              f"for this data ({first[:160]}); retrain the run or pass the run it belongs to"
                              ) from None
    model.eval()


def load_run(
    run_dir: str | Path, data: RecDataset | None = None, device: str | None = None
) -> tuple[Config, RecDataset, RecGraph, Backbone]:
    """Rebuild ``(cfg, data, graph, model)`` of a finished run, in this one process, with its
    best parameters — whatever W trained it (``checkpoint.pt`` holds full tables,
    :func:`~tru_dist.train.checkpoint.read_run`).

    ``data`` overrides ``cfg.data.path`` (needed when the run was trained on in-memory data);
    ``device`` overrides ``cfg.train.device``.
    """
    saved = read_run(run_dir)
    cfg = Config.from_dict(saved["config"])
    if device is not None:
        cfg.train.device = device
    if data is None:
        if cfg.data.path is None:
            raise CheckpointError(f"run {run_dir} was trained on in-memory data; pass data= to load_run")
        from tru_dist.data.location import check_data_found

        check_data_found(cfg.data.path, cfg.data.resolved_path, of_run=run_dir)
        data = _load_data(cfg)
    check_run_data(run_dir, saved, data)
    dev = resolve_device(cfg.train.device)
    graph = build_rec_graph(data, knn_k=cfg.model.knn_k, device=dev,
                            with_knn=model_class(cfg.model.name).uses_knn)
    model = build_model(cfg.model, graph, seed=cfg.train.seed).to(dev)
    load_parameters(model, saved["best_model"], run_dir, cfg.model.name)
    model.eval()
    return cfg, data, graph, model


def evaluate_run(run_dir: str | Path, data: RecDataset | None = None, device: str | None = None) -> dict:
    """Re-evaluate a run's checkpoint: ``{"valid": {...}, "test": {...}}``."""
    cfg, data, graph, model = load_run(run_dir, data=data, device=device)
    with torch.no_grad():
        emb = model.embed(graph)
    return {split: evaluate(model, graph, data, split, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users,
                            emb=emb) for split in ("valid", "test")}
