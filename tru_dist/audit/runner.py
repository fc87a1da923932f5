"""Run the security audits on the original, Retrain and every unlearned model.

:func:`run_audits` is what ``tru-dist compare --audit=...`` calls; every attacker is fitted
once (on the original model or a shadow model) and applied unchanged to each model, the
original with the graph it was trained on, the others with the post-deletion graph.
:func:`audit_run` audits one ``tru-dist unlearn`` output folder from the command line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tru_dist.audit.backdoor import attack_success, poison_targets, removal_note, removal_ratio
from tru_dist.audit.mia import AuditError, PairMIA
from tru_dist.audit.user_mia import UserMIA, never_trained_users
from tru_dist.data.dataset import RecDataset

AUDITS = ("mia", "user_mia", "backdoor")


def _nan_entry(note: str) -> dict:
    return {"auc": float("nan"), "note": note}


def run_audits(
    kinds: list[str],
    original,
    retrain,
    methods: dict,
    deletion,
    cfg,
    seed: int = 0,
    *,
    nonmember_users: np.ndarray | None = None,
    train_fn: Callable | None = None,
    k: int = 20,
) -> dict[str, dict]:
    """``{name: {"mia": {"auc", "ci", "n"}, "user_mia": {"auc", "ci", "n"},
    "backdoor": {"asr@20", "removal_ratio"}}}`` for ``original``, ``retrain`` (if not None)
    and every entry of ``methods``; only the requested ``kinds`` appear.

    ``nonmember_users``: never-trained users — the user MIA's non-members (default: the users
    ``data_before`` never trains on) and, when the forget set removes whole users, the pair
    MIA's (their pairs, popularity-matched);
    ``train_fn(cfg, data)`` trains the user-MIA shadow model (default: the trainer's ``fit``).
    An audit that the data cannot support gives NaN with a ``note`` instead of failing.
    ``deletion`` is the shared deletion step (:class:`tru_dist.unlearn.deletion.Deletion`).
    """
    graph_before, graph_after = deletion.graph_before, deletion.graph_after
    data_before, data_after, forget = deletion.data_before, deletion.data_after, deletion.forget
    unknown = sorted(set(kinds) - set(AUDITS))
    if unknown:
        raise AuditError(f"unknown audit(s) {', '.join(unknown)} (choose from: {', '.join(AUDITS)})")
    models: dict[str, tuple] = {"original": (original, graph_before, data_before)}
    if retrain is not None:
        models["retrain"] = (retrain, graph_after, data_after)
    models.update({n: (m, graph_after, data_after) for n, m in methods.items() if n not in models})
    out: dict[str, dict] = {name: {} for name in models}

    if "mia" in kinds:
        try:
            whole_users = len(forget.removed_users) > 0
            mia = PairMIA().fit(original, graph_before, data_before, forget, seed,
                                nonmember_users=nonmember_users if whole_users else None)
            for name, (model, graph, _) in models.items():
                out[name]["mia"] = mia.auc(model, graph, data_after)
        except AuditError as exc:
            for name in models:
                out[name]["mia"] = _nan_entry(str(exc))

    if "user_mia" in kinds:
        nonmembers = never_trained_users(data_before) if nonmember_users is None else nonmember_users
        try:
            umia = UserMIA().fit(cfg, data_before, forget.removed_users, nonmembers, seed, train_fn)
            for name, (model, graph, _) in models.items():
                out[name]["user_mia"] = umia.auc(model, graph)
        except AuditError as exc:
            for name in models:
                out[name]["user_mia"] = _nan_entry(str(exc))

    if "backdoor" in kinds and "poison" not in data_before.meta:
        for name in models:
            out[name]["backdoor"] = {f"asr@{k}": float("nan"), "removal_ratio": float("nan"),
                                     "note": "no injected poison in the data (use the poison regime)"}
    elif "backdoor" in kinds:
        targets, genuine = poison_targets(data_before)
        asr = {name: attack_success(model, graph, data, targets, genuine, k)
               for name, (model, graph, data) in models.items()}
        base = asr.get("retrain", float("nan"))
        note = removal_note(asr["original"], base) if retrain is not None else "no Retrain to compare with"
        for name, value in asr.items():
            entry = {f"asr@{k}": value, "removal_ratio": removal_ratio(asr["original"], value, base)}
            if note:
                entry["note"] = note
            out[name]["backdoor"] = entry
    return out


def _json_safe(obj):
    """NaN -> None recursively, so the written JSON is strict (``null`` for undefined figures)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _check_original_is_the_start(run_dir: Path, original: Path, request_ids: set[str]) -> None:
    """An AuditError when ``original``'s model is not the one the earliest receipt of the audited
    ``request_ids`` in ``run_dir`` started from (its ``model_before``): a sibling unlearned run
    was accepted as the baseline, and every "original" figure of the audit described another
    model. The earliest, whatever the order of the request file: requests applied over several
    receipts are audited from the model before the first."""
    from tru_dist.train.checkpoint import read_run
    from tru_dist.unlearn.ledger import DeletionLedger, state_version

    receipts = DeletionLedger(run_dir).receipts()
    receipt = next((r for r in receipts if request_ids & set(r["request_ids"])), None)
    before = receipt.get("model_before") if receipt else None
    if not isinstance(before, str) or not before:  # a receipt without model versions: nothing to check
        return
    version = state_version(read_run(original)["best_model"])
    if version != before:
        raise AuditError(f"--original {original} holds model {version[:12]}, but {run_dir} was unlearned "
                         f"from model {before[:12]} (receipt {receipt['receipt_id']}'s model_before); pass "
                         "the run it was unlearned from (its source_run in metrics.json)")


def audit_run(
    run_dir: str | Path,
    requests_path: str | Path,
    original: str | Path | None = None,
    data: RecDataset | None = None,
    kinds: list[str] | None = None,
) -> dict:
    """Audit the unlearned model of ``run_dir`` (a ``tru-dist unlearn`` output) for the
    deletion requests in ``requests_path``; writes ``run_dir/audit.json`` and returns it.

    ``original`` is the run the unlearning started from (default: ``source_run`` in
    ``run_dir/metrics.json``); ``data`` the dataset when the runs were trained in memory.
    Retrain is trained here (same config, D_r). Default audits: ``mia``, plus ``user_mia``
    when users were removed and ``backdoor`` when the data is poisoned.
    """
    from tru_dist.data.requests import read_requests, resolve_requests
    from tru_dist.io_utils import atomic_write_json
    from tru_dist.train.checkpoint import read_metrics
    from tru_dist.train.trainer import load_run
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion
    from tru_dist.unlearn.ledger import LEDGER_FILE, DeletionLedger, refuse_broken_seals, served_state

    run_dir = Path(run_dir)
    if not run_dir.is_dir():  # said as such, not as a run that names no source
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise AuditError(f"run folder {run_dir} {what}; pass the --out folder of a `tru-dist unlearn` run")
    # its receipts decide what was applied and from which model: an edited one is not audited
    refuse_broken_seals(DeletionLedger(run_dir), doing="auditing the run", writes=False)
    metrics = read_metrics(run_dir)
    original = original or metrics.get("source_run")
    if original is None:
        raise AuditError(f"{run_dir} does not say which run it was unlearned from (no source_run in "
                         "metrics.json); pass it with --original RUN")
    if Path(original).resolve() == run_dir.resolve():
        raise AuditError(f"--original {original} is the audited run itself; pass the run it was unlearned "
                         "from (its source_run in metrics.json)")
    table = read_requests(requests_path)
    if (Path(original) / LEDGER_FILE).exists():  # else: "delete users with no interactions left"
        ledger = DeletionLedger(original)
        done = [rid for rid in table["request_id"] if ledger.receipt_for(rid) is not None]
        if done:
            raise AuditError(f"request(s) {', '.join(done[:5])} were already applied in --original "
                             f"{original}; pass the run they were unlearned from (the audited run's "
                             "source_run)")
    cfg, data, graph, original_model = load_run(original, data=data)
    _, _, _, unlearned = load_run(run_dir, data=data)
    data_before, graph_before = served_state(Path(original), data, graph)
    forget = resolve_requests(data_before, table)
    missing = [rid for rid in forget.request_ids if DeletionLedger(run_dir).receipt_for(rid) is None]
    if missing:
        raise AuditError(f"request(s) {', '.join(missing[:5])} were not applied in {run_dir}; "
                         "audit the run that executed them")
    _check_original_is_the_start(run_dir, Path(original), set(forget.request_ids))
    deletion = build_deletion(data_before, graph_before, forget, reset=cfg.unlearn.reset_deleted_users)
    retrain = get_method("retrain").unlearn(original_model, deletion, cfg).model
    if kinds is None:
        kinds = ["mia"] + (["user_mia"] if len(forget.removed_users) else [])
        kinds += ["backdoor"] if "poison" in data_before.meta else []
    name = metrics.get("method", "unlearned")
    audits = run_audits(kinds, original_model, retrain, {name: unlearned}, deletion, cfg,
                        seed=cfg.unlearn.seed)
    out = _json_safe({"run": str(run_dir), "original": str(original), "requests": str(requests_path),
                      "method": name, "forget_set": forget.summary(), "audits": audits})
    atomic_write_json(run_dir / "audit.json", out)
    return out
