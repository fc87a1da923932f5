"""``tru-dist unlearn --run RUN --requests FILE --method M --out OUT``: one ledgered deletion.

1. Load the trained run (``trainer.load_run``: config, ORIGINAL data from ``data.path``,
   graph, best parameters) and apply ``--key=value`` overrides to its config.
2. OUT's ledger starts as a copy of RUN's (so every run folder lists all the deletions
   behind its model); the request table is resolved against the original data and planned
   against the ledger: a batch applied before is a no-op returning the earlier receipt and
   metrics; pairs deleted by an earlier request are reported and skipped.
3. The shared deletion step (:func:`tru_dist.unlearn.deletion.build_deletion`): D_r and its
   graph = the original minus every deleted pair (earlier + new), fully deleted users reset;
   the method unlearns from it; valid/test utility on D_r and the forget metrics are
   computed. ``seconds`` = deletion step + method.
4. OUT gets ``checkpoint.pt`` (trainer layout, loadable with ``load_run``; its ``data``
   signature is the ORIGINAL data's, since the ledger says what was removed from it),
   ``metrics.json``, and — last, so a receipt means a complete output — the receipt.
5. With ``purge=True`` the receipt is first written with a pending purge, then the run's
   store is purged of every deleted row (:mod:`tru_dist.unlearn.purge`) and the receipt
   records what was purged; OUT then names its source model by version, not by path (the
   source run's checkpoint was trained on the deleted data).

Crash safety: orphans of a killed attempt are removed first, and a batch already in the
ledger is replayed BEFORE the run is loaded (its store may be purged by then), finishing a
purge the killed attempt left pending; ``TRU_DIST_FAULT`` stages (:mod:`tru_dist.crashpoints`)
let tests SIGKILL the process at each step.

Single process (W = 1); SISA is refused here (its model is a shard ensemble, see ``compare``).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from tru_dist.config import Config, parse_overrides
from tru_dist.crashpoints import arm_update_fault, fault_point
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_write_json, remove_orphan_temps
from tru_dist.unlearn.ledger import (
    HASHES_DIR,
    LEDGER_FILE,
    PAIRS_DIR,
    DeletionLedger,
    apply_plan,
    model_version,
)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _inherit_ledger(run_dir: Path, out_dir: Path) -> None:
    if run_dir.resolve() == out_dir.resolve() or (out_dir / LEDGER_FILE).exists():
        return
    if (run_dir / LEDGER_FILE).exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in (HASHES_DIR, PAIRS_DIR):
            if (run_dir / sub).is_dir():
                shutil.copytree(run_dir / sub, out_dir / sub, dirs_exist_ok=True)
        shutil.copy2(run_dir / LEDGER_FILE, out_dir / LEDGER_FILE)


def _purge_store_of(run_dir: Path) -> str:
    """The store a run was trained on (``data.path`` in its checkpoint), checked purgeable."""
    from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint
    from tru_dist.unlearn.purge import check_purgeable

    path = load_checkpoint(checkpoint_path(run_dir, rank=0, world_size=1))["config"]["data"]["path"]
    check_purgeable(path or "synthetic")
    return path


def run_unlearn(run_dir: str | Path, requests: str | Path, method: str, out_dir: str | Path,
                overrides: list[str] | None = None, data=None, purge: bool = False,
                keep_versions: int = 0) -> dict[str, Any]:
    """Apply one request file to a trained run; returns the metrics written to OUT/metrics.json
    (``replayed: True`` and the earlier receipt when the requests were applied before).
    ``purge``: then purge the run's store, keeping ``keep_versions`` superseded versions."""
    import json

    from tru_dist.data.requests import read_requests, resolve_requests
    from tru_dist.train.checkpoint import checkpoint_path, clone_state, save_checkpoint
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.train.trainer import data_signature, load_run
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.metrics import forget_metrics

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    name = get_method(method).name
    if name == "sisa":
        raise ConfigError("method sisa needs its shard ensemble; evaluate it with "
                          "`tru-dist compare --methods sisa`")
    # -- crash safety and purge (issue 15): checks and replay before the run is loaded ------
    if overrides:
        parse_overrides(list(overrides))  # a bad override fails before anything is written
    table = read_requests(requests)
    store = _purge_store_of(run_dir) if purge else None
    if purge and data is not None:
        raise ConfigError("purge=True needs the run's stored data; do not pass data=")
    remove_orphan_temps(out_dir)  # what a killed earlier attempt left
    _inherit_ledger(run_dir, out_dir)
    ledger = DeletionLedger(out_dir)
    earlier_receipt = ledger.replay_of(list(table["request_id"]))
    if earlier_receipt is not None:
        return _replay(out_dir, ledger, earlier_receipt, store, keep_versions)
    # -- end ----------------------------------------------------------------------------------
    cfg, data, graph, model = load_run(run_dir, data=data)
    if overrides:
        cfg = Config.from_dict(_merge(cfg.to_dict(), parse_overrides(list(overrides))))
    table, purged = ledger.drop_purged_requests(table, data)  # requests whose data a purge removed
    forget = resolve_requests(data, table)
    plan = ledger.plan(data, forget)
    plan = replace(plan, overlaps=purged + plan.overlaps) if purged else plan
    if plan.replay is not None:
        metrics_path = out_dir / "metrics.json"
        earlier = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return {**earlier, "replayed": True, "receipt": plan.replay}
    if len(plan.forget.users) == 0:
        raise ConfigError("every pair in these requests was deleted by earlier requests "
                          f"({', '.join(o['receipt_id'] for o in plan.overlaps)}); nothing to unlearn")

    # the shared deletion step: before = original minus earlier receipts, after = minus the new pairs too
    deletion = apply_plan(data, graph, plan, reset=cfg.unlearn.reset_deleted_users)
    data_after, graph_after = deletion.data_after, deletion.graph_after
    fault_point("after-deletion")
    before = model_version(model)
    arm_update_fault()
    result = get_method(name).unlearn(model, deletion, cfg)
    ks = cfg.eval.ks
    graph_before = deletion.graph_before  # what the model served with before this batch
    before_emb = eval_embeddings(model, graph_before)  # one propagation per model for all its metrics
    after_emb = eval_embeddings(result.model, graph_after)
    metrics: dict[str, Any] = {
        "method": name,
        "source_run": str(Path(run_dir).resolve()),
        "seconds": result.seconds,
        # the model before the deletion, served with its own graph, on the same retained targets
        "before": {"test": evaluate(model, graph_before, data_after, "test", ks, emb=before_emb),
                   "forget": forget_metrics(model, graph_before, data_after, plan.forget, ks,
                                            emb=before_emb)},
        "valid": evaluate(result.model, graph_after, data_after, "valid", ks, emb=after_emb),
        "test": evaluate(result.model, graph_after, data_after, "test", ks, emb=after_emb),
        "forget": forget_metrics(result.model, graph_after, data_after, plan.forget, ks, emb=after_emb),
        "forget_set": plan.forget.summary(),
        "overlaps": plan.overlaps,
        "decisions": result.stats,
        "config": cfg.to_dict(),
    }
    if store is not None:  # a purged store no longer holds the source run's data: name it by version
        metrics["source_model"] = before
        del metrics["source_run"]
    signature = data_signature(data)
    state = clone_state(result.model)
    # "data_after": the signature of D_r, which a store purged of these deletions matches
    save_checkpoint({"model": state, "best_model": state, "config": cfg.to_dict(), "data": signature,
                     "data_after": data_signature(data_after), "world_size": 1, "rank": 0,
                     "unlearned_by": name},
                    checkpoint_path(out_dir, rank=0, world_size=1), fault="mid-model-write")
    atomic_write_json(out_dir / "metrics.json", metrics)
    fault_point("after-model-write")
    receipt = ledger.commit(plan, method=name, model_before=before, model_after=result.model,
                            seconds=result.seconds,
                            audit={"forget_hit@20": metrics["forget"].get("hit@20"),
                                   "test_recall@20": metrics["test"].get("recall@20")},
                            extra=_pending_purge(store, keep_versions))
    if store is not None:
        from tru_dist.unlearn.purge import complete_purge

        receipt = complete_purge(store, ledger, receipt, keep_versions=keep_versions)
    metrics["receipt"] = receipt
    metrics["replayed"] = False
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


# -- purge and replay (issue 15) -------------------------------------------------------------
def _pending_purge(store: str | None, keep_versions: int) -> dict | None:
    """The receipt's ``purge`` entry before the purge starts (None without a purge)."""
    if store is None:
        return None
    from tru_dist.data.store import read_meta, revision
    from tru_dist.unlearn.purge import purge_record

    rev = revision(read_meta(Path(store)))
    return {"purge": [purge_record(store, None, revision_before=rev, keep_versions=keep_versions)]}


def _replay(out_dir: Path, ledger: DeletionLedger, receipt: dict, store: str | None,
            keep_versions: int) -> dict[str, Any]:
    """A batch applied before: its metrics and receipt; with a store, the purge is (re)done
    first — it finishes a purge a killed attempt left pending and is a no-op otherwise."""
    import json

    metrics_path = out_dir / "metrics.json"
    earlier = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if store is not None:
        from tru_dist.unlearn.purge import complete_purge

        receipt = complete_purge(store, ledger, receipt, keep_versions=keep_versions)
        if earlier:
            atomic_write_json(metrics_path, {**earlier, "receipt": receipt, "replayed": False})
    return {**earlier, "replayed": True, "receipt": receipt}
