"""The one module that calls Ray (Tune): Ray API churn touches this file only.

What the rest of ``tru_dist.tune`` needs from Ray, as plain functions:

* :func:`connect` — join or start Ray (``local``: in-process, dashboard off, auth off,
  usage stats off; ``auto`` inside ``ray job submit``; ``ray://host:port``);
* :func:`search_space` — the YAML space as Tune domains;
* :func:`make_tuner` / :func:`restore_tuner` / :func:`fit` — one Tune experiment per
  regime: ASHA (or FIFO) on ``sweep.metric`` (max), random or Optuna search, trials
  checkpointed (``num_to_keep=1``) and logged as JSON, CSV and TensorBoard (the TBX logger
  callback is named explicitly, so it is on even with Tune's automatic loggers disabled);
* :func:`report`, :func:`load_checkpoint`, :func:`trial_index` — inside a trial;
* :func:`trial_rows` — every reported row of an experiment, read from the trials'
  ``result.json`` files (no Ray needed, so reports work on a machine without Ray).

Big objects (the shared original models, graphs and forget sets) travel to trials through
``tune.with_parameters`` — put in the object store once per experiment, not once per trial.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tru_dist.errors import ConfigError

CHECKPOINT_FILE = "state.json"


def connect(address: str = "local") -> None:
    """``ray.init`` for the sweep driver (reuses an initialised Ray; never a non-loopback dashboard)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60: 'disabled' or 'token'
    from tru_dist.dist.launch import connect as ray_connect

    ray_connect(address)


# -- search space, search, scheduler -------------------------------------------------------
def search_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """``{key: {kind: args}}`` → ``{key: tune domain}`` (kinds: grid, choice, uniform, loguniform)."""
    from ray import tune

    make = {
        "grid": lambda a: tune.grid_search(list(a)),
        "choice": lambda a: tune.choice(list(a)),
        "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
        "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1])),
    }
    return {key: make[kind](args) for key, dim in space.items() for kind, args in dim.items()}


def check_search(spec) -> None:
    """Fail early (before any training) when the search algorithm cannot be imported."""
    if spec.search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch  # noqa: F401
        except ImportError:
            raise ConfigError("search: optuna needs the optional extra: pip install 'tru-dist[optuna]' "
                              "(or use search: random)") from None


def _search(spec) -> Any:
    check_search(spec)
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=spec.search_seed)
        if spec.max_concurrent:
            from ray.tune.search import ConcurrencyLimiter

            searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
        return searcher
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent)


def _scheduler(spec, max_t: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "fifo":
        return FIFOScheduler()
    # time axis = our own "epoch" metric: exact after a restore, whatever Tune's counters do
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(spec.grace_period, max_t),
                         reduction_factor=spec.reduction_factor)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trainable(fn: Callable, spec, context: Any) -> Any:
    from ray import tune

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(fn, ctx=context), resources)


def _run_config(spec, name: str, storage: Path, max_failures: int) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), TBXLoggerCallback()],
        verbose=1,
    )


def make_tuner(fn: Callable, context: Any, spec, *, name: str, storage: Path, max_t: int,
               max_failures: int) -> Any:
    """A Tuner for one regime's experiment ``storage/name``."""
    from ray import tune

    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode="max",
        search_alg=_search(spec),
        scheduler=_scheduler(spec, max_t),
        num_samples=spec.num_samples,
        reuse_actors=True,
        trial_dirname_creator=_trial_dirname,
    )
    return tune.Tuner(_trainable(fn, spec, context), param_space=search_space(spec.space),
                      tune_config=tune_config, run_config=_run_config(spec, name, storage, max_failures))


def can_restore(experiment_dir: Path) -> bool:
    from ray import tune

    return Path(experiment_dir).exists() and tune.Tuner.can_restore(str(experiment_dir))


def restore_tuner(fn: Callable, context: Any, spec, experiment_dir: Path) -> Any:
    """Continue an experiment: finished trials are kept, unfinished and errored ones resume
    from their last checkpoint (the trainable and its shared objects are re-supplied)."""
    from ray import tune

    return tune.Tuner.restore(str(experiment_dir), trainable=_trainable(fn, spec, context),
                              resume_unfinished=True, resume_errored=True)


def fit(tuner) -> list[str]:
    """Run the experiment; return one line per trial that ended in error (empty = all done)."""
    # per-epoch checkpoints of tiny trials trip Tune's "snapshots too frequent" warning: harmless
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    grid = tuner.fit()
    lines = []
    for result in grid:
        if result.error is not None:
            first = str(result.error).strip().splitlines()
            lines.append(f"{Path(result.path).name}: {first[-1] if first else type(result.error).__name__}")
    return lines


# -- inside a trial --------------------------------------------------------------------------
def report(metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """``tune.report`` of one epoch's metrics, with ``state`` as the trial's checkpoint."""
    from ray import tune

    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="tru-dist-tune-") as tmp:
        (Path(tmp) / CHECKPOINT_FILE).write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def load_checkpoint() -> dict[str, Any] | None:
    """The state saved with the trial's last report, or None on a fresh start."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        return json.loads(path.read_text()) if path.exists() else None


def trial_index() -> int:
    """The trial's number within its experiment (0, 1, ...) from Tune's ``<exp>_00001`` ids;
    -1 for ids of another shape (e.g. a trial restarted under a new id)."""
    from ray import tune

    tail = tune.get_context().get_trial_id().rsplit("_", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else -1


# -- results (plain files) --------------------------------------------------------------------
def trial_rows(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every row reported by every trial of an experiment: the metrics plus ``trial_id``,
    ``config`` (the trial's sample) and ``done``, in trial then epoch order."""
    rows: list[dict[str, Any]] = []
    for result_file in sorted(Path(experiment_dir).glob("*/result.json")):
        for line in result_file.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows
