"""tru-dist: machine unlearning for multimodal recommender systems, distributed on Ray.

The package is organised by job (see DESIGN.md §2): ``data`` (formats, validation,
synthetic data, forget-set regimes), ``graph`` (normalized bipartite adjacency, kNN
graphs, partition book), ``models`` (backbones behind one contract), ``train``
(BPR trainer, full-ranking evaluator), ``unlearn`` (Retrain, MMRecUn, baselines, TRU),
``audit``, ``dist`` (the only rank-aware code), ``tune`` (the only ray.tune user),
``report`` and ``cli``.
"""

__version__ = "0.1.0"
