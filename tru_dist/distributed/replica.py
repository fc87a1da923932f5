"""Data-parallel sampled training: W ranks, each a full replica of the model over one shared graph.

Why this and not the sharded path (:mod:`tru_dist.distributed.shard`): neighbourhood propagation
(``train.propagation: local``) makes a step cost follow the batch, not the graph, but a sharded
model propagates the whole graph, which at 1M users / 20M interactions needs ~12 GiB per worker
at W = 2 (MGCN, by the planner) — more than a 24 GiB machine holds twice. A replica needs no
full propagation, so W ranks on one machine fit:

* **One graph, mapped by every rank.** The driver builds the normalised graph once and saves it
  (:func:`share_graph`, ``torch.save``); every rank opens it with ``torch.load(mmap=True)``: the
  arrays are pages of the one file in the page cache, shared by all ranks (copy-on-write; the
  ranks only read them).
* **No replicated interaction table.** Rank ``r`` receives only the train pairs of its users
  (the contiguous user range ``r`` of :class:`~tru_dist.graph.partition.PartitionBook`), and
  draws its share of every global batch from them: with ``N`` train pairs, ``N_r`` of them
  rank ``r``'s, global batch ``B`` and ``n_b = ⌈N / B⌉``, rank ``r`` draws batches of
  ``⌈N_r / n_b⌉`` of its pairs (its own epochs, one after another, each ending in a partial
  batch), each loss term scaled by ``1 / B`` — a global batch is the union of the ranks'
  batches, about ``B`` pairs (up to ``W − 1`` more) drawn stratified by user range. The ranks
  draw independently, so their epoch ends need not coincide; every rank takes one batch per step.
* **The step.** Every rank runs the batch-neighbourhood forward on its own triples
  (:func:`~tru_dist.models.base.embed_for`, ``local=True``) and backward; then
  :func:`sum_gradients` makes every rank's gradient the sum over ranks — for a row table
  (user / item embeddings) only the rows some rank touched travel: each rank's rows with a
  nonzero gradient are all-gathered, their union ``U`` formed, and ``grad[U]`` all-reduced
  (``|U| × d`` floats instead of the table's ``n × d``); every other parameter in one flat
  all-reduce. With the same summed gradient and the same initial parameters (seeded
  construction), Adam keeps the replicas identical, and the step equals one process's step on
  the union batch wherever the neighbourhood is exact (no fan-out limit; tested for LightGCN and
  MGCN). MGCN's contrastive term couples a batch's rows (the other rows are its negatives): it
  gathers the other ranks' rows (``batch=True`` collectives, which span replicas too), so W
  replicas compute one process's loss, not W smaller ones.

Inside a rank the model's shard collectives are identities (:func:`tru_dist.comm.full_replica`):
the process group carries the gradient sums and the batch-level gathers. The unlearning a
service answers with stays single-process (the in-place deletion edits one graph); the replicas
are for training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.errors import ConfigError
from tru_dist.graph.context import RecGraph
from tru_dist.graph.partition import PartitionBook
from tru_dist.models.base import Backbone, BPRBatch, embed_for
from tru_dist.models.registry import build_model
from tru_dist.timing import peak_rss_mb
from tru_dist.train.determinism import deterministic_kernels
from tru_dist.train.optim import RowSparseAdam, build_optimizer, touched_rows
from tru_dist.train.sampler import BPRSampler

GRAPH_FILE = "replica-graph.pt"
STATE_FILE = "replica-model.pt"


def share_graph(graph: RecGraph, work_dir: str | Path) -> Path:
    """Save ``graph`` for the ranks to map (:func:`open_shared_graph`); returns the file."""
    path = Path(work_dir) / GRAPH_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(graph, tmp)
    tmp.replace(path)  # a rank never opens a half-written file
    return path


def open_shared_graph(path: str | Path) -> RecGraph:
    """The saved graph with its arrays memory-mapped (pages shared with every other rank)."""
    return torch.load(path, mmap=True, weights_only=False)


def split_pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, world_size: int,
                work_dir: str | Path) -> list[Path]:
    """Write rank ``r``'s train pairs (users in its contiguous range) to ``pairs.r.npy``
    (a ``(2, N_r)`` int64 array); return the files in rank order. A rank without pairs is a
    :class:`ConfigError` (it would have nothing to sample), raised before any file is written."""
    book = PartitionBook.contiguous(n_users, n_items, world_size)
    masks = [(users >= lo) & (users < hi) for lo, hi in map(book.user_range, range(world_size))]
    empty = next((r for r, mine in enumerate(masks) if not mine.any()), None)
    if empty is not None:
        raise ConfigError(f"--workers {world_size}: the user range of rank {empty} has no train pairs, so "
                          "that replica would have nothing to sample; use fewer workers")
    files = []
    for r, mine in enumerate(masks):
        path = Path(work_dir) / f"replica-pairs.{r}.npy"
        np.save(path, np.stack([users[mine], items[mine]]).astype(np.int64))
        files.append(path)
    return files


def rank_batches(sampler: BPRSampler, n_total: int, batch_size: int) -> Iterator[BPRBatch]:
    """This rank's share of every global batch, epoch after epoch (module docstring): ``⌈N_r /
    n_b⌉`` of its own pairs per batch, each term scaled by ``1 / batch_size``."""
    if len(sampler) == 0:
        raise ConfigError("a replica rank holds no train pairs (its user range has none); use fewer workers")
    n_batches = max(1, math.ceil(n_total / batch_size))
    mine = max(1, math.ceil(len(sampler) / n_batches))
    while True:
        for batch in sampler.epoch(mine):
            yield dataclasses.replace(batch, scale=1.0 / batch_size)


@torch.no_grad()
def _table_rows_sum(grad: torch.Tensor) -> torch.Tensor:
    """Sum a row table's gradient over ranks, moving only the rows some rank touched; returns
    those rows (the union over ranks)."""
    mine = touched_rows(grad)
    counts = collectives.sizes_of(len(mine), batch=True)
    padded = torch.full((max(counts),), -1, dtype=torch.int64)
    padded[: len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    rows = torch.unique(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]))
    values = grad[rows]
    dist.all_reduce(values)
    grad[rows] = values
    return rows


@torch.no_grad()
def sum_gradients(model: Backbone) -> dict[int, torch.Tensor] | None:
    """Make every parameter's gradient its sum over ranks (module docstring): row tables
    row-sparse, the rest in one flat all-reduce (:func:`tru_dist.comm.sum_grads`). A parameter
    this rank's batch did not reach gets a zero gradient first, so every rank steps the same
    parameters. Returns, per row table (``id``), the rows some rank touched (``None`` at W = 1)."""
    tables = [p for p, _ in model.row_tables().values()]
    table_ids = {id(p) for p in tables}
    for p in tables:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    collectives.sum_grads([p for p in model.parameters() if id(p) not in table_ids], batch=True)
    if not collectives.is_distributed(batch=True):
        return None
    return {id(p): _table_rows_sum(p.grad) for p in tables}


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests = bit-identical replicas."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def replica_step(model: Backbone, graph: RecGraph, batch: BPRBatch, optimizer: torch.optim.Optimizer,
                 fanout: int, generator: torch.Generator | None, deterministic: bool) -> torch.Tensor:
    """One data-parallel step: local forward and backward on this rank's triples, gradient sum
    over ranks, optimizer step. Returns this rank's (detached) share of the loss.
    ``deterministic``: fixed-order CPU kernels (:mod:`tru_dist.train.determinism`)."""
    with deterministic_kernels(deterministic, graph.ui.norm.device):
        optimizer.zero_grad(set_to_none=True)
        emb = embed_for(model, graph, [batch], local=True, fanout=fanout, generator=generator)
        loss = model.loss(batch, graph, emb)
        loss.backward()
        rows = sum_gradients(model)
        if isinstance(optimizer, RowSparseAdam):  # the union rows are the touched rows: no second scan
            optimizer.step(rows=rows)
        else:
            optimizer.step()
    return loss.detach()


def replica_rank(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, Any]:
    """What every rank runs (:func:`train_replicas`): map the graph, build the seeded model, take
    ``spec["steps"]`` timed steps after one warm-up; rank 0 saves the trained parameters."""
    from tru_dist.distributed.comm_meter import CommMeter

    cfg = Config.from_dict(spec["config"])
    with collectives.full_replica():
        t0 = time.perf_counter()
        graph = open_shared_graph(spec["graph"])
        pairs = np.load(spec["pairs"][rank])
        open_seconds = time.perf_counter() - t0
        model = build_model(cfg.model, graph, seed=cfg.train.seed)
        model.train()
        sampler = BPRSampler(pairs[0], pairs[1], graph.n_users, graph.n_items, seed=[cfg.train.seed, rank])
        batches = rank_batches(sampler, int(spec["n_train"]), cfg.train.batch_size)
        optimizer = build_optimizer(model, cfg.train)
        generator = torch.Generator().manual_seed(cfg.train.seed * 7919 + rank)
        fanout = int(spec["fanout"])
        deterministic = cfg.train.deterministic
        replica_step(model, graph, next(batches), optimizer, fanout, generator, deterministic)  # warm-up
        steps = int(spec["steps"])
        dist.barrier()
        with CommMeter() as meter:
            t0 = time.perf_counter()
            losses = [float(replica_step(model, graph, next(batches), optimizer, fanout, generator,
                                         deterministic)) for _ in range(steps)]
            dist.barrier()
            seconds = time.perf_counter() - t0
        digest = parameter_digest(model)
        if rank == 0 and spec.get("state_out"):
            torch.save(model.state_dict(), spec["state_out"])
        return {"rank": rank, "seconds": seconds, "open_seconds": open_seconds, "pairs": int(pairs.shape[1]),
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "bytes_per_step": meter.total_bytes / max(1, steps),
                "small_bytes_per_step": meter.small_bytes / max(1, steps),
                "peak_rss_gb": peak_rss_mb() / 1024, "threads": torch.get_num_threads(),
                "parameter_digest": digest}


def train_replicas(graph: RecGraph, users: np.ndarray, items: np.ndarray, cfg: Config, *,
                   world_size: int, steps: int, fanout: int, work_dir: str | Path,
                   threads_per_rank: int = 1, keep_files: bool = False) -> dict[str, Any]:
    """Train ``world_size`` local replicas (gloo, loopback) for ``steps`` timed steps on the train
    pairs ``(users, items)``; return the per-step time (slowest rank), bytes per step, each rank's
    peak RSS, and the trained parameters' file (rank 0's; every replica holds the same). The
    shared graph and pair files are removed afterwards unless ``keep_files``."""
    from tru_dist.distributed.process_group import spawn_local

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pair_files = split_pairs(users, items, graph.n_users, graph.n_items, world_size, work)
    spec = {"config": cfg.to_dict(), "graph": str(share_graph(graph, work)),
            "pairs": [str(p) for p in pair_files],
            "n_train": int(len(users)), "steps": int(steps), "fanout": int(fanout),
            "state_out": str(work / STATE_FILE)}
    share_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        ranks = spawn_local(replica_rank, world_size, (spec,), threads_per_rank=threads_per_rank)
    finally:
        if not keep_files:
            for path in [spec["graph"], *spec["pairs"]]:
                Path(path).unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    per_step = max(r["seconds"] for r in ranks) / max(1, steps)
    return {"world_size": world_size, "seconds_per_step": per_step, "share_seconds": share_seconds,
            "group_wall_seconds": wall, "bytes_per_step": max(r["bytes_per_step"] for r in ranks),
            "ranks": ranks, "state_file": spec["state_out"]}
