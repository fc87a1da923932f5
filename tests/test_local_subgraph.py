"""``tru_dist.graph.local``: LightGCN embeddings of targets from their L-hop subgraph equal the
full-graph computation on those targets, and the neighbourhood it uses is as small as it may be."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch_geometric.utils import k_hop_subgraph

from tru_dist.data.synthetic import generate_synthetic
from tru_dist.graph.context import build_rec_graph
from tru_dist.graph.local import khop_nodes, local_light_embeddings, local_subgraph, to_pyg_edge_index
from tru_dist.models.lightgcn import light_propagate

# Tiny hand-built graph: a path u0-i0, u0-i1, u1-i1, u1-i2, u2-i2 and a separate component u3-i3.
#
#   i0   i1   i2   i3
#    \  /  \  / \   |
#     u0    u1   u2 u3
TINY_USERS = [0, 0, 1, 1, 2, 3]
TINY_ITEMS = [0, 1, 1, 2, 2, 3]


def _set(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask).reshape(-1).tolist())


@pytest.mark.parametrize(
    ("seed_users", "seed_items", "hops", "users", "items"),
    [
        ([0], [], 0, {0}, set()),
        ([0], [], 1, {0}, {0, 1}),
        ([0], [], 2, {0, 1}, {0, 1}),
        ([0], [], 3, {0, 1}, {0, 1, 2}),
        ([0], [], 4, {0, 1, 2}, {0, 1, 2}),
        ([0], [], 9, {0, 1, 2}, {0, 1, 2}),  # the other component is never reached
        ([], [3], 1, {3}, {3}),
        ([], [3], 5, {3}, {3}),
        ([2], [0], 1, {0, 2}, {0, 2}),  # mixed seeds: u2 -> i2, i0 -> u0
        ([2], [0], 2, {0, 1, 2}, {0, 1, 2}),  # i2 -> u1, u0 -> i1
        ([], [], 3, set(), set()),
    ],
)
def test_khop_masks_on_a_hand_built_graph(seed_users, seed_items, hops, users, items):
    user_mask, item_mask = khop_nodes(seed_users, seed_items, TINY_USERS, TINY_ITEMS, 4, 4, hops)
    assert user_mask.dtype == torch.bool and user_mask.shape == (4,) and item_mask.shape == (4,)
    assert (_set(user_mask), _set(item_mask)) == (users, items)


def test_khop_accepts_numpy_and_torch_alike_and_rejects_bad_input():
    a = khop_nodes(np.array([2]), np.array([0]), np.array(TINY_USERS), np.array(TINY_ITEMS), 4, 4, 2)
    b = khop_nodes(torch.tensor([2]), torch.tensor([0]), torch.tensor(TINY_USERS), torch.tensor(TINY_ITEMS),
                   4, 4, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="hops"):
        khop_nodes([0], [], TINY_USERS, TINY_ITEMS, 4, 4, -1)
    with pytest.raises(IndexError, match="user"):
        khop_nodes([4], [], TINY_USERS, TINY_ITEMS, 4, 4, 1)
    with pytest.raises(ValueError, match="length"):
        khop_nodes([0], [], TINY_USERS, TINY_ITEMS[:-1], 4, 4, 1)


def test_one_layer_on_the_hand_built_graph_uses_full_degrees():
    """Written out by hand: d_u0 = 2, d_i0 = 1, d_i1 = 2. The edge u1-i1 is not propagated over for
    one layer into u0, yet it counts in d_i1 (the full-graph degree)."""
    torch.manual_seed(0)
    user0, item0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    du = torch.tensor([2.0, 2.0, 1.0, 1.0])
    di = torch.tensor([1.0, 2.0, 2.0, 1.0])
    out = local_light_embeddings(user0, item0, TINY_USERS, TINY_ITEMS, du, di, [0, 3], [3], n_layers=1)
    expect_u0 = (user0[0] + item0[0] / math.sqrt(2 * 1) + item0[1] / math.sqrt(2 * 2)) / 2
    expect_u3 = (user0[3] + item0[3]) / 2
    expect_i3 = (item0[3] + user0[3]) / 2
    torch.testing.assert_close(out.users, torch.stack([expect_u0, expect_u3]), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.items, expect_i3[None], rtol=0, atol=1e-15)
    assert sorted(out.subgraph.edges.tolist()) == [0, 1, 5]  # u0's two edges and u3-i3


# --------------------------------------------------------------------------- synthetic graph


@pytest.fixture(scope="module")
def synthetic():
    data = generate_synthetic(300, 150, seed=0, modalities={})
    graph = build_rec_graph(data, with_knn=False)
    users, items = data.train_pairs
    return SimpleNamespace(data=data, graph=graph, users=torch.from_numpy(users),
                           items=torch.from_numpy(items))


def _float64_graph(ui):
    """The project's full-graph adjacency with R̂ recomputed in float64 (``build_bipartite`` stores
    float32, which would cap agreement near 1e-7): same CSR structure, values 1/sqrt(d_u d_i)."""

    def csr(mat, row_deg, col_deg):
        crow, col = mat.crow_indices(), mat.col_indices()
        row = torch.repeat_interleave(torch.arange(mat.shape[0]), crow.diff())
        vals = (row_deg.double()[row] * col_deg.double()[col]).rsqrt()
        return torch.sparse_csr_tensor(crow, col, vals, size=mat.shape)

    norm = csr(ui.norm, ui.user_degree, ui.item_degree)
    norm_t = csr(ui.norm_t, ui.item_degree, ui.user_degree)
    return SimpleNamespace(ui=dataclasses.replace(ui, norm=norm, norm_t=norm_t))


def _targets(n_users: int, n_items: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randperm(n_users, generator=g)[:k]
    items = torch.randperm(n_items, generator=g)[:k]
    return torch.cat([users, users[:1]]), torch.cat([items, items[:1]])  # a repeat, in any order


def _local(s, user0, item0, tu, ti, n_layers, **kw):
    ui = s.graph.ui
    return local_light_embeddings(user0, item0, s.users, s.items, ui.user_degree, ui.item_degree,
                                  tu, ti, n_layers, **kw)


def test_float64_reference_is_the_projects_graph(synthetic):
    ui = synthetic.graph.ui
    assert ui.n_local_users == ui.n_users == 300 and ui.n_items == 150
    torch.testing.assert_close(_float64_graph(ui).ui.dense().float(), ui.dense(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_local_equals_full_graph_on_the_targets_float64(synthetic, n_layers):
    s = synthetic
    torch.manual_seed(n_layers)
    user0 = torch.randn(300, 16, dtype=torch.float64)
    item0 = torch.randn(150, 16, dtype=torch.float64)
    full_u, full_i = light_propagate(_float64_graph(s.graph.ui), user0, item0, n_layers)
    tu, ti = _targets(300, 150, 4, seed=10 + n_layers)
    out = _local(s, user0, item0, tu, ti, n_layers)
    assert out.users.shape == (len(tu), 16) and out.items.shape == (len(ti), 16)
    assert (out.users - full_u[tu]).abs().max().item() < 1e-10
    assert (out.items - full_i[ti]).abs().max().item() < 1e-10
    # one hop wider is still exact (only wasteful)
    wider = _local(s, user0, item0, tu, ti, n_layers, hops=n_layers + 1)
    assert (wider.users - full_u[tu]).abs().max().item() < 1e-10
    assert (wider.items - full_i[ti]).abs().max().item() < 1e-10


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_local_matches_the_projects_float32_propagation(synthetic, n_layers):
    """Against ``light_propagate`` on the graph ``build_rec_graph`` really builds (float32 R̂)."""
    s = synthetic
    torch.manual_seed(100 + n_layers)
    user0, item0 = torch.randn(300, 8), torch.randn(150, 8)
    full_u, full_i = light_propagate(s.graph, user0, item0, n_layers)
    tu, ti = _targets(300, 150, 5, seed=20 + n_layers)
    out = _local(s, user0, item0, tu, ti, n_layers)
    torch.testing.assert_close(out.users, full_u[tu], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.items, full_i[ti], rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_uses_fewer_edges_than_the_full_graph(synthetic, n_layers):
    s = synthetic
    n_full = s.graph.ui.n_edges
    tu, ti = _targets(300, 150, 1, seed=31)  # one deleted pair's user and item
    sub = _local(s, torch.zeros(300, 1), torch.zeros(150, 1), tu, ti, n_layers).subgraph
    # this 300x150 graph is small and dense (mean user degree ~12.6, Zipf item popularity): one hop
    # is a few percent of the edges, two about a quarter, three nearly all of it (but still fewer)
    assert 0 < sub.edges.numel() < {1: n_full / 20, 2: n_full / 2, 3: n_full}[n_layers]
    # every edge used lies inside the L-hop subgraph, and touches the (L-1)-ball
    umask, imask = khop_nodes(tu, ti, s.users, s.items, 300, 150, n_layers)
    inner_u, inner_i = khop_nodes(tu, ti, s.users, s.items, 300, 150, n_layers - 1)
    eu, ei = s.users[sub.edges], s.items[sub.edges]
    assert bool((umask[eu] & imask[ei]).all())
    assert bool((inner_u[eu] | inner_i[ei]).all())
    assert torch.equal(sub.users, torch.nonzero(umask).reshape(-1))
    assert torch.equal(sub.items, torch.nonzero(imask).reshape(-1))


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_one_hop_too_few_is_wrong(synthetic, n_layers):
    """The radius is tight: with L-1 hops the answer changes, for every target, so the equality
    above is not vacuous."""
    s = synthetic
    torch.manual_seed(200 + n_layers)
    user0 = torch.randn(300, 16, dtype=torch.float64)
    item0 = torch.randn(150, 16, dtype=torch.float64)
    full_u, full_i = light_propagate(_float64_graph(s.graph.ui), user0, item0, n_layers)
    tu, ti = _targets(300, 150, 4, seed=40 + n_layers)

    short = _local(s, user0, item0, tu, ti, n_layers, hops=n_layers - 1)
    assert short.subgraph.edges.numel() < _local(s, user0, item0, tu, ti, n_layers).subgraph.edges.numel()
    gap_u = (short.users - full_u[tu]).abs().amax(1)
    gap_i = (short.items - full_i[ti]).abs().amax(1)
    assert bool((gap_u > 1e-6).all()) and bool((gap_i > 1e-6).all())  # every target, not just one



@pytest.mark.parametrize("n_layers", [1, 2])
def test_subgraph_degrees_are_wrong_full_degrees_right(synthetic, n_layers):
    """Normalising with the subgraph's own degrees changes the answer; with the full-graph degrees the
    pruned edge list alone is enough. (One target, few layers: there the subgraph is a strict part.)"""
    s = synthetic
    torch.manual_seed(300 + n_layers)
    user0 = torch.randn(300, 16, dtype=torch.float64)
    item0 = torch.randn(150, 16, dtype=torch.float64)
    full_u, _ = light_propagate(_float64_graph(s.graph.ui), user0, item0, n_layers)
    tu = torch.tensor([17])
    sub = local_subgraph(tu, [], s.users, s.items, 300, 150, n_layers)
    eu, ei = s.users[sub.edges], s.items[sub.edges]
    wrong = local_light_embeddings(user0, item0, eu, ei, torch.bincount(eu, minlength=300),
                                   torch.bincount(ei, minlength=150), tu, [], n_layers)
    assert (wrong.users - full_u[tu]).abs().max().item() > 1e-3
    right = local_light_embeddings(user0, item0, eu, ei, s.graph.ui.user_degree, s.graph.ui.item_degree,
                                   tu, [], n_layers)
    assert (right.users - full_u[tu]).abs().max().item() < 1e-10


def test_gradients_match_the_full_graph(synthetic):
    """A deletion-local update differentiates through these embeddings: the gradient of a loss on the
    targets w.r.t. the layer-0 tables is the full graph's."""
    s = synthetic
    torch.manual_seed(7)
    base_u = torch.randn(300, 8, dtype=torch.float64)
    base_i = torch.randn(150, 8, dtype=torch.float64)
    tu, ti = _targets(300, 150, 3, seed=50)

    def grads(fn):
        user0, item0 = base_u.clone().requires_grad_(), base_i.clone().requires_grad_()
        u, i = fn(user0, item0)
        ((u * u).sum() + (i.sin()).sum()).backward()
        return user0.grad, item0.grad

    full = grads(lambda a, b: tuple(x[t] for x, t in zip(
        light_propagate(_float64_graph(s.graph.ui), a, b, 2), (tu, ti), strict=True)))
    local = grads(lambda a, b: _local(s, a, b, tu, ti, 2)[:2])
    for g_full, g_local in zip(full, local, strict=True):
        assert (g_full - g_local).abs().max().item() < 1e-10


def test_khop_agrees_with_pyg(synthetic):
    s = synthetic
    edge_index = to_pyg_edge_index(s.users, s.items, 300)
    tu, ti = _targets(300, 150, 3, seed=60)
    for hops in (1, 2, 3):
        subset, *_ = k_hop_subgraph(torch.cat([tu, ti + 300]), hops, edge_index, num_nodes=450)
        umask, imask = khop_nodes(tu, ti, s.users, s.items, 300, 150, hops)
        assert torch.equal(torch.cat([torch.nonzero(umask), torch.nonzero(imask) + 300]).reshape(-1),
                           subset.sort().values)


def test_zero_layers_and_no_targets(synthetic):
    s = synthetic
    user0, item0 = torch.randn(300, 4), torch.randn(150, 4)
    out = _local(s, user0, item0, [5, 1], [], 0)
    assert torch.equal(out.users, user0[[5, 1]]) and out.items.shape == (0, 4)
    assert out.subgraph.edges.numel() == 0
    empty = _local(s, user0, item0, [], [], 2)
    assert empty.users.shape == (0, 4) and empty.subgraph.edges.numel() == 0
