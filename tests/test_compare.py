"""``compare`` end to end on tiny synthetic data: the results.json contract and its invariants."""

from __future__ import annotations

import json

import pytest

from tru_dist.compare import CompareSpec, aggregate, run_compare
from tru_dist.config import build_config


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("cmp")
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=5",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "reverse_bpr", "tru"], seeds=[0])
    run_compare(cfg, spec, out, data=tiny_data)
    return out, json.loads((out / "results.json").read_text())


def test_results_json_contract(compare_run):
    out, res = compare_run
    assert list(res["methods"])[:2] == ["original", "retrain"]
    for name in ("original", "retrain", "reverse_bpr", "tru"):
        m = res["methods"][name]
        for key in ("recall@20", "ndcg@20"):
            assert 0.0 <= m["test"][key] <= 1.0
        assert "hit@20" in m["forget"]
        assert {"jaccard@20", "forget_rank_spearman"} <= set(m["agreement"])
        assert m["seconds"] > 0
    assert (out / "report.md").exists() and (out / "tradeoff.png").stat().st_size > 1000
    assert (out / "time.png").exists()


def test_invariants_against_retrain(compare_run):
    _, res = compare_run
    m = res["methods"]
    assert m["retrain"]["speedup_vs_retrain"] == pytest.approx(1.0)
    assert m["retrain"]["agreement"]["jaccard@20"] == pytest.approx(1.0)
    # Retrain never saw the deleted pairs: it recommends them less than the original does
    assert m["retrain"]["forget"]["hit@20"] < m["original"]["forget"]["hit@20"]
    # speedups are the ratio of the recorded wall times (timing targets live in benchmarks)
    for name in ("tru", "reverse_bpr"):
        assert m[name]["speedup_vs_retrain"] == pytest.approx(m["retrain"]["seconds"] / m[name]["seconds"])


def test_aggregate_mean_and_std_over_seeds():
    per_seed = [
        {"a": {"test": {"recall@20": 0.2}, "seconds": 1.0}},
        {"a": {"test": {"recall@20": 0.4}, "seconds": 3.0}},
    ]
    agg = aggregate(per_seed)["a"]
    assert agg["test"]["recall@20"] == pytest.approx(0.3)
    assert agg["test_std"]["recall@20"] == pytest.approx(0.1)
    assert agg["seconds"] == pytest.approx(2.0)
    single = aggregate(per_seed[:1])["a"]
    assert single["test_std"]["recall@20"] is None  # no spread from one seed


def test_audit_table_shows_the_spread_over_seeds():
    from tru_dist.report.tables import audit_table

    per_seed = [{"tru": {"mia": {"auc": 0.30}, "backdoor": {"asr@20": 0.01, "removal_ratio": 1.0}}},
                {"tru": {"mia": {"auc": 0.40}, "backdoor": {"asr@20": 0.03, "removal_ratio": 0.8}}}]
    row = audit_table(aggregate(per_seed)).splitlines()[-1]
    assert "0.3500 ± 0.0500" in row and "0.0200 ± 0.0100" in row and "0.900 ± 0.100" in row
