"""The Python API — the same functions the CLI's ``train``, ``evaluate``, ``unlearn`` and
``recommend`` commands call.

    import tru_dist

    run = tru_dist.train(data="synthetic:small", model="mgcn", out="runs/mgcn",
                         overrides={"train.epochs": 50})        # published MGCN defaults + these
    tru_dist.evaluate(run)                                      # {"valid": {...}, "test": {...}}
    tru_dist.recommend(run, users=[0, 1], k=10)                 # [{"user": 0, "items": [..], "scores": [..]}]
    emb = tru_dist.export_embeddings(run)                       # {"user": (n_users, d), "item": (n_items, d)}
    forgotten = tru_dist.unlearn(run, requests=df, method="tru", config={"unlearn.epochs": 5})
    again = tru_dist.load_run("runs/mgcn")                      # any finished run folder

    with tru_dist.worker_pool(2) as pool:                       # 2 local ranks, started once
        for i, df in enumerate(request_frames):                 # each call reuses them (W = 2)
            run = tru_dist.unlearn(run, requests=df, out=f"runs/mgcn-u{i}", pool=pool)

A :class:`Run` is a run folder plus what was read from it; the model, graph and data are
built on first use (``run.model``), on ``device`` (``auto`` = CUDA when available), so a run
trained on a GPU serves on a CPU machine. Runs trained on W > 1 workers load too (their
per-rank checkpoints are joined). Errors are :class:`tru_dist.errors.TruDistError` with a
one-line message, as on the command line.

``train``, ``evaluate`` and ``unlearn`` are thin wrappers over :mod:`tru_dist.distributed.commands`
(what the CLI runs, at any W); ``unlearn`` writes a request DataFrame to a temporary file first.
Each takes ``pool=``, a :func:`worker_pool` (:class:`tru_dist.distributed.pool.WorkerPool`):
the command then runs on the pool's W local ranks instead of starting a group of its own —
``dist.workers`` and ``dist.address`` default to the pool's (W, ``none``); a config that says
otherwise is a one-line error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tru_dist.config import (
    Config,
    build_config,
    deep_merge,
    defaults_used,
    leaf_values,
    load_yaml,
    parse_overrides,
    record_data_location,
)
from tru_dist.errors import ConfigError, RequestError

if TYPE_CHECKING:
    from tru_dist.distributed.pool import WorkerPool

log = logging.getLogger(__name__)

__all__ = ["Run", "train", "load_run", "unlearn", "evaluate", "recommend", "export_embeddings", "worker_pool"]


# -- runs -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished run folder: ``path``, its ``config`` and ``metrics`` (``metrics.json``, or
    ``train.json`` for a W > 1 run); ``model`` / ``graph`` / ``data`` load on first use."""

    path: Path
    config: Config
    metrics: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    device: str = "auto"
    _bundle: tuple | None = field(default=None, repr=False, compare=False)

    def _load(self) -> tuple:
        if self._bundle is None:
            self._bundle = _load_bundle(self)
        return self._bundle

    @property
    def data(self):
        return self._load()[0]

    @property
    def graph(self):
        return self._load()[1]

    @property
    def model(self):
        return self._load()[2]


def _path(value: Any, what: str) -> Path:
    """``value`` as a Path, or a one-line ConfigError naming ``what`` when it is not a path
    (None, a number, an empty string: ``Path`` raised a raw TypeError, or read "" as the cwd)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{what} must be a path (a str or pathlib.Path), not {type(value).__name__} "
                          f"{_shown(value)}")
    return Path(value)


def _flag(value: Any, what: str) -> bool:
    """``value`` as a bool, or a one-line ConfigError: ``purge="no"`` is truthy and purged the
    store in place; ``resume="yes"`` and ``exclude_seen="no"`` were taken the same way."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{what} must be True or False, not {type(value).__name__} {_shown(value)}")


def _count(value: Any, what: str) -> int:
    """``value`` as an int >= 0 (not a bool), or a one-line ConfigError."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0:
        return int(value)
    raise ConfigError(f"{what} must be an integer >= 0, not {type(value).__name__} {_shown(value)}")


def _optional_seed(value: Any) -> int | None:
    """None or a seed (an int in 0..``SEED_MAX``); ``seed="x"`` raised int()'s ValueError."""
    from tru_dist.config import SEED_MAX

    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
            and 0 <= value <= SEED_MAX:
        return int(value)
    raise ConfigError(f"seed must be an integer 0..{SEED_MAX}, not {type(value).__name__} {_shown(value)}")


def _optional_pool(value: Any) -> WorkerPool | None:
    """None or a :func:`worker_pool`; ``pool="x"`` raised an AttributeError deep in the call."""
    from tru_dist.distributed.pool import WorkerPool as _WorkerPool

    if value is None or isinstance(value, _WorkerPool):
        return value
    raise ConfigError(f"pool must be a tru_dist.worker_pool(...) or None, not {type(value).__name__} "
                      f"{_shown(value)}")


def _run_folder(value: Any, what: str) -> Path:
    """:func:`_out_path` for a run folder, refused when it is an existing file (``FileExistsError``
    from mkdir; the CLI said so in one line)."""
    path = _out_path(value, what)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; pass a folder for the run (a new one, or one to "
                          "resume)")
    return path


def _out_path(value: Any, what: str) -> Path:
    """:func:`_path` for a path this call writes, refused before any work when a parent of it
    is a file."""
    from tru_dist.io_utils import file_in_the_way

    path = _path(value, what)
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise ConfigError(f"{what} {path} lies under {blocking}, which is a file, not a folder; pass a path "
                          "whose parent folders are folders")
    return path


def load_run(path: str | Path, device: str = "auto") -> Run:
    """Open a finished run folder (train or unlearn output, any W); ``device``: auto | cpu | cuda."""
    from tru_dist.train.checkpoint import read_metrics, read_run

    path = _path(path, "run")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run {path} is a file; pass the run folder (it holds checkpoint.pt)")
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist; pass the --out folder of a finished run")
    saved = read_run(path, tensors=False)  # the handle needs the metadata; serving reads the model
    cfg = Config.from_dict(saved["config"])
    metrics = read_metrics(path)
    return Run(path=path, config=cfg, metrics=metrics, world_size=int(saved.get("world_size", 1)),
               device=device)


def _load_bundle(run: Run) -> tuple:
    """``(data, graph, model)`` of ``run`` on ``run.device``, best parameters, eval mode, in this
    process (``checkpoint.pt`` holds full tables whatever W trained the run); data and graph
    are what the run serves with — without every pair its ledger deleted."""
    from tru_dist.train.trainer import load_run as trainer_load
    from tru_dist.unlearn.ledger import served_state

    _, data, graph, model = trainer_load(run.path, device=run.device)
    data, graph = served_state(run.path, data, graph)  # an unlearned run: without what it deleted
    return data, graph, model


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


# -- configuration ---------------------------------------------------------------------------------
def _shown(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters: an error message is one line,
    and a pandas Series' repr spans several."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _plain_value(value: Any) -> Any:
    """A numpy scalar or array as the Python value or list it holds (``json.dumps``' fallback:
    ``{"unlearn.epochs": np.int64(1)}`` raised a raw "not JSON serializable" TypeError)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _override_list(config: Mapping[str, Any] | str | Path | Sequence[str] | None) -> list[str]:
    """``{"unlearn.epochs": 5}`` / ``{"unlearn": {"epochs": 5}}`` / a YAML file / ``["k=v", ...]``
    → ``["key=value", ...]`` (values as JSON, which parses back unchanged as YAML)."""
    if config is None:
        return []
    if isinstance(config, (str, Path)) and not (isinstance(config, str) and "=" in config):
        config = load_yaml(config)
    if isinstance(config, str):
        return [config]
    if not isinstance(config, (Mapping, Iterable)):
        raise ConfigError(f"config/overrides must be a mapping such as {{'unlearn.epochs': 5}}, a YAML file "
                          f"or a list of 'key=value' strings, not {type(config).__name__} {_shown(config)}")
    if isinstance(config, Mapping):
        out: list[str] = []

        def walk(tree: Mapping[str, Any], prefix: str) -> None:
            for k, v in tree.items():
                if isinstance(v, Mapping) and k != "modality_layers":
                    walk(v, f"{prefix}{k}.")
                else:
                    try:
                        out.append(f"{prefix}{k}={json.dumps(v, default=_plain_value)}")
                    except TypeError:
                        raise ConfigError(f"config/overrides value for {prefix}{k} is of type "
                                          f"{type(v).__name__}, not a number, string, boolean or list of "
                                          "them") from None

        walk(config, "")
        return out
    return [str(c) for c in config]


def _train_config(config, model, data, overrides, device) -> Config:
    if data is not None and not isinstance(data, (str, Path)):  # a DataFrame read as a "path"
        raise ConfigError(f"data must be a dataset folder or a synthetic spec such as 'synthetic:small', "
                          f"not a {type(data).__name__}; write the data as an MMRec folder (README: Data) "
                          "first")
    extra = _override_list(overrides)
    if data is not None:
        extra.insert(0, f"data.path={data}")
    if device is not None:
        extra.append(f"train.device={device}")
    if isinstance(config, Config):
        tree = config.to_dict()
        if model is not None:
            tree["model"]["name"] = model
        return Config.from_dict(deep_merge(tree, parse_overrides(extra)))
    from tru_dist.data.source import is_synthetic

    dataset = None if data is None or is_synthetic(str(data)) else str(data)
    if isinstance(config, Mapping):
        extra = _override_list(config) + extra
        config = None
    return build_config(model=model, dataset=dataset, config_file=config, overrides=extra)


# -- worker pools ----------------------------------------------------------------------------------
def worker_pool(workers: int = 2, backend: str = "auto", **options: Any) -> WorkerPool:
    """Start ``workers`` local ranks (one process group, gloo on loopback or NCCL) to reuse across
    ``train`` / ``evaluate`` / ``unlearn`` calls (``pool=``): each call then skips the seconds a
    fresh group costs. Use it as a context manager, or ``close()`` it. ``options``: see
    :class:`tru_dist.distributed.pool.WorkerPool` (timeouts, ``threads_per_rank``)."""
    from tru_dist.distributed.pool import WorkerPool

    if backend not in ("auto", "gloo", "nccl"):  # torch raised a raw ValueError from the ranks
        raise ConfigError(f"backend must be auto, gloo or nccl, not {_shown(backend)}")
    return WorkerPool(workers, backend, **options)


def _pool_overrides(pool: WorkerPool | None) -> list[str]:
    """The pool's W and ``dist.address=none``, placed before the caller's overrides (which win)."""
    return [] if pool is None else [f"dist.workers={pool.workers}", "dist.address=none"]


def _pool_defaults(cfg: Config, pool: WorkerPool | None) -> Config:
    """A config left at the single-process defaults (W = 1, ``local``) runs on the pool's ranks."""
    if pool is not None and cfg.dist.workers == 1 and cfg.dist.address == "local":
        cfg = cfg.model_copy(deep=True)
        cfg.dist.workers, cfg.dist.address = pool.workers, "none"
    return cfg


# -- commands --------------------------------------------------------------------------------------
def train(
    data: str | Path | None = None,
    *,
    out: str | Path,
    model: str | None = None,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    device: str | None = None,
    resume: bool = False,
    pool: WorkerPool | None = None,
) -> Run:
    """Train a backbone (BPR, early stopping on valid) into ``out``; returns the :class:`Run`.

    ``data``: a dataset folder (MMRec layout or tru-dist store) or a synthetic spec
    (``synthetic:small``); required unless ``config`` names ``data.path``. ``model``: any
    spelling of lightgcn | mgcn | miggt (its published defaults apply). ``config``: a
    :class:`Config` (used as is, e.g. by the CLI), a YAML file, or a mapping of overrides;
    ``overrides``: ``{"train.epochs": 20}`` or ``["train.epochs=20"]``. ``dist.workers > 1``
    trains on W workers (Ray or local processes, see ``dist.address``); ``pool``: on that
    :func:`worker_pool`'s ranks.
    """
    out = _run_folder(out, "out")
    resume, pool = _flag(resume, "resume"), _optional_pool(pool)
    if config is not None and not isinstance(config, (Config, Mapping, str, os.PathLike)):
        raise ConfigError(f"config must be a Config, a mapping of overrides or a YAML file, not "
                          f"{type(config).__name__} {_shown(config)}")
    cfg = record_data_location(_pool_defaults(_train_config(config, model, data, overrides, device), pool))
    if cfg.data.path is None:
        raise ConfigError("no data named: pass data= (a dataset folder) or a synthetic spec such as "
                          "data='synthetic:small' (on the command line: --data)")
    from tru_dist.distributed import commands
    from tru_dist.distributed.launch import uses_ray

    if not uses_ray(cfg) and cfg.dist.workers == 1:  # trains here: say now if the device is missing
        from tru_dist.device import resolve_device

        resolve_device(cfg.train.device)
    if not resume:
        _refuse_replacing_run(out)
    log.info(defaults_used(cfg.model.name, cfg.data.path))
    metrics = commands.train(cfg, out, resume=resume, pool=pool)
    return Run(path=Path(out), config=cfg, metrics=metrics, world_size=cfg.dist.workers,
               device=cfg.train.device)


def _refuse_replacing_run(out: Path) -> None:
    """Training afresh (no ``resume``) into a folder that holds a checkpoint — a finished or
    interrupted run, at any W — is a one-line ConfigError: it replaced that run without a word
    (the CLI refused it; the Python API did not). A folder holding an unlearned run (its ledger)
    is left to :func:`tru_dist.distributed.commands.train`'s own message, which applies with
    ``resume`` too."""
    from tru_dist.train.checkpoint import holds_checkpoint
    from tru_dist.unlearn.ledger import LEDGER_FILE

    if holds_checkpoint(out) and not (out / LEDGER_FILE).exists():
        raise ConfigError(f"{out} already holds a run (a checkpoint); resume it (--resume, resume=True in "
                          "Python) or train into a new folder (delete that one first to retrain in its "
                          "place)")


def unlearn(
    run: Run | str | Path,
    requests: Any,
    method: str | None = None,
    config: Mapping[str, Any] | str | Path | Sequence[str] | None = None,
    out: str | Path | None = None,
    *,
    seed: int | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    purge: bool = False,
    keep_versions: int = 0,
    pool: WorkerPool | None = None,
) -> Run:
    """Apply deletion requests to a trained run; returns the unlearned :class:`Run`.

    ``requests``: a pandas DataFrame (``request_id, user_id, item_id, reason``; an empty
    ``item_id`` = all of the user's) or a ``.parquet`` / ``.csv`` file. ``method``: default the
    config's ``unlearn.method`` (tru). ``config``: a YAML file (e.g. a tuned
    ``configs/unlearn/*.yaml``) or overrides (a mapping or ``["unlearn.epochs=5"]``) over the
    run's config, like ``overrides``; ``dist.workers=W`` unlearns on W workers. ``out``
    defaults to ``<run>-<method>``. Ledgered: the same requests again are a no-op that returns
    the earlier receipt (``metrics["replayed"]``). ``purge``/``keep_versions``: then purge the
    run's store of the deleted interactions (``tru-dist unlearn --purge``). A thin wrapper over
    :func:`tru_dist.distributed.commands.unlearn` (what ``tru-dist unlearn`` runs); ``pool``: on
    that :func:`worker_pool`'s ranks.
    """
    from tru_dist.distributed import commands

    purge, keep_versions = _flag(purge, "purge"), _count(keep_versions, "keep_versions")
    if keep_versions and not purge:  # as the CLI refuses --keep-versions without --purge
        raise ConfigError("keep_versions applies to the purge only; pass purge=True with it, or drop it")
    if method is not None and not isinstance(method, str):  # an empty name: method_name's own message
        raise ConfigError(f"method must be a method name such as 'tru', not {type(method).__name__} "
                          f"{_shown(method)}")
    seed, pool = _optional_seed(seed), _optional_pool(pool)
    if _is_dataframe(requests) and requests.columns.duplicated().any():
        twice = sorted({str(c) for c in requests.columns[requests.columns.duplicated()]})
        raise RequestError(f"the requests frame has column(s) {', '.join(twice)} more than once; keep one "
                           "of each (request_id, user_id, item_id, reason)")
    source = _as_run(run)
    out = (_run_folder(out, "out") if out is not None
           else source.path.with_name(f"{source.path.name}-{method or 'unlearn'}"))
    config_file = None
    if isinstance(config, (str, Path)) and not (isinstance(config, str) and "=" in config):
        config_file, config = config, None
    extra = _pool_overrides(pool) + _override_list(config) + _override_list(overrides)

    def apply(path: str | Path) -> dict[str, Any]:
        return commands.unlearn(source.path, path, out, method=method, config_file=config_file, seed=seed,
                                overrides=extra, purge=purge, keep_versions=keep_versions, pool=pool)

    if _is_dataframe(requests):
        from tru_dist.data.requests import write_requests

        with tempfile.TemporaryDirectory(prefix="tru-dist-requests-") as tmp:
            metrics = apply(write_requests(requests, Path(tmp) / "requests.parquet"))
    elif isinstance(requests, (str, Path)):
        metrics = apply(requests)
    else:
        raise RequestError(f"requests must be a pandas DataFrame or a .parquet/.csv file, not "
                           f"{type(requests).__name__}")
    # a batch the source run already holds is answered from it; nothing was written to out
    replayed_from_source = metrics.get("replayed") and not (out / "checkpoint.pt").exists()
    result = load_run(source.path if replayed_from_source else out, device=source.device)
    result.metrics = metrics
    return result


def _is_dataframe(obj: Any) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    return isinstance(obj, pd.DataFrame)


def evaluate(run: Run | str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None,
             pool: WorkerPool | None = None) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of the run's best parameters: ``{"valid": {...}, "test": {...}}``, on
    the run's device (``load_run(..., device=)``) unless ``overrides`` name ``train.device``;
    ``{"dist.workers": W}`` evaluates on W workers (:func:`tru_dist.distributed.commands.evaluate`);
    ``pool``: on that :func:`worker_pool`'s ranks."""
    from tru_dist.distributed import commands

    pool = _optional_pool(pool)
    run = _as_run(run)
    extra = _pool_overrides(pool) + _override_list(overrides)
    _refuse_unread_evaluate_overrides(extra)
    if not any(o.lstrip("-").startswith(("train.device=", "device=")) for o in extra):
        extra.insert(0, f"train.device={run.device}")
    return commands.evaluate(run.path, overrides=extra, pool=pool)


#: the settings an evaluation reads, with every ``dist.*`` key (the rest is the run's own config.yaml)
EVALUATE_READS = ("data.path", "eval.ks", "eval.batch_users", "train.device", "train.progress")


def _refuse_unread_evaluate_overrides(overrides: list[str]) -> None:
    """An override :func:`evaluate` would not read is a one-line ConfigError: ``--train.lr=0.5``
    or ``--model.dim=32`` were accepted and ignored (the checkpoint is evaluated as trained), and
    ``--eval.metric`` names only what training stops on — evaluate reports every metric."""
    keys = leaf_values(parse_overrides(overrides))  # dotted keys, bare leaves resolved (--ks=[5])
    unread = [k for k in keys if not (k in EVALUATE_READS or k.startswith("dist."))]
    if unread:
        raise ConfigError(f"evaluate would ignore {', '.join(dict.fromkeys(unread))}: it evaluates the run's "
                          "checkpoint as trained and reads only data.path, eval.ks, eval.batch_users, "
                          "train.device and dist.* (the model and training settings are the run's own)")


def _integer_ids(values: Any) -> np.ndarray | None:
    """``values`` as a non-empty 1-D numeric array of whole numbers within int64, else None
    (booleans, fractions, NaN, nested lists, strings and objects are not ids)."""
    try:
        raw = np.atleast_1d(np.asarray(values))
    except (TypeError, ValueError):
        return None
    if raw.ndim != 1 or len(raw) == 0 or raw.dtype == bool or raw.dtype.kind not in "iuf":
        return None
    as_float = raw.astype(np.float64)
    if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float)) & (np.abs(as_float) < 2**62)):
        return None
    return raw


def _user_ids(users: int | Iterable[int] | str, n_users: int, where: Path) -> np.ndarray:
    if isinstance(users, str):
        parts = [p.strip() for p in users.split(",")]  # an empty entry ("1,,2") is refused below
        # ASCII digits only: str.isdigit accepts '²' (then int() raised) and '١' (served as user 1)
        bad = [p for p in parts if not re.fullmatch(r"-?[0-9]+", p)]
        if bad or not parts:
            raise RequestError("users must be integer ids separated by commas (e.g. 0,1,2), "
                               f"not {_shown(users)}")
        users = [int(p) for p in parts]
        huge = [u for u in users if abs(u) >= 2**62]  # an id, just not one of this run's
        if huge:
            shown = ", ".join(str(u) for u in huge[:5])
            raise RequestError(f"unknown user id(s) {shown}: run {where} has users 0..{n_users - 1}")
    raw = _integer_ids(users)
    if raw is None:  # exact integers only: 0.7 or True would have been served as user 0 or 1
        raise RequestError(f"users must be an integer id or a non-empty flat list of them (e.g. [0, 1, 2]), "
                           f"not {_shown(users)}")
    ids = raw.astype(np.int64)
    unknown = ids[(ids < 0) | (ids >= n_users)]
    if len(unknown):
        shown = ", ".join(str(int(u)) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RequestError(f"unknown user id(s) {shown}: run {where} has users 0..{n_users - 1}")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():  # one list per user: a repeated id is a mistake in the query, not a request
        twice = ", ".join(str(int(u)) for u in values[counts > 1][:5])
        raise RequestError(f"user id(s) {twice} given more than once; name each user once")
    return ids


def recommend(run: Run | str | Path, users: int | Iterable[int] | str, k: int = 20,
              exclude_seen: bool = True) -> list[dict[str, Any]]:
    """Top-``k`` items per user, best first: ``[{"user", "items", "scores"}, ...]`` in ``users`` order.

    Scores are the model's ``<e_u, e_i>`` in eval mode; ``exclude_seen`` leaves out the user's
    train interactions (what a recommender serves). Unknown user ids are a one-line error.
    """
    import torch

    from tru_dist.data.dataset import TRAIN
    from tru_dist.train.evaluate import csr_rows, eval_embeddings, history_mask, topk

    exclude_seen = _flag(exclude_seen, "exclude_seen")
    run = _as_run(run)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer of at least 1, not {k!r}")
    ids = _user_ids(users, run.data.n_users, run.path)
    history = history_mask(run.data, [TRAIN], run.graph)  # the users' train items (CSR rows)
    _note_users_without_history(run, ids, history)
    emb = eval_embeddings(run.model, run.graph)
    user_emb, item_emb = emb.user.detach(), emb.item.detach()
    exclude = history if exclude_seen else None
    rows = torch.from_numpy(ids - run.graph.user_offset).to(user_emb.device)
    top = topk(user_emb, item_emb, exclude, int(k), rows=rows)
    scores = (user_emb[rows].unsqueeze(1) * item_emb[top]).sum(-1)
    keep = torch.ones_like(top, dtype=torch.bool)
    if exclude is not None:  # a user with fewer than k unseen items: drop the masked tail
        pos, cols = csr_rows(exclude, rows.cpu())
        n_items = item_emb.shape[0]
        seen = pos.to(top.device) * n_items + cols.to(top.device)
        here = torch.arange(len(rows), device=top.device)[:, None] * n_items + top
        keep = ~torch.isin(here, seen)
    out = []
    for u, items, s, m in zip(ids.tolist(), top.cpu().tolist(), scores.cpu().tolist(), keep.cpu().tolist(),
                              strict=True):
        out.append({"user": int(u), "items": [int(i) for i, ok in zip(items, m, strict=True) if ok],
                    "scores": [float(v) for v, ok in zip(s, m, strict=True) if ok]})
    return out


def _note_users_without_history(run: Run, ids: np.ndarray, history: Any) -> None:
    """Log which of ``ids`` have no train interaction in the data ``run`` serves with — users whose
    whole history its ledger deleted. Their lists are still served (a forgotten user is a new,
    cold user), but they come from the row the deletion step reset, not from any history, and
    nothing said so. ``history``: the train-item CSR (:func:`history_mask`); only these users'
    rows are read."""
    import torch

    from tru_dist.train.evaluate import csr_rows

    pos, _ = csr_rows(history, torch.from_numpy(ids - run.graph.user_offset).to(history.device))
    cold = ids[~np.isin(np.arange(len(ids)), pos.cpu().numpy())]
    if len(cold):
        shown = ", ".join(str(int(u)) for u in cold[:5]) + (" ..." if len(cold) > 5 else "")
        log.warning("user(s) %s have no train interaction in run %s (their history was deleted): their "
                    "lists come from a reset row, as for a new user, not from what they did", shown, run.path)


def export_embeddings(run: Run | str | Path, out: str | Path | None = None) -> dict[str, np.ndarray]:
    """Final user and item embeddings (eval mode): ``{"user": (n_users, d), "item": (n_items, d)}``
    as float32 arrays; with ``out``, also written atomically as ``.npz`` (keys ``user``, ``item``)."""
    from tru_dist.train.evaluate import eval_embeddings

    run = _as_run(run)
    emb = eval_embeddings(run.model, run.graph)
    arrays = {name: t.detach().float().cpu().numpy() for name, t in (("user", emb.user), ("item", emb.item))}
    if out is not None:
        from tru_dist.io_utils import atomic_write

        path = _out_path(out, "embedding file")
        if path.is_dir():  # atomic_write's rename raised a raw IsADirectoryError
            raise ConfigError(f"embedding file {path} is a folder; pass a file path ending in .npz")
        if path.suffix != ".npz":
            raise ConfigError(f"embedding file {path} must end in .npz")
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)
    return arrays
