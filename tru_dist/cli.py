"""``tru-dist`` console script: one entry point, RecBole-style subcommands.

    tru-dist data synth|import-mmrec|stats|encode-text|forget|poison|purge ...
    tru-dist train --model mgcn --data DIR --out RUN [--resume] [--device auto|cpu|cuda] [--key=value ...]
    tru-dist evaluate --run RUN [--workers W] [--device auto|cpu|cuda]
    tru-dist unlearn --run RUN --requests FILE --method tru --out RUN2 [--config YAML] [--workers W] [--purge]
    tru-dist unlearn --run RUN --requests A --requests B ... --out DIR   (DIR/1-A, DIR/2-B, ...: in order)
    tru-dist recommend --run RUN --users 0,1,2 --k 20
    tru-dist verify-deletion --run RUN2 [--data STORE] [--scan DIR ...]
    tru-dist compare --data DIR --model mgcn --regime users --fraction 0.05 --methods ... --seeds 3 --out OUT
    tru-dist audit --run RUN --requests FILE
    tru-dist sweep --config configs/sweeps/fair-scientific-mgcn.yaml [--resume]
    tru-dist report sweep|compare PATH
    tru-dist demo --out DIR
    tru-dist bench train|dist|sequential|scale|pool ...

Anything after the named flags of the form ``--key=value`` is a config override
(``--train.lr=1e-3``, ``--beta=0.7``). A user error (a bad flag included) prints
``error: <one line>`` and exits 2; an ``--out`` the failed command created is removed.
``train``, ``evaluate``, ``unlearn`` and ``recommend`` call the Python API (:mod:`tru_dist.api`).
Results (JSON, tables) go to stdout; progress — the defaults used, one line per training
epoch — goes to stderr through :mod:`logging`. ``python -m tru_dist`` is the same command.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from tru_dist import __version__
from tru_dist.errors import ConfigError, TruDistError
from tru_dist.io_utils import file_in_the_way

DATA_HELP = ("a dataset folder (MMRec layout or tru-dist store) or a synthetic spec: synthetic, "
             "synthetic:tiny, synthetic:small, synthetic:USERSxITEMS[:SEED]")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line ``error: ...``, exit 2 (no usage dump)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is invalid: give an integer >= {low}")
        return value

    return parse


def _seed(text: str) -> int:
    """A ``--seed`` value of a command that builds no config (``data synth|forget|poison``,
    ``bench``): an integer 0..SEED_MAX, the config's range (they took any size, and ``synth
    --interactions`` capped it at 2**63 − 1). Where the seed goes into the config (train,
    unlearn, compare) the config checks it and names the key."""
    from tru_dist.config import SEED_MAX

    value = _int_at_least(0)(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is invalid: give a seed in 0..{SEED_MAX}")
    return value


def _float_in(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value <= high if low_open else low <= value <= high):
            bound = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"{value} is invalid: give a number in {bound}{low:g}, {high:g}]")
        return value

    return parse


def _check_out(args: argparse.Namespace) -> Path | None:
    """Refuse an ``--out`` of the wrong kind (a file where a folder goes and vice versa);
    return it when it does not exist yet (the command then removes it if it fails)."""
    out, kind = getattr(args, "out", None), getattr(args, "out_kind", None)
    if out is None or kind is None:
        return None
    path = Path(out)
    blocking = file_in_the_way(path)
    if blocking is not None:  # os.makedirs would fail deep inside the command, with a traceback
        raise TruDistError(f"--out {out} lies under {blocking}, which is a file, not a folder; pass a path "
                           "whose parent folders are folders")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise TruDistError(f"--out {out} is an existing file, but this command writes a folder there; "
                           "pass a new path or an existing folder")
    if kind == "file" and path.is_dir():
        raise TruDistError(f"--out {out} is a folder, but this command writes a file there; pass a file path")
    return None if path.exists() or path.is_symlink() else path


def _remove_partial(path: Path | None) -> None:
    """Remove an output the failed command created (it did not exist before the command)."""
    import shutil

    if path is None or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_empty_dir(path: Path | None) -> bool:
    return path is not None and path.is_dir() and not any(path.iterdir())


def _add_dist_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distribution")
    g.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="Ray workers (shards); 1 = single process")
    g.add_argument("--gpus-per-worker", type=_float_in(0, 1024), default=None,
                   help="GPUs per worker (0 on CPU; > 0 means CUDA and NCCL)")
    g.add_argument("--address", default=None,
                   help="local (a fresh in-process Ray), none (local processes, no Ray), auto (join the "
                   "running cluster / RAY_ADDRESS), ray://host:port (Ray Client) or a running cluster's "
                   "host:port")
    g.add_argument("--storage", default=None,
                   help="Ray Train's storage path (default: OUT/ray for train, a temporary folder otherwise; "
                        "storage every node sees on a multi-node cluster)")


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where the model runs: auto (default: CUDA when available), cpu or cuda")


def _add_config_flags(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", "-m", default=None, help="backbone: lightgcn | mgcn | miggt")
    p.add_argument("--config", default=None, help="a YAML file layered over the defaults")
    p.add_argument("--seed", type=_int_at_least(0), default=None, help="seed for training and unlearning")


def placement_overrides(gpus_per_worker: float | None, device: str | None) -> list[str]:
    """Config overrides for ``--gpus-per-worker`` / ``--device``.

    ``--gpus-per-worker > 0`` means CUDA and NCCL: ``train.device=cuda`` and
    ``dist.backend=nccl`` (an explicit ``--device cpu`` with GPUs is a contradiction, refused);
    ``--device`` alone sets ``train.device`` (``auto`` = CUDA when available).
    """
    out: list[str] = []
    if gpus_per_worker is not None:
        out.append(f"dist.gpus_per_worker={gpus_per_worker}")
    if gpus_per_worker is not None and gpus_per_worker > 0:
        if device not in (None, "auto") and not str(device).startswith("cuda"):
            raise ConfigError(f"--gpus-per-worker {gpus_per_worker:g} asks for GPUs but --device {device} "
                              "for the CPU; drop one of them")
        out += [f"train.device={device if device not in (None, 'auto') else 'cuda'}", "dist.backend=nccl"]
    elif device is not None:
        out.append(f"train.device={device}")
    return out


def comma_list(text: str, flag: str) -> list[str]:
    """The stripped names of a comma list; ``""`` is the empty list. An empty entry between or
    after commas (``retrain,,noop``: an unset shell variable) is a one-line ConfigError — it was
    dropped without a word."""
    if not text.strip():
        return []
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise ConfigError(f"{flag} {text!r} has an empty entry; list names separated by single commas")
    return names


def dist_overrides(args: argparse.Namespace) -> list[str]:
    """``--workers/--gpus-per-worker/--device/--address/--storage`` as config overrides (only
    those given); see :func:`placement_overrides` for GPUs and devices."""
    extra = []
    for flag, key in (("workers", "dist.workers"), ("address", "dist.address"),
                      ("storage", "dist.storage_path")):
        if isinstance(getattr(args, flag, None), str) and not getattr(args, flag).strip():
            raise ConfigError(f"--{flag} is empty (an unset shell variable?); give a value or leave "
                              f"--{flag} out")
        if getattr(args, flag, None) is not None:
            extra.append(f"{key}={getattr(args, flag)}")
    return extra + placement_overrides(getattr(args, "gpus_per_worker", None), getattr(args, "device", None))


def _build_cfg(args: argparse.Namespace, overrides: list[str]):
    """The command's config through the one builder (:func:`tru_dist.config.build_config`);
    a command with ``--data`` refuses to run without data (no silent synthetic default)."""
    from tru_dist.config import build_config

    cfg = build_config(model=getattr(args, "model", None), data=getattr(args, "data", None),
                       config_file=getattr(args, "config", None), seed=getattr(args, "seed", None),
                       overrides=dist_overrides(args) + list(overrides))
    if hasattr(args, "data") and cfg.data.path is None:
        raise ConfigError(f"--data is required: {DATA_HELP} (e.g. --data synthetic:small)")
    return cfg


def _check_data_out(out: str | Path, writes: str, source: str | Path | None = None) -> None:
    """Refuse a data command's ``--out`` that would replace what it must not (one-line errors):

    * the dataset the command reads (``source``): the input would be overwritten by what was
      made of it — ``data poison --data D --out D`` left D poisoned and its clean data gone;
    * a run folder (it holds a checkpoint): a dataset written there mixes with the run's files;
    * a dataset of the other format (``writes`` is ``store`` or ``mmrec``): a store written into
      an MMRec folder hides the MMRec data behind ``META.json`` (and the other way round).

    * a store that a purge has rewritten (:func:`tru_dist.data.store.has_purge_history`): a
      store written over it brought the purged rows back (import-mmrec of the original folder;
      verify-deletion then FOUND them).

    Writing a store over a store never purged, or MMRec files over an MMRec folder, stays
    allowed: the writers replace one atomically (``write_store``, ``write_mmrec``)."""
    from tru_dist.data.store import has_purge_history, is_store
    from tru_dist.train.checkpoint import refuse_run_folder

    out = Path(out)
    if source is not None and not str(source).startswith("synthetic") and out.exists() \
            and out.resolve() == Path(source).resolve():
        raise TruDistError(f"--out {out} is the dataset this command reads; writing there would replace it "
                           "with what was made of it: pass a new folder")
    refuse_run_folder(out, "--out")
    if not out.is_dir():
        return
    if writes == "store" and any(out.glob("*.inter")) and not is_store(out):
        raise TruDistError(f"--out {out} holds an MMRec dataset (*.inter); a store written there would "
                           "hide it: pass a new folder")
    if writes == "mmrec" and is_store(out):
        raise TruDistError(f"--out {out} holds a tru-dist store; MMRec files written there would be "
                           "hidden by its META.json: pass a new folder")
    if writes == "store" and is_store(out) and has_purge_history(out):
        raise TruDistError(f"--out {out} holds a purged store (revisions/ or a purge history in META.json); "
                           "writing a store over it would bring back the rows the purge deleted: pass a new "
                           "folder")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def cmd_data(args, overrides) -> int:
    from tru_dist.data.source import is_synthetic, open_data

    if args.data_cmd == "synth":
        from tru_dist.data.mmrec import write_mmrec
        from tru_dist.data.synth_stream import parse_modalities
        from tru_dist.data.synthetic import MIN_ITEMS, generate_synthetic

        mods = parse_modalities(args.modalities) if args.modalities is not None else {"image": 64, "text": 32}
        if args.interactions is not None:
            return _synth_stream(args, mods)
        for flag in ("chunk_users", "feature_dtype"):
            if getattr(args, flag) is not None:
                raise TruDistError(f"--{flag.replace('_', '-')} belongs to the scale generator;"
                                   " add --interactions K")
        if args.items < MIN_ITEMS:  # the generator raised a raw numpy ValueError
            raise TruDistError(f"--items {args.items}: the generator needs at least {MIN_ITEMS} items (every "
                               f"user draws {MIN_ITEMS} distinct items); pass --items {MIN_ITEMS} or more")
        _check_data_out(args.out, "store" if args.format == "store" else "mmrec")
        data = generate_synthetic(n_users=args.users, n_items=args.items, modalities=mods, seed=args.seed)
        if args.format == "store":
            from tru_dist.data.store import write_store

            write_store(data, args.out)
        else:
            write_mmrec(data, args.out, name="synthetic")
        _print_json(data.summary())
    elif args.data_cmd == "import-mmrec":
        from tru_dist.data.mmrec import read_mmrec
        from tru_dist.data.store import write_store

        _check_data_out(args.out, "store", source=args.src)
        data = read_mmrec(args.src)
        write_store(data, args.out)
        _print_json(data.summary())
    elif args.data_cmd == "stats":
        from tru_dist.data.load import dataset_stats

        _print_json(dataset_stats(args.data) if not is_synthetic(str(args.data))
                    else open_data(args.data).summary())
    elif args.data_cmd == "encode-text":
        from tru_dist.data.encode import encode_text

        encode_text(args.src, args.out, batch_size=args.batch_size)
        print(f"wrote {args.out}")
    elif args.data_cmd == "forget":
        from tru_dist.data.regimes import forget_cli

        _print_json(forget_cli(args.data, args.regime, args.policy, args.fraction, args.seed, args.out))
    elif args.data_cmd == "poison":
        from tru_dist.data.poison import inject_poison
        from tru_dist.data.store import write_store

        _check_data_out(args.out, "store", source=args.data)
        data = inject_poison(open_data(args.data), fake_user_fraction=args.fake_users, n_targets=args.targets,
                             n_fillers=args.fillers, seed=args.seed)
        write_store(data, args.out)  # a store keeps meta["poison"] (which fake users to delete)
        _print_json(data.meta["poison"])
    elif args.data_cmd == "purge":
        from tru_dist.unlearn.ledger import DeletionLedger
        from tru_dist.unlearn.purge import purge_all_receipts

        ledger = Path(args.ledger)
        if not (ledger.is_dir() or ledger.suffix == ".jsonl") or not (
                ledger / "ledger.jsonl" if ledger.is_dir() else ledger).is_file():
            raise TruDistError(f"--ledger {args.ledger} is neither a run folder holding ledger.jsonl nor a "
                               "ledger.jsonl file; pass the output folder of `tru-dist unlearn`")
        _print_json(purge_all_receipts(args.data, DeletionLedger(ledger), keep_versions=args.keep_versions))
    return 0


def _synth_stream(args, mods: dict[str, int]) -> int:
    """``data synth --interactions K``: the streaming scale generator (a store, float16 features
    by default); prints a one-line JSON summary, progress goes to stderr."""
    from tru_dist.data.synth_stream import DEFAULT_CHUNK_USERS, write_synthetic_store

    if args.format == "mmrec":
        raise TruDistError("--interactions runs the scale generator, which writes a tru-dist store;"
                           " drop --format mmrec")
    summary = write_synthetic_store(args.out, args.users, args.items, args.interactions, mods, args.seed,
                                    chunk_users=args.chunk_users or DEFAULT_CHUNK_USERS,
                                    feature_dtype=args.feature_dtype or "float16")
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------------------
# train / evaluate / unlearn / audit
# --------------------------------------------------------------------------------------
def cmd_train(args, overrides) -> int:
    from tru_dist import api

    _refuse_foreign_out(args.out)
    run = api.train(config=_build_cfg(args, overrides), out=args.out, resume=args.resume)
    _print_json({k: v for k, v in run.metrics.items() if k not in ("config", "history")})
    return 0


def cmd_evaluate(args, overrides) -> int:
    from tru_dist import api

    _print_json(api.evaluate(args.run, overrides=dist_overrides(args) + list(overrides)))
    return 0


def _unlearn_summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("config", "decisions")}


#: files that mark a folder as another command's output: a run written there would mix with them
#: (a comparison's results, a dataset's store or MMRec files)
FOREIGN_OUTPUTS = ("results.json", "report.md", "META.json")


def _refuse_foreign_out(out: str | Path) -> None:
    """A run (``train``/``unlearn``) refuses an ``--out`` that holds a comparison or a dataset:
    ``unlearn --out <compare folder>`` overwrote the comparison's config.yaml with exit 0."""
    out = Path(out)
    if not out.is_dir():
        return
    found = [name for name in FOREIGN_OUTPUTS if (out / name).exists()]
    found += sorted(p.name for p in out.glob("*.inter"))
    if found:
        raise TruDistError(f"--out {out} holds another command's output ({', '.join(found[:3])}); a run "
                           "written there would mix with it: pass a new folder")


def cmd_unlearn(args, overrides) -> int:
    _refuse_foreign_out(args.out)
    if args.keep_versions is not None and not args.purge:  # was ignored without a word
        raise ConfigError(f"--keep-versions {args.keep_versions} applies only with --purge (the superseded "
                          "store versions a purge keeps); add --purge or drop --keep-versions")
    args.keep_versions = args.keep_versions or 0
    if len(args.requests) > 1:
        return _unlearn_files(args, overrides)
    from tru_dist import api

    run = api.unlearn(args.run, requests=args.requests[0], method=args.method, config=args.config,
                      out=args.out, seed=args.seed, overrides=dist_overrides(args) + list(overrides),
                      purge=args.purge, keep_versions=args.keep_versions)
    _print_json(_unlearn_summary(run.metrics))
    return 0


def _unlearn_files(args, overrides) -> int:
    """``--requests`` given N > 1 times: file k applied to file k − 1's output, into OUT/<k>-<stem>
    (:func:`tru_dist.distributed.commands.unlearn_sequence`; one worker pool at W > 1 with
    ``--address none``). Prints a JSON list, one summary per file with its ``out`` folder. A
    failure keeps the outputs of the files applied before it."""
    from tru_dist.distributed import commands

    args.keeps_completed = True  # main() must not remove OUT: it holds complete, ledgered outputs
    results = commands.unlearn_sequence(args.run, args.requests, args.out, method=args.method,
                                        config_file=args.config, seed=args.seed,
                                        overrides=dist_overrides(args) + list(overrides), purge=args.purge,
                                        keep_versions=args.keep_versions)
    dirs = commands.sequence_dirs(args.out, args.requests)
    _print_json([{"out": str(d), **_unlearn_summary(m)} for d, m in zip(dirs, results, strict=True)])
    return 0


def cmd_recommend(args, overrides) -> int:
    from tru_dist import api

    run = api.load_run(args.run, device=args.device or "auto")
    _print_json(api.recommend(run, args.users, k=args.k, exclude_seen=not args.include_seen))
    return 0


def cmd_verify(args, overrides) -> int:
    from tru_dist.unlearn.verify import verify_deletion

    report = verify_deletion(args.run, data=args.data, scan=args.scan)
    print("\n".join(report.lines()))
    return 0 if report.clean else 1


def cmd_audit(args, overrides) -> int:
    from tru_dist.audit.runner import audit_run

    _print_json(audit_run(args.run, args.requests, original=args.original))
    return 0


# --------------------------------------------------------------------------------------
# compare / demo / report / sweep / bench
# --------------------------------------------------------------------------------------
def cmd_compare(args, overrides) -> int:
    from tru_dist.compare import CompareSpec
    from tru_dist.distributed import commands

    cfg = _build_cfg(args, overrides)
    import logging

    from tru_dist.config import defaults_used

    logging.getLogger("tru_dist.compare").info(defaults_used(cfg.model.name, cfg.data.path))
    spec = CompareSpec(
        regime=args.regime,
        policy=args.policy,
        fraction=args.fraction,
        methods=comma_list(args.methods, "--methods"),
        seeds=args.seeds,
        audits=comma_list(args.audit or "", "--audit"),
        tuned=args.tuned,
        originals=args.originals,
        hold_out_users=args.hold_out_users,
    )
    results = commands.compare(cfg, spec, args.out)
    print(results["table"])
    print(f"\nwrote {args.out}/results.json, report.md and plots")
    return 0


def cmd_demo(args, overrides) -> int:
    from tru_dist.demo import run_demo

    run_demo(args.out, overrides=overrides, quick=args.quick)
    return 0


def cmd_report(args, overrides) -> int:
    if args.kind == "sweep":
        from tru_dist.tune.report import report_sweep

        path = report_sweep(args.path)
    else:
        from tru_dist.compare import report_compare

        path = report_compare(args.path)
    print(f"wrote {path}")
    return 0


def cmd_sweep(args, overrides) -> int:
    from tru_dist.tune.sweep import run_sweep

    out = run_sweep(args.config, overrides=overrides, resume=args.resume, storage=args.storage,
                    workers=args.workers)
    print(f"sweep results under {out}; tuned configurations for `tru-dist compare --tuned`: {out / 'tuned'}")
    return 0


def cmd_bench(args, overrides) -> int:
    feats = getattr(args, "synthetic_features", None)
    if args.bench_cmd == "scale":
        from tru_dist.bench_scale import bench_scale
        from tru_dist.data.synth_stream import parse_modalities

        result = bench_scale(users=args.users, items=args.items, interactions=args.interactions,
                             modalities=parse_modalities(args.modalities), data=args.data,
                             synthetic_features=feats, delete_users=args.delete_users,
                             stream=args.stream_requests, model=args.model,
                             workers=args.workers, method=args.method, fanout=args.fanout,
                             train_steps=args.train_steps, retrain_epochs=args.retrain_epochs, seed=args.seed,
                             work_dir=args.work_dir, out_json=args.out, overrides=overrides)
        _print_json(result)
        return 0
    if args.bench_cmd == "pool":
        from tru_dist.bench_pool import bench_pool

        result = bench_pool(args.data, args.model, workers=args.workers, requests=args.requests,
                            method=args.method, epochs=args.epochs, seed=args.seed, work_dir=args.work_dir,
                            out_json=args.out, overrides=list(overrides))
        _print_json({k: v for k, v in result.items() if k != "config"})
        return 0
    if args.bench_cmd == "sequential":
        from tru_dist.bench_sequential import bench_sequential

        result = bench_sequential(args.data, args.model, requests=args.requests, method=args.method,
                                  window=args.window, epochs=args.epochs, seed=args.seed,
                                  synthetic_features=feats, overrides=list(overrides), out_json=args.out)
    elif args.bench_cmd == "train":
        from tru_dist.bench import bench_train
        from tru_dist.config import parse_overrides

        result = bench_train(args.data, args.model, synthetic_features=feats, epochs=args.epochs,
                             out_json=args.out, overrides=parse_overrides(list(overrides)))
    else:
        from tru_dist.bench_dist import bench_dist

        result = bench_dist(args.data, args.model, synthetic_features=feats, steps=args.steps,
                            out_json=args.out, overrides=list(overrides))
    _print_json(result)
    return 0


# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from tru_dist.unlearn.base import method_names  # the registry, so the help lists every method

    p = _Parser(prog="tru-dist", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tru-dist {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="create, import, inspect data; make deletion requests")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="write a seeded synthetic dataset (MMRec layout); with --interactions "
                        "the streaming scale generator (a store)")
    s.add_argument("--out", required=True)
    s.set_defaults(out_kind="dir")
    s.add_argument("--users", type=_int_at_least(2), default=600)
    s.add_argument("--items", type=_int_at_least(2), default=400)
    s.add_argument("--modalities", default=None,
                   help="NAME:DIM,... (default image:64,text:32), or none: interactions only")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--format", choices=["mmrec", "store"], default=None,
                   help="mmrec (default) or store; --interactions always writes a store")
    s.add_argument("--interactions", type=_int_at_least(1), default=None,
                   help="exactly this many interactions, written streaming in bounded memory into a new or "
                        "empty --out (the scale dataset generator); needs users, items <= K <= users*items")
    s.add_argument("--chunk-users", type=_int_at_least(1), default=None,
                   help="users generated at once by --interactions (memory, not the result; default 32768)")
    s.add_argument("--feature-dtype", choices=["float16", "float32"], default=None,
                   help="feature dtype of --interactions (default float16)")
    s = dsub.add_parser("import-mmrec", help="validate an MMRec folder and write a tru-dist store")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(out_kind="dir")
    s = dsub.add_parser("stats", help="counts, split sizes, degrees, feature dims")
    s.add_argument("--data", required=True)
    s = dsub.add_parser("encode-text", help="item_text.tsv -> text_feat.npy (needs the 'embed' extra)")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(out_kind="file")
    s.add_argument("--batch-size", type=_int_at_least(1), default=64)
    s = dsub.add_parser("forget", help="select a forget set (regime) and write deletion requests")
    s.add_argument("--data", required=True)
    s.add_argument("--regime", choices=["interactions", "users", "items", "poison"], required=True)
    s.add_argument("--policy", choices=["random", "core", "edge"], default="random")
    s.add_argument("--fraction", type=_float_in(0, 1, low_open=True), default=0.05)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", required=True, help="requests file (.parquet or .csv)")
    s.set_defaults(out_kind="file")
    s = dsub.add_parser("poison", help="inject fake users (backdoor) and write the poisoned dataset")
    s.add_argument("--data", required=True)
    s.add_argument("--fake-users", type=_float_in(0, 1, low_open=True), default=0.01)
    s.add_argument("--targets", type=_int_at_least(1), default=3)
    s.add_argument("--fillers", type=_int_at_least(0), default=10)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(out_kind="dir")
    s = dsub.add_parser("purge", help="write a store version without what a deletion ledger deleted")
    s.add_argument("--data", required=True, help="the tru-dist store to purge (in place, atomically)")
    s.add_argument("--ledger", required=True,
                   help="a run folder holding ledger.jsonl, or the ledger.jsonl file")
    s.add_argument("--keep-versions", type=_int_at_least(0), default=0,
                   help="superseded store versions to keep (default 0: delete them all)")

    t = sub.add_parser("train", help="train a backbone with BPR and early stopping on valid")
    _add_config_flags(t)
    t.add_argument("--data", default=None, help=f"required: {DATA_HELP}")
    t.add_argument("--out", required=True, help="run folder (config.yaml, metrics.json, checkpoint.pt)")
    t.set_defaults(out_kind="dir")
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    _add_device_flag(t)
    _add_dist_flags(t)

    e = sub.add_parser("evaluate", help="re-evaluate a run's checkpoint on valid and test")
    e.add_argument("--run", required=True, help="a finished run folder, trained at any --workers")
    _add_device_flag(e)
    _add_dist_flags(e)

    rc = sub.add_parser("recommend", help="top-k items for some users of a trained run (JSON)")
    rc.add_argument("--run", required=True, help="a finished train or unlearn run folder")
    rc.add_argument("--users", required=True, help="user ids separated by commas, e.g. 0,1,2")
    rc.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    rc.add_argument("--include-seen", action="store_true", help="also rank the user's train items")
    _add_device_flag(rc)

    u = sub.add_parser("unlearn", help="apply deletion requests to a trained run (ledgered, at any W)")
    u.add_argument("--run", required=True, help="a finished run folder, trained at any --workers")
    u.add_argument("--requests", required=True, action="append",
                   help="a request file (.parquet/.csv); repeat it to apply several in order, each on the "
                        "model the previous one left, into OUT/<k>-<file stem> (at --workers W > 1 with "
                        "--address none the W processes are started once for all of them)")
    u.add_argument("--method", default=None, help="default: unlearn.method of the config (tru)")
    u.add_argument("--out", required=True)
    u.set_defaults(out_kind="dir")
    u.add_argument("--config", default=None,
                   help="a YAML layered over the run's config, e.g. a tuned file or a sweep's best/*.yaml")
    u.add_argument("--seed", type=_int_at_least(0), default=None, help="seed for unlearning (and Retrain)")
    u.add_argument("--purge", action="store_true",
                   help="then purge the run's store of every deleted interaction (tru-dist data purge)")
    u.add_argument("--keep-versions", type=_int_at_least(0), default=None,
                   help="with --purge: superseded store versions to keep (default 0)")
    _add_device_flag(u)
    _add_dist_flags(u)

    v = sub.add_parser("verify-deletion", help="scan every artifact for what a run's ledger deleted")
    v.add_argument("--run", required=True, help="the unlearned run (its ledger says what was deleted)")
    v.add_argument("--data", default=None, help="the store (or MMRec folder) to scan too")
    v.add_argument("--scan", action="append", default=[], metavar="DIR",
                   help="another folder to scan (compare/sweep/Ray storage...); repeatable")

    c = sub.add_parser("compare", help="original vs retrain vs unlearning methods on one forget set")
    _add_config_flags(c)
    c.add_argument("--data", default=None, help=f"required: {DATA_HELP}")
    _add_device_flag(c)
    c.add_argument("--regime", choices=["interactions", "users", "items", "poison"], default="users")
    c.add_argument("--policy", choices=["random", "core", "edge"], default="random")
    c.add_argument("--fraction", type=_float_in(0, 1, low_open=True), default=0.05)
    c.add_argument("--methods", default="retrain,noop,reverse_bpr,tru",
                   help=f"comma list of methods ({', '.join(method_names())})")
    c.add_argument("--seeds", type=_int_at_least(1), default=5,
                   help="reporting seeds 0..N-1 (N <= 100; 100+ are tuning seeds)")
    c.add_argument("--audit", default="", help="comma list: mia,user_mia,backdoor")
    c.add_argument("--tuned", default=None,
                   help="folder of <method>-<regime>.yaml tuned configurations "
                        "(e.g. configs/tuned/scientific-mgcn)")
    c.add_argument("--originals", default=None,
                   help="cache folder for trained originals and Retrain models, reused across regimes and "
                        "runs")
    c.add_argument("--hold-out-users", action="store_true",
                   help="hold 5%% of users out of training as a membership audit does, without running one "
                        "(so a run without audits shares the audited runs' cached originals)")
    c.add_argument("--out", required=True)
    c.set_defaults(out_kind="dir")
    _add_dist_flags(c)

    a = sub.add_parser("audit", help="membership inference / backdoor audit of an unlearned run")
    a.add_argument("--run", required=True)
    a.add_argument("--requests", required=True)
    a.add_argument("--original", default=None,
                   help="the run the unlearning started from (default: source_run in RUN/metrics.json)")

    sw = sub.add_parser("sweep", help="tune approximate unlearning methods with Ray Tune, equal budget",
                        description="Ray Tune sweep of one or more approximate methods (reverse_bpr, "
                        "grad_ascent, finetune, tru: the sweep file's 'method'+'space' or 'methods') across "
                        "unlearning regimes, on tuning seeds (100+) and valid data only, with the same "
                        "trial budget for every method. Writes <storage>/<name>/tuned/<method>-<regime>.yaml "
                        "for `tru-dist compare --tuned`. --key=value sets a base config key; "
                        "--sweep.<field>=value sets a field of the sweep file (e.g. --sweep.num_samples=8).")
    sw.add_argument("--config", required=True)
    sw.add_argument("--resume", action="store_true")
    sw.add_argument("--storage", default=None, help="results root (default runs/sweeps)")
    sw.add_argument("--workers", type=_int_at_least(1), default=None,
                    help="workers per trial (default 1: each trial one process; W > 1: each trial on "
                    "W workers, from groups started once per sweep on a local Ray, a Ray Train run "
                    "per trial on a cluster: --dist.trial_groups=reused|per-trial; sweep resources "
                    "are then per worker)")

    r = sub.add_parser("report", help="write report.md + plots for a sweep or compare folder")
    r.add_argument("kind", choices=["sweep", "compare"])
    r.add_argument("path")

    dm = sub.add_parser("demo", help="the embedded default: synthetic data, train, delete 5%% users, compare")
    dm.add_argument("--out", default="runs/demo")
    dm.set_defaults(out_kind="dir")
    dm.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke test)")

    b = sub.add_parser("bench", help="benchmarks that write JSON")
    bsub = b.add_subparsers(dest="bench_cmd", required=True)
    for name in ("train", "dist"):
        bb = bsub.add_parser(name)
        bb.add_argument("--data", required=True)
        bb.add_argument("--model", default="mgcn")
        bb.add_argument("--synthetic-features", default=None, help="e.g. image:4096,text:384")
        bb.add_argument("--out", default=None, help="JSON output file")
        bb.set_defaults(out_kind="file")
        if name == "train":
            bb.add_argument("--epochs", type=_int_at_least(1), default=3)
        else:
            bb.add_argument("--steps", type=_int_at_least(1), default=10)
    sc = bsub.add_parser("scale", help="unlearning cost on a graph too large for full propagation "
                         "(the 1M-user scale store, or --data)")
    sc.add_argument("--users", type=_int_at_least(1), default=1_000_000)
    sc.add_argument("--items", type=_int_at_least(1), default=100_000)
    sc.add_argument("--interactions", type=_int_at_least(1), default=20_000_000)
    sc.add_argument("--modalities", default="image:512,text:384", help="NAME:DIM,... of the generated store")
    sc.add_argument("--data", default=None, help="an existing dataset instead of the generated store")
    sc.add_argument("--synthetic-features", default=None,
                    help="features added to --data, e.g. image:4096,text:384")
    sc.add_argument("--delete-users", type=_int_at_least(1), default=1000)
    sc.add_argument("--stream-requests", type=_int_at_least(0), default=20,
                    help="single-user requests applied one after another afterwards (0 = none)")
    sc.add_argument("--model", default="mgcn")
    sc.add_argument("--workers", type=_int_at_least(1), default=1,
                    help="W > 1: also train on W data-parallel replicas (local processes) and report the "
                         "step-time ratio W / W = 1, measured side by side")
    sc.add_argument("--method", default="tru")
    sc.add_argument("--fanout", type=_int_at_least(0), default=10,
                    help="neighbours kept per node and layer (0 = all: exact, the whole L-hop ball)")
    sc.add_argument("--train-steps", type=_int_at_least(1), default=100)
    sc.add_argument("--retrain-epochs", type=_int_at_least(1), default=50,
                    help="epochs Retrain is projected to need (default 50)")
    sc.add_argument("--seed", type=_seed, default=0,
                    help="seeds the generated data, the deleted users, training and unlearning")
    sc.add_argument("--work-dir", default="runs/bench-scale",
                    help="the generated store and kNN cache live here")
    sc.add_argument("--out", default=None, help="JSON output file")
    sc.set_defaults(out_kind="file")
    bs = bsub.add_parser("sequential", help="R single-user deletions one at a time vs one batched call, "
                         "both against one Retrain (latency, retrain_distance, drift)")
    bs.add_argument("--data", required=True, help=DATA_HELP)
    bs.add_argument("--model", default="mgcn")
    bs.add_argument("--synthetic-features", default=None, help="e.g. image:4096,text:384")
    bs.add_argument("--requests", type=_int_at_least(1), default=100,
                    help="single-user requests R (distinct users with >= 2 train interactions)")
    bs.add_argument("--method", default="tru", help="any unlearning method but sisa (default tru)")
    bs.add_argument("--window", type=_int_at_least(1), default=None,
                    help="also apply the requests in consecutive windows of N, one call each")
    bs.add_argument("--epochs", type=_int_at_least(1), default=20,
                    help="training epochs of the original and of Retrain (default 20)")
    bs.add_argument("--seed", type=_seed, default=0,
                    help="seed of the users drawn, training and unlearning")
    bs.add_argument("--out", default=None, help="JSON output file; --key=value overrides apply to the config")
    bs.set_defaults(out_kind="file")
    bp = bsub.add_parser("pool", help="N single-user deletions at W > 1: a fresh worker group per request "
                         "vs one worker pool started once (seconds per request, identical models)")
    bp.add_argument("--data", default="synthetic:small", help=f"{DATA_HELP} (default synthetic:small)")
    bp.add_argument("--model", default="lightgcn")
    bp.add_argument("--workers", type=_int_at_least(2), default=2, help="ranks W (default 2)")
    bp.add_argument("--requests", type=_int_at_least(1), default=10,
                    help="single-user request files N, applied in order (default 10)")
    bp.add_argument("--method", default="tru", help="any unlearning method but sisa (default tru)")
    bp.add_argument("--epochs", type=_int_at_least(1), default=5, help="training epochs of the original")
    bp.add_argument("--seed", type=_seed, default=0,
                    help="seed of the users drawn, training and unlearning")
    bp.add_argument("--work-dir", default="runs/bench-pool",
                    help="the store, the original, the request files and both chains' outputs go here")
    bp.add_argument("--out", default=None, help="JSON output file; --key=value overrides apply to the config")
    bp.set_defaults(out_kind="file")
    return p


COMMANDS = {
    "data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "unlearn": cmd_unlearn,
    "recommend": cmd_recommend, "audit": cmd_audit, "compare": cmd_compare, "demo": cmd_demo,
    "report": cmd_report, "sweep": cmd_sweep, "bench": cmd_bench, "verify-deletion": cmd_verify,
}


#: commands that build no config, so a ``--key=value`` given to them would be dropped unread
#: (``data forget --fractoin=0.5`` wrote a forget set of the default fraction, exit 0)
TAKES_NO_OVERRIDES = frozenset({"data", "report", "audit", "recommend", "verify-deletion"})


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    """The subcommand parser ``name`` of ``parser``, or None."""
    for action in parser._actions:  # argparse keeps its subparsers there; it has no public lookup
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def _refuse_unread_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace,
                             rest: list[str]) -> None:
    """A command in :data:`TAKES_NO_OVERRIDES` given ``--key=value`` arguments is a one-line
    ConfigError naming them and, for a near miss, the flag meant (``--fractoin=0.5``: did you
    mean --fraction?)."""
    if not rest or args.cmd not in TAKES_NO_OVERRIDES:
        return
    import difflib

    sub = _subparser(parser, args.cmd)
    if sub is not None and getattr(args, "data_cmd", None):
        sub = _subparser(sub, args.data_cmd) or sub
    actions = sub._actions if sub is not None else []
    known = [o for a in actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in rest:
        near = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
        if near:
            hints.append(near[0])
    name = f"{args.cmd} {args.data_cmd}" if getattr(args, "data_cmd", None) else args.cmd
    did_you_mean = f"; did you mean {', '.join(hints)}?" if hints else ""
    raise ConfigError(f"{name} takes no config overrides ({' '.join(rest)}): it would ignore them"
                      f"{did_you_mean} (see tru-dist {name} --help)")


#: the config keys a flag sets (as :func:`dist_overrides` and ``--seed`` write them)
FLAG_KEYS = {"workers": ("dist.workers",), "address": ("dist.address",), "storage": ("dist.storage_path",),
             "gpus_per_worker": ("dist.gpus_per_worker",), "device": ("train.device",),
             "seed": ("train.seed", "unlearn.seed")}
#: the commands whose flags above become those keys (:func:`dist_overrides`, ``--seed``)
FLAG_KEY_COMMANDS = frozenset({"train", "evaluate", "unlearn", "compare"})


#: arguments that name a file or folder: an empty one (an unset shell variable) read as the
#: current folder (``report compare ""``) or as absent
PATH_ARGS = ("path", "run", "out", "data", "requests", "config", "original", "originals", "storage", "scan",
             "work_dir", "src", "tuned", "ledger")


def _refuse_empty_paths(args: argparse.Namespace) -> None:
    """A one-line ConfigError for a path argument given as an empty string."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            shown = name if name == "path" else "--" + name.replace("_", "-")
            raise ConfigError(f"{shown} is empty (an unset shell variable?); give a file or folder")


def _refuse_flag_and_override(args: argparse.Namespace, rest: list[str]) -> None:
    """A flag given with a ``--key=value`` override of the key it sets is a one-line ConfigError
    (:func:`tru_dist.config.refuse_flag_overrides`): the override won without a word
    (``--workers 1 --dist.workers=2`` ran on 2 workers), and ``--seed 1 --train.seed=2`` split the
    seed between training and unlearning. Bench and sweep check their own flags' keys."""
    from tru_dist.config import refuse_flag_overrides

    if args.cmd not in FLAG_KEY_COMMANDS or not rest:
        return
    owned = {key: "--" + flag.replace("_", "-") for flag, keys in FLAG_KEYS.items()
             if getattr(args, flag, None) is not None for key in keys}
    refuse_flag_overrides(args.cmd, rest, owned)


#: set (to anything but 0) to show the traceback behind a one-line input/output error
TRACEBACK_ENV = "TRU_DIST_TRACEBACK"
#: errors only a write raises, which name no file when the file was already open (stdout, a
#: checkpoint's bytes): full disk or quota, a file over its size limit
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _stdout_unwritable() -> bool:
    """Whether stdout still refuses what is buffered for it (then it goes to /dev/null before
    exit). False for an in-process caller's stdout without a file descriptor."""
    try:
        sys.stdout.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: a StringIO, pytest's capture
        return False
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def _stdout_closed() -> bool:
    """Whether stdout is the pipe that broke — its reader gone, which ``poll`` reports as an error
    on the write end (a broken pipe elsewhere, a FIFO given as --out, is an input/output error
    to report, not a reader that went away). Without ``poll`` (not POSIX) it is assumed."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # no real stdout (an in-process caller): not a pipe that broke
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    from tru_dist.logs import setup_logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    setup_logging()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not (r.startswith("--") and "=" in r)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are written --key=value)")
    fresh = None
    try:
        _refuse_empty_paths(args)
        _refuse_unread_overrides(parser, args, rest)
        _refuse_flag_and_override(args, rest)
        fresh = _check_out(args)
        return COMMANDS[args.cmd](args, rest)
    except TruDistError as exc:
        if not getattr(args, "keeps_completed", False) or _is_empty_dir(fresh):
            _remove_partial(fresh)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            # the reader of stdout went away (`tru-dist recommend ... | head -1`): nothing more to
            # say, and Python's flush at exit would raise again, so stdout goes to /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # as a process killed by SIGPIPE
        # a path the command could not read or write (permissions, a read-only or full disk, a
        # folder where a file goes): one line naming it, as for every other bad input. A write to
        # an open file names none: stdout on a full disk (`> /dev/full`), or a checkpoint's bytes
        if not getattr(args, "keeps_completed", False) or _is_empty_dir(fresh):
            _remove_partial(fresh)
        unnamed_write = exc.filename is None and exc.errno in WRITE_ERRNOS
        if not (exc.filename or unnamed_write) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        if unnamed_write and _stdout_unwritable():  # or Python's flush at exit fails the same way
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = ("writing standard output or a file of this command" if unnamed_write
                 else exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}")
        print(f"error: {where}: {exc.strerror or exc} (check the path, its permissions and the free disk "
              f"space; {TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------
# jobs/*.py (ray job submit)
# --------------------------------------------------------------------------------------
def split_address(argv: list[str], default: str = "auto") -> tuple[str, list[str]]:
    """(``--address`` value or ``default``, the other arguments)."""
    address, rest = default, []
    it = iter(argv)
    for arg in it:
        if arg == "--address":
            address = next(it, address)
        elif arg.startswith("--address="):
            address = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return address, rest


def job_main(command: str, argv: list[str] | None = None) -> int:
    """A ``jobs/*.py`` entry point of ``ray job submit``: ``tru-dist <command>`` with the same
    flags and the same config builder, except that ``--address`` defaults to ``auto`` (inside
    ``ray job submit`` the driver joins the running cluster; ``local`` starts an in-process
    Ray, ``none`` spawns local processes), passed on as ``--dist.address=…``, which every
    command reads. Authentication is the cluster's: the driver inherits ``RAY_AUTH_MODE`` (and
    the token) from the job's environment; only ``--address local`` turns it off, for its own
    loopback-only instance (:func:`tru_dist.distributed.launch.connect`)."""
    address, rest = split_address(list(sys.argv[1:] if argv is None else argv))
    return main([command, *rest, f"--dist.address={address}"])


if __name__ == "__main__":
    sys.exit(main())
