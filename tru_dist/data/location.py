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


def check_data_found(path: str | None, resolved: str | None) -> None:
    """A one-line DataError naming both paths when neither ``path`` (from here) nor the
    recorded ``resolved`` path exists; nothing otherwise (also when there is no other
    recorded place to name: the ordinary "does not exist" error then applies)."""
    if (not is_folder_path(path) or Path(path).exists() or not resolved or Path(resolved).exists()
            or os.path.abspath(path) == os.path.abspath(resolved)):
        return
    raise DataError(f"dataset path {path} does not exist from {os.getcwd()}, nor at {resolved} where the run "
                    "was trained on it; put the data back at that path, or run the command from a "
                    f"folder that holds {path}")
