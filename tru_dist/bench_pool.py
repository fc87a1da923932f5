"""``tru-dist bench pool``: N single-user deletions at W > 1, a fresh worker group per request vs one pool.

A deletion service on W local workers (``--address none``) either starts W processes and a
process group for every request (what ``tru-dist unlearn --workers W`` does per call:
:func:`~tru_dist.distributed.process_group.spawn_local`) or starts them once and keeps them
(:class:`~tru_dist.distributed.pool.WorkerPool`). This measures what the second saves, and
checks it changes nothing.

Setup. The data (a synthetic spec, generated with its seed, or a dataset folder) is written
once as a tru-dist store under ``work_dir`` (a synthetic spec only; a folder is read in
place), so every rank memory-maps it as a deployed service would. An original is trained in
this process (W = 1: the checkpoint holds full tables, which any W opens). N distinct users
with at least two train interactions are drawn with ``default_rng(seed)``
(:func:`tru_dist.bench_sequential.draw_users`); request file k deletes every interaction of
user k.

Two chains of the same N ledgered requests, each request applied to the model the previous
one left (what ``tru-dist unlearn --requests F1 --requests F2 ...`` does): **fresh** — request
k is :func:`tru_dist.distributed.commands.unlearn` with a fresh group of W processes; **pool** —
the same call with ``pool=`` one pool opened before the first request. The two chains are
interleaved (request k fresh, then request k on the pool) so that drifts of a shared machine
hit both alike.

Reported: ``fresh.seconds`` / ``pool.seconds`` — wall seconds of each request's call, as the
caller waits for it (driver-side planning, group start for fresh, the deletion step and the
method, evaluation, checkpoint and ledger writes), with ``p50``/``p95`` (``numpy.percentile``,
linear), ``max``, ``mean``, ``total``; ``pool.start_seconds`` — the pool's one-time start;
``ratio_p50`` = fresh p50 / pool p50; ``ratio_total`` = fresh total / (pool start + pool total);
``identical`` — the two final models have the same :func:`~tru_dist.distributed.replica.parameter_digest`
(bit-identical parameters) and every request's receipt the same ``model_after``
(``receipts_identical``); ``seconds`` — data, training, the whole bench.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from tru_dist.bench import refuse_flag_overrides
from tru_dist.bench_sequential import draw_users, latency_summary
from tru_dist.config import build_config
from tru_dist.data.source import is_synthetic, open_data
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json

#: config keys a flag of ``bench pool`` sets (an override of one is refused)
POOL_FLAGS = {"train.epochs": "--epochs", "train.seed": "--seed", "unlearn.seed": "--seed",
              "unlearn.method": "--method", "model.name": "--model", "data.path": "--data",
              "dist.workers": "--workers"}
#: written into a ``--work-dir`` this benchmark set up, so that a rerun may clear what it wrote
WORK_MARKER = ".tru-dist-bench-pool"
#: the subfolders a run of this benchmark writes (and a rerun removes first)
OWN_SUBFOLDERS = ("original", "fresh", "pool", "requests")


def claim_work_dir(work: Path) -> None:
    """Make ``work`` this benchmark's: refuse a folder whose ``original/``, ``fresh/``, ``pool/``
    or ``requests/`` it did not write (a rerun deletes those — ``--work-dir runs`` removed a
    user's ``runs/original`` without a word), then create it with :data:`WORK_MARKER`."""
    if not (work / WORK_MARKER).exists():
        taken = [sub for sub in OWN_SUBFOLDERS if (work / sub).exists()]
        if taken:
            raise ConfigError(f"--work-dir {work} already holds {', '.join(taken)}, which bench pool did not "
                              "write and would delete; pass a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).touch()


def _store_path(data: str, work_dir: Path) -> str:
    """Where the data is read from: a synthetic spec's store under ``work_dir``; a folder as is."""
    return str(work_dir / ("data-" + data.replace(":", "-"))) if is_synthetic(data) else data


def _open(data: str, data_path: str):
    """The dataset: the store when it is already written, else ``data`` itself (generated)."""
    return open_data(data_path if (Path(data_path) / "META.json").exists() else data)


def _store(dataset, data: str, data_path: str) -> None:
    """Write a synthetic spec's ``dataset`` as the store at ``data_path`` (once per spec)."""
    if is_synthetic(data) and not (Path(data_path) / "META.json").exists():
        from tru_dist.data.store import write_store

        write_store(dataset, data_path)


def _request_files(users, folder: Path) -> list[Path]:
    """Request file k deletes every interaction of ``users[k - 1]``."""
    from tru_dist.data.regimes import user_request_table
    from tru_dist.data.requests import write_requests

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, u in enumerate(users, 1):
        path = folder / f"user-{k:04d}.csv"
        write_requests(user_request_table([int(u)], "bench-pool"), path)
        files.append(path)
    return files


def _digest(run_dir: Path) -> str:
    from tru_dist.distributed.replica import parameter_digest
    from tru_dist.train.trainer import load_run

    return parameter_digest(load_run(run_dir, device="cpu")[3])


def bench_pool(
    data: str = "synthetic:small",
    model: str = "lightgcn",
    *,
    workers: int = 2,
    requests: int = 10,
    method: str = "tru",
    epochs: int = 5,
    seed: int = 0,
    work_dir: str | Path = "runs/bench-pool",
    out_json: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark of the module docstring; write ``out_json`` (atomically) if given and
    return the report. ``overrides``: ``["unlearn.epochs=5", ...]`` over the model's packaged
    defaults, ``train.epochs = epochs`` and ``train.seed = unlearn.seed = seed`` (an override of
    a key an argument sets is refused).

    Every argument is checked before anything is written or trained — the method (sisa is
    refused, as by ``bench sequential``), the overrides, and ``requests`` against the users the
    data has with two train interactions — so a refusal leaves ``work_dir`` as it was."""
    import shutil

    from tru_dist.distributed import commands
    from tru_dist.distributed.pool import WorkerPool
    from tru_dist.train.checkpoint import refuse_run_folder
    from tru_dist.unlearn.run import method_name

    refuse_flag_overrides("pool", overrides, POOL_FLAGS)
    if workers < 2:
        raise ConfigError(f"--workers must be at least 2 (a pool of one is the calling process), "
                          f"got {workers}")
    t_start = time.perf_counter()
    work = Path(work_dir)
    refuse_run_folder(work, "--work-dir")
    data_path = _store_path(str(data), work)
    named = None if is_synthetic(str(data)) else str(data)
    cfg = build_config(model=model, dataset=named, overrides=[
        f"data.path={data_path}", f"train.epochs={epochs}", f"train.seed={seed}", f"unlearn.seed={seed}",
        'train.progress="off"', *(overrides or [])])
    method = method_name(method, cfg)  # unknown method / sisa: one line before any work
    dataset = _open(str(data), data_path)
    users = draw_users(dataset, requests, seed)  # too many requests: one line before any work
    claim_work_dir(work)
    _store(dataset, str(data), data_path)
    del dataset
    t_data = time.perf_counter() - t_start
    for sub in ("original", "fresh", "pool"):  # a rerun starts clean: ledgers would replay
        shutil.rmtree(work / sub, ignore_errors=True)
    t0 = time.perf_counter()
    cfg.dist.workers, cfg.dist.address = 1, "none"
    commands.train(cfg, work / "original")
    t_train = time.perf_counter() - t0
    files = _request_files(users, work / "requests")
    dist = [f"dist.workers={workers}", "dist.address=none", *(overrides or [])]

    seconds: dict[str, list[float]] = {"fresh": [], "pool": []}
    receipts: dict[str, list[str]] = {"fresh": [], "pool": []}
    dirs = commands.sequence_dirs(work / "x", files)  # the same folder names as the CLI
    t0 = time.perf_counter()
    with WorkerPool(workers, cfg.dist.backend) as pool:
        start_seconds = pool.start_seconds
        source = {"fresh": work / "original", "pool": work / "original"}
        for path, name in zip(files, (d.name for d in dirs), strict=True):
            for chain, use in (("fresh", None), ("pool", pool)):
                out = work / chain / name
                t = time.perf_counter()
                metrics = commands.unlearn(source[chain], path, out, method=method, overrides=dist, pool=use)
                seconds[chain].append(time.perf_counter() - t)
                receipts[chain].append(metrics["receipt"]["model_after"])
                source[chain] = out
    t_chains = time.perf_counter() - t0
    cfg.dist.workers = workers  # the config the requests ran with (the original trained at W = 1)
    digests = {chain: _digest(source[chain]) for chain in ("fresh", "pool")}
    fresh = latency_summary(seconds["fresh"])
    pooled = {"start_seconds": start_seconds, **latency_summary(seconds["pool"])}
    pooled["total_with_start"] = pooled["total"] + start_seconds
    out: dict[str, Any] = {
        "data": str(data), "data_path": data_path, "model": cfg.model.name, "method": method,
        "workers": workers, "requests": requests, "epochs": epochs, "seed": seed,
        "per_request": "wall seconds of one commands.unlearn call (planning, group start when fresh, "
                       "deletion step, method, evaluation, checkpoint and ledger writes)",
        "fresh": fresh,
        "pool": pooled,
        "ratio_p50": fresh["p50"] / pooled["p50"],
        "ratio_total": fresh["total"] / pooled["total_with_start"],
        "identical": digests["fresh"] == digests["pool"],
        "receipts_identical": receipts["fresh"] == receipts["pool"],
        "digest": digests,
        "seconds": {"data": t_data, "train": t_train, "chains": t_chains,
                    "total": time.perf_counter() - t_start},
        "cpu_count": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
        "config": cfg.to_dict(),
    }
    if out_json:
        atomic_write_json(out_json, out)
    return out
