"""Ray job: ``tru-dist compare`` — every unlearning method on the same forget set, against Retrain.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/compare.py --data synthetic:tiny --methods retrain,reverse_bpr,tru --seeds 1 \
        --out $PWD/runs/job-compare

Takes ``tru-dist compare``'s flags; ``--workers W`` trains and unlearns on W Ray Train
workers, ``--gpus-per-worker 1`` places them on GPUs. See :func:`tru_dist.cli.job_main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.cli import job_main

    return job_main("compare", argv)


if __name__ == "__main__":
    sys.exit(main())
