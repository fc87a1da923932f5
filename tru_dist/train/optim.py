"""The training optimizer: Adam, or Adam that updates only the embedding rows a step touched.

``train.optimizer: adam`` is ``torch.optim.Adam``. ``row_sparse_adam`` (:class:`RowSparseAdam`) is
"lazy" Adam for the row tables (user / item embeddings, :meth:`Backbone.row_tables`): with
``g`` a table's gradient and ``U`` the rows where it is nonzero, at step ``t``

    m[U] ← β₁ m[U] + (1 − β₁) g[U],   v[U] ← β₂ v[U] + (1 − β₂) g[U]²,
    θ[U] ← θ[U] − lr / (1 − β₁ᵗ) · m[U] / (√v[U] / √(1 − β₂ᵗ) + ε),

and every other row — its parameters and both moments — is left as it is; the other parameters
take the dense Adam step (the same formula with ``U`` = everything, as ``torch.optim.Adam``).
This is ``torch.optim.Adam``'s formula (ε added after the bias correction) with
``torch.optim.SparseAdam``'s row-lazy semantics (one step count per table).

:class:`PlainAdam` is ``torch.optim.Adam``'s dense step without ``torch.optim`` (the unlearning
loop's optimizer, see its docstring); both share :func:`adam_update_`.

Why: with neighbourhood propagation a step touches a few thousand of a 1M-row table's rows, but
dense Adam reads and writes all of them and their two moments every step — at 1M users most of a
step's time (``tru-dist bench scale``). Dense Adam also keeps moving untouched rows on their
momentum; lazy Adam does not, so the two train differently: it is an option for graphs where
the dense update dominates, not the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from tru_dist.config import TrainConfig
from tru_dist.crashpoints import after_optimizer_step
from tru_dist.models.base import Backbone


def touched_rows(grad: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of a 2-D gradient with any nonzero entry (−0.0 counts as touched: the
    bits are read, 8 bytes at a time where the row allows — ~3× faster than ``ne(0).any``)."""
    row_bytes = grad.shape[1] * grad.element_size()
    if grad.is_contiguous() and row_bytes % 8 == 0:
        mask = grad.view(torch.int64).any(dim=1)
    else:
        mask = grad.ne(0).any(dim=1)
    return torch.nonzero(mask).flatten()


class RowSparseAdam(torch.optim.Optimizer):
    """Adam whose step on each of the 2-D ``row_params`` touches only the rows with a nonzero
    gradient (module docstring); dense Adam on ``dense_params``. No weight decay, no AMSGrad.
    The two kinds are two parameter groups (``group["rows"]``), so the distinction survives
    ``state_dict``/``load_state_dict`` and copies."""

    def __init__(self, row_params: Iterable[torch.nn.Parameter], dense_params: Iterable[torch.nn.Parameter],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        groups = [{"params": list(row_params), "rows": True}, {"params": list(dense_params), "rows": False}]
        super().__init__([g for g in groups if g["params"]], {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, *,
             rows: dict[int, torch.Tensor] | None = None) -> torch.Tensor | None:
        """One step. ``rows`` (``id(table)`` → row indices) may name, per row table, a superset of
        the rows with a nonzero gradient (e.g. the union found while summing gradients over
        ranks), saving the scan for them. A named row whose gradient is exactly zero (touched on
        some rank, summed to zero) then takes a step with ``g = 0`` — its moments decay and it
        moves on them — where a scan would have skipped it; for real-valued gradients that is
        rare, and every replica does the same."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                if group["rows"] and p.dim() == 2:
                    step_size = group["lr"] / (1 - beta1**t)
                    root_bias = math.sqrt(1 - beta2**t)
                    at = rows[id(p)] if rows is not None and id(p) in rows else touched_rows(p.grad)
                    g = p.grad[at]
                    m = state["exp_avg"][at].mul_(beta1).add_(g, alpha=1 - beta1)
                    v = state["exp_avg_sq"][at].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    state["exp_avg"][at] = m
                    state["exp_avg_sq"][at] = v
                    update = m.div_(v.sqrt_().div_(root_bias).add_(group["eps"]))
                    p.index_add_(0, at, update, alpha=-step_size)
                else:
                    adam_update_(p, p.grad, state["exp_avg"], state["exp_avg_sq"], t, group["lr"],
                                 beta1, beta2, group["eps"])
        return loss


@torch.no_grad()
def adam_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 step: int, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One dense Adam step at step count ``step`` (≥ 1), in place, operation for operation as
    ``torch.optim.Adam``'s single-tensor path (bit-identical on CPU):
    m ← m + (1 − β₁)(g − m), v ← β₂v + (1 − β₂)g², θ ← θ − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    t = float(step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1**t)))


class PlainAdam:
    """``torch.optim.Adam(params, lr)`` with its defaults (β = (0.9, 0.999), ε = 1e-8, no weight
    decay), bit-identical, without the ``torch.optim.Optimizer`` base class: the first such
    optimizer a process builds imports ``torch._dynamo`` (1.3 s measured here), which every
    ``tru-dist unlearn`` call paid for an update that never compiles anything. The unlearning
    loop steps with it (a fresh one per run and per line-search halving). Parameters whose
    ``grad`` is None are skipped and keep their own step count, as torch's."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0.0:
            raise ValueError(f"PlainAdam: lr={lr} must be > 0")
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.steps = [0] * len(self.params)
        self.moments: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every parameter that has a gradient."""
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.moments[k] is None:
                self.moments[k] = (torch.zeros_like(p), torch.zeros_like(p))
            self.steps[k] += 1
            m, v = self.moments[k]
            adam_update_(p, p.grad, m, v, self.steps[k], self.lr, *self.betas, self.eps)
        after_optimizer_step()  # torch's global step hooks do not reach a non-torch.optim optimizer


def build_optimizer(model: Backbone, tc: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names, over all of ``model``'s parameters."""
    if tc.optimizer == "row_sparse_adam":
        tables = [p for p, _ in model.row_tables().values()]
        ids = {id(p) for p in tables}
        return RowSparseAdam(tables, [p for p in model.parameters() if id(p) not in ids], lr=tc.lr)
    return torch.optim.Adam(model.parameters(), lr=tc.lr)
