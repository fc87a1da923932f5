"""Ray job: every unlearning method on the same forget set, judged against Retrain.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/compare.py --data synthetic:tiny --methods retrain,reverse_bpr,tru --seeds 1

With one CPU worker the comparison runs in the job's driver; with ``--gpus-per-worker``
it runs inside a one-worker Ray Train group so it is placed on a GPU node.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.data.regimes import POLICIES, REGIMES
    from tru_dist.distributed.jobargs import job_config, job_parser, parse_job_args

    parser = job_parser("Compare unlearning methods against Retrain on one forget set.")
    parser.add_argument("--regime", default="users", choices=REGIMES)
    parser.add_argument("--policy", default="random", choices=POLICIES, help="users regime only")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--methods", default="retrain,reverse_bpr,tru")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--audit", default="", help="comma list: mia, user_mia, backdoor")
    args, overrides = parse_job_args(parser, argv)
    cfg = job_config(args, overrides)
    if cfg.dist.workers > 1:
        parser.error(f"--workers {cfg.dist.workers}: compare runs on one worker (its Retrain and every "
                     "method train on one process); use --gpus-per-worker to place it on a GPU")
    spec = {"regime": args.regime, "policy": args.policy, "fraction": args.fraction,
            "methods": [m.strip() for m in args.methods.split(",") if m.strip()], "seeds": args.seeds,
            "audits": [a.strip() for a in args.audit.split(",") if a.strip()]}
    if cfg.dist.workers == 1 and cfg.dist.gpus_per_worker == 0:
        from tru_dist.compare import CompareSpec, run_compare

        results = run_compare(cfg, CompareSpec(**spec), args.out)
    else:
        from tru_dist.distributed.launch import run_distributed

        results = run_distributed("compare", cfg, out_dir=args.out, spec=spec)["results"]
    print(json.dumps({"out": args.out, "methods": results["methods"]}, indent=2, default=str)[:20000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
