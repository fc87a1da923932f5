"""Ray job: train a backbone on W workers.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --data synthetic:tiny --model lightgcn --workers 2 --out runs/job-train
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.distributed.jobargs import job_config, job_parser, parse_job_args
    from tru_dist.distributed.launch import run_distributed

    parser = job_parser("Train a backbone (BPR, early stopping on valid) on W workers.")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    args, overrides = parse_job_args(parser, argv)
    cfg = job_config(args, overrides)
    result = run_distributed("train", cfg, out_dir=args.out, resume=args.resume)
    summary = {"out": str(Path(args.out).resolve()), "world_size": result["world_size"],
               "best_epoch": result["best_epoch"], "valid": result["valid"], "test": result["test"]}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
