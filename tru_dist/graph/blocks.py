r"""Layered neighbourhood blocks: propagate into a few target nodes only (deletion-local updates).

A step of an unlearning update needs the final embeddings of the users and items of its
batches (a forget batch and a retain batch: a few thousand nodes), not of the whole graph.
With ``L`` propagation layers those depend only on the ``L``-hop neighbourhood of the batch:
unrolling LightGCN, ``e_v^{(l)} = Σ_w (Â^l)_{vw} e_w^{(0)}`` sums over walks of length ``l ≤ L``
from ``v``, and such a walk never leaves the ``L``-ball of ``v``; the edge weights it uses are
the full graph's ``1/\sqrt{d_u d_i}`` (a boundary node has lost edges to the outside, so its
subgraph degree would be wrong). This module builds that neighbourhood as *layered blocks*, the
message-flow graphs of DGL and of PyG's ``NeighborLoader``:

.. math::

    U_0, I_0 = \text{targets}, \qquad
    I_{k+1} = I_k \cup N(U_k), \qquad U_{k+1} = U_k \cup N(I_k),

each depth's node list a prefix of the next one's. Block ``k`` holds the rows of
``R̂`` (users of ``U_k``, columns in ``I_{k+1}``) and of ``R̂ᵀ`` (items of ``I_k``, columns in
``U_{k+1}``) with the full graph's entries ``1/\sqrt{d_u d_i}`` — the degrees of the whole graph,
read off the stored matrix, so nothing is renormalised on the subgraph. LightGCN's layer ``l``
on depth ``L-l`` is then

.. math::

    h_U^{(l)} = B^{U}_{L-l}\, h_I^{(l-1)}, \qquad h_I^{(l)} = B^{I}_{L-l}\, h_U^{(l-1)},
    \qquad h^{(0)} = E^{(0)}[U_L], E^{(0)}[I_L],

and a target's final embedding is ``mean_l h^{(l)}[target]`` (the targets are the first rows
at every depth). Without a fan-out limit this is exactly the full-graph value (tested against
:func:`tru_dist.models.lightgcn.light_propagate`).

*Fan-out* (``fanout = F > 0``): a node with more than ``F`` neighbours keeps ``F`` draws from
them (uniform, with replacement), each weight multiplied by ``deg/F``, so the block's row product
is an unbiased estimate of the full row's (GraphSAGE-style sampling). Hub items (thousands of
users) would otherwise pull most of a large graph into every step: with ``L = 2`` the
neighbourhood of 2,048 random pairs on a 1M-user graph is most of the graph. Nodes with at most
``F`` neighbours are exact. Row lengths count stored entries, including the zero entries of
edges deleted in place (``adjacency.delete_edges``) until the graph is compacted: such a row
may be sampled although it has at most ``F`` live neighbours (still unbiased; exact again
after ``adjacency.compact``).

Everything is torch index arithmetic on the stored CSR (no Python loops over nodes); one call
costs ``O(entries gathered)`` plus two ``n``-long position maps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tru_dist.graph.adjacency import BipartiteGraph, csr_row_entries


class Block(NamedTuple):
    """One depth: sparse ``(|dst|, |src|)`` COO matrices for users (from items) and items (from users)."""

    users_from_items: torch.Tensor
    items_from_users: torch.Tensor


class Neighbourhood(NamedTuple):
    """``users[k]`` / ``items[k]``: node ids at depth ``k`` (``k = 0..L``, each a prefix of the
    next; depth 0 = the targets); ``blocks[k]`` maps depth ``k+1`` onto depth ``k``."""

    users: list[torch.Tensor]
    items: list[torch.Tensor]
    blocks: list[Block]


def sample_rows(
    csr: torch.Tensor, rows: torch.Tensor, fanout: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries of the given CSR rows as ``(position in rows, column, value)``.

    With ``fanout = F > 0`` a row with more than ``F`` entries contributes ``F`` entries drawn
    uniformly *with replacement*, each with its value times ``deg/F`` (an unbiased estimate of
    the row's product); rows with at most ``F`` entries are kept whole (exact). Drawing offsets
    directly costs ``O(rows · F)``: the long rows of hub items are never expanded.
    """
    crow = csr.crow_indices()
    rows = rows.to(crow.device)
    lengths = crow[rows + 1] - crow[rows]
    if fanout <= 0 or rows.numel() == 0 or int(lengths.max()) <= fanout:
        pos, entry = csr_row_entries(csr, rows)
        return pos, csr.col_indices()[entry], csr.values()[entry]
    short = torch.nonzero(lengths <= fanout).reshape(-1)
    long = torch.nonzero(lengths > fanout).reshape(-1)
    pos_s, entry_s = csr_row_entries(csr, rows[short])
    pos_s = short[pos_s]
    draws = torch.rand((len(long), fanout), generator=generator, dtype=torch.float64).to(crow.device)
    deg = lengths[long]
    offsets = (draws * deg[:, None].to(torch.float64)).long().clamp(max=(deg - 1)[:, None])
    entry_l = (crow[rows[long]][:, None] + offsets).reshape(-1)
    pos_l = long.repeat_interleave(fanout)
    scale = (deg.to(csr.values().dtype) / fanout).repeat_interleave(fanout)
    pos = torch.cat([pos_s, pos_l])
    entry = torch.cat([entry_s, entry_l])
    vals = csr.values()[entry]
    vals = torch.cat([vals[: len(entry_s)], vals[len(entry_s):] * scale])
    order = torch.argsort(pos, stable=True)  # row order, as the exact path returns
    return pos[order], csr.col_indices()[entry][order], vals[order]


class _Extender:
    """Grows a prefix-ordered node list: positions of known ids, new ids appended in id order."""

    def __init__(self, n: int, seeds: torch.Tensor):
        self.where = torch.full((n,), -1, dtype=torch.int64)
        self.ids = seeds
        self.where[seeds] = torch.arange(len(seeds))

    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        new = torch.unique(ids[self.where[ids] < 0])
        self.where[new] = torch.arange(len(self.ids), len(self.ids) + len(new))
        self.ids = torch.cat([self.ids, new])
        return self.ids

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        return self.where[ids]


def neighbourhood(
    norm: torch.Tensor,
    norm_t: torch.Tensor,
    target_users: torch.Tensor,
    target_items: torch.Tensor,
    n_layers: int,
    *,
    fanout: int = 0,
    generator: torch.Generator | None = None,
    item_scale: torch.Tensor | None = None,
) -> Neighbourhood:
    """The layered blocks of ``n_layers`` propagation steps into the targets (module docstring).

    Args:
        norm, norm_t: ``R̂`` (users × items) and its transpose as CSR (``BipartiteGraph.norm``).
        target_users, target_items: distinct ids (either may be empty); they are the first rows.
        fanout: at most this many neighbours per node and depth (0 = all: exact).
        item_scale: the graph's deferred item-column factor ``c`` (``BipartiteGraph.item_scale``):
            the blocks hold ``R̃ · diag(c)`` = ``R̂``; ``None`` when ``norm`` is ``R̂`` itself.
    """
    n_users, n_items = int(norm.shape[0]), int(norm.shape[1])
    tu = torch.as_tensor(target_users, dtype=torch.int64).reshape(-1).cpu()
    ti = torch.as_tensor(target_items, dtype=torch.int64).reshape(-1).cpu()
    if len(torch.unique(tu)) != len(tu) or len(torch.unique(ti)) != len(ti):
        raise ValueError("target ids must be distinct")
    users, items = _Extender(n_users, tu), _Extender(n_items, ti)
    depth_u, depth_i, raw = [tu], [ti], []
    for _ in range(n_layers):
        cur_u, cur_i = depth_u[-1], depth_i[-1]
        pu, cu, vu = sample_rows(norm, cur_u.to(norm.device), fanout, generator)
        pi, ci, vi = sample_rows(norm_t, cur_i.to(norm_t.device), fanout, generator)
        if item_scale is not None:  # user rows: scale by their column (item); item rows: by their row
            vu = vu * item_scale.to(vu.device)[cu]
            vi = vi * item_scale.to(vi.device)[cur_i.to(vi.device)[pi]]
        depth_i.append(items.extend(cu.cpu()).clone())
        depth_u.append(users.extend(ci.cpu()).clone())
        raw.append((pu, cu, vu, pi, ci, vi))
    blocks = []
    for k, (pu, cu, vu, pi, ci, vi) in enumerate(raw):
        dev = norm.device
        bu = torch.sparse_coo_tensor(torch.stack([pu, items.positions(cu.cpu()).to(dev)]), vu,
                                     (len(depth_u[k]), len(depth_i[k + 1])))
        bi = torch.sparse_coo_tensor(torch.stack([pi, users.positions(ci.cpu()).to(dev)]), vi,
                                     (len(depth_i[k]), len(depth_u[k + 1])))
        blocks.append(Block(bu.coalesce(), bi.coalesce()))
    return Neighbourhood(depth_u, depth_i, blocks)


def graph_neighbourhood(
    ui: BipartiteGraph,
    target_users: torch.Tensor,
    target_items: torch.Tensor,
    n_layers: int,
    *,
    fanout: int = 0,
    generator: torch.Generator | None = None,
) -> Neighbourhood:
    """:func:`neighbourhood` of a graph's R̂ — its stored values with its deferred item scale
    applied — refused (``StaleGraphError``) for a graph given up to an in-place deletion."""
    ui.check_current()
    return neighbourhood(ui.norm, ui.norm_t, target_users, target_items, n_layers, fanout=fanout,
                         generator=generator, item_scale=ui.item_scale)


def light_blocks(user0: torch.Tensor, item0: torch.Tensor, hood: Neighbourhood
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN through the blocks: ``(final users, final items)`` of the targets (mean over layers
    ``0..L``, rows in target order). Differentiable in ``user0`` / ``item0`` (only the rows of
    depth ``L`` are read)."""
    n_layers = len(hood.blocks)
    dev = user0.device
    h_u = user0[hood.users[n_layers].to(dev)]
    h_i = item0[hood.items[n_layers].to(dev)]
    n_tu, n_ti = len(hood.users[0]), len(hood.items[0])
    sum_u, sum_i = h_u[:n_tu], h_i[:n_ti]
    for depth in range(n_layers - 1, -1, -1):
        block = hood.blocks[depth]
        h_u, h_i = (torch.sparse.mm(block.users_from_items, h_i),
                    torch.sparse.mm(block.items_from_users, h_u))
        sum_u, sum_i = sum_u + h_u[:n_tu], sum_i + h_i[:n_ti]
    scale = 1.0 / (n_layers + 1)
    return sum_u * scale, sum_i * scale


def square_blocks(a: torch.Tensor, targets: torch.Tensor, hops: int
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The same layering for one square CSR matrix (an item–item kNN graph ``Â``): node lists
    ``nodes[k]`` (``k = 0..hops``, prefixes, ``nodes[0] = targets``) and COO blocks
    ``blocks[k]`` of shape ``(|nodes[k]|, |nodes[k+1]|)``, so that ``Â^hops x`` on the targets is
    ``blocks[0] · … · blocks[hops-1] · x[nodes[hops]]`` (:func:`propagate_square`)."""
    t = torch.as_tensor(targets, dtype=torch.int64).reshape(-1).cpu()
    nodes = _Extender(int(a.shape[0]), t)
    depth, raw = [t], []
    for _ in range(hops):
        p, c, v = sample_rows(a, depth[-1].to(a.device), 0)  # kNN rows have k entries: no fan-out
        depth.append(nodes.extend(c.cpu()).clone())
        raw.append((p, c, v))
    blocks = [torch.sparse_coo_tensor(torch.stack([p, nodes.positions(c.cpu()).to(a.device)]), v,
                                      (len(depth[k]), len(depth[k + 1]))).coalesce()
              for k, (p, c, v) in enumerate(raw)]
    return depth, blocks


def propagate_square(x_deepest: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """``blocks[0] · … · blocks[-1] · x_deepest``: the targets' rows of ``Â^hops x`` (differentiable)."""
    h = x_deepest
    for block in reversed(blocks):
        h = torch.sparse.mm(block, h)
    return h
