"""Memory and communication plan per worker, before anything is allocated (TorchRec-style).

For a graph (n_users, n_items, n_edges train edges), item features of widths
``feature_dims``, a backbone of width d with L propagation layers and W workers holding
contiguous user ranges and feature slices (DESIGN §7), worker r's resident bytes are
(fp32 = 4 bytes, int64 = 8):

* ``adjacency``   — R̂_r as CSR and its transpose plus the degrees (the edge lists are
  read off the CSR on demand): ``crow (n_r+1)·8 + col e_r·8 + val e_r·4`` +
  ``(n_items+1)·8 + e_r·12`` + ``(n_r + n_items)·4``  (n_r users, e_r edges on the shard);
* ``knn``         — MGCN's item–item graphs, replicated: per modality Â and Âᵀ as CSR with
  n_items·k entries each;
* ``interactions``— the interaction table every worker keeps (the sampler draws the same
  *global* batch on every rank): ``n_int·17`` (user, item int64; split label int8) plus
  the sampler's train copies and sorted keys ``n_train·24``;
* ``user_rows``   — the shard's user tables × 4 (parameter, gradient, Adam m and v);
* ``replicated``  — every other parameter (item table, projections, fusion) × 4, held in
  full by every worker, its gradient all-reduced;
* ``features``    — the worker's slice of each feature matrix, ``rows_r · Σ_m d_m`` in
  ``feature_dtype`` (with float16 the float32 copy the projection casts and keeps for its
  weight gradient is counted under activations, so float16 is suggested only where it helps);
* ``projected``   — the all-gathered projected feature matrix, ``M · n_items · d · 4``;
* ``activations`` — 2 × the tensors one forward allocates (kept for backward, and as many
  gradients in the backward); an estimate per backbone, see
  :func:`activation_forward_bytes`.

Parameter counts come from instantiating the backbone on PyTorch's ``meta`` device (no
memory), so the plan is exact for every registered model.

Communication per training step (payload = size of what each collective produces, the
convention of :mod:`tru_dist.distributed.comm_meter`): per propagation hop one all-reduce of
``n_items × d`` floats forward and one backward; per feature modality one all-gather of
the projected ``n_items × d`` matrix forward and its all-to-all backward; MGCN's InfoNCE
gathers the global batch's ``B × d`` rows twice (users, items), forward and backward; one
all-reduce of the replicated parameters' gradients. A ring moves ``2(W−1)/W`` of an
all-reduce's payload and ``(W−1)/W`` of a gather's over each worker's link
(``wire_bytes_per_step``). At W = 1 nothing is communicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tru_dist.config import ModelConfig
from tru_dist.errors import PlanError

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_LABELS = {
    "adjacency": "adjacency (CSR rows + transpose)",
    "knn": "item-item kNN graphs",
    "interactions": "interaction table + sampler",
    "user_rows": "user rows + Adam state",
    "replicated": "replicated item params + Adam state",
    "features": "feature slice",
    "projected": "all-gathered projected features",
    "activations": "activations",
}


@dataclass(frozen=True)
class ModelProfile:
    """What a backbone does per step that costs memory or communication.

    ``hops_fwd``/``hops_bwd``: user–item all-reduces in the forward / backward;
    ``chains``: propagation chains (each keeps a layer stack); ``gathered``: modalities
    whose projection is all-gathered; ``knn``: holds item–item kNN graphs;
    ``batch_gathers``: InfoNCE all-gathers of global-batch rows; ``hidden``: feature MLP width.
    """

    hops_fwd: int
    hops_bwd: int
    chains: int
    gathered: int
    knn: bool
    batch_gathers: int
    hidden: int


def model_profile(cfg: ModelConfig, modalities: list[str]) -> ModelProfile:
    """Per-model structure (see each backbone's module docstring)."""
    name = cfg.name.lower().replace("-", "")
    m = len(modalities)
    if name == "lightgcn":
        return ModelProfile(cfg.n_layers, cfg.n_layers, 1, 0, False, 0, 0)
    if name == "mgcn":
        return ModelProfile(cfg.n_layers, cfg.n_layers, 1, m, True, 2 if cfg.cl_weight else 0, cfg.dim)
    if name == "miggt":
        hops = {b: int(cfg.modality_layers.get(b, cfg.n_layers)) for b in ["id", *modalities]}
        fwd = sum(hops.values())
        # a feature branch starts its users at zero: its first all-reduce has no gradient
        bwd = hops["id"] + sum(max(0, hops[b] - 1) for b in modalities)
        return ModelProfile(fwd, bwd, 1 + m, m, False, 0, cfg.feat_hidden or cfg.dim)
    raise PlanError(f"the planner has no profile for model '{cfg.name}'; "
                    "add one in tru_dist/distributed/planner.py")


def parameter_counts(cfg: ModelConfig, n_users: int, n_items: int, feature_dims: dict[str, int],
                     user_range: tuple[int, int]) -> tuple[int, int]:
    """(user-row parameters of the shard, replicated parameters), counted on the meta device."""
    from tru_dist.models.registry import model_class

    with torch.device("meta"):
        model = model_class(cfg.name)(n_users, n_items, feature_dims, cfg, user_range)
    user_ids = {id(p) for p, kind in model.row_tables().values() if kind == "user"}
    user = sum(p.numel() for p in model.parameters() if id(p) in user_ids)
    return int(user), int(sum(p.numel() for p in model.replicated_parameters()))


@dataclass(frozen=True)
class Plan:
    """Bytes per worker (the largest shard) and bytes communicated per training step."""

    world_size: int
    budget_bytes: int
    memory_bytes: dict[str, int]
    comm_bytes: dict[str, int]
    wire_bytes_per_step: int
    shard: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.memory_bytes.values())

    @property
    def comm_bytes_per_step(self) -> int:
        return sum(self.comm_bytes.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def largest(self) -> tuple[str, int]:
        key = max(self.memory_bytes, key=lambda k: self.memory_bytes[k])
        return key, self.memory_bytes[key]

    def to_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "fits": self.fits,
            "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes,
            "memory_bytes": dict(self.memory_bytes),
            "comm_bytes": dict(self.comm_bytes),
            "comm_bytes_per_step": self.comm_bytes_per_step,
            "wire_bytes_per_step": self.wire_bytes_per_step,
            "shard": dict(self.shard),
        }

    def table(self) -> str:
        """A markdown table of the memory breakdown (GiB)."""
        rows = [f"| {_LABELS.get(k, k)} | {v / GIB:.3f} |" for k, v in self.memory_bytes.items()]
        rows.append(f"| **total** (budget {self.budget_bytes / GIB:.2f}) | {self.total_bytes / GIB:.3f} |")
        return "| per worker | GiB |\n|---|---|\n" + "\n".join(rows)


def _memory(
    *, n_users: int, n_items: int, n_edges: int, n_interactions: int, feature_dims: dict[str, int],
    cfg: ModelConfig, world_size: int, feature_dtype: str, shard_users: int | None,
    shard_edges: int | None, shard_items: int | None, local_nodes: int | None = None,
) -> tuple[dict[str, int], dict[str, int], int]:
    n_r = shard_users if shard_users is not None else math.ceil(n_users / world_size)
    e_r = shard_edges if shard_edges is not None else math.ceil(n_edges / world_size)
    rows_r = shard_items if shard_items is not None else math.ceil(n_items / world_size)
    mods = sorted(feature_dims)
    prof = model_profile(cfg, mods)
    d = cfg.dim
    uses_features = prof.gathered > 0
    user_params, repl_params = parameter_counts(cfg, n_users, n_items, feature_dims if uses_features else {},
                                                (0, n_r))
    mem = {
        "adjacency": (n_r + 1) * 8 + e_r * 12 + (n_items + 1) * 8 + e_r * 12 + (n_r + n_items) * 4,
        "knn": 0,
        "interactions": n_interactions * 17 + n_edges * 24,
        "user_rows": user_params * 4 * 4,
        "replicated": repl_params * 4 * 4,
        "features": 0,
        "projected": 0,
    }
    if prof.knn:
        k = min(cfg.knn_k, n_items)
        mem["knn"] = len(mods) * 2 * ((n_items + 1) * 8 + n_items * k * 12)
    if uses_features:
        mem["features"] = rows_r * sum(feature_dims.values()) * _DTYPE_BYTES[feature_dtype]
        mem["projected"] = prof.gathered * n_items * d * 4
    full_forward = activation_forward_bytes(cfg, prof, n_r, n_items, rows_r, world_size)
    if local_nodes is None:
        mem["activations"] = 2 * full_forward
    else:  # the batch's neighbourhood (fan-out bounded) per step, plus one no-grad full forward
        # blocks: each depth's sparse product, its buffer and the layer sum, over at most
        # local_nodes rows in all; MGCN's item views on the kNN neighbourhood of those items
        near_items = min(n_items, local_nodes * (min(cfg.knn_k, n_items) ** cfg.mm_layers if prof.knn else 1))
        units = 3 * local_nodes * d + (prof.gathered * 17 * near_items * d if prof.knn else 0)
        mem["activations"] = 2 * 4 * units + full_forward
    if uses_features and feature_dtype != "float32":
        # the backbones cast the slice to float32 for the projection, and autograd keeps that
        # copy for the weight gradient: half-precision storage saves memory only between steps
        mem["activations"] += rows_r * sum(feature_dims.values()) * 4
    shard = {"users": n_r, "edges": e_r, "feature_rows": rows_r, "user_params": user_params,
             "replicated_params": repl_params}
    return mem, shard, repl_params


def activation_forward_bytes(cfg: ModelConfig, prof: ModelProfile, n_local: int, n_items: int, rows: int,
                             world_size: int = 1) -> int:
    """Estimated bytes of the tensors one forward allocates (4-byte floats; n = n_local + n_items).

    Calibrated on measured forward allocations (a ``TorchDispatchMode`` summing the
    storages of every op's outputs) of the three backbones, exact for LightGCN:

    * every chain: per hop the sparse product's output and its zero-initialised buffer on
      both sides, the layer stack and the mean — ``(3·hops + chains·2)·n·d``; at W > 1 the
      all-reduce clones its input, ``+ n_items·d`` per hop;
    * MGCN, per modality: projection, purifier, gate, kNN hops and the fuser's stacks,
      ``(17·n_items + 13·n_local)·d``;
    * MIG-GT: the restart propagation keeps ~9 tensors per hop (degree scalings, restart
      terms) instead of 3, the global transformer's memory and attention
      ``2·n·(S+1)·d`` plus ``(n_users + n_items)·S`` int64 samples, the feature MLP
      ``2.25·rows·h`` per modality.
    """
    d, n = cfg.dim, n_local + n_items
    name = cfg.name.lower().replace("-", "")
    clone = prof.hops_fwd * n_items * d if world_size > 1 else 0
    if name == "miggt":
        s = cfg.gt_samples
        units = 9 * prof.hops_fwd * n * d + 11 * n * d + 2 * n * (s + 1) * d
        units += 2.25 * prof.gathered * rows * prof.hidden
        units += 2 * n * s  # int64 samples (two 4-byte units each)
    else:
        units = (3 * prof.hops_fwd + 2 * prof.chains) * n * d
        if name == "mgcn":
            units += prof.gathered * (17 * n_items + 13 * n_local) * d
    return int(4 * (units + clone))


def _comm(prof: ModelProfile, n_items: int, d: int, batch_size: int, repl_params: int,
          world_size: int) -> tuple[dict[str, int], int]:
    if world_size == 1:
        return {}, 0
    mat = n_items * d * 4
    comm = {
        "ui_all_reduce_forward": prof.hops_fwd * mat,
        "ui_all_reduce_backward": prof.hops_bwd * mat,
        "feature_all_gather_forward": prof.gathered * mat,
        "feature_all_to_all_backward": prof.gathered * mat,
        "batch_all_gather_forward": prof.batch_gathers * batch_size * d * 4,
        "batch_all_to_all_backward": prof.batch_gathers * batch_size * d * 4,
        "grad_all_reduce": repl_params * 4,
    }
    ring = (world_size - 1) / world_size
    reduce_keys = ("ui_all_reduce_forward", "ui_all_reduce_backward", "grad_all_reduce")
    wire = sum(v * (2 * ring if k in reduce_keys else ring) for k, v in comm.items())
    return comm, int(round(wire))


def plan(
    n_users: int,
    n_items: int,
    n_edges: int,
    feature_dims: dict[str, int],
    dim: int,
    n_layers: int,
    model: str | ModelConfig,
    world_size: int,
    memory_per_worker_gb: float,
    feature_dtype: str = "float32",
    *,
    n_interactions: int | None = None,
    batch_size: int = 2048,
    shard_users: int | None = None,
    shard_edges: int | None = None,
    shard_items: int | None = None,
    local_nodes: int | None = None,
    check: bool = True,
) -> Plan:
    """Plan one training run; raise :class:`PlanError` naming remedies when it does not fit.

    ``model`` is a name (``lightgcn``, ``mgcn``, ``miggt``) or a full ``ModelConfig``
    (``dim``/``n_layers`` override its fields). ``shard_*`` give the largest shard's exact
    users, train edges and feature rows (default: an even split, rounded up).
    ``n_interactions`` counts all splits (default: ``n_edges``). ``local_nodes``: steps
    propagate into a batch neighbourhood of at most this many nodes (``train.propagation:
    local`` with a fan-out limit) — activations are counted on it (items times ``knn_k^mm_layers``
    for the kNN view), plus one no-grad full forward for evaluation and gate passes.
    """
    if feature_dtype not in _DTYPE_BYTES:
        raise PlanError(f"feature_dtype '{feature_dtype}' is not one of {sorted(_DTYPE_BYTES)}")
    if world_size < 1 or world_size > n_users:
        raise PlanError(f"world size {world_size} must lie in 1..n_users={n_users}; "
                        "choose --dist.workers in that range")
    base = model if isinstance(model, ModelConfig) else ModelConfig(name=model)
    cfg = base.model_copy(update={"dim": dim, "n_layers": n_layers})
    args = {"n_users": n_users, "n_items": n_items, "n_edges": n_edges,
            "n_interactions": n_interactions if n_interactions is not None else n_edges,
            "feature_dims": dict(feature_dims), "cfg": cfg, "feature_dtype": feature_dtype,
            "local_nodes": local_nodes}
    mem, shard, repl = _memory(**args, world_size=world_size, shard_users=shard_users,
                               shard_edges=shard_edges, shard_items=shard_items)
    comm, wire = _comm(model_profile(cfg, sorted(feature_dims)), n_items, dim, min(batch_size, n_edges), repl,
                       world_size)
    result = Plan(world_size, int(memory_per_worker_gb * GIB), mem, comm, wire, shard)
    if check and not result.fits:
        raise PlanError(_remedies(result, {**args, "batch_size": batch_size}, memory_per_worker_gb))
    return result


def _fits(args: dict, world_size: int, budget: int, **change: object) -> bool:
    a = {k: v for k, v in args.items() if k != "batch_size"}
    if "dim" in change:
        a["cfg"] = a["cfg"].model_copy(update={"dim": change.pop("dim")})
    a.update(change)
    mem, _, _ = _memory(**a, world_size=world_size, shard_users=None, shard_edges=None, shard_items=None)
    return sum(mem.values()) <= budget


def _remedies(p: Plan, args: dict, memory_gb: float) -> str:
    """One line: what does not fit and the smallest changes that would make it fit."""
    budget, w = p.budget_bytes, p.world_size
    key, size = p.largest()
    fixes: list[str] = []
    more = next((x for x in _candidate_workers(w, args["n_users"]) if _fits(args, x, budget)), None)
    if more is not None:
        fixes.append(f"--dist.workers={more}")
    dim = args["cfg"].dim
    smaller = next((x for x in range(dim - 8, 7, -8) if _fits(args, w, budget, dim=x)), None)
    if smaller is not None:
        fixes.append(f"--model.dim={smaller}")
    if args["feature_dtype"] == "float32" and p.memory_bytes["features"] and _fits(
            args, w, budget, feature_dtype="float16"):
        fixes.append("float16 features (--dist.feature_dtype=float16)")
    if args.get("local_nodes") is None and w == 1 and _fits(
            args, w, budget, local_nodes=local_batch_nodes(args["cfg"], args.get("batch_size", 2048), 10)):
        fixes.append("sampled neighbourhood steps (--train.propagation=local --train.fanout=10)")
    need = math.ceil(p.total_bytes / GIB * 10) / 10
    fixes.append(f"--dist.memory_per_worker_gb={need}")
    return (f"the plan for {w} worker(s) needs {p.total_bytes / GIB:.2f} GiB per worker but "
            f"dist.memory_per_worker_gb={memory_gb:g} (largest: {_LABELS[key]}, {size / GIB:.2f} GiB); "
            f"fix with one of: {', '.join(fixes)}")


def local_batch_nodes(cfg: ModelConfig, batch_size: int, fanout: int) -> int:
    """Upper bound on the nodes one step's neighbourhood holds with ``fanout`` neighbours per node
    and layer: a batch's B users and 2B items (positive, negative), each depth keeping the previous
    one and adding F neighbours per node, ``3B(1+F)^L`` (``tru_dist.graph.blocks``; at least one
    layer: MGCN's side view needs the targets' one-hop block)."""
    return 3 * batch_size * (1 + fanout) ** max(cfg.n_layers, 1)


def _candidate_workers(w: int, n_users: int) -> list[int]:
    out, x = [], w + 1
    while x <= min(n_users, 4096):
        out.append(x)
        x = x + 1 if x < 16 else x * 2
    return out
