"""The planner's bytes per worker must equal the sizes of the real shard objects.

Shards of W = 1 and W = 2 are built in this process (sizes do not depend on the degree
all-reduce), and every planned component is compared with ``element_size · numel`` of
the tensors a worker actually holds: CSR rows and transpose, edge lists, degrees, user
rows with gradient and Adam moments, replicated parameters likewise, feature slices, the
all-gathered projection, kNN graphs, and — an estimate — the tensors one forward
allocates (measured with a ``TorchDispatchMode``).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tru_dist.config import ModelConfig
from tru_dist.distributed.knn import distributed_knn
from tru_dist.distributed.planner import activation_forward_bytes, model_profile, plan
from tru_dist.distributed.shard import slice_features
from tru_dist.errors import PlanError
from tru_dist.graph.context import build_rec_graph
from tru_dist.graph.partition import PartitionBook
from tru_dist.models.registry import build_model
from tru_dist.train.sampler import BPRSampler


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.numel() for t in tensors)


def csr_bytes(a: torch.Tensor) -> int:
    return nbytes(a.crow_indices(), a.col_indices(), a.values())


class Allocated(TorchDispatchMode):
    """Sum of the storages of every op output (each storage once)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.keep = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                if any(t.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() for k in self.keep):
                    continue
                self.keep.append(t)  # held, so the allocator cannot reuse the address
                self.bytes += t.untyped_storage().nbytes()
        return out


def measured_shard(data, model: str, world: int, rank: int) -> tuple[dict[str, int], dict]:
    """Resident bytes of one worker's shard, measured on the real objects after one Adam step."""
    cfg = ModelConfig(name=model, dim=16, n_layers=2, knn_k=5)
    book = PartitionBook.for_data(data, world)
    uses_features = model_profile(cfg, data.modalities).gathered > 0
    local = slice_features(data, book, rank, keep=uses_features, dtype="float32")
    graph = build_rec_graph(local, book=book, rank=rank, with_knn=False)
    if model_profile(cfg, data.modalities).knn:
        whole = PartitionBook.contiguous(data.n_users, data.n_items, 1)  # same sizes at any W
        graph.knn = {m: distributed_knn(data.features[m], cfg.knn_k, whole) for m in data.modalities}
    m = build_model(cfg, graph)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    user = {id(p) for p, kind in m.row_tables().values() if kind == "user"}

    def with_state(params):
        return sum(nbytes(p, p.grad, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]) for p in params)

    ui = graph.ui
    sampler = BPRSampler(*data.train_pairs, data.n_users, data.n_items, seed=0, book=book, rank=rank)
    mem = {
        "adjacency": csr_bytes(ui.norm) + csr_bytes(ui.norm_t) + nbytes(ui.user_degree, ui.item_degree),
        "knn": sum(csr_bytes(a) + csr_bytes(at) for a, at in graph.knn.values()),
        "interactions": data.users.nbytes + data.items.nbytes + data.labels.nbytes
        + sampler.users.nbytes + sampler.items.nbytes + sampler.keys.nbytes,
        "user_rows": with_state([p for p in m.parameters() if id(p) in user]),
        "replicated": with_state(m.replicated_parameters()),
        "features": nbytes(*graph.features.values()) if uses_features else 0,
        "projected": len(graph.features) * data.n_items * cfg.dim * 4 if uses_features else 0,
    }
    shard = {"users": ui.n_local_users, "edges": ui.n_edges, "items": book.item_range(rank)[1]
             - book.item_range(rank)[0]}
    return mem, shard


@pytest.mark.parametrize("model", ["lightgcn", "mgcn", "miggt"])
@pytest.mark.parametrize("world,rank", [(1, 0), (2, 0), (2, 1)])
def test_planned_memory_equals_measured_shard_sizes(tiny_data, model, world, rank):
    measured, shard = measured_shard(tiny_data, model, world, rank)
    n_train = int(len(tiny_data.train_pairs[0]))
    dims = {m: f.shape[1] for m, f in tiny_data.features.items()}
    cfg = ModelConfig(name=model, knn_k=5)
    p = plan(tiny_data.n_users, tiny_data.n_items, n_train, dims, 16, 2, cfg, world, 8.0,
             n_interactions=tiny_data.n_interactions, shard_users=shard["users"],
             shard_edges=shard["edges"], shard_items=shard["items"])
    for key, value in measured.items():
        assert p.memory_bytes[key] == value, f"{model} W={world} rank {rank}: {key}"
    assert p.fits and p.total_bytes > sum(measured.values())  # + activations


@pytest.mark.parametrize("model,tol", [("lightgcn", 0.0), ("mgcn", 0.05), ("miggt", 0.15)])
def test_activation_estimate_matches_forward_allocations(tiny_data, model, tol):
    cfg = ModelConfig(name=model, dim=16, n_layers=2, knn_k=5)
    graph = build_rec_graph(tiny_data, knn_k=5)
    m = build_model(cfg, graph)
    with Allocated() as alloc:
        m.embed(graph)
    est = activation_forward_bytes(cfg, model_profile(cfg, tiny_data.modalities), tiny_data.n_users,
                                   tiny_data.n_items, tiny_data.n_items)
    assert abs(est - alloc.bytes) <= tol * alloc.bytes + 1e-9, (est, alloc.bytes)


def test_even_split_default_and_more_workers_shrink_the_shard():
    dims = {"image": 4096, "text": 384}
    one = plan(19445, 7050, 119674, dims, 64, 2, "mgcn", 1, 64.0)
    four = plan(19445, 7050, 119674, dims, 64, 2, "mgcn", 4, 64.0)
    assert four.shard["users"] == -(-19445 // 4) and four.shard["feature_rows"] == -(-7050 // 4)
    assert four.memory_bytes["features"] == -(-7050 // 4) * (4096 + 384) * 4
    assert four.memory_bytes["replicated"] == one.memory_bytes["replicated"]  # replicated stays
    assert four.memory_bytes["adjacency"] < one.memory_bytes["adjacency"]
    assert one.comm_bytes == {} and four.comm_bytes["ui_all_reduce_forward"] == 2 * 7050 * 64 * 4
    ring = 2 * 3 / 4 * (four.comm_bytes["ui_all_reduce_forward"] + four.comm_bytes["ui_all_reduce_backward"]
                        + four.comm_bytes["grad_all_reduce"])
    assert four.wire_bytes_per_step > ring


def test_plan_error_names_remedies_that_fit():
    dims = {"image": 4096, "text": 384}
    need = plan(19445, 7050, 119674, dims, 64, 2, "mgcn", 1, 64.0).total_bytes
    budget_gb = 0.6 * need / 1024**3
    with pytest.raises(PlanError) as err:
        plan(19445, 7050, 119674, dims, 64, 2, "mgcn", 1, budget_gb)
    msg = str(err.value)
    assert "\n" not in msg and "needs" in msg and "fix with one of" in msg
    workers = re.search(r"--dist\.workers=(\d+)", msg)
    dim = re.search(r"--model\.dim=(\d+)", msg)
    assert workers and dim, msg
    # every suggested remedy actually fits, and is the smallest change that does
    assert plan(19445, 7050, 119674, dims, 64, 2, "mgcn", int(workers[1]), budget_gb).fits
    with pytest.raises(PlanError):
        plan(19445, 7050, 119674, dims, 64, 2, "mgcn", int(workers[1]) - 1, budget_gb)
    assert plan(19445, 7050, 119674, dims, int(dim[1]), 2, "mgcn", 1, budget_gb).fits
    if "float16" in msg:
        assert plan(19445, 7050, 119674, dims, 64, 2, "mgcn", 1, budget_gb, feature_dtype="float16").fits


def test_plan_error_when_only_the_item_side_is_too_large():
    """Item-side tensors (replicated table, item activations) do not shrink with W: no worker remedy."""
    with pytest.raises(PlanError) as err:
        plan(1000, 1_500_000, 10_000, {}, 64, 2, "lightgcn", 1, 4.0)
    msg = str(err.value)
    assert "--dist.workers" not in msg, msg
    dim = re.search(r"--model\.dim=(\d+)", msg)
    assert dim and plan(1000, 1_500_000, 10_000, {}, int(dim[1]), 2, "lightgcn", 1, 4.0).fits
    with pytest.raises(PlanError):
        plan(1000, 1_500_000, 10_000, {}, int(dim[1]) + 8, 2, "lightgcn", 1, 4.0)
