"""Deterministic CPU kernels for gradient steps: the same config and seed give the same bits.

Why. With more than one intra-op thread, the backward of advanced indexing (``table[ids]``,
which every backbone uses to read its batch rows, scores and attention memories) accumulates
the gradient rows of repeated ids with ``index_put_(accumulate=True)``, whose CPU kernel adds
them in an order that depends on thread scheduling. Two runs of one config and seed then
differ in the last bits after the first step, and early stopping on valid recall turns those
bits into different models (measured on Amazon Scientific, 2 threads, parameter hashes after
3-5 epochs: LightGCN, MGCN and MIG-GT each gave a different hash on every run; with one thread,
or with this switch, every run gave the same hash). ``torch.use_deterministic_algorithms``
routes that accumulation to PyTorch's sorted, fixed-order kernel; ``index_select``, ``embedding``
and CSR products were already deterministic.

Scope. The switch is process-global in PyTorch, so it is set only around the gradient steps
(training epochs, a replica's steps, an unlearning update) and put back afterwards; a caller
that turned it on itself keeps it. CPU only: on CUDA, deterministic cuBLAS needs
``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts, and that path is not measured here, so
GPU steps run as before. ``warn_only=True``: an operation without a deterministic kernel warns
instead of stopping a run. PyTorch's companion switch that fills every new uninitialised
tensor with NaN (``torch.utils.deterministic.fill_uninitialized_memory``) is turned off inside
the block: it added ~5x the fill calls to a TRU update (LightGCN, Scientific) and nothing here
reads memory it has not written (the bit-identical runs above say so). Both are set through
``torch._C``'s setters, which ``torch.use_deterministic_algorithms`` calls after first setting
``torch._inductor.config.deterministic`` — an import that pulls in ``torch._dynamo`` (~1.3 s,
more than a whole TRU request; ``tests/test_unlearn_adam.py`` guards against it), for a
compiler this project never runs. Config: ``train.deterministic`` (default on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic_kernels(enabled: bool, device: torch.device | str) -> Iterator[bool]:
    """Within the block, PyTorch's deterministic kernels are on when ``enabled`` and ``device`` is
    a CPU; yields whether this block turned them on (False: off, not a CPU, or already on)."""
    turn_on = (enabled and torch.device(device).type == "cpu"
               and not torch.are_deterministic_algorithms_enabled())
    if not turn_on:
        yield False
        return
    fills = torch._C._get_deterministic_fill_uninitialized_memory()
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch._C._set_deterministic_fill_uninitialized_memory(False)
    try:
        yield True
    finally:
        torch._C._set_deterministic_algorithms(False)
        torch._C._set_deterministic_fill_uninitialized_memory(fills)
