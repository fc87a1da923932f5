"""Ray Tune sweeps of the approximate methods across unlearning regimes (tru_dist.tune).

One tiny sweep (configs/sweeps/tiny.yaml: synthetic:tiny, LightGCN, TRU and reverse_bpr ×
2 regimes × 3 trials, ASHA, 3 unlearning epochs, tuning seed 100) runs once per module:
first with one reverse_bpr trial made to fail before its 2nd epoch, then resumed, then
reported. The tests read what it left behind, including the tuned files compare reads.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tru_dist.data.dataset import TEST, VALID
from tru_dist.errors import ConfigError, TruDistError

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"
REGIMES = ["users-random-5pct", "interactions-5pct"]
METHODS = ["tru", "reverse_bpr"]
SPACE_KEYS = {"tru": {"unlearn.lambda_f", "unlearn.gate.beta", "unlearn.scaling.gamma"},
              "reverse_bpr": {"unlearn.lambda_f", "unlearn.lambda_r"}}
FAULT = "reverse_bpr:users-random-5pct:1:2"  # reverse_bpr's trial 1 on users fails once, before epoch 2
OVERRIDES = ["--dist.max_failures=0", "--sweep.report=false"]
TRU_ONLY = ("--sweep.methods={tru: {unlearn.lambda_f: {loguniform: [0.1, 3.0]}, "
            "unlearn.gate.beta: {uniform: [0.0, 1.0]}, unlearn.scaling.gamma: {choice: [0.0, 1.0]}}}")


class SplitSpy:
    """Records the split labels every evaluation in THIS process reads (all of them go through
    ``evaluate._local_pairs``; agreement's test rows through ``metrics._test_rows``)."""

    def __init__(self, mp: pytest.MonkeyPatch):
        import tru_dist.train.evaluate as ev
        import tru_dist.unlearn.metrics as um

        self.calls: list[tuple[int, ...]] = []
        real_pairs, real_rows = ev._local_pairs, um._test_rows

        def pairs(data, labels, graph):
            self.calls.append(tuple(int(x) for x in labels))
            return real_pairs(data, labels, graph)

        def rows(data_after, graph):
            self.calls.append((TEST,))
            return real_rows(data_after, graph)

        mp.setattr(ev, "_local_pairs", pairs)
        mp.setattr(um, "_test_rows", rows)

    def mark(self) -> int:
        return len(self.calls)

    def labels(self, start: int = 0, stop: int | None = None) -> set[int]:
        return {x for call in self.calls[start:stop] for x in call}


def _trial_files(sweep_dir: Path) -> dict[str, tuple[int, bytes]]:
    """``{"<method>/<regime>/<trial>": (mtime, result.json)}``."""
    out = {}
    for f in sorted((sweep_dir / "tune").glob("*/*/trial_*/result.json")):
        out[str(f.parent.relative_to(sweep_dir / "tune"))] = (f.stat().st_mtime_ns, f.read_bytes())
    return out


def _epochs(result_json: Path | bytes) -> list[int]:
    text = result_json.decode() if isinstance(result_json, bytes) else result_json.read_text()
    return [json.loads(line)["epoch"] for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_sweep(ray_session, tmp_path_factory):
    from tru_dist.tune.report import report_sweep
    from tru_dist.tune.sweep import run_sweep

    storage = tmp_path_factory.mktemp("sweeps")
    sweep_dir = storage / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        spy = SplitSpy(mp)
        mp.setenv("TRU_DIST_SWEEP_FAULT", FAULT)
        t0 = time.perf_counter()
        with pytest.raises(TruDistError, match="rerun with --resume") as failed:
            run_sweep(TINY, overrides=OVERRIDES, storage=storage)
        interrupted = _trial_files(sweep_dir)
        tuned_after_failure = (sweep_dir / "tuned").exists()
        contexts = {p: p.stat().st_mtime_ns for p in (sweep_dir / "context").rglob("*.pt")}
        out = run_sweep(TINY, overrides=OVERRIDES, resume=True, storage=storage)
        wall = time.perf_counter() - t0
        tuned = {p.name: p.read_text() for p in (out / "tuned").glob("*.yaml")}
        end_of_sweep = spy.mark()
        report = report_sweep(out)
        end_of_report = spy.mark()
        final_mtime = (out / "final.json").stat().st_mtime_ns
        report_sweep(out)  # a second report reuses the final evaluation
        mp.delenv("TRU_DIST_SWEEP_FAULT")  # the rehearsal is over: no later test's sweep may fail by it
        yield SimpleNamespace(dir=out, error=str(failed.value), interrupted=interrupted, contexts=contexts,
                              resumed=_trial_files(out), report=report, spy=spy, end_of_sweep=end_of_sweep,
                              end_of_report=end_of_report, final_mtime=final_mtime, tuned=tuned,
                              tuned_after_failure=tuned_after_failure, wall=wall)


# -- pure parts -------------------------------------------------------------------------------------
def test_trainable_lives_in_the_installed_package():
    import importlib

    import tru_dist

    module = importlib.import_module("tru_dist.tune.trainable")
    assert callable(module.method_trainable) and callable(module.workers_trainable)
    assert Path(module.__file__).resolve().is_relative_to(Path(tru_dist.__file__).resolve().parent)


def test_epoch_seconds_count_the_run_not_the_evaluation_between_epochs(monkeypatch):
    """A fake clock: each epoch of the run costs 1 s, the consumer's evaluation 100 s."""
    import tru_dist.tune.epochs as ep

    clock = [0.0]

    def fake_run(*args):
        for epoch in (1, 2, 3):
            clock[0] += 1.0
            yield epoch, None, {}

    monkeypatch.setattr(ep.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ep, "iter_update", fake_run)
    monkeypatch.setattr(ep, "spec_for", lambda method, cfg: None)
    seconds = []
    for state in ep.method_epochs("grad_ascent", None, None, None):
        seconds.append(state.seconds)
        clock[0] += 100.0  # evaluating and reporting between epochs
    assert seconds == [1.0, 2.0, 3.0]


def test_score_formula_is_one_for_retrain_zero_for_doing_nothing_and_symmetric():
    from tru_dist.tune.objective import Reference, trade_off

    ref = Reference(retrain_recall=0.5, retrain_hit=0.2, start_hit=0.6)
    assert trade_off(0.5, 0.2, ref) == pytest.approx(1.0)  # Retrain itself
    assert trade_off(0.5, 0.6, ref) == pytest.approx(0.0)  # the untouched original, same utility
    assert trade_off(0.5, 0.0, ref) == pytest.approx(0.5)  # over-forgetting by half the distance
    assert trade_off(0.5, 0.4, ref) == pytest.approx(0.5)  # under-forgetting by as much
    assert trade_off(0.45, 0.2, ref) == pytest.approx(0.9)  # 10 % utility lost
    flat = Reference(retrain_recall=0.5, retrain_hit=0.3, start_hit=0.3)  # deletion moved nothing
    assert trade_off(0.5, 0.31, flat) == pytest.approx(0.0)  # gap judged against ε = 0.01


def test_selection_pareto_best_row_and_mean_rank():
    from tru_dist.tune.select import best_mean_rank, best_row, pareto_front

    utility = [0.50, 0.60, 0.40, 0.60, 0.70, 0.45]
    gap = [0.10, 0.20, 0.05, 0.20, 0.50, 0.30]
    assert pareto_front(utility, gap) == [2, 0, 1, 4]  # index 3 duplicates 1, index 5 is dominated
    assert best_row([0.1, 0.3, 0.3], [3, 2, 1]) == 2  # tie on score: fewer epochs wins
    # A wins one regime by a mile, B wins the other two: mean score would pick A, mean rank picks B
    chosen, mean_rank = best_mean_rank([[10.0, 0.1, 0.1], [0.5, 0.2, 0.2]])
    assert chosen == 1
    assert mean_rank.tolist() == pytest.approx([5 / 3, 4 / 3])


TRU_SPACE = {"unlearn.lambda_f": {"uniform": [0.1, 0.2]}}


def _tru(space: dict) -> dict:
    """A patch that makes TRU the only method, searching ``space``."""
    return {"methods": {"tru": space}}



@pytest.mark.parametrize("patch, message", [
    ({"colour": "red"}, "unknown sweep key 'colour'"),
    ({"seeds": [0, 100]}, "seeds \\[0\\]: tuning seeds are 100 and up: reporting seeds 0..99 are what "
                          "compare reports"),
    ({"methods": {"finetune": {"unlearn.lambda_f": {"uniform": [0.1, 0.2]}}}}, "finetune does not read "
                                                                                "unlearn.lambda_f"),
    ({"methods": {"grad_ascent": {"unlearn.lambda_r": {"uniform": [0.1, 0.2]}}}}, "does not read"),
    ({"methods": {"reverse_bpr": {"unlearn.gate.beta": {"uniform": [0.1, 0.2]}}}}, "does not read"),
    ({"methods": {"retrain": TRU_SPACE}}, "cannot tune method 'retrain'"),
    ({"methods": {"tru": TRU_SPACE, "reverse-bpr": TRU_SPACE, "reverse_bpr": TRU_SPACE}}, "method twice"),
    ({"methods": {}}, "'methods' is empty"),
    ({"space": TRU_SPACE}, "exactly one of them"),
    ({"method": "tru"}, "drop 'method'"),
    ({"methods": {"tru": {"unlearn.lambda_f": {"grid": [0.1, 0.2]}}, "reverse_bpr": TRU_SPACE}},
     "unequal trial budgets \\(tru: 6, reverse_bpr: 3\\)"),
    (_tru({"train.lr": {"uniform": [0.1, 0.2]}}), "cannot be searched"),
    (_tru({"unlearn.epochs": {"choice": [1, 2]}}), "cannot be searched"),
    (_tru({"unlearn.gate.bta": {"uniform": [0.1, 0.2]}}), "is not a config key"),
    (_tru({"unlearn.lr": {"loguniform": [0.0, 0.1]}}), "lo > 0"),
    (_tru({"unlearn.lr": {"normal": [0.0, 0.1]}}), "must be one of"),
    (_tru({"unlearn.isolation.row_hops": {"uniform": [1, 3]}}), "is not valid"),
    ({"search": "optuna", **_tru({"unlearn.lr": {"grid": [0.1, 0.2]}})}, "cannot take"),
    ({"regimes": [{"regime": "users", "fraction": 1.5}]}, "regimes.0.fraction"),
    ({"regimes": [{"regime": "users"}, {"regime": "users"}]}, "repeat users-random-5pct"),
    # found by the third bad-input campaign: each ran (part of) a sweep, or wrote outside --storage
    ({"resources": {"cpu": -1}}, "resources.cpu"),  # a Ray traceback after the originals trained
    ({"resources": {"cpu": 1, "gpu": -1}}, "resources.gpu"),  # a hang
    ({"name": "../../escape"}, "is not a folder name"),  # results outside --storage
    ({"name": ""}, "is not a folder name"),  # files straight into --storage
    ({"regimes": [{"regime": "users", "name": "a/b"}]}, "is not a folder name"),
    ({"audit": ["foo"]}, "unknown audit\\(s\\) foo"),  # refused only by the report, after every trial
    ({"audit": ["mia", "mia"]}, "mia listed more than once"),
    ({"seeds": [100, 100]}, "seeds \\[100\\] are listed more than once"),  # counted twice in each score
    ({"dataset": "scientfic"}, "dataset 'scientfic' has no packaged defaults"),  # defaults dropped unread
])
def test_sweep_file_errors_are_one_line(patch, message):
    import yaml

    from tru_dist.tune.spec import parse_spec

    tree = yaml.safe_load(TINY.read_text())
    tree.update(patch)
    with pytest.raises(ConfigError, match=message) as err:
        parse_spec(tree)
    assert "\n" not in str(err.value)


def test_full_sweep_file_covers_three_regimes_on_scientific_with_mgcn():
    from tru_dist.tune.spec import base_config, load_spec

    spec, overrides = load_spec(REPO / "configs" / "sweeps" / "tru.yaml")
    cfg = base_config(spec, overrides)
    assert cfg.model.name == "mgcn" and cfg.model.knn_k == 10  # MMRec's MGCN defaults layered in
    assert spec.data.endswith("amazon-scientific") and cfg.data.name == "scientific"
    assert len({r.regime for r in spec.regimes}) >= 3 and spec.scheduler == "asha"
    assert list(spec.spaces) == ["tru"] and all(k.startswith("unlearn.") for k in spec.spaces["tru"])
    assert len(spec.seed_list) >= 3 and min(spec.seed_list) >= 100


@pytest.mark.parametrize("model", ["mgcn", "miggt"])
def test_fair_sweeps_tune_every_approximate_method_with_one_budget(model):
    """configs/sweeps/fair-scientific-<model>.yaml: the four methods, the same trials, tuning
    seeds, users 5% / interactions 5% / items 1%, ASHA over at most 10 epochs."""
    from tru_dist.tune.spec import base_config, load_spec

    spec, overrides = load_spec(REPO / "configs" / "sweeps" / f"fair-scientific-{model}.yaml")
    cfg = base_config(spec, overrides)
    assert cfg.model.name == model and spec.data.endswith("amazon-scientific")
    assert list(spec.spaces) == ["reverse_bpr", "grad_ascent", "finetune", "tru"]
    assert {spec.trials(m) for m in spec.spaces} == {spec.num_samples} and 4 <= spec.num_samples <= 8
    assert spec.seed_list == [100] and spec.scheduler == "asha" and 1 < cfg.unlearn.epochs <= 10
    assert [(r.regime, r.fraction) for r in spec.regimes] == [("users", 0.05), ("interactions", 0.05),
                                                              ("items", 0.01)]
    keys = {m: set(space) for m, space in spec.spaces.items()}
    assert {"unlearn.lr", "unlearn.lambda_f", "unlearn.lambda_r"} <= keys["reverse_bpr"]
    assert {"unlearn.lr", "unlearn.lambda_f"} <= keys["grad_ascent"]
    assert {"unlearn.lr", "unlearn.lambda_r"} <= keys["finetune"]
    assert "unlearn.lambda_r" not in keys["grad_ascent"] and "unlearn.lambda_f" not in keys["finetune"]
    assert keys["reverse_bpr"] < keys["tru"] and any(k.startswith("unlearn.gate.") for k in keys["tru"])
    for key in set.intersection(*keys.values()):  # a key every method searches: the same range for all
        assert len({json.dumps(space[key]) for space in spec.spaces.values()}) == 1, key


def test_seed_count_means_tuning_seeds_and_duplicate_plain_regimes_export_the_first():
    import yaml

    from tru_dist.tune.export import exported_regimes
    from tru_dist.tune.spec import load_spec, parse_spec

    tree = yaml.safe_load(TINY.read_text())
    assert parse_spec({**tree, "seeds": 2}).seed_list == [100, 101]
    spec, _ = load_spec(REPO / "configs" / "sweeps" / "tru.yaml")  # users random AND users core
    chosen, skipped = exported_regimes(spec)
    assert chosen["users"].id == "users-random-5pct" and [r.id for r in skipped] == ["users-core-5pct"]
    assert sorted(chosen) == ["interactions", "items", "poison", "users"]


def test_spec_for_is_what_each_method_runs(tiny_data):
    """Running the loop with ``spec_for(m)`` gives, parameter for parameter, what the registry's
    ``unlearn`` gives for every approximate method — and the four specs differ."""
    import torch

    from tru_dist.config import build_config
    from tru_dist.data.regimes import forget_set
    from tru_dist.graph.context import build_rec_graph
    from tru_dist.models.registry import build_model
    from tru_dist.unlearn.base import APPROXIMATE, get_method
    from tru_dist.unlearn.deletion import build_deletion
    from tru_dist.unlearn.engine import run_update
    from tru_dist.unlearn.specs import spec_for

    cfg = build_config(model="lightgcn", overrides=["unlearn.epochs=2", "unlearn.lr=0.05"])
    graph = build_rec_graph(tiny_data, knn_k=cfg.model.knn_k, with_knn=False)
    model = build_model(cfg.model, graph, seed=0)
    deletion = build_deletion(tiny_data, graph, forget_set(tiny_data, "users", 0.05, 100))
    finals = {}
    for method in APPROXIMATE:
        via_spec, _ = run_update(model, deletion, cfg, spec_for(method, cfg))
        via_registry = get_method(method).unlearn(model, deletion, cfg).model
        other = via_registry.state_dict()
        for name, a in via_spec.state_dict().items():
            assert torch.equal(a, other[name]), (method, name)
        finals[method] = torch.cat([p.detach().flatten() for p in via_spec.parameters()])
    for i, a in enumerate(APPROXIMATE):
        for b in APPROXIMATE[i + 1:]:
            assert not torch.equal(finals[a], finals[b]), (a, b)
    with pytest.raises(ConfigError, match="not a run of the shared unlearning loop"):
        spec_for("retrain", cfg)


def test_bad_workers_and_resume_without_a_sweep_are_errors(tmp_path):
    from tru_dist.tune.sweep import run_sweep

    with pytest.raises(ConfigError, match="--workers=0"):
        run_sweep(TINY, storage=tmp_path, workers=0)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_sweep(TINY, storage=tmp_path, resume=True)
    assert not any(tmp_path.iterdir())  # both refused before writing or training anything


def test_a_sweep_whose_data_cannot_be_opened_leaves_no_manifest_to_block_the_rerun(tmp_path):
    """sweep.json was written before the data was opened, so the corrected rerun was refused
    ("already holds a sweep; pass --resume") and --resume failed on the same data."""
    from tru_dist.tune.manifest import MANIFEST
    from tru_dist.tune.sweep import run_sweep

    for attempt in range(2):  # the second attempt is not refused as "already holds a sweep"
        with pytest.raises(TruDistError, match="nowhere") as err:
            run_sweep(TINY, overrides=[f"--sweep.data={tmp_path / 'nowhere'}"], storage=tmp_path / "s")
        assert "already holds" not in str(err.value), attempt
        assert not list((tmp_path / "s").rglob(MANIFEST))


def test_trial_resources_no_local_ray_can_hold_are_refused_at_one_worker(tmp_path, monkeypatch):
    """``resources: {cpu: 100}`` on a 2-CPU local Ray left every W = 1 trial PENDING and the sweep
    waiting forever (only W > 1 was checked); the refusal leaves no manifest to block the rerun
    with corrected resources. Ray-free: the originals and the Ray connection are stubbed."""
    from tru_dist.tune import adapter, sweep
    from tru_dist.tune.manifest import MANIFEST

    monkeypatch.setattr(sweep, "prepare", lambda *a, **k: {})
    monkeypatch.setattr(adapter, "connect", lambda *a, **k: None)
    monkeypatch.setattr(adapter, "_groups_that_fit", lambda spec, workers: 0)
    for attempt in range(2):  # the second attempt is not refused as "already holds a sweep"
        with pytest.raises(ConfigError, match="resources ask for 100 CPU per trial") as err:
            sweep.run_sweep(TINY, overrides=["--sweep.resources={cpu: 100}"], storage=tmp_path)
        assert "\n" not in str(err.value) and "already holds" not in str(err.value), attempt
        assert not list(tmp_path.rglob(MANIFEST))
    adapter.check_workers_fit(sweep.load_spec(TINY)[0], 1, "auto")  # a cluster may grow: Ray decides


def test_optuna_search_without_optuna_fails_before_training(tmp_path, monkeypatch):
    import sys

    from tru_dist.tune.sweep import run_sweep

    monkeypatch.setitem(sys.modules, "optuna", None)  # what an environment without the extra sees
    with pytest.raises(ConfigError, match="optional extra"):
        run_sweep(TINY, overrides=["--sweep.search=optuna"], storage=tmp_path)
    assert not any(tmp_path.iterdir())


# -- the tiny sweep -----------------------------------------------------------------------------------
def test_interrupted_sweep_resumes_without_redoing_finished_trials(tiny_sweep):
    s = tiny_sweep
    assert "injected fault" in s.error and not s.tuned_after_failure  # no tuned file from a failed sweep
    failed = next(k for k in s.interrupted if k.startswith("reverse_bpr/users-random-5pct/")
                  and k.endswith("_00001"))
    assert _epochs(s.interrupted[failed][1]) == [1]  # checkpointed epoch 1, then failed
    assert set(s.resumed) == set(s.interrupted)  # no trial was added or started again under a new id
    assert len(s.resumed) == len(METHODS) * len(REGIMES) * 3  # the same 3 trials per method and regime
    for key, (_, body) in s.interrupted.items():
        if key != failed:  # finished trials: the same rows, same timestamps (Tune may re-copy the file)
            assert s.resumed[key][1] == body, key
    epochs = _epochs(s.dir / "tune" / failed / "result.json")
    assert epochs[:2] == [1, 2] and epochs == sorted(set(epochs))  # continued from epoch 2, no replay
    # the shared originals / Retrain / reverse_bpr were not trained again
    assert s.contexts and all(p.stat().st_mtime_ns == t for p, t in s.contexts.items())


def test_trials_report_every_epoch_with_valid_metrics_and_tensorboard(tiny_sweep):
    from tru_dist.tune import adapter

    for method in METHODS:
        for regime in REGIMES:
            rows = adapter.trial_rows(tiny_sweep.dir / "tune" / method / regime)
            trials = {r["trial_id"] for r in rows}
            assert len(trials) == 3
            for t in trials:
                epochs = [r["epoch"] for r in rows if r["trial_id"] == t]
                assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= 3
            for r in rows:
                assert set(r["config"]) == SPACE_KEYS[method]
                assert 0.0 < r["valid_recall@20"] <= 1.0 and 0.0 <= r["forget_gap"] <= 1.0
                assert math.isfinite(r["score"]) and r["score"] < 1.5
            events = (tiny_sweep.dir / "tune" / method / regime).glob("trial_*/events.out.tfevents.*")
            assert len({p.parent.name for p in events if p.stat().st_size > 0}) == 3


def test_nothing_reads_test_before_the_final_reevaluation(tiny_sweep):
    spy = tiny_sweep.spy
    sweep = spy.labels(0, tiny_sweep.end_of_sweep)
    assert VALID in sweep and TEST not in sweep  # the tuned files were chosen without test data
    assert TEST in spy.labels(tiny_sweep.end_of_sweep, tiny_sweep.end_of_report)
    # the second report reused final.json and the shared-config scores: no evaluation at all
    assert spy.calls[tiny_sweep.end_of_report:] == []
    assert (tiny_sweep.dir / "final.json").stat().st_mtime_ns == tiny_sweep.final_mtime


@pytest.mark.parametrize("method", METHODS)
def test_trainable_reads_valid_only_and_matches_the_ray_trials(tiny_sweep, monkeypatch, method):
    """The trainable's body, run here under the spy: it only reads valid data, and for the same
    sample it reproduces what the Ray trial reported (same data, same seeds, same method)."""
    from tru_dist.tune import adapter
    from tru_dist.tune.context import prepare
    from tru_dist.tune.sweep import load_manifest
    from tru_dist.tune.trainable import TrialContext, run_epochs

    spec, base, max_t = load_manifest(tiny_sweep.dir)
    regime = REGIMES[1]
    seeds = prepare(spec, base, tiny_sweep.dir, regime_ids=[regime], must_exist=True)[regime]
    rows = adapter.trial_rows(tiny_sweep.dir / "tune" / method / regime)
    ray_row = next(r for r in rows if r["epoch"] == 1)
    spy = SplitSpy(monkeypatch)
    reported = []
    ctx = TrialContext(regime, [sc.for_trials() for sc in seeds], spec.k, max_t=1, method=method)
    run_epochs(ray_row["config"], ctx, 0, lambda metrics, state: reported.append((metrics, state)))
    assert TEST not in spy.labels() and VALID in spy.labels()
    (metrics, state), = reported
    assert state == {"epoch": 1}
    for key in ("valid_recall@20", "forget_hit@20", "forget_gap", "score"):
        assert metrics[key] == pytest.approx(ray_row[key], abs=0.02), key
    other = TrialContext(regime, ctx.seeds, spec.k, max_t=1, method="finetune")  # the method matters
    reported_other = []
    run_epochs(ray_row["config"], other, 0, lambda metrics, state: reported_other.append(metrics))
    assert reported_other[0]["forget_hit@20"] != pytest.approx(metrics["forget_hit@20"], abs=1e-9)


def test_sweep_writes_one_tuned_file_per_method_and_regime_that_compare_accepts(tiny_sweep):
    """``<sweep>/tuned/<method>-<regime>.yaml``: the best valid row's sample and epoch, the keys
    the method reads, the tuning provenance and cost; found and merged by compare --tuned."""
    import yaml

    from tru_dist.compare import CompareSpec, method_configs
    from tru_dist.tune import adapter
    from tru_dist.tune.context import saved_seconds
    from tru_dist.tune.spec import load_spec
    from tru_dist.tune.sweep import load_manifest
    from tru_dist.unlearn.tuned import find_tuned, read_tuned

    tuned_dir = tiny_sweep.dir / "tuned"
    plain = {"users-random-5pct": "users", "interactions-5pct": "interactions"}
    assert sorted(tiny_sweep.tuned) == sorted(f"{m}-{p}.yaml" for m in METHODS for p in plain.values())
    spec, base, _ = load_manifest(tiny_sweep.dir)
    total = 0.0
    for method in METHODS:
        for regime, name in plain.items():
            path = find_tuned(tuned_dir, method, name)
            assert path.read_text() == tiny_sweep.tuned[path.name]  # the report rewrote the same file
            overrides, tuning = read_tuned(path)
            rows = adapter.trial_rows(tiny_sweep.dir / "tune" / method / regime)
            top = max(rows, key=lambda r: (r["score"], -r["epoch"]))  # highest valid score, fewer epochs
            block = overrides["unlearn"]
            assert set(overrides) == {"unlearn"} and block["epochs"] == top["epoch"]
            for key, value in top["config"].items():
                node = block
                for part in key.split(".")[1:-1]:
                    node = node[part]
                assert node[key.split(".")[-1]] == pytest.approx(value), key
            assert ("gate" in block) == (method == "tru") and "seed" not in block
            assert "reset_deleted_users" not in block and block["lr"] == base.unlearn.lr
            assert tuning["sweep"] == "tiny" and tuning["seeds"] == [100] and tuning["trials"] == 3
            assert tuning["regime"] == regime and tuning["score"] == pytest.approx(top["score"], abs=1e-6)
            parts = tuning["parts"]
            assert tuning["seconds"] == pytest.approx(sum(parts.values()), abs=0.01)
            assert min(parts.values()) > 0
            total += tuning["seconds"]
    # the files add up to the sweep's cost: originals + Retrain + every experiment's trials
    timing = json.loads((tiny_sweep.dir / "timing.json").read_text())
    assert sorted(timing) == sorted(f"{m}/{r}" for m in METHODS for r in REGIMES)
    assert all(entry["finished"] for entry in timing.values())
    prepared = [saved_seconds(tiny_sweep.dir, r, 100) for r in spec.regimes]
    expected = (prepared[0][0] + sum(retrain for _, retrain in prepared)
                + sum(entry["seconds"] for entry in timing.values()))
    assert total == pytest.approx(expected, rel=1e-3)  # one clean original, shared by both regimes
    assert expected < tiny_sweep.wall  # every part was spent inside the two run_sweep calls

    # compare --tuned: each method gets its own file over the base config; TRU's ablation TRU's file
    spec_c = CompareSpec(regime="users", methods=["retrain", "reverse_bpr", "tru", "tru-no-gate"], seeds=2,
                         tuned=str(tuned_dir))
    configs = method_configs(base, spec_c)
    assert configs["retrain"][1] is None
    for method in ("reverse_bpr", "tru", "tru-no-gate"):
        cfg, tuning = configs[method]
        source = "tru" if method.startswith("tru") else method
        block = yaml.safe_load((tuned_dir / f"{source}-users.yaml").read_text())["unlearn"]
        assert cfg.unlearn.epochs == block["epochs"] and cfg.unlearn.lambda_f == block["lambda_f"]
        assert tuning["seconds"] > 0 and tuning["file"].endswith(f"{source}-users.yaml")
    assert configs["tru"][0].unlearn.gate.beta == configs["tru-no-gate"][0].unlearn.gate.beta
    with pytest.raises(ConfigError, match="tuning seeds are 100 and up"):
        load_spec(TINY, ["--sweep.seeds=[99]"])


def test_report_has_pareto_plots_best_configs_and_shared_row(tiny_sweep):
    from tru_dist.config import build_config
    from tru_dist.tune import adapter

    text = tiny_sweep.report.read_text()
    final = json.loads((tiny_sweep.dir / "final.json").read_text())["results"]
    assert "## Budget per method (equal by construction)" in text
    for regime in REGIMES:
        assert f"## {regime}" in text
        for method in METHODS:
            png = tiny_sweep.dir / f"pareto-{method}-{regime}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
            assert f"pareto-{method}-{regime}.png" in text
            # the best config is the highest valid score over all (trial, epoch) rows, written as YAML
            rows = adapter.trial_rows(tiny_sweep.dir / "tune" / method / regime)
            top = max(rows, key=lambda r: (r["score"], -r["epoch"]))
            best = tiny_sweep.dir / "best" / f"{method}-{regime}.yaml"
            cfg = build_config(model="lightgcn", config_file=best)
            assert cfg.unlearn.epochs == top["epoch"] and cfg.unlearn.method == method
            assert cfg.unlearn.lambda_f == pytest.approx(top["config"]["unlearn.lambda_f"])
        assert cfg.unlearn.lambda_r == pytest.approx(top["config"]["unlearn.lambda_r"])  # reverse_bpr's
        methods = final[regime]
        assert set(methods) == {"retrain", "reverse_bpr", "tru (tuned for regime)", "tru (shared config)",
                                "tru (defaults)", "reverse_bpr (tuned for regime)",
                                "reverse_bpr (shared config)"}  # reverse_bpr (defaults) = "reverse_bpr"
        assert methods["retrain"]["score"] == pytest.approx(1.0) and methods["retrain"]["forget_gap"] == 0.0
        for m in methods.values():
            assert 0.0 < m["recall@20"] <= 1.0 and m["seconds"] > 0
    for method in METHODS:
        build_config(model="lightgcn", config_file=tiny_sweep.dir / "best" / f"{method}-shared.yaml")
        deltas = [final[r][f"{method} (tuned for regime)"]["score"]
                  - final[r][f"{method} (shared config)"]["score"] for r in REGIMES]
        assert (f"**{method}: tuning per regime beats the shared configuration on" in text
                and f"mean test-score difference {np.mean(deltas):+.3f}" in text)
    assert "## One shared configuration vs tuning per regime" in text


def test_optuna_search_runs_and_repeats_its_samples_for_a_seed(ray_session, tmp_path):
    """``search: optuna`` (the ``optuna`` extra, installed with the test extra): a seeded study
    samples inside the space, differs from random search, and repeats itself for the same seed."""
    from tru_dist.tune import adapter
    from tru_dist.tune.sweep import run_sweep

    pytest.importorskip("optuna")
    over = ["--sweep.report=false", "--unlearn.epochs=2", "--sweep.regimes=[{regime: interactions}]",
            TRU_ONLY]
    samples = {}
    for search, name in (("optuna", "a"), ("optuna", "b"), ("random", "c")):
        out = run_sweep(TINY, overrides=[*over, f"--sweep.search={search}", f"--sweep.name={name}"],
                        storage=tmp_path)
        rows = adapter.trial_rows(out / "tune" / "tru" / "interactions-5pct")
        samples[name] = sorted({tuple(sorted(r["config"].items())) for r in rows})
    assert len(samples["a"]) == 3 and samples["a"] == samples["b"] != samples["c"]
    for config in samples["a"]:
        c = dict(config)
        assert 0.1 <= c["unlearn.lambda_f"] <= 3.0 and 0.0 <= c["unlearn.gate.beta"] <= 1.0
        assert c["unlearn.scaling.gamma"] in (0.0, 1.0)


def test_ctrl_c_leaves_the_sweep_unfinished_and_resume_finishes_it(ray_session, tmp_path, monkeypatch):
    """Ctrl+C during a trial (rehearsed: the trial sends the driver SIGINT before its 2nd epoch):
    Tune saves the experiment and returns normally, so the sweep must record it unfinished,
    stop before the next experiment and say how to resume — not mark it finished (``--resume``
    then answered "every trial finished" and never ran the rest) and go on."""
    from tru_dist.tune.export import experiment_log
    from tru_dist.tune.sweep import run_sweep

    over = [*OVERRIDES, "--sweep.methods={reverse_bpr: {unlearn.lambda_f: {loguniform: [0.1, 3.0]}}}"]
    monkeypatch.setenv("TRU_DIST_SWEEP_INTERRUPT", "reverse_bpr:users-random-5pct:0:2")
    with pytest.raises(TruDistError, match=r"sweep interrupted: Ctrl\+C during reverse_bpr on "
                                           r"users-random-5pct .*--resume") as stopped:
        run_sweep(TINY, overrides=over, storage=tmp_path)
    assert str(stopped.value).endswith(shlex.join(["tru-dist", "sweep", "--config", str(TINY), *over,
                                                   "--storage", str(tmp_path), "--resume"]))
    sweep_dir = tmp_path / "tiny"
    log = experiment_log(sweep_dir)
    assert log["reverse_bpr/users-random-5pct"]["finished"] is False
    assert "reverse_bpr/interactions-5pct" not in log  # stopped before the next experiment
    assert not (sweep_dir / "tuned").exists()
    monkeypatch.delenv("TRU_DIST_SWEEP_INTERRUPT")
    run_sweep(TINY, overrides=over, resume=True, storage=tmp_path)
    log = experiment_log(sweep_dir)
    assert all(log[f"reverse_bpr/{r}"]["finished"] for r in REGIMES)
    assert sorted(p.name for p in (sweep_dir / "tuned").glob("*.yaml")) == [
        "reverse_bpr-interactions.yaml", "reverse_bpr-users.yaml"]
    assert len(list((sweep_dir / "tune" / "reverse_bpr" / "users-random-5pct").glob("trial_*"))) == 3


def test_ctrl_c_hands_over_to_tunes_stop_only_once_tune_started_and_the_handlers_come_back():
    """Without Ray: a stand-in for Tune's SIGUSR1 stop. Ctrl+C inside the block reaches it and is
    recorded; before Tune installs its handler — including when a finished experiment's stale
    one is still there — it is an ordinary KeyboardInterrupt; SIGINT, SIGUSR1 and the
    TUNE_DISABLE_SIGINT_HANDLER switch are as they were afterwards."""
    import os
    import signal

    from tru_dist.tune import adapter

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    switch = os.environ.get(adapter.TUNE_SIGINT_SWITCH)
    stops: list[str] = []
    try:
        with adapter._ctrl_c_seen() as seen:
            assert os.environ[adapter.TUNE_SIGINT_SWITCH] == "1"
            signal.signal(signal.SIGUSR1, lambda *_: stops.append("tune"))  # Tune starts
            signal.raise_signal(signal.SIGINT)
        assert seen["interrupted"] and stops == ["tune"]
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == before
        assert os.environ.get(adapter.TUNE_SIGINT_SWITCH) == switch

        signal.signal(signal.SIGUSR1, lambda *_: stops.append("stale"))  # left by a finished Tune run
        with pytest.raises(KeyboardInterrupt), adapter._ctrl_c_seen():
            signal.raise_signal(signal.SIGINT)
        assert stops == ["tune"] and signal.getsignal(signal.SIGINT) == before[0]
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGUSR1, before[1])


def test_a_grid_with_a_trial_not_done_or_missing_is_stopped_early():
    """Without Ray: Tune marks a trial's last result ``done`` when it returns or the scheduler
    stops it, not when a stop signal ends the experiment; a trial never started is absent."""
    from types import SimpleNamespace

    from tru_dist.tune.adapter import stopped_early

    def result(done, error=None):
        return SimpleNamespace(metrics={"epoch": 3, "done": done}, error=error)

    finished = [result(True), result(True)]
    assert not stopped_early(finished, expected=2)
    assert stopped_early(finished, expected=3)  # the third trial was never created
    assert stopped_early([result(True), result(False)], expected=2)  # stopped mid-trial
    errored = result(False, error=RuntimeError("x"))  # an error is not a stop
    assert not stopped_early([result(True), errored], expected=2)
    assert stopped_early([result(True), SimpleNamespace(metrics=None, error=None)], expected=None)


def test_an_outside_sigusr1_leaves_the_sweep_unfinished(ray_session, tmp_path, monkeypatch):
    """Tune's documented stop (SIGUSR1 to the driver, rehearsed from a trial before its 2nd
    epoch) is handled by Tune itself, which then calls the stopped trials TERMINATED: the sweep
    reads them off the results, records the experiment unfinished and says how to resume."""
    from tru_dist.tune.export import experiment_log
    from tru_dist.tune.sweep import run_sweep

    over = [*OVERRIDES, "--sweep.methods={reverse_bpr: {unlearn.lambda_f: {loguniform: [0.1, 3.0]}}}"]
    monkeypatch.setenv("TRU_DIST_SWEEP_INTERRUPT", "SIGUSR1:reverse_bpr:users-random-5pct:0:2")
    with pytest.raises(TruDistError, match=r"sweep interrupted: a stop signal during reverse_bpr on "
                                           r"users-random-5pct .*--resume"):
        run_sweep(TINY, overrides=over, storage=tmp_path)
    log = experiment_log(tmp_path / "tiny")
    assert log["reverse_bpr/users-random-5pct"]["finished"] is False
    assert "reverse_bpr/interactions-5pct" not in log
