"""Seeded synthetic multimodal interaction data (the demo's embedded default).

Generative story (so a multimodal model has real signal to find, and must beat ID-only):

* ``n_clusters`` latent taste clusters with centres c_k ∈ R^latent.
* Each item belongs to a cluster z_i; its latent vector is v_i = c_{z_i} + σ_item·ε.
  Item popularity follows a power law, pop_i ∝ rank_i^{-a} (Zipf, exponent ``pop_exponent``).
* Each modality m observes the item through its own random linear map plus noise:
  x_i^m = W_m v_i + σ_m·ε, so features reveal the clusters with noise.
* Each user has a cluster mixture (mostly one cluster); a user's interactions are drawn
  from p(i | u) ∝ pop_i · exp(<w_u, v_i>/τ) without replacement; the number of
  interactions per user is 5 + a geometric tail (every user has ≥ 5, as in 5-core data).
* Every item is interacted with at least once (MMRec infers ``n_items`` from the ids, so
  ids must be dense): an item the sampler never drew becomes the *first* (hence train)
  interaction of a random user of its own cluster (drawn from a separate seeded stream,
  so data where no item is missing is unchanged).
* Split (MMRec rule of the shared data): users with < 10 items put their last two in
  valid/test, others 80/10/10 in interaction order.
"""

from __future__ import annotations

import numpy as np

from tru_dist.data.dataset import TEST, TRAIN, VALID, RecDataset

#: the smallest sizes :func:`generate_synthetic` can make: every user draws at least 5 distinct
#: items (no repeats), so fewer than 5 items cannot be sampled, and there must be a user
MIN_USERS, MIN_ITEMS = 1, 5


def split_labels(user_ids: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """MMRec split rule for interactions already in per-user chronological order.

    Users with n < 10 interactions: last → test, second last → valid, rest train.
    Otherwise: the last ceil-free 10% → test, the 10% before → valid (each ≥ 1), 80% train.
    """
    labels = np.zeros(len(user_ids), dtype=np.int8)
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    ends = np.r_[starts[1:], len(user_ids)]
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        if n < 3:
            continue
        if n < 10:
            n_test = n_valid = 1
        else:
            n_test = n_valid = max(1, int(round(0.1 * n)))
        labels[e - n_test : e] = TEST
        labels[e - n_test - n_valid : e - n_test] = VALID
    return labels


def _cover_all_items(
    users_out: list[np.ndarray],
    items_out: list[np.ndarray],
    item_cluster: np.ndarray,
    user_cluster: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-user sequences, prepending each never-drawn item to one user's
    sequence (a user of the item's cluster when there is one)."""
    n_items = len(item_cluster)
    drawn = np.zeros(n_items, dtype=bool)
    for seq in items_out:
        drawn[seq] = True
    missing = np.flatnonzero(~drawn)
    if len(missing):
        rng = np.random.default_rng([seed, 1])
        for i in missing:
            same = np.flatnonzero(user_cluster == item_cluster[i])
            u = int(rng.choice(same)) if len(same) else int(rng.integers(len(users_out)))
            items_out[u] = np.r_[np.int64(i), items_out[u]]
            users_out[u] = np.full(len(items_out[u]), u, dtype=np.int64)
    return np.concatenate(users_out), np.concatenate(items_out)


def generate_synthetic(
    n_users: int = 600,
    n_items: int = 400,
    *,
    n_clusters: int = 8,
    latent_dim: int = 16,
    modalities: dict[str, int] | None = None,
    mean_extra_interactions: float = 10.0,
    pop_exponent: float = 0.8,
    item_noise: float = 0.3,
    feature_noise: float = 0.5,
    temperature: float = 0.25,
    seed: int = 0,
) -> RecDataset:
    """Generate a :class:`RecDataset` with planted clusters; same seed → same arrays.

    ``modalities`` maps modality name to feature width (default image:64, text:32).
    Size scales linearly: ~ n_users · (5 + mean_extra_interactions) interactions.
    """
    rng = np.random.default_rng(seed)
    modalities = {"image": 64, "text": 32} if modalities is None else dict(modalities)
    centres = rng.normal(size=(n_clusters, latent_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_cluster = rng.integers(0, n_clusters, size=n_items)
    jitter = rng.normal(size=(n_items, latent_dim)) / np.sqrt(latent_dim)
    item_latent = centres[item_cluster] + item_noise * jitter
    pop = (1.0 + rng.permutation(n_items)) ** (-pop_exponent)
    log_pop = np.log(pop / pop.sum())

    user_cluster = rng.integers(0, n_clusters, size=n_users)
    second = rng.integers(0, n_clusters, size=n_users)
    mix = rng.uniform(0.0, 0.3, size=(n_users, 1))
    user_taste = (1 - mix) * centres[user_cluster] + mix * centres[second]

    max_len = max(5, n_items // 2)
    lengths = np.minimum(5 + rng.geometric(1.0 / (1.0 + mean_extra_interactions), size=n_users) - 1, max_len)

    users_out, items_out = [], []
    for start in range(0, n_users, 2048):  # blocks keep memory at O(block · n_items)
        block = slice(start, min(n_users, start + 2048))
        logits = user_taste[block] @ item_latent.T / temperature + log_pop
        # Gumbel top-k = sampling without replacement proportionally to exp(logits)
        keys = logits + rng.gumbel(size=logits.shape)
        for row, u in enumerate(range(block.start, block.stop)):
            k = int(lengths[u])
            chosen = np.argpartition(-keys[row], k - 1)[:k]
            chosen = chosen[np.argsort(-keys[row, chosen])]  # "chronological" order
            users_out.append(np.full(k, u, dtype=np.int64))
            items_out.append(chosen.astype(np.int64))
    users, items = _cover_all_items(users_out, items_out, item_cluster, user_cluster, seed)
    labels = split_labels(users)

    features = {}
    for name, width in sorted(modalities.items()):
        proj = rng.normal(size=(latent_dim, width)) / np.sqrt(latent_dim)
        feats = item_latent @ proj + feature_noise * rng.normal(size=(n_items, width))
        features[name] = feats.astype(np.float32)
    meta = {
        "name": "synthetic",
        "generator": {
            "n_users": n_users,
            "n_items": n_items,
            "n_clusters": n_clusters,
            "latent_dim": latent_dim,
            "modalities": modalities,
            "seed": seed,
        },
        "split_seed": seed,
    }
    assert set(np.unique(labels)) <= {TRAIN, VALID, TEST}
    return RecDataset(n_users, n_items, users, items, labels, features, meta)
