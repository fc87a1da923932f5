"""Reader and writer for the MMRec folder layout (the input format of the shared data).

A folder holds exactly one ``<name>.inter`` TSV with header
``userID itemID rating timestamp x_label`` (extra columns are ignored) and any number of
``<modality>_feat.npy`` matrices whose row *i* belongs to item *i* (every such file is a
modality, not only ``image``/``text``).

Reading validates everything (see :mod:`tru_dist.data.validate`), then orders the rows by
(user, timestamp) with a stable sort, so a file already in that order keeps its file
order and the per-user order is chronological for every consumer. ``n_users`` /
``n_items`` are max id + 1 of the ``.inter`` file, whose ids must be dense; feature rows
must equal ``n_items``. Feature files are memory-mapped (``mmap_mode="r"``) and only
converted (copied) when they are not float32 already.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from tru_dist.data import validate as v
from tru_dist.data.dataset import RecDataset
from tru_dist.data.schema import FEATURE_SUFFIX, MMREC_COLUMNS, sequence_positions
from tru_dist.errors import DataError
from tru_dist.io_utils import atomic_write, atomic_write_text, not_utf8

_HINT = "an MMRec .inter file is tab-separated with header userID itemID rating timestamp x_label"


def find_inter_file(folder: Path) -> Path:
    """The folder's single ``*.inter`` file (zero or several is an error)."""
    found = sorted(folder.glob("*.inter"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(
            f"{folder} must hold exactly one <name>.inter file (found: {names}); "
            "move the others out or point at the right folder"
        )
    return found[0]


def feature_files(folder: Path) -> dict[str, Path]:
    """``{modality: path}`` for every ``<modality>_feat.npy`` in the folder.

    A file named just ``_feat.npy`` is a DataError: its modality would be ``''``, which the
    store writes as ``item_features/.npy`` and then cannot read back."""
    found = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(folder.glob(f"*{FEATURE_SUFFIX}"))}
    if "" in found:
        raise DataError(
            f"{found['']} has no modality name; a modality needs one: rename it <modality>{FEATURE_SUFFIX}"
            f" (e.g. image{FEATURE_SUFFIX}) or move it out of {folder}"
        )
    return found


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # what numpy.savez writes: np.load returns an archive, not an array
_SAVE_HINT = "save features with numpy.save(path, features.astype(numpy.float32))"


def _check_npy_header(path: Path) -> None:
    """A DataError unless ``path`` starts like a .npy file (an empty file is left to np.load).

    np.load hands anything else to its pickle branch: an ``.npz`` archive came back as an
    ``NpzFile`` (later an AttributeError on ``.dtype``), and a text file got numpy's advice to
    load it with ``allow_pickle`` — unsafe, and wrong for a file that is not a pickle."""
    with open(path, "rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        raise DataError(f"{path} is an .npz archive, not a .npy array; {_SAVE_HINT}")
    if head and head != _NPY_MAGIC:
        raise DataError(f"{path} is not a .npy array (it does not start with the .npy header: text,"
                        f" a pickle or another format); {_SAVE_HINT}")


def load_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file read-only; an unreadable file is a one-line DataError."""
    try:
        _check_npy_header(path)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable numeric .npy matrix ({str(exc).splitlines()[0]}); {_SAVE_HINT}"
        ) from None


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse and validate a ``.inter`` TSV; returns (users, items, ratings, timestamps, labels)
    in file order, all checks reported with the file's 1-based line numbers."""
    src = str(path)
    if path.is_dir():  # a folder named <name>.inter: read_csv raised a raw IsADirectoryError
        raise DataError(f"{src} is a folder, not a file; {_HINT}")
    if path.stat().st_size == 0:
        raise DataError(f"{src} is empty; {_HINT}")
    with path.open(encoding="utf-8", errors="replace") as fh:  # pandas renames a repeat `userID.1`
        header = fh.readline().rstrip("\r\n").split("\t")
        first = fh.readline().rstrip("\r\n")
    if first and len(first.split("\t")) > len(header):
        # pandas took the extra field as an implicit index and shifted every column of every row
        raise DataError(f"{src} line 2 has {len(first.split(chr(9)))} tab-separated fields, the header "
                        f"{len(header)} (a trailing tab?); give each row the header's fields; {_HINT}")
    repeated = sorted({c for c in header if header.count(c) > 1 and c})
    if repeated:
        raise DataError(f"{src}: the header names column(s) {', '.join(repeated)} more than once (line 1); "
                        f"keep one of each; {_HINT}")
    try:
        # only an empty cell is missing: a literal 'nan' or 'NA' is a value to name, not "empty"
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, skip_blank_lines=False, engine="c",
                         keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as exc:  # a binary file, or one saved as UTF-16
        raise DataError(f"{src} is {not_utf8(exc, file_offset=False)}; save it as UTF-8 ({_HINT})") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{src}: {str(exc).strip().splitlines()[-1]}; {_HINT}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{src} is empty; {_HINT}") from None
    v.require_columns(list(df.columns), MMREC_COLUMNS, src, _HINT)
    v.require_nonempty(len(df), src)
    where = v.tsv_line
    users = v.integer_column(df["userID"], "userID", src, where)
    items = v.integer_column(df["itemID"], "itemID", src, where)
    ratings = v.numeric_column(df["rating"], "rating", src, where)
    timestamps = v.numeric_column(df["timestamp"], "timestamp", src, where)
    labels = v.check_labels(v.integer_column(df["x_label"], "x_label", src, where, v.LABEL_HINT), src, where)
    return users, items, ratings, timestamps, labels


def read_mmrec(folder: str | Path, *, require_train: bool = False) -> RecDataset:
    """Read and validate an MMRec folder into a :class:`RecDataset`.

    Users with no train (``x_label`` 0) interaction are cold-start users: the shared
    Amazon-Scientific data has two (users 261 and 2757), so by default they are accepted
    and listed in ``meta["users_without_train"]``; ``require_train=True`` makes them a
    DataError naming the first such user's line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the folder that holds <name>.inter and *_feat.npy")
    inter = find_inter_file(folder)
    users, items, _ratings, timestamps, labels = read_inter(inter)
    src = str(inter)
    n_users = v.check_dense(users, "userID", src)
    n_items = v.check_dense(items, "itemID", src)
    v.check_unique_pairs(users, items, src, v.tsv_line)
    if require_train:
        v.check_train_coverage(users, labels, n_users, src, v.tsv_line)
    cold = np.flatnonzero(np.bincount(users[labels == 0], minlength=n_users) == 0)

    features = {}
    for name, path in feature_files(folder).items():
        features[name] = v.check_feature_matrix(load_npy(path), n_items, str(path))

    order = np.lexsort((timestamps, users))  # stable: file order within equal (user, timestamp)
    if np.all(order[1:] > order[:-1]):
        order = None  # already sorted: keep the arrays as parsed
    if order is not None:
        users, items, labels = users[order], items[order], labels[order]
    meta = {"name": inter.stem, "source": "mmrec", "path": str(folder.resolve()), "split_seed": None,
            "users_without_train": [int(u) for u in cold]}
    return RecDataset(n_users, n_items, users, items, labels, features, meta)


def _dense_or_error(ids: np.ndarray, n: int, what: str) -> None:
    present = np.bincount(ids, minlength=n) > 0
    if not present.all():
        missing = int(np.argmin(present))
        raise DataError(
            f"cannot write MMRec: {what} {missing} has no interaction, and MMRec infers ids from"
            " the .inter file; write a tru-dist store instead (it keeps n_users/n_items in META.json)"
        )


def write_mmrec(data: RecDataset, folder: str | Path, name: str | None = None) -> Path:
    """Write ``<name>.inter`` and one ``<modality>_feat.npy`` per modality, each atomically.

    ``rating`` is 1.0 and ``timestamp`` the position in the user's sequence (the dataset
    carries order, not raw times), so ``read_mmrec`` returns the same arrays when the
    rows are grouped by user in ascending order (as every reader produces them).
    Returns the path of the ``.inter`` file.
    """
    folder = Path(folder)
    name = name or str(data.meta.get("name") or "dataset")
    v.validate_dataset(data, source=f"dataset '{name}'")
    _dense_or_error(np.asarray(data.users), data.n_users, "user")
    _dense_or_error(np.asarray(data.items), data.n_items, "item")
    folder.mkdir(parents=True, exist_ok=True)
    stale = [p for p in folder.glob("*.inter") if p.name != f"{name}.inter"]
    if stale:
        raise DataError(
            f"{folder} already holds {stale[0].name}; write into an empty folder"
            " (a folder holds one .inter file)"
        )
    ts = sequence_positions(data.users)
    lines = ["\t".join(MMREC_COLUMNS)]
    body = pd.DataFrame(
        {"u": data.users, "i": data.items, "r": "1.0", "t": ts, "x": data.labels.astype(np.int64)}
    ).to_csv(sep="\t", header=False, index=False, lineterminator="\n")
    inter = folder / f"{name}.inter"
    atomic_write_text(inter, "\n".join(lines) + "\n" + body)
    for modality, feats in sorted(data.features.items()):
        save_npy(folder / f"{modality}{FEATURE_SUFFIX}", np.asarray(feats, dtype=np.float32))
    return inter


def save_npy(path: Path, arr: np.ndarray) -> Path:
    """``numpy.save`` through a temp file + rename (np.save on a path would append '.npy')."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    return atomic_write(path, _w)
