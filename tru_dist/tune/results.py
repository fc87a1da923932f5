"""A sweep's trial results per (method, regime) and the choices read off them (valid only).

One Tune experiment per method and regime lives in ``<sweep>/tune/<method>/<regime id>/``
(:func:`experiment_dir`); every trial reports one row per epoch. A configuration is a
:class:`Candidate`: the trial's sample plus an epoch count. The best configuration of an
experiment is its highest valid score over all (trial, epoch) rows, ties to fewer epochs
(:func:`best_candidate`) — the one selection both the report and the tuned files use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tru_dist.errors import ConfigError
from tru_dist.tune import adapter
from tru_dist.tune.select import best_row


def experiment_dir(sweep_dir: str | Path, method: str, regime_id: str) -> Path:
    """Where Tune keeps the experiment of ``method`` on ``regime_id``."""
    return Path(sweep_dir) / "tune" / method / regime_id


@dataclass(frozen=True)
class Candidate:
    """A configuration: the sampled ``unlearn.*`` values plus the number of epochs."""

    sample: dict[str, Any]
    epochs: int

    @property
    def key(self) -> str:
        return json.dumps({"sample": self.sample, "epochs": self.epochs}, sort_keys=True)

    def label(self) -> str:
        parts = [f"{k.removeprefix('unlearn.')}={_short(v)}" for k, v in sorted(self.sample.items())]
        return ", ".join(parts + [f"epochs={self.epochs}"])


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def num(x: Any) -> float:
    """A reported number, with None/NaN as −inf (never the best)."""
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def candidate(row: dict[str, Any]) -> Candidate:
    return Candidate(dict(row.get("config", {})), int(row["epoch"]))


def experiment_rows(sweep_dir: Path, method: str, regime_id: str) -> list[dict[str, Any]]:
    """Every epoch reported by every trial of one experiment (rows without an ``epoch`` dropped)."""
    folder = experiment_dir(sweep_dir, method, regime_id)
    rows = [r for r in adapter.trial_rows(folder) if "epoch" in r and "score" in r]
    if not rows:
        raise ConfigError(f"no trial results for {method} on regime {regime_id} under {folder}; run or "
                          "resume the sweep first")
    return rows


def best_candidate(rows: list[dict[str, Any]]) -> tuple[Candidate, dict[str, Any]]:
    """The highest valid score over all (trial, epoch) rows, ties to fewer epochs: (config, its row)."""
    i = best_row([num(r["score"]) for r in rows], [r["epoch"] for r in rows])
    return candidate(rows[i]), rows[i]


def top_candidates(rows: list[dict[str, Any]], n: int) -> list[Candidate]:
    """The ``n`` best distinct samples (each at its best epoch), best first."""
    by_sample: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = json.dumps(row.get("config", {}), sort_keys=True)
        if key not in by_sample or best_row([by_sample[key]["score"], row["score"]],
                                            [by_sample[key]["epoch"], row["epoch"]]) == 1:
            by_sample[key] = row
    ordered = sorted(by_sample.values(), key=lambda r: (-num(r["score"]), r["epoch"]))
    return [candidate(r) for r in ordered[:n]]


def n_trials(rows: list[dict[str, Any]]) -> int:
    return len({r["trial_id"] for r in rows})
