"""``tru-dist compare``: every method on the same forget set, judged against Retrain.

Per seed s (``train.seed = unlearn.seed = s``):

1. train the original model once on D (early stopping on valid);
2. draw the forget set D_f with the regime (seeded by s); D_r = D \\ D_f, graph rebuilt
   from D_r's train edges (every affected degree renormalised);
3. run each method on a copy of the original (Retrain trains from scratch on D_r);
4. evaluate each model on the retained data: utility = full-ranking metrics on retained
   users' test items; forget metrics = hit@K / rank percentile of the deleted train pairs
   with the user's retained history masked; agreement with Retrain = mean top-20 Jaccard
   over test users and Spearman correlation of the forget pairs' ranks;
5. optionally the audits (membership inference, backdoor).

Results are averaged over seeds (mean and std) into ``results.json`` with an entry
``original`` for the model before deletion; ``report.md`` holds the tables and points to
the plots (trade-off and time). Hyperparameters come from the config; nothing here
looks at test metrics to choose anything.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tru_dist.config import Config
from tru_dist.io_utils import atomic_write_json, atomic_write_text
from tru_dist.report.tables import audit_table, comparison_table


@dataclass
class CompareSpec:
    regime: str = "users"
    policy: str = "random"
    fraction: float = 0.05
    methods: list[str] = field(default_factory=lambda: ["retrain", "reverse_bpr", "tru"])
    seeds: int | list[int] = 3
    audits: list[str] = field(default_factory=list)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _seeded(cfg: Config, seed: int) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    cfg.unlearn.seed = seed
    return cfg


def hold_out_users(data, fraction: float, seed: int):
    """Relabel every row of a seeded ``fraction`` of users as TEST, so no model trains on them.

    The user-level membership attack needs non-member users with a known history; those
    users are exactly that. Returns (data, held-out user ids). Utility is then measured on
    the other users only (cold users would only add zeros to every method alike).
    """
    from dataclasses import replace

    from tru_dist.data.dataset import TEST, TRAIN

    rng = np.random.default_rng(seed + 7919)
    trained = np.unique(data.users[data.labels == TRAIN])
    n = max(1, int(round(fraction * len(trained))))
    held = np.sort(rng.choice(trained, size=n, replace=False)).astype(np.int64)
    labels = data.labels.copy()
    labels[np.isin(data.users, held)] = TEST
    return replace(data, labels=labels), held


def _log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_seed(cfg: Config, spec: CompareSpec, seed: int, data=None) -> dict:
    """One seed of the comparison: returns {method: {test, forget, agreement, seconds, ...}}."""
    from tru_dist.data.regimes import forget_set
    from tru_dist.data.source import open_data
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.train.trainer import fit
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.metrics import agreement, forget_metrics

    cfg = _seeded(cfg, seed)
    data = data if data is not None else open_data(cfg.data.path)
    if spec.regime == "poison" and "poison" not in data.meta:
        from tru_dist.data.poison import inject_poison

        data = inject_poison(data, fake_user_fraction=spec.fraction, seed=seed)
    held_out = None
    if "user_mia" in spec.audits:
        data, held_out = hold_out_users(data, 0.05, seed)
    t0 = time.perf_counter()
    original, graph, train_result = fit(cfg, data)
    original_seconds = time.perf_counter() - t0
    _log(f"seed {seed}: original {cfg.model.name} trained in {original_seconds:.1f}s "
         f"({train_result.epochs} epochs, best {train_result.best_epoch})")

    forget = forget_set(data, spec.regime, spec.fraction, seed, policy=spec.policy)
    data_after = data.without_pairs(forget.users, forget.items)
    graph_after = graph.without_edges(forget.train_users, forget.train_items)
    ks = tuple(cfg.eval.ks)
    # utility users: everyone the original trained on and Retrain still serves
    scored = None if held_out is None else np.setdiff1d(np.arange(data.n_users), held_out)

    models: dict[str, object] = {"original": original}
    out: dict[str, dict] = {}
    names = list(spec.methods)
    if "retrain" in names:  # Retrain first: every other method is compared with it
        names.remove("retrain")
        names.insert(0, "retrain")
    for name in names:
        method = get_method(name)
        result = method.unlearn(original, graph_after, data_after, forget, cfg)  # methods copy it
        models[name] = result.model
        out[name] = {"seconds": result.seconds, "stats": result.stats}
        _log(f"seed {seed}: {name} done in {result.seconds:.2f}s")
    out["original"] = {"seconds": original_seconds, "stats": {}}

    retrain = models.get("retrain")
    retrain_emb = eval_embeddings(retrain, graph_after) if retrain is not None else None
    for name, model in models.items():
        # the original serves with the graph it was trained on; every unlearned model with D_r's
        g = graph if name == "original" else graph_after
        emb = eval_embeddings(model, g)  # one propagation per model for all its metrics
        entry = out[name]
        entry["test"] = evaluate(model, g, data_after, "test", ks, users=scored, emb=emb)
        entry["valid"] = evaluate(model, g, data_after, "valid", ks, users=scored, emb=emb)
        entry["forget"] = forget_metrics(model, g, data_after, forget, ks, emb=emb)
        if retrain is not None:
            entry["agreement"] = agreement(model, retrain, g, data_after, forget, retrain_graph=graph_after,
                                           emb=emb, retrain_emb=retrain_emb)
    if retrain is not None:
        for entry in out.values():
            entry["speedup_vs_retrain"] = out["retrain"]["seconds"] / max(entry["seconds"], 1e-9)
        out["original"]["speedup_vs_retrain"] = None

    if spec.audits:
        from tru_dist.audit.runner import run_audits

        methods = {n: m for n, m in models.items() if n not in ("original", "retrain")}
        audits = run_audits(spec.audits, original, retrain, methods, graph, graph_after, data, data_after,
                            forget, cfg, seed, nonmember_users=held_out)
        for name, figures in audits.items():
            out.setdefault(name, {}).update(figures)
    out["_forget_set"] = forget.summary()
    return out


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if isinstance(v, int | float) and v is not None and not np.isnan(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals)) if len(vals) > 1 else None)


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every scalar, with ``<group>_std`` companions."""
    names = [n for n in per_seed[0] if not n.startswith("_")]
    methods: dict[str, dict] = {}
    for name in names:
        runs = [r[name] for r in per_seed if name in r]
        entry: dict = {}
        for group in {g for r in runs for g, v in r.items() if isinstance(v, dict) and g != "stats"}:
            keys = {k for r in runs for k, v in r.get(group, {}).items() if isinstance(v, int | float)}
            mean, std = {}, {}
            for k in sorted(keys):
                mean[k], std[k] = _mean_std([r.get(group, {}).get(k) for r in runs])
            entry[group] = mean
            entry[f"{group}_std"] = std
            lists = {k for r in runs for k, v in r.get(group, {}).items() if isinstance(v, list)}
            for k in lists:  # e.g. bootstrap CI: average the bounds
                arr = np.array([r[group][k] for r in runs if k in r.get(group, {})], dtype=float)
                entry[group][k] = arr.mean(0).tolist()
        for k in ("seconds", "speedup_vs_retrain"):
            entry[k], entry[f"{k}_std"] = _mean_std([r.get(k) for r in runs])
        entry["stats"] = [r.get("stats", {}) for r in runs]
        methods[name] = entry
    order = ["original", "retrain"] + [n for n in methods if n not in ("original", "retrain")]
    return {n: methods[n] for n in order if n in methods}


def write_report(out_dir: Path, results: dict) -> str:
    from tru_dist.report.plots import time_plot, tradeoff_plot

    methods = results["methods"]
    table = comparison_table(methods)
    audits = audit_table(methods)
    tradeoff_plot(methods, out_dir / "tradeoff.png")
    time_plot(methods, out_dir / "time.png")
    c = results["config"]
    lines = [
        "# tru-dist compare",
        "",
        f"model **{c['model']['name']}**, data `{c['data']['path'] or 'synthetic'}`, regime "
        f"**{results['spec']['regime']}** ({results['spec']['policy']}, {results['spec']['fraction']:.0%}), "
        f"seeds {results['spec']['seeds']} (mean ± std). Utility on retained users' test items; forget "
        "hit@20 = deleted train pairs still in the user's top-20 (retained history masked): close "
        "to Retrain is right, below it is over-forgetting.",
        "",
        table,
        "",
    ]
    if audits:
        lines += ["## Audits", "", audits, "",
                  "MIA AUC is judged against Retrain's, not against 0.5.", ""]
    lines += ["![forget vs utility](tradeoff.png)", "", "![time per method](time.png)", ""]
    text = "\n".join(lines)
    atomic_write_text(out_dir / "report.md", text)
    return table


def run_compare(cfg: Config, spec: CompareSpec, out_dir: str | Path, data=None) -> dict:
    """Run every seed, aggregate, write results.json / report.md / plots; return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in spec.seed_list:
        per_seed.append(run_seed(cfg, spec, seed, data=data))
        atomic_write_json(out_dir / f"seed{seed}.json", per_seed[-1])
    results = {
        "config": cfg.to_dict(),
        "spec": {**asdict(spec), "seeds": spec.seed_list},
        "forget_set": per_seed[0].get("_forget_set"),
        "methods": aggregate(per_seed),
    }
    atomic_write_json(out_dir / "results.json", results)
    results["table"] = write_report(out_dir, results)
    return results


def report_compare(path: str | Path) -> Path:
    """Re-write report.md and plots from an existing results.json."""
    import json

    path = Path(path)
    results = json.loads((path / "results.json").read_text())
    write_report(path, results)
    return path / "report.md"
