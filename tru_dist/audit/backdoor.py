"""Backdoor audit (DESIGN §6): does a poisoning attack survive unlearning of the fake users?

Fake users (:func:`tru_dist.data.poison.inject_poison`) push target items. The attack
success rate of a model is

    ASR@K = #{(u, t) : t ∈ top-K(u)} / #{(u, t)},

over genuine users u and targets t such that u never interacted with t (any split); each
user's train history is masked from its ranking. Unlearning the fake users should bring
ASR back to what Retrain (trained without them) achieves:

    removal ratio = (ASR_original − ASR_method) / (ASR_original − ASR_retrain),

1 for Retrain and 0 for the untouched original by construction. It is defined only when
the attack measurably worked, i.e. ASR_original − ASR_retrain > ``min_gap``; otherwise
it is NaN (a ratio of two near-zero numbers says nothing).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tru_dist.audit.features import model_embeddings
from tru_dist.data.dataset import RecDataset
from tru_dist.train.evaluate import history_mask, topk

MIN_GAP = 0.01


def attack_success(model, graph, data: RecDataset, targets, users, k: int = 20) -> float:
    """ASR@k (module doc) of ``model`` on ``graph``; ``data`` gives histories (train masked)
    and which (user, target) pairs are excluded as already interacted. NaN if no pair counts."""
    targets = np.asarray(targets, dtype=np.int64)
    users = np.unique(np.asarray(users, dtype=np.int64))
    if len(targets) == 0 or len(users) == 0:
        return float("nan")
    seen = np.isin(data.pair_keys(np.repeat(users, len(targets)), np.tile(targets, len(users))),
                   data.pair_keys(data.users, data.items)).reshape(len(users), len(targets))
    if seen.all():
        return float("nan")
    user_emb, item_emb = model_embeddings(model, graph)
    exclude = history_mask(data, ["train"], graph)
    rows = torch.as_tensor(users - graph.user_offset, device=user_emb.device)
    top = topk(user_emb, item_emb, exclude, k, rows=rows).cpu().numpy()
    hit = (top[:, :, None] == targets[None, None, :]).any(1)
    return float(hit[~seen].mean())


def removal_ratio(asr_orig: float, asr_method: float, asr_retrain: float, min_gap: float = MIN_GAP) -> float:
    """(ASR_orig − ASR_method) / (ASR_orig − ASR_retrain); NaN unless the denominator > ``min_gap``."""
    gap = asr_orig - asr_retrain
    if not (math.isfinite(gap) and math.isfinite(asr_method)) or gap <= min_gap:
        return float("nan")
    return (asr_orig - asr_method) / gap


def removal_note(asr_orig: float, asr_retrain: float, min_gap: float = MIN_GAP) -> str | None:
    """Why the removal ratio is undefined (None when it is defined)."""
    gap = asr_orig - asr_retrain
    if math.isfinite(gap) and gap > min_gap:
        return None
    return (f"removal ratio undefined: ASR_original − ASR_retrain = {gap:.4f} ≤ {min_gap} "
            "(the poison did not measurably raise the targets)")


def poison_targets(data: RecDataset) -> tuple[np.ndarray, np.ndarray]:
    """(targets, genuine users) recorded by ``inject_poison`` in ``data.meta["poison"]``."""
    from tru_dist.errors import DataError

    poison = data.meta.get("poison")
    if not poison:
        raise DataError("the backdoor audit needs poisoned data (meta['poison']); use --regime=poison")
    fake = np.asarray(poison["fake_users"], dtype=np.int64)
    genuine = np.setdiff1d(np.arange(data.n_users, dtype=np.int64), fake)
    return np.asarray(poison["targets"], dtype=np.int64), genuine
