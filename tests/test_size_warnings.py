"""Settings that the catalogue's size makes meaningless are logged, not silently accepted
(:mod:`tru_dist.train.size_warnings`): ``eval.ks``, ``model.knn_k`` and ``unlearn.gate.top_k``
at or above the number of items, and a dataset without test rows."""

from __future__ import annotations

import json
import logging

import pytest

from tru_dist.cli import main
from tru_dist.config import build_config
from tru_dist.data.source import open_data
from tru_dist.data.synthetic import generate_synthetic
from tru_dist.train.size_warnings import eval_size_warnings, train_size_warnings, unlearn_size_warnings


@pytest.fixture(scope="module")
def eight_items():
    return generate_synthetic(n_users=20, n_items=8, modalities={"image": 4}, seed=0)


def _ks(*ks: int, knn_k: int = 10):
    """A config computing ``ks`` (selecting on recall at the first) with ``model.knn_k``."""
    return build_config(overrides=[f"eval.ks={list(ks)}", f"eval.metric=recall@{ks[0]}",
                                   f"model.knn_k={knn_k}"])


def test_cut_offs_at_or_above_the_catalogue_are_named_and_smaller_ones_are_not(eight_items):
    lines = eval_size_warnings(_ks(5, 8, 20), eight_items)
    assert len(lines) == 1
    assert "eval.ks 8, 20 >= the catalogue's 8 items" in lines[0] and "set eval.ks below 8" in lines[0]
    assert eval_size_warnings(_ks(5, 7), eight_items) == []


def test_knn_k_is_checked_only_for_a_backbone_that_builds_the_knn_view(eight_items):
    cfg = _ks(5, knn_k=10)
    assert train_size_warnings(cfg, eight_items, uses_knn=False) == []
    (line,) = train_size_warnings(cfg, eight_items, uses_knn=True)
    assert line.startswith("model.knn_k 10 >= the catalogue's 8 items")
    assert train_size_warnings(_ks(5, knn_k=7), eight_items, uses_knn=True) == []


def test_the_gate_top_k_is_checked_for_tru_only(eight_items):
    cfg = build_config(overrides=["unlearn.gate.top_k=8"])
    (line,) = unlearn_size_warnings(cfg, eight_items, "tru")
    assert "unlearn.gate.top_k 8 >= the catalogue's 8 items" in line
    assert unlearn_size_warnings(cfg, eight_items, "reverse_bpr") == []
    assert unlearn_size_warnings(build_config(overrides=["unlearn.gate.top_k=7"]), eight_items, "tru") == []


def test_a_dataset_without_test_rows_is_named(tmp_path):
    # the scale generator with as many interactions as users gives each user its one train row
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--users", "20", "--items", "10",
                 "--interactions", "20", "--modalities", "none"]) == 0
    data = open_data(tmp_path / "d")
    lines = eval_size_warnings(_ks(5), data)
    assert len(lines) == 1 and "has no test rows (x_label 2)" in lines[0]
    assert lines[0].startswith(str((tmp_path / "d").resolve()))  # the store's folder, not "synthetic-scale"


def test_train_logs_the_warning_and_the_metric_it_warns_of_reads_one(tmp_path, caplog):
    """The warning's claim, measured: with k >= n_items every top-k list is the catalogue, so
    test recall@k is 1 for any parameters (here one epoch of an 8-dimensional LightGCN)."""
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        assert main(["train", "--model", "lightgcn", "--data", "synthetic:30x8", "--out", str(out),
                     "--train.epochs=1", "--model.dim=8", "--eval.ks=[2,8]", "--eval.metric=recall@2",
                     "--address", "none", "--device", "cpu"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if "eval.ks 8 >= the catalogue's 8 items" in m]
    assert len(warned) == 1
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["n_users"] > 0 and test["recall@8"] == pytest.approx(1.0) and test["recall@2"] < 1.0


def test_evaluate_logs_cut_offs_its_own_eval_ks_sets_at_or_above_the_catalogue(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:30x8", "--out", str(out),
                 "--train.epochs=1", "--model.dim=8", "--eval.ks=[2]", "--eval.metric=recall@2", "--address",
                 "none", "--device", "cpu"]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        assert main(["evaluate", "--run", str(out), "--eval.ks=[2,9]", "--address", "none"]) == 0
    assert [m for m in (r.getMessage() for r in caplog.records) if m.startswith("eval.ks 9 >= the catalogue")]


def test_compare_logs_each_size_warning_once_for_all_its_models(tmp_path, caplog):
    """An original and a Retrain model per seed train on one catalogue: 4 trainings here, one
    warning line (each used to be logged once per training). The functions still return it."""
    with caplog.at_level(logging.WARNING, logger="tru_dist"):
        assert main(["compare", "--data", "synthetic:30x8", "--model", "lightgcn", "--methods",
                     "retrain,noop", "--seeds", "2", "--out", str(tmp_path / "cmp"), "--train.epochs=1",
                     "--model.dim=8", "--address", "none"]) == 0
    warned = [r.getMessage() for r in caplog.records if "eval.ks" in r.getMessage()
              and ">= the catalogue's 8 items" in r.getMessage()]
    assert len(warned) == 1, warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tru_dist"):  # after compare: logged again
        train_size_warnings(build_config(), open_data("synthetic:30x8"), uses_knn=False)
    assert [r for r in caplog.records if ">= the catalogue's 8 items" in r.getMessage()]
