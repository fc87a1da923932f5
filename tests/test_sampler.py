"""BPR sampler: negatives, coverage, determinism, resume, and the shard split of global batches."""

from __future__ import annotations

import numpy as np
import pytest

from tru_dist.errors import DataError
from tru_dist.graph.partition import PartitionBook
from tru_dist.train.sampler import BPRSampler


def dense_pairs(seed=0, n_users=30, n_items=12, density=0.6):
    """Dense interactions so that most uniform negative draws collide with a positive."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[np.arange(n_users), rng.integers(0, n_items, n_users)] = False  # every user keeps a negative
    mask[np.arange(n_users), rng.integers(0, n_items, n_users)] |= True  # and at least one positive
    users, items = np.nonzero(mask)
    return users.astype(np.int64), items.astype(np.int64), n_users, n_items


def triples(batches, offset=0):
    return [(b.users.numpy() + offset, b.pos.numpy(), b.neg.numpy(), b.scale) for b in batches]


def test_negatives_are_never_positives():
    users, items, nu, ni = dense_pairs()
    s = BPRSampler(users, items, nu, ni, seed=0)
    positives = set(zip(users.tolist(), items.tolist(), strict=True))
    seen_neg = 0
    for _ in range(5):
        for b in s.epoch(64):
            for u, j in zip(b.users.tolist(), b.neg.tolist(), strict=True):
                assert (u, j) not in positives
                assert 0 <= j < ni
                seen_neg += 1
    assert seen_neg == 5 * len(users)


def test_every_pair_once_per_epoch_and_scale():
    users, items, nu, ni = dense_pairs(1)
    s = BPRSampler(users, items, nu, ni, seed=3)
    batches = list(s.epoch(50))
    assert len(batches) == s.n_batches(50) == -(-len(users) // 50)
    got = sorted(zip(np.concatenate([b.users for b in batches]).tolist(),
                     np.concatenate([b.pos for b in batches]).tolist(), strict=True))
    assert got == sorted(zip(users.tolist(), items.tolist(), strict=True))
    assert [b.scale for b in batches] == [1 / len(b.users) for b in batches]
    assert batches[-1].scale == 1 / (len(users) - 50 * (len(batches) - 1))


def test_same_seed_same_batches_and_epochs_differ():
    users, items, nu, ni = dense_pairs(2)
    a = triples(BPRSampler(users, items, nu, ni, seed=7).epoch(40))
    b = triples(BPRSampler(users, items, nu, ni, seed=7).epoch(40))
    c = triples(BPRSampler(users, items, nu, ni, seed=8).epoch(40))
    for x, y in zip(a, b, strict=True):
        for p, q in zip(x, y, strict=True):
            np.testing.assert_array_equal(p, q)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    s = BPRSampler(users, items, nu, ni, seed=7)
    first, second = triples(s.epoch(40)), triples(s.epoch(40))
    assert not np.array_equal(first[0][1], second[0][1])  # a new permutation every epoch


def test_state_dict_resumes_exactly():
    users, items, nu, ni = dense_pairs(3)
    s = BPRSampler(users, items, nu, ni, seed=0)
    list(s.epoch(32))
    state = s.state_dict()
    want = triples(s.epoch(32))
    r = BPRSampler(users, items, nu, ni, seed=123)
    r.load_state_dict(state)
    for x, y in zip(triples(r.epoch(32)), want, strict=True):
        for p, q in zip(x, y, strict=True):
            np.testing.assert_array_equal(p, q)


def test_two_shards_reproduce_the_global_batch():
    users, items, nu, ni = dense_pairs(4)
    book = PartitionBook.contiguous(nu, ni, 2)
    whole = list(BPRSampler(users, items, nu, ni, seed=5).epoch(37))
    shards = [list(BPRSampler(users, items, nu, ni, seed=5, book=book, rank=r).epoch(37)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for w, b0, b1 in zip(whole, *shards, strict=True):
        lo1 = book.user_range(1)[0]
        assert ((b0.users >= 0) & (b0.users < book.n_local_users(0))).all()
        assert ((b1.users >= 0) & (b1.users < book.n_local_users(1))).all()
        assert b0.scale == b1.scale == w.scale
        union = sorted(zip(np.concatenate([b0.users.numpy(), b1.users.numpy() + lo1]).tolist(),
                           np.concatenate([b0.pos, b1.pos]).tolist(),
                           np.concatenate([b0.neg, b1.neg]).tolist(), strict=True))
        assert union == sorted(zip(w.users.tolist(), w.pos.tolist(), w.neg.tolist(), strict=True))


def test_never_negative_pairs_are_neither_negatives_nor_positives():
    """Sampling a user's retained pairs while their deleted ones are excluded from the negatives:
    every pair drawn is retained, no negative is one of the user's pairs of either kind."""
    users, items, nu, ni = dense_pairs(density=0.5)
    held = np.arange(len(users)) % 3 == 0  # a third of the pairs "deleted"
    s = BPRSampler(users[~held], items[~held], nu, ni, seed=0, never_negative=(users[held], items[held]))
    kept = set(zip(users[~held].tolist(), items[~held].tolist(), strict=True))
    deleted = set(zip(users[held].tolist(), items[held].tolist(), strict=True))
    n_neg = 0
    for _ in range(5):
        for b in s.epoch(50):
            for u, i, j in zip(b.users.tolist(), b.pos.tolist(), b.neg.tolist(), strict=True):
                assert (u, i) in kept and (u, j) not in kept and (u, j) not in deleted
                n_neg += 1
    assert n_neg == 5 * int((~held).sum())
    plain = BPRSampler(users[~held], items[~held], nu, ni, seed=0)  # without it, deleted pairs are drawn
    drawn = [(u, j) for b in plain.epoch(50) for u, j in zip(b.users.tolist(), b.neg.tolist(), strict=True)]
    assert any(pair in deleted for pair in drawn)


def test_negatives_are_uniform_over_non_positives():
    users = np.zeros(5, dtype=np.int64)
    items = np.arange(5, dtype=np.int64)  # user 0 likes items 0..4 of 10
    s = BPRSampler(users, items, 1, 10, seed=0)
    neg = s.sample_negatives(np.zeros(20000, dtype=np.int64), np.random.default_rng(1))
    counts = np.bincount(neg, minlength=10)
    assert counts[:5].sum() == 0
    np.testing.assert_allclose(counts[5:] / 20000, 0.2, atol=0.015)


def test_user_with_every_item_is_an_error():
    with pytest.raises(DataError, match="user 1"):
        BPRSampler(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 2]), 2, 3, seed=0)
