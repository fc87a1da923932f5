"""A worker pool: W local ranks started once, their process group kept, reused task after task.

:func:`~tru_dist.distributed.process_group.spawn_local` starts W processes, rendezvouses a gloo
group, runs one function and tears it all down — seconds per call, paid by every
``tru-dist unlearn --workers W --address none`` request. :class:`WorkerPool` pays that once:

    with WorkerPool(2) as pool:                       # W processes, one process group
        for requests in files:
            commands.unlearn(run, requests, out, overrides=["dist.workers=2", "dist.address=none"],
                             pool=pool)               # run_distributed(..., pool=pool)

Conventions are :func:`spawn_local`'s: rank r of W is process r, ``MASTER_ADDR=127.0.0.1`` on a
free port, ``GLOO_SOCKET_IFNAME=lo`` (loopback only), gloo on CPU and NCCL on CUDA (``auto``),
``cpu_count // W`` torch threads per rank; the default group is initialised ONCE per rank,
when the pool starts. Each rank then loops: receive a task, run it under that group, send its
result back. :meth:`WorkerPool.run` runs a task dict (what
:func:`tru_dist.distributed.worker.worker_main` takes, plus an optional in-memory
``RecDataset``, sent with every task) and returns rank 0's result, as ``run_distributed``
does; :meth:`WorkerPool.call` runs any importable ``fn(rank, world_size, *args)`` and returns
every rank's result, as ``spawn_local`` does. Messages are ``torch.save`` bytes over one pipe
per rank (plain copies: no shared-memory tensors outliving a task).

Why reuse is safe. A task leaves nothing behind that the next one reads: ``worker_main`` builds
its config, shard, graph and model from the task (the dataset arrives as a fresh copy), seeds
every RNG it draws from (``build_model`` and the methods reseed; samplers own their
generators), never initialises or destroys the group (``init_from_env`` reuses an initialised
one), and :func:`tru_dist.comm.full_replica` resets its ContextVar on exit. What does persist
is a cache keyed by content (the kNN graphs of :mod:`tru_dist.graph.knn`, keyed by a hash of
the feature bytes: a hit returns what a rebuild would) and, under
``TRU_DIST_FAULT=mid-update`` only, the crash-test optimizer hook. tests/test_pool.py checks
that tasks on one pool give bit for bit what the same tasks give on fresh groups.

Failures. A :class:`~tru_dist.errors.TruDistError` raised by the task (a user error, raised
alike by every rank) comes back as itself — the same one-line error as through
``spawn_local`` — and the pool stays usable. Anything else leaves the group in an unknown
state (a peer may sit in a collective), so the pool closes itself: a rank's exception is
raised as :class:`PoolTaskError` with that rank's traceback (or, when another rank raised a
user error first and left this one waiting in a collective until the group's timeout, as
that user error); a rank that died (killed, out of memory) or a task past ``task_timeout_s``
raises :class:`WorkerPoolError` (one line); every later call raises :class:`WorkerPoolError`
too. Once one rank has failed, the others get :data:`FAIL_GRACE_S` to answer, not the group's
collective timeout (a peer left in a collective with the failed rank would sit there
minutes). Nothing waits forever: the driver watches every rank's process sentinel while it
waits, a collective whose peer is gone fails within the group's ``collective_timeout_s``, and
ranks exit when the driver's end of their pipe closes.

Closing (``close()``, idempotent, also on leaving the ``with`` block or garbage collection):
each idle rank destroys the group after a barrier and leaves with ``os._exit(0)`` — as in
``spawn_local``, interpreter teardown could meet a still-joinable gloo thread and abort a
rank that finished cleanly. A pool closed mid-task, broken, or slow to leave is terminated.
"""

from __future__ import annotations

import io
import os
import signal
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch

from tru_dist.config import Config
from tru_dist.data.dataset import RecDataset
from tru_dist.distributed.process_group import (
    destroy,
    exit_without_teardown,
    free_port,
    join_local_group,
    resolve_backend,
)
from tru_dist.errors import ConfigError, TruDistError

#: seconds a rank may take to leave after ``close()`` before it is terminated
CLOSE_TIMEOUT_S = 30.0
#: seconds the other ranks may still take to answer once one rank's task has failed
FAIL_GRACE_S = 5.0


class WorkerPoolError(TruDistError):
    """The pool cannot run the task: closed, a rank died, a task timed out, a bad start."""


class PoolTaskError(RuntimeError):
    """A rank raised something other than a user error (a bug): the message ends with its traceback."""


# -- messages ------------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(raw: bytes) -> Any:
    return torch.load(io.BytesIO(raw), weights_only=False)


def _portable(exc: TruDistError) -> TruDistError:
    """``exc`` if it survives pickling (as every TruDistError here does), else its one line."""
    try:
        _loads(_dumps(exc))
        return exc
    except Exception:  # a subclass whose __init__ takes other arguments
        return TruDistError(str(exc))


def _run_task(rank: int, world_size: int, task: dict[str, Any], data: RecDataset | None) -> dict:
    from tru_dist.distributed.worker import worker_main

    return worker_main(task, data=data)


# -- one rank ------------------------------------------------------------------------------------
def _rank_main(rank: int, world_size: int, port: int, backend: str, threads: int, timeout_s: float,
               conn: Connection) -> None:
    """A rank's life: join the group once, then answer tasks until told to stop (or orphaned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it closes the pool
    join_local_group(rank, world_size, port, backend, threads, timeout_s)
    conn.send_bytes(_dumps(("ready", os.getpid())))
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):  # the driver is gone: peers may be too, so no barrier
            exit_without_teardown(1)
        try:
            message = _loads(raw)  # a function this process cannot import fails here, not the rank
        except Exception as exc:
            conn.send_bytes(_dumps(("fail", f"rank {rank} could not read the task: {type(exc).__name__}: "
                                    f"{exc}", traceback.format_exc())))
            continue
        if message[0] == "stop":
            break
        _, fn, args = message
        try:
            reply = ("ok", fn(rank, world_size, *args))
        except TruDistError as exc:  # a user error: the caller raises it as is, the pool goes on
            reply = ("user", _portable(exc))
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which closes the pool
            reply = ("fail", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            conn.send_bytes(_dumps(reply))
        except Exception as exc:  # an unpicklable result: say so rather than die silently
            conn.send_bytes(_dumps(("fail", f"rank {rank}'s result could not be sent back: {exc}",
                                    traceback.format_exc())))
    try:
        destroy()  # barrier, then tear the group down
    finally:
        exit_without_teardown(0)


def _kill(processes: list) -> None:
    """Terminate, then kill, every rank still alive (the pool's finaliser and broken-pool path)."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)


# -- the pool ------------------------------------------------------------------------------------
def _check_pool_options(threads_per_rank: object, **timeouts: object) -> None:
    """A one-line ConfigError for a thread count that is not an integer >= 1 or a timeout that is
    not a finite number of seconds > 0 (``task_timeout_s`` may be None: no limit). 0 threads
    read as "the default" and a 0 s timeout failed the pool's start with a raw error."""
    if threads_per_rank is not None and (isinstance(threads_per_rank, bool | np.bool_)
                                         or not isinstance(threads_per_rank, int | np.integer)
                                         or threads_per_rank < 1):
        raise ConfigError(f"threads_per_rank must be an integer >= 1 (or None: cpu_count // W), "
                          f"not {threads_per_rank!r:.40}")
    for name, value in timeouts.items():
        if value is None and name == "task_timeout_s":
            continue
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool | np.bool_) or not number or not 0 < value < float("inf"):
            unset = " (or None: no limit)" if name == "task_timeout_s" else ""
            raise ConfigError(f"{name} must be a number of seconds > 0{unset}, not {value!r:.40}")


class WorkerPool:
    """W local ranks sharing one process group, started once and reused (module docstring).

    ``workers`` >= 2 (at W = 1 a task runs in the calling process, no pool needed);
    ``backend``: auto | gloo | nccl; ``threads_per_rank``: torch threads per rank, >= 1
    (default ``cpu_count // W``, at least 1);
    ``start_timeout_s``: how long the ranks may take to join the group;
    ``collective_timeout_s``: the group's timeout (a collective whose peer is gone fails
    after it); ``task_timeout_s``: the most one task may take (None: no limit beyond the
    collective timeout — a task may legitimately train for hours).
    """

    def __init__(self, workers: int, backend: str = "auto", *, threads_per_rank: int | None = None,
                 start_timeout_s: float = 120.0, collective_timeout_s: float = 300.0,
                 task_timeout_s: float | None = None):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
            raise ConfigError(f"a worker pool needs 2 or more workers, not {workers!r} "
                              "(at W = 1 a task runs in the calling process; no pool is needed)")
        _check_pool_options(threads_per_rank, start_timeout_s=start_timeout_s,
                            collective_timeout_s=collective_timeout_s, task_timeout_s=task_timeout_s)
        self.workers = workers
        self.backend = resolve_backend(backend)
        self.task_timeout_s = task_timeout_s
        self.tasks_run = 0
        self._closed = False
        self._broken: str | None = None  # why the pool stopped working, once it has
        self._busy = False
        threads = threads_per_rank or max(1, (os.cpu_count() or 1) // workers)
        ctx = torch.multiprocessing.get_context("spawn")
        port = free_port()
        start = time.perf_counter()
        self._procs = []
        self._conns: list[Connection] = []
        for rank in range(workers):
            here, there = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_rank_main, name=f"tru-dist-pool-rank{rank}", daemon=True,
                               args=(rank, workers, port, self.backend, threads, collective_timeout_s, there))
            proc.start()
            there.close()
            self._procs.append(proc)
            self._conns.append(here)
        self._finalizer = weakref.finalize(self, _kill, list(self._procs))
        try:
            ready = self._collect(start_timeout_s, what="joining the process group")
        except BaseException:
            self._break("it did not start")
            raise
        self.pids = [int(r[1]) for r in ready]
        self.start_seconds = time.perf_counter() - start

    # -- running tasks ---------------------------------------------------------------------------
    def check(self, cfg: Config) -> None:
        """Refuse a config this pool cannot run as configured: W, ``dist.address``, backend."""
        if cfg.dist.address != "none":
            raise ConfigError(f"a worker pool runs local processes, but dist.address={cfg.dist.address}; "
                              "set --dist.address=none (--address none) or run without the pool")
        if cfg.dist.workers != self.workers:
            raise ConfigError(f"dist.workers={cfg.dist.workers} but the worker pool has {self.workers} "
                              f"workers; set --dist.workers={self.workers} or open a pool of "
                              f"{cfg.dist.workers}")
        wanted = resolve_backend(cfg.dist.backend)
        if wanted != self.backend:
            raise ConfigError(f"dist.backend resolves to {wanted} but the worker pool runs {self.backend}; "
                              f"open the pool with backend={wanted!r}")

    def run(self, task: dict[str, Any], data: RecDataset | None = None) -> dict:
        """Run a :func:`~tru_dist.distributed.worker.worker_main` task on every rank; rank 0's result."""
        return self.call(_run_task, dict(task), data)[0]

    def call(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(rank, world_size, *args)`` on every rank under the pool's group; results in rank order.

        ``fn`` must be importable (module level); ``args`` and the results travel as
        ``torch.save`` bytes. Errors: see the module docstring."""
        self._usable()
        payload = _dumps(("task", fn, tuple(args)))
        self._busy = True
        try:
            for conn in self._conns:
                conn.send_bytes(payload)
            replies = self._collect(self.task_timeout_s, what=f"running {_label(fn, args)}")
        except WorkerPoolError:
            raise
        except OSError as exc:  # a pipe closed under us: a rank is gone
            raise self._break(f"a rank's pipe closed while sending the task ({exc})") from None
        except BaseException:  # Ctrl-C and the like mid-task: the ranks are busy, stop them
            self._break("interrupted while running a task")
            raise
        finally:
            self._busy = False
        self.tasks_run += 1
        failed = next((r for r in replies if r[0] == "fail"), None)
        user = next((r for r in replies if r[0] == "user"), None)
        if failed is not None:
            rank = replies.index(failed)
            self._break(f"rank {rank} failed ({failed[1]})")
            if user is not None:  # one rank's user error left a peer in a collective: the cause
                raise user[1]
            raise PoolTaskError(f"worker pool rank {rank} failed: {failed[1]}\n\n{failed[2]}")
        if user is not None:
            raise user[1]
        return [r[1] for r in replies]

    def _usable(self) -> None:
        if self._broken is not None:
            raise WorkerPoolError(f"the worker pool is closed: {self._broken}; open a new one")
        if self._closed:
            raise WorkerPoolError("the worker pool is closed; open a new one")
        dead = [(r, p) for r, p in enumerate(self._procs) if not p.is_alive()]
        if dead:
            rank, proc = dead[0]
            raise self._break(f"rank {rank} (pid {proc.pid}) died while idle ({_exit_text(proc.exitcode)})")

    def _collect(self, timeout_s: float | None, what: str) -> list[tuple]:
        """One reply per rank, watching every rank's process while waiting (never forever:
        a death or ``timeout_s`` ends the wait).

        Once a rank has failed (a ``fail`` reply: the pool will break), its peers get
        :data:`FAIL_GRACE_S` more to answer — long enough for a user error raised alike on
        every rank to arrive, not the group's whole collective timeout a peer stuck in a
        collective with the failed rank would take; those that have not answered by then are
        recorded as ``("abandoned", ...)``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        replies: dict[int, tuple] = {}
        a_rank_failed = False
        while len(replies) < self.workers:
            pending = [r for r in range(self.workers) if r not in replies]
            watch = {self._conns[r]: r for r in pending} | {self._procs[r].sentinel: r for r in pending}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(list(watch), timeout=left)
            if not ready and a_rank_failed:
                for rank in pending:
                    replies[rank] = ("abandoned", f"no answer within {FAIL_GRACE_S:g} s of a peer's failure")
                break
            if not ready:
                slow = ", ".join(str(r) for r in pending)
                raise self._break(f"rank(s) {slow} did not answer within {timeout_s:g} s while {what}")
            for obj in ready:
                rank = watch[obj]
                if rank in replies:
                    continue
                conn = self._conns[rank]
                if conn.poll():  # a reply (possibly sent just before the rank exited)
                    try:
                        replies[rank] = _loads(conn.recv_bytes())
                        if replies[rank][0] == "fail" and not a_rank_failed:  # peers may never answer
                            a_rank_failed = True
                            grace = time.monotonic() + FAIL_GRACE_S
                            deadline = grace if deadline is None else min(deadline, grace)
                        continue
                    except (EOFError, OSError):
                        pass
                proc = self._procs[rank]
                proc.join(1.0)
                if a_rank_failed:  # keep the failure that came first
                    why = _exit_text(proc.exitcode)
                    replies[rank] = ("abandoned", f"died after a peer's failure ({why})")
                    continue
                raise self._break(f"rank {rank} (pid {proc.pid}) died while {what} "
                                  f"({_exit_text(proc.exitcode)})")
        return [replies[r] for r in range(self.workers)]

    def _break(self, why: str) -> WorkerPoolError:
        """Mark the pool unusable, terminate its ranks; the error to raise."""
        if self._broken is None:
            self._broken = why
        self._shutdown(graceful=False)
        return WorkerPoolError(f"the worker pool stopped: {why}; open a new one")

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every rank (idle ones leave cleanly, see the module docstring). Idempotent."""
        whole = all(p.is_alive() for p in self._procs)  # else the survivors' barrier could not end
        self._shutdown(graceful=self._broken is None and not self._busy and whole)

    def _shutdown(self, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if graceful:
            stop = _dumps(("stop",))
            for conn, proc in zip(self._conns, self._procs, strict=True):
                if proc.is_alive():
                    try:
                        conn.send_bytes(stop)
                    except OSError:
                        pass
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            for proc in self._procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        _kill(self._procs)  # whatever is still alive (all of them when not graceful)
        for conn in self._conns:
            conn.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"WorkerPool(workers={self.workers}, backend={self.backend!r}, {state}, "
                f"tasks_run={self.tasks_run})")


def _label(fn: Callable[..., Any], args: tuple) -> str:
    if fn is _run_task and args and isinstance(args[0], dict):
        return f"the {args[0].get('kind')} task"
    return getattr(fn, "__name__", "a task")


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
