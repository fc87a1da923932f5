"""The sweep's plot: per regime, valid utility vs forget gap over all trials (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tru_dist.io_utils import atomic_write  # noqa: E402


def pareto_plot(
    path: str | Path,
    title: str,
    utility: Sequence[float],
    gap: Sequence[float],
    front: Sequence[int],
    baselines: dict[str, tuple[float, float]],
    best: tuple[float, float] | None = None,
    k: int = 20,
) -> Path:
    """Every (trial, epoch) as a dot, the Pareto front as a line, baselines and the best marked.

    x = forget gap |hit@K − Retrain's| (0 = forgets exactly like Retrain), y = valid
    recall@K of the retained users; up and left is better. ``baselines`` maps a name
    (``retrain``, ``reverse_bpr``) to its (gap, utility).
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(gap, utility, s=14, color="#9ab", alpha=0.7, label="trials (every epoch)")
    if front:
        ax.plot([gap[i] for i in front], [utility[i] for i in front], "-o", color="#247", ms=4,
                label="Pareto front")
    styles = {"retrain": ("*", "#c33", 14), "reverse_bpr": ("s", "#e90", 8)}
    for name, (x, y) in baselines.items():
        marker, color, size = styles.get(name, ("D", "#555", 7))
        ax.plot([x], [y], marker, color=color, ms=size, ls="none", label=name)
    if best is not None:
        ax.plot([best[0]], [best[1]], "P", color="#2a2", ms=10, ls="none", label="best score")
    ax.set_xlabel(f"forget gap |hit@{k} − Retrain's| (lower is better)")
    ax.set_ylabel(f"valid recall@{k}, retained users")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
