"""Forget-set batches and the retain-batch stream of the reverse-update loop.

Forget batches: the deleted TRAIN pairs D_f (global ids) are permuted with a seeded
``numpy`` generator, cut into global batches of (nearly) equal size, each pair (u, i) given
one uniform negative j that u never interacted with in the ORIGINAL train set (retained or
deleted — a deleted item must not serve as a negative of its own user). As in
:class:`tru_dist.train.sampler.BPRSampler`, every rank draws the same global sequence and
keeps the triples of its own users with ``scale = 1/|global batch|``, so the sum of shard
losses is the global mean whatever the number of ranks.

Retain batches: an endless stream of equally sized D_r batches from a ``BPRSampler`` over
the retained train pairs (negatives = items not retained-positive for u, as Retrain's
sampler would draw them), one per forget batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from tru_dist.graph.partition import PartitionBook
from tru_dist.models.base import BPRBatch
from tru_dist.train.sampler import BPRSampler


def equal_batch_size(n: int, batch_size: int) -> int:
    """Batch size b = ⌈n / ⌈n / batch_size⌉⌉: as many batches as ``batch_size`` needs, all ≈ equal."""
    if n <= 0:
        return max(1, batch_size)
    n_batches = math.ceil(n / batch_size)
    return math.ceil(n / n_batches)


def forget_batches(
    users: np.ndarray,
    items: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    negatives: BPRSampler,
    book: PartitionBook,
    rank: int,
) -> Iterator[BPRBatch]:
    """One seeded pass over the forget pairs; this rank's share of each global batch.

    ``negatives`` is a sampler over the ORIGINAL train pairs, used only for
    ``sample_negatives`` (with ``rng``, so the draws are identical on every rank).
    """
    lo, hi = book.user_range(rank)
    order = rng.permutation(len(users))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        u, i = users[idx], items[idx]
        j = negatives.sample_negatives(u, rng)
        mine = (u >= lo) & (u < hi)
        yield BPRBatch(
            users=torch.from_numpy(u[mine] - lo),
            pos=torch.from_numpy(i[mine]),
            neg=torch.from_numpy(j[mine]),
            scale=1.0 / len(idx),
        )


def retain_stream(sampler: BPRSampler, batch_size: int) -> Iterator[BPRBatch]:
    """Endless D_r batches of exactly ``batch_size`` global pairs: consecutive epochs of
    ``sampler``, each epoch's short last batch skipped (unless D_r is smaller than one batch)."""
    if len(sampler) == 0:
        raise ValueError("the retained data has no train pairs to draw retain batches from")
    full = min(batch_size, len(sampler))
    while True:
        for batch in sampler.epoch(batch_size):
            if round(1.0 / batch.scale) >= full:
                yield batch
