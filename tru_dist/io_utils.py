"""Atomic writes: write to a temporary file in the target folder, fsync, then rename.

A reader never sees a partial file, and an interrupted write leaves the old file intact.
A process killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file,
``.<name>.<random>.tmp``; :func:`remove_orphan_temps` deletes those on the next run.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tru_dist.crashpoints import fault_point


def file_in_the_way(path: str | Path) -> Path | None:
    """The nearest existing parent of ``path`` that is a file, not a folder (None when there is
    none): creating ``path`` would fail there, deep inside a command, with a raw OSError."""
    return next((p for p in Path(path).absolute().parents if p.exists() and not p.is_dir()), None)


def not_regular_kind(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (``a FIFO``,
    ``a socket``, ``a device``), else None. Such a path is never opened: reading a FIFO blocks
    until a writer comes."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def why_not_found(path: str | Path) -> str:
    """The clause for a path a command needs but cannot use as given: ``does not exist``, ``is a
    symlink loop``, ``is a link to X, which does not exist``, ``is a FIFO, not a regular file``
    (a bare "does not exist" misled for the last three, which ``ls`` shows)."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that points back to itself)"
        if path.is_symlink():
            return f"is a link to {os.readlink(path)}, which does not exist"
        if exc.errno == errno.ENOENT:
            return "does not exist"
        return f"cannot be reached ({exc.strerror or exc})"
    kind = not_regular_kind(path)
    return f"is {kind}, not a regular file" if kind else "does not exist"


def not_utf8(exc: UnicodeDecodeError, *, file_offset: bool = True) -> str:
    """``not UTF-8 text (byte 0xff at offset 0)``: the clause an error about a binary or UTF-16
    file (read where UTF-8 text is expected) gives, so the user can find the bad byte. The
    offset is the file's only where the whole file was decoded at once (``read_text``); a
    parser that decodes field by field (pandas) reports one within a field, so its callers
    pass ``file_offset=False`` and the clause names the byte alone."""
    where = f" at offset {exc.start}" if file_offset else ""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x}{where})"


def atomic_write(path: str | Path, writer: Callable[[str], None], *, fault: str | None = None) -> Path:
    """Call ``writer(tmp_path)`` then rename ``tmp_path`` onto ``path`` atomically.

    ``fault``: a crash-injection stage (:mod:`tru_dist.crashpoints`) between the complete
    temp file and the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        fault_point(fault)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _w)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj: Any, path: str | Path, *, fault: str | None = None) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fault=fault)


def is_orphan_temp(path: Path) -> bool:
    """A temp file of :func:`atomic_write` (``.<name>.<random>.tmp``)."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp")


def remove_orphan_temps(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temp files a killed :func:`atomic_write` left under ``folder``; returns them.
    Call it only where no other process is writing (a run's own output folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")) if is_orphan_temp(p)]
    for p in found:
        p.unlink(missing_ok=True)
    return found
