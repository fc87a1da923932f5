"""tru-dist: machine unlearning for multimodal recommender systems, distributed on Ray.

The Python API (:mod:`tru_dist.api`, what the CLI itself calls)::

    import tru_dist
    run = tru_dist.train(data="synthetic:small", model="miggt", out="runs/miggt")
    tru_dist.evaluate(run); tru_dist.recommend(run, users=[0, 1], k=10)
    tru_dist.unlearn(run, requests="requests.parquet", method="tru")
    tru_dist.load_run("runs/miggt"); tru_dist.export_embeddings(run)
    with tru_dist.worker_pool(2) as pool: ...   # W local ranks started once, reused by pool=

Those names are resolved on first access (module ``__getattr__``, PEP 562), so ``import
tru_dist`` stays light (no torch) and :mod:`tru_dist.api` can import the package's modules
without an import cycle. ``train`` and ``unlearn`` are also subpackages; those subpackages are
callable and forward to the API (:mod:`tru_dist._callable`), so ``tru_dist.train(...)`` works
whichever of the two Python's import system put on the package.

The package is organised by job (see DESIGN.md §2): ``data`` (formats, validation,
synthetic data, forget-set regimes), ``graph`` (normalized bipartite adjacency, kNN
graphs, partition book), ``models`` (backbones behind one contract), ``train``
(BPR trainer, full-ranking evaluator), ``unlearn`` (Retrain, MMRecUn, baselines, TRU),
``audit``, ``compare``, ``distributed`` (the runtime that runs them on W workers; the
collectives it shares with the models are ``comm``), ``tune`` (the only ray.tune user),
``report`` and ``cli``. Imports point down that list only (tests/test_layering.py).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "Run", "train", "load_run", "unlearn", "evaluate", "recommend", "export_embeddings",
           "worker_pool"]
_API = frozenset(__all__) - {"__version__"}
_SUBPACKAGES = frozenset({"train", "unlearn"})  # callable subpackages named like API functions



def __getattr__(name: str) -> Any:
    """The API by name, imported on first access: a facade, not a static dependency of the
    ground-floor package (tests/test_layering.py), hence ``importlib`` rather than ``import``."""
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # sets the attribute itself
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.api"), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'tru_dist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
