"""retrain: the exact-unlearning gold standard.

Trains a fresh model from scratch on D_r with the SAME config as the original (model,
``train.*`` including ``train.seed`` and early stopping on valid) through
:func:`tru_dist.train.trainer.fit`, so Retrain differs from the original only by the deleted
data. ``seconds`` is the whole call (graph build + training + its valid evaluations) plus the
deletion step that built D_r.
The given model is not used (only its absence of influence matters).
"""

from __future__ import annotations

from tru_dist.unlearn.base import Stopwatch, UnlearnResult


def unlearn(model, deletion, cfg) -> UnlearnResult:
    from tru_dist.train.trainer import fit

    graph_after = deletion.graph_after
    with Stopwatch() as sw:
        out, _, result = fit(cfg, deletion.data_after, book=graph_after.book, rank=graph_after.rank,
                             knn=graph_after.knn)  # a shard's feature slices cannot rebuild kNN
    out.eval()
    stats = {"best_epoch": result.best_epoch, "epochs": result.epochs, "valid": result.valid,
             "train_seconds": result.train_seconds}
    return UnlearnResult(out, stats, sw.seconds)
