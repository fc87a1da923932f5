"""``tru-dist bench train``: time training epochs and full evaluations on one dataset.

Reports seconds per training epoch (full propagation per batch, as the trainer does),
seconds per full-ranking evaluation of valid and of test (median and min of
``eval_repeats`` passes after one warm-up), peak memory (process RSS from ``resource.getrusage`` and, on
CUDA, ``torch.cuda.max_memory_allocated``), sizes and the torch thread count.

Interaction-only datasets (e.g. the shared Amazon Baby graph) get random item features
of the requested shapes (``"image:4096,text:384"`` = MMRec's) so multimodal models can be
timed; such numbers are about speed, never about quality.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist.config import Config, deep_merge
from tru_dist.config import refuse_flag_overrides as refuse_config_flag_overrides
from tru_dist.data.dataset import RecDataset
from tru_dist.data.synth_stream import parse_modalities
from tru_dist.device import resolve_device
from tru_dist.errors import ConfigError, DataError
from tru_dist.graph.context import build_rec_graph
from tru_dist.io_utils import atomic_write_json
from tru_dist.models.registry import build_model, model_class
from tru_dist.timing import peak_rss_mb
from tru_dist.train.evaluate import evaluate
from tru_dist.train.trainer import train_model


def parse_feature_spec(spec: str | None) -> dict[str, int]:
    """``"image:4096,text:384"`` -> ``{"image": 4096, "text": 384}``; None, "" or "none" -> {}.

    Parsed as ``data synth --modalities`` is (:func:`~tru_dist.data.synth_stream.parse_modalities`),
    so a repeated name (``x:4,x:8``: the last one silently won) or an empty one (``:8``: a
    modality named '') is a one-line ConfigError naming ``--synthetic-features``.
    """
    if spec is None or not str(spec).strip():
        return {}
    try:
        return parse_modalities(spec)
    except DataError as exc:
        raise ConfigError(f"--synthetic-features: {exc}") from None


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_feature_bytes(n_items: int, features: dict[str, int], spec: str | None) -> None:
    """Refuse synthetic features that cannot fit in memory (float32, ``n_items`` rows per
    modality), before numpy tries: ``x:999999999999`` was a MemoryError traceback asking for
    146 TiB. The limit is the machine's physical memory."""
    need = 4 * n_items * sum(features.values())
    limit = memory_bytes()
    if limit is not None and need > limit:
        raise ConfigError(f"--synthetic-features {spec}: {n_items} items × {sum(features.values())} "
                          f"float32 columns need {need / 2**30:,.1f} GiB, more than this machine's "
                          f"{limit / 2**30:,.1f} GiB of memory; ask for narrower features")


def refuse_flag_overrides(command: str, overrides: list[str] | dict[str, Any] | None,
                          owned: dict[str, str]) -> None:
    """:func:`tru_dist.config.refuse_flag_overrides` for ``bench command`` (its flags always set
    their keys: every one has a default)."""
    refuse_config_flag_overrides(f"bench {command}", overrides, owned)


def load_for_bench(source: str | Path | RecDataset) -> RecDataset:
    if isinstance(source, RecDataset):
        return source
    from tru_dist.data.source import open_data

    return open_data(source)


def with_synthetic_features(data: RecDataset, spec: str | None, seed: int = 0) -> RecDataset:
    """Add seeded N(0, 1) float32 features for the requested modalities the data lacks."""
    wanted = parse_feature_spec(spec)
    missing = {m: w for m, w in wanted.items() if m not in data.features}
    if not missing:
        return data
    check_feature_bytes(data.n_items, missing, spec)
    rng = np.random.default_rng(seed)
    feats = dict(data.features)
    try:
        for m, w in sorted(missing.items()):
            feats[m] = rng.standard_normal((data.n_items, w), dtype=np.float32)
    except MemoryError:
        raise ConfigError(f"--synthetic-features {spec}: {data.n_items} items × {sum(missing.values())} "
                          "float32 columns do not fit in the free memory; ask for narrower features"
                          ) from None
    return data.with_features(feats)


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall seconds of ``repeats`` calls after one warm-up. The min is the
    better estimate of capability on a shared machine; the median of typical cost."""
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bench_train(
    data_path_or_dataset: str | Path | RecDataset,
    model_name: str,
    synthetic_features: str | None = "image:4096,text:384",
    epochs: int = 3,
    out_json: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    eval_repeats: int = 3,
) -> dict[str, Any]:
    """Train ``epochs`` epochs of ``model_name`` and time it; write ``out_json`` if given.

    ``overrides`` is a nested config dict layered over the defaults (e.g.
    ``{"train": {"device": "cuda"}}``); one of a key that an argument sets (``train.epochs``:
    ``epochs``) is refused.
    """
    refuse_flag_overrides("train", overrides, {"train.epochs": "--epochs", "model.name": "--model",
                                               "data.path": "--data"})
    data = with_synthetic_features(load_for_bench(data_path_or_dataset), synthetic_features)
    tree: dict[str, Any] = {"model": {"name": model_name},
                            "train": {"epochs": epochs, "eval_every": max(1, epochs), "progress": "off"}}
    cfg = Config.from_dict(deep_merge(tree, overrides or {}))
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t0 = time.perf_counter()
    graph = build_rec_graph(data, knn_k=cfg.model.knn_k, device=device,
                            with_knn=model_class(cfg.model.name).uses_knn)
    graph_seconds = time.perf_counter() - t0
    model = build_model(cfg.model, graph, seed=cfg.train.seed).to(device)
    result = train_model(model, graph, data, cfg)

    def run_eval(split: str):
        out = evaluate(model, graph, data, split, ks=cfg.eval.ks, batch_users=cfg.eval.batch_users)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    with torch.no_grad():
        t0 = time.perf_counter()
        model.eval()
        model.embed(graph)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        embed_seconds = time.perf_counter() - t0
    n_users_test = run_eval("test")["n_users"]
    valid_med, valid_min = _time(lambda: run_eval("valid"), eval_repeats)
    test_med, test_min = _time(lambda: run_eval("test"), eval_repeats)
    report: dict[str, Any] = {
        "dataset": data.meta.get("name", str(data_path_or_dataset)),
        "model": model_name,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "deterministic": cfg.train.deterministic and device.type == "cpu",  # the kernels that ran
        "epochs": result.epochs,
        "seconds_per_epoch": result.seconds_per_epoch,
        "epoch_seconds": [r["seconds"] for r in result.history if "seconds" in r],
        "batches_per_epoch": -(-int(len(data.train_pairs[0])) // cfg.train.batch_size),
        "graph_build_seconds": graph_seconds,
        "embed_seconds": embed_seconds,
        "eval_valid_seconds": valid_med,
        "eval_valid_seconds_min": valid_min,
        "eval_test_seconds": test_med,
        "eval_test_seconds_min": test_min,
        "eval_test_users": n_users_test,
        "valid": result.valid,
        "peak_rss_mb": peak_rss_mb(),
        "peak_torch_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "sizes": {**data.summary(), "n_parameters": int(sum(p.numel() for p in model.parameters())),
                  "dim": cfg.model.dim, "n_layers": cfg.model.n_layers, "batch_size": cfg.train.batch_size},
        "synthetic_features": parse_feature_spec(synthetic_features) or None,
    }
    if out_json is not None:
        atomic_write_json(out_json, report)
    return report
