"""Sweep trials on W > 1 workers (tru_dist.tune.shard_trial, adapter.run_train_trial).

The Ray-free part: two gloo processes (``spawn_local``) run one trial's epochs on shards of
the data — each loading its own shard, the original's user rows and the forget set from the
sweep folder — and every epoch's report must equal, on both ranks, what the single-process
trial reports for the same sample (TRU with gate, scaling and isolation on; both a users
regime, which resets deleted users, and an interactions regime; and reverse_bpr,
grad_ascent and finetune, the other methods a sweep tunes). Through Ray, a W = 2 sweep of
reverse_bpr is interrupted and resumed, with each trial its own Ray Train run and with the
trials on one reused worker group (``dist.trial_groups``); both must report what one process
computes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tru_dist.distributed.process_group import spawn_local

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"
REGIMES = ["users-random-5pct", "interactions-5pct"]
SAMPLE = {"unlearn.lambda_f": 1.3, "unlearn.gate.beta": 0.4, "unlearn.scaling.gamma": 1.0,
          "unlearn.isolation.budget": 0.6}
COMPARED = ("score", "valid_recall@20", "valid_ndcg@20", "forget_hit@20", "forget_gap", "utility_ratio",
            "epoch", "converged")


@pytest.fixture(scope="module")
def prepare_once(tmp_path_factory):
    """The tiny sweep's shared context (originals, forget sets, references) per backbone, Ray-free."""
    from tru_dist.tune.context import prepare
    from tru_dist.tune.spec import base_config, load_spec

    cache: dict[str, tuple] = {}

    def get(model: str):
        if model not in cache:
            spec, over = load_spec(TINY, ["--unlearn.epochs=2", f"--sweep.model={model}"])
            base = base_config(spec, over)
            sweep_dir = tmp_path_factory.mktemp(f"sweep-{model}") / spec.name
            cache[model] = (spec, base, sweep_dir, prepare(spec, base, sweep_dir))
        return cache[model]

    return get


@pytest.fixture
def prepared(prepare_once):
    return prepare_once("lightgcn")


def _shard_trial(rank: int, world: int, task: dict, sample: dict) -> list[dict]:
    from tru_dist.tune.shard_trial import run_shard_trial

    reports: list[dict] = []
    run_shard_trial(task, sample, 0, lambda metrics, state: reports.append({**metrics, "state": state}))
    return reports


def _shard_trials(rank: int, world: int, jobs: list[tuple[dict, dict]]) -> list[list[dict]]:
    """Several trials in one process group (one spawn): their reports, in order."""
    return [_shard_trial(rank, world, task, sample) for task, sample in jobs]


OTHER_METHODS = {"reverse_bpr": {"unlearn.lambda_f": 1.3, "unlearn.lambda_r": 0.7},
                 "grad_ascent": {"unlearn.lambda_f": 0.8, "unlearn.lr": 0.002},
                 "finetune": {"unlearn.lambda_r": 1.5}}


def test_every_method_reports_the_same_on_two_workers(prepare_once):
    """reverse_bpr, grad_ascent and finetune (users regime: deleted users reset) on 2 shards
    report what one process reports, epoch by epoch — the shard trial runs any method."""
    from tru_dist.tune.shard_trial import shard_trial_task
    from tru_dist.tune.trainable import TrialContext, run_epochs

    spec, base, sweep_dir, contexts = prepare_once("lightgcn")
    regime_id, max_t = REGIMES[0], base.unlearn.epochs
    jobs, singles = [], []
    for method, sample in OTHER_METHODS.items():
        single: list[dict] = []
        ctx = TrialContext(regime_id, [c.for_trials() for c in contexts[regime_id]], spec.k, max_t,
                           method=method)
        run_epochs(sample, ctx, 0, lambda metrics, state, out=single: out.append(metrics))
        singles.append(single)
        jobs.append((shard_trial_task(spec, base, sweep_dir, spec.regime(regime_id), max_t, method), sample))
    ranks = spawn_local(_shard_trials, 2, (jobs,))
    for method, single, r0, r1 in zip(OTHER_METHODS, singles, ranks[0], ranks[1], strict=True):
        assert [r["epoch"] for r in single] == [r["epoch"] for r in r0] == list(range(1, max_t + 1)), method
        for one, a, b in zip(single, r0, r1, strict=True):
            for key in COMPARED:
                assert a[key] == b[key], (method, key)
                assert a[key] == pytest.approx(one[key], abs=1e-6), (method, key, one["epoch"])
    finals = [(round(one[-1]["valid_ndcg@20"], 9), round(one[-1]["forget_hit@20"], 9)) for one in singles]
    assert len(set(finals)) == len(finals)  # three different updates, not one loop thrice


@pytest.mark.parametrize("model, regime_id", [("lightgcn", REGIMES[0]), ("lightgcn", REGIMES[1]),
                                             ("mgcn", REGIMES[1])])
def test_two_workers_report_what_one_process_reports(prepare_once, model, regime_id):
    """MGCN also checks the feature slices and the kNN graphs built from them by each rank."""
    from tru_dist.tune.shard_trial import shard_trial_task
    from tru_dist.tune.trainable import TrialContext, run_epochs

    spec, base, sweep_dir, contexts = prepare_once(model)
    max_t = base.unlearn.epochs
    single: list[dict] = []
    ctx = TrialContext(regime_id, [c.for_trials() for c in contexts[regime_id]], spec.k, max_t)
    run_epochs(SAMPLE, ctx, 0, lambda metrics, state: single.append({**metrics, "state": state}))
    task = shard_trial_task(spec, base, sweep_dir, spec.regime(regime_id), max_t)
    ranks = spawn_local(_shard_trial, 2, (task, SAMPLE))

    assert [r["epoch"] for r in single] == list(range(1, max_t + 1))
    assert ranks[0] and len(ranks[0]) == len(single) == len(ranks[1])
    for one, r0, r1 in zip(single, ranks[0], ranks[1], strict=True):
        assert r0["state"] == r1["state"] == one["state"] == {"epoch": one["epoch"]}
        for key in COMPARED:
            assert r0[key] == r1[key], key  # every rank reports the same (global) numbers
            assert r0[key] == pytest.approx(one[key], abs=1e-6), (key, one["epoch"])
    # the deletion moved something: a trial that reports constants would pass the above vacuously
    # (hit@20 over a few dozen deleted pairs is coarse: the valid ndcg shows any move of the model)
    start = contexts[regime_id][0].baselines["original"]
    moved = (single[-1]["valid_ndcg@20"], single[-1]["forget_hit@20"])
    assert moved != pytest.approx((start["ndcg"], start["hit"]), abs=1e-9)


def test_a_trial_starting_after_a_checkpoint_reports_only_later_epochs(prepared):
    spec, base, sweep_dir, _ = prepared
    from tru_dist.tune.shard_trial import run_shard_trial, shard_trial_task

    task = shard_trial_task(spec, base, sweep_dir, spec.regime(REGIMES[1]), base.unlearn.epochs)
    full: list[dict] = []
    resumed: list[dict] = []
    run_shard_trial(task, SAMPLE, 0, lambda m, s: full.append(m))
    run_shard_trial(task, SAMPLE, 1, lambda m, s: resumed.append(m))
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["score"] == full[1]["score"]  # epoch 1 replayed silently: the same state after it


# -- through Ray: W = 2 trials, each a Ray Train run or all on one reused worker group ----------------------
W2_REGIME = "interactions-5pct"
W2_METHOD = "reverse_bpr"
W2_OVERRIDES = ["--unlearn.epochs=2", "--sweep.regimes=[{regime: interactions, fraction: 0.05}]",
                "--sweep.methods={reverse_bpr: {unlearn.lambda_f: {loguniform: [0.1, 3.0]}}}",
                "--sweep.num_samples=2", "--dist.max_failures=0", "--sweep.report=false"]


def _rows_by_trial(experiment: Path) -> dict[str, list[dict]]:
    from tru_dist.tune import adapter

    out: dict[str, list[dict]] = {}
    for row in adapter.trial_rows(experiment):
        out.setdefault(row["trial_id"], []).append(row)
    return out


# per-trial (the cluster default) is the slower half (~57 s of setup on 2 cores): behind -m slow, so the
# default run stays within its ~10 minutes; reused (the local default) runs by default
@pytest.fixture(scope="module", params=[pytest.param("per-trial", marks=pytest.mark.slow), "reused"])
def workers_sweep(request, ray_session, tmp_path_factory):
    """2 trials × 2 epochs, W = 2; trial 1 fails once before epoch 2, then ``--resume``; each
    trial its own Ray Train run (``per-trial``), or both on one worker group (``reused``)."""
    import time

    from tru_dist.errors import TruDistError
    from tru_dist.tune.sweep import run_sweep

    mode = request.param
    overrides = [*W2_OVERRIDES, f"--dist.trial_groups={mode}"]
    storage = tmp_path_factory.mktemp(f"sweeps-w2-{mode}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRU_DIST_SWEEP_FAULT", f"{W2_REGIME}:1:2")
        with pytest.raises(TruDistError, match="rerun with --resume") as failed:
            run_sweep(TINY, overrides=overrides, storage=storage, workers=2)
        interrupted = _rows_by_trial(storage / "tiny" / "tune" / W2_METHOD / W2_REGIME)
        out = run_sweep(TINY, overrides=overrides, resume=True, storage=storage, workers=2)
    deadline = time.monotonic() + 60  # stopped trials' worker groups must give their CPUs back
    while ray_session.available_resources().get("CPU", 0.0) < 2.0 and time.monotonic() < deadline:
        time.sleep(1.0)
    return {"dir": out, "error": str(failed.value), "interrupted": interrupted, "mode": mode,
            "overrides": overrides, "cpus": ray_session.available_resources().get("CPU", 0.0)}


def test_workers_sweep_resumes_the_failed_trial_after_its_last_epoch(workers_sweep):
    assert "injected fault" in workers_sweep["error"]
    before = workers_sweep["interrupted"]
    failed = next(t for t in before if t.endswith("_00001"))
    assert [r["epoch"] for r in before[failed]] == [1]
    after = _rows_by_trial(workers_sweep["dir"] / "tune" / W2_METHOD / W2_REGIME)
    assert set(after) == set(before) and len(after) == 2
    for rows in after.values():  # epoch 1 is not reported twice: the trial resumed after it
        assert [r["epoch"] for r in rows] == [1, 2]
    from tru_dist.errors import ConfigError
    from tru_dist.tune.sweep import run_sweep

    storage = workers_sweep["dir"].parent
    with pytest.raises(ConfigError, match="resume it with --workers=2"):
        run_sweep(TINY, overrides=workers_sweep["overrides"], resume=True, storage=storage, workers=1)
    other = "reused" if workers_sweep["mode"] == "per-trial" else "per-trial"
    with pytest.raises(ConfigError, match=f"resume it with --dist.trial_groups={workers_sweep['mode']}"):
        run_sweep(TINY, overrides=[*W2_OVERRIDES, f"--dist.trial_groups={other}"], resume=True,
                  storage=storage, workers=2)
    train_runs = workers_sweep["dir"] / "train" / W2_METHOD / W2_REGIME
    if workers_sweep["mode"] == "per-trial":  # one Ray Train run per trial, reused on resume
        assert sorted(p.name for p in train_runs.iterdir()) == sorted(f"trial_{t}" for t in after)
    else:  # no Ray Train runs: the trials checkpoint in Tune
        assert not train_runs.exists()
    assert workers_sweep["cpus"] == 2.0  # no placement group or worker group leaked
    from tru_dist.unlearn.tuned import read_tuned

    _, tuning = read_tuned(workers_sweep["dir"] / "tuned" / f"{W2_METHOD}-interactions.yaml")
    assert tuning["trials"] == 2 and tuning["parts"]["trials"] > 0


def test_workers_sweep_reports_what_one_process_computes(workers_sweep):
    from tru_dist.tune.context import prepare
    from tru_dist.tune.sweep import load_manifest
    from tru_dist.tune.trainable import TrialContext, run_epochs

    spec, base, max_t = load_manifest(workers_sweep["dir"])
    assert base.dist.workers == 2 and base.dist.trial_groups == workers_sweep["mode"]
    seeds = prepare(spec, base, workers_sweep["dir"], regime_ids=[W2_REGIME], must_exist=True)[W2_REGIME]
    for rows in _rows_by_trial(workers_sweep["dir"] / "tune" / W2_METHOD / W2_REGIME).values():
        single: list[dict] = []
        ctx = TrialContext(W2_REGIME, [sc.for_trials() for sc in seeds], spec.k, max_t, method=W2_METHOD)
        run_epochs(rows[0]["config"], ctx, 0, lambda metrics, state, out=single: out.append(metrics))
        for row, one in zip(rows, single, strict=True):
            for key in COMPARED:
                assert row[key] == pytest.approx(one[key], abs=1e-6), key


def test_workers_sweep_without_the_state_api_is_a_one_line_error(ray_session, monkeypatch):
    import ray.util.state

    from tru_dist.errors import ConfigError
    from tru_dist.tune import adapter

    adapter.require_state_api()  # the test session's Ray: one instance, dashboard on

    def unreachable(*args, **kwargs):
        raise ConnectionError("dashboard not running")

    monkeypatch.setattr(ray.util.state, "list_actors", unreachable)
    with pytest.raises(ConfigError, match="need Ray's state API") as info:
        adapter.require_state_api()
    assert "\n" not in str(info.value) and "--workers=1" in str(info.value)
    assert ray_session.get_runtime_context().gcs_address in adapter.local_gcs_addresses()
    monkeypatch.setattr(adapter, "local_gcs_addresses", lambda: {"a:1", "b:2"})
    with pytest.raises(ConfigError, match="2 Ray instances run on this machine") as info:
        adapter.require_state_api()
    assert "\n" not in str(info.value) and "RAY_ADDRESS" in str(info.value)


def test_workers_that_cannot_fit_the_local_ray_are_refused(ray_session):
    from tru_dist.errors import ConfigError
    from tru_dist.tune import adapter
    from tru_dist.tune.spec import load_spec

    spec, _ = load_spec(TINY)
    adapter.check_workers_fit(spec, 2, "local")  # 2 workers x 1 CPU fit the session's 2 CPUs
    assert adapter.max_concurrent_trials(spec, 2, "local") == 1  # 2 CPUs hold one 2-worker group
    assert adapter.max_concurrent_trials(spec, 1, "local") == 0  # W = 1: no cap from here
    assert adapter.max_concurrent_trials(spec, 2, "auto") == spec.max_concurrent == 2  # a cluster may grow
    with pytest.raises(ConfigError, match="--workers=3: a trial needs 3 x 1 CPU"):
        adapter.check_workers_fit(spec, 3, "local")
    adapter.check_workers_fit(spec, 3, "auto")  # a cluster may autoscale: Ray decides there


def test_resume_keeps_the_trial_group_mode_the_sweep_started_in(tmp_path):
    """``auto`` on --resume is the recorded mode (sweeps recorded before the option, as ``auto``,
    ran per-trial), not the address's default; an explicit other mode is refused. Ray-free."""
    from tru_dist.errors import ConfigError
    from tru_dist.io_utils import atomic_write_json
    from tru_dist.tune.manifest import MANIFEST
    from tru_dist.tune.spec import base_config, load_spec
    from tru_dist.tune.sweep import _check_manifest, _resolved_trial_groups

    spec, over = load_spec(TINY, [])
    sweep_dir = tmp_path / spec.name
    sweep_dir.mkdir()

    def record(mode: str):
        base = base_config(spec, over)
        base.dist.workers, base.dist.trial_groups = 2, mode
        atomic_write_json(sweep_dir / MANIFEST, {"spec": spec.model_dump(mode="json"),
                                                 "config": base.to_dict(), "max_t": base.unlearn.epochs,
                                                 "config_path": str(TINY)})

    def now(mode: str = "auto"):
        base = base_config(spec, over)
        base.dist.workers, base.dist.trial_groups = 2, mode
        return base

    assert _resolved_trial_groups(sweep_dir, now(), resume=False) == "reused"  # a new local sweep
    for recorded, expected in (("auto", "per-trial"), ("per-trial", "per-trial"), ("reused", "reused")):
        record(recorded)
        base = now()
        base.dist.trial_groups = _resolved_trial_groups(sweep_dir, base, resume=True)
        assert base.dist.trial_groups == expected, recorded
        _check_manifest(sweep_dir, spec, base, resume=True)  # accepted
        other = now("reused" if expected == "per-trial" else "per-trial")
        with pytest.raises(ConfigError, match=f"resume it with --dist.trial_groups={expected}"):
            _check_manifest(sweep_dir, spec, other, resume=True)
