"""The unlearning contract and the method registry.

Every method is called as

    get_method(name).unlearn(model, graph_after, data_after, forget, cfg) -> UnlearnResult

with ``model`` the trained model, ``graph_after``/``data_after`` the retained graph and data
(D_r = D \\ D_f, degrees renormalised), ``forget`` the :class:`~tru_dist.data.requests.ForgetSet`
and ``cfg`` the full :class:`~tru_dist.config.Config` (``cfg.unlearn`` holds the method's
hyperparameters). Methods work on a deep copy (the caller's model is never modified), are
seeded by ``cfg.unlearn.seed`` (Retrain, which repeats the original training, by
``cfg.train.seed``), and report the wall time of the whole call in ``seconds`` (Retrain: its
full training; SISA: the retraining of the affected shards — see :mod:`.sisa`).

Names: ``retrain``, ``reverse_bpr`` (MMRecUn), ``grad_ascent``, ``finetune``, ``sisa``,
``tru`` and TRU's ablations ``tru-no-gate``, ``tru-no-scaling``, ``tru-no-isolation``.
``-`` and ``_`` are interchangeable in lookups.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tru_dist.errors import ConfigError


@dataclass
class UnlearnResult:
    """An unlearned model, the method's logged decisions, and the wall time of the call."""

    model: Any
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


UnlearnFn = Callable[..., UnlearnResult]

_METHODS: dict[str, tuple[str, str, str]] = {
    "retrain": ("tru_dist.unlearn.retrain", "unlearn", "exact: train from scratch on D_r"),
    "reverse_bpr": ("tru_dist.unlearn.reverse_bpr", "unlearn", "MMRecUn: reverse BPR on D_f + BPR on D_r"),
    "grad_ascent": ("tru_dist.unlearn.grad_ascent", "unlearn", "gradient ascent on BPR over D_f"),
    "finetune": ("tru_dist.unlearn.finetune", "unlearn", "BPR on D_r only"),
    "sisa": ("tru_dist.unlearn.sisa", "unlearn", "RecEraser-style user shards, retrain affected shards"),
    "tru": ("tru_dist.unlearn.tru.tru", "unlearn", "targeted reverse update (gate + scaling + isolation)"),
    "tru-no-gate": ("tru_dist.unlearn.tru.tru", "unlearn_no_gate", "TRU without the ranking fusion gate"),
    "tru-no-scaling": ("tru_dist.unlearn.tru.tru", "unlearn_no_scaling", "TRU without branch-wise scaling"),
    "tru-no-isolation": ("tru_dist.unlearn.tru.tru", "unlearn_no_isolation", "TRU without layer isolation"),
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_BY_KEY = {_key(n): n for n in _METHODS}


@dataclass(frozen=True)
class Method:
    """A registered method: ``unlearn(model, graph_after, data_after, forget, cfg)``."""

    name: str
    fn: UnlearnFn
    description: str

    def unlearn(self, model, graph_after, data_after, forget, cfg) -> UnlearnResult:
        return self.fn(model, graph_after, data_after, forget, cfg)


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The method called ``name`` (ConfigError listing the valid names otherwise)."""
    canonical = _BY_KEY.get(_key(name))
    if canonical is None:
        raise ConfigError(f"unknown unlearning method '{name}' (choose one of: {', '.join(method_names())})")
    module, attr, doc = _METHODS[canonical]
    return Method(canonical, getattr(importlib.import_module(module), attr), doc)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall time, perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
