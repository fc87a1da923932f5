"""Choosing from a sweep's valid results: Pareto front, best row, best mean rank.

Pure functions over plain numbers, so the choices are unit-tested apart from Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_front(utility: Sequence[float], gap: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (higher utility, lower gap), by increasing gap.

    A point is dominated when another one is at least as good on both axes and strictly
    better on one. Exact duplicates keep their first index only.
    """
    u = np.asarray(utility, dtype=float)
    g = np.asarray(gap, dtype=float)
    order = np.lexsort((np.arange(len(u)), -u, g))  # by gap, then higher utility, then index
    front: list[int] = []
    best_u = -np.inf
    for i in order:
        if u[i] > best_u:
            front.append(int(i))
            best_u = u[i]
    return front


def best_row(scores: Sequence[float], epochs: Sequence[int]) -> int:
    """Index of the highest score; ties go to the fewer epochs (cheaper), then the first row."""
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(len(s)), np.asarray(epochs), -s))
    return int(order[0])


def ranks(scores: Sequence[float]) -> np.ndarray:
    """Competition ranks, 1 = best (highest); ties share the best rank; NaN ranks last."""
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.array([1 + int((s > v).sum()) for v in s])


def best_mean_rank(score_matrix: Sequence[Sequence[float]]) -> tuple[int, np.ndarray]:
    """``score_matrix[c][r]`` = candidate c's score on regime r → (chosen c, mean ranks).

    Ranks are taken per regime (so no regime's score scale dominates); the lowest mean
    rank wins, ties broken by the higher mean score, then the first candidate.
    """
    m = np.asarray(score_matrix, dtype=float)
    per_regime = np.stack([ranks(m[:, r]) for r in range(m.shape[1])], axis=1)
    mean_rank = per_regime.mean(axis=1)
    mean_score = np.where(np.isnan(m), -np.inf, m).mean(axis=1)
    order = np.lexsort((np.arange(len(m)), -mean_score, mean_rank))
    return int(order[0]), mean_rank
