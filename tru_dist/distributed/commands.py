"""The commands at any W: ``train``, ``evaluate``, ``unlearn`` and ``compare``, one call each.

What the CLI (and the ``jobs/`` entry points through it) call. Each builds its task and
runs it through :func:`tru_dist.distributed.launch.run_distributed` — in this process at
W = 1 (no Ray, no process group), on W local processes with ``dist.address=none``, on W
Ray Train workers otherwise — where every rank runs the same per-worker function
(:mod:`tru_dist.distributed.worker`). What a command returns and the files it leaves do not
depend on W (metrics agree to float tolerance: sums over ranks are added in another order).

=========  ===================================================================================
command    where it runs
=========  ===================================================================================
train      W = 1 without Ray: :func:`tru_dist.train.trainer.run_train` here; otherwise the
           worker's ``train`` on W shards. Either way RUN/metrics.json and RUN/checkpoint.pt
           (full tables; W > 1 adds per-rank resume files)
evaluate   the worker's ``evaluate`` on W shards of RUN/checkpoint.pt (W = 1: this process)
unlearn    the driver plans (:func:`tru_dist.unlearn.run.prepare`: config, ledger, replay);
           the worker's ``unlearn`` applies the requests on W shards; rank 0 writes OUT
compare    every seed's original, Retrain and methods train/unlearn on W shards, every metric
           is a global sum; rank 0 writes OUT (audits need one worker)
=========  ===================================================================================

Every command takes ``pool=``: a :class:`~tru_dist.distributed.pool.WorkerPool` whose W ranks
(started once) run the task instead of a fresh group — the config must then say
``dist.address=none`` and the pool's W. :func:`unlearn_sequence` applies several request files
one after another, each on the model the previous one left (what ``tru-dist unlearn`` does
with ``--requests`` given more than once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.launch import run_distributed, uses_ray
from tru_dist.errors import ConfigError, DataError, TruDistError

if TYPE_CHECKING:
    from tru_dist.distributed.pool import WorkerPool


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, data: RecDataset | None = None,
          pool: WorkerPool | None = None) -> dict:
    """Train ``cfg`` into ``out_dir``; returns the metrics written to ``out_dir/metrics.json``.
    Sampled steps on several workers (``train.propagation: local``, W > 1) train W data-parallel
    replicas (:mod:`tru_dist.distributed.replica_train`), not W shards. The run records
    ``data.path``'s absolute form too (:func:`tru_dist.config.record_data_location`), so
    commands on it find the data from other directories."""
    from tru_dist.config import record_data_location
    from tru_dist.distributed.replica_train import run_replica_train, wants_replicas
    from tru_dist.unlearn.ledger import LEDGER_FILE

    if (Path(out_dir) / LEDGER_FILE).exists():  # its receipts would describe a model no longer there
        raise ConfigError(f"{out_dir} holds an unlearned run (its deletion ledger, {LEDGER_FILE}); training "
                          "there would keep receipts that do not describe the new model: choose another "
                          "--out")
    cfg = record_data_location(cfg)
    if wants_replicas(cfg):
        if pool is not None:
            raise ConfigError("a worker pool runs sharded tasks; sampled training on replicas "
                              "(train.propagation=local) starts its own ranks: train without pool=, or "
                              "with --train.propagation=full on the pool")
        return run_replica_train(cfg, out_dir, resume=resume, data=data)
    if pool is None and cfg.dist.workers == 1 and not uses_ray(cfg):
        from tru_dist.train.trainer import run_train

        return run_train(cfg, out_dir, resume=resume, data=data)
    return run_distributed("train", cfg, data=data, pool=pool, out_dir=out_dir, resume=resume)


def evaluate(run_dir: str | Path, *, overrides: list[str] | None = None,
             data: RecDataset | None = None, pool: WorkerPool | None = None) -> dict[str, Any]:
    """``{"valid": {...}, "test": {...}}`` of a finished run (trained at any W), evaluated on
    ``dist.workers`` workers (``overrides``: ``dist.workers=4``, ``eval.ks=[10]``, ...)."""
    from tru_dist.train.trainer import run_config

    cfg = run_config(run_dir, overrides=overrides)
    if data is None:  # neither data.path nor where the run was trained: one error naming both, here
        from tru_dist.data.location import check_data_found

        check_data_found(cfg.data.path, cfg.data.resolved_path, of_run=run_dir)
    return run_distributed("evaluate", cfg, data=data, pool=pool, model_dir=str(Path(run_dir).resolve()))


def unlearn(run_dir: str | Path, requests: str | Path, out_dir: str | Path, *, method: str | None = None,
            config_file: str | Path | None = None, seed: int | None = None,
            overrides: list[str] | None = None, data: RecDataset | None = None, purge: bool = False,
            keep_versions: int = 0, pool: WorkerPool | None = None) -> dict[str, Any]:
    """Apply a request file to a finished run (see :mod:`tru_dist.unlearn.run`); returns the
    metrics written to ``out_dir/metrics.json`` with the receipt (``replayed: True`` and the
    earlier receipt when these requests were applied before). ``purge``: then purge the run's
    store, keeping ``keep_versions`` superseded versions."""
    from tru_dist.unlearn.run import prepare

    try:
        ready = prepare(run_dir, requests, out_dir, method=method, config_file=config_file, seed=seed,
                        overrides=overrides, data=data, purge=purge, keep_versions=keep_versions)
    except DataError:
        if data is None:  # the run's data is at neither data.path nor where it was trained: say both
            _check_run_data_found(run_dir, config_file=config_file, seed=seed, overrides=overrides)
        raise
    if isinstance(ready, dict):  # applied before: the earlier receipt, no worker starts
        return ready
    return run_distributed("unlearn", ready.cfg, data=data, pool=pool, model_dir=str(Path(run_dir).resolve()),
                           requests=str(Path(requests).resolve()), method=ready.method,
                           out_dir=str(Path(out_dir).resolve()), purge_store=ready.store,
                           keep_versions=ready.keep_versions, requests_digest=ready.requests_digest)


def compare(cfg: Config, spec, out_dir: str | Path, *, data: RecDataset | None = None,
            pool: WorkerPool | None = None) -> dict:
    """:func:`tru_dist.compare.run_compare` on ``cfg.dist.workers`` workers; returns its results."""
    from dataclasses import asdict

    from tru_dist.compare import check_workers, refuse_file_as_folder
    from tru_dist.train.checkpoint import refuse_run_folder

    refuse_run_folder(out_dir, "--out")  # before a worker writes config.yaml there
    refuse_run_folder(spec.originals, "--originals")
    refuse_file_as_folder(spec.originals, "--originals")
    check_workers(cfg, spec)
    out = run_distributed("compare", cfg, data=data, pool=pool, out_dir=str(Path(out_dir).resolve()),
                          spec=asdict(spec))
    if "results" not in out:
        raise ConfigError("the compare task returned no results")
    return {**out["results"], "table": out.get("table")}


def sequence_dirs(out_dir: str | Path, requests: list[str | Path]) -> list[Path]:
    """Where each request file's output goes: ``out_dir`` itself for one file; for several,
    ``out_dir/<k>-<file stem>`` (k = 1.., zero-padded to one width, so folders sort in order)."""
    out_dir = Path(out_dir)
    if len(requests) == 1:
        return [out_dir]
    width = len(str(len(requests)))
    return [out_dir / f"{k:0{width}d}-{Path(r).stem}" for k, r in enumerate(requests, 1)]


def check_request_files(requests: list[str | Path]) -> None:
    """Refuse, before anything runs, a file given twice, an unreadable file, a request id in two
    files (the second would be a replay and leave a folder without a model), and a file every row
    of which an earlier file deletes — the same pairs, or pairs or users of users an earlier file
    deletes whole (file k would find nothing to unlearn and be refused only after files 1..k − 1
    had run). A file with some such rows beside new ones runs: those rows are overlaps, skipped,
    as when the files are applied by separate commands."""
    import pandas as pd

    from tru_dist.data.requests import read_requests

    if not requests:
        raise ConfigError("no request file given; pass --requests FILE (repeatable)")
    seen: dict[Path, str] = {}
    owner: dict[str, str] = {}
    user_file: dict[int, str] = {}  # user -> the file that deletes all of that user's rows
    pair_file: dict[tuple[int, int], str] = {}
    for path in requests:
        key = Path(path).resolve()
        if key in seen:
            raise ConfigError(f"request file {path} is given twice; give each file once")
        seen[key] = str(path)
        table = read_requests(path)
        for rid in table["request_id"].astype(str):
            if rid in owner and owner[rid] != str(path):
                raise ConfigError(f"request id {rid!r} is in both {owner[rid]} and {path}; a request is "
                                  "applied once, so give each id in one file only")
            owner.setdefault(rid, str(path))
        here_users: dict[int, str] = {}
        here_pairs: dict[tuple[int, int], str] = {}
        covered: list[str] = []  # the earlier file that deletes each row already
        for user, item in zip(table["user_id"].tolist(), table["item_id"].tolist(), strict=True):
            whole = bool(pd.isna(item))  # an empty item_id: every row of the user
            earlier = user_file.get(int(user)) or (None if whole else pair_file.get((int(user), int(item))))
            if earlier is not None:
                covered.append(earlier)
            if whole:
                here_users[int(user)] = str(path)
            else:
                here_pairs[(int(user), int(item))] = str(path)
        if covered and len(covered) == len(table):  # file k would find nothing left, after files < k ran
            raise ConfigError(f"request file {path} deletes nothing new: every row it names "
                              f"{', '.join(sorted(set(covered)))} deletes already; drop the file (a row "
                              "some earlier file deletes is skipped as an overlap only beside new rows)")
        user_file.update(here_users)
        pair_file.update(here_pairs)


def unlearn_sequence(run_dir: str | Path, requests: list[str | Path], out_dir: str | Path, *,
                     method: str | None = None, config_file: str | Path | None = None,
                     seed: int | None = None, overrides: list[str] | None = None,
                     data: RecDataset | None = None, purge: bool = False, keep_versions: int = 0,
                     pool: WorkerPool | None = None) -> list[dict[str, Any]]:
    """Apply request files in order, each its own ledgered request on the model the previous one
    left: file k runs :func:`unlearn` with run = file k − 1's output (file 1: ``run_dir``) into
    :func:`sequence_dirs` ``[k]`` — exactly what N separate ``tru-dist unlearn --run PREV
    --requests FILE_k --out OUT_k`` calls do (same ledger chain, same receipts, same models),
    so running it again replays every file. Returns each file's metrics, in order.

    At W > 1 with ``dist.address=none`` and no ``pool`` given, one
    :class:`~tru_dist.distributed.pool.WorkerPool` is opened for the whole sequence (several
    files) and closed at the end. A file that fails leaves the outputs of the files before it
    (complete, ledgered) and removes its own folder if it created it; the error names the file.
    """
    import shutil
    from contextlib import nullcontext

    from tru_dist.train.trainer import run_config

    requests = list(requests)
    check_request_files(requests)
    dirs = sequence_dirs(out_dir, requests)
    cfg = run_config(run_dir, config_file=config_file, seed=seed, overrides=overrides)  # bad config: now
    opened = None
    if pool is None and len(requests) > 1 and cfg.dist.workers > 1 and cfg.dist.address == "none":
        from tru_dist.distributed.pool import WorkerPool

        opened = WorkerPool(cfg.dist.workers, cfg.dist.backend)
    results: list[dict[str, Any]] = []
    source = Path(run_dir)
    with opened or nullcontext():
        for k, (path, target) in enumerate(zip(requests, dirs, strict=True), 1):
            fresh = not target.exists()
            try:
                results.append(unlearn(source, path, target, method=method, config_file=config_file,
                                       seed=seed, overrides=overrides, data=data, purge=purge,
                                       keep_versions=keep_versions, pool=pool or opened))
            except TruDistError as exc:
                if fresh and target != Path(out_dir):
                    shutil.rmtree(target, ignore_errors=True)
                if len(requests) == 1:
                    raise
                done = ("" if k == 1 else f"; file 1 was applied ({dirs[0]})" if k == 2
                        else f"; files 1-{k - 1} were applied ({dirs[k - 2]} holds their model)")
                raise _retitled(exc, f"request file {k} of {len(requests)} ({path}): {exc}{done}") from exc
            source = target
    return results


def _check_run_data_found(run_dir: str | Path, **layers: Any) -> None:
    """:func:`tru_dist.data.location.check_data_found` on the data a command on ``run_dir``
    opens (its config with the command's ``layers``)."""
    from tru_dist.data.location import check_data_found
    from tru_dist.train.trainer import run_config

    cfg = run_config(run_dir, **layers)
    check_data_found(cfg.data.path, cfg.data.resolved_path, of_run=run_dir)


def _retitled(exc: TruDistError, message: str) -> TruDistError:
    """``exc``'s class with another one-line message (TruDistError when the class needs other arguments)."""
    try:
        return type(exc)(message)
    except Exception:
        return TruDistError(message)
