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
``RAY_AUTH_MODE`` is set explicitly (``disabled`` unless the environment says otherwise),
so a token left by an earlier local Ray does not silently switch authentication on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from tru_dist.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    address = "auto"  # inside `ray job submit` the driver joins the running cluster
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--address":
            address = next(it, address)
        elif arg.startswith("--address="):
            address = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return cli_main(["sweep", *rest, f"--dist.address={address}"])


if __name__ == "__main__":
    sys.exit(main())
