"""Collectives used by the models, trainer and unlearning code.

This module, ``tru_dist.distributed.launch`` and ``tru_dist.distributed.replica`` (whose replicas
sum their gradients themselves) are the only rank-aware code. At world size 1
(no process group initialised) every function is the identity, so the single-process
path *is* the distributed path with W = 1. With a process group (gloo on CPU, NCCL on
GPU), ``all_reduce_sum`` / ``all_gather_rows`` are differentiable
(``torch.distributed.nn``): the global loss is the sum of shard losses, so the backward
of an all-reduce is again an all-reduce and W workers compute the gradient one process
would.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

# torch 2.13 marks torch.distributed.nn.functional's autograd collectives deprecated in favour
# of the functional collectives; they still work on gloo and NCCL, and their backward (an
# all-reduce / all-to-all) is exactly what the sharded forward needs, so keep the log clean.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_(gather|reduce) is deprecated"
)


#: set inside :func:`full_replica`: this process holds the whole model and graph
_FULL_REPLICA: ContextVar[bool] = ContextVar("tru_dist_full_replica", default=False)


@contextmanager
def full_replica() -> Iterator[None]:
    """Within: this process is a data-parallel replica (:mod:`tru_dist.distributed.replica`) —
    it holds the whole model and graph, so the functions below act as at W = 1 (identities)
    although a process group exists; the replica code synchronises gradients itself."""
    token = _FULL_REPLICA.set(True)
    try:
        yield
    finally:
        _FULL_REPLICA.reset(token)


def is_distributed(batch: bool = False) -> bool:
    """Whether this process holds one shard of a W > 1 group (False inside :func:`full_replica`).

    ``batch=True`` asks instead whether the *batch* is split over W > 1 ranks — true for shards
    and replicas alike: a loss whose terms couple the rows of a batch (MGCN's contrastive
    negatives) gathers over the ranks either way, so W replicas compute one process's loss."""
    if _FULL_REPLICA.get() and not batch:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size(batch: bool = False) -> int:
    """Ranks in the group (1 at W = 1); ``batch``: as in :func:`is_distributed`."""
    return dist.get_world_size() if is_distributed(batch) else 1


def rank(batch: bool = False) -> int:
    """This process's rank (0 at W = 1); ``batch``: as in :func:`is_distributed`."""
    return dist.get_rank() if is_distributed(batch) else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity at W = 1)."""
    if not is_distributed():
        return tensor
    import torch.distributed.nn.functional as dnn

    return dnn.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_gather_rows(tensor: torch.Tensor, batch: bool = False) -> torch.Tensor:
    """Differentiable concatenation of every rank's rows, in rank order (identity at W = 1;
    ``batch``: as in :func:`is_distributed`).

    Ranks may hold different row counts (uneven contiguous slices); shorter slices are
    padded for the collective and trimmed afterwards.
    """
    if not is_distributed(batch):
        return tensor
    import torch.distributed.nn.functional as dnn

    counts = sizes_of(tensor.shape[0], tensor.device, batch=batch)
    width = max(counts)
    if tensor.shape[0] < width:
        pad = tensor.new_zeros((width - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad], dim=0)
    parts = dnn.all_gather(tensor)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)


def sizes_of(n: int, device: torch.device | str = "cpu", batch: bool = False) -> list[int]:
    """Every rank's value of an integer (e.g. its row count); ``batch``: as in :func:`is_distributed`."""
    if not is_distributed(batch):
        return [n]
    local = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size(batch))]
    dist.all_gather(out, local)
    return [int(x.item()) for x in out]


@torch.no_grad()
def sum_stats(tensor: torch.Tensor) -> torch.Tensor:
    """Non-differentiable in-place sum of a statistic over ranks (returns the tensor)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sum_grads(params: list[torch.nn.Parameter], batch: bool = False) -> None:
    """Sum the gradients of replicated parameters over ranks (one flat all-reduce; ``batch``:
    as in :func:`is_distributed` — data-parallel replicas sum with it).

    A parameter without a gradient (not reached by this rank's batch) gets a zero one
    first, on every W including 1: every rank then all-reduces the same tensors, and Adam
    steps the same parameters whether the model runs on one process or on W.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not is_distributed(batch):
        return
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
