"""Ray job: ``tru-dist train`` (here on W workers), with ``--address`` defaulting to ``auto``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --data synthetic:tiny --model lightgcn --workers 2 --out $PWD/runs/job-train

Takes ``tru-dist train``'s flags (see ``--help``); see :func:`tru_dist.cli.job_main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.cli import job_main

    return job_main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
