"""``compare`` end to end on tiny synthetic data: the results.json contract and its invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tru_dist.compare import CompareSpec, aggregate, method_configs, run_compare
from tru_dist.config import build_config
from tru_dist.errors import ConfigError


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("cmp")
    tuned = out / "tuned"
    tuned.mkdir()
    (tuned / "tru-users.yaml").write_text(
        "unlearn: {lr: 0.02}\ntuning: {sweep: handmade, seeds: [100], trials: 3, seconds: 1000.0}\n")
    (tuned / "reverse_bpr-users.yaml").write_text(
        "unlearn: {lr: 0.005}\ntuning: {sweep: handmade, seeds: [100], trials: 3, seconds: 10.0}\n")
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=5",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "noop", "reverse_bpr", "tru"],
                       seeds=[0, 1], audits=["mia"], tuned=str(tuned), originals=str(out / "originals"))
    run_compare(cfg, spec, out, data=tiny_data)
    return out, json.loads((out / "results.json").read_text())


def test_results_json_contract(compare_run):
    out, res = compare_run
    assert list(res["methods"])[:2] == ["original", "retrain"]
    for name in ("original", "retrain", "noop", "reverse_bpr", "tru"):
        m = res["methods"][name]
        for key in ("recall@20", "ndcg@20"):
            assert 0.0 <= m["test"][key] <= 1.0
        assert {"hit@10", "hit@20", "hit@50", "rank_pct"} <= set(m["forget"])
        assert {"jaccard@20", "forget_rank_spearman", "forget_rank_ks"} <= set(m["agreement"])
        assert m["retrain_distance"] >= 0.0 and m["seconds"] > 0
    for name in ("retrain", "noop", "reverse_bpr", "tru"):
        assert {"tuning_seconds", "speedup_vs_retrain", "speedup_amortised_100"} <= set(res["methods"][name])
    assert res["method_configs"]["tru"]["unlearn"]["lr"] == 0.02  # each method ran with its own file
    assert res["method_configs"]["reverse_bpr"]["unlearn"]["lr"] == 0.005
    assert res["method_configs"]["noop"]["tuning"] is None
    assert (out / "report.md").exists() and (out / "tradeoff.png").stat().st_size > 1000
    assert "Paired differences" in (out / "report.md").read_text()
    originals = [p for p in (out / "originals").glob("*.pt") if not p.name.startswith("retrain-")]
    assert len(originals) == 2
    assert len(list((out / "originals").glob("retrain-*.pt"))) == 2  # and one cached Retrain per seed


def test_cached_retrain_is_the_same_model_and_says_so(compare_run, tiny_data, tmp_path):
    """A second compare on the same cache loads Retrain instead of training it: the same
    metrics to the last bit, the recorded seconds, and ``stats.cached`` set."""
    out, _ = compare_run
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=5",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "noop"], seeds=[0], audits=["mia"],
                       originals=str(out / "originals"))
    run_compare(cfg, spec, tmp_path, data=tiny_data)
    first = json.loads((out / "seed0.json").read_text())["retrain"]
    again = json.loads((tmp_path / "seed0.json").read_text())["retrain"]
    assert again["stats"]["cached"] is True and "cached" not in first["stats"]
    assert again["test"] == first["test"] and again["seconds"] == first["seconds"]


def test_every_method_starts_from_one_timed_deletion_step(compare_run):
    out, _ = compare_run
    for seed in (0, 1):
        runs = json.loads((out / f"seed{seed}.json").read_text())
        steps = {n: runs[n]["stats"]["deletion_seconds"] for n in ("retrain", "noop", "reverse_bpr", "tru")}
        assert len(set(steps.values())) == 1 and next(iter(steps.values())) > 0  # the same step, timed once
        for n in steps:  # end to end: the deletion step is inside every method's seconds
            st = runs[n]["stats"]
            assert runs[n]["seconds"] == pytest.approx(st["deletion_seconds"] + st["method_seconds"])
        # users regime: the reset users are gone for noop too — noop's forget hit is far below the original's
        assert runs["noop"]["forget"]["hit@20"] < 0.5 * runs["original"]["forget"]["hit@20"]


def test_summaries_recomputed_from_the_per_seed_files(compare_run):
    """retrain_distance, the amortised speedup and the paired differences, recomputed by
    hand from seed0.json / seed1.json, match results.json (a wrong aggregation fails)."""
    out, res = compare_run
    seeds = [json.loads((out / f"seed{s}.json").read_text()) for s in (0, 1)]
    for run in seeds:
        r_recall = run["retrain"]["test"]["recall@20"]
        for name in ("noop", "reverse_bpr", "tru"):
            e = run[name]
            want = max(0.0, 1 - e["test"]["recall@20"] / r_recall) + e["agreement"]["forget_rank_ks"]
            assert e["retrain_distance"] == pytest.approx(want)
        tru = run["tru"]
        assert tru["speedup_amortised_100"] == pytest.approx(
            100 * run["retrain"]["seconds"] / (100 * tru["seconds"] + 1000.0))
        assert tru["speedup_amortised_100"] < tru["speedup_vs_retrain"]  # tuning is a real cost
    for other in ("noop", "reverse_bpr"):
        diffs = [r["tru"]["retrain_distance"] - r[other]["retrain_distance"] for r in seeds]
        got = res["paired"]["tru"][other]
        assert got["per_seed"] == pytest.approx(diffs) and got["diff_mean"] == pytest.approx(np.mean(diffs))
        half = 12.706 * np.std(diffs, ddof=1) / np.sqrt(2)  # t(0.975, 1 dof)
        assert got["ci"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half], rel=1e-3)
    m = res["methods"]
    assert m["retrain"]["retrain_distance"] == 0.0 and m["original"]["retrain_distance"] > 0.1
    assert m["original"]["forget"]["hit@20"] > m["retrain"]["forget"]["hit@20"]


def test_pair_mia_nonmembers_are_never_trained_users_when_users_are_deleted(compare_run):
    _, res = compare_run
    mia = res["methods"]["retrain"]["mia"]
    assert 0.3 <= mia["auc"] <= 0.7  # Retrain never saw either side (tiny data: a wide band)
    assert res["methods"]["original"]["mia"]["auc"] > mia["auc"]


@pytest.mark.parametrize("tuning, extra, named", [
    ("seeds: abc, trials: 1, seconds: 1.0", "", "tuning.seeds must be"),
    ("seeds: 100, trials: 1, seconds: 1.0", "", "tuning.seeds must be"),
    ("seeds: [true], trials: 1, seconds: 1.0", "", "tuning.seeds must be"),
    ("seeds: [100], trials: 0, seconds: 1.0", "", "tuning.trials must be"),
    ("seeds: [100], trials: 1, seconds: .nan", "", "tuning.seconds must be"),
    ("seeds: [100], trials: 1, seconds: 1.0", "model: {dim: 99}\n", "sets model: a tuned file"),
], ids=["seeds-text", "seeds-scalar", "seeds-bool", "trials-0", "seconds-nan", "model-key"])
def test_a_malformed_tuned_file_is_one_line_before_any_work(tuning, extra, named, tmp_path):
    """`seeds: abc` / `seeds: 100` ended in int()'s tracebacks with OUT/config.yaml left behind,
    `seconds: .nan` was written into results.json, and `model: {dim: 99}` was dropped unread."""
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "tru-users.yaml").write_text(f"unlearn: {{lr: 0.02}}\n{extra}tuning: {{sweep: s, {tuning}}}\n")
    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny"])
    with pytest.raises(ConfigError, match=named.replace(".", "\\.")):
        method_configs(cfg, CompareSpec(methods=["tru"], seeds=[0], tuned=str(tuned)))


def test_reporting_seeds_must_be_held_out_from_tuning(tmp_path, tiny_data):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "tru-users.yaml").write_text("unlearn: {lr: 0.02}\n"
                                          "tuning: {sweep: s, seeds: [1], trials: 1, seconds: 1.0}\n")
    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny"])
    with pytest.raises(ConfigError, match="tuned on seeds"):
        method_configs(cfg, CompareSpec(methods=["tru"], seeds=[0, 1], tuned=str(tuned)))
    with pytest.raises(ConfigError, match="below 100"):
        method_configs(cfg, CompareSpec(methods=["tru"], seeds=[100]))
    with pytest.raises(ConfigError, match="--audit names mia more than once"):
        method_configs(cfg, CompareSpec(methods=["tru"], seeds=[0], audits=["mia", "user_mia", "mia"]))
    with pytest.raises(ConfigError, match="no tuned configuration for reverse_bpr"):
        method_configs(cfg, CompareSpec(methods=["reverse_bpr"], seeds=[0], tuned=str(tuned)))
    # TRU's ablations use TRU's file; retrain and noop have nothing to tune
    spec = CompareSpec(methods=["retrain", "noop", "tru-no-gate", "tru-default"], seeds=[0], tuned=str(tuned))
    got = method_configs(cfg, spec)
    assert got["tru-no-gate"][0].unlearn.lr == 0.02 and got["retrain"][1] is None
    # tru-default is TRU with the built-in defaults beside the tuned TRU: no file, no tuning cost
    assert got["tru-default"][0].unlearn.lr == cfg.unlearn.lr != 0.02 and got["tru-default"][1] is None
    # the file sets lr only: every other key TRU reads comes from the base config, and says so
    inherited = got["tru-no-gate"][1]["inherited"]
    assert "unlearn.lr" not in inherited and inherited["unlearn.epochs"] == cfg.unlearn.epochs
    assert inherited["unlearn.gate.plateau"] == cfg.unlearn.gate.plateau
    assert inherited["unlearn.isolation.mass"] == cfg.unlearn.isolation.mass


def test_inherited_keys_hand_case():
    """A tuned file's unset keys, read against a hand-made base tree: blocks expand to leaves,
    set leaves (nested or not) drop out, methods with nothing to tune inherit nothing."""
    from tru_dist.unlearn.tuned import inherited_keys

    base = {"unlearn": {"epochs": 5, "lr": 0.1, "batch_size": 64, "lambda_f": 1.0, "lambda_r": 2.0,
                        "gate": {"lr": 0.1, "plateau": 3}, "scaling": {"gamma": 1.0},
                        "isolation": {"mass": 0.9, "budget": 0.5}}, "train": {"lr": 9.0}}
    overrides = {"unlearn": {"epochs": 7, "lr": 0.2, "batch_size": 64, "lambda_f": 3.0, "lambda_r": 1.0,
                             "gate": {"lr": 0.05}, "isolation": {"budget": 0.4}}}
    assert inherited_keys("tru", overrides, base) == {
        "unlearn.gate.plateau": 3, "unlearn.scaling.gamma": 1.0, "unlearn.isolation.mass": 0.9}
    assert inherited_keys("tru-no-gate", overrides, base) == inherited_keys("tru", overrides, base)
    # grad_ascent reads no TRU block and no lambda_r (it has no retain term)
    assert inherited_keys("grad_ascent", {"unlearn": {"epochs": 1, "lr": 0.1}}, base) == {
        "unlearn.batch_size": 64, "unlearn.lambda_f": 1.0}
    assert inherited_keys("noop", {}, base) == {} and inherited_keys("tru-default", {}, base) == {}


def test_aggregate_mean_and_std_over_seeds():
    per_seed = [
        {"a": {"test": {"recall@20": 0.2}, "seconds": 1.0}},
        {"a": {"test": {"recall@20": 0.4}, "seconds": 3.0}},
    ]
    agg = aggregate(per_seed)["a"]
    assert agg["test"]["recall@20"] == pytest.approx(0.3)
    assert agg["test_std"]["recall@20"] == pytest.approx(0.1 * 2 ** 0.5)  # sample std (ddof = 1)
    assert agg["test_ci"]["recall@20"] == pytest.approx(12.706 * 0.1, rel=1e-3)  # t(0.975, 1) · s / √2
    assert agg["seconds"] == pytest.approx(2.0)
    single = aggregate(per_seed[:1])["a"]
    assert single["test_std"]["recall@20"] is None  # no spread from one seed


def test_audit_table_shows_the_spread_over_seeds():
    from tru_dist.report.tables import audit_table

    per_seed = [{"tru": {"mia": {"auc": 0.30}, "backdoor": {"asr@20": 0.01, "removal_ratio": 1.0}}},
                {"tru": {"mia": {"auc": 0.40}, "backdoor": {"asr@20": 0.03, "removal_ratio": 0.8}}}]
    row = audit_table(aggregate(per_seed)).splitlines()[-1]
    assert "0.3500 ± 0.0707" in row and "0.0200 ± 0.0141" in row and "0.900 ± 0.141" in row


def test_shipped_tuned_configurations_are_held_out_and_load():
    """configs/tuned/<dataset>-<model>/: every file parses, merges over the base config, was
    tuned on tuning seeds only, and covers each tunable method in each regime it names."""
    from pathlib import Path

    from tru_dist.data.regimes import is_tuning_seed
    from tru_dist.unlearn.tuned import TUNABLE, find_tuned, read_tuned

    root = Path(__file__).resolve().parents[1] / "configs" / "tuned"
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        model = folder.name.split("-")[-1]
        for regime in ("users", "interactions", "items"):
            for method in TUNABLE:
                overrides, tuning = read_tuned(find_tuned(folder, method, regime))
                assert all(is_tuning_seed(s) for s in tuning["seeds"]) and tuning["seconds"] > 0
                assert tuning["model"] == model
                cfg = build_config(model=model, overrides=["data.path=synthetic:tiny"])
                spec = CompareSpec(regime=regime, methods=[method], seeds=[0], tuned=str(folder))
                merged, provenance = method_configs(cfg, spec)[method]
                assert merged.unlearn.lr == overrides["unlearn"]["lr"]
                # every key the method reads is pinned: a packaged default's change cannot move it
                assert provenance["inherited"] == {}, (folder.name, method, regime)


def test_users_held_out_for_any_membership_audit_or_on_request():
    from tru_dist.compare import needs_held_out_users

    assert not needs_held_out_users(CompareSpec(audits=[]))
    assert needs_held_out_users(CompareSpec(audits=["mia"]))
    assert needs_held_out_users(CompareSpec(audits=["user_mia"]))
    assert needs_held_out_users(CompareSpec(audits=[], hold_out_users=True))  # shares the audited originals


def test_warm_up_pays_the_first_optimizers_import_before_methods_are_timed():
    """compare times every method alike only if the one-time import behind the first
    torch.optim optimizer (torch._dynamo) happens before any of them: checked in a fresh process."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from tru_dist.timing import warm_up_process\n"
            "assert 'torch._dynamo' not in sys.modules, 'already imported: the check would prove nothing'\n"
            "warm_up_process()\n"
            "assert 'torch._dynamo' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_run_seed_warms_the_process_up_before_timing_any_method(tiny_data, monkeypatch, tmp_path):
    """The warm-up must run before the first method (else the first one is charged for it)."""
    import tru_dist.compare as compare_mod
    import tru_dist.unlearn.base as base

    events: list[str] = []
    monkeypatch.setattr(compare_mod, "warm_up_process", lambda: events.append("warm-up"))
    real = base.get_method

    def recording(name):
        method = real(name)

        class Recorded:
            def __getattr__(self, attr):
                return getattr(method, attr)

            def unlearn(self, *args, **kwargs):
                events.append(name)
                return method.unlearn(*args, **kwargs)
        return Recorded()

    monkeypatch.setattr(base, "get_method", recording)
    cfg = build_config(model="lightgcn", overrides=["train.epochs=3", "unlearn.epochs=1",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["noop", "reverse_bpr"], seeds=[0],
                       originals=str(tmp_path))
    compare_mod.run_seed(cfg, spec, 0, data=tiny_data)
    assert events[0] == "warm-up" and set(events[1:]) == {"noop", "reverse_bpr"}


def test_sign_test_reads_the_consistency_a_divergent_seed_hides():
    """Ten seeds, TRU closer on all ten, one baseline seed diverged: the t-interval of the mean
    difference crosses 0 (verdict tie), the exact sign test gives p = 2·(½)^10 = 2/1024."""
    from tru_dist.compare import paired, sign_test

    tru = [0.04, 0.07, 0.10, 0.04, 0.04, 0.06, 0.08, 0.05, 0.09, 0.07]
    base = [0.06, 0.12, 1.46, 0.11, 0.05, 0.10, 0.09, 0.08, 0.12, 0.10]
    per_seed = [{"tru": {"retrain_distance": t}, "reverse_bpr": {"retrain_distance": b}}
                for t, b in zip(tru, base, strict=True)]
    got = paired(per_seed)["tru"]["reverse_bpr"]
    assert got["verdict"] == "tie" and got["ci"][1] > 0  # the outlier widens the t-interval
    assert (got["lower_on"], got["higher_on"]) == (10, 0)
    assert got["sign_p"] == pytest.approx(2 / 1024)
    # by hand: 7 lower, 2 higher, 1 exact tie (dropped): p = 2·Σ_{k≤2} C(9,k)/2^9 = 2·46/512
    assert sign_test([-1, -1, -1, -1, -1, -1, -1, 2, 3, 0.0]) == (7, 2, pytest.approx(92 / 512))
    assert sign_test([0.0, 0.0]) == (0, 0, 1.0)  # TRU = noop exactly on every seed: no evidence


@pytest.mark.parametrize("spec, message", [
    (CompareSpec(methods=["retrain", "noop"], audits=["nope"]), "unknown audit"),
    (CompareSpec(methods=[]), "names no method"),
    (CompareSpec(methods=["tru", "TRU"]), "more than once"),
])
def test_what_compare_cannot_run_is_refused_before_any_training(spec, message):
    """method_configs runs before the first original trains: an unknown audit was refused only
    after every model had run; no method, or one named twice, ran anyway."""
    with pytest.raises(ConfigError, match=message):
        method_configs(build_config(), spec)


def test_a_second_comparison_into_the_same_folder_leaves_no_seed_file_of_the_first(tmp_path, tiny_data,
                                                                                      capsys):
    """seed<k>.json of an earlier, longer comparison stayed beside the new results.json; and a
    comparison without retrain reported null distances without a word."""
    cfg = build_config(model="lightgcn", overrides=["train.epochs=5", "unlearn.epochs=1",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="interactions", fraction=0.05, methods=["noop"], seeds=[0, 1],
                       originals=str(tmp_path / "originals"))
    run_compare(cfg, spec, tmp_path / "out", data=tiny_data)
    assert sorted(p.name for p in (tmp_path / "out").glob("seed*.json")) == ["seed0.json", "seed1.json"]
    assert "no retrain_distance" in capsys.readouterr().out
    run_compare(cfg, CompareSpec(**{**spec.__dict__, "seeds": [1]}), tmp_path / "out", data=tiny_data)
    assert sorted(p.name for p in (tmp_path / "out").glob("seed*.json")) == ["seed1.json"]
    assert "removed seed0.json" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["spec"]["seeds"] == [1] and results["methods"]["noop"]["retrain_distance"] is None


def test_a_run_folder_is_refused_as_originals_cache_or_output(tmp_path, tiny_data):
    """``--originals runs/base`` wrote cached models into that run's folder without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny"])
    cases = ((CompareSpec(methods=["noop"], originals=str(run)), tmp_path / "out", "--originals"),
             (CompareSpec(methods=["noop"]), run, "--out"))
    for spec, out, flag in cases:
        with pytest.raises(ConfigError, match=f"{flag} .*run is a run folder"):
            run_compare(cfg, spec, out, data=tiny_data)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"] and not (tmp_path / "out").exists()
    # the command line wrote the comparison's config.yaml into OUT before run_compare refused it
    from tru_dist.cli import main

    base = ["compare", "--data", "synthetic:tiny", "--model", "lightgcn", "--methods", "noop", "--seeds", "1"]
    assert main([*base, "--out", str(run)]) == 2
    assert main([*base, "--originals", str(run), "--out", str(tmp_path / "out")]) == 2
    (tmp_path / "replicas").mkdir()
    (tmp_path / "replicas" / "replica.rank0.pt").write_bytes(b"")  # a replica run stopped half-way
    assert main([*base, "--out", str(tmp_path / "replicas")]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"] and not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "replicas").iterdir()) == ["replica.rank0.pt"]


def test_a_refused_comparison_leaves_the_earlier_ones_config_beside_its_results(tmp_path):
    """config.yaml was written before the comparison checked its arguments: a rerun into the
    same --out refused for an unknown method replaced it, so OUT held another run's config
    (say train.epochs=4) beside results.json of the earlier one (epochs 3)."""
    from tru_dist.cli import main

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "config.yaml").write_text("earlier\n")
    (out / "results.json").write_text("{}\n")
    assert main(["compare", "--data", "synthetic:tiny", "--model", "lightgcn", "--methods", "bogus",
                 "--seeds", "1", "--out", str(out), "--train.epochs=4"]) == 2
    assert (out / "config.yaml").read_text() == "earlier\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.json"]


def test_a_cache_miss_beside_other_keys_says_why_it_trains_afresh(tmp_path, tiny_data, capsys):
    """An ``--originals`` folder filled by another configuration or tru-dist version holds
    originals of the same model and seed under other keys: the run must say why it trains anyway
    (it used to retrain silently, which read as a broken cache). A plain first run says nothing,
    nor does one beside another seed's original or a cached Retrain."""
    from tru_dist.compare import _cache_path, note_cache_miss

    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny"])
    path = _cache_path(str(tmp_path), "", cfg, tiny_data)
    assert note_cache_miss(path) == [] and capsys.readouterr().out == ""
    (tmp_path / "retrain-lightgcn-seed0-0123456789abcdef0123.pt").write_bytes(b"")
    (tmp_path / "lightgcn-seed1-0123456789abcdef0123.pt").write_bytes(b"")  # another seed
    assert note_cache_miss(path) == [] and capsys.readouterr().out == ""
    stale = tmp_path / "lightgcn-seed0-0123456789abcdef0123.pt"
    stale.write_bytes(b"")
    assert note_cache_miss(path) == [stale]
    said = capsys.readouterr().out
    assert "no cached original" in said and "1 file(s) lightgcn-seed0-*.pt" in said
    assert "training it afresh" in said
    path.write_bytes(b"")  # the run's own key present: a hit, nothing to say
    assert note_cache_miss(path) == [] and capsys.readouterr().out == ""


def test_train_original_says_why_it_misses_a_cache_of_other_keys(tmp_path, tiny_data, capsys):
    """The line reaches the user from the training path itself, not just from the helper:
    ``train_original`` with a stale original of the same model and seed beside it says so, trains,
    and caches under its own key; the second call is a silent hit on that key."""
    from tru_dist.compare import _cache_path, train_original

    cfg = build_config(model="lightgcn", overrides=["data.path=synthetic:tiny", "train.epochs=2"])
    stale = tmp_path / "lightgcn-seed0-0123456789abcdef0123.pt"
    stale.write_bytes(b"")
    train_original(cfg, tiny_data, str(tmp_path))
    said = capsys.readouterr().out
    assert "no cached original" in said and "training it afresh" in said
    assert _cache_path(str(tmp_path), "", cfg, tiny_data).exists()
    train_original(cfg, tiny_data, str(tmp_path))
    assert "no cached original" not in capsys.readouterr().out


def test_retrain_reseed_is_a_second_retrain_under_another_seed(compare_run, tiny_data, tmp_path):
    """``retrain-reseed`` is Retrain trained under train.seed + RESEED_OFFSET: a different model
    (its distance to Retrain is the noise floor, above 0), cached beside Retrain under its own
    seed, and the very model a Retrain with that seed trains."""
    from tru_dist.unlearn.retrain import RESEED_OFFSET, reseeded_seed

    out, _ = compare_run
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=5",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "retrain-reseed", "noop"], seeds=[0],
                       audits=["mia"], originals=str(out / "originals"))
    run_compare(cfg, spec, tmp_path / "a", data=tiny_data)
    runs = json.loads((tmp_path / "a" / "seed0.json").read_text())
    reseed, retrain = runs["retrain-reseed"], runs["retrain"]
    assert reseed["stats"]["train_seed"] == RESEED_OFFSET and "cached" not in reseed["stats"]
    assert retrain["agreement"]["jaccard@20"] == 1.0 and retrain["retrain_distance"] == 0.0
    assert reseed["agreement"]["jaccard@20"] < 1.0 and reseed["retrain_distance"] > 0.0
    assert list((out / "originals").glob(f"retrain-lightgcn-seed{RESEED_OFFSET}-*.pt"))
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Noise floor" in report and f"retrain_distance {reseed['retrain_distance']:.3f}" in report
    run_compare(cfg, spec, tmp_path / "b", data=tiny_data)  # the second run loads it from the cache
    again = json.loads((tmp_path / "b" / "seed0.json").read_text())["retrain-reseed"]
    assert again["stats"]["cached"] is True and again["agreement"] == reseed["agreement"]
    assert reseeded_seed(2**32 - 1) == RESEED_OFFSET - 1  # wraps inside the valid seed range


def test_an_audit_the_data_cannot_support_says_why_in_the_results_report_and_log(compare_run, tiny_data,
                                                                                  tmp_path, capsys):
    """``--audit backdoor`` on data without injected poison gives NaN with a note. The note was in
    seed0.json only: results.json and report.md showed "—" and nothing said why."""
    out, _ = compare_run
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=5",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "noop"], seeds=[0, 1],
                       audits=["backdoor"], originals=str(out / "originals"))
    results = run_compare(cfg, spec, tmp_path, data=tiny_data)
    note = "no injected poison in the data (use the poison regime)"
    assert results["methods"]["noop"]["backdoor_notes"] == [note]
    assert f"No backdoor figure (—): {note}." in (tmp_path / "report.md").read_text()
    lines = capsys.readouterr().out.splitlines()
    said = [line.split("] ", 1)[1] for line in lines if "gives no figure" in line]
    assert said == [f"audit backdoor gives no figure here: {note}"]  # once, not per seed or method


def test_an_interrupted_rerun_leaves_the_earlier_comparison_whole(compare_run, tiny_data, tmp_path,
                                                                  monkeypatch):
    """A rerun into an earlier comparison's OUT, interrupted after its first seed, wrote that seed's
    new file beside the earlier results.json and seeds: one folder describing two runs. The new
    seeds now wait in OUT/.partial until every one is done; the next run clears them."""
    import shutil

    import tru_dist.compare as compare

    earlier, _ = compare_run
    out = tmp_path / "out"
    shutil.copytree(earlier, out, ignore=shutil.ignore_patterns("originals", "tuned"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = compare.run_seed
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(True)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "run_seed", interrupted)
    cfg = build_config(model="lightgcn", overrides=["train.epochs=25", "train.patience=5", "unlearn.epochs=3",
                                                    "data.path=synthetic:tiny"])
    spec = CompareSpec(regime="users", fraction=0.1, methods=["retrain", "noop"], seeds=[0, 1],
                       originals=str(earlier / "originals"))
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, spec, out, data=tiny_data)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in (out / ".partial").iterdir()] == ["seed0.json"]
    monkeypatch.setattr(compare, "run_seed", real)
    run_compare(cfg, spec, out, data=tiny_data)
    assert not (out / ".partial").exists()
    assert sorted(json.loads((out / "seed0.json").read_text())) == sorted(["retrain", "noop", "original",
                                                                            "_forget_set"])
