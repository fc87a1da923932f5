"""The backbone contract (DESIGN §4) shared by every model.

A backbone is an ``nn.Module`` whose ``embed(graph)`` returns final user and item
embeddings; scores are inner products ``s_ui = <e_u, e_i>``. The graph is an argument,
so the post-deletion graph is just another call. Worker-local layout: user-side
parameters hold only the worker's users (``graph.n_local_users`` rows); item-side
parameters are replicated and their gradients summed over workers.

Beyond ``embed`` each backbone declares:

* ``branches()`` — parameters per modality branch (``id``, ``image``, ``text``, ...,
  plus ``shared`` for fusion parameters owned by no branch); used by TRU's branch-wise
  modality scaling.
* ``layer_groups()`` — named modules in forward order; used by TRU's layer isolation.
* ``row_tables()`` — the row-indexed embedding tables and whether rows are users or
  items; used for row isolation and for resetting deleted users.

Both partitions must cover every trainable parameter exactly once (tested).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tru_dist.config import ModelConfig
from tru_dist.errors import ConfigError, DataError


@dataclass
class BPRBatch:
    """A batch of (user, positive, negative) triples for one worker.

    ``users`` are local user ids (0-based within the worker's range). ``scale`` turns the
    sum over the worker's triples into its share of the *global* mean (1 / global batch
    size), so the sum of worker losses equals the single-process loss.
    """

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    scale: float

    def to(self, device: torch.device | str) -> BPRBatch:
        return BPRBatch(self.users.to(device), self.pos.to(device), self.neg.to(device), self.scale)


class Rows:
    """Rows of a table computed for some ids only, indexed by id: ``rows[ids]`` is ``values``'
    rows of those ids (what ``embed_targets`` returns in place of full tables, so the losses
    index them exactly as they index ``embed``'s). An id it does not hold is an error, never a
    silent wrong row."""

    def __init__(self, values: torch.Tensor, ids: torch.Tensor):
        self.values = values
        self.ids = ids.to(values.device)
        self._sorted, self._order = torch.sort(self.ids)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        index = index.to(self._sorted.device)
        at = torch.searchsorted(self._sorted, index).clamp(max=max(len(self._sorted) - 1, 0))
        if index.numel() and (len(self._sorted) == 0 or not bool((self._sorted[at] == index).all())):
            raise KeyError("Rows: an index asked for is not among the ids these rows were computed for")
        return self.values[self._order[at]]

    def __len__(self) -> int:
        return len(self.ids)

    def new_zeros(self, *size) -> torch.Tensor:
        """A zero tensor of the rows' dtype and device (as ``Tensor.new_zeros``)."""
        return self.values.new_zeros(*size)


@dataclass
class Embeddings:
    """Output of ``embed``: final embeddings plus model-specific tensors for its regularisers.

    From ``embed_targets`` the fields are :class:`Rows` (indexed by id the same way)."""

    user: torch.Tensor | Rows
    item: torch.Tensor | Rows
    aux: dict[str, torch.Tensor | Rows] = field(default_factory=dict)


def bpr_loss(emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
    """Σ softplus(s_uj − s_ui) · scale  (= −log σ(s_ui − s_uj), summed then globally averaged)."""
    u = emb.user[batch.users]
    diff = (u * emb.item[batch.pos]).sum(-1) - (u * emb.item[batch.neg]).sum(-1)
    return F.softplus(-diff).sum() * batch.scale


T = TypeVar("T")

#: Backbone -> its constant-branch store while :meth:`Backbone.constant_branches` is open (kept
#: outside the module's own attributes, so ``copy.deepcopy`` of a model never copies it)
_CONSTANT_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stored_for(entry: tuple, graph: object, params: list[nn.Parameter], stamp: tuple) -> bool:
    """Whether a store entry ``(graph, params, stamp, value)`` was stored for this very graph
    object, these parameter objects and this stamp of their state."""
    g, ps, st, _ = entry
    return g is graph and st == stamp and all(a is b for a, b in zip(ps, params, strict=True))


def _detached(value: T) -> T:
    """``value`` (a tensor, a tuple / list / dict of them, or :class:`Embeddings`) with every
    tensor detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, Embeddings):
        return Embeddings(_detached(value.user), _detached(value.item), _detached(value.aux))
    return value


#: branch names every feature backbone's ``branches()`` uses besides its modalities
RESERVED_BRANCHES = frozenset({"id", "shared"})


def check_modality_names(model: str, feature_dims: dict[str, int]) -> None:
    """Refuse, in one line, a modality name a feature backbone cannot use: one holding ``.``
    or naming an attribute of ``nn.ModuleDict`` (``train``, ``items``, ``keys``, ...) — torch
    refuses either as a module key, which was a KeyError traceback — or ``id`` / ``shared``,
    which would silently take the place of the ID or shared branch (``branches()``)."""
    probe = nn.ModuleDict()
    for m in sorted(feature_dims):
        if "." in m:
            why, fix = "it contains '.'", m.replace(".", "_")
        elif m in RESERVED_BRANCHES:
            why, fix = f"the model's own '{m}' branch has that name", f"{m}2"
        elif hasattr(probe, m):
            why, fix = f"torch reserves '{m}' (an attribute of nn.ModuleDict)", f"{m}2"
        else:
            continue
        raise DataError(
            f"modality '{m}' cannot name a part of model '{model}': {why}; rename its feature file "
            f"({m}_feat.npy, or item_features/{m}.npy in a store), e.g. to {fix}_feat.npy")


class Backbone(nn.Module, ABC):
    """Base class: subclasses implement ``embed`` and the three parameter partitions."""

    name: ClassVar[str] = "backbone"
    #: modalities the model cannot run without; "any" = at least one feature modality
    requires: ClassVar[Literal["none", "any"]] = "none"
    #: whether ``embed`` reads the item–item kNN graphs (``graph.knn``); builders skip them otherwise
    uses_knn: ClassVar[bool] = False
    #: whether ``embed`` computes the same values in training and eval mode (no dropout, no
    #: sampling, no RNG): an unlearning step may then take its forward from the gate pass's
    #: eval-mode one over the same parameters (``unlearn.engine``) instead of running it again
    mode_free_forward: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass that overrides ``embed`` without declaring ``mode_free_forward`` itself does
        not inherit its parent's True: it may add dropout or noise in training mode."""
        super().__init_subclass__(**kwargs)
        if "embed" in cls.__dict__ and "mode_free_forward" not in cls.__dict__:
            cls.mode_free_forward = False

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        cfg: ModelConfig,
        user_range: tuple[int, int] | None = None,
    ):
        """``user_range`` = this worker's users ``[lo, hi)`` (all users when None). User tables
        are initialised for all users from the seeded RNG and then sliced, so every W
        produces the same initial parameters."""
        super().__init__()
        if self.requires == "any" and not feature_dims:
            raise ConfigError(
                f"model '{self.name}' needs at least one item feature modality (e.g. image_feat.npy or "
                "text_feat.npy in the data folder); use --model=lightgcn for interaction-only data"
            )
        if self.requires != "none":
            check_modality_names(self.name, feature_dims)
        self.cfg = cfg
        self.n_users = n_users
        self.user_range = user_range or (0, n_users)
        self.n_local_users = self.user_range[1] - self.user_range[0]
        self.n_items = n_items
        self.modalities = sorted(feature_dims)
        self.feature_dims = dict(feature_dims)

    @contextmanager
    def constant_branches(self) -> Iterator[None]:
        """Within this context ``embed`` may reuse, from one call to the next, the output of a
        branch whose parameters all have ``requires_grad`` False and whose other inputs are the
        graph's fixed features — e.g. MIG-GT's modality encoders and their propagation while an
        unlearning update moves only ID rows (over half of its forward on Scientific).

        An entry is served only for the same graph object and the same parameter objects at the
        same version counters, so an in-place write to those parameters (a restored state)
        recomputes it; the caller must not edit the graph in place while the context is open.
        The store is kept outside the module (a copy of the model made inside the context caches
        nothing), and a branch must be replicated: its hits are then the same on every rank, so a
        collective inside ``compute`` runs on all of them or none. Backbones without such a branch
        ignore the context."""
        _CONSTANT_STORES[self] = {}
        try:
            yield
        finally:
            _CONSTANT_STORES.pop(self, None)

    def constant_branch(self, key: tuple, graph: object, params: list[nn.Parameter],
                        compute: Callable[[], T]) -> T:
        """``compute()``, or its stored result when inside :meth:`constant_branches`, no parameter
        in ``params`` requires grad, and ``key``, ``graph``, ``params`` and their versions are
        those it was stored with."""
        store = _CONSTANT_STORES.get(self)
        if store is None or any(p.requires_grad for p in params):
            return compute()
        versions = tuple(p._version for p in params)
        hit = store.get(key)
        if hit is not None and _stored_for(hit, graph, params, versions):
            return hit[3]
        value = compute()
        store[key] = (graph, tuple(params), versions, value)
        return value

    def handed_on_branch(self, key: tuple, graph: object, params: list[nn.Parameter],
                         compute: Callable[[], T]) -> T:
        """``compute()`` for a branch whose parameters may move, shared between a no-grad call
        and the one grad-enabled call after it while the parameters stay as they were.

        Inside :meth:`constant_branches` a call under ``torch.no_grad`` (a gate pass) computes
        the branch with autograd on and stores it; the next call with grad enabled (the step
        that follows) takes the stored value — its autograd graph included — if ``key``,
        ``graph``, ``params``, their version counters and ``requires_grad`` flags are those it
        was stored with, and removes it: a graph is backpropagated once. Other no-grad calls
        read it in between. Any in-place write to a parameter (an optimizer step, a restored
        state) bumps its version, so a stale value is never served. Outside the context, or
        when no parameter requires grad, it is plain ``compute()`` (:meth:`constant_branch`
        serves that case). Every rank makes the same calls with the same versions, so a
        collective inside ``compute`` runs on all ranks or none. No-grad callers get detached
        tensors (they never see, or extend, the stored graph); none may write them in place. Only
        for a branch that is the same computation in train and eval mode (no dropout, no
        sampling). Two users: MIG-GT's ID propagation under its sampled attention (a branch
        every forward runs in full), and the unlearning loop's whole forward on a backbone that
        is the same in both modes (``mode_free_forward``; ``_Loop.shared_forward``) — the loop,
        not the backbone, makes that call, as only it knows whether its step runs the full
        forward (not a deletion-local one, not rows) and when to drop it
        (:meth:`drop_handed_on`)."""
        store = _CONSTANT_STORES.get(self)
        if store is None or torch.is_inference_mode_enabled() or not any(p.requires_grad for p in params):
            return compute()
        stamp = tuple((p._version, p.requires_grad) for p in params)
        hit = store.get(key)
        if hit is not None and _stored_for(hit, graph, params, stamp):
            if not torch.is_grad_enabled():
                return _detached(hit[3])
            del store[key]
            return hit[3]
        if torch.is_grad_enabled():
            store.pop(key, None)
            return compute()
        with torch.enable_grad():
            value = compute()
        store[key] = (graph, tuple(params), stamp, value)
        return _detached(value)

    def drop_handed_on(self, key: tuple) -> None:
        """Forget the value :meth:`handed_on_branch` stored under ``key``, if any: its caller
        knows no grad-enabled call will take it (the run ends), so its autograd graph is freed
        now rather than when :meth:`constant_branches` closes."""
        store = _CONSTANT_STORES.get(self)
        if store is not None:
            store.pop(key, None)

    # -- the contract ----------------------------------------------------------------
    @abstractmethod
    def embed(self, graph) -> Embeddings:
        """Final embeddings for this worker's users and all items."""

    def embed_targets(self, graph, users: torch.Tensor, items: torch.Tensor, *, fanout: int = 0,
                      generator: torch.Generator | None = None) -> Embeddings:
        """Final embeddings of the given (distinct) local users and items only, as :class:`Rows`.

        What a step of a deletion-local update needs (:mod:`tru_dist.graph.blocks`): backbones
        that can compute it from the targets' neighbourhood override this (exact when
        ``fanout == 0``); the default propagates in full (:meth:`embed_rows`), so every
        backbone accepts the call."""
        return self.embed_rows(graph, users, items)

    @property
    def local_embedding(self) -> bool:
        """Whether ``embed_targets`` computes from the targets' neighbourhood (not a full ``embed``)."""
        return type(self).embed_targets is not Backbone.embed_targets

    def embed_rows(self, graph, users: torch.Tensor, items: torch.Tensor) -> Embeddings:
        """Final embeddings of the given (distinct, local) users and items as :class:`Rows`,
        from the FULL propagation — unlike :meth:`embed_targets`, no neighbourhood is cut out.

        The values are ``embed``'s rows. A backbone whose last stage is row-wise (MIG-GT's
        global attention: each node's output depends on the propagated table, but no node's
        output on another's) overrides this to run that stage on the rows asked for only: what
        an unlearning step needs, whose batches hold a few hundred of the graph's nodes. The
        default runs ``embed`` and keeps the rows (:func:`rows_of`)."""
        return rows_of(self.embed(graph), users, items)

    @property
    def cheap_rows(self) -> bool:
        """Whether ``embed_rows`` computes less than a full ``embed`` (an override exists)."""
        return type(self).embed_rows is not Backbone.embed_rows

    @abstractmethod
    def branches(self) -> dict[str, list[nn.Parameter]]:
        """Modality branch -> parameters (``id``, one per modality, ``shared``)."""

    @abstractmethod
    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named modules in forward order -> parameters."""

    @abstractmethod
    def row_tables(self) -> dict[str, tuple[nn.Parameter, Literal["user", "item"]]]:
        """Row-indexed embedding tables and which entity their rows are."""

    # -- losses ----------------------------------------------------------------------
    def regularizer(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        """L2 on the batch's ego (layer-0) ID rows: reg_weight · ½Σ‖e‖² · scale."""
        tables = self.row_tables()
        user_table = next(p for p, kind in tables.values() if kind == "user")
        item_table = next(p for p, kind in tables.values() if kind == "item")
        sq = (
            user_table[batch.users].pow(2).sum()
            + item_table[batch.pos].pow(2).sum()
            + item_table[batch.neg].pow(2).sum()
        )
        return self.cfg.reg_weight * 0.5 * sq * batch.scale

    def extra_loss(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        """Model-specific auxiliary loss (MGCN's contrastive term); zero by default."""
        return emb.user.new_zeros(())

    def loss(self, batch: BPRBatch, graph, emb: Embeddings | None = None) -> torch.Tensor:
        """BPR + L2 + the model's auxiliary losses, this worker's share of the global mean."""
        emb = emb if emb is not None else self.embed(graph)
        return bpr_loss(emb, batch) + self.regularizer(emb, batch) + self.extra_loss(emb, batch)

    # -- helpers ---------------------------------------------------------------------
    def replicated_parameters(self) -> list[nn.Parameter]:
        """Parameters every worker holds in full (all but user-row tables); grads are summed."""
        user_ids = {id(p) for p, kind in self.row_tables().values() if kind == "user"}
        return [p for p in self.parameters() if id(p) not in user_ids]

    def user_table(self, dim: int) -> nn.Parameter:
        """This worker's rows of a Xavier-initialised (n_users × dim) user table."""
        return xavier_table(self.n_users, dim, self.user_range)

    @torch.no_grad()
    def reset_user_rows(self, local_users: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Re-initialise the given users' rows in every user table (a fresh Xavier draw with
        the full table's bound, as Retrain would start them)."""
        if local_users.numel() == 0:
            return
        for p, kind in self.row_tables().values():
            if kind == "user":
                bound = (6.0 / (self.n_users + p.shape[1])) ** 0.5
                fresh = torch.empty((local_users.numel(), p.shape[1]), dtype=p.dtype)
                fresh.uniform_(-bound, bound, generator=generator)
                p[local_users.to(p.device)] = fresh.to(p.device)


def xavier_table(n: int, dim: int, rows: tuple[int, int] | None = None) -> nn.Parameter:
    """A Xavier-uniform (n × dim) table as LightGCN/MMRec initialise it; only ``rows`` kept.

    The full table is drawn and then sliced so that every partition of the rows sees the
    same values (W workers start from the W = 1 parameters).
    """
    w = torch.empty(n, dim)
    nn.init.xavier_uniform_(w)
    if rows is not None:
        w = w[rows[0] : rows[1]].clone()
    return nn.Parameter(w)


def rows_of(emb: Embeddings, users: torch.Tensor, items: torch.Tensor) -> Embeddings:
    """``emb`` cut to the given users and items, as :class:`Rows`; ``aux`` entries named
    ``*_user`` / ``*_item`` become per-side rows, others are passed on whole."""

    def keep(name: str, value: torch.Tensor) -> torch.Tensor | Rows:
        if name.endswith("_user"):
            return Rows(value[users], users)
        return Rows(value[items], items) if name.endswith("_item") else value

    return Embeddings(Rows(emb.user[users], users), Rows(emb.item[items], items),
                      {k: keep(k, v) for k, v in emb.aux.items()})


def embed_for(model: Backbone, graph, batches: list[BPRBatch], *, local: bool, fanout: int = 0,
              generator: torch.Generator | None = None) -> Embeddings:
    """The embeddings a step on ``batches`` needs: with ``local`` only the batches' users and
    items from their neighbourhood (``model.embed_targets``); otherwise the full propagation —
    ``model.embed(graph)``, or the batches' rows of it (``model.embed_rows``) where the backbone
    computes those for less. The losses index either the same way."""
    if not local and not model.cheap_rows:
        return model.embed(graph)
    users = torch.unique(torch.cat([b.users for b in batches]))
    items = torch.unique(torch.cat([t for b in batches for t in (b.pos, b.neg)]))
    if not local:
        return model.embed_rows(graph, users, items)
    return model.embed_targets(graph, users, items, fanout=fanout, generator=generator)
