"""The coordinator: all-reduced statistics in, TRU decisions out (DESIGN §7).

Every decision is a pure function of globally summed statistics, delegated to the
unlearning package's decision functions (so there is one formula per decision):

* :func:`gate_decision`      — P_i = Σg/count per item, mean G and the stop test (mean G < ε)
  (``tru_dist.unlearn.tru.gate.decide_gate``);
* :func:`branch_alphas`      — α_b = clip((r_b / max r)^γ, α_min, 1), r_b = ‖g_f^b‖/(‖g_r^b‖+δ)
  (``tru_dist.unlearn.tru.scaling.decide_alphas``);
* :func:`isolation_decision` — groups in decreasing Fisher ratio under the budget ρ·|θ|
  (``tru_dist.unlearn.tru.isolation.decide_isolation``).

:func:`decide_and_broadcast` runs a decision on rank 0 only and broadcasts the result, so
every rank applies the *same* decision even if its copy of the statistics differed in the
last bit (all-reduce results are not guaranteed bitwise identical across ranks for every
algorithm) — a tie broken differently on two ranks would desynchronise the collectives.
At W = 1 it is a plain call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tru_dist import comm as collectives

T = TypeVar("T")


def decide_and_broadcast(fn: Callable[..., T], *stats: Any, src: int = 0, **kwargs: Any) -> T:
    """``fn(*stats, **kwargs)`` evaluated on rank ``src`` and received by every rank.

    The result must be picklable (dicts, lists, floats, dataclasses of tensors); tensors
    travel on CPU and come back on the device of the first tensor in ``stats`` (if any).
    Collective: every rank must call it.
    """
    if not collectives.is_distributed():
        return fn(*stats, **kwargs)
    box: list[Any] = [None]
    if collectives.rank() == src:
        box[0] = _to_cpu(fn(*stats, **kwargs))
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    device = next((s.device for s in stats if isinstance(s, torch.Tensor)), None)
    return _to_device(box[0], device) if device is not None else box[0]


def _comm_device() -> torch.device | None:
    """NCCL needs the object tensors on this rank's GPU; gloo on CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _to_cpu(x: Any) -> Any:
    return _map_tensors(x, lambda t: t.detach().cpu())


def _to_device(x: Any, device: torch.device) -> Any:
    return _map_tensors(x, lambda t: t.to(device))


def _map_tensors(x: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    import dataclasses

    if isinstance(x, torch.Tensor):
        return f(x)
    if isinstance(x, dict):
        return {k: _map_tensors(v, f) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_map_tensors(v, f) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{fld.name: _map_tensors(getattr(x, fld.name), f)
                                         for fld in dataclasses.fields(x) if fld.init})
    return x


# -- the decisions (pure functions of all-reduced statistics) ---------------------------------
def gate_decision(item_sum: torch.Tensor, item_count: torch.Tensor, eps: float):
    """Ranking fusion gate: P_i, mean G and convergence from the global per-item sums/counts."""
    from tru_dist.unlearn.tru.gate import decide_gate

    return decide_gate(item_sum, item_count, eps)


def branch_alphas(forget_sq: dict[str, float], retain_sq: dict[str, float], gamma: float, alpha_min: float,
                  delta: float) -> dict[str, float]:
    """Branch-wise modality scaling α_b from the global squared gradient norms per branch."""
    from tru_dist.unlearn.tru.scaling import decide_alphas

    return decide_alphas(forget_sq, retain_sq, gamma, alpha_min, delta)


def isolation_decision(fisher_f_sum: dict[str, float], fisher_r_sum: dict[str, float],
                       counts: dict[str, float], param_counts: dict[str, float], budget: float,
                       delta: float) -> tuple[list[str], float]:
    """Capacity-aware layer isolation: the groups to update and their parameter share."""
    from tru_dist.unlearn.tru.isolation import decide_isolation

    return decide_isolation(fisher_f_sum, fisher_r_sum, counts, param_counts, budget, delta)


def should_stop(sum_g: float, n_pairs: float, eps: float) -> bool:
    """Convergence of the reverse update: mean G = Σ G / #pairs < ε (empty forget set: stop)."""
    from tru_dist.unlearn.tru.gate import converged

    return converged(sum_g, n_pairs, eps)
