"""``tru-dist bench scale``: unlearning whose cost follows the deletion, on a graph too large to
propagate in full — one JSON with the numbers.

One call, in this order (every stage timed, the process's peak RSS read at the end):

1. *Data*: the scale store of ``tru-dist data synth --interactions`` (users × items ×
   interactions, features ``--modalities`` in float16), written streaming into the work folder
   or reused from it when it is already there (``data_cached``); or ``--data DIR`` (any dataset
   the CLI opens, e.g. the Amazon Baby graph, with ``--synthetic-features`` for its missing
   modalities) — the same bench on a 20k-user graph is what "cost follows the deletion" is
   measured against.
2. *Graph*: the normalised user–item CSR (and MGCN's item–item kNN graphs, cached on disk in the
   work folder: they depend on the features only).
3. *Sampled training*: ``--train-steps`` BPR steps with ``train.propagation: local``,
   ``train.fanout`` F (:mod:`tru_dist.graph.blocks`) and ``train.optimizer: row_sparse_adam``
   (:mod:`tru_dist.train.optim`: only the touched embedding rows are stepped; dense Adam over all
   1M rows was most of a step — ``--train.optimizer=adam`` measures it), after one untimed
   warm-up step. Reported:
   ``seconds_per_1000_steps``, ``projected_epoch_seconds`` = seconds per step × steps per epoch
   (⌈train pairs / batch⌉), and ``retrain_projected_seconds`` = ``projected_epoch_seconds`` ×
   ``--retrain-epochs`` — what Retrain would cost at this step time (a projection, stated as
   such: the model is not trained to convergence here, so the unlearning below runs on a
   partly trained model; its *cost*, not its quality, is the measurement).
4. *Deletion*: ``--delete-users`` users drawn with ``--seed`` (which also seeds the generated
   data, training and the method) among users with a train pair;
   the deletion step (:func:`tru_dist.unlearn.deletion.build_deletion`) and the method
   (``--method``, default TRU with its packaged defaults and ``unlearn.propagation: local``)
   — ``unlearn_seconds`` is the end-to-end time a user waits for (the fair benchmark's
   ``seconds``: deletion step + method), with the method's steps and the forget-pair metrics
   before and after. The deletion is built ``in_place`` — as a service answering a stream of
   requests would: the graph's arrays are overwritten, not copied, and a method that takes no
   step resets the deleted users' rows in the served model itself — and D_r's interaction table
   is left pending (:class:`~tru_dist.data.dataset.PendingDataset`) until the forget metrics
   read it; copying it out is reported as ``deferred_seconds.data_after``, outside
   ``unlearn_seconds`` because serving the unlearned model does not need it. The user → rows
   index the requests are resolved with and the split counts are built once per loaded dataset
   (``index_seconds``, also outside).
5. *A stream*: ``--stream-requests`` R further users (default 20), one single-user request
   each, applied one after another in place from the state the previous one left
   (:func:`stream_requests`): ``stream.unlearn_seconds`` {p50, p95, max} per request (deletion
   step + method) and ``stream.resolve_seconds``. An in-place deletion writes only the deleted
   user's row (its items' columns keep their stored values; the per-item scale of
   :mod:`tru_dist.graph.adjacency` carries their new degrees), so one request costs with the
   user's degree, not with its items' degrees or the graph; the stream's median and p95, not
   one draw, are what "cost follows the deletion" compares between graphs.

``rss_gb_after`` is the resident memory after each stage (data, graph and model, training,
unlearning, the forget metrics), to set against the planner's breakdown. ``planner_peak_gb``
is :func:`tru_dist.distributed.planner.plan`'s per-worker memory for the propagation used
(``local``: the batch neighbourhood's activations instead of a full-graph forward's);
``planner_full_propagation_gb`` is the same plan with full propagation at ``--workers`` W (the
sharded path's figure, which rules full propagation out at this size).

``--workers W`` > 1: after the driver's own W = 1 steps, the same number of steps runs on W
data-parallel replicas (:mod:`tru_dist.distributed.replica`: local processes over gloo, each mapping
the one saved graph, holding only its users' train pairs and summing gradients row-sparse), so
``replicas.step_time_ratio_over_w1`` is measured side by side in one run; ``seconds_per_1000_steps``
and the projections are then the replicas' figures, and the replicas' parameters are the model
the deletion runs on. The deletion itself stays in the driver process (an in-place deletion edits
one graph); ``planner_peak_gb`` is one replica's plan (it holds what one process does).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist.bench import refuse_flag_overrides, with_synthetic_features
from tru_dist.config import build_config
from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.regimes import user_request_table
from tru_dist.data.requests import resolve_requests
from tru_dist.distributed.planner import local_batch_nodes
from tru_dist.errors import ConfigError
from tru_dist.graph.context import build_rec_graph
from tru_dist.io_utils import atomic_write_json
from tru_dist.models.registry import build_model, model_class
from tru_dist.timing import peak_rss_mb
from tru_dist.train.optim import build_optimizer
from tru_dist.train.sampler import BPRSampler
from tru_dist.train.trainer import train_step
from tru_dist.unlearn.base import get_method
from tru_dist.unlearn.deletion import build_deletion
from tru_dist.unlearn.metrics import forget_metrics

GIB = 1024**3
#: config keys a flag of ``bench scale`` sets (an override of one is refused)
SCALE_FLAGS = {"train.fanout": "--fanout", "unlearn.fanout": "--fanout", "unlearn.seed": "--seed",
               "train.seed": "--seed",
               "unlearn.method": "--method", "model.name": "--model", "data.path": "--data"}
_LOG = logging.getLogger("tru_dist.bench_scale")


def log(msg: str) -> None:
    _LOG.info(msg)


def _store_name(users: int, items: int, interactions: int, modalities: dict[str, int], seed: int) -> str:
    mods = "-".join(f"{m}{w}" for m, w in sorted(modalities.items())) or "none"
    return f"synth-{users}x{items}x{interactions}-{mods}-s{seed}"


def scale_data(work: Path, users: int, items: int, interactions: int, modalities: dict[str, int],
               seed: int) -> tuple[RecDataset, dict[str, Any]]:
    """Open the scale store in ``work`` (writing it first when absent)."""
    from tru_dist.data.source import open_data
    from tru_dist.data.synth_stream import write_synthetic_store

    path = work / _store_name(users, items, interactions, modalities, seed)
    info: dict[str, Any] = {"path": str(path), "data_cached": (path / "META.json").exists()}
    if not info["data_cached"]:
        t0 = time.perf_counter()
        write_synthetic_store(path, users, items, interactions, modalities, seed=seed,
                              created_by="tru-dist bench scale")
        info["generate_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = open_data(path)
    info["load_seconds"] = time.perf_counter() - t0
    return data, info


def rss_gb() -> float:
    """Current resident set size of this process in GiB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return peak_rss_mb() / 1024


def _endless(sampler: BPRSampler, batch_size: int):
    """The sampler's batches, epoch after epoch (a small graph has fewer batches than steps)."""
    while True:
        yield from sampler.epoch(batch_size)


def pick_users(data: RecDataset, n: int, seed: int, then: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct users with at least one train pair, drawn with ``seed`` (sorted), and
    ``then`` further distinct users in the order drawn (empty for ``then = 0``)."""
    train_users = np.unique(data.users[data.labels == TRAIN])
    _check_user_counts(n, then, len(train_users))
    drawn = np.random.default_rng([seed, 31]).choice(train_users, size=n + then, replace=False)
    return np.sort(drawn[:n]), drawn[n:]


def _check_user_counts(n: int, then: int, available: int) -> None:
    """``n`` deleted plus ``then`` streamed users must be distinct users with a train pair."""
    if n < 1 or n + then > available:
        raise ConfigError(f"--delete-users + --stream-requests must lie in 1..{available} (users with "
                          f"a train pair), got {n} + {then}")


def _check_generated(users: int, items: int, interactions: int, modalities: dict[str, int], seed: int,
                     delete_users: int, stream: int) -> None:
    """The generated store's size limits and the users drawn from it, from the arguments alone:
    every user of the store has a train pair, so nothing needs generating to know a count is
    too large (``--delete-users 1000`` of 50 users was refused after the store was written)."""
    from tru_dist.data.synth_stream import DEFAULT_CHUNK_USERS, ROW_GROUP_ROWS, check_synth_args

    check_synth_args(users, items, interactions, modalities, seed, DEFAULT_CHUNK_USERS, ROW_GROUP_ROWS,
                     "float16")
    _check_user_counts(delete_users, stream, users)


def stream_requests(model, data, graph, users: np.ndarray, method: str, cfg) -> dict[str, Any]:
    """One single-user request per user, one after another, each resolved against and applied
    in place to the state the previous one left (:func:`build_deletion` ``in_place``): the
    per-request latency a deletion service answers with. Returns the latencies (resolve,
    deletion step + method) and the steps taken."""
    fn = get_method(method)
    resolve, unlearn, steps = [], [], []
    for u in users:
        t0 = time.perf_counter()
        table = user_request_table(np.array([u]), "bench scale stream")
        forget = resolve_requests(data, table, regime="users")
        resolve.append(time.perf_counter() - t0)
        deletion = build_deletion(data, graph, forget, in_place=True)
        result = fn.unlearn(model, deletion, cfg)
        unlearn.append(float(result.seconds))
        steps.append(int(result.stats.get("steps") or 0))
        model, data, graph = result.model, deletion.after_state, deletion.graph_after

    def summary(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs)
        return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}

    return {"requests": len(users), "unlearn_seconds": summary(unlearn), "resolve_seconds": summary(resolve),
            "steps": int(sum(steps))}


def planner_figures(data: RecDataset, cfg, workers: int, local_nodes: int | None) -> dict[str, float]:
    """Per-worker GiB from the planner: full propagation, and the local one when given."""
    from tru_dist.distributed.planner import plan

    feats = {m: int(f.shape[1]) for m, f in data.features.items()}
    dtype = str(next(iter(data.features.values())).dtype) if data.features else "float32"
    n_train = int((data.labels == TRAIN).sum())
    common = dict(n_users=data.n_users, n_items=data.n_items, n_edges=n_train, feature_dims=feats,
                  dim=cfg.model.dim, n_layers=cfg.model.n_layers, model=cfg.model, world_size=workers,
                  memory_per_worker_gb=cfg.dist.memory_per_worker_gb,
                  feature_dtype=dtype if dtype in ("float16", "float32") else "float32",
                  n_interactions=len(data.users), batch_size=cfg.train.batch_size, check=False)
    full = plan(**common)
    out = {"planner_full_propagation_gb": full.total_bytes / GIB,
           "planner_full_breakdown_gb": {k: v / GIB for k, v in full.memory_bytes.items()}}
    if local_nodes is not None:  # a data-parallel replica holds what one process does
        local = plan(**{**common, "world_size": 1}, local_nodes=local_nodes)
        out["planner_peak_gb"] = local.total_bytes / GIB
        out["planner_local_breakdown_gb"] = {k: v / GIB for k, v in local.memory_bytes.items()}
    return out


def _replica_bytes_bound(net, cfg, graph, workers: int) -> int:
    """Upper bound on one step's collective payload per rank: every node of the batch neighbourhood
    (:func:`~tru_dist.distributed.planner.local_batch_nodes`, at most all rows) as a float32 table
    row, its int64 row id from each of the W ranks, and the dense parameters."""
    tables = {id(p) for p, _ in net.row_tables().values()}
    dense = sum(p.numel() for p in net.parameters() if id(p) not in tables)
    nodes = min(local_batch_nodes(cfg.model, cfg.train.batch_size, cfg.train.fanout),
                graph.n_users + graph.n_items)
    return 4 * (nodes * cfg.model.dim + dense) + 8 * nodes * workers


def _train_replicas(report: dict[str, Any], net, graph, dataset: RecDataset, cfg, workers: int, steps: int,
                    fanout: int, work: Path, w1_per_step: float) -> float:
    """W data-parallel replicas (:mod:`tru_dist.distributed.replica`) for ``steps`` steps, timed side
    by side with the driver's own W = 1 steps; their parameters replace ``net``'s. Returns the
    replicas' seconds per step."""
    from tru_dist.distributed.replica import train_replicas

    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // workers))
    log(f"bench scale: {steps} training steps on {workers} data-parallel replicas ({threads} thread(s) each)")
    run = train_replicas(graph, *dataset.train_pairs, cfg, world_size=workers, steps=steps, fanout=fanout,
                         work_dir=work, threads_per_rank=threads)
    net.load_state_dict(torch.load(run["state_file"], weights_only=True))
    Path(run["state_file"]).unlink()
    ranks = run["ranks"]
    report["replicas"] = {
        "threads_per_rank": threads, "w1_threads": torch.get_num_threads(),
        "w1_seconds_per_1000_steps": w1_per_step * 1000,
        "seconds_per_1000_steps": run["seconds_per_step"] * 1000,
        "step_time_ratio_over_w1": run["seconds_per_step"] / w1_per_step,
        "bytes_per_step_measured": run["bytes_per_step"],
        "bytes_per_step_dense_equivalent": 4 * sum(p.numel() for p in net.parameters()),
        "bytes_per_step_planner_bound": _replica_bytes_bound(net, cfg, graph, workers),
        "share_seconds": run["share_seconds"], "group_wall_seconds": run["group_wall_seconds"],
        "peak_rss_gb_per_rank": [r["peak_rss_gb"] for r in ranks],
        "pairs_per_rank": [r["pairs"] for r in ranks],
        "identical_replicas": len({r["parameter_digest"] for r in ranks}) == 1,
        "note": ("each rank maps the one saved graph (shared page-cache pages, counted in every rank's "
                 "RSS) and holds only its users' train pairs; the driver process keeps data, graph and "
                 "model for the deletion, which runs in one process"),
    }
    return run["seconds_per_step"]


def bench_scale(
    *,
    users: int = 1_000_000,
    items: int = 100_000,
    interactions: int = 20_000_000,
    modalities: dict[str, int] | None = None,
    data: str | None = None,
    synthetic_features: str | None = None,
    delete_users: int = 1000,
    stream: int = 20,
    model: str = "mgcn",
    workers: int = 1,
    method: str = "tru",
    fanout: int = 10,
    train_steps: int = 100,
    retrain_epochs: int = 50,
    seed: int = 0,
    work_dir: str | Path = "runs/bench-scale",
    out_json: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the scale bench (module docstring); write ``out_json`` if given and return the report.

    Every argument that can be checked without the data is checked before ``work_dir`` is made
    or the store generated (the method, the overrides, the store's sizes, the users to delete);
    an override of a key an argument sets (``unlearn.fanout``: ``fanout``) is refused."""
    from tru_dist.unlearn.run import method_name

    refuse_flag_overrides("scale", overrides, SCALE_FLAGS)
    if train_steps < 1 or retrain_epochs < 1 or fanout < 0 or workers < 1:
        raise ConfigError("--train-steps, --retrain-epochs and --workers must be >= 1 and --fanout >= 0")
    modalities = dict(modalities if modalities is not None else {"image": 512, "text": 384})
    cfg = build_config(model=model, overrides=[
        "train.propagation=local", f"train.fanout={fanout}", "train.optimizer=row_sparse_adam",
        "unlearn.propagation=local",
        f"unlearn.fanout={fanout}", f"train.seed={seed}", f"unlearn.seed={seed}", *(overrides or [])])
    method = method_name(method, cfg)  # unknown method / sisa: one line before any work
    if data is None:
        _check_generated(users, items, interactions, modalities, seed, delete_users, stream)
    work = Path(work_dir)
    report: dict[str, Any] = {"model": model, "method": method, "workers": workers, "fanout": fanout,
                              "optimizer": cfg.train.optimizer,
                              "device": "cpu",  # the bench measures the CPU path (graph and model on CPU)
                              "torch_threads": torch.get_num_threads(), "seed": seed}
    t_start = time.perf_counter()
    if data is None:
        work.mkdir(parents=True, exist_ok=True)
        dataset, info = scale_data(work, users, items, interactions, modalities, seed)
    else:
        from tru_dist.bench import load_for_bench

        t0 = time.perf_counter()
        dataset = with_synthetic_features(load_for_bench(data), synthetic_features, seed=seed)
        info = {"path": str(data), "load_seconds": time.perf_counter() - t0}
    report["data"] = {**info, **dataset.summary()}
    t0 = time.perf_counter()
    _ = dataset.user_row_index, dataset.split_counts  # once per loaded dataset (O(N)); then O(rows asked)
    report["index_seconds"] = time.perf_counter() - t0
    # a bad --delete-users fails before any work
    chosen, streamed = pick_users(dataset, delete_users, seed, then=stream)
    work.mkdir(parents=True, exist_ok=True)  # the kNN cache and the replicas' files
    stages = report["rss_gb_after"] = {"data": rss_gb()}
    log(f"bench scale: {dataset.n_users} users, {dataset.n_items} items, {len(dataset.users)} interactions")

    batch_nodes = local_batch_nodes(cfg.model, cfg.train.batch_size, fanout)
    report.update(planner_figures(dataset, cfg, workers, batch_nodes if fanout > 0 else None))
    t0 = time.perf_counter()
    uses_knn = model_class(cfg.model.name).uses_knn
    graph = build_rec_graph(dataset, knn_k=cfg.model.knn_k, with_knn=uses_knn,
                            knn_cache_dir=str(work / "knn-cache") if uses_knn else None)
    report["graph_build_seconds"] = time.perf_counter() - t0
    net = build_model(cfg.model, graph, seed=cfg.train.seed)
    stages["graph_and_model"] = rss_gb()
    report["n_parameters"] = int(sum(p.numel() for p in net.parameters()))

    # 3. sampled training
    tc = cfg.train
    sampler = BPRSampler(*dataset.train_pairs, dataset.n_users, dataset.n_items, seed=tc.seed)
    optimizer = build_optimizer(net, tc)
    replicated = net.replicated_parameters()
    gen = torch.Generator().manual_seed(tc.seed)
    batches = _endless(sampler, tc.batch_size)
    net.train()
    train_step(net, graph, next(batches), optimizer, replicated, local=True, fanout=fanout, generator=gen,
               deterministic=tc.deterministic)
    t0 = time.perf_counter()
    for step in range(train_steps):
        train_step(net, graph, next(batches), optimizer, replicated, local=True, fanout=fanout, generator=gen,
               deterministic=tc.deterministic)
        if (step + 1) % max(1, train_steps // 5) == 0:
            log(f"bench scale: training step {step + 1}/{train_steps}")
    per_step = (time.perf_counter() - t0) / train_steps
    if workers > 1:
        del optimizer  # the replicas hold their own; the driver keeps graph, data and model
        per_step = _train_replicas(report, net, graph, dataset, cfg, workers, train_steps, fanout, work,
                                   w1_per_step=per_step)
    steps_per_epoch = math.ceil(len(dataset.train_pairs[0]) / tc.batch_size)
    report.update(seconds_per_1000_steps=per_step * 1000, steps_per_epoch=steps_per_epoch,
                  projected_epoch_seconds=per_step * steps_per_epoch, retrain_epochs=retrain_epochs,
                  retrain_projected_seconds=per_step * steps_per_epoch * retrain_epochs,
                  train_steps=train_steps)
    stages["training"] = rss_gb()

    # 4. the deletion
    t0 = time.perf_counter()
    forget = resolve_requests(dataset, user_request_table(chosen, "bench scale"), regime="users")
    resolve_seconds = time.perf_counter() - t0
    net.eval()
    original = copy.deepcopy(net)  # for the "before" metrics: the in-place deletion may reset net itself
    deletion = build_deletion(dataset, graph, forget, in_place=True)
    result = get_method(method).unlearn(net, deletion, cfg)
    report["unlearn_seconds"] = result.seconds
    stages["unlearning"] = rss_gb()
    stats = result.stats
    report["unlearn"] = {
        "deletion_seconds": deletion.seconds, "method_seconds": stats.get("method_seconds"),
        "resolve_seconds": resolve_seconds,  # validating the requests (not in unlearn_seconds)
        "n_forget_pairs": len(forget), "n_deleted_users": int(len(chosen)),
        "steps": stats.get("steps"), "epochs_run": stats.get("epochs_run"),
        "propagation": stats.get("propagation"), "propagation_note": stats.get("propagation_note"),
        "converged_epoch": stats.get("converged_epoch"),
    }
    with torch.no_grad():
        before = forget_metrics(original, deletion.graph_after, deletion.data_after, forget, ks=(20,))
        after = forget_metrics(result.model, deletion.graph_after, deletion.data_after, forget, ks=(20,))
    report["forget"] = {"before": before, "after": after}
    report["deferred_seconds"] = {"data_after": getattr(deletion.after_state, "materialise_seconds", 0.0)}
    stages["forget_metrics"] = rss_gb()
    del original
    if len(streamed):
        log(f"bench scale: {len(streamed)} single-user requests, one after another")
        report["stream"] = stream_requests(result.model, deletion.after_state, deletion.graph_after, streamed,
                                           method, cfg)
        stages["stream"] = rss_gb()
    report["peak_rss_gb"] = peak_rss_mb() / 1024
    report["total_seconds"] = time.perf_counter() - t_start
    if out_json is not None:
        atomic_write_json(out_json, report)
    return report
