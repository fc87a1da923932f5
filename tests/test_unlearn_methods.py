"""The unlearning methods against Retrain on synthetic data, SISA's exactness, the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tru_dist.config import Config
from tru_dist.data.regimes import forget_set
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.errors import ConfigError
from tru_dist.train.evaluate import eval_embeddings, evaluate
from tru_dist.train.trainer import fit
from tru_dist.unlearn import get_method, method_names
from tru_dist.unlearn.deletion import build_deletion
from tru_dist.unlearn.metrics import agreement, forget_metrics, jaccard_topk
from tru_dist.unlearn.sisa import SisaEnsemble, original_data, shard_data


def _cfg(model: str, **train) -> Config:
    return Config.from_dict({
        "model": {"name": model, "dim": 32, "feat_hidden": 0},
        "train": {"lr": 0.02, "batch_size": 1024, "epochs": 40, "patience": 2, "eval_every": 5,
                  "progress": "off", **train},
        "eval": {"ks": [20]},
        "unlearn": {"epochs": 10, "lr": 0.01, "batch_size": 128},
    })


def test_registry_names_and_errors():
    names = method_names()
    for n in ("retrain", "noop", "reverse_bpr", "grad_ascent", "finetune", "sisa", "tru", "tru-default",
              "tru-no-gate", "tru-no-scaling", "tru-no-isolation"):
        assert n in names
    assert get_method("reverse-bpr").name == "reverse_bpr"
    assert get_method("TRU_no_gate").name == "tru-no-gate"
    with pytest.raises(ConfigError, match="choose one of"):
        get_method("mmrecun2")


def test_jaccard_hand_case():
    a = torch.tensor([[1, 2, 3], [7, 8, 9]])
    b = torch.tensor([[3, 4, 5], [9, 8, 7]])
    assert jaccard_topk(a, b).tolist() == pytest.approx([1 / 5, 1.0])


# ----------------------------------------------------------------------------- vs Retrain
@pytest.fixture(scope="module", params=["lightgcn", "mgcn"])
def compared(request):
    """Original, Retrain, noop, reverse_bpr and TRU on 400 users × 250 items, items 2% (no user
    is reset, and the deletion step alone leaves target items in top lists)."""
    data = generate_synthetic(400, 250, seed=0, modalities={"image": 32, "text": 16})
    cfg = _cfg(request.param)
    original, graph, _ = fit(cfg, data)
    forget = forget_set(data, "items", 0.02, seed=0)
    deletion = build_deletion(data, graph, forget)
    data_after, graph_after = deletion.data_after, deletion.graph_after
    out = {"original": (original, graph)}
    stats = {}
    for name in ("retrain", "noop", "reverse_bpr", "tru"):
        res = get_method(name).unlearn(original, deletion, cfg)
        out[name] = (res.model, graph_after)
        stats[name] = res
    figures = {}
    for name, (model, g) in out.items():
        figures[name] = {
            "recall": evaluate(model, g, data_after, "test", [20])["recall@20"],
            **{f"forget_hit{k}": v for k, v in forget_metrics(model, g, data_after, forget, [20, 50]).items()
               if k.startswith("hit")},
            **agreement(model, out["retrain"][0], g, data_after, forget, retrain_graph=graph_after),
        }
    return figures, stats, forget


def test_tru_forgets_beyond_the_deletion_step_and_keeps_utility(compared):
    """Fails for "reset + zero steps" (= noop): TRU's update must close a real part of the
    gap the deletion step leaves between the original's forget behaviour and Retrain's."""
    f, stats, forget = compared
    orig, rt, tru, noop = f["original"], f["retrain"], f["tru"], f["noop"]
    h20, h50 = "forget_hithit@20", "forget_hithit@50"
    # the target items were in the original's top lists, and Retrain ranks them out of them
    assert orig[h20] - rt[h20] > 0.5
    # the deletion step alone leaves them in many top-50 lists (else this setting could not tell)
    assert noop[h50] - rt[h50] > 0.3
    # TRU halves what noop leaves in the top-20 and closes a quarter of its top-50 gap
    assert abs(tru[h20] - rt[h20]) <= 0.5 * abs(noop[h20] - rt[h20])
    assert abs(tru[h50] - rt[h50]) <= 0.75 * abs(noop[h50] - rt[h50])
    # utility: ~380 test users with 1-2 items each → SE of recall@20 ≈ 0.026; allow 1.5 SE
    assert tru["recall"] >= rt["recall"] - 0.04
    # decisions are logged; time is end to end (deletion step included)
    s = stats["tru"].stats
    assert len(s["gate"]) >= 1 and "selected_groups" in s["isolation"]
    assert max(s["scaling"]["alpha_last"].values()) == pytest.approx(1.0)
    assert s["deletion_seconds"] > 0 and stats["tru"].seconds == pytest.approx(
        s["deletion_seconds"] + s["method_seconds"])
    assert stats["tru"].seconds < stats["retrain"].seconds


# ----------------------------------------------------------------------------- other methods
@pytest.fixture(scope="module")
def small(tiny_data):
    cfg = _cfg("lightgcn", epochs=10, eval_every=10, patience=0)
    original, graph, _ = fit(cfg, tiny_data)
    forget = forget_set(tiny_data, "users", 0.02, seed=1)
    deletion = build_deletion(tiny_data, graph, forget)
    return cfg, tiny_data, original, graph, deletion, forget


def _forget_bpr(model, graph, forget) -> float:
    """Mean softplus(s_uj − s_ui) over the forget pairs with fixed negatives."""
    e = eval_embeddings(model, graph)
    u, i = torch.from_numpy(forget.train_users), torch.from_numpy(forget.train_items)
    j = (i + 37) % graph.n_items
    return float(torch.nn.functional.softplus((e.user[u] * (e.item[j] - e.item[i])).sum(-1)).mean())


def test_grad_ascent_raises_forget_loss_and_finetune_spends_the_same_steps(small):
    cfg, _, original, _, deletion, forget = small
    graph_after = deletion.graph_after
    ga = get_method("grad_ascent").unlearn(original, deletion, cfg)
    ft = get_method("finetune").unlearn(original, deletion, cfg)
    rb = get_method("reverse_bpr").unlearn(original, deletion, cfg)
    base = _forget_bpr(original, graph_after, forget)
    assert _forget_bpr(ga.model, graph_after, forget) > base + 0.05  # BPR on D_f ascends
    assert ft.stats["steps"] == rb.stats["steps"] == ga.stats["steps"] > 0
    # finetune has no forget term: it moves the forget pairs far less than grad ascent
    assert abs(_forget_bpr(ft.model, graph_after, forget) - base) < abs(_forget_bpr(ga.model, graph_after,
                                                                                 forget) - base)


def test_forget_metrics_match_a_brute_force_ranking(small):
    _, _, original, graph, deletion, forget = small
    data_after = deletion.data_after
    got = forget_metrics(original, graph, data_after, forget, [5, 20])
    e = eval_embeddings(original, graph)
    scores = (e.user @ e.item.T).numpy()
    tu, ti = data_after.train_pairs
    hits5 = hits20 = pct = 0.0
    for u, i in zip(forget.train_users, forget.train_items, strict=True):
        hist = set(ti[tu == u].tolist())
        cand = [j for j in range(data_after.n_items) if j not in hist]
        rank = sum(1 for j in cand if j != i and scores[u, j] > scores[u, i])
        hits5 += rank < 5
        hits20 += rank < 20
        pct += rank / len(cand)
    n = len(forget.train_users)
    assert got["n_pairs"] == n
    assert got["hit@5"] == pytest.approx(hits5 / n)
    assert got["hit@20"] == pytest.approx(hits20 / n)
    assert got["rank_pct"] == pytest.approx(pct / n)
    same = agreement(original, original, graph, data_after, forget)
    assert same["jaccard@20"] == pytest.approx(1.0) and same["forget_rank_spearman"] == pytest.approx(1.0)


def test_sisa_retrains_only_affected_shards_exactly(small):
    cfg, data, _, _, deletion, forget = small
    data_after, graph_after = deletion.data_after, deletion.graph_after
    cfg = cfg.model_copy(deep=True)
    cfg.unlearn.sisa_shards = 4
    ens = SisaEnsemble.fit(data, cfg)
    affected = ens.affected_shards(forget)
    assert 0 < len(affected) < 4
    res = get_method("sisa").unlearn(ens, deletion, cfg)
    new = res.model
    assert res.stats["retrained_shards"] == affected
    for s in range(4):
        same = all(torch.equal(a, b) for a, b in zip(new.shards[s].state_dict().values(),
                                                     ens.shards[s].state_dict().values(), strict=True))
        assert same == (s not in affected), s
    # exact: the retrained shard is what training on its share of D_r gives
    s = affected[0]
    ref, _, _ = fit(cfg, shard_data(data_after, ens.shard_of_user, s))
    retrained = new.shards[s].state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), retrained, strict=True))
    # scores are the own shard's; the ensemble evaluates like a model
    emb = new.embed(graph_after)
    u = int(np.flatnonzero(new.shard_of_user == s)[0])
    own = new.shards[s].embed(new.graphs[s])
    assert torch.allclose(emb.user[u] @ emb.item.T, own.user[u] @ own.item.T, atol=1e-5)
    m = evaluate(new, graph_after, data_after, "test", [20])
    assert 0.0 < m["recall@20"] <= 1.0
    assert forget_metrics(new, graph_after, data_after, forget, [20])["n_pairs"] == len(forget)


def test_sisa_original_data_is_the_union(small):
    _, data, _, _, deletion, forget = small
    rebuilt = original_data(deletion.data_after, forget)
    key = lambda d: set(zip(d.users.tolist(), d.items.tolist(), d.labels.tolist(), strict=True))  # noqa: E731
    assert key(rebuilt) == key(data) and rebuilt.n_interactions == data.n_interactions


def test_unlearn_config_files_parse_and_name_registered_methods():
    from tru_dist.config import build_config

    root = Path(__file__).resolve().parent.parent / "configs"  # user-facing files, passed by path
    files = sorted((root / "unlearn").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:  # the file's name says the method: tru*.yaml are TRU, the others name theirs
        cfg = build_config(config_file=path)
        expected = "tru" if path.stem.startswith("tru") else path.stem
        assert expected in method_names() and get_method(cfg.unlearn.method).name == expected, path.name
    off = build_config(config_file=root / "unlearn" / "tru_ablation_off.yaml").unlearn
    assert not (off.gate.enabled or off.scaling.enabled or off.isolation.enabled)
