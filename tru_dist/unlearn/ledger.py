"""The deletion ledger: every request applied once, every application receipted.

A run directory holds ``ledger.jsonl`` (one JSON receipt per line, rewritten atomically on
every commit through :mod:`tru_dist.io_utils`) and ``ledger_hashes/<receipt_id>.npz``: the
keyed hashes (:mod:`tru_dist.unlearn.keyhash`, HMAC-SHA256 under the deployment's secret)
of what that receipt deleted — ``pairs`` (every deleted (user, item) pair), ``touched``
(every user with a deleted pair) and ``users`` (users ALL of whose rows were deleted), each
a sorted (n, 32) uint8 array. The ledger never stores a deleted id itself: it is not a copy
of what it erased. A receipt records:

    receipt_id, request_ids, regime, removed (interactions / train / valid / test /
    removed_users counts), overlaps, model_before, model_after (content hashes of the
    state_dict, :func:`model_version`), method, seconds, timestamp (UTC ISO-8601), audit
    (optional figures), hashes (file, sha256, key_id, counts), request_digests (a keyed
    digest of each request's rows, so a replayed id is checked to ask for the same thing), and
    — after a purge — purge (what was purged where, :mod:`tru_dist.unlearn.purge`) — and
    seal: {algorithm, key_id, mac}, mac = HMAC-SHA256(secret, "receipt:" + the receipt's
    canonical JSON without its seal) (:func:`canonical_receipt`, :func:`seal_receipt`).

*Sealed receipts.* The model chain (:func:`chain_breaks`) catches a receipt removed, added or
reordered, but not a count or request id edited inside one; the seal does: verify-deletion
reports every receipt whose seal does not match its content (:func:`seal_breaks`), and
:meth:`DeletionLedger.update` refuses to rewrite one (it would re-seal the edit). Whoever holds
the deployment secret can still write a consistent ledger — the seal shows an edit made
without it (a ledger copied off the deployment, edited by hand or by another tool), not one
made with it. Receipts written before sealing stay readable and are counted as unsealed.

Ledgers written before the hashes (``pairs_file``: raw pairs in ``ledger_pairs/``) are still
read; ``tru-dist data purge`` converts them to hashes and deletes the raw pairs.

Semantics (what makes retries safe):

* *Replay.* A request batch whose ids are ALL in the ledger is a no-op:
  :meth:`DeletionLedger.plan` returns the earlier receipt (``plan.replay``) and nothing is
  deleted or unlearned again. A batch mixing applied and new ids is refused (one-line
  RequestError naming both), because its rows cannot be split by request; so is an applied
  id whose rows now ask for other users/items than when it was applied (it would otherwise be
  answered "replayed" and never applied).
* *Overlap.* A NEW request touching a pair an earlier request already deleted is reported
  (``plan.overlaps``: the earlier receipt, its request ids, how many pairs) and those pairs
  are dropped from the new forget set — they are gone already; the rest is applied. (The
  new pairs are hashed and looked up; no earlier pair is needed in the clear.)
* *Exactly-once recording.* Nothing is written until :meth:`DeletionLedger.commit`, after
  the model has been unlearned: a crash in between leaves no receipt, so the retry redoes
  the whole request (at-least-once execution, exactly-once receipt).

The ledger's earlier pairs are found in a dataset by hashing its candidate rows (a no-op
once the store was purged). :func:`apply_plan` turns a dataset, its graph and a plan into
the shared deletion step (:func:`tru_dist.unlearn.deletion.build_deletion`): the
before-state without every pair deleted by earlier receipts, the after-state without the
new ones too (graph renormalised, provenance updated — see that module).
:func:`apply_deletion` is the (data_after, graph_after) pair of it, and :func:`served_state`
what a run's model serves with (evaluate, recommend, export, audits).
"""

from __future__ import annotations

import hashlib
import hmac
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
from tru_dist.io_utils import atomic_write, atomic_write_text, not_utf8
from tru_dist.unlearn.keyhash import SECRET_ENV, SECRET_FILE_ENV, KeyedHasher, as_digests, to_storable

LEDGER_FILE = "ledger.jsonl"
HASHES_DIR = "ledger_hashes"
PAIRS_DIR = "ledger_pairs"  # legacy: raw pairs of ledgers written before the hashes
#: where an in-place unlearn writes its model until the receipt is down
#: (:func:`tru_dist.unlearn.run.settle_staged_checkpoint`)
STAGED_CHECKPOINT = "checkpoint.staged.pt"
_EMPTY = np.zeros(0, dtype=np.int64)


def state_version(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict: every entry's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def model_version(model: torch.nn.Module) -> str:
    """:func:`state_version` of the model's state_dict (the receipts' model_before/model_after)."""
    return state_version(model.state_dict())


def receipt_id(request_ids: list[str]) -> str:
    """A stable id for a request batch: sha256 of its sorted request ids (16 hex digits)."""
    return hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()[:16]


def _keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64)


@dataclass(frozen=True)
class Digests:
    """What one receipt deleted, as keyed hashes (``S32`` arrays, sorted): ``pairs``,
    ``touched`` (users with a deleted pair), ``users`` (users whose every row was deleted)."""

    pairs: np.ndarray
    touched: np.ndarray
    users: np.ndarray

    @staticmethod
    def union(items: list[Digests]) -> Digests:
        def cat(name: str) -> np.ndarray:
            parts = [getattr(d, name) for d in items]
            return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype="S32")

        return Digests(cat("pairs"), cat("touched"), cat("users"))


def deleted_rows(data_users: np.ndarray, data_items: np.ndarray, digests: Digests,
                 hasher: KeyedHasher) -> np.ndarray:
    """Boolean mask of the rows (user, item) that a ledger deleted: the pair's digest is in
    ``digests.pairs`` or the user's in ``digests.users``. Only rows of users whose digest is
    in ``touched``/``users`` are hashed pairwise (one HMAC per distinct user otherwise)."""
    users = np.asarray(data_users, dtype=np.int64)
    items = np.asarray(data_items, dtype=np.int64)
    hit = np.zeros(len(users), dtype=bool)
    if len(users) == 0 or (len(digests.touched) == 0 and len(digests.users) == 0):
        return hit
    uniq, inverse = np.unique(users, return_inverse=True)
    ud = hasher.users(uniq)
    whole = np.isin(ud, digests.users)[inverse]
    cand = np.isin(ud, digests.touched)[inverse] & ~whole
    rows = np.flatnonzero(cand)
    hit[rows] = np.isin(hasher.pairs(users[rows], items[rows]), digests.pairs)
    return hit | whole


@dataclass(frozen=True)
class DeletionPlan:
    """What applying a forget set means given the ledger.

    ``forget``: the rows still to delete (earlier-deleted pairs removed; ``removed_users``
    recomputed); ``replay``: the earlier receipt when the batch was applied before (then
    ``forget`` is empty); ``overlaps``: pairs a different, earlier request already deleted;
    ``earlier``: (users, items) of every pair deleted by earlier receipts that is still in
    the data (found by hashing its rows; empty once the store was purged);
    ``deleted_users``: users every row of whom the data loses with this plan (earlier + new).
    """

    forget: ForgetSet
    replay: dict | None = None
    overlaps: list[dict] = field(default_factory=list)
    earlier: tuple[np.ndarray, np.ndarray] = (_EMPTY, _EMPTY)
    deleted_users: np.ndarray = field(default_factory=lambda: _EMPTY)


def _subset(forget: ForgetSet, keep: np.ndarray, data_before: RecDataset) -> ForgetSet:
    """The forget rows ``keep`` with ``removed_users`` recomputed against ``data_before``."""
    users, items, labels = forget.users[keep], forget.items[keep], forget.labels[keep]
    train = data_before.labels == TRAIN
    left = np.bincount(data_before.users[train], minlength=data_before.n_users) - np.bincount(
        users[labels == TRAIN], minlength=data_before.n_users)
    touched = np.unique(users)
    return replace(forget, users=users, items=items, labels=labels,
                   removed_users=touched[left[touched] <= 0].astype(np.int64))


def _whole_users(forget: ForgetSet, data_before: RecDataset) -> np.ndarray:
    """Users of ``forget`` whose every row of ``data_before`` (any split) is in ``forget``."""
    if len(forget.users) == 0:
        return _EMPTY
    left = np.bincount(data_before.users, minlength=data_before.n_users) - np.bincount(
        forget.users, minlength=data_before.n_users)
    touched = np.unique(forget.users)
    return touched[left[touched] <= 0].astype(np.int64)


SEAL = "seal"


def canonical_receipt(receipt: dict) -> bytes:
    """The bytes a receipt's seal covers: the receipt without its seal as JSON, keys sorted, no
    spaces, numpy numbers as Python numbers — as the ledger writes it, so a receipt read back
    from ``ledger.jsonl`` gives the same bytes as when it was sealed."""
    body = {k: v for k, v in receipt.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=_plain).encode()


def seal_receipt(receipt: dict, hasher: KeyedHasher) -> dict:
    """``receipt`` with its seal (any earlier one replaced): {algorithm, key_id, mac}."""
    body = {k: v for k, v in receipt.items() if k != SEAL}
    return {**body, SEAL: {"algorithm": "HMAC-SHA256", "key_id": hasher.key_id,
                           "mac": hasher.receipt_mac(canonical_receipt(body))}}


def seal_problem(receipt: dict, hasher: KeyedHasher) -> str | None:
    """Why ``receipt``'s seal does not verify under ``hasher``'s secret, in words; None when it
    does, and None for a receipt without a seal (written before receipts were sealed: count
    those with :func:`seal_breaks`)."""
    if SEAL not in receipt:
        return None
    seal = receipt[SEAL]  # present but null, or not a {mac: ...}: damaged, never "from before sealing"
    if not isinstance(seal, dict) or not isinstance(seal.get("mac"), str):
        return "its seal is damaged (no mac): the receipt was edited"
    key = seal.get("key_id")
    if key != hasher.key_id:
        return (f"it was sealed under ledger key {key}, not the current secret's {hasher.key_id}: set "
                f"{SECRET_ENV} or {SECRET_FILE_ENV} to the secret this deployment's ledgers were "
                "written with")
    if not hmac.compare_digest(seal["mac"], hasher.receipt_mac(canonical_receipt(receipt))):
        return "its content does not match its seal: the receipt was edited after it was written"
    return None


def seal_breaks(receipts: list[dict], hasher: KeyedHasher, sealed_ids: list[str] | None = None
                ) -> tuple[list[str], int]:
    """(each receipt whose seal does not verify, in words; how many receipts have no seal).

    A receipt without a seal had it stripped — an edit made to look like a receipt from before
    sealing — when it follows a sealed one (receipts are appended in order, by versions that only
    get newer) or when the run's checkpoint records it as sealed (``sealed_ids``, its
    ``sealed_receipts``, written by unlearn)."""
    out = []
    must = set(sealed_ids) if isinstance(sealed_ids, list) else set()
    first_sealed = next((k for k, r in enumerate(receipts, 1) if SEAL in r), None)
    for k, r in enumerate(receipts, 1):
        why = seal_problem(r, hasher)
        if why is None and SEAL not in r:
            if r["receipt_id"] in must:
                why = ("its seal was removed (the run's checkpoint records it as sealed): the receipt was "
                       "edited")
            elif first_sealed is not None and k > first_sealed:
                why = (f"its seal was removed (it follows sealed receipt {first_sealed}, and receipts are "
                       "written in order): the receipt was edited")
        if why:
            out.append(f"receipt {k} ({r['receipt_id']}): {why}")
    return out, sum(1 for r in receipts if SEAL not in r)


def refuse_broken_seals(ledger: DeletionLedger, receipts: list[dict] | None = None, *, doing: str,
                        writes: bool = True) -> None:
    """A one-line RequestError naming the first receipt of ``ledger`` whose seal does not verify
    (:func:`seal_breaks`), before ``doing`` (e.g. "purging the store") starts: a purge or an
    unlearn on an edited ledger acted on the edit and, through :meth:`DeletionLedger.update`,
    was stopped only after writing; serving (``writes`` False) removed from the served graph
    the pairs the edited receipt names, which an edit can change. The run's checkpoint (next to
    the ledger) says which receipts were sealed (``sealed_receipts``): stripping those seals, or
    every seal, does not pass for an old unsealed ledger."""
    saved = checkpoint_metadata(ledger.run_dir)  # its sealed_receipts: a seal stripped off them shows
    sealed = saved.get("sealed_receipts") if saved else None
    breaks, _ = seal_breaks(ledger.receipts() if receipts is None else receipts, ledger.hasher, sealed)
    if breaks:
        more = f" (and {len(breaks) - 1} more)" if len(breaks) > 1 else ""
        when = " before it changed anything" if writes else ""
        raise RequestError(f"{ledger.path}: {breaks[0]}{more}; {doing} was refused{when}: restore the ledger "
                           "from a backup or from the run it came from, and check it with tru-dist "
                           "verify-deletion")


def _not_a_receipt(doc: Any) -> str | None:
    """Why a parsed ledger line is not a receipt, or None when it is one.

    Every reader indexes ``receipt_id`` and ``request_ids``: a line such as ``{}`` or ``[1]``
    (valid JSON, but not a receipt) ended in a KeyError or AttributeError in recommend,
    evaluate, unlearn and verify-deletion instead of naming the damaged line."""
    if not isinstance(doc, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(doc), "a number")
        return f"{kind}, not a JSON object"
    if not isinstance(doc.get("receipt_id"), str) or not doc["receipt_id"]:
        return "no receipt_id"
    ids = doc.get("request_ids")
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        return "request_ids is not a list of request ids" if "request_ids" in doc else "no request_ids"
    return None


def chain_breaks(receipts: list[dict], current_model: str | None = None,
                 recorded_ids: list[str] | None = None) -> list[str]:
    """Where a ledger's receipts do not chain, in words (empty when they do).

    Each unlearn starts from the model the previous one left, so receipt k's ``model_before`` is
    receipt k − 1's ``model_after``, and the run's own model (``current_model``, its checkpoint's
    :func:`state_version`) is the last receipt's ``model_after``. A receipt removed from the
    middle, receipts reordered, a receipt_id repeated, the last receipt removed or the checkpoint
    replaced each break one of these. ``recorded_ids``, the receipt ids the run's checkpoint
    lists as behind its model (``ledger_receipts``, written by unlearn since it was added),
    must be the ledger's own: that catches the first receipt removed too. A count edited inside
    a receipt is not caught here; its seal catches it (:func:`seal_breaks`). Receipts without
    model versions (none written by this version) are skipped."""
    out = []
    ids = [r["receipt_id"] for r in receipts]
    if isinstance(recorded_ids, list) and recorded_ids != ids:
        missing = [i for i in recorded_ids if i not in ids]
        what = (f"lacks receipt(s) {', '.join(missing[:3])}" if missing
                else "lists receipts the model's checkpoint does not, or in another order")
        out.append(f"the ledger {what} (the run's checkpoint records {len(recorded_ids)} receipt(s) behind "
                   f"its model, the ledger {len(ids)}): a receipt was removed, added or reordered")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        out.append(f"receipt(s) {', '.join(twice)} appear more than once")
    for k, r in enumerate(receipts, 1):
        odd = [f for f in ("model_before", "model_after") if f in r and r[f] is not None
               and not (isinstance(r[f], str) and r[f])]
        if odd:
            out.append(f"receipt {k} ({ids[k - 1]}) holds {', '.join(odd)} that is not a model version: the "
                       "receipt was edited")
    for k in range(1, len(receipts)):
        prev, this = receipts[k - 1].get("model_after"), receipts[k].get("model_before")
        if isinstance(prev, str) and isinstance(this, str) and prev and this and prev != this:
            out.append(f"receipt {k + 1} ({ids[k]}) starts from model {this[:12]}, not from {prev[:12]}, the "
                       f"model receipt {k} left: a receipt was removed, reordered or edited")
    last = receipts[-1].get("model_after") if receipts else None
    if current_model and isinstance(last, str) and last and current_model != last:
        out.append(f"the run's model {current_model[:12]} is not {last[:12]}, the model the last receipt "
                   f"({ids[-1]}) left: a receipt was removed or the checkpoint replaced (or an unlearn was "
                   "interrupted before its receipt: run the same command again)")
    return out


class DeletionLedger:
    """Receipts of the deletions applied in one run directory (or a ``ledger.jsonl`` path)."""

    def __init__(self, run_dir: str | Path, hasher: KeyedHasher | None = None):
        path = Path(run_dir)
        if path.suffix == ".jsonl":
            self.run_dir, self.path = path.parent, path
        else:
            self.run_dir, self.path = path, path / LEDGER_FILE
        self._hasher = hasher

    @property
    def hasher(self) -> KeyedHasher:
        """The keyed hasher under the deployment secret (read once, on first use)."""
        if self._hasher is None:
            self._hasher = KeyedHasher()
        return self._hasher

    def receipts(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:  # binary content: damaged like a truncated line below
            raise RequestError(f"{self.path} is {not_utf8(exc)}, not a JSON-lines ledger; restore the "
                               "ledger from a backup (it is only ever rewritten atomically)") from None
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    receipt = json.loads(line)
                except json.JSONDecodeError:
                    raise RequestError(f"{self.path} line {n} is not valid JSON; restore the ledger "
                                       "from a backup (it is only ever rewritten atomically)") from None
                why = _not_a_receipt(receipt)
                if why:
                    raise RequestError(f"{self.path} line {n} is not a receipt ({why}); restore the ledger "
                                       "from a backup or from the run it came from (it is only ever "
                                       "rewritten atomically)")
                out.append(receipt)
        return out

    def receipt_for(self, request_id: str) -> dict | None:
        return next((r for r in self.receipts() if request_id in r["request_ids"]), None)

    def replay_of(self, request_ids: list[str], receipts: list[dict] | None = None,
                  table=None) -> dict | None:
        """The earlier receipt when every id was applied before, None when none was; a batch
        mixing applied and new ids is a RequestError naming both. With ``table`` (the request
        table), an applied id must ask for what it asked for then (receipts record a keyed
        digest of each request's rows, ``request_digests``; older receipts are not checked):
        a reused id with other content would otherwise be "replayed" and never applied.

        An id counts as applied by a receipt when it is in its ``request_ids`` or in one of its
        purged overlaps' ``request_ids``: the requests that batch found already deleted and
        purged, and dropped (:meth:`drop_purged_requests`) — without them, rerunning that batch
        mixed "applied" and "new" ids and was refused. A receipt written before the overlaps
        named their ids has none to offer, so a rerun of such a batch is still refused that way
        (its message names both groups)."""
        owner: dict[str, dict] = {}
        for r in (self.receipts() if receipts is None else receipts):
            answered = [rid for o in r.get("overlaps", []) if o.get("purged")
                        for rid in o.get("request_ids", [])]
            owner.update({rid: r for rid in answered if rid not in owner})
            owner.update({rid: r for rid in r["request_ids"]})
        ids = [str(x) for x in request_ids]
        applied = [rid for rid in ids if rid in owner]
        if applied and len(applied) == len(ids):
            if table is not None:
                self._check_same_requests(table, owner)
            return owner[ids[0]]
        if applied:
            new = [rid for rid in ids if rid not in owner]
            raise RequestError(
                f"request(s) {', '.join(applied[:5])} were already applied (receipt "
                f"{owner[applied[0]]['receipt_id']}); resubmit only the new ones: {', '.join(new[:5])}"
            )
        return None

    def _check_same_requests(self, table, owner: dict[str, dict]) -> None:
        """RequestError naming the applied request ids ``table`` now gives other content."""
        now = self.hasher.requests(table)
        changed = [rid for rid, d in now.items() if owner[rid].get("request_digests", {}).get(rid, d) != d]
        if changed:
            raise RequestError(
                f"request id(s) {', '.join(changed[:5])} were applied before (receipt "
                f"{owner[changed[0]]['receipt_id']}) with other users/items than this file gives them; "
                "a changed or new deletion needs a new request_id")

    def _check_key(self, receipt: dict) -> None:
        key = receipt.get("hashes", {}).get("key_id")
        if key is not None and key != self.hasher.key_id:
            raise RequestError(
                f"{self.path}: receipt {receipt['receipt_id']} was hashed under ledger key {key}, but the "
                f"current secret is key {self.hasher.key_id}; set {SECRET_ENV} or {SECRET_FILE_ENV} to "
                "the secret this deployment's ledgers were written with"
            )

    def digests_of(self, receipt: dict) -> Digests:
        """The keyed hashes of what a receipt deleted (its file checked against the receipt)."""
        if "hashes" not in receipt and "pairs_file" in receipt:  # legacy receipt: raw pairs
            pairs = self._legacy_pairs(receipt)
            return Digests(np.unique(self.hasher.pairs(pairs[:, 0], pairs[:, 1])),
                           np.unique(self.hasher.users(np.unique(pairs[:, 0]))), np.zeros(0, dtype="S32"))
        if "hashes" not in receipt:
            raise RequestError(f"{self.path}: receipt {receipt.get('receipt_id')} records no hashes of "
                               "what it deleted; restore the ledger from a backup")
        self._check_key(receipt)
        info = receipt["hashes"]
        raw = self._checked_bytes(info["file"], info["sha256"],
                                  f"the hashes of receipt {receipt['receipt_id']}")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return Digests(as_digests(z["pairs"]), as_digests(z["touched"]), as_digests(z["users"]))

    def _checked_bytes(self, name: str, sha256: str, what: str) -> bytes:
        """The bytes of ``run_dir/name``, checked against the sha256 its receipt recorded."""
        path = self.run_dir / name
        try:
            raw = path.read_bytes()
        except OSError:
            raise RequestError(f"{path} ({what}) is missing; restore the run directory from a backup"
                               ) from None
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise RequestError(f"{path} does not match its receipt's hash; the ledger was tampered with or "
                               "truncated — restore the run directory from a backup")
        return raw

    def _legacy_pairs(self, receipt: dict) -> np.ndarray:
        raw = self._checked_bytes(receipt["pairs_file"], receipt["pairs_sha256"],
                                  f"the pairs of receipt {receipt['receipt_id']}")
        return np.load(io.BytesIO(raw), allow_pickle=False).reshape(-1, 2)

    def all_digests(self, receipts: list[dict] | None = None) -> Digests:
        """The union of every receipt's keyed hashes."""
        receipts = self.receipts() if receipts is None else receipts
        return Digests.union([self.digests_of(r) for r in receipts])

    def drop_purged_requests(self, table, data: RecDataset):
        """(table, overlaps): requests naming only what earlier receipts deleted and ``data`` no
        longer holds (its store was purged) are dropped and reported as overlaps (``purged:
        True``) — as :meth:`plan` reports an overlap with data still present. A pair request
        counts when its pair is gone and its hash is in a receipt; a user request when the
        user has no row left and is a wholly deleted user of a receipt. All dropped: a
        RequestError (nothing to unlearn)."""
        receipts = self.receipts()
        if not receipts or len(table) == 0:
            return table, []
        users = table["user_id"].to_numpy(dtype=np.int64)
        has_item = table["item_id"].notna().to_numpy()
        items = table["item_id"].fillna(-1).to_numpy(dtype=np.int64)
        present_pair = np.isin(_keys(users, items, data.n_items), _keys(data.users, data.items, data.n_items))
        present_user = np.isin(users, data.users)
        gone = np.where(has_item, ~present_pair, ~present_user)
        if not gone.any():
            return table, []
        pair_d = self.hasher.pairs(users[gone], items[gone])
        user_d = self.hasher.users(users[gone])
        dropped = np.zeros(len(table), dtype=bool)
        overlaps = []
        for r in receipts:
            d = self.digests_of(r)
            hit = np.where(has_item[gone], np.isin(pair_d, d.pairs), np.isin(user_d, d.users))
            rows = np.flatnonzero(gone)[hit & ~dropped[gone]]
            if len(rows):
                dropped[rows] = True
                ids = sorted({str(x) for x in table["request_id"].to_numpy()[rows]})
                overlaps.append({"receipt_id": r["receipt_id"], "earlier_requests": r["request_ids"][:20],
                                 "requests": int(len(rows)), "purged": True, "request_ids": ids})
        if dropped.all():
            ids = ", ".join(o["receipt_id"] for o in overlaps)
            raise RequestError("every request names data that earlier requests deleted and a purge removed "
                               f"(receipt(s) {ids}); nothing to unlearn")
        return table[~dropped].reset_index(drop=True), overlaps

    def plan(self, data: RecDataset, forget: ForgetSet, receipts: list[dict] | None = None) -> DeletionPlan:
        """Split ``forget`` into replayed / overlapping / new work (see the module docstring).
        ``receipts``: the ledger as the caller already read (and checked) it; None reads it."""
        receipts = self.receipts() if receipts is None else receipts
        replay = self.replay_of(list(forget.request_ids), receipts)
        digests = [self.digests_of(r) for r in receipts]
        done = deleted_rows(data.users, data.items, Digests.union(digests), self.hasher)
        earlier = (data.users[done].astype(np.int64), data.items[done].astype(np.int64))
        if replay is not None:
            empty = np.zeros(0, dtype=bool)
            return DeletionPlan(_subset(forget, empty, data), replay=replay, earlier=earlier)
        new = self.hasher.pairs(forget.users, forget.items)
        overlaps: list[dict] = []
        keep = np.ones(len(new), dtype=bool)
        for r, d in zip(receipts, digests, strict=True):
            hit = np.isin(new, d.pairs)
            if hit.any():
                overlaps.append({"receipt_id": r["receipt_id"], "earlier_requests": r["request_ids"][:20],
                                 "pairs": int(hit.sum())})
                keep &= ~hit
        data_before = data.without_pairs(*earlier) if done.any() else data
        todo = _subset(forget, keep, data_before)
        return DeletionPlan(todo, overlaps=overlaps, earlier=earlier,
                            deleted_users=_whole_users(todo, data_before))

    def commit(
        self,
        plan: DeletionPlan,
        *,
        method: str,
        model_before: torch.nn.Module | str,
        model_after: torch.nn.Module | str,
        seconds: float | None = None,
        audit: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        requests=None,
    ) -> dict:
        """Write the receipt of an applied plan (atomically) and return it; a replay returns
        the earlier receipt unchanged. ``extra`` adds fields (e.g. a pending ``purge``);
        ``requests`` (the request table) adds each request's keyed content digest
        (``request_digests``, checked when the same ids come again: :meth:`replay_of`)."""
        if plan.replay is not None:
            return plan.replay
        f = plan.forget
        rid = receipt_id(list(f.request_ids))
        h = self.hasher
        pairs = to_storable(h.pairs(f.users, f.items))
        touched = to_storable(h.users(np.unique(f.users)))
        users = to_storable(h.users(plan.deleted_users))
        buf = io.BytesIO()
        np.savez(buf, pairs=pairs, touched=touched, users=users)
        raw = buf.getvalue()
        hashes_file = f"{HASHES_DIR}/{rid}.npz"
        atomic_write(self.run_dir / hashes_file, lambda tmp: Path(tmp).write_bytes(raw))
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
            **({"request_digests": h.requests(requests)} if requests is not None else {}),
            "hashes": {"file": hashes_file, "sha256": hashlib.sha256(raw).hexdigest(), "key_id": h.key_id,
                       "algorithm": "HMAC-SHA256", "pairs": int(len(pairs)),
                       "touched_users": int(len(touched)), "deleted_users": int(len(users))},
            **(extra or {}),
        }
        receipt = seal_receipt(receipt, h)
        old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        atomic_write_text(self.path, old + json.dumps(receipt, sort_keys=True, default=_plain) + "\n")
        return receipt

    def update(self, receipt_id_: str, **fields: Any) -> dict:
        """Set ``fields`` on one receipt (the ledger rewritten atomically) and re-seal it; returns
        the receipt. Refused when its seal does not verify (:func:`seal_problem`)."""
        receipts = self.receipts()
        target = next((r for r in receipts if r["receipt_id"] == receipt_id_), None)
        if target is None:
            raise RequestError(f"{self.path} holds no receipt {receipt_id_}")
        why = seal_problem(target, self.hasher)
        if why:  # re-sealing it would make the edit look like ours
            raise RequestError(f"{self.path}: receipt {receipt_id_} cannot be updated, {why}; restore the "
                               "ledger from a backup or from the run it came from")
        target.update(fields)
        if SEAL in target:  # a receipt from before sealing stays unsealed: sealing it would vouch for it
            target.update(seal_receipt(target, self.hasher))
        text = "".join(json.dumps(r, sort_keys=True, default=_plain) + "\n" for r in receipts)
        atomic_write_text(self.path, text)
        return target

    def migrate_legacy(self) -> int:
        """Replace legacy raw-pair files by keyed hashes (receipts rewritten atomically, then
        ``ledger_pairs/`` deleted); returns how many receipts were converted."""
        receipts = self.receipts()
        legacy = [r for r in receipts if "hashes" not in r and "pairs_file" in r]
        for r in legacy:
            pairs = self._legacy_pairs(r)
            d = Digests(self.hasher.pairs(pairs[:, 0], pairs[:, 1]),
                        self.hasher.users(np.unique(pairs[:, 0])), np.zeros(0, dtype="S32"))
            buf = io.BytesIO()
            np.savez(buf, pairs=to_storable(d.pairs), touched=to_storable(d.touched),
                     users=to_storable(d.users))
            raw = buf.getvalue()
            file = f"{HASHES_DIR}/{r['receipt_id']}.npz"
            atomic_write(self.run_dir / file, lambda tmp, raw=raw: Path(tmp).write_bytes(raw))
            r["hashes"] = {"file": file, "sha256": hashlib.sha256(raw).hexdigest(),
                           "key_id": self.hasher.key_id,
                           "algorithm": "HMAC-SHA256", "pairs": int(len(np.unique(d.pairs))),
                           "touched_users": int(len(np.unique(d.touched))), "deleted_users": 0}
            r.pop("pairs_file")
            r.pop("pairs_sha256", None)
        if legacy:
            text = "".join(json.dumps(r, sort_keys=True, default=_plain) + "\n" for r in receipts)
            atomic_write_text(self.path, text)
        legacy_dir = self.run_dir / PAIRS_DIR
        if legacy_dir.is_dir():
            for p in legacy_dir.glob("*.npy"):
                p.unlink()
            if not any(legacy_dir.iterdir()):
                legacy_dir.rmdir()
        return len(legacy)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def apply_deletion(run_dir: str | Path, data: RecDataset, graph, forget: ForgetSet,
                   receipts: list[dict] | None = None):
    """(data_after, graph_after): ``data``/``graph`` without every pair deleted so far in the
    ledger plus ``forget``'s new pairs; a replayed batch deletes nothing new. Writes nothing
    (receipts are written by :meth:`DeletionLedger.commit` once the model is unlearned).
    ``receipts``: the ledger as already read and checked (None reads it)."""
    plan = DeletionLedger(run_dir).plan(data, forget, receipts)
    deletion = apply_plan(data, graph, plan)
    return deletion.data_after, deletion.graph_after


def kept_receipts(run_dir: str | Path) -> list[dict]:
    """The receipts of ``run_dir``'s ledger — refused (RequestError) when there are none but
    the run is an unlearned model: its checkpoint lists the receipts behind it
    (``ledger_receipts``) or names the method (``unlearned_by``; checkpoints from before the
    list), or its ``metrics.json`` holds a receipt. Such a run would be served over the data it
    deleted (a wholly deleted user got their deleted history back as recommendations, exit 0),
    and a further unlearn would start a ledger without them. What serves or unlearns a run
    reads its ledger through this. The checkpoint is memory-mapped: its tensors are not read."""
    run_dir = Path(run_dir)
    receipts = DeletionLedger(run_dir).receipts()
    if not receipts:
        _refuse_lost_ledger(run_dir)
    return receipts


def checkpoint_metadata(run_dir: Path) -> dict | None:
    """``run_dir/checkpoint.pt`` with its tensors memory-mapped, not read
    (:func:`~tru_dist.train.checkpoint.load_checkpoint`); None when it is missing or
    unreadable — the loader that needs the model says so."""
    from tru_dist.errors import TruDistError
    from tru_dist.train.checkpoint import load_checkpoint

    try:
        saved = load_checkpoint(run_dir / "checkpoint.pt", mmap=True)
    except TruDistError:
        return None
    return saved if isinstance(saved, dict) else None


def _refuse_lost_ledger(run_dir: Path) -> None:
    evidence = None
    saved = checkpoint_metadata(run_dir)
    if isinstance(saved, dict) and (saved.get("ledger_receipts") or saved.get("unlearned_by")):
        evidence = "its checkpoint is an unlearned model"
    elif (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = None
        if isinstance(metrics, dict) and metrics.get("receipt"):
            evidence = "metrics.json holds a receipt"
    if evidence is not None:
        raise RequestError(f"run {run_dir} was unlearned ({evidence}) but its {LEDGER_FILE} is missing or "
                           "empty, so it would be served over the data it deleted; restore the ledger from a "
                           "backup or from the run it came from (or, if an unlearn into it was interrupted, "
                           "run that command again)")


def served_state(run_dir: str | Path, data: RecDataset, graph):
    """(data, graph) the model of ``run_dir`` serves with: ``data``/``graph`` minus every pair
    its ledger deleted (the same objects when the run deleted nothing, or when the data were
    purged of it). Evaluate, recommend, export and the audits read a run through this: an
    unlearned run is never scored or served over its deleted interactions, and a deleted item
    is no longer hidden from its user as "seen" (which would both change the lists and reveal
    what was deleted). A run whose ledger holds an edited receipt is refused
    (:func:`refuse_broken_seals`)."""
    if (Path(run_dir) / STAGED_CHECKPOINT).exists():
        # killed after the receipt, before the rename: checkpoint.pt is still the model before
        # the batch (trained on what its receipt deleted); the rerun settles it
        raise RequestError(f"an in-place unlearn into {run_dir} was interrupted ({STAGED_CHECKPOINT} is "
                           "still there), so its checkpoint.pt may be the model before the deletion; run "
                           "that unlearn command again to finish it")
    receipts = kept_receipts(run_dir)
    if not receipts:
        return data, graph
    refuse_broken_seals(DeletionLedger(run_dir), receipts, doing="serving the run", writes=False)
    empty = np.zeros(0, dtype=np.int64)
    nothing = ForgetSet(empty, empty, np.zeros(0, dtype=np.int8), empty, [], "none")
    # the receipts just checked, not a second read: a ledger swapped in between was served unchecked
    return apply_deletion(run_dir, data, graph, nothing, receipts)


def apply_plan(data: RecDataset, graph, plan: DeletionPlan, *, reset: bool = True):
    """The :class:`~tru_dist.unlearn.deletion.Deletion` of an already computed plan: the
    before-state = ``data``/``graph`` minus the earlier receipts' pairs, the after-state minus
    the new ones too (a replayed batch deletes nothing new)."""
    from tru_dist.unlearn.deletion import build_deletion

    return build_deletion(data, graph, plan.forget, earlier=plan.earlier, reset=reset)
