"""Trainer: learning, determinism, exact resume, checkpoints, metrics.json, W = 2 parity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tru_dist.config import Config
from tru_dist.errors import ConfigError, TruDistError
from tru_dist.graph.context import build_rec_graph
from tru_dist.models.base import Embeddings
from tru_dist.models.lightgcn import LightGCN
from tru_dist.train.checkpoint import (
    CheckpointError,
    checkpoint_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tru_dist.train.evaluate import evaluate
from tru_dist.train.progress import progress_enabled
from tru_dist.train.trainer import evaluate_run, fit, load_run, run_train, train_model


def small_cfg(**train) -> Config:
    base = {"lr": 0.01, "batch_size": 256, "epochs": 6, "patience": 50, "seed": 0, "progress": "off"}
    return Config.from_dict({"model": {"name": "lightgcn", "dim": 16}, "train": {**base, **train},
                             "eval": {"ks": [10, 20]}})


def strip_times(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_lightgcn_learns_far_above_random(tiny_data):
    cfg = small_cfg(epochs=15, eval_every=5)
    graph = build_rec_graph(tiny_data, with_knn=False)
    rng = np.random.default_rng(0)
    random = np.mean([
        evaluate(None, graph, tiny_data, "valid", ks=(20,), emb=Embeddings(
            torch.from_numpy(rng.normal(size=(tiny_data.n_users, 16))),
            torch.from_numpy(rng.normal(size=(tiny_data.n_items, 16)))))["recall@20"]
        for _ in range(5)])
    model, graph, result = fit(cfg, tiny_data)
    assert result.epochs == 15 and [r["epoch"] for r in result.history if "valid" in r] == [5, 10, 15]
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    trained = result.valid["recall@20"]
    assert trained > 3.0 * random, (trained, random)
    assert evaluate(model, graph, tiny_data, "valid", ks=(10, 20))["recall@20"] == pytest.approx(trained)


def test_same_seed_same_metrics_other_seed_differs(tiny_data):
    cfg = small_cfg(epochs=3)
    _, _, a = fit(cfg, tiny_data)
    _, _, b = fit(cfg, tiny_data)
    _, _, c = fit(small_cfg(epochs=3, seed=1), tiny_data)
    assert strip_times(a.history) == strip_times(b.history)
    assert strip_times(a.history) != strip_times(c.history)


@pytest.mark.parametrize(("eval_every", "optimizer"), [(1, "adam"), (2, "adam"), (1, "row_sparse_adam")])
def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path, eval_every, optimizer):
    """6 epochs straight == crash after epoch 3 + resume (the checkpoint is at epoch 3 or 2)."""
    cfg = small_cfg(epochs=6, eval_every=eval_every, optimizer=optimizer)
    straight, _, res_straight = fit(cfg, tiny_data, out_dir=tmp_path / "a")

    def crash(record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tiny_data, out_dir=tmp_path / "b", on_epoch=crash)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == (3 if eval_every == 1 else 2)
    torch.manual_seed(999)  # global RNG state must come from the checkpoint, not from here
    np.random.seed(999)
    resumed, _, res_resumed = fit(cfg, tiny_data, out_dir=tmp_path / "b", resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert strip_times(res_straight.history) == strip_times(res_resumed.history)
    assert res_straight.valid == res_resumed.valid and res_straight.best_epoch == res_resumed.best_epoch
    last_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    last_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


class NoisyLightGCN(LightGCN):
    """LightGCN with dropout (torch RNG) and a numpy-drawn jitter: resume must restore both RNGs."""

    def embed(self, graph) -> Embeddings:
        emb = super().embed(graph)
        if not self.training:
            return emb
        jitter = float(np.random.uniform(0.9, 1.1))
        return Embeddings(F.dropout(emb.user, 0.3) * jitter, emb.item)


def test_resume_restores_global_rngs(tiny_data, tmp_path):
    cfg = small_cfg(epochs=4)
    graph = build_rec_graph(tiny_data, with_knn=False)

    def run(out, resume=False, on_epoch=None):
        torch.manual_seed(0)  # same initial parameters for every run
        model = NoisyLightGCN(tiny_data.n_users, tiny_data.n_items, {}, cfg.model)
        torch.manual_seed(77)  # a resumed run must take its RNG state from the checkpoint instead
        np.random.seed(77)
        train_model(model, graph, tiny_data, cfg, out_dir=out, resume=resume, on_epoch=on_epoch)
        return torch.load(out / "checkpoint.pt", weights_only=True)["model"]

    def crash(record):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    straight = run(tmp_path / "a")
    with pytest.raises(RuntimeError):
        run(tmp_path / "b", on_epoch=crash)
    resumed = run(tmp_path / "b", resume=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(6)
    np.random.seed(6)
    random.seed(6)
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path):
    fit(small_cfg(epochs=1), tiny_data, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="train.lr"):
        fit(small_cfg(epochs=2, lr=0.5), tiny_data, out_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(small_cfg(epochs=2), tiny_data, out_dir=tmp_path / "empty", resume=True)
    # another optimizer's state does not load (a raw KeyError: 'rows'), and a checkpoint past the
    # epochs asked for finished there silently while config.yaml said otherwise
    with pytest.raises(CheckpointError, match="train.optimizer"):
        fit(small_cfg(epochs=2, optimizer="row_sparse_adam"), tiny_data, out_dir=tmp_path, resume=True)
    fit(small_cfg(epochs=3), tiny_data, out_dir=tmp_path, resume=True)
    past = r"at epoch 3, past train.epochs=2; resume with --train.epochs=3 or more"
    with pytest.raises(CheckpointError, match=past):
        fit(small_cfg(epochs=2), tiny_data, out_dir=tmp_path, resume=True)


def test_resume_on_other_data_of_the_same_counts_is_refused(tiny_data, tmp_path):
    """The checkpoint recorded only counts: the same dataset with its item ids permuted resumed
    silently. A digest of the train pairs (order-independent) now tells them apart, and a
    checkpoint written before the digest is compared on its counts."""
    from dataclasses import replace

    from tru_dist.train.trainer import data_signature, pairs_digest

    new_ids = np.random.default_rng(0).permutation(tiny_data.n_items)
    permuted = replace(tiny_data, items=new_ids[tiny_data.items])
    assert {k: v for k, v in data_signature(permuted).items() if k != "train_digest"} == \
        {k: v for k, v in data_signature(tiny_data).items() if k != "train_digest"}
    fit(small_cfg(epochs=1), tiny_data, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="different data"):
        fit(small_cfg(epochs=2), permuted, out_dir=tmp_path, resume=True)
    order = np.random.default_rng(1).permutation(tiny_data.n_interactions)
    shuffled = replace(tiny_data, users=tiny_data.users[order], items=tiny_data.items[order],
                       labels=tiny_data.labels[order])
    assert data_signature(shuffled) == data_signature(tiny_data)  # row order does not matter
    u, i = tiny_data.train_pairs
    assert pairs_digest(u[:-1], i[:-1], tiny_data.n_items) != pairs_digest(u, i, tiny_data.n_items)
    saved = torch.load(checkpoint_path(tmp_path, 0, 1), weights_only=False)
    del saved["data"]["train_digest"]  # as written before the digest
    save_checkpoint(saved, checkpoint_path(tmp_path, 0, 1))
    fit(small_cfg(epochs=2), shuffled, out_dir=tmp_path, resume=True)


def test_a_refused_resume_leaves_the_run_config_as_it_was(tiny_data, tmp_path):
    """config.yaml was rewritten with the refused settings, so --config RUN/config.yaml no longer
    described the checkpoint."""
    run_train(small_cfg(epochs=1), tmp_path, data=tiny_data)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="train.lr"):
        run_train(small_cfg(epochs=2, lr=0.5), tmp_path, resume=True, data=tiny_data)
    assert (tmp_path / "config.yaml").read_text() == before


def test_early_stopping_counts_evaluations_and_restores_best(tiny_data):
    """lr = 1e-12 (lr must be > 0): nothing ever improves on epoch 1, so training stops after 1 + patience."""
    _, _, res = fit(small_cfg(epochs=50, lr=1e-12, patience=3), tiny_data)
    assert res.stopped_early and res.epochs == 4 and res.best_epoch == 1
    model, graph, res = fit(small_cfg(epochs=8, lr=0.05, patience=0), tiny_data)
    assert res.epochs == 8  # patience 0 disables early stopping
    best = max((r for r in res.history if "valid" in r), key=lambda r: r["valid"]["recall@20"])
    assert res.best_epoch == best["epoch"]
    assert evaluate(model, graph, tiny_data, "valid", ks=(10, 20)) == best["valid"]


def test_a_non_finite_loss_stops_training_naming_the_epoch(tiny_data, tmp_path):
    """MIG-GT on finite float32 features of ~1e30 gives a NaN loss from epoch 1; training used to
    go on, checkpoint the NaN model and report recall over NaN scores. Now one TrainingError
    names the epoch and the fix, before any checkpoint is written."""
    from tru_dist.errors import TrainingError

    huge = tiny_data.with_features({m: (f * 1e30).astype(np.float32) for m, f in tiny_data.features.items()})
    assert all(np.isfinite(f).all() for f in huge.features.values())
    cfg = Config.from_dict({"model": {"name": "miggt", "dim": 8},
                            "train": {"epochs": 3, "batch_size": 512, "progress": "off"},
                            "eval": {"ks": [10, 20]}})
    with pytest.raises(TrainingError, match=r"miggt training diverged at epoch 1: the loss is nan; normalise "
                                            r"the item features .* lower train\.lr"):
        fit(cfg, huge, out_dir=tmp_path)
    assert not checkpoint_path(tmp_path).exists()


def test_data_without_train_rows_is_refused_and_without_valid_rows_trains_every_epoch(tiny_data, caplog):
    """No train row: a one-line DataError (it "trained" with loss 0 and checkpointed the initial
    model). No valid row: every valid metric is 0, so early stopping kept epoch 1 and stopped
    after `patience` evaluations; now one warning, every epoch runs and the last one is kept."""
    from dataclasses import replace

    from tru_dist.data.dataset import TEST, TRAIN, VALID
    from tru_dist.errors import DataError

    no_train = replace(tiny_data, labels=np.where(tiny_data.labels == TRAIN, VALID, tiny_data.labels))
    with pytest.raises(DataError, match=r"dataset 'synthetic' has no train interaction \(x_label 0\)"):
        fit(small_cfg(epochs=2), no_train)
    no_valid = replace(tiny_data, labels=np.where(tiny_data.labels == VALID, TEST, tiny_data.labels))
    with caplog.at_level("WARNING", logger="tru_dist.train"):
        _, _, res = fit(small_cfg(epochs=4, patience=1), no_valid)
    assert res.epochs == 4 and res.best_epoch == 4 and not res.stopped_early
    assert [r.getMessage() for r in caplog.records].count(
        "dataset 'synthetic' has no valid rows (x_label 1): lightgcn trains all train.epochs without early "
        "stopping and keeps the last epoch; label some rows x_label=1 to select the best epoch") == 1


def test_run_train_writes_metrics_and_loadable_checkpoint(tiny_data, tmp_path):
    cfg = small_cfg(epochs=3)
    metrics = run_train(cfg, tmp_path, data=tiny_data)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == {"valid", "test", "best_epoch", "epochs", "train_seconds", "seconds_per_epoch",
                            "world_size", "config"}
    assert on_disk["test"] == metrics["test"] and on_disk["config"] == cfg.to_dict()
    assert on_disk["test"]["n_users"] > 0 and 0.0 < on_disk["test"]["recall@20"] <= 1.0
    saved = torch.load(checkpoint_path(tmp_path, 0, 1), weights_only=True)
    for key in ("model", "best_model", "optimizer", "sampler", "rng", "config", "epoch", "history"):
        assert key in saved
    again = evaluate_run(tmp_path, data=tiny_data)
    assert again["test"] == metrics["test"] and again["valid"] == metrics["valid"]
    cfg2, _, _, model = load_run(tmp_path, data=tiny_data)
    assert cfg2 == cfg and not model.training
    with pytest.raises(CheckpointError, match="in-memory"):
        load_run(tmp_path)


def test_bad_metric_and_missing_data_path(tiny_data, tmp_path):
    bad = Config.from_dict({"eval": {"metric": "recall@7", "ks": [10, 20]}, "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match="recall@10"):
        fit(bad, tiny_data)
    missing = small_cfg()
    missing.data.path = str(tmp_path / "no-such-folder")
    with pytest.raises(TruDistError, match="does not exist"):
        run_train(missing, tmp_path / "run")


def test_progress_modes(monkeypatch):
    assert progress_enabled("on") and not progress_enabled("off")
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled("auto")
    with pytest.raises(ValueError):
        progress_enabled("sometimes")


def test_progress_off_and_on_survive_yaml_reading_them_as_booleans(tmp_path):
    from tru_dist.config import build_config
    from tru_dist.errors import ConfigError

    assert build_config(overrides=["--train.progress=off"]).train.progress == "off"
    assert build_config(overrides=["--train.progress=on"]).train.progress == "on"
    (tmp_path / "c.yaml").write_text("train:\n  progress: off\n")
    assert build_config(config_file=tmp_path / "c.yaml").train.progress == "off"
    with pytest.raises(ConfigError, match="train.progress"):
        build_config(overrides=["--train.progress=sometimes"])


def _w2_worker(rank: int, init_file: str, data, cfg_dict: dict, out: str) -> None:
    import torch.distributed as dist

    from tru_dist.graph.partition import PartitionBook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cfg = Config.from_dict(cfg_dict)
        book = PartitionBook.contiguous(data.n_users, data.n_items, 2)
        model, _, res = fit(cfg, data, book=book, rank=rank, out_dir=out)
        torch.save({"state": model.state_dict(), "history": strip_times(res.history)}, f"{out}/rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while its peer is still mid-collective
    finally:
        dist.destroy_process_group()


def test_two_workers_match_one_process(tiny_data, tmp_path):
    """W = 2 over gloo takes the same steps as W = 1: same item table, same user rows, same metrics."""
    import torch.multiprocessing as mp

    cfg = small_cfg(epochs=2, batch_size=512)
    model, _, res = fit(cfg, tiny_data)
    mp.spawn(_w2_worker, args=(str(tmp_path / "init"), tiny_data, cfg.to_dict(), str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = model.state_dict()
    torch.testing.assert_close(parts[0]["state"]["item_emb"], ref["item_emb"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts[1]["state"]["item_emb"], ref["item_emb"], rtol=1e-4, atol=1e-5)
    users = torch.cat([parts[0]["state"]["user_emb"], parts[1]["state"]["user_emb"]])
    torch.testing.assert_close(users, ref["user_emb"], rtol=1e-4, atol=1e-5)
    for r in range(2):
        assert (tmp_path / f"checkpoint.rank{r}.pt").exists()
        for a, b in zip(parts[r]["history"], strip_times(res.history), strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
            assert a["valid"]["n_users"] == b["valid"]["n_users"]
            assert a["valid"]["recall@20"] == pytest.approx(b["valid"]["recall@20"], abs=1e-6)


def test_run_train_from_data_path_and_reload(tiny_data, tmp_path):
    """run_train reads cfg.data.path; load_run/evaluate_run re-read it and reproduce test metrics."""
    from tru_dist.data.mmrec import write_mmrec

    folder = tmp_path / "data"
    write_mmrec(tiny_data, folder, name="tiny")
    cfg = small_cfg(epochs=2)
    cfg.data.path = str(folder)
    metrics = run_train(cfg, tmp_path / "run")
    assert evaluate_run(tmp_path / "run")["test"] == metrics["test"]


def test_bench_train_reports_timings_and_sizes(tiny_data, tmp_path):
    from tru_dist.bench import bench_train, parse_feature_spec, with_synthetic_features

    assert parse_feature_spec("image:4096, text:384") == {"image": 4096, "text": 384}
    with pytest.raises(ConfigError):
        parse_feature_spec("image=4096")
    bare = tiny_data.with_features({})
    feats = with_synthetic_features(bare, "image:7").features
    assert {m: f.shape for m, f in feats.items()} == {"image": (120, 7)}
    report = bench_train(bare, "lightgcn", None, epochs=1, out_json=tmp_path / "b.json", eval_repeats=1,
                         overrides={"model": {"dim": 8}})
    assert json.loads((tmp_path / "b.json").read_text())["sizes"] == report["sizes"]
    assert report["epochs"] == 1 and len(report["epoch_seconds"]) == 1
    assert report["eval_valid_seconds"] > 0 and report["eval_test_seconds"] > 0 and report["peak_rss_mb"] > 0
    assert report["sizes"]["n_parameters"] == 8 * (tiny_data.n_users + tiny_data.n_items)
    assert report["eval_test_users"] == len(np.unique(tiny_data.split("test")[0]))


def test_row_sparse_adam_is_adam_on_touched_rows_and_leaves_the_others():
    """Dense parameters: exactly ``torch.optim.Adam``. A row table: a row with a nonzero gradient
    takes Adam's step with its own moments; a row without one keeps its value and moments (dense
    Adam would keep moving it on its momentum — checked to differ)."""
    from tru_dist.train.optim import RowSparseAdam

    torch.manual_seed(0)
    table0, dense0 = torch.randn(6, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    grads = [(torch.zeros(6, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)) for _ in range(3)]
    grads[0][0][[1, 3]] = torch.randn(2, 3, dtype=torch.float64)
    grads[1][0][[3, 4]] = torch.randn(2, 3, dtype=torch.float64)  # row 1 untouched at step 2
    grads[2][0][:] = torch.randn(6, 3, dtype=torch.float64)

    def run(make):
        table, dense = torch.nn.Parameter(table0.clone()), torch.nn.Parameter(dense0.clone())
        opt = make(table, dense)
        out = []
        for g_table, g_dense in grads:
            table.grad, dense.grad = g_table.clone(), g_dense.clone()
            opt.step()
            out.append((table.detach().clone(), dense.detach().clone()))
        return out

    lazy = run(lambda t, d: RowSparseAdam([t], [d], lr=0.1))
    adam = run(lambda t, d: torch.optim.Adam([t, d], lr=0.1))
    for (_, ld), (_, ad) in zip(lazy, adam, strict=True):
        assert torch.equal(ld, ad)  # the dense parameter: Adam bit for bit (the same adam_update_ ops)
    # step 1: touched rows take Adam's step, untouched rows are where they started
    torch.testing.assert_close(lazy[0][0][[1, 3]], adam[0][0][[1, 3]])
    torch.testing.assert_close(lazy[0][0][[0, 2, 4, 5]], table0[[0, 2, 4, 5]])
    # step 2: row 1 (touched before, not now) stays; dense Adam moves it on its momentum
    torch.testing.assert_close(lazy[1][0][1], lazy[0][0][1])
    assert not torch.allclose(adam[1][0][1], adam[0][0][1])
    # row 3, touched at both steps, is Adam's two-step result (m, v carried for that row)
    torch.testing.assert_close(lazy[1][0][3], adam[1][0][3])
    # hand check of row 1 at step 1: m = 0.1 g, v = 0.001 g², θ -= lr/0.1 · m/(√v/√0.001 + ε)
    g = grads[0][0][1]
    expected = table0[1] - 0.1 / (1 - 0.9) * (0.1 * g) / ((0.001 * g * g).sqrt() / (1 - 0.999) ** 0.5 + 1e-8)
    torch.testing.assert_close(lazy[0][0][1], expected)


def test_bench_train_takes_config_overrides_from_the_command_line(tiny_data, tmp_path):
    """``tru-dist bench train ... --key=value`` reaches the timed config (it was parsed and then
    dropped): the cost of ``train.deterministic`` is measured this way."""
    from tru_dist.cli import main
    from tru_dist.data.mmrec import write_mmrec

    write_mmrec(tiny_data, tmp_path / "tiny", name="tiny")
    for flag in ("false", "true"):
        out = tmp_path / f"b-{flag}.json"
        assert main(["bench", "train", "--data", str(tmp_path / "tiny"), "--model", "lightgcn",
                     "--epochs", "1", "--out", str(out), f"--train.deterministic={flag}",
                     "--model.dim=8"]) == 0
        report = json.loads(out.read_text())
        assert report["deterministic"] is (flag == "true")
        assert report["sizes"]["dim"] == 8
