"""``tru-dist report sweep PATH``: what the sweep found, and whether it holds on test.

From a sweep folder (:mod:`tru_dist.tune.sweep`) it writes ``report.md`` and:

* ``pareto-<regime>.png`` — every reported (trial, epoch) as valid recall@K vs forget gap,
  the Pareto front over them, reverse_bpr and Retrain marked (valid data only);
* ``best/<regime>.yaml`` — the best configuration per regime (highest valid score over all
  (trial, epoch) rows; the epoch becomes ``unlearn.epochs``), as a ready-to-use config;
* ``best/shared.yaml`` — ONE configuration for all regimes: the top
  ``shared_candidates`` configurations of every regime are each run on every regime
  (valid), ranked per regime by score, and the best mean rank wins (ranks, not scores,
  so that no regime's scale dominates);
* ``final.json`` — the final re-evaluation, the only place test data is read: per regime
  and seed, a FRESH TRU run with the regime's best config, one with the shared config
  and one with the base config's defaults, on the same forget set as the sweep, next to
  Retrain and reverse_bpr (the models trained before the sweep): test recall/ndcg@K of the
  retained users, forget hit@K, gap to Retrain, the test trade-off score, seconds, and the
  audits named in ``audit`` when their module imports. It runs once: a later report on
  the same selection reuses ``final.json``.

The report answers "does tuning per regime beat one shared configuration, and by how much"
with the test score of both per regime and their difference.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tru_dist.config import Config
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json, atomic_write_text
from tru_dist.report.tables import fmt, markdown_table
from tru_dist.train import evaluate as _evaluate
from tru_dist.tune import adapter
from tru_dist.tune.context import SeedContext, prepare
from tru_dist.tune.epochs import tru_at_epoch
from tru_dist.tune.objective import EPSILON, epoch_metrics, valid_point
from tru_dist.tune.plots import pareto_plot
from tru_dist.tune.select import best_mean_rank, best_row, pareto_front
from tru_dist.tune.space import apply_sample
from tru_dist.tune.spec import SweepSpec
from tru_dist.tune.sweep import load_manifest
from tru_dist.unlearn import metrics as _metrics


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


# -- trial rows ---------------------------------------------------------------------------------
def regime_rows(sweep_dir: Path, regime_id: str) -> list[dict[str, Any]]:
    """Every epoch reported by every trial of one regime (rows without an ``epoch`` dropped)."""
    rows = [r for r in adapter.trial_rows(sweep_dir / "tune" / regime_id) if "epoch" in r and "score" in r]
    if not rows:
        raise ConfigError(f"no trial results for regime {regime_id} under {sweep_dir}/tune; run or resume "
                          "the sweep first")
    return rows


def _candidate(row: dict[str, Any]) -> Candidate:
    return Candidate(dict(row.get("config", {})), int(row["epoch"]))


def top_candidates(rows: list[dict[str, Any]], n: int) -> list[Candidate]:
    """The ``n`` best distinct samples (each at its best epoch), best first."""
    by_sample: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = json.dumps(row.get("config", {}), sort_keys=True)
        if key not in by_sample or best_row([by_sample[key]["score"], row["score"]],
                                            [by_sample[key]["epoch"], row["epoch"]]) == 1:
            by_sample[key] = row
    ordered = sorted(by_sample.values(), key=lambda r: (-_num(r["score"]), r["epoch"]))
    return [_candidate(r) for r in ordered[:n]]


def _num(x: Any) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# -- valid and test evaluation -----------------------------------------------------------------------
def valid_score(cand: Candidate, seeds: list[SeedContext], k: int) -> float:
    """The sweep's valid score of ``cand`` on one regime (fresh TRU run per seed)."""
    points = []
    for sc in seeds:
        state = tru_at_epoch(sc.original, sc.deletion,
                             apply_sample(sc.cfg, cand.sample), cand.epochs)
        points.append(valid_point(state.model, sc.graph_after, sc.data_after, sc.forget, k))
    return epoch_metrics(points, [sc.ref for sc in seeds], k)["score"]


def shared_matrix(sweep_dir: Path, candidates: list[Candidate], contexts: dict[str, list[SeedContext]],
                  k: int) -> list[list[float]]:
    """``[candidate][regime]`` valid scores, cached in ``shared_scores.json`` (valid runs only)."""
    path = sweep_dir / "shared_scores.json"
    cache: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    matrix = []
    for cand in candidates:
        row = []
        for rid, seeds in contexts.items():
            key = f"{rid}|{cand.key}"
            if key not in cache:
                cache[key] = valid_score(cand, seeds, k)
            row.append(cache[key])
        matrix.append(row)
    atomic_write_json(path, cache)
    return matrix


def _test_entry(model, sc: SeedContext, k: int, seconds: float) -> dict[str, float]:
    emb = _evaluate.eval_embeddings(model, sc.graph_after)
    test = _evaluate.evaluate(model, sc.graph_after, sc.data_after, "test", ks=(k,), emb=emb)
    forget = _metrics.forget_metrics(model, sc.graph_after, sc.data_after, sc.forget, ks=(k,), emb=emb)
    hit = forget[f"hit@{k}"]
    return {f"recall@{k}": test[f"recall@{k}"], f"ndcg@{k}": test[f"ndcg@{k}"], f"forget_hit@{k}": hit,
            "forget_gap": abs(hit - sc.ref.retrain_hit), "seconds": seconds}


def _flat_audits(figures: dict[str, Any]) -> dict[str, float]:
    out = {}
    for kind, entry in figures.items():
        for key, value in (entry.items() if isinstance(entry, dict) else []):
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{kind}.{key}"] = float(value)
    return out


def _audits(spec: SweepSpec, sc: SeedContext, models: dict[str, Any]) -> dict[str, dict[str, float]]:
    if not spec.audit:
        return {}
    try:
        from tru_dist.audit.runner import run_audits
    except ImportError as exc:  # an optional audit dependency is missing: report, don't fail
        return {"_note": {"skipped": f"audits not importable: {exc}"}}  # type: ignore[dict-item]
    methods = {n: m for n, m in models.items() if n not in ("retrain",)}
    figures = run_audits(list(spec.audit), sc.original, models["retrain"], methods, sc.deletion, sc.cfg,
                         sc.seed, k=spec.k)
    return {name: _flat_audits(f) for name, f in figures.items()}


def final_evaluation(spec: SweepSpec, contexts: dict[str, list[SeedContext]], best: dict[str, Candidate],
                     shared: Candidate, defaults: Candidate) -> dict[str, Any]:
    """Test metrics per regime and method (means over seeds) — see the module docstring."""
    k = spec.k
    out: dict[str, Any] = {}
    for rid, seeds in contexts.items():
        per_seed: dict[str, list[dict[str, float]]] = {}
        for sc in seeds:
            models = {"retrain": sc.models["retrain"], "reverse_bpr": sc.models["reverse_bpr"]}
            entries = {n: _test_entry(models[n], sc, k, sc.baselines[n]["seconds"]) for n in models}
            for name, cand in (("tru (tuned for regime)", best[rid]), ("tru (shared config)", shared),
                               ("tru (defaults)", defaults)):
                state = tru_at_epoch(sc.original, sc.deletion,
                                     apply_sample(sc.cfg, cand.sample), cand.epochs)
                models[name] = state.model
                entries[name] = _test_entry(state.model, sc, k, state.seconds)
            retrain_recall = entries["retrain"][f"recall@{k}"]
            scale = max(abs(sc.ref.start_hit - sc.ref.retrain_hit), EPSILON)
            for e in entries.values():
                e["score"] = e[f"recall@{k}"] / max(retrain_recall, 1e-12) - e["forget_gap"] / scale
            for name, figures in _audits(spec, sc, models).items():
                if name in entries:
                    entries[name].update(figures)
            for name, e in entries.items():
                per_seed.setdefault(name, []).append(e)
        out[rid] = {name: {key: float(np.mean([e[key] for e in es if key in e]))
                           for key in es[0] if all(key in e for e in es)}
                    for name, es in per_seed.items()}
    return out


# -- writing -------------------------------------------------------------------------------------
def write_best_yaml(path: Path, base: Config, cand: Candidate, header: str) -> Path:
    """The full ``unlearn:`` section of the base config with ``cand`` applied, ready for --config."""
    cfg = apply_sample(base, cand.sample)
    cfg.unlearn.epochs = cand.epochs
    tree = {"unlearn": cfg.to_dict()["unlearn"]}
    tree["unlearn"].pop("seed", None)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(tree, sort_keys=False)
    return atomic_write_text(path, text)


def _row_cells(name: str, e: dict[str, float], k: int, audit_keys: list[str]) -> list[str]:
    return [name, fmt(e.get(f"recall@{k}")), fmt(e.get(f"ndcg@{k}")), fmt(e.get(f"forget_hit@{k}")),
            fmt(e.get("forget_gap")), fmt(e.get("score"), digits=3), fmt(e.get("seconds"), digits=2)] + [
        fmt(e.get(a), digits=3) for a in audit_keys]


def report_sweep(path: str | Path) -> Path:
    """Write ``report.md``, the plots, ``best/*.yaml`` and ``final.json``; return ``report.md``'s path."""
    sweep_dir = Path(path).resolve()
    spec, base, max_t = load_manifest(sweep_dir)
    k = spec.k
    rows = {r.id: regime_rows(sweep_dir, r.id) for r in spec.regimes}
    contexts = prepare(spec, base, sweep_dir, with_baselines=True, must_exist=True)

    best: dict[str, Candidate] = {}
    best_rows: dict[str, dict[str, Any]] = {}
    for rid, rs in rows.items():
        i = best_row([_num(r["score"]) for r in rs], [r["epoch"] for r in rs])
        best[rid], best_rows[rid] = _candidate(rs[i]), rs[i]

    # one shared configuration: best mean rank over regimes, valid only
    candidates: list[Candidate] = []
    for rs in rows.values():
        for cand in top_candidates(rs, spec.shared_candidates):
            if cand.key not in {c.key for c in candidates}:
                candidates.append(cand)
    matrix = shared_matrix(sweep_dir, candidates, contexts, k)
    chosen, mean_rank = best_mean_rank(matrix)
    shared = candidates[chosen]
    defaults = Candidate({}, max_t)

    (sweep_dir / "best").mkdir(exist_ok=True)
    for rid, cand in best.items():
        write_best_yaml(sweep_dir / "best" / f"{rid}.yaml", base, cand,
                        f"TRU tuned for regime {rid} by sweep '{spec.name}' (valid score "
                        f"{_num(best_rows[rid]['score']):.4f}, trial {best_rows[rid].get('trial_id')}).\n"
                        f"Use: tru-dist compare --config THIS_FILE ...  (model {base.model.name})")
    write_best_yaml(sweep_dir / "best" / "shared.yaml", base, shared,
                    f"TRU, one configuration for all regimes of sweep '{spec.name}' (best mean valid rank "
                    f"{mean_rank[chosen]:.2f} over {len(rows)} regimes).")

    selection = {"best": {rid: asdict(c) for rid, c in best.items()}, "shared": asdict(shared),
                 "defaults": asdict(defaults), "audit": list(spec.audit), "k": k}
    final_path = sweep_dir / "final.json"
    cached = json.loads(final_path.read_text()) if final_path.exists() else None
    if cached is not None and cached.get("selection") == json.loads(json.dumps(selection)):
        final = cached["results"]
    else:
        final = final_evaluation(spec, contexts, best, shared, defaults)
        atomic_write_json(final_path, {"selection": selection, "results": final})

    lines = [f"# Sweep `{spec.name}`", "",
             f"Model **{base.model.name}**, data `{spec.data}`, seeds {spec.seed_list}, "
             f"{spec.search} search × {spec.num_samples} samples, scheduler {spec.scheduler} "
             f"(max_t = {max_t} epochs), metric `{spec.metric}`.", "",
             "Selection uses VALID data only: utility = recall@K on retained users' valid items, forget "
             f"gap = |forget hit@{k} − Retrain's| on the deleted train pairs, and",
             "",
             f"    score = recall@{k} / Retrain's recall@{k} − gap / max(|H_0 − H_r|, {EPSILON})",
             "",
             "(H_0 = forget hit of the untouched original, H_r = Retrain's; Retrain scores 1, doing "
             "nothing ≈ 0). Test data is read once, by the final re-evaluation below.", ""]

    summary = []
    for regime in spec.regimes:
        rid, rs = regime.id, rows[regime.id]
        seeds = contexts[rid]
        utility = [float(r[f"valid_recall@{k}"]) for r in rs]
        gap = [float(r["forget_gap"]) for r in rs]
        front = pareto_front(utility, gap)
        baselines = {}
        for name in ("retrain", "reverse_bpr"):
            b = [sc.baselines[name] for sc in seeds]
            baselines[name] = (float(np.mean([abs(x["hit"] - sc.ref.retrain_hit) for x, sc in zip(b, seeds,
                                                                                             strict=True)])),
                               float(np.mean([x["recall"] for x in b])))
        br = best_rows[rid]
        n_trials = len({r["trial_id"] for r in rs})
        pareto_plot(sweep_dir / f"pareto-{rid}.png", f"{rid}: {n_trials} trials", utility, gap, front,
                    baselines, best=(float(br["forget_gap"]), float(br[f"valid_recall@{k}"])), k=k)
        lines += [f"## {rid}", "",
                  f"{regime.regime} ({regime.policy}, {regime.fraction:g}); {n_trials} trials, {len(rs)} "
                  "reported epochs.", "", f"![Pareto front {rid}](pareto-{rid}.png)", "",
                  "Pareto front (valid):", ""]
        lines.append(markdown_table(
            ["config", f"valid recall@{k}", "forget gap", "score"],
            [[_candidate(rs[i]).label(), fmt(utility[i]), fmt(gap[i]), fmt(_num(rs[i]["score"]), digits=3)]
             for i in front[:12]]))
        lines += ["", f"Best (valid score {_num(br['score']):.4f}): `{best[rid].label()}` → "
                  f"[best/{rid}.yaml](best/{rid}.yaml). reverse_bpr valid: recall "
                  f"{baselines['reverse_bpr'][1]:.4f}, gap {baselines['reverse_bpr'][0]:.4f}; Retrain valid "
                  f"recall {baselines['retrain'][1]:.4f}.", "",
                  "Test (re-evaluated once, mean over seeds):", ""]
        methods = final[rid]
        audit_keys = sorted({a for e in methods.values() for a in e if "." in a})
        lines.append(markdown_table(
            ["method", f"recall@{k}", f"ndcg@{k}", f"forget hit@{k}", "gap to Retrain", "score", "seconds"]
            + audit_keys, [_row_cells(n, e, k, audit_keys) for n, e in methods.items()]))
        lines.append("")
        tuned, one = methods["tru (tuned for regime)"]["score"], methods["tru (shared config)"]["score"]
        summary.append((rid, tuned, one, methods["reverse_bpr"]["score"]))

    lines += ["## One shared configuration vs tuning per regime", "",
              f"Candidates: the top {spec.shared_candidates} configurations of each regime, each run on "
              "every regime (valid score; rank 1 = best in that regime).", ""]
    header = ["candidate"] + [rid for rid in rows] + ["mean rank"]
    lines.append(markdown_table(header, [[("**" + c.label() + "**") if i == chosen else c.label()]
                                         + [fmt(v, digits=3) for v in matrix[i]] + [f"{mean_rank[i]:.2f}"]
                                         for i, c in enumerate(candidates)]))
    wins = sum(t > o for _, t, o, _ in summary)
    deltas = [t - o for _, t, o, _ in summary]
    lines += ["", f"Shared: `{shared.label()}` → [best/shared.yaml](best/shared.yaml).", "",
              "Test score (same formula on test recall):", ""]
    lines.append(markdown_table(
        ["regime", "tuned per regime", "shared config", "Δ (tuned − shared)", "reverse_bpr"],
        [[rid, fmt(t, digits=3), fmt(o, digits=3), fmt(t - o, digits=3), fmt(rb, digits=3)]
         for rid, t, o, rb in summary]))
    lines += ["", f"**Tuning per regime beats the shared configuration on {wins} of {len(summary)} regimes; "
              f"mean test-score difference {np.mean(deltas):+.3f}** (score units: 1 = Retrain).", ""]
    out = sweep_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
