"""One sweep trial on W workers: each rank unlearns its shard, epoch by epoch (no Ray here).

A trial with ``--workers W > 1`` runs as a Ray Train run of W workers
(:func:`tru_dist.tune.adapter.run_train_trial`); every worker calls
:func:`run_shard_trial`, which

1. rebuilds, for every seed, what the single-process trial gets from the driver — from
   the sweep folder, not from the driver's memory: the data (``regime_data``: the seeded
   poisoning replayed), this rank's shard of it (:func:`tru_dist.distributed.shard.load_shard`:
   its users' adjacency rows, its feature slice, kNN by ring broadcast), the shared
   original cut to this rank's user rows (:func:`tru_dist.distributed.shard.load_full_state`
   from ``context/originals/*.pt``), and the forget set and score reference
   (``context/<regime>/seed<k>.pt``);
2. runs the very loop of the single-process trial, :func:`tru_dist.tune.trainable.run_epochs`
   — the trial's method (any of the shared loop's: reverse_bpr, grad_ascent, finetune,
   TRU) through :func:`tru_dist.unlearn.engine.iter_update`, whose statistics and
   decisions are global sums, and the VALID metrics, whose counts are all-reduced — so
   every rank reports the same numbers, and they are those of W = 1 to float tolerance
   (``tests/test_tune_workers.py``).

The task is a plain JSON-able dict (:func:`shard_trial_task`), so it travels to Ray
workers on any node; the sweep folder must be on storage every node sees.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.source import is_synthetic, open_data
from tru_dist.distributed.process_group import init_from_env
from tru_dist.distributed.shard import Shard, build_shard_model, load_full_state, load_shard
from tru_dist.tune.context import (
    SeedContext,
    data_key,
    load_forget_and_reference,
    original_file,
    regime_data,
    seed_file,
    seeded,
)
from tru_dist.tune.spec import RegimeSpec, SweepSpec
from tru_dist.tune.trainable import Fault, TrialContext, iter_epochs
from tru_dist.unlearn.deletion import build_deletion


def shard_trial_task(spec: SweepSpec, base: Config, sweep_dir: Path, regime: RegimeSpec, max_t: int,
                     method: str = "tru") -> dict:
    """What every worker of every trial of (``method``, ``regime``) needs (paths absolute: workers chdir)."""
    cfg = base.model_copy(deep=True)
    if not is_synthetic(spec.data):
        cfg.data.path = str(Path(spec.data).expanduser().resolve())
    return {"sweep_dir": str(Path(sweep_dir).resolve()), "regime": regime.model_dump(),
            "seeds": list(spec.seed_list), "config": cfg.to_dict(), "k": spec.k, "max_t": int(max_t),
            "method": method}


def shard_seed_contexts(task: dict[str, Any]) -> list[SeedContext]:
    """This rank's :class:`SeedContext` per seed (collective: every rank calls it). Seeds on
    the same data (:func:`data_key`) share one shard: its graph and kNN are built once."""
    import torch

    regime = RegimeSpec(**task["regime"])
    sweep_dir = Path(task["sweep_dir"])
    base = Config.from_dict(task["config"])
    clean = open_data(base.data.path)
    shards: dict[tuple[str, int], Shard] = {}
    out = []
    for seed in task["seeds"]:
        cfg = seeded(base, seed)
        key = data_key(regime, seed)
        if key not in shards:
            shards[key] = load_shard(cfg, regime_data(clean, regime, seed))
        shard = shards[key]
        original = build_shard_model(cfg, shard)
        blob = torch.load(original_file(sweep_dir, regime, seed), map_location="cpu", weights_only=True)
        load_full_state(original, blob["state"], shard)
        forget, ref = load_forget_and_reference(seed_file(sweep_dir, regime.id, seed))
        deletion = build_deletion(shard.data, shard.graph, forget, reset=cfg.unlearn.reset_deleted_users)
        out.append(SeedContext(regime.id, seed, cfg, deletion, ref, {"original": original}))
    return out


def shard_trial_epochs(
    task: dict[str, Any],
    sample: dict[str, Any],
    start: int,
    fault: Fault | None = None,
    trial: int = -1,
    seeds: list[SeedContext] | None = None,
) -> Generator[tuple[dict[str, Any], dict[str, Any]], None, None]:
    """Epochs ``start+1 … max_t`` of ``sample`` on this rank's shard, one ``(metrics, state)``
    at a time (collective: every rank advances it in step). ``seeds``: this rank's
    :func:`shard_seed_contexts` for ``task``, when the caller kept them from an earlier trial.

    ``fault`` (the rehearsal of a crash) fires on rank 0 only: one failing worker is what a
    real crash looks like, and the whole group is then torn down.
    """
    init_from_env(Config.from_dict(task["config"]).dist.backend)
    seeds = shard_seed_contexts(task) if seeds is None else seeds
    mine = fault if collectives.rank() == 0 else None
    ctx = TrialContext(RegimeSpec(**task["regime"]).id, seeds, int(task["k"]), int(task["max_t"]), mine,
                       {"trial": trial}, method=task.get("method", "tru"))
    return iter_epochs(sample, ctx, start)


def run_shard_trial(
    task: dict[str, Any],
    sample: dict[str, Any],
    start: int,
    report: Callable[[dict[str, Any], dict[str, Any]], None],
    fault: Fault | None = None,
    trial: int = -1,
) -> None:
    """Epochs ``start+1 … max_t`` of ``sample`` on this rank's shard; ``report`` on every rank
    (:func:`shard_trial_epochs` driven to the end)."""
    for metrics, state in shard_trial_epochs(task, sample, start, fault, trial):
        report(metrics, state)
