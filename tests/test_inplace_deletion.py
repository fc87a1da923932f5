"""A deletion whose cost follows the deletion: the user → rows index, pending datasets, graphs
deleted in place with a restorable before-state, and in-place deletions through the methods —
each checked against the copying path it must equal."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tru_dist.config import Config
from tru_dist.data.dataset import TRAIN, VALID, PendingDataset, RecDataset
from tru_dist.data.regimes import forget_set, user_request_table
from tru_dist.data.requests import resolve_requests
from tru_dist.graph.adjacency import StaleGraphError, build_bipartite, delete_edges, delete_edges_in_place
from tru_dist.graph.blocks import graph_neighbourhood
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.registry import build_model
from tru_dist.train.trainer import train_model
from tru_dist.unlearn import get_method
from tru_dist.unlearn.deletion import build_deletion


def _shuffled(data: RecDataset, seed: int = 0) -> RecDataset:
    """The same interactions in a random row order (not sorted by user)."""
    order = np.random.default_rng(seed).permutation(data.n_interactions)
    return dataclasses.replace(data, users=data.users[order], items=data.items[order],
                               labels=data.labels[order])


@pytest.mark.parametrize("shuffle", [False, True])
def test_rows_of_users_and_pair_rows_equal_a_scan_of_the_table(tiny_data, shuffle):
    data = _shuffled(tiny_data) if shuffle else tiny_data
    assert (data.user_row_index[0] is None) != shuffle  # sorted tables keep offsets only
    rng = np.random.default_rng(1)
    users = np.concatenate([rng.choice(data.n_users, 7), [-1, data.n_users, 3, 3]])
    expect = np.flatnonzero(np.isin(data.users, users))
    np.testing.assert_array_equal(data.rows_of_users(users), expect)
    rows = rng.choice(data.n_interactions, 9, replace=False)
    pu = np.concatenate([data.users[rows], [0, -5]])  # plus an absent pair and an unknown id
    pi = np.concatenate([data.items[rows], [data.n_items, 1]])
    np.testing.assert_array_equal(data.pair_rows(pu, pi), np.sort(rows))
    mask = data.pair_mask(pu, pi)
    assert mask.sum() == len(rows) and mask[rows].all()


def test_pending_dataset_equals_the_copied_one_and_chains(tiny_data):
    rng = np.random.default_rng(2)
    first = rng.choice(tiny_data.n_interactions, 30, replace=False)
    second = np.concatenate([first[:10], rng.choice(tiny_data.n_interactions, 20, replace=False)])
    assert len(np.intersect1d(first, second)) >= 10  # overlaps the first: counted once
    p1 = tiny_data.without_rows_at(first)
    p2 = p1.without_rows_at(second)
    assert isinstance(p2, PendingDataset) and "materialised" not in p2.__dict__  # nothing copied yet
    np.testing.assert_array_equal(p2.dropped, np.union1d(first, second))  # ascending, unique: merged
    p3 = p2.without_rows_at(np.concatenate([second[::-1], second]))  # only rows already gone, repeated
    np.testing.assert_array_equal(p3.dropped, p2.dropped)
    assert p3.meta["deleted_interactions"] == p2.meta["deleted_interactions"]
    drop = np.zeros(tiny_data.n_interactions, dtype=bool)
    drop[first] = True
    drop[second] = True
    ref = tiny_data.without_rows(drop)
    got = p2.materialised
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    n_gone = len(np.union1d(first, second))
    assert got.meta["deleted_interactions"] == n_gone == ref.meta["deleted_interactions"]
    assert p2.n_interactions == ref.n_interactions
    assert p2.split_counts == {lab: int((ref.labels == lab).sum()) for lab in (0, 1, 2)}
    users = rng.choice(tiny_data.n_users, 10)
    rows = p2.rows_of_users(users)  # positions in the base table, the dropped ones left out
    assert not np.isin(rows, np.union1d(first, second)).any()
    np.testing.assert_array_equal(np.sort(tiny_data.users[rows]),
                                  np.sort(ref.users[np.isin(ref.users, users)]))


def test_resolving_on_a_pending_dataset_equals_resolving_on_the_copy(tiny_data):
    done = forget_set(tiny_data, "users", 0.05, seed=0)
    pending = tiny_data.without_rows_at(tiny_data.pair_rows(done.users, done.items))
    left = np.setdiff1d(np.unique(tiny_data.users[tiny_data.labels == TRAIN]), done.users)[:6]
    pair_rows = pending.rows_of_users(left[:2])
    table = user_request_table(left[2:], "test")
    a = resolve_requests(pending, table, regime="users")
    b = resolve_requests(pending.materialised, table, regime="users")
    for name in ("users", "items", "labels", "removed_users"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(a.removed_users) == 4
    with pytest.raises(Exception, match="no interactions left"):  # a user already deleted
        resolve_requests(pending, user_request_table(done.users[:1], "test"), regime="users")
    assert len(pair_rows)


def _graph(seed=0, n_u=40, n_i=30, n=300):
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, [n_u, n_i], size=(n, 2)), axis=0)
    return n_u, n_i, pairs[:, 0], pairs[:, 1]


def _same(a, b) -> None:
    """Bit-for-bit the same stored graph (values, degrees, deferred item scale)."""
    for name in ("norm", "norm_t"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.crow_indices(), y.crow_indices())
        assert torch.equal(x.col_indices(), y.col_indices())
        assert torch.equal(x.values(), y.values()), name
    assert torch.equal(a.user_degree, b.user_degree) and torch.equal(a.item_degree, b.item_degree)
    assert a.n_zero_entries == b.n_zero_entries
    for name in ("item_scale", "stored_item_degree"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), name


def _equivalent(a, b) -> None:
    """The same matrix R̂ (to float32 rounding of the deferred item scale), degrees and edges."""
    assert torch.equal(a.user_degree, b.user_degree) and torch.equal(a.item_degree, b.item_degree)
    assert a.n_edges == b.n_edges
    torch.testing.assert_close(a.dense(), b.dense(), rtol=2e-7, atol=0)
    torch.testing.assert_close(a.dense().T, a.norm_t.to_dense() * (1 if a.item_scale is None
                                                                  else a.item_scale[:, None]),
                               rtol=0, atol=0)
    x = torch.randn(a.n_items, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    y = torch.randn(a.n_local_users, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.users_from_items(x), b.users_from_items(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.items_from_users(y), b.items_from_users(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [6, 140])  # 140 of ~290 edges: past the compaction share
def test_in_place_deletion_equals_the_copying_one_and_restores_the_graph_before(size):
    n_u, n_i, u, i = _graph()
    rng = np.random.default_rng(size)
    drop = rng.choice(len(u), size=size, replace=False)
    g = build_bipartite(n_u, n_i, u, i)
    pristine = build_bipartite(n_u, n_i, u, i)
    expect = delete_edges(g, u[drop], i[drop])
    _same(g, pristine)  # the copying path leaves its input alone
    _equivalent(expect, build_bipartite(n_u, n_i, np.delete(u, drop), np.delete(i, drop)))
    after, before = delete_edges_in_place(g, u[drop], i[drop])
    _equivalent(after, expect)
    if size == 6:  # no compaction: the very arrays of the input were overwritten
        assert after.norm.values().data_ptr() == g.norm.values().data_ptr()
        assert not torch.equal(g.norm.values(), pristine.norm.values())
        assert after.item_scale is not None and (after.item_scale != 1).any()
    else:  # compaction rebuilt the graph exactly: no deferred scale left
        assert after.item_scale is None
        _same(after, expect)
    _same(before.restore(), pristine)
    # a second in-place deletion on the same arrays makes the first before-state stale
    rest = np.setdiff1d(np.arange(len(u)), drop)[:3]
    after_values = {k: getattr(after, k).values().clone() for k in ("norm", "norm_t")}
    after_scale = None if after.item_scale is None else after.item_scale.clone()
    after2, before2 = delete_edges_in_place(after, u[rest], i[rest])
    _equivalent(after2, delete_edges(expect, u[rest], i[rest]))
    restored = before2.restore()
    _equivalent(restored, expect)
    for k in ("norm", "norm_t"):
        assert torch.equal(getattr(restored, k).values(), after_values[k])
    assert (after_scale is None) == (restored.item_scale is None)
    assert after_scale is None or torch.equal(restored.item_scale, after_scale)
    # the copying path on a graph with a deferred scale writes the affected columns exactly
    _equivalent(delete_edges(after2, u[drop[:0]], i[drop[:0]]), after2)
    more = np.setdiff1d(np.arange(len(u)), np.concatenate([drop, rest]))[:4]
    _equivalent(delete_edges(after2, u[more], i[more]),
                build_bipartite(n_u, n_i, np.delete(u, np.concatenate([drop, rest, more])),
                                np.delete(i, np.concatenate([drop, rest, more]))))
    if size == 6:
        with pytest.raises(StaleGraphError, match="later in-place deletion"):
            before.restore()


def test_in_place_deletion_writes_only_the_deleted_users_rows():
    """The deferred item scale is what makes the cost follow the deletion: deleting one user in
    place overwrites only entries of that user's row (and their mirror in R̂ᵀ), never the
    other entries of its items' columns — which the copying path rewrites."""
    n_u, n_i, u, i = _graph(seed=3, n=600)
    user = int(np.bincount(u).argmax())
    mine = u == user
    g = build_bipartite(n_u, n_i, u, i)
    col_entries = int(sum((i == it).sum() for it in i[mine]))
    after, before = delete_edges_in_place(g, u[mine], i[mine])
    written = np.unique(np.concatenate([x.positions for x in before.undo[:1]]))
    crow = g.norm.crow_indices().numpy()
    assert set(written) <= set(range(crow[user], crow[user + 1]))
    assert len(np.unique(before.undo[1].positions)) == mine.sum() < col_entries
    _equivalent(after, build_bipartite(n_u, n_i, u[~mine], i[~mine]))


def _cfg() -> Config:
    return Config.from_dict({
        "model": {"name": "lightgcn", "dim": 16},
        "train": {"lr": 0.02, "batch_size": 512, "epochs": 8, "patience": 0, "eval_every": 8,
                  "progress": "off"},
        "eval": {"ks": [20]},
        "unlearn": {"epochs": 2, "lr": 0.02, "batch_size": 64},
    })


@pytest.fixture(scope="module")
def fitted(tiny_data):
    cfg = _cfg()
    graph = build_rec_graph(tiny_data, with_knn=False)
    model = build_model(cfg.model, graph, seed=0)
    train_model(model, graph, tiny_data, cfg)
    model.eval()
    return cfg, model


def _params_equal(a, b) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def _params_close(a, b) -> bool:
    """Equal up to the float32 rounding the deferred item scale introduces (1e-5 relative)."""
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in pairs)


@pytest.mark.parametrize("method", ["tru", "noop", "reverse_bpr"])
def test_an_in_place_deletion_gives_what_the_copying_one_gives(tiny_data, fitted, method):
    """Whole-user deletion through a method: the same parameters, D_r, graph after and graph
    before as the copying path; TRU (no step here) and noop reset the rows in the caller's model
    itself; reverse_bpr (which steps, and reads the graph before) leaves it alone."""
    cfg, trained = fitted
    forget = forget_set(tiny_data, "users", 0.05, seed=3)
    graph = build_rec_graph(tiny_data, with_knn=False)
    ref_del = build_deletion(tiny_data, graph, forget)
    ref = get_method(method).unlearn(trained, ref_del, cfg)
    model = copy.deepcopy(trained)
    fresh_graph = build_rec_graph(tiny_data, with_knn=False)
    deletion = build_deletion(tiny_data, fresh_graph, forget, in_place=True)
    out = get_method(method).unlearn(model, deletion, cfg)
    assert _params_close(out.model, ref.model)
    assert out.stats["steps"] == ref.stats["steps"]
    assert not _params_equal(out.model, trained)  # something was forgotten (rows reset at least)
    if method == "reverse_bpr":
        assert out.stats["steps"] > 0 and out.model is not model and _params_equal(model, trained)
    else:
        assert out.stats["steps"] == 0 and out.model is model  # reset in place, no copy
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(deletion.data_after, name), getattr(ref_del.data_after, name))
    _equivalent(deletion.graph_after.ui, ref_del.graph_after.ui)
    _same(deletion.graph_before.ui, graph.ui)


def test_a_stream_of_in_place_requests_equals_the_ledgers_rebuilt_path(tiny_data, fitted):
    """Three single-user requests applied in place, each on the state the last one left,
    land where applying them one at a time through the ledger's deletion step (before-state =
    the original minus the earlier requests, rebuilt each time) lands."""
    cfg, trained = fitted
    users = np.unique(tiny_data.users[tiny_data.labels == TRAIN])[[5, 50, 90]]
    tables = [user_request_table(np.array([u]), "test") for u in users]
    graph = build_rec_graph(tiny_data, with_knn=False)
    method = get_method("tru")

    ref_model, earlier_u, earlier_i = trained, [], []
    for table in tables:
        forget = resolve_requests(tiny_data, table, regime="users")
        earlier = (np.concatenate(earlier_u or [np.zeros(0, np.int64)]),
                   np.concatenate(earlier_i or [np.zeros(0, np.int64)]))
        ref_del = build_deletion(tiny_data, graph, forget, earlier=earlier)
        ref_model = method.unlearn(ref_model, ref_del, cfg).model
        earlier_u.append(forget.users)
        earlier_i.append(forget.items)

    model, data, g = copy.deepcopy(trained), tiny_data, build_rec_graph(tiny_data, with_knn=False)
    for table in tables:
        forget = resolve_requests(data, table, regime="users")
        deletion = build_deletion(data, g, forget, in_place=True)
        model = method.unlearn(model, deletion, cfg).model
        data, g = deletion.after_state, deletion.graph_after
    assert isinstance(data, PendingDataset)
    assert _params_close(model, ref_model) and not _params_equal(model, trained)
    _equivalent(g.ui, ref_del.graph_after.ui)
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(data.materialised, name), getattr(ref_del.data_after, name))
    assert data.split_counts[VALID] == int((ref_del.data_after.labels == VALID).sum())


def test_a_deletion_that_leaves_no_train_pair_is_refused_before_the_graph_changes(tiny_data):
    """Earlier requests plus this batch deleting every train pair leave nothing to retain (TRU's
    retain stream raised a bare ValueError): a one-line RequestError counting the pairs, raised
    before an in-place deletion overwrites the graph; one pair fewer is still a deletion."""
    from tru_dist.errors import RequestError

    users = np.unique(tiny_data.users[tiny_data.labels == TRAIN])
    earlier = resolve_requests(tiny_data, user_request_table(users[:-1], "test"), regime="users")
    last = resolve_requests(tiny_data, user_request_table(users[-1:], "test"), regime="users")
    graph = build_rec_graph(tiny_data, with_knn=False)
    before = graph.ui.norm.to_dense().clone()
    n_train = int((tiny_data.labels == TRAIN).sum())
    counted = rf"every train interaction \({n_train} of {n_train}, with earlier"
    with pytest.raises(RequestError, match=counted):
        build_deletion(tiny_data, graph, last, earlier=(earlier.users, earlier.items), in_place=True)
    assert torch.equal(graph.ui.norm.to_dense(), before)  # refused before anything was deleted
    everyone = resolve_requests(tiny_data, user_request_table(users, "test"), regime="users")
    with pytest.raises(RequestError, match="delete less"):
        build_deletion(tiny_data, graph, everyone)
    assert build_deletion(tiny_data, graph, earlier).data_after.split_counts[TRAIN] > 0


@pytest.mark.parametrize("name", ["lightgcn", "mgcn", "miggt"])
def test_models_read_the_deferred_item_scale(name):
    """Every backbone propagates the same R̂ whether the deletion renormalised the item columns
    (copying path) or deferred them to the item scale (in place) — full propagation for all
    three, and the deletion-local neighbourhood for the two that have one."""
    from tru_dist.config import build_config
    from tru_dist.data.synthetic import generate_synthetic

    data = generate_synthetic(300, 200, modalities={"image": 16, "text": 8}, seed=1)
    train = data.labels == TRAIN
    users, items = data.users[train], data.items[train]
    gone = np.isin(users, [3, 17, 41]) | (np.arange(len(users)) % 9 == 0)  # users and interactions
    copied = build_rec_graph(data, knn_k=5).without_edges(users[gone], items[gone])
    in_place, _ = build_rec_graph(data, knn_k=5).without_edges_in_place(users[gone], items[gone])
    assert in_place.ui.item_scale is not None and copied.ui.item_scale is None
    model = build_model(build_config(model=name).model, copied, seed=0).eval()  # no dropout
    ref, got = model.embed(copied), model.embed(in_place)
    torch.testing.assert_close(got.user, ref.user, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.item, ref.item, rtol=1e-5, atol=1e-6)
    if model.local_embedding:
        tu, ti = torch.tensor([5, 3, 100, 7]), torch.tensor([0, 199, 50, 3])
        local = model.embed_targets(in_place, tu, ti)
        torch.testing.assert_close(local.user[tu], ref.user[tu], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(local.item[ti], ref.item[ti], rtol=1e-5, atol=1e-6)


def _items_from_users_probe(rank: int, world: int) -> float:
    """One shard of a W = 2 graph: rank 0 deletes 8 of its users in place (past the compaction
    share: exact values, no scale), rank 1 one user (a deferred scale). Returns the largest
    error of ``items_from_users`` against the retained graph's exact R̂ᵀ·user."""
    n_u, n_i, u, i = _graph(seed=0, n_u=40, n_i=15, n=260)
    lo, hi = (0, 20) if rank == 0 else (20, 40)
    g = build_bipartite(n_u, n_i, u, i, user_range=(lo, hi))
    sel = np.isin(u, np.arange(8)) if rank == 0 else u == 25
    g, _ = delete_edges_in_place(g, u[sel], i[sel])
    assert (g.item_scale is None) == (rank == 0)  # the two shards hold different forms
    gone = np.isin(u, np.arange(8)) | (u == 25)
    ref = build_bipartite(n_u, n_i, u[~gone], i[~gone],  # whole graph: degrees given, not summed
                          item_degree=np.bincount(i[~gone], minlength=n_i))
    user_emb = torch.randn(n_u, 3, generator=torch.Generator().manual_seed(0))
    got = g.items_from_users(user_emb[lo:hi])
    return float((got - ref.norm_t.to_dense() @ user_emb).abs().max())


def test_sharded_in_place_deletions_agree_when_only_one_shard_compacted():
    """Shards compact on their own, so at W = 2 one may hold exact values while another defers
    its item scale: each must apply its own scale before the all-reduce."""
    from tru_dist.distributed.process_group import spawn_local

    errors = spawn_local(_items_from_users_probe, 2)
    assert max(errors) < 1e-6, errors


def test_a_graph_given_up_to_an_in_place_deletion_refuses_to_be_read():
    """The caller's graph object after an in-place deletion holds neither the before- nor the
    after-state (its arrays were overwritten, its scale not): reading it raises, the after-graph
    (and its device copies) and the restored before-graph read fine — until the next deletion."""
    n_u, n_i, u, i = _graph()
    g = build_bipartite(n_u, n_i, u, i)
    x = torch.ones(n_i, 2)
    after, before = delete_edges_in_place(g, u[:5], i[:5])
    with pytest.raises(StaleGraphError, match="given up"):
        g.users_from_items(x)
    with pytest.raises(StaleGraphError, match="given up"):
        delete_edges(g, u[5:7], i[5:7])
    with pytest.raises(StaleGraphError, match="given up"):  # the neighbourhood path, and MIG-GT's
        graph_neighbourhood(g, torch.tensor([0]), torch.tensor([0]), 2)
    with pytest.raises(StaleGraphError, match="given up"):
        g.rescaled(torch.ones(n_u), torch.ones(n_i))
    moved = after.to("cpu")
    torch.testing.assert_close(moved.users_from_items(x), after.users_from_items(x))
    restored = before.restore()
    restored.items_from_users(torch.ones(n_u, 2))
    delete_edges_in_place(after, u[7:9], i[7:9])
    for stale in (after, moved):
        with pytest.raises(StaleGraphError, match="given up"):
            stale.items_from_users(torch.ones(n_u, 2))
    restored.dense()  # a restored graph owns its arrays: later deletions do not touch it


def test_in_place_deletion_with_earlier_requests_equals_the_copying_one(tiny_data):
    """``earlier`` (the ledger's already-deleted pairs) removed in place first: the before-state
    is D minus earlier, the after-state D minus earlier minus this request — as when copying."""
    earlier = forget_set(tiny_data, "interactions", 0.05, seed=4)
    forget = forget_set(tiny_data.without_rows(tiny_data.pair_mask(earlier.users, earlier.items)),
                        "users", 0.05, seed=5)
    pairs = (earlier.users, earlier.items)
    ref = build_deletion(tiny_data, build_rec_graph(tiny_data, with_knn=False), forget, earlier=pairs)
    got = build_deletion(tiny_data, build_rec_graph(tiny_data, with_knn=False), forget, earlier=pairs,
                         in_place=True)
    assert got.graph_after.ui.n_edges < got.graph_before.ui.n_edges < int(
        (tiny_data.labels == TRAIN).sum())
    _equivalent(got.graph_after.ui, ref.graph_after.ui)
    _equivalent(got.graph_before.ui, ref.graph_before.ui)
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(got.data_after, name), getattr(ref.data_after, name))
        np.testing.assert_array_equal(getattr(got.data_before, name), getattr(ref.data_before, name))
