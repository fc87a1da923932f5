"""Symmetric-normalized user–item adjacency, stored as the bipartite block.

The LightGCN/MGCN adjacency is ``A = [[0, R̂], [R̂ᵀ, 0]]`` with
``R̂ = D_u^{-1/2} R D_i^{-1/2}`` (``R`` the binary train interaction matrix, ``D_u``,
``D_i`` user and item degrees). Propagating with ``A`` is exactly
``user' = R̂ · item`` and ``item' = R̂ᵀ · user``, so we store only ``R̂`` (and its
transpose) as float32 CSR — half the memory of the square matrix and the form the
distributed design needs: worker *r* holds the rows of its users, ``R̂_r``, computes
``user_r' = R̂_r · item`` locally and ``item' = Σ_r R̂_rᵀ · user_r`` with one all-reduce.
Item degrees are global (summed over shards), so renormalization after a deletion is
exact on every shard.

The sparse product uses a custom autograd function whose backward is the transposed
product with the stored transpose (measured faster than autograd through
``torch.sparse.mm`` on CSR; DESIGN §8).

**Deferred item-column scale** (in-place deletions only). Deleting a user changes the degree
``d_i`` of each of its items, and with it every entry of those items' columns — ``Σ_i d_i``
entries (~50k for one user of a 20M-edge graph, against ~300 on Amazon Baby), so an exact
rewrite costs with the graph, not the deletion. An in-place deletion instead keeps each stored
entry at ``R̃_ui = 1/sqrt(d_u s_i)``, with ``s_i`` the degree its column was last written with,
and records the per-item factor ``c_i = sqrt(s_i / d_i)`` (0 when ``d_i = 0``):

    R̂ = R̃ · diag(c),   user' = R̃ · (c ⊙ item),   item' = c ⊙ (R̃ᵀ · user)

which is exact (up to float32 rounding of one extra product) and costs O(the deleted user's
degree) to maintain. Every reader of ``norm`` applies ``item_scale`` (``None`` = all ones, the
state after building, copying deletions and compaction).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from tru_dist import comm as collectives

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks")


class _SpMM(torch.autograd.Function):
    """y = A·x with dy/dx = Aᵀ·grad (A, Aᵀ constant CSR tensors)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.a_t, grad.contiguous())


def spmm(a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Differentiable sparse·dense product with a precomputed transpose."""
    return _SpMM.apply(a, a_t, x)


def csr_row_entries(csr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of the given CSR rows, vectorized: ``(position in rows, index into col/values)``.

    Row ``rows[p]`` contributes its entries ``crow[r] .. crow[r+1]-1``, tagged with ``p``, in order.
    """
    crow = csr.crow_indices()
    rows = rows.to(crow.device)
    start, lengths = crow[rows], crow[rows + 1] - crow[rows]
    pos = torch.repeat_interleave(torch.arange(len(rows), device=crow.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths  # where each row's run starts in the output
    offs = torch.arange(len(pos), device=crow.device) - first[pos]
    return pos, start[pos] + offs


def _csr_sorted(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """CSR from entries already in (row, col) order."""
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    crow[1:] = np.cumsum(np.bincount(rows, minlength=shape[0]))
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow),
        torch.from_numpy(cols.astype(np.int64)),
        torch.from_numpy(vals.astype(np.float32)),
        size=shape,
        check_invariants=False,
    )


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    order = np.lexsort((cols, rows))
    return _csr_sorted(rows[order], cols[order], vals[order], shape)


def _inv_sqrt(degree: np.ndarray) -> np.ndarray:
    """1/sqrt(d), 0 where d = 0 (float64)."""
    with np.errstate(divide="ignore"):
        return np.where(degree > 0, 1.0 / np.sqrt(degree), 0.0)


@dataclass
class BipartiteGraph:
    """One shard's rows of the normalized interaction matrix R̂ (all of it when W = 1).

    Attributes:
        n_users, n_items: global sizes.
        user_offset: global id of this shard's first user; local user ``u`` is global
            ``user_offset + u``.
        n_local_users: rows held here.
        norm: CSR ``(n_local_users, n_items)``, entries ``1/sqrt(d_u d_i)``; an entry whose
            edge was deleted in place (:func:`delete_edges`) holds 0 until the next compaction.
        norm_t: CSR ``(n_items, n_local_users)``, the transpose.
        user_degree: local users' degrees; item_degree: global item degrees.
        item_scale: ``c`` of the module docstring (float32, per item) when an in-place deletion
            deferred its item columns' renormalisation, else ``None``: ``R̂ = norm · diag(c)``.
        stored_item_degree: ``s``, the item degrees ``norm``'s columns were written with
            (``None`` when they are ``item_degree``).
    """

    n_users: int
    n_items: int
    user_offset: int
    n_local_users: int
    norm: torch.Tensor
    norm_t: torch.Tensor
    user_degree: torch.Tensor
    item_degree: torch.Tensor
    n_zero_entries: int = 0  # entries of deleted edges kept at 0 (:func:`delete_edges`)
    item_scale: torch.Tensor | None = None
    stored_item_degree: torch.Tensor | None = None
    #: bumped by every in-place deletion that writes over these arrays (shared by the graphs
    #: that share them), so a :class:`GraphBefore` can tell that it went stale
    version: list[int] = dataclasses.field(default_factory=lambda: [0])
    #: ``version`` when this graph was made: once an in-place deletion moves it on, this graph's
    #: arrays hold a later state — it was given up, and reading it raises
    at_version: int = 0

    def check_current(self) -> None:
        """Raise :class:`StaleGraphError` if an in-place deletion has overwritten this graph's
        arrays since it was made (it is then neither the graph before nor the one after)."""
        if self.version[0] != self.at_version:
            raise StaleGraphError(
                "this graph was given up to an in-place deletion (its arrays now hold a later "
                "state); use the deletion's graph_after, or graph_before for the earlier one")

    def _edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        crow, col = self.norm.crow_indices(), self.norm.col_indices()
        rows = torch.repeat_interleave(torch.arange(self.n_local_users, device=crow.device), crow.diff())
        live = self.norm.values() != 0
        return rows[live], col[live]

    @property
    def users(self) -> torch.Tensor:
        """The shard's edges' local user ids (int64, in R̂'s row order; computed on demand)."""
        return self._edges()[0]

    @property
    def items(self) -> torch.Tensor:
        """The shard's edges' item ids, aligned with :attr:`users`."""
        return self._edges()[1]

    @property
    def n_edges(self) -> int:
        return int(self.norm.values().numel()) - self.n_zero_entries

    def users_from_items(self, item_emb: torch.Tensor) -> torch.Tensor:
        """``R̂_r · item_emb = R̃_r · (c ⊙ item_emb)`` -> this shard's user rows."""
        self.check_current()
        if self.item_scale is not None:
            item_emb = item_emb * self.item_scale.to(item_emb.dtype).unsqueeze(1)
        return spmm(self.norm, self.norm_t, item_emb)

    def items_from_users(self, user_emb: torch.Tensor) -> torch.Tensor:
        """``Σ_r R̂_rᵀ · user_r = Σ_r c_r ⊙ (R̃_rᵀ · user_r)`` -> every item row (one
        differentiable all-reduce). Each shard applies its own scale before the sum: shards
        compact on their own, so one may hold exact values (no scale) while another defers."""
        self.check_current()
        local = spmm(self.norm_t, self.norm, user_emb)
        if self.item_scale is not None:
            local = local * self.item_scale.to(local.dtype).unsqueeze(1)
        return collectives.all_reduce_sum(local)

    def to(self, device: torch.device | str) -> BipartiteGraph:
        move = {k: getattr(self, k).to(device) for k in ("norm", "norm_t", "user_degree", "item_degree")}
        extra = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                 for k in ("item_scale", "stored_item_degree")}
        return BipartiteGraph(self.n_users, self.n_items, self.user_offset, self.n_local_users, **move,
                              n_zero_entries=self.n_zero_entries, version=self.version,
                              at_version=self.at_version, **extra)

    def rescaled(self, user_scale: torch.Tensor, item_scale: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``diag(user_scale) · R̂_r · diag(item_scale)`` and its transpose as CSR (same
        sparsity, values in ``user_scale``'s dtype), the deferred item scale folded in — for a
        model that propagates a reweighted R̂ (MIG-GT's self-looped adjacency)."""
        self.check_current()
        if self.item_scale is not None:
            item_scale = item_scale * self.item_scale.to(item_scale.dtype)
        dtype = user_scale.dtype
        return (_rescaled_csr(self.norm.to(dtype), user_scale, item_scale),
                _rescaled_csr(self.norm_t.to(dtype), item_scale, user_scale))

    def dense(self) -> torch.Tensor:
        """This shard's R̂ as a dense float32 matrix (tests and small data only)."""
        self.check_current()
        out = self.norm.to_dense()
        return out if self.item_scale is None else out * self.item_scale.unsqueeze(0)


def _rescaled_csr(a: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """diag(row_scale) · A · diag(col_scale) for a CSR matrix A (same sparsity, new values)."""
    crow, col = a.crow_indices(), a.col_indices()
    rows = torch.repeat_interleave(torch.arange(a.shape[0], device=crow.device), crow.diff())
    values = a.values() * row_scale[rows] * col_scale[col]
    return torch.sparse_csr_tensor(crow, col, values, a.shape, check_invariants=False)


def build_bipartite(
    n_users: int,
    n_items: int,
    users: np.ndarray,
    items: np.ndarray,
    *,
    user_range: tuple[int, int] | None = None,
    item_degree: np.ndarray | None = None,
) -> BipartiteGraph:
    """Build one shard's normalized adjacency from its users' train edges.

    Args:
        users, items: global ids of the train edges; when ``user_range`` is given only the
            edges of users in ``[lo, hi)`` are used (a worker may pass just its own).
        user_range: this shard's contiguous user range; ``None`` means all users.
        item_degree: global item degrees when already known (e.g. a single process
            building every shard); otherwise the local counts are summed over ranks.

    Item degrees are summed over shards (``collectives.sum_stats``), so every worker
    normalizes with the global degree and W shards reproduce the W = 1 matrix row-wise.
    Nodes with degree 0 get weight 0 (no division by zero).
    """
    lo, hi = user_range if user_range is not None else (0, n_users)
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    mask = (users >= lo) & (users < hi)
    lu, li = users[mask] - lo, items[mask]
    order = np.lexsort((li, lu))  # the edge lists are kept in R̂'s (row, column) order
    lu, li = lu[order], li[order]
    n_local = hi - lo
    du = np.bincount(lu, minlength=n_local).astype(np.float64)
    if item_degree is not None:
        di = np.asarray(item_degree, dtype=np.float64)
    else:
        di_local = torch.from_numpy(np.bincount(li, minlength=n_items).astype(np.float64))
        di = collectives.sum_stats(di_local).numpy()
    vals = _inv_sqrt(du)[lu] * _inv_sqrt(di)[li]
    norm = _csr_sorted(lu, li, vals, (n_local, n_items))
    norm_t = _csr(li, lu, vals, (n_items, n_local))
    return BipartiteGraph(
        n_users=n_users,
        n_items=n_items,
        user_offset=lo,
        n_local_users=n_local,
        norm=norm,
        norm_t=norm_t,
        user_degree=torch.from_numpy(du.astype(np.float32)),
        item_degree=torch.from_numpy(di.astype(np.float32)),
    )


def _row_entries(csr: torch.Tensor, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stored entry of the given rows: (positions into ``values``, their rows, their columns)."""
    pos, entry = csr_row_entries(csr, torch.from_numpy(rows))
    entry = entry.numpy()
    return entry, rows[pos.numpy()], csr.col_indices().numpy()[entry]


def _entries_of(csr: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions (into ``col_indices``/``values``) of the live entries (rows[k], cols[k]) — those
    that exist with a nonzero value; reads only the rows named (O(their entries), not O(nnz))."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    n_cols = int(csr.shape[1])
    entry, r, c = _row_entries(csr, np.unique(rows))
    hit = np.isin(r * n_cols + c, rows * n_cols + cols) & (csr.values().numpy()[entry] != 0)
    return entry[hit]


def _locate(csr: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions of the entries (rows[k], cols[k]), which must exist: a vectorised bisection in
    each row's sorted columns, O(k · log(row length))."""
    crow, col = csr.crow_indices().numpy(), csr.col_indices().numpy()
    lo, hi = crow[rows].copy(), crow[rows + 1].copy()
    while True:
        open_ = lo < hi
        if not open_.any():
            break
        mid = (lo + hi) // 2
        right = open_ & (col[np.minimum(mid, len(col) - 1)] < cols)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(open_ & ~right, mid, hi)
    return lo


def _renormalise(csr: torch.Tensor, drop: np.ndarray, touched: np.ndarray, fresh: np.ndarray,
                 in_place: bool) -> tuple[torch.Tensor, Undo]:
    """``csr`` whose entries at ``drop`` are 0 and whose live entries at ``touched`` take the
    recomputed values ``fresh``: a copy with the structure shared, or — ``in_place`` — the same
    tensor with its values overwritten. Returns it and the (positions, old values) that undo it."""
    vals = csr.values().numpy()
    positions = np.concatenate([touched, drop])
    undo = Undo(positions, vals[positions].copy())
    if not in_place:
        vals = vals.copy()
    vals[touched] = np.where(vals[touched] != 0, fresh, np.float32(0.0))
    vals[drop] = 0.0
    if in_place:
        return csr, undo
    return torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), torch.from_numpy(vals),
                                   size=csr.shape, check_invariants=False), undo


@dataclass(frozen=True)
class Undo:
    """What an in-place :func:`delete_edges` overwrote in one value array: positions, old values."""

    positions: np.ndarray
    old: np.ndarray


class StaleGraphError(RuntimeError):
    """A graph's values were overwritten by a later in-place deletion."""


@dataclass
class GraphBefore:
    """The graph before an in-place deletion (:func:`delete_edges_in_place`), restored the first
    time it is asked for (:meth:`restore`: one copy of each value and degree array, the undo
    records written back).

    Valid only until the next in-place deletion writes over the same arrays: restoring after
    that raises :class:`StaleGraphError` instead of returning a graph that never existed."""

    source: BipartiteGraph
    undo: tuple[Undo, Undo]  # norm, norm_t values
    degree_undo: tuple[Undo, Undo]  # user_degree, item_degree
    n_zero_entries: int
    version: int
    scale_undo: Undo | None = None  # item_scale, when the source had one

    def restore(self) -> BipartiteGraph:
        if self.source.version[0] != self.version:
            raise StaleGraphError(
                "the graph before this deletion was overwritten by a later in-place deletion; "
                "ask for deletion.graph_before before applying the next request")

        def undone(t: torch.Tensor, undo: Undo) -> torch.Tensor:
            vals = t.numpy().copy()
            vals[undo.positions] = undo.old
            return torch.from_numpy(vals)

        mats = [torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), undone(csr.values(), undo),
                                        size=csr.shape, check_invariants=False)
                for csr, undo in zip((self.source.norm, self.source.norm_t), self.undo, strict=True)]
        src = self.source
        scale = None if src.item_scale is None else undone(src.item_scale, self.scale_undo)
        stored = None if src.stored_item_degree is None else src.stored_item_degree.clone()
        return dataclasses.replace(
            src, norm=mats[0], norm_t=mats[1],
            user_degree=undone(src.user_degree, self.degree_undo[0]),
            item_degree=undone(src.item_degree, self.degree_undo[1]),
            n_zero_entries=self.n_zero_entries, version=[0], at_version=0, item_scale=scale,
            stored_item_degree=stored)


#: in-place deletions keep zero entries until they are this share of the stored ones
COMPACT_SHARE = 0.25


def _degrees_after(degree: torch.Tensor, rows: np.ndarray, lost: np.ndarray, in_place: bool
                   ) -> tuple[torch.Tensor, Undo]:
    """``degree`` with ``lost[k]`` subtracted at ``rows[k]`` (a copy, or the same tensor) and
    the undo record."""
    out = degree if in_place else degree.clone()
    view = out.numpy()
    undo = Undo(rows, view[rows].copy())
    view[rows] = (view[rows].astype(np.float64) - lost).astype(np.float32)
    return out, undo


def delete_edges(graph: BipartiteGraph, users: np.ndarray, items: np.ndarray) -> BipartiteGraph:
    """The graph after deleting edges (global user ids), every affected degree renormalized.

    Equal to :func:`build_bipartite` on the retained edges — the graph a retrain on D_r would
    build: the same matrices, values bit for bit (tested) — without touching the rest of the
    graph: the deleted entries are found through their rows and set to 0, and only the entries
    whose normalisation changed (the rows of the users and the columns of the items that lost an
    edge) are recomputed from the new degrees. The CSR structure (crow, columns) is shared with
    the graph before; the value and degree arrays are copied (O(nnz + n): 0.03 s on a 20M-edge
    graph — :func:`delete_edges_in_place` avoids it). When zero entries pass ``COMPACT_SHARE``
    of the stored ones the graph is rebuilt from its live edges. Item degrees are global: the
    per-item counts of deleted edges are summed over ranks. Pairs that are not (live) edges of
    this shard are ignored here (the request ledger reports unknown pairs before this point).
    On a graph with a deferred item scale, the affected items' columns are written exactly and
    their factor reset to 1.
    """
    return _delete(graph, users, items, in_place=False)[0]


def delete_edges_in_place(graph: BipartiteGraph, users: np.ndarray, items: np.ndarray
                          ) -> tuple[BipartiteGraph, GraphBefore]:
    """:func:`delete_edges` writing over ``graph``'s value and degree arrays instead of copying
    them, and deferring the item columns' renormalisation to the item scale ``c`` (module
    docstring): only the deleted entries and the rows of users that lost an edge are written,
    so it costs O(the deleted users' degrees) at W = 1 — a deletion's cost follows the
    deletion, not the graph. The matrix it represents equals :func:`delete_edges`' up to float32
    rounding (tested). The caller gives ``graph`` up (its arrays now hold the after-state).
    Returns the graph after and a :class:`GraphBefore` that restores the graph before on demand
    (until the next in-place deletion on the same arrays)."""
    return _delete(graph, users, items, in_place=True)


def _delete(graph: BipartiteGraph, users: np.ndarray, items: np.ndarray, in_place: bool
            ) -> tuple[BipartiteGraph, GraphBefore]:
    graph.check_current()
    lo, n_local, n_items = graph.user_offset, graph.n_local_users, graph.n_items
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    mine = (u >= lo) & (u < lo + n_local)
    lu, li = u[mine] - lo, i[mine]
    norm, norm_t = graph.norm, graph.norm_t
    drop = _entries_of(norm, lu, li)  # reads the users' rows only
    dropped_users = np.searchsorted(norm.crow_indices().numpy(), drop, side="right") - 1
    dropped_items = norm.col_indices().numpy()[drop]
    # their mirror entries in R̃ᵀ, by bisection in the items' rows (not a read of those rows,
    # which would cost the items' degrees)
    drop_t = _locate(norm_t, dropped_items, dropped_users)
    aff_u, lost_u = np.unique(dropped_users, return_counts=True)
    if collectives.is_distributed():  # an item may lose edges on another shard only
        lost = torch.from_numpy(np.bincount(dropped_items, minlength=n_items).astype(np.float64))
        lost = collectives.sum_stats(lost).numpy()
        aff_i = np.flatnonzero(lost > 0)
        lost_i = lost[aff_i]
    else:
        aff_i, lost_i = np.unique(dropped_items, return_counts=True)
    user_degree, undo_du = _degrees_after(graph.user_degree, aff_u, lost_u, in_place)
    item_degree, undo_di = _degrees_after(graph.item_degree, aff_i, lost_i, in_place)
    du, di = user_degree.numpy(), item_degree.numpy()
    scale, stored, scale_undo = _item_scale_after(graph, aff_i, undo_di.old, di, deferred=in_place)
    col_degree = di if stored is None else stored.numpy()  # the s_i each column is written with

    # entries whose normalisation changed: the affected users' rows (each read as a row of R̃,
    # its entries in R̃ᵀ found by bisection) and — when not deferred — the affected items'
    # columns (read as rows of R̃ᵀ, found in R̃ by bisection).
    ent_u, row_users, row_items = _row_entries(norm, aff_u)
    if in_place:
        ent_t = col_items = col_users = np.zeros(0, dtype=np.int64)
    else:
        ent_t, col_items, col_users = _row_entries(norm_t, aff_i)
    users_all = np.concatenate([row_users, col_users])
    items_all = np.concatenate([row_items, col_items])
    fresh = (_inv_sqrt(du[users_all].astype(np.float64)) * _inv_sqrt(col_degree[items_all].astype(np.float64))
             ).astype(np.float32)
    touched = np.concatenate([ent_u, _locate(norm, col_users, col_items)])
    touched_t = np.concatenate([_locate(norm_t, row_items, row_users), ent_t])
    new_norm, undo = _renormalise(norm, drop, touched, fresh, in_place)
    new_norm_t, undo_t = _renormalise(norm_t, drop_t, touched_t, fresh, in_place)
    if in_place:
        graph.version[0] += 1
    before = GraphBefore(graph, (undo, undo_t), (undo_du, undo_di), graph.n_zero_entries,
                         graph.version[0], scale_undo)
    out = dataclasses.replace(
        graph, norm=new_norm, norm_t=new_norm_t, user_degree=user_degree, item_degree=item_degree,
        n_zero_entries=graph.n_zero_entries + len(drop), version=graph.version if in_place else [0],
        at_version=graph.version[0] if in_place else 0, item_scale=scale, stored_item_degree=stored)
    if out.n_zero_entries > COMPACT_SHARE * max(1, int(norm.values().numel())):
        out = compact(out)
    return out, before


def _item_scale_after(graph: BipartiteGraph, aff_i: np.ndarray, old_di: np.ndarray, di: np.ndarray,
                      deferred: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, Undo | None]:
    """``(item_scale, stored_item_degree, undo of item_scale)`` after items ``aff_i`` took the
    degrees ``di[aff_i]`` (from ``old_di``).

    Deferred (in place): ``c_i = sqrt(s_i / d_i)`` at the affected items, ``s`` unchanged
    (created as the degrees before, ``c`` as ones, on the first deferred deletion: O(n_items)
    once). Not deferred (a copy): the affected columns are rewritten with ``d_i``, so
    ``s_i = d_i`` and ``c_i = 1`` there (copies of both arrays; ``None`` stays ``None``)."""
    scale, stored = graph.item_scale, graph.stored_item_degree
    undo = None if scale is None else Undo(aff_i, scale.numpy()[aff_i].copy())
    if deferred:
        if scale is None:
            before = graph.item_degree.numpy().copy()
            before[aff_i] = old_di  # item_degree may already hold the new degrees
            scale, stored = torch.ones(graph.n_items, dtype=torch.float32), torch.from_numpy(before)
        s = stored.numpy()[aff_i].astype(np.float64)
        d = di[aff_i].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale.numpy()[aff_i] = np.where(d > 0, np.sqrt(s / d), 0.0).astype(np.float32)
        return scale, stored, undo
    if scale is None:
        return None, None, None
    scale, stored = scale.clone(), stored.clone()
    scale.numpy()[aff_i] = 1.0
    stored.numpy()[aff_i] = di[aff_i]
    return scale, stored, undo


def compact(graph: BipartiteGraph) -> BipartiteGraph:
    """The same graph rebuilt from its live edges (no zero entries), keeping its item degrees."""
    users, items = graph._edges()
    lo = graph.user_offset
    return build_bipartite(graph.n_users, graph.n_items, users.numpy() + lo, items.numpy(),
                           user_range=(lo, lo + graph.n_local_users),
                           item_degree=graph.item_degree.numpy().astype(np.float64))
