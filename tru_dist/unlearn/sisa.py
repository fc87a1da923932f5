"""sisa: RecEraser-style sharded training; unlearning retrains only the affected shards.

Users are split into S = ``unlearn.sisa_shards`` shards by a permutation seeded with
``train.seed`` (balanced sizes; RecEraser balances clusters instead — a simplification).
Shard s trains its own sub-model with :func:`tru_dist.train.trainer.fit` on the
interactions of its users only (every split, so each shard early-stops on its own valid
pairs), with the run's config. Deleting data retrains, from scratch and with the same
seed, exactly the shards holding a user of a deleted interaction; every other shard is
copied unchanged — exact unlearning, at a fraction of the cost of Retrain.

Aggregation (how the ensemble scores): a user is served by the sub-model of its own
shard, s_ui = <e_u^{(s(u))}, e_i^{(s(u))}>. With user partitioning, the other S − 1 sub-models
never saw u (its rows there are untrained initialisations), so averaging their scores in
(plain SISA's vote) would add S − 1 noise terms; own-shard routing is the average with
weight 1 on the only informed model. It is written as ONE inner product over
concatenated embeddings:

    E_u = [0, …, e_u^{(s(u))}, …, 0],   E_i = [e_i^{(1)}, …, e_i^{(S)}],   <E_u, E_i> = s_ui,

so :meth:`SisaEnsemble.embed` returns an ordinary ``Embeddings`` and every evaluator works
unchanged: ``evaluate(ensemble, graph_after, data_after, "test", ks)`` (the ``graph``
argument is ignored by the ensemble — each shard propagates on its own shard graph; the
evaluator still uses it for the user range, so pass the W = 1 graph of the same data).
SISA runs in one process (W = 1).

``compare`` can train the ensemble once per seed and reuse it: ``SisaEnsemble.fit(data,
cfg)`` then ``ensemble.unlearn(forget, data_after, cfg)``. The registry entry accepts either
a ``SisaEnsemble`` as ``model`` or an ordinary trained model, in which case the ensemble is
first trained on D = D_r ∪ D_f (reported as ``stats["ensemble_train_seconds"]``, NOT in
``seconds``, which is the unlearning: the retraining of the affected shards).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.errors import ConfigError
from tru_dist.graph.context import RecGraph
from tru_dist.models.base import Embeddings
from tru_dist.unlearn.base import Stopwatch, UnlearnResult


def shard_users(n_users: int, n_shards: int, seed: int) -> np.ndarray:
    """Shard id of every user: a seeded permutation cut into ``n_shards`` balanced parts."""
    if n_shards < 1 or n_shards > n_users:
        raise ConfigError(f"unlearn.sisa_shards must be in 1..{n_users}, got {n_shards}")
    order = np.random.default_rng(seed).permutation(n_users)
    shard = np.empty(n_users, dtype=np.int64)
    shard[order] = np.arange(n_users) * n_shards // n_users
    return shard


def shard_data(data: RecDataset, shard_of_user: np.ndarray, s: int) -> RecDataset:
    """The rows of ``data`` whose user is in shard ``s`` (ids keep their meaning)."""
    keep = shard_of_user[data.users] == s
    return RecDataset(data.n_users, data.n_items, data.users[keep], data.items[keep], data.labels[keep],
                      data.features, {**data.meta, "sisa_shard": s})


def _fit(cfg: Config, data: RecDataset):
    from tru_dist.train.trainer import fit

    model, graph, result = fit(cfg, data)
    model.eval()
    return model, graph, result


class SisaEnsemble(nn.Module):
    """S shard sub-models, their shard graphs, and the user → shard map."""

    def __init__(self, models: list[nn.Module], graphs: list[RecGraph], shard_of_user: np.ndarray):
        super().__init__()
        self.shards = nn.ModuleList(models)
        self.graphs = list(graphs)
        self.shard_of_user = np.asarray(shard_of_user, dtype=np.int64)

    @classmethod
    def fit(cls, data: RecDataset, cfg: Config) -> SisaEnsemble:
        """Train every shard's sub-model on its users' interactions (named ``fit``, not
        ``train``, which ``nn.Module`` reserves for the train/eval mode switch)."""
        shard_of_user = shard_users(data.n_users, cfg.unlearn.sisa_shards, cfg.train.seed)
        models, graphs = [], []
        for s in range(cfg.unlearn.sisa_shards):
            model, graph, _ = _fit(cfg, shard_data(data, shard_of_user, s))
            models.append(model)
            graphs.append(graph)
        return cls(models, graphs, shard_of_user)

    def affected_shards(self, forget) -> list[int]:
        """Shards holding a user of any deleted interaction."""
        users = np.asarray(forget.users, dtype=np.int64)
        return sorted(int(s) for s in np.unique(self.shard_of_user[users]))

    def unlearn(self, forget, data_after: RecDataset, cfg: Config) -> tuple[SisaEnsemble, dict[str, Any]]:
        """A new ensemble: affected shards retrained on their D_r part, the others copied."""
        affected = set(self.affected_shards(forget))
        models, graphs, epochs = [], [], {}
        for s, (model, graph) in enumerate(zip(self.shards, self.graphs, strict=True)):
            if s in affected:
                model, graph, result = _fit(cfg, shard_data(data_after, self.shard_of_user, s))
                epochs[s] = result.epochs
            else:
                model, graph = copy.deepcopy(model), graph
            models.append(model)
            graphs.append(graph)
        stats = {"shards": len(self.shards), "retrained_shards": sorted(affected),
                 "retrained_fraction": len(affected) / len(self.shards), "retrain_epochs": epochs}
        return SisaEnsemble(models, graphs, self.shard_of_user), stats

    def embed(self, graph: RecGraph | None = None) -> Embeddings:
        """Concatenated embeddings whose inner product is the own-shard score (``graph`` ignored)."""
        users, items = [], []
        for s, (model, g) in enumerate(zip(self.shards, self.graphs, strict=True)):
            emb = model.embed(g)
            own = torch.from_numpy(self.shard_of_user == s).to(emb.user.device)
            users.append(emb.user * own[:, None].to(emb.user.dtype))
            items.append(emb.item)
        return Embeddings(torch.cat(users, dim=1), torch.cat(items, dim=1))


def original_data(data_after: RecDataset, forget) -> RecDataset:
    """D = D_r ∪ D_f (rows sorted by (user, item); features and meta of D_r)."""
    users = np.concatenate([data_after.users, forget.users]).astype(np.int64)
    items = np.concatenate([data_after.items, forget.items]).astype(np.int64)
    labels = np.concatenate([data_after.labels, forget.labels]).astype(data_after.labels.dtype)
    order = np.lexsort((items, users))
    return RecDataset(data_after.n_users, data_after.n_items, users[order], items[order], labels[order],
                      data_after.features, dict(data_after.meta))


def unlearn(model, deletion, cfg: Config) -> UnlearnResult:
    """Registry entry: see the module docstring for what ``model`` may be."""
    data_after, forget = deletion.data_after, deletion.forget
    if deletion.graph_after.book.world_size > 1:
        raise ConfigError("sisa runs in a single process; use dist.workers=1 for it")
    stats: dict[str, Any] = {}
    if isinstance(model, SisaEnsemble):
        ensemble = model
    else:
        with Stopwatch() as sw_train:
            ensemble = SisaEnsemble.fit(deletion.data_before, cfg)
        stats["ensemble_train_seconds"] = sw_train.seconds
    with Stopwatch() as sw:
        new, more = ensemble.unlearn(forget, data_after, cfg)
    stats.update(more)
    return UnlearnResult(new, stats, sw.seconds)
