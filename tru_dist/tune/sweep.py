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

``resume=True`` skips the experiments whose every trial finished, restores every other one
that exists (``Tuner.restore``): finished trials are kept as they are, unfinished and
errored ones continue from their last checkpoint; experiments never started are started.
The sweep file and overrides must be the ones the sweep was started with. Trials that end
in error make ``run_sweep`` raise (after every experiment ran) and skip the tuned files and
the report; ``--resume`` then finishes them.
"""

from __future__ import annotations

import time
from pathlib import Path

from tru_dist.config import Config
from tru_dist.errors import ConfigError, TruDistError
from tru_dist.io_utils import atomic_write_json
from tru_dist.tune import adapter
from tru_dist.tune.context import prepare
from tru_dist.tune.export import is_finished, record_fit, write_tuned
from tru_dist.tune.manifest import MANIFEST, load_manifest
from tru_dist.tune.results import experiment_dir
from tru_dist.tune.shard_trial import run_shard_trial, shard_trial_task
from tru_dist.tune.spec import SweepSpec, base_config, load_spec
from tru_dist.tune.trainable import (
    Fault,
    TrialContext,
    WorkersTrialContext,
    method_trainable,
    workers_trainable,
)

DEFAULT_STORAGE = "runs/sweeps"


def sweep_dir_for(spec: SweepSpec, storage: str | Path | None) -> Path:
    return (Path(storage or DEFAULT_STORAGE).expanduser().resolve()) / spec.name


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


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _trial(spec: SweepSpec, base: Config, sweep_dir: Path, method: str, regime, seeds, max_t: int, fault):
    """(trainable, its shared context) for one (method, regime): the in-process trial at W = 1,
    the Ray Train trial of W workers otherwise (which loads everything from ``sweep_dir``)."""
    if base.dist.workers <= 1:
        ctx = TrialContext(regime.id, [c.for_trials() for c in seeds], spec.k, max_t, fault, method=method)
        return method_trainable, ctx
    task = shard_trial_task(spec, base, sweep_dir, regime, max_t, method)
    ctx = WorkersTrialContext(task, base.dist.workers, spec.resources.cpu, spec.resources.gpu,
                              str(sweep_dir / "train" / method / regime.id), fault, worker=run_shard_trial)
    return workers_trainable, ctx


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
    workers = base.dist.workers if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers={workers}: use 1 (each trial one process) or more "
                          "(each trial a Ray Train run of that many workers)")
    base.dist.workers = workers
    max_t = base.unlearn.epochs
    if max_t < 1:
        raise ConfigError("unlearn.epochs must be >= 1 (it is the number of epochs every trial reports)")
    sweep_dir = sweep_dir_for(spec, storage)
    _check_manifest(sweep_dir, spec, base, resume)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_dir / MANIFEST, {"spec": spec.model_dump(mode="json"), "config": base.to_dict(),
                                             "max_t": max_t, "config_path": str(Path(config_path).resolve())})

    t0 = time.perf_counter()
    contexts = prepare(spec, base, sweep_dir)
    _log(f"shared originals / Retrain / reverse_bpr ready in {time.perf_counter() - t0:.1f}s")
    workers = base.dist.workers
    adapter.connect(base.dist.address, dashboard=workers > 1)
    if workers > 1:
        adapter.require_state_api()
        adapter.check_workers_fit(spec, workers, base.dist.address)
    fault = Fault.from_env(sweep_dir)
    failed: list[str] = []
    for method, space in spec.spaces.items():
        for regime in spec.regimes:
            experiment = experiment_dir(sweep_dir, method, regime.id)
            if is_finished(sweep_dir, method, regime.id):
                _log(f"{method} on {regime.id}: every trial finished in an earlier run")
                continue
            fn, ctx = _trial(spec, base, sweep_dir, method, regime, contexts[regime.id], max_t, fault)
            if adapter.can_restore(experiment):
                _log(f"{method} on {regime.id}: restoring {experiment}")
                tuner = adapter.restore_tuner(fn, ctx, spec, experiment, workers=workers)
            else:
                tuner = adapter.make_tuner(fn, ctx, spec, space, name=regime.id, storage=experiment.parent,
                                           max_t=max_t, max_failures=base.dist.max_failures, workers=workers,
                                           address=base.dist.address)
            t1 = time.perf_counter()
            errors = adapter.fit(tuner)
            seconds = time.perf_counter() - t1
            record_fit(sweep_dir, method, regime.id, seconds, finished=not errors)
            _log(f"{method} on {regime.id}: trials done in {seconds:.1f}s ({len(errors)} in error)")
            failed += [f"{method}/{regime.id}/{e}" for e in errors]
    if failed:
        raise TruDistError(f"{len(failed)} trial(s) did not finish ({failed[0]}); rerun with --resume to "
                           f"finish them: tru-dist sweep --config {config_path} --resume")
    write_tuned(sweep_dir, spec, base)
    if spec.report:
        from tru_dist.tune.report import report_sweep

        report_sweep(sweep_dir)
    return sweep_dir
