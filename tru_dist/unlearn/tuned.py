"""Per-method tuned configurations: ``--tuned DIR`` of ``tru-dist compare`` / ``unlearn``.

DIR holds one YAML per method and regime, named ``<method>-<regime>.yaml`` (``-`` or ``_``
inside the method name alike, e.g. ``reverse_bpr-users.yaml``, ``tru-interactions.yaml``).
Each file is a partial config (usually an ``unlearn:`` block) plus where it came from:

    tuning: {sweep: NAME, seeds: [100, 101], trials: 8, seconds: 1234.5}

``tuning.seconds`` is the sweep's cost (CPU/GPU-seconds of everything the sweep ran for
this method and regime: originals, Retrain references and trials) and is reported as the
method's ``tuning_seconds``. TRU's ablations (``tru-no-gate`` ...) use TRU's file with one
component off — the ablation measures the component, not a different tuning. ``retrain``,
``noop`` and ``sisa`` have nothing to tune and use the base config.

A file pins the keys the method reads (:func:`~tru_dist.unlearn.specs.method_keys`, blocks
expanded to their leaves) as the sweep ran them. A key added to tru-dist after the sweep is
not in the file, and takes whatever the base config (the model's packaged defaults) gives —
so a later change of a packaged default would silently change the "tuned" method too.
:func:`inherited_keys` names such keys; ``compare`` records them in the method's provenance
(``tuning.inherited``) and says so in its log. The shipped files pin every key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tru_dist.config import leaf_values, load_yaml
from tru_dist.errors import ConfigError
from tru_dist.unlearn.specs import method_keys

#: the methods a tuned file may name (the approximate methods with hyperparameters)
TUNABLE = ("reverse_bpr", "grad_ascent", "finetune", "tru")


def tuned_source(method: str) -> str | None:
    """The method whose tuned file ``method`` uses (TRU's ablations use TRU's), or None —
    also for ``tru-default``, TRU with its built-in defaults, which never takes a file."""
    key = method.strip().lower().replace("-", "_")
    if key == "tru_default":
        return None
    if key.startswith("tru"):
        return "tru"
    return key if key in TUNABLE else None


def _norm(text: str) -> str:
    return text.lower().replace("_", "-")


def find_tuned(tuned_dir: str | Path, method: str, regime: str) -> Path | None:
    """The YAML for (method, regime) in ``tuned_dir``, None for a method with nothing to tune.

    A tunable method without its file is an error (comparing a tuned method with an untuned
    one is what the fair benchmark forbids)."""
    source = tuned_source(method)
    if source is None:
        return None
    folder = Path(tuned_dir)
    if not folder.is_dir():
        raise ConfigError(f"--tuned {folder} is not a folder; pass a folder of <method>-<regime>.yaml files "
                          "(e.g. configs/tuned/scientific-mgcn)")
    want = _norm(f"{source}-{regime}")
    for path in sorted(folder.glob("*.yaml")):
        if _norm(path.stem) == want:
            return path
    raise ConfigError(f"no tuned configuration for {source} in regime {regime} in {folder} (expected "
                      f"{source}-{regime}.yaml); tune it with `tru-dist sweep` or drop --tuned")


def read_tuned(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config overrides, tuning provenance) of one tuned file."""
    path = Path(path)
    doc = dict(load_yaml(path))  # the one YAML reader: a key given twice, non-UTF-8, not a mapping
    tuning = doc.pop("tuning", None)
    if not isinstance(tuning, dict) or not {"sweep", "seeds", "trials", "seconds"} <= set(tuning):
        raise ConfigError(f"{path} has no complete 'tuning: {{sweep, seeds, trials, seconds}}' block; "
                          "a tuned configuration must say where it came from")
    _check_tuning(path, tuning)
    other = sorted(str(k) for k in doc if k != "unlearn")
    if other:  # model.dim: 99 was dropped unread (every method runs on the one original model)
        raise ConfigError(f"{path} sets {', '.join(other)}: a tuned file may set unlearn.* only (the model, "
                          "data and training are the comparison's, shared by every method): remove them")
    return doc, tuning


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tuning(path: Path, tuning: dict[str, Any]) -> None:
    """The provenance block's types, one line each: ``seeds: abc`` and ``seeds: 100`` ended in
    int()'s ValueError / TypeError tracebacks, ``seconds: .nan`` was written into results.json."""
    seeds, trials, seconds = tuning["seeds"], tuning["trials"], tuning["seconds"]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(x) and x >= 0 for x in seeds):
        raise ConfigError(f"{path}: tuning.seeds must be a non-empty list of seeds (integers >= 0), not "
                          f"{seeds!r}; fix or regenerate the file")
    if not _is_int(trials) or trials < 1:
        raise ConfigError(f"{path}: tuning.trials must be an integer >= 1, not {trials!r}; fix or regenerate "
                          "the file")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        raise ConfigError(f"{path}: tuning.seconds must be a finite number >= 0, not {seconds!r}; fix or "
                          "regenerate the file")


def _node(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def inherited_keys(method: str, overrides: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: the base's value} of every key ``method`` reads that the tuned file's
    ``overrides`` do not set — what the run takes from ``base`` (the resolved config tree the
    file is layered over) rather than from the sweep. Empty for a method with nothing to tune."""
    source = tuned_source(method)
    if source is None:
        return {}
    want: dict[str, Any] = {}
    for key in method_keys(source):
        value = _node(base, key)
        want.update(leaf_values(value, key) if isinstance(value, dict) else {key: value})
    have = leaf_values(overrides)
    return {k: v for k, v in want.items() if k not in have}
