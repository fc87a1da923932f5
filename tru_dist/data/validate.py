"""Validation of interaction tables and feature matrices, with one-line errors.

Each check raises :class:`~tru_dist.errors.DataError` whose message names the file, the
row and the fix. A *locator* turns a 0-based row index into the position a user can find
in the file: :func:`tsv_line` (1-based line number of a TSV with a header line) or
:func:`table_row` (1-based row of a Parquet table). Checks are vectorised and work on
memory-mapped feature matrices chunk by chunk, so validating never materialises a wide
matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.schema import X_LABEL_NAMES
from tru_dist.errors import DataError

Locator = Callable[[int], str]

#: elements per chunk when scanning a feature matrix (~16 MiB of float32)
CHUNK_ELEMENTS = 1 << 22


def tsv_line(row: int) -> str:
    """Row index -> "line N" of a TSV whose line 1 is the header."""
    return f"line {int(row) + 2}"


def table_row(row: int) -> str:
    """Row index -> "row N" (1-based) of a table without line structure (Parquet)."""
    return f"row {int(row) + 1}"


def require_nonempty(n_rows: int, source: str, what: str = "interactions") -> None:
    if n_rows == 0:
        raise DataError(f"{source} has a header but no {what}; add at least one data row")


def require_columns(found: Sequence[str], required: Sequence[str], source: str, hint: str) -> None:
    """Every ``required`` column present (extra columns are fine)."""
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(
            f"{source} is missing column(s) {', '.join(missing)}"
            f" (found: {', '.join(map(str, found)) or 'none'}); {hint}"
        )


def _show(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "empty"
    return repr(value)


def numeric_column(values: pd.Series | np.ndarray, column: str, source: str, where: Locator) -> np.ndarray:
    """The column as float64; a missing or non-numeric cell is an error naming its row."""
    series = pd.Series(values)
    num = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy())
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{source} {where(k)}: {column} is {_show(series.iloc[k])}, not a number; fix or delete that row"
        )
    return num.to_numpy(dtype=np.float64)


#: what an id column holds, said after the value that is not one
ID_HINT = "ids must be integers 0..n-1"


def integer_column(values: pd.Series | np.ndarray, column: str, source: str, where: Locator,
                   hint: str = ID_HINT) -> np.ndarray:
    """The column as int64; non-integer, missing or negative values are errors naming the row
    and ending in ``hint`` (what the column holds: an id by default, ``x_label``'s 0/1/2)."""
    noun = "an integer id" if hint == ID_HINT else "an integer"
    series = pd.Series(values)
    if pd.api.types.is_integer_dtype(series.dtype) and isinstance(series.dtype, np.dtype):
        out = series.to_numpy(dtype=np.int64)
    else:
        num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(num) | (num != np.floor(num)))
        if len(bad):
            k = int(bad[0])
            raise DataError(
                f"{source} {where(k)}: {column} is {_show(series.iloc[k])}, not {noun}; {hint}"
            )
        out = num.astype(np.int64)
    neg = np.flatnonzero(out < 0)
    if len(neg):
        k = int(neg[0])
        raise DataError(f"{source} {where(k)}: {column} is {out[k]} (negative); {hint}")
    return out


#: what a split label holds
LABEL_HINT = "use 0 (train), 1 (valid) or 2 (test)"


def check_labels(labels: np.ndarray, source: str, where: Locator, column: str = "x_label") -> np.ndarray:
    """Split labels as int8; anything but 0/1/2 is an error naming the row."""
    labels = np.asarray(labels)
    bad = np.flatnonzero(~np.isin(labels, list(X_LABEL_NAMES)))
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{source} {where(k)}: unknown {column} {labels[k]}; {LABEL_HINT}"
        )
    return labels.astype(np.int8)


def check_dense(ids: np.ndarray, column: str, source: str) -> int:
    """Ids must be exactly 0..n-1; returns n. Reports the first id in that range that never occurs."""
    uniq = np.unique(ids)
    n = int(uniq[-1]) + 1
    if len(uniq) != n:
        first_missing = int(np.flatnonzero(uniq != np.arange(len(uniq)))[0])
        raise DataError(
            f"{source}: {column} values must be dense 0..{n - 1} but {column} {first_missing} never occurs;"
            " re-number the ids densely (e.g. pandas.factorize) before importing"
        )
    return n


def check_in_range(ids: np.ndarray, n: int, column: str, source: str, where: Locator) -> None:
    """Every id in [0, n) (used where n comes from metadata rather than the ids themselves)."""
    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{source} {where(k)}: {column} {ids[k]} is outside 0..{n - 1};"
            " the file does not match its metadata — re-import the dataset"
        )


def check_unique_pairs(users: np.ndarray, items: np.ndarray, source: str, where: Locator) -> None:
    """No (user, item) pair twice; reports both rows of the earliest repeat."""
    if len(users) < 2:
        return
    n_items = int(items.max()) + 1
    keys = users.astype(np.int64) * n_items + items.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    rep = np.flatnonzero(sk[1:] == sk[:-1])
    if len(rep):
        later = order[rep + 1]
        j = int(np.argmin(later))
        first, second = int(order[rep[j]]), int(later[j])
        raise DataError(
            f"{source}: duplicate pair (user {users[second]}, item {items[second]}) at {where(first)} and"
            f" {where(second)}; keep one row per (user, item) pair"
        )


def check_train_coverage(
    users: np.ndarray, labels: np.ndarray, n_users: int, source: str, where: Locator
) -> None:
    """Every user has at least one train (x_label 0) interaction."""
    train = np.bincount(users[labels == 0], minlength=n_users)
    lacking = np.flatnonzero(train == 0)
    if len(lacking):
        u = int(lacking[0])
        rows = np.flatnonzero(users == u)
        where_txt = f" (first row at {where(int(rows[0]))})" if len(rows) else ""
        raise DataError(
            f"{source}: user {u} has no train interaction{where_txt}"
            f" ({len(lacking)} such users); give each user at least one x_label=0 row or drop the user"
        )


def dataset_source(data: RecDataset) -> str:
    """How a message names ``data``: its folder when read from one, else its name. A store's
    own folder (``meta["store"]``) comes first: its ``meta["path"]`` is kept from the MMRec
    folder it was imported from, and a store written by the scale generator has none (messages
    named "dataset 'synthetic-scale'" for every such store)."""
    path = data.meta.get("store") or data.meta.get("path")
    return str(path) if path else f"dataset '{data.meta.get('name', 'dataset')}'"


def require_train_rows(data: RecDataset) -> None:
    """A dataset to train on holds at least one train (x_label 0) row.

    Checked where training starts, not where data is read: a dataset without train rows is
    valid to read, store or purge (e.g. in-memory test data), but training on it would take no
    step, report loss 0 and checkpoint the initial parameters as if it had learned."""
    if data.split_counts[TRAIN] == 0:
        raise DataError(
            f"{dataset_source(data)} has no train interaction (x_label 0) among its {data.n_interactions} "
            "rows, so there is nothing to train on; label most of each user's rows x_label=0 "
            "(1 = valid, 2 = test)"
        )


def check_feature_matrix(arr: np.ndarray, n_items: int, source: str) -> np.ndarray:
    """A float (n_items, dim) matrix with finite values, returned as float32.

    A float32 input (e.g. a read-only memmap) is returned as is, without a copy; other
    float widths, and integers float32 holds exactly (:func:`check_exact_in_float32`), are
    converted (that is the only place a copy is made).
    """
    if np.issubdtype(arr.dtype, np.integer):
        if arr.ndim == 2:  # other shapes: the shape error below
            check_exact_in_float32(arr, source)
    elif not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"{source} has dtype {arr.dtype}; item features must be floats or integers — save them with"
            " numpy.save(path, features.astype(numpy.float32))"
        )
    if arr.ndim != 2:
        raise DataError(f"{source} has shape {arr.shape}; item features must be a 2-D (n_items, dim) matrix")
    if arr.shape[1] == 0:  # accepted before, then training crashed on the empty matrix (knn hash)
        raise DataError(f"{source} has shape {arr.shape}: no feature columns; save at least one column per "
                        "item, or remove the file to use the data without that modality")
    if arr.shape[0] != n_items:
        raise DataError(
            f"{source} has {arr.shape[0]} rows but the interactions have {n_items} items;"
            " row i must hold item i's features (one row per item id 0..n_items-1)"
        )
    check_finite_rows(arr, source)
    if arr.dtype != np.float32:
        with np.errstate(over="ignore"):
            cast = arr.astype(np.float32)
        check_fits_float32(arr, cast, source)  # float64 values beyond float32's range overflow to inf
        arr = cast
    return arr


#: integers up to this magnitude are exact in float32 (its 24-bit significand)
FLOAT32_EXACT_INT = 2**24


def check_exact_in_float32(arr: np.ndarray, source: str) -> None:
    """Integer features (e.g. counts or one-hot columns saved as int64) are used as float32,
    which is exact only up to |v| <= 2**24; beyond that the cast would change values silently,
    so it is a one-line error naming the first such row and the largest |value|."""
    step = max(1, CHUNK_ELEMENTS // max(1, arr.shape[1]))
    for lo in range(0, arr.shape[0], step):
        chunk = np.asarray(arr[lo : lo + step])
        big = (chunk > FLOAT32_EXACT_INT).any(axis=1)
        if np.issubdtype(chunk.dtype, np.signedinteger):
            big |= (chunk < -FLOAT32_EXACT_INT).any(axis=1)
        if big.any():
            row = lo + int(np.argmax(big))
            peak = max(abs(int(arr.min())), abs(int(arr.max())))
            raise DataError(
                f"{source} has dtype {arr.dtype} with values up to |v| = {peak} (first in row {row},"
                f" item {row}), beyond 2**24 = {FLOAT32_EXACT_INT}, where float32 (what features are used as)"
                " stops being exact; rescale them, or if rounding is acceptable save them as floats yourself"
                " (numpy.save(path, features.astype(numpy.float32)))"
            )


def check_fits_float32(arr: np.ndarray, cast: np.ndarray, source: str) -> None:
    """Finite ``arr`` whose float32 ``cast`` overflowed (|value| beyond ~3.4e38) is named as
    such — not as NaN/inf, which the file does not hold — with the first such row and the
    largest |value|, so the user knows to rescale rather than to look for missing values."""
    step = max(1, CHUNK_ELEMENTS // max(1, cast.shape[1]))
    for lo in range(0, cast.shape[0], step):
        ok = np.isfinite(cast[lo : lo + step]).all(axis=1)
        if not ok.all():
            row = lo + int(np.argmin(ok))
            peak = max(float(np.abs(np.asarray(arr[i : i + step], dtype=np.float64)).max())
                       for i in range(0, arr.shape[0], step))
            raise DataError(
                f"{source} row {row} (item {row}) has values beyond float32's range (max |value| {peak:.3g},"
                f" float32 holds up to {float(np.finfo(np.float32).max):.3g}); features are used as float32:"
                " rescale them (e.g. normalise each row) and save them again"
            )


def check_finite_rows(arr: np.ndarray, source: str, row_offset: int = 0) -> None:
    """No NaN/inf anywhere; scans in chunks and names the first bad row (= item id)."""
    if arr.size == 0:
        return
    step = max(1, CHUNK_ELEMENTS // max(1, arr.shape[1]))
    for lo in range(0, arr.shape[0], step):
        ok = np.isfinite(np.asarray(arr[lo : lo + step])).all(axis=1)
        if not ok.all():
            row = row_offset + lo + int(np.argmin(ok))
            raise DataError(
                f"{source} row {row} (item {row}) has NaN/inf values;"
                " re-extract or impute that item's features"
            )


def validate_dataset(data: RecDataset, source: str = "dataset") -> None:
    """In-memory invariants a writer relies on: ids in range, known labels, unique pairs,
    feature matrices of shape (n_items, dim), float32 and finite."""
    where = table_row
    users = np.asarray(data.users)
    items = np.asarray(data.items)
    if not (np.issubdtype(users.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)):
        raise DataError(f"{source}: user/item ids must be integer arrays (got {users.dtype}, {items.dtype})")
    check_in_range(users, data.n_users, "user_id", source, where)
    check_in_range(items, data.n_items, "item_id", source, where)
    check_labels(data.labels, source, where)
    check_unique_pairs(users, items, source, where)
    for name, feats in sorted(data.features.items()):
        check_feature_matrix(np.asarray(feats), data.n_items, f"{source} features '{name}'")
