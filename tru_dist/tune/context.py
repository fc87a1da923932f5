"""Everything a trial needs that does not depend on the trial: trained ONCE, in the driver.

(At ``--workers W > 1`` each worker rebuilds its shard of the data and reads the originals,
forget sets and references from the files written here: :mod:`tru_dist.tune.shard_trial`.)

Per regime and seed (``train.seed = unlearn.seed = seed``, as in ``tru-dist compare``):

1. the data (poisoned first for the ``poison`` regime, seeded), the original model trained
   on it — once per (data, seed) and shared by every regime on the same data;
2. the forget set D_f (seeded), D_r's data and graph (affected degrees renormalised);
3. Retrain (from scratch on D_r) and reverse_bpr (MMRecUn, the untuned baseline: the
   base config's ``unlearn.*``), and VALID metrics of both and of the original on D_r's
   graph (:func:`tru_dist.tune.objective.valid_point`) — they give the trade-off score's
   :class:`~tru_dist.tune.objective.Reference`.

Each (regime, seed) is saved as ``<sweep>/context/<regime>/seed<k>.pt`` (parameter state
dicts, the forget set, the reference, timings; ``torch.load(weights_only=True)``-safe) and
each original as ``<sweep>/context/originals/<data>-seed<k>.pt``, so a resumed sweep and
the report rebuild the same objects without training anything: data and graphs are
rebuilt deterministically from the data spec, models from their saved parameters. An
interrupted preparation resumes file by file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.data.requests import ForgetSet
from tru_dist.device import resolve_device
from tru_dist.errors import ConfigError
from tru_dist.graph.context import RecGraph, build_rec_graph
from tru_dist.io_utils import atomic_torch_save
from tru_dist.models.registry import build_model, model_class
from tru_dist.tune.objective import Reference, valid_point
from tru_dist.tune.spec import RegimeSpec, SweepSpec
from tru_dist.unlearn.deletion import Deletion, build_deletion

BASELINES = ("original", "retrain", "reverse_bpr")


def seeded(cfg: Config, seed: int) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    cfg.unlearn.seed = seed
    return cfg


@dataclass
class SeedContext:
    """One regime × seed: what every trial starts from and is judged against.

    ``models`` holds the original always; Retrain and reverse_bpr only when loaded for the
    report (``with_baselines=True``) — trials never need them, only their ``ref``.
    """

    regime_id: str
    seed: int
    cfg: Config
    deletion: Deletion
    ref: Reference
    models: dict[str, Any]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def original(self):
        return self.models["original"]

    @property
    def data_before(self) -> RecDataset:
        return self.deletion.data_before

    @property
    def graph_before(self) -> RecGraph:
        return self.deletion.graph_before

    @property
    def data_after(self) -> RecDataset:
        return self.deletion.data_after

    @property
    def graph_after(self) -> RecGraph:
        return self.deletion.graph_after

    @property
    def forget(self) -> ForgetSet:
        return self.deletion.forget

    def for_trials(self) -> SeedContext:
        """A copy without what trials never touch (the baselines' models)."""
        return SeedContext(self.regime_id, self.seed, self.cfg, self.deletion, self.ref,
                           {"original": self.original}, self.baselines)


def context_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "context"


def _data_key(regime: RegimeSpec) -> str:
    return f"poison{regime.fraction:g}" if regime.regime == "poison" else "clean"


def data_key(regime: RegimeSpec, seed: int) -> tuple[str, int]:
    """Which (regime, seed) pairs share their data: clean data is one for every seed, the
    poisoned data is drawn per seed."""
    return _data_key(regime), (seed if regime.regime == "poison" else -1)


def _forget_blob(forget: ForgetSet) -> dict[str, Any]:
    return {"users": torch.from_numpy(np.asarray(forget.users, np.int64)),
            "items": torch.from_numpy(np.asarray(forget.items, np.int64)),
            "labels": torch.from_numpy(np.asarray(forget.labels, np.int8)),
            "removed_users": torch.from_numpy(np.asarray(forget.removed_users, np.int64)),
            "request_ids": list(forget.request_ids), "regime": forget.regime}


def _forget_from(blob: dict[str, Any]) -> ForgetSet:
    return ForgetSet(users=blob["users"].numpy(), items=blob["items"].numpy(), labels=blob["labels"].numpy(),
                     removed_users=blob["removed_users"].numpy(), request_ids=list(blob["request_ids"]),
                     regime=blob["regime"])


def regime_data(clean: RecDataset, regime: RegimeSpec, seed: int) -> RecDataset:
    """The data a regime's seed works on: ``clean`` itself, or for ``poison`` the clean data
    with the seeded fake users injected (deterministic, so every worker rebuilds the same)."""
    if regime.regime == "poison" and "poison" not in clean.meta:
        from tru_dist.data.poison import inject_poison

        return inject_poison(clean, fake_user_fraction=regime.fraction, seed=seed)
    return clean


def original_file(sweep_dir: Path, regime: RegimeSpec, seed: int) -> Path:
    """Where the shared original of (regime's data, seed) is saved."""
    return context_dir(sweep_dir) / "originals" / f"{_data_key(regime)}-seed{seed}.pt"


def seed_file(sweep_dir: Path, regime_id: str, seed: int) -> Path:
    """Where a (regime, seed)'s forget set, reference and baselines are saved."""
    return context_dir(sweep_dir) / regime_id / f"seed{seed}.pt"


def saved_seconds(sweep_dir: Path, regime: RegimeSpec, seed: int) -> tuple[float, float]:
    """(training seconds of the shared original, Retrain's seconds — its deletion step
    included) of one (regime, seed), as saved when they were trained (so a resumed sweep
    still knows what they cost)."""
    original = _load_state(original_file(sweep_dir, regime, seed))
    saved = _load_state(seed_file(sweep_dir, regime.id, seed))
    return float(original["seconds"]), float(saved["baselines"]["retrain"]["seconds"])


def load_forget_and_reference(path: Path) -> tuple[ForgetSet, Reference]:
    """The forget set and the score's reference saved in a :func:`seed_file`."""
    saved = _load_state(path)
    return _forget_from(saved["forget"]), Reference(**saved["ref"])


class _Data:
    """Data and pre-deletion graphs, built once per (data key, seed) in this process."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self._clean: RecDataset | None = None
        self._cache: dict[tuple[str, int], tuple[RecDataset, RecGraph]] = {}

    def get(self, regime: RegimeSpec, seed: int, cfg: Config) -> tuple[RecDataset, RecGraph]:
        key = data_key(regime, seed)
        if key not in self._cache:
            from tru_dist.data.source import open_data

            if self._clean is None:
                self._clean = open_data(self.spec.data)
            data = regime_data(self._clean, regime, seed)
            graph = build_rec_graph(data, knn_k=cfg.model.knn_k, device=resolve_device(cfg.train.device),
                                    with_knn=model_class(cfg.model.name).uses_knn)
            self._cache[key] = (data, graph)
        return self._cache[key]


def _load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _model(cfg: Config, graph: RecGraph, state: dict[str, torch.Tensor]):
    model = build_model(cfg.model, graph, seed=cfg.train.seed).to(graph.ui.norm.device)
    model.load_state_dict(state)
    model.eval()
    return model


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _original(store: _Data, regime: RegimeSpec, cfg: Config, root: Path) -> tuple[Any, float]:
    data, graph = store.get(regime, cfg.train.seed, cfg)
    path = original_file(root.parent, regime, cfg.train.seed)
    if path.exists():
        blob = _load_state(path)
        return _model(cfg, graph, blob["state"]), float(blob["seconds"])
    from tru_dist.train.trainer import train_model

    t0 = time.perf_counter()
    model = build_model(cfg.model, graph, seed=cfg.train.seed).to(graph.ui.norm.device)
    result = train_model(model, graph, data, cfg)
    seconds = time.perf_counter() - t0
    model.eval()
    atomic_torch_save({"state": model.state_dict(), "seconds": seconds, "best_epoch": result.best_epoch},
                      path)
    _log(f"original {cfg.model.name} ({_data_key(regime)}, seed {cfg.train.seed}) trained in {seconds:.1f}s")
    return model, seconds


def prepare(spec: SweepSpec, base: Config, sweep_dir: Path, regime_ids: list[str] | None = None,
            with_baselines: bool = False, must_exist: bool = False) -> dict[str, list[SeedContext]]:
    """``{regime id: [SeedContext per seed]}``, training what has no saved file yet.

    ``with_baselines`` also loads Retrain's and reverse_bpr's models (for the report);
    ``must_exist`` turns a missing file into an error instead of training (the report
    never trains a baseline of its own).
    """
    from tru_dist.data.regimes import forget_set
    from tru_dist.unlearn.base import get_method

    root = context_dir(sweep_dir)
    store = _Data(spec)
    out: dict[str, list[SeedContext]] = {}
    for regime in spec.regimes:
        if regime_ids is not None and regime.id not in regime_ids:
            continue
        out[regime.id] = []
        for seed in spec.seed_list:
            cfg = seeded(base, seed)
            data, graph = store.get(regime, seed, cfg)
            original, original_seconds = _original(store, regime, cfg, root)
            path = seed_file(sweep_dir, regime.id, seed)
            if must_exist and not path.exists():
                raise ConfigError(f"{path} is missing: the sweep did not finish preparing; resume it "
                                  "(tru-dist sweep --config FILE --resume)")
            saved = _load_state(path) if path.exists() else None
            if saved is not None:
                forget = _forget_from(saved["forget"])
            else:
                forget = forget_set(data, regime.regime, regime.fraction, seed, policy=regime.policy)
            deletion = build_deletion(data, graph, forget, reset=cfg.unlearn.reset_deleted_users)
            data_after, graph_after = deletion.data_after, deletion.graph_after
            models: dict[str, Any] = {"original": original}
            if saved is None:
                states, seconds = {}, {"original": original_seconds}
                baselines = {"original": valid_point(original, graph_after, data_after, forget, spec.k)}
                for name in ("retrain", "reverse_bpr"):
                    result = get_method(name).unlearn(original, deletion, cfg)
                    models[name], states[name] = result.model, result.model.state_dict()
                    seconds[name] = result.seconds
                    baselines[name] = valid_point(result.model, graph_after, data_after, forget, spec.k)
                for name, sec in seconds.items():
                    baselines[name]["seconds"] = sec
                ref = Reference(retrain_recall=baselines["retrain"]["recall"],
                                retrain_hit=baselines["retrain"]["hit"],
                                start_hit=baselines["original"]["hit"])
                atomic_torch_save({"regime": regime.model_dump(), "seed": seed,
                                   "forget": _forget_blob(forget), "states": states, "ref": ref.to_dict(),
                                   "baselines": baselines}, path)
                _log(f"{regime.id} seed {seed}: Retrain {seconds['retrain']:.1f}s, reverse_bpr "
                     f"{seconds['reverse_bpr']:.2f}s; reference {ref}")
            else:
                ref, baselines = Reference(**saved["ref"]), saved["baselines"]
                if with_baselines:
                    models.update({n: _model(cfg, graph_after, s) for n, s in saved["states"].items()})
            out[regime.id].append(SeedContext(regime.id, seed, cfg, deletion, ref, models, baselines))
    return out
