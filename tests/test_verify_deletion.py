"""``tru-dist verify-deletion``: clean after ``unlearn --purge``; a deleted pair (or a deleted user's
row, or a model trained on the deleted data) planted in any artifact kind the project writes is
found, and the scan names exactly that file."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tru_dist.cli import main
from tru_dist.data.mmrec import write_mmrec
from tru_dist.data.store import read_store, write_store


@dataclass
class Purged:
    root: Path
    store: Path
    run: Path
    out: Path
    original: object  # the RecDataset before the purge
    pair: tuple[int, int]  # a deleted pair (of a partially deleted user)
    user: int  # a wholly deleted user
    kept: np.ndarray  # (n, 2) pairs still in the store


@pytest.fixture(scope="module")
def purged(tmp_path_factory) -> Purged:
    root = tmp_path_factory.mktemp("verify")
    store, run, out = root / "store", root / "run", root / "out"
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "60", "--items", "40",
                 "--modalities", "image:8"]) == 0
    assert main(["train", "--model", "lightgcn", "--data", str(store), "--out", str(run), "--train.epochs=1",
                 "--model.dim=8"]) == 0
    original = read_store(store)
    write_store(original, root / "store-before")  # a backup copy, planted in one case
    train = np.flatnonzero((original.labels == 0) & (original.users != 7))
    pair = (int(original.users[train[10]]), int(original.items[train[10]]))
    req = root / "req.csv"
    pd.DataFrame({"request_id": ["user7", "pair"], "user_id": [7, pair[0]],
                  "item_id": pd.array([None, pair[1]], dtype="Int64"), "reason": "x"}
                 ).to_csv(req, index=False)
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(out), "--purge",
                 "--unlearn.epochs=1"]) == 0
    now = read_store(store)
    return Purged(root, store, run, out, original, pair, 7, np.stack([now.users, now.items], axis=1))


@pytest.fixture()
def fresh(purged, tmp_path) -> Purged:
    """A private copy of the purged run and store (plants must not leak between cases)."""
    shutil.copytree(purged.out, tmp_path / "out")
    shutil.copytree(purged.store, tmp_path / "store")
    return Purged(purged.root, tmp_path / "store", purged.run, tmp_path / "out", purged.original, purged.pair,
                  purged.user, purged.kept)


def _verify(p: Purged, *scan: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    argv = ["verify-deletion", "--run", str(p.out), "--data", str(p.store)]
    for s in scan:
        argv += ["--scan", str(s)]
    rc = main(argv)
    return rc, capsys.readouterr().out


def _mix(p: Purged, with_pair: tuple[int, int]) -> np.ndarray:
    """Clean pairs with one deleted pair among them."""
    rows = p.kept[:30].copy()
    rows[17] = with_pair
    return rows


def _plant_store_copy(p, d):
    shutil.copytree(p.root / "store-before", d / "backup-store")
    return d / "backup-store" / "interactions.parquet"


def _plant_parquet(p, d):
    rows = _mix(p, p.pair)
    path = d / "exports" / "pairs.parquet"
    path.parent.mkdir()
    pd.DataFrame({"user_id": rows[:, 0], "item_id": rows[:, 1], "score": 1.0}).to_parquet(path)
    return path


def _plant_deleted_user_row(p, d):
    """A row of the wholly deleted user with an item they never had: their history, not a deleted pair."""
    had = set(p.original.items[p.original.users == p.user].tolist())
    item = next(i for i in range(p.original.n_items) if i not in had)
    path = d / "user_rows.parquet"
    pd.DataFrame({"user_id": [1, p.user], "item_id": [2, item]}).to_parquet(path)
    return path


def _plant_csv(p, d):
    rows = _mix(p, p.pair)
    path = d / "requests-done.csv"
    pd.DataFrame({"request_id": [f"r{k}" for k in range(len(rows))], "user_id": rows[:, 0],
                  "item_id": rows[:, 1], "reason": "x"}).to_csv(path, index=False)
    return path


def _plant_mmrec(p, d):
    return write_mmrec(p.original, d / "mmrec-export", name="export")


def _plant_npy(p, d):
    path = d / "edges.npy"
    np.save(path, _mix(p, p.pair).astype(np.int64))
    return path


def _plant_npz_edge_index(p, d):
    path = d / "graph.npz"
    np.savez(path, edge_index=_mix(p, p.pair).T.astype(np.int32), weight=np.ones(30, np.float32))
    return path


def _plant_legacy_ledger_pairs(p, d):
    path = p.out / "ledger_pairs" / "old.npy"
    path.parent.mkdir()
    np.save(path, np.array([p.pair], dtype=np.int64))
    return path


def _plant_original_checkpoint(p, d):
    path = d / "backup" / "checkpoint.pt"
    path.parent.mkdir()
    shutil.copy(p.run / "checkpoint.pt", path)
    return path


def _plant_symlink_to_original(p, d):
    path = p.out / "original.pt"
    path.symlink_to(p.run / "checkpoint.pt")
    return path


def _plant_sweep_context(p, d):
    path = d / "sweeps" / "tiny" / "context" / "users-5pct" / "seed0.pt"
    path.parent.mkdir(parents=True)
    rows = _mix(p, p.pair)
    forget = {"users": torch.from_numpy(rows[:, 0].copy()), "items": torch.from_numpy(rows[:, 1].copy()),
              "request_ids": ["a"]}
    torch.save({"forget": forget, "states": {}, "ref": {"retrain_hit": 0.1}}, path)
    return path


def _plant_ray_checkpoint(p, d):
    path = d / "ray" / "train-run-120000" / "checkpoint_000001" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    saved = torch.load(p.run / "checkpoint.pt", weights_only=True)
    torch.save({"model": saved["best_model"], "epoch": 3}, path)
    return path


def _plant_ray_result(p, d):
    path = d / "ray" / "tune" / "trial_0001" / "result.json"
    path.parent.mkdir(parents=True)
    lines = [{"training_iteration": 1, "score": 0.5},
             {"training_iteration": 2, "examples": [{"user_id": p.pair[0], "item_id": p.pair[1]}]}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _plant_compare_json(p, d):
    path = d / "compare" / "seed0.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"tru": {"recall@20": 0.3}, "forget_pairs": [[1, 2], list(p.pair)]}))
    return path


def _plant_ledger_line(p, d):
    """Another run's ledger whose receipt kept the raw pair (as a hand-edited ledger might)."""
    path = d / "old-run" / "ledger.jsonl"
    path.parent.mkdir()
    receipts = (p.out / "ledger.jsonl").read_text().splitlines()
    extra = {"receipt_id": "x", "request_ids": ["y"], "debug": {"user_id": p.pair[0], "item_id": p.pair[1]}}
    path.write_text("\n".join(receipts + [json.dumps(extra)]) + "\n")
    return path


def _plant_unpurged_metrics(p, d):
    path = d / "old-out" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"method": "tru", "source_run": str(p.run.resolve())}))
    return path


PLANTS = {
    "store copy": _plant_store_copy,
    "parquet": _plant_parquet,
    "deleted user's row": _plant_deleted_user_row,
    "csv request table": _plant_csv,
    "mmrec .inter": _plant_mmrec,
    "npy pairs": _plant_npy,
    "npz edge_index": _plant_npz_edge_index,
    "legacy ledger_pairs": _plant_legacy_ledger_pairs,
    "original checkpoint copy": _plant_original_checkpoint,
    "symlink to original": _plant_symlink_to_original,
    "sweep context forget set": _plant_sweep_context,
    "ray train checkpoint": _plant_ray_checkpoint,
    "ray tune result.json": _plant_ray_result,
    "compare json": _plant_compare_json,
    "ledger line": _plant_ledger_line,
    "metrics source_run": _plant_unpurged_metrics,
}


def test_a_purged_run_verifies_clean(fresh, capsys):
    rc, text = _verify(fresh, capsys=capsys)
    assert rc == 0, text
    assert "clean: no deleted pair" in text and "store" in text and "revision 2" in text
    assert "checkpoint 1" in text and "ledger 1" in text


def test_the_source_run_is_flagged(purged, capsys):
    rc, text = _verify(purged, purged.run, capsys=capsys)
    assert rc == 1 and "checkpoint.pt [checkpoint]: model version" in text  # the source run's model


@pytest.mark.parametrize("kind", list(PLANTS))
def test_a_planted_deleted_pair_is_found(kind, fresh, tmp_path, capsys):
    scan = tmp_path / "scan"
    scan.mkdir()
    planted = PLANTS[kind](fresh, scan)
    rc, text = _verify(fresh, scan, capsys=capsys)
    found = [line for line in text.splitlines() if line.startswith("  - ")]
    assert rc == 1, text
    assert len(found) == 1 and found[0].startswith(f"  - {planted}"), text
    if kind == "deleted user's row":
        assert "1 row(s) of wholly deleted users" in found[0] and "deleted pair" not in found[0]


# -- the ledger's own integrity: receipts chain model to model, up to the run's checkpoint --------
@pytest.fixture(scope="module")
def chained(tmp_path_factory) -> Path:
    """A run unlearned three times (three request files, one receipt each): its last folder's
    ledger holds receipts 1-3, each starting from the model the one before left."""
    root = tmp_path_factory.mktemp("chain")
    run, out = root / "run", root / "out"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(run),
                 "--train.epochs=1", "--model.dim=8"]) == 0
    files = []
    for k, user in enumerate((3, 5, 8)):
        path = root / f"r{k}.csv"
        pd.DataFrame({"request_id": [f"u{user}"], "user_id": [user],
                      "item_id": pd.array([None], dtype="Int64"), "reason": "x"}).to_csv(path, index=False)
        files += ["--requests", str(path)]
    assert main(["unlearn", "--run", str(run), *files, "--out", str(out), "--method", "reverse_bpr",
                 "--unlearn.epochs=1"]) == 0
    return out / "3-r2"


def _ledger_lines(run: Path) -> list[str]:
    return (run / "ledger.jsonl").read_text().splitlines()


def _edited(line: str, **fields) -> str:
    return json.dumps({**json.loads(line), **fields}, sort_keys=True)


@pytest.mark.parametrize("tamper", ["none", "middle receipt removed", "receipts reordered",
                                    "last receipt removed", "receipt repeated", "checkpoint replaced",
                                    "version edited", "first receipt removed", "count edited",
                                    "request id edited", "seal removed", "sealed under another key"])
def test_a_tampered_ledger_is_not_shown_clean(tamper, chained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(chained, run)
    lines = _ledger_lines(run)
    assert len(lines) == 3
    edited = {"none": lines, "middle receipt removed": [lines[0], lines[2]],
              "receipts reordered": [lines[1], lines[0], lines[2]], "last receipt removed": lines[:2],
              "receipt repeated": [lines[0], lines[1], lines[1], lines[2]],
              "checkpoint replaced": lines,
              "version edited": [lines[0], _edited(lines[1], model_before=5), lines[2]],
              "first receipt removed": lines[1:],
              "count edited": [lines[0], _edited(lines[1], removed={**json.loads(lines[1])["removed"],
                                                                    "interactions": 1}), lines[2]],
              "request id edited": [lines[0], _edited(lines[1], request_ids=["someone-else"]), lines[2]],
              "seal removed": [lines[0], json.dumps({k: v for k, v in json.loads(lines[1]).items()
                                                     if k != "seal"}, sort_keys=True), lines[2]],
              "sealed under another key": [lines[0], _edited(lines[1], seal={**json.loads(lines[1])["seal"],
                                                                             "key_id": "0" * 16}), lines[2]],
              }[tamper]
    if tamper == "count edited":
        assert json.loads(lines[1])["removed"]["interactions"] != 1
    (run / "ledger.jsonl").write_text("".join(x + "\n" for x in edited))
    if tamper == "checkpoint replaced":  # the model of receipt 2, put back as the run's
        shutil.copy(chained.parent / "2-r1" / "checkpoint.pt", run / "checkpoint.pt")
    capsys.readouterr()
    rc = main(["verify-deletion", "--run", str(run)])
    text = capsys.readouterr().out
    ledger = [x for x in text.splitlines() if x.startswith(f"  - {run / 'ledger.jsonl'} [ledger]")]
    if tamper == "none":  # the one finding: metrics.json's source_run, 2-r1 (receipt 3's model_before)
        assert not ledger and "FOUND deleted data in 1 file(s)" in text, text
        assert "source_run points at" in text, text
        return
    assert rc == 1 and len(ledger) == 1, text
    expected = {"middle receipt removed": "receipt 2 (",
                "receipts reordered": "a receipt was removed, reordered",
                "last receipt removed": "the run's model", "receipt repeated": "appear more than once",
                "checkpoint replaced": "or the checkpoint replaced",
                "version edited": "holds model_before that is not a model version",
                "first receipt removed": "the ledger lacks receipt(s)",
                "count edited": "): its content does not match its seal",
                "request id edited": "): its content does not match its seal",
                "seal removed": "): its seal was removed",
                "sealed under another key": "): it was sealed under ledger key 0000"}[tamper]
    assert expected in ledger[0], text
    if "seal" in tamper or "edited" in tamper and tamper != "version edited":
        assert "receipt 2 (" in ledger[0] and "receipt 1 (" not in ledger[0], text
