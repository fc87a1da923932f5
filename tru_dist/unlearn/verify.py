"""``tru-dist verify-deletion``: prove that no artifact still holds what a ledger deleted.

The deleted data is known only as keyed hashes (:mod:`tru_dist.unlearn.keyhash`), so the scan
finds every candidate (user, item) pair an artifact holds, hashes it under the deployment
secret and looks it up; rows of users the ledger deleted wholly are found by user hash. It
walks the run folder, the store (``--data``) and any ``--scan`` folder, and reads each file
the project writes by kind:

* Parquet / CSV / TSV / MMRec ``.inter`` — a ``user_id``/``userID``/``user`` column with an
  ``item_id``/``itemID``/``item`` column (stores, request tables, MMRec folders, exports);
* ``.npy`` / ``.npz`` — integer arrays of shape (n, 2) or (2, n) (legacy ``ledger_pairs``,
  edge lists);
* checkpoints (``.pt``, ``.pth``, ``.ckpt``; ``torch.load(weights_only=True)``) — integer
  tensors as above, ``users``/``items`` tensor pairs (sweep contexts' forget sets), and every
  state dict, whose content hash (:func:`~tru_dist.unlearn.ledger.state_version`) must not be
  a receipt's ``model_before`` — a model trained on the deleted data;
* JSON / JSON-lines (metrics, ledgers, compare/sweep results, Ray Tune ``result.json``) —
  objects with user and item ids, lists of [user, item] under a key naming pairs, and
  ``source_run`` pointers to a run whose checkpoint is such a model.

Pickles (Ray's ``*.pkl``) are never unpickled: they are counted as not inspected, as are
checkpoints that torch refuses to load weights-only because they pickle other objects. A
checkpoint that does not load at all (truncated, or not a checkpoint) cannot be shown clean,
as any unreadable file below. Other files (plots, reports, logs, YAML) hold no ids
and are counted as skipped. A file of a kind above that cannot be read (truncated, not valid
JSON, a NaN where an id belongs) or is not a regular file (a FIFO, socket or device, which is
never opened: reading a FIFO blocks) is listed as one that cannot be shown clean.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tru_dist.errors import RequestError
from tru_dist.io_utils import not_regular_kind
from tru_dist.unlearn.ledger import (
    DeletionLedger,
    Digests,
    chain_breaks,
    deleted_rows,
    seal_breaks,
    state_version,
)

USER_COLUMNS = ("user_id", "userID", "user")
ITEM_COLUMNS = ("item_id", "itemID", "item")
TABLE_EXT = {".parquet", ".csv", ".tsv", ".inter"}
CHECKPOINT_EXT = {".pt", ".pth", ".ckpt"}
PICKLE_EXT = {".pkl", ".pickle"}
#: how ``torch.load(weights_only=True)`` words its refusal of a valid checkpoint that pickles
#: objects it does not build (a class not allowed, a blocked module, DTensors/NJTs before their
#: import, another type's ``__setstate__``); any other failure — truncated, junk, a plain
#: pickle's opcodes ("Unsupported operand") — is a file that cannot be read
WEIGHTS_ONLY_REFUSAL = re.compile(r"was not an allowed global|whose module \S+ is blocked|must be \S+ to load"
                                  r"|Can only build")


@dataclass
class Finding:
    """One file that still holds deleted data."""

    path: str
    kind: str
    pairs: int = 0
    user_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = []
        if self.pairs:
            what.append(f"{self.pairs} deleted pair(s)")
        if self.user_rows:
            what.append(f"{self.user_rows} row(s) of wholly deleted users")
        return f"{self.path} [{self.kind}]: " + "; ".join(what + self.notes)


@dataclass
class Report:
    """What was scanned and what still holds deleted data."""

    roots: list[str]
    receipts: int
    deleted_pairs: int
    deleted_users: int
    key_id: str
    files: Counter = field(default_factory=Counter)
    candidates: int = 0
    unsealed: int = 0
    not_inspected: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.files.items()))
        out = [f"verify-deletion: scanned {sum(self.files.values())} file(s) under {', '.join(self.roots)}",
               f"  against {self.receipts} receipt(s): {self.deleted_pairs} deleted pair hash(es), "
               f"{self.deleted_users} wholly deleted user hash(es), ledger key {self.key_id}",
               f"  files by kind: {kinds or 'none'}; {self.candidates} candidate (user, item) pair(s) hashed",
               *(f"  store {s}" for s in self.stores)]
        if self.unsealed:
            out.append(f"  {self.unsealed} receipt(s) carry no seal (written before receipts were sealed): "
                       "an edit inside them cannot be detected")
        if self.not_inspected:
            out.append(f"  not inspected ({len(self.not_inspected)}; never unpickled: pickles, and "
                       "checkpoints that pickle other objects): "
                       + ", ".join(self.not_inspected[:5]) + (" ..." if len(self.not_inspected) > 5 else ""))
        if self.clean:
            out.append("  clean: no deleted pair, no row of a deleted user, "
                       "no model trained on the deleted data")
        else:
            out.append(f"  FOUND deleted data in {len(self.findings)} file(s):")
            out += [f"  - {f.line()}" for f in self.findings]
        return out


class _Scanner:
    def __init__(self, ledger: DeletionLedger):
        self.ledger = ledger
        receipts = ledger.receipts()
        if not receipts:
            where = (f"{ledger.path} holds no receipts" if ledger.path.exists()
                     else f"{ledger.path.parent} has no {ledger.path.name} (it is not an unlearned run)")
            raise RequestError(f"{where}: this run deleted nothing, so there is nothing to verify; pass the "
                               "output folder of `tru-dist unlearn`")
        self.receipts = receipts
        self._loaded: dict[Path, Any] = {}  # the run's checkpoint, loaded once for the chain and the scan
        self.digests: Digests = ledger.all_digests(receipts)
        self.trained_on_deleted = {r["model_before"]: r["receipt_id"] for r in receipts
                                   if r.get("model_before")}
        self.report = Report(roots=[], receipts=len(receipts), deleted_pairs=len(self.digests.pairs),
                             deleted_users=len(self.digests.users), key_id=ledger.hasher.key_id)

    def check_chain(self, run: Path) -> None:
        """Every receipt's seal verifies (:func:`~tru_dist.unlearn.ledger.seal_breaks`) and the
        receipts chain model to model, up to the run's checkpoint
        (:func:`~tru_dist.unlearn.ledger.chain_breaks`); a break is a finding on the ledger, since
        a ledger missing a receipt cannot show what it deleted. A checkpoint that cannot be read
        is left to the scan, which lists it."""
        import torch

        current = recorded = sealed = None
        path = run / "checkpoint.pt"
        try:
            saved = self._loaded[path] = torch.load(path, map_location="cpu", weights_only=True)
            state = saved.get("best_model") if isinstance(saved, dict) else None
            current = state_version(state) if isinstance(state, dict) else None
            recorded = saved.get("ledger_receipts") if isinstance(saved, dict) else None
            sealed = saved.get("sealed_receipts") if isinstance(saved, dict) else None
        except Exception:  # missing or unreadable: scan_file names it
            pass
        sealing, self.report.unsealed = seal_breaks(self.receipts, self.ledger.hasher, sealed)
        breaks = sealing + chain_breaks(self.receipts, current, recorded)
        if breaks:
            self.report.findings.append(Finding(str(self.ledger.path), "ledger", notes=breaks))

    # -- pairs -------------------------------------------------------------------------------
    def _hits(self, users: np.ndarray, items: np.ndarray | None) -> tuple[int, int]:
        """(rows holding a deleted pair, rows of a wholly deleted user)."""
        users = np.asarray(users, dtype=np.int64)
        if items is None:  # a user column alone: only wholly deleted users count
            whole = np.isin(self.ledger.hasher.users(np.unique(users)), self.digests.users)
            deleted = np.unique(users)[whole]
            return 0, int(np.isin(users, deleted).sum())
        items = np.asarray(items, dtype=np.int64)
        self.report.candidates += len(users)
        no_whole = Digests(self.digests.pairs, self.digests.touched, np.zeros(0, dtype="S32"))
        pair_hit = deleted_rows(users, items, no_whole, self.ledger.hasher)
        only_users = Digests(np.zeros(0, dtype="S32"), np.zeros(0, dtype="S32"), self.digests.users)
        user_hit = deleted_rows(users, items, only_users, self.ledger.hasher)
        return int(pair_hit.sum()), int((user_hit & ~pair_hit).sum())

    def _pairs_of_array(self, arr: Any) -> tuple[np.ndarray, np.ndarray] | None:
        a = np.asarray(arr)
        if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) or a.dtype.itemsize < 2:
            return None
        if a.shape[1] == 2:
            return a[:, 0], a[:, 1]
        if a.shape[0] == 2:
            return a[0], a[1]
        return None

    # -- kinds -------------------------------------------------------------------------------
    def table(self, path: Path, f: Finding) -> None:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            ucol = next((c for c in USER_COLUMNS if c in names), None)
            icol = next((c for c in ITEM_COLUMNS if c in names), None)
            if ucol is None:
                return
            t = pq.read_table(path, columns=[c for c in (ucol, icol) if c])
            users = t.column(ucol).to_numpy(zero_copy_only=False)
            items = t.column(icol).to_numpy(zero_copy_only=False) if icol else None
        else:
            import pandas as pd

            sep = "," if path.suffix == ".csv" else "\t"
            head = pd.read_csv(path, sep=sep, nrows=0).columns
            ucol = next((c for c in USER_COLUMNS if c in head), None)
            icol = next((c for c in ITEM_COLUMNS if c in head), None)
            if ucol is None:
                return
            df = pd.read_csv(path, sep=sep, usecols=[c for c in (ucol, icol) if c])
            users = df[ucol].to_numpy()
            items = df[icol].to_numpy() if icol else None
        users, items = _int_rows(users, items)
        pairs, user_rows = self._hits(users, items)
        f.pairs += pairs
        f.user_rows += user_rows

    def npy(self, path: Path, f: Finding) -> None:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = [z[k] for k in z.files]
        else:
            arrays = [np.load(path, mmap_mode="r", allow_pickle=False)]
        for a in arrays:
            found = self._pairs_of_array(a)
            if found is not None:
                p, u = self._hits(*found)
                f.pairs += p
                f.user_rows += u

    def checkpoint(self, path: Path, f: Finding) -> None:
        import torch

        try:
            obj = self._loaded.pop(path, None) or torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            if WEIGHTS_ONLY_REFUSAL.search(text):  # a valid pickle of objects: never unpickle it
                self.report.not_inspected.append(f"{path} (a pickle that does not load weights-only)")
                return
            detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            raise ValueError(f"not a checkpoint: {detail[0] if detail else type(exc).__name__}") from None
        self._walk_torch(obj, f)

    def _walk_torch(self, obj: Any, f: Finding) -> None:
        import torch

        if isinstance(obj, dict):
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and len(tensors) == len(obj) and any(v.is_floating_point() for v in tensors.values()):
                version = state_version(tensors)  # a state dict
                rid = self.trained_on_deleted.get(version)
                note = (f"model version {version[:12]} is receipt {rid}'s model_before "
                        "(trained on the deleted data)")
                if rid is not None and note not in f.notes:
                    f.notes.append(note)
                return
            ukey = next((k for k in ("users", "user", "user_id", "user_ids") if k in obj), None)
            ikey = next((k for k in ("items", "item", "item_id", "item_ids") if k in obj), None)
            if ukey and ikey and isinstance(obj[ukey], torch.Tensor) and isinstance(obj[ikey], torch.Tensor) \
                    and obj[ukey].shape == obj[ikey].shape and not obj[ukey].is_floating_point():
                p, u = self._hits(obj[ukey].numpy().reshape(-1), obj[ikey].numpy().reshape(-1))
                f.pairs += p
                f.user_rows += u
            for k, v in obj.items():
                if k not in (ukey, ikey):
                    self._walk_torch(v, f)
        elif isinstance(obj, list | tuple):
            for v in obj:
                self._walk_torch(v, f)
        elif isinstance(obj, torch.Tensor) and not obj.is_floating_point():
            found = self._pairs_of_array(obj.numpy())
            if found is not None:
                p, u = self._hits(*found)
                f.pairs += p
                f.user_rows += u

    def json_file(self, path: Path, f: Finding) -> None:
        """Pairs in a JSON or JSON-lines file. What parses is checked; then a part that does not
        (a truncated file or last line, a lowercase ``nan``) raises, so :meth:`scan_file` lists
        the file as not shown clean: the part it could not read may hold deleted rows."""
        docs, error = _json_docs(path.read_text(encoding="utf-8", errors="replace"))
        users: list[int] = []
        items: list[int] = []
        for doc in docs:
            self._walk_json(doc, users, items, f, None)
        if users:
            p, u = self._hits(np.array(users), np.array(items))
            f.pairs += p
            f.user_rows += u
        if error:
            raise ValueError(error)

    def _walk_json(self, obj: Any, users: list[int], items: list[int], f: Finding, key: str | None) -> None:
        if isinstance(obj, dict):
            odd = next((k for k in (*USER_COLUMNS, *ITEM_COLUMNS) if _is_non_finite(obj.get(k))), None)
            note = f"holds {odd} {obj[odd]}, not an id, so its row cannot be shown clean" if odd else None
            if note and note not in f.notes:  # e.g. {"user_id": 3, "item_id": NaN}: which row is it?
                f.notes.append(note)
            u = next((obj[k] for k in USER_COLUMNS if _is_int(obj.get(k))), None)
            i = next((obj[k] for k in ITEM_COLUMNS if _is_int(obj.get(k))), None)
            if u is not None and i is not None:
                users.append(int(u))
                items.append(int(i))
            src = obj.get("source_run")
            if isinstance(src, str):
                self._source_pointer(Path(src), f)
            for k, v in obj.items():
                self._walk_json(v, users, items, f, str(k))
        elif isinstance(obj, list):
            if key and "pair" in key.lower() and obj and all(
                    isinstance(x, list) and len(x) == 2 and all(_is_int(y) for y in x) for x in obj):
                users.extend(int(x[0]) for x in obj)
                items.extend(int(x[1]) for x in obj)
                return
            for v in obj:
                self._walk_json(v, users, items, f, key)

    def _source_pointer(self, run: Path, f: Finding) -> None:
        """A ``source_run`` whose checkpoint is a model trained on the deleted data."""
        from tru_dist.train.checkpoint import checkpoint_path

        ckpt = checkpoint_path(run, rank=0, world_size=1)
        if not ckpt.is_file():
            return
        import torch

        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception:
            return
        state = saved.get("best_model") if isinstance(saved, dict) else None
        if isinstance(state, dict) and state_version(state) in self.trained_on_deleted:
            f.notes.append(f"source_run points at {ckpt}, a model trained on the deleted data")

    # -- walk ----------------------------------------------------------------------------------
    def scan_file(self, path: Path, kind_hint: str | None = None) -> None:
        ext = "".join(path.suffixes[-1:]).lower()
        if ext in TABLE_EXT:
            kind, fn = (kind_hint or ext.lstrip(".")), self.table
        elif ext in (".npy", ".npz"):
            kind, fn = ext.lstrip("."), self.npy
        elif ext in CHECKPOINT_EXT:
            kind, fn = "checkpoint", self.checkpoint
        elif ext in (".json", ".jsonl"):
            kind, fn = ("ledger" if path.name == "ledger.jsonl" else ext.lstrip(".")), self.json_file
        elif ext in PICKLE_EXT:
            self.report.files["pickle"] += 1
            self.report.not_inspected.append(str(path))
            return
        else:
            self.report.files["other"] += 1
            return
        self.report.files[kind] += 1
        shown = f"{path} -> {os.path.realpath(path)}" if path.is_symlink() else str(path)
        finding = Finding(shown, kind)
        irregular = not_regular_kind(path)
        if irregular:  # never opened: opening a FIFO blocks until a writer comes (the scan hung)
            finding.notes.append(f"not a regular file ({irregular}), so it was not opened and it cannot be "
                                 "shown clean; move it out of the scanned folder")
            self.report.findings.append(finding)
            return
        try:
            fn(path, finding)
        except Exception as exc:  # an unreadable file cannot be proven clean: say so
            first = (str(exc).strip().splitlines() or [""])[0][:80]  # an EOFError says nothing
            finding.notes.append(f"cannot be read ({type(exc).__name__}{': ' + first if first else ''}), "
                                 "so it cannot be shown clean")
        if finding.pairs or finding.user_rows or finding.notes:
            self.report.findings.append(finding)

    def scan_root(self, root: Path) -> None:
        from tru_dist.data.store import enclosing_store, is_store, read_meta, revision

        self.report.roots.append(str(root))
        if not root.is_dir():  # a file, or a FIFO given as --scan (scan_file does not open that)
            self.scan_file(root)
            return
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            here = Path(dirpath)
            if is_store(here):
                try:
                    meta = read_meta(here)
                    self.report.stores.append(f"{here}: revision {revision(meta)}, "
                                              f"{meta['n_interactions']} interactions")
                except Exception:
                    self.report.stores.append(f"{here}: unreadable META.json")
            store_root = enclosing_store(here)
            for name in sorted(files):
                path = here / name
                hint = "store" if store_root is not None and path.suffix == ".parquet" else None
                self.scan_file(path, hint)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_non_finite(x: Any) -> bool:
    """A NaN or ±Infinity (which Python's JSON reader accepts), where an id would be."""
    return isinstance(x, float) and not math.isfinite(x)


def _json_docs(text: str) -> tuple[list[Any], str | None]:
    """The documents of a JSON or JSON-lines text, and why a part of it is not JSON (None when
    all of it parses). A line that does not parse was skipped before, so a truncated file, or
    one cut in its last line, was reported clean whatever the lost part held. An empty file
    (e.g. a Ray Tune ``result.json`` before its first result) holds nothing: it is clean."""
    if not text.strip():
        return [], None
    try:
        return [json.loads(text)], None
    except json.JSONDecodeError as whole:
        docs, error = [], None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                error = error or f"line {n} is not valid JSON at column {exc.colno} (truncated?)"
        if not docs:  # one document that does not parse: its error names where
            return [], f"not valid JSON: {whole}"
        return docs, error


def _int_rows(users: np.ndarray, items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows whose ids are integers (a request's empty item_id, text, NaN: dropped)."""
    import pandas as pd

    u = pd.to_numeric(pd.Series(users), errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(u)
    if items is None:
        return u[ok].astype(np.int64), None
    i = pd.to_numeric(pd.Series(items), errors="coerce").to_numpy(dtype=np.float64)
    ok &= np.isfinite(i)
    return u[ok].astype(np.int64), i[ok].astype(np.int64)


def verify_deletion(run: str | Path, data: str | Path | None = None,
                    scan: list[str | Path] | None = None) -> Report:
    """Scan the run folder, ``data`` and every ``scan`` folder for what the run's ledger deleted."""
    run = Path(run)
    if not run.is_dir():
        raise RequestError(f"run folder {run} does not exist; pass the output folder of `tru-dist unlearn`")
    scanner = _Scanner(DeletionLedger(run))
    scanner.check_chain(run)
    for root in [run, *([Path(data)] if data is not None else []), *(Path(s) for s in scan or [])]:
        if not root.exists():
            raise RequestError(f"{root} does not exist; pass folders (or files) to scan")
        scanner.scan_root(root)
    return scanner.report
