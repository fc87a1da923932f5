"""Audits: pair/user membership inference and backdoor, on deliberately overfit small models.

Reference values are computed independently (numpy loops over the definitions) or follow
from the construction (an overfit model remembers its train pairs; Retrain never saw the
deleted ones; the removal ratio of Retrain is 1 and of the original 0).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tru_dist.audit import mia as mia_mod
from tru_dist.audit.backdoor import attack_success, poison_targets, removal_ratio
from tru_dist.audit.features import PAIR_FEATURES, model_embeddings, pair_features
from tru_dist.audit.mia import AuditError, PairMIA, bootstrap_auc, match_pairs, popularity_bins
from tru_dist.audit.runner import run_audits
from tru_dist.audit.user_mia import UserMIA, never_trained_users, rank_weights
from tru_dist.config import Config
from tru_dist.data.dataset import TEST, TRAIN, VALID, RecDataset
from tru_dist.data.poison import inject_poison
from tru_dist.data.regimes import forget_set
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.registry import build_model
from tru_dist.train.evaluate import history_mask
from tru_dist.train.trainer import fit
from tru_dist.unlearn.deletion import Deletion


def overfit_cfg(epochs: int = 100, seed: int = 0, layers: int = 0, reg: float = 0.0) -> Config:
    """Plain MF (LightGCN with 0 layers), no regularisation, no early stop: memorises train."""
    return Config.from_dict({
        "model": {"name": "lightgcn", "dim": 64, "n_layers": layers, "reg_weight": reg},
        "train": {"lr": 0.01, "epochs": epochs, "patience": 0, "eval_every": epochs, "batch_size": 512,
                  "progress": "off", "seed": seed},
    })


def keys(users, items, n_items: int) -> set[int]:
    return set((np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64)).tolist())


# ---------------------------------------------------------------------------- unit level
def test_bootstrap_auc_is_sklearn_auc_with_a_seeded_interval():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(200)].astype(int)
    scores = rng.normal(size=400) + 0.8 * labels
    out = bootstrap_auc(labels, scores, n_boot=100, seed=3)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["ci"][0] < out["auc"] < out["ci"][1] and out["ci"][1] - out["ci"][0] < 0.15
    assert out["n"] == 400
    assert bootstrap_auc(labels, scores, n_boot=100, seed=3) == out
    assert bootstrap_auc(labels, -labels.astype(float), n_boot=10)["auc"] == 0.0
    assert math.isnan(bootstrap_auc(np.ones(5, int), np.arange(5.0))["auc"])


def _tiny_history_data() -> RecDataset:
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 0, 1], dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11], dtype=np.int64)
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2], dtype=np.int8)
    return RecDataset(5, 12, users, items, labels)


def test_pair_features_match_their_definitions():
    data = _tiny_history_data()
    graph = build_rec_graph(data, with_knn=False)
    gen = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(5, 4, generator=gen), torch.randn(12, 4, generator=gen)
    pu = np.array([0, 0, 1, 2, 4, 3])
    pi = np.array([1, 10, 11, 0, 3, 7])  # (0,1), (2,0), (3,7) are history: never masked against themselves
    k = 3
    exclude = history_mask(data, ["train"], graph)
    got = pair_features(user_emb, item_emb, pu, pi, exclude, top_k=k, batch_pairs=4)

    s = (user_emb.double() @ item_emb.double().T).numpy()
    hist = {u: set(data.items[(data.users == u) & (data.labels == TRAIN)].tolist()) for u in range(5)}
    for row, (u, i) in enumerate(zip(pu, pi, strict=True)):
        cand = [j for j in range(12) if j not in hist[u] or j == i]
        vals = s[u, cand]
        higher = sum(s[u, j] > s[u, i] for j in cand if j != i)
        others = sorted((s[u, j] for j in cand if j != i), reverse=True)
        want = [s[u, i], 1 - higher / (len(cand) - 1), np.log1p(higher), s[u, i] - vals.mean(),
                (s[u, i] - vals.mean()) / vals.std(), s[u, i] - others[k - 1],
                (s[u, i] - s[:, i].mean()) / s[:, i].std()]
        np.testing.assert_allclose(got[row], want, rtol=1e-4, atol=1e-4, err_msg=f"pair ({u}, {i})")
    assert got.shape == (len(pu), len(PAIR_FEATURES))


def test_matching_puts_popularity_first_then_the_user():
    pool_users = np.array([0, 0, 1, 2, 2, 3, 3, 3])
    pool_bins = np.array([0, 5, 1, 2, 2, 0, 1, 2])
    member_users = np.array([0, 1, 4, 4, 1])
    member_bins = np.array([5, 3, 1, 2, 2])
    for seed in range(5):  # whatever the processing order
        pick = match_pairs(member_users, member_bins, pool_users, pool_bins, np.random.default_rng(seed))
        assert pick[0] == 1  # same user, same bin
        assert list(pool_bins[pick]) == [5, 2, 1, 2, 2]  # bin 3 is empty: the nearest bin (2) instead
        assert len(set(pick.tolist())) == 5  # without replacement
        # with one bin of slack, user 1's bin-1 pair serves its bin-2 member
        loose = match_pairs(member_users[4:], member_bins[4:], pool_users, pool_bins,
                            np.random.default_rng(seed), user_bin_slack=1)
        assert loose[0] == 2
    rng = np.random.default_rng(0)
    assert (match_pairs(np.arange(10), np.zeros(10, int), pool_users, pool_bins, rng) >= 0).sum() == 8

    bins = popularity_bins(np.r_[np.zeros(50), np.arange(1, 51)], n_bins=4)
    assert len(set(bins[:50].tolist())) == 1 and bins[0] == bins.min()
    assert np.all(np.diff(bins) >= 0) and bins[-1] - bins[0] >= 2


def test_removal_ratio_formula():
    assert removal_ratio(0.30, 0.05, 0.05) == pytest.approx(1.0)  # Retrain by construction
    assert removal_ratio(0.30, 0.30, 0.05) == 0.0  # the untouched original
    assert removal_ratio(0.30, 0.10, 0.05) == pytest.approx(0.8)
    assert removal_ratio(0.30, 0.40, 0.05) == pytest.approx(-0.4)  # made the attack worse
    assert math.isnan(removal_ratio(0.05, 0.01, 0.05))  # the attack never worked
    assert math.isnan(removal_ratio(0.055, 0.05, 0.05))  # gap below min_gap
    assert math.isnan(removal_ratio(float("nan"), 0.1, 0.05))


def test_attack_success_matches_a_brute_force_count():
    data = _tiny_history_data()
    graph = build_rec_graph(data, with_knn=False)
    cfg = overfit_cfg(layers=1).model
    model = build_model(cfg, graph, seed=1)
    users, targets, k = np.array([0, 1, 2, 3, 4]), np.array([0, 7, 11]), 4
    got = attack_success(model, graph, data, targets, users, k=k)

    ue, ie = model_embeddings(model, graph)
    s = (ue @ ie.T).numpy()
    hits = n = 0
    for u in users:
        seen = set(data.items[data.users == u].tolist())
        train = set(data.items[(data.users == u) & (data.labels == TRAIN)].tolist())
        top = [j for j in np.argsort(-s[u], kind="stable") if j not in train][:k]
        for t in targets:
            if t not in seen:
                n += 1
                hits += int(t in top)
    assert n == 11  # 15 pairs minus (0,0), (2,0), (3,7) and the test pair (1,11)
    assert got == pytest.approx(hits / n)
    assert rank_weights(3) == pytest.approx(np.array([6, 3, 2]) / 11)


# ------------------------------------------------------------------ pair-level MIA, overfit
@pytest.fixture(scope="module")
def overfit_run():
    data = generate_synthetic(n_users=300, n_items=200, n_clusters=4, seed=0, modalities={},
                              mean_extra_interactions=12)
    cfg = overfit_cfg()
    forget = forget_set(data, "interactions", 0.1, seed=0)
    after = data.without_pairs(forget.users, forget.items)
    original, graph, _ = fit(cfg, data)
    retrain, graph_after, _ = fit(cfg, after)
    return dict(data=data, after=after, forget=forget, cfg=cfg, original=original, graph=graph,
                retrain=retrain, graph_after=graph_after)


def test_pair_attacker_never_sees_the_pairs_it_is_judged_on(overfit_run, monkeypatch):
    r = overfit_run
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = mia_mod.pair_features

    def spy(user_emb, item_emb, users_local, items, *args, **kw):
        seen.append((np.array(users_local), np.array(items)))
        return real(user_emb, item_emb, users_local, items, *args, **kw)

    monkeypatch.setattr(mia_mod, "pair_features", spy)
    attack = PairMIA(n_boot=20).fit(r["original"], r["graph"], r["data"], r["forget"], seed=0)
    n = r["data"].n_items
    fit_keys = set().union(*(keys(u, i, n) for u, i in seen))
    eval_keys = keys(attack.eval_users, attack.eval_items, n)
    forget_keys = keys(r["forget"].users, r["forget"].items, n)
    assert fit_keys and fit_keys.isdisjoint(eval_keys) and fit_keys.isdisjoint(forget_keys)

    members = attack.eval_labels == 1
    assert keys(attack.eval_users[members], attack.eval_items[members], n) == keys(
        r["forget"].train_users, r["forget"].train_items, n)
    held = keys(*[a[np.isin(r["data"].labels, [VALID, TEST])] for a in (r["data"].users, r["data"].items)], n)
    assert keys(attack.eval_users[~members], attack.eval_items[~members], n) <= held
    assert members.sum() == (~members).sum()
    bins = popularity_bins(mia_mod.train_item_degree(r["data"]))
    hist = [np.bincount(bins[attack.eval_items[m]], minlength=bins.max() + 1) for m in (members, ~members)]
    assert np.abs(hist[0] - hist[1]).sum() <= 0.02 * members.sum()  # matched on popularity
    same_user = attack.eval_users[members] == attack.eval_users[~members]
    assert same_user.mean() > 0.2  # and on the user where a same-bin held-out pair exists


def test_pair_mia_separates_the_overfit_original_but_not_retrain(overfit_run):
    r = overfit_run
    attack = PairMIA(n_boot=50).fit(r["original"], r["graph"], r["data"], r["forget"], seed=0)
    orig = attack.auc(r["original"], r["graph"], r["after"])
    retr = attack.auc(r["retrain"], r["graph_after"], r["after"])
    assert orig["auc"] > 0.8 and orig["ci"][0] > 0.6, orig
    assert abs(retr["auc"] - 0.5) < 0.1, retr
    assert orig["n"] == retr["n"] == 2 * len(r["forget"].train_users)


def _deletion(r) -> Deletion:
    f = r["forget"]
    return Deletion(r["data"], r["graph"], r["after"], r["graph_after"], f, f.removed_users)


def test_run_audits_reports_every_model(overfit_run):
    r = overfit_run
    noop = copy.deepcopy(r["original"])  # an "unlearning" that changes nothing
    out = run_audits(["mia", "user_mia", "backdoor"], r["original"], r["retrain"], {"noop": noop},
                     _deletion(r), r["cfg"], seed=0)
    assert set(out) == {"original", "retrain", "noop"}
    # plain MF ignores the graph, so an untouched copy audited on the new graph is the original
    assert out["noop"]["mia"]["auc"] == pytest.approx(out["original"]["mia"]["auc"])
    assert out["original"]["mia"]["auc"] - out["retrain"]["mia"]["auc"] > 0.3
    # the interactions regime removes no user and there is no never-trained user: NaN + why
    assert math.isnan(out["retrain"]["user_mia"]["auc"]) and "user" in out["retrain"]["user_mia"]["note"]
    backdoor = out["noop"]["backdoor"]
    assert math.isnan(backdoor["removal_ratio"]) and "poison" in backdoor["note"]
    with pytest.raises(AuditError, match="unknown audit"):
        run_audits(["mai"], r["original"], None, {}, _deletion(r), r["cfg"])


# --------------------------------------------------------------------------- user-level MIA
def test_user_mia_flags_deleted_users_in_the_original_not_in_retrain():
    data = generate_synthetic(n_users=600, n_items=200, n_clusters=4, seed=0, modalities={},
                              mean_extra_interactions=10)
    held_out = np.random.default_rng(0).choice(data.n_users, 60, replace=False)
    labels = data.labels.copy()
    labels[np.isin(data.users, held_out)] = TEST  # an audit hold-out: never trained on
    data = replace(data, labels=labels)
    assert set(never_trained_users(data).tolist()) == set(held_out.tolist())
    cfg = overfit_cfg(epochs=60)
    forget = forget_set(data, "users", 0.1, seed=0)
    after = data.without_pairs(forget.users, forget.items)
    original, graph, _ = fit(cfg, data)
    retrain, graph_after, _ = fit(cfg, after)

    attack = UserMIA(n_boot=50).fit(cfg, data, forget.removed_users, held_out, seed=0)
    judged = np.r_[attack.members, attack.nonmembers]
    assert np.intersect1d(judged, np.r_[attack.shadow_in, attack.shadow_out]).size == 0
    assert np.intersect1d(attack.shadow_in, attack.shadow_out).size == 0
    orig, retr = attack.auc(original, graph), attack.auc(retrain, graph_after)
    assert orig["auc"] > 0.7 and orig["auc"] - retr["auc"] > 0.15, (orig, retr)
    assert abs(retr["auc"] - 0.5) < 0.15, retr
    assert orig["n"] == len(forget.removed_users) + len(held_out)


# --------------------------------------------------------------------------------- backdoor
def test_poison_raises_the_targets_and_retrain_removes_it():
    clean = generate_synthetic(n_users=300, n_items=150, n_clusters=4, seed=0, modalities={},
                               mean_extra_interactions=8)
    data = inject_poison(clean, fake_user_fraction=0.1, n_targets=3, n_fillers=10, seed=0)
    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 32, "n_layers": 2},
                            "train": {"lr": 0.01, "epochs": 40, "patience": 0, "eval_every": 40,
                                      "batch_size": 512, "progress": "off"}})
    forget = forget_set(data, "poison", 1.0, seed=0)
    after = data.without_pairs(forget.users, forget.items)
    original, graph, _ = fit(cfg, data)
    retrain, graph_after, _ = fit(cfg, after)
    clean_model, clean_graph, _ = fit(cfg, clean)
    targets, genuine = poison_targets(data)
    asr_clean = attack_success(clean_model, clean_graph, clean, targets, genuine[genuine < clean.n_users])

    half = copy.deepcopy(original)  # halfway between the original and Retrain, parameter-wise
    with torch.no_grad():
        for p, q in zip(half.parameters(), retrain.parameters(), strict=True):
            p.copy_(0.5 * p + 0.5 * q)
    deletion = Deletion(data, graph, after, graph_after, forget, forget.removed_users)
    out = run_audits(["backdoor"], original, retrain, {"half": half}, deletion, cfg)
    asr = {n: out[n]["backdoor"]["asr@20"] for n in out}
    ratio = {n: out[n]["backdoor"]["removal_ratio"] for n in out}
    assert asr["original"] > asr_clean + 0.05 and asr["original"] > 2 * asr["retrain"], (asr, asr_clean)
    assert asr["retrain"] < asr_clean + 0.03
    assert ratio["retrain"] == pytest.approx(1.0) and ratio["original"] == 0.0
    gap = asr["original"] - asr["retrain"]
    assert ratio["half"] == pytest.approx((asr["original"] - asr["half"]) / gap)


# ------------------------------------------------------------------ tru-dist audit (a run dir)
def test_audit_run_audits_an_unlearn_output_folder(tmp_path):
    import json

    from tru_dist.audit.runner import audit_run
    from tru_dist.data.regimes import select_forget
    from tru_dist.data.requests import write_requests
    from tru_dist.distributed.commands import unlearn
    from tru_dist.train.trainer import run_train

    data = generate_synthetic(n_users=200, n_items=120, n_clusters=4, seed=1, modalities={},
                              mean_extra_interactions=10)
    cfg = overfit_cfg(epochs=60)
    cfg.unlearn.epochs = 2
    run_train(cfg, tmp_path / "run", data=data)
    write_requests(select_forget(data, "interactions", 0.1, 0), tmp_path / "req.csv")
    unlearn(tmp_path / "run", tmp_path / "req.csv", tmp_path / "out", method="reverse_bpr", data=data)

    out = audit_run(tmp_path / "out", tmp_path / "req.csv", data=data)  # original from source_run
    assert set(out["audits"]) == {"original", "retrain", "reverse_bpr"}
    auc = {n: out["audits"][n]["mia"]["auc"] for n in out["audits"]}
    assert auc["original"] > 0.8 and abs(auc["retrain"] - 0.5) < 0.1, auc
    def strict(token):
        raise AssertionError(f"audit.json holds {token}, which is not JSON")

    assert json.loads((tmp_path / "out" / "audit.json").read_text(), parse_constant=strict) == out

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    metrics.pop("source_run")  # an output that does not say where it came from needs --original
    (tmp_path / "out" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(AuditError, match="source_run"):
        audit_run(tmp_path / "out", tmp_path / "req.csv", data=data)

    write_requests(select_forget(data, "interactions", 0.05, 7), tmp_path / "other.csv")
    with pytest.raises(AuditError, match="not applied"):
        audit_run(tmp_path / "out", tmp_path / "other.csv", original=tmp_path / "run", data=data)
