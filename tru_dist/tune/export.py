"""What a sweep hands to ``tru-dist compare --tuned DIR``: ``<sweep>/tuned/<method>-<regime>.yaml``.

After every experiment of a sweep has finished, :func:`write_tuned` writes, per method and
regime, the best configuration (highest VALID score over all (trial, epoch) rows, ties to
fewer epochs: :func:`tru_dist.tune.results.best_candidate`, the same selection as the
report's) in the format of :mod:`tru_dist.unlearn.tuned`::

    # reverse_bpr tuned for regime users ...
    unlearn: {epochs: 4, lr: 0.0031, batch_size: 2048, lambda_f: 1.7, lambda_r: 0.9}
    tuning: {sweep: NAME, seeds: [100], trials: 6, seconds: 812.4, regime: users-random-5pct,
             model: mgcn, score: 0.83, parts: {originals: .., references: .., trials: ..}}

The ``unlearn`` block holds exactly the keys the method's run reads
(:func:`tru_dist.unlearn.specs.method_keys`) as the trials ran them: the sample layered over
the sweep's base config, and the best epoch as ``unlearn.epochs``. Not written: ``seed``
(compare seeds every run) and ``reset_deleted_users`` (a switch of the shared deletion step,
the same for every method, which compare owns).

The file name carries the *plain* regime (``users``, ``interactions``, ``items``,
``poison``), which is what :func:`tru_dist.unlearn.tuned.find_tuned` looks up. When a sweep
has several regimes of the same plain kind (``users`` random and core), the FIRST one in
the sweep file gives the file; the others are logged as not exported (their best
configurations are still in the report's ``best/`` folder).

**``tuning.seconds``** is the wall time the sweep spent on that (method, regime), in three
parts (``tuning.parts``), so that the files of one sweep add up to the sweep's wall time
for these three items:

* ``trials`` — the wall time of the experiment's Tune run (``Tuner.fit``), summed over every
  ``tru-dist sweep`` call that ran it (a ``--resume`` adds its own), from
  ``<sweep>/timing.json``. Trials run ``max_concurrent`` at a time, so this is elapsed
  time, not CPU time;
* ``references`` — Retrain's wall time (its deletion step included) for each of the
  regime's seeds, divided equally among the sweep's methods (every method is scored
  against the same Retrain);
* ``originals`` — the training time of each original model the regime's seeds start
  from, divided equally among every (method, regime) that starts from it (clean data is
  shared by all regimes, poisoned data by the poison regime only).

Not counted: the untuned reverse_bpr baseline and the valid evaluations the preparation
runs for the report (seconds), the report itself, and Ray's start-up.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tru_dist.config import Config
from tru_dist.io_utils import atomic_write_json, atomic_write_text
from tru_dist.tune.context import original_file, saved_seconds
from tru_dist.tune.results import best_candidate, experiment_rows, n_trials, num
from tru_dist.tune.space import apply_sample
from tru_dist.tune.spec import RegimeSpec, SweepSpec
from tru_dist.unlearn.specs import method_keys

TIMING = "timing.json"
TUNED = "tuned"


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the experiments' wall time ---------------------------------------------------------------------
def _timing_key(method: str, regime_id: str) -> str:
    return f"{method}/{regime_id}"


def experiment_log(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """``{"<method>/<regime id>": {"seconds": wall seconds of its Tune runs so far, "finished":
    whether its last run ended with every trial done}}`` (``<sweep>/timing.json``)."""
    path = Path(sweep_dir) / TIMING
    return json.loads(path.read_text()) if path.exists() else {}


def trial_seconds(sweep_dir: Path) -> dict[str, float]:
    """``{"<method>/<regime id>": wall seconds of its Tune runs so far}``."""
    return {key: float(entry["seconds"]) for key, entry in experiment_log(sweep_dir).items()}


def is_finished(sweep_dir: Path, method: str, regime_id: str) -> bool:
    """Whether the experiment's last Tune run ended with no trial in error (nothing to resume)."""
    return bool(experiment_log(sweep_dir).get(_timing_key(method, regime_id), {}).get("finished", False))


def record_fit(sweep_dir: Path, method: str, regime_id: str, seconds: float, finished: bool) -> None:
    """Add one ``Tuner.fit``'s wall time to the experiment's total (kept across ``--resume``)
    and whether every trial is now done."""
    log = experiment_log(sweep_dir)
    key = _timing_key(method, regime_id)
    before = float(log.get(key, {}).get("seconds", 0.0))
    log[key] = {"seconds": before + float(seconds), "finished": bool(finished)}
    atomic_write_json(Path(sweep_dir) / TIMING, log)


def cost_shares(spec: SweepSpec, sweep_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, regime id): {originals, references, trials, seconds}}`` (module docstring)."""
    methods = list(spec.spaces)
    users: dict[Path, set[str]] = defaultdict(set)  # original file -> regimes starting from it
    spent: dict[Path, float] = {}
    references: dict[str, float] = defaultdict(float)
    for regime in spec.regimes:
        for seed in spec.seed_list:
            path = original_file(sweep_dir, regime, seed)
            spent[path], retrain = saved_seconds(sweep_dir, regime, seed)
            users[path].add(regime.id)
            references[regime.id] += retrain
    trials = trial_seconds(sweep_dir)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for method in methods:
        for regime in spec.regimes:
            originals = sum(spent[p] / (len(users[p]) * len(methods)) for p in users
                            if regime.id in users[p])
            parts = {"originals": originals, "references": references[regime.id] / len(methods),
                     "trials": float(trials.get(_timing_key(method, regime.id), 0.0))}
            out[(method, regime.id)] = {**parts, "seconds": sum(parts.values())}
    return out


# -- the tuned files -----------------------------------------------------------------------------------
def tuned_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / TUNED


def exported_regimes(spec: SweepSpec) -> tuple[dict[str, RegimeSpec], list[RegimeSpec]]:
    """({plain regime: the regime that gives its file}, regimes left out): the first of each kind."""
    chosen: dict[str, RegimeSpec] = {}
    skipped: list[RegimeSpec] = []
    for regime in spec.regimes:
        if regime.regime in chosen:
            skipped.append(regime)
        else:
            chosen[regime.regime] = regime
    return chosen, skipped


def _pick(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split(".")[1:]:  # drop the leading "unlearn"
        node = node[part]
    return node


def tuned_block(method: str, base: Config, sample: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The ``unlearn:`` block of a tuned file: the keys ``method`` reads, as the trial ran them."""
    cfg = apply_sample(base, sample)
    cfg.unlearn.epochs = int(epochs)
    tree = cfg.to_dict()["unlearn"]
    return {key.split(".", 1)[1]: _pick(tree, key) for key in method_keys(method)}


def write_tuned(sweep_dir: str | Path, spec: SweepSpec, base: Config) -> list[Path]:
    """Write ``<sweep>/tuned/<method>-<regime>.yaml`` for every method and plain regime; return the paths."""
    sweep_dir = Path(sweep_dir)
    chosen, skipped = exported_regimes(spec)
    for regime in skipped:
        _log(f"{regime.id}: no tuned file (the sweep's first {regime.regime} regime, "
             f"{chosen[regime.regime].id}, gives {regime.regime}'s; compare --tuned reads one per regime)")
    costs = cost_shares(spec, sweep_dir)
    out_dir = tuned_dir(sweep_dir)
    files: dict[Path, str] = {}  # everything is read and chosen before the first file is written
    for method in spec.spaces:
        for plain, regime in chosen.items():
            rows = experiment_rows(sweep_dir, method, regime.id)
            cand, row = best_candidate(rows)
            cost = costs[(method, regime.id)]
            tuning = {"sweep": spec.name, "seeds": list(spec.seed_list), "trials": n_trials(rows),
                      "seconds": round(cost["seconds"], 3), "regime": regime.id, "model": base.model.name,
                      "score": round(num(row["score"]), 6),
                      "parts": {k: round(v, 3) for k, v in cost.items() if k != "seconds"}}
            doc = {"unlearn": tuned_block(method, base, cand.sample, cand.epochs), "tuning": tuning}
            header = (f"# {method} tuned for regime {plain} ({regime.id}) by sweep '{spec.name}' on VALID "
                      f"data only, tuning seeds {spec.seed_list}:\n"
                      f"# best valid score {num(row['score']):.4f} (trial {row.get('trial_id')}, epoch "
                      f"{cand.epochs}) of {tuning['trials']} trials.\n"
                      f"# Use: tru-dist compare --model {base.model.name} --regime {plain} --tuned "
                      f"{out_dir} ...\n")
            files[out_dir / f"{method}-{plain}.yaml"] = header + yaml.safe_dump(doc, sort_keys=False)
    for path, text in files.items():
        atomic_write_text(path, text)
    _log(f"tuned configurations: {', '.join(p.name for p in files)} in {out_dir}")
    return list(files)
