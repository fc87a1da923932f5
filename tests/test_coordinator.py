"""Coordinator: pure decisions from all-reduced statistics, and rank 0's decision everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from tru_dist.distributed import coordinator as co
from tru_dist.distributed.process_group import spawn_local


def test_gate_decision_from_item_sums_and_counts():
    total = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    count = torch.tensor([2.0, 0.0, 4.0], dtype=torch.float64)
    d = co.gate_decision(total, count, eps=0.7)
    assert d.p_items.tolist() == [0.5, 0.0, 0.75]  # P_i = Σg/count, 0 without forget pairs
    assert d.mean_g == pytest.approx(4 / 6) and d.mean_p == pytest.approx(0.625)
    assert d.converged  # mean G = 0.667 < 0.7
    assert not co.gate_decision(total, count, eps=0.5).converged


def test_branch_alphas_scale_by_forget_to_retain_ratio():
    forget = {"id": 4.0, "image": 1.0, "text": 0.0}
    retain = {"id": 1.0, "image": 1.0, "text": 1.0}
    # r = ‖g_f‖/‖g_r‖ = 2, 1, 0 -> α = clip((r / 2)^γ, α_min, 1)
    expected = {"id": 1.0, "image": 0.5, "text": 0.1}
    assert co.branch_alphas(forget, retain, 1.0, 0.1, 0.0) == pytest.approx(expected)
    assert co.branch_alphas(forget, retain, 2.0, 0.1, 0.0)["image"] == pytest.approx(0.25)
    assert co.branch_alphas(forget, retain, 0.0, 0.1, 0.0) == {"id": 1.0, "image": 1.0, "text": 1.0}


def test_isolation_keeps_the_most_sensitive_group_within_the_budget():
    f_sum = {"a": 8.0, "b": 1.0, "c": 4.0}
    counts = {"a": 4.0, "b": 1.0, "c": 2.0}
    r_sum = dict(counts)  # mean retain Fisher 1 everywhere: S = 2, 1, 2
    chosen, share = co.isolation_decision(f_sum, r_sum, counts, counts, budget=0.5, delta=0.0)
    assert chosen == ["a"] and share == pytest.approx(4 / 7)  # c would exceed 0.5·7, b too
    chosen, share = co.isolation_decision(f_sum, r_sum, counts, counts, budget=1.0, delta=0.0)
    assert chosen == ["a", "c", "b"] and share == pytest.approx(1.0)


def test_should_stop_when_mean_gate_below_epsilon():
    assert co.should_stop(0.4, 10, 0.05)
    assert not co.should_stop(0.6, 10, 0.05)
    assert co.should_stop(0.0, 0, 0.05)  # empty forget set


def test_decide_and_broadcast_is_a_plain_call_at_world_size_one():
    calls = []

    def decide(x, scale=1.0):
        calls.append(x)
        return {"y": x * scale}

    assert co.decide_and_broadcast(decide, 3.0, scale=2.0) == {"y": 6.0}
    assert calls == [3.0]


def _broadcast_probe(rank: int, world: int) -> dict:
    # every rank holds slightly different statistics; everyone must apply rank 0's decision
    total = torch.tensor([1.0 + rank, 0.0, 3.0], dtype=torch.float64)
    count = torch.tensor([2.0, 0.0, 4.0], dtype=torch.float64)
    calls = []

    def gate(t, c, eps):
        calls.append(rank)
        return co.gate_decision(t, c, eps)

    d = co.decide_and_broadcast(gate, total, count, eps=0.7)
    alphas = co.decide_and_broadcast(co.branch_alphas, {"id": 4.0 * (1 + rank), "image": 1.0},
                                     {"id": 1.0, "image": 1.0}, 1.0, 0.1, 0.0, src=1)
    return {"p": d.p_items, "mean_g": d.mean_g, "converged": d.converged, "calls": calls, "alphas": alphas}


def test_decide_and_broadcast_sends_rank0_decision_to_every_rank():
    r0, r1 = spawn_local(_broadcast_probe, 2)
    assert r0["calls"] == [0] and r1["calls"] == []  # decided once, on rank 0
    for r in (r0, r1):
        assert r["p"].tolist() == [0.5, 0.0, 0.75] and isinstance(r["p"], torch.Tensor)
        assert math.isclose(r["mean_g"], 4 / 6) and r["converged"]
        # src=1 decided with rank 1's statistics: ‖g_f‖ = √8, 1 -> α_image = 1/√8 (rank 0's: 1/2)
        assert r["alphas"] == pytest.approx({"id": 1.0, "image": 8 ** -0.5})
