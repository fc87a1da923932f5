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
    second = rng.choice(tiny_data.n_interactions, 30, replace=False)  # overlaps the first
    p1 = tiny_data.without_rows_at(first)
    p2 = p1.without_rows_at(second)
    assert isinstance(p2, PendingDataset) and "materialised" not in p2.__dict__  # nothing copied yet
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
    for name in ("norm", "norm_t"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.crow_indices(), y.crow_indices())
        assert torch.equal(x.col_indices(), y.col_indices())
        assert torch.equal(x.values(), y.values()), name
    assert torch.equal(a.user_degree, b.user_degree) and torch.equal(a.item_degree, b.item_degree)
    assert a.n_zero_entries == b.n_zero_entries


@pytest.mark.parametrize("size", [6, 140])  # 140 of ~290 edges: past the compaction share
def test_in_place_deletion_equals_the_copying_one_and_restores_the_graph_before(size):
    n_u, n_i, u, i = _graph()
    rng = np.random.default_rng(size)
    drop = rng.choice(len(u), size=size, replace=False)
    g = build_bipartite(n_u, n_i, u, i)
    pristine = build_bipartite(n_u, n_i, u, i)
    expect = delete_edges(g, u[drop], i[drop])
    _same(g, pristine)  # the copying path leaves its input alone
    after, before = delete_edges_in_place(g, u[drop], i[drop])
    _same(after, expect)  # bit for bit
    if size == 6:  # no compaction: the very arrays of the input were overwritten
        assert after.norm.values().data_ptr() == g.norm.values().data_ptr()
        assert not torch.equal(g.norm.values(), pristine.norm.values())
    _same(before.restore(), pristine)
    # a second in-place deletion on the same arrays makes the first before-state stale
    rest = np.setdiff1d(np.arange(len(u)), drop)[:3]
    after2, before2 = delete_edges_in_place(after, u[rest], i[rest])
    _same(after2, delete_edges(expect, u[rest], i[rest]))
    _same(before2.restore(), expect)
    if size == 6:
        with pytest.raises(StaleGraphError, match="later in-place deletion"):
            before.restore()


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
    assert _params_equal(out.model, ref.model)
    assert out.stats["steps"] == ref.stats["steps"]
    assert not _params_equal(out.model, trained)  # something was forgotten (rows reset at least)
    if method == "reverse_bpr":
        assert out.stats["steps"] > 0 and out.model is not model and _params_equal(model, trained)
    else:
        assert out.stats["steps"] == 0 and out.model is model  # reset in place, no copy
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(deletion.data_after, name), getattr(ref_del.data_after, name))
    _same(deletion.graph_after.ui, ref_del.graph_after.ui)
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
    assert _params_equal(model, ref_model) and not _params_equal(model, trained)
    _same(g.ui, ref_del.graph_after.ui)
    for name in ("users", "items", "labels"):
        np.testing.assert_array_equal(getattr(data.materialised, name), getattr(ref_del.data_after, name))
    assert data.split_counts[VALID] == int((ref_del.data_after.labels == VALID).sum())
