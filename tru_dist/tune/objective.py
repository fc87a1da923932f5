"""What a trial reports every epoch, and the one scalar ASHA maximises.

Everything here reads VALID data only (hyperparameters are chosen on valid, DESIGN §5);
test is read once, by the final re-evaluation in :mod:`tru_dist.tune.report`.

Per epoch and seed, with K = ``sweep.k`` (20):

* utility  U   = recall@K on the retained users' VALID items (train history masked);
* forget hit H = hit@K of the deleted TRAIN pairs (retained history masked,
  :func:`tru_dist.unlearn.metrics.forget_metrics`);
* forget gap   = |H − H_r|, H_r = Retrain's forget hit on the same forget set.

The trade-off score::

    score = U / U_r  −  |H − H_r| / max(|H_0 − H_r|, ε)        ε = 0.01

U_r is Retrain's valid recall@K; H_0 is the forget hit of the original model serving on
the post-deletion graph, i.e. of "no unlearning at all". Why this form:

* both terms are in units of Retrain: Retrain scores exactly 1, doing nothing scores
  ≈ U_0/U_r − 1 ≈ 0, so scores are comparable across regimes and datasets (the shared
  configuration is chosen by rank, but the tables read naturally too);
* the gap is measured as a share of the distance the deletion should move the forget hit
  (H_0 → H_r). Losing 10 % of Retrain's utility costs as much as leaving 10 % of that
  distance untravelled — or overshooting it by 10 %: over-forgetting (H below H_r) is
  penalised like under-forgetting, because an auditor detects both;
* dividing by H_r instead (the textbook relative error) explodes when Retrain's forget
  hit is near zero — typical when whole users are deleted — and would make the
  score a function of noise in H_r. ε (one point of hit rate) plays that guard role
  when a deletion barely moves the forget hit: there the gap is judged in absolute points.

With several seeds, each seed has its own reference (its own Retrain) and the reported
values are means over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tru_dist.train import evaluate as _evaluate  # module reference: one place every split goes through
from tru_dist.unlearn import metrics as _metrics

EPSILON = 0.01


@dataclass(frozen=True)
class Reference:
    """The fixed points a trial is judged against (one per regime and seed)."""

    retrain_recall: float  # U_r: Retrain's valid recall@K
    retrain_hit: float  # H_r: Retrain's forget hit@K
    start_hit: float  # H_0: the original model's forget hit@K on the post-deletion graph

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def trade_off(recall: float, hit: float, ref: Reference, eps: float = EPSILON) -> float:
    """``recall / U_r − |hit − H_r| / max(|H_0 − H_r|, eps)`` (see the module docstring)."""
    utility = recall / max(ref.retrain_recall, 1e-12)
    return utility - abs(hit - ref.retrain_hit) / max(abs(ref.start_hit - ref.retrain_hit), eps)


def valid_point(model, graph_after, data_after, forget, k: int = 20) -> dict[str, float]:
    """``{"recall", "ndcg", "hit"}`` at K: valid utility of the retained users and forget hit."""
    emb = _evaluate.eval_embeddings(model, graph_after)
    valid = _evaluate.evaluate(model, graph_after, data_after, "valid", ks=(k,), emb=emb)
    forget = _metrics.forget_metrics(model, graph_after, data_after, forget, ks=(k,), emb=emb)
    return {"recall": valid[f"recall@{k}"], "ndcg": valid[f"ndcg@{k}"], "hit": forget[f"hit@{k}"]}


def epoch_metrics(points: Sequence[dict[str, float]], refs: Sequence[Reference], k: int = 20
                  ) -> dict[str, float]:
    """The metrics a trial reports for one epoch: means over seeds of each seed's values."""
    pairs = list(zip(points, refs, strict=True))
    scores = [trade_off(p["recall"], p["hit"], r) for p, r in pairs]
    return {
        "score": float(np.mean(scores)),
        f"valid_recall@{k}": float(np.mean([p["recall"] for p in points])),
        f"valid_ndcg@{k}": float(np.mean([p["ndcg"] for p in points])),
        f"forget_hit@{k}": float(np.mean([p["hit"] for p in points])),
        "forget_gap": float(np.mean([abs(p["hit"] - r.retrain_hit) for p, r in pairs])),
        "utility_ratio": float(np.mean([p["recall"] / max(r.retrain_recall, 1e-12) for p, r in pairs])),
    }
