"""The scale dataset generator: a synthetic store written in bounded memory
(``tru-dist data synth --interactions K``).

Why a second generator: :func:`tru_dist.data.synthetic.generate_synthetic` builds the whole
dataset in memory and samples each user's items by Gumbel top-k over *all* items
(O(users · items) work), which is right for demos and impossible at the scale tests'
1M users × 100k items × 20M interactions. :func:`write_synthetic_store` writes a store that
:func:`tru_dist.data.store.read_store` / :func:`tru_dist.data.source.open_data` open like any
other, holding in memory only O(users + items) small vectors (counts, offsets, popularity
tables) plus one chunk of users and one Parquet row group of interactions, and one fixed
block of feature rows.

Generative story (popularity skew and community structure, so the graph looks like data):

* Item popularity is Zipf over a seeded permutation of the items (rank r has weight
  (r+1)^-a). Ranks fall into ``C`` clusters (rank mod C); a cluster's items have their own
  Zipf tail.
* Every user gets ``min(5, K // N)`` interactions (5-core-like when K ≥ 5N, and always at
  least one, which is a train interaction) plus a share of the rest, multinomial with
  log-normal user weights (a heavy-tailed degree distribution), capped at ``n_items``.
* Each interaction is a draw from the user's home cluster (probability ``HOME_SHARE``) or
  from global popularity; a repeated item is moved to the next free item id, so each
  (user, item) pair occurs once.
* Every item occurs at least once (dense ids, as MMRec needs): ``n_items`` evenly spaced
  interaction slots carry a seeded permutation of the items, placed first in their user's
  sequence, so they are train interactions unless a user carries more of them than train
  slots.
* Split: the MMRec rule of :func:`tru_dist.data.synthetic.split_labels` (users with < 3
  interactions: all train; < 10: the last two are valid/test; else 80/10/10 in order).
* Feature row i of modality m is ``(c_{z_i} + σ·ε_i) W_m + σ_m·ε``: the cluster shows
  through every modality, with noise — stored as float16 (half the bytes of float32; the
  store's hash is defined on the exact float32 upcast).

Determinism: same arguments → byte-identical files, whatever ``chunk_users`` is. The
random numbers of interaction ``g`` (global index) are a counter-based hash of
(seed, stream, g) (SplitMix64), so a chunk needs no generator state from the chunks before
it; per-user and per-item tables come from ``numpy.random.default_rng([seed, k])``; feature
rows come in fixed blocks of ``FEATURE_BLOCK`` rows each with its own seeded generator, and
Parquet row groups have a fixed size (``row_group_rows``), not one per chunk. Feature
values are computed with elementwise float32 operations in a fixed order (no BLAS), so
they do not depend on the BLAS build or thread count.

Crash safety: every file is written through a temp file and renamed; ``META.json`` — the
commit point — is written last, so an interrupted run leaves a folder that is not a store.
An error (not a kill) removes what the run wrote.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tru_dist import __version__
from tru_dist.data.dataset import SPLIT_LABELS, TEST, TRAIN, VALID
from tru_dist.data.schema import (
    FEATURES_DIR,
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    META_FILE,
    STORE_FORMAT,
    STORE_VERSION,
)
from tru_dist.data.store import (
    FEATURE_DTYPES,
    combine_hashes,
    feature_hasher,
    hash_column,
    hash_feature_rows,
)
from tru_dist.errors import DataError
from tru_dist.io_utils import atomic_write, atomic_write_json

log = logging.getLogger("tru_dist.data")

#: users per generation chunk (≈ chunk_users · mean degree rows in memory at once)
DEFAULT_CHUNK_USERS = 32768
#: rows per Parquet row group (fixed, so the file does not depend on ``chunk_users``)
ROW_GROUP_ROWS = 1 << 20
#: feature rows generated and hashed at once (fixed: each block has its own seeded generator)
FEATURE_BLOCK = 4096
N_CLUSTERS = 16
LATENT_DIM = 16
MIN_PER_USER = 5
POP_EXPONENT = 0.8
HOME_SHARE = 0.7
ITEM_NOISE = 0.3
FEATURE_NOISE = 0.5
#: rounds of "move a repeated item to the next id" before the exact per-user fallback
_DEDUPE_ROUNDS = 64
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a modality name is a file stem
_SPEC_HINT = "write NAME:DIM[,NAME:DIM...], e.g. image:512,text:384"


def parse_modalities(spec: str) -> dict[str, int]:
    """``"image:512,text:384"`` → ``{"image": 512, "text": 384}``; ``"none"`` → ``{}`` (an
    interactions-only dataset, like Baby); an empty spec, a malformed part, a dimension < 1 or a
    repeated name is a one-line DataError (an empty spec used to mean the default modalities)."""
    if str(spec).strip().lower() == "none":
        return {}
    if not str(spec).strip():
        raise DataError(f"the modality spec is empty: {_SPEC_HINT}, or none for interactions only")
    out: dict[str, int] = {}
    for part in str(spec).split(","):
        name, sep, dim = part.strip().partition(":")
        if not sep or not _NAME.fullmatch(name) or not re.fullmatch(r"[0-9]+", dim):
            raise DataError(f"bad modality spec '{part}': {_SPEC_HINT}")
        if int(dim) < 1:
            raise DataError(f"bad modality spec '{part}': the dimension must be >= 1; {_SPEC_HINT}")
        if name in out:
            raise DataError(f"bad modality spec '{spec}': modality '{name}' is given twice; {_SPEC_HINT}")
        out[name] = int(dim)
    return out


def check_synth_args(n_users: int, n_items: int, n_interactions: int, modalities: dict[str, int],
                     seed: int, chunk_users: int, row_group_rows: int, feature_dtype: str) -> None:
    """Every size limit of :func:`write_synthetic_store`, as one-line DataErrors (checked
    before anything is written)."""
    sizes = {"users": n_users, "items": n_items, "interactions": n_interactions,
             "chunk_users": chunk_users, "row_group_rows": row_group_rows}
    for what, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{what} must be a positive integer, not {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise DataError(f"seed must be an integer in 0..2^63-1, not {seed!r}")
    if n_interactions < n_users:
        raise DataError(f"{n_interactions} interactions for {n_users} users: every user needs at least one"
                        " (train) interaction; pass interactions >= users")
    if n_interactions < n_items:
        raise DataError(f"{n_interactions} interactions for {n_items} items: every item needs at least one"
                        " interaction (dense ids); pass interactions >= items")
    if n_interactions > n_users * n_items:
        raise DataError(f"{n_interactions} interactions exceed users × items = {n_users * n_items}"
                        " (each (user, item) pair occurs once); pass fewer interactions")
    if n_items * n_interactions >= 2**62:
        raise DataError("items × interactions must stay below 2^62 (int64 slot arithmetic); make it smaller")
    if feature_dtype not in FEATURE_DTYPES:
        raise DataError(f"feature dtype {feature_dtype!r} is not one of {', '.join(FEATURE_DTYPES)}")
    for name, dim in modalities.items():
        if not _NAME.fullmatch(str(name)) or isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) \
                or dim < 1:
            raise DataError(f"bad modality {name!r}: {dim!r}; {_SPEC_HINT}")


# --------------------------------------------------------------------------------------
# counter-based random numbers (chunk-independent)
# --------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (arithmetic wraps mod 2^64, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """U[0, 1) doubles that depend only on (seed, stream, index): the ``index``-th output of a
    SplitMix64 sequence whose start is keyed by (seed, stream)."""
    key = _mix64(_mix64(np.array([seed], dtype=np.uint64)) ^ np.array([stream], dtype=np.uint64))
    z = _mix64(index.astype(np.uint64) * _GOLDEN + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# --------------------------------------------------------------------------------------
# the per-user / per-item tables (O(users + items))
# --------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Everything a chunk needs, all O(users + items): degrees, offsets, popularity tables."""

    n_users: int
    n_items: int
    n_interactions: int
    seed: int
    counts: np.ndarray  # (n_users,) interactions per user
    offsets: np.ndarray  # (n_users + 1,) first global row of each user
    home: np.ndarray  # (n_users,) home cluster
    rank_item: np.ndarray  # (n_items,) item at popularity rank r
    item_cluster: np.ndarray  # (n_items,) cluster of item i
    global_cdf: np.ndarray  # Zipf CDF over ranks
    home_cdf: np.ndarray  # Zipf CDF over a cluster's ranks
    n_clusters: int
    cover: np.ndarray  # (n_items,) item carried by the j-th coverage slot


def _zipf_cdf(n: int) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -POP_EXPONENT
    return np.cumsum(w) / w.sum()


def _user_counts(n_users: int, n_items: int, n_interactions: int, seed: int) -> np.ndarray:
    """Per-user degrees summing to exactly ``n_interactions``, each in [1, n_items]."""
    rng = np.random.default_rng([seed, 1])
    base = min(MIN_PER_USER, n_interactions // n_users, n_items)
    counts = np.full(n_users, base, dtype=np.int64)
    rest = n_interactions - base * n_users
    weights = rng.lognormal(0.0, 1.0, size=n_users)
    for _ in range(100):
        if rest <= 0:
            break
        room = n_items - counts
        w = np.where(room > 0, weights, 0.0)
        add = np.minimum(rng.multinomial(rest, w / w.sum()), room)
        counts += add
        rest -= int(add.sum())
    if rest > 0:  # nearly dense data: fill the remaining room in user order
        room = n_items - counts
        fill = np.minimum(room, np.maximum(0, rest - (np.cumsum(room) - room)))
        counts += fill
    return counts


def _plan(n_users: int, n_items: int, n_interactions: int, seed: int) -> _Plan:
    counts = _user_counts(n_users, n_items, n_interactions, seed)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    c = min(N_CLUSTERS, n_items)
    rank_item = np.random.default_rng([seed, 0]).permutation(n_items).astype(np.int64)
    item_rank = np.empty(n_items, dtype=np.int64)
    item_rank[rank_item] = np.arange(n_items, dtype=np.int64)
    return _Plan(
        n_users=n_users, n_items=n_items, n_interactions=n_interactions, seed=seed,
        counts=counts, offsets=offsets,
        home=np.random.default_rng([seed, 2]).integers(0, c, size=n_users).astype(np.int64),
        rank_item=rank_item, item_cluster=item_rank % c,
        global_cdf=_zipf_cdf(n_items), home_cdf=_zipf_cdf(n_items // c), n_clusters=c,
        cover=np.random.default_rng([seed, 3]).permutation(n_items).astype(np.int64),
    )


# --------------------------------------------------------------------------------------
# one chunk of users
# --------------------------------------------------------------------------------------
def _split(pos: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The MMRec rule of :func:`tru_dist.data.synthetic.split_labels`, per row: ``pos`` is the
    row's place in its user's sequence, ``n`` the user's length."""
    k = np.where(n < 10, 1, np.maximum(1, np.rint(0.1 * n).astype(np.int64)))
    labels = np.full(len(pos), TRAIN, dtype=np.int8)
    big = n >= 3
    labels[big & (pos >= n - 2 * k)] = VALID
    labels[big & (pos >= n - k)] = TEST
    return labels


def _chunk_frame(plan: _Plan, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, positions, labels) of users ``lo..hi-1``: all derived from the degrees."""
    c = plan.counts[lo:hi]
    n = int(plan.offsets[hi] - plan.offsets[lo])
    users = np.repeat(np.arange(lo, hi, dtype=np.int64), c)
    pos = np.arange(n, dtype=np.int64) - np.repeat(plan.offsets[lo:hi] - plan.offsets[lo], c)
    return users, pos, _split(pos, np.repeat(c, c))


def _dedupe(user_local: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Make every (user, item) unique in place: a repeat (not the earliest row of its pair)
    moves to ``item + k`` (its k-th repeat), until no pair repeats. A user's result depends
    only on its own rows (earliest rows win), so chunking cannot change it."""
    keys = user_local * n_items + items
    idx = np.arange(len(items))  # rows of users that may still hold repeats
    for _ in range(_DEDUPE_ROUNDS):
        k = keys[idx]
        order = np.argsort(k, kind="stable")  # stable: the earliest row of a pair comes first
        sk = k[order]
        dup = np.r_[False, sk[1:] == sk[:-1]]
        if not dup.any():
            return items
        at = np.arange(len(sk))
        occurrence = at - np.maximum.accumulate(np.where(dup, 0, at))
        moved = idx[order[dup]]
        items[moved] = (items[moved] + occurrence[dup]) % n_items
        keys[moved] = user_local[moved] * n_items + items[moved]
        idx = idx[np.isin(user_local[idx], np.unique(user_local[moved]))]
    # exact fallback for (nearly dense) users still holding repeats: keep each pair's earliest
    # row, give the repeats the user's unused items in ascending id order
    for u in np.unique(user_local[idx]):
        rows = idx[user_local[idx] == u]
        _, first = np.unique(items[rows], return_index=True)
        repeat = np.setdiff1d(np.arange(len(rows)), first)
        items[rows[repeat]] = np.setdiff1d(np.arange(n_items), items[rows[first]])[: len(repeat)]
    return items


def _chunk_items(plan: _Plan, lo: int, hi: int, users: np.ndarray) -> np.ndarray:
    """The item of every row of users ``lo..hi-1`` (rows in user, then sequence order)."""
    g0 = int(plan.offsets[lo])
    n = len(users)
    g = np.arange(g0, g0 + n, dtype=np.uint64)
    from_home = _uniforms(plan.seed, 11, g) < HOME_SHARE
    pick = _uniforms(plan.seed, 12, g)
    del g
    ranks = np.minimum(np.searchsorted(plan.global_cdf, pick, side="right"), plan.n_items - 1)
    j = np.minimum(np.searchsorted(plan.home_cdf, pick[from_home], side="right"), len(plan.home_cdf) - 1)
    ranks[from_home] = plan.home[users[from_home]] + plan.n_clusters * j
    items = plan.rank_item[ranks]
    # coverage: slot floor(j·K/M) carries item cover[j], for j = 0..M-1
    m, k = plan.n_items, plan.n_interactions
    js = np.arange(-(-g0 * m // k), -(-(g0 + n) * m // k), dtype=np.int64)
    forced = np.zeros(n, dtype=bool)
    if len(js):
        slots = js * k // m - g0
        items[slots] = plan.cover[js]
        forced[slots] = True
        order = np.lexsort((~forced, users))  # stable: a user's coverage items first
        items = items[order]
    return _dedupe(users - lo, items, m)


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------
class _RowGroups:
    """Buffers rows and writes Parquet row groups of exactly ``size`` rows (the last may be
    shorter), so the file layout does not depend on how the rows were chunked."""

    def __init__(self, writer: pq.ParquetWriter, size: int) -> None:
        self.writer, self.size = writer, size
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.pending = 0

    def add(self, cols: tuple[np.ndarray, ...]) -> None:
        self.parts.append(cols)
        self.pending += len(cols[0])
        while self.pending >= self.size:
            self._emit(self.size)

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)

    def _emit(self, rows: int) -> None:
        cols = [np.concatenate([p[i] for p in self.parts]) for i in range(len(self.parts[0]))]
        head = [c[:rows] for c in cols]
        self.parts = [tuple(c[rows:].copy() for c in cols)] if rows < len(cols[0]) else []  # unpin cols
        self.pending -= rows
        users, items, labels, stamps = head
        ratings = np.ones(rows, dtype=np.float32)
        table = pa.Table.from_arrays(
            [pa.array(users), pa.array(items), pa.array(ratings), pa.array(stamps), pa.array(labels)],
            schema=INTERACTIONS_SCHEMA,
        )
        self.writer.write_table(table, row_group_size=rows)


def _write_interactions(plan: _Plan, path: Path, chunk_users: int, row_group_rows: int) -> tuple[str, dict]:
    """Stream the interactions into ``path`` (atomically); returns (hash, split counts).

    The hash is :func:`tru_dist.data.store.interactions_hash` — sha256 over the columns
    users ‖ items ‖ labels ‖ ratings ‖ timestamps, one after the other — computed without
    holding a column: users, labels, ratings and timestamps are functions of the degrees
    and are hashed in passes of their own; items are hashed as they are drawn, between the
    users pass and the others."""
    h = hashlib.sha256()
    n_users, total = plan.n_users, plan.n_interactions
    for lo in range(0, n_users, chunk_users):
        hi = min(n_users, lo + chunk_users)
        hash_column(h, "users", np.repeat(np.arange(lo, hi, dtype=np.int64), plan.counts[lo:hi]))

    start = time.perf_counter()
    n_chunks = -(-n_users // chunk_users)

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, INTERACTIONS_SCHEMA) as writer:
            groups = _RowGroups(writer, row_group_rows)
            for c, lo in enumerate(range(0, n_users, chunk_users)):
                hi = min(n_users, lo + chunk_users)
                users, pos, labels = _chunk_frame(plan, lo, hi)
                items = _chunk_items(plan, lo, hi, users)
                hash_column(h, "items", items)
                groups.add((users, items, labels, pos))
                if n_chunks > 1:
                    done = int(plan.offsets[hi])
                    log.info(f"synth interactions chunk {c + 1}/{n_chunks}: users {hi}/{n_users},"
                             f" rows {done}/{total} ({done / total:.0%}) {time.perf_counter() - start:.1f}s")
            groups.close()

    atomic_write(path, write)

    counts = dict.fromkeys(SPLIT_LABELS, 0)
    for what in ("labels", "ratings", "timestamps"):
        for lo in range(0, n_users, chunk_users):
            hi = min(n_users, lo + chunk_users)
            _, pos, labels = _chunk_frame(plan, lo, hi)
            if what == "labels":
                hash_column(h, "labels", labels)
                for name, lab in SPLIT_LABELS.items():
                    counts[name] += int((labels == lab).sum())
            elif what == "ratings":
                hash_column(h, "ratings", np.ones(len(pos), dtype=np.float32))
            else:
                hash_column(h, "timestamps", pos)
    return h.hexdigest(), counts


def _write_features(plan: _Plan, path: Path, name: str, dim: int, dtype: str, centres: np.ndarray) -> str:
    """Write one (n_items, dim) matrix through ``open_memmap`` block by block (atomically);
    returns :func:`tru_dist.data.store.feature_hash` of it, computed on the fly."""
    n_items, seed = plan.n_items, plan.seed
    tag = zlib.crc32(name.encode())  # a modality's values do not depend on the other modalities
    proj = (np.random.default_rng([seed, 7, tag]).standard_normal((LATENT_DIM, dim), dtype=np.float32)
            / np.float32(np.sqrt(LATENT_DIM)))
    h = feature_hasher(name, (n_items, dim))

    def write(tmp: str) -> None:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n_items, dim))
        for b, lo in enumerate(range(0, n_items, FEATURE_BLOCK)):
            hi = min(n_items, lo + FEATURE_BLOCK)
            rows = hi - lo
            jitter = np.random.default_rng([seed, 4, b]).standard_normal((rows, LATENT_DIM), dtype=np.float32)
            latent = centres[plan.item_cluster[lo:hi]] + np.float32(ITEM_NOISE / np.sqrt(LATENT_DIM)) * jitter
            x = np.random.default_rng([seed, 5, tag, b]).standard_normal((rows, dim), dtype=np.float32)
            x *= np.float32(FEATURE_NOISE)
            for d in range(LATENT_DIM):  # elementwise, fixed order: no BLAS-dependent rounding
                x += latent[:, d : d + 1] * proj[d]
            block = x.astype(dtype)
            mm[lo:hi] = block
            hash_feature_rows(h, block)
        mm.flush()
        del mm

    atomic_write(path, write)
    return h.hexdigest()


def _prepare_out(out: Path) -> bool:
    """Refuse an ``out`` that is a file or a non-empty folder; returns whether it was created."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is an existing file; pass a new or empty folder")
    if out.is_dir():
        if any(out.iterdir()):
            raise DataError(f"{out} is not empty; the scale generator writes into a new or empty folder"
                            " (delete it or pass another --out)")
        return False
    out.mkdir(parents=True)
    return True


def write_synthetic_store(
    out: str | Path,
    n_users: int,
    n_items: int,
    n_interactions: int,
    modalities: dict[str, int],
    seed: int = 0,
    *,
    chunk_users: int = DEFAULT_CHUNK_USERS,
    row_group_rows: int = ROW_GROUP_ROWS,
    feature_dtype: str = "float16",
    created_by: str | None = None,
) -> dict:
    """Write a seeded synthetic store of exactly ``n_users`` × ``n_items`` ×
    ``n_interactions`` into ``out`` (new or empty), streaming (see the module doc).

    Requires ``n_users <= n_interactions`` (each user has ≥ 1 interaction, the first of
    which is train), ``n_items <= n_interactions`` (each item occurs) and
    ``n_interactions <= n_users · n_items``. ``chunk_users`` bounds the rows generated at
    once and does not change the files; ``row_group_rows`` (the Parquet row group size)
    bounds the rows buffered for writing and does. Returns a summary (counts, hash, bytes
    written, seconds).
    """
    modalities = dict(modalities)
    check_synth_args(n_users, n_items, n_interactions, modalities, seed, chunk_users, row_group_rows,
                     feature_dtype)
    n_users, n_items, n_interactions = int(n_users), int(n_items), int(n_interactions)
    seed, chunk_users, row_group_rows = int(seed), int(chunk_users), int(row_group_rows)
    out = Path(out)
    created = _prepare_out(out)
    start = time.perf_counter()
    try:
        plan = _plan(n_users, n_items, n_interactions, seed)
        inter_hash, counts = _write_interactions(plan, out / INTERACTIONS_FILE, chunk_users, row_group_rows)
        centres = np.random.default_rng([seed, 6]).standard_normal((plan.n_clusters, LATENT_DIM))
        centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        feat_meta, feat_hashes = {}, {}
        for name, dim in sorted(modalities.items()):
            file = f"{FEATURES_DIR}/{name}.npy"
            feat_hashes[name] = _write_features(plan, out / file, name, int(dim), feature_dtype, centres)
            feat_meta[name] = {"dim": int(dim), "dtype": feature_dtype, "file": file}
            log.info(f"synth features {name}: ({n_items}, {dim}) {feature_dtype}"
                     f" {time.perf_counter() - start:.1f}s")
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "n_users": n_users,
            "n_items": n_items,
            "n_interactions": n_interactions,
            "counts": counts,
            "features": feat_meta,
            "split_seed": seed,
            "content_hash": combine_hashes(inter_hash, feat_hashes),
            "hashes": {"interactions": inter_hash, "features": feat_hashes},
            "created_by": created_by or f"tru-dist {__version__}",
            "meta": {"name": "synthetic-scale", "generator": {
                "kind": "synth_stream", "n_users": n_users, "n_items": n_items,
                "n_interactions": n_interactions, "modalities": dict(sorted(modalities.items())),
                "feature_dtype": feature_dtype, "seed": seed, "n_clusters": plan.n_clusters,
                "row_group_rows": row_group_rows}},
        }
        atomic_write_json(out / META_FILE, meta)  # the commit point
    except BaseException:
        _remove_written(out, created)
        raise
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out), "n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
        "counts": counts, "features": {m: [n_items, int(d)] for m, d in sorted(modalities.items())},
        "feature_dtype": feature_dtype, "content_hash": meta["content_hash"],
        "bytes_written": int(written), "seconds": round(time.perf_counter() - start, 3),
    }


def _remove_written(out: Path, created: bool) -> None:
    """After an error: remove the folder the run created, or what it wrote into an empty one."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in (META_FILE, INTERACTIONS_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / FEATURES_DIR, ignore_errors=True)
    for tmp in out.glob(".*.tmp"):
        if tmp.is_file():
            os.unlink(tmp)
