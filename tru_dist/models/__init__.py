"""Backbones behind one contract (see ``base.py``) and a registry by name."""

from tru_dist.models.base import Backbone, BPRBatch, Embeddings, bpr_loss
from tru_dist.models.registry import build_model, model_class, model_names

__all__ = ["BPRBatch", "Backbone", "Embeddings", "bpr_loss", "build_model", "model_class", "model_names"]
