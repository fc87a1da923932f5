"""``tru-dist unlearn --purge`` killed (SIGKILL) at every stage, then rerun: one receipt, the model
of an uninterrupted run, the store purged, no orphan files.

Each stage runs in a fresh copy of one template (store + trained LightGCN run + request
file, addressed by relative paths so a copy is self-contained): the first attempt is a
subprocess that SIGKILLs itself at the stage (``TRU_DIST_FAULT``, :mod:`tru_dist.crashpoints`),
the second is the same command, in-process, without the fault.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tru_dist.cli import main
from tru_dist.crashpoints import FAULT_ENV, STAGES
from tru_dist.data.store import read_meta, read_store, store_orphans
from tru_dist.unlearn.ledger import state_version
from tru_dist.unlearn.verify import verify_deletion

REPO = Path(__file__).resolve().parent.parent
# reverse_bpr: an update that always steps (TRU's calibrated gate finds this small deletion on
# target before its first step, so a kill "mid-update" would never fire)
COMMAND = ["unlearn", "--run", "run", "--requests", "req.csv", "--out", "out", "--purge",
           "--method", "reverse_bpr", "--unlearn.epochs=2"]


#: in place: the run's own folder is OUT (no purge), so the model it starts from is the one replaced
IN_PLACE = ["unlearn", "--run", "run", "--requests", "req.csv", "--out", "run", "--method", "reverse_bpr",
            "--unlearn.epochs=2"]


def _killed(cwd: Path, fault: str, command: list[str] = COMMAND) -> subprocess.CompletedProcess:
    """The command in a subprocess that SIGKILLs itself at ``fault``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           FAULT_ENV: fault}
    return subprocess.run([sys.executable, "-m", "tru_dist.cli", *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def _rerun(cwd: Path, command: list[str] = COMMAND) -> int:
    """The same command, in-process (imports are warm), from the same working directory."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return main(list(command))
    finally:
        os.chdir(here)


def _state(root: Path) -> dict:
    """What is on disk: receipts, temp files, store orphans/revision, the checkpoint's model."""
    ledger = root / "out" / "ledger.jsonl"
    receipts = [json.loads(x) for x in ledger.read_text().splitlines()] if ledger.exists() else []
    ckpt = root / "out" / "checkpoint.pt"
    model = state_version(torch.load(ckpt, weights_only=True)["best_model"]) if ckpt.exists() else None
    return {"receipts": receipts, "tmp": sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp")),
            "orphans": [str(p.relative_to(root)) for p in store_orphans(root / "store")],
            "revision": read_meta(root / "store").get("revision", 1), "model": model}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "template"
    root.mkdir()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["data", "synth", "--format", "store", "--out", "store", "--users", "200",
                     "--items", "120", "--modalities", "image:16,text:8"]) == 0
        assert main(["train", "--model", "lightgcn", "--data", "store", "--out", "run", "--train.epochs=3",
                     "--model.dim=16"]) == 0
    finally:
        os.chdir(cwd)
    data = read_store(root / "store")
    train = np.flatnonzero(data.labels == 0)
    pd.DataFrame({"request_id": ["u1", "u2", "p"], "user_id": [4, 11, int(data.users[train[50]])],
                  "item_id": pd.array([None, None, int(data.items[train[50]])], dtype="Int64"),
                  "reason": "gdpr"}).to_csv(root / "req.csv", index=False)
    return root


def _copy(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst)
    return dst


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> dict:
    """The uninterrupted run's outcome."""
    ref = _copy(template, tmp_path_factory.mktemp("ref") / "reference")
    assert _rerun(ref) == 0
    expected = _state(ref)
    assert len(expected["receipts"]) == 1 and expected["revision"] == 2
    assert expected["model"] == expected["receipts"][0]["model_after"]
    return expected


def _kill_and_rerun(stage: str, template: Path, reference: dict, tmp_path: Path) -> tuple:
    model = reference["receipts"][0]["model_after"]
    root = _copy(template, tmp_path / stage)
    killed = _killed(root, stage)
    assert killed.returncode == -9, f"{stage}: not killed ({killed.returncode}): {killed.stderr[-500:]}"
    crashed = _state(root)
    # the receipt is written after the model: a kill before it leaves none, after it one (purge pending)
    assert len(crashed["receipts"]) == (1 if stage in ("after-receipt", "mid-purge", "after-purge-switch")
                                        else 0), stage
    if stage == "mid-model-write":
        assert crashed["tmp"], "the killed write left no temp file: the fault point is not mid-write"
    if stage == "mid-purge":
        assert crashed["orphans"] == ["store/revisions/2/interactions.parquet"] and crashed["revision"] == 1
        assert crashed["receipts"][0]["purge"][0]["status"] == "pending"
    if stage == "after-purge-switch":
        assert crashed["orphans"] == ["store/interactions.parquet"] and crashed["revision"] == 2

    assert _rerun(root) == 0, f"{stage}: the rerun failed"
    after = _state(root)
    receipts = after["receipts"]
    assert len(receipts) == 1, f"{stage}: {len(receipts)} receipts"
    assert receipts[0]["model_after"] == model and after["model"] == model, f"{stage}: another model"
    assert receipts[0]["receipt_id"] == reference["receipts"][0]["receipt_id"]
    purge = receipts[0]["purge"][0]
    assert purge["status"] == "done" and purge["removed_rows"] == receipts[0]["removed"]["interactions"]
    assert after["tmp"] == [] and after["orphans"] == [] and after["revision"] == 2, f"{stage}: {after}"
    assert verify_deletion(root / "out", data=root / "store").clean, stage
    assert sorted(p.name for p in (root / "store" / "revisions").iterdir()) == ["2"]
    left = f"{len(crashed['receipts'])} receipt, {len(crashed['tmp'])} tmp, {len(crashed['orphans'])} orphan"
    return stage, left, len(receipts), receipts[0]["model_after"][:12]


def test_a_kill_mid_purge_is_completed_by_the_rerun(template, reference, tmp_path):
    """The default run's share: the stage with the most to repair (fast; all stages: -m slow)."""
    _kill_and_rerun("mid-purge", template, reference, tmp_path)


@pytest.mark.slow  # one subprocess per stage: ~10 s each on a loaded 2-core machine
def test_unlearn_survives_a_kill_at_every_stage(template, reference, tmp_path):
    rows = [("none", "-", 1, reference["receipts"][0]["model_after"][:12])]
    rows += [_kill_and_rerun(stage, template, reference, tmp_path) for stage in STAGES]
    print("\nstage               | left by the kill              | receipts after rerun | model_after")
    for stage, left, n, model in rows:
        print(f"{stage:<19} | {left:<29} | {n:^20} | {model}")


@pytest.mark.parametrize("stage", ["after-model-write", "after-receipt"])
def test_an_in_place_unlearn_killed_around_its_receipt_is_finished_by_the_rerun(stage, template, tmp_path):
    """``--run run --out run``: the model is renamed over the run's own checkpoint only after its
    receipt. Overwritten before it, a kill between the two left the updated model without a
    receipt, and the rerun unlearned it again (another model, a receipt whose model_before no
    receipt had left, and verify-deletion's chain check failing)."""
    ref = _copy(template, tmp_path / "reference")
    trained = state_version(torch.load(ref / "run" / "checkpoint.pt", weights_only=True)["best_model"])
    assert _rerun(ref, IN_PLACE) == 0
    expected = json.loads((ref / "run" / "ledger.jsonl").read_text())
    root = _copy(template, tmp_path / stage)
    killed = _killed(root, stage, IN_PLACE)
    assert killed.returncode == -9, f"{stage}: not killed ({killed.returncode}): {killed.stderr[-500:]}"
    assert (root / "run" / "checkpoint.staged.pt").exists()
    on_disk = state_version(torch.load(root / "run" / "checkpoint.pt", weights_only=True)["best_model"])
    assert on_disk == trained, "the run's model was replaced before its receipt"
    if stage == "after-receipt":  # the receipt is down, the model before it still in place: not served
        assert main(["evaluate", "--run", str(root / "run"), "--address", "none"]) == 2
    assert _rerun(root, IN_PLACE) == 0
    receipts = [json.loads(x) for x in (root / "run" / "ledger.jsonl").read_text().splitlines()]
    model = state_version(torch.load(root / "run" / "checkpoint.pt", weights_only=True)["best_model"])
    assert len(receipts) == 1 and receipts[0]["model_before"] == trained == expected["model_before"]
    assert receipts[0]["model_after"] == model == expected["model_after"]
    assert not (root / "run" / "checkpoint.staged.pt").exists()
    assert main(["evaluate", "--run", str(root / "run"), "--address", "none"]) == 0
    report = verify_deletion(root / "run")
    assert not [f for f in report.findings if f.kind == "ledger"], report.lines()
