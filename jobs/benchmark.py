"""Ray job (or plain script): step time and bytes per step at W = 1 and W = 2, vs the planner.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/benchmark.py --data ../shared/data/amazon-baby --features image:4096,text:384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    """``tru-dist bench dist`` under this job's flag names (``--features`` = ``--synthetic-features``),
    through the CLI's ``main``: its argument checks and one-line errors (a bad ``--model``, a
    missing ``--data`` or ``--steps 0`` ended in tracebacks when this called ``bench_dist``)."""
    from tru_dist.cli import main as cli_main

    p = argparse.ArgumentParser(description="Distributed step time and communication, W=1 vs W=2.")
    p.add_argument("--data", default="synthetic:small", help="dataset folder or synthetic spec")
    p.add_argument("--model", "-m", default="mgcn")
    p.add_argument("--features", default="image:4096,text:384",
                   help="synthetic feature widths NAME:DIM,...; '' = the data's own")
    p.add_argument("--steps", default="5")
    p.add_argument("--out", default="runs/bench_dist.json")
    args = p.parse_args(argv)
    features = ["--synthetic-features", args.features] if args.features else []
    return cli_main(["bench", "dist", "--data", args.data, "--model", args.model, "--steps", args.steps,
                     "--out", args.out, *features])


if __name__ == "__main__":
    sys.exit(main())
