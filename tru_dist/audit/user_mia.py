"""User-level membership inference (Zhang et al., CCS 2021, "Membership Inference Attacks
Against Recommender Systems"): was this user's history used to train the recommender?

The attacker knows each target user's interaction history H_u and sees the model's
recommendations R_u (top-``top_n`` items, the known history masked). Items are described
by latent vectors v_i from a truncated SVD of a training interaction matrix the attacker
owns (its shadow users' train matrix X ≈ U Σ Vᵀ, v_i = row i of V Σ^{1/2}). The user
feature is the difference between what the user consumed and what the model recommends:

    f_u = mean_{i ∈ H_u} v_i − Σ_{r=1..N} w_r v_{R_u[r]},   w_r = (1/r) / Σ_{r'≤N} 1/r'.

A member's recommendations were fitted to its history, so the difference is small;
a non-member gets recommendations unrelated to it. An MLP learns the decision on a
SHADOW model: same config, trained on half of the attacker's users ("in", label 1), the
other half ("out", label 0) never trained on. It is then applied to the target model(s)
on members = the deleted users and non-members = users the original never trained on.

The target's non-members must exist: users with no train interaction (e.g. an audit
hold-out whose interactions are all held-out labels). Neither target set, nor their labels,
enters the shadow data or the attacker's training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.decomposition import TruncatedSVD
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tru_dist.audit.features import model_embeddings
from tru_dist.audit.mia import AuditError, bootstrap_auc
from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.train.evaluate import history_mask, topk


def interaction_matrix(n_users: int, n_items: int, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """Binary (n_users × n_items) CSR matrix of the given pairs."""
    vals = np.ones(len(users), dtype=np.float32)
    mat = sp.csr_matrix((vals, (np.asarray(users), np.asarray(items))), shape=(n_users, n_items))
    mat.data[:] = 1.0  # duplicates collapse to 1
    return mat


def item_vectors(train: sp.csr_matrix, dim: int = 32, seed: int = 0) -> np.ndarray:
    """(n_items × d) item vectors V Σ^{1/2} of a truncated SVD of a user × item matrix."""
    d = max(1, min(dim, min(train.shape) - 1))
    svd = TruncatedSVD(n_components=d, random_state=seed).fit(train)
    return (svd.components_.T * np.sqrt(svd.singular_values_)[None, :]).astype(np.float64)


def rank_weights(n: int) -> np.ndarray:
    """w_r ∝ 1/r for r = 1..n, normalised to sum 1."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64)
    return w / w.sum()


def user_features(
    model, graph, data: RecDataset, users: np.ndarray, vecs: np.ndarray, top_n: int = 100
) -> np.ndarray:
    """f_u (module doc) for global ``users`` under ``model``; H_u = u's interactions in
    ``data`` (every split: all the attacker knows), masked from the recommendations."""
    users = np.asarray(users, dtype=np.int64)
    hist = interaction_matrix(data.n_users, data.n_items, data.users, data.items)[users]
    counts = np.asarray(hist.sum(1)).ravel()
    hist_mean = np.asarray(hist @ vecs) / np.maximum(counts, 1.0)[:, None]
    user_emb, item_emb = model_embeddings(model, graph)
    exclude = history_mask(data, ["train", "valid", "test"], graph)
    n = min(top_n, data.n_items)
    rows = torch.as_tensor(users - graph.user_offset, device=user_emb.device)
    rec = topk(user_emb, item_emb, exclude, n, rows=rows).cpu().numpy()
    rec_mean = np.einsum("r,urd->ud", rank_weights(n), vecs[rec])
    return hist_mean - rec_mean


def never_trained_users(data: RecDataset) -> np.ndarray:
    """Users with ≥ 1 interaction but no train interaction: the model never saw them."""
    train_deg = np.bincount(data.users[data.labels == TRAIN], minlength=data.n_users)
    any_deg = np.bincount(data.users, minlength=data.n_users)
    return np.flatnonzero((train_deg == 0) & (any_deg > 0)).astype(np.int64)


def _default_train_fn(cfg, data):
    from tru_dist.train.trainer import fit

    return fit(cfg, data)


class UserMIA:
    """Shadow-trained user-level attack; ``fit`` once, ``auc`` per audited model.

    After ``fit``: ``shadow_in`` / ``shadow_out`` are the attacker's training users,
    ``members`` / ``nonmembers`` the judged target users (disjoint from them).
    """

    def __init__(self, dim: int = 32, top_n: int = 100, hidden: tuple[int, ...] = (32, 8),
                 n_boot: int = 200, max_shadow_users: int = 4000):
        self.dim = dim
        self.top_n = top_n
        self.hidden = hidden
        self.n_boot = n_boot
        self.max_shadow_users = max_shadow_users
        self.seed = 0
        self.attacker: Pipeline | None = None

    def fit(
        self,
        cfg,
        data: RecDataset,
        members: np.ndarray,
        nonmembers: np.ndarray,
        seed: int = 0,
        train_fn: Callable | None = None,
    ) -> UserMIA:
        """Train the shadow model with ``train_fn(cfg, shadow_data) -> (model, graph, ...)``
        (default :func:`tru_dist.train.trainer.fit`) and the MLP on its in/out users.

        ``data`` is the dataset before deletion; ``members`` the deleted users and
        ``nonmembers`` users the original model never trained on (both global ids)."""
        self.seed = seed
        self.data = data
        self.members = np.unique(np.asarray(members, dtype=np.int64))
        self.nonmembers = np.unique(np.asarray(nonmembers, dtype=np.int64))
        if len(self.members) < 2 or len(self.nonmembers) < 2:
            raise AuditError(
                f"user-level MIA needs ≥ 2 deleted users and ≥ 2 never-trained users "
                f"(got {len(self.members)}, {len(self.nonmembers)}); use the users regime and hold users out"
            )
        rng = np.random.default_rng(seed)
        train_deg = np.bincount(data.users[data.labels == TRAIN], minlength=data.n_users)
        pool = np.setdiff1d(np.flatnonzero(train_deg > 0), np.r_[self.members, self.nonmembers])
        pool = rng.permutation(pool)[: self.max_shadow_users]
        half = len(pool) // 2
        if half < 5:
            raise AuditError(f"only {len(pool)} users are left for the shadow model; need at least 10")
        self.shadow_in, self.shadow_out = np.sort(pool[:half]), np.sort(pool[half : 2 * half])

        drop = ~np.isin(data.users, self.shadow_in)
        shadow_data = data.without_pairs(data.users[drop], data.items[drop])
        train_fn = train_fn or _default_train_fn
        shadow_model, shadow_graph = train_fn(cfg, shadow_data)[:2]

        su, si = shadow_data.train_pairs
        self.vecs = item_vectors(interaction_matrix(data.n_users, data.n_items, su, si), self.dim, seed)
        users = np.r_[self.shadow_in, self.shadow_out]
        labels = np.r_[np.ones(half, dtype=np.int8), np.zeros(half, dtype=np.int8)]
        x = user_features(shadow_model, shadow_graph, data, users, self.vecs, self.top_n)
        clf = MLPClassifier(hidden_layer_sizes=self.hidden, max_iter=1000, random_state=seed)
        self.attacker = make_pipeline(StandardScaler(), clf).fit(x, labels)
        return self

    def member_scores(self, model, graph) -> tuple[np.ndarray, np.ndarray]:
        """(labels, member probability) over the target users: members first, then non-members."""
        if self.attacker is None:
            raise RuntimeError("call fit() first")
        users = np.r_[self.members, self.nonmembers]
        labels = np.r_[np.ones(len(self.members)), np.zeros(len(self.nonmembers))].astype(np.int8)
        x = user_features(model, graph, self.data, users, self.vecs, self.top_n)
        return labels, self.attacker.predict_proba(x)[:, 1]

    def auc(self, model, graph) -> dict:
        """``{"auc", "ci": [lo, hi], "n"}`` of the attack on (deleted, never-trained) users."""
        labels, scores = self.member_scores(model, graph)
        return bootstrap_auc(labels, scores, self.n_boot, self.seed)
