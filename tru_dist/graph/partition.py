"""Partition book: which worker owns which users and which slice of the item feature store.

Users are split into W contiguous ranges ``[user_starts[r], user_starts[r+1])`` and item
feature rows into W contiguous slices; with W = 1 worker 0 owns everything. Contiguous
ranges make the global↔local map an offset, so a worker can memory-map exactly its rows.

Every worker computes the book itself from the same inputs (:meth:`PartitionBook.for_data`
is deterministic), so no book is ever sent over the network; ``to_dict``/``from_dict``
serialise it for task descriptions and result files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tru_dist.errors import ConfigError


def _even_starts(n: int, parts: int) -> np.ndarray:
    return np.array([(n * r) // parts for r in range(parts + 1)], dtype=np.int64)


@dataclass(frozen=True)
class PartitionBook:
    n_users: int
    n_items: int
    world_size: int
    user_starts: tuple[int, ...]
    item_starts: tuple[int, ...]

    @classmethod
    def contiguous(cls, n_users: int, n_items: int, world_size: int = 1) -> PartitionBook:
        """Even contiguous ranges of users and of item feature rows."""
        if world_size < 1:
            raise ValueError("world_size must be >= 1")
        if world_size > n_users:  # a ConfigError: a rank's one-line error, not a spawn traceback
            raise ConfigError(f"cannot split {n_users} users over {world_size} workers; pass --workers "
                              f"{n_users} or fewer")
        return cls(
            n_users,
            n_items,
            world_size,
            tuple(int(x) for x in _even_starts(n_users, world_size)),
            tuple(int(x) for x in _even_starts(n_items, world_size)),
        )

    @classmethod
    def balanced(cls, n_users: int, n_items: int, world_size: int, user_degree: np.ndarray) -> PartitionBook:
        """Contiguous user ranges with (nearly) equal edge counts, for skewed degree data."""
        book = cls.contiguous(n_users, n_items, world_size)
        csum = np.concatenate([[0], np.cumsum(np.asarray(user_degree, dtype=np.float64))])
        targets = csum[-1] * np.arange(world_size + 1) / world_size
        starts = np.searchsorted(csum, targets, side="left").astype(np.int64)
        starts[0], starts[-1] = 0, n_users
        starts = np.maximum.accumulate(starts)
        for r in range(1, world_size):  # every worker keeps at least one user
            starts[r] = min(max(starts[r], starts[r - 1] + 1), n_users - (world_size - r))
        return cls(n_users, n_items, world_size, tuple(int(x) for x in starts), book.item_starts)

    @classmethod
    def for_data(cls, data, world_size: int, strategy: str = "balanced") -> PartitionBook:
        """The book of a :class:`~tru_dist.data.dataset.RecDataset`: ``balanced`` = user ranges
        with (nearly) equal *train* edge counts (the work per step), ``contiguous`` = equal
        user counts. Feature rows are always split evenly."""
        if strategy == "contiguous":
            return cls.contiguous(data.n_users, data.n_items, world_size)
        if strategy != "balanced":
            raise ValueError(f"unknown partition strategy {strategy!r} (use balanced or contiguous)")
        users, _ = data.train_pairs
        degree = np.bincount(users, minlength=data.n_users)
        return cls.balanced(data.n_users, data.n_items, world_size, degree)

    def to_dict(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items, "world_size": self.world_size,
                "user_starts": list(self.user_starts), "item_starts": list(self.item_starts)}

    @classmethod
    def from_dict(cls, d: dict) -> PartitionBook:
        return cls(int(d["n_users"]), int(d["n_items"]), int(d["world_size"]),
                   tuple(int(x) for x in d["user_starts"]), tuple(int(x) for x in d["item_starts"]))

    def edges_per_rank(self, users: np.ndarray) -> list[int]:
        """Number of the given edges (global user ids) each rank owns."""
        owners = self.owner_of_users(np.asarray(users, dtype=np.int64))
        return [int(x) for x in np.bincount(owners, minlength=self.world_size)]

    def user_range(self, rank: int) -> tuple[int, int]:
        return self.user_starts[rank], self.user_starts[rank + 1]

    def item_range(self, rank: int) -> tuple[int, int]:
        return self.item_starts[rank], self.item_starts[rank + 1]

    def n_local_users(self, rank: int) -> int:
        lo, hi = self.user_range(rank)
        return hi - lo

    def owner_of_users(self, users: np.ndarray) -> np.ndarray:
        """Rank owning each global user id."""
        return np.searchsorted(np.asarray(self.user_starts[1:]), users, side="right")

    def to_local_users(self, users: np.ndarray, rank: int) -> np.ndarray:
        return np.asarray(users) - self.user_starts[rank]
