"""Ray Tune sweeps across unlearning regimes (tru_dist.tune).

One tiny sweep (configs/sweeps/tiny.yaml: synthetic:tiny, LightGCN, 2 regimes × 3 trials,
ASHA, 3 unlearning epochs) runs once per module: first with one trial made to fail before
its 2nd epoch, then resumed, then reported. The tests read what it left behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tru_dist.data.dataset import TEST, VALID
from tru_dist.errors import ConfigError, TruDistError

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"
REGIMES = ["users-random-5pct", "interactions-5pct"]
FAULT = "users-random-5pct:1:2"  # trial 1 of the users regime fails once, before epoch 2
OVERRIDES = ["--dist.max_failures=0", "--sweep.report=false"]


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
    out = {}
    for f in sorted((sweep_dir / "tune").glob("*/trial_*/result.json")):
        out[f"{f.parent.parent.name}/{f.parent.name}"] = (f.stat().st_mtime_ns, f.read_bytes())
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
        with pytest.raises(TruDistError, match="rerun with --resume") as failed:
            run_sweep(TINY, overrides=OVERRIDES, storage=storage)
        interrupted = _trial_files(sweep_dir)
        contexts = {p: p.stat().st_mtime_ns for p in (sweep_dir / "context").rglob("*.pt")}
        out = run_sweep(TINY, overrides=OVERRIDES, resume=True, storage=storage)
        end_of_sweep = spy.mark()
        report = report_sweep(out)
        end_of_report = spy.mark()
        final_mtime = (out / "final.json").stat().st_mtime_ns
        report_sweep(out)  # a second report reuses the final evaluation
        yield SimpleNamespace(dir=out, error=str(failed.value), interrupted=interrupted, contexts=contexts,
                              resumed=_trial_files(out), report=report, spy=spy, end_of_sweep=end_of_sweep,
                              end_of_report=end_of_report, final_mtime=final_mtime)


# -- pure parts -------------------------------------------------------------------------------------
def test_trainable_lives_in_the_installed_package():
    import importlib

    import tru_dist

    module = importlib.import_module("tru_dist.tune.trainable")
    assert callable(module.tru_trainable)
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
    monkeypatch.setattr(ep, "tru_spec", lambda cfg: None)
    seconds = []
    for state in ep.tru_epochs(None, None, None, None, None):
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


@pytest.mark.parametrize("patch, message", [
    ({"colour": "red"}, "unknown sweep key 'colour'"),
    ({"space": {"train.lr": {"uniform": [0.1, 0.2]}}}, "cannot be searched"),
    ({"space": {"unlearn.epochs": {"choice": [1, 2]}}}, "cannot be searched"),
    ({"space": {"unlearn.gate.bta": {"uniform": [0.1, 0.2]}}}, "is not a config key"),
    ({"space": {"unlearn.lr": {"loguniform": [0.0, 0.1]}}}, "lo > 0"),
    ({"space": {"unlearn.lr": {"normal": [0.0, 0.1]}}}, "must be one of"),
    ({"space": {"unlearn.isolation.row_hops": {"uniform": [1, 3]}}}, "is not valid"),
    ({"search": "optuna", "space": {"unlearn.lr": {"grid": [0.1, 0.2]}}}, "cannot take"),
    ({"regimes": [{"regime": "users", "fraction": 1.5}]}, "regimes.0.fraction"),
    ({"regimes": [{"regime": "users"}, {"regime": "users"}]}, "repeat users-random-5pct"),
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
    assert all(k.startswith("unlearn.") for k in spec.space) and len(spec.seed_list) >= 3


def test_bad_workers_and_resume_without_a_sweep_are_errors(tmp_path):
    from tru_dist.tune.sweep import run_sweep

    with pytest.raises(ConfigError, match="--workers=0"):
        run_sweep(TINY, storage=tmp_path, workers=0)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_sweep(TINY, storage=tmp_path, resume=True)
    assert not any(tmp_path.iterdir())  # both refused before writing or training anything


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
    assert "injected fault" in s.error
    failed = next(k for k in s.interrupted if k.startswith("users-random-5pct/") and k.endswith("_00001"))
    assert _epochs(s.interrupted[failed][1]) == [1]  # checkpointed epoch 1, then failed
    assert set(s.resumed) == set(s.interrupted)  # no trial was added or started again under a new id
    assert len(s.resumed) == 2 * 3
    for key, (_, body) in s.interrupted.items():
        if key != failed:  # finished trials: the same rows, same timestamps (Tune may re-copy the file)
            assert s.resumed[key][1] == body, key
    epochs = _epochs(s.dir / "tune" / failed / "result.json")
    assert epochs[:2] == [1, 2] and epochs == sorted(set(epochs))  # continued from epoch 2, no replay
    # the shared originals / Retrain / reverse_bpr were not trained again
    assert s.contexts and all(p.stat().st_mtime_ns == t for p, t in s.contexts.items())


def test_trials_report_every_epoch_with_valid_metrics_and_tensorboard(tiny_sweep):
    from tru_dist.tune import adapter

    for regime in REGIMES:
        rows = adapter.trial_rows(tiny_sweep.dir / "tune" / regime)
        trials = {r["trial_id"] for r in rows}
        assert len(trials) == 3
        for t in trials:
            epochs = [r["epoch"] for r in rows if r["trial_id"] == t]
            assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= 3
        for r in rows:
            assert set(r["config"]) == {"unlearn.lambda_f", "unlearn.gate.beta", "unlearn.scaling.gamma"}
            assert 0.0 < r["valid_recall@20"] <= 1.0 and 0.0 <= r["forget_gap"] <= 1.0
            assert math.isfinite(r["score"]) and r["score"] < 1.5
        events = (tiny_sweep.dir / "tune" / regime).glob("trial_*/events.out.tfevents.*")
        assert len({p.parent.name for p in events if p.stat().st_size > 0}) == 3  # a resumed trial adds one


def test_nothing_reads_test_before_the_final_reevaluation(tiny_sweep):
    spy = tiny_sweep.spy
    sweep = spy.labels(0, tiny_sweep.end_of_sweep)
    assert VALID in sweep and TEST not in sweep
    assert TEST in spy.labels(tiny_sweep.end_of_sweep, tiny_sweep.end_of_report)
    # the second report reused final.json and the shared-config scores: no evaluation at all
    assert spy.calls[tiny_sweep.end_of_report:] == []
    assert (tiny_sweep.dir / "final.json").stat().st_mtime_ns == tiny_sweep.final_mtime


def test_trainable_reads_valid_only_and_matches_the_ray_trials(tiny_sweep, monkeypatch):
    """The trainable's body, run here under the spy: it only reads valid data, and for the same
    sample it reproduces what the Ray trial reported (same data, same seeds, same metrics)."""
    from tru_dist.tune import adapter
    from tru_dist.tune.context import prepare
    from tru_dist.tune.sweep import load_manifest
    from tru_dist.tune.trainable import TrialContext, run_epochs

    spec, base, max_t = load_manifest(tiny_sweep.dir)
    regime = REGIMES[1]
    seeds = prepare(spec, base, tiny_sweep.dir, regime_ids=[regime], must_exist=True)[regime]
    rows = adapter.trial_rows(tiny_sweep.dir / "tune" / regime)
    ray_row = next(r for r in rows if r["epoch"] == 1)
    spy = SplitSpy(monkeypatch)
    reported = []
    ctx = TrialContext(regime, [sc.for_trials() for sc in seeds], spec.k, max_t=1)
    run_epochs(ray_row["config"], ctx, 0, lambda metrics, state: reported.append((metrics, state)))
    assert TEST not in spy.labels() and VALID in spy.labels()
    (metrics, state), = reported
    assert state == {"epoch": 1}
    for key in ("valid_recall@20", "forget_hit@20", "forget_gap", "score"):
        assert metrics[key] == pytest.approx(ray_row[key], abs=0.02), key


def test_report_has_pareto_plots_best_configs_and_shared_row(tiny_sweep):
    from tru_dist.config import build_config
    from tru_dist.tune import adapter

    text = tiny_sweep.report.read_text()
    final = json.loads((tiny_sweep.dir / "final.json").read_text())["results"]
    for regime in REGIMES:
        png = tiny_sweep.dir / f"pareto-{regime}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"## {regime}" in text and f"pareto-{regime}.png" in text
        # the best config is the highest valid score over all (trial, epoch) rows, written as YAML
        rows = adapter.trial_rows(tiny_sweep.dir / "tune" / regime)
        top = max(rows, key=lambda r: (r["score"], -r["epoch"]))
        cfg = build_config(model="lightgcn", config_file=tiny_sweep.dir / "best" / f"{regime}.yaml")
        assert cfg.unlearn.epochs == top["epoch"]
        assert cfg.unlearn.lambda_f == pytest.approx(top["config"]["unlearn.lambda_f"])
        assert cfg.unlearn.gate.beta == pytest.approx(top["config"]["unlearn.gate.beta"])
        methods = final[regime]
        assert set(methods) == {"retrain", "reverse_bpr", "tru (tuned for regime)", "tru (shared config)",
                                "tru (defaults)"}
        assert methods["retrain"]["score"] == pytest.approx(1.0) and methods["retrain"]["forget_gap"] == 0.0
        for m in methods.values():
            assert 0.0 < m["recall@20"] <= 1.0 and m["seconds"] > 0
    build_config(model="lightgcn", config_file=tiny_sweep.dir / "best" / "shared.yaml")
    assert "## One shared configuration vs tuning per regime" in text
    assert "Tuning per regime beats the shared configuration on" in text
    deltas = [final[r]["tru (tuned for regime)"]["score"] - final[r]["tru (shared config)"]["score"]
              for r in REGIMES]
    assert f"mean test-score difference {np.mean(deltas):+.3f}" in text


def test_optuna_search_runs_and_repeats_its_samples_for_a_seed(ray_session, tmp_path):
    """``search: optuna`` (the ``optuna`` extra, installed with the test extra): a seeded study
    samples inside the space, differs from random search, and repeats itself for the same seed."""
    from tru_dist.tune import adapter
    from tru_dist.tune.sweep import run_sweep

    pytest.importorskip("optuna")
    over = ["--sweep.report=false", "--unlearn.epochs=2", "--sweep.regimes=[{regime: interactions}]"]
    samples = {}
    for search, name in (("optuna", "a"), ("optuna", "b"), ("random", "c")):
        out = run_sweep(TINY, overrides=[*over, f"--sweep.search={search}", f"--sweep.name={name}"],
                        storage=tmp_path)
        rows = adapter.trial_rows(out / "tune" / "interactions-5pct")
        samples[name] = sorted({tuple(sorted(r["config"].items())) for r in rows})
    assert len(samples["a"]) == 3 and samples["a"] == samples["b"] != samples["c"]
    for config in samples["a"]:
        c = dict(config)
        assert 0.1 <= c["unlearn.lambda_f"] <= 3.0 and 0.0 <= c["unlearn.gate.beta"] <= 1.0
        assert c["unlearn.scaling.gamma"] in (0.0, 1.0)
