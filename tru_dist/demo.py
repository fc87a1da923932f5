"""``tru-dist demo``: the embedded default, end to end on synthetic data in a few minutes.

1. generate the seeded synthetic multimodal dataset (planted clusters the image/text
   features reveal, power-law popularity);
2. train LightGCN (ID-only) and MGCN (multimodal) and print their test metrics — MGCN
   should win because the features carry the signal;
3. on MGCN, delete 5% of users, then 5% of interactions, and compare Retrain, ``noop`` (the
   shared deletion step with no update: what every method starts from), MMRecUn (reverse_bpr)
   and TRU on each — two regimes, because they tell different stories: deleted users' rows are
   reset by the deletion step, which already does most of the forgetting (TRU's gate then finds
   the deleted pairs on target and takes no step), while deleted interactions leave their users
   in the graph, and the methods' updates decide how close to Retrain they get. Both share one
   original (cached under ``OUT/originals``);
4. scale-out check: the same MGCN training on 2 local Ray workers (each holding half the
   users and half the item feature rows) gives the single-process metrics;
5. write ``OUT/report.md`` (+ ``OUT/compare-users`` and ``OUT/compare-interactions``, each with
   results.json and plots).
"""

from __future__ import annotations

import time
from pathlib import Path

from tru_dist.config import build_config
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json, atomic_write_text
from tru_dist.report.tables import fmt, markdown_table

#: the two deletions the demo compares methods on, with how the report names them
DELETIONS = (("users", "delete 5% of users"), ("interactions", "delete 5% of interactions"))
DEMO_METHODS = ("retrain", "noop", "reverse_bpr", "tru")
NOOP_NOTE = (
    "Every method starts from the same deletion step: the retained data's graph, and the rows of "
    "users whose whole history is deleted reset to a fresh initialisation. `noop` is that step "
    "with no update, so a method earns its place only where it is closer to Retrain than `noop` "
    "(lower retrain_distance: the share of Retrain's test recall lost plus the KS distance between "
    "the deleted pairs' ranks under the method and under Retrain).")


def tru_note(seed_file: Path) -> str:
    """One line for the report: how many update steps TRU took in this comparison and, where its
    stats say so, why (read from the comparison's per-seed JSON: the sentence follows the run)."""
    import json

    stats = json.loads(seed_file.read_text())["tru"]["stats"]
    steps = int(stats.get("steps", 0))
    if steps == 0:
        if "on target" in str(stats.get("gate_target", "")):
            return ("TRU took no update step: every deleted pair is a reset user's, which its gate "
                    "finds already on target, so TRU serves what `noop` serves.")
        return "TRU took no update step, so it serves what `noop` serves."
    note = f"TRU took {steps} update step(s) over {int(stats.get('epochs_run', 0))} gate pass(es)"
    if stats.get("utility_check", {}).get("kept") == "start":
        return note + ("; its utility check then returned the start model (the update lost more "
                       "held-out hits than it closed of the gap), so TRU serves what `noop` serves.")
    return note + "."


def _check_demo_args(out: Path, overrides: list[str] | None) -> None:
    """Refused before any work, in one line: an ``out`` holding a run or a dataset (the demo's
    folders and report were mixed in beside its files, exit 0), and ``data.*`` overrides (the
    demo runs on its embedded data; ``--data.path=X`` failed after ~40 s of the demo)."""
    from tru_dist.data.store import is_store
    from tru_dist.train.checkpoint import refuse_run_folder

    refuse_run_folder(out, "--out")
    if out.is_dir() and (is_store(out) or any(out.glob("*.inter"))):
        raise ConfigError(f"--out {out} holds a dataset; the demo writes runs and reports: pass a new folder")
    data_keys = [o for o in overrides or [] if o.lstrip("-").startswith("data.")]
    if data_keys:
        raise ConfigError(f"the demo runs on its embedded synthetic data, so {' '.join(data_keys)} would not "
                          "apply; use tru-dist train / compare --data DIR for your own data")


def run_demo(out: str | Path, overrides: list[str] | None = None, quick: bool = False) -> Path:
    from tru_dist.compare import CompareSpec, run_compare
    from tru_dist.data.source import open_data
    from tru_dist.train.evaluate import evaluate
    from tru_dist.train.trainer import fit

    out = Path(out)
    _check_demo_args(out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    spec_name = "synthetic:tiny" if quick else "synthetic"
    data = open_data(spec_name)
    print(f"[demo] synthetic data: {data.summary()}", flush=True)
    extra = ["train.epochs=30", "train.patience=5"] if quick else []
    rows, results = [], {}
    for model in ("lightgcn", "mgcn"):
        cfg = build_config(model=model, overrides=[f"data.path={spec_name}", *extra, *(overrides or [])])
        t0 = time.perf_counter()
        trained, graph, res = fit(cfg, data)
        test = evaluate(trained, graph, data, "test", tuple(cfg.eval.ks))
        results[model] = {"test": test, "valid": res.valid, "epochs": res.epochs,
                          "seconds": time.perf_counter() - t0}
        rows.append([model, fmt(test["recall@20"]), fmt(test["ndcg@20"]), str(res.epochs),
                     fmt(res.seconds_per_epoch, digits=3)])
        print(f"[demo] {model}: test recall@20 {test['recall@20']:.4f} ndcg@20 {test['ndcg@20']:.4f} "
              f"({res.epochs} epochs, {res.seconds_per_epoch:.3f}s/epoch)", flush=True)
    train_table = markdown_table(["model", "recall@20", "ndcg@20", "epochs", "s/epoch"], rows)
    print("\n" + train_table + "\n", flush=True)

    cfg = build_config(model="mgcn", overrides=[f"data.path={spec_name}", *extra, *(overrides or [])])
    unlearning = []
    for regime, what in DELETIONS:
        spec = CompareSpec(regime=regime, policy="random", fraction=0.05, methods=list(DEMO_METHODS),
                           seeds=1, originals=str(out / "originals"))
        folder = out / f"compare-{regime}"
        compare = run_compare(cfg, spec, folder, data=data)
        print(f"\n[demo] {what} (MGCN):\n{compare['table']}", flush=True)
        note = tru_note(folder / f"seed{spec.seed_list[0]}.json")
        print(f"[demo] {note}\n", flush=True)
        plots = f"Plots: [forget vs utility]({folder.name}/tradeoff.png), [time]({folder.name}/time.png)."
        unlearning += [f"## Unlearning: {what} (MGCN)", "", compare["table"], "", note, "", plots, ""]
    scale = scale_out_check(spec_name, out / "scale-out", overrides)
    report = "\n".join([
        "# tru-dist demo", "",
        f"Synthetic data ({data.n_users} users, {data.n_items} items, {data.n_interactions} interactions, "
        "image + text features with planted clusters).", "",
        "## Training (test split, chosen on valid)", "", train_table, "",
        "## Unlearning: how to read the tables", "", NOOP_NOTE, "", *unlearning,
        "## Scale-out: 2 Ray workers vs 1 process (MGCN, 5 epochs)", "", scale["table"], "",
    ])
    atomic_write_text(out / "report.md", report)
    atomic_write_json(out / "training.json", results)
    print(f"\n[demo] wrote {out / 'report.md'}")
    return out / "report.md"


def scale_out_check(spec_name: str, out: Path, overrides: list[str] | None) -> dict:
    """Train MGCN for 5 epochs in one process and on 2 local Ray workers; compare metrics.

    The two runs must agree to float tolerance: W workers compute the gradient one
    process would (DESIGN §7). Ray starts in-process (dashboard off, loopback only).
    """
    from tru_dist.distributed.launch import run_distributed

    rows, valid = [], {}
    for workers in (1, 2):
        cfg = build_config(model="mgcn", overrides=[
            f"data.path={spec_name}", "train.epochs=5", "train.patience=0",
            f"dist.workers={workers}", "dist.address=local", *(overrides or [])])
        t0 = time.perf_counter()
        metrics = run_distributed("train", cfg, out_dir=str((out / f"w{workers}").resolve()))
        valid[workers] = metrics["valid"]["recall@20"]
        rows.append([str(workers), fmt(metrics["valid"]["recall@20"], digits=6),
                     fmt(metrics["test"]["recall@20"], digits=6), fmt(time.perf_counter() - t0, digits=1)])
        print(f"[demo] MGCN on {workers} worker(s): valid recall@20 {valid[workers]:.6f}", flush=True)
    diff = abs(valid[1] - valid[2])
    print(f"[demo] |W=2 - W=1| valid recall@20 = {diff:.2e}", flush=True)
    table = markdown_table(["workers", "valid recall@20", "test recall@20", "wall s (incl. Ray start)"], rows)
    return {"table": table, "abs_diff": diff}
