"""Ray job (or plain script): step time and bytes per step at W = 1 and W = 2, vs the planner.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/benchmark.py --data ../shared/data/amazon-baby --features image:4096,text:384
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.bench_dist import bench_dist

    p = argparse.ArgumentParser(description="Distributed step time and communication, W=1 vs W=2.")
    p.add_argument("--data", default="synthetic:small", help="dataset folder or synthetic spec")
    p.add_argument("--model", "-m", default="mgcn")
    p.add_argument("--features", default="image:4096,text:384",
                   help="synthetic feature widths NAME:DIM,...; '' = the data's own")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="runs/bench_dist.json")
    args = p.parse_args(argv)
    result = bench_dist(args.data, args.model, synthetic_features=args.features or None, steps=args.steps,
                        out_json=args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
