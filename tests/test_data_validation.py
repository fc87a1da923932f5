"""Every reader failure is a one-line DataError naming the file, the row and the fix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from tru_dist.data.mmrec import read_mmrec
from tru_dist.data.store import read_store, write_store
from tru_dist.errors import DataError

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"
# a valid 3-user, 3-item file: line 2 .. line 8
GOOD = [
    "0\t0\t1.0\t0\t0",
    "0\t1\t1.0\t1\t0",
    "0\t2\t1.0\t2\t2",
    "1\t1\t1.0\t0\t0",
    "1\t2\t1.0\t1\t1",
    "2\t0\t1.0\t0\t0",
    "2\t2\t1.0\t1\t0",
]


def write_folder(tmp_path, rows, header=HEADER, features=None):
    (tmp_path / "bad.inter").write_text(header + "".join(r + "\n" for r in rows))
    for name, arr in (features or {}).items():
        np.save(tmp_path / f"{name}_feat.npy", arr)
    return tmp_path


def error_of(folder, **kw) -> str:
    with pytest.raises(DataError) as exc:
        read_mmrec(folder, **kw)
    msg = str(exc.value)
    assert "\n" not in msg, "errors are one line"
    return msg


def with_row(k: int, row: str) -> list[str]:
    rows = list(GOOD)
    rows[k] = row
    return rows


def test_good_file_reads(tmp_path):
    d = read_mmrec(write_folder(tmp_path, GOOD, features={"image": np.ones((3, 4), np.float32)}))
    assert (d.n_users, d.n_items, d.n_interactions) == (3, 3, 7)


def test_missing_column(tmp_path):
    msg = error_of(
        write_folder(
            tmp_path, [r.rsplit("\t", 1)[0] for r in GOOD], header="userID\titemID\trating\ttimestamp\n"
        )
    )
    assert "bad.inter is missing column(s) x_label" in msg and "tab-separated" in msg


def test_comma_separated_file_is_reported_as_missing_columns(tmp_path):
    msg = error_of(
        write_folder(tmp_path, [r.replace("\t", ",") for r in GOOD], header=HEADER.replace("\t", ","))
    )
    assert "missing column(s) userID, itemID" in msg


@pytest.mark.parametrize(
    ("k", "row", "expected"),
    [
        (2, "0\tabc\t1.0\t2\t2", "line 4: itemID is 'abc', not an integer"),
        (4, "1.5\t2\t1.0\t1\t1", "line 6: userID is 1.5, not an integer"),
        (5, "-2\t0\t1.0\t0\t0", "line 7: userID is -2 (negative)"),
        (1, "0\t\t1.0\t1\t0", "line 3: itemID is empty"),
        (3, "1\t1\tgood\t0\t0", "line 5: rating is 'good', not a number"),
    ],
)
def test_bad_id_or_value_names_the_line(tmp_path, k, row, expected):
    msg = error_of(write_folder(tmp_path, with_row(k, row)))
    assert "bad.inter" in msg and expected in msg


def test_blank_line_is_reported_at_its_line(tmp_path):
    rows = GOOD[:3] + [""] + GOOD[3:]
    assert "line 5: userID is empty" in error_of(write_folder(tmp_path, rows))


def test_extra_field_names_the_line(tmp_path):
    assert "line 4" in error_of(write_folder(tmp_path, with_row(2, "0\t2\t1.0\t2\t2\t9\t9")))


def test_non_dense_ids_report_first_missing(tmp_path):
    rows = [r.replace("2\t", "4\t", 1) if r.startswith("2\t") else r for r in GOOD]  # user 2 -> 4
    msg = error_of(write_folder(tmp_path, rows))
    assert "userID values must be dense 0..4 but userID 2 never occurs" in msg and "re-number" in msg
    rows = [r.split("\t") for r in GOOD]
    rows = ["\t".join([u, "7" if i == "1" else i, *rest]) for u, i, *rest in rows]  # item 1 -> 7
    assert "itemID 1 never occurs" in error_of(write_folder(tmp_path, rows))


def test_unknown_x_label(tmp_path):
    msg = error_of(write_folder(tmp_path, with_row(4, "1\t2\t1.0\t1\t3")))
    assert "line 6: unknown x_label 3" in msg and "0 (train), 1 (valid) or 2 (test)" in msg


def test_duplicate_pair_reports_both_lines(tmp_path):
    rows = GOOD + ["1\t0\t1.0\t2\t2", "0\t1\t1.0\t3\t2"]  # (0, 1) repeats line 3 at line 10
    msg = error_of(write_folder(tmp_path, rows))
    assert "duplicate pair (user 0, item 1) at line 3 and line 10" in msg


def test_user_without_train(tmp_path):
    rows = with_row(3, "1\t1\t1.0\t0\t2")  # user 1: test + valid only
    folder = write_folder(tmp_path, rows)
    msg = error_of(folder, require_train=True)
    assert "user 1 has no train interaction (first row at line 5)" in msg
    assert read_mmrec(folder).meta["users_without_train"] == [1]  # accepted by default (cold-start user)


def test_feature_rows_must_equal_n_items(tmp_path):
    msg = error_of(write_folder(tmp_path, GOOD, features={"image": np.zeros((4, 2), np.float32)}))
    assert "image_feat.npy has 4 rows but the interactions have 3 items" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_the_item_row(tmp_path, bad):
    f = np.zeros((3, 5), np.float64)
    f[2, 4] = bad
    msg = error_of(write_folder(tmp_path, GOOD, features={"text": f}))
    assert "text_feat.npy row 2 (item 2) has NaN/inf values" in msg


def test_float64_overflowing_float32_is_reported(tmp_path):
    f = np.zeros((3, 2), np.float64)
    f[1, 0] = 1e300
    f[2, 1] = -3e305
    msg = error_of(write_folder(tmp_path, GOOD, features={"image": f}))
    assert "image_feat.npy row 1 (item 1) has values beyond float32's range (max |value| 3e+305" in msg
    assert "NaN" not in msg and "rescale" in msg


def test_non_numeric_features(tmp_path):
    arr = np.array([["a", "b"]] * 3)
    msg = error_of(write_folder(tmp_path, GOOD, features={"image": arr}))
    assert f"image_feat.npy has dtype {arr.dtype}; item features must be floats or integers" in msg


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.int8])
def test_integer_features_exact_in_float32_are_cast(tmp_path, dtype):
    hi, lo = min(2**24, np.iinfo(dtype).max), max(-(2**24), np.iinfo(dtype).min)  # the exact extremes
    arr = np.array([[0, 1], [hi, 7], [3, lo]], dtype=dtype)
    feats = read_mmrec(write_folder(tmp_path, GOOD, features={"image": arr})).features["image"]
    assert feats.dtype == np.float32 and np.array_equal(feats.astype(np.int64), arr.astype(np.int64))


@pytest.mark.parametrize("big", [2**24 + 1, -(2**24 + 1), 2**40])
def test_integer_features_beyond_float32_exactness_are_refused(tmp_path, big):
    arr = np.zeros((3, 2), np.int64)
    arr[2, 1] = big
    msg = error_of(write_folder(tmp_path, GOOD, features={"image": arr}))
    assert f"image_feat.npy has dtype int64 with values up to |v| = {abs(big)} (first in row 2," in msg
    assert "2**24 = 16777216" in msg and "astype(numpy.float32)" in msg


def test_object_features_are_unreadable(tmp_path):
    np.save(tmp_path / "image_feat.npy", np.array([[1, "x"]] * 3, dtype=object), allow_pickle=True)
    msg = error_of(write_folder(tmp_path, GOOD))
    assert "image_feat.npy is not a readable numeric .npy matrix" in msg


def test_one_dimensional_features(tmp_path):
    msg = error_of(write_folder(tmp_path, GOOD, features={"image": np.ones(3, np.float32)}))
    assert "image_feat.npy has shape (3,)" in msg


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "e.inter").write_text("")
    assert "e.inter is empty" in error_of(tmp_path)
    (tmp_path / "e.inter").write_text(HEADER)
    assert "e.inter has a header but no interactions" in error_of(tmp_path)


def test_exactly_one_inter_file(tmp_path):
    assert "exactly one <name>.inter file (found: none)" in error_of(tmp_path)
    write_folder(tmp_path, GOOD)
    (tmp_path / "other.inter").write_text(HEADER + GOOD[0] + "\n")
    assert "found: bad.inter, other.inter" in error_of(tmp_path)


def test_store_reader_names_the_parquet_row(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    path = tmp_path / "s" / "interactions.parquet"
    table = pq.read_table(path)
    items = table.column("item_id").to_numpy().copy()
    items[41] = 500
    pq.write_table(table.set_column(1, "item_id", [items]), path)
    with pytest.raises(DataError, match=r"interactions\.parquet row 42: item_id 500 is outside 0\.\.119"):
        read_store(tmp_path / "s")


def test_store_missing_feature_file(tiny_data, tmp_path):
    write_store(tiny_data, tmp_path / "s")
    (tmp_path / "s" / "item_features" / "image.npy").unlink()
    with pytest.raises(DataError, match=r"image\.npy is missing \(META.json lists modality 'image'\)"):
        read_store(tmp_path / "s")


def test_writer_validates_in_memory_data(tiny_data, tmp_path):
    dup = replace(
        tiny_data,
        users=np.r_[tiny_data.users, tiny_data.users[:1]],
        items=np.r_[tiny_data.items, tiny_data.items[:1]],
        labels=np.r_[tiny_data.labels, np.int8(0)],
    )
    n = tiny_data.n_interactions
    with pytest.raises(DataError, match=f"duplicate pair .* at row 1 and row {n + 1}"):
        write_store(dup, tmp_path / "s")
    bad = dict(tiny_data.features)
    bad["image"] = bad["image"].copy()
    bad["image"][9, 0] = np.nan
    with pytest.raises(DataError, match=r"features 'image' row 9 \(item 9\) has NaN/inf"):
        write_store(tiny_data.with_features(bad), tmp_path / "s2")
    assert not (tmp_path / "s2" / "META.json").exists()
