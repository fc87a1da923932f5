"""Sweep trials on W workers through worker groups started once and reused (no Ray here).

Why. With ``dist.trial_groups=per-trial`` every trial of a ``--workers W > 1`` sweep is its
own Ray Train run: a controller, W fresh worker processes importing torch, a process group,
and every rank rebuilding its shard of the data, kNN graphs and originals from the sweep
folder — seconds to a quarter of a minute per trial (README, Sweeps), paid again by every
trial ASHA stops after one epoch. With ``reused`` the sweep starts a few
:class:`TrialGroup` s once (W local ranks each, a
:class:`~tru_dist.distributed.pool.WorkerPool`), and a trial only sends them its sample, one
epoch at a time:

    group = TrialGroup(workers=2)
    epoch = 0
    while (out := group.epoch(trial_key, task, sample, epoch + 1)) is not None:
        metrics, state = out                       # rank 0's; every rank computed the same
        report(metrics, state); epoch = state["epoch"]

What each rank keeps between calls (module globals of the rank process):

* its :func:`~tru_dist.tune.shard_trial.shard_seed_contexts` per task (the shard, the
  original cut to it, the deletion and the score reference; keyed by everything but the
  method and the epoch budget, so every method's experiment on a regime shares them; the
  last :data:`MAX_CONTEXTS`) — built once, read-only afterwards: every method copies the
  original before it updates (the single-process sweep shares them across trials the same way);
* each trial's live epoch generator (:func:`~tru_dist.tune.shard_trial.shard_trial_epochs`),
  keyed by the trial, so a trial's next epoch continues where its last one stopped. Asked for
  any other epoch — a trial restored from its checkpoint, or one whose generator was evicted
  (at most :data:`MAX_LIVE` are kept; ASHA stops trials without telling anyone) — the rank
  starts the trial again from that epoch: the run is seeded, so the epochs before it replay
  silently to the same state (as :func:`~tru_dist.tune.trainable.run_epochs` does after a
  restore).

Every rank receives the same calls in the same order, so every rank makes the same cache and
eviction decisions and their collectives stay in step. Reports equal those of a per-trial
group to float tolerance (``tests/test_group_trials.py``).

Failures. Any error of a call closes the group's pool (:mod:`tru_dist.distributed.pool`
closes it itself for anything but a user error, and a user error raised by some ranks only
would leave their caches out of step): the call raises, the trial fails as it would under
Ray Train, and the group's next call starts a fresh pool (and rebuilds the contexts), so a
retried trial resumes from its checkpoint. Memory: each rank holds up to
:data:`MAX_CONTEXTS` regimes' shards and :data:`MAX_LIVE` trials' models and optimiser
states for the whole sweep, beyond what ``dist.memory_per_worker_gb`` plans for one trial
(``TRU_DIST_TRIAL_GROUP_MAX_LIVE=1`` keeps one: other trials then replay on every epoch).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Generator
from typing import Any

from tru_dist.distributed.pool import WorkerPool
from tru_dist.tune.context import SeedContext
from tru_dist.tune.shard_trial import shard_seed_contexts, shard_trial_epochs
from tru_dist.tune.trainable import Fault

#: trials a rank keeps live between their epochs (the oldest is dropped first); the
#: environment variable of the same name, read when a rank starts, overrides it (less memory)
MAX_LIVE = max(1, int(os.environ.get("TRU_DIST_TRIAL_GROUP_MAX_LIVE", "4")))
#: tasks whose seed contexts a rank keeps (one per regime of a sweep is what is reused)
MAX_CONTEXTS = 4

Report = tuple[dict[str, Any], dict[str, Any]]


class _Live:
    """One trial's epochs on this rank, and the epoch its generator yields next."""

    def __init__(self, epochs: Generator[Report, None, None], next_epoch: int):
        self.epochs = epochs
        self.next_epoch = next_epoch


_CONTEXTS: OrderedDict[str, list[SeedContext]] = OrderedDict()
_LIVE: OrderedDict[str, _Live] = OrderedDict()


def contexts_key(task: dict[str, Any]) -> str:
    """What the seed contexts depend on: the task without its method and epoch budget."""
    return json.dumps({k: v for k, v in task.items() if k not in ("method", "max_t")}, sort_keys=True)


def _contexts(task: dict[str, Any]) -> list[SeedContext]:
    key = contexts_key(task)
    if key in _CONTEXTS:
        _CONTEXTS.move_to_end(key)
        return _CONTEXTS[key]
    seeds = shard_seed_contexts(task)
    _CONTEXTS[key] = seeds
    while len(_CONTEXTS) > MAX_CONTEXTS:
        _CONTEXTS.popitem(last=False)
    return seeds


def _drop(trial_key: str) -> None:
    live = _LIVE.pop(trial_key, None)
    if live is not None:
        live.epochs.close()


def rank_epoch(rank: int, world_size: int, trial_key: str, task: dict[str, Any], sample: dict[str, Any],
               epoch: int, fault: Fault | None = None, trial: int = -1) -> Report | None:
    """Epoch ``epoch`` of the trial ``trial_key`` on this rank, or None when the trial has no
    such epoch (it ended before: ``max_t`` reached or every seed converged). Runs on every
    rank of a :class:`~tru_dist.distributed.pool.WorkerPool` (module docstring)."""
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1, not {epoch}")
    if epoch > int(task["max_t"]):
        return None
    live = _LIVE.get(trial_key)
    if live is None or live.next_epoch != epoch:
        _drop(trial_key)
        while len(_LIVE) >= MAX_LIVE:
            _drop(next(iter(_LIVE)))
        epochs = shard_trial_epochs(task, sample, epoch - 1, fault, trial, seeds=_contexts(task))
        live = _LIVE[trial_key] = _Live(epochs, epoch)
    _LIVE.move_to_end(trial_key)
    try:
        metrics, state = next(live.epochs)
    except StopIteration:
        _LIVE.pop(trial_key, None)
        return None
    except BaseException:
        _LIVE.pop(trial_key, None)
        raise
    live.next_epoch = int(state["epoch"]) + 1
    return metrics, state


def rank_forget(rank: int, world_size: int, trial_key: str) -> None:
    """Drop a finished trial's generator on this rank (a courtesy: eviction would too)."""
    _drop(trial_key)


def rank_cache_sizes(rank: int, world_size: int) -> tuple[int, int]:
    """(live trials, cached contexts) on this rank — for tests and logs."""
    return len(_LIVE), len(_CONTEXTS)


class TrialGroup:
    """W local ranks that run sweep trials epoch by epoch, started once (module docstring).

    Lives in one process (a Ray actor during a sweep, holding the group's W CPUs/GPUs; or a
    test). The pool is started on the first call, and again after a failure broke it.
    """

    def __init__(self, workers: int, backend: str = "auto", threads_per_rank: int | None = None):
        self.workers = workers
        self.backend = backend
        self.threads_per_rank = threads_per_rank
        self._pool: WorkerPool | None = None
        self.pools_started = 0
        self.start_seconds = 0.0

    def _ready_pool(self) -> WorkerPool:
        if self._pool is None or self._pool.closed:
            self._pool = WorkerPool(self.workers, self.backend, threads_per_rank=self.threads_per_rank)
            self.pools_started += 1
            self.start_seconds += self._pool.start_seconds
        return self._pool

    def epoch(self, trial_key: str, task: dict[str, Any], sample: dict[str, Any], epoch: int,
              fault: Fault | None = None, trial: int = -1) -> Report | None:
        """Epoch ``epoch`` of a trial: rank 0's ``(metrics, state)``, or None after its last.

        Any error closes the pool (the next call starts fresh ranks): a user error raised on
        some ranks only leaves the ranks' caches out of step, and every later collective would
        then pair different trials' epochs."""
        pool = self._ready_pool()
        try:
            return pool.call(rank_epoch, trial_key, task, sample, epoch, fault, trial)[0]
        except BaseException:
            self.close()
            raise

    def forget(self, trial_key: str) -> None:
        if self._pool is not None and not self._pool.closed:
            self._pool.call(rank_forget, trial_key)

    def cache_sizes(self) -> tuple[int, int]:
        return self._ready_pool().call(rank_cache_sizes)[0]

    def info(self) -> dict[str, Any]:
        """How often the pool was started and how long that took (seconds, all starts)."""
        return {"workers": self.workers, "pools_started": self.pools_started,
                "start_seconds": self.start_seconds}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
