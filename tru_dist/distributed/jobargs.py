"""Argument parsing shared by the ``jobs/*.py`` entry points of ``ray job submit``.

Every job takes the same core flags — ``--data`` (a folder or ``synthetic[:tiny|:UxI[:SEED]]``),
``--model``, ``--workers``, ``--gpus-per-worker``, ``--address`` (``auto`` inside a Ray job,
``local``, ``none``, ``ray://host:port``), ``--out`` (results), ``--storage`` (Ray Train's
storage path), ``--config FILE`` — plus any number of ``--key=value`` config overrides
passed through to :func:`tru_dist.config.build_config` (unknown keys are errors).

A job's working directory is Ray's temporary copy of ``--working-dir``, so ``--out`` and
``--storage`` should be absolute paths (shared storage on a multi-node cluster).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tru_dist.config import Config, build_config


def job_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the core job flags; add the job's own flags to it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="synthetic:tiny", help="dataset folder or synthetic spec")
    p.add_argument("--model", "-m", default="lightgcn", help="lightgcn | mgcn | miggt")
    p.add_argument("--workers", type=int, default=1, help="number of workers (W)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0 = CPU)")
    p.add_argument("--address", default="auto", help="auto | local | none | ray://host:port")
    p.add_argument("--out", default="runs/job",
                   help="folder for the results; under `ray job submit` give an absolute path on the "
                        "head (a relative one lands in the job's temporary copy of the working dir)")
    p.add_argument("--storage", default=None, help="Ray Train storage path (default: OUT/ray)")
    p.add_argument("--config", default=None, help="a YAML file layered over the defaults")
    return p


def parse_job_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
                   ) -> tuple[argparse.Namespace, list[str]]:
    """Known flags plus the ``--key=value`` overrides (anything else is an error)."""
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not (r.startswith("--") and "=" in r)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; config overrides are written --key=value")
    return args, rest


def job_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """The layered config of a job: defaults < model YAML < --config < flags < overrides."""
    flags = [f"data.path={args.data}", f"dist.workers={args.workers}",
             f"dist.gpus_per_worker={args.gpus_per_worker}", f"dist.address={args.address}"]
    if args.storage:
        flags.append(f"dist.storage_path={args.storage}")
    if args.gpus_per_worker > 0:
        flags.append("train.device=cuda")
    return build_config(model=args.model, config_file=args.config, overrides=flags + list(overrides))
