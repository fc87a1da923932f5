"""Backbones (LightGCN, MGCN, MIG-GT): parameter partitions, training signal, determinism,
modality handling, MGCN against a dense float64 reference and a gradient check, MIG-GT's
propagation against a dense self-looped reference, and W = 2 workers (gloo) against W = 1."""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tru_dist.config import build_config
from tru_dist.data.dataset import RecDataset
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.errors import ConfigError, DataError
from tru_dist.graph import PartitionBook, build_rec_graph
from tru_dist.models import BPRBatch, build_model
from tru_dist.models.base import Embeddings
from tru_dist.models.miggt import restart_propagate

MODELS = ["lightgcn", "mgcn", "miggt"]
SMALL = ["dim=16", "feat_hidden=16", "gt_samples=4"]


def _model(name, graph, seed=0, extra=()):
    cfg = build_config(model=name, overrides=[*SMALL, *extra])
    return build_model(cfg.model, graph, seed)


def _full_batch(data, seed=0) -> BPRBatch:
    users, items = data.train_pairs
    gen = torch.Generator().manual_seed(seed)
    neg = torch.randint(0, data.n_items, (len(users),), generator=gen)
    return BPRBatch(torch.from_numpy(users), torch.from_numpy(items), neg, 1.0 / len(users))



@pytest.fixture(scope="module")
def tiny_graph(tiny_data):
    return build_rec_graph(tiny_data, knn_k=5)


# -- contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_partitions_cover_every_parameter_exactly_once(name, tiny_graph):
    model = _model(name, tiny_graph)
    every = {id(p) for p in model.parameters()}
    for partition in (model.branches(), model.layer_groups()):
        ids = [id(p) for group in partition.values() for p in group]
        assert len(ids) == len(set(ids)), f"{name}: a parameter sits in two groups"
        assert set(ids) == every, f"{name}: groups miss {len(every - set(ids))} parameters"
    expected = {"id"} | ({"image", "text", "shared"} if name != "lightgcn" else set())
    assert set(model.branches()) == expected
    tables = model.row_tables()
    assert tables["user_emb"][0].shape == (tiny_graph.n_users, 16) and tables["user_emb"][1] == "user"
    assert tables["item_emb"][0].shape == (tiny_graph.n_items, 16) and tables["item_emb"][1] == "item"


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name, tiny_graph):
    emb = _model(name, tiny_graph).embed(tiny_graph)
    assert emb.user.shape == (tiny_graph.n_users, 16)
    assert emb.item.shape == (tiny_graph.n_items, 16)
    assert torch.isfinite(emb.user).all() and torch.isfinite(emb.item).all()


@pytest.mark.parametrize("name", MODELS)
def test_loss_falls_under_adam(name, tiny_data, tiny_graph):
    model = _model(name, tiny_graph)
    probe = _full_batch(tiny_data, seed=123)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = model.loss(probe, tiny_graph).item()
    for step in range(50):
        loss = model.loss(_full_batch(tiny_data, seed=step), tiny_graph)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(probe, tiny_graph).item()
    assert after < 0.7 * before, f"{name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_parameters_and_loss(name, tiny_data, tiny_graph):
    batch = _full_batch(tiny_data)
    a, b, c = (_model(name, tiny_graph, seed) for seed in (7, 7, 8))
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(pa, pb), ka
    assert a.loss(batch, tiny_graph).item() == b.loss(batch, tiny_graph).item()
    assert not torch.equal(a.user_emb, c.user_emb)
    assert a.loss(batch, tiny_graph).item() != c.loss(batch, tiny_graph).item()


@pytest.mark.parametrize("name", ["mgcn", "miggt"])
def test_missing_modalities_is_a_config_error(name, tiny_data):
    bare = tiny_data.with_features({})
    graph = build_rec_graph(bare, knn_k=5)
    with pytest.raises(ConfigError, match="needs at least one item feature modality"):
        _model(name, graph)
    _model("lightgcn", graph).embed(graph)  # the ID-only model runs on the same data


@pytest.mark.parametrize("name", ["mgcn", "miggt"])
@pytest.mark.parametrize("modalities", [{"image": 6}, {"audio": 5, "image": 6, "text": 4}])
def test_any_set_of_modalities(name, modalities):
    data = generate_synthetic(n_users=30, n_items=20, n_clusters=3, seed=1, modalities=modalities,
                              mean_extra_interactions=2)
    graph = build_rec_graph(data, knn_k=3)
    model = _model(name, graph)
    assert set(model.branches()) == {"id", "shared", *modalities}
    loss = model.loss(_full_batch(data), graph)
    loss.backward()
    for m in modalities:  # every modality branch takes part in the loss
        grad = sum(p.grad.abs().sum() for p in model.branches()[m] if p.grad is not None)
        assert grad > 0, f"{name}: no gradient reaches the {m} branch"


@pytest.mark.parametrize("name", ["mgcn", "miggt"])
@pytest.mark.parametrize("bad, why", [("desc.v2", "contains '.'"), ("train", "torch reserves 'train'"),
                                      ("items", "torch reserves 'items'"), ("id", "own 'id' branch"),
                                      ("shared", "own 'shared' branch")])
def test_a_modality_name_a_model_cannot_use_is_a_one_line_data_error(name, bad, why, tiny_data):
    """'desc.v2', 'train' or 'items' was a KeyError traceback from nn.ModuleDict; 'id' or 'shared'
    silently replaced the ID or shared branch in ``branches()`` (TRU's per-branch scaling)."""
    data = tiny_data.with_features({bad: tiny_data.features["image"], "text": tiny_data.features["text"]})
    graph = build_rec_graph(data, knn_k=5)
    with pytest.raises(DataError, match=f"modality '{re.escape(bad)}' .*{re.escape(why)}.*rename"):
        _model(name, graph)
    _model("lightgcn", graph).embed(graph)  # the ID-only model reads no feature: it runs


def test_mismatched_graph_features_is_a_config_error(tiny_data, tiny_graph):
    model = _model("mgcn", tiny_graph)
    other = build_rec_graph(tiny_data.with_features({"image": tiny_data.features["image"]}), knn_k=5)
    with pytest.raises(ConfigError, match="no 'text' features"):
        model.embed(other)


@pytest.mark.parametrize("name", ["mgcn", "miggt"])
def test_float16_feature_slices_give_the_float32_result(name, tiny_graph):
    half = dataclasses.replace(tiny_graph, features={m: f.half() for m, f in tiny_graph.features.items()})
    exact = {m: f.half().float() for m, f in tiny_graph.features.items()}  # same rounding, kept in float32
    rounded = dataclasses.replace(tiny_graph, features=exact)
    model = _model(name, tiny_graph).eval()
    torch.testing.assert_close(model.embed(half).item, model.embed(rounded).item)


# -- MGCN against a dense float64 reference -----------------------------------------------
def _hand_data() -> RecDataset:
    """4 users, 3 items: u0-{i0,i1}, u1-{i0}, u2-{i1,i2}, u3-{i2}; 2-d image features."""
    users = np.array([0, 0, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 1, 2, 2])
    feats = np.array([[1.0, 0.2], [0.9, 0.4], [-0.3, 1.0]], dtype=np.float32)
    return RecDataset(4, 3, users, items, np.zeros(6, dtype=np.int8), {"image": feats})


def _as_double(graph):
    ui = graph.ui
    ui = dataclasses.replace(ui, norm=ui.norm.to(torch.float64), norm_t=ui.norm_t.to(torch.float64),
                             user_degree=ui.user_degree.double(), item_degree=ui.item_degree.double())
    knn = {m: (a.to(torch.float64), at.to(torch.float64)) for m, (a, at) in graph.knn.items()}
    feats = {m: f.double() for m, f in graph.features.items()}
    return dataclasses.replace(graph, ui=ui, knn=knn, features=feats)


def _two_modal_hand_data() -> RecDataset:
    text = np.array([[0.5, -1.0, 0.1], [0.2, 0.3, -0.4], [1.0, 0.0, 0.7]], dtype=np.float32)
    return _hand_data().with_features({"image": _hand_data().features["image"], "text": text})


def test_mgcn_matches_dense_float64_reference():
    data = _two_modal_hand_data()
    graph = _as_double(build_rec_graph(data, knn_k=2))
    model = _model("mgcn", graph, extra=["dim=3", "n_layers=2", "mm_layers=2"]).double()
    emb = model.embed(graph)

    # user-item view by hand: degrees du = [2, 1, 2, 1], di = [2, 2, 2]
    r = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float64)
    r_hat = r / torch.sqrt(torch.tensor([2.0, 1, 2, 1])[:, None] * torch.tensor([2.0, 2, 2])[None, :])
    a = torch.zeros(7, 7, dtype=torch.float64)
    a[:4, 4:], a[4:, :4] = r_hat, r_hat.T
    e0 = torch.cat([model.user_emb, model.item_emb]).detach()
    content = (e0 + a @ e0 + a @ a @ e0) / 3
    # R̂'s entries were rounded to float32 when the graph was built: tolerance 1e-6
    torch.testing.assert_close(emb.aux["content_user"], content[:4], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(emb.aux["content_item"], content[4:], rtol=1e-6, atol=1e-7)

    # item-item views, purifier and fuser written out densely
    views = {}
    for m in ("image", "text"):
        s = graph.knn[m][0].to_dense()
        x = torch.from_numpy(data.features[m]).double()
        p, g = model.proj[m], model.purifier[m]
        purified = model.item_emb * torch.sigmoid((x @ p.weight.T + p.bias) @ g.weight.T + g.bias)
        h_item = s @ s @ purified
        views[m] = torch.cat([r_hat @ h_item, h_item]).detach()
    q1, q2 = model.fuser.query[0], model.fuser.query[2]
    score = {m: torch.tanh(h @ q1.weight.T + q1.bias) @ q2.weight[0] for m, h in views.items()}
    w_img = torch.exp(score["image"]) / (torch.exp(score["image"]) + torch.exp(score["text"]))
    common = w_img[:, None] * views["image"] + (1 - w_img)[:, None] * views["text"]
    side = common.clone()
    for m, h in views.items():
        gate = model.fuser.prefer[m]
        side += torch.sigmoid(content @ gate.weight.T + gate.bias) * (h - common)
    final = (content + side / 3).detach()
    torch.testing.assert_close(emb.user, final[:4], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(emb.item, final[4:], rtol=1e-6, atol=1e-7)


def test_mgcn_gradcheck_float64():
    graph = _as_double(build_rec_graph(_two_modal_hand_data(), knn_k=2))
    model = _model("mgcn", graph, extra=["dim=3", "cl_weight=0.5"]).double()
    batch = BPRBatch(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 2, 2]), torch.tensor([2, 1, 0, 1]), 0.25)
    wrapper = _LossOf(model)
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def loss_of(*values):
        return torch.func.functional_call(wrapper, dict(zip(names, values, strict=True)), (batch, graph))

    assert loss_of(*params).item() > 0
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-7, rtol=1e-5)


class _LossOf(torch.nn.Module):
    """``forward`` = the backbone's loss, so ``functional_call`` can substitute parameters."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, graph):
        return self.model.loss(batch, graph)


# -- MIG-GT --------------------------------------------------------------------------------
def _dense_restart(a: torch.Tensor, h0: torch.Tensor, hops: int, alpha: float) -> torch.Tensor:
    """h ← (1−α) Ã h + α h⁰ with Ã = D̃^{-1/2}(A + I)D̃^{-1/2}, D̃ = deg + 1 (MGDCF), float64."""
    a_loop = a + torch.eye(a.shape[0], dtype=a.dtype)
    inv = a_loop.sum(1).rsqrt()
    a_tilde = inv[:, None] * a_loop * inv[None, :]
    h = h0
    for _ in range(hops):
        h = (1 - alpha) * a_tilde @ h + alpha * h0
    return h


def _hand_adjacency() -> torch.Tensor:
    r = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float64)
    a = torch.zeros(7, 7, dtype=torch.float64)
    a[:4, 4:], a[4:, :4] = r, r.T
    return a


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_miggt_propagation_matches_dense_self_looped_reference(hops):
    graph = _as_double(build_rec_graph(_hand_data(), knn_k=2))
    gen = torch.Generator().manual_seed(hops)
    user0, item0 = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(3, 3, generator=gen,
                                                                                     dtype=torch.float64)
    u, i = restart_propagate(graph, user0, item0, hops, alpha=0.2)
    ref = _dense_restart(_hand_adjacency(), torch.cat([user0, item0]), hops, 0.2)
    torch.testing.assert_close(torch.cat([u, i]), ref, rtol=1e-6, atol=1e-7)
    u, i = restart_propagate(graph, user0, None, hops, alpha=0.2)  # items start at zero
    ref = _dense_restart(_hand_adjacency(), torch.cat([user0, torch.zeros_like(item0)]), hops, 0.2)
    torch.testing.assert_close(torch.cat([u, i]), ref, rtol=1e-6, atol=1e-7)


def test_miggt_matches_dense_reference_with_sampled_global_attention():
    graph = _as_double(build_rec_graph(_hand_data(), knn_k=2))
    model = _model("miggt", graph, extra=["dim=4", "gt_samples=3", "gt_alpha=0.3", "ppr_alpha=0.1",
                                          "modality_layers={id: 2, image: 1}", "feat_hidden=5"]).double()
    model.eval()
    emb = model.embed(graph)
    x = torch.from_numpy(_hand_data().features["image"]).double()
    e0 = torch.cat([model.user_emb, model.item_emb])
    feat0 = torch.cat([torch.zeros(4, 4, dtype=torch.float64), model.encoders["image"](x)])
    adj = _hand_adjacency()
    z = (_dense_restart(adj, e0, 2, 0.1) + _dense_restart(adj, feat0, 1, 0.1)).detach()
    samples = torch.cat([emb.aux["gt_user_samples"], emb.aux["gt_item_samples"]])
    assert samples.shape == (7, 3) and samples.max() < 3
    q, k = model.gt.q, model.gt.k
    wq, bq, wk, bk = (t.detach() for t in (q.weight, q.bias, k.weight, k.bias))
    expected = torch.empty_like(z)
    for n in range(7):  # one node at a time, straight from the formula
        memory = torch.cat([z[n : n + 1], z[4 + samples[n]]])
        scores = (memory @ wk.T + bk) @ (wq @ z[n] + bq) / 2.0  # √(att_dim = 4)
        expected[n] = 0.3 * torch.softmax(scores, 0) @ memory + 0.7 * z[n]
    torch.testing.assert_close(torch.cat([emb.user, emb.item]).detach(), expected, rtol=1e-6, atol=1e-7)


def test_miggt_sampling_is_fresh_in_training_and_fixed_in_evaluation(tiny_graph):
    model = _model("miggt", tiny_graph, extra=["dropout=0.3"])
    first, second = model.embed(tiny_graph), model.embed(tiny_graph)
    assert not torch.equal(first.aux["gt_item_samples"], second.aux["gt_item_samples"])
    assert not torch.equal(first.item, second.item)
    model.eval()
    third, fourth = model.embed(tiny_graph), model.embed(tiny_graph)
    assert torch.equal(third.user, fourth.user) and torch.equal(third.item, fourth.item)
    twin = _model("miggt", tiny_graph, extra=["dropout=0.3"])  # same seed: same stream from the start
    assert torch.equal(twin.embed(tiny_graph).item, first.item)


def test_miggt_reuses_a_frozen_encoders_view_only_while_it_cannot_change(tiny_data, tiny_graph):
    """Inside ``constant_branches`` a modality whose encoder has requires_grad False is encoded
    once and reused — the embeddings equal those computed without the context, bit for bit —
    and re-encoded after a write to its parameters (a restored state) or when it trains."""
    model = _model("miggt", tiny_graph).eval()
    reference = model.embed(tiny_graph)
    calls = {m: 0 for m in model.modalities}
    for m in model.modalities:
        model.encoders[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    frozen = model.modalities[0]
    for q in model.encoders[frozen].parameters():
        q.requires_grad_(False)
    with model.constant_branches():
        views = [model.embed(tiny_graph) for _ in range(3)]
        assert calls[frozen] == 1 and all(calls[m] == 3 for m in model.modalities[1:])
        for v in views:
            assert torch.equal(v.user, reference.user) and torch.equal(v.item, reference.item)
        with torch.no_grad():
            next(model.encoders[frozen].parameters()).mul_(1.5)  # a written parameter: re-encoded
        changed = model.embed(tiny_graph)
        assert calls[frozen] == 2 and not torch.equal(changed.item, reference.item)
        other = build_rec_graph(tiny_data, knn_k=5)  # another graph object: encoded afresh
        model.embed(other)
        assert calls[frozen] == 3
        model.train()  # dropout draws fresh masks every call: nothing is reused
        model.cfg.dropout = 0.3
        model.embed(tiny_graph), model.embed(tiny_graph)
        assert calls[frozen] == 5
        model.cfg.dropout = 0.0
    model.eval().embed(tiny_graph)  # outside the context: computed every call
    assert calls[frozen] == 6


def test_miggt_hands_a_no_grad_id_propagation_on_to_the_next_grad_call_only(tiny_graph, monkeypatch):
    """Inside ``constant_branches`` a no-grad forward (a gate pass) builds the ID propagation with
    autograd on; the grad-enabled forward right after (the step) takes it instead of propagating
    again, with the same embeddings and the same gradient as a fresh forward. It is taken once,
    and never after a write to an ID table (an optimizer step or a restored state). The
    self-looped adjacency Ã, a constant of the graph, is built once in the context."""
    import copy

    import tru_dist.models.miggt as miggt

    model = _model("miggt", tiny_graph)
    for q in model.encoders.parameters():  # an unlearning update: only the ID rows move
        q.requires_grad_(False)
    calls = {"n": 0}
    real = miggt.restart_propagate

    def counted(graph, user0, item0, *args):
        calls["n"] += user0 is model.user_emb  # the ID branch of `model` (not of its copies)
        return real(graph, user0, item0, *args)

    monkeypatch.setattr(miggt, "restart_propagate", counted)
    built = {"n": 0}
    real_of = miggt.SelfLoopedGraph.of

    def counted_of(graph, dtype):
        built["n"] += 1
        return real_of(graph, dtype)

    monkeypatch.setattr(miggt.SelfLoopedGraph, "of", staticmethod(counted_of))

    def loss_and_grad(m):
        emb = m.embed(tiny_graph)
        loss = (emb.user[:7] @ emb.item[:5].T).pow(2).sum() + emb.item.sum()
        return emb, torch.autograd.grad(loss, [m.user_emb, m.item_emb])

    def assert_fresh(emb, grads, twin):  # the same forward and gradient as a copy propagating afresh
        reference_emb, reference_grads = loss_and_grad(twin)
        assert torch.equal(emb.user, reference_emb.user) and torch.equal(emb.item, reference_emb.item)
        for g, r in zip(grads, reference_grads, strict=True):
            assert torch.equal(g, r)

    with model.constant_branches():
        with torch.no_grad():
            model.embed(tiny_graph)  # the gate pass
            seen = model.handed_on_branch(("id", torch.float32, torch.device("cpu")), tiny_graph,
                                          [model.user_emb, model.item_emb], lambda: None)
            assert not any(t.requires_grad for t in seen)  # a no-grad caller reads it detached
        assert calls["n"] == 1
        twin = copy.deepcopy(model)  # same parameters and sampling stream, outside the context
        emb, grads = loss_and_grad(model)  # the step takes the gate pass's propagation
        assert calls["n"] == 1
        assert_fresh(emb, grads, twin)
        loss_and_grad(model)  # taken once (its graph is freed): the next grad call propagates itself
        assert calls["n"] == 2
        with torch.no_grad():
            model.user_emb.add_(0.01 * grads[0])  # the step's optimizer write
        with torch.no_grad():
            model.embed(tiny_graph)  # a gate pass ...
            assert calls["n"] == 3
            model.user_emb.mul_(1.5)  # ... then a put-back: what it stored is stale
        twin = copy.deepcopy(model)
        emb, grads = loss_and_grad(model)
        assert calls["n"] == 4
        assert_fresh(emb, grads, twin)
    assert built["n"] == 1 + 2  # Ã once per graph inside the context (+ the two copies' own)
    with torch.no_grad():
        model.embed(tiny_graph)  # outside the context: nothing is stored
    loss_and_grad(model)
    assert calls["n"] == 6


def test_mgcn_reuses_a_frozen_purifier_gate_only_while_it_cannot_change(tiny_data, tiny_graph):
    """Inside ``constant_branches`` the purifier gate σ(W_m(X_m P_m + p_m) + b_m) of a modality
    whose ``proj`` and ``purifier`` are frozen is computed once — the embeddings equal those
    computed without the context, bit for bit, while the ID rows move — and recomputed after a
    write to those parameters, for another graph, or while one of them trains."""
    model = _model("mgcn", tiny_graph).eval()
    calls = {m: 0 for m in model.modalities}
    for m in model.modalities:
        model.proj[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    frozen = model.modalities[0]
    for q in [*model.proj[frozen].parameters(), *model.purifier[frozen].parameters()]:
        q.requires_grad_(False)
    with model.constant_branches():
        for step in range(3):
            with torch.no_grad():
                model.item_emb.add_(0.01 * (step + 1))  # the ID rows move: the gate may not
            got = model.embed(tiny_graph)
            with _without_constant_store(model):
                want = model.embed(tiny_graph)
            assert torch.equal(got.user, want.user) and torch.equal(got.item, want.item)
        assert calls[frozen] == 1 + 3 and calls[model.modalities[1]] == 3 + 3  # + the references
        with torch.no_grad():
            model.purifier[frozen].bias.add_(0.5)  # a written parameter: recomputed
        changed = model.embed(tiny_graph)
        assert calls[frozen] == 5
        with _without_constant_store(model):
            assert torch.equal(changed.item, model.embed(tiny_graph).item)
        model.embed(build_rec_graph(tiny_data, knn_k=5))  # another graph object: computed afresh
        assert calls[frozen] == 7
        model.purifier[frozen].bias.requires_grad_(True)  # a live parameter: never reused
        model.embed(tiny_graph), model.embed(tiny_graph)
        assert calls[frozen] == 9


@contextmanager
def _without_constant_store(model):
    """The reference computation: ``embed`` with the model's constant-branch store set aside."""
    from tru_dist.models.base import _CONSTANT_STORES

    store = _CONSTANT_STORES.pop(model)
    try:
        yield
    finally:
        _CONSTANT_STORES[model] = store


def test_miggt_tur_loss_is_the_positive_cross_entropy(tiny_data, tiny_graph):
    model = _model("miggt", tiny_graph, extra=["cl_weight=1.0"])
    batch = _full_batch(tiny_data)
    emb = model.embed(tiny_graph)
    b = 5  # one pair by hand: CE over <e_u, T_{i,s}>, slot 0 = the positive itself
    u, i = batch.users[b], batch.pos[b]
    z, samples = emb.aux["gt_item_input"], emb.aux["gt_item_samples"]
    memory = torch.cat([z[i : i + 1], z[samples[i]]])
    transformed = model.gt(memory.unsqueeze(0), memory.unsqueeze(0))[0]
    torch.testing.assert_close(transformed[0], emb.item[i])
    logits = transformed @ emb.user[u]
    one = BPRBatch(batch.users[b : b + 1], batch.pos[b : b + 1], batch.neg[b : b + 1], 1.0)
    torch.testing.assert_close(model.extra_loss(emb, one), torch.logsumexp(logits, 0) - logits[0])


# -- W = 2 workers (gloo) against W = 1 --------------------------------------------------------
W_OVERRIDES = {"mgcn": ["dim=8", "cl_weight=0.5"], "miggt": ["dim=8", "feat_hidden=8", "gt_samples=3",
                                                             "dropout=0.2"]}


def _w_data():
    return generate_synthetic(n_users=40, n_items=30, n_clusters=3, seed=2,
                              modalities={"image": 6, "text": 5}, mean_extra_interactions=3)


def _w_batch(data):
    rng = np.random.default_rng(0)
    users, items = data.train_pairs
    pick = rng.choice(len(users), 48, replace=False)
    return users[pick], items[pick], rng.integers(0, data.n_items, 48)


def _loss_and_grads(rank: int, world: int) -> dict:
    """This worker's share of the loss and its gradients (replicated ones summed over workers)."""
    from tru_dist import comm as collectives

    data = _w_data()
    book = PartitionBook.contiguous(data.n_users, data.n_items, world)
    graph = build_rec_graph(data, knn_k=4, book=book, rank=rank)
    users, pos, neg = _w_batch(data)
    lo, hi = book.user_range(rank)
    mine = (users >= lo) & (users < hi)
    batch = BPRBatch(torch.from_numpy(users[mine] - lo), torch.from_numpy(pos[mine]),
                     torch.from_numpy(neg[mine]), 1.0 / len(users))
    out = {}
    for name, extra in W_OVERRIDES.items():
        model = build_model(build_config(model=name, overrides=extra).model, graph, seed=5)
        loss = model.loss(batch, graph)
        loss.backward()
        collectives.sum_grads(model.replicated_parameters())
        out[name] = {"loss": collectives.sum_stats(loss.detach().clone()).item(),
                     "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_loss_and_grads(rank, world), f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while its peer is still mid-collective
    finally:
        dist.destroy_process_group()


def test_two_workers_compute_the_single_process_loss_and_gradient(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _loss_and_grads(0, 1)
    for name in W_OVERRIDES:
        assert parts[0][name]["loss"] == pytest.approx(single[name]["loss"], rel=1e-5)
        for key, grad in single[name]["grads"].items():
            if key == "user_emb":  # user rows are sharded: concatenate the workers' rows
                got = torch.cat([parts[0][name]["grads"][key], parts[1][name]["grads"][key]])
            else:
                got = parts[0][name]["grads"][key]
                torch.testing.assert_close(parts[1][name]["grads"][key], got)
            torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")


def test_miggt_embed_rows_are_embeds_rows_with_the_same_gradients(tiny_graph):
    """``embed_rows`` (attention on the asked rows only) gives ``embed``'s rows bit for bit, in
    training mode too (the same random draws), and a loss on those rows the same gradients on
    the ID tables up to float rounding — what lets an unlearning step take it in place of
    ``embed``. The fast path is
    really taken (``cheap_rows``); a backbone without it returns ``embed``'s rows."""
    users = torch.arange(0, tiny_graph.n_users, 3)
    items = torch.arange(1, tiny_graph.n_items, 4)
    grads = {}
    for how in ("embed", "rows"):
        model = _model("miggt", tiny_graph)  # the same seed: the same weights and random stream
        assert model.cheap_rows
        if how == "embed":
            full = model.embed(tiny_graph)
            u, i = full.user[users], full.item[items]
        else:
            part = model.embed_rows(tiny_graph, users, items)
            u, i = part.user[users], part.item[items]
            assert len(part.user) == len(users) and len(part.item) == len(items)
        loss = (u.sum(1) * torch.linspace(-1, 1, len(users))).sum() + i.pow(2).sum()
        grads[how] = (u.detach(), i.detach(),
                      *torch.autograd.grad(loss, [model.user_emb, model.item_emb]))
    for a, b in zip(grads["embed"][:2], grads["rows"][:2], strict=True):  # the rows: bit for bit
        assert torch.equal(a, b)
    for a, b in zip(grads["embed"][2:], grads["rows"][2:], strict=True):  # the backward sums the
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)  # attention's paths in another order
    assert grads["rows"][2].abs().sum() > 0  # the gradients are not trivially both zero
    empty = _model("miggt", tiny_graph).embed_rows(tiny_graph, users, users.new_zeros(0))
    assert empty.item.values.shape == (0, 16)
    no_users = _model("miggt", tiny_graph).embed_rows(tiny_graph, users.new_zeros(0), items)  # a rank
    assert no_users.user.values.shape == (0, 16)  # holding no forget user at W > 1
    lightgcn = _model("lightgcn", tiny_graph)
    assert not lightgcn.cheap_rows
    ref = lightgcn.embed(tiny_graph)
    assert torch.equal(lightgcn.embed_rows(tiny_graph, users, items).user[users], ref.user[users])


def test_select_rows_keeps_the_rows_asked_in_their_order():
    from tru_dist.train.evaluate import select_rows

    dense = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    csr = dense.to_sparse_csr()
    out = select_rows(csr, torch.tensor([2, 0, 1]))
    assert torch.equal(out.to_dense(), dense[[2, 0, 1]])
    assert out.crow_indices().tolist() == [0, 3, 5, 5]


def test_a_handed_on_forward_reaches_no_grad_callers_detached_and_can_be_dropped(tiny_graph):
    """The unlearning loop hands a whole MGCN forward (an :class:`Embeddings`, aux included) from
    its gate pass to its step through ``handed_on_branch``: the gate pass must read it detached
    (it never extends the stored graph), the step must take the very value stored, and once the
    loop drops it (no step follows) the next grad-enabled call must compute afresh."""
    model = _model("mgcn", tiny_graph)
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []

    def forward():
        runs.append(1)
        return model.embed(tiny_graph)

    with model.constant_branches():
        with torch.no_grad():
            seen = model.handed_on_branch(("embed",), tiny_graph, params, forward)
        assert isinstance(seen, Embeddings) and seen.aux
        assert not seen.user.requires_grad and not seen.item.requires_grad
        assert not any(t.requires_grad for t in seen.aux.values())
        taken = model.handed_on_branch(("embed",), tiny_graph, params, forward)
        assert len(runs) == 1 and taken.user.requires_grad and torch.equal(taken.user, seen.user)
        with torch.no_grad():
            model.handed_on_branch(("embed",), tiny_graph, params, forward)
        model.drop_handed_on(("embed",))
        model.handed_on_branch(("embed",), tiny_graph, params, forward)
        assert len(runs) == 3
