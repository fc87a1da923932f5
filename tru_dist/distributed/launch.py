"""Launch a task on W workers: Ray Train when there is Ray, local processes or a plain call otherwise.

The only module (with ``tru_dist/tune``) that imports Ray, and only inside functions, so
``from tru_dist.distributed.launch import run_distributed`` works on machines without Ray (the
lent GPU machines): there ``dist.address=none`` runs W local processes over gloo/NCCL, and
W = 1 is a plain call. Which path :func:`run_distributed` takes:

================================  ==========================================================
``dist.address`` / workers        path
================================  ==========================================================
``local``, W = 1, no fault        ``worker_main(task)`` in this process (no Ray)
``none``, W = 1                   the same
``none``, W > 1                   ``spawn_local``: W processes, gloo (NCCL on GPUs), loopback
``local``, W > 1 or a fault       Ray started in-process (dashboard off), ``TorchTrainer``
``auto`` / ``ray://host:port``    the running cluster (``ray job submit`` sets ``auto``)
``pool=`` given                   that :class:`~tru_dist.distributed.pool.WorkerPool`'s ranks
                                  (started once, reused; needs ``none`` and its W)
================================  ==========================================================

Under Ray, ``TorchTrainer(train_loop_per_worker, ScalingConfig(num_workers=W, use_gpu=…),
RunConfig(storage_path, FailureConfig(max_failures), CheckpointConfig))`` starts the
worker group and the torch process group; every epoch each rank reports its metrics and
its checkpoint file (``ray.train.report``; the files of all ranks are merged into one Ray
checkpoint). After a failure Ray restarts the group, each rank copies its file back from
``ray.train.get_checkpoint()`` and resumes, so the run ends as an uninterrupted one would.
Rank 0's last report carries the task's result (``result.json``), which the driver reads
from Ray's storage. The files a task leaves (``metrics.json``, ``checkpoint.pt``, the
ledger) are written by rank 0 into ``out_dir`` — on several nodes that must be storage
every node sees (as ``--run``, which every worker reads), on one machine any path.

Network: a locally started Ray binds its dashboard to 127.0.0.1 (or none), and workers
use the loopback interface for gloo (``GLOO_SOCKET_IFNAME=lo``). Ray's other ports
(GCS, raylet, object manager) listen on all interfaces — see ``cluster/local-start.sh``.
Token auth is turned off only for that local, loopback-only instance (``LOCAL_ENV``); a
joined cluster (``auto``, ``ray://``) keeps whatever ``RAY_AUTH_MODE`` its nodes run with.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.process_group import resolve_backend, spawn_local
from tru_dist.distributed.worker import RESULT_FILE, worker_main
from tru_dist.errors import ConfigError, TruDistError

if TYPE_CHECKING:
    from tru_dist.distributed.pool import WorkerPool

#: Ray Train's preemption watcher is off on a local head: it watches for cloud nodes being
#: drained, which one machine's in-process instance cannot be, and creating it printed an
#: error-level line ("core_worker.cc ... PreemptionWatcher ... has constructor arguments in the
#: object store and max_restarts > 0") in every W > 1 run, `make demo` included
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "GLOO_SOCKET_IFNAME": "lo",
             PREEMPTION_WATCHER_ENV: "0"}
#: Ray Train's detached placement-group cleaner polls the State API every second to learn
#: whether the train controller died; the State API is served by the dashboard, so on a local
#: Ray started without one every poll fails and logs a warning through to the driver
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
#: Ray Train's loggers of one INFO line per ``ray.train.report`` call: "Reporting training result
#: N: TrainingReport(...)" with the whole metrics dict, and "Checkpoint successfully created at"
#: — two lines per epoch per worker that repeat what tru-dist's own epoch line says. The modules
#: that log them; one names its logger by its file (``logging.getLogger(__file__)``), so
#: :func:`logger_names` gives both spellings
REPORT_LOGGER_MODULES = (
    "ray.train.v2._internal.execution.context",
    "ray.train.v2._internal.execution.storage",
)
#: Ray Client's port when a ``ray://host`` address names none
RAY_CLIENT_DEFAULT_PORT = 10001
#: how long :func:`probe_address` waits for a TCP connection to the named head
PROBE_TIMEOUT_S = 5.0


def uses_ray(cfg: Config) -> bool:
    """Whether :func:`run_distributed` goes through Ray for this config (see the module table)."""
    address = cfg.dist.address
    if address == "none":
        return False
    if address == "local":
        return cfg.dist.workers > 1 or cfg.dist.fault_rank >= 0
    return True


def run_distributed(
    task: dict[str, Any] | str,
    cfg: Config | None = None,
    data: RecDataset | None = None,
    pool: WorkerPool | None = None,
    **fields: Any,
) -> dict:
    """Run ``task`` (see :mod:`tru_dist.distributed.worker`) on ``cfg.dist.workers`` workers.

    Returns rank 0's result.

    ``task`` is a task dict or just its kind (``"train"``, ...) with the other task fields
    as keywords, e.g. ``run_distributed("train", cfg, out_dir="runs/x", resume=False)``.
    ``cfg`` defaults to ``task["config"]``; ``data`` (an in-memory dataset) is only
    accepted off Ray (Ray workers regenerate or memory-map ``cfg.data.path`` themselves).
    ``pool``: run on that :class:`~tru_dist.distributed.pool.WorkerPool` instead of starting a
    group (the config must say ``dist.address=none`` and the pool's W; refused otherwise).
    """
    task = {"kind": task} if isinstance(task, str) else dict(task)
    task.update({k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items() if v is not None})
    cfg = cfg or Config.from_dict(task["config"])
    task["config"] = cfg.to_dict()
    if cfg.dist.workers < 1:
        raise ConfigError(f"dist.workers={cfg.dist.workers}; use --dist.workers=1 or more")
    if pool is not None:
        pool.check(cfg)
        return pool.run(task, data)
    if not uses_ray(cfg):
        if cfg.dist.workers == 1:
            return worker_main(task, data=data)
        _check_workers_fit(cfg, data)
        backend = resolve_backend(cfg.dist.backend)
        return spawn_local(_spawned, cfg.dist.workers, (task, data), backend=backend)[0]
    if data is not None:
        raise ConfigError("in-memory data cannot travel to Ray workers; save it as a store or MMRec "
                          "folder and pass --data.path (or a synthetic spec such as synthetic:tiny)")
    return _run_ray(task, cfg)


def _check_workers_fit(cfg: Config, data: RecDataset | None) -> None:
    """More local workers than users is refused before any process starts, where the user count
    is known without reading the interactions (in-memory data, or a store's META.json): each
    rank holds a range of users, and ``--workers 1000`` on 60 users spawned a thousand torch
    processes before the first of them failed (the ranks' own check stays for MMRec folders)."""
    n_users = data.n_users if data is not None else None
    if n_users is None and cfg.data.path and not str(cfg.data.path).startswith("synthetic"):
        from tru_dist.data.location import locate_data
        from tru_dist.data.store import is_store, read_meta

        folder = Path(locate_data(cfg.data.path, cfg.data.resolved_path))
        if folder.is_dir() and is_store(folder):
            try:
                n_users = int(read_meta(folder)["n_users"])
            except (TruDistError, KeyError, TypeError, ValueError):
                n_users = None  # the ranks' readers say what is wrong with it
    if n_users is not None and cfg.dist.workers > n_users:
        raise ConfigError(f"--workers {cfg.dist.workers} exceeds the data's {n_users} users (each worker "
                          f"holds a range of users); pass --workers {n_users} or fewer")


def _spawned(rank: int, world_size: int, task: dict, data: RecDataset | None) -> dict:
    return worker_main(task, data=data)


# -- Ray ---------------------------------------------------------------------------------------
def connect(address: str, dashboard: bool = False) -> None:
    """``ray.init`` for ``local``, ``auto`` or ``ray://host:port``; reuses an initialised Ray.

    * ``local`` always starts a NEW Ray instance owned by this process
      (``ray.init(address="local")``: Ray's explicit "start a fresh instance" address, which
      ignores ``RAY_ADDRESS`` and any running cluster), with usage stats off, the dashboard
      off unless ``dashboard`` (and then on 127.0.0.1 only), and token auth off — this head
      is a loopback-only, single-user instance that dies with the process;
    * ``auto`` joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or the
      one running on this machine; ``ray://host:port`` is Ray Client. Auth is left as the
      cluster's environment says (``RAY_AUTH_MODE=token`` on a real cluster: see the README).

    ``RAY_TRAIN_V2_ENABLED`` defaults to 1: the launcher uses Train V2 APIs (Ray >= 2.52 has
    V2 on by default; the variable only guards against an environment that turned it off).
    """
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    if address == "local":
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
        quiet = {} if dashboard else {"runtime_env": {
            "worker_process_setup_hook": f"{__name__}.{quiet_local_ray_train.__name__}"}}
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 configure_logging=False, log_to_driver=True, **quiet)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        probe_address(address)
        try:
            with warnings.catch_warnings():  # a head that accepts and never answers: Ray warns over
                warnings.filterwarnings("ignore", message="Ray Client connection timed out")  # 2 lines
                ray.init(address=address, configure_logging=False)  # before the one-line error below
        except ConnectionError as exc:  # `auto` with no cluster running here: Ray's raw traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"no Ray cluster to join at --address {address} ({first[:160]}); start one "
                              "(ray start --head), submit with ray job submit, or run without a cluster: "
                              "--address local (an in-process Ray) or --address none") from None


def host_port(address: str) -> tuple[str, int] | None:
    """The (host, port) a ``host:port`` or ``ray://host[:port]`` address names (the port of a
    ``ray://`` address without one is Ray Client's 10001); None for ``auto``, ``local``,
    ``none`` and for anything else that is not of that form (a ``RAY_ADDRESS`` may be the
    dashboard's ``http://head:8265``, which is Ray's to read). An ``[IPv6]`` host loses its
    brackets."""
    if address in ("auto", "local", "none"):
        return None
    rest = address[len("ray://"):].rstrip("/") if address.startswith("ray://") else address
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    else:
        host, _, port = rest.partition(":")
    if not host or "/" in host or (port and not port.isdigit()):  # e.g. RAY_ADDRESS=http://head:8265
        return None
    if not port:  # only Ray Client has a default port; a bare `head` is not an address to probe
        return (host, RAY_CLIENT_DEFAULT_PORT) if address.startswith("ray://") else None
    return host, int(port)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in one line and within ``timeout_s``, an address where nothing accepts a TCP
    connection. ``ray.init`` on such an address retried its GCS connection for minutes and
    ignored SIGTERM meanwhile (measured: > 90 s for ``127.0.0.1:6399`` with nothing
    listening). ``auto`` is probed through ``RAY_ADDRESS`` when that names a ``host:port``;
    otherwise it is left to Ray, which fails fast when no cluster runs on this machine."""
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        target = host_port(env) if env and env not in ("auto", "local") else None
        shown = f"RAY_ADDRESS={env}"
    else:
        target, shown = host_port(address), f"--address {address}"
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as exc:
        why = (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError)
               else (exc.strerror or type(exc).__name__).lower())
        raise ConfigError(f"nothing answers at {shown} ({why}); check that the head is running there "
                          "(ray status on the head) and that the port is open, or run without a cluster: "
                          "--address local (an in-process Ray) or --address none") from None


def quiet_local_ray_train() -> None:
    """Worker setup hook of a local Ray started without its dashboard (``tru-dist demo``, local
    ``compare``/``train --address local``): Ray Train's chatter that says nothing about the run
    is muted, its warnings and errors are kept.

    * The placement-group cleaner (``PLACEMENT_GROUP_CLEANER_LOGGER``) logs only errors. Without
      the dashboard its State API query fails every second and it warns each time ("Failed to
      query Ray Train Controller actor state") — dozens of lines at the end of ``make demo``.
      Muting them loses nothing: without the State API the cleaner cannot see a dead controller
      anyway, and any placement group it would free dies with this local instance. (A sweep with
      W > 1 needs the cleaner to act, so it starts the dashboard —
      :func:`tru_dist.tune.adapter.require_state_api` — and is not muted.)
    * The per-report loggers (``REPORT_LOGGER_MODULES``) log warnings and above: each epoch's INFO
      lines "Reporting training result ..." and "Checkpoint successfully created at ..." repeat
      tru-dist's own epoch line; the checkpoints stay where they were (the run's Ray storage,
      ``--storage``).

    Each is muted with a :class:`MinimumLevel` filter, not ``setLevel``: a Ray Train worker
    configures the ``ray.train`` logger with ``logging.config.dictConfig`` after this hook runs,
    which resets every existing child logger's level to NOTSET but leaves its filters."""
    for name, level in ((PLACEMENT_GROUP_CLEANER_LOGGER, logging.ERROR),
                        *((n, logging.WARNING) for m in REPORT_LOGGER_MODULES for n in logger_names(m))):
        logger = logging.getLogger(name)
        if not any(isinstance(f, MinimumLevel) for f in logger.filters):  # a hook may run twice
            logger.addFilter(MinimumLevel(level))


class MinimumLevel(logging.Filter):
    """A logger filter that drops records below ``level`` (a level that outlives ``dictConfig``)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def logger_names(module: str) -> tuple[str, str]:
    """The two names a Ray module's logger may have: its dotted name (``getLogger(__name__)``,
    Ray's usual) and its source file (``getLogger(__file__)``), the latter found from the
    installed ``ray`` package without importing ``module`` (which costs ~0.6 s per worker)."""
    import ray

    path = Path(ray.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    return module, str(path)


def worker_env(address: str) -> dict[str, str]:
    """Environment of Ray Train workers: no progress bars; gloo on loopback for a local Ray."""
    env = {"TQDM_DISABLE": "1"}
    if address == "local" or os.environ.get("GLOO_SOCKET_IFNAME"):
        env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    return env


def torch_trainer(
    loop, loop_config: dict[str, Any], *, workers: int, cpu: float, gpu: float, backend: str, address: str,
    name: str, storage: str | Path, max_failures: int, num_to_keep: int, callbacks: list | None = None,
):
    """The ``TorchTrainer`` of every Ray Train run here (tasks, and sweep trials on W workers):
    W workers with ``cpu``/``gpu`` each, NCCL on GPUs and gloo otherwise (``backend=auto``),
    checkpoints under ``storage/name``, the workers' environment from :func:`worker_env`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources: dict[str, float] = {"CPU": cpu} | ({"GPU": gpu} if gpu > 0 else {})
    if backend == "auto":
        backend = "nccl" if gpu > 0 else "gloo"
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": worker_env(address)},
        ),
    )


def _run_ray(task: dict, cfg: Config) -> dict:
    from tru_dist.train.checkpoint import write_run_config

    connect(cfg.dist.address)
    resuming = task["kind"] == "train" and bool(task.get("resume", False))
    with tempfile.TemporaryDirectory(prefix="tru-dist-ray-") as scratch:
        out_dir = Path(task["out_dir"]).resolve() if task.get("out_dir") else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            task = {**task, "out_dir": str(out_dir)}
            if not resuming:  # the driver's copy (workers may run elsewhere); a resume's: once it succeeded
                write_run_config(out_dir, cfg.to_dict())
        if cfg.dist.storage_path:
            storage = Path(cfg.dist.storage_path).resolve()
        elif task["kind"] == "train" and out_dir is not None:  # its per-epoch checkpoints: restarts
            storage = out_dir / "ray"
        else:  # the other tasks report only their result: Ray's files last as long as the run,
            storage = Path(scratch)  # and OUT holds what it holds at W = 1
        label = out_dir.name if out_dir is not None else "run"
        trainer = torch_trainer(
            train_loop_per_worker, {"task": task}, workers=cfg.dist.workers, cpu=1.0,
            gpu=cfg.dist.gpus_per_worker, backend=cfg.dist.backend, address=cfg.dist.address,
            name=f"{task['kind']}-{label}-{time.strftime('%H%M%S')}", storage=storage,
            max_failures=cfg.dist.max_failures, num_to_keep=2)
        result = trainer.fit()
        if result.error is not None:
            raise _user_error(result.error) or result.error
        if result.checkpoint is None:
            raise RuntimeError(f"the Ray run in {storage} finished without a final report; see its logs")
        with result.checkpoint.as_directory() as folder:
            source = Path(folder) / RESULT_FILE
            if not source.exists():
                raise RuntimeError(f"the Ray run's last checkpoint {result.checkpoint.path} has no "
                                   f"{RESULT_FILE}")
            outcome = json.loads(source.read_text())
        if out_dir is not None and resuming:
            write_run_config(out_dir, cfg.to_dict())
        return outcome


def _user_error(exc: BaseException, depth: int = 0) -> TruDistError | None:
    """The one-line user error (a :class:`TruDistError`) behind a failed Ray run, if any:
    Ray wraps a worker's exception in its own (``worker_failures``, ``__cause__``)."""
    if isinstance(exc, TruDistError):
        return exc
    if depth > 4:
        return None
    inner = [exc.__cause__, exc.__context__, *(getattr(exc, "worker_failures", None) or {}).values()]
    for e in inner:
        if isinstance(e, BaseException) and (found := _user_error(e, depth + 1)) is not None:
            return found
    return None


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function: restore this rank's checkpoint if any, run the task."""
    import ray.train

    task = dict(config["task"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and task["kind"] == "train":
        from tru_dist.train.checkpoint import checkpoint_path

        target = checkpoint_path(task["out_dir"], rank=rank, world_size=world)
        with checkpoint.as_directory() as folder:
            source = Path(folder) / target.name
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                task["resume"] = True
    worker_main(task, reporter=_ray_report)


def _ray_report(metrics: dict[str, Any], files: list[Path]) -> None:
    """``ray.train.report`` with this rank's checkpoint files (merged with the other ranks')."""
    import ray.train

    if not files:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="tru-dist-ckpt-") as tmp:
        for f in files:
            shutil.copy2(f, Path(tmp) / Path(f).name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
