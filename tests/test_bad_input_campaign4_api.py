"""The fourth bad-input campaign's findings in the config builder, the Python API and the jobs:
each was a traceback, a partial write or a value silently taken for another, and is now a
one-line error before any work.

* YAML configs: a key given twice (the last one won), ``--model`` contradicted by the file's or an
  override's ``model.name`` (the file won, with the other model's published defaults), an empty
  ``--model`` / ``--config`` (read as "not given"), a seed beyond what the generators take
  (torch's "Overflow" traceback mid-run, ``config.yaml`` left behind);
* a sweep regime with a user ``policy`` on another regime (refused only after the originals had
  trained);
* ``--address auto`` with no cluster (Ray's ConnectionError traceback), ``jobs/benchmark.py``
  (no error handling at all);
* the Python API's argument types: ``purge="no"`` purged the store, ``keep_versions`` without
  ``purge`` was ignored and ``keep_versions=-1`` failed after writing the model and a receipt,
  and ``config=123``, ``method=123``, ``seed="x"``, ``pool="x"``, ``backend="bogus"``, an ``out``
  that is a file (or an embedding file that is a folder) and a requests frame with a repeated
  column raised raw Python exceptions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_bad_input_campaign import one_line_error
from test_malformed_inputs import Env, build_env

import tru_dist
from tru_dist.cli import main
from tru_dist.config import SEED_MAX, build_config
from tru_dist.errors import ConfigError, RequestError

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return build_env(tmp_path_factory.mktemp("campaign4"))


def _train(env: Env, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(env.store), "--out", str(tmp / "out"), "--train.epochs=1", "--model.dim=8",
            "--address", "none", "--device", "cpu", *extra]


# -- YAML configs and the model's name ----------------------------------------------------------------
def test_a_config_key_given_twice_is_refused_not_last_one_wins(env: Env, tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  epochs: 1\n  epochs: 2\n")
    one_line_error(_train(env, tmp_path, "--model", "lightgcn", "--config", str(config)), capsys,
                   str(config), "key 'epochs' is given twice (lines 2 and 3)")


@pytest.mark.parametrize("how", ["file", "override"])
def test_model_and_another_model_name_disagreeing_is_refused(how, env: Env, tmp_path, capsys):
    """The file's (or override's) model.name won over --model and trained MGCN with LightGCN's
    published defaults — what `--config OTHER_RUN/config.yaml` with another --model did."""
    config = tmp_path / "mgcn.yaml"
    config.write_text("model:\n  name: mgcn\n")
    extra = ["--config", str(config)] if how == "file" else ["--model.name=mgcn"]
    one_line_error(_train(env, tmp_path, "--model", "lightgcn", *extra), capsys,
                   "--model lightgcn and", "mgcn disagree")


def test_a_model_named_once_is_taken_in_any_spelling():
    config = build_config(model="MiG-GT", overrides=["model.name=miggt"])
    assert config.model.name == "miggt"
    assert build_config(overrides=["model.name=mgcn"]).model.name == "mgcn"


@pytest.mark.parametrize("flag", ["--model", "--config"])
def test_an_empty_model_or_config_is_refused_not_read_as_absent(flag, env: Env, tmp_path, capsys):
    one_line_error(_train(env, tmp_path, flag, ""), capsys, f"{flag} is empty")


def test_a_seed_beyond_the_generators_is_refused_before_any_write(env: Env, tmp_path, capsys):
    one_line_error(_train(env, tmp_path, "--model", "lightgcn", "--seed", str(2**63)), capsys,
                   "train.seed", f"0..{SEED_MAX}")
    assert build_config(seed=SEED_MAX).train.seed == SEED_MAX


def test_a_sweep_regime_with_a_user_policy_on_another_regime_is_refused_when_read(tmp_path):
    from tru_dist.tune.spec import load_spec

    sweep = tmp_path / "s.yaml"
    original = (Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "tiny.yaml").read_text()
    assert "{regime: interactions, fraction: 0.05}" in original
    sweep.write_text(original.replace("{regime: interactions, fraction: 0.05}",
                                      "{regime: interactions, policy: core, fraction: 0.05}"))
    with pytest.raises(ConfigError, match="policy 'core' applies to the users regime only") as err:
        load_spec(sweep)
    assert "Value error" not in str(err.value)


# -- Ray addresses and the jobs ----------------------------------------------------------------------
def test_address_auto_without_a_cluster_is_one_line(monkeypatch):
    import ray

    from tru_dist.distributed.launch import connect

    def no_cluster(**_: object) -> None:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ConfigError, match=r"no Ray cluster to join at --address auto .*--address local"):
        connect("auto")


@pytest.mark.parametrize("args, names", [
    (["--model", "nope"], ["unknown model 'nope'"]),
    (["--steps", "0"], ["--steps: 0 is invalid"]),
    (["--data", "/nowhere/at/all"], ["/nowhere/at/all does not exist"]),
])
def test_the_benchmark_job_reports_bad_arguments_in_one_line(args, names, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_job", JOBS / "benchmark.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    capsys.readouterr()
    try:
        rc = job.main([*args, "--out", str(tmp_path / "b.json")])
    except SystemExit as exc:  # an argument the parser refuses exits from inside, as a script does
        rc = exc.code
    assert rc == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and all(n in lines[0] for n in names), lines
    assert not (tmp_path / "b.json").exists()


# -- the Python API's argument types -------------------------------------------------------------------
def _store_files(env: Env) -> list[tuple[str, int]]:
    files = (p for p in env.store.rglob("*") if p.is_file())
    return sorted((str(p.relative_to(env.store)), p.stat().st_size) for p in files)


@pytest.mark.parametrize("kwargs, match", [
    ({"purge": "no"}, "purge must be True or False, not str 'no'"),
    ({"keep_versions": 2}, "keep_versions applies to the purge only"),
    ({"purge": True, "keep_versions": -1}, "keep_versions must be an integer >= 0"),
    ({"keep_versions": "3"}, "keep_versions must be an integer >= 0"),
    ({"method": 123}, "method must be a method name"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"seed": 2**63}, "seed must be an integer"),
    ({"pool": "x"}, "pool must be a tru_dist.worker_pool"),
])
def test_unlearn_refuses_bad_argument_types_before_any_write(kwargs, match, env: Env, tmp_path):
    """``purge="no"`` purged the store in place; ``purge=True, keep_versions=-1`` wrote the model
    and a receipt with a pending purge, then raised."""
    before = _store_files(env)
    with pytest.raises(ConfigError, match=match):
        tru_dist.unlearn(env.run, env.requests, out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    assert _store_files(env) == before


def test_unlearn_refuses_a_requests_frame_with_a_repeated_column(env: Env, tmp_path):
    frame = pd.DataFrame([["r1", 0, 1, "x", "y"]], columns=["request_id", "user_id", "item_id", "reason",
                                                            "reason"])
    with pytest.raises(RequestError, match="column.s. reason more than once"):
        tru_dist.unlearn(env.run, frame, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"config": 123}, "config must be a Config, a mapping of overrides or a YAML file"),
    ({"resume": "yes"}, "resume must be True or False"),
    ({"pool": "x"}, "pool must be a tru_dist.worker_pool"),
])
def test_train_refuses_bad_argument_types(kwargs, match, env: Env, tmp_path):
    with pytest.raises(ConfigError, match=match):
        tru_dist.train(str(env.store), out=tmp_path / "out", model="lightgcn", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("call", ["train", "unlearn"])
def test_an_out_that_is_a_file_is_one_line_in_python_too(call, env: Env, tmp_path):
    out = tmp_path / "taken"
    out.write_text("mine")
    with pytest.raises(ConfigError, match=f"out {out} is a file"):
        if call == "train":
            tru_dist.train(str(env.store), out=out, model="lightgcn")
        else:
            tru_dist.unlearn(env.run, env.requests, out=out)
    assert out.read_text() == "mine"


def test_evaluate_recommend_export_and_pools_refuse_bad_arguments(env: Env, tmp_path):
    with pytest.raises(ConfigError, match="pool must be a tru_dist.worker_pool"):
        tru_dist.evaluate(env.run, pool="x")
    with pytest.raises(ConfigError, match="exclude_seen must be True or False"):
        tru_dist.recommend(env.run, [0], exclude_seen="no")
    folder = tmp_path / "e.npz"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder; pass a file path ending in .npz"):
        tru_dist.export_embeddings(env.run, out=folder)
    with pytest.raises(ConfigError, match="backend must be auto, gloo or nccl"):
        tru_dist.worker_pool(2, backend="bogus")


def test_the_cli_still_passes_its_own_arguments_through(env: Env, tmp_path, capsys):
    """The checks take what the CLI gives (bools, ints, a Config): an ordinary unlearn runs."""
    out = tmp_path / "u"
    assert main(["unlearn", "--run", str(env.run), "--requests", str(env.requests), "--out", str(out),
                 "--unlearn.epochs=1", "--seed", "3"]) == 0
    assert (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra, flag, value", [
    (["--methods", "retrain,,noop"], "--methods", "retrain,,noop"),
    (["--methods", "retrain,noop", "--audit", "mia,"], "--audit", "mia,"),
])
def test_an_empty_comma_list_entry_is_refused_not_dropped(extra, flag, value, env: Env, tmp_path, capsys):
    one_line_error(["compare", "--data", str(env.store), "--model", "lightgcn", "--regime", "interactions",
                    "--seeds", "1", "--out", str(tmp_path / "out"), "--address", "none", *extra], capsys,
                   f"{flag} {value!r} has an empty entry")


def test_recommend_refuses_an_empty_user_entry(env: Env):
    with pytest.raises(RequestError, match="users must be integer ids separated by commas"):
        tru_dist.recommend(env.run, "1,,2")


@pytest.mark.parametrize("extra, names", [
    (["--workers", "1", "--dist.workers=2"], ["--dist.workers=2 contradicts --workers", "pass --workers 2"]),
    (["--seed", "1", "--train.seed=2"], ["--train.seed=2 contradicts --seed, which sets train.seed"]),
    (["--device", "cpu", "--train.device=auto"], ["--train.device=auto contradicts --device"]),
])
def test_a_flag_and_an_override_of_its_key_are_refused_not_resolved_silently(extra, names, env: Env, tmp_path,
                                                                              capsys):
    """The override won without a word: --workers 1 --dist.workers=2 ran on two workers, and
    --seed 1 --train.seed=2 trained with 2 and unlearned with 1."""
    argv = ["train", "--data", str(env.store), "--model", "lightgcn", "--out", str(tmp_path / "out"),
            "--train.epochs=1", "--address", "none", *extra]
    one_line_error(argv, capsys, *names)


def test_data_forget_refuses_a_forget_set_no_unlearning_could_use(env: Env, tmp_path, capsys):
    """--fraction 1 on the users regime wrote a request file every unlearn then refused."""
    one_line_error(["data", "forget", "--data", str(env.store), "--regime", "users", "--fraction", "1",
                    "--out", str(tmp_path / "f.csv")], capsys, "deletes every train interaction",
                   "smaller --fraction")
    assert not (tmp_path / "f.csv").exists()


def test_a_tuned_file_with_a_key_given_twice_is_refused(tmp_path):
    """Tuned files are read by the same YAML reader as configs (it read them with its own)."""
    from tru_dist.unlearn.tuned import read_tuned

    tuned = tmp_path / "tru-users.yaml"
    tuned.write_text("unlearn:\n  lr: 0.1\n  lr: 0.2\n"
                     "tuning: {sweep: s, seeds: [100], trials: 1, seconds: 1.0}\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice .lines 2 and 3."):
        read_tuned(tuned)


def test_an_empty_address_and_a_missing_report_folder_are_named_as_such(env: Env, tmp_path, capsys):
    """``--address ''`` was reported as the value None; ``report compare`` on a folder that is not
    there said the folder "holds no results.json"."""
    one_line_error(["evaluate", "--run", str(env.run), "--address", ""], capsys, "--address is empty")
    nowhere = tmp_path / "nowhere"
    one_line_error(["report", "compare", str(nowhere)], capsys, f"{nowhere} does not exist")
