"""The package's log lines on stderr: what a long command says while it runs.

Library code only logs (``logging.getLogger("tru_dist.<module>")``) and never configures
handlers; entry points — the CLI, the job scripts, every worker process — call
:func:`setup_logging` once, which sends the ``tru_dist`` loggers' INFO lines to stderr as
``HH:MM:SS message``. Results (JSON) stay on stdout, so ``tru-dist train ... > out.json``
keeps them apart. An application that configured logging itself (a root handler) keeps its
own handlers: nothing is added then, and the lines reach it through propagation.
"""

from __future__ import annotations

import logging
import sys

_MARK = "_tru_dist_handler"


def setup_logging(level: int = logging.INFO) -> None:
    """Idempotent: one stderr handler on the ``tru_dist`` logger unless the root logger has one."""
    logger = logging.getLogger("tru_dist")
    logger.setLevel(level)
    if any(getattr(h, _MARK, False) for h in logger.handlers) or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
