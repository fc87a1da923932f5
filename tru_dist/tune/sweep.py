"""``tru-dist sweep``: Ray Tune over an unlearning method's hyperparameters, one experiment
per method and regime, with the same budget for every method.

    run_sweep("configs/sweeps/tru.yaml")            # → runs/sweeps/<name>/
    run_sweep(path, resume=True)                     # finish an interrupted sweep

A sweep tunes one method (``method:`` + ``space:``) or several (``methods:``, each with its
own space): reverse_bpr, grad_ascent, finetune or TRU — the shared loop with the method's
spec (:func:`tru_dist.unlearn.specs.spec_for`) — each with the same ``num_samples``,
search, scheduler and ``unlearn.epochs`` (the scheduler's time axis), on the same tuning
seeds (100 and up) and judged by the same valid score against the same Retrain.

Layout of ``<storage>/<name>/`` (``storage`` defaults to ``runs/sweeps``, made absolute;
point it at shared storage on a cluster):

* ``sweep.json`` — the validated sweep file and the resolved base config;
* ``context/`` — originals, Retrain and reverse_bpr per regime/seed, trained ONCE by the
  driver before Tune starts (:mod:`tru_dist.tune.context`) and shared by every method's trials;
* ``tune/<method>/<regime>/trial_<id>/`` — Tune's trial folders: ``result.json``,
  ``progress.csv``, TensorBoard ``events.out.tfevents.*`` (``tensorboard --logdir
  <name>/tune``), checkpoints;
* ``timing.json`` — per experiment, the wall seconds of its trials (summed over resumes) and
  whether every trial has finished (a resume skips those experiments);
* ``tuned/<method>-<regime>.yaml`` — the best configuration per method and plain regime,
  chosen on valid only, with its ``tuning:`` provenance and cost: the folder to pass to
  ``tru-dist compare --tuned`` (:mod:`tru_dist.tune.export`); written when every trial
  has finished;
* ``report.md``, ``pareto-<method>-<regime>.png``, ``best/``, ``final.json`` — from
  :func:`tru_dist.tune.report.report_sweep`, run at the end unless ``sweep.report: false``.

One experiment per method and regime (not one experiment with them as dimensions): ASHA
compares trials at the same epoch, and scores of different regimes are not comparable —
a shared scheduler would prune whole regimes; and a method must not lose trials to
another's. Experiments run one after the other (methods in the file's order, then
regimes); trials of an experiment run concurrently (``max_concurrent``, ``resources.cpu``
per trial).

``workers=W > 1`` (``--workers``, or ``dist.workers`` in the base config) runs every trial
as a Ray Train run of W workers, each holding a shard of the graph and feature store
(:mod:`tru_dist.tune.shard_trial`, the same epochs for every method); ``resources`` are then
per worker, as many trials run at once as a local Ray's CPUs/GPUs hold worker groups (on a
cluster: ``max_concurrent``), and Ray Train's checkpoints live under
``<sweep>/train/<method>/<regime>/trial_<id>``. The shared originals, Retrain and
reverse_bpr are still trained once, by the driver; the report's single test
re-evaluation runs at W = 1 (the same numbers to float tolerance). Needs Ray's state API
(the dashboard; a local Ray started by the sweep has it on 127.0.0.1).

``dist.trial_groups`` says how a W > 1 trial gets its workers: ``per-trial`` (above: a Ray
Train run per trial, W fresh processes that each rebuild their shard — seconds per trial)
or ``reused`` (:mod:`tru_dist.tune.group_trials`: the sweep starts as many W-rank groups as
trials run at once, each a Ray actor holding W workers' CPUs/GPUs, once for all experiments;
a trial sends its sample to a group one epoch at a time, the ranks keep their shards
between trials, and the trial checkpoints ``{"epoch": e}`` in Tune as at W = 1; no state API
needed). ``auto`` (the default) is ``reused`` on a local Ray, ``per-trial`` on a cluster; on
``--resume`` it is the mode the sweep started in (another explicit mode is refused).

``resume=True`` skips the experiments whose every trial finished, restores every other one
that exists (``Tuner.restore``): finished trials are kept as they are, unfinished and
errored ones continue from their last checkpoint; experiments never started are started.
The sweep file and overrides must be the ones the sweep was started with. Trials that end
in error make ``run_sweep`` raise (after every experiment ran) and skip the tuned files and
the report; ``--resume`` then finishes them. Ctrl+C — or Tune's SIGUSR1 stop sent from
outside — makes it raise at once, after Tune saved the interrupted experiment, which is
recorded unfinished (:func:`tru_dist.tune.adapter.fit`).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from tru_dist.config import Config
from tru_dist.errors import ConfigError, TruDistError
from tru_dist.io_utils import atomic_write_json
from tru_dist.tune import adapter
from tru_dist.tune.context import prepare
from tru_dist.tune.export import is_finished, record_fit, write_tuned
from tru_dist.tune.group_trials import TrialGroup
from tru_dist.tune.manifest import MANIFEST, load_manifest
from tru_dist.tune.results import experiment_dir
from tru_dist.tune.shard_trial import run_shard_trial, shard_trial_task
from tru_dist.tune.spec import SweepSpec, base_config, load_spec
from tru_dist.tune.trainable import (
    Fault,
    GroupTrialContext,
    TrialContext,
    WorkersTrialContext,
    group_trainable,
    method_trainable,
    workers_trainable,
)

DEFAULT_STORAGE = "runs/sweeps"


def sweep_dir_for(spec: SweepSpec, storage: str | Path | None) -> Path:
    return (Path(storage or DEFAULT_STORAGE).expanduser().resolve()) / spec.name


def _recorded_mode(recorded: Config) -> str:
    """The trial-group mode a sweep ran in (sweeps from before the option recorded ``auto``
    and ran one Ray Train run per trial)."""
    return "per-trial" if recorded.dist.trial_groups == "auto" else recorded.dist.trial_groups


def _resolved_trial_groups(sweep_dir: Path, base: Config, resume: bool) -> str:
    """``per-trial`` or ``reused`` for a W > 1 sweep (``dist.trial_groups``). An explicit mode
    stands; ``auto`` is the recorded mode on ``--resume``, else ``reused`` on a local Ray (one
    machine: the groups' ranks are local processes) and ``per-trial`` on a cluster (which may
    place a trial's workers on several nodes)."""
    requested = base.dist.trial_groups
    if requested != "auto":
        return requested
    if resume and (sweep_dir / MANIFEST).exists():
        return _recorded_mode(load_manifest(sweep_dir)[1])
    return "reused" if base.dist.address == "local" else "per-trial"


def _check_manifest(sweep_dir: Path, spec: SweepSpec, base: Config, resume: bool) -> None:
    exists = (sweep_dir / MANIFEST).exists()
    if exists and not resume:
        raise ConfigError(f"{sweep_dir} already holds a sweep; pass --resume to finish it, or change "
                          "'name' / --storage for a new one")
    if resume and not exists:
        raise ConfigError(f"nothing to resume: {sweep_dir} holds no sweep (drop --resume to start it)")
    if exists:
        old_spec, old_cfg, _ = load_manifest(sweep_dir)
        # dist.* says where and how to run (address, failures), not what: it may change on resume
        same_cfg = {**old_cfg.to_dict(), "dist": None} == {**base.to_dict(), "dist": None}
        if old_spec.model_dump() != spec.model_dump() or not same_cfg:
            raise ConfigError(f"{sweep_dir} was started with a different sweep file or overrides; resume "
                              "with the same ones (see its sweep.json)")
        if old_cfg.dist.workers != base.dist.workers:  # W = 1 trials checkpoint in Tune, W > 1 in Ray Train
            raise ConfigError(f"{sweep_dir} was started with --workers={old_cfg.dist.workers}; resume it "
                              f"with --workers={old_cfg.dist.workers} (its trials resume from there)")
        # per-trial groups checkpoint in Ray Train, reused ones in Tune (sweeps before the
        # option existed recorded "auto" and ran per-trial)
        old_mode = _recorded_mode(old_cfg)
        if base.dist.workers > 1 and old_mode != base.dist.trial_groups:
            raise ConfigError(f"{sweep_dir} was started with --dist.trial_groups={old_mode}; resume it with "
                              f"--dist.trial_groups={old_mode} (its trials' checkpoints are kept there)")


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _trial(spec: SweepSpec, base: Config, sweep_dir: Path, method: str, regime, seeds, max_t: int, fault,
           groups: list | None = None):
    """(trainable, its shared context) for one (method, regime): the in-process trial at W = 1;
    at W > 1 (the task loads everything from ``sweep_dir``) the trial on the sweep's reused
    worker ``groups`` when there are any, else the Ray Train run of W workers."""
    if base.dist.workers <= 1:
        ctx = TrialContext(regime.id, [c.for_trials() for c in seeds], spec.k, max_t, fault, method=method)
        return method_trainable, ctx
    task = shard_trial_task(spec, base, sweep_dir, regime, max_t, method)
    if groups:
        return group_trainable, GroupTrialContext(task, groups, f"{method}/{regime.id}", fault)
    ctx = WorkersTrialContext(task, base.dist.workers, spec.resources.cpu, spec.resources.gpu,
                              str(sweep_dir / "train" / method / regime.id), fault, worker=run_shard_trial)
    return workers_trainable, ctx


def _experiment(spec: SweepSpec, base: Config, sweep_dir: Path, method: str, regime, space, contexts,
                max_t: int, fault, groups: list) -> tuple[list[str], bool]:
    """Run (or restore, or skip when finished) the Tune experiment of one method on one regime;
    return its trials' error lines and whether Ctrl+C stopped it."""
    workers = base.dist.workers
    experiment = experiment_dir(sweep_dir, method, regime.id)
    if is_finished(sweep_dir, method, regime.id):
        _log(f"{method} on {regime.id}: every trial finished in an earlier run")
        return [], False
    fn, ctx = _trial(spec, base, sweep_dir, method, regime, contexts[regime.id], max_t, fault, groups)
    if adapter.can_restore(experiment):
        _log(f"{method} on {regime.id}: restoring {experiment}")
        tuner = adapter.restore_tuner(fn, ctx, spec, experiment, workers=workers)
    else:
        tuner = adapter.make_tuner(fn, ctx, spec, space, name=regime.id, storage=experiment.parent,
                                   max_t=max_t, max_failures=base.dist.max_failures, workers=workers,
                                   address=base.dist.address, groups=len(groups))
    t1 = time.perf_counter()
    errors, stopped_by = adapter.fit(tuner, expected_trials=spec.trials(method))
    seconds = time.perf_counter() - t1
    record_fit(sweep_dir, method, regime.id, seconds, finished=not errors and stopped_by is None)
    if stopped_by is not None:
        _log(f"{method} on {regime.id}: interrupted by {stopped_by} after {seconds:.1f}s "
             "(Tune saved its state)")
        return [f"{stopped_by} during {method} on {regime.id}"] + errors, True
    _log(f"{method} on {regime.id}: trials done in {seconds:.1f}s ({len(errors)} in error)")
    return [f"{method}/{regime.id}/{e}" for e in errors], False


def run_sweep(
    config_path: str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    storage: str | Path | None = None,
    workers: int | None = None,
) -> Path:
    """Run (or with ``resume`` finish) the sweep described by ``config_path``; return its folder.

    ``workers`` (default: the base config's ``dist.workers``) is W per trial."""
    spec, config_overrides = load_spec(config_path, overrides)
    adapter.check_search(spec)
    base = base_config(spec, config_overrides)
    workers_given = workers is not None
    workers = base.dist.workers if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers={workers}: use 1 (each trial one process) or more "
                          "(each trial on that many workers)")
    base.dist.workers = workers
    max_t = base.unlearn.epochs
    if max_t < 1:
        raise ConfigError("unlearn.epochs must be >= 1 (it is the number of epochs every trial reports)")
    sweep_dir = sweep_dir_for(spec, storage)
    if workers > 1:
        base.dist.trial_groups = _resolved_trial_groups(sweep_dir, base, resume)
    reused = workers > 1 and base.dist.trial_groups == "reused"
    _check_manifest(sweep_dir, spec, base, resume)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_dir / MANIFEST, {"spec": spec.model_dump(mode="json"), "config": base.to_dict(),
                                             "max_t": max_t, "config_path": str(Path(config_path).resolve())})

    t0 = time.perf_counter()
    try:
        contexts = prepare(spec, base, sweep_dir)
    except TruDistError:
        if not resume:  # no trial ran: a manifest left here refused the corrected rerun ("already holds")
            (sweep_dir / MANIFEST).unlink(missing_ok=True)
        raise
    _log(f"shared originals / Retrain / reverse_bpr ready in {time.perf_counter() - t0:.1f}s")
    adapter.connect(base.dist.address, dashboard=workers > 1 and not reused)
    try:
        if workers > 1 and not reused:
            adapter.require_state_api()
        adapter.check_workers_fit(spec, workers, base.dist.address)
    except TruDistError:
        if not resume:  # no trial ran: the corrected sweep file would be refused as "already holds"
            (sweep_dir / MANIFEST).unlink(missing_ok=True)
        raise
    fault = Fault.from_env(sweep_dir)
    resume_command = shlex.join([
        "tru-dist", "sweep", "--config", str(config_path),
        *(o if o.startswith("--") else f"--{o}" for o in overrides or []),  # the API takes "key=value"
        *(["--storage", str(storage)] if storage else []),
        *(["--workers", str(workers)] if workers_given or workers > 1 else []), "--resume"])
    failed: list[str] = []
    groups: list = []
    try:
        if reused:
            groups = adapter.start_trial_groups(
                adapter.trial_group_count(spec, workers, base.dist.address), TrialGroup, workers=workers,
                cpu=spec.resources.cpu, gpu=spec.resources.gpu, backend=base.dist.backend)
            _log(f"{len(groups)} worker group(s) of {workers} ranks, reused by every trial")
        for method, space in spec.spaces.items():
            for regime in spec.regimes:
                lines, interrupted = _experiment(spec, base, sweep_dir, method, regime, space, contexts,
                                                 max_t, fault, groups)
                failed += lines
                if interrupted:  # Ctrl+C: stop here rather than start the next experiment
                    raise TruDistError(f"sweep interrupted: {lines[0]} (its state is saved); finish the "
                                       f"sweep with: {resume_command}")
        if groups:
            for i, info in enumerate(adapter.trial_group_info(groups)):
                if info:
                    _log(f"worker group {i}: ranks started {info['pools_started']}x "
                         f"({info['start_seconds']:.1f}s in all)")
    finally:
        if groups:
            adapter.stop_trial_groups(groups)
    if failed:
        raise TruDistError(f"{len(failed)} trial(s) did not finish ({failed[0]}); rerun with --resume to "
                           f"finish them: {resume_command}")
    write_tuned(sweep_dir, spec, base)
    if spec.report:
        from tru_dist.tune.report import report_sweep

        report_sweep(sweep_dir)
    return sweep_dir
