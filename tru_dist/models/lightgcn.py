"""LightGCN (He et al., SIGIR 2020): the ID-only reference backbone.

e^{(0)} = ID embeddings; e_u^{(l+1)} = Σ_i R̂_ui e_i^{(l)}, e_i^{(l+1)} = Σ_u R̂_ui e_u^{(l)};
final e = mean_{l=0..L} e^{(l)}. No feature transforms, no non-linearity.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tru_dist import comm as collectives
from tru_dist.graph.blocks import graph_neighbourhood, light_blocks
from tru_dist.models.base import Backbone, Embeddings, Rows, xavier_table


def light_propagate(
    graph, user0: torch.Tensor, item0: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over layers 0..L of LightGCN propagation on the user–item graph (shard-aware)."""
    users, items = [user0], [item0]
    u, i = user0, item0
    for _ in range(n_layers):
        u, i = graph.ui.users_from_items(i), graph.ui.items_from_users(u)
        users.append(u)
        items.append(i)
    return torch.stack(users).mean(0), torch.stack(items).mean(0)


class LightGCN(Backbone):
    name = "lightgcn"
    requires = "none"
    mode_free_forward = True  # no dropout or sampling in its forward

    def __init__(self, n_users, n_items, feature_dims, cfg, user_range=None):
        super().__init__(n_users, n_items, feature_dims, cfg, user_range)
        self.user_emb = self.user_table(cfg.dim)
        self.item_emb = xavier_table(n_items, cfg.dim)

    def embed(self, graph) -> Embeddings:
        u, i = light_propagate(graph, self.user_emb, self.item_emb, self.cfg.n_layers)
        return Embeddings(u, i)

    def embed_targets(self, graph, users, items, *, fanout=0, generator=None) -> Embeddings:
        """The targets' final embeddings from their ``n_layers``-hop blocks (:mod:`tru_dist.graph.blocks`):
        exact for ``fanout = 0``. Sharded (W > 1) graphs take the full path."""
        if collectives.is_distributed():
            return super().embed_targets(graph, users, items, fanout=fanout, generator=generator)
        hood = graph_neighbourhood(graph.ui, users, items, self.cfg.n_layers,
                                   fanout=fanout, generator=generator)
        u, i = light_blocks(self.user_emb, self.item_emb, hood)
        return Embeddings(Rows(u, hood.users[0]), Rows(i, hood.items[0]))

    def branches(self) -> dict[str, list[nn.Parameter]]:
        return {"id": [self.user_emb, self.item_emb]}

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"user_emb": [self.user_emb], "item_emb": [self.item_emb]}

    def row_tables(self) -> dict[str, tuple[nn.Parameter, Literal["user", "item"]]]:
        return {"user_emb": (self.user_emb, "user"), "item_emb": (self.item_emb, "item")}
