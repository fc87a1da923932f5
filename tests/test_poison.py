"""Fake-user (backdoor) injection and the genuine-user population for attack success."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.poison import genuine_users_without_targets, inject_poison
from tru_dist.errors import ConfigError, DataError


def _train_degree(data: RecDataset) -> np.ndarray:
    return np.bincount(data.items[data.labels == TRAIN], minlength=data.n_items)


def test_fake_users_and_their_interactions(tiny_data):
    p = inject_poison(tiny_data, fake_user_fraction=0.033, n_targets=2, n_fillers=6, seed=5)
    meta = p.meta["poison"]
    n_fake = math.ceil(0.033 * 200)  # 7
    assert meta["fake_users"] == list(range(200, 200 + n_fake)) and p.n_users == 200 + n_fake
    assert p.n_items == tiny_data.n_items and meta["seed"] == 5 and meta["n_fillers"] == 6
    n = tiny_data.n_interactions
    # the genuine part is untouched and comes first
    assert np.array_equal(p.users[:n], tiny_data.users) and np.array_equal(p.items[:n], tiny_data.items)
    assert np.array_equal(p.labels[:n], tiny_data.labels)
    assert (p.labels[n:] == TRAIN).all() and len(p.users) - n == n_fake * 8
    targets, pool = set(meta["targets"]), set(meta["fillers"])
    for u in meta["fake_users"]:
        items = set(p.items[p.users == u].tolist())
        assert targets <= items and len(items) == 8
        assert items - targets <= pool
    assert not targets & pool
    assert p.features is not tiny_data.features
    for m in tiny_data.features:
        assert p.features[m] is tiny_data.features[m]  # features unchanged (not even copied)
    assert "poison" not in tiny_data.meta  # the input is not mutated


def test_targets_are_rare_and_fillers_popular(tiny_data):
    p = inject_poison(tiny_data, fake_user_fraction=0.05, n_targets=3, n_fillers=5, seed=2)
    deg = _train_degree(tiny_data)
    live = np.sort(deg[deg > 0])
    quarter_cut = live[math.ceil(0.25 * len(live)) - 1]
    targets = np.array(p.meta["poison"]["targets"])
    assert (deg[targets] > 0).all() and (deg[targets] <= quarter_cut).all()
    pool = np.array(p.meta["poison"]["fillers"])
    assert len(pool) == 10
    outside = np.setdiff1d(np.flatnonzero(deg > 0), np.r_[pool, targets])
    assert deg[pool].min() >= deg[outside].max()  # the pool is the most popular non-targets


def test_poison_is_seeded(tiny_data):
    a = inject_poison(tiny_data, seed=11)
    b = inject_poison(tiny_data, seed=11)
    c = inject_poison(tiny_data, seed=12)
    assert a.meta["poison"] == b.meta["poison"] and np.array_equal(a.items, b.items)
    assert not np.array_equal(a.items, c.items)


def test_poison_argument_errors(tiny_data):
    with pytest.raises(ConfigError, match="fake_user_fraction must be in"):
        inject_poison(tiny_data, fake_user_fraction=0.0)
    with pytest.raises(ConfigError, match="need n_targets >= 1"):
        inject_poison(tiny_data, n_targets=0)
    with pytest.raises(ConfigError, match="only 120 items have train interactions"):
        inject_poison(tiny_data, n_targets=100, n_fillers=30)
    with pytest.raises(DataError, match="already poisoned"):
        inject_poison(inject_poison(tiny_data))


def test_genuine_users_without_targets_hand_case():
    # users 0..2 genuine, 3 fake; target 1: user 0 has it in test, user 3 (fake) in train
    users = np.array([0, 0, 1, 2, 2, 3, 3])
    items = np.array([0, 1, 0, 0, 2, 1, 2])
    labels = np.array([0, 2, 0, 0, 0, 0, 0], dtype=np.int8)
    d = RecDataset(4, 3, users, items, labels, meta={"poison": {"fake_users": [3], "targets": [1, 2]}})
    out = genuine_users_without_targets(d)
    assert out[1].tolist() == [1, 2] and out[2].tolist() == [0, 1]
    with pytest.raises(DataError, match="no injected poison"):
        genuine_users_without_targets(RecDataset(4, 3, users, items, labels))


def test_attack_population_on_synthetic(tiny_data):
    p = inject_poison(tiny_data, fake_user_fraction=0.02, seed=0)
    pops = genuine_users_without_targets(p)
    for t, users in pops.items():
        had = np.unique(tiny_data.users[tiny_data.items == t])
        assert len(users) == 200 - len(had)
        assert not np.isin(users, had).any() and users.max() < 200
