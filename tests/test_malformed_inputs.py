"""Every malformed input a user can hand the CLI is refused in one line, with nothing left behind.

Table-driven: each case builds one malformed input (a data file, a feature matrix, a store,
a request table, a config or override, a CLI argument, a checkpoint from another model or
version, a truncated file) and runs ``tru-dist`` in-process. Each must exit non-zero with
exactly one stderr line ``error: ...`` that names what is wrong (the case's ``expect``), print
no traceback, and leave no partial output at its ``--out``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tru_dist.cli import main


@dataclass
class Env:
    """Shared, never modified inputs (a case that corrupts one copies it first)."""

    root: Path
    store: Path
    mmrec: Path
    run: Path
    requests: Path
    unlearned: Path


def build_env(root: Path) -> Env:
    """The shared inputs, built in ``root``: a store, an MMRec folder, a run trained on the store
    and that run unlearned with one request (``requests``)."""
    store, mmrec, run = root / "store", root / "mmrec", root / "run"
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "60", "--items", "40",
                 "--modalities", "image:8,text:4"]) == 0
    assert main(["data", "synth", "--out", str(mmrec), "--users", "60", "--items", "40",
                 "--modalities", "image:8,text:4"]) == 0
    assert main(["train", "--model", "lightgcn", "--data", str(store), "--out", str(run), "--train.epochs=1",
                 "--model.dim=8"]) == 0
    t = pq.read_table(store / "interactions.parquet").to_pandas()
    first = t[t.x_label == 0].iloc[0]
    requests = root / "req.csv"
    pd.DataFrame({"request_id": ["r1"], "user_id": [int(first.user_id)], "item_id": [int(first.item_id)],
                  "reason": ["test"]}).to_csv(requests, index=False)
    unlearned = root / "unlearned"
    assert main(["unlearn", "--run", str(run), "--requests", str(requests), "--out", str(unlearned),
                 "--unlearn.epochs=1"]) == 0
    return Env(root, store, mmrec, run, requests, unlearned)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return build_env(tmp_path_factory.mktemp("malformed"))


# --------------------------------------------------------------------------------------
# builders: each takes (env, tmp) and returns argv; the case's --out is always tmp/"out"
# --------------------------------------------------------------------------------------
def _mmrec_copy(env: Env, tmp: Path) -> Path:
    dst = tmp / "mm"
    shutil.copytree(env.mmrec, dst)
    return dst


def _store_copy(env: Env, tmp: Path) -> Path:
    dst = tmp / "st"
    shutil.copytree(env.store, dst)
    return dst


def _run_copy(env: Env, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(env.run, dst)
    return dst


def _import(src: Path, tmp: Path) -> list[str]:
    return ["data", "import-mmrec", "--src", str(src), "--out", str(tmp / "out")]


def _edit_inter(edit: Callable[[list[str]], list[str]],
                command: Callable[[Path, Path], list[str]] | None = None):
    """A copy of the MMRec folder whose .inter lines are ``edit``-ed, then ``command`` on it
    (default: import it)."""
    def build(env: Env, tmp: Path) -> list[str]:
        mm = _mmrec_copy(env, tmp)
        inter = next(mm.glob("*.inter"))
        inter.write_text("\n".join(edit(inter.read_text().splitlines())) + "\n")
        return (command or _import)(mm, tmp)

    return build


def _set_field(line: int, col: int, value: str):
    def edit(lines: list[str]) -> list[str]:
        parts = lines[line].split("\t")
        parts[col] = value
        lines[line] = "\t".join(parts)
        return lines

    return edit


def _feature(write: Callable[[Path], None]):
    def build(env: Env, tmp: Path) -> list[str]:
        mm = _mmrec_copy(env, tmp)
        write(mm / "image_feat.npy")
        return _import(mm, tmp)

    return build


def _store_feature(write: Callable[[Path], None]):
    def build(env: Env, tmp: Path) -> list[str]:
        st = _store_copy(env, tmp)
        write(st / "item_features" / "image.npy")
        return _train_on(st, tmp)

    return build


def _train_on(data: Path | str, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--model", "lightgcn", "--data", str(data), "--out", str(tmp / "out"),
            "--train.epochs=1",
            *extra]


def _store_edit(edit: Callable[[Path], None]):
    def build(env: Env, tmp: Path) -> list[str]:
        st = _store_copy(env, tmp)
        edit(st)
        return _train_on(st, tmp)

    return build


def _meta_edit(change: Callable[[dict], dict]):
    def edit(st: Path) -> None:
        meta = json.loads((st / "META.json").read_text())
        (st / "META.json").write_text(json.dumps(change(meta)))

    return _store_edit(edit)


def _truncate(path_of: Callable[[Path], Path], keep: float = 0.5):
    def edit(st: Path) -> None:
        p = path_of(st)
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])

    return edit


def _rewrite_parquet(change: Callable[[pd.DataFrame], pa.Table | pd.DataFrame]):
    def edit(st: Path) -> None:
        df = pq.read_table(st / "interactions.parquet").to_pandas()
        out = change(df)
        pq.write_table(out if isinstance(out, pa.Table) else pa.Table.from_pandas(out, preserve_index=False),
                       st / "interactions.parquet")

    return _store_edit(edit)


def _unlearn_with(requests: Path, tmp: Path, env: Env, *extra: str) -> list[str]:
    return ["unlearn", "--run", str(env.run), "--requests", str(requests), "--out", str(tmp / "out"),
            "--unlearn.epochs=1", *extra]


def _requests(rows: list[dict] | None = None, text: str | None = None, name: str = "req.csv"):
    def build(env: Env, tmp: Path) -> list[str]:
        path = tmp / name
        if text is not None:
            path.write_text(text)
        else:
            df = pd.DataFrame(rows)
            if name.endswith(".parquet"):
                df.to_parquet(path)
            else:
                df.to_csv(path, index=False)
        return _unlearn_with(path, tmp, env)

    return build


def _pair(env: Env, k: int = 0) -> tuple[int, int]:
    t = pq.read_table(env.store / "interactions.parquet").to_pandas()
    row = t[t.x_label == 0].iloc[k]
    return int(row.user_id), int(row.item_id)


def _req_rows(env: Env, **override) -> list[dict]:
    u, i = _pair(env)
    row = {"request_id": "r9", "user_id": u, "item_id": i, "reason": "x"}
    row.update(override)
    return [row]


def _requests_from(make_rows: Callable[[Env], list[dict]]):
    def build(env: Env, tmp: Path) -> list[str]:
        path = tmp / "req.csv"
        pd.DataFrame(make_rows(env)).to_csv(path, index=False)
        return _unlearn_with(path, tmp, env)

    return build


def _override(*flags: str, cmd: str = "train"):
    def build(env: Env, tmp: Path) -> list[str]:
        if cmd == "train":
            return _train_on(env.store, tmp, *flags)
        return _unlearn_with(env.requests, tmp, env, *flags)

    return build


def _config_file(text: str, cmd: str = "train"):
    def build(env: Env, tmp: Path) -> list[str]:
        path = tmp / "cfg.yaml"
        path.write_text(text)
        return _train_on(env.store, tmp, "--config", str(path))

    return build


def _argv(*args: str):
    def build(env: Env, tmp: Path) -> list[str]:
        return [a.format(store=env.store, run=env.run, req=env.requests, out=tmp / "out", mmrec=env.mmrec,
                         unlearned=env.unlearned, tmp=tmp) for a in args]

    return build


def _checkpoint(change: Callable[[dict], dict | bytes | str | None]):
    """A copy of the run whose checkpoint is ``change(saved)``: a dict (saved), bytes (written
    raw), "truncate" (its first 5000 bytes), None (deleted)."""

    def build(env: Env, tmp: Path) -> list[str]:
        run = _run_copy(env, tmp)
        path = run / "checkpoint.pt"
        new = change(torch.load(path, weights_only=True))
        if new is None:
            path.unlink()
        elif new == "truncate":
            path.write_bytes(path.read_bytes()[:5000])
        elif isinstance(new, bytes):
            path.write_bytes(new)
        else:
            torch.save(new, path)
        return ["unlearn", "--run", str(run), "--requests", str(env.requests), "--out", str(tmp / "out")]

    return build


def _run_is_file(env: Env, tmp: Path) -> list[str]:
    (tmp / "f").write_text("x")
    return ["unlearn", "--run", str(tmp / "f"), "--requests", str(env.requests), "--out", str(tmp / "out")]


def _mixed_replay(env: Env, tmp: Path) -> list[str]:
    """r1 was applied in ``env.unlearned``; r2 is new: one batch cannot be both."""
    u, i = _pair(env, 3)
    path = tmp / "mixed.csv"
    rows = _req_rows(env, request_id="r1") + [{"request_id": "r2", "user_id": u, "item_id": i, "reason": "x"}]
    pd.DataFrame(rows).to_csv(path, index=False)
    return ["unlearn", "--run", str(env.unlearned), "--requests", str(path), "--out", str(tmp / "out")]


def _two_inter_files(env: Env, tmp: Path) -> list[str]:
    mm = _mmrec_copy(env, tmp)
    shutil.copy(next(mm.glob("*.inter")), mm / "other.inter")
    return _import(mm, tmp)


def _no_inter_file(env: Env, tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return _import(tmp / "empty", tmp)


def _with_config(saved: dict, **sections) -> dict:
    cfg = json.loads(json.dumps(saved["config"]))
    for sec, values in sections.items():
        cfg[sec].update(values)
    return {**saved, "config": cfg}


def _file_out(env: Env, tmp: Path) -> list[str]:
    (tmp / "out").write_text("precious\n")
    return _train_on(env.store, tmp)


def _file_out_synth(env: Env, tmp: Path) -> list[str]:
    (tmp / "out").write_text("precious\n")
    return ["data", "synth", "--format", "store", "--out", str(tmp / "out"), "--users", "30", "--items", "20"]


def _out_under_a_file(command: str):
    """``--out`` below a path that is a file (a traceback from os.makedirs before)."""
    def build(env: Env, tmp: Path) -> list[str]:
        (tmp / "afile").write_text("precious\n")
        out = str(tmp / "afile" / "sub" / "out")
        if command == "train":
            return ["train", "--model", "lightgcn", "--data", str(env.store), "--out", out,
                    "--train.epochs=1"]
        return ["data", "synth", "--format", "store", "--out", out, "--users", "30", "--items", "20"]
    return build


def _purge_synthetic(env: Env, tmp: Path) -> list[str]:
    run = tmp / "synrun"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:40x30", "--out", str(run),
                 "--train.epochs=1", "--model.dim=8"]) == 0
    return ["unlearn", "--run", str(run), "--requests", str(env.requests), "--out", str(tmp / "out"),
            "--purge"]


def _other_data_run(env: Env, tmp: Path) -> list[str]:
    run = _run_copy(env, tmp)
    st = tmp / "small"
    assert main(["data", "synth", "--format", "store", "--out", str(st), "--users", "50", "--items", "40",
                 "--modalities", "image:8,text:4"]) == 0
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save(_with_config(saved, data={"path": str(st)}), run / "checkpoint.pt")
    return ["unlearn", "--run", str(run), "--requests", str(env.requests), "--out", str(tmp / "out")]


def _train_on_inter(edit: Callable[[list[str]], list[str]]):
    """Train on a copy of the MMRec folder whose .inter lines are ``edit``-ed (a readable file)."""
    return _edit_inter(edit, _train_on)


def _all_labelled(label: str):
    """Every data row's x_label (the last column) set to ``label``."""
    return lambda ls: [ls[0]] + [x.rsplit("\t", 1)[0] + "\t" + label for x in ls[1:]]


def _every_user(env: Env, tmp: Path) -> list[str]:
    """One whole-user request per user of the store: nothing is left to retain."""
    users = sorted(set(pq.read_table(env.store / "interactions.parquet").to_pandas().user_id))
    path = tmp / "everyone.csv"
    pd.DataFrame({"request_id": [f"user-{u}" for u in users], "user_id": users,
                  "item_id": [None] * len(users), "reason": ["x"] * len(users)}).to_csv(path, index=False)
    return _unlearn_with(path, tmp, env)


def _dup_feature_rows(p: Path) -> None:
    np.save(p, np.zeros((7, 8), dtype=np.float32))


def _nan_feature(p: Path) -> None:
    arr = np.load(p)
    arr[3, 2] = np.nan
    np.save(p, arr)


CASES: list[tuple[str, Callable[[Env, Path], list[str]], str]] = [
    # -- MMRec .inter files -------------------------------------------------------------------
    ("inter-empty", _edit_inter(lambda lines: []), "is empty"),
    ("inter-missing-column", _edit_inter(lambda ls: ["\t".join(x.split("\t")[:4]) for x in ls]), "x_label"),
    ("inter-user-not-int", _edit_inter(_set_field(3, 0, "abc")), "userID"),
    ("inter-negative-item", _edit_inter(_set_field(5, 1, "-4")), "itemID"),
    ("inter-bad-label", _edit_inter(_set_field(2, 4, "7")), "x_label"),
    ("inter-duplicate-pair", _edit_inter(lambda ls: ls + [ls[1]]), "duplicate"),
    ("inter-float-user", _edit_inter(_set_field(4, 0, "1.5")), "userID"),
    ("inter-rating-text", _edit_inter(_set_field(4, 2, "good")), "rating"),
    ("inter-ragged-row", _edit_inter(lambda ls: ls[:3] + [ls[3] + "\t9\t9"] + ls[4:]), "line"),
    ("inter-two-files", _two_inter_files, "exactly one"),
    ("mmrec-no-inter", _no_inter_file, "exactly one"),
    ("inter-ids-not-dense", _edit_inter(lambda ls: [ls[0]] + [x for x in ls[1:] if x.split("\t")[0] != "5"]),
     "userID"),
    ("inter-no-train-rows", _train_on_inter(_all_labelled("1")), "no train interaction (x_label 0)"),
    # -- feature matrices (.npy) ---------------------------------------------------------------
    ("feat-wrong-rows", _feature(_dup_feature_rows), "image_feat.npy"),
    ("feat-not-npy", _feature(lambda p: p.write_bytes(b"not a numpy file at all")), "image_feat.npy"),
    ("feat-nan", _feature(_nan_feature), "image_feat.npy"),
    ("feat-1d", _feature(lambda p: np.save(p, np.zeros(40, dtype=np.float32))), "image_feat.npy"),
    ("feat-truncated", _feature(lambda p: p.write_bytes(p.read_bytes()[:200])), "image_feat.npy"),
    ("feat-object-dtype", _feature(lambda p: np.save(p, np.array([{"a": 1}] * 40, dtype=object),
                                                     allow_pickle=True)), "image_feat.npy"),
    # -- stores ---------------------------------------------------------------------------------
    ("store-no-meta", _store_edit(lambda st: (st / "META.json").unlink()), "neither a tru-dist store"),
    ("store-meta-not-json", _store_edit(lambda st: (st / "META.json").write_text("{oops")), "META.json"),
    ("store-meta-wrong-format", _meta_edit(lambda m: {**m, "format": "other"}), "not a tru-dist store"),
    ("store-meta-missing-key", _meta_edit(lambda m: {k: v for k, v in m.items() if k != "counts"}), "counts"),
    ("store-parquet-truncated", _store_edit(_truncate(lambda st: st / "interactions.parquet")),
     "interactions.parquet"),
    ("store-parquet-missing", _store_edit(lambda st: (st / "interactions.parquet").unlink()),
     "interactions.parquet is missing"),
    ("store-parquet-wrong-type", _rewrite_parquet(lambda df: df.astype({"user_id": str})), "user_id"),
    ("store-parquet-row-dropped", _rewrite_parquet(lambda df: df.iloc[1:]), "META.json"),
    ("store-parquet-changed-row", _rewrite_parquet(lambda df: df.assign(rating=df.rating * 2)),
     "content hash"),
    ("store-feature-missing", _store_edit(lambda st: (st / "item_features" / "text.npy").unlink()),
     "text.npy"),
    ("store-feature-extra", _store_edit(lambda st: np.save(st / "item_features" / "audio.npy",
                                                           np.zeros((40, 2), np.float32))), "audio.npy"),
    ("store-feature-truncated", _store_feature(lambda p: p.write_bytes(p.read_bytes()[:300])), "image.npy"),
    ("store-feature-changed", _store_feature(lambda p: np.save(p, np.load(p) + 1)), "content hash"),
    ("store-meta-path-escapes", _meta_edit(lambda m: {**m, "interactions_file": "../../etc/passwd"}),
     "interactions_file"),
    ("store-revision-missing",
     _meta_edit(lambda m: {**m, "interactions_file": "revisions/9/interactions.parquet"}), "revisions/9"),
    # -- request tables ----------------------------------------------------------------------------
    ("req-missing-file", _argv("unlearn", "--run", "{run}", "--requests", "{tmp}/nope.csv", "--out", "{out}"),
     "does not exist"),
    ("req-wrong-extension", _requests(text="a,b\n", name="req.txt"), ".parquet or .csv"),
    ("req-missing-column", _requests([{"request_id": "a", "item_id": 1}]), "user_id"),
    ("req-empty-table", _requests(text="request_id,user_id,item_id,reason\n"), "no requests"),
    ("req-unknown-user", _requests_from(lambda env: _req_rows(env, user_id=999)), "unknown user"),
    ("req-unknown-item", _requests_from(lambda env: _req_rows(env, item_id=999)), "unknown item"),
    ("req-not-an-interaction", _requests_from(
        lambda env: _req_rows(env, item_id=next(i for i in range(40) if (_pair(env)[0], i) not in set(
            map(tuple, pq.read_table(env.store / "interactions.parquet").to_pandas()[["user_id", "item_id"]]
                .to_numpy().tolist()))))), "not interactions"),
    ("req-duplicate-id", _requests_from(lambda env: _req_rows(env) + _req_rows(env, item_id=_pair(env, 1)[1],
                                                                                 user_id=_pair(env, 1)[0])),
     "duplicate request_id"),
    ("req-same-pair-twice", _requests_from(lambda env: _req_rows(env) + _req_rows(env, request_id="r10")),
     "r10"),
    ("req-user-not-int", _requests_from(lambda env: _req_rows(env, user_id="bob")), "user_id"),
    ("req-empty-request-id", _requests(text="request_id,user_id,item_id,reason\n,1,2,x\n"), "request_id"),
    ("req-corrupt-parquet", _requests(text="PAR1 garbage", name="req.parquet"), "cannot be read"),
    ("req-mixed-replay", _mixed_replay, "already applied"),
    ("req-deletes-every-train-pair", _every_user, "every train interaction"),
    ("cli-compare-deletes-every-train-pair",
     _argv("compare", "--data", "{store}", "--model", "lightgcn", "--regime", "items", "--fraction", "1.0",
           "--methods", "tru", "--seeds", "1", "--out", "{out}", "--train.epochs=1"),
     "every train interaction"),
    # refused before any training (the unknown audit was refused after every model had run)
    ("cli-compare-unknown-audit",
     _argv("compare", "--data", "{store}", "--model", "lightgcn", "--methods", "retrain,noop", "--seeds", "1",
           "--audit", "nope", "--out", "{out}", "--train.epochs=1"), "unknown audit(s) nope"),
    ("cli-compare-no-method",
     _argv("compare", "--data", "{store}", "--model", "lightgcn", "--methods", "", "--seeds", "1",
           "--out", "{out}"), "names no method"),
    ("cli-compare-method-twice",
     _argv("compare", "--data", "{store}", "--model", "lightgcn", "--methods", "tru,TRU", "--seeds", "1",
           "--out", "{out}"), "more than once"),
    # -- configs and overrides -------------------------------------------------------------------------
    ("cfg-negative-lr", _override("--train.lr=-1"), "train.lr"),
    ("cfg-nan-lr", _override("--train.lr=nan"), "train.lr"),
    ("cfg-inf-lr", _override("--train.lr=.inf"), "train.lr"),
    ("cfg-zero-batch", _override("--train.batch_size=0"), "train.batch_size"),
    ("cfg-zero-epochs", _override("--train.epochs=0"), "train.epochs"),
    ("cfg-zero-dim", _override("--model.dim=0"), "model.dim"),
    ("cfg-unknown-key", _override("--train.learning_rate=1"), "train.learning_rate"),
    ("cfg-ambiguous-key", _override("--lr=0.1"), "ambiguous"),
    ("cfg-text-for-number", _override("--train.lr=fast"), "train.lr"),
    ("cfg-empty-ks", _override("--eval.ks=[]"), "eval.ks"),
    ("cfg-metric-not-computed", _override("--eval.metric=recall@7"), "eval.metric"),
    ("cfg-unknown-model", _override("--model.name=transformer"), "transformer"),
    ("cfg-dropout-one", _override("--model.dropout=1.0"), "model.dropout"),
    ("cfg-zero-workers-key", _override("--dist.workers=0"), "dist.workers"),
    ("cfg-unlearn-budget", _override("--unlearn.isolation.budget=1.5", cmd="unlearn"), "isolation.budget"),
    ("cfg-unlearn-negative-lr", _override("--unlearn.lr=-0.1", cmd="unlearn"), "unlearn.lr"),
    ("cfg-unlearn-zero-batch", _override("--unlearn.batch_size=0", cmd="unlearn"), "unlearn.batch_size"),
    ("cfg-gate-beta", _override("--unlearn.gate.beta=2", cmd="unlearn"), "gate.beta"),
    ("cfg-file-missing", lambda env, tmp: _train_on(env.store, tmp, "--config", str(tmp / "none.yaml")),
     "does not exist"),
    ("cfg-file-bad-yaml", _config_file("train: [lr: 1\n"), "not valid YAML"),
    ("cfg-file-list", _config_file("- 1\n- 2\n"), "mapping"),
    ("cfg-file-unknown-key", _config_file("train:\n  speed: 3\n"), "train.speed"),
    ("cfg-file-bad-value", _config_file("unlearn:\n  scaling:\n    alpha_min: 0\n"), "alpha_min"),
    # -- CLI arguments -------------------------------------------------------------------------------------
    ("cli-workers-zero", lambda env, tmp: _train_on(env.store, tmp, "--workers", "0"), "--workers"),
    ("cli-workers-text", lambda env, tmp: _train_on(env.store, tmp, "--workers", "two"), "--workers"),
    ("cli-out-is-file", _file_out, "existing file"),
    ("cli-synth-out-is-file", _file_out_synth, "existing file"),
    ("cli-out-under-a-file", _out_under_a_file("train"), "which is a file, not a folder"),
    ("cli-synth-out-under-a-file", _out_under_a_file("synth"), "which is a file, not a folder"),
    ("cli-missing-out", _argv("train", "--data", "{store}"), "--out"),
    ("cli-unknown-command", _argv("untrain", "--out", "{out}"), "untrain"),
    ("cli-stray-argument", _argv("train", "--data", "{store}", "--out", "{out}", "oops"), "oops"),
    ("cli-override-no-value", _argv("train", "--data", "{store}", "--out", "{out}", "--train.lr"),
     "train.lr"),
    ("cli-fraction-above-one", _argv("data", "forget", "--data", "{store}", "--regime", "users",
                                     "--fraction", "1.5", "--out", "{out}"), "--fraction"),
    ("cli-unknown-regime", _argv("data", "forget", "--data", "{store}", "--regime", "bots", "--out", "{out}"),
     "--regime"),
    ("cli-unknown-method", _argv("unlearn", "--run", "{run}", "--requests", "{req}", "--method", "magic",
                                 "--out", "{out}"), "magic"),
    ("cli-bad-synthetic-spec", lambda env, tmp: _train_on("synthetic:huge", tmp), "synthetic:huge"),
    ("cli-data-missing", lambda env, tmp: _train_on(tmp / "nowhere", tmp), "does not exist"),
    ("cli-negative-users", _argv("data", "synth", "--out", "{out}", "--users", "-5"), "--users"),
    ("cli-bad-modalities", _argv("data", "synth", "--out", "{out}", "--modalities", "image"), "modality"),
    ("cli-purge-synthetic", _purge_synthetic, "synthetic"),
    ("cli-purge-mmrec", lambda env, tmp: ["data", "purge", "--data", str(env.mmrec), "--ledger",
                                          str(env.unlearned)], "MMRec"),
    ("cli-purge-no-ledger", _argv("data", "purge", "--data", "{store}", "--ledger", "{tmp}/none"),
     "--ledger"),
    ("cli-keep-versions-negative", _argv("data", "purge", "--data", "{store}", "--ledger", "{unlearned}",
                                         "--keep-versions", "-1"), "--keep-versions"),
    ("cli-verify-without-ledger", _argv("verify-deletion", "--run", "{run}"), "has no ledger.jsonl"),
    ("cli-verify-missing-run", _argv("verify-deletion", "--run", "{tmp}/none"), "does not exist"),
    ("cli-run-is-file", _run_is_file, "is a file"),
    # -- checkpoints -----------------------------------------------------------------------------------------
    ("ckpt-missing", _checkpoint(lambda s: None), "no checkpoint"),
    ("ckpt-garbage", _checkpoint(lambda s: b"\x00garbage" * 10), "not a complete torch checkpoint"),
    ("ckpt-truncated", _checkpoint(lambda s: "truncate"), "truncated"),
    ("ckpt-other-model", _checkpoint(lambda s: _with_config(s, model={"name": "mgcn"})), "mgcn"),
    ("ckpt-other-dim", _checkpoint(lambda s: _with_config(s, model={"dim": 16})), "lightgcn parameters"),
    ("ckpt-old-version-no-best", _checkpoint(lambda s: {k: v for k, v in s.items() if k != "best_model"}),
     "best_model"),
    ("ckpt-newer-version-config", _checkpoint(lambda s: {**s, "config": {**s["config"], "privacy": {}}}),
     "privacy"),
    ("ckpt-other-data", _other_data_run, "trained on data"),
    ("ckpt-pickled-class", _checkpoint(lambda s: {**s, "extra": Env}), "pickled objects"),
]


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "build", "expect"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_and_leaves_nothing(name, build, expect, env, tmp_path, capsys):
    argv = build(env, tmp_path)
    out = tmp_path / "out"
    before = out.read_bytes() if out.is_file() else None
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    stdout, stderr = capsys.readouterr()
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert rc not in (0, None), f"{name}: exit {rc}, stdout {stdout[:300]}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{name}: stderr was {stderr!r}"
    assert expect in lines[0], f"{name}: {lines[0]!r} does not name {expect!r}"
    assert "Traceback" not in stdout + stderr
    if before is not None:  # an existing file given as --out is untouched
        assert out.read_bytes() == before
    else:
        assert not out.exists(), f"{name}: partial output left: {sorted(p.name for p in out.rglob('*'))}"
