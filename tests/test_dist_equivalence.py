"""W = 2 (two processes, gloo, no Ray) must compute what W = 1 computes, to float tolerance.

One ``spawn_local`` run executes :func:`_probe` on both ranks (training steps, metrics,
MGCN, a whole TRU unlearning run, collective byte counts); the W = 1 reference is the same
function called in this process without a process group. Each test then compares one
aspect: adjacency rows and global item degrees, parameters after one step and after a few
(user rows concatenated over ranks; replicated parameters equal on every rank),
full-ranking metrics, MGCN, every TRU statistic and decision, the unlearned model, the
kNN graphs built from feature slices, and what each worker materialises.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tru_dist.config import build_config
from tru_dist.distributed.comm_meter import CommMeter
from tru_dist.distributed.process_group import spawn_local
from tru_dist.distributed.shard import build_shard_model, load_shard
from tru_dist.unlearn.deletion import build_deletion

RTOL, ATOL = 1e-4, 1e-6
DIFFS: dict[str, tuple[float, float]] = {}


def _cfg(model: str, epochs: int, batch: int, **extra):
    over = {"model": {"name": model, "dim": 16, "n_layers": 2},
            "train": {"epochs": epochs, "batch_size": batch},
            "dist": {"partition": "balanced"}, "eval": {"ks": [10, 20]}}
    for k, v in extra.items():
        over.setdefault(k, {}).update(v)
    return build_config(overrides=over)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _probe(rank: int, world: int, data) -> dict:
    """Everything the tests compare, computed by one rank (or by the single process)."""
    from tru_dist.data.regimes import forget_set
    from tru_dist.train.evaluate import evaluate
    from tru_dist.train.trainer import train_model
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.metrics import forget_metrics

    out: dict = {"rank": rank}
    # LightGCN: adjacency rows, one step (1 global batch = 1 epoch), then several steps + metrics
    one = _cfg("lightgcn", epochs=1, batch=4096)
    shard = load_shard(one, data)
    out["user_range"] = shard.book.user_range(rank)
    out["adjacency"] = shard.graph.ui.dense()
    out["item_degree"] = shard.graph.ui.item_degree.clone()
    out["lightgcn_features"] = {m: tuple(f.shape) for m, f in shard.graph.features.items()}
    model = build_shard_model(one, shard)
    out["lightgcn_init"] = _state(model)
    train_model(model, shard.graph, shard.data, one)
    out["lightgcn_step"] = _state(model)
    few = _cfg("lightgcn", epochs=2, batch=400)
    model = build_shard_model(few, shard)
    result = train_model(model, shard.graph, shard.data, few)
    out["lightgcn_steps"] = _state(model)
    out["lightgcn_loss"] = [h["loss"] for h in result.history]
    out["lightgcn_metrics"] = {s: evaluate(model, shard.graph, shard.data, s, ks=(10, 20))
                               for s in ("valid", "test")}

    # MGCN: feature slices, kNN from slices, one step with its bytes counted, then TRU
    mg_one = _cfg("mgcn", epochs=1, batch=4096)
    mshard = load_shard(mg_one, data)
    out["item_range"] = mshard.book.item_range(rank)
    out["mgcn_features"] = {m: tuple(f.shape) for m, f in mshard.graph.features.items()}
    out["knn"] = {m: a.to_dense() for m, (a, _) in mshard.graph.knn.items()}
    model = build_shard_model(mg_one, mshard)
    out["mgcn_user_rows"] = int(model.user_emb.shape[0])
    with CommMeter() as meter:  # one training step, then one validation forward
        train_model(model, mshard.graph, mshard.data, mg_one)
    out["mgcn_comm"] = meter.by_op()
    out["mgcn_step"] = _state(model)

    # gate.lr 0.01: the line search halves the step (epochs 1, 2, 4) and keeps epoch 3's state, so
    # the update moves the model and a step takes a gate pass's forward (epoch 3)
    mg = _cfg("mgcn", epochs=2, batch=400,
              unlearn={"epochs": 2, "batch_size": 64, "gate": {"max_epochs": 4, "lr": 0.01}})
    model = build_shard_model(mg, mshard)
    train_model(model, mshard.graph, mshard.data, mg)
    # interactions: the calibrated gate really runs (gathered percentiles, line search); whole
    # users' pairs would be on target at once
    forget = forget_set(mshard.data, "interactions", 0.05, seed=0)
    deletion = build_deletion(mshard.data, mshard.graph, forget)
    data_after, graph_after = deletion.data_after, deletion.graph_after
    res = get_method("tru").unlearn(model, deletion, mg)
    out["tru_stats"] = _no_seconds(res.stats)
    out["tru_params"] = _state(res.model)
    out["tru_metrics"] = evaluate(res.model, graph_after, data_after, "test", ks=(10, 20))
    out["tru_forget"] = forget_metrics(res.model, graph_after, data_after, forget, ks=(10, 20))
    return out


@pytest.fixture(scope="module")
def runs(tiny_data):
    single = _probe(0, 1, tiny_data)
    ranks = spawn_local(_probe, 2, (tiny_data,))
    yield single, ranks
    if DIFFS:
        print("\nmax |W2 - W1| (abs, rel):", {k: (f"{a:.2e}", f"{r:.2e}") for k, (a, r) in DIFFS.items()})


def _check(name: str, w2: torch.Tensor, w1: torch.Tensor) -> None:
    w1, w2 = w1.double(), w2.double()
    assert w1.shape == w2.shape, f"{name}: shape {tuple(w2.shape)} vs {tuple(w1.shape)}"
    diff = (w2 - w1).abs()
    a = float(diff.max()) if diff.numel() else 0.0
    r = float((diff / w1.abs().clamp(min=1e-3)).max()) if diff.numel() else 0.0
    old = DIFFS.get(name, (0.0, 0.0))
    DIFFS[name] = (max(old[0], a), max(old[1], r))
    torch.testing.assert_close(w2, w1, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def _check_state(name: str, single: dict, ranks: list[dict], key: str, user_keys=("user_emb",)) -> None:
    for k, ref in single[key].items():
        if k in user_keys:  # sharded: concatenate the ranks' rows
            _check(f"{name}.{k}", torch.cat([r[key][k] for r in ranks]), ref)
        else:  # replicated: every rank holds the full, equal value
            for r in ranks:
                _check(f"{name}.{k}", r[key][k], ref)


def _no_seconds(stats: dict) -> dict:
    """Stats without their wall times (which differ from run to run)."""
    return {k: v for k, v in stats.items() if not k.endswith("seconds")}


def _check_values(name: str, a, b) -> None:
    """Recursive comparison of nested stats: numbers to tolerance, everything else equal."""
    if isinstance(b, dict):
        assert set(a) == set(b), f"{name}: keys {sorted(a)} vs {sorted(b)}"
        for k in b:
            _check_values(f"{name}.{k}", a[k], b[k])
    elif isinstance(b, list | tuple) and b and all(isinstance(x, int | float) and not isinstance(x, bool)
                                                    for x in b):
        _check(name, torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    elif isinstance(b, list | tuple):
        assert len(a) == len(b), f"{name}: length {len(a)} vs {len(b)}"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _check_values(f"{name}[{k}]", x, y)
    elif isinstance(b, float) and not math.isnan(b):
        _check(name, torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    elif isinstance(b, torch.Tensor):
        _check(name, a, b)
    else:
        assert a == b or (isinstance(b, float) and math.isnan(a)), f"{name}: {a!r} vs {b!r}"


def test_adjacency_rows_and_global_item_degrees(runs):
    single, ranks = runs
    assert ranks[0]["user_range"][0] == 0 and ranks[0]["user_range"][1] == ranks[1]["user_range"][0]
    _check("adjacency", torch.cat([r["adjacency"] for r in ranks]), single["adjacency"])
    for r in ranks:  # degrees are all-reduced: every rank normalises with the global ones
        _check("item_degree", r["item_degree"], single["item_degree"])
    assert float(ranks[0]["adjacency"].abs().sum()) > 0 and float(ranks[1]["adjacency"].abs().sum()) > 0


def test_same_initial_parameters_and_one_lightgcn_step(runs):
    single, ranks = runs
    _check_state("lightgcn_init", single, ranks, "lightgcn_init")
    _check_state("lightgcn_step", single, ranks, "lightgcn_step")
    moved = (single["lightgcn_step"]["item_emb"] - single["lightgcn_init"]["item_emb"]).abs().max()
    assert float(moved) > 1e-5  # the step changed the parameters, so equality is informative


def test_several_lightgcn_steps_loss_and_full_ranking_metrics(runs):
    single, ranks = runs
    _check_state("lightgcn_steps", single, ranks, "lightgcn_steps")
    for r in ranks:
        _check_values("lightgcn_loss", r["lightgcn_loss"], single["lightgcn_loss"])
        _check_values("metrics", r["lightgcn_metrics"], single["lightgcn_metrics"])
    assert single["lightgcn_metrics"]["test"]["n_users"] > 0


def test_mgcn_step_and_knn_from_feature_slices(runs):
    single, ranks = runs
    _check_state("mgcn_step", single, ranks, "mgcn_step")
    for r in ranks:
        for m, a in single["knn"].items():
            _check(f"knn.{m}", r["knn"][m], a)


def test_tru_statistics_decisions_and_unlearned_model(runs):
    single, ranks = runs
    stats = single["tru_stats"]
    assert stats["isolation"]["selected_groups"] and stats["gate"] and stats["steps"] > 0
    # MGCN's steps took gate passes' forwards (collectives inside them run once, on every rank)
    assert 0 < stats["gate_forwards_reused"] < stats["steps"] and stats["backtracks"]
    assert stats["best_gap"]["epoch"] > 0  # the kept state is not the start model
    for r in ranks:
        _check_values("tru_stats", r["tru_stats"], stats)
        _check_values("tru_metrics", r["tru_metrics"], single["tru_metrics"])
        _check_values("tru_forget", r["tru_forget"], single["tru_forget"])
    _check_state("tru_params", single, ranks, "tru_params")
    # no coordinator broadcasts decisions: each rank decides from the same all-reduced sums,
    # so the two ranks' decisions and statistics are equal bit for bit, not just close
    assert json.dumps(ranks[0]["tru_stats"], sort_keys=True, default=str) == \
        json.dumps(ranks[1]["tru_stats"], sort_keys=True, default=str)


def test_each_worker_materialises_only_its_slice(runs, tiny_data):
    single, ranks = runs
    dims = {m: f.shape[1] for m, f in tiny_data.features.items()}
    assert single["mgcn_features"] == {m: (tiny_data.n_items, d) for m, d in dims.items()}
    for r in ranks:
        lo, hi = r["item_range"]
        assert 0 < hi - lo < tiny_data.n_items
        assert r["mgcn_features"] == {m: (hi - lo, d) for m, d in dims.items()}
        assert r["mgcn_user_rows"] == r["user_range"][1] - r["user_range"][0] < tiny_data.n_users
        assert r["lightgcn_features"] == {}  # an ID-only model loads no features at all
    assert sum(r["item_range"][1] - r["item_range"][0] for r in ranks) == tiny_data.n_items


def test_bytes_per_step_match_the_planner(runs, tiny_data):
    from tru_dist.distributed.planner import plan

    _, ranks = runs
    n_train = int((tiny_data.labels == 0).sum())
    cfg = _cfg("mgcn", epochs=1, batch=4096)
    dims = {m: f.shape[1] for m, f in tiny_data.features.items()}
    p = plan(tiny_data.n_users, tiny_data.n_items, n_train, dims, 16, 2, cfg.model, 2, 8.0,
             batch_size=4096, check=False)
    comm = {op: v["bytes"] for op, v in ranks[0]["mgcn_comm"].items()}
    c = p.comm_bytes
    # the metered span is one training step plus the validation forward (forward collectives only)
    fwd = c["ui_all_reduce_forward"] + c["feature_all_gather_forward"]
    reduce_planned = 2 * c["ui_all_reduce_forward"] + c["ui_all_reduce_backward"] + c["grad_all_reduce"]
    assert comm["all_reduce"] == reduce_planned
    # the InfoNCE batch gathers pad each rank's rows to the largest share: a few rows more at most
    batch = comm["all_gather"] - 2 * c["feature_all_gather_forward"]
    assert c["batch_all_gather_forward"] <= batch <= 1.05 * c["batch_all_gather_forward"]
    assert comm["scatter"] - c["feature_all_to_all_backward"] == batch  # all-to-all backward of both
    measured_step = sum(comm.values()) - fwd
    assert p.comm_bytes_per_step <= measured_step <= 1.05 * p.comm_bytes_per_step


def test_any_w_opens_a_w2_run_and_unlearns_its_requests_alike(tmp_path):
    """Trained on 2 workers, the run opens at W = 1 (its checkpoint.pt holds full tables);
    ``evaluate`` and ledgered ``unlearn`` of one request file give the same metrics and the
    same receipt at W = 1 and W = 2 (model_after aside: float sums in another order)."""
    from tru_dist.data.regimes import select_forget
    from tru_dist.data.requests import write_requests
    from tru_dist.data.source import open_data
    from tru_dist.distributed import commands
    from tru_dist.train.trainer import evaluate_run

    cfg = _cfg("lightgcn", epochs=2, batch=400, data={"path": "synthetic:tiny"},
               dist={"address": "none", "workers": 2}, unlearn={"epochs": 2, "batch_size": 64})
    run = tmp_path / "run"
    trained = commands.train(cfg, run)
    assert trained["world_size"] == 2 and (run / "checkpoint.rank1.pt").exists()
    assert json.loads((run / "metrics.json").read_text())["test"] == trained["test"]
    # the full file: W = 1 library code and the W = 1 / W = 2 commands all read it
    _check_values("evaluate_run", evaluate_run(run)["test"], trained["test"])
    for w in (1, 2):
        evaluated = commands.evaluate(run, overrides=[f"dist.workers={w}", "dist.address=none"])
        _check_values(f"evaluate_w{w}", evaluated["test"], trained["test"])

    requests = tmp_path / "req.csv"
    write_requests(select_forget(open_data("synthetic:tiny"), "users", 0.05, 0, "random"), requests)
    out = {w: commands.unlearn(run, requests, tmp_path / f"u{w}", method="tru",
                               overrides=[f"dist.workers={w}", "dist.address=none"]) for w in (1, 2)}
    assert out[1]["world_size"] == 1 and out[2]["world_size"] == 2 and out[1]["forget"]["n_pairs"] > 0
    for key in ("before", "test", "valid", "forget", "forget_set"):
        _check_values(f"unlearn.{key}", out[2][key], out[1][key])
    _check_values("unlearn.decisions", _no_seconds(out[2]["decisions"]), _no_seconds(out[1]["decisions"]))
    r1, r2 = out[1]["receipt"], out[2]["receipt"]
    for key in ("receipt_id", "request_ids", "removed", "overlaps", "model_before", "hashes"):
        assert r1[key] == r2[key], key
    _check_values("receipt.audit", r2["audit"], r1["audit"])
    for w in (1, 2):  # the same files at every W
        assert sorted(p.name for p in (tmp_path / f"u{w}").iterdir()) == \
            ["checkpoint.pt", "config.yaml", "ledger.jsonl", "ledger_hashes", "metrics.json"]
    # and both unlearned models open in one process and score alike
    _check_values("reopen", evaluate_run(tmp_path / "u2")["test"], evaluate_run(tmp_path / "u1")["test"])


def test_a_refused_resume_at_w2_leaves_the_run_config_as_it_was(tmp_path):
    """At W > 1 the workers (and the Ray driver) wrote config.yaml before the resume was checked,
    so a refused resume left the run's config.yaml describing settings its checkpoint never had."""
    from tru_dist.distributed import commands
    from tru_dist.train.checkpoint import CheckpointError

    def cfg(**train):
        return _cfg("lightgcn", epochs=train.pop("epochs", 1), batch=400, data={"path": "synthetic:tiny"},
                    dist={"address": "none", "workers": 2}, train=train)

    run = tmp_path / "run"
    commands.train(cfg(), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="train.lr"):
        commands.train(cfg(epochs=2, lr=0.5), run, resume=True)
    assert (run / "config.yaml").read_text() == before
    assert commands.train(cfg(epochs=2), run, resume=True)["epochs"] == 2
    assert "epochs: 2" in (run / "config.yaml").read_text()  # an accepted resume records its settings


def _user_error(rank: int, world: int) -> None:
    from tru_dist.errors import ConfigError

    raise ConfigError(f"rank {rank} of {world}: bad setting; fix it")


def test_a_user_error_on_the_workers_reaches_the_caller_as_itself():
    """A one-line error raised on every worker is re-raised as is (the CLI prints it and exits 2),
    not as a ProcessRaisedException with the child's traceback."""
    from tru_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="rank 0 of 2: bad setting"):
        spawn_local(_user_error, 2)


def _one_user_probe(rank: int, world: int, data, model_name: str) -> dict:
    """reverse_bpr after deleting one whole user: at W = 2 only one rank holds that user."""
    from tru_dist.data.regimes import user_request_table
    from tru_dist.data.requests import resolve_requests
    from tru_dist.unlearn.base import get_method

    cfg = _cfg(model_name, epochs=1, batch=400, unlearn={"epochs": 1, "batch_size": 64})
    shard = load_shard(cfg, data)
    model = build_shard_model(cfg, shard)
    user = int(shard.data.users[shard.data.labels == 0].max())  # the last user: rank 1's at W = 2
    forget = resolve_requests(shard.data, user_request_table(np.array([user]), "test"), regime="users")
    res = get_method("reverse_bpr").unlearn(model, build_deletion(shard.data, shard.graph, forget), cfg)
    return {"rank": rank, "state": _state(res.model), "steps": res.stats["steps"], "user": user,
            "user_range": shard.book.user_range(rank) if world > 1 else (0, data.n_users)}


def test_a_one_user_deletion_held_by_one_rank_unlearns_at_w2_as_at_w1(tiny_data):
    """The reset user's snapshot is a collective forward: the rank without that user must join
    it (it used to return early — gloo aborted on LightGCN, hung to its timeout on MGCN)."""
    single = _one_user_probe(0, 1, tiny_data, "lightgcn")
    ranks = spawn_local(_one_user_probe, 2, (tiny_data, "lightgcn"))
    assert single["steps"] > 0 and all(r["steps"] == single["steps"] for r in ranks)
    lo, hi = ranks[1]["user_range"]
    assert lo <= ranks[1]["user"] == single["user"] < hi  # the deleted user lives on rank 1 only
    _check_state("one_user_reverse_bpr", single, ranks, "state")


def _tru_at_w1_and_w2(tmp_path, model: str, data: str, regime: str, overrides: list[str],
                      model_overrides: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Train ``model`` on ``data`` (3 epochs, dim 16), unlearn a seeded 5% ``regime`` request with
    TRU at W = 1 and W = 2 under ``overrides``; check both ran the same gate trajectory and
    metrics (:func:`_check_values`); return the two runs' decisions."""
    from tru_dist.data.regimes import select_forget
    from tru_dist.data.requests import write_requests
    from tru_dist.data.source import open_data
    from tru_dist.distributed import commands

    cfg = build_config(model=model, data=data, overrides=[
        "train.epochs=3", "model.dim=16", *model_overrides, "dist.address=none", "dist.workers=1"])
    run = tmp_path / "run"
    commands.train(cfg, run)
    requests = tmp_path / "req.csv"
    write_requests(select_forget(open_data(data), regime, 0.05, 0, "random"), requests)
    out = {w: commands.unlearn(run, requests, tmp_path / f"u{w}", method="tru",
                               overrides=[f"dist.workers={w}", "dist.address=none", *overrides])
           for w in (1, 2)}
    d1, d2 = out[1]["decisions"], out[2]["decisions"]
    assert out[2]["world_size"] == 2 and d1["steps"] > 0
    gaps = {w: [g["calibration_gap"] for g in d["gate"]] for w, d in ((1, d1), (2, d2))}
    assert gaps[2] == pytest.approx(gaps[1])
    for key in ("test", "forget"):
        _check_values(f"{model}.{regime}.{key}", out[2][key], out[1][key])
    return d1, d2


_MIGGT_SMALL = ("model.feat_hidden=32",)


def test_miggt_tru_at_w2_equals_w1_with_its_encoders_frozen(tmp_path):
    """MIG-GT's TRU default moves only ID rows, so its frozen encoders' views are computed once
    per update (``Backbone.constant_branches``) — an all-gather inside the reused computation at
    W = 2. Every rank must hit and miss alike: the same gate trajectory, decisions and metrics
    at W = 1 and W = 2 (a rank that skipped the gather alone would hang or diverge)."""
    d1, d2 = _tru_at_w1_and_w2(tmp_path, "miggt", "synthetic:tiny", "interactions", [], _MIGGT_SMALL)
    assert d1["isolation"]["selected_groups"] == d2["isolation"]["selected_groups"] == ["item_emb"]


def test_miggt_items_deletion_content_neighbours_at_w2_equal_w1(tmp_path):
    """The content-neighbour cold-item reference (``gate.cold_reference: neighbours``) reads the item
    features, which each rank holds a slice of: the cold items' nearest retained items are
    merged over ranks, so an items deletion takes the same gate trajectory and metrics at W = 2
    as at W = 1 (a rank that looked only at its own slice would pick other neighbours)."""
    d1, d2 = _tru_at_w1_and_w2(tmp_path, "miggt", "synthetic:tiny", "items",
                               ["unlearn.gate.cold_reference=neighbours"], _MIGGT_SMALL)
    assert d1["gate_reference"]["cold_neighbours"] == d2["gate_reference"]["cold_neighbours"] == 5
    assert d1["gate_reference"]["cold_item_share"] > 0


def test_miggt_items_deletion_with_cold_items_users_frozen_at_w2_equals_w1(tmp_path):
    """``isolation.cold_item_user_rows: false`` reads a global mask (the items retained pairs
    still use) sliced to each rank's users: on an items deletion every deleted pair's user is
    frozen at W = 2 as at W = 1 (no user row free, the item rows alone move), with the same gate
    trajectory and metrics (a rank that judged coldness from its own pairs alone would free
    users the other rank freezes)."""
    rule = ["unlearn.isolation.budget=1.0", "unlearn.isolation.cold_item_user_rows=false"]
    for d in _tru_at_w1_and_w2(tmp_path, "miggt", "synthetic:tiny", "items", rule, _MIGGT_SMALL):
        assert set(d["isolation"]["selected_groups"]) == {"user_emb", "item_emb"}
        assert d["isolation"]["rows_users"] == 0 and d["isolation"]["rows_items"] > 0
        assert d["isolation"]["movable_groups"] == ["item_emb"]


def _never_trained_folder(data, tmp_path) -> str:
    """``never_trained_data`` written in MMRec layout (Ray workers read it from disk)."""
    from tru_dist.data.mmrec import write_mmrec

    folder = tmp_path / "data"
    write_mmrec(data, folder, name="cold")
    return str(folder)


def test_never_trained_items_reference_at_w2_equals_w1(tmp_path, never_trained_data):
    """``gate.untrained_items_min``: the (user, never-trained item) sample is drawn globally and
    each rank ranks the pairs of its own users, gathered: on an items deletion over a catalogue
    with 15 never-trained items the reference, the gate trajectory and the metrics at W = 2 are
    W = 1's (a rank that sampled on its own would match other targets)."""
    rule = ["unlearn.gate.untrained_items_min=10"]
    folder = _never_trained_folder(never_trained_data, tmp_path)
    d1, d2 = _tru_at_w1_and_w2(tmp_path, "mgcn", folder, "items", rule)
    assert d1["gate_reference"]["untrained_items"] == d2["gate_reference"]["untrained_items"] >= 15


def test_negative_row_reference_at_w2_equals_w1(tmp_path, never_trained_data):
    """``gate.cold_reference: negative`` reads the mean user row, which each rank holds a slice of
    (summed over ranks): on an items deletion over a catalogue with never-trained items the
    negative row's norm, the gate trajectory and the metrics at W = 2 are W = 1's (a rank that
    averaged its own users alone would point the deleted items elsewhere)."""
    rule = ["unlearn.gate.cold_reference=negative"]
    folder = _never_trained_folder(never_trained_data, tmp_path)
    d1, d2 = _tru_at_w1_and_w2(tmp_path, "mgcn", folder, "items", rule)
    norms = [d["gate_reference"]["negative_row_norm"] for d in (d1, d2)]
    assert norms[0] == pytest.approx(norms[1]) and norms[0] > 0


def test_cold_pairs_on_one_rank_only_take_the_cold_reference_at_w2_as_at_w1(tmp_path, tiny_data):
    """The cold reference (``cold_percentiles``: a propagation, collective) is entered on every rank
    when any rank holds a cold pair. Decided on each rank's own pairs, the rank without one went
    on to the next gather while the other propagated: a hang to the 300 s group timeout. Data:
    one item's train pairs kept only for rank 1's users; the request deletes all of them (cold,
    on rank 1 alone) and a few of rank 0's pairs of items that stay in use."""
    from dataclasses import replace

    import pandas as pd

    from tru_dist.data.dataset import TEST, TRAIN
    from tru_dist.data.mmrec import write_mmrec
    from tru_dist.data.requests import write_requests
    from tru_dist.distributed import commands

    half = tiny_data.n_users // 2  # rank 1 holds users [half, n) at W = 2 (contiguous ranges)
    train = tiny_data.labels == TRAIN
    popular = np.bincount(tiny_data.items[train & (tiny_data.users >= half)], minlength=tiny_data.n_items)
    item = int(np.argmax(popular))
    labels = tiny_data.labels.copy()
    labels[train & (tiny_data.items == item) & (tiny_data.users < half)] = TEST
    data = replace(tiny_data, labels=labels)
    folder = tmp_path / "data"
    write_mmrec(data, folder, name="onerank")
    train = data.labels == TRAIN
    cold = np.flatnonzero(train & (data.items == item))
    counts = np.bincount(data.items[train], minlength=data.n_items)
    warm = np.flatnonzero(train & (data.users < half) & (counts[data.items] > 3))[:4]
    rows = np.concatenate([cold, warm])
    table = pd.DataFrame({"request_id": [f"r{k}" for k in range(len(rows))], "user_id": data.users[rows],
                          "item_id": data.items[rows], "reason": "test"})
    requests = tmp_path / "req.csv"
    write_requests(table, requests)
    cfg = build_config(model="lightgcn", data=str(folder), overrides=[
        "train.epochs=3", "model.dim=16", "dist.address=none", "dist.workers=1"])
    commands.train(cfg, tmp_path / "run")
    out = {w: commands.unlearn(tmp_path / "run", requests, tmp_path / f"u{w}", method="tru",
                               overrides=[f"dist.workers={w}", "dist.address=none"]) for w in (1, 2)}
    d1, d2 = out[1]["decisions"], out[2]["decisions"]
    assert out[2]["world_size"] == 2 and d1["gate_target"] == "calibrated"
    share = len(cold) / len(rows)
    assert d1["gate_reference"]["cold_item_share"] == d2["gate_reference"]["cold_item_share"] == share
    gaps = {w: [g["calibration_gap"] for g in d["gate"]] for w, d in ((1, d1), (2, d2))}
    assert gaps[2] == pytest.approx(gaps[1])
    for key in ("test", "forget"):
        _check_values(f"one-rank-cold.{key}", out[2][key], out[1][key])
