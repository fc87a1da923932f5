"""A sweep folder's manifest (``sweep.json``): the spec, the base config and ``max_t`` it ran with.

Its own module because both :mod:`tru_dist.tune.sweep` (writes it, checks it on resume) and
:mod:`tru_dist.tune.report` (reads it) need it, and the sweep calls the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tru_dist.config import Config
from tru_dist.errors import ConfigError
from tru_dist.io_utils import not_utf8
from tru_dist.tune.spec import SweepSpec, parse_spec

MANIFEST = "sweep.json"
_KEYS = ("spec", "config", "max_t")


def load_manifest(sweep_dir: str | Path) -> tuple[SweepSpec, Config, int]:
    """(spec, base config, max_t) of an existing sweep folder.

    A damaged manifest (not UTF-8, not JSON, not a mapping, a key missing or of the wrong type)
    is refused in one line naming the file, since ``report sweep`` and ``sweep --resume`` cannot
    tell what the sweep ran without it.
    """
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"{sweep_dir} holds no sweep ({MANIFEST} missing); run "
                          "tru-dist sweep --config FILE first")
    saved = _read(path)
    spec, config, max_t = (saved[k] for k in _KEYS)
    if not isinstance(spec, dict) or not isinstance(config, dict):
        bad = "spec" if not isinstance(spec, dict) else "config"
        raise _damaged(path, f"'{bad}' is {type(saved[bad]).__name__}, not a mapping")
    if isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1:
        raise _damaged(path, f"'max_t' is {max_t!r}, not a positive integer")
    parsed = parse_spec(spec, source=str(path))
    try:
        base = Config.from_dict(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: 'config': {exc}") from None
    return parsed, base, max_t


def _read(path: Path) -> dict[str, Any]:
    """The parsed manifest at ``path``: a JSON object holding every key of :data:`_KEYS`."""
    if path.is_dir():
        raise _damaged(path, "it is a folder, not a file")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"it is {not_utf8(exc)}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _damaged(path, f"it is not valid JSON ({exc.msg} at {where})") from None
    if not isinstance(saved, dict):
        raise _damaged(path, f"it holds a JSON {type(saved).__name__}, not an object")
    missing = [k for k in _KEYS if k not in saved]
    if missing:
        raise _damaged(path, f"it lacks {', '.join(repr(k) for k in missing)}")
    return saved


def _damaged(path: Path, what: str) -> ConfigError:
    """The one-line error for a manifest that cannot be read: the file, what is wrong, the fix."""
    return ConfigError(f"sweep manifest {path} is damaged: {what}; restore it from a copy, or rerun the "
                       "sweep into a fresh folder (tru-dist sweep --config FILE)")
