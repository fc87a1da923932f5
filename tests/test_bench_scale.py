"""``tru-dist bench scale`` on a small generated store: the JSON interface, the deletion it
reports, the planner's local-propagation figures and the one-line refusals."""

from __future__ import annotations

import json

import pytest

from tru_dist.bench_scale import bench_scale, pick_users
from tru_dist.cli import main
from tru_dist.distributed.planner import plan

SMALL = ["--users", "3000", "--items", "400", "--interactions", "30000", "--modalities", "image:16,text:8"]


def test_bench_scale_cli_writes_the_interface_keys(tmp_path, capsys):
    out = tmp_path / "scale.json"
    rc = main(["bench", "scale", *SMALL, "--delete-users", "20", "--model", "mgcn", "--train-steps", "3",
               "--method", "reverse_bpr", "--work-dir", str(tmp_path / "work"), "--out", str(out),
               "--unlearn.epochs=1"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("unlearn_seconds", "peak_rss_gb", "planner_peak_gb", "seconds_per_1000_steps",
                "retrain_projected_seconds"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["data"]["n_users"] == 3000 and report["data"]["n_interactions"] == 30000
    assert report["unlearn"]["propagation"] == "local" and report["unlearn"]["steps"] >= 1
    assert report["unlearn"]["n_deleted_users"] == 20
    # projections are the arithmetic they claim to be
    assert report["retrain_projected_seconds"] == pytest.approx(
        report["seconds_per_1000_steps"] / 1000 * report["steps_per_epoch"] * report["retrain_epochs"])
    assert report["unlearn_seconds"] >= report["unlearn"]["deletion_seconds"]
    # the store is reused by a second call
    again = bench_scale(users=3000, items=400, interactions=30000, modalities={"image": 16, "text": 8},
                        delete_users=5, model="lightgcn", train_steps=1, work_dir=tmp_path / "work")
    assert again["data"]["data_cached"] is True


def test_pick_users_is_seeded_distinct_and_checked(tiny_data):
    (a, none), (b, _) = pick_users(tiny_data, 7, seed=3), pick_users(tiny_data, 7, seed=3)
    assert list(a) == list(b) and len(set(a.tolist())) == 7 and len(none) == 0
    assert list(pick_users(tiny_data, 7, seed=4)[0]) != list(a)
    batch, stream = pick_users(tiny_data, 7, seed=3, then=5)  # the stream's users come after, distinct
    assert len(stream) == 5 and not set(stream.tolist()) & set(batch.tolist())
    from tru_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="--delete-users"):
        pick_users(tiny_data, 10**6, seed=0)


def test_bench_scale_at_two_workers_trains_replicas_side_by_side(tmp_path):
    report = bench_scale(users=3000, items=400, interactions=30000, modalities={"image": 16, "text": 8},
                         delete_users=5, stream=2, model="lightgcn", workers=2, train_steps=2,
                         work_dir=tmp_path / "work", out_json=tmp_path / "s.json")
    rep = report["replicas"]
    assert rep["identical_replicas"] is True and sum(rep["pairs_per_rank"]) == report["data"]["n_train"]
    assert rep["w1_seconds_per_1000_steps"] > 0 and rep["seconds_per_1000_steps"] > 0
    assert report["seconds_per_1000_steps"] == rep["seconds_per_1000_steps"]  # the projections use W's steps
    # only the touched rows travel, not the dense tables
    assert 0 < rep["bytes_per_step_measured"] < rep["bytes_per_step_dense_equivalent"]
    assert rep["bytes_per_step_measured"] <= rep["bytes_per_step_planner_bound"]
    assert report["unlearn_seconds"] > 0 and (tmp_path / "s.json").exists()


def test_bench_scale_refuses_zero_workers_before_any_work(tmp_path):
    from tru_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers"):
        bench_scale(users=3000, items=400, interactions=30000, workers=0, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before the store was written


def test_planner_local_nodes_count_the_neighbourhood_not_the_graph():
    """At the 1M-user size a full MGCN forward's activations dwarf a fan-out-bounded batch's."""
    args = dict(n_users=1_000_000, n_items=100_000, n_edges=16_000_000,
                feature_dims={"image": 512, "text": 384}, dim=64, n_layers=2, model="mgcn", world_size=1,
                memory_per_worker_gb=24, check=False)
    full, local = plan(**args), plan(**args, local_nodes=3 * 2048 * 121)
    assert local.memory_bytes["activations"] < full.memory_bytes["activations"]
    assert local.memory_bytes["user_rows"] == full.memory_bytes["user_rows"]
    # one no-grad full forward is still counted (gate passes and evaluation rank every item)
    assert local.memory_bytes["activations"] > full.memory_bytes["activations"] / 2


def test_planner_names_sampled_steps_as_a_remedy_when_they_fit():
    from tru_dist.errors import PlanError

    args = dict(n_users=1_000_000, n_items=100_000, n_edges=16_000_000, feature_dims={},
                dim=64, n_layers=2, model="lightgcn", world_size=1)
    full = plan(**args, memory_per_worker_gb=24, check=False)
    local = plan(**args, memory_per_worker_gb=24, check=False, local_nodes=3 * 2048 * 121)
    budget = (local.total_bytes + full.total_bytes) / 2 / 2**30  # local fits, full does not
    with pytest.raises(PlanError, match="--train.propagation=local --train.fanout=10"):
        plan(**args, memory_per_worker_gb=budget)


def test_more_training_steps_than_one_epoch_has_batches(tmp_path):
    report = bench_scale(users=300, items=60, interactions=2000, modalities={"image": 8},
                         delete_users=3, model="lightgcn", train_steps=4, work_dir=tmp_path)
    assert report["steps_per_epoch"] == 1 and report["train_steps"] == 4
    assert report["unlearn"]["n_deleted_users"] == 3
