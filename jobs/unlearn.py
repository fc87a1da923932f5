"""Ray job: select a forget set and unlearn it on W workers.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/unlearn.py --data synthetic:tiny --method tru --regime users --fraction 0.05
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.data.regimes import POLICIES, REGIMES
    from tru_dist.distributed.jobargs import job_config, job_parser, parse_job_args
    from tru_dist.distributed.launch import run_distributed

    parser = job_parser("Unlearn a forget set (train first, or start from --model-dir) on W workers.")
    parser.add_argument("--method", default=None, help="tru, reverse_bpr, retrain, ...")
    parser.add_argument("--regime", default="users", choices=REGIMES)
    parser.add_argument("--policy", default="random", choices=POLICIES, help="users regime only")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of interactions/users/items")
    parser.add_argument("--model-dir", default=None, help="a finished training run to start from")
    args, overrides = parse_job_args(parser, argv)
    cfg = job_config(args, overrides)
    result = run_distributed("unlearn", cfg, out_dir=args.out, method=args.method, regime=args.regime,
                             policy=args.policy, fraction=args.fraction, model_dir=args.model_dir)
    print(json.dumps({k: result[k] for k in ("method", "seconds", "test", "forget")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
