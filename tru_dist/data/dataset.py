"""The in-memory dataset every other module consumes.

A :class:`RecDataset` is the validated, immutable view of one interaction table plus its
item feature store: parallel ``users`` / ``items`` / ``labels`` arrays (``labels``: 0 =
train, 1 = valid, 2 = test, the MMRec ``x_label``) and one ``(n_items, dim)`` float32
matrix per modality (row *i* belongs to item *i*). Readers (MMRec layout, Parquet store,
synthetic generator) produce it; nothing mutates it — a deletion yields a new dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_LABELS = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass(frozen=True)
class RecDataset:
    """Interactions (one row per unique (user, item) pair) and item features.

    Attributes:
        n_users, n_items: id ranges are dense ``[0, n_users)`` / ``[0, n_items)``.
        users, items: int64 arrays of equal length.
        labels: int8 split label per interaction (0 train, 1 valid, 2 test).
        features: modality name -> float32 array of shape ``(n_items, dim)`` (a float16
            memmap for a store written by the streaming scale generator; consumers cast).
        meta: free-form provenance (name, split seed, content hash, ...).
    """

    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.users) == len(self.items) == len(self.labels)):
            raise ValueError("users, items and labels must have the same length")

    @property
    def n_interactions(self) -> int:
        return int(len(self.users))

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split: ``"train"``, ``"valid"`` or ``"test"``."""
        mask = self.labels == SPLIT_LABELS[name]
        return self.users[mask], self.items[mask]

    @property
    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("train")

    def pair_keys(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Encode pairs as one int64 key ``u * n_items + i`` (for set operations)."""
        return np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)

    def pair_mask(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows whose (user, item) is one of the listed pairs.

        One gather over the rows (the listed users marked in an ``n_users`` table), then exact
        key matching among those users' rows only — a deletion of a few pairs costs one pass,
        not a sort of every interaction key. Ids outside the dataset match nothing.
        """
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        mask = np.zeros(len(self.users), dtype=bool)
        ok = (users >= 0) & (users < self.n_users) & (items >= 0) & (items < self.n_items)
        if not ok.any():
            return mask
        marked = np.zeros(self.n_users, dtype=bool)
        marked[users[ok]] = True
        rows = np.flatnonzero(marked[self.users])
        mask[rows] = np.isin(self.pair_keys(self.users[rows], self.items[rows]),
                             self.pair_keys(users[ok], items[ok]))
        return mask

    def without_pairs(self, users: np.ndarray, items: np.ndarray) -> RecDataset:
        """The retained dataset D_r = D \\ D_f: every row whose (user, item) is listed is dropped.

        Rows of every split are dropped (a forgotten pair must not survive as a valid or
        test target either). Ids keep their meaning (``n_users``/``n_items`` unchanged) so
        that models and checkpoints stay aligned.
        """
        return self.without_rows(self.pair_mask(users, items))

    def without_rows(self, drop: np.ndarray) -> RecDataset:
        """The dataset without the rows where the boolean mask ``drop`` is set."""
        keep = ~drop
        meta = dict(self.meta)
        meta["deleted_interactions"] = int(meta.get("deleted_interactions", 0)) + int(drop.sum())
        return replace(
            self, users=self.users[keep], items=self.items[keep], labels=self.labels[keep], meta=meta
        )

    def with_features(self, features: dict[str, np.ndarray]) -> RecDataset:
        return replace(self, features=dict(features))

    def summary(self) -> dict:
        """Counts per split, density and feature dims (what ``tru-dist data stats`` prints)."""
        counts = {name: int((self.labels == lab).sum()) for name, lab in SPLIT_LABELS.items()}
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            **{f"n_{k}": v for k, v in counts.items()},
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "features": {m: list(f.shape) for m, f in sorted(self.features.items())},
        }
