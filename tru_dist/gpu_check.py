"""GPU check: train / evaluate / unlearn on CUDA equal CPU within tolerance, NCCL via torchrun.

    python -m tru_dist.gpu_check --out gpu-check.json        # or: make gpu-check

Needs no Ray (the lent GPU machines have none) and no install: run it from the repository
root with the machine's CUDA build of torch. About 1–3 minutes on one GPU with the defaults
(``synthetic:small``, 3 epochs). Without a CUDA device it prints why, writes
``{"status": "skipped", ...}`` and exits 0.

What it checks, through the public interfaces (:mod:`tru_dist.api`, the run folders):

* **train** — LightGCN and MGCN (``--models``), the same config and seed, ``--device cpu``
  vs ``cuda``: per-epoch losses agree to ``rel 1e-3`` and valid/test metrics to ``abs 0.01``
  (float sums run in another order on the GPU, so trajectories are close, not bitwise);
* **evaluate** — the CPU-trained run loaded on CUDA and on CPU: every metric to ``abs 1e-3``;
* **unlearn** — TRU on the same CPU-trained run and the same requests, on CPU and on CUDA:
  forget hit@20 and test recall@20 to ``abs 0.01``, parameters to ``rel 1e-2``;
* **NCCL** — ``torchrun`` (``python -m torch.distributed.run --standalone``) with W = 1 (and
  W = 2 when two GPUs are visible): an NCCL ``all_reduce``, then the training task of
  :func:`tru_dist.distributed.worker.worker_main` over NCCL; its metrics equal the in-process
  CUDA run's to ``abs 0.01`` (CUDA kernels with atomics may flip a top-20 position);
* **MIG-GT** (``--loose-models``) trains, evaluates and unlearns on CUDA with finite losses;
  its sampled global items come from a per-device generator, so CPU and CUDA draw different
  items and only a loose agreement (``abs 0.05``) is expected.

The JSON holds every difference next to its tolerance, and timings (seconds per epoch on CPU
and CUDA, evaluation, unlearning, the NCCL runs). ``--device-b cpu`` runs the whole check
CPU-vs-CPU: that is how the test suite checks the check on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOL = {"loss_rel": 1e-3, "metric_abs": 0.01, "eval_abs": 1e-3, "param_rel": 1e-2, "nccl_w1_abs": 0.01,
       "nccl_w2_abs": 0.01, "loose_abs": 0.05}
METRICS = ("recall@20", "ndcg@20", "hit@20")


def _max_abs(a: dict[str, float], b: dict[str, float], keys=METRICS) -> float:
    return max(abs(float(a[k]) - float(b[k])) for k in keys)


def _overrides(epochs: int) -> dict[str, Any]:
    return {"train.epochs": epochs, "train.eval_every": 1, "train.patience": 0, "train.progress": "off",
            "unlearn.epochs": 3}


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint

    return list(load_checkpoint(checkpoint_path(run_dir, rank=0, world_size=1))["history"])


def _with_device(src: Path, dst: Path, device: str) -> Path:
    """A copy of run ``src`` whose checkpoint says ``train.device=device`` (so the ledgered
    ``unlearn`` of the copy runs there, from exactly the same parameters)."""
    import shutil

    import torch

    from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

    shutil.copytree(src, dst)
    path = checkpoint_path(dst, rank=0, world_size=1)
    state = load_checkpoint(path)
    state["config"]["train"]["device"] = device
    save_checkpoint(state, path)
    assert torch.load(path, weights_only=True)["config"]["train"]["device"] == device
    return dst


def _param_rel(a_dir: Path, b_dir: Path) -> float:
    from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint

    a = load_checkpoint(checkpoint_path(a_dir, rank=0, world_size=1))["best_model"]
    b = load_checkpoint(checkpoint_path(b_dir, rank=0, world_size=1))["best_model"]
    num = sum(float((a[k].double() - b[k].double().cpu()).norm() ** 2) for k in a if a[k].is_floating_point())
    den = sum(float(a[k].double().norm() ** 2) for k in a if a[k].is_floating_point())
    return math.sqrt(num / max(den, 1e-30))


def check_model(model: str, data: str, epochs: int, root: Path, device_b: str = "cuda",
                exact: bool = True) -> dict[str, Any]:
    """Train/evaluate/unlearn ``model`` on CPU and on ``device_b``; every difference and timing."""
    import pandas as pd

    from tru_dist import api
    from tru_dist.data.regimes import forget_set
    from tru_dist.timing import Stopwatch

    over = _overrides(epochs)
    a = api.train(data=data, model=model, out=root / f"{model}-a-cpu", overrides=over, device="cpu")
    b = api.train(data=data, model=model, out=root / f"{model}-b-{device_b}", overrides=over, device=device_b)
    ha, hb = _history(a.path), _history(b.path)
    loss_rel = max(abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-12)
                   for x, y in zip(ha, hb, strict=True) if "loss" in x)
    out: dict[str, Any] = {
        "exact": exact,
        "train": {"loss_rel": loss_rel, "valid_abs": _max_abs(a.metrics["valid"], b.metrics["valid"]),
                  "test_abs": _max_abs(a.metrics["test"], b.metrics["test"])},
        "timing": {"a_cpu_seconds_per_epoch": a.metrics["seconds_per_epoch"],
                   f"b_{device_b}_seconds_per_epoch": b.metrics["seconds_per_epoch"]},
    }
    # evaluate: the same (CPU-trained) parameters served on both devices
    on_a, on_b = api.load_run(a.path, device="cpu"), api.load_run(a.path, device=device_b)
    with Stopwatch() as sa:
        ev_a = api.evaluate(on_a)
    with Stopwatch() as sb:
        ev_b = api.evaluate(on_b)
    keys = [k for k in ev_a["test"] if "@" in k]
    out["evaluate"] = {"abs": max(_max_abs(ev_a[s], ev_b[s], keys) for s in ("valid", "test"))}
    out["timing"] |= {"a_cpu_evaluate_seconds": sa.seconds, f"b_{device_b}_evaluate_seconds": sb.seconds}
    # unlearn: TRU on the same run and the same requests, on each device
    forget = forget_set(on_a.data, "users", 0.05, 0)
    users = sorted(set(int(u) for u in forget.removed_users)) or sorted(set(int(u) for u in forget.users))[:5]
    requests = pd.DataFrame({"request_id": [f"r{u}" for u in users], "user_id": users,
                             "item_id": [None] * len(users), "reason": ["gpu-check"] * len(users)})
    src_b = _with_device(a.path, root / f"{model}-a-as-{device_b}", device_b)
    ua = api.unlearn(a.path, requests=requests, method="tru", out=root / f"{model}-a-tru")
    ub = api.unlearn(src_b, requests=requests, method="tru", out=root / f"{model}-b-tru")
    ma, mb = ua.metrics, ub.metrics
    out["unlearn"] = {"forget_hit@20_abs": abs(ma["forget"]["hit@20"] - mb["forget"]["hit@20"]),
                      "test_recall@20_abs": abs(ma["test"]["recall@20"] - mb["test"]["recall@20"]),
                      "param_rel": _param_rel(ua.path, ub.path), "deleted_users": len(users)}
    out["timing"] |= {"a_cpu_unlearn_seconds": ma["seconds"], f"b_{device_b}_unlearn_seconds": mb["seconds"]}
    out["finite"] = all(math.isfinite(r["loss"]) for r in hb if "loss" in r)
    out["passed"] = _passed(out, exact)
    return out


def _passed(r: dict[str, Any], exact: bool) -> bool:
    if not r["finite"]:
        return False
    if not exact:
        loose = TOL["loose_abs"]
        return (r["train"]["valid_abs"] <= loose and r["evaluate"]["abs"] <= loose
                and r["unlearn"]["test_recall@20_abs"] <= loose)
    return (r["train"]["loss_rel"] <= TOL["loss_rel"] and r["train"]["valid_abs"] <= TOL["metric_abs"]
            and r["train"]["test_abs"] <= TOL["metric_abs"] and r["evaluate"]["abs"] <= TOL["eval_abs"]
            and r["unlearn"]["forget_hit@20_abs"] <= TOL["metric_abs"]
            and r["unlearn"]["test_recall@20_abs"] <= TOL["metric_abs"]
            and r["unlearn"]["param_rel"] <= TOL["param_rel"])


# -- NCCL through torchrun ------------------------------------------------------------------------
def _torchrun_worker(task_file: str) -> None:
    """One torchrun rank: an all_reduce, then the train task over the group (the task's
    ``dist.backend``: NCCL on CUDA in the GPU check, gloo on CPU in the tests)."""
    import torch
    import torch.distributed as dist

    from tru_dist.distributed.worker import worker_main

    task = json.loads(Path(task_file).read_text())
    backend = task["config"]["dist"]["backend"]
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend)  # explicit even at W = 1, where worker_main would need none
    x = torch.ones(1, device=device)
    dist.all_reduce(x)
    assert int(x.item()) == dist.get_world_size(), f"{backend} all_reduce returned a wrong sum"
    worker_main(task)  # reuses the initialised group; rank 0 writes out_dir/metrics.json
    dist.barrier()
    dist.destroy_process_group()


def check_torchrun(world: int, model: str, data: str, epochs: int, root: Path, reference: dict[str, Any],
                   backend: str = "nccl", device: str = "cuda", timeout_s: float = 240.0) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node=world`` the train task over ``backend``; compare
    its metrics to ``reference`` (the in-process run's on ``device``)."""
    from tru_dist.config import build_config

    over = [f"{k}={json.dumps(v)}" for k, v in _overrides(epochs).items()]
    cfg = build_config(model=model, overrides=[f"data.path={data}", f"train.device={device}",
                                               f"dist.backend={backend}", f"dist.workers={world}",
                                               "dist.address=none", *over])
    out_dir = root / f"{backend}-w{world}-{model}"
    task_file = root / f"{backend}-w{world}-task.json"
    task_file.write_text(json.dumps({"kind": "train", "config": cfg.to_dict(), "out_dir": str(out_dir)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "tru_dist.gpu_check", "--torchrun-worker", str(task_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"world_size": world, "passed": False, "error": f"torchrun did not finish in {timeout_s:.0f}s"}
    seconds = time.perf_counter() - t0
    result_file = out_dir / "metrics.json"
    if proc.returncode != 0 or not result_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"world_size": world, "passed": False, "error": f"torchrun exit {proc.returncode}",
                "log_tail": tail}
    result = json.loads(result_file.read_text())
    diff = max(_max_abs(result[s], reference[s]) for s in ("valid", "test"))
    tol = TOL["nccl_w1_abs"] if world == 1 else TOL["nccl_w2_abs"]
    trained_at = int(result.get("config", {}).get("dist", {}).get("workers", world))
    return {"world_size": trained_at, "backend": backend, "metric_abs_vs_in_process": diff,
            "tolerance": tol,
            "passed": trained_at == world and diff <= tol, "seconds": seconds,
            "seconds_per_epoch": result.get("seconds_per_epoch")}


# -- entry point ---------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(), "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        env |= {"gpus": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0)}
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as exc:  # no NCCL in this torch build: the NCCL part will say so
            env["nccl"] = f"unavailable ({type(exc).__name__})"
    return env


def run_check(out: Path, data: str = "synthetic:small", epochs: int = 3,
              models: tuple[str, ...] = ("lightgcn", "mgcn"), loose_models: tuple[str, ...] = ("miggt",),
              device_b: str = "cuda", nccl: bool = True) -> dict[str, Any]:
    """Run the check and write ``out``; returns the report (``status``: passed | failed | skipped)."""
    from tru_dist.io_utils import atomic_write_json

    t0 = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(), "data": data, "epochs": epochs, "tolerances": TOL}
    if device_b.startswith("cuda") and not report["environment"]["cuda_available"]:
        env = report["environment"]
        report |= {"status": "skipped",
                   "reason": f"no CUDA device (torch {env['torch']}, CUDA build {env['cuda_build']}, "
                             "torch.cuda.is_available() is False): run it on a machine with a GPU"}
        atomic_write_json(out, report)
        return report
    report["models"] = {}
    with tempfile.TemporaryDirectory(prefix="tru-dist-gpu-check-") as tmp:
        root = Path(tmp)
        for name in models:
            report["models"][name] = check_model(name, data, epochs, root, device_b, exact=True)
        for name in loose_models:
            report["models"][name] = check_model(name, data, epochs, root, device_b, exact=False)
        if nccl and device_b.startswith("cuda") and models:
            import torch

            from tru_dist.train.checkpoint import checkpoint_path, load_checkpoint

            ref_dir = root / f"{models[0]}-b-{device_b}"
            reference = json.loads((ref_dir / "metrics.json").read_text())
            assert load_checkpoint(checkpoint_path(ref_dir, 0, 1))["config"]["train"]["device"] == device_b
            worlds = [1] + ([2] if torch.cuda.device_count() >= 2 else [])
            report["nccl"] = {f"w{w}": check_torchrun(w, models[0], data, epochs, root, reference)
                              for w in worlds}
    checks = [m["passed"] for m in report["models"].values()] + [
        r["passed"] for r in report.get("nccl", {}).values()]
    report["status"] = "passed" if all(checks) else "failed"
    report["seconds"] = time.perf_counter() - t0
    atomic_write_json(out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tru_dist.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu-check.json", help="the JSON report (default gpu-check.json)")
    p.add_argument("--data", default="synthetic:small")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--models", default="lightgcn,mgcn", help="compared to tolerance")
    p.add_argument("--loose-models", default="miggt", help="device-dependent sampling: loose agreement")
    p.add_argument("--device-b", default="cuda", help="compared with the CPU (cpu: check the check)")
    p.add_argument("--no-nccl", action="store_true", help="skip the torchrun/NCCL part")
    p.add_argument("--torchrun-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torchrun_worker:
        _torchrun_worker(args.torchrun_worker)
        return 0
    from tru_dist.errors import TruDistError
    from tru_dist.logs import setup_logging

    setup_logging()
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    try:
        report = run_check(Path(args.out), args.data, args.epochs, split(args.models),
                           split(args.loose_models), args.device_b, nccl=not args.no_nccl)
    except TruDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report["status"] == "skipped":
        print(f"gpu-check: skipped — {report['reason']} (wrote {args.out})")
        return 0
    print(json.dumps({k: report[k] for k in ("status", "seconds")} | {
        "models": {m: r["passed"] for m, r in report["models"].items()},
        "nccl": {w: r["passed"] for w, r in report.get("nccl", {}).items()}}))
    print(f"gpu-check: {report['status']} (details in {args.out})")
    return 0 if report["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
