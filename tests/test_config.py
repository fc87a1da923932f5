"""Layered config: defaults < YAML < overrides; unknown keys are one-line errors."""

from __future__ import annotations

import pytest

from tru_dist.config import build_config, parse_overrides, valid_keys
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
