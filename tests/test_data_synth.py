"""The streaming scale generator (``tru-dist data synth --interactions``,
:mod:`tru_dist.data.synth_stream`): a store every reader opens, with exactly the requested
counts, seeded byte for byte, independent of chunking, with the hashes ``write_store``
would compute, refusing bad input in one line, and never holding all interactions at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tru_dist.data.dataset import TEST, TRAIN, VALID
from tru_dist.data.source import open_data
from tru_dist.data.store import read_store, write_revision, write_store
from tru_dist.data.synth_stream import parse_modalities, write_synthetic_store
from tru_dist.data.synthetic import split_labels
from tru_dist.errors import DataError

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(n_users=2000, n_items=300, n_interactions=20_000, modalities={"image": 16, "text": 8})
FILES = ("META.json", "interactions.parquet", "item_features/image.npy", "item_features/text.npy")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "store"
    write_synthetic_store(out, **SMALL, seed=7, chunk_users=1000)
    return out


def _bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in FILES}


def test_small_store_opens_with_the_requested_shape(small):
    data = open_data(small)
    assert (data.n_users, data.n_items, data.n_interactions) == (2000, 300, 20_000)
    for name, dim in SMALL["modalities"].items():
        assert data.features[name].dtype == np.float16 and data.features[name].shape == (300, dim)
        assert np.isfinite(data.features[name]).all() and np.asarray(data.features[name]).std() > 0.1
    assert set(np.unique(data.labels)) == {TRAIN, VALID, TEST}
    assert (np.bincount(data.users[data.labels == TRAIN], minlength=2000) > 0).all()  # every user has train
    assert (np.bincount(data.items, minlength=300) > 0).all()  # dense item ids
    assert (np.diff(data.users) >= 0).all()  # rows grouped by user, in sequence order
    np.testing.assert_array_equal(data.labels, split_labels(data.users))  # the MMRec split rule
    degree = np.bincount(data.users)
    assert degree.min() >= 5 and degree.max() > 5 * degree.mean()  # 5-core-like floor, heavy tail
    pop = np.sort(np.bincount(data.items))[::-1]
    assert pop[:30].sum() > 0.25 * pop.sum()  # popularity skew: 10% of items hold > 25% of interactions
    meta = json.loads((small / "META.json").read_text())
    assert meta["features"]["image"]["dtype"] == "float16" and meta["split_seed"] == 7


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    write_synthetic_store(tmp_path / "again", **SMALL, seed=7, chunk_users=1000)
    write_synthetic_store(tmp_path / "other", **SMALL, seed=8, chunk_users=1000)
    assert _bytes(tmp_path / "again") == _bytes(small)
    other = _bytes(tmp_path / "other")
    assert all(other[f] != _bytes(small)[f] for f in FILES)


def test_chunking_does_not_change_the_files(small, tmp_path):
    write_synthetic_store(tmp_path / "c97", **SMALL, seed=7, chunk_users=97)
    assert _bytes(tmp_path / "c97") == _bytes(small)


def test_hashes_are_the_ones_write_store_computes(small, tmp_path):
    data = read_store(small)  # verify=True recomputes every hash against META
    back = data.with_features({m: np.asarray(f, dtype=np.float32) for m, f in data.features.items()})
    write_store(back, tmp_path / "rewritten")
    ours, theirs = (json.loads((p / "META.json").read_text()) for p in (small, tmp_path / "rewritten"))
    assert ours["hashes"] == theirs["hashes"] and ours["content_hash"] == theirs["content_hash"]
    assert ours["counts"] == theirs["counts"]


def test_a_purge_revision_of_it_still_verifies(small, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(small, store)
    keep = np.ones(20_000, dtype=bool)
    keep[::10] = False
    write_revision(store, keep, record={"receipts": ["r1"]})
    data = read_store(store)  # the float16 features are shared by the revision and still verify
    assert data.n_interactions == 18_000 and data.features["image"].dtype == np.float16


@pytest.mark.parametrize("rounds", [64, 1])
def test_dense_data_stays_unique_and_chunk_independent(tmp_path, monkeypatch, rounds):
    """95% dense: many repeats to move. ``rounds=1`` forces the exact per-user fallback."""
    import tru_dist.data.synth_stream as synth

    monkeypatch.setattr(synth, "_DEDUPE_ROUNDS", rounds)
    for chunk in (7, 50):
        write_synthetic_store(tmp_path / f"dense{chunk}", 50, 20, 950, {"image": 4}, seed=3,
                              chunk_users=chunk)
        data = open_data(tmp_path / f"dense{chunk}")  # the reader rejects repeated pairs
        assert data.n_interactions == 950 and (np.bincount(data.users) <= 20).all()
    assert (tmp_path / "dense7/interactions.parquet").read_bytes() == (
        tmp_path / "dense50/interactions.parquet").read_bytes()


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args, expect in [
        ((10, 5, 9), "every user needs at least one"),
        ((3, 50, 20), "every item needs at least one"),
        ((3, 4, 13), "exceed users × items"),
        ((0, 4, 13), "users must be a positive integer"),
    ]:
        with pytest.raises(DataError, match=expect):
            write_synthetic_store(tmp_path / "x", *args, {"image": 2})
    assert not (tmp_path / "x").exists()
    for spec, expect in [("image", "bad modality spec"), ("image:0", ">= 1"), ("a:2,a:3", "twice"),
                         ("../x:2", "bad modality spec"), ("", "modality spec is empty"),
                         (" ", "modality spec is empty")]:
        with pytest.raises(DataError, match=expect):
            parse_modalities(spec)
    assert parse_modalities("image:512,text:384") == {"image": 512, "text": 384}
    assert parse_modalities("none") == parse_modalities("None") == {}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tru_dist", "data", "synth", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_cli_writes_a_store_and_prints_one_json_line(tmp_path):
    out = tmp_path / "s"
    proc = _cli("--users", "300", "--items", "50", "--interactions", "3000", "--modalities", "image:8,text:4",
                "--seed", "5", "--chunk-users", "64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["n_interactions"] == 3000 and summary["bytes_written"] > 0 and summary["seconds"] >= 0
    assert "chunk 5/5" in proc.stderr  # one progress line per chunk
    assert read_store(out).n_interactions == 3000


@pytest.mark.parametrize(("args", "expect"), [
    (["--modalities", "image:512,text"], "bad modality spec 'text'"),
    (["--modalities", "image:0"], ">= 1"),
    (["--interactions", "0"], "--interactions"),
    (["--users", "-3"], "--users"),
    (["--users", "500"], "every user needs at least one"),
    (["--format", "mmrec"], "drop --format mmrec"),
    (["--nonempty"], "is not empty"),
])
def test_cli_malformed_input_is_one_error_line_and_no_store(tmp_path, args, expect):
    out = tmp_path / "out"
    nonempty = args == ["--nonempty"]
    if nonempty:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = []
    base = {"--users": "100", "--items": "50", "--interactions": "400", "--modalities": "image:4"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    proc = _cli(*[x for kv in base.items() for x in kv], "--out", str(out))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr
    if nonempty:  # the user's folder is left exactly as it was
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_memory_stays_bounded_by_a_chunk(tmp_path):
    """200k interactions in chunks of 20 users (~2k rows) and row groups of 4096 rows: the peak
    of Python/numpy allocations (tracemalloc sees numpy's buffers; measured ≈ 0.65 MB) stays
    below one int64 column of all interactions (1.6 MB) and a quarter of the five columns
    (5.8 MB) — a writer that materialised the interactions could not."""
    n = 200_000
    all_columns = n * (8 + 8 + 1 + 4 + 8)  # users, items, labels, ratings, timestamps
    write_synthetic_store(tmp_path / "warm", 500, 200, 5000, {"image": 4}, seed=0)  # imports, caches
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        write_synthetic_store(tmp_path / "m", 2000, 2000, n, {"image": 8}, seed=0, chunk_users=20,
                              row_group_rows=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 20
    assert pq.ParquetFile(tmp_path / "m" / "interactions.parquet").metadata.num_rows == n
    assert peak < min(n * 8, all_columns / 4), f"peak {peak} bytes; all interactions take {all_columns}"
