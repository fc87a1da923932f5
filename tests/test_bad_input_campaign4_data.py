"""Bad-input campaign 4, data side: inputs that were misread, hung, or ended in a traceback.

Each case hands ``tru-dist`` one damaged input and expects what the project promises for bad
input — one stderr line ``error: ...`` naming the file, row or column, exit 2 and no ``--out``
left behind — or, for ``verify-deletion --scan``, the damaged file listed as not shown clean
(exit 1): a boolean cell in a request table (it was read as id 1/0 and deleted that user), a
truncated or NaN-holding JSON file and a FIFO in a scanned folder (reported clean, or the scan
blocked forever), an ``.npz`` or a text file saved as ``<modality>_feat.npy``, a feature file
with no modality name (``_feat.npy``), a ledger line that is JSON but not a receipt, and the
re-import hint of a damaged store. Inputs come from :mod:`test_malformed_inputs`' ``build_env``
(built once for this module; a case that damages one copies it first).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_bad_input_campaign import one_line_error
from test_malformed_inputs import Env, _mmrec_copy, _pair, _store_copy, build_env

from tru_dist.cli import main
from tru_dist.data.requests import normalize_requests
from tru_dist.errors import RequestError
from tru_dist.unlearn.ledger import DeletionLedger

NOT_CLEAN = "cannot be shown clean"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The inputs of :mod:`test_malformed_inputs` (built once for this module, never modified)."""
    return build_env(tmp_path_factory.mktemp("campaign4"))


def _copy_unlearned(env: Env, tmp: Path) -> Path:
    """A copy of the unlearned run (its ledger is what the ledger cases damage)."""
    dst = tmp / "u"
    shutil.copytree(env.unlearned, dst)
    return dst


# -- 1. a boolean request cell is not an id ---------------------------------------------------------
@pytest.mark.parametrize("cells, column, shown", [
    ("False,", "user_id", "'False'"),
    ("true,", "user_id", "'True'"),
    ("0,False", "item_id", "'False'"),
], ids=["user-False", "user-true", "item-False"])
def test_a_boolean_cell_in_a_request_csv_is_refused(cells, column, shown, env: Env, tmp_path, capsys):
    req = tmp_path / "v.csv"
    req.write_text(f"request_id,user_id,item_id,reason\nz1,{cells},x\n")
    argv = ["unlearn", "--run", str(env.run), "--requests", str(req), "--out", str(tmp_path / "out"),
            "--method", "noop"]
    one_line_error(argv, capsys, str(req), "request z1", f"{column} {shown}", "not an integer id")


def test_a_boolean_column_in_a_request_parquet_is_refused(env: Env, tmp_path, capsys):
    req = tmp_path / "v.parquet"
    frame = pd.DataFrame({"request_id": ["z1"], "user_id": [True], "item_id": [None], "reason": ["x"]})
    frame.to_parquet(req)
    argv = ["unlearn", "--run", str(env.run), "--requests", str(req), "--out", str(tmp_path / "out"),
            "--method", "noop"]
    one_line_error(argv, capsys, str(req), "request z1", "user_id 'True'", "not an integer id")


@pytest.mark.parametrize("users, items, bad", [
    ([True], [None], "request r1 has user_id 'True'"),
    ([np.False_], [None], "request r1 has user_id 'False'"),
    ([3, True], [None, None], "request r2 has user_id 'True'"),
    ([3], [False], "request r1 has item_id 'False'"),
    ([3, 4], pd.array([None, True], dtype="boolean"), "request r2 has item_id 'True'"),
], ids=["bool", "numpy-bool", "mixed-object", "item-bool", "nullable-boolean"])
def test_a_boolean_id_in_a_request_frame_is_refused(users, items, bad):
    rids = [f"r{k + 1}" for k in range(len(users))]
    df = pd.DataFrame({"request_id": rids, "user_id": users, "item_id": items, "reason": ["x"] * len(users)})
    with pytest.raises(RequestError, match=f"{bad}, not an integer id; fix that row"):
        normalize_requests(df)


# -- 2/4. verify-deletion --scan: unreadable JSON, non-regular files --------------------------------
@pytest.fixture
def ledger_run(env: Env, tmp_path: Path) -> Path:
    """A run folder holding only the unlearned run's ledger: clean by itself, so a scan's exit
    status is decided by what the scanned folder holds."""
    run = tmp_path / "ledger-only"
    run.mkdir()
    shutil.copy2(env.unlearned / "ledger.jsonl", run / "ledger.jsonl")
    shutil.copytree(env.unlearned / "ledger_hashes", run / "ledger_hashes")
    return run


class _Hung(BaseException):
    """Raised by the alarm when a scan blocks (a BaseException: the scanner's ``except Exception``
    must not swallow it)."""


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail a test whose scan blocks (e.g. opening a FIFO) after 20 s instead of hanging."""
    def _raise(signum, frame):
        raise _Hung("the scan blocked")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _scan(run: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify-deletion", "--run", str(run), "--scan", str(folder)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out


def test_a_scan_of_readable_files_without_deleted_data_is_clean(ledger_run: Path, env: Env, tmp_path, capsys):
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "ok.json").write_text(json.dumps([{"user_id": 999, "item_id": 999, "score": float("nan")}]))
    rc, out = _scan(ledger_run, scan, capsys)
    assert rc == 0 and "clean: no deleted pair" in out, out


def _json_cases(u: int, i: int) -> dict[str, str]:
    """Files holding the deleted pair (u, i) where the scanner could not read it."""
    return {
        "t.json": f'[{{"user_id": 1, "item_id": 2}}, {{"user_id": {u}, "item_id": {i}}}, '
                  '{"user_id": 5, "item_',
        "t.jsonl": f'{{"user_id": 1, "item_id": 2}}\n{{"user_id": {u}, "item_id": {i}',
        "nan.json": f'[{{"user_id": {u}, "item_id": NaN}}]',
        "lower-nan.jsonl": f'{{"user_id": {u}, "item_id": {i}, "loss": nan}}\n',
    }


@pytest.mark.parametrize("name", ["t.json", "t.jsonl", "nan.json", "lower-nan.jsonl"])
def test_a_json_file_the_scan_cannot_read_is_not_shown_clean(name, ledger_run: Path, env: Env, tmp_path,
                                                             capsys):
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / name).write_text(_json_cases(*_pair(env))[name])
    rc, out = _scan(ledger_run, scan, capsys)
    listed = [x for x in out.splitlines() if str(scan / name) in x]
    assert rc == 1, out
    assert len(listed) == 1 and NOT_CLEAN in listed[0], out


@pytest.mark.parametrize("name", ["p.json", "p.csv", "p.npy"])
def test_a_fifo_in_a_scanned_folder_is_not_opened_and_not_shown_clean(name, ledger_run: Path, tmp_path,
                                                                      capsys, no_hang):
    scan = tmp_path / "scan"
    scan.mkdir()
    os.mkfifo(scan / name)
    rc, out = _scan(ledger_run, scan, capsys)
    listed = [x for x in out.splitlines() if str(scan / name) in x]
    assert rc == 1, out
    assert len(listed) == 1 and "not a regular file" in listed[0] and NOT_CLEAN in listed[0], out


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"", "truncated"])
def test_a_corrupt_checkpoint_is_not_shown_clean(content, ledger_run: Path, tmp_path, capsys):
    """A checkpoint that does not load at all may hold deleted rows: exit 1, not "not inspected"."""
    scan = tmp_path / "scan"
    scan.mkdir()
    if content == "truncated":
        torch.save({"users": torch.arange(50), "items": torch.arange(50)}, tmp_path / "whole.pt")
        content = (tmp_path / "whole.pt").read_bytes()[:200]
    (scan / "c.pt").write_bytes(content)
    rc, out = _scan(ledger_run, scan, capsys)
    listed = [x for x in out.splitlines() if str(scan / "c.pt") in x]
    assert rc == 1, out
    assert len(listed) == 1 and "cannot be read" in listed[0] and NOT_CLEAN in listed[0], out
    assert "not inspected" not in out, out


def test_a_checkpoint_that_pickles_objects_is_not_inspected_and_not_unpickled(ledger_run: Path, tmp_path,
                                                                              capsys):
    """A valid checkpoint torch refuses weights-only (it pickles a Fraction) is never unpickled: it
    is listed as not inspected, like a ``.pkl``, and does not by itself fail the scan."""
    scan = tmp_path / "scan"
    scan.mkdir()
    torch.save({"share": Fraction(1, 3)}, scan / "objects.pt")
    rc, out = _scan(ledger_run, scan, capsys)
    listed = [x for x in out.splitlines() if "not inspected" in x]
    assert rc == 0, out
    assert len(listed) == 1 and "objects.pt (a pickle that does not load weights-only)" in listed[0], out
    assert "pickle other objects" in listed[0], out


# -- 13. an .npz or a text file saved as a .npy feature matrix --------------------------------------
def _feature_argv(command: str, data: Path, tmp: Path) -> list[str]:
    out = str(tmp / "out")
    return {
        "stats": ["data", "stats", "--data", str(data)],
        "import-mmrec": ["data", "import-mmrec", "--src", str(data), "--out", out],
        "train": ["train", "--model", "lightgcn", "--data", str(data), "--out", out, "--train.epochs=1",
                  "--model.dim=8", "--address", "none", "--device", "cpu"],
    }[command]


def _write_npz(path: Path) -> None:
    with open(path, "wb") as fh:  # through a handle: np.savez on a path would append '.npz'
        np.savez(fh, a=np.zeros((40, 4), "f4"))


@pytest.mark.parametrize("command", ["stats", "import-mmrec", "train"])
def test_an_npz_archive_saved_as_a_feature_npy_is_refused(command, env: Env, tmp_path, capsys):
    mm = _mmrec_copy(env, tmp_path)
    _write_npz(mm / "image_feat.npy")
    one_line_error(_feature_argv(command, mm, tmp_path), capsys, str(mm / "image_feat.npy"),
                   "is an .npz archive, not a .npy array", "numpy.save")


def test_an_npz_archive_in_a_store_is_refused(env: Env, tmp_path, capsys):
    st = _store_copy(env, tmp_path)
    _write_npz(st / "item_features" / "image.npy")
    one_line_error(_feature_argv("train", st, tmp_path), capsys, str(st / "item_features" / "image.npy"),
                   "is an .npz archive, not a .npy array")


@pytest.mark.parametrize("command", ["stats", "import-mmrec"])
def test_a_text_file_saved_as_a_feature_npy_is_refused_without_a_pickle_hint(command, env: Env, tmp_path,
                                                                             capsys):
    mm = _mmrec_copy(env, tmp_path)
    (mm / "image_feat.npy").write_text("1 2 3\n4 5 6\n")
    line = one_line_error(_feature_argv(command, mm, tmp_path), capsys, str(mm / "image_feat.npy"),
                          "is not a .npy array", "numpy.save")
    assert "allow_pickle" not in line and "pickled" not in line, line


# -- 14. a feature file with no modality name -------------------------------------------------------
@pytest.mark.parametrize("command", ["stats", "import-mmrec", "train"])
def test_a_feature_file_without_a_modality_name_is_refused(command, env: Env, tmp_path, capsys):
    mm = _mmrec_copy(env, tmp_path)
    shutil.copy2(mm / "image_feat.npy", mm / "_feat.npy")
    one_line_error(_feature_argv(command, mm, tmp_path), capsys, str(mm / "_feat.npy"), "no modality name",
                   "image_feat.npy")


# -- 15. a ledger line that is JSON but not a receipt -----------------------------------------------
def _not_receipts(ledger: Path) -> dict[str, str]:
    """Lines that parse as JSON but are not receipts (the last drops a real receipt's request_ids)."""
    receipt = json.loads(ledger.read_text().splitlines()[0])
    receipt.pop("request_ids")
    return {"empty-object": "{}", "list": "[1]", "no-request-ids": json.dumps(receipt)}


@pytest.mark.parametrize("line", ["empty-object", "list", "no-request-ids"])
def test_a_ledger_line_that_is_not_a_receipt_is_named_when_the_ledger_is_read(line, env: Env, tmp_path):
    u = _copy_unlearned(env, tmp_path)
    ledger = u / "ledger.jsonl"
    bad = _not_receipts(ledger)[line]
    n = len(ledger.read_text().splitlines()) + 1
    with ledger.open("a") as fh:
        fh.write(bad + "\n")
    with pytest.raises(RequestError, match=rf"ledger.jsonl line {n} is not a receipt .*; restore"):
        DeletionLedger(u).receipts()


@pytest.mark.parametrize("command, line", [
    ("recommend", "empty-object"), ("recommend", "list"), ("evaluate", "empty-object"),
    ("unlearn", "no-request-ids"), ("verify-deletion", "list"), ("verify-deletion", "no-request-ids"),
])
def test_a_ledger_line_that_is_not_a_receipt_is_one_line_for_every_command(command, line, env: Env, tmp_path,
                                                                          capsys):
    u = _copy_unlearned(env, tmp_path)
    ledger = u / "ledger.jsonl"
    with ledger.open("a") as fh:
        fh.write(_not_receipts(ledger)[line] + "\n")
    argv = {
        "recommend": ["recommend", "--run", str(u), "--users", "0"],
        "evaluate": ["evaluate", "--run", str(u)],
        "unlearn": ["unlearn", "--run", str(u), "--requests", str(env.requests),
                    "--out", str(tmp_path / "out"), "--method", "noop"],
        "verify-deletion": ["verify-deletion", "--run", str(u)],
    }[command]
    one_line_error(argv, capsys, str(ledger), "line 2", "is not a receipt")


# -- 17. a damaged store names the command that rebuilds it -----------------------------------------
def test_a_damaged_store_names_the_import_command_that_exists(env: Env, tmp_path, capsys):
    st = _store_copy(env, tmp_path)
    table = pq.read_table(st / "interactions.parquet")
    pq.write_table(table.slice(1), st / "interactions.parquet")
    line = one_line_error(["data", "stats", "--data", str(st)], capsys, str(st), "tru-dist data import-mmrec")
    assert "(tru-dist data import)" not in line
