"""Method name → the :class:`~tru_dist.unlearn.engine.UpdateSpec` of the shared loop, and
the ``unlearn.*`` keys that loop reads for it.

Every approximate method (reverse_bpr, grad_ascent, finetune, TRU and TRU's ablations) is
the loop of :mod:`tru_dist.unlearn.engine` with its own spec, so whatever runs a method
epoch by epoch (the sweeps, :func:`~tru_dist.unlearn.engine.iter_update`) needs only the
spec — the same one the method's ``unlearn`` builds:

    iter_update(original, deletion, cfg, spec_for("grad_ascent", cfg))

:func:`method_keys` says which hyperparameters a method's run depends on: what a sweep may
search for it, and what a tuned file (:mod:`tru_dist.unlearn.tuned`) records for it.
"""

from __future__ import annotations

from collections.abc import Callable

from tru_dist.config import Config
from tru_dist.errors import ConfigError
from tru_dist.unlearn import finetune, grad_ascent, reverse_bpr
from tru_dist.unlearn.base import get_method
from tru_dist.unlearn.engine import UpdateSpec
from tru_dist.unlearn.tru.tru import tru_spec

_SPECS: dict[str, Callable[[Config], UpdateSpec]] = {
    "reverse_bpr": lambda cfg: reverse_bpr.SPEC,
    "grad_ascent": lambda cfg: grad_ascent.SPEC,
    "finetune": lambda cfg: finetune.SPEC,
    "tru": tru_spec,
    "tru-default": tru_spec,
    "tru-no-gate": lambda cfg: tru_spec(cfg, gate=False),
    "tru-no-scaling": lambda cfg: tru_spec(cfg, scaling=False),
    "tru-no-isolation": lambda cfg: tru_spec(cfg, isolation=False),
}

#: keys every run of the loop reads (``unlearn.seed`` too, but the caller seeds it)
_COMMON = ("unlearn.epochs", "unlearn.lr", "unlearn.batch_size")
#: TRU's component blocks, read (in full: ``enabled`` included) by TRU and its ablations
_TRU_BLOCKS = ("unlearn.gate", "unlearn.scaling", "unlearn.isolation")


def loop_methods() -> list[str]:
    """The methods that are a run of the shared loop (canonical names)."""
    return list(_SPECS)


def canonical(method: str) -> str:
    """The registry's name of ``method`` (``-``/``_`` alike); ConfigError when it is not a run
    of the shared loop (retrain, noop, sisa have no update to configure)."""
    name = get_method(method).name
    if name not in _SPECS:
        raise ConfigError(f"method '{method}' is not a run of the shared unlearning loop (it has no "
                          f"update spec); choose one of: {', '.join(_SPECS)}")
    return name


def spec_for(method: str, cfg: Config) -> UpdateSpec:
    """The loop spec of ``method`` under ``cfg`` — what ``get_method(method).unlearn`` runs."""
    return _SPECS[canonical(method)](cfg)


def method_keys(method: str) -> tuple[str, ...]:
    """Dotted ``unlearn.*`` keys (or blocks: ``unlearn.gate`` covers ``unlearn.gate.*``) the
    loop reads for ``method``: epochs, lr, batch size; ``lambda_f`` when it has a forget term,
    ``lambda_r`` when it has a retain term; TRU's three component blocks for TRU and its
    ablations (an ablation reads the block it switches off too: its ``enabled`` stays as
    tuned)."""
    name = canonical(method)
    spec = _SPECS[name](Config())
    keys = list(_COMMON)
    if spec.forget_term != "none":
        keys.append("unlearn.lambda_f")
    if spec.retain:
        keys.append("unlearn.lambda_r")
    if name.startswith("tru"):
        keys.extend(_TRU_BLOCKS)
    return tuple(keys)


def reads(method: str, key: str) -> bool:
    """Whether ``method``'s run depends on the dotted config key ``key``."""
    return any(key == k or key.startswith(k + ".") for k in method_keys(method))
