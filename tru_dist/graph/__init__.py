"""Graphs: normalized bipartite adjacency, edge deletion, item-item kNN, partition book."""

from tru_dist.graph.adjacency import BipartiteGraph, build_bipartite
from tru_dist.graph.context import RecGraph, build_rec_graph
from tru_dist.graph.partition import PartitionBook

__all__ = ["BipartiteGraph", "PartitionBook", "RecGraph", "build_bipartite", "build_rec_graph"]
