"""Installable and cluster-ready: packaged defaults and canonical names, devices, Ray's address,
dependency declarations, the Docker image and cluster files, the GPU check's CPU paths, and PyG
as the numerical reference for LightGCN propagation."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml

from tru_dist.config import (
    Config,
    build_config,
    canonical_dataset,
    packaged_names,
)
from tru_dist.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


# -- packaged defaults, canonical names ------------------------------------------------------------
def test_every_model_has_packaged_published_defaults():
    from tru_dist.models.registry import model_names

    assert packaged_names("models") == model_names() == ["lightgcn", "mgcn", "miggt"]
    assert packaged_names("datasets") == ["baby", "scientific"]


def test_pyproject_ships_the_defaults_in_the_wheel():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["tru_dist"]
    shipped = {p for g in globs for p in (REPO / "tru_dist").glob(g)}
    assert shipped == set((REPO / "tru_dist" / "configs").rglob("*.yaml")) and len(shipped) == 5


@pytest.mark.parametrize("spelling", ["miggt", "MIGGT", "mig-gt", "MiG-GT", "mig_gt"])
def test_model_names_are_canonical_and_bring_their_defaults(spelling):
    cfg = build_config(model=spelling)
    assert cfg.model.name == "miggt" and cfg.train.lr == 0.01 and cfg.model.modality_layers["id"] == 4
    assert build_config(overrides=[f"model.name={spelling}"]).train.batch_size == 8000


def test_dataset_names_are_canonical():
    assert canonical_dataset("../shared/data/amazon-scientific") == "scientific"
    assert canonical_dataset("Amazon_Baby/") == "baby" and canonical_dataset("my-data") == "mydata"
    assert build_config(dataset="/x/amazon-baby").train.batch_size == 2048  # the model's layer wins
    assert build_config(dataset="/x/amazon-baby").data.name == "baby"


def test_missing_defaults_are_errors_not_silent(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'bert' \(choose one of: lightgcn, mgcn, miggt\)"):
        build_config(model="bert")
    import tru_dist.config as config

    monkeypatch.setattr(config, "defaults_root", lambda: tmp_path)  # a wheel without its data
    with pytest.raises(ConfigError, match="no model defaults are installed"):
        build_config(model="mgcn")


# -- devices ------------------------------------------------------------------------------------------
def test_device_field_and_resolution():
    from tru_dist.device import resolve_device

    assert Config().train.device == "auto"
    assert build_config(overrides=["train.device=CUDA:1"]).train.device == "cuda:1"
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N") as err:
        build_config(overrides=["train.device=gpu"])
    assert "\n" not in str(err.value)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA device"):
            resolve_device("cuda")


def test_gpus_per_worker_means_cuda_and_nccl():
    from tru_dist.cli import placement_overrides

    gpu = ["dist.gpus_per_worker=1", "train.device=cuda", "dist.backend=nccl"]
    assert placement_overrides(1, None) == gpu
    assert placement_overrides(0.0, "cpu") == ["dist.gpus_per_worker=0.0", "train.device=cpu"]
    assert placement_overrides(None, None) == []
    with pytest.raises(ConfigError, match="drop one of them"):
        placement_overrides(1, "cpu")


def test_cli_gpus_per_worker_sets_cuda_and_nccl():
    from tru_dist.cli import _build_cfg, build_parser

    args, rest = build_parser().parse_known_args(["train", "--data", "synthetic:tiny", "--out", "x",
                                                  "--gpus-per-worker", "1", "--workers", "2"])
    cfg = _build_cfg(args, rest)
    assert (cfg.train.device, cfg.dist.backend, cfg.dist.gpus_per_worker) == ("cuda", "nccl", 1.0)


def test_timers_synchronise_cuda(monkeypatch):
    import tru_dist.device as device

    calls = []
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device.torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(device.torch.cuda, "synchronize", lambda d=None: calls.append(d))
    device.synchronize("cuda:0")
    device.synchronize("cpu")  # nothing to wait for
    device.synchronize()
    assert calls == ["cuda:0", None]


# -- Ray ------------------------------------------------------------------------------------------------
class _FakeRay:
    def __init__(self):
        self.calls: list[dict] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


def test_local_address_starts_a_fresh_ray_and_auto_joins(monkeypatch):
    from tru_dist.distributed.launch import connect

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    connect("auto")
    assert fake.calls[-1]["address"] == "auto" and "RAY_AUTH_MODE" not in __import__("os").environ
    connect("local")
    assert fake.calls[-1]["address"] == "local"  # never joins a running cluster or RAY_ADDRESS
    assert fake.calls[-1]["dashboard_host"] == "127.0.0.1"
    assert __import__("os").environ["RAY_AUTH_MODE"] == "disabled"  # only for the loopback head


def test_a_local_ray_without_dashboard_quiets_ray_trains_chatter(monkeypatch):
    """Without a dashboard there is no State API, and Ray Train's placement-group cleaner warned
    once a second through to the driver (20 lines at the end of ``make demo``); its per-report
    INFO lines doubled every epoch line. The local head without a dashboard installs the hook
    that mutes them; with a dashboard nothing is muted, and a joined cluster's logging is its
    own. Every local head turns the preemption watcher off (an error-level line per W > 1 run)."""
    import importlib
    import logging
    import logging.config

    from tru_dist.distributed import launch

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    for name in launch.LOCAL_ENV:
        monkeypatch.delenv(name, raising=False)
    connect = launch.connect
    connect("local")
    hook = fake.calls[-1]["runtime_env"]["worker_process_setup_hook"]
    assert hook == "tru_dist.distributed.launch.quiet_local_ray_train"
    assert os.environ[launch.PREEMPTION_WATCHER_ENV] == "0"
    connect("local", dashboard=True)
    assert "runtime_env" not in fake.calls[-1]
    connect("auto")  # a cluster's logging is its own
    assert "runtime_env" not in fake.calls[-1]
    monkeypatch.undo()

    # the names are those Ray reads and logs through (a rename would mute nothing)
    constants = importlib.import_module("ray.train.v2._internal.constants")
    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == launch.PREEMPTION_WATCHER_ENV
    assert launch.PREEMPTION_WATCHER_ENV in constants.ENV_VARS_TO_PROPAGATE  # reaches the controller
    names = (launch.PLACEMENT_GROUP_CLEANER_LOGGER, *launch.REPORT_LOGGER_MODULES)
    loggers = [importlib.import_module(name).logger for name in names]
    assert loggers[0].name == launch.PLACEMENT_GROUP_CLEANER_LOGGER
    for name, lg in zip(names[1:], loggers[1:], strict=True):
        assert lg.name in launch.logger_names(name)

    def passes(lg: logging.Logger, level: int) -> bool:
        record = lg.makeRecord(lg.name, level, __file__, 1, "message", (), None)
        return lg.isEnabledFor(level) and bool(lg.filter(record))

    train = logging.getLogger("ray.train")
    saved = (train.level, train.propagate, list(train.handlers))
    try:
        launch.quiet_local_ray_train()
        launch.quiet_local_ray_train()  # twice: one filter each
        # what a Ray Train worker does after the hook: its dictConfig resets child loggers' levels
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "loggers": {"ray.train": {"level": "DEBUG", "propagate": False}}})
        cleaner, *reporters = loggers
        assert not passes(cleaner, logging.WARNING) and passes(cleaner, logging.ERROR)
        for lg in reporters:
            assert not passes(lg, logging.INFO) and passes(lg, logging.WARNING)
        assert all(sum(isinstance(f, launch.MinimumLevel) for f in lg.filters) == 1 for lg in loggers)
    finally:
        for lg in loggers:
            for f in [f for f in lg.filters if isinstance(f, launch.MinimumLevel)]:
                lg.removeFilter(f)
        train.setLevel(saved[0])
        train.propagate = saved[1]
        train.handlers[:] = saved[2]


def test_no_private_ray_api_anywhere():
    private = "ray." + "_private"
    files = [p for d in ("tru_dist", "jobs", "tests") for p in (REPO / d).rglob("*.py")]
    offenders = [str(p.relative_to(REPO)) for p in files if private in p.read_text()]
    assert offenders == []


def test_dependency_bounds_match_what_is_used():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert "ray[default,tune,train]>=2.52" in extras["ray"]  # Train V2 default + token auth
    assert any(r.startswith("tensorboard>=") for r in extras["tensorboard"])
    assert not any("torch-geometric" in r for r in meta["dependencies"])  # a test reference only
    assert any("torch-geometric" in r for r in extras["test"])
    pinned = re.search(r"^ray==([\d.]+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert tuple(map(int, pinned.split("."))) >= (2, 52)


# -- image and cluster files ----------------------------------------------------------------------------
def test_docker_image_and_cluster_files_agree():
    docker = (REPO / "Dockerfile").read_text()
    ray_pin = re.search(r"^ray==([\d.]+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert f"ARG RAY_VERSION={ray_pin}" in docker
    assert "FROM rayproject/ray:${RAY_VERSION}-${PY_TAG}-gpu" in docker
    assert '".[ray]"' in docker and "-c constraints.txt" in docker  # installed from pyproject, pinned
    for dep in ("pyarrow", "pandas", "pydantic", "scikit-learn", "torch-geometric"):
        assert dep not in docker  # no second dependency list
    image = re.search(r"^IMAGE\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    launcher = yaml.safe_load((REPO / "cluster" / "cluster.yaml").read_text())
    assert launcher["docker"]["image"] == image
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert not launcher["setup_commands"]
    starts = " ".join(launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "disabled" not in starts and "--num-cpus=0" in starts
    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"} and spec["rayVersion"] == ray_pin
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    assert {c["image"] for c in containers} == {image}
    assert all("disabled" not in json.dumps(c.get("env", [])) for c in containers)
    assert "gpu-check:" in (REPO / "Makefile").read_text()


# -- PyG: the numerical reference for LightGCN propagation --------------------------------------------------
def test_lightgcn_propagation_matches_pyg(tiny_data):
    pyg = pytest.importorskip("torch_geometric")
    from torch_geometric.nn.models import LightGCN as PygLightGCN

    from tru_dist.graph.context import build_rec_graph
    from tru_dist.models.lightgcn import light_propagate

    graph = build_rec_graph(tiny_data, with_knn=False)
    n_users, n_items = tiny_data.n_users, tiny_data.n_items
    users, items = (torch.as_tensor(x, dtype=torch.long) for x in tiny_data.train_pairs)
    edges = torch.stack([torch.cat([users, items + n_users]), torch.cat([items + n_users, users])])
    torch.manual_seed(0)
    user0, item0 = torch.randn(n_users, 16), torch.randn(n_items, 16)
    ref = PygLightGCN(n_users + n_items, 16, num_layers=3)  # alpha = 1/(L+1): the mean over layers
    with torch.no_grad():
        ref.embedding.weight.copy_(torch.cat([user0, item0]))
        expected = ref.get_embedding(edges)
        u, i = light_propagate(graph, user0, item0, 3)
    assert pyg.__version__ and torch.allclose(torch.cat([u, i]), expected, atol=1e-5)


# -- the GPU check without a GPU ----------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path, capsys):
    from tru_dist.gpu_check import main

    assert main(["--out", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu-check: skipped — no CUDA device") and len(out.strip().splitlines()) == 1
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["status"] == "skipped" and report["environment"]["cuda_available"] is False


def test_gpu_check_machinery_cpu_against_cpu(tmp_path):
    """The whole check with CPU in place of CUDA: every difference must be exactly zero."""
    from tru_dist.gpu_check import check_torchrun, run_check

    report = run_check(tmp_path / "c.json", data="synthetic:tiny", epochs=2, models=("lightgcn",),
                       loose_models=(), device_b="cpu", nccl=False)
    r = report["models"]["lightgcn"]
    assert report["status"] == "passed" and r["passed"]
    assert r["train"] == {"loss_rel": 0.0, "valid_abs": 0.0, "test_abs": 0.0}
    assert r["evaluate"]["abs"] == 0.0 and r["unlearn"]["param_rel"] == 0.0
    assert r["unlearn"]["deleted_users"] > 0
    assert json.loads((tmp_path / "c.json").read_text())["status"] == "passed"
    # the torchrun leg, over gloo on the CPU: the same train task, the same metrics
    import tru_dist

    ref = tru_dist.train(data="synthetic:tiny", model="lightgcn", out=tmp_path / "ref", device="cpu",
                         overrides={"train.epochs": 2, "train.eval_every": 1, "train.patience": 0,
                                    "train.progress": "off", "unlearn.epochs": 3})
    leg = check_torchrun(1, "lightgcn", "synthetic:tiny", 2, tmp_path, ref.metrics, backend="gloo",
                         device="cpu")
    assert leg["passed"] and leg["world_size"] == 1 and leg["metric_abs_vs_in_process"] == 0.0, leg
