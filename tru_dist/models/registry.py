"""Model registry: name -> backbone class (RecBole-style ``--model NAME``)."""

from __future__ import annotations

import importlib

from tru_dist.config import ModelConfig
from tru_dist.errors import ConfigError
from tru_dist.models.base import Backbone

_MODELS = {
    "lightgcn": "tru_dist.models.lightgcn:LightGCN",
    "mgcn": "tru_dist.models.mgcn:MGCN",
    "miggt": "tru_dist.models.miggt:MIGGT",
}


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_class(name: str) -> type[Backbone]:
    key = name.lower().replace("-", "")
    if key not in _MODELS:
        raise ConfigError(f"unknown model '{name}' (choose one of: {', '.join(model_names())})")
    module, cls = _MODELS[key].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(cfg: ModelConfig, graph, seed: int = 0) -> Backbone:
    """Instantiate ``cfg.name`` for this worker's graph with seeded initial parameters.

    The seed is set right before construction so the same (config, seed) gives the same
    initial parameters on every worker and every run.
    """
    cls = model_class(cfg.name)
    torch_seed(seed)
    lo = graph.user_offset
    return cls(graph.n_users, graph.n_items, graph.feature_dims, cfg, (lo, lo + graph.n_local_users))


def torch_seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
