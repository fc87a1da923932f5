"""``tru-dist bench ...`` argument checks (campaign 2, cases B07–B09, B13, B18, B26, B28, B29,
B39, B40): one line ``error: ...`` naming the bad value, exit 2, no traceback, no ``--out`` — and
no work done first: no ``--work-dir`` made, no store generated, no original trained.

Every case is refused before training, so each runs in about a second on ``synthetic:tiny``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_input_campaign import one_line_error

from tru_dist.bench import parse_feature_spec
from tru_dist.errors import ConfigError

TINY = ["--data", "synthetic:tiny", "--model", "lightgcn"]


def _bench(kind: str, tmp: Path, *extra: str) -> list[str]:
    """``bench KIND`` on synthetic:tiny with an ``--out`` JSON (and a ``--work-dir`` where it has one)."""
    argv = ["bench", kind, *TINY, "--out", str(tmp / "b.json"), *extra]
    if kind in ("pool", "scale") and "--work-dir" not in extra:
        argv += ["--work-dir", str(tmp / "work")]
    return argv


# -- --synthetic-features --------------------------------------------------------------------------
@pytest.mark.parametrize("spec, names", [
    ("x:4,x:8", ["'x' is given twice"]),      # B07: the last one won
    (":8", ["':8'"]),                          # B08: a modality named ''
    ("x:0", ["x:0", ">= 1"]),
])
@pytest.mark.parametrize("kind", ["train", "dist", "scale", "sequential"])
def test_a_bad_feature_spec_is_one_line(tmp_path, capsys, kind, spec, names):
    one_line_error(_bench(kind, tmp_path, "--synthetic-features", spec), capsys, "--synthetic-features",
                   *names)
    assert not (tmp_path / "work").exists()


def test_parse_feature_spec_is_as_strict_as_data_synth_and_keeps_its_empty_forms():
    assert parse_feature_spec("image:4096, text:384") == {"image": 4096, "text": 384}
    assert parse_feature_spec(None) == parse_feature_spec("") == parse_feature_spec("none") == {}
    for bad in ("x:4,x:8", ":8", "image=4096", "x:-1"):
        with pytest.raises(ConfigError, match="--synthetic-features"):
            parse_feature_spec(bad)


@pytest.mark.parametrize("kind", ["train", "dist"])
def test_features_too_wide_for_memory_are_refused_before_numpy_tries(tmp_path, capsys, kind):
    """B09: a MemoryError traceback asking numpy for 146 TiB."""
    one_line_error(_bench(kind, tmp_path, "--synthetic-features", "x:999999999999"), capsys,
                   "--synthetic-features x:999999999999", "GiB", "narrower")


# -- a --key=value override against the flag that sets the same key -------------------------------
@pytest.mark.parametrize("kind, extra, names", [
    ("train", ["--epochs", "1", "--train.epochs=2"], ["--train.epochs=2", "--epochs"]),   # B18
    ("train", ["--model.name=mgcn"], ["--model.name=mgcn", "--model"]),
    ("dist", ["--model.name=mgcn"], ["--model.name=mgcn", "--model"]),
    ("sequential", ["--epochs", "1", "--train.epochs=2"], ["--train.epochs=2", "--epochs"]),
    ("sequential", ["--unlearn.seed=3"], ["--unlearn.seed=3", "--seed"]),
    ("sequential", ["--unlearn.method=noop"], ["--unlearn.method=noop", "--method"]),
    ("pool", ["--epochs", "1", "--train.epochs=2"], ["--train.epochs=2", "--epochs"]),
    ("pool", ["--dist.workers=3"], ["--dist.workers=3", "--workers"]),
    ("scale", ["--fanout", "5", "--unlearn.fanout=3"], ["--unlearn.fanout=3", "--fanout"]),
    ("scale", ["--unlearn.method=noop"], ["--unlearn.method=noop", "--method"]),
])
def test_an_override_contradicting_a_flag_is_refused(tmp_path, capsys, kind, extra, names):
    line = one_line_error(_bench(kind, tmp_path, *extra), capsys, f"bench {kind}", *names)
    assert "instead of the override" in line
    assert not (tmp_path / "work").exists()


def test_an_override_of_a_key_no_flag_sets_still_reaches_the_bench(tmp_path):
    """The check refuses only keys a flag owns: ``--train.optimizer=adam`` is how bench scale
    measures dense Adam, ``--unlearn.epochs`` how bench sequential shortens TRU."""
    from tru_dist.bench import refuse_flag_overrides
    from tru_dist.bench_scale import SCALE_FLAGS

    refuse_flag_overrides("scale", ["--train.optimizer=adam", "unlearn.epochs=2"], SCALE_FLAGS)
    refuse_flag_overrides("train", {"train": {"deterministic": True}, "model": {"dim": 8}},
                          {"train.epochs": "--epochs"})


# -- bench pool: checked before the original is trained ---------------------------------------------
@pytest.mark.parametrize("extra, names", [
    (["--requests", "1000"], ["--requests 1000 exceeds the", "at most"]),   # B39
    (["--method", "sisa"], ["sisa", "tru-dist compare --methods sisa"]),     # B40
    (["--method", "nope"], ["'nope'"]),
])
def test_bench_pool_refuses_before_any_work(tmp_path, capsys, extra, names):
    (tmp_path / "work").mkdir()  # an existing --work-dir is left as it was
    one_line_error(_bench("pool", tmp_path, "--epochs", "1", *extra), capsys, *names)
    assert list((tmp_path / "work").iterdir()) == []


# -- bench scale: checked before the store is generated ----------------------------------------------
SCALE_SMALL = ["--users", "50", "--items", "30", "--train-steps", "1", "--retrain-epochs", "1",
               "--stream-requests", "0", "--modalities", "image:4"]


@pytest.mark.parametrize("extra, names", [
    (["--interactions", "500", "--delete-users", "1000"], ["--delete-users", "1..50", "1000 + 0"]),  # B26
    (["--interactions", "500", "--delete-users", "40", "--stream-requests", "20"], ["40 + 20"]),
    (["--interactions", "10"], ["10 interactions for 50 users"]),                                      # B29
    (["--interactions", "500", "--method", "sisa"], ["sisa"]),
])
def test_bench_scale_refuses_before_the_store_is_generated(tmp_path, capsys, extra, names):
    argv = ["bench", "scale", "--model", "lightgcn", *SCALE_SMALL, *extra, "--out", str(tmp_path / "b.json"),
            "--work-dir", str(tmp_path / "work")]
    one_line_error(argv, capsys, *names)
    assert not (tmp_path / "work").exists()


def test_bench_scale_on_data_refuses_too_many_users_without_making_the_work_dir(tmp_path, capsys):
    one_line_error(_bench("scale", tmp_path, "--delete-users", "100000"), capsys, "--delete-users")
    assert not (tmp_path / "work").exists()
