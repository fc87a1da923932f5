r"""LightGCN embeddings of a few target nodes from their L-hop neighbourhood only.

A deletion of (user, item) pairs changes the graph only near the deleted pairs, so a
deletion-local update needs the final embeddings of a handful of users and items, not of
the whole graph. This module computes them exactly from a small subgraph.

The maths
---------
LightGCN (``tru_dist.models.lightgcn.light_propagate``) propagates on the bipartite graph with
the symmetric-normalised interaction matrix of the *full* graph (``tru_dist.graph.adjacency``)

.. math::

    \hat R_{ui} = \frac{R_{ui}}{\sqrt{d_u\, d_i}}, \qquad
    e_u^{(l+1)} = \sum_i \hat R_{ui}\, e_i^{(l)}, \qquad
    e_i^{(l+1)} = \sum_u \hat R_{ui}\, e_u^{(l)}, \qquad
    e = \frac{1}{L+1} \sum_{l=0}^{L} e^{(l)},

with ``d_u``, ``d_i`` the degrees (0-degree nodes get weight 0, as in ``build_bipartite``).

*Why the L-hop neighbourhood suffices.* Unrolling the recursion,
``e_v^{(l)} = Σ_w (Â^l)_{vw} e_w^{(0)}`` where ``Â = [[0, R̂], [R̂ᵀ, 0]]`` and ``(Â^l)_{vw}`` is a
sum over walks of length ``l`` from ``v`` to ``w`` of products of edge weights. A walk of length
``l ≤ L`` that starts at a target stays within distance ``L`` of it, and every step it takes
leaves a node at distance ``≤ L-1`` (step ``k`` leaves the walk's node ``k-1``, counting the target
as node 0, which is at distance ``≤ k-1``).
So the final embedding of a target depends only on

* the layer-0 embeddings of nodes within ``L`` hops (the ``L``-ball), and
* the weights of edges with at least one endpoint within ``L-1`` hops (the ``(L-1)``-ball).

Propagating ``L`` layers over exactly those nodes and edges gives every target's ``e^{(l)}``,
``l = 0..L``, exactly; nodes further out are not needed. (Non-target nodes of the subgraph get
wrong values at their outer layers, which is why only the targets are returned.) An edge
joining two nodes both at distance exactly ``L`` is inside the ``L``-hop subgraph but is not
used: it only feeds layers ``≥ 1`` of distance-``L`` nodes, and only their layer 0 reaches a
target within ``L`` steps.

*Why the full-graph degrees are needed.* ``R̂_{ui}`` divides by the degrees in the whole graph.
A node on the boundary of the subgraph has lost edges to nodes outside it; normalising with its
subgraph degree would change ``R̂`` on the edges that are kept and so change the targets'
embeddings. The edges outside are never visited, but their count is, through ``d_u`` and ``d_i``,
which the caller passes in (``BipartiteGraph.user_degree`` / ``item_degree``, or counts over all
shards).

Node numbering follows PyG for a bipartite graph stored as one graph: users are nodes
``0 .. n_users-1``, items ``n_users .. n_users+n_items-1`` (see :func:`to_pyg_edge_index`).
This module uses torch only (no loops over edges) and depends on nothing above ``graph``.

Cost: finding the neighbourhood scans the edge list once per hop (``O(L·E)`` cheap integer work);
the floating-point propagation is over the subgraph only. On small dense graphs the ``L``-ball
is most of the graph for ``L ≥ 3`` (LightGCN neighbourhoods grow fast through popular items).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def _index(x: IndexLike, device: torch.device | None = None) -> torch.Tensor:
    """A 1-D int64 tensor of ids (from a tensor, an array or a list)."""
    out = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device)
    if out.numel() == 0:
        return out.reshape(0).to(torch.int64)
    if out.dtype.is_floating_point or out.dtype == torch.bool:
        raise TypeError(f"ids must be integers, got {out.dtype}")
    return out.reshape(-1).to(torch.int64)


def _check_range(name: str, ids: torch.Tensor, n: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise IndexError(f"{name} ids must lie in [0, {n}), got [{int(ids.min())}, {int(ids.max())}]")


def to_pyg_edge_index(edge_users: IndexLike, edge_items: IndexLike, n_users: int) -> torch.Tensor:
    """The undirected ``(2, 2E)`` PyG ``edge_index`` of the bipartite graph (items offset by ``n_users``)."""
    u = _index(edge_users)
    i = _index(edge_items) + n_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def khop_nodes(
    users: IndexLike,
    items: IndexLike,
    edge_users: IndexLike,
    edge_items: IndexLike,
    n_users: int,
    n_items: int,
    hops: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(user_mask, item_mask)`` of every node within ``hops`` hops of the seeds.

    Args:
        users, items: seed user ids and seed item ids (either may be empty).
        edge_users, edge_items: the graph's edges, ``(edge_users[k], edge_items[k])``.
        n_users, n_items: numbers of users and items (lengths of the masks).
        hops: radius, ``≥ 0``; ``0`` gives just the seeds.

    One vectorised pass over the edge list per hop (a breadth-first frontier on both sides).
    """
    if hops < 0:
        raise ValueError(f"hops must be >= 0, got {hops}")
    eu, ei = _index(edge_users), _index(edge_items)
    if eu.shape != ei.shape:
        raise ValueError(f"edge_users and edge_items differ in length: {eu.numel()} vs {ei.numel()}")
    seeds_u, seeds_i = _index(users, eu.device), _index(items, eu.device)
    for name, ids, n in (("user", seeds_u, n_users), ("item", seeds_i, n_items),
                         ("edge user", eu, n_users), ("edge item", ei, n_items)):
        _check_range(name, ids, n)
    user_mask = torch.zeros(n_users, dtype=torch.bool, device=eu.device)
    item_mask = torch.zeros(n_items, dtype=torch.bool, device=eu.device)
    user_mask[seeds_u] = True
    item_mask[seeds_i] = True
    for _ in range(hops):
        from_users = user_mask[eu]  # edges leaving a reached user: their items are reached
        from_items = item_mask[ei]
        item_mask[ei[from_users]] = True  # in place is safe: both hit-lists were taken before
        user_mask[eu[from_items]] = True
    return user_mask, item_mask


class LocalSubgraph(NamedTuple):
    """The nodes and edges that determine the targets' L-layer embeddings.

    ``users`` / ``items``: sorted global ids of the ``L``-ball (targets included); ``edges``:
    positions in the edge list of the edges with an endpoint in the ``(L-1)``-ball.
    """

    users: torch.Tensor
    items: torch.Tensor
    edges: torch.Tensor


def local_subgraph(
    target_users: IndexLike,
    target_items: IndexLike,
    edge_users: IndexLike,
    edge_items: IndexLike,
    n_users: int,
    n_items: int,
    hops: int,
) -> LocalSubgraph:
    """Nodes and edges needed for ``hops`` layers of propagation into the targets (module docstring).

    The edge list must contain every edge of the graph incident to the ``(hops-1)``-ball of the
    targets (the full list always does).
    """
    eu, ei = _index(edge_users), _index(edge_items)
    tu, ti = _index(target_users, eu.device), _index(target_items, eu.device)
    if hops <= 0:
        _check_range("target user", tu, n_users)
        _check_range("target item", ti, n_items)
        edges = torch.zeros(0, dtype=torch.int64, device=eu.device)
    else:
        inner_u, inner_i = khop_nodes(tu, ti, eu, ei, n_users, n_items, hops - 1)
        edges = torch.nonzero(inner_u[eu] | inner_i[ei]).reshape(-1)
    # the L-ball = targets ∪ endpoints of those edges (every node at distance L is a neighbour
    # of one at distance L-1); targets are added explicitly so 0-degree targets are kept
    user_mask = torch.zeros(n_users, dtype=torch.bool, device=eu.device)
    item_mask = torch.zeros(n_items, dtype=torch.bool, device=eu.device)
    user_mask[tu] = True
    item_mask[ti] = True
    user_mask[eu[edges]] = True
    item_mask[ei[edges]] = True
    return LocalSubgraph(
        torch.nonzero(user_mask).reshape(-1), torch.nonzero(item_mask).reshape(-1), edges
    )


class LocalEmbeddings(NamedTuple):
    """Final embeddings of the targets (rows in the order the targets were given) and the
    subgraph they were computed on (``subgraph.edges``: the edges actually propagated over)."""

    users: torch.Tensor
    items: torch.Tensor
    subgraph: LocalSubgraph


def _inv_sqrt(degree: torch.Tensor) -> torch.Tensor:
    degree = degree.to(torch.float64)
    return torch.where(degree > 0, degree.clamp_min(1.0).rsqrt(), torch.zeros_like(degree))


def local_light_embeddings(
    user0: torch.Tensor,
    item0: torch.Tensor,
    edge_users: IndexLike,
    edge_items: IndexLike,
    user_deg: torch.Tensor | np.ndarray,
    item_deg: torch.Tensor | np.ndarray,
    target_users: IndexLike,
    target_items: IndexLike,
    n_layers: int,
    *,
    hops: int | None = None,
) -> LocalEmbeddings:
    """LightGCN's final (mean over layers ``0..n_layers``) embeddings of the targets, exactly.

    Args:
        user0, item0: layer-0 embedding tables, ``(n_users, d)`` and ``(n_items, d)``; gradients
            flow back to the rows the subgraph reads.
        edge_users, edge_items: the graph's edges (the full list, or any superset of the edges
            incident to the ``(n_layers-1)``-ball of the targets).
        user_deg, item_deg: degrees of every user and item in the FULL graph (the normalisation
            ``1/sqrt(d_u d_i)`` must use them for the result to be exact; module docstring).
        target_users, target_items: ids whose embeddings are wanted (either may be empty).
        n_layers: LightGCN's ``L``.
        hops: neighbourhood radius, default ``n_layers`` (the smallest exact one). A larger value
            is exact but wasteful; a smaller one is wrong — exposed so tests can show the radius
            is tight.

    Returns:
        :class:`LocalEmbeddings` with ``users[k]`` the embedding of ``target_users[k]`` and
        ``items[k]`` that of ``target_items[k]``, equal to ``light_propagate`` on the full graph.
    """
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    hops = n_layers if hops is None else hops
    n_users, n_items = int(user0.shape[0]), int(item0.shape[0])
    device = user0.device
    eu, ei = _index(edge_users, device), _index(edge_items, device)
    du = torch.as_tensor(user_deg, device=device).reshape(-1)
    di = torch.as_tensor(item_deg, device=device).reshape(-1)
    if du.numel() != n_users or di.numel() != n_items:
        raise ValueError(f"degrees have {du.numel()} users / {di.numel()} items; the tables have "
                         f"{n_users} / {n_items}")
    tu, ti = _index(target_users, device), _index(target_items, device)
    sub = local_subgraph(tu, ti, eu, ei, n_users, n_items, hops)

    # relabel: subgraph users are 0..nu-1, items 0..ni-1
    nu, ni = int(sub.users.numel()), int(sub.items.numel())
    user_pos = torch.full((n_users,), -1, dtype=torch.int64, device=device)
    item_pos = torch.full((n_items,), -1, dtype=torch.int64, device=device)
    user_pos[sub.users] = torch.arange(nu, device=device)
    item_pos[sub.items] = torch.arange(ni, device=device)
    su, si = eu[sub.edges], ei[sub.edges]
    rows, cols = user_pos[su], item_pos[si]
    weight = (_inv_sqrt(du)[su] * _inv_sqrt(di)[si]).to(user0.dtype)  # full-graph degrees
    r_hat = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (nu, ni)).coalesce()
    r_hat_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), weight, (ni, nu)).coalesce()

    u, i = user0[sub.users], item0[sub.items]
    sum_u, sum_i = u, i
    for _ in range(n_layers):
        u, i = torch.sparse.mm(r_hat, i), torch.sparse.mm(r_hat_t, u)
        sum_u, sum_i = sum_u + u, sum_i + i
    scale = 1.0 / (n_layers + 1)
    return LocalEmbeddings(sum_u[user_pos[tu]] * scale, sum_i[item_pos[ti]] * scale, sub)
