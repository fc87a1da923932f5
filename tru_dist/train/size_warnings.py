"""Warnings for settings that the data's size makes meaningless, logged once where work starts.

A cut-off k at or above the catalogue's size ranks every item: with ``n_items <= k`` a user's
top-k list is the whole catalogue, so recall@k and hit@k read 1 for every user with a held-out
item, whatever the model learned, and early stopping on such a metric selects nothing. The
same holds for

* ``model.knn_k`` (MGCN's item–item view): :func:`tru_dist.graph.knn.knn_graph` keeps
  ``min(knn_k, n_items)`` neighbours, so with ``knn_k >= n_items`` every item links to every
  item and the view carries no content signal;
* ``unlearn.gate.top_k`` (TRU's top-K gate and its utility check, the share of held-out top-K
  hits an update loses): with ``top_k >= n_items`` every pair is "in the top K", so the gate
  passes everything and the utility check can never fail;
* a dataset without test rows (x_label 2): every test metric reads 0 over ``n_users: 0``.

These are warnings, not errors: a toy catalogue with the default ``eval.ks`` [10, 20, 50] meets
the first, and its runs are still useful as smoke tests. What they must not be is silent — a
recall of 1.0 on 8 items looks like a result. Each function logs on rank 0 only (every rank
holds the same sizes) and returns the lines it found, for tests; inside :func:`logged_once`
(``compare``) a line already logged is not logged again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.data.dataset import TEST, RecDataset
from tru_dist.data.validate import dataset_source

_LOG = logging.getLogger(__name__)
#: inside :func:`logged_once`: the lines logged so far (None outside it: every call logs)
_logged: set[str] | None = None


@contextmanager
def logged_once() -> Iterator[None]:
    """Within the block, each warning line is logged the first time only. ``compare`` trains an
    original and a Retrain model per seed on one catalogue, and logged the same lines 2 × seeds
    times; the functions still return every line they found."""
    global _logged
    outer = _logged
    _logged = set() if outer is None else outer
    try:
        yield
    finally:
        _logged = outer


def _emit(lines: list[str]) -> list[str]:
    if collectives.rank() == 0:
        for line in lines:
            if _logged is not None:
                if line in _logged:
                    continue
                _logged.add(line)
            _LOG.warning("%s", line)
    return lines


def _whole_catalogue(what: str, values: list[int], n_items: int, consequence: str) -> str | None:
    """One line naming the values of ``what`` that are >= ``n_items``, or None."""
    too_large = [k for k in values if k >= n_items]
    if not too_large:
        return None
    listed = ", ".join(str(k) for k in too_large)
    return f"{what} {listed} >= the catalogue's {n_items} items: {consequence}; set {what} below {n_items}"


def _ks_line(cfg: Config, n_items: int) -> list[str]:
    ks = _whole_catalogue("eval.ks", list(cfg.eval.ks), n_items,
                          "those top-k lists hold every item, so recall and hit read 1 whatever was learned")
    return [ks] if ks else []


def evaluate_size_warnings(cfg: Config, n_items: int) -> list[str]:
    """``eval.ks`` values >= ``n_items`` for ``tru-dist evaluate`` (its ``--eval.ks`` is the
    command's own); logged. Test rows are not checked there: a rank's shard may hold none."""
    return _emit(_ks_line(cfg, n_items))


def eval_size_warnings(cfg: Config, data: RecDataset) -> list[str]:
    """``eval.ks`` values >= ``data.n_items`` and a dataset without test rows (module docstring)."""
    lines = _ks_line(cfg, data.n_items)
    if data.split_counts[TEST] == 0:
        lines.append(f"{dataset_source(data)} has no test rows (x_label 2): every test metric will "
                     "read 0 over n_users 0; label some rows x_label=2 to measure the model")
    return lines


def train_size_warnings(cfg: Config, data: RecDataset, uses_knn: bool) -> list[str]:
    """What :func:`eval_size_warnings` finds, and ``model.knn_k >= n_items`` for a backbone that
    builds the item–item kNN view; logged."""
    lines = eval_size_warnings(cfg, data)
    if uses_knn:
        knn = _whole_catalogue("model.knn_k", [cfg.model.knn_k], data.n_items,
                               "each item's kNN list holds every item, so the item-item view is uniform")
        if knn:
            lines.append(knn)
    return _emit(lines)


def unlearn_size_warnings(cfg: Config, data: RecDataset, method: str) -> list[str]:
    """``unlearn.gate.top_k >= n_items`` for TRU (module docstring); logged."""
    lines = []
    if method.startswith("tru"):
        top_k = _whole_catalogue("unlearn.gate.top_k", [cfg.unlearn.gate.top_k], data.n_items,
                                 "every pair is in the top K, so the utility check (held-out top-K "
                                 "hits lost) cannot fail and the top-K gate (gate.target=topk) passes "
                                 "every pair")
        if top_k:
            lines.append(top_k)
    return _emit(lines)
