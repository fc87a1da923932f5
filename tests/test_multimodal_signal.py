"""MGCN beats ID-only LightGCN exactly when the item features carry the signal.

Sparse synthetic data (≈5 interactions per user) with low-noise features that reveal the
planted clusters: MGCN must beat LightGCN on test recall@20 (seeds 0 and 1). Control: the
same data with the feature rows shuffled across items (features now say nothing about the
item) removes most of MGCN's margin, so the win comes from the features, not from capacity.
"""

from __future__ import annotations

import numpy as np
import pytest

from tru_dist.config import build_config
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.train.evaluate import evaluate
from tru_dist.train.trainer import fit


@pytest.fixture(scope="module")
def sparse_data():
    return generate_synthetic(n_users=300, n_items=300, n_clusters=6, mean_extra_interactions=2,
                              feature_noise=0.2, modalities={"image": 32, "text": 16}, seed=0)


def _test_recall(model_name: str, data, seed: int) -> float:
    cfg = build_config(model=model_name, overrides=["train.epochs=40", "train.lr=0.01", "train.patience=10",
                                                    "model.dim=32", f"train.seed={seed}"])
    model, graph, _ = fit(cfg, data)
    return evaluate(model, graph, data, "test", (20,))["recall@20"]


def test_mgcn_beats_lightgcn_when_features_carry_the_signal(sparse_data):
    rng = np.random.default_rng(0)
    perm = rng.permutation(sparse_data.n_items)
    shuffled = sparse_data.with_features({m: f[perm] for m, f in sparse_data.features.items()})
    margins, control = [], []
    for seed in (0, 1):
        light = _test_recall("lightgcn", sparse_data, seed)
        mgcn = _test_recall("mgcn", sparse_data, seed)
        margins.append(mgcn - light)
        control.append(mgcn - _test_recall("mgcn", shuffled, seed))
    assert min(margins) > 0.02, margins  # measured: +0.041, +0.062
    assert np.mean(control) > 0.02, control  # informative features beat shuffled ones (+0.032, +0.062)
