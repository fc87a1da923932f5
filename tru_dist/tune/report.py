"""``tru-dist report sweep PATH``: what the sweep found for each method, and whether it holds on test.

From a sweep folder (:mod:`tru_dist.tune.sweep`) it writes ``report.md`` and:

* ``pareto-<method>-<regime>.png`` — every reported (trial, epoch) as valid recall@K vs forget
  gap, the Pareto front over them, reverse_bpr and Retrain marked (valid data only);
* ``best/<method>-<regime>.yaml`` — the best configuration per method and regime (highest
  valid score over all (trial, epoch) rows, ties to fewer epochs; the epoch becomes
  ``unlearn.epochs``), the full ``unlearn:`` block, ready for ``--config``;
* ``best/<method>-shared.yaml`` — ONE configuration per method for all regimes: the top
  ``shared_candidates`` configurations of every regime are each run on every regime
  (valid), ranked per regime by score, and the best mean rank wins (ranks, not scores,
  so that no regime's scale dominates);
* ``tuned/<method>-<regime>.yaml`` — (re)written by :func:`tru_dist.tune.export.write_tuned`:
  the per-regime best in the format ``tru-dist compare --tuned`` reads;
* ``final.json`` — the final re-evaluation, the only place test data is read: per regime
  and seed, FRESH runs of every method with its regime's best config, with its shared
  config and with the base config's defaults (reverse_bpr's defaults ARE the untuned
  ``reverse_bpr`` row, trained before the sweep, so they are not run twice), on the same
  forget set as the sweep, next to Retrain and reverse_bpr: test recall/ndcg@K of the
  retained users, forget hit@K, gap to Retrain, the test trade-off score, seconds, and the
  audits named in ``audit`` when their module imports. It runs once: a later report on
  the same selection reuses ``final.json``.

The report answers "does tuning per regime beat one shared configuration, and by how much"
per method, with the test score of both per regime and their difference. The test rows
are on the sweep's *tuning* seeds; ``tru-dist compare --tuned <sweep>/tuned`` is where
methods are compared, on reporting seeds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tru_dist.config import Config
from tru_dist.io_utils import atomic_write_json, atomic_write_text
from tru_dist.report.tables import fmt, markdown_table
from tru_dist.train import evaluate as _evaluate
from tru_dist.tune.context import SeedContext, prepare
from tru_dist.tune.epochs import method_at_epoch
from tru_dist.tune.export import cost_shares, exported_regimes, write_tuned
from tru_dist.tune.manifest import load_manifest
from tru_dist.tune.objective import EPSILON, epoch_metrics, valid_point
from tru_dist.tune.plots import pareto_plot
from tru_dist.tune.results import (
    Candidate,
    best_candidate,
    candidate,
    experiment_rows,
    n_trials,
    num,
    top_candidates,
)
from tru_dist.tune.select import best_mean_rank, pareto_front
from tru_dist.tune.space import apply_sample
from tru_dist.tune.spec import SweepSpec
from tru_dist.unlearn import metrics as _metrics

#: the untuned baseline trained with the shared context; reverse_bpr with the base config
UNTUNED = "reverse_bpr"


# -- valid and test evaluation -----------------------------------------------------------------------
def valid_score(method: str, cand: Candidate, seeds: list[SeedContext], k: int) -> float:
    """The sweep's valid score of ``method`` with ``cand`` on one regime (a fresh run per seed)."""
    points = []
    for sc in seeds:
        cfg = apply_sample(sc.cfg, cand.sample)
        state = method_at_epoch(method, sc.original, sc.deletion, cfg, cand.epochs)
        points.append(valid_point(state.model, sc.graph_after, sc.data_after, sc.forget, k))
    return epoch_metrics(points, [sc.ref for sc in seeds], k)["score"]


def shared_matrix(sweep_dir: Path, method: str, candidates: list[Candidate],
                  contexts: dict[str, list[SeedContext]], k: int) -> list[list[float]]:
    """``[candidate][regime]`` valid scores of ``method``, cached in ``shared_scores.json``
    (valid runs only)."""
    path = sweep_dir / "shared_scores.json"
    cache: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    matrix = []
    for cand in candidates:
        row = []
        for rid, seeds in contexts.items():
            key = f"{method}|{rid}|{cand.key}"
            if key not in cache:
                cache[key] = valid_score(method, cand, seeds, k)
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


def labels(method: str) -> list[str]:
    """The final table's rows for one method (see the module docstring)."""
    names = [f"{method} (tuned for regime)", f"{method} (shared config)"]
    return names if method == UNTUNED else names + [f"{method} (defaults)"]


def final_evaluation(spec: SweepSpec, contexts: dict[str, list[SeedContext]],
                     best: dict[tuple[str, str], Candidate], shared: dict[str, Candidate],
                     defaults: Candidate) -> dict[str, Any]:
    """Test metrics per regime and method (means over seeds) — see the module docstring."""
    k = spec.k
    out: dict[str, Any] = {}
    for rid, seeds in contexts.items():
        per_seed: dict[str, list[dict[str, float]]] = {}
        for sc in seeds:
            models = {"retrain": sc.models["retrain"], UNTUNED: sc.models[UNTUNED]}
            entries = {n: _test_entry(models[n], sc, k, sc.baselines[n]["seconds"]) for n in models}
            for method in spec.spaces:
                runs = zip(labels(method), (best[(method, rid)], shared[method], defaults), strict=False)
                for name, cand in runs:
                    state = method_at_epoch(method, sc.original, sc.deletion,
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
def write_best_yaml(path: Path, base: Config, method: str, cand: Candidate, header: str) -> Path:
    """The full ``unlearn:`` section of the base config with ``cand`` applied and
    ``unlearn.method`` set, ready for ``--config``."""
    cfg = apply_sample(base, cand.sample)
    cfg.unlearn.epochs = cand.epochs
    cfg.unlearn.method = method
    tree = {"unlearn": cfg.to_dict()["unlearn"]}
    tree["unlearn"].pop("seed", None)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(tree, sort_keys=False)
    return atomic_write_text(path, text)


def _row_cells(name: str, e: dict[str, float], k: int, audit_keys: list[str]) -> list[str]:
    return [name, fmt(e.get(f"recall@{k}")), fmt(e.get(f"ndcg@{k}")), fmt(e.get(f"forget_hit@{k}")),
            fmt(e.get("forget_gap")), fmt(e.get("score"), digits=3), fmt(e.get("seconds"), digits=2)] + [
        fmt(e.get(a), digits=3) for a in audit_keys]


def report_sweep(path: str | Path) -> Path:
    """Write ``report.md``, the plots, ``best/*.yaml``, ``tuned/*.yaml`` and ``final.json``;
    return ``report.md``'s path."""
    sweep_dir = Path(path).resolve()
    spec, base, max_t = load_manifest(sweep_dir)
    k = spec.k
    methods = list(spec.spaces)
    rows = {(m, r.id): experiment_rows(sweep_dir, m, r.id) for m in methods for r in spec.regimes}
    contexts = prepare(spec, base, sweep_dir, with_baselines=True, must_exist=True)
    write_tuned(sweep_dir, spec, base)
    costs = cost_shares(spec, sweep_dir)

    best: dict[tuple[str, str], Candidate] = {}
    best_rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rs in rows.items():
        best[key], best_rows[key] = best_candidate(rs)

    # one shared configuration per method: best mean rank over regimes, valid only
    shared: dict[str, Candidate] = {}
    shared_tables: dict[str, tuple[list[Candidate], list[list[float]], int, Any]] = {}
    for method in methods:
        candidates: list[Candidate] = []
        for r in spec.regimes:
            for cand in top_candidates(rows[(method, r.id)], spec.shared_candidates):
                if cand.key not in {c.key for c in candidates}:
                    candidates.append(cand)
        matrix = shared_matrix(sweep_dir, method, candidates, contexts, k)
        chosen, mean_rank = best_mean_rank(matrix)
        shared[method] = candidates[chosen]
        shared_tables[method] = (candidates, matrix, chosen, mean_rank)
    defaults = Candidate({}, max_t)

    (sweep_dir / "best").mkdir(exist_ok=True)
    for (method, rid), cand in best.items():
        br = best_rows[(method, rid)]
        write_best_yaml(sweep_dir / "best" / f"{method}-{rid}.yaml", base, method, cand,
                        f"{method} tuned for regime {rid} by sweep '{spec.name}' (valid score "
                        f"{num(br['score']):.4f}, trial {br.get('trial_id')}).\n"
                        f"Use: tru-dist unlearn --config THIS_FILE ...  (model {base.model.name}); for "
                        f"compare pass --tuned {sweep_dir / 'tuned'}")
    for method, cand in shared.items():
        _, _, chosen, mean_rank = shared_tables[method]
        write_best_yaml(sweep_dir / "best" / f"{method}-shared.yaml", base, method, cand,
                        f"{method}, one configuration for all regimes of sweep '{spec.name}' (best mean "
                        f"valid rank {mean_rank[chosen]:.2f} over {len(spec.regimes)} regimes).")

    selection = {"best": {f"{m}|{rid}": asdict(c) for (m, rid), c in best.items()},
                 "shared": {m: asdict(c) for m, c in shared.items()},
                 "defaults": asdict(defaults), "audit": list(spec.audit), "k": k}
    final_path = sweep_dir / "final.json"
    cached = json.loads(final_path.read_text()) if final_path.exists() else None
    if cached is not None and cached.get("selection") == json.loads(json.dumps(selection)):
        final = cached["results"]
    else:
        final = final_evaluation(spec, contexts, best, shared, defaults)
        atomic_write_json(final_path, {"selection": selection, "results": final})

    lines = [f"# Sweep `{spec.name}`", "",
             f"Model **{base.model.name}**, data `{spec.data}`, tuning seeds {spec.seed_list}, methods "
             f"{', '.join(methods)}, each with {spec.search} search × {spec.num_samples} samples, scheduler "
             f"{spec.scheduler} (max_t = {max_t} epochs), metric `{spec.metric}`.", "",
             "Selection uses VALID data only: utility = recall@K on retained users' valid items, forget "
             f"gap = |forget hit@{k} − Retrain's| on the deleted train pairs, and",
             "",
             f"    score = recall@{k} / Retrain's recall@{k} − gap / max(|H_0 − H_r|, {EPSILON})",
             "",
             "(H_0 = forget hit of the untouched original, H_r = Retrain's; Retrain scores 1, doing "
             "nothing ≈ 0). Test data is read once, by the final re-evaluation below.", "",
             "## Budget per method (equal by construction)", ""]
    lines.append(markdown_table(
        ["method", "regime", "trials", "reported epochs", "best valid score", "tuning seconds"],
        [[m, rid, str(n_trials(rows[(m, rid)])), str(len(rows[(m, rid)])),
          fmt(num(best_rows[(m, rid)]["score"]), digits=3), fmt(costs[(m, rid)]["seconds"], digits=1)]
         for (m, rid) in rows]))
    lines += ["", "Tuned files for `tru-dist compare --tuned`: [tuned/](tuned/) (one per method and "
              "plain regime; tuning seconds = the trials' wall time + an equal share of Retrain and of "
              "the originals)."]
    chosen, skipped = exported_regimes(spec)
    if skipped:
        lines.append("Not exported (an earlier regime of the same kind gives its file): " + ", ".join(
            f"{r.id} (→ {chosen[r.regime].id})" for r in skipped) + ".")
    lines.append("")

    summary = []
    for regime in spec.regimes:
        rid = regime.id
        seeds = contexts[rid]
        baselines = {}
        for name in ("retrain", UNTUNED):
            b = [sc.baselines[name] for sc in seeds]
            baselines[name] = (float(np.mean([abs(x["hit"] - sc.ref.retrain_hit) for x, sc in zip(b, seeds,
                                                                                             strict=True)])),
                               float(np.mean([x["recall"] for x in b])))
        rb_gap, rb_recall = baselines[UNTUNED]
        lines += [f"## {rid}", "", f"{regime.regime} ({regime.policy}, {regime.fraction:g}). reverse_bpr "
                  f"(base config) valid: recall {rb_recall:.4f}, gap {rb_gap:.4f}; "
                  f"Retrain valid recall {baselines['retrain'][1]:.4f}.", ""]
        for method in methods:
            rs, br, cand = rows[(method, rid)], best_rows[(method, rid)], best[(method, rid)]
            utility = [float(r[f"valid_recall@{k}"]) for r in rs]
            gap = [float(r["forget_gap"]) for r in rs]
            front = pareto_front(utility, gap)
            png = f"pareto-{method}-{rid}.png"
            pareto_plot(sweep_dir / png, f"{method}, {rid}: {n_trials(rs)} trials", utility, gap, front,
                        baselines, best=(float(br["forget_gap"]), float(br[f"valid_recall@{k}"])), k=k)
            lines += [f"### {method}", "", f"{n_trials(rs)} trials, {len(rs)} reported epochs.", "",
                      f"![Pareto front {method} {rid}]({png})", "", "Pareto front (valid):", ""]
            lines.append(markdown_table(
                ["config", f"valid recall@{k}", "forget gap", "score"],
                [[candidate(rs[i]).label(), fmt(utility[i]), fmt(gap[i]), fmt(num(rs[i]["score"]), digits=3)]
                 for i in front[:12]]))
            lines += ["", f"Best (valid score {num(br['score']):.4f}): `{cand.label()}` → "
                      f"[best/{method}-{rid}.yaml](best/{method}-{rid}.yaml).", ""]
        lines += ["### Test (re-evaluated once, mean over seeds)", ""]
        entries = final[rid]
        audit_keys = sorted({a for e in entries.values() for a in e if "." in a})
        lines.append(markdown_table(
            ["method", f"recall@{k}", f"ndcg@{k}", f"forget hit@{k}", "gap to Retrain", "score", "seconds"]
            + audit_keys, [_row_cells(n, e, k, audit_keys) for n, e in entries.items()]))
        lines.append("")
        for method in methods:
            tuned_name, shared_name = labels(method)[:2]
            summary.append((method, rid, entries[tuned_name]["score"], entries[shared_name]["score"]))

    lines += ["## One shared configuration vs tuning per regime", "",
              f"Candidates per method: the top {spec.shared_candidates} configurations of each regime, each "
              "run on every regime (valid score; rank 1 = best in that regime).", ""]
    for method in methods:
        candidates, matrix, chosen, mean_rank = shared_tables[method]
        header = ["candidate"] + [r.id for r in spec.regimes] + ["mean rank"]
        lines += [f"### {method}", ""]
        lines.append(markdown_table(header, [[("**" + c.label() + "**") if i == chosen else c.label()]
                                             + [fmt(v, digits=3) for v in matrix[i]] + [f"{mean_rank[i]:.2f}"]
                                             for i, c in enumerate(candidates)]))
        lines += ["", f"Shared: `{shared[method].label()}` → "
                  f"[best/{method}-shared.yaml](best/{method}-shared.yaml).", ""]
    lines += ["Test score (same formula on test recall):", ""]
    lines.append(markdown_table(
        ["method", "regime", "tuned per regime", "shared config", "Δ (tuned − shared)"],
        [[m, rid, fmt(t, digits=3), fmt(o, digits=3), fmt(t - o, digits=3)] for m, rid, t, o in summary]))
    lines.append("")
    for method in methods:
        mine = [(t, o) for m, _, t, o in summary if m == method]
        wins = sum(t > o for t, o in mine)
        lines.append(f"**{method}: tuning per regime beats the shared configuration on {wins} of {len(mine)} "
                     f"regimes; mean test-score difference {np.mean([t - o for t, o in mine]):+.3f}** "
                     "(score units: 1 = Retrain).")
        lines.append("")
    out = sweep_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
