"""Forget-set selection regimes (DESIGN §5), seeded, sized as a fraction.

* ``interactions`` — round(f·|train|) TRAIN interactions at random, one request per pair.
* ``users`` — round(f·|U_train|) users with ≥ 1 train interaction, one request per user
  with ``item_id`` null (all their interactions, every split). ``policy``: ``random``,
  ``core`` (most train interactions first) or ``edge`` (fewest first), as in CURE4Rec;
  ties in activity are broken by the seeded RNG.
* ``items`` — round(f·|I_train|) target items among items with train interactions; one
  request per interaction (any split) with a target.
* ``poison`` — every fake user recorded in ``data.meta["poison"]["fake_users"]`` by
  :func:`tru_dist.data.poison.inject_poison` (``fraction`` is validated but not used:
  the backdoor audit compares against a Retrain without all of them).

At least one unit is always selected; ``fraction`` must lie in (0, 1].

**Tuning and reporting forget sets are disjoint.** Seeds ``>= TUNING_SEED_BASE`` (100) are
*tuning seeds* (what sweeps choose hyperparameters on), smaller seeds *reporting seeds*
(what ``compare`` reports). Every selectable unit — a train pair, a user, an item — belongs
to one of two fixed pools by a hash of its id (:func:`unit_pool`, independent of the seed):
tuning seeds draw only from pool 1, reporting seeds only from pool 0, so no deleted pair,
user or item a method was tuned on ever appears in a reported forget set (the size is
still ``fraction`` of the whole population). A selection larger than its pool (fraction
above about one half) falls back to the whole population and says so in the request's
``reason``. The poison regime deletes every injected fake user (their identity differs
per seed already).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.requests import ForgetSet, resolve_requests, write_requests
from tru_dist.errors import ConfigError, RequestError

REGIMES = ("interactions", "users", "items", "poison")
POLICIES = ("random", "core", "edge")
#: seeds from here on are tuning seeds; reporting seeds are 0 … TUNING_SEED_BASE − 1
TUNING_SEED_BASE = 100


def is_tuning_seed(seed: int) -> bool:
    return int(seed) >= TUNING_SEED_BASE


def unit_pool(ids: np.ndarray) -> np.ndarray:
    """0 (reporting) or 1 (tuning) for each unit id: the low bit of a splitmix64 hash, so the
    split is fixed, balanced and unrelated to id order or activity."""
    x = np.asarray(ids, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x & np.uint64(1)).astype(np.int8)


def _in_pool(candidates: np.ndarray, keys: np.ndarray, seed: int, k: int) -> tuple[np.ndarray, str]:
    """The candidates of this seed's pool (all of them when the pool holds fewer than k)."""
    mine = unit_pool(keys) == int(is_tuning_seed(seed))
    if mine.sum() < k:
        return candidates, " pool=all"
    return candidates[mine], f" pool={'tuning' if is_tuning_seed(seed) else 'reporting'}"


def n_selected(fraction: float, population: int) -> int:
    """max(1, round-half-up(fraction · population)), checking fraction ∈ (0, 1]."""
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ConfigError(f"forget fraction must be in (0, 1], got {fraction!r}; e.g. --fraction=0.05")
    return max(1, min(population, math.floor(fraction * population + 0.5)))


def request_table(
    request_ids: list[str], users: np.ndarray, items: np.ndarray | None, reason: str
) -> pd.DataFrame:
    n = len(request_ids)
    if items is None:
        item_col = pd.array([pd.NA] * n, dtype="Int64")
    else:
        item_col = pd.array(np.asarray(items, np.int64), dtype="Int64")
    return pd.DataFrame({
        "request_id": pd.Series(request_ids, dtype=object),
        "user_id": np.asarray(users, dtype=np.int64),
        "item_id": item_col,
        "reason": [reason] * n,
    })


def user_request_table(users: np.ndarray, reason: str) -> pd.DataFrame:
    """One whole-user request per user, in order: id ``user-<id>`` and an empty ``item_id``, as
    the users regime writes them."""
    users = np.asarray(users, dtype=np.int64)
    return request_table([f"user-{u}" for u in users], users, None, reason)


def rank_users(data: RecDataset, policy: str, rng: np.random.Generator) -> np.ndarray:
    """Users with ≥ 1 train interaction, ordered by the policy (random / core / edge).

    ``core`` sorts by train degree descending, ``edge`` ascending; a random permutation
    is the secondary key, so ties are broken by the seeded RNG.
    """
    degree = np.bincount(data.users[data.labels == TRAIN], minlength=data.n_users)
    candidates = np.flatnonzero(degree > 0)
    tiebreak = rng.permutation(len(candidates))
    if policy == "random":
        return candidates[tiebreak]
    key = -degree[candidates] if policy == "core" else degree[candidates]
    return candidates[np.lexsort((tiebreak, key))]


def select_forget(
    data: RecDataset, regime: str, fraction: float, seed: int, policy: str = "random"
) -> pd.DataFrame:
    """The deletion requests of one regime (a request table, see :mod:`tru_dist.data.requests`)."""
    if regime not in REGIMES:
        raise ConfigError(f"unknown forget regime '{regime}'; use one of {', '.join(REGIMES)}")
    if policy not in POLICIES:
        raise ConfigError(f"unknown user policy '{policy}'; use one of {', '.join(POLICIES)}")
    if policy != "random" and regime != "users":
        raise ConfigError(
            f"policy '{policy}' applies to the users regime only; drop it or use --regime=users"
        )
    rng = np.random.default_rng(seed)
    reason = f"regime={regime} policy={policy} fraction={fraction} seed={seed}"
    train = np.flatnonzero(data.labels == TRAIN)

    if regime == "interactions":
        k = n_selected(fraction, len(train))
        pool, note = _in_pool(train, data.pair_keys(data.users[train], data.items[train]), seed, k)
        rows = np.sort(rng.choice(pool, size=k, replace=False))
        u, i = data.users[rows], data.items[rows]
        return request_table([f"pair-{a}-{b}" for a, b in zip(u, i, strict=True)], u, i, reason + note)

    if regime == "users":
        ranked = rank_users(data, policy, rng)
        k = n_selected(fraction, len(ranked))
        pool, note = _in_pool(ranked, ranked, seed, k)  # keeps the policy's order
        chosen = pool[:k]
        return request_table([f"user-{u}" for u in chosen], chosen, None, reason + note)

    if regime == "items":
        candidates = np.unique(data.items[train])
        k = n_selected(fraction, len(candidates))
        candidates, note = _in_pool(candidates, candidates, seed, k)
        reason += note
        targets = rng.choice(candidates, size=k, replace=False)
        rows = np.flatnonzero(np.isin(data.items, targets))
        u, i = data.users[rows], data.items[rows]
        return request_table([f"item-{b}-user-{a}" for a, b in zip(u, i, strict=True)], u, i, reason)

    poison = data.meta.get("poison") or {}
    fake = np.asarray(poison.get("fake_users", []), dtype=np.int64)
    if len(fake) == 0:
        raise ConfigError(
            "the poison regime needs a poisoned dataset, and this one records no fake users; inject them"
            " first (tru-dist data poison --data DATA --out POISONED; in Python"
            " tru_dist.data.poison.inject_poison) and select from POISONED"
        )
    n_selected(fraction, len(fake))  # validate the fraction even though all fake users go
    return request_table([f"poison-user-{u}" for u in fake], fake, None, reason)


def regime_label(regime: str, policy: str = "random") -> str:
    """``users:core`` for the users regime, else the regime name."""
    return f"{regime}:{policy}" if regime == "users" else regime


def forget_set(
    data: RecDataset, regime: str, fraction: float, seed: int, policy: str = "random"
) -> ForgetSet:
    """:func:`select_forget` resolved into a :class:`ForgetSet`."""
    df = select_forget(data, regime, fraction, seed, policy)
    return resolve_requests(data, df, regime=regime_label(regime, policy))


def forget_cli(
    data_path: str | Path, regime: str, policy: str, fraction: float, seed: int, out: str | Path
) -> dict:
    """Select a forget set for the dataset at ``data_path`` and write its request file
    (``.parquet`` or ``.csv``) to ``out``; returns the forget set's summary plus ``out``."""
    from tru_dist.data.source import open_data
    from tru_dist.data.store import enclosing_store

    store = enclosing_store(Path(out).parent)
    if store is not None:  # the file would sit among the store's versions, which purges rewrite
        raise RequestError(f"--out {out} lies inside the store {store}; a store holds only what tru-dist "
                           "writes there, so write the request file outside it (e.g. requests/forget.csv)")
    data = open_data(data_path)
    df = select_forget(data, regime, fraction, seed, policy)
    forget = resolve_requests(data, df, regime=regime_label(regime, policy))
    n_train = data.split_counts[TRAIN]
    if len(forget) >= n_train:  # every unlearn of it would be refused: nothing left to train on
        raise RequestError(f"this forget set deletes every train interaction ({len(forget)} of {n_train}), "
                           "so no unlearning could use it; pass a smaller --fraction")
    summary = forget.summary()
    write_requests(df, out)
    return {**summary, "out": str(out)}
