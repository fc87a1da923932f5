"""The Tune trainable: one hyperparameter sample of one method on one regime, reported every epoch.

``method_trainable(config, ctx)`` — ``config`` is the trial's sample (``{dotted unlearn key:
value}``), ``ctx`` the experiment's :class:`TrialContext` (the method, the shared original
models, D_r graphs and data, forget sets and Retrain references, supplied once by
``tune.with_parameters``).

For e = 1 … ``max_t``: for every seed, the method (reverse_bpr, grad_ascent, finetune or
TRU: the shared loop with the method's spec) with the sample after e epochs
(:func:`tru_dist.tune.epochs.method_epochs`, one run per seed from its shared original,
advanced in lockstep), VALID metrics (:func:`tru_dist.tune.objective.valid_point`), then one
report of the means over seeds — ``score`` (the trade-off ASHA maximises),
``valid_recall@K``, ``valid_ndcg@K``, ``forget_hit@K``, ``forget_gap``, ``utility_ratio``,
``seconds`` (the method's wall time for e epochs, mean over seeds) and ``epoch`` — with
checkpoint ``{"epoch": e}``. A trial restored from its checkpoint replays epochs 1 … e
silently (the run is seeded, so they are the same states) and reports from e + 1, so
nothing else needs saving. A TRU trial ends early when the gate has converged for every
seed (later epochs would repeat the same model).

With ``--workers W > 1`` the trial is :func:`workers_trainable` instead: the same epochs
and reports, computed by a Ray Train run of W workers on shards of the data
(:mod:`tru_dist.tune.shard_trial`, which calls :func:`run_epochs` too, so every method runs
there by construction); the Ray Train run's checkpoint carries ``{"epoch": e}``. With
``dist.trial_groups=reused`` (the default on a local Ray) it is :func:`group_trainable`: the
same epochs on worker groups the sweep started once (:mod:`tru_dist.tune.group_trials`), asked
for one epoch at a time; the trial's own Tune checkpoint carries ``{"epoch": e}``, as at W = 1.

Lives in the installed package (Ray workers import it by name); Ray itself is reached
only through :mod:`tru_dist.tune.adapter`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tru_dist.tune import adapter
from tru_dist.tune.context import SeedContext
from tru_dist.tune.epochs import method_epochs
from tru_dist.tune.objective import epoch_metrics, valid_point
from tru_dist.tune.space import apply_sample

FAULT_ENV = "TRU_DIST_SWEEP_FAULT"
INTERRUPT_ENV = "TRU_DIST_SWEEP_INTERRUPT"
INTERRUPT_GRACE_S = 5.0  # the signalled trial keeps running this long, so Tune stops it unfinished


class InjectedFault(RuntimeError):
    """Raised by a trial told to fail once (rehearsal of an interrupted sweep)."""


@dataclass(frozen=True)
class Fault:
    """Make trial ``trial`` of regime ``regime_id`` fail once, before epoch ``epoch`` — or,
    with ``driver_pid``, send the sweep's driver SIGINT there instead (a rehearsed Ctrl+C).

    Set by the driver from ``TRU_DIST_SWEEP_FAULT=[METHOD:]REGIME:TRIAL:EPOCH`` to rehearse
    a crash and ``--resume`` (without METHOD: the first method's experiment that reaches
    it), or from ``TRU_DIST_SWEEP_INTERRUPT=[SIGUSR1:][METHOD:]REGIME:TRIAL:EPOCH`` to rehearse
    Ctrl+C (SIGINT) or, with the ``SIGUSR1:`` prefix, Tune's own stop signal sent from outside;
    the marker file makes it fire once per sweep directory.
    """

    regime_id: str
    trial: int
    epoch: int
    marker: str
    method: str | None = None
    driver_pid: int | None = None
    driver_signal: str = "SIGINT"

    @classmethod
    def from_env(cls, sweep_dir: Path) -> Fault | None:
        interrupt = os.environ.get(INTERRUPT_ENV, "").strip()
        signal_name = "SIGINT"
        if interrupt.startswith("SIGUSR1:"):
            signal_name, interrupt = "SIGUSR1", interrupt[len("SIGUSR1:"):]
        text = interrupt or os.environ.get(FAULT_ENV, "").strip()
        if not text:
            return None
        head, trial, epoch = text.rsplit(":", 2)
        method, _, regime_id = head.rpartition(":")
        kind = "interrupt" if interrupt else "fault"
        marker = Path(sweep_dir) / f".{kind}-{head.replace(':', '-')}-{trial}-{epoch}"
        return cls(regime_id, int(trial), int(epoch), str(marker), method or None,
                   os.getpid() if interrupt else None, signal_name)

    def maybe_fail(self, regime_id: str, trial: int, epoch: int, method: str | None = None) -> None:
        if (regime_id, trial, epoch) != (self.regime_id, self.trial, self.epoch):
            return
        if self.method is not None and method != self.method:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if self.driver_pid is not None:
            import signal
            import time

            os.kill(self.driver_pid, getattr(signal, self.driver_signal))
            time.sleep(INTERRUPT_GRACE_S)
            return
        raise InjectedFault(f"injected fault: {regime_id} trial {trial} before epoch {epoch}")


@dataclass
class TrialContext:
    """What every trial of one (method, regime) experiment shares (sent once through
    ``tune.with_parameters``)."""

    regime_id: str
    seeds: list[SeedContext]
    k: int
    max_t: int
    fault: Fault | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    method: str = "tru"


def iter_epochs(config: dict[str, Any], ctx: TrialContext, start: int
                ) -> Generator[tuple[dict[str, Any], dict[str, Any]], None, None]:
    """Epochs ``start+1 … max_t`` of one sample: ``(metrics, state)`` after each.

    A generator, so that a caller may advance a trial one epoch at a time and put it aside
    between epochs (:mod:`tru_dist.tune.group_trials` keeps trials live in reused worker
    groups); :func:`run_epochs` drives it to the end.
    """
    cfgs = [apply_sample(sc.cfg, config) for sc in ctx.seeds]
    runs = [method_epochs(ctx.method, sc.original, sc.deletion, cfg)
            for sc, cfg in zip(ctx.seeds, cfgs, strict=True)]
    states: list = [None] * len(runs)
    done = [False] * len(runs)
    for epoch in range(1, ctx.max_t + 1):
        advanced = False
        for j, run in enumerate(runs):  # advance every seed by one epoch (or note it converged)
            if not done[j]:
                state = next(run, None)
                if state is None or state.epoch == 0:  # converged (epoch 0: before any update)
                    done[j] = True
                if state is not None:
                    states[j] = state
                    advanced = True
        if not advanced and epoch > 1:  # every seed converged earlier: nothing new to report
            return
        if epoch <= start:
            continue
        if ctx.fault is not None:
            ctx.fault.maybe_fail(ctx.regime_id, ctx.extra.get("trial", -1), epoch, ctx.method)
        points = [valid_point(st.model, sc.graph_after, sc.data_after, sc.forget, ctx.k)
                  for st, sc in zip(states, ctx.seeds, strict=True)]
        metrics = epoch_metrics(points, [sc.ref for sc in ctx.seeds], ctx.k)
        seconds = [st.seconds for st in states]
        metrics.update(epoch=epoch, seconds=sum(seconds) / len(seconds), converged=all(done))
        yield metrics, {"epoch": epoch}


def run_epochs(config: dict[str, Any], ctx: TrialContext, start: int, report) -> None:
    """Epochs ``start+1 … max_t`` of one sample; ``report(metrics, state)`` after each.

    Separate from :func:`method_trainable` so it runs without Ray (tests, debugging).
    """
    for metrics, state in iter_epochs(config, ctx, start):
        report(metrics, state)


def method_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable (see the module docstring)."""
    state = adapter.load_checkpoint()
    start = int(state["epoch"]) if state else 0
    if ctx.fault is not None:
        ctx = replace(ctx, extra={**ctx.extra, "trial": adapter.trial_index()})
    run_epochs(config, ctx, start, adapter.report)


@dataclass
class WorkersTrialContext:
    """What every W-worker trial of one regime shares: a JSON-able task (paths and ids, no
    models: each worker loads its own shard, :func:`tru_dist.tune.shard_trial.shard_trial_task`)
    and where the Ray Train runs keep their checkpoints."""

    task: dict[str, Any]
    workers: int
    cpu: float
    gpu: float
    storage: str
    fault: Fault | None = None
    #: what each worker runs (:func:`tru_dist.tune.shard_trial.run_shard_trial`; passed in,
    #: because shard_trial builds on this module)
    worker: Callable[..., None] | None = None


def workers_trainable(config: dict[str, Any], ctx: WorkersTrialContext) -> None:
    """Ray Tune function trainable for ``--workers W > 1`` (see the module docstring)."""
    if ctx.worker is None:
        raise ValueError("WorkersTrialContext.worker is unset (the per-worker trial function)")
    adapter.run_train_trial(config, ctx.task, ctx.worker, workers=ctx.workers, cpu=ctx.cpu, gpu=ctx.gpu,
                            storage=Path(ctx.storage), fault=ctx.fault)


@dataclass
class GroupTrialContext:
    """What every W-worker trial of one regime shares when the sweep reuses worker groups
    (``dist.trial_groups=reused``): the task (as for :class:`WorkersTrialContext`), the
    groups (Ray actor handles of :class:`tru_dist.tune.group_trials.TrialGroup`, started once
    by the sweep) and the experiment's name (part of every trial's key in the groups)."""

    task: dict[str, Any]
    groups: list[Any]
    experiment: str
    fault: Fault | None = None


def group_trainable(config: dict[str, Any], ctx: GroupTrialContext) -> None:
    """Ray Tune function trainable for ``--workers W > 1`` on reused groups (module docstring)."""
    adapter.run_group_trial(config, ctx.task, ctx.groups, experiment=ctx.experiment, fault=ctx.fault)
