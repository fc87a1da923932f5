"""Deletion requests: the request table, its files, and its resolution into a forget set.

A request table has columns ``request_id`` (str, unique), ``user_id`` (int), ``item_id``
(nullable int; null = every interaction of the user, in every split) and ``reason``
(str). :func:`resolve_requests` maps it onto a dataset's interaction rows and returns a
:class:`ForgetSet` D_f; the retained set is ``data.without_pairs(f.users, f.items)``.

Unknown ids, pairs that are not interactions, duplicate request ids and requests that
overlap (two requests deleting the same pair) are errors naming the request ids: a
request must mean exactly one thing. Re-applying a request already executed is the
deletion ledger's concern, not this module's.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tru_dist.data.dataset import TRAIN, PendingDataset, RecDataset
from tru_dist.data.schema import REQUEST_COLUMNS, REQUESTS_SCHEMA, X_LABEL_NAMES
from tru_dist.errors import RequestError
from tru_dist.io_utils import atomic_write, not_utf8, why_not_found

#: ids at or beyond this magnitude do not fit int64 (2**63, exact as a float64)
_INT64_LIMIT = float(2**63)
_FORMAT_HINT = "a request table has columns request_id, user_id, item_id (empty = all of the user's), reason"


@dataclass(frozen=True)
class ForgetSet:
    """Every deleted interaction row D_f of one request batch.

    Attributes:
        users, items: int64 global ids of every deleted interaction, any split.
        labels: int8 split label of each deleted row.
        removed_users: int64 users left with no train interaction after the deletion
            (Retrain never sees them; their ID rows are reset before a reverse update).
        request_ids: the ids of the requests resolved, in table order.
        regime: how the requests were chosen (``custom`` for a user-supplied table).
    """

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    removed_users: np.ndarray
    request_ids: list[str]
    regime: str = "custom"

    @property
    def train_users(self) -> np.ndarray:
        return self.users[self.labels == TRAIN]

    @property
    def train_items(self) -> np.ndarray:
        return self.items[self.labels == TRAIN]

    def __len__(self) -> int:
        """Number of deleted TRAIN pairs (the pairs a reverse update acts on)."""
        return int((self.labels == TRAIN).sum())

    def summary(self) -> dict:
        return {
            "regime": self.regime,
            "n_requests": len(self.request_ids),
            "n_deleted": int(len(self.users)),
            **{f"n_deleted_{name}": int((self.labels == lab).sum()) for lab, name in X_LABEL_NAMES.items()},
            "n_users_touched": int(len(np.unique(self.users))),
            "n_items_touched": int(len(np.unique(self.items))),
            "n_removed_users": int(len(self.removed_users)),
        }


def _first_few(ids: list | np.ndarray, k: int = 5) -> str:
    ids = [str(x) for x in ids]
    more = f" (+{len(ids) - k} more)" if len(ids) > k else ""
    return ", ".join(ids[:k]) + more


def _boolean_cells(raw: pd.Series) -> np.ndarray:
    """Which cells of an id column are booleans (``True``/``False``, as pandas reads a CSV cell
    ``True``/``false``/``TRUE``, or a bool in a DataFrame or Parquet column).

    ``pd.to_numeric`` reads them as 1/0, so without this check a cell ``False`` deleted user 0's
    whole history; a boolean is not an id, so it is refused like any other non-integer cell."""
    if pd.api.types.is_bool_dtype(raw.dtype):  # numpy bool or pandas "boolean" (nulls stay nulls)
        return raw.notna().to_numpy(dtype=bool)
    if raw.dtype == object:  # mixed cells (e.g. [3, True]): look at each one
        return raw.map(lambda x: isinstance(x, bool | np.bool_)).to_numpy(dtype=bool)
    return np.zeros(len(raw), dtype=bool)


def normalize_requests(df: pd.DataFrame, source: str = "request table") -> pd.DataFrame:
    """Check columns and types; returns a copy with dtypes str / int64 / Int64 / str. A column
    other than :data:`REQUEST_COLUMNS` is an error, not dropped."""
    missing = [c for c in REQUEST_COLUMNS if c not in df.columns and c != "reason"]
    if missing:
        raise RequestError(f"{source} is missing column(s) {', '.join(missing)}; {_FORMAT_HINT}")
    named_index = [str(n) for n in df.index.names if n is not None]
    if named_index:  # a parquet written with df.set_index("ticket"): the column came back as the index
        raise RequestError(f"{source} has an index named {', '.join(repr(n) for n in named_index)}, which a "
                           "request does not have (dropping it would lose what it says); reset_index() it "
                           f"into a column and drop or rename that ({_FORMAT_HINT})")
    unknown = [str(c) for c in df.columns if c not in REQUEST_COLUMNS]
    if unknown:  # dropping them silently would lose what they say (a misspelt "reason", say)
        index_hint = " (an unnamed index column: write the CSV with index=False)" if any(
            c.startswith("Unnamed:") for c in unknown) else ""
        raise RequestError(f"{source} has column(s) {', '.join(repr(c) for c in unknown)} that a request "
                           f"does not have{index_hint}; drop or rename them ({_FORMAT_HINT})")
    if len(df) == 0:
        raise RequestError(f"{source} holds no requests; add at least one row ({_FORMAT_HINT})")
    out = pd.DataFrame(index=range(len(df)))
    rid = df["request_id"].reset_index(drop=True)
    bad = rid.isna() | (rid.astype(str).str.strip() == "")
    if bad.any():
        k = int(np.flatnonzero(bad.to_numpy())[0])
        raise RequestError(f"{source} row {k + 1}: request_id is empty; give every request a unique id")
    text = rid.astype(str)
    padded = text != text.str.strip()
    if padded.any():  # `r1` and `r1 ` were two requests, and a replay with padding a new one
        k = int(np.flatnonzero(padded.to_numpy())[0])
        raise RequestError(f"{source} row {k + 1}: request_id {text.iloc[k]!r} has spaces around it; ids are "
                           "compared as written, so remove them")
    out["request_id"] = text.to_numpy(dtype=object)
    for col, nullable in (("user_id", False), ("item_id", True)):
        raw = df[col].reset_index(drop=True)
        boolean = _boolean_cells(raw)
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        missing_val = pd.isna(raw).to_numpy()
        with np.errstate(invalid="ignore"):
            # beyond int64 (e.g. 1e20) the cast below wrapped to another id, with RuntimeWarnings
            too_big = np.abs(num) >= _INT64_LIMIT
            not_int = ~np.isfinite(num) | (num != np.floor(num)) | too_big | boolean
            bad = (~missing_val & not_int) | (missing_val & (not nullable))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            value = raw.iloc[k]
            if isinstance(value, np.generic):  # shown as its plain value: 0.5, not np.float64(0.5)
                value = value.item()
            if boolean[k]:  # shown as the cell reads in a CSV: 'False', not a bare False
                value = str(value)
            what = "empty" if missing_val[k] else repr(value)
            why = "too large for an id (ids are int64)" if too_big[k] and not missing_val[k] \
                else "not an integer id"
            raise RequestError(
                f"{source}: request {out['request_id'][k]} has {col} {what}, {why}; fix that row"
            )
        vals = np.where(missing_val, 0, num).astype(np.int64)
        out[col] = pd.arrays.IntegerArray(vals, missing_val.copy()) if nullable else vals
    reason = df["reason"].reset_index(drop=True) if "reason" in df.columns else pd.Series([""] * len(df))
    out["reason"] = reason.fillna("").astype(str).to_numpy(dtype=object)
    return out


def _refuse_extra_fields(path: Path, content: bytes) -> None:
    """A RequestError when the first row has more fields than the header: pandas then takes the
    first column as an index and shifts the rest (``r1,2,4,x,extra`` under a four-column header
    became request 2 with item_id 'x'). Later rows with extra fields are pandas' own error."""
    import csv

    with io.TextIOWrapper(io.BytesIO(content), encoding="utf-8", errors="replace", newline="") as fh:
        head = [fh.readline(), fh.readline()]
    try:
        rows = list(csv.reader(io.StringIO("".join(head), newline="")))
    except csv.Error:  # e.g. CR-only line endings: pandas reads those; leave the file to it
        return
    if len(rows) == 2 and len(rows[1]) > len(rows[0]):
        raise RequestError(f"request file {path} line 2 has {len(rows[1])} fields, the header "
                           f"{len(rows[0])} (a trailing comma, or an unquoted comma in a reason?); quote or "
                           f"remove it ({_FORMAT_HINT})")


def read_requests(path: str | Path) -> pd.DataFrame:
    """Read a request table from ``.parquet`` or ``.csv`` (normalised, see :func:`normalize_requests`)."""
    return read_requests_with_digest(path)[0]


def read_requests_with_digest(path: str | Path) -> tuple[pd.DataFrame, str]:
    """:func:`read_requests` and the SHA-256 of the very bytes it parsed (the file is read once),
    so a reader can tell whether another read saw the same file (``tru-dist unlearn``: the driver
    and every rank)."""
    path = Path(path)
    if path.is_dir():
        raise RequestError(f"request file {path} is a folder; pass a .csv or .parquet file ({_FORMAT_HINT})")
    if not path.is_file():
        raise RequestError(f"request file {path} {why_not_found(path)}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise RequestError(f"request file {path} must end in .parquet or .csv")
    try:
        content = path.read_bytes()
        if suffix == ".parquet":
            df = pq.read_table(io.BytesIO(content)).to_pandas()
        else:
            _refuse_extra_fields(path, content)
            df = pd.read_csv(io.BytesIO(content), dtype={"request_id": str, "reason": str},
                             keep_default_na=False, na_values={"user_id": [""], "item_id": [""]})
    except UnicodeDecodeError as exc:  # a binary file, or a CSV saved as UTF-16
        raise RequestError(f"request file {path} is {not_utf8(exc, file_offset=False)}; save the CSV as "
                           f"UTF-8 ({_FORMAT_HINT})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RequestError(f"request file {path} cannot be read ({reason})") from None
    return normalize_requests(df, str(path)), hashlib.sha256(content).hexdigest()


def write_requests(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a request table atomically as ``.parquet`` (REQUESTS_SCHEMA) or ``.csv``."""
    path = Path(path)
    df = normalize_requests(df, "request table")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pa.Table.from_pandas(df, schema=REQUESTS_SCHEMA, preserve_index=False)
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    if suffix == ".csv":
        return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    raise RequestError(f"request file {path} must end in .parquet or .csv")


def resolve_requests(data: RecDataset | PendingDataset, df: pd.DataFrame,
                     regime: str = "custom") -> ForgetSet:
    """Map a request table onto ``data``'s interaction rows (a pending dataset — the state after
    earlier deletions — is read without being copied out).

    A request with an item deletes that (user, item) row; one without deletes all the
    user's rows. Errors (one line, naming request ids): unknown user/item id, a pair that
    is not an interaction, a user with nothing left to delete, duplicate request_id, two
    requests covering the same pair, an empty table, missing columns.
    """
    req = normalize_requests(df)
    rid = req["request_id"].to_numpy(dtype=object)
    dup_ids = pd.Series(rid).duplicated(keep=False).to_numpy()
    if dup_ids.any():
        raise RequestError(
            f"duplicate request_id(s) {_first_few(pd.unique(rid[dup_ids]))}; give every request a unique id"
        )
    users = req["user_id"].to_numpy(dtype=np.int64)
    has_item = req["item_id"].notna().to_numpy()
    items = req["item_id"].fillna(-1).to_numpy(dtype=np.int64)

    bad = (users < 0) | (users >= data.n_users)
    if bad.any():
        raise RequestError(
            f"request(s) {_first_few(rid[bad])} name unknown user id(s) {_first_few(users[bad])}"
            f" (valid: 0..{data.n_users - 1}); fix or drop those requests"
        )
    bad = has_item & ((items < 0) | (items >= data.n_items))
    if bad.any():
        raise RequestError(
            f"request(s) {_first_few(rid[bad])} name unknown item id(s) {_first_few(items[bad])}"
            f" (valid: 0..{data.n_items - 1}); fix or drop those requests"
        )

    # Rows covered by each request, found through the rows of the users they name (the data's
    # user index): O(those users' rows), no pass over the table.
    pair_req = np.flatnonzero(has_item)
    candidates = data.rows_of_users(users[pair_req]) if len(pair_req) else np.zeros(0, dtype=np.int64)
    cand_users, cand_items, _ = data.take(candidates)
    keys = data.pair_keys(cand_users, cand_items)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    want = data.pair_keys(users[pair_req], items[pair_req])
    pos = np.searchsorted(sorted_keys, want)
    found = pos < len(sorted_keys)
    found[found] = sorted_keys[pos[found]] == want[found]
    if not np.all(found):
        miss = pair_req[~found]
        raise RequestError(
            f"request(s) {_first_few(rid[miss])} name (user, item) pairs that are not interactions, e.g."
            f" ({users[miss[0]]}, {items[miss[0]]}); fix or drop those requests"
        )
    row_of_pair = candidates[order[pos]].astype(np.int64)

    user_req = np.flatnonzero(~has_item)
    twice = pd.Series(users[user_req]).duplicated(keep=False).to_numpy()
    if twice.any():
        raise RequestError(
            f"requests {_first_few(rid[user_req[twice]])} each delete all interactions of the same user;"
            " keep one request per pair"
        )
    by_user = np.argsort(users[user_req], kind="stable")
    named = users[user_req][by_user]
    user_rows = data.rows_of_users(named) if len(user_req) else np.zeros(0, dtype=np.int64)
    row_users = data.take(user_rows)[0]
    user_rows_req = user_req[by_user[np.searchsorted(named, row_users)]] if len(user_rows) else user_rows
    empty = np.setdiff1d(user_req, user_rows_req)
    if len(empty):
        raise RequestError(
            f"request(s) {_first_few(rid[empty])} delete users with no interactions left"
            f" (user {users[empty[0]]}); drop those requests"
        )

    rows = np.concatenate([row_of_pair, user_rows])
    owners = np.concatenate([pair_req, user_rows_req])
    dup_rows = pd.Series(rows).duplicated(keep=False).to_numpy()
    if dup_rows.any():
        r = rows[dup_rows]
        first = r[0]
        involved = owners[dup_rows][r == first]
        fu, fi, _ = data.take(np.array([first]))
        n = len(np.unique(r))
        raise RequestError(
            f"requests {_first_few(rid[np.sort(involved)])} all delete (user {fu[0]},"
            f" item {fi[0]}) ({n} overlapping pair{'' if n == 1 else 's'}); keep one request per pair"
        )

    rows = np.sort(rows)
    f_users, f_items, f_labels = data.take(rows)
    # users left with no train row: count the touched users' train rows, minus the deleted ones
    touched = np.unique(f_users)
    t_users, _, t_labels = data.take(data.rows_of_users(touched))
    n_train = np.bincount(np.searchsorted(touched, t_users[t_labels == TRAIN]), minlength=len(touched))
    n_gone = np.bincount(np.searchsorted(touched, f_users[f_labels == TRAIN]), minlength=len(touched))
    removed = touched[n_train - n_gone == 0]
    return ForgetSet(
        users=f_users.astype(np.int64),
        items=f_items.astype(np.int64),
        labels=np.asarray(f_labels, dtype=np.int8),
        removed_users=removed.astype(np.int64),
        request_ids=[str(x) for x in rid],
        regime=regime,
    )
