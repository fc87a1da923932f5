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
import functools
from dataclasses import dataclass

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.data.dataset import TRAIN, PendingDataset, RecDataset
from tru_dist.data.requests import ForgetSet
from tru_dist.errors import RequestError
from tru_dist.graph.context import PendingGraph, RecGraph
from tru_dist.timing import Stopwatch

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Deletion:
    """Before and after data and graph, the forget set and the users to reset.

    The data sides are held as built (``before_state``/``after_state``: a
    :class:`~tru_dist.data.dataset.PendingDataset` until something reads ``data_before`` /
    ``data_after``, which copy the kept rows out once); ``graph_before`` of an in-place deletion
    is restored on first use the same way. So a method that never reads them (TRU on a
    whole-user deletion) never pays for them.
    """

    before_state: RecDataset | PendingDataset
    before_graph: RecGraph | PendingGraph
    after_state: RecDataset | PendingDataset
    graph_after: RecGraph
    forget: ForgetSet
    reset_users: np.ndarray
    seconds: float = 0.0
    #: built by ``build_deletion(..., in_place=True)``: the caller gave up its graph (and the
    #: model it passes to a method, which may be updated in place)
    in_place: bool = False

    @functools.cached_property
    def data_before(self) -> RecDataset:
        return self.before_state.materialised

    @functools.cached_property
    def data_after(self) -> RecDataset:
        return self.after_state.materialised

    @functools.cached_property
    def graph_before(self) -> RecGraph:
        g = self.before_graph
        return g.restore() if isinstance(g, PendingGraph) else g

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


def _remove(data: RecDataset | PendingDataset, graph: RecGraph, users: np.ndarray, items: np.ndarray,
            request_ids: list[str] | None = None, in_place: bool = False
            ) -> tuple[RecDataset | PendingDataset, RecGraph, PendingGraph | None]:
    """``data``/``graph`` without the listed pairs (every split; train edges from the graph) and,
    for an in-place removal, the graph before (restorable).

    The data side is pending (nothing copied; O(the listed users' rows)). The dataset's
    ``content_hash``/``store`` provenance is dropped (it describes the stored dataset, not D_r)
    and ``parent_content_hash`` / ``deleted_requests`` recorded.
    """
    rows = data.pair_rows(users, items)
    if not len(rows):
        return data, graph, None
    meta = {k: v for k, v in data.meta.items() if k not in ("content_hash", "store")}
    if "content_hash" in data.meta:
        meta["parent_content_hash"] = data.meta["content_hash"]
    if request_ids is not None:
        meta["deleted_requests"] = list(data.meta.get("deleted_requests", [])) + list(request_ids)
    after = data.without_rows_at(rows, meta)
    ru, ri, rl = data.take(rows)
    train = rl == TRAIN
    if in_place:
        graph_after, before = graph.without_edges_in_place(ru[train], ri[train])
        return after, graph_after, before
    return after, graph.without_edges(ru[train], ri[train]), None


def check_retains_train(
    data: RecDataset | PendingDataset,
    forget: ForgetSet,
    earlier: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Refuse a deletion that leaves D_r no TRAIN pair: ``forget`` plus the ``earlier``
    deleted pairs (the ledger's) remove every train interaction of ``data``.

    Nothing is then left to fit or unlearn against (Retrain would train on nothing, TRU draws
    its retain batches from D_r), so the deletion is a one-line :class:`RequestError`. Callers
    that write an output (``unlearn``'s driver, ``compare``) call it before any training or
    write; :func:`build_deletion` calls it too, before it touches the graph. O(the listed users'
    rows).
    """
    users, items = forget.users, forget.items
    with_earlier = earlier is not None and len(earlier[0]) > 0
    if with_earlier:
        users, items = np.concatenate([earlier[0], users]), np.concatenate([earlier[1], items])
    n_train = data.split_counts[TRAIN]
    gone = int((data.take(data.pair_rows(users, items))[2] == TRAIN).sum())
    if gone and gone >= n_train:
        counted = f"{gone} of {n_train}" + (", with earlier requests" if with_earlier else "")
        raise RequestError(f"this deletion removes every train interaction ({counted}), so nothing is "
                           "left to unlearn against; delete less (fewer requests or a smaller --fraction)")


def users_left_with_only_held_out(
    data: RecDataset | PendingDataset,
    forget: ForgetSet,
    earlier: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Users of ``forget`` that it (with the ``earlier`` deleted pairs) leaves with no TRAIN pair
    but with VALID or TEST rows, ascending.

    The deletion step resets them (Retrain never sees them in training), so they are served as
    new users — yet their held-out rows stay and count in every valid/test metric, where they
    read as a new user's hits. A request that deletes a user's train pairs one by one usually
    means the whole user; ``unlearn`` warns about them (a user request, item empty, deletes every
    split). O(the forget set's users' rows)."""
    users, items = forget.users, forget.items
    if earlier is not None and len(earlier[0]):
        users, items = np.concatenate([earlier[0], users]), np.concatenate([earlier[1], items])
    # only users this batch takes a train pair from (a cold-start user losing a test row had none)
    rows = data.rows_of_users(np.unique(forget.train_users))
    kept = ~np.isin(rows, data.pair_rows(users, items))
    u, _, labels = data.take(rows[kept])
    return np.setdiff1d(np.unique(u[labels != TRAIN]), np.unique(u[labels == TRAIN]))


def build_deletion(
    data: RecDataset | PendingDataset,
    graph: RecGraph,
    forget: ForgetSet,
    *,
    earlier: tuple[np.ndarray, np.ndarray] | None = None,
    reset: bool = True,
    in_place: bool = False,
) -> Deletion:
    """The deletion step for ``forget`` on ``data``/``graph`` (a shard's, at W > 1).

    ``earlier``: (users, items) deleted by earlier requests (the ledger's); they are removed
    from the before-state first. ``reset``: whether fully deleted users are reset (the
    ``unlearn.reset_deleted_users`` switch — the same for every method).

    ``in_place=True`` is for a caller that serves a stream of requests and keeps only the
    latest state: ``graph``'s adjacency arrays are overwritten (no copy of them), and the model
    the caller then hands to a method may be updated in place (a method that makes no gradient
    step returns it with the deleted users' rows reset instead of a copy). The graph before is
    restored on demand (``graph_before``) until the next in-place deletion. With it and the
    pending data sides, a whole-user deletion costs O(the deleted users' rows and the entries
    whose normalisation changes), not O(the graph).

    A deletion that leaves no train pair is refused first (:func:`check_retains_train`) — in one
    process only: a shard holds its own users' rows, and one that loses them all is not a
    deletion of everything (the driver checked the whole data before any worker started).
    """
    if not collectives.is_distributed():
        check_retains_train(data, forget, earlier)
    with Stopwatch() as sw:
        data_before, graph_before = data, graph
        if earlier is not None and len(earlier[0]):
            data_before, graph_before, _ = _remove(data, graph, earlier[0], earlier[1], in_place=in_place)
        data_after, graph_after, pending = _remove(data_before, graph_before, forget.users, forget.items,
                                                   request_ids=list(forget.request_ids), in_place=in_place)
        users = np.asarray(forget.removed_users, dtype=np.int64) if reset else _EMPTY
    return Deletion(data_before, pending if pending is not None else graph_before, data_after, graph_after,
                    forget, users, sw.seconds, in_place=in_place)


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


def start_model(model, deletion: Deletion, seed: int, *, reuse: bool = False):
    """The parameters every approximate method starts from: a deep copy of ``model`` on the
    after-graph's device with ``deletion.reset_users`` re-drawn. ``noop`` is exactly this.

    ``reuse``: for an in-place deletion (``deletion.in_place``) whose method makes no gradient
    step, reset the rows in ``model`` itself instead of copying every table (0.1 s for a 1M-user
    model)."""
    device = deletion.graph_after.ui.norm.device
    if reuse and deletion.in_place and next(model.parameters()).device == device:
        work = model
    else:
        work = copy.deepcopy(model).to(device)
    reset_users(work, deletion.local_reset_users(), deletion.graph_after.user_offset, seed)
    work.eval()
    return work
