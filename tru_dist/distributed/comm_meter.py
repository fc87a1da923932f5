"""Count the bytes every collective moves, by wrapping ``torch.distributed``'s functions.

``torch.distributed.nn`` and :mod:`tru_dist.comm` both call the collectives
through the ``torch.distributed`` module attributes, so temporarily replacing those
attributes sees every call (forward and the backward of the differentiable ones).

Bytes are counted as the *payload*: the size of the logical tensor the collective
produces on each rank —

* ``all_reduce``, ``broadcast``: the tensor's ``element_size · numel``;
* ``all_gather``: the gathered output (W × the input), i.e. the full matrix;
* ``all_to_all``: the sum of the input list (what this rank scatters);
* ``reduce_scatter``: the sum of the input list;
* ``scatter``: the scatter list on the source rank, 0 elsewhere — on gloo
  ``torch.distributed.nn``'s all-to-all (the backward of the differentiable all-gather) is
  W scatters, one from each rank, so it adds up to the all-to-all's payload.

Ring algorithms put ``2(W−1)/W`` (all-reduce) or ``(W−1)/W`` (gather/scatter/all-to-all)
of the payload on each rank's link; :mod:`tru_dist.distributed.planner` reports both figures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

_WRAPPED = ("all_reduce", "all_gather", "broadcast", "all_to_all", "reduce_scatter", "scatter")


def _nbytes(t: torch.Tensor) -> int:
    return int(t.element_size() * t.numel())


def payload_bytes(op: str, args: tuple, kwargs: dict) -> int:
    """Payload of one call of ``op`` (see the module docstring for the convention)."""
    if op in ("all_reduce", "broadcast"):
        return _nbytes(kwargs.get("tensor", args[0] if args else None))
    if op == "all_gather":
        out_list = kwargs.get("tensor_list", args[0] if args else None)
        return sum(_nbytes(t) for t in out_list)
    if op == "scatter":  # counted on the source rank only: what it scatters
        chunks = kwargs.get("scatter_list", args[1] if len(args) > 1 else None)
        return sum(_nbytes(t) for t in chunks) if chunks else 0
    if op in ("all_to_all", "reduce_scatter"):
        default = args[1] if len(args) > 1 else None
        in_list = kwargs.get("input_tensor_list", kwargs.get("input_list", default))
        return sum(_nbytes(t) for t in in_list)
    raise ValueError(f"unknown collective {op!r}")


@dataclass
class CommMeter:
    """Context manager recording ``(op, bytes)`` of every collective call inside it.

    ``min_bytes`` separates the data-carrying calls from small control messages (row
    counts, loss scalars), which are tallied in ``small_calls``/``small_bytes`` instead.
    """

    min_bytes: int = 1024
    calls: list[tuple[str, int]] = field(default_factory=list)
    small_calls: int = 0
    small_bytes: int = 0
    _saved: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> CommMeter:
        for op in _WRAPPED:
            original = getattr(dist, op)
            self._saved[op] = original
            setattr(dist, op, self._wrap(op, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for op, original in self._saved.items():
            setattr(dist, op, original)
        self._saved.clear()

    def _wrap(self, op: str, original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            n = payload_bytes(op, args, kwargs)
            if op == "scatter" and n == 0:  # the receiving side of a scatter
                return original(*args, **kwargs)
            if n >= self.min_bytes:
                self.calls.append((op, n))
            else:
                self.small_calls += 1
                self.small_bytes += n
            return original(*args, **kwargs)

        return counted

    def reset(self) -> None:
        self.calls.clear()
        self.small_calls = 0
        self.small_bytes = 0

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.calls)

    def by_op(self) -> dict[str, dict[str, int]]:
        """``{op: {"calls": c, "bytes": b}}`` over the data-carrying calls."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "bytes": 0})
        for op, n in self.calls:
            out[op]["calls"] += 1
            out[op]["bytes"] += n
        return dict(out)
