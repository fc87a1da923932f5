"""Seeded BPR triple sampler over the GLOBAL train pairs, shard-aware.

Every rank constructs the sampler identically (same pairs, same seed) and therefore draws
the same global sequence: one permutation of all train pairs per epoch, cut into global
batches, each pair given one uniform negative item ``j`` with ``(u, j)`` not a train pair.
Rank ``r`` then keeps only the triples of its own users (global → local ids through the
:class:`~tru_dist.graph.partition.PartitionBook`) and tags the batch with
``scale = 1 / |global batch|``. The sum over ranks of the per-rank losses is thus exactly
the single-process mean loss, whatever the number of ranks (DESIGN §7). Every rank yields
one batch per global batch — possibly empty — so that the collectives inside the forward
stay in lock-step.

Negatives are drawn vectorized: draw ``j ~ U[0, n_items)`` for the whole batch, look the
keys ``u·n_items + j`` up in the sorted train keys with ``np.searchsorted``, and redraw only
the collisions until none are left.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tru_dist.errors import DataError
from tru_dist.graph.partition import PartitionBook
from tru_dist.models.base import BPRBatch


class BPRSampler:
    """Global-batch BPR sampler (identical on every rank; yields this rank's share).

    Args:
        users, items: global ids of the train pairs (unique pairs).
        n_users, n_items: id ranges.
        seed: seeds the sampler's own ``numpy`` generator (independent of global RNGs); a list
            (e.g. ``[seed, rank]``) seeds it with ``numpy``'s ``SeedSequence`` entropy.
        book, rank: the partition book and this rank; ``None`` = one rank owning all users.
        never_negative: more (users, items) pairs that are never drawn as negatives (nor as
            positives) — e.g. a user's deleted interactions, when only the retained ones are
            sampled but no item of the user's history may serve as a negative.
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
        seed: int | list[int],
        book: PartitionBook | None = None,
        rank: int = 0,
        never_negative: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.users = np.asarray(users, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        if len(self.users) != len(self.items):
            raise ValueError("users and items must have the same length")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.keys = np.unique(self.users * self.n_items + self.items)  # sorted positives
        if never_negative is not None:  # … and the pairs that may not be negatives either
            extra_u, extra_i = (np.asarray(a, dtype=np.int64) for a in never_negative)
            self.keys = np.union1d(self.keys, extra_u * self.n_items + extra_i)
        degree = np.bincount(self.users, minlength=self.n_users)
        if len(degree) and degree.max(initial=0) >= self.n_items:
            u = int(degree.argmax())
            raise DataError(
                f"user {u} interacted with all {self.n_items} items in train, so no BPR negative exists; "
                "drop that user from the data"
            )
        book = book or PartitionBook.contiguous(self.n_users, self.n_items, 1)
        self.user_lo, self.user_hi = book.user_range(rank)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.users)

    def n_batches(self, batch_size: int) -> int:
        """Global batches per epoch: ⌈n_pairs / batch_size⌉."""
        return -(-len(self.users) // batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is a train pair (binary search in the sorted keys)."""
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One uniform non-positive item per user: draw all, then redraw only the collisions."""
        rng = rng if rng is not None else self.rng
        users = np.asarray(users, dtype=np.int64)
        neg = rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        todo = np.flatnonzero(self.is_positive(users, neg))
        while len(todo):
            neg[todo] = rng.integers(0, self.n_items, size=len(todo), dtype=np.int64)
            todo = todo[self.is_positive(users[todo], neg[todo])]
        return neg

    def epoch(self, batch_size: int) -> Iterator[BPRBatch]:
        """One pass over every train pair in a seeded order; this rank's share of each global batch.

        The RNG advances by the same draws on every rank (negatives are drawn for the whole
        global batch), so ranks stay in sync and ``state_dict()`` after the epoch is rank-free.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = self.rng.permutation(len(self.users))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            u, i = self.users[idx], self.items[idx]
            j = self.sample_negatives(u)
            mine = (u >= self.user_lo) & (u < self.user_hi)
            yield BPRBatch(
                users=torch.from_numpy(u[mine] - self.user_lo),
                pos=torch.from_numpy(i[mine]),
                neg=torch.from_numpy(j[mine]),
                scale=1.0 / len(idx),
            )

    def state_dict(self) -> dict:
        """The generator state (plain Python containers; loads with ``weights_only=True``)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
