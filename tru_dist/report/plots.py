"""Plots next to every report table (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tru_dist.io_utils import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def tradeoff_plot(methods: dict, path: str | Path, k: int = 20) -> Path:
    """Forget hit@K (x) vs retained test recall@K (y) per method, Retrain marked.

    Good unlearning sits next to Retrain: same utility, same forget hit rate (not zero —
    forgetting below Retrain is over-forgetting an auditor can also detect).
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = 0
    for name, m in methods.items():
        x = m.get("forget", {}).get(f"hit@{k}")
        y = m.get("test", {}).get(f"recall@{k}")
        if x is None or y is None:
            continue
        xe = m.get("forget_std", {}).get(f"hit@{k}")
        ye = m.get("test_std", {}).get(f"recall@{k}")
        marker = "*" if name == "retrain" else ("s" if name == "original" else "o")
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=marker, markersize=11 if marker == "*" else 7, capsize=3,
                    label=name)
        drawn += 1
    retrain_hit = methods.get("retrain", {}).get("forget", {}).get(f"hit@{k}")
    if retrain_hit is not None:
        ax.axvline(retrain_hit, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"forget hit@{k} (deleted pairs still recommended)")
    ax.set_ylabel(f"test recall@{k} (retained users)")
    ax.set_title("Forget vs utility (closer to Retrain is better)")
    if drawn:  # a legend of nothing is a matplotlib warning on stderr, not an empty box
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def time_plot(methods: dict, path: str | Path) -> Path:
    """Wall seconds per method on a log axis (Retrain includes its full training)."""
    names = [n for n, m in methods.items() if m.get("seconds") is not None and n != "original"]
    secs = [methods[n]["seconds"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(names))))
    ax.barh(names, secs, color=["#c44" if n == "retrain" else "#48a" for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    for y, s in enumerate(secs):
        ax.text(s, y, f" {s:.2f}s", va="center", fontsize=8)
    ax.set_title("Unlearning time per method")
    return _save(fig, Path(path))
