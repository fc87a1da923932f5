"""What a training run shows while it runs: a tqdm bar per epoch where someone watches, and one
log line per epoch everywhere.

``mode`` is ``cfg.train.progress``: ``"on"`` / ``"off"`` force the bar; ``"auto"`` shows it
only when stderr is a TTY, the process is not a Ray worker, not under CI, and is rank 0.
Ray is never imported here: a Ray worker is recognised by the ``ray`` module already being
initialised in the process or by the ``RAY_RAYLET_PID`` variable Ray sets in its workers.

:func:`log_epoch` writes, through :mod:`logging` (logger ``tru_dist.train``, rank 0 only),
one line per epoch — e.g. ``mgcn epoch 12/1000 loss 0.3141 valid recall@20 0.1523 (best
0.1530 @ 10) 0.56s`` — so a log file or a Ray job's log shows progress without a TTY. The
batch bar is cleared (``leave=False``) before the line is written, so both coexist on a TTY.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

from tru_dist import comm as collectives

T = TypeVar("T")
log = logging.getLogger("tru_dist.train")


def in_ray_worker() -> bool:
    """True inside a Ray worker process (without importing Ray)."""
    if os.environ.get("RAY_RAYLET_PID"):
        return True
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # a half-imported or unusual ray module: assume not a worker
        return False


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def progress_enabled(mode: str = "auto") -> bool:
    """Whether to draw bars for ``mode`` in ``{"auto", "on", "off"}``."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode != "auto":
        raise ValueError(f"progress mode must be 'auto', 'on' or 'off', not {mode!r}")
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and not in_ray_worker() and not in_ci() and collectives.rank() == 0


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", mode: str = "auto",
             leave: bool = False) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when :func:`progress_enabled`, else return it unchanged."""
    if not progress_enabled(mode):
        return iter(iterable)
    return iter(tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True))


def epoch_line(name: str, record: dict[str, Any], total: int, metric: str, best: float,
               best_epoch: int) -> str:
    """The per-epoch line: model, epoch/total, mean batch loss, valid metric (when evaluated), seconds."""
    valid = record.get("valid")
    if valid is not None and metric in valid:
        shown = f"valid {metric} {valid[metric]:.4f} (best {best:.4f} @ {best_epoch})"
    else:
        shown = f"valid {metric} - (not evaluated this epoch)"
    loss = f"loss {record['loss']:.4f}"
    return f"{name} epoch {record['epoch']}/{total} {loss} {shown} {record['seconds']:.2f}s"


def log_epoch(name: str, record: dict[str, Any], total: int, metric: str, best: float,
              best_epoch: int) -> None:
    """:func:`epoch_line` at INFO on rank 0."""
    if collectives.rank() == 0:
        log.info(epoch_line(name, record, total, metric, best, best_epoch))
