"""The one module of ``tru_dist.tune`` that calls Ray (with :mod:`tru_dist.distributed.launch`, which
it reuses for ``ray.init`` and the ``TorchTrainer``): Ray API churn touches these files only.

What the rest of ``tru_dist.tune`` needs from Ray, as plain functions:

* :func:`connect` — join or start Ray (``local``: in-process, auth and usage stats off, the
  dashboard on 127.0.0.1 only when asked for (W > 1 sweeps); ``auto`` inside ``ray job
  submit``; ``ray://host:port``);
* :func:`search_space` — the YAML space as Tune domains;
* :func:`make_tuner` / :func:`restore_tuner` / :func:`fit` — one Tune experiment per
  method and regime: ASHA (or FIFO) on ``sweep.metric`` (max), random or Optuna search, trials
  checkpointed (``num_to_keep=1``) and logged as JSON, CSV and TensorBoard (the TBX logger
  callback is named explicitly, so it is on even with Tune's automatic loggers disabled);
* :func:`report`, :func:`load_checkpoint`, :func:`trial_index` — inside a trial;
* :func:`run_train_trial` — inside a trial of a sweep with ``--workers W > 1``: the trial
  is a Ray Train run (``TorchTrainer``, W workers, one process group) whose workers run the
  per-worker trial function it is given (:func:`tru_dist.tune.shard_trial.run_shard_trial`);
  ``TuneReportCallback`` forwards rank 0's per-epoch report to Tune, and the run's own
  checkpoint (``{"epoch": e}``, named ``trial_<id>`` under ``<sweep>/train/<regime>``) is
  what a retried or restored trial resumes from (Ray Train V2 restores a run of the same
  name and storage path);
* :func:`start_trial_groups` / :func:`run_group_trial` / :func:`stop_trial_groups` — the
  same W-worker trials on worker groups started once per sweep (``dist.trial_groups=reused``,
  the default on a local Ray): each group a Ray actor holding W workers' CPUs/GPUs that runs
  trials one epoch per call (:mod:`tru_dist.tune.group_trials`); the trial reports to Tune
  with the checkpoint ``{"epoch": e}`` itself, as at W = 1;
* :func:`require_state_api` — per-trial W > 1 sweeps need Ray's state API (the dashboard): ASHA stops
  a trial by killing it, and only Ray Train's placement-group cleaner, which asks the
  state API whether the run's controller is gone, then frees the workers' CPUs;
* :func:`trial_rows` — every reported row of an experiment, read from the trials'
  ``result.json`` files (no Ray needed, so reports work on a machine without Ray).

Big objects (the shared original models, graphs and forget sets) travel to trials through
``tune.with_parameters`` — put in the object store once per experiment, not once per trial.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tru_dist.errors import ConfigError

CHECKPOINT_FILE = "state.json"


def connect(address: str = "local", dashboard: bool = False) -> None:
    """``ray.init`` for the sweep driver (reuses an initialised Ray; a local dashboard, when
    asked for, listens on 127.0.0.1 only; auth as :func:`tru_dist.distributed.launch.connect`)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from tru_dist.distributed.launch import connect as ray_connect

    ray_connect(address, dashboard=dashboard)


def local_gcs_addresses() -> set[str]:
    """GCS addresses of the Ray instances running on this machine, read from the command lines
    of their raylets (``--gcs-address=HOST:PORT``) under ``/proc``; empty where there is no
    ``/proc`` (then nothing is refused). Ray's own helper for this is private API."""
    found: set[str] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        if not args or not Path(args[0].decode(errors="replace")).name == "raylet":
            continue
        for arg in args[1:]:
            if arg.startswith(b"--gcs-address="):
                found.add(arg.split(b"=", 1)[1].decode(errors="replace"))
    return found


def require_state_api() -> None:
    """Fail in one line when Ray's state API (served by the dashboard) does not answer, or
    when Ray Train's placement-group cleaner could not find it.

    The cleaner is an actor that calls the state API without an address; with more than one
    Ray instance on the machine that lookup fails ("Found multiple active Ray instances"),
    so stopped trials would keep their CPUs and the sweep would stall. ``RAY_ADDRESS`` in
    the job's runtime environment (inherited by every actor of the job) tells it which.
    """
    import ray
    from ray.util.state import list_actors

    instances = local_gcs_addresses()
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    if len(instances) > 1 and "RAY_ADDRESS" not in job_env:
        raise ConfigError(
            f"{len(instances)} Ray instances run on this machine ({', '.join(sorted(instances))}); Ray "
            "Train's placement-group cleaner cannot tell which is this sweep's. Stop the others, or submit "
            "the sweep with runtime_env={'env_vars': {'RAY_ADDRESS': '<this cluster's GCS host:port>'}}, "
            "or use --workers=1")

    try:
        list_actors(limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as exc:  # RayStateApiException, ConnectionError, ...: all mean "no dashboard"
        raise ConfigError(
            "sweeps with --workers > 1 need Ray's state API, which the dashboard serves (without it a "
            "trial stopped early leaks its workers' CPUs): start Ray with the dashboard (ray start --head "
            "--dashboard-host=127.0.0.1, or let the sweep start a local Ray), or use --workers=1 "
            f"[{type(exc).__name__}]") from None


def _groups_that_fit(spec, workers: int) -> int:
    """How many W-worker groups the cluster's CPUs (and GPUs, when trials ask for them) hold in all."""
    import ray

    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0.0) // max(workers * spec.resources.cpu, 1e-9))]
    if spec.resources.gpu > 0:
        fits.append(int(total.get("GPU", 0.0) // (workers * spec.resources.gpu)))
    return min(fits)


def check_workers_fit(spec, workers: int, address: str) -> None:
    """On a local Ray (which cannot grow), refuse a W, or at W = 1 a sweep's ``resources``, that
    no trial could ever start with: at W = 1 (``resources: {cpu: 100}`` on 2 CPUs) every trial
    stayed PENDING and the sweep waited forever."""
    if address != "local" or _groups_that_fit(spec, workers) >= 1:
        return
    times = f"{workers} x " if workers > 1 else ""
    need = f"{times}{spec.resources.cpu:g} CPU" + (
        f" and {times}{spec.resources.gpu:g} GPU" if spec.resources.gpu > 0 else "")
    if workers > 1:
        raise ConfigError(f"--workers={workers}: a trial needs {need} and this machine's Ray has fewer; "
                          "lower --workers or the sweep's resources.cpu / resources.gpu")
    raise ConfigError(f"the sweep's resources ask for {need} per trial and this machine's Ray has fewer, "
                      "so no trial could start; lower resources.cpu / resources.gpu in the sweep file")


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


def _trainable(fn: Callable, spec, context: Any, workers: int = 1) -> Any:
    """The trial function with its shared context and resources: ``resources`` per trial at
    W = 1; at W > 1 the trial itself only waits on its Ray Train run or its worker group (no
    CPU: Ray needs a non-empty bundle, hence one byte of memory) and ``resources`` go to each
    worker."""
    from ray import tune

    if workers > 1:
        return tune.with_resources(tune.with_parameters(fn, ctx=context),
                                   tune.PlacementGroupFactory([{"CPU": 0.0, "memory": 1}]))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(fn, ctx=context), resources)


def max_concurrent_trials(spec, workers: int, address: str) -> int:
    """0 (no cap) at W = 1, where ``max_concurrent`` limits the search instead. At W > 1 on a
    local Ray, as many trials as its CPUs/GPUs hold worker groups (further capped by
    ``max_concurrent``): otherwise Tune would start every trial's Ray Train run at once and
    the runs that cannot get their W workers would time out. On a cluster, which may
    autoscale, the cap is ``max_concurrent`` alone (a run waits up to
    ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` for its workers)."""
    if workers <= 1:
        return 0
    if address != "local":
        return spec.max_concurrent
    fit = max(1, _groups_that_fit(spec, workers))
    return min(fit, spec.max_concurrent) if spec.max_concurrent else fit


def trial_group_count(spec, workers: int, address: str) -> int:
    """How many reused worker groups a W > 1 sweep starts: on a local Ray as many as its
    CPUs/GPUs hold (capped by ``max_concurrent``); on a cluster ``max_concurrent``, or as many
    as the cluster holds now when that is 0 (no cap). At least one."""
    if address == "local":
        return max(1, max_concurrent_trials(spec, workers, address))
    return max(1, spec.max_concurrent or _groups_that_fit(spec, workers))


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


def make_tuner(fn: Callable, context: Any, spec, space: dict[str, dict[str, list]], *, name: str,
               storage: Path, max_t: int, max_failures: int, workers: int = 1, address: str = "local",
               groups: int = 0) -> Any:
    """A Tuner for the experiment ``storage/name`` of one method (searching ``space``) on one regime.

    ``groups``: the number of reused worker groups the trials share (0: none, per-trial
    groups); as many trials run at once as there are groups."""
    from ray import tune

    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode="max",
        search_alg=_search(spec),
        scheduler=_scheduler(spec, max_t),
        num_samples=spec.num_samples,
        max_concurrent_trials=groups or max_concurrent_trials(spec, workers, address) or None,
        reuse_actors=workers <= 1,  # a W > 1 trial owns a Ray Train run: never hand its actor on
        trial_dirname_creator=_trial_dirname,
    )
    return tune.Tuner(_trainable(fn, spec, context, workers), param_space=search_space(space),
                      tune_config=tune_config, run_config=_run_config(spec, name, storage, max_failures))


def can_restore(experiment_dir: Path) -> bool:
    from ray import tune

    return Path(experiment_dir).exists() and tune.Tuner.can_restore(str(experiment_dir))


def restore_tuner(fn: Callable, context: Any, spec, experiment_dir: Path, workers: int = 1) -> Any:
    """Continue an experiment: finished trials are kept, unfinished and errored ones resume
    from their last checkpoint (the trainable and its shared objects are re-supplied)."""
    from ray import tune

    return tune.Tuner.restore(str(experiment_dir), trainable=_trainable(fn, spec, context, workers),
                              resume_unfinished=True, resume_errored=True)


TUNE_SIGINT_SWITCH = "TUNE_DISABLE_SIGINT_HANDLER"


@contextmanager
def _ctrl_c_seen() -> Iterator[dict[str, bool]]:
    """Within the block, Ctrl+C (SIGINT) stops Tune as Tune's own handler does — it saves the
    experiment, stops the trials and returns normally — and is recorded in the yielded
    ``{"interrupted": bool}``; a second Ctrl+C acts as it did before the block.

    Why not Tune's handler: after it, Tune marks the stopped trials TERMINATED, so the result
    grid cannot tell an interrupted experiment from a finished one. Tune's SIGINT handler is
    switched off (``TUNE_DISABLE_SIGINT_HANDLER``) and ours hands the signal to the SIGUSR1
    handler Tune always installs (the same stop). Off the main thread nothing can be
    installed and nothing is recorded (Tune catches nothing there either)."""
    state = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python
        previous = signal.default_int_handler
    # Tune installs its SIGUSR1 handler once it starts and never removes it: restored below, so
    # that a later experiment's Ctrl+C before its Tune starts does not reach a finished run's
    usr1 = signal.getsignal(signal.SIGUSR1)

    def on_ctrl_c(signum: int, frame: Any) -> None:
        state["interrupted"] = True
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if tune_stop is usr1 or not callable(tune_stop):  # Tune has not started: an ordinary Ctrl+C
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        tune_stop(signum, frame)
        signal.signal(signal.SIGINT, previous)

    switch = os.environ.get(TUNE_SIGINT_SWITCH)
    os.environ[TUNE_SIGINT_SWITCH] = "1"
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield state
    finally:
        if signal.getsignal(signal.SIGINT) is on_ctrl_c:
            signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGUSR1, usr1 if usr1 is not None else signal.SIG_DFL)
        if switch is None:
            os.environ.pop(TUNE_SIGINT_SWITCH, None)
        else:
            os.environ[TUNE_SIGINT_SWITCH] = switch


def stopped_early(results: list[Any], expected: int | None) -> bool:
    """Whether Tune returned before every trial finished, read off the result grid itself: a
    trial that did not error but whose last result is not ``done`` (Tune sets ``done`` when the
    trainable returns or the scheduler stops it, never when a stop signal ends the experiment),
    or fewer trials than the ``expected`` number (a stop between two trials leaves the rest
    uncreated). Measured with this Ray's ``Tuner.fit``: a SIGUSR1 during trial 2 of 4 left trial 1
    ``done``, trial 2 at epoch 3 not ``done``, trials 3–4 absent; trials ASHA stopped after their
    first epoch are ``done``."""
    if expected is not None and len(results) < expected:
        return True
    return any(r.error is None and not (r.metrics or {}).get("done") for r in results)


def fit(tuner, expected_trials: int | None = None) -> tuple[list[str], str | None]:
    """Run the experiment; return (one line per trial that ended in error, what stopped it
    early — "Ctrl+C", "a stop signal" — or None when it ran to the end). An interrupted
    experiment has unfinished trials even where Tune calls them TERMINATED, so the sweep must
    not record it as done: Ctrl+C is caught (:func:`_ctrl_c_seen`); a stop from outside —
    Tune's documented SIGUSR1, which Tune handles itself — is read off the grid
    (:func:`stopped_early`)."""
    # per-epoch checkpoints of tiny trials trip Tune's "snapshots too frequent" warning: harmless
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with _ctrl_c_seen() as seen:
        grid = tuner.fit()
    results = list(grid)
    lines = []
    for result in results:
        if result.error is not None:
            first = str(result.error).strip().splitlines()
            lines.append(f"{Path(result.path).name}: {first[-1] if first else type(result.error).__name__}")
    if seen["interrupted"]:
        return lines, "Ctrl+C"
    return lines, "a stop signal" if stopped_early(results, expected_trials) else None


# -- inside a trial --------------------------------------------------------------------------
def _report_state(report_fn: Callable, checkpoint_cls: Any, metrics: dict[str, Any],
                  state: dict[str, Any] | None) -> None:
    """``report_fn(metrics)``, with ``state`` as a one-file checkpoint when given (Tune's and
    Ray Train's ``report``/``Checkpoint`` share this shape)."""
    if state is None:
        report_fn(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="tru-dist-state-") as tmp:
        (Path(tmp) / CHECKPOINT_FILE).write_text(json.dumps(state))
        report_fn(metrics, checkpoint=checkpoint_cls.from_directory(tmp))


def _read_state(checkpoint: Any) -> dict[str, Any] | None:
    """The state a :func:`_report_state` checkpoint carries (None without one)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        return json.loads(path.read_text()) if path.exists() else None


def report(metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """``tune.report`` of one epoch's metrics, with ``state`` as the trial's checkpoint."""
    from ray import tune

    _report_state(tune.report, tune.Checkpoint, metrics, state)


def load_checkpoint() -> dict[str, Any] | None:
    """The state saved with the trial's last report, or None on a fresh start."""
    from ray import tune

    return _read_state(tune.get_checkpoint())


def trial_index() -> int:
    """The trial's number within its experiment (0, 1, ...) from Tune's ``<exp>_00001`` ids;
    -1 for ids of another shape (e.g. a trial restarted under a new id)."""
    from ray import tune

    tail = tune.get_context().get_trial_id().rsplit("_", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else -1


# -- a trial on W workers (Ray Train inside the Tune trial) ---------------------------------------
#: Ray Train settings for trial runs (an environment variable of the same name wins). The
#: controller collects reports when it polls the workers, every 2 s by default — as long as
#: a whole TRU epoch on Scientific — so a trial polls every 0.25 s. A trial may wait for a
#: stopped trial's workers to be freed, so it gets 5 minutes, not 1, to start its group.
TRAIN_TRIAL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                   "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}


def run_train_trial(sample: dict[str, Any], task: dict[str, Any], worker: Callable[..., None], *,
                    workers: int, cpu: float, gpu: float, storage: Path, fault: Any = None) -> None:
    """Run one W-worker trial as a Ray Train run and forward its per-epoch reports to Tune.

    Each worker calls ``worker(task, sample, start_epoch, report, fault=..., trial=...)``
    (:func:`tru_dist.tune.shard_trial.run_shard_trial`, passed in so that this module does
    not import the trial code that builds on it).

    The run is named after the trial (``trial_<id>`` under ``storage``) and keeps its last
    checkpoint, so when Tune retries the trial (``dist.max_failures``) or ``--resume``
    restores it, Ray Train restores the same run and its workers continue after the last
    reported epoch. The run's own ``max_failures`` is 0: a failure surfaces as the trial's,
    and Tune's failure policy decides.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tru_dist.distributed.launch import torch_trainer

    for key, value in TRAIN_TRIAL_ENV.items():  # read by Ray Train's controller (propagated from here)
        os.environ.setdefault(key, value)
    dist_cfg = task["config"]["dist"]
    trainer = torch_trainer(
        _train_trial_worker,
        {"task": task, "sample": sample, "trial": trial_index(), "fault": fault, "worker": worker},
        workers=workers, cpu=cpu, gpu=gpu, backend=dist_cfg["backend"], address=dist_cfg["address"],
        name=f"trial_{tune.get_context().get_trial_id()}", storage=storage, max_failures=0, num_to_keep=1,
        callbacks=[TuneReportCallback()])
    trainer.fit()


def _train_trial_worker(loop_config: dict[str, Any]) -> None:
    """One worker of a W-worker trial: resume after the run's last checkpoint, run the epochs."""
    import ray.train

    state = _read_state(ray.train.get_checkpoint())
    start = int(state["epoch"]) if state else 0
    loop_config["worker"](loop_config["task"], loop_config["sample"], start, _train_report,
                          fault=loop_config.get("fault"), trial=int(loop_config["trial"]))


def _train_report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
    """``ray.train.report`` on every rank (V2 needs all), the checkpoint from rank 0 only."""
    import ray.train

    rank0 = ray.train.get_context().get_world_rank() == 0
    _report_state(ray.train.report, ray.train.Checkpoint, metrics, state if rank0 else None)


# -- trials on reused worker groups (dist.trial_groups=reused) ------------------------------------
#: seconds the sweep waits for Ray to place its worker groups' actors
GROUP_START_TIMEOUT_S = 300.0


def start_trial_groups(count: int, group_cls: type, *, workers: int, cpu: float, gpu: float,
                       backend: str) -> list[Any]:
    """``count`` actors of ``group_cls`` (:class:`tru_dist.tune.group_trials.TrialGroup`, passed
    in so that this module does not import the trial code), each holding the CPUs and GPUs of
    W workers (``W × cpu``, ``W × gpu``) for the whole sweep; each starts its W ranks on its
    first call. A Ray-level failure of the actor restarts it (its next call starts fresh ranks)."""
    import ray

    actor = ray.remote(num_cpus=workers * cpu, num_gpus=workers * gpu, max_restarts=2)(group_cls)
    threads = max(1, int(cpu))
    groups = [actor.remote(workers, backend, threads) for _ in range(max(1, count))]
    try:  # an actor Ray cannot place (its CPUs held elsewhere) would leave every trial waiting
        ray.get([g.info.remote() for g in groups], timeout=GROUP_START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        stop_trial_groups(groups)
        need = f"{workers} x {cpu:g} CPU" + (f" and {workers} x {gpu:g} GPU" if gpu else "")
        raise ConfigError(
            f"{len(groups)} worker group(s) of {need} did not start within {GROUP_START_TIMEOUT_S:g} s (Ray "
            "has not got those resources free): free them, lower --workers or the sweep's resources, or use "
            "--dist.trial_groups=per-trial") from None
    return groups


def trial_group_info(groups: list[Any]) -> list[dict[str, Any]]:
    """Every group's :meth:`~tru_dist.tune.group_trials.TrialGroup.info` (pool starts, seconds);
    ``{}`` for a group that does not answer (for logs only: never fails a finished sweep)."""
    import ray

    out = []
    for group in groups:
        try:
            out.append(ray.get(group.info.remote(), timeout=60))
        except Exception:  # a dead or busy actor
            out.append({})
    return out


def stop_trial_groups(groups: list[Any]) -> None:
    """Close the groups' ranks and end their actors (their CPUs/GPUs go back to Ray)."""
    import ray

    for group in groups:
        try:
            ray.get(group.close.remote(), timeout=60)
        except Exception:  # a dead or stuck actor: killing it below frees its ranks' resources
            pass
        ray.kill(group)


def run_group_trial(sample: dict[str, Any], task: dict[str, Any], groups: list[Any], *,
                    experiment: str, fault: Any = None) -> None:
    """One W-worker trial on a reused group: ask the group for one epoch at a time, report each
    to Tune with the checkpoint ``{"epoch": e}`` (a retried or restored trial continues after it).

    The group is ``groups[trial index mod len(groups)]``; trials that share a group take turns,
    one epoch each (its actor runs one call at a time). A failure on a rank fails the trial,
    and Tune's failure policy (``dist.max_failures``) decides whether it runs again.
    """
    import ray
    from ray import tune

    state = load_checkpoint()
    epoch = int(state["epoch"]) if state else 0
    index = trial_index()
    group = groups[max(index, 0) % len(groups)]
    key = f"{experiment}/{tune.get_context().get_trial_id()}"
    max_t = int(task["max_t"])
    # stop at max_t or convergence without asking the group: a restored trial's group may no
    # longer hold it live and would replay every epoch only to answer None
    while epoch < max_t:
        out = ray.get(group.epoch.remote(key, task, sample, epoch + 1, fault, index))
        if out is None:
            break
        metrics, state = out
        report(metrics, state)
        epoch = int(state["epoch"])
        if metrics.get("converged"):
            break
    group.forget.remote(key)


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
