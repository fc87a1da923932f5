"""The tru-dist store: a folder of Parquet + memory-mappable .npy + ``META.json``.

Layout::

    interactions.parquet        INTERACTIONS_SCHEMA, one row per (user, item) pair
    item_features/<m>.npy       float32 (n_items, dim), row i = item i, memory-mappable
                                (float16 in stores written by ``tru-dist data synth --interactions``;
                                META's ``features[m]["dtype"]`` says which)
    META.json                   counts, dims, split seed, content hash, created_by, meta

Wide feature matrices are ``.npy`` rather than Parquet because a worker must read a
contiguous slice of rows without touching the rest: ``np.load(mmap_mode="r")[lo:hi]``
does exactly that, a Parquet column of lists does not.

Content hash (hex sha256), defined on array contents so it does not depend on the
Parquet encoder's version::

    h_inter = sha256(users:int64 ‖ items:int64 ‖ labels:int8 ‖ ratings:float32 ‖ timestamps:int64)
    h_m     = sha256(m ‖ shape ‖ rows of the float32 matrix, little-endian, C order)
              (a float16 matrix is hashed as its exact float32 upcast, so the hash is the
              one write_store computes for the same values)
    content = sha256("interactions:" h_inter ‖ ";" m ":" h_m for each modality m, sorted)

``META.json`` is written last, so an interrupted write leaves a folder that is not
recognised as a store rather than a store with silently missing files.

Revisions (what a purge writes, :func:`write_revision`): a store is never edited in place.
A purge writes ``revisions/<n>/interactions.parquet`` (the rows kept, same columns and
order), then replaces ``META.json`` atomically — the single commit point — with
``revision: n``, ``interactions_file: revisions/<n>/interactions.parquet``, the new counts
and hashes, and a ``revisions`` history (counts, receipt ids and the content hashes of the
revision and its parent, never ids of deleted rows). Item features are shared by all
revisions (a purge deletes interactions, not items). Superseded interaction files are then
deleted, except the newest ``keep_versions`` (listed in ``META["retained"]``). Anything else
under the store — a revision a killed purge left half done, a superseded file a killed purge
had not deleted yet, an atomic-write temp file — is an orphan: :func:`clean_store` deletes
it, and every purge starts with it. A store without ``revision`` (written before revisions
existed) is revision 1 with ``interactions.parquet`` at the top.

The (revision, content hash) pairs a store's META vouches for (:func:`held_revision`) say what
a store held wherever its folder now is: a purge's receipt records the pair it left, so a
store moved since is still recognised as purged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tru_dist import __version__
from tru_dist.crashpoints import fault_point
from tru_dist.data import validate as v
from tru_dist.data.dataset import SPLIT_LABELS, RecDataset
from tru_dist.data.mmrec import load_npy, save_npy
from tru_dist.data.schema import (
    FEATURES_DIR,
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    META_FILE,
    STORE_FORMAT,
    STORE_VERSION,
    sequence_positions,
)
from tru_dist.errors import DataError
from tru_dist.io_utils import atomic_write, atomic_write_json, is_orphan_temp

_REIMPORT = "re-import the dataset (tru-dist data import-mmrec) to rebuild the store"
REVISIONS_DIR = "revisions"
#: feature dtypes a store may hold: write_store writes float32; the streaming scale generator
#: (:mod:`tru_dist.data.synth_stream`) writes float16 to halve the disk and page-cache footprint.
#: Consumers cast their slice to what they compute in, so either reads the same way.
FEATURE_DTYPES = ("float32", "float16")


def is_store(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def enclosing_store(path: str | Path) -> Path | None:
    """The store ``path`` lies in (itself included), or None; symlinks are resolved, so a path
    that reaches a store through a linked folder is found too."""
    resolved = Path(path).resolve()
    return next((p for p in [resolved, *resolved.parents] if is_store(p)), None)


#: the interaction columns in the order the content hash reads them, with their canonical dtypes
HASH_COLUMNS = {"users": "<i8", "items": "<i8", "labels": "<i1", "ratings": "<f4", "timestamps": "<i8"}


def hash_column(h: hashlib._Hash, column: str, values: np.ndarray) -> None:
    """Feed (a run of) one interaction column to ``h`` in its canonical dtype. A writer that
    streams may feed a column in pieces, as long as whole columns follow HASH_COLUMNS' order."""
    h.update(np.ascontiguousarray(values, dtype=HASH_COLUMNS[column]).tobytes())


def interactions_hash(users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                      ratings: np.ndarray, timestamps: np.ndarray) -> str:
    """sha256 over the five interaction columns in their canonical dtypes (see module doc)."""
    h = hashlib.sha256()
    for column, arr in zip(HASH_COLUMNS, (users, items, labels, ratings, timestamps), strict=True):
        hash_column(h, column, arr)
    return h.hexdigest()


def feature_hasher(name: str, shape: tuple[int, ...]) -> hashlib._Hash:
    """A feature matrix's sha256, started with its header; feed rows with :func:`hash_feature_rows`."""
    return hashlib.sha256(f"{name}:{tuple(int(s) for s in shape)}".encode())


def hash_feature_rows(h: hashlib._Hash, rows: np.ndarray) -> None:
    """Feed rows of a feature matrix as float32 (a float16 matrix hashes as its exact upcast)."""
    h.update(np.ascontiguousarray(rows, dtype="<f4").tobytes())


def feature_hash(name: str, arr: np.ndarray) -> str:
    """sha256 of one feature matrix, streamed in row chunks (a memmap is never materialised)."""
    h = feature_hasher(name, arr.shape)
    step = max(1, v.CHUNK_ELEMENTS // max(1, arr.shape[1] if arr.ndim == 2 else 1))
    for lo in range(0, arr.shape[0], step):
        hash_feature_rows(h, arr[lo : lo + step])
    return h.hexdigest()


def combine_hashes(inter: str, features: dict[str, str]) -> str:
    text = "interactions:" + inter + "".join(f";{m}:{features[m]}" for m in sorted(features))
    return hashlib.sha256(text.encode()).hexdigest()


def write_store(data: RecDataset, folder: str | Path, *, created_by: str | None = None) -> Path:
    """Validate ``data`` and write it as a store in ``folder`` (every file atomically).

    ``rating`` is 1.0 and ``timestamp`` the position in the user's sequence (the
    dataset carries order only). ``data.meta`` is kept in ``META.json["meta"]`` so
    provenance such as injected poison survives a round trip. Returns the folder.
    """
    folder = Path(folder)
    v.validate_dataset(data, source=f"dataset '{data.meta.get('name', 'dataset')}'")
    users = np.asarray(data.users, dtype=np.int64)
    items = np.asarray(data.items, dtype=np.int64)
    labels = np.asarray(data.labels, dtype=np.int8)
    ratings = np.ones(len(users), dtype=np.float32)
    timestamps = sequence_positions(users)
    table = pa.Table.from_arrays(
        [pa.array(users), pa.array(items), pa.array(ratings), pa.array(timestamps), pa.array(labels)],
        schema=INTERACTIONS_SCHEMA,
    )
    folder.mkdir(parents=True, exist_ok=True)
    old_meta = folder / META_FILE
    if old_meta.exists():  # an overwrite is first made unrecognisable, then completed
        old_meta.unlink()
    atomic_write(folder / INTERACTIONS_FILE, lambda tmp: pq.write_table(table, tmp))
    if (folder / REVISIONS_DIR).is_dir():  # revisions of the overwritten store
        shutil.rmtree(folder / REVISIONS_DIR)
    for stale in (folder / FEATURES_DIR).glob("*.npy"):
        if stale.stem not in data.features:
            stale.unlink()

    feat_meta, feat_hashes = {}, {}
    for name, feats in sorted(data.features.items()):
        arr = np.asarray(feats)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        save_npy(folder / FEATURES_DIR / f"{name}.npy", arr)
        feat_hashes[name] = feature_hash(name, arr)
        feat_meta[name] = {"dim": int(arr.shape[1]), "dtype": "float32", "file": f"{FEATURES_DIR}/{name}.npy"}
    inter_hash = interactions_hash(users, items, labels, ratings, timestamps)
    meta = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "n_users": int(data.n_users),
        "n_items": int(data.n_items),
        "n_interactions": int(len(users)),
        "counts": {name: int((labels == lab).sum()) for name, lab in SPLIT_LABELS.items()},
        "features": feat_meta,
        "split_seed": data.meta.get("split_seed"),
        "content_hash": combine_hashes(inter_hash, feat_hashes),
        "hashes": {"interactions": inter_hash, "features": feat_hashes},
        "created_by": created_by or f"tru-dist {__version__}",
        "meta": {k: val for k, val in data.meta.items() if k not in ("store", "item_range", "content_hash")},
    }
    atomic_write_json(folder / META_FILE, meta)
    return folder


def has_purge_history(folder: str | Path) -> bool:
    """Whether the store at ``folder`` holds a purge's work: a ``revisions/`` folder, or a
    ``revision`` / ``revisions`` record in its META.json. A store written over it would bring
    back the rows the purge deleted, so the data commands refuse that ``--out``."""
    folder = Path(folder)
    if (folder / REVISIONS_DIR).is_dir():
        return True
    try:
        meta = read_meta(folder)
    except DataError:
        return False
    return bool(meta.get("revision") or meta.get("revisions"))


def read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({str(exc).splitlines()[0]}); {_REIMPORT}") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise DataError(f"{path} is not a tru-dist store META (format != {STORE_FORMAT!r}); {_REIMPORT}")
    required = ("n_users", "n_items", "n_interactions", "counts", "features", "hashes", "content_hash")
    missing = [k for k in required if k not in meta]
    if missing:
        raise DataError(f"{path} lacks key(s) {', '.join(missing)}; {_REIMPORT}")
    file = meta.get("interactions_file", INTERACTIONS_FILE)
    if not isinstance(file, str) or Path(file).is_absolute() or ".." in Path(file).parts:
        raise DataError(f"{path}: interactions_file {file!r} is not a path inside the store; {_REIMPORT}")
    return meta


def interactions_path(folder: Path, meta: dict) -> Path:
    """The current revision's interactions file (``interactions.parquet`` before any purge)."""
    return folder / meta.get("interactions_file", INTERACTIONS_FILE)


def revision(meta: dict) -> int:
    return int(meta.get("revision", 1))


def held_revision(meta: dict, rev: int, content_hash: str) -> bool:
    """Whether the store whose META is ``meta`` holds, or held, revision ``rev`` with content
    ``content_hash``: its current revision, a retained one, or one in its history (revisions
    and their parents; histories written before they recorded content hashes name none). A
    revision only ever removes rows from its parent, so rows absent from a revision this
    store held are absent now — whatever path the store had then or has now."""
    held = {(revision(meta), meta.get("content_hash"))}
    held |= {(r.get("revision"), r.get("content_hash")) for r in meta.get("retained", [])}
    for r in meta.get("revisions", []):
        held |= {(r.get("revision"), r.get("content_hash")), (r.get("parent"), r.get("parent_content_hash"))}
    return bool(content_hash) and (rev, content_hash) in held


def _read_interactions(folder: Path, meta: dict) -> tuple[np.ndarray, ...]:
    path = interactions_path(folder, meta)
    src = str(path)
    if not path.is_file():
        raise DataError(f"{src} is missing (META.json names it as the interactions); {_REIMPORT}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{src} cannot be read ({str(exc).splitlines()[0]}); {_REIMPORT}") from None
    v.require_columns(table.column_names, INTERACTIONS_SCHEMA.names, src, _REIMPORT)
    cols = {}
    for field in INTERACTIONS_SCHEMA:
        col = table.column(field.name)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{src} {v.table_row(row)}: {field.name} is null; {_REIMPORT}")
        if col.type != field.type:
            raise DataError(
                f"{src}: column {field.name} has type {col.type}, expected {field.type}; {_REIMPORT}"
            )
        cols[field.name] = col.to_numpy()
    where = v.table_row
    v.require_nonempty(len(cols["user_id"]), src)
    v.check_in_range(cols["user_id"], int(meta["n_users"]), "user_id", src, where)
    v.check_in_range(cols["item_id"], int(meta["n_items"]), "item_id", src, where)
    labels = v.check_labels(cols["x_label"], src, where)
    v.check_unique_pairs(cols["user_id"], cols["item_id"], src, where)
    counts = {name: int((labels == lab).sum()) for name, lab in SPLIT_LABELS.items()}
    if len(labels) != int(meta["n_interactions"]) or counts != meta["counts"]:
        raise DataError(
            f"{src} has {len(labels)} rows {counts} but META.json says {meta['n_interactions']}"
            f" {meta['counts']}; {_REIMPORT}"
        )
    return cols["user_id"], cols["item_id"], labels, cols["rating"], cols["timestamp"]


def read_store(
    folder: str | Path, item_range: tuple[int, int] | None = None, *, verify: bool = True
) -> RecDataset:
    """Read a store, checking it against ``META.json``.

    ``item_range=(lo, hi)``: every feature matrix is the memory-mapped slice of rows
    ``lo..hi-1`` (a worker's share of the feature store; the full matrix is never
    loaded), ``meta["item_range"]`` records it and ``n_items`` stays global.
    ``verify`` recomputes the content hash (features are streamed chunk by chunk); a
    mismatch is a DataError naming the file. Without it, only the loaded slice is
    scanned for NaN/inf.
    """
    folder = Path(folder)
    if not is_store(folder):
        raise DataError(f"{folder} has no {META_FILE}, so it is not a tru-dist store; {_REIMPORT}")
    meta = read_meta(folder)
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    users, items, labels, ratings, timestamps = _read_interactions(folder, meta)
    if item_range is not None:
        lo, hi = (int(x) for x in item_range)
        if not 0 <= lo <= hi <= n_items:
            raise DataError(
                f"item_range ({lo}, {hi}) is outside the store's items 0..{n_items};"
                " use 0 <= lo <= hi <= n_items"
            )

    on_disk = {p.stem for p in (folder / FEATURES_DIR).glob("*.npy")}
    extra = sorted(on_disk - set(meta["features"]))
    if extra:
        stray = folder / FEATURES_DIR / f"{extra[0]}.npy"
        raise DataError(f"{stray} is not listed in META.json; {_REIMPORT}")
    features, feat_hashes = {}, {}
    for name, info in sorted(meta["features"].items()):
        path = folder / FEATURES_DIR / f"{name}.npy"
        if not path.is_file():
            raise DataError(f"{path} is missing (META.json lists modality '{name}'); {_REIMPORT}")
        full = load_npy(path)
        want = str(info.get("dtype", "float32"))
        shape = (n_items, int(info["dim"]))
        if want not in FEATURE_DTYPES or full.dtype != np.dtype(want) or full.shape != shape:
            raise DataError(
                f"{path} is {full.dtype} {full.shape}, META.json says {want} ({n_items}, {info['dim']});"
                f" {_REIMPORT}"
            )
        if verify:
            feat_hashes[name] = feature_hash(name, full)
            if feat_hashes[name] != meta["hashes"]["features"].get(name):
                raise DataError(
                    f"{path} does not match META.json's content hash (changed after import); {_REIMPORT}"
                )
        part = full if item_range is None else full[lo:hi]
        if not verify:
            v.check_finite_rows(part, str(path), row_offset=0 if item_range is None else lo)
        features[name] = part
    if verify:
        inter_hash = interactions_hash(users, items, labels, ratings, timestamps)
        if inter_hash != meta["hashes"]["interactions"] or combine_hashes(inter_hash, feat_hashes) != meta[
            "content_hash"
        ]:
            raise DataError(
                f"{interactions_path(folder, meta)} does not match META.json's content hash"
                f" (changed after import); {_REIMPORT}"
            )
    out_meta = dict(meta.get("meta") or {})
    out_meta.update({"store": str(folder.resolve()), "content_hash": meta["content_hash"],
                     "split_seed": meta.get("split_seed")})
    if item_range is not None:
        out_meta["item_range"] = [lo, hi]
    return RecDataset(n_users, n_items, users, items, labels, features, out_meta)


# --------------------------------------------------------------------------------------
# revisions (purge)
# --------------------------------------------------------------------------------------
def live_files(folder: Path, meta: dict) -> set[Path]:
    """Files the store's META references: META, the current and retained interactions, features."""
    live = {folder / META_FILE, interactions_path(folder, meta)}
    live |= {folder / r["file"] for r in meta.get("retained", [])}
    live |= {folder / info["file"] for info in meta["features"].values() if "file" in info}
    live |= {folder / FEATURES_DIR / f"{name}.npy" for name in meta["features"]}
    return live


def store_orphans(folder: str | Path) -> list[Path]:
    """Files under a store that its META does not reference: half-written or superseded
    revisions, atomic-write temp files. (Unknown files outside ``revisions/`` and the
    interactions/temp files are left alone: the store does not own them.)"""
    folder = Path(folder)
    meta = read_meta(folder)
    live = live_files(folder, meta)
    out = [p for p in folder.rglob("*") if is_orphan_temp(p)]
    top = folder / INTERACTIONS_FILE
    if top.exists() and top not in live:
        out.append(top)
    rev_dir = folder / REVISIONS_DIR
    if rev_dir.is_dir():
        out += [p for p in rev_dir.rglob("*") if p.is_file() and p not in live and p not in out]
    return sorted(out)


def clean_store(folder: str | Path) -> list[str]:
    """Delete :func:`store_orphans` (and empty revision folders); returns their store-relative paths."""
    folder = Path(folder)
    gone = store_orphans(folder)
    for p in gone:
        p.unlink(missing_ok=True)
    rev_dir = folder / REVISIONS_DIR
    if rev_dir.is_dir():
        for d in sorted((p for p in rev_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(rev_dir.iterdir()):
            rev_dir.rmdir()
    return [str(p.relative_to(folder)) for p in gone]


def write_revision(folder: str | Path, keep: np.ndarray, *, record: dict, keep_versions: int = 0,
                   fault: str | None = None, switch_fault: str | None = None) -> dict:
    """Write the current interactions minus the rows where ``keep`` is False as a new revision,
    switch META.json to it (atomically), then delete superseded interaction files beyond the
    newest ``keep_versions``. ``record`` (counts, receipt ids — no deleted ids) goes into the
    revision history. Returns the new META. ``fault``/``switch_fault``: crash-injection stages
    before / after the switch (:mod:`tru_dist.crashpoints`)."""
    folder = Path(folder)
    meta = read_meta(folder)
    src = interactions_path(folder, meta)
    table = pq.read_table(src)
    keep = np.asarray(keep, dtype=bool)
    if len(keep) != table.num_rows:
        raise DataError(f"{src} has {table.num_rows} rows, the purge mask {len(keep)}; rerun the purge")
    kept = table.filter(pa.array(keep))
    v.require_nonempty(kept.num_rows, f"{src} after the purge")
    users = kept.column("user_id").to_numpy()
    items = kept.column("item_id").to_numpy()
    labels = kept.column("x_label").to_numpy()
    ratings = kept.column("rating").to_numpy()
    timestamps = kept.column("timestamp").to_numpy()
    new_rev = max([revision(meta)] + [int(r["revision"]) for r in meta.get("revisions", [])]) + 1
    file = f"{REVISIONS_DIR}/{new_rev}/{INTERACTIONS_FILE}"
    atomic_write(folder / file, lambda tmp: pq.write_table(kept, tmp))
    fault_point(fault)  # a complete revision that META.json does not reference yet

    inter_hash = interactions_hash(users, items, labels, ratings, timestamps)
    retained = [{"revision": revision(meta), "file": str(src.relative_to(folder)),
                 "content_hash": meta["content_hash"]}] + list(meta.get("retained", []))
    retained = retained[: max(0, int(keep_versions))]
    counts = {name: int((labels == lab).sum()) for name, lab in SPLIT_LABELS.items()}
    history = list(meta.get("revisions", []))
    content = combine_hashes(inter_hash, meta["hashes"]["features"])
    history.append({"revision": new_rev, "parent": revision(meta),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "n_interactions": int(len(users)), "removed_rows": int(table.num_rows - kept.num_rows),
                    "content_hash": content, "parent_content_hash": meta["content_hash"], **record})
    new_meta = {
        **meta,
        "n_interactions": int(len(users)),
        "counts": counts,
        "content_hash": content,
        "hashes": {"interactions": inter_hash, "features": meta["hashes"]["features"]},
        "revision": new_rev,
        "interactions_file": file,
        "revisions": history,
        "retained": retained,
    }
    atomic_write_json(folder / META_FILE, new_meta)  # the commit point
    fault_point(switch_fault)
    clean_store(folder)
    return new_meta
