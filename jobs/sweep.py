"""Ray job: a Ray Tune sweep of TRU's hyperparameters across unlearning regimes.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --config configs/sweeps/tiny.yaml --storage /tmp/sweeps

    # finish an interrupted sweep (same config, same storage)
    ray job submit ... -- python jobs/sweep.py --config configs/sweeps/tru.yaml \
        --storage /shared/sweeps --resume

Thin: parses the arguments and calls :func:`tru_dist.tune.sweep.run_sweep`. Inside
``ray job submit`` the driver joins the running cluster (``--address auto``, the default
here); ``--address local`` starts an in-process Ray instead. ``--storage`` should be
storage every node sees on a multi-node cluster. Anything of the form ``--key=value`` is an
override (``--unlearn.epochs=5``; ``--sweep.num_samples=16`` for a field of the sweep file).
``RAY_AUTH_MODE`` is set explicitly (``disabled`` unless the environment says otherwise),
so a token left by an earlier local Ray does not silently switch authentication on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Ray Tune sweep of TRU across unlearning regimes.")
    p.add_argument("--config", required=True, help="sweep file, e.g. configs/sweeps/tru.yaml")
    p.add_argument("--storage", default=None,
                   help="results root (default runs/sweeps); shared storage on a cluster")
    p.add_argument("--resume", action="store_true", help="finish the sweep found under --storage")
    p.add_argument("--address", default="auto", help="auto (ray job submit), local, or ray://host:port")
    p.add_argument("--workers", type=int, default=1, help="workers per trial (1 for now)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not (r.startswith("--") and "=" in r)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are written --key=value)")
    from tru_dist.errors import TruDistError
    from tru_dist.tune.sweep import run_sweep

    try:
        out = run_sweep(args.config, overrides=[f"--dist.address={args.address}", *rest], resume=args.resume,
                        storage=args.storage, workers=args.workers)
    except TruDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sweep results under {out} (report: {out / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
