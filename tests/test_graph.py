"""Adjacency, deletion renormalisation, kNN graphs and the partition book against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tru_dist.graph.adjacency import build_bipartite, compact, delete_edges, spmm
from tru_dist.graph.knn import feature_hash, knn_graph
from tru_dist.graph.partition import PartitionBook


def _dense_reference(n_u, n_i, users, items) -> np.ndarray:
    """Square (n_u+n_i) symmetric-normalised adjacency D^-1/2 A D^-1/2 in float64."""
    a = np.zeros((n_u + n_i, n_u + n_i))
    a[users, n_u + items] = 1.0
    a[n_u + items, users] = 1.0
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    return inv[:, None] * a * inv[None, :]


def _edges(seed=0, n_u=9, n_i=7, n=25):
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, [n_u, n_i], size=(n, 2)), axis=0)
    return n_u, n_i, pairs[:, 0], pairs[:, 1]


def test_adjacency_matches_dense_float64_reference():
    n_u, n_i, u, i = _edges()
    g = build_bipartite(n_u, n_i, u, i)
    ref = _dense_reference(n_u, n_i, u, i)
    np.testing.assert_allclose(g.dense().double().numpy(), ref[:n_u, n_u:], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g.norm_t.to_dense().double().numpy(), ref[n_u:, :n_u], rtol=1e-6, atol=1e-7)


def test_propagation_equals_square_adjacency_product_and_gradient():
    n_u, n_i, u, i = _edges(1)
    g = build_bipartite(n_u, n_i, u, i)
    ref = torch.from_numpy(_dense_reference(n_u, n_i, u, i))
    x = torch.randn(n_u + n_i, 4, dtype=torch.float64)
    expect = ref @ x
    xu = x[:n_u].float().requires_grad_()
    xi = x[n_u:].float().requires_grad_()
    out_u, out_i = g.users_from_items(xi), g.items_from_users(xu)
    np.testing.assert_allclose(out_u.detach().double(), expect[:n_u], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_i.detach().double(), expect[n_u:], rtol=1e-5, atol=1e-6)
    (out_u.sum() + (out_i**2).sum()).backward()
    # d/dx_i sum(R̂ x_i) = R̂ᵀ 1 ; d/dx_u sum((R̂ᵀ x_u)^2) = 2 R̂ (R̂ᵀ x_u)
    r = ref[:n_u, n_u:]
    np.testing.assert_allclose(xi.grad.double(), (r.T @ torch.ones(n_u, 4, dtype=torch.float64)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xu.grad.double(), 2 * r @ (r.T @ x[:n_u]), rtol=1e-4, atol=1e-5)


def test_deleting_edges_renormalises_like_building_from_retained_edges():
    n_u, n_i, u, i = _edges(2, n=40)
    g = build_bipartite(n_u, n_i, u, i)
    drop = np.array([0, 3, 5])
    after = delete_edges(g, u[drop], i[drop])
    keep = np.setdiff1d(np.arange(len(u)), drop)
    ref = _dense_reference(n_u, n_i, u[keep], i[keep])[:n_u, n_u:]
    np.testing.assert_allclose(after.dense().double().numpy(), ref, rtol=1e-6, atol=1e-7)
    assert after.n_edges == len(u) - len(drop)
    # the affected degrees really changed: the deleted entries are gone, neighbours reweighted
    assert np.all(after.dense().numpy()[u[drop], i[drop]] == 0)
    assert not np.allclose(after.dense().numpy(), g.dense().numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deleting_edges_equals_building_from_retained_edges_bit_for_bit(seed):
    """In-place deletion (zeros kept, only the renormalised entries recomputed) gives the matrices a
    rebuild gives — float32 values bit for bit, the transpose, degrees and edge lists — including a
    user left with no edge and a pair that is not an edge (ignored); a second deletion on top,
    and the same pair deleted twice (a no-op), too; compaction gives the rebuild's very arrays."""
    rng = np.random.default_rng(seed)
    n_u, n_i, u, i = _edges(seed, n_u=40, n_i=30, n=300)
    g = build_bipartite(n_u, n_i, u, i)
    drop = rng.choice(len(u), size=7, replace=False)
    lonely = np.flatnonzero(u == u[0])  # every edge of one user goes
    drop = np.unique(np.concatenate([drop, lonely]))
    absent_u, absent_i = np.array([u[0]]), np.array([(i[lonely].max() + 1) % n_i])
    if ((u == absent_u[0]) & (i == absent_i[0])).any():
        absent_u, absent_i = absent_u[:0], absent_i[:0]
    after = delete_edges(g, np.concatenate([u[drop], absent_u]), np.concatenate([i[drop], absent_i]))
    second = rng.choice(np.setdiff1d(np.arange(len(u)), drop), size=5, replace=False)
    both = np.concatenate([drop, second])
    after2 = delete_edges(after, np.concatenate([u[second], u[drop[:2]]]),
                          np.concatenate([i[second], i[drop[:2]]]))
    for got, gone in ((after, drop), (after2, both)):
        keep = np.setdiff1d(np.arange(len(u)), gone)
        ref = build_bipartite(n_u, n_i, u[keep], i[keep])
        for name in ("norm", "norm_t"):
            assert torch.equal(getattr(got, name).to_dense(), getattr(ref, name).to_dense()), name
        for name in ("users", "items", "user_degree", "item_degree"):
            assert torch.equal(getattr(got, name), getattr(ref, name)), name
        assert got.n_edges == len(keep)
        packed = compact(got)
        assert packed.n_zero_entries == 0
        for name in ("norm", "norm_t"):
            a, b = getattr(packed, name), getattr(ref, name)
            assert torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.values(), b.values())
    assert after.user_degree[u[0]] == 0
    assert after.n_zero_entries == len(drop)  # kept as zeros, structure shared with the original
    assert after.norm.col_indices().data_ptr() == g.norm.col_indices().data_ptr()


def test_deletion_compacts_when_zeros_pile_up():
    n_u, n_i, u, i = _edges(4, n_u=40, n_i=30, n=300)
    g = build_bipartite(n_u, n_i, u, i)
    half = np.arange(len(u) // 2)
    after = delete_edges(g, u[half], i[half])
    assert after.n_zero_entries == 0 and after.n_edges == len(u) - len(half)


def test_shard_rows_equal_full_rows():
    n_u, n_i, u, i = _edges(3, n=40)
    full = build_bipartite(n_u, n_i, u, i).dense()
    book = PartitionBook.contiguous(n_u, n_i, 3)
    deg = np.bincount(i, minlength=n_i)  # what the all-reduce over ranks provides
    parts = [build_bipartite(n_u, n_i, u, i, user_range=book.user_range(r), item_degree=deg).dense()
             for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), full)


def test_spmm_backward_is_transpose_product():
    n_u, n_i, u, i = _edges(4)
    g = build_bipartite(n_u, n_i, u, i)
    x = torch.randn(n_i, 3, dtype=torch.float64, requires_grad=True)
    a, at = g.norm.to(torch.float64), g.norm_t.to(torch.float64)
    assert torch.autograd.gradcheck(lambda t: spmm(a, at, t), (x,))


def test_knn_graph_rows_and_cache_key():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 5)).astype(np.float32)
    a, at = knn_graph(feats, 4)
    dense = a.to_dense().numpy()
    assert ((dense > 0).sum(1) == 4).all()
    # self is always a neighbour (cosine similarity 1) and values are 1/sqrt(k·k)
    assert np.allclose(np.diag(dense), 0.25)
    # each row's neighbours are the true top-k by cosine similarity
    xn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    top = np.argsort(-(xn @ xn.T), axis=1)[:, :4]
    for r in range(30):
        assert set(np.flatnonzero(dense[r])) == set(top[r])
    np.testing.assert_allclose(at.to_dense().numpy(), dense.T)
    changed = feats.copy()
    changed[0, 0] += 1.0
    assert feature_hash(changed, 4) != feature_hash(feats, 4)
    assert feature_hash(feats, 5) != feature_hash(feats, 4)


def test_knn_disk_cache_roundtrip(tmp_path):
    feats = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32) + 7.0  # unique to this test
    a, _ = knn_graph(feats, 3, tmp_path)
    assert len(list(tmp_path.glob("knn-*.pt"))) == 1
    from tru_dist.graph import knn as knn_mod

    knn_mod._MEMORY_CACHE.clear()
    b, _ = knn_graph(feats, 3, tmp_path)
    torch.testing.assert_close(a.to_dense(), b.to_dense())


def test_partition_book_ranges_cover_everything():
    book = PartitionBook.contiguous(10, 7, 3)
    assert book.user_starts == (0, 3, 6, 10) and book.item_starts == (0, 2, 4, 7)
    owners = book.owner_of_users(np.arange(10))
    assert owners.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    deg = np.array([100, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    bal = PartitionBook.balanced(10, 7, 2, deg)
    assert bal.user_starts[0] == 0 and bal.user_starts[-1] == 10 and bal.user_starts[1] == 1
