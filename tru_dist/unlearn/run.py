"""``tru-dist unlearn --run RUN --requests FILE --out OUT``: one ledgered deletion, the same at every W.

Two halves, so that W workers run exactly what one process runs:

* :func:`prepare` — the driver, once, before any worker starts:
  1. crash safety and replay first: orphans of a killed attempt are removed, OUT's ledger
     starts as a copy of RUN's (so every run folder lists all the deletions behind its
     model), and a batch already in the ledger is answered here — the earlier receipt and
     metrics, no worker starts — BEFORE the run's data is opened (its store may be purged by
     then), finishing a purge a killed attempt left pending. A batch RUN's own ledger holds,
     sent to a fresh OUT, is answered from RUN (nothing is written to OUT); an applied request
     id must ask for what it asked for then (``request_digests``); and new requests onto an OUT
     whose ledger holds receipts RUN's does not are refused (:func:`_check_out_continues_run`);
  2. the config: RUN's saved config < ``--config`` file (a tuned YAML; its ``tuning:`` block
     is ignored) < ``--seed`` < ``--key=value`` overrides (:func:`tru_dist.train.trainer.run_config`,
     the one config builder); ``dist.*`` comes from the command, not from how RUN was trained;
  3. the request table is resolved against the ORIGINAL data and planned against the ledger
     (:func:`plan_requests`: requests a purge already removed and pairs an earlier request
     deleted are reported as overlaps and skipped); nothing left to delete, no train pair left
     to retain, a bad request or an unknown method is a one-line error before any worker starts.
* :func:`apply_requests` — the per-rank body (in this process at W = 1, on each of W workers
  otherwise, :mod:`tru_dist.distributed.worker`): re-plans the same requests against the
  same ledger (deterministic: every rank gets the driver's plan), then
  1. the shared deletion step on this rank's shard
     (:func:`tru_dist.unlearn.ledger.apply_plan` → :func:`~tru_dist.unlearn.deletion.build_deletion`:
     D_r = original minus every deleted pair, earlier and new; fully deleted users reset);
  2. the method unlearns (``get_method(name).unlearn(model, deletion, cfg)``); valid/test
     utility on D_r and the forget metrics are computed (global: sums over ranks);
     ``seconds`` = deletion step + method;
  3. the full model is gathered (:func:`tru_dist.train.checkpoint.gather_state`) and rank 0
     writes ``OUT/checkpoint.pt`` (full tables: any W opens it; its ``data`` signature is
     the ORIGINAL data's, since the ledger says what was removed from it, and ``data_after``
     D_r's, which a purged store matches), ``metrics.json`` and — last, so a receipt means a
     complete output — the receipt. In place (RUN = OUT) the model goes to
     ``checkpoint.staged.pt`` and replaces ``checkpoint.pt`` after the receipt
     (:func:`settle_staged_checkpoint` finishes or undoes a killed attempt's). The model
     versions in the receipt hash the full state, so they do not depend on W either.
  4. With ``purge`` (rank 0) the receipt is first written with a pending purge, then the
     run's store is purged of every deleted row (:mod:`tru_dist.unlearn.purge`) and the
     receipt records what was purged; OUT then names its source model by version, not by
     path (the source run's checkpoint was trained on the deleted data).

``TRU_DIST_FAULT`` stages (:mod:`tru_dist.crashpoints`) let tests SIGKILL the process at each
step. SISA is refused here (its model is a shard ensemble, see ``compare``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tru_dist import comm as collectives
from tru_dist.config import Config
from tru_dist.crashpoints import arm_update_fault, fault_point
from tru_dist.errors import ConfigError, RequestError, TrainingError, TruDistError
from tru_dist.io_utils import atomic_write_json, remove_orphan_temps
from tru_dist.unlearn.ledger import (
    HASHES_DIR,
    LEDGER_FILE,
    PAIRS_DIR,
    SEAL,
    STAGED_CHECKPOINT,
    DeletionLedger,
    apply_plan,
    kept_receipts,
    receipt_id,
    refuse_broken_seals,
    state_version,
)

if TYPE_CHECKING:
    import pandas as pd


def _inherit_ledger(run_dir: Path, out_dir: Path) -> None:
    if run_dir.resolve() == out_dir.resolve() or (out_dir / LEDGER_FILE).exists():
        return
    if (run_dir / LEDGER_FILE).exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in (HASHES_DIR, PAIRS_DIR):
            if (run_dir / sub).is_dir():
                shutil.copytree(run_dir / sub, out_dir / sub, dirs_exist_ok=True)
        shutil.copy2(run_dir / LEDGER_FILE, out_dir / LEDGER_FILE)


def settle_staged_checkpoint(out_dir: Path) -> None:
    """Finish or undo what a killed in-place attempt (``--run X --out X``) left in ``out_dir``.

    In place, the new model is written to :data:`STAGED_CHECKPOINT` and renamed over
    ``checkpoint.pt`` only after its receipt: overwriting first let a kill between the two leave
    the updated model with no receipt, and the retry then unlearned it a second time and wrote a
    receipt whose ``model_before`` no earlier receipt had left. A staged model that the ledger's
    last receipt names is promoted (the kill came after the receipt); any other is removed (the
    kill came before it: ``checkpoint.pt`` is still the model the retry starts from)."""
    staged = out_dir / STAGED_CHECKPOINT
    if not staged.exists():
        return
    from tru_dist.train.checkpoint import load_checkpoint

    ledger = DeletionLedger(out_dir)
    receipts = ledger.receipts() if ledger.path.exists() else []
    try:
        version = state_version(load_checkpoint(staged)["best_model"])
    except Exception:  # a staged file that does not load was never named by a receipt
        version = None
    if receipts and version is not None and version == receipts[-1].get("model_after"):
        os.replace(staged, out_dir / "checkpoint.pt")
    else:
        staged.unlink()


def _check_out_continues_run(run_dir: Path, out_dir: Path, out_ledger: DeletionLedger) -> None:
    """New requests are applied to RUN's model and written to OUT with OUT's ledger: refused when
    that ledger holds receipts RUN's does not (OUT is another run's, or RUN's later state), whose
    model the write would replace while keeping their receipts (the model would then lack
    deletions its ledger lists, and a later replay would skip them)."""
    if run_dir.resolve() == out_dir.resolve():
        return
    source = DeletionLedger(run_dir)
    ours = [r["receipt_id"] for r in source.receipts()] if (run_dir / LEDGER_FILE).exists() else []
    theirs = [r["receipt_id"] for r in out_ledger.receipts()] if (out_dir / LEDGER_FILE).exists() else []
    if theirs != ours:
        extra = [r for r in theirs if r not in ours]
        raise ConfigError(f"{out_dir} already holds deletions {run_dir} does not (receipt(s) "
                          f"{', '.join(extra[:3]) or 'other'}): apply new requests to that run itself "
                          f"(--run {out_dir} --out {out_dir}, or a fresh --out), not onto {run_dir}'s model")


def _purge_store_of(run_dir: Path) -> str:
    """The store a run was trained on (``data.path`` in its checkpoint), checked purgeable."""
    from tru_dist.train.checkpoint import read_run
    from tru_dist.unlearn.purge import check_purgeable

    path = read_run(run_dir, tensors=False)["config"]["data"]["path"]
    check_purgeable(path or "synthetic")
    return path


def method_name(method: str | None, cfg: Config) -> str:
    """The canonical method name (``--method``, else ``unlearn.method`` of the config); SISA refused."""
    from tru_dist.unlearn.base import get_method

    if method is not None and not str(method).strip():  # e.g. --method "$UNSET": ran the default silently
        raise ConfigError("the method is empty; name one (e.g. --method tru) or leave it out for the "
                          f"config's unlearn.method ({cfg.unlearn.method})")
    name = get_method(method or cfg.unlearn.method).name
    if name == "sisa":
        raise ConfigError("method sisa needs its shard ensemble; evaluate it with "
                          "`tru-dist compare --methods sisa`")
    return name


def read_checked_requests(requests: str | Path,
                          expected_digest: str | None = None) -> tuple[pd.DataFrame, str]:
    """(table, digest): the request table of ``requests`` and the SHA-256 of the bytes it was
    parsed from (one read, :func:`~tru_dist.data.requests.read_requests_with_digest`). Refused in
    one line when ``expected_digest`` (the driver's; None = not checked) differs: a file rewritten
    while an unlearn ran had the model unlearn one set of requests and its receipt record another."""
    from tru_dist.data.requests import read_requests_with_digest

    table, digest = read_requests_with_digest(requests)
    if expected_digest and digest != expected_digest:
        raise RequestError(f"request file {requests} changed after this unlearn began; nothing was written "
                           "— leave the file as it is until the unlearn ends, and run it again")
    return table, digest


def plan_requests(data, table: pd.DataFrame, out_dir: Path):
    """The plan of a request table (:func:`~tru_dist.data.requests.read_requests`) against OUT's
    ledger (the same on the driver and every rank): requests a purge already removed are dropped
    and reported as overlaps, then :meth:`DeletionLedger.plan` (replay, overlaps, the new rows)."""
    from tru_dist.data.requests import resolve_requests

    ledger = DeletionLedger(out_dir)
    table, purged = ledger.drop_purged_requests(table, data)
    plan = ledger.plan(data, resolve_requests(data, table))
    return replace(plan, overlaps=purged + plan.overlaps) if purged else plan


@dataclass
class Prepared:
    """What the driver hands the workers: the config, the method and the purge settings — or
    the earlier result of a replayed batch (then nothing is to run)."""

    cfg: Config
    method: str
    store: str | None = None
    keep_versions: int = 0
    replayed: dict[str, Any] | None = None
    #: SHA-256 of the request file as the driver read it (:func:`read_checked_requests`): every
    #: rank reads that file again and checks it is the same
    requests_digest: str = ""


def prepare(run_dir: str | Path, requests: str | Path, out_dir: str | Path, *, method: str | None = None,
            config_file: str | Path | None = None, seed: int | None = None,
            overrides: list[str] | None = None, data=None, purge: bool = False,
            keep_versions: int = 0) -> Prepared | dict[str, Any]:
    """The driver's half (module docstring). Returns a :class:`Prepared`, or the earlier
    metrics and receipt (``replayed: True``) when the batch was applied before."""
    from tru_dist.data.source import open_data
    from tru_dist.train.size_warnings import unlearn_size_warnings
    from tru_dist.train.trainer import run_config
    from tru_dist.unlearn.deletion import check_retains_train, users_left_with_only_held_out

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = run_config(run_dir, config_file=config_file, seed=seed, overrides=overrides)  # bad config: now
    name = method_name(method, cfg)
    # an unlearned RUN that lost its ledger is not a fresh start; one with an edited receipt is
    # not built on (its update and purge would act on the edit)
    refuse_broken_seals(DeletionLedger(run_dir), kept_receipts(run_dir), doing="this unlearn")
    # -- crash safety and purge: checks and replay before the run's data is opened --------------
    table, digest = read_checked_requests(requests)
    store = _purge_store_of(run_dir) if purge else None
    if purge and data is not None:
        raise ConfigError("purge=True needs the run's stored data; do not pass data=")
    if out_dir.resolve() != run_dir.resolve() and (out_dir / LEDGER_FILE).exists():
        refuse_broken_seals(DeletionLedger(out_dir), doing="this unlearn")  # before settling by it
    remove_orphan_temps(out_dir)  # what a killed earlier attempt left
    settle_staged_checkpoint(out_dir)
    fresh_out = run_dir.resolve() != out_dir.resolve() and not (out_dir / LEDGER_FILE).exists()
    if fresh_out and (run_dir / LEDGER_FILE).exists():  # RUN already holds this batch: it is the answer
        source = DeletionLedger(run_dir)
        replayed = source.replay_of(list(table["request_id"]), table=table)
        if replayed is not None:  # nothing is written to OUT (the model is RUN's)
            return _replay(run_dir, source, replayed, store, keep_versions)
    _inherit_ledger(run_dir, out_dir)
    ledger = DeletionLedger(out_dir)
    earlier_receipt = ledger.replay_of(list(table["request_id"]), table=table)
    if earlier_receipt is not None:
        return _replay(out_dir, ledger, earlier_receipt, store, keep_versions)
    _check_out_continues_run(run_dir, out_dir, ledger)
    # -- the plan, checked here so that a bad batch starts no worker ------------------------------
    if data is None:
        if cfg.data.path is None:
            raise ConfigError(f"run {run_dir} was trained on in-memory data; pass that dataset (data=...)")
        data = open_data(cfg.data.path)
    plan = plan_requests(data, table, out_dir)
    if plan.replay is not None:
        return _replay(out_dir, ledger, plan.replay, None, keep_versions)
    if len(plan.forget.users) == 0:
        raise ConfigError("every pair in these requests was deleted by earlier requests "
                          f"({', '.join(o['receipt_id'] for o in plan.overlaps)}); nothing to unlearn")
    check_retains_train(data, plan.forget, plan.earlier)  # deleting everything: refused before any worker
    unlearn_size_warnings(cfg, data, name)  # e.g. gate.top_k >= n_items: logged, once
    _warn_held_out_left(users_left_with_only_held_out(data, plan.forget, plan.earlier))
    return Prepared(cfg, name, store, keep_versions, requests_digest=digest)


def _warn_held_out_left(users: np.ndarray) -> None:
    """One warning naming the users a batch leaves with held-out rows but no train pair
    (:func:`~tru_dist.unlearn.deletion.users_left_with_only_held_out`): without it their
    valid/test rows went on counting in the metrics while the model served them as new users."""
    if len(users):
        shown = ", ".join(str(int(u)) for u in users[:5]) + (", ..." if len(users) > 5 else "")
        logging.getLogger("tru_dist.unlearn").warning(
            "%d user(s) (%s) lose every train interaction but keep valid/test rows: they are reset and "
            "served as new users, and those rows still count in the valid/test metrics; to delete a "
            "user entirely, send a request with user_id only (item_id empty)", len(users), shown)


def refuse_on_every_rank(problem: TruDistError | None, device, elsewhere: TruDistError) -> None:
    """Raise ``problem`` on this rank, or ``elsewhere`` (saying another rank found one) on a rank
    that found none, on every rank as soon as one rank has a problem: a flag summed over ranks
    (on ``device``: NCCL reduces device tensors only). A rank that raised alone left the others in
    collectives and itself in the group's teardown barrier until the 300 s gloo timeout, which
    ended in a traceback (measured: W = 2, one rank reading another request file)."""
    import torch

    flag = collectives.sum_stats(torch.tensor([0.0 if problem is None else 1.0], device=device))
    if problem is not None:
        raise problem
    if float(flag.item()) > 0:
        raise elsewhere


def check_finite(model, method: str) -> None:
    """A one-line TrainingError when the update left NaN/inf parameters, before anything is
    written: a diverged update saved its checkpoint and receipt (and could purge the store), and
    the run then refused to load with no way back but a backup that never existed. At W > 1 a
    shard's user rows may be the only bad ones: every rank stops (:func:`refuse_on_every_rank`)."""
    import torch

    def diverged(names: list[str]) -> TrainingError:
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return TrainingError(f"the {method} update diverged: NaN/inf in {', '.join(names[:3])}{more}; "
                             "nothing was written — lower --unlearn.lr (or the method's step size) and run "
                             "it again")

    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    refuse_on_every_rank(diverged(bad) if bad else None, next(model.parameters()).device,
                         elsewhere=diverged(["another worker's shard"]))


def apply_requests(cfg: Config, run_dir: str | Path, requests: str | Path, method: str, out_dir: str | Path,
                   data, graph, model, *, store: str | None = None, keep_versions: int = 0,
                   expected_digest: str | None = None) -> dict[str, Any]:
    """The per-rank half (module docstring) on this rank's ``data``/``graph``/``model`` shard.

    Collective: every rank calls it. Returns the metrics written to ``OUT/metrics.json``
    (with the receipt on rank 0). The request file is read once here, and refused if it is not
    the file the driver read (``expected_digest``, :func:`read_checked_requests`): the plan and
    the receipt come from one read."""
    from tru_dist.train.checkpoint import checkpoint_path, gather_state, save_checkpoint
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.train.trainer import data_signature
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.metrics import forget_metrics

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    problem: TruDistError | None = None
    try:
        table, _ = read_checked_requests(requests, expected_digest)
        plan = plan_requests(data, table, out_dir)
        if plan.replay is not None or len(plan.forget.users) == 0:  # the driver checked; the ledger moved
            problem = ConfigError(f"the ledger in {out_dir} changed while these requests were being "
                                  "applied; nothing was written — run the unlearn again")
    except TruDistError as exc:
        problem = exc
    refuse_on_every_rank(problem, next(model.parameters()).device, elsewhere=RequestError(
        "another worker found the request file or the ledger changed after this unlearn began; nothing "
        "was written — leave them as they are, and run the unlearn again"))

    # the shared deletion step: before = original minus earlier receipts, after = minus the new pairs too
    deletion = apply_plan(data, graph, plan, reset=cfg.unlearn.reset_deleted_users)
    data_after, graph_after = deletion.data_after, deletion.graph_after
    fault_point("after-deletion")
    before = state_version(gather_state(model))  # the full state: the same version at every W
    arm_update_fault()
    result = get_method(method).unlearn(model, deletion, cfg)
    check_finite(result.model, method)
    ks = cfg.eval.ks
    graph_before = deletion.graph_before  # what the model served with before this batch
    before_emb = eval_embeddings(model, graph_before)  # one propagation per model for all its metrics
    after_emb = eval_embeddings(result.model, graph_after)
    metrics: dict[str, Any] = {
        "method": method,
        "source_run": str(run_dir.resolve()),
        "seconds": result.seconds,
        "world_size": collectives.world_size(),
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
    state = gather_state(result.model)  # collective: full tables on every rank
    if collectives.rank() != 0:
        return metrics
    model_file = checkpoint_path(out_dir, rank=0, world_size=1)
    in_place = run_dir.resolve() == out_dir.resolve()  # the old model is RUN's: replaced after the receipt
    ledger = DeletionLedger(out_dir)
    # the receipts behind this model, its own included (its id is fixed by its request ids):
    # verify-deletion compares them with the ledger, so a receipt removed from it is seen
    earlier = ledger.receipts()
    receipts_behind = [r["receipt_id"] for r in earlier] + [receipt_id(list(plan.forget.request_ids))]
    # ... and which of them carry a seal (this one will): a seal stripped off is then seen too
    sealed = [r["receipt_id"] for r in earlier if SEAL in r] + receipts_behind[-1:]
    # "data_after": the signature of D_r, which a store purged of these deletions matches
    save_checkpoint({"model": state, "best_model": state, "config": cfg.to_dict(),
                     "data": data_signature(data), "data_after": data_signature(data_after),
                     "world_size": collectives.world_size(), "rank": 0, "unlearned_by": method,
                     "ledger_receipts": receipts_behind, "sealed_receipts": sealed},
                    out_dir / STAGED_CHECKPOINT if in_place else model_file, fault="mid-model-write")
    atomic_write_json(out_dir / "metrics.json", metrics)
    fault_point("after-model-write")
    after = state_version(state)
    if after == before:  # the deletion step changed the graph only: the weights are the trained ones
        logging.getLogger("tru_dist.unlearn").warning(
            "%s left every parameter as it was (%s): the served graph drops the deleted pairs, but the "
            "weights are still those trained on them, and `tru-dist verify-deletion` reports this "
            "checkpoint as its receipt's model_before", method, result.stats.get("stop_reason")
            or "no update step changed a weight")
    receipt = ledger.commit(plan, method=method, model_before=before, model_after=after,
                            seconds=result.seconds,
                            audit={"forget_hit@20": metrics["forget"].get("hit@20"),
                                   "test_recall@20": metrics["test"].get("recall@20")},
                            extra=_pending_purge(store, keep_versions), requests=table)
    fault_point("after-receipt")
    if in_place:
        os.replace(out_dir / STAGED_CHECKPOINT, model_file)
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


def _purged_already(receipt: dict, store: str, keep_versions: int, ledger_dir: Path) -> bool:
    """Whether the receipt records its purge of ``store`` as done — then a replay has nothing to
    purge, and does not purge again: that applied the retention given now to the whole store,
    pruning superseded revisions the first run, or a later batch, kept. Refused (one line) when
    ``keep_versions`` is not the retention it was purged with: a replay is a no-op, not a way to
    change retention. False for a purge left pending by a killed run (the rerun finishes it with
    the value given now) and for a batch applied without a purge. The entry is found by the
    store's content, not only its path (:func:`~tru_dist.unlearn.purge.done_purge`): a store
    moved or renamed since (a relative ``data.path`` from a moved project folder) was purged
    again."""
    from tru_dist.unlearn.purge import done_purge

    done = done_purge(receipt, store)
    if done is None:
        return False
    kept = done.get("keep_versions")
    if isinstance(kept, int) and kept != keep_versions:
        raise ConfigError(
            f"batch {receipt['receipt_id']} was applied and purged with --keep-versions {kept}; replaying it "
            f"with --keep-versions {keep_versions} would change the store's retention, not replay it: pass "
            f"--keep-versions {kept} (or leave --purge out), or change the retention with `tru-dist data "
            f"purge --data {store} --ledger {ledger_dir} --keep-versions {keep_versions}`")
    return True


def _replay(out_dir: Path, ledger: DeletionLedger, receipt: dict, store: str | None,
            keep_versions: int) -> dict[str, Any]:
    """A batch applied before: its metrics and receipt; with a store, a purge a killed attempt
    left pending (or a batch applied without one) is done first; a purge already done is not
    run again (:func:`_purged_already`)."""
    from tru_dist.train.checkpoint import read_metrics

    metrics_path = out_dir / "metrics.json"
    earlier = read_metrics(out_dir)
    if store is not None:
        from tru_dist.unlearn.purge import complete_purge

        if not _purged_already(receipt, store, keep_versions, out_dir):
            receipt = complete_purge(store, ledger, receipt, keep_versions=keep_versions)
            if earlier:
                atomic_write_json(metrics_path, {**earlier, "receipt": receipt, "replayed": False})
    return {**earlier, "replayed": True, "receipt": receipt}
