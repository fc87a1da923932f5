"""Layered config: defaults < YAML < overrides; unknown keys are one-line errors."""

from __future__ import annotations

import pytest

from tru_dist.config import build_config, packaged_defaults, parse_overrides, valid_keys
from tru_dist.errors import ConfigError


def test_overrides_dotted_and_bare_leaf():
    cfg = build_config(overrides=["train.lr=0.01", "--beta=0.7", "eval.ks=[5,10]"])
    assert cfg.train.lr == 0.01
    assert cfg.unlearn.gate.beta == 0.7
    assert cfg.eval.ks == [5, 10]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["--learning_rat=1"])
    assert "learning_rat" in str(err.value) and "train.lr" in str(err.value)
    assert "\n" not in str(err.value)


def test_ambiguous_leaf_is_an_error():
    with pytest.raises(ConfigError, match="ambiguous"):
        parse_overrides(["delta=1"])  # scaling.delta and isolation.delta


def test_yaml_layer_and_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.005\n  epochs: 7\nmodel:\n  dim: 32\n")
    cfg = build_config(config_file=f, overrides=["train.epochs=9"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.dim) == (0.005, 9, 32)


def test_bad_value_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="train.lr"):
        build_config(overrides=["train.lr=abc"])
    f = tmp_path / "bad.yaml"
    f.write_text("train: {lr: 0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(config_file=f)
    g = tmp_path / "extra.yaml"
    g.write_text("train:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="train.nope"):
        build_config(config_file=g)


def test_valid_keys_are_leaves():
    keys = valid_keys()
    assert "unlearn.gate.temperature" in keys and "unlearn.gate" not in keys


def test_one_builder_layers_data_seed_file_and_overrides(tmp_path):
    f = tmp_path / "tuned.yaml"  # a tuned file: a partial config plus its provenance
    f.write_text("unlearn:\n  lr: 0.02\n  epochs: 4\n"
                 "tuning: {sweep: s, seeds: [100], trials: 2, seconds: 1.0}\n")
    cfg = build_config(model="mgcn", data="../shared/data/amazon-scientific", config_file=f, seed=7,
                       overrides=["unlearn.epochs=6"])
    assert cfg.data.path == "../shared/data/amazon-scientific" and cfg.model.name == "mgcn"
    assert cfg.train.seed == cfg.unlearn.seed == 7
    assert (cfg.unlearn.lr, cfg.unlearn.epochs) == (0.02, 6)  # the file, then the override
    assert cfg.model.knn_k == packaged_defaults("models", "mgcn")["model"]["knn_k"]
    # the dataset defaults are named by the folder (amazon-scientific -> datasets/scientific.yaml)
    assert packaged_defaults("datasets", "scientific")["data"]["name"] == "scientific"
    assert build_config(data="x/amazon-scientific").data.name == "scientific"
    # no such YAML: the folder's own name (it was the typed default, "synthetic", for real data)
    assert build_config(data="x/dense_train/").data.name == "dense_train"
    assert build_config(data="synthetic:small").data.name == "synthetic"


def test_the_dataset_defaults_line_names_the_folder_as_given():
    from tru_dist.config import defaults_used

    line = defaults_used("lightgcn", "/data/dense_train/")  # no YAML: the name as the user wrote it
    assert "no packaged dataset defaults for 'dense_train' (packaged: baby, scientific)" in line
    assert "| dataset defaults scientific: " in defaults_used("lightgcn", "x/Amazon_Scientific")  # the lookup


def test_a_run_config_is_the_base_and_its_model_cannot_change(tmp_path):
    """``unlearn``/``evaluate``: the run's saved config < --config < seed < overrides; dist.*
    from the command, not from how the run was trained; model.* fixed by the run."""
    from tru_dist.train.checkpoint import save_checkpoint
    from tru_dist.train.trainer import run_config

    trained = build_config(model="lightgcn", overrides=["model.dim=24", "train.lr=0.003", "dist.workers=2",
                                                        "dist.address=none", "unlearn.lr=0.5"])
    save_checkpoint({"config": trained.to_dict(), "best_model": {}, "data": {}}, tmp_path / "checkpoint.pt")
    f = tmp_path / "tuned.yaml"
    f.write_text("unlearn:\n  lr: 0.02\ntuning: {sweep: s, seeds: [100], trials: 2, seconds: 1.0}\n")
    cfg = run_config(tmp_path, config_file=f, seed=3, overrides=["dist.workers=4"])
    assert (cfg.model.dim, cfg.train.lr, cfg.unlearn.lr, cfg.unlearn.seed) == (24, 0.003, 0.02, 3)
    assert (cfg.dist.workers, cfg.dist.address) == (4, "local")  # not the run's 2 / none
    assert run_config(tmp_path).unlearn.lr == 0.5
    g = tmp_path / "other-model.yaml"
    g.write_text("model:\n  dim: 64\n")
    with pytest.raises(ConfigError, match="model.dim differs from the run's"):
        run_config(tmp_path, config_file=g)


@pytest.mark.parametrize("override", ["model.dim=true", "train.lr=true", "train.epochs=false",
                                      "eval.ks=[5,true]", "unlearn.epochs=true", "unlearn.gate.lr=true",
                                      "train.patience=true"])
def test_a_boolean_is_not_a_number(override):
    """pydantic's lax mode read true/false as 1/0: --model.dim=true trained a 1-dimensional model."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"invalid value for '{key}(\\.1)?': (True|False)"):
        build_config(model="lightgcn", overrides=[override])
    assert build_config(model="lightgcn", overrides=["train.deterministic=true"]).train.deterministic is True


@pytest.mark.parametrize("text, key", [("train: 5\n", "train"), ("train: [1, 2]\n", "train"),
                                       ("model: 5\n", "model"), ("unlearn:\n  gate: 7\n", "unlearn.gate")])
def test_a_value_where_a_section_belongs_is_refused_with_or_without_overrides(text, key, tmp_path):
    """`train: 5` in a file was refused alone, but with any override of a train key (--device cpu
    included) the override replaced it, and the model's published defaults with it."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    run_base = build_config(model="lightgcn").to_dict()  # as for unlearn/evaluate: a run's config below
    for overrides in ([f"{key.split('.')[0]}.seed=1"] if key != "model" else ["model.dim=8"], []):
        with pytest.raises(ConfigError, match=f"'{key}' is a section of keys"):
            build_config(base=run_base, config_file=path, overrides=overrides)
    either = f"'{key}'( is a section of keys|: 7 \\(input should be a valid dict)"  # typed default: no gate
    with pytest.raises(ConfigError, match=either):
        build_config(config_file=path, overrides=["train.epochs=1"])  # no --model: the file names none
    # a section left empty (null) stays what it was
    path.write_text("train:\n")
    assert build_config(model="lightgcn", config_file=path, overrides=["train.epochs=1"]).train.lr == 1e-3
