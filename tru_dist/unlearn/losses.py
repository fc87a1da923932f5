"""Loss terms shared by the approximate unlearning methods.

For a forget pair (u, i) ∈ D_f (a deleted TRAIN interaction) with a sampled negative j
(an item u had no train interaction with), s_ui = <e_u, e_i>:

* reverse BPR (MMRecUn):  Σ softplus(s_ui − s_uj)·scale = Σ −log σ(s_uj − s_ui)·scale.
  Its gradient w.r.t. s_ui is +σ(s_ui − s_uj) > 0, so a descent step LOWERS s_ui and raises
  s_uj — the deleted item is pushed below a never-seen one. (The sign matters: writing
  softplus(s_uj − s_ui) there is ordinary BPR, which re-learns the deletion; one public
  implementation does exactly that.)
* gradient ascent:        −Σ softplus(s_uj − s_ui)·scale = −BPR on D_f (descent on it
  ascends BPR).
* retained data:          ``model.loss(batch, graph, emb)`` — BPR + the model's L2 and
  auxiliary terms on a D_r batch, as in training.

``scale`` = 1/|global batch|, so the sum over shards is the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_scores(user_vecs: torch.Tensor, item_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_ui, s_uj) for rows of user vectors (already gathered per pair)."""
    return (user_vecs * item_emb[pos]).sum(-1), (user_vecs * item_emb[neg]).sum(-1)


def reverse_bpr_terms(s_ui: torch.Tensor, s_uj: torch.Tensor) -> torch.Tensor:
    """Per-pair softplus(s_ui − s_uj): minimised by pushing the deleted item i below j."""
    return F.softplus(s_ui - s_uj)


def reverse_bpr_loss(s_ui: torch.Tensor, s_uj: torch.Tensor, scale: float) -> torch.Tensor:
    """Σ softplus(s_ui − s_uj)·scale (MMRecUn's forget term)."""
    return reverse_bpr_terms(s_ui, s_uj).sum() * scale


def ascent_loss(s_ui: torch.Tensor, s_uj: torch.Tensor, scale: float) -> torch.Tensor:
    """−Σ softplus(s_uj − s_ui)·scale: minimising it maximises BPR on D_f."""
    return -F.softplus(s_uj - s_ui).sum() * scale
