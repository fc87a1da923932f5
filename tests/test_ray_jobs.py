"""Fault tolerance and the Ray entry points.

* Fault injection without Ray (fast): rank 0 of a W = 1 run raises once at step n; a
  resumed run finishes with exactly the metrics of an uninterrupted run.
* Fault injection under Ray Train (``slow``): rank 1 of W = 2 raises at step n, Ray
  restarts the worker group from the last checkpoint, and the metrics match a W = 2 run
  without a fault.
* End to end: ``cluster/local-start.sh`` on free ports, ``jobs/train.py --workers 2``
  submitted with ``JobSubmissionClient``, SUCCEEDED, its result files read,
  ``cluster/local-stop.sh``; ``jobs/compare.py`` and ``jobs/sweep.py`` likewise behind ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tru_dist.config import build_config
from tru_dist.distributed.faults import FaultPlan, InjectedFault, arm
from tru_dist.distributed.launch import run_distributed
from tru_dist.distributed.process_group import free_port

REPO = Path(__file__).resolve().parent.parent
QUICK = "--train.epochs=3 --model.dim=16"


def _train_cfg(**dist):
    return build_config(overrides={
        "data": {"path": "synthetic:tiny"}, "model": {"name": "lightgcn", "dim": 16},
        "train": {"epochs": 3, "batch_size": 256}, "eval": {"ks": [10, 20]}, "dist": dist})


def _same_run(a: dict, b: dict) -> None:
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-6)
    for split in ("valid", "test"):
        for k, v in b[split].items():
            assert a[split][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (split, k)


def test_fault_plan_fires_once_at_the_given_step(tmp_path):
    class M:
        def loss(self, x):
            return x

    plan = FaultPlan(rank=0, step=3, marker_dir=tmp_path)
    m = M()
    steps = arm(m, plan, rank=0)
    assert m.loss(1) == 1 and m.loss(2) == 2
    with pytest.raises(InjectedFault):
        m.loss(3)
    assert plan.marker.exists() and steps() == 3
    assert m.loss(4) == 4  # the marker makes it fire once
    other = M()
    arm(other, plan, rank=1)  # not the faulty rank: untouched
    assert "loss" not in vars(other)


def test_fault_then_resume_equals_uninterrupted_run_without_ray(tmp_path):
    clean = run_distributed("train", _train_cfg(address="none"), out_dir=tmp_path / "clean")
    faulty = _train_cfg(address="none", fault_rank=0, fault_step=10)  # step 10 lies in epoch 2
    with pytest.raises(InjectedFault):
        run_distributed("train", faulty, out_dir=tmp_path / "faulty")
    assert (tmp_path / "faulty" / "fault.rank0.step10").exists()
    resumed = run_distributed("train", faulty, out_dir=tmp_path / "faulty", resume=True)
    assert resumed["epochs"] == 3
    _same_run(resumed, clean)


@pytest.mark.slow
def test_ray_train_restarts_a_failed_worker_and_matches(tmp_path, ray_session):
    reference = run_distributed("train", _train_cfg(workers=2, address="none"), out_dir=tmp_path / "ref")
    cfg = _train_cfg(workers=2, address="local", fault_rank=1, fault_step=10, max_failures=2)
    result = run_distributed("train", cfg, out_dir=tmp_path / "ray")
    assert (tmp_path / "ray" / "fault.rank1.step10").exists()  # the fault did happen
    assert json.loads((tmp_path / "ray" / "metrics.json").read_text())["world_size"] == 2
    _same_run(result, reference)


# -- end to end: local head + ray job submit ---------------------------------------------------
@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    pytest.importorskip("ray.job_submission")
    state = tmp_path_factory.mktemp("head") / "ray-head.env"
    dash = free_port()
    gcs = free_port()
    env = {**os.environ, "RAY_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(dash),
           "RAY_HEAD_STATE": str(state), "RAY_NUM_CPUS": "2", "RAY_AUTH_MODE": "disabled"}
    start = subprocess.run([str(REPO / "cluster" / "local-start.sh")], env=env, capture_output=True,
                           text=True, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    assert f"http://127.0.0.1:{dash}" in start.stdout
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{gcs}")
    finally:
        recorded = re.search(r'RAY_HEAD_PIDS="?([0-9 ]*)', state.read_text()) if state.exists() else None
        stop = subprocess.run([str(REPO / "cluster" / "local-stop.sh")], env=env, capture_output=True,
                              text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert not state.exists()
        pids = recorded.group(1).split() if recorded else []
        assert pids and not [p for p in pids if _running(int(p))], "local-stop.sh left head processes running"


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(client, job_id: str, timeout: float = 300.0) -> str:
    from ray.job_submission import JobStatus

    end = time.time() + timeout
    while time.time() < end:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(2)
    client.stop_job(job_id)
    return "TIMEOUT"


def _job_succeeds(ray_head, entrypoint: str, timeout: float = 300.0, env_vars: dict | None = None) -> str:
    """Submit ``entrypoint`` with the repository as working dir, wait, assert SUCCEEDED; its logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head.url)
    runtime_env = {"working_dir": str(REPO), **({"env_vars": env_vars} if env_vars else {})}
    job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    status = _wait(client, job, timeout=timeout)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    return logs


def test_a_train_job_on_two_workers_submitted_to_a_local_head_succeeds(ray_head, tmp_path):
    """``jobs/train.py --workers 2``: Ray Train's worker group inside a submitted job."""
    logs = _job_succeeds(ray_head, f"python jobs/train.py --data synthetic:tiny --workers 2 --out "
                                   f"{tmp_path / 'train'} --storage {tmp_path / 'storage'} {QUICK}")
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["world_size"] == 2 and trained["epochs"] == 3
    assert 0.0 < trained["test"]["recall@20"] <= 1.0
    assert any((tmp_path / "storage").rglob("checkpoint.rank1.pt"))  # per-rank files in Ray's checkpoints
    assert '"world_size": 2' in logs


@pytest.mark.slow
def test_a_compare_job_submitted_to_a_local_head_succeeds(ray_head, tmp_path):
    """``jobs/compare.py`` (its in-process parts are covered by the default run's compare tests;
    this one is the submission path, behind ``-m slow`` for the test-time budget)."""
    _job_succeeds(ray_head, f"python jobs/compare.py --data synthetic:tiny --out {tmp_path / 'compare'} "
                            f"--methods retrain,reverse_bpr,tru --seeds 1 --unlearn.epochs=2 {QUICK}")
    results = json.loads((tmp_path / "compare" / "results.json").read_text())
    assert {"original", "retrain", "reverse_bpr", "tru"} <= set(results["methods"])
    assert all(math.isfinite(results["methods"][m]["test"]["recall@20"]) for m in ("retrain", "tru"))


@pytest.mark.slow
def test_sweep_job_with_two_workers_per_trial(ray_head, tmp_path):
    """``jobs/sweep.py --workers 2`` on a running head (its dashboard serves the state API).

    The test session may run a second Ray (``ray_session``): RAY_ADDRESS in the job's runtime
    environment tells Ray Train's placement-group cleaner which instance is the job's."""
    from tru_dist.tune import adapter

    _job_succeeds(ray_head,
                  f"python jobs/sweep.py --config configs/sweeps/tiny.yaml --storage {tmp_path} --workers 2 "
                  "--unlearn.epochs=2 --sweep.num_samples=2 --sweep.report=false "
                  "'--sweep.regimes=[{regime: interactions, fraction: 0.05}]' "
                  "'--sweep.methods={tru: {unlearn.lambda_f: {loguniform: [0.1, 3.0]}}}'",
                  timeout=600, env_vars={"RAY_ADDRESS": ray_head.gcs})
    rows = adapter.trial_rows(tmp_path / "tiny" / "tune" / "tru" / "interactions-5pct")
    assert sorted(r["epoch"] for r in rows) == [1, 1, 2, 2]
    assert all(0.0 < r["valid_recall@20"] <= 1.0 for r in rows)
    assert len(list((tmp_path / "tiny" / "train" / "tru" / "interactions-5pct").iterdir())) == 2  # 2 runs
    assert (tmp_path / "tiny" / "tuned" / "tru-interactions.yaml").exists()
