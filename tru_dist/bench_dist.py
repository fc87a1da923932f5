"""``tru-dist bench dist``: training step time and bytes communicated per step, W = 1 vs W = 2.

Both world sizes run in one call, each as local processes over gloo
(:func:`tru_dist.distributed.process_group.spawn_local`; W = 1 is one process, W = 2 two). Each
rank gets ``threads_per_rank`` torch threads (default 1: a worker is one core, as it would
be one GPU, so W = 2 uses twice the compute — the scaling question; on a shared machine one
thread per rank also keeps OpenMP spin-waits from distorting the timings). Every rank materialises only
its shard (:func:`tru_dist.distributed.shard.load_shard`); interaction-only data (the Amazon Baby
graph) gets random features of MMRec's shapes (``image:4096,text:384``) generated in
fixed row blocks seeded by (modality, block), so a rank draws only the rows of its slice
and every W sees the same matrix.

One timed step is exactly the trainer's: full forward ``model.embed(graph)``, this rank's
share of the global batch's loss, backward, all-reduce of the replicated gradients, Adam
— after one untimed warm-up step. Bytes are counted by wrapping ``torch.distributed``'s
collectives (:class:`tru_dist.distributed.comm_meter.CommMeter`, payload convention) and set
against the planner's analytic figures (:func:`tru_dist.distributed.planner.plan`): the payload
per step, and the ring-algorithm minimum each worker sends over its link.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.config import Config, build_config
from tru_dist.data.dataset import RecDataset
from tru_dist.data.source import is_synthetic
from tru_dist.device import synchronize
from tru_dist.distributed.comm_meter import CommMeter
from tru_dist.distributed.planner import plan
from tru_dist.distributed.process_group import spawn_local
from tru_dist.io_utils import atomic_write_json

BLOCK_ROWS = 256


class BlockFeatures:
    """A lazily generated (n_items × dim) float32 matrix: rows come in seeded blocks of 256.

    Supports ``shape``, ``dtype`` and row slicing ``x[lo:hi]`` (what a worker takes), so a
    worker never materialises more than its slice plus one block on either side.
    """

    def __init__(self, n_items: int, dim: int, seed: int):
        self.shape = (int(n_items), int(dim))
        self.dtype = np.dtype(np.float32)
        self.seed = seed

    def __len__(self) -> int:
        return self.shape[0]

    def _block(self, b: int) -> np.ndarray:
        rows = min(BLOCK_ROWS, self.shape[0] - b * BLOCK_ROWS)
        rng = np.random.default_rng([self.seed, b])
        return rng.standard_normal((rows, self.shape[1]), dtype=np.float32)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("BlockFeatures supports contiguous row slices only")
        lo, hi, _ = key.indices(self.shape[0])
        if hi <= lo:
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        first, last = lo // BLOCK_ROWS, (hi - 1) // BLOCK_ROWS
        rows = np.concatenate([self._block(b) for b in range(first, last + 1)])
        return rows[lo - first * BLOCK_ROWS : hi - first * BLOCK_ROWS]


def _feature_spec(spec: str | dict | list | None) -> dict[str, int]:
    if spec is None or isinstance(spec, dict):
        return dict(spec or {})
    if isinstance(spec, str):
        from tru_dist.bench import parse_feature_spec

        return parse_feature_spec(spec)
    return {str(n): int(d) for n, d in spec}


def bench_data(source: str | Path | RecDataset, features: dict[str, int], seed: int = 0) -> RecDataset:
    """The dataset with block-generated features replacing (or adding) the given modalities."""
    if isinstance(source, RecDataset):
        data = source
    else:
        from tru_dist.data.source import open_data

        data = open_data(str(source))
    if not features:
        return data
    from tru_dist.bench import check_feature_bytes

    # generated block by block, but the shards and the model's projections read them all
    check_feature_bytes(data.n_items, features, ",".join(f"{m}:{d}" for m, d in features.items()))
    return data.with_features({m: BlockFeatures(data.n_items, d, seed + k)
                               for k, (m, d) in enumerate(sorted(features.items()))})


def _bench_rank(rank: int, world_size: int, cfg_dict: dict, data: RecDataset, steps: int) -> dict[str, Any]:
    from tru_dist.distributed.shard import build_shard_model, load_shard
    from tru_dist.train.determinism import deterministic_kernels
    from tru_dist.train.sampler import BPRSampler

    cfg = Config.from_dict(cfg_dict)
    t0 = time.perf_counter()
    shard = load_shard(cfg, data)
    load_seconds = time.perf_counter() - t0
    model = build_shard_model(cfg, shard)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    replicated = model.replicated_parameters()
    sampler = BPRSampler(*shard.data.train_pairs, shard.data.n_users, shard.data.n_items,
                         seed=cfg.train.seed, book=shard.book, rank=rank)

    def endless():
        while True:
            yield from sampler.epoch(cfg.train.batch_size)

    batches = endless()

    def step() -> None:  # a training step, with training's deterministic kernels (train.deterministic)
        batch = next(batches)
        with deterministic_kernels(cfg.train.deterministic, shard.graph.ui.norm.device):
            optimizer.zero_grad(set_to_none=True)
            emb = model.embed(shard.graph)
            model.loss(batch, shard.graph, emb).backward()
            collectives.sum_grads(replicated)
            optimizer.step()

    step()  # warm-up
    times = []
    with CommMeter() as meter:
        for _ in range(steps):
            if collectives.is_distributed():
                torch.distributed.barrier()
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()  # CUDA: count the step's kernels, not their launches
            times.append(time.perf_counter() - start)
    lo, hi = shard.book.user_range(rank)
    return {
        "rank": rank,
        "step_seconds": times,
        "load_seconds": load_seconds,
        "bytes_per_step": meter.total_bytes / steps,
        "by_op": {op: {"calls": v["calls"] / steps, "bytes": v["bytes"] / steps}
                  for op, v in meter.by_op().items()},
        "small_bytes_per_step": meter.small_bytes / steps,
        "users": hi - lo,
        "edges": shard.graph.ui.n_edges,
        "feature_rows": shard.book.item_range(rank)[1] - shard.book.item_range(rank)[0],
        "threads": torch.get_num_threads(),
    }


def bench_dist(
    data: str | Path | RecDataset = "synthetic:small",
    model: str = "mgcn",
    synthetic_features: str | dict | list | None = "image:4096,text:384",
    steps: int = 5,
    out_json: str | Path | None = None,
    overrides: list[str] | None = None,
    threads_per_rank: int = 1,
) -> dict[str, Any]:
    """Step time and bytes per step for W = 1 and W = 2 side by side, with the planner's figures."""
    from tru_dist.bench import refuse_flag_overrides

    refuse_flag_overrides("dist", overrides, {"model.name": "--model", "data.path": "--data"})
    features = _feature_spec(synthetic_features)
    dataset = bench_data(data, features)
    named = None if isinstance(data, RecDataset) or is_synthetic(str(data)) else str(data)
    cfg = build_config(model=model, dataset=named, overrides=list(overrides or []))
    cfg.dist.address = "none"
    train_users, _ = dataset.train_pairs
    feature_dims = {m: int(f.shape[1]) for m, f in dataset.features.items()}
    out: dict[str, Any] = {
        "data": str(data) if not isinstance(data, RecDataset) else "in-memory",
        "model": cfg.model.name, "dim": cfg.model.dim, "n_layers": cfg.model.n_layers,
        "batch_size": cfg.train.batch_size, "steps": steps,
        "n_users": dataset.n_users, "n_items": dataset.n_items, "n_train_edges": int(len(train_users)),
        "features": feature_dims, "backend": "gloo",
    }
    for w in (1, 2):
        cfg.dist.workers = w
        ranks = spawn_local(_bench_rank, w, (cfg.to_dict(), dataset, steps),
                            threads_per_rank=threads_per_rank)
        per_step = [max(r["step_seconds"][k] for r in ranks) for k in range(steps)]
        biggest = max(ranks, key=lambda r: r["edges"])
        p = plan(dataset.n_users, dataset.n_items, int(len(train_users)), feature_dims, cfg.model.dim,
                 cfg.model.n_layers, cfg.model, w, cfg.dist.memory_per_worker_gb,
                 n_interactions=dataset.n_interactions, batch_size=cfg.train.batch_size,
                 shard_users=biggest["users"], shard_edges=biggest["edges"],
                 shard_items=max(r["feature_rows"] for r in ranks), check=False)
        measured = max(r["bytes_per_step"] for r in ranks)
        out[f"W{w}"] = {
            "step_seconds_median": statistics.median(per_step),
            "step_seconds": per_step,
            "load_seconds": max(r["load_seconds"] for r in ranks),
            "threads_per_rank": ranks[0]["threads"],
            "bytes_per_step_measured": measured,
            "bytes_per_step_by_op": ranks[0]["by_op"],
            "small_bytes_per_step": ranks[0]["small_bytes_per_step"],
            "bytes_per_step_planned": p.comm_bytes_per_step,
            "planned_breakdown": p.comm_bytes,
            "measured_over_planned": (measured / p.comm_bytes_per_step) if p.comm_bytes_per_step else None,
            "wire_bytes_per_step_ring_minimum": p.wire_bytes_per_step,
            "memory_per_worker_planned": p.memory_bytes,
            "shards": [{k: r[k] for k in ("users", "edges", "feature_rows")} for r in ranks],
        }
    out["speedup_w2"] = out["W1"]["step_seconds_median"] / out["W2"]["step_seconds_median"]
    if out_json:
        atomic_write_json(out_json, out)
    return out
