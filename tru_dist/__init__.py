"""tru-dist: machine unlearning for multimodal recommender systems, distributed on Ray.

The package is organised by job (see DESIGN.md §2): ``data`` (formats, validation,
synthetic data, forget-set regimes), ``graph`` (normalized bipartite adjacency, kNN
graphs, partition book), ``models`` (backbones behind one contract), ``train``
(BPR trainer, full-ranking evaluator), ``unlearn`` (Retrain, MMRecUn, baselines, TRU),
``audit``, ``compare``, ``distributed`` (the runtime that runs them on W workers; the
collectives it shares with the models are ``comm``), ``tune`` (the only ray.tune user),
``report`` and ``cli``. Imports point down that list only (tests/test_layering.py).
"""

__version__ = "0.1.0"
