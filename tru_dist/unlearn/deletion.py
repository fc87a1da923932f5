"""The deletion step: one object, built once, that every method, compare, the sweeps, the
shard trials, the audits and the ledger start from (DESIGN §5, "the deletion step").

:func:`build_deletion` turns (data, graph, forget set[, pairs deleted earlier]) into a
:class:`Deletion`:

* ``data_before`` / ``graph_before`` — what the model to unlearn was last fitted to (the
  original minus every pair deleted by earlier requests);
* ``data_after`` / ``graph_after`` — D_r = D_before \\ D_f and its graph: D_f's train edges
  dropped and every affected degree renormalised (``RecGraph.without_edges``). Item–item kNN
  graphs depend on item features only, which no regime deletes, so they carry over;
* ``forget`` — D_f, the pairs this request batch deletes;
* ``reset_users`` — global ids of users whose whole train history is gone (Retrain never
  sees them). Every approximate method starts from the original parameters with these
  users' ID rows re-drawn (:func:`reset_users`, one generator per user seeded by
  (seed, global user id), so a row does not depend on sharding) and its optimizer state
  dropped. A user with no edges is served from its own ID row alone, so without the reset
  every approximate method would keep serving the deleted user's trained vector. The
  switch ``unlearn.reset_deleted_users`` turns the reset off *for every method* (the
  ablation that shows what the reset alone does);
* ``seconds`` — wall time of building it (CUDA synchronised). It is part of every
  method's end-to-end time: see :meth:`tru_dist.unlearn.base.Method.unlearn`.

Nothing here trains or writes files; the ledger writes receipts once a model is unlearned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch

from tru_dist.data.dataset import TRAIN, RecDataset
from tru_dist.data.requests import ForgetSet
from tru_dist.graph.context import RecGraph
from tru_dist.timing import Stopwatch

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Deletion:
    """Before and after data and graph, the forget set and the users to reset."""

    data_before: RecDataset
    graph_before: RecGraph
    data_after: RecDataset
    graph_after: RecGraph
    forget: ForgetSet
    reset_users: np.ndarray
    seconds: float = 0.0

    @property
    def n_forget_train(self) -> int:
        return len(self.forget)

    def local_reset_users(self) -> np.ndarray:
        """``reset_users`` held by this shard, as local row ids."""
        lo, n = self.graph_after.user_offset, self.graph_after.n_local_users
        u = np.asarray(self.reset_users, dtype=np.int64)
        return u[(u >= lo) & (u < lo + n)] - lo

    def summary(self) -> dict:
        return {**self.forget.summary(), "n_reset_users": int(len(self.reset_users)),
                "deletion_seconds": self.seconds}


def _remove(data: RecDataset, graph: RecGraph, users: np.ndarray, items: np.ndarray,
            request_ids: list[str] | None = None) -> tuple[RecDataset, RecGraph]:
    """``data``/``graph`` without the listed pairs (every split; train edges from the graph).

    The dataset's ``content_hash``/``store`` provenance is dropped (it describes the stored
    dataset, not D_r) and ``parent_content_hash`` / ``deleted_requests`` recorded.
    """
    present = data.pair_mask(users, items)
    if not present.any():
        return data, graph
    after = data.without_rows(present)
    meta = {k: v for k, v in after.meta.items() if k not in ("content_hash", "store")}
    if "content_hash" in data.meta:
        meta["parent_content_hash"] = data.meta["content_hash"]
    if request_ids is not None:
        meta["deleted_requests"] = list(data.meta.get("deleted_requests", [])) + list(request_ids)
    after = replace(after, meta=meta)
    train = data.labels[present] == TRAIN
    return after, graph.without_edges(data.users[present][train], data.items[present][train])


def build_deletion(
    data: RecDataset,
    graph: RecGraph,
    forget: ForgetSet,
    *,
    earlier: tuple[np.ndarray, np.ndarray] | None = None,
    reset: bool = True,
) -> Deletion:
    """The deletion step for ``forget`` on ``data``/``graph`` (a shard's, at W > 1).

    ``earlier``: (users, items) deleted by earlier requests (the ledger's); they are removed
    from the before-state first. ``reset``: whether fully deleted users are reset (the
    ``unlearn.reset_deleted_users`` switch — the same for every method).
    """
    with Stopwatch() as sw:
        data_before, graph_before = data, graph
        if earlier is not None and len(earlier[0]):
            data_before, graph_before = _remove(data, graph, earlier[0], earlier[1])
        data_after, graph_after = _remove(data_before, graph_before, forget.users, forget.items,
                                          request_ids=list(forget.request_ids))
        users = np.asarray(forget.removed_users, dtype=np.int64) if reset else _EMPTY
    return Deletion(data_before, graph_before, data_after, graph_after, forget, users, sw.seconds)


def user_seed(seed: int, user: int) -> int:
    """The seed of one user's fresh rows: a function of (seed, global user id) only."""
    return int(np.random.SeedSequence([int(seed), int(user)]).generate_state(1, dtype=np.uint64)[0])


@torch.no_grad()
def reset_users(model, local_users: np.ndarray, offset: int, seed: int) -> None:
    """``model.reset_user_rows`` user by user, each with a generator seeded by
    :func:`user_seed` — so a user's fresh row does not depend on which shard holds it."""
    for u in np.asarray(local_users, dtype=np.int64):
        gen = torch.Generator().manual_seed(user_seed(seed, int(u) + offset))
        model.reset_user_rows(torch.tensor([int(u)]), generator=gen)


def start_model(model, deletion: Deletion, seed: int):
    """The parameters every approximate method starts from: a deep copy of ``model`` on the
    after-graph's device with ``deletion.reset_users`` re-drawn. ``noop`` is exactly this."""
    work = copy.deepcopy(model).to(deletion.graph_after.ui.norm.device)
    reset_users(work, deletion.local_reset_users(), deletion.graph_after.user_offset, seed)
    work.eval()
    return work
