"""TRU's components (DESIGN §5): pure decision functions by hand cases, and the loop's
guarantees (all switches off == reverse_bpr bit for bit, isolation masks, user reset, sign)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tru_dist.config import Config
from tru_dist.data.regimes import forget_set
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.registry import build_model
from tru_dist.train.trainer import train_model
from tru_dist.unlearn import get_method, losses
from tru_dist.unlearn.deletion import build_deletion, reset_users
from tru_dist.unlearn.engine import UpdateSpec, run_update
from tru_dist.unlearn.tru import gate, isolation, scaling
from tru_dist.unlearn.tru.reduce import group_sums


# ----------------------------------------------------------------------------- gate
def test_persistence_is_one_inside_and_zero_far_outside_the_top_k():
    t = torch.tensor([2.0, 2.0, 2.0])
    g = gate.persistence(torch.tensor([6.0, 2.0, -3.0]), t, temperature=0.5)
    assert g[0] > 0.999  # 4 above the K-th score
    assert g[1] == pytest.approx(0.5)  # exactly at the threshold
    assert g[2] < 1e-4  # 5 below


def test_item_persistence_from_shard_sums_equals_direct_mean():
    items = torch.tensor([0, 2, 2, 0, 2])
    g = torch.tensor([0.2, 0.5, 0.7, 0.6, 0.3])
    # two "shards" holding pairs {0,1} and {2,3,4}; their sums add up to the global ones
    s1, c1 = gate.item_persistence(items[:2], g[:2], n_items=3)
    s2, c2 = gate.item_persistence(items[2:], g[2:], n_items=3)
    p = gate.item_mean(s1 + s2, c1 + c2)
    assert p.tolist() == pytest.approx([0.4, 0.0, 0.5])  # (0.2+0.6)/2, none, (0.5+0.7+0.3)/3


def test_decide_gate_mean_equals_mean_of_fused_gate_and_converges_below_eps():
    gen = torch.Generator().manual_seed(0)
    items = torch.randint(0, 7, (50,), generator=gen)
    g = torch.rand(50, generator=gen, dtype=torch.float64)
    total, count = gate.item_persistence(items, g, 7)
    dec = gate.decide_gate(total, count, eps=0.05)
    fused = gate.fuse(g, dec.p_items[items], beta=0.3)
    assert dec.mean_g == pytest.approx(float(fused.mean()), abs=1e-12)
    assert dec.mean_g == pytest.approx(float(g.mean()), abs=1e-12)
    assert not dec.converged
    assert gate.decide_gate(total * 0.01, count, eps=0.05).converged
    assert gate.converged(0.0, 0, 0.05)  # nothing left to forget


def test_gated_loss_stops_pushing_a_target_that_left_the_top_k():
    s_ui = torch.tensor([5.0, -4.0], requires_grad=True)  # pair 0 in the top-K, pair 1 far out
    s_uj = torch.tensor([0.0, 0.0])
    t = torch.tensor([1.0, 1.0])
    g = gate.persistence(s_ui.detach(), t, 0.5)
    p_items = g.clone()  # each item has one forget pair: P_i = g_ui
    weights = gate.fuse(g, p_items, beta=0.5)
    loss = gate.gated_forget_loss(s_ui, s_uj, t, weights, hinge_weight=1.0, margin=0.1, scale=1.0)
    loss.backward()
    assert s_ui.grad[0] > 1.0  # softplus' ≈ 1 plus hinge 1, weight ≈ 1
    assert 0 <= s_ui.grad[1] < 1e-5  # weight ≈ σ(-10): not pushed any further


def test_kth_threshold_ignores_retained_history_but_keeps_the_target():
    user = torch.tensor([[1.0]])
    items = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    exclude = torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]),
                                      torch.ones(1, dtype=torch.bool), size=(1, 5))  # item 0: retained
    t = gate.kth_thresholds(user, items, exclude, torch.tensor([0, 0]), k=2)
    assert t.tolist() == [3.0, 3.0]  # candidates 4,3,2,1 (item 1 may be the forget target)


def test_quantile_match_hand_case_identity_and_monotone():
    """Current percentiles 0.00 … 0.49 (step 0.01), reference uniform: the pair at mid-rank
    u = (k + ½)/50 gets q = u; matched to its own sample, every pair keeps its percentile."""
    cur = torch.arange(50, dtype=torch.float64) / 100
    q = gate.quantile_match(cur, cur, None)
    assert q.tolist() == pytest.approx(((torch.arange(50) + 0.5) / 50).tolist())
    assert gate.quantile_match(cur, cur, cur).tolist() == pytest.approx(cur.tolist())
    ties = torch.tensor([0.0, 0.0, 0.0, 0.5], dtype=torch.float64)  # tied pairs share one level
    assert gate.quantile_match(ties, ties, None).tolist() == pytest.approx([0.375, 0.375, 0.375, 0.875])


def test_matched_percentiles_follow_the_reference_distribution():
    """After quantile matching, the KS distance to the reference (scipy) is at sampling noise,
    even for a sample piled up at the top ranks (where any fixed binning fails)."""
    from scipy.stats import ks_2samp

    gen = torch.Generator().manual_seed(0)
    cur = (torch.rand(4000, generator=gen, dtype=torch.float64) ** 4).sort().values
    ref = (torch.rand(3000, generator=gen, dtype=torch.float64) ** 1.5).sort().values
    before = ks_2samp(cur.numpy(), ref.numpy()).statistic
    q = gate.quantile_match(cur, cur, ref)
    assert before > 0.3 and ks_2samp(q.numpy(), ref.numpy()).statistic < 0.01
    assert bool((q[1:] >= q[:-1]).all())  # order-preserving: the transport moves pairs as little as possible


def test_calibration_gap_is_the_ks_distance_to_the_target_mixture():
    from scipy.stats import ks_2samp

    a = torch.tensor([0.01, 0.02, 0.02, 0.3, 0.31, 0.9], dtype=torch.float64)
    b = torch.tensor([0.05, 0.4, 0.5, 0.6], dtype=torch.float64)
    assert gate.calibration_gap(a, [(1.0, b)]) == pytest.approx(ks_2samp(a.numpy(), b.numpy()).statistic)
    # a 50/50 mixture of b and the uniform distribution, against a dense sample of that mixture
    u = torch.rand(200000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mix = torch.cat([b.repeat(50000), u]).sort().values
    assert gate.calibration_gap(a, [(2.0, b), (2.0, None)]) == pytest.approx(
        ks_2samp(a.numpy(), mix.numpy()).statistic, abs=5e-3)
    assert gate.calibration_gap(a[:0], [(1.0, b)]) == 0.0


def test_scores_at_percentile_against_a_brute_force_sort():
    """τ = the user's score at rank ⌊q·n_u⌋ among non-excluded items, checked by sorting by hand."""
    gen = torch.Generator().manual_seed(1)
    users, items = torch.randn(4, 3, generator=gen), torch.randn(9, 3, generator=gen)
    hist = {0: [1, 4], 2: [0, 2, 3, 8]}  # retained history: excluded
    crow, col = [0], []
    for u in range(4):
        col += hist.get(u, [])
        crow.append(len(col))
    exclude = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col),
                                      torch.ones(len(col), dtype=torch.bool),
                                      size=(4, 9))
    lu = torch.tensor([0, 0, 2, 3, 1])
    q = torch.tensor([0.0, 0.5, 0.99, 0.3, 1.0], dtype=torch.float64)
    tau = gate.scores_at_percentile(users, items, exclude, lu, q)
    for k in range(len(lu)):
        u = int(lu[k])
        cand = sorted(((users[u] @ items[j]).item() for j in range(9) if j not in hist.get(u, [])),
                      reverse=True)
        at = min(int(np.floor(float(q[k]) * len(cand))), len(cand) - 1)
        assert float(tau[k]) == pytest.approx(cand[at], abs=1e-6)


def test_rank_percentiles_from_sorted_rows_equal_pair_ranks_and_a_hand_count():
    """A gate pass reads the pairs' ranks off the sorted score rows it sorts for τ anyway: the
    same ranks as ``pair_ranks`` (history excluded, the pair's own item kept, ties in the item's
    favour), divided by n_u — checked against both, with a tied score planted."""
    from tru_dist.train.evaluate import candidate_counts, pair_ranks

    gen = torch.Generator().manual_seed(3)
    users, items = torch.randn(5, 4, generator=gen), torch.randn(12, 4, generator=gen)
    items[7] = items[2]  # item 7 ties item 2 for every user
    hist = {0: [1, 4, 2], 3: [0, 5]}  # user 0's deleted pair (0, 2) is in its history: kept
    crow, col = [0], []
    for u in range(5):
        col += hist.get(u, [])
        crow.append(len(col))
    exclude = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col),
                                      torch.ones(len(col), dtype=torch.bool), size=(5, 12))
    lu, li = torch.tensor([0, 0, 3, 4, 1, 4]), torch.tensor([2, 9, 6, 2, 7, 11])
    rows = gate.score_rows(users, items, exclude, lu, li)
    got = gate.rank_percentiles(rows)
    ref = pair_ranks(users, items, lu, li, exclude).double() / candidate_counts(exclude, lu, 12).double()
    assert torch.equal(got, ref)
    for k in range(len(lu)):
        u, i = int(lu[k]), int(li[k])
        s = [(users[u] @ items[j]).item() for j in range(12)]
        others = [j for j in range(12) if j != i and (j not in hist.get(u, []))]
        n_u = 12 - len(hist.get(u, []))
        assert float(got[k]) == pytest.approx(sum(s[j] > s[i] for j in others) / n_u)
    tau = gate.score_at_rows(rows, torch.full((6,), 0.5, dtype=torch.float64))
    assert torch.equal(tau, gate.scores_at_percentile(users, items, exclude, lu, torch.full((6,), 0.5,
                                                                                         dtype=torch.float64)))


def test_calibrated_loss_is_two_sided():
    """½(s − τ)² pushes a pair above its target down and pulls a pair below it back up (the
    top-K hinge only ever pushes down): over-forgetting is corrected, not only avoided."""
    s = torch.tensor([2.0, -1.0], requires_grad=True)
    tau = torch.tensor([0.5, 0.5])
    (0.5 * (s - tau) ** 2).sum().backward()
    assert s.grad[0] > 0 and s.grad[1] < 0  # descent lowers the first, raises the second


# ----------------------------------------------------------------------------- scaling
def test_alphas_are_one_when_gamma_is_zero():
    a = scaling.decide_alphas({"id": 9.0, "image": 0.01, "text": 1.0}, {"id": 1.0, "image": 4.0, "text": 1.0},
                              gamma=0.0, alpha_min=0.1, delta=1e-12)
    assert a == {"id": 1.0, "image": 1.0, "text": 1.0}


def test_alphas_hand_values_max_one_and_monotone_in_ratio():
    f = {"a": 4.0, "b": 1.0, "c": 0.01, "d": 0.25}
    r = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}  # ratios 2, 1, 0.1, 0.5
    a = scaling.decide_alphas(f, r, gamma=1.0, alpha_min=0.1, delta=0.0)
    assert a == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.1, "d": 0.25})  # c: 0.05 clipped up to α_min
    a2 = scaling.decide_alphas(f, r, gamma=2.0, alpha_min=0.01, delta=0.0)
    assert a2 == pytest.approx({"a": 1.0, "b": 0.25, "c": 0.01, "d": 0.0625})
    ratios = {k: np.sqrt(f[k]) / np.sqrt(r[k]) for k in f}
    order = sorted(f, key=ratios.get)
    assert [a2[k] for k in order] == sorted(a2.values())


def test_gradient_statistics_count_only_the_rows_that_move():
    f = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, -1.0]])
    r = torch.tensor([[2.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    # all rows: ‖f‖² = 1+4+9+1 = 15, ‖r‖² = 4+1+1+25+25 = 56, <f,r> = 2+3−5 = 0
    assert scaling.gradient_statistics(f, r).tolist() == [15.0, 56.0, 0.0]
    # rows 0 and 1 only: 14, 6, 5 — row 2 (outside the mask) never moves, so it does not count
    rows = torch.tensor([True, True, False])
    assert scaling.gradient_statistics(f, r, rows).tolist() == [14.0, 6.0, 5.0]
    assert scaling.gradient_statistics(f, r).dtype == torch.float64


def test_conflict_projection_removes_the_conflicting_component():
    gen = torch.Generator().manual_seed(1)
    g_r = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    g_f = [-x + 0.3 * torch.randn(x.shape, generator=gen) for x in g_r]  # strongly conflicting
    dot = sum(float((f * r).sum()) for f, r in zip(g_f, g_r, strict=True))
    r_sq = sum(float((r * r).sum()) for r in g_r)
    assert dot < 0
    coef = scaling.projection_coefficient(dot, r_sq)
    projected = scaling.combine(g_f, g_r, alpha=1.0, coef=coef, lambda_f=1.0, lambda_r=0.0)
    new_dot = sum(float((f * r).sum()) for f, r in zip(projected, g_r, strict=True))
    assert new_dot >= -1e-5 and abs(new_dot) < 1e-4
    assert scaling.projection_coefficient(abs(dot), r_sq) == 0.0  # no conflict, no change


def test_combine_scales_only_the_forget_part():
    g_f, g_r = [torch.ones(3)], [torch.full((3,), 2.0)]
    out = scaling.combine(g_f, g_r, alpha=0.25, coef=0.0, lambda_f=2.0, lambda_r=0.5)
    assert out[0].tolist() == pytest.approx([0.5 * 2 + 2 * 0.25 * 1] * 3)


# ----------------------------------------------------------------------------- isolation
def test_isolation_hand_cases():
    f = {"a": 9.0, "b": 4.0, "c": 1.0}
    r = {"a": 1.0, "b": 1.0, "c": 1.0}
    sizes = {"a": 60.0, "b": 30.0, "c": 10.0}
    # the top group alone exceeds the budget: it is kept, nothing else
    assert isolation.decide_isolation(f, r, sizes, sizes, budget=0.5, delta=0.0) == (["a"], 0.6)
    # b most sensitive; a would overflow 45% and is skipped; c still fits
    f2 = {"a": 4.0 * 60, "b": 9.0 * 30, "c": 1.0 * 10}  # sums: mean = f2/size → S = 4, 9, 1
    chosen, share = isolation.decide_isolation(f2, {k: sizes[k] for k in sizes}, sizes, sizes, 0.45, 0.0)
    assert chosen == ["b", "c"] and share == pytest.approx(0.4)


def test_isolation_by_forget_mass_hand_cases():
    """Largest forget Fisher mass first, until the chosen groups hold ``mass`` of it."""
    f = {"a": 2.0, "b": 6.0, "c": 1.0, "d": 1.0}  # total 10
    r = dict.fromkeys(f, 1.0)
    sizes = {"a": 10.0, "b": 50.0, "c": 20.0, "d": 20.0}
    assert isolation.decide_isolation_by_mass(f, r, sizes, sizes, 0.5, 0.0) == (["b"], 0.5)  # 6 ≥ 5
    chosen, share = isolation.decide_isolation_by_mass(f, r, sizes, sizes, 0.8, 0.0)
    assert chosen == ["b", "a"] and share == pytest.approx(0.6)  # 8 ≥ 8
    # a concentrated deletion needs one group, a diffuse one all of them
    assert isolation.decide_isolation_by_mass(f, r, sizes, sizes, 1.0, 0.0)[0] == ["b", "a", "c", "d"]


def test_isolation_never_exceeds_budget_and_keeps_one_group():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        names = [f"g{k}" for k in range(n)]
        sizes = {k: float(rng.integers(1, 100)) for k in names}
        f = {k: float(rng.random()) * sizes[k] for k in names}
        r = {k: float(rng.random()) * sizes[k] for k in names}
        budget = float(rng.uniform(0.05, 1.0))
        chosen, share = isolation.decide_isolation(f, r, sizes, sizes, budget, 1e-12)
        ratios = isolation.fisher_ratios(f, r, sizes, 1e-12)
        assert len(chosen) >= 1
        assert chosen[0] == max(names, key=lambda k: (ratios[k], -names.index(k)))
        assert share <= budget + 1e-12 or chosen == chosen[:1]
        assert share == pytest.approx(sum(sizes[k] for k in chosen) / sum(sizes.values()))


def test_row_isolation_hops_on_a_hand_graph():
    # u0-i0, u0-i1, u1-i1, u1-i4, u2-i2, u3-i3 ; D_f = {(u0, i0)}
    users = np.array([0, 0, 1, 1, 2, 3])
    items = np.array([0, 1, 1, 4, 2, 3])
    fu, fi = np.array([0]), np.array([0])

    def sets(h):
        um, im = isolation.hop_masks(fu, fi, users, items, 4, 5, h)
        return set(np.flatnonzero(um).tolist()), set(np.flatnonzero(im).tolist())

    assert sets(1) == ({0}, {0})
    assert sets(2) == ({0}, {0, 1})  # items of u0; users of i0 = {u0}
    assert sets(3) == ({0, 1}, {0, 1})  # users of i1
    assert sets(4) == ({0, 1}, {0, 1, 4})
    assert sets(0) == ({0, 1, 2, 3}, {0, 1, 2, 3, 4})  # disabled


def test_retained_item_rows_false_moves_the_owners_rows_and_no_used_item_row(mgcn_trained):
    """``isolation.retained_item_rows: false`` on an interactions deletion: every item row that a
    retained pair still uses keeps its value bit for bit, while the deleted pairs' users' rows
    move; with the generic default some of those item rows move, so the check is not vacuous."""
    model, deletion = mgcn_trained
    iso = {"enabled": True, "shared_layers": False, "budget": 1.0, "row_hops": 1}
    used = np.bincount(np.asarray(deletion.data_after.train_pairs[1]), minlength=model.item_emb.shape[0]) > 0
    fu = np.unique(deletion.forget.train_users)
    before = model.state_dict()
    frozen = get_method("tru").unlearn(model, deletion, _mgcn_cfg(
        isolation={**iso, "retained_item_rows": False})).model.state_dict()
    free = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation=iso)).model.state_dict()
    # interactions: every deleted item is still used by some retained pair
    assert used[np.unique(deletion.forget.train_items)].all()
    assert torch.equal(frozen["item_emb"][used], before["item_emb"][used])
    assert not torch.equal(free["item_emb"][used], before["item_emb"][used])
    moved = (frozen["user_emb"] != before["user_emb"]).any(1).numpy()
    assert moved[fu].any() and not np.delete(moved, fu).any()


def test_cold_only_users_hand_case():
    """U_cold = users of D_f all of whose deleted pairs are on items no retained pair uses: user 0
    has one cold and one warm pair (moves), 1 and 2 only cold ones (frozen), 3 a warm one, 4 none."""
    in_use = np.array([True] * 5 + [False, True, False, True])  # items 5, 7 cold; 6, 8 warm
    mask = isolation.cold_only_users(np.array([0, 0, 1, 2, 3]), np.array([5, 6, 5, 7, 8]), in_use, 5)
    assert mask.tolist() == [False, True, True, False, False]


def test_cold_item_user_rows_false_moves_an_items_deletion_through_item_rows_alone(mgcn_trained, tiny_data):
    """``isolation.cold_item_user_rows: false`` on an items deletion (every deleted item cold):
    no user row moves, bit for bit, while the deleted items' rows do; with the generic default
    the same update moves deleted pairs' users' rows, so the check is not vacuous."""
    model, _ = mgcn_trained
    forget = forget_set(tiny_data, "items", 0.05, seed=0)
    deletion = build_deletion(tiny_data, build_rec_graph(tiny_data), forget)
    items = np.unique(deletion.forget.train_items)
    used = np.bincount(np.asarray(deletion.data_after.train_pairs[1]), minlength=model.item_emb.shape[0]) > 0
    assert len(items) and not used[items].any()  # an items deletion: every deleted item is cold
    iso = {"enabled": True, "shared_layers": False, "budget": 1.0, "row_hops": 1}
    before = model.state_dict()
    frozen = get_method("tru").unlearn(model, deletion, _mgcn_cfg(
        isolation={**iso, "cold_item_user_rows": False})).model.state_dict()
    free = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation=iso)).model.state_dict()
    assert torch.equal(frozen["user_emb"], before["user_emb"])
    assert not torch.equal(free["user_emb"], before["user_emb"])
    assert not torch.equal(frozen["item_emb"][items], before["item_emb"][items])


def test_movable_groups_hand_case():
    kinds, free = {"user_emb": "user", "item_emb": "item"}, {"user": 0, "item": 3}
    assert isolation.movable_groups(["user_emb", "encoder_text"], kinds, free) == ["encoder_text"]
    assert isolation.movable_groups(["user_emb", "item_emb"], kinds, free) == ["item_emb"]
    assert isolation.movable_groups(["user_emb"], kinds, free) == []
    assert isolation.movable_groups([], kinds, {"user": 5, "item": 3}) == []


@pytest.mark.parametrize("gate_on", [False, True])
def test_isolation_that_leaves_nothing_to_move_stops_at_the_start_and_says_so(mgcn_trained, tiny_data,
                                                                              monkeypatch, caplog, gate_on):
    """An items deletion whose budget chose ``user_emb`` alone, with ``cold_item_user_rows: false``
    (every deleted pair's user is frozen): no step can move a parameter. The update stops before
    its first step, warns, and returns the start model bit for bit; with the user rows free the
    same forced choice does move the model, so the check is not vacuous."""
    model, _ = mgcn_trained
    forget = forget_set(tiny_data, "items", 0.05, seed=0)
    deletion = build_deletion(tiny_data, build_rec_graph(tiny_data), forget)
    forced = lambda *a, **k: (["user_emb"], 0.5)  # noqa: E731
    monkeypatch.setattr(isolation, "decide_isolation", forced)
    monkeypatch.setattr(isolation, "decide_isolation_by_mass", forced)
    iso = {"enabled": True, "shared_layers": False, "budget": 0.5, "row_hops": 1}
    gate_cfg = {"enabled": gate_on}
    before = model.state_dict()
    with caplog.at_level("WARNING", logger="tru_dist.unlearn"):
        stuck = get_method("tru").unlearn(model, deletion, _mgcn_cfg(
            gate=gate_cfg, isolation={**iso, "cold_item_user_rows": False}))
    assert stuck.stats["isolation"]["movable_groups"] == [] and stuck.stats["steps"] == 0
    assert stuck.stats["stop_reason"] == "isolation left nothing to move"
    assert "left nothing to move" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in stuck.model.state_dict().items())
    free = get_method("tru").unlearn(model, deletion, _mgcn_cfg(gate=gate_cfg, isolation=iso))
    assert free.stats["isolation"]["movable_groups"] == ["user_emb"] and free.stats["steps"] > 0
    assert not torch.equal(free.model.state_dict()["user_emb"], before["user_emb"])


def test_cold_row_groups_hand_case():
    """Only item-table groups the budget left out are opened; a chosen one, a user table and a
    dense group never are."""
    u, i, w = object(), object(), object()
    cand = {"user_emb": [u], "item_emb": [i], "encoder_text": [w]}
    assert isolation.cold_row_groups(["user_emb"], cand, {id(i)}) == ["item_emb"]
    assert isolation.cold_row_groups(["item_emb"], cand, {id(i)}) == []
    assert isolation.cold_row_groups(["encoder_text"], {**cand, "mixed": [i, w]}, {id(i)}) == ["item_emb"]


@pytest.mark.parametrize("regime", ["items", "interactions"])
def test_free_cold_item_rows_moves_only_the_cold_items_rows_when_the_budget_froze_their_table(
        mgcn_trained, tiny_data, monkeypatch, regime):
    """A budget that chose ``user_emb`` alone freezes the item table: without the option no item
    row moves; with ``isolation.free_cold_item_rows`` exactly the rows of D_f's items that no
    retained pair uses may move (and some do), every other item row bit for bit as before."""
    model, _ = mgcn_trained
    forget = forget_set(tiny_data, regime, 0.05 if regime == "items" else 0.3, seed=0)
    deletion = build_deletion(tiny_data, build_rec_graph(tiny_data), forget)
    used = np.bincount(np.asarray(deletion.data_after.train_pairs[1]), minlength=model.item_emb.shape[0]) > 0
    cold = np.zeros_like(used)
    cold[np.unique(deletion.forget.train_items)] = True
    cold &= ~used
    assert cold.any() and (regime == "items" or (~cold[np.unique(deletion.forget.train_items)]).any())
    forced = lambda *a, **k: (["user_emb"], 0.5)  # noqa: E731
    monkeypatch.setattr(isolation, "decide_isolation", forced)
    monkeypatch.setattr(isolation, "decide_isolation_by_mass", forced)
    iso = {"enabled": True, "shared_layers": False, "budget": 0.5, "row_hops": 1}
    before = model.state_dict()["item_emb"]
    off = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation=iso))
    on = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation={**iso, "free_cold_item_rows": True}))
    assert torch.equal(off.model.state_dict()["item_emb"], before)
    assert off.stats["isolation"]["cold_rows_added"] == []
    assert on.stats["isolation"]["cold_rows_added"] == ["item_emb"]
    assert on.stats["isolation"]["cold_item_rows"] == on.stats["isolation"]["rows_items"] == int(cold.sum())
    moved = (on.model.state_dict()["item_emb"] != before).any(1).numpy()
    assert moved[cold].any() and not moved[~cold].any()


@pytest.fixture(scope="module")
def never_trained_deletion(never_trained_data):
    """(LightGCN trained on ``never_trained_data``, an items 5% deletion, the items retained train
    pairs still use); every deleted pair is cold."""
    data = never_trained_data
    graph = build_rec_graph(data, with_knn=False)
    model = build_model(_cfg().model, graph, seed=0)
    train_model(model, graph, data, _cfg())
    deletion = build_deletion(data, graph, forget_set(data, "items", 0.05, seed=0))
    kept = np.bincount(deletion.data_after.train_pairs[1], minlength=data.n_items) > 0
    assert len(deletion.forget.train_items) and not kept[deletion.forget.train_items].any()
    return model, deletion, kept


def test_untrained_items_reference_targets_the_start_models_ranks_of_never_trained_items(
        never_trained_deletion):
    """``gate.untrained_items_min``: with 15 items made never-trained (their train pairs relabelled
    test), an items deletion's cold pairs are matched to the start model's ranks of those items
    for the cold pairs' users: the first gate pass's mean target percentile equals the mean of
    that distribution, computed here with NumPy from the model's scores; below the threshold the
    reference is the packaged one and the statistic is absent."""
    cfg = _cfg(**{**OFF, "gate": {"enabled": True, "untrained_items_min": 10}})
    model, deletion, kept = never_trained_deletion
    after = deletion.data_after
    fu, fi = deletion.forget.train_users, deletion.forget.train_items
    untrained = np.setdiff1d(np.flatnonzero(~kept), fi)
    assert len(untrained) >= 15
    res = get_method("tru").unlearn(model, deletion, cfg)
    assert res.stats["gate_reference"]["untrained_items"] == len(untrained)
    # the reference, independently: percentile = items scored higher / candidates (train history masked)
    model.eval()
    with torch.no_grad():
        emb = model.embed(deletion.graph_after)
        scores = (emb.user @ emb.item.T).double().numpy()
    history = np.zeros(scores.shape, dtype=bool)
    history[after.train_pairs[0], after.train_pairs[1]] = True
    users = np.unique(fu)
    sub = np.where(history[users], -np.inf, scores[users])
    pct = (sub[:, :, None] > sub[:, None, untrained]).sum(1) / (~history[users]).sum(1, keepdims=True)
    first = res.stats["gate"][0]
    assert first["mean_target_pct"] == pytest.approx(float(pct.mean()), abs=0.005)  # 0.5838 vs 0.5847
    off = get_method("tru").unlearn(model, deletion, _cfg(**{**OFF, "gate": {"enabled": True,
                                                                             "untrained_items_min": 100}}))
    assert "untrained_items" not in off.stats["gate_reference"]
    assert abs(off.stats["gate"][0]["mean_target_pct"] - first["mean_target_pct"]) > 0.05  # zeroed: 0.416


@pytest.mark.parametrize("backbone", ["mgcn", "lightgcn"])
def test_packaged_gate_takes_the_negative_row_below_the_never_trained_threshold(
        never_trained_deletion, backbone):
    """MGCN's and LightGCN's shipped gate (``untrained_items_min: 20``, ``cold_reference:
    negative``) on a catalogue with 15 never-trained items: too few for the never-trained items'
    ranks, so the deleted items get the negative-only row; with the threshold at 10 the
    never-trained ranks win instead."""
    from tru_dist.config import packaged_defaults

    shipped = packaged_defaults("models", backbone)["unlearn"]["gate"]
    assert shipped["cold_reference"] == "negative" and shipped["untrained_items_min"] == 20
    model, deletion, _ = never_trained_deletion
    below = get_method("tru").unlearn(model, deletion, _cfg(**{**OFF, "gate": {"enabled": True, **shipped}}))
    assert "negative_row_norm" in below.stats["gate_reference"]
    assert "untrained_items" not in below.stats["gate_reference"]
    above = get_method("tru").unlearn(model, deletion, _cfg(**{**OFF, "gate": {
        "enabled": True, **shipped, "untrained_items_min": 10}}))
    assert above.stats["gate_reference"]["untrained_items"] >= 15
    assert "negative_row_norm" not in above.stats["gate_reference"]


def test_negative_cold_reference_gives_deleted_items_a_negative_only_row(never_trained_deletion, trained,
                                                                         tiny_data):
    """``gate.cold_reference: negative``: the deleted items' targets are their pairs' ranks with
    each deleted item's ID row set to e⁻ = −r·ū/‖ū‖ (ū the mean user row, r the never-trained
    items' mean row norm), recomputed here in float64 with NumPy: the first gate pass's mean
    target percentile equals it, and differs from ``zeroed``'s; on a catalogue without
    never-trained items it is ``zeroed`` bit for bit."""
    cfg = _cfg(**{**OFF, "gate": {"enabled": True, "cold_reference": "negative"}})
    model, deletion, kept = never_trained_deletion
    after = deletion.data_after
    fu, fi = deletion.forget.train_users, deletion.forget.train_items
    never = np.setdiff1d(np.flatnonzero(~kept), fi)
    user_rows, item_rows = model.user_emb.detach().double().numpy(), model.item_emb.detach().double().numpy()
    mean_user = user_rows.mean(0)
    radius = np.linalg.norm(item_rows[never], axis=1).mean()
    res = get_method("tru").unlearn(model, deletion, cfg)
    assert res.stats["gate_reference"]["negative_row_norm"] == pytest.approx(radius)
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe.item_emb[torch.from_numpy(np.unique(fi))] = torch.from_numpy(
            -radius * mean_user / np.linalg.norm(mean_user)).float()
        probe.eval()
        emb = probe.embed(deletion.graph_after)
        scores = (emb.user @ emb.item.T).double().numpy()
    history = np.zeros(scores.shape, dtype=bool)
    history[after.train_pairs[0], after.train_pairs[1]] = True
    sub = np.where(history, -np.inf, scores)
    pct = (sub[fu] > sub[fu, fi][:, None]).sum(1) / (~history[fu]).sum(1)
    first = res.stats["gate"][0]
    assert first["mean_target_pct"] == pytest.approx(float(pct.mean()), abs=0.005)
    zeroed = get_method("tru").unlearn(model, deletion, _cfg(**{**OFF, "gate": {"enabled": True}}))
    assert abs(zeroed.stats["gate"][0]["mean_target_pct"] - first["mean_target_pct"]) > 0.05
    # synthetic:tiny has no never-trained item: nothing to take r from, the deleted rows are zeroed
    model0, graph0 = trained[0], trained[1]
    deletion0 = build_deletion(tiny_data, graph0, forget_set(tiny_data, "items", 0.05, seed=0))
    a = get_method("tru").unlearn(model0, deletion0, cfg)
    b = get_method("tru").unlearn(model0, deletion0, _cfg(**{**OFF, "gate": {"enabled": True}}))
    assert "negative_row_norm" not in a.stats["gate_reference"] and a.stats["steps"] > 0
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_group_sums_counts_replicated_once():
    per = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    out = group_sums({"x": [0, 2], "y": [1], "z": []}, per, torch.tensor([True, False, False]))
    assert out == {"x": [6.0, 8.0], "y": [3.0, 4.0], "z": [0.0, 0.0]}


# ----------------------------------------------------------------------------- the loop
def test_reverse_bpr_step_lowers_the_deleted_score():
    gen = torch.Generator().manual_seed(0)
    u, i, j = (torch.randn(8, generator=gen, requires_grad=True) for _ in range(3))
    s_before = float(u.detach() @ i.detach())
    s_ui, s_uj = losses.pair_scores(u[None], torch.stack([i, j]), torch.tensor([0]), torch.tensor([1]))
    losses.reverse_bpr_loss(s_ui, s_uj, scale=1.0).backward()
    with torch.no_grad():
        for p in (u, i, j):
            p -= 0.1 * p.grad
    assert float(u.detach() @ i.detach()) < s_before


def _cfg(**unlearn) -> Config:
    return Config.from_dict({
        "model": {"name": "lightgcn", "dim": 16},
        "train": {"lr": 0.02, "batch_size": 512, "epochs": 15, "patience": 0, "eval_every": 15,
                  "progress": "off"},
        "eval": {"ks": [20]},
        "unlearn": {"epochs": 3, "lr": 0.02, "batch_size": 64, **unlearn},
    })


@pytest.fixture(scope="module")
def trained(tiny_data):
    cfg = _cfg()
    graph = build_rec_graph(tiny_data, with_knn=False)
    model = build_model(cfg.model, graph, seed=0)
    train_model(model, graph, tiny_data, cfg)
    forget = forget_set(tiny_data, "users", 0.05, seed=0)
    deletion = build_deletion(tiny_data, graph, forget)
    return model, graph, deletion, build_deletion(tiny_data, graph, forget, reset=False), forget


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


OFF = {"gate": {"enabled": False}, "scaling": {"enabled": False}, "isolation": {"enabled": False}}


def test_tru_with_all_switches_off_is_reverse_bpr_bit_for_bit(trained):
    model, _, deletion, _, forget = trained
    cfg = _cfg(**OFF)
    before = _state(model)
    a = get_method("tru").unlearn(model, deletion, cfg).model
    b = get_method("reverse_bpr").unlearn(model, deletion, cfg).model
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        assert not torch.equal(v, before[k]), f"{k} did not move: the check would be vacuous"
        assert torch.equal(model.state_dict()[k], before[k]), "the caller's model was modified"
    # each switch really changes the computation (by more than float noise); scaling has
    # one branch to scale on LightGCN, so it is checked on MGCN below
    for part in ("gate", "isolation"):
        on = _cfg(**{**OFF, part: {"enabled": True}})
        c = get_method("tru").unlearn(model, deletion, on).model
        assert (c.item_emb - b.item_emb).abs().max() > 1e-4, part


@pytest.fixture(scope="module")
def mgcn_trained(tiny_data):
    cfg = _cfg(**OFF)
    cfg.model.name = "mgcn"
    graph = build_rec_graph(tiny_data)
    model = build_model(cfg.model, graph, seed=0)
    cfg.train.epochs = 5
    train_model(model, graph, tiny_data, cfg)
    forget = forget_set(tiny_data, "interactions", 0.05, seed=0)
    return model, build_deletion(tiny_data, graph, forget)


def _mgcn_cfg(**unlearn) -> Config:
    cfg = _cfg(**{**OFF, **unlearn})
    cfg.model.name = "mgcn"
    return cfg


def test_branch_scaling_changes_a_multimodal_update(mgcn_trained):
    """On MGCN (id, image, text branches) scaling with γ = 1 gives branches α < 1 and moves the
    update away from reverse_bpr's; with γ = 0 every α is 1 and it is reverse_bpr's (to rounding)."""
    model, deletion = mgcn_trained
    base = get_method("reverse_bpr").unlearn(model, deletion, _mgcn_cfg())
    runs = {gamma: get_method("tru").unlearn(model, deletion, _mgcn_cfg(
        scaling={"enabled": True, "gamma": gamma})) for gamma in (0.0, 1.0)}
    alphas = runs[1.0].stats["scaling"]["alpha_last"]
    assert set(alphas) >= {"id", "image", "text"} and min(alphas.values()) < 0.99
    assert all(a == pytest.approx(1.0) for a in runs[0.0].stats["scaling"]["alpha_last"].values())
    ref = base.model.state_dict()
    gap = {g: max((v - ref[k]).abs().max().item() for k, v in runs[g].model.state_dict().items())
           for g in runs}
    # γ = 0 differs from reverse_bpr only by summing g_f and g_r separately (float rounding)
    assert gap[0.0] < 1e-4 and gap[1.0] > 1e-2, gap


def test_scaling_measures_only_the_branches_that_move(mgcn_trained):
    """With only the ID row tables live (isolation without shared layers) the image and text
    branches never move, so they do not damp the ID branch: its α is 1 and the update equals
    the unscaled one (to rounding). Measuring the ratios over every parameter, frozen ones
    included, gave the ID branch α < 1 here."""
    model, deletion = mgcn_trained
    iso = {"enabled": True, "shared_layers": False, "budget": 1.0, "row_hops": 1}
    scaled = get_method("tru").unlearn(model, deletion, _mgcn_cfg(
        isolation=iso, scaling={"enabled": True, "gamma": 1.0}))
    plain = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation=iso))
    assert scaled.stats["scaling"]["alpha_last"] == {"id": 1.0}
    a, b, before = scaled.model.state_dict(), plain.model.state_dict(), model.state_dict()
    assert not torch.equal(a["item_emb"], before["item_emb"])
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k


def test_scaling_gives_each_moving_branch_its_own_alpha(mgcn_trained):
    """With every layer group live (budget 1) the image, text and shared branches move too: each
    gets an α, some below 1, and the update differs from the unscaled one."""
    model, deletion = mgcn_trained
    iso = {"enabled": True, "shared_layers": True, "budget": 1.0, "row_hops": 1}
    scaled = get_method("tru").unlearn(model, deletion, _mgcn_cfg(
        isolation=iso, scaling={"enabled": True, "gamma": 1.0}))
    plain = get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation=iso))
    alphas = scaled.stats["scaling"]["alpha_last"]
    assert set(alphas) >= {"id", "image", "text"}
    assert max(alphas.values()) == 1.0 and min(alphas.values()) < 0.99
    a, b = scaled.model.state_dict(), plain.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-3


def test_frozen_groups_are_handed_back_trainable_even_when_the_loop_is_left_early(tiny_data):
    """iter_update turns requires_grad off for frozen groups while it runs; closing the
    generator after its first epoch turns it back on, and the caller's model is never frozen."""
    from tru_dist.config import build_config
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import iter_update
    from tru_dist.unlearn.tru.tru import tru_spec

    cfg = build_config(model="lightgcn", overrides=["train.epochs=10", "unlearn.gate.epsilon=0",
                                                    "unlearn.isolation.budget=0.01"])
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.1, 0))
    run = iter_update(model, deletion, cfg, tru_spec(cfg))
    _, work, stats = next(run)
    frozen = stats["isolation"]["frozen_groups"]
    assert frozen and not any(p.requires_grad for n in frozen for p in work.layer_groups()[n])
    assert all(p.requires_grad for p in model.parameters())
    run.close()
    assert all(p.requires_grad for p in work.parameters())


def test_isolation_statistics_of_row_tables_do_not_depend_on_the_candidates(mgcn_trained):
    """Without shared layers only the row tables' gradients are computed for the isolation
    statistics (the backward skips the encoders); their Fisher ratios equal those of the pass
    that computes every group's."""
    model, deletion = mgcn_trained
    stats = {shared: get_method("tru").unlearn(model, deletion, _mgcn_cfg(isolation={
        "enabled": True, "shared_layers": shared})).stats["isolation"] for shared in (True, False)}
    assert len(stats[True]["fisher_ratio"]) > 2
    assert set(stats[False]["fisher_ratio"]) == {"user_emb", "item_emb"}
    for name, ratio in stats[False]["fisher_ratio"].items():
        assert ratio == pytest.approx(stats[True]["fisher_ratio"][name], rel=1e-6), name


def test_deleted_users_rows_reset_fresh_and_frozen(trained):
    model, _, deletion, no_reset, forget = trained
    assert len(forget.removed_users) > 0
    cfg = _cfg(**OFF)
    res = get_method("tru").unlearn(model, deletion, cfg)
    rows = torch.from_numpy(forget.removed_users)
    got = res.model.user_emb.detach()[rows]
    # fresh: far from the trained rows, inside the Xavier bound of a new (n_users × d) table
    assert not torch.allclose(got, model.user_emb.detach()[rows], atol=1e-3)
    assert float(got.abs().max()) <= (6.0 / (model.n_users + model.user_emb.shape[1])) ** 0.5
    assert res.stats["reset_users"] == len(forget.removed_users)
    # frozen: a longer update at another rate leaves them exactly as reset; other rows move
    longer = _cfg(**{**OFF, "epochs": 5, "lr": 0.05})
    res2 = get_method("tru").unlearn(model, deletion, longer)
    assert torch.equal(res2.model.user_emb.detach()[rows], got)
    assert not torch.equal(res2.model.user_emb, res.model.user_emb)
    # a user's fresh row depends on (seed, user id) only, not on which other users are reset
    alone = copy.deepcopy(model)
    reset_users(alone, forget.removed_users[1:2], 0, cfg.unlearn.seed)
    assert torch.equal(alone.user_emb.detach()[rows[1]], got[1])
    # the reset belongs to the deletion step: every approximate method and noop get the same rows
    for name in ("reverse_bpr", "finetune", "grad_ascent", "noop"):
        other = get_method(name).unlearn(model, deletion, cfg).model
        assert torch.equal(other.user_emb.detach()[rows], got), name
    # ... and the switch turns it off for everyone: the removed users keep their trained rows
    kept = get_method("noop").unlearn(model, no_reset, cfg).model
    assert torch.equal(kept.user_emb.detach()[rows], model.user_emb.detach()[rows])


def test_isolation_freezes_groups_and_rows_outside_the_hops(trained):
    model, _, _, deletion, forget = trained
    cfg = _cfg(**{**OFF, "isolation": {"enabled": True, "budget": 0.01, "row_hops": 1}})
    res = get_method("tru").unlearn(model, deletion, cfg)
    iso = res.stats["isolation"]
    assert len(iso["selected_groups"]) == 1  # 1% budget: only the top group
    frozen = iso["frozen_groups"][0]
    assert torch.equal(getattr(res.model, frozen), getattr(model, frozen))
    kept = iso["selected_groups"][0]
    new, old = getattr(res.model, kept).detach(), getattr(model, kept).detach()
    moved = np.flatnonzero((new != old).any(1).numpy())
    allowed = set(forget.train_users.tolist()) if kept == "user_emb" else set(forget.train_items.tolist())
    assert len(moved) > 0 and set(moved.tolist()) <= allowed  # hops=1: only D_f's own rows
    # frozen groups run with requires_grad False; the model handed back trains like any other
    assert all(p.requires_grad for p in res.model.parameters())


def test_gate_convergence_stops_the_update(trained):
    model, _, _, deletion, forget = trained
    cfg = _cfg(**{**OFF, "gate": {"enabled": True, "target": "topk", "epsilon": 1.01}})  # mean G < 1.01
    res = get_method("tru").unlearn(model, deletion, cfg)
    assert res.stats["converged_epoch"] == 0 and res.stats["steps"] == 0
    assert torch.equal(res.model.item_emb, model.item_emb)
    cfg = _cfg(**{**OFF, "gate": {"enabled": True, "target": "topk", "epsilon": 0.0}})
    res = get_method("tru").unlearn(model, deletion, cfg)
    gates = res.stats["gate"]
    assert res.stats["converged_epoch"] is None and len(gates) == cfg.unlearn.epochs + 1
    assert all(0.0 <= g["mean_G"] <= 1.0 and 0.0 <= g["frac_topk"] <= 1.0 for g in gates)
    assert gates[-1]["mean_G"] < gates[0]["mean_G"]  # targets are pushed out of the top-K


def test_loop_lowers_the_scores_of_the_forget_pairs(trained):
    model, _, _, deletion, forget = trained
    graph_after = deletion.graph_after
    cfg = _cfg(**OFF)
    spec = UpdateSpec(forget_term="reverse", retain=False)
    out, _ = run_update(model, deletion, cfg, spec)
    u, i = torch.from_numpy(forget.train_users), torch.from_numpy(forget.train_items)

    def mean_score(m):
        with torch.no_grad():
            e = m.embed(graph_after)
        return float((e.user[u] * e.item[i]).sum(-1).mean())

    assert mean_score(out) < mean_score(model) - 0.1



def test_iter_update_passes_through_run_update_states(tiny_data):
    """The per-epoch generator is the same computation: its state after epoch e equals a
    run with unlearn.epochs = e, and its last state equals the full run."""
    import torch

    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import iter_update, run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    cfg = build_config(model="lightgcn", overrides=["train.epochs=5", "unlearn.epochs=3", "unlearn.lr=0.01",
                                                    "unlearn.gate.epsilon=0", "unlearn.gate.target=topk"])
    model, graph, _ = fit(cfg, tiny_data)
    fs = forget_set(tiny_data, "interactions", 0.05, 0)
    deletion = build_deletion(tiny_data, graph, fs)
    snapshots = {e: {k: v.clone() for k, v in m.state_dict().items()}
                 for e, m, _ in iter_update(model, deletion, cfg, tru_spec(cfg))}
    assert sorted(snapshots) == [1, 2, 3]
    for e in (2, 3):
        short = cfg.model_copy(deep=True)
        short.unlearn.epochs = e
        ref, _ = run_update(model, deletion, short, tru_spec(short))
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(snapshots[e][k], v, rtol=0, atol=0)
    assert any(not torch.equal(snapshots[1][k], snapshots[3][k]) for k in snapshots[1])  # it did move


def test_iter_update_yields_the_start_state_when_the_gate_is_already_converged(tiny_data):
    """A forget set already out of the top-K (ε above any mean gate) is 'converged' at epoch 0:
    the generator still yields one state so a per-epoch consumer has something to score."""
    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import iter_update
    from tru_dist.unlearn.tru.tru import tru_spec

    cfg = build_config(model="lightgcn", overrides=["train.epochs=3", "unlearn.epochs=3",
                                                    "unlearn.gate.epsilon=2.0"])
    model, graph, _ = fit(cfg, tiny_data)
    fs = forget_set(tiny_data, "interactions", 0.05, 0)
    states = list(iter_update(model, build_deletion(tiny_data, graph, fs), cfg, tru_spec(cfg)))
    assert [e for e, _, _ in states] == [0]
    assert states[0][2]["converged_epoch"] == 0


def test_calibrated_gate_line_search_keeps_the_best_state(tiny_data):
    """With a step size far too large the calibration gap rises: the loop backtracks (halves
    the step), and the model it returns is the state of the smallest gap — the very state
    the per-epoch generator yielded at that epoch."""
    import torch

    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import iter_update, run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    cfg = build_config(model="lightgcn", overrides=["train.epochs=30", "unlearn.gate.lr=0.5",
                                                    "unlearn.gate.max_epochs=12", "unlearn.gate.epsilon=0"])
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.1, 0))
    snapshots = {e: {k: v.clone() for k, v in m.state_dict().items()}
                 for e, m, _ in iter_update(model, deletion, cfg, tru_spec(cfg))}
    out, stats = run_update(model, deletion, cfg, tru_spec(cfg))
    gaps = [g["calibration_gap"] for g in stats["gate"]]
    assert stats["gate_target"] == "calibrated" and len(stats["backtracks"]) >= 1
    assert stats["backtracks"][0]["lr"] == pytest.approx(0.25)
    best = stats["best_gap"]
    assert best["gap"] == pytest.approx(min(gaps)) and best["gap"] < gaps[0]
    assert best["restored"] and best["epoch"] >= 1  # the last epochs overshot: an earlier state is served
    for k, v in out.state_dict().items():
        torch.testing.assert_close(v, snapshots[best["epoch"]][k], rtol=0, atol=0)


def test_line_search_plateau_stops_the_creeping_phase(tiny_data):
    """After the first halving, ``gate.plateau`` passes in a row without a lower calibration
    gap end the update at the best state: fewer epochs than without the rule, the stop only
    after a halving, and no pass of the last ``plateau`` lowered the gap. Fails when the rule is
    missing (no stop, same epochs) or stops while the gap still falls."""
    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    base = ["train.epochs=30", "unlearn.gate.max_epochs=30", "unlearn.gate.lr=0.04"]
    cfg = build_config(model="lightgcn", overrides=base)
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "items", 0.05, 0))
    runs = {}
    for plateau in (0, 3):
        c = build_config(model="lightgcn", overrides=[*base, f"unlearn.gate.plateau={plateau}"])
        runs[plateau] = run_update(model, deletion, c, tru_spec(c))[1]
    off, on = runs[0], runs[3]
    assert "plateau_stop" not in off
    stop = on["plateau_stop"]
    assert on["epochs_run"] == stop < off["epochs_run"]
    assert on["backtracks"] and on["backtracks"][0]["epoch"] < stop  # only after a halving
    gaps = [g["calibration_gap"] for g in on["gate"]]
    assert len(gaps) == stop + 1 and min(gaps[-3:]) >= min(gaps[:-3])  # the last three: no lower gap
    assert on["gate"][: len(gaps)] == off["gate"][: len(gaps)]  # the same run up to the stop
    assert on["best_gap"]["gap"] == min(gaps)


def test_plateau_rule_by_hand():
    from tru_dist.unlearn.tru.gate import gap_fell, plateaued

    assert gap_fell(0.20, 0.25) and not gap_fell(11 / 13, 11 / 13) and not gap_fell(0.3, 0.25)
    assert plateaued(3, 1, 3) and plateaued(5, 2, 3)
    assert not plateaued(2, 1, 3)  # the gap fell two passes ago
    assert not plateaued(9, 0, 3)  # no halving yet: a flat gap at the start is the tie-break's case
    assert not plateaued(9, 4, 0)  # switched off


def test_unmoved_rule_by_hand():
    from tru_dist.unlearn.tru.gate import unmoved

    assert unmoved(6 / 7, 0.3763, 6 / 7, 0.3763)  # no pair changed rank
    assert not unmoved(6 / 7, 0.3762, 6 / 7, 0.3763)  # a pair moved towards its target
    assert not unmoved(6 / 7, 0.3764, 6 / 7, 0.3763)  # ... or away from it: an overshoot
    assert not unmoved(5 / 7, 0.3763, 6 / 7, 0.3763)


def test_line_search_waits_out_passes_that_moved_no_pair(tiny_data):
    """MIG-GT on ``synthetic:tiny``, one deleted item (7 pairs): the first steps at ``gate.lr``
    reorder none of its pairs. Read as stalls (``gate.wait_unmoved=false``), the line search
    halves twice and returns the start model; waited out, the same run goes on and the item
    moves — a lower calibration gap. The passes before the first unmoved one are identical."""
    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    base = ["train.epochs=30"]
    model, graph, _ = fit(build_config(model="miggt", overrides=base), tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "items", 0.01, 1))
    runs = {}
    for wait in (False, True):
        cfg = build_config(model="miggt", overrides=[*base, f"unlearn.gate.wait_unmoved={wait}"])
        runs[wait] = run_update(model, deletion, cfg, tru_spec(cfg))[1]
    off, on = runs[False], runs[True]
    start = off["gate"][0]["calibration_gap"]
    assert off["best_gap"] == {"gap": start, "restored": True, "epoch": 0}  # stopped at the start model
    assert "unmoved_passes" not in off and len(off["backtracks"]) == 2
    assert on["unmoved_passes"] >= 1 and on["epochs_run"] > off["epochs_run"]
    assert on["best_gap"]["gap"] < start  # the deleted item moved
    assert on["gate"][0] == off["gate"][0] and on["gate"][1]["transport"] == on["gate"][0]["transport"]


def test_utility_check_by_hand():
    assert gate.utility_loss(80.0, 100.0) == pytest.approx(0.2)
    assert gate.utility_loss(120.0, 100.0) == 0.0  # a gain is not rewarded
    assert gate.utility_loss(0.0, 0.0) == 0.0  # no hit at the start: nothing to lose
    assert gate.objective(0.1, 0.2, 0.5) == pytest.approx(0.2)
    # synthetic:small, MIG-GT, interactions 5%, tuning seed 101: the gap fell 0.113 -> 0.097
    # for 3.8% of the held-out hits — not worth it at λ_u = 1, worth it at λ_u = 0.25
    assert not gate.keeps_update(0.113, 0.03, 0.097, 0.02, 0.038, 1.0)
    assert gate.keeps_update(0.113, 0.03, 0.097, 0.02, 0.038, 0.25)
    assert gate.keeps_update(0.20, 0.10, 0.05, 0.02, 0.0, 1.0)  # a gap closed for free
    # the same gap, nothing spent: the line search's tie-break decides (pairs nearer their targets)
    assert gate.keeps_update(6 / 7, 0.38, 6 / 7, 0.30, 0.0, 1.0)
    assert not gate.keeps_update(6 / 7, 0.38, 6 / 7, 0.38, 0.0, 1.0)  # nothing bought at all
    assert not gate.keeps_update(6 / 7, 0.38, 6 / 7, 0.30, 0.01, 1.0)  # the same gap, hits spent


def test_utility_check_puts_back_the_start_when_the_update_spent_held_out_hits(tiny_data):
    """MIG-GT on ``synthetic:tiny``, interactions 5%, forget seed 3: the line search (on the gap
    alone) returns a state that ranks fewer valid pairs in their users' top 20 than the start.
    With the utility check at a large λ_u the same search (the same passes, the same gaps) ends
    by putting the start back; at λ_u = 0 it does not. The start count the check charges
    against is the valid hits@20 of the start model, counted here from outside."""
    from tru_dist.config import build_config
    from tru_dist.data.dataset import VALID
    from tru_dist.train.evaluate import eval_embeddings, history_mask, pair_ranks
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.tru.tru import tru_spec

    base = ["train.epochs=30"]
    model, graph, _ = fit(build_config(model="miggt", overrides=base), tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.05, 3))
    d, g = deletion.data_after, deletion.graph_after
    valid = d.labels == VALID

    def hits(m) -> int:
        emb = eval_embeddings(m, g)
        ranks = pair_ranks(emb.user, emb.item, torch.from_numpy(d.users[valid]),
                           torch.from_numpy(d.items[valid]), history_mask(d, ["train"], g))
        return int((ranks < 20).sum())

    noop = get_method("noop").unlearn(model, deletion, build_config(model="miggt", overrides=base)).model
    start = hits(noop)
    found = {}
    for weight in (0.0, 1e6):
        cfg = build_config(model="miggt", overrides=[*base, f"unlearn.gate.utility_weight={weight}"])
        updated, stats = run_update(model, deletion, cfg, tru_spec(cfg))
        found[weight] = (updated, stats)
    (off_model, off), (on_model, on) = found[0.0], found[1e6]
    assert "utility_check" not in off
    assert [e["calibration_gap"] for e in on["gate"]] == [e["calibration_gap"] for e in off["gate"]]
    assert hits(off_model) < start == hits(on_model)
    check = on["utility_check"]
    assert check["kept"] == "start" and check["utility_loss"] == pytest.approx(1 - hits(off_model) / start)
    assert check["end_gap"] == off["best_gap"]["gap"] <= check["start_gap"] == on["best_gap"]["gap"]
    assert off["best_gap"]["epoch"] > 0 and on["best_gap"]["epoch"] == 0
    on_params, noop_params = dict(on_model.named_parameters()), dict(noop.named_parameters())
    assert on_params.keys() == noop_params.keys()  # the start model's weights, as noop serves them:
    assert all(torch.equal(on_params[k], noop_params[k]) for k in on_params)


def test_calibrated_gate_moves_forget_ranks_to_the_held_out_distribution(tiny_data):
    """The calibrated target, measured from outside: after TRU the deleted pairs' rank
    percentiles are much closer (KS) to those of never-trained valid pairs than after the
    deletion step alone — and a pair is never simply pushed to the bottom (mean percentile
    stays below the uniform 0.5). Fails for noop (no move) and for an unbounded push."""
    from scipy.stats import ks_2samp

    from tru_dist.config import build_config
    from tru_dist.data.dataset import VALID
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.evaluate import eval_embeddings, history_mask, pair_ranks
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.metrics import forget_ranks

    # the target's pull alone: here the update closes less calibration gap than the share of
    # valid hits it spends, so the utility check (on by default) would put the start back
    cfg = build_config(model="lightgcn", overrides=["train.epochs=30", "unlearn.scaling.enabled=false",
                                                    "unlearn.gate.utility_weight=0"])
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.1, 0))
    d, g = deletion.data_after, deletion.graph_after

    def pct(m):
        r, n = forget_ranks(m, g, d, deletion.forget, eval_embeddings(m, g))
        return (r.double() / n.double()).numpy()

    noop = get_method("noop").unlearn(model, deletion, cfg).model
    tru = get_method("tru").unlearn(model, deletion, cfg).model
    emb = eval_embeddings(noop, g)
    ex = history_mask(d, ["train"], g)
    vu, vi = torch.from_numpy(d.users[d.labels == VALID]), torch.from_numpy(d.items[d.labels == VALID])
    n_cand = d.n_items - (ex.crow_indices()[1:] - ex.crow_indices()[:-1])[vu]
    ref = (pair_ranks(emb.user, emb.item, vu, vi, ex).double() / n_cand.double()).numpy()
    before, after = ks_2samp(pct(noop), ref).statistic, ks_2samp(pct(tru), ref).statistic
    assert after < 0.6 * before, (before, after)
    assert pct(tru).mean() < 0.5


def test_noise_floor_by_hand():
    """δ = c(α)·sqrt(1/n + w²/m), c(α) = sqrt(−½·ln(α/2)): the KS critical values."""
    c05 = math.sqrt(-0.5 * math.log(0.025))
    assert c05 == pytest.approx(1.3581, abs=1e-4)  # the tabulated 1.358 at α = 0.05
    assert gate.noise_floor(87, 261, 1.0, 0.05) == pytest.approx(c05 * math.sqrt(1 / 87 + 1 / 261))
    assert gate.noise_floor(87, 261, 1.0, 0.05) == pytest.approx(0.16813, abs=1e-4)
    assert gate.noise_floor(100, 0, 0.0, 0.05) == pytest.approx(c05 / 10)  # no sampled reference
    assert gate.noise_floor(100, 400, 0.5, 0.05) == pytest.approx(c05 * math.sqrt(0.01 + 0.25 / 400))
    assert gate.noise_floor(100, 400, 1.0, 0.0) == 0.0 and gate.noise_floor(0, 400, 1.0, 0.05) == 0.0
    assert gate.noise_floor(100, 400, 1.0, 0.01) > gate.noise_floor(100, 400, 1.0, 0.05)  # stricter test


def test_significance_starts_an_update_only_for_a_gap_beyond_the_noise_floor(tiny_data):
    """MIG-GT on ``synthetic:tiny``, interactions 5%: with α set so that the KS critical value
    lies above the first calibration gap, TRU takes no step and serves what ``noop`` serves;
    with α set so that it lies below, the run is step for step the run without the test (α = 0),
    which moves the model. α is chosen here from the measured gap, by the formula."""
    from tru_dist.config import build_config
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.tru.tru import tru_spec

    base = ["train.epochs=30", "unlearn.gate.utility_weight=0"]
    model, graph, _ = fit(build_config(model="miggt", overrides=base), tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.05, 3))

    def run(alpha: float):
        cfg = build_config(model="miggt", overrides=[*base, f"unlearn.gate.significance={alpha}"])
        return run_update(model, deletion, cfg, tru_spec(cfg))

    free_model, free = run(0.0)
    gap0, n = free["gate"][0]["calibration_gap"], free["gate"][0]["n_pairs"]
    m = free["gate_reference"]["valid_pairs"]
    assert "gate_noise_floor" not in free and free["steps"] > 0 and gap0 > 0.05
    unit = math.sqrt(1 / n + 1 / m)  # every pair is a held pair here (no cold item, no reset user)

    def alpha_for(c: float) -> float:  # c(α) = c
        return 2 * math.exp(-2 * c * c)

    held_model, held = run(alpha_for(1.2 * gap0 / unit))
    floor = held["gate_noise_floor"]
    assert floor["update"] is False and floor["floor"] == pytest.approx(1.2 * gap0) and held["steps"] == 0
    noop = get_method("noop").unlearn(model, deletion, build_config(model="miggt", overrides=base)).model
    assert all(torch.equal(a, b) for a, b in zip(held_model.parameters(), noop.parameters(), strict=True))

    moved_model, moved = run(alpha_for(0.8 * gap0 / unit))
    assert moved["gate_noise_floor"]["update"] is True and moved["steps"] == free["steps"]
    assert [e["calibration_gap"] for e in moved["gate"]] == [e["calibration_gap"] for e in free["gate"]]

    def same(a_model, b_model) -> bool:
        return all(torch.equal(a, b) for a, b in zip(a_model.parameters(), b_model.parameters(), strict=True))

    assert same(moved_model, free_model) and not same(moved_model, noop)


def test_whole_user_deletion_is_on_target_without_a_gate_pass(trained):
    """Every deleted pair is a deleted user's: TRU's calibrated target is the served fresh row's
    own rank, so TRU returns the deletion step's start (noop) without a pass or a step."""
    from tru_dist.unlearn.deletion import start_model
    from tru_dist.unlearn.tru.tru import tru_spec

    model, _graph, deletion, _, forget = trained
    assert forget.regime.startswith("users") and len(deletion.reset_users) > 0
    cfg = _cfg()
    out, stats = run_update(model, deletion, cfg, tru_spec(cfg))
    assert stats["steps"] == 0 and stats["converged_epoch"] == 0 and "gate" not in stats
    assert "on target" in stats["gate_target"]
    start = start_model(model, deletion, cfg.unlearn.seed)
    for (k, a), b in zip(out.state_dict().items(), start.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), model.state_dict().values(),
                                                     strict=True))  # the reset did happen


def _without_valid(data):
    """``data`` with every VALID pair relabelled TEST: a data set without a valid split."""
    import dataclasses

    from tru_dist.data.dataset import TEST, VALID

    labels = np.where(data.labels == VALID, TEST, data.labels).astype(data.labels.dtype)
    return dataclasses.replace(data, labels=labels)


def test_whole_user_deletion_is_on_target_without_valid_pairs_too(trained, tiny_data):
    """A deleted user's pairs are on target (the served fresh row's own ranks) whether or not D_r
    has VALID pairs, which only the held group's target reads: no pass, no step, the start model.
    It used to fall back to the top-K gate, which pushed a fresh row's pairs out of its top-K."""
    from tru_dist.unlearn.deletion import start_model
    from tru_dist.unlearn.tru.tru import tru_spec

    model, graph, *_ = trained
    no_valid = _without_valid(tiny_data)
    deletion = build_deletion(no_valid, graph, forget_set(no_valid, "users", 0.05, 0))
    cfg = _cfg()
    out, stats = run_update(model, deletion, cfg, tru_spec(cfg))
    assert stats["steps"] == 0 and "on target" in stats["gate_target"]
    start = start_model(model, deletion, cfg.unlearn.seed)
    pairs = zip(out.state_dict().values(), start.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_an_items_deletion_without_valid_pairs_keeps_the_calibrated_cold_target(trained, tiny_data):
    """Every deleted pair of an items deletion is cold: its target is the cold reference, which
    needs no valid pair, so data without a valid split keeps the calibrated gate and moves the
    deleted items down as it would with one. (It fell back to the top-K gate, which left them
    near the top: MIG-GT on synthetic data, forget percentile 0.131 original, 0.145 TRU, Retrain
    0.878.) An interactions deletion there has held pairs, which have no reference: top-K."""
    from tru_dist.unlearn.metrics import forget_metrics
    from tru_dist.unlearn.tru.tru import tru_spec

    model, graph, *_ = trained
    no_valid = _without_valid(tiny_data)
    deletion = build_deletion(no_valid, graph, forget_set(no_valid, "items", 0.05, 0))
    cfg = _cfg()
    out, stats = run_update(model, deletion, cfg, tru_spec(cfg))
    assert stats["gate_target"] == "calibrated" and stats["gate_reference"]["valid_pairs"] == 0
    assert stats["gate_reference"]["mean_pct"] is None  # no valid sample, no reference mean
    assert stats["gate_reference"]["cold_item_share"] == 1.0 and stats["steps"] > 0
    assert "utility_check" not in stats  # no held-out hits to weigh the update against
    noop = get_method("noop").unlearn(model, deletion, cfg).model

    def pct(m) -> float:
        return forget_metrics(m, deletion.graph_after, deletion.data_after, deletion.forget)["rank_pct"]

    before, after = pct(noop), pct(out)
    first = stats["gate"][0]
    assert after > before + 0.05, (before, after)  # the deleted items moved down towards their targets
    assert abs(after - first["mean_target_pct"]) < abs(before - first["mean_target_pct"])

    pairs = build_deletion(no_valid, graph, forget_set(no_valid, "interactions", 0.05, 0))
    _, stats = run_update(model, pairs, cfg, tru_spec(cfg))
    assert stats["gate_target"].startswith("topk")


def test_pair_mask_matches_only_listed_pairs(tiny_data):
    import numpy as np

    u, i = tiny_data.users[:3], tiny_data.items[:3]
    mask = tiny_data.pair_mask(u, i)
    keys = tiny_data.pair_keys(tiny_data.users, tiny_data.items)
    assert np.array_equal(mask, np.isin(keys, tiny_data.pair_keys(u, i)))
    # an out-of-range item must not alias the next user's pair (u·n_items + i)
    nxt = tiny_data.users == u[0] + 1
    alias_item = tiny_data.items[nxt][0] + tiny_data.n_items
    assert not tiny_data.pair_mask(np.array([u[0], u[0] + 1]), np.array([alias_item, -1])).any()


def test_line_search_order_breaks_exact_gap_ties_by_transport():
    """(gap, transport) lexicographically: a lower gap wins whatever the transport; an equal gap
    wins only with a lower transport (pairs closer to their targets); a higher gap never."""
    from tru_dist.unlearn.tru.gate import improves

    assert improves(0.20, 0.9, 0.25, 0.1)  # lower gap, farther pairs: still better
    assert improves(11 / 13, 0.40, 11 / 13, 0.44)  # the same KS step, pairs moved closer
    assert not improves(11 / 13, 0.44, 11 / 13, 0.44)  # nothing moved: a stall
    assert not improves(11 / 13, 0.50, 11 / 13, 0.44)  # same gap, farther: a stall
    assert not improves(0.30, 0.01, 0.25, 0.44)  # higher gap: a stall however close
    assert improves(0.5, 1.0, float("inf"), float("inf"))  # the first pass is the best so far


def test_owner_keep_term_holds_the_moved_users_other_scores(tiny_data):
    """κ_o (``gate.owner_keep_weight``) anchors the retained train pairs of the users whose rows
    the update moves: per unit of motion of the deleted pairs, their other scores drift less
    than without it. A small fixed step size and no early stop, so both runs take the same
    number of steps. Fails for noop (nothing moves) and for a term that is not applied (the
    two runs would be equal)."""
    from tru_dist.config import build_config
    from tru_dist.train.trainer import fit

    cfg = build_config(model="lightgcn", overrides=[
        "train.epochs=30", "unlearn.isolation.row_hops=1", "unlearn.gate.lr=0.01",
        "unlearn.gate.max_epochs=4", "unlearn.gate.epsilon=0", "unlearn.gate.patience=10"])
    model, graph, _ = fit(cfg, tiny_data)
    forget = forget_set(tiny_data, "interactions", 0.1, 0)
    deletion = build_deletion(tiny_data, graph, forget)
    with torch.no_grad():
        start = get_method("noop").unlearn(model, deletion, cfg).model.eval().embed(deletion.graph_after)
    tu, ti = (np.asarray(a) for a in deletion.data_after.train_pairs)
    owners = np.isin(tu, forget.train_users)
    ou, oi = torch.from_numpy(tu[owners]), torch.from_numpy(ti[owners])
    fu, fi = torch.from_numpy(forget.train_users), torch.from_numpy(forget.train_items)

    def change(emb, u, i):
        now, then = (emb.user[u] * emb.item[i]).sum(-1), (start.user[u] * start.item[i]).sum(-1)
        return float((now - then).abs().mean())

    drift, moved = {}, {}
    for weight in (0.0, 30.0):
        run = copy.deepcopy(cfg)
        run.unlearn.gate.owner_keep_weight = weight
        res = get_method("tru").unlearn(model, deletion, run)
        assert res.stats["epochs_run"] == 4
        with torch.no_grad():
            emb = res.model.eval().embed(deletion.graph_after)
        drift[weight], moved[weight] = change(emb, ou, oi), change(emb, fu, fi)
    assert moved[30.0] > 0 and moved[0.0] > 0, moved
    assert drift[30.0] < 0.5 * drift[0.0], drift
    assert drift[30.0] / moved[30.0] < 0.9 * drift[0.0] / moved[0.0], (drift, moved)


def _assert_same_run(model_a, stats_a: dict, model_b, stats_b: dict, start, rtol: float, atol: float) -> None:
    """Two runs of one update are the same: equal gate-pass statistics and parameters (to the
    given tolerances), and the update moved the model away from ``start`` — equal do-nothing
    runs would pass the first two checks."""
    for a, b in zip(stats_a["gate"], stats_b["gate"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=rtol, abs=atol), k
    moved = 0.0
    for k, v in model_b.state_dict().items():
        torch.testing.assert_close(model_a.state_dict()[k], v, rtol=rtol, atol=atol, msg=k)
        moved = max(moved, float((v.double() - start.state_dict()[k].double()).abs().max()))
    assert moved > 1e-3


@pytest.mark.parametrize("target", ["calibrated", "topk"])
def test_miggt_update_through_embed_rows_equals_the_full_forward(tiny_data, monkeypatch, target):
    """On MIG-GT the update's steps and later gate passes take only the rows they use
    (``embed_rows``: the global attention on those rows). The run must be the one the full
    forward gives — the same gate passes and parameters, up to the order of float sums in the
    backward. The top-K gate ranks all items for the batch's users every step: it keeps the
    full tables (it once crashed on a row-only embedding)."""
    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.models.miggt import MIGGT
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    over = ["train.epochs=3", "dim=16", "feat_hidden=16", "gt_samples=4", f"unlearn.gate.target={target}",
            "unlearn.gate.max_epochs=6", "unlearn.epochs=3"]
    cfg = build_config(model="miggt", overrides=over)
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "items", 0.05, 0))
    calls = []
    rows = MIGGT.embed_rows

    def counted(self, graph, users, items):
        calls.append(len(items) == tiny_data.n_items)  # True: a gate pass (every item ranked)
        return rows(self, graph, users, items)

    monkeypatch.setattr(MIGGT, "embed_rows", counted)
    fast, fast_stats = run_update(model, deletion, cfg, tru_spec(cfg))
    if target == "calibrated":  # the row path is taken by the steps and by the gate passes after the first
        assert False in calls and calls.count(True) == fast_stats["epochs_run"]
    else:
        assert not calls
    monkeypatch.setattr(MIGGT, "cheap_rows", property(lambda self: False))
    calls.clear()
    full, full_stats = run_update(model, deletion, cfg, tru_spec(cfg))
    assert not calls
    assert fast_stats["epochs_run"] == full_stats["epochs_run"] >= 2
    _assert_same_run(fast, fast_stats, full, full_stats, model, rtol=1e-4, atol=1e-6)


def test_content_neighbours_hand_case():
    """Two modalities of different widths each count once (rows L2-normalised per modality):
    item 0's nearest retained items by Σ_m cos are 2 and 4 (a tie: the lower id first), then 3,
    though item 1 is nearest on the wide modality alone; no features → None."""
    wide = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 1, 0, 0], [0.8, 0.6, 0, 0]],
                    np.float32)
    narrow = np.array([[1, 0], [-1, 0], [1, 0], [1, 0], [1, 0]], np.float32)
    feats = {"wide": 10 * wide, "narrow": narrow}  # scale does not matter either
    nn = gate.content_neighbours(feats, np.array([0]), np.array([1, 2, 3, 4]), 3)
    # sims: item1 1−1 = 0, item2 0.8+1 = 1.8, item3 0+1 = 1, item4 1.8 (tie with 2: lower id first)
    assert nn.tolist() == [[2, 4, 3]]
    assert gate.content_neighbours(feats, np.array([0]), np.array([1, 2]), 5).shape == (1, 2)
    assert gate.content_neighbours({}, np.array([0]), np.array([1]), 3) is None


def test_neighbours_cold_reference_moves_deleted_items_differently_and_is_uniform_for_id_only(tiny_data):
    """``gate.cold_reference: neighbours`` on an items deletion (MGCN): it records its k, and its
    update differs from the uniform reference's (the option is not a no-op); for an ID-only
    backbone (LightGCN, whose workers hold no features) it is the uniform reference bit for bit."""
    from tru_dist.config import build_config
    from tru_dist.train.trainer import fit

    def run(model_name, reference):
        cfg = build_config(model=model_name, overrides=[
            "train.epochs=5", "unlearn.isolation.retained_item_rows=true",
            f"unlearn.gate.cold_reference={reference}"])
        model, graph, _ = fit(cfg, tiny_data)
        deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "items", 0.05, 0))
        return get_method("tru").unlearn(model, deletion, cfg)

    nb, uni = run("mgcn", "neighbours"), run("mgcn", "uniform")
    assert nb.stats["gate_reference"]["cold_neighbours"] == 5
    assert nb.stats["gate_reference"]["cold_item_share"] > 0
    assert not torch.equal(nb.model.item_emb, uni.model.item_emb)
    nb0, uni0 = run("lightgcn", "neighbours"), run("lightgcn", "uniform")
    assert "cold_neighbours" not in nb0.stats["gate_reference"]
    same, other = nb0.model.state_dict(), uni0.model.state_dict()
    assert same.keys() == other.keys() and all(torch.equal(same[k], other[k]) for k in same)


def test_nearest_merged_over_shards_equals_one_pass():
    """Every shard proposes its best k and the merge keeps the best k by the same order: the
    result equals one pass over all kept items (what makes the neighbours W-independent)."""
    rng = np.random.default_rng(0)
    unit = gate.unit_rows({"a": rng.normal(size=(60, 7)), "b": rng.normal(size=(60, 3))}, np.arange(60))
    unit[41] = unit[40]  # an exact tie across the shard boundary
    cold, kept = np.array([3, 17, 40]), np.setdiff1d(np.arange(60), [3, 17])
    whole = gate.content_neighbours({"u": unit}, cold, kept, 6)
    props = [gate.nearest(unit[cold], unit[part], part, 6) for part in (kept[kept < 41], kept[kept >= 41])]
    merged = gate.merge_nearest(np.concatenate([p[0] for p in props], 1),
                                np.concatenate([p[1] for p in props], 1), 6)[1]
    assert np.array_equal(merged, whole)
    chunked = gate.nearest_in_chunks(unit[cold], {"u": unit}, kept, kept, 6, chunk=7)[1]
    assert np.array_equal(chunked, whole)
    assert whole[2, 0] == 40 and whole[2, 1] == 41  # itself (kept), then its exact copy


@pytest.mark.parametrize(("name", "overrides"), [
    ("mgcn", ["train.epochs=5", "dim=16", "unlearn.gate.lr=0.02"]),  # one step per epoch
    ("mgcn", ["train.epochs=5", "dim=16", "unlearn.gate.lr=0.002", "unlearn.batch_size=16"]),  # 11 per epoch
    ("lightgcn", ["train.epochs=30", "unlearn.gate.lr=0.05"]),
    ("lightgcn", ["train.epochs=30", "unlearn.gate.lr=0.01", "unlearn.batch_size=16"]),
])
def test_step_takes_the_gate_pass_forward_only_while_no_parameter_changed(tiny_data, monkeypatch, name,
                                                                         overrides):
    """MGCN's and LightGCN's forwards are the same in eval and train mode, so the calibrated gate
    pass builds it with autograd on and the step after it takes it instead of running it again.
    The run must be the one two forwards give — the same gate passes and parameters — including
    after the line search puts a best state back (a write the step must see: a forward kept
    across it would step from the overshot parameters) and with several steps per epoch (only
    the first starts from the parameters the gate pass ranked)."""
    from tru_dist.config import build_config
    from tru_dist.models.lightgcn import LightGCN
    from tru_dist.models.mgcn import MGCN
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.engine import run_update
    from tru_dist.unlearn.tru.tru import tru_spec

    backbone = {"mgcn": MGCN, "lightgcn": LightGCN}[name]
    # utility check off: on this deletion it would put the start back, and the run must move
    cfg = build_config(model=name, overrides=["unlearn.gate.max_epochs=10", "unlearn.gate.epsilon=0",
                                              "unlearn.gate.utility_weight=0", *overrides])
    model, graph, _ = fit(cfg, tiny_data)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "interactions", 0.1, 0))
    calls = []
    embed = backbone.embed

    def counted(self, graph):
        calls.append(1)
        return embed(self, graph)

    monkeypatch.setattr(backbone, "embed", counted)
    shared, shared_stats = run_update(model, deletion, cfg, tru_spec(cfg))
    n_shared = len(calls)
    monkeypatch.setattr(backbone, "mode_free_forward", False)
    calls.clear()
    twice, twice_stats = run_update(model, deletion, cfg, tru_spec(cfg))
    reused = shared_stats["gate_forwards_reused"]
    assert "gate_forwards_reused" not in twice_stats
    assert twice_stats["backtracks"] and twice_stats["steps"] >= 3  # a put-back happened between steps
    assert 0 < reused < twice_stats["steps"]  # … and the step after it ran its own forward
    assert reused <= twice_stats["epochs_run"]  # at most the first step of an epoch
    assert len(calls) - n_shared == reused
    assert shared_stats["epochs_run"] == twice_stats["epochs_run"]
    assert shared_stats["backtracks"] == twice_stats["backtracks"]
    _assert_same_run(shared, shared_stats, twice, twice_stats, model, rtol=1e-5, atol=1e-7)


def test_a_subclass_that_overrides_embed_does_not_inherit_a_mode_free_forward():
    """``mode_free_forward`` lets a step reuse an eval-mode forward; a subclass that changes
    ``embed`` (dropout, noise in training mode) must declare it again to keep it."""
    from tru_dist.models.lightgcn import LightGCN
    from tru_dist.models.mgcn import MGCN

    class NoisyLightGCN(LightGCN):
        def embed(self, graph):
            return super().embed(graph)

    class DeclaredLightGCN(LightGCN):
        mode_free_forward = True

        def embed(self, graph):
            return super().embed(graph)

    class SameMGCN(MGCN):
        pass

    assert LightGCN.mode_free_forward and MGCN.mode_free_forward and SameMGCN.mode_free_forward
    assert not NoisyLightGCN.mode_free_forward
    assert DeclaredLightGCN.mode_free_forward
