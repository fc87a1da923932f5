"""tqdm progress bars that stay quiet where nobody watches.

``mode`` is ``cfg.train.progress``: ``"on"`` / ``"off"`` force it; ``"auto"`` shows a bar
only when stderr is a TTY, the process is not a Ray worker, not under CI, and is rank 0.
Ray is never imported here: a Ray worker is recognised by the ``ray`` module already being
initialised in the process or by the ``RAY_RAYLET_PID`` variable Ray sets in its workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

from tru_dist import comm as collectives

T = TypeVar("T")


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
