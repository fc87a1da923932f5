"""Backdoor/poison injection (DESIGN §6): fake users who push target items.

:func:`inject_poison` appends ``ceil(f · n_users)`` fake users with ids ``n_users ..``.
Each interacts, in TRAIN, with every target item plus ``n_fillers`` fillers drawn (per
user, without replacement) from the filler pool — the ``2·n_fillers`` most popular
non-target items, a "popular-filler" attack that makes fake users look like real ones.
Targets are drawn at random among the least popular quarter of items with ≥ 1 train
interaction (low popularity leaves the attack room to raise them; non-zero popularity
means they are real, recommendable items). Item features are unchanged.

``meta["poison"] = {"fake_users", "targets", "fillers" (the pool), "n_fillers", "seed",
"fake_user_fraction"}`` is what the poison regime deletes and what the backdoor audit
measures.
"""

from __future__ import annotations

import math

import numpy as np

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.errors import ConfigError, DataError


def _ranked_by_popularity(degree: np.ndarray, items: np.ndarray, rng: np.random.Generator,
                          descending: bool) -> np.ndarray:
    """``items`` sorted by train degree (ties broken by the seeded RNG)."""
    key = -degree[items] if descending else degree[items]
    return items[np.lexsort((rng.permutation(len(items)), key))]


def inject_poison(
    data: RecDataset,
    fake_user_fraction: float = 0.01,
    n_targets: int = 3,
    n_fillers: int = 10,
    seed: int = 0,
) -> RecDataset:
    """A new dataset with fake users appended (see module docstring); ``data`` is untouched."""
    if "poison" in data.meta:
        raise DataError("dataset is already poisoned (meta['poison'] present); inject into the clean dataset")
    if not 0.0 < fake_user_fraction <= 1.0:
        raise ConfigError(f"fake_user_fraction must be in (0, 1], got {fake_user_fraction}")
    if n_targets < 1 or n_fillers < 0:
        raise ConfigError(f"need n_targets >= 1 and n_fillers >= 0 (got {n_targets}, {n_fillers})")
    rng = np.random.default_rng(seed)
    degree = np.bincount(data.items[data.labels == TRAIN], minlength=data.n_items)
    live = np.flatnonzero(degree > 0)
    if len(live) < n_targets + n_fillers:
        raise ConfigError(
            f"only {len(live)} items have train interactions, fewer than the {n_targets} targets + "
            f"{n_fillers} fillers asked for (--targets, --fillers); ask for {len(live)} or fewer in all"
        )

    ascending = _ranked_by_popularity(degree, live, rng, descending=False)
    cold_quarter = ascending[: max(n_targets, math.ceil(0.25 * len(live)))]
    targets = np.sort(rng.choice(cold_quarter, size=n_targets, replace=False))
    others = np.setdiff1d(live, targets)
    pool = _ranked_by_popularity(degree, others, rng, descending=True)[: min(len(others), 2 * n_fillers)]

    n_fake = math.ceil(fake_user_fraction * data.n_users)
    fake_users = np.arange(data.n_users, data.n_users + n_fake, dtype=np.int64)
    per_user = n_targets + n_fillers
    new_items = np.empty(n_fake * per_user, dtype=np.int64)
    for k in range(n_fake):
        fillers = rng.choice(pool, size=n_fillers, replace=False)
        new_items[k * per_user : (k + 1) * per_user] = rng.permutation(np.concatenate([targets, fillers]))
    new_users = np.repeat(fake_users, per_user)

    meta = dict(data.meta)
    meta["poison"] = {
        "fake_users": fake_users.tolist(),
        "targets": targets.tolist(),
        "fillers": np.sort(pool).tolist(),
        "n_fillers": int(n_fillers),
        "fake_user_fraction": float(fake_user_fraction),
        "seed": int(seed),
    }
    return RecDataset(
        n_users=data.n_users + n_fake,
        n_items=data.n_items,
        users=np.concatenate([np.asarray(data.users, np.int64), new_users]),
        items=np.concatenate([np.asarray(data.items, np.int64), new_items]),
        labels=np.concatenate([np.asarray(data.labels, np.int8), np.full(len(new_users), TRAIN, np.int8)]),
        features=dict(data.features),
        meta=meta,
    )


def genuine_users_without_targets(data: RecDataset) -> dict[int, np.ndarray]:
    """For each poison target: the genuine (non-fake) users who never interacted with it
    in any split — the population over which attack success (hit@K of the target) is
    measured."""
    poison = data.meta.get("poison")
    if not poison:
        raise DataError("dataset has no injected poison (meta['poison'] missing); call inject_poison first")
    genuine = np.ones(data.n_users, dtype=bool)
    genuine[np.asarray(poison["fake_users"], dtype=np.int64)] = False
    out = {}
    for t in poison["targets"]:
        mask = genuine.copy()
        mask[data.users[data.items == t]] = False
        out[int(t)] = np.flatnonzero(mask).astype(np.int64)
    return out
