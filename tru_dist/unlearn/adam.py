"""The unlearning loop's optimizer: ``torch.optim.Adam``'s step without ``torch.optim``.

Why its own: the first ``torch.optim.Optimizer`` a process builds imports ``torch._dynamo``
(measured here: 1.3 s, as long as importing torch itself). ``tru-dist unlearn`` builds one
optimizer per request, so a user waited ~1.3 s per CLI call for an import the update never
uses — half of a MIG-GT TRU request (profiled: 4.17 s, 2.24 s of it that import). This class
keeps no such base class and does what ``torch.optim.Adam(params, lr)`` does with its
defaults (β₁ = 0.9, β₂ = 0.999, ε = 1e-8, no weight decay, no AMSGrad), operation for
operation as torch's single-tensor CPU path, so its parameters are bit-identical to
torch's (``tests/test_unlearn_adam.py``). Per parameter p with gradient g at its step t
(parameters whose ``grad`` is None are skipped and keep their own step count, as torch's):

    m ← m + (1 − β₁)(g − m),   v ← β₂ v + (1 − β₂) g²,
    p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam over ``params`` at learning rate ``lr`` (see the module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0.0:
            raise ValueError(f"Adam: lr={lr} must be > 0")
        self.params = list(params)
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.steps = [0] * len(self.params)
        self.exp_avg: list[torch.Tensor | None] = [None] * len(self.params)
        self.exp_avg_sq: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every parameter that has a gradient."""
        b1, b2 = self.beta1, self.beta2
        for k, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.exp_avg[k] is None:
                self.exp_avg[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.exp_avg_sq[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            self.steps[k] += 1
            t = float(self.steps[k])
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step_size = self.lr / (1 - b1**t)
            denom = (v.sqrt() / (1 - b2**t) ** 0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)
