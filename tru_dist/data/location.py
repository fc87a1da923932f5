"""Where a run's data is: ``data.path`` as given, or the absolute path train recorded.

A run trained with a relative ``--data d/tiny`` keeps ``data.path: d/tiny`` (so a run folder
copied together with its data, and used from the copy, opens the COPY's data — what the
crash-safety copies and ``unlearn --purge`` on a copy rely on) and also records
``data.resolved_path``, the absolute form of that path in the directory train ran in. A
command on the run opens ``data.path`` when it exists from here; otherwise the recorded
absolute path when that exists (one warning says so); otherwise the error names both.
Runs recorded before ``resolved_path`` existed behave as before (``data.path`` only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tru_dist.config import is_folder_path
from tru_dist.errors import DataError

log = logging.getLogger("tru_dist.data")
_announced: set[tuple[str, str]] = set()  # one warning per (path, resolved) and process


def locate_data(path: str | None, resolved: str | None) -> str | None:
    """The path to open: ``path`` when it exists from here (or is no folder path); else
    ``resolved`` when that exists (logged once); else ``path`` unchanged (the opener's error,
    or :func:`check_data_found`'s, says what is missing)."""
    if not is_folder_path(path) or Path(path).exists() or not resolved or not Path(resolved).exists():
        return path
    if (path, resolved) not in _announced:
        _announced.add((path, resolved))
        log.warning("dataset path %s does not exist from %s; using %s, where the run was trained on it",
                 path, os.getcwd(), resolved)
    return resolved


def path_to_open(path: str | None, resolved: str | None) -> str | None:
    """:func:`check_data_found`, then :func:`locate_data`: what an opener should open (used where a
    config's data is opened, so a fallback to the recorded path is taken, not only checked)."""
    check_data_found(path, resolved)
    return locate_data(path, resolved)


def check_data_found(path: str | None, resolved: str | None, of_run: str | Path | None = None) -> None:
    """A one-line DataError naming both paths when neither ``path`` (from here) nor the
    recorded ``resolved`` path exists; nothing otherwise. ``of_run``: the run folder whose data
    this is (evaluate, unlearn, recommend, audit) — then a missing data folder recorded at one
    place is this error too, naming the run and the fix, where the opener's generic "pass an
    MMRec folder or a tru-dist store" named no flag a command on a run takes. Without ``of_run``
    (``train``, whose own ``--data`` it is) that generic error applies."""
    if not is_folder_path(path) or Path(path).exists() or (resolved and Path(resolved).exists()):
        return
    one_place = not resolved or os.path.abspath(path) == os.path.abspath(resolved)
    if one_place and of_run is None:
        return
    fix = ("put the data back at that path (evaluate and unlearn also take its new place as "
           "--data.path=NEW)")
    if one_place:
        raise DataError(f"dataset path {path} of run {of_run} does not exist (the run was trained on it "
                        f"there); {fix}")
    raise DataError(f"dataset path {path} does not exist from {os.getcwd()}, nor at {resolved} where the run "
                    f"was trained on it; {fix}, or run the command from a folder that holds {path}")
