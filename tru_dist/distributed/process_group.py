"""torch.distributed process groups without Ray: torchrun-style env vars, or local spawning.

Three ways a worker gets its rank (one code path either way):

* under Ray Train, ``TorchTrainer`` has already initialised the default group;
* under ``torchrun`` (or any launcher that exports ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
  ``MASTER_PORT``), :func:`init_from_env` initialises it from those variables — this is
  the GPU machines' path, which have no Ray;
* in tests and benchmarks, :func:`spawn_local` starts W processes with
  ``torch.multiprocessing`` on a free loopback port (gloo) and returns every rank's result.

Backend ``auto`` = NCCL when CUDA is available, else gloo. Spawned groups bind to the
loopback interface only (``MASTER_ADDR=127.0.0.1``, ``GLOO_SOCKET_IFNAME=lo``).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from tru_dist.errors import TruDistError

LOOPBACK = "127.0.0.1"


class _RankError:
    """A rank's :class:`TruDistError`, carried back to :func:`spawn_local`'s caller."""

    def __init__(self, exc: TruDistError):
        self.exc = exc


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` -> ``nccl`` when CUDA is available, else ``gloo``; explicit names pass through."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown backend {backend!r} (use auto, gloo or nccl)")
    return backend


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun-style variables (``0, 0, 1`` when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


def init_from_env(backend: str = "auto", timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise the default group from ``RANK``/``WORLD_SIZE``/``MASTER_*``; return ``(rank, W)``.

    Idempotent: an already initialised group (Ray Train's, or a previous call) is reused.
    With ``WORLD_SIZE`` unset or 1 no group is created: collectives are the identity at
    W = 1, so the single-process path needs none. With NCCL each process binds
    ``cuda:LOCAL_RANK`` before initialising.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, local, world = env_world()
    if world <= 1:
        return 0, 1
    name = resolve_backend(backend)
    if name == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(name, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world


def destroy() -> None:
    """Tear the default group down (after a barrier so no peer is still mid-collective)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def join_local_group(rank: int, world_size: int, port: int, backend: str, threads: int,
                     timeout_s: float) -> None:
    """Start of a local rank (:func:`spawn_local`'s and the worker pool's): loopback rendezvous
    on ``port`` (``MASTER_ADDR=127.0.0.1``, ``GLOO_SOCKET_IFNAME=lo``), ``threads`` torch
    threads, one CUDA device per rank under NCCL, then the default group."""
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(threads)
    name = resolve_backend(backend)
    if name == "nccl":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(name, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def exit_without_teardown(code: int) -> NoReturn:
    """Leave a finished rank without the interpreter's teardown, whose C++ static destructors can
    meet a still-joinable gloo thread and abort the process ("terminate called without an active
    exception"), failing a run that succeeded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Leave this rank (a daemon thread's check every ``every_s``) once ``parent`` is no longer
    its parent: a driver killed by SIGTERM (``kill``, ``timeout``) left its spawned ranks
    running as orphans — they finished the run and wrote OUT after the command was killed, or
    sat in a collective until the group's timeout, holding the caller's stdout/stderr open."""
    import threading
    import time

    if os.getppid() != parent:  # started by another process (a fork server): nothing to watch
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="tru-dist-parent-watch", daemon=True).start()


def _child(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    threads: int,
    result_dir: str,
    fn: Callable[..., Any],
    args: tuple,
    parent: int | None = None,
) -> None:
    if parent is not None:
        exit_with_parent(parent)
    join_local_group(rank, world_size, port, backend, threads, timeout_s=300.0)
    try:
        try:
            out = fn(rank, world_size, *args)
        except TruDistError as exc:  # a user error: the parent raises it as is (one line, no traceback)
            out = _RankError(exc)
        torch.save(out, Path(result_dir) / f"result.{rank}.pt")
    finally:
        destroy()
    exit_without_teardown(0)  # the result is on disk and the group torn down


def spawn_local(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    backend: str = "gloo",
    threads_per_rank: int | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes sharing a process group.

    ``fn`` must be importable (a module-level function) and its return value picklable by
    ``torch.save``; the list of per-rank return values is returned in rank order. A rank
    that raises a :class:`~tru_dist.errors.TruDistError` (a user error, raised alike by
    every rank) makes this raise it; any other exception makes this raise
    ``torch.multiprocessing.ProcessRaisedException`` with the child's traceback.
    ``threads_per_rank`` defaults to ``cpu_count // world_size`` so the ranks do not
    oversubscribe the cores.
    """
    import torch.multiprocessing as mp

    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world_size)
    with tempfile.TemporaryDirectory(prefix="tru-dist-spawn-") as tmp:
        mp.spawn(
            _child,
            args=(world_size, free_port(), backend, threads, tmp, fn, tuple(args), os.getpid()),
            nprocs=world_size,
            join=True,
        )
        results = [torch.load(Path(tmp) / f"result.{r}.pt", weights_only=False) for r in range(world_size)]
    failed = next((r for r in results if isinstance(r, _RankError)), None)
    if failed is not None:
        raise failed.exc
    return results
