"""Ray job: a Ray Tune sweep of approximate unlearning methods' hyperparameters across regimes
(``tru-dist sweep``: every method of the sweep file with the same budget; the tuned
configurations land in ``<storage>/<name>/tuned/`` for ``tru-dist compare --tuned``).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --config configs/sweeps/tiny.yaml --storage /tmp/sweeps

    # every trial a Ray Train run of 2 workers (sweep resources are then per worker)
    ray job submit ... -- python jobs/sweep.py --config configs/sweeps/tru.yaml \
        --storage /shared/sweeps --workers 2

    # finish an interrupted sweep (same config, same storage)
    ray job submit ... -- python jobs/sweep.py --config configs/sweeps/tru.yaml \
        --storage /shared/sweeps --resume

Thin: ``tru-dist sweep`` with one extra flag, ``--address`` (passed as ``--dist.address``). Inside
``ray job submit`` the driver joins the running cluster (``--address auto``, the default
here); ``--address local`` starts an in-process Ray instead. ``--storage`` should be
storage every node sees on a multi-node cluster. Anything of the form ``--key=value`` is an
override (``--unlearn.epochs=5``; ``--sweep.num_samples=16`` for a field of the sweep file).
Authentication is the cluster's: the driver inherits ``RAY_AUTH_MODE`` (and the token) from
the job's environment; only ``--address local`` turns it off, for its own loopback instance.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    from tru_dist.cli import job_main

    return job_main("sweep", argv)


if __name__ == "__main__":
    sys.exit(main())
