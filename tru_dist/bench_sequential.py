"""``tru-dist bench sequential``: does quality drift over many small unlearning updates?

A deployed service receives deletion requests one user at a time and applies each as it
comes, on top of the model the previous request left. The fair benchmark (``compare``)
measures one batch; this measures R single-user requests applied ONE AT A TIME and asks
whether the chain ends up as close to Retrain as one call on the whole batch would.

Setup. The original is trained on D with the packaged model defaults (``train.epochs`` =
``epochs``; :func:`tru_dist.compare.train_original`). R distinct users with at least two
train interactions are drawn with ``np.random.default_rng(seed)`` (in the order drawn: that
is the order the requests arrive); request k deletes every interaction of user u_k, in every
split (the ``users`` regime: one request per user with an empty ``item_id``, resolved into a
:class:`~tru_dist.data.requests.ForgetSet` by :func:`~tru_dist.data.requests.resolve_requests`).
U = the union of the R requests. Retrain is trained ONCE on D \\ U (same config and seed).

The three ways of applying the same R requests with the same method and config:

* **sequential** — request k is one call of the method on the model request k − 1 left,
  through the deletion step the request ledger builds
  (:func:`tru_dist.unlearn.ledger.apply_plan`): the before-state is D minus every pair
  deleted by requests 1..k−1, the after-state minus request k's pairs too (graph
  renormalised, the user's ID rows reset);
* **batched** — one call on U from the original (what ``compare`` measures);
* **windowed** (``window`` = N > 1) — requests grouped into consecutive windows of N (the last
  one may be shorter), each window one call, chained like the sequential run. N = 1 would be
  the sequential run, so it is not repeated.

Every reported number:

* ``latency_seconds`` — per request: the ``seconds`` of :meth:`tru_dist.unlearn.base.Method.unlearn`,
  i.e. the deletion step (build the before/after data and graph, reset the user) plus the
  method's update, wall clock, CUDA synchronised — what ``compare`` reports as ``seconds`` and
  what a user waits for, minus the ledger's bookkeeping (hashing, receipts, checkpoint
  writes), which is not run here. ``p50``/``p95`` are ``numpy.percentile`` (linear
  interpolation), ``mean``, ``max``, ``total``, ``per_request`` (request order).
  ``windowed.latency_seconds`` is the same per window (``per_window``);
  ``batched_seconds`` the one batched call's.
* ``utility[model]`` — test ``recall@20`` / ``ndcg@20`` over the users of D \\ U (the
  original served with the graph of D, every other model with D \\ U's graph).
* ``forget[model]`` — :func:`tru_dist.unlearn.metrics.forget_metrics` of U's deleted train
  pairs: ``hit@K`` (share still in the user's top K, retained history masked), ``rank_pct``.
* ``agreement[model]`` — :func:`tru_dist.unlearn.metrics.agreement` with Retrain:
  ``jaccard@20`` of the retained test users' top 20, ``forget_rank_ks`` (KS distance of the
  forget-rank distributions), ``forget_rank_spearman``.
* ``retrain_distance[model]`` — :func:`tru_dist.unlearn.metrics.retrain_distance`
  = max(0, 1 − recall@20/recall@20_Retrain) + forget_rank_ks (0 = Retrain; lower is better);
  all of the above through :func:`tru_dist.compare.judge_models`, as ``compare`` computes them.
* ``ratio_sequential_to_batched`` = retrain_distance sequential / batched (the target is
  ≤ ``TARGET_RATIO`` = 1.2; None when batched is 0), ``ratio_windowed_to_batched`` likewise.
* ``drift`` — after requests k = K, 2K, … and R (K = max(1, R // 10)), and at k = 0 (the
  original): the sequential model's test recall@20 / ndcg@20 on D minus requests 1..k (its
  own serving state), and the forget metrics of the pairs of requests 1..k
  (``forget_hit@20`` etc.; None at k = 0). Evaluation is outside the latency.
* ``method_steps`` — the optimiser steps each call of the method took (its ``stats["steps"]``:
  0 for ``noop``, and for a method whose update did nothing — e.g. TRU's gate when the reset
  users' pairs are already on target), per request / per window / for the batched call.
* ``seconds`` — training the original, Retrain (its deletion step included), the batched
  call, the sum of the sequential and windowed latencies, the whole benchmark.
* ``sizes``, ``config`` (the full config used), ``torch_threads``, ``device``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist.bench import load_for_bench, parse_feature_spec, refuse_flag_overrides, with_synthetic_features
from tru_dist.config import build_config
from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.regimes import user_request_table
from tru_dist.data.requests import ForgetSet
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json

log = logging.getLogger("tru_dist.bench_sequential")

#: the issue's target for ratio_sequential_to_batched
TARGET_RATIO = 1.2
#: users need at least this many train interactions to be drawn
MIN_TRAIN_INTERACTIONS = 2
#: config keys a flag of ``bench sequential`` sets (an override of one is refused)
SEQUENTIAL_FLAGS = {"train.epochs": "--epochs", "train.seed": "--seed", "unlearn.seed": "--seed",
                    "unlearn.method": "--method", "model.name": "--model", "data.path": "--data"}

LATENCY_DEFINITION = (
    "seconds of Method.unlearn per request: the shared deletion step (D minus the pairs of every "
    "earlier request, then minus this request's; graph renormalised; the user's ID rows reset) plus "
    "the method's update, wall clock, CUDA-synchronised — compare's `seconds`; the ledger's hashing, "
    "receipts and checkpoint writes are not run or counted")


def eligible_users(data: RecDataset) -> np.ndarray:
    """Users with at least :data:`MIN_TRAIN_INTERACTIONS` train interactions, ascending."""
    degree = np.bincount(data.users[data.labels == TRAIN], minlength=data.n_users)
    return np.flatnonzero(degree >= MIN_TRAIN_INTERACTIONS).astype(np.int64)


def draw_users(data: RecDataset, n: int, seed: int) -> np.ndarray:
    """``n`` distinct eligible users drawn with ``default_rng(seed)``, in the order drawn."""
    pool = eligible_users(data)
    if n < 1:
        raise ConfigError(f"--requests must be at least 1, got {n}")
    if n > len(pool):
        raise ConfigError(f"--requests {n} exceeds the {len(pool)} users with at least "
                          f"{MIN_TRAIN_INTERACTIONS} train interactions; ask for at most {len(pool)}")
    return np.random.default_rng(seed).choice(pool, size=n, replace=False).astype(np.int64)


def forget_of(data: RecDataset, table, rows: slice | list[int]) -> ForgetSet:
    """The ForgetSet of the requests ``table.iloc[rows]`` together, resolved on ``data``."""
    from tru_dist.data.regimes import regime_label
    from tru_dist.data.requests import resolve_requests

    return resolve_requests(data, table.iloc[rows], regime=regime_label("users", "random"))


def apply_in_order(model, data: RecDataset, graph, forgets: list[ForgetSet], method: str, cfg,
                   on_step=None):
    """Apply ``forgets`` one call each, in order, as the request ledger does: call k starts
    from call k − 1's model, and its deletion step (:func:`~tru_dist.unlearn.ledger.apply_plan`)
    removes the pairs of calls 1..k−1 from the before-state. ``on_step(k, result, deletion)``
    after call k (1-based; outside the timing). Returns (final model, per-call seconds, the
    last call's Deletion)."""
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.ledger import DeletionPlan, apply_plan

    fn = get_method(method)
    empty = np.zeros(0, dtype=np.int64)
    earlier_u, earlier_i = [empty], [empty]
    seconds: list[float] = []
    deletion = None
    for k, forget in enumerate(forgets, 1):
        plan = DeletionPlan(forget, earlier=(np.concatenate(earlier_u), np.concatenate(earlier_i)))
        deletion = apply_plan(data, graph, plan, reset=cfg.unlearn.reset_deleted_users)
        result = fn.unlearn(model, deletion, cfg)
        model = result.model
        seconds.append(float(result.seconds))
        earlier_u.append(forget.users)
        earlier_i.append(forget.items)
        if on_step is not None:
            on_step(k, result, deletion)
    return model, seconds, deletion


def latency_summary(seconds: list[float], key: str = "per_request") -> dict[str, Any]:
    arr = np.asarray(seconds, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max()), "mean": float(arr.mean()), "total": float(arr.sum()),
            key: [float(s) for s in arr]}


def drift_steps(n_requests: int) -> list[int]:
    """0, K, 2K, … and R, with K = max(1, R // 10)."""
    k = max(1, n_requests // 10)
    return sorted({0, *range(k, n_requests + 1, k), n_requests})


def _drift_point(model, graph, data_after: RecDataset, forget: ForgetSet | None, k: int, ks) -> dict:
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.unlearn.metrics import forget_metrics

    emb = eval_embeddings(model, graph)
    test = evaluate(model, graph, data_after, "test", ks, emb=emb)
    point: dict[str, Any] = {"requests": k, "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"]}
    fm = forget_metrics(model, graph, data_after, forget, ks, emb=emb) if forget is not None else {}
    for key in ("hit@10", "hit@20", "hit@50", "rank_pct", "n_pairs"):
        point[f"forget_{key}"] = fm.get(key)
    return point


def bench_sequential(
    data: str | Path | RecDataset,
    model: str = "mgcn",
    *,
    requests: int = 100,
    method: str = "tru",
    window: int | None = None,
    epochs: int = 20,
    seed: int = 0,
    synthetic_features: str | None = None,
    overrides: list[str] | None = None,
    out_json: str | Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark of the module docstring; write ``out_json`` (atomically) if given and
    return the report. ``overrides``: ``["unlearn.epochs=5", ...]`` over the model's packaged
    defaults and ``train.epochs = epochs``; one of a key an argument sets (``train.epochs``,
    ``train.seed``, ``unlearn.method``, ...) is refused."""
    from tru_dist.compare import cached_retrain, judge_models, train_original
    from tru_dist.device import resolve_device
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion
    from tru_dist.unlearn.run import method_name

    t_start = time.perf_counter()
    refuse_flag_overrides("sequential", overrides, SEQUENTIAL_FLAGS)
    if requests < 1:
        raise ConfigError(f"--requests must be at least 1, got {requests}")
    if window is not None and window < 1:
        raise ConfigError(f"--window must be at least 1, got {window}")
    named = None if isinstance(data, RecDataset) else str(data)
    cfg = build_config(model=model, data=named, seed=seed,
                       overrides=[f"train.epochs={int(epochs)}", *(overrides or [])])
    name = method_name(method, cfg)  # unknown method / sisa: one-line error before any work
    cfg.unlearn.method = name
    dataset = with_synthetic_features(load_for_bench(data), synthetic_features)
    users = draw_users(dataset, requests, seed)
    table = user_request_table(users, f"bench sequential seed={seed}")
    forgets = [forget_of(dataset, table, [k]) for k in range(requests)]
    forget_all = forget_of(dataset, table, slice(None))
    ks = tuple(sorted({*cfg.eval.ks, 10, 20, 50}))
    log.info(f"bench sequential: {cfg.model.name}, {name}, {requests} single-user requests"
             f"{f', windows of {window}' if window and window > 1 else ''}; training the original "
             f"({cfg.train.epochs} epochs)")

    original, graph, original_seconds, info = train_original(cfg, dataset, None)
    batch = build_deletion(dataset, graph, forget_all, reset=cfg.unlearn.reset_deleted_users)
    log.info(f"original trained in {original_seconds:.2f}s; training Retrain on D minus "
             f"{len(forget_all)} train pairs of {requests} users")
    retrain = cached_retrain(cfg, batch, None)
    log.info(f"Retrain trained in {retrain.seconds:.2f}s; applying the requests one at a time")

    # -- sequential, with the drift curve ---------------------------------------------------------
    marks = set(drift_steps(requests))
    drift = [_drift_point(original, graph, dataset, None, 0, ks)]
    steps: dict[str, Any] = {"sequential": []}

    def on_request(k: int, result, deletion) -> None:
        steps["sequential"].append(result.stats.get("steps"))
        log.info(f"request {k}/{requests} user {users[k - 1]} ({len(forgets[k - 1])} train pairs): "
                 f"{result.seconds:.3f}s")
        if k in marks:
            drift.append(_drift_point(result.model, deletion.graph_after, deletion.data_after,
                                      forget_of(dataset, table, slice(0, k)), k, ks))

    sequential, seq_seconds, _ = apply_in_order(original, dataset, graph, forgets, name, cfg, on_request)

    batched = get_method(name).unlearn(original, batch, cfg)
    steps["batched"] = batched.stats.get("steps")
    log.info(f"batched: one call on all {requests} requests in {batched.seconds:.3f}s")
    models = {"original": original, "retrain": retrain.model, "sequential": sequential,
              "batched": batched.model}

    windowed = None
    if window is not None and window > 1:
        starts = list(range(0, requests, window))
        wforgets = [forget_of(dataset, table, slice(a, a + window)) for a in starts]

        def on_window(k: int, result, deletion) -> None:
            steps.setdefault("windowed", []).append(result.stats.get("steps"))
            log.info(f"window {k}/{len(starts)} ({len(wforgets[k - 1].request_ids)} requests): "
                     f"{result.seconds:.3f}s")

        models["windowed"], win_seconds, _ = apply_in_order(original, dataset, graph, wforgets, name, cfg,
                                                            on_window)
        windowed = {"window": window, "n_windows": len(starts),
                    "latency_seconds": latency_summary(win_seconds, "per_window")}

    judged = judge_models(models, graph, batch.graph_after, batch.data_after, forget_all, ks)
    distance = {n: judged[n]["retrain_distance"] for n in ("sequential", "batched", "windowed")
                if n in judged}

    def ratio(n: str) -> float | None:
        return distance[n] / distance["batched"] if n in distance and distance["batched"] > 0 else None

    report: dict[str, Any] = {
        "benchmark": "sequential",
        "data": named or dataset.meta.get("name", "in-memory"),
        "model": cfg.model.name,
        "method": name,
        "requests": requests,
        "window": window,
        "seed": seed,
        "users": [int(u) for u in users],
        "latency_definition": LATENCY_DEFINITION,
        "latency_seconds": latency_summary(seq_seconds),
        "batched_seconds": float(batched.seconds),
        "retrain_distance": {**distance, "original": judged["original"]["retrain_distance"]},
        "ratio_sequential_to_batched": ratio("sequential"),
        "ratio_windowed_to_batched": ratio("windowed"),
        "target_ratio": TARGET_RATIO,
        "utility": {n: {k: judged[n]["test"][k] for k in ("recall@20", "ndcg@20")} for n in judged},
        "forget": {n: judged[n]["forget"] for n in judged},
        "agreement": {n: judged[n]["agreement"] for n in judged},
        "drift": drift,
        "method_steps": steps,
        "seconds": {
            "train_original": float(original_seconds), "retrain": float(retrain.seconds),
            "batched": float(batched.seconds), "sequential_total": float(sum(seq_seconds)),
            "windowed_total": windowed["latency_seconds"]["total"] if windowed else None,
            "benchmark": time.perf_counter() - t_start,
        },
        "original": {"epochs": info["epochs"], "best_epoch": info["best_epoch"]},
        "retrain": {k: retrain.stats.get(k) for k in ("epochs", "best_epoch")},
        "sizes": {
            **dataset.summary(),
            "eligible_users": int(len(eligible_users(dataset))),
            "forget_users": requests,
            "forget_interactions": int(len(forget_all.users)),
            "forget_train_pairs": len(forget_all),
            "train_pairs_per_request": [len(f) for f in forgets],
            "n_parameters": int(sum(p.numel() for p in original.parameters())),
        },
        "config": cfg.to_dict(),
        "synthetic_features": parse_feature_spec(synthetic_features) or None,
        "torch_threads": torch.get_num_threads(),
        "device": str(resolve_device(cfg.train.device)),
    }
    if windowed is not None:
        report["windowed"] = windowed
    if out_json is not None:
        atomic_write_json(out_json, report)
    return report
