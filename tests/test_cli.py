"""The console script: subcommands work end to end and user errors are one line, exit 2."""

from __future__ import annotations

import json

import pytest

from tru_dist.cli import main


def test_unknown_config_key_is_one_line_error(capsys, tmp_path):
    rc = main(["train", "--data", "synthetic:tiny", "--out", str(tmp_path / "r"), "--train.learning_rate=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: unknown config key 'train.learning_rate'") and "train.lr" in err
    assert len(err.splitlines()) == 1


def test_what_compare_cannot_run_on_several_workers_is_refused_in_one_line(capsys, tmp_path):
    for extra, fix in ((["--audit", "mia"], "drop --audit"), (["--methods", "retrain,sisa"], "drop it")):
        argv = ["compare", "--data", "synthetic:tiny", "--workers", "2", "--address", "none",
                "--out", str(tmp_path / "c"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and fix in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_unlearn_of_an_unfinished_multi_worker_run_is_one_line(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.rank0.pt").write_bytes(b"")
    (tmp_path / "req.csv").write_text("request_id,user_id,item_id\nr1,0,\n")
    for argv in (["evaluate", "--run", str(tmp_path / "run")],
                 ["unlearn", "--run", str(tmp_path / "run"), "--requests", str(tmp_path / "req.csv"),
                  "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "tru-dist train --resume" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_stray_argument_is_rejected():
    with pytest.raises(SystemExit):
        main(["train", "--data", "synthetic:tiny", "--out", "x", "oops"])


def test_data_synth_stats_forget(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--users", "80", "--items", "50", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_users"] == 80 and summary["n_items"] == 50
    assert main(["data", "stats", "--data", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_interactions"] == summary["n_interactions"]
    req = tmp_path / "req.csv"
    assert main(["data", "forget", "--data", str(out), "--regime", "users", "--fraction", "0.1",
                 "--out", str(req)]) == 0
    capsys.readouterr()
    lines = req.read_text().strip().splitlines()
    assert len(lines) == 1 + 8  # header + 10% of 80 users


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    rc = main(["data", "stats", "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1


def test_train_forget_unlearn_chain_is_idempotent(tmp_path, capsys):
    """The user's path: train, select requests, unlearn, retry the same requests (no-op)."""
    run, out, req = tmp_path / "run", tmp_path / "run2", tmp_path / "req.csv"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(run),
                 "--train.epochs=8"]) == 0
    assert main(["data", "forget", "--data", "synthetic:tiny", "--regime", "users", "--fraction", "0.05",
                 "--out", str(req)]) == 0
    capsys.readouterr()
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--method", "tru", "--out", str(out),
                 "--unlearn.epochs=2"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["source_run"] == str(run.resolve()) and first["forget_set"]["n_removed_users"] == 10
    # the deleted users' pairs are recommended less than by the model before the deletion
    assert first["forget"]["hit@20"] < first["before"]["forget"]["hit@20"]
    checkpoint = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["unlearn", "--run", str(run), "--requests", str(req), "--method", "tru", "--out", str(out),
                 "--unlearn.epochs=2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["replayed"] is True
    assert again["receipt"]["model_after"] == first["receipt"]["model_after"]
    assert (out / "checkpoint.pt").read_bytes() == checkpoint  # nothing was unlearned twice
    assert main(["evaluate", "--run", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", "--run", str(out), "--requests", str(req), "--original", str(run)]) == 0
    audits = json.loads(capsys.readouterr().out)["audits"]
    assert {"original", "retrain", "tru"} <= set(audits)


@pytest.mark.parametrize("content, expected", [
    (None, "holds no results.json"),
    ("{not json", "is not valid JSON"),
    ("{}", "is not a comparison's results"),
    ("[1, 2]", "is not a comparison's results"),
])
def test_report_compare_on_a_folder_without_a_comparison_is_one_line(tmp_path, capsys, content, expected):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    assert main(["report", "compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "report.md").exists()


def test_resuming_a_multi_worker_run_on_one_worker_names_the_workers(capsys, tmp_path):
    """It said "no checkpoint ...; drop --resume to start fresh" — advice that throws the run away."""
    (tmp_path / "run").mkdir()
    for r in (0, 1):
        (tmp_path / "run" / f"checkpoint.rank{r}.pt").write_bytes(b"")
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(tmp_path / "run"),
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume it with --workers 2" in err, err


def _one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_data_commands_do_not_write_over_their_input_a_run_or_the_other_format(capsys, tmp_path):
    """A bad-input campaign found `data poison --data D --out D` leaving D poisoned (its clean
    data gone) and `import-mmrec --src M --out M` hiding M behind a store, both with exit 0."""
    mm, store = tmp_path / "mm", tmp_path / "store"
    assert main(["data", "synth", "--out", str(mm), "--users", "60", "--items", "40"]) == 0
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "60",
                 "--items", "40"]) == 0
    capsys.readouterr()
    before = _tree(mm)
    assert main(["data", "poison", "--data", str(mm), "--out", str(mm)]) == 2
    assert "is the dataset this command reads" in _one_error(capsys)
    assert main(["data", "import-mmrec", "--src", str(mm), "--out", str(mm)]) == 2
    assert "is the dataset this command reads" in _one_error(capsys)
    assert main(["data", "poison", "--data", str(store), "--out", str(mm)]) == 2  # a store into MMRec
    assert "holds an MMRec dataset" in _one_error(capsys)
    assert main(["data", "synth", "--out", str(store), "--users", "60", "--items", "40"]) == 2
    assert "holds a tru-dist store" in _one_error(capsys)
    assert _tree(mm) == before

    run = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--data", str(store), "--out", str(run),
                 "--train.epochs=1", "--model.dim=8"]) == 0
    capsys.readouterr()
    assert main(["data", "synth", "--format", "store", "--out", str(run), "--users", "60",
                 "--items", "40"]) == 2
    assert "is a run folder" in _one_error(capsys)
    # the writers' own overwrite stays: a store over a store (atomically replaced)
    assert main(["data", "synth", "--format", "store", "--out", str(store), "--users", "70",
                 "--items", "40"]) == 0


def test_train_refuses_to_replace_a_run_without_resume(capsys, tmp_path):
    """`train --out RUN` on a trained run retrained there and replaced it, exit 0."""
    run = tmp_path / "run"
    args = ["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(run), "--model.dim=8"]
    assert main([*args, "--train.epochs=1"]) == 0
    capsys.readouterr()
    before = (run / "checkpoint.pt").read_bytes()
    assert main([*args, "--train.epochs=2", "--seed", "3"]) == 2
    assert "resume it (--resume" in _one_error(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main([*args, "--train.epochs=2", "--resume"]) == 0  # continuing it is what --resume is for


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs Linux's /proc (read-only)")
def test_an_output_path_that_cannot_be_written_is_one_line(capsys):
    """Unwritable outputs ended in a PermissionError / FileNotFoundError traceback in every writing
    command; /proc refuses new entries even to root."""
    assert main(["data", "synth", "--out", "/proc/tru-dist-test/d", "--users", "60", "--items", "40"]) == 2
    line = _one_error(capsys)
    assert "/proc/tru-dist-test" in line and "TRU_DIST_TRACEBACK=1" in line


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    """`tru-dist recommend ... | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    run = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(run),
                 "--train.epochs=1", "--model.dim=8"]) == 0
    users = ",".join(str(u) for u in range(200))
    cmd = [sys.executable, "-m", "tru_dist.cli", "recommend", "--run", str(run), "--users", users,
           "--k", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1) == b"["
    proc.stdout.close()  # the reader goes away with ~100 kB still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_synth_with_fewer_items_than_a_user_draws_is_one_line(capsys, tmp_path):
    """`data synth --items 2` ended in numpy's "kth(=4) out of bounds" traceback."""
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--users", "5", "--items", "4"]) == 2
    assert "--items 4: the generator needs at least 5 items" in _one_error(capsys)
    assert not out.exists()
    assert main(["data", "synth", "--out", str(out), "--users", "5", "--items", "5"]) == 0


def test_a_missing_audit_run_and_a_folder_of_requests_are_named_as_such(capsys, tmp_path):
    """`audit --run nope` said the run names no source run; `--requests DIR` said DIR does not exist."""
    assert main(["audit", "--run", str(tmp_path / "nope"), "--requests", str(tmp_path / "r.csv")]) == 2
    assert "nope does not exist" in _one_error(capsys)
    from tru_dist.data.requests import read_requests
    from tru_dist.errors import RequestError

    with pytest.raises(RequestError, match="is a folder"):
        read_requests(tmp_path)


def test_a_diverged_update_is_refused_before_anything_is_written():
    """A method that diverged wrote a NaN checkpoint and its receipt; the run then refused to load."""
    import torch

    from tru_dist.errors import TrainingError
    from tru_dist.unlearn.run import check_finite

    model = torch.nn.Linear(3, 2)
    check_finite(model, "tru")  # finite: nothing to say
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(TrainingError, match=r"the tru update diverged: NaN/inf in bias; nothing was written"):
        check_finite(model, "tru")


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs Linux's /proc (read-only)")
def test_traceback_switch_zero_keeps_the_one_line(capsys, monkeypatch):
    monkeypatch.setenv("TRU_DIST_TRACEBACK", "0")
    assert main(["data", "synth", "--out", "/proc/tru-dist-test/d", "--users", "60", "--items", "40"]) == 2
    _one_error(capsys)
    monkeypatch.setenv("TRU_DIST_TRACEBACK", "1")
    with pytest.raises(OSError):
        main(["data", "synth", "--out", "/proc/tru-dist-test/d", "--users", "60", "--items", "40"])


def test_an_audit_run_that_is_a_file_and_originals_that_are_a_file(capsys, tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert main(["audit", "--run", str(afile), "--requests", str(afile)]) == 2
    assert "is a file, not a folder" in _one_error(capsys)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "config.yaml").write_text("# mine\n")
    assert main(["compare", "--data", "synthetic:tiny", "--model", "lightgcn", "--methods", "retrain,noop",
                 "--seeds", "1", "--originals", str(afile), "--out", str(out), "--address", "none"]) == 2
    assert "--originals" in _one_error(capsys)
    assert (out / "config.yaml").read_text() == "# mine\n"  # refused before a worker wrote there


def test_a_run_is_not_written_into_a_comparison_or_a_dataset(capsys, tmp_path):
    """`unlearn --out <compare folder>` overwrote the comparison's config.yaml, exit 0."""
    cmp_dir, mm = tmp_path / "cmp", tmp_path / "mm"
    cmp_dir.mkdir()
    (cmp_dir / "results.json").write_text("{}")
    (cmp_dir / "config.yaml").write_text("# the comparison's\n")
    assert main(["data", "synth", "--out", str(mm), "--users", "60", "--items", "40"]) == 0
    capsys.readouterr()
    for out in (cmp_dir, mm):
        assert main(["train", "--model", "lightgcn", "--data", "synthetic:tiny", "--out", str(out),
                     "--train.epochs=1"]) == 2
        assert "holds another command's output" in _one_error(capsys)
        assert main(["unlearn", "--run", str(tmp_path / "run"), "--requests", str(tmp_path / "r.csv"),
                     "--out", str(out)]) == 2
        assert "holds another command's output" in _one_error(capsys)
    assert (cmp_dir / "config.yaml").read_text() == "# the comparison's\n"


@pytest.mark.parametrize("argv, named", [
    (["data", "forget", "--data", "synthetic:tiny", "--regime", "users", "--fractoin=0.5"],
     "did you mean --fraction?"),
    (["data", "synth", "--users", "60", "--items", "40", "--sed=3"], "did you mean --seed?"),
    (["report", "compare", "nowhere", "--foo=1"], "report takes no config overrides (--foo=1)"),
    (["recommend", "--run", "nowhere", "--users", "1", "--train.lr=1"],
     "recommend takes no config overrides"),
    (["audit", "--run", "nowhere", "--requests", "r.csv", "--orignal=x"], "did you mean --original?"),
    (["verify-deletion", "--run", "nowhere", "--data.path=x"], "verify-deletion takes no config overrides"),
], ids=["data-forget", "data-synth", "report", "recommend", "audit", "verify-deletion"])
def test_a_command_that_reads_no_overrides_refuses_them(argv, named, tmp_path, capsys):
    """`data forget ... --fractoin=0.5` wrote a forget set of the default fraction 0.05, exit 0:
    commands that build no config dropped every --key=value unread (a typo included)."""
    out = tmp_path / "out.csv"
    if argv[0] == "data":
        argv = [*argv, "--out", str(out)]
    assert main(argv) == 2
    line = _one_error(capsys)
    assert named in line and "it would ignore them" in line
    assert not out.exists()


def test_compare_help_lists_every_registered_method(capsys):
    """The --methods help is the registry's list (it was a hand-kept copy that missed retrain-reseed)."""
    from tru_dist.unlearn.base import method_names

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines (and may break at a '-')
    listed = text.split("comma list of methods (", 1)[1].split(")", 1)[0].replace("- ", "-")
    assert [m.strip() for m in listed.split(",")] == method_names()
