"""The sweep file (``configs/sweeps/*.yaml``): a strict, typed schema.

A sweep names the data, the backbone and its base config, the unlearning regimes, the
tuning seeds, the method(s) to tune and a search space over ``unlearn.*`` keys for each;
everything else (search algorithm, scheduler, budget) has a default. Unknown keys are
one-line errors, as in :mod:`tru_dist.config`.

Methods: any approximate method (``reverse_bpr``, ``grad_ascent``, ``finetune``, ``tru``),
given either as one method and its space::

    method: tru                  # the default
    space: {unlearn.lr: {loguniform: [1.0e-4, 1.0e-2]}, ...}

or as several, each with its own space, tuned with the SAME budget (``num_samples``,
search, scheduler, ``unlearn.epochs``): one Tune experiment per method and regime::

    methods:
      reverse_bpr: {unlearn.lr: ..., unlearn.lambda_f: ..., unlearn.lambda_r: ...}
      tru: {unlearn.lr: ..., unlearn.gate.beta: ..., ...}

A space may only name keys its method reads (:func:`tru_dist.unlearn.specs.method_keys`:
finetune has no ``lambda_f``, grad_ascent no ``lambda_r``, only TRU has gate/scaling/
isolation), and every method gets the same number of trials (a ``grid`` dimension in one
space must be matched by the others).

Seeds are *tuning seeds*, 100 and up (:data:`tru_dist.data.regimes.TUNING_SEED_BASE`): their
forget sets are drawn from a pool disjoint from the reporting seeds 0..99 that
``tru-dist compare`` reports on. ``seeds: N`` means 100 … 100+N−1.

Only ``unlearn.*`` keys may be searched: the original model and Retrain are trained once
per regime/seed and shared by every trial, so a trial must not change anything they
depend on (``train.*``, ``model.*``, ``data.*``). ``unlearn.epochs`` is the scheduler's time
axis (every trial reports every epoch up to ``unlearn.epochs``), so it is not searched
either; the best epoch of the best trial becomes the recommended ``unlearn.epochs``.

``--key=value`` overrides on the command line go to the base config (``--unlearn.epochs=5``,
``--train.epochs=50``), except ``--sweep.<field>=value``, which sets a field of this file
(``--sweep.num_samples=4``, ``--sweep.report=false``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tru_dist.audit.runner import AUDITS
from tru_dist.config import Config, build_config, canonical_dataset, load_yaml, packaged_names, yaml_value
from tru_dist.data.regimes import TUNING_SEED_BASE
from tru_dist.errors import ConfigError
from tru_dist.tune.space import validate_space
from tru_dist.unlearn.base import APPROXIMATE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: a sweep's or a regime's name is a folder name under --storage: one path component
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _folder_name(value: str | None) -> str | None:
    """``name: ../../escape`` wrote the sweep outside ``--storage`` and ``name: ''`` into its root
    (mixed with other sweeps): a name must be one non-empty path component."""
    if value is not None and (not _NAME.fullmatch(value) or value in (".", "..")):
        raise ValueError(f"{value!r} is not a folder name; use letters, digits, '.', '_' and '-' only")
    return value


class RegimeSpec(_Strict):
    """One forget-set regime: ``{regime: users, policy: core, fraction: 0.05}``."""

    regime: Literal["interactions", "users", "items", "poison"]
    policy: Literal["random", "core", "edge"] = "random"
    fraction: float = Field(0.05, gt=0.0, le=1.0)
    name: str | None = None

    _name_is_a_folder = field_validator("name")(_folder_name)

    @model_validator(mode="after")
    def _policy_of_users(self) -> RegimeSpec:
        """``policy`` chooses whole users: with another regime it was refused only when the first
        forget set was drawn, after the originals had trained (and left them in the storage)."""
        if self.policy != "random" and self.regime != "users":
            raise ValueError(f"policy '{self.policy}' applies to the users regime only; drop it or use "
                             "regime: users")
        return self

    @property
    def id(self) -> str:
        """A file-name-safe id: ``users-core-5pct``, ``items-1pct`` (or the given ``name``)."""
        if self.name:
            return self.name
        pct = f"{self.fraction * 100:g}".replace(".", "p")
        head = f"{self.regime}-{self.policy}" if self.regime == "users" else self.regime
        return f"{head}-{pct}pct"


class Resources(_Strict):
    """Per trial; a negative count was a Ray traceback (cpu) or a hang (gpu) after the
    originals were trained."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SweepSpec(_Strict):
    """A whole sweep; see ``configs/sweeps/tru.yaml`` for a commented example."""

    name: str
    data: str = "synthetic"
    dataset: str | None = None
    model: str = "mgcn"
    config: str | None = None
    overrides: dict[str, Any] = {}
    regimes: list[RegimeSpec]
    seeds: int | list[int] = 1
    method: str | None = None  # the method of ``space`` (tru when not given)
    space: dict[str, dict[str, list]] | None = None
    methods: dict[str, dict[str, dict[str, list]]] | None = None
    num_samples: int = Field(8, ge=1)
    search: Literal["random", "optuna"] = "random"
    search_seed: int = 0
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)
    metric: Literal["score"] = "score"  # the trade-off score (tru_dist.tune.objective), maximised
    k: int = Field(20, ge=1)
    max_concurrent: int = Field(0, ge=0)
    resources: Resources = Resources()
    audit: list[str] = []
    report: bool = True
    shared_candidates: int = Field(2, ge=1)

    _name_is_a_folder = field_validator("name")(_folder_name)

    @field_validator("audit")
    @classmethod
    def _known_audits(cls, audit: list[str]) -> list[str]:
        """Checked here, not by the report at the end of the sweep (which ran every trial first)."""
        unknown = sorted(set(audit) - set(AUDITS))
        if unknown:
            raise ValueError(f"unknown audit(s) {', '.join(unknown)} (choose from: {', '.join(AUDITS)})")
        twice = sorted({a for a in audit if audit.count(a) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return audit

    @field_validator("regimes")
    @classmethod
    def _unique_regimes(cls, regimes: list[RegimeSpec]) -> list[RegimeSpec]:
        if not regimes:
            raise ValueError("list at least one regime")
        ids = [r.id for r in regimes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"regimes repeat {', '.join(dupes)}; give each a distinct 'name'")
        return regimes

    @property
    def seed_list(self) -> list[int]:
        """The tuning seeds: ``seeds: N`` is 100 … 100+N−1, a list is taken as given."""
        if isinstance(self.seeds, int):
            return list(range(TUNING_SEED_BASE, TUNING_SEED_BASE + self.seeds))
        return list(self.seeds)

    @property
    def spaces(self) -> dict[str, dict[str, dict[str, list]]]:
        """``{method: its search space}`` in the file's order (canonical method names)."""
        if self.methods is not None:
            return {_method_name(m): dict(s) for m, s in self.methods.items()}
        return {_method_name(self.method or "tru"): dict(self.space or {})}

    def trials(self, method: str) -> int:
        """Trials of one experiment of ``method``: ``num_samples`` × every grid's size."""
        n = self.num_samples
        for dim in self.spaces[method].values():
            if isinstance(dim, dict) and "grid" in dim and isinstance(dim["grid"], list):
                n *= len(dim["grid"])
        return n

    def regime(self, regime_id: str) -> RegimeSpec:
        for r in self.regimes:
            if r.id == regime_id:
                return r
        raise ConfigError(f"sweep {self.name} has no regime '{regime_id}' (it has: "
                          f"{', '.join(r.id for r in self.regimes)})")


def _one_line(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(SweepSpec.model_fields)
            parts.append(f"unknown sweep key '{loc}' (valid keys: {valid})")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix on a validator's own text
            parts.append(f"invalid value for '{loc}': {msg}")
    return f"{source}: " + "; ".join(parts)


def _method_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in APPROXIMATE:
        raise ConfigError(f"cannot tune method '{name}': a sweep tunes the approximate methods "
                          f"{', '.join(APPROXIMATE)}")
    return key


def _check_methods(spec: SweepSpec, source: str) -> None:
    """One method + ``space`` or ``methods``; known approximate methods; spaces of keys each
    method reads; an equal number of trials for every method."""
    from tru_dist.unlearn.specs import method_keys, reads

    if (spec.space is None) == (spec.methods is None):
        raise ConfigError(f"{source}: give either 'space' (one method, named by 'method') or 'methods' "
                          "(method: space, ...) — exactly one of them")
    if spec.methods is not None and spec.method is not None:
        raise ConfigError(f"{source}: 'method' names the method of 'space'; with 'methods' list every "
                          "method there and drop 'method'")
    if spec.methods is not None and not spec.methods:
        raise ConfigError(f"{source}: 'methods' is empty; give at least one method and its space")
    names = [_method_name(m) for m in (spec.methods or {spec.method or "tru": None})]
    if len(set(names)) < len(names):
        raise ConfigError(f"{source}: 'methods' names a method twice ({', '.join(names)})")
    for method, space in spec.spaces.items():
        try:
            validate_space(space, spec.search)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {method}: {exc}") from None
        for key in space:
            if not reads(method, key):
                raise ConfigError(f"{source}: {method} does not read {key}, so searching it would only "
                                  f"waste trials; its keys: {', '.join(method_keys(method))}")
    budget = {m: spec.trials(m) for m in spec.spaces}
    if len(set(budget.values())) > 1:
        raise ConfigError(f"{source}: the methods would get unequal trial budgets "
                          f"({', '.join(f'{m}: {n}' for m, n in budget.items())}); every method gets "
                          "num_samples x its grids' sizes, so give their spaces the same grid sizes")


def parse_spec(tree: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a sweep tree (a parsed YAML mapping) into a :class:`SweepSpec`."""
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    _check_methods(spec, source)
    if not spec.seed_list:
        raise ConfigError(f"{source}: 'seeds' is empty; give a count (e.g. 2: seeds 100, 101) or a list "
                          "of seeds")
    twice = sorted({x for x in spec.seed_list if spec.seed_list.count(x) > 1})
    if twice:  # the same forget set counted twice in every trial's score
        raise ConfigError(f"{source}: seeds {twice} are listed more than once; list each tuning seed once")
    if spec.dataset is not None:
        if canonical_dataset(spec.dataset) not in packaged_names("datasets"):  # its defaults were dropped
            raise ConfigError(f"{source}: dataset '{spec.dataset}' has no packaged defaults (packaged: "
                              f"{', '.join(packaged_names('datasets'))}); fix the name or drop 'dataset'")
    reporting = [s for s in spec.seed_list if s < TUNING_SEED_BASE]
    if reporting:
        raise ConfigError(f"{source}: seeds {reporting}: tuning seeds are {TUNING_SEED_BASE} and up: "
                          f"reporting seeds 0..{TUNING_SEED_BASE - 1} are what compare reports "
                          f"(e.g. seeds: [{TUNING_SEED_BASE}, {TUNING_SEED_BASE + 1}])")
    return spec


def split_overrides(overrides: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """``--sweep.<field>=v`` → sweep fields; every other ``--key=value`` → base config."""
    sweep: dict[str, Any] = {}
    config: list[str] = []
    for raw in overrides or []:
        item = raw[2:] if raw.startswith("--") else raw
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{raw}' is not of the form --key=value (e.g. --sweep.num_samples=8)")
        if key.startswith("sweep."):
            sweep[key[len("sweep."):]] = yaml_value(text) if text else None
        else:
            config.append(item)
    return sweep, config


def load_spec(config_path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, list[str]]:
    """Read and validate the sweep file; return it and the base-config overrides."""
    path = Path(config_path)
    tree = load_yaml(path)
    sweep_over, config_over = split_overrides(overrides)
    tree.update(sweep_over)
    if tree.get("config"):  # a base config path is relative to the sweep file
        base = Path(tree["config"])
        tree["config"] = str(base if base.is_absolute() else (path.parent / base).resolve())
    return parse_spec(tree, source=str(path)), config_over


def base_config(spec: SweepSpec, config_overrides: list[str] | None = None) -> Config:
    """defaults < dataset YAML < model YAML < ``config`` < ``overrides`` < command-line overrides."""
    # JSON is YAML, so json.dumps round-trips every value through parse_overrides unchanged
    dotted = [f"{k}={json.dumps(v)}" for k, v in {**spec.overrides, "data.path": spec.data}.items()]
    cfg = build_config(model=spec.model, dataset=spec.dataset, config_file=spec.config,
                       overrides=dotted + list(config_overrides or []))
    if cfg.model.name != spec.model:
        raise ConfigError(f"sweep model is '{spec.model}' but the base config sets model.name="
                          f"'{cfg.model.name}'; set one of them")
    return cfg
