"""The unlearning contract and the method registry.

Every method is called as

    get_method(name).unlearn(model, deletion, cfg) -> UnlearnResult

with ``model`` the trained model, ``deletion`` the shared deletion step
(:class:`~tru_dist.unlearn.deletion.Deletion`: before/after data and graph, the forget set,
the users to reset) and ``cfg`` the full :class:`~tru_dist.config.Config` (``cfg.unlearn``
holds the method's hyperparameters). Methods work on a copy (the caller's model is never
modified) and are seeded by ``cfg.unlearn.seed`` (Retrain, which repeats the original
training, by ``cfg.train.seed``).

``seconds`` is the end-to-end cost a user waits for: the deletion step
(``deletion.seconds``) plus the method's own time (its call, CUDA synchronised; SISA: the
retraining of the affected shards) — summed by :meth:`Method.unlearn`, so every method is
timed the same way. ``stats["method_seconds"]`` keeps the method's part alone.

Names: ``retrain``, ``retrain-reseed`` (Retrain with another training seed: the benchmark's
noise floor), ``noop`` (the deletion step alone: original parameters, deleted users
reset, served on D_r's graph), ``reverse_bpr`` (MMRecUn), ``grad_ascent``, ``finetune``,
``sisa``, ``tru``, ``tru-default`` (TRU itself, named apart so that ``compare --tuned`` can
report the plug-and-play defaults beside the tuned configuration) and TRU's ablations
``tru-no-gate``, ``tru-no-scaling``, ``tru-no-isolation``. ``-`` and ``_`` are interchangeable in lookups.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tru_dist.errors import ConfigError
from tru_dist.timing import Stopwatch

__all__ = ["APPROXIMATE", "Method", "Stopwatch", "UnlearnResult", "get_method", "method_names"]


@dataclass
class UnlearnResult:
    """An unlearned model, the method's logged decisions, and the wall time of the call."""

    model: Any
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


UnlearnFn = Callable[..., UnlearnResult]

_METHODS: dict[str, tuple[str, str, str]] = {
    "retrain": ("tru_dist.unlearn.retrain", "unlearn", "exact: train from scratch on D_r"),
    "retrain-reseed": ("tru_dist.unlearn.retrain", "unlearn_reseeded",
                       "Retrain with another training seed: the distance training randomness alone leaves"),
    "noop": ("tru_dist.unlearn.noop", "unlearn", "the deletion step alone: no parameter update"),
    "reverse_bpr": ("tru_dist.unlearn.reverse_bpr", "unlearn", "MMRecUn: reverse BPR on D_f + BPR on D_r"),
    "grad_ascent": ("tru_dist.unlearn.grad_ascent", "unlearn", "gradient ascent on BPR over D_f"),
    "finetune": ("tru_dist.unlearn.finetune", "unlearn", "BPR on D_r only"),
    "sisa": ("tru_dist.unlearn.sisa", "unlearn", "RecEraser-style user shards, retrain affected shards"),
    "tru": ("tru_dist.unlearn.tru.tru", "unlearn", "targeted reverse update (gate + scaling + isolation)"),
    "tru-default": ("tru_dist.unlearn.tru.tru", "unlearn",
                    "TRU with its built-in defaults: compare never applies a tuned file to it"),
    "tru-no-gate": ("tru_dist.unlearn.tru.tru", "unlearn_no_gate", "TRU without the ranking fusion gate"),
    "tru-no-scaling": ("tru_dist.unlearn.tru.tru", "unlearn_no_scaling", "TRU without branch-wise scaling"),
    "tru-no-isolation": ("tru_dist.unlearn.tru.tru", "unlearn_no_isolation", "TRU without layer isolation"),
}


#: methods that start from the shared deletion step and are tuned by the same sweep machinery
APPROXIMATE = ("reverse_bpr", "grad_ascent", "finetune", "tru")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_BY_KEY = {_key(n): n for n in _METHODS}


@dataclass(frozen=True)
class Method:
    """A registered method: ``unlearn(model, deletion, cfg)``."""

    name: str
    fn: UnlearnFn
    description: str

    def unlearn(self, model, deletion, cfg) -> UnlearnResult:
        """Run the method; ``seconds`` = deletion step + the method's own time (module doc)."""
        result = self.fn(model, deletion, cfg)
        result.stats["method_seconds"] = result.seconds
        result.stats["deletion_seconds"] = deletion.seconds
        result.seconds = deletion.seconds + result.seconds
        return result


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The method called ``name`` (ConfigError listing the valid names otherwise)."""
    canonical = _BY_KEY.get(_key(name))
    if canonical is None:
        raise ConfigError(f"unknown unlearning method '{name}' (choose one of: {', '.join(method_names())})")
    module, attr, doc = _METHODS[canonical]
    return Method(canonical, getattr(importlib.import_module(module), attr), doc)
