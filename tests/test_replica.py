"""Data-parallel replicas (:mod:`tru_dist.distributed.replica`): W = 2 local processes sharing
one memory-mapped graph, each sampling its own users' pairs, gradients summed row-sparse.

The exactness check: with no fan-out limit the batch-neighbourhood forward is exact, LightGCN's
loss is a sum over triples, so two replicas' step must equal one process's full-propagation step
on the union of the two ranks' batches (same initial parameters, same triples, scale 1/B)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tru_dist.config import build_config
from tru_dist.distributed.replica import (
    open_shared_graph,
    parameter_digest,
    rank_batches,
    share_graph,
    split_pairs,
    train_replicas,
)
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.base import BPRBatch
from tru_dist.models.registry import build_model
from tru_dist.train.optim import build_optimizer
from tru_dist.train.sampler import BPRSampler
from tru_dist.train.trainer import train_step


def _union_batches(pair_files, n_train: int, n_items: int, n_users: int, seed: int, batch: int, steps: int):
    """The global batches the two ranks draw, concatenated rank by rank (what the replicas sum)."""
    streams = []
    for r, f in enumerate(pair_files):
        pairs = np.load(f)
        sampler = BPRSampler(pairs[0], pairs[1], n_users, n_items, seed=[seed, r])
        streams.append(rank_batches(sampler, n_train, batch))
    out = []
    for _ in range(steps):
        parts = [next(s) for s in streams]
        out.append(BPRBatch(users=torch.cat([p.users for p in parts]), pos=torch.cat([p.pos for p in parts]),
                            neg=torch.cat([p.neg for p in parts]), scale=parts[0].scale))
    return out


@pytest.mark.parametrize(("model", "optimizer"),
                         [("lightgcn", "adam"), ("lightgcn", "row_sparse_adam"), ("mgcn", "adam")])
def test_two_replicas_step_as_one_process_on_the_union_batch(tiny_data, tmp_path, model, optimizer):
    """MGCN included: its contrastive negatives are gathered over the replicas' batches."""
    cfg = build_config(model=model, overrides=["train.batch_size=64", "train.lr=0.01",
                                               f"train.optimizer={optimizer}"])
    graph = build_rec_graph(tiny_data, with_knn=model == "mgcn")
    users, items = tiny_data.train_pairs
    run = train_replicas(graph, users, items, cfg, world_size=2, steps=2, fanout=0, work_dir=tmp_path,
                         keep_files=True)
    ranks = run["ranks"]
    assert ranks[0]["parameter_digest"] == ranks[1]["parameter_digest"]  # the replicas stay identical
    assert sum(r["pairs"] for r in ranks) == len(users) and min(r["pairs"] for r in ranks) > 0

    reference = build_model(cfg.model, graph, seed=cfg.train.seed)
    reference_optimizer = build_optimizer(reference, cfg.train)
    files = sorted(tmp_path.glob("replica-pairs.*.npy"))
    for batch in _union_batches(files, len(users), tiny_data.n_items, tiny_data.n_users, cfg.train.seed,
                                cfg.train.batch_size, steps=3):  # warm-up + 2 timed steps
        train_step(reference, graph, batch, reference_optimizer, [], local=False, deterministic=True)
    trained = torch.load(run["state_file"], weights_only=True)
    initial = build_model(cfg.model, graph, seed=cfg.train.seed).state_dict()
    moved = 0.0
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5)
        moved += float((value - initial[name]).abs().sum())
    assert moved > 0  # the steps did move the parameters (a no-op would not match the reference)
    assert run["bytes_per_step"] > 0


def test_mgcn_replicas_stay_identical_and_leave_no_shared_files(tiny_data, tmp_path):
    cfg = build_config(model="mgcn", overrides=["train.batch_size=64"])
    graph = build_rec_graph(tiny_data)
    users, items = tiny_data.train_pairs
    run = train_replicas(graph, users, items, cfg, world_size=2, steps=2, fanout=3, work_dir=tmp_path)
    assert not list(tmp_path.glob("replica-pairs.*")) and not (tmp_path / "replica-graph.pt").exists()
    assert run["ranks"][0]["parameter_digest"] == run["ranks"][1]["parameter_digest"]
    assert all(np.isfinite(r["loss_last"]) for r in run["ranks"])
    before = parameter_digest(build_model(cfg.model, graph, seed=cfg.train.seed))
    assert run["ranks"][0]["parameter_digest"] != before


def test_shared_graph_round_trips_and_pairs_split_by_user_range(tiny_data, tmp_path):
    graph = build_rec_graph(tiny_data)
    again = open_shared_graph(share_graph(graph, tmp_path))
    assert torch.equal(again.ui.norm.to_dense(), graph.ui.norm.to_dense())
    for m, (a, _) in graph.knn.items():
        assert torch.equal(again.knn[m][0].to_dense(), a.to_dense())
    users, items = tiny_data.train_pairs
    files = split_pairs(users, items, tiny_data.n_users, tiny_data.n_items, 3, tmp_path)
    parts = [np.load(f) for f in files]
    assert sum(p.shape[1] for p in parts) == len(users)
    # contiguous user ranges
    assert all(p[0].max() < q[0].min() for p, q in zip(parts[:-1], parts[1:], strict=True))


def test_a_rank_without_train_pairs_is_refused_before_any_process_starts(tiny_data, tmp_path):
    from tru_dist.errors import ConfigError

    cfg = build_config(model="lightgcn")
    graph = build_rec_graph(tiny_data, with_knn=False)
    users, items = tiny_data.train_pairs
    first_half = users < tiny_data.n_users // 2  # rank 1's user range keeps no pair
    with pytest.raises(ConfigError, match="rank 1 has no train pairs"):
        train_replicas(graph, users[first_half], items[first_half], cfg, world_size=2, steps=1, fanout=0,
                       work_dir=tmp_path)


def _replica_cfg(epochs: int, **extra):
    over = {"train.propagation": "local", "dist.workers": 2, "dist.address": "none", "train.epochs": epochs,
            "train.device": "cpu",
            "train.eval_every": 1, "train.patience": 0, "train.batch_size": 128, "train.lr": 0.02, "dim": 16,
            **extra}
    return build_config(model="lightgcn", overrides=[f"{k}={v}" for k, v in over.items()])


def test_train_on_two_replicas_learns_resumes_and_leaves_a_run_w1_opens(tiny_data, tmp_path):
    """``train`` with sampled steps on 2 workers trains replicas for whole epochs: it learns (test
    recall well above the untrained model's, which a do-nothing loop would leave), the run's
    ``checkpoint.pt`` opens at W = 1 with the same test metrics, and 2 epochs + ``resume`` to 4
    give the 4-epoch run's parameters bit for bit."""
    from tru_dist.distributed import commands
    from tru_dist.train.checkpoint import load_checkpoint
    from tru_dist.train.evaluate import evaluate

    cfg = _replica_cfg(4)
    metrics = commands.train(cfg, tmp_path / "a", data=tiny_data)
    assert metrics["replicas"] and metrics["epochs"] == 4 and metrics["world_size"] == 2
    graph = build_rec_graph(tiny_data, with_knn=False)
    untrained = build_model(cfg.model, graph, seed=cfg.train.seed)
    before = evaluate(untrained, graph, tiny_data, "test", ks=[20])["recall@20"]
    assert metrics["test"]["recall@20"] > before + 0.02
    again = commands.evaluate(tmp_path / "a", data=tiny_data)
    assert again["test"]["recall@20"] == pytest.approx(metrics["test"]["recall@20"], abs=1e-9)
    assert not (tmp_path / "a" / "replica-work").exists()  # the shared graph and pair files are gone

    commands.train(_replica_cfg(2), tmp_path / "b", data=tiny_data)
    resumed = commands.train(_replica_cfg(4), tmp_path / "b", data=tiny_data, resume=True)
    assert resumed["epochs"] == 4 and resumed["best_epoch"] == metrics["best_epoch"]
    full_a, full_b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("a", "b"))
    for k, v in full_a["best_model"].items():
        assert torch.equal(v, full_b["best_model"][k]), k
    assert [r["epoch"] for r in full_b["history"]] == [r["epoch"] for r in full_a["history"]] == [1, 2, 3, 4]


def test_replica_training_refuses_ray_a_gpu_and_a_changed_resume(tiny_data, tmp_path):
    from tru_dist.distributed import commands
    from tru_dist.errors import ConfigError
    from tru_dist.train.checkpoint import CheckpointError

    with pytest.raises(ConfigError, match="--address none"):
        commands.train(_replica_cfg(1, **{"dist.address": "local"}), tmp_path / "ray", data=tiny_data)
    with pytest.raises(ConfigError, match="CPU ranks"):
        commands.train(_replica_cfg(1, **{"train.device": "cuda"}), tmp_path / "gpu", data=tiny_data)
    commands.train(_replica_cfg(1), tmp_path / "c", data=tiny_data)
    before = (tmp_path / "c" / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="train.lr"):
        commands.train(_replica_cfg(2, **{"train.lr": 0.01}), tmp_path / "c", data=tiny_data, resume=True)
    assert (tmp_path / "c" / "config.yaml").read_text() == before  # a refused resume leaves it as it was
    users, items = tiny_data.train_pairs
    fewer = tiny_data.without_pairs(users[:1], items[:1])  # another dataset: one train pair fewer
    with pytest.raises(CheckpointError, match="different data"):
        commands.train(_replica_cfg(2), tmp_path / "c", data=fewer, resume=True)
    new_ids = np.random.default_rng(0).permutation(tiny_data.n_items)
    permuted = replace(tiny_data, items=new_ids[tiny_data.items])  # same counts, other pairs
    with pytest.raises(CheckpointError, match="different data"):
        commands.train(_replica_cfg(2), tmp_path / "c", data=permuted, resume=True)
    commands.train(_replica_cfg(2), tmp_path / "c", data=tiny_data, resume=True)
    assert "epochs: 2" in (tmp_path / "c" / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="at epoch 2, past train.epochs=1"):  # it finished silently
        commands.train(_replica_cfg(1), tmp_path / "c", data=tiny_data, resume=True)
