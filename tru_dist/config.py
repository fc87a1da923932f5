"""Typed, layered configuration.

Precedence (later wins): typed defaults < the dataset's defaults < the model's published
defaults < a user YAML (``--config FILE``) < ``--key=value`` overrides. Keys are dotted paths
(``train.lr=1e-3``); a bare leaf name (``lr=1e-3``) is accepted when it is unambiguous.
Unknown keys are errors that list the valid ones, as in RecBole's layered config but strict
(pydantic ``extra="forbid"``).

The model and dataset defaults are package data (``tru_dist/configs/{models,datasets}/*.yaml``,
read with :mod:`importlib.resources`), so an installed wheel carries them; the repository's
top-level ``configs/`` holds the user-facing files passed by path (sweeps, tuned unlearning
configs). Names are canonical: lower case without ``-``/``_`` (``MiG-GT`` → ``miggt``), and a
dataset folder's ``amazon-`` prefix is dropped (``amazon-scientific`` → ``scientific``). Every
model has a defaults file: a model without one is an error, never a silent fallback to the
typed defaults. A dataset without one (your own data) simply has no dataset layer.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from tru_dist.errors import ConfigError
from tru_dist.io_utils import not_utf8

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEVICES = "auto, cpu, cuda or cuda:N"


def defaults_root() -> Traversable:
    """The packaged defaults: ``tru_dist/configs`` (``models/``, ``datasets/``)."""
    return resources.files("tru_dist") / "configs"


def canonical_name(name: str) -> str:
    """``MiG-GT`` / ``MIGGT`` / ``mig_gt`` → ``miggt``: lower case, no separators or spaces."""
    return re.sub(r"[-_\s]", "", str(name).strip().lower())


def canonical_dataset(name: str | Path) -> str:
    """A dataset name or folder → its canonical name (``../data/amazon-scientific`` → ``scientific``)."""
    key = canonical_name(Path(str(name).rstrip("/\\")).name)
    return key[len("amazon"):] if key.startswith("amazon") and len(key) > len("amazon") else key


def packaged_names(kind: str) -> list[str]:
    """Names with a packaged defaults file of ``kind`` (``models`` or ``datasets``)."""
    folder = defaults_root() / kind
    if not folder.is_dir():
        return []
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))


def packaged_defaults(kind: str, name: str) -> dict | None:
    """The packaged ``kind/name.yaml`` as a mapping, or None when there is no such file."""
    f = defaults_root() / kind / f"{name}.yaml"
    if not f.is_file():
        return None
    data = yaml.load(f.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (read as user files are)
    if not isinstance(data, dict):
        raise ConfigError(f"packaged defaults {kind}/{name}.yaml must hold a mapping; reinstall tru-dist")
    return data


class Valid:
    """The valid range of a config value, as the one-line error states it (e.g. ``> 0``)."""

    def __init__(self, text: str):
        self.text = text


def _not_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number belongs: pydantic's lax mode reads them as 1 / 0,
    so ``--model.dim=true`` trained a 1-dimensional model and ``--train.lr=true`` used lr 1.0."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


_NotBool = BeforeValidator(_not_bool)

# Value ranges (every float must also be finite: ``allow_inf_nan=False`` below; no booleans:
# :func:`_not_bool`). A bad value is a one-line ConfigError naming the key, the value and the
# range (:func:`_one_line`).
#: the largest float setting: every float is used as a float32 scalar somewhere, and a value
#: near float32's 3.4e38 overflowed there (``--unlearn.lr=1e38``: torch's "cannot be converted
#: to type float without overflow" traceback, after config.yaml was written)
FLOAT_MAX = 1e30
#: the largest step size: Adam multiplies it by up to 1/(1 − β1) = 10 before float32 sees it, and
#: no working step size comes near
LR_MAX = 1e6
#: the largest count (epochs, sizes, top-K ...): 2**31 − 1, within every index type the counts
#: reach (``--unlearn.gate.top_k=1e20`` ended in an OverflowError traceback)
COUNT_MAX = 2**31 - 1
#: the most propagation layers / hops: each is a pass over the graph (1e20 hung the command)
LAYERS_MAX = 64
PosFloat = Annotated[float, _NotBool, Field(gt=0, le=FLOAT_MAX), Valid("a finite number in (0, 1e30]")]
NonNegFloat = Annotated[float, _NotBool, Field(ge=0, le=FLOAT_MAX), Valid("a finite number in [0, 1e30]")]
LearningRate = Annotated[float, _NotBool, Field(gt=0, le=LR_MAX), Valid("a step size in (0, 1e6]")]
Fraction = Annotated[float, _NotBool, Field(gt=0, le=1), Valid("a number in (0, 1]")]
Unit = Annotated[float, _NotBool, Field(ge=0, le=1), Valid("a number in [0, 1]")]
Dropout = Annotated[float, _NotBool, Field(ge=0, lt=1), Valid("a number in [0, 1)")]
PosInt = Annotated[int, _NotBool, Field(ge=1, le=COUNT_MAX), Valid(f"an integer in 1..{COUNT_MAX}")]
NonNegInt = Annotated[int, _NotBool, Field(ge=0, le=COUNT_MAX), Valid(f"an integer in 0..{COUNT_MAX}")]
Layers = Annotated[int, _NotBool, Field(ge=0, le=LAYERS_MAX), Valid(f"an integer in 0..{LAYERS_MAX}")]
#: seeds are combined arithmetically (e.g. seed·1,000,003 + 10 for a torch generator, which takes
#: < 2**64): 2**63 passed the check and ended in torch's "Overflow" traceback mid-run
SEED_MAX = 2**32 - 1
Seed = Annotated[int, _NotBool, Field(ge=0, le=SEED_MAX), Valid(f"an integer 0..{SEED_MAX} (a seed)")]
OffOrNonNeg = Annotated[int, _NotBool, Field(ge=-1, le=COUNT_MAX),
                        Valid(f"-1 (off) or an integer in 0..{COUNT_MAX}")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignments are validated too; a bad value is the same one-line ConfigError."""
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, root=type(self))) from None


class DataConfig(_Strict):
    """Where the data comes from. ``path`` is an MMRec folder or a tru-dist store, as given
    (relative paths stay relative, so a run copied with its data opens the copy's).
    ``resolved_path`` is a record, not a setting: the absolute form of ``path`` where the run
    was trained, which a command on the run falls back to when ``path`` does not exist from
    its directory (:mod:`tru_dist.data.location`); None in runs recorded before it existed."""

    path: str | None = None
    name: str = "synthetic"
    resolved_path: str | None = None


class ModelConfig(_Strict):
    """Backbone hyperparameters. One flat record; each model reads the fields it uses.

    Shared: ``name``, ``dim``, ``n_layers`` (user-item propagation layers), ``reg_weight``
    (L2 on the batch's ego embeddings). MGCN: ``knn_k``, ``mm_layers`` (item-item layers),
    ``cl_weight``, ``cl_temp``. MIG-GT: ``modality_layers`` (per-modality hop counts,
    e.g. ``{"id": 3, "image": 2, "text": 2}``), ``gt_samples``, ``gt_heads``, ``gt_alpha``,
    ``dropout``, ``feat_hidden`` (hidden width of the feature MLP; 0 = one linear layer),
    ``ppr_alpha`` (restart weight α of the MGDCF-style propagation, β = 1 − α),
    ``gt_att_dim`` (query/key width of the sampled global transformer).
    """

    name: str = "lightgcn"
    dim: PosInt = 64
    n_layers: Layers = 2
    reg_weight: NonNegFloat = 1e-4
    knn_k: PosInt = 10
    mm_layers: Layers = 1
    cl_weight: NonNegFloat = 0.01
    cl_temp: PosFloat = 0.2
    modality_layers: dict[str, Layers] = {}
    gt_samples: PosInt = 20
    gt_heads: PosInt = 1
    gt_alpha: Unit = 0.5
    dropout: Dropout = 0.0
    feat_hidden: NonNegInt = 512
    ppr_alpha: Unit = 0.1
    gt_att_dim: PosInt = 4

    @field_validator("name")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return canonical_name(v)


class TrainConfig(_Strict):
    """BPR training with early stopping on ``eval.metric`` computed on valid.

    ``device``: ``auto`` (CUDA when ``torch.cuda.is_available()``, else CPU — resolved where
    the model is built, so a run trained on a GPU loads on a CPU machine), ``cpu``, ``cuda``
    or ``cuda:N``.
    """

    lr: LearningRate = 1e-3
    batch_size: PosInt = 2048
    epochs: PosInt = 300
    patience: Annotated[int, _NotBool, Valid("an integer (<= 0: no early stopping)")] = 20
    eval_every: PosInt = 1
    seed: Seed = 0
    device: str = "auto"
    progress: Literal["auto", "on", "off"] = "auto"
    #: ``full``: every step propagates the whole graph; ``local``: only the batch's neighbourhood
    #: (``Backbone.embed_targets``, :mod:`tru_dist.graph.blocks`), at most ``fanout`` neighbours
    #: per node and layer (0 = all: the same gradients as ``full``) — sampled-subgraph training
    #: for graphs whose full propagation does not fit or is too slow.
    propagation: Literal["full", "local"] = "full"
    fanout: NonNegInt = 0
    #: ``adam`` (``torch.optim.Adam``) or ``row_sparse_adam``: Adam that steps only the embedding
    #: rows a batch touched (:mod:`tru_dist.train.optim`) — for large graphs with local propagation,
    #: where dense Adam over every row dominates a step
    optimizer: Literal["adam", "row_sparse_adam"] = "adam"
    #: deterministic CPU kernels around every gradient step (training, replicas, unlearning
    #: updates), so the same config and seed give bit-identical parameters with any number of
    #: runs (:mod:`tru_dist.train.determinism`); ``false``: PyTorch's default kernels
    deterministic: bool = True

    @field_validator("progress", mode="before")
    @classmethod
    def _progress(cls, v: object) -> object:
        """YAML 1.1 reads an unquoted ``on`` / ``off`` (``--train.progress=off``, ``progress: off``
        in a file) as a boolean: take it for the word it was."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = str(v).strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be {DEVICES}, not {v!r}")
        return v


class EvalConfig(_Strict):
    ks: Annotated[list[PosInt], Field(min_length=1), Valid("a non-empty list of distinct integers >= 1")] = [
        10, 20, 50]
    metric: str = "recall@20"
    batch_users: PosInt = 4096

    @field_validator("ks")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        """Each cut-off once: ``[5, 5]`` was collapsed to ``[5]`` downstream without a word."""
        if len(set(v)) != len(v):
            raise ValueError("a cut-off is listed more than once")
        return v


class GateConfig(_Strict):
    """Ranking fusion gate (DESIGN §5): g_ui = σ((s_ui − t_ui)/T); G = β g + (1−β) P_i, with
    t_ui the user's K-th score (``target: topk``) or the pair's quantile-matched target score
    (``target: calibrated``, :mod:`tru_dist.unlearn.tru.gate`)."""

    enabled: bool = True
    target: Literal["calibrated", "topk"] = "calibrated"
    #: calibrated target: the gate runs its own optimisation (unlearn.lr / unlearn.epochs are
    #: the top-K gate's and the other methods'): initial Adam step size (halved on overshoot),
    #: most epochs, and the weight of its forget term (times unlearn.lambda_f)
    lr: LearningRate = 0.04
    max_epochs: PosInt = 30
    weight: NonNegFloat = 10.0
    #: held-out (valid) pairs sampled for the calibrated reference (all when fewer)
    reference_pairs: PosInt = 20000
    #: κ: weight of the keep term on retained pairs, κ·½[(s_ui − s⁰_ui)² + (s_uj − s⁰_uj)²]
    #: (s⁰ = the scores after the deletion step); calibrated target only
    keep_weight: NonNegFloat = 30.0
    #: κ_o: the same keep term on the retained train pairs of the deleted pairs' own users (not
    #: reset) — the users whose rows the update moves — one batch per step; calibrated only
    owner_keep_weight: NonNegFloat = 0.0
    #: calibrated target for pairs of items with no retained train pair: their own ranks with
    #: the items' ID rows zeroed (``zeroed``), the uniform distribution (``uniform``), or their
    #: ranks with each such item's embedding replaced by the mean embedding of its
    #: ``cold_neighbours`` nearest retained items in content-feature space (``neighbours``;
    #: uniform on data without item features and for ID-only backbones), or their ranks with
    #: the deleted items' ID rows set to the row of an item trained only as a negative
    #: (``negative``: −r·ē_u/‖ē_u‖, r the never-trained items' mean row norm; zeroed without any)
    cold_reference: Literal["zeroed", "negative", "uniform", "neighbours"] = "zeroed"
    cold_neighbours: PosInt = 5
    #: when > 0 and the training data hold at least this many items no train pair ever used
    #: (deleted items aside), the cold pairs' targets are quantile-matched to the ranks the start
    #: model gives those items (for the cold pairs' users) instead of ``cold_reference``: the
    #: model's own picture of an item it only ever saw as a negative, which is what Retrain
    #: makes of a deleted item. 0 = off
    untrained_items_min: NonNegInt = 0
    #: calibrated target: a gate pass without a smaller calibration gap puts the best
    #: parameters back and halves the step size; after this many halvings in a row, stop
    patience: NonNegInt = 2
    #: calibrated target: once the line search has halved the step at least once, stop when this
    #: many gate passes in a row have not lowered the calibration gap (progress by the transport
    #: tie-break alone: the creeping phase); 0 = off
    plateau: NonNegInt = 3
    #: calibrated target: a gate pass at which no deleted pair changed rank (the calibration gap
    #: and the transport exactly the best pass's) is neither progress nor an overshoot — the
    #: step was too small to reorder anything — so the line search keeps its step and goes on
    #: (bounded by max_epochs) instead of putting back and halving; false: such a pass is a stall
    wait_unmoved: bool = True
    #: λ_u, calibrated target: the utility check — the run keeps its update only if
    #: gap_end + λ_u·max(0, 1 − h_end/h⁰) < gap_start, h = reference (valid) pairs in their user's
    #: top ``top_k`` at the end and at the start; else it returns the start
    #: (:func:`tru_dist.unlearn.tru.gate.keeps_update`); 0 = off
    utility_weight: NonNegFloat = 1.0
    top_k: PosInt = 20
    temperature: PosFloat = 0.5
    beta: Unit = 0.5
    hinge_weight: NonNegFloat = 1.0
    margin: NonNegFloat = 0.1
    epsilon: NonNegFloat = 0.05
    #: α, calibrated target: the update starts only if a two-sample KS test at level α rejects
    #: that the deleted pairs are already ranked like their targets — the first gap must exceed
    #: the test's critical value c(α)·sqrt(1/n + w²/m) (:func:`tru_dist.unlearn.tru.gate.noise_floor`);
    #: 0 = off (the gap is compared with ``epsilon`` alone)
    significance: Unit = 0.0


class ScalingConfig(_Strict):
    """Branch-wise modality scaling: α_b = clip((r_b / max r)^γ, α_min, 1)."""

    enabled: bool = True
    gamma: NonNegFloat = 1.0
    alpha_min: Fraction = 0.1
    project_conflicts: bool = False
    delta: PosFloat = 1e-12


class IsolationConfig(_Strict):
    """Capacity-aware layer isolation under a parameter budget ρ·|θ|, plus k-hop row isolation."""

    enabled: bool = True
    budget: Fraction = 0.5
    row_hops: Layers = 2
    delta: PosFloat = 1e-12
    #: whether groups every user or item passes through (encoders, fusion, transformers) may
    #: be selected; False = only the row-indexed tables compete for the budget
    shared_layers: bool = True
    #: whether the rows of D_f's items that still have a retained train pair may move. False:
    #: only items left with no retained pair move (an item row serves every user who ranks the
    #: item, a user row one list), so an interactions deletion runs through its users' rows
    retained_item_rows: bool = True
    #: whether a deleted pair's user row may move when the pair's item is cold (no retained train
    #: pair uses it). False: such a pair moves through its item's row alone (a row no retained
    #: list reads), so a user whose deleted pairs are all on cold items keeps its row and list
    cold_item_user_rows: bool = True
    #: whether D_f's cold items' rows (no retained train pair uses them) move whatever the budget
    #: chose: a row no retained pair trains claims no capacity of D_r, so an item table the budget
    #: left frozen is still opened for those rows alone (``stats["isolation"]["cold_rows_added"]``;
    #: MIG-GT's default, measured in ``tru_dist.unlearn.tru.isolation``)
    free_cold_item_rows: bool = False
    #: > 0: adaptive budget — the groups (in decreasing Fisher ratio) that hold this share of
    #: the forget Fisher mass (``isolation.decide_isolation_by_mass``); 0: the fixed budget ρ
    mass: Unit = 0.0


class UnlearnConfig(_Strict):
    """Approximate unlearning: L = λ_r·BPR(D_r sample) + λ_f·forget loss, Adam, a few epochs."""

    method: str = "tru"
    epochs: NonNegInt = 10
    lr: LearningRate = 1e-3
    lambda_f: NonNegFloat = 1.0
    lambda_r: NonNegFloat = 1.0
    batch_size: PosInt = 2048
    seed: Seed = 0
    reset_deleted_users: bool = True
    sisa_shards: PosInt = 4
    #: deletion-local updates: ``local`` computes each step's forget and retain terms on the
    #: batches' neighbourhood only (``fanout`` as in ``train``); gate passes still rank all items.
    propagation: Literal["full", "local"] = "full"
    fanout: NonNegInt = 0
    gate: GateConfig = GateConfig()
    scaling: ScalingConfig = ScalingConfig()
    isolation: IsolationConfig = IsolationConfig()


class DistConfig(_Strict):
    """Ray/torch.distributed settings. ``workers=1`` is the single-process path.

    ``address``: ``local`` (an in-process Ray, dashboard off, loopback), ``auto`` (the
    running cluster, e.g. inside ``ray job submit``), ``ray://host:port`` (Ray Client), a running
    cluster's GCS ``host:port`` (as ``ray.init`` takes it) or ``none`` (no Ray: W local processes
    over gloo, or the plain call at W = 1).
    ``fault_rank``/``fault_step``: make that rank raise once at that global step (tests of
    Ray Train's restart from the last checkpoint). ``partition``: user ranges with equal
    edge counts (``balanced``) or equal user counts. ``feature_dtype``: dtype of the
    feature slice a worker keeps resident. ``trial_groups`` (sweeps at W > 1): ``per-trial``
    runs every trial as its own Ray Train run; ``reused`` starts a few W-rank worker groups
    once and sends every trial to them (:mod:`tru_dist.tune.group_trials`); ``auto`` is
    ``reused`` on a local Ray and ``per-trial`` on a cluster.
    """

    workers: PosInt = 1
    gpus_per_worker: NonNegFloat = 0.0
    address: Annotated[str, Valid("local, none, auto, ray://host:port (Ray Client) or a running cluster's "
                                  "host:port")] = "local"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    storage_path: str | None = None
    max_failures: NonNegInt = 2
    fault_rank: OffOrNonNeg = -1
    fault_step: OffOrNonNeg = -1
    memory_per_worker_gb: PosFloat = 8.0
    partition: Literal["balanced", "contiguous"] = "balanced"
    feature_dtype: Literal["float32", "float16"] = "float32"
    trial_groups: Literal["auto", "per-trial", "reused"] = "auto"

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        """What :func:`~tru_dist.distributed.launch.connect` and ``ray.init`` take (``host`` may be
        an ``[IPv6]``): anything else reached ``ray.init``, which raised a raw ValueError."""
        v = str(v).strip()
        host = r"(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+)"
        if v in ("local", "none", "auto") or re.fullmatch(rf"ray://{host}(:\d+)?/?|{host}:\d+", v):
            return v
        raise ValueError(f"not a Ray address: {v!r}")


class Config(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    dist: DistConfig = DistConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown config key '{loc}' (valid keys: {', '.join(valid_keys())})")
            continue
        valid = _valid_range(err["loc"], root or Config)
        what = repr(err["input"]) if not isinstance(err["input"], dict) else "a mapping"
        why = f"must be {valid}" if valid else err["msg"][0].lower() + err["msg"][1:]
        parts.append(f"invalid value for '{loc}': {what} ({why})")
    return "; ".join(parts)


def _valid_range(loc: tuple, root: type[BaseModel]) -> str | None:
    """The :class:`Valid` text of the field at ``loc`` below ``root`` (a list index or dict key
    in ``loc`` selects the element type), or None when the field states no range."""
    model: type[BaseModel] | None = root
    ann: Any = None
    meta: list = []
    for part in loc:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            field = model.model_fields[part]
            ann, meta = field.annotation, list(field.metadata)
        elif ann is not None and get_args(ann):  # list[T] / dict[str, T]: the element's metadata
            inner = get_args(ann)[-1]
            args = get_args(inner)
            ann, meta = (args[0], list(args[1:])) if args and hasattr(inner, "__metadata__") else (inner, [])
        else:
            return None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return next((m.text for m in meta if isinstance(m, Valid)), None)


def _agreed_model(*named: tuple[str, Any]) -> str | None:
    """The one backbone named by the places given as (where, name) — ``--model``, an override's
    ``model.name``, the config file's — or None when none names one. Two that disagree are a
    ConfigError: the file's (or an override's) name won over ``--model lightgcn`` and trained
    MGCN with LightGCN's published defaults, as ``--config OTHER_RUN/config.yaml`` with another
    ``--model`` did."""
    given = [(where, str(name)) for where, name in named if name is not None]
    for where, name in given[1:]:
        if canonical_name(name) != canonical_name(given[0][1]):
            raise ConfigError(f"{given[0][0]} {given[0][1]} and {where} {name} disagree; drop one (or make "
                              "them name the same backbone)")
    return given[0][1] if given else None


def check_tuned_for_model(path: str | Path, tuning: dict[str, Any], model: str) -> None:
    """A tuned file whose provenance names another backbone (``tuning.model``) is a one-line
    ConfigError: its settings were chosen on that model's originals (MGCN's tuned TRU collapsed
    MIG-GT to recall 0.089, issue 11), and ``unlearn --config`` / ``compare --tuned`` applied
    them without a word. A file that names no model (hand-written) is taken as it is."""
    tuned_for = tuning.get("model")
    if tuned_for is None:
        return
    if not isinstance(tuned_for, str) or canonical_name(tuned_for) != canonical_name(model):
        raise ConfigError(f"{path} was tuned for model {tuned_for!r} (its tuning.model), not {model}; pass "
                          f"files tuned for {model} (a sweep on {model} writes them under <sweep>/tuned) or "
                          "none")


def refuse_flag_overrides(command: str, overrides: list[str] | dict[str, Any] | None,
                          owned: dict[str, str]) -> None:
    """Refuse a ``--key=value`` override of a config key that a flag of ``command`` sets
    (``owned``: config key -> flag), e.g. ``--dist.workers=2`` beside ``--workers 1`` or
    ``--train.epochs=2`` beside ``bench train --epochs 1``: the override won without a word, so
    the command ran (and recorded) something other than its flag said. Checked before any work."""
    tree = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    given = leaf_values(tree)
    for key, flag in owned.items():
        if key in given:
            value = given[key]
            raise ConfigError(f"{command}: --{key}={value} contradicts {flag}, which sets {key}; "
                              f"pass {flag} {value} instead of the override")


def leaf_values(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf under a config tree (its keys prefixed ``prefix.``, if
    any): ``{"train": {"epochs": 2}}`` → ``{"train.epochs": 2}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(leaf_values(value, name) if isinstance(value, dict) else {name: value})
    return out


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the config tree, e.g. ``unlearn.gate.beta``."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _resolve_key(key: str) -> str:
    keys = valid_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"config key '{key}' is ambiguous: write one of {', '.join(matches)}")
    inside = [k for k in keys if k.startswith(key + ".")]
    if inside:  # `--train=5`: a section, not a key
        shown = ", ".join(inside[:6]) + (", ..." if len(inside) > 6 else "")
        raise ConfigError(f"'{key}' is a section of keys ({shown}); set one of them: --{key}.KEY=VALUE")
    raise ConfigError(f"unknown config key '{key}' (valid keys: {', '.join(keys)})")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def deep_merge(base: dict, top: dict, _where: str = "") -> dict:
    """``top`` layered over ``base`` key by key (nested dicts merged; ``modality_layers`` replaced
    whole, since it is a mapping of values, not a config section).

    A section on one side and a value (not null) on the other is a one-line ConfigError: the
    value replaced the section, and an override of a key in it then replaced the value, so a
    file's ``train: 5`` with ``--train.epochs=1`` ran with the typed defaults — the model's
    published ones gone — where the file alone was refused."""
    out = dict(base)
    for k, v in top.items():
        key = f"{_where}{k}"
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and k != "modality_layers":
            out[k] = deep_merge(old, v, f"{key}.")
            continue
        if k != "modality_layers" and None not in (v, old) and isinstance(v, dict) != isinstance(old, dict):
            if isinstance(v, dict):  # `--train.epochs={a: 1}`: a section where a value belongs
                raise ConfigError(f"'{key}' takes a value (now {old!r:.40}), not a section of keys "
                                  f"({v!r:.40}); write it as {key}=VALUE")
            raise ConfigError(f"'{key}' is a section of keys, not {v!r:.60}; write it as "
                              f"{key}: {{KEY: VALUE}} (or its keys indented under it), or drop it")
        out[k] = v
    return out


#: recorded by train (:func:`record_data_location`), never set by a layer
RECORDED_KEY = "data.resolved_path"


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=1e-3", "--beta=0.7"]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict = {}
    for raw in items:
        item = raw[2:] if raw.startswith("--") else raw
        if "=" not in item:
            raise ConfigError(f"override '{raw}' is not of the form --key=value (e.g. --train.lr=1e-3)")
        key, text = item.split("=", 1)
        key = _resolve_key(key.strip())
        if key == RECORDED_KEY:
            raise ConfigError(f"{RECORDED_KEY} is recorded by train (the absolute form of data.path); "
                              "set data.path instead")
        if key == "data.path" and not text.strip():  # read as None: the embedded demo data, silently
            raise ConfigError("--data.path= is empty (an unset shell variable?); name a dataset folder or a "
                              "synthetic spec")
        _set_dotted(tree, key, yaml_value(text) if text else None)
    return tree


def is_folder_path(path: str | None) -> bool:
    """True for a dataset folder path; False for no path or a synthetic spec (regenerated)."""
    return path is not None and not str(path).startswith("synthetic")


def folder_name(path: str | Path) -> str:
    """The name of the folder ``path`` names, as the user wrote it (``data/dense_train/`` ->
    ``dense_train``, ``.`` -> the current folder's name)."""
    return Path(os.path.abspath(path)).name


def absolute_data_path(path: str | None) -> str | None:
    """``path`` made absolute from the current directory (None for no path / a synthetic spec):
    what train records as ``data.resolved_path``."""
    return os.path.realpath(path) if is_folder_path(path) else None


def record_data_location(cfg: Config) -> Config:
    """A copy of ``cfg`` whose ``data.resolved_path`` is ``data.path`` made absolute from the
    current directory (None for a synthetic spec): train calls it, so that the run finds its
    data from another directory too (:mod:`tru_dist.data.location`)."""
    out = cfg.model_copy(deep=True)
    out.data.resolved_path = absolute_data_path(cfg.data.path)
    return out


class _DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice."""


class _DecimalLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose numbers are decimal: YAML 1.1 reads ``010`` as octal 8 and
    ``1:0`` as base-60 60, so ``--train.epochs=010`` trained 8 epochs and ``1:0`` 60. Here an
    integer is ``[-+]?(0|[1-9][0-9_]*)`` and floats lose the base-60 form; ``010``, ``0x10`` and
    ``1:0`` stay strings, which an integer setting then takes as written (``010`` → 10) or
    refuses (``0x10``, ``1:0``)."""


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_DecimalLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_DecimalLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"),
                                     list("-+0123456789"))
_DecimalLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def yaml_value(text: str) -> Any:
    """One ``--key=value`` value parsed as YAML with decimal numbers (:class:`_DecimalLoader`)."""
    return yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 (a SafeLoader subclass)


class _UniqueKeyLoader(_DecimalLoader):
    """``yaml.SafeLoader`` (with decimal numbers, :class:`_DecimalLoader`) that refuses a key
    given twice in one mapping: PyYAML keeps the last one, so ``epochs: 1`` then ``epochs: 2``
    trained 2 epochs without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found and where (``found character '\\t' that cannot start any token (line 2,
    column 1; YAML indents with spaces, not tabs)``); its first line alone was the context
    ("while scanning for the next token"), which names neither."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    tab = "; YAML indents with spaces, not tabs" if "'\\t'" in problem else ""
    return f"{problem}{where}{tab}"


def load_yaml(path: str | Path) -> dict:
    """The mapping in the YAML file ``path``; a missing, unreadable, non-text, empty (or
    comment-only) or non-mapping file is a one-line ConfigError naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():  # read_text raised a raw IsADirectoryError
        raise ConfigError(f"config file {path} is a folder; pass a YAML file (e.g. RUN/config.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a binary file, or UTF-16: not YAML text
        raise ConfigError(f"config file {path} is {not_utf8(exc)}; pass a YAML file saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}); pass a readable "
                          "YAML file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:  # an empty or comment-only file: most likely the wrong file, or one not yet saved
        raise ConfigError(f"config file {path} holds no settings (it is empty or only comments); pass the "
                          "file that holds them, or write `{}` in it for a file that sets nothing")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def dataset_name(data: str | Path | None) -> str | None:
    """The dataset a ``--data`` argument names, canonical (``../shared/data/amazon-scientific``
    -> ``scientific``); None for synthetic specs."""
    return canonical_dataset(data) if is_folder_path(None if data is None else str(data)) else None


def _flat(tree: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in tree.items():
        if isinstance(v, dict) and k != "modality_layers":
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={v}")
    return out


def defaults_used(model: str, data: str | Path | None = None) -> str:
    """One line naming the packaged defaults under a config of ``model`` trained on ``data`` and
    every value they set, e.g. ``model defaults miggt (published; tru_dist/configs/models/miggt.yaml):
    model.dim=64, ..., train.lr=0.01 | dataset defaults scientific: eval.metric=recall@20``."""
    key = canonical_name(model)
    text = (f"model defaults {key} (published; tru_dist/configs/models/{key}.yaml): "
            + ", ".join(_flat(model_defaults(key))))
    name = dataset_name(data)  # canonical: the lookup key only (dense_train -> densetrain)
    if name is not None:
        layer = packaged_defaults("datasets", name)
        folder = folder_name(data)  # what the user named, shown as is
        text += (f" | dataset defaults {name}: " + ", ".join(_flat(layer)) if layer is not None
                 else f" | no packaged dataset defaults for '{folder}' (packaged: "
                      f"{', '.join(packaged_names('datasets')) or 'none'})")
    return text


def model_defaults(name: str) -> dict:
    """The published defaults of model ``name`` (any spelling); ConfigError when there are none."""
    key = canonical_name(name)
    tree = packaged_defaults("models", key)
    if tree is None:
        shipped = packaged_names("models")
        if not shipped:
            raise ConfigError("no model defaults are installed (tru_dist/configs/models is missing from the "
                              "package); reinstall tru-dist")
        raise ConfigError(f"unknown model '{name}' (choose one of: {', '.join(shipped)})")
    return tree


def build_config(
    *,
    model: str | None = None,
    dataset: str | Path | None = None,
    data: str | Path | None = None,
    config_file: str | Path | None = None,
    seed: int | None = None,
    base: Config | dict | None = None,
    overrides: list[str] | dict | None = None,
) -> Config:
    """The one config builder: the CLI, the ``jobs/`` entry points, sweeps, ``unlearn`` and
    ``evaluate`` all call it.

    Layers, later wins: typed defaults < the dataset's packaged defaults < the model's
    published defaults < ``config_file`` < ``data``/``seed`` < ``overrides``.

    * ``data`` sets ``data.path`` and, without ``dataset``, names the dataset
      (:func:`dataset_name`; canonical; no layer when nothing is packaged for it);
    * the model is the first named of: ``overrides`` ``model.name``, ``model``, the file's
      ``model.name``, the typed default (``lightgcn``), in any spelling; its packaged defaults
      are always applied (:func:`defaults_used` says which, for a log line);
    * ``seed`` sets ``train.seed`` and ``unlearn.seed``;
    * ``base`` (a trained run's saved config) replaces the first three layers: a run's
      defaults are what it was trained with, so a later command layers only the file and
      the overrides over it;
    * ``data.resolved_path`` is a record (:class:`DataConfig`): ``base``'s is kept, a config
      file's is ignored, an override of it is an error, and a layer that changes ``base``'s
      ``data.path`` records the new path's absolute form (:func:`record_data_location`);
    * a top-level ``tuning:`` block in ``config_file`` (the provenance of a tuned file,
      :mod:`tru_dist.unlearn.tuned`, or a sweep's ``best/*.yaml``) is ignored.
    """
    if model is not None and not str(model).strip():
        raise ConfigError("--model is empty; name a backbone: lightgcn, mgcn or miggt")
    if config_file is not None and not str(config_file).strip():
        raise ConfigError("--config is empty; pass a YAML file (or leave --config out)")
    if overrides is not None and not isinstance(overrides, dict):
        overrides = parse_overrides(list(overrides))
    flags: list[str] = []
    if data is not None:
        flags.append(f"data.path={data}")
        dataset = dataset or dataset_name(data)
    if seed is not None:
        flags += [f"train.seed={int(seed)}", f"unlearn.seed={int(seed)}"]
    overrides = deep_merge(parse_overrides(flags), overrides or {})
    file_tree = load_yaml(config_file) if config_file else {}
    user_tree = {k: v for k, v in file_tree.items() if k != "tuning"}
    if isinstance(user_tree.get("data"), dict):  # a run's config.yaml reused: its record is not a setting
        user_tree["data"] = {k: v for k, v in user_tree["data"].items() if k != "resolved_path"}
    if base is not None:
        tree = base.to_dict() if isinstance(base, Config) else dict(base)
    else:
        tree = {}
        if dataset:
            layer = packaged_defaults("datasets", canonical_dataset(dataset))
            if layer is not None:
                tree = deep_merge(tree, layer)
        named_in_file = user_tree.get("model")  # a file's `model: 5` is the merge's error below
        in_file = named_in_file.get("name") if isinstance(named_in_file, dict) else None
        named_override = overrides.get("model", {}).get("name") if isinstance(overrides.get("model"), dict) \
            else None
        model = _agreed_model(("--model", model), ("--model.name", named_override),
                              (f"{config_file}'s model.name", in_file))
        model = canonical_name(model or ModelConfig().name)
        tree = deep_merge(tree, model_defaults(model))
        tree = deep_merge(tree, {"model": {"name": model}})
        if is_folder_path(None if data is None else str(data)) and "name" not in tree.get("data", {}):
            # a folder without packaged defaults is named by itself, not by the typed default
            tree = deep_merge(tree, {"data": {"name": folder_name(data)}})
    tree = deep_merge(tree, user_tree)
    tree = deep_merge(tree, overrides)
    cfg = Config.from_dict(tree)
    if isinstance(file_tree.get("tuning"), dict):
        check_tuned_for_model(config_file, file_tree["tuning"], cfg.model.name)
    if base is not None:
        given = base.data.path if isinstance(base, Config) else (base.get("data") or {}).get("path")
        # record where the data opened now is: another data.path given, or the run's own path as
        # it resolves from here (a run copied with its data and unlearned from the copy records
        # the copy's store, not the one the original run was trained on)
        here = is_folder_path(cfg.data.path) and Path(cfg.data.path).exists()
        if cfg.data.path != given or here:
            cfg = record_data_location(cfg)
    return cfg
