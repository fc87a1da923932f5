"""A run trained on a relative ``--data`` finds its data from any directory (``data.path`` as
given, else the absolute ``data.resolved_path`` train recorded), while a run folder copied
with its data still opens the copy's data (what the crash-safety copies rely on)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import tru_dist
from tru_dist.cli import main
from tru_dist.config import Config, build_config, parse_overrides
from tru_dist.errors import ConfigError
from tru_dist.train.checkpoint import read_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``home/d/tiny`` (a store) and ``home/run``, trained from ``home`` with ``--data d/tiny``."""
    home = tmp_path_factory.mktemp("loc") / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["data", "synth", "--format", "store", "--out", "d/tiny", "--users", "200", "--items",
                     "120", "--modalities", "image:16,text:8"]) == 0
        assert main(["train", "--model", "lightgcn", "--data", "d/tiny", "--out", "run", "--train.epochs=2",
                     "--model.dim=16"]) == 0
    return home


def _copy(home: Path, dst: Path, *, with_data: bool = True) -> Path:
    shutil.copytree(home / "run", dst / "run")
    if with_data:
        shutil.copytree(home / "d", dst / "d")
    return dst


def test_train_keeps_the_path_as_given_and_records_its_absolute_form(trained):
    data = yaml.safe_load((trained / "run" / "config.yaml").read_text())["data"]
    assert data["path"] == "d/tiny" and data["resolved_path"] == str(trained / "d" / "tiny")
    assert torch.load(trained / "run" / "checkpoint.pt", weights_only=True)["config"]["data"] == data


def test_a_run_evaluates_from_another_directory(trained, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="tru_dist"):
        assert main(["evaluate", "--run", str(trained / "run")]) == 0, capsys.readouterr().err
    assert "test" in capsys.readouterr().out
    assert any("using " + str(trained / "d" / "tiny") in r.getMessage() for r in caplog.records)
    assert tru_dist.recommend(trained / "run", users=[0, 1], k=3)[1]["user"] == 1  # load_run's path too


def test_a_copy_with_its_data_opens_the_copy(trained, tmp_path, monkeypatch):
    copy = _copy(trained, tmp_path)
    monkeypatch.chdir(copy)
    assert read_run("run")["config"]["data"]["path"] == "d/tiny"  # the copy's store, not the original
    monkeypatch.chdir(_copy(trained, tmp_path / "bare", with_data=False))
    assert read_run("run")["config"]["data"]["path"] == str(trained / "d" / "tiny")


def test_an_unlearned_copy_records_the_copy_s_store(trained, tmp_path, monkeypatch):
    """Unlearning a copied run from the copy's folder opens the copy's store, so the new run's
    record must name that store (it inherited the original's, which a later command from
    elsewhere would then open, or purge)."""
    copy = _copy(trained, tmp_path / "copy")
    monkeypatch.chdir(copy)
    pd.DataFrame({"request_id": ["r"], "user_id": [4], "item_id": pd.array([None], dtype="Int64"),
                  "reason": "gdpr"}).to_csv(copy / "req.csv", index=False)
    assert main(["unlearn", "--run", "run", "--requests", "req.csv", "--out", "u"]) == 0
    data = yaml.safe_load((copy / "u" / "config.yaml").read_text())["data"]
    assert data["path"] == "d/tiny" and data["resolved_path"] == str(copy / "d" / "tiny")


def test_training_code_opens_the_recorded_path_when_the_given_one_is_missing(trained, tmp_path, monkeypatch):
    from tru_dist.distributed.shard import open_full
    from tru_dist.train.trainer import _load_data

    monkeypatch.chdir(tmp_path)  # no d/tiny here
    cfg = Config.from_dict({"data": {"path": "d/tiny", "resolved_path": str(trained / "d" / "tiny")}})
    assert _load_data(cfg).n_users == open_full(cfg).n_users == 200


def test_the_record_follows_symlinks_as_opening_does(tmp_path, monkeypatch):
    from tru_dist.config import absolute_data_path

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "data").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "link").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path / "cwd")
    assert Path("link/../data").exists()  # the OS resolves the link before ".."
    assert absolute_data_path("link/../data") == str((tmp_path / "real" / "data").resolve())
    assert build_config(data=".").data.name == "cwd"  # "." is named by the folder it is


def test_neither_path_is_one_error_naming_both(trained, tmp_path, monkeypatch, capsys):
    moved = _copy(trained, tmp_path / "moved")  # the original stays for the other tests
    abs_path = str(moved / "d" / "tiny")
    ckpt = moved / "run" / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["data"]["resolved_path"] = abs_path  # as if trained in ``moved``
    torch.save(saved, ckpt)
    shutil.rmtree(moved / "d")
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"request_id": ["r"], "user_id": [4], "item_id": pd.array([None], dtype="Int64"),
                  "reason": "gdpr"}).to_csv(tmp_path / "req.csv", index=False)
    for argv in (["evaluate", "--run", str(moved / "run")],
                 ["unlearn", "--run", str(moved / "run"), "--requests", "req.csv", "--out", "u"],
                 ["recommend", "--run", str(moved / "run"), "--users", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "d/tiny does not exist" in err and abs_path in err, (argv, err)
    assert not (tmp_path / "u").exists()


def test_an_old_run_without_the_record_fails_as_before(trained, tmp_path, monkeypatch, capsys):
    old = _copy(trained, tmp_path / "old", with_data=False)
    ckpt = old / "run" / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=True)
    del saved["config"]["data"]["resolved_path"]  # written before the field existed
    torch.save(saved, ckpt)
    assert read_run(old / "run")["config"]["data"]["path"] == "d/tiny"  # still valid
    monkeypatch.chdir(old)
    assert main(["evaluate", "--run", "run"]) == 2
    assert "dataset path d/tiny of run run does not exist" in capsys.readouterr().err


def test_a_run_whose_data_moved_names_the_run_and_the_flag_that_finds_it(trained, tmp_path, monkeypatch,
                                                                          capsys):
    """Data recorded at one absolute place and moved: every command on the run said "pass an
    MMRec folder or a tru-dist store", naming no flag a command on a run takes."""
    moved = _copy(trained, tmp_path / "abs")
    ckpt = moved / "run" / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["data"]["path"] = saved["config"]["data"]["resolved_path"] = str(moved / "d" / "tiny")
    torch.save(saved, ckpt)
    (moved / "d").rename(moved / "elsewhere")
    monkeypatch.chdir(tmp_path)
    for argv in (["evaluate", "--run", str(moved / "run")], ["recommend", "--run", str(moved / "run"),
                                                             "--users", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"of run {moved / 'run'} does not exist" in err and "--data.path=NEW" in err, err
    assert main(["evaluate", "--run", str(moved / "run"), f"--data.path={moved / 'elsewhere' / 'tiny'}"]) == 0


def test_the_record_is_not_a_setting(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="recorded by train.*set data.path instead"):
        parse_overrides(["--data.resolved_path=/x"])
    assert parse_overrides(["--path=d"]) == {"data": {"path": "d"}}  # the suffix still names data.path
    reused = tmp_path / "config.yaml"
    reused.write_text(yaml.safe_dump({"data": {"path": "d", "resolved_path": "/elsewhere/d"}}))
    assert build_config(config_file=reused).data.resolved_path is None  # train records its own
    base = Config.from_dict({"data": {"path": "d", "resolved_path": "/first/d"}})
    assert build_config(base=base).data.resolved_path == "/first/d"
    monkeypatch.chdir(tmp_path)
    moved = build_config(base=base, overrides=["data.path=e"]).data
    assert moved.path == "e" and moved.resolved_path == str(tmp_path / "e")
