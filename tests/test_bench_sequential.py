"""``tru-dist bench sequential`` on tiny synthetic data: the chain of single-user requests is the
ledger's, noop's chain equals its batched call, the JSON carries the interface, bad input is
one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from tru_dist.bench_sequential import (
    apply_in_order,
    bench_sequential,
    draw_users,
    drift_steps,
    eligible_users,
    forget_of,
)
from tru_dist.cli import main
from tru_dist.compare import train_original
from tru_dist.config import build_config
from tru_dist.data.dataset import TRAIN
from tru_dist.data.regimes import user_request_table
from tru_dist.unlearn.base import get_method
from tru_dist.unlearn.deletion import build_deletion
from tru_dist.unlearn.ledger import DeletionLedger

R = 5


@pytest.fixture(scope="module")
def trained(tiny_data):
    cfg = build_config(model="lightgcn", overrides=["train.epochs=2"])
    model, graph, _, _ = train_original(cfg, tiny_data, None)
    users = draw_users(tiny_data, R, seed=1)
    table = user_request_table(users, "test")
    forgets = [forget_of(tiny_data, table, [k]) for k in range(R)]
    return cfg, model, graph, table, forgets


@pytest.fixture(scope="module")
def noop_report(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("seq") / "seq.json"
    report = bench_sequential(tiny_data, "lightgcn", requests=R, method="noop", window=2, epochs=2, seed=1,
                              out_json=out)
    return report, json.loads(out.read_text())


def _pairs(users, items) -> set[tuple[int, int]]:
    return set(zip(np.asarray(users).tolist(), np.asarray(items).tolist(), strict=True))


def test_users_are_distinct_eligible_and_seeded(tiny_data):
    users = draw_users(tiny_data, R, seed=1)
    degree = np.bincount(tiny_data.users[tiny_data.labels == TRAIN], minlength=tiny_data.n_users)
    assert len(set(users.tolist())) == R and (degree[users] >= 2).all()
    assert np.array_equal(users, draw_users(tiny_data, R, seed=1))
    assert not np.array_equal(users, draw_users(tiny_data, R, seed=2))
    assert set(eligible_users(tiny_data).tolist()) == set(np.flatnonzero(degree >= 2).tolist())


def test_noop_chain_passes_each_model_on_and_equals_the_batched_call(trained, tiny_data):
    """noop only resets deleted users' rows (seeded per user), so applying the requests one at a
    time must give the batched call's parameters exactly — which fails if a step restarted from
    the original (only the last user would be reset) or dropped an earlier deletion."""
    cfg, model, graph, table, forgets = trained
    seq, seconds, _ = apply_in_order(model, tiny_data, graph, forgets, "noop", cfg)
    batch = get_method("noop").unlearn(model, build_deletion(tiny_data, graph, forget_of(tiny_data, table,
                                                                                         slice(None))), cfg)
    a, b, orig = seq.state_dict(), batch.model.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    deleted = torch.as_tensor([int(f.users[0]) for f in forgets])
    table_name = next(k for k in a if a[k].shape[0] == tiny_data.n_users)
    assert not torch.equal(a[table_name][deleted], orig[table_name][deleted])  # every user was reset
    kept = torch.ones(tiny_data.n_users, dtype=torch.bool)
    kept[deleted] = False
    assert torch.equal(a[table_name][kept], orig[table_name][kept])
    assert len(seconds) == R and all(s > 0 for s in seconds)


def test_the_chain_removes_exactly_what_the_ledger_would(trained, tiny_data, tmp_path):
    """The last request's before-state is D minus requests 1..R-1 (no pair lost or kept) and its
    after-state D minus the union — the same 'earlier' pairs a real DeletionLedger plans."""
    cfg, model, graph, table, forgets = trained
    _, _, last = apply_in_order(model, tiny_data, graph, forgets, "noop", cfg)
    everything = _pairs(tiny_data.users, tiny_data.items)
    earlier = set().union(*(_pairs(f.users, f.items) for f in forgets[:-1]))
    deleted = earlier | _pairs(forgets[-1].users, forgets[-1].items)
    assert _pairs(last.data_before.users, last.data_before.items) == everything - earlier
    assert _pairs(last.data_after.users, last.data_after.items) == everything - deleted
    union_train = set().union(*(_pairs(f.train_users, f.train_items) for f in forgets))
    assert _pairs(*last.data_after.train_pairs) == _pairs(*tiny_data.train_pairs) - union_train
    ui = last.graph_after.ui
    assert _pairs(ui.users + ui.user_offset, ui.items) == _pairs(*tiny_data.train_pairs) - union_train
    batched = build_deletion(tiny_data, graph, forget_of(tiny_data, table, slice(None))).graph_after.ui
    # the same renormalised graph as one deletion of the union
    assert torch.allclose(ui.norm.to_dense(), batched.norm.to_dense(), rtol=0, atol=1e-7)
    assert set(last.reset_users.tolist()) == {int(forgets[-1].users[0])}
    # the ledger, fed the same requests one by one, plans the same earlier pairs and forget set
    ledger = DeletionLedger(tmp_path)
    for f in forgets:
        plan = ledger.plan(tiny_data, f)
        if f is not forgets[-1]:
            ledger.commit(plan, method="noop", model_before="a", model_after="b")
    assert _pairs(*plan.earlier) == earlier
    assert _pairs(plan.forget.users, plan.forget.items) == _pairs(forgets[-1].users, forgets[-1].items)


def test_noop_report_sequential_and_batched_tie(noop_report):
    report, _ = noop_report
    d = report["retrain_distance"]
    assert d["sequential"] == d["batched"] == d["windowed"]
    assert report["ratio_sequential_to_batched"] == (1.0 if d["batched"] > 0 else None)
    assert report["utility"]["sequential"] == report["utility"]["batched"]
    assert report["forget"]["sequential"] == report["forget"]["batched"]
    assert report["agreement"]["retrain"]["jaccard@20"] == 1.0 and d.get("original") is not None


def test_latency_and_drift_are_consistent(noop_report):
    report, _ = noop_report
    lat = report["latency_seconds"]
    assert len(lat["per_request"]) == R and all(s > 0 for s in lat["per_request"])
    assert lat["p50"] <= lat["p95"] <= lat["max"] == max(lat["per_request"])
    assert lat["mean"] == pytest.approx(sum(lat["per_request"]) / R)
    win = report["windowed"]
    assert win["n_windows"] == 3 and len(win["latency_seconds"]["per_window"]) == 3  # 2 + 2 + 1
    assert report["method_steps"] == {"sequential": [0] * R, "batched": 0, "windowed": [0] * 3}
    steps = [p["requests"] for p in report["drift"]]
    assert steps == drift_steps(R) == [0, 1, 2, 3, 4, 5]
    assert drift_steps(100) == [0, *range(10, 101, 10)] and drift_steps(25) == [0, 2, 4, 6, 8, 10, 12, 14,
                                                                                16, 18, 20, 22, 24, 25]
    n_pairs = [p["forget_n_pairs"] for p in report["drift"][1:]]
    assert n_pairs == sorted(n_pairs) and n_pairs[-1] == report["sizes"]["forget_train_pairs"]
    assert n_pairs[-1] == sum(report["sizes"]["train_pairs_per_request"])
    # after all R requests the chain serves D minus the union, as the final judgement does
    end = report["drift"][-1]
    assert end["recall@20"] == pytest.approx(report["utility"]["sequential"]["recall@20"], abs=1e-9)
    assert end["forget_hit@20"] == pytest.approx(report["forget"]["sequential"]["hit@20"], abs=1e-9)


def test_json_has_the_interface(noop_report):
    report, written = noop_report
    assert written == json.loads(json.dumps(report))
    for key in ("latency_seconds", "latency_definition", "retrain_distance", "ratio_sequential_to_batched",
                "utility", "forget", "agreement", "drift", "sizes", "config", "seconds", "torch_threads",
                "users", "windowed"):
        assert key in written, key
    assert set(written["latency_seconds"]) >= {"p50", "p95", "max", "mean", "per_request"}
    assert set(written["retrain_distance"]) >= {"sequential", "batched", "windowed"}
    for name in ("sequential", "batched", "windowed", "retrain", "original"):
        assert set(written["utility"][name]) == {"recall@20", "ndcg@20"}
        assert "hit@20" in written["forget"][name] and "jaccard@20" in written["agreement"][name]
    assert {"requests", "recall@20", "forget_hit@20"} <= set(written["drift"][0])
    assert set(written["seconds"]) >= {"train_original", "retrain"}
    assert written["config"]["train"]["epochs"] == 2 and written["config"]["unlearn"]["method"] == "noop"
    assert written["retrain_distance"]["sequential"] >= 0


def test_tru_through_the_cli(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="tru_dist")
    out = tmp_path / "seq.json"
    rc = main(["bench", "sequential", "--data", "synthetic:tiny", "--model", "lightgcn", "--requests", "4",
               "--method", "tru", "--epochs", "2", "--seed", "2", "--out", str(out), "--unlearn.epochs=2"])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert json.loads(captured.out)["users"] == report["users"]
    lines = [r.getMessage() for r in caplog.records if r.name == "tru_dist.bench_sequential"]
    assert [line.split(" user")[0] for line in lines if line.startswith("request ")] == [
        f"request {k}/4" for k in range(1, 5)]  # one progress line per request
    assert report["config"]["unlearn"]["epochs"] == 2 and report["method"] == "tru"
    d = report["retrain_distance"]
    ratio = report["ratio_sequential_to_batched"]
    assert ratio is None or ratio == pytest.approx(d["sequential"] / d["batched"])
    assert "windowed" not in d and report["ratio_windowed_to_batched"] is None


@pytest.mark.parametrize("extra, says", [
    (["--method", "nope"], "unknown unlearning method 'nope'"),
    (["--requests", "100000"], "exceeds the"),
    (["--data", "MISSING"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, says):
    out = tmp_path / "seq.json"
    argv = ["bench", "sequential", "--data", "synthetic:tiny", "--model", "lightgcn", "--epochs", "1",
            "--requests", "3", "--out", str(out)]
    argv += [str(tmp_path / "nope") if a == "MISSING" else a for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--requests", "--window"])
def test_counts_below_one_are_one_line(capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "sequential", "--data", "synthetic:tiny", flag, "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and ">= 1" in err and len(err.splitlines()) == 1
