"""The commands at any W: ``train``, ``evaluate``, ``unlearn`` and ``compare``, one call each.

What the CLI (and the ``jobs/`` entry points through it) call. Each builds its task and
runs it through :func:`tru_dist.distributed.launch.run_distributed` — in this process at
W = 1 (no Ray, no process group), on W local processes with ``dist.address=none``, on W
Ray Train workers otherwise — where every rank runs the same per-worker function
(:mod:`tru_dist.distributed.worker`). What a command returns and the files it leaves do not
depend on W (metrics agree to float tolerance: sums over ranks are added in another order).

=========  ===================================================================================
command    where it runs
=========  ===================================================================================
train      W = 1 without Ray: :func:`tru_dist.train.trainer.run_train` here; otherwise the
           worker's ``train`` on W shards. Either way RUN/metrics.json and RUN/checkpoint.pt
           (full tables; W > 1 adds per-rank resume files)
evaluate   the worker's ``evaluate`` on W shards of RUN/checkpoint.pt (W = 1: this process)
unlearn    the driver plans (:func:`tru_dist.unlearn.run.prepare`: config, ledger, replay);
           the worker's ``unlearn`` applies the requests on W shards; rank 0 writes OUT
compare    every seed's original, Retrain and methods train/unlearn on W shards, every metric
           is a global sum; rank 0 writes OUT (audits need one worker)
=========  ===================================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.launch import run_distributed, uses_ray
from tru_dist.errors import ConfigError


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, data: RecDataset | None = None) -> dict:
    """Train ``cfg`` into ``out_dir``; returns the metrics written to ``out_dir/metrics.json``."""
    if cfg.dist.workers == 1 and not uses_ray(cfg):
        from tru_dist.train.trainer import run_train

        return run_train(cfg, out_dir, resume=resume, data=data)
    return run_distributed("train", cfg, data=data, out_dir=out_dir, resume=resume)


def evaluate(run_dir: str | Path, *, overrides: list[str] | None = None,
             data: RecDataset | None = None) -> dict[str, Any]:
    """``{"valid": {...}, "test": {...}}`` of a finished run (trained at any W), evaluated on
    ``dist.workers`` workers (``overrides``: ``dist.workers=4``, ``eval.ks=[10]``, ...)."""
    from tru_dist.train.trainer import run_config

    cfg = run_config(run_dir, overrides=overrides)
    return run_distributed("evaluate", cfg, data=data, model_dir=str(Path(run_dir).resolve()))


def unlearn(run_dir: str | Path, requests: str | Path, out_dir: str | Path, *, method: str | None = None,
            config_file: str | Path | None = None, seed: int | None = None,
            overrides: list[str] | None = None, data: RecDataset | None = None, purge: bool = False,
            keep_versions: int = 0) -> dict[str, Any]:
    """Apply a request file to a finished run (see :mod:`tru_dist.unlearn.run`); returns the
    metrics written to ``out_dir/metrics.json`` with the receipt (``replayed: True`` and the
    earlier receipt when these requests were applied before). ``purge``: then purge the run's
    store, keeping ``keep_versions`` superseded versions."""
    from tru_dist.unlearn.run import prepare

    ready = prepare(run_dir, requests, out_dir, method=method, config_file=config_file, seed=seed,
                    overrides=overrides, data=data, purge=purge, keep_versions=keep_versions)
    if isinstance(ready, dict):  # applied before: the earlier receipt, no worker starts
        return ready
    return run_distributed("unlearn", ready.cfg, data=data, model_dir=str(Path(run_dir).resolve()),
                           requests=str(Path(requests).resolve()), method=ready.method,
                           out_dir=str(Path(out_dir).resolve()), purge_store=ready.store,
                           keep_versions=ready.keep_versions)


def compare(cfg: Config, spec, out_dir: str | Path, *, data: RecDataset | None = None) -> dict:
    """:func:`tru_dist.compare.run_compare` on ``cfg.dist.workers`` workers; returns its results."""
    from dataclasses import asdict

    from tru_dist.compare import check_workers

    check_workers(cfg, spec)
    out = run_distributed("compare", cfg, data=data, out_dir=str(Path(out_dir).resolve()), spec=asdict(spec))
    if "results" not in out:
        raise ConfigError("the compare task returned no results")
    return {**out["results"], "table": out.get("table")}
