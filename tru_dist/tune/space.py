"""The search space: one entry per dotted ``unlearn.*`` key, one distribution each.

    space:
      unlearn.lr:          {loguniform: [1.0e-4, 1.0e-2]}
      unlearn.gate.beta:   {uniform: [0.0, 1.0]}
      unlearn.gate.top_k:  {choice: [10, 20, 50]}
      unlearn.scaling.gamma: {grid: [0.0, 1.0, 2.0]}

``grid`` values are all tried (each combined with ``num_samples`` draws of the rest, as in
Ray Tune's grid search); ``choice`` draws one value uniformly; ``uniform``/``loguniform``
draw a float in ``[lo, hi]``. Each value is checked against the typed config before Ray
starts, so a trial never fails on a bad key or type. A trial's sample is a flat
``{dotted key: value}`` mapping; :func:`apply_sample` layers it over the base config.
"""

from __future__ import annotations

from typing import Any

from tru_dist.config import Config, valid_keys
from tru_dist.errors import ConfigError

KINDS = ("grid", "uniform", "loguniform", "choice")
SEARCHABLE_PREFIX = "unlearn."
NOT_SEARCHABLE = ("unlearn.epochs", "unlearn.seed", "unlearn.method")


def apply_sample(cfg: Config, sample: dict[str, Any]) -> Config:
    """``cfg`` with each dotted key of ``sample`` set (validated by the config schema)."""
    tree = cfg.to_dict()
    for key, value in sample.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return Config.from_dict(tree)


def _check_dimension(key: str, dim: Any) -> tuple[str, list]:
    if not isinstance(dim, dict) or len(dim) != 1 or next(iter(dim)) not in KINDS:
        raise ConfigError(f"space.{key} must be one of {{grid: [...]}}, {{choice: [...]}}, "
                          f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}; got {dim!r}")
    kind, args = next(iter(dim.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"space.{key}.{kind} needs a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(args) != 2 or not all(isinstance(a, int | float) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"space.{key}.{kind} needs [lo, hi] with lo < hi; got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"space.{key}.loguniform needs lo > 0; got {args[0]}")
    return kind, args


def validate_space(space: dict[str, Any], search: str = "random") -> None:
    """One-line ConfigError for an unknown/unsearchable key, a bad distribution or a bad value."""
    if not space:
        raise ConfigError("the sweep's 'space' is empty; give at least one unlearn.* key to search")
    keys = set(valid_keys())
    base = Config()
    for key, dim in space.items():
        if key not in keys:
            close = [k for k in sorted(keys) if k.startswith(SEARCHABLE_PREFIX) and k.split(".")[-1] ==
                     key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"space key '{key}' is not a config key{hint}; write dotted keys such as "
                              "unlearn.gate.beta")
        if not key.startswith(SEARCHABLE_PREFIX) or key in NOT_SEARCHABLE:
            raise ConfigError(f"space key '{key}' cannot be searched: the original model and Retrain are "
                              f"shared by all trials, so only unlearn.* keys other than "
                              f"{', '.join(NOT_SEARCHABLE)} may vary")
        kind, args = _check_dimension(key, dim)
        if kind == "grid" and search != "random":
            raise ConfigError(f"space.{key} is a grid, which search '{search}' cannot take; use choice")
        # an interior point that is not an integer catches a float range on an int field
        probes = args if kind in ("grid", "choice") else [args[0], args[0] + 0.37 * (args[1] - args[0]),
                                                          args[1]]
        for value in probes:
            try:
                apply_sample(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"space.{key}: value {value!r} is not valid ({exc})") from None
