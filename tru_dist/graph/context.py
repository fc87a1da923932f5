"""The graph argument every backbone takes: ``model.embed(graph)``.

A :class:`RecGraph` bundles what one worker sees of the world: its shard of the
normalized user–item adjacency, the item–item kNN graphs per modality (replicated, they
are small: n_items·k entries), and its contiguous slice of each modality's feature rows.
With W = 1 the shard is everything. The graph after a deletion is just another
``RecGraph`` passed to the same model (PyG style: the graph is an argument, not a member).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tru_dist.data.dataset import RecDataset
from tru_dist.graph.adjacency import (
    BipartiteGraph,
    GraphBefore,
    build_bipartite,
    delete_edges,
    delete_edges_in_place,
)
from tru_dist.graph.knn import knn_graph
from tru_dist.graph.partition import PartitionBook


@dataclass
class RecGraph:
    """One worker's view: ``ui`` adjacency shard, ``knn`` (Â, Âᵀ) per modality, feature slices.

    ``features[m]`` holds rows ``item_range[0] .. item_range[1]-1`` of modality ``m``;
    a model projects its slice and ``collectives.all_gather_rows`` the projection.
    """

    ui: BipartiteGraph
    book: PartitionBook
    rank: int = 0
    knn: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.ui.n_users

    @property
    def n_items(self) -> int:
        return self.ui.n_items

    @property
    def n_local_users(self) -> int:
        return self.ui.n_local_users

    @property
    def user_offset(self) -> int:
        return self.ui.user_offset

    @property
    def item_range(self) -> tuple[int, int]:
        return self.book.item_range(self.rank)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: int(f.shape[1]) for m, f in self.features.items()}

    def to(self, device: torch.device | str) -> RecGraph:
        return RecGraph(
            ui=self.ui.to(device),
            book=self.book,
            rank=self.rank,
            knn={m: (a.to(device), at.to(device)) for m, (a, at) in self.knn.items()},
            features={m: f.to(device) for m, f in self.features.items()},
        )

    def without_edges(self, users: np.ndarray, items: np.ndarray) -> RecGraph:
        """The graph after deleting (global user, item) edges; kNN and features unchanged
        (they depend on item features only, which a user/interaction deletion keeps)."""
        return RecGraph(delete_edges(self.ui, users, items), self.book, self.rank, self.knn, self.features)

    def without_edges_in_place(self, users: np.ndarray, items: np.ndarray) -> tuple[RecGraph, PendingGraph]:
        """:meth:`without_edges` writing over this graph's adjacency arrays
        (:func:`~tru_dist.graph.adjacency.delete_edges_in_place`: this graph is given up) and
        the graph before, restorable on demand."""
        ui, before = delete_edges_in_place(self.ui, users, items)
        return (RecGraph(ui, self.book, self.rank, self.knn, self.features),
                PendingGraph(before, self.book, self.rank, self.knn, self.features))


@dataclass
class PendingGraph:
    """A :class:`RecGraph` whose adjacency an in-place deletion overwrote; :meth:`restore` makes
    it again (one copy of the value arrays) while no later in-place deletion has run."""

    before: GraphBefore
    book: PartitionBook
    rank: int
    knn: dict[str, tuple[torch.Tensor, torch.Tensor]]
    features: dict[str, torch.Tensor]

    def restore(self) -> RecGraph:
        return RecGraph(self.before.restore(), self.book, self.rank, self.knn, self.features)


def build_rec_graph(
    data: RecDataset,
    *,
    knn_k: int = 10,
    book: PartitionBook | None = None,
    rank: int = 0,
    device: torch.device | str = "cpu",
    knn_cache_dir: str | None = None,
    with_knn: bool = True,
) -> RecGraph:
    """Build worker ``rank``'s graph from the dataset's train interactions."""
    book = book or PartitionBook.contiguous(data.n_users, data.n_items, 1)
    users, items = data.train_pairs
    ui = build_bipartite(data.n_users, data.n_items, users, items, user_range=book.user_range(rank))
    lo, hi = book.item_range(rank)
    features = {}
    for m, f in sorted(data.features.items()):
        # a worker may have loaded only its slice (load_dataset(item_range=...)): keep it as is
        local = f[lo:hi] if f.shape[0] == data.n_items else f
        if local.shape[0] != hi - lo:
            raise ValueError(
                f"feature '{m}' has {f.shape[0]} rows; expected {data.n_items} or the slice {hi - lo}"
            )
        features[m] = torch.from_numpy(np.array(local, dtype=np.float32))  # copies only the slice
    knn = {}
    if with_knn and any(f.shape[0] != data.n_items for f in data.features.values()):
        raise ValueError("kNN graphs need full feature matrices: pass with_knn=False and load cached graphs")
    if with_knn:
        knn = {m: knn_graph(f, knn_k, knn_cache_dir) for m, f in sorted(data.features.items())}
    return RecGraph(ui=ui, book=book, rank=rank, knn=knn, features=features).to(device)
