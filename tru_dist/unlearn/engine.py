"""The reverse-update loop shared by reverse_bpr (MMRecUn), grad_ascent, finetune and TRU.

One code path, configured by an :class:`UpdateSpec`, so that "TRU with its three switches
off" and reverse_bpr are the same computation by construction (same seed → bit-identical
parameters), and every ablation differs from it only by the component it switches on.

Every run starts from the shared deletion step (:mod:`tru_dist.unlearn.deletion`): a copy of
the model with the deletion's fully deleted users re-drawn (:func:`~.deletion.start_model`
— what ``noop`` serves). Per call (the caller's model is untouched):

1. *Deleted users* (every method alike, when the deletion resets any): their fresh rows are
   frozen for the rest of the update (Retrain never trains them). Their forget pairs are
   still reversed — that is how their imprint on the shared item side is removed — but
   scored with a constant snapshot of their final embedding taken from the ORIGINAL model
   on the before-graph (the vector that pulled their items up during training), not with
   the random fresh row. The unlearning optimizer is a fresh Adam (``PlainAdam``), so no optimizer state
   of theirs survives.
2. *Isolation statistics* (TRU): one dedicated pass before the first step (after the first
   gate pass when the gate is on: a forget set already on target needs none) — the gradient of
   the mean reverse-BPR term over all of D_f and of the mean retain loss over as many D_r
   pairs (own seeded streams, so switching isolation on does not change the batches the
   loop sees) — gives the Fisher ratios per layer group and the frozen groups; the row
   masks come from the k-hop neighbourhood of D_f on the before-graph.
3. *Epochs* (``unlearn.epochs``) over D_f in global batches of ≈ ``unlearn.batch_size``
   (all equal), each paired with an equally large D_r batch. With the gate on, a gate pass
   over D_f at the start of every epoch computes P_i and stops when mean G < ε.
   Per step: one forward ``emb = model.embed(graph_after)`` — the batches' rows of it
   (``Backbone.embed_rows``) where the backbone computes those for less: MIG-GT's global
   attention runs on the few hundred nodes a step's batches hold, not on all of them (the
   top-K gate, which ranks every item per step, keeps the full tables). Where that forward
   is the full ``embed`` and the backbone's forward is the same in eval mode
   (``Backbone.mode_free_forward``: MGCN, LightGCN), the calibrated gate pass just before
   builds it with autograd on and the step takes it (both through ``Backbone.handed_on_branch``),
   unless a parameter was written in between (a best state put back) or the isolation pass runs
   in between: one forward per epoch, not
   two — MGCN on Scientific, tuning seed 100, 1.06-1.14x per request on interactions 5% and
   1.07-1.13x on items 1% (runs hours apart on a drifting machine), the same gate passes.
   MIG-GT's step draws fresh attention samples, so it takes only the gate pass's ID
   propagation (``Backbone.handed_on_branch``, inside the loop's ``constant_branches``);
       L_f = forget term (reverse BPR, its gated form, or −BPR for gradient ascent),
       L_r = ``model.loss`` on the D_r batch;
   gradients are computed for the *live* parameters only — those of no frozen layer group
   (``torch.autograd.grad``; the backward skips every layer that leads only to frozen ones:
   on MIG-GT with only the ID rows live, the encoders and the transformer's weights).
   Without scaling: ∇(λ_f·L_f + λ_r·L_r); with scaling: g_f = ∇L_f and g_r = ∇L_r separately,
   then per live branch g = λ_r·g_r + λ_f·α_b·g_f (after the optional conflict projection;
   one backward of the sum when a single branch is live, whose α is then 1). Replicated
   gradients are summed over ranks, isolation masks applied (frozen groups get no gradient,
   rows outside the k-hop set and the reset users' rows get zero), Adam step.

Every statistic is a global sum (``collectives.sum_stats``), so W shards decide as one
process would.

*Deletion-local steps* (``unlearn.propagation: local``): the step's forward runs on the forget
and retain batches' neighbourhood only (``Backbone.embed_targets``, :mod:`tru_dist.graph.blocks`;
``unlearn.fanout`` neighbours per node and layer, 0 = all, which gives the full-graph
gradients), so its cost follows the batch, not the graph. Gate passes still rank every item
once per epoch (one no-grad full forward). Falls back to full propagation, saying why in
``stats["propagation_note"]``, for backbones without a neighbourhood forward (MIG-GT: its
global transformer attends to random items), for W > 1 and for the top-K gate.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tru_dist import comm as collectives
from tru_dist.config import Config, GateConfig, IsolationConfig, ScalingConfig
from tru_dist.data.dataset import VALID
from tru_dist.models.base import Backbone, BPRBatch, Embeddings, embed_for
from tru_dist.models.registry import torch_seed
from tru_dist.train.determinism import deterministic_kernels
from tru_dist.train.evaluate import candidate_counts, history_mask, pair_ranks, select_rows
from tru_dist.train.optim import PlainAdam
from tru_dist.train.sampler import BPRSampler
from tru_dist.unlearn import losses
from tru_dist.unlearn.batches import equal_batch_size, forget_batches, retain_stream
from tru_dist.unlearn.deletion import Deletion, start_model
from tru_dist.unlearn.tru import gate as gate_fn
from tru_dist.unlearn.tru import isolation as iso_fn
from tru_dist.unlearn.tru import scaling as scale_fn
from tru_dist.unlearn.tru.reduce import group_sums

_LOG = logging.getLogger("tru_dist.unlearn")

ForgetTerm = Literal["reverse", "ascent", "none"]


@dataclass(frozen=True)
class UpdateSpec:
    """What one run of the loop does. ``None`` for a component = switched off."""

    forget_term: ForgetTerm = "reverse"
    retain: bool = True
    gate: GateConfig | None = None
    scaling: ScalingConfig | None = None
    isolation: IsolationConfig | None = None


class _Loop:
    """State of one run (kept in one object so the step is readable)."""

    def __init__(self, original: Backbone, model: Backbone, deletion: Deletion, cfg: Config,
                 spec: UpdateSpec, start_on_target: bool):
        self.original, self.model, self.deletion, self.cfg, self.spec = original, model, deletion, cfg, spec
        self.start_on_target = start_on_target  # on_target(deletion, spec), decided once by iter_update
        self.graph, self.forget = deletion.graph_after, deletion.forget
        forget, graph = self.forget, self.graph
        self.uc = cfg.unlearn
        self.device = graph.ui.norm.device
        self.lo, self.n_local = graph.user_offset, graph.n_local_users
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.index = {id(p): k for k, p in enumerate(self.params)}
        user_ids = {id(p) for p, kind in model.row_tables().values() if kind == "user"}
        self.sharded = torch.tensor([id(p) in user_ids for p in self.params], dtype=torch.bool)
        self.fu = np.asarray(forget.train_users, dtype=np.int64)
        self.fi = np.asarray(forget.train_items, dtype=np.int64)
        self.snap: torch.Tensor | None = None  # constant user vectors of reset (deleted) users
        self.snap_rows: torch.Tensor | None = None  # local user -> row of snap, -1 if none
        self.frozen_rows: dict[int, torch.Tensor] = {}  # id(param) -> bool mask of updatable rows
        self.frozen_params: set[int] = set()
        self.exclude: torch.Tensor | None = None
        self.exclude_rows: torch.Tensor | None = None  # self.exclude cut to the forget pairs' users
        self.ref_u: torch.Tensor | None = None  # calibrated gate: the reference pairs (local users, items)
        self.n_reference = 0  # ... and how many there are on all ranks (0: no valid split)
        self.ref_i: torch.Tensor | None = None
        self.start_hits: float | None = None  # utility check: reference pairs in their top K at the start
        self.p_items: torch.Tensor | None = None
        self.target_mode = spec.gate.target if spec.gate is not None else None
        self.q_keys: torch.Tensor | None = None  # calibrated gate: sorted pair keys u·n_items + i
        self.tau_vals: torch.Tensor | None = None  # … and their target scores τ_ui (fixed per epoch)
        self.ref_sorted: torch.Tensor | None = None  # calibrated gate: held-out percentiles, fixed at start
        self.start_emb: Embeddings | None = None  # … and the scores s⁰ the keep term anchors to
        self.cold_q: torch.Tensor | None = None  # … cold-item pairs' own targets, fixed at start
        self.cold_sorted: torch.Tensor | None = None
        self.best: dict[str, Any] = {}  # calibrated gate: smallest gap so far, its epoch and parameters
        self.local = self._local_propagation()
        self.fanout_rng = torch.Generator().manual_seed(int(self.uc.seed) * 1_000_003 + 10)
        self.stats: dict[str, Any] = {"n_forget_train": int(len(self.fu)),
                                      "n_removed_users": int(len(forget.removed_users)),
                                      "reset_users": int(len(deletion.reset_users)),
                                      "propagation": "local" if self.local else "full"}
        if self.uc.propagation == "local" and not self.local:
            self.stats["propagation_note"] = self.propagation_note

    # -- helpers -------------------------------------------------------------------------
    @property
    def data(self):
        """D_r, copied out of the deletion step on first use (a run that takes no step never
        reads it)."""
        return self.deletion.data_after

    @functools.cached_property
    def orig_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """D_before's train pairs (users, items), read on first use: a run that takes no step
        (a whole-user deletion) never pays for splitting a large interaction table."""
        return tuple(np.asarray(a, dtype=np.int64) for a in self.deletion.data_before.train_pairs)

    @functools.cached_property
    def retained_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """D_r's train pairs (users, items), split out of the table once per update (the retain
        sampler, the Fisher pass, the gate's reference and the owners' term all read them)."""
        return tuple(np.asarray(a, dtype=np.int64) for a in self.data.train_pairs)

    @functools.cached_property
    def items_in_use(self) -> np.ndarray:
        """Per item, whether some retained train pair still uses it (False: a deleted item, or
        one every pair of which was deleted — a cold item)."""
        return np.bincount(self.retained_pairs[1], minlength=self.data.n_items) > 0

    @property
    def shares_forward(self) -> bool:
        """Whether a calibrated gate pass builds its forward for the step after it: the gate ranks
        the model that step starts from, so where the step's forward is the full ``embed`` and
        the backbone computes the same values in eval mode (``Backbone.mode_free_forward``) one
        forward serves both. Read per pass: ``setup_reference`` may fall back to the top-K gate.
        Not while the isolation pass is still to run (after the first gate pass): its own
        forwards and backwards would run with the kept graph alive, doubling peak memory."""
        isolation_pending = self.spec.isolation is not None and "isolation" not in self.stats
        return (self.target_mode == "calibrated" and not self.local and not self.model.cheap_rows
                and self.model.mode_free_forward and not isolation_pending)

    def _local_propagation(self) -> bool:
        """``unlearn.propagation: local`` where it applies: a backbone with a neighbourhood
        forward, one process, and no top-K gate (its per-step thresholds rank all items)."""
        if self.uc.propagation != "local":
            return False
        why = None
        if not self.model.local_embedding:
            why = f"{self.model.name} has no neighbourhood forward"
        elif collectives.is_distributed():
            why = "sharded (W > 1) runs propagate in full"
        elif self.spec.gate is not None and self.target_mode == "topk":
            why = "the top-K gate ranks all items every step"
        self.propagation_note = why
        return why is None

    def embed(self, *batches: BPRBatch) -> Embeddings:
        """The step's embeddings: full propagation, or the batches' neighbourhood only. The top-K
        gate ranks every item for the batch's users each step, so it takes the full tables."""
        if self.spec.gate is not None and self.target_mode == "topk":
            return self.model.embed(self.graph)
        return embed_for(self.model, self.graph, list(batches), local=self.local,
                         fanout=self.uc.fanout, generator=self.fanout_rng)

    def _groups(self, named: dict[str, list[torch.nn.Parameter]]) -> dict[str, list[int]]:
        return {name: [self.index[id(p)] for p in ps if id(p) in self.index] for name, ps in named.items()}

    def _local(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return users[(users >= self.lo) & (users < self.lo + self.n_local)] - self.lo

    def user_vectors(self, user_emb: torch.Tensor, users_local: torch.Tensor) -> torch.Tensor:
        """Rows of the final user embedding, the snapshot for reset (deleted) users."""
        vecs = user_emb[users_local]
        if self.snap is None:
            return vecs
        idx = self.snap_rows[users_local]
        has = idx >= 0
        return torch.where(has[:, None], self.snap[idx.clamp(min=0)], vecs)

    def gate_users(self, user_emb: torch.Tensor) -> torch.Tensor:
        """Detached user matrix for ranking (snapshot rows substituted)."""
        out = user_emb.detach()
        if self.snap is not None:
            out = out.clone()
            rows = torch.nonzero(self.snap_rows >= 0).flatten()
            out[rows] = self.snap[self.snap_rows[rows]]
        return out

    # -- 1. deleted users ------------------------------------------------------------------
    @torch.no_grad()
    def freeze_reset_users(self) -> None:
        """Snapshot the reset users' final vectors (original model, before-graph) and freeze
        their fresh rows (already re-drawn by :func:`~.deletion.start_model`).

        The snapshot's forward is a collective at W > 1, so whether to take it is decided from
        the global count: a rank holding none of the reset users still joins the forward (it
        used to return early, and a one-user deletion mismatched the ranks' collectives —
        gloo aborted, or hung to its timeout on MGCN)."""
        removed = self.deletion.local_reset_users()
        count = torch.tensor([float(len(removed))], dtype=torch.float64)
        collectives.sum_stats(count)
        if float(count[0]) == 0:
            return
        local = torch.from_numpy(removed).to(self.device)
        before = self.original
        if next(before.parameters()).device != self.device:  # never move the caller's model
            before = copy.deepcopy(before).to(self.device)
        was = before.training
        before.eval()
        # the deleted users' rows only: from their neighbourhood (exactly: no fan-out limit), or
        # from the full propagation
        rows = before.embed_targets if self.local else before.embed_rows
        snap = rows(self.deletion.graph_before, local, local.new_zeros(0)).user[local]
        before.train(was)
        if len(removed) == 0:  # joined the collective forward; nothing of this rank's to freeze
            return
        self.snap = snap.detach().clone()
        self.snap_rows = torch.full((self.n_local,), -1, dtype=torch.long, device=self.device)
        self.snap_rows[local] = torch.arange(len(local), device=self.device)
        for p, kind in self.model.row_tables().values():
            if kind == "user":
                mask = self.frozen_rows.get(id(p), torch.ones(p.shape[0], dtype=torch.bool, device=p.device))
                mask[local.to(p.device)] = False
                self.frozen_rows[id(p)] = mask

    # -- losses ----------------------------------------------------------------------------
    def forget_loss(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        u = self.user_vectors(emb.user, batch.users)
        s_ui, s_uj = losses.pair_scores(u, emb.item, batch.pos, batch.neg)
        if self.spec.forget_term == "ascent":
            return losses.ascent_loss(s_ui, s_uj, batch.scale)
        gate = self.spec.gate
        if gate is None:
            return losses.reverse_bpr_loss(s_ui, s_uj, batch.scale)
        if self.target_mode == "calibrated":
            return self.calibrated_loss(emb, batch)
        item = emb.item.detach()
        t = gate_fn.kth_thresholds(self.gate_users(emb.user), item, self.exclude, batch.users, gate.top_k)
        g = gate_fn.persistence(s_ui.detach(), t, gate.temperature)
        weights = gate_fn.fuse(g, self.p_items[batch.pos].to(g.dtype), gate.beta)
        return gate_fn.gated_forget_loss(s_ui, s_uj, t, weights, gate.hinge_weight, gate.margin, batch.scale)

    def calibrated_loss(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        """w·Σ G_ui·½(s_ui − τ_ui)²·scale (w = ``gate.weight``) with the SERVED user vectors (a
        reset user's fresh row: its pairs are on target, q = p) — :mod:`.tru.gate`.
        τ_ui is read at the epoch's gate pass and held for its steps (one full ranking per
        epoch, not per step)."""
        gate = self.spec.gate
        s_ui = (emb.user[batch.users] * emb.item[batch.pos]).sum(-1)
        keys = batch.users.long() * self.data.n_items + batch.pos.long()
        tau = self.tau_vals[torch.searchsorted(self.q_keys, keys).clamp(max=len(self.q_keys) - 1)]
        g = gate_fn.persistence(s_ui.detach(), tau, gate.temperature)
        weights = gate_fn.fuse(g, self.p_items[batch.pos].to(g.dtype), gate.beta)
        return gate.weight * (weights.detach() * 0.5 * (s_ui - tau) ** 2).sum() * batch.scale

    def keep_loss(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        """½Σ[(s_ui − s⁰_ui)² + (s_uj − s⁰_uj)²]·scale over a D_r batch: retained users' scores
        stay where the deletion step left them, so their top-K lists do not drift while the
        deleted pairs move (measured: without it, top-20 Jaccard with Retrain fell from the
        start's 0.78 to 0.49 on Scientific + MGCN interactions 5%). With κ_o > 0
        (``gate.owner_keep_weight``) the same term runs, weighted κ_o, on a batch of the
        retained train pairs of the deleted pairs' own users (:meth:`owner_stream`): the users
        whose rows move, whom a uniform D_r batch rarely holds."""
        s0 = self.start_emb
        u, u0 = emb.user[batch.users], s0.user[batch.users]
        d_pos = (u * emb.item[batch.pos]).sum(-1) - (u0 * s0.item[batch.pos]).sum(-1)
        d_neg = (u * emb.item[batch.neg]).sum(-1) - (u0 * s0.item[batch.neg]).sum(-1)
        return 0.5 * (d_pos ** 2 + d_neg ** 2).sum() * batch.scale

    # -- 2. isolation ------------------------------------------------------------------------
    def _accumulate(self, batches, loss_fn, weight_fn, wanted: list[int]) -> list[torch.Tensor]:
        """Σ over ``batches`` of ∇(loss·weight) for the parameters ``wanted`` (indices into
        ``self.params``; zeros for the rest, whose gradients are not computed — the backward
        skips every layer that leads only to them), replicated ones summed over ranks."""
        acc = [torch.zeros_like(p) for p in self.params]
        wanted_params = [self.params[k] for k in wanted]
        for batch in batches if wanted else ():
            batch = batch.to(self.device)
            emb = self.embed(batch)
            loss = loss_fn(emb, batch) * weight_fn(batch)
            got = torch.autograd.grad(loss, wanted_params, allow_unused=True)
            for k, g in zip(wanted, got, strict=True):
                if g is not None:
                    acc[k] += g
        return self._sum_replicated(acc, wanted)

    def _candidate_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The layer groups that compete for the isolation budget: all of them, or with
        ``isolation.shared_layers: false`` only those made of row tables."""
        groups = self.model.layer_groups()
        if self.spec.isolation.shared_layers:
            return groups
        row_params = {id(p) for p, _ in self.model.row_tables().values()}
        return {n: ps for n, ps in groups.items() if ps and all(id(p) in row_params for p in ps)}

    def _item_table_ids(self) -> set[int]:
        """ids of the model's item-indexed row tables."""
        return {id(p) for p, kind in self.model.row_tables().values() if kind == "item"}

    def _freeze(self, groups: dict[str, list[torch.nn.Parameter]]) -> None:
        """Freeze these layer groups for the update (``iter_update`` unfreezes them at the end)."""
        for ps in groups.values():
            self.frozen_params.update(id(p) for p in ps)
            for p in ps:  # autograd then skips them
                p.requires_grad_(False)

    def freeze_non_candidates(self) -> None:
        """Freeze the layer groups that may not compete for the isolation budget: frozen whatever
        the Fisher says. Done before the first forward, so that every forward of the update —
        the first gate pass, the Fisher passes — can reuse what those groups compute (MIG-GT's
        encoders with ``isolation.shared_layers: false``: a constant of the graph, encoded once
        per update instead of three times)."""
        candidates = self._candidate_groups()
        self._freeze({n: ps for n, ps in self.model.layer_groups().items() if n not in candidates})

    def isolation_pass(self, batch_size: int) -> None:
        iso = self.spec.isolation
        n_f = len(self.fu)
        negs = BPRSampler(*self.orig_pairs, self.data.n_users, self.data.n_items, seed=0)
        rng = np.random.default_rng([self.uc.seed, 8])
        f_batches = list(forget_batches(self.fu, self.fi, batch_size, rng, negs, self.graph.book,
                                        self.graph.rank))
        candidates = self._candidate_groups()
        wanted = sorted(set().union(*(self._groups(candidates).values())))
        self.freeze_non_candidates()  # (done already at the start of the loop; idempotent)
        g_f = self._accumulate(f_batches, lambda e, b: losses.reverse_bpr_loss(
            *losses.pair_scores(self.user_vectors(e.user, b.users), e.item, b.pos, b.neg), b.scale),
            lambda b: 1.0 / (b.scale * n_f), wanted)
        r_sampler = BPRSampler(*self.retained_pairs, self.data.n_users, self.data.n_items,
                               seed=self.uc.seed + 2, book=self.graph.book, rank=self.graph.rank)
        stream = retain_stream(r_sampler, batch_size)
        r_batches = [next(stream) for _ in f_batches]
        n_r = sum(round(1.0 / b.scale) for b in r_batches)
        g_r = self._accumulate(r_batches, lambda e, b: self.model.loss(b, self.graph, e),
                               lambda b: 1.0 / (b.scale * n_r), wanted)
        per = torch.tensor([[float(f.double().pow(2).sum()), float(r.double().pow(2).sum()), float(f.numel())]
                            for f, r in zip(g_f, g_r, strict=True)], dtype=torch.float64)
        groups = self.model.layer_groups()
        sums = group_sums(self._groups(groups), per, self.sharded)
        f_sum = {k: v[0] for k, v in sums.items()}
        r_sum = {k: v[1] for k, v in sums.items()}
        counts = {k: v[2] for k, v in sums.items()}
        f_sum, r_sum = {n: f_sum[n] for n in candidates}, {n: r_sum[n] for n in candidates}
        counts = {n: counts[n] for n in candidates}
        if iso.mass > 0:
            chosen, share = iso_fn.decide_isolation_by_mass(f_sum, r_sum, counts, counts, iso.mass, iso.delta)
        else:
            chosen, share = iso_fn.decide_isolation(f_sum, r_sum, counts, counts, iso.budget, iso.delta)
        total_f = sum(f_sum.values()) or 1.0
        user_mask, item_mask = iso_fn.hop_masks(self.fu, self.fi, *self.orig_pairs,
                                                self.data.n_users, self.data.n_items, iso.row_hops)
        cold_rows = item_mask & ~self.items_in_use
        added = (iso_fn.cold_row_groups(chosen, candidates, self._item_table_ids())
                 if iso.free_cold_item_rows and cold_rows.any() else [])
        self._freeze({n: ps for n, ps in groups.items() if n not in chosen and n not in added})
        if not iso.retained_item_rows:
            item_mask = item_mask & ~self.items_in_use  # items no retained pair uses (.tru.isolation)
        if not iso.cold_item_user_rows:  # users whose deleted pairs are all on cold items (.tru.isolation)
            user_mask = user_mask & ~iso_fn.cold_only_users(self.fu, self.fi, self.items_in_use,
                                                             self.data.n_users)
        added_ids = {id(p) for n in added for p in groups[n]}
        for p, kind in self.model.row_tables().values():
            rows = user_mask[self.lo : self.lo + self.n_local] if kind == "user" else item_mask
            if id(p) in added_ids:  # opened for the cold rows only
                rows = cold_rows
            mask = torch.from_numpy(rows.copy()).to(p.device)
            self.frozen_rows[id(p)] = self.frozen_rows[id(p)] & mask if id(p) in self.frozen_rows else mask
        # rows that may move (an item table opened for its cold rows only moves those)
        free = {"user": int(user_mask.sum()), "item": int((cold_rows if added else item_mask).sum())}
        self.stats["isolation"] = {
            "fisher_ratio": iso_fn.fisher_ratios(f_sum, r_sum, counts, iso.delta),
            "forget_mass_share": {n: v / total_f for n, v in f_sum.items()},
            "selected_groups": chosen,
            "frozen_groups": [n for n in groups if n not in chosen],
            "param_share": share,
            "row_hops": iso.row_hops,
            "retained_item_rows": iso.retained_item_rows,
            "cold_item_user_rows": iso.cold_item_user_rows,
            "cold_rows_added": added,
            "cold_item_rows": int(cold_rows.sum()),
            "rows_users": free["user"],
            "rows_items": free["item"],
            "n_users": self.data.n_users,
            "n_items": self.data.n_items,
            "movable_groups": iso_fn.movable_groups(
                chosen + added, {name: kind for name, (_p, kind) in self.model.row_tables().items()}, free),
        }
        if not self.stats["isolation"]["movable_groups"] and collectives.rank() == 0:
            _LOG.warning("TRU isolation left nothing to move (chosen groups %s have no free rows: users %d, "
                         "items %d): the update stops at the deletion step's model; raise isolation.budget "
                         "or isolation.mass, or set isolation.cold_item_user_rows / retained_item_rows true",
                         ", ".join(chosen) or "none", free["user"], free["item"])

    # -- gate pass ---------------------------------------------------------------------------
    def setup_reference(self) -> None:
        """The calibrated gate's held-out sample: up to ``gate.reference_pairs`` VALID pairs of
        D_r drawn once (globally, seeded: the same sample at every W), this rank's kept; and
        which deleted pairs take another target (reset users' pairs: their own ranks; pairs of
        items with no retained train pair: the cold reference). Only the other deleted pairs
        (the held group) are matched to the valid sample, so the top-K target is the fallback
        only where such pairs exist and D_r has no valid pair. An items deletion on data
        without a valid split fell back to it, and the top-K gate stops a pair once it leaves
        the top-K, at ``unlearn.epochs``/``unlearn.lr``: found on synthetic data (MIG-GT, items
        5%, no valid rows), forget rank percentile 0.131 original, 0.140 ``noop``, 0.145 TRU,
        Retrain 0.878 — the deleted items stayed near the top."""
        gate = self.spec.gate
        d = self.data
        valid = np.flatnonzero(d.labels == VALID)
        kept_items = self.items_in_use
        reset = np.zeros(d.n_users, dtype=bool)
        reset[np.asarray(self.deletion.reset_users, dtype=np.int64)] = True
        # every deleted pair (all ranks'): its user not reset and its item used by no retained pair
        self.cold_forget = ~reset[self.fu] & ~kept_items[self.fi]
        held_pairs = bool((~reset[self.fu] & ~self.cold_forget).any())
        if len(valid) == 0 and held_pairs:
            self.target_mode = "topk"
            if self.local:  # the top-K gate's per-step thresholds need every item
                self.local = False
                self.stats["propagation"] = "full"
                self.stats["propagation_note"] = "the top-K gate (no valid pairs) ranks all items every step"
            self.stats["gate_target"] = "topk (no held-out valid pairs to calibrate on)"
            return
        if len(valid) > gate.reference_pairs:
            rng = np.random.default_rng([self.uc.seed, 9])
            valid = np.sort(rng.choice(valid, gate.reference_pairs, replace=False))
        ru, ri = np.asarray(d.users)[valid].astype(np.int64), np.asarray(d.items)[valid].astype(np.int64)
        mine = (ru >= self.lo) & (ru < self.lo + self.n_local)
        self.ref_u = torch.from_numpy(ru[mine] - self.lo).to(self.device)
        self.ref_i = torch.from_numpy(ri[mine]).to(self.device)
        self.n_reference = int(len(valid))
        fmine = (self.fu >= self.lo) & (self.fu < self.lo + self.n_local)
        fu = self.fu[fmine]
        self.reset_pair = torch.from_numpy(reset[fu]).to(self.device)
        self.cold_pair = torch.from_numpy(self.cold_forget[fmine]).to(self.device)
        self.cold_items = np.flatnonzero(~kept_items)
        n = max(len(self.fu), 1)  # shares of every rank's deleted pairs: the same figures at every W
        self.stats["gate_target"] = "calibrated"
        self.stats["gate_reference"] = {"valid_pairs": int(len(valid)),
                                        "reset_user_share": float(reset[self.fu].sum()) / n,
                                        "cold_item_share": float(self.cold_forget.sum()) / n}

    @torch.no_grad()
    def cold_percentiles(self, lu: torch.Tensor, li: torch.Tensor) -> torch.Tensor:
        """Rank percentiles of the given pairs under the start model with the ID rows of the
        items that have no retained train pair set to zero (the mean of their initial draw; with
        ``cold_reference: negative``, the deleted items' rows set to :meth:`negative_item_row`):
        the ranks those items get from what is left of them — content features and graph —
        had they never been trained on. Measured on Scientific + MGCN (items 1%, tuning seed
        100): KS to Retrain's ranks of those pairs 0.21, against 0.40 for the uniform
        distribution and 0.56 for doing nothing."""
        cold = copy.deepcopy(self.model)
        negative = self.negative_item_row() if self.spec.gate.cold_reference == "negative" else None
        # negative: the deleted items only (a never-trained item's row is already negative-only)
        cold_rows = self.cold_items if negative is None else np.intersect1d(self.cold_items, self.fi)
        rows = torch.from_numpy(cold_rows)
        for p, kind in cold.row_tables().values():
            if kind == "item":
                p[rows.to(p.device)] = 0.0 if negative is None else negative.to(p.dtype)
        cold.eval()
        emb = cold.embed(self.graph)
        return self._percentiles(emb.user.detach(), emb.item.detach(), lu, li)

    @torch.no_grad()
    def negative_item_row(self) -> torch.Tensor | None:
        """``gate.cold_reference: negative``: the ID row of an item trained only as a negative,
        e⁻ = −r · ē_u / ‖ē_u‖ — ē_u the mean layer-0 user row of the start model (summed over
        ranks, so the same at every W), r the mean norm of the start model's rows of the items
        no train pair of D used (the cold items minus the deleted pairs' own). ``None`` (zero
        rows, as ``zeroed``) when the catalogue has no such item.

        Why: Retrain trains a deleted item only as a sampled negative; every such step moves its
        row along −e_u (∂ softplus(s_uj − s_ui)/∂e_j = σ(·)·e_u), so it ends where the catalogue's
        never-trained items ended — not at zero. Measured on Scientific + MGCN (items 1%, tuning
        seeds 100–102): the never-trained items' rows have norm 1.25/1.23/0.98 and Retrain's
        rows of the deleted items 0.95/1.30/1.10 (the init draw's 0.27); TRU's retrain_distance,
        tuning seeds 100–105, 0.172 → 0.145 on average against ``zeroed`` (better on 4 of 6)."""
        never = np.setdiff1d(self.cold_items, self.fi)
        if len(never) == 0:
            return None
        tables = self.model.row_tables().values()
        user = next(p for p, kind in tables if kind == "user")
        item = next(p for p, kind in tables if kind == "item")
        count = torch.tensor([float(user.shape[0])], dtype=torch.float64, device=user.device)
        total = torch.cat([user.detach().double().sum(0), count])
        collectives.sum_stats(total)
        mean_user = total[:-1] / total[-1].clamp(min=1.0)
        if float(mean_user.norm()) == 0.0:
            return None
        radius = item.detach()[torch.from_numpy(never).to(item.device)].double().norm(dim=1).mean()
        self.stats["gate_reference"]["negative_row_norm"] = float(radius)
        return -radius * mean_user / mean_user.norm()

    def content_neighbours(self) -> np.ndarray | None:
        """The ``gate.cold_neighbours`` retained items nearest in content space to each item of
        ``self.cold_items`` (global ids, nearest first), from this rank's feature slice
        (``graph.features``, rows ``graph.item_range``): the cold items' unit rows are summed
        over ranks (each is held by one), every rank proposes its own best k
        (:func:`.tru.gate.nearest`) and the gathered proposals are merged by the same order
        (:func:`.tru.gate.merge_nearest`) — the same neighbours at every W. ``None`` for an
        ID-only backbone (its workers hold no feature slice, so it reads none at any W), where
        the graph has no features, or where no item is retained."""
        features = self.graph.features if self.model.requires != "none" else {}
        kept = np.flatnonzero(self.items_in_use)
        if not features or len(kept) == 0:
            return None
        lo, hi = self.graph.item_range
        cold = self.cold_items
        mine = (cold >= lo) & (cold < hi)
        held = gate_fn.unit_rows(features, cold[mine] - lo)
        cold_unit = torch.zeros((len(cold), held.shape[1]), dtype=torch.float64)
        cold_unit[torch.from_numpy(mine)] = torch.from_numpy(held)
        collectives.sum_stats(cold_unit)
        k = min(self.spec.gate.cold_neighbours, len(kept))
        local = kept[(kept >= lo) & (kept < hi)]
        sims, ids = gate_fn.nearest_in_chunks(cold_unit.numpy(), features, local - lo, local, k)
        all_sims = collectives.all_gather_rows(torch.from_numpy(sims).T.contiguous()).T.numpy()
        # ids travel as float64 (exact below 2^53) through the same gather as the similarities
        all_ids = collectives.all_gather_rows(torch.from_numpy(ids.astype(np.float64)).T.contiguous()).T
        return gate_fn.merge_nearest(all_sims, all_ids.numpy().astype(np.int64), k)[1]

    @torch.no_grad()
    def neighbour_percentiles(self, users: torch.Tensor, items: torch.Tensor, lu: torch.Tensor,
                              li: torch.Tensor) -> torch.Tensor | None:
        """Rank percentiles of the given pairs with each item that has no retained train pair
        given the mean start embedding of its ``gate.cold_neighbours`` nearest retained items in
        content space (:func:`.tru.gate.content_neighbours`): e_i ← (1/k) Σ_{j ∈ N_k(i)} e_j.
        ``None`` without content neighbours (:meth:`content_neighbours`; the caller falls back
        to the uniform reference).

        Why: what Retrain ranks a deleted item by is what its content shares with items it still
        trains on; the start model's own row of that item (even with its ID rows zeroed — MIG-GT
        encodes it from its features through an encoder that learnt those very pairs) remembers
        the deleted pairs. Measured against Retrain's ranks of those pairs, MIG-GT, items 1%,
        tuning seeds 100–102, KS of the reference itself (lower is closer): sparse one-modality
        synthetic data 0.279 (uniform 0.395, zeroed 0.550); Scientific 0.339 (uniform 0.339,
        zeroed 0.506). On MGCN it is far worse than ``zeroed`` (Scientific 0.685 vs 0.179):
        MGCN's zeroed item still has its item–item content graph, which is this average
        already, learnt. Not a default anywhere: where Retrain sinks a deleted item below an
        unknown one (dense synthetic data, Retrain's percentile ~0.70: trained only as a
        negative) it under-forgets badly (module :mod:`.tru.gate`)."""
        neighbours = self.content_neighbours()
        if neighbours is None:
            return None
        cold_rows = items.clone()
        cold_rows[torch.from_numpy(self.cold_items).to(items.device)] = \
            items[torch.from_numpy(neighbours).to(items.device)].mean(1)
        self.stats["gate_reference"]["cold_neighbours"] = int(neighbours.shape[1])
        return self._percentiles(users, cold_rows, lu, li)

    @torch.no_grad()
    def untrained_percentiles(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """``gate.untrained_items_min``: the sorted rank percentiles, under the start model, of
        pairs (u, j) — u a user of a cold deleted pair, j an item no train pair of D used (the
        cold items minus the deleted pairs' own) — all of them, or ``gate.reference_pairs`` drawn
        globally where there are more (seeded: the same sample at every W) — gathered over ranks.
        None when off, when fewer such items exist, or when no deleted pair is cold.

        Why: Retrain trains a deleted item only as a sampled negative, exactly as the original
        trained the items nobody interacted with; where there are enough of those, how the model
        ranks them is the cold-start rank a deleted item should get, measured on the model
        itself rather than assumed (``uniform``) or rebuilt (``zeroed``). Measured on a
        synthetic catalogue with 175 such items of 2,400 (items 1%, reporting seed 0): MGCN
        ranks them at mean percentile 0.864, Retrain ranks the deleted items' pairs at 0.863,
        where the packaged ``zeroed`` reference led TRU to 0.587."""
        gate = self.spec.gate
        untrained = np.setdiff1d(self.cold_items, self.fi)
        if gate.untrained_items_min == 0 or len(untrained) < gate.untrained_items_min:
            return None
        cold_users = np.unique(self.fu[self.cold_forget])
        if len(cold_users) == 0:
            return None
        if len(cold_users) * len(untrained) <= gate.reference_pairs:  # every pair
            pu, pj = np.repeat(cold_users, len(untrained)), np.tile(untrained, len(cold_users))
        else:
            rng = np.random.default_rng([self.uc.seed, 10])
            pu = cold_users[rng.integers(0, len(cold_users), gate.reference_pairs)]
            pj = untrained[rng.integers(0, len(untrained), gate.reference_pairs)]
        mine = (pu >= self.lo) & (pu < self.lo + self.n_local)
        lu = torch.from_numpy(pu[mine] - self.lo).to(self.device)
        li = torch.from_numpy(pj[mine]).to(self.device)
        ref = self._percentiles(users, items, lu, li)
        self.stats["gate_reference"]["untrained_items"] = int(len(untrained))
        return collectives.all_gather_rows(ref).sort().values

    def _percentiles(self, users: torch.Tensor, items: torch.Tensor, lu: torch.Tensor, li: torch.Tensor,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Rank percentiles of pairs (rows ``lu`` of ``users``); ``exclude`` is the mask of those
        rows (None: ``self.exclude``, the mask of every local user)."""
        ranks, n_cand = self._ranks(users, items, lu, li, exclude)
        return ranks.double() / n_cand.double()

    def _ranks(self, users: torch.Tensor, items: torch.Tensor, lu: torch.Tensor, li: torch.Tensor,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(0-based rank, candidate count ≥ 1) of each pair — what :meth:`_percentiles` divides."""
        exclude = self.exclude if exclude is None else exclude
        ranks = pair_ranks(users, items, lu, li, exclude)
        return ranks, candidate_counts(exclude, lu, self.data.n_items).clamp(min=1)

    @torch.no_grad()
    def _eval_forget_pairs(self) -> tuple[Embeddings, torch.Tensor, torch.Tensor]:
        """(embeddings in eval mode, local users, items) of this shard's forget pairs — what a
        gate pass ranks; the model's training mode is left as it was."""
        was = self.model.training
        self.model.eval()
        emb = self.shared_forward() if self.shares_forward else self.model.embed(self.graph)
        self.model.train(was)
        mine = (self.fu >= self.lo) & (self.fu < self.lo + self.n_local)
        lu = torch.from_numpy(self.fu[mine] - self.lo).to(self.device)
        li = torch.from_numpy(self.fi[mine]).to(self.device)
        return emb, lu, li

    @torch.no_grad()
    def _forget_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor | None]:
        """What a calibrated gate pass ranks: (user rows, item matrix, each forget pair's row in
        the user rows, the pairs' local users, their items, the user rows' exclusion mask).

        The first pass takes every user (the reference pairs and the keep term's start need
        them). Later passes rank the forget pairs only, so where the backbone computes a few
        rows for less (``embed_rows``: MIG-GT's attention, ~1/3 of its forward, run on the
        forget pairs' users instead of all of them) they take those users' rows alone — the
        same values — with the exclusion mask cut to them once."""
        if self.ref_sorted is None or not self.model.cheap_rows:
            emb, lu, li = self._eval_forget_pairs()
            return emb.user.detach(), emb.item.detach(), lu, lu, li, self.exclude
        mine = (self.fu >= self.lo) & (self.fu < self.lo + self.n_local)
        lu = torch.from_numpy(self.fu[mine] - self.lo).to(self.device)
        li = torch.from_numpy(self.fi[mine]).to(self.device)
        rows, at = torch.unique(lu, return_inverse=True)
        if self.exclude_rows is None:
            self.exclude_rows = select_rows(self.exclude, rows)
        was = self.model.training
        self.model.eval()
        emb = self.model.embed_rows(self.graph, rows, torch.arange(self.data.n_items, device=self.device))
        self.model.train(was)
        return emb.user.values.detach(), emb.item.values.detach(), at, lu, li, self.exclude_rows

    @torch.no_grad()
    def calibrated_gate_pass(self, epoch: int) -> bool:
        """Targets q_ui (quantile matching), P_i and the calibration gap (module :mod:`.tru.gate`)."""
        gate = self.spec.gate
        users, items, at, lu, li, exclude = self._forget_view()
        # the forget users' score rows, sorted once: the pairs' ranks and their targets τ both
        # read off them (one product and one sort per pass, where ranking then sorting took two)
        rows = gate_fn.score_rows(users, items, exclude, at, li)
        pct = gate_fn.rank_percentiles(rows)
        first = self.ref_sorted is None
        if first:  # fixed at the start: the model after the deletion step
            ref_ranks, n_cand = self._ranks(users, items, self.ref_u, self.ref_i, exclude)
            ref = ref_ranks.double() / n_cand.double()
            self.ref_sorted = collectives.all_gather_rows(ref).sort().values
            if self.checks_utility:  # what the update is charged against (restore_best)
                self.start_hits = self.reference_hits(ref_ranks)
            # None without a valid sample (a deletion whose pairs are all cold or reset needs none)
            has_ref = self.ref_sorted.numel() > 0
            self.stats["gate_reference"]["mean_pct"] = float(self.ref_sorted.mean()) if has_ref else None
            keeps = gate.keep_weight > 0 or gate.owner_keep_weight > 0
            self.start_emb = Embeddings(users.clone(), items.clone()) if keeps else None
            cold = self.cold_pair
            untrained = self.untrained_percentiles(users, items)
            by_neighbours = untrained is None and gate.cold_reference == "neighbours" and len(self.cold_items)
            neighbours = (self.neighbour_percentiles(users, items, lu[cold], li[cold])
                          if by_neighbours else None)
            if untrained is not None:
                current = collectives.all_gather_rows(pct[cold]).sort().values
                self.cold_q = gate_fn.quantile_match(pct[cold], current, untrained)
            elif neighbours is not None:
                self.cold_q = neighbours
            elif gate.cold_reference in ("uniform", "neighbours"):  # its mid-rank in the uniform
                current = collectives.all_gather_rows(pct[cold]).sort().values
                self.cold_q = gate_fn.quantile_match(pct[cold], current, None)
            else:
                # collective (a propagation): entered on every rank when any rank holds a cold pair
                # — decided on this rank's pairs alone, a rank without one waited in the next
                # gather while the other propagated, until the 300 s group timeout (W = 2)
                self.cold_q = (self.cold_percentiles(lu[cold], li[cold]) if bool(self.cold_forget.any())
                               else pct[cold])
            self.cold_sorted = collectives.all_gather_rows(self.cold_q).sort().values
        held = ~self.reset_pair & ~self.cold_pair
        q = torch.zeros_like(pct)
        q[self.cold_pair] = self.cold_q  # each cold pair's own cold-start rank
        targets: list[tuple[float, torch.Tensor | None]] = [
            (float(self.cold_sorted.numel()), self.cold_sorted)]
        current = collectives.all_gather_rows(pct[held]).sort().values
        q[held] = gate_fn.quantile_match(pct[held], current, self.ref_sorted)
        targets.append((float(current.numel()), self.ref_sorted))
        # a reset user is served its fresh row, as Retrain serves it: its pairs are on target
        q[self.reset_pair] = pct[self.reset_pair]
        reset_now = collectives.all_gather_rows(pct[self.reset_pair]).sort().values
        targets.append((float(reset_now.numel()), reset_now))
        everything = collectives.all_gather_rows(pct).sort().values
        gap = gate_fn.calibration_gap(everything, targets)  # the whole forget set vs its target mixture
        tau = gate_fn.score_at_rows(rows, q)
        keys = lu.long() * self.data.n_items + li.long()
        order = torch.argsort(keys)
        self.q_keys, self.tau_vals = keys[order], tau[order].to(items.dtype)
        s = (users[at] * items[li]).sum(-1)
        decision, fused = self._decide(s, tau, li)
        extra = torch.tensor([float(fused.sum()), float(pct.sum()), float(q.sum()), float(len(lu)),
                              float((pct - q).abs().sum())], dtype=torch.float64)
        collectives.sum_stats(extra)
        n = max(float(extra[3]), 1.0)
        self.stats.setdefault("gate", []).append({
            "epoch": epoch, "mean_g": decision.mean_g, "mean_P": decision.mean_p,
            "mean_G": float(extra[0]) / n,
            "calibration_gap": gap, "mean_pct": float(extra[1]) / n, "mean_target_pct": float(extra[2]) / n,
            "transport": float(extra[4]) / n, "n_pairs": int(extra[3]),
        })
        if first and gate.significance > 0:  # is there a gap to close, beyond sampling noise?
            floor = gate_fn.noise_floor(everything.numel(), self.ref_sorted.numel(),
                                        current.numel() / max(everything.numel(), 1), gate.significance)
            self.stats["gate_noise_floor"] = {"floor": floor, "start_gap": gap, "alpha": gate.significance,
                                              "update": gap >= max(floor, gate.epsilon)}
            return gap < max(floor, gate.epsilon)
        return gap < gate.epsilon

    @property
    def checks_utility(self) -> bool:
        """Whether the run weighs the held-out hits its update spent against the gap it closed
        (``gate.utility_weight`` > 0 and a calibrated reference to count hits on; :meth:`check_utility`)."""
        return (self.spec.gate is not None and self.spec.gate.utility_weight > 0 and self.ref_u is not None
                and self.n_reference > 0)

    def reference_hits(self, ranks: torch.Tensor) -> float:
        """h = #{reference (valid) pairs ranked in their user's top ``gate.top_k``}, summed over shards."""
        hits = torch.tensor([float((ranks < self.spec.gate.top_k).sum())], dtype=torch.float64)
        collectives.sum_stats(hits)
        return float(hits[0])

    @torch.no_grad()
    def check_utility(self, end_transport: float) -> None:
        """The utility check (``gate.utility_weight`` λ_u): keep the line search's result only if
        gap_end + λ_u·max(0, 1 − h_end/h⁰) beats the start's gap, in the line search's own order
        (:func:`.tru.gate.keeps_update`), else put the start back — an update must close more
        calibration gap than the share of held-out top-K hits it spends. One more ranking of the
        reference pairs, at the end; the start's hits h⁰ come with the first pass's reference
        ranks, and the start's parameters are rebuilt (the deletion step on the original, as
        ``noop`` serves it) only when they are put back, so the run holds no extra copy.
        ``stats["utility_check"]`` says which was kept and why."""
        first, end = self.stats["gate"][0], self.stats["best_gap"]
        start_gap = first["calibration_gap"]
        if self.start_hits is None or end["epoch"] == 0:
            return  # the line search already returned the start
        was = self.model.training
        self.model.eval()
        emb = self.model.embed(self.graph)  # not handed on: no step follows
        self.model.train(was)
        ranks, _ = self._ranks(emb.user, emb.item, self.ref_u, self.ref_i)
        loss = gate_fn.utility_loss(self.reference_hits(ranks), self.start_hits)
        keep = gate_fn.keeps_update(start_gap, first["transport"], end["gap"], end_transport, loss,
                                    self.spec.gate.utility_weight)
        if not keep:
            start = start_model(self.original, self.deletion, self.uc.seed)
            fresh = [p for p in start.parameters() if p.requires_grad]  # in the order of self.params
            self._put_back({k: fresh[k].detach() for k in self.live()})
            self.stats["best_gap"] = {"gap": start_gap, "restored": True, "epoch": 0}
        self.stats["utility_check"] = {"start_gap": start_gap, "end_gap": end["gap"], "utility_loss": loss,
                                       "kept": "update" if keep else "start"}

    @torch.no_grad()
    def stalled(self) -> bool:
        """Calibrated gate only — a line search on the gate's own convergence statistic.

        Keeps the parameters of the smallest calibration gap seen so far. A gate pass that
        does not lower it means the last epoch overshot: the best parameters are put back
        and the step size halved (a fresh Adam at lr/2); after ``gate.patience`` such
        halvings in a row the update stops at the best parameters. A pass that left every
        deleted pair's rank where the best pass had it (:func:`.tru.gate.unmoved`) is not an
        overshoot: with ``gate.wait_unmoved`` the step is kept and the update goes on. Measured: on MGCN
        (items 1%) the gap fell to 0.076 by epoch 9 and then rose to 0.29 by epoch 15 as
        the deleted items kept falling; on MIG-GT (interactions 5%) one step at MGCN's
        lr 0.04 moved the deleted pairs' mean rank percentile from 0.11 to 0.31 (target
        0.16) — the same configuration serves both only if it can back off.

        "Lower" is lexicographic in (gap, transport), transport = mean |p_ui − q_ui| over the
        deleted pairs (how far, in rank percentile, they still are from their targets). The
        gap alone is a step function of a handful of pairs on small forget sets — on MIG-GT
        items 1% (tuning seed 105, 13 deleted items) it read 0.846 three passes running while
        the pairs moved towards their targets, and the search stopped at the start model
        (retrain_distance 0.845, `noop` 0.888); a tie in the gap now counts as progress when
        the pairs got closer. Once the step has been halved, ``gate.plateau`` passes in a row
        without a lower gap — progress by the tie-break alone — end the update at the best
        state (:func:`.tru.gate.plateaued`; ``stats["plateau_stop"]`` = the epoch)."""
        if self.target_mode != "calibrated" or not self.stats.get("gate"):
            return False
        last = self.stats["gate"][-1]
        fell = gate_fn.gap_fell(last["calibration_gap"], self.best.get("gap", float("inf")))
        self.best["flat"] = 0 if fell else self.best.get("flat", 0) + 1  # passes since the gap fell
        if self._improves(last):
            self.best.update(gap=last["calibration_gap"], transport=last["transport"], epoch=last["epoch"],
                             stalls=0, state={k: self.params[k].detach().clone() for k in self.live()})
            halvings = len(self.stats.get("backtracks", []))
            if gate_fn.plateaued(self.best["flat"], halvings, self.spec.gate.plateau):
                self.best["stopped"] = True  # at the best state: nothing to put back
                self.stats["plateau_stop"] = last["epoch"]
                return True
            return False
        if self.spec.gate.wait_unmoved and "state" in self.best and gate_fn.unmoved(
                last["calibration_gap"], last["transport"], self.best["gap"], self.best["transport"]):
            # no pair changed rank: the step reordered nothing — keep it and go on (gate.wait_unmoved)
            self.stats["unmoved_passes"] = self.stats.get("unmoved_passes", 0) + 1
            return False
        self.best["stalls"] = self.best.get("stalls", 0) + 1
        self.best["stopped"] = self.best["stalls"] > self.spec.gate.patience
        self._put_back_best()
        if not self.best["stopped"]:
            self.lr *= 0.5
            self.optimizer = PlainAdam(self.params, lr=self.lr)
            self.stats.setdefault("backtracks", []).append({"epoch": last["epoch"], "lr": self.lr})
        return self.best["stopped"]

    @torch.no_grad()
    def _put_back_best(self) -> None:
        """Copy the best state's parameters back — only those that may move now: a frozen group
        never changes (a state saved before isolation froze it holds it too), and leaving it
        unwritten keeps its constant branches cached."""
        self._put_back(self.best["state"])

    @torch.no_grad()
    def _put_back(self, state: dict[int, torch.Tensor]) -> None:
        """Copy a saved state's parameters back into those that may move now (:meth:`_put_back_best`)."""
        for k in self.live():
            if k in state:
                self.params[k].copy_(state[k])

    def _improves(self, last: dict[str, Any]) -> bool:
        """Whether a gate pass beats the best so far (:func:`.tru.gate.improves`)."""
        return gate_fn.improves(last["calibration_gap"], last["transport"],
                                self.best.get("gap", float("inf")), self.best.get("transport", float("inf")))

    @torch.no_grad()
    def restore_best(self) -> None:
        """Put back the parameters of the best gate pass (see :meth:`stalled`) unless the last
        pass is that best or beats it."""
        if "state" not in self.best:
            return
        last = self.stats["gate"][-1]
        restored = self.best["epoch"] != last["epoch"] and not self._improves(last)
        if restored:
            self._put_back_best()
        kept = self.best if restored else {"gap": last["calibration_gap"], "epoch": last["epoch"],
                                           "transport": last["transport"]}
        self.stats["best_gap"] = {"gap": kept["gap"], "restored": restored, "epoch": kept["epoch"]}
        self.best.pop("state")
        if self.checks_utility:
            self.check_utility(kept["transport"])

    def _decide(self, s: torch.Tensor, t: torch.Tensor, li: torch.Tensor):
        """The part both gate passes share: pair persistence g = σ((s − t)/T), item persistence P_i
        summed over shards, the gate decision (stored P_i) and the fused G per pair."""
        gate = self.spec.gate
        g = gate_fn.persistence(s, t, gate.temperature)
        total, count = gate_fn.item_persistence(li, g, self.data.n_items)
        collectives.sum_stats(total)
        collectives.sum_stats(count)
        decision = gate_fn.decide_gate(total, count, gate.epsilon)
        self.p_items = decision.p_items.to(self.device)
        return decision, gate_fn.fuse(g.double(), self.p_items[li], gate.beta)

    @torch.no_grad()
    def gate_pass(self, epoch: int) -> bool:
        if self.target_mode == "calibrated":
            return self.calibrated_gate_pass(epoch)
        gate = self.spec.gate
        emb, lu, li = self._eval_forget_pairs()
        users = self.gate_users(emb.user)
        t = gate_fn.kth_thresholds(users, emb.item, self.exclude, lu, gate.top_k)
        s = (users[lu] * emb.item[li]).sum(-1)
        decision, fused = self._decide(s, t, li)
        extra = torch.tensor([float(fused.sum()), float((s >= t).sum()), float(len(lu))], dtype=torch.float64)
        collectives.sum_stats(extra)
        n = max(float(extra[2]), 1.0)
        self.stats.setdefault("gate", []).append({
            "epoch": epoch, "mean_g": decision.mean_g, "mean_P": decision.mean_p,
            "mean_G": float(extra[0]) / n, "frac_topk": float(extra[1]) / n, "n_pairs": int(extra[2]),
        })
        return decision.converged

    # -- one step ------------------------------------------------------------------------------
    def live(self) -> list[int]:
        """Indices (into ``self.params``) of the parameters an update may move: those of no frozen
        layer group. Gradients are computed for these only."""
        return [k for k, p in enumerate(self.params) if id(p) not in self.frozen_params]

    def _grads(self, loss: torch.Tensor, live: list[int], retain_graph: bool = False
               ) -> list[torch.Tensor | None]:
        """∇loss for the parameters ``live`` (None elsewhere and where the loss does not reach)."""
        out: list[torch.Tensor | None] = [None] * len(self.params)
        if not live:  # every group frozen: nothing to differentiate (autograd.grad refuses [])
            return out
        got = torch.autograd.grad(loss, [self.params[k] for k in live], retain_graph=retain_graph,
                                  allow_unused=True)
        for k, g in zip(live, got, strict=True):
            out[k] = g
        return out

    def _sum_replicated(self, grads: list[torch.Tensor | None], live: list[int]) -> list[torch.Tensor | None]:
        """The ``live`` gradients (zeros where None) with the replicated ones summed over ranks in
        one flat all-reduce; the others are left as they are. A live parameter this rank's loss
        did not reach gets a zero gradient — a user table whose shard holds none of the batch's
        users included — so Adam steps the same parameters at every W (``comm.sum_grads``)."""
        out = list(grads)
        for k in live:
            if out[k] is None:
                out[k] = torch.zeros_like(self.params[k])
        rep = [k for k in live if not bool(self.sharded[k])]
        if collectives.is_distributed() and rep:
            flat = torch.cat([out[k].reshape(-1) for k in rep])
            collectives.sum_stats(flat)
            offset = 0
            for k in rep:
                out[k] = flat[offset : offset + out[k].numel()].view_as(out[k]).clone()
                offset += out[k].numel()
        return out

    def set_gradients(self, total: torch.Tensor) -> None:
        """.grad = ∇total for the live parameters (replicated ones summed over ranks)."""
        live = self.live()
        grads = self._sum_replicated(self._grads(total, live), live)
        for k in live:
            self.params[k].grad = grads[k]

    def scaled_gradients(self, loss_f: torch.Tensor, loss_r: torch.Tensor) -> None:
        """Branch-wise scaling (:mod:`.tru.scaling`) of what the update moves: the ratios r_b are
        measured on the live parameters' gradients with the row masks applied — a frozen layer
        group, or a row outside the k-hop set, never moves, so its forget/retain balance does not
        damp the branches that do. Only branches with a live parameter get an α. With one such
        branch its α is 1 (r_b / max r = 1) and g = λ_r·g_r + λ_f·g_f is one backward of
        λ_f·L_f + λ_r·L_r (unless conflicts are projected, which needs g_f and g_r apart)."""
        sc = self.spec.scaling
        live = self.live()
        live_set = set(live)
        named = self._groups(self.model.branches())
        branches = {b: [k for k in idx if k in live_set] for b, idx in named.items()}
        branches = {b: idx for b, idx in branches.items() if idx}
        if len(branches) <= 1 and not sc.project_conflicts:
            self.set_gradients(self.uc.lambda_f * loss_f + self.uc.lambda_r * loss_r)
            alphas, conflicts = dict.fromkeys(branches, 1.0), dict.fromkeys(branches, False)
        else:
            alphas, conflicts = self._combine_branches(loss_f, loss_r, live, branches)
        log = self.stats.setdefault("scaling", {"steps": 0, "alpha_sum": {}, "conflict_steps": {}})
        log["steps"] += 1
        for b in branches:
            log["alpha_sum"][b] = log["alpha_sum"].get(b, 0.0) + alphas[b]
            log["conflict_steps"][b] = log["conflict_steps"].get(b, 0) + int(conflicts[b])
        log["alpha_last"] = alphas

    def _combine_branches(self, loss_f: torch.Tensor, loss_r: torch.Tensor, live: list[int],
                          branches: dict[str, list[int]]) -> tuple[dict[str, float], dict[str, bool]]:
        """g_f, g_r apart; α per branch from their masked statistics; .grad = the combined step.
        Returns (α per branch, whether the branch's g_f and g_r conflicted)."""
        sc = self.spec.scaling
        g_f = self._sum_replicated(self._grads(loss_f, live, retain_graph=True), live)
        g_r = self._sum_replicated(self._grads(loss_r, live), live)
        per = torch.zeros(len(self.params), 3, dtype=torch.float64)
        for k in live:  # rows outside the masks: not counted here, zeroed by apply_masks after
            per[k] = scale_fn.gradient_statistics(g_f[k], g_r[k], self.frozen_rows.get(id(self.params[k])))
        sums = group_sums(branches, per, self.sharded)
        forget_sq, retain_sq = {b: v[0] for b, v in sums.items()}, {b: v[1] for b, v in sums.items()}
        alphas = scale_fn.decide_alphas(forget_sq, retain_sq, sc.gamma, sc.alpha_min, sc.delta)
        for b, idx in branches.items():
            coef = scale_fn.projection_coefficient(sums[b][2], sums[b][1]) if sc.project_conflicts else 0.0
            combined = scale_fn.combine([g_f[k] for k in idx], [g_r[k] for k in idx], alphas[b], coef,
                                        self.uc.lambda_f, self.uc.lambda_r)
            for k, g in zip(idx, combined, strict=True):
                self.params[k].grad = g
        return alphas, {b: sums[b][2] < 0 for b in branches}

    def apply_masks(self) -> None:
        for p in self.params:
            if id(p) in self.frozen_params:
                p.grad = None
            elif p.grad is not None and id(p) in self.frozen_rows:
                p.grad.mul_(self.frozen_rows[id(p)].to(p.grad.dtype)[:, None])

    def owner_stream(self, batch_size: int) -> Iterator[BPRBatch] | None:
        """Batches of the retained train pairs of the deleted pairs' own users (those not reset),
        for the owners' keep term (``gate.owner_keep_weight``); None when it is off or there
        are no such pairs."""
        gate = self.spec.gate
        if gate is None or self.target_mode != "calibrated" or gate.owner_keep_weight <= 0:
            return None
        tu, ti = self.retained_pairs
        owners = np.setdiff1d(self.fu, np.asarray(self.deletion.reset_users, dtype=np.int64))
        mine = np.isin(tu, owners)
        if not mine.any():
            return None
        # negatives: never one of the owner's own items, retained or deleted (as the forget
        # batches draw them), so the term never holds a deleted item's score in place
        sampler = BPRSampler(tu[mine], ti[mine], self.data.n_users, self.data.n_items,
                             seed=self.uc.seed + 3, book=self.graph.book, rank=self.graph.rank,
                             never_negative=(self.fu, self.fi))
        return retain_stream(sampler, batch_size)

    def shared_forward(self) -> Embeddings:
        """The full forward ``model.embed(graph)`` as one :meth:`Backbone.handed_on_branch`
        (:attr:`shares_forward`): a gate pass (no grad) builds it with autograd on and ranks a
        detached view; the step after it takes it if no parameter was written in between (an
        Adam step, a best state put back) and none froze — else it runs its own. Reuses are
        counted in ``stats["gate_forwards_reused"]``. What it saves: the module docstring."""
        computed = []

        def forward() -> Embeddings:
            computed.append(True)
            return self.model.embed(self.graph)

        emb = self.model.handed_on_branch(("embed",), self.graph, self.params, forward)
        if torch.is_grad_enabled() and not computed:
            self.stats["gate_forwards_reused"] = self.stats.get("gate_forwards_reused", 0) + 1
        return emb

    def step(self, optimizer: PlainAdam, f_batch: BPRBatch, r_batch: BPRBatch | None,
             o_batch: BPRBatch | None = None) -> None:
        """One update: forward on the batches, L_f on the forget batch, L_r = the model's loss on
        the retain batch plus κ·keep on it and κ_o·keep on the owners' batch ``o_batch``;
        gradients (scaled per branch or not), masks, Adam."""
        optimizer.zero_grad(set_to_none=True)
        if self.shares_forward:  # the full forward, the gate pass's if it is still current
            emb = self.shared_forward()
        else:
            emb = self.embed(*(b for b in (f_batch, r_batch, o_batch) if b is not None))
        loss_f = self.forget_loss(emb, f_batch) if self.spec.forget_term != "none" else None
        loss_r = self.model.loss(r_batch, self.graph, emb) if r_batch is not None else None
        if loss_r is not None and self.start_emb is not None and self.spec.gate.keep_weight > 0:
            loss_r = loss_r + self.spec.gate.keep_weight * self.keep_loss(emb, r_batch)
        if o_batch is not None and loss_r is not None:
            loss_r = loss_r + self.spec.gate.owner_keep_weight * self.keep_loss(emb, o_batch)
        if self.spec.scaling is not None and loss_f is not None and loss_r is not None:
            self.scaled_gradients(loss_f, loss_r)
        else:
            total = None
            if loss_f is not None:
                total = self.uc.lambda_f * loss_f
            if loss_r is not None:
                total = self.uc.lambda_r * loss_r if total is None else total + self.uc.lambda_r * loss_r
            self.set_gradients(total)
        self.apply_masks()
        optimizer.step()

    # -- the run -------------------------------------------------------------------------------
    def iterate(self) -> Iterator[int]:
        """The loop as a generator: yields the number of epochs run after each epoch.

        The model may be evaluated between yields (the Ray Tune trainable reports every
        epoch); training mode is restored at the start of each epoch. ``self.stats`` is
        final once the generator is exhausted.
        """
        spec, uc = self.spec, self.uc
        torch_seed(uc.seed)
        if self.start_on_target:
            # every deleted pair belongs to a deleted user, whose served row is already the fresh
            # one Retrain would serve: the calibrated target is the pair's own rank (q = p), so the
            # gate's first pass would find a zero gap. Skip it — and the snapshot, the full forward
            # and the ranking: a whole-user deletion costs the deletion step, not a pass over the
            # graph — with or without VALID pairs, which only the held group's target needs.
            self.stats.update(steps=0, epochs_run=0, converged_epoch=0,
                              gate_target="calibrated (every deleted pair is a deleted user's: on target)")
            return
        self.freeze_reset_users()
        n_f = len(self.fu)
        if n_f == 0:
            self.stats["steps"] = 0
            return
        b = equal_batch_size(n_f, uc.batch_size)
        self.stats["batch_size"] = b
        if spec.isolation is not None:
            self.freeze_non_candidates()
        if spec.isolation is not None and spec.gate is None:
            self.isolation_pass(b)
        if spec.gate is not None:
            self.exclude = history_mask(self.data, ["train"], self.graph)
            if self.target_mode == "calibrated":
                self.setup_reference()
        negs = BPRSampler(*self.orig_pairs, self.data.n_users, self.data.n_items, seed=0)
        rng = np.random.default_rng([uc.seed, 7])
        retain = None
        if spec.retain:
            sampler = BPRSampler(*self.retained_pairs, self.data.n_users, self.data.n_items,
                                 seed=uc.seed + 1, book=self.graph.book, rank=self.graph.rank)
            retain = retain_stream(sampler, b)
        owners = self.owner_stream(b) if retain is not None else None
        calibrated = self.target_mode == "calibrated"
        self.lr = spec.gate.lr if calibrated else uc.lr
        self.optimizer = PlainAdam(self.params, lr=self.lr)
        self.model.train()
        steps, converged_at, epochs_run = 0, None, 0
        alpha_epochs: list[dict[str, float]] = []
        for epoch in range(spec.gate.max_epochs if calibrated else uc.epochs):
            self.model.train()  # a consumer of iterate() may have evaluated the model in eval mode
            if spec.gate is not None and self.gate_pass(epoch):
                converged_at = epoch
                break
            if self.stalled():
                break
            if epoch == 0 and spec.isolation is not None and spec.gate is not None:
                self.isolation_pass(b)  # after the first gate pass: nothing to isolate if already converged
            if self.stats.get("isolation", {}).get("movable_groups") == []:
                self.stats["stop_reason"] = "isolation left nothing to move"
                self.best["stopped"] = True  # nor a closing gate pass: the model is the one just ranked
                break  # no step could change a parameter: the result is the start model
            before = dict(self.stats.get("scaling", {}).get("alpha_sum", {}))
            before_steps = self.stats.get("scaling", {}).get("steps", 0)
            for f_batch in forget_batches(self.fu, self.fi, b, rng, negs, self.graph.book, self.graph.rank):
                r_batch = next(retain).to(self.device) if retain is not None else None
                o_batch = next(owners).to(self.device) if owners is not None else None
                self.step(self.optimizer, f_batch.to(self.device), r_batch, o_batch)
                steps += 1
            epochs_run += 1
            if "scaling" in self.stats:
                sc = self.stats["scaling"]
                k = max(1, sc["steps"] - before_steps)
                alpha_epochs.append({b_: (v - before.get(b_, 0.0)) / k for b_, v in sc["alpha_sum"].items()})
            self.stats.update(steps=steps, epochs_run=epochs_run)
            yield epochs_run
        self.model.train()
        if spec.gate is not None and converged_at is None and not self.best.get("stopped"):
            if self.gate_pass(epochs_run):
                converged_at = epochs_run
            self.stalled()
        self.model.drop_handed_on(("embed",))  # no step follows: free its autograd graph
        self.restore_best()
        self.stats.update(steps=steps, epochs_run=epochs_run)
        if spec.gate is not None:
            self.stats["converged_epoch"] = converged_at
        if "scaling" in self.stats:
            sc = self.stats.pop("scaling")
            self.stats["scaling"] = {"alpha_per_epoch": alpha_epochs, "alpha_last": sc.get("alpha_last", {}),
                                     "conflict_steps": sc["conflict_steps"], "steps": sc["steps"]}


def on_target(deletion: Deletion, spec: UpdateSpec) -> bool:
    """Whether the calibrated gate would find every deleted pair on target before any step: every
    deleted train pair belongs to a deleted (reset) user — with or without VALID pairs in D_r,
    which only the held group's target reads (:meth:`_Loop.setup_reference`). Decided from the
    forget set alone."""
    fu = deletion.forget.train_users
    return bool(spec.gate is not None and spec.gate.target == "calibrated" and len(fu)
                and np.isin(fu, deletion.reset_users).all())


def run_update(model: Backbone, deletion: Deletion, cfg: Config, spec: UpdateSpec
               ) -> tuple[Backbone, dict[str, Any]]:
    """Run the reverse-update loop from the deletion step's start; return (model, stats)."""
    *_, (_epoch, work, stats) = iter_update(model, deletion, cfg, spec)
    return work, stats  # the last state; stats are final once the generator is exhausted


def iter_update(model: Backbone, deletion: Deletion, cfg: Config, spec: UpdateSpec
                ) -> Iterator[tuple[int, Backbone, dict[str, Any]]]:
    """The same computation as :func:`run_update`, yielding ``(epoch, model, stats)`` after
    every epoch (the model is the live working copy: evaluate it, don't keep it). Stops
    early when the gate converges, exactly where ``run_update`` would; a run that converges
    before its first epoch yields its starting state once, as epoch 0. With the calibrated
    gate the model left after the last yield may be an earlier epoch's (the state of the
    smallest calibration gap, put back when later epochs overshot — ``stats["best_gap"]``);
    that is what ``run_update`` returns. Between yields the groups isolation froze have
    ``requires_grad`` False (and the model's constant branches may be cached); both are undone
    when the generator ends, is closed, or raises."""
    reuse = on_target(deletion, spec)
    work = start_model(model, deletion, cfg.unlearn.seed, reuse=reuse)
    loop = _Loop(model, work, deletion, cfg, spec, start_on_target=reuse)
    ran = False
    # frozen groups get requires_grad False for the run (isolation_pass), so a branch made of
    # them only is a constant the backbone may compute once (Backbone.constant_branches)
    # fixed-order CPU kernels (tru_dist.train.determinism) while the loop runs, off at each yield:
    # the switch is process-global, so a consumer's code between epochs (an evaluation, another
    # seed's generator advanced in turn, as Tune's trainable does) must neither see it on nor
    # have it turned off under its own steps
    device = deletion.graph_after.ui.norm.device
    try:
        with work.constant_branches():
            epochs = loop.iterate()
            while True:
                with deterministic_kernels(cfg.train.deterministic, device):
                    epoch = next(epochs, None)  # one epoch, or the loop's closing work
                if epoch is None:
                    break
                ran = True
                work.eval()
                yield epoch, work, loop.stats
    finally:
        for p in loop.params:
            p.requires_grad_(True)
    if not ran:  # converged before the first epoch (or nothing to forget): the state is the start
        work.eval()
        yield 0, work, loop.stats
