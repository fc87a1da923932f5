"""MIG-GT (Hu et al., AAAI 2025, "Modality-Independent Graph Neural Networks with Global
Transformers for Multimodal Recommendation"), following the paper and its public code.

1. *Modality-independent receptive fields (MIRF).* One propagation per branch b ∈ {id} ∪
   modalities, each with its own hop count K_b (``modality_layers[b]``, default
   ``n_layers``). Inputs: the ID branch starts from [E_u; E_i]; a feature branch from
   [0; f_m(X_m)] (users start at zero and receive the modality only through the graph),
   f_m = PReLU(W2 PReLU(W1 x + b1) + b2) (``feat_hidden`` = width of W1; 0 = one layer).
   The propagation is MGDCF's (the reference's GNN), a personalized-PageRank recursion
   on the self-looped, symmetric-normalized user–item graph Ã = D̃^{-1/2}(A + I)D̃^{-1/2}:
       h^{(k+1)} = β Ã h^{(k)} + α h^{(0)},   out_b = h^{(K_b)} / γ_{K_b},
       γ_K = β^K + α Σ_{j<K} β^j   (= 1 when α + β = 1; here β = 1 − α, α = ``ppr_alpha``).
   Ã is obtained exactly from the stored R̂ = D^{-1/2} R D^{-1/2} and the degrees:
   Ã_UI = diag(√(d_u/(d_u+1))) R̂ diag(√(d_i/(d_i+1))), self-loop weight 1/(d+1).
2. *Combination*: z = Σ_b out_b (sum, as the reference).
3. *Sampling-based global transformer (SGT).* Every node n attends to a memory
   M_n = [z_n; z_{j_1}; …; z_{j_S}] of itself plus S = ``gt_samples`` items drawn
   uniformly (with replacement) from all items:
       a_n = softmax_s( (W_q z_n)·(W_k M_{n,s}) / √d_a ),   t_n = Σ_s a_{n,s} M_{n,s}
       e_n = ρ · t_n + (1 − ρ) · z_n          (ρ = ``gt_alpha``; the reference uses 0.1)
   Values are the memory itself (no value projection), d_a = ``gt_att_dim`` split over
   ``gt_heads`` heads, as in the reference. Final score s_ui = <e_u, e_i>.
4. *Transformer unsmooth regularization (TUR)*, ``extra_loss``: for a batch pair (u, i),
   the transformer is applied to item i's whole memory (every slot as a query), giving
   T_i ∈ R^{(S+1)×d} whose slot 0 is e_i; L_tur = w · CE(softmax_s <e_u, T_{i,s}>, 0),
   i.e. the user must prefer the positive over its own transformed global samples
   (w = ``cl_weight``; the reference weighs it 1 against summed BPR, so the YAML sets 1).

Randomness (sampling, dropout) is partition-independent and reproducible: each forward
draws from a generator seeded by (a seed drawn once at construction from the seeded
torch RNG, a call counter). Draws are made for *all* n_users + n_items nodes and this
worker keeps its user rows, so W workers see the values one process would; samples are
item ids only (items are replicated). The counter advances once per training-mode
``embed`` (every worker calls it in lock-step) and is a buffer, so checkpoints resume the
stream; evaluation mode uses a fixed stream, so evaluation is deterministic.

Simplifications vs the reference code (stated, not hidden):

* No BatchNorm in the feature MLP (batch statistics over sharded rows and train/eval
  state); no random projection of image features to the text width (the learned W1
  subsumes it); no edge dropout; one ``dropout`` rate (default 0, off) applied to the
  ID inputs and the encoded features, where the reference has five separate rates.
* Item ID embeddings are used in the ID branch (the reference's ``use_item_emb`` option;
  its Baby default starts items at zero) because the backbone contract needs an item
  row table for row isolation and L2.
* L2 is the contract's (ego ID rows of the batch), not the reference's L2 on all final
  embeddings; initialisation is Xavier (reference: N(0, 1/d)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tru_dist import comm as collectives
from tru_dist.errors import ConfigError
from tru_dist.graph.adjacency import spmm
from tru_dist.models.base import Backbone, BPRBatch, Embeddings, Rows, rows_of, xavier_table
from tru_dist.models.mgcn import local_features


def _xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def feature_encoder(n_in: int, hidden: int, dim: int) -> nn.Sequential:
    """f_m: Linear → PReLU (→ Linear → PReLU when ``hidden`` > 0), Xavier init, zero bias."""
    if hidden <= 0:
        return nn.Sequential(_xavier_linear(n_in, dim), nn.PReLU())
    return nn.Sequential(_xavier_linear(n_in, hidden), nn.PReLU(), _xavier_linear(hidden, dim), nn.PReLU())


@dataclass
class SelfLoopedGraph:
    """The user–item blocks and diagonal of Ã = D̃^{-1/2}(A + I)D̃^{-1/2} for one shard.

    Ã_UI = diag(√(d_u/(d_u+1))) R̂ diag(√(d_i/(d_i+1))) since R̂_ui = 1/√(d_u d_i);
    the self-loop weights are 1/(d+1). Built once per forward and shared by every branch; inside
    :meth:`Backbone.constant_branches` (an unlearning update) once per graph, as it depends on
    nothing else: rebuilding it was ~4% of a TRU request on MIG-GT (Scientific, items 1%).
    """

    ui: torch.Tensor
    iu: torch.Tensor
    user_loop: torch.Tensor
    item_loop: torch.Tensor

    @classmethod
    def of(cls, graph, dtype: torch.dtype) -> SelfLoopedGraph:
        du, di = graph.ui.user_degree.to(dtype), graph.ui.item_degree.to(dtype)
        su, si = (du / (du + 1)).sqrt(), (di / (di + 1)).sqrt()
        ui, iu = graph.ui.rescaled(su, si)
        return cls(ui, iu, (1.0 / (du + 1)).unsqueeze(1), (1.0 / (di + 1)).unsqueeze(1))

    def step(self, u: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ã h)_users, (Ã h)_items; the item rows are summed over shards."""
        u_next = spmm(self.ui, self.iu, i) + self.user_loop * u
        i_next = collectives.all_reduce_sum(spmm(self.iu, self.ui, u)) + self.item_loop * i
        return u_next, i_next


def restart_propagate(
    graph, user0: torch.Tensor, item0: torch.Tensor | None, hops: int, alpha: float,
    looped: SelfLoopedGraph | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDCF propagation h ← (1−α) Ã h + α h⁰ for ``hops`` steps, divided by γ_K (shard-aware).

    ``item0=None`` means items start at zero. ``looped`` = a prebuilt Ã (built here when
    None); see the module docstring for Ã.
    """
    beta = 1.0 - alpha
    if item0 is None:
        item0 = user0.new_zeros((graph.n_items, user0.shape[1]))
    looped = looped if looped is not None else SelfLoopedGraph.of(graph, user0.dtype)
    u, i = user0, item0
    restart_u, restart_i = alpha * user0, alpha * item0
    for _ in range(hops):
        u_next, i_next = looped.step(u, i)
        u, i = torch.add(restart_u, u_next, alpha=beta), torch.add(restart_i, i_next, alpha=beta)
    gamma = beta**hops + alpha * sum(beta**j for j in range(hops))
    return u / gamma, i / gamma


class SampledGlobalAttention(nn.Module):
    """Step 3: queries attend over a memory (self + sampled items); values = memory; residual ρ."""

    def __init__(self, dim: int, att_dim: int, heads: int, rho: float):
        super().__init__()
        if heads < 1 or att_dim % heads or dim % heads:
            raise ConfigError(
                f"gt_heads={heads} must divide both gt_att_dim={att_dim} and dim={dim}; "
                "choose e.g. --gt_heads=1"
            )
        self.heads, self.rho = heads, rho
        self.q = _xavier_linear(dim, att_dim)
        self.k = _xavier_linear(dim, att_dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``queries``: (N, Q, d), ``memory``: (N, S, d) -> (N, Q, d)."""
        n, nq, d = queries.shape
        h = self.heads
        a = self.q.out_features // h  # explicit, so that zero query rows (n = 0) reshape too
        q = self.q(queries).view(n, nq, h, a)
        k = self.k(memory).view(n, memory.shape[1], h, a)
        v = memory.view(n, memory.shape[1], h, d // h)
        logits = torch.einsum("nqha,nsha->nhqs", q, k) / q.shape[-1] ** 0.5
        attended = torch.einsum("nhqs,nshd->nqhd", logits.softmax(-1), v).reshape(n, nq, d)
        return self.rho * attended + (1.0 - self.rho) * queries


def _dropout(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1.0 - p)


class MIGGT(Backbone):
    """MIG-GT backbone; see the module docstring for the equations and simplifications."""

    name = "miggt"
    requires = "any"

    def __init__(self, n_users, n_items, feature_dims, cfg, user_range=None):
        super().__init__(n_users, n_items, feature_dims, cfg, user_range)
        d = cfg.dim
        self.hops = {b: int(cfg.modality_layers.get(b, cfg.n_layers)) for b in ["id", *self.modalities]}
        bad = {b: k for b, k in self.hops.items() if k < 0}
        if bad:
            raise ConfigError(f"modality_layers must be >= 0, got {bad}; e.g. --modality_layers='{{id: 4}}'")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"dropout={cfg.dropout} must lie in [0, 1)")
        self.user_emb = self.user_table(d)
        self.item_emb = xavier_table(n_items, d)
        self.encoders = nn.ModuleDict(
            {m: feature_encoder(self.feature_dims[m], cfg.feat_hidden, d) for m in self.modalities}
        )
        self.gt = None
        if cfg.gt_samples > 0:
            self.gt = SampledGlobalAttention(d, cfg.gt_att_dim, cfg.gt_heads, cfg.gt_alpha)
        self.register_buffer("rng_seed", torch.randint(0, 2**62, ()))
        self.register_buffer("rng_calls", torch.zeros((), dtype=torch.int64))

    # -- randomness ------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator for this forward: same values on every worker, new ones each training call."""
        stream = int(self.rng_calls) if self.training else -1
        if self.training:
            self.rng_calls += 1
        gen = torch.Generator(device=device)
        gen.manual_seed((int(self.rng_seed) * 1_000_003 + stream + 1) % 2**63)
        return gen

    # -- forward -----------------------------------------------------------------------
    def embed(self, graph) -> Embeddings:
        return self._embed(graph, None, None)

    def embed_rows(self, graph, users: torch.Tensor, items: torch.Tensor) -> Embeddings:
        """The given rows of ``embed``: propagation in full, the global attention (step 3, row-wise)
        for these users and items only, as :class:`Rows`. The random draws are ``embed``'s (made
        for every node), so the rows are ``embed``'s values — the attention of a subset of rows
        is the same arithmetic on each row (tested bit for bit at ≥ 4 rows; 1–3 rows go through
        another matrix-product kernel and may differ in the last bit). An unlearning step's
        batches hold a few hundred of Scientific's 4,513 nodes: attending all of them was ~3/4
        of a TRU step (forward and backward) on MIG-GT."""
        return self._embed(graph, users, items)

    def _embed(self, graph, users: torch.Tensor | None, items: torch.Tensor | None) -> Embeddings:
        """``embed`` (``users`` None), or the rows ``users`` / ``items`` of it as :class:`Rows`."""
        device = self.user_emb.device
        gen = self._generator(device)
        p = self.cfg.dropout if self.training else 0.0
        lo, hi = self.user_range
        user0, item0 = self.user_emb, self.item_emb
        if p > 0:  # masks drawn for all users, then sliced: partition-independent
            user_mask = _dropout(torch.ones(self.n_users, user0.shape[1], device=device), p, gen)
            user0 = user0 * user_mask[lo:hi]
            item0 = _dropout(item0, p, gen)
        looped = self.constant_branch(("self_looped", user0.dtype, device), graph, [],
                                      lambda: SelfLoopedGraph.of(graph, user0.dtype))
        id_branch = functools.partial(restart_propagate, graph, user0, item0, self.hops["id"],
                                      self.cfg.ppr_alpha, looped)
        if p > 0:  # fresh dropout masks: the step's propagation is not the gate pass's
            z_u, z_i = id_branch()
        else:  # the gate pass's ID propagation, handed on to the step right after it
            z_u, z_i = self.handed_on_branch(("id", user0.dtype, device), graph,
                                             [self.user_emb, self.item_emb], id_branch)
        for m in self.modalities:
            view = functools.partial(self._modality_view, graph, m, user0, p, gen, looped)
            if p > 0:  # dropout draws fresh masks every call: nothing to reuse
                u_m, i_m = view()
            else:  # a frozen encoder's view is a constant of the graph (Backbone.constant_branches)
                u_m, i_m = self.constant_branch(("modality", m, user0.dtype, user0.device), graph,
                                                list(self.encoders[m].parameters()), view)
            z_u, z_i = z_u + u_m, z_i + i_m
        if self.gt is None:
            emb = Embeddings(z_u, z_i)
            return emb if users is None else rows_of(emb, users, items)
        samples = torch.randint(0, self.n_items, (self.n_users + self.n_items, self.cfg.gt_samples),
                                generator=gen, device=device)
        item_samples, user_samples = samples[self.n_users :], samples[lo:hi]
        aux = {"gt_item_input": z_i, "gt_item_samples": item_samples, "gt_user_samples": user_samples}
        if users is None:
            return Embeddings(self._attend(z_u, z_i, user_samples), self._attend(z_i, z_i, item_samples), aux)
        users, items = users.to(device), items.to(device)
        e_u = self._attend(z_u[users], z_i, user_samples[users])
        e_i = self._attend(z_i[items], z_i, item_samples[items])
        return Embeddings(Rows(e_u, users), Rows(e_i, items), aux)

    def _modality_view(self, graph, m: str, user0: torch.Tensor, p: float, gen: torch.Generator,
                       looped: SelfLoopedGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's (user, item) view: its encoded features, restart-propagated from the items."""
        encoded = collectives.all_gather_rows(self.encoders[m](local_features(graph, m, user0.dtype)))
        if p > 0:
            encoded = _dropout(encoded, p, gen)
        return restart_propagate(graph, user0.new_zeros(user0.shape), encoded, self.hops[m],
                                 self.cfg.ppr_alpha, looped)

    def _attend(self, z: torch.Tensor, z_items: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """e_n for query rows ``z`` whose memory is [z_n; z_items[samples_n]]."""
        memory = torch.cat([z.unsqueeze(1), z_items[samples]], dim=1)
        return self.gt(z.unsqueeze(1), memory).squeeze(1)

    # -- losses ------------------------------------------------------------------------
    def extra_loss(self, emb: Embeddings, batch: BPRBatch) -> torch.Tensor:
        """TUR: w · Σ_b CE(<e_u, T_{i,s}>_s, 0) · scale over the batch's (user, positive) pairs."""
        if self.gt is None or self.cfg.cl_weight == 0:
            return emb.user.new_zeros(())
        z_i, samples = emb.aux["gt_item_input"], emb.aux["gt_item_samples"]
        memory = torch.cat([z_i[batch.pos].unsqueeze(1), z_i[samples[batch.pos]]], dim=1)
        transformed = self.gt(memory, memory)
        logits = torch.einsum("bd,bsd->bs", emb.user[batch.users], transformed)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return self.cfg.cl_weight * F.cross_entropy(logits, target, reduction="sum") * batch.scale

    # -- partitions --------------------------------------------------------------------
    def branches(self) -> dict[str, list[nn.Parameter]]:
        out: dict[str, list[nn.Parameter]] = {"id": [self.user_emb, self.item_emb]}
        for m in self.modalities:
            out[m] = list(self.encoders[m].parameters())
        out["shared"] = list(self.gt.parameters()) if self.gt is not None else []
        return out

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        out: dict[str, list[nn.Parameter]] = {"user_emb": [self.user_emb], "item_emb": [self.item_emb]}
        for m in self.modalities:
            out[f"encoder_{m}"] = list(self.encoders[m].parameters())
        if self.gt is not None:
            out["global_transformer"] = list(self.gt.parameters())
        return out

    def row_tables(self) -> dict[str, tuple[nn.Parameter, Literal["user", "item"]]]:
        return {"user_emb": (self.user_emb, "user"), "item_emb": (self.item_emb, "item")}
