"""Inputs a bad-input campaign found ending in a Python traceback (or in a wrong answer) are
refused in one line.

Each case hands ``tru-dist`` one damaged input — a degenerate synthetic spec, a config that is a
folder or binary, a bogus Ray address, a request CSV that is binary or UTF-16 or names an id
beyond int64, a truncated ``metrics.json``, an MMRec ``.inter`` that is a folder or not UTF-8, a
feature matrix with no columns, a binary ledger, ``--originals`` naming a file, a checkpoint
with NaN parameters, a request column tru-dist does not read, an empty ``--modalities``, an audit
``--original`` that is the audited run or already holds its requests, an ``evaluate`` override it
would not read, a repeated ``eval.ks`` cut-off, a tuned file of another model — and
expects exit status 2 with exactly one stderr line ``error: ...``
naming the file or value, no traceback, and no partial ``--out``. Inputs are built as in
:mod:`test_malformed_inputs` (its ``build_env`` and helpers; a case that damages one copies it
first). Section 17 also checks messages and warnings that named the wrong thing or nothing: a
``.inter`` cell as written, users left with only held-out rows, ``bench scale --seed`` and
``bench pool``'s ``--work-dir``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_malformed_inputs import Env, _checkpoint, _mmrec_copy, _pair, _run_copy, _store_copy, build_env

from tru_dist.cli import main
from tru_dist.config import Config
from tru_dist.data.requests import normalize_requests
from tru_dist.errors import ConfigError, RequestError

BINARY = bytes(range(128, 256)) * 4  # no valid UTF-8 anywhere: 0x80 cannot start a character
UTF16_REQUESTS = "request_id,user_id,item_id,reason\nr1,0,1,x\n".encode("utf-16")  # with its BOM


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The inputs of :mod:`test_malformed_inputs` (built once for this module, never modified)."""
    return build_env(tmp_path_factory.mktemp("campaign"))


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """Run ``tru-dist argv``: exit 2, one stderr line ``error: ...`` naming each of ``names``, no
    traceback, no ``--out`` left behind (when argv has one that did not exist before)."""
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    existed = out is not None and out.exists()
    capsys.readouterr()
    rc = main(argv)
    stdout, stderr = capsys.readouterr()
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert rc == 2, f"exit {rc}, stdout {stdout[:300]!r}, stderr {stderr[-600:]!r}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"stderr was {stderr!r}"
    assert "Traceback" not in stdout + stderr
    for name in names:
        assert name in lines[0], f"{lines[0]!r} does not name {name!r}"
    if out is not None and not existed:
        assert not out.exists(), f"partial output left: {sorted(p.name for p in out.rglob('*'))}"
    return lines[0]


def _train(data: str | Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--model", "lightgcn", "--data", str(data), "--out", str(tmp / "out"),
            "--train.epochs=1", "--model.dim=8", "--address", "none", "--device", "cpu", *extra]


# -- 1. degenerate synthetic specs -----------------------------------------------------------------
@pytest.mark.parametrize("spec", ["synthetic:0x5", "synthetic:1x1", "synthetic:-5x10", "synthetic:40x4"])
def test_a_synthetic_spec_below_the_generators_minimum_is_refused(spec, tmp_path, capsys):
    one_line_error(_train(spec, tmp_path), capsys, spec, "at least 1 user and 5 items")


def test_the_smallest_synthetic_spec_named_in_the_message_is_generated():
    from tru_dist.data.source import synthetic_from_spec

    data = synthetic_from_spec("synthetic:1x5")
    assert (data.n_users, data.n_items) == (1, 5)


# -- 2. --config that is a folder or not text ------------------------------------------------------
def test_a_config_that_is_a_folder_is_refused(env: Env, tmp_path, capsys):
    (tmp_path / "cfgdir").mkdir()
    one_line_error(_train(env.store, tmp_path, "--config", str(tmp_path / "cfgdir")), capsys,
                   str(tmp_path / "cfgdir"), "is a folder")


@pytest.mark.parametrize("content", [BINARY, "train:\n  lr: 0.1\n".encode("utf-16")], ids=["binary", "utf16"])
def test_a_config_that_is_not_utf8_text_is_refused(content, env: Env, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    one_line_error(_train(env.store, tmp_path, "--config", str(cfg)), capsys, str(cfg), "not UTF-8")


# -- 3. dist.address -------------------------------------------------------------------------------
def test_a_bogus_address_is_refused_before_ray(env: Env, tmp_path, capsys):
    argv = _train(env.store, tmp_path)
    argv[argv.index("--address") + 1] = "bogus"
    one_line_error(argv, capsys, "dist.address", "'bogus'", "ray://host:port")


@pytest.mark.parametrize("address", ["local", "none", "auto", "ray://10.0.0.1:10001", "ray://head",
                                     "10.0.0.1:6379", "localhost:6379", "[::1]:6379"])
def test_every_address_ray_takes_is_accepted(address):
    assert Config.from_dict({"dist": {"address": address}}).dist.address == address


@pytest.mark.parametrize("address", ["bogus", "", "http://127.0.0.1:8265", "ray://", "head:"])
def test_other_addresses_are_refused(address):
    with pytest.raises(ConfigError, match="dist.address"):
        Config.from_dict({"dist": {"address": address}})


# -- 4. request CSVs that are not UTF-8 ------------------------------------------------------------
@pytest.mark.parametrize("content", [BINARY, UTF16_REQUESTS], ids=["binary", "utf16"])
def test_a_request_csv_that_is_not_utf8_is_refused_by_unlearn(content, env: Env, tmp_path, capsys):
    req = tmp_path / "req.csv"
    req.write_bytes(content)
    one_line_error(["unlearn", "--run", str(env.run), "--requests", str(req), "--out", str(tmp_path / "out"),
                    "--unlearn.epochs=1"], capsys, str(req), "not UTF-8")


def test_a_request_csv_that_is_not_utf8_is_refused_by_audit(env: Env, tmp_path, capsys):
    req = tmp_path / "req.csv"
    req.write_bytes(UTF16_REQUESTS)
    one_line_error(["audit", "--run", str(env.unlearned), "--requests", str(req), "--original", str(env.run)],
                   capsys, str(req), "not UTF-8")


# -- 5. a truncated metrics.json -------------------------------------------------------------------
def _truncated_metrics(run: Path) -> Path:
    path = run / "metrics.json"
    path.write_bytes(path.read_bytes()[:50])
    return path


@pytest.mark.parametrize("command", ["evaluate", "recommend", "unlearn"])
def test_a_run_whose_metrics_json_is_truncated_is_refused(command, env: Env, tmp_path, capsys):
    run = _run_copy(env, tmp_path)
    metrics = _truncated_metrics(run)
    argv = {"evaluate": ["evaluate", "--run", str(run), "--address", "none", "--device", "cpu"],
            "recommend": ["recommend", "--run", str(run), "--users", "0,1", "--k", "5", "--device", "cpu"],
            "unlearn": ["unlearn", "--run", str(run), "--requests", str(env.requests), "--out",
                        str(tmp_path / "out"), "--unlearn.epochs=1"]}[command]
    one_line_error(argv, capsys, str(metrics), "metrics")


def test_an_unlearned_run_whose_metrics_json_is_truncated_is_refused_by_audit(env: Env, tmp_path, capsys):
    run = tmp_path / "unlearned"
    shutil.copytree(env.unlearned, run)
    metrics = _truncated_metrics(run)
    one_line_error(["audit", "--run", str(run), "--requests", str(env.requests)], capsys, str(metrics))


# -- 6. an MMRec .inter that is a folder or not UTF-8 ----------------------------------------------
def _damaged_inter(env: Env, tmp: Path, how: str) -> tuple[Path, Path]:
    mm = _mmrec_copy(env, tmp)
    inter = next(mm.glob("*.inter"))
    if how == "folder":
        inter.unlink()
        inter.mkdir()
    elif how == "binary":
        inter.write_bytes(BINARY)
    else:
        inter.write_bytes(inter.read_text().encode("utf-16"))
    return mm, inter


@pytest.mark.parametrize("how", ["folder", "binary", "utf16"])
@pytest.mark.parametrize("command", ["import-mmrec", "train", "stats", "forget"])
def test_an_mmrec_inter_file_that_is_a_folder_or_not_utf8_is_refused(command, how, env: Env, tmp_path,
                                                                     capsys):
    mm, inter = _damaged_inter(env, tmp_path, how)
    out = str(tmp_path / "out")
    argv = {"import-mmrec": ["data", "import-mmrec", "--src", str(mm), "--out", out],
            "train": _train(mm, tmp_path),
            "stats": ["data", "stats", "--data", str(mm)],
            "forget": ["data", "forget", "--data", str(mm), "--regime", "users", "--fraction", "0.1",
                       "--out", str(tmp_path / "out.csv")]}[command]
    one_line_error(argv, capsys, str(inter), "is a folder" if how == "folder" else "not UTF-8")


# -- 7. a feature matrix with no columns -----------------------------------------------------------
@pytest.mark.parametrize("command", ["import-mmrec", "train"])
def test_a_feature_matrix_with_no_columns_is_refused(command, env: Env, tmp_path, capsys):
    mm = _mmrec_copy(env, tmp_path)
    n_items = np.load(mm / "image_feat.npy").shape[0]
    np.save(mm / "image_feat.npy", np.zeros((n_items, 0), dtype=np.float32))
    argv = (["data", "import-mmrec", "--src", str(mm), "--out", str(tmp_path / "out")]
            if command == "import-mmrec" else _train(mm, tmp_path))
    one_line_error(argv, capsys, "image_feat.npy", "no feature columns")


# -- 8. a binary ledger ----------------------------------------------------------------------------
def test_a_binary_ledger_is_refused_by_purge(env: Env, tmp_path, capsys):
    store = _store_copy(env, tmp_path)
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(BINARY)
    before = sorted((p.relative_to(store), p.read_bytes()) for p in store.rglob("*") if p.is_file())
    one_line_error(["data", "purge", "--data", str(store), "--ledger", str(ledger)], capsys, str(ledger),
                   "not UTF-8")
    assert sorted((p.relative_to(store), p.read_bytes()) for p in store.rglob("*") if p.is_file()) == before


def test_a_binary_ledger_is_refused_by_verify_deletion(env: Env, tmp_path, capsys):
    run = tmp_path / "unlearned"
    shutil.copytree(env.unlearned, run)
    (run / "ledger.jsonl").write_bytes(BINARY)
    one_line_error(["verify-deletion", "--run", str(run)], capsys, str(run / "ledger.jsonl"), "not UTF-8")


# -- 9. compare --originals naming a file ----------------------------------------------------------
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_compare_refuses_originals_that_is_a_file_before_writing(under, env: Env, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("precious\n")
    originals = afile / "cache" if under else afile
    one_line_error(["compare", "--data", str(env.store), "--model", "lightgcn", "--regime", "interactions",
                    "--fraction", "0.05", "--methods", "noop", "--seeds", "1", "--originals", str(originals),
                    "--out", str(tmp_path / "out"), "--train.epochs=1", "--address", "none", "--device",
                    "cpu"],
                   capsys, "--originals", str(afile))
    assert afile.read_text() == "precious\n"


# -- 10. a checkpoint with NaN parameters ----------------------------------------------------------
def _nan_best_model(saved: dict) -> dict:
    best = dict(saved["best_model"])
    name = next(k for k, t in best.items() if t.is_floating_point())
    best[name] = best[name].clone()
    best[name].view(-1)[3] = float("nan")
    return {**saved, "best_model": best}


@pytest.mark.parametrize("command", ["unlearn", "evaluate", "recommend"])
def test_a_checkpoint_with_nan_parameters_is_refused(command, env: Env, tmp_path, capsys):
    argv = _checkpoint(_nan_best_model)(env, tmp_path)
    run = Path(argv[argv.index("--run") + 1])
    name = next(k for k, t in torch.load(run / "checkpoint.pt", weights_only=True)["best_model"].items()
                if t.is_floating_point())
    if command == "evaluate":
        argv = ["evaluate", "--run", str(run), "--address", "none", "--device", "cpu"]
    elif command == "recommend":
        argv = ["recommend", "--run", str(run), "--users", "0,1", "--k", "5", "--device", "cpu"]
    one_line_error(argv, capsys, str(run / "checkpoint.pt"), "NaN", name)


# -- 11. an id beyond int64 ------------------------------------------------------------------------
def test_a_request_id_beyond_int64_is_named_as_given(env: Env, tmp_path, capsys):
    req = tmp_path / "req.csv"
    req.write_text(f"request_id,user_id,item_id,reason\nr1,1e20,{_pair(env)[1]},x\n")
    line = one_line_error(["unlearn", "--run", str(env.run), "--requests", str(req), "--out",
                           str(tmp_path / "out"), "--unlearn.epochs=1"], capsys, "user_id 1e+20", "too large")
    assert "-9223372036854775808" not in line


@pytest.mark.parametrize("col", ["user_id", "item_id"])
def test_an_id_beyond_int64_warns_nothing_and_names_the_column(col):
    row = {"request_id": "r1", "user_id": 3, "item_id": 4, "reason": "x", col: -1e20}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the int64 cast warned before the wrong id
        with pytest.raises(RequestError, match=f"{col} -1e\\+20, too large"):
            normalize_requests(pd.DataFrame([row]))


# -- 12. a request column tru-dist does not read, an empty modality spec ----------------------------
@pytest.mark.parametrize("header, names", [
    ("request_id,user_id,item_id,reasons", ["'reasons'"]),  # a misspelt reason was dropped with its text
    (",request_id,user_id,item_id,reason", ["'Unnamed: 0'", "index=False"]),  # df.to_csv(path) with its index
], ids=["misspelt-reason", "pandas-index"])
def test_a_request_column_that_is_not_read_is_refused_not_dropped(header, names, env: Env, tmp_path, capsys):
    user, item = _pair(env)
    first = "0," if header.startswith(",") else ""
    req = tmp_path / "req.csv"
    req.write_text(f"{header}\n{first}r1,{user},{item},the user asked\n")
    one_line_error(["unlearn", "--run", str(env.run), "--requests", str(req), "--out", str(tmp_path / "out"),
                    "--unlearn.epochs=1"], capsys, str(req), *names)


def test_a_request_frame_with_an_extra_column_is_refused_by_the_api():
    frame = pd.DataFrame({"request_id": ["r1"], "user_id": [3], "item_id": [4], "reason": ["x"], "when": [1]})
    with pytest.raises(RequestError, match="column\\(s\\) 'when'"):
        normalize_requests(frame)


@pytest.mark.parametrize("scale", [False, True], ids=["mmrec", "scale"])
def test_an_empty_modality_spec_is_refused_not_read_as_the_default(scale, tmp_path, capsys):
    extra = ["--interactions", "200"] if scale else []
    one_line_error(["data", "synth", "--out", str(tmp_path / "d"), "--users", "20", "--items", "10",
                    "--modalities", "", *extra], capsys, "modality spec is empty", "none")


@pytest.mark.parametrize("scale", [False, True], ids=["mmrec", "scale"])
def test_modalities_none_writes_an_interactions_only_dataset(scale, tmp_path):
    from tru_dist.data.source import open_data

    extra = ["--interactions", "200"] if scale else []
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--users", "20", "--items", "10",
                 "--modalities", "none", *extra]) == 0
    data = open_data(tmp_path / "d")
    assert data.features == {} and (data.n_users, data.n_items) == (20, 10)


# -- 13. audit --original naming the audited run, or a run that already holds the requests --------
def test_audit_refuses_an_original_that_is_the_audited_run(env: Env, capsys):
    one_line_error(["audit", "--run", str(env.unlearned), "--requests", str(env.requests), "--original",
                    str(env.unlearned)], capsys, str(env.unlearned), "is the audited run itself")


def test_audit_refuses_an_original_that_already_applied_the_requests(env: Env, tmp_path, capsys):
    """It said "request(s) ... delete users with no interactions left", not that --original was
    the wrong run."""
    user, item = _pair(env, 5)
    second = tmp_path / "second.csv"
    second.write_text(f"request_id,user_id,item_id,reason\nr2,{user},{item},x\n")
    later = tmp_path / "later"
    assert main(["unlearn", "--run", str(env.unlearned), "--requests", str(second), "--out", str(later),
                 "--unlearn.epochs=1"]) == 0
    # env.requests were applied in env.unlearned, which later was unlearned from
    one_line_error(["audit", "--run", str(later), "--requests", str(env.requests), "--original",
                    str(env.unlearned)], capsys, "r1", "already applied in --original", str(env.unlearned))


def test_verify_deletion_on_a_run_that_was_never_unlearned_says_so(env: Env, capsys):
    """It said "RUN/ledger.jsonl holds no receipts" of a file that does not exist."""
    one_line_error(["verify-deletion", "--run", str(env.run)], capsys, f"{env.run} has no ledger.jsonl",
                   "not an unlearned run")


@pytest.mark.parametrize("content", [BINARY, "itemID\ttext\n0\ta lamp\n".encode("utf-16")],
                         ids=["binary", "utf16"])
def test_an_item_text_tsv_that_is_not_utf8_is_refused(content, tmp_path, capsys):
    """encode-text read it with pandas and ended in a UnicodeDecodeError traceback."""
    src = tmp_path / "item_text.tsv"
    src.write_bytes(content)
    one_line_error(["data", "encode-text", "--src", str(src), "--out", str(tmp_path / "t.npy")], capsys,
                   str(src), "not UTF-8 text")
    assert not (tmp_path / "t.npy").exists()


# -- 14. a store written over a purged store --------------------------------------------------------
def test_a_purged_store_is_not_overwritten_by_a_data_command(env: Env, tmp_path, capsys):
    """import-mmrec --out <purged store> replaced it, exit 0: the purged rows were back and
    verify-deletion FOUND them."""
    store, run = tmp_path / "store", tmp_path / "run"
    synth = ["data", "synth", "--format", "store", "--out", str(store), "--users", "60", "--items", "40"]
    assert main(synth) == 0
    assert main(["train", "--model", "lightgcn", "--data", str(store), "--out", str(run), "--train.epochs=1",
                 "--model.dim=8"]) == 0
    req = tmp_path / "req.csv"
    assert main(["data", "forget", "--data", str(store), "--regime", "users", "--fraction", "0.05",
                 "--out", str(req)]) == 0
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--out", str(tmp_path / "u"),
                 "--purge", "--unlearn.epochs=1"]) == 0
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    for argv in (["data", "import-mmrec", "--src", str(env.mmrec), "--out", str(store)],
                 synth,
                 ["data", "poison", "--data", str(env.store), "--out", str(store)]):
        one_line_error(argv, capsys, str(store), "purged store", "bring back the rows")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert main(["verify-deletion", "--run", str(tmp_path / "u"), "--data", str(store)]) == 0


# -- 15. more local workers than users ---------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["store", "mmrec"])
def test_more_workers_than_users_is_one_line_before_or_from_the_ranks(fmt, tmp_path, capsys):
    """--workers 8 on 6 users was a torch.multiprocessing traceback (the ranks' ValueError) with
    OUT/config.yaml left; --workers 1000 spawned a thousand processes first. A store's user count
    is checked before any process starts; an MMRec folder's by the ranks, in one line too."""
    data = tmp_path / "d"
    assert main(["data", "synth", "--format", fmt, "--out", str(data), "--users", "6", "--items", "8"]) == 0
    one_line_error(["train", "--model", "lightgcn", "--data", str(data), "--out", str(tmp_path / "r"),
                    "--workers", "8", "--address", "none", "--device", "cpu", "--train.epochs=1",
                    "--eval.ks=[2]", "--eval.metric=recall@2"], capsys, "6 users", "--workers 6 or fewer")


# -- 16. unlearn flags that were ignored, demo into a run or a dataset, encode-text on a folder -----
def test_keep_versions_without_purge_is_refused(env: Env, tmp_path, capsys):
    one_line_error(["unlearn", "--run", str(env.run), "--requests", str(env.requests), "--out",
                    str(tmp_path / "u"), "--keep-versions", "2"], capsys, "only with --purge")


@pytest.mark.parametrize("method", ["", "  "])
def test_an_empty_method_is_refused_not_read_as_the_default(method, env: Env, tmp_path, capsys):
    """--method "" (an unset shell variable) ran tru, recorded as such in the ledger."""
    one_line_error(["unlearn", "--run", str(env.run), "--requests", str(env.requests), "--out",
                    str(tmp_path / "u"), "--method", method], capsys, "method is empty")


@pytest.mark.parametrize("target", ["run", "store", "mmrec"])
def test_the_demo_refuses_an_out_holding_a_run_or_a_dataset(target, env: Env, capsys):
    folder = {"run": env.run, "store": env.store, "mmrec": env.mmrec}[target]
    before = sorted(p.name for p in folder.iterdir())
    one_line_error(["demo", "--out", str(folder), "--quick"], capsys, str(folder))
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_demo_refuses_data_overrides_before_any_work(tmp_path, capsys):
    one_line_error(["demo", "--out", str(tmp_path / "demo"), "--quick", "--data.path=/nowhere"], capsys,
                   "--data.path=/nowhere", "embedded synthetic data")


def test_encode_text_on_a_folder_says_it_is_a_folder(tmp_path, capsys):
    one_line_error(["data", "encode-text", "--src", str(tmp_path), "--out", str(tmp_path / "t.npy")], capsys,
                   f"{tmp_path} is a folder, not a file")


# -- 17. settings read by nothing, repeated cut-offs, another model's tuned file, .inter labels ------
@pytest.mark.parametrize("override, names", [
    ("--train.lr=0.5", ["evaluate would ignore train.lr"]),
    ("--model.dim=32", ["evaluate would ignore model.dim"]),
    ("--eval.metric=bogus@3", ["evaluate would ignore eval.metric", "as trained"]),
])
def test_evaluate_refuses_overrides_it_would_not_read(override, names, env: Env, capsys):
    """They were accepted, ignored, and the run evaluated as trained with exit 0."""
    one_line_error(["evaluate", "--run", str(env.run), "--address", "none", override], capsys, *names)


def test_evaluate_still_takes_what_it_reads(env: Env, capsys):
    assert main(["evaluate", "--run", str(env.run), "--address", "none", "--device", "cpu",
                 "--eval.ks=[3]", "--eval.batch_users=7"]) == 0
    assert '"recall@3"' in capsys.readouterr().out
    assert main(["evaluate", "--run", str(env.run), "--address", "none", "--ks=[4]"]) == 0  # a bare leaf
    assert '"recall@4"' in capsys.readouterr().out


def test_a_cut_off_listed_twice_is_refused_not_collapsed(env: Env, capsys):
    one_line_error(["evaluate", "--run", str(env.run), "--address", "none", "--eval.ks=[5,5]"], capsys,
                   "eval.ks", "[5, 5]", "distinct")


def test_a_tuned_file_of_another_model_is_refused(env: Env, tmp_path, capsys):
    """Its settings were applied to the lightgcn run and its ``tuning:`` block dropped unread."""
    tuned = tmp_path / "tru-interactions.yaml"
    tuned.write_text("unlearn:\n  epochs: 2\ntuning: {sweep: s, seeds: [100], trials: 2, seconds: 1.0, "
                     "model: mgcn}\n")
    one_line_error(["unlearn", "--run", str(env.run), "--requests", str(env.requests), "--config", str(tuned),
                    "--out", str(tmp_path / "out")], capsys, str(tuned), "tuned for model 'mgcn'", "lightgcn")
    tuned.write_text(tuned.read_text().replace("model: mgcn", "model: LightGCN"))  # its own model: taken
    assert main(["unlearn", "--run", str(env.run), "--requests", str(env.requests), "--config", str(tuned),
                 "--out", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("row, names", [
    ("1\t0\tnan\t5\t0", ["rating is 'nan', not a number"]),   # was "rating is empty"
    ("1\t0\t1\t5\t-1", ["x_label is -1", "use 0 (train), 1 (valid) or 2 (test)"]),  # was "ids must be ..."
    ("1\t0\t1\t5\t1.5", ["x_label is 1.5, not an integer;", "use 0 (train)"]),
])
def test_inter_cells_are_named_as_written_with_the_columns_own_hint(row, names, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    header = "userID\titemID\trating\ttimestamp\tx_label\n"
    (folder / "d.inter").write_text(f"{header}0\t0\t1\t5\t0\n1\t1\t1\t5\t0\n{row}\n")
    one_line_error(["data", "stats", "--data", str(folder)], capsys, "line 4", *names)


def test_unlearn_warns_about_users_left_with_only_held_out_rows(env: Env, tmp_path, caplog):
    """Deleting every train pair of a user one request at a time left the user's valid/test rows
    counting in the metrics, served from a reset row, without a word."""
    t = pq.read_table(env.store / "interactions.parquet").to_pandas()
    per_user = t.groupby("user_id").x_label.agg(lambda x: (int((x == 0).sum()), int((x != 0).sum())))
    user = next(int(u) for u, (n_train, n_held) in per_user.items() if 0 < n_train <= 4 and n_held > 0)
    items = t[(t.user_id == user) & (t.x_label == 0)].item_id.tolist()
    requests = tmp_path / "all-train.csv"
    pd.DataFrame({"request_id": [f"q{k}" for k in range(len(items))], "user_id": user, "item_id": items,
                  "reason": "x"}).to_csv(requests, index=False)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="tru_dist.unlearn"):
        assert main(["unlearn", "--run", str(env.run), "--requests", str(requests), "--out", str(out),
                     "--unlearn.epochs=1"]) == 0
    assert f"1 user(s) ({user}) lose every train interaction but keep valid/test rows" in caplog.text
    caplog.clear()
    whole = tmp_path / "whole.csv"  # a user request deletes every split: nothing to warn about
    whole.write_text(f"request_id,user_id,item_id,reason\nw1,{user},,x\n")
    with caplog.at_level("WARNING", logger="tru_dist.unlearn"):
        assert main(["unlearn", "--run", str(env.run), "--requests", str(whole), "--out", str(tmp_path / "w"),
                     "--unlearn.epochs=1"]) == 0
    assert "lose every train interaction" not in caplog.text


def test_bench_scale_seed_seeds_training_too():
    """``--seed`` seeded the data, the deleted users and the method but left train.seed at 0; an
    override of train.seed is now refused as the flag's."""
    from tru_dist.bench import refuse_flag_overrides
    from tru_dist.bench_scale import SCALE_FLAGS

    with pytest.raises(ConfigError, match="--seed"):
        refuse_flag_overrides("scale", ["--train.seed=3"], SCALE_FLAGS)


def test_bench_pool_does_not_clear_a_work_dir_it_did_not_write(tmp_path):
    """A rerun deletes ``original/``, ``fresh/``, ``pool/`` and writes ``requests/``: with
    ``--work-dir runs`` that removed a user's ``runs/original`` without a word."""
    from tru_dist.bench_pool import WORK_MARKER, claim_work_dir

    mine = tmp_path / "runs" / "original"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds original, which bench pool did not write"):
        claim_work_dir(tmp_path / "runs")
    assert (mine / "keep.txt").read_text() == "mine" and not (tmp_path / "runs" / WORK_MARKER).exists()
    fresh = tmp_path / "fresh-work"
    claim_work_dir(fresh)  # a new folder: claimed, and a rerun into it is its own
    (fresh / "original").mkdir()
    claim_work_dir(fresh)
    assert (fresh / WORK_MARKER).exists()


def test_users_left_with_only_held_out_rows_are_those_a_batch_took_train_pairs_from():
    """Hand-computed: user 0 loses its one train pair and keeps a test row (named); user 1 keeps a
    train pair (not named); user 2, a cold-start user with test rows only, loses one of them (not
    named: it had no train pair to lose); user 3 loses everything, in every split (not named)."""
    from tru_dist.data.dataset import RecDataset
    from tru_dist.data.requests import resolve_requests
    from tru_dist.unlearn.deletion import users_left_with_only_held_out

    users = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
    items = np.array([0, 1, 0, 1, 2, 0, 1, 2, 3])
    labels = np.array([0, 2, 0, 0, 2, 2, 2, 0, 1], dtype=np.int8)
    data = RecDataset(4, 4, users, items, labels)
    table = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "user_id": [0, 1, 2, 3],
                          "item_id": pd.array([0, 0, 0, None], dtype="Int64"), "reason": "x"})
    forget = resolve_requests(data, table)
    assert users_left_with_only_held_out(data, forget).tolist() == [0]
    earlier = (np.array([1]), np.array([1]))  # user 1's other train pair went in an earlier batch
    assert users_left_with_only_held_out(data, forget, earlier).tolist() == [0, 1]
