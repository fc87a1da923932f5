"""Checks a comparison's ``results.json`` before ``tru-dist report compare`` renders it.

Everything the report reads — ``config``, ``spec``, every method entry, ``paired`` — is checked
first, so a hand-edited or damaged file is a one-line ConfigError naming the file and the key
path (``'methods.tru.seconds' is 'slow' (a str), not a finite number or null``), never a
traceback halfway through, a half-written set of plots, or a silently empty report. NaN is
accepted only where a real comparison writes it: inside ``ci`` lists (an audit's bootstrap
interval when the data cannot support one) and ``per_seed`` lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tru_dist.errors import ConfigError


class _BadResults(Exception):
    """One malformed value of a results.json: its key path and what is wrong with it."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(where, what)
        self.where, self.what = where, what


def check_results(source: Path, results: dict, scalars: Iterable[str]) -> None:
    """Refuse, in one line naming ``source`` and the key path, a results.json that
    :func:`tru_dist.compare.write_report` cannot render whole: everything it reads is checked
    here, before any file is written, so a hand-edited or damaged file gives no traceback, no
    half-written plots and no silently empty report. ``scalars``: the per-method figures that are
    single numbers (``seconds``, ``retrain_distance``, ...; each with ``_std`` and ``_ci``)."""
    scalar_keys = frozenset(k + s for k in scalars for s in ("", "_std", "_ci"))
    try:
        _check_header(results)
        methods = results["methods"]
        if not methods:
            raise _BadResults("methods", "is empty (no method to report)")
        for name, entry in methods.items():
            _check_method(f"methods.{name}", entry, scalar_keys)
        _check_paired(results.get("paired", {}))
    except _BadResults as bad:
        raise ConfigError(f"{source}: '{bad.where}' {bad.what}; rerun the comparison (tru-dist compare) "
                          "to rewrite it, or restore the file") from None


def _what(value: Any) -> str:
    """``'slow' (a str)``: a bad value as an error message shows it (repr cut short)."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{text[:40]}{'…' if len(text) > 40 else ''} (a {type(value).__name__})"


_MISSING: Any = object()  # a key's absence, told apart from an explicit null


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _BadResults(where, "is missing" if value is _MISSING else f"is {_what(value)}, not a mapping")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_or_null(value: Any, where: str) -> None:
    if value is not None and not (_is_number(value) and np.isfinite(value)):
        raise _BadResults(where, f"is {_what(value)}, not a finite number or null")


def _bounds(value: Any, where: str, finite: bool = True) -> None:
    """A ``ci`` entry: null or ``[lo, hi]`` of numbers or nulls (NaN allowed where not ``finite``:
    an audit's bootstrap interval is NaN when the data cannot support it)."""
    if value is None:
        return
    ok = isinstance(value, list) and len(value) == 2 and all(
        v is None or (_is_number(v) and (np.isfinite(v) or not finite)) for v in value)
    if not ok:
        raise _BadResults(where, f"is {_what(value)}, not [low, high] or null")


def _check_header(results: dict) -> None:
    """``config`` and ``spec``: the keys the report's first paragraph reads."""
    config = _mapping(results.get("config", _MISSING), "config")
    _mapping(config.get("model", _MISSING), "config.model")
    if "name" not in config["model"]:
        raise _BadResults("config.model.name", "is missing")
    data = _mapping(config.get("data", _MISSING), "config.data")
    if not isinstance(data.get("path", ""), str | None):
        raise _BadResults("config.data.path", f"is {_what(data['path'])}, not a path or null")
    spec = _mapping(results.get("spec", _MISSING), "spec")
    for key in ("regime", "policy", "seeds"):
        if key not in spec:
            raise _BadResults(f"spec.{key}", "is missing")
    fraction = spec.get("fraction")
    if not (_is_number(fraction) and np.isfinite(fraction)):
        raise _BadResults("spec.fraction", "is missing" if fraction is None else
                          f"is {_what(fraction)}, not a finite number")


def _check_method(where: str, entry: Any, scalar_keys: frozenset[str]) -> None:
    """One method entry: scalar figures finite or null, every other key (except the unread
    ``stats``) a mapping of finite numbers or nulls; ``ci`` bounds and ``per_seed`` lists."""
    for key, value in _mapping(entry, where).items():
        at = f"{where}.{key}"
        if key == "stats":
            continue  # per-seed run statistics: recorded, not reported
        if key in scalar_keys:
            _finite_or_null(value, at)
            if key in ("seconds", "tuning_seconds") and value is not None and value < 0:
                raise _BadResults(at, f"is {value!r}, a negative time")
            continue
        for name, v in _mapping(value, at).items():
            if key == "per_seed":
                if not (isinstance(v, list) and all(x is None or _is_number(x) for x in v)):
                    raise _BadResults(f"{at}.{name}", f"is {_what(v)}, not a list of numbers or nulls")
            elif name == "ci":
                _bounds(v, f"{at}.{name}", finite=False)
            else:
                _finite_or_null(v, f"{at}.{name}")


def _check_paired(paired: Any) -> None:
    """``paired``: {TRU variant: {other method: {diff_mean, ci, lower_on, higher_on, sign_p}}}."""
    for tru_name, others in _mapping(paired, "paired").items():
        for other, d in _mapping(others, f"paired.{tru_name}").items():
            at = f"paired.{tru_name}.{other}"
            _mapping(d, at)
            if d.get("diff_mean") is None:
                raise _BadResults(f"{at}.diff_mean", "is missing")
            _finite_or_null(d["diff_mean"], f"{at}.diff_mean")
            _bounds(d.get("ci"), f"{at}.ci")
            for key in ("lower_on", "higher_on", "sign_p"):
                _finite_or_null(d.get(key), f"{at}.{key}")
