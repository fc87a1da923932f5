"""Purge: remove from a store every interaction a deletion ledger has deleted.

``tru-dist data purge --data STORE --ledger RUN`` and ``tru-dist unlearn ... --purge`` call
:func:`purge_store`: the rows whose (user, item) keyed hash is in any receipt of the ledger,
and every row of a user the ledger deleted wholly, are left out of a new store revision
(:func:`tru_dist.data.store.write_revision`: new file, atomic META switch, superseded files
deleted except the newest ``keep_versions``). Purging is idempotent — a store that holds no
deleted row gets no new revision — so a purge killed at any point is completed by running
it again (orphans of the killed run are deleted first).

Each receipt of the ledger records the purge in ``receipt["purge"]``, a list with one
entry per store: ``status`` (``pending`` while an ``unlearn --purge`` is under way,
``done`` after), ``store``, ``revision_before`` → ``revision``, ``removed_rows`` (and by
split), ``users_emptied``, ``keep_versions``, the ``retained`` superseded files and the
store's ``content_hash`` at ``revision`` — what identifies the purged store when its folder
has moved since (:func:`done_purge`; entries written before it was recorded are found by
their ``store`` path only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tru_dist.data.dataset import SPLIT_LABELS
from tru_dist.data.load import detect_format
from tru_dist.data.source import is_synthetic
from tru_dist.data.store import (
    clean_store,
    held_revision,
    interactions_path,
    read_meta,
    revision,
    write_revision,
)
from tru_dist.errors import ConfigError, DataError, RequestError
from tru_dist.io_utils import atomic_write_json
from tru_dist.unlearn.ledger import DeletionLedger, deleted_rows, refuse_broken_seals


def check_purgeable(store: str | Path) -> Path:
    """``store`` as a Path when it is a tru-dist store; a one-line DataError otherwise."""
    spec = str(store)
    if is_synthetic(spec):
        raise ConfigError(f"--purge needs a stored dataset, but the run's data is '{spec}' (regenerated from "
                          "its seed, nothing is stored); write it with `tru-dist data synth --format store` "
                          "and train on that store")
    folder = Path(store)
    if detect_format(folder) != "store":
        raise DataError(f"{folder} is an MMRec folder; purge rewrites tru-dist stores only: import it "
                        "(tru-dist data import-mmrec --src DIR --out STORE), train on the store, and delete "
                        "the MMRec folder")
    return folder


def purge_store(store: str | Path, ledger: DeletionLedger, *, keep_versions: int = 0) -> dict[str, Any]:
    """Write a store revision without any row the ledger deleted (see the module docstring);
    returns what was done: revision before/after, rows removed (by split), users emptied,
    the retained and removed superseded files, orphans removed, legacy receipts converted."""
    if keep_versions < 0:
        raise ConfigError(f"--keep-versions {keep_versions}: give 0 (delete every superseded version) "
                          "or a positive count")
    folder = check_purgeable(store)
    receipts = ledger.receipts()
    if not receipts:
        raise RequestError(f"{ledger.path} holds no receipts, so nothing is known to be deleted; pass the "
                           "run (or ledger.jsonl) of an unlearning that used this store")
    refuse_broken_seals(ledger, receipts, doing="purging the store")  # before the store is rewritten
    orphans = clean_store(folder)
    meta = read_meta(folder)
    before = revision(meta)
    files_before = {interactions_path(folder, meta)} | {folder / r["file"] for r in meta.get("retained", [])}
    table = pq.read_table(interactions_path(folder, meta), columns=["user_id", "item_id", "x_label"])
    users = table.column("user_id").to_numpy()
    labels = table.column("x_label").to_numpy()
    hit = deleted_rows(users, table.column("item_id").to_numpy(), ledger.all_digests(receipts), ledger.hasher)
    emptied = np.setdiff1d(np.unique(users[hit]), np.unique(users[~hit]))
    by_split = {name: int((labels[hit] == lab).sum()) for name, lab in SPLIT_LABELS.items()}
    if hit.any():
        meta = write_revision(
            folder, ~hit, keep_versions=keep_versions, fault="mid-purge", switch_fault="after-purge-switch",
            record={"receipts": [r["receipt_id"] for r in receipts], "removed_by_split": by_split,
                    "users_emptied": int(len(emptied)), "ledger_key_id": ledger.hasher.key_id})
    elif len(meta.get("retained", [])) > keep_versions:  # nothing new to delete: apply the retention
        meta = {**meta, "retained": meta["retained"][:keep_versions]}
        atomic_write_json(folder / "META.json", meta)
        clean_store(folder)
    files_after = {interactions_path(folder, meta)} | {folder / r["file"] for r in meta.get("retained", [])}
    return {
        "store": str(folder.resolve()),
        "revision_before": before,
        "revision": revision(meta),
        "removed_rows": int(hit.sum()),
        "removed_by_split": by_split,
        "users_emptied": int(len(emptied)),
        "keep_versions": keep_versions,
        "retained": [r["file"] for r in meta.get("retained", [])],
        "superseded_removed": sorted(str(p.relative_to(folder)) for p in files_before - files_after),
        "orphans_removed": orphans,
        "legacy_receipts_converted": ledger.migrate_legacy(),
        "receipts": [r["receipt_id"] for r in receipts],
    }


def purge_record(store: str | Path, summary: dict[str, Any] | None, *, revision_before: int | None = None,
                 keep_versions: int = 0) -> dict[str, Any]:
    """The ``receipt["purge"]`` entry: ``pending`` before the purge (``summary`` None), ``done``
    after. ``removed_rows`` of a done entry counts every revision written since
    ``revision_before`` — right even when a killed purge was completed by a rerun."""
    folder = Path(store)
    if summary is None:
        return {"status": "pending", "store": str(folder.resolve()), "revision_before": revision_before,
                "keep_versions": keep_versions}
    meta = read_meta(folder)
    since = summary["revision_before"] if revision_before is None else revision_before
    new = [r for r in meta.get("revisions", []) if int(r["revision"]) > since]
    split = {name: sum(int(r.get("removed_by_split", {}).get(name, 0)) for r in new) for name in SPLIT_LABELS}
    done = {"status": "done", "store": summary["store"], "revision_before": since,
            "revision": summary["revision"],
            "removed_rows": sum(int(r["removed_rows"]) for r in new), "removed_by_split": split,
            "users_emptied": sum(int(r.get("users_emptied", 0)) for r in new),
            "keep_versions": summary["keep_versions"], "retained": summary["retained"]}
    if revision(meta) == summary["revision"]:  # the META read here is the revision the purge left
        done["content_hash"] = meta["content_hash"]
    return done


def done_purge(receipt: dict, store: str | Path) -> dict | None:
    """The receipt's ``done`` purge entry for ``store``: the entry recorded at its path, else one
    whose (``revision``, ``content_hash``) the store holds or held (:func:`held_revision`) — the
    same store moved or renamed since, or a copy of it, purged either way. None when neither
    (a pending purge, a batch applied without one, another store, or an entry from before
    content hashes were recorded for a store now at another path)."""
    entries = [e for e in receipt.get("purge", []) if isinstance(e, dict) and e.get("status") == "done"]
    here = str(Path(store).resolve())
    at_path = next((e for e in entries if e.get("store") == here), None)
    if at_path is not None:
        return at_path
    meta = read_meta(Path(store))
    return next((e for e in reversed(entries)
                 if isinstance(e.get("revision"), int) and isinstance(e.get("content_hash"), str)
                 and held_revision(meta, e["revision"], e["content_hash"])), None)


def set_purge(ledger: DeletionLedger, receipt: dict, record: dict[str, Any]) -> dict:
    """Record ``record`` in ``receipt["purge"]`` (one entry per store, replaced by store path)."""
    entries = [e for e in receipt.get("purge", []) if e.get("store") != record["store"]]
    return ledger.update(receipt["receipt_id"], purge=entries + [record])


def check_ledger_matches_store(ledger: DeletionLedger, store: str | Path) -> None:
    """Refuse a purge whose ledger belongs to a run trained on other data (a one-line ConfigError).

    A receipt holds keyed hashes of (user id, item id) pairs, and ids are only positions: another
    store's rows with the same ids match them, so purging store B with the ledger of a run
    trained on store A silently deletes B's rows that happen to share A's ids (a campaign did
    exactly that: 14 rows of an unrelated store). The run folder that holds the ledger names its
    data (``config.yaml``: ``data.path``, found as every command on the run finds it —
    :func:`tru_dist.data.location.locate_data`); that must be ``store``. A bare ``ledger.jsonl``
    outside a run folder names no data and is not checked."""
    import yaml

    from tru_dist.config import is_folder_path
    from tru_dist.data.location import locate_data
    from tru_dist.train.checkpoint import CONFIG_FILE

    config = Path(ledger.run_dir) / CONFIG_FILE
    if not config.is_file():
        return
    try:
        tree = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return  # an unreadable config names nothing to compare with; the run's own commands say why
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict):
        return
    path = data.get("path")
    if not is_folder_path(path):
        raise ConfigError(f"the run that holds {ledger.path} was trained on '{path}', not on the store "
                          f"{store}: its receipts name ids of other data, and purging would delete whatever "
                          f"rows of {store} share them; pass the ledger of a run trained on {store}")
    own = Path(locate_data(path, data.get("resolved_path")))
    if own.resolve() != Path(store).resolve():
        raise ConfigError(f"{ledger.path} records deletions from the store {own}, not from {store}: purging "
                          f"{store} with it would delete rows that only share their ids; pass --data {own}, "
                          f"or the ledger of a run trained on {store}")


def purge_all_receipts(store: str | Path, ledger: DeletionLedger, *,
                       keep_versions: int = 0) -> dict[str, Any]:
    """``tru-dist data purge``: purge the store, then record it in every receipt of the ledger
    (after :func:`check_ledger_matches_store`)."""
    check_purgeable(store)  # what the store is, said first
    check_ledger_matches_store(ledger, store)
    summary = purge_store(store, ledger, keep_versions=keep_versions)
    for receipt in ledger.receipts():
        done = next((e for e in receipt.get("purge", []) if e.get("store") == summary["store"]), None)
        since = int(done["revision_before"]) if done else summary["revision_before"]
        set_purge(ledger, receipt, purge_record(store, summary, revision_before=since))
    return summary


def complete_purge(store: str | Path, ledger: DeletionLedger, receipt: dict, *,
                   keep_versions: int = 0) -> dict:
    """``unlearn --purge``, after the receipt: purge (or finish a killed purge), record it as
    done in the receipt; returns the updated receipt."""
    here = str(Path(store).resolve())
    pending = next((e for e in receipt.get("purge", []) if e.get("store") == here), None)
    since = None if pending is None else pending.get("revision_before")
    summary = purge_store(store, ledger, keep_versions=keep_versions)
    return set_purge(ledger, receipt, purge_record(store, summary, revision_before=since))
