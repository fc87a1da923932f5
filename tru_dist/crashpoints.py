"""Crash injection for testing that ``tru-dist unlearn`` survives being killed at any stage.

``TRU_DIST_FAULT=<stage>`` makes the process SIGKILL itself when it reaches that stage — no
exception handler, ``finally`` or atexit hook runs, exactly as with an OOM kill or a power
cut. The crash-safety test (tests/test_crash_safety.py) kills ``unlearn`` at every stage,
reruns the same command and checks one receipt, the uninterrupted model and no orphan files.

Stages of ``unlearn`` (in order): ``after-deletion`` (D_r built, nothing written),
``mid-update`` (after the first optimizer step of the unlearning update),
``mid-model-write`` (the checkpoint's temp file written, not yet renamed),
``after-model-write`` (checkpoint and metrics written, no receipt yet), ``after-receipt``
(the receipt written, purge pending if any; in place, the new model not yet renamed over
``checkpoint.pt``), ``mid-purge``
(the receipt written with its purge pending, the new store revision's file written,
META.json not yet switched to it), ``after-purge-switch`` (the store switched, the
superseded interactions file not yet deleted).

Unset (the normal case) every call is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

FAULT_ENV = "TRU_DIST_FAULT"
STAGES = ("after-deletion", "mid-update", "mid-model-write", "after-model-write", "after-receipt",
          "mid-purge", "after-purge-switch")


def fault_point(stage: str | None) -> None:
    """SIGKILL this process when ``TRU_DIST_FAULT`` names ``stage``."""
    if stage is not None and os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


#: called after every step of an optimizer torch's global step hooks do not reach (empty unless armed)
_STEP_HOOKS: list[Callable[[], None]] = []


def after_optimizer_step() -> None:
    """Run the step hooks :func:`arm_update_fault` armed (none in normal use): called by
    :class:`~tru_dist.train.optim.PlainAdam`, the unlearning loop's optimizer, which does not
    derive from ``torch.optim`` and so escapes ``register_optimizer_step_post_hook``."""
    for hook in _STEP_HOOKS:
        hook()


def arm_update_fault() -> None:
    """With ``TRU_DIST_FAULT=mid-update``: SIGKILL after the first optimizer step of any
    optimizer, so every unlearning method is covered unchanged: torch's global step hook for
    ``torch.optim`` optimizers, :func:`after_optimizer_step` for PlainAdam (without it the fault
    never fired there and a "killed" update ran to the end)."""
    if os.environ.get(FAULT_ENV) != "mid-update":
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: fault_point("mid-update"))
    _STEP_HOOKS.append(lambda: fault_point("mid-update"))
