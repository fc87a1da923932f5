"""The deletion ledger: every request applied once, every application receipted.

A run directory holds ``ledger.jsonl`` (one JSON receipt per line, rewritten atomically on
every commit through :mod:`tru_dist.io_utils`) and ``ledger_pairs/<receipt_id>.npy`` (the
(user, item) pairs that receipt deleted, int64 (n, 2)). A receipt records:

    receipt_id, request_ids, regime, removed (interactions / train / valid / test /
    removed_users counts), overlaps, model_before, model_after (content hashes of the
    state_dict, :func:`model_version`), method, seconds, timestamp (UTC ISO-8601), audit
    (optional figures), pairs_file, pairs_sha256.

Semantics (what makes retries safe):

* *Replay.* A request batch whose ids are ALL in the ledger is a no-op:
  :meth:`DeletionLedger.plan` returns the earlier receipt (``plan.replay``) and nothing is
  deleted or unlearned again. A batch mixing applied and new ids is refused (one-line
  RequestError naming both), because its rows cannot be split by request.
* *Overlap.* A NEW request touching a pair an earlier request already deleted is reported
  (``plan.overlaps``: the earlier receipt, its request ids, how many pairs) and those pairs
  are dropped from the new forget set — they are gone already; the rest is applied.
* *Exactly-once recording.* Nothing is written until :meth:`DeletionLedger.commit`, after
  the model has been unlearned: a crash in between leaves no receipt, so the retry redoes
  the whole request (at-least-once execution, exactly-once receipt).

:func:`apply_plan` turns a dataset, its graph and a plan into the shared deletion step
(:func:`tru_dist.unlearn.deletion.build_deletion`): the before-state without every pair
deleted by earlier receipts, the after-state without the new ones too (graph renormalised,
provenance updated — see that module). :func:`apply_deletion` is the (data_after,
graph_after) pair of it, for readers that only need what a run serves with.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tru_dist.data.dataset import SPLIT_LABELS, TRAIN, RecDataset
from tru_dist.data.requests import ForgetSet
from tru_dist.errors import RequestError
from tru_dist.io_utils import atomic_write, atomic_write_text

LEDGER_FILE = "ledger.jsonl"
PAIRS_DIR = "ledger_pairs"


def model_version(model: torch.nn.Module) -> str:
    """sha256 over the state_dict: every entry's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def receipt_id(request_ids: list[str]) -> str:
    """A stable id for a request batch: sha256 of its sorted request ids (16 hex digits)."""
    return hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()[:16]


def _keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64)


@dataclass(frozen=True)
class DeletionPlan:
    """What applying a forget set means given the ledger.

    ``forget``: the rows still to delete (earlier-deleted pairs removed; ``removed_users``
    recomputed); ``replay``: the earlier receipt when the batch was applied before (then
    ``forget`` is empty); ``overlaps``: pairs a different, earlier request already deleted;
    ``earlier``: (users, items) of every pair deleted by earlier receipts.
    """

    forget: ForgetSet
    replay: dict | None = None
    overlaps: list[dict] = field(default_factory=list)
    earlier: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _subset(forget: ForgetSet, keep: np.ndarray, data_before: RecDataset) -> ForgetSet:
    """The forget rows ``keep`` with ``removed_users`` recomputed against ``data_before``."""
    users, items, labels = forget.users[keep], forget.items[keep], forget.labels[keep]
    train = data_before.labels == TRAIN
    left = np.bincount(data_before.users[train], minlength=data_before.n_users) - np.bincount(
        users[labels == TRAIN], minlength=data_before.n_users)
    touched = np.unique(users)
    return replace(forget, users=users, items=items, labels=labels,
                   removed_users=touched[left[touched] <= 0].astype(np.int64))


class DeletionLedger:
    """Receipts of the deletions applied in one run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE

    def receipts(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RequestError(f"{self.path} line {n} is not valid JSON; restore the ledger "
                                       "from a backup (it is only ever rewritten atomically)") from None
        return out

    def receipt_for(self, request_id: str) -> dict | None:
        return next((r for r in self.receipts() if request_id in r["request_ids"]), None)

    def pairs_of(self, receipt: dict) -> np.ndarray:
        """(n, 2) int64 (user, item) pairs a receipt deleted (checked against its hash)."""
        path = self.run_dir / receipt["pairs_file"]
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != receipt["pairs_sha256"]:
            raise RequestError(f"{path} does not match its receipt's hash; the ledger was tampered with or "
                               "truncated — restore the run directory from a backup")
        return np.load(io.BytesIO(raw))

    def plan(self, data: RecDataset, forget: ForgetSet) -> DeletionPlan:
        """Split ``forget`` into replayed / overlapping / new work (see the module docstring)."""
        receipts = self.receipts()
        owner = {rid: r for r in receipts for rid in r["request_ids"]}
        ids = list(forget.request_ids)
        applied = [rid for rid in ids if rid in owner]
        pairs = [self.pairs_of(r) for r in receipts]
        eu = np.concatenate([p[:, 0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        ei = np.concatenate([p[:, 1] for p in pairs]) if pairs else np.zeros(0, np.int64)
        if applied and len(applied) == len(ids):
            empty = np.zeros(0, dtype=bool)
            return DeletionPlan(_subset(forget, empty, data), replay=owner[ids[0]], earlier=(eu, ei))
        if applied:
            new = [rid for rid in ids if rid not in owner]
            raise RequestError(
                f"request(s) {', '.join(applied[:5])} were already applied (receipt "
                f"{owner[applied[0]]['receipt_id']}); resubmit only the new ones: {', '.join(new[:5])}"
            )
        keys = _keys(forget.users, forget.items, data.n_items)
        overlaps: list[dict] = []
        keep = np.ones(len(keys), dtype=bool)
        for r, p in zip(receipts, pairs, strict=True):
            hit = np.isin(keys, _keys(p[:, 0], p[:, 1], data.n_items))
            if hit.any():
                overlaps.append({"receipt_id": r["receipt_id"], "earlier_requests": r["request_ids"][:20],
                                 "pairs": int(hit.sum())})
                keep &= ~hit
        data_before = data.without_pairs(eu, ei) if len(eu) else data
        return DeletionPlan(_subset(forget, keep, data_before), overlaps=overlaps, earlier=(eu, ei))

    def commit(
        self,
        plan: DeletionPlan,
        *,
        method: str,
        model_before: torch.nn.Module | str,
        model_after: torch.nn.Module | str,
        seconds: float | None = None,
        audit: dict[str, Any] | None = None,
    ) -> dict:
        """Write the receipt of an applied plan (atomically) and return it; a replay returns
        the earlier receipt unchanged."""
        if plan.replay is not None:
            return plan.replay
        f = plan.forget
        rid = receipt_id(list(f.request_ids))
        arr = np.stack([f.users, f.items], axis=1).astype(np.int64).reshape(-1, 2)
        buf = io.BytesIO()
        np.save(buf, arr)
        raw = buf.getvalue()
        pairs_file = f"{PAIRS_DIR}/{rid}.npy"
        atomic_write(self.run_dir / pairs_file, lambda tmp: Path(tmp).write_bytes(raw))
        counts = {"interactions": int(len(f.users)),
                  **{name: int((f.labels == lab).sum()) for name, lab in SPLIT_LABELS.items()},
                  "removed_users": int(len(f.removed_users))}
        receipt = {
            "receipt_id": rid,
            "request_ids": list(f.request_ids),
            "regime": f.regime,
            "removed": counts,
            "overlaps": plan.overlaps,
            "model_before": model_before if isinstance(model_before, str) else model_version(model_before),
            "model_after": model_after if isinstance(model_after, str) else model_version(model_after),
            "method": method,
            "seconds": seconds,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "audit": audit,
            "pairs_file": pairs_file,
            "pairs_sha256": hashlib.sha256(raw).hexdigest(),
        }
        old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        atomic_write_text(self.path, old + json.dumps(receipt, sort_keys=True, default=_plain) + "\n")
        return receipt


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def apply_deletion(run_dir: str | Path, data: RecDataset, graph, forget: ForgetSet):
    """(data_after, graph_after): ``data``/``graph`` without every pair deleted so far in the
    ledger plus ``forget``'s new pairs; a replayed batch deletes nothing new. Writes nothing
    (receipts are written by :meth:`DeletionLedger.commit` once the model is unlearned)."""
    plan = DeletionLedger(run_dir).plan(data, forget)
    deletion = apply_plan(data, graph, plan)
    return deletion.data_after, deletion.graph_after


def apply_plan(data: RecDataset, graph, plan: DeletionPlan, *, reset: bool = True):
    """The :class:`~tru_dist.unlearn.deletion.Deletion` of an already computed plan: the
    before-state = ``data``/``graph`` minus the earlier receipts' pairs, the after-state minus
    the new ones too (a replayed batch deletes nothing new)."""
    from tru_dist.unlearn.deletion import build_deletion

    return build_deletion(data, graph, plan.forget, earlier=plan.earlier, reset=reset)
