"""``tru-dist compare``: every method on the same deletion step, judged against Retrain.

Per reporting seed s (``train.seed = unlearn.seed = s``; seeds below 100 — tuning seeds are
100 and up, and draw their forget sets from a disjoint pool, see :mod:`tru_dist.data.regimes`):

1. train the original model once on D (early stopping on valid); with ``originals`` set,
   the trained original is cached there keyed by (model, train config, data, seed), so
   every regime and every compare on the same data reuses it — and so is Retrain, keyed by
   the same on D_r (its recorded ``seconds`` are those of the run that trained it, which a
   cached row says with ``stats.cached``), so re-running the approximate methods does not
   retrain;
2. draw the forget set D_f (seeded); **the shared deletion step**
   (:func:`tru_dist.unlearn.deletion.build_deletion`): D_r, its graph, the users to reset —
   identical for every method, timed, part of every method's ``seconds``;
3. run each method from it with its own configuration (``tuned``: a folder of
   ``<method>-<regime>.yaml`` files chosen by a sweep on tuning seeds and valid data only,
   :mod:`tru_dist.unlearn.tuned`); Retrain trains from scratch on D_r; ``noop`` is the
   deletion step alone; ``retrain-reseed`` is a second Retrain under another training seed
   (cached like Retrain): its distance to Retrain is the noise floor training randomness sets;
4. evaluate every model on the retained data: utility = full-ranking metrics on retained
   users' test items; forget metrics = hit@10/20/50 and mean rank percentile of the deleted
   train pairs with the user's retained history masked; against Retrain: top-20 Jaccard
   over retained test users, the KS distance between forget-rank distributions, Spearman
   of forget ranks, and ``retrain_distance`` (:func:`tru_dist.unlearn.metrics.retrain_distance`);
5. optionally the audits (membership inference, backdoor). For a membership audit 5% of
   users are held out of training (every regime alike, so originals are shared); when
   whole users are deleted (users, poison) the pair attack draws its non-members from
   them (Retrain then sits near 0.5).

Over seeds: mean, std and a 95% confidence half-width (Student t) of every figure, and a
paired comparison of TRU against every other method on ``retrain_distance`` (per-seed
differences, their mean and 95% CI). Time: ``seconds`` = the deletion step + the method
(CUDA synchronised); ``speedup_vs_retrain`` per request; ``tuning_seconds`` from the tuned
file; ``speedup_amortised_100`` = 100·Retrain / (100·seconds + tuning_seconds). Nothing here
looks at test metrics to choose anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tru_dist import comm as collectives
from tru_dist.config import Config, check_tuned_for_model, deep_merge
from tru_dist.device import resolve_device
from tru_dist.errors import ConfigError
from tru_dist.io_utils import atomic_torch_save, atomic_write_json, atomic_write_text
from tru_dist.report.tables import audit_table, comparison_table, fmt, paired_table
from tru_dist.timing import warm_up_process
from tru_dist.train.size_warnings import logged_once

#: requests the amortised speedup spreads a tuning sweep over
AMORTISE_OVER = 100
#: regimes that delete whole users (their pair-MIA non-members come from held-out users)
WHOLE_USER_REGIMES = ("users", "poison")


@dataclass
class CompareSpec:
    regime: str = "users"
    policy: str = "random"
    fraction: float = 0.05
    methods: list[str] = field(default_factory=lambda: ["retrain", "noop", "reverse_bpr", "tru"])
    seeds: int | list[int] = 5
    audits: list[str] = field(default_factory=list)
    tuned: str | None = None
    originals: str | None = None
    hold_out_users: bool = False

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _seeded(cfg: Config, seed: int) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    cfg.unlearn.seed = seed
    return cfg


def method_configs(cfg: Config, spec: CompareSpec) -> dict[str, tuple[Config, dict | None]]:
    """{method: (its config, its tuning provenance or None)}; checks the seeds are held out.

    Without ``spec.tuned`` every method runs with ``cfg`` (and no tuning). With it, each
    tunable method gets its own file layered over ``cfg``; reporting seeds must be below
    100 and disjoint from every file's tuning seeds."""
    from tru_dist.audit.runner import AUDITS
    from tru_dist.data.regimes import is_tuning_seed
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.tuned import find_tuned, inherited_keys, read_tuned

    unknown = sorted(set(spec.audits) - set(AUDITS))
    if unknown:  # checked here, before any training (run_audits checks too, after every model)
        raise ConfigError(f"unknown audit(s) {', '.join(unknown)} (choose from: {', '.join(AUDITS)})")
    twice_audits = sorted({a for a in spec.audits if spec.audits.count(a) > 1})
    if twice_audits:  # --audit mia,mia was recorded as audits [mia, mia]
        raise ConfigError(f"--audit names {', '.join(twice_audits)} more than once; name each audit once")
    if not spec.methods:
        raise ConfigError("--methods names no method; e.g. --methods retrain,noop,tru")
    names = [get_method(m).name for m in spec.methods]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--methods names {', '.join(twice)} more than once; name each method once")
    if "retrain" not in names:
        _log("warning: --methods has no retrain, so there is no retrain_distance, no agreement with Retrain "
             "and no speed-up to report (those fields stay null); add retrain to --methods for them")
    seeds = spec.seed_list
    bad = [s for s in seeds if is_tuning_seed(s)]
    if bad:
        raise ConfigError(f"reporting seeds must be below 100 (100 and up are tuning seeds), got {bad}; "
                          "use --seeds N for seeds 0..N-1")
    out: dict[str, tuple[Config, dict | None]] = {}
    for name in spec.methods:
        canonical = get_method(name).name
        path = find_tuned(spec.tuned, canonical, spec.regime) if spec.tuned else None
        if path is None:
            out[canonical] = (cfg, None)
            continue
        overrides, tuning = read_tuned(path)
        check_tuned_for_model(path, tuning, cfg.model.name)
        overlap = sorted(set(seeds) & {int(x) for x in tuning.get("seeds", [])})
        if overlap:
            raise ConfigError(f"{path} was tuned on seeds {overlap}, which are reporting seeds here; a "
                              "method must not be judged on the forget sets it was tuned on")
        base = cfg.to_dict()
        merged = Config.from_dict(deep_merge(base, overrides))
        inherited = inherited_keys(canonical, overrides, base)
        if inherited:
            _log(f"{path} does not set {', '.join(inherited)}: {canonical} takes them from the base config "
                 "(recorded as tuning.inherited); pin them in the file to keep its tuned run fixed")
        out[canonical] = (merged, {**tuning, "file": str(path), "inherited": inherited})
    return out


def hold_out_users(data, fraction: float, seed: int):
    """Relabel every row of a seeded ``fraction`` of users as TEST, so no model trains on them.

    The membership attacks need non-member users with a known history; those users are
    exactly that. Returns (data, held-out user ids). Utility is then measured on the other
    users only (cold users would only add zeros to every method alike).
    """
    from dataclasses import replace

    from tru_dist.data.dataset import TEST, TRAIN

    rng = np.random.default_rng(seed + 7919)
    trained = np.unique(data.users[data.labels == TRAIN])
    n = max(1, int(round(fraction * len(trained))))
    held = np.sort(rng.choice(trained, size=n, replace=False)).astype(np.int64)
    labels = data.labels.copy()
    labels[np.isin(data.users, held)] = TEST
    return replace(data, labels=labels), held


def needs_held_out_users(spec: CompareSpec) -> bool:
    """User MIA always needs never-trained users, the pair MIA when whole users are deleted.
    Held out for any membership audit, whatever the regime, so that every regime audited on
    the same data trains (and, with ``originals``, caches) the very same original;
    ``hold_out_users`` holds them out without an audit (a run that shares those originals)."""
    return spec.hold_out_users or "user_mia" in spec.audits or "mia" in spec.audits


def _log(msg: str) -> None:
    if collectives.rank() == 0:
        print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check_workers(cfg: Config, spec: CompareSpec) -> None:
    """What a comparison on W > 1 workers cannot run, refused before anything starts."""
    w = cfg.dist.workers
    if w <= 1:
        return
    if spec.audits:
        raise ConfigError(f"--audit runs on one worker (its attackers read every user's scores); "
                          f"drop --audit or --workers={w}")
    if any(m.strip().lower() == "sisa" for m in spec.methods):
        raise ConfigError(f"sisa trains its own shard ensemble in one process; drop it from --methods or "
                          f"run with --workers=1 (not {w})")


def _shard_book(cfg: Config, data):
    """This rank's partition book at W > 1 (None at W = 1: the trainer's one-shard default)."""
    if not collectives.is_distributed():
        return None
    from tru_dist.graph.partition import PartitionBook

    return PartitionBook.for_data(data, collectives.world_size(), cfg.dist.partition)


def _original_key(cfg: Config, data) -> str:
    from tru_dist.train.trainer import data_signature

    labels = np.ascontiguousarray(data.labels).tobytes()
    pairs = np.ascontiguousarray(np.stack([data.users, data.items])).tobytes()
    # where it runs and how it reports progress do not change what is learnt
    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in ("device", "progress")}
    counts = {k: v for k, v in data_signature(data).items() if k != "train_digest"}  # the pairs: below
    blob = json.dumps({"model": cfg.to_dict()["model"], "train": train,
                       "data": counts, "meta": sorted(map(str, data.meta.get("poison", {})))},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob + hashlib.sha256(pairs + labels).digest()).hexdigest()[:20]


def note_cache_miss(path: Path | None) -> list[Path]:
    """Say why an original is trained afresh although ``path``'s folder holds originals of the
    same model and seed: each file name carries a key of the configuration and the data
    (``_original_key``), so another configuration, data set or tru-dist version whose key differs
    misses the cache. Returns those files (empty: a plain first run, nothing said). Not for
    Retrain: its key is D_r's, so every regime of one data set has its own, and a miss beside
    them is the normal case."""
    if path is None or path.exists():
        return []
    head = re.match(r".*?-seed\d+-", path.name).group(0)  # "<model>-seed<seed>-" (any W suffix)
    others = sorted(p for p in path.parent.glob(f"{head}*.pt") if p != path)
    if others:
        _log(f"no cached original for this configuration and data in {path.parent} ({len(others)} file(s) "
             f"{head}*.pt there were made with another configuration, data set or tru-dist version): "
             f"training it afresh; delete those files if they are stale")
    return others


def train_original(cfg: Config, data, cache: str | None):
    """(model, graph, seconds, info): the original, from ``cache`` when it was trained before.

    At W > 1 every rank trains its shard (same global steps as one process, to float
    tolerance); the cache holds the full state either way (user rows gathered) and is keyed
    by W as well when W > 1, so a W = 1 comparison never reuses a W = 2 original."""
    import torch

    from tru_dist.graph.context import build_rec_graph
    from tru_dist.models.registry import build_model, model_class
    from tru_dist.train.checkpoint import gather_state, local_state
    from tru_dist.train.trainer import fit

    book, rank = _shard_book(cfg, data), collectives.rank()
    path = _cache_path(cache, "", cfg, data)
    if path is not None and path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        graph = build_rec_graph(data, knn_k=cfg.model.knn_k, book=book, rank=rank,
                                device=resolve_device(cfg.train.device),
                                with_knn=model_class(cfg.model.name).uses_knn)
        model = build_model(cfg.model, graph, seed=cfg.train.seed).to(graph.ui.norm.device)
        lo, hi = graph.book.user_range(rank)
        model.load_state_dict(local_state(model, blob["state"], lo, hi))
        model.eval()
        return model, graph, float(blob["seconds"]), dict(blob["info"])
    note_cache_miss(path)
    t0 = time.perf_counter()
    model, graph, result = fit(cfg, data, book=book, rank=rank)
    seconds = time.perf_counter() - t0
    info = {"epochs": int(result.epochs), "best_epoch": int(result.best_epoch)}
    if path is not None:
        state = gather_state(model) if book is not None else model.state_dict()  # collective at W > 1
        if rank == 0:
            atomic_torch_save({"state": state, "seconds": seconds, "info": info}, path)
    return model, graph, seconds, info


def _cache_path(cache: str | None, prefix: str, cfg: Config, data) -> Path | None:
    if not cache:
        return None
    suffix = f"-w{collectives.world_size()}" if collectives.is_distributed() else ""
    name = f"{prefix}{cfg.model.name}-seed{cfg.train.seed}-{_original_key(cfg, data)}{suffix}.pt"
    return Path(cache) / name


def cached_retrain(cfg: Config, deletion, cache: str | None):
    """Retrain's :class:`~tru_dist.unlearn.base.UnlearnResult`, from ``cache`` when this very
    Retrain (model, train config, D_r, seed) was trained before.

    Retrain is deterministic given those, so a cached one is the same model; its ``seconds``
    are the ones measured when it was trained (deletion step included), flagged by
    ``stats["cached"] = True`` so a report can say the time was not measured in this run."""
    import torch

    from tru_dist.models.registry import build_model
    from tru_dist.train.checkpoint import gather_state, local_state
    from tru_dist.unlearn.base import UnlearnResult, get_method

    graph = deletion.graph_after
    path = _cache_path(cache, "retrain-", cfg, deletion.data_after)
    if path is not None and path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(cfg.model, graph, seed=cfg.train.seed).to(graph.ui.norm.device)
        lo, hi = graph.book.user_range(graph.rank)
        model.load_state_dict(local_state(model, blob["state"], lo, hi))
        model.eval()
        return UnlearnResult(model, {**blob["stats"], "cached": True}, float(blob["seconds"]))
    result = get_method("retrain").unlearn(None, deletion, cfg)
    if path is not None:
        state = gather_state(result.model) if collectives.is_distributed() else result.model.state_dict()
        if collectives.rank() == 0:
            stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}
            atomic_torch_save({"state": state, "seconds": result.seconds, "stats": stats}, path)
    return result


def judge_models(models: dict[str, Any], graph, graph_after, data_after, forget, ks, users=None
                 ) -> dict[str, dict]:
    """Step 4 of the module docstring for every model of ``models`` ({name: model}): ``test`` and
    ``valid`` utility on ``data_after`` (D_r; ``users``: only these users, None = all),
    ``forget`` metrics of ``forget``'s deleted train pairs and — when ``models`` holds a
    ``retrain`` — ``agreement`` with it and ``retrain_distance``. ``original`` serves with
    ``graph`` (the one it was trained on), every other model with ``graph_after`` (D_r's).
    One propagation per model for all its figures."""
    from tru_dist.train.evaluate import eval_embeddings, evaluate
    from tru_dist.unlearn.metrics import agreement, forget_metrics, retrain_distance

    out: dict[str, dict] = {}
    retrain = models.get("retrain")
    retrain_emb = eval_embeddings(retrain, graph_after) if retrain is not None else None
    for name, model in models.items():
        # the original serves with the graph it was trained on; every other model with D_r's
        g = graph if name == "original" else graph_after
        emb = eval_embeddings(model, g)  # one propagation per model for all its metrics
        entry = out[name] = {}
        entry["test"] = evaluate(model, g, data_after, "test", ks, users=users, emb=emb)
        entry["valid"] = evaluate(model, g, data_after, "valid", ks, users=users, emb=emb)
        entry["forget"] = forget_metrics(model, g, data_after, forget, ks, emb=emb)
        if retrain is not None:
            entry["agreement"] = agreement(model, retrain, g, data_after, forget, retrain_graph=graph_after,
                                           emb=emb, retrain_emb=retrain_emb)
    if retrain is not None:
        r_recall = out["retrain"]["test"]["recall@20"]
        for entry in out.values():
            entry["retrain_distance"] = retrain_distance(entry["test"]["recall@20"], r_recall,
                                                         entry["agreement"]["forget_rank_ks"])
    return out


def run_seed(cfg: Config, spec: CompareSpec, seed: int, data=None,
             configs: dict[str, tuple[Config, dict | None]] | None = None) -> dict:
    """One seed of the comparison: returns {method: {test, forget, agreement, seconds, ...}}."""
    from tru_dist.data.regimes import forget_set
    from tru_dist.data.source import open_data
    from tru_dist.unlearn.base import get_method
    from tru_dist.unlearn.deletion import build_deletion, check_retains_train
    from tru_dist.unlearn.retrain import reseeded

    cfg = _seeded(cfg, seed)
    configs = configs if configs is not None else method_configs(cfg, spec)
    data = data if data is not None else open_data(cfg.data.path)
    if spec.regime == "poison" and "poison" not in data.meta:
        from tru_dist.data.poison import inject_poison

        data = inject_poison(data, fake_user_fraction=spec.fraction, seed=seed)
    held_out = None
    if needs_held_out_users(spec):
        data, held_out = hold_out_users(data, 0.05, seed)
    # the forget set depends on the data and seed only: drawn (and a deletion of every train pair
    # refused) before the original trains
    forget = forget_set(data, spec.regime, spec.fraction, seed, policy=spec.policy)
    check_retains_train(data, forget)
    original, graph, original_seconds, info = train_original(cfg, data, spec.originals)
    _log(f"seed {seed}: original {cfg.model.name} ready ({original_seconds:.1f}s to train, "
         f"{info['epochs']} epochs, best {info['best_epoch']})")

    deletion = build_deletion(data, graph, forget, reset=cfg.unlearn.reset_deleted_users)
    graph_after, data_after = deletion.graph_after, deletion.data_after
    ks = tuple(sorted({*cfg.eval.ks, 10, 20, 50}))
    # utility users: everyone the original trained on and Retrain still serves
    scored = None if held_out is None else np.setdiff1d(np.arange(data.n_users), held_out)

    models: dict[str, object] = {"original": original}
    out: dict[str, dict] = {}
    warm_up_process()  # every method timed alike: no one-time import charged to the first
    names = list(configs)
    if "retrain" in names:  # Retrain first: every other method is compared with it
        names.remove("retrain")
        names.insert(0, "retrain")
    for name in names:
        mcfg, tuning = configs[name]
        if name == "retrain":
            result = cached_retrain(_seeded(mcfg, seed), deletion, spec.originals)
        elif name == "retrain-reseed":  # another Retrain, cached as one: the noise floor
            other = reseeded(_seeded(mcfg, seed))
            result = cached_retrain(other, deletion, spec.originals)
            result.stats["train_seed"] = other.train.seed
        else:
            result = get_method(name).unlearn(original, deletion, _seeded(mcfg, seed))  # methods copy it
        models[name] = result.model
        out[name] = {"seconds": result.seconds, "stats": result.stats,
                     "tuning_seconds": float(tuning["seconds"]) if tuning else 0.0}
        _log(f"seed {seed}: {name} done in {result.seconds:.2f}s")
    out["original"] = {"seconds": original_seconds, "stats": info}

    for name, figures in judge_models(models, graph, graph_after, data_after, forget, ks,
                                      users=scored).items():
        out[name].update(figures)
    retrain = models.get("retrain")
    if retrain is not None:
        for name, entry in out.items():
            if name == "original":
                continue
            r_sec = out["retrain"]["seconds"]
            entry["speedup_vs_retrain"] = r_sec / max(entry["seconds"], 1e-9)
            entry["speedup_amortised_100"] = (AMORTISE_OVER * r_sec) / max(
                AMORTISE_OVER * entry["seconds"] + entry.get("tuning_seconds", 0.0), 1e-9)

    if spec.audits:
        from tru_dist.audit.runner import run_audits

        methods = {n: m for n, m in models.items() if n not in ("original", "retrain")}
        audits = run_audits(spec.audits, original, retrain, methods, deletion, cfg, seed,
                            nonmember_users=held_out)
        for name, figures in audits.items():
            out.setdefault(name, {}).update(figures)
    out["_forget_set"] = deletion.summary()
    return out


def t95(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_ci(values: list) -> tuple[float | None, float | None, float | None]:
    """(mean, std, 95% CI half-width) of the finite values; None where undefined."""
    vals = [float(v) for v in values if isinstance(v, int | float) and v is not None and not np.isnan(v)]
    if not vals:
        return None, None, None
    if len(vals) == 1:
        return vals[0], None, None
    std = float(np.std(vals, ddof=1))
    return float(np.mean(vals)), std, t95(len(vals) - 1) * std / np.sqrt(len(vals))


SCALARS = ("seconds", "speedup_vs_retrain", "speedup_amortised_100", "tuning_seconds", "retrain_distance")


def aggregate(per_seed: list[dict]) -> dict:
    """Mean over seeds of every scalar, with ``<group>_std`` and ``<group>_ci`` companions."""
    names = [n for n in per_seed[0] if not n.startswith("_")]
    methods: dict[str, dict] = {}
    for name in names:
        runs = [r[name] for r in per_seed if name in r]
        entry: dict = {}
        for group in {g for r in runs for g, v in r.items() if isinstance(v, dict) and g != "stats"}:
            keys = {k for r in runs for k, v in r.get(group, {}).items() if isinstance(v, int | float)}
            mean, std, ci = {}, {}, {}
            for k in sorted(keys):
                mean[k], std[k], ci[k] = mean_ci([r.get(group, {}).get(k) for r in runs])
            entry[group], entry[f"{group}_std"], entry[f"{group}_ci"] = mean, std, ci
            notes = sorted({r[group]["note"] for r in runs if isinstance(r.get(group, {}).get("note"), str)})
            if notes:  # why an audit gave no figure (NaN): kept, not dropped with the non-numbers
                entry[f"{group}_notes"] = notes
            lists = {k for r in runs for k, v in r.get(group, {}).items() if isinstance(v, list)}
            for k in lists:  # e.g. bootstrap CI: average the bounds
                arr = np.array([r[group][k] for r in runs if k in r.get(group, {})], dtype=float)
                entry[group][k] = arr.mean(0).tolist()
        for k in SCALARS:
            entry[k], entry[f"{k}_std"], entry[f"{k}_ci"] = mean_ci([r.get(k) for r in runs])
        entry["per_seed"] = {k: [r.get(k) for r in runs] for k in ("retrain_distance", "seconds")}
        entry["stats"] = [r.get("stats", {}) for r in runs]
        methods[name] = entry
    order = ["original", "retrain"] + [n for n in methods if n not in ("original", "retrain")]
    return {n: methods[n] for n in order if n in methods}


def audit_notes(methods: dict) -> list[tuple[str, str]]:
    """(audit, reason) for every audit that gave some method no figure, each once: an audit the
    data cannot support (``backdoor`` without injected poison, ``user_mia`` without deleted
    users) reports NaN with a note, which the tables show as "—" and nothing else said why."""
    from tru_dist.audit.runner import AUDITS

    seen: dict[tuple[str, str], None] = {}
    for entry in methods.values():
        for kind in AUDITS:
            for note in entry.get(f"{kind}_notes", []):
                seen[(kind, note)] = None
    return list(seen)


def sign_test(diffs: list[float]) -> tuple[int, int, float]:
    """(#seeds with diff < 0, #seeds with diff > 0, exact two-sided sign-test p-value).

    Under "neither method is closer to Retrain" each non-zero paired difference is negative
    with probability ½, so with k negatives among n non-zero ones
    p = min(1, 2·P(Binom(n, ½) ≤ min(k, n − k))); exact ties are dropped. Distribution-free:
    one seed on which a baseline diverges (retrain_distance 1.3–1.6 against 0.1–0.4 on the
    others, measured on MGCN) widens the t-interval of the mean difference until it crosses 0,
    though TRU is closer on every seed — the sign test reads the consistency the mean hides
    (10 of 10: p = 2/1024 ≈ 0.002; with 5 seeds it can never go below 2/32 = 0.0625)."""
    from scipy.stats import binomtest

    lower = sum(1 for d in diffs if d < 0)
    higher = sum(1 for d in diffs if d > 0)
    n = lower + higher
    p = float(binomtest(lower, n, 0.5).pvalue) if n else 1.0
    return lower, higher, p


def paired(per_seed: list[dict], key: str = "retrain_distance") -> dict:
    """TRU (and each TRU variant) against every other method on ``key``, paired by seed:
    {tru_name: {other: {diff_mean, ci: [lo, hi], per_seed, n, verdict, lower_on, higher_on,
    sign_p}}}. diff = TRU − other, so a negative difference whose CI excludes 0 means TRU is
    significantly closer to Retrain. ``verdict`` reads the t-CI of the mean difference (the
    benchmark's verdict); ``sign_p`` is a secondary, distribution-free reading
    (:func:`sign_test`)."""
    names = [n for n in per_seed[0] if not n.startswith("_") and n not in ("original", "retrain")]
    out: dict[str, dict] = {}
    for t in [n for n in names if n.startswith("tru")]:
        out[t] = {}
        for other in [n for n in names if n != t]:
            diffs = [r[t].get(key) - r[other].get(key) for r in per_seed
                     if r.get(t, {}).get(key) is not None and r.get(other, {}).get(key) is not None]
            mean, _, half = mean_ci(diffs)
            if mean is None:
                continue
            lo, hi = (mean - half, mean + half) if half is not None else (None, None)
            verdict = "tie"
            if hi is not None and hi < 0:
                verdict = "tru better"
            elif lo is not None and lo > 0:
                verdict = "tru worse"
            lower, higher, sign_p = sign_test(diffs)
            out[t][other] = {"diff_mean": mean, "ci": [lo, hi], "per_seed": diffs, "n": len(diffs),
                             "verdict": verdict, "lower_on": lower, "higher_on": higher, "sign_p": sign_p}
    return out


def write_report(out_dir: Path, results: dict) -> str:
    """Write ``report.md``, ``tradeoff.png`` and ``time.png`` into ``out_dir``; return the table.

    All or nothing: the text is composed and both plots rendered into a hidden staging folder
    first, and the three files are renamed into place only once all of them exist, so a
    failure leaves the previous report (or none) rather than new plots beside an old report.
    """
    import shutil
    import tempfile

    from tru_dist.report.plots import time_plot, tradeoff_plot

    text, table = _report_text(results)
    methods = results["methods"]
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".report.", suffix=".tmp"))
    try:
        tradeoff_plot(methods, stage / "tradeoff.png")
        time_plot(methods, stage / "time.png")
        atomic_write_text(stage / "report.md", text)
        for name in ("tradeoff.png", "time.png", "report.md"):
            (stage / name).replace(out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return table


def _report_text(results: dict) -> tuple[str, str]:
    """(report.md's text, the comparison table) of ``results``; writes nothing."""
    methods = results["methods"]
    table = comparison_table(methods)
    audits = audit_table(methods)
    pairs = paired_table(results.get("paired", {}))
    c = results["config"]
    sp = results["spec"]
    lines = [
        "# tru-dist compare",
        "",
        f"model **{c['model']['name']}**, data `{c['data']['path'] or 'synthetic'}`, regime "
        f"**{sp['regime']}** ({sp['policy']}, {sp['fraction']:.0%}), reporting seeds {sp['seeds']} "
        f"(mean ± 95% CI), tuned configurations: `{sp.get('tuned') or 'none (base config for all)'}`. "
        "Every method starts from the same deletion step (D_r's graph, deleted users reset); "
        "`noop` is that step alone. Utility on retained users' test items; forget hit@K = deleted "
        "train pairs still in the user's top-K (retained history masked): close to Retrain is "
        "right, below it is over-forgetting. KS = distance between the method's and Retrain's "
        "forget-rank distributions; retrain_distance = max(0, 1 − recall/recall_Retrain) + KS "
        "(0 for Retrain, lower is better). seconds = deletion step + method, end to end.",
        "",
        table,
        "",
    ]
    if pairs:
        lines += ["## Paired differences in retrain_distance (TRU − method, per seed; < 0: TRU closer)",
                  "", pairs, "",
                  "The verdict reads the 95% t-interval of the mean difference. The sign test beside it "
                  "counts the seeds on which TRU is closer: one seed on which a method diverges can widen "
                  "the t-interval across 0 although TRU is closer on every seed.", ""]
    floor = methods.get("retrain-reseed", {})
    if floor.get("retrain_distance") is not None:
        jac = floor.get("agreement", {}).get("jaccard@20")
        lines += ["## Noise floor", "",
                  f"A second Retrain, trained under another seed (`retrain-reseed`), is at retrain_distance "
                  f"{fmt(floor['retrain_distance'], floor.get('retrain_distance_ci'), digits=3)}"
                  + (f" and top-20 Jaccard {jac:.3f}" if jac is not None else "")
                  + " from Retrain (mean ± 95% CI): what training randomness alone leaves. A method "
                  "that ties it in the paired table is not told apart from a second exact unlearning run "
                  "by these seeds' t-interval (the sign test beside it may still find it higher on most "
                  "seeds). Retrain shares the original's training seed, so a method that stays near the "
                  "original can sit below this floor.", ""]
    if audits:
        lines += ["## Audits", "", audits, "",
                  "MIA AUC is judged against Retrain's, not against 0.5.", ""]
        notes = [f"No {kind} figure (—): {note}." for kind, note in audit_notes(methods)]
        lines += [*notes, ""] if notes else []
    lines += ["![forget vs utility](tradeoff.png)", "", "![time per method](time.png)", ""]
    return "\n".join(lines), table


def refuse_file_as_folder(folder: str | Path | None, what: str) -> None:
    """A one-line ConfigError when the cache folder ``folder`` is, or lies under, an existing file:
    the first cached original then failed with a raw FileExistsError, after the comparison
    had trained it and begun its --out."""
    from tru_dist.io_utils import file_in_the_way

    if folder is None:
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is an existing file, but it names a cache folder; pass a new "
                          "path or an existing folder")
    blocking = file_in_the_way(folder)
    if blocking is not None:
        raise ConfigError(f"{what} {folder} lies under {blocking}, which is a file, not a folder; pass a "
                          "path whose parent folders are folders")


STAGING = ".partial"  # OUT's folder for the seed files of a comparison still running


def run_compare(cfg: Config, spec: CompareSpec, out_dir: str | Path, data=None) -> dict:
    """Run every seed, aggregate, write results.json / report.md / plots; return the results.

    Each seed's ``seed<k>.json`` is written to ``OUT/.partial`` as it completes and moved into
    OUT with the results: a rerun into an earlier comparison's OUT that was interrupted after
    its first seed left that seed's new file beside the earlier results.json, report.md and
    other seeds — one folder describing two runs. Now OUT is the earlier comparison, whole,
    until the new one has all its seeds (``.partial`` holds those done, and the next run
    clears it)."""
    from tru_dist.train.checkpoint import refuse_run_folder

    out_dir = Path(out_dir)
    refuse_run_folder(out_dir, "--out")
    refuse_run_folder(spec.originals, "--originals")
    refuse_file_as_folder(spec.originals, "--originals")
    check_workers(cfg, spec)
    configs = method_configs(cfg, spec)  # refuses overlapping seeds before any training
    writer = collectives.rank() == 0  # at W > 1 every rank computes the same results; rank 0 writes
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / STAGING  # each seed's file as it completes; moved into OUT with the results
    if writer:
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier run's
        staging.mkdir()
    per_seed = []
    with logged_once():  # one catalogue: its size warnings once, not per model and seed
        for seed in spec.seed_list:
            per_seed.append(run_seed(cfg, spec, seed, data=data, configs=configs))
            if len(per_seed) == 1:  # an audit the data cannot support: said once, not only in seed0.json
                for kind, note in audit_notes(aggregate(per_seed)):
                    _log(f"audit {kind} gives no figure here: {note}")
            if writer:
                atomic_write_json(staging / f"seed{seed}.json", per_seed[-1])
    results: dict[str, Any] = {
        "config": cfg.to_dict(),
        "spec": {**asdict(spec), "seeds": spec.seed_list},
        "forget_set": per_seed[0].get("_forget_set"),
        "method_configs": {n: {"unlearn": c.to_dict()["unlearn"], "tuning": t}
                           for n, (c, t) in configs.items()},
        "methods": aggregate(per_seed),
        "paired": paired(per_seed),
    }
    if writer:
        from tru_dist.train.checkpoint import write_run_config

        for seed in spec.seed_list:  # only now: an interrupted rerun left the earlier comparison whole
            os.replace(staging / f"seed{seed}.json", out_dir / f"seed{seed}.json")
        write_run_config(out_dir, cfg.to_dict())  # and a refused one its config beside its results
        atomic_write_json(out_dir / "results.json", results)
        results["table"] = write_report(out_dir, results)
        _remove_other_seeds(out_dir, spec.seed_list)
        shutil.rmtree(staging, ignore_errors=True)
    return results


def _remove_other_seeds(out_dir: Path, seeds: list[int]) -> None:
    """Delete ``seed<k>.json`` files an earlier comparison left in ``out_dir`` for seeds this one
    did not run: beside the new results.json they would read as part of it."""
    keep = {f"seed{s}.json" for s in seeds}
    stale = sorted(p for p in out_dir.glob("seed*.json")
                   if p.name not in keep and p.name[4:-5].isdigit())
    for p in stale:
        p.unlink()
    if stale:
        _log(f"removed {', '.join(p.name for p in stale)} left in {out_dir} by an earlier comparison")


def report_compare(path: str | Path) -> Path:
    """Re-write report.md and plots from an existing results.json (a one-line ConfigError when
    ``path`` holds none, or one that is not a comparison's)."""
    from tru_dist.report.results_check import check_results

    path = Path(path)
    source = path / "results.json"
    if source.is_dir():
        raise ConfigError(f"{source} is a folder, not a comparison's results file; pass the --out folder of "
                          "a `tru-dist compare` run")
    if not path.is_dir():  # "holds no results.json" of a folder that is not there misled
        what = "does not exist" if not path.exists() else "is a file, not a folder"
        raise ConfigError(f"{path} {what}; pass the --out folder of a `tru-dist compare` run")
    if not source.is_file():
        raise ConfigError(f"{path} holds no results.json; pass the --out folder of a `tru-dist compare` run")
    try:
        results = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc}); rerun the comparison to rewrite it") from None
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise ConfigError(f"{source} is not a comparison's results (no 'methods' table); pass the --out "
                          "folder of a `tru-dist compare` run")
    check_results(source, results, SCALARS)
    write_report(path, results)
    return path / "report.md"
