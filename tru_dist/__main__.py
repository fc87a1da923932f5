"""``python -m tru_dist`` is the ``tru-dist`` command (same parser, same exit codes)."""

import sys

from tru_dist.cli import main

if __name__ == "__main__":
    sys.exit(main())
