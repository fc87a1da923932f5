"""Sweep trials on reused worker groups (tru_dist.tune.group_trials), without Ray.

One :class:`TrialGroup` of 2 ranks runs several trials one epoch per call, interleaved, one
of them restored from a checkpoint and one of them after another method on the same regime
(the ranks' cached shards and originals): every report must equal what a fresh per-trial group
(``spawn_local`` + ``run_shard_trial``, the Ray Train trial's code) reports for the same sample,
and the group's pool is started once for all of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tru_dist.distributed.process_group import spawn_local

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "sweeps" / "tiny.yaml"
REGIME = "interactions-5pct"
COMPARED = ("score", "valid_recall@20", "valid_ndcg@20", "forget_hit@20", "forget_gap", "utility_ratio",
            "epoch", "converged")
TRU_A = {"unlearn.lambda_f": 1.3, "unlearn.gate.beta": 0.4, "unlearn.scaling.gamma": 1.0}
TRU_B = {"unlearn.lambda_f": 0.4, "unlearn.gate.beta": 0.9, "unlearn.scaling.gamma": 0.0}
RBPR = {"unlearn.lambda_f": 1.1, "unlearn.lambda_r": 0.6}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    from tru_dist.tune.context import prepare
    from tru_dist.tune.spec import base_config, load_spec

    spec, over = load_spec(TINY, ["--unlearn.epochs=3"])
    base = base_config(spec, over)
    sweep_dir = tmp_path_factory.mktemp("sweep-groups") / spec.name
    prepare(spec, base, sweep_dir)
    return spec, base, sweep_dir


def _fresh(rank: int, world: int, jobs: list[tuple[dict, dict]]) -> list[list[dict]]:
    """Each trial as a per-trial group runs it: a fresh shard, run to the end."""
    from tru_dist.tune.shard_trial import run_shard_trial

    out = []
    for task, sample in jobs:
        reports: list[dict] = []
        run_shard_trial(task, sample, 0, lambda m, s, r=reports: r.append({**m, "state": s}))
        out.append(reports)
    return out


def _same(a: dict, b: dict, what: str) -> None:
    for key in COMPARED:
        assert a[key] == pytest.approx(b[key], abs=1e-6), (what, key, a["epoch"])


def test_a_reused_group_reports_what_a_fresh_group_reports(tiny_sweep):
    from tru_dist.tune.group_trials import TrialGroup
    from tru_dist.tune.shard_trial import shard_trial_task

    spec, base, sweep_dir = tiny_sweep
    max_t = base.unlearn.epochs
    tru = shard_trial_task(spec, base, sweep_dir, spec.regime(REGIME), max_t, "tru")
    rbpr = shard_trial_task(spec, base, sweep_dir, spec.regime(REGIME), max_t, "reverse_bpr")
    fresh_a, fresh_b, fresh_r = spawn_local(_fresh, 2, ([(tru, TRU_A), (tru, TRU_B), (rbpr, RBPR)],))[0]
    assert [r["epoch"] for r in fresh_a] == [1, 2, 3]
    # three different updates: equal reports below cannot come from a group that ignores the sample
    finals = {(round(f[-1]["valid_ndcg@20"], 9), round(f[-1]["forget_hit@20"], 9))
              for f in (fresh_a, fresh_b, fresh_r)}
    assert len(finals) == 3

    group = TrialGroup(2, "gloo")
    try:
        got: dict[str, list[dict]] = {"a": [], "b": [], "r": []}
        # a and b interleaved, epoch by epoch, on one group
        for epoch in (1, 2, 3):
            for key, task, sample in (("a", tru, TRU_A), ("b", tru, TRU_B)):
                metrics, state = group.epoch(key, task, sample, epoch)
                assert state == {"epoch": epoch}
                got[key].append(metrics)
        assert group.epoch("a", tru, TRU_A, 4) is None  # max_t reached: no epoch 4
        # another method on the same regime: the ranks' cached contexts, untouched by a and b
        for epoch in (1, 2, 3):
            got["r"].append(group.epoch("r", rbpr, RBPR, epoch)[0])
        # a trial restored after its checkpoint at epoch 2 (a new key: nothing live for it)
        restored, state = group.epoch("a-restored", tru, TRU_A, 3)
        assert state == {"epoch": 3}
        live, contexts = group.cache_sizes()
        assert contexts == 1  # one regime: built once, shared by both methods and all trials
        assert live == 4  # a, b, r and a-restored: none evicted (MAX_LIVE = 4), none forgotten
        assert group.info()["pools_started"] == 1
    finally:
        group.close()

    for key, fresh in (("a", fresh_a), ("b", fresh_b), ("r", fresh_r)):
        assert len(got[key]) == len(fresh) == 3
        for mine, theirs in zip(got[key], fresh, strict=True):
            _same(mine, theirs, key)
    _same(restored, fresh_a[2], "restored")

    # ranks that keep one trial live: a and b evict each other every epoch, so every epoch
    # after the first is a replay from the seed — and must report the same
    evicting = TrialGroup(2, "gloo")
    try:
        with pytest.MonkeyPatch.context() as mp:  # the ranks read it when they start: on the first call
            mp.setenv("TRU_DIST_TRIAL_GROUP_MAX_LIVE", "1")
            for epoch in (1, 2, 3):
                for key, sample, fresh in (("a", TRU_A, fresh_a), ("b", TRU_B, fresh_b)):
                    _same(evicting.epoch(key, tru, sample, epoch)[0], fresh[epoch - 1], f"evicted {key}")
        assert evicting.cache_sizes()[0] == 1
    finally:
        evicting.close()


def test_a_failed_trial_breaks_the_pool_and_the_next_call_starts_a_fresh_one(tiny_sweep, tmp_path):
    from tru_dist.distributed.pool import PoolTaskError
    from tru_dist.tune.group_trials import TrialGroup
    from tru_dist.tune.shard_trial import shard_trial_task
    from tru_dist.tune.trainable import Fault

    spec, base, sweep_dir = tiny_sweep
    tru = shard_trial_task(spec, base, sweep_dir, spec.regime(REGIME), base.unlearn.epochs, "tru")
    fault = Fault(REGIME, 0, 2, str(tmp_path / "marker"), "tru")
    group = TrialGroup(2, "gloo")
    try:
        first, _ = group.epoch("t", tru, TRU_A, 1, fault, 0)
        with pytest.raises(PoolTaskError, match="injected fault"):
            group.epoch("t", tru, TRU_A, 2, fault, 0)
        again, state = group.epoch("t", tru, TRU_A, 2, fault, 0)  # the retry: the fault fired once
        assert state == {"epoch": 2} and group.info()["pools_started"] == 2
        fresh = spawn_local(_fresh, 2, ([(tru, TRU_A)],))[0][0]
        _same(first, fresh[0], "before the fault")
        _same(again, fresh[1], "after the retry")
    finally:
        group.close()
