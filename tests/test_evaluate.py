"""Full-ranking evaluator vs brute-force Python references (hand cases and random cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tru_dist.data.dataset import TEST, TRAIN, VALID, RecDataset
from tru_dist.graph.context import build_rec_graph
from tru_dist.graph.partition import PartitionBook
from tru_dist.models.base import Embeddings
from tru_dist.train.evaluate import METRICS, evaluate, history_mask, pair_ranks, topk

# Scores of 4 users × 6 items (no ties); user emb = S, item emb = I  =>  U·Iᵀ = S exactly.
S = np.array([
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    [0.1, 0.6, 0.3, 0.9, 0.2, 0.5],
    [0.5, 0.4, 0.9, 0.1, 0.8, 0.3],
    [0.3, 0.2, 0.1, 0.6, 0.5, 0.4],
])
# (user, item, label); user 3 has no valid/test item, so it never counts.
PAIRS = [
    (0, 0, TRAIN), (0, 2, VALID), (0, 1, TEST), (0, 4, TEST),
    (1, 3, TRAIN), (1, 1, TRAIN), (1, 5, VALID), (1, 0, TEST),
    (2, 2, TRAIN), (2, 4, VALID), (2, 5, TEST), (2, 3, TEST), (2, 0, TEST),
    (3, 0, TRAIN), (3, 1, TRAIN),
]
KS = (1, 2, 3, 5, 10)  # 10 > n_items: the tail of every list is empty


def hand_data() -> RecDataset:
    u, i, lab = (np.array(c) for c in zip(*PAIRS, strict=True))
    return RecDataset(4, 6, u.astype(np.int64), i.astype(np.int64), lab.astype(np.int8))


def hand_emb() -> Embeddings:
    return Embeddings(torch.tensor(S, dtype=torch.float32), torch.eye(6))


def reference(scores, data: RecDataset, split: str, ks, users=None) -> dict[str, float]:
    """Plain-Python metrics: rank non-excluded items by score, binary relevance."""
    excl_labels = {TRAIN, VALID} if split == "test" else {TRAIN}
    target = TEST if split == "test" else VALID
    n_users, n_items = scores.shape
    sums = {f"{m}@{k}": 0.0 for k in ks for m in METRICS}
    count = 0
    for u in range(n_users):
        if users is not None and u not in users:
            continue
        excl = {int(i) for uu, i, lab in zip(data.users, data.items, data.labels, strict=True)
                if uu == u and lab in excl_labels}
        rel = {int(i) for uu, i, lab in zip(data.users, data.items, data.labels, strict=True)
               if uu == u and lab == target}
        if not rel:
            continue
        count += 1
        ranked = sorted((i for i in range(n_items) if i not in excl), key=lambda i: -scores[u][i])
        for k in ks:
            hits = [1 if i in rel else 0 for i in ranked[:k]]
            n_hit = sum(hits)
            sums[f"recall@{k}"] += n_hit / len(rel)
            sums[f"precision@{k}"] += n_hit / k
            sums[f"hit@{k}"] += float(n_hit > 0)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
            sums[f"ndcg@{k}"] += dcg / idcg
            ap = sum(sum(hits[: j + 1]) / (j + 1) for j, h in enumerate(hits) if h)
            sums[f"map@{k}"] += ap / min(len(rel), k)
    out = {name: v / count for name, v in sums.items()}
    out["n_users"] = count
    return out


def assert_metrics_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert got["n_users"] == want["n_users"]
    for name, v in want.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name


@pytest.mark.parametrize("split", ["valid", "test"])
def test_hand_case_matches_brute_force(split):
    data = hand_data()
    graph = build_rec_graph(data, with_knn=False)
    got = evaluate(None, graph, data, split, ks=KS, emb=hand_emb())
    assert_metrics_close(got, reference(S, data, split, KS))


def test_hand_case_literal_values():
    """User 0 on test: train {0} and valid {2} masked -> ranking 1, 3, 4, 5; relevant {1, 4}."""
    data = hand_data()
    graph = build_rec_graph(data, with_knn=False)
    got = evaluate(None, graph, data, "test", ks=(2, 3), users=[0], emb=hand_emb())
    assert got["n_users"] == 1
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["precision@2"] == pytest.approx(0.5)
    assert got["hit@2"] == pytest.approx(1.0)
    assert got["ndcg@2"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))
    assert got["map@2"] == pytest.approx(0.5)  # (1/1) / min(2, 2)
    assert got["recall@3"] == pytest.approx(1.0)
    assert got["ndcg@3"] == pytest.approx((1.0 + 0.5) / (1.0 + 1.0 / math.log2(3)))
    assert got["map@3"] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


def test_valid_items_masked_only_at_test():
    """User 0's valid item 2 outranks its test item 4: masked on test, a hit on valid."""
    data = hand_data()
    graph = build_rec_graph(data, with_knn=False)
    mask_test = history_mask(data, (TRAIN, VALID), graph)
    top = topk(hand_emb().user, hand_emb().item, mask_test, 6)
    train_valid = {(int(u), int(i)) for u, i, lab in zip(data.users, data.items, data.labels, strict=True)
                   if lab != TEST}
    for u in range(4):
        n_keep = 6 - sum(1 for uu, _ in train_valid if uu == u)
        assert not {(u, int(i)) for i in top[u, :n_keep]} & train_valid  # masked items sink to the tail
    valid = evaluate(None, graph, data, "valid", ks=(1,), users=[0], emb=hand_emb())
    test = evaluate(None, graph, data, "test", ks=(1,), users=[0], emb=hand_emb())
    assert valid["hit@1"] == 0.0  # top-1 among non-train items is item 1 (a test item), not valid item 2
    assert test["hit@1"] == 1.0


def test_users_restriction_and_empty_users():
    data = hand_data()
    graph = build_rec_graph(data, with_knn=False)
    got = evaluate(None, graph, data, "test", ks=KS, users=[1, 2, 3], emb=hand_emb())
    assert_metrics_close(got, reference(S, data, "test", KS, users={1, 2, 3}))
    none = evaluate(None, graph, data, "test", ks=KS, users=[3], emb=hand_emb())
    assert none["n_users"] == 0 and none["recall@10"] == 0.0


def random_case(seed: int, n_users=40, n_items=30, per_user=8):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        labels = rng.choice([TRAIN, TRAIN, TRAIN, VALID, TEST], size=per_user)
        rows += [(u, int(i), int(lab)) for i, lab in zip(items, labels, strict=True)]
    u, i, lab = (np.array(c) for c in zip(*rows, strict=True))
    data = RecDataset(n_users, n_items, u.astype(np.int64), i.astype(np.int64), lab.astype(np.int8))
    user, item = rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8))
    emb = Embeddings(torch.from_numpy(user), torch.from_numpy(item))
    return data, emb


@pytest.mark.parametrize("split", ["valid", "test"])
def test_random_case_matches_brute_force_with_small_batches(split):
    data, emb = random_case(1)
    graph = build_rec_graph(data, with_knn=False)
    scores = (emb.user @ emb.item.T).numpy()
    got = evaluate(None, graph, data, split, ks=(1, 5, 20), emb=emb, batch_users=7)
    assert_metrics_close(got, reference(scores, data, split, (1, 5, 20)))


def test_two_shards_combine_to_single_process():
    """Each rank ranks its own users; count-weighted shard means equal the W = 1 means."""
    data, emb = random_case(2)
    full = evaluate(None, build_rec_graph(data, with_knn=False), data, "test", ks=(5, 10), emb=emb)
    book = PartitionBook.contiguous(data.n_users, data.n_items, 2)
    parts = []
    for r in range(2):
        lo, hi = book.user_range(r)
        g = build_rec_graph(data, book=book, rank=r, with_knn=False)
        parts.append(evaluate(None, g, data, "test", ks=(5, 10), emb=Embeddings(emb.user[lo:hi], emb.item)))
    n = parts[0]["n_users"] + parts[1]["n_users"]
    assert n == full["n_users"]
    for name in full:
        if name != "n_users":
            combined = (parts[0][name] * parts[0]["n_users"] + parts[1][name] * parts[1]["n_users"]) / n
            assert combined == pytest.approx(full[name], abs=1e-12), name


def test_topk_matches_argsort():
    data, emb = random_case(3)
    graph = build_rec_graph(data, with_knn=False)
    mask = history_mask(data, ("train",), graph)
    scores = (emb.user @ emb.item.T).numpy().copy()
    for u, i, lab in zip(data.users, data.items, data.labels, strict=True):
        if lab == TRAIN:
            scores[u, i] = -np.inf
    want = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    got = topk(emb.user, emb.item, mask, 10, batch_users=9)
    np.testing.assert_array_equal(got.numpy(), want)
    rows = torch.tensor([5, 0, 5])
    np.testing.assert_array_equal(topk(emb.user, emb.item, mask, 3, rows=rows).numpy(), want[[5, 0, 5], :3])


def test_pair_ranks_matches_brute_force():
    data, emb = random_case(4)
    graph = build_rec_graph(data, with_knn=False)
    mask = history_mask(data, ("train", "valid"), graph)
    excl = {(int(u), int(i))
            for u, i, lab in zip(data.users, data.items, data.labels, strict=True) if lab != TEST}
    rng = np.random.default_rng(0)
    # include pairs whose own item is excluded (a deleted train pair) and repeated users
    users = np.concatenate([data.users[:50], rng.integers(0, data.n_users, 30)])
    items = np.concatenate([data.items[:50], rng.integers(0, data.n_items, 30)])
    scores = (emb.user @ emb.item.T).numpy()
    want = [sum(1 for j in range(data.n_items)
                if j != i and (u, j) not in excl and scores[u, j] > scores[u, i])
            for u, i in zip(users.tolist(), items.tolist(), strict=True)]
    tu, ti = torch.from_numpy(users), torch.from_numpy(items)
    got = pair_ranks(emb.user, emb.item, tu, ti, mask, batch_pairs=13)
    assert got.tolist() == want
    unmasked = pair_ranks(emb.user, emb.item, tu, ti, None)
    assert (unmasked >= got).all() and (unmasked > got).any()


def test_history_mask_rows_are_local_users():
    data, _ = random_case(5)
    book = PartitionBook.contiguous(data.n_users, data.n_items, 3)
    g = build_rec_graph(data, book=book, rank=1, with_knn=False)
    mask = history_mask(data, (TRAIN,), g)
    lo, hi = book.user_range(1)
    assert mask.shape == (hi - lo, data.n_items)
    crow, col = mask.crow_indices().numpy(), mask.col_indices().numpy()
    got = {(lo + r, int(c)) for r in range(hi - lo) for c in col[crow[r]:crow[r + 1]]}
    want = {(int(u), int(i)) for u, i, lab in zip(data.users, data.items, data.labels, strict=True)
            if lab == TRAIN and lo <= u < hi}
    assert got == want
