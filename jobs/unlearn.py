"""Ray job: ``tru-dist unlearn`` — deletion requests applied through the ledger on W workers.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/unlearn.py --run $PWD/runs/job-train --requests $PWD/requests.csv \
        --method tru --workers 2 --out $PWD/runs/job-unlearn

Takes ``tru-dist unlearn``'s flags (``--run --requests --method --config --seed --workers
--out``, ``--key=value`` overrides); the same ledger, receipt and metrics as at W = 1. See
:func:`tru_dist.cli.job_main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.cli import job_main

    return job_main("unlearn", argv)


if __name__ == "__main__":
    sys.exit(main())
