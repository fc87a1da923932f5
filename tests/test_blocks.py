"""Deletion-local propagation (``tru_dist.graph.blocks``, ``Backbone.embed_targets``,
``unlearn.propagation: local``, ``train.propagation: local``): without a fan-out limit the
neighbourhood computation equals the full-graph one — embeddings, gradients, whole updates and
training runs — and with one it is what it says (at most F neighbours, weights scaled deg/F)."""

from __future__ import annotations

import copy

import pytest
import torch

from tru_dist.config import build_config
from tru_dist.data.regimes import forget_set
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.graph.blocks import light_blocks, neighbourhood, sample_rows
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.base import Rows
from tru_dist.models.lightgcn import light_propagate
from tru_dist.models.registry import build_model
from tru_dist.train.trainer import fit, train_model
from tru_dist.unlearn.deletion import build_deletion
from tru_dist.unlearn.engine import run_update
from tru_dist.unlearn.specs import spec_for


def _float64(csr: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), csr.values().double(), csr.shape)


@pytest.fixture(scope="module")
def small():
    data = generate_synthetic(300, 200, modalities={"image": 16, "text": 8}, seed=1)
    return data, build_rec_graph(data, knn_k=5)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_blocks_equal_full_lightgcn_in_float64(small, layers):
    """Exact (float64, 1e-12) on the targets for every depth, targets given in any order."""
    _, graph = small
    ui = copy.copy(graph.ui)
    ui.norm, ui.norm_t = _float64(graph.ui.norm), _float64(graph.ui.norm_t)
    torch.manual_seed(0)
    user0, item0 = torch.randn(300, 8, dtype=torch.float64), torch.randn(200, 8, dtype=torch.float64)
    full_u, full_i = light_propagate(type("G", (), {"ui": ui})(), user0, item0, layers)
    tu, ti = torch.tensor([250, 3, 100, 7]), torch.tensor([199, 0, 50])
    hood = neighbourhood(ui.norm, ui.norm_t, tu, ti, layers)
    u, i = light_blocks(user0, item0, hood)
    torch.testing.assert_close(u, full_u[tu], rtol=0, atol=1e-12)
    torch.testing.assert_close(i, full_i[ti], rtol=0, atol=1e-12)
    for k in range(layers):  # every depth's node list starts with the previous one's
        assert torch.equal(hood.users[k + 1][: len(hood.users[k])], hood.users[k])
        assert torch.equal(hood.items[k + 1][: len(hood.items[k])], hood.items[k])
    assert len(hood.users[1]) < 300  # and it is a neighbourhood, not the graph


def test_one_layer_hand_computed():
    """u0–i0, u0–i1, u1–i1: R̂ = [[1/√2, 1/2], [0, 1/√2]]; one layer into u0 is
    (e_u0 + e_i0/√2 + e_i1/2) / 2 and into i1 is (e_i1 + e_u0/2 + e_u1/√2) / 2."""
    from tru_dist.graph.adjacency import build_bipartite

    ui = build_bipartite(2, 2, [0, 0, 1], [0, 1, 1])
    user0, item0 = torch.tensor([[1.0], [10.0]]), torch.tensor([[100.0], [1000.0]])
    hood = neighbourhood(ui.norm, ui.norm_t, torch.tensor([0]), torch.tensor([1]), 1)
    u, i = light_blocks(user0, item0, hood)
    assert u.item() == pytest.approx((1 + 100 / 2**0.5 + 1000 / 2) / 2, rel=1e-6)
    assert i.item() == pytest.approx((1000 + 1 / 2 + 10 / 2**0.5) / 2, rel=1e-6)


def test_fanout_keeps_at_most_f_neighbours_with_scaled_weights(small):
    _, graph = small
    norm_t = graph.ui.norm_t  # item rows: popular items have many users
    rows = torch.arange(200)
    full_pos, _, _ = sample_rows(norm_t, rows, 0)
    degree = torch.bincount(full_pos, minlength=200)
    assert int(degree.max()) > 4 and int(degree.min()) <= 4
    pos, cols, vals = sample_rows(norm_t, rows, 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(pos, minlength=200), degree.clamp(max=4))
    assert bool((pos[1:] >= pos[:-1]).all())  # grouped by row, as the exact path
    # a kept entry is a real neighbour and its value the stored one times max(1, deg/F)
    crow, col = norm_t.crow_indices(), norm_t.col_indices()
    for p, c, v in zip(pos.tolist(), cols.tolist(), vals.tolist(), strict=True):
        row_cols = col[crow[p]:crow[p + 1]].tolist()
        stored = float(norm_t.values()[crow[p] + row_cols.index(c)])
        assert v == pytest.approx(stored * max(1.0, float(degree[p]) / 4), rel=1e-6)
    # rows with at most F neighbours are exact: all their entries, unscaled
    exact = torch.nonzero(degree <= 4).reshape(-1)
    for p in exact.tolist()[:20]:
        assert sorted(cols[pos == p].tolist()) == sorted(col[crow[p]:crow[p + 1]].tolist())
    # unbiased: averaged over draws, the sampled row product approaches the exact one
    x = torch.randn(300, dtype=torch.float64)
    exact_sum = torch.zeros(200, dtype=torch.float64).index_add_(
        0, full_pos, norm_t.values().double() * x[norm_t.col_indices()])
    gen, acc = torch.Generator().manual_seed(1), torch.zeros(200, dtype=torch.float64)
    for _ in range(1000):
        p, c, v = sample_rows(norm_t, rows, 4, gen)
        acc.index_add_(0, p, v.double() * x[c])
    error = float((acc / 1000 - exact_sum).abs().mean())
    unscaled = acc / 1000 / (degree.double() / 4).clamp(min=1.0)  # what dropping the deg/F factor gives
    assert error < float((unscaled - exact_sum).abs().mean()) / 3
    assert error < 0.05 * float(exact_sum.abs().mean()) + 0.01


@pytest.mark.parametrize("name", ["lightgcn", "mgcn"])
def test_embed_targets_equals_embed_and_its_gradient(small, name):
    data, graph = small
    cfg = build_config(model=name)
    model = build_model(cfg.model, graph, seed=0)
    assert model.local_embedding
    tu, ti = torch.tensor([5, 3, 100, 7]), torch.tensor([0, 199, 50, 3])
    full, local = model.embed(graph), model.embed_targets(graph, tu, ti)
    torch.testing.assert_close(local.user[tu], full.user[tu], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(local.item[ti], full.item[ti], rtol=1e-5, atol=1e-6)
    for key, value in full.aux.items():
        ids = tu if key.endswith("_user") else ti
        torch.testing.assert_close(local.aux[key][ids], value[ids], rtol=1e-5, atol=1e-6)

    def grads(emb):
        model.zero_grad()
        ((emb.user[tu] @ emb.item[ti].T) ** 2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    g_full, g_local = grads(model.embed(graph)), grads(model.embed_targets(graph, tu, ti))
    assert g_full.keys() == g_local.keys()
    for n in g_full:
        torch.testing.assert_close(g_local[n], g_full[n], rtol=1e-4, atol=1e-6)


def test_rows_refuse_ids_they_do_not_hold():
    rows = Rows(torch.arange(6.0).reshape(3, 2), torch.tensor([7, 2, 5]))
    assert rows[torch.tensor([5, 7])].tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(KeyError, match="not among"):
        rows[torch.tensor([3])]


@pytest.mark.parametrize(("name", "method", "extra", "regime"), [
    ("lightgcn", "tru", ["unlearn.gate.lr=0.01"], "interactions"),  # calibrated gate, isolation, scaling
    ("mgcn", "tru", ["unlearn.gate.enabled=false"], "interactions"),  # isolation and scaling every step
    ("mgcn", "reverse_bpr", [], "interactions"),
    ("mgcn", "reverse_bpr", [], "users"),  # deleted users: their snapshot from the neighbourhood
])
def test_local_update_equals_full_update(tiny_data, name, method, extra, regime):
    """The whole update lands on the same parameters with ``unlearn.propagation: local``
    (fan-out 0) as with full propagation."""
    over = ["train.epochs=10", "unlearn.epochs=2", "unlearn.lr=0.01", "unlearn.gate.max_epochs=3",
            "unlearn.batch_size=128", *extra]
    cfg = build_config(model=name, overrides=over)
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, regime, 0.05, 0))
    assert (len(deletion.reset_users) > 0) == (regime == "users")
    out_full, stats_full = run_update(model, deletion, cfg, spec_for(method, cfg))
    local = build_config(model=name, overrides=[*over, "unlearn.propagation=local"])
    out_local, stats_local = run_update(model, deletion, local, spec_for(method, local))
    assert stats_full["propagation"] == "full" and stats_local["propagation"] == "local"
    assert stats_local["steps"] == stats_full["steps"] > 0
    moved = 0.0
    for (k, a), b in zip(out_full.state_dict().items(), out_local.state_dict().values(), strict=True):
        # float32 rounding differs between the two orders of summation; Adam divides by √v, so on
        # a row whose gradient is ~1e-8 (an item whose only users were deleted) it shows as ~5e-5
        torch.testing.assert_close(b, a, rtol=1e-3, atol=2e-4, msg=k)
        moved = max(moved, float((a - model.state_dict()[k]).abs().max()))
    assert moved > 1e-3  # the update did move the parameters (a do-nothing update would pass above)


def test_local_falls_back_to_full_where_it_cannot_apply(tiny_data):
    cfg = build_config(model="miggt", overrides=["train.epochs=1", "unlearn.epochs=1",
                                                 "unlearn.propagation=local"])
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.05, 0))
    _, stats = run_update(model, deletion, cfg, spec_for("reverse_bpr", cfg))
    assert stats["propagation"] == "full"
    assert "neighbourhood forward" in stats["propagation_note"]


def test_local_training_equals_full_training_without_fanout(tiny_data):
    over = ["train.epochs=2", "train.batch_size=256", "train.eval_every=2"]
    graph = build_rec_graph(tiny_data, with_knn=True)
    states = {}
    for prop in ("full", "local"):
        cfg = build_config(model="mgcn", overrides=[*over, f"train.propagation={prop}"])
        model = build_model(cfg.model, graph, seed=0)
        train_model(model, graph, tiny_data, cfg)
        states[prop] = model.state_dict()
    for k, v in states["full"].items():
        torch.testing.assert_close(states["local"][k], v, rtol=1e-3, atol=1e-5, msg=k)
    # with a fan-out limit it is a different (sampled) computation, and reproducible
    sampled = []
    for _ in range(2):
        cfg = build_config(model="mgcn", overrides=[*over, "train.propagation=local", "train.fanout=2"])
        model = build_model(cfg.model, graph, seed=0)
        train_model(model, graph, tiny_data, cfg)
        sampled.append(model.state_dict())
    assert all(torch.equal(sampled[0][k], sampled[1][k]) for k in sampled[0])
    assert any(not torch.allclose(sampled[0][k], states["full"][k]) for k in sampled[0])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_neighbourhood_nodes_are_pygs_k_hop_subgraph(small, layers):
    """Without a fan-out limit the deepest node lists are exactly PyG's ``k_hop_subgraph`` of the
    targets on the bipartite graph stored as one graph (items offset by n_users)."""
    from torch_geometric.utils import k_hop_subgraph

    _, graph = small
    ui = graph.ui
    u, i = ui.users, ui.items + ui.n_users
    edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    tu, ti = torch.tensor([250, 3, 100]), torch.tensor([199, 0])
    subset, *_ = k_hop_subgraph(torch.cat([tu, ti + ui.n_users]), layers, edge_index,
                                num_nodes=ui.n_users + ui.n_items)
    hood = neighbourhood(ui.norm, ui.norm_t, tu, ti, layers)
    ours = torch.cat([hood.users[layers], hood.items[layers] + ui.n_users]).sort().values
    assert torch.equal(ours, subset.sort().values)
